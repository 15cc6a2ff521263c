//! An in-memory [`mvcc::Backend`]: the fastest engine, with nothing on disk.
//!
//! It owns three ordered maps (one per [`mvcc::Table`]) and the applied position behind one
//! reader-writer lock, so a batch becomes visible all at once. It knows nothing of revisions or
//! Raft: after a restart its contents are rebuilt by the layer above (Raft snapshot plus log),
//! which is why [`MemBackend::applied`] starts empty.
//!
//! # Layout
//! - `lib.rs`: [`MemBackend`], the whole engine.

use std::collections::BTreeMap;
use std::ops::{Bound, ControlFlow};

use mvcc::{is_empty_interval, Backend, BackendError, Table, Visitor, WriteBatch};
use parking_lot::RwLock;

/// Keys and values are boxed slices: no spare capacity, two words less than a `Vec` each.
type Map = BTreeMap<Box<[u8]>, Box<[u8]>>;

#[derive(Default)]
struct Tables {
    keys: Map,
    revisions: Map,
    meta: Map,
    applied: Option<Vec<u8>>,
}

impl Tables {
    fn table(&self, table: Table) -> &Map {
        match table {
            Table::Keys => &self.keys,
            Table::Revisions => &self.revisions,
            _ => &self.meta,
        }
    }

    fn table_mut(&mut self, table: Table) -> &mut Map {
        match table {
            Table::Keys => &mut self.keys,
            Table::Revisions => &mut self.revisions,
            _ => &mut self.meta,
        }
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

    /// True when no table holds anything.
    pub fn is_empty(&self) -> bool {
        let t = self.tables.read();
        t.keys.is_empty() && t.revisions.is_empty() && t.meta.is_empty()
    }
}

impl Backend for MemBackend {
    fn get(&self, table: Table, key: &[u8]) -> Result<Option<Vec<u8>>, BackendError> {
        Ok(self.tables.read().table(table).get(key).map(|v| v.to_vec()))
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
        for (k, v) in tables.table(table).range::<[u8], _>((from, to)) {
            if let ControlFlow::Break(()) = visit(k, v) {
                break;
            }
        }
        Ok(())
    }

    fn write(&self, batch: WriteBatch) -> Result<(), BackendError> {
        let (clear, ops, applied) = batch.into_parts();
        let mut tables = self.tables.write();
        if clear {
            *tables = Tables::default();
        }
        for op in ops {
            let map = tables.table_mut(op.table);
            match op.value {
                Some(value) => {
                    map.insert(op.key.into_boxed_slice(), value.into_boxed_slice());
                }
                None => {
                    map.remove(op.key.as_slice());
                }
            }
        }
        if applied.is_some() {
            tables.applied = applied;
        }
        Ok(())
    }

    fn applied(&self) -> Result<Option<Vec<u8>>, BackendError> {
        Ok(self.tables.read().applied.clone())
    }

    fn flush(&self) -> Result<(), BackendError> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
