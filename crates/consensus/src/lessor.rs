//! Lease expiry: when each lease runs out, kept by every member and acted on by the leader.
//!
//! Which leases exist, their TTLs and attached keys are replicated state in the store. Time is
//! not: the leader alone decides that a lease expired and proposes its revoke through Raft like
//! any write, at a bounded rate. A member that becomes leader gives every lease its remaining
//! TTL (the last checkpoint, or the full TTL) plus an election timeout from the moment it took
//! over, so no lease expires early because of the failover; keep-alives then move the expiry
//! forward by the lease's TTL.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use mvcc::LeaseInfo;
use tokio::time::Instant;

/// How long a lease whose revoke was proposed waits before it is proposed again, should the
/// first proposal not apply (a lost leadership, a timeout).
const RETRY: Duration = Duration::from_secs(3);

/// One tracked lease.
#[derive(Clone, Copy, Debug)]
struct Tracked {
    ttl: i64,
    expiry: Instant,
    /// When it was last granted or renewed here.
    touched: Instant,
}

#[derive(Default)]
struct State {
    leases: HashMap<i64, Tracked>,
    /// (expiry, id) of every tracked lease, soonest first.
    order: BTreeSet<(Instant, i64)>,
}

impl State {
    fn set(&mut self, id: i64, ttl: i64, expiry: Instant) {
        let touched = Instant::now();
        if let Some(old) = self.leases.insert(
            id,
            Tracked {
                ttl,
                expiry,
                touched,
            },
        ) {
            self.order.remove(&(old.expiry, id));
        }
        self.order.insert((expiry, id));
    }
}

/// The expiry times of every lease this member knows.
#[derive(Default)]
pub struct Lessor {
    state: Mutex<State>,
}

/// A TTL from the log as a duration: never negative, never over etcd's largest TTL (the log
/// may hold anything a buggy or older proposer put there; the apply must not fail on it).
fn secs(ttl: i64) -> Duration {
    let ttl = ttl.clamp(0, crate::validate::MAX_LEASE_TTL);
    Duration::from_secs(u64::try_from(ttl).unwrap_or(0))
}

/// `at + d`, or as far as the clock can go: an expiry beyond it is as good as never.
fn later(at: Instant, d: Duration) -> Instant {
    /// Far enough to outlive any member, small enough for any clock.
    const FAR: Duration = Duration::from_secs(100 * 365 * 24 * 3600);
    at.checked_add(d)
        .or_else(|| at.checked_add(FAR.min(d)))
        .unwrap_or(at)
}

impl Lessor {
    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A lease was granted: it runs for its TTL from now.
    pub(crate) fn granted(&self, id: i64, ttl: i64) {
        self.state().set(id, ttl, later(Instant::now(), secs(ttl)));
    }

    /// A lease was revoked.
    pub(crate) fn revoked(&self, id: i64) {
        let mut st = self.state();
        if let Some(old) = st.leases.remove(&id) {
            st.order.remove(&(old.expiry, id));
        }
    }

    /// Tracks exactly `leases`, each running from now for its remaining TTL (the checkpointed
    /// one if any, else its full TTL) plus `extend`: on becoming leader, and after a restore.
    /// Leases granted or renewed here at or after `fresh_since` keep the expiry they have:
    /// they were granted or kept alive by this very leadership.
    pub(crate) fn reset(
        &self,
        leases: &[LeaseInfo],
        extend: Duration,
        fresh_since: Option<Instant>,
    ) {
        let now = Instant::now();
        let mut st = self.state();
        let old = std::mem::take(&mut *st);
        for l in leases {
            let fresh = old
                .leases
                .get(&l.id)
                .filter(|t| fresh_since.is_some_and(|since| t.touched >= since));
            match fresh {
                Some(t) => {
                    st.leases.insert(l.id, *t);
                    st.order.insert((t.expiry, l.id));
                }
                None => {
                    let left = if l.remaining > 0 { l.remaining } else { l.ttl };
                    st.set(l.id, l.ttl, later(later(now, secs(left)), extend));
                }
            }
        }
    }

    /// A keep-alive: the lease runs for its TTL from now. Returns the TTL, or `None` for a
    /// lease this member does not know.
    pub(crate) fn renew(&self, id: i64) -> Option<i64> {
        let mut st = self.state();
        let ttl = st.leases.get(&id)?.ttl;
        st.set(id, ttl, later(Instant::now(), secs(ttl)));
        Some(ttl)
    }

    /// How long the lease has left, if this member tracks it.
    pub(crate) fn remaining(&self, id: i64) -> Option<Duration> {
        let st = self.state();
        let t = st.leases.get(&id)?;
        Some(t.expiry.saturating_duration_since(Instant::now()))
    }

    /// Up to `max` leases expired by now, soonest first; each is held back for a while so that
    /// it is not returned again while its revoke is on its way.
    pub(crate) fn due(&self, max: usize) -> Vec<i64> {
        let now = Instant::now();
        let mut st = self.state();
        let due: Vec<(Instant, i64)> = st
            .order
            .iter()
            .take_while(|(expiry, _)| *expiry <= now)
            .take(max)
            .copied()
            .collect();
        for &(_, id) in &due {
            if let Some(t) = st.leases.get(&id).copied() {
                st.set(id, t.ttl, later(now, RETRY));
            }
        }
        due.into_iter().map(|(_, id)| id).collect()
    }

    /// The remaining TTL in whole seconds of every lease that has used some of its TTL, for a
    /// checkpoint.
    pub(crate) fn checkpoints(&self) -> Vec<(i64, i64)> {
        let now = Instant::now();
        let st = self.state();
        let mut out: Vec<(i64, i64)> = st
            .leases
            .iter()
            .filter_map(|(id, t)| {
                let left = t.expiry.saturating_duration_since(now).as_secs();
                let left = i64::try_from(left).unwrap_or(i64::MAX).max(1);
                (left < t.ttl).then_some((*id, left))
            })
            .collect();
        out.sort_unstable();
        out
    }

    /// How many leases are tracked.
    pub(crate) fn len(&self) -> usize {
        self.state().leases.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(id: i64, ttl: i64, remaining: i64) -> LeaseInfo {
        LeaseInfo {
            id,
            ttl,
            remaining,
            keys: Vec::new(),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn leases_expire_in_order_and_keep_alives_push_them_back() {
        let l = Lessor::default();
        l.granted(1, 5);
        l.granted(2, 10);
        l.granted(3, 20);
        tokio::time::advance(Duration::from_secs(6)).await;
        assert_eq!(l.due(10), [1]);
        assert_eq!(
            l.due(10),
            Vec::<i64>::new(),
            "held back while its revoke is on its way"
        );
        assert_eq!(l.renew(2), Some(10));
        assert_eq!(l.renew(9), None);
        l.revoked(1);
        tokio::time::advance(Duration::from_secs(6)).await;
        assert_eq!(
            l.due(10),
            Vec::<i64>::new(),
            "2 was renewed at 6 s for 10 s"
        );
        tokio::time::advance(Duration::from_secs(5)).await;
        assert_eq!(l.due(10), [2]);
        assert_eq!(l.len(), 3 - 1);
        assert_eq!(l.remaining(3), Some(Duration::from_secs(3)));
    }

    #[tokio::test(start_paused = true)]
    async fn a_new_leader_extends_every_lease() {
        let l = Lessor::default();
        l.granted(3, 10);
        tokio::time::advance(Duration::from_secs(1)).await;
        let since = Instant::now();
        l.granted(4, 7);
        l.reset(
            &[
                info(1, 10, 0),
                info(2, 100, 4),
                info(3, 10, 0),
                info(4, 7, 0),
            ],
            Duration::from_secs(1),
            Some(since),
        );
        assert_eq!(
            l.remaining(3),
            Some(Duration::from_secs(11)),
            "granted before: extended"
        );
        assert_eq!(
            l.remaining(4),
            Some(Duration::from_secs(7)),
            "granted since: kept"
        );
        assert_eq!(l.remaining(1), Some(Duration::from_secs(11)));
        assert_eq!(
            l.remaining(2),
            Some(Duration::from_secs(5)),
            "from its checkpoint"
        );
        tokio::time::advance(Duration::from_secs(6)).await;
        assert_eq!(l.due(10), [2]);
        assert_eq!(
            l.checkpoints(),
            [(1, 5), (2, 3), (3, 5), (4, 1)],
            "2 waits out its revoke's retry"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn due_is_bounded() {
        let l = Lessor::default();
        for id in 0..1_000 {
            l.granted(id, 1);
        }
        tokio::time::advance(Duration::from_secs(2)).await;
        assert_eq!(l.due(300).len(), 300);
        assert_eq!(l.due(1_000).len(), 700);
    }
}
