//! Membership changes on the leader (a follower forwards them), and the added voters the
//! leader promotes once they catch up.

use openraft::type_config::async_runtime::WatchReceiver as _;
use std::collections::{BTreeMap, BTreeSet};

use deadline::{Deadline, Layer};
use mvcc::Backend;

use super::forward::not_served;
use super::Node;
use crate::membership::{Change, View};
use crate::network::{ForwardReply, Forwarded, Refusal};
use crate::types::{Member, MemberId};

impl<B: Backend> Node<B> {
    /// Changes the membership on the leader (a follower forwards the change), and answers the
    /// new membership and the id concerned.
    ///
    /// # Errors
    /// etcd's refusals ([`crate::MembershipError`]), no leader, a timeout.
    pub async fn change_membership(
        &self,
        change: Change,
        deadline: Deadline,
    ) -> Result<Vec<(u64, Member, bool)>, crate::MembershipFailure> {
        self.await_leader(deadline, None)
            .await
            .map_err(crate::MembershipFailure::NotServed)?;
        let (leader, member) = self.leader().map_err(crate::MembershipFailure::NotServed)?;
        if leader == self.inner.id {
            return self
                .change_membership_local(change, deadline)
                .await
                .map_err(crate::MembershipFailure::from_refusal);
        }
        let limit = self.inner.budgets.deadline_for(Layer::Commit, deadline);
        match self
            .forward(leader, &member, &Forwarded::Membership(change), limit)
            .await
            .map_err(crate::MembershipFailure::NotServed)?
        {
            ForwardReply::Members(m) => Ok(m),
            ForwardReply::Refused(r) => Err(crate::MembershipFailure::from_refusal(r)),
            other => Err(crate::MembershipFailure::NotServed(not_served(other))),
        }
    }

    pub(super) async fn change_membership_local(
        &self,
        change: Change,
        deadline: Deadline,
    ) -> Result<Vec<(u64, Member, bool)>, Refusal> {
        let limit = self.inner.budgets.deadline_for(Layer::Commit, deadline);
        let _turn = self.change_turn(limit).await.ok_or(Refusal::Timeout)?;
        loop {
            let mut metrics = self.inner.raft.metrics();
            let view = {
                let m = metrics.borrow_and_update();
                if m.current_leader != Some(MemberId(self.inner.id)) {
                    return Err(Refusal::NotLeader(m.current_leader.map(|l| l.0)));
                }
                // A change not yet applied (one a former leader made, say) would make openraft
                // refuse this one, and log the refusal as an error: wait for it first.
                let in_progress = m.last_applied < *m.membership_config.log_id();
                let membership = m.membership_config.membership();
                let members: BTreeMap<u64, Member> = membership
                    .nodes()
                    .map(|(id, n)| (id.0, n.clone()))
                    .collect();
                (!in_progress).then(|| View {
                    pending: self.pending_voters(&members),
                    members,
                    voters: membership.voter_ids().map(|id| id.0).collect(),
                    matched: m
                        .replication
                        .as_ref()
                        .map(|r| r.iter().map(|(id, l)| (id.0, l.map(|l| l.index))).collect())
                        .unwrap_or_default(),
                    leader: self.inner.id,
                    last_index: m.last_log_index.unwrap_or(0),
                })
            };
            let Some(view) = view else {
                applied_membership(&mut metrics, limit).await?;
                continue;
            };
            let (id, ask) = view
                .plan(
                    &change,
                    &self.inner.cluster_token,
                    self.inner.strict_reconfig_check,
                )
                .map_err(Refusal::Membership)?;
            let new_voter = matches!(change, Change::Add { learner: false, .. });
            let changed = deadline::within(
                Layer::Commit,
                limit,
                self.inner.raft.change_membership(ask, false),
            )
            .await
            .map_err(|_| Refusal::Timeout)?;
            match changed.map_err(crate::membership::refusal) {
                // Another change is being committed (a new member publishing its URLs, say):
                // this one waits for it, within its deadline, as later changes queue in etcd.
                Err(Refusal::Membership(crate::MembershipError::InProgress)) => {
                    applied_membership(&mut metrics, limit).await?;
                }
                other => {
                    let written = other?;
                    if new_voter {
                        self.lock_pending().insert(id);
                        tokio::spawn(crate::membership::promote_when_caught_up(self.clone(), id));
                    }
                    // openraft's metrics may not show the new configuration yet (they follow
                    // the answer), and a list without the new member breaks etcdctl: answer
                    // from the configuration this change committed.
                    return Ok(match written.membership {
                        Some(membership) => self.listing(&membership),
                        None => self.status().members,
                    });
                }
            }
        }
    }

    fn lock_pending(&self) -> std::sync::MutexGuard<'_, BTreeSet<u64>> {
        // The set stays consistent whatever panicked while holding it.
        self.inner
            .pending_voters
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The voters still catching up that are still members (others are forgotten).
    pub(crate) fn pending_voters(&self, members: &BTreeMap<u64, Member>) -> BTreeSet<u64> {
        let mut pending = self.lock_pending();
        pending.retain(|id| members.contains_key(id));
        pending.clone()
    }

    /// Forgets a voter-to-be: promoted, removed, or no longer this member's to promote.
    pub(crate) fn forget_pending(&self, id: u64) {
        self.lock_pending().remove(&id);
    }

    /// The members of `membership`, each with whether it votes (or will, once caught up:
    /// etcd lists an added voter as one from the start).
    pub(super) fn listing(
        &self,
        membership: &openraft::Membership<MemberId, Member>,
    ) -> Vec<(u64, Member, bool)> {
        let mut voters: BTreeSet<u64> = membership.voter_ids().map(|id| id.0).collect();
        voters.extend(self.lock_pending().iter().copied());
        membership
            .nodes()
            .map(|(id, member)| (id.0, member.clone(), voters.contains(&id.0)))
            .collect()
    }
}

/// Waits, at most until `limit`, for the membership change in the log to be applied: what a
/// change waits for when another is being committed, as later changes queue in etcd.
async fn applied_membership(
    metrics: &mut crate::types::typ::MetricsWatch,
    limit: Deadline,
) -> Result<(), Refusal> {
    let applied = async {
        loop {
            // At least one change first: no tight loop if openraft still refuses once the
            // change it named has applied.
            if metrics.changed().await.is_err() {
                return;
            }
            let m = metrics.borrow_and_update();
            if m.last_applied >= *m.membership_config.log_id() {
                return;
            }
        }
    };
    deadline::within(Layer::Commit, limit, applied)
        .await
        .map_err(|_| Refusal::Membership(crate::MembershipError::InProgress))
}
