//! The catch-up task: replays history to unsynced watchers until they rejoin the live stream.
//!
//! One task per hub. Each round it takes the unsynced watchers (under the hub's mutex), and
//! for each one that has room in its queue reserves a slot, reads the next batch of whole
//! revisions from history (without the mutex: that reads storage), then under the mutex
//! sends the matching events through the reserved slot, moves `next_rev` past the batch, and
//! files the watcher as synced if that reaches the live stream. See `hub` for why this can
//! neither skip nor repeat a revision. Reads run on tokio's blocking pool.

use std::sync::{Arc, Weak};
use std::time::Duration;

use mvcc::Event;
use tokio::sync::mpsc::{error::TrySendError, Permit};
use tokio::sync::Notify;
use tokio::time::MissedTickBehavior;
use tokio_util::sync::CancellationToken;

use crate::hub::Shared;
use crate::spec::{event_bytes, Charge, Matcher};
use crate::{metrics, Delivery, WatchId};

/// Runs rounds when woken or every `every`, until `stop` or until the hub is gone.
pub(crate) async fn run(
    hub: Weak<Shared>,
    wake: Arc<Notify>,
    stop: CancellationToken,
    every: Duration,
) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut again = false;
    loop {
        if !again {
            tokio::select! {
                () = stop.cancelled() => return,
                () = wake.notified() => {}
                _ = tick.tick() => {}
            }
        } else if stop.is_cancelled() {
            return;
        }
        let Some(shared) = hub.upgrade() else {
            return;
        };
        if !shared.has_unsynced() {
            again = false;
            continue;
        }
        again = match tokio::task::spawn_blocking(move || shared.catch_up_round()).await {
            Ok(again) => again,
            Err(e) => {
                tracing::error!(cause = %e, "watch catch-up round failed");
                false
            }
        };
    }
}

/// One unsynced watcher as the round found it.
struct Job {
    id: WatchId,
    next_rev: i64,
    matcher: Arc<Matcher>,
    tx: tokio::sync::mpsc::Sender<Delivery>,
}

/// The outcome of one history read, shared by the watchers waiting at the same revision.
#[derive(Clone)]
enum Read {
    /// The events read, and the store's current revision taken just before reading.
    Events {
        events: Arc<Vec<Event>>,
        current: i64,
    },
    /// The revision asked for is below this compaction point.
    Compacted(i64),
    /// The store failed; it was logged, and the watcher is retried next round.
    Failed,
}

impl Shared {
    fn has_unsynced(&self) -> bool {
        let st = self.state.lock();
        !st.is_closed() && !st.unsynced.is_empty()
    }

    /// Gives every unsynced watcher with room in its queue one batch; returns true when some
    /// watcher made progress and is still behind, so another round should follow at once.
    pub(crate) fn catch_up_round(&self) -> bool {
        let mut jobs: Vec<Job> = {
            let st = self.state.lock();
            if st.is_closed() {
                return false;
            }
            st.unsynced
                .iter()
                .filter_map(|id| {
                    // A watcher whose reader holds its whole budget gets nothing this round.
                    let budget = self.config.max_queued_bytes;
                    let w = st.watchers.get(id).filter(|w| !w.over_budget(1, budget));
                    w.map(|w| Job {
                        id: *id,
                        next_rev: w.next_rev,
                        matcher: Arc::clone(&w.matcher),
                        tx: w.tx.clone(),
                    })
                })
                .collect()
        };
        // Watchers at the same revision share one read; only the latest read is kept.
        jobs.sort_by_key(|j| j.next_rev);
        let mut last_read: Option<(i64, Read)> = None;
        let mut again = false;
        for job in &jobs {
            let permit = match job.tx.try_reserve() {
                Ok(permit) => permit,
                // Still full: its reader has not made room yet; look again next round.
                Err(TrySendError::Full(())) => continue,
                Err(TrySendError::Closed(())) => {
                    let mut st = self.state.lock();
                    st.remove(job.id);
                    st.report();
                    continue;
                }
            };
            let read = match &last_read {
                Some((from, read)) if *from == job.next_rev => read.clone(),
                _ => {
                    let read = self.read(job.next_rev);
                    last_read = Some((job.next_rev, read.clone()));
                    read
                }
            };
            again |= self.deliver(job, permit, read);
        }
        again
    }

    fn read(&self, from: i64) -> Read {
        let compacted = self.history.compact_revision();
        if from < compacted {
            return Read::Compacted(compacted);
        }
        let current = self.history.current_revision();
        match self.history.events_since(
            from,
            self.config.catch_up_batch,
            self.config.max_queued_bytes,
        ) {
            Ok(events) => Read::Events {
                events: Arc::new(events),
                current,
            },
            Err(mvcc::Error::Refused(mvcc::Refusal::Compacted { compacted, .. })) => {
                Read::Compacted(compacted)
            }
            Err(e) => {
                tracing::error!(cause = %e, from, "watch catch-up cannot read history");
                Read::Failed
            }
        }
    }

    /// Sends one read's matching events to `job`'s watcher through `permit` and advances
    /// it; returns true when it is still behind the live stream.
    fn deliver(&self, job: &Job, permit: Permit<'_, Delivery>, read: Read) -> bool {
        match read {
            Read::Failed => false,
            Read::Compacted(compacted) => {
                let mut st = self.state.lock();
                if st.unsynced_at(job.id, job.next_rev).is_none() {
                    return false;
                }
                tracing::debug!(id = %job.id, next_rev = job.next_rev, compacted, "watcher compacted");
                permit.send(Delivery {
                    tag: job.matcher.tag,
                    events: Vec::new(),
                    compacted: Some(compacted),
                    charge: Charge::default(),
                });
                st.remove(job.id);
                st.report();
                false
            }
            Read::Events { events, current } => {
                let batch: Vec<Event> = events
                    .iter()
                    .filter(|e| e.kv.mod_revision >= job.next_rev && job.matcher.wants(e))
                    .map(|e| job.matcher.render(e))
                    .collect();
                // A read returns whole revisions from `next_rev` on, so the watcher has been
                // sent everything below the last one read plus one. An empty read with
                // `next_rev` at or below the store's revision means revision `next_rev` has no
                // events left in history (compaction removed a tombstone at its point): step
                // over it alone, since the read may have stopped there.
                let next_rev = match events.last() {
                    Some(last) => (last.kv.mod_revision + 1).max(job.next_rev),
                    None if job.next_rev <= current => job.next_rev + 1,
                    None => job.next_rev,
                };
                let n = batch.len();
                let bytes = batch.iter().map(event_bytes).sum();
                let mut st = self.state.lock();
                let Some(w) = st.unsynced_at(job.id, job.next_rev) else {
                    return false;
                };
                if n > 0 {
                    if w.over_budget(bytes, self.config.max_queued_bytes) {
                        // Its reader still holds too much: look again next round.
                        return false;
                    }
                    permit.send(Delivery {
                        tag: job.matcher.tag,
                        events: batch,
                        compacted: None,
                        charge: Charge::new(&w.queued, bytes),
                    });
                }
                w.next_rev = next_rev;
                let live = st.last_published + 1;
                let behind = if next_rev == live {
                    st.rejoin(job.id);
                    tracing::debug!(id = %job.id, next_rev, "watcher caught up");
                    false
                } else if next_rev > live {
                    // Read ahead of an in-flight publish: rejoin once it lands.
                    st.wake_on_publish = true;
                    false
                } else {
                    true
                };
                st.report();
                drop(st);
                metrics::events(n);
                behind
            }
        }
    }
}
