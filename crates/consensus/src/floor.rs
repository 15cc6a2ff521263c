//! The log position the state machine's engine holds durably, below which the log may be
//! purged on disk.
//!
//! openraft (0.9, and 0.10 still) purges the log up to an installed snapshot's point in the same
//! step that hands
//! the snapshot to the state machine, without waiting for the install: the log store's purge
//! can reach the disk while the engine still holds its old content. A crash between the two
//! leaves a log that starts past the engine's durable position, with the entries between gone
//! from both, and openraft panics at the next start (`Failed to get log entries`). The state
//! machine raises this floor only at points its engine (or, for an engine that starts empty,
//! a snapshot file) holds durably; the log's writer persists a purge only up to it.
//!
//! The writes queued behind a held purge wait with it: written first, entries after the
//! snapshot's point would follow a gap where the log lacks what the engine lacks too. The wait
//! is bounded: while the state machine installs a snapshot that reaches the purge it ends with
//! the install (a raise, or an error that drops the state machine and closes the floor);
//! otherwise [`HOLD_LIMIT`] without a change of the floor ends it with an error. Either way
//! the log then stops, the purge and everything after it left off the disk, as a crash would.

use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::time::{Duration, Instant};

use crate::types::typ::LogId;

/// How long a purge waits for the state machine when no install that reaches it is under way
/// and the floor does not move: the applies queued before the install must fit in it.
pub(crate) const HOLD_LIMIT: Duration = Duration::from_secs(60);

/// Counter: held purges that ended the log (`reason`: `expired` or `closed`).
pub(crate) const HELD_PURGES_FAILED: &str = "metastore_raft_log_held_purges_failed_total";

/// Shared by the log's writer and the state machine. Until a state machine attaches (tests of
/// the log alone), purges do not wait.
#[derive(Default)]
pub(crate) struct Floor {
    state: Mutex<State>,
    raised: Condvar,
}

struct State {
    /// `None` until a state machine attaches; then its durable point.
    at: Option<Option<LogId>>,
    /// The state machine is gone or the log is closing: waiting would never end.
    closed: bool,
    /// The point of a snapshot the state machine is installing now.
    installing: Option<LogId>,
    /// [`HOLD_LIMIT`], shorter in tests.
    limit: Duration,
}

impl Default for State {
    fn default() -> Self {
        Self {
            at: None,
            closed: false,
            installing: None,
            limit: HOLD_LIMIT,
        }
    }
}

/// How a wait for the floor ended.
#[derive(Debug, PartialEq)]
pub(crate) enum Held {
    /// The purge may be persisted.
    Allowed,
    /// Nothing will raise the floor any more.
    Closed,
    /// The floor did not move for `limit`, with no install under way that reaches the purge.
    Expired {
        /// Where the floor stood.
        at: Option<LogId>,
        /// How long it was waited for.
        limit: Duration,
    },
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

    /// The state machine starts installing a snapshot at `point` (`None`: the install ended).
    pub(crate) fn installing(&self, point: Option<LogId>) {
        self.state().installing = point;
        self.raised.notify_all();
    }

    /// Waits end after `limit` instead of [`HOLD_LIMIT`].
    #[cfg(test)]
    pub(crate) fn set_limit(&self, limit: Duration) {
        self.state().limit = limit;
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

    /// Blocks until a purge up to `upto` may be persisted, the floor is closed below it, or it
    /// has not moved for the limit with no install under way that reaches `upto`.
    pub(crate) fn wait_until_allows(&self, upto: LogId) -> Held {
        let mut state = self.state();
        let mut deadline = Instant::now() + state.limit;
        loop {
            if allows(&state, upto) {
                return Held::Allowed;
            }
            if state.closed {
                return Held::Closed;
            }
            if state.installing >= Some(upto) {
                // It ends in a raise, or in an error that drops the state machine; the limit
                // starts again after it.
                state = self
                    .raised
                    .wait(state)
                    .unwrap_or_else(PoisonError::into_inner);
                deadline = Instant::now() + state.limit;
                continue;
            }
            let Some(left) = deadline.checked_duration_since(Instant::now()) else {
                return Held::Expired {
                    at: state.at.flatten(),
                    limit: state.limit,
                };
            };
            let before = state.at;
            state = self
                .raised
                .wait_timeout(state, left)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
            if state.at != before {
                // The state machine moves: it gets the limit again.
                deadline = Instant::now() + state.limit;
            }
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

    use super::*;

    fn log_id(index: u64) -> LogId {
        crate::types::typ::log_id(1, 1, index)
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
        assert_eq!(waiter.join().ok(), Some(Held::Allowed));
        floor.raise(Some(log_id(6)));
        assert!(floor.allows(log_id(8)), "the floor never goes down");
        let waiter = {
            let floor = Arc::clone(&floor);
            std::thread::spawn(move || floor.wait_until_allows(log_id(20)))
        };
        drop(FloorRaiser(Arc::clone(&floor)));
        assert_eq!(waiter.join().ok(), Some(Held::Closed));
    }

    #[test]
    fn a_purge_waits_out_an_install_that_reaches_it_and_no_more_than_the_limit_otherwise() {
        let floor = Arc::new(Floor::default());
        floor.attach(Some(log_id(4)));
        floor.set_limit(Duration::from_millis(200));
        let started = Instant::now();
        assert_eq!(
            floor.wait_until_allows(log_id(9)),
            Held::Expired {
                at: Some(log_id(4)),
                limit: Duration::from_millis(200)
            }
        );
        assert!(started.elapsed() < Duration::from_secs(5));
        // An install up to 9 under way: the wait lasts as long as the install, past the limit.
        floor.installing(Some(log_id(9)));
        let waiter = {
            let floor = Arc::clone(&floor);
            std::thread::spawn(move || floor.wait_until_allows(log_id(9)))
        };
        // Three limits pass: a wait still bounded by the limit would have ended.
        std::thread::sleep(Duration::from_millis(600));
        assert!(!waiter.is_finished(), "gave up while the install ran");
        floor.raise(Some(log_id(9)));
        floor.installing(None);
        assert_eq!(waiter.join().ok(), Some(Held::Allowed));
        // An install that stops short does not hold a purge past it beyond the limit.
        floor.installing(Some(log_id(12)));
        assert!(matches!(
            floor.wait_until_allows(log_id(15)),
            Held::Expired { .. }
        ));
    }
}
