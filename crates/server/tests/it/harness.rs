//! Spawning `metastore` and a real etcd 3.4 on free ports with their own data dirs.

use std::path::PathBuf;
use std::process::{Command, ExitStatus};
use std::time::{Duration, Instant};

use etcd_client::{Client, ConnectOptions};
use testkit::{server_command, Placement, Process};

/// Longest a server may take to answer `/health` after it is spawned.
pub const READY_TIMEOUT: Duration = Duration::from_secs(20);

/// Every request a test client makes is bounded by this.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

pub use testkit::{free_port, http_get};

/// The path of `tool` on `PATH`; panics, saying how to install it, when it is missing.
pub fn require_tool(tool: &str) -> PathBuf {
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join(tool))
            .find(|p| p.is_file())
    });
    match found {
        Some(path) => path,
        None => panic!(
            "`{tool}` is not on PATH: these tests compare MetaStore with etcd 3.4 and need its \
             `etcd` and `etcdctl`; install them with `apt-get install -y etcd-server etcd-client` \
             (CI installs them in .ci/run)"
        ),
    }
}

/// Which server a [`Server`] runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// `metastore --engine redb`.
    Redb,
    /// `metastore --engine mem`.
    Mem,
    /// The real etcd 3.4.
    Etcd,
}

impl Kind {
    fn program(self) -> PathBuf {
        match self {
            Kind::Redb | Kind::Mem => PathBuf::from(env!("CARGO_BIN_EXE_metastore")),
            Kind::Etcd => {
                let path = require_tool("etcd");
                let out = Command::new(&path)
                    .arg("--version")
                    .output()
                    .expect("running etcd --version");
                let text = String::from_utf8_lossy(&out.stdout);
                assert!(
                    text.contains("etcd Version: 3.4."),
                    "these tests compare with etcd 3.4, found {text:?}; install Debian's \
                     `etcd-server etcd-client`"
                );
                path
            }
        }
    }
}

/// One running server process with a temporary data dir, killed (SIGKILL) when dropped.
pub struct Server {
    kind: Kind,
    /// The client port (gRPC and HTTP).
    pub client_port: u16,
    /// The peer port.
    pub peer_port: u16,
    extra_args: Vec<String>,
    // Before `dir`: the process is killed before its directory goes.
    process: Process,
    dir: tempfile::TempDir,
}

impl Server {
    /// Starts `kind` with `extra_args` and waits until it is healthy.
    pub fn start(kind: Kind, extra_args: &[&str]) -> Server {
        Server::start_prepared(kind, extra_args, |_, _| {})
    }

    /// Starts `kind` on a data dir `prepare` builds first (given the data dir, which does not
    /// exist yet, and the peer URL; the member is named `t`), and waits until it is healthy.
    pub fn start_prepared(
        kind: Kind,
        extra_args: &[&str],
        prepare: impl FnOnce(&std::path::Path, &str),
    ) -> Server {
        let dir = tempfile::Builder::new()
            .prefix("metastore-it-")
            .tempdir()
            .expect("temp dir");
        let mut server = Server {
            kind,
            client_port: free_port(),
            peer_port: free_port(),
            extra_args: extra_args.iter().map(|s| s.to_string()).collect(),
            process: Process::new("the server", dir.path().join("server.log")),
            dir,
        };
        prepare(&server.data_dir(), &server.peer_url());
        server.spawn();
        server
    }

    /// The client URL, as `--endpoints` takes it.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.client_port)
    }

    /// The peer URL.
    pub fn peer_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.peer_port)
    }

    /// Which server this is.
    pub fn kind(&self) -> Kind {
        self.kind
    }

    /// The server's process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.process.pid()
    }

    /// The server's resident memory in bytes (`VmRSS`), while it runs on Linux.
    pub fn rss(&self) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid()?)).ok()?;
        let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
        let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
        Some(kib * 1024)
    }

    /// A gauge or counter from `/metrics` (the sum of its series), if the server has it.
    pub fn metric(&self, name: &str) -> Option<f64> {
        let (_, body) = http_get(self.client_port, "/metrics")?;
        testkit::metric_sum(&body, name)
    }

    /// The server's `--data-dir`.
    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn spawn_only(&mut self) {
        let peer = self.peer_url();
        let placement = Placement {
            name: "t".into(),
            data_dir: self.data_dir(),
            client_url: self.endpoint(),
            listen_peer_url: peer.clone(),
            initial_cluster: format!("t={peer}"),
            peer_url: peer,
            state: None,
        };
        let mut command = server_command(self.kind.program(), self.kind == Kind::Etcd);
        placement.add_to(&mut command);
        match self.kind {
            Kind::Redb => command.args(["--engine", "redb"]),
            Kind::Mem => command.args(["--engine", "mem"]),
            Kind::Etcd => &mut command,
        };
        command.args(&self.extra_args);
        let kind = self.kind;
        self.process
            .start(command)
            .unwrap_or_else(|e| panic!("{kind:?}: {e}"));
    }

    fn spawn(&mut self) {
        self.spawn_only();
        self.wait_ready();
    }

    /// Starts the server again and expects it to refuse: waits up to `limit` for it to exit
    /// unsuccessfully and answers what it logged. Panics if it becomes healthy or keeps running.
    pub fn restart_refused(&mut self, limit: Duration) -> String {
        let before = self.process.log_len();
        self.spawn_only();
        let started = Instant::now();
        loop {
            if let Some(status) = self.process.exited().expect("try_wait") {
                assert!(!status.success(), "the refusal must be an error exit");
                return self.process.log_since(before);
            }
            if healthy(self.client_port) {
                panic!(
                    "{:?} started instead of refusing; its log:\n{}",
                    self.kind,
                    self.log_tail()
                );
            }
            assert!(
                started.elapsed() < limit,
                "{:?} neither refused nor started within {limit:?}; its log:\n{}",
                self.kind,
                self.log_tail()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Polls `GET /health` until it answers healthy; panics with the log after
    /// [`READY_TIMEOUT`] or if the process exits.
    fn wait_ready(&mut self) {
        let port = self.client_port;
        if let Err(e) = self.process.wait_ready(READY_TIMEOUT, || healthy(port)) {
            panic!("{:?}: {e}", self.kind);
        }
    }

    /// The end of the server's log, for failure messages.
    pub fn log_tail(&self) -> String {
        self.process.log_tail()
    }

    /// SIGKILL, and wait for the process to be gone.
    pub fn kill(&mut self) {
        self.process.kill();
    }

    /// From the next start on, runs `kind` on this server's ports and data dir (the server must
    /// be stopped): e.g. MetaStore on what etcd left.
    pub fn switch_to(&mut self, kind: Kind) {
        assert!(!self.process.is_running(), "the server is still running");
        self.kind = kind;
    }

    /// Starts the server again on the same ports and data dir, and waits until it is healthy.
    pub fn restart(&mut self) {
        self.spawn();
    }

    /// Sends SIGTERM and waits up to `limit` for the process to exit; `None` if it did not.
    pub fn terminate(&mut self, limit: Duration) -> Option<ExitStatus> {
        let kind = self.kind;
        self.process
            .terminate(limit)
            .unwrap_or_else(|e| panic!("{kind:?}: {e}"))
    }

    /// An etcd-client connected to this server, every request bounded by [`REQUEST_TIMEOUT`].
    pub async fn client(&self) -> Client {
        Client::connect(
            [self.endpoint()],
            Some(
                ConnectOptions::new()
                    .with_timeout(REQUEST_TIMEOUT)
                    .with_connect_timeout(Duration::from_secs(5)),
            ),
        )
        .await
        .unwrap_or_else(|e| panic!("connecting to {:?}: {e}", self.kind))
    }
}

/// Whether the server on `port` answers `GET /health` healthy.
fn healthy(port: u16) -> bool {
    matches!(http_get(port, "/health"), Some((200, body)) if body.contains(r#""health":"true""#))
}
