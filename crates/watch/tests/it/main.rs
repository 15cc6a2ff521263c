//! The watch hub over a real MVCC store: exact delivery, filters, atomic revisions, replay from
//! history joined seamlessly to the live stream, slow watchers, compaction, and cleanup.

#![allow(clippy::unwrap_used, clippy::expect_used)]

// The package is `metastore-watch`; the code knows the library by its short name.
extern crate metastore_watch as watch;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use deadline::{Deadline, Layer};
use engine_mem::MemBackend;
use mvcc::{
    Command, CompactRequest, DeleteRangeRequest, Event, EventKind, KeyRange, PutRequest, RequestOp,
    Store, TxnRequest,
};
use tokio::sync::mpsc;
use tokio::sync::mpsc::error::TryRecvError;
use watch::{Delivery, Hub, HubConfig, HubError, WatchError, WatchSpec};

type Db = Store<MemBackend>;

/// A small batch and a short interval, so catch-up takes many rounds quickly.
fn config() -> HubConfig {
    HubConfig {
        catch_up_batch: 7,
        catch_up_interval: Duration::from_millis(2),
        ..HubConfig::default()
    }
}

fn open() -> Db {
    Store::open(MemBackend::new()).unwrap()
}

fn hub_over(store: &Db) -> Hub {
    let hub = Hub::new(Arc::new(store.clone()), config()).unwrap();
    store.set_sink(Arc::new(hub.clone()));
    hub
}

fn apply(store: &Db, commands: &[Command]) -> i64 {
    let outcomes = store.apply(commands, None).unwrap();
    for o in &outcomes {
        assert!(o.result.is_ok(), "{:?}", o.result);
    }
    outcomes.last().map(|o| o.revision).unwrap()
}

fn put_cmd(key: &str, value: &str) -> Command {
    Command::Put(PutRequest {
        key: key.into(),
        value: value.into(),
        ..Default::default()
    })
}

fn delete_cmd(key: &str, range_end: &[u8]) -> Command {
    Command::DeleteRange(DeleteRangeRequest {
        key: key.into(),
        range_end: range_end.to_vec(),
        prev_kv: false,
    })
}

fn put(store: &Db, key: &str, value: &str) -> i64 {
    apply(store, &[put_cmd(key, value)])
}

fn delete(store: &Db, key: &str, range_end: &[u8]) -> i64 {
    apply(store, &[delete_cmd(key, range_end)])
}

fn compact(store: &Db, revision: i64) {
    apply(
        store,
        &[Command::Compact(CompactRequest {
            revision,
            physical: false,
        })],
    );
    store.finish_compaction().unwrap();
}

fn spec(range: KeyRange, tag: u64) -> WatchSpec {
    WatchSpec {
        tag,
        ..WatchSpec::new(range)
    }
}

fn key(k: &str) -> KeyRange {
    KeyRange::new(k.as_bytes(), b"")
}

/// What `spec` should see of the store's history from revision `from` on.
fn expected(store: &Db, spec: &WatchSpec, from: i64) -> Vec<Event> {
    store
        .events_since(from, usize::MAX)
        .unwrap()
        .into_iter()
        .filter(|e| spec.range.contains(&e.kv.key))
        .filter(|e| match e.kind {
            EventKind::Put => !spec.no_put,
            EventKind::Delete => !spec.no_delete,
        })
        .map(|mut e| {
            if !spec.prev_kv {
                e.prev_kv = None;
            }
            e
        })
        .collect()
}

/// The next delivery, waiting a bounded time.
async fn next(rx: &mut mpsc::Receiver<Delivery>) -> Option<Delivery> {
    deadline::within(
        Layer::WatchSend,
        Deadline::after(Duration::from_secs(20)),
        rx.recv(),
    )
    .await
    .expect("a delivery within the deadline")
}

/// Receives, per tag, until each tag in `want` has been sent events up to the last revision it
/// expects; fails on anything unexpected along the way.
async fn receive_all(
    rx: &mut mpsc::Receiver<Delivery>,
    want: &HashMap<u64, Vec<Event>>,
) -> HashMap<u64, Vec<Delivery>> {
    let last = |events: &[Event]| events.last().map_or(0, |e| e.kv.mod_revision);
    let mut got: HashMap<u64, Vec<Delivery>> = HashMap::new();
    let done = |got: &HashMap<u64, Vec<Delivery>>| {
        want.iter().all(|(tag, events)| {
            let seen = got
                .get(tag)
                .and_then(|d| d.last())
                .map_or(0, |d| last(&d.events));
            seen >= last(events)
        })
    };
    while !done(&got) {
        let d = next(rx).await.expect("stream open");
        assert!(want.contains_key(&d.tag), "unexpected tag {}", d.tag);
        assert_eq!(d.compacted, None);
        got.entry(d.tag).or_default().push(d);
    }
    for (tag, events) in want {
        check_stream(got.get(tag).map_or(&[][..], Vec::as_slice), events);
    }
    got
}

/// Deliveries hold whole revisions, in strictly increasing order, and together exactly
/// `expected`: no gap, no duplicate.
fn check_stream(deliveries: &[Delivery], expected: &[Event]) {
    let mut per_revision: HashMap<i64, usize> = HashMap::new();
    for e in expected {
        *per_revision.entry(e.kv.mod_revision).or_default() += 1;
    }
    let mut last = 0;
    for d in deliveries {
        assert!(!d.events.is_empty(), "an empty delivery");
        let mut in_delivery: HashMap<i64, usize> = HashMap::new();
        for e in &d.events {
            assert!(
                e.kv.mod_revision >= last,
                "out of order: {} after {last}",
                e.kv.mod_revision
            );
            last = e.kv.mod_revision;
            *in_delivery.entry(e.kv.mod_revision).or_default() += 1;
        }
        for (rev, n) in in_delivery {
            assert_eq!(
                per_revision.get(&rev),
                Some(&n),
                "revision {rev} split or foreign"
            );
        }
        last += 1;
    }
    let flat: Vec<&Event> = deliveries.iter().flat_map(|d| &d.events).collect();
    let want: Vec<&Event> = expected.iter().collect();
    assert_eq!(flat.len(), want.len(), "event count");
    assert_eq!(flat, want);
}

/// Waits, boundedly, until `done` holds; for state the hub reaches without any delivery.
async fn eventually(done: impl Fn() -> bool) {
    let mut tick = tokio::time::interval(Duration::from_millis(1));
    deadline::within(
        Layer::Api,
        Deadline::after(Duration::from_secs(20)),
        async {
            while !done() {
                tick.tick().await;
            }
        },
    )
    .await
    .expect("condition reached within the deadline");
}

async fn assert_quiet(rx: &mut mpsc::Receiver<Delivery>) {
    // Live deliveries are sent by publish itself, before `apply` returns; give the catch-up
    // task a chance to run too, then nothing may be waiting.
    tokio::task::yield_now().await;
    assert!(matches!(rx.try_recv(), Err(TryRecvError::Empty)));
}

#[tokio::test]
async fn single_key_prefix_from_key_and_interval_get_exactly_their_events() {
    let store = open();
    let hub = hub_over(&store);
    let (tx, mut rx) = mpsc::channel(256);
    let specs = [
        spec(key("a"), 1),
        spec(KeyRange::prefix(b"p/"), 2),
        spec(KeyRange::new(b"m", b"\0"), 3),
        spec(KeyRange::new(b"b", b"d"), 4),
        spec(KeyRange::prefix(b""), 5),
        spec(KeyRange::new(b"z", b"a"), 6),
    ];
    let _guards: Vec<_> = specs
        .iter()
        .map(|s| hub.watch(s.clone(), tx.clone()).unwrap())
        .collect();
    drop(tx);
    for k in ["a", "ab", "b", "c", "d", "p/", "p/x", "p0", "m", "zz", "a"] {
        put(&store, k, "v");
    }
    delete(&store, "a", b"");
    delete(&store, "p/", b"p0");
    delete(&store, "b", b"\0");
    let want: HashMap<u64, Vec<Event>> = specs
        .iter()
        .map(|s| (s.tag, expected(&store, s, 2)))
        .collect();
    assert!(want[&6].is_empty());
    assert_eq!(want[&1].len(), 3);
    let got = receive_all(&mut rx, &want).await;
    assert!(!got.contains_key(&6));
    assert_quiet(&mut rx).await;
}

#[tokio::test]
async fn filters_and_prev_kv() {
    let store = open();
    let hub = hub_over(&store);
    let (tx, mut rx) = mpsc::channel(64);
    let range = KeyRange::prefix(b"k");
    let specs = [
        WatchSpec {
            no_put: true,
            ..spec(range.clone(), 1)
        },
        WatchSpec {
            no_delete: true,
            ..spec(range.clone(), 2)
        },
        WatchSpec {
            prev_kv: true,
            ..spec(range.clone(), 3)
        },
        spec(range.clone(), 4),
        WatchSpec {
            no_put: true,
            no_delete: true,
            ..spec(range, 5)
        },
    ];
    let _guards: Vec<_> = specs
        .iter()
        .map(|s| hub.watch(s.clone(), tx.clone()).unwrap())
        .collect();
    put(&store, "k1", "a");
    put(&store, "k1", "b");
    put(&store, "k2", "c");
    delete(&store, "k1", b"");
    let want: HashMap<u64, Vec<Event>> = specs[..4]
        .iter()
        .map(|s| (s.tag, expected(&store, s, 2)))
        .collect();
    let got = receive_all(&mut rx, &want).await;
    let events = |tag| -> Vec<Event> { got[&tag].iter().flat_map(|d| d.events.clone()).collect() };
    assert!(events(1).iter().all(|e| e.kind == EventKind::Delete));
    assert_eq!(events(1).len(), 1);
    assert!(events(2).iter().all(|e| e.kind == EventKind::Put));
    assert_eq!(events(2).len(), 3);
    let with_prev = events(3);
    assert_eq!(with_prev[0].prev_kv, None);
    assert_eq!(with_prev[1].prev_kv.as_ref().unwrap().value, b"a");
    assert_eq!(with_prev[3].prev_kv.as_ref().unwrap().value, b"b");
    assert!(events(4).iter().all(|e| e.prev_kv.is_none()));
    assert_quiet(&mut rx).await;
}

#[tokio::test]
async fn a_revision_is_delivered_whole_and_one_apply_call_in_one_delivery() {
    let store = open();
    let hub = hub_over(&store);
    let (tx, mut rx) = mpsc::channel(64);
    let _g = hub.watch(spec(KeyRange::prefix(b"t/"), 9), tx).unwrap();
    put(&store, "t/0", "x");
    let first = next(&mut rx).await.unwrap();
    assert_eq!(first.events.len(), 1);
    let txn = Command::Txn(TxnRequest {
        compare: vec![],
        success: vec![
            RequestOp::Put(PutRequest {
                key: b"t/1".to_vec(),
                value: b"1".to_vec(),
                ..Default::default()
            }),
            RequestOp::Put(PutRequest {
                key: b"t/2".to_vec(),
                value: b"2".to_vec(),
                ..Default::default()
            }),
            RequestOp::Put(PutRequest {
                key: b"other".to_vec(),
                value: b"3".to_vec(),
                ..Default::default()
            }),
            RequestOp::DeleteRange(DeleteRangeRequest {
                key: b"t/0".to_vec(),
                range_end: vec![],
                prev_kv: false,
            }),
        ],
        failure: vec![],
    });
    let rev = apply(&store, &[txn, put_cmd("t/3", "x"), delete_cmd("t/", b"t0")]);
    let d = next(&mut rx).await.unwrap();
    assert_eq!(d.tag, 9);
    let revs: Vec<i64> = d.events.iter().map(|e| e.kv.mod_revision).collect();
    assert_eq!(revs, [3, 3, 3, 4, 5, 5, 5]);
    assert_eq!(rev, 5);
    assert_eq!(
        d.events,
        expected(&store, &spec(KeyRange::prefix(b"t/"), 9), 3)
    );
    assert_quiet(&mut rx).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_from_history_joins_the_live_stream_while_writes_continue() {
    let store = open();
    for i in 0..500 {
        put(&store, &format!("k{}", i % 37), &i.to_string());
    }
    let hub = hub_over(&store);
    let (tx, mut rx) = mpsc::channel(2);
    let specs = [
        WatchSpec {
            start_revision: 2,
            prev_kv: true,
            ..spec(KeyRange::prefix(b"k"), 1)
        },
        WatchSpec {
            start_revision: 250,
            ..spec(KeyRange::prefix(b"k1"), 2)
        },
        WatchSpec {
            start_revision: 2,
            ..spec(key("k5"), 3)
        },
    ];
    let _guards: Vec<_> = specs
        .iter()
        .map(|s| hub.watch(s.clone(), tx.clone()).unwrap())
        .collect();
    drop(tx);
    let writer = {
        let store = store.clone();
        tokio::task::spawn_blocking(move || {
            for i in 0..2000 {
                if i % 50 == 49 {
                    delete(&store, "k1", b"k2");
                } else {
                    put(&store, &format!("k{}", i % 41), &i.to_string());
                }
                if i % 100 == 0 {
                    std::thread::yield_now();
                }
            }
        })
    };
    // Read while the writer writes: catch-up and live publishing interleave.
    let mut got: HashMap<u64, Vec<Delivery>> = HashMap::new();
    for _ in 0..50 {
        let d = next(&mut rx).await.unwrap();
        got.entry(d.tag).or_default().push(d);
    }
    writer.await.unwrap();
    let want: HashMap<u64, Vec<Event>> = specs
        .iter()
        .map(|s| (s.tag, expected(&store, s, s.start_revision)))
        .collect();
    // Continue receiving what is left, then check each stream from its very start.
    let last = |events: &[Event]| events.last().map_or(0, |e| e.kv.mod_revision);
    loop {
        let done = want.iter().all(|(tag, events)| {
            got.get(tag)
                .and_then(|d| d.last())
                .is_some_and(|d| last(&d.events) >= last(events))
        });
        if done {
            break;
        }
        let d = next(&mut rx).await.unwrap();
        got.entry(d.tag).or_default().push(d);
    }
    for s in &specs {
        check_stream(&got[&s.tag], &want[&s.tag]);
    }
    // A watcher may have had its last event and still be a round away from the live point
    // (later revisions did not match it); it gets there without any further write.
    eventually(|| hub.stats().unsynced == 0).await;
    let rev = apply(&store, &[put_cmd("k5", "live"), put_cmd("k1x", "live")]);
    let mut live: Vec<(u64, Vec<i64>)> = Vec::new();
    for _ in 0..3 {
        let d = next(&mut rx).await.unwrap();
        live.push((d.tag, d.events.iter().map(|e| e.kv.mod_revision).collect()));
    }
    live.sort();
    assert_eq!(
        live,
        [(1, vec![rev - 1, rev]), (2, vec![rev]), (3, vec![rev - 1])]
    );
    assert!(rx.try_recv().is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_never_blocks_apply_and_its_watcher_catches_up_exactly() {
    let store = open();
    let hub = Hub::new(
        Arc::new(store.clone()),
        HubConfig {
            catch_up_batch: 1000,
            catch_up_interval: Duration::from_millis(2),
            ..HubConfig::default()
        },
    )
    .unwrap();
    store.set_sink(Arc::new(hub.clone()));
    let range = KeyRange::prefix(b"");
    let (slow_tx, mut slow_rx) = mpsc::channel(1);
    let _slow = hub.watch(spec(range.clone(), 1), slow_tx).unwrap();
    let (fast_tx, mut fast_rx) = mpsc::channel(64);
    let _fast = hub.watch(spec(range.clone(), 2), fast_tx).unwrap();
    let fast_reader = tokio::spawn(async move {
        let mut all = Vec::new();
        while let Some(d) = next(&mut fast_rx).await {
            let done = d.events.last().unwrap().kv.mod_revision >= 10_001;
            all.push(d);
            if done {
                break;
            }
        }
        all
    });
    for i in 0..10_000 {
        put(&store, &format!("key{}", i % 100), &i.to_string());
    }
    assert_eq!(store.current_revision(), 10_001);
    let want = expected(&store, &spec(range.clone(), 0), 2);
    check_stream(&fast_reader.await.unwrap(), &want);
    // The slow watcher took one delivery, then fell back to catch-up, holding nothing up.
    assert_eq!(hub.stats().unsynced, 1);
    let mut slow = Vec::new();
    while slow
        .last()
        .is_none_or(|d: &Delivery| d.events.last().unwrap().kv.mod_revision < 10_001)
    {
        slow.push(next(&mut slow_rx).await.unwrap());
    }
    check_stream(&slow, &want);
    assert_eq!(hub.stats().unsynced, 0);
    let rev = put(&store, "after", "x");
    let d = next(&mut slow_rx).await.unwrap();
    assert_eq!(d.events.len(), 1);
    assert_eq!(d.events[0].kv.mod_revision, rev);
}

#[tokio::test]
async fn a_compacted_start_revision_cancels_with_the_compaction_point() {
    let store = open();
    for i in 0..10 {
        put(&store, "k", &i.to_string());
    }
    delete(&store, "k", b"");
    put(&store, "k", "again");
    compact(&store, 6);
    let hub = hub_over(&store);

    let (tx, mut rx) = mpsc::channel(4);
    let guard = hub
        .watch(
            WatchSpec {
                start_revision: 3,
                ..spec(key("k"), 7)
            },
            tx,
        )
        .unwrap();
    let d = next(&mut rx).await.unwrap();
    assert_eq!(
        d,
        Delivery {
            tag: 7,
            events: vec![],
            compacted: Some(6),
            charge: watch::Charge::default(),
        }
    );
    // The watcher is gone, and with it the only sender.
    assert_eq!(next(&mut rx).await, None);
    assert_eq!(hub.stats().watchers, 0);
    drop(guard);

    // At the compaction point itself, history is still there.
    let (tx, mut rx) = mpsc::channel(4);
    let s = WatchSpec {
        start_revision: 6,
        ..spec(key("k"), 8)
    };
    let _g = hub.watch(s.clone(), tx).unwrap();
    let want = HashMap::from([(8, expected(&store, &s, 6))]);
    assert_eq!(want[&8].first().unwrap().kv.mod_revision, 6);
    receive_all(&mut rx, &want).await;
}

#[tokio::test]
async fn compaction_past_a_lagging_victim_cancels_it() {
    let store = open();
    let hub = hub_over(&store);
    let (tx, mut rx) = mpsc::channel(1);
    let _g = hub.watch(spec(KeyRange::prefix(b""), 5), tx).unwrap();
    for i in 0..100 {
        put(&store, &format!("k{}", i % 3), "v");
    }
    assert_eq!(hub.stats().unsynced, 1);
    compact(&store, 50);
    let first = next(&mut rx).await.unwrap();
    assert_eq!(first.events.len(), 1);
    assert_eq!(first.events[0].kv.mod_revision, 2);
    let cancel = next(&mut rx).await.unwrap();
    assert_eq!(cancel.compacted, Some(50));
    assert!(cancel.events.is_empty());
    assert_eq!(next(&mut rx).await, None);
    assert_eq!(hub.stats().watchers, 0);
}

#[tokio::test]
async fn a_future_start_revision_waits_for_it() {
    let store = open();
    let hub = hub_over(&store);
    let (tx, mut rx) = mpsc::channel(16);
    let s = WatchSpec {
        start_revision: 5,
        ..spec(key("k"), 1)
    };
    let g = hub.watch(s.clone(), tx).unwrap();
    assert_eq!(g.start_revision(), 5);
    assert_eq!(hub.stats().unsynced, 0);
    for i in 0..6 {
        put(&store, "k", &i.to_string());
    }
    let want = HashMap::from([(1, expected(&store, &s, 5))]);
    assert_eq!(want[&1].len(), 3);
    receive_all(&mut rx, &want).await;
    assert_quiet(&mut rx).await;
}

#[tokio::test]
async fn dropping_the_guard_removes_the_watcher() {
    let store = open();
    let hub = hub_over(&store);
    let (tx, mut rx) = mpsc::channel(16);
    let guard = hub.watch(spec(key("k"), 1), tx.clone()).unwrap();
    let other = hub
        .watch(
            WatchSpec {
                start_revision: 1,
                ..spec(key("j"), 2)
            },
            tx,
        )
        .unwrap();
    assert_ne!(guard.id(), other.id());
    assert_eq!(hub.stats().watchers, 2);
    drop(guard);
    drop(other);
    assert_eq!(hub.stats().watchers, 0);
    assert_eq!(hub.stats().unsynced, 0);
    put(&store, "k", "v");
    put(&store, "j", "v");
    assert!(matches!(rx.try_recv(), Err(TryRecvError::Disconnected)));
}

#[tokio::test]
async fn a_hundred_thousand_single_key_watchers_one_put_one_delivery() {
    let store = open();
    let hub = hub_over(&store);
    let (tx, mut rx) = mpsc::channel(8);
    let guards: Vec<_> = (0..100_000u64)
        .map(|i| {
            hub.watch(spec(key(&format!("key/{i}")), i), tx.clone())
                .unwrap()
        })
        .collect();
    assert_eq!(hub.stats().watchers, 100_000);
    let rev = put(&store, "key/4242", "v");
    let d = next(&mut rx).await.unwrap();
    assert_eq!(d.tag, 4242);
    assert_eq!(d.events.len(), 1);
    assert_eq!(d.events[0].kv.mod_revision, rev);
    put(&store, "key/nobody", "v");
    assert_quiet(&mut rx).await;
    drop(guards);
    assert_eq!(hub.stats().watchers, 0);
}

#[tokio::test]
async fn revisions_applied_behind_the_hubs_back_are_caught_up() {
    let store = open();
    let hub = Hub::new(Arc::new(store.clone()), config()).unwrap();
    let (tx, mut rx) = mpsc::channel(4);
    let s = spec(KeyRange::prefix(b"k"), 1);
    let g = hub.watch(s.clone(), tx).unwrap();
    assert_eq!(g.start_revision(), 2);
    // Not yet the sink: these revisions never reach the hub by publishing.
    for i in 0..20 {
        put(&store, "k", &i.to_string());
    }
    store.set_sink(Arc::new(hub.clone()));
    for i in 0..20 {
        put(&store, "k", &i.to_string());
    }
    let want = HashMap::from([(1, expected(&store, &s, 2))]);
    assert_eq!(want[&1].len(), 40);
    receive_all(&mut rx, &want).await;
}

#[tokio::test]
async fn resync_moves_the_live_point_to_the_store() {
    let store = open();
    let hub = Hub::new(Arc::new(store.clone()), config()).unwrap();
    let (tx, mut rx) = mpsc::channel(4);
    let s = spec(KeyRange::prefix(b"k"), 1);
    let _old = hub.watch(s.clone(), tx.clone()).unwrap();
    for i in 0..10 {
        put(&store, "k", &i.to_string());
    }
    hub.resync();
    assert_eq!(hub.stats().last_published, 11);
    store.set_sink(Arc::new(hub.clone()));
    // A new watch from now starts after the resynced point; the old one replays what it missed.
    let new = hub.watch(spec(KeyRange::prefix(b"k"), 2), tx).unwrap();
    assert_eq!(new.start_revision(), 12);
    put(&store, "k", "live");
    let want = HashMap::from([(1, expected(&store, &s, 2)), (2, expected(&store, &s, 12))]);
    receive_all(&mut rx, &want).await;
}

#[tokio::test]
async fn shutdown_drops_every_watcher_and_refuses_new_ones() {
    let store = open();
    let hub = hub_over(&store);
    let (tx, mut rx) = mpsc::channel(4);
    let g = hub.watch(spec(key("k"), 1), tx.clone()).unwrap();
    hub.shutdown();
    assert_eq!(hub.stats().watchers, 0);
    assert!(matches!(
        hub.watch(spec(key("k"), 2), tx.clone()),
        Err(WatchError::ShutDown)
    ));
    drop(tx);
    put(&store, "k", "v");
    assert_eq!(next(&mut rx).await, None);
    drop(g);
}

#[test]
fn a_hub_needs_a_runtime() {
    let store = open();
    let err = Hub::new(Arc::new(store), HubConfig::default()).unwrap_err();
    assert_eq!(err, HubError::NoRuntime);
}

#[test]
fn watcher_gauges_follow_registrations() {
    use metrics_util::debugging::{DebugValue, DebuggingRecorder};
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    // A snapshot resets what it reads, so each check takes one snapshot of both gauges.
    let gauges = || {
        let mut found = [None, None];
        for (k, _, _, v) in snapshotter.snapshot().into_vec() {
            match k.key().name() {
                "etcd_debugging_mvcc_watcher_total" => found[0] = Some(v),
                "etcd_debugging_mvcc_slow_watcher_total" => found[1] = Some(v),
                _ => {}
            }
        }
        found
    };
    let g = |v: f64| Some(DebugValue::Gauge(v.into()));
    metrics::with_local_recorder(&recorder, || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        let _enter = rt.enter();
        let store = open();
        let hub = hub_over(&store);
        let (tx, _rx) = mpsc::channel(4);
        let a = hub.watch(spec(key("a"), 1), tx.clone()).unwrap();
        let b = hub
            .watch(
                WatchSpec {
                    start_revision: 1,
                    ..spec(key("b"), 2)
                },
                tx,
            )
            .unwrap();
        assert_eq!(gauges(), [g(2.0), g(1.0)]);
        drop(a);
        drop(b);
        assert_eq!(gauges(), [g(0.0), g(0.0)]);
    });
}
