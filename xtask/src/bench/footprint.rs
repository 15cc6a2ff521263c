//! `cargo xtask bench footprint`: disk and memory at scale, MetaStore against etcd 3.4, one
//! single-member server at a time, same client.
//!
//! Each server is loaded with N unique keys (16-byte keys, 256-byte values, 64 clients over 8
//! connections), measured (every file of the data dir, allocated and apparent; RSS; the size
//! the quota counts, from Status), stopped with SIGTERM and started again (time until a
//! linearizable read answers, RSS then), and finally churned: every key overwritten R times,
//! compacted at the last revision and defragmented, and measured again.

use super::command_line;
use super::load_span;
use super::servers::metastore_to_run;
use crate::flags::{self, Build, Checked, Docs};
use std::fmt::Write as _;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use kvapi::pb::etcdserverpb::kv_client::KvClient;
use kvapi::pb::etcdserverpb::maintenance_client::MaintenanceClient;
use kvapi::pb::etcdserverpb::{
    CompactionRequest, DefragmentRequest, PutRequest, RangeRequest, StatusRequest,
};
use tokio::task::JoinSet;

use super::doc;
use super::servers::{
    connect, endpoint, join_within, request, settle, wait_ready, Kind, Scratch, Server,
    REQUEST_TIMEOUT,
};
use super::{compare, grouped, load_average, output_of, Machine};

const HEADING: &str = "## Footprint";
const CONNS: usize = 8;
const CLIENTS: usize = 64;
const KEY_BYTES: usize = 16;
const VALUE_BYTES: usize = 256;
/// Longest one load (or one churn round) may take.
const LOAD_LIMIT: Duration = Duration::from_secs(3_600);
/// Longest a compaction or a defragment may take.
const MAINTENANCE_LIMIT: Duration = Duration::from_secs(600);
/// Longest a server may take to exit after SIGTERM.
const STOP_LIMIT: Duration = Duration::from_secs(60);

/// The flags of `cargo xtask bench footprint`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Unique keys.
    #[arg(long, value_name = "N", default_value = "100000",
          value_parser = |s: &str| flags::number_in::<usize>(s, 1_000, 10_000_000, "1,000 to 10,000,000"))]
    keys: usize,
    /// Overwrites of every key before compacting (0 skips).
    #[arg(long, value_name = "R", default_value = "10",
          value_parser = |s: &str| flags::number_in::<usize>(s, 0, 100, "at most 100"))]
    churn: usize,
    /// MetaStore's engine: redb or mem.
    #[arg(long, value_name = "E", default_value = "redb", value_parser = ["redb", "mem"])]
    engine: String,
    #[command(flatten)]
    server: Build,
    #[command(flatten)]
    out: Docs,
}

impl Checked for Args {}

/// One file of a data dir: its path under the dir, allocated bytes and apparent size.
#[derive(Debug, Clone)]
struct FileSize {
    name: String,
    allocated: u64,
    apparent: u64,
}

/// The data dir at one moment.
#[derive(Debug, Default, Clone)]
struct Disk {
    files: Vec<FileSize>,
}

impl Disk {
    /// Every regular file under `dir`, largest first.
    fn measure(dir: &Path) -> Result<Self> {
        use std::os::unix::fs::MetadataExt;
        let mut files = Vec::new();
        let mut stack = vec![dir.to_path_buf()];
        while let Some(d) = stack.pop() {
            for entry in std::fs::read_dir(&d).with_context(|| format!("{}", d.display()))? {
                let entry = entry?;
                let meta = entry.metadata()?;
                if meta.is_dir() {
                    stack.push(entry.path());
                } else if meta.is_file() {
                    let name = entry
                        .path()
                        .strip_prefix(dir)
                        .map_or_else(|_| entry.path(), Path::to_path_buf)
                        .display()
                        .to_string();
                    files.push(FileSize {
                        name,
                        allocated: meta.blocks() * 512,
                        apparent: meta.size(),
                    });
                }
            }
        }
        files.sort_by_key(|f| std::cmp::Reverse(f.allocated));
        Ok(Self { files })
    }

    fn allocated(&self) -> u64 {
        self.files.iter().map(|f| f.allocated).sum()
    }

    /// The engine's file: etcd's bbolt `member/snap/db`, MetaStore's `data.redb`.
    fn engine(&self) -> Option<&FileSize> {
        self.files
            .iter()
            .find(|f| f.name.ends_with("snap/db") || f.name.ends_with("data.redb"))
    }

    /// The largest files, "name size" each, for the table.
    fn summary(&self, n: usize) -> String {
        self.files
            .iter()
            .take(n)
            .map(|f| format!("`{}` {}", f.name, mib(f.allocated)))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// Everything measured on one server.
#[derive(Debug, Default)]
struct Measured {
    version: String,
    puts_per_s: f64,
    loaded: Disk,
    rss_loaded: u64,
    db_size: i64,
    db_in_use: i64,
    restart_s: f64,
    rss_restarted: u64,
    churned: Option<(Disk, i64, i64)>,
}

fn mib(bytes: u64) -> String {
    format!("{:.0} MiB", bytes as f64 / f64::from(1 << 20))
}

/// Resident bytes of process `pid`.
fn rss_of(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("reading /proc/{pid}/status"))?;
    super::parse_vm_rss(&status).with_context(|| format!("no VmRSS line for process {pid}"))
}

/// Key `i`: 16 digits.
fn key(i: usize) -> Vec<u8> {
    format!("{i:0width$}", width = KEY_BYTES).into_bytes()
}

/// Puts every key in `0..keys` once with a value of `fill`, from [`CLIENTS`] clients; puts
/// per second.
async fn load(url: &str, keys: usize, fill: u8) -> Result<f64> {
    let channels = connect(url, CONNS).await?;
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut set = JoinSet::new();
    for c in 0..CLIENTS {
        let mut kv = KvClient::new(channels[c % CONNS].clone());
        let next = Arc::clone(&next);
        set.spawn(async move {
            let value = vec![fill; VALUE_BYTES];
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= keys {
                    return Ok::<(), anyhow::Error>(());
                }
                let put = PutRequest {
                    key: key(i),
                    value: value.clone(),
                    ..PutRequest::default()
                };
                kv.put(request(put, REQUEST_TIMEOUT))
                    .await
                    .with_context(|| format!("put of key {i}"))?;
            }
        });
    }
    for done in join_within(set, Instant::now() + LOAD_LIMIT).await? {
        done?;
    }
    Ok(keys as f64 / started.elapsed().as_secs_f64())
}

/// Status's db size and size in use, and the current revision.
async fn status(url: &str) -> Result<(i64, i64, i64)> {
    let channel = endpoint(url)?.connect().await?;
    let s = MaintenanceClient::new(channel)
        .status(request(StatusRequest {}, REQUEST_TIMEOUT))
        .await?
        .into_inner();
    let revision = s.header.map_or(0, |h| h.revision);
    Ok((s.db_size, s.db_size_in_use, revision))
}

/// Sends SIGTERM to `pid` and waits for `server` to exit.
fn stop(server: &mut Server) -> Result<()> {
    let pid = server.pid();
    let status = std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .context("running kill")?;
    ensure!(status.success(), "kill -TERM {pid} failed");
    let started = Instant::now();
    while server.exited()?.is_none() {
        ensure!(
            started.elapsed() < STOP_LIMIT,
            "{} did not exit within {STOP_LIMIT:?} of SIGTERM",
            server.kind.name()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

fn measure(kind: Kind, program: &Path, scratch: &Scratch, args: &Args) -> Result<Measured> {
    let rt = tokio::runtime::Runtime::new()?;
    let dir = scratch.0.join(match kind {
        Kind::Ours => "metastore",
        Kind::Etcd => "etcd",
    });
    let engine = ["--engine", args.engine.as_str()];
    let extra: &[&str] = match kind {
        Kind::Ours => &engine,
        Kind::Etcd => &[],
    };
    let mut out = Measured {
        version: output_of(&program.display().to_string(), &["--version"]),
        ..Measured::default()
    };
    let data = dir.join("data");
    {
        let mut server = Server::start(kind, program, &dir, extra)?;
        wait_ready(&rt, &mut server)?;
        println!(
            "{}: loading {} keys",
            kind.name(),
            grouped(args.keys as u64)
        );
        out.puts_per_s = rt.block_on(load(&server.url, args.keys, 1))?;
        let (size, in_use, _) = rt.block_on(status(&server.url))?;
        (out.db_size, out.db_in_use) = (size, in_use);
        out.rss_loaded = rss_of(server.pid())?;
        // On disk once stopped: MetaStore's engine commits lazily (the Raft log is the durable
        // copy) and writes its file out at the latest when it stops.
        stop(&mut server)?;
        settle();
        out.loaded = Disk::measure(&data)?;
    }
    let mut server = Server::start(kind, program, &dir, extra)?;
    let started = Instant::now();
    let last = key(args.keys - 1);
    loop {
        let read = rt.block_on(async {
            let channel = endpoint(&server.url)?.connect().await?;
            let req = RangeRequest {
                key: last.clone(),
                ..RangeRequest::default()
            };
            let got = KvClient::new(channel)
                .range(request(req, Duration::from_secs(1)))
                .await?;
            Ok::<i64, anyhow::Error>(got.into_inner().count)
        });
        match read {
            Ok(1) => break,
            Ok(_) => bail!("{}: the last key is missing after the restart", kind.name()),
            Err(_) => {}
        }
        server.ensure_running()?;
        ensure!(
            started.elapsed() < LOAD_LIMIT,
            "{} did not answer after its restart",
            kind.name()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    out.restart_s = started.elapsed().as_secs_f64();
    out.rss_restarted = rss_of(server.pid())?;
    if args.churn > 0 {
        for round in 0..args.churn {
            println!("{}: churn round {}/{}", kind.name(), round + 1, args.churn);
            rt.block_on(load(&server.url, args.keys, 2 + (round % 200) as u8))?;
        }
        rt.block_on(async {
            let (_, _, revision) = status(&server.url).await?;
            let channel = endpoint(&server.url)?
                // The channel's own limit would cut a compaction or defragment of a million
                // keys short (etcd's took longer than it at 1M); each call carries its own.
                .timeout(MAINTENANCE_LIMIT)
                .connect()
                .await?;
            KvClient::new(channel.clone())
                .compact(request(
                    CompactionRequest {
                        revision,
                        physical: true,
                    },
                    MAINTENANCE_LIMIT,
                ))
                .await
                .context("compacting")?;
            MaintenanceClient::new(channel)
                .defragment(request(DefragmentRequest {}, MAINTENANCE_LIMIT))
                .await
                .context("defragmenting")?;
            Ok::<(), anyhow::Error>(())
        })?;
        let (size, in_use, _) = rt.block_on(status(&server.url))?;
        stop(&mut server)?;
        settle();
        out.churned = Some((Disk::measure(&data)?, size, in_use));
    } else {
        stop(&mut server)?;
    }
    Ok(out)
}

/// Runs the footprint benchmark with `raw` flags.
pub fn run(args: Args, raw: &[String]) -> Result<()> {
    let root = crate::tidy::project_root();
    let machine = Machine::probe();
    let metastore = metastore_to_run(&root, args.server.metastore.as_ref(), args.server.build)?;
    ensure!(
        output_of("etcd", &["--version"]) != "unknown",
        "`etcd --version` failed: install etcd 3.4 (apt-get install -y etcd-server)"
    );
    let load_before = load_average();
    let scratch = Scratch::new("footprint")?;
    let etcd = measure(Kind::Etcd, Path::new("etcd"), &scratch, &args)?;
    let ours = measure(Kind::Ours, &metastore, &scratch, &args)?;
    let load = load_span(load_before.as_deref());
    let command = command_line("footprint", raw);
    let section = render(&args, &command, &load, &ours, &etcd, &machine);
    println!("\n{section}");
    if args.out.docs {
        doc::write_section(HEADING, &section)?;
    }
    Ok(())
}

fn render(
    args: &Args,
    command: &str,
    load: &str,
    ours: &Measured,
    etcd: &Measured,
    m: &Machine,
) -> String {
    let mut s = compare::preamble(HEADING, command, m, load);
    let _ = writeln!(
        s,
        "Servers: MetaStore (`{}`, `--engine {}`, release build, default settings) and etcd \
         (`{}`, default settings), single members, one at a time. Workload: {} unique keys \
         ({KEY_BYTES}-byte keys, {VALUE_BYTES}-byte values) put by {CLIENTS} clients over \
         {CONNS} connections; then SIGTERM and a restart (time until a linearizable read of the \
         last key answers); then every key overwritten {} times, a compaction at the last \
         revision and a defragment. Sizes are allocated bytes (what `du` counts), taken \
         after SIGTERM; the quota's size is Status's `dbSize` / `dbSizeInUse`.\n",
        ours.version,
        args.engine,
        etcd.version,
        grouped(args.keys as u64),
        args.churn
    );
    let ratio = |a: f64, b: f64| if b > 0.0 { a / b } else { f64::INFINITY };
    let _ = writeln!(
        s,
        "| measure | MetaStore | etcd | ratio |\n|---|--:|--:|--:|"
    );
    let mut row = |name: &str, a: String, b: String, r: f64| {
        let _ = writeln!(s, "| {name} | {a} | {b} | {r:.2}× |");
    };
    row(
        "puts/s during the load",
        grouped(ours.puts_per_s as u64),
        grouped(etcd.puts_per_s as u64),
        ratio(ours.puts_per_s, etcd.puts_per_s),
    );
    let engine = |d: &Disk| d.engine().map_or(0, |f| f.allocated);
    let apparent = |d: &Disk| d.engine().map_or(0, |f| f.apparent);
    row(
        "data dir after the load",
        mib(ours.loaded.allocated()),
        mib(etcd.loaded.allocated()),
        ratio(
            ours.loaded.allocated() as f64,
            etcd.loaded.allocated() as f64,
        ),
    );
    row(
        "engine file, allocated",
        mib(engine(&ours.loaded)),
        mib(engine(&etcd.loaded)),
        ratio(engine(&ours.loaded) as f64, engine(&etcd.loaded) as f64),
    );
    row(
        "engine file, apparent size",
        mib(apparent(&ours.loaded)),
        mib(apparent(&etcd.loaded)),
        ratio(apparent(&ours.loaded) as f64, apparent(&etcd.loaded) as f64),
    );
    row(
        "quota's size (dbSize)",
        mib(ours.db_size.max(0) as u64),
        mib(etcd.db_size.max(0) as u64),
        ratio(ours.db_size as f64, etcd.db_size as f64),
    );
    row(
        "in use (dbSizeInUse)",
        mib(ours.db_in_use.max(0) as u64),
        mib(etcd.db_in_use.max(0) as u64),
        ratio(ours.db_in_use as f64, etcd.db_in_use as f64),
    );
    row(
        "RSS after the load",
        mib(ours.rss_loaded),
        mib(etcd.rss_loaded),
        ratio(ours.rss_loaded as f64, etcd.rss_loaded as f64),
    );
    row(
        "restart until the first read (s)",
        format!("{:.1}", ours.restart_s),
        format!("{:.1}", etcd.restart_s),
        ratio(ours.restart_s, etcd.restart_s),
    );
    row(
        "RSS after the restart",
        mib(ours.rss_restarted),
        mib(etcd.rss_restarted),
        ratio(ours.rss_restarted as f64, etcd.rss_restarted as f64),
    );
    if let (Some((od, osize, _)), Some((ed, esize, _))) = (&ours.churned, &etcd.churned) {
        row(
            "after churn + compact + defrag: engine file",
            mib(engine(od)),
            mib(engine(ed)),
            ratio(engine(od) as f64, engine(ed) as f64),
        );
        row(
            "after churn: data dir",
            mib(od.allocated()),
            mib(ed.allocated()),
            ratio(od.allocated() as f64, ed.allocated() as f64),
        );
        row(
            "after churn: quota's size (dbSize)",
            mib(osize.max(&0).unsigned_abs()),
            mib(esize.max(&0).unsigned_abs()),
            ratio(*osize as f64, *esize as f64),
        );
    }
    let _ = writeln!(
        s,
        "\nLargest files after the load — MetaStore: {}; etcd: {}.",
        ours.loaded.summary(3),
        etcd.loaded.summary(3)
    );
    if let (Some((od, ..)), Some((ed, ..))) = (&ours.churned, &etcd.churned) {
        let _ = writeln!(
            s,
            "After the churn — MetaStore: {}; etcd: {}.",
            od.summary(3),
            ed.summary(3)
        );
    }
    s
}
