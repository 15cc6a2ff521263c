//! The Raft type configuration and the payloads that travel through the log.

use serde::{Deserialize, Serialize};

use mvcc::Refusal;

/// A member of the cluster as Raft stores it in membership configs.
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
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

impl std::fmt::Display for Proposal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "batch {} of {:x} ({} commands)",
            self.seq,
            self.origin,
            self.commands.len()
        )
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

impl std::fmt::Display for Applied {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "applied at revision {}", self.revision)
    }
}

/// The answer to one applied entry.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Applied {
    /// The store's revision once the entry was applied: the header revision of the answer.
    pub revision: i64,
    /// The command's answer; `None` for entries that carry no command (blank, membership).
    pub result: Result<Option<mvcc::Response>, Refusal>,
}

/// A member's id as Raft carries it: printed in hex wherever it is shown (as etcd prints
/// member ids), openraft's own log lines included; stored and sent as the bare number.
#[derive(Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct MemberId(pub u64);

impl std::fmt::Display for MemberId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:x}", self.0)
    }
}

impl std::fmt::Debug for MemberId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:x}", self.0)
    }
}

impl From<u64> for MemberId {
    fn from(id: u64) -> Self {
        Self(id)
    }
}

impl From<MemberId> for u64 {
    fn from(id: MemberId) -> Self {
        id.0
    }
}

openraft::declare_raft_types!(
    /// Raft types of MetaStore.
    pub TypeConfig:
        D = Proposal,
        R = Applied,
        NodeId = MemberId,
        Node = Member,
        AsyncRuntime = openraft::impls::TokioRuntime,
);

/// Short names for openraft's generic types over [`TypeConfig`].
pub mod typ {
    use openraft::type_config::alias as a;

    use super::TypeConfig as C;

    /// The committed part of a leader id: the term and the member that led it.
    pub type CommittedLeaderId = a::CommittedLeaderIdOf<C>;
    /// A log id.
    pub type LogId = a::LogIdOf<C>;
    /// A log entry.
    pub type Entry = a::EntryOf<C>;
    /// An entry's payload.
    pub type EntryPayload = a::EntryPayloadOf<C>;
    /// A vote.
    pub type Vote = a::VoteOf<C>;
    /// A leader id within a vote.
    pub type LeaderId = a::LeaderIdOf<C>;
    /// Membership with the log id it was stored at.
    pub type StoredMembership = a::StoredMembershipOf<C>;
    /// A membership config.
    pub type Membership = openraft::Membership<u64, super::Member>;
    /// Snapshot metadata.
    pub type SnapshotMeta = a::SnapshotMetaOf<C>;
    /// A snapshot.
    pub type Snapshot = a::SnapshotOf<C, crate::SnapshotData>;
    /// Log state.
    pub type LogState = openraft::storage::LogState<C>;
    /// The Raft handle of a member whose store is on `B`.
    pub type Raft<B> = openraft::Raft<C, crate::StateMachine<B>>;
    /// The committed leader id of `node` in `term`, as log ids carry it.
    pub fn committed_leader(term: u64, node: u64) -> CommittedLeaderId {
        openraft::impls::leader_id_adv::LeaderId {
            term,
            node_id: super::MemberId(node),
        }
    }

    /// The id of entry `index`, written by the leader `node` of `term`.
    pub fn log_id(term: u64, node: u64, index: u64) -> LogId {
        LogId::new(committed_leader(term, node), index)
    }

    /// Raft's metrics.
    pub type RaftMetrics = openraft::RaftMetrics<C>;
    /// A receiver of Raft's metrics as they change.
    pub type MetricsWatch = a::WatchReceiverOf<C, RaftMetrics>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn openraft_prints_member_ids_in_hex_and_stores_the_bare_number() {
        let id = 0x06de_4c8a_6eda_5fe0_u64;
        let vote = typ::Vote::new(3, MemberId(id));
        let shown = format!("{vote} {vote:?}");
        assert!(shown.contains("6de4c8a6eda5fe0"), "{shown}");
        assert!(!shown.contains(&id.to_string()), "{shown}");
        // Logs, snapshots and peers written before the id had its own type read the same.
        let stored = bincode::serialize(&vote).expect("encode");
        let before: openraft::Vote<openraft::impls::leader_id_adv::LeaderId<u64, u64>> =
            bincode::deserialize(&stored).expect("decode");
        assert_eq!(before.leader_id().node_id, id);
    }
}
