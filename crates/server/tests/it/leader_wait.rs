//! Riding through elections (issue 22): a request that finds no leader waits for one within
//! its deadline instead of failing with "no leader"; with etcd's require-leader metadata
//! (`hasleader`, clientv3's `WithRequireLeader`) a call is refused at once, and a watch on a
//! member cut off from the others is cancelled with "no leader" after three election timeouts.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use deadline::{Deadline, Layer};
use etcd_client::{Client, ConnectOptions, WatchOptions};
use testkit::{Cluster, ClusterOptions};

/// The members' election timeout (the default).
const ELECTION: Duration = Duration::from_secs(1);

fn start(proxy_peers: bool) -> Cluster {
    Cluster::start(ClusterOptions {
        binary: env!("CARGO_BIN_EXE_metastore").into(),
        members: 3,
        engine: "redb".into(),
        extra_args: Vec::new(),
        proxy_peers,
    })
    .unwrap_or_else(|e| panic!("starting a cluster: {e}"))
}

async fn client(endpoint: &str, timeout: Duration, require_leader: bool) -> Client {
    Client::connect(
        [endpoint],
        Some(
            ConnectOptions::new()
                .with_timeout(timeout)
                .with_connect_timeout(Duration::from_secs(2))
                .with_require_leader(require_leader),
        ),
    )
    .await
    .unwrap_or_else(|e| panic!("connecting to {endpoint}: {e}"))
}

async fn pause(d: Duration) {
    let _ = deadline::within(Layer::Api, Deadline::after(d), std::future::pending::<()>()).await;
}

/// What the writers saw: when each write succeeded, and every error.
#[derive(Default)]
struct Seen {
    ok: Vec<Instant>,
    errors: Vec<String>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_leader_costs_no_write_a_no_leader_error() {
    let mut cluster = start(false);
    let leader = cluster.leader().expect("a leader");
    let followers: Vec<String> = (0..3)
        .filter(|i| *i != leader)
        .map(|i| cluster.member(i).endpoint())
        .collect();
    let seen: Arc<Mutex<Seen>> = Arc::default();
    let stop_at = Arc::new(Mutex::new(None::<Instant>));
    let mut writers = Vec::new();
    for w in 0..8usize {
        let mut c = client(&followers[w % 2], Duration::from_secs(2), false).await;
        let (seen, stop_at) = (seen.clone(), stop_at.clone());
        writers.push(tokio::spawn(async move {
            let mut i = 0usize;
            loop {
                if stop_at
                    .lock()
                    .unwrap()
                    .is_some_and(|at| Instant::now() >= at)
                {
                    return;
                }
                let r = c.put(format!("w{w}/{i:06}"), "v", None).await;
                let mut s = seen.lock().unwrap();
                match r {
                    Ok(_) => s.ok.push(Instant::now()),
                    Err(e) => s.errors.push(e.to_string()),
                }
                i += 1;
            }
        }));
    }
    pause(Duration::from_secs(1)).await;
    assert!(
        !seen.lock().unwrap().ok.is_empty(),
        "no write before the kill"
    );
    cluster.kill(leader);
    let killed = Instant::now();
    let new_leader = tokio::task::block_in_place(|| cluster.wait_leader(Duration::from_secs(15)))
        .expect("a new leader");
    let elected = Instant::now();
    assert_ne!(new_leader, leader);
    *stop_at.lock().unwrap() = Some(Instant::now() + Duration::from_secs(3));
    for w in writers {
        w.await.unwrap();
    }
    let seen = seen.lock().unwrap();
    let no_leader: Vec<&String> = seen
        .errors
        .iter()
        .filter(|e| e.contains("no leader"))
        .collect();
    assert!(
        no_leader.is_empty(),
        "{} writes failed with no leader, e.g. {:?}",
        no_leader.len(),
        no_leader.first()
    );
    let resumed = seen
        .ok
        .iter()
        .find(|at| **at > killed)
        .expect("writes resumed after the kill");
    // `elected` is when the poll saw the new leader, at or after the election itself.
    assert!(
        resumed.saturating_duration_since(elected) <= ELECTION,
        "writes resumed {:?} after the new leader was seen",
        resumed.saturating_duration_since(elected)
    );
    let after = seen.ok.iter().filter(|at| **at > elected).count();
    assert!(after > 20, "only {after} writes after the new leader");
    eprintln!(
        "kill → leader seen {:?}, → first write {:?}; {} ok, {} errors {:?}",
        elected - killed,
        *resumed - killed,
        seen.ok.len(),
        seen.errors.len(),
        seen.errors.iter().take(3).collect::<Vec<_>>()
    );
}

/// Cuts member `m` off from the other two (peer traffic both ways) and waits until it knows
/// no leader, as a require-leader call tells.
async fn isolate(cluster: &Cluster, m: usize) {
    let net = cluster.net().expect("proxied peers");
    for other in (0..3).filter(|o| *o != m) {
        net.cut_both(m, other);
    }
    let mut probe = client(&cluster.member(m).endpoint(), Duration::from_secs(1), true).await;
    let started = Instant::now();
    loop {
        match probe.get("probe", None).await {
            Err(e) if e.to_string().contains("no leader") => return,
            _ => {}
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "the cut-off member still knows a leader"
        );
        pause(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_requiring_a_leader_is_refused_at_once_and_one_without_waits() {
    let cluster = start(true);
    let leader = cluster.leader().expect("a leader");
    let m = (leader + 1) % 3;
    let mut requiring = client(&cluster.member(m).endpoint(), Duration::from_secs(5), true).await;
    let mut plain = client(&cluster.member(m).endpoint(), Duration::from_secs(1), false).await;
    // Waits for the member to learn the leader if it has not yet.
    let mut patient = client(
        &cluster.member(m).endpoint(),
        Duration::from_secs(10),
        false,
    )
    .await;
    patient
        .put("before", "v", None)
        .await
        .expect("a put with a leader");
    isolate(&cluster, m).await;
    let started = Instant::now();
    let refused = requiring.put("k", "v", None).await;
    let took = started.elapsed();
    let e = refused.expect_err("a put requiring a leader on a member without one");
    assert!(e.to_string().contains("etcdserver: no leader"), "{e}");
    assert!(took < Duration::from_millis(500), "refused after {took:?}");
    // Without the metadata the request waits for a leader, within its deadline.
    let gave_up_before = cluster
        .metric(m, "metastore_leader_wait_gave_up_total")
        .unwrap_or(0.0);
    let started = Instant::now();
    let waited = plain.put("k", "v", None).await;
    let took = started.elapsed();
    let e = waited.expect_err("no leader can commit it");
    assert!(!e.to_string().contains("no leader"), "{e}");
    assert!(
        took >= Duration::from_millis(900),
        "answered after {took:?}, before its deadline"
    );
    // The client's timeout and the member's deadline are the same instant: the member counts
    // the wait that gave up as it notices, a moment after the client.
    let counted = Instant::now();
    loop {
        let gave_up = cluster
            .metric(m, "metastore_leader_wait_gave_up_total")
            .unwrap_or(0.0);
        if gave_up > gave_up_before {
            break;
        }
        assert!(
            counted.elapsed() < Duration::from_secs(5),
            "the wait that gave up was not counted: {gave_up_before} then {gave_up}"
        );
        pause(Duration::from_millis(50)).await;
    }
    // Healed, the member finds the leader again and the waiting kind succeeds.
    cluster.net().expect("proxied peers").heal();
    let mut plain = client(
        &cluster.member(m).endpoint(),
        Duration::from_secs(10),
        false,
    )
    .await;
    plain
        .put("after", "v", None)
        .await
        .expect("a put after healing");
    assert!(cluster
        .metric(m, "metastore_leader_wait_seconds_count")
        .is_some_and(|n| n >= 1.0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_requiring_a_leader_is_cancelled_on_a_cut_off_member() {
    let cluster = start(true);
    let leader = cluster.leader().expect("a leader");
    let m = (leader + 1) % 3;
    let endpoint = cluster.member(m).endpoint();
    let mut requiring = client(&endpoint, Duration::from_secs(60), true).await;
    let mut plain = client(&endpoint, Duration::from_secs(60), false).await;
    let mut required_stream = requiring
        .watch("w", Some(WatchOptions::new().with_prefix()))
        .await
        .expect("a watch requiring a leader");
    let mut plain_stream = plain
        .watch("w", Some(WatchOptions::new().with_prefix()))
        .await
        .expect("a plain watch");
    isolate(&cluster, m).await;
    let lost = Instant::now();
    // Cancelled after three election timeouts without a leader (counted from when the member
    // lost it, which `isolate` saw a little after).
    let ended = deadline::within(
        Layer::Api,
        Deadline::after(Duration::from_secs(15)),
        async {
            loop {
                match required_stream.message().await {
                    Ok(Some(_)) => continue,
                    other => return other.map(|_| ()),
                }
            }
        },
    )
    .await
    .expect("the watch requiring a leader was not cancelled");
    let took = lost.elapsed();
    let e = ended.expect_err("ended with an error");
    assert!(e.to_string().contains("etcdserver: no leader"), "{e}");
    assert!(
        took <= 3 * ELECTION + Duration::from_secs(2),
        "cancelled {took:?} after the member lost its leader"
    );
    // The plain watch is still open: it gets events once the member is back.
    cluster.net().expect("proxied peers").heal();
    let mut c = client(&endpoint, Duration::from_secs(10), false).await;
    c.put("w/after", "v", None)
        .await
        .expect("a put after healing");
    let event = deadline::within(
        Layer::Api,
        Deadline::after(Duration::from_secs(10)),
        async {
            loop {
                match plain_stream.message().await {
                    Ok(Some(r)) if r.events().is_empty() && !r.canceled() => continue,
                    other => return other,
                }
            }
        },
    )
    .await
    .expect("the plain watch got nothing")
    .expect("the plain watch ended");
    let event = event.expect("the plain watch ended");
    assert!(!event.canceled(), "{}", event.cancel_reason());
    assert_eq!(
        event.events()[0].kv().map(|kv| kv.key()),
        Some(&b"w/after"[..])
    );
}
