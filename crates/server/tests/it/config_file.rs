//! etcd's `--config-file`: one YAML file starts etcd 3.4 and `metastore` alike, wins over
//! command-line flags and `ETCD_*` variables as in etcd 3.4, and a value of the wrong type is
//! refused by both in the same words.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::harness::{free_port, require_tool, Kind, READY_TIMEOUT};
use crate::tls::{certs, etcdctl, Pki};

/// A server process started from a configuration file, killed when dropped.
struct FromFile {
    child: Child,
    log: std::path::PathBuf,
}

impl FromFile {
    /// Starts `kind` with `--config-file file` plus conflicting flags and variables, which the
    /// file must win over.
    fn spawn(kind: Kind, file: &Path, log: &Path, extra: &[&str]) -> FromFile {
        let program = match kind {
            Kind::Etcd => require_tool("etcd"),
            _ => env!("CARGO_BIN_EXE_metastore").into(),
        };
        let mut command = Command::new(program);
        for (name, _) in std::env::vars_os() {
            let name = name.to_string_lossy();
            if name.starts_with("ETCD") || name.starts_with("METASTORE") {
                command.env_remove(&*name);
            }
        }
        let out = std::fs::File::create(log).expect("log");
        let child = command
            .arg("--config-file")
            .arg(file)
            .args(["--name", "from-flag", "--max-request-bytes", "1000000"])
            .args(extra)
            .env("ETCD_NAME", "from-env")
            .env("ETCD_MAX_REQUEST_BYTES", "2000000")
            .env("ETCD_HEARTBEAT_INTERVAL", "not a number")
            .stdin(Stdio::null())
            .stdout(out.try_clone().expect("log"))
            .stderr(out)
            .spawn()
            .expect("spawning the server");
        FromFile {
            child,
            log: log.to_path_buf(),
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits for etcdctl with `tls` to find `endpoint` healthy.
    fn wait_healthy(&mut self, endpoint: &str, tls: &[String]) {
        let started = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                panic!("exited at start with {status}: {}", self.log());
            }
            if etcdctl(endpoint, tls, &["endpoint", "health"]).0 == Some(0) {
                return;
            }
            assert!(
                started.elapsed() < READY_TIMEOUT,
                "not healthy within {READY_TIMEOUT:?}: {}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Waits for the process to exit on its own; its log.
    fn refused(mut self) -> String {
        let started = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                assert!(!status.success(), "a refusal must be an error exit");
                return self.log();
            }
            assert!(
                started.elapsed() < READY_TIMEOUT,
                "the configuration was not refused: {}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for FromFile {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The YAML file both servers start from: etcd's key names, client TLS in the nested map,
/// durations in nanoseconds as etcd's decoder wants them, and one MetaStore key (`engine`)
/// that etcd ignores.
fn yaml(dir: &Path, pki: &Pki, client: u16, peer: u16) -> String {
    format!(
        "# etcd 3.4's configuration file format\n\
         name: from-file\n\
         data-dir: {data}\n\
         listen-client-urls: https://127.0.0.1:{client}\n\
         advertise-client-urls: https://127.0.0.1:{client}\n\
         listen-peer-urls: http://127.0.0.1:{peer}\n\
         initial-advertise-peer-urls: http://127.0.0.1:{peer}\n\
         initial-cluster: from-file=http://127.0.0.1:{peer}\n\
         initial-cluster-token: file-token\n\
         initial-cluster-state: new\n\
         heartbeat-interval: 100\n\
         election-timeout: 1000\n\
         max-request-bytes: 300\n\
         strict-reconfig-check: true\n\
         grpc-keepalive-min-time: 5000000000\n\
         log-outputs: [stderr]\n\
         wal-dir:\n\
         client-transport-security:\n\
         \x20 cert-file: {cert}\n\
         \x20 key-file: {key}\n\
         \x20 trusted-ca-file: {ca}\n\
         \x20 client-cert-auth: true\n\
         engine: mem\n",
        data = dir.join("data").display(),
        cert = pki.path("server.pem"),
        key = pki.path("server-key.pem"),
        ca = pki.path("ca.pem"),
    )
}

#[test]
fn one_yaml_file_starts_etcd_and_metastore_and_wins_over_flags_and_variables() {
    let pki = Pki::new();
    let dir = tempfile::tempdir().expect("temp dir");
    let (client, peer) = (free_port(), free_port());
    let file = dir.path().join("etcd.conf.yml");
    std::fs::write(&file, yaml(dir.path(), &pki, client, peer)).expect("write");
    let endpoint = format!("https://127.0.0.1:{client}");
    let tls = certs(&pki, "client");
    let mut seen = Vec::new();
    for kind in [Kind::Etcd, Kind::Redb] {
        // One after the other on the same ports and data dir, from the very same file.
        let _ = std::fs::remove_dir_all(dir.path().join("data"));
        let mut server = FromFile::spawn(kind, &file, &dir.path().join("log"), &[]);
        server.wait_healthy(&endpoint, &tls);
        let members = etcdctl(&endpoint, &tls, &["member", "list"]);
        assert_eq!(members.0, Some(0), "{kind:?}: {members:?}");
        // The file's name, not the flag's or the variable's; and its https:// client URL.
        assert!(
            members.1.contains(", from-file, ")
                && members.1.contains(&format!("https://127.0.0.1:{client}")),
            "{kind:?}: {}",
            members.1
        );
        // The file's request limit (300 bytes), not the flag's or the variable's.
        let big = "x".repeat(1000);
        let put = etcdctl(&endpoint, &tls, &["put", "k", &big]);
        assert!(
            put.2.contains("etcdserver: request is too large"),
            "{kind:?}: {put:?}"
        );
        let put = etcdctl(&endpoint, &tls, &["put", "k", "small"]);
        assert_eq!(put.0, Some(0), "{kind:?}: {put:?}");
        // Without a client certificate the file's client-cert-auth refuses it.
        let bare = etcdctl(&endpoint, &certs(&pki, ""), &["get", "k"]);
        assert_ne!(bare.0, Some(0), "{kind:?}: {bare:?}");
        if kind != Kind::Etcd {
            let log = server.log();
            assert!(
                log.contains("loaded server configuration from")
                    && log.contains("ignored if provided"),
                "{log}"
            );
        }
        seen.push((put.1, bare.0));
        drop(server);
    }
    assert_eq!(seen[0], seen[1], "etcd 3.4 vs MetaStore");
}

#[test]
fn a_value_of_the_wrong_type_is_refused_as_etcd_refuses_it() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (client, peer) = (free_port(), free_port());
    let file = dir.path().join("bad.yml");
    std::fs::write(
        &file,
        format!(
            "data-dir: {}\nlisten-client-urls: http://127.0.0.1:{client}\n\
             listen-peer-urls: http://127.0.0.1:{peer}\nheartbeat-interval: '100'\n",
            dir.path().join("data").display()
        ),
    )
    .expect("write");
    for kind in [Kind::Etcd, Kind::Redb] {
        let log = FromFile::spawn(kind, &file, &dir.path().join("log"), &[]).refused();
        assert!(
            log.contains(
                "json: cannot unmarshal string into Go struct field \
                 configYAML.heartbeat-interval of type uint"
            ),
            "{kind:?}: {log}"
        );
    }
    // A refused etcd flag in the file is refused as on the command line, naming it.
    std::fs::write(
        &file,
        format!(
            "data-dir: {}\nlisten-client-urls: http://127.0.0.1:{client}\n\
             listen-peer-urls: http://127.0.0.1:{peer}\nenable-v2: true\n",
            dir.path().join("data").display()
        ),
    )
    .expect("write");
    let log = FromFile::spawn(Kind::Redb, &file, &dir.path().join("log"), &[]).refused();
    assert!(log.contains("--enable-v2=true is not supported"), "{log}");
}
