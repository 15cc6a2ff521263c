//! The `metastore` server: etcd's flags, the wiring of every layer, HTTP endpoints, shutdown.
//!
//! This crate owns the process: it turns flags into each layer's typed configuration, picks the
//! storage engine, starts the Raft member, serves the etcd v3 gRPC API and plain HTTP on the
//! client port, runs automatic compaction, and stops everything in order on a signal. It is the
//! only crate (with xtask) that uses `anyhow` or installs a tracing subscriber and a metrics
//! recorder. The binary calls [`run`]; the `metastore` facade crate (the library an embedding
//! program depends on) calls [`run_embedded`] with sockets it bound itself and a signal once
//! the server serves.
//!
//! # Layout
//! - `flags`: [`Flags`], the command line.
//! - [`etcd_flags`]: etcd's other flags, accepted with no effect or refused.
//! - `config`: [`Config`], checked configuration, member and cluster ids.
//! - [`config_file`]: etcd's YAML `--config-file`, and etcd's precedence of file, flags, variables.
//! - `http`: `/health`, `/version`, `/metrics`, `/livez`, `/readyz`, 404 for unknown paths.
//! - `access`: `--cors` and `--host-whitelist` on the client port's HTTP endpoints.
//! - [`logging`]: `--logger` (capnslog text or zap JSON), `--log-outputs`, `--log-level`, RUST_LOG.
//! - [`telemetry`]: the metrics (etcd's names beside MetaStore's), their help, gRPC call counts.
//! - `compactor`: automatic compaction.
//! - `listener`: accepts client connections: `TCP_NODELAY`, the connection cap, TLS, and
//!   etcdctl 3.4's `http://` `:authority` rewritten on HTTP/2.
//! - `coalesce`: a connection's small HTTP/2 writes gathered into one `writev`.
//! - `pings`: grpc-go's keepalive enforcement (`--grpc-keepalive-min-time`).
//! - `serve`: client connections, with HTTP/2's stream limit and a graceful stop.
//! - `front`: each connection's service: gRPC calls straight to the services, counted; the
//!   rest to the HTTP router.
//! - `srv`: `--discovery-srv`, the initial cluster from DNS SRV records.
//! - `tls`: TLS (rustls) on `https://` client and peer listeners.
//! - `restore`: `metastore snapshot restore` and `metastore migrate-etcd`, from etcd's files.

mod access;
mod coalesce;
mod compactor;
mod config;
pub mod config_file;
pub mod etcd_flags;
mod flags;
mod front;
mod http;
mod listener;
pub mod logging;
mod pings;
mod restore;
mod serve;
mod srv;
pub mod telemetry;
mod tls;

use std::future::Future;
use std::sync::Arc;

use anyhow::{Context, Result};
use consensus::Node;
use deadline::{Deadline, Layer};
use engine_redb::{Durability, Options, RedbBackend};
use metrics_exporter_prometheus::PrometheusHandle;
use mvcc::Backend;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use access::HANDLING_BUCKETS;
pub use config::{cluster_id, member_id, AutoCompaction, Config, API_VERSION};
pub use flags::{Engine, Flags};
pub use restore::{is_tool, run_tool};

/// Runs the server until `shutdown` completes, then stops it in order: stop accepting and let
/// in-flight requests finish (bounded by the api budget), stop Raft, flush the store.
///
/// # Errors
/// Start-up failures (bad data dir, ports in use, a store that will not open) and a failed
/// final flush.
pub async fn run(
    config: Config,
    metrics: Option<PrometheusHandle>,
    shutdown: impl Future<Output = ()>,
) -> Result<()> {
    run_embedded(config, metrics, shutdown, Embedding::default()).await
}

/// What a program running the server in-process adds to [`run`] (the `metastore` facade
/// crate's builder fills it).
#[derive(Debug, Default)]
pub struct Embedding {
    /// Sockets bound before start, each under the `host:port` the configuration's listen URLs
    /// name: an ephemeral port is bound (and its number known) before the member's URLs, and so
    /// its id, are decided. Other addresses are bound at start.
    pub listeners: Vec<(String, std::net::TcpListener)>,
    /// Sent once every listener is up and the member knows a leader (or has given up waiting
    /// for one, as the binary does: it then serves anyway).
    pub ready: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Embedding {
    /// The listener for `addr`: the one bound before start, else a new one.
    async fn listen(&mut self, addr: &str) -> std::io::Result<TcpListener> {
        match self.listeners.iter().position(|(a, _)| a == addr) {
            Some(i) => {
                let (_, listener) = self.listeners.swap_remove(i);
                listener.set_nonblocking(true)?;
                TcpListener::from_std(listener)
            }
            None => TcpListener::bind(addr).await,
        }
    }
}

/// [`run`], with sockets bound by the caller and a signal once serving.
///
/// # Errors
/// As [`run`].
pub async fn run_embedded(
    config: Config,
    metrics: Option<PrometheusHandle>,
    shutdown: impl Future<Output = ()>,
    embedding: Embedding,
) -> Result<()> {
    refuse_etcd_data_dir(&config.data_dir)?;
    mvcc::durable::create_dir_all_synced(&config.data_dir)
        .with_context(|| format!("creating data dir {}", config.data_dir.display()))?;
    match config.engine {
        Engine::Redb => {
            let path = config.data_dir.join("member").join("data.redb");
            if let Some(parent) = path.parent() {
                mvcc::durable::create_dir_all_synced(parent)
                    .with_context(|| format!("creating {}", parent.display()))?;
                // Opening would create an empty engine file in place of a lost one.
                consensus::require_state(parent, "data.redb")?;
            }
            // Lazy: the Raft log is fsynced before any write is acknowledged, and replays
            // whatever the engine had not made durable.
            let options = Options {
                durability: Durability::Lazy,
                cache_bytes: config.engine_cache_bytes,
                batching: config.engine_batching,
            };
            let backend = RedbBackend::open(&path, &options)
                .with_context(|| format!("opening {}", path.display()))?;
            let size = backend.disk_size();
            let db_size: kvapi::DbSize = Arc::new(move || size.bytes());
            serve(config, backend, db_size, metrics, shutdown, embedding).await
        }
        Engine::Mem => {
            // The bytes held stand for the file size etcd's quota is checked against.
            let backend = Arc::new(engine_mem::MemBackend::new());
            let held = Arc::clone(&backend);
            let db_size: kvapi::DbSize = Arc::new(move || held.size_bytes());
            serve(config, backend, db_size, metrics, shutdown, embedding).await
        }
    }
}

/// etcd's own files, which MetaStore does not read: starting on them would serve an empty store
/// in place of the user's data.
const ETCD_FILES: [&str; 2] = ["member/snap/db", "member/wal"];

/// Refuses a data dir that holds etcd's files, naming them and how to migrate.
fn refuse_etcd_data_dir(dir: &std::path::Path) -> Result<()> {
    let found: Vec<&str> = ETCD_FILES
        .into_iter()
        .filter(|f| dir.join(f).exists())
        .collect();
    if found.is_empty() {
        return Ok(());
    }
    anyhow::bail!(
        "data dir {} holds etcd's files ({}): MetaStore does not serve etcd's data directory, \
         and starting on it would serve an empty store. To migrate, stop etcd and build a new \
         MetaStore data dir from it with `metastore migrate-etcd --etcd-data-dir {} --data-dir \
         <new dir> --name … --initial-cluster …`, or from a snapshot with `metastore snapshot \
         restore <file> --data-dir <new dir> …` (docs/operations.md)",
        dir.display(),
        found.join(", "),
        dir.display()
    )
}

async fn serve<B: Backend>(
    config: Config,
    backend: B,
    db_size: kvapi::DbSize,
    metrics: Option<PrometheusHandle>,
    shutdown: impl Future<Output = ()>,
    mut embedding: Embedding,
) -> Result<()> {
    let node = Node::start(config.node.clone(), backend)
        .await
        .context("starting the raft member")?;
    if config.initial_corrupt_check {
        // etcd checks before it serves anyone: a member whose data differs does not start.
        let limit = config
            .node
            .election_timeout
            .max(std::time::Duration::from_secs(5));
        if let Err(e) = node.initial_corruption_check(limit).await {
            node.shutdown().await.context("flushing the store")?;
            return Err(e).context("the start-up corruption check failed");
        }
    }
    let stop = CancellationToken::new();
    let tasks = TaskTracker::new();

    // The hub hears every applied revision from now on; resync covers what start-up applied.
    let history: Arc<dyn watch::History> = Arc::new(node.store().clone());
    let hub = watch::Hub::new(history, config.hub.clone()).context("starting the watch hub")?;
    node.store().set_sink(Arc::new(hub.clone()));
    hub.resync();
    // The cluster id the member keeps (or learnt on joining), not the one the flags derive.
    let api = kvapi::ApiConfig {
        cluster_id: node.cluster_id(),
        ..config.api.clone()
    };
    let services = kvapi::services(
        node.clone(),
        api,
        Arc::clone(&db_size),
        hub.clone(),
        stop.clone(),
    );
    let http_state = http::HttpState {
        node: node.clone(),
        metrics,
        db_size,
    };
    // gRPC calls skip the HTTP router (front.rs); every call is counted as etcd counts them.
    let grpc = front::Grpc::new(services, config.extensive_metrics);
    // etcd's gateway calls the gRPC services as a client of this member would.
    let gateway = config.grpc_gateway.then(|| {
        let limit = config.api.limits.max_request_bytes.saturating_mul(2);
        kvapi::gateway(grpc.router(), limit)
    });
    let merged = http::router(http_state.clone());
    let merged = match gateway {
        Some(gateway) => merged.merge(gateway),
        None => merged,
    };
    // A service's path reaches its service even as plain HTTP (tonic answers what it makes of
    // it), after the access checks.
    let unrouted = grpc.clone();
    let merged = merged.fallback(move |request: axum::extract::Request| {
        let grpc = unrouted.clone();
        async move {
            if kvapi::serves(request.uri().path()) {
                match grpc.call(request).await {
                    Ok(response) => response,
                    Err(never) => match never {},
                }
            } else {
                http::unknown_path(request).await
            }
        }
    });
    // HTTP requests (gRPC passes) go through --cors/--host-whitelist, which treat TLS
    // listeners apart.
    let client_router = |secure: bool| {
        front::Front::new(
            grpc.clone(),
            access::guard(merged.clone(), &config.access, secure),
        )
    };
    // One cap over every client listener.
    let connections = Arc::new(tokio::sync::Semaphore::new(config.max_client_connections));
    for (addr, security) in listen_plan(
        &config.client_addrs,
        &config.client_tls_addrs,
        &config.client_tls,
    ) {
        let listener = embedding
            .listen(addr)
            .await
            .with_context(|| format!("listening for clients on {addr}"))?;
        let tls = matches!(security, tls::Security::Tls(_));
        tracing::info!(%addr, tls, "serving client requests (gRPC and HTTP)");
        let router = client_router(tls);
        let listener = listener::ClientListener::new(listener, Arc::clone(&connections), security)
            .with_min_ping_time(config.keepalive.min_time);
        tasks.spawn(serve::serve(
            listener,
            router,
            serve::Http2 {
                max_concurrent_streams: config.max_concurrent_streams,
                keepalive: config.keepalive,
                cert_users: config.client_cert_auth,
            },
            stop.clone(),
        ));
    }
    // `unix://` client URLs: the same service on Unix domain sockets, as etcd serves them.
    #[cfg(unix)]
    for (path, tls) in &config.client_unix_sockets {
        // As etcd 3.4: an existing file at the path (even a stale socket) is not replaced.
        let listener = tokio::net::UnixListener::bind(path)
            .with_context(|| format!("listening for clients on unix socket {}", path.display()))?;
        let security = match (&config.client_tls, tls) {
            (Some(server_config), true) => {
                tls::Security::Tls(tokio_rustls::TlsAcceptor::from(Arc::clone(server_config)))
            }
            _ => tls::Security::Plain,
        };
        tracing::info!(path = %path.display(), tls, "serving client requests (gRPC and HTTP) on a unix socket");
        let listener = listener::ClientListener::new(listener, Arc::clone(&connections), security)
            .with_min_ping_time(config.keepalive.min_time);
        tasks.spawn(serve::serve(
            listener,
            client_router(*tls),
            serve::Http2 {
                max_concurrent_streams: config.max_concurrent_streams,
                keepalive: config.keepalive,
                cert_users: config.client_cert_auth,
            },
            stop.clone(),
        ));
    }
    #[cfg(not(unix))]
    if !config.client_unix_sockets.is_empty() {
        anyhow::bail!("unix:// client URLs need a Unix system");
    }
    // `--listen-metrics-urls`: metrics and health only, outside the client connection cap.
    for addr in &config.metrics_addrs {
        let listener = embedding
            .listen(addr)
            .await
            .with_context(|| format!("listening for metrics on {addr}"))?;
        tracing::info!(%addr, "serving /metrics and /health");
        let router = http::metrics_router(http_state.clone());
        let stop = stop.clone();
        tasks.spawn(async move {
            let served = axum::serve(listener, router)
                .with_graceful_shutdown(stop.cancelled_owned())
                .await;
            if let Err(e) = served {
                tracing::error!(cause = %e, "metrics listener failed");
            }
        });
    }
    // The peer port: Raft's messages and what followers forward to the leader.
    let peer_router =
        tonic::service::Routes::new(consensus::PeerService::new(node.clone())).into_axum_router();
    // Peers keep their connections open, so the peer listeners are not drained like client
    // ones: they serve until Raft has stopped, then are aborted.
    let mut peer_servers = Vec::new();
    for (addr, security) in
        listen_plan(&config.peer_addrs, &config.peer_tls_addrs, &config.peer_tls)
    {
        let listener = embedding
            .listen(addr)
            .await
            .with_context(|| format!("listening for peers on {addr}"))?;
        let tls = matches!(security, tls::Security::Tls(_));
        tracing::info!(%addr, tls, "serving peers");
        let listener = tls::SecureListener::new(listener, security);
        let router = peer_router.clone();
        peer_servers.push(tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, router).await {
                tracing::error!(cause = %e, "peer listener failed");
            }
        }));
    }
    if !config.corrupt_check_time.is_zero() {
        tasks.spawn(consensus::corruption_check_loop(
            node.clone(),
            config.corrupt_check_time,
            stop.clone(),
        ));
    }
    tasks.spawn(compactor::run(
        node.clone(),
        config.auto_compaction,
        stop.clone(),
    ));
    tasks.close();

    match node
        .wait_for_leader(Deadline::after(config.node.election_timeout * 10))
        .await
    {
        Ok(leader) => tracing::info!(
            member = format_args!("{:x}", node.id()),
            leader = format_args!("{leader:x}"),
            "ready to serve client requests"
        ),
        Err(e) => tracing::warn!(cause = %e, "no leader yet; serving anyway"),
    }
    if let Some(ready) = embedding.ready.take() {
        // The embedding program may have stopped waiting; the server serves regardless.
        let _ = ready.send(());
    }

    shutdown.await;
    tracing::info!("shutting down: no new requests; in-flight ones finish within their budget");
    stop.cancel();
    let budget = config.api.budgets.get(Layer::Api);
    if deadline::within(Layer::Api, Deadline::after(budget), tasks.wait())
        .await
        .is_err()
    {
        tracing::warn!(waited = ?budget, "some connections did not close in time");
    }
    hub.shutdown();
    let stopped = node.shutdown().await.context("flushing the store");
    for server in peer_servers {
        server.abort();
    }
    for (path, _) in &config.client_unix_sockets {
        // As Go's listener does on close: the socket file goes with the server.
        let _ = std::fs::remove_file(path);
    }
    stopped?;
    tracing::info!("stopped");
    Ok(())
}

/// Every listen address with how its connections are secured: plaintext ones, then TLS ones.
fn listen_plan<'a>(
    plain: &'a [String],
    secure: &'a [String],
    tls: &Option<Arc<tokio_rustls::rustls::ServerConfig>>,
) -> Vec<(&'a String, tls::Security)> {
    let mut plan: Vec<_> = plain.iter().map(|a| (a, tls::Security::Plain)).collect();
    if let Some(config) = tls {
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::clone(config));
        plan.extend(
            secure
                .iter()
                .map(|a| (a, tls::Security::Tls(acceptor.clone()))),
        );
    }
    plan
}

/// Completes on the first SIGINT or SIGTERM; a second one exits the process at once.
pub async fn signals() {
    first_signal().await;
    tokio::spawn(async {
        first_signal().await;
        tracing::warn!("second signal: exiting now");
        std::process::exit(130);
    });
}

async fn first_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
