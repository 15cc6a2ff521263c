//! The errors of the MVCC layer: answers a client gets, and failures that stop the node.

use serde::{Deserialize, Serialize};

use crate::auth::AuthError;
use crate::backend::Table;

/// A failure reported by a storage engine; the store cannot go on safely after one.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    /// The engine's I/O failed while doing `op` on `table`.
    #[error("storage {op} on table {table:?} failed: {cause}")]
    Io {
        /// What the engine was doing: "read", "scan", "write", "flush", ...
        op: &'static str,
        /// The table concerned, if any one.
        table: Option<Table>,
        /// The engine's own description of the failure.
        cause: String,
    },
    /// The engine refused to open its files.
    #[error("cannot open storage: {0}")]
    Open(String),
}

/// Why a command or read was answered without effect: the same answer on every member, so it
/// travels through Raft in applied results and, for a forwarded batch, between members.
///
/// This is the one refusal type of the workspace: consensus adds its own checks' refusals to it
/// and kvapi maps each variant to etcd's gRPC code and text. Applied results are not
/// persisted, but a forwarded batch's refusals travel between members in bincode, which
/// numbers variants by position: add new variants at the end.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum Refusal {
    /// A read, watch or compaction asked for a revision that compaction already removed.
    #[error("mvcc: required revision has been compacted")]
    Compacted {
        /// The revision asked for.
        requested: i64,
        /// The store's compaction point.
        compacted: i64,
    },
    /// A read or compaction asked for a revision the store has not reached.
    #[error("mvcc: required revision is a future revision")]
    FutureRevision {
        /// The revision asked for.
        requested: i64,
        /// The store's current revision.
        current: i64,
    },
    /// A put with `ignore_value` or `ignore_lease` named a key that does not exist.
    #[error("etcdserver: key not found")]
    KeyNotFound {
        /// The missing key.
        key: Vec<u8>,
    },
    /// A txn writes one key twice, or puts a key it also deletes.
    #[error("etcdserver: duplicate key given in txn request")]
    DuplicateKey {
        /// The key written twice.
        key: Vec<u8>,
    },
    /// A put, or a revoke, named a lease that does not exist.
    #[error("etcdserver: requested lease not found")]
    LeaseNotFound {
        /// The lease id.
        id: i64,
    },
    /// A grant named a lease id that is taken.
    #[error("etcdserver: lease already exists")]
    LeaseExists {
        /// The lease id.
        id: i64,
    },
    /// A command without a key.
    #[error("etcdserver: key is not provided")]
    KeyNotProvided,
    /// `ignore_value` together with a value.
    #[error("etcdserver: value is provided")]
    ValueProvided,
    /// `ignore_lease` together with a lease.
    #[error("etcdserver: lease is provided")]
    LeaseProvided,
    /// A txn over `--max-txn-ops`.
    #[error("etcdserver: too many operations in txn request")]
    TooManyOps,
    /// Keys and values over `--max-request-bytes`.
    #[error("etcdserver: request is too large")]
    RequestTooLarge,
    /// A lease TTL over etcd's `MaxLeaseTTL` (9,000,000,000 s).
    #[error("etcdserver: too large lease TTL")]
    LeaseTtlTooLarge,
    /// A write that can grow the store while a NOSPACE alarm is raised.
    #[error("etcdserver: mvcc: database space exceeded")]
    NoSpace,
    /// A write or compaction while a CORRUPT alarm is raised.
    #[error("etcdserver: corrupt cluster")]
    Corrupt,
    /// An auth request refused, or a token a member could not record.
    #[error("{0}")]
    Auth(AuthError),
    /// Any other refusal, described (Raft refused the entry, or a forwarded batch held a
    /// command no checked request could produce).
    #[error("{0}")]
    Other(String),
}

/// Every error of the MVCC layer.
///
/// [`Error::Refused`] answers one request and leaves the store healthy, as do a stopped or
/// too-large read and a bad snapshot; those for which [`Error::is_fatal`] is true mean the
/// store can no longer be trusted and the node must stop.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A deterministic answer to the request: the store is left as it was.
    #[error(transparent)]
    Refused(#[from] Refusal),
    /// The storage engine failed; the node must stop.
    #[error(transparent)]
    Backend(#[from] BackendError),
    /// Stored bytes do not decode; the node must stop.
    #[error("corrupt store: {what}")]
    Corrupt {
        /// What failed to decode, and where.
        what: String,
    },
    /// A snapshot stream is malformed or truncated; the store is left as it was.
    #[error("bad snapshot: {what}")]
    BadSnapshot {
        /// What is wrong with the stream.
        what: String,
    },
    /// A restore by an older version, which refilled the store in place, was interrupted; the
    /// store must be restored again before use. Restores now switch atomically.
    #[error("the store was being restored from a snapshot when it stopped; restore it again")]
    IncompleteRestore,
    /// A read's caller stopped it (its deadline passed, or its client left) before it finished.
    #[error("the read was stopped before it finished")]
    Stopped,
    /// A range answer would take more than the read's byte limit (`size` counts what was
    /// measured of it, `limit` is the limit).
    #[error("the answer would take {size} bytes, over the limit of {limit}")]
    TooLarge {
        /// The bytes the answer's key-values would take.
        size: usize,
        /// The limit.
        limit: usize,
    },
    /// Reading or writing a snapshot stream failed.
    #[error("snapshot i/o: {0}")]
    SnapshotIo(#[from] std::io::Error),
}

impl Error {
    /// True when the store can no longer be trusted and the node must stop.
    pub fn is_fatal(&self) -> bool {
        matches!(
            self,
            Error::Backend(_) | Error::Corrupt { .. } | Error::IncompleteRestore
        )
    }

    pub(crate) fn corrupt(what: impl Into<String>) -> Self {
        Error::Corrupt { what: what.into() }
    }
}

/// The result type of the MVCC layer.
pub type Result<T, E = Error> = std::result::Result<T, E>;
