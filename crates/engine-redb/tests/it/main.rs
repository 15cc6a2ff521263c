//! engine-redb against the MVCC conformance suite, and its persistence.

#![allow(clippy::unwrap_used, clippy::expect_used)]

// The package is `metastore-engine-redb`; the code knows the library by its short name.
extern crate metastore_engine_redb as engine_redb;

mod crash;
mod footprint;
mod restore;

use engine_redb::{Batching, Durability, Options, RedbBackend};
use mvcc::conformance::Suite;
use mvcc::{Backend, Command, PutRequest, Store};

fn fresh_with(durability: Durability) -> (RedbBackend, Box<dyn std::any::Any>) {
    fresh_batching(durability, Batching::default())
}

/// `Lazy` that commits after every few changes, so reads merge buffered batches with
/// committed ones (the default buffers a whole test run).
const SMALL_BATCHES: Batching = Batching {
    max_ops: 5,
    max_bytes: 1 << 20,
    max_age: std::time::Duration::from_secs(3600),
};

fn fresh_batching(
    durability: Durability,
    batching: Batching,
) -> (RedbBackend, Box<dyn std::any::Any>) {
    let dir = tempfile::tempdir().unwrap();
    let options = Options {
        durability,
        cache_bytes: 16 << 20,
        batching,
    };
    let backend = RedbBackend::open(dir.path().join("db.redb"), &options).unwrap();
    (backend, Box::new(dir))
}

#[test]
fn conformance_cases_lazy() {
    Suite::run_cases(&|| fresh_with(Durability::Lazy));
}

#[test]
fn conformance_cases_lazy_small_batches() {
    Suite::run_cases(&|| fresh_batching(Durability::Lazy, SMALL_BATCHES));
}

#[test]
fn conformance_cases_lazy_unbuffered() {
    Suite::run_cases(&|| fresh_batching(Durability::Lazy, Batching::NONE));
}

#[test]
fn conformance_cases_every_batch() {
    Suite::run_cases(&|| fresh_with(Durability::EveryBatch));
}

#[test]
fn conformance_model() {
    Suite::run_model(&|| fresh_with(Durability::Lazy), 64);
}

#[test]
fn conformance_model_small_batches() {
    Suite::run_model(&|| fresh_batching(Durability::Lazy, SMALL_BATCHES), 64);
}

#[test]
fn reopened_store_keeps_everything_flushed() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db.redb");
    let options = Options {
        durability: Durability::Lazy,
        ..Options::default()
    };
    let hash = {
        let store = Store::open(RedbBackend::open(&path, &options).unwrap()).unwrap();
        for i in 0..100 {
            let put = PutRequest {
                key: format!("k{i}").into(),
                value: vec![i],
                ..Default::default()
            };
            store.apply(&[Command::Put(put)], Some(&[i])).unwrap();
        }
        store.backend().flush().unwrap();
        store.hash(0).unwrap()
    };
    let store = Store::open(RedbBackend::open(&path, &options).unwrap()).unwrap();
    assert_eq!(store.current_revision(), 101);
    assert_eq!(store.hash(0).unwrap(), hash);
    assert_eq!(store.applied().unwrap(), Some(vec![99]));
}

#[test]
fn unopenable_file_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("not-a-db");
    std::fs::write(
        &path,
        b"this is not a redb file, just some bytes that are long enough",
    )
    .unwrap();
    let err = RedbBackend::open(&path, &Options::default())
        .err()
        .expect("garbage must not open");
    assert!(err.to_string().contains("cannot open storage"), "{err}");
}

#[test]
fn defragment_gives_freed_space_back() {
    use mvcc::{Table, WriteBatch};
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db.redb");
    let backend = RedbBackend::open(&path, &Options::default()).unwrap();
    let size = || std::fs::metadata(&path).unwrap().len();
    let key = |i: u32| format!("key-{i:06}").into_bytes();
    for chunk in 0..20u32 {
        let mut batch = WriteBatch::new();
        for i in chunk * 500..(chunk + 1) * 500 {
            batch.put(Table::Keys, key(i), vec![b'v'; 1024]);
        }
        backend.write(batch).unwrap();
    }
    // Every key but the first ten goes, as a compaction would drop old versions.
    let mut batch = WriteBatch::new();
    for i in 10..10_000 {
        batch.delete(Table::Keys, key(i));
    }
    backend.write(batch).unwrap();
    let before = size();
    assert!(
        before > 8 << 20,
        "10 000 values of 1 KiB took {before} bytes"
    );
    assert!(
        backend.defragment().unwrap(),
        "there was space to give back"
    );
    let after = size();
    assert!(
        after * 4 < before,
        "the file shrank from {before} to only {after} bytes"
    );
    for i in 0..10 {
        assert_eq!(
            backend.get(Table::Keys, &key(i)).unwrap(),
            Some(vec![b'v'; 1024])
        );
    }
    assert_eq!(backend.get(Table::Keys, &key(10)).unwrap(), None);
    // The engine serves as before, and the rewritten file reopens with the same content.
    let mut batch = WriteBatch::new();
    batch.put(Table::Keys, b"after".to_vec(), b"defrag".to_vec());
    backend.write(batch).unwrap();
    drop(backend);
    let reopened = RedbBackend::open(&path, &Options::default()).unwrap();
    assert_eq!(
        reopened.get(Table::Keys, b"after").unwrap(),
        Some(b"defrag".to_vec())
    );
    assert_eq!(
        reopened.get(Table::Keys, &key(9)).unwrap(),
        Some(vec![b'v'; 1024])
    );
}

/// Defragmenting while other threads read and write: every operation completes (none is lost
/// or deadlocked behind the rewrite) and every read sees whole batches.
#[test]
fn defragment_runs_between_reads_and_writes() {
    use mvcc::{Table, WriteBatch};
    use std::ops::{Bound, ControlFlow};
    let dir = tempfile::tempdir().unwrap();
    let backend = std::sync::Arc::new(
        RedbBackend::open(dir.path().join("db.redb"), &Options::default()).unwrap(),
    );
    let writer = {
        let b = backend.clone();
        std::thread::spawn(move || {
            for round in 0..200u32 {
                // Each batch replaces both keys together: a reader must see them equal.
                let mut batch = WriteBatch::new();
                batch.put(Table::Keys, b"a".to_vec(), round.to_be_bytes().to_vec());
                batch.put(Table::Keys, b"b".to_vec(), round.to_be_bytes().to_vec());
                batch.put(
                    Table::Revisions,
                    round.to_be_bytes().to_vec(),
                    vec![0; 4096],
                );
                b.write(batch).unwrap();
            }
        })
    };
    let reader = {
        let b = backend.clone();
        std::thread::spawn(move || {
            for _ in 0..200 {
                let mut seen = Vec::new();
                b.scan(
                    Table::Keys,
                    Bound::Unbounded,
                    Bound::Unbounded,
                    &mut |_, v| {
                        seen.push(v.to_vec());
                        ControlFlow::Continue(())
                    },
                )
                .unwrap();
                if let [a, b] = seen.as_slice() {
                    assert_eq!(a, b, "a read saw half a batch");
                }
            }
        })
    };
    for _ in 0..3 {
        backend.defragment().unwrap();
    }
    writer.join().unwrap();
    reader.join().unwrap();
    assert_eq!(
        backend.get(Table::Keys, b"a").unwrap(),
        Some(199u32.to_be_bytes().to_vec())
    );
}

/// Reads agree with a plain map while batches are partly committed and partly buffered:
/// buffered values replace committed ones, buffered removals hide them, and scans longer
/// than the buffer's chunk keep key order and stop where their visitor stops them.
#[test]
fn reads_merge_buffered_batches_with_committed_ones() {
    use mvcc::{Table, WriteBatch};
    use std::collections::BTreeMap;
    use std::ops::{Bound, ControlFlow};

    let batching = Batching {
        max_ops: 300,
        max_bytes: u64::MAX,
        max_age: std::time::Duration::from_secs(3600),
    };
    let (backend, _dir) = fresh_batching(Durability::Lazy, batching);
    let mut model: BTreeMap<Vec<u8>, Vec<u8>> = BTreeMap::new();
    let mut seed = 0x2545_f491_4f6c_dd1d_u64;
    let mut next = move |n: u64| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed % n
    };
    for round in 0..60u64 {
        let mut batch = WriteBatch::new();
        for _ in 0..next(120) {
            let key = format!("k{:04}", next(800)).into_bytes();
            if next(4) == 0 {
                batch.delete(Table::Keys, key.clone());
                model.remove(&key);
            } else {
                let value = format!("v{round}").into_bytes();
                batch.put(Table::Keys, key.clone(), value.clone());
                model.insert(key, value);
            }
        }
        batch.set_applied(round.to_be_bytes().to_vec());
        backend.write(batch).unwrap();
        assert_eq!(
            backend.applied().unwrap(),
            Some(round.to_be_bytes().to_vec())
        );

        let from = format!("k{:04}", next(800)).into_bytes();
        let to = format!("k{:04}", next(800)).into_bytes();
        let stop_after = 1 + next(400) as usize;
        for (lo, hi) in [
            (Bound::Unbounded, Bound::Unbounded),
            (
                Bound::Included(from.as_slice()),
                Bound::Excluded(to.as_slice()),
            ),
            (
                Bound::Excluded(from.as_slice()),
                Bound::Included(to.as_slice()),
            ),
        ] {
            let mut seen = Vec::new();
            if !mvcc::is_empty_interval(lo, hi) {
                backend
                    .scan(Table::Keys, lo, hi, &mut |k, v| {
                        seen.push((k.to_vec(), v.to_vec()));
                        if seen.len() == stop_after {
                            ControlFlow::Break(())
                        } else {
                            ControlFlow::Continue(())
                        }
                    })
                    .unwrap();
            }
            let want: Vec<_> = if mvcc::is_empty_interval(lo, hi) {
                Vec::new()
            } else {
                model
                    .range::<[u8], _>((lo, hi))
                    .take(stop_after)
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect()
            };
            assert_eq!(seen, want, "round {round}: scan {lo:?}..{hi:?}");
        }
        let probes: Vec<Vec<u8>> = (0..20)
            .map(|_| format!("k{:04}", next(800)).into_bytes())
            .collect();
        let many = backend.get_many(Table::Keys, &probes).unwrap();
        for (key, got) in probes.iter().zip(many) {
            assert_eq!(got.as_ref(), model.get(key), "round {round}: get_many");
            assert_eq!(
                backend.get(Table::Keys, key).unwrap().as_ref(),
                model.get(key)
            );
        }
    }
    // Everything reaches redb: after a flush, a reopened engine reads the same.
    backend.flush().unwrap();
    let mut all = Vec::new();
    backend
        .scan(
            Table::Keys,
            Bound::Unbounded,
            Bound::Unbounded,
            &mut |k, v| {
                all.push((k.to_vec(), v.to_vec()));
                ControlFlow::Continue(())
            },
        )
        .unwrap();
    assert_eq!(all, model.into_iter().collect::<Vec<_>>());
}
