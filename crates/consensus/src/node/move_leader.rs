//! Leader transfer from this member (etcd's MoveLeader), on the pause and waits of
//! [`crate::transfer`].

use std::time::Duration;

use deadline::{Deadline, Layer};
use mvcc::Backend;

use super::Node;
use crate::network::{ForwardReply, Forwarded, Rpc};
use crate::transfer::TransferError;
use crate::types::Member;

/// How many entries a transferee may lag before the leader pauses proposals to let it catch
/// up the rest (a few batches under load).
const CATCH_UP_SLACK: u64 = 64;

impl<B: Backend> Node<B> {
    /// Hands leadership to `target`, a voting member, as etcd's MoveLeader does: this member
    /// must lead; it returns once `target` leads (at once when this member is `target`).
    /// Proposals pause meanwhile and are retried with the new leader (the `transfer` module).
    ///
    /// # Errors
    /// [`TransferError`]: not the leader, a target that is not a voter, or a target that did
    /// not catch up and win within the election timeouts (or `deadline`).
    pub async fn transfer_leadership(
        &self,
        target: u64,
        deadline: Deadline,
    ) -> Result<(), TransferError> {
        let inner = &*self.inner;
        let (leading, _) = self.leading();
        if !leading {
            return Err(TransferError::NotLeader);
        }
        let member = {
            let metrics = inner.raft.metrics();
            let m = metrics.borrow();
            let membership = m.membership_config.membership();
            if !membership.voter_ids().any(|v| v == target) {
                return Err(TransferError::BadTransferee);
            }
            membership.get_node(&target).cloned()
        };
        if target == inner.id {
            return Ok(());
        }
        let member = member.ok_or(TransferError::BadTransferee)?;
        let started = std::time::Instant::now();
        // A leader refuses votes for a lease (the longest election timeout) after its election;
        // writes go on meanwhile.
        let lease_ends =
            inner.leadership.now().since + inner.election_timeout * 2 + Duration::from_millis(20);
        let wait = lease_ends.saturating_duration_since(tokio::time::Instant::now());
        if !wait.is_zero() {
            let bound = deadline.earliest(Deadline::after(wait));
            if deadline::within(Layer::Api, bound, std::future::pending::<()>())
                .await
                .is_err()
                && deadline.is_expired()
            {
                return Err(TransferError::Timeout);
            }
        }
        let me = inner.id;
        let matched_of = |m: &openraft::RaftMetrics<u64, Member>| {
            m.replication
                .as_ref()
                .and_then(|r| r.get(&target).cloned().flatten())
                .map(|l| l.index)
        };
        let leads = |m: &openraft::RaftMetrics<u64, Member>| m.current_leader == Some(me);
        let mut metrics = inner.raft.metrics();
        // As etcd, a target that lags is waited for until the deadline, with writes flowing;
        // only the last steps are taken with proposals paused, an election timeout at most.
        // After a failed attempt the target must make progress before the next one, so a
        // target that is down does not keep writes paused.
        let mut floor: Option<u64> = None;
        let _paused = loop {
            crate::transfer::until(&mut metrics, deadline, None, |m| {
                let matched = matched_of(m);
                let progressed = floor.is_none() || matched > floor;
                let near = matched.map(|i| i + CATCH_UP_SLACK) >= m.last_log_index;
                !leads(m) || (progressed && near)
            })
            .await?;
            // A second transfer while one runs is refused, as etcd's raft drops it.
            let paused = inner.pause.hold(deadline, inner.election_timeout).await?;
            // Every entry let in before the gate closed is in Raft's queue; a request behind
            // them in that queue returns once Raft has handed them all to the log.
            inner
                .raft
                .with_raft_state(|_| ())
                .await
                .map_err(|_| TransferError::Stopped)?;
            let last = inner.log.last_index().map_err(|e| {
                tracing::warn!(cause = %e, "reading the end of the log for a transfer");
                TransferError::Stopped
            })?;
            let exact =
                crate::transfer::until(&mut metrics, deadline, Some(inner.election_timeout), |m| {
                    !leads(m) || matched_of(m) >= last
                })
                .await;
            match exact {
                Ok(()) => {
                    if !leads(&inner.raft.metrics().borrow()) {
                        return Err(TransferError::NotLeader);
                    }
                    if self.ask_to_campaign(target, &member, deadline).await {
                        break paused;
                    }
                }
                Err(TransferError::Timeout) if !deadline.is_expired() => {}
                Err(e) => return Err(e),
            }
            floor = matched_of(&inner.raft.metrics().borrow());
        };
        crate::transfer::until(
            &mut metrics,
            deadline,
            Some(inner.election_timeout * 2),
            |m| m.current_leader == Some(target),
        )
        .await?;
        tracing::info!(
            target = format_args!("{target:x}"),
            took_ms = started.elapsed().as_millis() as u64,
            "leadership transferred"
        );
        Ok(())
    }

    /// Asks `target` to campaign now; whether it said it does.
    async fn ask_to_campaign(&self, target: u64, member: &Member, deadline: Deadline) -> bool {
        let half = self.inner.election_timeout / 2;
        let limit = deadline.remaining().unwrap_or(half).min(half);
        match self
            .inner
            .peers
            .call(
                target,
                member,
                Rpc::Forward,
                &Forwarded::Campaign,
                Some(limit),
            )
            .await
        {
            Ok(ForwardReply::Done) => true,
            Ok(other) => {
                tracing::warn!(target = format_args!("{target:x}"), answer = ?other, "the transferee did not campaign");
                false
            }
            Err(e) => {
                tracing::warn!(target = format_args!("{target:x}"), cause = %e, "the transferee could not be asked to campaign");
                false
            }
        }
    }
}
