//! A running member: Raft plus the store, with bounded proposals and linearizable reads.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use deadline::{Budgets, Deadline, Layer, Registry, SendError, WaitError};
use mvcc::{Backend, Store};
use openraft::error::{CheckIsLeaderError, RaftError};
use openraft::{Config, SnapshotPolicy};
use tokio::sync::{mpsc, Semaphore};
use tokio_util::sync::CancellationToken;

use crate::alarms::Alarms;
use crate::auth::Auth;
use crate::batcher::{Answer, Batcher, Queued};
use crate::compaction::Removal;
use crate::error::{ProposeError, ReadError, StartError};
use crate::leader::Leadership;
use crate::lessor::Lessor;
use crate::log_store::{LogCloser, LogStore};
use crate::membership::{Change, View};
use crate::network::{ForwardReply, Forwarded, PeerNetwork, Peers, Refusal, Rpc};
use crate::read_rounds::ReadRounds;
use crate::state_machine::StateMachine;
use crate::transfer::TransferError;
use crate::types::typ::Raft;
use crate::types::{Member, Tagged};

/// How to run a member.
#[derive(Clone, Debug)]
pub struct NodeConfig {
    /// This member's id (etcd's member ID).
    pub id: u64,
    /// This member's name and URLs.
    pub member: Member,
    /// Where the Raft log and snapshots live.
    pub data_dir: PathBuf,
    /// The members to bootstrap a new cluster with (this one alone for a single member).
    pub initial_members: BTreeMap<u64, Member>,
    /// Leader heartbeat period.
    pub heartbeat: Duration,
    /// Election timeout (E): a follower refuses votes for E after hearing from its leader, and
    /// campaigns at a random time between E and 2 E after it last did (`crate::elections`).
    pub election_timeout: Duration,
    /// Entries between snapshots.
    pub snapshot_count: u64,
    /// Per-layer wait budgets.
    pub budgets: Budgets,
    /// Proposals allowed in flight at once; more wait (within the propose budget) for room.
    pub max_in_flight: usize,
    /// Expired leases the leader revokes per second at most.
    pub lease_revoke_rate: u32,
    /// How often the leader records leases' remaining TTLs, so a restart does not renew them.
    pub lease_checkpoint_interval: Duration,
    /// The cluster token (`--initial-cluster-token`): member ids are derived with it.
    pub cluster_token: String,
    /// Join a running cluster (`--initial-cluster-state existing`): wait to be contacted
    /// instead of bootstrapping `initial_members`.
    pub join_existing: bool,
    /// TLS for `https://` peer URLs: this member's certificate and the peer CA, or
    /// `--peer-auto-tls`'s unverified encryption.
    pub peer_tls: Option<crate::PeerTls>,
    /// The local address peer connections are made from (the system's choice if none).
    pub peer_source_addr: Option<std::net::IpAddr>,
    /// `--max-request-bytes`: key and value bytes one command may carry, checked again on the
    /// leader for forwarded commands.
    pub max_request_bytes: usize,
    /// `--max-txn-ops`, checked again on the leader for forwarded commands.
    pub max_txn_ops: usize,
    /// `--strict-reconfig-check`: refuse membership changes that leave too few started
    /// voters for a quorum, as etcd does.
    pub strict_reconfig_check: bool,
    /// Where the Raft log lives (etcd's `--wal-dir`); `None`: in `data_dir`.
    pub log_dir: Option<PathBuf>,
    /// etcd's `--force-new-cluster`: an initialised member restarts as the only member of its
    /// cluster, keeping its data (the other members are removed through its log).
    pub force_new_cluster: bool,
    /// etcd's `--pre-vote`: campaign only after a majority of voters answer that they would
    /// vote (they heard from no leader for an election timeout), so a member cut off from the
    /// others does not depose the leader when it returns (`prevote`).
    pub pre_vote: bool,
}

impl NodeConfig {
    /// A single-member configuration with etcd's defaults.
    pub fn single(id: u64, member: Member, data_dir: PathBuf) -> Self {
        Self {
            id,
            initial_members: BTreeMap::from([(id, member.clone())]),
            member,
            data_dir,
            heartbeat: Duration::from_millis(100),
            election_timeout: Duration::from_millis(1000),
            snapshot_count: 100_000,
            budgets: Budgets::default(),
            max_in_flight: 10_000,
            lease_revoke_rate: 5_000,
            lease_checkpoint_interval: Duration::from_secs(300),
            cluster_token: "etcd-cluster".to_string(),
            join_existing: false,
            peer_tls: None,
            peer_source_addr: None,
            max_request_bytes: 1536 * 1024,
            max_txn_ops: 128,
            strict_reconfig_check: true,
            log_dir: None,
            force_new_cluster: false,
            pre_vote: false,
        }
    }

    fn raft_config(&self) -> Result<Config, StartError> {
        let millis = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        let config = Config {
            cluster_name: "metastore".to_string(),
            heartbeat_interval: millis(self.heartbeat),
            // `election_timeout_max` is openraft's leader lease: a voter refuses candidates for
            // that long after hearing its leader, as etcd's check-quorum lease does for one
            // election timeout. When to campaign is `crate::elections`' (etcd's [E, 2E)); only
            // openraft's validation reads `min` now (it must exceed the heartbeat: E >= 5
            // heartbeats).
            election_timeout_min: millis(self.election_timeout) / 2,
            election_timeout_max: millis(self.election_timeout),
            snapshot_policy: SnapshotPolicy::LogsSinceLast(self.snapshot_count.max(1)),
            max_in_snapshot_log_to_keep: 5_000.min(self.snapshot_count),
            // Entries are batches of up to a few MiB: keep one append message bounded.
            max_payload_entries: 32,
            // `crate::elections` decides when to campaign (openraft 0.9's timer waits its lease
            // plus a random timeout: 1.5E at least).
            enable_elect: false,
            ..Default::default()
        };
        config
            .validate()
            .map_err(|e| StartError::Config(e.to_string()))
    }
}

/// What a member reports about itself.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeStatus {
    /// This member's id.
    pub id: u64,
    /// The leader this member knows of.
    pub leader: Option<u64>,
    /// The current Raft term.
    pub term: u64,
    /// Index of the last log entry.
    pub last_log_index: u64,
    /// Index of the last applied entry.
    pub applied_index: u64,
    /// The members of the current configuration, with whether each is a voter.
    pub members: Vec<(u64, Member, bool)>,
}

/// A running member. Cheap to clone; clones share the member.
pub struct Node<B> {
    inner: Arc<Inner<B>>,
}

impl<B> Clone for Node<B> {
    fn clone(&self) -> Self {
        Self {
            inner: Arc::clone(&self.inner),
        }
    }
}

/// How many entries a transferee may lag before the leader pauses proposals to let it catch
/// up the rest (a few batches under load).
const CATCH_UP_SLACK: u64 = 64;

struct Inner<B> {
    id: u64,
    raft: Raft,
    store: Store<B>,
    waiters: Registry<Answer>,
    budgets: Budgets,
    room: Semaphore,
    /// Commands waiting for the batcher to put them into an entry.
    queue: mpsc::Sender<Queued>,
    /// Stops the batcher and the lease expiry task.
    stop: CancellationToken,
    lessor: Arc<Lessor>,
    /// etcd's minimum lease TTL: 1.5 election timeouts, rounded up to whole seconds.
    min_lease_ttl: i64,
    peers: Peers,
    cluster_token: String,
    /// The cluster id: the marker's, the one the cluster gave a joining member, or derived
    /// from the cluster token at a first start.
    cluster_id: u64,
    log_closer: std::sync::Mutex<Option<LogCloser>>,
    /// A handle on the log Raft writes, to learn where it ends ([`Node::transfer_leadership`]).
    log: LogStore,
    /// Leadership confirmations shared by concurrent linearizable reads.
    reads: ReadRounds,
    /// What one command may carry, for commands proposed here or forwarded here.
    limits: crate::validate::Limits,
    /// Physical compaction's progress on this member.
    removal: Arc<Removal>,
    /// Who leads: requests that find no leader wait on it.
    leadership: Leadership,
    /// How long after a leader could not be reached it is tried again, if no other is known.
    retry_after: Duration,
    /// The election timeout, for watch streams that require a leader.
    election_timeout: Duration,
    /// `--strict-reconfig-check`.
    strict_reconfig_check: bool,
    /// The alarms as this member last applied them.
    alarms: Arc<Alarms>,
    /// The auth state as this member last applied it, and its tokens.
    auth: Arc<Auth>,
    /// Members added as voters that this leader promotes once they catch up
    /// ([`crate::membership::promote_when_caught_up`]).
    pending_voters: std::sync::Mutex<BTreeSet<u64>>,
    /// Set while this leader hands leadership over ([`crate::transfer`]).
    pause: crate::transfer::Pause,
    /// When a leader last reached this member (its start, before any did), for pre-vote.
    leader_contact: std::sync::Mutex<std::time::Instant>,
    /// The highest vote a candidate asked this member for (see [`crate::elections`]).
    asked: crate::elections::Asked,
}

impl<B: Backend> Node<B> {
    /// Opens the log and the store in `config.data_dir`, starts Raft, and bootstraps a new
    /// cluster from `config.initial_members` if this member has never been initialized.
    ///
    /// # Errors
    /// [`StartError`] when the log, store or snapshots cannot be opened, or Raft refuses.
    pub async fn start(mut config: NodeConfig, backend: B) -> Result<Self, StartError> {
        config
            .budgets
            .validate()
            .map_err(|e| StartError::Config(e.to_string()))?;
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
        mvcc::durable::create_dir_all_synced(dir)
            .map_err(|e| StartError::Config(format!("{}: {e}", dir.display())))?;
        let log_dir = config.log_dir.clone().unwrap_or_else(|| dir.clone());
        mvcc::durable::create_dir_all_synced(&log_dir)
            .map_err(|e| StartError::Config(format!("{}: {e}", log_dir.display())))?;
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
        let flushed = log.flushed();
        let space = log.space();
        let log_end = log.clone();
        let peers = Peers::new(config.budgets, config.peer_source_addr)
            .with_identity(config.id, config.peer_tls.clone());
        let network = PeerNetwork::new(peers.clone());
        let raft = Raft::new(config.id, raft_config, network, log, sm)
            .await
            .map_err(|e| StartError::Raft(e.to_string()))?;
        let initialized = raft
            .is_initialized()
            .await
            .map_err(|e| StartError::Raft(e.to_string()))?;
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
            raft.initialize(config.initial_members.clone())
                .await
                .map_err(|e| StartError::Raft(e.to_string()))?;
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
                leadership,
                retry_after: config.heartbeat.max(Duration::from_millis(50)),
                election_timeout: config.election_timeout,
                strict_reconfig_check: config.strict_reconfig_check,
                alarms,
                auth,
                pending_voters: std::sync::Mutex::default(),
                pause,
                leader_contact: std::sync::Mutex::new(std::time::Instant::now()),
                asked: crate::elections::Asked::default(),
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
        tokio::spawn(crate::read_rounds::run(
            node.clone(),
            read_queue,
            node.inner.stop.clone(),
        ));
        Ok(node)
    }

    /// The local store, for serializable reads.
    pub fn store(&self) -> &Store<B> {
        &self.inner.store
    }

    /// The cluster token member ids are derived with.
    pub fn cluster_token(&self) -> &str {
        &self.inner.cluster_token
    }

    /// Notes that the current leader reached this member (pre-vote's "heard from a leader").
    pub(crate) fn note_leader_contact(&self) {
        *self
            .inner
            .leader_contact
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = std::time::Instant::now();
    }

    /// The highest vote a candidate asked this member for.
    pub(crate) fn asked(&self) -> &crate::elections::Asked {
        &self.inner.asked
    }

    /// How long no leader has reached this member.
    pub(crate) fn quiet_for(&self) -> Duration {
        self.inner
            .leader_contact
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .elapsed()
    }

    /// The election timeout.
    pub(crate) fn election_timeout(&self) -> Duration {
        self.inner.election_timeout
    }

    /// Cancelled when the node stops.
    pub(crate) fn stop_token(&self) -> CancellationToken {
        self.inner.stop.clone()
    }

    /// The cluster id this member serves under (etcd's `cluster_id` in every header).
    pub fn cluster_id(&self) -> u64 {
        self.inner.cluster_id
    }

    /// This member's id.
    pub fn id(&self) -> u64 {
        self.inner.id
    }

    /// How many proposals wait for their apply now.
    pub fn pending(&self) -> usize {
        self.inner.waiters.len()
    }

    /// Replicates `command`, waits until this member applied it, and returns the store's
    /// revision after it with its answer.
    ///
    /// Entering Raft's queue is bounded by the `propose` budget, commit and apply by the
    /// `commit` budget, both capped by `deadline`. A caller that times out or goes away leaves
    /// no waiter behind (the entry itself may still commit and apply, as in etcd).
    ///
    /// # Errors
    /// [`ProposeError`]: the command's own refusal, a timeout, no leader, or a stopped node.
    pub async fn propose(
        &self,
        command: mvcc::Command,
        deadline: Deadline,
    ) -> Result<(i64, mvcc::Response), ProposeError> {
        crate::validate::check(&command, self.inner.limits)?;
        // Waits for a leader first; tries again when it was refused before anything was
        // appended (no leader after all, another leads, the leader could not be reached).
        let mut failed = None;
        let answer = loop {
            let leader = match self.await_leader(deadline, failed).await {
                Ok(leader) => leader,
                Err(e) => break Err(ProposeError::from(e)),
            };
            match self.propose_once(command.clone(), deadline).await {
                Err(ProposeError::NoLeader | ProposeError::NotLeader { .. }) => {
                    failed = Some(leader);
                }
                other => break other,
            }
        };
        // etcd counts proposals that never applied (timed out, no leader, stopped), not the
        // ones the state machine refused.
        if matches!(&answer, Err(e) if !matches!(e, ProposeError::Command(_))) {
            metrics::counter!(crate::metrics::PROPOSALS_FAILED).increment(1);
        }
        answer
    }

    /// A leader known now, or the first one known within `deadline` (capped by the
    /// `leader-wait` budget); after `failed` could not take a request, a different one or
    /// `failed` again a little later.
    async fn await_leader(
        &self,
        deadline: Deadline,
        failed: Option<u64>,
    ) -> Result<u64, ReadError> {
        let inner = &*self.inner;
        inner
            .leadership
            .wait(&inner.budgets, deadline, failed, inner.retry_after)
            .await
    }

    /// Whether this member knows a leader now.
    pub fn has_leader(&self) -> bool {
        self.inner.leadership.now().leader.is_some()
    }

    /// Resolves once this member has had no leader for `elections` election timeouts in a row
    /// (etcd cancels streams that require a leader then).
    pub async fn leaderless_for(&self, elections: u32) {
        let period = self.inner.election_timeout.saturating_mul(elections);
        self.inner.leadership.leaderless_for(period).await;
    }

    async fn propose_once(
        &self,
        command: mvcc::Command,
        deadline: Deadline,
    ) -> Result<(i64, mvcc::Response), ProposeError> {
        let inner = &*self.inner;
        let budgets = &inner.budgets;
        let _room = budgets
            .run(Layer::Propose, deadline, inner.room.acquire())
            .await?
            .map_err(|_| ProposeError::Stopped)?;
        let pending = inner.waiters.register();
        let queued = Queued::now(Tagged {
            id: pending.id(),
            command,
        });
        let queued_at = queued.at;
        match deadline::send(
            Layer::Propose,
            budgets.deadline_for(Layer::Propose, deadline),
            &inner.queue,
            queued,
        )
        .await
        {
            Ok(()) => {}
            Err(SendError::Expired { expired, .. }) => return Err(ProposeError::Timeout(expired)),
            Err(_) => return Err(ProposeError::Stopped),
        }
        let answer = pending
            .wait(Layer::Commit, budgets.deadline_for(Layer::Commit, deadline))
            .await
            .map_err(wait_error)?;
        crate::stages::record("node", queued_at.elapsed(), 1);
        let applied = answer?;
        match applied.result {
            Ok(Some(response)) => Ok((applied.revision, response)),
            Ok(None) => Err(ProposeError::Command(mvcc::Refusal::Other(
                "the entry carried no command".to_string(),
            ))),
            Err(refused) => Err(ProposeError::Command(refused)),
        }
    }

    /// Waits until this member has physically removed the versions that compaction at
    /// `revision` made unreachable (etcd's `physical` compaction); removal itself runs in the
    /// background on every member once the compaction is applied.
    ///
    /// # Errors
    /// [`ReadError::Timeout`] at `deadline`; [`ReadError::Stopped`] if removal stopped.
    pub async fn wait_compaction(
        &self,
        revision: i64,
        deadline: Deadline,
    ) -> Result<(), ReadError> {
        self.inner.removal.wait(revision, deadline).await
    }

    /// Waits until this member has applied everything committed before the call, as confirmed
    /// by a quorum (Raft's read index), so a local read after it is linearizable. Concurrent
    /// reads share one confirmation (`read_rounds`).
    ///
    /// # Errors
    /// [`ReadError`]: the `read-index` budget ran out, no leader, or a stopped node.
    pub async fn read_index(&self, deadline: Deadline) -> Result<(), ReadError> {
        // The planted bug the chaos checker must catch (never in a normal build).
        if cfg!(feature = "stale-follower-reads")
            && self
                .leader()
                .is_ok_and(|(leader, _)| leader != self.inner.id)
        {
            return Ok(());
        }
        let mut failed = None;
        loop {
            let leader = self.await_leader(deadline, failed).await?;
            match self.inner.reads.read_index(deadline).await {
                Err(ReadError::NoLeader | ReadError::NotLeader { .. }) => failed = Some(leader),
                other => return other.map(drop),
            }
        }
    }

    /// How many read-index rounds this member has run; each served every linearizable read
    /// queued when it began.
    pub fn read_rounds(&self) -> u64 {
        self.inner
            .reads
            .rounds
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The read rounds, for their task.
    pub(crate) fn read_rounds_handle(&self) -> &ReadRounds {
        &self.inner.reads
    }

    /// One read index for a round of reads: confirmed by this member as the leader, or asked
    /// of the leader; returned once this member has applied that far. Bounded by the
    /// `read-index` budget.
    pub(crate) async fn confirm_read(&self) -> Result<u64, ReadError> {
        let deadline = self
            .inner
            .budgets
            .deadline_for(Layer::ReadIndex, Deadline::none());
        let index = match self.leader()? {
            (leader, _) if leader == self.inner.id => {
                // openraft waits for the local apply to reach the read index too.
                return self.read_index_as_leader(deadline).await;
            }
            (leader, member) => {
                match self
                    .forward(leader, &member, &Forwarded::ReadIndex, deadline)
                    .await?
                {
                    ForwardReply::Index(index) => index,
                    other => return Err(read_refusal(other)),
                }
            }
        };
        let mut metrics = self.inner.raft.metrics();
        let applied = async {
            loop {
                let at = metrics.borrow().last_applied.map_or(0, |l| l.index);
                if at >= index {
                    return true;
                }
                if metrics.changed().await.is_err() {
                    return false;
                }
            }
        };
        match deadline::within(Layer::ReadIndex, deadline, applied).await? {
            true => Ok(index),
            false => Err(ReadError::Stopped),
        }
    }

    /// The leader's half of a read index: confirm leadership with a quorum, wait for the local
    /// apply, answer the index.
    async fn read_index_as_leader(&self, deadline: Deadline) -> Result<u64, ReadError> {
        let answer = deadline::within(
            Layer::ReadIndex,
            deadline,
            self.inner.raft.ensure_linearizable(),
        )
        .await?;
        match answer {
            Ok(read) => Ok(read.map_or(0, |l| l.index)),
            Err(RaftError::APIError(CheckIsLeaderError::ForwardToLeader(f))) => Err(f
                .leader_id
                .map_or(ReadError::NoLeader, |leader| ReadError::NotLeader {
                    leader,
                })),
            Err(RaftError::APIError(CheckIsLeaderError::QuorumNotEnough(_))) => {
                Err(ReadError::NoLeader)
            }
            Err(RaftError::Fatal(_)) => Err(ReadError::Stopped),
        }
    }

    /// The leader this member knows of, with its URLs.
    ///
    /// # Errors
    /// [`ReadError::NoLeader`] when none is known.
    fn leader(&self) -> Result<(u64, Member), ReadError> {
        let metrics = self.inner.raft.metrics();
        let m = metrics.borrow();
        let leader = m.current_leader.ok_or(ReadError::NoLeader)?;
        let member = m
            .membership_config
            .nodes()
            .find(|(id, _)| **id == leader)
            .map(|(_, member)| member.clone())
            .ok_or(ReadError::NoLeader)?;
        Ok((leader, member))
    }

    /// Sends `request` to the leader, within `deadline` and the peer-rpc budget.
    async fn forward(
        &self,
        leader: u64,
        member: &Member,
        request: &Forwarded,
        deadline: Deadline,
    ) -> Result<ForwardReply, ReadError> {
        let limit = deadline.remaining().unwrap_or(Duration::MAX);
        if limit.is_zero() {
            return Err(ReadError::Timeout(deadline::Expired::reported(
                Layer::PeerRpc,
                Duration::ZERO,
            )));
        }
        self.inner
            .peers
            .call(leader, member, Rpc::Forward, request, Some(limit))
            .await
            .map_err(|e| {
                tracing::debug!(leader = format_args!("{leader:x}"), cause = %e, "forwarding to the leader failed");
                match e {
                    crate::network::CallError::Timeout => ReadError::Timeout(deadline::Expired::reported(Layer::PeerRpc, limit)),
                    _ => ReadError::NoLeader,
                }
            })
    }

    /// Serves a request a follower forwarded to this member, as the leader.
    pub(crate) async fn serve_forwarded(&self, request: Forwarded) -> ForwardReply {
        let budgets = &self.inner.budgets;
        match request {
            Forwarded::Propose(proposal) => {
                // Nothing is appended while leadership is handed over; the follower tries
                // again.
                let Some(pass) = self.inner.pause.enter() else {
                    return ForwardReply::Refused(Refusal::NotLeader(None));
                };
                // kvapi checked the follower's requests; nothing unchecked enters the log.
                let limits = self.inner.limits;
                let bad: Vec<(u64, mvcc::Refusal)> = proposal
                    .commands
                    .iter()
                    .filter_map(|t| {
                        crate::validate::check(&t.command, limits)
                            .err()
                            .map(|why| (t.id, why))
                    })
                    .collect();
                if !bad.is_empty() {
                    tracing::warn!(
                        origin = format_args!("{:x}", proposal.origin),
                        refused = ?bad,
                        "refused a forwarded batch holding invalid commands"
                    );
                    return ForwardReply::Refused(Refusal::Invalid(bad));
                }
                let write = async {
                    let responder = self.inner.raft.client_write_ff(proposal).await;
                    drop(pass);
                    Ok::<_, openraft::error::Fatal<u64>>(responder?.await)
                };
                match budgets.run(Layer::Commit, Deadline::none(), write).await {
                    Ok(Ok(Ok(Ok(_)))) => ForwardReply::Done,
                    Ok(Ok(Ok(Err(openraft::error::ClientWriteError::ForwardToLeader(f))))) => {
                        ForwardReply::Refused(Refusal::NotLeader(f.leader_id))
                    }
                    Ok(Ok(Ok(Err(e)))) => ForwardReply::Refused(Refusal::Other(e.to_string())),
                    // Raft stopped before taking it: nothing was appended.
                    Ok(Err(_)) => ForwardReply::Refused(Refusal::Stopped),
                    // Taken, then its answer was dropped: it may still commit.
                    Ok(Ok(Err(_))) | Err(_) => ForwardReply::Refused(Refusal::Timeout),
                }
            }
            // In the leader's rounds, shared with its own reads and other followers' rounds.
            Forwarded::ReadIndex => match self.inner.reads.read_index(Deadline::none()).await {
                Ok(index) => ForwardReply::Index(index),
                Err(e) => ForwardReply::Refused(e.into()),
            },
            Forwarded::LeaseRenew(id) => match self.lease_renew_local(id) {
                Ok(ttl) => ForwardReply::Ttl(ttl),
                Err(e) => ForwardReply::Refused(e.into()),
            },
            // The leader's lessor answers once the leader has applied everything committed, so
            // a lease the asking follower already sees is known here too.
            Forwarded::LeaseRemaining(id) => {
                match self.inner.reads.read_index(Deadline::none()).await {
                    Ok(_) => ForwardReply::Remaining(
                        self.inner
                            .lessor
                            .remaining(id)
                            .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
                    ),
                    Err(e) => ForwardReply::Refused(e.into()),
                }
            }
            Forwarded::Membership(change) => {
                match self.change_membership_local(change, Deadline::none()).await {
                    Ok(members) => ForwardReply::Members(members),
                    Err(r) => ForwardReply::Refused(r),
                }
            }
            Forwarded::HashKv(rev) => self.serve_hash(rev).await,
            Forwarded::Campaign => match self.inner.raft.trigger().elect().await {
                Ok(()) => ForwardReply::Done,
                Err(_) => ForwardReply::Refused(Refusal::Stopped),
            },
        }
    }

    /// Hands leadership to `target`, a voting member, as etcd's MoveLeader does: this member
    /// must lead; it returns once `target` leads (at once when this member is `target`).
    /// Proposals pause meanwhile and are retried with the new leader (the `transfer` module).
    ///
    /// # Errors
    /// [`TransferError`]: not the leader, a target that is not a voter, or a target that did
    /// not catch up and win within the election timeouts (or `deadline`).
    pub async fn transfer_leadership(
        &self,
        target: u64,
        deadline: Deadline,
    ) -> Result<(), TransferError> {
        let inner = &*self.inner;
        let (leading, _) = self.leading();
        if !leading {
            return Err(TransferError::NotLeader);
        }
        let member = {
            let metrics = inner.raft.metrics();
            let m = metrics.borrow();
            let membership = m.membership_config.membership();
            if !membership.voter_ids().any(|v| v == target) {
                return Err(TransferError::BadTransferee);
            }
            membership.get_node(&target).cloned()
        };
        if target == inner.id {
            return Ok(());
        }
        let member = member.ok_or(TransferError::BadTransferee)?;
        let started = std::time::Instant::now();
        // A leader refuses votes for a lease (the longest election timeout) after its election;
        // writes go on meanwhile.
        let lease_ends =
            inner.leadership.now().since + inner.election_timeout * 2 + Duration::from_millis(20);
        let wait = lease_ends.saturating_duration_since(tokio::time::Instant::now());
        if !wait.is_zero() {
            let bound = deadline.earliest(Deadline::after(wait));
            if deadline::within(Layer::Api, bound, std::future::pending::<()>())
                .await
                .is_err()
                && deadline.is_expired()
            {
                return Err(TransferError::Timeout);
            }
        }
        let me = inner.id;
        let matched_of = |m: &openraft::RaftMetrics<u64, Member>| {
            m.replication
                .as_ref()
                .and_then(|r| r.get(&target).cloned().flatten())
                .map(|l| l.index)
        };
        let leads = |m: &openraft::RaftMetrics<u64, Member>| m.current_leader == Some(me);
        let mut metrics = inner.raft.metrics();
        // As etcd, a target that lags is waited for until the deadline, with writes flowing;
        // only the last steps are taken with proposals paused, an election timeout at most.
        // After a failed attempt the target must make progress before the next one, so a
        // target that is down does not keep writes paused.
        let mut floor: Option<u64> = None;
        let _paused = loop {
            crate::transfer::until(&mut metrics, deadline, None, |m| {
                let matched = matched_of(m);
                let progressed = floor.is_none() || matched > floor;
                let near = matched.map(|i| i + CATCH_UP_SLACK) >= m.last_log_index;
                !leads(m) || (progressed && near)
            })
            .await?;
            // A second transfer while one runs is refused, as etcd's raft drops it.
            let paused = inner.pause.hold(deadline, inner.election_timeout).await?;
            // Every entry let in before the gate closed is in Raft's queue; a request behind
            // them in that queue returns once Raft has handed them all to the log.
            inner
                .raft
                .with_raft_state(|_| ())
                .await
                .map_err(|_| TransferError::Stopped)?;
            let last = inner.log.last_index().map_err(|e| {
                tracing::warn!(cause = %e, "reading the end of the log for a transfer");
                TransferError::Stopped
            })?;
            let exact =
                crate::transfer::until(&mut metrics, deadline, Some(inner.election_timeout), |m| {
                    !leads(m) || matched_of(m) >= last
                })
                .await;
            match exact {
                Ok(()) => {
                    if !leads(&inner.raft.metrics().borrow()) {
                        return Err(TransferError::NotLeader);
                    }
                    if self.ask_to_campaign(target, &member, deadline).await {
                        break paused;
                    }
                }
                Err(TransferError::Timeout) if !deadline.is_expired() => {}
                Err(e) => return Err(e),
            }
            floor = matched_of(&inner.raft.metrics().borrow());
        };
        crate::transfer::until(
            &mut metrics,
            deadline,
            Some(inner.election_timeout * 2),
            |m| m.current_leader == Some(target),
        )
        .await?;
        tracing::info!(
            target = format_args!("{target:x}"),
            took_ms = started.elapsed().as_millis() as u64,
            "leadership transferred"
        );
        Ok(())
    }

    /// Asks `target` to campaign now; whether it said it does.
    async fn ask_to_campaign(&self, target: u64, member: &Member, deadline: Deadline) -> bool {
        let half = self.inner.election_timeout / 2;
        let limit = deadline.remaining().unwrap_or(half).min(half);
        match self
            .inner
            .peers
            .call(
                target,
                member,
                Rpc::Forward,
                &Forwarded::Campaign,
                Some(limit),
            )
            .await
        {
            Ok(ForwardReply::Done) => true,
            Ok(other) => {
                tracing::warn!(target = format_args!("{target:x}"), answer = ?other, "the transferee did not campaign");
                false
            }
            Err(e) => {
                tracing::warn!(target = format_args!("{target:x}"), cause = %e, "the transferee could not be asked to campaign");
                false
            }
        }
    }

    /// etcd's minimum lease TTL in seconds: shorter grants get this one.
    pub fn min_lease_ttl(&self) -> i64 {
        self.inner.min_lease_ttl
    }

    /// Whether this member leads now, and the term.
    pub(crate) fn leading(&self) -> (bool, u64) {
        let metrics = self.inner.raft.metrics();
        let m = metrics.borrow();
        (m.current_leader == Some(self.inner.id), m.current_term)
    }

    pub(crate) fn peers(&self) -> &Peers {
        &self.inner.peers
    }

    pub(crate) fn raft(&self) -> &Raft {
        &self.inner.raft
    }

    pub(crate) fn raft_metrics(
        &self,
    ) -> tokio::sync::watch::Receiver<openraft::RaftMetrics<u64, Member>> {
        self.inner.raft.metrics()
    }

    pub(crate) fn budgets(&self) -> &Budgets {
        &self.inner.budgets
    }

    pub(crate) fn lessor(&self) -> &Lessor {
        &self.inner.lessor
    }

    pub(crate) fn stopping(&self) -> &CancellationToken {
        &self.inner.stop
    }

    /// A keep-alive: the lease runs for its TTL from now, as the leader sees it (a follower
    /// forwards it). Answers the TTL, or 0 for a lease that does not exist or has already
    /// expired (as etcd does).
    ///
    /// # Errors
    /// No leader, or the leader could not be reached within the deadline.
    pub async fn lease_renew(&self, id: i64, deadline: Deadline) -> Result<i64, ReadError> {
        let mut failed = None;
        loop {
            let leader = self.await_leader(deadline, failed).await?;
            match self.lease_renew_once(id, deadline).await {
                Err(ReadError::NoLeader | ReadError::NotLeader { .. }) => failed = Some(leader),
                other => return other,
            }
        }
    }

    async fn lease_renew_once(&self, id: i64, deadline: Deadline) -> Result<i64, ReadError> {
        let (leader, member) = self.leader()?;
        if leader == self.inner.id {
            return self.lease_renew_local(id);
        }
        match self
            .forward(leader, &member, &Forwarded::LeaseRenew(id), deadline)
            .await?
        {
            ForwardReply::Ttl(ttl) => Ok(ttl),
            other => Err(read_refusal(other)),
        }
    }

    fn lease_renew_local(&self, id: i64) -> Result<i64, ReadError> {
        let (leads, _) = self.leading();
        if !leads {
            return Err(self.leader().map_or(ReadError::NoLeader, |(leader, _)| {
                ReadError::NotLeader { leader }
            }));
        }
        let lessor = &self.inner.lessor;
        if lessor.remaining(id).is_none_or(|left| left.is_zero()) {
            return Ok(0);
        }
        Ok(lessor.renew(id).unwrap_or(0))
    }

    /// How long lease `id` has left, as the leader sees it (a follower asks the leader).
    ///
    /// # Errors
    /// No leader, or the leader could not be reached within the deadline.
    pub async fn lease_remaining(
        &self,
        id: i64,
        deadline: Deadline,
    ) -> Result<Option<Duration>, ReadError> {
        let mut failed = None;
        loop {
            let leader = self.await_leader(deadline, failed).await?;
            match self.lease_remaining_once(id, deadline).await {
                Err(ReadError::NoLeader | ReadError::NotLeader { .. }) => failed = Some(leader),
                other => return other,
            }
        }
    }

    async fn lease_remaining_once(
        &self,
        id: i64,
        deadline: Deadline,
    ) -> Result<Option<Duration>, ReadError> {
        let (leader, member) = self.leader()?;
        if leader == self.inner.id {
            return Ok(self.inner.lessor.remaining(id));
        }
        match self
            .forward(leader, &member, &Forwarded::LeaseRemaining(id), deadline)
            .await?
        {
            ForwardReply::Remaining(ms) => Ok(ms.map(Duration::from_millis)),
            other => Err(read_refusal(other)),
        }
    }

    /// Changes the membership on the leader (a follower forwards the change), and answers the
    /// new membership and the id concerned.
    ///
    /// # Errors
    /// etcd's refusals ([`crate::MembershipError`]), no leader, a timeout.
    pub async fn change_membership(
        &self,
        change: Change,
        deadline: Deadline,
    ) -> Result<Vec<(u64, Member, bool)>, crate::MembershipFailure> {
        self.await_leader(deadline, None)
            .await
            .map_err(crate::MembershipFailure::Read)?;
        let (leader, member) = self.leader().map_err(crate::MembershipFailure::Read)?;
        if leader == self.inner.id {
            return self
                .change_membership_local(change, deadline)
                .await
                .map_err(crate::MembershipFailure::from_refusal);
        }
        let limit = self.inner.budgets.deadline_for(Layer::Commit, deadline);
        match self
            .forward(leader, &member, &Forwarded::Membership(change), limit)
            .await
            .map_err(crate::MembershipFailure::Read)?
        {
            ForwardReply::Members(m) => Ok(m),
            ForwardReply::Refused(r) => Err(crate::MembershipFailure::from_refusal(r)),
            other => Err(crate::MembershipFailure::Read(read_refusal(other))),
        }
    }

    async fn change_membership_local(
        &self,
        change: Change,
        deadline: Deadline,
    ) -> Result<Vec<(u64, Member, bool)>, Refusal> {
        let limit = self.inner.budgets.deadline_for(Layer::Commit, deadline);
        loop {
            let mut metrics = self.inner.raft.metrics();
            let view = {
                let m = metrics.borrow_and_update();
                if m.current_leader != Some(self.inner.id) {
                    return Err(Refusal::NotLeader(m.current_leader));
                }
                let membership = m.membership_config.membership();
                let members: BTreeMap<u64, Member> =
                    membership.nodes().map(|(id, n)| (*id, n.clone())).collect();
                View {
                    pending: self.pending_voters(&members),
                    members,
                    voters: membership.voter_ids().collect(),
                    matched: m
                        .replication
                        .as_ref()
                        .map(|r| r.iter().map(|(id, l)| (*id, l.map(|l| l.index))).collect())
                        .unwrap_or_default(),
                    leader: self.inner.id,
                    last_index: m.last_log_index.unwrap_or(0),
                }
            };
            let (id, ask) = view
                .plan(
                    &change,
                    &self.inner.cluster_token,
                    self.inner.strict_reconfig_check,
                )
                .map_err(Refusal::Membership)?;
            let new_voter = matches!(change, Change::Add { learner: false, .. });
            let changed = deadline::within(
                Layer::Commit,
                limit,
                self.inner.raft.change_membership(ask, false),
            )
            .await
            .map_err(|_| Refusal::Timeout)?;
            match changed.map_err(crate::membership::refusal) {
                // Another change is being committed (a new member publishing its URLs, say):
                // this one waits for it, within its deadline, as later changes queue in etcd.
                Err(Refusal::Membership(crate::MembershipError::InProgress)) => {
                    let committed = async {
                        loop {
                            // At least one change first: no tight loop if openraft still
                            // refuses once the change it named has applied.
                            if metrics.changed().await.is_err() {
                                return;
                            }
                            {
                                let m = metrics.borrow_and_update();
                                if m.last_applied >= *m.membership_config.log_id() {
                                    return;
                                }
                            }
                        }
                    };
                    deadline::within(Layer::Commit, limit, committed)
                        .await
                        .map_err(|_| Refusal::Membership(crate::MembershipError::InProgress))?;
                }
                other => {
                    let written = other?;
                    if new_voter {
                        self.lock_pending().insert(id);
                        tokio::spawn(crate::membership::promote_when_caught_up(self.clone(), id));
                    }
                    // openraft's metrics may not show the new configuration yet (they follow
                    // the answer), and a list without the new member breaks etcdctl: answer
                    // from the configuration this change committed.
                    return Ok(match written.membership {
                        Some(membership) => self.listing(&membership),
                        None => self.status().members,
                    });
                }
            }
        }
    }

    fn lock_pending(&self) -> std::sync::MutexGuard<'_, BTreeSet<u64>> {
        // The set stays consistent whatever panicked while holding it.
        self.inner
            .pending_voters
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The voters still catching up that are still members (others are forgotten).
    pub(crate) fn pending_voters(&self, members: &BTreeMap<u64, Member>) -> BTreeSet<u64> {
        let mut pending = self.lock_pending();
        pending.retain(|id| members.contains_key(id));
        pending.clone()
    }

    /// Forgets a voter-to-be: promoted, removed, or no longer this member's to promote.
    pub(crate) fn forget_pending(&self, id: u64) {
        self.lock_pending().remove(&id);
    }

    /// The auth state as this member last applied it, with this member's simple tokens.
    pub fn auth(&self) -> &Auth {
        &self.inner.auth
    }

    /// Every raised alarm as this member last applied it, ordered by member then kind.
    pub fn alarms(&self) -> Vec<mvcc::AlarmMember> {
        self.inner.alarms.list()
    }

    /// Whether any member's alarm of `kind` ([`mvcc::alarm_kind`]) is raised, as last applied
    /// here.
    pub fn alarm_raised(&self, kind: i32) -> bool {
        self.inner.alarms.any(kind)
    }

    /// The current Raft term, cheaply, for response headers.
    pub fn term(&self) -> u64 {
        self.inner.raft.metrics().borrow().current_term
    }

    /// What this member knows about the cluster now.
    pub fn status(&self) -> NodeStatus {
        let metrics = self.inner.raft.metrics();
        let m = metrics.borrow();
        NodeStatus {
            id: self.inner.id,
            leader: m.current_leader,
            term: m.current_term,
            last_log_index: m.last_log_index.unwrap_or(0),
            applied_index: m.last_applied.map_or(0, |l| l.index),
            members: self.listing(m.membership_config.membership()),
        }
    }

    /// The members of `membership`, each with whether it votes (or will, once caught up:
    /// etcd lists an added voter as one from the start).
    fn listing(&self, membership: &openraft::Membership<u64, Member>) -> Vec<(u64, Member, bool)> {
        let mut voters: BTreeSet<u64> = membership.voter_ids().collect();
        voters.extend(self.lock_pending().iter().copied());
        membership
            .nodes()
            .map(|(id, member)| (*id, member.clone(), voters.contains(id)))
            .collect()
    }

    /// Waits (within `deadline`) until this member knows a leader; for start-up and tests.
    ///
    /// # Errors
    /// [`ReadError::Timeout`] when no leader appears in time.
    pub async fn wait_for_leader(&self, deadline: Deadline) -> Result<u64, ReadError> {
        let mut metrics = self.inner.raft.metrics();
        let found = deadline::within(Layer::Api, deadline, async {
            loop {
                if let Some(leader) = metrics.borrow().current_leader {
                    return Some(leader);
                }
                if metrics.changed().await.is_err() {
                    return None;
                }
            }
        })
        .await?;
        found.ok_or(ReadError::Stopped)
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

/// A forwarded request's unexpected or refused answer, as a read error.
/// A leader's reply that should have answered a read: its refusal, or (a reply of another
/// kind) no leader to ask.
fn read_refusal(reply: ForwardReply) -> ReadError {
    match reply {
        ForwardReply::Refused(refused) => refused.into(),
        ForwardReply::Done
        | ForwardReply::Index(_)
        | ForwardReply::Ttl(_)
        | ForwardReply::Remaining(_)
        | ForwardReply::Members(_)
        | ForwardReply::Hash(_) => ReadError::NoLeader,
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

fn wait_error(e: WaitError) -> ProposeError {
    match e {
        WaitError::Expired(expired) => ProposeError::Timeout(expired),
        _ => ProposeError::Stopped,
    }
}

/// Writes the member marker once a joining member holds a membership from the leader (its
/// log then has state to lose). Ends with Raft.
async fn mark_when_joined(raft: Raft, dir: PathBuf, id: u64, cluster_id: u64) {
    let mut metrics = raft.metrics();
    loop {
        if metrics.borrow().membership_config.log_id().is_some() {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn config(election_ms: u64, heartbeat_ms: u64) -> Config {
        let member = Member {
            name: "m".to_string(),
            peer_urls: vec!["http://127.0.0.1:1".to_string()],
            client_urls: vec!["http://127.0.0.1:2".to_string()],
        };
        let mut c = NodeConfig::single(1, member, PathBuf::from("unused"));
        c.election_timeout = Duration::from_millis(election_ms);
        c.heartbeat = Duration::from_millis(heartbeat_ms);
        c.raft_config().expect("a valid configuration")
    }

    /// A voter refuses candidates for one election timeout after hearing its leader (etcd's
    /// check-quorum lease; openraft's lease is `election_timeout_max`), and openraft's own
    /// timer, which could campaign no sooner than 1.5 E, is off: `crate::elections` campaigns
    /// in etcd's [E, 2E).
    #[test]
    fn voters_keep_etcds_lease_and_openrafts_own_timer_is_off() {
        for (election, heartbeat) in [(1000, 100), (500, 50), (5000, 1000)] {
            let c = config(election, heartbeat);
            assert_eq!(c.election_timeout_max, election, "the vote lease");
            assert!(
                !c.enable_elect,
                "openraft's timer campaigns 1.5E-2E after a heartbeat"
            );
            assert!(c.election_timeout_min > c.heartbeat_interval);
        }
    }
}
