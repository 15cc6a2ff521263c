//! Raft for MetaStore: the replicated, durable order of every write, and linearizable reads.
//!
//! This crate owns the openraft type configuration, the Raft log in checksummed segment files (group
//! commit: one fdatasync for every append waiting), the state machine that applies committed [`mvcc::Command`]s to an
//! [`mvcc::Store`] over any [`mvcc::Backend`], snapshots (files for an engine that starts
//! empty; the store itself for a persistent one), and [`Node`], which bounds
//! every proposal and read-index wait through the `deadline` crate. It must not know about
//! gRPC services or name a storage engine: the server picks the engine.
//!
//! # Layout
//! - `types`: [`TypeConfig`], the log payload [`Proposal`] (a batch of [`Tagged`] commands),
//!   the answer [`Applied`], [`Member`].
//! - `batcher`: puts every command queued while the log is busy into one entry.
//! - `alarms`: etcd's alarms (NOSPACE, CORRUPT), applied in log order.
//! - `auth`: etcd's users, roles and permissions ([`AuthState`]), applied in log order, and
//!   each member's simple tokens.
//! - `compaction`: removes compacted versions in the background on every member.
//! - `error`: [`ProposeError`] (its refusals are [`mvcc::Refusal`]), [`NotServed`] (what only
//!   the leader serves, or a wait for one), [`StartError`].
//! - `log_store`: [`LogStore`], the Raft log and vote, over `wal`'s segment files.
//! - `floor`: how far the log may be purged on disk: what the state machine holds durably.
//! - `wal`: segment files of checksummed records, torn-tail recovery, the state file.
//! - `redb_log`: the log before segment files, migrated once at start.
//! - `stages`: where a write's time goes, a histogram per stage ([`STAGE_SECONDS`]).
//! - [`ablation`]: measurement-only cuts of the write path (feature `ablation`), for its ceilings.
//! - `state_machine`: [`StateMachine`], apply and snapshots.
//! - `snapshot_due`: when a snapshot is taken: after `--snapshot-count` applied requests.
//! - `snapshot_data`: [`SnapshotData`], a snapshot's bytes: a file, or a point in a persistent
//!   store written out only when a follower needs it.
//! - `network`: the peer transport over tonic ([`PeerService`], [`PeerNetwork`], [`PeerTls`]): Raft's
//!   messages, and what followers forward to the leader.
//! - `membership`: etcd's membership changes ([`Change`], [`MembershipError`]), member ids.
//! - `marker`: the durable note that this member was initialised ([`require_state`]), and the
//!   member and cluster ids it was given.
//! - `join`: a joining member learns the ids the cluster gave it from the members.
//! - `elections`: when a follower campaigns (etcd's randomized timeout, not openraft's).
//! - `prevote`: etcd's pre-vote, campaigning only with a majority's consent.
//! - `node`: [`Node`] and [`NodeConfig`], one file per concern: `node::start`,
//!   `node::propose`, `node::read`, `node::forward` (both sides), `node::lease`,
//!   `node::membership`, `node::move_leader`, `node::status`, `node::config`.
//! - `read_rounds`: one leadership confirmation for every read that arrived before it.
//! - `lessor`, `lease_loop`: lease expiry times, and the leader's revokes and checkpoints.
//! - `leader`: who leads, one shared watch that requests finding no leader wait on.
//! - `incarnation`: the id that tells this start of a member from its earlier ones.
//! - `validate`: the checks every command passes before it enters the log, forwarded or not.
//! - `transfer`: leader transfer (etcd's MoveLeader) on openraft's `transfer_leader`.
//! - `corrupt`: etcd's corruption checks, members comparing key-space hashes.
//! - [`metrics`]: the names (etcd's) of the metrics this crate records.

pub mod ablation;
mod alarms;
mod auth;
mod batcher;
mod compaction;
mod corrupt;
mod elections;
mod error;
mod floor;
mod incarnation;
mod join;
mod leader;
mod lease_loop;
mod lessor;
mod log_store;
mod marker;
mod membership;
pub mod metrics;
mod network;
mod node;
mod prevote;
mod read_rounds;
mod redb_log;
mod snapshot_data;
mod snapshot_due;
mod stages;
mod state_machine;
#[cfg(test)]
mod test_support;
mod transfer;
mod types;
mod validate;
mod wal;

pub use auth::{Access, Auth, AuthState, Tokens, User, ROOT};
pub use corrupt::{corruption_check_loop, Inconsistency, PeerHash};
pub use error::{MembershipFailure, NotServed, ProposeError, StartError};
pub use log_store::{LogCloser, LogStore};
pub use marker::{require as require_state, MARKER};
pub use membership::{cluster_id, member_id, Change, MembershipError};
pub use mvcc::AuthError;
pub use network::{PeerNetwork, PeerService, PeerTls, Peers};
pub use node::{Node, NodeConfig, NodeStatus};
pub use snapshot_data::SnapshotData;
pub use stages::{record_stage, STAGES, STAGE_SECONDS};
pub use state_machine::{applied_auth, seed_auth, SnapshotBuilder, StateMachine};
pub use transfer::TransferError;
pub use types::{typ, Applied, Member, MemberId, Proposal, Tagged, TypeConfig};
