//! etcd's multi-version key-value model, implemented once for every storage engine.
//!
//! This crate owns revisions, key-values, events, range reads with all of etcd's options, txn
//! compares and branches, compaction, the key-space hash, snapshots, and the [`Backend`] trait
//! that storage engines implement. It knows nothing of Raft, gRPC or any particular engine:
//! consensus orders [`Command`]s and calls [`Store::apply`]; engines only store ordered bytes.
//!
//! # Layout
//! - `types`: the data model and the requests and responses of etcd's KV API.
//! - `error`: [`Error`]: answers a client gets, and failures that stop the node.
//! - `auth`: etcd's auth requests (users, roles, permissions) as the log carries them.
//! - `keys`: etcd's `key`/`range_end` conventions ([`KeyRange`], [`prefix_end`]).
//! - `backend`: the [`Backend`] seam and its [`WriteBatch`].
//! - `codec`: how versions are laid out in the backend's tables.
//! - `read`: visible versions at a revision, and building range answers.
//! - `txn`: compares and the duplicate-key rule.
//! - `lease`: leases as the store keeps them ([`LeaseInfo`]) and the lease-to-keys index.
//! - `store`: [`Store`]: its state, reads, events and compaction.
//! - `apply`: [`Store::apply`] and its `Writer`, which evaluates commands against the backend
//!   plus the call's own writes and builds the one batch that records them.
//! - `snapshot`: streamed snapshots and restore.
//! - `export`: the content in revision order, for other formats ([`Export`]), and import.
//! - `etcd_hash`: the key-space hash, as etcd computes it.
//! - [`durable`]: creating, renaming and removing files so their names survive a power cut.
//! - `conformance` (feature `conformance`): the behaviour suite every engine must pass.

mod apply;
mod auth;
mod backend;
mod codec;
pub mod durable;
mod error;
mod etcd_hash;
mod export;
mod keys;
mod lease;
mod read;
mod snapshot;
mod store;
mod txn;
mod types;

#[cfg(feature = "conformance")]
pub mod conformance;

pub use apply::Outcome;
pub use auth::{AuthError, AuthRequest, AuthResponse, PermType, Permission};
pub use backend::{
    first_by_range, is_empty_interval, Backend, BatchOp, Entry, Reads, Replacement, Table, Visitor,
    WriteBatch,
};
pub use error::{BackendError, Error, Refusal, Result};
pub use export::{Export, LeaseRecord, Version};
pub use keys::{prefix_end, KeyRange};
pub use lease::LeaseInfo;
pub use read::ReadLimits;
pub use snapshot::{SnapshotInfo, SnapshotReader};
pub use store::{CompactionProgress, EventSink, Store, Wanted};
pub use txn::check_txn_keys;
pub use types::{
    alarm_kind, de_bytes, ser_bytes, AlarmAction, AlarmMember, AlarmRequest, Command,
    CompactRequest, Compare, CompareResult, CompareTarget, DeleteRangeRequest, DeleteRangeResponse,
    Event, EventKind, KeyValue, KvHash, LeaseCheckpointRequest, LeaseGrantRequest,
    LeaseRevokeRequest, PutRequest, PutResponse, RangeRequest, RangeResponse, RequestOp, Response,
    ResponseOp, SortOrder, SortTarget, TxnRequest, TxnResponse, MAX_TXN_NESTING,
};
