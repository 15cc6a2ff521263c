//! The MVCC store: its state, reads at any kept revision, events and compaction; applying
//! commands is in `apply`.

use std::collections::BTreeMap;
use std::ops::{Bound, ControlFlow};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::{Mutex, RwLock};

use crate::backend::{Backend, Replacement, Table, WriteBatch};
use crate::codec;
use crate::error::{Error, Refusal, Result};
use crate::keys::KeyRange;
use crate::lease::{self, LeaseInfo};
use crate::read::{self, build_range, Item, ReadLimits};
use crate::snapshot::SnapshotInfo;
use crate::types::{Event, EventKind, KeyValue, RangeRequest, RangeResponse};

pub(crate) const META_CURRENT: &[u8] = b"current";
pub(crate) const META_COMPACT: &[u8] = b"compact";
pub(crate) const META_COMPACT_DONE: &[u8] = b"compact_done";
pub(crate) const META_RESTORING: &[u8] = b"restoring";
/// How many versions (puts and tombstones) the store holds: an operator's view of history.
pub(crate) const META_VERSIONS: &[u8] = b"versions";
/// How far a conversion from layout 1 got: the last `Revisions` key converted.
const META_CONVERTED: &[u8] = b"layout_converted";
/// Bytes of converted versions after which a conversion batch is written.
const CONVERT_BYTES: usize = 32 << 20;

/// The revision of an empty store, as in etcd: the first write is revision 2.
const FIRST_REVISION: i64 = 1;

/// Receives the events of every applied revision, in revision order.
///
/// Called while the store's writer lock is held, so the order is the apply order; it must
/// return quickly and never block (queue, or drop and let the watcher catch up from history).
pub trait EventSink: Send + Sync + 'static {
    /// What the next apply call should build for this sink. Events copy every value, and
    /// their previous key-values are a lookup each, so a sink nobody listens to says so; it
    /// must then cope with what it asked for arriving after a listener came (see
    /// [`EventSink::publish`] and [`EventSink::skipped`]).
    fn wants(&self) -> Wanted {
        Wanted::EventsWithPrev
    }

    /// Takes the events of one apply call, grouped by revision, in revision then sub order;
    /// their `prev_kv` is read (and `None` only where there was none) when `with_prev`, and
    /// left out (`None`) otherwise.
    fn publish(&self, events: Vec<Event>, with_prev: bool);

    /// Revisions up to `through` were applied, and no events built for them, as
    /// [`EventSink::wants`] said nobody wanted any.
    fn skipped(&self, through: i64) {
        let _ = through;
    }
}

/// What an apply call builds for its [`EventSink`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Wanted {
    /// No events: nobody listens.
    Nothing,
    /// Events without their previous key-values.
    Events,
    /// Events with their previous key-values.
    EventsWithPrev,
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
    pub(crate) inner: Arc<Inner<B>>,
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
    pub(crate) current: AtomicI64,
    /// Logical compaction point: reads below it fail.
    pub(crate) compacted: AtomicI64,
    /// Mirrors of the writer's `compact_done` and `versions`, for readers that must not wait.
    compact_done: AtomicI64,
    pub(crate) versions: AtomicI64,
    /// Serializes writers; holds how far physical compaction has got.
    pub(crate) writer: Mutex<WriterState>,
    /// Compaction points of live snapshots, which physical compaction must not pass.
    holds: Mutex<BTreeMap<u64, i64>>,
    next_hold: AtomicU64,
    pub(crate) sink: RwLock<Option<Arc<dyn EventSink>>>,
    /// Held for reading by every read, and for writing while a restore switches the backend
    /// and the revisions above, so no read sees the content of one store with the revisions
    /// of another, nor spans the switch.
    install: RwLock<()>,
    /// How many restores this store has installed: a snapshot streamed across one fails.
    generation: AtomicU64,
    /// Every lease and its attached keys; changed only under the writer lock, after the batch
    /// that records the change is written.
    pub(crate) leases: RwLock<lease::Index>,
    /// Versions physical compaction has removed since the store was opened.
    removed: AtomicU64,
}

pub(crate) struct WriterState {
    compact_done: i64,
    /// Versions stored, kept in `Meta` with every batch that changes it.
    pub(crate) versions: i64,
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
        upgrade_layout(&backend)?;
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
            return Err(Refusal::FutureRevision {
                requested: rev,
                current,
            }
            .into());
        }
        self.still_readable(rev)?;
        Ok(rev)
    }

    /// Fails if compaction has passed `rev`: checked after a read too, since a compaction that
    /// starts during the read may remove versions the read needed.
    fn still_readable(&self, rev: i64) -> Result<()> {
        let compacted = self.compact_revision();
        if rev < compacted {
            return Err(Refusal::Compacted {
                requested: rev,
                compacted,
            }
            .into());
        }
        Ok(())
    }

    /// Answers a range read; returns the answer and the store's current revision (the header).
    ///
    /// # Errors
    /// [`Refusal::Compacted`] or [`Refusal::FutureRevision`] for a revision out of reach.
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
        })
        // A value read after its index entry can be gone when compaction passed `rev`
        // meanwhile: that is the answer then, not a corrupt store.
        .map_err(|e| self.still_readable(rev).err().unwrap_or(e))?;
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
        let touched = revisions_between(
            &inner.backend,
            done + 1,
            target,
            max_versions,
            usize::MAX,
            |raw| Ok(codec::split_stored(raw)?.0.to_vec()),
        )?;
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
    /// [`Refusal::Compacted`] when `from` is below the compaction point.
    pub fn events_since(&self, from: i64, max_events: usize) -> Result<Vec<Event>> {
        self.events_since_within(from, max_events, usize::MAX)
    }

    /// [`Store::events_since`], also stopping before the revision that would take the events
    /// past `max_bytes` of keys and values (previous ones included); the first revision always
    /// comes, whole.
    ///
    /// # Errors
    /// [`Refusal::Compacted`] when `from` is below the compaction point.
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
        // The scan stops where the bytes read pass `max_bytes` too, so a catch-up never holds
        // more history than the answer may carry.
        let found = revisions_between(backend, from, current, max_events, max_bytes, |raw| {
            Ok(raw.to_vec())
        })?;
        let mut events: Vec<Event> = Vec::with_capacity(found.len());
        let mut held = 0usize;
        for (main, raw) in found {
            let boundary = events.last().is_some_and(|e| e.kv.mod_revision != main);
            if boundary && held >= max_bytes {
                break;
            }
            let (key, record) = codec::split_stored(&raw)?;
            let key = key.to_vec();
            // As in a range: a value gone meanwhile means compaction passed `from`.
            let prev_kv = read::get_at(backend, &key, main - 1)
                .map_err(|e| self.still_readable(from).err().unwrap_or(e))?;
            let event = match codec::decode_record(record)?.put {
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

/// Brings a backend to the layout this version writes ([`codec::LAYOUT`]): marks an empty one,
/// converts one written in layout 1.
fn upgrade_layout<B: Backend>(backend: &B) -> Result<()> {
    match backend.get(Table::Meta, codec::META_LAYOUT)? {
        Some(raw) => match codec::decode_i64(&raw, "layout")? {
            codec::LAYOUT => Ok(()),
            other => Err(Error::corrupt(format!(
                "storage layout {other}; this version reads layout {}",
                codec::LAYOUT
            ))),
        },
        None => convert_layout_1(backend),
    }
}

/// Converts layout 1 (the whole record in `Keys`, the user key in `Revisions`) in revision
/// order, [`read::CHUNK`] versions (or 32 MiB of them) per batch. Each batch records how far
/// the conversion got (in `Meta`, with the versions it converts), so a crash between batches
/// resumes where it stopped; the last batch records the new layout. An empty backend gets just
/// that.
fn convert_layout_1<B: Backend>(backend: &B) -> Result<()> {
    let mut from = backend
        .get(Table::Meta, META_CONVERTED)?
        .map_or(Bound::Unbounded, Bound::Excluded);
    let mut converted = 0usize;
    loop {
        // (revisions key, user key) as layout 1 stores them.
        let mut chunk: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
        read::try_scan(
            backend,
            Table::Revisions,
            read::as_ref(&from),
            Bound::Unbounded,
            &mut |k, v| {
                chunk.push((k.to_vec(), v.to_vec()));
                Ok(if chunk.len() >= read::CHUNK {
                    ControlFlow::Break(())
                } else {
                    ControlFlow::Continue(())
                })
            },
        )?;
        let mut batch = WriteBatch::new();
        if chunk.is_empty() {
            batch.put(
                Table::Meta,
                codec::META_LAYOUT.to_vec(),
                codec::encode_i64(codec::LAYOUT),
            );
            batch.delete(Table::Meta, META_CONVERTED.to_vec());
            backend.write(batch)?;
            if converted > 0 {
                tracing::info!(versions = converted, "storage converted to layout 2");
            }
            return Ok(());
        };
        // Records are read a few at a time, and a batch ends early once it holds
        // `CONVERT_BYTES`: large values must not all sit in memory at once.
        let mut bytes = 0usize;
        let mut done = None;
        for group in chunk.chunks(64) {
            let wanted = group
                .iter()
                .map(|(rev_key, key)| {
                    let (main, _) = codec::split_revision_key(rev_key)?;
                    Ok(codec::version_key(key, main))
                })
                .collect::<Result<Vec<_>>>()?;
            let records = backend.get_many(Table::Keys, &wanted)?;
            for (((rev_key, key), version_key), record) in group.iter().zip(wanted).zip(records) {
                let Some(record) = record else {
                    return Err(Error::corrupt("a revisions entry without its version"));
                };
                let (index, stored) = codec::encode_version(key, &record)?;
                bytes += index.len() + stored.len();
                batch.put(Table::Keys, version_key, index);
                batch.put(Table::Revisions, rev_key.clone(), stored);
                converted += 1;
            }
            done = group.last().map(|(rev_key, _)| rev_key.clone());
            if bytes >= CONVERT_BYTES {
                break;
            }
        }
        let Some(done) = done else {
            return Err(Error::corrupt("an empty conversion batch"));
        };
        batch.put(Table::Meta, META_CONVERTED.to_vec(), done.clone());
        backend.write(batch)?;
        from = Bound::Excluded(done);
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

/// The `Revisions` entries (main revision, what `keep` takes of the stored version) from
/// revision `from` to `to`, stopping at the first revision boundary after `max` entries or
/// `max_bytes` of stored versions: a revision's entries are never split.
fn revisions_between<B: Backend, T>(
    backend: &B,
    from: i64,
    to: i64,
    max: usize,
    max_bytes: usize,
    keep: impl Fn(&[u8]) -> Result<T>,
) -> Result<Vec<(i64, T)>> {
    let mut found: Vec<(i64, T)> = Vec::new();
    let mut bytes = 0usize;
    let lo = codec::revision_key(from, 0);
    let hi = codec::revision_key(to, i64::MAX);
    read::try_scan(
        backend,
        Table::Revisions,
        Bound::Included(&lo),
        Bound::Included(&hi),
        &mut |k, v| {
            let (main, _) = codec::split_revision_key(k)?;
            if (found.len() >= max || bytes >= max_bytes) && found.last().map(|f| f.0) != Some(main)
            {
                return Ok(ControlFlow::Break(()));
            }
            bytes = bytes.saturating_add(v.len());
            found.push((main, keep(v)?));
            Ok(ControlFlow::Continue(()))
        },
    )?;
    Ok(found)
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
    read::try_scan(
        backend,
        Table::Keys,
        Bound::Included(&from),
        Bound::Included(&to),
        &mut |k, v| {
            let (_, main) = codec::split_version_key(k)?;
            let rec = codec::decode_record(v)?;
            if !first || rec.put.is_none() {
                batch.delete(Table::Keys, k.to_vec());
                batch.delete(
                    Table::Revisions,
                    codec::revision_key(main, rec.sub).to_vec(),
                );
            }
            first = false;
            Ok(ControlFlow::Continue(()))
        },
    )
}

/// The key-value a delete event carries: the key and the revision of the delete.
pub(crate) fn tombstone_kv(key: Vec<u8>, main: i64) -> KeyValue {
    KeyValue {
        key,
        mod_revision: main,
        ..KeyValue::default()
    }
}
