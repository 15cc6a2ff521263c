//! Both sides of forwarding: a follower finds the leader and calls it; the leader serves
//! what followers forward (proposals, read indexes, leases, membership changes, campaigns).

use std::time::Duration;

use deadline::{Deadline, Layer};
use mvcc::Backend;

use super::Node;
use crate::error::NotServed;
use crate::network::{ForwardReply, Forwarded, Refusal, Rpc};
use crate::types::{Member, TypeConfig};

impl<B: Backend> Node<B> {
    /// The leader this member knows of, with its URLs.
    ///
    /// # Errors
    /// [`NotServed::NoLeader`] when none is known.
    pub(super) fn leader(&self) -> Result<(u64, Member), NotServed> {
        match crate::leader::current(&self.inner.raft) {
            Some((leader, Some(member))) => Ok((leader, member)),
            _ => Err(NotServed::NoLeader),
        }
    }

    /// Runs `once` as soon as a leader is known, and again with the next leader (or the same
    /// one a little later) while it answers that none is known or another leads: nothing
    /// was done then. Within `deadline`.
    pub(super) async fn with_leader<T, F>(
        &self,
        deadline: Deadline,
        mut once: impl FnMut() -> F,
    ) -> Result<T, NotServed>
    where
        F: std::future::Future<Output = Result<T, NotServed>>,
    {
        let mut failed = None;
        loop {
            let leader = self.await_leader(deadline, failed).await?;
            match once().await {
                Err(NotServed::NoLeader | NotServed::NotLeader { .. }) => failed = Some(leader),
                other => return other,
            }
        }
    }

    /// Sends `request` to the leader, within `deadline` and the peer-rpc budget.
    pub(super) async fn forward(
        &self,
        leader: u64,
        member: &Member,
        request: &Forwarded,
        deadline: Deadline,
    ) -> Result<ForwardReply, NotServed> {
        let limit = deadline.remaining().unwrap_or(Duration::MAX);
        if limit.is_zero() {
            return Err(NotServed::Timeout(deadline::Expired::reported(
                Layer::PeerRpc,
                Duration::ZERO,
            )));
        }
        self.inner
            .peers
            .call(leader, member, Rpc::Forward, request, Some(limit))
            .await
            .map_err(|e| {
                tracing::debug!(leader = format_args!("{leader:x}"), cause = %e, "forwarding to the leader failed");
                match e {
                    crate::network::CallError::Timeout => NotServed::Timeout(deadline::Expired::reported(Layer::PeerRpc, limit)),
                    _ => NotServed::NoLeader,
                }
            })
    }

    /// Serves a request a follower forwarded to this member, as the leader.
    pub(crate) async fn serve_forwarded(&self, request: Forwarded) -> ForwardReply {
        let budgets = &self.inner.budgets;
        match request {
            Forwarded::Propose(proposal) => {
                let inner = &self.inner;
                crate::leader::heard_from_quorum(&inner.raft, inner.id, inner.election_timeout)
                    .await;
                // Nothing is appended while leadership is handed over; the follower tries
                // again.
                let Some(pass) = self.inner.pause.enter() else {
                    return ForwardReply::Refused(Refusal::NotLeader(None));
                };
                // kvapi checked the follower's requests; nothing unchecked enters the log.
                let limits = self.inner.limits;
                let bad: Vec<(u64, mvcc::Refusal)> = proposal
                    .commands
                    .iter()
                    .filter_map(|t| {
                        crate::validate::check(&t.command, limits)
                            .err()
                            .map(|why| (t.id, why))
                    })
                    .collect();
                if !bad.is_empty() {
                    tracing::warn!(
                        origin = format_args!("{:x}", proposal.origin),
                        refused = ?bad,
                        "refused a forwarded batch holding invalid commands"
                    );
                    return ForwardReply::Refused(Refusal::Invalid(bad));
                }
                let write = async {
                    let (responder, answer) = openraft::impls::ProgressResponder::complete_only();
                    let submitted = self
                        .inner
                        .raft
                        .client_write_ff(proposal, Some(responder))
                        .await;
                    drop(pass);
                    submitted?;
                    Ok::<_, openraft::error::Fatal<TypeConfig>>(answer.await)
                };
                match budgets.run(Layer::Commit, Deadline::none(), write).await {
                    Ok(Ok(Ok(Ok(_)))) => ForwardReply::Done,
                    Ok(Ok(Ok(Err(openraft::error::ClientWriteError::ForwardToLeader(f))))) => {
                        ForwardReply::Refused(Refusal::NotLeader(f.leader_id.map(|l| l.0)))
                    }
                    // Appended, then leadership moved: it may still commit.
                    Ok(Ok(Ok(Err(openraft::error::ClientWriteError::LogEntryDiscarded(_))))) => {
                        ForwardReply::Refused(Refusal::Timeout)
                    }
                    Ok(Ok(Ok(Err(e)))) => ForwardReply::Refused(Refusal::Other(e.to_string())),
                    // Raft stopped before taking it: nothing was appended.
                    Ok(Err(_)) => ForwardReply::Refused(Refusal::Stopped),
                    // Taken, then its answer was dropped: it may still commit.
                    Ok(Ok(Err(_))) | Err(_) => ForwardReply::Refused(Refusal::Timeout),
                }
            }
            // In the leader's rounds, shared with its own reads and other followers' rounds.
            Forwarded::ReadIndex => match self.inner.reads.read_index(Deadline::none()).await {
                Ok(index) => ForwardReply::Index(index),
                Err(e) => ForwardReply::Refused(e.into()),
            },
            Forwarded::LeaseRenew(id) => match self.lease_renew_local(id) {
                Ok(ttl) => ForwardReply::Ttl(ttl),
                Err(e) => ForwardReply::Refused(e.into()),
            },
            // The leader's lessor answers once the leader has applied everything committed, so
            // a lease the asking follower already sees is known here too.
            Forwarded::LeaseRemaining(id) => {
                match self.inner.reads.read_index(Deadline::none()).await {
                    Ok(_) => ForwardReply::Remaining(
                        self.inner
                            .lessor
                            .remaining(id)
                            .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
                    ),
                    Err(e) => ForwardReply::Refused(e.into()),
                }
            }
            Forwarded::Membership(change) => {
                match self.change_membership_local(change, Deadline::none()).await {
                    Ok(members) => ForwardReply::Members(members),
                    Err(r) => ForwardReply::Refused(r),
                }
            }
            Forwarded::HashKv(rev) => self.serve_hash(rev).await,
        }
    }
}

/// A leader's reply of the wrong kind for a forwarded request: its refusal, or (a reply of
/// another kind) no leader to ask.
pub(super) fn not_served(reply: ForwardReply) -> NotServed {
    match reply {
        ForwardReply::Refused(refused) => refused.into(),
        ForwardReply::Done
        | ForwardReply::Index(_)
        | ForwardReply::Ttl(_)
        | ForwardReply::Remaining(_)
        | ForwardReply::Members(_)
        | ForwardReply::Hash(_) => NotServed::NoLeader,
    }
}
