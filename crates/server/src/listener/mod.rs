//! The client listener: accepts TCP (with `TCP_NODELAY`) and Unix-socket connections, closes
//! those over `--max-client-connections` at once, and wraps each accepted one in TLS (when
//! configured), write coalescing ([`crate::coalesce`]) and a [`ClientConnection`], which
//! rewrites etcdctl 3.4's `:authority` ([`authority`]) and polices pings ([`crate::pings`]).
//!
//! # Layout
//! - `connection`: [`ClientConnection`], a client's HTTP/2 frames as the server reads them.
//! - `authority`: one HPACK header block with its `:authority` stripped of a scheme.

mod authority;
mod connection;

use std::io;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use crate::coalesce::Coalesced;
use crate::tls::{MaybeTls, Security};

pub use connection::ClientConnection;

/// Connections closed at accept because `--max-client-connections` were open.
const REFUSED: &str = "metastore_client_connections_refused_total";

/// Where a client listener accepts: a TCP port, or a Unix domain socket (`unix://` URLs).
pub enum Bound {
    /// TCP.
    Tcp(TcpListener),
    /// A Unix domain socket.
    #[cfg(unix)]
    Unix(tokio::net::UnixListener),
}

impl From<TcpListener> for Bound {
    fn from(l: TcpListener) -> Self {
        Bound::Tcp(l)
    }
}

#[cfg(unix)]
impl From<tokio::net::UnixListener> for Bound {
    fn from(l: tokio::net::UnixListener) -> Self {
        Bound::Unix(l)
    }
}

/// A client's address: an IP address and port, or the Unix socket's (unnamed) peer.
#[derive(Debug)]
pub enum ClientAddr {
    /// Over TCP.
    Tcp(std::net::SocketAddr),
    /// Over a Unix domain socket.
    Unix,
}

impl std::fmt::Display for ClientAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ClientAddr::Tcp(a) => a.fmt(f),
            ClientAddr::Unix => f.write_str("unix socket"),
        }
    }
}

/// Accepts client connections (see the module docs), at most as many open at once as
/// `connections` has permits (shared by every client listener).
pub struct ClientListener {
    listener: Bound,
    connections: Arc<Semaphore>,
    security: Security,
    /// `--grpc-keepalive-min-time`: clients pinging more often are sent away.
    min_ping_time: Option<std::time::Duration>,
}

impl ClientListener {
    /// Serves `listener`, each connection holding one of `connections`' permits, secured by
    /// `security` (TLS is terminated below the rewriting).
    pub fn new(
        listener: impl Into<Bound>,
        connections: Arc<Semaphore>,
        security: Security,
    ) -> Self {
        Self {
            listener: listener.into(),
            connections,
            security,
            min_ping_time: None,
        }
    }

    /// The same, sending GOAWAY (ENHANCE_YOUR_CALM, "too_many_pings") to a client that pings
    /// more often than `min_time` allows, as grpc-go's keepalive enforcement in etcd does
    /// ([`crate::pings`]).
    pub fn with_min_ping_time(mut self, min_time: std::time::Duration) -> Self {
        self.min_ping_time = Some(min_time);
        self
    }
}

impl axum::serve::Listener for ClientListener {
    type Io = ClientConnection<Coalesced<MaybeTls>>;
    type Addr = ClientAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            let (stream, addr): (crate::tls::Socket, _) = match &mut self.listener {
                Bound::Tcp(l) => {
                    let (stream, addr) = axum::serve::Listener::accept(l).await;
                    // Small gRPC answers must not wait for Nagle's algorithm (40 ms with
                    // delayed ACKs).
                    if let Err(e) = stream.set_nodelay(true) {
                        tracing::debug!(cause = %e, "could not set TCP_NODELAY");
                    }
                    (stream.into(), ClientAddr::Tcp(addr))
                }
                #[cfg(unix)]
                Bound::Unix(l) => {
                    let (stream, _) = axum::serve::Listener::accept(l).await;
                    (stream.into(), ClientAddr::Unix)
                }
            };
            let Ok(permit) = Arc::clone(&self.connections).try_acquire_owned() else {
                // Closed unread: the client sees its connection end at once.
                metrics::counter!(REFUSED).increment(1);
                tracing::debug!(%addr, "connection closed: --max-client-connections are open");
                continue;
            };
            let common_name = Arc::new(std::sync::OnceLock::new());
            let secured = self
                .security
                .wrap_noting(stream, Some(Arc::clone(&common_name)));
            let mut io = ClientConnection::new(Coalesced::new(secured));
            io.permit = Some(permit);
            io.common_name = Some(common_name);
            io.pings = self.min_ping_time.map(crate::pings::Pings::new);
            return (io, addr);
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        match &self.listener {
            Bound::Tcp(l) => l.local_addr().map(ClientAddr::Tcp),
            #[cfg(unix)]
            Bound::Unix(_) => Ok(ClientAddr::Unix),
        }
    }
}
