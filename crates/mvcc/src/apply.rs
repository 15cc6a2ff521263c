//! Applying commands: a [`Writer`] evaluates one [`Store::apply`] call against the backend
//! plus the call's own writes so far, builds the one batch that records them, and the events.

use std::collections::{BTreeMap, BTreeSet};
use std::ops::{Bound, ControlFlow};
use std::sync::atomic::Ordering;

use crate::backend::{Backend, Reads, Table, WriteBatch};
use crate::codec;
use crate::error::{Error, Refusal, Result};
use crate::keys::KeyRange;
use crate::lease;
use crate::read::{self, build_range, Item, ItemVisitor, ReadLimits};
use crate::store::{tombstone_kv, Store, Wanted, META_COMPACT, META_CURRENT, META_VERSIONS};
use crate::txn::{check_txn_keys, compare_kv};
use crate::types::{
    Command, CompactRequest, DeleteRangeRequest, DeleteRangeResponse, Event, EventKind, KeyValue,
    LeaseCheckpointRequest, LeaseGrantRequest, LeaseRevokeRequest, PutRequest, PutResponse,
    RangeRequest, RangeResponse, RequestOp, Response, ResponseOp, TxnRequest, TxnResponse,
};

/// The answer to one command of an [`Store::apply`] call.
#[derive(Debug)]
pub struct Outcome {
    /// The store's revision once the command was applied: the header revision of its answer.
    pub revision: i64,
    /// The command's answer, or why it left the store unchanged.
    pub result: Result<Response, Refusal>,
}

impl<B: Backend> Store<B> {
    /// Applies `commands` in order, each at the next revision if it changes anything, as one
    /// atomic backend batch that also records `applied`; then publishes their events.
    ///
    /// A command that is refused (e.g. a compaction of a compacted revision) changes nothing and
    /// gets its [`Refusal`] in its [`Outcome`]; the others still apply.
    ///
    /// # Errors
    /// Only fatal ones ([`Error::is_fatal`]): nothing of the batch is applied then.
    pub fn apply(&self, commands: &[Command], applied: Option<&[u8]>) -> Result<Vec<Outcome>> {
        let inner = &*self.inner;
        let mut writer = inner.writer.lock();
        let sink = inner.sink.read().clone();
        let leases = inner.leases.read();
        let reads = inner.backend.pinned()?;
        let publish = sink.as_ref().map_or(Wanted::Nothing, |s| s.wants());
        let mut w = Writer::new(
            &*reads,
            &leases,
            self.current_revision(),
            self.compact_revision(),
            publish,
        );
        w.batch.reserve(commands.len() * 2 + 2);
        let mut outcomes = Vec::with_capacity(commands.len());
        for cmd in commands {
            let result = match w.execute(cmd) {
                Ok(response) => Ok(response),
                Err(Error::Refused(refused)) => Err(refused),
                Err(e) if e.is_fatal() => return Err(e),
                // Not expected of a write, but an answer all the same, the same on every member.
                Err(other) => Err(Refusal::Other(other.to_string())),
            };
            outcomes.push(Outcome {
                revision: w.current,
                result,
            });
        }
        let Writer {
            current,
            compacted,
            base,
            base_compacted,
            mut batch,
            events,
            lease_changes,
            ..
        } = w;
        // Before the write: an engine may hold a lock for the view that its writes wait behind.
        drop(reads);
        drop(leases);
        if current != base {
            batch.put(
                Table::Meta,
                META_CURRENT.to_vec(),
                codec::encode_i64(current),
            );
        }
        if compacted != base_compacted {
            batch.put(
                Table::Meta,
                META_COMPACT.to_vec(),
                codec::encode_i64(compacted),
            );
        }
        let added = batch
            .ops()
            .iter()
            .filter(|op| op.table == Table::Revisions && op.value.is_some())
            .count() as i64;
        let versions = writer.versions + added;
        if added > 0 {
            batch.put(
                Table::Meta,
                META_VERSIONS.to_vec(),
                codec::encode_i64(versions),
            );
        }
        if let Some(position) = applied {
            batch.set_applied(position.to_vec());
        }
        if !batch.is_empty() {
            inner.backend.write(batch)?;
        }
        writer.versions = versions;
        inner.versions.store(versions, Ordering::Release);
        if !lease_changes.is_empty() {
            let mut leases = inner.leases.write();
            for change in lease_changes {
                change.apply(&mut leases);
            }
        }
        inner.current.store(current, Ordering::Release);
        inner.compacted.store(compacted, Ordering::Release);
        match sink {
            Some(sink) if publish == Wanted::Nothing && current != base => sink.skipped(current),
            Some(sink) if !events.is_empty() => {
                sink.publish(events, publish == Wanted::EventsWithPrev);
            }
            _ => {}
        }
        Ok(outcomes)
    }
}

/// The branch each txn and nested txn takes, decided before any op runs, as etcd does.
struct Plan {
    succeeded: bool,
    nested: Vec<Plan>,
}

/// Versions written by this apply call and not yet in the backend, per key.
type Overlay = BTreeMap<Vec<u8>, KeyWrites>;

/// The versions of one key written by this apply call: the newest, and any it replaced (rare:
/// only a later command of the same call writing the key again puts one there).
struct KeyWrites {
    latest: (i64, Option<KeyValue>),
    older: Vec<(i64, Option<KeyValue>)>,
}

impl KeyWrites {
    /// The version visible at `rev`, if this call wrote one at or below it.
    fn at(&self, rev: i64) -> Option<&Option<KeyValue>> {
        if self.latest.0 <= rev {
            return Some(&self.latest.1);
        }
        self.older
            .iter()
            .rev()
            .find(|(main, _)| *main <= rev)
            .map(|(_, kv)| kv)
    }
}

fn record(overlay: &mut Overlay, key: &[u8], main: i64, kv: Option<KeyValue>) {
    match overlay.get_mut(key) {
        Some(p) => {
            let replaced = std::mem::replace(&mut p.latest, (main, kv));
            p.older.push(replaced);
        }
        None => {
            overlay.insert(
                key.to_vec(),
                KeyWrites {
                    latest: (main, kv),
                    older: Vec::new(),
                },
            );
        }
    }
}

/// A change to the lease index, made once the batch that records it is written.
enum LeaseChange {
    Grant {
        id: i64,
        ttl: i64,
    },
    Revoke {
        id: i64,
    },
    Checkpoint {
        id: i64,
        remaining: i64,
    },
    /// `key` moves from lease `from` to lease `to` (0: none).
    Attach {
        key: Vec<u8>,
        from: i64,
        to: i64,
    },
}

impl LeaseChange {
    fn apply(self, index: &mut lease::Index) {
        match self {
            LeaseChange::Grant { id, ttl } => {
                index.insert(
                    id,
                    lease::Entry {
                        ttl,
                        ..Default::default()
                    },
                );
            }
            LeaseChange::Revoke { id } => {
                index.remove(&id);
            }
            LeaseChange::Checkpoint { id, remaining } => {
                if let Some(e) = index.get_mut(&id) {
                    e.remaining = remaining;
                }
            }
            LeaseChange::Attach { key, from, to } => {
                if let Some(e) = index.get_mut(&from) {
                    e.keys.remove(&key);
                }
                if let Some(e) = index.get_mut(&to) {
                    e.keys.insert(key);
                }
            }
        }
    }
}

/// The state of one apply call: what it read, what it will write, what it will publish.
struct Writer<'s> {
    /// One view of the backend for all of the call's lookups.
    reads: &'s (dyn Reads + 's),
    /// The leases as the backend holds them.
    leases: &'s lease::Index,
    /// Leases this call granted (`Some(ttl)`) or revoked (`None`).
    lease_overlay: BTreeMap<i64, Option<i64>>,
    lease_changes: Vec<LeaseChange>,
    /// Revision the backend holds.
    base: i64,
    base_compacted: i64,
    /// Revision including this call's writes so far.
    current: i64,
    compacted: i64,
    overlay: Overlay,
    batch: WriteBatch,
    /// What to build events of: they copy every value, and their previous values are
    /// lookups of their own.
    publish: Wanted,
    events: Vec<Event>,
}

impl<'s> Writer<'s> {
    fn new(
        reads: &'s (dyn Reads + 's),
        leases: &'s lease::Index,
        base: i64,
        base_compacted: i64,
        publish: Wanted,
    ) -> Self {
        Self {
            reads,
            leases,
            lease_overlay: BTreeMap::new(),
            lease_changes: Vec::new(),
            base,
            base_compacted,
            current: base,
            compacted: base_compacted,
            overlay: BTreeMap::new(),
            batch: WriteBatch::new(),
            publish,
            events: Vec::new(),
        }
    }

    fn execute(&mut self, cmd: &Command) -> Result<Response> {
        match cmd {
            Command::Put(req) => {
                self.check_put(req)?;
                let main = self.current + 1;
                let resp = self.put(req, main, 0)?;
                self.current = main;
                Ok(Response::Put(resp))
            }
            Command::DeleteRange(req) => {
                let main = self.current + 1;
                let mut sub = 0;
                let resp = self.delete(req, main, &mut sub)?;
                if sub > 0 {
                    self.current = main;
                }
                Ok(Response::DeleteRange(resp))
            }
            Command::Txn(req) => {
                check_txn_keys(req)?;
                let plan = self.plan(req)?;
                self.check_ops(branch(req, &plan), &plan)?;
                let main = self.current + 1;
                let mut sub = 0;
                let resp = self.run_txn(req, &plan, main, &mut sub)?;
                if sub > 0 {
                    self.current = main;
                }
                Ok(Response::Txn(resp))
            }
            Command::Compact(req) => self.compact(req),
            Command::LeaseGrant(req) => self.grant(req),
            Command::LeaseRevoke(req) => self.revoke(req),
            Command::LeaseCheckpoint(req) => self.checkpoint(req),
            // Consensus keeps the alarms and fills in the answer; the store changes nothing.
            Command::Alarm(_) => Ok(Response::Alarm(Vec::new())),
            // Likewise for auth.
            Command::Auth(_) => Ok(Response::Auth(crate::auth::AuthResponse::Done)),
            // Consensus made the auth check; what is left is the write.
            Command::Guarded { command, .. } => self.execute(command),
        }
    }

    /// The TTL of lease `id` if it exists, counting this call's grants and revokes.
    fn lease_ttl(&self, id: i64) -> Option<i64> {
        match self.lease_overlay.get(&id) {
            Some(state) => *state,
            None => self.leases.get(&id).map(|e| e.ttl),
        }
    }

    fn grant(&mut self, req: &LeaseGrantRequest) -> Result<Response> {
        if self.lease_ttl(req.id).is_some() {
            return Err(Refusal::LeaseExists { id: req.id }.into());
        }
        self.batch.put(
            Table::Meta,
            lease::record_key(req.id),
            lease::encode(req.ttl, 0),
        );
        self.lease_overlay.insert(req.id, Some(req.ttl));
        self.lease_changes.push(LeaseChange::Grant {
            id: req.id,
            ttl: req.ttl,
        });
        Ok(Response::LeaseGrant {
            id: req.id,
            ttl: req.ttl,
        })
    }

    /// The keys attached to lease `id` now, counting this call's writes.
    fn attached(&self, id: i64) -> BTreeSet<Vec<u8>> {
        let mut keys = self
            .leases
            .get(&id)
            .map(|e| e.keys.clone())
            .unwrap_or_default();
        for change in &self.lease_changes {
            match change {
                LeaseChange::Attach { key, from, to } => {
                    if *from == id {
                        keys.remove(key);
                    }
                    if *to == id {
                        keys.insert(key.clone());
                    }
                }
                // A lease revoked and granted again in this call starts with no keys.
                LeaseChange::Grant { id: g, .. } | LeaseChange::Revoke { id: g } if *g == id => {
                    keys.clear();
                }
                _ => {}
            }
        }
        keys
    }

    fn revoke(&mut self, req: &LeaseRevokeRequest) -> Result<Response> {
        if self.lease_ttl(req.id).is_none() {
            return Err(Refusal::LeaseNotFound { id: req.id }.into());
        }
        let main = self.current + 1;
        let mut sub = 0;
        for key in self.attached(req.id) {
            let delete = DeleteRangeRequest {
                key,
                ..Default::default()
            };
            self.delete(&delete, main, &mut sub)?;
        }
        if sub > 0 {
            self.current = main;
        }
        self.batch.delete(Table::Meta, lease::record_key(req.id));
        self.lease_overlay.insert(req.id, None);
        self.lease_changes.push(LeaseChange::Revoke { id: req.id });
        Ok(Response::LeaseRevoke)
    }

    fn checkpoint(&mut self, req: &LeaseCheckpointRequest) -> Result<Response> {
        for &(id, remaining) in &req.checkpoints {
            let Some(ttl) = self.lease_ttl(id) else {
                continue;
            };
            self.batch.put(
                Table::Meta,
                lease::record_key(id),
                lease::encode(ttl, remaining),
            );
            self.lease_changes
                .push(LeaseChange::Checkpoint { id, remaining });
        }
        Ok(Response::LeaseCheckpoint)
    }

    fn compact(&mut self, req: &CompactRequest) -> Result<Response> {
        if req.revision <= self.compacted {
            return Err(Refusal::Compacted {
                requested: req.revision,
                compacted: self.compacted,
            }
            .into());
        }
        if req.revision > self.current {
            return Err(Refusal::FutureRevision {
                requested: req.revision,
                current: self.current,
            }
            .into());
        }
        self.compacted = req.revision;
        Ok(Response::Compact)
    }

    /// The live value of `key` at `rev`, counting this call's writes.
    fn get(&self, key: &[u8], rev: i64) -> Result<Option<KeyValue>> {
        self.get_with(key, rev, true)
    }

    /// [`Writer::get`], reading a stored value only `with_value` (without, it may be empty).
    fn get_with(&self, key: &[u8], rev: i64, with_value: bool) -> Result<Option<KeyValue>> {
        if let Some(kv) = self.overlay.get(key).and_then(|p| p.at(rev)) {
            return Ok(kv.clone());
        }
        read::get_at_with(self.reads, key, rev.min(self.base), with_value)
    }

    /// Calls `f` with each live key-value of `range` at `rev`, counting this call's writes.
    fn visit(&self, range: &KeyRange, rev: i64, f: &mut ItemVisitor<'_>) -> Result<()> {
        if let Some(key) = range.single() {
            if let Some(kv) = self.get(key, rev)? {
                let _ = f(Item::Owned(&kv))?;
            }
            return Ok(());
        }
        let base_rev = rev.min(self.base);
        let pending: Vec<(&Vec<u8>, Option<&KeyValue>)> = self
            .overlay
            .range::<Vec<u8>, _>((Bound::Included(range.start().to_vec()), Bound::Unbounded))
            .take_while(|(k, _)| range.end().is_none_or(|end| k.as_slice() < end))
            .filter_map(|(k, pending)| Some((k, pending.at(rev)?.as_ref())))
            .collect();
        if pending.is_empty() {
            return read::scan_visible(self.reads, range, base_rev, &mut |v| f(Item::Stored(v)));
        }
        // Rare (a txn reading a range it wrote): merge the stored keys with the pending ones.
        let mut stored = Vec::new();
        read::scan_visible(self.reads, range, base_rev, &mut |v| {
            stored.push(v.to_kv(true)?);
            Ok(ControlFlow::Continue(()))
        })?;
        let mut merged: BTreeMap<&[u8], &KeyValue> =
            stored.iter().map(|kv| (kv.key.as_slice(), kv)).collect();
        for (key, kv) in pending {
            match kv {
                Some(kv) => merged.insert(key.as_slice(), kv),
                None => merged.remove(key.as_slice()),
            };
        }
        for kv in merged.into_values() {
            if f(Item::Owned(kv))?.is_break() {
                break;
            }
        }
        Ok(())
    }

    fn check_range(&self, req: &RangeRequest) -> Result<()> {
        if req.revision > self.current {
            return Err(Refusal::FutureRevision {
                requested: req.revision,
                current: self.current,
            }
            .into());
        }
        if req.revision > 0 && req.revision < self.compacted {
            return Err(Refusal::Compacted {
                requested: req.revision,
                compacted: self.compacted,
            }
            .into());
        }
        Ok(())
    }

    /// A range inside a txn: at the request's revision, or at `now` (which sees the txn's writes).
    fn range(&self, req: &RangeRequest, now: i64) -> Result<RangeResponse> {
        let rev = if req.revision <= 0 { now } else { req.revision };
        let range = KeyRange::new(&req.key, &req.range_end);
        build_range(req, &ReadLimits::none(), |f| self.visit(&range, rev, f))
    }

    fn check_put(&self, req: &PutRequest) -> Result<()> {
        if (req.ignore_value || req.ignore_lease)
            && self.get_with(&req.key, self.current, false)?.is_none()
        {
            return Err(Refusal::KeyNotFound {
                key: req.key.clone(),
            }
            .into());
        }
        if req.lease != 0 && !req.ignore_lease && self.lease_ttl(req.lease).is_none() {
            return Err(Refusal::LeaseNotFound { id: req.lease }.into());
        }
        Ok(())
    }

    fn put(&mut self, req: &PutRequest, main: i64, sub: i64) -> Result<PutResponse> {
        // The previous value is read only for whoever sees it: the answer, the event, the put.
        let prev = self.get_with(
            &req.key,
            main,
            req.ignore_value || req.prev_kv || self.publish == Wanted::EventsWithPrev,
        )?;
        let (create_revision, version) = match &prev {
            Some(p) => (p.create_revision, p.version + 1),
            None => (main, 1),
        };
        let value = match (&prev, req.ignore_value) {
            (Some(p), true) => p.value.clone(),
            _ => req.value.clone(),
        };
        let lease = match (&prev, req.ignore_lease) {
            (Some(p), true) => p.lease,
            _ => req.lease,
        };
        let old_lease = prev.as_ref().map_or(0, |p| p.lease);
        if old_lease != lease {
            self.lease_changes.push(LeaseChange::Attach {
                key: req.key.clone(),
                from: old_lease,
                to: lease,
            });
        }
        let kv = KeyValue {
            key: req.key.clone(),
            create_revision,
            mod_revision: main,
            version,
            value,
            lease,
        };
        let (index, stored) = codec::encode_version(&kv.key, &codec::encode_put(sub, &kv))?;
        self.batch
            .put(Table::Keys, codec::version_key(&kv.key, main), index);
        self.batch.put(
            Table::Revisions,
            codec::revision_key(main, sub).to_vec(),
            stored,
        );
        let prev_kv = if req.prev_kv { prev.clone() } else { None };
        if self.publish != Wanted::Nothing {
            self.events.push(Event {
                kind: EventKind::Put,
                kv: kv.clone(),
                prev_kv: prev.filter(|_| self.publish == Wanted::EventsWithPrev),
            });
        }
        record(&mut self.overlay, &req.key, main, Some(kv));
        Ok(PutResponse { prev_kv })
    }

    fn delete(
        &mut self,
        req: &DeleteRangeRequest,
        main: i64,
        sub: &mut i64,
    ) -> Result<DeleteRangeResponse> {
        let range = KeyRange::new(&req.key, &req.range_end);
        let mut doomed = Vec::new();
        // The values deleted are read only for whoever sees them: the answer, the events.
        let with_value = req.prev_kv || self.publish == Wanted::EventsWithPrev;
        self.visit(&range, main, &mut |item| {
            doomed.push(match item {
                Item::Owned(kv) => kv.clone(),
                Item::Stored(v) => v.to_kv(with_value)?,
            });
            Ok(ControlFlow::Continue(()))
        })?;
        let deleted = doomed.len() as i64;
        for prev in &doomed {
            let key = prev.key.clone();
            if prev.lease != 0 {
                self.lease_changes.push(LeaseChange::Attach {
                    key: key.clone(),
                    from: prev.lease,
                    to: 0,
                });
            }
            let (index, stored) = codec::encode_version(&key, &codec::encode_tombstone(*sub))?;
            self.batch
                .put(Table::Keys, codec::version_key(&key, main), index);
            self.batch.put(
                Table::Revisions,
                codec::revision_key(main, *sub).to_vec(),
                stored,
            );
            record(&mut self.overlay, &key, main, None);
            if self.publish != Wanted::Nothing {
                self.events.push(Event {
                    kind: EventKind::Delete,
                    kv: tombstone_kv(key, main),
                    prev_kv: Some(prev.clone()).filter(|_| self.publish == Wanted::EventsWithPrev),
                });
            }
            *sub += 1;
        }
        let prev_kvs = if req.prev_kv { doomed } else { Vec::new() };
        Ok(DeleteRangeResponse { deleted, prev_kvs })
    }

    /// Evaluates every compare on the path the txn will take, against the state before it runs.
    fn plan(&self, txn: &TxnRequest) -> Result<Plan> {
        let mut succeeded = true;
        for cmp in &txn.compare {
            if !self.compare_holds(cmp)? {
                succeeded = false;
                break;
            }
        }
        let ops = if succeeded {
            &txn.success
        } else {
            &txn.failure
        };
        let mut nested = Vec::new();
        for op in ops {
            if let RequestOp::Txn(inner) = op {
                nested.push(self.plan(inner)?);
            }
        }
        Ok(Plan { succeeded, nested })
    }

    fn compare_holds(&self, cmp: &crate::types::Compare) -> Result<bool> {
        let range = KeyRange::new(&cmp.key, &cmp.range_end);
        let mut any = false;
        let mut all = true;
        let with_value = matches!(cmp.target, crate::types::CompareTarget::Value(_));
        self.visit(&range, self.current, &mut |item| {
            any = true;
            let holds = match item {
                Item::Owned(kv) => compare_kv(cmp, kv),
                Item::Stored(v) => compare_kv(cmp, &v.to_kv(with_value)?),
            };
            all &= holds;
            Ok(if holds {
                ControlFlow::Continue(())
            } else {
                ControlFlow::Break(())
            })
        })?;
        if !any {
            // An absent key compares as the zero key-value, except that its value never matches.
            return Ok(!matches!(cmp.target, crate::types::CompareTarget::Value(_))
                && compare_kv(cmp, &KeyValue::default()));
        }
        Ok(all)
    }

    /// Rejects the txn before it writes anything if an op on its path would fail.
    fn check_ops(&self, ops: &[RequestOp], plan: &Plan) -> Result<()> {
        let mut nested = plan.nested.iter();
        for op in ops {
            match op {
                RequestOp::Range(r) => self.check_range(r)?,
                RequestOp::Put(p) => self.check_put(p)?,
                RequestOp::DeleteRange(_) => {}
                RequestOp::Txn(t) => {
                    let Some(p) = nested.next() else {
                        return Err(Error::corrupt("txn plan does not match the txn"));
                    };
                    self.check_ops(branch(t, p), p)?;
                }
            }
        }
        Ok(())
    }

    fn run_txn(
        &mut self,
        txn: &TxnRequest,
        plan: &Plan,
        main: i64,
        sub: &mut i64,
    ) -> Result<TxnResponse> {
        let mut nested = plan.nested.iter();
        let mut responses = Vec::new();
        for op in branch(txn, plan) {
            let resp = match op {
                RequestOp::Range(r) => ResponseOp::Range(self.range(r, main)?),
                RequestOp::Put(p) => {
                    let resp = self.put(p, main, *sub)?;
                    *sub += 1;
                    ResponseOp::Put(resp)
                }
                RequestOp::DeleteRange(d) => ResponseOp::DeleteRange(self.delete(d, main, sub)?),
                RequestOp::Txn(t) => {
                    let Some(p) = nested.next() else {
                        return Err(Error::corrupt("txn plan does not match the txn"));
                    };
                    ResponseOp::Txn(self.run_txn(t, p, main, sub)?)
                }
            };
            responses.push(resp);
        }
        Ok(TxnResponse {
            succeeded: plan.succeeded,
            responses,
        })
    }
}

fn branch<'t>(txn: &'t TxnRequest, plan: &Plan) -> &'t [RequestOp] {
    if plan.succeeded {
        &txn.success
    } else {
        &txn.failure
    }
}
