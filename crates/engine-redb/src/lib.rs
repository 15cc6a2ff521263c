//! A persistent [`mvcc::Backend`] on redb, a copy-on-write B-tree in one file.
//!
//! It owns the database file: one redb table per [`mvcc::Table`] plus one for the applied
//! position, each [`mvcc::WriteBatch`] committed as one redb write transaction. It knows nothing
//! of revisions or Raft. A commit is atomic, so after `kill -9` the reopened file holds a prefix
//! of the batches, each whole.
//!
//! Durability is a choice ([`Durability`]): `EveryBatch` fsyncs each commit; `Lazy` buffers
//! batches in memory, commits them together without fsync as [`Batching`] says, and is made
//! durable by [`mvcc::Backend::flush`] or the next synced commit. `Lazy` suits a store whose
//! Raft log is the durable source of truth: after a crash the engine is at some earlier batch
//! boundary and the log replays the rest from [`RedbBackend`]'s applied position.
//!
//! A restore ([`mvcc::Backend::replace`]) is one write transaction that empties every table and
//! refills it, committed with fsync whatever the durability: readers and a reopened file see the
//! old content until it commits and the new content after.
//!
//! # Layout
//! - `lib.rs`: [`RedbBackend`], [`Options`], [`Durability`].
//! - `pending.rs`: the `Lazy` buffer of batches not yet committed, and [`Batching`].

mod pending;

use std::ops::{Bound, ControlFlow};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use mvcc::{
    is_empty_interval, Backend, BackendError, BatchOp, Reads, Replacement, Table, Visitor,
    WriteBatch,
};
use parking_lot::RwLock;
use redb::{ReadableDatabase, TableDefinition};

pub use pending::Batching;
use pending::{Buffer, Cursor, Generation, View};

type Def = TableDefinition<'static, &'static [u8], &'static [u8]>;

const KEYS: Def = TableDefinition::new("keys");
const REVISIONS: Def = TableDefinition::new("revisions");
const META: Def = TableDefinition::new("meta");
/// The engine's own table, so the applied position never collides with the store's keys.
const ENGINE: Def = TableDefinition::new("engine");
const APPLIED: &[u8] = b"applied";

fn def(table: Table) -> Def {
    match table {
        Table::Keys => KEYS,
        Table::Revisions => REVISIONS,
        Table::Meta => META,
    }
}

/// When a committed batch reaches the disk.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Durability {
    /// Each batch is fsynced before `write` returns.
    #[default]
    EveryBatch,
    /// Batches are buffered and committed together ([`Options::batching`]), fsynced only by
    /// `flush` (or a later synced commit); a crash loses the tail.
    Lazy,
}

/// How to open the engine.
#[derive(Clone, Debug)]
pub struct Options {
    /// When batches reach the disk.
    pub durability: Durability,
    /// Bytes of redb page cache.
    pub cache_bytes: usize,
    /// With `Lazy`, how long batches are buffered before they are committed together.
    pub batching: Batching,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            durability: Durability::EveryBatch,
            cache_bytes: 256 << 20,
            batching: Batching::default(),
        }
    }
}

/// The redb engine.
pub struct RedbBackend {
    core: Arc<Core>,
    durability: Durability,
    /// The database file, which a defragment replaces with a rewritten copy.
    path: PathBuf,
    cache_bytes: usize,
    batching: Batching,
    /// Wakes the committer thread (`Lazy` with batching only); dropped to stop it.
    wake: Option<mpsc::SyncSender<()>>,
    committer: Option<std::thread::JoinHandle<()>>,
}

/// What the writers, the readers and the committer thread share.
struct Core {
    /// Every transaction is begun and ended under the read side; [`Backend::defragment`] takes
    /// the write side, because redb compacts only a database with no transaction open. The read
    /// side is taken recursively: a reader that nested a second read behind a waiting
    /// defragment would otherwise deadlock; a defragment waits for a gap between readers.
    db: RwLock<redb::Database>,
    /// The batches written and not yet committed (`Lazy` only; always empty otherwise).
    buffer: Buffer,
    /// Held by every write (and by the committer when it seals an idle buffer), so batches
    /// reach the buffer in the order they were written and never a sealed one.
    writer: parking_lot::Mutex<()>,
    /// Held by each commit of buffered batches, so they reach redb in the order written.
    commit: parking_lot::Mutex<()>,
    durability: Durability,
    size: DiskSize,
    /// When the last commit reached the disk (for `Lazy`).
    last_sync: parking_lot::Mutex<Instant>,
}

/// The engine file's size as etcd's quota and Status count it, readable without the engine.
///
/// The pages written to the file (its allocated blocks: redb extends the file ahead of use and
/// leaves the new part a hole) plus the bytes committed since the last commit that reached the
/// disk, which redb may still hold in memory, and the batches buffered before their commit.
/// etcd counts bbolt's high-water page mark the same way: pages freed inside the file still
/// count until a defragment.
///
/// The file's part is measured when the file can have changed (opened, committed to,
/// defragmented), not at each reading: every write checks the quota, and a `stat` of the path
/// per write cost 3 % of a member's CPU under load.
#[derive(Clone, Debug)]
pub struct DiskSize {
    path: PathBuf,
    /// [`disk_bytes`] of the file when it last changed.
    file: Arc<AtomicU64>,
    unsynced: Arc<AtomicU64>,
}

impl DiskSize {
    fn new(path: &Path) -> Self {
        let size = Self {
            path: path.to_path_buf(),
            file: Arc::new(AtomicU64::new(0)),
            unsynced: Arc::new(AtomicU64::new(0)),
        };
        size.measure();
        size
    }

    /// The size in bytes; what cannot be read counts as 0.
    pub fn bytes(&self) -> u64 {
        self.file
            .load(Ordering::Relaxed)
            .saturating_add(self.unsynced.load(Ordering::Relaxed))
    }

    /// Reads the file's size again, after something may have changed it.
    fn measure(&self) {
        self.file.store(disk_bytes(&self.path), Ordering::Relaxed);
    }
}

fn io(op: &'static str, table: Option<Table>) -> impl Fn(&dyn std::fmt::Display) -> BackendError {
    move |e| BackendError::Io {
        op,
        table,
        cause: e.to_string(),
    }
}

impl RedbBackend {
    /// Opens (or creates) the database file at `path`, recovering it after a crash if needed.
    ///
    /// # Errors
    /// [`BackendError::Open`] when the file cannot be opened or created, or its committer
    /// thread cannot be started.
    pub fn open(path: impl AsRef<Path>, options: &Options) -> Result<Self, BackendError> {
        let path = path.as_ref();
        // What a defragment cut short left behind: the file it names is complete or untouched.
        let rewrite = rewrite_path(path);
        if rewrite.exists() {
            mvcc::durable::remove_synced(&rewrite)
                .map_err(|e| BackendError::Open(format!("{}: {e}", rewrite.display())))?;
        }
        let db = open_file(path, options.cache_bytes)?;
        let txn = db
            .begin_write()
            .map_err(|e| BackendError::Open(e.to_string()))?;
        for d in [KEYS, REVISIONS, META, ENGINE] {
            txn.open_table(d)
                .map_err(|e| BackendError::Open(e.to_string()))?;
        }
        txn.commit()
            .map_err(|e| BackendError::Open(e.to_string()))?;
        // redb may just have created the file: its name is durable only once the directory is.
        mvcc::durable::sync_parent(path)
            .map_err(|e| BackendError::Open(format!("{}: {e}", path.display())))?;
        tracing::debug!(path = %path.display(), ?options, "redb engine opened");
        let core = Arc::new(Core {
            db: RwLock::new(db),
            buffer: Buffer::default(),
            writer: parking_lot::Mutex::new(()),
            commit: parking_lot::Mutex::new(()),
            durability: options.durability,
            size: DiskSize::new(path),
            last_sync: parking_lot::Mutex::new(Instant::now()),
        });
        let buffers = options.durability == Durability::Lazy && options.batching != Batching::NONE;
        let (wake, committer) = if buffers {
            // One wake-up pending at most: the committer takes whatever is sealed when it runs.
            let (wake, woken) = mpsc::sync_channel(1);
            let shared = Arc::clone(&core);
            let max_age = options.batching.max_age;
            let thread = std::thread::Builder::new()
                .name("redb-commit".into())
                .spawn(move || commit_sealed(&shared, &woken, max_age))
                .map_err(|e| BackendError::Open(format!("starting the committer: {e}")))?;
            (Some(wake), Some(thread))
        } else {
            (None, None)
        };
        Ok(Self {
            core,
            durability: options.durability,
            path: path.to_path_buf(),
            cache_bytes: options.cache_bytes,
            batching: options.batching,
            wake,
            committer,
        })
    }

    /// A handle on the file's size that outlives borrows of the engine (for Status and the
    /// quota).
    pub fn disk_size(&self) -> DiskSize {
        self.core.size.clone()
    }

    /// A read transaction with the buffer laid over it, for one read or several.
    fn pin(&self) -> Result<Pinned<'_>, BackendError> {
        // The view before the transaction: whatever it holds is either still in it or already
        // committed when the transaction begins.
        let view = self.core.buffer.view();
        let db = self.core.db.read_recursive();
        let txn = db.begin_read().map_err(|e| io("read", None)(&e))?;
        Ok(Pinned {
            _db: db,
            view,
            txn,
            tables: Default::default(),
        })
    }

    /// Commits every buffered batch now, in order, fsynced when `sync` is set; the caller
    /// holds `writer`, so nothing is added meanwhile.
    fn commit_all(&self, sync: bool) -> Result<(), BackendError> {
        let _commit = self.core.commit.lock();
        if let Some(sealed) = self.core.buffer.sealed() {
            self.core.commit_generation(&sealed, false)?;
            self.core.buffer.committed_sealed();
        }
        let active = self.core.buffer.active();
        self.core.commit_generation(&active, sync)?;
        self.core.buffer.committed_active(&active);
        Ok(())
    }

    /// Hands the active generation to the committer once it is due, unless the last one is
    /// still being committed; waits for that one only when the active generation has grown to
    /// [`BACKLOG`] times the bound, so memory stays bounded when the disk is slower than the
    /// writes.
    ///
    /// Tried and measured: committing on the writer's thread instead put each synced commit
    /// (one a second, 16-64 ms under 256 put clients) into the wait of every write behind it,
    /// p99 at 256 clients 42.6-63.9 ms against 32.6 ms this way.
    fn seal_if_due(&self) -> Result<(), BackendError> {
        self.core.buffer.failure()?;
        let active = self.core.buffer.active();
        if !active.due(&self.batching) {
            return Ok(());
        }
        let backlog = Batching {
            max_ops: self.batching.max_ops.saturating_mul(BACKLOG),
            max_bytes: self.batching.max_bytes.saturating_mul(BACKLOG as u64),
            max_age: Duration::MAX,
        };
        if active.due(&backlog) {
            self.core.buffer.wait_unsealed(&|| self.committer_gone())?;
        }
        if self.core.buffer.seal() {
            if let Some(wake) = &self.wake {
                // Full: a wake-up is already pending, which will see this generation.
                let _ = wake.try_send(());
            }
        }
        Ok(())
    }

    /// Whether the committer thread has ended (on a failure) or was never started.
    fn committer_gone(&self) -> bool {
        self.committer.as_ref().is_none_or(|t| t.is_finished())
    }

    /// Commits `batch` on its own, as every `EveryBatch` write is.
    fn commit_batch(&self, batch: WriteBatch) -> Result<(), BackendError> {
        let bytes = batch.ops().iter().map(pending::op_bytes).sum();
        self.core.size.unsynced.fetch_add(bytes, Ordering::Relaxed);
        self.core.commit_with(false, |txn| write_into(txn, batch))
    }
}

/// How far past its bound the active generation may grow while the last one is committed.
const BACKLOG: usize = 4;

/// The committer thread: commits each sealed generation, until the engine closes. When no
/// write seals one for `max_age`, it seals the active generation itself once that is as old,
/// as etcd commits its batch every 100 ms whether or not more writes come: what was written
/// reaches the file, and reads stop laying an idle buffer over it.
fn commit_sealed(core: &Core, woken: &mpsc::Receiver<()>, max_age: Duration) {
    let by_age = Batching {
        max_ops: usize::MAX,
        max_bytes: u64::MAX,
        max_age,
    };
    loop {
        match woken.recv_timeout(max_age) {
            Ok(()) => {}
            Err(mpsc::RecvTimeoutError::Timeout) => {
                let _writer = core.writer.lock();
                if !core.buffer.active().due(&by_age) || !core.buffer.seal() {
                    continue;
                }
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => return,
        }
        let _commit = core.commit.lock();
        let Some(sealed) = core.buffer.sealed() else {
            continue;
        };
        match core.commit_generation(&sealed, false) {
            Ok(()) => core.buffer.committed_sealed(),
            Err(e) => {
                // The generation stays sealed and readable; writes fail from now on.
                tracing::error!(error = %e, "redb engine: committing buffered batches failed");
                core.buffer.fail(&e);
                return;
            }
        }
    }
}

impl Drop for RedbBackend {
    /// Stops the committer and commits what is buffered (without fsync, as any `Lazy` commit),
    /// so a process that closes the engine and opens it again finds every batch it wrote.
    fn drop(&mut self) {
        drop(self.wake.take());
        if let Some(thread) = self.committer.take() {
            let _ = thread.join();
        }
        let _writer = self.core.writer.lock();
        if let Err(e) = self.commit_all(false) {
            tracing::warn!(error = %e, "redb engine: buffered batches not committed at close");
        }
    }
}

/// How long `Lazy` commits may stay off the disk, and how many bytes of them. Past either,
/// the next commit is synced: redb keeps unsynced pages in memory and cannot reuse pages they
/// replaced, so without a bound a member's memory and file would grow with the write rate
/// between snapshots (etcd likewise commits its backend every 100 ms or 10,000 writes).
const SYNC_EVERY: Duration = Duration::from_secs(1);
const SYNC_EVERY_BYTES: u64 = 64 << 20;

impl Core {
    /// Whether the commit about to be made should reach the disk.
    fn sync_due(&self) -> bool {
        match self.durability {
            Durability::EveryBatch => true,
            Durability::Lazy => {
                self.size.unsynced.load(Ordering::Relaxed) >= SYNC_EVERY_BYTES
                    || self.last_sync.lock().elapsed() >= SYNC_EVERY
            }
        }
    }

    /// Records that every commit so far is on disk.
    fn synced(&self) {
        *self.last_sync.lock() = Instant::now();
        self.size.unsynced.store(0, Ordering::Relaxed);
    }

    /// Commits `generation` as one redb transaction, fsynced when `sync` is set or the
    /// unsynced bound is reached; an empty generation makes only a requested sync. The caller
    /// holds `commit`.
    fn commit_generation(&self, generation: &Generation, sync: bool) -> Result<(), BackendError> {
        let empty = generation.is_empty();
        if empty && !sync {
            return Ok(());
        }
        self.commit_with(sync, |txn| {
            if empty {
                return Ok(());
            }
            let err = io("write", None);
            let mut keys = txn.open_table(KEYS).map_err(|e| err(&e))?;
            let mut revisions = txn.open_table(REVISIONS).map_err(|e| err(&e))?;
            let mut meta = txn.open_table(META).map_err(|e| err(&e))?;
            let applied = generation.drain_into(|table, key, value| {
                let t = match table {
                    Table::Keys => &mut keys,
                    Table::Revisions => &mut revisions,
                    Table::Meta => &mut meta,
                };
                match value {
                    Some(v) => t.insert(key, v).map(drop),
                    None => t.remove(key).map(drop),
                }
                .map_err(|x| io("write", Some(table))(&x))
            })?;
            if let Some(position) = applied {
                let mut engine = txn.open_table(ENGINE).map_err(|e| err(&e))?;
                engine
                    .insert(APPLIED, position.as_slice())
                    .map_err(|e| err(&e))?;
            }
            Ok(())
        })
    }

    /// One redb write transaction filled by `fill`, fsynced when `sync` is set or the unsynced
    /// bound is reached, its commit timed for etcd's histogram.
    fn commit_with(
        &self,
        sync: bool,
        fill: impl FnOnce(&redb::WriteTransaction) -> Result<(), BackendError>,
    ) -> Result<(), BackendError> {
        let err = io("write", None);
        let db = self.db.read_recursive();
        let mut txn = db.begin_write().map_err(|e| err(&e))?;
        let sync = self.sync_due() || sync;
        let durability = if sync {
            redb::Durability::Immediate
        } else {
            redb::Durability::None
        };
        txn.set_durability(durability).map_err(|e| err(&e))?;
        fill(&txn)?;
        let started = Instant::now();
        txn.commit().map_err(|e| err(&e))?;
        record_commit(started);
        self.size.measure();
        if sync {
            self.synced();
        }
        Ok(())
    }
}

impl Backend for RedbBackend {
    fn get(&self, table: Table, key: &[u8]) -> Result<Option<Vec<u8>>, BackendError> {
        // A buffered change needs no transaction.
        if let Some(change) = self.core.buffer.view().and_then(|v| v.get(table, key)) {
            return Ok(change);
        }
        self.pin()?.read_key(table, key)
    }

    fn get_many(
        &self,
        table: Table,
        keys: &[Vec<u8>],
    ) -> Result<Vec<Option<Vec<u8>>>, BackendError> {
        let reads = self.pin()?;
        keys.iter().map(|k| reads.read_key(table, k)).collect()
    }

    fn scan(
        &self,
        table: Table,
        from: Bound<&[u8]>,
        to: Bound<&[u8]>,
        visit: &mut Visitor<'_>,
    ) -> Result<(), BackendError> {
        if is_empty_interval(from, to) {
            return Ok(());
        }
        self.pin()?.read_range(table, from, to, visit)
    }

    fn pinned(&self) -> Result<Box<dyn Reads + '_>, BackendError> {
        Ok(Box::new(self.pin()?))
    }

    fn write(&self, batch: WriteBatch) -> Result<(), BackendError> {
        let _writer = self.core.writer.lock();
        if self.wake.is_none() || batch.clears() {
            // A batch that clears everything is committed on its own, after what it follows.
            self.commit_all(false)?;
            return self.commit_batch(batch);
        }
        self.seal_if_due()?;
        let (_, ops, applied) = batch.into_parts();
        let bytes = self.core.buffer.active().add(ops, applied);
        self.core.size.unsynced.fetch_add(bytes, Ordering::Relaxed);
        Ok(())
    }

    fn applied(&self) -> Result<Option<Vec<u8>>, BackendError> {
        if let Some(position) = self.core.buffer.view().and_then(|v| v.applied()) {
            return Ok(Some(position));
        }
        let err = io("read", None);
        let db = self.core.db.read_recursive();
        let txn = db.begin_read().map_err(|e| err(&e))?;
        let t = txn.open_table(ENGINE).map_err(|e| err(&e))?;
        let value = t.get(APPLIED).map_err(|e| err(&e))?;
        Ok(value.map(|v| v.value().to_vec()))
    }

    fn persistent(&self) -> bool {
        true
    }

    fn replace(&self) -> Result<Box<dyn Replacement + '_>, BackendError> {
        // One write transaction that empties every table and refills it: redb's readers see
        // the last commit until it commits, and a crash before then leaves the old content.
        let err = io("replace", None);
        // What is buffered belongs to the old content, which stays if the replacement is
        // dropped; committed first, it is also what the replacement's commit clears.
        {
            let _writer = self.core.writer.lock();
            self.commit_all(false)?;
        }
        let db = self.core.db.read_recursive();
        let mut txn = db.begin_write().map_err(|e| err(&e))?;
        txn.set_durability(redb::Durability::Immediate)
            .map_err(|e| err(&e))?;
        clear(&txn)?;
        Ok(Box::new(RedbReplacement {
            txn,
            size: self.core.size.clone(),
        }))
    }

    fn flush(&self) -> Result<(), BackendError> {
        if self.durability == Durability::EveryBatch {
            return Ok(());
        }
        // A synced commit (of what is buffered, or an empty one) makes every earlier unsynced
        // commit durable.
        let _writer = self.core.writer.lock();
        self.commit_all(true)
    }

    fn defragment(&self) -> Result<bool, BackendError> {
        // The write side waits for every read and write under way and keeps new ones waiting
        // until the file is rewritten, as etcd's defragment blocks its backend.
        let _writer = self.core.writer.lock();
        self.commit_all(false)?;
        let _commit = self.core.commit.lock();
        let mut db = self.core.db.write();
        let started = std::time::Instant::now();
        let before = disk_bytes(&self.path);
        // redb's own compaction moves pages towards the start of the file but keeps each
        // leaf as full as it was; leaves split by inserts in the middle of the key order (every
        // overwrite inserts a key's new version before its old one) stay half empty. Like
        // etcd's defragment, copy every table in key order into a new file, where each leaf is
        // filled before the next is begun, then put it in the old one's place.
        let rewrite = rewrite_path(&self.path);
        let err = io("defragment", None);
        copy_in_order(&db, &rewrite, self.cache_bytes)?;
        let fresh = {
            mvcc::durable::rename_synced(&rewrite, &self.path).map_err(|e| err(&e))?;
            // The old handle still has the old file open; the new one opens the copy.
            open_file(&self.path, self.cache_bytes)?
        };
        *db = fresh;
        self.core.size.measure();
        self.core.synced();
        tracing::info!(
            before,
            after = disk_bytes(&self.path),
            took_ms = started.elapsed().as_millis() as u64,
            "redb engine defragmented"
        );
        Ok(true)
    }
}

/// Reads sharing one read transaction and one view of the buffer: every read of the engine
/// goes through one, and [`Backend::pinned`] hands one out for an apply call's lookups,
/// which began a transaction and opened a table each, 3-4 % of a member's CPU under puts.
struct Pinned<'a> {
    /// Held so a defragment does not swap the file under the transaction.
    _db: parking_lot::RwLockReadGuard<'a, redb::Database>,
    view: Option<View>,
    txn: redb::ReadTransaction,
    /// Each table, opened at its first read.
    tables: [std::cell::OnceCell<ReadTable>; 3],
}

impl Pinned<'_> {
    fn table(&self, table: Table) -> Result<&ReadTable, BackendError> {
        let slot = &self.tables[table as usize];
        if let Some(t) = slot.get() {
            return Ok(t);
        }
        let opened = self
            .txn
            .open_table(def(table))
            .map_err(|e| io("read", Some(table))(&e))?;
        Ok(slot.get_or_init(|| opened))
    }
}

impl Reads for Pinned<'_> {
    fn read_key(&self, table: Table, key: &[u8]) -> Result<Option<Vec<u8>>, BackendError> {
        if let Some(change) = self.view.as_ref().and_then(|v| v.get(table, key)) {
            return Ok(change);
        }
        let value = self
            .table(table)?
            .get(key)
            .map_err(|e| io("read", Some(table))(&e))?;
        Ok(value.map(|v| v.value().to_vec()))
    }

    fn read_range(
        &self,
        table: Table,
        from: Bound<&[u8]>,
        to: Bound<&[u8]>,
        visit: &mut Visitor<'_>,
    ) -> Result<(), BackendError> {
        if is_empty_interval(from, to) {
            return Ok(());
        }
        let t = self.table(table)?;
        if let Some(view) = &self.view {
            return scan_merged(t, view, table, (from, to), visit);
        }
        let err = io("scan", Some(table));
        for entry in t.range::<&[u8]>((from, to)).map_err(|e| err(&e))? {
            let (k, v) = entry.map_err(|e| err(&e))?;
            if let ControlFlow::Break(()) = visit(k.value(), v.value()) {
                break;
            }
        }
        Ok(())
    }

    fn read_first(
        &self,
        table: Table,
        from: Bound<&[u8]>,
        to: Bound<&[u8]>,
    ) -> Result<Option<mvcc::Entry>, BackendError> {
        self.first(table, from, to)
    }
}

type ReadTable = redb::ReadOnlyTable<&'static [u8], &'static [u8]>;

impl Pinned<'_> {
    /// [`Reads::read_first`]: redb's first entry and each generation's, the smallest key
    /// winning and the newest source at a tie, with no merged scan; only a removal winning
    /// (the first live entry lies further on) falls back to one.
    fn first(
        &self,
        table: Table,
        from: Bound<&[u8]>,
        to: Bound<&[u8]>,
    ) -> Result<Option<mvcc::Entry>, BackendError> {
        if is_empty_interval(from, to) {
            return Ok(None);
        }
        let t = self.table(table)?;
        let err = io("scan", Some(table));
        let stored = t
            .range::<&[u8]>((from, to))
            .map_err(|e| err(&e))?
            .next()
            .transpose()
            .map_err(|e| err(&e))?;
        let stored_key = stored.as_ref().map(|(k, _)| k.value());
        let Some((key, change)) = self
            .view
            .as_ref()
            .and_then(|v| v.first(table, (from, to), stored_key))
        else {
            return Ok(stored.map(|(k, v)| (k.value().to_vec(), v.value().to_vec())));
        };
        if let Some(value) = change {
            return Ok(Some((key, value)));
        }
        mvcc::first_by_range(self, table, from, to)
    }
}

/// [`Backend::scan`] over redb's `stored` entries with the buffered changes of `view` laid on
/// top: the newest buffered value replaces older ones of its key, a buffered removal hides
/// them. The buffer is read a chunk at a time, so no lock is held while `visit` runs.
fn scan_merged(
    stored: &ReadTable,
    view: &View,
    table: Table,
    (from, to): (Bound<&[u8]>, Bound<&[u8]>),
    visit: &mut Visitor<'_>,
) -> Result<(), BackendError> {
    let err = io("scan", Some(table));
    let mut entries = stored.range::<&[u8]>((from, to)).map_err(|e| err(&e))?;
    let mut next_stored = || entries.next().transpose().map_err(|e| err(&e));
    let mut current = next_stored()?;
    let mut cursors = view.cursors(table, from, to);
    loop {
        cursors.iter_mut().for_each(Cursor::fill);
        // The newest generation's change at the smallest buffered key.
        let mut best = None;
        for c in &cursors {
            if let Some((key, change)) = c.head() {
                if best.is_none_or(|(b, _)| key < b) {
                    best = Some((key, change));
                }
            }
        }
        let stored_key = current.as_ref().map(|(k, _)| k.value());
        let Some((key, change)) = best.filter(|(k, _)| stored_key.is_none_or(|s| *k <= s)) else {
            // redb's entry is next, or nothing is left.
            let Some((k, v)) = current.take() else {
                return Ok(());
            };
            if let ControlFlow::Break(()) = visit(k.value(), v.value()) {
                return Ok(());
            }
            current = next_stored()?;
            continue;
        };
        // Every source at this key moves past it; only the newest change is seen.
        let same_stored = stored_key == Some(key);
        let mut same = [false; 2];
        for (i, c) in cursors.iter().enumerate().take(same.len()) {
            same[i] = c.head().is_some_and(|(k, _)| k == key);
        }
        let stop = change.is_some_and(|v| visit(key, v).is_break());
        for (c, _) in cursors.iter_mut().zip(same).filter(|(_, s)| *s) {
            c.advance();
        }
        if stop {
            return Ok(());
        }
        if same_stored {
            current = next_stored()?;
        }
    }
}

/// Bytes the engine file at `path` takes on disk: its allocated blocks, not its length.
///
/// redb extends its file ahead of use, to twice the size when it grows, and leaves the new
/// part unwritten (a hole the file system does not store). What the pages written so far take
/// is what etcd's db size counts (bbolt's high-water page mark), so it is what Status reports
/// and the quota checks. 0 when the file cannot be read.
pub fn disk_bytes(path: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path).map_or(0, |m| m.len().min(m.blocks().saturating_mul(512)))
}

/// Where a defragment writes the new file before it replaces the old one.
fn rewrite_path(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(".defrag");
    PathBuf::from(name)
}

fn open_file(path: &Path, cache_bytes: usize) -> Result<redb::Database, BackendError> {
    redb::Database::builder()
        .set_cache_size(cache_bytes)
        .create(path)
        .map_err(|e| BackendError::Open(format!("{}: {e}", path.display())))
}

/// Entries copied per write transaction of a rewrite: bounds the memory a commit holds.
const REWRITE_CHUNK: usize = 16_384;

/// Writes every table of `db` into a new database file at `to`, in key order, durably.
fn copy_in_order(db: &redb::Database, to: &Path, cache_bytes: usize) -> Result<(), BackendError> {
    let err = io("defragment", None);
    let fresh = open_file(to, cache_bytes)?;
    let read = db.begin_read().map_err(|e| err(&e))?;
    for d in [KEYS, REVISIONS, META, ENGINE] {
        let source = read.open_table(d).map_err(|e| err(&e))?;
        let mut entries = source.range::<&[u8]>(..).map_err(|e| err(&e))?;
        loop {
            let mut txn = fresh.begin_write().map_err(|e| err(&e))?;
            // Only the last commit needs to reach the disk: a crash before it leaves a file
            // that is removed at the next open, never one that replaces the old.
            txn.set_durability(redb::Durability::None)
                .map_err(|e| err(&e))?;
            let mut copied = 0;
            {
                let mut target = txn.open_table(d).map_err(|e| err(&e))?;
                for entry in entries.by_ref().take(REWRITE_CHUNK) {
                    let (k, v) = entry.map_err(|e| err(&e))?;
                    target.insert(k.value(), v.value()).map_err(|e| err(&e))?;
                    copied += 1;
                }
            }
            txn.commit().map_err(|e| err(&e))?;
            if copied < REWRITE_CHUNK {
                break;
            }
        }
    }
    let mut txn = fresh.begin_write().map_err(|e| err(&e))?;
    txn.set_durability(redb::Durability::Immediate)
        .map_err(|e| err(&e))?;
    for d in [KEYS, REVISIONS, META, ENGINE] {
        txn.open_table(d).map_err(|e| err(&e))?;
    }
    txn.commit().map_err(|e| err(&e))?;
    drop(fresh);
    mvcc::durable::sync_parent(to).map_err(|e| err(&e))
}

/// A restore's content, in one redb write transaction that empties the tables first.
struct RedbReplacement {
    txn: redb::WriteTransaction,
    size: DiskSize,
}

impl Replacement for RedbReplacement {
    fn write(&mut self, batch: WriteBatch) -> Result<(), BackendError> {
        write_into(&self.txn, batch)
    }

    fn commit(self: Box<Self>) -> Result<(), BackendError> {
        self.txn.commit().map_err(|e| io("replace", None)(&e))?;
        self.size.measure();
        Ok(())
    }
}

/// etcd's name for the time one backend commit takes (here a redb commit, synced or not).
pub const BACKEND_COMMIT: &str = "etcd_disk_backend_commit_duration_seconds";

fn record_commit(started: std::time::Instant) {
    metrics::histogram!(BACKEND_COMMIT).record(started.elapsed().as_secs_f64());
}

/// Drops and recreates every table inside `txn`.
fn clear(txn: &redb::WriteTransaction) -> Result<(), BackendError> {
    let err = io("write", None);
    for d in [KEYS, REVISIONS, META, ENGINE] {
        txn.delete_table(d).map_err(|e| err(&e))?;
        txn.open_table(d).map_err(|e| err(&e))?;
    }
    Ok(())
}

/// Applies `batch` inside `txn`.
fn write_into(txn: &redb::WriteTransaction, batch: WriteBatch) -> Result<(), BackendError> {
    let err = io("write", None);
    let (clears, mut ops, applied) = batch.into_parts();
    // A batch holds the writes of many clients' requests in the order Raft committed them,
    // which for keys that arrive nearly in order (a counter, a timestamp, a bulk load) is
    // sorted but for a few neighbours. redb splits a leaf where an insert lands: an append
    // leaves the full leaf full, an insert just before the end leaves two half-empty leaves
    // that later keys never fill. Inserting in key order makes such batches appends (the
    // footprint benchmark's engine file shrank from 53 to 34 MiB for 100,000 keys). The sort
    // is stable, so two writes of one key keep their order.
    ops.sort_by(|a, b| (a.table, &a.key).cmp(&(b.table, &b.key)));
    if clears {
        clear(txn)?;
    }
    let mut keys = txn.open_table(KEYS).map_err(|e| err(&e))?;
    let mut revisions = txn.open_table(REVISIONS).map_err(|e| err(&e))?;
    let mut meta = txn.open_table(META).map_err(|e| err(&e))?;
    let mut engine = txn.open_table(ENGINE).map_err(|e| err(&e))?;
    for op in &ops {
        let BatchOp { table, key, value } = op;
        let t = match table {
            Table::Keys => &mut keys,
            Table::Revisions => &mut revisions,
            _ => &mut meta,
        };
        let e = io("write", Some(*table));
        match value {
            Some(v) => t.insert(key.as_slice(), v.as_slice()).map(drop),
            None => t.remove(key.as_slice()).map(drop),
        }
        .map_err(|x| e(&x))?;
    }
    if let Some(position) = &applied {
        engine
            .insert(APPLIED, position.as_slice())
            .map_err(|e| err(&e))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    /// Every `Keys` entry `reads` sees: a backend, or reads pinned on one.
    fn scan_all(reads: &dyn Reads) -> Vec<(Vec<u8>, Vec<u8>)> {
        let mut all = Vec::new();
        reads
            .read_range(
                Table::Keys,
                Bound::Unbounded,
                Bound::Unbounded,
                &mut |k, v| {
                    all.push((k.to_vec(), v.to_vec()));
                    ControlFlow::Continue(())
                },
            )
            .unwrap();
        all
    }

    fn pair(k: &str, v: &str) -> (Vec<u8>, Vec<u8>) {
        (k.into(), v.into())
    }

    /// The server's mode (`Lazy`, buffered as `batching` says) with a small cache.
    fn buffered(batching: Batching) -> Options {
        Options {
            durability: Durability::Lazy,
            cache_bytes: 4 << 20,
            batching,
        }
    }

    /// While the committer cannot commit, a sealed generation and the active one are both
    /// read, the newer change of a key winning; once committed, redb reads the same.
    #[test]
    fn reads_see_the_sealed_and_the_active_generation_while_a_commit_waits() {
        let dir = tempfile::tempdir().unwrap();
        let options = buffered(Batching {
            max_ops: 2,
            max_bytes: u64::MAX,
            max_age: Duration::from_secs(3600),
        });
        let backend = RedbBackend::open(dir.path().join("db.redb"), &options).unwrap();
        let held = backend.core.commit.lock();
        let mut first = WriteBatch::new();
        first.put(Table::Keys, b"a".to_vec(), b"1".to_vec());
        first.put(Table::Keys, b"b".to_vec(), b"1".to_vec());
        first.set_applied(b"p1".to_vec());
        backend.write(first).unwrap();
        let mut second = WriteBatch::new();
        second.put(Table::Keys, b"a".to_vec(), b"2".to_vec());
        second.delete(Table::Keys, b"b".to_vec());
        second.put(Table::Keys, b"c".to_vec(), b"2".to_vec());
        backend.write(second).unwrap();
        assert!(
            backend.core.buffer.sealed().is_some(),
            "the first batch is sealed"
        );
        let mut third = WriteBatch::new();
        third.put(Table::Keys, b"d".to_vec(), b"3".to_vec());
        third.set_applied(b"p3".to_vec());
        backend.write(third).unwrap();

        let want = vec![pair("a", "2"), pair("c", "2"), pair("d", "3")];
        assert_eq!(scan_all(&backend), want);
        assert_eq!(backend.get(Table::Keys, b"b").unwrap(), None);
        assert_eq!(backend.get(Table::Keys, b"a").unwrap(), Some(b"2".to_vec()));
        assert_eq!(backend.applied().unwrap(), Some(b"p3".to_vec()));

        drop(held);
        backend.flush().unwrap();
        assert!(
            backend.core.buffer.view().is_none(),
            "everything is committed"
        );
        assert_eq!(scan_all(&backend), want);
        assert_eq!(backend.get(Table::Keys, b"b").unwrap(), None);
        assert_eq!(backend.applied().unwrap(), Some(b"p3".to_vec()));
    }

    /// Pinned reads keep the view they began with while the buffer under them is committed
    /// to redb and emptied: nothing read twice, nothing lost in between.
    #[test]
    fn pinned_reads_keep_their_view_while_the_buffer_is_committed() {
        let dir = tempfile::tempdir().unwrap();
        let options = buffered(Batching {
            max_ops: 2,
            max_bytes: u64::MAX,
            max_age: Duration::from_secs(3600),
        });
        let backend = RedbBackend::open(dir.path().join("db.redb"), &options).unwrap();
        let mut stored = WriteBatch::new();
        stored.put(Table::Keys, b"a".to_vec(), b"0".to_vec());
        stored.put(Table::Keys, b"b".to_vec(), b"0".to_vec());
        backend.write(stored).unwrap();
        backend.flush().unwrap();
        let held = backend.core.commit.lock();
        let mut sealed = WriteBatch::new();
        sealed.put(Table::Keys, b"a".to_vec(), b"1".to_vec());
        sealed.delete(Table::Keys, b"b".to_vec());
        backend.write(sealed).unwrap();
        let mut active = WriteBatch::new();
        active.put(Table::Keys, b"c".to_vec(), b"2".to_vec());
        backend.write(active).unwrap();
        assert!(backend.core.buffer.sealed().is_some());

        let want = vec![pair("a", "1"), pair("c", "2")];
        let pinned = backend.pinned().unwrap();
        assert_eq!(scan_all(&*pinned), want);
        // Commits take the database's read side too, beside the pinned reader's.
        drop(held);
        backend.flush().unwrap();
        assert!(backend.core.buffer.view().is_none(), "all committed");
        assert_eq!(scan_all(&*pinned), want);
        assert_eq!(pinned.read_key(Table::Keys, b"b").unwrap(), None);
        assert_eq!(
            pinned.read_key(Table::Keys, b"a").unwrap(),
            Some(b"1".to_vec())
        );
        drop(pinned);
        assert_eq!(scan_all(&backend), want);
    }

    /// A first-entry read finds what a merged scan would visit first, whichever of redb, the
    /// sealed and the active generation holds it, removals included.
    #[test]
    fn the_first_entry_is_the_merged_scans_first() {
        let dir = tempfile::tempdir().unwrap();
        let options = buffered(Batching {
            max_ops: 3,
            max_bytes: u64::MAX,
            max_age: Duration::from_secs(3600),
        });
        let backend = RedbBackend::open(dir.path().join("db.redb"), &options).unwrap();
        let mut stored = WriteBatch::new();
        for k in ["a", "b", "d", "f"] {
            stored.put(Table::Keys, k.into(), b"0".to_vec());
        }
        backend.write(stored).unwrap();
        backend.flush().unwrap();
        let _held = backend.core.commit.lock();
        let mut sealed = WriteBatch::new();
        sealed.put(Table::Keys, b"a".to_vec(), b"1".to_vec());
        sealed.delete(Table::Keys, b"b".to_vec());
        sealed.put(Table::Keys, b"e".to_vec(), b"1".to_vec());
        backend.write(sealed).unwrap();
        let mut active = WriteBatch::new();
        active.put(Table::Keys, b"c".to_vec(), b"2".to_vec());
        active.delete(Table::Keys, b"d".to_vec());
        active.put(Table::Keys, b"f".to_vec(), b"2".to_vec());
        backend.write(active).unwrap();
        assert!(backend.core.buffer.sealed().is_some());

        let pinned = backend.pinned().unwrap();
        let (mut checked, mut found) = (0, 0);
        for from in ["", "a", "a0", "b", "c", "d", "e", "f", "g"] {
            for to in [None, Some("c"), Some("e"), Some("f0")] {
                let to = to.map_or(Bound::Unbounded, |t| Bound::Excluded(t.as_bytes()));
                let from = Bound::Included(from.as_bytes());
                let mut want = None;
                pinned
                    .read_range(Table::Keys, from, to, &mut |k, v| {
                        want = Some((k.to_vec(), v.to_vec()));
                        ControlFlow::Break(())
                    })
                    .unwrap();
                let got = pinned.read_first(Table::Keys, from, to).unwrap();
                assert_eq!(got, want, "from {from:?} to {to:?}");
                checked += 1;
                found += usize::from(got.is_some());
            }
        }
        assert_eq!((checked, found), (36, 23));
        assert_eq!(
            pinned
                .read_first(Table::Keys, Bound::Included(b"b"), Bound::Unbounded)
                .unwrap(),
            Some(pair("c", "2")),
            "a removal in the buffer hides redb's entry"
        );
    }

    /// A buffer that no later write seals is committed by the committer once it is as old as
    /// the batching allows, without a flush.
    #[test]
    fn an_idle_buffer_is_committed_once_it_is_as_old_as_the_bound() {
        let dir = tempfile::tempdir().unwrap();
        let options = buffered(Batching {
            max_ops: usize::MAX,
            max_bytes: u64::MAX,
            max_age: Duration::from_millis(20),
        });
        let backend = RedbBackend::open(dir.path().join("db.redb"), &options).unwrap();
        let mut batch = WriteBatch::new();
        batch.put(Table::Keys, b"a".to_vec(), b"1".to_vec());
        backend.write(batch).unwrap();
        let until = Instant::now() + Duration::from_secs(30);
        while backend.core.buffer.view().is_some() {
            assert!(
                Instant::now() < until,
                "the idle buffer was never committed"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        let db = backend.core.db.read();
        let txn = db.begin_read().unwrap();
        let keys = txn.open_table(KEYS).unwrap();
        let stored = keys
            .get(b"a".as_slice())
            .unwrap()
            .map(|v| v.value().to_vec());
        assert_eq!(stored, Some(b"1".to_vec()), "redb holds the batch");
    }
}
