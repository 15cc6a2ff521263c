//! The Maintenance service: status, hashes, alarms; what clustering and snapshots need comes later.

use std::pin::Pin;

use mvcc::{Backend, KvHash};
use tokio_stream::Stream;
use tonic::{Request, Response as Reply, Status};

use crate::error::ApiError;
use crate::pb::etcdserverpb::maintenance_server::Maintenance;
use crate::pb::etcdserverpb::{
    alarm_request::AlarmAction, AlarmMember, AlarmRequest, AlarmResponse, DefragmentRequest,
    DefragmentResponse, DowngradeRequest, DowngradeResponse, HashKvRequest, HashKvResponse,
    HashRequest, HashResponse, MoveLeaderRequest, MoveLeaderResponse, SnapshotRequest,
    SnapshotResponse, StatusRequest, StatusResponse,
};
use crate::service::{client_deadline, handled, Shared};

const SERVICE: &str = "etcdserverpb.Maintenance";

/// etcd's Maintenance service over a member.
pub struct MaintenanceService<B: mvcc::Backend> {
    shared: Shared<B>,
}

impl<B: Backend> MaintenanceService<B> {
    pub(crate) fn new(shared: Shared<B>) -> Self {
        Self { shared }
    }

    /// The key-space hash at `revision`: a scan of the whole store, off the async workers and
    /// within the request's deadline.
    async fn hash_of<T>(&self, request: &Request<T>, revision: i64) -> Result<KvHash, ApiError> {
        let store = self.shared.node.store().clone();
        self.shared
            .scan(
                self.shared.deadline(request),
                client_deadline(request),
                move |stop| store.hash_until(revision, stop),
            )
            .await
    }

    /// Every action goes through the log, GET too, as in etcd: the answer is the alarms as
    /// of that point in the log, the same on every member. etcd 3.4 answers without a header.
    async fn serve_alarm(&self, request: Request<AlarmRequest>) -> Result<AlarmResponse, ApiError> {
        let deadline = self.shared.deadline(&request);
        let r = request.into_inner();
        let action = match AlarmAction::try_from(r.action) {
            Ok(AlarmAction::Get) => mvcc::AlarmAction::Get,
            Ok(AlarmAction::Activate) => mvcc::AlarmAction::Activate,
            Ok(AlarmAction::Deactivate) => mvcc::AlarmAction::Deactivate,
            // etcd's applier answers an unknown action with an empty list.
            Err(_) => {
                return Ok(AlarmResponse {
                    header: None,
                    alarms: vec![],
                })
            }
        };
        let command = mvcc::Command::Alarm(mvcc::AlarmRequest {
            action,
            member_id: r.member_id,
            alarm: r.alarm,
        });
        match self.shared.node.propose(command, deadline).await? {
            (_, mvcc::Response::Alarm(listed)) => Ok(AlarmResponse {
                header: None,
                alarms: listed
                    .into_iter()
                    .map(|m| AlarmMember {
                        member_id: m.member_id,
                        alarm: m.alarm,
                    })
                    .collect(),
            }),
            (_, other) => Err(ApiError::Internal(format!("unexpected answer {other:?}"))),
        }
    }

    /// etcd's check for Hash, HashKV, Defragment and Snapshot: root only, refused with the
    /// auth store's own text and code Unknown, as etcd 3.4 answers.
    async fn admin<T>(&self, request: &Request<T>) -> Result<(), Status> {
        let unknown = |e| ApiError::AuthUnknown(e).status();
        let caller = self.shared.caller(request).await.map_err(|e| match e {
            ApiError::Refused(mvcc::Refusal::Auth(a)) => unknown(a),
            other => other.status(),
        })?;
        caller.admin().map_err(unknown)
    }

    fn current_header(&self) -> Option<crate::pb::etcdserverpb::ResponseHeader> {
        self.shared
            .header(self.shared.node.store().current_revision())
    }
}

#[tonic::async_trait]
impl<B: Backend> Maintenance for MaintenanceService<B> {
    async fn alarm(&self, request: Request<AlarmRequest>) -> Result<Reply<AlarmResponse>, Status> {
        handled(
            SERVICE,
            "Alarm",
            self.serve_alarm(request)
                .await
                .map(Reply::new)
                .map_err(|e| e.status()),
        )
    }

    async fn status(
        &self,
        _request: Request<StatusRequest>,
    ) -> Result<Reply<StatusResponse>, Status> {
        let s = self.shared.node.status();
        let size = i64::try_from((self.shared.db_size)()).unwrap_or(i64::MAX);
        let reply = StatusResponse {
            header: self.current_header(),
            version: self.shared.config.version.clone(),
            db_size: size,
            leader: s.leader.unwrap_or(0),
            raft_index: s.last_log_index,
            raft_term: s.term,
            raft_applied_index: s.applied_index,
            // etcd lists the raised alarms here, in protobuf's text form.
            errors: self
                .shared
                .node
                .alarms()
                .into_iter()
                .map(|a| format!("memberID:{} alarm:{} ", a.member_id, alarm_name(a.alarm)))
                .collect(),
            db_size_in_use: size,
            is_learner: s.members.iter().any(|(id, _, voter)| *id == s.id && !voter),
        };
        handled(SERVICE, "Status", Ok(Reply::new(reply)))
    }

    /// Rewrites this member's engine file (etcd defragments one member per request, as
    /// etcdctl asks each endpoint in turn). Reads and writes wait while it runs, as on etcd.
    /// The rewrite cannot stop halfway: past the deadline the client gets its timeout and the
    /// rewrite finishes on its own.
    async fn defragment(
        &self,
        request: Request<DefragmentRequest>,
    ) -> Result<Reply<DefragmentResponse>, Status> {
        if let Err(e) = self.admin(&request).await {
            return handled(SERVICE, "Defragment", Err(e));
        }
        let store = self.shared.node.store().clone();
        let result = self
            .shared
            .scan(
                self.shared.deadline(&request),
                client_deadline(&request),
                move |_stop| store.backend().defragment().map_err(mvcc::Error::from),
            )
            .await
            .map(|_| {
                // etcd 3.4 answers an empty DefragmentResponse: no header.
                Reply::new(DefragmentResponse { header: None })
            })
            .map_err(|e| e.status());
        handled(SERVICE, "Defragment", result)
    }

    async fn hash(&self, request: Request<HashRequest>) -> Result<Reply<HashResponse>, Status> {
        if let Err(e) = self.admin(&request).await {
            return handled(SERVICE, "Hash", Err(e));
        }
        let result = self
            .hash_of(&request, 0)
            .await
            .map(|h| {
                Reply::new(HashResponse {
                    header: self.current_header(),
                    hash: h.hash,
                })
            })
            .map_err(|e| e.status());
        handled(SERVICE, "Hash", result)
    }

    async fn hash_kv(
        &self,
        request: Request<HashKvRequest>,
    ) -> Result<Reply<HashKvResponse>, Status> {
        if let Err(e) = self.admin(&request).await {
            return handled(SERVICE, "HashKV", Err(e));
        }
        let revision = request.get_ref().revision;
        let result = self
            .hash_of(&request, revision)
            .await
            .map(|h| {
                Reply::new(HashKvResponse {
                    header: self.current_header(),
                    hash: h.hash,
                    // etcd's store starts "compacted at -1": never compacted.
                    compact_revision: if h.compact_revision == 0 {
                        -1
                    } else {
                        h.compact_revision
                    },
                    hash_revision: h.revision,
                })
            })
            .map_err(|e| e.status());
        handled(SERVICE, "HashKV", result)
    }

    type SnapshotStream =
        Pin<Box<dyn Stream<Item = Result<SnapshotResponse, Status>> + Send + 'static>>;

    /// etcd's snapshot file of this member's store (see `service::snapshot`).
    async fn snapshot(
        &self,
        request: Request<SnapshotRequest>,
    ) -> Result<Reply<Self::SnapshotStream>, Status> {
        if let Err(e) = self.admin(&request).await {
            return handled(SERVICE, "Snapshot", Err(e));
        }
        let started = crate::service::snapshot::start(&self.shared, &request).await;
        handled(
            SERVICE,
            "Snapshot",
            started.map(Reply::new).map_err(|e| e.status()),
        )
    }

    /// etcd's MoveLeader: only the leader takes it, and it answers once the target leads.
    /// `consensus` waits for the target to catch up, then has openraft hand over.
    async fn move_leader(
        &self,
        request: Request<MoveLeaderRequest>,
    ) -> Result<Reply<MoveLeaderResponse>, Status> {
        let deadline = self.shared.deadline(&request);
        let client = client_deadline(&request);
        let target = request.get_ref().target_id;
        let result = match self.shared.node.transfer_leadership(target, deadline).await {
            Ok(()) => Ok(Reply::new(MoveLeaderResponse {
                header: self.current_header(),
            })),
            // etcd waits for a lagging target until the client's own deadline.
            Err(consensus::TransferError::Timeout) if client.is_expired() => {
                Err(ApiError::DeadlineExceeded.status())
            }
            Err(e) => Err(ApiError::from(e).status()),
        };
        handled(SERVICE, "MoveLeader", result)
    }

    async fn downgrade(
        &self,
        _request: Request<DowngradeRequest>,
    ) -> Result<Reply<DowngradeResponse>, Status> {
        handled(
            SERVICE,
            "Downgrade",
            Err(Status::unimplemented("downgrade is not supported")),
        )
    }
}

/// An alarm kind's name as etcd's `AlarmType` enum spells it.
fn alarm_name(kind: i32) -> String {
    match kind {
        mvcc::alarm_kind::NONE => "NONE".to_string(),
        mvcc::alarm_kind::NOSPACE => "NOSPACE".to_string(),
        mvcc::alarm_kind::CORRUPT => "CORRUPT".to_string(),
        other => other.to_string(),
    }
}
