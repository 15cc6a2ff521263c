//! etcdctl 3.4 against etcd 3.4 and against `metastore`, side by side: the same commands in the
//! same order must print the same thing (after normalizing what legitimately differs: ids,
//! terms, raft indexes, sizes, versions, timings, ports) and exit the same way.

use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use regex::Regex;

use crate::harness::{require_tool, Kind, Server};

/// Longest one etcdctl command may take (its own `--command-timeout` is shorter).
const COMMAND_LIMIT: Duration = Duration::from_secs(30);

/// What one etcdctl run printed, normalized.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Outcome {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

/// One server under etcdctl, with what to normalize in its outputs.
pub(crate) struct Target {
    pub(crate) server: Server,
    etcdctl: PathBuf,
    /// Exact strings to replace, longest first: ids (decimal and hex), URLs.
    replacements: Vec<(String, &'static str)>,
}

impl Target {
    fn new(kind: Kind, etcdctl: PathBuf) -> Target {
        Target::with_args(kind, etcdctl, &[])
    }

    /// A target whose server gets `extra` flags.
    pub(crate) fn with_args(kind: Kind, etcdctl: PathBuf, extra: &[&str]) -> Target {
        let server = Server::start(kind, extra);
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let (cluster, member) = runtime.block_on(async {
            let mut c = server.client().await;
            let status = c.status().await.expect("status");
            let h = status.header().expect("header");
            (h.cluster_id(), h.member_id())
        });
        let mut replacements = vec![
            (server.endpoint(), "<endpoint>"),
            (server.peer_url(), "<peer-url>"),
            (cluster.to_string(), "<cluster-id>"),
            (member.to_string(), "<member-id>"),
            (format!("{cluster:x}"), "<cluster-id>"),
            (format!("{member:x}"), "<member-id>"),
        ];
        replacements.sort_by_key(|(s, _)| std::cmp::Reverse(s.len()));
        Target {
            server,
            etcdctl,
            replacements,
        }
    }

    pub(crate) fn run(&self, args: &[String], stdin: &[u8], norm: &Normalizer) -> Outcome {
        let mut command = Command::new(&self.etcdctl);
        for (name, _) in std::env::vars_os() {
            let name = name.to_string_lossy();
            if name.starts_with("ETCDCTL") {
                command.env_remove(&*name);
            }
        }
        let mut child = command
            .env("ETCDCTL_API", "3")
            .arg(format!("--endpoints={}", self.server.endpoint()))
            .arg("--command-timeout=10s")
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawning etcdctl");
        let mut input = child.stdin.take().expect("stdin");
        let stdin = stdin.to_vec();
        let writer = std::thread::spawn(move || {
            // etcdctl may exit without reading everything (a refused request): ignore EPIPE.
            let _ = input.write_all(&stdin);
        });
        let mut out = child.stdout.take().expect("stdout");
        let mut err = child.stderr.take().expect("stderr");
        let reader = std::thread::spawn(move || {
            let mut s = Vec::new();
            let _ = out.read_to_end(&mut s);
            s
        });
        let err_reader = std::thread::spawn(move || {
            let mut s = Vec::new();
            let _ = err.read_to_end(&mut s);
            s
        });
        let started = Instant::now();
        let status = loop {
            if let Some(status) = child.try_wait().expect("try_wait") {
                break status;
            }
            if started.elapsed() > COMMAND_LIMIT {
                let _ = child.kill();
                let _ = child.wait();
                panic!("etcdctl {args:?} did not finish within {COMMAND_LIMIT:?}");
            }
            std::thread::sleep(Duration::from_millis(5));
        };
        writer.join().expect("stdin writer");
        let stdout = reader.join().expect("stdout reader");
        let stderr = err_reader.join().expect("stderr reader");
        let stderr: String = String::from_utf8_lossy(&stderr)
            .lines()
            // The client's retry logs carry timestamps and random target names.
            .filter(|l| !l.starts_with(r#"{"level":"#))
            .map(|l| format!("{l}\n"))
            .collect();
        Outcome {
            code: status.code(),
            stdout: norm.apply(&String::from_utf8_lossy(&stdout), &self.replacements),
            stderr: norm.apply(&stderr, &self.replacements),
        }
    }
}

/// Rewrites what legitimately differs between two servers.
pub(crate) struct Normalizer {
    rules: Vec<(Regex, &'static str)>,
}

impl Normalizer {
    pub(crate) fn new() -> Normalizer {
        let rules = [
            // Tables first: column widths follow the contents.
            (r"(?m)^(\|.*?)[ ]{2,}", "$1 "),
            (r"(?m)^\+[-+]+$", "+--+"),
            (r"\| \d+(\.\d+)?(ns|µs|ms|s) \|", "| <duration> |"),
            // JSON headers and status fields.
            (r#""raft_term":[1-9]\d*"#, r#""raft_term":<term>"#),
            (
                r#""(raftIndex|raftTerm|raftAppliedIndex|dbSize|dbSizeInUse)":\d+"#,
                r#""$1":<n>"#,
            ),
            (r#""version":"[^"]*""#, r#""version":"<version>""#),
            // -w fields.
            (r#""RaftTerm" : [1-9]\d*"#, r#""RaftTerm" : <term>"#),
            // Timings.
            (r"took = \S+", "took = <duration>"),
            (r#""took":"[^"]*""#, r#""took":"<duration>""#),
            // endpoint status: endpoint, id, version, db size, is leader, is learner, raft
            // term, raft index, applied index, errors.
            (
                r"(?m)^(<endpoint>, <member-id>), [^,]+, [^,]+, (true|false), (true|false), \d+, \d+, \d+, ",
                "$1, <version>, <size>, $2, $3, <term>, <index>, <index>, ",
            ),
            (
                r"(?m)^(\| <endpoint> \| <member-id> \|) [^|]+ \| [^|]+ \| (true|false) \| (true|false) \| \d+ \| \d+ \| \d+ \|",
                "$1 <version> | <size> | $2 | $3 | <term> | <index> | <index> |",
            ),
        ];
        Normalizer {
            rules: rules
                .into_iter()
                .map(|(re, to)| (Regex::new(re).expect("regex"), to))
                .collect(),
        }
    }

    fn apply(&self, text: &str, replacements: &[(String, &'static str)]) -> String {
        let mut text = text.to_string();
        for (from, to) in replacements {
            text = text.replace(from.as_str(), to);
        }
        for (re, to) in &self.rules {
            // Repeat: table rows need one pass per column.
            loop {
                let next = re.replace_all(&text, *to).into_owned();
                if next == text {
                    break;
                }
                text = next;
            }
        }
        text
    }
}

/// One etcdctl invocation: arguments (after `--endpoints`) and what to feed on stdin.
pub(crate) struct Step {
    pub(crate) args: Vec<String>,
    pub(crate) stdin: Vec<u8>,
}

pub(crate) fn step(args: &[&str]) -> Step {
    Step {
        args: args.iter().map(|s| s.to_string()).collect(),
        stdin: Vec::new(),
    }
}

pub(crate) fn with_stdin(args: &[&str], stdin: impl Into<Vec<u8>>) -> Step {
    Step {
        args: args.iter().map(|s| s.to_string()).collect(),
        stdin: stdin.into(),
    }
}

/// The commands, in order. Both servers start empty (revision 1), so revisions line up.
fn steps() -> Vec<Step> {
    let mut s = vec![
        // The empty store's hash, and "never compacted" as etcd says it (-1).
        step(&["endpoint", "hashkv", "-w", "json"]),
        step(&["endpoint", "hashkv"]),
        // put, with and without prev-kv, in every output format that supports it.
        step(&["put", "foo", "bar"]),
        step(&["put", "foo", "bar2", "-w", "json"]),
        step(&["put", "--prev-kv", "foo", "bar3"]),
        step(&["put", "--prev-kv", "foo", "bar4", "-w", "json"]),
        step(&["put", "--prev-kv", "fresh", "v", "-w", "json"]),
        step(&["put", "foo", "bar5", "-w", "fields"]),
        step(&["get", "foo"]),
        step(&["get", "foo", "-w", "json"]),
        step(&["get", "foo", "-w", "fields"]),
        step(&["get", "foo", "--hex"]),
        step(&["get", "missing"]),
        step(&["get", "missing", "-w", "json"]),
    ];
    // Keys for ranges and sorts: a has version 2, the rest version 1; v1 and v2 share a value.
    for (k, v) in [
        ("a", "1"),
        ("b", "2"),
        ("c", "3"),
        ("a", "11"),
        ("pre/x", "X"),
        ("pre/y", "Y"),
        ("v1", "same"),
        ("v2", "same"),
    ] {
        s.push(step(&["put", k, v]));
    }
    s.extend([
        // Revisions.
        step(&["get", "foo", "--rev=2"]),
        step(&["get", "foo", "--rev=3", "-w", "json"]),
        step(&["get", "fresh", "--rev=5"]),
        step(&["get", "--rev=4", "--prefix", "", "-w", "json"]),
        // Ranges: [a, c), prefix, from-key, all.
        step(&["get", "a", "c"]),
        step(&["get", "--prefix", "pre/"]),
        step(&["get", "--prefix", "pre/", "-w", "json"]),
        step(&["get", "--from-key", "c"]),
        step(&["get", "--prefix", ""]),
        step(&["get", "--from-key", ""]),
        // limit, more and count.
        step(&["get", "--from-key", "a", "--limit=2"]),
        step(&["get", "--from-key", "a", "--limit=2", "-w", "json"]),
        step(&["get", "--prefix", "", "--limit=100", "-w", "json"]),
        // Sorts: every target and order, with ties, with a limit.
        step(&["get", "--from-key", "a", "--sort-by=KEY", "--order=DESCEND"]),
        step(&["get", "--from-key", "a", "--order=DESCEND"]),
        step(&["get", "--from-key", "a", "--sort-by=KEY", "--order=ASCEND"]),
        step(&[
            "get",
            "--from-key",
            "a",
            "--sort-by=CREATE",
            "--order=DESCEND",
        ]),
        step(&[
            "get",
            "--from-key",
            "a",
            "--sort-by=CREATE",
            "--order=ASCEND",
            "--limit=3",
        ]),
        step(&[
            "get",
            "--from-key",
            "a",
            "--sort-by=MODIFY",
            "--order=DESCEND",
            "-w",
            "json",
        ]),
        step(&[
            "get",
            "--from-key",
            "a",
            "--sort-by=MODIFY",
            "--limit=2",
            "-w",
            "json",
        ]),
        step(&[
            "get",
            "--from-key",
            "a",
            "--sort-by=VALUE",
            "--order=ASCEND",
        ]),
        step(&[
            "get",
            "--from-key",
            "a",
            "--sort-by=VALUE",
            "--order=DESCEND",
            "--keys-only",
        ]),
        step(&[
            "get",
            "--from-key",
            "a",
            "--sort-by=VERSION",
            "--order=ASCEND",
            "--keys-only",
        ]),
        step(&[
            "get",
            "--from-key",
            "a",
            "--sort-by=VERSION",
            "--order=DESCEND",
            "--keys-only",
        ]),
        step(&[
            "get",
            "--from-key",
            "a",
            "--sort-by=VERSION",
            "--order=DESCEND",
            "--limit=3",
            "-w",
            "json",
        ]),
        step(&["get", "--from-key", "a", "--sort-by=NOPE"]),
        step(&["get", "--from-key", "a", "--order=SIDEWAYS"]),
        // keys-only, print-value-only, serializable.
        step(&["get", "--prefix", "pre/", "--keys-only"]),
        step(&["get", "--prefix", "pre/", "--keys-only", "-w", "json"]),
        step(&["get", "--from-key", "a", "--print-value-only"]),
        step(&["get", "foo", "--consistency=s", "-w", "json"]),
        step(&["get", "--prefix", "", "--consistency=s", "--keys-only"]),
        // A key is required.
        step(&["get", ""]),
        step(&["put", "", "v"]),
        step(&["del", ""]),
        // ignore-value / ignore-lease.
        step(&["put", "foo", "--ignore-value"]),
        step(&["put", "foo", "--ignore-value", "-w", "json"]),
        step(&["put", "missing", "--ignore-value"]),
        step(&["put", "foo", "bar6", "--ignore-lease", "--prev-kv"]),
        step(&["put", "missing", "v", "--ignore-lease"]),
        step(&["get", "foo", "-w", "json"]),
        // A lease that does not exist.
        step(&["put", "foo", "v", "--lease=5"]),
        step(&["put", "foo", "v", "--lease=abc"]),
        // put reading its value from stdin.
        with_stdin(&["put", "stdin-key"], "from stdin"),
        step(&["get", "stdin-key"]),
        // Sizes: over 1.5 MiB is the server's error; over 2 MiB is etcdctl's own refusal.
        with_stdin(&["put", "big"], vec![b'x'; 1600 * 1024]),
        with_stdin(&["put", "big"], vec![b'x'; 2100 * 1024]),
        with_stdin(&["put", "big"], vec![b'x'; 1024 * 1024]),
        step(&["get", "big", "--keys-only"]),
        // del: one key, prev-kv, prefix, from-key, range, nothing.
        step(&["del", "missing"]),
        step(&["del", "missing", "-w", "json"]),
        step(&["del", "--prev-kv", "fresh"]),
        step(&["del", "--prev-kv", "--prefix", "pre/", "-w", "json"]),
        step(&["put", "pre/z", "Z"]),
        step(&["del", "--prefix", "pre/"]),
        step(&["put", "x1", "1"]),
        step(&["put", "x2", "2"]),
        step(&["put", "x3", "3"]),
        step(&["del", "--from-key", "x2", "--prev-kv"]),
        step(&["del", "b", "c"]),
        step(&["del", "big", "-w", "json"]),
        step(&["get", "--prefix", "", "--keys-only"]),
    ]);
    // txn, read from stdin: compares, blank line, success ops, blank line, failure ops.
    s.extend([
        with_stdin(
            &["txn"],
            "mod(\"foo\") > \"0\"\nval(\"a\") = \"11\"\n\nput foo txn1\nget foo\n\nput foo failed\n\n",
        ),
        with_stdin(
            &["txn", "-w", "json"],
            "val(\"foo\") = \"nope\"\n\nput foo x\n\nget foo\nget --prefix v\ndel x1\n\n",
        ),
        with_stdin(
            &["txn"],
            "ver(\"a\") = \"2\"\nc(\"a\") > \"1\"\nm(\"c\") = \"10\"\nversion(\"missing\") = \"0\"\ncreate(\"missing\") < \"1\"\nvalue(\"v1\") != \"other\"\n\nput t1 1\nput t2 2\ndel a\nget --prefix t\n\n\n",
        ),
        with_stdin(&["txn", "-w", "json"], "ver(\"t1\") > \"5\"\n\n\nget t1\n\n"),
        with_stdin(&["txn"], "\nput t3 3 --prev-kv\ndel --prev-kv t1\n\n\n"),
        with_stdin(&["txn", "-w", "fields"], "\nput t4 4\n\n\n"),
        with_stdin(&["txn"], "\n\n\n"),
        // txn errors.
        with_stdin(&["txn"], "\nput d 1\nput d 2\n\n\n"),
        with_stdin(&["txn"], "\nput d 1\ndel d\n\n\n"),
        with_stdin(&["txn"], "\nput \"\" 1\n\n\n"),
        with_stdin(&["txn"], "bogus(\"a\") = \"1\"\n\n\n\n"),
        with_stdin(&["txn"], "\nfrobnicate a\n\n\n"),
        with_stdin(&["txn"], {
            let mut t = String::from("\n");
            for i in 0..129 {
                t.push_str(&format!("put many{i} v\n"));
            }
            t.push_str("\n\n");
            t
        }),
        with_stdin(&["txn"], {
            let mut t = String::from("\n");
            for i in 0..128 {
                t.push_str(&format!("put many{i} v\n"));
            }
            t.push_str("\n\n");
            t
        }),
        step(&["get", "--prefix", "many", "--limit=1", "-w", "json"]),
        step(&["get", "--prefix", "", "--keys-only", "--limit=8"]),
    ]);
    // Compaction, then reads below, at and above it.
    s.extend([
        step(&["get", "foo", "--rev=10", "-w", "json"]),
        step(&["compaction", "10"]),
        step(&["compaction", "10"]),
        step(&["compaction", "5"]),
        step(&["get", "foo", "--rev=9"]),
        step(&["get", "foo", "--rev=10", "-w", "json"]),
        step(&["get", "foo", "--rev=100000"]),
        step(&["get", "foo", "--rev=100000", "--consistency=s"]),
        step(&["compaction", "100000"]),
        step(&["compaction", "--physical", "12"]),
        step(&["get", "foo", "--rev=11"]),
        step(&["get", "foo", "--rev=12"]),
        step(&["get", "foo"]),
        step(&["compaction", "abc"]),
        // The same history hashes as on etcd: before and after the compaction point, at it
        // (compacted, as etcd 3.4 answers) and past the current revision.
        step(&["endpoint", "hashkv", "-w", "json"]),
        step(&["endpoint", "hashkv", "--rev=13", "-w", "json"]),
        step(&["endpoint", "hashkv", "--rev=12"]),
        step(&["endpoint", "hashkv", "--rev=11"]),
        step(&["endpoint", "hashkv", "--rev=100000"]),
        step(&["endpoint", "hashkv", "--rev=-1", "-w", "table"]),
        // Endpoints and members.
        step(&["endpoint", "health"]),
        step(&["endpoint", "health", "-w", "json"]),
        step(&["endpoint", "health", "-w", "table"]),
        step(&["endpoint", "status"]),
        step(&["endpoint", "status", "-w", "json"]),
        step(&["endpoint", "status", "-w", "table"]),
        step(&["member", "list"]),
        step(&["member", "list", "-w", "json"]),
        step(&["member", "list", "-w", "table"]),
        step(&["alarm", "list"]),
        step(&["defrag"]),
        // The store is the same afterwards.
        step(&["get", "--prefix", "", "-w", "json"]),
    ]);
    s
}

pub(crate) fn require_etcdctl_34() -> PathBuf {
    let etcdctl = require_tool("etcdctl");
    let out = Command::new(&etcdctl)
        .env("ETCDCTL_API", "3")
        .arg("version")
        .output()
        .expect("running etcdctl version");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("etcdctl version: 3.4."),
        "these tests compare with etcdctl 3.4, found {text:?}; install Debian's `etcd-server \
         etcd-client`"
    );
    etcdctl
}

pub(crate) fn shown(o: &Outcome) -> String {
    let cut = |s: &str| {
        if s.len() > 3000 {
            format!("{}... ({} bytes)", &s[..3000], s.len())
        } else {
            s.to_string()
        }
    };
    format!(
        "exit {:?}\n      stdout: {:?}\n      stderr: {:?}",
        o.code,
        cut(&o.stdout),
        cut(&o.stderr)
    )
}

/// Every command prints the same, exits the same, against etcd 3.4 and against MetaStore.
#[test]
fn etcdctl_output_matches_etcd() {
    let etcdctl = require_etcdctl_34();
    let etcd = Target::new(Kind::Etcd, etcdctl.clone());
    let ours = Target::new(Kind::Redb, etcdctl);
    let norm = Normalizer::new();
    let mut differences = Vec::new();
    let steps = steps();
    for st in &steps {
        let expected = etcd.run(&st.args, &st.stdin, &norm);
        let got = ours.run(&st.args, &st.stdin, &norm);
        if std::env::var_os("IT_SHOW_ETCDCTL").is_some() {
            eprintln!("etcdctl {:?}\n  {}", st.args, shown(&expected));
        }
        if expected != got {
            differences.push(format!(
                "etcdctl {}{}\n    etcd 3.4:  {}\n    metastore: {}",
                st.args.join(" "),
                if st.stdin.is_empty() {
                    String::new()
                } else if st.stdin.len() > 200 {
                    format!(" <<< ({} bytes)", st.stdin.len())
                } else {
                    format!(" <<< {:?}", String::from_utf8_lossy(&st.stdin))
                },
                shown(&expected),
                shown(&got)
            ));
        }
    }
    assert!(
        differences.is_empty(),
        "{} of {} etcdctl commands differ from etcd 3.4:\n\n{}\n\nmetastore log tail:\n{}",
        differences.len(),
        steps.len(),
        differences.join("\n\n"),
        ours.server.log_tail()
    );
}

/// Alarms raised and cleared through the Maintenance API: each answer (as etcd-client sees it)
/// and what `etcdctl alarm list` / `alarm disarm` print, against etcd 3.4 and MetaStore.
#[test]
fn alarms_match_etcd() {
    use etcd_client::{AlarmAction, AlarmOptions, AlarmType};

    let etcdctl = require_etcdctl_34();
    let norm = Normalizer::new();
    let run = |kind: Kind| -> Vec<String> {
        let target = Target::new(kind, etcdctl.clone());
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let mut seen = Vec::new();
        let call = |action: AlarmAction, alarm: AlarmType, member: Option<u64>| {
            let answer = runtime.block_on(async {
                let mut c = target.server.client().await;
                let member = match member {
                    Some(m) => m,
                    None => c
                        .status()
                        .await
                        .expect("status")
                        .header()
                        .expect("header")
                        .member_id(),
                };
                let mut options = AlarmOptions::new();
                options.with_member(member);
                c.alarm(action, alarm, Some(options)).await
            });
            let text = match answer {
                Ok(r) => format!(
                    "{action:?} {alarm:?}: header {}, alarms {:?}",
                    r.header()
                        .is_some_and(|h| h.revision() > 0 && h.cluster_id() != 0),
                    r.alarms()
                        .iter()
                        .map(|m| (m.member_id(), m.alarm()))
                        .collect::<Vec<_>>()
                ),
                Err(e) => format!("{action:?} {alarm:?}: error {e}"),
            };
            norm.apply(&text, &target.replacements)
        };
        seen.push(call(AlarmAction::Get, AlarmType::None, None));
        seen.push(call(AlarmAction::Activate, AlarmType::Nospace, None));
        seen.push(call(AlarmAction::Activate, AlarmType::Nospace, None));
        seen.push(call(AlarmAction::Get, AlarmType::Nospace, None));
        // Lists of one alarm only: etcd 3.4 lists several in Go's random map order.
        for st in [
            step(&["alarm", "list"]),
            step(&["alarm", "list", "-w", "json"]),
            step(&["endpoint", "status"]),
            step(&["endpoint", "status", "-w", "json"]),
        ] {
            seen.push(format!(
                "etcdctl {:?}: {}",
                st.args,
                shown(&target.run(&st.args, &st.stdin, &norm))
            ));
        }
        seen.push(call(AlarmAction::Activate, AlarmType::Corrupt, None));
        // CORRUPT's refusal wins over NOSPACE's.
        for st in [step(&["put", "k", "v"]), step(&["get", "k"])] {
            seen.push(format!(
                "etcdctl {:?}: {}",
                st.args,
                shown(&target.run(&st.args, &st.stdin, &norm))
            ));
        }
        seen.push(call(AlarmAction::Deactivate, AlarmType::Corrupt, None));
        // Clearing what is not raised answers no alarm.
        seen.push(call(AlarmAction::Deactivate, AlarmType::Corrupt, None));
        seen.push(call(
            AlarmAction::Deactivate,
            AlarmType::Nospace,
            Some(12345),
        ));
        for st in [
            step(&["alarm", "list", "-w", "json"]),
            step(&["alarm", "disarm"]),
            step(&["alarm", "list"]),
            step(&["alarm", "list", "-w", "json"]),
            step(&["put", "k", "v2"]),
        ] {
            seen.push(format!(
                "etcdctl {:?}: {}",
                st.args,
                shown(&target.run(&st.args, &st.stdin, &norm))
            ));
        }
        seen
    };
    let expected = run(Kind::Etcd);
    let got = run(Kind::Redb);
    assert_eq!(
        expected.len(),
        got.len(),
        "etcd: {expected:#?}\nmetastore: {got:#?}"
    );
    let differences: Vec<String> = expected
        .iter()
        .zip(&got)
        .filter(|(e, g)| e != g)
        .map(|(e, g)| format!("etcd 3.4:  {e}\nmetastore: {g}"))
        .collect();
    assert!(
        differences.is_empty(),
        "{} of {} alarm steps differ from etcd 3.4:\n\n{}",
        differences.len(),
        expected.len(),
        differences.join("\n\n")
    );
}
