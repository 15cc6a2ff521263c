//! Errors of the consensus layer: answers to a request, and failures that stop the node.

use serde::{Deserialize, Serialize};

/// Why an applied command changed nothing: a deterministic answer, the same on every member.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[non_exhaustive]
pub enum CommandError {
    /// The revision asked for was compacted.
    #[error("mvcc: required revision has been compacted")]
    Compacted {
        /// The revision asked for.
        requested: i64,
        /// The compaction point.
        compacted: i64,
    },
    /// The revision asked for is beyond the store's.
    #[error("mvcc: required revision is a future revision")]
    FutureRevision {
        /// The revision asked for.
        requested: i64,
        /// The store's revision.
        current: i64,
    },
    /// `ignore_value`/`ignore_lease` on a missing key.
    #[error("etcdserver: key not found")]
    KeyNotFound,
    /// A txn writes one key twice.
    #[error("etcdserver: duplicate key given in txn request")]
    DuplicateKey,
    /// A put or revoke named a lease that does not exist.
    #[error("etcdserver: requested lease not found")]
    LeaseNotFound,
    /// A grant named a lease id that is taken.
    #[error("etcdserver: lease already exists")]
    LeaseExists,
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
    Auth(crate::auth::AuthError),
    /// Any other refusal, described.
    #[error("{0}")]
    Other(String),
}

impl From<mvcc::Error> for CommandError {
    fn from(e: mvcc::Error) -> Self {
        match e {
            mvcc::Error::Compacted {
                requested,
                compacted,
            } => CommandError::Compacted {
                requested,
                compacted,
            },
            mvcc::Error::FutureRevision { requested, current } => {
                CommandError::FutureRevision { requested, current }
            }
            mvcc::Error::KeyNotFound { .. } => CommandError::KeyNotFound,
            mvcc::Error::DuplicateKey { .. } => CommandError::DuplicateKey,
            mvcc::Error::LeaseNotFound { .. } => CommandError::LeaseNotFound,
            mvcc::Error::LeaseExists { .. } => CommandError::LeaseExists,
            other => CommandError::Other(other.to_string()),
        }
    }
}

/// Why a proposal did not get an answer.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ProposeError {
    /// The command was applied and refused.
    #[error(transparent)]
    Command(#[from] CommandError),
    /// A budget ran out before the command was applied; it may still apply later.
    #[error("etcdserver: request timed out ({0})")]
    Timeout(#[from] deadline::Expired),
    /// No leader is known, so nothing can be committed now.
    #[error("etcdserver: no leader")]
    NoLeader,
    /// Another member leads; this member does not forward yet.
    #[error("etcdserver: not leader (leader is {leader})")]
    NotLeader {
        /// The leader's id.
        leader: u64,
    },
    /// Too many entries wait for their apply; etcd's answer to an overloaded member.
    #[error("etcdserver: too many requests")]
    TooManyRequests,
    /// The node is stopping or has stopped.
    #[error("etcdserver: server stopped")]
    Stopped,
    /// The disk of this member's Raft log is (nearly) full: nothing was appended, and writes
    /// are taken again once space returns.
    #[error(
        "etcdserver: no space left on device: {path} has {free} bytes free, writes need {needed}"
    )]
    DiskFull {
        /// The log's directory.
        path: String,
        /// Bytes free for this process on its filesystem.
        free: u64,
        /// Bytes that must be free to take writes.
        needed: u64,
    },
}

impl From<ReadError> for ProposeError {
    fn from(e: ReadError) -> Self {
        match e {
            ReadError::Timeout(expired) => ProposeError::Timeout(expired),
            ReadError::NoLeader => ProposeError::NoLeader,
            ReadError::NotLeader { leader } => ProposeError::NotLeader { leader },
            ReadError::Stopped => ProposeError::Stopped,
        }
    }
}

/// Why a linearizable read could not be served.
#[derive(Clone, Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReadError {
    /// The read-index budget ran out (e.g. quorum lost).
    #[error("etcdserver: request timed out ({0})")]
    Timeout(#[from] deadline::Expired),
    /// No leader is known.
    #[error("etcdserver: no leader")]
    NoLeader,
    /// Another member leads; this one cannot answer by itself.
    #[error("etcdserver: not leader (leader is {leader})")]
    NotLeader {
        /// The leader's id.
        leader: u64,
    },
    /// The node is stopping or has stopped.
    #[error("etcdserver: server stopped")]
    Stopped,
}

/// Why the node could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StartError {
    /// The Raft log could not be opened.
    #[error("cannot open the raft log at {path}: {cause}")]
    Log {
        /// The log file.
        path: String,
        /// What went wrong.
        cause: String,
    },
    /// The store could not be opened or rebuilt.
    #[error("cannot open the store: {0}")]
    Store(#[from] mvcc::Error),
    /// The configuration is invalid.
    #[error("invalid raft configuration: {0}")]
    Config(String),
    /// Raft refused to start or initialize.
    #[error("raft failed to start: {0}")]
    Raft(String),
    /// The member marker says this member was initialised, but state it vouches for is gone.
    #[error(
        "refusing to start: {what}, but {marker} says this member was initialised: its \
         state was lost (restore the member directory from a backup, or remove the member \
         from the cluster and add it again with an empty data dir); starting would silently \
         bootstrap a new, empty cluster"
    )]
    Missing {
        /// What is missing.
        what: String,
        /// The marker file.
        marker: String,
    },
    /// The member marker could not be read or written.
    #[error("member marker: {0}")]
    Marker(String),
    /// A joining member could not learn its id from the cluster.
    #[error("joining the cluster: {0}")]
    Join(String),
    /// Snapshot files could not be read or written.
    #[error("snapshot directory {path}: {cause}")]
    Snapshots {
        /// The directory.
        path: String,
        /// What went wrong.
        cause: String,
    },
}

/// Why a membership change failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MembershipFailure {
    /// etcd's refusal of the change itself.
    #[error(transparent)]
    Refused(#[from] crate::membership::MembershipError),
    /// No leader, a timeout, or a stopped node.
    #[error(transparent)]
    Read(#[from] ReadError),
    /// Raft refused it for another reason.
    #[error("etcdserver: {0}")]
    Other(String),
}

impl MembershipFailure {
    pub(crate) fn from_refusal(r: crate::network::Refusal) -> Self {
        use crate::network::Refusal;
        match r {
            Refusal::Membership(e) => MembershipFailure::Refused(e),
            Refusal::NotLeader(Some(leader)) => {
                MembershipFailure::Read(ReadError::NotLeader { leader })
            }
            Refusal::NotLeader(None) => MembershipFailure::Read(ReadError::NoLeader),
            Refusal::Timeout => MembershipFailure::Read(ReadError::Timeout(
                deadline::Expired::reported(deadline::Layer::Commit, std::time::Duration::ZERO),
            )),
            Refusal::Stopped => MembershipFailure::Read(ReadError::Stopped),
            Refusal::TooManyRequests => MembershipFailure::Other("too many requests".into()),
            Refusal::Invalid(bad) => MembershipFailure::Other(format!("invalid commands: {bad:?}")),
            Refusal::Other(why) => MembershipFailure::Other(why),
        }
    }
}
