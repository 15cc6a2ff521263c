//! Where a write's time goes: one histogram per stage of the write path, on the `metrics`
//! facade (the server exports them at `/metrics` as [`STAGE_SECONDS`] with a `stage` label).
//!
//! The stages of an entry this member proposed are stamped as it passes the batcher, the log
//! and the state machine, in a small table keyed by the entry's batch; once the entry is
//! applied each stage is recorded once per command it carried, so every stage's mean is per
//! command and the stages of one command add up to its time in Raft. Stamping costs a clock
//! read and a lock per stage per entry (not per command), so it stays on.
//!
//! Stages, in order (`queue` and `wait` are per command; the rest per entry):
//! - `queue`: in the batcher's queue until it takes the command into an entry (it waits for the
//!   previous entry's flush meanwhile);
//! - `to_log`: from the batcher through openraft's core to [`crate::LogStore`]'s append;
//! - `log_queue`: in the log writer's queue;
//! - `log_write`: writing the group's records (no sync);
//! - `fsync`: the group's fdatasync;
//! - `commit`: from the local flush to the start of apply: replication to a quorum, openraft's
//!   commit and its hand-off to the state machine task;
//! - `apply`: the store's apply and the waiters' answers;
//! - `node`: a command's whole time from entering the batcher's queue to its proposer having
//!   the answer (so its wake-up is `node` minus the stages above).

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock, PoisonError};
use std::time::{Duration, Instant};

use metrics::Histogram;

/// The histogram of every stage, in seconds, labelled `stage`.
pub const STAGE_SECONDS: &str = "metastore_write_stage_seconds";

/// Entries stamped and not yet applied at most; past it the table is cleared (entries that
/// are never applied here, refused or lost with a leadership, must not pile up).
const MAX_STAMPED: usize = 4_096;

/// An entry of this member: proposer id, incarnation, batch number.
pub(crate) type Key = (u64, u64, u64);

/// What the stages of one entry have stamped so far.
#[derive(Clone, Copy, Debug)]
struct Stamps {
    commands: usize,
    gathered: Instant,
    appended: Option<Instant>,
    write_start: Option<Instant>,
    sync_start: Option<Instant>,
    synced: Option<Instant>,
    apply_start: Option<Instant>,
}

static TABLE: std::sync::LazyLock<Mutex<HashMap<Key, Stamps>>> =
    std::sync::LazyLock::new(|| Mutex::new(HashMap::new()));

fn table() -> std::sync::MutexGuard<'static, HashMap<Key, Stamps>> {
    TABLE.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Every stage's name, in the order a put passes them (the API layer's first). Each has its
/// histogram looked up once: a registry lookup per record hashed the label, several times per
/// put.
pub const STAGES: [&str; 10] = [
    "handler",
    "validate",
    "node",
    "queue",
    "to_log",
    "log_queue",
    "log_write",
    "fsync",
    "commit",
    "apply",
];

static HISTOGRAMS: [OnceLock<Histogram>; STAGES.len()] = [const { OnceLock::new() }; STAGES.len()];

/// Records `d` for `stage`, `times` times over (once per command).
pub(crate) fn record(stage: &'static str, d: Duration, times: usize) {
    let seconds = d.as_secs_f64();
    match STAGES.iter().position(|s| *s == stage) {
        Some(i) => HISTOGRAMS[i]
            .get_or_init(|| metrics::histogram!(STAGE_SECONDS, "stage" => stage))
            .record_many(seconds, times),
        None => metrics::histogram!(STAGE_SECONDS, "stage" => stage).record_many(seconds, times),
    }
}

/// Records `d` for the stage `stage` of the API layer (`validate`, `handler`).
pub fn record_stage(stage: &'static str, d: Duration) {
    record(stage, d, 1);
}

/// The batcher put `commands` commands into entry `key`, now.
pub(crate) fn gathered(key: Key, commands: usize) {
    let mut table = table();
    if table.len() >= MAX_STAMPED {
        table.clear();
    }
    table.insert(
        key,
        Stamps {
            commands,
            gathered: Instant::now(),
            appended: None,
            write_start: None,
            sync_start: None,
            synced: None,
            apply_start: None,
        },
    );
}

/// Which stamp a later stage sets.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Stage {
    /// openraft handed the entry to the log.
    Appended,
    /// The writer began the group holding it.
    WriteStart,
    /// The writer wrote the group and began its sync.
    SyncStart,
    /// The group is durable.
    Synced,
    /// The state machine began applying it.
    ApplyStart,
}

/// Stamps `stage` at `at` on every entry of `keys` that is stamped.
pub(crate) fn mark(keys: impl IntoIterator<Item = Key>, stage: Stage, at: Instant) {
    let mut table = table();
    for key in keys {
        if let Some(s) = table.get_mut(&key) {
            let slot = match stage {
                Stage::Appended => &mut s.appended,
                Stage::WriteStart => &mut s.write_start,
                Stage::SyncStart => &mut s.sync_start,
                Stage::Synced => &mut s.synced,
                Stage::ApplyStart => &mut s.apply_start,
            };
            slot.get_or_insert(at);
        }
    }
}

/// Entry `key` is applied, now: records each of its stages, once per command.
pub(crate) fn applied(key: Key) {
    let Some(s) = table().remove(&key) else {
        return;
    };
    let now = Instant::now();
    let points = [
        ("to_log", Some(s.gathered), s.appended),
        ("log_queue", s.appended, s.write_start),
        ("log_write", s.write_start, s.sync_start),
        ("fsync", s.sync_start, s.synced),
        ("commit", s.synced, s.apply_start),
        ("apply", s.apply_start, Some(now)),
    ];
    for (stage, from, to) in points {
        if let (Some(from), Some(to)) = (from, to) {
            record(stage, to.saturating_duration_since(from), s.commands);
        }
    }
}
