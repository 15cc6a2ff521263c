//! A member joining a running cluster (`--initial-cluster-state existing`, after `etcdctl
//! member add`) learns the id the cluster gave it, and the cluster's id, by asking the members
//! its `--initial-cluster` names for their member list and finding its own peer URLs there, as
//! etcd's joining member does. Deriving them from `--initial-cluster-token` instead would give
//! a member started without the cluster's token an id no member knows.

use std::collections::BTreeSet;
use std::time::Duration;

use deadline::{Deadline, Layer};

use crate::error::StartError;
use crate::network::{MembersReply, Peers, Rpc};
use crate::node::NodeConfig;

/// How long a joining member keeps asking: the `member add` may still be on its way to the
/// member asked, or a peer may be restarting.
const ASK_FOR: Duration = Duration::from_secs(10);
/// The pause between rounds of asking.
const RETRY: Duration = Duration::from_millis(200);

fn url_set(urls: &[String]) -> BTreeSet<&str> {
    urls.iter().map(|u| u.trim_end_matches('/')).collect()
}

/// The member whose peer URLs are exactly `own`, in `reply`.
fn find_own(reply: &MembersReply, own: &[String]) -> Option<u64> {
    let own = url_set(own);
    reply
        .members
        .iter()
        .find(|(_, m)| url_set(&m.peer_urls) == own)
        .map(|(id, _)| *id)
}

/// Asks the other members `config.initial_members` names for the cluster's members until one
/// lists this member's peer URLs; answers (member id, cluster id).
///
/// # Errors
/// [`StartError::Join`] when no other member is named, none answers within [`ASK_FOR`], or
/// none lists this member's peer URLs by then.
pub(crate) async fn assigned_ids(config: &NodeConfig) -> Result<(u64, u64), StartError> {
    let own = &config.member.peer_urls;
    let others: Vec<_> = config
        .initial_members
        .iter()
        .filter(|(_, m)| url_set(&m.peer_urls) != url_set(own))
        .map(|(id, m)| (*id, m.clone()))
        .collect();
    if others.is_empty() {
        return Err(StartError::Join(
            "--initial-cluster-state existing: --initial-cluster names no other member to ask \
             for this member's id"
                .to_string(),
        ));
    }
    let peers = Peers::new(config.budgets, config.peer_source_addr)
        .with_identity(config.id, config.peer_tls.clone());
    let until = Deadline::after(ASK_FOR);
    let mut answered: Vec<String> = Vec::new();
    let mut last_error = String::new();
    loop {
        for (id, member) in &others {
            match peers
                .call::<(), MembersReply>(*id, member, Rpc::Members, &(), until.remaining())
                .await
            {
                Ok(reply) => {
                    if let Some(assigned) = find_own(&reply, own) {
                        return Ok((assigned, reply.cluster_id));
                    }
                    if !answered.contains(&member.to_string()) {
                        answered.push(member.to_string());
                    }
                }
                Err(e) => last_error = format!("{member}: {e}"),
            }
        }
        if until.is_expired() {
            break;
        }
        let _ = deadline::within(
            Layer::PeerRpc,
            until.earliest(Deadline::after(RETRY)),
            std::future::pending::<()>(),
        )
        .await;
    }
    Err(StartError::Join(if answered.is_empty() {
        // etcd's words when no peer answers.
        format!(
            "cannot fetch cluster info from peer urls: could not retrieve cluster information \
             from the given URLs (last error: {last_error})"
        )
    } else {
        format!(
            "no member of the cluster has this member's peer URLs {own:?} (asked {}): add it \
             with `etcdctl member add` first",
            answered.join(", ")
        )
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::Member;

    fn member(urls: &[&str]) -> Member {
        Member {
            name: String::new(),
            peer_urls: urls.iter().map(|u| u.to_string()).collect(),
            client_urls: Vec::new(),
        }
    }

    #[test]
    fn own_entry_is_found_by_the_whole_set_of_peer_urls() {
        let reply = MembersReply {
            cluster_id: 9,
            members: vec![
                (1, member(&["http://a:2380"])),
                (2, member(&["http://b:2380", "http://c:2380"])),
            ],
        };
        let own = |urls: &[&str]| {
            find_own(
                &reply,
                &urls.iter().map(|u| u.to_string()).collect::<Vec<_>>(),
            )
        };
        assert_eq!(own(&["http://c:2380/", "http://b:2380"]), Some(2));
        assert_eq!(own(&["http://a:2380"]), Some(1));
        assert_eq!(own(&["http://b:2380"]), None);
    }
}
