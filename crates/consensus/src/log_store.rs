//! The Raft log on redb: entries are durable before Raft is told they are, with group commit.
//!
//! openraft 0.9 calls `append` once per client write and waits for the call, not for the
//! flush: `append` commits the entries to redb without fsync (visible to readers at once) and
//! hands the flush callback to a flusher thread. The flusher takes every callback waiting, makes
//! all of those commits durable with one synced commit, and only then tells Raft. Under load one
//! fsync covers every entry appended while the previous one ran.

// openraft's storage traits dictate `StorageError` as the error type, large as it is.
#![allow(clippy::result_large_err)]

use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::path::Path;
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::Arc;

use openraft::storage::{LogFlushed, LogState, RaftLogReader, RaftLogStorage};
use openraft::{ErrorSubject, ErrorVerb, StorageIOError};
use redb::{ReadableDatabase, ReadableTable, TableDefinition};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::types::typ::{Entry, LogId, StorageError, Vote};
use crate::types::TypeConfig;

const LOG: TableDefinition<'static, u64, &'static [u8]> = TableDefinition::new("log");
const STATE: TableDefinition<'static, &'static str, &'static [u8]> = TableDefinition::new("state");
const VOTE: &str = "vote";
const COMMITTED: &str = "committed";
const PURGED: &str = "last_purged";

/// Appends waiting for the flusher at most; past this, `append` flushes inline (backpressure
/// without an unbounded queue).
const FLUSH_QUEUE: usize = 65_536;

/// The Raft log and vote, in their own redb file. Cheap to clone; clones share the file.
#[derive(Clone)]
pub struct LogStore {
    db: Arc<redb::Database>,
    flushes: SyncSender<Flush>,
}

/// Work for the flusher thread.
enum Flush {
    /// Tell Raft once the entries appended so far are durable.
    After(LogFlushed<TypeConfig>),
    /// Flush what is waiting, then stop.
    Stop,
}

/// Stops the flusher thread, so the log file is closed once Raft lets go of it.
pub struct LogCloser {
    flushes: SyncSender<Flush>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl LogCloser {
    /// Flushes what is waiting and joins the flusher thread.
    pub fn close(mut self) {
        // A full queue means the flusher is busy and will see the Stop after draining; a
        // closed one means it has already gone.
        let _ = self.flushes.send(Flush::Stop);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Makes unsynced commits durable, many at a time, then reports them to Raft.
fn run_flusher(db: Arc<redb::Database>, waiting: Receiver<Flush>) {
    let mut stop = false;
    while !stop {
        let Ok(first) = waiting.recv() else { return };
        let mut batch = Vec::new();
        for item in std::iter::once(first).chain(waiting.try_iter()) {
            match item {
                Flush::After(callback) => batch.push(callback),
                Flush::Stop => stop = true,
            }
        }
        let result = sync(&db);
        for callback in batch {
            callback.log_io_completed(result.clone().map_err(std::io::Error::other));
        }
    }
}

/// An empty synced commit: redb makes every earlier unsynced commit durable with it.
fn sync(db: &redb::Database) -> Result<(), String> {
    let mut txn = db.begin_write().map_err(|e| e.to_string())?;
    txn.set_durability(redb::Durability::Immediate)
        .map_err(|e| e.to_string())?;
    txn.commit().map_err(|e| e.to_string())
}

fn io_err(subject: ErrorSubject<u64>, verb: ErrorVerb, e: impl ToString) -> StorageError {
    StorageIOError::new(subject, verb, openraft::AnyError::error(e.to_string())).into()
}

fn encode<T: Serialize>(v: &T, subject: ErrorSubject<u64>) -> Result<Vec<u8>, StorageError> {
    bincode::serialize(v).map_err(|e| io_err(subject, ErrorVerb::Write, e))
}

fn decode<T: DeserializeOwned>(raw: &[u8], subject: ErrorSubject<u64>) -> Result<T, StorageError> {
    bincode::deserialize(raw).map_err(|e| io_err(subject, ErrorVerb::Read, e))
}

impl LogStore {
    /// Opens (or creates) the log file at `path`, with the handle that closes it.
    ///
    /// # Errors
    /// The file cannot be opened or is not a redb file.
    pub fn open(path: &Path) -> Result<(Self, LogCloser), String> {
        let db = redb::Database::create(path).map_err(|e| e.to_string())?;
        let txn = db.begin_write().map_err(|e| e.to_string())?;
        txn.open_table(LOG).map_err(|e| e.to_string())?;
        txn.open_table(STATE).map_err(|e| e.to_string())?;
        txn.commit().map_err(|e| e.to_string())?;
        let db = Arc::new(db);
        let (flushes, waiting) = sync_channel(FLUSH_QUEUE);
        let flusher_db = Arc::clone(&db);
        let thread = std::thread::Builder::new()
            .name("raft-log-flush".into())
            .spawn(move || run_flusher(flusher_db, waiting))
            .map_err(|e| e.to_string())?;
        let closer = LogCloser {
            flushes: flushes.clone(),
            thread: Some(thread),
        };
        Ok((Self { db, flushes }, closer))
    }

    fn read_state<T: DeserializeOwned>(&self, key: &str) -> Result<Option<T>, StorageError> {
        let subject = ErrorSubject::Store;
        let txn = self
            .db
            .begin_read()
            .map_err(|e| io_err(subject.clone(), ErrorVerb::Read, e))?;
        let table = txn
            .open_table(STATE)
            .map_err(|e| io_err(subject.clone(), ErrorVerb::Read, e))?;
        let value = table
            .get(key)
            .map_err(|e| io_err(subject.clone(), ErrorVerb::Read, e))?;
        value.map(|v| decode(v.value(), subject)).transpose()
    }

    /// Runs a synced write transaction on a blocking thread: redb's commit waits for fsync.
    async fn write<F>(&self, subject: ErrorSubject<u64>, f: F) -> Result<(), StorageError>
    where
        F: FnOnce(&redb::WriteTransaction) -> Result<(), String> + Send + 'static,
    {
        let db = Arc::clone(&self.db);
        let s = subject.clone();
        let done = tokio::task::spawn_blocking(move || -> Result<(), String> {
            let txn = db.begin_write().map_err(|e| e.to_string())?;
            f(&txn)?;
            txn.commit().map_err(|e| e.to_string())
        })
        .await
        .map_err(|e| io_err(s.clone(), ErrorVerb::Write, e))?;
        done.map_err(|e| io_err(subject, ErrorVerb::Write, e))
    }

    async fn write_state<T: Serialize>(
        &self,
        key: &'static str,
        v: &T,
    ) -> Result<(), StorageError> {
        let raw = encode(v, ErrorSubject::Store)?;
        self.write(ErrorSubject::Store, move |txn| {
            let mut t = txn.open_table(STATE).map_err(|e| e.to_string())?;
            t.insert(key, raw.as_slice()).map_err(|e| e.to_string())?;
            Ok(())
        })
        .await
    }

    fn last_entry_id(&self) -> Result<Option<LogId>, StorageError> {
        let subject = ErrorSubject::Logs;
        let txn = self
            .db
            .begin_read()
            .map_err(|e| io_err(subject.clone(), ErrorVerb::Read, e))?;
        let table = txn
            .open_table(LOG)
            .map_err(|e| io_err(subject.clone(), ErrorVerb::Read, e))?;
        let last = table
            .last()
            .map_err(|e| io_err(subject.clone(), ErrorVerb::Read, e))?;
        match last {
            None => Ok(None),
            Some((_, v)) => Ok(Some(decode::<Entry>(v.value(), subject)?.log_id)),
        }
    }
}

fn bounds<RB: RangeBounds<u64>>(range: &RB) -> (Bound<u64>, Bound<u64>) {
    (range.start_bound().cloned(), range.end_bound().cloned())
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + Send>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError> {
        let subject = ErrorSubject::Logs;
        let txn = self
            .db
            .begin_read()
            .map_err(|e| io_err(subject.clone(), ErrorVerb::Read, e))?;
        let table = txn
            .open_table(LOG)
            .map_err(|e| io_err(subject.clone(), ErrorVerb::Read, e))?;
        let (from, to) = bounds(&range);
        if let (Bound::Included(a) | Bound::Excluded(a), Bound::Included(b) | Bound::Excluded(b)) =
            (from, to)
        {
            if a > b {
                return Ok(Vec::new());
            }
        }
        let mut out = Vec::new();
        for item in table
            .range((from, to))
            .map_err(|e| io_err(subject.clone(), ErrorVerb::Read, e))?
        {
            let (_, v) = item.map_err(|e| io_err(subject.clone(), ErrorVerb::Read, e))?;
            out.push(decode(v.value(), subject.clone())?);
        }
        Ok(out)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError> {
        let last_purged_log_id = self.read_state::<Option<LogId>>(PURGED)?.flatten();
        let last_log_id = self.last_entry_id()?.or(last_purged_log_id);
        Ok(LogState {
            last_purged_log_id,
            last_log_id,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), StorageError> {
        self.write_state(VOTE, vote).await
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, StorageError> {
        self.read_state(VOTE)
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), StorageError> {
        self.write_state(COMMITTED, &committed).await
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, StorageError> {
        Ok(self.read_state::<Option<LogId>>(COMMITTED)?.flatten())
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<TypeConfig>,
    ) -> Result<(), StorageError>
    where
        I: IntoIterator<Item = Entry> + Send,
        I::IntoIter: Send,
    {
        let mut encoded = Vec::new();
        for entry in entries {
            encoded.push((entry.log_id.index, encode(&entry, ErrorSubject::Logs)?));
        }
        // Unsynced: visible now, durable when the flusher's synced commit lands.
        let err =
            |e: &dyn std::fmt::Display| io_err(ErrorSubject::Logs, ErrorVerb::Write, e.to_string());
        let mut txn = self.db.begin_write().map_err(|e| err(&e))?;
        txn.set_durability(redb::Durability::None)
            .map_err(|e| err(&e))?;
        {
            let mut t = txn.open_table(LOG).map_err(|e| err(&e))?;
            for (index, raw) in &encoded {
                t.insert(*index, raw.as_slice()).map_err(|e| err(&e))?;
            }
        }
        txn.commit().map_err(|e| err(&e))?;
        match self.flushes.try_send(Flush::After(callback)) {
            Ok(()) => Ok(()),
            Err(
                TrySendError::Full(Flush::After(callback))
                | TrySendError::Disconnected(Flush::After(callback)),
            ) => {
                let result = sync(&self.db);
                callback.log_io_completed(result.clone().map_err(std::io::Error::other));
                result.map_err(|e| err(&e))
            }
            Err(_) => Ok(()),
        }
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError> {
        let from = log_id.index;
        self.write(ErrorSubject::Logs, move |txn| {
            let mut t = txn.open_table(LOG).map_err(|e| e.to_string())?;
            t.retain_in(from.., |_, _| false)
                .map_err(|e| e.to_string())?;
            Ok(())
        })
        .await
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError> {
        let raw = encode(&Some(log_id), ErrorSubject::Store)?;
        let upto = log_id.index;
        self.write(ErrorSubject::Logs, move |txn| {
            let mut state = txn.open_table(STATE).map_err(|e| e.to_string())?;
            state
                .insert(PURGED, raw.as_slice())
                .map_err(|e| e.to_string())?;
            let mut t = txn.open_table(LOG).map_err(|e| e.to_string())?;
            t.retain_in(..=upto, |_, _| false)
                .map_err(|e| e.to_string())?;
            Ok(())
        })
        .await
    }
}
