//! `cargo xtask chaos`: a cluster of real members under faults, concurrent clients recording
//! what they saw, and a check of the history against etcd's model.
//!
//! The run starts a cluster whose peer traffic goes through fault-injecting proxies (testkit's
//! `Net`: each member connects to its peers from its own loopback address, so the proxy in
//! front of a member knows which link a connection is). Checked clients put, read, swap and
//! delete a few keys; lease clients grant leases with keys; one watcher per member records
//! every event. Faults drawn from the seed come and go meanwhile. At the end every fault is
//! healed, every member is killed and restarted, and the run checks:
//! - linearizability of the KV history (`checker`), with final reads after the restart, so a
//!   lost acknowledged write is a violation;
//! - each watcher's events against the history (`watchcheck`);
//! - that every member holds the same keys and the same HashKV at the same revision;
//! - that every request finished within its deadline plus a slack (the longest is reported);
//! - that no proposal stayed pending and the task count returned to its start.

mod checker;
mod docker;
mod faults;
mod watchcheck;
pub(crate) mod workload;

use std::fmt::Write as _;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use testkit::{Cluster, ClusterOptions};

use crate::flags::{self, Checked, Member};

use workload::{Seen, Shared};

/// What a request may take beyond its deadline.
const SLACK: Duration = Duration::from_secs(1);
/// Steps the checker may take per key before calling it undecided.
const CHECK_BUDGET: usize = 20_000_000;

/// The flags of `cargo xtask chaos`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// The seed of the fault schedule and the clients.
    #[arg(long, value_name = "N", default_value = "1")]
    seed: u64,
    /// How long clients run, e.g. 120s, 30m.
    #[arg(long, value_name = "D", default_value = "120s", value_parser = duration)]
    duration: Duration,
    /// Cluster size, 3 or 5 (at most 5 with --docker).
    #[arg(long, value_name = "N", default_value = "3",
          value_parser = |s: &str| flags::number_in::<usize>(s, 3, 7, "3 to 7"))]
    members: usize,
    #[command(flatten)]
    member: Member,
    /// kill, restart, stop, isolate-leader, split, asymmetric, latency, drop-connections,
    /// partition, all.
    #[arg(long = "faults", value_name = "LIST", default_value = "all", value_parser = fault_list)]
    fault_list: String,
    /// The faults `--faults` names that this mode makes.
    #[arg(skip)]
    faults: Vec<faults::Kind>,
    /// Checked KV clients.
    #[arg(long, value_name = "N", default_value = "6",
          value_parser = |s: &str| flags::number_in::<usize>(s, 1, 64, "1 to 64"))]
    clients: usize,
    /// Keys they share.
    #[arg(long, value_name = "N", default_value = "5",
          value_parser = |s: &str| flags::number_in::<usize>(s, 1, 1000, "1 to 1000"))]
    keys: usize,
    /// Results folder (default target/chaos/seed-N, with --docker target/chaos/docker-seed-N).
    #[arg(long, value_name = "DIR")]
    out: Option<PathBuf>,
    /// Run the members as containers of an image under docker-compose, with faults made by the
    /// Docker engine: kill and start again from the volume, pause, network disconnect of the
    /// leader, a 1/2 split (faults kill, restart, stop, isolate-leader, split; see
    /// deploy/README.md).
    #[arg(long)]
    docker: bool,
    /// The image for --docker (made by deploy/build-image.sh).
    #[arg(long, value_name = "NAME", default_value = "metastore:local")]
    image: String,
    /// Succeed only if the checker finds a violation (for testing the checker against a build
    /// with a planted bug).
    #[arg(long)]
    expect_violation: bool,
    /// Succeed only if answers disagree about which write is at which revision (a write given
    /// another's revision, or one its value was not read or watched at; a create/mod/version
    /// the acknowledged writes contradict): a planted bug that answers requests with other
    /// requests' results.
    #[arg(long)]
    expect_wrong_revisions: bool,
    /// Check the history.txt of an earlier run again and print the verdict on it.
    #[arg(long, value_name = "FILE", exclusive = true)]
    recheck: Option<String>,
}

impl Checked for Args {
    fn checked(mut self) -> Result<Self> {
        self.faults = if self.docker {
            faults::Kind::parse_docker_list(&self.fault_list)
        } else {
            faults::Kind::parse_list(&self.fault_list)
        }
        .map_err(anyhow::Error::msg)?;
        // A network per pair: 5 members make 15 networks, and the engine's address pools
        // hold about 30.
        ensure!(
            !self.docker || self.members <= 5,
            "--docker runs 3 to 5 members"
        );
        Ok(self)
    }
}

/// `--faults`: names [`faults::Kind::parse_list`] knows.
fn fault_list(s: &str) -> Result<String, String> {
    faults::Kind::parse_list(s)?;
    Ok(s.to_string())
}

/// `--duration`: at least 10 s.
fn duration(s: &str) -> Result<Duration, String> {
    let d = parse_duration(s).map_err(|e| format!("{e:#}"))?;
    if d < Duration::from_secs(10) {
        return Err("--duration must be at least 10s".into());
    }
    Ok(d)
}

/// `120s`, `2m`, `1h`, or seconds.
/// Checks a saved `history.txt` again: for a checker change, or a run to look into.
fn recheck(file: &str) -> Result<()> {
    let text = std::fs::read_to_string(file).with_context(|| format!("reading {file}"))?;
    let history = checker::parse_history(&text)
        .map_err(anyhow::Error::msg)
        .with_context(|| format!("parsing {file}"))?;
    let started = Instant::now();
    let v = checker::check(&history, CHECK_BUDGET);
    for violation in &v.violations {
        println!("{violation:?}");
    }
    for p in &v.revisions {
        println!("revisions: {p}");
    }
    println!(
        "{} operations ({} unknown): {} linearizability violations, {} revision problems \
         ({} about which write is at which revision), {} undecided keys {:?}, \
         checked in {:.1?}",
        v.ops,
        v.unknown,
        v.violations.len(),
        v.revisions.len(),
        v.wrong_write_revisions,
        v.undecided.len(),
        v.undecided,
        started.elapsed()
    );
    ensure!(
        !v.violated() && v.undecided.is_empty(),
        "the history is not shown linearizable"
    );
    Ok(())
}

fn parse_duration(s: &str) -> Result<Duration> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (n, unit) = s.split_at(split);
    let n: u64 = n.parse().with_context(|| format!("{s:?}"))?;
    Ok(match unit {
        "" | "s" => Duration::from_secs(n),
        "m" => Duration::from_secs(n * 60),
        "h" => Duration::from_secs(n * 3600),
        _ => bail!("{s:?}: use s, m or h"),
    })
}

fn lock<T: ?Sized>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Everything a run found.
struct Findings {
    linearizability: checker::Verdict,
    watch_problems: Vec<String>,
    /// Reference events at another revision than their write's acknowledgement said.
    watch_wrong_revisions: usize,
    divergence: Vec<String>,
    timing: workload::Timing,
    leaks: Vec<String>,
    timeline: Vec<faults::Event>,
    watch_events: Vec<usize>,
    reference_events: usize,
}

impl Findings {
    fn passed(&self) -> bool {
        !self.linearizability.violated()
            && self.linearizability.undecided.is_empty()
            && self.watch_problems.is_empty()
            && self.divergence.is_empty()
            && self.timing.longest <= workload::DEADLINE + SLACK
            && self.leaks.is_empty()
    }
}

/// Runs `cargo xtask chaos`.
pub fn run(args: Args) -> Result<()> {
    if let Some(file) = &args.recheck {
        return recheck(file);
    }
    let args = args.checked()?;
    let root = crate::tidy::project_root();
    let out_dir = args.out.clone().unwrap_or_else(|| {
        let mode = if args.docker { "docker-" } else { "" };
        root.join(format!("target/chaos/{mode}seed-{}", args.seed))
    });
    std::fs::create_dir_all(&out_dir).with_context(|| format!("creating {}", out_dir.display()))?;
    let member_args = vec![
        "--request-timeout".to_string(),
        "2s".into(),
        "--snapshot-count".into(),
        "2000".into(),
        "--log-level".into(),
        "warn".into(),
    ];
    let cluster: Arc<Mutex<dyn faults::Members>> = if args.docker {
        docker::check_engine(&args.image)?;
        let spec = docker::Spec {
            project: docker::project_name(args.seed),
            image: args.image.clone(),
            engine: args.member.engine.clone(),
            ports: (0..args.members).map(|_| testkit::free_port()).collect(),
            extra_args: member_args,
        };
        // Drop removes the project; a run killed by a signal cannot, so say how.
        println!(
            "chaos: docker-compose project {} from {} ({} members); if the run is killed, \
             remove it with: docker-compose -p {} -f {} down -v",
            spec.project,
            spec.image,
            args.members,
            spec.project,
            out_dir.join("compose.yaml").display()
        );
        Arc::new(Mutex::new(
            docker::DockerCluster::start(spec, &out_dir).context("starting the containers")?,
        ))
    } else {
        let binary = match &args.member.binary {
            Some(b) => b.clone(),
            None => crate::bench::build_release_server(&root)?,
        };
        ensure!(binary.is_file(), "{} is not a file", binary.display());
        Arc::new(Mutex::new(
            Cluster::start(ClusterOptions {
                binary,
                members: args.members,
                engine: args.member.engine.clone(),
                extra_args: member_args,
                proxy_peers: true,
            })
            .map_err(anyhow::Error::msg)
            .context("starting the cluster")?,
        ))
    };
    let endpoints = lock(&cluster).endpoints();
    let baseline_tasks: Vec<f64> = {
        let c = lock(&cluster);
        (0..args.members)
            .filter_map(|i| c.metric(i, "metastore_live_tasks"))
            .collect()
    };
    println!(
        "chaos: seed {}, {:?}, {} members ({}{}), faults {}; results in {}",
        args.seed,
        args.duration,
        args.members,
        args.member.engine,
        if args.docker { ", docker" } else { "" },
        args.faults
            .iter()
            .map(|k| k.name())
            .collect::<Vec<_>>()
            .join(","),
        out_dir.display()
    );

    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let shared = Shared::new();
    let end = shared.start + args.duration;
    let fault_thread = {
        let cluster = Arc::clone(&cluster);
        let kinds = args.faults.clone();
        let stop = Arc::clone(&shared.stop);
        let (seed, start) = (args.seed, shared.start);
        std::thread::spawn(move || faults::run(&cluster, &kinds, seed, start, end, &stop))
    };
    let (watched, timeline) = rt.block_on(async {
        let mut tasks = tokio::task::JoinSet::new();
        for c in 0..args.clients {
            let endpoint = endpoints[c % endpoints.len()].clone();
            tasks.spawn(workload::kv_client(
                shared.clone(),
                c,
                endpoint,
                args.keys,
                args.seed,
            ));
        }
        for c in 0..2 {
            let endpoint = endpoints[(c + 1) % endpoints.len()].clone();
            tasks.spawn(workload::lease_client(
                shared.clone(),
                c,
                endpoint,
                args.seed,
            ));
        }
        let mut watchers = Vec::new();
        for w in 0..endpoints.len() {
            watchers.push(tokio::spawn(workload::watcher(
                shared.clone(),
                endpoints.clone(),
                w,
            )));
        }
        let mut tick = tokio::time::interval(Duration::from_secs(10));
        while Instant::now() < end {
            tick.tick().await;
            let done = lock(&shared.history).len();
            println!(
                "  {:5.0}s  {done} operations",
                shared.start.elapsed().as_secs_f64()
            );
        }
        shared.stop.store(true, Ordering::Relaxed);
        while tasks.join_next().await.is_some() {}
        let mut watched = Vec::new();
        for w in watchers {
            watched.push(w.await.unwrap_or_default());
        }
        let timeline = tokio::task::block_in_place(|| fault_thread.join().unwrap_or_default());
        (watched, timeline)
    });

    // Quiet now and healed: nothing may stay pending, and the tasks go back to where they were.
    let mut leaks = Vec::new();
    {
        let c = lock(&cluster);
        let settle = Instant::now();
        let max_baseline = baseline_tasks.iter().copied().fold(0.0, f64::max);
        loop {
            let pending: Vec<Option<f64>> = (0..args.members)
                .map(|i| c.metric(i, "metastore_pending_operations"))
                .collect();
            let tasks: Vec<Option<f64>> = (0..args.members)
                .map(|i| c.metric(i, "metastore_live_tasks"))
                .collect();
            if quiet(&pending, &tasks, max_baseline) {
                break;
            }
            if settle.elapsed() > Duration::from_secs(20) {
                leaks.push(format!(
                    "20 s after the load: pending {pending:?}, tasks {tasks:?} (at start {baseline_tasks:?})"
                ));
                break;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    // Kill and restart every member: what was acknowledged must survive it.
    {
        let mut c = lock(&cluster);
        c.restart_all()
            .map_err(anyhow::Error::msg)
            .context("restarting after the run")?;
        c.wait_leader(Duration::from_secs(30))
            .map_err(anyhow::Error::msg)?;
    }
    let leader = lock(&cluster).leader().unwrap_or(0);
    let leader_endpoint = endpoints[leader].clone();
    let (divergence, reference) = rt.block_on(async {
        let mut divergence = Vec::new();
        if let Err(e) = workload::final_reads(&shared, &leader_endpoint, args.keys).await {
            divergence.push(format!("final reads failed: {e}"));
        }
        // Every member converges on the same state and hash.
        let started = Instant::now();
        let mut states = Vec::new();
        loop {
            states.clear();
            for e in &endpoints {
                states.push(workload::local_state(e).await);
            }
            let same = states
                .iter()
                .all(|s| s.is_ok() && s.as_ref().ok() == states[0].as_ref().ok());
            if same || started.elapsed() > Duration::from_secs(30) {
                break;
            }
            workload::pause(Duration::from_millis(200)).await;
        }
        let mut revision = 0;
        for (i, s) in states.iter().enumerate() {
            match s {
                Ok((rev, kvs)) if Some(Ok((*rev, kvs.clone()))) != states.first().cloned() => {
                    divergence.push(format!("m{i} differs: revision {rev}, {kvs:?}"));
                }
                Ok((rev, _)) => revision = *rev,
                Err(e) => divergence.push(format!("m{i} cannot be read: {e}")),
            }
        }
        let mut hashes = Vec::new();
        for e in &endpoints {
            hashes.push(workload::hash_kv(e, revision).await);
        }
        if hashes.iter().any(|h| h != &hashes[0] || h.is_err()) {
            divergence.push(format!("HashKV at {revision} differs: {hashes:?}"));
        }
        let reference = workload::reference_events(&leader_endpoint, revision).await;
        (divergence, reference)
    });
    drop(cluster);

    let reference = reference
        .map_err(anyhow::Error::msg)
        .context("reading the history")?;
    let history = lock(&shared.history).clone();
    let linearizability = checker::check(&history, CHECK_BUDGET);
    let mut watch_problems = Vec::new();
    let (problems, watch_wrong_revisions) = watchcheck::check_history(&reference, &history, true);
    for problem in problems {
        watch_problems.push(format!("reference: {problem}"));
    }
    for (w, seen) in watched.iter().enumerate() {
        for problem in watchcheck::check(seen, &reference) {
            watch_problems.push(format!("watcher {w}: {problem}"));
        }
        for problem in watchcheck::check_history(seen, &history, false).0 {
            watch_problems.push(format!("watcher {w}: {problem}"));
        }
    }
    let findings = Findings {
        linearizability,
        watch_problems,
        watch_wrong_revisions,
        divergence,
        timing: lock(&shared.timing).clone(),
        leaks,
        timeline,
        watch_events: watched.iter().map(Vec::len).collect(),
        reference_events: reference.len(),
    };
    write_results(&out_dir, &args, &history, &watched, &findings)?;
    let verdict = verdict_line(&args, &findings);
    print!("{}", failure_table(&findings.timing));
    println!("{verdict}");
    if args.expect_wrong_revisions {
        ensure!(
            findings.linearizability.wrong_write_revisions + findings.watch_wrong_revisions > 0,
            "the checker found no write given another write's revision in a build that \
             should answer some"
        );
        return Ok(());
    }
    if args.expect_violation {
        ensure!(
            findings.linearizability.violated(),
            "the checker found no violation in a build that should have one"
        );
        return Ok(());
    }
    ensure!(
        findings.passed(),
        "chaos run failed; see {}",
        out_dir.join("report.md").display()
    );
    Ok(())
}

/// Whether every member answers its metrics with nothing pending and its task count back near
/// where it started. A member that answers but has no pending-operations series has never
/// registered a waiter in this incarnation (the gauge appears at the first one): a member
/// restarted at the very end of the load, with nothing pending.
fn quiet(pending: &[Option<f64>], tasks: &[Option<f64>], max_baseline: f64) -> bool {
    pending
        .iter()
        .zip(tasks)
        .all(|(p, t)| *p == Some(0.0) || (p.is_none() && t.is_some()))
        && tasks
            .iter()
            .all(|t| t.is_some_and(|t| t <= max_baseline + 8.0))
}

/// The share of each kind of request that failed definitely (an error saying it did not take
/// effect) and indeterminately (a timeout or lost connection: it may have), as a table.
fn failure_table(t: &workload::Timing) -> String {
    let share = |n: u64, of: u64| {
        if of == 0 {
            0.0
        } else {
            100.0 * n as f64 / of as f64
        }
    };
    let mut s = String::from(
        "| request | sent | failed definitely | failed indeterminately |\n|---|--:|--:|--:|\n",
    );
    let mut all = workload::Failures::default();
    for (kind, f) in &t.by_kind {
        let _ = writeln!(
            s,
            "| {kind} | {} | {} ({:.2} %) | {} ({:.2} %) |",
            f.requests,
            f.definite,
            share(f.definite, f.requests),
            f.indeterminate,
            share(f.indeterminate, f.requests)
        );
        all.requests += f.requests;
        all.definite += f.definite;
        all.indeterminate += f.indeterminate;
    }
    let _ = writeln!(
        s,
        "| all | {} | {} ({:.2} %) | {} ({:.2} %) |",
        all.requests,
        all.definite,
        share(all.definite, all.requests),
        all.indeterminate,
        share(all.indeterminate, all.requests)
    );
    s
}

fn verdict_line(args: &Args, f: &Findings) -> String {
    let lin = &f.linearizability;
    format!(
        "chaos: seed {}, {:?}, {} members ({}{}): {} operations ({} unknown), {} faults ({}), \
         {} linearizability violations, {} revision problems, {} undecided keys, \
         {} watch problems over {} events, \
         {} divergences, longest request {:.2}s (deadline {}s), {} leaks — {}",
        args.seed,
        args.duration,
        args.members,
        args.member.engine,
        if args.docker { ", docker" } else { "" },
        lin.ops,
        lin.unknown,
        f.timeline.iter().filter(|e| e.begins).count(),
        faults::count_by_kind(&f.timeline),
        lin.violations.len(),
        lin.revisions.len(),
        lin.undecided.len(),
        f.watch_problems.len(),
        f.watch_events.iter().sum::<usize>(),
        f.divergence.len(),
        f.timing.longest.as_secs_f64(),
        workload::DEADLINE.as_secs(),
        f.leaks.len(),
        if f.passed() { "PASS" } else { "FAIL" }
    )
}

fn write_results(
    dir: &std::path::Path,
    args: &Args,
    history: &[checker::Op],
    watched: &[Vec<Seen>],
    f: &Findings,
) -> Result<()> {
    let mut h = String::new();
    for op in history {
        let _ = writeln!(h, "{}", checker::format_op(op));
    }
    std::fs::write(dir.join("history.txt"), h)?;
    let mut w = String::new();
    for (i, events) in watched.iter().enumerate() {
        for e in events {
            let _ = writeln!(w, "watcher {i}: {e:?}");
        }
    }
    std::fs::write(dir.join("watch.txt"), w)?;
    let mut r = String::new();
    let _ = writeln!(r, "# Chaos run, seed {}\n", args.seed);
    let _ = writeln!(r, "{}\n", verdict_line(args, f));
    let _ = writeln!(r, "## Faults\n");
    for e in &f.timeline {
        let _ = writeln!(r, "    {e}");
    }
    let _ = writeln!(r, "\n## Linearizability\n");
    for v in &f.linearizability.violations {
        let _ = writeln!(
            r,
            "- key {}: no linearization; the longest order placed {} of {} operations and \
             could not place {:?}",
            v.key, v.linearized, v.total, v.stuck_at
        );
    }
    for p in &f.linearizability.revisions {
        let _ = writeln!(r, "- revisions: {p}");
    }
    for k in &f.linearizability.undecided {
        let _ = writeln!(r, "- key {k}: undecided (search budget exhausted)");
    }
    let _ = writeln!(r, "\n## Watches\n");
    let _ = writeln!(
        r,
        "Reference history: {} events. Received per watcher: {:?}.\n",
        f.reference_events, f.watch_events
    );
    for p in &f.watch_problems {
        let _ = writeln!(r, "- {p}");
    }
    let _ = writeln!(r, "\n## State after restarting every member\n");
    for d in &f.divergence {
        let _ = writeln!(r, "- {d}");
    }
    let _ = writeln!(
        r,
        "\n## Deadlines\n\n{} requests, {} ended in an error; the longest took {:.3} s ({}).\n",
        f.timing.requests,
        f.timing.errors,
        f.timing.longest.as_secs_f64(),
        f.timing.what
    );
    for (kind, n) in &f.timing.by_error {
        let _ = writeln!(r, "- {n} × {kind}");
    }
    let _ = writeln!(
        r,
        "\n## Failed requests per kind\n\n{}",
        failure_table(&f.timing)
    );
    let _ = writeln!(r, "\n## Leaks\n");
    for l in &f.leaks {
        let _ = writeln!(r, "- {l}");
    }
    std::fs::write(dir.join("report.md"), r)?;
    std::fs::write(
        dir.join("timeline.svg"),
        svg(history, &f.timeline, args.clients),
    )?;
    Ok(())
}

/// A timeline: one row per client (a tick per operation: green done, red unknown), faults as
/// shaded bands.
fn svg(history: &[checker::Op], timeline: &[faults::Event], clients: usize) -> String {
    let end = history
        .iter()
        .filter(|o| o.ret != u64::MAX)
        .map(|o| o.ret)
        .max()
        .unwrap_or(1)
        .max(1) as f64;
    let (width, row) = (1200.0, 14.0);
    let height = row * (clients as f64 + 2.0) + 20.0;
    let x = |t: f64| 10.0 + (width - 20.0) * t / end;
    let mut s = format!(
        "<svg xmlns='http://www.w3.org/2000/svg' width='{width}' height='{height}' font-size='10'>\n"
    );
    let mut open: Option<(f64, &str)> = None;
    for e in timeline {
        let t = e.at * 1e6;
        if e.begins {
            open = Some((t, &e.what));
        } else if let Some((from, what)) = open.take() {
            let _ = writeln!(
                s,
                "<rect x='{:.1}' y='0' width='{:.1}' height='{height}' fill='#fdd' ><title>{what}</title></rect>",
                x(from),
                (x(t) - x(from)).max(1.0)
            );
        }
    }
    for op in history {
        if op.client >= clients {
            continue;
        }
        let y = 10.0 + row * op.client as f64;
        let (x1, color) = if op.ret == u64::MAX {
            (x(op.call as f64) + 2.0, "#c00")
        } else {
            (x(op.ret as f64).max(x(op.call as f64) + 0.5), "#2a2")
        };
        let _ = writeln!(
            s,
            "<line x1='{:.1}' y1='{y:.1}' x2='{x1:.1}' y2='{y:.1}' stroke='{color}' stroke-width='6'/>",
            x(op.call as f64)
        );
    }
    s.push_str("</svg>\n");
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::flags::parse;

    /// The report gives, per kind of request and for all, the share that failed definitely
    /// and the share that failed indeterminately (issue 22).
    #[test]
    fn the_report_splits_failures_into_definite_and_indeterminate() {
        let mut t = workload::Timing::default();
        let of = |requests, definite, indeterminate| workload::Failures {
            requests,
            definite,
            indeterminate,
        };
        t.by_kind.insert("put", of(200, 2, 1));
        t.by_kind.insert("get", of(100, 0, 3));
        let table = failure_table(&t);
        assert!(
            table.contains("| put | 200 | 2 (1.00 %) | 1 (0.50 %) |"),
            "{table}"
        );
        assert!(
            table.contains("| get | 100 | 0 (0.00 %) | 3 (3.00 %) |"),
            "{table}"
        );
        assert!(
            table.contains("| all | 300 | 2 (0.67 %) | 4 (1.33 %) |"),
            "{table}"
        );
    }

    /// The 30-minute docker run with mem (seed 2) reported a leak it did not have: m0,
    /// restarted in the last seconds of the load, answered its metrics without the pending
    /// gauge, which the check took for "not quiet" (`pending [None, Some(0.0), Some(0.0)]`).
    #[test]
    fn a_member_that_never_registered_a_waiter_is_quiet_but_one_that_does_not_answer_is_not() {
        let tasks = [Some(16.0), Some(22.0), Some(19.0)];
        assert!(quiet(&[None, Some(0.0), Some(0.0)], &tasks, 22.0));
        assert!(!quiet(&[Some(1.0), Some(0.0), Some(0.0)], &tasks, 22.0));
        assert!(!quiet(
            &[None, Some(0.0), Some(0.0)],
            &[None, Some(22.0), Some(19.0)],
            22.0
        ));
        assert!(!quiet(
            &[Some(0.0); 3],
            &[Some(31.0), Some(22.0), Some(19.0)],
            22.0
        ));
    }

    #[test]
    fn args_and_durations() {
        let a = parse::<Args>(&[
            "--duration".into(),
            "2m".into(),
            "--faults".into(),
            "kill,stop".into(),
        ])
        .unwrap()
        .unwrap();
        assert_eq!(a.duration, Duration::from_secs(120));
        assert_eq!(a.faults, [faults::Kind::Kill, faults::Kind::Stop]);
        assert!(parse::<Args>(&["--members".into(), "2".into()]).is_err());
        assert!(parse::<Args>(&["--faults".into(), "meteor".into()]).is_err());
        assert_eq!(parse_duration("90").unwrap(), Duration::from_secs(90));
        assert!(parse_duration("5d").is_err());
    }

    /// The history of a live run of the `planted-reused-waiter-ids` build (seed 21, mem, 12
    /// clients, restarts only) in which the bug fired: a restarted member answered a new put
    /// with the revision of an entry its previous incarnation had proposed. A live run shows
    /// the bug only when a restart lands in a window of milliseconds (about 1 run in 4, see
    /// docs/reliability.md), so CI checks the checker on this recording and `make
    /// chaos-planted` runs the live one.
    #[test]
    fn a_recorded_run_of_the_planted_waiter_id_bug_is_caught() {
        let text = include_str!("../../tests/data/planted-reused-waiter-ids.history.txt");
        let history = checker::parse_history(text).unwrap();
        let v = checker::check(&history, CHECK_BUDGET);
        assert!(
            v.wrong_write_revisions > 0,
            "no write given another write's revision: {:?}",
            v.revisions
        );
    }
}
