//! A cluster of real `metastore` processes on loopback, each with its own data directory; or,
//! for tests that compare the two side by side, of etcd 3.4 processes started the same way.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use crate::ports::free_port;
use crate::process::{server_command, Placement, Process};
use crate::proxy::{source_addr, Net};

/// Longest a member may take to answer `/health` healthy after it is spawned.
const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// How to start a cluster.
#[derive(Clone, Debug)]
pub struct ClusterOptions {
    /// The `metastore` binary.
    pub binary: PathBuf,
    /// How many members.
    pub members: usize,
    /// `--engine`: `redb` or `mem`.
    pub engine: String,
    /// Flags every member gets, after the cluster's own.
    pub extra_args: Vec<String>,
    /// Route peer traffic through fault-injecting proxies ([`Cluster::net`]).
    pub proxy_peers: bool,
}

/// One member process.
pub struct Member {
    /// Its `--name`.
    pub name: String,
    /// Its client port (gRPC and HTTP).
    pub client_port: u16,
    /// Its peer port.
    pub peer_port: u16,
    /// The port of the proxy in front of its peer port, when peers are proxied.
    pub proxy_port: Option<u16>,
    process: Process,
    /// `new` for the bootstrap members, `existing` for one added later.
    state: &'static str,
    /// Flags only this member gets, after every other ([`Cluster::set_member_args`]).
    extra_args: Vec<String>,
    /// The members its `--initial-cluster` names, when not all ([`Cluster::set_initial_members`]).
    initial_members: Option<Vec<usize>>,
}

impl Member {
    /// Member `i` on fresh ports, its log in `dir`; `state`: `new` or `existing`.
    fn new(i: usize, dir: &std::path::Path, proxied: bool, state: &'static str) -> Member {
        let name = format!("m{i}");
        Member {
            process: Process::new(&name, dir.join(format!("{name}.log"))),
            name,
            client_port: free_port(),
            peer_port: free_port(),
            proxy_port: proxied.then(free_port),
            state,
            extra_args: Vec::new(),
            initial_members: None,
        }
    }

    /// Its client URL.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.client_port)
    }

    /// Its peer URL as the cluster knows it (its proxy's, when peers are proxied).
    pub fn peer_url(&self) -> String {
        format!(
            "http://127.0.0.1:{}",
            self.proxy_port.unwrap_or(self.peer_port)
        )
    }

    /// The URL it listens for peers on.
    pub fn listen_peer_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.peer_port)
    }

    /// Its process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.process.pid()
    }

    /// Whether its process runs (frozen or not).
    pub fn is_running(&self) -> bool {
        self.process.is_running()
    }

    /// Whether it is stopped with SIGSTOP.
    pub fn is_frozen(&self) -> bool {
        self.process.is_frozen()
    }
}

/// A running cluster; every process is killed when it is dropped.
pub struct Cluster {
    options: ClusterOptions,
    dir: tempfile::TempDir,
    members: Vec<Member>,
    net: Option<Net>,
    /// Where the members' data directories go, when not in the cluster's own directory.
    data_root: Option<PathBuf>,
    /// The members are etcd processes, not MetaStore's.
    etcd: bool,
}

impl Cluster {
    /// Starts `options.members` members bootstrapping a new cluster, and waits until each
    /// answers `/health` and one of them leads.
    ///
    /// # Errors
    /// A member that exits or is not healthy in time, with the end of its log.
    pub fn start(options: ClusterOptions) -> Result<Cluster, String> {
        Self::start_with_data_root(options, None)
    }

    /// As [`Cluster::start`], with each member's data directory under `data_root` (a
    /// filesystem a test controls, such as a power-cut mount) instead of the cluster's own
    /// temporary directory, which keeps the logs.
    ///
    /// # Errors
    /// As [`Cluster::start`].
    pub fn start_in(options: ClusterOptions, data_root: PathBuf) -> Result<Cluster, String> {
        Self::start_with_data_root(options, Some(data_root))
    }

    /// Starts `members` etcd processes of `binary` (etcd 3.4) bootstrapping a new cluster,
    /// each given `extra_args` after the cluster's own flags, and waits as [`Cluster::start`]
    /// does. Every port comes from [`free_port`], below the ephemeral range: etcd members dial
    /// each other while the later ones are still starting, and an outgoing connection's source
    /// port taken from the ephemeral range could be a port a later member is about to bind.
    /// Peers cannot be proxied (etcd has no flag for its peer source address); freeze members
    /// to cut one off instead.
    ///
    /// # Errors
    /// As [`Cluster::start`].
    pub fn start_etcd(
        binary: PathBuf,
        members: usize,
        extra_args: Vec<String>,
    ) -> Result<Cluster, String> {
        let options = ClusterOptions {
            binary,
            members,
            engine: String::new(),
            extra_args,
            proxy_peers: false,
        };
        Self::start_flavor(options, None, true)
    }

    fn start_with_data_root(
        options: ClusterOptions,
        data_root: Option<PathBuf>,
    ) -> Result<Cluster, String> {
        Self::start_flavor(options, data_root, false)
    }

    fn start_flavor(
        options: ClusterOptions,
        data_root: Option<PathBuf>,
        etcd: bool,
    ) -> Result<Cluster, String> {
        let dir = tempfile::Builder::new()
            .prefix("metastore-cluster-")
            .tempdir()
            .map_err(|e| e.to_string())?;
        let members: Vec<Member> = (0..options.members)
            .map(|i| Member::new(i, dir.path(), options.proxy_peers, "new"))
            .collect();
        let net = if options.proxy_peers {
            let routes: Vec<(u16, u16)> = members
                .iter()
                .map(|m| (m.proxy_port.unwrap_or(m.peer_port), m.peer_port))
                .collect();
            Some(Net::start(&routes).map_err(|e| format!("starting the peer proxies: {e}"))?)
        } else {
            None
        };
        let mut cluster = Cluster {
            options,
            dir,
            members,
            net,
            data_root,
            etcd,
        };
        cluster.start_all()?;
        Ok(cluster)
    }

    /// A cluster whose members have their ports but are not started yet, for tests that must
    /// know the ports first (to publish them in DNS, say); [`Cluster::start_all`] starts it.
    /// `etcd`: the members are etcd 3.4 processes of `options.binary`, as in
    /// [`Cluster::start_etcd`].
    ///
    /// # Errors
    /// No temporary directory.
    pub fn unstarted(options: ClusterOptions, etcd: bool) -> Result<Cluster, String> {
        let dir = tempfile::Builder::new()
            .prefix("metastore-cluster-")
            .tempdir()
            .map_err(|e| e.to_string())?;
        let members = (0..options.members)
            .map(|i| Member::new(i, dir.path(), false, "new"))
            .collect();
        Ok(Cluster {
            options: ClusterOptions {
                proxy_peers: false,
                ..options
            },
            dir,
            members,
            net: None,
            data_root: None,
            etcd,
        })
    }

    /// Starts every member and waits until each answers `/health` and one of them leads.
    ///
    /// # Errors
    /// As [`Cluster::start`].
    pub fn start_all(&mut self) -> Result<(), String> {
        for i in 0..self.members.len() {
            self.spawn(i)?;
        }
        for i in 0..self.members.len() {
            self.wait_healthy(i)?;
        }
        self.wait_leader(READY_TIMEOUT)?;
        Ok(())
    }

    /// The peer proxies, when the cluster was started with them.
    pub fn net(&self) -> Option<&Net> {
        self.net.as_ref()
    }

    /// The members, in the order they were made.
    pub fn members(&self) -> &[Member] {
        &self.members
    }

    /// Member `i`.
    pub fn member(&self, i: usize) -> &Member {
        &self.members[i]
    }

    /// Every member's client URL.
    pub fn endpoints(&self) -> Vec<String> {
        self.members.iter().map(Member::endpoint).collect()
    }

    /// Flags member `i` gets on its next starts, after every other (such as
    /// `--force-new-cluster`); replaces those set before.
    pub fn set_member_args(&mut self, i: usize, args: Vec<String>) {
        self.members[i].extra_args = args;
    }

    /// Names only `members` in member `i`'s `--initial-cluster` on its next starts (a member
    /// joining a cluster that has lost others, as `etcdctl member add` prints it).
    pub fn set_initial_members(&mut self, i: usize, members: Vec<usize>) {
        self.members[i].initial_members = Some(members);
    }

    fn initial_cluster(&self, i: usize) -> String {
        let chosen = self.members[i].initial_members.as_deref();
        self.members
            .iter()
            .enumerate()
            .filter(|(j, _)| chosen.is_none_or(|c| c.contains(j)))
            .map(|(_, m)| format!("{}={}", m.name, m.peer_url()))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Member `i`'s `--data-dir`, for tests that change its files while it is stopped.
    pub fn data_dir(&self, i: usize) -> PathBuf {
        self.data_root
            .as_deref()
            .unwrap_or(self.dir.path())
            .join(&self.members[i].name)
    }

    fn spawn(&mut self, i: usize) -> Result<(), String> {
        let m = &self.members[i];
        let placement = Placement {
            name: m.name.clone(),
            data_dir: self.data_dir(i),
            client_url: m.endpoint(),
            listen_peer_url: m.listen_peer_url(),
            peer_url: m.peer_url(),
            initial_cluster: self.initial_cluster(i),
            state: Some(m.state),
        };
        let mut command = server_command(&self.options.binary, self.etcd);
        if m.proxy_port.is_some() {
            command.args([
                "--experimental-peer-source-addr",
                &source_addr(i).to_string(),
            ]);
        }
        if self.etcd {
            command.args(["--logger", "zap", "--log-level", "warn"]);
        } else {
            command.args(["--engine", &self.options.engine]);
        }
        placement.add_to(&mut command);
        command.args(&self.options.extra_args).args(&m.extra_args);
        self.members[i].process.start(command)
    }

    /// Waits until member `i` answers `/health` with any answer (it serves, leader or not).
    ///
    /// # Errors
    /// The process exited, or did not answer within the start-up limit.
    pub fn wait_healthy(&mut self, i: usize) -> Result<(), String> {
        let port = self.members[i].client_port;
        self.members[i]
            .process
            .wait_ready(READY_TIMEOUT, || http_get(port, "/health").is_some())
    }

    /// Member `i`'s whole log (every run of it).
    pub fn log(&self, i: usize) -> String {
        self.members[i].process.log()
    }

    /// The end of member `i`'s log.
    pub fn log_tail(&self, i: usize) -> String {
        self.members[i].process.log_tail()
    }

    /// SIGKILL member `i` and reap it.
    pub fn kill(&mut self, i: usize) {
        self.members[i].process.kill();
    }

    /// Starts member `i` again on its ports and data directory and waits until it answers.
    ///
    /// # Errors
    /// As [`Cluster::wait_healthy`].
    pub fn restart(&mut self, i: usize) -> Result<(), String> {
        self.kill(i);
        self.spawn(i)?;
        self.wait_healthy(i)
    }

    /// Starts member `i` again (killing it first if it runs) without waiting for it to answer,
    /// for tests that must reach it the moment its port opens.
    ///
    /// # Errors
    /// The process could not be spawned.
    pub fn respawn(&mut self, i: usize) -> Result<(), String> {
        self.kill(i);
        self.spawn(i)
    }

    /// SIGSTOP member `i`: it holds its connections and answers nothing.
    pub fn freeze(&mut self, i: usize) {
        self.members[i].process.freeze();
    }

    /// SIGCONT member `i`.
    pub fn thaw(&mut self, i: usize) {
        self.members[i].process.thaw();
    }

    /// A metric of member `i` (the sum of its series), if it runs, is not frozen and has it.
    pub fn metric(&self, i: usize, name: &str) -> Option<f64> {
        let m = &self.members[i];
        if !m.is_running() || m.is_frozen() {
            return None;
        }
        // HTTP/1.0 for etcd: Go answers a long HTTP/1.1 body in chunks, and a chunk boundary
        // may split a line.
        let (_, body) = http_get_version(
            m.client_port,
            "/metrics",
            if self.etcd { "1.0" } else { "1.1" },
        )?;
        metric_sum(&body, name)
    }

    /// The member that says it leads, among those running and not frozen.
    pub fn leader(&self) -> Option<usize> {
        (0..self.members.len()).find(|i| self.metric(*i, "etcd_server_is_leader") == Some(1.0))
    }

    /// Waits up to `limit` for a leader among the running, unfrozen members.
    ///
    /// # Errors
    /// None within `limit`.
    pub fn wait_leader(&self, limit: Duration) -> Result<usize, String> {
        wait_leader(limit, || self.leader())
    }

    /// Starts a member that joins the running cluster (after a `member add` for
    /// `name`/its peer URL by the caller: see [`Cluster::prepare_member`]).
    ///
    /// # Errors
    /// As [`Cluster::wait_healthy`].
    pub fn start_prepared(&mut self, i: usize) -> Result<(), String> {
        self.spawn(i)?;
        self.wait_healthy(i)
    }

    /// Reserves ports for a new member that will join with `--initial-cluster-state
    /// existing`; returns its index. Start it with [`Cluster::start_prepared`] once the
    /// cluster has been told about its peer URL.
    pub fn prepare_member(&mut self) -> usize {
        let i = self.members.len();
        let member = Member::new(i, self.dir.path(), false, "existing");
        self.members.push(member);
        i
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        // Before the directory goes, which drops after `options` and before `members`.
        for i in 0..self.members.len() {
            self.kill(i);
        }
    }
}

/// Asks `leader` until it names a member, for up to `limit`: for anything that runs members
/// and can tell which one leads (a [`Cluster`], containers).
///
/// # Errors
/// None within `limit`.
pub fn wait_leader(
    limit: Duration,
    mut leader: impl FnMut() -> Option<usize>,
) -> Result<usize, String> {
    let started = Instant::now();
    loop {
        if let Some(l) = leader() {
            return Ok(l);
        }
        if started.elapsed() > limit {
            return Err(format!("no leader within {limit:?}"));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A plain HTTP/1.1 GET on 127.0.0.1:`port`; `None` when nothing answers in time.
pub fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    http_get_version(port, path, "1.1")
}

fn http_get_version(port: u16, path: &str, version: &str) -> Option<(u16, String)> {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_millis(500)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(3))).ok()?;
    stream
        .set_write_timeout(Some(Duration::from_secs(3)))
        .ok()?;
    write!(
        stream,
        "GET {path} HTTP/{version}\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let status_line = response.lines().next()?;
    let code = status_line.split_whitespace().nth(1)?.parse().ok()?;
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Some((code, body))
}

/// The sum of a metric's series in a Prometheus text page, if the page has the metric.
pub fn metric_sum(body: &str, name: &str) -> Option<f64> {
    let values: Vec<f64> = body
        .lines()
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with(' ') || rest.starts_with('{'))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse().ok())
        .collect();
    (!values.is_empty()).then(|| values.iter().sum())
}
