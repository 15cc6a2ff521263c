//! The behaviour every [`Backend`] must show under the MVCC store: one suite, run by each engine.
//!
//! An engine's test calls [`Suite::run_all`] with a function that makes a fresh, empty backend
//! (plus a guard, e.g. a temporary directory, dropped when the backend is done with). Each case
//! panics with a message naming what broke, as tests do.
//!
//! Besides the hand-written cases, [`Suite::run_all`] drives random op sequences against the
//! engine and against a tiny in-test model of etcd's semantics and demands identical answers.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::any::Any;
use std::collections::BTreeMap;
use std::io::Read;
use std::ops::Bound;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering as AtomicOrdering};
use std::sync::Arc;

use parking_lot::Mutex;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};

use crate::{
    Backend, BackendError, Command, CompactRequest, Compare, CompareResult, CompareTarget,
    DeleteRangeRequest, Error, Event, EventKind, EventSink, KeyValue, LeaseCheckpointRequest,
    LeaseGrantRequest, LeaseRevokeRequest, PutRequest, RangeRequest, ReadLimits, Refusal,
    Replacement, RequestOp, Response, ResponseOp, SortOrder, SortTarget, Store, Table, TxnRequest,
    Visitor, Wanted, WriteBatch,
};

/// Makes a fresh, empty backend and whatever must live as long as it.
pub type Factory<'a, B> = &'a dyn Fn() -> (B, Box<dyn Any>);

/// The conformance suite.
pub struct Suite;

/// One store under test with the guard of its backend.
struct Fixture<B: Backend> {
    store: Store<B>,
    _guard: Box<dyn Any>,
}

impl<B: Backend> Fixture<B> {
    fn new(factory: Factory<'_, B>) -> Self {
        let (backend, guard) = factory();
        Self {
            store: Store::open(backend).expect("open a fresh store"),
            _guard: guard,
        }
    }

    fn apply(&self, cmd: Command) -> (i64, Result<Response, Error>) {
        let mut out = self
            .store
            .apply(&[cmd], None)
            .expect("apply must not fail fatally");
        let o = out.pop().unwrap();
        (o.revision, o.result.map_err(Error::from))
    }

    fn put(&self, key: &str, value: &str) -> i64 {
        self.put_lease(key, value, 0)
    }

    fn put_lease(&self, key: &str, value: &str, lease: i64) -> i64 {
        let (rev, res) = self.apply(Command::Put(PutRequest {
            key: key.into(),
            value: value.into(),
            lease,
            ..Default::default()
        }));
        res.expect("put");
        rev
    }

    fn grant(&self, id: i64, ttl: i64) {
        let (_, res) = self.apply(Command::LeaseGrant(LeaseGrantRequest { id, ttl }));
        assert_eq!(res.expect("grant"), Response::LeaseGrant { id, ttl });
    }

    fn revoke(&self, id: i64) -> (i64, Result<Response, Error>) {
        self.apply(Command::LeaseRevoke(LeaseRevokeRequest { id }))
    }

    /// The keys the store says are attached to lease `id`.
    fn attached(&self, id: i64) -> Option<Vec<String>> {
        self.store.lease(id).map(|l| {
            l.keys
                .into_iter()
                .map(|k| String::from_utf8(k).unwrap())
                .collect()
        })
    }

    fn delete(&self, key: &str, end: &str) -> (i64, i64) {
        let (rev, res) = self.apply(Command::DeleteRange(DeleteRangeRequest {
            key: key.into(),
            range_end: end.into(),
            prev_kv: false,
        }));
        match res.expect("delete") {
            Response::DeleteRange(d) => (rev, d.deleted),
            other => panic!("delete answered {other:?}"),
        }
    }

    fn range(&self, req: RangeRequest) -> Result<crate::RangeResponse, Error> {
        self.store.range(&req).map(|(r, _)| r)
    }

    fn keys(&self, key: &str, end: &str, rev: i64) -> Vec<String> {
        self.range(RangeRequest {
            key: key.into(),
            range_end: end.into(),
            revision: rev,
            ..Default::default()
        })
        .expect("range")
        .kvs
        .into_iter()
        .map(|kv| String::from_utf8(kv.key).unwrap())
        .collect()
    }

    fn get(&self, key: &str) -> Option<KeyValue> {
        self.store.get(key.as_bytes()).expect("get")
    }
}

/// A sink keeping what it is sent, and the revisions it was told were skipped.
struct Collect(Mutex<Vec<Event>>, Wanted, Mutex<Vec<i64>>);

impl Default for Collect {
    fn default() -> Self {
        Self::wanting(Wanted::EventsWithPrev)
    }
}

impl Collect {
    fn wanting(wanted: Wanted) -> Self {
        Self(Mutex::default(), wanted, Mutex::default())
    }
}

impl EventSink for Collect {
    fn wants(&self) -> Wanted {
        self.1
    }

    fn publish(&self, events: Vec<Event>, with_prev: bool) {
        assert_ne!(self.1, Wanted::Nothing, "events that nobody wanted");
        assert_eq!(
            with_prev,
            self.1 == Wanted::EventsWithPrev,
            "events come as the sink asked"
        );
        self.0.lock().extend(events);
    }

    fn skipped(&self, through: i64) {
        assert_eq!(
            self.1,
            Wanted::Nothing,
            "revisions skipped that were wanted"
        );
        self.2.lock().push(through);
    }
}

fn put_op(key: &str, value: &str) -> RequestOp {
    RequestOp::Put(PutRequest {
        key: key.into(),
        value: value.into(),
        ..Default::default()
    })
}

fn cmp(key: &str, result: CompareResult, target: CompareTarget) -> Compare {
    Compare {
        result,
        target,
        key: key.into(),
        range_end: vec![],
    }
}

impl Suite {
    /// Runs every case and the property test against backends made by `factory`.
    pub fn run_all<B: Backend>(factory: Factory<'_, B>) {
        Self::run_cases(factory);
        Self::run_model(factory, 64);
    }

    /// Runs the hand-written cases only.
    pub fn run_cases<B: Backend>(factory: Factory<'_, B>) {
        revisions(factory);
        versions_and_tombstones(factory);
        range_conventions(factory);
        limit_count_and_sort(factory);
        read_limits(factory);
        filters_and_past_revisions(factory);
        txns(factory);
        txn_errors(factory);
        compaction(factory);
        etcd_hashes(factory);
        events(factory);
        snapshots(factory);
        snapshot_holds_compaction(factory);
        export_and_import(factory);
        many_versions_and_odd_keys(factory);
        one_call_many_commands(factory);
        leases(factory);
        version_count(factory);
        readers_never_see_a_half_restored_store(factory);
        layout_1_converts_at_open(factory);
    }

    /// Runs `cases` random op sequences against the engine and the model.
    pub fn run_model<B: Backend>(factory: Factory<'_, B>, cases: u32) {
        model::run(factory, cases);
    }
}

fn leases<B: Backend>(f: Factory<'_, B>) {
    let s = Fixture::new(f);
    let sink = Arc::new(Collect::default());
    s.store.set_sink(sink.clone());
    s.grant(1, 30);
    assert_eq!(s.store.current_revision(), 1, "a grant takes no revision");
    let (_, res) = s.apply(Command::LeaseGrant(LeaseGrantRequest { id: 1, ttl: 5 }));
    assert!(
        matches!(res, Err(Error::Refused(Refusal::LeaseExists { id: 1 }))),
        "{res:?}"
    );
    // A put naming an unknown lease changes nothing.
    let (rev, res) = s.apply(Command::Put(PutRequest {
        key: "x".into(),
        lease: 2,
        ..Default::default()
    }));
    assert!(
        matches!(res, Err(Error::Refused(Refusal::LeaseNotFound { id: 2 }))),
        "{res:?}"
    );
    assert_eq!(rev, 1);
    assert_eq!(s.put_lease("a", "1", 1), 2);
    assert_eq!(s.put_lease("b", "1", 1), 3);
    assert_eq!(s.put_lease("c", "1", 1), 4);
    assert_eq!(s.attached(1).unwrap(), ["a", "b", "c"]);
    // A put without a lease detaches; ignore_lease keeps it; a delete detaches.
    s.put("b", "2");
    let (_, res) = s.apply(Command::Put(PutRequest {
        key: "c".into(),
        value: "2".into(),
        ignore_lease: true,
        ..Default::default()
    }));
    res.unwrap();
    assert_eq!(s.attached(1).unwrap(), ["a", "c"]);
    s.delete("c", "");
    assert_eq!(s.attached(1).unwrap(), ["a"]);
    // A txn whose put names an unknown lease fails whole.
    let (rev, res) = s.apply(Command::Txn(TxnRequest {
        success: vec![
            RequestOp::Put(PutRequest {
                key: "d".into(),
                ..Default::default()
            }),
            RequestOp::Put(PutRequest {
                key: "e".into(),
                lease: 3,
                ..Default::default()
            }),
        ],
        ..Default::default()
    }));
    assert!(
        matches!(res, Err(Error::Refused(Refusal::LeaseNotFound { id: 3 }))),
        "{res:?}"
    );
    assert_eq!(rev, 7, "a refused txn takes no revision");
    assert_eq!(s.get("d"), None);
    // Grant, attach and revoke in one apply call: the keys go in one revision with events.
    s.grant(4, 60);
    s.put_lease("f", "1", 4);
    let before = s.store.current_revision();
    sink.0.lock().clear();
    let outcomes = s
        .store
        .apply(
            &[
                Command::LeaseGrant(LeaseGrantRequest { id: 5, ttl: 60 }),
                Command::Put(PutRequest {
                    key: "g".into(),
                    lease: 5,
                    ..Default::default()
                }),
                Command::Put(PutRequest {
                    key: "f".into(),
                    lease: 5,
                    ..Default::default()
                }),
                Command::LeaseRevoke(LeaseRevokeRequest { id: 5 }),
                Command::LeaseRevoke(LeaseRevokeRequest { id: 4 }),
            ],
            None,
        )
        .unwrap();
    let revs: Vec<i64> = outcomes.iter().map(|o| o.revision).collect();
    assert_eq!(
        revs,
        [before, before + 1, before + 2, before + 3, before + 3]
    );
    assert!(outcomes.iter().all(|o| o.result.is_ok()), "{outcomes:?}");
    let events = sink.0.lock().clone();
    let deletes: Vec<(i64, String, i64)> = events
        .iter()
        .filter(|e| e.kind == EventKind::Delete)
        .map(|e| {
            (
                e.kv.mod_revision,
                String::from_utf8(e.kv.key.clone()).unwrap(),
                e.prev_kv.as_ref().map_or(0, |p| p.lease),
            )
        })
        .collect();
    assert_eq!(
        deletes,
        [(before + 3, "f".into(), 5), (before + 3, "g".into(), 5)],
        "revoking 5 deletes both its keys in one revision, with prev_kv; 4 had none left"
    );
    assert_eq!(s.attached(4), None);
    assert_eq!(s.attached(5), None);
    // Revoking a lease without keys takes no revision; an unknown one is an error.
    s.grant(6, 60);
    let (rev, res) = s.revoke(6);
    assert_eq!((rev, res.is_ok()), (before + 3, true));
    let (_, res) = s.revoke(6);
    assert!(
        matches!(res, Err(Error::Refused(Refusal::LeaseNotFound { id: 6 }))),
        "{res:?}"
    );
    // Checkpoints, leases list, and a snapshot carries it all.
    let (_, res) = s.apply(Command::LeaseCheckpoint(LeaseCheckpointRequest {
        checkpoints: vec![(1, 12), (99, 3)],
    }));
    res.unwrap();
    let listed: Vec<(i64, i64, i64)> = s
        .store
        .leases()
        .into_iter()
        .map(|l| (l.id, l.ttl, l.remaining))
        .collect();
    assert_eq!(listed, [(1, 30, 12)]);
    let copy = Fixture::new(f);
    let mut stream = Vec::new();
    std::io::copy(&mut s.store.snapshot().unwrap(), &mut stream).unwrap();
    copy.store.restore(stream.as_slice()).unwrap();
    assert_eq!(copy.store.lease(1), s.store.lease(1));
    assert_eq!(copy.attached(1).unwrap(), ["a"]);
    let (_, res) = copy.revoke(1);
    res.unwrap();
    assert_eq!(copy.get("a"), None, "the restored lease still owns its key");
}

fn revisions<B: Backend>(f: Factory<'_, B>) {
    let s = Fixture::new(f);
    assert_eq!(
        s.store.current_revision(),
        1,
        "an empty store is at revision 1"
    );
    assert_eq!(s.put("a", "1"), 2);
    assert_eq!(
        s.put("a", "2"),
        3,
        "every put takes a revision, even of the same key"
    );
    assert_eq!(
        s.delete("zz", ""),
        (3, 0),
        "deleting nothing takes no revision"
    );
    let (rev, res) = s.apply(Command::Txn(TxnRequest {
        compare: vec![],
        success: vec![RequestOp::Range(RangeRequest {
            key: "a".into(),
            ..Default::default()
        })],
        failure: vec![],
    }));
    assert!(res.is_ok());
    assert_eq!(rev, 3, "a txn that writes nothing takes no revision");
    let out = s
        .store
        .apply(
            &[
                Command::Put(PutRequest {
                    key: "b".into(),
                    ..Default::default()
                }),
                Command::Put(PutRequest {
                    key: "c".into(),
                    ..Default::default()
                }),
            ],
            Some(b"pos-9"),
        )
        .unwrap();
    assert_eq!(
        out.iter().map(|o| o.revision).collect::<Vec<_>>(),
        vec![4, 5]
    );
    assert_eq!(s.store.applied().unwrap().as_deref(), Some(&b"pos-9"[..]));
    let (_, header) = s
        .store
        .range(&RangeRequest {
            key: "a".into(),
            revision: 2,
            ..Default::default()
        })
        .unwrap();
    assert_eq!(
        header, 5,
        "a read's header carries the current revision, not the one read"
    );
}

fn versions_and_tombstones<B: Backend>(f: Factory<'_, B>) {
    let s = Fixture::new(f);
    s.grant(7, 10);
    s.grant(9, 10);
    s.put_lease("k", "v1", 7);
    s.put("k", "v2");
    let kv = s.get("k").unwrap();
    assert_eq!(
        (kv.create_revision, kv.mod_revision, kv.version, kv.lease),
        (2, 3, 2, 0)
    );
    assert_eq!(kv.value, b"v2");
    let (_, res) = s.apply(Command::Put(PutRequest {
        key: "k".into(),
        value: "ignored".into(),
        lease: 9,
        prev_kv: true,
        ignore_value: true,
        ignore_lease: false,
    }));
    let Response::Put(p) = res.unwrap() else {
        panic!()
    };
    assert_eq!(p.prev_kv.unwrap().value, b"v2");
    let kv = s.get("k").unwrap();
    assert_eq!(
        (kv.value.as_slice(), kv.lease, kv.version),
        (&b"v2"[..], 9, 3)
    );
    let (_, res) = s.apply(Command::Put(PutRequest {
        key: "k".into(),
        value: "v4".into(),
        ignore_lease: true,
        ..Default::default()
    }));
    res.unwrap();
    assert_eq!(s.get("k").unwrap().lease, 9, "ignore_lease keeps the lease");
    let (rev, res) = s.apply(Command::Put(PutRequest {
        key: "missing".into(),
        ignore_value: true,
        ..Default::default()
    }));
    assert!(
        matches!(res, Err(Error::Refused(Refusal::KeyNotFound { .. }))),
        "{res:?}"
    );
    assert_eq!(rev, 5, "a failed put takes no revision");
    let (rev, res) = s.apply(Command::DeleteRange(DeleteRangeRequest {
        key: "k".into(),
        range_end: vec![],
        prev_kv: true,
    }));
    let Response::DeleteRange(d) = res.unwrap() else {
        panic!()
    };
    assert_eq!((rev, d.deleted, d.prev_kvs.len()), (6, 1, 1));
    assert_eq!(d.prev_kvs[0].value, b"v4");
    assert!(s.get("k").is_none());
    s.put("k", "again");
    let kv = s.get("k").unwrap();
    assert_eq!(
        (kv.create_revision, kv.version),
        (7, 1),
        "a key made again starts a new generation"
    );
    let old = s
        .range(RangeRequest {
            key: "k".into(),
            revision: 5,
            ..Default::default()
        })
        .unwrap();
    assert_eq!(old.kvs[0].value, b"v4", "history stays readable");
    let gone = s
        .range(RangeRequest {
            key: "k".into(),
            revision: 6,
            ..Default::default()
        })
        .unwrap();
    assert!(
        gone.kvs.is_empty() && gone.count == 0,
        "at the delete's revision the key is gone"
    );
}

fn range_conventions<B: Backend>(f: Factory<'_, B>) {
    let s = Fixture::new(f);
    for k in ["a", "ab", "abc", "b", "ba", "c"] {
        s.put(k, k);
    }
    assert_eq!(s.keys("ab", "", 0), ["ab"]);
    assert_eq!(s.keys("ab", "b", 0), ["ab", "abc"]);
    assert_eq!(s.keys("b", "\0", 0), ["b", "ba", "c"]);
    assert_eq!(s.keys("\0", "\0", 0), ["a", "ab", "abc", "b", "ba", "c"]);
    let prefix = crate::prefix_end(b"ab");
    assert_eq!(
        s.keys("ab", std::str::from_utf8(&prefix).unwrap(), 0),
        ["ab", "abc"]
    );
    assert!(s.keys("c", "a", 0).is_empty(), "an inverted range is empty");
    assert!(s.keys("zz", "", 0).is_empty());
    assert_eq!(s.delete("a", "b"), (8, 3));
    assert_eq!(s.keys("\0", "\0", 0), ["b", "ba", "c"]);
}

fn limit_count_and_sort<B: Backend>(f: Factory<'_, B>) {
    let s = Fixture::new(f);
    s.put("k1", "c");
    s.put("k2", "a");
    s.put("k3", "b");
    s.put("k2", "a2");
    let all = |extra: RangeRequest| {
        s.range(RangeRequest {
            key: "k".into(),
            range_end: "l".into(),
            ..extra
        })
        .unwrap()
    };
    let r = all(RangeRequest {
        limit: 2,
        ..Default::default()
    });
    assert_eq!((r.kvs.len(), r.more, r.count), (2, true, 3));
    let r = all(RangeRequest {
        limit: 3,
        ..Default::default()
    });
    assert_eq!((r.kvs.len(), r.more, r.count), (3, false, 3));
    let r = all(RangeRequest {
        count_only: true,
        ..Default::default()
    });
    assert_eq!((r.kvs.len(), r.more, r.count), (0, false, 3));
    let r = all(RangeRequest {
        keys_only: true,
        ..Default::default()
    });
    assert!(r.kvs.iter().all(|kv| kv.value.is_empty() && kv.version > 0));
    let order = |order, target| -> Vec<String> {
        all(RangeRequest {
            sort_order: order,
            sort_target: target,
            ..Default::default()
        })
        .kvs
        .into_iter()
        .map(|kv| String::from_utf8(kv.key).unwrap())
        .collect()
    };
    assert_eq!(
        order(SortOrder::Descend, SortTarget::Key),
        ["k3", "k2", "k1"]
    );
    assert_eq!(
        order(SortOrder::Ascend, SortTarget::Value),
        ["k2", "k3", "k1"]
    );
    assert_eq!(
        order(SortOrder::None, SortTarget::Value),
        ["k2", "k3", "k1"],
        "a target alone sorts ascending"
    );
    assert_eq!(
        order(SortOrder::Descend, SortTarget::Mod),
        ["k2", "k3", "k1"]
    );
    assert_eq!(
        order(SortOrder::Ascend, SortTarget::Create),
        ["k1", "k2", "k3"]
    );
    assert_eq!(order(SortOrder::Descend, SortTarget::Version)[0], "k2");
    let r = all(RangeRequest {
        sort_order: SortOrder::Descend,
        sort_target: SortTarget::Key,
        limit: 1,
        ..Default::default()
    });
    assert_eq!(
        (r.kvs[0].key.as_slice(), r.more, r.count),
        (&b"k3"[..], true, 3),
        "sort happens before the limit"
    );
}

/// A read stops when its caller says so, between chunks, and refuses an answer over its byte
/// limit, measuring only what would be sent.
fn read_limits<B: Backend>(f: Factory<'_, B>) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let s = Fixture::new(f);
    // More keys than one chunk of a scan, so that a stop can come between chunks.
    let ops: Vec<RequestOp> = (0..3000)
        .map(|i| put_op(&format!("m{i:05}"), "vvvv"))
        .collect();
    for chunk in ops.chunks(500) {
        let (_, r) = s.apply(Command::Txn(TxnRequest {
            compare: vec![],
            success: chunk.to_vec(),
            failure: vec![],
        }));
        r.unwrap();
    }
    let all = RangeRequest {
        key: "m".into(),
        range_end: "n".into(),
        ..Default::default()
    };
    let size = |kv: &KeyValue| kv.key.len() + kv.value.len();
    let asked = AtomicUsize::new(0);
    let counting = || {
        asked.fetch_add(1, Ordering::Relaxed);
        false
    };
    let open = ReadLimits {
        max_bytes: usize::MAX,
        measure: &size,
        stop: &counting,
    };
    let (r, _) = s.store.range_within(&all, &open).unwrap();
    assert_eq!((r.kvs.len(), r.count), (3000, 3000));
    assert!(
        asked.load(Ordering::Relaxed) >= 2,
        "stop is asked between chunks"
    );
    let stopped = ReadLimits {
        stop: &|| true,
        ..open
    };
    assert!(matches!(
        s.store.range_within(&all, &stopped),
        Err(Error::Stopped)
    ));
    assert!(matches!(
        s.store.hash_until(0, &|| true),
        Err(Error::Stopped)
    ));
    assert_eq!(
        s.store.hash_until(0, &|| false).unwrap(),
        s.store.hash(0).unwrap()
    );
    // Each key-value is 6 + 4 bytes by this measure.
    let capped = |max_bytes| ReadLimits { max_bytes, ..open };
    assert!(matches!(
        s.store.range_within(&all, &capped(29_999)),
        Err(Error::TooLarge {
            size: 30_000,
            limit: 29_999
        })
    ));
    assert_eq!(
        s.store
            .range_within(&all, &capped(30_000))
            .unwrap()
            .0
            .kvs
            .len(),
        3000
    );
    let two = RangeRequest {
        limit: 2,
        ..all.clone()
    };
    let (r, _) = s.store.range_within(&two, &capped(20)).unwrap();
    assert_eq!(
        (r.kvs.len(), r.more, r.count),
        (2, true, 3000),
        "the one past the limit is not sent"
    );
    let keys = RangeRequest {
        keys_only: true,
        ..all.clone()
    };
    assert_eq!(
        s.store
            .range_within(&keys, &capped(18_000))
            .unwrap()
            .0
            .kvs
            .len(),
        3000,
        "keys only: values are not measured"
    );
    // History reads by bytes: whole revisions (500 events of 10 bytes each), the first always.
    let since = |max_bytes| {
        s.store
            .events_since_within(2, 10_000, max_bytes)
            .unwrap()
            .len()
    };
    assert_eq!(since(1), 500, "the first revision comes whole");
    assert_eq!(since(5_001), 500);
    assert_eq!(since(10_000), 1000);
    assert_eq!(since(usize::MAX), 3000);
    let counted = RangeRequest {
        count_only: true,
        ..all
    };
    assert_eq!(
        s.store.range_within(&counted, &capped(0)).unwrap().0.count,
        3000
    );
}

fn filters_and_past_revisions<B: Backend>(f: Factory<'_, B>) {
    let s = Fixture::new(f);
    s.put("a", "1"); // 2
    s.put("b", "1"); // 3
    s.put("a", "2"); // 4
    s.put("c", "1"); // 5
    let q = |extra: RangeRequest| -> Vec<String> {
        s.range(RangeRequest {
            key: "\0".into(),
            range_end: "\0".into(),
            ..extra
        })
        .unwrap()
        .kvs
        .into_iter()
        .map(|kv| String::from_utf8(kv.key).unwrap())
        .collect()
    };
    assert_eq!(
        q(RangeRequest {
            min_mod_revision: 4,
            ..Default::default()
        }),
        ["a", "c"]
    );
    assert_eq!(
        q(RangeRequest {
            max_mod_revision: 3,
            ..Default::default()
        }),
        ["b"]
    );
    assert_eq!(
        q(RangeRequest {
            min_create_revision: 3,
            ..Default::default()
        }),
        ["b", "c"]
    );
    assert_eq!(
        q(RangeRequest {
            max_create_revision: 2,
            ..Default::default()
        }),
        ["a"]
    );
    let r = s
        .range(RangeRequest {
            key: "\0".into(),
            range_end: "\0".into(),
            min_mod_revision: 5,
            limit: 5,
            ..Default::default()
        })
        .unwrap();
    assert_eq!(r.count, 3, "count is taken before filters");
    assert_eq!(
        q(RangeRequest {
            revision: 3,
            ..Default::default()
        }),
        ["a", "b"]
    );
    let old = s
        .range(RangeRequest {
            key: "a".into(),
            revision: 3,
            ..Default::default()
        })
        .unwrap();
    assert_eq!(old.kvs[0].value, b"1");
    assert!(matches!(
        s.range(RangeRequest {
            key: "a".into(),
            revision: 6,
            ..Default::default()
        }),
        Err(Error::Refused(Refusal::FutureRevision {
            requested: 6,
            current: 5
        }))
    ));
}

fn txns<B: Backend>(f: Factory<'_, B>) {
    let s = Fixture::new(f);
    s.grant(5, 10); // no revision
    s.put_lease("a", "1", 5); // 2: a v1 c2 m2
    s.put("b", "x"); // 3
    use CompareResult::*;
    use CompareTarget::*;
    let holds = |c: Compare| -> bool {
        let (_, res) = s.apply(Command::Txn(TxnRequest {
            compare: vec![c],
            success: vec![],
            failure: vec![],
        }));
        match res.unwrap() {
            Response::Txn(t) => t.succeeded,
            other => panic!("{other:?}"),
        }
    };
    assert!(holds(cmp("a", Equal, Value("1".into()))));
    assert!(holds(cmp("a", NotEqual, Value("2".into()))));
    assert!(holds(cmp("a", Less, Value("2".into()))));
    assert!(holds(cmp("a", Greater, Value("0".into()))));
    assert!(holds(cmp("a", Equal, Version(1))));
    assert!(holds(cmp("a", Equal, Create(2))));
    assert!(holds(cmp("a", Equal, Mod(2))));
    assert!(holds(cmp("a", Equal, Lease(5))));
    assert!(holds(cmp("a", Greater, Mod(1))));
    assert!(!holds(cmp("a", Less, Mod(2))));
    assert!(
        holds(cmp("nope", Equal, Version(0))),
        "an absent key has version 0"
    );
    assert!(holds(cmp("nope", Equal, Create(0))));
    assert!(
        !holds(cmp("nope", Equal, Value(vec![]))),
        "an absent key's value never compares"
    );
    assert!(!holds(cmp("nope", NotEqual, Value("z".into()))));
    let over = |result, target| Compare {
        result,
        target,
        key: "a".into(),
        range_end: "c".into(),
    };
    assert!(
        holds(over(Greater, Mod(1))),
        "every key of the range satisfies it"
    );
    assert!(!holds(over(Equal, Mod(2))), "one key of the range does not");
    assert_eq!(
        s.store.current_revision(),
        3,
        "compare-only txns take no revision"
    );

    // A txn sees its own writes, writes at one revision with sub revisions, and nests.
    let (rev, res) = s.apply(Command::Txn(TxnRequest {
        compare: vec![cmp("a", Equal, Version(1))],
        success: vec![
            put_op("a", "2"),
            RequestOp::Range(RangeRequest {
                key: "a".into(),
                ..Default::default()
            }),
            RequestOp::DeleteRange(DeleteRangeRequest {
                key: "b".into(),
                range_end: vec![],
                prev_kv: true,
            }),
            RequestOp::Txn(TxnRequest {
                // Nested compares see the state before the outer txn ran, as in etcd.
                compare: vec![cmp("a", Equal, Value("1".into()))],
                success: vec![put_op("n", "then")],
                failure: vec![put_op("n", "else")],
            }),
            RequestOp::Range(RangeRequest {
                key: "\0".into(),
                range_end: "\0".into(),
                ..Default::default()
            }),
        ],
        failure: vec![put_op("f", "1")],
    }));
    assert_eq!(rev, 4);
    let Response::Txn(t) = res.unwrap() else {
        panic!()
    };
    assert!(t.succeeded);
    let ResponseOp::Range(r) = &t.responses[1] else {
        panic!()
    };
    assert_eq!(
        (
            r.kvs[0].value.as_slice(),
            r.kvs[0].mod_revision,
            r.kvs[0].version
        ),
        (&b"2"[..], 4, 2)
    );
    let ResponseOp::DeleteRange(d) = &t.responses[2] else {
        panic!()
    };
    assert_eq!(d.deleted, 1);
    let ResponseOp::Txn(n) = &t.responses[3] else {
        panic!()
    };
    assert!(n.succeeded);
    let ResponseOp::Range(all) = &t.responses[4] else {
        panic!()
    };
    let keys: Vec<_> = all.kvs.iter().map(|kv| kv.key.clone()).collect();
    assert_eq!(
        keys,
        vec![b"a".to_vec(), b"n".to_vec()],
        "the txn's own put and delete are seen"
    );
    assert_eq!(s.get("n").unwrap().value, b"then");
    assert!(s.get("f").is_none());
    let ev = s.store.events_since(4, 100).unwrap();
    assert_eq!(ev.len(), 3, "three writes at one revision");
    assert!(ev.iter().all(|e| e.kv.mod_revision == 4));
}

fn txn_errors<B: Backend>(f: Factory<'_, B>) {
    let s = Fixture::new(f);
    s.put("a", "1");
    let (rev, res) = s.apply(Command::Txn(TxnRequest {
        compare: vec![],
        success: vec![put_op("x", "1"), put_op("x", "2")],
        failure: vec![],
    }));
    assert!(
        matches!(res, Err(Error::Refused(Refusal::DuplicateKey { .. }))),
        "{res:?}"
    );
    assert_eq!(rev, 2);
    let (_, res) = s.apply(Command::Txn(TxnRequest {
        compare: vec![],
        success: vec![
            put_op("y", "1"),
            RequestOp::Put(PutRequest {
                key: "missing".into(),
                ignore_value: true,
                ..Default::default()
            }),
        ],
        failure: vec![],
    }));
    assert!(matches!(
        res,
        Err(Error::Refused(Refusal::KeyNotFound { .. }))
    ));
    assert!(s.get("y").is_none(), "a failing txn writes nothing");
    let (_, res) = s.apply(Command::Txn(TxnRequest {
        compare: vec![],
        success: vec![
            put_op("y", "1"),
            RequestOp::Range(RangeRequest {
                key: "a".into(),
                revision: 99,
                ..Default::default()
            }),
        ],
        failure: vec![],
    }));
    assert!(
        matches!(res, Err(Error::Refused(Refusal::FutureRevision { .. }))),
        "{res:?}"
    );
    assert!(s.get("y").is_none());
    assert_eq!(s.store.current_revision(), 2);
}

fn compaction<B: Backend>(f: Factory<'_, B>) {
    let s = Fixture::new(f);
    for i in 0..5 {
        s.put("a", &format!("v{i}")); // 2..=6
    }
    s.put("b", "1"); // 7
    s.delete("b", ""); // 8
    s.put("c", "1"); // 9
    let before = s.store.hash(0).unwrap();
    let at7 = s.store.hash(7).unwrap();
    let (_, res) = s.apply(Command::Compact(CompactRequest {
        revision: 8,
        physical: false,
    }));
    assert!(matches!(res, Ok(Response::Compact)));
    assert_eq!(s.store.compact_revision(), 8);
    let (_, res) = s.apply(Command::Compact(CompactRequest {
        revision: 8,
        physical: false,
    }));
    assert!(matches!(
        res,
        Err(Error::Refused(Refusal::Compacted {
            requested: 8,
            compacted: 8
        }))
    ));
    let (_, res) = s.apply(Command::Compact(CompactRequest {
        revision: 100,
        physical: false,
    }));
    assert!(matches!(
        res,
        Err(Error::Refused(Refusal::FutureRevision { .. }))
    ));
    assert!(matches!(
        s.range(RangeRequest {
            key: "a".into(),
            revision: 7,
            ..Default::default()
        }),
        Err(Error::Refused(Refusal::Compacted {
            requested: 7,
            compacted: 8
        }))
    ));
    assert!(matches!(
        s.store.hash(7),
        Err(Error::Refused(Refusal::Compacted { .. }))
    ));
    assert!(matches!(
        s.store.events_since(7, 10),
        Err(Error::Refused(Refusal::Compacted { .. }))
    ));
    assert_eq!(
        s.keys("\0", "\0", 8),
        ["a"],
        "the compaction point stays readable"
    );
    let logical = s.store.hash(0).unwrap();
    assert_ne!(logical.hash, before.hash, "compaction changes what is kept");
    assert_eq!(logical.compact_revision, 8);
    let progress = s.store.finish_compaction().unwrap();
    assert!(progress.finished());
    assert_eq!(
        s.store.hash(0).unwrap(),
        logical,
        "physical compaction changes no answer"
    );
    assert_eq!(s.get("a").unwrap().value, b"v4");
    assert_eq!(
        s.get("a").unwrap().version,
        5,
        "versions survive compaction"
    );
    let ev = s.store.events_since(8, 100).unwrap();
    assert_eq!(
        ev.len(),
        1,
        "only c's put is after the compaction point: {ev:?}"
    );
    // The same history compacted on another store hashes the same.
    let t = Fixture::new(f);
    for i in 0..5 {
        t.put("a", &format!("v{i}"));
    }
    t.put("b", "1");
    t.delete("b", "");
    t.put("c", "1");
    assert_eq!(t.store.hash(7).unwrap(), at7);
    t.apply(Command::Compact(CompactRequest {
        revision: 8,
        physical: true,
    }))
    .1
    .unwrap();
    assert_eq!(t.store.hash(0).unwrap(), logical);
}

/// HashKV values etcd 3.4.23 answered for this history (`etcdctl endpoint hashkv` after the same
/// etcdctl commands on a fresh etcd): the hash must be etcd's own, not only self-consistent.
fn etcd_hashes<B: Backend>(f: Factory<'_, B>) {
    let s = Fixture::new(f);
    let hash = |rev| s.store.hash(rev).map(|h| h.hash);
    assert_eq!(hash(0).unwrap(), 1_084_519_789, "the empty store");
    s.put("a", "1"); // 2
    s.put("b", "2"); // 3
    let (_, res) = s.apply(Command::Txn(TxnRequest {
        success: vec![
            RequestOp::Put(PutRequest {
                key: "c".into(),
                value: "3".into(),
                ..Default::default()
            }),
            RequestOp::Put(PutRequest {
                key: "d".into(),
                value: "4".into(),
                ..Default::default()
            }),
            RequestOp::DeleteRange(DeleteRangeRequest {
                key: "a".into(),
                range_end: vec![],
                prev_kv: false,
            }),
        ],
        ..Default::default()
    })); // 4
    res.expect("txn");
    s.delete("b", ""); // 5
    s.put("a", "5"); // 6
    assert_eq!(hash(0).unwrap(), 2_361_575_507);
    assert_eq!(hash(3).unwrap(), 1_827_592_406);
    s.apply(Command::Compact(CompactRequest {
        revision: 4,
        physical: false,
    }))
    .1
    .expect("compact");
    assert_eq!(hash(0).unwrap(), 2_855_520_174);
    assert_eq!(hash(5).unwrap(), 3_931_687_247);
    assert!(
        matches!(hash(4), Err(Error::Refused(Refusal::Compacted { .. }))),
        "etcd 3.4 refuses the compaction point itself"
    );
    assert_eq!(
        hash(-1).unwrap(),
        1_084_519_789,
        "a negative revision hashes nothing"
    );
    s.store.finish_compaction().unwrap();
    assert_eq!(
        hash(0).unwrap(),
        2_855_520_174,
        "physical compaction changes no hash"
    );
    assert_eq!(hash(5).unwrap(), 3_931_687_247);

    // Every key deleted after the compaction point: etcd's index keeps nothing at revision 5,
    // and then etcd hashes every version still stored at or below the compaction point.
    let t = Fixture::new(f);
    t.put("a", "1"); // 2
    t.put("b", "2"); // 3
    t.apply(Command::Compact(CompactRequest {
        revision: 3,
        physical: true,
    }))
    .1
    .expect("compact");
    t.delete("a", ""); // 4
    t.delete("b", ""); // 5
    assert_eq!(t.store.hash(0).unwrap().hash, 3_647_447_639);
    assert_eq!(t.store.hash(4).unwrap().hash, 776_148_148);
}

fn events<B: Backend>(f: Factory<'_, B>) {
    let s = Fixture::new(f);
    let sink = Arc::new(Collect::default());
    s.store.set_sink(sink.clone());
    s.put("a", "1");
    s.put("a", "2");
    s.put("b", "1");
    s.delete("a", "c");
    let live = sink.0.lock().clone();
    let kinds: Vec<_> = live.iter().map(|e| (e.kind, e.kv.mod_revision)).collect();
    assert_eq!(
        kinds,
        vec![
            (EventKind::Put, 2),
            (EventKind::Put, 3),
            (EventKind::Put, 4),
            (EventKind::Delete, 5),
            (EventKind::Delete, 5)
        ]
    );
    assert_eq!(live[1].prev_kv.as_ref().unwrap().value, b"1");
    assert!(live[0].prev_kv.is_none());
    assert_eq!(
        live[3].kv,
        KeyValue {
            key: b"a".to_vec(),
            mod_revision: 5,
            ..Default::default()
        }
    );
    assert_eq!(live[3].prev_kv.as_ref().unwrap().value, b"2");
    let stored = s.store.events_since(1, 100).unwrap();
    assert_eq!(stored, live, "history replays exactly what was published");
    let head = s.store.events_since(2, 2).unwrap();
    assert_eq!(head.len(), 2);
    let tail = s.store.events_since(5, 1).unwrap();
    assert_eq!(tail.len(), 2, "a revision's events are never split");
    assert!(s.store.events_since(6, 10).unwrap().is_empty());

    // A sink that wants no previous key-values gets the same events without them; answers
    // that ask for theirs still get them.
    let t = Fixture::new(f);
    let bare = Arc::new(Collect::wanting(Wanted::Events));
    t.store.set_sink(bare.clone());
    t.put("a", "1");
    let (_, res) = t.apply(Command::Put(PutRequest {
        key: "a".into(),
        value: "2".into(),
        prev_kv: true,
        ..Default::default()
    }));
    match res {
        Ok(Response::Put(r)) => assert_eq!(r.prev_kv.unwrap().value, b"1"),
        other => panic!("{other:?}"),
    }
    t.put("b", "1");
    let (_, res) = t.apply(Command::DeleteRange(DeleteRangeRequest {
        key: "a".into(),
        range_end: "c".into(),
        prev_kv: true,
    }));
    match res {
        Ok(Response::DeleteRange(r)) => assert_eq!(r.prev_kvs.len(), 2),
        other => panic!("{other:?}"),
    }
    let without: Vec<Event> = live
        .into_iter()
        .map(|e| Event { prev_kv: None, ..e })
        .collect();
    assert_eq!(*bare.0.lock(), without);
    assert_eq!(
        t.store.events_since(1, 100).unwrap(),
        stored,
        "history has them all the same"
    );

    // A sink that wants nothing is told how far each apply call went, and sent no events.
    let u = Fixture::new(f);
    let deaf = Arc::new(Collect::wanting(Wanted::Nothing));
    u.store.set_sink(deaf.clone());
    u.put("a", "1");
    u.grant(7, 30);
    u.put("a", "2");
    assert_eq!(*deaf.2.lock(), [2, 3], "the grant took no revision");
    assert_eq!(u.store.events_since(1, 100).unwrap(), stored[..2]);
}

fn snapshots<B: Backend>(f: Factory<'_, B>) {
    let s = Fixture::new(f);
    for i in 0..3000 {
        s.put(&format!("k{:04}", i % 1500), &format!("v{i}"));
    }
    s.delete("k0000", "k0100");
    s.apply(Command::Compact(CompactRequest {
        revision: 2000,
        physical: false,
    }))
    .1
    .unwrap();
    s.store.apply(&[], Some(b"applied-here")).unwrap();
    let mut bytes = Vec::new();
    let mut reader = s.store.snapshot().unwrap();
    assert_eq!(reader.info().revision, s.store.current_revision());
    reader.read_to_end(&mut bytes).unwrap();
    let t = Fixture::new(f);
    t.put("junk", "gone after restore");
    let info = t.store.restore(bytes.as_slice()).unwrap();
    assert_eq!(info.applied.as_deref(), Some(&b"applied-here"[..]));
    assert_eq!(t.store.current_revision(), s.store.current_revision());
    assert_eq!(t.store.compact_revision(), 2000);
    assert_eq!(t.store.hash(0).unwrap(), s.store.hash(0).unwrap());
    assert_eq!(t.store.hash(2500).unwrap(), s.store.hash(2500).unwrap());
    assert!(t.get("junk").is_none());
    assert_eq!(
        t.store.applied().unwrap().as_deref(),
        Some(&b"applied-here"[..])
    );
    assert_eq!(
        t.store.events_since(2001, 10_000).unwrap(),
        s.store.events_since(2001, 10_000).unwrap()
    );
    assert_eq!(
        t.put("new", "1"),
        s.store.current_revision() + 1,
        "a restored store goes on writing"
    );

    for cut in [0, 7, bytes.len() / 2, bytes.len() - 1] {
        let u = Fixture::new(f);
        let kept = u.put("kept", "1");
        let res = u.store.restore(&bytes[..cut]);
        assert!(
            matches!(res, Err(Error::BadSnapshot { .. })),
            "cut at {cut}: {res:?}"
        );
        assert_eq!(
            (u.store.current_revision(), u.get("kept").map(|kv| kv.value)),
            (kept, Some(b"1".to_vec())),
            "cut at {cut}: a failed restore leaves the store as it was"
        );
    }
    let mut flipped = bytes.clone();
    let mid = flipped.len() / 2;
    flipped[mid] ^= 0x40;
    let u = Fixture::new(f);
    assert!(
        u.store.restore(flipped.as_slice()).is_err(),
        "a flipped bit is caught"
    );
}

/// Every version an export gives, to the end.
fn exported<B: Backend>(e: &mut crate::Export<B>) -> Vec<crate::Version> {
    let mut all = Vec::new();
    while let Some(chunk) = e.next_chunk().unwrap() {
        all.extend(chunk);
    }
    all
}

fn export_and_import<B: Backend>(f: Factory<'_, B>) {
    let s = Fixture::new(f);
    s.grant(7, 100);
    for i in 0..2500 {
        s.put(&format!("k{:03}", i % 700), &format!("v{i}"));
    }
    s.put_lease("leased", "x", 7);
    s.delete("k000", "k010");
    let (txn_rev, _) = s.apply(Command::Txn(TxnRequest {
        compare: vec![],
        success: vec![put_op("t1", "a"), put_op("t2", "b")],
        failure: vec![],
    }));
    s.apply(Command::Compact(CompactRequest {
        revision: 1800,
        physical: false,
    }))
    .1
    .unwrap();
    let mut e = s.store.export().unwrap();
    let rev = e.info().revision;
    assert_eq!(rev, s.store.current_revision());
    // Writes after the export began are not in it.
    s.put("later", "1");
    s.delete("k5", "k6");
    let first = exported(&mut e);
    e.rewind();
    assert_eq!(exported(&mut e), first, "a second pass sees the same");
    assert!(first
        .windows(2)
        .all(|w| (w[0].main, w[0].sub) < (w[1].main, w[1].sub)));
    assert!(first.iter().all(|v| v.main <= rev));
    let txn: Vec<_> = first.iter().filter(|v| v.main == txn_rev).collect();
    assert_eq!(txn.len(), 2);
    assert_eq!((txn[0].sub, txn[1].sub), (0, 1));
    assert!(first.iter().any(|v| v.tombstone && v.key == b"k005"));
    assert!(
        first.iter().all(|v| v.main > 1800 || !v.tombstone),
        "compaction keeps no tombstone at or below its point"
    );
    assert_eq!(e.leases(), &[(7, 100, 0)]);
    let t = Fixture::new(f);
    t.put("junk", "gone after import");
    let info = t
        .store
        .import(
            rev,
            1800,
            &mut first.clone().into_iter().map(Ok),
            e.leases(),
        )
        .unwrap();
    assert_eq!(info.revision, rev);
    assert_eq!(t.store.current_revision(), rev);
    assert_eq!(t.store.compact_revision(), 1800);
    let before = s.store.hash(rev).unwrap();
    assert_eq!(t.store.hash(0).unwrap(), before);
    assert!(t.get("junk").is_none());
    assert_eq!(t.get("leased").map(|kv| kv.lease), Some(7));
    assert_eq!(
        t.store.lease(7).map(|l| l.keys),
        Some(vec![b"leased".to_vec()])
    );
    let mut again = t.store.export().unwrap();
    assert_eq!(exported(&mut again), first, "export(import(x)) = x");
    drop(again);
    assert_eq!(
        t.put("new", "1"),
        rev + 1,
        "an imported store goes on writing"
    );

    let u = Fixture::new(f);
    let kept = u.put("kept", "1");
    let failing = first
        .iter()
        .cloned()
        .map(Ok)
        .chain(std::iter::once(Err(Error::BadSnapshot {
            what: "cut".into(),
        })));
    assert!(u
        .store
        .import(rev, 1800, &mut failing.into_iter(), &[])
        .is_err());
    assert_eq!(
        (u.store.current_revision(), u.get("kept").map(|kv| kv.value)),
        (kept, Some(b"1".to_vec())),
        "a failed import leaves the store as it was"
    );
    let beyond = vec![Ok(crate::Version {
        main: rev + 1,
        ..first[0].clone()
    })];
    assert!(matches!(
        u.store.import(rev, 0, &mut beyond.into_iter(), &[]),
        Err(Error::BadSnapshot { .. })
    ));
}

fn snapshot_holds_compaction<B: Backend>(f: Factory<'_, B>) {
    let s = Fixture::new(f);
    for i in 0..2500 {
        s.put(&format!("k{:02}", i % 50), &format!("v{i}"));
    }
    let expected = s.store.hash(0).unwrap();
    let mut reader = s.store.snapshot().unwrap();
    let mut first = vec![0u8; 100];
    reader.read_exact(&mut first).unwrap();
    let rev = s.store.current_revision();
    s.apply(Command::Compact(CompactRequest {
        revision: rev,
        physical: true,
    }))
    .1
    .unwrap();
    let progress = s.store.finish_compaction().unwrap();
    assert!(
        !progress.finished(),
        "physical compaction waits for the snapshot"
    );
    let mut rest = Vec::new();
    reader.read_to_end(&mut rest).unwrap();
    drop(reader);
    first.extend(rest);
    let t = Fixture::new(f);
    t.store.restore(first.as_slice()).unwrap();
    assert_eq!(t.store.hash(0).unwrap(), expected);
    assert!(
        s.store.finish_compaction().unwrap().finished(),
        "and goes on once it is gone"
    );
}

fn version_count<B: Backend>(f: Factory<'_, B>) {
    let s = Fixture::new(f);
    assert_eq!(s.store.versions(), 0);
    for i in 0..300 {
        s.put(&format!("k{}", i % 10), &format!("v{i}"));
    }
    s.delete("k0", "");
    assert_eq!(s.store.versions(), 301, "every put and the tombstone");
    let rev = s.store.current_revision();
    s.apply(Command::Compact(CompactRequest {
        revision: rev,
        physical: false,
    }))
    .1
    .unwrap();
    assert!(
        !s.store.compaction_progress().finished(),
        "compaction is logical until removal runs"
    );
    assert_eq!(s.store.versions(), 301);
    let progress = s.store.finish_compaction().unwrap();
    assert!(progress.finished() && s.store.compaction_progress().finished());
    assert_eq!(
        s.store.versions(),
        9,
        "one version per live key; the deleted key leaves nothing"
    );
    let mut bytes = Vec::new();
    s.store.snapshot().unwrap().read_to_end(&mut bytes).unwrap();
    let t = Fixture::new(f);
    t.put("junk", "gone after restore");
    t.store.restore(bytes.as_slice()).unwrap();
    assert_eq!(t.store.versions(), 9, "a restore counts what it installs");
    t.put("k1", "again");
    assert_eq!(t.store.versions(), 10);
}

/// Lets a reader look at the store after every engine write of a restore, and waits for it.
struct Gate<B> {
    inner: B,
    armed: AtomicBool,
    /// `true`: read now; `false`: stop reading.
    to_reader: std::sync::mpsc::SyncSender<bool>,
    from_reader: Mutex<std::sync::mpsc::Receiver<()>>,
}

impl<B: Backend> Gate<B> {
    /// After a write: one read by the reader, if armed (a gone reader stops the waiting).
    fn pass(&self) {
        if self.armed.load(AtomicOrdering::SeqCst) && self.to_reader.send(true).is_ok() {
            let _ = self.from_reader.lock().recv();
        }
    }
}

impl<B: Backend> Backend for Gate<B> {
    fn get(&self, table: Table, key: &[u8]) -> Result<Option<Vec<u8>>, BackendError> {
        self.inner.get(table, key)
    }

    fn scan(
        &self,
        table: Table,
        from: Bound<&[u8]>,
        to: Bound<&[u8]>,
        visit: &mut Visitor<'_>,
    ) -> Result<(), BackendError> {
        self.inner.scan(table, from, to, visit)
    }

    fn write(&self, batch: WriteBatch) -> Result<(), BackendError> {
        self.inner.write(batch)?;
        self.pass();
        Ok(())
    }

    fn applied(&self) -> Result<Option<Vec<u8>>, BackendError> {
        self.inner.applied()
    }

    fn flush(&self) -> Result<(), BackendError> {
        self.inner.flush()
    }

    fn replace(&self) -> Result<Box<dyn Replacement + '_>, BackendError> {
        Ok(Box::new(GatedReplacement {
            inner: self.inner.replace()?,
            gate: self,
        }))
    }

    fn persistent(&self) -> bool {
        self.inner.persistent()
    }
}

/// A replacement that lets the reader in after each of its writes.
struct GatedReplacement<'a, B> {
    inner: Box<dyn Replacement + 'a>,
    gate: &'a Gate<B>,
}

impl<B: Backend> Replacement for GatedReplacement<'_, B> {
    fn write(&mut self, batch: WriteBatch) -> Result<(), BackendError> {
        self.inner.write(batch)?;
        self.gate.pass();
        Ok(())
    }

    fn commit(self: Box<Self>) -> Result<(), BackendError> {
        self.inner.commit()
    }
}

/// A serializable read during a restore sees the whole old store or the whole new one: the
/// reader reads after every engine write the restore makes.
fn readers_never_see_a_half_restored_store<B: Backend>(f: Factory<'_, B>) {
    const OLD: usize = 100;
    const NEW: usize = 3000;
    let s = Fixture::new(f);
    for i in 0..NEW {
        s.put(&format!("new/{i:05}"), "n");
    }
    let new_rev = s.store.current_revision();
    let mut bytes = Vec::new();
    s.store.snapshot().unwrap().read_to_end(&mut bytes).unwrap();

    let (backend, _guard) = f();
    let (to_reader, wake) = std::sync::mpsc::sync_channel(0);
    let (ack, from_reader) = std::sync::mpsc::sync_channel(0);
    let t = Store::open(Gate {
        inner: backend,
        armed: AtomicBool::new(false),
        to_reader,
        from_reader: Mutex::new(from_reader),
    })
    .unwrap();
    for i in 0..OLD {
        let put = PutRequest {
            key: format!("old/{i:03}").into(),
            value: b"o".to_vec(),
            ..Default::default()
        };
        t.apply(&[Command::Put(put)], None).unwrap();
    }
    let old_rev = t.current_revision();
    let everything = RangeRequest {
        key: vec![0],
        range_end: vec![0],
        ..Default::default()
    };
    let classify = |header: i64, kvs: &[KeyValue]| {
        let old = kvs.iter().filter(|kv| kv.key.starts_with(b"old/")).count();
        let new = kvs.iter().filter(|kv| kv.key.starts_with(b"new/")).count();
        if (header, old, new) == (old_rev, OLD, 0) {
            Ok("old")
        } else if (header, old, new) == (new_rev, 0, NEW) {
            Ok("new")
        } else {
            Err(format!(
                "revision {header}, {old} old keys, {new} new keys (old store: revision \
                 {old_rev}, {OLD} keys; new: revision {new_rev}, {NEW} keys)"
            ))
        }
    };
    t.backend().armed.store(true, AtomicOrdering::SeqCst);
    let (restored, seen) = std::thread::scope(|scope| {
        let (t, classify, everything) = (&t, &classify, &everything);
        let reader = scope.spawn(move || {
            let mut seen = Vec::new();
            while wake.recv() == Ok(true) {
                let (resp, header) = t.range(everything).unwrap();
                seen.push(classify(header, &resp.kvs));
                if ack.send(()).is_err() {
                    break;
                }
            }
            seen
        });
        let restored = t.restore(bytes.as_slice());
        t.backend().armed.store(false, AtomicOrdering::SeqCst);
        let _ = t.backend().to_reader.send(false);
        (restored, reader.join().unwrap())
    });
    restored.unwrap();
    for (i, state) in seen.iter().enumerate() {
        if let Err(what) = state {
            panic!("read {i} of {} during the restore saw {what}", seen.len());
        }
    }
    let (resp, header) = t.range(&everything).unwrap();
    assert_eq!(classify(header, &resp.kvs), Ok("new"), "after the restore");
}

fn many_versions_and_odd_keys<B: Backend>(f: Factory<'_, B>) {
    let s = Fixture::new(f);
    let odd: Vec<Vec<u8>> = vec![
        vec![0],
        vec![0, 0],
        vec![0, 0xff],
        vec![1],
        vec![0xff],
        vec![0xff, 0],
        b"a\0b".to_vec(),
    ];
    for k in &odd {
        s.apply(Command::Put(PutRequest {
            key: k.clone(),
            value: k.clone(),
            ..Default::default()
        }))
        .1
        .unwrap();
    }
    let all = s
        .range(RangeRequest {
            key: vec![0],
            range_end: vec![0],
            ..Default::default()
        })
        .unwrap();
    let mut sorted = odd.clone();
    sorted.sort();
    assert_eq!(
        all.kvs.iter().map(|kv| kv.key.clone()).collect::<Vec<_>>(),
        sorted
    );
    let one = s
        .range(RangeRequest {
            key: vec![0],
            ..Default::default()
        })
        .unwrap();
    assert_eq!(one.kvs.len(), 1, "key [0] alone does not match [0, 0]");
    // Many versions per key, more than one backend chunk, read at many revisions.
    let t = Fixture::new(f);
    for i in 0..3000 {
        t.put(&format!("h{}", i % 3), &i.to_string());
    }
    let r = t
        .range(RangeRequest {
            key: "h".into(),
            range_end: "i".into(),
            ..Default::default()
        })
        .unwrap();
    assert_eq!(r.count, 3);
    let vals: Vec<_> = r
        .kvs
        .iter()
        .map(|kv| String::from_utf8(kv.value.clone()).unwrap())
        .collect();
    assert_eq!(vals, ["2997", "2998", "2999"]);
    let r = t
        .range(RangeRequest {
            key: "h".into(),
            range_end: "i".into(),
            revision: 1001,
            ..Default::default()
        })
        .unwrap();
    let vals: Vec<_> = r
        .kvs
        .iter()
        .map(|kv| String::from_utf8(kv.value.clone()).unwrap())
        .collect();
    assert_eq!(
        vals,
        ["999", "997", "998"],
        "i = 999 was put at revision 1001"
    );
    let wide = Fixture::new(f);
    let cmds: Vec<Command> = (0..5000)
        .map(|i| {
            Command::Put(PutRequest {
                key: format!("w{i:05}").into(),
                value: vec![1],
                ..Default::default()
            })
        })
        .collect();
    wide.store.apply(&cmds, None).unwrap();
    let r = wide
        .range(RangeRequest {
            key: "w".into(),
            range_end: "x".into(),
            limit: 4000,
            ..Default::default()
        })
        .unwrap();
    assert_eq!((r.kvs.len(), r.more, r.count), (4000, true, 5000));
    assert_eq!(r.kvs[3999].key, b"w03999");
}

fn one_call_many_commands<B: Backend>(f: Factory<'_, B>) {
    let s = Fixture::new(f);
    s.put("a", "0"); // 2, in the backend before the call
    let read_at = |rev: i64| {
        Command::Txn(TxnRequest {
            compare: vec![],
            success: vec![RequestOp::Range(RangeRequest {
                key: "a".into(),
                revision: rev,
                ..Default::default()
            })],
            failure: vec![],
        })
    };
    let out = s
        .store
        .apply(
            &[
                Command::Put(PutRequest {
                    key: "a".into(),
                    value: "1".into(),
                    ..Default::default()
                }), // 3
                Command::Put(PutRequest {
                    key: "a".into(),
                    value: "2".into(),
                    prev_kv: true,
                    ..Default::default()
                }), // 4
                read_at(2),
                read_at(3),
                read_at(0),
                Command::DeleteRange(DeleteRangeRequest {
                    key: "a".into(),
                    range_end: vec![],
                    prev_kv: true,
                }), // 5
                read_at(4),
                read_at(0),
                Command::Put(PutRequest {
                    key: "a".into(),
                    value: "3".into(),
                    ..Default::default()
                }), // 6
            ],
            None,
        )
        .unwrap();
    let value = |i: usize| -> Option<(Vec<u8>, i64)> {
        let Ok(Response::Txn(t)) = &out[i].result else {
            panic!("{:?}", out[i].result)
        };
        let ResponseOp::Range(r) = &t.responses[0] else {
            panic!()
        };
        r.kvs.first().map(|kv| (kv.value.clone(), kv.version))
    };
    let Ok(Response::Put(p)) = &out[1].result else {
        panic!()
    };
    assert_eq!(
        p.prev_kv.as_ref().unwrap().value,
        b"1",
        "a command sees the one before it"
    );
    assert_eq!(
        value(2),
        Some((b"0".to_vec(), 1)),
        "revision 2 is read from the engine"
    );
    assert_eq!(
        value(3),
        Some((b"1".to_vec(), 2)),
        "revision 3 was written earlier in this call"
    );
    assert_eq!(value(4), Some((b"2".to_vec(), 3)));
    assert_eq!(
        value(6),
        Some((b"2".to_vec(), 3)),
        "read at 4 after the delete at 5"
    );
    assert_eq!(value(7), None, "deleted now");
    assert_eq!(
        out.iter().map(|o| o.revision).collect::<Vec<_>>(),
        vec![3, 4, 4, 4, 4, 5, 5, 5, 6]
    );
    let kv = s.get("a").unwrap();
    assert_eq!(
        (kv.value.as_slice(), kv.version, kv.create_revision),
        (&b"3"[..], 1, 6)
    );
    let again = Fixture::new(f);
    for v in ["0", "1", "2"] {
        again.put("a", v);
    }
    again.delete("a", "");
    again.put("a", "3");
    assert_eq!(
        again.store.hash(0).unwrap(),
        s.store.hash(0).unwrap(),
        "one call or many, same store"
    );
}

mod model {
    //! A deliberately naive model: the whole key space cloned at every revision.

    use super::*;

    #[derive(Clone, Debug)]
    pub(super) enum Op {
        Put(u8, u8),
        Delete(u8, Option<u8>),
        CasPut(u8, i64, u8),
        Get(u8, i64),
        Scan(u8, u8, i64, i64),
        Compact(i64),
    }

    fn key(k: u8) -> Vec<u8> {
        vec![b'k', k]
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => (0u8..8, any::<u8>()).prop_map(|(k, v)| Op::Put(k, v)),
            1 => (0u8..8, proptest::option::of(0u8..9)).prop_map(|(k, e)| Op::Delete(k, e)),
            2 => (0u8..8, 0i64..4, any::<u8>()).prop_map(|(k, ver, v)| Op::CasPut(k, ver, v)),
            2 => (0u8..8, 0i64..40).prop_map(|(k, r)| Op::Get(k, r)),
            2 => (0u8..8, 0u8..9, 0i64..40, 0i64..4).prop_map(|(a, b, r, l)| Op::Scan(a, b, r, l)),
            1 => (0i64..40).prop_map(Op::Compact),
        ]
    }

    struct Model {
        /// `states[r]` is the key space at revision r (index 0 unused).
        states: Vec<BTreeMap<Vec<u8>, KeyValue>>,
        compacted: i64,
    }

    impl Model {
        fn rev(&self) -> i64 {
            self.states.len() as i64 - 1
        }

        fn now(&self) -> &BTreeMap<Vec<u8>, KeyValue> {
            self.states.last().unwrap()
        }

        fn put(&mut self, k: Vec<u8>, v: Vec<u8>) {
            let rev = self.rev() + 1;
            let mut next = self.now().clone();
            let (create, version) = match next.get(&k) {
                Some(p) => (p.create_revision, p.version + 1),
                None => (rev, 1),
            };
            next.insert(
                k.clone(),
                KeyValue {
                    key: k,
                    create_revision: create,
                    mod_revision: rev,
                    version,
                    value: v,
                    lease: 0,
                },
            );
            self.states.push(next);
        }

        fn read(&self, rev: i64) -> Result<&BTreeMap<Vec<u8>, KeyValue>, &'static str> {
            let rev = if rev <= 0 { self.rev() } else { rev };
            if rev > self.rev() {
                return Err("future");
            }
            if rev < self.compacted {
                return Err("compacted");
            }
            Ok(&self.states[rev as usize])
        }
    }

    fn kind(e: &Error) -> &'static str {
        match e {
            Error::Refused(Refusal::FutureRevision { .. }) => "future",
            Error::Refused(Refusal::Compacted { .. }) => "compacted",
            _ => "other",
        }
    }

    pub(super) fn run<B: Backend>(factory: Factory<'_, B>, cases: u32) {
        let mut runner = TestRunner::new(Config {
            cases,
            failure_persistence: None,
            ..Config::default()
        });
        let result = runner.run(&proptest::collection::vec(op(), 1..60), |ops| {
            let s = Fixture::new(factory);
            let mut m = Model {
                states: vec![BTreeMap::new(), BTreeMap::new()],
                compacted: 0,
            };
            for op in ops {
                match op {
                    Op::Put(k, v) => {
                        s.put(std::str::from_utf8(&key(k)).unwrap(), &v.to_string());
                        m.put(key(k), v.to_string().into_bytes());
                    }
                    Op::Delete(k, end) => {
                        let end = end.map(key).unwrap_or_default();
                        let range = crate::KeyRange::new(&key(k), &end);
                        let doomed: Vec<_> = m
                            .now()
                            .keys()
                            .filter(|x| range.contains(x))
                            .cloned()
                            .collect();
                        let (_, res) = s.apply(Command::DeleteRange(DeleteRangeRequest {
                            key: key(k),
                            range_end: end,
                            prev_kv: true,
                        }));
                        let Ok(Response::DeleteRange(d)) = res else {
                            panic!("{res:?}")
                        };
                        prop_assert_eq!(d.deleted as usize, doomed.len());
                        if !doomed.is_empty() {
                            let mut next = m.now().clone();
                            let prev: Vec<_> =
                                doomed.iter().map(|x| next.remove(x).unwrap()).collect();
                            prop_assert_eq!(d.prev_kvs, prev);
                            m.states.push(next);
                        }
                    }
                    Op::CasPut(k, ver, v) => {
                        let (_, res) = s.apply(Command::Txn(TxnRequest {
                            compare: vec![cmp(
                                std::str::from_utf8(&key(k)).unwrap(),
                                CompareResult::Equal,
                                CompareTarget::Version(ver),
                            )],
                            success: vec![RequestOp::Put(PutRequest {
                                key: key(k),
                                value: vec![v],
                                ..Default::default()
                            })],
                            failure: vec![RequestOp::Range(RangeRequest {
                                key: key(k),
                                ..Default::default()
                            })],
                        }));
                        let Ok(Response::Txn(t)) = res else {
                            panic!("{res:?}")
                        };
                        let expect = m.now().get(&key(k)).map_or(0, |kv| kv.version) == ver;
                        prop_assert_eq!(t.succeeded, expect);
                        if expect {
                            m.put(key(k), vec![v]);
                        }
                    }
                    Op::Get(k, rev) => {
                        let got = s.range(RangeRequest {
                            key: key(k),
                            revision: rev,
                            ..Default::default()
                        });
                        match m.read(rev) {
                            Ok(state) => prop_assert_eq!(
                                got.unwrap().kvs,
                                state.get(&key(k)).cloned().into_iter().collect::<Vec<_>>()
                            ),
                            Err(e) => prop_assert_eq!(kind(&got.unwrap_err()), e),
                        }
                    }
                    Op::Scan(a, b, rev, limit) => {
                        let req = RangeRequest {
                            key: key(a),
                            range_end: key(b),
                            revision: rev,
                            limit,
                            ..Default::default()
                        };
                        let got = s.range(req.clone());
                        match m.read(rev) {
                            Ok(state) => {
                                let range = crate::KeyRange::new(&req.key, &req.range_end);
                                let all: Vec<_> = state
                                    .values()
                                    .filter(|kv| range.contains(&kv.key))
                                    .cloned()
                                    .collect();
                                let got = got.unwrap();
                                prop_assert_eq!(got.count as usize, all.len());
                                let n = if limit > 0 {
                                    (limit as usize).min(all.len())
                                } else {
                                    all.len()
                                };
                                prop_assert_eq!(got.more, n < all.len());
                                prop_assert_eq!(got.kvs, all[..n].to_vec());
                            }
                            Err(e) => prop_assert_eq!(kind(&got.unwrap_err()), e),
                        }
                    }
                    Op::Compact(rev) => {
                        let (_, res) = s.apply(Command::Compact(CompactRequest {
                            revision: rev,
                            physical: false,
                        }));
                        if rev <= m.compacted {
                            prop_assert_eq!(kind(&res.unwrap_err()), "compacted");
                        } else if rev > m.rev() {
                            prop_assert_eq!(kind(&res.unwrap_err()), "future");
                        } else {
                            prop_assert!(res.is_ok());
                            m.compacted = rev;
                            if rev % 2 == 0 {
                                s.store.finish_compaction().unwrap();
                            }
                        }
                    }
                }
                prop_assert_eq!(s.store.current_revision(), m.rev());
            }
            // Whatever physical compaction did, the history above the point is intact.
            let expect_events: usize = (m.compacted.max(1) as usize + 1..m.states.len())
                .map(|r| {
                    let (a, b) = (&m.states[r - 1], &m.states[r]);
                    b.iter().filter(|(k, v)| a.get(*k) != Some(*v)).count()
                        + a.keys().filter(|k| !b.contains_key(*k)).count()
                })
                .sum();
            let got = s.store.events_since(m.compacted + 1, usize::MAX).unwrap();
            prop_assert_eq!(got.len(), expect_events);
            Ok(())
        });
        if let Err(e) = result {
            panic!("the engine disagrees with the model: {e}");
        }
    }
}

/// Storage layout 1, byte for byte as stores before the value-by-revision layout wrote it
/// (the whole record in `Keys`, the user key in `Revisions`), and its snapshot stream: kept
/// here, apart from the codec, so the conversion is tested against what those versions left.
mod layout_1 {
    use crate::export::Version;
    use crate::{Backend, Table, WriteBatch};

    fn varint(out: &mut Vec<u8>, mut v: u64) {
        while v >= 0x80 {
            out.push((v as u8) | 0x80);
            v >>= 7;
        }
        out.push(v as u8);
    }

    /// The `Keys` key: the key with `0` escaped as `0 0xff`, `0 0`, then `!main`.
    pub fn version_key(key: &[u8], main: i64) -> Vec<u8> {
        let mut out = Vec::new();
        for &b in key {
            out.push(b);
            if b == 0 {
                out.push(0xff);
            }
        }
        out.extend_from_slice(&[0, 0]);
        out.extend_from_slice(&(!(main as u64)).to_be_bytes());
        out
    }

    /// The record: tag (0 put, 1 tombstone), sub, and for a put create revision, version,
    /// lease, value.
    pub fn record(v: &Version) -> Vec<u8> {
        let mut out = vec![u8::from(v.tombstone)];
        varint(&mut out, v.sub as u64);
        if !v.tombstone {
            for f in [v.create_revision, v.version, v.lease] {
                varint(&mut out, f as u64);
            }
            out.extend_from_slice(&v.value);
        }
        out
    }

    /// Writes `versions` and `leases` at revision `current` into an empty backend.
    pub fn write<B: Backend>(
        backend: &B,
        versions: &[Version],
        leases: &[(i64, i64, i64)],
        current: i64,
    ) {
        let mut batch = WriteBatch::new();
        for v in versions {
            let mut revision = (v.main as u64).to_be_bytes().to_vec();
            revision.extend_from_slice(&(v.sub as u64).to_be_bytes());
            batch.put(Table::Revisions, revision, v.key.clone());
            batch.put(Table::Keys, version_key(&v.key, v.main), record(v));
        }
        for &(id, ttl, remaining) in leases {
            let mut key = b"lease/".to_vec();
            key.extend_from_slice(&id.to_be_bytes());
            let mut value = ttl.to_be_bytes().to_vec();
            value.extend_from_slice(&remaining.to_be_bytes());
            batch.put(Table::Meta, key, value);
        }
        batch.put(
            Table::Meta,
            b"current".to_vec(),
            current.to_be_bytes().to_vec(),
        );
        batch.put(
            Table::Meta,
            b"versions".to_vec(),
            (versions.len() as i64).to_be_bytes().to_vec(),
        );
        backend.write(batch).unwrap();
    }

    /// The snapshot stream of an uncompacted store holding `versions` at `current`.
    pub fn snapshot(versions: &[Version], leases: &[(i64, i64, i64)], current: i64) -> Vec<u8> {
        let mut out = b"MSTSNAP2".to_vec();
        out.extend_from_slice(&(current as u64).to_be_bytes());
        out.extend_from_slice(&0u64.to_be_bytes());
        out.push(0);
        let mut entries: Vec<(Vec<u8>, Vec<u8>)> = versions
            .iter()
            .map(|v| (version_key(&v.key, v.main), record(v)))
            .collect();
        entries.sort();
        for (key, record) in &entries {
            out.push(1);
            out.extend_from_slice(&(key.len() as u32).to_be_bytes());
            out.extend_from_slice(key);
            out.extend_from_slice(&(record.len() as u32).to_be_bytes());
            out.extend_from_slice(record);
        }
        for &(id, ttl, remaining) in leases {
            out.push(2);
            for v in [id, ttl, remaining] {
                out.extend_from_slice(&v.to_be_bytes());
            }
        }
        out.push(0);
        out.extend_from_slice(&((entries.len() + leases.len()) as u64).to_be_bytes());
        let crc = crc32fast::hash(&out);
        out.extend_from_slice(&crc.to_be_bytes());
        out
    }
}

/// Crash injection at the Backend seam: each engine write, and each start, write and commit
/// of a replacement, is a step; the step numbered [`Crashing::crash_at`] (from 0) and every one
/// after it fail, as if the process died there (nothing of a failed step is written).
pub struct Crashing<B> {
    inner: B,
    left: AtomicI64,
}

impl<B> Crashing<B> {
    /// Wraps `inner`; nothing fails until [`Crashing::crash_at`] says where.
    pub fn new(inner: B) -> Self {
        Self {
            inner,
            left: AtomicI64::new(i64::MAX),
        }
    }

    /// Makes the step `steps` from now fail, and every one after it.
    pub fn crash_at(&self, steps: i64) {
        self.left.store(steps, AtomicOrdering::SeqCst);
    }

    /// One more step; `Err` once the crash point is reached.
    fn step(&self) -> Result<(), BackendError> {
        if self.left.fetch_sub(1, AtomicOrdering::SeqCst) <= 0 {
            return Err(BackendError::Io {
                op: "write",
                table: None,
                cause: "injected crash".into(),
            });
        }
        Ok(())
    }
}

impl<B: Backend> Backend for Crashing<B> {
    fn get(&self, table: Table, key: &[u8]) -> Result<Option<Vec<u8>>, BackendError> {
        self.inner.get(table, key)
    }

    fn scan(
        &self,
        table: Table,
        from: Bound<&[u8]>,
        to: Bound<&[u8]>,
        visit: &mut Visitor<'_>,
    ) -> Result<(), BackendError> {
        self.inner.scan(table, from, to, visit)
    }

    fn write(&self, batch: WriteBatch) -> Result<(), BackendError> {
        self.step()?;
        self.inner.write(batch)
    }

    fn applied(&self) -> Result<Option<Vec<u8>>, BackendError> {
        self.inner.applied()
    }

    fn flush(&self) -> Result<(), BackendError> {
        self.inner.flush()
    }

    fn replace(&self) -> Result<Box<dyn Replacement + '_>, BackendError> {
        self.step()?;
        Ok(Box::new(CrashingReplacement {
            inner: self.inner.replace()?,
            crashing: self,
        }))
    }
}

/// Each write and the commit of a replacement is a step that may crash.
struct CrashingReplacement<'a, B> {
    inner: Box<dyn Replacement + 'a>,
    crashing: &'a Crashing<B>,
}

impl<B> Replacement for CrashingReplacement<'_, B> {
    fn write(&mut self, batch: WriteBatch) -> Result<(), BackendError> {
        self.crashing.step()?;
        self.inner.write(batch)
    }

    fn commit(self: Box<Self>) -> Result<(), BackendError> {
        self.crashing.step()?;
        self.inner.commit()
    }
}

/// What [`layout_1_converts_at_open`] compares of two stores.
struct Layout1View {
    current: i64,
    ranges: Vec<crate::RangeResponse>,
    events: Vec<Event>,
    hash: crate::KvHash,
    versions: i64,
    leased: Option<Vec<Vec<u8>>>,
    snapshot: Vec<u8>,
}

impl Layout1View {
    fn of<T: Backend>(store: &Store<T>) -> Self {
        let current = store.current_revision();
        let ranges = [current, 1200, 2]
            .into_iter()
            .map(|rev| {
                store
                    .range(&RangeRequest {
                        key: vec![0],
                        range_end: vec![0],
                        revision: rev,
                        ..Default::default()
                    })
                    .unwrap()
                    .0
            })
            .collect();
        Self {
            current,
            ranges,
            events: store.events_since(1, 100_000).unwrap(),
            hash: store.hash(0).unwrap(),
            versions: store.versions(),
            leased: store.lease(7).map(|l| l.keys),
            snapshot: snapshot_of(store),
        }
    }
}

fn snapshot_of<T: Backend>(store: &Store<T>) -> Vec<u8> {
    let mut bytes = Vec::new();
    store.snapshot().unwrap().read_to_end(&mut bytes).unwrap();
    bytes
}

/// A store written in storage layout 1 opens: the conversion at open keeps every version
/// (reads now and at past revisions, events, hashes, leases, snapshots byte for byte), also
/// when it was cut short and runs again; and a layout-1 snapshot stream restores.
fn layout_1_converts_at_open<B: Backend>(f: Factory<'_, B>) {
    let s = Fixture::new(f);
    s.grant(7, 60);
    // More versions than one conversion batch holds.
    for i in 0..2500 {
        s.put(&format!("k{:04}", i % 900), &format!("v{i}"));
    }
    s.put_lease("leased", "x", 7);
    s.put("nul\0key", "z");
    s.delete("k0000", "k0010");
    let current = s.store.current_revision();
    let mut export = s.store.export().unwrap();
    let mut versions = Vec::new();
    while let Some(chunk) = export.next_chunk().unwrap() {
        versions.extend(chunk);
    }
    let leases = export.leases().to_vec();
    drop(export);
    let old_snapshot = layout_1::snapshot(&versions, &leases, current);
    assert_eq!(
        snapshot_of(&s.store),
        old_snapshot,
        "the snapshot stream does not change with the storage layout"
    );
    let check = |t: Layout1View, what: &str| {
        let want = Layout1View::of(&s.store);
        assert_eq!(t.current, want.current, "{what}: revision");
        assert_eq!(
            t.ranges, want.ranges,
            "{what}: keys now and at past revisions"
        );
        assert_eq!(t.events, want.events, "{what}: events");
        assert_eq!(t.hash, want.hash, "{what}: hash");
        assert_eq!(t.versions, want.versions, "{what}: versions");
        assert_eq!(
            t.leased,
            Some(vec![b"leased".to_vec()]),
            "{what}: lease keys"
        );
        assert_eq!(t.snapshot, old_snapshot, "{what}: snapshot");
    };

    let (backend, _guard) = f();
    layout_1::write(&backend, &versions, &leases, current);
    let t = Store::open(backend).expect("a layout-1 store opens");
    check(Layout1View::of(&t), "converted");
    let next = t
        .apply(
            &[Command::Put(PutRequest {
                key: b"k0500".to_vec(),
                value: b"after".to_vec(),
                prev_kv: true,
                ..Default::default()
            })],
            None,
        )
        .unwrap();
    match &next[0].result {
        Ok(Response::Put(p)) => assert_eq!(
            p.prev_kv.as_ref().map(|kv| kv.value.clone()),
            Some(b"v2300".to_vec())
        ),
        other => panic!("put after the conversion answered {other:?}"),
    }
    drop(t);

    let (backend, _guard) = f();
    layout_1::write(&backend, &versions, &leases, current);
    let backend = Arc::new(backend);
    let crashing = Crashing::new(Arc::clone(&backend));
    crashing.crash_at(1);
    let cut = Store::open(crashing);
    assert!(cut.is_err(), "the conversion's second write fails");
    let t = Store::open(Arc::clone(&backend)).expect("a cut conversion goes on");
    check(Layout1View::of(&t), "converted after a cut");
    drop(t);

    let u = Fixture::new(f);
    u.put("junk", "gone after restore");
    u.store
        .restore(old_snapshot.as_slice())
        .expect("a layout-1 stream restores");
    check(Layout1View::of(&u.store), "restored from a layout-1 stream");
}
