//! `cargo xtask bench lease`: lease grants, keep-alives and mass expiry, MetaStore against
//! etcd 3.4, one server at a time, each freshly started per workload, same client.
//!
//! - grants: concurrent clients granting leases for a fixed time; grants per second;
//! - keep-alives: keep-alive streams renewing a fixed set of leases, pipelined; answers per
//!   second;
//! - expiry: leases with one key each, all granted at about the same time with the same TTL;
//!   the time from the first lease's expiry until the last key is gone.

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
use kvapi::pb::etcdserverpb::lease_client::LeaseClient;
use kvapi::pb::etcdserverpb::{LeaseGrantRequest, LeaseKeepAliveRequest, PutRequest, RangeRequest};
use tokio::sync::mpsc;
use tokio::task::JoinSet;

use super::doc;
use super::servers::{
    connect, join_within, request, settle, wait_ready, Kind, Scratch, Server, REQUEST_TIMEOUT,
};
use super::{compare, grouped, load_average, output_of, Machine};

const HEADING: &str = "## Lease";
/// Connections every workload spreads its clients over.
const CONNS: usize = 8;
/// Concurrent granting clients.
const GRANT_CLIENTS: usize = 64;
/// Keep-alive streams, and requests each keeps in flight.
const KEEPALIVE_STREAMS: usize = 16;
const KEEPALIVE_WINDOW: usize = 64;
/// TTL of the granted and kept-alive leases: long enough not to expire during the run.
const LONG_TTL: i64 = 600;
/// Longest the expiry run may wait for the last key to go.
const EXPIRY_LIMIT: Duration = Duration::from_secs(600);
const SETUP_LIMIT: Duration = Duration::from_secs(600);

/// The flags of `cargo xtask bench lease`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Measured seconds for grants and keep-alives.
    #[arg(long, value_name = "S", default_value = "5", value_parser = flags::secs_upto_600)]
    secs: f64,
    /// Leases kept alive.
    #[arg(long, value_name = "N", default_value = "10000",
          value_parser = |s: &str| flags::number_in::<usize>(s, 1, 1_000_000, "1 to 1,000,000"))]
    leases: usize,
    /// Leases (one key each) expired at once.
    #[arg(long, value_name = "N", default_value = "100000",
          value_parser = |s: &str| flags::number_in::<usize>(s, 1, 1_000_000, "1 to 1,000,000"))]
    expire: usize,
    /// Their TTL: must cover granting them all.
    #[arg(long, value_name = "S", default_value = "60",
          value_parser = |s: &str| flags::number_in::<i64>(s, 2, 3_600, "2 to 3600"))]
    expire_ttl: i64,
    #[command(flatten)]
    server: Build,
    #[command(flatten)]
    out: Docs,
}

impl Checked for Args {}

/// Everything measured on one server.
#[derive(Debug, Default)]
struct Measured {
    version: String,
    grants_per_s: f64,
    keepalives_per_s: f64,
    /// Seconds granting and attaching the expiring leases took.
    expire_setup_s: f64,
    /// Seconds from the first lease's expiry until the last key was gone.
    expire_s: f64,
}

/// Grants leases for `secs` from [`GRANT_CLIENTS`] clients; answers per second.
async fn grants(url: &str, secs: f64) -> Result<f64> {
    let channels = connect(url, CONNS).await?;
    let end = Instant::now() + Duration::from_secs_f64(secs);
    let done = Arc::new(AtomicU64::new(0));
    let mut set = JoinSet::new();
    for c in 0..GRANT_CLIENTS {
        let mut lease = LeaseClient::new(channels[c % CONNS].clone());
        let done = Arc::clone(&done);
        set.spawn(async move {
            while Instant::now() < end {
                let req = LeaseGrantRequest {
                    ttl: LONG_TTL,
                    id: 0,
                };
                lease
                    .lease_grant(request(req, REQUEST_TIMEOUT))
                    .await
                    .map_err(|s| format!("grant: {s}"))?;
                done.fetch_add(1, Ordering::Relaxed);
            }
            Ok::<(), String>(())
        });
    }
    let started = Instant::now();
    for r in join_within(set, end + REQUEST_TIMEOUT).await? {
        r.map_err(anyhow::Error::msg)?;
    }
    Ok(done.load(Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64())
}

/// Grants `n` leases with `ttl` from [`GRANT_CLIENTS`] clients; with `key_prefix`, also puts
/// one key per lease attached to it. Returns the ids.
async fn grant_many(url: &str, n: usize, ttl: i64, key_prefix: Option<&str>) -> Result<Vec<i64>> {
    let channels = connect(url, CONNS).await?;
    let mut set = JoinSet::new();
    for c in 0..GRANT_CLIENTS {
        let channel = channels[c % CONNS].clone();
        let prefix = key_prefix.map(str::to_string);
        set.spawn(async move {
            let mut lease = LeaseClient::new(channel.clone());
            let mut kv = KvClient::new(channel);
            let mut ids = Vec::new();
            for i in (c..n).step_by(GRANT_CLIENTS) {
                let id = lease
                    .lease_grant(request(LeaseGrantRequest { ttl, id: 0 }, REQUEST_TIMEOUT))
                    .await
                    .map_err(|s| format!("grant: {s}"))?
                    .into_inner()
                    .id;
                if let Some(prefix) = &prefix {
                    let put = PutRequest {
                        key: format!("{prefix}{i:07}").into_bytes(),
                        value: b"v".to_vec(),
                        lease: id,
                        ..Default::default()
                    };
                    kv.put(request(put, REQUEST_TIMEOUT))
                        .await
                        .map_err(|s| format!("put: {s}"))?;
                }
                ids.push(id);
            }
            Ok::<Vec<i64>, String>(ids)
        });
    }
    let mut all = Vec::with_capacity(n);
    for r in join_within(set, Instant::now() + SETUP_LIMIT).await? {
        all.extend(r.map_err(anyhow::Error::msg)?);
    }
    Ok(all)
}

/// Renews `ids` round-robin over [`KEEPALIVE_STREAMS`] streams, each keeping
/// [`KEEPALIVE_WINDOW`] requests in flight, for `secs`; answers per second.
async fn keepalives(url: &str, ids: &[i64], secs: f64) -> Result<f64> {
    let channels = connect(url, CONNS).await?;
    let answered = Arc::new(AtomicU64::new(0));
    let end = Instant::now() + Duration::from_secs_f64(secs);
    let mut set = JoinSet::new();
    for s in 0..KEEPALIVE_STREAMS {
        let mine: Vec<i64> = ids
            .iter()
            .skip(s)
            .step_by(KEEPALIVE_STREAMS)
            .copied()
            .collect();
        let mut lease = LeaseClient::new(channels[s % CONNS].clone());
        let answered = Arc::clone(&answered);
        set.spawn(async move {
            let (tx, rx) = mpsc::channel(KEEPALIVE_WINDOW);
            let mut next = mine.iter().cycle();
            for _ in 0..KEEPALIVE_WINDOW {
                let id = *next.next().unwrap_or(&0);
                tx.send(LeaseKeepAliveRequest { id })
                    .await
                    .map_err(|e| e.to_string())?;
            }
            let mut answers = lease
                .lease_keep_alive(tokio_stream::wrappers::ReceiverStream::new(rx))
                .await
                .map_err(|s| format!("keep-alive: {s}"))?
                .into_inner();
            while Instant::now() < end {
                let a = answers
                    .message()
                    .await
                    .map_err(|s| format!("keep-alive: {s}"))?
                    .ok_or("the keep-alive stream ended")?;
                if a.ttl <= 0 {
                    return Err(format!("lease {} is gone", a.id));
                }
                answered.fetch_add(1, Ordering::Relaxed);
                let id = *next.next().unwrap_or(&0);
                tx.send(LeaseKeepAliveRequest { id })
                    .await
                    .map_err(|e| e.to_string())?;
            }
            Ok::<(), String>(())
        });
    }
    let started = Instant::now();
    for r in join_within(set, end + REQUEST_TIMEOUT).await? {
        r.map_err(anyhow::Error::msg)?;
    }
    Ok(answered.load(Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64())
}

/// Keys left under `prefix`.
async fn count(url: &str, prefix: &str) -> Result<i64> {
    let channel = connect(url, 1).await?.remove(0);
    let mut end = prefix.as_bytes().to_vec();
    if let Some(last) = end.last_mut() {
        *last += 1;
    }
    let req = RangeRequest {
        key: prefix.as_bytes().to_vec(),
        range_end: end,
        count_only: true,
        serializable: true,
        ..Default::default()
    };
    Ok(KvClient::new(channel)
        .range(request(req, REQUEST_TIMEOUT))
        .await?
        .into_inner()
        .count)
}

/// Expiry: `n` leases of `ttl` with a key each; (setup seconds, drain seconds).
async fn expiry(url: &str, n: usize, ttl: i64) -> Result<(f64, f64)> {
    let started = Instant::now();
    grant_many(url, n, ttl, Some("x/")).await?;
    let setup = started.elapsed();
    ensure!(
        setup < Duration::from_secs(u64::try_from(ttl).unwrap_or(0)),
        "granting took {setup:?}, longer than the TTL ({ttl} s): raise --expire-ttl"
    );
    let first_due = started + Duration::from_secs(u64::try_from(ttl).unwrap_or(0));
    let mut poll = tokio::time::interval(Duration::from_millis(100));
    loop {
        poll.tick().await;
        if Instant::now() >= first_due && count(url, "x/").await? == 0 {
            break;
        }
        ensure!(
            started.elapsed() < EXPIRY_LIMIT,
            "keys still there after {EXPIRY_LIMIT:?}"
        );
    }
    Ok((
        setup.as_secs_f64(),
        Instant::now()
            .saturating_duration_since(first_due)
            .as_secs_f64(),
    ))
}

fn measure(kind: Kind, program: &Path, scratch: &Scratch, args: &Args) -> Result<Measured> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let mut m = Measured {
        version: output_of(&program.to_string_lossy(), &["--version"]),
        ..Default::default()
    };
    let start = |what: &str| -> Result<Server> {
        settle();
        let mut server = Server::start(
            kind,
            program,
            &scratch.0.join(format!("{}-{what}", kind.name())),
            &[],
        )?;
        wait_ready(&rt, &mut server)?;
        Ok(server)
    };
    let mut server = start("grants")?;
    m.grants_per_s = rt
        .block_on(grants(&server.url, args.secs))
        .context("grants")?;
    server.ensure_running()?;
    drop(server);
    println!(
        "  {:<9} grants: {} /s",
        kind.name(),
        grouped(m.grants_per_s as u64)
    );

    let mut server = start("keepalives")?;
    let ids = rt
        .block_on(grant_many(&server.url, args.leases, LONG_TTL, None))
        .context("granting leases to keep alive")?;
    m.keepalives_per_s = rt
        .block_on(keepalives(&server.url, &ids, args.secs))
        .context("keep-alives")?;
    server.ensure_running()?;
    drop(server);
    println!(
        "  {:<9} keep-alives on {} leases: {} /s",
        kind.name(),
        grouped(args.leases as u64),
        grouped(m.keepalives_per_s as u64)
    );

    let mut server = start("expiry")?;
    let (setup, drain) = rt
        .block_on(expiry(&server.url, args.expire, args.expire_ttl))
        .context("expiry")?;
    server.ensure_running()?;
    m.expire_setup_s = setup;
    m.expire_s = drain;
    println!(
        "  {:<9} {} leases with a key each: granted in {setup:.1} s, all gone {drain:.1} s after the first expired",
        kind.name(),
        grouped(args.expire as u64)
    );
    Ok(m)
}

/// Runs `cargo xtask bench lease`.
pub fn run(args: Args, raw: &[String]) -> Result<()> {
    let root = crate::tidy::project_root();
    let machine = Machine::probe();
    let metastore = metastore_to_run(&root, args.server.metastore.as_ref(), args.server.build)?;
    ensure!(
        output_of("etcd", &["--version"]) != "unknown",
        "`etcd --version` failed: install etcd 3.4 (apt-get install -y etcd-server)"
    );
    let load_before = load_average();
    let scratch = Scratch::new("lease")?;
    let ours = measure(Kind::Ours, &metastore, &scratch, &args)?;
    let etcd = measure(Kind::Etcd, Path::new("etcd"), &scratch, &args)?;
    let load = load_span(load_before.as_deref());
    let command = command_line("lease", raw);
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
        "Servers: MetaStore (`{}`, `--engine redb`, release build, default settings: expired \
         leases are revoked at up to 5,000/s) and etcd (`{}`, default settings: up to 1,000 \
         revokes/s), one at a time, each freshly started per workload.\n",
        ours.version, etcd.version
    );
    let _ = writeln!(
        s,
        "Workloads: **grants** — {GRANT_CLIENTS} clients over {CONNS} connections grant leases \
         (TTL {LONG_TTL} s) back to back for {} s. **Keep-alives** — {} leases granted first, \
         then {KEEPALIVE_STREAMS} keep-alive streams renew them round-robin, each with \
         {KEEPALIVE_WINDOW} requests in flight, for {} s. **Expiry** — {} leases of TTL {} s, \
         each with one key put on it, granted as fast as the server takes them; the figure is \
         the time from the first lease's expiry until a count of the keys reads 0 (polled every \
         100 ms).\n",
        args.secs,
        grouped(args.leases as u64),
        args.secs,
        grouped(args.expire as u64),
        args.expire_ttl
    );
    let ratio = |a: f64, b: f64| if b > 0.0 { a / b } else { f64::INFINITY };
    let _ = writeln!(
        s,
        "| workload | MetaStore | etcd | ratio |\n|---|--:|--:|--:|"
    );
    let _ = writeln!(
        s,
        "| lease grants/s | {} | {} | {:.2}× |",
        grouped(ours.grants_per_s as u64),
        grouped(etcd.grants_per_s as u64),
        ratio(ours.grants_per_s, etcd.grants_per_s)
    );
    let _ = writeln!(
        s,
        "| keep-alives/s on {} leases | {} | {} | {:.2}× |",
        grouped(args.leases as u64),
        grouped(ours.keepalives_per_s as u64),
        grouped(etcd.keepalives_per_s as u64),
        ratio(ours.keepalives_per_s, etcd.keepalives_per_s)
    );
    let _ = writeln!(
        s,
        "| time to expire {} leases (s, lower is better) | {:.1} | {:.1} | {:.2}× faster |",
        grouped(args.expire as u64),
        ours.expire_s,
        etcd.expire_s,
        ratio(etcd.expire_s, ours.expire_s)
    );
    let _ = writeln!(
        s,
        "\nGranting the expiring leases and their keys took {:.1} s on MetaStore, {:.1} s on etcd.\n",
        ours.expire_setup_s, etcd.expire_setup_s
    );
    let goals = [
        (
            "lease grants/s ≥ 2× etcd's",
            ratio(ours.grants_per_s, etcd.grants_per_s),
        ),
        (
            "keep-alives/s ≥ 2× etcd's",
            ratio(ours.keepalives_per_s, etcd.keepalives_per_s),
        ),
        (
            "expiry of the leases ≥ 2× as fast as etcd's",
            ratio(etcd.expire_s, ours.expire_s),
        ),
    ];
    let met = goals.iter().filter(|g| g.1 >= 2.0).count();
    let _ = writeln!(
        s,
        "### Goals (from the issue, same machine)\n\n{met} of {} met.\n",
        goals.len()
    );
    let _ = writeln!(s, "| goal | measured | met |\n|---|---|---|");
    for (goal, r) in goals {
        let _ = writeln!(
            s,
            "| {goal} | {r:.2}× | {} |",
            if r >= 2.0 { "yes" } else { "**no**" }
        );
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::flags::parse;

    #[test]
    fn args_parse() {
        let a = parse::<Args>(&["--expire".to_string(), "10".to_string()])
            .unwrap()
            .unwrap();
        assert_eq!(a.expire, 10);
        assert!(parse::<Args>(&["--expire-ttl".to_string(), "1".to_string()]).is_err());
        assert!(parse::<Args>(&["--nope".to_string()]).is_err());
    }

    #[test]
    fn the_section_judges_each_goal() {
        let m = Machine::probe();
        let ours = Measured {
            grants_per_s: 30_000.0,
            keepalives_per_s: 10_000.0,
            expire_s: 10.0,
            ..Default::default()
        };
        let etcd = Measured {
            grants_per_s: 10_000.0,
            keepalives_per_s: 10_000.0,
            expire_s: 100.0,
            ..Default::default()
        };
        let args = parse::<Args>(&[]).unwrap().unwrap();
        let s = render(&args, "cmd", "load", &ours, &etcd, &m);
        assert!(
            s.contains("| lease grants/s ≥ 2× etcd's | 3.00× | yes |"),
            "{s}"
        );
        assert!(
            s.contains("| keep-alives/s ≥ 2× etcd's | 1.00× | **no** |"),
            "{s}"
        );
        assert!(s.contains("2 of 3 met."), "{s}");
    }
}
