//! `cargo xtask bench failover`: a kill-the-leader loop (issue 22). A 3-member cluster whose
//! leader is SIGKILLed every `--period` and started again `--down` later, while `--clients`
//! clients put, read (linearizable) and compare-and-swap with a `--deadline` per request;
//! MetaStore and etcd 3.4 under the same schedule. It counts what completed and what failed,
//! by kind of failure, and how long each kill left the cluster without a leader.
//!
//! With `--no-kill` the same clients run the same workload on the same cluster with no fault:
//! the steady-state rate, so a gap under the loop splits into the steady 3-member write path
//! and the time each kill costs.
//!
//! Each client talks to one member and moves to the next when its connection fails (as
//! clientv3 fails over between endpoints); a failed request is not retried (clientv3 does not
//! retry a put), the client pauses [`BACKOFF`] and sends its next one.

use crate::flags::{Checked, Member};
use std::collections::BTreeMap;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use etcd_client::{Client, Compare, CompareOp, ConnectOptions, Txn, TxnOp};
use testkit::{Cluster, ClusterOptions};

use super::XorShift;
use crate::chaos::workload::definite;

/// A client's pause after a failed request, so a member that refuses at once is not asked
/// thousands of times a second.
const BACKOFF: Duration = Duration::from_millis(50);

/// The flags of `cargo xtask bench failover`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// How long each server is measured, in seconds.
    #[arg(long, value_name = "SECS", default_value = "120", value_parser = secs)]
    duration: Duration,
    /// A leader is killed every SECS.
    #[arg(long, value_name = "SECS", default_value = "5", value_parser = secs)]
    period: Duration,
    /// It is started again MS after the kill.
    #[arg(long, value_name = "MS", default_value = "1000", value_parser = millis)]
    down: Duration,
    /// Concurrent clients.
    #[arg(long, value_name = "N", default_value = "12")]
    clients: usize,
    /// Keys written and read.
    #[arg(long, value_name = "N", default_value = "20", value_parser = at_least_one)]
    keys: usize,
    /// Every request's deadline, in milliseconds.
    #[arg(long, value_name = "MS", default_value = "1500", value_parser = millis)]
    deadline: Duration,
    /// The workload's seed.
    #[arg(long, value_name = "N", default_value = "1")]
    seed: u64,
    #[command(flatten)]
    member: Member,
    /// Measure only `metastore` or `etcd`.
    #[arg(long, value_name = "NAME")]
    only: Option<String>,
    /// The same workload with no fault (the steady-state baseline).
    #[arg(long)]
    no_kill: bool,
    /// Measure each server N times, alternating.
    #[arg(long, value_name = "N", default_value = "1", value_parser = at_least_one)]
    rounds: usize,
    /// Members in the cluster; 1 only with --no-kill, to split the steady rate into the local
    /// write path and replication.
    #[arg(long, value_name = "N", default_value = "3", value_parser = at_least_one)]
    members: usize,
}

impl Checked for Args {
    fn checked(self) -> Result<Self> {
        if self.members < 3 && !self.no_kill {
            bail!("killing the leader needs --members 3 or more");
        }
        if self.period <= self.down {
            bail!("--period must be longer than --down");
        }
        Ok(self)
    }
}

fn secs(s: &str) -> Result<Duration, String> {
    s.parse()
        .map(Duration::from_secs)
        .map_err(|_| format!("`{s}` is not a number"))
}

fn millis(s: &str) -> Result<Duration, String> {
    s.parse()
        .map(Duration::from_millis)
        .map_err(|_| format!("`{s}` is not a number"))
}

/// A count, 0 taken as 1.
fn at_least_one(s: &str) -> Result<usize, String> {
    s.parse::<usize>()
        .map(|n| n.max(1))
        .map_err(|_| format!("`{s}` is not a number"))
}

/// Runs the benchmark and prints its table.
pub fn run(args: Args) -> Result<()> {
    let args = args.checked()?;
    let mut results = Vec::new();
    let binary = if args.only.as_deref() == Some("etcd") {
        None
    } else {
        let root = crate::tidy::project_root();
        Some(match &args.member.binary {
            Some(b) => b.clone(),
            None => super::servers::build_server(&root)?,
        })
    };
    for round in 1..=args.rounds {
        if let Some(binary) = &binary {
            let cluster = Cluster::start(ClusterOptions {
                binary: binary.clone(),
                members: args.members,
                engine: args.member.engine.clone(),
                extra_args: Vec::new(),
                proxy_peers: false,
            })
            .map_err(anyhow::Error::msg)?;
            let tally = measure(cluster, &args)?;
            eprintln!("round {round}: {}", row("MetaStore", &tally, args.period));
            results.push(("MetaStore", tally));
        }
        if args.only.as_deref() != Some("metastore") {
            let cluster = Cluster::start_etcd("etcd".into(), args.members, Vec::new())
                .map_err(anyhow::Error::msg)?;
            let tally = measure(cluster, &args)?;
            eprintln!("round {round}: {}", row("etcd", &tally, args.period));
            results.push(("etcd", tally));
        }
    }
    println!("{}", report(&results, &args));
    Ok(())
}

/// What one kind of request did.
#[derive(Default, Debug)]
struct Kind {
    ok: u64,
    /// Failures by what they said.
    failed: BTreeMap<&'static str, u64>,
    definite: u64,
    indeterminate: u64,
    /// Time spent in the requests that succeeded.
    busy: Duration,
}

impl Kind {
    /// The mean time a successful request took, in milliseconds.
    fn mean_ms(&self) -> f64 {
        self.busy.as_secs_f64() * 1000.0 / self.ok.max(1) as f64
    }
}

/// What one server did under the loop.
#[derive(Default, Debug)]
struct Tally {
    put: Kind,
    get: Kind,
    txn: Kind,
    /// Compare-and-swaps that swapped.
    swapped: u64,
    longest: Duration,
    /// Per kill: how long until a member other than the killed one led, if within the period.
    elections: Vec<Option<Duration>>,
    /// Rounds with no leader to kill.
    skipped: u64,
    /// When each write (put or txn) that succeeded was answered, from the start.
    writes: Vec<Duration>,
    /// When each kill was, from the start.
    kills: Vec<Duration>,
    /// Per member: writes answered by it and the time they took.
    by_member: BTreeMap<usize, (u64, Duration)>,
}

impl Tally {
    /// Per kill, the longest time without an answered write in the `period` after it (from
    /// the kill to the first write, or between two writes).
    fn stalls(&self, period: Duration) -> Vec<Duration> {
        let mut writes = self.writes.clone();
        writes.sort();
        self.kills
            .iter()
            .map(|&kill| {
                let end = kill + period;
                let mut last = kill;
                let mut longest = Duration::ZERO;
                for &w in writes.iter().filter(|w| **w >= kill && **w < end) {
                    longest = longest.max(w - last);
                    last = w;
                }
                longest.max(end - last)
            })
            .collect()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// What a failure said, in a few words.
fn label(e: &str) -> &'static str {
    if e.contains("no leader") {
        "no leader"
    } else if e.contains("request timed out") {
        "request timed out"
    } else if e.contains("leader changed") {
        "leader changed"
    } else if e.contains("too many requests") {
        "too many requests"
    } else if e.contains("eadline")
        || e.contains("Timeout expired")
        || e.contains("timed out")
        || e.contains("client-side")
    {
        "deadline"
    } else if e.contains("transport")
        || e.contains("connect")
        || e.contains("onnection")
        || e.contains("broken pipe")
    {
        "connection"
    } else {
        "other"
    }
}

fn measure(mut cluster: Cluster, args: &Args) -> Result<Tally> {
    let endpoints = cluster.endpoints();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let stop = Arc::new(AtomicBool::new(false));
    let tally = Arc::new(Mutex::new(Tally::default()));
    // Clients and the kill schedule measure from the same instant.
    let start = Instant::now();
    let mut tasks = Vec::new();
    for id in 0..args.clients {
        let (endpoints, stop, tally) = (endpoints.clone(), stop.clone(), tally.clone());
        let seed = args.seed ^ (id as u64 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        let (keys, deadline) = (args.keys, args.deadline);
        tasks.push(rt.spawn(async move {
            let shared = Shared {
                start,
                stop: &stop,
                tally: &tally,
            };
            worker(id, endpoints, keys, deadline, seed, shared).await;
        }));
    }
    let end = start + args.duration;
    eprintln!("leader at the start: m{:?}", cluster.leader());
    let mut next = start + args.period;
    while !args.no_kill && next + args.down < end {
        std::thread::sleep(next.saturating_duration_since(Instant::now()));
        let Some(leader) = cluster.leader() else {
            lock(&tally).skipped += 1;
            next += args.period;
            continue;
        };
        cluster.kill(leader);
        let killed = Instant::now();
        lock(&tally).kills.push(killed.duration_since(start));
        let mut respawned = false;
        let mut elected = None;
        let mut seen = Vec::new();
        loop {
            if !respawned && killed.elapsed() >= args.down {
                cluster.respawn(leader).map_err(anyhow::Error::msg)?;
                respawned = true;
            }
            let now = cluster.leader();
            if seen.last().map(|(l, _)| *l) != Some(now) {
                seen.push((now, killed.elapsed()));
            }
            if elected.is_none() && now.is_some_and(|l| l != leader) {
                elected = Some(killed.elapsed());
            }
            if (respawned && elected.is_some()) || killed.elapsed() >= args.period {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let seen: Vec<String> = seen
            .iter()
            .map(|(l, at)| match l {
                Some(l) => format!("m{l} at {:.2} s", at.as_secs_f64()),
                None => format!("none at {:.2} s", at.as_secs_f64()),
            })
            .collect();
        eprintln!(
            "{:6.1} s: killed m{leader}; leaders seen: {}",
            killed.duration_since(start).as_secs_f64(),
            seen.join(", ")
        );
        lock(&tally).elections.push(elected);
        next += args.period;
    }
    std::thread::sleep(end.saturating_duration_since(Instant::now()));
    stop.store(true, Ordering::Relaxed);
    // Where a write's time went on each member since it (last) started: a follower's stages
    // hold its forwarded writes (`to_log` from its batcher to its own log, through the leader),
    // the leader's its own clients' writes. etcd has none of these.
    let leader = cluster.leader();
    for (i, m) in cluster.members().iter().enumerate() {
        let Ok(totals) = super::stages::read(&[m.endpoint()]) else {
            continue;
        };
        let means = super::stages::means(&super::stages::Totals::default(), &totals);
        if !means.is_empty() {
            let role = if leader == Some(i) {
                "leader"
            } else {
                "follower"
            };
            eprintln!(
                "m{i} ({role}) write stages, µs per command: {}",
                super::stages::line(&means)
            );
        }
    }
    rt.block_on(async {
        for t in tasks {
            let _ = deadline::within(
                deadline::Layer::Api,
                deadline::Deadline::after(Duration::from_secs(10)),
                t,
            )
            .await;
        }
    });
    drop(cluster);
    let mut out = lock(&tally);
    let mut windows = vec![0u64; (args.duration.as_secs() + 1) as usize];
    for w in &out.writes {
        if let Some(n) = windows.get_mut(w.as_secs() as usize) {
            *n += 1;
        }
    }
    eprintln!("writes per second: {windows:?}");
    for (m, (n, busy)) in &out.by_member {
        eprintln!(
            "writes through m{m}: {n}, mean {:.1} ms",
            busy.as_secs_f64() * 1000.0 / (*n).max(1) as f64
        );
    }
    Ok(std::mem::take(&mut *out))
}

async fn connect(endpoint: &str, deadline: Duration) -> Option<Client> {
    let options = ConnectOptions::new()
        .with_timeout(deadline)
        .with_connect_timeout(Duration::from_secs(1));
    match deadline::within(
        deadline::Layer::Api,
        deadline::Deadline::after(Duration::from_secs(2)),
        Client::connect([endpoint], Some(options)),
    )
    .await
    {
        Ok(Ok(c)) => Some(c),
        _ => None,
    }
}

/// What every client shares: the run's start, the stop flag and the tally.
struct Shared<'a> {
    start: Instant,
    stop: &'a AtomicBool,
    tally: &'a Mutex<Tally>,
}

/// One client: puts (40 %), linearizable gets (30 %) and compare-and-swaps (30 %) until told to
/// stop.
async fn worker(
    id: usize,
    endpoints: Vec<String>,
    keys: usize,
    deadline: Duration,
    seed: u64,
    shared: Shared<'_>,
) {
    let Shared { start, stop, tally } = shared;
    let mut rng = XorShift::new(seed);
    let mut member = id % endpoints.len();
    let mut client: Option<Client> = None;
    let mut seen: Vec<String> = vec![String::new(); keys];
    let mut n = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let Some(c) = client.as_mut() else {
            client = connect(&endpoints[member], deadline).await;
            if client.is_none() {
                member = (member + 1) % endpoints.len();
                crate::chaos::workload::pause(Duration::from_millis(100)).await;
            }
            continue;
        };
        n += 1;
        let k = rng.below(keys);
        let key = format!("f/{k}");
        let value = format!("{id}-{n}");
        let roll = rng.below(10);
        let started = Instant::now();
        // The client enforces the deadline too; the margin only catches a stuck call.
        let bound = deadline::Deadline::after(deadline + Duration::from_millis(500));
        let (kind, result): (&str, Result<bool, String>) = if roll < 4 {
            let r = deadline::within(deadline::Layer::Api, bound, c.put(key, value, None)).await;
            ("put", flatten(r).map(|_| true))
        } else if roll < 7 {
            let r = deadline::within(deadline::Layer::Api, bound, c.get(key, None)).await;
            let r = flatten(r).map(|g| {
                if let Some(kv) = g.kvs().first() {
                    seen[k] = String::from_utf8_lossy(kv.value()).into_owned();
                }
                true
            });
            ("get", r)
        } else {
            let txn = Txn::new()
                .when([Compare::value(
                    key.clone(),
                    CompareOp::Equal,
                    seen[k].clone(),
                )])
                .and_then([TxnOp::put(key.clone(), value.clone(), None)])
                .or_else([TxnOp::get(key, None)]);
            let r = deadline::within(deadline::Layer::Api, bound, c.txn(txn)).await;
            let r = flatten(r).map(|t| {
                if t.succeeded() {
                    seen[k] = value;
                }
                t.succeeded()
            });
            ("txn", r)
        };
        let took = started.elapsed();
        let failed = {
            let mut t = lock(tally);
            t.longest = t.longest.max(took);
            let swapped = kind == "txn" && result.as_ref().is_ok_and(|s| *s);
            if swapped {
                t.swapped += 1;
            }
            if kind != "get" && result.is_ok() {
                t.writes.push(started.duration_since(start) + took);
                let m = t.by_member.entry(member).or_default();
                m.0 += 1;
                m.1 += took;
            }
            let slot = match kind {
                "put" => &mut t.put,
                "get" => &mut t.get,
                _ => &mut t.txn,
            };
            match &result {
                Ok(_) => {
                    slot.ok += 1;
                    slot.busy += took;
                    None
                }
                Err(e) => {
                    *slot.failed.entry(label(e)).or_default() += 1;
                    if definite(e) {
                        slot.definite += 1;
                    } else {
                        slot.indeterminate += 1;
                    }
                    Some(label(e))
                }
            }
        };
        if let Some(what) = failed {
            if what == "connection" {
                client = None;
                member = (member + 1) % endpoints.len();
            }
            crate::chaos::workload::pause(BACKOFF).await;
        }
    }
}

fn flatten<T>(r: Result<Result<T, etcd_client::Error>, deadline::Expired>) -> Result<T, String> {
    match r {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err("client-side deadline".to_string()),
    }
}

fn report(results: &[(&str, Tally)], args: &Args) -> String {
    let what = if args.no_kill {
        "no-kill baseline (no fault)".to_string()
    } else {
        format!(
            "kill-the-leader loop: the leader SIGKILLed every {:?} and started again {:?} later",
            args.period, args.down
        )
    };
    let mut out = format!(
        "{what}; {} members, {} clients, {:?} deadline, {:?}, {} round(s)\n\n",
        args.members, args.clients, args.deadline, args.duration, args.rounds
    );
    out.push_str(
        "| server | kills | writes ok | puts ok | swaps ok (txns ok) | gets ok | failed: definite / indeterminate | failures by kind | longest | mean ms put / txn / get | kill → new leader: median / max (none within the period) | write stall per kill: median / max |\n|---|--:|--:|--:|--:|--:|--:|---|--:|---|---|---|\n",
    );
    for (name, t) in results {
        out.push_str(&row(name, t, args.period));
        out.push('\n');
    }
    let median = |name: &str, of: fn(&Tally) -> u64| {
        let mut v: Vec<u64> = results
            .iter()
            .filter(|(n, _)| *n == name)
            .map(|(_, t)| of(t))
            .collect();
        v.sort_unstable();
        v.get(v.len() / 2).copied()
    };
    let writes = |t: &Tally| t.put.ok + t.txn.ok;
    let gets = |t: &Tally| t.get.ok;
    if let (Some(mw), Some(ew), Some(mg), Some(eg)) = (
        median("MetaStore", writes),
        median("etcd", writes),
        median("MetaStore", gets),
        median("etcd", gets),
    ) {
        let ratio = |a: u64, b: u64| a as f64 / b.max(1) as f64;
        out.push_str(&format!(
            "\nmedians over rounds: writes ok MetaStore {mw} / etcd {ew} = {:.2}×; gets ok \
             MetaStore {mg} / etcd {eg} = {:.2}×\n",
            ratio(mw, ew),
            ratio(mg, eg)
        ));
    }
    out
}

/// One server's row of the table.
fn row(name: &str, t: &Tally, period: Duration) -> String {
    let mut kinds: BTreeMap<&str, u64> = BTreeMap::new();
    for k in [&t.put, &t.get, &t.txn] {
        for (what, n) in &k.failed {
            *kinds.entry(what).or_default() += n;
        }
    }
    let kinds = kinds
        .iter()
        .map(|(k, n)| format!("{k} {n}"))
        .collect::<Vec<_>>()
        .join(", ");
    let spread = |mut times: Vec<Duration>| {
        times.sort();
        let median = times.get(times.len() / 2).copied().unwrap_or_default();
        let max = times.last().copied().unwrap_or_default();
        format!("{:.2} s / {:.2} s", median.as_secs_f64(), max.as_secs_f64())
    };
    let none = t.elections.iter().filter(|e| e.is_none()).count();
    let elections = spread(t.elections.iter().flatten().copied().collect());
    let stalls = spread(t.stalls(period));
    let definite = t.put.definite + t.get.definite + t.txn.definite;
    let indeterminate = t.put.indeterminate + t.get.indeterminate + t.txn.indeterminate;
    format!(
        "| {name} | {} | {} | {} | {} ({}) | {} | {definite} / {indeterminate} | {kinds} | {:.2} s | {:.1} / {:.1} / {:.1} | {elections} ({none}) | {stalls} |",
        t.elections.len(),
        t.put.ok + t.txn.ok,
        t.put.ok,
        t.swapped,
        t.txn.ok,
        t.get.ok,
        t.longest.as_secs_f64(),
        t.put.mean_ms(),
        t.txn.mean_ms(),
        t.get.mean_ms(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A kill's stall is the longest time without an answered write in the period after it,
    /// the edges included.
    #[test]
    fn a_stall_is_the_longest_gap_between_writes_after_a_kill() {
        let ms = Duration::from_millis;
        let t = Tally {
            kills: vec![ms(1000), ms(6000)],
            writes: vec![ms(900), ms(1100), ms(3100), ms(3200), ms(5900), ms(6500)],
            ..Tally::default()
        };
        assert_eq!(t.stalls(ms(5000)), vec![ms(2700), ms(4500)]);
    }

    #[test]
    fn failures_are_labelled_by_what_they_say() {
        assert_eq!(
            label("grpc request error: status: Unavailable, message: \"etcdserver: no leader\""),
            "no leader"
        );
        assert_eq!(label("client-side deadline"), "deadline");
        assert_eq!(
            label("grpc request error: status: Cancelled, message: \"Timeout expired\""),
            "deadline"
        );
        assert_eq!(
            label("transport error: tcp connect error: Connection refused"),
            "connection"
        );
        assert_eq!(label("etcdserver: request timed out"), "request timed out");
        assert_eq!(label("something else"), "other");
    }
}
