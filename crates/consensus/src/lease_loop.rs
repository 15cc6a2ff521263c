//! The leader's lease duties: revoke what expired, at a bounded rate, and checkpoint.
//!
//! Runs on every member and acts only while it leads. On taking over it first waits until its
//! store holds everything committed (a read index), then resets every lease's expiry (see
//! [`Lessor::reset`](crate::lessor::Lessor)). Revokes are ordinary proposals, each bounded by
//! the commit budget: they queue with client writes and never block them, and no more than
//! `rate` per second are proposed however many leases expire at once.

use openraft::type_config::async_runtime::WatchReceiver as _;
use std::time::Duration;

use deadline::{Deadline, Layer};
use mvcc::{Backend, Command, LeaseCheckpointRequest, LeaseRevokeRequest};
use tokio::time::{Instant, MissedTickBehavior};

use crate::error::ProposeError;
use crate::Node;
use mvcc::Refusal;

/// How often expired leases are looked for (etcd: 500 ms).
const TICK: Duration = Duration::from_millis(500);

/// Runs until the node stops.
pub(crate) async fn run<B: Backend>(
    node: Node<B>,
    rate: u32,
    checkpoint_every: Duration,
    extend: Duration,
) {
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let per_tick = ((u64::from(rate) * TICK.as_millis() as u64) / 1000).max(1) as usize;
    let mut leading_term = None;
    // When this member was first seen leading in the current term.
    let mut since = None;
    let mut last_checkpoint = Instant::now();
    let stop = node.stopping().clone();
    // Woken by Raft's metrics too, so that a leadership is noticed within moments: leases
    // granted after it must not be extended as if they predated it.
    let mut metrics = node.raft_metrics();
    loop {
        let ticked = tokio::select! {
            () = stop.cancelled() => return,
            _ = tick.tick() => true,
            changed = metrics.changed() => {
                if changed.is_err() {
                    return;
                }
                false
            }
        };
        let (leads, term) = node.leading();
        if !leads {
            leading_term = None;
            since = None;
            continue;
        }
        if leading_term != Some(term) {
            let started = *since.get_or_insert_with(Instant::now);
            // The lease records must include everything the old leader committed.
            if node.read_index(Deadline::after(TICK)).await.is_err() {
                continue;
            }
            node.lessor()
                .reset(&node.store().leases(), extend, Some(started));
            tracing::info!(
                term,
                leases = node.lessor().len(),
                "leading: lease expiries reset"
            );
            leading_term = Some(term);
            since = None;
            last_checkpoint = Instant::now();
        }
        if !ticked {
            continue;
        }
        revoke_expired(&node, per_tick).await;
        if last_checkpoint.elapsed() >= checkpoint_every {
            last_checkpoint = Instant::now();
            checkpoint(&node).await;
        }
    }
}

async fn revoke_expired<B: Backend>(node: &Node<B>, max: usize) {
    let due = node.lessor().due(max);
    if due.is_empty() {
        return;
    }
    tracing::debug!(count = due.len(), "revoking expired leases");
    let budget = node.budgets().get(Layer::Commit);
    let proposals = due.into_iter().map(|id| async move {
        let command = Command::LeaseRevoke(LeaseRevokeRequest { id });
        (id, node.propose(command, Deadline::after(budget)).await)
    });
    for (id, result) in futures::future::join_all(proposals).await {
        match result {
            Ok(_) => metrics::counter!("metastore_leases_expired_total").increment(1),
            // Revoked meanwhile (by a client, or by an earlier proposal that timed out here).
            Err(ProposeError::Command(Refusal::LeaseNotFound { .. })) => node.lessor().revoked(id),
            // It is held back and proposed again later.
            Err(e) => tracing::warn!(lease = id, cause = %e, "revoking an expired lease failed"),
        }
    }
}

async fn checkpoint<B: Backend>(node: &Node<B>) {
    let checkpoints = node.lessor().checkpoints();
    if checkpoints.is_empty() {
        return;
    }
    let budget = node.budgets().get(Layer::Commit);
    let command = Command::LeaseCheckpoint(LeaseCheckpointRequest { checkpoints });
    if let Err(e) = node.propose(command, Deadline::after(budget)).await {
        tracing::warn!(cause = %e, "lease checkpoint failed");
    }
}
