//! The gRPC services and what they share: the member, the limits, the header.

mod cluster;
mod kv;
mod lease;
mod maintenance;
mod watches;

use std::sync::Arc;

use consensus::Node;
use deadline::{Budgets, Deadline, Layer};
use mvcc::Backend;
use tonic::{Code, Status};

use crate::pb::etcdserverpb::ResponseHeader;
use crate::validate::Limits;

pub use cluster::ClusterService;
pub use kv::KvService;
pub use lease::{KeepAlives, LeaseService};
pub use maintenance::MaintenanceService;
pub use watches::{Responses, WatchService};

/// How the API behaves: identity, limits, budgets.
#[derive(Clone, Debug)]
pub struct ApiConfig {
    /// The cluster id every header carries.
    pub cluster_id: u64,
    /// Request limits.
    pub limits: Limits,
    /// Wait budgets; the `api` one caps each request.
    pub budgets: Budgets,
    /// The etcd API version this server speaks, as `Status` and `/version` report it.
    pub version: String,
    /// How often watches that asked for progress notifications get one (etcd: 10 minutes).
    pub watch_progress_interval: std::time::Duration,
}

/// Reports the storage engine's size in bytes, for `Status`.
pub type DbSize = Arc<dyn Fn() -> u64 + Send + Sync>;

/// What every service needs. Cheap to clone.
pub(crate) struct Shared<B> {
    pub node: Node<B>,
    pub config: Arc<ApiConfig>,
    pub db_size: DbSize,
}

impl<B> Clone for Shared<B> {
    fn clone(&self) -> Self {
        Self {
            node: self.node.clone(),
            config: Arc::clone(&self.config),
            db_size: Arc::clone(&self.db_size),
        }
    }
}

impl<B: Backend> Shared<B> {
    /// The request's deadline: the client's `grpc-timeout`, capped by the `api` budget.
    pub fn deadline<T>(&self, req: &tonic::Request<T>) -> Deadline {
        let client = req
            .metadata()
            .get("grpc-timeout")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| Deadline::from_grpc_timeout(v).ok())
            .unwrap_or_else(Deadline::none);
        self.config.budgets.deadline_for(Layer::Api, client)
    }

    /// The response header at `revision`.
    pub fn header(&self, revision: i64) -> Option<ResponseHeader> {
        Some(ResponseHeader {
            cluster_id: self.config.cluster_id,
            member_id: self.node.id(),
            revision,
            raft_term: self.node.term(),
        })
    }
}

/// Counts the call as etcd's `grpc_server_handled_total` does and logs an error once, with
/// its cause, at a level that fits its code.
pub(crate) fn handled<T>(
    service: &'static str,
    method: &'static str,
    result: Result<T, Status>,
) -> Result<T, Status> {
    let code = match &result {
        Ok(_) => Code::Ok,
        Err(status) => status.code(),
    };
    metrics::counter!(
        "grpc_server_handled_total",
        "grpc_type" => "unary",
        "grpc_service" => service,
        "grpc_method" => method,
        "grpc_code" => code_name(code),
    )
    .increment(1);
    if let Err(status) = &result {
        match code {
            Code::Internal | Code::DataLoss => {
                tracing::error!(service, method, code = ?code, cause = %status.message(), "request failed")
            }
            Code::Unavailable | Code::DeadlineExceeded => {
                tracing::warn!(service, method, code = ?code, cause = %status.message(), "request failed")
            }
            _ => {
                tracing::debug!(service, method, code = ?code, cause = %status.message(), "request refused")
            }
        }
    }
    result
}

/// gRPC's canonical code names, as Prometheus labels carry them.
fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "Canceled",
        Code::Unknown => "Unknown",
        Code::InvalidArgument => "InvalidArgument",
        Code::DeadlineExceeded => "DeadlineExceeded",
        Code::NotFound => "NotFound",
        Code::AlreadyExists => "AlreadyExists",
        Code::PermissionDenied => "PermissionDenied",
        Code::ResourceExhausted => "ResourceExhausted",
        Code::FailedPrecondition => "FailedPrecondition",
        Code::Aborted => "Aborted",
        Code::OutOfRange => "OutOfRange",
        Code::Unimplemented => "Unimplemented",
        Code::Internal => "Internal",
        Code::Unavailable => "Unavailable",
        Code::DataLoss => "DataLoss",
        Code::Unauthenticated => "Unauthenticated",
    }
}
