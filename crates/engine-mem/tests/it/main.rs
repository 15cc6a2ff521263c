//! engine-mem against the MVCC conformance suite.

#![allow(clippy::unwrap_used, clippy::expect_used)]

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
