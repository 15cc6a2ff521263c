//! Which incarnation of this member proposed an entry: waiter ids restart with the process, so
//! only the incarnation that registered a waiter may complete it.

use std::hash::{BuildHasher, Hasher};
use std::time::{SystemTime, UNIX_EPOCH};

/// A number telling this start of the member apart from every earlier one, with no state kept
/// on disk: the standard hasher's keys are seeded from the OS's random source once per process
/// and differ for every hasher built, and the clock and process id are mixed in too.
pub(crate) fn boot_id() -> u64 {
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    h.write_u128(now);
    h.write_u32(std::process::id());
    h.finish()
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use crate::types::typ::EntryPayload;
    use deadline::{Deadline, Layer, Registry};

    use crate::batcher::Answer;
    use crate::lessor::Lessor;
    use crate::state_machine::StateMachine;
    use crate::types::typ::Entry;
    use crate::types::{Proposal, Tagged};

    const ME: u64 = 1;

    #[test]
    fn every_start_draws_another_id() {
        let ids: std::collections::HashSet<u64> = (0..1_000).map(|_| super::boot_id()).collect();
        assert_eq!(ids.len(), 1_000);
    }

    fn put(key: &str) -> mvcc::Command {
        mvcc::Command::Put(mvcc::PutRequest {
            key: key.into(),
            value: b"v".to_vec(),
            ..Default::default()
        })
    }

    fn entry(index: u64, proposal: Proposal) -> Entry {
        Entry {
            log_id: crate::types::typ::log_id(1, ME, index),
            payload: EntryPayload::Normal(proposal),
        }
    }

    /// After a restart, a committed entry this member proposed before it (its waiter ids from
    /// the old process) applies while a new request waits under the same id: the new request
    /// must not be answered with the old entry's result.
    #[tokio::test]
    async fn an_entry_from_a_previous_incarnation_answers_no_new_waiter() {
        let dir = tempfile::tempdir().unwrap();
        let store = mvcc::Store::open(engine_mem::MemBackend::new()).unwrap();
        let (before, now) = (super::boot_id(), super::boot_id());
        // The process restarted: a fresh registry hands out id 1 again.
        let waiters: Registry<Answer> = Registry::new("test-proposals");
        let mut sm = StateMachine::open(
            store.clone(),
            crate::state_machine::Proposer {
                node_id: ME,
                incarnation: now,
                waiters: waiters.clone(),
                alarms: Default::default(),
                auth: Default::default(),
            },
            dir.path().join("snapshots"),
            Arc::new(Lessor::default()),
            Duration::from_secs(1),
            crate::compaction::Removal::new(0),
        )
        .unwrap();
        let new_request = waiters.register();
        assert_eq!(new_request.id(), 1);
        let old = Proposal {
            origin: ME,
            incarnation: before,
            seq: 7,
            commands: vec![Tagged {
                id: 1,
                command: put("written-before-the-restart"),
            }],
        };
        sm.apply_entries([entry(1, old)]).await.unwrap();
        assert_eq!(store.current_revision(), 2, "the old entry applied");
        let answer = new_request
            .wait(Layer::Commit, Deadline::after(Duration::ZERO))
            .await;
        assert!(
            answer.is_err(),
            "a new request was answered with the previous incarnation's result: {answer:?}"
        );
        // This incarnation's own entry does answer it.
        let new_request = waiters.register();
        let id = new_request.id();
        let ours = Proposal {
            origin: ME,
            incarnation: now,
            seq: 1,
            commands: vec![Tagged {
                id,
                command: put("written-now"),
            }],
        };
        sm.apply_entries([entry(2, ours)]).await.unwrap();
        let answer = new_request
            .wait(Layer::Commit, Deadline::after(Duration::ZERO))
            .await;
        assert!(
            matches!(answer, Ok(Ok(ref a)) if a.revision == 3),
            "{answer:?}"
        );
    }
}
