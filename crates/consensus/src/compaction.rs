//! Physical compaction on every member: the versions a compaction made unreachable are removed
//! in bounded steps, in the background, after the compaction entry is applied.
//!
//! Removal belongs here, beside apply, because every member applies the compaction: the member
//! that proposed it is not the only one whose storage must shrink. The task also resumes on
//! start-up whatever removal a crash interrupted (the store keeps how far it got).

use std::sync::Arc;
use std::time::Duration;

use deadline::{Deadline, Layer};
use mvcc::{Backend, Store};
use tokio::sync::{watch, Notify};
use tokio_util::sync::CancellationToken;

use crate::error::NotServed;

/// Versions one step removes: the writer lock is held for one step, so apply waits at most
/// for this much work.
const STEP: usize = 1000;
/// How often a removal that a streaming snapshot holds back is retried.
const HELD_RETRY: Duration = Duration::from_millis(500);

/// Wakes the removal task and tells waiters how far it has got.
pub(crate) struct Removal {
    wake: Notify,
    done: watch::Sender<i64>,
}

impl Removal {
    /// A removal that has done nothing yet.
    pub(crate) fn new(done: i64) -> Arc<Self> {
        Arc::new(Self {
            wake: Notify::new(),
            done: watch::Sender::new(done),
        })
    }

    /// Asks the task to look for work: after an apply moved the compaction point.
    pub(crate) fn wake(&self) {
        self.wake.notify_one();
    }

    /// Waits until versions superseded at or below `revision` are gone from this member.
    ///
    /// # Errors
    /// [`NotServed::Timeout`] at `deadline`; [`NotServed::Stopped`] if removal stopped.
    pub(crate) async fn wait(&self, revision: i64, deadline: Deadline) -> Result<(), NotServed> {
        let mut done = self.done.subscribe();
        let reached = deadline::within(Layer::Apply, deadline, done.wait_for(|d| *d >= revision))
            .await?
            .is_ok();
        if reached {
            Ok(())
        } else {
            Err(NotServed::Stopped)
        }
    }
}

/// Removes compacted versions of `store` whenever woken, until `stop` fires or the store fails.
pub(crate) async fn run<B: Backend>(
    store: Store<B>,
    removal: Arc<Removal>,
    stop: CancellationToken,
) {
    let mut retry = tokio::time::interval(HELD_RETRY);
    retry.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        loop {
            let before = store.compaction_progress();
            if before.finished() {
                removal.done.send_replace(before.done);
                break;
            }
            let s = store.clone();
            let progress = match tokio::task::spawn_blocking(move || s.compact_physical(STEP)).await
            {
                Ok(Ok(progress)) => progress,
                Ok(Err(e)) => {
                    // A backend failure: the store cannot go on; apply reports it too.
                    tracing::error!(cause = %e, "physical compaction failed; stopping removal");
                    return;
                }
                Err(e) => {
                    tracing::error!(cause = %e, "physical compaction task failed");
                    return;
                }
            };
            removal.done.send_replace(progress.done);
            if progress.finished() || progress.done == before.done {
                // Done, or held back by a snapshot being streamed: wait for a wake or a retry.
                break;
            }
            // Let apply take the writer lock between steps.
            tokio::task::yield_now().await;
        }
        let pending = !store.compaction_progress().finished();
        tokio::select! {
            () = stop.cancelled() => return,
            () = removal.wake.notified() => {}
            _ = retry.tick(), if pending => {}
        }
    }
}
