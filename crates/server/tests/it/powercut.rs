//! Power cuts: members' data dirs on a filesystem that keeps only what was fsynced (file
//! bytes by an fsync of the file, names by an fsync of their directory), written to under
//! load, then every member cut at once and restarted. Every acknowledged write must be
//! there, revisions never go backwards, and a start either succeeds with all data or
//! refuses clearly (issue 23).
//!
//! A few rounds run in the test suite; `make powercut-rounds` runs many
//! (`METASTORE_POWERCUT_ROUNDS`).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use deadline::pause;
use etcd_client::{Client, ConnectOptions, GetOptions};
use powercut::PowerCut;
use testkit::{Cluster, ClusterOptions};

/// Rounds per test in the suite; `METASTORE_POWERCUT_ROUNDS` overrides it.
const DEFAULT_ROUNDS: usize = 3;
/// Acknowledged puts to wait for before each cut (the cut lands while writers still write).
const ACKS_PER_ROUND: usize = 40;
/// Writers, each putting its own keys through the members in turn.
const WRITERS: usize = 3;
/// Longest the cluster may take to acknowledge a round's puts, or to answer after a cut.
const LIMIT: Duration = Duration::from_secs(40);

fn rounds() -> usize {
    std::env::var("METASTORE_POWERCUT_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(DEFAULT_ROUNDS)
}

async fn connect(endpoint: &str) -> Option<Client> {
    Client::connect(
        [endpoint],
        Some(
            ConnectOptions::new()
                .with_timeout(Duration::from_secs(5))
                .with_connect_timeout(Duration::from_millis(500)),
        ),
    )
    .await
    .ok()
}

/// Acknowledged puts: key -> (value, revision).
type Acked = Arc<Mutex<BTreeMap<String, (String, i64)>>>;

/// Puts unique keys through the members in turn until `stop` (or the members are gone).
async fn writer(
    endpoints: Vec<String>,
    w: usize,
    round: usize,
    acked: Acked,
    stop: Arc<AtomicBool>,
) {
    let mut seq = 0usize;
    let mut clients: Vec<Option<Client>> = vec![None; endpoints.len()];
    while !stop.load(Ordering::SeqCst) {
        let i = (w + seq) % endpoints.len();
        if clients[i].is_none() {
            clients[i] = connect(&endpoints[i]).await;
        }
        let Some(c) = clients[i].as_mut() else {
            pause(Duration::from_millis(10)).await;
            seq += 1;
            continue;
        };
        let key = format!("r{round:03}/w{w}/{seq:05}");
        let value = format!("v{round}-{w}-{seq}");
        seq += 1;
        match c.put(key.as_str(), value.as_str(), None).await {
            Ok(r) => {
                let rev = r.header().map_or(0, |h| h.revision());
                acked.lock().expect("acked").insert(key, (value, rev));
            }
            Err(_) => {
                clients[i] = None;
                pause(Duration::from_millis(10)).await;
            }
        }
    }
}

/// Every key and value under `r`, linearizably, through the first member that answers;
/// with the revision it was read at.
async fn read_all(endpoints: &[String]) -> Result<(BTreeMap<String, String>, i64), String> {
    let started = Instant::now();
    let mut last = String::from("no member answered");
    while started.elapsed() < LIMIT {
        for e in endpoints {
            let Some(mut c) = connect(e).await else {
                continue;
            };
            match c.get("r", Some(GetOptions::new().with_prefix())).await {
                Ok(r) => {
                    let kvs = r
                        .kvs()
                        .iter()
                        .map(|kv| {
                            (
                                String::from_utf8_lossy(kv.key()).into_owned(),
                                String::from_utf8_lossy(kv.value()).into_owned(),
                            )
                        })
                        .collect();
                    return Ok((kvs, r.header().map_or(0, |h| h.revision())));
                }
                Err(err) => last = format!("{e}: {err}"),
            }
        }
        pause(Duration::from_millis(50)).await;
    }
    Err(format!("no read within {LIMIT:?}: {last}"))
}

async fn power_cut_rounds(members: usize, engine: &str) {
    let rounds = rounds();
    let mount = tempfile::Builder::new()
        .prefix("metastore-powercut-")
        .tempdir()
        .expect("temp dir");
    let mut power = PowerCut::mount(mount.path())
        .unwrap_or_else(|e| panic!("mounting the power-cut filesystem (FUSE: /dev/fuse and fuse3's fusermount3 are needed): {e}"));
    let mut cluster = Cluster::start_in(
        ClusterOptions {
            binary: env!("CARGO_BIN_EXE_metastore").into(),
            members,
            engine: engine.into(),
            // Frequent snapshots, so cuts land around snapshot files' renames and removals
            // and the log purges that follow them.
            extra_args: vec![
                "--request-timeout".into(),
                "3s".into(),
                "--snapshot-count".into(),
                "16".into(),
            ],
            proxy_peers: false,
        },
        power.path().to_path_buf(),
    )
    .unwrap_or_else(|e| panic!("starting {members} member(s) on the power-cut filesystem: {e}"));
    let endpoints = cluster.endpoints();
    let acked: Acked = Arc::default();
    let mut seen_revision = 0;
    let mut unsynced_at_cuts = (0, 0);
    for round in 0..rounds {
        let stop = Arc::new(AtomicBool::new(false));
        let before = acked.lock().expect("acked").len();
        let writers: Vec<_> = (0..WRITERS)
            .map(|w| {
                tokio::spawn(writer(
                    endpoints.clone(),
                    w,
                    round,
                    acked.clone(),
                    stop.clone(),
                ))
            })
            .collect();
        let started = Instant::now();
        while acked.lock().expect("acked").len() < before + ACKS_PER_ROUND {
            assert!(
                started.elapsed() < LIMIT,
                "round {round}: fewer than {ACKS_PER_ROUND} puts acknowledged in {LIMIT:?}; log:\n{}",
                cluster.log_tail(0)
            );
            pause(Duration::from_millis(10)).await;
        }
        // The cut: every member at once, while the writers still write.
        for i in 0..members {
            cluster.kill(i);
        }
        stop.store(true, Ordering::SeqCst);
        for w in writers {
            w.await.expect("writer");
        }
        let (files, dirs) = power.unsynced();
        unsynced_at_cuts.0 += files;
        unsynced_at_cuts.1 += dirs;
        power
            .cut()
            .unwrap_or_else(|e| panic!("round {round}: cutting the power: {e}"));
        for i in 0..members {
            cluster
                .respawn(i)
                .unwrap_or_else(|e| panic!("round {round}: {e}"));
        }
        for i in 0..members {
            if let Err(e) = cluster.wait_healthy(i) {
                // A refusal names what is missing; either way an acknowledged write is gone.
                panic!(
                    "round {round}: member {i} did not come back after the cut (refusing is \
                     the right answer to lost state, but no state may be lost): {e}"
                );
            }
        }
        let (found, revision) = read_all(&endpoints)
            .await
            .unwrap_or_else(|e| panic!("round {round}: {e}; log:\n{}", cluster.log_tail(0)));
        let acked_now = acked.lock().expect("acked").clone();
        let lost: Vec<String> = acked_now
            .iter()
            .filter(|(k, (v, _))| found.get(*k) != Some(v))
            .map(|(k, (v, rev))| {
                format!(
                    "{k}={v} (acknowledged at revision {rev}): read {:?}",
                    found.get(k)
                )
            })
            .collect();
        assert!(
            lost.is_empty(),
            "round {round}: {} of {} acknowledged puts lost after a power cut ({files} files \
             with unsynced bytes, {dirs} directories with unsynced names):\n  {}\nlog:\n{}",
            lost.len(),
            acked_now.len(),
            lost.iter()
                .take(20)
                .cloned()
                .collect::<Vec<_>>()
                .join("\n  "),
            cluster.log_tail(0)
        );
        let top = acked_now.values().map(|(_, rev)| *rev).max().unwrap_or(0);
        assert!(
            revision >= top && revision >= seen_revision,
            "round {round}: revision went backwards: read at {revision}, but {top} was \
             acknowledged and {seen_revision} read before"
        );
        seen_revision = revision;
    }
    let puts = acked.lock().expect("acked").len();
    eprintln!(
        "{members} member(s), {engine}: {rounds} power cuts, {puts} acknowledged puts checked, \
         0 lost; unsynced at the cuts: {} files' bytes, {} directories' names",
        unsynced_at_cuts.0, unsynced_at_cuts.1
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn power_cuts_under_a_single_member_lose_no_acknowledged_write() {
    power_cut_rounds(1, "redb").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn power_cuts_under_a_whole_cluster_lose_no_acknowledged_write() {
    power_cut_rounds(3, "redb").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn power_cuts_under_a_single_mem_member_lose_no_acknowledged_write() {
    // The mem engine keeps nothing itself: the Raft log and snapshots are all there is.
    power_cut_rounds(1, "mem").await;
}
