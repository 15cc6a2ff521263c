//! Linearizable reads: a read index confirmed by the leader's quorum (here, or asked of the
//! leader), shared by every read of a round ([`crate::read_rounds`]).

use deadline::{Deadline, Layer};
use mvcc::Backend;
use openraft::error::{LinearizableReadError, RaftError};
use openraft::type_config::async_runtime::WatchReceiver as _;

use super::forward::not_served;
use super::Node;
use crate::error::NotServed;
use crate::network::{ForwardReply, Forwarded};
use crate::read_rounds::ReadRounds;

impl<B: Backend> Node<B> {
    /// Waits until this member has applied everything committed before the call, as confirmed
    /// by a quorum (Raft's read index), so a local read after it is linearizable. Concurrent
    /// reads share one confirmation (`read_rounds`).
    ///
    /// # Errors
    /// [`NotServed`]: the `read-index` budget ran out, no leader, or a stopped node.
    pub async fn read_index(&self, deadline: Deadline) -> Result<(), NotServed> {
        // The planted bug the chaos checker must catch (never in a normal build).
        if cfg!(feature = "stale-follower-reads")
            && self
                .leader()
                .is_ok_and(|(leader, _)| leader != self.inner.id)
        {
            return Ok(());
        }
        self.with_leader(deadline, || self.inner.reads.read_index(deadline))
            .await
            .map(drop)
    }

    /// How many read-index rounds this member has run; each served every linearizable read
    /// queued when it began.
    pub fn read_rounds(&self) -> u64 {
        self.inner
            .reads
            .rounds
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The read rounds, for their task.
    pub(crate) fn read_rounds_handle(&self) -> &ReadRounds {
        &self.inner.reads
    }

    /// One read index for a round of reads: confirmed by this member as the leader, or asked
    /// of the leader; returned once this member has applied that far. Bounded by the
    /// `read-index` budget.
    pub(crate) async fn confirm_read(&self) -> Result<u64, NotServed> {
        let deadline = self
            .inner
            .budgets
            .deadline_for(Layer::ReadIndex, Deadline::none());
        let index = match self.leader()? {
            (leader, _) if leader == self.inner.id => {
                // openraft waits for the local apply to reach the read index too.
                return self.read_index_as_leader(deadline).await;
            }
            (leader, member) => {
                match self
                    .forward(leader, &member, &Forwarded::ReadIndex, deadline)
                    .await?
                {
                    ForwardReply::Index(index) => index,
                    other => return Err(not_served(other)),
                }
            }
        };
        let mut metrics = self.inner.raft.metrics();
        let applied = async {
            loop {
                let at = metrics.borrow_watched().last_applied.map_or(0, |l| l.index);
                if at >= index {
                    return true;
                }
                if metrics.changed().await.is_err() {
                    return false;
                }
            }
        };
        match deadline::within(Layer::ReadIndex, deadline, applied).await? {
            true => Ok(index),
            false => Err(NotServed::Stopped),
        }
    }

    /// The leader's half of a read index: confirm leadership with a quorum, wait for the local
    /// apply, answer the index.
    async fn read_index_as_leader(&self, deadline: Deadline) -> Result<u64, NotServed> {
        let answer = deadline::within(
            Layer::ReadIndex,
            deadline,
            self.inner
                .raft
                .ensure_linearizable(openraft::raft::ReadPolicy::ReadIndex),
        )
        .await?;
        match answer {
            Ok(read) => Ok(read.log_id().index),
            Err(RaftError::APIError(LinearizableReadError::ForwardToLeader(f))) => Err(f
                .leader_id
                .map_or(NotServed::NoLeader, |leader| NotServed::NotLeader {
                    leader: leader.0,
                })),
            Err(RaftError::APIError(LinearizableReadError::QuorumNotEnough(_))) => {
                Err(NotServed::NoLeader)
            }
            Err(RaftError::Fatal(_)) => Err(NotServed::Stopped),
        }
    }
}
