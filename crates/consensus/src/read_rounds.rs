//! Read-index rounds: one confirmation of leadership serves every read that arrived before it.
//!
//! openraft's `ensure_linearizable` confirms leadership with its own heartbeat round to
//! the voters on every call, and a follower asks the leader once per read, so 64 concurrent
//! linearizable reads cost 64 rounds (and, on a follower, 64 forwarded calls). A read only
//! needs a confirmation that *began after the read arrived*. The rounds task therefore takes
//! every read queued so far, gets one read index for all of them (as the leader, or from the
//! leader), waits once for the local apply to reach it, and answers them all; reads that
//! arrive while a round is under way wait for the next one.
//!
//! Bounded: the queue holds [`QUEUE`] reads (a reader waits for room within its deadline), a
//! round takes at most [`MAX_ROUND`] of them, and a round is bounded by the `read-index`
//! budget. A reader that gave up leaves only a closed one-shot channel behind, skipped when its
//! round comes.

use std::sync::atomic::{AtomicU64, Ordering};

use deadline::{Budgets, Deadline, Layer};
use mvcc::Backend;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::error::NotServed;
use crate::Node;

/// Reads waiting for a round at most.
const QUEUE: usize = 16_384;
/// Reads one round answers at most.
const MAX_ROUND: usize = 4_096;

/// Where a waiting read gets its answer: the confirmed read index, applied locally.
pub(crate) type Reply = oneshot::Sender<Result<u64, NotServed>>;

/// The handle reads go through; [`run`] serves its queue.
pub(crate) struct ReadRounds {
    queue: mpsc::Sender<Reply>,
    budgets: Budgets,
    /// Rounds run so far.
    pub(crate) rounds: AtomicU64,
}

impl ReadRounds {
    /// The handle, and the queue for [`run`].
    pub(crate) fn new(budgets: Budgets) -> (Self, mpsc::Receiver<Reply>) {
        let (queue, queued) = mpsc::channel(QUEUE);
        (
            Self {
                queue,
                budgets,
                rounds: AtomicU64::new(0),
            },
            queued,
        )
    }

    /// A read index confirmed by a round that began after this call, once this member has
    /// applied that far.
    pub(crate) async fn read_index(&self, deadline: Deadline) -> Result<u64, NotServed> {
        let limit = self.budgets.deadline_for(Layer::ReadIndex, deadline);
        let (reply, answer) = oneshot::channel();
        deadline::send(Layer::ReadIndex, limit, &self.queue, reply)
            .await
            .map_err(|e| match e {
                deadline::SendError::Expired { expired, .. } => NotServed::Timeout(expired),
                _ => NotServed::Stopped,
            })?;
        match deadline::within(Layer::ReadIndex, limit, answer).await? {
            Ok(result) => result,
            Err(_dropped) => Err(NotServed::Stopped),
        }
    }
}

/// Serves rounds until `stop`.
pub(crate) async fn run<B: Backend>(
    node: Node<B>,
    mut queued: mpsc::Receiver<Reply>,
    stop: CancellationToken,
) {
    let mut round = Vec::with_capacity(64);
    loop {
        let first = tokio::select! {
            () = stop.cancelled() => return,
            next = queued.recv() => match next {
                Some(reply) => reply,
                None => return,
            },
        };
        round.push(first);
        while round.len() < MAX_ROUND {
            match queued.try_recv() {
                Ok(reply) => round.push(reply),
                Err(_) => break,
            }
        }
        round.retain(|reply| !reply.is_closed());
        if round.is_empty() {
            continue;
        }
        node.read_rounds_handle()
            .rounds
            .fetch_add(1, Ordering::Relaxed);
        metrics::counter!("metastore_read_index_rounds_total").increment(1);
        metrics::counter!("metastore_read_index_reads_total").increment(round.len() as u64);
        let result = node.confirm_read().await;
        for reply in round.drain(..) {
            // A reader that gave up in the meantime is simply not there to answer.
            let _ = reply.send(result.clone());
        }
    }
}
