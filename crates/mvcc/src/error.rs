//! The errors of the MVCC layer: answers a client gets, and failures that stop the node.

use crate::backend::Table;

/// A failure reported by a storage engine; the store cannot go on safely after one.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
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

/// Every error of the MVCC layer.
///
/// Most variants are answers to one request and leave the store healthy; those for which
/// [`Error::is_fatal`] is true mean the store can no longer be trusted and the node must stop.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
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
