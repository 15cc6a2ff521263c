//! `cargo xtask bench watch`: the watch path of MetaStore against etcd 3.4.
//!
//! Two workloads, each run against one server at a time (MetaStore, then etcd, each freshly
//! started), with the same client:
//! - fan-out: many watchers on one prefix while puts arrive at a fixed rate; events delivered
//!   per second and the put-to-event latency (each value carries its send time);
//! - idle watchers: many watchers on distinct keys that nothing writes; the server's resident
//!   memory per watcher, and the latency of single puts with and without them.
//!
//! Everything is bounded: requests carry deadlines, every phase has a watchdog, servers are
//! killed when dropped.

use super::command_line;
use super::load_span;
use super::servers::metastore_to_run;
use crate::flags::{self, Build, Checked, Docs};
use std::fmt::Write as _;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use kvapi::pb::etcdserverpb::kv_client::KvClient;
use kvapi::pb::etcdserverpb::watch_client::WatchClient;
use kvapi::pb::etcdserverpb::watch_request::RequestUnion;
use kvapi::pb::etcdserverpb::{PutRequest, WatchCreateRequest, WatchRequest};
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tonic::transport::Channel;

use super::doc;
use super::servers::{
    connect, join_within, percentile, request, settle, wait_ready, Kind, Scratch, Server,
    REQUEST_TIMEOUT,
};
use super::{bytes, compare, grouped, load_average, output_of, Machine, XorShift};

const HEADING: &str = "## Watch";
/// HTTP/2 connections the watchers of one run are spread over.
const WATCH_CONNS: usize = 10;
/// Idle watchers per watch stream.
const IDLE_PER_STREAM: usize = 1_000;
/// Puts whose latency is measured with and without idle watchers.
const LATENCY_PUTS: usize = 1_000;
/// Puts in flight at most in the fan-out writer; beyond, the rate is what the server allows.
const MAX_IN_FLIGHT: usize = 256;
/// How long the fan-out waits, after the last put, for events still on their way.
const GRACE: Duration = Duration::from_secs(3);
/// Longest creating all watchers of a run may take.
const CREATE_TIMEOUT: Duration = Duration::from_secs(300);
/// Bytes of every fan-out value: the send time, then padding.
const VALUE_LEN: usize = 64;
const SEED: u64 = 0x7761_7463_6862_656e;

/// The flags of `cargo xtask bench watch`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Measured seconds per fan-out rate.
    #[arg(long, value_name = "S", default_value = "5", value_parser = flags::secs_upto_600)]
    secs: f64,
    /// Fan-out watchers on one prefix.
    #[arg(long, value_name = "N", default_value = "1000",
          value_parser = |s: &str| flags::number_in::<usize>(s, 1, 100_000, "1 to 100,000"))]
    watchers: usize,
    /// Fan-out put rates per second, comma-separated.
    #[arg(long, value_name = "LIST", default_value = "100,1000",
          value_parser = |s: &str| flags::list_in::<u64>(s, 1, 100_000, "1 to 100,000 each"))]
    rates: Rates,
    /// Idle watchers on distinct keys.
    #[arg(long, value_name = "N", default_value = "100000",
          value_parser = |s: &str| flags::number_in::<usize>(s, 0, 1_000_000, "at most 1,000,000"))]
    idle: usize,
    #[command(flatten)]
    server: Build,
    #[command(flatten)]
    out: Docs,
}

impl Checked for Args {}

/// Rates, as one value of `--rates` (a `Vec` field would be taken for a repeated flag).
type Rates = Vec<u64>;

/// One fan-out run.
#[derive(Clone, Debug, Default)]
struct Fanout {
    rate: u64,
    /// Puts answered per second over the measured window.
    puts_per_s: f64,
    /// Events received per second over the measured window.
    events_per_s: f64,
    /// Events received of those expected (puts answered × watchers), all windows.
    complete: f64,
    p50_us: u64,
    p99_us: u64,
}

/// The idle-watcher run.
#[derive(Clone, Debug, Default)]
struct Idle {
    watchers: usize,
    rss_before: u64,
    rss_after: u64,
    create_secs: f64,
    /// Put latency (p50, p99) before and with the watchers.
    before: (u64, u64),
    with: (u64, u64),
}

impl Idle {
    fn per_watcher(&self) -> f64 {
        self.rss_after.saturating_sub(self.rss_before) as f64 / self.watchers.max(1) as f64
    }
}

/// Resident bytes of process `pid`.
fn rss_of(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("reading /proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        .map(|kib| kib * 1024)
        .context("no VmRSS")
}

/// A watch stream: its request side, kept open for its life, and its responses.
type Watches = (
    mpsc::Sender<WatchRequest>,
    tonic::Streaming<kvapi::pb::etcdserverpb::WatchResponse>,
);

/// Opens a watch stream over `channel` with `creates` and waits for every `created`.
async fn open_watches(channel: Channel, creates: Vec<WatchCreateRequest>) -> Result<Watches> {
    let n = creates.len();
    let (tx, rx) = mpsc::channel(n.max(1));
    for c in creates {
        tx.send(WatchRequest {
            request_union: Some(RequestUnion::CreateRequest(c)),
        })
        .await
        .context("queueing a create request")?;
    }
    let mut responses = WatchClient::new(channel)
        .watch(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .context("opening a watch stream")?
        .into_inner();
    let mut created = 0;
    while created < n {
        let r = responses
            .message()
            .await
            .context("reading created responses")?
            .context("the watch stream ended")?;
        ensure!(!r.canceled, "a watch was refused: {}", r.cancel_reason);
        if r.created {
            created += 1;
        }
    }
    Ok((tx, responses))
}

/// Fan-out: `watchers` watchers on `f/`, puts at `rate` per second for `secs`.
async fn fanout(url: &str, watchers: usize, rate: u64, secs: f64, base: Instant) -> Result<Fanout> {
    let channels = connect(url, WATCH_CONNS).await?;
    let mut streams = JoinSet::new();
    for i in 0..watchers {
        let channel = channels[i % channels.len()].clone();
        streams.spawn(async move {
            let create = WatchCreateRequest {
                key: b"f/".to_vec(),
                range_end: b"f0".to_vec(),
                ..Default::default()
            };
            open_watches(channel, vec![create]).await
        });
    }
    let opened = join_within(streams, Instant::now() + CREATE_TIMEOUT).await?;
    let window_start = Instant::now() + Duration::from_secs(1);
    let window_end = window_start + Duration::from_secs_f64(secs);
    let stop_at = window_end + GRACE;
    let received = Arc::new(AtomicU64::new(0));
    let mut readers = JoinSet::new();
    for stream in opened {
        let (requests, mut stream) = stream?;
        let received = Arc::clone(&received);
        readers.spawn(async move {
            let mut in_window = 0u64;
            let mut latencies: Vec<u32> = Vec::new();
            let mut watchdog = tokio::time::interval_at(stop_at.into(), Duration::from_secs(3600));
            loop {
                let message = tokio::select! {
                    m = stream.message() => m,
                    _ = watchdog.tick() => break,
                };
                let Ok(Some(r)) = message else { break };
                let now = Instant::now();
                for e in &r.events {
                    received.fetch_add(1, Ordering::Relaxed);
                    if now >= window_start && now < window_end {
                        in_window += 1;
                    }
                    let Some(kv) = &e.kv else { continue };
                    let Some(sent) = kv.value.get(..8) else {
                        continue;
                    };
                    let mut raw = [0u8; 8];
                    raw.copy_from_slice(sent);
                    let sent = base + Duration::from_nanos(u64::from_le_bytes(raw));
                    if sent >= window_start && sent < window_end {
                        let us = now.saturating_duration_since(sent).as_micros();
                        latencies.push(u32::try_from(us).unwrap_or(u32::MAX));
                    }
                }
            }
            drop(requests);
            (in_window, latencies)
        });
    }

    // The writer: `rate` puts per second, issued on schedule (open loop), at most
    // MAX_IN_FLIGHT at once.
    let put_channels = connect(url, 4).await?;
    let in_flight = Arc::new(tokio::sync::Semaphore::new(MAX_IN_FLIGHT));
    let mut puts = JoinSet::new();
    let mut tick = tokio::time::interval(Duration::from_millis(1));
    let mut sent = 0u64;
    let answered_in_window = Arc::new(AtomicU64::new(0));
    let writer_start = Instant::now();
    let mut rng = XorShift::new(SEED ^ rate);
    while Instant::now() < window_end {
        tick.tick().await;
        let due = (writer_start.elapsed().as_secs_f64() * rate as f64) as u64;
        while sent < due {
            let Ok(permit) = Arc::clone(&in_flight).try_acquire_owned() else {
                break;
            };
            let mut value = vec![0u8; VALUE_LEN];
            let at = u64::try_from(base.elapsed().as_nanos()).unwrap_or(u64::MAX);
            value[..8].copy_from_slice(&at.to_le_bytes());
            let key = format!("f/{}", rng.below(1_000)).into_bytes();
            let mut kv = KvClient::new(put_channels[sent as usize % put_channels.len()].clone());
            let answered = Arc::clone(&answered_in_window);
            puts.spawn(async move {
                let ok = kv
                    .put(request(
                        PutRequest {
                            key,
                            value,
                            ..Default::default()
                        },
                        REQUEST_TIMEOUT,
                    ))
                    .await
                    .is_ok();
                let now = Instant::now();
                if ok && now >= window_start && now < window_end {
                    answered.fetch_add(1, Ordering::Relaxed);
                }
                drop(permit);
                ok
            });
            sent += 1;
        }
        // Reap finished puts so the set does not grow with the run.
        while let Some(done) = puts.try_join_next() {
            done.context("a put task failed")?;
        }
    }
    let put_results = join_within(puts, Instant::now() + REQUEST_TIMEOUT * 2).await?;
    let failed = put_results.iter().filter(|ok| !**ok).count();
    let results = join_within(readers, stop_at + Duration::from_secs(10)).await?;
    let answered = answered_in_window.load(Ordering::Relaxed);
    let mut latencies = Vec::new();
    let mut in_window = 0;
    for (n, l) in results {
        in_window += n;
        latencies.extend(l);
    }
    latencies.sort_unstable();
    let expected = sent.saturating_sub(failed as u64) * watchers as u64;
    Ok(Fanout {
        rate,
        puts_per_s: answered as f64 / secs,
        events_per_s: in_window as f64 / secs,
        complete: received.load(Ordering::Relaxed) as f64 / expected.max(1) as f64,
        p50_us: percentile(&latencies, 0.50),
        p99_us: percentile(&latencies, 0.99),
    })
}

/// Latency (p50, p99 in µs) of `LATENCY_PUTS` sequential puts to random keys of `i/`.
async fn put_latency(url: &str, keys: usize, seed: u64) -> Result<(u64, u64)> {
    let channel = connect(url, 1).await?.remove(0);
    let mut kv = KvClient::new(channel);
    let mut rng = XorShift::new(seed);
    let mut samples = Vec::with_capacity(LATENCY_PUTS);
    for _ in 0..LATENCY_PUTS {
        let key = format!("i/{:06}", rng.below(keys.max(1))).into_bytes();
        let started = Instant::now();
        kv.put(request(
            PutRequest {
                key,
                value: vec![b'v'; 64],
                ..Default::default()
            },
            REQUEST_TIMEOUT,
        ))
        .await
        .context("a latency put failed")?;
        let us = started.elapsed().as_micros();
        samples.push(u32::try_from(us).unwrap_or(u32::MAX));
    }
    samples.sort_unstable();
    Ok((percentile(&samples, 0.50), percentile(&samples, 0.99)))
}

/// Idle watchers: memory per watcher, put latency without and with them.
async fn idle(url: &str, pid: u32, n: usize) -> Result<Idle> {
    let before = put_latency(url, n, SEED).await?;
    settle_async().await;
    let rss_before = rss_of(pid)?;
    let channels = connect(url, WATCH_CONNS).await?;
    let started = Instant::now();
    let mut set = JoinSet::new();
    for (s, chunk) in (0..n)
        .collect::<Vec<_>>()
        .chunks(IDLE_PER_STREAM)
        .enumerate()
    {
        let channel = channels[s % channels.len()].clone();
        let creates: Vec<WatchCreateRequest> = chunk
            .iter()
            .map(|i| WatchCreateRequest {
                key: format!("i/{i:06}").into_bytes(),
                ..Default::default()
            })
            .collect();
        set.spawn(open_watches(channel, creates));
    }
    let streams = join_within(set, Instant::now() + CREATE_TIMEOUT).await?;
    let create_secs = started.elapsed().as_secs_f64();
    // Keep reading (and dropping) what the latency puts deliver.
    let mut readers = JoinSet::new();
    for stream in streams {
        let (requests, mut stream) = stream?;
        readers.spawn(async move {
            while let Ok(Some(_)) = stream.message().await {}
            drop(requests);
        });
    }
    settle_async().await;
    let rss_after = rss_of(pid)?;
    let with = put_latency(url, n, SEED + 1).await?;
    readers.abort_all();
    Ok(Idle {
        watchers: n,
        rss_before,
        rss_after,
        create_secs,
        before,
        with,
    })
}

/// A second for the server to finish what the last phase started.
async fn settle_async() {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.tick().await;
    tick.tick().await;
}

/// Everything measured on one server.
struct Measured {
    version: String,
    fanout: Vec<Fanout>,
    idle: Idle,
}

fn measure(kind: Kind, program: &Path, scratch: &Scratch, args: &Args) -> Result<Measured> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let version = output_of(&program.to_string_lossy(), &["--version"]);
    let mut fanouts = Vec::new();
    for &rate in &args.rates {
        settle();
        let dir = scratch.0.join(format!("{}-fanout-{rate}", kind.name()));
        let mut server = Server::start(kind, program, &dir, &[])?;
        wait_ready(&rt, &mut server)?;
        let base = Instant::now();
        let f = rt
            .block_on(fanout(&server.url, args.watchers, rate, args.secs, base))
            .with_context(|| format!("fan-out at {rate}/s on {}", kind.name()))?;
        server.ensure_running()?;
        println!(
            "  {:<9} fan-out {} watchers, {:>6} puts/s: {:>10} events/s ({:.1}% delivered), p50 {} p99 {}",
            kind.name(),
            args.watchers,
            rate,
            grouped(f.events_per_s as u64),
            f.complete * 100.0,
            millis(f.p50_us),
            millis(f.p99_us)
        );
        fanouts.push(f);
    }
    settle();
    let dir = scratch.0.join(format!("{}-idle", kind.name()));
    let mut server = Server::start(kind, program, &dir, &[])?;
    wait_ready(&rt, &mut server)?;
    let idle = rt
        .block_on(idle(&server.url, server.pid(), args.idle))
        .with_context(|| format!("idle watchers on {}", kind.name()))?;
    server.ensure_running()?;
    println!(
        "  {:<9} {} idle watchers: {} per watcher (created in {:.1} s); put p99 {} -> {}",
        kind.name(),
        grouped(args.idle as u64),
        bytes(idle.per_watcher() as u64),
        idle.create_secs,
        millis(idle.before.1),
        millis(idle.with.1)
    );
    Ok(Measured {
        version,
        fanout: fanouts,
        idle,
    })
}

fn millis(us: u64) -> String {
    format!("{:.2} ms", us as f64 / 1000.0)
}

/// Runs `cargo xtask bench watch`.
pub fn run(args: Args, raw: &[String]) -> Result<()> {
    let root = crate::tidy::project_root();
    let machine = Machine::probe();
    let metastore = metastore_to_run(&root, args.server.metastore.as_ref(), args.server.build)?;
    ensure!(
        output_of("etcd", &["--version"]) != "unknown",
        "`etcd --version` failed: install etcd 3.4 (apt-get install -y etcd-server)"
    );
    let load_before = load_average();
    let scratch = Scratch::new("watch")?;
    let ours = measure(Kind::Ours, &metastore, &scratch, &args)?;
    let etcd = measure(Kind::Etcd, Path::new("etcd"), &scratch, &args)?;
    let load = load_span(load_before.as_deref());
    let command = command_line("watch", raw);
    let section = render(&args, &command, &load, &ours, &etcd, &machine);
    println!("\n{section}");
    if args.out.docs {
        doc::write_section(HEADING, &section)?;
    }
    Ok(())
}

fn ratio(a: f64, b: f64) -> f64 {
    if b > 0.0 {
        a / b
    } else {
        f64::INFINITY
    }
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
        "Servers: MetaStore (`{}`, `--engine redb`, release build) and etcd (`{}`), one at a \
         time, each freshly started per workload with a data dir under `target/`, default \
         settings.\n",
        ours.version, etcd.version
    );
    let _ = writeln!(
        s,
        "**Fan-out.** {} watchers on the prefix `f/`, each its own gRPC stream, spread over \
         {WATCH_CONNS} HTTP/2 connections; a writer puts {VALUE_LEN}-byte values (the send time \
         first) to random keys of `f/` at a fixed rate, open loop, at most {MAX_IN_FLIGHT} in \
         flight. After a 1 s warm-up, {} s are measured: events/s counts events received in the \
         window; latency is from sending a put to receiving its event, for puts sent in the \
         window; delivered is events received over puts answered × watchers, after a {} s \
         grace.\n",
        args.watchers,
        args.secs,
        GRACE.as_secs()
    );
    let _ = writeln!(
        s,
        "| put rate | puts/s answered (MetaStore / etcd) | MetaStore events/s | etcd events/s | ratio | MetaStore p50 / p99 | etcd p50 / p99 | delivered (MetaStore / etcd) |"
    );
    let _ = writeln!(s, "|--:|--:|--:|--:|--:|--:|--:|--:|");
    for (o, e) in ours.fanout.iter().zip(&etcd.fanout) {
        let _ = writeln!(
            s,
            "| {}/s | {} / {} | {} | {} | {:.2}× | {} / {} | {} / {} | {:.1}% / {:.1}% |",
            grouped(o.rate),
            grouped(o.puts_per_s as u64),
            grouped(e.puts_per_s as u64),
            grouped(o.events_per_s as u64),
            grouped(e.events_per_s as u64),
            ratio(o.events_per_s, e.events_per_s),
            millis(o.p50_us),
            millis(o.p99_us),
            millis(e.p50_us),
            millis(e.p99_us),
            o.complete * 100.0,
            e.complete * 100.0
        );
    }
    let (oi, ei) = (&ours.idle, &etcd.idle);
    let _ = writeln!(
        s,
        "\n**Idle watchers.** {} watchers on distinct keys `i/NNNNNN`, {IDLE_PER_STREAM} per \
         stream over {WATCH_CONNS} connections, nothing written to them while memory is read. \
         Memory per watcher is the growth of the server's resident set (`VmRSS`) from before \
         the watchers to after, over their number. Put latency: {LATENCY_PUTS} sequential puts \
         to random watched keys, before the watchers exist and while they do.\n",
        grouped(oi.watchers as u64)
    );
    let _ = writeln!(
        s,
        "| server | memory per watcher | resident before → after | created in | put p50 / p99 without | put p50 / p99 with |"
    );
    let _ = writeln!(s, "|---|--:|--:|--:|--:|--:|");
    for (name, i) in [("MetaStore", oi), ("etcd", ei)] {
        let _ = writeln!(
            s,
            "| {name} | {} | {} → {} | {:.1} s | {} / {} | {} / {} |",
            bytes(i.per_watcher() as u64),
            bytes(i.rss_before),
            bytes(i.rss_after),
            i.create_secs,
            millis(i.before.0),
            millis(i.before.1),
            millis(i.with.0),
            millis(i.with.1)
        );
    }
    let mut goals = Vec::new();
    for (o, e) in ours.fanout.iter().zip(&etcd.fanout) {
        let r = ratio(o.events_per_s, e.events_per_s);
        goals.push((
            format!("fan-out at {}/s: events/s ≥ 2× etcd's", grouped(o.rate)),
            format!("{r:.2}×"),
            r >= 2.0,
        ));
        goals.push((
            format!("fan-out at {}/s: p99 ≤ etcd's", grouped(o.rate)),
            format!("{} vs {}", millis(o.p99_us), millis(e.p99_us)),
            o.p99_us <= e.p99_us,
        ));
    }
    goals.push((
        "≤ 1 KiB of server memory per idle watcher".to_string(),
        bytes(oi.per_watcher() as u64),
        oi.per_watcher() <= 1024.0,
    ));
    let met = goals.iter().filter(|g| g.2).count();
    let _ = writeln!(s, "\n### Goals (from the issue, same machine)\n");
    let _ = writeln!(s, "{met} of {} met.\n", goals.len());
    let _ = writeln!(s, "| goal | measured | met |\n|---|---|---|");
    for (goal, measured, ok) in goals {
        let _ = writeln!(
            s,
            "| {goal} | {measured} | {} |",
            if ok { "yes" } else { "**no**" }
        );
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::flags::parse;

    fn strings(args: &[&str]) -> Vec<String> {
        args.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn args_parse() {
        let a = parse::<Args>(&strings(&["--rates", "10, 20", "--idle", "5"]))
            .unwrap()
            .unwrap();
        assert_eq!(a.rates, [10, 20]);
        assert_eq!(a.idle, 5);
        assert!(parse::<Args>(&strings(&["--rates", "0"])).is_err());
        assert!(parse::<Args>(&strings(&["--bogus"])).is_err());
        assert!(parse::<Args>(&strings(&["--help"])).unwrap().is_none());
    }

    #[test]
    fn idle_memory_is_growth_over_watchers() {
        let i = Idle {
            watchers: 1_000,
            rss_before: 10_000,
            rss_after: 522_000,
            ..Idle::default()
        };
        assert_eq!(i.per_watcher(), 512.0);
    }
}
