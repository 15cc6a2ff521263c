//! Errors of the consensus layer: answers to a request, and failures that stop the node.

/// Why a proposal did not get an answer.
#[derive(Debug, thiserror::Error)]
pub enum ProposeError {
    /// The command was refused: by this layer's checks, or applied and refused by the store.
    #[error(transparent)]
    Command(#[from] mvcc::Refusal),
    /// A budget ran out before the command was applied; it may still apply later.
    #[error("etcdserver: request timed out ({0})")]
    Timeout(#[from] deadline::Expired),
    /// No leader is known, so nothing can be committed now.
    #[error("etcdserver: no leader")]
    NoLeader,
    /// Another member leads: the member a proposal was forwarded to no longer led and took
    /// nothing. [`crate::Node::propose`] tries again with the next leader within its deadline.
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

impl From<NotServed> for ProposeError {
    fn from(e: NotServed) -> Self {
        match e {
            NotServed::Timeout(expired) => ProposeError::Timeout(expired),
            NotServed::NoLeader => ProposeError::NoLeader,
            NotServed::NotLeader { leader } => ProposeError::NotLeader { leader },
            NotServed::Stopped => ProposeError::Stopped,
        }
    }
}

impl From<crate::batcher::Rejected> for ProposeError {
    fn from(rejected: crate::batcher::Rejected) -> Self {
        use crate::batcher::Rejected;
        match rejected {
            Rejected::NoLeader => ProposeError::NoLeader,
            Rejected::NotLeader(leader) => ProposeError::NotLeader { leader },
            Rejected::Stopped => ProposeError::Stopped,
            Rejected::TooManyRequests => ProposeError::TooManyRequests,
            Rejected::Command(refused) => ProposeError::Command(refused),
            Rejected::Invalid(_) => ProposeError::Command(mvcc::Refusal::Other(
                "etcdserver: the leader refused an invalid command".to_string(),
            )),
            Rejected::Other(why) => ProposeError::Command(mvcc::Refusal::Other(why)),
            Rejected::DiskFull(full) => ProposeError::DiskFull {
                path: full.path,
                free: full.free,
                needed: full.needed,
            },
        }
    }
}

/// Why a request only the leader serves (a linearizable read, a lease keep-alive or TTL, a
/// membership change) or a wait for a leader was not served.
#[derive(Clone, Debug, thiserror::Error)]
pub enum NotServed {
    /// Its budget ran out (e.g. quorum lost).
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

/// A leader's refusal of a forwarded read, lease or campaign request, as the asking member
/// reports it: a refusal of another kind means there is no leader to serve it.
impl From<crate::network::Refusal> for NotServed {
    fn from(refused: crate::network::Refusal) -> Self {
        use crate::network::Refusal;
        match refused {
            Refusal::NotLeader(Some(leader)) => NotServed::NotLeader { leader },
            Refusal::Stopped => NotServed::Stopped,
            Refusal::Timeout => NotServed::Timeout(deadline::Expired::reported(
                deadline::Layer::PeerRpc,
                std::time::Duration::ZERO,
            )),
            Refusal::NotLeader(None)
            | Refusal::TooManyRequests
            | Refusal::Invalid(_)
            | Refusal::Membership(_)
            | Refusal::Other(_) => NotServed::NoLeader,
        }
    }
}

/// How the leader refuses a forwarded request it could not serve.
impl From<NotServed> for crate::network::Refusal {
    fn from(e: NotServed) -> Self {
        use crate::network::Refusal;
        match e {
            NotServed::NotLeader { leader } => Refusal::NotLeader(Some(leader)),
            NotServed::NoLeader => Refusal::NotLeader(None),
            NotServed::Timeout(_) => Refusal::Timeout,
            NotServed::Stopped => Refusal::Stopped,
        }
    }
}

/// Why the node could not start.
#[derive(Debug, thiserror::Error)]
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
    Config(#[source] Box<openraft::ConfigError>),
    /// A wait budget is invalid.
    #[error("invalid raft configuration: {0}")]
    Budgets(#[source] deadline::BudgetError),
    /// The member's data or log directory could not be created.
    #[error("invalid raft configuration: {path}: {cause}")]
    Dir {
        /// The directory.
        path: String,
        /// What went wrong.
        #[source]
        cause: std::io::Error,
    },
    /// Raft refused to start or initialize.
    #[error("raft failed to start: {0}")]
    Raft(#[source] Box<dyn std::error::Error + Send + Sync>),
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
    #[error("member marker: {path}: {cause}")]
    Marker {
        /// The marker file, or the file it vouches for.
        path: String,
        /// What went wrong.
        #[source]
        cause: std::io::Error,
    },
    /// The member marker names no member id.
    #[error("member marker: {path}: names no member id")]
    MarkerWithoutId {
        /// The marker file.
        path: String,
    },
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
pub enum MembershipFailure {
    /// etcd's refusal of the change itself.
    #[error(transparent)]
    Refused(#[from] crate::membership::MembershipError),
    /// No leader, a timeout, or a stopped node.
    #[error(transparent)]
    NotServed(#[from] NotServed),
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
                MembershipFailure::NotServed(NotServed::NotLeader { leader })
            }
            Refusal::NotLeader(None) => MembershipFailure::NotServed(NotServed::NoLeader),
            Refusal::Timeout => MembershipFailure::NotServed(NotServed::Timeout(
                deadline::Expired::reported(deadline::Layer::Commit, std::time::Duration::ZERO),
            )),
            Refusal::Stopped => MembershipFailure::NotServed(NotServed::Stopped),
            Refusal::TooManyRequests => MembershipFailure::Other("too many requests".into()),
            Refusal::Invalid(bad) => MembershipFailure::Other(format!("invalid commands: {bad:?}")),
            Refusal::Other(why) => MembershipFailure::Other(why),
        }
    }
}
