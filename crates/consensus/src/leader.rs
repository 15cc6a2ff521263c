//! Who leads, as one shared watch: a request that finds no leader waits on it (bounded by its
//! deadline and the `leader-wait` budget) instead of failing at once, and every waiter is woken
//! the moment a leader is known.
//!
//! One task follows openraft's metrics and publishes only leader changes, so waiters are not
//! woken by every apply or heartbeat. Waiting leaves nothing behind: a waiter is a receiver
//! clone, dropped with the request.

use openraft::type_config::async_runtime::WatchReceiver as _;
use std::time::Duration;

use deadline::{Deadline, Layer};
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::error::NotServed;
use crate::types::typ::Raft;
use crate::types::{Member, MemberId};

/// How long requests waited for a leader (only those that found none).
const WAITED: &str = "metastore_leader_wait_seconds";
/// Requests that gave up waiting for a leader (deadline, budget, or the client went away).
const GAVE_UP: &str = "metastore_leader_wait_gave_up_total";

/// The leader this member knows of, and since when that has been so.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Known {
    pub(crate) leader: Option<u64>,
    pub(crate) since: Instant,
}

/// The leader `raft` knows of now, with its entry in the membership (`None` while the
/// membership does not hold it). The one lookup for everyone that sends to the leader.
pub(crate) fn current<B: mvcc::Backend>(raft: &Raft<B>) -> Option<(u64, Option<Member>)> {
    let metrics = raft.metrics();
    let m = metrics.borrow_watched();
    m.current_leader.map(|leader| {
        let member = m
            .membership_config
            .nodes()
            .find(|(id, _)| **id == leader)
            .map(|(_, member)| member.clone());
        (leader.0, member)
    })
}

/// Waits, at most `within`, until `me` (if it leads) has heard from a quorum since it was
/// elected; returns at once when it does not lead, leads alone, or has heard.
///
/// openraft 0.10 refuses writes on a leader no quorum has answered yet (`LeaseExpired`, a
/// `ForwardToLeader` naming no leader), and a proposer can only take that for "no leader" and
/// try again a heartbeat later: every write in the first round trip of a new term would cost
/// that. Waiting here costs at most the round trip. Running out is not an error: the write is
/// then proposed and openraft answers as it would have.
pub(crate) async fn heard_from_quorum<B: mvcc::Backend>(raft: &Raft<B>, me: u64, within: Duration) {
    let mut metrics = raft.metrics();
    let heard = async {
        loop {
            let done = {
                let m = metrics.borrow_watched();
                m.current_leader != Some(MemberId(me))
                    || m.last_quorum_acked.is_some()
                    || m.membership_config
                        .membership()
                        .voter_ids()
                        .nth(1)
                        .is_none()
            };
            if done || metrics.changed().await.is_err() {
                return;
            }
        }
    };
    let _ = deadline::within(Layer::Propose, Deadline::after(within), heard).await;
}

/// The shared view of who leads.
#[derive(Clone)]
pub(crate) struct Leadership {
    known: watch::Receiver<Known>,
}

impl Leadership {
    /// Starts following `metrics` until `stop`.
    pub(crate) fn follow(
        mut metrics: crate::types::typ::MetricsWatch,
        stop: CancellationToken,
    ) -> Self {
        let first = metrics.borrow_watched().current_leader.map(|l| l.0);
        let (tx, known) = watch::channel(Known {
            leader: first,
            since: Instant::now(),
        });
        if first.is_some() {
            metrics::counter!(crate::metrics::LEADER_CHANGES).increment(1);
        }
        tokio::spawn(async move {
            loop {
                let leader = metrics.borrow_and_update().current_leader.map(|l| l.0);
                tx.send_if_modified(|k| {
                    let changed = k.leader != leader;
                    if changed && leader.is_some() {
                        // As etcd counts: each time a leader (another, or one after none)
                        // is seen.
                        metrics::counter!(crate::metrics::LEADER_CHANGES).increment(1);
                    }
                    if changed {
                        *k = Known {
                            leader,
                            since: Instant::now(),
                        };
                    }
                    changed
                });
                tokio::select! {
                    () = stop.cancelled() => return,
                    changed = metrics.changed() => if changed.is_err() { return },
                }
            }
        });
        Self { known }
    }

    /// The leader known now.
    pub(crate) fn now(&self) -> Known {
        *self.known.borrow()
    }

    /// A leader, at once if one is known, else as soon as one is, within `deadline` capped by
    /// the `leader-wait` budget. With `not`, a leader other than `not` (one a request just
    /// failed to reach), or `not` again after `retry_after`: it may have been a blip.
    pub(crate) async fn wait(
        &self,
        budgets: &deadline::Budgets,
        deadline: Deadline,
        not: Option<u64>,
        retry_after: Duration,
    ) -> Result<u64, NotServed> {
        if let Some(leader) = self.now().leader.filter(|l| Some(*l) != not) {
            return Ok(leader);
        }
        let started = Instant::now();
        let mut gave_up = GaveUp(true);
        let limit = budgets.deadline_for(Layer::LeaderWait, deadline);
        if not.is_some() {
            // The same leader may answer again: it is tried again once `retry_after` passed.
            let soon = limit.earliest(Deadline::after(retry_after));
            match self.until(soon, not).await {
                Ok(found) => {
                    gave_up.0 = false;
                    metrics::histogram!(WAITED).record(started.elapsed().as_secs_f64());
                    return found;
                }
                Err(expired) if limit.is_expired() => return Err(NotServed::Timeout(expired)),
                Err(_) => {}
            }
        }
        let result = match self.until(limit, None).await {
            Ok(found) => found,
            Err(expired) => Err(NotServed::Timeout(expired)),
        };
        if result.is_ok() {
            gave_up.0 = false;
            metrics::histogram!(WAITED).record(started.elapsed().as_secs_f64());
        }
        result
    }

    /// Waits within `deadline` for a leader other than `not`.
    async fn until(
        &self,
        deadline: Deadline,
        not: Option<u64>,
    ) -> Result<Result<u64, NotServed>, deadline::Expired> {
        let mut known = self.known.clone();
        let found = async {
            loop {
                let leader = known.borrow_and_update().leader;
                if let Some(leader) = leader.filter(|l| Some(*l) != not) {
                    return Ok(leader);
                }
                if known.changed().await.is_err() {
                    return Err(NotServed::Stopped);
                }
            }
        };
        deadline::within(Layer::LeaderWait, deadline, found).await
    }

    /// Resolves once this member has had no leader for `period` without a break.
    pub(crate) async fn leaderless_for(&self, period: Duration) {
        let mut known = self.known.clone();
        loop {
            let now = *known.borrow_and_update();
            if now.leader.is_some() {
                if known.changed().await.is_err() {
                    return std::future::pending().await;
                }
                continue;
            }
            let until = now.since + period;
            let left = until.saturating_duration_since(Instant::now());
            let back = async {
                loop {
                    if known.changed().await.is_err() {
                        return std::future::pending::<()>().await;
                    }
                    if known.borrow_and_update().leader.is_some() {
                        return;
                    }
                }
            };
            if deadline::within(Layer::LeaderWait, Deadline::after(left), back)
                .await
                .is_err()
            {
                return;
            }
        }
    }
}

/// Counts a wait that ended without a leader, however it ended (expiry, or dropped).
struct GaveUp(bool);

impl Drop for GaveUp {
    fn drop(&mut self) {
        if self.0 {
            metrics::counter!(GAVE_UP).increment(1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::network::{CallError, Forwarded, Peers, Rpc};
    use openraft::type_config::async_runtime::WatchSender as _;

    /// Waiters sleep on the shared watch and wake the moment a leader is known; a waiter whose
    /// deadline passes first gets a timeout in the `leader-wait` layer; one that failed to
    /// reach the leader waits for another, or tries the same one again a little later.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_wait_ends_when_a_leader_is_known_or_at_its_deadline() {
        let (tx, rx) = <crate::TypeConfig as openraft::type_config::TypeConfigExt>::watch_channel(
            crate::types::typ::RaftMetrics::new_initial(MemberId(1)),
        );
        let stop = CancellationToken::new();
        let leadership = Leadership::follow(rx, stop.clone());
        let budgets = deadline::Budgets::default();
        let short = leadership
            .wait(
                &budgets,
                Deadline::after(Duration::from_millis(200)),
                None,
                Duration::ZERO,
            )
            .await;
        assert!(
            matches!(short, Err(NotServed::Timeout(ref e)) if e.layer == Layer::LeaderWait),
            "{short:?}"
        );
        let wait = |not: Option<u64>, retry: Duration| {
            let l = leadership.clone();
            tokio::spawn(async move {
                l.wait(
                    &deadline::Budgets::default(),
                    Deadline::after(Duration::from_secs(30)),
                    not,
                    retry,
                )
                .await
            })
        };
        let waiting: Vec<_> = (0..3).map(|_| wait(None, Duration::ZERO)).collect();
        let started = Instant::now();
        tx.send_if_modified(|m| {
            m.current_leader = Some(MemberId(2));
            true
        });
        for w in waiting {
            assert_eq!(w.await.unwrap().unwrap(), 2);
        }
        assert!(started.elapsed() < Duration::from_secs(1));
        // Leader 2 could not be reached: 3 is taken as soon as it is known...
        let other = wait(Some(2), Duration::from_secs(30));
        tx.send_if_modified(|m| {
            m.current_leader = Some(MemberId(3));
            true
        });
        assert_eq!(other.await.unwrap().unwrap(), 3);
        // ...and 3 itself again once the retry time has passed.
        let started = Instant::now();
        let again = wait(Some(3), Duration::from_millis(100)).await.unwrap();
        assert_eq!(again.unwrap(), 3);
        assert!(started.elapsed() >= Duration::from_millis(100));
        stop.cancel();
    }

    /// A refused connection is known not to have carried the request: it may be retried.
    #[tokio::test]
    async fn a_refused_connection_is_a_call_never_sent() {
        let closed = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", closed.local_addr().unwrap());
        drop(closed);
        let peers = Peers::new(deadline::Budgets::default(), None);
        let member = Member {
            name: "gone".into(),
            peer_urls: vec![url],
            client_urls: vec![],
        };
        let reply: Result<crate::network::ForwardReply, _> = peers
            .call(9, &member, Rpc::Forward, &Forwarded::ReadIndex, None)
            .await;
        assert!(matches!(reply, Err(CallError::NotSent(_))), "{reply:?}");
    }
}
