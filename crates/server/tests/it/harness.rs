//! Spawning `metastore` and a real etcd 3.4 on free ports with their own data dirs.

use std::fs::{File, OpenOptions};
use std::io::Read;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use etcd_client::{Client, ConnectOptions};

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
    child: Option<Child>,
    /// The client port (gRPC and HTTP).
    pub client_port: u16,
    /// The peer port.
    pub peer_port: u16,
    extra_args: Vec<String>,
    dir: tempfile::TempDir,
}

impl Server {
    /// Starts `kind` with `extra_args` and waits until it is healthy.
    pub fn start(kind: Kind, extra_args: &[&str]) -> Server {
        let dir = tempfile::Builder::new()
            .prefix("metastore-it-")
            .tempdir()
            .expect("temp dir");
        let mut server = Server {
            kind,
            child: None,
            client_port: free_port(),
            peer_port: free_port(),
            extra_args: extra_args.iter().map(|s| s.to_string()).collect(),
            dir,
        };
        server.spawn();
        server
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
            child: None,
            client_port: free_port(),
            peer_port: free_port(),
            extra_args: extra_args.iter().map(|s| s.to_string()).collect(),
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
        self.child.as_ref().map(Child::id)
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

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("server.log")
    }

    fn spawn_only(&mut self) {
        assert!(self.child.is_none(), "the server is already running");
        let client = self.endpoint();
        let peer = self.peer_url();
        let data_dir = self.data_dir();
        let mut args: Vec<String> = vec![
            "--name".into(),
            "t".into(),
            "--data-dir".into(),
            data_dir.display().to_string(),
            "--listen-client-urls".into(),
            client.clone(),
            "--advertise-client-urls".into(),
            client,
            "--listen-peer-urls".into(),
            peer.clone(),
            "--initial-advertise-peer-urls".into(),
            peer.clone(),
            "--initial-cluster".into(),
            format!("t={peer}"),
        ];
        match self.kind {
            Kind::Redb => args.extend(["--engine".into(), "redb".into()]),
            Kind::Mem => args.extend(["--engine".into(), "mem".into()]),
            Kind::Etcd => {}
        }
        args.extend(self.extra_args.iter().cloned());
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .expect("opening the server log");
        let mut command = Command::new(self.kind.program());
        for (name, _) in std::env::vars_os() {
            let name = name.to_string_lossy();
            if name.starts_with("ETCD") || name.starts_with("METASTORE") {
                command.env_remove(&*name);
            }
        }
        let child = command
            .args(&args)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log handle"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("spawning {:?}: {e}", self.kind));
        self.child = Some(child);
    }

    fn spawn(&mut self) {
        self.spawn_only();
        self.wait_ready();
    }

    /// Starts the server again and expects it to refuse: waits up to `limit` for it to exit
    /// unsuccessfully and answers what it logged. Panics if it becomes healthy or keeps running.
    pub fn restart_refused(&mut self, limit: Duration) -> String {
        let before = std::fs::metadata(self.log_path()).map_or(0, |m| m.len() as usize);
        self.spawn_only();
        let started = Instant::now();
        loop {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().expect("try_wait"))
            {
                self.child = None;
                assert!(!status.success(), "the refusal must be an error exit");
                let log = std::fs::read(self.log_path()).unwrap_or_default();
                return String::from_utf8_lossy(log.get(before..).unwrap_or_default()).into_owned();
            }
            if let Some((200, body)) = http_get(self.client_port, "/health") {
                if body.contains(r#""health":"true""#) {
                    panic!(
                        "{:?} started instead of refusing; its log:\n{}",
                        self.kind,
                        self.log_tail()
                    );
                }
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
        let started = Instant::now();
        loop {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().expect("try_wait"))
            {
                panic!(
                    "{:?} exited during start-up with {status}; its log:\n{}",
                    self.kind,
                    self.log_tail()
                );
            }
            if let Some((code, body)) = http_get(self.client_port, "/health") {
                if code == 200 && body.contains(r#""health":"true""#) {
                    return;
                }
            }
            if started.elapsed() > READY_TIMEOUT {
                panic!(
                    "{:?} was not healthy within {READY_TIMEOUT:?}; its log:\n{}",
                    self.kind,
                    self.log_tail()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The end of the server's log, for failure messages.
    pub fn log_tail(&self) -> String {
        let mut text = String::new();
        if let Ok(mut f) = File::open(self.log_path()) {
            let _ = f.read_to_string(&mut text);
        }
        let start = text.len().saturating_sub(6000);
        let start = (start..text.len())
            .find(|i| text.is_char_boundary(*i))
            .unwrap_or(text.len());
        text[start..].to_string()
    }

    /// SIGKILL, and wait for the process to be gone.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// From the next start on, runs `kind` on this server's ports and data dir (the server must
    /// be stopped): e.g. MetaStore on what etcd left.
    pub fn switch_to(&mut self, kind: Kind) {
        assert!(self.child.is_none(), "the server is still running");
        self.kind = kind;
    }

    /// Starts the server again on the same ports and data dir, and waits until it is healthy.
    pub fn restart(&mut self) {
        self.spawn();
    }

    /// Sends SIGTERM and waits up to `limit` for the process to exit; `None` if it did not.
    pub fn terminate(&mut self, limit: Duration) -> Option<ExitStatus> {
        let child = self.child.as_mut().expect("the server is not running");
        let sent = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .expect("running kill -TERM");
        assert!(sent.success(), "kill -TERM failed: {sent}");
        let started = Instant::now();
        loop {
            if let Some(status) = child.try_wait().expect("try_wait") {
                self.child = None;
                return Some(status);
            }
            if started.elapsed() > limit {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
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

impl Drop for Server {
    fn drop(&mut self) {
        self.kill();
    }
}
