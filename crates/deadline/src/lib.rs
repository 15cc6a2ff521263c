//! One timeout policy for every layer of MetaStore: absolute [`Deadline`]s carried from the
//! client's `grpc-timeout`, a [`Budgets`] table capping how long each [`Layer`] may wait, bounded
//! waits ([`within`], [`send`]) that report expiry as one [`Expired`] error and count it in
//! `metastore_deadline_expired_total{layer}`, and a [`Registry`] of pending operations whose
//! [`Pending`] guards remove themselves on success, expiry or when the caller simply goes away,
//! tracked by the `metastore_pending_operations{registry}` gauge.
//!
//! This crate sits at the bottom of the workspace and must not know about Raft, gRPC transport
//! or mvcc: layers are named here, but what they do is their owners' business.
//!
//! # Layout
//! - `deadline`: [`Deadline`] and the `grpc-timeout` codec.
//! - `layer`: the [`Layer`] names used in budgets, errors and metric labels.
//! - `budget`: [`Budgets`], their defaults and the override syntax.
//! - `wait`: [`within`] and [`send`], the only bounded waits in the workspace, and [`pause`],
//!   the one deliberate sleep (tests, pacing).
//! - `registry`: [`Registry`] and its [`Pending`] guards.
//! - `error`: every error type.

mod budget;
mod deadline;
mod error;
mod layer;
mod registry;
mod wait;

pub use budget::Budgets;
pub use deadline::Deadline;
pub use error::{
    BudgetError, Expired, ParseLayerError, ParseTimeoutError, RegisterError, SendError, WaitError,
};
pub use layer::Layer;
pub use registry::{Pending, Registry};
pub use wait::{pause, send, within};
