//! etcd's Lock and Election gRPC services (`v3lockpb`, `v3electionpb`) through the
//! `etcd-client` crate, the same script against etcd 3.4 and MetaStore: holders exclude each
//! other, a waiter gets the lock when the holder unlocks or its lease expires, a waiter that
//! gives up leaves no key behind, and errors carry etcd's codes and texts.

use std::time::{Duration, Instant};

use deadline::{pause, Deadline, Layer};
use etcd_client::{Client, Error, GetOptions, LeaseGrantOptions, LockOptions};

use crate::harness::{Kind, Server};

fn code(e: Error) -> String {
    match e {
        Error::GRpcStatus(s) => format!("{:?}: {}", s.code(), s.message()),
        other => format!("not a gRPC status: {other}"),
    }
}

/// Awaits `fut` for at most `limit`: `None` if it did not finish (and it is dropped, which
/// cancels the call).
async fn within<T>(limit: Duration, fut: impl std::future::Future<Output = T>) -> Option<T> {
    deadline::within(Layer::Api, Deadline::after(limit), fut)
        .await
        .ok()
}

/// Awaits `fut` for at most 10 s; a hang is a failure naming `what`.
async fn bounded<T>(what: &str, fut: impl std::future::Future<Output = T>) -> T {
    match within(Duration::from_secs(10), fut).await {
        Some(v) => v,
        None => panic!("{what}: no answer within 10 s"),
    }
}

/// The keys under `prefix`, once the store holds exactly `want` of them (cleanup after a
/// cancelled call runs after the call ends), or what it holds after 5 s.
async fn keys_settled(c: &mut Client, prefix: &str, want: usize) -> Vec<String> {
    let start = Instant::now();
    loop {
        let r = bounded("get", c.get(prefix, Some(GetOptions::new().with_prefix())))
            .await
            .expect("get");
        let keys: Vec<String> = r
            .kvs()
            .iter()
            .map(|kv| String::from_utf8_lossy(kv.key()).into_owned())
            .collect();
        if keys.len() == want || start.elapsed() > Duration::from_secs(5) {
            return keys;
        }
        // Bounded: at most 5 s of reads, each answered at once.
        pause(Duration::from_millis(50)).await;
    }
}

async fn grant(c: &mut Client, id: i64, ttl: i64) {
    bounded(
        "grant",
        c.lease_grant(ttl, Some(LeaseGrantOptions::new().with_id(id))),
    )
    .await
    .expect("grant");
}

fn with_lease(id: i64) -> Option<LockOptions> {
    Some(LockOptions::new().with_lease(id))
}

/// The lock script; lease ids are chosen so that owner keys are comparable.
async fn lock_script(endpoint: &str) -> Vec<String> {
    let mut c = Client::connect([endpoint], None).await.expect("connect");
    let mut out = Vec::new();
    grant(&mut c, 0x7d1, 60).await;
    grant(&mut c, 0x7d2, 60).await;
    grant(&mut c, 0x7d3, 2).await;
    let first = bounded("lock", c.lock("mylock", with_lease(0x7d1)))
        .await
        .expect("lock");
    let first_key = String::from_utf8_lossy(first.key()).into_owned();
    out.push(format!("first holder: {first_key}"));
    // A second locker waits; when it gives up, its key goes.
    let gave_up = within(
        Duration::from_millis(700),
        c.lock("mylock", with_lease(0x7d2)),
    )
    .await;
    out.push(format!("second while held: finished={}", gave_up.is_some()));
    out.push(format!(
        "keys after it gave up: {:?}",
        keys_settled(&mut c, "mylock/", 1).await
    ));
    // It waits again, and gets the lock when the first unlocks, not before.
    let mut waiter = c.clone();
    let second = tokio::spawn(async move {
        let got = waiter.lock("mylock", with_lease(0x7d2)).await;
        (Instant::now(), got)
    });
    pause(Duration::from_millis(500)).await;
    out.push(format!(
        "second done before unlock: {}",
        second.is_finished()
    ));
    let unlocked = Instant::now();
    bounded("unlock", c.unlock(first_key.clone()))
        .await
        .expect("unlock");
    let (when, got) = bounded("second lock", second).await.expect("task");
    out.push(format!(
        "second after unlock: {}, after the unlock: {}",
        got.map(|r| String::from_utf8_lossy(r.key()).into_owned())
            .map_err(code)
            .unwrap_or_else(|e| e),
        when >= unlocked
    ));
    // A holder whose lease expires lets the next one in.
    let expiring = bounded("lock", c.lock("exp", with_lease(0x7d3)))
        .await
        .expect("lock");
    out.push(format!(
        "expiring holder: {}",
        String::from_utf8_lossy(expiring.key())
    ));
    let next = bounded("lock after expiry", c.lock("exp", with_lease(0x7d1))).await;
    out.push(format!(
        "after the holder's lease expired: {}",
        next.map(|r| String::from_utf8_lossy(r.key()).into_owned())
            .map_err(code)
            .unwrap_or_else(|e| e)
    ));
    // Errors.
    out.push(format!(
        "unlock without a key: {:?}",
        bounded("unlock", c.unlock(""))
            .await
            .map(|_| ())
            .map_err(code)
    ));
    out.push(format!(
        "unlock of a key that is not there: {:?}",
        bounded("unlock", c.unlock("nothing/here"))
            .await
            .map(|_| ())
            .map_err(code)
    ));
    out.push(format!(
        "lock under an unknown lease: {:?}",
        bounded("lock", c.lock("other", with_lease(0x9999)))
            .await
            .map(|_| ())
            .map_err(code)
    ));
    out.push(format!(
        "keys left under other/: {:?}",
        keys_settled(&mut c, "other/", 0).await
    ));
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lock_service_answers_as_etcd() {
    let etcd = Server::start(Kind::Etcd, &[]);
    let expected = lock_script(&etcd.endpoint()).await;
    drop(etcd);
    let ours = Server::start(Kind::Redb, &[]);
    let got = lock_script(&ours.endpoint()).await;
    assert_eq!(got, expected, "MetaStore (left) against etcd 3.4 (right)");
}

fn kv_text(r: &etcd_client::LeaderResponse) -> String {
    r.kv().map_or("no kv".into(), |kv| {
        format!(
            "{}={}",
            String::from_utf8_lossy(kv.key()),
            String::from_utf8_lossy(kv.value())
        )
    })
}

/// The next message of an Observe stream, as text.
async fn observed(stream: &mut etcd_client::ObserveStream) -> String {
    match bounded("observe", stream.message()).await {
        Ok(Some(r)) => kv_text(&r),
        Ok(None) => "stream ended".into(),
        Err(e) => code(e),
    }
}

/// The election script; lease ids are chosen so that candidate keys are comparable.
async fn election_script(endpoint: &str) -> Vec<String> {
    let mut c = Client::connect([endpoint], None).await.expect("connect");
    let mut out = Vec::new();
    grant(&mut c, 0xbb1, 60).await;
    grant(&mut c, 0xbb2, 60).await;
    let leader = |c: &mut Client| {
        let mut c = c.clone();
        async move {
            bounded("leader", c.leader("elec"))
                .await
                .map(|r| kv_text(&r))
                .map_err(code)
        }
    };
    out.push(format!("leader before any: {:?}", leader(&mut c).await));
    let first = bounded("campaign", c.campaign("elec", "v1", 0xbb1))
        .await
        .expect("campaign");
    let first_key = first.leader().expect("leader key").clone();
    out.push(format!(
        "first elected: {} lease {:x} name {}",
        String::from_utf8_lossy(first_key.key()),
        first_key.lease(),
        String::from_utf8_lossy(first_key.name())
    ));
    out.push(format!("leader: {:?}", leader(&mut c).await));
    let mut stream = bounded("observe", c.observe("elec"))
        .await
        .expect("observe");
    out.push(format!("observed: {}", observed(&mut stream).await));
    // A second candidate waits for the first to go.
    let mut other = c.clone();
    let second = tokio::spawn(async move { other.campaign("elec", "v2", 0xbb2).await });
    pause(Duration::from_millis(500)).await;
    out.push(format!(
        "second elected while first leads: {}",
        second.is_finished()
    ));
    let proclaim = |c: &mut Client, key: Option<etcd_client::LeaderKey>, value: &'static str| {
        let mut c = c.clone();
        async move {
            let options = key.map(|k| etcd_client::ProclaimOptions::new().with_leader(k));
            bounded("proclaim", c.proclaim(value, options))
                .await
                .map(|_| ())
                .map_err(code)
        }
    };
    out.push(format!(
        "leader proclaims: {:?}",
        proclaim(&mut c, Some(first_key.clone()), "v1b").await
    ));
    out.push(format!("observed: {}", observed(&mut stream).await));
    let forged = etcd_client::LeaderKey::new()
        .with_name("elec")
        .with_key(first_key.key())
        .with_rev(first_key.rev() + 1000)
        .with_lease(first_key.lease());
    out.push(format!(
        "a forged leader proclaims: {:?}",
        proclaim(&mut c, Some(forged), "x").await
    ));
    out.push(format!(
        "proclaim without a leader: {:?}",
        proclaim(&mut c, None, "x").await
    ));
    out.push(format!(
        "resign without a leader: {:?}",
        bounded("resign", c.resign(None))
            .await
            .map(|_| ())
            .map_err(code)
    ));
    let resign = |c: &mut Client, key: etcd_client::LeaderKey| {
        let mut c = c.clone();
        async move {
            let options = etcd_client::ResignOptions::new().with_leader(key);
            bounded("resign", c.resign(Some(options)))
                .await
                .map(|_| ())
                .map_err(code)
        }
    };
    out.push(format!(
        "first resigns: {:?}",
        resign(&mut c, first_key.clone()).await
    ));
    let second = bounded("second campaign", second).await.expect("task");
    out.push(format!(
        "second elected: {:?}",
        second
            .map(|r| r
                .leader()
                .map(|l| String::from_utf8_lossy(l.key()).into_owned()))
            .map_err(code)
    ));
    out.push(format!("observed: {}", observed(&mut stream).await));
    out.push(format!("leader: {:?}", leader(&mut c).await));
    out.push(format!(
        "the old leader resigns again: {:?}",
        resign(&mut c, first_key).await
    ));
    // A candidate that gives up leaves no key behind.
    let gave_up = within(Duration::from_millis(700), c.campaign("elec", "v3", 0xbb1)).await;
    out.push(format!(
        "third while second leads: finished={}",
        gave_up.is_some()
    ));
    out.push(format!(
        "keys after it gave up: {:?}",
        keys_settled(&mut c, "elec/", 1).await
    ));
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn election_service_answers_as_etcd() {
    let etcd = Server::start(Kind::Etcd, &[]);
    let expected = election_script(&etcd.endpoint()).await;
    drop(etcd);
    let ours = Server::start(Kind::Redb, &[]);
    let got = election_script(&ours.endpoint()).await;
    assert_eq!(got, expected, "MetaStore (left) against etcd 3.4 (right)");
}

/// Appends `line` to the shared holders' log (appends of one short line are atomic).
fn log_line(path: &std::path::Path, line: &str) {
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .open(path)
        .expect("holders' log");
    f.write_all(format!("{line}\n").as_bytes()).expect("append");
}

/// `etcdctl lock` (etcd's client recipe) and the Lock service use one key layout, so their
/// holders exclude each other: under contention, every "in" in the holders' log is followed
/// by the same holder's "out" before anyone else's "in".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcdctl_lock_and_the_lock_service_exclude_each_other() {
    let server = Server::start(Kind::Redb, &[]);
    let dir = tempfile::tempdir().expect("temp dir");
    let log = dir.path().join("holders");
    let mut c = Client::connect([server.endpoint()], None)
        .await
        .expect("connect");
    let mut children = Vec::new();
    for i in 0..2 {
        let script = format!(
            "echo 'in ctl{i}' >> {p}; sleep 0.2; echo 'out ctl{i}' >> {p}",
            p = log.display()
        );
        let child = std::process::Command::new(crate::harness::require_tool("etcdctl"))
            .env("ETCDCTL_API", "3")
            .arg(format!("--endpoints={}", server.endpoint()))
            .args(["lock", "--ttl", "5", "mx", "--", "sh", "-c", &script])
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("spawning etcdctl");
        children.push(child);
    }
    let mut tasks = Vec::new();
    for i in 0..3 {
        let lease = bounded("grant", c.lease_grant(10, None))
            .await
            .expect("grant")
            .id();
        let mut c = c.clone();
        let log = log.clone();
        tasks.push(tokio::spawn(async move {
            for round in 0..2 {
                let held = c.lock("mx", with_lease(lease)).await.expect("lock");
                log_line(&log, &format!("in svc{i}.{round}"));
                pause(Duration::from_millis(200)).await;
                log_line(&log, &format!("out svc{i}.{round}"));
                c.unlock(held.key()).await.expect("unlock");
            }
        }));
    }
    for task in tasks {
        match within(Duration::from_secs(30), task).await {
            Some(done) => done.expect("a service locker failed"),
            None => panic!("the service lockers did not finish within 30 s"),
        }
    }
    for mut child in children {
        let status = tokio::task::spawn_blocking(move || child.wait())
            .await
            .expect("wait task");
        assert!(status.is_ok_and(|s| s.success()), "etcdctl lock failed");
    }
    let text = std::fs::read_to_string(&log).expect("holders' log");
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(
        lines.len(),
        2 * (2 + 3 * 2),
        "every holder held once per round: {lines:?}"
    );
    let mut overlaps = 0;
    for pair in lines.chunks(2) {
        let who_in = pair[0].strip_prefix("in ");
        let who_out = pair[1].strip_prefix("out ");
        if who_in.is_none() || who_in != who_out {
            overlaps += 1;
        }
    }
    assert_eq!(overlaps, 0, "holders overlapped: {lines:?}");
}

/// The `etcd-client` crate's lock and election calls, through a follower of a 3-member
/// cluster whose leader is killed while a locker waits: the wait survives the failover, the
/// unlock passes the lock on, and an election works on the new leader.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lock_and_election_ride_through_a_killed_leader() {
    let mut cluster = testkit::Cluster::start(testkit::ClusterOptions {
        binary: env!("CARGO_BIN_EXE_metastore").into(),
        members: 3,
        engine: "redb".into(),
        extra_args: Vec::new(),
        proxy_peers: false,
    })
    .unwrap_or_else(|e| panic!("starting a cluster: {e}"));
    let leader = tokio::task::block_in_place(|| cluster.wait_leader(Duration::from_secs(15)))
        .expect("a leader");
    let follower = (leader + 1) % 3;
    let endpoint = cluster.endpoints()[follower].clone();
    let mut c = Client::connect([endpoint], None).await.expect("connect");
    let first_lease = bounded("grant", c.lease_grant(30, None))
        .await
        .expect("grant")
        .id();
    let second_lease = bounded("grant", c.lease_grant(30, None))
        .await
        .expect("grant")
        .id();
    let first = bounded("lock", c.lock("ha", with_lease(first_lease)))
        .await
        .expect("lock");
    let mut waiter = c.clone();
    let second = tokio::spawn(async move { waiter.lock("ha", with_lease(second_lease)).await });
    pause(Duration::from_millis(500)).await;
    assert!(!second.is_finished(), "the second locker got a held lock");
    cluster.kill(leader);
    let new_leader = tokio::task::block_in_place(|| cluster.wait_leader(Duration::from_secs(15)))
        .expect("a new leader");
    assert_ne!(new_leader, leader);
    assert!(
        !second.is_finished(),
        "the second locker got the lock in the failover"
    );
    bounded("unlock", c.unlock(first.key()))
        .await
        .expect("unlock after the failover");
    let got = bounded("second lock", second)
        .await
        .expect("task")
        .expect("the second locker gets the lock");
    assert_eq!(
        got.key(),
        format!("ha/{second_lease:x}").as_bytes(),
        "the second locker holds its own key"
    );
    let elected = bounded("campaign", c.campaign("ha-e", "v1", first_lease))
        .await
        .expect("campaign on the new leader");
    let leader_kv = bounded("leader", c.leader("ha-e")).await.expect("leader");
    assert_eq!(
        leader_kv.kv().map(|kv| kv.key()),
        elected.leader().map(|l| l.key()),
        "the elected candidate is the leader"
    );
}

/// A Lock and a Campaign that wait past the client's own deadline (`grpc-timeout`, as the Go
/// clients send it) end with an error when it passes, and their keys go; as in etcd 3.4.
async fn deadline_script(endpoint: &str) -> Vec<String> {
    use kvapi::pb::v3electionpb::election_client::ElectionClient;
    use kvapi::pb::v3electionpb::CampaignRequest;
    use kvapi::pb::v3lockpb::lock_client::LockClient;
    use kvapi::pb::v3lockpb::LockRequest;

    let mut c = Client::connect([endpoint], None).await.expect("connect");
    grant(&mut c, 0xcc1, 60).await;
    grant(&mut c, 0xcc2, 60).await;
    bounded("lock", c.lock("dl", with_lease(0xcc1)))
        .await
        .expect("lock");
    bounded("campaign", c.campaign("dle", "v", 0xcc1))
        .await
        .expect("campaign");
    let channel = tonic::transport::Endpoint::from_shared(endpoint.to_string())
        .expect("endpoint")
        .connect()
        .await
        .expect("connect");
    let mut out = Vec::new();
    // etcd 3.4 ends such a wait with Cancelled or, now and then, Unknown ("context deadline
    // exceeded"): which of its layers sees the expired context first is a race inside etcd
    // (its lock and election servers call the KV server through an in-process client). Both
    // mean "ended by the client's deadline", so both read the same here; any other answer,
    // or getting the lock, does not.
    let status = |r: Result<String, tonic::Status>| match r {
        Ok(v) => format!("answered {v}"),
        Err(s) if matches!(s.code(), tonic::Code::Cancelled | tonic::Code::Unknown) => {
            "ended by the deadline".to_string()
        }
        Err(s) => format!("{:?}", s.code()),
    };
    let mut req = tonic::Request::new(LockRequest {
        name: b"dl".to_vec(),
        lease: 0xcc2,
    });
    req.set_timeout(Duration::from_millis(600));
    let started = Instant::now();
    let got = bounded("lock", LockClient::new(channel.clone()).lock(req)).await;
    out.push(format!(
        "lock past its deadline: {}, within 3 s: {}",
        status(got.map(|r| String::from_utf8_lossy(&r.into_inner().key).into_owned())),
        started.elapsed() < Duration::from_secs(3)
    ));
    out.push(format!(
        "lock keys: {:?}",
        keys_settled(&mut c, "dl/", 1).await
    ));
    let mut req = tonic::Request::new(CampaignRequest {
        name: b"dle".to_vec(),
        lease: 0xcc2,
        value: b"w".to_vec(),
    });
    req.set_timeout(Duration::from_millis(600));
    let got = bounded("campaign", ElectionClient::new(channel).campaign(req)).await;
    out.push(format!(
        "campaign past its deadline: {}",
        status(got.map(|r| format!("{:?}", r.into_inner().leader)))
    ));
    out.push(format!(
        "candidate keys: {:?}",
        keys_settled(&mut c, "dle/", 1).await
    ));
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waits_end_at_the_clients_deadline_as_in_etcd() {
    let etcd = Server::start(Kind::Etcd, &[]);
    let expected = deadline_script(&etcd.endpoint()).await;
    drop(etcd);
    let ours = Server::start(Kind::Redb, &[]);
    let got = deadline_script(&ours.endpoint()).await;
    assert_eq!(got, expected, "MetaStore (left) against etcd 3.4 (right)");
}

/// Observe from before any candidate: it reports the first one elected, and, when that
/// leader's lease expires, the candidate that was waiting, which is then elected.
async fn expiry_script(endpoint: &str) -> Vec<String> {
    let mut c = Client::connect([endpoint], None).await.expect("connect");
    grant(&mut c, 0xdd1, 2).await;
    grant(&mut c, 0xdd2, 60).await;
    let mut out = Vec::new();
    // etcd sends an Observe stream's headers with its first message: the call itself waits.
    let mut observer = c.clone();
    let observing = tokio::spawn(async move {
        let mut stream = observer.observe("oe").await.expect("observe");
        let first = observed(&mut stream).await;
        let second = observed(&mut stream).await;
        (first, second)
    });
    pause(Duration::from_millis(300)).await;
    bounded("campaign", c.campaign("oe", "short", 0xdd1))
        .await
        .expect("campaign");
    let mut other = c.clone();
    let second = tokio::spawn(async move { other.campaign("oe", "long", 0xdd2).await });
    let (first, next) = bounded("observe", observing).await.expect("observer");
    out.push(format!("observed: {first}"));
    out.push(format!("observed after the lease expired: {next}"));
    let second = bounded("second campaign", second).await.expect("task");
    out.push(format!(
        "second elected: {:?}",
        second
            .map(|r| r
                .leader()
                .map(|l| String::from_utf8_lossy(l.key()).into_owned()))
            .map_err(code)
    ));
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_leader_is_followed_by_the_waiting_candidate_as_in_etcd() {
    let etcd = Server::start(Kind::Etcd, &[]);
    let expected = expiry_script(&etcd.endpoint()).await;
    drop(etcd);
    let ours = Server::start(Kind::Redb, &[]);
    let got = expiry_script(&ours.endpoint()).await;
    assert_eq!(got, expected, "MetaStore (left) against etcd 3.4 (right)");
}
