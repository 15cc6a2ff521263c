//! The MVCC store: applies commands at new revisions and answers reads at any kept revision.

use std::collections::{BTreeMap, BTreeSet};
use std::ops::{Bound, ControlFlow};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::{Mutex, RwLock};

use crate::backend::{Backend, Replacement, Table, WriteBatch};
use crate::codec;
use crate::error::{Error, Result};
use crate::keys::KeyRange;
use crate::lease::{self, LeaseInfo};
use crate::read::{self, build_range, Item, ReadLimits};
use crate::snapshot::SnapshotInfo;
use crate::txn::{check_txn_keys, compare_kv};
use crate::types::{
    Command, CompactRequest, DeleteRangeRequest, DeleteRangeResponse, Event, EventKind, KeyValue,
    LeaseCheckpointRequest, LeaseGrantRequest, LeaseRevokeRequest, PutRequest, PutResponse,
    RangeRequest, RangeResponse, RequestOp, Response, ResponseOp, TxnRequest, TxnResponse,
};

pub(crate) const META_CURRENT: &[u8] = b"current";
pub(crate) const META_COMPACT: &[u8] = b"compact";
pub(crate) const META_COMPACT_DONE: &[u8] = b"compact_done";
pub(crate) const META_RESTORING: &[u8] = b"restoring";
/// How many versions (puts and tombstones) the store holds: an operator's view of history.
pub(crate) const META_VERSIONS: &[u8] = b"versions";

/// The revision of an empty store, as in etcd: the first write is revision 2.
const FIRST_REVISION: i64 = 1;

/// Receives the events of every applied revision, in revision order.
///
/// Called while the store's writer lock is held, so the order is the apply order; it must
/// return quickly and never block (queue, or drop and let the watcher catch up from history).
pub trait EventSink: Send + Sync + 'static {
    /// Takes the events of one apply call, grouped by revision, in revision then sub order.
    fn publish(&self, events: Vec<Event>);
}

/// The answer to one command of an [`Store::apply`] call.
#[derive(Debug)]
pub struct Outcome {
    /// The store's revision once the command was applied: the header revision of its answer.
    pub revision: i64,
    /// The command's answer, or the error that left the store unchanged by it.
    pub result: Result<Response>,
}

/// How far physical compaction has got.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CompactionProgress {
    /// Revisions up to here have had their superseded versions removed.
    pub done: i64,
    /// The compaction point asked for.
    pub target: i64,
}

impl CompactionProgress {
    /// True when nothing is left to remove.
    pub fn finished(&self) -> bool {
        self.done >= self.target
    }
}

/// etcd's multi-version key-value store over a [`Backend`]. Cheap to clone; clones share state.
///
/// Writes go through [`Store::apply`] one call at a time; reads run concurrently with writes
/// and with each other. Compaction is logical at once (reads below the point fail) and
/// physical in bounded steps ([`Store::compact_physical`]) that the layer above schedules.
pub struct Store<B> {
    inner: Arc<Inner<B>>,
}

impl<B> Clone for Store<B> {
    fn clone(&self) -> Self {
        Self {
            inner: Arc::clone(&self.inner),
        }
    }
}

pub(crate) struct Inner<B> {
    pub(crate) backend: B,
    /// Highest revision whose batch the backend holds; published after the batch is written.
    current: AtomicI64,
    /// Logical compaction point: reads below it fail.
    compacted: AtomicI64,
    /// Mirrors of the writer's `compact_done` and `versions`, for readers that must not wait.
    compact_done: AtomicI64,
    versions: AtomicI64,
    /// Serializes writers; holds how far physical compaction has got.
    writer: Mutex<WriterState>,
    /// Compaction points of live snapshots, which physical compaction must not pass.
    holds: Mutex<BTreeMap<u64, i64>>,
    next_hold: AtomicU64,
    sink: RwLock<Option<Arc<dyn EventSink>>>,
    /// Held for reading by every read, and for writing while a restore switches the backend
    /// and the revisions above, so no read sees the content of one store with the revisions
    /// of another, nor spans the switch.
    install: RwLock<()>,
    /// How many restores this store has installed: a snapshot streamed across one fails.
    generation: AtomicU64,
    /// Every lease and its attached keys; changed only under the writer lock, after the batch
    /// that records the change is written.
    leases: RwLock<lease::Index>,
    /// Versions physical compaction has removed since the store was opened.
    removed: AtomicU64,
}

pub(crate) struct WriterState {
    compact_done: i64,
    /// Versions stored, kept in `Meta` with every batch that changes it.
    versions: i64,
}

fn meta_i64<B: Backend>(backend: &B, key: &[u8], default: i64) -> Result<i64> {
    match backend.get(Table::Meta, key)? {
        Some(raw) => codec::decode_i64(&raw, &String::from_utf8_lossy(key)),
        None => Ok(default),
    }
}

impl<B: Backend> Store<B> {
    /// Opens the store kept in `backend` (empty or written by an earlier `Store`).
    ///
    /// # Errors
    /// [`Error::IncompleteRestore`] if a restore was interrupted; backend or decode errors.
    pub fn open(backend: B) -> Result<Self> {
        if backend.get(Table::Meta, META_RESTORING)?.is_some() {
            return Err(Error::IncompleteRestore);
        }
        let current = meta_i64(&backend, META_CURRENT, FIRST_REVISION)?;
        let compacted = meta_i64(&backend, META_COMPACT, 0)?;
        let compact_done = meta_i64(&backend, META_COMPACT_DONE, 0)?;
        let versions = match backend.get(Table::Meta, META_VERSIONS)? {
            Some(raw) => codec::decode_i64(&raw, "versions")?,
            // A store written before the count was kept: count once; the next batch records it.
            None => count_versions(&backend)?,
        };
        let leases = lease::load(&backend, current)?;
        tracing::debug!(
            current,
            compacted,
            compact_done,
            versions,
            leases = leases.len(),
            "mvcc store opened"
        );
        Ok(Self {
            inner: Arc::new(Inner {
                backend,
                current: AtomicI64::new(current),
                compacted: AtomicI64::new(compacted),
                compact_done: AtomicI64::new(compact_done),
                versions: AtomicI64::new(versions),
                writer: Mutex::new(WriterState {
                    compact_done,
                    versions,
                }),
                holds: Mutex::new(BTreeMap::new()),
                next_hold: AtomicU64::new(0),
                sink: RwLock::new(None),
                install: RwLock::new(()),
                generation: AtomicU64::new(0),
                leases: RwLock::new(leases),
                removed: AtomicU64::new(0),
            }),
        })
    }

    /// The engine underneath.
    pub fn backend(&self) -> &B {
        &self.inner.backend
    }

    /// The store's current revision.
    pub fn current_revision(&self) -> i64 {
        self.inner.current.load(Ordering::Acquire)
    }

    /// The compaction point: reads and watches below it fail.
    pub fn compact_revision(&self) -> i64 {
        self.inner.compacted.load(Ordering::Acquire)
    }

    /// How many versions (puts and tombstones, of every key) the store holds now; drops as
    /// physical compaction removes what compaction made unreachable.
    pub fn versions(&self) -> i64 {
        self.inner.versions.load(Ordering::Acquire)
    }

    /// How many versions physical compaction has removed since the store was opened (etcd's
    /// `etcd_debugging_mvcc_db_compaction_keys_total`).
    pub fn versions_removed(&self) -> u64 {
        self.inner.removed.load(Ordering::Relaxed)
    }

    /// How far physical compaction has got towards the compaction point.
    pub fn compaction_progress(&self) -> CompactionProgress {
        CompactionProgress {
            done: self.inner.compact_done.load(Ordering::Acquire),
            target: self.compact_revision(),
        }
    }

    /// The applied position recorded with the last batch that carried one.
    ///
    /// # Errors
    /// Backend errors.
    pub fn applied(&self) -> Result<Option<Vec<u8>>> {
        Ok(self.inner.backend.applied()?)
    }

    /// Sends the events of every later apply to `sink`, replacing any earlier sink.
    pub fn set_sink(&self, sink: Arc<dyn EventSink>) {
        *self.inner.sink.write() = Some(sink);
    }

    /// Checks that `rev` (0 or less for the current one) can be read, and returns it.
    fn readable(&self, rev: i64) -> Result<i64> {
        let current = self.current_revision();
        let rev = if rev <= 0 { current } else { rev };
        if rev > current {
            return Err(Error::FutureRevision {
                requested: rev,
                current,
            });
        }
        self.still_readable(rev)?;
        Ok(rev)
    }

    /// Fails if compaction has passed `rev`: checked after a read too, since a compaction that
    /// starts during the read may remove versions the read needed.
    fn still_readable(&self, rev: i64) -> Result<()> {
        let compacted = self.compact_revision();
        if rev < compacted {
            return Err(Error::Compacted {
                requested: rev,
                compacted,
            });
        }
        Ok(())
    }

    /// Answers a range read; returns the answer and the store's current revision (the header).
    ///
    /// # Errors
    /// [`Error::Compacted`] or [`Error::FutureRevision`] for a revision out of reach.
    pub fn range(&self, req: &RangeRequest) -> Result<(RangeResponse, i64)> {
        self.range_within(req, &ReadLimits::none())
    }

    /// [`Store::range`] within `limits`: the scan asks `limits.stop` between chunks, and the
    /// answer holds at most `limits.max_bytes`. Long scans belong off async workers.
    ///
    /// # Errors
    /// As [`Store::range`]; [`Error::Stopped`] when `limits.stop` said so, [`Error::TooLarge`]
    /// when the answer would be over the byte limit.
    pub fn range_within(
        &self,
        req: &RangeRequest,
        limits: &ReadLimits<'_>,
    ) -> Result<(RangeResponse, i64)> {
        let _installed = self.inner.install.read();
        let header = self.current_revision();
        let rev = self.readable(req.revision)?;
        let range = KeyRange::new(&req.key, &req.range_end);
        let resp = build_range(req, limits, |f| {
            read::scan_visible_until(&self.inner.backend, &range, rev, limits.stop, &mut |v| {
                f(Item::Stored(v))
            })
        })?;
        self.still_readable(rev)?;
        Ok((resp, header.max(rev)))
    }

    /// The live value of `key` at the current revision.
    ///
    /// # Errors
    /// Backend errors.
    pub fn get(&self, key: &[u8]) -> Result<Option<KeyValue>> {
        let _installed = self.inner.install.read();
        read::get_at(&self.inner.backend, key, self.current_revision())
    }

    /// The lease `id` with its attached keys, if it exists.
    pub fn lease(&self, id: i64) -> Option<LeaseInfo> {
        self.inner.leases.read().get(&id).map(|e| LeaseInfo {
            id,
            ttl: e.ttl,
            remaining: e.remaining,
            keys: e.keys.iter().cloned().collect(),
        })
    }

    /// Every lease (without its keys), in id order.
    pub fn leases(&self) -> Vec<LeaseInfo> {
        let mut all: Vec<LeaseInfo> = self
            .inner
            .leases
            .read()
            .iter()
            .map(|(id, e)| LeaseInfo {
                id: *id,
                ttl: e.ttl,
                remaining: e.remaining,
                keys: Vec::new(),
            })
            .collect();
        all.sort_unstable_by_key(|l| l.id);
        all
    }

    /// Applies `commands` in order, each at the next revision if it changes anything, as one
    /// atomic backend batch that also records `applied`; then publishes their events.
    ///
    /// A command that fails (e.g. a compaction of a compacted revision) changes nothing and gets
    /// its error in its [`Outcome`]; the others still apply.
    ///
    /// # Errors
    /// Only fatal ones ([`Error::is_fatal`]): nothing of the batch is applied then.
    pub fn apply(&self, commands: &[Command], applied: Option<&[u8]>) -> Result<Vec<Outcome>> {
        let inner = &*self.inner;
        let mut writer = inner.writer.lock();
        let sink = inner.sink.read().clone();
        let leases = inner.leases.read();
        let mut w = Writer::new(
            inner,
            &leases,
            self.current_revision(),
            self.compact_revision(),
            sink.is_some(),
        );
        w.batch.reserve(commands.len() * 2 + 2);
        let mut outcomes = Vec::with_capacity(commands.len());
        for cmd in commands {
            let result = match w.execute(cmd) {
                Err(e) if e.is_fatal() => return Err(e),
                other => other,
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
        if let Some(sink) = sink.filter(|_| !events.is_empty()) {
            sink.publish(events);
        }
        Ok(outcomes)
    }

    /// Removes up to about `max_versions` versions that compaction made unreachable, in one
    /// batch, and reports progress. Never passes the compaction point of a live snapshot.
    ///
    /// # Errors
    /// Backend errors.
    pub fn compact_physical(&self, max_versions: usize) -> Result<CompactionProgress> {
        let inner = &*self.inner;
        let mut writer = inner.writer.lock();
        let mut target = self.compact_revision();
        if let Some(held) = inner.holds.lock().values().min() {
            target = target.min(*held);
        }
        let done = writer.compact_done;
        if done >= target {
            return Ok(CompactionProgress {
                done,
                target: self.compact_revision(),
            });
        }
        // Revisions in (done, target], whole revisions at a time so `done` is exact.
        let max_versions = max_versions.max(1);
        let touched = revisions_between(&inner.backend, done + 1, target, max_versions)?;
        let new_done = if touched.len() >= max_versions {
            touched.last().map_or(target, |t| t.0)
        } else {
            target
        };
        let mut keys: Vec<Vec<u8>> = touched.into_iter().map(|(_, key)| key).collect();
        keys.sort_unstable();
        keys.dedup();
        let mut batch = WriteBatch::new();
        for key in &keys {
            trim_key(&inner.backend, key, target, &mut batch)?;
        }
        batch.put(
            Table::Meta,
            META_COMPACT_DONE.to_vec(),
            codec::encode_i64(new_done),
        );
        let removed = batch
            .ops()
            .iter()
            .filter(|op| op.table == Table::Revisions && op.value.is_none())
            .count() as i64;
        let versions = writer.versions - removed;
        batch.put(
            Table::Meta,
            META_VERSIONS.to_vec(),
            codec::encode_i64(versions),
        );
        inner.backend.write(batch)?;
        writer.compact_done = new_done;
        writer.versions = versions;
        inner.compact_done.store(new_done, Ordering::Release);
        inner.versions.store(versions, Ordering::Release);
        inner
            .removed
            .fetch_add(u64::try_from(removed).unwrap_or(0), Ordering::Relaxed);
        Ok(CompactionProgress {
            done: new_done,
            target: self.compact_revision(),
        })
    }

    /// Runs physical compaction until it catches up with the compaction point (or a snapshot's).
    ///
    /// # Errors
    /// Backend errors.
    pub fn finish_compaction(&self) -> Result<CompactionProgress> {
        loop {
            let before = self.inner.writer.lock().compact_done;
            let progress = self.compact_physical(read::CHUNK)?;
            if progress.finished() || progress.done == before {
                return Ok(progress);
            }
        }
    }

    /// The events of revisions `from` and later, in order, stopping at the first revision
    /// boundary after `max_events` (a revision's events are never split).
    ///
    /// # Errors
    /// [`Error::Compacted`] when `from` is below the compaction point.
    pub fn events_since(&self, from: i64, max_events: usize) -> Result<Vec<Event>> {
        self.events_since_within(from, max_events, usize::MAX)
    }

    /// [`Store::events_since`], also stopping before the revision that would take the events
    /// past `max_bytes` of keys and values (previous ones included); the first revision always
    /// comes, whole.
    ///
    /// # Errors
    /// [`Error::Compacted`] when `from` is below the compaction point.
    pub fn events_since_within(
        &self,
        from: i64,
        max_events: usize,
        max_bytes: usize,
    ) -> Result<Vec<Event>> {
        let _installed = self.inner.install.read();
        let current = self.current_revision();
        let from = from.max(1);
        self.still_readable(from)?;
        if from > current {
            return Ok(Vec::new());
        }
        let backend = &self.inner.backend;
        let found = revisions_between(backend, from, current, max_events)?;
        let mut events: Vec<Event> = Vec::with_capacity(found.len());
        let mut held = 0usize;
        for (main, key) in found {
            let boundary = events.last().is_some_and(|e| e.kv.mod_revision != main);
            if boundary && held >= max_bytes {
                break;
            }
            let Some(raw) = backend.get(Table::Keys, &codec::version_key(&key, main))? else {
                // Physical compaction removed it after we listed it: a tombstone at the
                // compaction point goes, which etcd's history at that point lacks too.
                self.still_readable(from)?;
                if main <= self.compact_revision() {
                    continue;
                }
                return Err(Error::corrupt(format!(
                    "revision {main} indexed but not stored"
                )));
            };
            let prev_kv = read::get_at(backend, &key, main - 1)?;
            let event = match codec::decode_record(&raw)?.put {
                Some(put) => Event {
                    kind: EventKind::Put,
                    kv: put.to_kv(key, main),
                    prev_kv,
                },
                None => Event {
                    kind: EventKind::Delete,
                    kv: tombstone_kv(key, main),
                    prev_kv,
                },
            };
            let bytes = event.kv.key.len()
                + event.kv.value.len()
                + event
                    .prev_kv
                    .as_ref()
                    .map_or(0, |p| p.key.len() + p.value.len());
            if boundary && held.saturating_add(bytes) > max_bytes {
                break;
            }
            held = held.saturating_add(bytes);
            events.push(event);
        }
        self.still_readable(from)?;
        Ok(events)
    }

    /// Registers a snapshot's compaction point so physical compaction does not pass it.
    pub(crate) fn hold(&self, compacted: i64) -> Hold<B> {
        let id = self.inner.next_hold.fetch_add(1, Ordering::Relaxed);
        self.inner.holds.lock().insert(id, compacted);
        Hold {
            store: self.clone(),
            id,
        }
    }

    /// Reads the store's revision, compaction point and applied position together, and holds
    /// physical compaction at that point; under the writer lock, so nothing moves in between.
    /// Also returns every lease record then, as (id, ttl, remaining).
    /// Also returns how many restores the store has installed (none can run meanwhile).
    pub(crate) fn snapshot_point(&self) -> Result<(SnapshotInfo, Hold<B>, Vec<LeaseRecord>, u64)> {
        let _writer = self.inner.writer.lock();
        let generation = self.inner.generation.load(Ordering::Acquire);
        let compacted = self.compact_revision();
        let applied = self.inner.backend.applied()?;
        let info = SnapshotInfo {
            revision: self.current_revision(),
            compacted,
            applied,
        };
        let mut leases: Vec<LeaseRecord> = self
            .inner
            .leases
            .read()
            .iter()
            .map(|(id, e)| (*id, e.ttl, e.remaining))
            .collect();
        leases.sort_unstable();
        Ok((info, self.hold(compacted), leases, generation))
    }

    /// Switches the backend to `replacement` and the store to its revisions, all at once for
    /// readers (they wait for the switch); the caller holds the writer lock, so no write
    /// comes in between.
    pub(crate) fn install(
        &self,
        writer: &mut WriterState,
        replacement: Box<dyn Replacement + '_>,
        current: i64,
        compacted: i64,
        versions: i64,
    ) -> Result<()> {
        let inner = &*self.inner;
        let _installing = inner.install.write();
        replacement.commit()?;
        writer.compact_done = compacted;
        writer.versions = versions;
        inner.compact_done.store(compacted, Ordering::Release);
        inner.versions.store(versions, Ordering::Release);
        inner.current.store(current, Ordering::Release);
        inner.compacted.store(compacted, Ordering::Release);
        inner.generation.fetch_add(1, Ordering::AcqRel);
        let leases = lease::load(&inner.backend, current)?;
        *inner.leases.write() = leases;
        Ok(())
    }

    /// Locks out writers for the duration of a restore.
    pub(crate) fn lock_writer(&self) -> parking_lot::MutexGuard<'_, WriterState> {
        self.inner.writer.lock()
    }

    /// Holds off restores while a read spans several backend calls; with the number of
    /// restores installed so far.
    pub(crate) fn read_installed(&self) -> (parking_lot::RwLockReadGuard<'_, ()>, u64) {
        let guard = self.inner.install.read();
        (guard, self.inner.generation.load(Ordering::Acquire))
    }
}

/// Counts the `Revisions` table: one entry per stored version.
fn count_versions<B: Backend>(backend: &B) -> Result<i64> {
    let mut n = 0i64;
    backend.scan(
        Table::Revisions,
        Bound::Unbounded,
        Bound::Unbounded,
        &mut |_, _| {
            n += 1;
            ControlFlow::Continue(())
        },
    )?;
    Ok(n)
}

/// A lease record as snapshots carry it: (id, ttl, remaining).
pub(crate) type LeaseRecord = (i64, i64, i64);

/// Keeps physical compaction behind a snapshot's compaction point while it lives.
pub(crate) struct Hold<B> {
    store: Store<B>,
    id: u64,
}

impl<B> Drop for Hold<B> {
    fn drop(&mut self) {
        self.store.inner.holds.lock().remove(&self.id);
    }
}

/// The `Revisions` entries (main revision, key) from revision `from` to `to`, stopping at the
/// first revision boundary after `max` entries: a revision's entries are never split.
fn revisions_between<B: Backend>(
    backend: &B,
    from: i64,
    to: i64,
    max: usize,
) -> Result<Vec<(i64, Vec<u8>)>> {
    let mut found: Vec<(i64, Vec<u8>)> = Vec::new();
    let mut failure = None;
    let lo = codec::revision_key(from, 0);
    let hi = codec::revision_key(to, i64::MAX);
    backend.scan(
        Table::Revisions,
        Bound::Included(&lo),
        Bound::Included(&hi),
        &mut |k, v| match codec::split_revision_key(k) {
            Ok((main, _)) => {
                if found.len() >= max && found.last().map(|f| f.0) != Some(main) {
                    return ControlFlow::Break(());
                }
                found.push((main, v.to_vec()));
                ControlFlow::Continue(())
            }
            Err(e) => {
                failure = Some(e);
                ControlFlow::Break(())
            }
        },
    )?;
    failure.map_or(Ok(found), Err)
}

/// Removes the versions of `key` that compaction at `target` made unreachable: all but the
/// newest at or below `target`, and that one too if it is a tombstone.
fn trim_key<B: Backend>(
    backend: &B,
    key: &[u8],
    target: i64,
    batch: &mut WriteBatch,
) -> Result<()> {
    let from = codec::version_key(key, target);
    let mut to = codec::group(key);
    to.extend_from_slice(&[0xff; codec::REV_LEN]);
    let mut first = true;
    let mut failure = None;
    backend.scan(
        Table::Keys,
        Bound::Included(&from),
        Bound::Included(&to),
        &mut |k, v| {
            let parsed = codec::split_version_key(k).and_then(|(_, main)| {
                codec::decode_record(v).map(|rec| (main, rec.sub, rec.put.is_none()))
            });
            match parsed {
                Ok((main, sub, tombstone)) => {
                    if !first || tombstone {
                        batch.delete(Table::Keys, k.to_vec());
                        batch.delete(Table::Revisions, codec::revision_key(main, sub).to_vec());
                    }
                    first = false;
                    ControlFlow::Continue(())
                }
                Err(e) => {
                    failure = Some(e);
                    ControlFlow::Break(())
                }
            }
        },
    )?;
    failure.map_or(Ok(()), Err)
}

/// The key-value a delete event carries: the key and the revision of the delete.
fn tombstone_kv(key: Vec<u8>, main: i64) -> KeyValue {
    KeyValue {
        key,
        mod_revision: main,
        ..KeyValue::default()
    }
}

/// The branch each txn and nested txn takes, decided before any op runs, as etcd does.
struct Plan {
    succeeded: bool,
    nested: Vec<Plan>,
}

/// Versions written by this apply call and not yet in the backend, per key.
type Overlay = BTreeMap<Vec<u8>, Pending>;

/// The versions of one key written by this apply call: the newest, and any it replaced (rare:
/// only a later command of the same call writing the key again puts one there).
struct Pending {
    latest: (i64, Option<KeyValue>),
    older: Vec<(i64, Option<KeyValue>)>,
}

impl Pending {
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
                Pending {
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
struct Writer<'s, B> {
    backend: &'s B,
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
    /// Events are built only when someone listens: they copy every value.
    publish: bool,
    events: Vec<Event>,
}

impl<'s, B: Backend> Writer<'s, B> {
    fn new(
        inner: &'s Inner<B>,
        leases: &'s lease::Index,
        base: i64,
        base_compacted: i64,
        publish: bool,
    ) -> Self {
        Self {
            backend: &inner.backend,
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
            return Err(Error::LeaseExists { id: req.id });
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
            return Err(Error::LeaseNotFound { id: req.id });
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
            return Err(Error::Compacted {
                requested: req.revision,
                compacted: self.compacted,
            });
        }
        if req.revision > self.current {
            return Err(Error::FutureRevision {
                requested: req.revision,
                current: self.current,
            });
        }
        self.compacted = req.revision;
        Ok(Response::Compact)
    }

    /// The live value of `key` at `rev`, counting this call's writes.
    fn get(&self, key: &[u8], rev: i64) -> Result<Option<KeyValue>> {
        if let Some(kv) = self.overlay.get(key).and_then(|p| p.at(rev)) {
            return Ok(kv.clone());
        }
        read::get_at(self.backend, key, rev.min(self.base))
    }

    /// Calls `f` with each live key-value of `range` at `rev`, counting this call's writes.
    fn visit(
        &self,
        range: &KeyRange,
        rev: i64,
        f: &mut dyn FnMut(Item<'_>) -> ControlFlow<()>,
    ) -> Result<()> {
        if let Some(key) = range.single() {
            if let Some(kv) = self.get(key, rev)? {
                let _ = f(Item::Owned(&kv));
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
            return read::scan_visible(self.backend, range, base_rev, &mut |v| f(Item::Stored(v)));
        }
        // Rare (a txn reading a range it wrote): merge the stored keys with the pending ones.
        let mut stored = Vec::new();
        let mut failure = None;
        read::scan_visible(
            self.backend,
            range,
            base_rev,
            &mut |v| match v.to_kv(true) {
                Ok(kv) => {
                    stored.push(kv);
                    ControlFlow::Continue(())
                }
                Err(e) => {
                    failure = Some(e);
                    ControlFlow::Break(())
                }
            },
        )?;
        if let Some(e) = failure {
            return Err(e);
        }
        let mut merged: BTreeMap<&[u8], &KeyValue> =
            stored.iter().map(|kv| (kv.key.as_slice(), kv)).collect();
        for (key, kv) in pending {
            match kv {
                Some(kv) => merged.insert(key.as_slice(), kv),
                None => merged.remove(key.as_slice()),
            };
        }
        for kv in merged.into_values() {
            if f(Item::Owned(kv)).is_break() {
                break;
            }
        }
        Ok(())
    }

    fn check_range(&self, req: &RangeRequest) -> Result<()> {
        if req.revision > self.current {
            return Err(Error::FutureRevision {
                requested: req.revision,
                current: self.current,
            });
        }
        if req.revision > 0 && req.revision < self.compacted {
            return Err(Error::Compacted {
                requested: req.revision,
                compacted: self.compacted,
            });
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
        if (req.ignore_value || req.ignore_lease) && self.get(&req.key, self.current)?.is_none() {
            return Err(Error::KeyNotFound {
                key: req.key.clone(),
            });
        }
        if req.lease != 0 && !req.ignore_lease && self.lease_ttl(req.lease).is_none() {
            return Err(Error::LeaseNotFound { id: req.lease });
        }
        Ok(())
    }

    fn put(&mut self, req: &PutRequest, main: i64, sub: i64) -> Result<PutResponse> {
        let prev = self.get(&req.key, main)?;
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
        self.batch.put(
            Table::Keys,
            codec::version_key(&kv.key, main),
            codec::encode_put(sub, &kv),
        );
        self.batch.put(
            Table::Revisions,
            codec::revision_key(main, sub).to_vec(),
            kv.key.clone(),
        );
        let prev_kv = if req.prev_kv { prev.clone() } else { None };
        if self.publish {
            self.events.push(Event {
                kind: EventKind::Put,
                kv: kv.clone(),
                prev_kv: prev,
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
        let mut failure = None;
        self.visit(&range, main, &mut |item| {
            let kv = match item {
                Item::Owned(kv) => Ok(kv.clone()),
                Item::Stored(v) => v.to_kv(true),
            };
            match kv {
                Ok(kv) => {
                    doomed.push(kv);
                    ControlFlow::Continue(())
                }
                Err(e) => {
                    failure = Some(e);
                    ControlFlow::Break(())
                }
            }
        })?;
        if let Some(e) = failure {
            return Err(e);
        }
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
            self.batch.put(
                Table::Keys,
                codec::version_key(&key, main),
                codec::encode_tombstone(*sub),
            );
            self.batch.put(
                Table::Revisions,
                codec::revision_key(main, *sub).to_vec(),
                key.clone(),
            );
            record(&mut self.overlay, &key, main, None);
            if self.publish {
                self.events.push(Event {
                    kind: EventKind::Delete,
                    kv: tombstone_kv(key, main),
                    prev_kv: Some(prev.clone()),
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
        let mut failure = None;
        self.visit(&range, self.current, &mut |item| {
            any = true;
            let holds = match item {
                Item::Owned(kv) => compare_kv(cmp, kv),
                Item::Stored(v) => match v.to_kv(true) {
                    Ok(kv) => compare_kv(cmp, &kv),
                    Err(e) => {
                        failure = Some(e);
                        return ControlFlow::Break(());
                    }
                },
            };
            all &= holds;
            if holds {
                ControlFlow::Continue(())
            } else {
                ControlFlow::Break(())
            }
        })?;
        if let Some(e) = failure {
            return Err(e);
        }
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
