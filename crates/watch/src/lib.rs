//! etcd's watch fan-out: the [`Hub`] takes every applied revision's events from the MVCC store
//! (it is the store's [`mvcc::EventSink`]) and delivers them to watchers, each through a bounded
//! queue the caller owns. Matching costs work proportional to the watchers a key matches, not to
//! all watchers. A watcher whose queue is full is never waited for: it becomes *unsynced* and one
//! catch-up task replays its missed revisions from the store's history ([`History`]) until it
//! rejoins the live stream, so deliveries stay ordered, whole-revision, gap-free and unique; a
//! watcher whose next revision was compacted away is cancelled with the compaction point, as in
//! etcd.
//!
//! This crate must not know about gRPC, Raft or any storage engine: `kvapi` turns deliveries
//! into watch responses, and `server` plugs the hub into the store that consensus applies to.
//!
//! # Layout
//! - `history`: the [`History`] seam the catch-up task reads through, implemented for
//!   [`mvcc::Store`].
//! - `config`: [`HubConfig`] and its validation.
//! - `spec`: what a caller asks for ([`WatchSpec`]) and what it receives ([`Delivery`]).
//! - `index`: finding the synced watchers whose range holds a key.
//! - `hub`: [`Hub`], registration ([`WatchGuard`]), live publishing, and the state both share.
//! - `catch_up`: the task that replays history to unsynced watchers and lets them rejoin.
//! - `metrics`: the metric names this crate reports.
//! - `error`: every error type.

mod catch_up;
mod config;
mod error;
mod history;
mod hub;
mod index;
mod metrics;
mod spec;

pub use config::HubConfig;
pub use error::{HubError, WatchError};
pub use history::History;
pub use hub::{Hub, HubStats, WatchGuard};
pub use spec::{event_bytes, Charge, Delivery, WatchId, WatchSpec};
