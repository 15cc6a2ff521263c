//! SIGTERM with long-lived streams open: etcd 3.4 exits at once, and so must MetaStore (its
//! graceful stop must not wait the api budget for streams that never end on their own).

use std::time::{Duration, Instant};

use deadline::{Deadline, Layer};

use crate::harness::{Kind, Server};

/// The api budget graceful shutdown would wait for a stream that does not close.
const API_BUDGET: Duration = Duration::from_secs(7);

/// Opens a watch stream and a lease keep-alive stream on `server`, then measures how long the
/// process takes to exit after SIGTERM.
async fn exit_time_with_streams(kind: Kind) -> Duration {
    let mut server = Server::start(kind, &[]);
    let mut c = server.client().await;
    let mut events = c.watch("k", None).await.unwrap();
    // The watch is live: it has been created.
    let got = deadline::within(Layer::Api, Deadline::after(API_BUDGET), events.message())
        .await
        .expect("watch created in time")
        .unwrap()
        .expect("a watch response");
    assert!(got.created(), "{got:?}");
    let lease = c.lease_grant(60, None).await.unwrap();
    let (mut keeper, mut alive) = c.lease_keep_alive(lease.id()).await.unwrap();
    keeper.keep_alive().await.unwrap();
    let answer = alive.message().await.unwrap().expect("a keep-alive answer");
    assert_eq!(answer.id(), lease.id());
    let started = Instant::now();
    let status = tokio::task::block_in_place(|| server.terminate(API_BUDGET * 2));
    let took = started.elapsed();
    let status = status.unwrap_or_else(|| {
        panic!(
            "{kind:?} did not exit within {:?} of SIGTERM; log:\n{}",
            API_BUDGET * 2,
            server.log_tail()
        )
    });
    assert!(
        status.success() || kind == Kind::Etcd,
        "{kind:?} exited with {status}; log:\n{}",
        server.log_tail()
    );
    drop((keeper, alive, events, c));
    took
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_with_open_watch_and_keepalive_streams_exits_at_once_as_etcd() {
    let etcd = exit_time_with_streams(Kind::Etcd).await;
    let ours = exit_time_with_streams(Kind::Redb).await;
    // Well under the budget a stuck stream would cost: the budget, not a tight timing, is
    // what this checks.
    assert!(etcd < API_BUDGET / 2, "etcd took {etcd:?}");
    assert!(
        ours < API_BUDGET / 2,
        "MetaStore took {ours:?} to exit on SIGTERM with open streams (etcd: {etcd:?})"
    );
}
