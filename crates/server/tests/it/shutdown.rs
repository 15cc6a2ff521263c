//! SIGTERM with long-lived streams open: etcd 3.4 exits at once, and so must MetaStore (its
//! graceful stop must not wait the api budget for streams that never end on their own).

use std::time::{Duration, Instant};

use deadline::{Deadline, Layer};

use crate::harness::{Kind, Server};

/// The api budget graceful shutdown would wait for a stream that does not close.
const API_BUDGET: Duration = Duration::from_secs(7);

/// Opens a watch stream and a lease keep-alive stream on `server`, and a Lock call waiting for
/// a held lock, then measures how long the process takes to exit after SIGTERM.
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
    // A Lock call waiting for a held lock: a unary call that would wait its whole deadline.
    c.lock("l", None).await.unwrap();
    let mut waiter = server.client().await;
    let waiting = tokio::spawn(async move { waiter.lock("l", None).await.map(drop) });
    let limit = Instant::now() + API_BUDGET;
    while c
        .get(
            "l/",
            Some(
                etcd_client::GetOptions::new()
                    .with_prefix()
                    .with_count_only(),
            ),
        )
        .await
        .unwrap()
        .count()
        < 2
    {
        assert!(
            Instant::now() < limit,
            "{kind:?}: the second lock call never queued"
        );
        tokio::task::yield_now().await;
    }
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
    // The waiting call ended with the server (an error), not with a lock.
    let ended = waiting.await.unwrap();
    assert!(
        ended.is_err(),
        "{kind:?}: the waiting lock call was granted"
    );
    took
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_with_open_streams_and_a_waiting_lock_exits_at_once_as_etcd() {
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
