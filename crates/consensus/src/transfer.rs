//! Leader transfer (etcd's MoveLeader), built on openraft 0.9, which has none of its own.
//!
//! openraft 0.9 voters refuse a candidate while their leader lease (the longest election
//! timeout since they last heard from the leader) runs, and nothing lets a candidate skip that
//! check. The leader's own lease, though, runs from its election only: in steady state the
//! leader grants an up-to-date candidate's vote at once, and in a three-member cluster that
//! vote and the candidate's own are a quorum. So the leader:
//! 1. waits until its own lease has run out (only right after its election);
//! 2. waits until the target's log matches its own, then pauses proposals (local and forwarded
//!    ones are refused before anything is appended, and their proposers try again with
//!    whoever leads, as after any leader change) and waits, an election timeout at most, until
//!    it matches again; a target that lags is waited for until the deadline, as etcd does,
//!    with writes flowing;
//! 3. asks the target to campaign ([`crate::network::Forwarded::Campaign`]), grants its vote and
//!    steps down; the target leads with the next term.
//!
//! In larger clusters the other followers' leases also hold the target back until they run
//! out; the transfer then takes up to two election timeouts. docs/architecture.md has the
//! measurements and why this was chosen over openraft 0.10's pre-release.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use deadline::{Deadline, Layer};

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

/// Whether proposals are paused for a transfer; shared by the node, its batcher and the
/// peer service.
#[derive(Clone, Debug, Default)]
pub(crate) struct Pause(Arc<AtomicBool>);

impl Pause {
    /// True while a transfer holds proposals back.
    pub(crate) fn is_paused(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }

    /// Pauses proposals until the guard is dropped; `None` when a transfer already runs.
    pub(crate) fn hold(&self) -> Option<PauseGuard> {
        self.0
            .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
            .ok()
            .map(|_| PauseGuard(Arc::clone(&self.0)))
    }
}

/// Resumes proposals when dropped, whatever way the transfer ended.
pub(crate) struct PauseGuard(Arc<AtomicBool>);

impl Drop for PauseGuard {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Release);
    }
}

/// Waits until `ready` says so on a new metrics value, within `deadline` and `limit` if given
/// (a deadline without an end is given ten seconds).
pub(crate) async fn until<T>(
    metrics: &mut tokio::sync::watch::Receiver<T>,
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
            if ready(&metrics.borrow_and_update()) {
                return Ok(());
            }
            if metrics.changed().await.is_err() {
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

    #[test]
    fn one_transfer_at_a_time_and_the_pause_ends_with_it() {
        let pause = Pause::default();
        let guard = pause.hold().expect("the first transfer pauses");
        assert!(pause.is_paused());
        assert!(pause.hold().is_none(), "a second transfer waits its turn");
        drop(guard);
        assert!(!pause.is_paused());
        assert!(pause.hold().is_some());
    }
}
