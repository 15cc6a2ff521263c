//! The servers a benchmark runs side by side: MetaStore and etcd 3.4, each a process with a
//! fresh data dir under `target/`, killed when dropped; and the client plumbing both share.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use kvapi::pb::etcdserverpb::kv_client::KvClient;
use kvapi::pb::etcdserverpb::RangeRequest;
use testkit::{free_port, server_command, Placement, Process};
use tokio::runtime::Runtime;
use tokio::task::JoinSet;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};

/// Deadline of every request, sent as `grpc-timeout` and enforced by the client too.
pub(super) const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest a server may take from start to answering a linearizable range.
pub(super) const READY_TIMEOUT: Duration = Duration::from_secs(20);
/// Pause after `sync` before each run, so that one server's write-back does not land in the
/// other's measured window.
pub(super) const SETTLE: Duration = Duration::from_millis(500);

/// Which server a figure is of.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Kind {
    Ours,
    Etcd,
}

impl Kind {
    pub(super) fn name(self) -> &'static str {
        match self {
            Kind::Ours => "MetaStore",
            Kind::Etcd => "etcd",
        }
    }
}

/// A running server: one member, or a cluster of members, each a process killed and reaped
/// on drop.
pub(super) struct Server {
    pub(super) kind: Kind,
    members: Vec<Process>,
    /// Every member's client URL.
    pub(super) urls: Vec<String>,
    /// The first member's client URL.
    pub(super) url: String,
}

impl Server {
    /// Starts `program` as a single member with its data in `dir/data` and its output in
    /// `dir/log`, on two free ports.
    pub(super) fn start(kind: Kind, program: &Path, dir: &Path, extra: &[&str]) -> Result<Self> {
        Self::start_cluster(kind, program, dir, 1, extra)
    }

    /// Starts `members` members of `program` bootstrapping one cluster, member `i` with its
    /// data in `dir/m{i}/data` and its output in `dir/m{i}/log`.
    pub(super) fn start_cluster(
        kind: Kind,
        program: &Path,
        dir: &Path,
        members: usize,
        extra: &[&str],
    ) -> Result<Self> {
        Self::start_cluster_tls(kind, program, dir, members, extra, None)
    }

    /// [`Server::start_cluster`], serving clients over `https://` with `tls`'s certificate
    /// when given (the same files for both servers).
    pub(super) fn start_cluster_tls(
        kind: Kind,
        program: &Path,
        dir: &Path,
        members: usize,
        extra: &[&str],
        tls: Option<&ServerTls>,
    ) -> Result<Self> {
        let ports: Vec<[u16; 2]> = (0..members).map(|_| [free_port(), free_port()]).collect();
        let scheme = if tls.is_some() { "https" } else { "http" };
        let urls: Vec<String> = ports
            .iter()
            .map(|[client, _]| format!("{scheme}://127.0.0.1:{client}"))
            .collect();
        let initial = ports
            .iter()
            .enumerate()
            .map(|(i, [_, peer])| format!("m{i}=http://127.0.0.1:{peer}"))
            .collect::<Vec<_>>()
            .join(",");
        let mut server = Self {
            kind,
            members: Vec::new(),
            url: urls[0].clone(),
            urls: urls.clone(),
        };
        for (i, [_, peer_port]) in ports.iter().enumerate() {
            let member_dir = if members == 1 {
                dir.to_path_buf()
            } else {
                dir.join(format!("m{i}"))
            };
            std::fs::create_dir_all(&member_dir)
                .with_context(|| format!("creating {}", member_dir.display()))?;
            let peer = format!("http://127.0.0.1:{peer_port}");
            let placement = Placement {
                name: format!("m{i}"),
                data_dir: member_dir.join("data"),
                client_url: urls[i].clone(),
                listen_peer_url: peer.clone(),
                peer_url: peer,
                initial_cluster: initial.clone(),
                state: Some("new"),
            };
            let mut cmd = server_command(program, kind == Kind::Etcd);
            placement.add_to(&mut cmd);
            match kind {
                // redb unless the benchmark names the engine itself.
                Kind::Ours if extra.contains(&"--engine") => cmd.args(["--log-level", "warn"]),
                Kind::Ours => cmd.args(["--engine", "redb", "--log-level", "warn"]),
                Kind::Etcd => cmd.args(["--logger", "zap", "--log-level", "warn"]),
            };
            if let Some(tls) = tls {
                cmd.arg("--cert-file")
                    .arg(&tls.cert)
                    .arg("--key-file")
                    .arg(&tls.key);
            }
            cmd.args(extra).env_remove("RUST_LOG");
            let mut process = Process::new(kind.name(), member_dir.join("log"));
            process
                .start(cmd)
                .map_err(anyhow::Error::msg)
                .with_context(|| format!("starting {}", program.display()))?;
            server.members.push(process);
        }
        Ok(server)
    }

    /// The first member's process id.
    pub(super) fn pid(&self) -> u32 {
        self.members[0].pid().unwrap_or_default()
    }

    /// Every member's process id.
    pub(super) fn pids(&self) -> Vec<u32> {
        self.members.iter().filter_map(Process::pid).collect()
    }

    /// The exit status of a member that has already ended, if any has.
    pub(super) fn exited(&mut self) -> Result<Option<ExitStatus>> {
        for member in &mut self.members {
            if let Some(status) = member.exited().map_err(anyhow::Error::msg)? {
                return Ok(Some(status));
            }
        }
        Ok(None)
    }

    /// The end of every member's output, for an error message.
    pub(super) fn log_tail(&self) -> String {
        self.members.iter().map(Process::log_tail).collect()
    }

    /// Fails, with its log, if a member process has ended.
    pub(super) fn ensure_running(&mut self) -> Result<()> {
        if let Some(status) = self.exited()? {
            bail!(
                "{} exited ({status}); the end of its log:\n{}",
                self.kind.name(),
                self.log_tail()
            );
        }
        Ok(())
    }
}

/// A directory under `target/` for both data dirs and logs, removed on drop.
pub(super) struct Scratch(pub(super) PathBuf);

impl Scratch {
    /// A fresh `target/xtask-bench/<name>-<pid>`.
    pub(super) fn new(name: &str) -> Result<Self> {
        // Under target/ rather than the temp dir, which may be a tmpfs where fsync is free.
        let dir = crate::tidy::project_root()
            .join("target/xtask-bench")
            .join(format!("{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        Ok(Self(dir))
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Builds the server in release mode and returns the path of its binary.
pub(super) fn build_server(root: &Path) -> Result<PathBuf> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    println!("building the server: cargo build --release -p metastore-server …");
    let status = Command::new(cargo)
        .args(["build", "--release", "-p", "metastore-server"])
        .current_dir(root)
        .status()
        .context("running cargo build")?;
    ensure!(status.success(), "building the server failed ({status})");
    Ok(metastore_binary(root))
}

/// The metastore binary a benchmark runs: `given`, else the release build (built first when
/// `build`).
///
/// # Errors
/// The build fails, or the binary is not a file.
pub(super) fn metastore_to_run(
    root: &Path,
    given: Option<&PathBuf>,
    build: bool,
) -> Result<PathBuf> {
    let metastore = match (given, build) {
        (Some(path), _) => path.clone(),
        (None, true) => build_server(root)?,
        (None, false) => metastore_binary(root),
    };
    ensure!(metastore.is_file(), "{} is not a file", metastore.display());
    Ok(metastore)
}

pub(super) fn metastore_binary(root: &Path) -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map_or_else(|| root.join("target"), |dir| root.join(PathBuf::from(dir)));
    target.join("release/metastore")
}

/// A certificate for `127.0.0.1` signed by a CA made for this run, in PEM files.
pub(super) struct ServerTls {
    /// The server's certificate.
    pub(super) cert: PathBuf,
    /// Its key.
    pub(super) key: PathBuf,
}

/// The CA `https://` endpoints are verified with: the one [`ServerTls::make`] made.
static CLIENT_CA: OnceLock<String> = OnceLock::new();

impl ServerTls {
    /// Makes a CA and a server certificate (ECDSA P-256, as a typical deployment's) in `dir`,
    /// and has every later `https://` [`endpoint`] trust that CA.
    pub(super) fn make(dir: &Path) -> Result<Self> {
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new())?;
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "bench ca");
        ca_params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::DigitalSignature,
        ];
        let ca = rcgen::CertifiedIssuer::self_signed(ca_params, rcgen::KeyPair::generate()?)?;
        let key = rcgen::KeyPair::generate()?;
        let mut params = rcgen::CertificateParams::new(vec!["127.0.0.1".to_string()])?;
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "bench server");
        params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
        let cert = params.signed_by(&key, &ca)?;
        let tls = Self {
            cert: dir.join("server.pem"),
            key: dir.join("server-key.pem"),
        };
        std::fs::write(&tls.cert, cert.pem())?;
        std::fs::write(&tls.key, key.serialize_pem())?;
        ensure!(
            CLIENT_CA.set(ca.pem()).is_ok(),
            "one TLS set-up per benchmark run"
        );
        Ok(tls)
    }
}

/// A client endpoint with the deadlines every connection of the benchmark uses; `https://`
/// URLs verify the server against the CA [`ServerTls::make`] made.
pub(super) fn endpoint(url: &str) -> Result<Endpoint> {
    let endpoint = Endpoint::from_shared(url.to_string())?
        .connect_timeout(Duration::from_secs(5))
        .timeout(REQUEST_TIMEOUT)
        .tcp_nodelay(true);
    if !url.starts_with("https://") {
        return Ok(endpoint);
    }
    let ca = CLIENT_CA
        .get()
        .context("an https:// URL without the benchmark's CA")?;
    Ok(endpoint
        .tls_config(ClientTlsConfig::new().ca_certificate(Certificate::from_pem(ca.as_bytes())))?)
}

/// `msg` with a deadline, sent to the server as `grpc-timeout`.
pub(super) fn request<T>(msg: T, timeout: Duration) -> tonic::Request<T> {
    let mut req = tonic::Request::new(msg);
    req.set_timeout(timeout);
    req
}

/// Polls with a linearizable range, which needs a leader, until it answers or
/// [`READY_TIMEOUT`] passes.
pub(super) fn wait_ready(rt: &Runtime, server: &mut Server) -> Result<()> {
    let start = Instant::now();
    loop {
        server.ensure_running()?;
        let mut last = None;
        for url in server.urls.clone() {
            if let Err(e) = rt.block_on(probe(&url)) {
                last = Some(format!("{url}: {e:#}"));
            }
        }
        let Some(last) = last else {
            return Ok(());
        };
        if start.elapsed() >= READY_TIMEOUT {
            bail!(
                "{} did not answer at {} within {READY_TIMEOUT:?} (last error: {last}); the \
                 end of its log:\n{}",
                server.kind.name(),
                server.url,
                server.log_tail()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

pub(super) async fn probe(url: &str) -> Result<()> {
    let channel = endpoint(url)?
        .connect_timeout(Duration::from_secs(1))
        .connect()
        .await?;
    let req = RangeRequest {
        key: b"ready".to_vec(),
        ..RangeRequest::default()
    };
    KvClient::new(channel)
        .range(request(req, Duration::from_secs(1)))
        .await?;
    Ok(())
}

/// `n` connections spread over `urls` round-robin.
pub(super) async fn connect_all(urls: &[String], n: usize) -> Result<Vec<Channel>> {
    let mut channels = Vec::with_capacity(n);
    for i in 0..n {
        let url = &urls[i % urls.len()];
        let channel = endpoint(url)?
            .connect()
            .await
            .with_context(|| format!("connecting to {url}"))?;
        channels.push(channel);
    }
    Ok(channels)
}

/// `n` connections to `url`.
pub(super) async fn connect(url: &str, n: usize) -> Result<Vec<Channel>> {
    connect_all(&[url.to_string()], n).await
}

/// Waits for every task of `set`, aborting them all and failing once `deadline` passes.
pub(super) async fn join_within<T: 'static>(
    mut set: JoinSet<T>,
    deadline: Instant,
) -> Result<Vec<T>> {
    // An interval's first tick is at its start: a sleep until the deadline, without
    // `tokio::time::sleep`, which this workspace leaves to the `deadline` crate.
    let mut watchdog = tokio::time::interval_at(deadline.into(), Duration::from_secs(24 * 60 * 60));
    let mut out = Vec::with_capacity(set.len());
    loop {
        tokio::select! {
            joined = set.join_next() => match joined {
                Some(done) => out.push(done.context("a client task failed")?),
                None => return Ok(out),
            },
            _ = watchdog.tick() => {
                let left = set.len();
                set.abort_all();
                bail!("{left} client tasks still running at their deadline");
            }
        }
    }
}

/// Nanoseconds all threads of process `pid` ("self" for this one) have spent on a CPU.
///
/// Summed from `/proc/PID/task/*/schedstat`; threads that ended are not counted, which the
/// long-lived worker threads of both servers and of this client make negligible.
pub(super) fn process_cpu_ns(pid: &str) -> Option<u64> {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).ok()?;
    let mut total = 0;
    for task in tasks.flatten() {
        if let Ok(stat) = std::fs::read_to_string(task.path().join("schedstat")) {
            total += stat
                .split_whitespace()
                .next()
                .and_then(|n| n.parse::<u64>().ok())
                .unwrap_or(0);
        }
    }
    Some(total)
}

/// Bytes process `pid` has caused to be sent to storage so far (`write_bytes` in
/// `/proc/<pid>/io`: counted when a page is dirtied or written directly, whoever flushes it);
/// `None` when unreadable.
pub(super) fn process_disk_writes(pid: &str) -> Option<u64> {
    let io = std::fs::read_to_string(format!("/proc/{pid}/io")).ok()?;
    io.lines()
        .find_map(|l| l.strip_prefix("write_bytes:"))
        .and_then(|v| v.trim().parse().ok())
}

/// The `p`-quantile of `sorted` by nearest rank; 0 when empty.
pub(super) fn percentile(sorted: &[u32], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = ((p * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    u64::from(sorted[rank - 1])
}

/// Flushes what either server left in the page cache, then waits a moment.
pub(super) fn settle() {
    let _ = Command::new("sync").status();
    std::thread::sleep(SETTLE);
}
