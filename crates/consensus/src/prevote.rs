//! Pre-vote (etcd's `--pre-vote`): a member campaigns only after a majority of the voters
//! answer that they would vote for it, so a member cut off from the others never raises its
//! term, and when it returns the leader is not deposed by a higher term.
//!
//! openraft's own pre-vote (0.10's `enable_pre_vote`) runs inside its election timer, which is
//! off here (see [`crate::elections`]). MetaStore's election timer ([`crate::elections`]) asks,
//! before it campaigns, whether it [`won`] a pre-vote: every other voter is asked ([`Rpc::PreVote`]);
//! a voter grants when it is not the leader, has heard nothing from a leader for an election
//! timeout itself, and the asker's log is at least as up to date as its own ([`grants`]).
//! With a majority (counting itself) the member campaigns (`Raft::trigger().elect()`);
//! openraft's vote then decides, with its usual safety. Pre-vote only decides *when* to
//! campaign, never who wins, so it cannot make an election unsafe.

use openraft::type_config::async_runtime::WatchReceiver as _;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::network::Rpc;

/// A pre-vote request: the asker's last log id.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct PreVoteRequest {
    /// The asker's last log id.
    pub last_log_id: Option<crate::types::typ::LogId>,
}

/// Whether a voter grants a pre-vote: it does not lead, has heard nothing from a leader for
/// `election_timeout` (`quiet`: how long it has heard nothing), and the asker's log is at least
/// as up to date as its own.
pub(crate) fn grants(
    leads: bool,
    quiet: Duration,
    election_timeout: Duration,
    asker: Option<crate::types::typ::LogId>,
    own: Option<crate::types::typ::LogId>,
) -> bool {
    !leads && quiet >= election_timeout && asker >= own
}

/// Whether a majority of `voters` (counting `me`) would vote for `node` now: asks every other
/// voter at once, each within half an election timeout.
pub(crate) async fn won<B: mvcc::Backend>(
    node: &crate::Node<B>,
    voters: &[(u64, crate::Member)],
    me: u64,
) -> bool {
    let election_timeout = node.election_timeout();
    let last_log_id = node.raft().data_metrics().borrow_watched().last_log;
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
    let won = granted * 2 > voters.len();
    if won {
        tracing::info!(granted, voters = voters.len(), "pre-vote won");
    } else {
        tracing::debug!(
            granted,
            voters = voters.len(),
            "pre-vote lost: not campaigning"
        );
    }
    won
}

#[cfg(test)]
mod tests {
    use super::*;

    fn log(term: u64, index: u64) -> Option<crate::types::typ::LogId> {
        Some(crate::types::typ::log_id(term, 1, index))
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
    }
}
