//! When a follower campaigns: at etcd's times, not openraft's.
//!
//! openraft's own timer lets a follower campaign only once its leader lease
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
//! openraft's timer did for a member starting with an uncommitted vote, and close to etcd's start, which advances its election clock
//! once it sees its peers. A lone voter campaigns at once, as openraft's timer does.
//!
//! A campaign starts above every term a candidate has asked this member for ([`Asked`]).
//! openraft's voter (0.9, and 0.10 still) keeps its own term when it refuses a candidate whose
//! log is shorter,
//! where Raft's (and etcd's) voters take the candidate's term. After a leader's death the
//! survivor with the shorter log often campaigns first and is refused, but keeps the term it
//! asked for and refuses, by vote, the better survivor's campaign at that same term (openraft
//! orders equal terms by member id); that survivor then learns the term from the refusal and
//! waits a whole new [E, 2E) before it can win. So before `elect()` the member takes the
//! highest asked term as its own (granting that candidate a vote it never learns of, which
//! binds only this member) and campaigns one above it.
//!
//! Granting a vote restarts the clock at once, as in etcd ([`answer`] notes it; the timer's
//! look at the vote comes a tick later, and openraft publishes a vote only once it is
//! durable), and a campaign decided on a tick is dropped if a leader or a granted vote came
//! since: otherwise a member could campaign just after voting for a candidate that then won,
//! and depose it.

use openraft::type_config::async_runtime::WatchReceiver as _;
use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::time::{Duration, Instant};

use openraft::error::RaftError;
use openraft::raft::{VoteRequest, VoteResponse};
use openraft::ServerState;

use crate::types::typ::Vote;
use crate::types::TypeConfig;

/// The vote requests this member answered, for [`run`]: the highest vote asked for (see the
/// module's doc), and whether one is being answered or was granted lately. etcd restarts its
/// election clock when it grants a vote; the timer's own look at the vote comes a tick later
/// (and openraft publishes a vote only once it is durable), so a member could campaign right
/// after granting a vote to a candidate that just won, and depose it.
#[derive(Debug, Default)]
pub(crate) struct Asked {
    highest: std::sync::Mutex<Option<crate::types::typ::Vote>>,
    answering: std::sync::atomic::AtomicUsize,
    granted: std::sync::Mutex<Option<Instant>>,
}

/// Counts a vote request as being answered while it lives.
struct Answering<'a>(&'a Asked);

impl Drop for Answering<'_> {
    fn drop(&mut self) {
        self.0
            .answering
            .fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
    }
}

impl Asked {
    /// Notes the vote of a vote request this member received.
    fn note(&self, vote: crate::types::typ::Vote) {
        let mut asked = self
            .highest
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if asked.is_none_or(|a| vote.leader_id() > a.leader_id()) {
            *asked = Some(vote);
        }
    }

    /// The highest vote asked for, as an uncommitted vote.
    fn highest(&self) -> Option<crate::types::typ::Vote> {
        let asked = *self
            .highest
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        asked.map(|v| Vote::new(v.leader_id().term, v.leader_id().node_id))
    }

    /// Whether a vote was granted at or after `at`.
    fn granted_since(&self, at: Instant) -> bool {
        self.granted
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .is_some_and(|g| g >= at)
    }

    /// Whether a vote request is being answered, or one was granted at or after `at`.
    fn voted_since(&self, at: Instant) -> bool {
        self.answering.load(std::sync::atomic::Ordering::SeqCst) > 0 || self.granted_since(at)
    }
}

/// Answers a vote request (openraft decides), noting it for the election timer.
pub(crate) async fn answer<B: mvcc::Backend>(
    node: &crate::Node<B>,
    request: VoteRequest<TypeConfig>,
) -> Result<VoteResponse<TypeConfig>, RaftError<TypeConfig>> {
    let asked = node.asked();
    asked.note(request.vote);
    asked
        .answering
        .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    let _answering = Answering(asked);
    let answer = node.raft().vote(request).await;
    if matches!(&answer, Ok(r) if r.vote_granted) {
        *asked
            .granted
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(Instant::now());
    }
    answer
}

/// Whether, since `at`, a leader reached `node` or it answered a vote request: a campaign
/// decided before is off (the next tick restarts the clock).
fn interrupted<B: mvcc::Backend>(node: &crate::Node<B>, at: Instant) -> bool {
    node.quiet_for() < at.elapsed() || node.asked().voted_since(at)
}

/// Takes the highest term a candidate asked `node` for as its own, if it is above its own, so
/// the campaign that follows asks one above it. Goes through openraft's own vote handling (with
/// this member's last log id, so only its vote lease can refuse), which keeps a vote once given.
async fn adopt_asked_term<B: mvcc::Backend>(node: &crate::Node<B>) {
    let Some(asked) = node.asked().highest() else {
        return;
    };
    let own = node.raft().metrics().borrow_watched().vote;
    if asked.leader_id().term <= own.leader_id().term {
        return;
    }
    let last_log_id = node.raft().data_metrics().borrow_watched().last_log;
    match node.raft().vote(VoteRequest::new(asked, last_log_id)).await {
        Ok(r) => tracing::info!(
            asked = %asked,
            own = %own,
            taken = r.vote_granted,
            "a candidate asked for a higher term: campaigning above it"
        ),
        Err(e) => tracing::debug!(cause = %e, "taking an asked term failed"),
    }
}

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
        let heard = node.quiet_for() < since || node.asked().granted_since(ticked);
        ticked = Instant::now();
        let (leads, voters, me, vote, leader) = {
            let metrics = node.raft().metrics();
            let m = metrics.borrow_watched();
            let membership = m.membership_config.membership();
            let voters: Vec<(u64, crate::Member)> = membership
                .voter_ids()
                .filter_map(|id| Some((id.0, membership.get_node(&id)?.clone())))
                .collect();
            (
                m.state == ServerState::Leader,
                voters,
                m.id.0,
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
        // What was decided on this tick's look may be stale by now (see `Asked`).
        if interrupted(&node, ticked) {
            continue;
        }
        tracing::info!(
            quiet_ms = quiet.as_millis(),
            voters = voters.len(),
            "no leader heard for an election timeout: campaigning"
        );
        adopt_asked_term(&node).await;
        if interrupted(&node, ticked) {
            continue;
        }
        if node.raft().trigger().elect(false).await.is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The timer campaigns above the highest term it was asked for, whoever asked, and takes
    /// it as a vote openraft can record (uncommitted, for the candidate that asked).
    #[test]
    fn the_highest_asked_vote_is_kept() {
        let asked = Asked::default();
        assert_eq!(asked.highest(), None);
        asked.note(Vote::new(5, crate::MemberId(2)));
        asked.note(Vote::new(3, crate::MemberId(9)));
        asked.note(Vote::new_committed(4, crate::MemberId(1)));
        assert_eq!(asked.highest(), Some(Vote::new(5, crate::MemberId(2))));
        asked.note(Vote::new(5, crate::MemberId(7)));
        assert_eq!(
            asked.highest(),
            Some(Vote::new(5, crate::MemberId(7))),
            "equal terms: by member id"
        );
        asked.note(Vote::new_committed(6, crate::MemberId(1)));
        assert_eq!(
            asked.highest(),
            Some(Vote::new(6, crate::MemberId(1))),
            "kept uncommitted"
        );
        let before = Instant::now();
        assert!(!asked.voted_since(before));
        let answering = {
            asked
                .answering
                .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            Answering(&asked)
        };
        assert!(asked.voted_since(before) && !asked.granted_since(before));
        drop(answering);
        assert!(!asked.voted_since(before));
    }

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
