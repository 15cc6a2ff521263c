//! The gRPC services and what they share: the member, the limits, the header.

mod auth;
mod cluster;
mod election;
mod kv;
mod lease;
mod lock;
mod maintenance;
mod recipes;
mod snapshot;
mod watches;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use consensus::Node;
use deadline::{Budgets, Deadline, Layer};
use mvcc::Backend;
use tokio::sync::Semaphore;
use tonic::{Code, Status};

use crate::error::ApiError;
use crate::pb::etcdserverpb::ResponseHeader;
use crate::validate::Limits;

pub use auth::AuthService;
pub use cluster::ClusterService;
pub use election::ElectionService;
pub use kv::KvService;
pub use lease::{KeepAlives, LeaseService};
pub use lock::LockService;
pub use maintenance::MaintenanceService;
pub(crate) use recipes::Recipes;
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
    /// `--quota-backend-bytes`: past this engine size ([`DbSize`]) writes that can grow the
    /// store raise NOSPACE and are refused.
    pub quota_backend_bytes: u64,
    /// `--auth-token-ttl`: how long a simple token lives unused.
    pub auth_token_ttl: std::time::Duration,
    /// `--bcrypt-cost`: the cost of the password hashes this member makes.
    pub bcrypt_cost: u32,
    /// `--auth-token jwt,…`: signed tokens instead of simple ones.
    pub jwt: Option<Arc<crate::JwtTokens>>,
}

/// Reports the storage engine's size in bytes, for `Status`.
pub type DbSize = Arc<dyn Fn() -> u64 + Send + Sync>;

/// What every service needs. Cheap to clone.
pub(crate) struct Shared<B: mvcc::Backend> {
    pub node: Node<B>,
    pub config: Arc<ApiConfig>,
    pub db_size: DbSize,
    /// Permits for long reads on the blocking pool: how many scan at once.
    pub scans: Arc<Semaphore>,
    /// Cancelled when the server stops: streams that would otherwise live on (keep-alive,
    /// observe) end with it, so a graceful stop does not wait for their clients.
    pub stop: tokio_util::sync::CancellationToken,
}

impl<B: mvcc::Backend> Clone for Shared<B> {
    fn clone(&self) -> Self {
        Self {
            node: self.node.clone(),
            config: Arc::clone(&self.config),
            db_size: Arc::clone(&self.db_size),
            scans: Arc::clone(&self.scans),
            stop: self.stop.clone(),
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

    /// Runs `read`, a scan of the store that may be long, on the blocking pool (never on the
    /// async workers), one of a bounded number at a time. `read` is handed a stop check to ask
    /// between chunks: true once `deadline` passed or the caller went away (this future was
    /// dropped). `client` is the client's own deadline, which decides how expiry is answered.
    pub async fn scan<T: Send + 'static>(
        &self,
        deadline: Deadline,
        client: Deadline,
        read: impl FnOnce(&dyn Fn() -> bool) -> mvcc::Result<T> + Send + 'static,
    ) -> Result<T, ApiError> {
        scan(&self.scans, deadline, client, read).await
    }

    /// etcd's quota check before a write that can grow the store by about `cost` bytes: past
    /// the quota, this member raises NOSPACE through the log (so every member refuses the same
    /// writes) and the write is refused.
    pub async fn check_quota(&self, cost: usize, deadline: Deadline) -> Result<(), ApiError> {
        // With an alarm raised the apply refuses the write, with the answer that alarm gives
        // (CORRUPT's before NOSPACE's), the same on every member.
        if self.node.alarm_raised(mvcc::alarm_kind::NOSPACE)
            || self.node.alarm_raised(mvcc::alarm_kind::CORRUPT)
        {
            return Ok(());
        }
        let size = (self.db_size)().saturating_add(cost as u64);
        if size <= self.config.quota_backend_bytes {
            return Ok(());
        }
        tracing::warn!(
            size,
            quota = self.config.quota_backend_bytes,
            "a write would pass the backend quota; raising the NOSPACE alarm"
        );
        let raise = mvcc::Command::Alarm(mvcc::AlarmRequest {
            action: mvcc::AlarmAction::Activate,
            member_id: self.node.id(),
            alarm: mvcc::alarm_kind::NOSPACE,
        });
        // The write is refused either way; a raise that did not commit is retried by the next.
        if let Err(e) = self.node.propose(raise, deadline).await {
            tracing::warn!(error = %e, "raising the NOSPACE alarm failed");
        }
        Err(mvcc::Refusal::NoSpace.into())
    }

    /// Who sent `req`, as etcd's auth sees it.
    pub async fn caller<T>(
        &self,
        req: &tonic::Request<T>,
    ) -> Result<crate::authz::Caller, ApiError> {
        let cert = req.extensions().get::<crate::authz::CertUser>();
        let jwt = self.config.jwt.as_deref();
        match crate::authz::Caller::identify(self.node.auth(), jwt, req.metadata(), cert) {
            Err(ApiError::Refused(mvcc::Refusal::Auth(consensus::AuthError::InvalidAuthToken))) => {
                // The token may come from an entry committed on another member that this one
                // has not applied yet (etcd waits for it too): catch up once, then look again.
                self.node.read_index(self.deadline(req)).await?;
                crate::authz::Caller::identify(self.node.auth(), jwt, req.metadata(), cert)
            }
            other => other,
        }
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

/// Reads stopped before they finished, by reason (`deadline`, `canceled`).
const READS_STOPPED: &str = "metastore_reads_stopped_total";
/// Reads scanning on the blocking pool now.
const READS_RUNNING: &str = "metastore_reads_running";

/// [`Shared::scan`] with its permits given.
async fn scan<T: Send + 'static>(
    scans: &Arc<Semaphore>,
    deadline: Deadline,
    client: Deadline,
    read: impl FnOnce(&dyn Fn() -> bool) -> mvcc::Result<T> + Send + 'static,
) -> Result<T, ApiError> {
    let expired = || {
        if client.is_expired() {
            ApiError::DeadlineExceeded
        } else {
            ApiError::Timeout
        }
    };
    let permit = deadline::within(Layer::Api, deadline, Arc::clone(scans).acquire_owned())
        .await
        .map_err(|_| expired())?
        .map_err(|_| ApiError::Stopped)?;
    let gone = Arc::new(AtomicBool::new(false));
    let _abandon = Abandon(Arc::clone(&gone));
    let job = tokio::task::spawn_blocking(move || {
        let _permit = permit;
        let _running = Running::new();
        let result = read(&|| deadline.is_expired() || gone.load(Ordering::Relaxed));
        if matches!(result, Err(mvcc::Error::Stopped)) {
            // Counted here: a caller that went away is not there to count it.
            let reason = if deadline.is_expired() {
                "deadline"
            } else {
                "canceled"
            };
            metrics::counter!(READS_STOPPED, "reason" => reason).increment(1);
        }
        result
    });
    match job.await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(mvcc::Error::Stopped)) if deadline.is_expired() => Err(expired()),
        Ok(Err(mvcc::Error::Stopped)) => Err(ApiError::Canceled),
        Ok(Err(e)) => Err(e.into()),
        Err(e) => Err(ApiError::Internal(format!("a read failed: {e}"))),
    }
}

/// Counts a read in [`READS_RUNNING`] while it lives.
struct Running;

impl Running {
    fn new() -> Self {
        metrics::gauge!(READS_RUNNING).increment(1.0);
        Running
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        metrics::gauge!(READS_RUNNING).decrement(1.0);
    }
}

/// Tells a read on the blocking pool that its caller is gone, when the caller's future drops.
struct Abandon(Arc<AtomicBool>);

impl Drop for Abandon {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// The client's own deadline, from its `grpc-timeout`; none if it sent none.
pub(crate) fn client_deadline<T>(req: &tonic::Request<T>) -> Deadline {
    req.metadata()
        .get("grpc-timeout")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| Deadline::from_grpc_timeout(v).ok())
        .unwrap_or_else(Deadline::none)
}

/// Logs an error once, with its cause, at a level that fits its code (the server counts
/// every call in `grpc_server_handled_total`, streams included, from its trailers).
pub(crate) fn handled<T>(
    service: &'static str,
    method: &'static str,
    result: Result<T, Status>,
) -> Result<T, Status> {
    let code = match &result {
        Ok(_) => Code::Ok,
        Err(status) => status.code(),
    };
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

#[cfg(test)]
mod tests {
    use std::sync::mpsc;
    use std::time::{Duration, Instant};

    use super::*;

    /// A read that goes on until it is told to stop, and says when it was.
    fn endless(
        stopped: mpsc::Sender<Instant>,
    ) -> impl FnOnce(&dyn Fn() -> bool) -> mvcc::Result<()> {
        move |stop| {
            while !stop() {
                std::thread::yield_now();
            }
            let _ = stopped.send(Instant::now());
            Err(mvcc::Error::Stopped)
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_scan_stops_at_its_deadline_and_answers_by_whose_it_was() {
        let permits = Arc::new(Semaphore::new(2));
        let short = Duration::from_millis(50);
        let (tx, rx) = mpsc::channel();
        let started = Instant::now();
        let client = Deadline::after(short);
        let got = scan(&permits, client, client, endless(tx.clone())).await;
        assert_eq!(
            got,
            Err(ApiError::DeadlineExceeded),
            "the client's deadline"
        );
        assert!(started.elapsed() < short + Duration::from_secs(1));
        let budget = Deadline::after(short);
        let got = scan(&permits, budget, Deadline::none(), endless(tx)).await;
        assert_eq!(got, Err(ApiError::Timeout), "the server's budget");
        assert_eq!(rx.try_iter().count(), 2, "both reads were stopped");
        assert_eq!(permits.available_permits(), 2, "permits are given back");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_scan_whose_caller_left_stops() {
        let permits = Arc::new(Semaphore::new(1));
        let (tx, rx) = mpsc::channel();
        let call = scan(&permits, Deadline::none(), Deadline::none(), endless(tx));
        let left = deadline::within(Layer::Api, Deadline::after(Duration::from_millis(50)), call);
        assert!(left.await.is_err(), "the read never ends by itself");
        let stopped = rx.recv_timeout(Duration::from_secs(5));
        assert!(stopped.is_ok(), "the read went on after its caller left");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_scan_waits_for_a_permit_within_its_deadline() {
        let permits = Arc::new(Semaphore::new(0));
        let client = Deadline::after(Duration::from_millis(50));
        let got = scan(&permits, client, client, |_| Ok(())).await;
        assert_eq!(got, Err(ApiError::DeadlineExceeded));
    }
}
