use std::collections::hash_map::Entry;
use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use tokio::sync::oneshot;
use tokio::sync::oneshot::error::TryRecvError;

use crate::{within, Deadline, Layer, RegisterError, WaitError};

const PENDING_OPERATIONS: &str = "metastore_pending_operations";

/// Operations waiting for a result by id (proposal id → client), cleaned up by their guards.
///
/// Cloning is cheap and shares the same table. Every entry is owned by a [`Pending`] guard that
/// removes it when dropped, so success, expiry and a client that simply goes away all leave the
/// table as it was.
pub struct Registry<T> {
    shared: Arc<Shared<T>>,
}

// A std Mutex around a HashMap rather than a DashMap: each critical section is one O(1) insert
// or remove and never spans an await, `fail_all` needs to drain the whole table atomically, and
// the gauge is set under the same lock so it never goes out of step with the table.
struct Shared<T> {
    name: &'static str,
    next: AtomicU64,
    waiters: Mutex<HashMap<u64, Waiter<T>>>,
}

struct Waiter<T> {
    // Tells this registration apart from a later one that reuses the id (`register_with`), so a
    // stale guard never removes its successor.
    token: u64,
    tx: oneshot::Sender<T>,
}

impl<T> Clone for Registry<T> {
    fn clone(&self) -> Self {
        Self {
            shared: Arc::clone(&self.shared),
        }
    }
}

impl<T> fmt::Debug for Registry<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Registry")
            .field("name", &self.shared.name)
            .field("len", &self.len())
            .finish()
    }
}

impl<T> Registry<T> {
    /// An empty registry; `name` labels its `metastore_pending_operations` gauge.
    pub fn new(name: &'static str) -> Self {
        Self {
            shared: Arc::new(Shared {
                name,
                next: AtomicU64::new(1),
                waiters: Mutex::new(HashMap::new()),
            }),
        }
    }

    /// The name given at construction.
    pub fn name(&self) -> &'static str {
        self.shared.name
    }

    /// Registers a waiter under a fresh id, to be carried in the request and passed to `complete`.
    pub fn register(&self) -> Pending<T> {
        let (tx, rx) = oneshot::channel();
        let mut waiters = self.lock();
        // Skips ids taken through `register_with`; with a u64 counter that loop is short.
        let id = loop {
            let id = self.next_token();
            if !waiters.contains_key(&id) {
                break id;
            }
        };
        waiters.insert(id, Waiter { token: id, tx });
        self.record_len(&waiters);
        drop(waiters);
        self.pending(id, id, rx)
    }

    /// Registers a waiter under an id the caller chose (e.g. a log index).
    pub fn register_with(&self, id: u64) -> Result<Pending<T>, RegisterError> {
        let (tx, rx) = oneshot::channel();
        let token = self.next_token();
        let mut waiters = self.lock();
        if waiters.contains_key(&id) {
            return Err(RegisterError::Duplicate {
                registry: self.shared.name,
                id,
            });
        }
        waiters.insert(id, Waiter { token, tx });
        self.record_len(&waiters);
        drop(waiters);
        Ok(self.pending(id, token, rx))
    }

    /// Hands `value` to the waiter for `id`; false if nobody waits for it anymore.
    ///
    /// True means the value reached the waiter's channel; a waiter that expires at that very
    /// moment may still drop it unread.
    pub fn complete(&self, id: u64, value: T) -> bool {
        let waiter = {
            let mut waiters = self.lock();
            let waiter = waiters.remove(&id);
            if waiter.is_some() {
                self.record_len(&waiters);
            }
            waiter
        };
        // Sent outside the lock: it wakes the waiter, which may then take the lock to drop.
        waiter.is_some_and(|w| w.tx.send(value).is_ok())
    }

    /// Fails every waiter with [`WaitError::Abandoned`] (leader change, shutdown); returns how many.
    pub fn fail_all(&self) -> usize {
        let drained = {
            let mut waiters = self.lock();
            let drained = std::mem::take(&mut *waiters);
            self.record_len(&waiters);
            drained
        };
        let count = drained.len();
        // Dropped outside the lock: each dropped sender wakes its waiter.
        drop(drained);
        count
    }

    /// How many operations are in flight.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether no operation is in flight.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn pending(&self, id: u64, token: u64, rx: oneshot::Receiver<T>) -> Pending<T> {
        Pending {
            id,
            token,
            rx,
            registry: self.clone(),
        }
    }

    fn next_token(&self) -> u64 {
        // Only uniqueness matters, not ordering with other memory.
        self.shared.next.fetch_add(1, Ordering::Relaxed)
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<u64, Waiter<T>>> {
        // No code panics while holding the lock, and a table of senders is valid at every step,
        // so a poisoned lock still holds a usable table.
        self.shared
            .waiters
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn record_len(&self, waiters: &HashMap<u64, Waiter<T>>) {
        metrics::gauge!(PENDING_OPERATIONS, "registry" => self.shared.name)
            .set(waiters.len() as f64);
    }
}

/// One registered operation; dropping it (on any path) removes it from its [`Registry`].
#[must_use = "dropping a Pending unregisters it at once"]
pub struct Pending<T> {
    id: u64,
    token: u64,
    rx: oneshot::Receiver<T>,
    registry: Registry<T>,
}

impl<T> fmt::Debug for Pending<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pending")
            .field("registry", &self.registry.shared.name)
            .field("id", &self.id)
            .finish()
    }
}

impl<T> Pending<T> {
    /// The id to hand to whoever will call [`Registry::complete`].
    pub fn id(&self) -> u64 {
        self.id
    }

    /// Waits for the result until `deadline`; the entry is removed however this ends.
    ///
    /// A result that has already arrived is returned even if the deadline has passed: the work
    /// is done, and reporting it as expired would misstate its outcome.
    pub async fn wait(mut self, layer: Layer, deadline: Deadline) -> Result<T, WaitError> {
        // `None` means the sender is gone: completed by nobody.
        let received = match self.rx.try_recv() {
            Ok(value) => Ok(Some(value)),
            Err(TryRecvError::Closed) => Ok(None),
            Err(TryRecvError::Empty) => within(layer, deadline, &mut self.rx).await.map(Result::ok),
        };
        match received {
            Ok(Some(value)) => Ok(value),
            Ok(None) => Err(WaitError::Abandoned {
                registry: self.registry.shared.name,
                id: self.id,
            }),
            Err(expired) => Err(expired.into()),
        }
    }
}

impl<T> Drop for Pending<T> {
    fn drop(&mut self) {
        let registry = &self.registry;
        let mut waiters = registry.lock();
        if let Entry::Occupied(entry) = waiters.entry(self.id) {
            if entry.get().token == self.token {
                entry.remove();
                registry.record_len(&waiters);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    use tokio::time::Instant;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[tokio::test(start_paused = true)]
    async fn complete_delivers_and_removes() {
        let reg = Registry::new("test");
        let p = reg.register();
        let id = p.id();
        assert_eq!(reg.len(), 1);
        assert!(reg.complete(id, "done"));
        assert!(reg.is_empty());
        assert_eq!(p.wait(Layer::Commit, Deadline::none()).await, Ok("done"));
        assert!(!reg.complete(id, "again"));
    }

    #[tokio::test(start_paused = true)]
    async fn a_result_already_there_beats_an_expired_deadline() {
        let reg = Registry::new("test");
        let p = reg.register();
        let deadline = Deadline::after(ms(5));
        assert!(reg.complete(p.id(), 9));
        tokio::time::advance(ms(5)).await;
        assert_eq!(p.wait(Layer::Commit, deadline).await, Ok(9));

        let p = reg.register();
        reg.fail_all();
        assert!(matches!(
            p.wait(Layer::Commit, deadline).await,
            Err(WaitError::Abandoned { .. })
        ));
    }

    #[tokio::test(start_paused = true)]
    async fn ids_are_unique() {
        let reg = Registry::<()>::new("test");
        let a = reg.register();
        let b = reg.register();
        assert_ne!(a.id(), b.id());
    }

    #[tokio::test(start_paused = true)]
    async fn expiry_removes_the_entry() {
        let reg = Registry::<u8>::new("test");
        let p = reg.register();
        let id = p.id();
        let start = Instant::now();
        let err = p
            .wait(Layer::Apply, Deadline::after(ms(40)))
            .await
            .unwrap_err();
        assert_eq!(start.elapsed(), ms(40));
        assert!(matches!(err, WaitError::Expired(e) if e.layer == Layer::Apply));
        assert!(reg.is_empty());
        assert!(!reg.complete(id, 1));
    }

    #[tokio::test(start_paused = true)]
    async fn dropping_the_guard_removes_the_entry() {
        let reg = Registry::<u8>::new("test");
        let p = reg.register();
        let id = p.id();
        drop(p);
        assert!(reg.is_empty());
        assert!(!reg.complete(id, 1));
    }

    #[tokio::test(start_paused = true)]
    async fn aborting_the_waiting_task_removes_the_entry() {
        let reg = Registry::<u8>::new("test");
        let p = reg.register();
        let task = tokio::spawn(p.wait(Layer::Commit, Deadline::none()));
        tokio::task::yield_now().await;
        assert_eq!(reg.len(), 1);
        task.abort();
        assert!(task.await.unwrap_err().is_cancelled());
        assert!(reg.is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn dropping_a_select_branch_removes_the_entry() {
        let reg = Registry::<u8>::new("test");
        let p = reg.register();
        let (client_gone_tx, client_gone) = oneshot::channel::<()>();
        drop(client_gone_tx);
        tokio::select! {
            _ = p.wait(Layer::Commit, Deadline::none()) => unreachable!("nobody completes it"),
            _ = client_gone => {}
        }
        assert!(reg.is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn fail_all_abandons_every_waiter() {
        let reg = Registry::<u8>::new("reads");
        let a = reg.register();
        let b = reg.register();
        let a_id = a.id();
        assert_eq!(reg.fail_all(), 2);
        assert!(reg.is_empty());
        assert_eq!(
            a.wait(Layer::ReadIndex, Deadline::none()).await,
            Err(WaitError::Abandoned {
                registry: "reads",
                id: a_id
            })
        );
        drop(b);
        assert!(reg.is_empty());
        // The registry keeps working after a leader change.
        let c = reg.register();
        assert!(reg.complete(c.id(), 3));
        assert_eq!(c.wait(Layer::ReadIndex, Deadline::none()).await, Ok(3));
    }

    #[tokio::test(start_paused = true)]
    async fn register_with_refuses_duplicates_and_old_guards_spare_new_entries() {
        let reg = Registry::<u8>::new("by-index");
        let first = reg.register_with(10).unwrap();
        assert_eq!(first.id(), 10);
        assert_eq!(
            reg.register_with(10).unwrap_err(),
            RegisterError::Duplicate {
                registry: "by-index",
                id: 10
            }
        );
        assert!(reg.complete(10, 1));
        let second = reg.register_with(10).unwrap();
        // The first guard's entry is gone; dropping it must not remove the second's.
        drop(first);
        assert_eq!(reg.len(), 1);
        assert!(reg.complete(10, 2));
        assert_eq!(second.wait(Layer::Apply, Deadline::none()).await, Ok(2));
    }

    #[tokio::test(start_paused = true)]
    async fn register_skips_ids_taken_by_register_with() {
        let reg = Registry::<u8>::new("mixed");
        let taken = reg.register_with(1).unwrap();
        let fresh = reg.register();
        assert_ne!(fresh.id(), taken.id());
        assert_eq!(reg.len(), 2);
    }

    #[test]
    fn debug_shows_name_and_size() {
        let reg = Registry::<u8>::new("proposals");
        let p = reg.register();
        assert_eq!(
            format!("{reg:?}"),
            "Registry { name: \"proposals\", len: 1 }"
        );
        assert_eq!(
            format!("{p:?}"),
            format!("Pending {{ registry: \"proposals\", id: {} }}", p.id())
        );
    }
}
