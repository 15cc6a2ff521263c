//! Proposal batching: every command that arrives while the log is busy goes into one entry.
//!
//! One entry per write would cost one log record, one replication message and one apply per
//! write. The batcher holds the next entry back until the log reports the previous one durable,
//! then puts every command that queued up meanwhile into one entry: one fsync, one replication
//! message and one apply batch for all of them. (openraft 0.9's core also waited for each
//! entry's flush before it took the next write; 0.10's does not, and replicates an entry while
//! the leader's own fsync runs.) Each command
//! still gets its own revision and its own answer.
//!
//! Bounded throughout: the queue in front of it has room for `max_in_flight` commands, an entry
//! holds at most [`MAX_BATCH`] commands or [`MAX_BATCH_BYTES`], the wait for a flush is capped,
//! and at most [`MAX_UNANSWERED`] entries may wait for their apply before new commands are
//! refused with etcd's "too many requests".

use std::task::Poll;
use std::time::Duration;

use deadline::{Deadline, Layer, Registry};
use futures::future::BoxFuture;
use futures::stream::{FuturesUnordered, StreamExt};
use openraft::error::ClientWriteError;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use crate::network::{CallError, ForwardReply, Forwarded, Peers, Refusal, Rpc};
use crate::types::typ::Raft;
use crate::types::{Applied, Proposal, Tagged};

/// Commands in one entry at most.
pub(crate) const MAX_BATCH: usize = 4_096;
/// Approximate bytes of commands in one entry at most (one command may exceed it alone).
pub(crate) const MAX_BATCH_BYTES: usize = 4 << 20;
/// Entries proposed and not yet answered at most; beyond, commands are refused. etcd refuses
/// proposals when its applied index lags the committed one by 5,000 entries; our entries are
/// batches, so the bound counts far more commands.
pub(crate) const MAX_UNANSWERED: usize = 256;
/// Batches a follower has forwarded to the leader and not yet heard back about, at most;
/// while they are out, new commands gather into the next batch.
const MAX_FORWARDS: usize = 4;

/// A command waiting for an entry, with the id of its waiter and when it was queued.
#[derive(Debug)]
pub(crate) struct Queued {
    /// The command and its waiter.
    pub(crate) tagged: Tagged,
    /// When it entered the queue ([`crate::stages`]'s `queue` stage).
    pub(crate) at: std::time::Instant,
}

impl Queued {
    /// `tagged`, queued now.
    pub(crate) fn now(tagged: Tagged) -> Self {
        Self {
            tagged,
            at: std::time::Instant::now(),
        }
    }
}

/// Why a command was answered without being applied.
#[derive(Clone, Debug)]
pub(crate) enum Rejected {
    /// No leader is known, or it could not be reached; nothing was appended, so the proposer
    /// may try again.
    NoLeader,
    /// Another member leads.
    NotLeader(u64),
    /// Raft has stopped.
    Stopped,
    /// Too many entries wait for their apply.
    TooManyRequests,
    /// The command itself is refused.
    Command(mvcc::Refusal),
    /// The leader refused a forwarded batch holding these commands (waiter id, why); the
    /// rest of the batch is refused with it.
    Invalid(Vec<(u64, mvcc::Refusal)>),
    /// Raft refused the entry for another reason.
    Other(String),
    /// The log's disk is (nearly) full; nothing was appended.
    DiskFull(crate::log_store::Full),
}

/// What a waiting proposer receives.
pub(crate) type Answer = Result<Applied, Rejected>;

/// A batch's answer: its waiters, and why the batch was refused if it was.
struct Outcome {
    /// The waiters of the batch's commands.
    ids: Vec<u64>,
    /// `None`: the waiters hear from the apply (or from their budget).
    rejected: Option<Rejected>,
}

/// A batch still waiting for its answer.
type Waiting = BoxFuture<'static, Outcome>;

/// Every batch not yet answered: entries proposed here and batches forwarded to the leader,
/// apart, so the number of forwards out is the size of their set and cannot drift from it
/// whichever loop takes an answer.
#[derive(Default)]
struct Unanswered {
    local: FuturesUnordered<Waiting>,
    forwarded: FuturesUnordered<Waiting>,
}

impl Unanswered {
    fn len(&self) -> usize {
        self.local.len() + self.forwarded.len()
    }

    fn is_empty(&self) -> bool {
        self.local.is_empty() && self.forwarded.is_empty()
    }

    /// Batches forwarded to the leader and not yet answered.
    fn forwards(&self) -> usize {
        self.forwarded.len()
    }

    /// The next answer from either set; `None` once both are empty.
    async fn next(&mut self) -> Option<Outcome> {
        futures::future::poll_fn(|cx| {
            if let Poll::Ready(Some(outcome)) = self.local.poll_next_unpin(cx) {
                return Poll::Ready(Some(outcome));
            }
            if let Poll::Ready(Some(outcome)) = self.forwarded.poll_next_unpin(cx) {
                return Poll::Ready(Some(outcome));
            }
            if self.is_empty() {
                Poll::Ready(None)
            } else {
                Poll::Pending
            }
        })
        .await
    }
}

/// The task that turns queued commands into entries.
pub(crate) struct Batcher<B: mvcc::Backend> {
    pub(crate) origin: u64,
    /// This start of the member ([`crate::incarnation::boot_id`]).
    pub(crate) incarnation: u64,
    pub(crate) raft: Raft<B>,
    pub(crate) peers: Peers,
    pub(crate) queue: mpsc::Receiver<Queued>,
    pub(crate) waiters: Registry<Answer>,
    /// The highest batch sequence number of this member that the log holds durably.
    pub(crate) flushed: watch::Receiver<u64>,
    /// Longest the batcher waits for an entry's flush before it sends the next one anyway.
    pub(crate) flush_wait: Duration,
    pub(crate) stop: CancellationToken,
    /// Set while this leader hands leadership over: nothing new is appended.
    pub(crate) pause: crate::transfer::Pause,
    /// The room on this member's log disk, checked before each entry.
    pub(crate) space: crate::log_store::Space,
    /// Longest a new leader holds an entry back until a quorum has answered it
    /// ([`crate::leader::heard_from_quorum`]).
    pub(crate) quorum_wait: Duration,
}

impl<B: mvcc::Backend> Batcher<B> {
    /// Runs until `stop` or until every sender of the queue is gone.
    pub(crate) async fn run(mut self) {
        let mut unanswered = Unanswered::default();
        let mut seq = 0u64;
        loop {
            tokio::select! {
                biased;
                () = self.stop.cancelled() => break,
                Some(outcome) = unanswered.next(), if !unanswered.is_empty() => {
                    self.settle(outcome);
                }
                first = self.queue.recv(), if unanswered.forwards() < MAX_FORWARDS => {
                    let Some(first) = first else { break };
                    let (batch, bytes) = self.gather(first);
                    if unanswered.len() >= MAX_UNANSWERED {
                        self.reject(batch.iter().map(|q| q.id), &Rejected::TooManyRequests);
                        continue;
                    }
                    if let Err(full) = self.space.check(bytes as u64) {
                        self.reject(batch.iter().map(|q| q.id), &Rejected::DiskFull(full));
                        continue;
                    }
                    seq += 1;
                    crate::stages::gathered((self.origin, self.incarnation, seq), batch.len());
                    let ids: Vec<u64> = batch.iter().map(|q| q.id).collect();
                    let proposal = Proposal {
                        origin: self.origin,
                        incarnation: self.incarnation,
                        seq,
                        commands: batch,
                    };
                    match crate::leader::current(&self.raft) {
                        Some((l, _)) if l == self.origin => {
                            self.propose_here(proposal, ids, seq, &mut unanswered).await;
                        }
                        Some((l, Some(member))) => {
                            let peers = self.peers.clone();
                            let limit = self.flush_wait;
                            unanswered.forwarded.push(Box::pin(async move {
                                let request = Forwarded::Propose(proposal);
                                let reply: Result<ForwardReply, _> =
                                    peers.call(l, &member, Rpc::Forward, &request, Some(limit)).await;
                                let rejected = forward_rejection(reply);
                                Outcome { ids, rejected }
                            }));
                        }
                        _ => self.reject(ids.into_iter(), &Rejected::NoLeader),
                    }
                }
            }
        }
        // Entries still unanswered are Raft's now; their waiters hear from the apply, from
        // `Node::shutdown` or from their budget. Commands never sent are refused here.
        drop(unanswered);
        self.queue.close();
        while let Ok(q) = self.queue.try_recv() {
            self.waiters.complete(q.tagged.id, Err(Rejected::Stopped));
        }
    }

    /// Hands `proposal` to Raft on this member (the leader) and waits for its flush.
    async fn propose_here(
        &self,
        proposal: Proposal,
        ids: Vec<u64>,
        seq: u64,
        unanswered: &mut Unanswered,
    ) {
        crate::leader::heard_from_quorum(&self.raft, self.origin, self.quorum_wait).await;
        // Refused before anything is appended while a transfer holds proposals back: the
        // proposers try again with whoever leads once it is over.
        let Some(pass) = self.pause.enter() else {
            self.reject(ids.into_iter(), &Rejected::NoLeader);
            return;
        };
        let (responder, answer) = openraft::impls::ProgressResponder::complete_only();
        let submitted = self.raft.client_write_ff(proposal, Some(responder)).await;
        drop(pass);
        match submitted {
            Ok(()) => {
                let responder = answer;
                unanswered.local.push(Box::pin(async move {
                    let rejected = match responder.await {
                        Ok(Ok(_)) => None,
                        Ok(Err(e)) => rejection(e),
                        // Raft dropped the responder (it stopped, or the entry was applied
                        // without one): the waiters hear from the apply or their budget.
                        Err(_) => None,
                    };
                    Outcome { ids, rejected }
                }));
                self.await_flush(seq, unanswered).await;
            }
            Err(_) => self.reject(ids.into_iter(), &Rejected::Stopped),
        }
    }

    /// `first` and whatever else is queued, within the entry's bounds, and their approximate
    /// bytes.
    fn gather(&mut self, first: Queued) -> (Vec<Tagged>, usize) {
        let now = std::time::Instant::now();
        let waited = |q: &Queued| now.saturating_duration_since(q.at);
        let mut bytes = first.tagged.command.approx_size();
        crate::stages::record("queue", waited(&first), 1);
        let mut batch = vec![first.tagged];
        while batch.len() < MAX_BATCH && bytes < MAX_BATCH_BYTES {
            match self.queue.try_recv() {
                Ok(q) => {
                    bytes += q.tagged.command.approx_size();
                    crate::stages::record("queue", waited(&q), 1);
                    batch.push(q.tagged);
                }
                Err(_) => break,
            }
        }
        (batch, bytes)
    }

    /// Waits until the log holds batch `seq` durably, its entry is refused, `stop`, or the
    /// flush wait runs out; answers that arrive meanwhile are settled.
    async fn await_flush(&self, seq: u64, unanswered: &mut Unanswered) {
        let mut flushed = self.flushed.clone();
        let wait = async {
            loop {
                if *flushed.borrow_and_update() >= seq {
                    return;
                }
                tokio::select! {
                    biased;
                    () = self.stop.cancelled() => return,
                    changed = flushed.changed() => {
                        if changed.is_err() {
                            return;
                        }
                    }
                    Some(outcome) = unanswered.next(), if !unanswered.is_empty() => {
                        // A refusal means this entry will not reach the log from us.
                        let refused = outcome.rejected.is_some();
                        self.settle(outcome);
                        if refused {
                            return;
                        }
                    }
                }
            }
        };
        // Running out only means the next entry goes to Raft without waiting: never an error.
        let _ = deadline::within(Layer::Propose, Deadline::after(self.flush_wait), wait).await;
    }

    fn settle(&self, Outcome { ids, rejected }: Outcome) {
        if let Some(rejected) = rejected {
            self.reject(ids.into_iter(), &rejected);
        }
    }

    /// Answers every waiter in `ids` with `rejected`.
    fn reject(&self, ids: impl Iterator<Item = u64>, rejected: &Rejected) {
        for id in ids {
            let answer = match rejected {
                Rejected::Invalid(bad) => {
                    Rejected::Command(bad.iter().find(|(b, _)| *b == id).map_or_else(
                        || {
                            mvcc::Refusal::Other(
                                "etcdserver: the leader refused the batch this request was \
                                     forwarded in: it held an invalid command"
                                    .into(),
                            )
                        },
                        |(_, why)| why.clone(),
                    ))
                }
                other => other.clone(),
            };
            self.waiters.complete(id, Err(answer));
        }
    }
}

/// What a forwarded batch's waiters hear from the leader's answer: a refusal, or `None` when
/// the entry was taken or may still commit (they hear from the local apply or their budget).
fn forward_rejection(reply: Result<ForwardReply, CallError>) -> Option<Rejected> {
    match reply {
        Ok(ForwardReply::Done) => None,
        Ok(ForwardReply::Refused(Refusal::TooManyRequests)) => Some(Rejected::TooManyRequests),
        Ok(ForwardReply::Refused(Refusal::Invalid(bad))) => Some(Rejected::Invalid(bad)),
        Ok(ForwardReply::Refused(Refusal::NotLeader(Some(l)))) => Some(Rejected::NotLeader(l)),
        // Refused before anything was appended, or never sent: the proposer may try again,
        // with a leader.
        Ok(ForwardReply::Refused(Refusal::NotLeader(None) | Refusal::Stopped))
        | Err(CallError::NotSent(_)) => Some(Rejected::NoLeader),
        // A timeout, or a call that failed once sent: the entry may still commit; the waiters
        // hear from the local apply or from their budget.
        Ok(ForwardReply::Refused(Refusal::Timeout))
        | Err(CallError::Timeout | CallError::Unreachable(_)) => None,
        Ok(ForwardReply::Refused(Refusal::Other(why))) => Some(Rejected::Other(why)),
        Ok(other) => Some(Rejected::Other(format!(
            "unexpected answer from the leader: {other:?}"
        ))),
        // A message over the size limit was refused whole.
        Err(e @ (CallError::Protocol(_) | CallError::TooLarge { .. })) => {
            Some(Rejected::Other(e.to_string()))
        }
    }
}

/// What the proposers of a refused entry hear; `None` when the entry was appended and its fate
/// is unknown (a leader change discarded openraft's wait for it): its waiters hear from the
/// apply, should a later leader commit it, or from their budget, never a retry that could
/// apply it twice.
fn rejection(e: ClientWriteError<crate::TypeConfig>) -> Option<Rejected> {
    match e {
        ClientWriteError::ForwardToLeader(f) => Some(
            f.leader_id
                .map_or(Rejected::NoLeader, |l| Rejected::NotLeader(l.0)),
        ),
        ClientWriteError::LogEntryDiscarded(_) => None,
        ClientWriteError::ChangeMembershipError(e) => Some(Rejected::Other(e.to_string())),
        ClientWriteError::PreconditionFailed(e) => Some(Rejected::Other(e.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::{Harness, LONG};
    use crate::types::Tagged;

    fn put(key: &str) -> mvcc::Command {
        mvcc::Command::Put(mvcc::PutRequest {
            key: key.into(),
            value: b"v".to_vec(),
            ..Default::default()
        })
    }

    /// Queues `command` and returns its waiter.
    async fn queue(
        h: &Harness,
        tx: &mpsc::Sender<Queued>,
        command: mvcc::Command,
    ) -> deadline::Pending<Answer> {
        let pending = h.waiters.register();
        let tagged = Tagged {
            id: pending.id(),
            command,
        };
        tx.send(Queued::now(tagged)).await.unwrap();
        pending
    }

    /// Runs a batcher for the harness's member: its queue's sender, its task, its stop, and
    /// the sender of its flush watch, which never reports (the batcher waits in `await_flush`
    /// for as long as it may) but must be kept.
    fn start_batcher(
        h: &Harness,
    ) -> (
        mpsc::Sender<Queued>,
        tokio::task::JoinHandle<()>,
        CancellationToken,
        watch::Sender<u64>,
    ) {
        let (tx, rx) = mpsc::channel(64);
        let (flushed_tx, flushed) = watch::channel(0);
        let stop = CancellationToken::new();
        let batcher = Batcher {
            origin: crate::test_support::ME,
            incarnation: crate::test_support::INCARNATION,
            raft: h.raft.clone(),
            peers: h.peers.clone(),
            queue: rx,
            waiters: h.waiters.clone(),
            flushed,
            flush_wait: LONG,
            stop: stop.clone(),
            pause: crate::transfer::Pause::default(),
            space: crate::LogStore::unlimited_space(),
            quorum_wait: LONG,
        };
        (tx, tokio::spawn(batcher.run()), stop, flushed_tx)
    }

    /// A follower forwards a batch, becomes leader, proposes its own batch, and hears back
    /// about the forward while it waits for that batch's flush; four times over. Writes on the
    /// member must still be taken afterwards: the forwards are all answered.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn forwards_answered_while_waiting_for_a_flush_do_not_stall_writes() {
        let mut h = Harness::start().await;
        let (tx, running, stop, _flushed) = start_batcher(&h);
        let answer = |p: deadline::Pending<Answer>, what: String| async move {
            p.wait(Layer::Commit, Deadline::after(Duration::from_secs(10)))
                .await
                .unwrap_or_else(|e| panic!("{what} was never answered: {e}"))
        };
        for round in 1..=MAX_FORWARDS {
            h.follow_peer().await;
            let forwarded = queue(&h, &tx, put(&format!("fwd{round}"))).await;
            h.forwards_arrived(round).await;
            h.lead().await;
            // Applied here, so the batcher has proposed it and now waits for its flush.
            let local = queue(&h, &tx, put(&format!("own{round}"))).await;
            let applied = answer(local, format!("round {round}: the leader's own write")).await;
            assert!(applied.is_ok(), "round {round}: {applied:?}");
            h.release_one_forward();
            let refused = answer(forwarded, format!("round {round}: the forward")).await;
            assert!(
                matches!(refused, Err(Rejected::TooManyRequests)),
                "round {round}: {refused:?}"
            );
        }
        let last = queue(&h, &tx, put("after")).await;
        let applied = answer(last, "a write after the forwards were answered".into()).await;
        assert!(applied.is_ok(), "{applied:?}");
        stop.cancel();
        running.await.unwrap();
        h.raft.shutdown().await.unwrap();
    }

    /// A new leader that no quorum has answered yet holds a write back until one has, where
    /// openraft alone would refuse it (`LeaseExpired`) and its proposer, told "no leader",
    /// would try again a heartbeat later.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_new_leader_holds_a_write_until_a_quorum_has_answered_it() {
        let h = Harness::start().await;
        let (tx, running, stop, _flushed) = start_batcher(&h);
        h.hold_appends();
        h.raft.trigger().elect(false).await.unwrap();
        h.wait_for_leader(crate::test_support::ME).await;
        let write = queue(&h, &tx, put("first")).await;
        let mut answered = tokio::spawn(write.wait(Layer::Commit, Deadline::after(LONG)));
        // Nothing may answer it while no quorum has answered the leader: a refusal would come
        // at once (this bound only has to outlast the batcher's turn, not any disk or peer).
        let early = deadline::within(
            Layer::Api,
            Deadline::after(Duration::from_millis(500)),
            &mut answered,
        )
        .await;
        assert!(
            early.is_err(),
            "answered before a quorum heard the leader: {early:?}"
        );
        h.answer_appends();
        let applied = answered.await.unwrap().unwrap();
        assert!(applied.is_ok(), "{applied:?}");
        stop.cancel();
        running.await.unwrap();
        h.raft.shutdown().await.unwrap();
    }
}
