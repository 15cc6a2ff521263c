//! Membership changes with etcd's semantics, on the leader (followers forward them).
//!
//! Member ids are derived from peer URLs and the cluster token ([`member_id`]), so a member
//! that joins with `--initial-cluster-state existing` knows its own id without asking: the
//! same URLs give the same id on every member.

use openraft::type_config::async_runtime::WatchReceiver as _;
use std::collections::{BTreeMap, BTreeSet};

use openraft::error::{ChangeMembershipError, ClientWriteError, RaftError};
use openraft::ChangeMembers;
use serde::{Deserialize, Serialize};

use crate::types::{Member, MemberId, TypeConfig};

/// A change to the cluster's membership.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub enum Change {
    /// Add a member (a voter, or a learner) that will start later with these peer URLs.
    Add {
        /// Its peer URLs.
        peer_urls: Vec<String>,
        /// Add it as a non-voting learner.
        learner: bool,
    },
    /// Remove a member.
    Remove {
        /// Its id.
        id: u64,
    },
    /// Change a member's peer URLs.
    Update {
        /// Its id.
        id: u64,
        /// Its new peer URLs.
        peer_urls: Vec<String>,
    },
    /// Make a learner a voter.
    Promote {
        /// Its id.
        id: u64,
    },
    /// A started member announces its name and client URLs.
    Publish {
        /// Its id.
        id: u64,
        /// Its name.
        name: String,
        /// Its client URLs.
        client_urls: Vec<String>,
    },
}

/// Why a membership change was refused, with etcd's texts.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum MembershipError {
    /// No member has that id.
    #[error("etcdserver: member not found")]
    MemberNotFound,
    /// A member with those peer URLs exists.
    #[error("etcdserver: Peer URLs already exists")]
    PeerUrlExists,
    /// A member with that id exists.
    #[error("etcdserver: member ID already exist")]
    MemberExists,
    /// Peer URLs missing or malformed.
    #[error("etcdserver: given member URLs are invalid")]
    BadUrls,
    /// Promote of a voter.
    #[error("etcdserver: can only promote a learner member")]
    NotLearner,
    /// Promote of a learner that lags the leader.
    #[error("etcdserver: can only promote a learner member which is in sync with leader")]
    LearnerNotReady,
    /// etcd allows one learner at a time.
    #[error("etcdserver: too many learner members in cluster")]
    TooManyLearners,
    /// The change would leave fewer started voters than a quorum.
    #[error("etcdserver: re-configuration failed due to not enough started members")]
    NotEnoughStarted,
    /// Another change is still being committed.
    #[error("etcdserver: unhealthy cluster")]
    InProgress,
}

/// etcd allows this many learners at once.
const MAX_LEARNERS: usize = 1;

/// A stable 64-bit FNV-1a hash: ids must be the same on every member and every build.
fn fnv1a(parts: &[&[u8]]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for part in parts {
        for b in part.iter().chain(b"\0") {
            h ^= u64::from(*b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    h.max(1)
}

/// A member's id, from its peer URLs and the cluster token.
pub fn member_id(peer_urls: &[String], token: &str) -> u64 {
    let mut urls: Vec<&[u8]> = peer_urls.iter().map(|u| u.as_bytes()).collect();
    urls.sort();
    urls.push(token.as_bytes());
    fnv1a(&urls)
}

/// The cluster id, from the cluster token (the same on every member, whenever it joined).
pub fn cluster_id(token: &str) -> u64 {
    fnv1a(&[b"cluster", token.as_bytes()])
}

fn valid_urls(urls: &[String]) -> bool {
    !urls.is_empty()
        && urls.iter().all(|u| {
            u.strip_prefix("http://")
                .or_else(|| u.strip_prefix("https://"))
                .is_some_and(|rest| rest.contains(':'))
        })
}

/// The membership as the leader sees it: every member, whether it votes, and how far it has
/// replicated (`None`: nothing known yet, i.e. not started).
pub(crate) struct View {
    pub members: BTreeMap<u64, Member>,
    pub voters: BTreeSet<u64>,
    /// Members added as voters that replicate as learners until they catch up; they count
    /// as voters in every check, as they would in etcd.
    pub pending: BTreeSet<u64>,
    pub matched: BTreeMap<u64, Option<u64>>,
    pub leader: u64,
    pub last_index: u64,
}

impl View {
    fn started(&self, id: u64) -> bool {
        id == self.leader || self.matched.get(&id).copied().flatten().is_some()
    }

    fn started_voters(&self, voters: &BTreeSet<u64>) -> usize {
        voters.iter().filter(|id| self.started(**id)).count()
    }

    /// Voters as etcd counts them: openraft's voters and the voters still catching up.
    fn all_voters(&self) -> BTreeSet<u64> {
        self.voters.union(&self.pending).copied().collect()
    }

    /// What to ask openraft for, or why not: etcd's checks, made before anything is proposed.
    ///
    /// A new voter is asked for as a learner (a node without a vote): openraft changes voters
    /// by joint consensus, whose first step needs the new member's vote too, so adding a
    /// voter that has not started yet (as `member add` does) could never commit. The caller
    /// promotes it once it has caught up. `strict` is `--strict-reconfig-check`.
    pub(crate) fn plan(
        &self,
        change: &Change,
        token: &str,
        strict: bool,
    ) -> Result<(u64, ChangeMembers<MemberId, Member>), MembershipError> {
        let exists = |id: u64| self.members.contains_key(&id);
        let voters = self.all_voters();
        match change {
            Change::Add { peer_urls, learner } => {
                if !valid_urls(peer_urls) {
                    return Err(MembershipError::BadUrls);
                }
                let taken = self
                    .members
                    .values()
                    .any(|m| m.peer_urls.iter().any(|u| peer_urls.contains(u)));
                if taken {
                    return Err(MembershipError::PeerUrlExists);
                }
                let id = member_id(peer_urls, token);
                if exists(id) {
                    return Err(MembershipError::MemberExists);
                }
                let member = Member {
                    name: String::new(),
                    peer_urls: peer_urls.clone(),
                    client_urls: Vec::new(),
                };
                if *learner {
                    let learners = self.members.len() - voters.len();
                    if learners >= MAX_LEARNERS {
                        return Err(MembershipError::TooManyLearners);
                    }
                    return Ok((
                        id,
                        ChangeMembers::AddNodes(BTreeMap::from([(MemberId(id), member)])),
                    ));
                }
                // The new voter has not started: the others must still make a quorum, except
                // that etcd lets a lone member take a second (to restore a cluster from one).
                let size = voters.len() + 1;
                let started = self.started_voters(&voters);
                let lone = started == 1 && size == 2;
                if strict && !lone && started < size / 2 + 1 {
                    return Err(MembershipError::NotEnoughStarted);
                }
                Ok((
                    id,
                    ChangeMembers::AddNodes(BTreeMap::from([(MemberId(id), member)])),
                ))
            }
            Change::Remove { id } => {
                if !exists(*id) {
                    return Err(MembershipError::MemberNotFound);
                }
                if !voters.contains(id) {
                    return Ok((
                        *id,
                        ChangeMembers::RemoveNodes(BTreeSet::from([MemberId(*id)])),
                    ));
                }
                let mut rest = voters.clone();
                rest.remove(id);
                if rest.is_empty() || (strict && self.started_voters(&rest) < rest.len() / 2 + 1) {
                    return Err(MembershipError::NotEnoughStarted);
                }
                if !self.voters.contains(id) {
                    // Still catching up: openraft knows it as a learner.
                    return Ok((
                        *id,
                        ChangeMembers::RemoveNodes(BTreeSet::from([MemberId(*id)])),
                    ));
                }
                Ok((
                    *id,
                    ChangeMembers::RemoveVoters(BTreeSet::from([MemberId(*id)])),
                ))
            }
            Change::Update { id, peer_urls } => {
                let Some(old) = self.members.get(id) else {
                    return Err(MembershipError::MemberNotFound);
                };
                if !valid_urls(peer_urls) {
                    return Err(MembershipError::BadUrls);
                }
                let taken = self.members.iter().any(|(other, m)| {
                    other != id && m.peer_urls.iter().any(|u| peer_urls.contains(u))
                });
                if taken {
                    return Err(MembershipError::PeerUrlExists);
                }
                let member = Member {
                    peer_urls: peer_urls.clone(),
                    ..old.clone()
                };
                Ok((
                    *id,
                    ChangeMembers::SetNodes(BTreeMap::from([(MemberId(*id), member)])),
                ))
            }
            Change::Promote { id } => {
                if !exists(*id) {
                    return Err(MembershipError::MemberNotFound);
                }
                if voters.contains(id) {
                    return Err(MembershipError::NotLearner);
                }
                // etcd: the learner's match index must be at least 90% of the leader's.
                let matched = self.matched.get(id).copied().flatten().unwrap_or(0);
                if matched * 10 < self.last_index * 9 {
                    return Err(MembershipError::LearnerNotReady);
                }
                Ok((
                    *id,
                    ChangeMembers::AddVoterIds(BTreeSet::from([MemberId(*id)])),
                ))
            }
            Change::Publish {
                id,
                name,
                client_urls,
            } => {
                let Some(old) = self.members.get(id) else {
                    return Err(MembershipError::MemberNotFound);
                };
                let member = Member {
                    name: name.clone(),
                    client_urls: client_urls.clone(),
                    ..old.clone()
                };
                Ok((
                    *id,
                    ChangeMembers::SetNodes(BTreeMap::from([(MemberId(*id), member)])),
                ))
            }
        }
    }
}

/// Makes `id`, added by `member add` as a voter, a voter in openraft once it has started and
/// caught up (as `member promote` would allow). Ends when it is promoted or gone, when this
/// member stops leading (the new leader lists it as a learner; `member promote` finishes
/// it), or when the member stops.
pub(crate) async fn promote_when_caught_up<B: mvcc::Backend>(node: crate::Node<B>, id: u64) {
    let stop = node.stopping().clone();
    let mut metrics = node.raft_metrics();
    loop {
        let ready = {
            let m = metrics.borrow_and_update();
            let membership = m.membership_config.membership();
            let raft_id = MemberId(id);
            if m.current_leader != Some(MemberId(node.id()))
                || membership.get_node(&raft_id).is_none()
                || membership.voter_ids().any(|v| v == raft_id)
            {
                node.forget_pending(id);
                return;
            }
            let last = m.last_log_index.unwrap_or(0);
            let matched = m
                .replication
                .as_ref()
                .and_then(|r| r.get(&raft_id).copied().flatten())
                .map(|l| l.index);
            // The leader's own check for `member promote`: within 90% of the leader's log.
            matched.is_some_and(|matched| matched * 10 >= last * 9)
        };
        if ready {
            let limit = node
                .budgets()
                .deadline_for(deadline::Layer::Commit, deadline::Deadline::none());
            let promote = async {
                let Some(_turn) = node.change_turn(limit).await else {
                    return Err("another membership change held its turn".to_string());
                };
                node.raft()
                    .change_membership(
                        ChangeMembers::AddVoterIds(BTreeSet::from([MemberId(id)])),
                        false,
                    )
                    .await
                    .map_err(|e| e.to_string())
            };
            match deadline::within(deadline::Layer::Commit, limit, promote).await {
                Ok(Ok(_)) => {
                    tracing::info!(member = format_args!("{id:x}"), "promoted the new voter");
                    node.forget_pending(id);
                    return;
                }
                Ok(Err(e)) => {
                    tracing::debug!(member = format_args!("{id:x}"), cause = %e, "promoting the new voter failed; retrying");
                }
                Err(_) => {
                    tracing::debug!(
                        member = format_args!("{id:x}"),
                        "promoting the new voter timed out; retrying"
                    );
                }
            }
        }
        tokio::select! {
            () = stop.cancelled() => return,
            changed = metrics.changed() => {
                if changed.is_err() {
                    return;
                }
            }
        }
    }
}

/// openraft's refusal of a membership change, as etcd would say it.
pub(crate) fn refusal(
    e: RaftError<TypeConfig, ClientWriteError<TypeConfig>>,
) -> crate::network::Refusal {
    use crate::network::Refusal;
    match e {
        RaftError::APIError(ClientWriteError::ForwardToLeader(f)) => {
            Refusal::NotLeader(f.leader_id.map(|l| l.0))
        }
        RaftError::APIError(ClientWriteError::ChangeMembershipError(c)) => match c {
            ChangeMembershipError::InProgress(_) => {
                Refusal::Membership(MembershipError::InProgress)
            }
            ChangeMembershipError::LearnerNotFound(_) => {
                Refusal::Membership(MembershipError::MemberNotFound)
            }
            other => Refusal::Other(other.to_string()),
        },
        // Appended, then leadership moved: whether it commits is not known here.
        RaftError::APIError(ClientWriteError::LogEntryDiscarded(_)) => Refusal::Timeout,
        RaftError::APIError(e @ ClientWriteError::PreconditionFailed(_)) => {
            Refusal::Other(e.to_string())
        }
        RaftError::Fatal(_) => Refusal::Stopped,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(url: &str) -> Member {
        Member {
            name: url.into(),
            peer_urls: vec![url.into()],
            client_urls: vec![],
        }
    }

    fn view() -> View {
        View {
            members: BTreeMap::from([
                (1, m("http://a:1")),
                (2, m("http://b:1")),
                (3, m("http://c:1")),
            ]),
            voters: BTreeSet::from([1, 2, 3]),
            pending: BTreeSet::new(),
            matched: BTreeMap::from([(1, Some(100)), (2, Some(100)), (3, None)]),
            leader: 1,
            last_index: 100,
        }
    }

    #[test]
    fn ids_are_stable_and_distinct() {
        let a = member_id(&["http://127.0.0.1:2380".into()], "etcd-cluster");
        assert_eq!(
            a,
            member_id(&["http://127.0.0.1:2380".into()], "etcd-cluster")
        );
        assert_ne!(
            a,
            member_id(&["http://127.0.0.1:2381".into()], "etcd-cluster")
        );
        assert_ne!(a, member_id(&["http://127.0.0.1:2380".into()], "other"));
        assert_ne!(cluster_id("etcd-cluster"), cluster_id("other"));
    }

    #[test]
    fn etcds_checks() {
        let v = view();
        let add = |url: &str, learner| Change::Add {
            peer_urls: vec![url.into()],
            learner,
        };
        assert_eq!(
            v.plan(&add("http://a:1", false), "t", true).unwrap_err(),
            MembershipError::PeerUrlExists
        );
        assert_eq!(
            v.plan(&add("nope", false), "t", true).unwrap_err(),
            MembershipError::BadUrls
        );
        assert!(v.plan(&add("http://d:1", true), "t", true).is_ok());
        // 2 of 3 voters started: a 4th voter would need 3 started.
        assert_eq!(
            v.plan(&add("http://d:1", false), "t", true).unwrap_err(),
            MembershipError::NotEnoughStarted
        );
        assert_eq!(
            v.plan(&Change::Remove { id: 9 }, "t", true).unwrap_err(),
            MembershipError::MemberNotFound
        );
        // Removing a started voter leaves 1 started of 2: not a quorum.
        assert_eq!(
            v.plan(&Change::Remove { id: 2 }, "t", true).unwrap_err(),
            MembershipError::NotEnoughStarted
        );
        assert!(v.plan(&Change::Remove { id: 3 }, "t", true).is_ok());
        assert_eq!(
            v.plan(&Change::Promote { id: 2 }, "t", true).unwrap_err(),
            MembershipError::NotLearner
        );
        let mut with_learner = view();
        with_learner.members.insert(4, m("http://d:1"));
        with_learner.matched.insert(4, Some(50));
        assert_eq!(
            with_learner
                .plan(&Change::Promote { id: 4 }, "t", true)
                .unwrap_err(),
            MembershipError::LearnerNotReady
        );
        assert_eq!(
            with_learner
                .plan(&add("http://e:1", true), "t", true)
                .unwrap_err(),
            MembershipError::TooManyLearners
        );
        with_learner.matched.insert(4, Some(95));
        assert!(with_learner
            .plan(&Change::Promote { id: 4 }, "t", true)
            .is_ok());
    }

    #[test]
    fn a_lone_member_takes_a_second_voter_then_the_strict_check_applies() {
        let add = |url: &str| Change::Add {
            peer_urls: vec![url.into()],
            learner: false,
        };
        let mut v = View {
            members: BTreeMap::from([(1, m("http://a:1"))]),
            voters: BTreeSet::from([1]),
            pending: BTreeSet::new(),
            matched: BTreeMap::new(),
            leader: 1,
            last_index: 10,
        };
        let (id, ask) = v.plan(&add("http://b:1"), "t", true).unwrap();
        assert!(matches!(ask, ChangeMembers::AddNodes(_)));
        // The second voter has not started: a third would need 2 of 3 started.
        v.members.insert(id, m("http://b:1"));
        v.pending.insert(id);
        v.matched.insert(id, None);
        assert_eq!(
            v.plan(&add("http://c:1"), "t", true).unwrap_err(),
            MembershipError::NotEnoughStarted
        );
        // --strict-reconfig-check=false: allowed.
        assert!(v.plan(&add("http://c:1"), "t", false).is_ok());
        // Once it runs, the third is allowed; removing it is allowed, and it is no learner.
        v.matched.insert(id, Some(10));
        assert!(v.plan(&add("http://c:1"), "t", true).is_ok());
        assert_eq!(
            v.plan(&Change::Promote { id }, "t", true).unwrap_err(),
            MembershipError::NotLearner
        );
        assert!(matches!(
            v.plan(&Change::Remove { id }, "t", true).unwrap().1,
            ChangeMembers::RemoveNodes(_)
        ));
    }
}
