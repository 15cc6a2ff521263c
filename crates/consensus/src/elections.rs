//! When a follower campaigns: at etcd's times, not openraft 0.9's.
//!
//! openraft 0.9's own timer lets a follower campaign only once its leader lease
//! (`election_timeout_max`, during which it refuses votes) *and* a random timeout from
//! `election_timeout_min..election_timeout_max` have passed since it last heard the leader, with
//! the random timeout drawn once per process. A lease of one election timeout (E, etcd's
//! check-quorum lease) therefore puts every campaign after 1.5 E at best, where etcd's
//! followers campaign a fresh random time in [E, 2 E) after the last heartbeat: with two
//! survivors the first usually campaigns before 1.3 E. A kill-the-leader loop measured
//! MetaStore without a leader for 1.78 s per kill against etcd's 1.25 s (E = 1 s).
//!
//! So openraft's timer is off (`Config::enable_elect`) and [`run`] decides: a voter campaigns
//! (`Raft::trigger().elect()`, after a won pre-vote with `--pre-vote`, see [`crate::prevote`])
//! once it has, for a random time in [E, 2 E) drawn anew each time, heard nothing from a
//! leader, not led, and seen its vote unchanged (a vote granted or a campaign restarts the
//! wait, as they reset etcd's election clock). Like etcd's clock it counts ticks, so a
//! paused member does not campaign the moment it runs again. Voters still refuse a candidate for E after
//! hearing their leader (openraft's lease, `election_timeout_max` = E), so a campaign can
//! never depose a leader a quorum still hears; the timer only decides *when* to campaign,
//! openraft's vote decides who wins.
//!
//! Until it has known a leader since it started, a member waits [E/2, E) instead: what
//! openraft's timer did for a member starting with an uncommitted vote (every member restarts
//! with one, see `log_store`), and close to etcd's start, which advances its election clock
//! once it sees its peers. A lone voter campaigns at once, as openraft's timer does.

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::time::{Duration, Instant};

use openraft::ServerState;

/// A time in `[low, low + spread)`, different at each call.
fn random_in(low: Duration, spread: Duration) -> Duration {
    let mut h = RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    let spread = u64::try_from(spread.as_micros()).unwrap_or(u64::MAX).max(1);
    low + Duration::from_micros(h.finish() % spread)
}

/// etcd's randomized election timeout: a time in `[E, 2 E)`.
pub(crate) fn randomized(election_timeout: Duration) -> Duration {
    random_in(election_timeout, election_timeout)
}

/// The wait of a member that has known no leader since it started: `[E/2, E)`.
fn at_start(election_timeout: Duration) -> Duration {
    random_in(election_timeout / 2, election_timeout / 2)
}

/// How often the timer looks: etcd's tick is the heartbeat interval; a tenth of the election
/// timeout at most, so a campaign is late by a small part of its window.
fn tick(heartbeat: Duration, election_timeout: Duration) -> Duration {
    heartbeat
        .min(election_timeout / 10)
        .max(Duration::from_millis(1))
}

/// Campaigns for `node` whenever it has heard nothing from a leader for a randomized election
/// timeout (after a won pre-vote when `pre_vote`); ends when the node stops.
pub(crate) async fn run<B: mvcc::Backend>(
    node: crate::Node<B>,
    heartbeat: Duration,
    pre_vote: bool,
) {
    let election_timeout = node.election_timeout();
    let tick = tick(heartbeat, election_timeout);
    let stop = node.stop_token();
    let mut knew_leader = false;
    let mut timeout = at_start(election_timeout);
    // etcd's election clock: time since the last reason to wait (leader contact, a vote seen
    // changing, leading, a campaign of its own), counted in ticks of at most two tick lengths:
    // a late tick counts what it waited, but a member that was paused (SIGSTOP, a long stall)
    // counts two ticks for the pause, as etcd's ticker drops the ticks it missed, and hears
    // the leader's waiting messages before it could campaign.
    let mut elapsed = Duration::ZERO;
    let mut ticked = Instant::now();
    let mut last_vote = None;
    loop {
        // A pause, not a bounded wait: nothing runs out of time here, so no expiry is counted.
        tokio::select! {
            () = stop.cancelled() => return,
            () = deadline::pause(tick) => {}
        }
        let since = ticked.elapsed();
        let heard = node.quiet_for() < since;
        ticked = Instant::now();
        let (leads, voters, me, vote, leader) = {
            let metrics = node.raft().metrics();
            let m = metrics.borrow();
            let membership = m.membership_config.membership();
            let voters: Vec<(u64, crate::Member)> = membership
                .voter_ids()
                .filter_map(|id| Some((id, membership.get_node(&id)?.clone())))
                .collect();
            (
                m.state == ServerState::Leader,
                voters,
                m.id,
                m.vote,
                m.current_leader,
            )
        };
        elapsed += since.min(tick * 2);
        if heard || leads || last_vote != Some(vote) {
            last_vote = Some(vote);
            elapsed = Duration::ZERO;
        }
        if leader.is_some() && !knew_leader {
            knew_leader = true;
            timeout = randomized(election_timeout);
        }
        if leads || !voters.iter().any(|(id, _)| *id == me) {
            continue;
        }
        let alone = voters.len() == 1;
        if !alone && elapsed < timeout {
            continue;
        }
        let quiet = elapsed;
        elapsed = Duration::ZERO;
        timeout = if knew_leader {
            randomized(election_timeout)
        } else {
            at_start(election_timeout)
        };
        if pre_vote && !alone && !crate::prevote::won(&node, &voters, me).await {
            continue;
        }
        tracing::info!(
            quiet_ms = quiet.as_millis(),
            voters = voters.len(),
            "no leader heard for an election timeout: campaigning"
        );
        if node.raft().trigger().elect().await.is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// etcd's followers campaign a random time in [E, 2 E) after their last heartbeat and
    /// refuse votes for E after it; the timer draws its waits from that window, openraft's
    /// lease stays E, and the timer looks often enough to campaign within a tenth of E of its
    /// time.
    #[test]
    fn a_follower_waits_etcds_randomized_election_timeout() {
        for e in [500, 1000, 5000].map(Duration::from_millis) {
            let waits: Vec<Duration> = (0..200).map(|_| randomized(e)).collect();
            assert!(waits.iter().all(|w| *w >= e && *w < 2 * e), "{waits:?}");
            assert!(
                waits.iter().any(|w| *w < e * 13 / 10) && waits.iter().any(|w| *w > e * 17 / 10),
                "E = {e:?}: not spread over [E, 2 E): {waits:?}"
            );
            let first = at_start(e);
            assert!(first >= e / 2 && first < e, "{first:?}");
            assert!(tick(e / 10, e) <= e / 10);
        }
    }
}
