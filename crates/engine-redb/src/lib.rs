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
use std::path::Path;

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
        _ => META,
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
        let db = redb::Database::builder()
            .set_cache_size(options.cache_bytes)
            .create(path)
            .map_err(|e| BackendError::Open(format!("{}: {e}", path.display())))?;
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
        })
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
        let durability = match self.durability {
            Durability::EveryBatch => redb::Durability::Immediate,
            Durability::Lazy => redb::Durability::None,
        };
        txn.set_durability(durability).map_err(|e| err(&e))?;
        write_into(&txn, batch)?;
        let started = std::time::Instant::now();
        txn.commit().map_err(|e| err(&e))?;
        record_commit(started);
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
        Ok(())
    }

    fn defragment(&self) -> Result<bool, BackendError> {
        // The write side waits for every read and write under way and keeps new ones waiting
        // until the file is rewritten, as etcd's defragment blocks its backend.
        let mut db = self.db.write();
        let started = std::time::Instant::now();
        let rewritten = db.compact().map_err(|e| io("defragment", None)(&e))?;
        tracing::info!(
            rewritten,
            took_ms = started.elapsed().as_millis() as u64,
            "redb engine defragmented"
        );
        Ok(rewritten)
    }
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
    let (clears, ops, applied) = batch.into_parts();
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
