//! Leader transfer (etcd's MoveLeader), on openraft 0.10's `transfer_leader`.
//!
//! Voters refuse a candidate while their leader lease (the longest election timeout since they
//! last heard from the leader) runs. openraft 0.10's transfer lifts it: the leader stops taking
//! writes and tells every voter to accept the transferee, which campaigns at once if its log is
//! as long as the leader's was when asked. That check is made once, so the leader first:
//! 1. waits until the target's log matches its own, then pauses proposals (local and forwarded
//!    ones are refused before anything is appended, and their proposers try again with
//!    whoever leads, as after any leader change) and waits, an election timeout at most, until
//!    it matches again; a target that lags is waited for until the deadline, as etcd does,
//!    with writes flowing;
//! 2. has openraft hand over; the target leads with the next term. A leader whose transferee
//!    did not take over within two election timeouts campaigns itself, which ends openraft's
//!    no-writes state (it most likely wins again).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use deadline::{Deadline, Layer};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, SemaphorePermit};

/// Why a transfer did not happen, as etcd's MoveLeader answers.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TransferError {
    /// This member does not lead.
    #[error("etcdserver: not leader")]
    NotLeader,
    /// The target is not a voting member.
    #[error("etcdserver: bad leader transferee")]
    BadTransferee,
    /// The target did not catch up or win its election in time.
    #[error("etcdserver: request timed out, leader transfer took too long")]
    Timeout,
    /// The member is stopping.
    #[error("etcdserver: server stopped")]
    Stopped,
}

/// The gate proposals pass on their way into Raft on the leader; a transfer closes it.
/// Shared by the node, its batcher and the peer service.
///
/// A proposer holds a pass from its check until Raft has its entry (`client_write_ff`
/// returned); closing waits for every pass to come back. So once the gate is closed, every
/// entry this member will append until it reopens is already on its way to the log, and a
/// barrier through Raft's queue ([`crate::Node::transfer_leadership`]) tells where the log
/// ends: a flag read before the call could not, as an entry let through just before the
/// flag flipped reached the log after the target was found up to date, and the leader then
/// refused the target's vote for its shorter log.
#[derive(Clone, Debug)]
pub(crate) struct Pause(Arc<Gate>);

#[derive(Debug)]
struct Gate {
    /// Set while a transfer runs: one at a time.
    running: AtomicBool,
    /// One permit per proposal on its way into Raft; a transfer takes them all.
    passes: Arc<Semaphore>,
}

/// More than proposals can be under way at once (one batcher, forwarded batches bounded per
/// follower): a proposer that finds none left is refused, as while paused, and retries.
const PASSES: u32 = 1 << 20;

impl Default for Pause {
    fn default() -> Self {
        Self(Arc::new(Gate {
            running: AtomicBool::new(false),
            passes: Arc::new(Semaphore::new(PASSES as usize)),
        }))
    }
}

impl Pause {
    /// A pass for one proposal into Raft, to hold until `client_write_ff` returns; `None`
    /// while a transfer holds proposals back.
    pub(crate) fn enter(&self) -> Option<SemaphorePermit<'_>> {
        self.0.passes.try_acquire().ok()
    }

    /// Closes the gate once every proposal under way has reached Raft, within `deadline`
    /// (an election timeout at most); it opens again when the guard is dropped.
    ///
    /// # Errors
    /// [`TransferError::Timeout`] when another transfer runs or the passes did not all come
    /// back in time.
    pub(crate) async fn hold(
        &self,
        deadline: Deadline,
        limit: Duration,
    ) -> Result<PauseGuard, TransferError> {
        self.0
            .running
            .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
            .map_err(|_| TransferError::Timeout)?;
        let running = Running(Arc::clone(&self.0));
        let passes = Arc::clone(&self.0.passes);
        let closed = deadline::within(
            Layer::Api,
            deadline.earliest(Deadline::after(limit)),
            passes.acquire_many_owned(PASSES),
        )
        .await;
        match closed {
            Ok(Ok(permits)) => Ok(PauseGuard {
                _permits: permits,
                _running: running,
            }),
            Ok(Err(_)) => Err(TransferError::Stopped),
            Err(_) => Err(TransferError::Timeout),
        }
    }
}

/// Ends the transfer's turn when dropped.
struct Running(Arc<Gate>);

impl Drop for Running {
    fn drop(&mut self) {
        self.0.running.store(false, Ordering::Release);
    }
}

/// Reopens the gate when dropped, whatever way the transfer ended.
pub(crate) struct PauseGuard {
    // Field order: the passes go back before the next transfer may start.
    _permits: OwnedSemaphorePermit,
    _running: Running,
}

/// Waits until `ready` says so on a new metrics value, within `deadline` and `limit` if given
/// (a deadline without an end is given ten seconds).
pub(crate) async fn until<T: Send + Sync>(
    metrics: &mut openraft::type_config::alias::WatchReceiverOf<crate::TypeConfig, T>,
    deadline: Deadline,
    limit: Option<Duration>,
    ready: impl Fn(&T) -> bool,
) -> Result<(), TransferError> {
    let cap = limit.unwrap_or(Duration::from_secs(10));
    let bound = match (limit, deadline.remaining()) {
        (None, Some(_)) => deadline,
        _ => deadline.earliest(Deadline::after(cap)),
    };
    let wait = async {
        loop {
            if ready(
                &openraft::type_config::async_runtime::WatchReceiver::borrow_and_update(metrics),
            ) {
                return Ok(());
            }
            if openraft::type_config::async_runtime::WatchReceiver::changed(metrics)
                .await
                .is_err()
            {
                return Err(TransferError::Stopped);
            }
        }
    };
    deadline::within(Layer::Api, bound, wait)
        .await
        .map_err(|_| TransferError::Timeout)?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn one_transfer_at_a_time_and_the_gate_opens_with_its_end() {
        let pause = Pause::default();
        let long = Duration::from_secs(5);
        let guard = pause
            .hold(Deadline::none(), long)
            .await
            .expect("the first closes");
        assert!(pause.enter().is_none(), "no proposal passes a closed gate");
        assert_eq!(
            pause.hold(Deadline::none(), long).await.err(),
            Some(TransferError::Timeout),
            "a second transfer waits its turn"
        );
        drop(guard);
        assert!(pause.enter().is_some());
        assert!(pause.hold(Deadline::none(), long).await.is_ok());
    }

    #[tokio::test]
    async fn closing_waits_for_proposals_under_way() {
        let pause = Pause::default();
        let pass = pause.enter().expect("an open gate");
        let closing = {
            let pause = pause.clone();
            tokio::spawn(async move { pause.hold(Deadline::none(), Duration::from_secs(5)).await })
        };
        // The transfer cannot close over a proposal that has not reached Raft yet, and no
        // new proposal passes while it waits.
        tokio::task::yield_now().await;
        assert!(!closing.is_finished());
        assert!(pause.enter().is_none());
        drop(pass);
        let guard = closing.await.expect("joined");
        assert!(guard.is_ok());
    }

    #[tokio::test]
    async fn a_pass_that_never_returns_times_the_transfer_out() {
        let pause = Pause::default();
        let _stuck = pause.enter().expect("an open gate");
        let closed = pause
            .hold(Deadline::none(), Duration::from_millis(20))
            .await;
        assert_eq!(closed.err(), Some(TransferError::Timeout));
        assert!(pause.enter().is_some(), "a failed close reopens the gate");
    }
}
