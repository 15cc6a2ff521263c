//! The log position the state machine's engine holds durably, below which the log may be
//! purged on disk.
//!
//! openraft 0.9 purges the log up to an installed snapshot's point in the same step that hands
//! the snapshot to the state machine, without waiting for the install: the log store's purge
//! can reach the disk while the engine still holds its old content. A crash between the two
//! leaves a log that starts past the engine's durable position, with the entries between gone
//! from both, and openraft panics at the next start (`Failed to get log entries`). The state
//! machine raises this floor only at points its engine (or, for an engine that starts empty,
//! a snapshot file) holds durably; the log's writer persists a purge only up to it.

use std::sync::{Arc, Condvar, Mutex, PoisonError};

use crate::types::typ::LogId;

/// Shared by the log's writer and the state machine. Until a state machine attaches (tests of
/// the log alone), purges do not wait.
#[derive(Default)]
pub(crate) struct Floor {
    state: Mutex<State>,
    raised: Condvar,
}

#[derive(Default)]
struct State {
    /// `None` until a state machine attaches; then its durable point.
    at: Option<Option<LogId>>,
    /// The state machine is gone or the log is closing: waiting would never end.
    closed: bool,
}

impl Floor {
    /// A state machine whose engine holds `at` durably now takes part.
    pub(crate) fn attach(&self, at: Option<LogId>) {
        self.state().at = Some(at);
        self.raised.notify_all();
    }

    /// The engine now holds `at` durably.
    pub(crate) fn raise(&self, at: Option<LogId>) {
        let mut state = self.state();
        if let Some(now) = state.at.as_mut() {
            if at > *now {
                *now = at;
            }
        }
        drop(state);
        self.raised.notify_all();
    }

    /// Nothing will raise the floor any more: waiters give up.
    pub(crate) fn close(&self) {
        self.state().closed = true;
        self.raised.notify_all();
    }

    /// Whether a purge up to `upto` may be persisted now.
    pub(crate) fn allows(&self, upto: LogId) -> bool {
        allows(&self.state(), upto)
    }

    /// Blocks until a purge up to `upto` may be persisted (true), or until the floor is closed
    /// below it (false: the purge must not reach the disk).
    pub(crate) fn wait_until_allows(&self, upto: LogId) -> bool {
        let mut state = self.state();
        loop {
            if allows(&state, upto) {
                return true;
            }
            if state.closed {
                return false;
            }
            state = self
                .raised
                .wait(state)
                .unwrap_or_else(PoisonError::into_inner);
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

fn allows(state: &State, upto: LogId) -> bool {
    state.at.is_none_or(|at| at >= Some(upto))
}

/// The state machine's hold on the floor: closes it when the state machine goes, so a purge
/// waiting for an install that will never finish gives up instead of stopping the log.
pub(crate) struct FloorRaiser(pub(crate) Arc<Floor>);

impl Drop for FloorRaiser {
    fn drop(&mut self) {
        self.0.close();
    }
}

#[cfg(test)]
mod tests {
    use openraft::CommittedLeaderId;

    use super::*;

    fn log_id(index: u64) -> LogId {
        LogId::new(CommittedLeaderId::new(1, 1), index)
    }

    #[test]
    fn a_purge_waits_for_the_engine_and_gives_up_when_it_goes() {
        let floor = Arc::new(Floor::default());
        assert!(
            floor.allows(log_id(9)),
            "no state machine: nothing to wait for"
        );
        floor.attach(Some(log_id(4)));
        assert!(floor.allows(log_id(4)));
        assert!(!floor.allows(log_id(5)));
        let waiter = {
            let floor = Arc::clone(&floor);
            std::thread::spawn(move || floor.wait_until_allows(log_id(8)))
        };
        floor.raise(Some(log_id(8)));
        assert!(waiter.join().unwrap_or(false));
        floor.raise(Some(log_id(6)));
        assert!(floor.allows(log_id(8)), "the floor never goes down");
        let waiter = {
            let floor = Arc::clone(&floor);
            std::thread::spawn(move || floor.wait_until_allows(log_id(20)))
        };
        drop(FloorRaiser(Arc::clone(&floor)));
        assert!(!waiter.join().unwrap_or(true));
    }
}
