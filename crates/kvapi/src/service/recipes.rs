//! What the Lock and Election services share: etcd builds both as clients of its own KV,
//! Lease and Watch (its `concurrency` recipes), and so do we, over the member's store, Raft and
//! watch hub.
//!
//! An owner (of a lock) or candidate (in an election) `name` is the key `name/<lease in hex>`,
//! attached to the caller's lease; the one with the lowest create revision under `name/` holds
//! the lock or leads. The others wait, each on the deletion of the key created just before its
//! own, so a release wakes one waiter, not all of them.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use deadline::{Deadline, Layer};
use mvcc::{
    Backend, Command, Compare, CompareResult, CompareTarget, DeleteRangeRequest, EventKind,
    KeyRange, KeyValue, PutRequest, RangeRequest, RangeResponse, RequestOp, Response, SortOrder,
    SortTarget, TxnRequest, TxnResponse,
};
use tokio::sync::mpsc;
use watch::{Delivery, Hub, WatchGuard, WatchSpec};

use crate::error::ApiError;
use crate::service::Shared;

/// The TTL of the lease etcd grants a Lock or Campaign that names none (its session default).
const SESSION_TTL: i64 = 60;
/// Deliveries a recipe's watch may have queued: it looks for one event and stops.
const WATCH_QUEUE: usize = 16;

/// A member's store, Raft and watch hub, used as etcd's recipes use a client.
pub(crate) struct Recipes<B: mvcc::Backend> {
    pub shared: Shared<B>,
    pub hub: Hub,
    /// Counts leases granted for callers that named none, to draw distinct ids.
    leases: Arc<AtomicU64>,
}

/// A key created for a waiting owner or candidate; deleted again unless [`Claim::keep`] is
/// called, also when the caller goes away (its future dropped) while it waits.
pub(crate) struct Claim<B: Backend> {
    recipes: Option<Recipes<B>>,
    /// The key.
    pub key: Vec<u8>,
    /// Its create revision.
    pub rev: i64,
    /// Its value before this call, if it already existed.
    pub existing: Option<Vec<u8>>,
    /// The create revision of the first key under the prefix when it was claimed.
    pub first: i64,
    /// The store's revision when it was claimed.
    pub revision: i64,
}

impl<B: Backend> Claim<B> {
    /// The claim stays: its key outlives this call.
    pub fn keep(mut self) {
        self.recipes = None;
    }

    /// Deletes the key now (if it is still this claim's), answering when done.
    pub async fn release(mut self, client: Deadline) -> Result<i64, ApiError> {
        match self.recipes.take() {
            Some(recipes) => recipes.delete_if(&self.key, self.rev, client).await,
            None => Ok(0),
        }
    }
}

impl<B: Backend> Drop for Claim<B> {
    fn drop(&mut self) {
        // The call went away mid-wait: nobody will use the key, so it must not block others.
        let Some(recipes) = self.recipes.take() else {
            return;
        };
        let (key, rev) = (std::mem::take(&mut self.key), self.rev);
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move {
                if let Err(e) = recipes.delete_if(&key, rev, Deadline::none()).await {
                    tracing::warn!(error = %e, "a cancelled waiter's key was not removed; its lease will");
                }
            });
        }
    }
}

impl<B: Backend> Clone for Recipes<B> {
    fn clone(&self) -> Self {
        Self {
            shared: self.shared.clone(),
            hub: self.hub.clone(),
            leases: Arc::clone(&self.leases),
        }
    }
}

/// The status of a failed recipe as etcd answers it: its services are clients of etcd's own
/// KV, and a client's error reaches the caller as a plain error, so with code `Unknown` and
/// the same text (a deadline or a cancellation keeps its code).
pub(crate) fn as_etcd_status(e: ApiError) -> tonic::Status {
    match e {
        ApiError::DeadlineExceeded | ApiError::Canceled => e.status(),
        other => tonic::Status::unknown(other.to_string()),
    }
}

/// `name` + `/`: the prefix every owner or candidate key of `name` is under.
pub(crate) fn prefix_of(name: &[u8]) -> Vec<u8> {
    let mut prefix = name.to_vec();
    prefix.push(b'/');
    prefix
}

fn first_create(prefix: &[u8]) -> RangeRequest {
    RangeRequest {
        key: prefix.to_vec(),
        range_end: mvcc::prefix_end(prefix),
        limit: 1,
        sort_order: SortOrder::Ascend,
        sort_target: SortTarget::Create,
        ..Default::default()
    }
}

pub(crate) fn created_at(key: &[u8], rev: i64) -> Compare {
    Compare {
        result: CompareResult::Equal,
        target: CompareTarget::Create(rev),
        key: key.to_vec(),
        range_end: Vec::new(),
    }
}

fn range_of(op: Option<&mvcc::ResponseOp>) -> Option<&RangeResponse> {
    match op {
        Some(mvcc::ResponseOp::Range(r)) => Some(r),
        _ => None,
    }
}

impl<B: Backend> Recipes<B> {
    pub(crate) fn new(shared: Shared<B>, hub: Hub) -> Self {
        Self {
            shared,
            hub,
            leases: Arc::new(AtomicU64::new(0)),
        }
    }

    /// One step of a recipe: the client's deadline, capped by the `api` budget from now.
    fn step(&self, client: Deadline) -> Deadline {
        self.shared.config.budgets.deadline_for(Layer::Api, client)
    }

    /// Runs `txn` through Raft; answers the store's revision after it and its answer.
    /// etcd serves Lock and Election as a client of itself with the caller's token: the caller
    /// needs read and write on the keys under `prefix` (or on the one key, with `exact`).
    pub(crate) async fn permit<T>(
        &self,
        req: &tonic::Request<T>,
        prefix: &[u8],
        exact: bool,
    ) -> Result<(), ApiError> {
        let caller = self.shared.caller(req).await?;
        let end = if exact {
            Vec::new()
        } else {
            mvcc::prefix_end(prefix)
        };
        caller.read(prefix, &end)?;
        caller.write(prefix, &end)?;
        Ok(())
    }

    pub async fn txn(
        &self,
        txn: TxnRequest,
        client: Deadline,
    ) -> Result<(i64, TxnResponse), ApiError> {
        match self
            .shared
            .node
            .propose(Command::Txn(txn), self.step(client))
            .await?
        {
            (revision, Response::Txn(t)) => Ok((revision, t)),
            (_, other) => Err(ApiError::Internal(format!("unexpected answer {other:?}"))),
        }
    }

    /// A linearizable read; answers the revision read at too.
    pub async fn read(
        &self,
        req: &RangeRequest,
        client: Deadline,
    ) -> Result<(RangeResponse, i64), ApiError> {
        self.shared.node.read_index(self.step(client)).await?;
        Ok(self.shared.node.store().range(req)?)
    }

    /// The first key (lowest create revision) under `prefix`, with the revision read at.
    pub async fn first(
        &self,
        prefix: &[u8],
        client: Deadline,
    ) -> Result<(Option<KeyValue>, i64), ApiError> {
        let (resp, rev) = self.read(&first_create(prefix), client).await?;
        Ok((resp.kvs.into_iter().next(), rev))
    }

    /// Deletes `key` if it is still the one created at `rev`; answers the revision after.
    pub async fn delete_if(&self, key: &[u8], rev: i64, client: Deadline) -> Result<i64, ApiError> {
        let txn = TxnRequest {
            compare: vec![created_at(key, rev)],
            success: vec![RequestOp::DeleteRange(DeleteRangeRequest {
                key: key.to_vec(),
                ..Default::default()
            })],
            failure: Vec::new(),
        };
        Ok(self.txn(txn, client).await?.0)
    }

    /// The caller's lease, or (for 0) a new one with etcd's session TTL, as etcd's session does.
    pub async fn lease_or_new(&self, lease: i64, client: Deadline) -> Result<i64, ApiError> {
        if lease != 0 {
            return Ok(lease);
        }
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        let n = self.leases.fetch_add(1, Ordering::Relaxed);
        let mixed = (now ^ self.shared.node.id().rotate_left(17) ^ n.rotate_left(41))
            .wrapping_mul(0x9e37_79b9_7f4a_7c15);
        let id = i64::try_from(mixed & (i64::MAX as u64)).unwrap_or(1).max(1);
        let ttl = SESSION_TTL.max(self.shared.node.min_lease_ttl());
        let command = Command::LeaseGrant(mvcc::LeaseGrantRequest { id, ttl });
        match self.shared.node.propose(command, self.step(client)).await? {
            (_, Response::LeaseGrant { id, .. }) => Ok(id),
            (_, other) => Err(ApiError::Internal(format!("unexpected answer {other:?}"))),
        }
    }

    /// Creates `prefix<lease in hex>` with `value` under `lease` unless it exists (then it is
    /// kept as it is), in one txn that also reads the first key under `prefix`.
    pub async fn claim(
        &self,
        prefix: &[u8],
        lease: i64,
        value: &[u8],
        client: Deadline,
    ) -> Result<Claim<B>, ApiError> {
        let mut key = prefix.to_vec();
        key.extend_from_slice(format!("{lease:x}").as_bytes());
        let own = RequestOp::Range(RangeRequest {
            key: key.clone(),
            ..Default::default()
        });
        let owner = RequestOp::Range(first_create(prefix));
        let txn = TxnRequest {
            compare: vec![created_at(&key, 0)],
            success: vec![
                RequestOp::Put(PutRequest {
                    key: key.clone(),
                    value: value.to_vec(),
                    lease,
                    ..Default::default()
                }),
                owner.clone(),
            ],
            failure: vec![own, owner],
        };
        let (revision, resp) = self.txn(txn, client).await?;
        let first = range_of(resp.responses.get(1))
            .and_then(|r| r.kvs.first())
            .map_or(0, |kv| kv.create_revision);
        let (rev, existing) = if resp.succeeded {
            (revision, None)
        } else {
            let kv = range_of(resp.responses.first())
                .and_then(|r| r.kvs.first())
                .ok_or_else(|| ApiError::Internal("a claimed key vanished".into()))?;
            (kv.create_revision, Some(kv.value.clone()))
        };
        Ok(Claim {
            recipes: Some(self.clone()),
            key,
            rev,
            existing,
            first,
            revision,
        })
    }

    /// Waits until no key under `prefix` created at or before `max_rev` is left: each time on
    /// the deletion of the newest of them. Answers the revision of the last read; ends with
    /// [`ApiError::Stopped`] when the server stops.
    pub async fn wait_deletes(
        &self,
        prefix: &[u8],
        max_rev: i64,
        client: Deadline,
    ) -> Result<i64, ApiError> {
        loop {
            let req = RangeRequest {
                key: prefix.to_vec(),
                range_end: mvcc::prefix_end(prefix),
                limit: 1,
                sort_order: SortOrder::Descend,
                sort_target: SortTarget::Create,
                max_create_revision: max_rev,
                ..Default::default()
            };
            let (resp, rev) = self.read(&req, client).await?;
            let Some(last) = resp.kvs.into_iter().next() else {
                return Ok(rev);
            };
            let (_guard, mut events) = self.watch(&last.key, &[], rev + 1, true)?;
            loop {
                let delivery = tokio::select! {
                    // A stopping server answers at once, as etcd does, rather than holding its
                    // graceful stop until the caller's deadline.
                    () = self.shared.stop.cancelled() => return Err(ApiError::Stopped),
                    d = deadline::within(Layer::Api, client, events.recv()) => {
                        d.map_err(|_| ApiError::DeadlineExceeded)?
                    }
                };
                match delivery {
                    // Gone (deleted, or the watch ended: look again).
                    None => break,
                    Some(d) if d.compacted.is_some() => break,
                    Some(d) if d.events.iter().any(|e| e.kind == EventKind::Delete) => break,
                    Some(_) => {}
                }
            }
        }
    }

    /// A watch of `key` (to `range_end`) from revision `from`; only deletes if `deletes_only`.
    pub fn watch(
        &self,
        key: &[u8],
        range_end: &[u8],
        from: i64,
        deletes_only: bool,
    ) -> Result<(WatchGuard, mpsc::Receiver<Delivery>), ApiError> {
        let (tx, rx) = mpsc::channel(WATCH_QUEUE);
        let mut spec = WatchSpec::new(KeyRange::new(key, range_end));
        spec.start_revision = from;
        spec.no_put = deletes_only;
        let guard = self.hub.watch(spec, tx).map_err(|_| ApiError::Stopped)?;
        Ok((guard, rx))
    }
}
