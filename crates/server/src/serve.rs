//! Serving client connections: HTTP/1 and HTTP/2 (h2c) on one port, with etcd's
//! `--max-concurrent-streams` announced in each HTTP/2 connection's SETTINGS, and a graceful
//! stop (no new connections, in-flight requests finish, idle ones close).

use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto::Builder;
use hyper_util::service::TowerToHyperService;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::authority::FixAuthority;

/// Serves `router` on `listener` until `stop`, then waits for its connections to finish.
pub(crate) async fn serve(
    mut listener: FixAuthority,
    router: axum::Router,
    max_concurrent_streams: u32,
    stop: CancellationToken,
) {
    let connections = TaskTracker::new();
    loop {
        let (io, addr) = tokio::select! {
            () = stop.cancelled() => break,
            accepted = axum::serve::Listener::accept(&mut listener) => accepted,
        };
        let service = TowerToHyperService::new(router.clone());
        let stop = stop.clone();
        connections.spawn(async move {
            let mut builder = Builder::new(TokioExecutor::new());
            builder
                .http2()
                .max_concurrent_streams(max_concurrent_streams);
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
