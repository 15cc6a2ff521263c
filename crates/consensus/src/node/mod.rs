//! A running member: Raft plus the store, with bounded proposals and linearizable reads.
//!
//! [`Node`] and the state its parts share live here; each concern has its own file, all of
//! them `impl` blocks on [`Node`].
//!
//! # Layout
//! - `config`: [`NodeConfig`], and the openraft configuration it gives.
//! - `start`: opening the log and the store, starting Raft and the member's tasks; shutdown.
//! - `propose`: bounded proposals through the batcher, retried with a new leader.
//! - `read`: linearizable reads (read index), as the leader or asked of it.
//! - `forward`: both sides of forwarding: a follower's calls to the leader, the leader's
//!   answers.
//! - `lease`: lease keep-alives and remaining TTLs, served by the leader.
//! - `membership`: membership changes, and the voters waiting to be promoted.
//! - `move_leader`: leader transfer (etcd's MoveLeader) from this member.
//! - `status`: [`NodeStatus`], the term, waiting for a leader.

mod config;
mod forward;
mod lease;
mod membership;
mod move_leader;
mod propose;
mod read;
mod start;
mod status;

use openraft::type_config::async_runtime::WatchReceiver as _;
use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use deadline::{Budgets, Registry};
use mvcc::{Backend, Store};
use tokio::sync::{mpsc, Semaphore};
use tokio_util::sync::CancellationToken;

use crate::alarms::Alarms;
use crate::auth::Auth;
use crate::batcher::{Answer, Queued};
use crate::compaction::Removal;
use crate::leader::Leadership;
use crate::lessor::Lessor;
use crate::log_store::{LogCloser, LogStore};
use crate::network::Peers;
use crate::read_rounds::ReadRounds;
use crate::types::typ::Raft;
use crate::types::MemberId;

pub use config::NodeConfig;
pub use status::NodeStatus;

/// A running member. Cheap to clone; clones share the member.
pub struct Node<B: Backend> {
    inner: Arc<Inner<B>>,
}

impl<B: Backend> Clone for Node<B> {
    fn clone(&self) -> Self {
        Self {
            inner: Arc::clone(&self.inner),
        }
    }
}

/// What the clones of a [`Node`] share; each concern's file uses its own fields.
struct Inner<B: Backend> {
    id: u64,
    raft: Raft<B>,
    store: Store<B>,
    waiters: Registry<Answer>,
    budgets: Budgets,
    room: Semaphore,
    /// Commands waiting for the batcher to put them into an entry.
    queue: mpsc::Sender<Queued>,
    /// Stops the batcher and the lease expiry task.
    stop: CancellationToken,
    lessor: Arc<Lessor>,
    /// etcd's minimum lease TTL: 1.5 election timeouts, rounded up to whole seconds.
    min_lease_ttl: i64,
    peers: Peers,
    cluster_token: String,
    /// The cluster id: the marker's, the one the cluster gave a joining member, or derived
    /// from the cluster token at a first start.
    cluster_id: u64,
    log_closer: std::sync::Mutex<Option<LogCloser>>,
    /// A handle on the log Raft writes, to learn where it ends ([`Node::transfer_leadership`]).
    log: LogStore,
    /// Leadership confirmations shared by concurrent linearizable reads.
    reads: ReadRounds,
    /// What one command may carry, for commands proposed here or forwarded here.
    limits: crate::validate::Limits,
    /// Physical compaction's progress on this member.
    removal: Arc<Removal>,
    /// The last entry the state machine applied, as it publishes it before answering.
    applied_index: Arc<std::sync::atomic::AtomicU64>,
    /// Who leads: requests that find no leader wait on it.
    leadership: Leadership,
    /// How long after a leader could not be reached it is tried again, if no other is known.
    retry_after: Duration,
    /// The election timeout, for watch streams that require a leader.
    election_timeout: Duration,
    /// `--strict-reconfig-check`.
    strict_reconfig_check: bool,
    /// The alarms as this member last applied them.
    alarms: Arc<Alarms>,
    /// The auth state as this member last applied it, and its tokens.
    auth: Arc<Auth>,
    /// Members added as voters that this leader promotes once they catch up
    /// ([`crate::membership::promote_when_caught_up`]).
    pending_voters: std::sync::Mutex<BTreeSet<u64>>,
    /// Held by each membership change this member makes as leader, until it is committed:
    /// openraft refuses a change while another is uncommitted (and logs it as an error), so
    /// ours queue instead, as etcd's do, each waiting within its own deadline.
    changes: tokio::sync::Mutex<()>,
    /// Set while this leader hands leadership over ([`crate::transfer`]).
    pause: crate::transfer::Pause,
    /// When a leader last reached this member (its start, before any did), for pre-vote.
    leader_contact: std::sync::Mutex<std::time::Instant>,
    /// The highest vote a candidate asked this member for (see [`crate::elections`]).
    asked: crate::elections::Asked,
    /// Where a snapshot received from the leader is written.
    incoming_snapshot: std::path::PathBuf,
}

impl<B: Backend> Node<B> {
    /// The local store, for serializable reads.
    pub fn store(&self) -> &Store<B> {
        &self.inner.store
    }

    /// The cluster token member ids are derived with.
    pub fn cluster_token(&self) -> &str {
        &self.inner.cluster_token
    }

    /// Notes that the current leader reached this member (pre-vote's "heard from a leader").
    pub(crate) fn note_leader_contact(&self) {
        *self
            .inner
            .leader_contact
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = std::time::Instant::now();
    }

    /// The highest vote a candidate asked this member for.
    pub(crate) fn asked(&self) -> &crate::elections::Asked {
        &self.inner.asked
    }

    /// How long no leader has reached this member.
    pub(crate) fn quiet_for(&self) -> Duration {
        self.inner
            .leader_contact
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .elapsed()
    }

    /// The election timeout.
    pub(crate) fn election_timeout(&self) -> Duration {
        self.inner.election_timeout
    }

    /// Cancelled when the node stops.
    pub(crate) fn stop_token(&self) -> CancellationToken {
        self.inner.stop.clone()
    }

    /// The cluster id this member serves under (etcd's `cluster_id` in every header).
    pub fn cluster_id(&self) -> u64 {
        self.inner.cluster_id
    }

    /// This member's id.
    pub fn id(&self) -> u64 {
        self.inner.id
    }

    /// How many proposals wait for their apply now.
    pub fn pending(&self) -> usize {
        self.inner.waiters.len()
    }

    /// Whether this member leads now, and the term.
    pub(crate) fn leading(&self) -> (bool, u64) {
        let metrics = self.inner.raft.metrics();
        let m = metrics.borrow_watched();
        (
            m.current_leader == Some(MemberId(self.inner.id)),
            m.current_term,
        )
    }

    pub(crate) fn peers(&self) -> &Peers {
        &self.inner.peers
    }

    pub(crate) fn incoming_snapshot_path(&self) -> &std::path::Path {
        &self.inner.incoming_snapshot
    }

    pub(crate) fn raft(&self) -> &Raft<B> {
        &self.inner.raft
    }

    /// This member's turn to change the membership, waited for until `limit`; `None` when
    /// it did not come in time.
    pub(crate) async fn change_turn(
        &self,
        limit: deadline::Deadline,
    ) -> Option<tokio::sync::MutexGuard<'_, ()>> {
        deadline::within(deadline::Layer::Commit, limit, self.inner.changes.lock())
            .await
            .ok()
    }

    pub(crate) fn raft_metrics(&self) -> crate::types::typ::MetricsWatch {
        self.inner.raft.metrics()
    }

    pub(crate) fn budgets(&self) -> &Budgets {
        &self.inner.budgets
    }

    pub(crate) fn lessor(&self) -> &Lessor {
        &self.inner.lessor
    }

    pub(crate) fn stopping(&self) -> &CancellationToken {
        &self.inner.stop
    }

    /// The auth state as this member last applied it, with this member's simple tokens.
    pub fn auth(&self) -> &Auth {
        &self.inner.auth
    }

    /// Every raised alarm as this member last applied it, ordered by member then kind.
    pub fn alarms(&self) -> Vec<mvcc::AlarmMember> {
        self.inner.alarms.list()
    }

    /// Whether any member's alarm of `kind` ([`mvcc::alarm_kind`]) is raised, as last applied
    /// here.
    pub fn alarm_raised(&self, kind: i32) -> bool {
        self.inner.alarms.any(kind)
    }
}
