//! The key-space hash as etcd 3.4 computes it, so `HashKV` agrees with etcd's for the same history.
//!
//! etcd hashes its bbolt `key` bucket: CRC-32 (Castagnoli) over the bucket's name, then each
//! stored version in revision order, as etcd stores it: the revision key (main and sub revision
//! as 8 big-endian bytes each with `_` between, and a trailing `t` for a tombstone) followed by
//! the version as a protobuf `mvccpb.KeyValue` (a tombstone carries the key alone). Versions after
//! the compaction point and up to the hashed revision count. Of the versions at or below the
//! compaction point, etcd counts those its in-memory index would keep at the hashed revision
//! (each key's newest version there, unless deleted); when that index keeps nothing at all it
//! counts every version still stored at or below the compaction point. Both come from our own
//! tables here: the `Revisions` table gives etcd's order, the `Keys` table the versions.

use std::ops::{Bound, ControlFlow};

use crate::backend::{Backend, Table};
use crate::codec;
use crate::error::{Error, Refusal, Result};
use crate::keys::KeyRange;
use crate::read;
use crate::store::Store;
use crate::types::KvHash;

/// The name of etcd's bucket of versions, hashed first.
const KEY_BUCKET: &[u8] = b"key";

/// CRC-32 with the Castagnoli polynomial (reflected), as Go's `crc32.MakeTable(crc32.Castagnoli)`.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Crc32c(u32);

const fn crc32c_table() -> [u32; 256] {
    let mut table = [0u32; 256];
    let mut i = 0;
    while i < 256 {
        let mut c = i as u32;
        let mut bit = 0;
        while bit < 8 {
            c = if c & 1 == 1 {
                (c >> 1) ^ 0x82F6_3B78
            } else {
                c >> 1
            };
            bit += 1;
        }
        table[i] = c;
        i += 1;
    }
    table
}

static CRC32C: [u32; 256] = crc32c_table();

impl Crc32c {
    pub(crate) fn new() -> Self {
        Self(!0)
    }

    pub(crate) fn update(&mut self, bytes: &[u8]) {
        let mut c = self.0;
        for &b in bytes {
            c = CRC32C[((c ^ u32::from(b)) & 0xff) as usize] ^ (c >> 8);
        }
        self.0 = c;
    }

    pub(crate) fn finalize(self) -> u32 {
        !self.0
    }
}

fn put_varint(out: &mut Vec<u8>, mut n: u64) {
    while n >= 0x80 {
        out.push((n as u8) | 0x80);
        n >>= 7;
    }
    out.push(n as u8);
}

/// A protobuf field: tag, then a varint, left out when zero as proto3 does.
fn put_int(out: &mut Vec<u8>, tag: u8, n: i64) {
    if n != 0 {
        out.push(tag);
        put_varint(out, n as u64);
    }
}

/// A protobuf bytes field, left out when empty as proto3 does.
fn put_bytes(out: &mut Vec<u8>, tag: u8, b: &[u8]) {
    if !b.is_empty() {
        out.push(tag);
        put_varint(out, b.len() as u64);
        out.extend_from_slice(b);
    }
}

/// etcd's bbolt key of a version: main `_` sub, and `t` for a tombstone.
fn etcd_revision_key(out: &mut Vec<u8>, main: i64, sub: i64, tombstone: bool) {
    out.extend_from_slice(&(main as u64).to_be_bytes());
    out.push(b'_');
    out.extend_from_slice(&(sub as u64).to_be_bytes());
    if tombstone {
        out.push(b't');
    }
}

/// The `mvccpb.KeyValue` etcd stores for a version (fields 1 to 6 in order).
fn etcd_value(out: &mut Vec<u8>, key: &[u8], main: i64, record: &codec::Record<'_>) {
    put_bytes(out, 0x0a, key);
    if let Some(put) = &record.put {
        put_int(out, 0x10, put.create_revision);
        put_int(out, 0x18, main);
        put_int(out, 0x20, put.version);
        put_bytes(out, 0x2a, put.value);
        put_int(out, 0x30, put.lease);
    }
}

/// The main revision of `key`'s newest stored version at or below `at`, if any.
fn newest_at<B: Backend>(backend: &B, key: &[u8], at: i64) -> Result<Option<i64>> {
    let from = codec::version_key(key, at);
    let mut to = codec::group(key);
    to.extend_from_slice(&[0xff; codec::REV_LEN]);
    let mut found = None;
    backend.scan(
        Table::Keys,
        Bound::Included(&from),
        Bound::Included(&to),
        &mut |k, _| {
            found = Some(k.to_vec());
            ControlFlow::Break(())
        },
    )?;
    found
        .map(|k| codec::split_version_key(&k).map(|(_, main)| main))
        .transpose()
}

impl<B: Backend> Store<B> {
    /// etcd 3.4's `HashKV` hash at `rev` (0 for the current revision), which equals etcd's for
    /// the same history. etcd's rules for the revision hold: at or below the compaction point
    /// is [`Refusal::Compacted`], past the current one [`Refusal::FutureRevision`], and a negative
    /// one hashes nothing.
    ///
    /// # Errors
    /// As above, [`Error::Stopped`] when `stop` said so (asked between chunks of the scan), and
    /// backend errors.
    pub fn hash_until(&self, rev: i64, stop: &dyn Fn() -> bool) -> Result<KvHash> {
        let (_installed, _) = self.read_installed();
        let current = self.current_revision();
        // Physical compaction holds at the compaction point while the scan runs.
        let _hold = self.hold(self.compact_revision());
        let compacted = self.compact_revision();
        if rev > 0 && rev <= compacted {
            return Err(Refusal::Compacted {
                requested: rev,
                compacted,
            }
            .into());
        }
        if rev > current {
            return Err(Refusal::FutureRevision {
                requested: rev,
                current,
            }
            .into());
        }
        let rev = if rev == 0 { current } else { rev };
        let mut hasher = Crc32c::new();
        hasher.update(KEY_BUCKET);
        if rev > 0 {
            self.hash_versions(rev, compacted, stop, &mut hasher)?;
        }
        Ok(KvHash {
            hash: hasher.finalize(),
            revision: rev,
            compact_revision: compacted,
        })
    }

    fn hash_versions(
        &self,
        rev: i64,
        compacted: i64,
        stop: &dyn Fn() -> bool,
        hasher: &mut Crc32c,
    ) -> Result<()> {
        let backend = self.backend();
        // Whether etcd's index keeps anything at `rev`: some key is live there.
        let mut any_live = false;
        if compacted > 0 {
            read::scan_visible_until(backend, &KeyRange::new(b"", b"\0"), rev, stop, &mut |_| {
                any_live = true;
                Ok(ControlFlow::Break(()))
            })?;
        }
        let mut from = Bound::Unbounded;
        let mut buf = Vec::new();
        loop {
            if stop() {
                return Err(Error::Stopped);
            }
            let chunk = read::revisions_chunk(backend, &from, rev)?;
            let Some(last) = chunk.last() else {
                return Ok(());
            };
            let next = Bound::Excluded(codec::revision_key(last.0, last.1).to_vec());
            for (main, sub, stored) in &chunk {
                let (key, record) = codec::split_stored(stored)?;
                let record = codec::decode_record(record)?;
                let tombstone = record.put.is_none();
                if *main <= compacted {
                    // What etcd's index keeps: the key's newest version at `rev`, or with
                    // nothing kept anywhere, what compaction left stored (the newest at the
                    // compaction point). A tombstone there is never kept.
                    let at = if any_live { rev } else { compacted };
                    if tombstone || newest_at(backend, key, at)? != Some(*main) {
                        continue;
                    }
                }
                buf.clear();
                etcd_revision_key(&mut buf, *main, *sub, tombstone);
                etcd_value(&mut buf, key, *main, &record);
                hasher.update(&buf);
            }
            from = next;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32c_matches_the_standard_check_value() {
        let mut c = Crc32c::new();
        c.update(b"123456789");
        assert_eq!(c.finalize(), 0xE306_9283);
        let mut c = Crc32c::new();
        c.update(KEY_BUCKET);
        assert_eq!(
            c.finalize(),
            1_084_519_789,
            "etcd 3.4's hash of an empty store"
        );
    }

    #[test]
    fn versions_are_laid_out_as_etcd_stores_them() {
        let mut buf = Vec::new();
        etcd_revision_key(&mut buf, 4, 2, true);
        assert_eq!(buf, b"\0\0\0\0\0\0\0\x04_\0\0\0\0\0\0\0\x02t");
        let value = b"v";
        let record = codec::Record {
            sub: 0,
            put: Some(codec::PutRecord {
                create_revision: 2,
                version: 300,
                lease: 0,
                value,
            }),
        };
        buf.clear();
        etcd_value(&mut buf, b"k", 7, &record);
        assert_eq!(
            buf,
            [0x0a, 1, b'k', 0x10, 2, 0x18, 7, 0x20, 0xac, 0x02, 0x2a, 1, b'v']
        );
        buf.clear();
        etcd_value(&mut buf, b"k", 7, &codec::Record { sub: 1, put: None });
        assert_eq!(buf, [0x0a, 1, b'k'], "a tombstone is the key alone");
    }
}
