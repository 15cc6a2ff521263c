//! etcd 3.4's flags: docs/flags.md accounts for every one the installed `etcd --help` lists,
//! agrees with what the code does, and `metastore` starts with each no-effect flag and
//! refuses each refused one, naming it.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use server::etcd_flags::{env_name, Fate, ETCD_FLAGS};

use crate::harness::{free_port, require_tool, Kind, Server};

/// The flags `etcd --help` lists, in order.
fn etcd_help_flags() -> Vec<String> {
    let out = Command::new(require_tool("etcd"))
        .arg("--help")
        .output()
        .expect("running etcd --help");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let mut flags = Vec::new();
    for line in text.lines() {
        let rest = line
            .strip_prefix("  --")
            .or_else(|| line.strip_prefix("  etcd --"));
        let Some(rest) = rest else { continue };
        let name: String = rest
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '-')
            .collect();
        if !name.is_empty() && name != "version" && name != "help" && !flags.contains(&name) {
            flags.push(name);
        }
    }
    flags
}

/// docs/flags.md's table: flag (without dashes) → status.
fn table() -> BTreeMap<String, String> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../docs/flags.md");
    let text = std::fs::read_to_string(&path).expect("reading docs/flags.md");
    text.lines()
        .filter_map(|line| {
            let mut cells = line.split('|').map(str::trim).skip(1);
            let flag = cells.next()?.strip_prefix("`--")?.strip_suffix('`')?;
            let status = cells.next()?;
            Some((flag.to_string(), status.to_string()))
        })
        .collect()
}

#[test]
fn every_etcd_flag_is_in_the_table() {
    let flags = etcd_help_flags();
    assert!(
        flags.len() >= 80,
        "etcd --help listed only {} flags: {flags:?}",
        flags.len()
    );
    let table = table();
    let missing: Vec<&String> = flags.iter().filter(|f| !table.contains_key(*f)).collect();
    assert!(missing.is_empty(), "docs/flags.md lacks {missing:?}");
    let ours = Command::new(env!("CARGO_BIN_EXE_metastore"))
        .arg("--help")
        .output()
        .expect("metastore --help");
    let ours = String::from_utf8_lossy(&ours.stdout).into_owned();
    // The table says what the code does.
    for (flag, status) in &table {
        let fate = ETCD_FLAGS.iter().find(|f| f.name == flag).map(|f| f.fate);
        let agrees = match (status.as_str(), fate) {
            ("a", None) => ours.contains(&format!("--{flag}")),
            ("b", Some(Fate::NoEffect(_))) => true,
            ("c", Some(Fate::Refused(_))) => true,
            ("a/c", Some(Fate::DefaultOnly { .. })) => true,
            _ => false,
        };
        assert!(
            agrees,
            "docs/flags.md says --{flag} is {status:?}, the code does {fate:?}"
        );
    }
}

/// Runs `metastore` on free ports with `args` and `env` for up to `limit`, killing it then,
/// and answers whether it exited successfully (`None`: it was still running) and its output.
fn run_briefly(
    args: &[String],
    env: &[(String, String)],
    limit: Duration,
) -> (Option<bool>, String) {
    let (status, text) = run_program_briefly(
        std::path::Path::new(env!("CARGO_BIN_EXE_metastore")),
        args,
        env,
        limit,
    );
    (status.map(|s| s.success()), text)
}

/// As [`run_briefly`], for `program` (etcd or metastore), answering its exit status.
fn run_program_briefly(
    program: &std::path::Path,
    args: &[String],
    env: &[(String, String)],
    limit: Duration,
) -> (Option<std::process::ExitStatus>, String) {
    let dir = tempfile::tempdir().expect("temp dir");
    let (client, peer) = (free_port(), free_port());
    let mut command = Command::new(program);
    for (name, _) in std::env::vars_os() {
        let name = name.to_string_lossy();
        if name.starts_with("ETCD") || name.starts_with("METASTORE") {
            command.env_remove(&*name);
        }
    }
    let mut child: Child = command
        .arg("--data-dir")
        .arg(dir.path().join("d"))
        .args([
            "--listen-client-urls",
            &format!("http://127.0.0.1:{client}"),
        ])
        .args([
            "--advertise-client-urls",
            &format!("http://127.0.0.1:{client}"),
        ])
        .args(["--listen-peer-urls", &format!("http://127.0.0.1:{peer}")])
        .args([
            "--initial-advertise-peer-urls",
            &format!("http://127.0.0.1:{peer}"),
        ])
        .args(args)
        .envs(env.iter().cloned())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawning metastore");
    let started = Instant::now();
    let mut exited = None;
    while started.elapsed() < limit {
        if let Some(status) = child.try_wait().expect("try_wait") {
            exited = Some(status);
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    if exited.is_none() {
        let _ = child.kill();
    }
    let out = child.wait_with_output().expect("output");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (exited, text)
}

/// A value etcd's default is not.
fn other_value(boolean: bool, default: Option<&str>) -> String {
    match (boolean, default) {
        (true, Some("true")) => "false".into(),
        (true, _) => "true".into(),
        (false, _) => "7".into(),
    }
}

#[test]
fn no_effect_flags_start_and_refused_flags_name_themselves() {
    for f in ETCD_FLAGS {
        match f.fate {
            Fate::NoEffect(_) => {
                let arg = format!("--{}={}", f.name, other_value(f.boolean, None));
                let server = Server::start(Kind::Redb, &[&arg]);
                let log = server.log_tail();
                assert!(
                    log.contains(&format!("--{}=", f.name)) && log.contains("has no effect"),
                    "{arg} started without saying it has no effect:\n{log}"
                );
            }
            Fate::Refused(_) | Fate::DefaultOnly { .. } => {
                let default = match f.fate {
                    Fate::DefaultOnly { default, .. } => Some(default),
                    _ => None,
                };
                let value = other_value(f.boolean, default);
                for (args, env) in [
                    (vec![format!("--{}={value}", f.name)], vec![]),
                    (vec![], vec![(env_name(f.name), value.clone())]),
                ] {
                    let named = if args.is_empty() {
                        env_name(f.name)
                    } else {
                        format!("--{}", f.name)
                    };
                    match run_briefly(&args, &env, Duration::from_secs(10)) {
                        (Some(false), text) => assert!(
                            text.contains(&named) && text.contains("not supported"),
                            "{args:?} {env:?} was refused without naming {named}: {text}"
                        ),
                        (Some(true), text) => panic!("{args:?} {env:?} exited 0: {text}"),
                        (None, _) => panic!("{args:?} {env:?} was not refused (still running)"),
                    }
                }
            }
        }
    }
    // The default of an a/c flag is accepted (the unit tests check each kind of default).
    let server = Server::start(
        Kind::Redb,
        &[
            "--experimental-initial-corrupt-check=false",
            "--pre-vote=false",
        ],
    );
    drop(server);
}

#[test]
fn etcd_variables_refused_and_unknown_ones_warned_about() {
    // A refused flag given as a variable names the variable (TLS is never silently ignored).
    let (exit, text) = run_briefly(
        &[],
        &[(
            "ETCD_EXPERIMENTAL_PEER_SKIP_CLIENT_SAN_VERIFICATION".into(),
            "true".into(),
        )],
        Duration::from_secs(10),
    );
    assert_eq!(exit, Some(false), "{text}");
    assert!(
        text.contains("ETCD_EXPERIMENTAL_PEER_SKIP_CLIENT_SAN_VERIFICATION")
            && text.contains("TLS"),
        "{text}"
    );
    // Peer auto TLS asked for by variable, with only http:// peer URLs: refused, not plaintext.
    let (exit, text) = run_briefly(
        &[],
        &[("ETCD_PEER_AUTO_TLS".into(), "true".into())],
        Duration::from_secs(10),
    );
    assert_eq!(exit, Some(false), "{text}");
    assert!(
        text.contains("--peer-auto-tls") && text.contains("plaintext"),
        "{text}"
    );
    // An implemented TLS variable is read: a certificate without an https:// URL is refused.
    let (exit, text) = run_briefly(
        &[],
        &[("ETCD_CERT_FILE".into(), "/x.pem".into())],
        Duration::from_secs(10),
    );
    assert_eq!(exit, Some(false), "{text}");
    assert!(
        text.contains("--cert-file") && text.contains("plaintext"),
        "{text}"
    );
    // An unknown one is warned about, and the server starts anyway.
    let (exit, text) = run_briefly(
        &[],
        &[("ETCD_NO_SUCH_FLAG".into(), "1".into())],
        Duration::from_secs(3),
    );
    assert_eq!(exit, None, "it did not keep running: {text}");
    assert!(
        text.contains("unrecognized environment variable ETCD_NO_SUCH_FLAG=1"),
        "{text}"
    );
}

#[test]
fn listen_metrics_urls_serve_metrics_and_health() {
    let port = free_port();
    let url = format!("--listen-metrics-urls=http://127.0.0.1:{port}");
    let server = Server::start(Kind::Redb, &[&url]);
    let (code, body) = crate::harness::http_get(port, "/metrics").expect("metrics answered");
    assert_eq!(code, 200);
    assert!(body.contains("metastore_"), "{body}");
    let (code, body) = crate::harness::http_get(port, "/health").expect("health answered");
    assert_eq!(
        (code, body.contains(r#""health":"true""#)),
        (200, true),
        "{body}"
    );
    // As etcd: only those two there.
    let (code, _) = crate::harness::http_get(port, "/version").expect("an answer");
    assert_eq!(code, 404);
    drop(server);
}

#[test]
fn a_flag_and_its_variable_together_are_refused_as_by_etcd() {
    let words = "conflicting environment variable \"ETCD_NAME\" is shadowed by corresponding \
                 command-line flag (either unset environment variable or disable flag)";
    let metastore = PathBuf::from(env!("CARGO_BIN_EXE_metastore"));
    for program in [require_tool("etcd"), metastore] {
        for flag in ["--name", "-name"] {
            // Even an empty variable counts as set, as in etcd.
            for value in ["x", ""] {
                let (status, text) = run_program_briefly(
                    &program,
                    &[flag.to_string(), "y".to_string()],
                    &[("ETCD_NAME".into(), value.into())],
                    Duration::from_secs(10),
                );
                assert_eq!(
                    status.and_then(|s| s.code()),
                    Some(1),
                    "{program:?} {flag} y with ETCD_NAME={value:?}: {text}"
                );
                assert!(text.contains(words), "{program:?}: {text}");
            }
        }
    }
    // Either one alone is read.
    let (status, text) = run_briefly(
        &[],
        &[("ETCD_NAME".into(), "x".into())],
        Duration::from_secs(3),
    );
    assert_eq!(status, None, "ETCD_NAME alone: {text}");
}

#[test]
fn single_dash_flags_are_read_as_etcd_reads_them() {
    // A value as the next argument, and a boolean alone.
    let (status, text) = run_briefly(
        &["-name".into(), "solo".into(), "-debug".into()],
        &[],
        Duration::from_secs(3),
    );
    assert_eq!(status, None, "it did not keep running: {text}");
    assert!(
        text.contains("DEBUG"),
        "-debug did not turn on debug logs: {text}"
    );
    // A value after `=`, checked as the two-dash flag's.
    let (status, text) = run_briefly(
        &[
            "-heartbeat-interval=100".into(),
            "-election-timeout".into(),
            "400".into(),
        ],
        &[],
        Duration::from_secs(10),
    );
    assert_eq!(status, Some(false), "{text}");
    assert!(
        text.contains("--election-timeout (400ms) should be at least 5 times"),
        "{text}"
    );
}
