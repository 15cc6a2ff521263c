//! Leader transfer (MoveLeader) in three-member clusters of etcd 3.4 and of MetaStore, side by
//! side: the same steps under the same write load must answer the same way.

use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use etcd_client::{Client, ConnectOptions};
use testkit::{Cluster, ClusterOptions};

use crate::harness::{free_port, require_tool};
use deadline::pause;

/// Three etcd 3.4 processes on free ports, killed when dropped.
struct EtcdCluster {
    children: Vec<Child>,
    endpoints: Vec<String>,
    _dir: tempfile::TempDir,
}

impl EtcdCluster {
    fn start() -> EtcdCluster {
        let etcd = require_tool("etcd");
        let dir = tempfile::tempdir().expect("tempdir");
        let ports: Vec<(u16, u16)> = (0..3).map(|_| (free_port(), free_port())).collect();
        let initial: Vec<String> = ports
            .iter()
            .enumerate()
            .map(|(i, (_, peer))| format!("m{i}=http://127.0.0.1:{peer}"))
            .collect();
        let mut children = Vec::new();
        let mut endpoints = Vec::new();
        for (i, (client, peer)) in ports.iter().enumerate() {
            let log = std::fs::File::create(dir.path().join(format!("m{i}.log"))).expect("log");
            let child = Command::new(&etcd)
                .arg(format!("--name=m{i}"))
                .arg(format!(
                    "--data-dir={}",
                    dir.path().join(format!("m{i}")).display()
                ))
                .arg(format!("--listen-client-urls=http://127.0.0.1:{client}"))
                .arg(format!("--advertise-client-urls=http://127.0.0.1:{client}"))
                .arg(format!("--listen-peer-urls=http://127.0.0.1:{peer}"))
                .arg(format!(
                    "--initial-advertise-peer-urls=http://127.0.0.1:{peer}"
                ))
                .arg(format!("--initial-cluster={}", initial.join(",")))
                .arg("--initial-cluster-state=new")
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .expect("spawning etcd");
            children.push(child);
            endpoints.push(format!("http://127.0.0.1:{client}"));
        }
        EtcdCluster {
            children,
            endpoints,
            _dir: dir,
        }
    }
}

impl Drop for EtcdCluster {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

async fn client(endpoint: &str) -> Client {
    Client::connect(
        [endpoint],
        Some(
            ConnectOptions::new()
                .with_timeout(Duration::from_secs(10))
                .with_connect_timeout(Duration::from_secs(2)),
        ),
    )
    .await
    .unwrap_or_else(|e| panic!("connecting to {endpoint}: {e}"))
}

/// Each member's id and the leader it reports, once all three agree on one (within 20 s).
async fn ids_and_leader(clients: &mut [Client]) -> (Vec<u64>, u64) {
    let started = Instant::now();
    loop {
        let mut ids = Vec::new();
        let mut leaders = Vec::new();
        for c in clients.iter_mut() {
            if let Ok(s) = c.status().await {
                ids.push(s.header().map_or(0, |h| h.member_id()));
                leaders.push(s.leader());
            }
        }
        if ids.len() == clients.len() && leaders.iter().all(|l| *l != 0 && *l == leaders[0]) {
            return (ids, leaders[0]);
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "no agreed leader: {leaders:?}"
        );
        pause(Duration::from_millis(100)).await;
    }
}

/// What one side did: the answers that must match etcd's, and the measurements.
#[derive(Debug)]
struct Transfer {
    /// Error answers (code and message) of the requests etcd refuses.
    refusals: Vec<String>,
    /// Writes that failed during the whole run.
    failed: usize,
    /// Writes acknowledged during the whole run.
    acked: usize,
    /// How long MoveLeader took.
    took: Duration,
    /// MoveLeader to a frozen follower: its answer, whether the leader stayed, and the writes
    /// that failed and succeeded on the leader meanwhile.
    lagging: (String, bool, usize, usize),
}

/// Writes to `endpoint` until `stop`, counting (acknowledged, failed).
fn writer(
    mut c: Client,
    prefix: String,
    stop: Arc<AtomicBool>,
    acked: Arc<AtomicUsize>,
    failed: Arc<AtomicUsize>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut i = 0usize;
        while !stop.load(Ordering::Relaxed) {
            match c.put(format!("{prefix}/{i:06}"), "v", None).await {
                Ok(_) => acked.fetch_add(1, Ordering::Relaxed),
                Err(e) => {
                    eprintln!("a write failed: {e}");
                    failed.fetch_add(1, Ordering::Relaxed)
                }
            };
            i += 1;
        }
    })
}

/// Stops (`-STOP`) or resumes (`-CONT`) a process.
fn signal(pid: u32, sig: &str) {
    let status = Command::new("kill")
        .args([sig, &pid.to_string()])
        .status()
        .expect("running kill");
    assert!(status.success(), "kill {sig} {pid}");
}

/// The steps on one cluster; `Err` with MoveLeader's answer when the transfer under load
/// itself failed.
async fn transfer_under_load(endpoints: &[String], pids: &[u32]) -> Result<Transfer, String> {
    let mut clients = Vec::new();
    for e in endpoints {
        clients.push(client(e).await);
    }
    let (ids, leader) = ids_and_leader(&mut clients).await;
    let at = |id: u64| ids.iter().position(|i| *i == id).expect("a member id");
    let stop = Arc::new(AtomicBool::new(false));
    let (acked, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let mut writers = Vec::new();
    for (w, e) in endpoints.iter().enumerate() {
        let c = client(e).await;
        let (stop, acked, failed) = (stop.clone(), acked.clone(), failed.clone());
        writers.push(writer(c, format!("load/{w}"), stop, acked, failed));
    }
    pause(Duration::from_millis(2500)).await;
    let target = *ids.iter().find(|i| **i != leader).expect("a follower");
    let started = Instant::now();
    let moved = clients[at(leader)].move_leader(target).await;
    let took = started.elapsed();
    if let Err(e) = moved {
        stop.store(true, Ordering::Relaxed);
        for w in writers {
            w.await.expect("writer");
        }
        return Err(format!("moving the leader to {target:x}: {e}"));
    }
    let (_, now) = ids_and_leader(&mut clients).await;
    assert_eq!(now, target, "every member follows the transferee");
    pause(Duration::from_millis(1500)).await;
    stop.store(true, Ordering::Relaxed);
    for w in writers {
        w.await.expect("writer");
    }
    let show = |r: Result<etcd_client::MoveLeaderResponse, etcd_client::Error>| match r {
        Ok(_) => "ok".to_string(),
        Err(etcd_client::Error::GRpcStatus(s)) => format!("{:?}: {}", s.code(), s.message()),
        Err(e) => format!("other: {e}"),
    };
    let follower = *ids.iter().find(|i| **i != target).expect("a follower");
    let refusals = vec![
        // A member that is none.
        show(clients[at(target)].move_leader(0x1234).await),
        // A follower asked to move the leader.
        show(clients[at(follower)].move_leader(target).await),
        // The leader asked to hand over to itself.
        show(clients[at(target)].move_leader(target).await),
    ];
    // A target that cannot catch up (frozen): etcd waits until the client's deadline, the
    // leader stays, and writes to the leader go on meanwhile.
    let lagging = *ids.iter().find(|i| **i != target).expect("a follower");
    signal(pids[at(lagging)], "-STOP");
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, bad) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let load = writer(
        client(&endpoints[at(target)]).await,
        "lagging".into(),
        stop.clone(),
        ok.clone(),
        bad.clone(),
    );
    let mut short = Client::connect(
        [endpoints[at(target)].as_str()],
        Some(ConnectOptions::new().with_timeout(Duration::from_secs(3))),
    )
    .await
    .expect("connecting");
    // The client's own deadline ends it on both: whether the client's timer or the server's
    // answer to the expired deadline arrives first is a race, so both read the same here.
    let answer = match short.move_leader(lagging).await {
        Err(etcd_client::Error::GRpcStatus(s))
            if s.code() == tonic::Code::DeadlineExceeded
                || (s.code() == tonic::Code::Cancelled && s.message() == "Timeout expired") =>
        {
            "the client's deadline passed".to_string()
        }
        other => show(other),
    };
    stop.store(true, Ordering::Relaxed);
    load.await.expect("writer");
    signal(pids[at(lagging)], "-CONT");
    let (_, after) = ids_and_leader(&mut clients).await;
    Ok(Transfer {
        lagging: (
            answer,
            after == target,
            bad.load(Ordering::Relaxed),
            ok.load(Ordering::Relaxed),
        ),
        refusals,
        failed: failed.load(Ordering::Relaxed),
        acked: acked.load(Ordering::Relaxed),
        took,
    })
}

/// Leader transfer under write load on etcd 3.4 and on MetaStore: the new leader is the target
/// everywhere, within an election timeout (1 s on both), with no more failed writes than etcd
/// and etcd's answers to a bad target, a follower and the leader itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_transfer_under_load_as_etcd() {
    // etcd is the oracle for the answers, but its own transfer under load sometimes fails
    // ("leader transfer took too long", with "raft proposal dropped" for the writes meanwhile,
    // seen in CI): then it is asked again on a fresh cluster. Ours must succeed the first time.
    let mut etcd = None;
    for attempt in 1..=3 {
        let cluster = EtcdCluster::start();
        let pids: Vec<u32> = cluster.children.iter().map(Child::id).collect();
        match transfer_under_load(&cluster.endpoints, &pids).await {
            Ok(t) => {
                etcd = Some(t);
                break;
            }
            Err(e) => eprintln!("etcd 3.4, attempt {attempt}: {e}"),
        }
    }
    let etcd = etcd.expect("etcd 3.4 moved its leader in one of three attempts");
    eprintln!("etcd 3.4: {etcd:?}");
    let cluster = Cluster::start(ClusterOptions {
        binary: env!("CARGO_BIN_EXE_metastore").into(),
        members: 3,
        engine: "redb".into(),
        extra_args: vec![],
        proxy_peers: false,
    })
    .unwrap_or_else(|e| panic!("starting a cluster: {e}"));
    let pids: Vec<u32> = (0..3)
        .map(|i| cluster.member(i).pid().expect("a running member"))
        .collect();
    let ours = transfer_under_load(&cluster.endpoints(), &pids)
        .await
        .unwrap_or_else(|e| {
            let logs: Vec<String> = (0..3).map(|i| cluster.log(i)).collect();
            panic!("{e}\n{}", logs.join("\n"))
        });
    eprintln!("metastore: {ours:?}");
    assert_eq!(
        ours.refusals, etcd.refusals,
        "MetaStore (left), etcd (right)"
    );
    assert!(
        ours.failed <= etcd.failed,
        "{} writes failed during the transfer, etcd lost {}",
        ours.failed,
        etcd.failed
    );
    assert!(ours.acked > 0 && etcd.acked > 0);
    let (answer, stayed, failed, acked) = &ours.lagging;
    assert_eq!(answer, &etcd.lagging.0, "to a lagging target");
    // etcd's own leader usually stays too, but not always: under load its leader, which stops
    // taking proposals while it waits for the target, was seen losing its term (984 writes
    // failed, then another member led). So etcd's outcome is shown, not required.
    assert!(
        *stayed,
        "the leader stays when the target lags (etcd's stayed: {})",
        etcd.lagging.1
    );
    assert!(
        *failed <= etcd.lagging.2 && *acked > 0,
        "writes to the leader while it waited for a lagging target: {failed} failed, {acked} acknowledged"
    );
    assert!(
        ours.took < Duration::from_secs(1),
        "the transfer took {:?}, past the election timeout",
        ours.took
    );
}

/// Adds a version of a key no other member has, at revision 2, straight into a stopped
/// member's engine file: the divergence a bad disk or a bug would leave. The bytes follow the
/// store's layout 2 (mvcc's codec): a record is a put tag, sub revision, create revision,
/// version, lease, then the value; `Keys` maps key, `[0, 0]`, the inverted revision to the
/// record without its value; `Revisions` maps main and sub revision to the key's length, the
/// key and the record; `Meta` says layout 2 (the member was killed, so its own lazily
/// committed record of that may be lost). Replaying the log never touches this key.
fn plant_divergence(data_dir: &std::path::Path) {
    use mvcc::{Backend, Table, WriteBatch};
    let path = data_dir.join("member").join("data.redb");
    let backend = engine_redb::RedbBackend::open(&path, &engine_redb::Options::default())
        .unwrap_or_else(|e| panic!("opening {}: {e}", path.display()));
    let mut key = b"planted".to_vec();
    key.extend([0, 0]);
    key.extend((!2u64).to_be_bytes());
    let mut revision = 2u64.to_be_bytes().to_vec();
    revision.extend(7u64.to_be_bytes());
    let mut batch = WriteBatch::new();
    let record = [0, 7, 2, 1, 0, b'x'];
    batch.put(Table::Keys, key, record[..5].to_vec());
    let mut stored = vec![7];
    stored.extend_from_slice(b"planted");
    stored.extend_from_slice(&record);
    batch.put(Table::Revisions, revision, stored);
    batch.put(Table::Meta, b"layout".to_vec(), 2i64.to_be_bytes().to_vec());
    backend.write(batch).expect("planting");
    backend.flush().expect("flushing");
}

fn corrupt_check_cluster(flags: &[&str]) -> Cluster {
    Cluster::start(ClusterOptions {
        binary: env!("CARGO_BIN_EXE_metastore").into(),
        members: 3,
        engine: "redb".into(),
        extra_args: flags.iter().map(|s| s.to_string()).collect(),
        proxy_peers: false,
    })
    .unwrap_or_else(|e| panic!("starting a cluster: {e}"))
}

/// Writes some keys, then stops a follower, plants a divergence in its engine file and starts
/// it again; returns its index and member id.
async fn diverge_a_follower(cluster: &mut Cluster) -> (usize, u64) {
    let leader = cluster
        .wait_leader(Duration::from_secs(20))
        .expect("a leader");
    let victim = (leader + 1) % 3;
    let mut c = client(&cluster.member(leader).endpoint()).await;
    for i in 0..10 {
        c.put(format!("k{i}"), "v", None).await.expect("put");
    }
    let mut v = client(&cluster.member(victim).endpoint()).await;
    let id = v
        .status()
        .await
        .expect("status")
        .header()
        .expect("header")
        .member_id();
    // Every member has applied the writes before the victim stops.
    let started = Instant::now();
    while v
        .get(
            "k9",
            Some(etcd_client::GetOptions::new().with_serializable()),
        )
        .await
        .map_or(0, |g| g.count())
        == 0
    {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the follower never applied k9"
        );
        pause(Duration::from_millis(50)).await;
    }
    cluster.kill(victim);
    plant_divergence(&cluster.data_dir(victim));
    (victim, id)
}

/// etcd's periodic check: the leader finds the member whose hash differs and raises CORRUPT
/// for it through the log; writes then answer etcd's "corrupt cluster", reads still work.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_planted_divergence_raises_the_corrupt_alarm() {
    let mut cluster = corrupt_check_cluster(&["--experimental-corrupt-check-time=1s"]);
    let (victim, id) = diverge_a_follower(&mut cluster).await;
    cluster.restart(victim).expect("restarting the follower");
    let leader = cluster
        .wait_leader(Duration::from_secs(20))
        .expect("a leader");
    let mut c = client(&cluster.member(leader).endpoint()).await;
    let started = Instant::now();
    let alarms = loop {
        let listed: Vec<(u64, etcd_client::AlarmType)> = c
            .alarm(
                etcd_client::AlarmAction::Get,
                etcd_client::AlarmType::None,
                None,
            )
            .await
            .expect("alarm list")
            .alarms()
            .iter()
            .map(|m| (m.member_id(), m.alarm()))
            .collect();
        if !listed.is_empty() || started.elapsed() > Duration::from_secs(20) {
            break listed;
        }
        pause(Duration::from_millis(200)).await;
    };
    assert_eq!(alarms, vec![(id, etcd_client::AlarmType::Corrupt)]);
    let refused = c
        .put("after", "v", None)
        .await
        .expect_err("a write under CORRUPT");
    assert!(
        refused.to_string().contains("etcdserver: corrupt cluster"),
        "{refused}"
    );
    let read = c.get("k0", None).await.expect("reads still work");
    assert_eq!(read.count(), 1);
}

/// etcd's start-up check: the member whose data differs refuses to start, saying so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_planted_divergence_stops_a_member_at_start() {
    let mut cluster = corrupt_check_cluster(&["--experimental-initial-corrupt-check"]);
    let (victim, _) = diverge_a_follower(&mut cluster).await;
    cluster.respawn(victim).expect("respawning the follower");
    let refused = cluster
        .wait_healthy(victim)
        .expect_err("the member with planted data must not start");
    assert!(refused.contains("exited with"), "{refused}");
    let log = cluster.log(victim);
    assert!(
        log.contains("found data inconsistency with peers"),
        "{refused}"
    );
}

/// Leadership handed round the members again and again while every member takes writes: each
/// MoveLeader succeeds. It failed on main with "leader transfer took too long" when a batch the
/// leader had passed to Raft just before the pause was appended after the target was found up
/// to date: the leader's log was then longer than the target's and it refused its vote.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeated_transfers_under_load_all_succeed() {
    let cluster = Cluster::start(ClusterOptions {
        binary: env!("CARGO_BIN_EXE_metastore").into(),
        members: 3,
        engine: "redb".into(),
        extra_args: vec![],
        proxy_peers: false,
    })
    .unwrap_or_else(|e| panic!("starting a cluster: {e}"));
    let endpoints = cluster.endpoints();
    let mut clients = Vec::new();
    for e in &endpoints {
        clients.push(client(e).await);
    }
    let (ids, mut leader) = ids_and_leader(&mut clients).await;
    let at = |id: u64| ids.iter().position(|i| *i == id).expect("a member id");
    let stop = Arc::new(AtomicBool::new(false));
    let (acked, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let mut writers = Vec::new();
    // Several writers per member keep batches flowing into the leader's log at every moment.
    for w in 0..12 {
        let c = client(&endpoints[w % endpoints.len()]).await;
        let (stop, acked, failed) = (stop.clone(), acked.clone(), failed.clone());
        writers.push(writer(c, format!("load/{w}"), stop, acked, failed));
    }
    for round in 0..6 {
        let target = ids[(at(leader) + 1) % ids.len()];
        let moved = clients[at(leader)].move_leader(target).await;
        if let Err(e) = moved {
            let logs: Vec<String> = (0..3).map(|i| cluster.log(i)).collect();
            panic!(
                "round {round}: moving the leader to {target:x}: {e}\n{}",
                logs.join("\n")
            );
        }
        let (_, now) = ids_and_leader(&mut clients).await;
        assert_eq!(
            now, target,
            "round {round}: every member follows the transferee"
        );
        leader = now;
    }
    stop.store(true, Ordering::Relaxed);
    for w in writers {
        w.await.expect("writer");
    }
    assert!(
        acked.load(Ordering::Relaxed) > 0,
        "writes went on meanwhile"
    );
}
