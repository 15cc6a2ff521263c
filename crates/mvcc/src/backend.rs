//! The seam to storage engines: a small ordered key-value surface with atomic write batches.

use std::ops::{Bound, ControlFlow};

use crate::error::BackendError;

/// A keyspace of the backend. Each table is an independent ordered map of byte strings.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Table {
    /// Every stored version, keyed by user key then newest revision first.
    Keys,
    /// Every stored version again, keyed by revision: the order watchers and compaction read in.
    Revisions,
    /// The store's own bookkeeping: current and compacted revisions, restore marker.
    Meta,
}

impl Table {
    /// Every table, for engines that create them up front.
    pub const ALL: [Table; 3] = [Table::Keys, Table::Revisions, Table::Meta];

    /// A stable name, for engines that name their tables on disk.
    pub fn name(self) -> &'static str {
        match self {
            Table::Keys => "keys",
            Table::Revisions => "revisions",
            Table::Meta => "meta",
        }
    }
}

/// One entry read out of a table: its key and value.
pub type Entry = (Vec<u8>, Vec<u8>);

/// The callback of [`Backend::scan`]: sees each key and value, returns `Break` to stop.
pub type Visitor<'a> = dyn FnMut(&[u8], &[u8]) -> ControlFlow<()> + 'a;

/// One change inside a [`WriteBatch`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BatchOp {
    /// The table changed.
    pub table: Table,
    /// The key written or removed.
    pub key: Vec<u8>,
    /// The new value, or `None` to remove the key.
    pub value: Option<Vec<u8>>,
}

/// A group of changes an engine applies atomically, with the applied position of the layer above.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WriteBatch {
    clear: bool,
    ops: Vec<BatchOp>,
    applied: Option<Vec<u8>>,
}

impl WriteBatch {
    /// An empty batch.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets `key` to `value` in `table`.
    pub fn put(&mut self, table: Table, key: Vec<u8>, value: Vec<u8>) {
        self.ops.push(BatchOp {
            table,
            key,
            value: Some(value),
        });
    }

    /// Removes `key` from `table`; removing an absent key is not an error.
    pub fn delete(&mut self, table: Table, key: Vec<u8>) {
        self.ops.push(BatchOp {
            table,
            key,
            value: None,
        });
    }

    /// Makes room for `additional` more changes.
    pub fn reserve(&mut self, additional: usize) {
        self.ops.reserve(additional);
    }

    /// Records the opaque position (e.g. a Raft log id) this batch brings the store up to.
    pub fn set_applied(&mut self, position: Vec<u8>) {
        self.applied = Some(position);
    }

    /// Empties every table and forgets the applied position before this batch's own changes.
    pub fn clear_all(&mut self) {
        self.clear = true;
        self.ops.clear();
    }

    /// True when the engine must empty everything first.
    pub fn clears(&self) -> bool {
        self.clear
    }

    /// The changes, in the order they were added; a later change to a key wins.
    pub fn ops(&self) -> &[BatchOp] {
        &self.ops
    }

    /// The applied position to store with the batch, if any.
    pub fn applied(&self) -> Option<&[u8]> {
        self.applied.as_deref()
    }

    /// Splits the batch into its parts, for engines that consume it.
    pub fn into_parts(self) -> (bool, Vec<BatchOp>, Option<Vec<u8>>) {
        (self.clear, self.ops, self.applied)
    }

    /// How many changes the batch holds.
    pub fn len(&self) -> usize {
        self.ops.len()
    }

    /// True when the batch changes nothing and records no position.
    pub fn is_empty(&self) -> bool {
        !self.clear && self.ops.is_empty() && self.applied.is_none()
    }
}

/// New content for a whole backend, built aside from what readers see; see
/// [`Backend::replace`]. Dropped without [`Replacement::commit`], it leaves the backend as it
/// was, also after a crash at any point.
pub trait Replacement {
    /// Adds `batch` to the new content; nothing of it is visible before the commit.
    ///
    /// # Errors
    /// [`BackendError`] when the engine cannot write; the replacement must be dropped then.
    fn write(&mut self, batch: WriteBatch) -> Result<(), BackendError>;

    /// Makes the new content the backend's, atomically and durably: readers see the whole old
    /// content before it returns and the whole new content after; a crash at any point leaves
    /// one or the other on disk.
    ///
    /// # Errors
    /// [`BackendError`] when the engine cannot commit; the old content stays then.
    fn commit(self: Box<Self>) -> Result<(), BackendError>;
}

/// Point reads and scans, as [`Backend::get`] and [`Backend::scan`] make them: what the
/// store's reads need. Every backend is one; [`Backend::pinned`] gives one over a single view
/// that several reads share.
pub trait Reads {
    /// Reads one key, as [`Backend::get`].
    ///
    /// # Errors
    /// [`BackendError`] when the engine cannot read.
    fn read_key(&self, table: Table, key: &[u8]) -> Result<Option<Vec<u8>>, BackendError>;

    /// Visits the entries between `from` and `to`, as [`Backend::scan`].
    ///
    /// # Errors
    /// [`BackendError`] when the engine cannot read.
    fn read_range(
        &self,
        table: Table,
        from: Bound<&[u8]>,
        to: Bound<&[u8]>,
        visit: &mut Visitor<'_>,
    ) -> Result<(), BackendError>;

    /// The first entry between `from` and `to`, if any: what a [`Reads::read_range`] that
    /// stops at once would visit. An engine may find it more cheaply (a put's lookup of its
    /// key's last version is one).
    ///
    /// # Errors
    /// [`BackendError`] when the engine cannot read.
    fn read_first(
        &self,
        table: Table,
        from: Bound<&[u8]>,
        to: Bound<&[u8]>,
    ) -> Result<Option<Entry>, BackendError> {
        first_by_range(self, table, from, to)
    }
}

/// [`Reads::read_first`] made of [`Reads::read_range`]: its default, and the fallback of an
/// engine whose own way does not apply to every case.
///
/// # Errors
/// [`BackendError`] when the engine cannot read.
pub fn first_by_range<R: Reads + ?Sized>(
    reads: &R,
    table: Table,
    from: Bound<&[u8]>,
    to: Bound<&[u8]>,
) -> Result<Option<Entry>, BackendError> {
    let mut first = None;
    reads.read_range(table, from, to, &mut |k, v| {
        first = Some((k.to_vec(), v.to_vec()));
        ControlFlow::Break(())
    })?;
    Ok(first)
}

impl<B: Backend + ?Sized> Reads for B {
    fn read_key(&self, table: Table, key: &[u8]) -> Result<Option<Vec<u8>>, BackendError> {
        self.get(table, key)
    }

    fn read_range(
        &self,
        table: Table,
        from: Bound<&[u8]>,
        to: Bound<&[u8]>,
        visit: &mut Visitor<'_>,
    ) -> Result<(), BackendError> {
        self.scan(table, from, to, visit)
    }
}

/// A backend read through its own calls, one view per read: [`Backend::pinned`]'s default.
struct Direct<'a, B: ?Sized>(&'a B);

impl<B: Backend + ?Sized> Reads for Direct<'_, B> {
    fn read_key(&self, table: Table, key: &[u8]) -> Result<Option<Vec<u8>>, BackendError> {
        self.0.get(table, key)
    }

    fn read_range(
        &self,
        table: Table,
        from: Bound<&[u8]>,
        to: Bound<&[u8]>,
        visit: &mut Visitor<'_>,
    ) -> Result<(), BackendError> {
        self.0.scan(table, from, to, visit)
    }
}

/// An ordered key-value engine the MVCC store runs on.
///
/// The store keeps its whole model (revisions, tombstones, compaction, snapshots) in three
/// tables of plain byte strings, so an engine only has to be a correct ordered map:
/// - reads see every batch whose `write` returned, and never part of a batch;
/// - `write` is atomic: after a crash the engine holds a prefix of the written batches, each
///   whole, and [`Backend::applied`] returns the position of the last batch it holds;
/// - whether `write` is durable on return is the engine's documented choice; [`Backend::flush`]
///   makes every returned write durable.
///
/// Taking a snapshot needs no engine support: versions at or below a revision never change
/// until compaction removes them, and the store holds compaction back while a snapshot
/// streams. Installing one does: [`Backend::replace`] builds the new content aside and
/// switches to it at once.
pub trait Backend: Send + Sync + 'static {
    /// Reads one key.
    ///
    /// # Errors
    /// [`BackendError`] when the engine cannot read; the store treats it as fatal.
    fn get(&self, table: Table, key: &[u8]) -> Result<Option<Vec<u8>>, BackendError>;

    /// Reads several keys of one table, in order; engines that can read them in one go (one
    /// transaction) override it for long scans such as the key-space hash.
    ///
    /// # Errors
    /// [`BackendError`] when the engine cannot read.
    fn get_many(
        &self,
        table: Table,
        keys: &[Vec<u8>],
    ) -> Result<Vec<Option<Vec<u8>>>, BackendError> {
        keys.iter().map(|k| self.get(table, k)).collect()
    }

    /// Calls `visit` with each entry of `table` between `from` and `to`, in key order, until it
    /// returns `Break`. Engines may hold a lock while visiting; the store keeps visits short.
    ///
    /// # Errors
    /// [`BackendError`] when the engine cannot read; the store treats it as fatal.
    fn scan(
        &self,
        table: Table,
        from: Bound<&[u8]>,
        to: Bound<&[u8]>,
        visit: &mut Visitor<'_>,
    ) -> Result<(), BackendError>;

    /// Reads over one view of the content, shared by all of them: what one apply call's
    /// lookups use, so an engine that begins a transaction per read begins one per apply. The
    /// caller writes nothing while it holds them (the view need not see its own writes) and
    /// drops them before its next [`Backend::write`]. The default reads through `get` and
    /// `scan`.
    ///
    /// # Errors
    /// [`BackendError`] when the engine cannot begin a read.
    fn pinned(&self) -> Result<Box<dyn Reads + '_>, BackendError> {
        Ok(Box::new(Direct(self)))
    }

    /// Applies `batch` atomically, with its applied position.
    ///
    /// # Errors
    /// [`BackendError`] when the engine cannot write; nothing of the batch is visible then.
    fn write(&self, batch: WriteBatch) -> Result<(), BackendError>;

    /// The applied position of the last batch that carried one, if any.
    ///
    /// # Errors
    /// [`BackendError`] when the engine cannot read.
    fn applied(&self) -> Result<Option<Vec<u8>>, BackendError>;

    /// Makes every write that has returned durable.
    ///
    /// # Errors
    /// [`BackendError`] when the engine cannot sync.
    fn flush(&self) -> Result<(), BackendError>;

    /// Starts replacing everything the backend holds (every table and the applied position)
    /// with new content built aside, for a restore. The caller writes nothing else to the
    /// backend until the replacement is committed or dropped.
    ///
    /// # Errors
    /// [`BackendError`] when the engine cannot start one.
    fn replace(&self) -> Result<Box<dyn Replacement + '_>, BackendError>;

    /// Rewrites the engine's storage so space freed by deletes and compaction is given back
    /// (etcd's defragment). Reads and writes wait while it runs. Returns whether anything was
    /// rewritten; engines with nothing to give back keep the default, which does nothing.
    ///
    /// # Errors
    /// [`BackendError`] when the engine cannot rewrite; its content is unchanged then.
    fn defragment(&self) -> Result<bool, BackendError> {
        Ok(false)
    }

    /// Whether the content outlives the process (the engine keeps it in a file): then the
    /// store, durable at its applied position after [`Backend::flush`], is itself Raft's
    /// snapshot and no copy of it is kept. Engines that start empty keep the default, `false`.
    fn persistent(&self) -> bool {
        false
    }
}

/// True when no key lies between `from` and `to`; engines whose range APIs panic on inverted
/// bounds check this first.
pub fn is_empty_interval(from: Bound<&[u8]>, to: Bound<&[u8]>) -> bool {
    match (from, to) {
        (Bound::Included(a), Bound::Included(b)) => a > b,
        (Bound::Included(a), Bound::Excluded(b))
        | (Bound::Excluded(a), Bound::Included(b))
        | (Bound::Excluded(a), Bound::Excluded(b)) => a >= b,
        _ => false,
    }
}

impl<B: Backend + ?Sized> Backend for std::sync::Arc<B> {
    fn get(&self, table: Table, key: &[u8]) -> Result<Option<Vec<u8>>, BackendError> {
        (**self).get(table, key)
    }

    fn get_many(
        &self,
        table: Table,
        keys: &[Vec<u8>],
    ) -> Result<Vec<Option<Vec<u8>>>, BackendError> {
        (**self).get_many(table, keys)
    }

    fn scan(
        &self,
        table: Table,
        from: Bound<&[u8]>,
        to: Bound<&[u8]>,
        visit: &mut Visitor<'_>,
    ) -> Result<(), BackendError> {
        (**self).scan(table, from, to, visit)
    }

    fn write(&self, batch: WriteBatch) -> Result<(), BackendError> {
        (**self).write(batch)
    }

    fn applied(&self) -> Result<Option<Vec<u8>>, BackendError> {
        (**self).applied()
    }

    fn flush(&self) -> Result<(), BackendError> {
        (**self).flush()
    }

    fn replace(&self) -> Result<Box<dyn Replacement + '_>, BackendError> {
        (**self).replace()
    }

    fn defragment(&self) -> Result<bool, BackendError> {
        (**self).defragment()
    }

    fn persistent(&self) -> bool {
        (**self).persistent()
    }
}
