//! etcd's require-leader metadata (`hasleader: true`, sent by clientv3's `WithRequireLeader`
//! and by its watch streams): a call made with it is answered "etcdserver: no leader" at once
//! when this member knows no leader, and a stream opened with it is ended with that error once
//! the member has had no leader for three election timeouts in a row, so the client moves it
//! to a healthy member. Without it a request waits (bounded) for a leader, and streams stay.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use axum::body::Bytes;
use axum::http::{HeaderMap, Response};
use http_body::Frame;
use mvcc::Backend;
use tonic::body::Body;

use consensus::Node;

/// The metadata key, and the value that asks for a leader.
const KEY: &str = "hasleader";
const VALUE: &[u8] = b"true";
/// Election timeouts without a leader after which a stream requiring one ends (etcd's
/// `maxNoLeaderCnt`).
const LEADERLESS_ELECTIONS: u32 = 3;
/// Streams ended because the member lost its leader.
const CANCELLED: &str = "metastore_no_leader_streams_cancelled_total";

fn no_leader() -> tonic::Status {
    tonic::Status::unavailable("etcdserver: no leader")
}

/// Whether a call with `headers` asks for a leader.
pub(crate) fn required(headers: &HeaderMap) -> bool {
    headers.get(KEY).is_some_and(|v| v.as_bytes() == VALUE)
}

/// The answer to a call that asks for a leader when `node` knows none; `None` when it may go on.
pub(crate) fn refusal<B: Backend>(node: &Node<B>) -> Option<Response<Body>> {
    (!node.has_leader()).then(|| no_leader().into_http())
}

/// `response` with its body ended by "etcdserver: no leader" once `node` has had no leader
/// for [`LEADERLESS_ELECTIONS`] election timeouts.
pub(crate) fn monitored<B: Backend>(node: Node<B>, response: Response<Body>) -> Response<Body> {
    let (parts, body) = response.into_parts();
    let lost = Box::pin(async move { node.leaderless_for(LEADERLESS_ELECTIONS).await });
    Response::from_parts(
        parts,
        Body::new(Monitored {
            inner: body,
            lost,
            ended: false,
        }),
    )
}

/// A response body that ends with "no leader" when `lost` resolves first.
struct Monitored {
    inner: Body,
    lost: Pin<Box<dyn Future<Output = ()> + Send>>,
    ended: bool,
}

impl http_body::Body for Monitored {
    type Data = Bytes;
    type Error = tonic::Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, tonic::Status>>> {
        if self.ended {
            return Poll::Ready(None);
        }
        if self.lost.as_mut().poll(cx).is_ready() {
            self.ended = true;
            // Dropping the inner body ends the stream behind it (a watch stream's watchers).
            self.inner = Body::empty();
            metrics::counter!(CANCELLED).increment(1);
            // tonic encodes the status as headers of a trailers-only answer; the same two go
            // into the trailers here.
            let encoded = no_leader().into_http::<Body>();
            let mut trailers = HeaderMap::new();
            for key in ["grpc-status", "grpc-message"] {
                if let Some(v) = encoded.headers().get(key) {
                    trailers.insert(key, v.clone());
                }
            }
            return Poll::Ready(Some(Ok(Frame::trailers(trailers))));
        }
        match Pin::new(&mut self.inner).poll_frame(cx) {
            Poll::Ready(None) => {
                self.ended = true;
                Poll::Ready(None)
            }
            other => other,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.ended
    }
}
