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

/// The etcd v3 services of one member, as a router ready to be served (HTTP/2, h2c).
///
/// Watch, lease keep-alive and election observe streams end when `stop` is cancelled.
pub fn router<B: Backend>(
    node: Node<B>,
    config: ApiConfig,
    db_size: DbSize,
    hub: watch::Hub,
    stop: tokio_util::sync::CancellationToken,
) -> axum::Router {
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
    tonic::service::Routes::new(kv)
        .add_service(maintenance)
        .add_service(cluster)
        .add_service(auth)
        .add_service(lease)
        .add_service(watch)
        .add_service(lock)
        .add_service(election)
        .into_axum_router()
        .layer(axum::middleware::from_fn_with_state(
            leader,
            require_leader::require_leader,
        ))
        .layer(axum::middleware::map_response(oversize::as_grpc_go))
}
