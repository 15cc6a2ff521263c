//! engine-mem against the MVCC conformance suite.

#![allow(clippy::unwrap_used, clippy::expect_used)]

// The package is `metastore-engine-mem`; the code knows the library by its short name.
extern crate metastore_engine_mem as engine_mem;

use engine_mem::MemBackend;
use mvcc::conformance::Suite;

fn fresh() -> (MemBackend, Box<dyn std::any::Any>) {
    (MemBackend::new(), Box::new(()))
}

#[test]
fn conformance_cases() {
    Suite::run_cases(&fresh);
}

#[test]
fn conformance_model() {
    Suite::run_model(&fresh, 256);
}
