//! Pre-vote (etcd's `--pre-vote`): a member campaigns only after a majority of the voters
//! answer that they would vote for it, so a member cut off from the others never raises its
//! term, and when it returns the leader is not deposed by a higher term.
//!
//! openraft 0.9 has no pre-vote phase: its own election timer is turned off
//! (`Config::enable_elect`) and [`run`] takes its place. A follower that has heard nothing
//! from a leader for a randomized election timeout asks every other voter ([`Rpc::PreVote`]);
//! a voter grants when it is not the leader, has heard nothing from a leader for an election
//! timeout itself, and the asker's log is at least as up to date as its own ([`grants`]).
//! With a majority (counting itself) the member campaigns (`Raft::trigger().elect()`);
//! openraft's vote then decides, with its usual safety. Pre-vote only decides *when* to
//! campaign, never who wins, so it cannot make an election unsafe.

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::time::{Duration, Instant};

use deadline::{Deadline, Layer};
use openraft::{LogId, ServerState};
use serde::{Deserialize, Serialize};

use crate::network::Rpc;

/// A pre-vote request: the asker's last log id.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct PreVoteRequest {
    /// The asker's last log id.
    pub last_log_id: Option<LogId<u64>>,
}

/// Whether a voter grants a pre-vote: it does not lead, has heard nothing from a leader for
/// `election_timeout` (`quiet`: how long it has heard nothing), and the asker's log is at least
/// as up to date as its own.
pub(crate) fn grants(
    leads: bool,
    quiet: Duration,
    election_timeout: Duration,
    asker: Option<LogId<u64>>,
    own: Option<LogId<u64>>,
) -> bool {
    !leads && quiet >= election_timeout && asker >= own
}

/// A time in `[1.5 E, 2 E)` (the window openraft's own timer campaigns in, see
/// `NodeConfig::raft_config`), different at each call.
fn randomized(election_timeout: Duration) -> Duration {
    let mut h = RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    let spread = u64::try_from(election_timeout.as_millis() / 2)
        .unwrap_or(u64::MAX)
        .max(1);
    election_timeout + election_timeout / 2 + Duration::from_millis(h.finish() % spread)
}

/// Campaigns for `node` after a successful pre-vote whenever it has heard nothing from a
/// leader for a randomized election timeout; ends when the node stops.
pub(crate) async fn run<B: mvcc::Backend>(node: crate::Node<B>, heartbeat: Duration) {
    let election_timeout = node.election_timeout();
    let stop = node.stop_token();
    let mut timeout = randomized(election_timeout);
    let mut last_try = Instant::now();
    loop {
        let stopped = deadline::within(Layer::Api, Deadline::after(heartbeat), stop.cancelled());
        if stopped.await.is_ok() {
            return;
        }
        let (leads, voters, me) = {
            let metrics = node.raft().metrics();
            let m = metrics.borrow();
            let membership = m.membership_config.membership();
            let voters: Vec<(u64, crate::Member)> = membership
                .voter_ids()
                .filter_map(|id| Some((id, membership.get_node(&id)?.clone())))
                .collect();
            (m.state == ServerState::Leader, voters, m.id)
        };
        if leads || !voters.iter().any(|(id, _)| *id == me) {
            continue;
        }
        if node.quiet_for() < timeout || last_try.elapsed() < timeout {
            continue;
        }
        last_try = Instant::now();
        timeout = randomized(election_timeout);
        let last_log_id = node.raft().data_metrics().borrow().last_log;
        let request = PreVoteRequest { last_log_id };
        let asks = voters
            .iter()
            .filter(|(id, _)| *id != me)
            .map(|(id, member)| {
                let peers = node.peers().clone();
                let request = &request;
                async move {
                    peers
                        .call::<_, bool>(
                            *id,
                            member,
                            Rpc::PreVote,
                            request,
                            Some(election_timeout / 2),
                        )
                        .await
                        .unwrap_or(false)
                }
            });
        let granted = 1 + futures::future::join_all(asks)
            .await
            .into_iter()
            .filter(|yes| *yes)
            .count();
        if granted * 2 > voters.len() {
            tracing::info!(granted, voters = voters.len(), "pre-vote won: campaigning");
            if node.raft().trigger().elect().await.is_err() {
                return;
            }
        } else {
            tracing::debug!(
                granted,
                voters = voters.len(),
                "pre-vote lost: not campaigning"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use openraft::CommittedLeaderId;

    fn log(term: u64, index: u64) -> Option<LogId<u64>> {
        Some(LogId::new(CommittedLeaderId::new(term, 1), index))
    }

    #[test]
    fn a_voter_grants_only_without_a_leader_and_to_a_log_as_up_to_date() {
        let e = Duration::from_secs(1);
        assert!(grants(false, e, e, log(2, 5), log(2, 5)));
        assert!(grants(false, e, e, log(3, 1), log(2, 5)));
        assert!(
            !grants(true, e, e, log(2, 5), log(2, 5)),
            "the leader refuses"
        );
        assert!(
            !grants(false, e / 2, e, log(2, 5), log(2, 5)),
            "a leader was heard"
        );
        assert!(!grants(false, e, e, log(2, 4), log(2, 5)), "a shorter log");
        assert!(!grants(false, e, e, log(1, 9), log(2, 5)), "an older term");
        let t = randomized(e);
        assert!(t >= e * 3 / 2 && t < e * 2, "{t:?}");
    }
}
