//! The Raft state machine: committed entries applied to the mvcc store, and its snapshots.
//!
//! An engine that starts empty (engine-mem) keeps each snapshot as a file, which a restart
//! rebuilds the store from. A persistent engine is its own snapshot, as etcd's db is: building
//! one flushes the engine and records where it stands, and the bytes are written out only when
//! a follower needs them (`snapshot_data`), so the data dir holds no second copy of the store.

use std::collections::{BTreeSet, HashMap};
use std::io::{self, BufReader, BufWriter};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use deadline::Registry;
use futures::{Stream, TryStreamExt};
use mvcc::{alarm_kind, durable, AlarmMember, Backend, SnapshotInfo, SnapshotReader, Store};
use openraft::storage::{EntryResponder, RaftSnapshotBuilder, RaftStateMachine};
use serde::{Deserialize, Serialize};

use crate::alarms::Alarms;
use crate::auth::{Auth, AuthState};
use crate::batcher::Answer;
use crate::compaction::Removal;
use crate::floor::{Floor, FloorRaiser};
use crate::lessor::Lessor;
use crate::snapshot_data::SnapshotData;
use crate::snapshot_due::SnapshotDue;
use crate::types::typ::{Entry, EntryPayload, LogId, Snapshot, SnapshotMeta, StoredMembership};
use crate::types::{Applied, TypeConfig};
use mvcc::Refusal;

/// What the store records as its applied position: the last log id, the membership then, and
/// the raised alarms (written with every apply, so a restart and a snapshot carry them).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub(crate) struct Position {
    pub log_id: Option<LogId>,
    pub membership: StoredMembership,
    pub alarms: BTreeSet<AlarmMember>,
    pub auth: AuthState,
}

/// The position as stores written before auth recorded it.
#[derive(Deserialize)]
struct PositionWithoutAuth {
    log_id: Option<LogId>,
    membership: StoredMembership,
    alarms: BTreeSet<AlarmMember>,
}

/// The position as stores written before alarms recorded it.
#[derive(Deserialize)]
struct PositionWithoutAlarms {
    log_id: Option<LogId>,
    membership: StoredMembership,
}

impl Position {
    pub(crate) fn decode(raw: Option<&[u8]>) -> Result<Self, String> {
        let Some(raw) = raw else {
            return Ok(Self::default());
        };
        let e = match bincode::deserialize(raw) {
            Ok(position) => return Ok(position),
            Err(e) => e,
        };
        if let Ok(old) = bincode::deserialize::<PositionWithoutAuth>(raw) {
            return Ok(Self {
                log_id: old.log_id,
                membership: old.membership,
                alarms: old.alarms,
                auth: AuthState::default(),
            });
        }
        match bincode::deserialize::<PositionWithoutAlarms>(raw) {
            Ok(old) => Ok(Self {
                log_id: old.log_id,
                membership: old.membership,
                alarms: BTreeSet::new(),
                auth: AuthState::default(),
            }),
            Err(_) => Err(e.to_string()),
        }
    }
}

/// The auth state recorded in a store's applied position (what [`Store::applied`] or an
/// export's info gives): what a snapshot of that point carries.
///
/// # Errors
/// A position that does not decode.
pub fn applied_auth(applied: Option<&[u8]>) -> Result<AuthState, String> {
    Position::decode(applied).map(|p| p.auth)
}

/// Records `auth` as the auth state of a store no member has applied log entries to (one
/// restored from etcd's files): the member that first starts on it begins with these users,
/// roles and enabled flag.
///
/// # Errors
/// [`mvcc::Error::BadSnapshot`] when the store has applied entries already; store errors.
pub fn seed_auth<B: Backend>(store: &Store<B>, auth: AuthState) -> Result<(), mvcc::Error> {
    let bad = |what: String| mvcc::Error::BadSnapshot { what };
    let mut position = Position::decode(store.applied()?.as_deref()).map_err(bad)?;
    if position.log_id.is_some() {
        return Err(bad(
            "the store has applied log entries; auth is seeded only before".into(),
        ));
    }
    position.auth = auth;
    let raw = bincode::serialize(&position).map_err(|e| bad(e.to_string()))?;
    store.apply(&[], Some(&raw)).map(drop)
}

/// What raised alarms refuse `command` with, as etcd 3.4's appliers do: with a CORRUPT alarm
/// every write and compaction ("corrupt cluster"); with a NOSPACE alarm what can grow the store
/// (puts, txns with puts, lease grants).
fn refusal(command: &mvcc::Command, alarms: &BTreeSet<AlarmMember>) -> Option<Refusal> {
    fn ops_put(ops: &[mvcc::RequestOp]) -> bool {
        ops.iter().any(|op| match op {
            mvcc::RequestOp::Put(_) => true,
            mvcc::RequestOp::Txn(t) => txn_puts(t),
            _ => false,
        })
    }
    fn txn_puts(t: &mvcc::TxnRequest) -> bool {
        ops_put(&t.success) || ops_put(&t.failure)
    }
    let raised = |kind| alarms.iter().any(|a| a.alarm == kind);
    let (writes, grows) = match command {
        mvcc::Command::Put(_) | mvcc::Command::LeaseGrant(_) => (true, true),
        mvcc::Command::Txn(t) => (true, txn_puts(t)),
        mvcc::Command::DeleteRange(_)
        | mvcc::Command::Compact(_)
        | mvcc::Command::LeaseRevoke(_) => (true, false),
        _ => (false, false),
    };
    if writes && raised(alarm_kind::CORRUPT) {
        Some(Refusal::Corrupt)
    } else if grows && raised(alarm_kind::NOSPACE) {
        Some(Refusal::NoSpace)
    } else {
        None
    }
}

fn sm_err(verb: &str, e: impl ToString) -> io::Error {
    io::Error::other(format!(
        "cannot {verb} the state machine: {}",
        e.to_string()
    ))
}

fn snap_err(verb: &str, e: impl ToString) -> io::Error {
    io::Error::other(format!("cannot {verb} a snapshot: {}", e.to_string()))
}

/// Who this member is in this start, and the waiters its proposals name.
pub(crate) struct Proposer {
    /// The member's id.
    pub(crate) node_id: u64,
    /// Only entries this start of the member proposed name its waiters.
    pub(crate) incarnation: u64,
    /// This start's waiters, by the ids its proposals carry.
    pub(crate) waiters: Registry<Answer>,
    /// Where the applied alarms are published for the request path.
    pub(crate) alarms: Arc<Alarms>,
    /// Where the applied auth state is published, with this member's tokens.
    pub(crate) auth: Arc<Auth>,
}

/// Applies entries to the store and answers the local waiters of the proposals among them.
pub struct StateMachine<B> {
    store: Store<B>,
    node_id: u64,
    /// Only entries this start of the member proposed name its waiters.
    incarnation: u64,
    waiters: Registry<Answer>,
    alarms: Arc<Alarms>,
    auth: Arc<Auth>,
    snapshots: SnapshotDir,
    /// The engine keeps its content across restarts: it is its own snapshot.
    persistent: bool,
    position: Position,
    /// Told of every lease granted or revoked, and reset after a snapshot is installed.
    lessor: Arc<Lessor>,
    /// What a reset adds to every lease's remaining TTL (an election timeout).
    lease_extend: Duration,
    /// Woken when an apply leaves compacted versions to remove.
    removal: Arc<Removal>,
    /// Where the log may be purged on disk: raised only at durable points (`floor`).
    floor: Option<Arc<FloorRaiser>>,
    /// Counts applied requests toward the next snapshot (`snapshot_due`).
    due: Option<Arc<SnapshotDue>>,
    /// The index of the last entry applied, published before its proposers are answered
    /// (openraft's own `last_applied` follows a moment after).
    applied_index: Option<Arc<AtomicU64>>,
}

impl<B: Backend> StateMachine<B> {
    /// A state machine over `store`; if the newest snapshot in `dir` is ahead of the store
    /// (an in-memory engine after a restart), the store is rebuilt from it first.
    pub(crate) fn open(
        store: Store<B>,
        proposer: Proposer,
        dir: PathBuf,
        lessor: Arc<Lessor>,
        lease_extend: Duration,
        removal: Arc<Removal>,
    ) -> Result<Self, String> {
        let snapshots = SnapshotDir::open(dir)?;
        let mut position =
            Position::decode(store.applied().map_err(|e| e.to_string())?.as_deref())?;
        if let Some((meta, path)) = snapshots.current()? {
            if meta.last_log_id > position.log_id {
                tracing::info!(snapshot = %snapshot_id(&meta), "rebuilding the store from the newest snapshot");
                let file = std::fs::File::open(&path).map_err(|e| e.to_string())?;
                let info = store
                    .restore(BufReader::new(file))
                    .map_err(|e| e.to_string())?;
                position = Position::decode(info.applied.as_deref())?;
            }
        }
        let persistent = store.backend().persistent();
        if persistent {
            // What the engine shows now is its snapshot from here on (openraft takes it as the
            // snapshot at start and may purge the log behind it): make it durable first.
            store.backend().flush().map_err(|e| e.to_string())?;
            // Copies an earlier version kept: the store, durable at its position, replaces them.
            snapshots.remove_copies()?;
        }
        lessor.reset(&store.leases(), lease_extend, None);
        let Proposer {
            node_id,
            incarnation,
            waiters,
            alarms,
            auth,
        } = proposer;
        alarms.publish(&position.alarms);
        auth.publish(&position.auth);
        Ok(Self {
            store,
            node_id,
            incarnation,
            waiters,
            alarms,
            auth,
            snapshots,
            persistent,
            position,
            lessor,
            lease_extend,
            removal,
            floor: None,
            due: None,
            applied_index: None,
        })
    }

    /// Holds the log's purges on disk to points this state machine holds durably: the
    /// position it opened at (what the engine or a snapshot file holds), then each snapshot
    /// built or installed.
    pub(crate) fn hold_log_purges(mut self, floor: Arc<Floor>) -> Self {
        floor.attach(self.position.log_id);
        self.floor = Some(Arc::new(FloorRaiser(floor)));
        self
    }

    /// Counts every applied request toward `due`'s next snapshot.
    pub(crate) fn count_requests(mut self, due: Arc<SnapshotDue>) -> Self {
        self.due = Some(due);
        self
    }

    /// Publishes into `to` the index of the last entry applied, before that entry's
    /// proposers hear their answers: a client that got its answer and then asks for the
    /// member's status or metrics sees its own write counted as applied.
    pub(crate) fn publish_applied(mut self, to: Arc<AtomicU64>) -> Self {
        to.fetch_max(
            self.position.log_id.map_or(0, |l| l.index),
            Ordering::Release,
        );
        self.applied_index = Some(to);
        self
    }
}

impl<B: Backend> StateMachine<B> {
    /// A fresh incoming snapshot file.
    async fn begin_receiving(&self) -> Result<tokio::fs::File, io::Error> {
        open_incoming_snapshot(&self.snapshots.incoming_path()).await
    }

    /// A fresh file to receive a snapshot into, as the peer service writes one.
    #[cfg(test)]
    pub(crate) async fn begin_receiving_snapshot(&self) -> Result<SnapshotData, io::Error> {
        Ok(SnapshotData::received(self.begin_receiving().await?))
    }

    /// Applies `entries` as one store batch, answering the waiters of this incarnation's
    /// commands; returns each entry's answer.
    pub(crate) async fn apply_entries<I>(&mut self, entries: I) -> Result<Vec<Applied>, io::Error>
    where
        I: IntoIterator<Item = Entry> + Send,
        I::IntoIter: Send,
    {
        // One store batch for every command of every entry Raft hands over: one engine write
        // per apply call, each command still at its own revision.
        let mut commands = Vec::new();
        // Per entry: how many commands it holds, and their waiters if this member proposed it.
        let mut slots: Vec<(usize, Vec<u64>)> = Vec::new();
        // This member's own entries among them, for the stage histograms.
        let mut own = Vec::new();
        let apply_start = std::time::Instant::now();
        let mut position = self.position.clone();
        for entry in entries {
            position.log_id = Some(entry.log_id);
            match entry.payload {
                EntryPayload::Blank => slots.push((0, Vec::new())),
                EntryPayload::Normal(p) => {
                    // The planted bug (never in a normal build): any incarnation's ids answer.
                    let ours = p.is_from(self.node_id, self.incarnation)
                        || (cfg!(feature = "planted-reused-waiter-ids")
                            && p.origin == self.node_id);
                    if p.is_from(self.node_id, self.incarnation) {
                        own.push((p.origin, p.incarnation, p.seq));
                    }
                    let ids = if ours {
                        p.commands.iter().map(|t| t.id).collect()
                    } else {
                        Vec::new()
                    };
                    slots.push((p.commands.len(), ids));
                    commands.extend(p.commands.into_iter().map(|t| t.command));
                }
                EntryPayload::Membership(m) => {
                    position.membership = StoredMembership::new(Some(entry.log_id), m);
                    slots.push((0, Vec::new()));
                }
            }
        }
        if slots.is_empty() {
            return Ok(Vec::new());
        }
        crate::stages::mark(
            own.iter().copied(),
            crate::stages::Stage::ApplyStart,
            apply_start,
        );
        // Alarms apply here, in log order; what the store would answer for them, and for the
        // writes a NOSPACE alarm refuses, is replaced by these answers.
        let mut answered: HashMap<usize, Result<mvcc::Response, Refusal>> = HashMap::new();
        // Auth applies here too; its token changes wait until the new state is durable.
        let mut token_changes = Vec::new();
        for (i, c) in commands.iter_mut().enumerate() {
            if let mvcc::Command::Guarded {
                auth_revision,
                command,
            } = c
            {
                // etcd's re-check at apply: a permission checked before an auth change that
                // was applied since is no longer known to hold.
                if position.auth.enabled && *auth_revision < position.auth.revision {
                    *c = mvcc::Command::Alarm(mvcc::AlarmRequest::default());
                    answered.insert(i, Err(Refusal::Auth(crate::AuthError::AuthOldRevision)));
                    continue;
                }
                let write = std::mem::replace(
                    command.as_mut(),
                    mvcc::Command::Alarm(mvcc::AlarmRequest::default()),
                );
                *c = write;
            }
            if let mvcc::Command::Auth(req) = c {
                let answer = position
                    .auth
                    .apply(req, &mut token_changes)
                    .map(mvcc::Response::Auth)
                    .map_err(Refusal::Auth);
                answered.insert(i, answer);
            } else if let mvcc::Command::Alarm(req) = c {
                let listed = crate::alarms::apply(&mut position.alarms, req);
                answered.insert(i, Ok(mvcc::Response::Alarm(listed)));
            } else if let Some(refused) = refusal(c, &position.alarms) {
                // The store still orders a command in its place, one that changes nothing.
                *c = mvcc::Command::Alarm(mvcc::AlarmRequest::default());
                answered.insert(i, Err(refused));
            }
        }
        // Lease grants and revokes, by command index, to tell the lessor once they applied.
        let lease_changes: Vec<(usize, i64, Option<i64>)> = commands
            .iter()
            .enumerate()
            .filter_map(|(i, c)| match c {
                mvcc::Command::LeaseGrant(g) => Some((i, g.id, Some(g.ttl))),
                mvcc::Command::LeaseRevoke(r) => Some((i, r.id, None)),
                _ => None,
            })
            .collect();
        let raw = bincode::serialize(&position).map_err(|e| sm_err("write", e))?;
        let store = self.store.clone();
        let commands_applied = commands.len() as u64;
        let outcomes = if crate::ablation::skips(crate::ablation::Cut::Apply) {
            made_up_outcomes(commands.len(), self.store.current_revision())
        } else {
            tokio::task::spawn_blocking(move || {
                let outcomes = store.apply(&commands, Some(&raw))?;
                crate::metrics::count_applied(&commands, &outcomes);
                Ok::<_, mvcc::Error>(outcomes)
            })
            .await
            .map_err(|e| sm_err("write", e))?
            .map_err(|e| sm_err("write", e))?
        };
        if self.position.alarms != position.alarms {
            self.alarms.publish(&position.alarms);
        }
        if self.position.auth != position.auth {
            self.auth.publish(&position.auth);
        }
        for change in token_changes {
            self.auth.tokens().change(change);
        }
        self.position = position;
        if !self.store.compaction_progress().finished() {
            self.removal.wake();
        }
        for (i, id, granted) in lease_changes {
            if outcomes.get(i).is_some_and(|o| o.result.is_ok()) {
                match granted {
                    Some(ttl) => self.lessor.granted(id, ttl),
                    None => self.lessor.revoked(id),
                }
            }
        }
        if let (Some(to), Some(last)) = (&self.applied_index, self.position.log_id) {
            to.fetch_max(last.index, Ordering::Release);
        }
        let mut outcomes = outcomes.into_iter().enumerate();
        let mut revision = self.store.current_revision();
        let mut answers = Vec::with_capacity(slots.len());
        for (count, ids) in slots {
            let mut ids = ids.into_iter();
            for _ in 0..count {
                let Some((i, o)) = outcomes.next() else {
                    return Err(sm_err("write", "store returned too few outcomes"));
                };
                revision = o.revision;
                let result = match answered.remove(&i) {
                    Some(answer) => answer,
                    None => o.result,
                };
                if let Some(id) = ids.next() {
                    let applied = Applied {
                        revision: o.revision,
                        result: result.map(Some),
                    };
                    self.waiters.complete(id, Ok(applied));
                }
            }
            answers.push(Applied {
                revision,
                result: Ok(None),
            });
        }
        for key in own {
            crate::stages::applied(key);
        }
        if let Some(due) = &self.due {
            due.applied(commands_applied);
        }
        Ok(answers)
    }
}

/// What a measurement build without the apply answers: `count` puts after `revision`.
fn made_up_outcomes(count: usize, revision: i64) -> Vec<mvcc::Outcome> {
    (1..=count)
        .map(|n| mvcc::Outcome {
            revision: revision + i64::try_from(n).unwrap_or(i64::MAX),
            result: Ok(mvcc::Response::Put(mvcc::PutResponse { prev_kv: None })),
        })
        .collect()
}

impl<B: Backend> RaftStateMachine<TypeConfig> for StateMachine<B> {
    type SnapshotData = SnapshotData;
    type SnapshotBuilder = SnapshotBuilder<B>;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), io::Error> {
        Ok((self.position.log_id, self.position.membership.clone()))
    }

    async fn apply<S>(&mut self, entries: S) -> Result<(), io::Error>
    where
        S: Stream<Item = Result<EntryResponder<TypeConfig>, io::Error>> + Unpin + Send,
    {
        // Every entry Raft hands over in one call goes into one store batch.
        let given: Vec<EntryResponder<TypeConfig>> = entries.try_collect().await?;
        let mut responders = Vec::with_capacity(given.len());
        let entries: Vec<Entry> = given
            .into_iter()
            .map(|(entry, responder)| {
                responders.push(responder);
                entry
            })
            .collect();
        let answers = self.apply_entries(entries).await?;
        for (responder, answer) in responders.into_iter().zip(answers) {
            if let Some(responder) = responder {
                responder.send(answer);
            }
        }
        Ok(())
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        if let Some(due) = &self.due {
            due.taken();
        }
        SnapshotBuilder {
            store: self.store.clone(),
            dir: self.snapshots.clone(),
            floor: self.floor.clone(),
            persistent: self.persistent,
        }
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        snapshot: SnapshotData,
    ) -> Result<(), io::Error> {
        let file = match snapshot.into_received() {
            Ok(file) => file,
            // Bytes from elsewhere (openraft's storage suite hands one member's snapshot to
            // another) are copied into the incoming file first, as the peer service writes them.
            Err(mut bytes) => {
                let mut file = self
                    .begin_receiving()
                    .await
                    .map_err(|e| snap_err("write", e))?;
                tokio::io::copy(&mut *bytes, &mut file)
                    .await
                    .map_err(|e| snap_err("write", e))?;
                file
            }
        };
        let mut file = file.into_std().await;
        let store = self.store.clone();
        let dir = self.snapshots.clone();
        let sent = meta.clone();
        let persistent = self.persistent;
        // The purge openraft asked for up to this point waits for the install, however long
        // the restore takes (`floor`).
        if let Some(floor) = &self.floor {
            floor.0.installing(meta.last_log_id);
        }
        let installed = tokio::task::spawn_blocking(
            move || -> Result<(mvcc::SnapshotInfo, Position), String> {
                use std::io::{Seek, Write};
                file.flush().map_err(|e| e.to_string())?;
                if !persistent {
                    // Kept as the store's snapshot: the restart of an engine that starts empty
                    // rebuilds from it. A persistent engine's restore commits durably itself.
                    file.sync_all().map_err(|e| e.to_string())?;
                }
                file.rewind().map_err(|e| e.to_string())?;
                let info = store
                    .restore(BufReader::new(file))
                    .map_err(|e| e.to_string())?;
                // The bytes must be the point the meta names: bytes of a later point under an
                // earlier id would have the log's entries applied twice.
                let position = Position::decode(info.applied.as_deref())?;
                if position.log_id != sent.last_log_id {
                    return Err(format!(
                        "the snapshot's bytes are at {:?}, its meta names {:?}",
                        position.log_id, sent.last_log_id
                    ));
                }
                if persistent {
                    // The restore committed durably: the engine holds the snapshot now.
                    dir.discard_incoming()?;
                } else {
                    dir.keep_incoming(&sent)?;
                }
                Ok((info, position))
            },
        )
        .await
        .map_err(|e| e.to_string())
        .and_then(|r| r);
        let (info, position) = match installed {
            Ok(done) => done,
            Err(e) => {
                if let Some(floor) = &self.floor {
                    floor.0.installing(None);
                }
                return Err(snap_err("write", e));
            }
        };
        self.position = position;
        // The restore committed durably (and an engine that starts empty keeps the received
        // file as its snapshot): the log up to the point may go.
        if let Some(floor) = &self.floor {
            floor.0.raise(meta.last_log_id);
            floor.0.installing(None);
        }
        self.alarms.publish(&self.position.alarms);
        self.auth.publish(&self.position.auth);
        self.lessor
            .reset(&self.store.leases(), self.lease_extend, None);
        self.removal.wake();
        metrics::counter!("metastore_snapshots_installed_total").increment(1);
        tracing::info!(
            revision = info.revision,
            "installed a snapshot from the leader"
        );
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot>, io::Error> {
        if self.persistent {
            if self.position.log_id.is_none() {
                return Ok(None);
            }
            // The store as it stands now: newer than the last snapshot built, which openraft
            // accepts; the meta and the bytes are of the same point, fixed here.
            let store = self.store.clone();
            let dir = self.snapshots.clone();
            let (meta, reader) = tokio::task::spawn_blocking(move || point_of(&store))
                .await
                .map_err(|e| snap_err("read", e))?
                .map_err(|e| snap_err("read", e))?;
            return Ok(Some(Snapshot {
                meta,
                snapshot: dir.deferred(reader),
            }));
        }
        let Some((meta, path)) = self.snapshots.current().map_err(|e| snap_err("read", e))? else {
            return Ok(None);
        };
        let file = tokio::fs::File::open(&path)
            .await
            .map_err(|e| snap_err("read", e))?;
        Ok(Some(Snapshot {
            meta,
            snapshot: SnapshotData::file(file),
        }))
    }
}

/// Builds a snapshot without holding up the state machine: a file from the store, or, for a
/// persistent engine, the engine flushed and the point it stands at.
pub struct SnapshotBuilder<B> {
    store: Store<B>,
    dir: SnapshotDir,
    floor: Option<Arc<FloorRaiser>>,
    persistent: bool,
}

impl<B: Backend> RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder<B> {
    type SnapshotData = SnapshotData;

    async fn build_snapshot(&mut self) -> Result<Snapshot, io::Error> {
        let store = self.store.clone();
        let dir = self.dir.clone();
        if self.persistent {
            let (meta, reader) = tokio::task::spawn_blocking(move || {
                // The point first, then the flush: the flush makes every commit up to the
                // point durable (and perhaps later ones); flushing first could leave the point
                // past what is durable.
                let point = point_of(&store)?;
                store.backend().flush().map_err(|e| e.to_string())?;
                Ok::<_, String>(point)
            })
            .await
            .map_err(|e| snap_err("write", e))?
            .map_err(|e| snap_err("write", e))?;
            // The engine holds the point durably: the log up to it may go, before Raft
            // learns of the snapshot and purges.
            if let Some(floor) = &self.floor {
                floor.0.raise(meta.last_log_id);
            }
            return Ok(Snapshot {
                meta,
                snapshot: dir.deferred(reader),
            });
        }
        let (meta, path) = tokio::task::spawn_blocking(move || dir.build(&store))
            .await
            .map_err(|e| snap_err("write", e))?
            .map_err(|e| snap_err("write", e))?;
        // The snapshot file is durable: the log up to its point may go.
        if let Some(floor) = &self.floor {
            floor.0.raise(meta.last_log_id);
        }
        let file = tokio::fs::File::open(&path)
            .await
            .map_err(|e| snap_err("read", e))?;
        Ok(Snapshot {
            meta,
            snapshot: SnapshotData::file(file),
        })
    }
}

/// The snapshot metadata of a store point: its applied log id and membership.
fn meta_of(info: &SnapshotInfo) -> Result<SnapshotMeta, String> {
    let position = Position::decode(info.applied.as_deref())?;
    Ok(SnapshotMeta {
        last_log_id: position.log_id,
        last_membership: position.membership,
    })
}

/// The store's current point as a snapshot: its meta, and a reader of its bytes that keeps
/// compaction from removing them until it is dropped.
fn point_of<B: Backend>(store: &Store<B>) -> Result<(SnapshotMeta, SnapshotReader<B>), String> {
    let reader = store.snapshot().map_err(|e| e.to_string())?;
    let meta = meta_of(reader.info())?;
    Ok((meta, reader))
}

/// Where a snapshot received from the leader is written in the snapshot directory `dir`.
pub(crate) fn incoming_snapshot_path(dir: &Path) -> PathBuf {
    dir.join(INCOMING)
}

/// Creates (or empties) the incoming snapshot file at `path`, for the bytes a leader sends.
/// A scratch name: see `SnapshotDir::keep_incoming` and `discard_incoming` for how it is made
/// durable or removed.
pub(crate) async fn open_incoming_snapshot(path: &Path) -> Result<tokio::fs::File, io::Error> {
    tokio::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)
        .await
}

/// A name for the snapshot `meta` describes: the term and index of its point.
pub(crate) fn snapshot_id(meta: &SnapshotMeta) -> String {
    meta.last_log_id.map_or_else(
        || "0-0".to_string(),
        |l| format!("{}-{}", l.leader_id.term, l.index),
    )
}

/// Names the unnamed files snapshots are written out to while they are sent.
static SENDING: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// The snapshot directory: data files named by snapshot id, and one metadata file naming the
/// current one, replaced atomically, so a crash leaves either the old or the new snapshot.
#[derive(Clone)]
pub(crate) struct SnapshotDir {
    dir: PathBuf,
}

const META: &str = "current.meta";
const INCOMING: &str = "incoming.snap";
const BUILDING: &str = "building.snap";
/// The start of the names of files snapshots are written out to for sending.
const SENDING_PREFIX: &str = "sending-";

impl SnapshotDir {
    fn open(dir: PathBuf) -> Result<Self, String> {
        durable::create_dir_all_synced(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let this = Self { dir };
        // A crash between creating a file to send and removing its name leaves the name.
        this.remove_matching(|name| name.starts_with(SENDING_PREFIX))?;
        Ok(this)
    }

    /// Removes every file whose name `doomed` accepts.
    fn remove_matching(&self, doomed: impl Fn(&str) -> bool) -> Result<(), String> {
        let entries =
            std::fs::read_dir(&self.dir).map_err(|e| format!("{}: {e}", self.dir.display()))?;
        for entry in entries.flatten() {
            let name = entry.file_name();
            if doomed(&name.to_string_lossy()) {
                durable::remove_synced(&entry.path())
                    .map_err(|e| format!("{}: {e}", entry.path().display()))?;
            }
        }
        Ok(())
    }

    /// Removes every snapshot copy of the store (a persistent engine is its own snapshot):
    /// the metadata first, so a crash midway leaves no metadata naming a missing file.
    fn remove_copies(&self) -> Result<(), String> {
        self.remove_matching(|name| name == META)?;
        self.remove_matching(|name| {
            name.starts_with("snap-") || name == INCOMING || name == BUILDING
        })
    }

    /// Removes a received snapshot once the engine holds it.
    fn discard_incoming(&self) -> Result<(), String> {
        durable::remove_synced(&self.incoming_path()).map_err(|e| e.to_string())
    }

    /// Bytes of the store at `reader`'s point, written out only when they are first read.
    fn deferred<B: Backend>(&self, reader: SnapshotReader<B>) -> SnapshotData {
        let dir = self.dir.clone();
        SnapshotData::deferred(move || write_out(&dir, reader))
    }

    fn incoming_path(&self) -> PathBuf {
        incoming_snapshot_path(&self.dir)
    }

    /// A snapshot's data file name, from the point it is at.
    fn data_name(meta: &SnapshotMeta) -> String {
        format!("snap-{}.snap", snapshot_id(meta))
    }

    /// The newest snapshot's metadata and data file, if there is one.
    fn current(&self) -> Result<Option<(SnapshotMeta, PathBuf)>, String> {
        let meta_path = self.dir.join(META);
        let raw = match std::fs::read(&meta_path) {
            Ok(raw) => raw,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(format!("{}: {e}", meta_path.display())),
        };
        let meta: SnapshotMeta =
            bincode::deserialize(&raw).map_err(|e| format!("{}: {e}", meta_path.display()))?;
        let data = self.dir.join(Self::data_name(&meta));
        if data.exists() {
            return Ok(Some((meta, data)));
        }
        // Before openraft 0.10 the name also carried the store's revision: `snap-T-I-rR`.
        let older = format!("snap-{}-r", snapshot_id(&meta));
        let entries =
            std::fs::read_dir(&self.dir).map_err(|e| format!("{}: {e}", self.dir.display()))?;
        let found = entries.flatten().map(|e| e.path()).find(|p| {
            p.file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .is_some_and(|n| n.starts_with(&older) && n.ends_with(".snap"))
        });
        Ok(Some((meta, found.unwrap_or(data))))
    }

    /// Streams the store into a new snapshot file and makes it the current one.
    fn build<B: Backend>(&self, store: &Store<B>) -> Result<(SnapshotMeta, PathBuf), String> {
        // The engine must hold everything the snapshot covers before Raft may purge the log.
        store.backend().flush().map_err(|e| e.to_string())?;
        let mut reader = store.snapshot().map_err(|e| e.to_string())?;
        let meta = meta_of(reader.info())?;
        let tmp = self.dir.join(BUILDING);
        {
            let file = durable::create_file_synced(&tmp).map_err(|e| e.to_string())?;
            let mut out = BufWriter::new(file);
            std::io::copy(&mut reader, &mut out).map_err(|e| e.to_string())?;
            let file = out.into_inner().map_err(|e| e.to_string())?;
            file.sync_all().map_err(|e| e.to_string())?;
        }
        let path = self.commit(&tmp, &meta)?;
        Ok((meta, path))
    }

    /// Keeps a received snapshot as the current one.
    fn keep_incoming(&self, meta: &SnapshotMeta) -> Result<(), String> {
        self.commit(&self.incoming_path(), meta).map(drop)
    }

    /// Moves `data` to its final name, then atomically points the metadata at it, then removes
    /// older data files. Each rename is fsynced into the directory before the next step, so the
    /// old snapshots are removed only once the new one is durably current.
    fn commit(&self, data: &Path, meta: &SnapshotMeta) -> Result<PathBuf, String> {
        let name = Self::data_name(meta);
        let path = self.dir.join(&name);
        durable::rename_synced(data, &path).map_err(|e| e.to_string())?;
        let raw = bincode::serialize(meta).map_err(|e| e.to_string())?;
        durable::write_synced(&self.dir.join(META), &raw).map_err(|e| e.to_string())?;
        let entries = std::fs::read_dir(&self.dir).map_err(|e| e.to_string())?;
        for entry in entries.flatten() {
            let old = entry.file_name();
            let old = old.to_string_lossy();
            if old.starts_with("snap-") && old != name {
                // A reader of the old snapshot keeps its open handle; the name can go.
                let _ = durable::remove_synced(&entry.path());
            }
        }
        Ok(path)
    }
}

/// Writes `reader`'s bytes into a file in `dir` whose name is removed at once: the bytes take
/// space only until the file is closed, and a crash leaves nothing to clean.
fn write_out<B: Backend>(
    dir: &Path,
    mut reader: SnapshotReader<B>,
) -> std::io::Result<std::fs::File> {
    use std::io::Seek;
    let n = SENDING.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let path = dir.join(format!("{SENDING_PREFIX}{}-{n}.snap", std::process::id()));
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(&path)?;
    // Where an open file's name cannot be removed, the next start removes it.
    let _ = std::fs::remove_file(&path);
    let mut out = BufWriter::new(file);
    std::io::copy(&mut reader, &mut out)?;
    drop(reader);
    let mut file = out.into_inner().map_err(|e| e.into_error())?;
    file.rewind()?;
    Ok(file)
}

#[cfg(test)]
mod position_tests {
    use super::*;

    /// The position as written before auth: the same fields, the same order, no auth.
    #[derive(Serialize)]
    struct Old {
        log_id: Option<LogId>,
        membership: StoredMembership,
        alarms: BTreeSet<AlarmMember>,
    }

    #[test]
    fn a_position_written_before_auth_decodes_with_auth_off() {
        let mut alarms = BTreeSet::new();
        alarms.insert(AlarmMember {
            member_id: 7,
            alarm: alarm_kind::NOSPACE,
        });
        let old = Old {
            log_id: Some(crate::types::typ::log_id(3, 1, 42)),
            membership: StoredMembership::default(),
            alarms: alarms.clone(),
        };
        let raw = bincode::serialize(&old).expect("encode");
        let decoded = Position::decode(Some(&raw)).expect("decode");
        assert_eq!(decoded.log_id, old.log_id);
        assert_eq!(decoded.alarms, alarms);
        assert_eq!(decoded.auth, AuthState::default());
        // And the new form round-trips with its auth state.
        let mut new = decoded.clone();
        new.auth.enabled = true;
        new.auth.revision = 9;
        let raw = bincode::serialize(&new).expect("encode");
        let again = Position::decode(Some(&raw)).expect("decode");
        assert_eq!(again.auth, new.auth);
        assert_eq!(again.alarms, new.alarms);
    }
}

#[cfg(test)]
mod persistent_snapshot_tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use tokio::io::AsyncReadExt;

    use super::*;
    use crate::types::{Proposal, Tagged};

    fn log_id(index: u64) -> LogId {
        crate::types::typ::log_id(1, 7, index)
    }

    /// Entry `index`: 20 puts of 2 KiB values, under keys of their own.
    fn entry(index: u64) -> Entry {
        let commands = (0..20)
            .map(|i| Tagged {
                id: 0,
                command: mvcc::Command::Put(mvcc::PutRequest {
                    key: format!("k{index:04}-{i:02}").into_bytes(),
                    value: vec![b'v'; 2048],
                    ..Default::default()
                }),
            })
            .collect();
        Entry {
            log_id: log_id(index),
            payload: EntryPayload::Normal(Proposal {
                origin: 9,
                incarnation: 9,
                seq: index,
                commands,
            }),
        }
    }

    fn machine<B: Backend>(store: Store<B>, dir: &Path) -> StateMachine<B> {
        StateMachine::open(
            store,
            Proposer {
                node_id: 7,
                incarnation: 3,
                waiters: Registry::new("test-proposals"),
                alarms: Arc::default(),
                auth: Arc::default(),
            },
            dir.join("snapshots"),
            Arc::new(Lessor::default()),
            Duration::from_secs(1),
            Removal::new(0),
        )
        .unwrap()
    }

    /// The largest file in `dir`, in bytes.
    fn largest(dir: &Path) -> u64 {
        std::fs::read_dir(dir)
            .unwrap()
            .flatten()
            .map(|e| e.metadata().unwrap().len())
            .max()
            .unwrap_or(0)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_persistent_store_is_its_own_snapshot_and_its_bytes_are_made_only_to_send() {
        let dir = tempfile::tempdir().unwrap();
        let backend = engine_redb::RedbBackend::open(
            dir.path().join("data.redb"),
            &engine_redb::Options {
                durability: engine_redb::Durability::Lazy,
                ..engine_redb::Options::default()
            },
        )
        .unwrap();
        let store = Store::open(backend).unwrap();
        let floor = Arc::new(Floor::default());
        let mut sm = machine(store.clone(), dir.path()).hold_log_purges(Arc::clone(&floor));
        sm.apply_entries((1..=10).map(entry)).await.unwrap();
        assert!(!floor.allows(log_id(1)), "nothing flushed yet");
        let built = sm.get_snapshot_builder().await.build_snapshot().await;
        let built = built.unwrap();
        assert_eq!(built.meta.last_log_id, Some(log_id(10)));
        // Built means flushed: the log up to the point may be purged, not past it.
        assert!(floor.allows(log_id(10)));
        assert!(!floor.allows(log_id(11)));
        drop(built);
        // 200 values of 2 KiB are in the store: no copy of them is kept beside it.
        let snapshots = dir.path().join("snapshots");
        assert!(
            largest(&snapshots) < 64 << 10,
            "a snapshot file of {} bytes",
            largest(&snapshots)
        );
        // Sending takes the store as it stands, meta and bytes of the same point.
        sm.apply_entries((11..=12).map(entry)).await.unwrap();
        let current = sm
            .get_current_snapshot()
            .await
            .unwrap()
            .expect("a snapshot");
        assert_eq!(current.meta.last_log_id, Some(log_id(12)));
        // Entries applied before the bytes are written out are not in them.
        let at_12 = store.hash(0).unwrap();
        sm.apply_entries((13..=14).map(entry)).await.unwrap();
        let mut bytes = Vec::new();
        let mut data = current.snapshot;
        data.read_to_end(&mut bytes).await.unwrap();
        assert!(bytes.len() > 240 * 2048, "{} bytes sent", bytes.len());
        let copy = Store::open(engine_mem::MemBackend::new()).unwrap();
        let info = copy.restore(std::io::Cursor::new(bytes)).unwrap();
        let position = Position::decode(info.applied.as_deref()).unwrap();
        assert_eq!(position.log_id, current.meta.last_log_id);
        assert_eq!(copy.hash(0).unwrap(), at_12);
        assert_ne!(copy.hash(0).unwrap(), store.hash(0).unwrap());
        // The bytes had no name in the directory, and are gone with the handle.
        assert!(largest(&snapshots) < 64 << 10);
        drop(data);
        let left: Vec<_> = std::fs::read_dir(&snapshots).unwrap().flatten().collect();
        assert!(left.is_empty(), "{left:?}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_installed_snapshot_leaves_no_copy_beside_a_persistent_store() {
        // The sender: a store of 12 entries, its bytes as a follower receives them.
        let from = tempfile::tempdir().unwrap();
        let mut leader = machine(
            Store::open(engine_mem::MemBackend::new()).unwrap(),
            from.path(),
        );
        leader.apply_entries((1..=12).map(entry)).await.unwrap();
        let sent = leader.get_snapshot_builder().await.build_snapshot().await;
        let sent = sent.unwrap();
        let mut bytes = Vec::new();
        let mut data = sent.snapshot;
        data.read_to_end(&mut bytes).await.unwrap();

        let dir = tempfile::tempdir().unwrap();
        let snapshots = dir.path().join("snapshots");
        std::fs::create_dir_all(&snapshots).unwrap();
        // What a crash while sending or receiving leaves: both go at the next start.
        std::fs::write(snapshots.join("sending-1-0.snap"), b"partial").unwrap();
        std::fs::write(snapshots.join(INCOMING), b"partial").unwrap();
        let open = || {
            engine_redb::RedbBackend::open(
                dir.path().join("data.redb"),
                &engine_redb::Options::default(),
            )
            .unwrap()
        };
        let store = Store::open(open()).unwrap();
        let floor = Arc::new(Floor::default());
        let mut sm = machine(store.clone(), dir.path()).hold_log_purges(Arc::clone(&floor));
        assert!(std::fs::read_dir(&snapshots).unwrap().next().is_none());
        // Bytes that are not the point their meta names are refused, the floor left alone.
        let mut wrong = sent.meta.clone();
        wrong.last_log_id = Some(log_id(11));
        let mut incoming = sm.begin_receiving_snapshot().await.unwrap();
        tokio::io::AsyncWriteExt::write_all(&mut incoming, &bytes)
            .await
            .unwrap();
        let refused = sm.install_snapshot(&wrong, incoming).await.unwrap_err();
        assert!(refused.to_string().contains("meta names"), "{refused}");
        assert!(!floor.allows(log_id(1)));
        let mut incoming = sm.begin_receiving_snapshot().await.unwrap();
        tokio::io::AsyncWriteExt::write_all(&mut incoming, &bytes)
            .await
            .unwrap();
        sm.install_snapshot(&sent.meta, incoming).await.unwrap();
        assert_eq!(sm.applied_state().await.unwrap().0, sent.meta.last_log_id);
        // The restore is durable: the log up to the point may go.
        assert!(floor.allows(log_id(12)));
        let left: Vec<_> = std::fs::read_dir(&snapshots).unwrap().flatten().collect();
        assert!(left.is_empty(), "{left:?}");
        let hash = store.hash(0).unwrap();
        // A restart finds the snapshot in the store itself.
        drop(sm);
        drop(store);
        let store = Store::open(open()).unwrap();
        let mut sm = machine(store.clone(), dir.path());
        assert_eq!(sm.applied_state().await.unwrap().0, sent.meta.last_log_id);
        assert_eq!(store.hash(0).unwrap(), hash);
        let current = sm.get_current_snapshot().await.unwrap().unwrap();
        assert_eq!(current.meta.last_log_id, sent.meta.last_log_id);
    }
}
