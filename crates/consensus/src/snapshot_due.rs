//! When a member takes a snapshot: once `--snapshot-count` requests have applied since the
//! last one, as etcd counts them.
//!
//! openraft's own policy counts log entries, but the batcher puts every command queued behind
//! a flush into one entry, so under concurrency a count of entries lets the log grow dozens of
//! times past the count before a snapshot allows it to be cut back (at 1M keys the log held
//! 640 MiB after one round of overwrites). The state machine counts applied commands here and
//! [`run`] asks openraft for a snapshot when the count is reached; openraft ignores the ask
//! while a snapshot is already being built, and its entry count stays as a backstop.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use mvcc::Backend;
use tokio::sync::Notify;

use crate::Node;

/// Requests applied since the last snapshot, shared by the state machine and [`run`].
pub(crate) struct SnapshotDue {
    since: AtomicU64,
    count: u64,
    due: Notify,
}

impl SnapshotDue {
    /// A snapshot every `count` applied requests (at least one).
    pub(crate) fn new(count: u64) -> Arc<Self> {
        Arc::new(Self {
            since: AtomicU64::new(0),
            count: count.max(1),
            due: Notify::new(),
        })
    }

    /// `n` more requests applied.
    pub(crate) fn applied(&self, n: u64) {
        let now = self.since.fetch_add(n, Ordering::Relaxed).saturating_add(n);
        if now >= self.count {
            self.due.notify_one();
        }
    }

    /// A snapshot is being built from the store as it stands: counting starts again.
    pub(crate) fn taken(&self) {
        self.since.store(0, Ordering::Relaxed);
    }

    fn is_due(&self) -> bool {
        self.since.load(Ordering::Relaxed) >= self.count
    }
}

/// Asks openraft for a snapshot whenever one is due, until the node stops.
pub(crate) async fn run<B: Backend>(node: Node<B>, due: Arc<SnapshotDue>) {
    let stop = node.stopping().clone();
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            () = due.due.notified() => {}
        }
        if due.is_due() && node.raft().trigger().snapshot().await.is_err() {
            // Raft has stopped: nothing will apply or snapshot any more.
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_snapshot_is_due_after_the_count_and_not_again_until_the_next() {
        let due = SnapshotDue::new(100);
        due.applied(60);
        assert!(!due.is_due());
        due.applied(40);
        assert!(due.is_due());
        due.taken();
        assert!(!due.is_due());
        due.applied(99);
        assert!(!due.is_due());
    }
}
