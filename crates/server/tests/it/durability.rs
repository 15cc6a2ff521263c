//! Crashes and stops under a concurrent write load: every acknowledged write survives SIGKILL
//! (many rounds) and SIGTERM, on both engines.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use deadline::{Deadline, Layer};
use etcd_client::{Client, GetOptions, Txn, TxnOp};
use tokio::task::JoinHandle;

use crate::harness::{Kind, Server, REQUEST_TIMEOUT};

/// Writers putting single keys, each over its own keys.
const WRITERS: usize = 4;
/// Keys per writer; each is overwritten again and again.
const KEYS_PER_WRITER: usize = 16;
/// Pairs of keys written together by one txn writer.
const PAIRS: usize = 8;
/// Acknowledged writes to wait for before a kill (more in later crash rounds, so the kills
/// land at different points of the key cycle and of the snapshot cycle).
const ACKS_PER_ROUND: usize = 60;
/// Longest the writers may take to reach [`ACKS_PER_ROUND`].
const PROGRESS_LIMIT: Duration = Duration::from_secs(30);

/// What the clients know about one key.
#[derive(Debug, Default)]
struct Known {
    /// The last acknowledged value.
    acked: Option<String>,
    /// A write sent after it that got no answer: it may or may not have happened.
    in_flight: Option<String>,
}

/// Every key the clients wrote.
type Model = Arc<Mutex<BTreeMap<String, Known>>>;

fn sent(model: &Model, keys: &[&str], value: &str) {
    let mut model = model.lock().expect("model");
    for key in keys {
        model.entry(key.to_string()).or_default().in_flight = Some(value.to_string());
    }
}

fn acked(model: &Model, keys: &[&str], value: &str) {
    let mut model = model.lock().expect("model");
    for key in keys {
        let known = model.entry(key.to_string()).or_default();
        known.acked = Some(value.to_string());
        known.in_flight = None;
    }
}

/// Puts `w<w>/<n>` keys until the first error (the server is gone).
async fn put_writer(mut c: Client, w: usize, round: usize, model: Model, acks: Arc<AtomicUsize>) {
    for seq in 0usize.. {
        let key = format!("w{w}/{:02}", seq % KEYS_PER_WRITER);
        let value = format!("round{round}-seq{seq}");
        sent(&model, &[&key], &value);
        if c.put(key.as_str(), value.as_str(), None).await.is_err() {
            return;
        }
        acked(&model, &[&key], &value);
        acks.fetch_add(1, Ordering::SeqCst);
    }
}

/// Writes `pair/<n>/x` and `pair/<n>/y` to one value in one txn, until the first error.
async fn txn_writer(mut c: Client, round: usize, model: Model, acks: Arc<AtomicUsize>) {
    for seq in 0usize.. {
        let x = format!("pair/{}/x", seq % PAIRS);
        let y = format!("pair/{}/y", seq % PAIRS);
        let value = format!("round{round}-seq{seq}");
        sent(&model, &[&x, &y], &value);
        let txn = Txn::new().and_then([
            TxnOp::put(x.as_str(), value.as_str(), None),
            TxnOp::put(y.as_str(), value.as_str(), None),
        ]);
        if c.txn(txn).await.is_err() {
            return;
        }
        acked(&model, &[&x, &y], &value);
        acks.fetch_add(1, Ordering::SeqCst);
    }
}

fn start_writers(
    c: &Client,
    round: usize,
    model: &Model,
) -> (Vec<JoinHandle<()>>, Arc<AtomicUsize>) {
    let acks = Arc::new(AtomicUsize::new(0));
    let mut tasks: Vec<JoinHandle<()>> = (0..WRITERS)
        .map(|w| {
            tokio::spawn(put_writer(
                c.clone(),
                w,
                round,
                Arc::clone(model),
                Arc::clone(&acks),
            ))
        })
        .collect();
    tasks.push(tokio::spawn(txn_writer(
        c.clone(),
        round,
        Arc::clone(model),
        Arc::clone(&acks),
    )));
    (tasks, acks)
}

/// Waits (bounded) until the writers have `n` acknowledged writes between them.
async fn wait_for_acks(server: &Server, acks: &AtomicUsize, n: usize) {
    let reached = deadline::within(Layer::Api, Deadline::after(PROGRESS_LIMIT), async {
        let mut tick = tokio::time::interval(Duration::from_millis(2));
        while acks.load(Ordering::SeqCst) < n {
            tick.tick().await;
        }
    })
    .await;
    assert!(
        reached.is_ok(),
        "{:?}: only {} of {n} writes acknowledged within {PROGRESS_LIMIT:?}; log:\n{}",
        server.kind(),
        acks.load(Ordering::SeqCst),
        server.log_tail()
    );
}

/// Waits (bounded) for the writers to stop: each stops at its first error.
async fn join_writers(tasks: Vec<JoinHandle<()>>) {
    for task in tasks {
        deadline::within(Layer::Api, Deadline::after(REQUEST_TIMEOUT * 2), task)
            .await
            .expect("a writer did not stop after the server went away")
            .expect("a writer panicked");
    }
}

/// Every acknowledged write is there (or the write in flight after it), nothing else is, and
/// each txn pair is whole. Settles the model to what the server holds.
async fn verify(server: &Server, model: &Model, when: &str) {
    let mut c = server.client().await;
    let r = c
        .get("", Some(GetOptions::new().with_all_keys()))
        .await
        .unwrap_or_else(|e| panic!("{:?} {when}: reading everything: {e}", server.kind()));
    let actual: BTreeMap<String, String> = r
        .kvs()
        .iter()
        .map(|kv| {
            (
                String::from_utf8_lossy(kv.key()).into_owned(),
                String::from_utf8_lossy(kv.value()).into_owned(),
            )
        })
        .collect();
    let mut model = model.lock().expect("model");
    let mut wrong = Vec::new();
    for (key, known) in model.iter_mut() {
        let found = actual.get(key);
        let fine = match found {
            Some(v) => known.acked.as_ref() == Some(v) || known.in_flight.as_ref() == Some(v),
            None => known.acked.is_none(),
        };
        if fine {
            known.acked = found.cloned();
            known.in_flight = None;
        } else {
            wrong.push(format!(
                "  {key}: acknowledged {:?}, in flight {:?}, found {found:?}",
                known.acked, known.in_flight
            ));
        }
    }
    for key in actual.keys().filter(|k| !model.contains_key(*k)) {
        wrong.push(format!("  {key}: never written, found"));
    }
    for n in 0..PAIRS {
        let (x, y) = (
            actual.get(&format!("pair/{n}/x")),
            actual.get(&format!("pair/{n}/y")),
        );
        if x != y {
            wrong.push(format!(
                "  pair/{n}: a txn applied in part: x {x:?}, y {y:?}"
            ));
        }
    }
    assert!(
        wrong.is_empty(),
        "{:?} {when}: {} keys of {} are wrong:\n{}\nlog:\n{}",
        server.kind(),
        wrong.len(),
        model.len(),
        wrong.join("\n"),
        server.log_tail()
    );
}

async fn crash_rounds(kind: Kind, args: &[&str]) {
    const ROUNDS: usize = 12;
    let mut server = Server::start(kind, args);
    let model: Model = Arc::default();
    for round in 0..ROUNDS {
        let c = server.client().await;
        let (tasks, acks) = start_writers(&c, round, &model);
        wait_for_acks(&server, &acks, ACKS_PER_ROUND + 23 * round).await;
        // SIGKILL while the writers keep writing.
        tokio::task::block_in_place(|| server.kill());
        join_writers(tasks).await;
        drop(c);
        tokio::task::block_in_place(|| server.restart());
        verify(&server, &model, &format!("after SIGKILL {}", round + 1)).await;
    }
    let present = model
        .lock()
        .expect("model")
        .values()
        .filter(|k| k.acked.is_some())
        .count();
    assert!(
        present >= WRITERS + 2,
        "the checks above checked almost nothing"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_under_load_loses_no_acknowledged_write_redb() {
    crash_rounds(Kind::Redb, &[]).await;
}

/// The mem engine rebuilds from the Raft snapshot and log: take snapshots often.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_under_load_loses_no_acknowledged_write_mem() {
    crash_rounds(Kind::Mem, &["--snapshot-count", "50"]).await;
}

async fn graceful(kind: Kind) {
    let mut server = Server::start(kind, &[]);
    let model: Model = Arc::default();
    let c = server.client().await;
    let (tasks, acks) = start_writers(&c, 0, &model);
    wait_for_acks(&server, &acks, ACKS_PER_ROUND).await;
    let limit = Duration::from_secs(10);
    let status = tokio::task::block_in_place(|| server.terminate(limit));
    match status {
        Some(status) => assert!(
            status.success(),
            "{kind:?} exited with {status} on SIGTERM; log:\n{}",
            server.log_tail()
        ),
        None => panic!(
            "{kind:?} did not exit within {limit:?} of SIGTERM; log:\n{}",
            server.log_tail()
        ),
    }
    join_writers(tasks).await;
    drop(c);
    tokio::task::block_in_place(|| server.restart());
    verify(&server, &model, "after SIGTERM").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_exits_zero_and_keeps_every_write_redb() {
    graceful(Kind::Redb).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_exits_zero_and_keeps_every_write_mem() {
    graceful(Kind::Mem).await;
}

/// A member that lost the state its marker vouches for (the Raft log, or the engine's file)
/// refuses to start with an error naming what is missing, instead of bootstrapping a new,
/// empty cluster over the old one's name (issue 23).
#[tokio::test(flavor = "multi_thread")]
async fn a_member_missing_its_state_refuses_to_start() {
    let mut cases = vec![(Kind::Redb, "raft-log"), (Kind::Mem, "raft-log")];
    cases.push((Kind::Redb, "data.redb"));
    for (kind, lost) in cases {
        let mut server = Server::start(kind, &[]);
        let mut c = server.client().await;
        c.put("k", "v", None).await.expect("put");
        drop(c);
        server.kill();
        let path = server.data_dir().join("member").join(lost);
        // The Raft log is a directory of segment files; an engine's data is one file.
        let removed = if path.is_dir() {
            std::fs::remove_dir_all(&path)
        } else {
            std::fs::remove_file(&path)
        };
        removed.unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let log = server.restart_refused(Duration::from_secs(30));
        assert!(
            log.contains(lost) && log.contains("refusing to start"),
            "{kind:?} without {lost}: the error must name it; log:\n{log}"
        );
        assert!(
            !log.contains("bootstrapping a new cluster"),
            "{kind:?} without {lost} bootstrapped anyway; log:\n{log}"
        );
        // The refusal created nothing in its place, so the next start refuses too.
        assert!(
            !path.exists(),
            "{kind:?}: the refused start created {lost} again"
        );
    }
}
