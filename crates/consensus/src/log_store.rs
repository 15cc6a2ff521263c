//! The Raft log: entries are durable before Raft is told they are, with group commit, in the
//! checksummed segment files of [`crate::wal`].
//!
//! openraft calls `append` for each batch of entries and waits for the call, not for the fsync.
//! So `append` only queues the entries (keeping them readable in memory meanwhile) and returns;
//! one writer thread takes every write waiting, writes them in order with one fdatasync, and
//! only then tells Raft, through each append's callback, that they are durable. Under load one
//! fdatasync covers every entry appended while the previous one ran.
//!
//! The vote, the last purged log id and the committed hint live in the log directory's small
//! state file, replaced atomically; the committed hint also rides along in the segments with
//! the next group (a hint: a restart that misses it only replays a little more).
//!
//! A data dir from before this log holds `raft-log.redb`: it is migrated once, at start, into
//! the segment files, and removed only once they are durable (a crash in between migrates
//! again).

// openraft's storage traits dictate `io::Error` as the error type, large as it is.
#![allow(clippy::result_large_err)]

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::io;
use std::ops::{Bound, RangeBounds};
use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

use openraft::storage::{IOFlushed, RaftLogReader, RaftLogStorage};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot, watch};

use crate::floor::{Floor, Held, HELD_PURGES_FAILED};
use crate::stages::Stage;
use crate::types::typ::{Entry, EntryPayload, LogId, LogState, Vote};
use crate::types::{MemberId, TypeConfig};
use crate::wal::{Head, RecordRef, Wal};

/// Log writes waiting for the writer thread at most; `append` waits for room beyond that.
const QUEUE: usize = 16_384;
/// Writes the writer thread folds into one synced group at most.
const GROUP: usize = 4_096;
/// Bytes of entries one replication message carries at most (but always one entry): one full
/// batch, far below the peers' message limit and small enough to cross within one RPC's time
/// (openraft bounds a unary AppendEntries by the heartbeat interval). Like etcd's
/// `MaxSizePerMsg`, for entries that are batches of up to a few MiB each.
pub(crate) const MAX_APPEND_BYTES: usize = crate::batcher::MAX_BATCH_BYTES;

/// Where an entry is: in memory until the writer has written it, then in its segment.
#[derive(Clone)]
enum Slot {
    Mem(Entry),
    File { log_id: LogId, rec: RecordRef },
}

impl Slot {
    fn log_id(&self) -> LogId {
        match self {
            Slot::Mem(e) => e.log_id,
            Slot::File { log_id, .. } => *log_id,
        }
    }
}

/// Every entry in the log, by index.
type Index = Arc<Mutex<BTreeMap<u64, Slot>>>;

/// What the state file holds.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
struct Meta {
    vote: Option<Vote>,
    purged: Option<LogId>,
    committed: Option<LogId>,
}

/// The state file's content for these values (the redb migration writes it too).
pub(crate) fn meta_blob(
    vote: Option<Vote>,
    purged: Option<LogId>,
    committed: Option<LogId>,
) -> Result<Vec<u8>, String> {
    Meta {
        vote,
        purged,
        committed,
    }
    .blob()
}

impl Meta {
    fn blob(&self) -> Result<Vec<u8>, String> {
        let rest = bincode::serialize(self).map_err(|e| e.to_string())?;
        Ok(crate::wal::state_blob(self.purged.map(|p| p.index), &rest))
    }
}

/// Who learns that appended entries are durable.
enum Notify {
    /// Raft, through the append's callback.
    Raft(IOFlushed<TypeConfig>),
    /// A caller of our own (openraft keeps `LogFlushed::new` to itself).
    Done(oneshot::Sender<Result<(), String>>),
}

/// A write for the writer thread, applied in queue order.
enum Op {
    /// Append encoded entries, then tell Raft they are durable.
    Append {
        entries: Vec<(LogId, Vec<u8>)>,
        /// The highest batch number of this member's own proposals among them.
        own_seq: Option<u64>,
        /// This member's own proposals among them, for [`crate::stages`].
        own: Vec<crate::stages::Key>,
        callback: Notify,
    },
    /// Remove entries from `from` on.
    Truncate {
        from: u64,
        done: oneshot::Sender<Result<(), String>>,
    },
    /// Remove entries up to `upto` and remember it.
    Purge {
        upto: LogId,
        done: oneshot::Sender<Result<(), String>>,
    },
    /// Save the vote durably.
    Vote {
        vote: Vote,
        done: oneshot::Sender<Result<(), String>>,
    },
    /// Remember the committed log id (a hint: durable with the next synced write).
    Committed(Option<LogId>),
    /// Finish what is queued, seal the log, then stop.
    Stop,
}

/// Whether the log's disk has room for the next writes, checked before each entry is proposed.
///
/// Every segment is preallocated, so appending into the active one cannot run out of space;
/// only the next segment's creation can. A proposal is therefore taken only while a whole
/// segment and a whole entry more are free, and refused before anything is appended
/// otherwise ([`crate::ProposeError::DiskFull`]). A write the log's writer fails anyway (the
/// disk filled faster than that margin) still stops Raft, as any log write failure does.
///
/// A `statvfs` per batch was 0.6 % of a member's CPU under small puts, so a measurement that
/// found twice the margin free is trusted for [`TRUST_FOR`] and [`TRUST_BYTES`] of batches, no
/// more than one check per batch let through after a sudden fill.
#[derive(Clone, Debug)]
pub(crate) struct Space {
    dir: std::path::PathBuf,
    needed: u64,
    /// Until when, and for how many more bytes, the last plentiful measurement holds.
    trusted: Arc<Mutex<Option<(Instant, u64)>>>,
}

/// How long a measurement of plenty of room is trusted.
const TRUST_FOR: std::time::Duration = std::time::Duration::from_millis(50);
/// Bytes of batches a measurement of plenty of room is trusted for: one full batch.
const TRUST_BYTES: u64 = crate::batcher::MAX_BATCH_BYTES as u64;

/// The log's disk lacks room: its directory, bytes free, bytes needed.
#[derive(Clone, Debug)]
pub(crate) struct Full {
    pub(crate) path: String,
    pub(crate) free: u64,
    pub(crate) needed: u64,
}

impl Space {
    /// `Ok` while the log's filesystem has the margin free for a batch of `bytes`; an
    /// unreadable filesystem is not taken for a full one (the write itself will say what is
    /// wrong).
    pub(crate) fn check(&self, bytes: u64) -> Result<(), Full> {
        let mut trusted = self.trusted.lock().unwrap_or_else(PoisonError::into_inner);
        let now = Instant::now();
        if let Some((until, left)) = trusted.as_mut() {
            if now < *until && *left >= bytes {
                *left -= bytes;
                return Ok(());
            }
        }
        *trusted = None;
        let Ok(st) = rustix::fs::statvfs(&self.dir) else {
            return Ok(());
        };
        let free = st.f_bavail.saturating_mul(st.f_frsize);
        if free >= self.needed.saturating_mul(2) {
            *trusted = Some((now + TRUST_FOR, TRUST_BYTES.saturating_sub(bytes)));
        }
        if free >= self.needed {
            Ok(())
        } else {
            Err(Full {
                path: self.dir.display().to_string(),
                free,
                needed: self.needed,
            })
        }
    }
}

/// The Raft log and vote, in their own directory. Cheap to clone; clones share the files.
#[derive(Clone)]
pub struct LogStore {
    index: Index,
    meta: Arc<Mutex<Meta>>,
    ops: mpsc::Sender<Op>,
    /// This member's id and incarnation: its own proposals since this start are the ones
    /// whose flush it reports (an earlier start numbered its batches from 1 too).
    own_id: u64,
    incarnation: u64,
    flushed: watch::Receiver<u64>,
    /// What one replication read returns at most, in bytes ([`MAX_APPEND_BYTES`]).
    max_append_bytes: usize,
    space: Space,
    /// How far a purge may reach the disk ([`Floor`]).
    floor: Arc<Floor>,
}

/// Stops the writer thread, so the log files are closed once Raft lets go of them.
pub struct LogCloser {
    ops: mpsc::Sender<Op>,
    floor: Arc<Floor>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl LogCloser {
    /// Writes what is queued, seals the log, and joins the writer thread.
    pub fn close(mut self) {
        // A purge still waiting for the engine is left off the disk, as a crash would.
        self.floor.close();
        // Closed means the thread has already gone.
        let _ = self.ops.blocking_send(Op::Stop);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn head(log_id: &LogId) -> Head {
    Head {
        index: log_id.index,
        term: log_id.leader_id.term,
        node: log_id.leader_id.node_id.0,
    }
}

/// The only writer of the log: takes every write waiting, applies them in order, makes them
/// durable with one fdatasync, then reports each. After a failed write nothing more is
/// written: what the files hold is no longer known, and Raft stops on the error anyway.
fn run_writer(
    mut wal: Wal,
    mut meta: Meta,
    index: Index,
    mut ops: mpsc::Receiver<Op>,
    flushed: watch::Sender<u64>,
    floor: Arc<Floor>,
) {
    let mut failed: Option<String> = None;
    while let Some(first) = ops.blocking_recv() {
        let mut group = vec![first];
        while group.len() < GROUP {
            match ops.try_recv() {
                Ok(op) => group.push(op),
                Err(_) => break,
            }
        }
        let stop = group.iter().any(|op| matches!(op, Op::Stop));
        let own = || {
            group.iter().flat_map(|op| match op {
                Op::Append { own, .. } => own.as_slice(),
                _ => &[],
            })
        };
        crate::stages::mark(own().copied(), Stage::WriteStart, Instant::now());
        let mut written = Vec::new();
        let result = match &failed {
            Some(e) => Err(e.clone()),
            None => write_group(&mut wal, &mut meta, &floor, &group, &mut written, || {
                crate::stages::mark(own().copied(), Stage::SyncStart, Instant::now());
            }),
        };
        if result.is_ok() {
            crate::stages::mark(own().copied(), Stage::Synced, Instant::now());
        }
        if let Err(e) = &result {
            if failed.is_none() {
                tracing::error!(cause = %e, "the Raft log cannot be written; it stops");
                failed = Some(e.clone());
            }
        } else {
            let mut index = index.lock().unwrap_or_else(PoisonError::into_inner);
            for (log_id, rec) in written {
                // Only this very entry: a truncate may have replaced the index since.
                if let Some(slot) = index.get_mut(&log_id.index) {
                    if matches!(slot, Slot::Mem(e) if e.log_id == log_id) {
                        *slot = Slot::File { log_id, rec };
                    }
                }
            }
        }
        let mut own_seq = None;
        for op in group {
            match op {
                Op::Append {
                    own_seq: seq,
                    callback,
                    ..
                } => {
                    own_seq = own_seq.max(seq);
                    match callback {
                        Notify::Raft(cb) => {
                            cb.io_completed(result.clone().map_err(std::io::Error::other))
                        }
                        Notify::Done(done) => {
                            let _ = done.send(result.clone());
                        }
                    }
                }
                Op::Truncate { done, .. } | Op::Purge { done, .. } | Op::Vote { done, .. } => {
                    let _ = done.send(result.clone());
                }
                Op::Committed(_) | Op::Stop => {}
            }
        }
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
            if failed.is_none() {
                if let Err(e) = wal.seal() {
                    tracing::warn!(cause = %e, "the Raft log could not be sealed at close");
                }
            }
            return;
        }
    }
}

fn write_group(
    wal: &mut Wal,
    meta: &mut Meta,
    floor: &Floor,
    group: &[Op],
    written: &mut Vec<(LogId, RecordRef)>,
    before_sync: impl FnOnce(),
) -> Result<(), String> {
    let mut appended = false;
    for op in group {
        match op {
            Op::Append { entries, .. } => {
                for (log_id, raw) in entries {
                    let rec = wal
                        .append_entry(head(log_id), raw)
                        .map_err(|e| e.to_string())?;
                    written.push((*log_id, rec));
                }
                appended = true;
            }
            Op::Truncate { from, .. } => wal.truncate(*from).map_err(|e| e.to_string())?,
            Op::Purge { upto, .. } => {
                // Never past what the state machine holds durably: a crash must not leave a
                // log that starts after the engine's position (see `floor`). Nor may what
                // follows be written without it: entries after the snapshot's point would
                // follow a gap. A purge that cannot wait longer stops the log here.
                match floor.wait_until_allows(*upto) {
                    Held::Allowed => {}
                    Held::Closed => {
                        metrics::counter!(HELD_PURGES_FAILED, "reason" => "closed").increment(1);
                        return Err(format!(
                            "a purge up to {upto} waited for the state machine, which stopped \
                             first: the log stops before it"
                        ));
                    }
                    Held::Expired { at, limit } => {
                        metrics::counter!(HELD_PURGES_FAILED, "reason" => "expired").increment(1);
                        return Err(format!(
                            "the state machine has not reached {upto} in {limit:?} (it holds \
                             {}): the log stops rather than purge past it or write after a gap",
                            at.map_or_else(|| "nothing".to_string(), |at| at.to_string())
                        ));
                    }
                }
                // The state names the purged id before any segment goes: recovery skips what
                // the remaining segments still hold up to it.
                meta.purged = Some(*upto);
                wal.write_state(&meta.blob()?).map_err(|e| e.to_string())?;
                wal.purge(upto.index).map_err(|e| e.to_string())?;
            }
            Op::Vote { vote, .. } => {
                meta.vote = Some(*vote);
                wal.write_state(&meta.blob()?).map_err(|e| e.to_string())?;
            }
            Op::Committed(committed) => {
                meta.committed = *committed;
                let raw = bincode::serialize(committed).map_err(|e| e.to_string())?;
                wal.append_committed(&raw).map_err(|e| e.to_string())?;
            }
            Op::Stop => {}
        }
    }
    // Only the committed hint may go unsynced: the next synced group makes it durable.
    if appended {
        wal.flush().map_err(|e| e.to_string())?;
        before_sync();
        wal.sync().map_err(|e| e.to_string())
    } else {
        wal.flush().map_err(|e| e.to_string())
    }
}

fn io_err(subject: impl std::fmt::Display, verb: &str, e: impl ToString) -> io::Error {
    io::Error::other(format!("cannot {verb} {subject}: {}", e.to_string()))
}

fn encode<T: Serialize>(v: &T, subject: impl std::fmt::Display) -> Result<Vec<u8>, io::Error> {
    bincode::serialize(v).map_err(|e| io_err(subject, "write", e))
}

fn decode<T: DeserializeOwned>(
    raw: &[u8],
    subject: impl std::fmt::Display,
) -> Result<T, io::Error> {
    bincode::deserialize(raw).map_err(|e| io_err(subject, "read", e))
}

fn stopped(subject: impl std::fmt::Display) -> io::Error {
    io_err(subject, "write", "the raft log writer has stopped")
}

impl LogStore {
    /// Opens (or creates) the log in directory `dir`, with the handle that closes it.
    ///
    /// # Errors
    /// The files cannot be read, or hold something a crash cannot have left (the error names
    /// the file and offset).
    pub fn open(dir: &Path, own_id: u64, incarnation: u64) -> Result<(Self, LogCloser), String> {
        Self::open_with(dir, own_id, incarnation, crate::wal::SEGMENT_BYTES)
    }

    /// Opens the log in `log_dir`/`raft-log`, first migrating `log_dir`/`raft-log.redb` (the
    /// log before segment files) into it if that is there.
    ///
    /// # Errors
    /// As [`LogStore::open`], or the old log cannot be read.
    pub fn open_in(
        log_dir: &Path,
        own_id: u64,
        incarnation: u64,
    ) -> Result<(Self, LogCloser), String> {
        let dir = log_dir.join(crate::marker::RAFT_LOG);
        let legacy = log_dir.join(crate::marker::LEGACY_RAFT_LOG);
        if legacy
            .try_exists()
            .map_err(|e| format!("{}: {e}", legacy.display()))?
        {
            crate::redb_log::migrate(&legacy, &dir)?;
        }
        Self::open(&dir, own_id, incarnation)
    }

    pub(crate) fn open_with(
        dir: &Path,
        own_id: u64,
        incarnation: u64,
        segment_bytes: u64,
    ) -> Result<(Self, LogCloser), String> {
        let (wal, recovered) = Wal::open(dir, segment_bytes).map_err(|e| e.to_string())?;
        let state_path = || dir.join("state").display().to_string();
        let mut meta: Meta = match &recovered.state {
            Some(blob) => bincode::deserialize(crate::wal::state_rest(blob))
                .map_err(|e| format!("{}: {e}", state_path()))?,
            None => Meta::default(),
        };
        if let Some(raw) = &recovered.committed {
            let committed: Option<LogId> = bincode::deserialize(raw)
                .map_err(|e| format!("{}: a committed hint: {e}", dir.display()))?;
            meta.committed = meta.committed.max(committed);
        }
        let mut index = BTreeMap::new();
        for e in recovered.entries {
            let log_id = crate::types::typ::log_id(e.head.term, e.head.node, e.head.index);
            index.insert(e.head.index, Slot::File { log_id, rec: e.rec });
        }
        let index: Index = Arc::new(Mutex::new(index));
        let (ops, queue) = mpsc::channel(QUEUE);
        let (flushed_tx, flushed) = watch::channel(0);
        let (writer_index, writer_meta) = (Arc::clone(&index), meta.clone());
        let floor = Arc::new(Floor::default());
        let writer_floor = Arc::clone(&floor);
        let thread = std::thread::Builder::new()
            .name("raft-log-writer".into())
            .spawn(move || {
                run_writer(
                    wal,
                    writer_meta,
                    writer_index,
                    queue,
                    flushed_tx,
                    writer_floor,
                )
            })
            .map_err(|e| e.to_string())?;
        let closer = LogCloser {
            ops: ops.clone(),
            floor: Arc::clone(&floor),
            thread: Some(thread),
        };
        Ok((
            Self {
                index,
                meta: Arc::new(Mutex::new(meta)),
                ops,
                own_id,
                incarnation,
                flushed,
                max_append_bytes: MAX_APPEND_BYTES,
                space: Space {
                    dir: dir.to_path_buf(),
                    needed: segment_bytes.saturating_add(crate::batcher::MAX_BATCH_BYTES as u64),
                    trusted: Arc::default(),
                },
                floor,
            },
            closer,
        ))
    }

    /// etcd's `--force-new-cluster`, before Raft starts: appends a membership entry naming
    /// `own_id` (as `member`) as the only voter, in a term above every term seen, and votes for
    /// this member in that term: the entry synced first, then the vote. Raft then starts on a one-member
    /// configuration, elects this member, and its first entry commits the forced membership
    /// and every entry before it. Returns the new entry's log id.
    ///
    /// Unlike etcd, which drops the entries past the commit index it knows, they are kept: a
    /// follower's commit index may lag writes the leader had acknowledged, and keeping them
    /// loses none of those (they commit with the forced entry).
    ///
    /// # Errors
    /// The log cannot be read or written.
    pub(crate) async fn force_single_member(
        &mut self,
        own_id: u64,
        member: crate::types::Member,
    ) -> Result<LogId, String> {
        let (purged, vote) = {
            let meta = self.meta();
            (meta.purged, meta.vote)
        };
        let last = self
            .index()
            .last_key_value()
            .map(|(_, s)| s.log_id())
            .or(purged);
        let term = vote
            .map(|v| v.leader_id().term)
            .max(last.map(|l| l.leader_id.term))
            .unwrap_or(0)
            + 1;
        let index = last.map_or(1, |l| l.index + 1);
        let log_id = crate::types::typ::log_id(term, own_id, index);
        let membership = openraft::Membership::new(
            vec![std::collections::BTreeSet::from([MemberId(own_id)])],
            BTreeMap::from([(MemberId(own_id), member)]),
        )
        .map_err(|e| e.to_string())?;
        let entry = Entry {
            log_id,
            payload: EntryPayload::Membership(membership),
        };
        let (done, durable) = oneshot::channel();
        self.queue_append([entry], Notify::Done(done))
            .await
            .map_err(|e| e.to_string())?;
        durable
            .await
            .map_err(|_| "the log writer stopped".to_string())??;
        self.save_vote(&Vote::new(term, MemberId(own_id)))
            .await
            .map_err(|e| e.to_string())?;
        Ok(log_id)
    }

    /// A check that always finds room (for tests of other parts).
    #[cfg(test)]
    pub(crate) fn unlimited_space() -> Space {
        Space {
            dir: std::path::PathBuf::from("/"),
            needed: 0,
            trusted: Arc::default(),
        }
    }

    /// The check of the log disk's room.
    pub(crate) fn space(&self) -> Space {
        self.space.clone()
    }

    /// How far a purge may reach the disk, for the state machine to raise.
    pub(crate) fn floor(&self) -> Arc<Floor> {
        Arc::clone(&self.floor)
    }

    /// The highest batch number of this member's own proposals that the log holds durably.
    pub(crate) fn flushed(&self) -> watch::Receiver<u64> {
        self.flushed.clone()
    }

    /// The index of the last entry Raft has handed to this log, written or not yet.
    ///
    /// # Errors
    /// None today (the index is in memory); kept fallible for log stores that read a file.
    pub(crate) fn last_index(&self) -> Result<Option<u64>, io::Error> {
        Ok(self.index().last_key_value().map(|(i, _)| *i))
    }

    fn index(&self) -> std::sync::MutexGuard<'_, BTreeMap<u64, Slot>> {
        self.index.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn meta(&self) -> std::sync::MutexGuard<'_, Meta> {
        self.meta.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Queues `op` and waits for the writer to report it done.
    async fn write_and_wait(
        &self,
        subject: &'static str,
        op: impl FnOnce(oneshot::Sender<Result<(), String>>) -> Op,
    ) -> Result<(), io::Error> {
        let (done, answer) = oneshot::channel();
        self.ops
            .send(op(done))
            .await
            .map_err(|_| stopped(subject))?;
        match answer.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(io_err(subject, "write", e)),
            Err(_) => Err(stopped(subject)),
        }
    }
}

fn bounds<RB: RangeBounds<u64>>(range: &RB) -> (Bound<u64>, Bound<u64>) {
    (range.start_bound().cloned(), range.end_bound().cloned())
}

/// What an entry weighs in a replication message, about: its commands' bytes.
pub(crate) fn approx_entry_size(entry: &Entry) -> usize {
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
    ) -> Result<Vec<Entry>, io::Error> {
        if let (Bound::Included(a) | Bound::Excluded(a), Bound::Included(b) | Bound::Excluded(b)) =
            (from, to)
        {
            if a > b || (a == b && (from != Bound::Included(a) || to != Bound::Included(b))) {
                return Ok(Vec::new());
            }
        }
        // Pick the slots under the lock, read the files after it.
        let mut slots = Vec::new();
        {
            let index = self.index();
            let mut total = 0usize;
            for slot in index.range((from, to)).map(|(_, s)| s) {
                let bytes = match slot {
                    Slot::Mem(e) => approx_entry_size(e),
                    Slot::File { rec, .. } => rec.len as usize,
                };
                total = total.saturating_add(bytes);
                if total > max_bytes && !slots.is_empty() {
                    break;
                }
                slots.push(slot.clone());
            }
        }
        let mut entries = Vec::with_capacity(slots.len());
        for slot in slots {
            match slot {
                Slot::Mem(e) => entries.push(e),
                Slot::File { log_id, rec } => {
                    let raw = rec
                        .read()
                        .map_err(|e| io_err(format!("log entry {log_id}"), "read", e))?;
                    entries.push(decode(&raw, format!("log entry {log_id}"))?);
                }
            }
        }
        Ok(entries)
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    /// The persisted vote. (A restarted leader does not lead again without an election:
    /// `enable_leader_restore` is off, see `NodeConfig::raft_config`.)
    async fn read_vote(&mut self) -> Result<Option<Vote>, io::Error> {
        Ok(self.meta().vote)
    }

    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + Send>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, io::Error> {
        let (from, to) = bounds(&range);
        self.read_entries(from, to, usize::MAX)
    }

    /// Replication's reads: bounded by bytes, so one AppendEntries message stays far below the
    /// peers' message limit however large the entries (openraft sends the rest next).
    async fn limited_get_log_entries(
        &mut self,
        start: u64,
        end: u64,
    ) -> Result<Vec<Entry>, io::Error> {
        self.read_entries(
            Bound::Included(start),
            Bound::Excluded(end),
            self.max_append_bytes,
        )
    }
}

impl LogStore {
    /// Puts `entries` in the log (readable at once) and queues them for the writer, which
    /// tells `notify` once they are durable.
    async fn queue_append<I>(&self, entries: I, notify: Notify) -> Result<(), io::Error>
    where
        I: IntoIterator<Item = Entry> + Send,
        I::IntoIter: Send,
    {
        let now = Instant::now();
        let mut encoded = Vec::new();
        let mut own_seq = None;
        let mut own = Vec::new();
        {
            let mut index = self.index();
            for entry in entries {
                if let EntryPayload::Normal(p) = &entry.payload {
                    if p.is_from(self.own_id, self.incarnation) {
                        own_seq = own_seq.max(Some(p.seq));
                        own.push((self.own_id, self.incarnation, p.seq));
                    }
                }
                encoded.push((entry.log_id, encode(&entry, "the Raft log")?));
                index.insert(entry.log_id.index, Slot::Mem(entry));
            }
        }
        crate::stages::mark(own.iter().copied(), Stage::Appended, now);
        // Raft waits for this call, not for the fsync: the writer reports that through
        // `callback` once the group holding these entries is durable.
        self.ops
            .send(Op::Append {
                entries: encoded,
                own_seq,
                own,
                callback: notify,
            })
            .await
            .map_err(|_| stopped("the Raft log"))
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState, io::Error> {
        let last_purged_log_id = self.meta().purged;
        let last = self.index().last_key_value().map(|(_, s)| s.log_id());
        Ok(LogState {
            last_purged_log_id,
            last_log_id: last.or(last_purged_log_id),
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), io::Error> {
        // A vote must be durable before it is answered: the state file is synced.
        let vote = *vote;
        self.write_and_wait("the vote", |done| Op::Vote { vote, done })
            .await?;
        self.meta().vote = Some(vote);
        Ok(())
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), io::Error> {
        // A hint for restarts, written with the next group; if the queue is full, skip it.
        self.meta().committed = committed;
        if let Some(c) = committed {
            metrics::gauge!(crate::metrics::PROPOSALS_COMMITTED).set(c.index as f64);
        }
        let _ = self.ops.try_send(Op::Committed(committed));
        Ok(())
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, io::Error> {
        Ok(self.meta().committed)
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: IOFlushed<TypeConfig>,
    ) -> Result<(), io::Error>
    where
        I: IntoIterator<Item = Entry> + Send,
        I::IntoIter: Send,
    {
        self.queue_append(entries, Notify::Raft(callback)).await
    }

    async fn truncate_after(&mut self, last_log_id: Option<LogId>) -> Result<(), io::Error> {
        let from = last_log_id.map_or(0, |l| l.index + 1);
        drop(self.index().split_off(&from));
        self.write_and_wait("the Raft log", |done| Op::Truncate { from, done })
            .await
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), io::Error> {
        let upto = log_id.index;
        {
            let mut index = self.index();
            let kept = index.split_off(&upto.saturating_add(1));
            *index = kept;
        }
        self.meta().purged = Some(log_id);
        if !self.floor.allows(log_id) {
            // openraft purges as it hands a snapshot to the state machine, before the install:
            // the writer persists the purge once the engine holds the point, and Raft goes on
            // meanwhile (an error shows at the next write).
            let (done, _) = oneshot::channel();
            return self
                .ops
                .send(Op::Purge { upto: log_id, done })
                .await
                .map_err(|_| stopped("the Raft log"));
        }
        self.write_and_wait("the Raft log", |done| Op::Purge { upto: log_id, done })
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use openraft::testing::log::{StoreBuilder, Suite};

    fn entry(index: u64, value_bytes: usize) -> Entry {
        crate::test_support::put_entry(index, value_bytes)
    }

    /// Appends `entries` and waits until they are durable, as Raft does.
    async fn append_durably(log: &mut LogStore, entries: Vec<Entry>) {
        let (tx, rx) = oneshot::channel();
        log.queue_append(entries, Notify::Done(tx)).await.unwrap();
        rx.await.unwrap().unwrap();
    }

    async fn close(closer: LogCloser) {
        tokio::task::spawn_blocking(move || closer.close())
            .await
            .unwrap();
    }

    fn indexes(entries: &[Entry]) -> Vec<u64> {
        entries.iter().map(|e| e.log_id.index).collect()
    }

    /// A measurement of plenty of room lets through no more than one full batch unmeasured,
    /// and a disk found short of room is measured again at the next check.
    #[test]
    fn the_room_measured_is_trusted_for_one_batch_at_most() {
        let dir = tempfile::tempdir().unwrap();
        let mut space = Space {
            dir: dir.path().to_path_buf(),
            needed: 1,
            trusted: Arc::default(),
        };
        space.check(1).unwrap();
        // The disk fills at once: the margin now exceeds any disk.
        space.needed = u64::MAX / 2;
        let full = space.check(TRUST_BYTES).unwrap_err();
        assert_eq!(full.needed, u64::MAX / 2);
        assert!(space.check(1).is_err(), "a full disk is not trusted");
        space.needed = 1;
        space.check(TRUST_BYTES).unwrap();
    }

    /// A log of entries 1 to `last` whose state machine holds 5 durably, asked to purge up to
    /// 50 as openraft does when it hands a snapshot at 50 to the state machine; the purge waits
    /// `limit` at most.
    async fn with_a_held_purge(
        path: &Path,
        last: u64,
        limit: std::time::Duration,
    ) -> (LogStore, LogCloser) {
        let (mut log, closer) = LogStore::open_with(path, 1, 1, 4096).unwrap();
        append_durably(&mut log, (1..=last).map(|i| entry(i, 200)).collect()).await;
        log.floor().attach(Some(entry(5, 0).log_id));
        log.floor().set_limit(limit);
        log.purge(entry(50, 0).log_id).await.unwrap();
        (log, closer)
    }

    /// Builds the log under test beside the state machine the member runs.
    struct Builder;

    impl StoreBuilder<TypeConfig, LogStore, crate::StateMachine<engine_mem::MemBackend>, Guard>
        for Builder
    {
        async fn build(
            &self,
        ) -> Result<
            (Guard, LogStore, crate::StateMachine<engine_mem::MemBackend>),
            openraft::StorageError<TypeConfig>,
        > {
            let dir = tempfile::tempdir().unwrap();
            // Small segments: the suite's logs span several.
            let (log, closer) =
                LogStore::open_with(&dir.path().join("raft-log"), 1, 1, 512).unwrap();
            let store = mvcc::Store::open(engine_mem::MemBackend::new()).unwrap();
            let sm = crate::StateMachine::open(
                store,
                crate::state_machine::Proposer {
                    node_id: 1,
                    incarnation: 1,
                    waiters: deadline::Registry::new("suite"),
                    alarms: Default::default(),
                    auth: Default::default(),
                },
                dir.path().join("snapshots"),
                Arc::new(crate::lessor::Lessor::default()),
                std::time::Duration::from_secs(1),
                crate::compaction::Removal::new(0),
            )
            .unwrap();
            Ok((Guard(Some(closer), dir), log, sm))
        }
    }

    /// Keeps the directory until the test is done, then stops the writer.
    struct Guard(Option<LogCloser>, #[allow(dead_code)] tempfile::TempDir);

    impl Drop for Guard {
        fn drop(&mut self) {
            if let Some(closer) = self.0.take() {
                // The suite drops this inside its runtime: close from a plain thread.
                let _ = std::thread::spawn(move || closer.close()).join();
            }
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn openraft_storage_conformance_suite() {
        Suite::test_all(Builder).await.unwrap();
    }

    #[tokio::test]
    async fn replication_reads_are_bounded_by_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let (mut log, closer) = LogStore::open(&dir.path().join("raft-log"), 1, 1).unwrap();
        // The 4 MiB bound scaled down: 32 entries of 48 KiB are 1.5 MiB.
        log.max_append_bytes = 256 << 10;
        // Half the entries in the files, the rest still in memory, as replication finds them.
        append_durably(&mut log, (1..=16).map(|i| entry(i, 48 << 10)).collect()).await;
        for i in 17..=32 {
            log.index().insert(i, Slot::Mem(entry(i, 48 << 10)));
        }
        let mut start = 1;
        let mut messages = 0;
        while start <= 32 {
            let got = log.limited_get_log_entries(start, 33).await.unwrap();
            let bytes: usize = got.iter().map(approx_entry_size).sum();
            assert!(
                !got.is_empty() && bytes <= 256 << 10,
                "from {start}: entries {:?}, {bytes} bytes",
                indexes(&got)
            );
            assert_eq!(
                indexes(&got),
                (start..start + got.len() as u64).collect::<Vec<_>>(),
                "a contiguous run from {start}"
            );
            start += got.len() as u64;
            messages += 1;
        }
        assert!(messages >= 6, "1.5 MiB in {messages} messages of 256 KiB");
        // One entry over the bound still goes, alone.
        log.index().insert(33, Slot::Mem(entry(33, 1 << 20)));
        let got = log.limited_get_log_entries(33, 34).await.unwrap();
        assert_eq!(got.len(), 1);
        // Every other read is whole.
        assert_eq!(log.try_get_log_entries(1..34).await.unwrap().len(), 33);
        close(closer).await;
    }

    #[tokio::test]
    async fn the_log_vote_and_hints_survive_a_reopen_after_truncate_and_purge() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("raft-log");
        let vote = Vote::new(7, crate::MemberId(3));
        {
            let (mut log, closer) = LogStore::open_with(&path, 1, 1, 4096).unwrap();
            append_durably(&mut log, (1..=60).map(|i| entry(i, 200)).collect()).await;
            log.truncate_after(Some(entry(44, 0).log_id)).await.unwrap();
            append_durably(&mut log, (45..=50).map(|i| entry(i, 300)).collect()).await;
            log.purge(entry(20, 0).log_id).await.unwrap();
            log.save_vote(&vote).await.unwrap();
            log.save_committed(Some(entry(48, 0).log_id)).await.unwrap();
            close(closer).await;
        }
        let (mut log, closer) = LogStore::open_with(&path, 1, 1, 4096).unwrap();
        let state = log.get_log_state().await.unwrap();
        assert_eq!(state.last_purged_log_id, Some(entry(20, 0).log_id));
        assert_eq!(state.last_log_id, Some(entry(50, 0).log_id));
        let got = log.try_get_log_entries(0..100).await.unwrap();
        assert_eq!(indexes(&got), (21..=50).collect::<Vec<_>>());
        assert_eq!(got[30 - 21], entry(30, 200));
        assert_eq!(got[46 - 21], entry(46, 300));
        assert_eq!(log.read_vote().await.unwrap(), Some(vote));
        assert_eq!(
            log.read_committed().await.unwrap(),
            Some(entry(48, 0).log_id)
        );
        close(closer).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_purge_reaches_the_disk_only_up_to_what_the_state_machine_holds() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("raft-log");
        let id = |i| entry(i, 0).log_id;
        {
            // The purge first, then the install; the member dies before the install commits.
            let (mut log, closer) = with_a_held_purge(&path, 60, crate::floor::HOLD_LIMIT).await;
            let state = log.get_log_state().await.unwrap();
            assert_eq!(state.last_purged_log_id, Some(id(50)));
            close(closer).await;
        }
        {
            let (mut log, closer) = LogStore::open_with(&path, 1, 1, 4096).unwrap();
            let state = log.get_log_state().await.unwrap();
            assert_eq!(state.last_purged_log_id, None, "purged past the engine");
            let got = log.try_get_log_entries(0..100).await.unwrap();
            assert_eq!(indexes(&got), (1..=60).collect::<Vec<_>>());
            // This time the install commits: the purge goes to disk, before what follows it.
            let floor = log.floor();
            floor.attach(Some(id(5)));
            log.purge(id(50)).await.unwrap();
            floor.raise(Some(id(50)));
            append_durably(&mut log, vec![entry(61, 200)]).await;
            close(closer).await;
        }
        let (mut log, closer) = LogStore::open_with(&path, 1, 1, 4096).unwrap();
        let state = log.get_log_state().await.unwrap();
        assert_eq!(state.last_purged_log_id, Some(id(50)));
        let got = log.try_get_log_entries(0..100).await.unwrap();
        assert_eq!(indexes(&got), (51..=61).collect::<Vec<_>>());
        close(closer).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_write_behind_a_purge_the_state_machine_never_reaches_ends_within_a_bound() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("raft-log");
        let id = |i| entry(i, 0).log_id;
        {
            // openraft appends after the snapshot's point (50), but the state machine never
            // gets there (an engine stuck before the install).
            let limit = std::time::Duration::from_millis(300);
            let (log, closer) = with_a_held_purge(&path, 40, limit).await;
            let (tx, rx) = oneshot::channel();
            log.queue_append(vec![entry(51, 200)], Notify::Done(tx))
                .await
                .unwrap();
            let answer = deadline::within(
                deadline::Layer::Propose,
                deadline::Deadline::after(std::time::Duration::from_secs(10)),
                rx,
            )
            .await;
            let answer = answer.expect("a write behind the held purge still waits after 10 s");
            let refused = answer.unwrap().unwrap_err();
            assert!(refused.contains("has not reached"), "{refused}");
            // The log stops: nothing later is written either.
            let (tx, rx) = oneshot::channel();
            log.queue_append(vec![entry(52, 200)], Notify::Done(tx))
                .await
                .unwrap();
            assert!(rx.await.unwrap().is_err());
            close(closer).await;
        }
        // What recovery needs is there: every entry the engine lacks, no purge past it, and
        // nothing after the gap the purge would have left.
        let (mut log, closer) = LogStore::open_with(&path, 1, 1, 4096).unwrap();
        let state = log.get_log_state().await.unwrap();
        assert_eq!(state.last_purged_log_id, None);
        assert_eq!(state.last_log_id, Some(id(40)));
        let got = log.try_get_log_entries(0..100).await.unwrap();
        assert_eq!(indexes(&got), (1..=40).collect::<Vec<_>>());
        close(closer).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_log_closed_while_a_purge_waits_writes_nothing_after_the_gap() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("raft-log");
        let id = |i| entry(i, 0).log_id;
        {
            let (log, closer) = with_a_held_purge(&path, 40, crate::floor::HOLD_LIMIT).await;
            let (tx, rx) = oneshot::channel();
            log.queue_append(vec![entry(51, 200)], Notify::Done(tx))
                .await
                .unwrap();
            // The member stops before the install commits.
            close(closer).await;
            assert!(rx.await.unwrap().is_err(), "51 written after the gap");
        }
        let (mut log, closer) = LogStore::open_with(&path, 1, 1, 4096).unwrap();
        let state = log.get_log_state().await.unwrap();
        assert_eq!(state.last_purged_log_id, None);
        assert_eq!(state.last_log_id, Some(id(40)));
        close(closer).await;
    }

    #[tokio::test]
    async fn a_redb_log_is_migrated_once() {
        let dir = tempfile::tempdir().unwrap();
        let legacy = dir.path().join(crate::marker::LEGACY_RAFT_LOG);
        let vote = Vote::new(4, crate::MemberId(2));
        {
            // The layout the redb log used.
            let log: redb::TableDefinition<'static, u64, &'static [u8]> =
                redb::TableDefinition::new("log");
            let state: redb::TableDefinition<'static, &'static str, &'static [u8]> =
                redb::TableDefinition::new("state");
            let db = redb::Database::create(&legacy).unwrap();
            let txn = db.begin_write().unwrap();
            {
                let mut t = txn.open_table(log).unwrap();
                for i in 6..=30 {
                    t.insert(i, bincode::serialize(&entry(i, 100)).unwrap().as_slice())
                        .unwrap();
                }
                let mut s = txn.open_table(state).unwrap();
                s.insert("vote", bincode::serialize(&vote).unwrap().as_slice())
                    .unwrap();
                let purged = Some(entry(5, 0).log_id);
                s.insert(
                    "last_purged",
                    bincode::serialize(&purged).unwrap().as_slice(),
                )
                .unwrap();
                let committed = Some(entry(29, 0).log_id);
                s.insert(
                    "committed",
                    bincode::serialize(&committed).unwrap().as_slice(),
                )
                .unwrap();
            }
            txn.commit().unwrap();
        }
        for round in 0..2 {
            let (mut log, closer) = LogStore::open_in(dir.path(), 1, 1).unwrap();
            assert!(!legacy.exists(), "round {round}: the redb file is gone");
            let got = log.try_get_log_entries(0..100).await.unwrap();
            assert_eq!(indexes(&got), (6..=30).collect::<Vec<_>>());
            assert_eq!(got[0], entry(6, 100));
            let state = log.get_log_state().await.unwrap();
            assert_eq!(state.last_purged_log_id, Some(entry(5, 0).log_id));
            assert_eq!(log.read_vote().await.unwrap(), Some(vote));
            assert_eq!(
                log.read_committed().await.unwrap(),
                Some(entry(29, 0).log_id)
            );
            close(closer).await;
        }
    }
}
