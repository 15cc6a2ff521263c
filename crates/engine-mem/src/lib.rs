//! An in-memory [`mvcc::Backend`]: the fastest engine, with nothing on disk.
//!
//! It owns three ordered maps (one per [`mvcc::Table`]) and the applied position behind one
//! reader-writer lock, so a batch becomes visible all at once. It knows nothing of revisions or
//! Raft: after a restart its contents are rebuilt by the layer above (Raft snapshot plus log),
//! which is why [`MemBackend::applied`] starts empty.
//!
//! # Layout
//! - `lib.rs`: [`MemBackend`], the whole engine.

use std::borrow::Borrow;
use std::cmp::Ordering;
use std::collections::BTreeSet;
use std::ops::{Bound, ControlFlow};

use mvcc::{is_empty_interval, Backend, BackendError, Replacement, Table, Visitor, WriteBatch};
use parking_lot::RwLock;

/// One entry in one allocation: `varint(key length) ++ key ++ value`.
///
/// A key and a value in separate boxes cost two allocations and two pointers in every tree
/// slot; together they cost one of each, which is most of the difference between 1.9× and
/// 1.5× the raw bytes for small keys with 256-byte values.
struct Entry(Box<[u8]>);

impl Entry {
    fn new(key: &[u8], value: &[u8]) -> Self {
        let mut buf = Vec::with_capacity(varint_len(key.len()) + key.len() + value.len());
        let mut n = key.len();
        while n >= 0x80 {
            buf.push((n as u8) | 0x80);
            n >>= 7;
        }
        buf.push(n as u8);
        buf.extend_from_slice(key);
        buf.extend_from_slice(value);
        Self(buf.into_boxed_slice())
    }

    /// Where the key starts and how long it is.
    fn key_span(&self) -> (usize, usize) {
        let mut len = 0usize;
        for (i, b) in self.0.iter().enumerate() {
            len |= usize::from(b & 0x7f) << (7 * i);
            if b & 0x80 == 0 {
                return (i + 1, len);
            }
        }
        (self.0.len(), 0)
    }

    fn key(&self) -> &[u8] {
        let (start, len) = self.key_span();
        &self.0[start..start + len]
    }

    fn value(&self) -> &[u8] {
        let (start, len) = self.key_span();
        &self.0[start + len..]
    }
}

fn varint_len(n: usize) -> usize {
    (usize::BITS as usize - n.leading_zeros() as usize)
        .max(1)
        .div_ceil(7)
}

impl Borrow<[u8]> for Entry {
    fn borrow(&self) -> &[u8] {
        self.key()
    }
}

impl PartialEq for Entry {
    fn eq(&self, other: &Self) -> bool {
        self.key() == other.key()
    }
}

impl Eq for Entry {}

impl PartialOrd for Entry {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Entry {
    fn cmp(&self, other: &Self) -> Ordering {
        self.key().cmp(other.key())
    }
}

/// A table: entries ordered by key.
type Map = BTreeSet<Entry>;

#[derive(Default)]
struct Tables {
    keys: Map,
    revisions: Map,
    meta: Map,
    applied: Option<Vec<u8>>,
    /// Bytes of every entry held (keys, values and their length prefixes), kept up to date by
    /// `apply`: the engine's size for `--quota-backend-bytes`.
    bytes: usize,
}

impl Tables {
    fn table(&self, table: Table) -> &Map {
        match table {
            Table::Keys => &self.keys,
            Table::Revisions => &self.revisions,
            Table::Meta => &self.meta,
        }
    }

    fn table_mut(&mut self, table: Table) -> &mut Map {
        match table {
            Table::Keys => &mut self.keys,
            Table::Revisions => &mut self.revisions,
            Table::Meta => &mut self.meta,
        }
    }

    fn apply(&mut self, batch: WriteBatch) {
        let (clear, ops, applied) = batch.into_parts();
        if clear {
            *self = Tables::default();
        }
        for op in ops {
            let map = self.table_mut(op.table);
            let (added, removed) = match op.value {
                Some(value) => {
                    let entry = Entry::new(&op.key, &value);
                    let added = entry.0.len();
                    (added, map.replace(entry).map_or(0, |old| old.0.len()))
                }
                None => (0, map.take(op.key.as_slice()).map_or(0, |old| old.0.len())),
            };
            self.bytes = self.bytes + added - removed;
        }
        if applied.is_some() {
            self.applied = applied;
        }
    }
}

/// New content built aside, then swapped in under the write lock.
struct MemReplacement<'a> {
    backend: &'a MemBackend,
    tables: Tables,
}

impl Replacement for MemReplacement<'_> {
    fn write(&mut self, batch: WriteBatch) -> Result<(), BackendError> {
        self.tables.apply(batch);
        Ok(())
    }

    fn commit(self: Box<Self>) -> Result<(), BackendError> {
        let MemReplacement { backend, tables } = *self;
        // The old tables are freed after the lock is released.
        let old = std::mem::replace(&mut *backend.tables.write(), tables);
        drop(old);
        Ok(())
    }
}

/// The in-memory engine. Writes are visible, never durable; `flush` has nothing to do.
#[derive(Default)]
pub struct MemBackend {
    tables: RwLock<Tables>,
}

impl MemBackend {
    /// An empty engine.
    pub fn new() -> Self {
        Self::default()
    }

    /// Entries per table, for tests and memory accounting.
    pub fn len(&self, table: Table) -> usize {
        self.tables.read().table(table).len()
    }

    /// Bytes of the keys and values held (with a length prefix per entry), the size
    /// `--quota-backend-bytes` is checked against: memory the entries take, without the
    /// trees' own overhead, which is about as large again for small entries.
    pub fn size_bytes(&self) -> u64 {
        self.tables.read().bytes as u64
    }

    /// True when no table holds anything.
    pub fn is_empty(&self) -> bool {
        let t = self.tables.read();
        t.keys.is_empty() && t.revisions.is_empty() && t.meta.is_empty()
    }
}

impl Backend for MemBackend {
    fn get(&self, table: Table, key: &[u8]) -> Result<Option<Vec<u8>>, BackendError> {
        Ok(self
            .tables
            .read()
            .table(table)
            .get(key)
            .map(|e| e.value().to_vec()))
    }

    fn scan(
        &self,
        table: Table,
        from: Bound<&[u8]>,
        to: Bound<&[u8]>,
        visit: &mut Visitor<'_>,
    ) -> Result<(), BackendError> {
        // `BTreeMap::range` panics on inverted bounds.
        if is_empty_interval(from, to) {
            return Ok(());
        }
        let tables = self.tables.read();
        for e in tables.table(table).range::<[u8], _>((from, to)) {
            if let ControlFlow::Break(()) = visit(e.key(), e.value()) {
                break;
            }
        }
        Ok(())
    }

    fn write(&self, batch: WriteBatch) -> Result<(), BackendError> {
        self.tables.write().apply(batch);
        Ok(())
    }

    fn applied(&self) -> Result<Option<Vec<u8>>, BackendError> {
        Ok(self.tables.read().applied.clone())
    }

    fn flush(&self) -> Result<(), BackendError> {
        Ok(())
    }

    fn replace(&self) -> Result<Box<dyn Replacement + '_>, BackendError> {
        Ok(Box::new(MemReplacement {
            backend: self,
            tables: Tables::default(),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_split_back_into_key_and_value() {
        for key_len in [0, 1, 127, 128, 300, 20_000] {
            let key = vec![b'k'; key_len];
            let e = Entry::new(&key, b"value");
            assert_eq!((e.key(), e.value()), (key.as_slice(), &b"value"[..]));
            assert_eq!(
                e.0.len(),
                varint_len(key_len) + key_len + 5,
                "no spare bytes"
            );
        }
        let b = MemBackend::new();
        let mut batch = WriteBatch::new();
        batch.put(Table::Keys, b"k".to_vec(), b"one".to_vec());
        batch.put(Table::Keys, b"k".to_vec(), b"two".to_vec());
        b.write(batch).unwrap();
        assert_eq!(
            b.get(Table::Keys, b"k").unwrap().as_deref(),
            Some(&b"two"[..]),
            "a later put wins"
        );
        assert_eq!(b.len(Table::Keys), 1);
    }

    #[test]
    fn size_counts_what_is_held() {
        let b = MemBackend::new();
        assert_eq!(b.size_bytes(), 0);
        let mut batch = WriteBatch::new();
        batch.put(Table::Keys, b"k".to_vec(), vec![0; 100]);
        batch.put(Table::Meta, b"m".to_vec(), vec![0; 10]);
        b.write(batch).unwrap();
        assert_eq!(b.size_bytes(), (1 + 1 + 100) + (1 + 1 + 10));
        let mut batch = WriteBatch::new();
        batch.put(Table::Keys, b"k".to_vec(), vec![0; 50]);
        batch.delete(Table::Meta, b"m".to_vec());
        batch.delete(Table::Meta, b"absent".to_vec());
        b.write(batch).unwrap();
        assert_eq!(b.size_bytes(), 1 + 1 + 50, "a replaced value counts once");
        let mut batch = WriteBatch::new();
        batch.clear_all();
        b.write(batch).unwrap();
        assert_eq!(b.size_bytes(), 0);
        let mut r = b.replace().unwrap();
        let mut batch = WriteBatch::new();
        batch.put(Table::Revisions, b"rr".to_vec(), vec![0; 7]);
        r.write(batch).unwrap();
        r.commit().unwrap();
        assert_eq!(b.size_bytes(), 1 + 2 + 7, "a restore's content is counted");
    }

    #[test]
    fn inverted_intervals_scan_nothing() {
        let b = MemBackend::new();
        let mut batch = WriteBatch::new();
        batch.put(Table::Keys, b"k".to_vec(), b"v".to_vec());
        b.write(batch).unwrap();
        let mut seen = 0;
        for (from, to) in [
            (Bound::Included(&b"z"[..]), Bound::Included(&b"a"[..])),
            (Bound::Excluded(&b"k"[..]), Bound::Excluded(&b"k"[..])),
            (Bound::Included(&b"k"[..]), Bound::Excluded(&b"k"[..])),
        ] {
            b.scan(Table::Keys, from, to, &mut |_, _| {
                seen += 1;
                ControlFlow::Continue(())
            })
            .unwrap();
        }
        assert_eq!(seen, 0);
    }
}
