//! Logs next to etcd 3.4's: `--logger zap` JSON lines with the same leading keys, to
//! `--log-outputs` files; a bad `--log-level` refused at start as etcd refuses it; no colour
//! codes when the output is not a terminal; member ids in hex only.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use regex::Regex;

use crate::harness::{require_tool, Kind, Server};

/// etcd's and MetaStore's answers to `--log-level verbose`: both refuse to start, naming the
/// level.
#[test]
fn a_bad_log_level_is_refused_at_start_as_etcd_refuses_it() {
    let dir = tempfile::tempdir().expect("temp dir");
    for program in [require_tool("etcd"), env!("CARGO_BIN_EXE_metastore").into()] {
        let mut child = Command::new(&program)
            .arg("--data-dir")
            .arg(dir.path().join("d"))
            .args(["--log-level", "verbose"])
            .args(["--listen-client-urls", "http://127.0.0.1:0"])
            .args(["--listen-peer-urls", "http://127.0.0.1:0"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn");
        let started = Instant::now();
        let status = loop {
            if let Some(status) = child.try_wait().expect("try_wait") {
                break Some(status);
            }
            if started.elapsed() > Duration::from_secs(10) {
                let _ = child.kill();
                break None;
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let out = child.wait_with_output().expect("output");
        let text = String::from_utf8_lossy(&out.stderr);
        let status = status.unwrap_or_else(|| {
            panic!(
                "{} started with --log-level verbose: {text}",
                program.display()
            )
        });
        assert!(!status.success(), "{}: {text}", program.display());
        assert!(
            text.contains(r#"unknown level "verbose""#),
            "{}: {text}",
            program.display()
        );
    }
}

/// Checks every line of a zap log: a JSON object opening with etcd's four keys in etcd's
/// order; returns the lines.
fn zap_lines(who: &str, text: &str) -> Vec<String> {
    let shape = Regex::new(
        r#"^\{"level":"(debug|info|warn|error)","ts":"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z","caller":"[^"]+:\d+","msg":".*\}$"#,
    )
    .expect("regex");
    let lines: Vec<String> = text.lines().map(str::to_string).collect();
    assert!(!lines.is_empty(), "{who}: no log lines");
    for line in &lines {
        assert!(shape.is_match(line), "{who}: not a zap line: {line}");
    }
    lines
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zap_json_lines_to_log_outputs_as_etcd() {
    let dir = tempfile::tempdir().expect("temp dir");
    for kind in [Kind::Etcd, Kind::Redb] {
        let file = dir.path().join(format!("{kind:?}.log"));
        let outputs = format!("--log-outputs=stderr,{}", file.display());
        let server = Server::start(kind, &["--logger=zap", &outputs]);
        let mut c = server.client().await;
        c.put("k", "v", None).await.expect("put");
        let members = c.member_list().await.expect("member list");
        let id = members.members()[0].id();
        drop(server);
        let text = std::fs::read_to_string(&file).expect("the log file");
        let lines = zap_lines(&format!("{kind:?}"), &text);
        let hex = format!("{id:x}");
        assert!(
            lines.iter().any(|l| l.contains(&hex)),
            "{kind:?}: the member id {hex} is never logged:\n{text}"
        );
        if kind != Kind::Etcd {
            // etcd's raft package still prints ids in decimal now and then; MetaStore never.
            assert!(
                !text.contains(&id.to_string()),
                "{kind:?}: the member id in decimal ({id}) is logged:\n{text}"
            );
            // A structured field, not only text in the message.
            assert!(
                text.contains(&format!(r#""member":"{hex}""#)),
                "{kind:?}:\n{text}"
            );
        }
    }
}

#[test]
fn no_colour_codes_when_the_output_is_not_a_terminal() {
    let server = Server::start(Kind::Redb, &[]);
    let log = server.log_tail();
    assert!(log.contains("ready to serve client requests"), "{log}");
    assert!(
        !log.contains('\u{1b}'),
        "colour codes in a log file:\n{log:?}"
    );
}
