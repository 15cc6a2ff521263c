//! Crash injection at the Backend seam during a restore: the engine write at each step of the
//! restore fails (as if the process died there; with `EveryBatch` every earlier write is on
//! disk), and the file, reopened, must hold the whole old store or the whole new one.

use std::io::Read;

use engine_mem::MemBackend;
use engine_redb::{Durability, Options, RedbBackend};
use mvcc::conformance::Crashing;
use mvcc::{Backend, Command, KvHash, PutRequest, RangeRequest, Store};

fn options() -> Options {
    Options {
        durability: Durability::EveryBatch,
        cache_bytes: 4 << 20,
        ..Options::default()
    }
}

fn put(key: String, value: &[u8]) -> Command {
    Command::Put(PutRequest {
        key: key.into_bytes(),
        value: value.to_vec(),
        ..PutRequest::default()
    })
}

/// (revision, compaction point, hash, live keys) of a store.
fn state<B: Backend>(store: &Store<B>) -> (i64, i64, KvHash, usize) {
    let everything = RangeRequest {
        key: vec![0],
        range_end: vec![0],
        count_only: true,
        ..RangeRequest::default()
    };
    (
        store.current_revision(),
        store.compact_revision(),
        store.hash(0).unwrap(),
        store.range(&everything).unwrap().0.count as usize,
    )
}

#[test]
fn a_restore_interrupted_at_any_step_leaves_the_old_or_the_new_store() {
    // The new store: enough entries for several engine batches, a compaction, an applied
    // position.
    let source = Store::open(MemBackend::new()).unwrap();
    for i in 0..6000 {
        source
            .apply(&[put(format!("new/{:05}", i % 4000), b"n")], None)
            .unwrap();
    }
    source
        .apply(
            &[Command::Compact(mvcc::CompactRequest {
                revision: 3000,
                physical: false,
            })],
            Some(b"new-position"),
        )
        .unwrap();
    let new = state(&source);
    let mut bytes = Vec::new();
    source.snapshot().unwrap().read_to_end(&mut bytes).unwrap();

    for crash_at in 0.. {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db.redb");
        let store =
            Store::open(Crashing::new(RedbBackend::open(&path, &options()).unwrap())).unwrap();
        for i in 0..100 {
            store
                .apply(&[put(format!("old/{i:03}"), b"o")], Some(b"old-position"))
                .unwrap();
        }
        let old = state(&store);
        store.backend().crash_at(crash_at);
        let restored = store.restore(bytes.as_slice());
        if restored.is_err() {
            // The live store still answers from the old content.
            assert_eq!(
                state(&store),
                old,
                "crash at step {crash_at}: a failed restore changed the live store"
            );
        }
        drop(store);
        let reopened = Store::open(RedbBackend::open(&path, &options()).unwrap())
            .unwrap_or_else(|e| panic!("crash at step {crash_at}: reopening failed: {e}"));
        let after = state(&reopened);
        match &restored {
            Ok(_) => {
                assert_eq!(
                    after, new,
                    "crash at step {crash_at}: restored, then reopened"
                );
                assert_eq!(
                    reopened.applied().unwrap().as_deref(),
                    Some(&b"new-position"[..])
                );
                eprintln!("a restore is {crash_at} engine steps; each crash point checked");
                return;
            }
            Err(e) => assert_eq!(
                after, old,
                "crash at step {crash_at} ({e}): the reopened store is neither old nor new"
            ),
        }
        assert_eq!(
            reopened.applied().unwrap().as_deref(),
            Some(&b"old-position"[..])
        );
        assert!(crash_at < 100, "the restore never finished");
    }
}
