//! Starting a member (log, store, Raft, bootstrap or join, its tasks) and stopping it.

use openraft::type_config::async_runtime::WatchReceiver as _;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use deadline::{Deadline, Layer, Registry};
use mvcc::{Backend, Store};
use tokio::sync::{mpsc, Semaphore};
use tokio_util::sync::CancellationToken;

use super::{Inner, Node, NodeConfig};
use crate::alarms::Alarms;
use crate::auth::Auth;
use crate::batcher::Batcher;
use crate::compaction::Removal;
use crate::error::StartError;
use crate::leader::Leadership;
use crate::lessor::Lessor;
use crate::log_store::LogStore;
use crate::membership::Change;
use crate::network::{PeerNetwork, Peers};
use crate::read_rounds::ReadRounds;
use crate::state_machine::StateMachine;
use crate::types::typ::Raft;
use crate::types::{Member, MemberId};

impl<B: Backend> Node<B> {
    /// Opens the log and the store in `config.data_dir`, starts Raft, and bootstraps a new
    /// cluster from `config.initial_members` if this member has never been initialized.
    ///
    /// # Errors
    /// [`StartError`] when the log, store or snapshots cannot be opened, or Raft refuses.
    pub async fn start(mut config: NodeConfig, backend: B) -> Result<Self, StartError> {
        config.budgets.validate().map_err(StartError::Budgets)?;
        // A member's id is fixed when it first starts; as etcd, a restart with other peer URLs
        // (a moved host or container) is still that member, whatever id the flags give now.
        let mut cluster_id = crate::membership::cluster_id(&config.cluster_token);
        if let Some(recorded) = crate::marker::recorded_id(&config.data_dir)? {
            tracing::info!(
                id = format_args!("{recorded:x}"),
                "the data dir is initialised: --initial-cluster, --initial-cluster-state and \
                 --initial-cluster-token are ignored (as etcd)"
            );
            if recorded != config.id {
                tracing::warn!(
                    recorded = format_args!("{recorded:x}"),
                    from_flags = format_args!("{:x}", config.id),
                    "this data dir belongs to member {recorded:x}: starting as it (the \
                     --initial-* flags count only at a member's first start)"
                );
                config.id = recorded;
            }
            if let Some(recorded) = crate::marker::recorded_cluster(&config.data_dir)? {
                if recorded != cluster_id {
                    tracing::warn!(
                        recorded = format_args!("{recorded:x}"),
                        from_flags = format_args!("{cluster_id:x}"),
                        "this data dir belongs to cluster {recorded:x}: serving as it (the \
                         --initial-* flags count only at a member's first start)"
                    );
                    cluster_id = recorded;
                }
            }
        } else if config.join_existing {
            // Before the log is opened: its votes name this member by id.
            let (id, cluster) = crate::join::assigned_ids(&config).await?;
            tracing::info!(
                id = format_args!("{id:x}"),
                cluster = format_args!("{cluster:x}"),
                "joining: the cluster gave this member its id"
            );
            config.id = id;
            cluster_id = cluster;
        }
        let raft_config = Arc::new(config.raft_config()?);
        let dir = &config.data_dir;
        mvcc::durable::create_dir_all_synced(dir).map_err(|cause| StartError::Dir {
            path: dir.display().to_string(),
            cause,
        })?;
        let log_dir = config.log_dir.clone().unwrap_or_else(|| dir.clone());
        mvcc::durable::create_dir_all_synced(&log_dir).map_err(|cause| StartError::Dir {
            path: log_dir.display().to_string(),
            cause,
        })?;
        let log_path = log_dir.join(crate::marker::RAFT_LOG);
        let legacy = log_dir.join(crate::marker::LEGACY_RAFT_LOG);
        // Before opening: opening would create an empty log in place of a lost one. A log
        // from before segment files is migrated by the opening.
        if !legacy.is_file() {
            crate::marker::require_path(dir, &log_path)?;
        }
        let incarnation = crate::incarnation::boot_id();
        let (mut log, log_closer) =
            LogStore::open_in(&log_dir, config.id, incarnation).map_err(|cause| {
                StartError::Log {
                    path: log_path.display().to_string(),
                    cause,
                }
            })?;
        if config.force_new_cluster && crate::marker::initialised(dir)? {
            let at = log
                .force_single_member(config.id, config.member.clone())
                .await
                .map_err(|cause| StartError::Log {
                    path: log_path.display().to_string(),
                    cause,
                })?;
            tracing::warn!(
                id = format_args!("{:x}", config.id),
                index = at.index,
                term = at.leader_id.term,
                "--force-new-cluster: this member is now the only member of its cluster; \
                 every other member was removed"
            );
        }
        let store = Store::open(backend)?;
        let waiters = Registry::new("proposals");
        let snap_dir = dir.join("snapshots");
        let lessor = Arc::new(Lessor::default());
        let alarms = Arc::new(Alarms::default());
        let auth = Arc::new(Auth::default());
        let removal = Removal::new(store.compaction_progress().done);
        let snapshot_due = crate::snapshot_due::SnapshotDue::new(config.snapshot_count);
        let sm = StateMachine::open(
            store.clone(),
            crate::state_machine::Proposer {
                node_id: config.id,
                incarnation,
                waiters: waiters.clone(),
                alarms: Arc::clone(&alarms),
                auth: Arc::clone(&auth),
            },
            snap_dir.clone(),
            Arc::clone(&lessor),
            config.election_timeout,
            Arc::clone(&removal),
        )
        .map_err(|cause| StartError::Snapshots {
            path: snap_dir.display().to_string(),
            cause,
        })?
        .hold_log_purges(log.floor());
        // A persistent engine's snapshot is a flush, so it can come as often as etcd's; one
        // that starts empty writes its whole store out for each, so it keeps openraft's count
        // of entries, which batching makes rarer.
        let sm = if store.backend().persistent() {
            sm.count_requests(Arc::clone(&snapshot_due))
        } else {
            sm
        };
        let applied_index = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let sm = sm.publish_applied(Arc::clone(&applied_index));
        let flushed = log.flushed();
        let space = log.space();
        let log_end = log.clone();
        let peers = Peers::new(config.budgets, config.peer_source_addr)
            .with_identity(config.id, config.peer_tls.clone());
        let network = PeerNetwork::new(peers.clone());
        let raft = Raft::new(MemberId(config.id), raft_config, network, log, sm)
            .await
            .map_err(|e| StartError::Raft(Box::new(e)))?;
        let initialized = raft
            .is_initialized()
            .await
            .map_err(|e| StartError::Raft(Box::new(e)))?;
        if !initialized && crate::marker::initialised(dir)? {
            return Err(crate::marker::missing(
                dir,
                &format!("{} holds no vote or membership", log_path.display()),
            ));
        }
        if initialized {
            crate::marker::write(dir, config.id, cluster_id)?;
        } else if config.join_existing {
            // The marker is written once the leader has given this member its membership.
            tokio::spawn(mark_when_joined(
                raft.clone(),
                dir.clone(),
                config.id,
                cluster_id,
            ));
        }
        if !initialized && config.join_existing {
            tracing::info!(
                id = format_args!("{:x}", config.id),
                "joining an existing cluster: waiting for its leader to reach this member"
            );
        } else if !initialized {
            tracing::info!(
                id = format_args!("{:x}", config.id),
                members = config.initial_members.len(),
                "bootstrapping a new cluster"
            );
            raft.initialize(
                config
                    .initial_members
                    .iter()
                    .map(|(id, member)| (MemberId(*id), member.clone()))
                    .collect::<std::collections::BTreeMap<_, _>>(),
            )
            .await
            .map_err(|e| StartError::Raft(Box::new(e)))?;
            // Marked after the bootstrap: had its entry been lost with the marker kept, the
            // member would refuse to start rather than bootstrap again.
            crate::marker::write(dir, config.id, cluster_id)?;
        }
        let max_in_flight = config.max_in_flight.max(1);
        let (queue, queued) = mpsc::channel(max_in_flight);
        let stop = CancellationToken::new();
        let pause = crate::transfer::Pause::default();
        tokio::spawn(
            Batcher {
                origin: config.id,
                incarnation,
                raft: raft.clone(),
                peers: peers.clone(),
                queue: queued,
                waiters: waiters.clone(),
                flushed,
                flush_wait: config.budgets.get(Layer::Commit),
                stop: stop.clone(),
                pause: pause.clone(),
                space,
                quorum_wait: config.election_timeout,
            }
            .run(),
        );
        let (reads, read_queue) = ReadRounds::new(config.budgets);
        let leadership = Leadership::follow(raft.metrics(), stop.clone());
        let min_lease_ttl =
            i64::try_from((config.election_timeout.as_millis() * 3).div_ceil(2 * 1000))
                .unwrap_or(i64::MAX)
                .max(1);
        let node = Self {
            inner: Arc::new(Inner {
                id: config.id,
                raft,
                store,
                waiters,
                budgets: config.budgets,
                room: Semaphore::new(max_in_flight),
                queue,
                stop,
                lessor,
                min_lease_ttl,
                peers: peers.clone(),
                cluster_token: config.cluster_token.clone(),
                cluster_id,
                log_closer: std::sync::Mutex::new(Some(log_closer)),
                log: log_end,
                reads,
                limits: crate::validate::Limits {
                    max_request_bytes: config.max_request_bytes,
                    max_txn_ops: config.max_txn_ops,
                },
                removal: Arc::clone(&removal),
                applied_index,
                leadership,
                retry_after: config.heartbeat.max(Duration::from_millis(50)),
                election_timeout: config.election_timeout,
                strict_reconfig_check: config.strict_reconfig_check,
                alarms,
                auth,
                pending_voters: std::sync::Mutex::default(),
                changes: tokio::sync::Mutex::new(()),
                pause,
                leader_contact: std::sync::Mutex::new(std::time::Instant::now()),
                asked: crate::elections::Asked::default(),
                incoming_snapshot: crate::state_machine::incoming_snapshot_path(&snap_dir),
            }),
        };
        // Resumes whatever removal a crash interrupted, then follows every applied compaction.
        removal.wake();
        tokio::spawn(crate::compaction::run(
            node.inner.store.clone(),
            removal,
            node.inner.stop.clone(),
        ));
        tokio::spawn(crate::lease_loop::run(
            node.clone(),
            config.lease_revoke_rate,
            config.lease_checkpoint_interval,
            config.election_timeout,
        ));
        tokio::spawn(publish_attributes(node.clone(), config.member.clone()));
        tokio::spawn(crate::elections::run(
            node.clone(),
            config.heartbeat,
            config.pre_vote,
        ));
        tokio::spawn(crate::snapshot_due::run(node.clone(), snapshot_due));
        tokio::spawn(crate::read_rounds::run(
            node.clone(),
            read_queue,
            node.inner.stop.clone(),
        ));
        Ok(node)
    }

    /// Stops Raft, fails every waiting proposal, and makes the store durable.
    ///
    /// # Errors
    /// The store's flush failed.
    pub async fn shutdown(&self) -> Result<(), mvcc::Error> {
        self.inner.room.close();
        self.inner.stop.cancel();
        if let Err(e) = self.inner.raft.shutdown().await {
            tracing::warn!(cause = %e, "raft did not stop cleanly");
        }
        self.inner.waiters.fail_all();
        let closer = self.inner.log_closer.lock().ok().and_then(|mut c| c.take());
        if let Some(closer) = closer {
            let _ = tokio::task::spawn_blocking(move || closer.close()).await;
        }
        let store = self.inner.store.clone();
        tokio::task::spawn_blocking(move || store.backend().flush())
            .await
            .map_err(|e| {
                mvcc::Error::Backend(mvcc::BackendError::Io {
                    op: "flush",
                    table: None,
                    cause: e.to_string(),
                })
            })??;
        Ok(())
    }
}

/// Once a leader is known, makes sure the membership carries this member's name and client
/// URLs (a member added by `member add` is known by its peer URLs only until it starts).
async fn publish_attributes<B: Backend>(node: Node<B>, me: Member) {
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let stop = node.stopping().clone();
    let mut metrics = node.raft_metrics();
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = tick.tick() => {}
            changed = metrics.changed() => {
                if changed.is_err() {
                    return;
                }
            }
        }
        if node.status().leader.is_none() {
            continue;
        }
        let known = node
            .status()
            .members
            .into_iter()
            .find(|(id, _, _)| *id == node.id())
            .map(|(_, m, _)| m);
        let Some(known) = known else { continue };
        if known.name == me.name && known.client_urls == me.client_urls {
            return;
        }
        let change = Change::Publish {
            id: node.id(),
            name: me.name.clone(),
            client_urls: me.client_urls.clone(),
        };
        if let Err(e) = node
            .change_membership(change, Deadline::after(Duration::from_secs(5)))
            .await
        {
            tracing::debug!(cause = %e, "publishing this member's attributes failed; retrying");
        }
    }
}

/// Writes the member marker once a joining member holds a membership from the leader (its
/// log then has state to lose). Ends with Raft.
async fn mark_when_joined<B: Backend>(raft: Raft<B>, dir: PathBuf, id: u64, cluster_id: u64) {
    let mut metrics = raft.metrics();
    loop {
        if metrics
            .borrow_watched()
            .membership_config
            .log_id()
            .is_some()
        {
            if let Err(e) = crate::marker::write(&dir, id, cluster_id) {
                tracing::error!(cause = %e, "writing the member marker failed");
            }
            return;
        }
        if metrics.changed().await.is_err() {
            return;
        }
    }
}
