//! Clusters of real `metastore` processes with faults: a killed leader, a frozen follower, a
//! frozen leader, a lost quorum, a whole-cluster restart, a member added by snapshot,
//! promoted, and another removed. Every acknowledged write must be on every member at the
//! end, every request must end (success or error) within its budget plus a small slack.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use deadline::pause;
use etcd_client::{Client, ConnectOptions, GetOptions, MemberAddOptions};
use testkit::{Cluster, ClusterOptions};

/// The client-side bound of every request: longer than the server's budget, so that a
/// server that answered late shows as a measured overrun, not as a client timeout.
const CLIENT_LIMIT: Duration = Duration::from_secs(15);
/// What a request may take beyond the server's budget.
const SLACK: Duration = Duration::from_secs(1);

fn start(members: usize, extra: &[&str]) -> Cluster {
    let mut extra_args: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
    extra_args.extend(["--request-timeout".into(), "3s".into()]);
    Cluster::start(ClusterOptions {
        binary: env!("CARGO_BIN_EXE_metastore").into(),
        members,
        engine: "redb".into(),
        extra_args,
        proxy_peers: false,
    })
    .unwrap_or_else(|e| panic!("starting a cluster: {e}"))
}

async fn client(endpoint: &str) -> Client {
    Client::connect(
        [endpoint],
        Some(
            ConnectOptions::new()
                .with_timeout(CLIENT_LIMIT)
                .with_connect_timeout(Duration::from_secs(2)),
        ),
    )
    .await
    .unwrap_or_else(|e| panic!("connecting to {endpoint}: {e}"))
}

/// Acknowledged writes, by key (every key is written once).
type Acked = Arc<Mutex<BTreeMap<String, String>>>;

/// Puts unique keys through every endpoint in turn until `stop`, recording what was
/// acknowledged and the longest any request took.
struct Writer {
    stop: Arc<AtomicBool>,
    acked: Acked,
    ok: Arc<AtomicUsize>,
    longest: Arc<Mutex<Duration>>,
    task: tokio::task::JoinHandle<()>,
}

impl Writer {
    async fn start(endpoints: Vec<String>, prefix: &'static str) -> Writer {
        let stop = Arc::new(AtomicBool::new(false));
        let acked: Acked = Arc::default();
        let ok = Arc::new(AtomicUsize::new(0));
        let longest = Arc::new(Mutex::new(Duration::ZERO));
        let mut clients = Vec::new();
        for e in &endpoints {
            clients.push(client(e).await);
        }
        let task = {
            let (stop, acked, ok, longest) =
                (stop.clone(), acked.clone(), ok.clone(), longest.clone());
            tokio::spawn(async move {
                let mut i = 0usize;
                while !stop.load(Ordering::Relaxed) {
                    let c = &mut clients[i % endpoints.len()];
                    let key = format!("{prefix}{i:06}");
                    let value = format!("v{i}");
                    let started = Instant::now();
                    let r = c.put(key.clone(), value.clone(), None).await;
                    let took = started.elapsed();
                    {
                        let mut l = longest.lock().expect("longest");
                        *l = (*l).max(took);
                    }
                    if r.is_ok() {
                        acked.lock().expect("acked").insert(key, value);
                        ok.fetch_add(1, Ordering::Relaxed);
                    } else {
                        // A refusal can come back without the task ever yielding (no member
                        // left to connect to, once a failed test drops the cluster): without a
                        // pause this loop would hold its worker and the runtime's shutdown
                        // would wait for it forever.
                        pause(Duration::from_millis(10)).await;
                    }
                    i += 1;
                }
            })
        };
        Writer {
            stop,
            acked,
            ok,
            longest,
            task,
        }
    }

    fn ok(&self) -> usize {
        self.ok.load(Ordering::Relaxed)
    }

    async fn finish(self) -> (BTreeMap<String, String>, Duration) {
        self.stop.store(true, Ordering::Relaxed);
        self.task.await.expect("writer");
        let acked = self.acked.lock().expect("acked").clone();
        let longest = *self.longest.lock().expect("longest");
        (acked, longest)
    }
}

/// Waits until every running member is at the same revision, then checks that each holds
/// every acknowledged write and that their key-space hashes agree.
/// Puts `key`, trying again every 100 ms while the cluster refuses, and fails the test after
/// `tries` refusals.
async fn put_retrying(c: &mut Client, key: &str, value: &str, tries: u32) {
    let mut refused = 0;
    while let Err(e) = c.put(key, value, None).await {
        refused += 1;
        assert!(refused < tries, "put {key}: {e}");
        pause(Duration::from_millis(100)).await;
    }
}

async fn assert_converged(cluster: &Cluster, prefix: &str, acked: &BTreeMap<String, String>) {
    let started = Instant::now();
    let running: Vec<usize> = (0..cluster.members().len())
        .filter(|i| cluster.member(*i).is_running())
        .collect();
    // Equal revisions alone do not mean caught up: right after a restart every member can
    // stand at the same revision while the last committed entries wait for the new leader to
    // commit one of its own term. A linearizable read makes the leader apply all of them
    // first, so equal revisions afterwards include every acknowledged write.
    let mut c = client(&cluster.member(running[0]).endpoint()).await;
    while let Err(e) = c.get(prefix, None).await {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "no linearizable read: {e}"
        );
        pause(Duration::from_millis(100)).await;
    }
    loop {
        let revs: Vec<Option<f64>> = running
            .iter()
            .map(|i| cluster.metric(*i, "metastore_store_revision"))
            .collect();
        if revs.iter().all(|r| r.is_some() && *r == revs[0]) {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "members did not converge: revisions {revs:?}"
        );
        pause(Duration::from_millis(100)).await;
    }
    let mut hashes = Vec::new();
    for i in &running {
        let mut c = client(&cluster.member(*i).endpoint()).await;
        // Equal revisions can come before the last committed entries are applied (right after
        // a restart they wait for the new leader to commit one of its own term), so a member
        // gets a bounded while to show every acknowledged write.
        let (got, missing) = loop {
            let got = c
                .get(
                    prefix,
                    Some(GetOptions::new().with_prefix().with_serializable()),
                )
                .await
                .expect("range");
            let have: BTreeMap<String, String> = got
                .kvs()
                .iter()
                .map(|kv| {
                    (
                        kv.key_str().expect("utf-8").to_string(),
                        kv.value_str().expect("utf-8").to_string(),
                    )
                })
                .collect();
            let missing: Vec<String> = acked
                .keys()
                .filter(|k| have.get(*k) != acked.get(*k))
                .cloned()
                .collect();
            if missing.is_empty() || started.elapsed() > Duration::from_secs(30) {
                break (got, missing);
            }
            pause(Duration::from_millis(100)).await;
        };
        assert!(
            missing.is_empty(),
            "member {i} lacks {} of {} acknowledged writes, e.g. {:?}",
            missing.len(),
            acked.len(),
            missing.iter().take(5).collect::<Vec<_>>()
        );
        let rev = got.header().expect("header").revision();
        let h = c.hash_kv(rev).await.expect("hash_kv");
        hashes.push((rev, h.hash()));
    }
    assert!(
        hashes.windows(2).all(|w| w[0] == w[1]),
        "members disagree: (revision, hash) {hashes:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_leader_is_replaced_and_no_acknowledged_write_is_lost() {
    let mut cluster = start(3, &[]);
    let writer = Writer::start(cluster.endpoints(), "k/").await;
    pause(Duration::from_secs(2)).await;
    let leader = cluster.leader().expect("a leader");
    let before = writer.ok();
    assert!(before > 0, "no write succeeded before the fault");
    cluster.kill(leader);
    let killed = Instant::now();
    let new_leader = tokio::task::block_in_place(|| cluster.wait_leader(Duration::from_secs(15)))
        .expect("a new leader");
    assert_ne!(new_leader, leader);
    let elected = killed.elapsed();
    pause(Duration::from_secs(2)).await;
    let after = writer.ok();
    assert!(
        after > before + 10,
        "writes did not resume: {before} then {after}"
    );
    tokio::task::block_in_place(|| cluster.restart(leader)).expect("restart the old leader");
    pause(Duration::from_secs(1)).await;
    let (acked, longest) = writer.finish().await;
    assert!(
        longest <= Duration::from_secs(3) + SLACK,
        "a request took {longest:?} (budget 3 s); new leader after {elected:?}"
    );
    assert_converged(&cluster, "k/", &acked).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_follower_costs_nothing_and_catches_up() {
    let mut cluster = start(3, &[]);
    let leader = cluster.leader().expect("a leader");
    let follower = (leader + 1) % 3;
    let writer = Writer::start(vec![cluster.member(leader).endpoint()], "f/").await;
    pause(Duration::from_secs(1)).await;
    cluster.freeze(follower);
    let before = writer.ok();
    pause(Duration::from_secs(3)).await;
    let during = writer.ok() - before;
    assert!(
        during > 50,
        "only {during} writes in 3 s with a frozen follower"
    );
    cluster.thaw(follower);
    pause(Duration::from_secs(1)).await;
    let (acked, longest) = writer.finish().await;
    assert!(
        longest <= Duration::from_secs(3) + SLACK,
        "a request took {longest:?}"
    );
    assert_converged(&cluster, "f/", &acked).await;
}

/// A follower killed while the leader takes 40 MiB of 64 KiB values (snapshots every 100
/// entries, so the log it missed is purged) catches up once it runs again: the catch-up must
/// fit openraft 0.9's time for one message (an AppendEntries gets one heartbeat interval),
/// however large the entries waiting for it. It never did before: every append to it timed
/// out, its store stayed at revision 1.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_behind_large_values_catches_up() {
    const PUTS: usize = 640;
    const WRITERS: usize = 4;
    let mut cluster = start(3, &["--snapshot-count", "100"]);
    let leader = cluster.leader().expect("a leader");
    let follower = (leader + 1) % 3;
    cluster.kill(follower);
    let value = "x".repeat(64 << 10);
    let mut tasks = Vec::new();
    for w in 0..WRITERS {
        let mut c = client(&cluster.member(leader).endpoint()).await;
        let value = value.clone();
        tasks.push(tokio::spawn(async move {
            for i in (w..PUTS).step_by(WRITERS) {
                let key = format!("b/{i:04}");
                put_retrying(&mut c, &key, &value, 20).await;
            }
        }));
    }
    for t in tasks {
        t.await.expect("a writer");
    }
    let mut c = client(&cluster.member(leader).endpoint()).await;
    let last = format!("b/{:04}", PUTS - 1);
    let leader_rev = c
        .get(last.as_str(), None)
        .await
        .expect("a linearizable read on the leader")
        .header()
        .expect("header")
        .revision();
    tokio::task::block_in_place(|| cluster.restart(follower)).expect("restart the follower");
    let restarted = Instant::now();
    let mut f = client(&cluster.member(follower).endpoint()).await;
    let limit = Duration::from_secs(60);
    loop {
        let rev = cluster.metric(follower, "metastore_store_revision");
        let got = f
            .get(last.as_str(), Some(GetOptions::new().with_serializable()))
            .await
            .ok()
            .filter(|r| {
                r.kvs()
                    .first()
                    .is_some_and(|kv| kv.value() == value.as_bytes())
            });
        if got.is_some() && rev.is_some_and(|r| r >= leader_rev as f64) {
            break;
        }
        assert!(
            restarted.elapsed() < limit,
            "the follower has not caught up {limit:?} after its restart: its revision {rev:?}, \
             the leader's {leader_rev}; the leader's log:\n{}",
            cluster.log_tail(leader)
        );
        pause(Duration::from_millis(200)).await;
    }
    eprintln!(
        "the follower caught up {:?} after its restart",
        restarted.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_leader_gives_errors_not_hangs_until_a_new_one_leads() {
    let mut cluster = start(3, &[]);
    let leader = cluster.leader().expect("a leader");
    let others: Vec<String> = (0..3)
        .filter(|i| *i != leader)
        .map(|i| cluster.member(i).endpoint())
        .collect();
    let writer = Writer::start(others, "z/").await;
    pause(Duration::from_secs(1)).await;
    cluster.freeze(leader);
    let frozen = Instant::now();
    let before = writer.ok();
    // The others elect a new leader; writes through them succeed again.
    loop {
        if writer.ok() > before + 10 {
            break;
        }
        assert!(
            frozen.elapsed() < Duration::from_secs(20),
            "writes did not resume after the leader froze"
        );
        pause(Duration::from_millis(100)).await;
    }
    cluster.thaw(leader);
    pause(Duration::from_secs(2)).await;
    let (acked, longest) = writer.finish().await;
    assert!(
        longest <= Duration::from_secs(3) + SLACK,
        "a request took {longest:?} with the leader frozen (budget 3 s)"
    );
    assert_converged(&cluster, "z/", &acked).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_quorum_times_out_at_the_budget_and_leaves_nothing_behind() {
    let mut cluster = start(3, &[]);
    let leader = cluster.leader().expect("a leader");
    let mut c = client(&cluster.member(leader).endpoint()).await;
    c.put("warm", "up", None).await.expect("a put with quorum");
    pause(Duration::from_millis(500)).await;
    let baseline = cluster
        .metric(leader, "metastore_live_tasks")
        .expect("live tasks metric");
    for i in (0..3).filter(|i| *i != leader) {
        cluster.freeze(i);
    }
    let mut waited = Vec::new();
    for i in 0..5 {
        let started = Instant::now();
        let r = c.put(format!("lost{i}"), "v", None).await;
        let took = started.elapsed();
        let e = r.expect_err("a put without quorum cannot succeed");
        let text = e.to_string();
        assert!(
            text.contains("etcdserver: request timed out")
                || text.contains("etcdserver: no leader"),
            "{text}"
        );
        waited.push(took);
    }
    let started = Instant::now();
    let read = c.get("warm", None).await;
    waited.push(started.elapsed());
    assert!(
        read.is_err(),
        "a linearizable read without quorum cannot succeed"
    );
    let longest = waited.iter().max().copied().unwrap_or_default();
    assert!(
        longest <= Duration::from_secs(3) + SLACK,
        "waits without quorum: {waited:?} (budget 3 s)"
    );
    // Nothing stays behind: no pending proposal, no extra task.
    let settled = Instant::now();
    loop {
        let pending = cluster.metric(leader, "metastore_pending_operations");
        let tasks = cluster.metric(leader, "metastore_live_tasks");
        if pending == Some(0.0) && tasks.is_some_and(|t| t <= baseline) {
            break;
        }
        assert!(
            settled.elapsed() < Duration::from_secs(10),
            "after the timeouts: pending {pending:?}, tasks {tasks:?} (baseline {baseline})"
        );
        pause(Duration::from_millis(100)).await;
    }
    for i in 0..3 {
        cluster.thaw(i);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_whole_cluster_restart_keeps_every_acknowledged_write() {
    let mut cluster = start(3, &[]);
    let writer = Writer::start(cluster.endpoints(), "r/").await;
    pause(Duration::from_secs(2)).await;
    for i in 0..3 {
        cluster.kill(i);
    }
    let (acked, _) = writer.finish().await;
    assert!(!acked.is_empty());
    tokio::task::block_in_place(|| {
        for i in 0..3 {
            cluster.restart(i).expect("restart");
        }
        cluster
            .wait_leader(Duration::from_secs(15))
            .expect("a leader after the restart");
    });
    assert_converged(&cluster, "r/", &acked).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_member_joins_by_snapshot_is_promoted_and_another_is_removed() {
    // Snapshots every 200 entries (and the log purged behind them): a new member cannot get
    // the early entries and must install a snapshot.
    let mut cluster = start(3, &["--snapshot-count", "200"]);
    let leader = cluster.leader().expect("a leader");
    let mut c = client(&cluster.member(leader).endpoint()).await;
    let mut acked = BTreeMap::new();
    for i in 0..1_500 {
        let (k, v) = (format!("s/{i:05}"), format!("v{i}"));
        // A loaded machine may see an election meanwhile ("etcdserver: no leader"): the same
        // put again is harmless, and it must land within a bounded number of tries.
        let mut tries = 0;
        while let Err(e) = c.put(k.clone(), v.clone(), None).await {
            tries += 1;
            assert!(tries < 50, "put {k}: {e}");
            pause(Duration::from_millis(100)).await;
        }
        acked.insert(k, v);
    }
    let new = cluster.prepare_member();
    let added = c
        .member_add(
            [cluster.member(new).peer_url()],
            Some(MemberAddOptions::new().with_is_learner()),
        )
        .await
        .expect("member add --learner");
    let id = added.member().expect("the new member").id();
    // Promoting a learner that has not caught up is refused as etcd refuses it.
    let early = c.member_promote(id).await.expect_err("not in sync yet");
    assert!(
        early
            .to_string()
            .contains("etcdserver: can only promote a learner member which is in sync with leader"),
        "{early}"
    );
    tokio::task::block_in_place(|| cluster.start_prepared(new)).expect("start the new member");
    // It catches up (by snapshot: the log was purged) and can then be promoted.
    let started = Instant::now();
    loop {
        match c.member_promote(id).await {
            Ok(r) => {
                let m = r.members().iter().find(|m| m.id() == id).expect("listed");
                assert!(!m.is_learner());
                break;
            }
            Err(e) => assert!(
                started.elapsed() < Duration::from_secs(30) && e.to_string().contains("in sync"),
                "promote: {e}"
            ),
        }
        pause(Duration::from_millis(200)).await;
    }
    assert!(
        cluster.metric(new, "metastore_snapshots_installed_total") >= Some(1.0),
        "the new member caught up without a snapshot: {}",
        cluster.log_tail(new)
    );
    // Remove a follower that is not the new member.
    let gone = (0..3).find(|i| *i != leader).expect("a follower");
    let list = c.member_list().await.expect("member list");
    let gone_id = list
        .members()
        .iter()
        .find(|m| m.peer_urls().contains(&cluster.member(gone).peer_url()))
        .expect("listed")
        .id();
    let r = c.member_remove(gone_id).await.expect("member remove");
    assert_eq!(r.members().len(), 3);
    cluster.kill(gone);
    for i in 0..100 {
        let (k, v) = (format!("s/after{i:03}"), format!("v{i}"));
        c.put(k.clone(), v.clone(), None)
            .await
            .expect("put after the changes");
        acked.insert(k, v);
    }
    let list = c.member_list().await.expect("member list");
    assert!(list
        .members()
        .iter()
        .all(|m| !m.is_learner() && m.id() != gone_id));
    assert_converged(&cluster, "s/", &acked).await;
}

/// Every file under `dir` whose name ends in `.snap`: a copy of a store.
fn snapshot_files(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut found = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for entry in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() {
                todo.push(path);
            } else if path.extension().is_some_and(|e| e == "snap") {
                found.push(path);
            }
        }
    }
    found
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_killed_while_it_catches_up_by_snapshot_still_gets_every_key() {
    // Snapshots every 200 entries, the log purged behind them: a follower that missed 1,500
    // writes can catch up only by a snapshot.
    let mut cluster = start(3, &["--snapshot-count", "200"]);
    let leader = cluster.leader().expect("a leader");
    let behind = (leader + 1) % 3;
    cluster.kill(behind);
    let mut c = client(&cluster.member(leader).endpoint()).await;
    let mut acked = BTreeMap::new();
    // Short values: the snapshot is one chunk that must cross within openraft's default
    // install-snapshot timeout (200 ms) on a loaded machine.
    let value = "v".repeat(32);
    for i in 0..1_500 {
        let k = format!("c/{i:05}");
        put_retrying(&mut c, &k, &value, 50).await;
        acked.insert(k, value.clone());
    }
    // SIGKILL while it receives or installs the snapshot, at moments spread over the catch-up,
    // then the sender too while it sends.
    for delay in [100, 300, 600, 1_000, 1_500] {
        cluster.respawn(behind).expect("start the follower");
        pause(Duration::from_millis(delay)).await;
        cluster.kill(behind);
    }
    cluster.respawn(behind).expect("start the follower");
    pause(Duration::from_millis(300)).await;
    cluster.restart(leader).expect("restart the leader");
    // Whichever start got the snapshot through, the log alone cannot have brought it here.
    let started = Instant::now();
    while cluster.metric(behind, "metastore_store_revision") < Some(1501.0) {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the follower did not catch up: {:?}\n--- follower:\n{}\n--- others:\n{}\n{}",
            cluster.metric(behind, "metastore_store_revision"),
            cluster
                .log(behind)
                .lines()
                .filter(|l| !l.contains("to-Raft tx send error")
                    && (l.contains("ERROR") || l.contains("panic") || l.contains("snapshot")))
                .take(40)
                .collect::<Vec<_>>()
                .join("\n"),
            cluster.log_tail(leader),
            cluster.log_tail(3 - leader - behind),
        );
        pause(Duration::from_millis(200)).await;
    }
    assert_converged(&cluster, "c/", &acked).await;
    // The redb file is the snapshot: no member keeps a copy of its store beside it.
    for i in 0..3 {
        let copies = snapshot_files(&cluster.data_dir(i));
        assert!(copies.is_empty(), "member {i} keeps {copies:?}");
    }
}

/// Waits up to 15 s until member `i`'s stored versions satisfy `ok`; answers the last count
/// seen.
async fn versions_until(cluster: &Cluster, i: usize, ok: impl Fn(f64) -> bool) -> Option<f64> {
    let started = Instant::now();
    loop {
        let seen = cluster.metric(i, "metastore_mvcc_versions_stored");
        if seen.is_some_and(&ok) || started.elapsed() > Duration::from_secs(15) {
            return seen;
        }
        pause(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_member_removes_compacted_history() {
    const KEYS: usize = 5;
    const ROUNDS: usize = 60;
    let cluster = start(3, &[]);
    let leader = cluster.leader().expect("a leader");
    let follower = (leader + 1) % 3;
    let mut c = client(&cluster.member(leader).endpoint()).await;
    let mut last = 0;
    for round in 0..ROUNDS {
        for k in 0..KEYS {
            let put = c
                .put(format!("h/{k}"), format!("v{round}"), None)
                .await
                .expect("put");
            last = put.header().expect("header").revision();
        }
    }
    // Every member applied every version before the compaction.
    let mut history = Vec::new();
    for i in 0..3 {
        history.push(versions_until(&cluster, i, |v| v >= (KEYS * ROUNDS) as f64).await);
    }
    assert!(
        history
            .iter()
            .all(|v| v.is_some_and(|v| v >= (KEYS * ROUNDS) as f64)),
        "stored versions before compaction: {history:?}"
    );

    // Compaction through a follower: every member, not just the one asked, drops the history.
    let mut f = client(&cluster.member(follower).endpoint()).await;
    f.compact(last, None).await.expect("compact");
    let mut after = Vec::new();
    for i in 0..3 {
        after.push(versions_until(&cluster, i, |v| v <= KEYS as f64).await);
    }
    assert!(
        after.iter().all(|v| *v == Some(KEYS as f64)),
        "stored versions after compacting at {last} through member {follower} (leader \
         {leader}): {after:?}, before {history:?}"
    );

    // `physical` answers once the asked member has removed the history itself.
    for round in 0..10 {
        for k in 0..KEYS {
            let put = c
                .put(format!("h/{k}"), format!("w{round}"), None)
                .await
                .expect("put");
            last = put.header().expect("header").revision();
        }
    }
    let asked = (leader + 2) % 3;
    let mut p = client(&cluster.member(asked).endpoint()).await;
    p.compact(
        last,
        Some(etcd_client::CompactionOptions::new().with_physical()),
    )
    .await
    .expect("physical compact");
    assert_eq!(
        cluster.metric(asked, "metastore_mvcc_versions_stored"),
        Some(KEYS as f64),
        "member {asked} answered a physical compaction before removing the history"
    );
}

/// `etcdctl member add NAME --peer-urls=URL` (a voter) against `endpoint`.
fn etcdctl_member_add(endpoint: &str, name: &str, peer_url: &str) -> Result<String, String> {
    let etcdctl = crate::harness::require_tool("etcdctl");
    let out = std::process::Command::new(etcdctl)
        .env("ETCDCTL_API", "3")
        .args([
            &format!("--endpoints={endpoint}"),
            "--command-timeout=10s",
            "member",
            "add",
            name,
            &format!("--peer-urls={peer_url}"),
        ])
        .output()
        .map_err(|e| format!("running etcdctl: {e}"))?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if out.status.success() {
        Ok(text)
    } else {
        Err(text)
    }
}

/// Waits up to 30 s until `c` lists `n` members, every one a voter.
async fn until_voters(c: &mut Client, n: usize) {
    let started = Instant::now();
    loop {
        let list = c.member_list().await.map(|l| {
            l.members()
                .iter()
                .map(|m| (m.name().to_string(), m.is_learner()))
                .collect::<Vec<_>>()
        });
        if let Ok(members) = &list {
            if members.len() == n && members.iter().all(|(_, learner)| !learner) {
                return;
            }
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "not {n} voters after 30 s: {list:?}"
        );
        pause(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_single_member_grows_to_three_voters_with_etcdctl_while_writes_go_on() {
    let mut cluster = start(1, &[]);
    let first = cluster.member(0).endpoint();
    let mut c = client(&first).await;
    let writer = Writer::start(vec![first.clone()], "g/").await;
    for step in 2..=3 {
        let new = cluster.prepare_member();
        let name = cluster.member(new).name.clone();
        // etcd 3.4 takes a second voter on a one-member cluster; a third once the second runs.
        let printed = etcdctl_member_add(&first, &name, &cluster.member(new).peer_url())
            .unwrap_or_else(|e| panic!("member add {name} (to {step} members): {e}"));
        assert!(
            printed.contains("ETCD_INITIAL_CLUSTER_STATE=\"existing\""),
            "{printed}"
        );
        tokio::task::block_in_place(|| cluster.start_prepared(new))
            .unwrap_or_else(|e| panic!("starting {name}: {e}"));
        until_voters(&mut c, step).await;
        let before = writer.ok();
        let started = Instant::now();
        while writer.ok() < before + 50 {
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "writes stalled with {step} members"
            );
            pause(Duration::from_millis(100)).await;
        }
    }
    let (acked, _) = writer.finish().await;
    assert!(!acked.is_empty());
    assert_converged(&cluster, "g/", &acked).await;
}

/// A member added with `etcdctl member add` and started with `--initial-cluster-state
/// existing`, but without the cluster's `--initial-cluster-token`, takes the id and the cluster
/// id the cluster gave it (etcd's joining member asks the members `--initial-cluster` names),
/// becomes a voter and serves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_joining_without_the_cluster_token_takes_the_id_the_cluster_assigned() {
    let mut cluster = Cluster::unstarted(
        ClusterOptions {
            binary: env!("CARGO_BIN_EXE_metastore").into(),
            members: 1,
            engine: "redb".into(),
            extra_args: vec!["--request-timeout".into(), "3s".into()],
            proxy_peers: false,
        },
        false,
    )
    .expect("a cluster");
    cluster.set_member_args(
        0,
        vec!["--initial-cluster-token".into(), "not-the-default".into()],
    );
    tokio::task::block_in_place(|| cluster.start_all()).expect("start the first member");
    let first = cluster.member(0).endpoint();
    let mut c = client(&first).await;
    let cluster_id = c
        .put("j/0", "v", None)
        .await
        .expect("put")
        .header()
        .expect("a header")
        .cluster_id();
    let new = cluster.prepare_member();
    let name = cluster.member(new).name.clone();
    etcdctl_member_add(&first, &name, &cluster.member(new).peer_url())
        .unwrap_or_else(|e| panic!("member add {name}: {e}"));
    let assigned = c
        .member_list()
        .await
        .expect("member list")
        .members()
        .iter()
        .find(|m| m.name() == name || m.peer_urls().contains(&cluster.member(new).peer_url()))
        .expect("the added member is listed")
        .id();
    tokio::task::block_in_place(|| cluster.start_prepared(new))
        .unwrap_or_else(|e| panic!("starting {name}: {e}"));
    until_voters(&mut c, 2).await;
    let mut joined = client(&cluster.member(new).endpoint()).await;
    let header = joined
        .put("j/1", "v", None)
        .await
        .unwrap_or_else(|e| {
            panic!(
                "put through the joined member: {e}\n{}",
                cluster.log_tail(new)
            )
        })
        .header()
        .cloned()
        .expect("a header");
    assert_eq!(
        (header.member_id(), header.cluster_id()),
        (assigned, cluster_id),
        "the joined member answers as the member and cluster the cluster assigned"
    );
}

/// Members publishing their URLs at a bootstrap wait for each other's change on the leader
/// instead of having openraft refuse it: a refusal openraft logs as an error, two or three
/// of them at every bootstrap before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bootstrap_logs_no_refused_membership_change() {
    let cluster = start(3, &[]);
    let mut c = client(&cluster.endpoints()[0]).await;
    let started = Instant::now();
    loop {
        let list = c.member_list().await.map(|l| {
            l.members()
                .iter()
                .map(|m| (m.name().to_string(), m.client_urls().to_vec()))
                .collect::<Vec<_>>()
        });
        if let Ok(members) = &list {
            if members.len() == 3 && members.iter().all(|(_, urls)| !urls.is_empty()) {
                break;
            }
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "not every member published its URLs after 30 s: {list:?}"
        );
        pause(Duration::from_millis(200)).await;
    }
    for i in 0..3 {
        let log = cluster.log(i);
        assert!(
            !log.contains("undergoing a configuration change"),
            "member {i} logged a refused change:\n{log}"
        );
    }
}
