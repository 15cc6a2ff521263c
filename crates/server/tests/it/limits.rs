//! What one client can cost the server: a long scan stops at its deadline without holding up
//! anyone else, an answer over the response limit is refused with grpc-go's text.

use std::time::{Duration, Instant};

use kvapi::pb::etcdserverpb::kv_client::KvClient;
use kvapi::pb::etcdserverpb::maintenance_client::MaintenanceClient;
use kvapi::pb::etcdserverpb::{HashKvRequest, PutRequest, RangeRequest, RequestOp, TxnRequest};
use tonic::transport::Channel;
use tonic::Code;

use crate::harness::{Kind, Server};

/// Keys put per txn while loading (the server runs with this `--max-txn-ops`).
const TXN_OPS: usize = 10_000;

/// A raw KV client on its own connection.
async fn kv(server: &Server) -> KvClient<Channel> {
    KvClient::connect(server.endpoint()).await.expect("connect")
}

/// Puts `count` keys `prefix000000…` with `value`, `TXN_OPS` per txn.
async fn fill(server: &Server, prefix: &str, count: usize, value: &[u8]) {
    let mut c = kv(server).await;
    for start in (0..count).step_by(TXN_OPS) {
        let success = (start..count.min(start + TXN_OPS))
            .map(|i| RequestOp {
                request: Some(kvapi::pb::etcdserverpb::request_op::Request::RequestPut(
                    PutRequest {
                        key: format!("{prefix}{i:06}").into_bytes(),
                        value: value.to_vec(),
                        ..Default::default()
                    },
                )),
            })
            .collect();
        c.txn(TxnRequest {
            success,
            ..Default::default()
        })
        .await
        .unwrap_or_else(|e| panic!("txn at {start}: {e}"));
    }
}

/// Reads the server gave up before they finished (their deadline passed or their client left).
fn stopped(server: &Server) -> f64 {
    server
        .metric("metastore_reads_stopped_total")
        .unwrap_or(0.0)
}

/// A range over every key of `prefix` that sends ten but counts them all.
fn counting_range(prefix: &str) -> RangeRequest {
    let mut end = prefix.as_bytes().to_vec();
    if let Some(last) = end.last_mut() {
        *last += 1;
    }
    RangeRequest {
        key: prefix.as_bytes().to_vec(),
        range_end: end,
        limit: 10,
        ..Default::default()
    }
}

/// Ranges that count a hundred thousand keys and hashes of them all, several at once with a
/// short deadline: the server gives each up at its deadline (it answers DeadlineExceeded, not a
/// late OK), and a small get on another connection is answered promptly all the while.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_range_stops_at_its_deadline_and_others_are_served() {
    const KEYS: usize = 150_000;
    const SCANS: usize = 6;
    const HASHES: usize = 2;
    // Short next to a full count of KEYS (about 190 ms on an idle 2-core machine, more under
    // load): with 50 ms the test's own premise (a count takes over 4 deadlines) failed there.
    const DEADLINE: Duration = Duration::from_millis(25);
    /// How long after its deadline the server may take to give a scan up.
    const SLACK: Duration = Duration::from_millis(700);
    let ops = TXN_OPS.to_string();
    let server = Server::start(Kind::Redb, &["--max-txn-ops", &ops]);
    let loading = Instant::now();
    fill(&server, "big/", KEYS, b"v").await;
    eprintln!("loaded {KEYS} keys in {:?}", loading.elapsed());
    let mut small = kv(&server).await;
    small
        .put(PutRequest {
            key: b"small".to_vec(),
            value: b"1".to_vec(),
            ..Default::default()
        })
        .await
        .expect("put small");

    // Without a deadline the scan takes long enough for the test to mean something.
    let started = Instant::now();
    let mut c = kv(&server).await;
    let full = c.range(counting_range("big/")).await.expect("full range");
    let whole = started.elapsed();
    assert_eq!(full.get_ref().count, KEYS as i64);
    assert!(
        whole > DEADLINE * 4,
        "a full count took only {whole:?}: too quick to test a {DEADLINE:?} deadline"
    );
    let started = Instant::now();
    let mut m = MaintenanceClient::connect(server.endpoint())
        .await
        .expect("connect");
    m.hash_kv(HashKvRequest { revision: 0 })
        .await
        .expect("hash");
    let hash_whole = started.elapsed();
    assert!(
        hash_whole > DEADLINE * 3,
        "a full hash took only {hash_whole:?}: too quick to test a {DEADLINE:?} deadline"
    );

    let before = stopped(&server);
    let mut scans = tokio::task::JoinSet::new();
    for _ in 0..SCANS {
        let mut c = kv(&server).await;
        scans.spawn(async move {
            let mut request = tonic::Request::new(counting_range("big/"));
            request.set_timeout(DEADLINE);
            let started = Instant::now();
            let answer = c.range(request).await;
            (answer.map(|_| ()), started.elapsed())
        });
    }
    for _ in 0..HASHES {
        let mut m = MaintenanceClient::connect(server.endpoint())
            .await
            .expect("connect");
        scans.spawn(async move {
            let mut request = tonic::Request::new(HashKvRequest { revision: 0 });
            request.set_timeout(DEADLINE);
            let started = Instant::now();
            let answer = m.hash_kv(request).await;
            (answer.map(|_| ()), started.elapsed())
        });
    }
    // Small gets while the scans run: each answered promptly.
    let scans_started = Instant::now();
    let mut slowest = Duration::ZERO;
    while scans_started.elapsed() < DEADLINE * 3 {
        let started = Instant::now();
        let mut request = tonic::Request::new(RangeRequest {
            key: b"small".to_vec(),
            ..Default::default()
        });
        request.set_timeout(Duration::from_secs(10));
        let got = small.range(request).await.expect("small get");
        assert_eq!(got.get_ref().kvs.len(), 1);
        slowest = slowest.max(started.elapsed());
    }
    while let Some(done) = scans.join_next().await {
        let (answer, took) = done.expect("scan task");
        let status = answer.expect_err("a scan past its deadline must fail");
        assert!(
            matches!(status.code(), Code::DeadlineExceeded | Code::Cancelled),
            "{status:?}"
        );
        assert!(took < DEADLINE + SLACK, "the client waited {took:?}");
    }
    assert!(
        slowest < Duration::from_millis(250),
        "a small get took {slowest:?} while {SCANS} long scans ran"
    );
    // The server itself gave the scans up at their deadline rather than finish them for
    // nobody: those running were stopped, those waiting to run never started.
    loop {
        let running = server.metric("metastore_reads_running");
        if stopped(&server) > before && running == Some(0.0) {
            break;
        }
        assert!(
            scans_started.elapsed() < DEADLINE + SLACK,
            "within {:?}, {} of {SCANS} counts and {HASHES} hashes were stopped and {running:?} \
             still run (a full count takes {whole:?}, a full hash {hash_whole:?})",
            scans_started.elapsed(),
            stopped(&server) - before,
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// An answer over `--max-response-bytes` is refused as etcd's gRPC library refuses a message
/// over its send limit, and the server holds no more of it than the limit meanwhile; smaller
/// answers from the same keys (a limit, keys only, a count) are served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_over_the_response_limit_is_refused_as_grpc_go_refuses_it() {
    const LIMIT: usize = 1 << 20;
    const KEYS: usize = 40;
    const VALUE: usize = 60_000;
    let limit = LIMIT.to_string();
    let server = Server::start(Kind::Redb, &["--max-response-bytes", &limit]);
    let mut c = kv(&server).await;
    for i in 0..KEYS {
        c.put(PutRequest {
            key: format!("big/{i:06}").into_bytes(),
            value: vec![b'x'; VALUE],
            ..Default::default()
        })
        .await
        .expect("put");
    }
    let all = RangeRequest {
        key: b"big/".to_vec(),
        range_end: b"big0".to_vec(),
        ..Default::default()
    };
    let status = c
        .range(all.clone())
        .await
        .expect_err("over the response limit");
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    let text =
        regex::Regex::new(r"^grpc: trying to send message larger than max \((\d+) vs\. (\d+)\)$")
            .expect("regex");
    let caps = text
        .captures(status.message())
        .unwrap_or_else(|| panic!("grpc-go's text: {:?}", status.message()));
    let size: usize = caps[1].parse().expect("size");
    assert_eq!(&caps[2], limit.as_str());
    assert!(
        (KEYS * VALUE..KEYS * (VALUE + 100)).contains(&size),
        "the answer's size: {size}"
    );
    let some = c
        .range(RangeRequest {
            limit: 10,
            ..all.clone()
        })
        .await
        .expect("ten keys fit");
    assert_eq!((some.get_ref().kvs.len(), some.get_ref().more), (10, true));
    let keys = c
        .range(RangeRequest {
            keys_only: true,
            ..all.clone()
        })
        .await
        .expect("keys only fit");
    assert_eq!(keys.get_ref().kvs.len(), KEYS);
    let count = c
        .range(RangeRequest {
            count_only: true,
            ..all
        })
        .await
        .expect("a count fits");
    assert_eq!(count.get_ref().count, KEYS as i64);
}

/// Past `--max-client-connections` a new connection is closed at once (and counted); one
/// freed lets the next in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_over_the_cap_are_closed() {
    use tokio::io::AsyncReadExt;
    let server = Server::start(Kind::Redb, &["--max-client-connections", "2"]);
    let addr = format!("127.0.0.1:{}", server.client_port);
    // Two connections that hold their places (HTTP/2 clients, each with a live call).
    let mut first = kv(&server).await;
    first
        .range(RangeRequest {
            key: b"a".to_vec(),
            ..Default::default()
        })
        .await
        .expect("first");
    let second = tokio::net::TcpStream::connect(&addr).await.expect("second");
    // The third is closed without a word.
    let mut third = tokio::net::TcpStream::connect(&addr).await.expect("third");
    let mut buf = [0u8; 16];
    let read = deadline::within(
        deadline::Layer::Api,
        deadline::Deadline::after(Duration::from_secs(5)),
        third.read(&mut buf),
    )
    .await
    .expect("the third connection is closed promptly");
    assert!(
        matches!(read, Ok(0) | Err(_)),
        "the third connection got {read:?}"
    );
    let refused = KvClient::connect(server.endpoint())
        .await
        .map(|mut c| async move {
            c.range(RangeRequest {
                key: b"a".to_vec(),
                ..Default::default()
            })
            .await
        });
    match refused {
        Err(_) => {}
        Ok(call) => assert!(call.await.is_err(), "a call over the cap was served"),
    }
    // A freed place lets the next connection in.
    drop(second);
    let started = Instant::now();
    loop {
        let mut c = match KvClient::connect(server.endpoint()).await {
            Ok(c) => c,
            Err(e) => {
                assert!(
                    started.elapsed() < Duration::from_secs(5),
                    "never let in: {e}"
                );
                std::thread::sleep(Duration::from_millis(50));
                continue;
            }
        };
        match c
            .range(RangeRequest {
                key: b"a".to_vec(),
                ..Default::default()
            })
            .await
        {
            Ok(_) => break,
            Err(e) => assert!(
                started.elapsed() < Duration::from_secs(5),
                "never let in: {e}"
            ),
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    first
        .range(RangeRequest {
            key: b"a".to_vec(),
            ..Default::default()
        })
        .await
        .expect("the first connection still works");
    // Counted (read once a place is free: the scrape is a connection too).
    let started = Instant::now();
    loop {
        match server.metric("metastore_client_connections_refused_total") {
            Some(n) if n >= 1.0 => break,
            other => assert!(
                started.elapsed() < Duration::from_secs(5),
                "refusals counted: {other:?}"
            ),
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Past `--max-watchers-per-stream` a create is refused with a reason naming the limit, the
/// stream's other watches go on, and a cancel makes room.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watchers_over_the_cap_are_refused_with_a_reason() {
    use kvapi::pb::etcdserverpb::watch_client::WatchClient;
    use kvapi::pb::etcdserverpb::watch_request::RequestUnion;
    use kvapi::pb::etcdserverpb::{WatchCancelRequest, WatchCreateRequest, WatchRequest};
    let server = Server::start(Kind::Redb, &["--max-watchers-per-stream", "3"]);
    let mut client = WatchClient::connect(server.endpoint())
        .await
        .expect("connect");
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    let create = |key: &str| WatchRequest {
        request_union: Some(RequestUnion::CreateRequest(WatchCreateRequest {
            key: key.as_bytes().to_vec(),
            ..Default::default()
        })),
    };
    tx.send(create("w0")).await.expect("send");
    let mut responses = client
        .watch(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .expect("watch")
        .into_inner();
    for key in ["w1", "w2", "w3"] {
        tx.send(create(key)).await.expect("send");
    }
    let mut ids = Vec::new();
    for _ in 0..3 {
        let r = next(&mut responses).await;
        assert!(r.created && !r.canceled, "{r:?}");
        ids.push(r.watch_id);
    }
    let refused = next(&mut responses).await;
    assert!(refused.created && refused.canceled, "{refused:?}");
    assert!(
        refused.cancel_reason.contains("too many watchers")
            && refused.cancel_reason.contains("--max-watchers-per-stream"),
        "{:?}",
        refused.cancel_reason
    );
    // The others still see their keys.
    let mut c = kv(&server).await;
    c.put(PutRequest {
        key: b"w0".to_vec(),
        value: b"v".to_vec(),
        ..Default::default()
    })
    .await
    .expect("put");
    let event = next(&mut responses).await;
    assert_eq!(
        (event.watch_id, event.events.len()),
        (ids[0], 1),
        "{event:?}"
    );
    // A cancel makes room.
    tx.send(WatchRequest {
        request_union: Some(RequestUnion::CancelRequest(WatchCancelRequest {
            watch_id: ids[1],
        })),
    })
    .await
    .expect("send");
    assert!(next(&mut responses).await.canceled);
    tx.send(create("w4")).await.expect("send");
    let r = next(&mut responses).await;
    assert!(r.created && !r.canceled, "{r:?}");
}

/// The next watch response, within ten seconds.
async fn next(
    responses: &mut tonic::Streaming<kvapi::pb::etcdserverpb::WatchResponse>,
) -> kvapi::pb::etcdserverpb::WatchResponse {
    deadline::within(
        deadline::Layer::Api,
        deadline::Deadline::after(Duration::from_secs(10)),
        responses.message(),
    )
    .await
    .expect("a response in time")
    .expect("the stream works")
    .expect("the stream is open")
}

/// A watch from the start of a long history of large values, whose client reads nothing: the
/// server holds about `--max-watcher-queue-bytes` for it, not the whole history (catch-up
/// reads were bounded by 1,000 events, whatever their size); once read, every revision comes,
/// once, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unread_watch_holds_its_byte_budget_not_the_history() {
    use kvapi::pb::etcdserverpb::watch_client::WatchClient;
    use kvapi::pb::etcdserverpb::watch_request::RequestUnion;
    use kvapi::pb::etcdserverpb::{WatchCreateRequest, WatchRequest};
    const VALUE: usize = 512 * 1024;
    const PUTS: usize = 160;
    const BUDGET: usize = 4 << 20;
    let budget = BUDGET.to_string();
    // The engine's page cache is capped well under the bound: reading the history back fills
    // it (up to 256 MiB by default), which is memory the cache flag bounds, not the watch.
    let server = Server::start(
        Kind::Redb,
        &[
            "--max-watcher-queue-bytes",
            &budget,
            "--engine-cache-bytes",
            "16777216",
        ],
    );
    let mut c = kv(&server).await;
    for i in 0..PUTS {
        c.put(PutRequest {
            key: format!("h/{i:04}").into_bytes(),
            value: vec![b'v'; VALUE],
            ..Default::default()
        })
        .await
        .expect("put");
    }
    let rss_before = server.rss().expect("rss");
    let mut client = WatchClient::connect(server.endpoint())
        .await
        .expect("connect")
        .max_decoding_message_size(64 << 20);
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    tx.send(WatchRequest {
        request_union: Some(RequestUnion::CreateRequest(WatchCreateRequest {
            key: b"h/".to_vec(),
            range_end: b"h0".to_vec(),
            start_revision: 1,
            ..Default::default()
        })),
    })
    .await
    .expect("send");
    let mut responses = client
        .watch(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .expect("watch")
        .into_inner();
    let created = next(&mut responses).await;
    assert!(created.created, "{created:?}");
    // Unread for a while: catch-up runs as far as the budget lets it.
    std::thread::sleep(Duration::from_secs(2));
    let grew = server.rss().expect("rss").saturating_sub(rss_before);
    let history = (PUTS * VALUE) as u64;
    eprintln!(
        "an unread watch of {} MiB of history: the server grew {} MiB",
        history >> 20,
        grew >> 20
    );
    assert!(
        grew < history / 2,
        "the server grew {} MiB for an unread watch of {} MiB of history",
        grew >> 20,
        history >> 20
    );
    let mut revisions = Vec::new();
    while revisions.len() < PUTS {
        let r = next(&mut responses).await;
        revisions.extend(
            r.events
                .iter()
                .filter_map(|e| e.kv.as_ref().map(|kv| kv.mod_revision)),
        );
    }
    assert_eq!(revisions, (2..2 + PUTS as i64).collect::<Vec<_>>());
    drop(tx);
}

/// `--max-concurrent-streams` (etcd's flag) is what the server announces in HTTP/2's
/// SETTINGS: a client holding that many streams on one connection (here, watch streams) gets
/// no more there until one ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_over_the_cap_wait_for_a_free_one() {
    use kvapi::pb::etcdserverpb::watch_client::WatchClient;
    use kvapi::pb::etcdserverpb::watch_request::RequestUnion;
    use kvapi::pb::etcdserverpb::{WatchCreateRequest, WatchRequest};
    let server = Server::start(Kind::Redb, &["--max-concurrent-streams", "2"]);
    let channel = tonic::transport::Endpoint::from_shared(server.endpoint())
        .expect("endpoint")
        .connect()
        .await
        .expect("connect");
    let mut open = Vec::new();
    for key in ["s1", "s2"] {
        let (tx, rx) = tokio::sync::mpsc::channel(1);
        tx.send(WatchRequest {
            request_union: Some(RequestUnion::CreateRequest(WatchCreateRequest {
                key: key.as_bytes().to_vec(),
                ..Default::default()
            })),
        })
        .await
        .expect("send");
        let mut responses = WatchClient::new(channel.clone())
            .watch(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await
            .expect("watch")
            .into_inner();
        assert!(next(&mut responses).await.created);
        open.push((tx, responses));
    }
    let get = || {
        let mut c = KvClient::new(channel.clone());
        async move {
            let mut request = tonic::Request::new(RangeRequest {
                key: b"s1".to_vec(),
                ..Default::default()
            });
            request.set_timeout(Duration::from_millis(500));
            c.range(request).await
        }
    };
    assert!(
        get().await.is_err(),
        "a third stream was served beside two open ones"
    );
    // Another connection is not affected.
    kv(&server)
        .await
        .range(RangeRequest {
            key: b"s1".to_vec(),
            ..Default::default()
        })
        .await
        .expect("another connection");
    drop(open.pop());
    let started = Instant::now();
    loop {
        match get().await {
            Ok(_) => break,
            Err(e) => assert!(
                started.elapsed() < Duration::from_secs(5),
                "a freed stream did not let the call in: {e}"
            ),
        }
    }
}
