//! The Raft log on redb: entries are durable before Raft is told they are, with group commit.
//!
//! openraft 0.9 calls `append` once per client write and waits for the call, not for the fsync.
//! So `append` only queues the entries (keeping them readable in memory meanwhile) and returns;
//! one writer thread takes every write waiting, applies them in order in one redb transaction
//! with one fsync, and then tells Raft, through each append's callback, that they are durable.
//! Under load one fsync covers every entry appended while the previous one ran.

// openraft's storage traits dictate `StorageError` as the error type, large as it is.
#![allow(clippy::result_large_err)]

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError};

use openraft::storage::{LogFlushed, LogState, RaftLogReader, RaftLogStorage};
use openraft::{EntryPayload, ErrorSubject, ErrorVerb, StorageIOError};
use redb::{ReadableDatabase, ReadableTable, TableDefinition};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::sync::{mpsc, oneshot, watch};

use crate::types::typ::{Entry, LogId, StorageError, Vote};
use crate::types::TypeConfig;

const LOG: TableDefinition<'static, u64, &'static [u8]> = TableDefinition::new("log");
const STATE: TableDefinition<'static, &'static str, &'static [u8]> = TableDefinition::new("state");
const VOTE: &str = "vote";
const COMMITTED: &str = "committed";
const PURGED: &str = "last_purged";

/// Log writes waiting for the writer thread at most; `append` waits for room beyond that.
const QUEUE: usize = 16_384;
/// Writes the writer thread folds into one synced transaction at most.
const GROUP: usize = 4_096;
/// Bytes of entries one replication message carries at most (but always one entry): one full
/// batch, far below the peers' message limit and small enough to cross within one RPC's time
/// (openraft 0.9 bounds an AppendEntries by the heartbeat interval). Like etcd's
/// `MaxSizePerMsg`, for entries that are batches of up to a few MiB each.
pub(crate) const MAX_APPEND_BYTES: usize = crate::batcher::MAX_BATCH_BYTES;

/// Entries appended but not yet durable, readable meanwhile: Raft may read what it appended.
type Pending = Arc<Mutex<BTreeMap<u64, Entry>>>;

/// A write for the writer thread, applied in queue order.
enum Op {
    /// Append encoded entries, then tell Raft they are durable.
    Append {
        entries: Vec<(LogId, Vec<u8>)>,
        /// The highest batch number of this member's own proposals among them.
        own_seq: Option<u64>,
        callback: LogFlushed<TypeConfig>,
    },
    /// Remove entries from `from` on.
    Truncate {
        from: u64,
        done: oneshot::Sender<Result<(), String>>,
    },
    /// Remove entries up to `upto` and remember it.
    Purge {
        upto: u64,
        record: Vec<u8>,
        done: oneshot::Sender<Result<(), String>>,
    },
    /// Remember the committed log id (a hint: durable with the next synced write).
    Committed(Vec<u8>),
    /// Finish what is queued, then stop.
    Stop,
}

/// The Raft log and vote, in their own redb file. Cheap to clone; clones share the file.
#[derive(Clone)]
pub struct LogStore {
    db: Arc<redb::Database>,
    pending: Pending,
    ops: mpsc::Sender<Op>,
    /// This member's id and incarnation: its own proposals since this start are the ones
    /// whose flush it reports (an earlier start numbered its batches from 1 too).
    own_id: u64,
    incarnation: u64,
    flushed: watch::Receiver<u64>,
    /// What one replication read returns at most, in bytes ([`MAX_APPEND_BYTES`]).
    max_append_bytes: usize,
}

/// Stops the writer thread, so the log file is closed once Raft lets go of it.
pub struct LogCloser {
    ops: mpsc::Sender<Op>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl LogCloser {
    /// Writes what is queued and joins the writer thread.
    pub fn close(mut self) {
        // Closed means the thread has already gone.
        let _ = self.ops.blocking_send(Op::Stop);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// The only writer of log entries: takes every write waiting, applies them in order in one
/// transaction, makes it durable with one fsync, then reports each. Under load one fsync covers
/// every entry appended while the previous one ran (group commit).
fn run_writer(
    db: Arc<redb::Database>,
    pending: Pending,
    mut ops: mpsc::Receiver<Op>,
    flushed: watch::Sender<u64>,
) {
    while let Some(first) = ops.blocking_recv() {
        let mut group = vec![first];
        while group.len() < GROUP {
            match ops.try_recv() {
                Ok(op) => group.push(op),
                Err(_) => break,
            }
        }
        let stop = group.iter().any(|op| matches!(op, Op::Stop));
        let result = write_group(&db, &group);
        let mut pending = pending.lock().unwrap_or_else(PoisonError::into_inner);
        let mut own_seq = None;
        for op in group {
            match op {
                Op::Append {
                    entries,
                    own_seq: seq,
                    callback,
                } => {
                    own_seq = own_seq.max(seq);
                    if result.is_ok() {
                        for (log_id, _) in &entries {
                            // Only this very entry: a truncate may have replaced the index since.
                            if pending
                                .get(&log_id.index)
                                .is_some_and(|e| e.log_id == *log_id)
                            {
                                pending.remove(&log_id.index);
                            }
                        }
                    }
                    callback.log_io_completed(result.clone().map_err(std::io::Error::other));
                }
                Op::Truncate { done, .. } | Op::Purge { done, .. } => {
                    let _ = done.send(result.clone());
                }
                Op::Committed(_) | Op::Stop => {}
            }
        }
        drop(pending);
        if let (Ok(()), Some(seq)) = (&result, own_seq) {
            flushed.send_if_modified(|at| {
                let newer = seq > *at;
                if newer {
                    *at = seq;
                }
                newer
            });
        }
        if stop {
            return;
        }
    }
}

fn write_group(db: &redb::Database, group: &[Op]) -> Result<(), String> {
    let mut txn = db.begin_write().map_err(|e| e.to_string())?;
    // Only the committed-index hint may go unsynced: it is made durable by the next synced
    // group, and a restart that misses it only replays a little more.
    if group
        .iter()
        .all(|op| matches!(op, Op::Committed(_) | Op::Stop))
    {
        txn.set_durability(redb::Durability::None)
            .map_err(|e| e.to_string())?;
    }
    {
        let mut log = txn.open_table(LOG).map_err(|e| e.to_string())?;
        let mut state = txn.open_table(STATE).map_err(|e| e.to_string())?;
        for op in group {
            match op {
                Op::Append { entries, .. } => {
                    for (log_id, raw) in entries {
                        log.insert(log_id.index, raw.as_slice())
                            .map_err(|e| e.to_string())?;
                    }
                }
                Op::Truncate { from, .. } => {
                    log.retain_in(*from.., |_, _| false)
                        .map_err(|e| e.to_string())?;
                }
                Op::Purge { upto, record, .. } => {
                    state
                        .insert(PURGED, record.as_slice())
                        .map_err(|e| e.to_string())?;
                    log.retain_in(..=*upto, |_, _| false)
                        .map_err(|e| e.to_string())?;
                }
                Op::Committed(raw) => {
                    state
                        .insert(COMMITTED, raw.as_slice())
                        .map_err(|e| e.to_string())?;
                }
                Op::Stop => {}
            }
        }
    }
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

fn stopped(subject: ErrorSubject<u64>) -> StorageError {
    io_err(subject, ErrorVerb::Write, "the raft log writer has stopped")
}

impl LogStore {
    /// Opens (or creates) the log file at `path`, with the handle that closes it.
    ///
    /// # Errors
    /// The file cannot be opened or is not a redb file.
    pub fn open(path: &Path, own_id: u64, incarnation: u64) -> Result<(Self, LogCloser), String> {
        let db = redb::Database::create(path).map_err(|e| e.to_string())?;
        let txn = db.begin_write().map_err(|e| e.to_string())?;
        txn.open_table(LOG).map_err(|e| e.to_string())?;
        txn.open_table(STATE).map_err(|e| e.to_string())?;
        txn.commit().map_err(|e| e.to_string())?;
        // redb may just have created the file: its name is durable only once the directory is.
        mvcc::durable::sync_parent(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let db = Arc::new(db);
        let pending: Pending = Arc::default();
        let (ops, queue) = mpsc::channel(QUEUE);
        let (flushed_tx, flushed) = watch::channel(0);
        let (writer_db, writer_pending) = (Arc::clone(&db), Arc::clone(&pending));
        let thread = std::thread::Builder::new()
            .name("raft-log-writer".into())
            .spawn(move || run_writer(writer_db, writer_pending, queue, flushed_tx))
            .map_err(|e| e.to_string())?;
        let closer = LogCloser {
            ops: ops.clone(),
            thread: Some(thread),
        };
        Ok((
            Self {
                db,
                pending,
                ops,
                own_id,
                incarnation,
                flushed,
                max_append_bytes: MAX_APPEND_BYTES,
            },
            closer,
        ))
    }

    /// etcd's `--force-new-cluster`, before Raft starts: appends a membership entry naming
    /// `own_id` (as `member`) as the only voter, in a term above every term seen, and votes for
    /// this member in that term, in one synced transaction. Raft then starts on a one-member
    /// configuration, elects this member, and its first entry commits the forced membership
    /// and every entry before it. Returns the new entry's log id.
    ///
    /// Unlike etcd, which drops the entries past the commit index it knows, they are kept: a
    /// follower's commit index may lag writes the leader had acknowledged, and keeping them
    /// loses none of those (they commit with the forced entry).
    ///
    /// # Errors
    /// The log cannot be read or written.
    pub(crate) fn force_single_member(
        &self,
        own_id: u64,
        member: crate::types::Member,
    ) -> Result<LogId, String> {
        let purged = self
            .read_state::<Option<LogId>>(PURGED)
            .map_err(|e| e.to_string())?
            .flatten();
        let last = self.last_entry_id().map_err(|e| e.to_string())?.or(purged);
        let vote: Option<Vote> = self.read_state(VOTE).map_err(|e| e.to_string())?;
        let term = vote
            .map(|v| v.leader_id().term)
            .max(last.map(|l| l.leader_id.term))
            .unwrap_or(0)
            + 1;
        let index = last.map_or(1, |l| l.index + 1);
        let log_id = LogId::new(openraft::CommittedLeaderId::new(term, own_id), index);
        let membership = openraft::Membership::new(
            vec![std::collections::BTreeSet::from([own_id])],
            BTreeMap::from([(own_id, member)]),
        );
        let entry = Entry {
            log_id,
            payload: EntryPayload::Membership(membership),
        };
        let raw_entry = encode(&entry, ErrorSubject::Logs).map_err(|e| e.to_string())?;
        let raw_vote =
            encode(&Vote::new(term, own_id), ErrorSubject::Vote).map_err(|e| e.to_string())?;
        let txn = self.db.begin_write().map_err(|e| e.to_string())?;
        {
            let mut log = txn.open_table(LOG).map_err(|e| e.to_string())?;
            log.insert(index, raw_entry.as_slice())
                .map_err(|e| e.to_string())?;
            let mut state = txn.open_table(STATE).map_err(|e| e.to_string())?;
            state
                .insert(VOTE, raw_vote.as_slice())
                .map_err(|e| e.to_string())?;
        }
        txn.commit().map_err(|e| e.to_string())?;
        Ok(log_id)
    }

    /// The highest batch number of this member's own proposals that the log holds durably.
    pub(crate) fn flushed(&self) -> watch::Receiver<u64> {
        self.flushed.clone()
    }

    /// The index of the last entry Raft has handed to this log, written or not yet.
    ///
    /// # Errors
    /// The log file cannot be read.
    pub(crate) fn last_index(&self) -> Result<Option<u64>, StorageError> {
        Ok(self.last_entry_id()?.map(|id| id.index))
    }

    fn pending(&self) -> std::sync::MutexGuard<'_, BTreeMap<u64, Entry>> {
        self.pending.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn read_state<T: DeserializeOwned>(&self, key: &str) -> Result<Option<T>, StorageError> {
        let subject = ErrorSubject::Store;
        let err =
            |e: &dyn std::fmt::Display| io_err(ErrorSubject::Store, ErrorVerb::Read, e.to_string());
        let txn = self.db.begin_read().map_err(|e| err(&e))?;
        let table = txn.open_table(STATE).map_err(|e| err(&e))?;
        let value = table.get(key).map_err(|e| err(&e))?;
        value.map(|v| decode(v.value(), subject)).transpose()
    }

    fn last_entry_id(&self) -> Result<Option<LogId>, StorageError> {
        if let Some((_, entry)) = self.pending().last_key_value() {
            return Ok(Some(entry.log_id));
        }
        let err =
            |e: &dyn std::fmt::Display| io_err(ErrorSubject::Logs, ErrorVerb::Read, e.to_string());
        let txn = self.db.begin_read().map_err(|e| err(&e))?;
        let table = txn.open_table(LOG).map_err(|e| err(&e))?;
        let last = table.last().map_err(|e| err(&e))?;
        match last {
            None => Ok(None),
            Some((_, v)) => Ok(Some(decode::<Entry>(v.value(), ErrorSubject::Logs)?.log_id)),
        }
    }

    /// Queues `op` and waits for the writer to report it done.
    async fn write_and_wait(
        &self,
        subject: ErrorSubject<u64>,
        op: impl FnOnce(oneshot::Sender<Result<(), String>>) -> Op,
    ) -> Result<(), StorageError> {
        let (done, answer) = oneshot::channel();
        self.ops
            .send(op(done))
            .await
            .map_err(|_| stopped(subject.clone()))?;
        match answer.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(io_err(subject, ErrorVerb::Write, e)),
            Err(_) => Err(stopped(subject)),
        }
    }
}

fn bounds<RB: RangeBounds<u64>>(range: &RB) -> (Bound<u64>, Bound<u64>) {
    (range.start_bound().cloned(), range.end_bound().cloned())
}

/// What an entry weighs in a replication message, about: its commands' bytes.
fn approx_entry_size(entry: &Entry) -> usize {
    match &entry.payload {
        EntryPayload::Normal(p) => p.commands.iter().map(|t| t.command.approx_size()).sum(),
        _ => 64,
    }
}

impl LogStore {
    /// The entries in `from..to`, in order, stopping before the entry that would take them
    /// over `max_bytes` (but never returning none of a non-empty range).
    fn read_entries(
        &self,
        from: Bound<u64>,
        to: Bound<u64>,
        max_bytes: usize,
    ) -> Result<Vec<Entry>, StorageError> {
        if let (Bound::Included(a) | Bound::Excluded(a), Bound::Included(b) | Bound::Excluded(b)) =
            (from, to)
        {
            if a > b {
                return Ok(Vec::new());
            }
        }
        let err =
            |e: &dyn std::fmt::Display| io_err(ErrorSubject::Logs, ErrorVerb::Read, e.to_string());
        let mut out: BTreeMap<u64, (Entry, usize)> = BTreeMap::new();
        let mut file_bytes = 0usize;
        {
            let txn = self.db.begin_read().map_err(|e| err(&e))?;
            let table = txn.open_table(LOG).map_err(|e| err(&e))?;
            for item in table.range((from, to)).map_err(|e| err(&e))? {
                if file_bytes > max_bytes {
                    break;
                }
                let (k, v) = item.map_err(|e| err(&e))?;
                let raw = v.value();
                file_bytes += raw.len();
                out.insert(k.value(), (decode(raw, ErrorSubject::Logs)?, raw.len()));
            }
        }
        // Read after the file: an entry leaves `pending` only once the file holds it.
        // Once past the bound nothing more is taken: the file's part ends before any gap.
        let mut held = file_bytes;
        for (index, entry) in self.pending().range((from, to)) {
            if held > max_bytes {
                break;
            }
            let bytes = approx_entry_size(entry);
            held = held.saturating_add(bytes);
            out.insert(*index, (entry.clone(), bytes));
        }
        let mut total = 0usize;
        let mut entries = Vec::with_capacity(out.len());
        for (entry, bytes) in out.into_values() {
            total = total.saturating_add(bytes);
            if total > max_bytes && !entries.is_empty() {
                break;
            }
            entries.push(entry);
        }
        Ok(entries)
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + Send>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError> {
        let (from, to) = bounds(&range);
        self.read_entries(from, to, usize::MAX)
    }

    /// Replication's reads: bounded by bytes, so one AppendEntries message stays far below the
    /// peers' message limit however large the entries (openraft sends the rest next).
    async fn limited_get_log_entries(
        &mut self,
        start: u64,
        end: u64,
    ) -> Result<Vec<Entry>, StorageError> {
        self.read_entries(
            Bound::Included(start),
            Bound::Excluded(end),
            self.max_append_bytes,
        )
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
        // A vote must be durable before it is answered: its own synced transaction.
        let raw = encode(vote, ErrorSubject::Vote)?;
        let db = Arc::clone(&self.db);
        let written = tokio::task::spawn_blocking(move || -> Result<(), String> {
            let txn = db.begin_write().map_err(|e| e.to_string())?;
            {
                let mut t = txn.open_table(STATE).map_err(|e| e.to_string())?;
                t.insert(VOTE, raw.as_slice()).map_err(|e| e.to_string())?;
            }
            txn.commit().map_err(|e| e.to_string())
        })
        .await
        .map_err(|e| io_err(ErrorSubject::Vote, ErrorVerb::Write, e))?;
        written.map_err(|e| io_err(ErrorSubject::Vote, ErrorVerb::Write, e))
    }

    /// The persisted vote, as *not yet granted* in this incarnation.
    ///
    /// openraft 0.9 reads the vote only at start-up, and a committed vote there restores the
    /// leadership it names at once (`Engine::startup`): after a whole-cluster restart the old
    /// leader leads again in its old term without appending an entry, and its read index is
    /// `max(its old first entry, the committed hint)`. The hint is written lazily, so it may
    /// lag the last acknowledged write, and a linearizable read could be served before that
    /// write was even re-committed (issue 23: 'read 1-18 at revision 40, but 1-19 was
    /// acknowledged at revision 41'). Followers, too, trust the committed vote's leader.
    ///
    /// Handing the vote back uncommitted keeps what Raft's safety needs (this member still
    /// voted for that leader in that term and cannot vote for a lower one), but no member
    /// assumes a leader after a restart: an election follows, and the new leader appends a
    /// blank entry of its new term, whose commit (and local apply) every read index waits for.
    async fn read_vote(&mut self) -> Result<Option<Vote>, StorageError> {
        let vote: Option<Vote> = self.read_state(VOTE)?;
        Ok(vote.map(|v| Vote::new(v.leader_id().term, v.leader_id().node_id)))
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), StorageError> {
        // A hint for restarts, written with the next group; if the queue is full, skip it.
        let raw = encode(&committed, ErrorSubject::Store)?;
        let _ = self.ops.try_send(Op::Committed(raw));
        Ok(())
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
        let mut own_seq = None;
        {
            let mut pending = self.pending();
            for entry in entries {
                if let EntryPayload::Normal(p) = &entry.payload {
                    if p.is_from(self.own_id, self.incarnation) {
                        own_seq = own_seq.max(Some(p.seq));
                    }
                }
                encoded.push((entry.log_id, encode(&entry, ErrorSubject::Logs)?));
                pending.insert(entry.log_id.index, entry);
            }
        }
        // Raft waits for this call, not for the fsync: the writer reports that through
        // `callback` once the group holding these entries is durable.
        self.ops
            .send(Op::Append {
                entries: encoded,
                own_seq,
                callback,
            })
            .await
            .map_err(|_| stopped(ErrorSubject::Logs))
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError> {
        let from = log_id.index;
        self.pending().retain(|index, _| *index < from);
        self.write_and_wait(ErrorSubject::Logs, |done| Op::Truncate { from, done })
            .await
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError> {
        let record = encode(&Some(log_id), ErrorSubject::Store)?;
        let upto = log_id.index;
        self.pending().retain(|index, _| *index > upto);
        self.write_and_wait(ErrorSubject::Logs, |done| Op::Purge { upto, record, done })
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(index: u64, value_bytes: usize) -> Entry {
        crate::test_support::put_entry(index, value_bytes)
    }

    #[tokio::test]
    async fn replication_reads_are_bounded_by_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let (mut log, closer) = LogStore::open(&dir.path().join("log.redb"), 1, 1).unwrap();
        // The 4 MiB bound scaled down: 32 entries of 48 KiB are 1.5 MiB.
        log.max_append_bytes = 256 << 10;
        // Half the entries in the file, the rest still pending, as replication finds them.
        {
            let txn = log.db.begin_write().unwrap();
            {
                let mut table = txn.open_table(LOG).unwrap();
                for i in 1..=16 {
                    let raw = encode(&entry(i, 48 << 10), ErrorSubject::Logs).unwrap();
                    table.insert(i, raw.as_slice()).unwrap();
                }
            }
            txn.commit().unwrap();
        }
        for i in 17..=32 {
            log.pending().insert(i, entry(i, 48 << 10));
        }
        let mut start = 1;
        let mut messages = 0;
        while start <= 32 {
            let got = log.limited_get_log_entries(start, 33).await.unwrap();
            let indexes: Vec<u64> = got.iter().map(|e| e.log_id.index).collect();
            let bytes: usize = got.iter().map(approx_entry_size).sum();
            assert!(
                !got.is_empty() && bytes <= 256 << 10,
                "from {start}: entries {indexes:?}, {bytes} bytes"
            );
            assert_eq!(
                indexes,
                (start..start + got.len() as u64).collect::<Vec<_>>(),
                "a contiguous run from {start}"
            );
            start += got.len() as u64;
            messages += 1;
        }
        assert!(messages >= 6, "1.5 MiB in {messages} messages of 256 KiB");
        // One entry over the bound still goes, alone.
        log.pending().insert(33, entry(33, 1 << 20));
        let got = log.limited_get_log_entries(33, 34).await.unwrap();
        assert_eq!(got.len(), 1);
        // Every other read is whole.
        assert_eq!(log.try_get_log_entries(1..34).await.unwrap().len(), 33);
        tokio::task::spawn_blocking(move || closer.close())
            .await
            .unwrap();
    }
}
