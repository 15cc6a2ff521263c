//! Crash test: a child process applying batches is killed (`SIGKILL`) at random moments, the
//! store is reopened in this process and checked against what the child acknowledged, for many
//! rounds over the same file.
//!
//! The child is this test binary run again with [`CHILD_ENV`] set, filtered to
//! [`child_writer`]: it opens the store, continues from its applied position + 1 and applies
//! batch after batch, each one `Store::apply` call of several commands with applied position
//! `n`, printing `ack n revision` once `apply` (and, in `Lazy` mode, a periodic flush) returned.
//! After every fifth batch it also runs one bounded physical compaction step. Batch `n` is a
//! pure function of `n` and the store's state before it, so this process replays the batches
//! into an in-memory reference store (advanced incrementally) and compares.
//!
//! After each kill the reopened store must:
//! - open (half the rounds open a copy of the killed file, leaving the original for the next
//!   child to recover itself, so recovery is also killed mid-way now and then);
//! - be exactly at a batch boundary `m`: its revisions, compaction point, key-space hash,
//!   live keys and a historical read equal the reference's after batch `m`, and every table
//!   holds byte for byte what the reference's does (with or without the compaction step that
//!   follows `m`), so not even versions above the current revision leak from a later batch;
//! - with `EveryBatch`, hold every acknowledged batch (`m` is the last ack, or one more when
//!   the kill fell between a commit and its ack); with `Lazy`, hold at least every batch up
//!   to the last flush and nothing unwritten (a crash may only lose the unflushed tail).
//!
//! Rounds: `METASTORE_CRASH_ROUNDS` (default 200) with `EveryBatch`, a quarter of that with
//! `Lazy`; kill delays come from `METASTORE_CRASH_SEED` (the checks never depend on timing).

use std::io::{BufRead, BufReader, Read, Write};
use std::ops::{Bound, ControlFlow};
use std::process::{Child, Command as Process, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use engine_mem::MemBackend;
use engine_redb::{Durability, Options, RedbBackend};
use mvcc::{
    Backend, Command, CompactRequest, Compare, CompareResult, CompareTarget, DeleteRangeRequest,
    PutRequest, RangeRequest, RangeResponse, RequestOp, Store, Table, TxnRequest,
};

/// Set in the child's environment to the database path; unset, [`child_writer`] does nothing.
const CHILD_ENV: &str = "METASTORE_CRASH_CHILD";
/// The child's durability: `every` or `lazy`.
const MODE_ENV: &str = "METASTORE_CRASH_MODE";
/// In `Lazy` mode the child flushes after every batch whose number is a multiple of this.
const FLUSH_EVERY: u64 = 8;
/// The child runs a bounded physical compaction step after every batch multiple of this.
const PHYSICAL_EVERY: u64 = 5;
/// Versions one physical compaction step may remove.
const PHYSICAL_STEP: usize = 64;
/// The key space batches write to: small, so deletes, txns and compaction find keys.
const KEY_SPACE: u64 = 48;
/// A child that is still running after this long has lost its parent; it stops.
const CHILD_LIFETIME: Duration = Duration::from_secs(120);

// ---------------------------------------------------------------------------------------------
// Deterministic batches.

/// splitmix64: small, seedable, good enough to pick commands and delays.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        Self(seed)
    }

    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

fn key(i: u64) -> Vec<u8> {
    format!("key/{:03}", i % KEY_SPACE).into_bytes()
}

fn value(n: u64, j: usize, rng: &mut Rng) -> Vec<u8> {
    let mut v = format!("v{n}.{j}:").into_bytes();
    // Mostly small values, sometimes a few pages' worth.
    let pad = if rng.chance(5) {
        2000 + rng.below(6000)
    } else {
        rng.below(64)
    };
    let fill = b'a' + (n % 26) as u8;
    v.resize(v.len() + pad as usize, fill);
    v
}

fn put(key: Vec<u8>, value: Vec<u8>) -> PutRequest {
    PutRequest {
        key,
        value,
        ..PutRequest::default()
    }
}

/// The commands of batch `n` (from 1), given the store's revision and compaction point before
/// it: two to six puts, deletes, txns, sometimes a compaction or a command that fails.
fn batch(n: u64, current: i64, compacted: i64) -> Vec<Command> {
    let mut rng = Rng::new(n.wrapping_mul(0xa076_1d64_78bd_642f) ^ 0x5eed);
    let count = 2 + rng.below(5) as usize;
    let mut commands = Vec::with_capacity(count);
    for j in 0..count {
        let roll = rng.below(100);
        let a = rng.below(KEY_SPACE);
        let command = if roll < 50 {
            Command::Put(PutRequest {
                prev_kv: rng.chance(20),
                ..put(key(a), value(n, j, &mut rng))
            })
        } else if roll < 62 {
            let width = rng.below(4);
            Command::DeleteRange(DeleteRangeRequest {
                key: key(a),
                // A single key, or a run of up to three.
                range_end: if width == 0 {
                    Vec::new()
                } else if a + width < KEY_SPACE {
                    key(a + width)
                } else {
                    vec![0]
                },
                prev_kv: rng.chance(50),
            })
        } else if roll < 82 {
            let b = rng.below(KEY_SPACE);
            Command::Txn(TxnRequest {
                compare: vec![Compare {
                    result: CompareResult::Greater,
                    target: CompareTarget::Version(0),
                    key: key(a),
                    range_end: Vec::new(),
                }],
                success: vec![
                    RequestOp::Put(put(key(b), value(n, j, &mut rng))),
                    RequestOp::DeleteRange(DeleteRangeRequest {
                        key: key(a),
                        ..DeleteRangeRequest::default()
                    }),
                    RequestOp::Range(RangeRequest {
                        key: key(0),
                        range_end: vec![0],
                        ..RangeRequest::default()
                    }),
                ],
                failure: vec![
                    RequestOp::Put(put(key(a), value(n, j, &mut rng))),
                    RequestOp::Txn(TxnRequest {
                        compare: Vec::new(),
                        success: vec![RequestOp::Put(put(key(b + 1), value(n, j, &mut rng)))],
                        failure: Vec::new(),
                    }),
                ],
            })
        } else if roll < 90 && current - 60 > compacted {
            Command::Compact(CompactRequest {
                revision: current - 60,
                physical: false,
            })
        } else if roll < 94 {
            // Fails with KeyNotFound when the key is absent: the batch still applies the rest.
            Command::Put(PutRequest {
                ignore_value: true,
                ..put(key(a), Vec::new())
            })
        } else {
            Command::Put(put(key(a), value(n, j, &mut rng)))
        };
        commands.push(command);
    }
    commands
}

fn position(n: u64) -> [u8; 8] {
    n.to_be_bytes()
}

/// The applied position of a store: the number of the last batch it holds, 0 if none.
fn applied<B: Backend>(store: &Store<B>) -> u64 {
    match store.applied().unwrap() {
        None => 0,
        Some(raw) => u64::from_be_bytes(raw.as_slice().try_into().expect("8-byte position")),
    }
}

fn options(durability: Durability) -> Options {
    Options {
        durability,
        cache_bytes: 4 << 20,
        ..Options::default()
    }
}

// ---------------------------------------------------------------------------------------------
// The child.

/// The child process's body; a no-op unless [`CHILD_ENV`] is set (a normal test run).
#[test]
fn child_writer() {
    let Some(path) = std::env::var_os(CHILD_ENV) else {
        return;
    };
    let durability = match std::env::var(MODE_ENV).as_deref() {
        Ok("lazy") => Durability::Lazy,
        _ => Durability::EveryBatch,
    };
    let store = Store::open(RedbBackend::open(&path, &options(durability)).unwrap()).unwrap();
    let mut n = applied(&store) + 1;
    let mut out = std::io::stdout().lock();
    let started = Instant::now();
    if writeln!(out, "ready {}", n - 1)
        .and_then(|()| out.flush())
        .is_err()
    {
        return;
    }
    while started.elapsed() < CHILD_LIFETIME {
        let commands = batch(n, store.current_revision(), store.compact_revision());
        store.apply(&commands, Some(&position(n))).unwrap();
        if durability == Durability::Lazy && n.is_multiple_of(FLUSH_EVERY) {
            store.backend().flush().unwrap();
        }
        // A closed pipe means the parent is gone: stop.
        if writeln!(out, "ack {n} {}", store.current_revision())
            .and_then(|()| out.flush())
            .is_err()
        {
            return;
        }
        if n.is_multiple_of(PHYSICAL_EVERY) {
            store.compact_physical(PHYSICAL_STEP).unwrap();
        }
        n += 1;
    }
}

// ---------------------------------------------------------------------------------------------
// The parent.

/// The in-memory store that replays the same batches, advanced only forwards.
struct Reference {
    store: Store<MemBackend>,
    at: u64,
}

impl Reference {
    fn new() -> Self {
        Self {
            store: Store::open(MemBackend::new()).unwrap(),
            at: 0,
        }
    }

    /// Applies batches up to `m`, each followed by the child's physical compaction step except
    /// the last (whether the child got to that one is for [`Reference::step_after`] to say);
    /// checks each acknowledged revision on the way.
    fn advance_to(&mut self, m: u64, acks: &[(u64, i64)]) {
        assert!(
            m >= self.at,
            "reopened store went back from {} to {m}",
            self.at
        );
        while self.at < m {
            let n = self.at + 1;
            let commands = batch(
                n,
                self.store.current_revision(),
                self.store.compact_revision(),
            );
            self.store.apply(&commands, Some(&position(n))).unwrap();
            if let Some(&(_, rev)) = acks.iter().find(|(a, _)| *a == n) {
                assert_eq!(
                    self.store.current_revision(),
                    rev,
                    "batch {n}: child acknowledged another revision"
                );
            }
            if n < m && n.is_multiple_of(PHYSICAL_EVERY) {
                self.store.compact_physical(PHYSICAL_STEP).unwrap();
            }
            self.at = n;
        }
    }

    /// Runs the physical compaction step the child runs after the batch the reference is at.
    fn step_after(&mut self) {
        assert!(self.at.is_multiple_of(PHYSICAL_EVERY));
        self.store.compact_physical(PHYSICAL_STEP).unwrap();
    }
}

/// Every entry of every table of an engine, in order.
fn dump<B: Backend>(backend: &B) -> Vec<(Table, Vec<u8>, Vec<u8>)> {
    let mut entries = Vec::new();
    for table in Table::ALL {
        backend
            .scan(table, Bound::Unbounded, Bound::Unbounded, &mut |k, v| {
                entries.push((table, k.to_vec(), v.to_vec()));
                ControlFlow::Continue(())
            })
            .unwrap();
    }
    entries
}

/// Where two dumps first differ, if they do.
fn first_difference(
    engine: &[(Table, Vec<u8>, Vec<u8>)],
    expected: &[(Table, Vec<u8>, Vec<u8>)],
) -> Option<String> {
    let show = |e: Option<&(Table, Vec<u8>, Vec<u8>)>| match e {
        None => "nothing".to_owned(),
        Some((t, k, v)) => format!("{t:?} {k:02x?} = {} bytes", v.len()),
    };
    (0..engine.len().max(expected.len()))
        .find(|&i| engine.get(i) != expected.get(i))
        .map(|i| {
            format!(
                "entry {i} of {}/{}: engine has {}, reference has {}",
                engine.len(),
                expected.len(),
                show(engine.get(i)),
                show(expected.get(i))
            )
        })
}

/// Everything from the start of the key space, at `revision` (0 for the current one).
fn everything<B: Backend>(store: &Store<B>, revision: i64) -> RangeResponse {
    let req = RangeRequest {
        key: vec![0],
        range_end: vec![0],
        revision,
        ..RangeRequest::default()
    };
    store.range(&req).unwrap().0
}

/// Kills the child if the parent panics mid-round.
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// What one child printed before it died.
struct Printed {
    ready: Option<u64>,
    acks: Vec<(u64, i64)>,
}

fn read_child_stdout(stdout: impl Read, ready_tx: &mpsc::Sender<u64>) -> Printed {
    let mut printed = Printed {
        ready: None,
        acks: Vec::new(),
    };
    for line in BufReader::new(stdout).lines() {
        let Ok(line) = line else { break };
        let mut words = line.split_whitespace();
        match words.next() {
            Some("ready") => {
                let at = words.next().unwrap().parse().unwrap();
                printed.ready = Some(at);
                let _ = ready_tx.send(at);
            }
            Some("ack") => {
                let n = words.next().unwrap().parse().unwrap();
                let rev = words.next().unwrap().parse().unwrap();
                printed.acks.push((n, rev));
            }
            // libtest's own lines.
            _ => {}
        }
    }
    printed
}

#[derive(Debug, Default)]
struct Summary {
    rounds: u64,
    killed_before_ready: u64,
    acked: u64,
    final_position: u64,
    lost_max: u64,
    lost_total: u64,
    unacked_held: u64,
    startup_max: Duration,
    left_crashed: u64,
}

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn run_rounds(durability: Durability, rounds: u64, seed: u64) -> Summary {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("crash.redb");
    let copy = dir.path().join("checked.redb");
    let exe = std::env::current_exe().unwrap();
    let mode = match durability {
        Durability::EveryBatch => "every",
        Durability::Lazy => "lazy",
    };
    let mut reference = Reference::new();
    let mut summary = Summary::default();
    let mut at = 0u64;
    for round in 0..rounds {
        let mut rng = Rng::new(seed ^ round.wrapping_mul(0x2545_f491_4f6c_dd1d));
        let spawned = Instant::now();
        let child = Process::new(&exe)
            .args(["crash::child_writer", "--exact", "--nocapture"])
            .args(["--test-threads=1", "--quiet"])
            .env(CHILD_ENV, &path)
            .env(MODE_ENV, mode)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut child = KillOnDrop(child);
        let stdout = child.0.stdout.take().unwrap();
        let mut stderr = child.0.stderr.take().unwrap();
        let (ready_tx, ready_rx) = mpsc::channel();
        let out_reader = thread::spawn(move || read_child_stdout(stdout, &ready_tx));
        let err_reader = thread::spawn(move || {
            let mut s = String::new();
            let _ = stderr.read_to_string(&mut s);
            s
        });

        // One round in eight kills the child within 15 ms of its start, often while it opens
        // (and recovers) the file; the others let it write for 1..100 ms once it is ready.
        if rng.chance(12) {
            thread::sleep(Duration::from_micros(rng.below(15_000)));
        } else {
            // Only a child that died early stops `ready`; its exit is reported below.
            if ready_rx.recv_timeout(Duration::from_secs(60)).is_ok() {
                summary.startup_max = summary.startup_max.max(spawned.elapsed());
            }
            thread::sleep(Duration::from_micros(1_000 + rng.below(99_000)));
        }
        if let Some(status) = child.0.try_wait().unwrap() {
            let printed = out_reader.join().unwrap();
            panic!(
                "{mode} round {round}: the child exited by itself ({status}) after {} acks:\n{}",
                printed.acks.len(),
                err_reader.join().unwrap()
            );
        }
        child.0.kill().unwrap();
        child.0.wait().unwrap();
        let printed = out_reader.join().unwrap();
        let stderr = err_reader.join().unwrap();

        // What the child saw when it opened, and what it acknowledged.
        let context = format!("{mode} round {round} (started at {at})");
        if let Some(ready) = printed.ready {
            assert_eq!(ready, at, "{context}: the child opened at another position");
        } else {
            summary.killed_before_ready += 1;
        }
        for (i, (n, _)) in printed.acks.iter().enumerate() {
            assert_eq!(*n, at + 1 + i as u64, "{context}: acks out of order");
        }
        let last_ack = printed.acks.last().map_or(at, |a| a.0);

        // Half the rounds check a copy of the killed file and leave the original as it is, so
        // the next child recovers it itself; the others check (and recover) it in place.
        let checked = if path.exists() && rng.chance(50) {
            std::fs::copy(&path, &copy).unwrap();
            summary.left_crashed += 1;
            &copy
        } else {
            &path
        };
        let store = RedbBackend::open(checked, &options(durability))
            .map_err(mvcc::Error::from)
            .and_then(Store::open)
            .unwrap_or_else(|e| panic!("{context}: reopening failed: {e}\n{stderr}"));
        let m = applied(&store);
        // The child writes batch n + 1 only after acknowledging n.
        assert!(
            m <= last_ack + 1,
            "{context}: position {m} was never written (last ack {last_ack})"
        );
        match durability {
            Durability::EveryBatch => assert!(
                m >= last_ack,
                "{context}: acknowledged batch {last_ack} lost, store at {m}"
            ),
            Durability::Lazy => {
                let flushed = last_ack - last_ack % FLUSH_EVERY;
                assert!(
                    m >= flushed.max(at),
                    "{context}: store at {m}, below the flush at {flushed} or the start"
                );
                let lost = last_ack.saturating_sub(m);
                summary.lost_max = summary.lost_max.max(lost);
                summary.lost_total += lost;
            }
        }
        if m > last_ack {
            summary.unacked_held += 1;
        }

        // The store is exactly the state after batch m.
        reference.advance_to(m, &printed.acks);
        let expected = &reference.store;
        assert_eq!(
            store.current_revision(),
            expected.current_revision(),
            "{context}: revision after batch {m}"
        );
        assert_eq!(
            store.compact_revision(),
            expected.compact_revision(),
            "{context}: compaction point after batch {m}"
        );
        assert_eq!(
            store.hash(0).unwrap(),
            expected.hash(0).unwrap(),
            "{context}: key-space hash after batch {m}"
        );
        assert_eq!(
            everything(&store, 0),
            everything(expected, 0),
            "{context}: live keys after batch {m}"
        );
        let (low, high) = (
            expected.compact_revision().max(1),
            expected.current_revision(),
        );
        let past = low + rng.below((high - low + 1) as u64) as i64;
        assert_eq!(
            everything(&store, past),
            everything(expected, past),
            "{context}: keys at revision {past} after batch {m}"
        );

        // And byte for byte: every table holds what the reference holds after batch m, with or
        // without the compaction step that follows m (the kill may have come before or after).
        let engine = dump(store.backend());
        let mut expected = dump(reference.store.backend());
        if engine != expected && m > at && m.is_multiple_of(PHYSICAL_EVERY) {
            reference.step_after();
            expected = dump(reference.store.backend());
        }
        if let Some(difference) = first_difference(&engine, &expected) {
            panic!("{context}: the engine is not at the boundary after batch {m}: {difference}");
        }

        summary.rounds += 1;
        summary.acked += printed.acks.len() as u64;
        at = m;
        drop(store);
    }
    summary.final_position = at;
    summary
}

fn crash_test(durability: Durability, rounds: u64) {
    let seed = env_u64("METASTORE_CRASH_SEED", 0x00c0_ffee);
    let started = Instant::now();
    let s = run_rounds(durability, rounds, seed);
    eprintln!(
        "crash test {durability:?}: {} rounds in {:.1?}, {} batches acknowledged, store at \
         batch {}, {} rounds killed before the child was ready, {} rounds held an unacknowledged \
         batch, {} killed files left for the next child to recover, lost tail max {} / total {} \
         batches, child ready within {:.1?} (seed {seed:#x})",
        s.rounds,
        started.elapsed(),
        s.acked,
        s.final_position,
        s.killed_before_ready,
        s.unacked_held,
        s.left_crashed,
        s.lost_max,
        s.lost_total,
        s.startup_max,
    );
    if rounds >= 20 {
        assert!(s.acked > 0, "no child ever acknowledged a batch");
    }
}

#[test]
fn killed_writer_every_batch_keeps_every_ack() {
    crash_test(
        Durability::EveryBatch,
        env_u64("METASTORE_CRASH_ROUNDS", 200),
    );
}

#[test]
fn killed_writer_lazy_lands_on_a_batch_boundary() {
    crash_test(
        Durability::Lazy,
        env_u64("METASTORE_CRASH_ROUNDS", 200).div_ceil(4),
    );
}
