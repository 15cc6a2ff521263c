//! engine-redb against the MVCC conformance suite, and its persistence.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod crash;
mod restore;

use engine_redb::{Durability, Options, RedbBackend};
use mvcc::conformance::Suite;
use mvcc::{Backend, Command, PutRequest, Store};

fn fresh_with(durability: Durability) -> (RedbBackend, Box<dyn std::any::Any>) {
    let dir = tempfile::tempdir().unwrap();
    let options = Options {
        durability,
        cache_bytes: 16 << 20,
    };
    let backend = RedbBackend::open(dir.path().join("db.redb"), &options).unwrap();
    (backend, Box::new(dir))
}

#[test]
fn conformance_cases_lazy() {
    Suite::run_cases(&|| fresh_with(Durability::Lazy));
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
