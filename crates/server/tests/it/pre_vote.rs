//! etcd's `--pre-vote`: a member cut off from the others does not depose the leader when it
//! returns; without it (openraft's own elections) the cut-off member's higher term does.

use std::time::Duration;

use deadline::pause;
use etcd_client::Client;
use testkit::{Cluster, ClusterOptions};

/// The election timeout the clusters here run with.
const ELECTION: Duration = Duration::from_millis(500);

/// The term member `i` reports, and the leader it names.
async fn term_and_leader(cluster: &Cluster, i: usize) -> (u64, u64) {
    let mut c = Client::connect([cluster.member(i).endpoint()], None)
        .await
        .expect("connect");
    let s = c.status().await.expect("status");
    (s.raft_term(), s.leader())
}

/// Cuts a follower of a 3-member cluster off from both others for 6 election timeouts, heals
/// the cut, waits 6 more; answers (leader id, term) before the cut and after the heal.
async fn cut_a_follower_off_and_heal(pre_vote: bool) -> ((u64, u64), (u64, u64)) {
    let mut extra_args: Vec<String> = [
        "--heartbeat-interval",
        "100",
        "--election-timeout",
        &ELECTION.as_millis().to_string(),
    ]
    .map(String::from)
    .to_vec();
    if pre_vote {
        extra_args.push("--pre-vote".into());
    }
    let cluster = tokio::task::block_in_place(|| {
        Cluster::start(ClusterOptions {
            binary: env!("CARGO_BIN_EXE_metastore").into(),
            members: 3,
            engine: "mem".into(),
            extra_args,
            proxy_peers: true,
        })
    })
    .unwrap_or_else(|e| panic!("starting a cluster: {e}"));
    let leader = tokio::task::block_in_place(|| cluster.wait_leader(Duration::from_secs(10)))
        .expect("a leader");
    // Let the leader settle (every member following it) before measuring.
    pause(ELECTION * 2).await;
    let (term, leader_id) = term_and_leader(&cluster, leader).await;
    let follower = (0..3).find(|i| *i != leader).expect("a follower");
    let net = cluster.net().expect("proxied peers");
    for other in (0..3).filter(|i| *i != follower) {
        net.cut_both(follower, other);
    }
    pause(ELECTION * 6).await;
    net.heal();
    pause(ELECTION * 6).await;
    let now = tokio::task::block_in_place(|| cluster.wait_leader(Duration::from_secs(10)))
        .expect("a leader after the heal");
    let (term_after, leader_after) = term_and_leader(&cluster, now).await;
    ((leader_id, term), (leader_after, term_after))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_pre_vote_a_returning_member_leaves_leader_and_term_alone() {
    let (before, after) = cut_a_follower_off_and_heal(true).await;
    assert_eq!(
        after, before,
        "(leader, term) changed when the cut-off member returned"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_pre_vote_a_returning_member_raises_the_term() {
    // What --pre-vote prevents (so the test above can fail): openraft's own elections on the
    // cut-off member raise its term, and its return makes the leader step down.
    let ((_, term), (_, term_after)) = cut_a_follower_off_and_heal(false).await;
    assert!(term_after > term, "the term stayed {term}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_pre_vote_a_killed_leader_is_replaced_and_writes_go_on() {
    let mut cluster = tokio::task::block_in_place(|| {
        Cluster::start(ClusterOptions {
            binary: env!("CARGO_BIN_EXE_metastore").into(),
            members: 3,
            engine: "mem".into(),
            extra_args: [
                "--heartbeat-interval",
                "100",
                "--election-timeout",
                "500",
                "--pre-vote",
            ]
            .map(String::from)
            .to_vec(),
            proxy_peers: false,
        })
    })
    .unwrap_or_else(|e| panic!("starting a cluster: {e}"));
    let leader = tokio::task::block_in_place(|| cluster.wait_leader(Duration::from_secs(10)))
        .expect("a leader");
    let (term, _) = term_and_leader(&cluster, leader).await;
    cluster.kill(leader);
    // Pre-vote asks after 1–2 election timeouts of silence; allow a few rounds.
    let next = tokio::task::block_in_place(|| cluster.wait_leader(ELECTION * 10))
        .unwrap_or_else(|e| panic!("{e}: {}", cluster.log_tail((leader + 1) % 3)));
    assert_ne!(next, leader);
    let (term_after, _) = term_and_leader(&cluster, next).await;
    assert!(term_after > term);
    let mut c = Client::connect([cluster.member(next).endpoint()], None)
        .await
        .expect("connect");
    c.put("k", "v", None)
        .await
        .expect("a write under the new leader");
}
