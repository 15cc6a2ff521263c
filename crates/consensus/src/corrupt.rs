//! etcd's corruption checks: members compare their key-space hashes (etcd's HashKV) at one
//! revision, on start (`--experimental-initial-corrupt-check`) and periodically on the leader
//! (`--experimental-corrupt-check-time`).
//!
//! The rules are etcd 3.4's. On start, a member whose hash differs from a peer's at its own
//! revision, with the same compaction point, refuses to start. Periodically the leader hashes
//! at its revision, asks every other member for its hash there, and raises CORRUPT through the
//! log for a member that is ahead of it, has compacted further, or hashes differently at the
//! same compaction point (or for itself when its own hash changed under the check). Members
//! that do not answer, have not reached the revision yet or compacted it away are skipped.

use std::time::Duration;

use deadline::Deadline;
use mvcc::Backend;
use serde::{Deserialize, Serialize};

use crate::network::{ForwardReply, Forwarded, Refusal, Rpc};
use crate::node::Node;

/// One member's key-space hash at a revision.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerHash {
    /// The member that answered.
    pub member: u64,
    /// etcd's HashKV hash at the revision asked for.
    pub hash: u32,
    /// The member's current revision when it hashed.
    pub revision: i64,
    /// The member's compaction point when it hashed.
    pub compact_revision: i64,
}

/// A member whose data differs from its peers'.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{member:x} found data inconsistency with peers ({peers:x?} hash differently at revision {revision})")]
pub struct Inconsistency {
    /// This member.
    pub member: u64,
    /// The revision compared.
    pub revision: i64,
    /// The peers whose hash differs.
    pub peers: Vec<u64>,
}

impl<B: Backend> Node<B> {
    /// This member's hash at `rev` (0: its current revision), computed off the async workers.
    ///
    /// # Errors
    /// The store's error (a compacted or future revision, a backend failure), as text.
    pub async fn local_hash(&self, rev: i64) -> Result<PeerHash, String> {
        let store = self.store().clone();
        let member = self.id();
        tokio::task::spawn_blocking(move || {
            let revision = store.current_revision();
            store.hash(rev).map(|h| PeerHash {
                member,
                hash: h.hash,
                revision,
                compact_revision: h.compact_revision,
            })
        })
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string())
    }

    /// Answers a peer's [`Forwarded::HashKv`].
    pub(crate) async fn serve_hash(&self, rev: i64) -> ForwardReply {
        match self.local_hash(rev).await {
            Ok(h) => ForwardReply::Hash(h),
            Err(e) => ForwardReply::Refused(Refusal::Other(e)),
        }
    }

    /// Every other member's hash at `rev`, each asked within `limit`; those that could not
    /// answer are left out (and logged).
    pub async fn peer_hashes(&self, rev: i64, limit: Duration) -> Vec<PeerHash> {
        let others: Vec<(u64, crate::Member)> = self
            .status()
            .members
            .into_iter()
            .filter(|(id, _, _)| *id != self.id())
            .map(|(id, m, _)| (id, m))
            .collect();
        let asks = others.into_iter().map(|(id, member)| async move {
            let reply = self
                .peers()
                .call(id, &member, Rpc::Forward, &Forwarded::HashKv(rev), Some(limit))
                .await;
            match reply {
                Ok(ForwardReply::Hash(h)) if h.member == id => Some(h),
                other => {
                    tracing::warn!(peer = format_args!("{id:x}"), revision = rev, answer = ?other, "cannot fetch a peer's hash; it is not compared");
                    None
                }
            }
        });
        futures::future::join_all(asks)
            .await
            .into_iter()
            .flatten()
            .collect()
    }

    /// etcd's start-up check: this member's hash at its revision against each peer's there.
    ///
    /// # Errors
    /// [`Inconsistency`] when a peer with the same compaction point hashes differently.
    pub async fn initial_corruption_check(&self, limit: Duration) -> Result<(), Inconsistency> {
        let mine = match self.local_hash(0).await {
            Ok(h) => h,
            Err(e) => {
                tracing::warn!(cause = %e, "cannot hash the local store; the start-up corruption check is skipped");
                return Ok(());
            }
        };
        let peers = self.peer_hashes(mine.revision, limit).await;
        let differ: Vec<u64> = peers
            .iter()
            .filter(|p| p.compact_revision == mine.compact_revision && p.hash != mine.hash)
            .map(|p| p.member)
            .collect();
        for p in peers
            .iter()
            .filter(|p| p.compact_revision != mine.compact_revision)
        {
            tracing::warn!(
                peer = format_args!("{:x}", p.member),
                "compaction points differ; cannot compare hashes"
            );
        }
        if differ.is_empty() {
            tracing::info!(
                revision = mine.revision,
                compared = peers.len(),
                "start-up corruption check passed"
            );
            Ok(())
        } else {
            Err(Inconsistency {
                member: self.id(),
                revision: mine.revision,
                peers: differ,
            })
        }
    }

    /// etcd's periodic check, run by the leader only: raises CORRUPT through the log for the
    /// first member found inconsistent, and returns it.
    pub async fn periodic_corruption_check(&self, limit: Duration) -> Option<u64> {
        if !self.leading().0 {
            return None;
        }
        let first = self.local_hash(0).await.ok()?;
        let peers = self.peer_hashes(first.revision, limit).await;
        let again = self.local_hash(0).await.ok()?;
        let mut corrupt = None;
        if again.hash != first.hash
            && again.revision == first.revision
            && again.compact_revision == first.compact_revision
        {
            corrupt = Some(self.id());
        }
        for p in &peers {
            if corrupt.is_some() {
                break;
            }
            let ahead = p.revision > again.revision;
            let compacted_further = p.compact_revision > again.compact_revision;
            let differs = p.compact_revision == first.compact_revision && p.hash != first.hash;
            if ahead || compacted_further || differs {
                tracing::error!(peer = format_args!("{:x}", p.member), ?p, leader = ?first, "a member's data differs from the leader's");
                corrupt = Some(p.member);
            }
        }
        let member = corrupt?;
        let raise = mvcc::Command::Alarm(mvcc::AlarmRequest {
            action: mvcc::AlarmAction::Activate,
            member_id: member,
            alarm: mvcc::alarm_kind::CORRUPT,
        });
        if let Err(e) = self.propose(raise, Deadline::after(limit)).await {
            tracing::warn!(cause = %e, "raising the CORRUPT alarm failed; the next check tries again");
        }
        Some(member)
    }
}

/// Runs [`Node::periodic_corruption_check`] every `every` until `stop`.
pub async fn corruption_check_loop<B: Backend>(
    node: Node<B>,
    every: Duration,
    stop: tokio_util::sync::CancellationToken,
) {
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            () = deadline::pause(every) => {}
        }
        let limit = every.clamp(Duration::from_secs(1), Duration::from_secs(10));
        if let Some(member) = node.periodic_corruption_check(limit).await {
            tracing::error!(member = format_args!("{member:x}"), "CORRUPT alarm raised");
        }
    }
}
