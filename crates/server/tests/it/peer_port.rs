//! Garbage on the peer port: a member refuses what it cannot decode and keeps serving.

use std::time::Duration;

use deadline::{Deadline, Layer};
use etcd_client::Client;

use crate::harness::{Kind, Server};

/// The peer protocol's one message: a bincode payload.
#[derive(Clone, PartialEq, prost::Message)]
struct Payload {
    #[prost(bytes = "vec", tag = "1")]
    data: Vec<u8>,
}

/// A forwarded proposal of one txn nested `depth` levels, as bincode encodes
/// `Forwarded::Propose(Proposal { .. commands: [Tagged { command: Command::Txn(..) }] })`;
/// built as bytes, as a hostile or broken peer would send it.
fn forwarded_nested_txn(depth: usize) -> Vec<u8> {
    let mut b = Vec::new();
    b.extend_from_slice(&0u32.to_le_bytes()); // Forwarded::Propose
    b.extend_from_slice(&2u64.to_le_bytes()); // origin
    b.extend_from_slice(&1u64.to_le_bytes()); // incarnation
    b.extend_from_slice(&1u64.to_le_bytes()); // seq
    b.extend_from_slice(&1u64.to_le_bytes()); // one command
    b.extend_from_slice(&1u64.to_le_bytes()); // its waiter id
    b.extend_from_slice(&2u32.to_le_bytes()); // Command::Txn
    for _ in 0..depth {
        b.extend_from_slice(&0u64.to_le_bytes()); // no compares
        b.extend_from_slice(&1u64.to_le_bytes()); // one success op: RequestOp::Txn
        b.extend_from_slice(&3u32.to_le_bytes());
    }
    b.extend_from_slice(&[0; 24]);
    for _ in 0..depth {
        b.extend_from_slice(&0u64.to_le_bytes()); // no failure ops
    }
    b
}

async fn forward(peer_url: &str, data: Vec<u8>) -> Result<Payload, tonic::Status> {
    let channel = tonic::transport::Endpoint::from_shared(peer_url.to_string())
        .expect("peer url")
        .connect()
        .await
        .expect("connect to the peer port");
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.expect("ready");
    let path = tonic::codegen::http::uri::PathAndQuery::from_static("/metastore.peer.Peer/Forward");
    grpc.unary(
        tonic::Request::new(Payload { data }),
        path,
        tonic_prost::ProstCodec::default(),
    )
    .await
    .map(tonic::Response::into_inner)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deeply_nested_txn_on_the_peer_port_is_refused_and_the_member_lives() {
    let server = Server::start(Kind::Redb, &[]);
    let limit = Deadline::after(Duration::from_secs(10));
    let answer = deadline::within(
        Layer::Api,
        limit,
        forward(&server.peer_url(), forwarded_nested_txn(100_000)),
    )
    .await
    .expect("the peer port answers within 10 s");
    let status = answer.expect_err("a 100,000-deep txn is refused");
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
    assert!(status.message().contains("nested"), "{status:?}");
    // Random garbage too.
    let garbage = deadline::within(
        Layer::Api,
        limit,
        forward(&server.peer_url(), vec![0xff; 64]),
    )
    .await
    .expect("the peer port answers within 10 s");
    assert!(garbage.is_err(), "garbage was taken for a request");
    let mut c = Client::connect([server.endpoint()], None)
        .await
        .expect("connect");
    let put = deadline::within(Layer::Api, limit, c.put("still", "alive", None)).await;
    assert!(
        matches!(put, Ok(Ok(_))),
        "the member no longer serves: {put:?}\n{}",
        server.log_tail()
    );
}
