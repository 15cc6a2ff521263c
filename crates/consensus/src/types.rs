//! The Raft type configuration and the payloads that travel through the log.

use serde::{Deserialize, Serialize};

use mvcc::Refusal;

/// A member of the cluster as Raft stores it in membership configs.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    /// Human-readable name (`--name`).
    pub name: String,
    /// URLs peers reach this member on.
    pub peer_urls: Vec<String>,
    /// URLs clients reach this member on.
    pub client_urls: Vec<String>,
}

impl std::fmt::Display for Member {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}({})", self.name, self.peer_urls.join(","))
    }
}

/// One entry's payload: the store commands one member batched into it, each tagged so the
/// proposer's local apply can answer its waiter.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Proposal {
    /// The member that proposed it.
    pub origin: u64,
    /// Which start of that member proposed it (drawn anew at every start): waiter ids restart
    /// with the process, so only this incarnation may answer the waiters named in `commands`.
    pub incarnation: u64,
    /// The proposer's batch number: its log reports when it holds the batch durably.
    pub seq: u64,
    /// What to apply, in order, each at its own revision.
    pub commands: Vec<Tagged>,
}

impl Proposal {
    /// Whether this very incarnation of `member` proposed it, so its waiter ids are that
    /// incarnation's.
    pub fn is_from(&self, member: u64, incarnation: u64) -> bool {
        self.origin == member && self.incarnation == incarnation
    }
}

/// A command with the proposer's id for the request waiting on it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tagged {
    /// The proposer's waiter id.
    pub id: u64,
    /// What to apply.
    pub command: mvcc::Command,
}

/// The answer to one applied entry.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Applied {
    /// The store's revision once the entry was applied: the header revision of the answer.
    pub revision: i64,
    /// The command's answer; `None` for entries that carry no command (blank, membership).
    pub result: Result<Option<mvcc::Response>, Refusal>,
}

openraft::declare_raft_types!(
    /// Raft types of MetaStore.
    pub TypeConfig:
        D = Proposal,
        R = Applied,
        NodeId = u64,
        Node = Member,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = crate::SnapshotData,
        AsyncRuntime = openraft::TokioRuntime,
);

/// Short names for openraft's generic types over [`TypeConfig`].
pub mod typ {
    /// A log id.
    pub type LogId = openraft::LogId<u64>;
    /// A log entry.
    pub type Entry = openraft::Entry<super::TypeConfig>;
    /// A vote.
    pub type Vote = openraft::Vote<u64>;
    /// A storage error.
    pub type StorageError = openraft::StorageError<u64>;
    /// Membership with the log id it was stored at.
    pub type StoredMembership = openraft::StoredMembership<u64, super::Member>;
    /// Snapshot metadata.
    pub type SnapshotMeta = openraft::SnapshotMeta<u64, super::Member>;
    /// A snapshot.
    pub type Snapshot = openraft::Snapshot<super::TypeConfig>;
    /// The Raft handle.
    pub type Raft = openraft::Raft<super::TypeConfig>;
}
