//! Writes returned to the caller and not yet committed to redb: the `Lazy` engine's buffer.
//!
//! A redb write transaction costs the same fixed work however little it holds (opening the
//! tables, the commit's page and allocator bookkeeping), and it copies every page it touches
//! once; one per applied batch was about a tenth of a member's CPU under puts (9 % in a
//! profile of 64 put clients). As etcd's backend
//! buffers writes and commits them every 100 ms, `Lazy` batches gather here and are committed
//! together; readers look here before they look in redb.
//!
//! The buffer holds [`Generation`]s: the active one takes new batches; once due it is sealed
//! and handed to the committer thread while a new active one takes over, so a write never
//! waits for a commit. A generation only grows until it is sealed, and once committed it is
//! dropped, never emptied in place. A reader takes its [`View`] of the generations *before* it
//! opens its redb transaction, so whatever they held is either still in them or already
//! committed when the reader's transaction begins: nothing falls between the two.

use std::collections::BTreeMap;
use std::ops::Bound;
use std::sync::Arc;
use std::time::{Duration, Instant};

use mvcc::{BackendError, BatchOp, Table};
use parking_lot::{Condvar, Mutex, RwLock};

/// When the buffered writes are committed to redb.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Batching {
    /// After this many changes.
    pub max_ops: usize,
    /// After this many bytes of keys and values.
    pub max_bytes: u64,
    /// When the oldest buffered change is this old (checked by each write, and by the
    /// committer when no write comes).
    pub max_age: Duration,
}

impl Default for Batching {
    /// etcd's backend: every 100 ms or 10,000 changes; the byte bound keeps large values from
    /// holding much memory (100 ms of 256-byte puts is well under it).
    fn default() -> Self {
        Self {
            max_ops: 10_000,
            max_bytes: 4 << 20,
            max_age: Duration::from_millis(100),
        }
    }
}

impl Batching {
    /// Every batch committed as it is written.
    pub const NONE: Batching = Batching {
        max_ops: 0,
        max_bytes: 0,
        max_age: Duration::ZERO,
    };
}

/// The buffered batches: the active generation and, while it is committed, the sealed one.
#[derive(Default)]
pub(crate) struct Buffer {
    layers: Mutex<Layers>,
    /// Signalled when the sealed generation is committed, or its commit failed.
    unsealed: Condvar,
    /// Why the committer stopped; every later write fails with it.
    failed: Mutex<Option<String>>,
}

#[derive(Default)]
struct Layers {
    active: Arc<Generation>,
    sealed: Option<Arc<Generation>>,
}

/// How long a writer waits for the sealed generation's commit before it looks again whether
/// the committer is still there.
const UNSEALED_POLL: Duration = Duration::from_millis(100);

impl Buffer {
    /// What a reader must lay over redb, newest first; `None` when nothing is buffered.
    pub(crate) fn view(&self) -> Option<View> {
        let layers = self.layers.lock();
        let sealed = layers.sealed.clone();
        if sealed.is_none() && layers.active.is_empty() {
            return None;
        }
        Some(View {
            active: Arc::clone(&layers.active),
            sealed,
        })
    }

    /// The generation new batches go to.
    pub(crate) fn active(&self) -> Arc<Generation> {
        Arc::clone(&self.layers.lock().active)
    }

    /// The generation being committed, if one is.
    pub(crate) fn sealed(&self) -> Option<Arc<Generation>> {
        self.layers.lock().sealed.clone()
    }

    /// Seals the active generation and starts a new one, unless one is sealed already or
    /// nothing is buffered; returns whether it sealed.
    pub(crate) fn seal(&self) -> bool {
        let mut layers = self.layers.lock();
        if layers.sealed.is_some() || layers.active.is_empty() {
            return false;
        }
        let active = std::mem::take(&mut layers.active);
        layers.sealed = Some(active);
        true
    }

    /// Drops the sealed generation once redb holds it.
    pub(crate) fn committed_sealed(&self) {
        self.layers.lock().sealed = None;
        self.unsealed.notify_all();
    }

    /// Starts a new active generation once redb holds `committed`, the active one.
    pub(crate) fn committed_active(&self, committed: &Arc<Generation>) {
        let mut layers = self.layers.lock();
        if Arc::ptr_eq(&layers.active, committed) && !committed.is_empty() {
            layers.active = Arc::default();
        }
    }

    /// Waits until no generation is sealed; fails when the committer failed or `stopped`
    /// says it is gone.
    pub(crate) fn wait_unsealed(&self, stopped: &dyn Fn() -> bool) -> Result<(), BackendError> {
        let mut layers = self.layers.lock();
        while layers.sealed.is_some() {
            drop(layers);
            self.failure()?;
            if stopped() {
                return Err(failed("the committer thread is gone".into()));
            }
            layers = self.layers.lock();
            if layers.sealed.is_some() {
                self.unsealed.wait_for(&mut layers, UNSEALED_POLL);
            }
        }
        Ok(())
    }

    /// Records the committer's failure and wakes whoever waits for it.
    pub(crate) fn fail(&self, error: &BackendError) {
        *self.failed.lock() = Some(error.to_string());
        self.unsealed.notify_all();
    }

    /// The committer's failure, as the error of every write after it.
    pub(crate) fn failure(&self) -> Result<(), BackendError> {
        match &*self.failed.lock() {
            Some(cause) => Err(failed(cause.clone())),
            None => Ok(()),
        }
    }
}

fn failed(cause: String) -> BackendError {
    BackendError::Io {
        op: "commit buffered batches",
        table: None,
        cause,
    }
}

/// A reader's buffered generations, newest first.
pub(crate) struct View {
    active: Arc<Generation>,
    sealed: Option<Arc<Generation>>,
}

impl View {
    /// The newest buffered change to `key`, if there is one.
    pub(crate) fn get(&self, table: Table, key: &[u8]) -> Option<Change> {
        self.active
            .get(table, key)
            .or_else(|| self.sealed.as_ref().and_then(|s| s.get(table, key)))
    }

    /// The newest buffered applied position.
    pub(crate) fn applied(&self) -> Option<Vec<u8>> {
        self.active
            .applied()
            .or_else(|| self.sealed.as_ref().and_then(|s| s.applied()))
    }

    /// The newest buffered change at the smallest buffered key between the bounds, if that
    /// key is no greater than `at_most` (redb's first key there, `None` when it has none).
    pub(crate) fn first(
        &self,
        table: Table,
        bounds: (Bound<&[u8]>, Bound<&[u8]>),
        at_most: Option<&[u8]>,
    ) -> Option<(Vec<u8>, Change)> {
        // Oldest first, each beating what came before at an equal key.
        let older = self
            .sealed
            .as_ref()
            .and_then(|s| s.first(table, bounds, at_most));
        let bound = older.as_ref().map(|(k, _)| k.as_slice()).or(at_most);
        self.active.first(table, bounds, bound).or(older)
    }

    /// A cursor per generation over `table` from `from` up to `to`, newest first.
    pub(crate) fn cursors<'a>(
        &'a self,
        table: Table,
        from: Bound<&'a [u8]>,
        to: Bound<&'a [u8]>,
    ) -> Vec<Cursor<'a>> {
        std::iter::once(&self.active)
            .chain(self.sealed.as_ref())
            .map(|g| Cursor {
                generation: g,
                table,
                from,
                to,
                chunk: Vec::new().into_iter(),
                head: None,
                last: None,
                more: true,
                size: FIRST_CHUNK,
            })
            .collect()
    }
}

/// A scan's position in one generation, read a chunk at a time.
pub(crate) struct Cursor<'a> {
    generation: &'a Generation,
    table: Table,
    from: Bound<&'a [u8]>,
    to: Bound<&'a [u8]>,
    chunk: std::vec::IntoIter<(Vec<u8>, Change)>,
    head: Option<(Vec<u8>, Change)>,
    /// The last key taken; `None` before the first chunk.
    last: Option<Vec<u8>>,
    more: bool,
    size: usize,
}

impl Cursor<'_> {
    /// Reads the next chunk when the last one is used up.
    pub(crate) fn fill(&mut self) {
        if self.head.is_none() {
            self.head = self.chunk.next();
        }
        if self.head.is_none() && self.more {
            let after = self.last.as_deref().map_or(self.from, Bound::Excluded);
            let (next, more) = self.generation.chunk(self.table, after, self.to, self.size);
            self.more = more;
            self.size = (self.size * 4).min(CHUNK);
            self.chunk = next.into_iter();
            self.head = self.chunk.next();
        }
    }

    /// The next change, as [`Cursor::fill`] left it: its key and new value (`None`: removed).
    pub(crate) fn head(&self) -> Option<(&[u8], Option<&[u8]>)> {
        self.head
            .as_ref()
            .map(|(k, v)| (k.as_slice(), v.as_deref()))
    }

    /// Moves past the next change.
    pub(crate) fn advance(&mut self) {
        if let Some((key, _)) = self.head.take() {
            self.last = Some(key);
        }
    }
}

/// Bytes of key and value `op` writes: what the buffer's and the unsynced bounds count.
pub(crate) fn op_bytes(op: &BatchOp) -> u64 {
    (op.key.len() + op.value.as_ref().map_or(0, Vec::len)) as u64
}

/// A change to one key: the new value, or `None` for a removal.
pub(crate) type Change = Option<Vec<u8>>;

/// One generation of buffered writes.
#[derive(Default)]
pub(crate) struct Generation {
    inner: RwLock<Buffered>,
}

#[derive(Default)]
struct Buffered {
    tables: [BTreeMap<Vec<u8>, Change>; 3],
    applied: Option<Vec<u8>>,
    ops: usize,
    bytes: u64,
    since: Option<Instant>,
}

fn slot(table: Table) -> usize {
    match table {
        Table::Keys => 0,
        Table::Revisions => 1,
        Table::Meta => 2,
    }
}

/// Entries handed to a scan per lock of the generation, at most: a scan never holds the lock
/// while it visits, so a long range never keeps a write waiting. A scan's first chunk is
/// [`FIRST_CHUNK`] and each next one four times the last: most scans (a put's lookup of the
/// key's last version) stop at their first entry and should not copy more.
pub(crate) const CHUNK: usize = 128;
/// Bytes of keys and values a chunk stops at (a watch catching up over large values must not
/// copy [`CHUNK`] of them at once).
pub(crate) const CHUNK_BYTES: usize = 256 << 10;
/// Entries of a scan's first chunk.
pub(crate) const FIRST_CHUNK: usize = 2;

impl Generation {
    /// Whether `batching` says the buffer is due to be committed before it takes more.
    pub(crate) fn due(&self, batching: &Batching) -> bool {
        let b = self.inner.read();
        b.ops >= batching.max_ops
            || b.bytes >= batching.max_bytes
            || b.since.is_some_and(|t| t.elapsed() >= batching.max_age)
    }

    /// Adds `ops` (and the applied position, when given) as one step; returns the bytes of
    /// keys and values added.
    pub(crate) fn add(&self, ops: Vec<BatchOp>, applied: Option<Vec<u8>>) -> u64 {
        let mut b = self.inner.write();
        let mut bytes = 0;
        for op in ops {
            bytes += op_bytes(&op);
            let BatchOp { table, key, value } = op;
            b.tables[slot(table)].insert(key, value);
            b.ops += 1;
        }
        if applied.is_some() {
            b.applied = applied;
        }
        b.bytes += bytes;
        b.since.get_or_insert_with(Instant::now);
        bytes
    }

    /// Whether nothing is buffered.
    pub(crate) fn is_empty(&self) -> bool {
        let b = self.inner.read();
        b.ops == 0 && b.applied.is_none()
    }

    /// The buffered change to `key`, if there is one.
    pub(crate) fn get(&self, table: Table, key: &[u8]) -> Option<Change> {
        self.inner.read().tables[slot(table)].get(key).cloned()
    }

    /// The first buffered change between the bounds, if its key is no greater than `at_most`.
    fn first(
        &self,
        table: Table,
        bounds: (Bound<&[u8]>, Bound<&[u8]>),
        at_most: Option<&[u8]>,
    ) -> Option<(Vec<u8>, Change)> {
        let b = self.inner.read();
        let (k, v) = b.tables[slot(table)].range::<[u8], _>(bounds).next()?;
        if at_most.is_some_and(|m| k.as_slice() > m) {
            return None;
        }
        Some((k.clone(), v.clone()))
    }

    /// The applied position of the last buffered batch that carried one.
    pub(crate) fn applied(&self) -> Option<Vec<u8>> {
        self.inner.read().applied.clone()
    }

    /// Up to `max` buffered changes of `table` from `from` up to `to`, in key order.
    /// Also stops once the chunk holds [`CHUNK_BYTES`] (with one change at least), so large
    /// values are not copied many at a time; the flag says whether more changes follow.
    pub(crate) fn chunk(
        &self,
        table: Table,
        from: Bound<&[u8]>,
        to: Bound<&[u8]>,
        max: usize,
    ) -> (Vec<(Vec<u8>, Change)>, bool) {
        let b = self.inner.read();
        let mut changes = b.tables[slot(table)]
            .range::<[u8], _>((from, to))
            .peekable();
        let mut chunk = Vec::new();
        let mut bytes = 0;
        while chunk.len() < max && bytes < CHUNK_BYTES {
            let Some((k, v)) = changes.next() else {
                break;
            };
            bytes += k.len() + v.as_ref().map_or(0, Vec::len);
            chunk.push((k.clone(), v.clone()));
        }
        (chunk, changes.peek().is_some())
    }

    /// Calls `each` with every buffered change in table then key order, then returns the
    /// applied position; for the commit, which alone reads a generation whole.
    pub(crate) fn drain_into<E>(
        &self,
        mut each: impl FnMut(Table, &[u8], Option<&[u8]>) -> Result<(), E>,
    ) -> Result<Option<Vec<u8>>, E> {
        let b = self.inner.read();
        for table in Table::ALL {
            for (k, v) in &b.tables[slot(table)] {
                each(table, k, v.as_deref())?;
            }
        }
        Ok(b.applied.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(table: Table, key: &str, value: &str) -> BatchOp {
        BatchOp {
            table,
            key: key.into(),
            value: Some(value.into()),
        }
    }

    #[test]
    fn a_later_change_to_a_key_wins_and_chunks_follow_key_order() {
        let g = Generation::default();
        let never = Batching {
            max_ops: usize::MAX,
            max_bytes: u64::MAX,
            max_age: Duration::MAX,
        };
        let ops = vec![
            put(Table::Keys, "b", "1"),
            put(Table::Keys, "a", "2"),
            put(Table::Revisions, "a", "x"),
        ];
        assert_eq!(g.add(ops, None), 6);
        assert!(!g.due(&never));
        let removal = BatchOp {
            table: Table::Keys,
            key: "b".into(),
            value: None,
        };
        g.add(vec![removal], Some(b"7".to_vec()));
        assert_eq!(g.get(Table::Keys, b"b"), Some(None));
        assert_eq!(g.get(Table::Keys, b"a"), Some(Some(b"2".to_vec())));
        assert_eq!(g.get(Table::Meta, b"a"), None);
        let (chunk, more) = g.chunk(Table::Keys, Bound::Unbounded, Bound::Unbounded, CHUNK);
        assert!(!more);
        let keys: Vec<_> = chunk.into_iter().map(|(k, _)| k).collect();
        assert_eq!(keys, [b"a".to_vec(), b"b".to_vec()]);
        assert_eq!(g.applied(), Some(b"7".to_vec()));
    }

    #[test]
    fn a_generation_is_due_at_its_first_bound() {
        let by_ops = Batching {
            max_ops: 2,
            max_bytes: u64::MAX,
            max_age: Duration::MAX,
        };
        let g = Generation::default();
        g.add(vec![put(Table::Keys, "a", "1")], None);
        assert!(!g.due(&by_ops));
        g.add(vec![put(Table::Keys, "b", "1")], None);
        assert!(g.due(&by_ops));
        assert!(g.due(&Batching::NONE));
        let by_age = Batching {
            max_age: Duration::ZERO,
            ..by_ops
        };
        let g = Generation::default();
        assert!(!g.due(&by_age), "an empty buffer has no age");
    }

    /// Large values are handed to a scan a few at a time, not [`CHUNK`] of them at once.
    #[test]
    fn a_chunk_of_large_values_stops_at_its_byte_bound() {
        let g = Generation::default();
        let value = vec![b'v'; 100 << 10];
        let ops = (0..10)
            .map(|i| BatchOp {
                table: Table::Revisions,
                key: vec![i],
                value: Some(value.clone()),
            })
            .collect();
        g.add(ops, None);
        let all = (Bound::Unbounded, Bound::Unbounded);
        let (chunk, more) = g.chunk(Table::Revisions, all.0, all.1, CHUNK);
        assert_eq!(chunk.len(), CHUNK_BYTES.div_ceil(100 << 10));
        assert!(more);
        let (chunk, more) = g.chunk(Table::Revisions, Bound::Included(&[7]), all.1, CHUNK);
        assert_eq!(chunk.len(), 3);
        assert!(!more);
    }
}
