//! What a member reports about itself ([`NodeStatus`]), and waiting for a leader.

use deadline::{Deadline, Layer};
use mvcc::Backend;
use openraft::type_config::async_runtime::WatchReceiver as _;

use super::Node;
use crate::error::NotServed;
use crate::types::Member;

/// What a member reports about itself.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeStatus {
    /// This member's id.
    pub id: u64,
    /// The leader this member knows of.
    pub leader: Option<u64>,
    /// The current Raft term.
    pub term: u64,
    /// Index of the last log entry.
    pub last_log_index: u64,
    /// Index of the last applied entry.
    pub applied_index: u64,
    /// Index of the last entry the newest snapshot holds (0 before the first).
    pub snapshot_index: u64,
    /// The members of the current configuration, with whether each is a voter.
    pub members: Vec<(u64, Member, bool)>,
}

impl<B: Backend> Node<B> {
    /// The current Raft term, cheaply, for response headers.
    pub fn term(&self) -> u64 {
        self.inner.raft.metrics().borrow_watched().current_term
    }

    /// What this member knows about the cluster now.
    pub fn status(&self) -> NodeStatus {
        let metrics = self.inner.raft.metrics();
        let m = metrics.borrow_watched();
        NodeStatus {
            id: self.inner.id,
            leader: m.current_leader.map(|l| l.0),
            term: m.current_term,
            last_log_index: m.last_log_index.unwrap_or(0),
            // openraft counts an apply a moment after its proposers were answered.
            applied_index: m.last_applied.map_or(0, |l| l.index).max(
                self.inner
                    .applied_index
                    .load(std::sync::atomic::Ordering::Acquire),
            ),
            snapshot_index: m.snapshot.map_or(0, |l| l.index),
            members: self.listing(m.membership_config.membership()),
        }
    }

    /// Whether this member knows a leader now.
    pub fn has_leader(&self) -> bool {
        self.inner.leadership.now().leader.is_some()
    }

    /// Resolves once this member has had no leader for `elections` election timeouts in a row
    /// (etcd cancels streams that require a leader then).
    pub async fn leaderless_for(&self, elections: u32) {
        let period = self.inner.election_timeout.saturating_mul(elections);
        self.inner.leadership.leaderless_for(period).await;
    }

    /// Waits (within `deadline`) until this member knows a leader; for start-up and tests.
    ///
    /// # Errors
    /// [`NotServed::Timeout`] when no leader appears in time.
    pub async fn wait_for_leader(&self, deadline: Deadline) -> Result<u64, NotServed> {
        let mut metrics = self.inner.raft.metrics();
        let found = deadline::within(Layer::Api, deadline, async {
            loop {
                if let Some(leader) = metrics.borrow_watched().current_leader {
                    return Some(leader.0);
                }
                if metrics.changed().await.is_err() {
                    return None;
                }
            }
        })
        .await?;
        found.ok_or(NotServed::Stopped)
    }
}
