//! The Lease service: grants and revokes through Raft, keep-alives and TTLs from the leader's
//! lessor, the list and attached keys from the store.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use deadline::{Deadline, Layer, SendError};
use mvcc::{Backend, Command, LeaseGrantRequest as GrantCommand, Response};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response as Reply, Status, Streaming};

use crate::error::ApiError;
use crate::pb::etcdserverpb::lease_server::Lease;
use crate::pb::etcdserverpb::{
    LeaseGrantRequest, LeaseGrantResponse, LeaseKeepAliveRequest, LeaseKeepAliveResponse,
    LeaseLeasesRequest, LeaseLeasesResponse, LeaseRevokeRequest, LeaseRevokeResponse, LeaseStatus,
    LeaseTimeToLiveRequest, LeaseTimeToLiveResponse,
};
use crate::service::{handled, Shared};

const SERVICE: &str = "etcdserverpb.Lease";
/// etcd's largest lease TTL, in seconds.
const MAX_LEASE_TTL: i64 = 9_000_000_000;
/// Keep-alive answers waiting for a slow client, per stream.
const KEEPALIVE_RESPONSES: usize = 64;

/// etcd's Lease service over a member.
pub struct LeaseService<B: mvcc::Backend> {
    shared: Shared<B>,
    /// Mixed into generated lease ids, so that two grants in one nanosecond differ.
    counter: AtomicU64,
}

/// The keep-alive answers handed to tonic.
pub type KeepAlives = ReceiverStream<Result<LeaseKeepAliveResponse, Status>>;

/// A well-mixed 64-bit value from `x` (splitmix64's finalizer).
fn mix(mut x: u64) -> u64 {
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

impl<B: Backend> LeaseService<B> {
    pub(crate) fn new(shared: Shared<B>) -> Self {
        Self {
            shared,
            counter: AtomicU64::new(0),
        }
    }

    /// A positive, non-zero lease id that no member is likely to generate too.
    fn generate_id(&self) -> i64 {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        let id = mix(now ^ mix(self.shared.node.id()) ^ mix(n)) & (i64::MAX as u64);
        i64::try_from(id).unwrap_or(1).max(1)
    }

    async fn serve_grant(
        &self,
        req: Request<LeaseGrantRequest>,
    ) -> Result<LeaseGrantResponse, ApiError> {
        let deadline = self.shared.deadline(&req);
        let r = req.into_inner();
        if r.ttl > MAX_LEASE_TTL {
            return Err(mvcc::Refusal::LeaseTtlTooLarge.into());
        }
        // etcd generates an id for 0 and for negative ones.
        let id = if r.id > 0 { r.id } else { self.generate_id() };
        let ttl = r.ttl.max(self.shared.node.min_lease_ttl());
        let command = Command::LeaseGrant(GrantCommand { id, ttl });
        self.shared
            .check_quota(command.approx_size(), deadline)
            .await?;
        match self.shared.node.propose(command, deadline).await? {
            (revision, Response::LeaseGrant { id, ttl }) => Ok(LeaseGrantResponse {
                header: self.shared.header(revision),
                id,
                ttl,
                error: String::new(),
            }),
            (_, other) => Err(ApiError::Internal(format!("unexpected answer {other:?}"))),
        }
    }

    async fn serve_revoke(
        &self,
        req: Request<LeaseRevokeRequest>,
    ) -> Result<LeaseRevokeResponse, ApiError> {
        let deadline = self.shared.deadline(&req);
        let caller = self.shared.caller(&req).await?;
        let id = req.into_inner().id;
        // etcd: revoking deletes the attached keys, so it needs write permission on each.
        let mut has_keys = false;
        if let Some(lease) = self.shared.node.store().lease(id) {
            for key in &lease.keys {
                caller.write(key, &[])?;
            }
            has_keys = !lease.keys.is_empty();
        }
        let command = Command::LeaseRevoke(mvcc::LeaseRevokeRequest { id });
        // etcd re-checks the attached keys at apply; a lease without keys needs no permission.
        let command = if has_keys {
            caller.guard(command)
        } else {
            command
        };
        let (revision, _) = self.shared.node.propose(command, deadline).await?;
        Ok(LeaseRevokeResponse {
            header: self.shared.header(revision),
        })
    }

    async fn serve_time_to_live(
        &self,
        req: Request<LeaseTimeToLiveRequest>,
    ) -> Result<LeaseTimeToLiveResponse, ApiError> {
        let deadline = self.shared.deadline(&req);
        let r = req.into_inner();
        // Answered from the leader's view once it holds everything committed.
        self.shared.node.read_index(deadline).await?;
        let node = &self.shared.node;
        let header = self.shared.header(node.store().current_revision());
        let Some(lease) = node.store().lease(r.id) else {
            // etcd answers an unknown lease with TTL -1 rather than an error.
            return Ok(LeaseTimeToLiveResponse {
                header,
                id: r.id,
                ttl: -1,
                ..Default::default()
            });
        };
        let left = node
            .lease_remaining(r.id, deadline)
            .await?
            .unwrap_or(Duration::ZERO);
        Ok(LeaseTimeToLiveResponse {
            header,
            id: r.id,
            ttl: i64::try_from(left.as_secs()).unwrap_or(i64::MAX),
            granted_ttl: lease.ttl,
            keys: if r.keys { lease.keys } else { Vec::new() },
        })
    }

    async fn serve_leases(
        &self,
        req: Request<LeaseLeasesRequest>,
    ) -> Result<LeaseLeasesResponse, ApiError> {
        let deadline = self.shared.deadline(&req);
        self.shared.node.read_index(deadline).await?;
        let store = self.shared.node.store();
        Ok(LeaseLeasesResponse {
            header: self.shared.header(store.current_revision()),
            leases: store
                .leases()
                .into_iter()
                .map(|l| LeaseStatus { id: l.id })
                .collect(),
        })
    }
}

/// Answers one keep-alive stream until the client closes it, fails, stops reading for the
/// `api` budget, the member stops leading, or the server stops.
async fn keep_alive<B: Backend>(
    shared: Shared<B>,
    mut inbound: Streaming<LeaseKeepAliveRequest>,
    tx: mpsc::Sender<Result<LeaseKeepAliveResponse, Status>>,
) {
    let budget = shared.config.budgets.get(Layer::Api);
    loop {
        let request = tokio::select! {
            () = tx.closed() => return,
            // etcd ends its streams at once on a stop; the client reconnects elsewhere.
            () = shared.stop.cancelled() => return,
            r = inbound.message() => r,
        };
        let id = match request {
            Ok(Some(r)) => r.id,
            Ok(None) | Err(_) => return,
        };
        let answer = match shared.node.lease_renew(id, Deadline::after(budget)).await {
            Ok(ttl) => Ok(LeaseKeepAliveResponse {
                header: shared.header(shared.node.store().current_revision()),
                id,
                ttl,
            }),
            Err(e) => Err(Status::from(ApiError::from(e))),
        };
        let failed = answer.is_err();
        match deadline::send(Layer::Api, Deadline::after(budget), &tx, answer).await {
            Ok(()) if !failed => {}
            Ok(()) | Err(SendError::Closed { .. }) => return,
            Err(_) => {
                tracing::warn!(
                    lease = id,
                    "lease keep-alive stream: the client reads nothing; closing it"
                );
                return;
            }
        }
    }
}

#[tonic::async_trait]
impl<B: Backend> Lease for LeaseService<B> {
    async fn lease_grant(
        &self,
        request: Request<LeaseGrantRequest>,
    ) -> Result<Reply<LeaseGrantResponse>, Status> {
        handled(
            SERVICE,
            "LeaseGrant",
            self.serve_grant(request)
                .await
                .map(Reply::new)
                .map_err(Status::from),
        )
    }

    async fn lease_revoke(
        &self,
        request: Request<LeaseRevokeRequest>,
    ) -> Result<Reply<LeaseRevokeResponse>, Status> {
        handled(
            SERVICE,
            "LeaseRevoke",
            self.serve_revoke(request)
                .await
                .map(Reply::new)
                .map_err(Status::from),
        )
    }

    type LeaseKeepAliveStream = KeepAlives;

    async fn lease_keep_alive(
        &self,
        request: Request<Streaming<LeaseKeepAliveRequest>>,
    ) -> Result<Reply<KeepAlives>, Status> {
        let (tx, rx) = mpsc::channel(KEEPALIVE_RESPONSES);
        tokio::spawn(keep_alive(self.shared.clone(), request.into_inner(), tx));
        Ok(Reply::new(ReceiverStream::new(rx)))
    }

    async fn lease_time_to_live(
        &self,
        request: Request<LeaseTimeToLiveRequest>,
    ) -> Result<Reply<LeaseTimeToLiveResponse>, Status> {
        handled(
            SERVICE,
            "LeaseTimeToLive",
            self.serve_time_to_live(request)
                .await
                .map(Reply::new)
                .map_err(Status::from),
        )
    }

    async fn lease_leases(
        &self,
        request: Request<LeaseLeasesRequest>,
    ) -> Result<Reply<LeaseLeasesResponse>, Status> {
        handled(
            SERVICE,
            "LeaseLeases",
            self.serve_leases(request)
                .await
                .map(Reply::new)
                .map_err(Status::from),
        )
    }
}
