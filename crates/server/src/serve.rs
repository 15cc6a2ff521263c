//! Serving client connections: HTTP/1 and HTTP/2 (h2c) on one port, with etcd's
//! `--max-concurrent-streams` announced in each HTTP/2 connection's SETTINGS, and a graceful
//! stop (no new connections, in-flight requests finish, idle ones close).

use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto::Builder;
use hyper_util::service::TowerToHyperService;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::front::Front;
use crate::listener::ClientListener;

/// Server-initiated HTTP/2 keepalive, as etcd's `--grpc-keepalive-interval` and
/// `--grpc-keepalive-timeout` set it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Keepalive {
    /// Idle time before the server pings a client; zero: never.
    pub interval: std::time::Duration,
    /// How long the server waits for the ping's answer before closing the connection.
    pub timeout: std::time::Duration,
    /// The least time between a client's pings (`--grpc-keepalive-min-time`).
    pub min_time: std::time::Duration,
}

/// Each client connection's HTTP/2 settings.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Http2 {
    /// `--max-concurrent-streams`.
    pub max_concurrent_streams: u32,
    /// `--grpc-keepalive-interval`, `--grpc-keepalive-timeout`.
    pub keepalive: Keepalive,
    /// `--client-cert-auth`: each request carries its connection's client certificate's
    /// common name ([`kvapi::CertUser`]), which auth takes as the user when no token is given.
    pub cert_users: bool,
}

/// Serves `front` on `listener` until `stop`, then waits for its connections to finish.
pub(crate) async fn serve<B: mvcc::Backend>(
    mut listener: ClientListener,
    front: Front<B>,
    http2: Http2,
    stop: CancellationToken,
) {
    let connections = TaskTracker::new();
    loop {
        let (io, addr) = tokio::select! {
            () = stop.cancelled() => break,
            accepted = axum::serve::Listener::accept(&mut listener) => accepted,
        };
        let common_name = if http2.cert_users {
            io.common_name()
        } else {
            None
        };
        let service = TowerToHyperService::new(front.for_connection(common_name));
        let stop = stop.clone();
        connections.spawn(async move {
            let mut builder = Builder::new(TokioExecutor::new());
            let keepalive = http2.keepalive;
            builder
                .http2()
                .max_concurrent_streams(http2.max_concurrent_streams)
                .timer(hyper_util::rt::TokioTimer::new())
                .keep_alive_interval((!keepalive.interval.is_zero()).then_some(keepalive.interval))
                .keep_alive_timeout(keepalive.timeout);
            let connection = builder.serve_connection(TokioIo::new(io), service);
            let mut connection = std::pin::pin!(connection);
            let ended = tokio::select! {
                ended = connection.as_mut() => ended,
                () = stop.cancelled() => {
                    connection.as_mut().graceful_shutdown();
                    connection.await
                }
            };
            if let Err(e) = ended {
                tracing::debug!(%addr, cause = %e, "client connection ended");
            }
        });
    }
    connections.close();
    connections.wait().await;
}
