//! The seam through which the hub reads the past: the store's event history.

use mvcc::{Backend, Event, Store};

/// The MVCC history the catch-up task replays to watchers that fell behind.
///
/// A trait object, so the hub is not generic over the storage engine. Methods are called from
/// a blocking thread of the catch-up task, never with the hub's lock held.
pub trait History: Send + Sync + 'static {
    /// The events of revisions `from` and later, in revision then sub order, stopping at the
    /// first revision boundary after `max_events`, or before the revision that would take
    /// them past `max_bytes` (as [`event_bytes`](crate::event_bytes) counts); a revision is
    /// never split, and the first one always comes.
    ///
    /// # Errors
    /// [`mvcc::Refusal::Compacted`] when `from` is below the compaction point; other errors
    /// are the store's failures, and the hub retries later.
    fn events_since(
        &self,
        from: i64,
        max_events: usize,
        max_bytes: usize,
    ) -> Result<Vec<Event>, mvcc::Error>;

    /// The highest revision stored; every revision up to it can be read (unless compacted).
    fn current_revision(&self) -> i64;

    /// The compaction point: reading history below it fails.
    fn compact_revision(&self) -> i64;
}

impl<B: Backend> History for Store<B> {
    fn events_since(
        &self,
        from: i64,
        max_events: usize,
        max_bytes: usize,
    ) -> Result<Vec<Event>, mvcc::Error> {
        Store::events_since_within(self, from, max_events, max_bytes)
    }

    fn current_revision(&self) -> i64 {
        Store::current_revision(self)
    }

    fn compact_revision(&self) -> i64 {
        Store::compact_revision(self)
    }
}
