//! Whole-store snapshots as a byte stream, restore from one, and the key-space hash.
//!
//! A snapshot is logical: the versions a reader could still see at revision R with the store
//! compacted at C. Versions at or below R never change, and a hold keeps physical compaction
//! from passing C while the snapshot streams, so no engine support is needed.
//!
//! Stream format (integers big-endian): `MSTSNAP2`; revision u64, compaction point u64, applied
//! position flag u8 + length u32 + bytes; entries `1, len u32, key, len u32, record` (the
//! `Keys` table's key and the whole record, value included, as storage layout 1 kept them in
//! `Keys`: the stream does not change with the storage layout); then leases `2, id i64, ttl
//! i64, remaining i64`; end `0, entry count u64, CRC-32 u32` of every byte before the CRC (the
//! count covers both kinds of entries).

use std::io::{self, Read};
use std::ops::{Bound, ControlFlow};

use crate::backend::{Backend, Table, WriteBatch};
use crate::codec;
use crate::error::{Error, Result};
use crate::lease;
use crate::read::{as_ref, try_scan, CHUNK};
use crate::store::{
    Hold, LeaseRecord, Store, META_COMPACT, META_COMPACT_DONE, META_CURRENT, META_VERSIONS,
};
use crate::types::KvHash;

const MAGIC: &[u8; 8] = b"MSTSNAP2";
const TAG_ENTRY: u8 = 1;
const TAG_LEASE: u8 = 2;
const TAG_END: u8 = 0;
/// No key or record is this large; a length above it means a corrupt stream, not an allocation.
const MAX_FIELD: u32 = 256 << 20;
/// Entries per backend batch during restore.
const RESTORE_BATCH: usize = 4096;

/// Picks, from versions visited in `Keys` order, those a reader at `rev` can still see after
/// compaction at `compacted`: newer than the compaction point, or the newest at or below it
/// unless that one is a tombstone.
struct Kept {
    rev: i64,
    compacted: i64,
    group: Vec<u8>,
    base_seen: bool,
}

impl Kept {
    fn new(rev: i64, compacted: i64) -> Self {
        Self {
            rev,
            compacted,
            group: Vec::new(),
            base_seen: false,
        }
    }

    fn accept(&mut self, raw_key: &[u8], record: &[u8]) -> Result<bool> {
        let (group, main) = codec::split_version_key(raw_key)?;
        if group != self.group.as_slice() {
            self.group.clear();
            self.group.extend_from_slice(group);
            self.base_seen = false;
        }
        if main > self.rev {
            return Ok(false);
        }
        if main > self.compacted {
            return Ok(true);
        }
        if self.base_seen {
            return Ok(false);
        }
        self.base_seen = true;
        Ok(!codec::is_tombstone(record))
    }
}

/// Calls `f` with the kept versions after `from` (their `Keys` key and whole record, as
/// layout 1 kept it in `Keys`), at most `CHUNK` visited; returns where to go on.
fn scan_kept<B: Backend>(
    backend: &B,
    from: &Bound<Vec<u8>>,
    kept: &mut Kept,
    f: &mut dyn FnMut(&[u8], &[u8]),
) -> Result<Option<Vec<u8>>> {
    let mut visited = 0;
    let mut last = None;
    let mut keys = Vec::new();
    let mut wanted = Vec::new();
    try_scan(
        backend,
        Table::Keys,
        as_ref(from),
        Bound::Unbounded,
        &mut |k, v| {
            visited += 1;
            if kept.accept(k, v)? {
                let (_, main) = codec::split_version_key(k)?;
                let sub = codec::decode_record(v)?.sub;
                keys.push(k.to_vec());
                wanted.push(codec::revision_key(main, sub).to_vec());
            }
            if visited >= CHUNK {
                last = Some(k.to_vec());
                return Ok(ControlFlow::Break(()));
            }
            Ok(ControlFlow::Continue(()))
        },
    )?;
    let stored = backend.get_many(Table::Revisions, &wanted)?;
    for (key, raw) in keys.iter().zip(stored) {
        let Some(raw) = raw else {
            return Err(Error::corrupt("a version indexed but not stored"));
        };
        f(key, codec::split_stored(&raw)?.1);
    }
    Ok(last)
}

impl<B: Backend> Store<B> {
    /// etcd 3.4's key-space hash at `rev` (0 for the current revision): equal on any two
    /// stores with the same history and compaction point, however far physical compaction has
    /// got on each, and equal to etcd's own; see [`Store::hash_until`].
    ///
    /// # Errors
    /// [`Refusal::Compacted`](crate::Refusal::Compacted) or [`Refusal::FutureRevision`](crate::Refusal::FutureRevision) for a revision out of reach.
    pub fn hash(&self, rev: i64) -> Result<KvHash> {
        self.hash_until(rev, &|| false)
    }

    /// A stream of the whole store at its current revision, produced in bounded chunks.
    ///
    /// # Errors
    /// Backend errors.
    pub fn snapshot(&self) -> Result<SnapshotReader<B>> {
        let (info, hold, leases, generation) = self.snapshot_point()?;
        let SnapshotInfo {
            revision,
            compacted,
            applied,
        } = info.clone();
        let mut header = Vec::with_capacity(32);
        header.extend_from_slice(MAGIC);
        header.extend_from_slice(&(revision as u64).to_be_bytes());
        header.extend_from_slice(&(compacted as u64).to_be_bytes());
        match &applied {
            Some(pos) => {
                header.push(1);
                header.extend_from_slice(&(pos.len() as u32).to_be_bytes());
                header.extend_from_slice(pos);
            }
            None => header.push(0),
        }
        let mut hasher = crc32fast::Hasher::new();
        hasher.update(&header);
        Ok(SnapshotReader {
            store: self.clone(),
            _hold: hold,
            generation,
            info,
            kept: Kept::new(revision, compacted),
            buf: header,
            pos: 0,
            next: Some(Bound::Unbounded),
            leases,
            leases_sent: 0,
            done: false,
            count: 0,
            hasher,
        })
    }

    /// Replaces the whole store with the snapshot read from `input`.
    ///
    /// The new content is built aside ([`Backend::replace`]) and installed in one atomic,
    /// durable switch once the last byte is checked: readers see the whole old store until
    /// then and the whole new one after, a bad stream leaves the store as it was, and a crash
    /// at any point leaves the old or the new store on disk.
    ///
    /// # Errors
    /// [`Error::BadSnapshot`] for a malformed stream; I/O and backend errors. The store is
    /// unchanged by a failed restore.
    pub fn restore(&self, input: impl Read) -> Result<SnapshotInfo> {
        let mut writer = self.lock_writer();
        let mut input = Checked {
            inner: input,
            hasher: crc32fast::Hasher::new(),
        };
        let mut magic = [0u8; 8];
        input.read_exact(&mut magic)?;
        if &magic != MAGIC {
            return Err(bad("not a MetaStore snapshot"));
        }
        let revision = input.read_u64()? as i64;
        let compacted = input.read_u64()? as i64;
        let applied = match input.read_u8()? {
            0 => None,
            1 => Some(input.read_field()?),
            other => return Err(bad(format!("bad applied-position flag {other}"))),
        };
        let mut replacement = self.backend().replace()?;
        let mut batch = WriteBatch::new();
        let mut count: u64 = 0;
        let mut versions: i64 = 0;
        loop {
            match input.read_u8()? {
                TAG_ENTRY => {
                    let key = input.read_field()?;
                    let record = input.read_field()?;
                    let (group, main) = codec::split_version_key(&key).map_err(to_bad)?;
                    let user_key = codec::decode_group(group).map_err(to_bad)?;
                    let sub = codec::decode_record(&record).map_err(to_bad)?.sub;
                    if main > revision {
                        return Err(bad(format!("entry at {main} beyond revision {revision}")));
                    }
                    let (index, stored) =
                        codec::encode_version(&user_key, &record).map_err(to_bad)?;
                    batch.put(
                        Table::Revisions,
                        codec::revision_key(main, sub).to_vec(),
                        stored,
                    );
                    batch.put(Table::Keys, key, index);
                    count += 1;
                    versions += 1;
                }
                TAG_LEASE => {
                    let id = input.read_u64()? as i64;
                    let ttl = input.read_u64()? as i64;
                    let remaining = input.read_u64()? as i64;
                    batch.put(
                        Table::Meta,
                        lease::record_key(id),
                        lease::encode(ttl, remaining),
                    );
                    count += 1;
                }
                TAG_END => break,
                other => return Err(bad(format!("bad entry tag {other}"))),
            }
            if batch.len() >= RESTORE_BATCH {
                replacement.write(std::mem::take(&mut batch))?;
            }
        }
        let expected_count = input.read_u64()?;
        let crc = input.hasher.clone().finalize();
        let mut stored_crc = [0u8; 4];
        input.read_unchecked(&mut stored_crc)?;
        if expected_count != count {
            return Err(bad(format!(
                "stream says {expected_count} entries, held {count}"
            )));
        }
        if u32::from_be_bytes(stored_crc) != crc {
            return Err(bad("checksum mismatch"));
        }
        for (key, value) in [
            (META_CURRENT, revision),
            (META_COMPACT, compacted),
            (META_COMPACT_DONE, compacted),
            (META_VERSIONS, versions),
        ] {
            batch.put(Table::Meta, key.to_vec(), codec::encode_i64(value));
        }
        batch.put(
            Table::Meta,
            codec::META_LAYOUT.to_vec(),
            codec::encode_i64(codec::LAYOUT),
        );
        if let Some(pos) = &applied {
            batch.set_applied(pos.clone());
        }
        replacement.write(batch)?;
        self.install(&mut writer, replacement, revision, compacted, versions)?;
        Ok(SnapshotInfo {
            revision,
            compacted,
            applied,
        })
    }
}

fn bad(what: impl Into<String>) -> Error {
    Error::BadSnapshot { what: what.into() }
}

fn to_bad(e: Error) -> Error {
    bad(e.to_string())
}

/// What a snapshot holds, besides its entries.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SnapshotInfo {
    /// The store's revision when the snapshot was taken.
    pub revision: i64,
    /// The compaction point then.
    pub compacted: i64,
    /// The applied position then.
    pub applied: Option<Vec<u8>>,
}

/// A snapshot being streamed out; read it like any [`Read`].
pub struct SnapshotReader<B> {
    store: Store<B>,
    _hold: Hold<B>,
    /// The store's restore count when the snapshot began: a restore since replaced the
    /// content the stream was reading.
    generation: u64,
    info: SnapshotInfo,
    kept: Kept,
    buf: Vec<u8>,
    pos: usize,
    /// Where the next chunk of keys starts; `None` once every key is in `buf`.
    next: Option<Bound<Vec<u8>>>,
    /// The lease records, streamed after the keys.
    leases: Vec<LeaseRecord>,
    leases_sent: usize,
    /// The end frame is in `buf` (or was read).
    done: bool,
    count: u64,
    hasher: crc32fast::Hasher,
}

impl<B> SnapshotReader<B> {
    /// The revision, compaction point and applied position the stream carries.
    pub fn info(&self) -> &SnapshotInfo {
        &self.info
    }
}

impl<B: Backend> SnapshotReader<B> {
    fn refill(&mut self) -> Result<()> {
        self.buf.clear();
        self.pos = 0;
        if let Some(from) = self.next.take() {
            let (_installed, generation) = self.store.read_installed();
            if generation != self.generation {
                return Err(Error::SnapshotIo(io::Error::other(
                    "the store was restored from another snapshot while this one streamed",
                )));
            }
            let buf = &mut self.buf;
            let count = &mut self.count;
            let resume = scan_kept(self.store.backend(), &from, &mut self.kept, &mut |k, v| {
                buf.push(TAG_ENTRY);
                buf.extend_from_slice(&(k.len() as u32).to_be_bytes());
                buf.extend_from_slice(k);
                buf.extend_from_slice(&(v.len() as u32).to_be_bytes());
                buf.extend_from_slice(v);
                *count += 1;
            })?;
            self.next = resume.map(Bound::Excluded);
            self.hasher.update(&self.buf);
            return Ok(());
        }
        if self.leases_sent < self.leases.len() {
            let end = (self.leases_sent + CHUNK).min(self.leases.len());
            for &(id, ttl, remaining) in &self.leases[self.leases_sent..end] {
                self.buf.push(TAG_LEASE);
                for v in [id, ttl, remaining] {
                    self.buf.extend_from_slice(&(v as u64).to_be_bytes());
                }
                self.count += 1;
            }
            self.leases_sent = end;
            self.hasher.update(&self.buf);
            return Ok(());
        }
        if self.done {
            return Ok(());
        }
        self.buf.push(TAG_END);
        self.buf.extend_from_slice(&self.count.to_be_bytes());
        self.hasher.update(&self.buf);
        let crc = self.hasher.clone().finalize();
        self.buf.extend_from_slice(&crc.to_be_bytes());
        self.done = true;
        Ok(())
    }
}

impl<B: Backend> Read for SnapshotReader<B> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        while self.pos == self.buf.len() {
            if self.done {
                return Ok(0);
            }
            self.refill().map_err(io::Error::other)?;
        }
        let n = out.len().min(self.buf.len() - self.pos);
        out[..n].copy_from_slice(&self.buf[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

/// A reader that checksums what it reads and bounds the fields it allocates for.
struct Checked<R> {
    inner: R,
    hasher: crc32fast::Hasher,
}

impl<R: Read> Checked<R> {
    /// Reads without checksumming: for the checksum itself.
    fn read_unchecked(&mut self, buf: &mut [u8]) -> Result<()> {
        self.inner.read_exact(buf).map_err(|e| match e.kind() {
            io::ErrorKind::UnexpectedEof => bad("stream ends early"),
            _ => Error::SnapshotIo(e),
        })
    }

    fn read_exact(&mut self, buf: &mut [u8]) -> Result<()> {
        self.read_unchecked(buf)?;
        self.hasher.update(buf);
        Ok(())
    }

    fn read_u8(&mut self) -> Result<u8> {
        let mut b = [0u8; 1];
        self.read_exact(&mut b)?;
        Ok(b[0])
    }

    fn read_u64(&mut self) -> Result<u64> {
        let mut b = [0u8; 8];
        self.read_exact(&mut b)?;
        Ok(u64::from_be_bytes(b))
    }

    fn read_field(&mut self) -> Result<Vec<u8>> {
        let mut b = [0u8; 4];
        self.read_exact(&mut b)?;
        let len = u32::from_be_bytes(b);
        if len > MAX_FIELD {
            return Err(bad(format!("field of {len} bytes")));
        }
        let mut field = vec![0u8; len as usize];
        self.read_exact(&mut field)?;
        Ok(field)
    }
}
