//! The hub: registration, live publishing, and the state the catch-up task shares.
//!
//! # Synced and unsynced watchers
//!
//! Every watcher has `next_rev`, the lowest revision it may still be sent. A *synced* watcher
//! is filed in the [`Index`] and receives revisions live from `publish`; an *unsynced*
//! one is not filed, and only the catch-up task sends to it, replaying history from `next_rev`.
//! All sends and every change of state happen under the hub's one mutex, and a send is always
//! a non-blocking `try_send` (or the use of a permit reserved earlier), so neither path ever
//! waits for a consumer while holding it.
//!
//! `last_published` is the highest revision published to the hub. Two facts make the hand-over
//! between the two paths exact:
//! - the store writes a revision to history *before* publishing it, so every revision up to
//!   `last_published` can be read from history (unless compacted);
//! - revisions are published in order, each once, under the mutex, so any revision above
//!   `last_published` reaches the hub through a later `publish`.
//!
//! Invariant of an unsynced watcher: it has been sent exactly the matching events of the
//! revisions below `next_rev`, and nothing else. Catch-up reads `[next_rev, ..]` outside the
//! mutex, then, under it, sends those whole revisions and moves `next_rev` past them.
//!
//! Rejoining: under the mutex, a watcher with `next_rev == last_published + 1` is filed as
//! synced. It has everything up to `last_published`; every later revision is published after
//! this moment and the index now finds it: no gap. Revisions up to `last_published` were
//! published while it was not filed, so live publishing never sent it any of them: no
//! duplicate. If catch-up read ahead of the publisher (a revision is in history but its
//! `publish` has not run yet), `next_rev > last_published + 1`; it stays unsynced, the next
//! `publish` wakes the task, and it rejoins once `last_published` catches up.
//!
//! Falling behind: when a live delivery finds the queue full, the watcher is unfiled with
//! `next_rev` at the first revision of the refused delivery. Every revision it matched before
//! that was delivered, so catch-up resumes exactly there.
//!
//! Gaps in publishing (a snapshot restore replaced the store, or it was written while the hub
//! was not its sink) are detected when a publish does not continue `last_published`, or
//! announced with [`Hub::resync`]; synced watchers then fall back to catch-up from
//! `last_published + 1`, which they have not yet been sent.

use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Weak};

use mvcc::{Event, EventSink, Wanted};
use parking_lot::Mutex;
use tokio::sync::mpsc::{error::TrySendError, Sender};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::index::Index;
use crate::spec::Matcher;
use crate::spec::{event_bytes, Charge};
use crate::{catch_up, metrics};
use crate::{Delivery, History, HubConfig, HubError, WatchError, WatchId, WatchSpec};

/// Fans applied events out to watchers. Cheap to clone; clones share one hub.
///
/// Set it as the store's sink (`store.set_sink(Arc::new(hub.clone()))`) before the store
/// applies anything that watchers should see. The hub runs one catch-up task on the tokio
/// runtime it was created in; the task stops on [`Hub::shutdown`] or when the last clone of
/// the hub is dropped (the store's sink is one).
#[derive(Clone)]
pub struct Hub {
    shared: Arc<Shared>,
}

/// A snapshot of the hub's bookkeeping, for tests and status pages.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct HubStats {
    /// Registered watchers.
    pub watchers: usize,
    /// Watchers catching up from history.
    pub unsynced: usize,
    /// The highest revision published to the hub.
    pub last_published: i64,
}

/// Keeps a watch registered; dropping it removes the watcher from the hub.
#[must_use = "dropping the guard cancels the watch"]
pub struct WatchGuard {
    hub: Weak<Shared>,
    id: WatchId,
    start_revision: i64,
}

pub(crate) struct Shared {
    pub(crate) history: Arc<dyn History>,
    pub(crate) config: HubConfig,
    pub(crate) state: Mutex<State>,
    pub(crate) wake: Arc<Notify>,
    stop: CancellationToken,
    /// Registered watchers, as [`State`] counts them.
    counts: Arc<Counts>,
}

/// Registered watchers, all and those that asked for `prev_kv`: read without the hub's lock
/// by [`Hub::wants`], so atomics, changed only under the lock.
#[derive(Default)]
pub(crate) struct Counts {
    watchers: AtomicUsize,
    prev_kv: AtomicUsize,
}

pub(crate) struct State {
    closed: bool,
    pub(crate) last_published: i64,
    next_id: u64,
    pub(crate) watchers: HashMap<WatchId, Watcher>,
    index: Index,
    pub(crate) unsynced: BTreeSet<WatchId>,
    /// Catch-up read past `last_published`; the next publish must wake it to let it rejoin.
    pub(crate) wake_on_publish: bool,
    /// Index candidates examined by publishing, for tests of the matching cost.
    examined: u64,
    /// Registered watchers, shared with [`Shared::counts`].
    counts: Arc<Counts>,
}

pub(crate) struct Watcher {
    pub(crate) matcher: Arc<Matcher>,
    pub(crate) tx: Sender<Delivery>,
    pub(crate) next_rev: i64,
    synced: bool,
    /// Bytes of its deliveries not yet let go by its reader.
    pub(crate) queued: Arc<AtomicUsize>,
}

impl Watcher {
    /// Whether `bytes` more would overfill its queue budget; an empty queue takes anything,
    /// so that a revision larger than the budget still goes (alone).
    pub(crate) fn over_budget(&self, bytes: usize, budget: usize) -> bool {
        let queued = self.queued.load(Ordering::Relaxed);
        queued > 0 && queued.saturating_add(bytes) > budget
    }
}

impl Hub {
    /// Creates a hub reading history from `history`, and spawns its catch-up task on the
    /// current tokio runtime. Publishing starts after `history`'s current revision.
    ///
    /// # Errors
    /// [`HubError::Config`] for a bad config; [`HubError::NoRuntime`] outside a runtime.
    pub fn new(history: Arc<dyn History>, config: HubConfig) -> Result<Self, HubError> {
        config.validate()?;
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| HubError::NoRuntime)?;
        let last_published = history.current_revision();
        let counts = Arc::new(Counts::default());
        let shared = Arc::new(Shared {
            history,
            counts: Arc::clone(&counts),
            state: Mutex::new(State {
                counts,
                closed: false,
                last_published,
                next_id: 1,
                watchers: HashMap::new(),
                index: Index::default(),
                unsynced: BTreeSet::new(),
                wake_on_publish: false,
                examined: 0,
            }),
            wake: Arc::new(Notify::new()),
            stop: CancellationToken::new(),
            config,
        });
        runtime.spawn(catch_up::run(
            Arc::downgrade(&shared),
            Arc::clone(&shared.wake),
            shared.stop.clone(),
            shared.config.catch_up_interval,
        ));
        Ok(Self { shared })
    }

    /// Registers a watcher; its deliveries go to `deliveries`, which several watchers may
    /// share. It starts synced from the next revision (`start_revision <= 0`) or a future
    /// one, or unsynced from a past one, replayed from history first (and cancelled with
    /// [`Delivery::compacted`] if that revision was compacted).
    ///
    /// # Errors
    /// [`WatchError::ShutDown`] after [`Hub::shutdown`].
    pub fn watch(
        &self,
        spec: WatchSpec,
        deliveries: Sender<Delivery>,
    ) -> Result<WatchGuard, WatchError> {
        let start = spec.start_revision;
        let matcher = Arc::new(Matcher::new(spec));
        let mut st = self.shared.state.lock();
        if st.closed {
            return Err(WatchError::ShutDown);
        }
        let id = WatchId(st.next_id);
        st.next_id += 1;
        let live = st.last_published + 1;
        let (next_rev, synced) = if start <= 0 {
            (live, true)
        } else {
            (start, start >= live)
        };
        if synced {
            st.index.insert(id, &matcher.shape);
        } else {
            st.unsynced.insert(id);
        }
        st.counts.watchers.fetch_add(1, Ordering::Relaxed);
        if matcher.prev_kv {
            st.counts.prev_kv.fetch_add(1, Ordering::Relaxed);
        }
        st.watchers.insert(
            id,
            Watcher {
                matcher,
                tx: deliveries,
                next_rev,
                synced,
                queued: Arc::new(AtomicUsize::new(0)),
            },
        );
        st.report();
        drop(st);
        if !synced {
            self.shared.wake.notify_one();
        }
        tracing::debug!(%id, next_rev, synced, "watcher registered");
        Ok(WatchGuard {
            hub: Arc::downgrade(&self.shared),
            id,
            start_revision: next_rev,
        })
    }

    /// Stops the hub: removes every watcher (dropping its sender), stops the catch-up task,
    /// and ignores later publishes and registrations. Idempotent.
    pub fn shutdown(&self) {
        let mut st = self.shared.state.lock();
        st.closed = true;
        st.watchers.clear();
        st.counts.watchers.store(0, Ordering::Relaxed);
        st.counts.prev_kv.store(0, Ordering::Relaxed);
        st.unsynced.clear();
        st.index = Index::default();
        st.report();
        drop(st);
        self.shared.stop.cancel();
    }

    /// Tells the hub that history moved without publishing (the store was restored from a
    /// snapshot): watchers not yet past the store's current revision catch up from history,
    /// and new watches "from now" start after it.
    pub fn resync(&self) {
        let current = self.shared.history.current_revision();
        let mut st = self.shared.state.lock();
        if st.closed {
            return;
        }
        let moved = st.skip_to(current);
        st.report();
        drop(st);
        if moved {
            self.shared.wake.notify_one();
        }
    }

    /// For progress notifications: the revision up to which every watcher in `ids` has been
    /// sent all its events, i.e. the last published revision, when all of them are registered
    /// and synced (with none of them, too); `None` while any is catching up or is gone.
    ///
    /// Deliveries already in a queue may still hold revisions up to the answer; a caller that
    /// forwards what is queued before announcing the revision keeps etcd's order.
    pub fn progress(&self, ids: &[WatchId]) -> Option<i64> {
        let st = self.shared.state.lock();
        if st.closed {
            return None;
        }
        ids.iter()
            .all(|id| st.watchers.get(id).is_some_and(|w| w.synced))
            .then_some(st.last_published)
    }

    /// The hub's bookkeeping now.
    pub fn stats(&self) -> HubStats {
        let st = self.shared.state.lock();
        HubStats {
            watchers: st.watchers.len(),
            unsynced: st.unsynced.len(),
            last_published: st.last_published,
        }
    }

    #[cfg(test)]
    pub(crate) fn examined(&self) -> u64 {
        self.shared.state.lock().examined
    }
}

impl fmt::Debug for Hub {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Hub")
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

impl EventSink for Hub {
    /// Events only while a watcher is registered, their previous key-values only while one
    /// that asked for them is. One that registers after the store asked is still sent what it
    /// wants, from history: the publish that lacks it, or [`EventSink::skipped`], turns it
    /// unsynced at that revision.
    fn wants(&self) -> Wanted {
        // Relaxed: a stale answer costs a catch-up, never a wrong or a lost event.
        let counts = &self.shared.counts;
        if counts.watchers.load(Ordering::Relaxed) == 0 {
            Wanted::Nothing
        } else if counts.prev_kv.load(Ordering::Relaxed) == 0 {
            Wanted::Events
        } else {
            Wanted::EventsWithPrev
        }
    }

    /// Moves the live point past revisions nobody was registered for; a watcher that came
    /// since is sent them from history.
    fn skipped(&self, through: i64) {
        let mut st = self.shared.state.lock();
        if st.closed {
            return;
        }
        let mut wake = std::mem::take(&mut st.wake_on_publish) && !st.unsynced.is_empty();
        wake |= st.skip_to(through);
        st.report();
        drop(st);
        if wake {
            self.shared.wake.notify_one();
        }
    }

    /// Delivers the events of one apply call to the synced watchers they match. Never
    /// blocks: a full queue turns its watcher into a victim for the catch-up task.
    fn publish(&self, events: Vec<Event>, with_prev: bool) {
        self.shared.publish(&events, with_prev);
    }
}

impl Shared {
    /// Events without their previous key-values (`with_prev` false) reach a watcher that
    /// wants them only if it registered after the store asked [`Hub::wants`]; it is
    /// sent them from history instead, which has them, as a watcher whose queue was full.
    fn publish(&self, events: &[Event], with_prev: bool) {
        let (Some(first), Some(last)) = (events.first(), events.last()) else {
            return;
        };
        let (first_rev, last_rev) = (first.kv.mod_revision, last.kv.mod_revision);
        let mut st = self.state.lock();
        if st.closed {
            return;
        }
        let mut wake = std::mem::take(&mut st.wake_on_publish) && !st.unsynced.is_empty();
        if first_rev > st.last_published + 1 {
            let last_published = st.last_published;
            if st.skip_to(first_rev - 1) {
                tracing::warn!(
                    last_published,
                    first_rev,
                    "revisions were applied without being published; watchers catch up from history"
                );
                wake = true;
            }
        }
        // Revisions at or below `last_published` were published already (only after a resync
        // that ran ahead of an in-flight publish): skip them rather than send them twice.
        let from = st.last_published + 1;
        if last_rev < from {
            drop(st);
            if wake {
                self.wake.notify_one();
            }
            return;
        }
        st.last_published = last_rev;

        let mut matched: HashMap<WatchId, Vec<usize>> = HashMap::new();
        let mut examined = 0;
        for (i, event) in events.iter().enumerate() {
            if event.kv.mod_revision >= from {
                examined += st
                    .index
                    .for_each_match(&event.kv.key, |id| matched.entry(id).or_default().push(i));
            }
        }
        st.examined += examined as u64;

        let (mut sent, mut victims) = (0, 0);
        for (id, hits) in matched {
            let Some(w) = st.watchers.get_mut(&id) else {
                continue;
            };
            let batch: Vec<Event> = hits
                .into_iter()
                .map(|i| &events[i])
                .filter(|e| e.kv.mod_revision >= w.next_rev && w.matcher.wants_kind(e))
                .map(|e| w.matcher.render(e))
                .collect();
            let (Some(first), Some(last)) = (batch.first(), batch.last()) else {
                continue;
            };
            let (first, last, n) = (first.kv.mod_revision, last.kv.mod_revision, batch.len());
            if w.matcher.prev_kv && !with_prev {
                tracing::debug!(%id, next_rev = first, "events lack prev_kv; catching up");
                st.unfile(id, first);
                wake = true;
                continue;
            }
            let bytes = batch.iter().map(event_bytes).sum();
            if w.over_budget(bytes, self.config.max_queued_bytes) {
                // As good as a full queue: it waits in history instead.
                tracing::debug!(%id, next_rev = first, "watcher byte budget full; catching up");
                st.unfile(id, first);
                victims += 1;
                continue;
            }
            let delivery = Delivery {
                tag: w.matcher.tag,
                events: batch,
                compacted: None,
                charge: Charge::new(&w.queued, bytes),
            };
            match w.tx.try_send(delivery) {
                Ok(()) => {
                    w.next_rev = last + 1;
                    sent += n;
                }
                Err(TrySendError::Full(_)) => {
                    tracing::debug!(%id, next_rev = first, "watcher queue full; catching up");
                    st.unfile(id, first);
                    victims += 1;
                }
                Err(TrySendError::Closed(_)) => {
                    st.remove(id);
                }
            }
        }
        st.report();
        drop(st);
        metrics::events(sent);
        metrics::victims(victims);
        if wake || victims > 0 {
            self.wake.notify_one();
        }
    }
}

impl State {
    /// Reports the watcher gauges.
    pub(crate) fn report(&self) {
        metrics::watchers(self.watchers.len(), self.unsynced.len());
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.closed
    }

    /// Turns a synced watcher unsynced at `next_rev`.
    fn unfile(&mut self, id: WatchId, next_rev: i64) {
        if let Some(w) = self.watchers.get_mut(&id) {
            if w.synced {
                w.synced = false;
                self.index.remove(id, &w.matcher.shape);
                self.unsynced.insert(id);
            }
            w.next_rev = next_rev;
        }
    }

    /// Files an unsynced watcher as synced.
    pub(crate) fn rejoin(&mut self, id: WatchId) {
        if let Some(w) = self.watchers.get_mut(&id) {
            if !w.synced {
                w.synced = true;
                self.index.insert(id, &w.matcher.shape);
                self.unsynced.remove(&id);
            }
        }
    }

    /// The unsynced watcher `id`, if it still is one at `next_rev`.
    pub(crate) fn unsynced_at(&mut self, id: WatchId, next_rev: i64) -> Option<&mut Watcher> {
        self.watchers
            .get_mut(&id)
            .filter(|w| !w.synced && w.next_rev == next_rev)
    }

    pub(crate) fn remove(&mut self, id: WatchId) {
        if let Some(w) = self.watchers.remove(&id) {
            self.counts.watchers.fetch_sub(1, Ordering::Relaxed);
            if w.matcher.prev_kv {
                self.counts.prev_kv.fetch_sub(1, Ordering::Relaxed);
            }
            if w.synced {
                self.index.remove(id, &w.matcher.shape);
            } else {
                self.unsynced.remove(&id);
            }
        }
    }

    /// Moves `last_published` up to `new_last` without publishing the revisions in between:
    /// synced watchers that still need any of them fall back to catch-up, from the first
    /// revision they were not sent. Returns true when any watcher moved.
    fn skip_to(&mut self, new_last: i64) -> bool {
        let old = self.last_published;
        if new_last <= old {
            return false;
        }
        let behind: Vec<(WatchId, i64)> = self
            .watchers
            .iter()
            .filter(|(_, w)| w.synced && w.next_rev <= new_last)
            .map(|(id, w)| (*id, w.next_rev.max(old + 1)))
            .collect();
        for &(id, next_rev) in &behind {
            self.unfile(id, next_rev);
        }
        self.last_published = new_last;
        !behind.is_empty()
    }
}

impl WatchGuard {
    /// The watcher's id in the hub.
    pub fn id(&self) -> WatchId {
        self.id
    }

    /// The first revision the watcher can be sent: the requested start revision, or for a
    /// watch "from now" the revision after the last one the hub had published.
    pub fn start_revision(&self) -> i64 {
        self.start_revision
    }
}

impl fmt::Debug for WatchGuard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WatchGuard")
            .field("id", &self.id)
            .field("start_revision", &self.start_revision)
            .finish()
    }
}

impl Drop for WatchGuard {
    fn drop(&mut self) {
        if let Some(shared) = self.hub.upgrade() {
            let mut st = shared.state.lock();
            st.remove(self.id);
            st.report();
        }
    }
}

impl Drop for Shared {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

#[cfg(test)]
mod tests {
    //! The hand-over between catch-up and live publishing, driven step by step: in a
    //! current-thread runtime the catch-up task never runs while a test does not await, so
    //! these tests call rounds and publishes themselves, in the orders that matter.

    use std::time::Duration;

    use mvcc::{KeyRange, KeyValue};
    use parking_lot::Mutex as PlMutex;
    use tokio::sync::mpsc;

    use super::*;

    /// A history the test writes to without publishing, to open the race windows.
    #[derive(Default)]
    struct Log {
        events: PlMutex<Vec<Event>>,
        compacted: PlMutex<i64>,
    }

    impl Log {
        fn write(&self, rev: i64, keys: &[&str]) -> Vec<Event> {
            let new: Vec<Event> = keys
                .iter()
                .map(|k| Event {
                    kind: mvcc::EventKind::Put,
                    kv: KeyValue {
                        key: k.as_bytes().to_vec(),
                        mod_revision: rev,
                        create_revision: rev,
                        version: 1,
                        ..KeyValue::default()
                    },
                    prev_kv: None,
                })
                .collect();
            self.events.lock().extend(new.iter().cloned());
            new
        }
    }

    impl History for Log {
        fn events_since(
            &self,
            from: i64,
            max: usize,
            max_bytes: usize,
        ) -> Result<Vec<Event>, mvcc::Error> {
            let compacted = *self.compacted.lock();
            if from < compacted {
                return Err(mvcc::Refusal::Compacted {
                    requested: from,
                    compacted,
                }
                .into());
            }
            let mut out: Vec<Event> = Vec::new();
            for e in self.events.lock().iter() {
                if e.kv.mod_revision < from {
                    continue;
                }
                let held: usize = out.iter().map(event_bytes).sum();
                if (out.len() >= max || held + event_bytes(e) > max_bytes)
                    && !out.is_empty()
                    && out.last().map(|l| l.kv.mod_revision) != Some(e.kv.mod_revision)
                {
                    break;
                }
                out.push(e.clone());
            }
            Ok(out)
        }
        fn current_revision(&self) -> i64 {
            self.events.lock().last().map_or(1, |e| e.kv.mod_revision)
        }
        fn compact_revision(&self) -> i64 {
            *self.compacted.lock()
        }
    }

    fn hub(log: &Arc<Log>, batch: usize) -> Hub {
        let history: Arc<dyn History> = log.clone();
        Hub::new(
            history,
            HubConfig {
                catch_up_batch: batch,
                catch_up_interval: Duration::from_secs(3600),
                ..HubConfig::default()
            },
        )
        .unwrap()
    }

    fn revs(d: &Delivery) -> Vec<i64> {
        d.events.iter().map(|e| e.kv.mod_revision).collect()
    }

    /// Bytes a delivery's events hold, as the queue budget counts them.
    fn held(d: &Delivery) -> usize {
        d.events.iter().map(crate::spec::event_bytes).sum()
    }

    #[tokio::test]
    async fn a_watcher_that_is_not_read_holds_no_more_than_its_byte_budget() {
        const BUDGET: usize = 1000;
        let log = Arc::new(Log::default());
        let history: Arc<dyn History> = log.clone();
        let hub = Hub::new(
            history,
            HubConfig {
                catch_up_batch: 100,
                catch_up_interval: Duration::from_secs(3600),
                max_queued_bytes: BUDGET,
            },
        )
        .unwrap();
        // Room for many deliveries by count, not by bytes.
        let (tx, mut rx) = mpsc::channel(64);
        let _g = hub
            .watch(WatchSpec::new(KeyRange::prefix(b"")), tx)
            .unwrap();
        for rev in 2..12 {
            let mut events = log.write(rev, &["k"]);
            events[0].kv.value = vec![b'v'; 299];
            log.events.lock().last_mut().unwrap().kv.value = vec![b'v'; 299];
            hub.publish(events, true);
        }
        let mut queued = Vec::new();
        while let Ok(d) = rx.try_recv() {
            queued.push(d);
        }
        let bytes: usize = queued.iter().map(held).sum();
        assert!(
            bytes <= BUDGET,
            "{} deliveries hold {bytes} bytes, over the budget of {BUDGET}",
            queued.len()
        );
        // Read now: the rest comes from history, every revision once, in order, each
        // delivery within the budget.
        let mut seen: Vec<i64> = queued.iter().flat_map(revs).collect();
        drop(queued);
        for _ in 0..20 {
            hub.shared.catch_up_round();
            while let Ok(d) = rx.try_recv() {
                assert!(
                    held(&d) <= BUDGET,
                    "a catch-up delivery of {} bytes",
                    held(&d)
                );
                seen.extend(revs(&d));
            }
        }
        assert_eq!(seen, (2..12).collect::<Vec<_>>());
        assert_eq!(hub.stats().unsynced, 0);
    }

    #[tokio::test]
    async fn catch_up_that_reads_ahead_of_publish_rejoins_without_duplicates() {
        let log = Arc::new(Log::default());
        let hub = hub(&log, 100);
        let (tx, mut rx) = mpsc::channel(16);
        let first = log.write(2, &["a"]);
        hub.publish(first, true);
        let _g = hub
            .watch(
                WatchSpec {
                    start_revision: 2,
                    ..WatchSpec::new(KeyRange::prefix(b""))
                },
                tx,
            )
            .unwrap();
        assert_eq!(hub.stats().unsynced, 1);
        // Revisions 3 and 4 are in history but their publish has not run yet.
        let pending = [log.write(3, &["b", "c"]), log.write(4, &["d"])];
        assert!(!hub.shared.catch_up_round());
        assert_eq!(revs(&rx.try_recv().unwrap()), [2, 3, 3, 4]);
        assert_eq!(hub.stats().unsynced, 1);
        assert!(hub.shared.state.lock().wake_on_publish);
        // The publishes land: the watcher is not filed, so they send it nothing.
        for events in pending {
            hub.publish(events, true);
        }
        assert!(rx.try_recv().is_err());
        // Next round: nothing new to read, and it is exactly at the live point.
        assert!(!hub.shared.catch_up_round());
        assert_eq!(hub.stats().unsynced, 0);
        assert!(rx.try_recv().is_err());
        hub.publish(log.write(5, &["e"]), true);
        assert_eq!(revs(&rx.try_recv().unwrap()), [5]);
    }

    #[tokio::test]
    async fn a_watcher_registered_after_the_store_skipped_events_gets_them_from_history() {
        let log = Arc::new(Log::default());
        let hub = hub(&log, 100);
        assert_eq!(hub.wants(), Wanted::Nothing, "nobody watches");
        hub.skipped(log.write(2, &["a"])[0].kv.mod_revision);
        // Revision 3 is applied without events; the watcher comes before the skip reaches
        // the hub, so it starts at 3.
        log.write(3, &["b"]);
        let (tx, mut rx) = mpsc::channel(16);
        let guard = hub
            .watch(WatchSpec::new(KeyRange::prefix(b"")), tx)
            .unwrap();
        assert_eq!(guard.start_revision(), 3);
        assert_eq!(hub.wants(), Wanted::Events);
        hub.skipped(3);
        assert!(rx.try_recv().is_err());
        assert_eq!(hub.stats().unsynced, 1);
        assert!(!hub.shared.catch_up_round());
        assert_eq!(revs(&rx.try_recv().unwrap()), [3]);
        assert_eq!(hub.stats().unsynced, 0);
        hub.publish(log.write(4, &["c"]), false);
        assert_eq!(revs(&rx.try_recv().unwrap()), [4]);
        drop(guard);
        assert_eq!(hub.wants(), Wanted::Nothing, "the watcher is gone");
    }

    #[tokio::test]
    async fn a_prev_kv_watcher_registered_after_the_store_asked_gets_them_from_history() {
        let log = Arc::new(Log::default());
        let hub = hub(&log, 100);
        let (plain_tx, mut plain) = mpsc::channel(16);
        let _plain = hub
            .watch(WatchSpec::new(KeyRange::prefix(b"")), plain_tx)
            .unwrap();
        assert_eq!(hub.wants(), Wanted::Events, "nobody asked for prev_kv");
        let with_prev = WatchSpec {
            prev_kv: true,
            ..WatchSpec::new(KeyRange::prefix(b""))
        };
        let (tx, mut rx) = mpsc::channel(16);
        let guard = hub.watch(with_prev, tx).unwrap();
        assert_eq!(hub.wants(), Wanted::EventsWithPrev);
        // The store asked before the watcher came: history has the previous value, the
        // publish does not.
        let mut stored = log.write(2, &["a"]);
        let before = KeyValue {
            key: b"a".to_vec(),
            value: b"old".to_vec(),
            ..KeyValue::default()
        };
        stored[0].prev_kv = Some(before.clone());
        log.events.lock().last_mut().unwrap().prev_kv = Some(before.clone());
        stored[0].prev_kv = None;
        hub.publish(stored, false);
        assert_eq!(revs(&plain.try_recv().unwrap()), [2]);
        assert!(rx.try_recv().is_err(), "no event without its prev_kv");
        assert_eq!(hub.stats().unsynced, 1);
        assert!(!hub.shared.catch_up_round());
        let caught_up = rx.try_recv().unwrap();
        assert_eq!(revs(&caught_up), [2]);
        assert_eq!(caught_up.events[0].prev_kv, Some(before));
        assert_eq!(hub.stats().unsynced, 0);
        drop(guard);
        assert_eq!(
            hub.wants(),
            Wanted::Events,
            "the watcher that asked is gone"
        );
    }

    #[tokio::test]
    async fn a_publish_between_read_and_rejoin_keeps_the_watcher_catching_up() {
        let log = Arc::new(Log::default());
        let hub = hub(&log, 1);
        let (tx, mut rx) = mpsc::channel(16);
        hub.publish(log.write(2, &["a"]), true);
        hub.publish(log.write(3, &["a", "b"]), true);
        let _g = hub
            .watch(
                WatchSpec {
                    start_revision: 2,
                    ..WatchSpec::new(KeyRange::prefix(b""))
                },
                tx,
            )
            .unwrap();
        // Batch 1: one revision per read, so the round reports more to do.
        assert!(hub.shared.catch_up_round());
        assert_eq!(revs(&rx.try_recv().unwrap()), [2]);
        hub.publish(log.write(4, &["c"]), true);
        assert!(rx.try_recv().is_err());
        assert!(hub.shared.catch_up_round());
        assert_eq!(revs(&rx.try_recv().unwrap()), [3, 3]);
        assert!(!hub.shared.catch_up_round());
        assert_eq!(revs(&rx.try_recv().unwrap()), [4]);
        assert_eq!(hub.stats().unsynced, 0);
        hub.publish(log.write(5, &["d"]), true);
        assert_eq!(revs(&rx.try_recv().unwrap()), [5]);
    }

    #[tokio::test]
    async fn progress_is_the_live_point_only_when_every_watcher_is_synced() {
        let log = Arc::new(Log::default());
        let hub = hub(&log, 100);
        let (tx, mut rx) = mpsc::channel(16);
        hub.publish(log.write(2, &["a"]), true);
        assert_eq!(hub.progress(&[]), Some(2));
        let live = hub
            .watch(WatchSpec::new(KeyRange::prefix(b"")), tx.clone())
            .unwrap();
        let behind = hub
            .watch(
                WatchSpec {
                    start_revision: 2,
                    ..WatchSpec::new(KeyRange::prefix(b""))
                },
                tx,
            )
            .unwrap();
        hub.publish(log.write(3, &["b"]), true);
        assert_eq!(hub.progress(&[live.id()]), Some(3));
        assert_eq!(hub.progress(&[live.id(), behind.id()]), None);
        assert!(!hub.shared.catch_up_round());
        assert_eq!(hub.progress(&[live.id(), behind.id()]), Some(3));
        let gone = behind.id();
        drop(behind);
        assert_eq!(hub.progress(&[live.id(), gone]), None);
        hub.shutdown();
        assert_eq!(hub.progress(&[]), None);
        while rx.try_recv().is_ok() {}
    }

    #[tokio::test]
    async fn a_victim_resumes_at_the_first_revision_it_was_refused() {
        let log = Arc::new(Log::default());
        let hub = hub(&log, 100);
        let (tx, mut rx) = mpsc::channel(1);
        let g = hub
            .watch(WatchSpec::new(KeyRange::new(b"a", b"")), tx)
            .unwrap();
        hub.publish(log.write(2, &["a"]), true);
        hub.publish(log.write(3, &["b"]), true);
        hub.publish(log.write(4, &["a"]), true);
        assert_eq!(hub.stats().unsynced, 1);
        assert_eq!(hub.shared.state.lock().watchers[&g.id()].next_rev, 4);
        // Still full: the round reserves nothing and reads nothing.
        assert!(!hub.shared.catch_up_round());
        assert_eq!(revs(&rx.try_recv().unwrap()), [2]);
        assert!(!hub.shared.catch_up_round());
        assert_eq!(revs(&rx.try_recv().unwrap()), [4]);
        assert_eq!(hub.stats().unsynced, 0);
    }

    #[tokio::test]
    async fn a_queue_full_when_cancelled_for_compaction_gets_the_cancel_later() {
        let log = Arc::new(Log::default());
        let hub = hub(&log, 100);
        let (tx, mut rx) = mpsc::channel(1);
        let _g = hub
            .watch(WatchSpec::new(KeyRange::prefix(b"")), tx)
            .unwrap();
        hub.publish(log.write(2, &["a"]), true);
        hub.publish(log.write(3, &["a"]), true);
        hub.publish(log.write(4, &["a"]), true);
        *log.compacted.lock() = 4;
        assert!(!hub.shared.catch_up_round());
        assert_eq!(hub.stats().watchers, 1);
        assert_eq!(revs(&rx.try_recv().unwrap()), [2]);
        assert!(!hub.shared.catch_up_round());
        let cancel = rx.try_recv().unwrap();
        assert_eq!(cancel.compacted, Some(4));
        assert!(cancel.events.is_empty());
        assert_eq!(hub.stats().watchers, 0);
    }

    #[tokio::test]
    async fn publishing_examines_only_matching_watchers() {
        let log = Arc::new(Log::default());
        let hub = hub(&log, 100);
        let (tx, mut rx) = mpsc::channel(4);
        let _guards: Vec<_> = (0..100_000u64)
            .map(|i| {
                let key = format!("key/{i}");
                let spec = WatchSpec {
                    tag: i,
                    ..WatchSpec::new(KeyRange::new(key.as_bytes(), b""))
                };
                hub.watch(spec, tx.clone()).unwrap()
            })
            .collect();
        let prefixes: Vec<_> = ["key/", "other/"]
            .iter()
            .map(|p| hub.watch(WatchSpec::new(KeyRange::prefix(p.as_bytes())), tx.clone()))
            .collect();
        hub.publish(log.write(2, &["key/77"]), true);
        // The single-key watcher and the `key/` prefix watcher; nothing else is looked at.
        assert_eq!(hub.examined(), 2);
        assert_eq!(rx.try_recv().unwrap().events.len(), 1);
        assert_eq!(rx.try_recv().unwrap().events.len(), 1);
        assert!(rx.try_recv().is_err());
        drop(prefixes);
    }
}
