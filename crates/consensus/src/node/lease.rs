//! Leases served by the leader: keep-alives and remaining TTLs (a follower forwards them).

use std::time::Duration;

use deadline::Deadline;
use mvcc::Backend;

use super::forward::not_served;
use super::Node;
use crate::error::NotServed;
use crate::network::{ForwardReply, Forwarded};

impl<B: Backend> Node<B> {
    /// etcd's minimum lease TTL in seconds: shorter grants get this one.
    pub fn min_lease_ttl(&self) -> i64 {
        self.inner.min_lease_ttl
    }

    /// A keep-alive: the lease runs for its TTL from now, as the leader sees it (a follower
    /// forwards it). Answers the TTL, or 0 for a lease that does not exist or has already
    /// expired (as etcd does).
    ///
    /// # Errors
    /// No leader, or the leader could not be reached within the deadline.
    pub async fn lease_renew(&self, id: i64, deadline: Deadline) -> Result<i64, NotServed> {
        self.with_leader(deadline, || self.lease_renew_once(id, deadline))
            .await
    }

    async fn lease_renew_once(&self, id: i64, deadline: Deadline) -> Result<i64, NotServed> {
        let (leader, member) = self.leader()?;
        if leader == self.inner.id {
            return self.lease_renew_local(id);
        }
        match self
            .forward(leader, &member, &Forwarded::LeaseRenew(id), deadline)
            .await?
        {
            ForwardReply::Ttl(ttl) => Ok(ttl),
            other => Err(not_served(other)),
        }
    }

    pub(super) fn lease_renew_local(&self, id: i64) -> Result<i64, NotServed> {
        let (leads, _) = self.leading();
        if !leads {
            return Err(self.leader().map_or(NotServed::NoLeader, |(leader, _)| {
                NotServed::NotLeader { leader }
            }));
        }
        let lessor = &self.inner.lessor;
        if lessor.remaining(id).is_none_or(|left| left.is_zero()) {
            return Ok(0);
        }
        Ok(lessor.renew(id).unwrap_or(0))
    }

    /// How long lease `id` has left, as the leader sees it (a follower asks the leader).
    ///
    /// # Errors
    /// No leader, or the leader could not be reached within the deadline.
    pub async fn lease_remaining(
        &self,
        id: i64,
        deadline: Deadline,
    ) -> Result<Option<Duration>, NotServed> {
        self.with_leader(deadline, || self.lease_remaining_once(id, deadline))
            .await
    }

    async fn lease_remaining_once(
        &self,
        id: i64,
        deadline: Deadline,
    ) -> Result<Option<Duration>, NotServed> {
        let (leader, member) = self.leader()?;
        if leader == self.inner.id {
            return Ok(self.inner.lessor.remaining(id));
        }
        match self
            .forward(leader, &member, &Forwarded::LeaseRemaining(id), deadline)
            .await?
        {
            ForwardReply::Remaining(ms) => Ok(ms.map(Duration::from_millis)),
            other => Err(not_served(other)),
        }
    }
}
