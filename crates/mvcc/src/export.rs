//! The store's content in revision order, for other formats (etcd's snapshot file), and an
//! import of content given that way.
//!
//! A [`Export`] sees the store at one point: the revision, compaction point and leases are read
//! together under the writer lock, a hold keeps physical compaction from passing that point,
//! and versions above the revision are not visited; writes go on meanwhile. Versions come in
//! (main, sub) order from the `Revisions` table, which holds each whole, filtered as
//! compaction sees them: above the compaction point all, at or below it only the newest of each
//! key, and not when that one is a tombstone. [`Export::rewind`] starts again at the same
//! point, so a writer that needs two passes sees the same content twice.

use std::ops::{Bound, ControlFlow};

use crate::backend::{Backend, Table, WriteBatch};
use crate::codec;
use crate::error::{Error, Result};
use crate::lease;
use crate::read::{revisions_chunk, try_scan, CHUNK};
use crate::snapshot::SnapshotInfo;
use crate::store::{
    Hold, Store, WriterState, META_COMPACT, META_COMPACT_DONE, META_CURRENT, META_VERSIONS,
};

/// Versions per batch written during an import.
const IMPORT_BATCH: usize = 4096;

/// One version of a key, as etcd's files carry it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Version {
    /// The user key.
    pub key: Vec<u8>,
    /// The revision that wrote it.
    pub main: i64,
    /// Its place within that revision.
    pub sub: i64,
    /// True for a delete.
    pub tombstone: bool,
    /// The revision the key was created at (0 for a tombstone).
    pub create_revision: i64,
    /// The key's version counter (0 for a tombstone).
    pub version: i64,
    /// The lease it is attached to, 0 for none.
    pub lease: i64,
    /// The value (empty for a tombstone).
    pub value: Vec<u8>,
}

/// A lease record: (id, granted TTL, remaining TTL at the last checkpoint or 0).
pub type LeaseRecord = (i64, i64, i64);

/// The store at one point, read in revision order chunk by chunk.
pub struct Export<B> {
    store: Store<B>,
    _hold: Hold<B>,
    generation: u64,
    info: SnapshotInfo,
    leases: Vec<LeaseRecord>,
    /// Where the next chunk starts in `Revisions`; `None` once every version was given.
    next: Option<Bound<Vec<u8>>>,
}

impl<B: Backend> Store<B> {
    /// The store's content at its current revision, in revision order.
    ///
    /// # Errors
    /// Backend errors.
    pub fn export(&self) -> Result<Export<B>> {
        let (info, hold, leases, generation) = self.snapshot_point()?;
        Ok(Export {
            store: self.clone(),
            _hold: hold,
            generation,
            info,
            leases,
            next: Some(Bound::Unbounded),
        })
    }

    /// Replaces the whole store with the content `versions` gives (any order; each version
    /// once) and `leases`, at revision `revision` compacted at `compacted`.
    ///
    /// Built aside and installed at once, as [`Store::restore`]: a failure part way (an error
    /// from `versions` included) leaves the store as it was.
    ///
    /// # Errors
    /// [`Error::BadSnapshot`] for a version past `revision` or a bad compaction point;
    /// errors from `versions`; backend errors.
    pub fn import(
        &self,
        revision: i64,
        compacted: i64,
        versions: &mut dyn Iterator<Item = Result<Version>>,
        leases: &[LeaseRecord],
    ) -> Result<SnapshotInfo> {
        if compacted < 0 || compacted > revision {
            return Err(bad(format!(
                "compaction point {compacted} outside revision {revision}"
            )));
        }
        let mut writer: parking_lot::MutexGuard<'_, WriterState> = self.lock_writer();
        let mut replacement = self.backend().replace()?;
        let mut batch = WriteBatch::new();
        let mut count: i64 = 0;
        for v in versions {
            let v = v?;
            if v.main > revision || v.main < 1 || v.sub < 0 {
                return Err(bad(format!(
                    "version at ({}, {}) outside revision {revision}",
                    v.main, v.sub
                )));
            }
            let record = if v.tombstone {
                codec::encode_tombstone(v.sub)
            } else {
                codec::encode_put(
                    v.sub,
                    &crate::KeyValue {
                        key: Vec::new(),
                        create_revision: v.create_revision,
                        mod_revision: v.main,
                        version: v.version,
                        value: v.value,
                        lease: v.lease,
                    },
                )
            };
            let (index, stored) = codec::encode_version(&v.key, &record)?;
            batch.put(
                Table::Revisions,
                codec::revision_key(v.main, v.sub).to_vec(),
                stored,
            );
            batch.put(Table::Keys, codec::version_key(&v.key, v.main), index);
            count += 1;
            if batch.len() >= IMPORT_BATCH {
                replacement.write(std::mem::take(&mut batch))?;
            }
        }
        for &(id, ttl, remaining) in leases {
            batch.put(
                Table::Meta,
                lease::record_key(id),
                lease::encode(ttl, remaining),
            );
        }
        for (key, value) in [
            (META_CURRENT, revision),
            (META_COMPACT, compacted),
            (META_COMPACT_DONE, compacted),
            (META_VERSIONS, count),
        ] {
            batch.put(Table::Meta, key.to_vec(), codec::encode_i64(value));
        }
        batch.put(
            Table::Meta,
            codec::META_LAYOUT.to_vec(),
            codec::encode_i64(codec::LAYOUT),
        );
        replacement.write(batch)?;
        self.install(&mut writer, replacement, revision, compacted, count)?;
        Ok(SnapshotInfo {
            revision,
            compacted,
            applied: None,
        })
    }
}

impl<B: Backend> Export<B> {
    /// The revision, compaction point and applied position this export shows.
    pub fn info(&self) -> &SnapshotInfo {
        &self.info
    }

    /// Every lease at that point, by id.
    pub fn leases(&self) -> &[LeaseRecord] {
        &self.leases
    }

    /// Starts again from the first version.
    pub fn rewind(&mut self) {
        self.next = Some(Bound::Unbounded);
    }

    /// The next versions in revision order (at most about `CHUNK` visited); `None` at the end.
    ///
    /// # Errors
    /// Backend errors; an error when the store was restored from a snapshot meanwhile.
    pub fn next_chunk(&mut self) -> Result<Option<Vec<Version>>> {
        // A chunk all compacted away goes on to the next rather than look like the end.
        loop {
            let Some(from) = self.next.take() else {
                return Ok(None);
            };
            let out = self.chunk_from(from)?;
            if !out.is_empty() || self.next.is_none() {
                return Ok(Some(out));
            }
        }
    }

    fn chunk_from(&mut self, from: Bound<Vec<u8>>) -> Result<Vec<Version>> {
        let (_installed, generation) = self.store.read_installed();
        if generation != self.generation {
            return Err(Error::SnapshotIo(std::io::Error::other(
                "the store was restored from another snapshot while this export ran",
            )));
        }
        let backend = self.store.backend();
        let found = revisions_chunk(backend, &from, self.info.revision)?;
        // A full chunk may not be the last: the next starts after its last entry.
        self.next = found
            .last()
            .filter(|_| found.len() >= CHUNK)
            .map(|(main, sub, _)| Bound::Excluded(codec::revision_key(*main, *sub).to_vec()));
        let mut out = Vec::with_capacity(found.len());
        for (main, sub, stored) in found {
            let (key, record) = codec::split_stored(&stored)?;
            if main <= self.info.compacted && !self.newest_at_compaction(key, main)? {
                continue;
            }
            let key = key.to_vec();
            let decoded = codec::decode_record(record)?;
            out.push(match decoded.put {
                None => Version {
                    key,
                    main,
                    sub,
                    tombstone: true,
                    create_revision: 0,
                    version: 0,
                    lease: 0,
                    value: Vec::new(),
                },
                Some(put) => Version {
                    key,
                    main,
                    sub,
                    tombstone: false,
                    create_revision: put.create_revision,
                    version: put.version,
                    lease: put.lease,
                    value: put.value.to_vec(),
                },
            });
        }
        Ok(out)
    }

    /// Whether `key`'s version at `main` is what compaction keeps: its newest at or below the
    /// compaction point, and not a tombstone.
    fn newest_at_compaction(&self, key: &[u8], main: i64) -> Result<bool> {
        let from = codec::version_key(key, self.info.compacted);
        let group = codec::group(key);
        let mut keep = false;
        try_scan(
            self.store.backend(),
            Table::Keys,
            Bound::Included(&from),
            Bound::Unbounded,
            &mut |k, v| {
                let (g, m) = codec::split_version_key(k)?;
                keep = g == group.as_slice() && m == main && !codec::is_tombstone(v);
                Ok(ControlFlow::Break(()))
            },
        )?;
        Ok(keep)
    }
}

fn bad(what: impl Into<String>) -> Error {
    Error::BadSnapshot { what: what.into() }
}
