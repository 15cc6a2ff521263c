//! Leases through the `etcd-client` crate and etcdctl: the API's answers beside etcd 3.4's,
//! expiry (keys deleted with their events within TTL plus a bounded slack), keep-alives, leases
//! across a restart (with checkpointed remaining TTLs), and the client recipes built on leases:
//! `etcdctl lock` and `etcdctl elect`.

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc as std_mpsc;
use std::time::{Duration, Instant};

use deadline::{Deadline, Layer};
use etcd_client::{
    Client, Compare, CompareOp, Error, EventType, GetOptions, LeaseGrantOptions,
    LeaseTimeToLiveOptions, PutOptions, Txn, TxnOp, WatchOptions,
};

use crate::harness::{require_tool, Kind, Server};
use deadline::pause;

/// Expiry is checked every 500 ms, and a revoke goes through Raft: a lease's keys go at most
/// this long after its TTL (etcd's slack is the same order).
const SLACK: Duration = Duration::from_millis(1_500);

fn code(e: Error) -> String {
    match e {
        Error::GRpcStatus(s) => format!("{:?}: {}", s.code(), s.message()),
        other => format!("not a gRPC status: {other}"),
    }
}

/// Awaits `fut` for at most 10 s; a hang is a failure naming `what`.
async fn bounded<T>(what: &str, fut: impl std::future::Future<Output = T>) -> T {
    match deadline::within(Layer::Api, Deadline::after(Duration::from_secs(10)), fut).await {
        Ok(v) => v,
        Err(_) => panic!("{what}: no answer within 10 s"),
    }
}

/// The script of lease calls whose answers must equal etcd's. Lease ids are chosen, so
/// the answers are comparable; remaining TTLs are compared in whole seconds with a margin.
async fn lease_script(c: &mut Client) -> Vec<String> {
    let mut out = Vec::new();
    let id = |id| Some(LeaseGrantOptions::new().with_id(id));
    let r = bounded("grant", c.lease_grant(30, id(1001)))
        .await
        .expect("grant");
    out.push(format!("grant 1001: id {} ttl {}", r.id(), r.ttl()));
    let again = bounded("grant again", c.lease_grant(30, id(1001))).await;
    out.push(format!(
        "grant 1001 again: {:?}",
        again.map(|_| ()).map_err(code)
    ));
    let r = bounded("grant", c.lease_grant(1, id(1002)))
        .await
        .expect("grant");
    out.push(format!(
        "grant 1002 ttl 1: ttl {} (raised to the minimum)",
        r.ttl()
    ));
    // Gone before the list of leases below, which would otherwise race its 2 s expiry.
    bounded("revoke", c.lease_revoke(1002))
        .await
        .expect("revoke 1002");
    let long = bounded("grant", c.lease_grant(9_000_000_001, id(1003))).await;
    out.push(format!(
        "grant too long: {:?}",
        long.map(|_| ()).map_err(code)
    ));
    let r = bounded("grant", c.lease_grant(30, None))
        .await
        .expect("grant");
    out.push(format!("generated id positive: {}", r.id() > 0));
    bounded("revoke", c.lease_revoke(r.id()))
        .await
        .expect("revoke generated");

    let with = |id| Some(PutOptions::new().with_lease(id));
    let rev0 = bounded("put", c.put("a", "1", with(1001)))
        .await
        .expect("put")
        .header()
        .expect("header")
        .revision();
    bounded("put", c.put("b", "1", with(1001)))
        .await
        .expect("put");
    bounded("put", c.put("c", "1", with(1001)))
        .await
        .expect("put");
    bounded("put", c.put("c", "2", None))
        .await
        .expect("put without a lease detaches");
    bounded(
        "put",
        c.put("b", "2", Some(PutOptions::new().with_ignore_lease())),
    )
    .await
    .expect("ignore_lease");
    let unknown = bounded("put", c.put("x", "1", with(777))).await;
    out.push(format!(
        "put with unknown lease: {:?}",
        unknown.map(|_| ()).map_err(code)
    ));
    let t = bounded(
        "time to live",
        c.lease_time_to_live(1001, Some(LeaseTimeToLiveOptions::new().with_keys())),
    )
    .await
    .expect("ttl");
    // etcd lists them from a Go map, in no fixed order.
    let mut keys: Vec<String> = t
        .keys()
        .iter()
        .map(|k| String::from_utf8_lossy(k).into_owned())
        .collect();
    keys.sort();
    out.push(format!(
        "time to live 1001: granted {} remaining in 25..=30: {} keys {keys:?}",
        t.granted_ttl(),
        (25..=30).contains(&t.ttl())
    ));
    let t = bounded("time to live", c.lease_time_to_live(555, None))
        .await
        .expect("ttl of unknown");
    out.push(format!(
        "time to live 555: ttl {} granted {}",
        t.ttl(),
        t.granted_ttl()
    ));
    let leases = bounded("leases", c.leases()).await.expect("leases");
    let mut ids: Vec<i64> = leases.leases().iter().map(|l| l.id()).collect();
    ids.sort_unstable();
    out.push(format!("leases: {ids:?}"));
    // A txn compares on the lease.
    let txn = Txn::new()
        .when([Compare::lease("a", CompareOp::Equal, 1001)])
        .and_then([TxnOp::put("t", "yes", None)]);
    let t = bounded("txn", c.txn(txn)).await.expect("txn");
    out.push(format!("txn lease == 1001: {}", t.succeeded()));
    // Keep-alive of a live lease answers its TTL (the client reads the first answer itself
    // and refuses a lease answered with TTL 0: an unknown one).
    let (mut keeper, mut answers) = bounded("keep-alive", c.lease_keep_alive(1001))
        .await
        .expect("keep-alive");
    out.push(format!("keep-alive 1001: id {}", keeper.id()));
    bounded("keep-alive", keeper.keep_alive())
        .await
        .expect("again");
    let a = bounded("keep-alive answer", answers.message())
        .await
        .expect("answer")
        .expect("one");
    out.push(format!(
        "keep-alive 1001 again: id {} ttl {}",
        a.id(),
        a.ttl()
    ));
    let unknown = bounded("keep-alive", c.lease_keep_alive(556)).await;
    out.push(format!(
        "keep-alive 556: {:?}",
        unknown.map(|_| ()).map_err(|e| e.to_string())
    ));
    // Revoke deletes the attached keys in one revision; revoking again is an error.
    let r = bounded("revoke", c.lease_revoke(1001))
        .await
        .expect("revoke");
    let rev = r.header().expect("header").revision();
    out.push(format!("revoke 1001: revision +{}", rev - rev0));
    let all = bounded("get", c.get("", Some(GetOptions::new().with_all_keys())))
        .await
        .expect("get");
    let left: Vec<String> = all
        .kvs()
        .iter()
        .map(|kv| {
            format!(
                "{}@{}",
                kv.key_str().unwrap_or("?"),
                kv.mod_revision() - rev0
            )
        })
        .collect();
    out.push(format!("left: {left:?}"));
    let again = bounded("revoke", c.lease_revoke(1001)).await;
    out.push(format!(
        "revoke 1001 again: {:?}",
        again.map(|_| ()).map_err(code)
    ));
    let unknown = bounded("revoke", c.lease_revoke(4242)).await;
    out.push(format!(
        "revoke 4242: {:?}",
        unknown.map(|_| ()).map_err(code)
    ));
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lease_api_answers_as_etcd() {
    let etcd = Server::start(Kind::Etcd, &[]);
    let expected = lease_script(&mut etcd.client().await).await;
    drop(etcd);
    for kind in [Kind::Redb, Kind::Mem] {
        let ours = Server::start(kind, &[]);
        let got = lease_script(&mut ours.client().await).await;
        assert_eq!(got, expected, "{kind:?} (left) against etcd 3.4 (right)");
    }
}

/// Expiry deletes every attached key, with delete events in one revision, after the TTL and
/// within the slack; keep-alives hold it off.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expiry_deletes_keys_after_the_ttl_and_keep_alives_extend_it() {
    let server = Server::start(Kind::Redb, &[]);
    let mut c = server.client().await;
    let ttl = 2;
    let expiring = c.lease_grant(ttl, None).await.expect("grant").id();
    let kept = c.lease_grant(ttl, None).await.expect("grant").id();
    let granted = Instant::now();
    for key in ["e/1", "e/2", "e/3"] {
        c.put(key, "v", Some(PutOptions::new().with_lease(expiring)))
            .await
            .expect("put");
    }
    c.put("k/1", "v", Some(PutOptions::new().with_lease(kept)))
        .await
        .expect("put");
    let mut events = c
        .watch("e/", Some(WatchOptions::new().with_prefix()))
        .await
        .expect("watch");
    let (mut keeper, mut answers) = c.lease_keep_alive(kept).await.expect("keep-alive");
    // Keep `kept` alive for three TTLs while `expiring` runs out.
    let mut deleted = BTreeSet::new();
    let mut revisions = BTreeSet::new();
    let mut gone_at = None;
    let until = granted + Duration::from_secs(3 * ttl as u64);
    while Instant::now() < until {
        keeper.keep_alive().await.expect("keep-alive");
        let a = answers.message().await.expect("answer").expect("one");
        assert_eq!(a.ttl(), ttl, "a keep-alive of a live lease answers its TTL");
        let step = Deadline::after(Duration::from_millis(400));
        while let Ok(Ok(Some(r))) = deadline::within(Layer::Api, step, events.message()).await {
            for e in r.events() {
                assert_eq!(e.event_type(), EventType::Delete);
                let kv = e.kv().expect("kv");
                deleted.insert(kv.key_str().expect("utf-8").to_string());
                revisions.insert(kv.mod_revision());
                gone_at.get_or_insert_with(|| granted.elapsed());
            }
        }
    }
    let gone_at = gone_at.expect("the expired lease's keys were deleted");
    assert_eq!(
        deleted,
        BTreeSet::from(["e/1".into(), "e/2".into(), "e/3".into()])
    );
    assert_eq!(revisions.len(), 1, "all in one revision: {revisions:?}");
    let ttl_d = Duration::from_secs(ttl as u64);
    assert!(gone_at >= ttl_d, "deleted before its TTL: {gone_at:?}");
    assert!(
        gone_at <= ttl_d + SLACK,
        "deleted {gone_at:?} after the grant (TTL {ttl_d:?})"
    );
    let t = c.lease_time_to_live(expiring, None).await.expect("ttl");
    assert_eq!(t.ttl(), -1, "an expired lease is gone");
    assert_eq!(
        c.get("k/1", None).await.expect("get").kvs().len(),
        1,
        "kept alive"
    );
    // Once keep-alives stop, it goes too.
    drop((keeper, answers));
    let stopped = Instant::now();
    while !c.get("k/1", None).await.expect("get").kvs().is_empty() {
        assert!(
            stopped.elapsed() < ttl_d + SLACK,
            "still there {:?} after the last keep-alive",
            stopped.elapsed()
        );
        pause(Duration::from_millis(50)).await;
    }
}

/// Leases survive a restart with their keys; a checkpointed lease resumes from its remaining
/// TTL rather than from its whole TTL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leases_survive_a_restart_with_their_checkpointed_ttl() {
    for kind in [Kind::Redb, Kind::Mem] {
        let mut server = Server::start(kind, &["--lease-checkpoint-interval", "1s"]);
        let mut c = server.client().await;
        let id = c.lease_grant(60, None).await.expect("grant").id();
        c.put("r/a", "v", Some(PutOptions::new().with_lease(id)))
            .await
            .expect("put");
        // Wait for a checkpoint to record less than the whole TTL.
        pause(Duration::from_millis(3_500)).await;
        drop(c);
        tokio::task::block_in_place(|| {
            server.kill();
            server.restart();
        });
        let mut c = server.client().await;
        let t = c
            .lease_time_to_live(id, Some(LeaseTimeToLiveOptions::new().with_keys()))
            .await
            .expect("ttl");
        assert_eq!(t.granted_ttl(), 60, "{kind:?}");
        assert_eq!(t.keys(), [b"r/a".to_vec()], "{kind:?}");
        // Checkpointed at about 57-58 s, plus one election timeout on taking over.
        assert!(
            (50..60).contains(&t.ttl()),
            "{kind:?}: remaining {} after a restart: the checkpoint was not used",
            t.ttl()
        );
        c.lease_revoke(id).await.expect("revoke after restart");
        assert!(c.get("r/a", None).await.expect("get").kvs().is_empty());
    }
}

/// A line-reading child process: `etcdctl lock` or `etcdctl elect`.
struct Contender {
    child: Child,
    lines: std_mpsc::Receiver<(Instant, String)>,
}

impl Contender {
    fn start(server: &Server, args: &[&str]) -> Contender {
        let mut child = Command::new(require_tool("etcdctl"))
            .env("ETCDCTL_API", "3")
            .arg(format!("--endpoints={}", server.endpoint()))
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawning etcdctl");
        let out = child.stdout.take().expect("stdout");
        let (tx, lines) = std_mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if tx.send((Instant::now(), line)).is_err() {
                    break;
                }
            }
        });
        Contender { child, lines }
    }

    /// The next line within `limit`.
    fn line(&self, limit: Duration) -> Option<(Instant, String)> {
        self.lines.recv_timeout(limit).ok()
    }
}

impl Drop for Contender {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `etcdctl lock`: two contenders never hold the lock together, and a holder that dies loses
/// it when its session's lease expires.
#[test]
fn etcdctl_lock_excludes_and_passes_on() {
    let server = Server::start(Kind::Redb, &[]);
    // Each holder prints, holds for a while, prints again.
    let hold = ["sh", "-c", "echo in; sleep 1; echo out"];
    let mut args = vec!["lock", "--ttl", "2", "l1", "--"];
    args.extend(hold);
    let a = Contender::start(&server, &args);
    let b = Contender::start(&server, &args);
    let mut spans = Vec::new();
    for c in [&a, &b] {
        let (t_in, l) = c.line(Duration::from_secs(20)).expect("a holder printed");
        assert_eq!(l, "in");
        let (t_out, l) = c.line(Duration::from_secs(20)).expect("a holder finished");
        assert_eq!(l, "out");
        spans.push((t_in, t_out));
    }
    spans.sort();
    assert!(
        spans[0].1 <= spans[1].0,
        "the two holders overlapped: {:?}",
        spans
    );
    // A holder killed while holding: the next one gets the lock once the session expires.
    let holder = Contender::start(&server, &["lock", "--ttl", "2", "l2"]);
    let (_, key) = holder.line(Duration::from_secs(20)).expect("the lock key");
    assert!(
        key.starts_with("l2/"),
        "etcdctl lock prints the key it holds: {key}"
    );
    let waiter = Contender::start(&server, &["lock", "--ttl", "2", "l2"]);
    assert!(
        waiter.line(Duration::from_millis(1_500)).is_none(),
        "the waiter got the lock while it was held"
    );
    let killed = Instant::now();
    drop(holder);
    let (got, key2) = waiter
        .line(Duration::from_secs(10))
        .expect("the waiter got the lock");
    assert_ne!(key, key2);
    let waited = got.duration_since(killed);
    assert!(
        waited <= Duration::from_secs(2) + SLACK + Duration::from_secs(1),
        "the lock passed on {waited:?} after its holder died (session TTL 2 s)"
    );
}

/// `etcdctl elect`: one leader at a time; when the leader dies, its session's lease expires
/// (etcdctl's sessions have a 60 s TTL) and the other contender is elected.
#[test]
fn etcdctl_elect_fails_over_when_the_leaders_lease_expires() {
    let server = Server::start(Kind::Redb, &[]);
    let first = Contender::start(&server, &["elect", "e1", "one"]);
    let (_, name) = first.line(Duration::from_secs(20)).expect("a leader");
    assert_eq!(name.split('/').next(), Some("e1"), "{name}");
    let (_, value) = first.line(Duration::from_secs(5)).expect("its proposal");
    assert_eq!(value, "one");
    let second = Contender::start(&server, &["elect", "e1", "two"]);
    let observer = Contender::start(&server, &["elect", "-l", "e1"]);
    let (_, _) = observer
        .line(Duration::from_secs(10))
        .expect("the observer sees a leader");
    let (_, seen) = observer.line(Duration::from_secs(5)).expect("its value");
    assert_eq!(seen, "one");
    assert!(
        second.line(Duration::from_secs(2)).is_none(),
        "two leaders at once"
    );
    // SIGKILL: no resignation, the lease must expire.
    let killed = Instant::now();
    drop(first);
    let (at, _) = second
        .line(Duration::from_secs(75))
        .expect("the second contender is elected");
    let (_, value) = second.line(Duration::from_secs(5)).expect("its proposal");
    assert_eq!(value, "two");
    let waited = at.duration_since(killed);
    assert!(
        waited >= Duration::from_secs(50)
            && waited <= Duration::from_secs(60) + SLACK + Duration::from_secs(2),
        "elected {waited:?} after the leader died (its lease had up to 60 s left)"
    );
    let (_, _) = observer
        .line(Duration::from_secs(5))
        .expect("the observer sees the new leader");
    let (_, seen) = observer.line(Duration::from_secs(5)).expect("its value");
    assert_eq!(seen, "two");
}
