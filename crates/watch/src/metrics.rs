//! The names of the metrics this crate reports; etcd's where etcd has one.

/// Gauge: watchers registered with the hub, synced or not.
pub(crate) const WATCHERS: &str = "etcd_debugging_mvcc_watcher_total";
/// Gauge: unsynced watchers, catching up from history.
pub(crate) const SLOW_WATCHERS: &str = "etcd_debugging_mvcc_slow_watcher_total";
/// Counter: events handed to watchers' queues, live or from history.
pub(crate) const EVENTS: &str = "etcd_debugging_mvcc_events_total";
/// Counter: live deliveries that found their queue full and left their watcher to catch up.
pub(crate) const VICTIMS: &str = "metastore_watch_victims_total";

/// Sets both watcher gauges.
pub(crate) fn watchers(total: usize, unsynced: usize) {
    metrics::gauge!(WATCHERS).set(total as f64);
    metrics::gauge!(SLOW_WATCHERS).set(unsynced as f64);
}

/// Counts `n` events handed to queues.
pub(crate) fn events(n: usize) {
    if n > 0 {
        metrics::counter!(EVENTS).increment(n as u64);
    }
}

/// Counts `n` watchers turned into victims by a full queue.
pub(crate) fn victims(n: usize) {
    if n > 0 {
        metrics::counter!(VICTIMS).increment(n as u64);
    }
}
