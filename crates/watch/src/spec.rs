//! What a watcher asks for and what it is sent.

use std::fmt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use mvcc::{Event, EventKind, KeyRange};

use crate::index::Shape;

/// A watch request, as etcd's `WatchCreateRequest` describes one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WatchSpec {
    /// The keys watched.
    pub range: KeyRange,
    /// First revision to deliver; 0 or less for "from the next revision on".
    pub start_revision: i64,
    /// Leave out put events.
    pub no_put: bool,
    /// Leave out delete events.
    pub no_delete: bool,
    /// Include each event's previous key-value.
    pub prev_kv: bool,
    /// An opaque id echoed in every [`Delivery`] (e.g. the gRPC `watch_id`).
    pub tag: u64,
}

impl WatchSpec {
    /// A watch of `range` from the next revision on, with no filters, no `prev_kv`, tag 0.
    pub fn new(range: KeyRange) -> Self {
        Self {
            range,
            start_revision: 0,
            no_put: false,
            no_delete: false,
            prev_kv: false,
            tag: 0,
        }
    }
}

/// What the hub sends to a watcher's queue.
///
/// Deliveries to one watcher carry strictly increasing revisions, every revision whole (all
/// its matching events together), none missing and none twice.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Delivery {
    /// The [`WatchSpec::tag`] of the watcher.
    pub tag: u64,
    /// The matching events of one or more whole revisions, in order; empty only in a
    /// cancellation.
    pub events: Vec<Event>,
    /// Set when the watcher is cancelled because its next revision was compacted: the
    /// compaction point. The watcher is removed from the hub and receives nothing more.
    pub compacted: Option<i64>,
    /// The bytes these events hold against the watcher's queue budget, given back when the
    /// charge is dropped: a consumer keeps it until the events have left (e.g. with the
    /// response made of them).
    pub charge: Charge,
}

/// Bytes held against one watcher's queue budget ([`HubConfig::max_queued_bytes`]), given
/// back on drop. A clone holds nothing.
///
/// [`HubConfig::max_queued_bytes`]: crate::HubConfig::max_queued_bytes
#[derive(Default)]
pub struct Charge(Option<(Arc<AtomicUsize>, usize)>);

impl Charge {
    /// Holds `bytes` against `queued` until dropped.
    pub(crate) fn new(queued: &Arc<AtomicUsize>, bytes: usize) -> Self {
        queued.fetch_add(bytes, Ordering::Relaxed);
        Self(Some((Arc::clone(queued), bytes)))
    }

    /// The bytes held.
    pub fn bytes(&self) -> usize {
        self.0.as_ref().map_or(0, |(_, n)| *n)
    }
}

impl Drop for Charge {
    fn drop(&mut self) {
        if let Some((queued, n)) = self.0.take() {
            queued.fetch_sub(n, Ordering::Relaxed);
        }
    }
}

impl Clone for Charge {
    fn clone(&self) -> Self {
        Self(None)
    }
}

/// Charges compare equal: they are bookkeeping, not content.
impl PartialEq for Charge {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl Eq for Charge {}

impl fmt::Debug for Charge {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Charge({})", self.bytes())
    }
}

/// The bytes an event holds, as the queue budget counts them: keys and values, previous too.
pub fn event_bytes(e: &Event) -> usize {
    let kv = e.kv.key.len() + e.kv.value.len();
    kv + e
        .prev_kv
        .as_ref()
        .map_or(0, |p| p.key.len() + p.value.len())
}

/// The hub's id of one registered watcher; never reused by the same hub.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct WatchId(pub(crate) u64);

impl WatchId {
    /// The id as a number.
    pub fn get(self) -> u64 {
        self.0
    }
}

impl fmt::Display for WatchId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// A watcher's immutable selection, shared with the catch-up task.
#[derive(Debug)]
pub(crate) struct Matcher {
    pub(crate) tag: u64,
    pub(crate) range: KeyRange,
    pub(crate) shape: Shape,
    no_put: bool,
    no_delete: bool,
    pub(crate) prev_kv: bool,
}

impl Matcher {
    pub(crate) fn new(spec: WatchSpec) -> Self {
        Self {
            tag: spec.tag,
            shape: Shape::of(&spec.range),
            range: spec.range,
            no_put: spec.no_put,
            no_delete: spec.no_delete,
            prev_kv: spec.prev_kv,
        }
    }

    /// True when the event's kind passes the filters (the key is checked by the caller).
    pub(crate) fn wants_kind(&self, event: &Event) -> bool {
        match event.kind {
            EventKind::Put => !self.no_put,
            EventKind::Delete => !self.no_delete,
        }
    }

    /// True when the event's key is watched and its kind passes the filters.
    pub(crate) fn wants(&self, event: &Event) -> bool {
        self.wants_kind(event) && self.range.contains(&event.kv.key)
    }

    /// The event as this watcher sees it: without `prev_kv` unless asked for.
    pub(crate) fn render(&self, event: &Event) -> Event {
        Event {
            kind: event.kind,
            kv: event.kv.clone(),
            prev_kv: if self.prev_kv {
                event.prev_kv.clone()
            } else {
                None
            },
        }
    }
}
