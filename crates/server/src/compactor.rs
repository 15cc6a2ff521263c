//! Automatic compaction (`--auto-compaction-mode`/`--auto-compaction-retention`).

use std::collections::VecDeque;
use std::time::Duration;

use consensus::Node;
use deadline::Deadline;
use mvcc::{Backend, Command, CompactRequest};
use tokio_util::sync::CancellationToken;

use crate::config::AutoCompaction;

/// How often revision mode checks, as etcd does.
const REVISION_CHECK: Duration = Duration::from_secs(300);

/// Runs until `stop` fires: compacts the history the policy says to drop, through Raft.
pub async fn run<B: Backend>(node: Node<B>, policy: AutoCompaction, stop: CancellationToken) {
    let (tick, keep) = match policy {
        AutoCompaction::Off => return,
        // Sample every tenth of the window: the oldest sample at least a window old is the point.
        AutoCompaction::Periodic(window) => (window / 10, Keep::Window(window)),
        AutoCompaction::Revision(n) => (REVISION_CHECK, Keep::Revisions(n)),
    };
    let mut interval = tokio::time::interval(tick.max(Duration::from_secs(1)));
    let mut samples: VecDeque<(tokio::time::Instant, i64)> = VecDeque::new();
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = interval.tick() => {}
        }
        let now = tokio::time::Instant::now();
        let current = node.store().current_revision();
        let target = match keep {
            Keep::Revisions(n) => current - n,
            Keep::Window(window) => {
                samples.push_back((now, current));
                let mut point = 0;
                while let Some(&(at, rev)) = samples.front() {
                    if now.duration_since(at) < window {
                        break;
                    }
                    point = rev;
                    samples.pop_front();
                }
                point
            }
        };
        // Only the leader proposes, as etcd's compactor does: every member would otherwise
        // propose the same compaction, and the store removes the versions on every member.
        let status = node.status();
        if status.leader != Some(status.id) || target <= node.store().compact_revision() {
            continue;
        }
        let command = Command::Compact(CompactRequest {
            revision: target,
            physical: false,
        });
        match node
            .propose(command, Deadline::after(Duration::from_secs(10)))
            .await
        {
            Ok(_) => tracing::info!(revision = target, "auto-compacted"),
            Err(e) => tracing::warn!(revision = target, cause = %e, "auto-compaction failed"),
        }
    }
}

#[derive(Clone, Copy)]
enum Keep {
    Window(Duration),
    Revisions(i64),
}
