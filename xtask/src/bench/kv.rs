//! `cargo xtask bench kv`: MetaStore against etcd 3.4 over the etcd v3 gRPC API.
//!
//! Both servers run on this machine side by side, each a single member with a fresh data dir
//! under `target/` and each fsyncing its log before it acknowledges a write. Every workload
//! runs against MetaStore, then against etcd, through the same client — kvapi's generated
//! tonic `KvClient` over the same number of HTTP/2 connections — and the figures with their
//! ratios go to the `## KV` section of `docs/benchmarks.md`.
//!
//! Everything is bounded: each server must answer within
//! [`READY_TIMEOUT`](super::servers::READY_TIMEOUT), each request carries a [`REQUEST_TIMEOUT`]
//! deadline, each workload a watchdog; both servers are killed when [`Server`] drops, on every
//! path out.

use super::command_line;
use super::load_span;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use kvapi::pb::authpb::{permission, Permission};
use kvapi::pb::etcdserverpb::auth_client::AuthClient;
use kvapi::pb::etcdserverpb::kv_client::KvClient;
use kvapi::pb::etcdserverpb::request_op::Request as TxnOp;
use kvapi::pb::etcdserverpb::{
    AuthEnableRequest, AuthRoleAddRequest, AuthRoleGrantPermissionRequest, AuthUserAddRequest,
    AuthUserGrantRoleRequest, AuthenticateRequest, PutRequest, RangeRequest, RequestOp, TxnRequest,
};
use tokio::task::JoinSet;
use tonic::metadata::AsciiMetadataValue;
use tonic::transport::Channel;

use super::doc;
use super::servers::{
    build_server, connect_all, join_within, metastore_binary, percentile, process_cpu_ns,
    process_disk_writes, request, settle, wait_ready, Kind, Scratch, Server, ServerTls,
    REQUEST_TIMEOUT, SETTLE,
};
use super::stages;
use super::{compare, grouped, load_average, output_of, Machine, XorShift};
use crate::flags::{self, Build, Checked, Docs};

const HEADING: &str = "## KV";
/// Keys are `k` and this many digits: 8 bytes, as the issue asks.
const KEY_DIGITS: usize = 7;
/// Put and txn rows write uniformly random keys out of this many.
const KEY_SPACE: usize = 100_000;
const VALUE_LEN: usize = 256;
/// Keys written before the first range row; range rows read random ones of them.
const PRELOAD: usize = 10_000;
/// Clients writing the preload.
const PRELOAD_CLIENTS: usize = 64;
/// HTTP/2 connections per workload are `min(clients, MAX_CONNS)`, the same for both servers.
const MAX_CONNS: usize = 8;
/// Longest the preload may take, per server.
const PRELOAD_TIMEOUT: Duration = Duration::from_secs(180);
const SEED: u64 = 0x6b76_6265_6e63_6821;

/// What one request of a workload does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Op {
    /// A put of a random key.
    Put,
    /// A range over one preloaded key.
    Range { serializable: bool },
    /// A txn with no compares and one put in `success`.
    TxnPut,
}

/// One row of the table: an operation and a number of concurrent clients.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Workload {
    id: &'static str,
    op: Op,
    clients: usize,
}

const WORKLOADS: [Workload; 7] = [
    Workload {
        id: "put-1",
        op: Op::Put,
        clients: 1,
    },
    Workload {
        id: "put-16",
        op: Op::Put,
        clients: 16,
    },
    Workload {
        id: "put-64",
        op: Op::Put,
        clients: 64,
    },
    Workload {
        id: "put-256",
        op: Op::Put,
        clients: 256,
    },
    Workload {
        id: "range-64",
        op: Op::Range {
            serializable: false,
        },
        clients: 64,
    },
    Workload {
        id: "range-serializable-64",
        op: Op::Range { serializable: true },
        clients: 64,
    },
    Workload {
        id: "txn-put-64",
        op: Op::TxnPut,
        clients: 64,
    },
];

impl Workload {
    fn describe(&self) -> String {
        let clients = match self.clients {
            1 => "1 client".to_string(),
            n => format!("{n} clients"),
        };
        match self.op {
            Op::Put => format!("put, {clients}"),
            Op::Range {
                serializable: false,
            } => format!("range (linearizable), {clients}"),
            Op::Range { serializable: true } => format!("range (serializable), {clients}"),
            Op::TxnPut => format!("txn-put, {clients}"),
        }
    }

    fn conns(&self) -> usize {
        self.clients.min(MAX_CONNS)
    }
}

/// The flags of `cargo xtask bench kv`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Measured seconds per workload and server.
    #[arg(long, value_name = "S", default_value = "5", value_parser = flags::secs_upto_600)]
    secs: f64,
    /// Warm-up seconds before each measurement.
    #[arg(long, value_name = "S", default_value = "1", value_parser = warmup)]
    warmup: f64,
    /// Runs per workload and server; the median req/s is reported (the better of two).
    #[arg(long, value_name = "N", default_value = "1",
          value_parser = |s: &str| flags::number_in::<usize>(s, 1, 9, "1 to 9"))]
    rounds: usize,
    /// Comma-separated subset of: put-1, put-16, put-64, put-256, range-64,
    /// range-serializable-64, txn-put-64 (default all).
    #[arg(long, value_name = "LIST", default_value = ALL_WORKLOADS, hide_default_value = true,
          value_parser = workloads)]
    workloads: Workloads,
    #[command(flatten)]
    server: Build,
    #[command(flatten)]
    out: Docs,
    /// Run each server as a cluster of N members on this machine, clients spread over all
    /// members.
    #[arg(long, value_name = "N", default_value = "1",
          value_parser = |s: &str| flags::number_in::<usize>(s, 1, 7, "1 to 7"))]
    cluster: usize,
    /// Serve clients over https:// (a CA and a server certificate made for the run, the same
    /// files for both servers); clients verify the server.
    #[arg(long)]
    tls: bool,
    /// Enable etcd's auth (simple tokens) before the first workload: every request carries
    /// the token of a user whose role may read and write every key.
    #[arg(long)]
    auth: bool,
}

impl Checked for Args {}

/// Workloads, as one value of `--workloads` (a `Vec` field would be taken for a repeated flag).
type Workloads = Vec<Workload>;

/// Every workload's id, comma-separated: the default of `--workloads`.
const ALL_WORKLOADS: &str = "put-1,put-16,put-64,put-256,range-64,range-serializable-64,txn-put-64";

fn warmup(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(n) if (0.0..=60.0).contains(&n) => Ok(n),
        _ => Err("must be in [0, 60]".into()),
    }
}

impl Args {
    /// The section of docs/benchmarks.md these figures go to.
    fn heading(&self) -> String {
        let mut heading = if self.cluster == 1 {
            HEADING.to_string()
        } else {
            format!("{HEADING}, {}-member clusters", self.cluster)
        };
        if self.tls {
            heading.push_str(", client TLS");
        }
        if self.auth {
            heading.push_str(", auth enabled");
        }
        heading
    }
}

/// The workloads named in a comma-separated list, in the table's order.
fn workloads(list: &str) -> Result<Vec<Workload>, String> {
    let names: Vec<&str> = list.split(',').map(str::trim).collect();
    for name in &names {
        if !WORKLOADS.iter().any(|w| w.id == *name) {
            return Err(format!(
                "unknown workload `{name}`; try: {}",
                WORKLOADS.map(|w| w.id).join(", ")
            ));
        }
    }
    Ok(WORKLOADS
        .into_iter()
        .filter(|w| names.contains(&w.id))
        .collect())
}

/// Key `i` as the benchmark writes it: `k` and [`KEY_DIGITS`] digits.
fn key(i: usize) -> Vec<u8> {
    format!("k{i:0KEY_DIGITS$}").into_bytes()
}

/// Writes keys `0..keys` with [`PRELOAD_CLIENTS`] clients; any failure fails it.
async fn preload(urls: &[String], keys: usize, auth: bool) -> Result<()> {
    let conns = PRELOAD_CLIENTS.min(MAX_CONNS);
    let channels = connect_all(urls, conns).await?;
    let token = match auth {
        true => Some(token(&channels[0]).await?),
        false => None,
    };
    let mut set = JoinSet::new();
    for c in 0..PRELOAD_CLIENTS {
        let mut kv = KvClient::new(channels[c % conns].clone());
        let token = token.clone();
        set.spawn(async move {
            let mut rng = XorShift::new(SEED ^ c as u64);
            for i in (c..keys).step_by(PRELOAD_CLIENTS) {
                let req = PutRequest {
                    key: key(i),
                    value: value(&mut rng),
                    ..PutRequest::default()
                };
                kv.put(authed(req, token.as_ref()))
                    .await
                    .map_err(status_text)?;
            }
            Ok::<(), String>(())
        });
    }
    for done in join_within(set, Instant::now() + PRELOAD_TIMEOUT).await? {
        done.map_err(|e| anyhow::anyhow!("preloading: {e}"))?;
    }
    Ok(())
}

/// The user every request is made as with `--auth`, its password and its role.
const BENCH_USER: (&str, &str, &str) = ("bench", "bench-password", "bench-rw");

/// Sets up etcd's auth through `channel`, as an operator would with etcdctl: `root` with the
/// root role, user [`BENCH_USER`] with a role that may read and write every key, auth enabled.
async fn enable_auth(channel: Channel) -> Result<()> {
    let mut auth = AuthClient::new(channel);
    let (user, password, role) = BENCH_USER;
    let call = |what: &str, e: tonic::Status| anyhow::anyhow!("{what}: {}", status_text(e));
    for (name, password) in [("root", "root-password"), (user, password)] {
        let req = AuthUserAddRequest {
            name: name.into(),
            password: password.into(),
            ..AuthUserAddRequest::default()
        };
        auth.user_add(request(req, REQUEST_TIMEOUT))
            .await
            .map_err(|e| call("user add", e))?;
    }
    for role in ["root", role] {
        let req = AuthRoleAddRequest { name: role.into() };
        auth.role_add(request(req, REQUEST_TIMEOUT))
            .await
            .map_err(|e| call("role add", e))?;
    }
    let req = AuthRoleGrantPermissionRequest {
        name: role.into(),
        perm: Some(Permission {
            perm_type: permission::Type::Readwrite as i32,
            key: vec![0],
            range_end: vec![0],
        }),
    };
    auth.role_grant_permission(request(req, REQUEST_TIMEOUT))
        .await
        .map_err(|e| call("role grant-permission", e))?;
    for (user, role) in [("root", "root"), (user, role)] {
        let req = AuthUserGrantRoleRequest {
            user: user.into(),
            role: role.into(),
        };
        auth.user_grant_role(request(req, REQUEST_TIMEOUT))
            .await
            .map_err(|e| call("user grant-role", e))?;
    }
    auth.auth_enable(request(AuthEnableRequest {}, REQUEST_TIMEOUT))
        .await
        .map_err(|e| call("auth enable", e))?;
    Ok(())
}

/// A fresh simple token of [`BENCH_USER`].
async fn token(channel: &Channel) -> Result<AsciiMetadataValue> {
    let (name, password, _) = BENCH_USER;
    let req = AuthenticateRequest {
        name: name.into(),
        password: password.into(),
    };
    let token = AuthClient::new(channel.clone())
        .authenticate(request(req, REQUEST_TIMEOUT))
        .await
        .map_err(|e| anyhow::anyhow!("authenticate: {}", status_text(e)))?
        .into_inner()
        .token;
    Ok(token.parse()?)
}

/// `msg` with the request deadline and, with auth, the token (etcd's `token` metadata).
fn authed<T>(msg: T, token: Option<&AsciiMetadataValue>) -> tonic::Request<T> {
    let mut req = request(msg, REQUEST_TIMEOUT);
    if let Some(token) = token {
        req.metadata_mut().insert("token", token.clone());
    }
    req
}

/// A value of [`VALUE_LEN`] pseudo-random bytes.
fn value(rng: &mut XorShift) -> Vec<u8> {
    (0..VALUE_LEN).map(|_| rng.next_u64() as u8).collect()
}

/// An error's kind as the table shows it: the gRPC code and the start of the message.
fn status_text(status: tonic::Status) -> String {
    let message: String = status.message().chars().take(80).collect();
    format!("{:?}: {message}", status.code())
}

/// What one client task saw in the measured window.
struct ClientOut {
    /// Microseconds from send to answer, per request answered OK.
    latencies: Vec<u32>,
    errors: BTreeMap<String, u64>,
    /// When its last request answered.
    finished: Instant,
}

/// One client: a request, its answer, the next request, until `end`. Requests sent before
/// `warm_end` are not recorded.
async fn client(
    mut kv: KvClient<Channel>,
    op: Op,
    token: Option<AsciiMetadataValue>,
    mut rng: XorShift,
    warm_end: Instant,
    end: Instant,
) -> ClientOut {
    let value = value(&mut rng);
    let mut out = ClientOut {
        latencies: Vec::new(),
        errors: BTreeMap::new(),
        finished: Instant::now(),
    };
    loop {
        let sent = Instant::now();
        if sent >= end {
            break;
        }
        let result = one(&mut kv, op, token.as_ref(), &mut rng, &value).await;
        if sent >= warm_end {
            match result {
                Ok(()) => {
                    let micros = sent.elapsed().as_micros();
                    out.latencies
                        .push(u32::try_from(micros).unwrap_or(u32::MAX));
                }
                Err(e) => *out.errors.entry(e).or_default() += 1,
            }
        }
    }
    out.finished = Instant::now();
    out
}

/// One request of `op`, checked: a range must find its key, a txn must succeed.
async fn one(
    kv: &mut KvClient<Channel>,
    op: Op,
    token: Option<&AsciiMetadataValue>,
    rng: &mut XorShift,
    value: &[u8],
) -> std::result::Result<(), String> {
    match op {
        Op::Put => {
            let req = PutRequest {
                key: key(rng.below(KEY_SPACE)),
                value: value.to_vec(),
                ..PutRequest::default()
            };
            kv.put(authed(req, token)).await.map_err(status_text)?;
        }
        Op::Range { serializable } => {
            let req = RangeRequest {
                key: key(rng.below(PRELOAD)),
                serializable,
                ..RangeRequest::default()
            };
            let resp = kv
                .range(authed(req, token))
                .await
                .map_err(status_text)?
                .into_inner();
            if resp.kvs.len() != 1 {
                return Err(format!("range of a preloaded key found {}", resp.kvs.len()));
            }
        }
        Op::TxnPut => {
            let put = PutRequest {
                key: key(rng.below(KEY_SPACE)),
                value: value.to_vec(),
                ..PutRequest::default()
            };
            let req = TxnRequest {
                success: vec![RequestOp {
                    request: Some(TxnOp::RequestPut(put)),
                }],
                ..TxnRequest::default()
            };
            let resp = kv
                .txn(authed(req, token))
                .await
                .map_err(status_text)?
                .into_inner();
            if !resp.succeeded {
                return Err("a txn without compares did not succeed".into());
            }
        }
    }
    Ok(())
}

/// The figures of one workload on one server.
#[derive(Clone, Debug)]
struct Sample {
    /// Requests sent in the measured window and answered OK.
    ok: u64,
    /// From the window's start until the last of them answered.
    secs: f64,
    p50_us: u64,
    p99_us: u64,
    errors: BTreeMap<String, u64>,
    /// The server's on-CPU time over the window's wall time (1.0 = one core).
    server_cpu: Option<f64>,
    /// The same for this process, the client.
    client_cpu: Option<f64>,
    /// Bytes the server (every member) sent to storage in the window.
    disk_bytes: Option<u64>,
}

impl Sample {
    fn rate(&self) -> f64 {
        self.ok as f64 / self.secs
    }

    fn error_count(&self) -> u64 {
        self.errors.values().sum()
    }

    /// Server CPU microseconds per request answered.
    fn cpu_per_request_us(&self) -> Option<f64> {
        let cpu = self.server_cpu?;
        (self.ok > 0).then(|| cpu * self.secs * 1e6 / self.ok as f64)
    }

    /// Bytes sent to storage per request answered.
    fn disk_bytes_per_request(&self) -> Option<f64> {
        let bytes = self.disk_bytes?;
        (self.ok > 0).then(|| bytes as f64 / self.ok as f64)
    }
}

/// Runs `workload` against the server at `url` (process `pid`): a warm-up, then the measured
/// window, with every client closed-loop.
async fn drive(
    urls: &[String],
    pids: &[u32],
    workload: Workload,
    warmup: Duration,
    measure: Duration,
    seed: u64,
    auth: bool,
) -> Result<Sample> {
    let conns = workload.conns().max(urls.len());
    let channels = connect_all(urls, conns).await?;
    let token = match auth {
        true => Some(token(&channels[0]).await?),
        false => None,
    };
    let start = Instant::now();
    let warm_end = start + warmup;
    let end = warm_end + measure;
    let mut set = JoinSet::new();
    for i in 0..workload.clients {
        // Round-robin over the connections: client i on connection i mod conns.
        let kv = KvClient::new(channels[i % conns].clone());
        let rng = XorShift::new(seed ^ (i as u64 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15));
        set.spawn(client(kv, workload.op, token.clone(), rng, warm_end, end));
    }
    let servers: Vec<String> = pids.iter().map(u32::to_string).collect();
    let cpu_of =
        |servers: &[String]| -> Option<u64> { servers.iter().map(|p| process_cpu_ns(p)).sum() };
    let disk_of = |servers: &[String]| -> Option<u64> {
        servers.iter().map(|p| process_disk_writes(p)).sum()
    };
    // CPU readings at the start of the measured window, taken by a task woken then.
    let at_start = servers.clone();
    let cpu_at_start = tokio::spawn(async move {
        tokio::time::interval_at(warm_end.into(), Duration::from_secs(3600))
            .tick()
            .await;
        (
            at_start
                .iter()
                .map(|p| process_cpu_ns(p))
                .sum::<Option<u64>>(),
            process_cpu_ns("self"),
            at_start
                .iter()
                .map(|p| process_disk_writes(p))
                .sum::<Option<u64>>(),
        )
    });
    let outs = join_within(set, end + REQUEST_TIMEOUT + Duration::from_secs(5)).await?;
    let server_end = cpu_of(&servers);
    let client_end = process_cpu_ns("self");
    let disk_end = disk_of(&servers);
    let (server_start, client_start, disk_start) = cpu_at_start.await?;

    let finished = outs.iter().map(|o| o.finished).max().unwrap_or(end);
    let secs = finished.saturating_duration_since(warm_end).as_secs_f64();
    let mut latencies = Vec::new();
    let mut errors = BTreeMap::new();
    for out in outs {
        latencies.extend(out.latencies);
        for (kind, n) in out.errors {
            *errors.entry(kind).or_default() += n;
        }
    }
    latencies.sort_unstable();
    let share = |a: Option<u64>, b: Option<u64>| match (a, b) {
        (Some(a), Some(b)) if secs > 0.0 => Some(b.saturating_sub(a) as f64 / 1e9 / secs),
        _ => None,
    };
    Ok(Sample {
        ok: latencies.len() as u64,
        secs,
        p50_us: percentile(&latencies, 0.50),
        p99_us: percentile(&latencies, 0.99),
        errors,
        server_cpu: share(server_start, server_end),
        client_cpu: share(client_start, client_end),
        disk_bytes: disk_start.zip(disk_end).map(|(a, b)| b.saturating_sub(a)),
    })
}

/// One workload's figures on both servers.
struct Row {
    workload: Workload,
    ours: Sample,
    etcd: Sample,
    /// Lowest and highest req/s over the rounds: MetaStore's, then etcd's.
    spread: [(f64, f64); 2],
}

impl Row {
    fn ratio(&self) -> f64 {
        self.ours.rate() / self.etcd.rate()
    }

    fn p99_ratio(&self) -> f64 {
        self.ours.p99_us as f64 / self.etcd.p99_us.max(1) as f64
    }
}

/// The lowest and highest req/s of `samples`.
fn spread(samples: &[Sample]) -> (f64, f64) {
    samples
        .iter()
        .map(Sample::rate)
        .fold((f64::MAX, 0.0), |(lo, hi), r| (lo.min(r), hi.max(r)))
}

/// The sample with the median rate: the better of two, the middle of three.
fn median(mut samples: Vec<Sample>) -> Result<Sample> {
    samples.sort_by(|a, b| a.rate().total_cmp(&b.rate()));
    let mid = samples.len() / 2;
    samples
        .into_iter()
        .nth(mid)
        .context("a workload without samples")
}

/// Runs `cargo xtask bench kv`.
pub fn run(args: Args, raw: &[String]) -> Result<()> {
    let root = crate::tidy::project_root();
    // Probed first: the commit the server is built from, not one that lands during the run.
    let machine = Machine::probe();
    let metastore = match (&args.server.metastore, args.server.build) {
        (Some(path), _) => path.clone(),
        (None, true) => build_server(&root)?,
        (None, false) => metastore_binary(&root),
    };
    ensure!(
        metastore.is_file(),
        "{} is not a file (built? see --no-build, --metastore)",
        metastore.display()
    );
    let etcd_version = output_of("etcd", &["--version"]);
    ensure!(
        etcd_version != "unknown",
        "`etcd --version` failed: install etcd 3.4 (apt-get install -y etcd-server)"
    );
    let ours_version = output_of(&metastore.to_string_lossy(), &["--version"]);
    let load_before = load_average();

    // Dropped in reverse: both servers are killed before their directory goes.
    let scratch = Scratch::new("kv")?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let tls = match args.tls {
        true => Some(ServerTls::make(&scratch.0)?),
        false => None,
    };
    let mut ours = Server::start_cluster_tls(
        Kind::Ours,
        &metastore,
        &scratch.0.join("metastore"),
        args.cluster,
        &[],
        tls.as_ref(),
    )?;
    let mut etcd = Server::start_cluster_tls(
        Kind::Etcd,
        Path::new("etcd"),
        &scratch.0.join("etcd"),
        args.cluster,
        &[],
        tls.as_ref(),
    )?;
    println!(
        "MetaStore (pid {}) at {}, etcd (pid {}) at {}; data under {}",
        ours.pid(),
        ours.url,
        etcd.pid(),
        etcd.url,
        scratch.0.display()
    );
    wait_ready(&rt, &mut ours)?;
    wait_ready(&rt, &mut etcd)?;
    if args.auth {
        for server in [&mut ours, &mut etcd] {
            let url = server.url.clone();
            rt.block_on(async {
                let channel = connect_all(&[url], 1).await?;
                enable_auth(channel[0].clone()).await
            })
            .with_context(|| format!("enabling auth on {}", server.kind.name()))?;
            server.ensure_running()?;
        }
    }

    let warmup = Duration::from_secs_f64(args.warmup);
    let measure = Duration::from_secs_f64(args.secs);
    let mut preloaded = false;
    let mut rows = Vec::new();
    for (n, &workload) in args.workloads.iter().enumerate() {
        if matches!(workload.op, Op::Range { .. }) && !preloaded {
            for server in [&mut ours, &mut etcd] {
                println!(
                    "preloading {} keys into {} …",
                    grouped(PRELOAD as u64),
                    server.kind.name()
                );
                rt.block_on(preload(&server.urls, PRELOAD, args.auth))
                    .with_context(|| format!("preloading {}", server.kind.name()))?;
                server.ensure_running()?;
            }
            preloaded = true;
        }
        let mut samples = [Vec::new(), Vec::new()];
        for round in 0..args.rounds {
            for (side, server) in [&mut ours, &mut etcd].into_iter().enumerate() {
                settle();
                let seed = SEED ^ ((n * 16 + round) as u64);
                let ours_side = server.kind == Kind::Ours;
                let stages_before = if ours_side {
                    Some(stages::read(&server.urls)?)
                } else {
                    None
                };
                let sample = rt
                    .block_on(drive(
                        &server.urls,
                        &server.pids(),
                        workload,
                        warmup,
                        measure,
                        seed,
                        args.auth,
                    ))
                    .with_context(|| format!("{} on {}", workload.id, server.kind.name()));
                server.ensure_running()?;
                let sample = sample?;
                println!(
                    "  {:<34} {:<9} {:>9} req/s  p50 {:>8}  p99 {:>8}{}",
                    workload.describe(),
                    server.kind.name(),
                    grouped(sample.rate() as u64),
                    millis(sample.p50_us),
                    millis(sample.p99_us),
                    errors_note(&sample)
                );
                if let Some(before) = stages_before {
                    let after = stages::read(&server.urls)?;
                    println!(
                        "    stages, µs per put (warm-up included): {}",
                        stages::line(&stages::means(&before, &after))
                    );
                }
                samples[side].push(sample);
            }
        }
        let [ours_samples, etcd_samples] = samples;
        rows.push(Row {
            workload,
            spread: [spread(&ours_samples), spread(&etcd_samples)],
            ours: median(ours_samples)?,
            etcd: median(etcd_samples)?,
        });
    }
    drop(ours);
    drop(etcd);
    drop(rt);

    let setup = Setup {
        command: command_line("kv", raw),
        ours_version,
        etcd_version,
        load: load_span(load_before.as_deref()),
        client_threads: std::thread::available_parallelism().map_or(1, |n| n.get()),
    };
    let section = render(&args, &setup, &rows, &machine);
    println!("\n{section}");
    if args.out.docs {
        doc::write_section(&args.heading(), &section)?;
    }
    Ok(())
}

/// What the section says about how the figures were made, beside the machine.
struct Setup {
    command: String,
    ours_version: String,
    etcd_version: String,
    load: String,
    client_threads: usize,
}

/// Microseconds as milliseconds, to two decimals.
fn millis(us: u64) -> String {
    format!("{:.2} ms", us as f64 / 1000.0)
}

fn percent(share: Option<f64>) -> String {
    share.map_or_else(|| "?".into(), |s| format!("{:.0}%", s * 100.0))
}

/// " (N errors)" when a sample had any.
fn errors_note(s: &Sample) -> String {
    match s.error_count() {
        0 => String::new(),
        n => format!(" ({} errors)", grouped(n)),
    }
}

/// The `## KV` section: command, machine, setup, figures, and the goals judged.
fn render(args: &Args, setup: &Setup, rows: &[Row], m: &Machine) -> String {
    let mut s = compare::preamble(&args.heading(), &setup.command, m, &setup.load);
    let _ = writeln!(
        s,
        "Servers: MetaStore (`{}`, `--engine redb`, release build) and etcd (`{}`, Debian's \
         `etcd-server`), both on this machine for the whole run, each {} with a \
         fresh data dir under `target/` on {}, default settings otherwise. Both fsync before \
         acknowledging a write: MetaStore's Raft log (segment files) is fsynced before Raft \
         counts an entry as written (its key space, redb with `Durability::Lazy`, is replayed \
         from that log), etcd fsyncs its WAL for every batch of Raft entries before applying it.\n",
        setup.ours_version,
        setup.etcd_version,
        if args.cluster == 1 {
            "a single member".to_string()
        } else {
            format!(
                "a cluster of {} members (every member a process, clients' connections spread \
                 over all of them, so most requests reach a follower and are forwarded)",
                args.cluster
            )
        },
        m.target_fs
    );
    if args.tls {
        let _ = writeln!(
            s,
            "Client TLS: both servers serve `https://` client URLs with the same certificate \
             (ECDSA P-256, `--cert-file`/`--key-file`, from a CA made for the run; no client \
             certificates); the client verifies it (tonic with rustls and ring). Peer traffic \
             stays plaintext.\n"
        );
    }
    if args.auth {
        let (user, _, role) = BENCH_USER;
        let _ = writeln!(
            s,
            "Auth: enabled on both before the first workload (`root` with the root role; user \
             `{user}` with role `{role}`, readwrite on every key; simple tokens, default \
             `--auth-token-ttl` and `--bcrypt-cost`). Every run authenticates once and all its \
             requests carry that token (`token` metadata), so each is permission-checked; the \
             bcrypt cost of `Authenticate` is outside the measured window.\n"
        );
    }
    let _ = writeln!(
        s,
        "Client: this process, on the same cores as the servers: one tokio runtime of {} \
         worker threads and, per concurrent client, one task with kvapi's generated tonic \
         `KvClient`, closed-loop (the next request when the last one answers). Clients share \
         `min(clients, {MAX_CONNS})` HTTP/2 connections per run, spread round-robin, the same \
         for both servers. Keys are {} bytes (`k` and {KEY_DIGITS} digits); puts and txn-puts \
         pick them uniformly from {}, values are {VALUE_LEN} bytes. Ranges read one key, a \
         random one of {} written before the first range row. A txn-put is a `TxnRequest` with \
         no compares and one put in `success`. Every request carries a {} s deadline.\n",
        setup.client_threads,
        KEY_DIGITS + 1,
        grouped(KEY_SPACE as u64),
        grouped(PRELOAD as u64),
        REQUEST_TIMEOUT.as_secs()
    );
    let rounds = match args.rounds {
        1 => "one round".to_string(),
        2 => "two rounds, reporting the better of each server's two".to_string(),
        n => format!("{n} rounds, reporting each server's median by req/s"),
    };
    let _ = writeln!(
        s,
        "Method: per workload, MetaStore then etcd, each after `sync` and a {:.1} s pause: \
         {} s warm-up, then {} s measured; {rounds}. req/s is requests sent in the measured \
         window and answered OK, over the window (to the last answer); p50 and p99 are of \
         those requests' latency, send to answer. Ratios are MetaStore's over etcd's.\n",
        SETTLE.as_secs_f64(),
        args.warmup,
        args.secs
    );

    let _ = writeln!(s, "### Results\n");
    let _ = writeln!(
        s,
        "| workload | conns | MetaStore req/s | etcd req/s | ratio | MetaStore p50 / p99 | etcd p50 / p99 | p99 ratio |"
    );
    let _ = writeln!(s, "|---|--:|--:|--:|--:|--:|--:|--:|");
    for r in rows {
        let _ = writeln!(
            s,
            "| {} | {} | {}{} | {}{} | {:.2}× | {} / {} | {} / {} | {:.2}× |",
            r.workload.describe(),
            r.workload.conns(),
            grouped(r.ours.rate() as u64),
            errors_note(&r.ours),
            grouped(r.etcd.rate() as u64),
            errors_note(&r.etcd),
            r.ratio(),
            millis(r.ours.p50_us),
            millis(r.ours.p99_us),
            millis(r.etcd.p50_us),
            millis(r.etcd.p99_us),
            r.p99_ratio()
        );
    }
    let failed: Vec<String> = rows
        .iter()
        .flat_map(|r| {
            [(Kind::Ours, &r.ours), (Kind::Etcd, &r.etcd)]
                .into_iter()
                .flat_map(move |(kind, sample)| {
                    sample.errors.iter().map(move |(what, n)| {
                        format!(
                            "- {} on {}: {} × `{what}`",
                            r.workload.describe(),
                            kind.name(),
                            grouped(*n)
                        )
                    })
                })
        })
        .collect();
    if failed.is_empty() {
        let _ = writeln!(s, "\nNo request failed.");
    } else {
        let _ = writeln!(s, "\nFailed requests (not counted in req/s or latency):\n");
        for line in failed {
            let _ = writeln!(s, "{line}");
        }
    }

    if args.rounds > 1 {
        let _ = writeln!(s, "\n### Rounds\n");
        let _ = writeln!(
            s,
            "Lowest and highest req/s of the {} rounds: how much the shared machine moved the \
             figures above.\n",
            args.rounds
        );
        let _ = writeln!(s, "| workload | MetaStore req/s | etcd req/s |");
        let _ = writeln!(s, "|---|--:|--:|");
        let span =
            |(lo, hi): (f64, f64)| format!("{} – {}", grouped(lo as u64), grouped(hi as u64));
        for r in rows {
            let _ = writeln!(
                s,
                "| {} | {} | {} |",
                r.workload.describe(),
                span(r.spread[0]),
                span(r.spread[1])
            );
        }
    }

    let _ = writeln!(s, "\n### CPU\n");
    let _ = writeln!(
        s,
        "On-CPU time over the measured window's wall time, summed over a process's threads \
         (100% is one of the {} cores); per request is the server's CPU time over the requests \
         it answered. The client shares the cores, so what it takes is not the servers'.\n",
        m.cores
    );
    let _ = writeln!(
        s,
        "| workload | MetaStore CPU | etcd CPU | MetaStore CPU/req | etcd CPU/req | client CPU (MetaStore / etcd run) |"
    );
    let _ = writeln!(s, "|---|--:|--:|--:|--:|--:|");
    for r in rows {
        let per_req = |x: &Sample| {
            x.cpu_per_request_us()
                .map_or_else(|| "?".into(), |us| format!("{us:.0} µs"))
        };
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} | {} / {} |",
            r.workload.describe(),
            percent(r.ours.server_cpu),
            percent(r.etcd.server_cpu),
            per_req(&r.ours),
            per_req(&r.etcd),
            percent(r.ours.client_cpu),
            percent(r.etcd.client_cpu)
        );
    }

    let _ = writeln!(s, "\n### Disk\n");
    let _ = writeln!(
        s,
        "Bytes each server sent to storage per request answered, over the measured window \
         (`write_bytes` of `/proc/<pid>/io`, summed over members: the log, its fsyncs' metadata \
         and the engine's pages, counted when written or dirtied).\n"
    );
    let _ = writeln!(s, "| workload | MetaStore bytes/req | etcd bytes/req |");
    let _ = writeln!(s, "|---|--:|--:|");
    for r in rows {
        let per_req = |x: &Sample| {
            x.disk_bytes_per_request()
                .map_or_else(|| "?".into(), |b| grouped(b.round() as u64))
        };
        let _ = writeln!(
            s,
            "| {} | {} | {} |",
            r.workload.describe(),
            per_req(&r.ours),
            per_req(&r.etcd)
        );
    }

    let goals = judge(rows);
    let _ = writeln!(s, "\n### Goals (from the issue, same machine)\n");
    let met = goals.iter().filter(|g| g.2).count();
    let _ = writeln!(s, "{met} of {} met.\n", goals.len());
    let _ = writeln!(s, "| goal | measured | met |");
    let _ = writeln!(s, "|---|---|---|");
    for (goal, measured, met) in &goals {
        let _ = writeln!(
            s,
            "| {goal} | {measured} | {} |",
            if *met { "yes" } else { "**no**" }
        );
    }
    s
}

/// The goals for each row: (goal, measured, met). A row where MetaStore failed
/// requests meets neither.
fn judge(rows: &[Row]) -> Vec<(String, String, bool)> {
    let mut out = Vec::new();
    for r in rows {
        let clean = r.ours.error_count() == 0;
        let failures = if clean {
            String::new()
        } else {
            format!(
                "; MetaStore failed {} requests",
                grouped(r.ours.error_count())
            )
        };
        out.push((
            format!("{}: req/s ≥ 2× etcd's", r.workload.describe()),
            format!(
                "{:.2}× ({} vs {}){failures}",
                r.ratio(),
                grouped(r.ours.rate() as u64),
                grouped(r.etcd.rate() as u64)
            ),
            clean && r.ratio() >= 2.0,
        ));
    }
    for r in rows {
        let clean = r.ours.error_count() == 0;
        out.push((
            format!("{}: p99 ≤ etcd's", r.workload.describe()),
            format!(
                "{} vs {} ({:.2}×)",
                millis(r.ours.p99_us),
                millis(r.etcd.p99_us),
                r.p99_ratio()
            ),
            clean && r.ours.p99_us <= r.etcd.p99_us,
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::flags::parse;

    fn strings(args: &[&str]) -> Vec<String> {
        args.iter().map(|s| s.to_string()).collect()
    }

    fn sample(ok: u64, p99_us: u64, errors: u64) -> Sample {
        let mut e = BTreeMap::new();
        if errors > 0 {
            e.insert("Unavailable: x".to_string(), errors);
        }
        Sample {
            ok,
            secs: 1.0,
            p50_us: p99_us / 2,
            p99_us,
            errors: e,
            server_cpu: Some(0.5),
            client_cpu: None,
            disk_bytes: Some(ok * 100),
        }
    }

    #[test]
    fn args_parse() {
        let a = parse::<Args>(&strings(&[
            "--secs",
            "2",
            "--rounds",
            "3",
            "--workloads",
            "txn-put-64,put-1",
            "--no-docs",
            "--no-build",
            "--metastore",
            "/x/metastore",
        ]))
        .unwrap()
        .unwrap();
        assert_eq!(
            (a.secs, a.rounds, a.out.docs, a.server.build),
            (2.0, 3, false, false)
        );
        assert_eq!(
            a.server.metastore,
            Some(std::path::PathBuf::from("/x/metastore"))
        );
        // In the table's order, not the list's.
        assert_eq!(
            a.workloads.iter().map(|w| w.id).collect::<Vec<_>>(),
            ["put-1", "txn-put-64"]
        );
        let all = parse::<Args>(&[]).unwrap().unwrap();
        assert_eq!(all.workloads.len(), 7);
        assert!(parse::<Args>(&strings(&["--help"])).unwrap().is_none());
        assert!(parse::<Args>(&strings(&["--workloads", "put-2"])).is_err());
        assert!(parse::<Args>(&strings(&["--rounds", "0"])).is_err());
        assert!(parse::<Args>(&strings(&["--secs"])).is_err());
        assert!(parse::<Args>(&strings(&["--bogus"])).is_err());
    }

    #[test]
    fn keys_are_eight_bytes() {
        assert_eq!(key(0), b"k0000000");
        assert_eq!(key(KEY_SPACE - 1), b"k0099999");
        assert_eq!(key(KEY_SPACE - 1).len(), 8);
    }

    #[test]
    fn percentiles_by_nearest_rank() {
        let v: Vec<u32> = (1..=100).collect();
        assert_eq!(percentile(&v, 0.50), 50);
        assert_eq!(percentile(&v, 0.99), 99);
        assert_eq!(percentile(&[7], 0.99), 7);
        assert_eq!(percentile(&[], 0.5), 0);
    }

    #[test]
    fn median_takes_the_middle_rate() {
        let m = median(vec![sample(3, 1, 0), sample(1, 2, 0), sample(2, 3, 0)]).unwrap();
        assert_eq!(m.ok, 2);
        assert_eq!(
            median(vec![sample(1, 1, 0), sample(5, 1, 0)]).unwrap().ok,
            5
        );
        assert!(median(Vec::new()).is_err());
    }

    #[test]
    fn connections_are_capped() {
        let conns: Vec<usize> = WORKLOADS.iter().map(Workload::conns).collect();
        assert_eq!(conns, [1, 8, 8, 8, 8, 8, 8]);
    }

    #[test]
    fn section_judges_every_row() {
        let args = parse::<Args>(&[]).unwrap().unwrap();
        let setup = Setup {
            command: "cargo xtask bench kv".into(),
            ours_version: "metastore 0.1.0".into(),
            etcd_version: "etcd Version: 3.4.23".into(),
            load: "load".into(),
            client_threads: 2,
        };
        let rows = vec![
            Row {
                workload: WORKLOADS[0],
                ours: sample(300, 900, 0),
                etcd: sample(100, 1_000, 0),
                spread: [(290.0, 310.0), (90.0, 110.0)],
            },
            Row {
                workload: WORKLOADS[6],
                ours: sample(300, 900, 2),
                etcd: sample(100, 1_000, 0),
                spread: [(300.0, 300.0), (100.0, 100.0)],
            },
        ];
        let section = render(&args, &setup, &rows, &Machine::probe());
        assert!(section.starts_with("## KV\n"), "{section}");
        assert!(!section.contains("### Rounds"), "{section}");
        let three = parse::<Args>(&strings(&["--rounds", "3"]))
            .unwrap()
            .unwrap();
        let with_rounds = render(&three, &setup, &rows, &Machine::probe());
        assert!(
            with_rounds.contains("| put, 1 client | 290 – 310 | 90 – 110 |"),
            "{with_rounds}"
        );
        assert!(
            section.contains("| put, 1 client | 1 | 300 | 100 | 3.00× |"),
            "{section}"
        );
        assert!(section.contains("300 (2 errors)"), "{section}");
        assert!(section.contains("2 × `Unavailable: x`"), "{section}");
        assert!(section.contains("2 of 4 met."), "{section}");
        let goals = judge(&rows);
        assert_eq!(
            goals.iter().map(|g| g.2).collect::<Vec<_>>(),
            [true, false, true, false]
        );
        // Regenerating replaces the section rather than adding one.
        let once = doc::replace_section(doc::PREAMBLE, HEADING, &section);
        assert_eq!(once, doc::replace_section(&once, HEADING, &section));
    }

    #[test]
    fn own_cpu_is_readable() {
        assert!(process_cpu_ns("self").is_some_and(|ns| ns > 0));
    }

    /// A synced write of 1 MiB to a file on disk shows in the writer's storage bytes.
    #[test]
    fn own_disk_writes_are_counted() {
        use std::io::Write;
        let dir = tempfile::tempdir_in(env!("CARGO_MANIFEST_DIR")).unwrap();
        let before = process_disk_writes("self").expect("/proc/self/io");
        let mut f = std::fs::File::create(dir.path().join("written")).unwrap();
        f.write_all(&vec![7u8; 1 << 20]).unwrap();
        f.sync_all().unwrap();
        let after = process_disk_writes("self").unwrap();
        assert!(after - before >= 1 << 20, "{before} -> {after}");
    }
}
