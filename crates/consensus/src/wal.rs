//! The Raft log's files: append-only segments of checksummed records, and a small state file.
//!
//! # On disk
//! A directory holds segment files `<seq>.wal` (16 hex digits, in order of creation) and the
//! state file `state`. A segment starts with a 32-byte header (magic, its sequence number, a
//! checksum) and is preallocated to its full size when it is created, so appending never
//! grows the file and an fdatasync need not commit a new size. Records follow, each aligned to
//! 8 bytes:
//!
//! | bytes | field |
//! |---|---|
//! | 4 | body length `n` |
//! | 4 | CRC-32 of the length's 4 bytes (a header is all zero, or consistent) |
//! | 4 | CRC-32 of kind and body |
//! | 4 | kind: entry, committed hint, or seal |
//! | 32 | index, term, leader node, and the position this file was synced to when written |
//! | n - 32 | payload (the encoded entry, or the committed log id) |
//!
//! All-zero bytes where a record header would be end the data: the rest of the preallocated
//! segment is zeros. Only the last segment is ever written to: a segment is fdatasynced before
//! the next one is created, so only the last segment can hold unsynced bytes.
//!
//! The state file holds the vote, the last purged log id and the committed hint. It is
//! replaced atomically (temporary file, fsync, rename, fsync of the directory), never edited.
//!
//! # Recovery: what is truncated and what is refused
//! A crash can tear only what was written after the last fdatasync: the end of the last
//! segment. So at start-up:
//! - the first bad spot in the **last** segment (an inconsistent header, a record running past
//!   the file, a checksum mismatch, or non-zero bytes after the end of the data) starts a torn,
//!   unacknowledged tail, *unless* a valid record after it says it was written after that spot
//!   had been synced. The tail is zeroed and synced, with a warning naming the file, offset and
//!   size. Every acknowledged entry was synced before its acknowledgement, so none is lost;
//! - the same in any **other** segment, a spot in the last one proven synced by a later
//!   record, a record with a good checksum that makes no sense (unknown kind, an entry that
//!   does not follow the one before), a bad segment header or a bad state file are refused:
//!   the member does not start, and the error names the file and the offset.
//!
//! One case cannot be told apart: damage inside the very last synced group of records with
//! nothing written after it looks exactly like a torn write, and is truncated. A clean shutdown
//! writes a synced seal record, which proves everything before it.

use std::fs::File;
use std::io::{self, Read};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Segment size: a record larger than this gets a segment of its own size.
pub(crate) const SEGMENT_BYTES: u64 = 64 << 20;
const SEG_MAGIC: &[u8; 8] = b"MSRAFTL1";
const SEG_HEADER: u64 = 32;
const REC_HEADER: usize = 16;
const BODY_FIXED: usize = 32;
const STATE_FILE: &str = "state";
const STATE_MAGIC: &[u8; 8] = b"MSRSTAT1";
/// Positions are `seq << POS_SHIFT | offset`: a segment is below 1 TiB.
const POS_SHIFT: u32 = 40;

/// A record's kind.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    /// A log entry.
    Entry = 1,
    /// The committed hint.
    Committed = 2,
    /// Written at a clean close: proves everything before it was synced.
    Seal = 3,
}

impl Kind {
    fn from_u32(k: u32) -> Option<Self> {
        match k {
            1 => Some(Self::Entry),
            2 => Some(Self::Committed),
            3 => Some(Self::Seal),
            _ => None,
        }
    }
}

/// What went wrong with the log's files.
#[derive(Debug, thiserror::Error)]
pub enum WalError {
    /// A file could not be read, written or synced.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory.
        path: String,
        /// The cause.
        source: io::Error,
    },
    /// A file holds something a crash cannot have left: refusing to guess.
    #[error("{path} at offset {offset}: {what}")]
    Corrupt {
        /// The file.
        path: String,
        /// Where in it.
        offset: u64,
        /// What is wrong.
        what: String,
    },
}

fn io_at(path: &Path) -> impl FnOnce(io::Error) -> WalError + '_ {
    move |source| WalError::Io {
        path: path.display().to_string(),
        source,
    }
}

fn corrupt(path: &Path, offset: u64, what: impl Into<String>) -> WalError {
    WalError::Corrupt {
        path: path.display().to_string(),
        offset,
        what: what.into(),
    }
}

fn crc(parts: &[&[u8]]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    for p in parts {
        h.update(p);
    }
    h.finalize()
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(a)
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}

fn align8(n: u64) -> u64 {
    n.div_ceil(8) * 8
}

fn pos(seq: u64, offset: u64) -> u64 {
    (seq << POS_SHIFT) | offset
}

/// The fixed part of a record's body.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Head {
    /// The entry's index (0 for other kinds).
    pub index: u64,
    /// The entry's term.
    pub term: u64,
    /// The entry's leader node.
    pub node: u64,
}

/// Where one record lives; readable once the writer has written it.
#[derive(Clone, Debug)]
pub(crate) struct RecordRef {
    file: Arc<File>,
    path: Arc<PathBuf>,
    offset: u64,
    /// The record's bytes, header included (padding not).
    pub len: u32,
}

impl RecordRef {
    /// Reads the record back, checking it, and returns its payload.
    pub(crate) fn read(&self) -> Result<Vec<u8>, WalError> {
        let mut buf = vec![0u8; self.len as usize];
        self.file
            .read_exact_at(&mut buf, self.offset)
            .map_err(io_at(&self.path))?;
        match parse(&buf, 0) {
            Parsed::Record { payload, .. } => Ok(buf[payload.0..payload.1].to_vec()),
            Parsed::End => Err(corrupt(&self.path, self.offset, "record is gone")),
            Parsed::Bad(what) => Err(corrupt(&self.path, self.offset, what)),
        }
    }
}

/// One record parsed from a buffer.
enum Parsed {
    /// All-zero header: no more data.
    End,
    /// A good record.
    Record {
        kind: u32,
        head: Head,
        synced: u64,
        payload: (usize, usize),
        /// Bytes to the next record, padding included.
        step: usize,
    },
    /// Not a good record: why.
    Bad(&'static str),
}

fn parse(data: &[u8], at: usize) -> Parsed {
    if data.len() < at + REC_HEADER {
        return if data[at.min(data.len())..].iter().all(|b| *b == 0) {
            Parsed::End
        } else {
            Parsed::Bad("a partial record header")
        };
    }
    let header = &data[at..at + REC_HEADER];
    if header.iter().all(|b| *b == 0) {
        return Parsed::End;
    }
    let len = u32_at(header, 0);
    if u32_at(header, 4) != crc(&[&header[0..4]]) {
        return Parsed::Bad("a bad record header");
    }
    let len = len as usize;
    if len < BODY_FIXED {
        return Parsed::Bad("a record too short for its kind");
    }
    let Some(end) = (at + REC_HEADER).checked_add(len) else {
        return Parsed::Bad("a record runs past the end of the file");
    };
    if end > data.len() {
        return Parsed::Bad("a record runs past the end of the file");
    }
    let body = &data[at + REC_HEADER..end];
    if u32_at(header, 8) != crc(&[&header[12..16], body]) {
        return Parsed::Bad("a record's checksum does not match");
    }
    Parsed::Record {
        kind: u32_at(header, 12),
        head: Head {
            index: u64_at(body, 0),
            term: u64_at(body, 8),
            node: u64_at(body, 16),
        },
        synced: u64_at(body, 24),
        payload: (at + REC_HEADER + BODY_FIXED, end),
        step: align8((REC_HEADER + len) as u64) as usize,
    }
}

fn encode_record(out: &mut Vec<u8>, kind: Kind, head: Head, synced: u64, payload: &[u8]) {
    let len = (BODY_FIXED + payload.len()) as u32;
    let start = out.len();
    let kind = (kind as u32).to_le_bytes();
    let mut fixed = [0u8; BODY_FIXED];
    fixed[0..8].copy_from_slice(&head.index.to_le_bytes());
    fixed[8..16].copy_from_slice(&head.term.to_le_bytes());
    fixed[16..24].copy_from_slice(&head.node.to_le_bytes());
    fixed[24..32].copy_from_slice(&synced.to_le_bytes());
    let len_bytes = len.to_le_bytes();
    out.extend_from_slice(&len_bytes);
    out.extend_from_slice(&crc(&[&len_bytes]).to_le_bytes());
    out.extend_from_slice(&crc(&[&kind, &fixed, payload]).to_le_bytes());
    out.extend_from_slice(&kind);
    out.extend_from_slice(&fixed);
    out.extend_from_slice(payload);
    let padded = align8((out.len() - start) as u64) as usize;
    out.resize(start + padded, 0);
}

fn record_bytes(payload: usize) -> u64 {
    align8((REC_HEADER + BODY_FIXED + payload) as u64)
}

struct Segment {
    seq: u64,
    path: Arc<PathBuf>,
    file: Arc<File>,
    /// Bytes allocated.
    size: u64,
    /// Where the data ends (buffered bytes not counted).
    end: u64,
    /// The entries in it, in order: (index, offset).
    entries: Vec<(u64, u64)>,
}

/// An entry found at recovery.
pub(crate) struct RecoveredEntry {
    /// Its index, term and leader node.
    pub head: Head,
    /// Where it is.
    pub rec: RecordRef,
}

/// What the files held at open.
#[derive(Default)]
pub(crate) struct Recovered {
    /// The entries above the purged index, in order.
    pub entries: Vec<RecoveredEntry>,
    /// The last committed hint written in a segment.
    pub committed: Option<Vec<u8>>,
    /// The state file's content.
    pub state: Option<Vec<u8>>,
}

/// The segment files, written by one owner (the log's writer thread).
pub(crate) struct Wal {
    dir: PathBuf,
    segments: Vec<Segment>,
    segment_bytes: u64,
    /// Position everything before which is synced.
    synced: u64,
    /// Records encoded but not yet written, starting at the last segment's `end`.
    buf: Vec<u8>,
}

fn segment_path(dir: &Path, seq: u64) -> PathBuf {
    dir.join(format!("{seq:016x}.wal"))
}

fn segment_header(seq: u64) -> [u8; SEG_HEADER as usize] {
    let mut h = [0u8; SEG_HEADER as usize];
    h[0..8].copy_from_slice(SEG_MAGIC);
    h[8..16].copy_from_slice(&seq.to_le_bytes());
    let c = crc(&[&h[0..24]]);
    h[24..28].copy_from_slice(&c.to_le_bytes());
    h
}

/// Allocates `len` bytes for `file` so appends never grow it; where the file system cannot,
/// only sets the size.
fn preallocate(file: &File, len: u64) -> io::Result<()> {
    match rustix::fs::fallocate(file, rustix::fs::FallocateFlags::empty(), 0, len) {
        Ok(()) => Ok(()),
        Err(e) if e == rustix::io::Errno::OPNOTSUPP || e == rustix::io::Errno::NOSYS => {
            file.set_len(len)
        }
        Err(e) => Err(e.into()),
    }
}

fn open_rw(path: &Path) -> io::Result<File> {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
}

impl Wal {
    /// Opens the log in `dir` (creating it), recovering what it holds; see the module docs
    /// for what is truncated and what refused.
    pub(crate) fn open(dir: &Path, segment_bytes: u64) -> Result<(Self, Recovered), WalError> {
        mvcc::durable::create_dir_all_synced(dir).map_err(io_at(dir))?;
        let mut seqs = Vec::new();
        for item in std::fs::read_dir(dir).map_err(io_at(dir))? {
            let item = item.map_err(io_at(dir))?;
            let name = item.file_name();
            let name = name.to_string_lossy();
            if name.ends_with(".wal.tmp") {
                // A segment whose creation did not finish: nothing was written to it.
                mvcc::durable::remove_synced(&item.path()).map_err(io_at(&item.path()))?;
            } else if let Some(stem) = name.strip_suffix(".wal") {
                let seq = u64::from_str_radix(stem, 16)
                    .ok()
                    .filter(|s| *s > 0 && *s < (1 << (64 - POS_SHIFT)))
                    .ok_or_else(|| corrupt(&item.path(), 0, "not a log segment's name"))?;
                seqs.push(seq);
            }
        }
        seqs.sort_unstable();
        let state_path = dir.join(STATE_FILE);
        let state = read_state(&state_path)?;
        let mut wal = Self {
            dir: dir.to_path_buf(),
            segments: Vec::new(),
            segment_bytes,
            synced: 0,
            buf: Vec::new(),
        };
        let mut recovered = Recovered {
            state,
            ..Recovered::default()
        };
        let purged = recovered_purged_hint(&recovered);
        let last = seqs.len().saturating_sub(1);
        let mut prev: Option<u64> = None;
        for (i, seq) in seqs.iter().enumerate() {
            let seg = wal.recover_segment(*seq, i == last, purged, &mut prev, &mut recovered)?;
            wal.segments.push(seg);
        }
        match wal.segments.last() {
            None => {
                let seg = wal.create_segment(1, 0)?;
                wal.segments.push(seg);
            }
            Some(seg) => {
                // What a crashed process left in the page cache is durable before it is used.
                seg.file.sync_data().map_err(io_at(&seg.path))?;
            }
        }
        if let Some(seg) = wal.segments.last() {
            wal.synced = pos(seg.seq, seg.end);
        }
        Ok((wal, recovered))
    }

    fn recover_segment(
        &mut self,
        seq: u64,
        is_last: bool,
        purged: Option<u64>,
        prev: &mut Option<u64>,
        recovered: &mut Recovered,
    ) -> Result<Segment, WalError> {
        let path = Arc::new(segment_path(&self.dir, seq));
        let file = Arc::new(open_rw(&path).map_err(io_at(&path))?);
        let mut data = Vec::new();
        (&*file).read_to_end(&mut data).map_err(io_at(&path))?;
        if data.len() < SEG_HEADER as usize || data[..SEG_HEADER as usize] != segment_header(seq) {
            return Err(corrupt(
                &path,
                0,
                "not a MetaStore Raft log segment (bad segment header)",
            ));
        }
        let mut entries = Vec::new();
        let mut at = SEG_HEADER as usize;
        let bad = loop {
            match parse(&data, at) {
                Parsed::End => {
                    break data[at..]
                        .iter()
                        .any(|b| *b != 0)
                        .then_some("bytes after the end of the data");
                }
                Parsed::Bad(what) => break Some(what),
                Parsed::Record {
                    kind,
                    head,
                    payload,
                    step,
                    ..
                } => {
                    match Kind::from_u32(kind) {
                        Some(Kind::Entry) => {
                            entries.push((head.index, at as u64));
                            if purged.is_none_or(|p| head.index > p) {
                                if let Some(p) = *prev {
                                    if head.index != p + 1 {
                                        return Err(corrupt(
                                            &path,
                                            at as u64,
                                            format!("entry {} follows entry {p}", head.index),
                                        ));
                                    }
                                }
                                *prev = Some(head.index);
                                recovered.entries.push(RecoveredEntry {
                                    head,
                                    rec: RecordRef {
                                        file: Arc::clone(&file),
                                        path: Arc::clone(&path),
                                        offset: at as u64,
                                        len: (payload.1 - at) as u32,
                                    },
                                });
                            }
                        }
                        Some(Kind::Committed) => {
                            recovered.committed = Some(data[payload.0..payload.1].to_vec());
                        }
                        Some(Kind::Seal) => {}
                        None => {
                            return Err(corrupt(
                                &path,
                                at as u64,
                                format!("a checksummed record of unknown kind {kind}"),
                            ))
                        }
                    }
                    at += step;
                }
            }
        };
        if let Some(what) = bad {
            if !is_last {
                return Err(corrupt(
                    &path,
                    at as u64,
                    format!("{what} in a segment that was synced in full"),
                ));
            }
            if let Some(proof) = synced_after(&data, at, pos(seq, at as u64)) {
                return Err(corrupt(
                    &path,
                    at as u64,
                    format!(
                        "{what}, but the record at offset {proof} was written after this point \
                         was synced: not a torn write"
                    ),
                ));
            }
            let dropped = data.len() - at;
            tracing::warn!(
                file = %path.display(),
                offset = at,
                bytes = dropped,
                cause = what,
                "the Raft log ends in a torn, unacknowledged tail (a crash mid-write); \
                 zeroing it"
            );
            zero(&file, &path, at as u64, data.len() as u64)?;
            file.sync_data().map_err(io_at(&path))?;
        }
        Ok(Segment {
            seq,
            path,
            file,
            size: data.len() as u64,
            end: at as u64,
            entries,
        })
    }

    /// Creates segment `seq`, big enough for a record of `need` bytes, durably: header
    /// written and synced under a temporary name, then renamed into place.
    fn create_segment(&self, seq: u64, need: u64) -> Result<Segment, WalError> {
        let path = segment_path(&self.dir, seq);
        let mut tmp = path.as_os_str().to_owned();
        tmp.push(".tmp");
        let tmp = PathBuf::from(tmp);
        let size = self.segment_bytes.max(SEG_HEADER + need);
        mvcc::durable::create_file_synced(&tmp).map_err(io_at(&tmp))?;
        let file = open_rw(&tmp).map_err(io_at(&tmp))?;
        preallocate(&file, size).map_err(io_at(&tmp))?;
        file.write_all_at(&segment_header(seq), 0)
            .map_err(io_at(&tmp))?;
        file.sync_all().map_err(io_at(&tmp))?;
        mvcc::durable::rename_synced(&tmp, &path).map_err(io_at(&path))?;
        Ok(Segment {
            seq,
            path: Arc::new(path),
            file: Arc::new(file),
            size,
            end: SEG_HEADER,
            entries: Vec::new(),
        })
    }

    fn active(&mut self) -> &mut Segment {
        // `open` leaves at least one segment, and nothing removes the last.
        let n = self.segments.len() - 1;
        &mut self.segments[n]
    }

    /// Writes what is buffered (not synced).
    fn write_buf(&mut self) -> Result<(), WalError> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let buf = std::mem::take(&mut self.buf);
        let seg = self.active();
        seg.file
            .write_all_at(&buf, seg.end)
            .map_err(io_at(&seg.path))?;
        seg.end += buf.len() as u64;
        let mut buf = buf;
        buf.clear();
        self.buf = buf;
        Ok(())
    }

    /// Queues a record; it is written by the next [`Wal::sync`] (or [`Wal::flush`]).
    /// Returns where an entry record will be readable.
    fn push(&mut self, kind: Kind, head: Head, payload: &[u8]) -> Result<RecordRef, WalError> {
        let need = record_bytes(payload.len());
        let room = {
            let seg = self.active();
            seg.size.saturating_sub(seg.end)
        };
        if (self.buf.len() as u64) + need > room {
            // Roll: the old segment is synced in full before the next one exists.
            self.write_buf()?;
            let seg = self.active();
            seg.file.sync_data().map_err(io_at(&seg.path))?;
            let (seq, end) = (seg.seq, seg.end);
            self.synced = pos(seq, end);
            let next = self.create_segment(seq + 1, need)?;
            self.segments.push(next);
        }
        let synced = self.synced;
        let start = self.buf.len() as u64;
        encode_record(&mut self.buf, kind, head, synced, payload);
        let seg = self.active();
        let offset = seg.end + start;
        if kind == Kind::Entry {
            seg.entries.push((head.index, offset));
        }
        Ok(RecordRef {
            file: Arc::clone(&seg.file),
            path: Arc::clone(&seg.path),
            offset,
            len: (REC_HEADER + BODY_FIXED + payload.len()) as u32,
        })
    }

    /// Queues entry `head.index`.
    pub(crate) fn append_entry(
        &mut self,
        head: Head,
        payload: &[u8],
    ) -> Result<RecordRef, WalError> {
        self.push(Kind::Entry, head, payload)
    }

    /// Queues a committed hint.
    pub(crate) fn append_committed(&mut self, payload: &[u8]) -> Result<(), WalError> {
        self.push(Kind::Committed, Head::default(), payload)
            .map(drop)
    }

    /// Writes what is queued without syncing it.
    pub(crate) fn flush(&mut self) -> Result<(), WalError> {
        self.write_buf()
    }

    /// Writes what is queued and fdatasyncs it: one sync for all of it.
    pub(crate) fn sync(&mut self) -> Result<(), WalError> {
        self.write_buf()?;
        let seg = self.active();
        let started = std::time::Instant::now();
        if !crate::ablation::skips(crate::ablation::Cut::Fsync) {
            seg.file.sync_data().map_err(io_at(&seg.path))?;
        }
        metrics::histogram!(crate::metrics::WAL_FSYNC).record(started.elapsed().as_secs_f64());
        let p = pos(seg.seq, seg.end);
        self.synced = p;
        Ok(())
    }

    /// Syncs, then writes and syncs a seal record proving everything before it was synced.
    pub(crate) fn seal(&mut self) -> Result<(), WalError> {
        self.sync()?;
        self.push(Kind::Seal, Head::default(), &[])?;
        self.sync()
    }

    /// Removes entries from index `from` on, durably, before returning.
    pub(crate) fn truncate(&mut self, from: u64) -> Result<(), WalError> {
        self.write_buf()?;
        // The first segment holding an entry at or above `from`.
        let Some(at) = self
            .segments
            .iter()
            .position(|s| s.entries.last().is_some_and(|(i, _)| *i >= from))
        else {
            return Ok(());
        };
        // Later segments go first: a crash in between leaves the cut entries, never a gap.
        while self.segments.len() > at + 1 {
            if let Some(seg) = self.segments.pop() {
                mvcc::durable::remove_synced(&seg.path).map_err(io_at(&seg.path))?;
            }
        }
        let seg = self.active();
        let keep = seg.entries.partition_point(|(i, _)| *i < from);
        let offset = seg.entries[keep].1;
        zero(&seg.file, &seg.path, offset, seg.end)?;
        seg.file.sync_data().map_err(io_at(&seg.path))?;
        seg.entries.truncate(keep);
        seg.end = offset;
        let p = pos(seg.seq, offset);
        self.synced = p;
        Ok(())
    }

    /// Removes whole segments holding only entries up to `upto`; the last segment stays.
    /// Recovery skips what is left of them by the purged id in the state file, which the
    /// caller writes first.
    pub(crate) fn purge(&mut self, upto: u64) -> Result<(), WalError> {
        while self.segments.len() > 1
            && self.segments[0]
                .entries
                .last()
                .is_none_or(|(i, _)| *i <= upto)
        {
            let seg = self.segments.remove(0);
            mvcc::durable::remove_synced(&seg.path).map_err(io_at(&seg.path))?;
        }
        Ok(())
    }

    /// Replaces the state file atomically and durably.
    pub(crate) fn write_state(&self, blob: &[u8]) -> Result<(), WalError> {
        let path = self.dir.join(STATE_FILE);
        let mut bytes = Vec::with_capacity(16 + blob.len());
        bytes.extend_from_slice(STATE_MAGIC);
        bytes.extend_from_slice(&(blob.len() as u32).to_le_bytes());
        bytes.extend_from_slice(&crc(&[blob]).to_le_bytes());
        bytes.extend_from_slice(blob);
        mvcc::durable::write_synced(&path, &bytes).map_err(io_at(&path))
    }

    /// How many segment files there are.
    #[cfg(test)]
    pub(crate) fn segment_count(&self) -> usize {
        self.segments.len()
    }
}

/// The purged index the state file names, for recovery to skip (the blob's first 9 bytes).
fn recovered_purged_hint(recovered: &Recovered) -> Option<u64> {
    recovered.state.as_deref().and_then(purged_index_of_state)
}

/// The state blob starts with a 1-byte flag and the purged index (little endian), so recovery
/// can skip purged entries without knowing how the rest is encoded.
pub(crate) fn purged_index_of_state(blob: &[u8]) -> Option<u64> {
    match blob.first() {
        Some(1) if blob.len() >= 9 => Some(u64_at(blob, 1)),
        _ => None,
    }
}

/// Prefixes `rest` with the purged index, as [`purged_index_of_state`] reads it.
pub(crate) fn state_blob(purged: Option<u64>, rest: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(9 + rest.len());
    match purged {
        Some(p) => {
            out.push(1);
            out.extend_from_slice(&p.to_le_bytes());
        }
        None => out.extend_from_slice(&[0; 9]),
    }
    out.extend_from_slice(rest);
    out
}

/// The state blob without its purged-index prefix.
pub(crate) fn state_rest(blob: &[u8]) -> &[u8] {
    blob.get(9..).unwrap_or(&[])
}

fn read_state(path: &Path) -> Result<Option<Vec<u8>>, WalError> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_at(path)(e)),
    };
    if bytes.len() < 16 || &bytes[0..8] != STATE_MAGIC {
        return Err(corrupt(path, 0, "not a MetaStore Raft state file"));
    }
    let len = u32_at(&bytes, 8) as usize;
    let blob = &bytes[16..];
    if blob.len() != len || crc(&[blob]) != u32_at(&bytes, 12) {
        return Err(corrupt(path, 16, "the state's checksum does not match"));
    }
    Ok(Some(blob.to_vec()))
}

/// The offset of a good record after `at` that was written after position `bad` was synced.
fn synced_after(data: &[u8], at: usize, bad: u64) -> Option<usize> {
    let mut probe = align8(at as u64 + 8) as usize;
    while probe + REC_HEADER <= data.len() {
        if let Parsed::Record { synced, .. } = parse(data, probe) {
            if synced > bad {
                return Some(probe);
            }
        }
        probe += 8;
    }
    None
}

fn zero(file: &File, path: &Path, from: u64, to: u64) -> Result<(), WalError> {
    const CHUNK: u64 = 1 << 20;
    let zeros = vec![0u8; CHUNK.min(to.saturating_sub(from)) as usize];
    let mut at = from;
    while at < to {
        let n = CHUNK.min(to - at) as usize;
        file.write_all_at(&zeros[..n], at).map_err(io_at(path))?;
        at += n as u64;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(index: u64) -> Head {
        Head {
            index,
            term: 1,
            node: 1,
        }
    }

    fn payload(index: u64) -> Vec<u8> {
        format!("entry {index} ").repeat(5).into_bytes()
    }

    /// Appends `range`, syncing after each, as acknowledged writes are.
    fn fill(wal: &mut Wal, range: std::ops::RangeInclusive<u64>) {
        for i in range {
            wal.append_entry(head(i), &payload(i)).unwrap();
            wal.sync().unwrap();
        }
    }

    fn indexes(rec: &Recovered) -> Vec<u64> {
        rec.entries.iter().map(|e| e.head.index).collect()
    }

    fn check_payloads(rec: &Recovered) {
        for e in &rec.entries {
            assert_eq!(e.rec.read().unwrap(), payload(e.head.index));
        }
    }

    fn segments(dir: &Path) -> Vec<PathBuf> {
        let mut out: Vec<PathBuf> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|x| x == "wal"))
            .collect();
        out.sort();
        out
    }

    /// The end of the data in segment `path` (where the first all-zero header is).
    fn data_end(path: &Path) -> usize {
        let data = std::fs::read(path).unwrap();
        let mut at = SEG_HEADER as usize;
        while let Parsed::Record { step, .. } = parse(&data, at) {
            at += step;
        }
        at
    }

    fn write_at(path: &Path, offset: usize, bytes: &[u8]) {
        let f = open_rw(path).unwrap();
        f.write_all_at(bytes, offset as u64).unwrap();
    }

    #[test]
    fn entries_survive_a_reopen_across_segments() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (mut wal, rec) = Wal::open(dir.path(), 1024).unwrap();
            assert!(rec.entries.is_empty());
            fill(&mut wal, 1..=60);
            assert!(wal.segment_count() > 3, "{} segments", wal.segment_count());
        }
        let (_, rec) = Wal::open(dir.path(), 1024).unwrap();
        assert_eq!(indexes(&rec), (1..=60).collect::<Vec<_>>());
        check_payloads(&rec);
    }

    #[test]
    fn a_torn_tail_is_truncated_and_the_log_goes_on() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (mut wal, _) = Wal::open(dir.path(), 1 << 20).unwrap();
            fill(&mut wal, 1..=10);
        }
        let seg = segments(dir.path()).pop().unwrap();
        let end = data_end(&seg);
        // A group of three records of which only the first half reached the disk.
        let mut torn = Vec::new();
        for i in 11..=13 {
            encode_record(&mut torn, Kind::Entry, head(i), 0, &payload(i));
        }
        let half = torn.len() / 2;
        write_at(&seg, end, &torn[..half]);
        let first = record_bytes(payload(11).len()) as usize;
        assert!(half > first && half < 2 * first);
        {
            // Record 11 arrived whole (kept: it was never acknowledged, and is harmless);
            // record 12 is torn, and it and everything after it are gone.
            let (mut wal, rec) = Wal::open(dir.path(), 1 << 20).unwrap();
            assert_eq!(indexes(&rec), (1..=11).collect::<Vec<_>>());
            check_payloads(&rec);
            let data = std::fs::read(&seg).unwrap();
            assert!(data[end + first..].iter().all(|b| *b == 0));
            // The log goes on where it ended.
            fill(&mut wal, 12..=13);
        }
        let (_, rec) = Wal::open(dir.path(), 1 << 20).unwrap();
        assert_eq!(indexes(&rec), (1..=13).collect::<Vec<_>>());
        check_payloads(&rec);
    }

    #[test]
    fn a_torn_header_with_later_pieces_is_truncated() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (mut wal, _) = Wal::open(dir.path(), 1 << 20).unwrap();
            fill(&mut wal, 1..=5);
        }
        let seg = segments(dir.path()).pop().unwrap();
        let end = data_end(&seg);
        // The group's first page never arrived, a later one did: zeros, then a record.
        let mut later = Vec::new();
        encode_record(&mut later, Kind::Entry, head(9), 0, &payload(9));
        write_at(&seg, end + 4096, &later);
        let (_, rec) = Wal::open(dir.path(), 1 << 20).unwrap();
        assert_eq!(indexes(&rec), (1..=5).collect::<Vec<_>>());
        let data = std::fs::read(&seg).unwrap();
        assert!(data[end..].iter().all(|b| *b == 0));
    }

    #[test]
    fn a_bit_flip_in_a_synced_record_is_refused_naming_file_and_offset() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (mut wal, _) = Wal::open(dir.path(), 1 << 20).unwrap();
            fill(&mut wal, 1..=20);
        }
        let seg = segments(dir.path()).pop().unwrap();
        let data = std::fs::read(&seg).unwrap();
        // Record 10's offset.
        let mut at = SEG_HEADER as usize;
        for _ in 1..10 {
            let Parsed::Record { step, .. } = parse(&data, at) else {
                panic!("a good record")
            };
            at += step;
        }
        let flip = at + REC_HEADER + BODY_FIXED + 3;
        write_at(&seg, flip, &[data[flip] ^ 0x10]);
        let Err(err) = Wal::open(dir.path(), 1 << 20) else {
            panic!("a damaged synced record must be refused")
        };
        let text = err.to_string();
        assert!(text.contains(&seg.display().to_string()), "{text}");
        assert!(text.contains(&format!("offset {at}")), "{text}");
        assert!(text.contains("checksum"), "{text}");
        assert!(text.contains("not a torn write"), "{text}");
        // Nothing was changed: the damaged file is as it was.
        let mut expected = data.clone();
        expected[flip] ^= 0x10;
        assert_eq!(std::fs::read(&seg).unwrap(), expected);
    }

    #[test]
    fn damage_in_an_earlier_segment_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (mut wal, _) = Wal::open(dir.path(), 1024).unwrap();
            fill(&mut wal, 1..=40);
        }
        let first = segments(dir.path()).remove(0);
        // The last record of the first segment: after it, nothing in that file.
        let end = data_end(&first);
        write_at(&first, end - 10, &[0xff]);
        let text = match Wal::open(dir.path(), 1024) {
            Err(e) => e.to_string(),
            Ok(_) => panic!("damage in a sealed segment must be refused"),
        };
        assert!(text.contains(&first.display().to_string()), "{text}");
        assert!(text.contains("synced in full"), "{text}");
    }

    #[test]
    fn a_sealed_log_refuses_damage_to_its_last_record() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (mut wal, _) = Wal::open(dir.path(), 1 << 20).unwrap();
            fill(&mut wal, 1..=3);
            wal.seal().unwrap();
        }
        let seg = segments(dir.path()).pop().unwrap();
        let data = std::fs::read(&seg).unwrap();
        let mut at = SEG_HEADER as usize;
        let mut last = at;
        while let Parsed::Record { kind, step, .. } = parse(&data, at) {
            if kind == Kind::Entry as u32 {
                last = at;
            }
            at += step;
        }
        write_at(&seg, last + REC_HEADER + BODY_FIXED, &[0xee]);
        assert!(Wal::open(dir.path(), 1 << 20).is_err());
    }

    #[test]
    fn truncate_and_purge_survive_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (mut wal, _) = Wal::open(dir.path(), 1024).unwrap();
            fill(&mut wal, 1..=60);
            let before = wal.segment_count();
            wal.truncate(45).unwrap();
            assert!(wal.segment_count() < before);
            fill(&mut wal, 45..=50);
            wal.write_state(&state_blob(Some(20), b"rest")).unwrap();
            wal.purge(20).unwrap();
        }
        let (mut wal, rec) = Wal::open(dir.path(), 1024).unwrap();
        assert_eq!(indexes(&rec), (21..=50).collect::<Vec<_>>());
        check_payloads(&rec);
        let state = rec.state.unwrap();
        assert_eq!(purged_index_of_state(&state), Some(20));
        assert_eq!(state_rest(&state), b"rest");
        // Truncating everything, then going on.
        wal.truncate(21).unwrap();
        fill(&mut wal, 21..=22);
        drop(wal);
        let (_, rec) = Wal::open(dir.path(), 1024).unwrap();
        assert_eq!(indexes(&rec), vec![21, 22]);
    }

    #[test]
    fn a_purge_past_the_end_then_appends_after_a_gap() {
        // As after installing a snapshot: the log restarts above the purged index.
        let dir = tempfile::tempdir().unwrap();
        {
            let (mut wal, _) = Wal::open(dir.path(), 1 << 20).unwrap();
            fill(&mut wal, 1..=5);
            wal.write_state(&state_blob(Some(100), b"")).unwrap();
            wal.purge(100).unwrap();
            fill(&mut wal, 101..=103);
        }
        let (_, rec) = Wal::open(dir.path(), 1 << 20).unwrap();
        assert_eq!(indexes(&rec), vec![101, 102, 103]);
    }

    /// A small deterministic generator: no dependency, and a failure reproduces.
    fn xorshift(state: &mut u64) -> u64 {
        *state ^= *state << 13;
        *state ^= *state >> 7;
        *state ^= *state << 17;
        *state
    }

    #[test]
    fn random_bytes_never_panic() {
        let mut rng = 0x9e37_79b9_7f4a_7c15u64;
        for round in 0..120 {
            let dir = tempfile::tempdir().unwrap();
            {
                let (mut wal, _) = Wal::open(dir.path(), 2048).unwrap();
                // Synced once: a test of parsing, not of the disk.
                for i in 1..=(1 + round % 30) {
                    wal.append_entry(head(i), &payload(i)).unwrap();
                }
                wal.sync().unwrap();
            }
            let segs = segments(dir.path());
            let seg = &segs[(xorshift(&mut rng) as usize) % segs.len()];
            let len = std::fs::metadata(seg).unwrap().len() as usize;
            match round % 4 {
                // A whole file of random bytes.
                0 => {
                    let bytes: Vec<u8> = (0..len).map(|_| xorshift(&mut rng) as u8).collect();
                    write_at(seg, 0, &bytes);
                }
                // A random run somewhere.
                1 | 2 => {
                    let at = (xorshift(&mut rng) as usize) % len;
                    let n = 1 + (xorshift(&mut rng) as usize) % 64;
                    let bytes: Vec<u8> = (0..n).map(|_| xorshift(&mut rng) as u8).collect();
                    write_at(seg, at, &bytes);
                }
                // The state file.
                _ => {
                    let bytes: Vec<u8> = (0..40).map(|_| xorshift(&mut rng) as u8).collect();
                    std::fs::write(dir.path().join(STATE_FILE), bytes).unwrap();
                }
            }
            // An error or a recovered log; reads of what was recovered fail cleanly too.
            if let Ok((_, rec)) = Wal::open(dir.path(), 2048) {
                for e in &rec.entries {
                    let _ = e.rec.read();
                }
            }
        }
    }

    #[test]
    fn a_file_of_random_bytes_is_refused_as_no_segment() {
        let dir = tempfile::tempdir().unwrap();
        let path = segment_path(dir.path(), 1);
        std::fs::write(&path, b"certainly not a segment").unwrap();
        let text = match Wal::open(dir.path(), 2048) {
            Err(e) => e.to_string(),
            Ok(_) => panic!("garbage opened as a log"),
        };
        assert!(text.contains("bad segment header"), "{text}");
        assert!(text.contains("offset 0"), "{text}");
    }
}
