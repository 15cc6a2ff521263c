//! The KV service: reads from the local store, writes through Raft.

use std::time::Instant;

use mvcc::{Backend, Command, ReadLimits, Response};
use prost::Message;
use tonic::{Request, Response as Reply, Status};

use crate::error::ApiError;
use crate::pb::etcdserverpb::kv_server::Kv;
use crate::pb::etcdserverpb::{
    CompactionRequest, CompactionResponse, DeleteRangeRequest, DeleteRangeResponse, PutRequest,
    PutResponse, RangeRequest, RangeResponse, TxnRequest, TxnResponse,
};
use crate::pb_conv::{
    delete_from_pb, delete_to_pb, kv_wire_len, put_from_pb, put_to_pb, range_from_pb, range_to_pb,
    read_only, txn_from_pb, txn_to_pb,
};
use crate::service::{client_deadline, handled, Shared};
use crate::validate;

const SERVICE: &str = "etcdserverpb.KV";

/// etcd's KV service over a member.
pub struct KvService<B: mvcc::Backend> {
    shared: Shared<B>,
}

impl<B: Backend> KvService<B> {
    pub(crate) fn new(shared: Shared<B>) -> Self {
        Self { shared }
    }

    async fn serve_range(&self, req: Request<RangeRequest>) -> Result<RangeResponse, ApiError> {
        let deadline = self.shared.deadline(&req);
        let client = client_deadline(&req);
        let caller = self.shared.caller(&req).await?;
        let r = req.into_inner();
        // Like etcd, only what goes through Raft is size-checked: reads are not.
        validate::check_range(&r)?;
        caller.read(&r.key, &r.range_end)?;
        let model = range_from_pb(&r)?;
        if !r.serializable {
            self.shared.node.read_index(deadline).await?;
        }
        let limit = self.shared.config.limits.max_response_bytes;
        let (resp, revision) = if r.range_end.is_empty() {
            // One key: one seek, cheaper than a trip to the blocking pool.
            self.shared.node.store().range(&model)?
        } else {
            // Any other range may count millions of keys, even with a limit.
            let store = self.shared.node.store().clone();
            self.shared
                .scan(deadline, client, move |stop| {
                    let limits = ReadLimits {
                        max_bytes: limit,
                        measure: &kv_wire_len,
                        stop,
                    };
                    store.range_within(&model, &limits)
                })
                .await
                .map_err(|e| match e {
                    // The whole answer, header and all, as grpc-go would have measured it.
                    ApiError::ResponseTooLarge { size, limit } => ApiError::ResponseTooLarge {
                        size: size + self.framing(),
                        limit,
                    },
                    other => other,
                })?
        };
        // etcd counts each read its store serves; applied ones are counted by consensus.
        for name in consensus::metrics::RANGES {
            metrics::counter!(name).increment(1);
        }
        let mut out = range_to_pb(resp, revision);
        out.header = self.shared.header(revision);
        let size = out.encoded_len();
        if size > limit {
            return Err(ApiError::ResponseTooLarge { size, limit });
        }
        Ok(out)
    }

    /// The bytes of a range answer besides its key-values (header, count, more).
    fn framing(&self) -> usize {
        RangeResponse {
            header: self.shared.header(i64::MAX),
            count: i64::MAX,
            more: true,
            kvs: Vec::new(),
        }
        .encoded_len()
    }

    /// Proposes a client's write that `caller` was checked for.
    async fn write(
        &self,
        deadline: deadline::Deadline,
        caller: &crate::authz::Caller,
        command: Command,
    ) -> Result<(i64, Response), ApiError> {
        if grows(&command) {
            self.shared
                .check_quota(command.approx_size(), deadline)
                .await?;
        }
        let command = caller.guard(command);
        Ok(self.shared.node.propose(command, deadline).await?)
    }

    async fn serve_put(&self, req: Request<PutRequest>) -> Result<PutResponse, ApiError> {
        let started = Instant::now();
        let deadline = self.shared.deadline(&req);
        let caller = self.shared.caller(&req).await?;
        let r = req.into_inner();
        self.shared.config.limits.check_size(r.encoded_len())?;
        validate::check_put(&r)?;
        caller.put(&r.key, r.prev_kv)?;
        // etcd: a put onto a lease needs write permission on the lease's other keys too.
        if r.lease != 0 && caller.state().enabled {
            if let Some(lease) = self.shared.node.store().lease(r.lease) {
                for key in &lease.keys {
                    caller.write(key, &[])?;
                }
            }
        }
        stage("validate", started);
        if consensus::ablation::skips(consensus::ablation::Cut::Raft) {
            let revision = self.shared.node.store().current_revision();
            return Ok(PutResponse {
                header: self.shared.header(revision),
                prev_kv: None,
            });
        }
        match self
            .write(deadline, &caller, Command::Put(put_from_pb(r)))
            .await?
        {
            (revision, Response::Put(p)) => {
                let mut out = put_to_pb(p, revision);
                out.header = self.shared.header(revision);
                stage("handler", started);
                Ok(out)
            }
            (_, other) => Err(unexpected(&other)),
        }
    }

    async fn serve_delete_range(
        &self,
        req: Request<DeleteRangeRequest>,
    ) -> Result<DeleteRangeResponse, ApiError> {
        let deadline = self.shared.deadline(&req);
        let caller = self.shared.caller(&req).await?;
        let r = req.into_inner();
        self.shared.config.limits.check_size(r.encoded_len())?;
        validate::check_delete(&r)?;
        caller.delete(&r.key, &r.range_end, r.prev_kv)?;
        match self
            .write(deadline, &caller, Command::DeleteRange(delete_from_pb(r)))
            .await?
        {
            (revision, Response::DeleteRange(d)) => {
                let mut out = delete_to_pb(d, revision);
                out.header = self.shared.header(revision);
                Ok(out)
            }
            (_, other) => Err(unexpected(&other)),
        }
    }

    async fn serve_txn(&self, req: Request<TxnRequest>) -> Result<TxnResponse, ApiError> {
        let deadline = self.shared.deadline(&req);
        let caller = self.shared.caller(&req).await?;
        let r = req.into_inner();
        if !read_only(&r) {
            self.shared.config.limits.check_size(r.encoded_len())?;
        }
        validate::check_txn(&r, self.shared.config.limits.max_txn_ops)?;
        caller.txn(&r)?;
        let txn = txn_from_pb(r)?;
        mvcc::check_txn_keys(&txn)?;
        match self.write(deadline, &caller, Command::Txn(txn)).await? {
            (revision, Response::Txn(t)) => {
                let mut out = txn_to_pb(t, revision);
                out.header = self.shared.header(revision);
                Ok(out)
            }
            (_, other) => Err(unexpected(&other)),
        }
    }

    async fn serve_compact(
        &self,
        req: Request<CompactionRequest>,
    ) -> Result<CompactionResponse, ApiError> {
        let deadline = self.shared.deadline(&req);
        // etcd 3.4 checks no permission for a compaction, but refuses a token it does not know.
        self.shared.caller(&req).await?;
        let r = req.into_inner();
        let command = Command::Compact(mvcc::CompactRequest {
            revision: r.revision,
            physical: r.physical,
        });
        // Not re-checked at apply either: etcd checks nothing for it.
        let (revision, _) = self.shared.node.propose(command, deadline).await?;
        // Every member removes the old versions in the background once it applied the
        // compaction; `physical` waits for this member's removal.
        if r.physical {
            self.shared
                .node
                .wait_compaction(r.revision, deadline)
                .await?;
        }
        Ok(CompactionResponse {
            header: self.shared.header(revision),
        })
    }
}

/// Records the time since `started` as the put path's `stage` ([`consensus::STAGE_SECONDS`]).
fn stage(stage: &'static str, started: Instant) {
    consensus::record_stage(stage, started.elapsed());
}

fn unexpected(response: &Response) -> ApiError {
    ApiError::Internal(format!("unexpected answer {response:?}"))
}

#[tonic::async_trait]
impl<B: Backend> Kv for KvService<B> {
    async fn range(&self, request: Request<RangeRequest>) -> Result<Reply<RangeResponse>, Status> {
        handled(
            SERVICE,
            "Range",
            self.serve_range(request)
                .await
                .map(Reply::new)
                .map_err(Status::from),
        )
    }

    async fn put(&self, request: Request<PutRequest>) -> Result<Reply<PutResponse>, Status> {
        handled(
            SERVICE,
            "Put",
            self.serve_put(request)
                .await
                .map(Reply::new)
                .map_err(Status::from),
        )
    }

    async fn delete_range(
        &self,
        request: Request<DeleteRangeRequest>,
    ) -> Result<Reply<DeleteRangeResponse>, Status> {
        handled(
            SERVICE,
            "DeleteRange",
            self.serve_delete_range(request)
                .await
                .map(Reply::new)
                .map_err(Status::from),
        )
    }

    async fn txn(&self, request: Request<TxnRequest>) -> Result<Reply<TxnResponse>, Status> {
        handled(
            SERVICE,
            "Txn",
            self.serve_txn(request)
                .await
                .map(Reply::new)
                .map_err(Status::from),
        )
    }

    async fn compact(
        &self,
        request: Request<CompactionRequest>,
    ) -> Result<Reply<CompactionResponse>, Status> {
        handled(
            SERVICE,
            "Compact",
            self.serve_compact(request)
                .await
                .map(Reply::new)
                .map_err(Status::from),
        )
    }
}

/// Whether `command` can grow the store: what etcd's quota checks (puts, txns with puts).
fn grows(command: &Command) -> bool {
    fn ops_put(ops: &[mvcc::RequestOp]) -> bool {
        ops.iter().any(|op| match op {
            mvcc::RequestOp::Put(_) => true,
            mvcc::RequestOp::Txn(t) => ops_put(&t.success) || ops_put(&t.failure),
            _ => false,
        })
    }
    match command {
        Command::Put(_) => true,
        Command::Txn(t) => ops_put(&t.success) || ops_put(&t.failure),
        _ => false,
    }
}
