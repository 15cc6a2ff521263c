//! A persistent [`mvcc::Backend`] on redb, a copy-on-write B-tree in one file.
//!
//! It owns the database file: one redb table per [`mvcc::Table`] plus one for the applied
//! position, each [`mvcc::WriteBatch`] committed as one redb write transaction. It knows nothing
//! of revisions or Raft. A commit is atomic, so after `kill -9` the reopened file holds a prefix
//! of the batches, each whole.
//!
//! Durability is a choice ([`Durability`]): `EveryBatch` fsyncs each commit; `Lazy` commits
//! without fsync and is made durable by [`mvcc::Backend::flush`] or the next synced commit.
//! `Lazy` suits a store whose Raft log is the durable source of truth: after a crash the engine
//! is at some earlier batch boundary and the log replays the rest from [`RedbBackend`]'s applied
//! position.
//!
//! A restore ([`mvcc::Backend::replace`]) is one write transaction that empties every table and
//! refills it, committed with fsync whatever the durability: readers and a reopened file see the
//! old content until it commits and the new content after.
//!
//! # Layout
//! - `lib.rs`: [`RedbBackend`], [`Options`], [`Durability`].

use std::ops::{Bound, ControlFlow};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mvcc::{
    is_empty_interval, Backend, BackendError, BatchOp, Replacement, Table, Visitor, WriteBatch,
};
use parking_lot::RwLock;
use redb::{ReadableDatabase, TableDefinition};

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
    /// Batches are fsynced only by `flush` (or a later synced commit); a crash loses the tail.
    Lazy,
}

/// How to open the engine.
#[derive(Clone, Debug)]
pub struct Options {
    /// When batches reach the disk.
    pub durability: Durability,
    /// Bytes of redb page cache.
    pub cache_bytes: usize,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            durability: Durability::EveryBatch,
            cache_bytes: 256 << 20,
        }
    }
}

/// The redb engine.
pub struct RedbBackend {
    /// Every transaction is begun and ended under the read side; [`Backend::defragment`] takes
    /// the write side, because redb compacts only a database with no transaction open. The read
    /// side is taken recursively: a reader that nested a second read behind a waiting
    /// defragment would otherwise deadlock; a defragment waits for a gap between readers.
    db: RwLock<redb::Database>,
    durability: Durability,
    /// The database file, which a defragment replaces with a rewritten copy.
    path: PathBuf,
    cache_bytes: usize,
    size: DiskSize,
    /// When the last commit reached the disk (for `Lazy`).
    last_sync: parking_lot::Mutex<Instant>,
}

/// The engine file's size as etcd's quota and Status count it, readable without the engine.
///
/// The pages written to the file (its allocated blocks: redb extends the file ahead of use and
/// leaves the new part a hole) plus the bytes committed since the last commit that reached the
/// disk, which redb may still hold in memory. etcd counts bbolt's high-water page mark the same
/// way: pages freed inside the file still count until a defragment.
#[derive(Clone, Debug)]
pub struct DiskSize {
    path: PathBuf,
    unsynced: Arc<AtomicU64>,
}

impl DiskSize {
    /// The size in bytes; what cannot be read counts as 0.
    pub fn bytes(&self) -> u64 {
        disk_bytes(&self.path).saturating_add(self.unsynced.load(Ordering::Relaxed))
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
    /// [`BackendError::Open`] when the file cannot be opened or created.
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
        Ok(Self {
            db: RwLock::new(db),
            durability: options.durability,
            path: path.to_path_buf(),
            cache_bytes: options.cache_bytes,
            size: DiskSize {
                path: path.to_path_buf(),
                unsynced: Arc::new(AtomicU64::new(0)),
            },
            last_sync: parking_lot::Mutex::new(Instant::now()),
        })
    }
}

/// How long `Lazy` commits may stay off the disk, and how many bytes of them. Past either,
/// the next commit is synced: redb keeps unsynced pages in memory and cannot reuse pages they
/// replaced, so without a bound a member's memory and file would grow with the write rate
/// between snapshots (etcd likewise commits its backend every 100 ms or 10,000 writes).
const SYNC_EVERY: Duration = Duration::from_secs(1);
const SYNC_EVERY_BYTES: u64 = 64 << 20;

impl RedbBackend {
    /// A handle on the file's size that outlives borrows of the engine (for Status and the
    /// quota).
    pub fn disk_size(&self) -> DiskSize {
        self.size.clone()
    }

    /// Whether the commit about to be made should reach the disk; `bytes` is its size.
    fn sync_due(&self, bytes: u64) -> bool {
        match self.durability {
            Durability::EveryBatch => true,
            Durability::Lazy => {
                let pending = self.size.unsynced.fetch_add(bytes, Ordering::Relaxed) + bytes;
                pending >= SYNC_EVERY_BYTES || self.last_sync.lock().elapsed() >= SYNC_EVERY
            }
        }
    }

    /// Records that every commit so far is on disk.
    fn synced(&self) {
        *self.last_sync.lock() = Instant::now();
        self.size.unsynced.store(0, Ordering::Relaxed);
    }
}

impl Backend for RedbBackend {
    fn get(&self, table: Table, key: &[u8]) -> Result<Option<Vec<u8>>, BackendError> {
        let err = io("read", Some(table));
        let db = self.db.read_recursive();
        let txn = db.begin_read().map_err(|e| err(&e))?;
        let t = txn.open_table(def(table)).map_err(|e| err(&e))?;
        let value = t.get(key).map_err(|e| err(&e))?;
        Ok(value.map(|v| v.value().to_vec()))
    }

    fn get_many(
        &self,
        table: Table,
        keys: &[Vec<u8>],
    ) -> Result<Vec<Option<Vec<u8>>>, BackendError> {
        let err = io("read", Some(table));
        let db = self.db.read_recursive();
        let txn = db.begin_read().map_err(|e| err(&e))?;
        let t = txn.open_table(def(table)).map_err(|e| err(&e))?;
        keys.iter()
            .map(|k| {
                t.get(k.as_slice())
                    .map(|v| v.map(|v| v.value().to_vec()))
                    .map_err(|e| err(&e))
            })
            .collect()
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
        let err = io("scan", Some(table));
        let db = self.db.read_recursive();
        let txn = db.begin_read().map_err(|e| err(&e))?;
        let t = txn.open_table(def(table)).map_err(|e| err(&e))?;
        for entry in t.range::<&[u8]>((from, to)).map_err(|e| err(&e))? {
            let (k, v) = entry.map_err(|e| err(&e))?;
            if let ControlFlow::Break(()) = visit(k.value(), v.value()) {
                break;
            }
        }
        Ok(())
    }

    fn write(&self, batch: WriteBatch) -> Result<(), BackendError> {
        let err = io("write", None);
        let db = self.db.read_recursive();
        let mut txn = db.begin_write().map_err(|e| err(&e))?;
        let bytes = batch
            .ops()
            .iter()
            .map(|op| (op.key.len() + op.value.as_ref().map_or(0, Vec::len)) as u64)
            .sum();
        let sync = self.sync_due(bytes);
        let durability = if sync {
            redb::Durability::Immediate
        } else {
            redb::Durability::None
        };
        txn.set_durability(durability).map_err(|e| err(&e))?;
        write_into(&txn, batch)?;
        let started = std::time::Instant::now();
        txn.commit().map_err(|e| err(&e))?;
        record_commit(started);
        if sync {
            self.synced();
        }
        Ok(())
    }

    fn applied(&self) -> Result<Option<Vec<u8>>, BackendError> {
        let err = io("read", None);
        let db = self.db.read_recursive();
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
        let db = self.db.read_recursive();
        let mut txn = db.begin_write().map_err(|e| err(&e))?;
        txn.set_durability(redb::Durability::Immediate)
            .map_err(|e| err(&e))?;
        clear(&txn)?;
        Ok(Box::new(RedbReplacement { txn }))
    }

    fn flush(&self) -> Result<(), BackendError> {
        if self.durability == Durability::EveryBatch {
            return Ok(());
        }
        // An empty synced commit makes every earlier unsynced commit durable.
        let err = io("flush", None);
        let db = self.db.read_recursive();
        let mut txn = db.begin_write().map_err(|e| err(&e))?;
        txn.set_durability(redb::Durability::Immediate)
            .map_err(|e| err(&e))?;
        let started = std::time::Instant::now();
        txn.commit().map_err(|e| err(&e))?;
        record_commit(started);
        self.synced();
        Ok(())
    }

    fn defragment(&self) -> Result<bool, BackendError> {
        // The write side waits for every read and write under way and keeps new ones waiting
        // until the file is rewritten, as etcd's defragment blocks its backend.
        let mut db = self.db.write();
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
        self.synced();
        tracing::info!(
            before,
            after = disk_bytes(&self.path),
            took_ms = started.elapsed().as_millis() as u64,
            "redb engine defragmented"
        );
        Ok(true)
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
}

impl Replacement for RedbReplacement {
    fn write(&mut self, batch: WriteBatch) -> Result<(), BackendError> {
        write_into(&self.txn, batch)
    }

    fn commit(self: Box<Self>) -> Result<(), BackendError> {
        self.txn.commit().map_err(|e| io("replace", None)(&e))
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
