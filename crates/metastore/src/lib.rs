//! MetaStore, embedded: an etcd v3 compatible key-value store started inside your program.
//!
//! [`Server::builder`] configures one member (a data dir, client and peer URLs, the storage
//! engine, and any flag of `metastore --help`), [`Builder::start`] starts it and returns once it
//! serves, and the [`Server`] handle gives its address, an etcd client ([`Server::client`], from
//! the [`etcd_client`] crate, re-exported) and a clean stop ([`Server::shutdown`]). The member is
//! the same as the `metastore` binary's, wired by the same code (`metastore-server`): the etcd
//! v3 gRPC API and the HTTP/JSON gateway on the client URL, Raft on the peer URL, so etcdctl
//! and every etcd client reach it too, and it can grow into a cluster with `member add`.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! // A member on an ephemeral port of 127.0.0.1, its data in a directory of your choice.
//! let server = metastore::Server::builder()
//!     .name("embedded")
//!     .data_dir("/var/lib/my-app/store")
//!     .start()
//!     .await?;
//! let mut client = server.client().await?;
//! client.put("greeting", "hello", None).await?;
//! let got = client.get("greeting", None).await?;
//! assert_eq!(got.kvs()[0].value(), b"hello");
//! // Flushes the store; dropping the handle would stop it without waiting.
//! server.shutdown().await?;
//! # Ok(())
//! # }
//! ```
//!
//! `examples/embedded.rs` writes, watches and reads through a store started this way.
//!
//! The member runs on a Tokio runtime of its own (its own threads), so it works under any
//! runtime of the embedding program, and a busy program does not starve its Raft heartbeats.
//! It logs through `tracing` (install a subscriber to see its lines) and records metrics
//! through the `metrics` facade; its `/metrics` endpoint is empty unless the program serves
//! them itself.
//!
//! # Layout
//! - [`Server`], [`Builder`]: start, address, client, stop.
//! - [`Error`]: what starting and stopping can fail with.
//!
//! The crates under it, each usable alone: `metastore-deadline` (bounded waits),
//! `metastore-mvcc` (etcd's data model over a storage trait), `metastore-engine-mem` and
//! `metastore-engine-redb` (the engines), `metastore-watch` (watch fan-out),
//! `metastore-consensus` (Raft), `metastore-kvapi` (the etcd v3 services and gateway),
//! `metastore-server` (flags, wiring, the binary).

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use tokio::sync::oneshot;

pub use etcd_client;
pub use server::Engine;

/// What starting or stopping an embedded server can fail with.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The builder's settings: no data dir, a flag the server does not know, a bad value.
    #[error("configuration: {0}")]
    Config(String),
    /// Binding a socket for an ephemeral port.
    #[error("binding {addr}: {source}")]
    Bind {
        /// The address asked for.
        addr: String,
        /// Why it failed.
        #[source]
        source: std::io::Error,
    },
    /// The server failed to start, or stopped with an error (the message holds the causes).
    #[error("server: {0}")]
    Server(String),
    /// Connecting a client.
    #[error("client: {0}")]
    Client(#[from] etcd_client::Error),
}

/// A running member; [`Server::builder`] starts one.
///
/// Dropping it stops the member without waiting for the stop to finish; [`Server::shutdown`]
/// waits (in-flight requests finish, the store is flushed).
#[derive(Debug)]
pub struct Server {
    client_urls: Vec<String>,
    client_addr: SocketAddr,
    peer_urls: Vec<String>,
    data_dir: PathBuf,
    stop: Option<oneshot::Sender<()>>,
    stopped: Option<oneshot::Receiver<Result<(), String>>>,
}

/// Settings for one member; [`Builder::start`] starts it.
#[derive(Clone, Debug)]
pub struct Builder {
    /// Flag name (without dashes) → value, as on `metastore`'s command line.
    flags: BTreeMap<String, String>,
    worker_threads: Option<usize>,
}

impl Server {
    /// A builder with the defaults: member name `default`, the redb engine, client and peer
    /// URLs on ephemeral ports of 127.0.0.1, and no data dir (one must be given).
    pub fn builder() -> Builder {
        let mut flags = BTreeMap::new();
        flags.insert("listen-client-urls".into(), EPHEMERAL.into());
        flags.insert("listen-peer-urls".into(), EPHEMERAL.into());
        Builder {
            flags,
            worker_threads: None,
        }
    }

    /// The client URLs, with ephemeral ports resolved (`http://127.0.0.1:43127`).
    pub fn client_urls(&self) -> &[String] {
        &self.client_urls
    }

    /// The first client URL's address.
    pub fn client_addr(&self) -> SocketAddr {
        self.client_addr
    }

    /// The peer URLs, with ephemeral ports resolved.
    pub fn peer_urls(&self) -> &[String] {
        &self.peer_urls
    }

    /// The data directory.
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// A client of this member, connected to its client URLs (plain `http://` ones; for TLS,
    /// connect [`etcd_client::Client`] with your options to [`Server::client_urls`]).
    ///
    /// # Errors
    /// [`Error::Client`] when the connection fails.
    pub async fn client(&self) -> Result<etcd_client::Client, Error> {
        Ok(etcd_client::Client::connect(&self.client_urls, None).await?)
    }

    /// Stops the member and waits: no new requests, in-flight ones finish within their budget,
    /// Raft stops, the store is flushed.
    ///
    /// # Errors
    /// [`Error::Server`] when the final flush failed or the member had already failed.
    pub async fn shutdown(mut self) -> Result<(), Error> {
        if let Some(stop) = self.stop.take() {
            // The member may have stopped on its own: its outcome is below either way.
            let _ = stop.send(());
        }
        match self.stopped.take() {
            Some(stopped) => outcome(stopped.await),
            None => Ok(()),
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// `http://127.0.0.1:0`: a port the operating system picks.
const EPHEMERAL: &str = "http://127.0.0.1:0";

impl Builder {
    /// The member's name (`--name`; default `default`).
    #[must_use]
    pub fn name(self, name: impl Into<String>) -> Self {
        self.flag("name", name)
    }

    /// Where the Raft log, snapshots and engine files live (`--data-dir`; required). A data dir
    /// that holds a member already restarts that member.
    #[must_use]
    pub fn data_dir(self, dir: impl AsRef<Path>) -> Self {
        let dir = dir.as_ref().to_string_lossy().into_owned();
        self.flag("data-dir", dir)
    }

    /// Comma-separated URLs to serve clients on, also advertised to the cluster
    /// (`--listen-client-urls`, `--advertise-client-urls`). Port 0 picks a free port.
    /// Default: `http://127.0.0.1:0`.
    #[must_use]
    pub fn client_urls(self, urls: impl Into<String>) -> Self {
        self.flag("listen-client-urls", urls)
    }

    /// Comma-separated URLs to serve peers on, also advertised
    /// (`--listen-peer-urls`, `--initial-advertise-peer-urls`). Port 0 picks a free port.
    /// Default: `http://127.0.0.1:0`.
    #[must_use]
    pub fn peer_urls(self, urls: impl Into<String>) -> Self {
        self.flag("listen-peer-urls", urls)
    }

    /// The storage engine (`--engine`; default [`Engine::Redb`]).
    #[must_use]
    pub fn engine(self, engine: Engine) -> Self {
        let name = match engine {
            Engine::Redb => "redb",
            Engine::Mem => "mem",
        };
        self.flag("engine", name)
    }

    /// Any flag of `metastore --help`, by its name without dashes, with the value it takes on
    /// the command line: `.flag("auto-compaction-retention", "1h")`. Later calls for the same
    /// flag replace earlier ones. `ETCD_*` variables are never read: the builder alone decides.
    #[must_use]
    pub fn flag(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.flags.insert(name.into(), value.into());
        self
    }

    /// The member runtime's worker threads (default: Tokio's, one per core).
    #[must_use]
    pub fn worker_threads(mut self, threads: usize) -> Self {
        self.worker_threads = Some(threads.max(1));
        self
    }

    /// Starts the member and returns once it serves clients: its listeners are up and it
    /// knows a leader (a single member elects itself at once; a member of a cluster waits at
    /// most ten election timeouts for one, then serves anyway, as the binary does).
    ///
    /// # Errors
    /// [`Error::Config`] for a missing data dir, an unknown flag or a bad value;
    /// [`Error::Bind`] when an ephemeral port cannot be bound; [`Error::Server`] when the
    /// member does not start (a data dir it cannot use, a port in use, …).
    pub async fn start(mut self) -> Result<Server, Error> {
        let data_dir = self
            .flags
            .get("data-dir")
            .map(PathBuf::from)
            .ok_or_else(|| Error::Config("a data dir is required (Builder::data_dir)".into()))?;
        let mut listeners = Vec::new();
        let client_urls = resolve_ephemeral(&self.flags["listen-client-urls"], &mut listeners)?;
        let peer_urls = resolve_ephemeral(&self.flags["listen-peer-urls"], &mut listeners)?;
        let client_addr = listeners
            .first()
            .and_then(|(_, l)| l.local_addr().ok())
            .or_else(|| first_addr(&client_urls))
            .ok_or_else(|| Error::Config(format!("no client address in {client_urls:?}")))?;
        let joined = |urls: &[String]| urls.join(",");
        self.flags
            .insert("listen-client-urls".into(), joined(&client_urls));
        self.flags
            .entry("advertise-client-urls".into())
            .or_insert_with(|| joined(&client_urls));
        self.flags
            .insert("listen-peer-urls".into(), joined(&peer_urls));
        self.flags
            .entry("initial-advertise-peer-urls".into())
            .or_insert_with(|| joined(&peer_urls));
        let args = std::iter::once(OsString::from("metastore")).chain(
            self.flags
                .iter()
                .map(|(name, value)| OsString::from(format!("--{name}={value}"))),
        );
        let flags = server::Flags::try_from_args(args).map_err(|e| Error::Config(e.to_string()))?;
        let config =
            server::Config::try_from(flags).map_err(|e| Error::Config(format!("{e:#}")))?;

        let mut runtime = tokio::runtime::Builder::new_multi_thread();
        runtime.enable_all().thread_name("metastore");
        if let Some(n) = self.worker_threads {
            runtime.worker_threads(n);
        }
        let runtime = runtime
            .build()
            .map_err(|e| Error::Server(format!("building the runtime: {e}")))?;
        let (stop, stop_rx) = oneshot::channel::<()>();
        let (ready, ready_rx) = oneshot::channel();
        let (done, stopped) = oneshot::channel();
        let embedding = server::Embedding {
            listeners,
            ready: Some(ready),
        };
        std::thread::Builder::new()
            .name("metastore".into())
            .spawn(move || {
                // A dropped handle (stop sender gone) stops the member too.
                let until = async {
                    let _ = stop_rx.await;
                };
                let ran = runtime.block_on(server::run_embedded(config, None, until, embedding));
                // Tasks the member left (peer connections) end with their runtime.
                drop(runtime);
                let _ = done.send(ran.map_err(|e| format!("{e:#}")));
            })
            .map_err(|e| Error::Server(format!("starting the member's thread: {e}")))?;
        let mut server = Server {
            client_urls,
            client_addr,
            peer_urls,
            data_dir,
            stop: Some(stop),
            stopped: Some(stopped),
        };
        if ready_rx.await.is_err() {
            // The member ended before it served: its outcome says why.
            let stopped = server.stopped.take();
            server.stop.take();
            return match stopped {
                Some(stopped) => match outcome(stopped.await) {
                    Ok(()) => Err(Error::Server("stopped before serving".into())),
                    Err(e) => Err(e),
                },
                None => Err(Error::Server("stopped before serving".into())),
            };
        }
        Ok(server)
    }
}

/// The member thread's outcome as the handle reports it.
fn outcome(received: Result<Result<(), String>, oneshot::error::RecvError>) -> Result<(), Error> {
    match received {
        Ok(Ok(())) => Ok(()),
        Ok(Err(why)) => Err(Error::Server(why)),
        Err(_) => Err(Error::Server("the member's thread panicked".into())),
    }
}

/// Each comma-separated URL, with port 0 replaced by a port bound now (the listener kept in
/// `listeners` under its `host:port`, for the server to serve on).
fn resolve_ephemeral(
    urls: &str,
    listeners: &mut Vec<(String, std::net::TcpListener)>,
) -> Result<Vec<String>, Error> {
    let mut resolved = Vec::new();
    for url in urls.split(',').map(str::trim).filter(|u| !u.is_empty()) {
        let Some((scheme, rest)) = url.split_once("://") else {
            resolved.push(url.to_string());
            continue;
        };
        let host_port = rest.trim_end_matches('/');
        let ephemeral = matches!(scheme, "http" | "https")
            && host_port
                .rsplit_once(':')
                .is_some_and(|(_, port)| port == "0");
        if !ephemeral {
            resolved.push(url.to_string());
            continue;
        }
        let listener = std::net::TcpListener::bind(host_port).map_err(|source| Error::Bind {
            addr: host_port.to_string(),
            source,
        })?;
        let port = listener
            .local_addr()
            .map_err(|source| Error::Bind {
                addr: host_port.to_string(),
                source,
            })?
            .port();
        let host = host_port.rsplit_once(':').map_or(host_port, |(h, _)| h);
        let bound = format!("{host}:{port}");
        resolved.push(format!("{scheme}://{bound}"));
        listeners.push((bound, listener));
    }
    Ok(resolved)
}

/// The address of the first URL that names an IP address and a port.
fn first_addr(urls: &[String]) -> Option<SocketAddr> {
    urls.iter().find_map(|url| {
        let (_, rest) = url.split_once("://")?;
        rest.trim_end_matches('/').parse().ok()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_zero_is_bound_and_named() {
        let mut listeners = Vec::new();
        let urls = resolve_ephemeral(
            "http://127.0.0.1:0, http://127.0.0.1:2379,unix://sock:1",
            &mut listeners,
        )
        .unwrap();
        assert_eq!(listeners.len(), 1);
        let port = listeners[0].1.local_addr().unwrap().port();
        assert_ne!(port, 0);
        assert_eq!(listeners[0].0, format!("127.0.0.1:{port}"));
        assert_eq!(
            urls,
            vec![
                format!("http://127.0.0.1:{port}"),
                "http://127.0.0.1:2379".to_string(),
                "unix://sock:1".to_string()
            ]
        );
    }

    #[tokio::test]
    async fn a_missing_data_dir_is_refused() {
        let err = Server::builder().start().await.unwrap_err();
        assert!(matches!(err, Error::Config(_)), "{err}");
    }

    #[tokio::test]
    async fn an_unknown_flag_is_refused_with_clap_s_words() {
        let dir = tempfile::tempdir().unwrap();
        let err = Server::builder()
            .data_dir(dir.path())
            .flag("no-such-flag", "1")
            .start()
            .await
            .unwrap_err();
        assert!(err.to_string().contains("--no-such-flag"), "{err}");
    }
}
