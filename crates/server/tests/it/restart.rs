//! Whole-cluster SIGKILL and restart, with a reader on every member from the moment its
//! client port opens: a linearizable read must never miss an acknowledged write (issue 23).
//!
//! The short version runs in the test suite; `make restart-rounds` runs 200 rounds
//! (`METASTORE_RESTART_ROUNDS`).

use std::time::{Duration, Instant};

use deadline::pause;
use etcd_client::{Client, ConnectOptions};
use testkit::{Cluster, ClusterOptions};

/// Rounds in the test suite; `METASTORE_RESTART_ROUNDS` overrides it.
const DEFAULT_ROUNDS: usize = 4;
/// Puts acknowledged before each whole-cluster kill.
const PUTS_PER_ROUND: usize = 20;
/// Longest a restarted member may take to answer its first linearizable read.
const READ_LIMIT: Duration = Duration::from_secs(40);

fn rounds() -> usize {
    std::env::var("METASTORE_RESTART_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(DEFAULT_ROUNDS)
}

async fn connect(endpoint: &str, timeout: Duration) -> Option<Client> {
    Client::connect(
        [endpoint],
        Some(
            ConnectOptions::new()
                .with_timeout(timeout)
                .with_connect_timeout(Duration::from_millis(500)),
        ),
    )
    .await
    .ok()
}

/// Puts `last` = `<round>-<seq>` until [`PUTS_PER_ROUND`] are acknowledged, through any
/// member; answers the last acknowledged value and its revision.
async fn write_round(endpoints: &[String], round: usize) -> (String, i64) {
    let started = Instant::now();
    let mut acked = None;
    let mut seq = 0;
    let mut i = round;
    while seq < PUTS_PER_ROUND {
        assert!(
            started.elapsed() < READ_LIMIT,
            "round {round}: the cluster acknowledged only {seq} puts in {READ_LIMIT:?}"
        );
        let endpoint = &endpoints[i % endpoints.len()];
        i += 1;
        let Some(mut c) = connect(endpoint, Duration::from_secs(5)).await else {
            pause(Duration::from_millis(20)).await;
            continue;
        };
        while seq < PUTS_PER_ROUND {
            let value = format!("{round}-{seq}");
            match c.put("last", value.as_str(), None).await {
                Ok(r) => {
                    let rev = r.header().map_or(0, |h| h.revision());
                    acked = Some((value, rev));
                    seq += 1;
                }
                // Unanswered: it may or may not have happened, so the round starts its count
                // again with new values (the last acknowledged one must still come last).
                Err(_) => {
                    pause(Duration::from_millis(20)).await;
                    break;
                }
            }
        }
    }
    acked.expect("puts were acknowledged")
}

/// Reads `last` linearizably through `endpoint` from the moment it accepts a connection,
/// retrying refusals (no leader yet), and answers the first value read with its revision.
async fn first_read(endpoint: String) -> Result<(Option<String>, i64), String> {
    let started = Instant::now();
    let mut last_error = String::from("never connected");
    while started.elapsed() < READ_LIMIT {
        let Some(mut c) = connect(&endpoint, Duration::from_secs(5)).await else {
            pause(Duration::from_millis(5)).await;
            continue;
        };
        match c.get("last", None).await {
            Ok(r) => {
                let value = r
                    .kvs()
                    .first()
                    .map(|kv| String::from_utf8_lossy(kv.value()).into_owned());
                return Ok((value, r.header().map_or(0, |h| h.revision())));
            }
            Err(e) => {
                last_error = e.to_string();
                pause(Duration::from_millis(5)).await;
            }
        }
    }
    Err(format!(
        "{endpoint}: no read within {READ_LIMIT:?}: {last_error}"
    ))
}

#[tokio::test(flavor = "multi_thread")]
async fn whole_cluster_restarts_never_serve_a_stale_read() {
    let rounds = rounds();
    let mut cluster = Cluster::start(ClusterOptions {
        binary: env!("CARGO_BIN_EXE_metastore").into(),
        members: 3,
        engine: "redb".into(),
        extra_args: vec!["--request-timeout".into(), "3s".into()],
        proxy_peers: false,
    })
    .unwrap_or_else(|e| panic!("starting a cluster: {e}"));
    let endpoints = cluster.endpoints();
    let mut stale = Vec::new();
    for round in 0..rounds {
        let (acked, acked_rev) = write_round(&endpoints, round).await;
        // All at once, right after the last acknowledgement.
        for i in 0..3 {
            cluster.kill(i);
        }
        for i in 0..3 {
            cluster
                .respawn(i)
                .unwrap_or_else(|e| panic!("round {round}: {e}"));
        }
        let readers: Vec<_> = endpoints
            .iter()
            .map(|e| tokio::spawn(first_read(e.clone())))
            .collect();
        for (i, reader) in readers.into_iter().enumerate() {
            let read = reader.await.expect("reader task");
            let (value, rev) = read
                .unwrap_or_else(|e| panic!("round {round}: {e}; log:\n{}", cluster.log_tail(i)));
            if value.as_deref() != Some(acked.as_str()) {
                stale.push(format!(
                    "round {round}, member {i}: read {value:?} at revision {rev}, but \
                     {acked:?} was acknowledged at revision {acked_rev}"
                ));
            }
        }
        assert!(
            stale.is_empty(),
            "stale reads after a whole-cluster restart ({} of {} rounds):\n  {}\nlog of m0:\n{}",
            round + 1,
            rounds,
            stale.join("\n  "),
            cluster.log_tail(0)
        );
    }
    eprintln!("{rounds} whole-cluster restart rounds, no stale read");
}

/// A single member stopped and started again on other ports, as after a host or container
/// move: etcd keeps its member id (read from its data, not from the changed
/// `--initial-advertise-peer-urls`), leads and serves. On main MetaStore derived the id from
/// the new peer URL, was not a voter of its own cluster, and never had a leader.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_restarted_on_new_ports_keeps_its_identity_as_etcd() {
    use crate::harness::{free_port, Kind, Server};
    for kind in [Kind::Etcd, Kind::Redb, Kind::Mem] {
        let mut server = Server::start(kind, &[]);
        let mut c = server.client().await;
        c.put("moved", "v1", None).await.expect("put");
        let id = c
            .status()
            .await
            .expect("status")
            .header()
            .expect("header")
            .member_id();
        drop(c);
        assert!(
            server.terminate(Duration::from_secs(20)).is_some(),
            "{kind:?} did not stop on SIGTERM"
        );
        server.client_port = free_port();
        server.peer_port = free_port();
        // Waits until /health says the member has a leader (panics after its limit).
        server.restart();
        let mut c = server.client().await;
        let got = c.get("moved", None).await.expect("get after the move");
        assert_eq!(
            got.kvs().first().map(|kv| kv.value()),
            Some(&b"v1"[..]),
            "{kind:?}"
        );
        c.put("moved", "v2", None)
            .await
            .expect("put after the move");
        let status = c.status().await.expect("status");
        assert_eq!(
            status.header().expect("header").member_id(),
            id,
            "{kind:?} keeps its member id"
        );
        assert_eq!(status.leader(), id, "{kind:?} leads its own cluster");
    }
}
