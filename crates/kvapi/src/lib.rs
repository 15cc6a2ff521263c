//! The etcd v3 gRPC API of MetaStore.
//!
//! This crate owns the wire: the generated etcd v3 types ([`pb`]), conversions between them and
//! the `mvcc` model, request validation with etcd's limits, and one table mapping every error
//! to etcd's gRPC code and text. It must not name a storage engine or reach into Raft beyond
//! [`consensus::Node`]'s API; the server binary wires it up.
//!
//! # Layout
//! - `pb`: generated code, in etcd's proto packages.
//! - `pb_conv`: conversions, one file per message family.
//! - `error`: [`ApiError`] and its `tonic::Status` table.
//! - `validate`: etcd's request checks.
//! - `authz`: the caller's user from its token, and etcd's permission checks.
//! - `jwt`: etcd's JWT tokens: signing and verifying them.
//! - `oversize`: grpc-go's answer to a message over the receive limit.
//! - `require_leader`: etcd's `hasleader` metadata: no leader, no service.
//! - [`etcd_snapshot`]: etcd's snapshot file (a bbolt database in etcd's layout), written
//!   from the store and restored into one.
//! - [`etcd_wal`]: etcd 3.4's WAL, read for migration: the committed requests after the
//!   database's consistent index.
//! - `gateway`: etcd's HTTP/JSON gateway (`/v3/…`), calling the gRPC services in-process.
//! - `service`: the KV, Watch, Lease, Maintenance, Cluster and Auth services, and the Lock and
//!   Election services built on them as etcd builds its own.

mod authz;
mod error;
pub mod etcd_snapshot;
pub mod etcd_wal;
mod gateway;
mod jwt;
mod oversize;
pub mod pb;
mod pb_conv;
mod require_leader;
mod service;
mod validate;

use std::sync::Arc;

use consensus::Node;
use mvcc::Backend;

pub use authz::CertUser;
pub use error::ApiError;
pub use gateway::{gateway, not_found, redirect_unclean};
pub use jwt::{JwtError, JwtTokens};
pub use service::{
    ApiConfig, AuthService, ClusterService, DbSize, ElectionService, KeepAlives, KvService,
    LeaseService, LockService, MaintenanceService, Responses, WatchService,
};
pub use validate::{Limits, MAX_RESPONSE_BYTES};

use crate::pb::etcdserverpb::auth_server::AuthServer;
use crate::pb::etcdserverpb::cluster_server::ClusterServer;
use crate::pb::etcdserverpb::kv_server::KvServer;
use crate::pb::etcdserverpb::lease_server::LeaseServer;
use crate::pb::etcdserverpb::maintenance_server::MaintenanceServer;
use crate::pb::etcdserverpb::watch_server::WatchServer;
use crate::pb::v3electionpb::election_server::ElectionServer;
use crate::pb::v3lockpb::lock_server::LockServer;

/// Room gRPC allows above `--max-request-bytes`, as etcd does, so that a request slightly too
/// large gets etcd's "request is too large" rather than a transport error.
const GRPC_OVERHEAD_BYTES: usize = 512 * 1024;

/// How many long reads scan at once on the blocking pool: enough to keep every core busy while
/// some wait on storage, few enough that they cannot crowd out the async workers' threads.
fn scan_permits() -> usize {
    let cores = std::thread::available_parallelism().map_or(2, std::num::NonZeroUsize::get);
    (2 * cores).max(4)
}

/// The etcd v3 services of one member, ready to be served (HTTP/2, h2c).
///
/// Watch, lease keep-alive and election observe streams end when `stop` is cancelled.
pub fn services<B: Backend>(
    node: Node<B>,
    config: ApiConfig,
    db_size: DbSize,
    hub: watch::Hub,
    stop: tokio_util::sync::CancellationToken,
) -> Services<B> {
    let max = config
        .limits
        .max_request_bytes
        .saturating_add(GRPC_OVERHEAD_BYTES);
    let leader = node.clone();
    node.auth().tokens().set_ttl(config.auth_token_ttl);
    let shared = service::Shared {
        node,
        config: Arc::new(config),
        db_size,
        scans: Arc::new(tokio::sync::Semaphore::new(scan_permits())),
        stop: stop.clone(),
    };
    let kv = KvServer::new(KvService::new(shared.clone())).max_decoding_message_size(max);
    let maintenance = MaintenanceServer::new(MaintenanceService::new(shared.clone()))
        .max_decoding_message_size(max);
    let auth = AuthServer::new(AuthService::new(shared.clone())).max_decoding_message_size(max);
    let cluster =
        ClusterServer::new(ClusterService::new(shared.clone())).max_decoding_message_size(max);
    let lease = LeaseServer::new(LeaseService::new(shared.clone())).max_decoding_message_size(max);
    let recipes = service::Recipes::new(shared.clone(), hub.clone());
    let lock = LockServer::new(LockService::new(recipes.clone())).max_decoding_message_size(max);
    let election =
        ElectionServer::new(ElectionService::new(recipes)).max_decoding_message_size(max);
    let every = shared.config.watch_progress_interval;
    let watch = WatchServer::new(WatchService::new(shared, hub, stop, every))
        .max_decoding_message_size(max);
    Services {
        inner: Arc::new(Servers {
            kv,
            watch,
            lease,
            maintenance,
            cluster,
            auth,
            lock,
            election,
            leader,
        }),
    }
}

/// The gRPC services of one member, each call handed to its service by the name in its path.
///
/// A call asking for a leader (`hasleader`) is refused or watched as etcd does, and tonic's
/// answer to an oversized message is grpc-go's. No router stands in between: axum's routing
/// and its middleware layers, each boxing per call, were a fifth of a member's CPU under puts.
pub struct Services<B: Backend> {
    inner: Arc<Servers<B>>,
}

impl<B: Backend> Clone for Services<B> {
    fn clone(&self) -> Self {
        Self {
            inner: Arc::clone(&self.inner),
        }
    }
}

struct Servers<B: Backend> {
    kv: KvServer<KvService<B>>,
    watch: WatchServer<WatchService<B>>,
    lease: LeaseServer<LeaseService<B>>,
    maintenance: MaintenanceServer<MaintenanceService<B>>,
    cluster: ClusterServer<ClusterService<B>>,
    auth: AuthServer<AuthService<B>>,
    lock: LockServer<LockService<B>>,
    election: ElectionServer<ElectionService<B>>,
    leader: Node<B>,
}

/// Which of the services a path's first segment names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Named {
    Kv,
    Watch,
    Lease,
    Maintenance,
    Cluster,
    Auth,
    Lock,
    Election,
}

impl Named {
    fn of(path: &str) -> Option<Self> {
        use crate::pb::etcdserverpb::{
            auth_server, cluster_server, kv_server, lease_server, maintenance_server, watch_server,
        };
        use crate::pb::{v3electionpb::election_server, v3lockpb::lock_server};
        let service = path.strip_prefix('/')?.split_once('/')?.0;
        Some(match service {
            kv_server::SERVICE_NAME => Self::Kv,
            watch_server::SERVICE_NAME => Self::Watch,
            lease_server::SERVICE_NAME => Self::Lease,
            maintenance_server::SERVICE_NAME => Self::Maintenance,
            cluster_server::SERVICE_NAME => Self::Cluster,
            auth_server::SERVICE_NAME => Self::Auth,
            lock_server::SERVICE_NAME => Self::Lock,
            election_server::SERVICE_NAME => Self::Election,
            _ => return None,
        })
    }
}

/// Whether `path` (`/etcdserverpb.KV/Put`, …) names one of the services.
pub fn serves(path: &str) -> bool {
    Named::of(path).is_some()
}

impl<B: Backend> Services<B> {
    /// Answers one gRPC call; a path no service is named by gets gRPC's `UNIMPLEMENTED`.
    pub async fn call<Q>(
        &self,
        request: axum::http::Request<Q>,
    ) -> axum::http::Response<tonic::body::Body>
    where
        Q: http_body::Body<Data = axum::body::Bytes> + Send + 'static,
        Q::Error: Into<tonic::codegen::StdError> + Send + 'static,
    {
        use tonic::codegen::Service;
        let servers = &*self.inner;
        let leader = require_leader::required(request.headers());
        if leader {
            if let Some(refused) = require_leader::refusal(&servers.leader) {
                return refused;
            }
        }
        let answered = match Named::of(request.uri().path()) {
            Some(Named::Kv) => servers.kv.clone().call(request).await,
            Some(Named::Watch) => servers.watch.clone().call(request).await,
            Some(Named::Lease) => servers.lease.clone().call(request).await,
            Some(Named::Maintenance) => servers.maintenance.clone().call(request).await,
            Some(Named::Cluster) => servers.cluster.clone().call(request).await,
            Some(Named::Auth) => servers.auth.clone().call(request).await,
            Some(Named::Lock) => servers.lock.clone().call(request).await,
            Some(Named::Election) => servers.election.clone().call(request).await,
            None => Ok(tonic::Status::unimplemented("").into_http()),
        };
        let response = match answered {
            Ok(response) => oversize::as_grpc_go(response),
            Err(never) => match never {},
        };
        if leader {
            require_leader::monitored(servers.leader.clone(), response)
        } else {
            response
        }
    }
}
