//! Leader transfer from this member (etcd's MoveLeader), on the pause and waits of
//! [`crate::transfer`].

use deadline::Deadline;
use mvcc::Backend;
use openraft::error::RaftError;
use openraft::raft::{TransferLeaderRequest, TransferLeaderResponse};
use openraft::type_config::async_runtime::WatchReceiver as _;

use super::Node;
use crate::network::Rpc;
use crate::transfer::TransferError;
use crate::types::{MemberId, TypeConfig};

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
        // openraft keeps every voter among the membership's nodes, so a voter has an address.
        let voter = inner
            .raft
            .metrics()
            .borrow_watched()
            .membership_config
            .membership()
            .voter_ids()
            .any(|v| v.0 == target);
        if !voter {
            return Err(TransferError::BadTransferee);
        }
        if target == inner.id {
            return Ok(());
        }
        let started = std::time::Instant::now();
        let me = inner.id;
        let matched_of = |m: &crate::types::typ::RaftMetrics| {
            m.replication
                .as_ref()
                .and_then(|r| r.get(&MemberId(target)).cloned().flatten())
                .map(|l| l.index)
        };
        let leads = |m: &crate::types::typ::RaftMetrics| m.current_leader == Some(MemberId(me));
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
                    if !leads(&inner.raft.metrics().borrow_watched()) {
                        return Err(TransferError::NotLeader);
                    }
                    if self.hand_over(target).await {
                        break paused;
                    }
                }
                Err(TransferError::Timeout) if !deadline.is_expired() => {}
                Err(e) => return Err(e),
            }
            floor = matched_of(&inner.raft.metrics().borrow_watched());
        };
        let taken = crate::transfer::until(
            &mut metrics,
            deadline,
            Some(inner.election_timeout * 2),
            |m| m.current_leader == Some(MemberId(target)),
        )
        .await;
        taken?;
        tracing::info!(
            target = format_args!("{target:x}"),
            took_ms = started.elapsed().as_millis() as u64,
            "leadership transferred"
        );
        Ok(())
    }

    /// Has every voter hand leadership to `target` (caught up, proposals paused), with
    /// openraft's TransferLeader: each drops its leader lease for `target`, which campaigns at
    /// once with a vote that this leader, too, grants. The leader itself is not told: openraft
    /// would stop taking writes until it lost leadership, even if `target` never took over.
    /// Whether `target` took the request.
    async fn hand_over(&self, target: u64) -> bool {
        let inner = &*self.inner;
        let (vote, matched, voters) = {
            let metrics = inner.raft.metrics();
            let m = metrics.borrow_watched();
            let matched = m
                .replication
                .as_ref()
                .and_then(|r| r.get(&MemberId(target)).cloned().flatten());
            let membership = m.membership_config.membership();
            let voters: Vec<(u64, crate::Member)> = membership
                .voter_ids()
                .filter(|id| id.0 != inner.id)
                .filter_map(|id| Some((id.0, membership.get_node(&id)?.clone())))
                .collect();
            (m.vote, matched, voters)
        };
        let request = TransferLeaderRequest::<TypeConfig>::new(vote, MemberId(target), matched);
        let limit = Some(inner.election_timeout / 2);
        let calls = voters.iter().map(|(id, member)| {
            let request = &request;
            async move {
                let answer = inner
                    .peers
                    .call::<_, Result<TransferLeaderResponse<TypeConfig>, RaftError<TypeConfig>>>(
                        *id,
                        member,
                        Rpc::TransferLeader,
                        request,
                        limit,
                    )
                    .await;
                (*id, answer)
            }
        });
        let mut taken = false;
        for (id, answer) in futures::future::join_all(calls).await {
            match answer {
                Ok(Ok(Ok(()))) => taken |= id == target,
                Ok(Ok(Err(refused))) => {
                    tracing::warn!(member = format_args!("{id:x}"), cause = %refused, "a voter refused the leader transfer");
                }
                Ok(Err(e)) => {
                    tracing::warn!(member = format_args!("{id:x}"), cause = %e, "a voter could not take the leader transfer");
                }
                Err(e) => {
                    tracing::warn!(member = format_args!("{id:x}"), cause = %e, "a voter could not be told of the leader transfer");
                }
            }
        }
        taken
    }
}
