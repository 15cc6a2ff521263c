//! `unix://` client URLs, as etcd 3.4 serves them: `unix://host:port` listens on the socket
//! file `host:port` in the working directory, and etcdctl reaches it with the same URL.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::harness::{free_port, require_tool, Kind, READY_TIMEOUT};

/// Longest one etcdctl command may take (its own timeouts are shorter).
const COMMAND_LIMIT: Duration = Duration::from_secs(30);

/// Runs etcdctl 3.4 in `dir` against `endpoint`: (exit code, stdout and stderr).
fn etcdctl_in(dir: &Path, endpoint: &str, args: &[&str]) -> (Option<i32>, String) {
    let out = tempfile::NamedTempFile::new_in(dir).expect("output file");
    let mut child = Command::new(require_tool("etcdctl"))
        .current_dir(dir)
        .env("ETCDCTL_API", "3")
        .arg(format!("--endpoints={endpoint}"))
        .args(["--dial-timeout=2s", "--command-timeout=4s"])
        .args(args)
        .stdin(Stdio::null())
        .stdout(out.reopen().expect("output"))
        .stderr(out.reopen().expect("output"))
        .spawn()
        .expect("spawning etcdctl");
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
        std::thread::sleep(Duration::from_millis(10));
    };
    let text = std::fs::read_to_string(out.path()).unwrap_or_default();
    let text = text
        .lines()
        .filter(|l| !l.starts_with(r#"{"level":"#))
        .map(|l| format!("{l}\n"))
        .collect();
    (status.code(), text)
}

/// A server run in `dir` (its working directory), killed when dropped.
struct InDir {
    child: Child,
}

impl Drop for InDir {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn spawn_in(kind: Kind, dir: &Path, client_urls: &str) -> InDir {
    let program = match kind {
        Kind::Etcd => require_tool("etcd"),
        _ => env!("CARGO_BIN_EXE_metastore").into(),
    };
    let peer = format!("http://127.0.0.1:{}", free_port());
    let mut command = Command::new(program);
    for (name, _) in std::env::vars_os() {
        let name = name.to_string_lossy();
        if name.starts_with("ETCD") || name.starts_with("METASTORE") {
            command.env_remove(&*name);
        }
    }
    let log = std::fs::File::create(dir.join("server.log")).expect("log");
    let child = command
        .current_dir(dir)
        .args(["--data-dir", "data", "--name", "u"])
        .args(["--listen-client-urls", client_urls])
        .args(["--advertise-client-urls", client_urls])
        .args(["--listen-peer-urls", &peer])
        .args(["--initial-advertise-peer-urls", &peer])
        .args(["--initial-cluster", &format!("u={peer}")])
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("log"))
        .stderr(log)
        .spawn()
        .expect("spawning the server");
    InDir { child }
}

#[test]
fn etcdctl_puts_and_gets_over_a_unix_socket_as_on_etcd() {
    let mut seen = Vec::new();
    for kind in [Kind::Etcd, Kind::Redb] {
        let dir = tempfile::tempdir().expect("temp dir");
        let name = format!("localhost:{}", free_port());
        let unix = format!("unix://{name}");
        let urls = format!("{unix},http://127.0.0.1:{}", free_port());
        let mut server = spawn_in(kind, dir.path(), &urls);
        let started = Instant::now();
        loop {
            if let Some(status) = server.child.try_wait().expect("try_wait") {
                let log = std::fs::read_to_string(dir.path().join("server.log"));
                panic!("{kind:?} exited with {status}: {log:?}");
            }
            if etcdctl_in(dir.path(), &unix, &["endpoint", "health"]).0 == Some(0) {
                break;
            }
            assert!(
                started.elapsed() < READY_TIMEOUT,
                "{kind:?} not healthy on {unix} within {READY_TIMEOUT:?}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        use std::os::unix::fs::FileTypeExt;
        let socket = std::fs::metadata(dir.path().join(&name)).expect("socket file");
        assert!(socket.file_type().is_socket(), "{kind:?}: {socket:?}");
        let put = etcdctl_in(dir.path(), &unix, &["put", "k", "over a unix socket"]);
        let get = etcdctl_in(dir.path(), &unix, &["get", "k", "--print-value-only"]);
        assert_eq!(get.1, "over a unix socket\n", "{kind:?}: {get:?}");
        seen.push((put, get));
        drop(server);
    }
    assert_eq!(seen[0], seen[1], "etcd 3.4 vs MetaStore");
}

#[test]
fn a_unix_url_without_host_and_port_is_refused_as_on_etcd() {
    for kind in [Kind::Etcd, Kind::Redb] {
        let dir = tempfile::tempdir().expect("temp dir");
        let url = format!("unix://{}/s.sock", dir.path().display());
        let mut server = spawn_in(kind, dir.path(), &url);
        let started = Instant::now();
        let status = loop {
            if let Some(status) = server.child.try_wait().expect("try_wait") {
                break status;
            }
            assert!(started.elapsed() < READY_TIMEOUT, "{kind:?} accepted {url}");
            std::thread::sleep(Duration::from_millis(50));
        };
        assert!(!status.success());
        let log = std::fs::read_to_string(dir.path().join("server.log")).expect("log");
        assert!(
            log.contains(r#"URL address does not have the form "host:port""#),
            "{kind:?}: {log}"
        );
    }
}
