//! Proposals: a command enters the batcher's queue, is committed and applied, and its
//! waiter gets the answer; every wait is bounded, and a proposal refused before anything was
//! appended is tried again with the next leader.

use deadline::{Deadline, Layer, SendError, WaitError};
use mvcc::Backend;

use super::Node;
use crate::batcher::Queued;
use crate::error::{NotServed, ProposeError};
use crate::types::Tagged;

impl<B: Backend> Node<B> {
    /// Replicates `command`, waits until this member applied it, and returns the store's
    /// revision after it with its answer.
    ///
    /// Entering Raft's queue is bounded by the `propose` budget, commit and apply by the
    /// `commit` budget, both capped by `deadline`. A caller that times out or goes away leaves
    /// no waiter behind (the entry itself may still commit and apply, as in etcd).
    ///
    /// # Errors
    /// [`ProposeError`]: the command's own refusal, a timeout, no leader, or a stopped node.
    pub async fn propose(
        &self,
        command: mvcc::Command,
        deadline: Deadline,
    ) -> Result<(i64, mvcc::Response), ProposeError> {
        crate::validate::check(&command, self.inner.limits)?;
        // Waits for a leader first; tries again when it was refused before anything was
        // appended (no leader after all, another leads, the leader could not be reached).
        let mut failed = None;
        let answer = loop {
            let leader = match self.await_leader(deadline, failed).await {
                Ok(leader) => leader,
                Err(e) => break Err(ProposeError::from(e)),
            };
            match self.propose_once(command.clone(), deadline).await {
                Err(ProposeError::NoLeader | ProposeError::NotLeader { .. }) => {
                    failed = Some(leader);
                }
                other => break other,
            }
        };
        // etcd counts proposals that never applied (timed out, no leader, stopped), not the
        // ones the state machine refused.
        if matches!(&answer, Err(e) if !matches!(e, ProposeError::Command(_))) {
            metrics::counter!(crate::metrics::PROPOSALS_FAILED).increment(1);
        }
        answer
    }

    /// A leader known now, or the first one known within `deadline` (capped by the
    /// `leader-wait` budget); after `failed` could not take a request, a different one or
    /// `failed` again a little later.
    pub(super) async fn await_leader(
        &self,
        deadline: Deadline,
        failed: Option<u64>,
    ) -> Result<u64, NotServed> {
        let inner = &*self.inner;
        inner
            .leadership
            .wait(&inner.budgets, deadline, failed, inner.retry_after)
            .await
    }

    async fn propose_once(
        &self,
        command: mvcc::Command,
        deadline: Deadline,
    ) -> Result<(i64, mvcc::Response), ProposeError> {
        let inner = &*self.inner;
        let budgets = &inner.budgets;
        let _room = budgets
            .run(Layer::Propose, deadline, inner.room.acquire())
            .await?
            .map_err(|_| ProposeError::Stopped)?;
        let pending = inner.waiters.register();
        let queued = Queued::now(Tagged {
            id: pending.id(),
            command,
        });
        let queued_at = queued.at;
        match deadline::send(
            Layer::Propose,
            budgets.deadline_for(Layer::Propose, deadline),
            &inner.queue,
            queued,
        )
        .await
        {
            Ok(()) => {}
            Err(SendError::Expired { expired, .. }) => return Err(ProposeError::Timeout(expired)),
            Err(_) => return Err(ProposeError::Stopped),
        }
        let answer = pending
            .wait(Layer::Commit, budgets.deadline_for(Layer::Commit, deadline))
            .await
            .map_err(wait_error)?;
        crate::stages::record("node", queued_at.elapsed(), 1);
        let applied = answer?;
        match applied.result {
            Ok(Some(response)) => Ok((applied.revision, response)),
            Ok(None) => Err(ProposeError::Command(mvcc::Refusal::Other(
                "the entry carried no command".to_string(),
            ))),
            Err(refused) => Err(ProposeError::Command(refused)),
        }
    }

    /// Waits until this member has physically removed the versions that compaction at
    /// `revision` made unreachable (etcd's `physical` compaction); removal itself runs in the
    /// background on every member once the compaction is applied.
    ///
    /// # Errors
    /// [`NotServed::Timeout`] at `deadline`; [`NotServed::Stopped`] if removal stopped.
    pub async fn wait_compaction(
        &self,
        revision: i64,
        deadline: Deadline,
    ) -> Result<(), NotServed> {
        self.inner.removal.wait(revision, deadline).await
    }
}

fn wait_error(e: WaitError) -> ProposeError {
    match e {
        WaitError::Expired(expired) => ProposeError::Timeout(expired),
        _ => ProposeError::Stopped,
    }
}
