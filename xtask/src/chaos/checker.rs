//! A linearizability checker for a key-value history, in the Wing–Gong/Lowe style, with etcd's
//! revisions.
//!
//! The history is partitioned by key (P-compositionality: a history is linearizable iff each
//! key's sub-history is), and each key's operations are searched for an order that (1) respects
//! real time — an operation that returned before another was invoked comes first — and (2)
//! agrees with a sequential model of one etcd key: put, linearizable get, delete, and a
//! compare-and-swap txn. Operations whose outcome is unknown (a timeout, a lost connection)
//! may have taken effect at any point after their invocation, or never: they constrain no
//! other operation's position and their answer is not checked. The search is depth-first with
//! an explicit stack and memoizes (linearized set, model state) pairs, so it is exact and
//! terminates on the histories a few concurrent clients produce.
//!
//! # Revisions
//!
//! etcd's store has one revision for all keys: every write (a put, a delete that deleted
//! something, a txn that wrote) is applied at the next revision, and every answer carries the
//! revision it was served at. Per-key checking alone cannot see a wrong revision (a put told
//! it was applied at another write's revision looks fine on its key), so the model is the
//! global one — a total order of all operations, consistent with real time, in which writes
//! take consecutive revisions — and the checker tests conditions every such order satisfies.
//! Each is a *necessary* condition, so a history that fails one has no linearization in the
//! model (no false positives), and an operation of unknown outcome only ever relaxes them:
//! - Its stamp: a write's own revision, or the store revision a read-only answer (a get, a
//!   refused swap, a delete that deleted nothing) was served at. Along any linearization the
//!   store revision never goes down and each write raises it, so along each key's order the
//!   stamps never go down and a write's is above everything before it. The per-key search
//!   carries the highest stamp placed so far (`State::at`) and refuses an order that breaks
//!   this. (Unknown writes raise the store revision by an unknown amount; leaving `at` alone
//!   for them keeps it a lower bound, which only admits more orders. `at` is the highest stamp
//!   of the placed set, so memoization sees no more states than before.)
//! - Across keys ([`check_revisions`]): an operation that returned before another was invoked
//!   has a stamp no higher than the later one's (lower, if the later one is a write); every
//!   write has one revision (what its answer said equals the mod_revision every read of its
//!   unique value saw) and no two writes share one; a key read with (create, mod, version)
//!   was created by a put of that key at `create`, no known delete of it lies in
//!   `(create, mod]`, and the known puts of it in `[create, mod]` are at most `version`, with
//!   the unknown ones at least making up the difference.
//!
//! An unknown write whose unique value some answer showed did happen, at the mod_revision that
//! answer showed, before that answer returned: it is treated as answered from there on.

use std::collections::{BTreeMap, HashMap, HashSet};

/// What one operation did to, or saw of, one key.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Action {
    /// Put `value`.
    Put(String),
    /// Read; `Some(output)` is what a get that returned saw (`None` inside it: no key).
    Get,
    /// Delete the key.
    Delete,
    /// If the value is `expect`, set it to `new`.
    Cas { expect: String, new: String },
}

/// How an operation ended.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// A put or a delete that the server acknowledged; for a delete, how many keys went.
    Done(i64),
    /// A get's answer: the value, or none.
    Read(Option<String>),
    /// A compare-and-swap's answer: whether it swapped.
    Swapped(bool),
    /// A compare-and-swap that did not swap, and the value its else-branch get found.
    Refused(Option<String>),
    /// No answer: it may or may not have taken effect.
    Unknown,
}

/// One operation of the history.
#[derive(Clone, Debug)]
pub struct Op {
    /// Which client made it (for reports).
    pub client: usize,
    /// The key.
    pub key: String,
    /// What it did.
    pub action: Action,
    /// When it was invoked and when it returned (`u64::MAX` when it never did), on one clock.
    pub call: u64,
    pub ret: u64,
    /// How it ended.
    pub outcome: Outcome,
    /// The revisions its answer carried.
    pub revs: Revs,
}

/// The revisions an answer carried; zero and none where nothing was recorded (an unknown
/// outcome, or a history saved before revisions were).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Revs {
    /// The header revision: a write's own revision, or the store's when a read was served.
    pub header: i64,
    /// The key a get or a refused swap found: (create_revision, mod_revision, version).
    pub kv: Option<(i64, i64, i64)>,
}

/// Where an answer puts its operation in the store's revision sequence.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Stamp {
    /// Nothing recorded (or an unknown outcome).
    None,
    /// Read-only, served at this store revision.
    Read(i64),
    /// A write applied at this revision.
    Write(i64),
}

fn stamp(op: &Op) -> Stamp {
    let h = op.revs.header;
    if h <= 0 {
        return Stamp::None;
    }
    match (&op.action, &op.outcome) {
        (Action::Put(_), Outcome::Done(_)) | (Action::Cas { .. }, Outcome::Swapped(true)) => {
            Stamp::Write(h)
        }
        (Action::Delete, Outcome::Done(n)) if *n > 0 => Stamp::Write(h),
        (Action::Delete, Outcome::Done(_))
        | (Action::Get, Outcome::Read(_))
        | (Action::Cas { .. }, Outcome::Swapped(false) | Outcome::Refused(_)) => Stamp::Read(h),
        _ => Stamp::None,
    }
}

/// The sequential model of one key: its value (or no key), and the highest stamp of the
/// operations placed so far (a lower bound of the store revision at this point).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct State {
    value: Option<String>,
    at: i64,
}

/// The states `op` can leave from `state`, given its answer; empty when the answer is
/// impossible from `state`.
fn step(state: &State, op: &Op) -> Vec<State> {
    let at = match stamp(op) {
        Stamp::None => state.at,
        Stamp::Read(h) if h >= state.at => h,
        Stamp::Write(r) if r > state.at => r,
        Stamp::Read(_) | Stamp::Write(_) => return Vec::new(),
    };
    step_value(&state.value, op)
        .into_iter()
        .map(|value| State { value, at })
        .collect()
}

/// The values `op` can leave from `state`, given its answer.
fn step_value(state: &Option<String>, op: &Op) -> Vec<Option<String>> {
    let unknown = op.outcome == Outcome::Unknown;
    let mut out = Vec::with_capacity(2);
    match (&op.action, &op.outcome) {
        (Action::Put(v), _) => out.push(Some(v.clone())),
        (Action::Get, Outcome::Read(seen)) if seen == state => out.push(state.clone()),
        (Action::Get, _) if unknown => out.push(state.clone()),
        (Action::Get, _) => {}
        (Action::Delete, Outcome::Done(n)) => {
            if *n == i64::from(state.is_some()) {
                out.push(None);
            }
        }
        (Action::Delete, _) => out.push(None),
        (Action::Cas { expect, new }, outcome) => {
            let matches = state.as_deref() == Some(expect.as_str());
            match outcome {
                Outcome::Swapped(true) if matches => out.push(Some(new.clone())),
                Outcome::Swapped(false) if !matches => out.push(state.clone()),
                Outcome::Refused(seen) if !matches && seen == state => out.push(state.clone()),
                Outcome::Unknown => out.push(if matches {
                    Some(new.clone())
                } else {
                    state.clone()
                }),
                _ => {}
            }
        }
    }
    // An unknown operation that never happened is simply never linearized: it does not hold
    // up any other (its return is at infinity), so no "no effect" step is needed here.
    let _ = unknown;
    out
}

/// A key's history that has no linearization, with what the search got furthest to.
#[derive(Debug, Clone)]
pub struct Violation {
    /// The key.
    pub key: String,
    /// The most operations any attempted order linearized, of how many.
    pub linearized: usize,
    pub total: usize,
    /// The operation the longest attempt could not place next (the likely culprit).
    pub stuck_at: Option<Op>,
}

/// Bit set over operation indexes.
#[derive(Clone, PartialEq, Eq, Hash)]
struct Bits(Vec<u64>);

impl Bits {
    fn new(n: usize) -> Self {
        Self(vec![0; n.div_ceil(64)])
    }
    fn get(&self, i: usize) -> bool {
        self.0[i / 64] & (1 << (i % 64)) != 0
    }
    fn set(&mut self, i: usize) {
        self.0[i / 64] |= 1 << (i % 64);
    }
    fn unset(&mut self, i: usize) {
        self.0[i / 64] &= !(1 << (i % 64));
    }
}

/// Zobrist keys for a set of operation indexes: the set's fingerprint is the xor of its
/// members' keys, so placing or taking back an op updates it in O(1). The search remembers
/// the states it saw by fingerprint: a copy of the whole set per state cost n/8 bytes each and
/// ran a 30-minute history (5 keys, ~180,000 ops each) out of 24 GB. At 128 bits a collision
/// (which could only hide an order, never invent one) is out of reach of any budget.
struct Zobrist(Vec<u128>);

impl Zobrist {
    fn new(n: usize) -> Self {
        // splitmix64: fixed, so a recheck of a history searches exactly as the run did.
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut next = move || {
            x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = x;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^ (z >> 31)
        };
        Self(
            (0..n)
                .map(|_| (u128::from(next()) << 64) | u128::from(next()))
                .collect(),
        )
    }
}

/// The verdict on one key.
#[derive(Debug)]
pub enum KeyVerdict {
    /// Some order fits.
    Linearizable,
    /// No order fits.
    Violation(Box<Violation>),
    /// The search gave up after its budget of steps.
    Undecided,
}

/// How the search treats operations with an unknown outcome.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// Each one is a candidate of its own at every step: exact and simple, but every unknown
    /// operation multiplies the orders to try. Kept as the reference the fast mode is
    /// tested against, and to confirm a violation the fast mode reports.
    Exhaustive,
    /// An unknown operation is placed only right before an answered one that it enables (that
    /// is impossible from the current state and possible after it). Any linearization can be
    /// rearranged into that shape: an unknown op followed by one it does not enable is either
    /// overwritten by it (a put or delete), commutes with it (a read or a failed swap), or can
    /// be moved after it, since its own return is unbounded. Values nobody ever read or
    /// expected are also folded into one, since no operation can tell them apart.
    Lazy,
}

/// A state no observed value can equal: the stand-in for every value nobody observed.
const UNOBSERVED: &str = "\u{0}unobserved";

/// Checks one key's operations (all for the same key), within `budget` search steps.
pub fn check_key(ops: &[Op], budget: usize) -> KeyVerdict {
    match search(ops, budget, Mode::Lazy) {
        // The exhaustive search is the reference: if it finds an order, there is one. It gets
        // a quarter of the budget, as it confirms rather than decides.
        KeyVerdict::Violation(v) => match search(ops, budget / 4, Mode::Exhaustive) {
            KeyVerdict::Linearizable => KeyVerdict::Linearizable,
            _ => KeyVerdict::Violation(v),
        },
        verdict => verdict,
    }
}

/// The depth-first search for a linearization of one key's operations.
fn search(ops: &[Op], budget: usize, mode: Mode) -> KeyVerdict {
    let mut sorted: Vec<Op> = ops.to_vec();
    sorted.sort_by_key(|o| (o.call, o.ret));
    let ops: &[Op] = &sorted;
    let n = ops.len();
    let unknown = |i: usize| ops[i].outcome == Outcome::Unknown;
    let observed: HashSet<&str> = ops
        .iter()
        .flat_map(|o| {
            let read = match &o.outcome {
                Outcome::Read(Some(v)) | Outcome::Refused(Some(v)) => Some(v.as_str()),
                _ => None,
            };
            let expected = match &o.action {
                Action::Cas { expect, .. } => Some(expect.as_str()),
                _ => None,
            };
            read.into_iter().chain(expected)
        })
        .collect();
    let canon = |state: State| -> State {
        match state.value {
            Some(v) if mode == Mode::Lazy && !observed.contains(v.as_str()) => State {
                value: Some(UNOBSERVED.to_string()),
                at: state.at,
            },
            value => State {
                value,
                at: state.at,
            },
        }
    };
    // Answered and unknown ops apart, each in invocation order: scans start at the first
    // answered op not yet linearized and stop at the horizon, so a step costs the width of
    // the concurrency window, not the length of the history.
    let (known, unknowns): (Vec<usize>, Vec<usize>) = (0..n).partition(|i| !unknown(*i));
    // A candidate: the op to linearize next, the unknown op placed right before it (lazy
    // mode), and the state after both.
    type Candidate = (usize, Option<usize>, State);
    // A search frame: the ops its step placed (taken back when the frame is left), how many
    // answered ones are placed, the first answered one not placed (a position in `known`),
    // the candidates still to try. The placed set itself is one bit set shared by all frames.
    struct Frame {
        placed: Option<(usize, Option<usize>)>,
        count: usize,
        lo: usize,
        next: Vec<Candidate>,
    }
    let candidates = |done: &Bits, lo: usize, state: &State| -> Vec<Candidate> {
        // Only ops invoked before every pending op's return may go next. Ops are in call
        // order and a return follows its call, so past the smallest return so far no later
        // op can lower it.
        let mut horizon = u64::MAX;
        for &i in &known[lo..] {
            if ops[i].call > horizon {
                break;
            }
            if !done.get(i) {
                horizon = horizon.min(ops[i].ret);
            }
        }
        let known = &known;
        let unknowns = &unknowns;
        let open_known = || {
            known[lo..]
                .iter()
                .copied()
                .take_while(move |i| ops[*i].call <= horizon)
                .filter(|i| !done.get(*i))
        };
        let open_unknown = || {
            unknowns
                .iter()
                .copied()
                .take_while(move |i| ops[*i].call <= horizon)
                .filter(|i| !done.get(*i))
        };
        let mut out = Vec::new();
        if mode == Mode::Lazy {
            for i in open_known() {
                let direct = step(state, &ops[i]);
                if !direct.is_empty() {
                    out.extend(direct.into_iter().map(|next| (i, None, canon(next))));
                    continue;
                }
                // Impossible from here: try each distinct state an open unknown op leads to.
                let mut tried: Vec<State> = vec![state.clone()];
                for u in open_unknown() {
                    for mid in step(state, &ops[u]).into_iter().map(&canon) {
                        if tried.contains(&mid) {
                            continue;
                        }
                        for next in step(&mid, &ops[i]) {
                            out.push((i, Some(u), canon(next)));
                        }
                        tried.push(mid);
                    }
                }
            }
            return out;
        }
        for i in open_known() {
            out.extend(step(state, &ops[i]).into_iter().map(|next| (i, None, next)));
        }
        // Unknown deletes are interchangeable once invoked (same effect, no answer): offering
        // only the latest-invoked one loses nothing (the earlier ones stay available longer)
        // and keeps them from multiplying the orders to try.
        let mut unknown_delete = None;
        for i in open_unknown() {
            if ops[i].action == Action::Delete {
                unknown_delete = Some(i);
                continue;
            }
            out.extend(step(state, &ops[i]).into_iter().map(|next| (i, None, next)));
        }
        if let Some(i) = unknown_delete {
            out.extend(step(state, &ops[i]).into_iter().map(|next| (i, None, next)));
        }
        out
    };
    if known.is_empty() {
        return KeyVerdict::Linearizable;
    }
    let zobrist = Zobrist::new(n);
    let mut done = Bits::new(n);
    let mut fingerprint: u128 = 0;
    let toggle = |done: &mut Bits, fingerprint: &mut u128, i: usize, on: bool| {
        if on {
            done.set(i);
        } else {
            done.unset(i);
        }
        *fingerprint ^= zobrist.0[i];
    };
    let mut seen: HashSet<(u128, State)> = HashSet::new();
    let first = candidates(&done, 0, &State { value: None, at: 0 });
    let mut stack = vec![Frame {
        placed: None,
        count: 0,
        lo: 0,
        next: first,
    }];
    let mut best = (0usize, None::<Op>);
    let mut steps = 0usize;
    while let Some(frame) = stack.last_mut() {
        steps += 1;
        if steps > budget {
            return KeyVerdict::Undecided;
        }
        let Some((i, before, next_state)) = frame.next.pop() else {
            if let Some((i, before)) = frame.placed {
                toggle(&mut done, &mut fingerprint, i, false);
                if let Some(u) = before {
                    toggle(&mut done, &mut fingerprint, u, false);
                }
            }
            stack.pop();
            continue;
        };
        // Counts answered ops only: when it reaches their number, every one is placed.
        let count = frame.count + usize::from(!unknown(i));
        if count == known.len() {
            return KeyVerdict::Linearizable;
        }
        let from = frame.lo;
        toggle(&mut done, &mut fingerprint, i, true);
        if let Some(u) = before {
            toggle(&mut done, &mut fingerprint, u, true);
        }
        if !seen.insert((fingerprint, next_state.clone())) {
            toggle(&mut done, &mut fingerprint, i, false);
            if let Some(u) = before {
                toggle(&mut done, &mut fingerprint, u, false);
            }
            continue;
        }
        let mut lo = from;
        while lo < known.len() && done.get(known[lo]) {
            lo += 1;
        }
        let next = candidates(&done, lo, &next_state);
        if next.is_empty() && count >= best.0 {
            best = (count, known.get(lo).map(|j| ops[*j].clone()));
        }
        stack.push(Frame {
            placed: Some((i, before)),
            count,
            lo,
            next,
        });
    }
    let key = ops.first().map(|o| o.key.clone()).unwrap_or_default();
    KeyVerdict::Violation(Box::new(Violation {
        key,
        linearized: best.0,
        total: known.len(),
        stuck_at: best.1,
    }))
}

/// The verdict on a whole history.
#[derive(Debug, Default)]
pub struct Verdict {
    /// Keys with no linearization.
    pub violations: Vec<Violation>,
    /// Revisions no linearization can give (see [`check_revisions`]), described.
    pub revisions: Vec<String>,
    /// Of those, the ones that are not about real-time order: answers that disagree about
    /// which write is at which revision (a write given more than one revision, a revision
    /// given to two writes, a key's create/mod/version the acknowledged writes contradict),
    /// as an answer that belongs to another request gives. A stale read breaks only
    /// real-time order.
    pub wrong_write_revisions: usize,
    /// Keys the search gave up on (too many steps): neither proven nor refuted.
    pub undecided: Vec<String>,
    /// Operations checked, and of them with unknown outcome.
    pub ops: usize,
    pub unknown: usize,
}

impl Verdict {
    /// Whether the history was found not linearizable (by the search or by its revisions).
    pub fn violated(&self) -> bool {
        !self.violations.is_empty() || !self.revisions.is_empty()
    }
}

/// Gives every unknown write whose (unique) value someone observed — a read returned it, or a
/// compare-and-swap found it and swapped — the latest return its effect allows: before the
/// earliest observer returned. It did happen, and before that point, so it may hold up the
/// operations invoked after it like any answered one. Its revision is the mod_revision the
/// earliest observer that carried one saw (if another observer saw another, the revision
/// check reports it). All ops are of one key. (Every write's value is unique.)
fn resolve_observed_writes(ops: &mut [Op]) {
    let mut first_seen: HashMap<String, (u64, i64)> = HashMap::new();
    for o in ops.iter() {
        let value = match (&o.action, &o.outcome) {
            (_, Outcome::Read(Some(v)) | Outcome::Refused(Some(v))) => Some(v),
            (Action::Cas { expect, .. }, Outcome::Swapped(true)) => Some(expect),
            _ => None,
        };
        let seen_mod = match (&o.outcome, o.revs.kv) {
            (Outcome::Read(_) | Outcome::Refused(_), Some((_, m, _))) => m,
            _ => 0,
        };
        if let Some(v) = value {
            let (at, m) = first_seen.entry(v.clone()).or_insert((u64::MAX, 0));
            if o.ret < *at {
                *at = o.ret;
                if seen_mod > 0 {
                    *m = seen_mod;
                }
            } else if *m == 0 {
                *m = seen_mod;
            }
        }
    }
    for o in ops.iter_mut().filter(|o| o.outcome == Outcome::Unknown) {
        let seen = match &o.action {
            Action::Put(v) | Action::Cas { new: v, .. } => first_seen.get(v).copied(),
            _ => None,
        };
        if let Some((at, m)) = seen {
            o.ret = at.max(o.call);
            o.outcome = match o.action {
                Action::Cas { .. } => Outcome::Swapped(true),
                _ => Outcome::Done(0),
            };
            o.revs = Revs {
                header: m,
                kv: None,
            };
        }
    }
}

/// At most this many revision problems are described (the rest are counted).
const MAX_PROBLEMS: usize = 50;

/// One operation, for a report.
fn describe(o: &Op) -> String {
    let ret = if o.ret == u64::MAX {
        "?".to_string()
    } else {
        o.ret.to_string()
    };
    format!(
        "client {} {:?} on {} [{}..{ret}] -> {:?} {:?}",
        o.client, o.action, o.key, o.call, o.outcome, o.revs
    )
}

/// The conditions on revisions that every linearization in etcd's model meets, across keys
/// (the module documentation gives the argument); `ops` is the whole history, with the
/// unknown writes somebody observed resolved. Returns what fails, described, and how many of
/// those are not about real-time order (answers that disagree about which write is at which
/// revision).
fn check_revisions(ops: &[Op]) -> (Vec<String>, usize) {
    let mut problems = Vec::new();

    // Who wrote each value (unique per history, and each written to one key).
    let mut writer: HashMap<(&str, &str), usize> = HashMap::new();
    for (i, o) in ops.iter().enumerate() {
        if let Action::Put(v) | Action::Cas { new: v, .. } = &o.action {
            writer.insert((o.key.as_str(), v.as_str()), i);
        }
    }
    // Every revision each write was given: by its own answer, and by each read of its value
    // (the op that said so alongside).
    let mut claims: BTreeMap<usize, BTreeMap<i64, usize>> = BTreeMap::new();
    for (i, o) in ops.iter().enumerate() {
        if let Stamp::Write(r) = stamp(o) {
            claims.entry(i).or_default().entry(r).or_insert(i);
        }
        let (Outcome::Read(Some(v)) | Outcome::Refused(Some(v))) = &o.outcome else {
            continue;
        };
        let Some((c, m, n)) = o.revs.kv else {
            continue;
        };
        let h = o.revs.header;
        if !(1 <= c && c <= m && (h == 0 || m <= h) && n >= 1 && (n == 1) == (c == m)) {
            problems.push(format!(
                "{}: impossible revisions (create {c}, mod {m}, version {n}, header {h})",
                describe(o)
            ));
        }
        // A value nobody wrote is the per-key search's to report.
        if let Some(&w) = writer.get(&(o.key.as_str(), v.as_str())) {
            claims.entry(w).or_default().entry(m).or_insert(i);
        }
    }
    // One revision per write, one write per revision.
    let mut by_rev: BTreeMap<i64, usize> = BTreeMap::new();
    for (&w, revs) in &claims {
        if revs.len() > 1 {
            let said: Vec<String> = revs
                .iter()
                .map(|(r, src)| format!("{r} (by {})", describe(&ops[*src])))
                .collect();
            problems.push(format!(
                "{} was given more than one revision: {}",
                describe(&ops[w]),
                said.join("; ")
            ));
        }
        for (&r, &src) in revs {
            match by_rev.entry(r) {
                std::collections::btree_map::Entry::Vacant(e) => {
                    e.insert(w);
                }
                std::collections::btree_map::Entry::Occupied(e) if *e.get() != w => {
                    problems.push(format!(
                        "revision {r} was given to two writes: {} and {} (by {})",
                        describe(&ops[*e.get()]),
                        describe(&ops[w]),
                        describe(&ops[src])
                    ));
                }
                std::collections::btree_map::Entry::Occupied(_) => {}
            }
        }
    }
    check_versions(ops, &by_rev, &claims, &mut problems);
    // Everything but real-time order says that answers disagree about which write is at
    // which revision; real-time order alone is what a stale read breaks.
    let wrong_writes = problems.len();
    check_real_time(ops, &mut problems);
    if problems.len() > MAX_PROBLEMS {
        let more = problems.len() - MAX_PROBLEMS;
        problems.truncate(MAX_PROBLEMS);
        problems.push(format!("… and {more} more revision problems"));
    }
    (problems, wrong_writes)
}

/// An operation that returned before another was invoked was linearized before it, where the
/// store revision was no higher: its stamp is at most the later one's (below it, if the later
/// one is a write, which raised the revision).
fn check_real_time(ops: &[Op], problems: &mut Vec<String>) {
    let stamped: Vec<(usize, i64, bool)> = ops
        .iter()
        .enumerate()
        .filter_map(|(i, o)| match stamp(o) {
            Stamp::Read(h) => Some((i, h, false)),
            Stamp::Write(r) => Some((i, r, true)),
            Stamp::None => None,
        })
        .filter(|(i, _, _)| ops[*i].ret != u64::MAX)
        .collect();
    let mut by_ret = stamped.clone();
    by_ret.sort_by_key(|(i, _, _)| ops[*i].ret);
    let mut by_call = stamped;
    by_call.sort_by_key(|(i, _, _)| ops[*i].call);
    let mut j = 0;
    // The highest stamp of the operations returned so far, and whose.
    let mut highest: Option<(i64, usize)> = None;
    for &(b, s, write) in &by_call {
        while j < by_ret.len() && ops[by_ret[j].0].ret < ops[b].call {
            let (a, t, _) = by_ret[j];
            if highest.is_none_or(|(h, _)| t > h) {
                highest = Some((t, a));
            }
            j += 1;
        }
        if let Some((h, a)) = highest {
            if s < h || (write && s == h) {
                problems.push(format!(
                    "{} is at revision {s}, but {} returned before it was invoked, at {h}",
                    describe(&ops[b]),
                    describe(&ops[a])
                ));
            }
        }
    }
}

/// A key read with (create, mod, version) was created by a put of that key at `create`, was
/// not deleted in `(create, mod]`, and was put exactly `version` times in `[create, mod]`: the
/// known puts there are at most that many, and with the puts of unknown revision invoked
/// before the read returned, at least. If the last known write of the key before `create` is
/// a put, a delete of unknown revision must exist to have removed it.
fn check_versions(
    ops: &[Op],
    by_rev: &BTreeMap<i64, usize>,
    claims: &BTreeMap<usize, BTreeMap<i64, usize>>,
    problems: &mut Vec<String>,
) {
    #[derive(Default)]
    struct Writes {
        puts: Vec<i64>,
        deletes: Vec<i64>,
        /// Invocation times of writes whose revision is not known.
        unplaced_puts: Vec<u64>,
        unplaced_deletes: Vec<u64>,
    }
    let mut keys: HashMap<&str, Writes> = HashMap::new();
    for (&r, &w) in by_rev {
        let k = keys.entry(ops[w].key.as_str()).or_default();
        match ops[w].action {
            Action::Delete => k.deletes.push(r),
            _ => k.puts.push(r),
        }
    }
    for (i, o) in ops.iter().enumerate() {
        if claims.contains_key(&i) {
            continue;
        }
        let k = keys.entry(o.key.as_str()).or_default();
        match (&o.action, &o.outcome) {
            (Action::Put(_), Outcome::Done(_) | Outcome::Unknown)
            | (Action::Cas { .. }, Outcome::Swapped(true) | Outcome::Unknown) => {
                k.unplaced_puts.push(o.call);
            }
            (Action::Delete, Outcome::Unknown) => k.unplaced_deletes.push(o.call),
            (Action::Delete, Outcome::Done(n)) if *n > 0 => k.unplaced_deletes.push(o.call),
            _ => {}
        }
    }
    for k in keys.values_mut() {
        k.unplaced_puts.sort_unstable();
        k.unplaced_deletes.sort_unstable();
    }
    // Sorted already (from the ordered map). How many of `v` lie in `[lo, hi]`.
    let within = |v: &[i64], lo: i64, hi: i64| {
        v.partition_point(|r| *r <= hi)
            .saturating_sub(v.partition_point(|r| *r < lo))
    };
    for o in ops {
        let (Outcome::Read(Some(_)) | Outcome::Refused(Some(_))) = &o.outcome else {
            continue;
        };
        let Some((c, m, n)) = o.revs.kv else {
            continue;
        };
        let Some(k) = keys.get(o.key.as_str()) else {
            continue;
        };
        if let Some(&w) = by_rev.get(&c) {
            let creator = &ops[w];
            if creator.key != o.key || creator.action == Action::Delete {
                problems.push(format!(
                    "{} says the key was created at {c}, but that revision is {}",
                    describe(o),
                    describe(creator)
                ));
            }
        }
        let deletes = within(&k.deletes, c + 1, m);
        if deletes > 0 {
            problems.push(format!(
                "{} says the key lived from {c} to {m}, but it was deleted in between",
                describe(o)
            ));
        }
        let known = within(&k.puts, c, m);
        let unplaced = k.unplaced_puts.partition_point(|t| *t <= o.ret);
        if known > usize::try_from(n).unwrap_or(0) {
            problems.push(format!(
                "{} says version {n}, but {known} puts of the key are known in [{c}, {m}]",
                describe(o)
            ));
        } else if usize::try_from(n).unwrap_or(0) > known + unplaced {
            problems.push(format!(
                "{} says version {n}, but only {known} puts of the key are known in [{c}, {m}] \
                 and {unplaced} more could be",
                describe(o)
            ));
        }
        let last_put = k.puts[..k.puts.partition_point(|r| *r < c)].last();
        let last_delete = k.deletes[..k.deletes.partition_point(|r| *r < c)].last();
        if let Some(p) = last_put {
            let removed = last_delete.is_some_and(|d| d > p)
                || k.unplaced_deletes.partition_point(|t| *t <= o.ret) > 0;
            if !removed {
                problems.push(format!(
                    "{} says the key was created at {c}, but it was put at {p} and never deleted",
                    describe(o)
                ));
            }
        }
    }
}

/// Checks every key of `history`, and the revisions across keys.
pub fn check(history: &[Op], budget_per_key: usize) -> Verdict {
    let mut by_key: BTreeMap<&str, Vec<Op>> = BTreeMap::new();
    for op in history {
        by_key.entry(op.key.as_str()).or_default().push(op.clone());
    }
    let mut verdict = Verdict {
        ops: history.len(),
        unknown: history
            .iter()
            .filter(|o| o.outcome == Outcome::Unknown)
            .count(),
        ..Verdict::default()
    };
    for ops in by_key.values_mut() {
        resolve_observed_writes(ops);
    }
    let resolved: Vec<Op> = by_key.values().flatten().cloned().collect();
    (verdict.revisions, verdict.wrong_write_revisions) = check_revisions(&resolved);
    for (key, ops) in by_key {
        match check_key(&ops, budget_per_key) {
            KeyVerdict::Linearizable => {}
            KeyVerdict::Violation(v) => verdict.violations.push(*v),
            KeyVerdict::Undecided => verdict.undecided.push(key.to_string()),
        }
    }
    verdict
}

/// One line of `history.txt`: `call ret client=N ("key", Action) -> Outcome`, `?` for a
/// return that never came, then ` rev=H` and ` kv=C/M/V` when the answer carried them.
pub fn format_op(op: &Op) -> String {
    let ret = if op.ret == u64::MAX {
        "?".to_string()
    } else {
        op.ret.to_string()
    };
    let mut line = format!(
        "{} {ret} client={} {:?} -> {:?}",
        op.call,
        op.client,
        (&op.key, &op.action),
        op.outcome
    );
    if op.revs.header > 0 {
        line.push_str(&format!(" rev={}", op.revs.header));
    }
    if let Some((c, m, v)) = op.revs.kv {
        line.push_str(&format!(" kv={c}/{m}/{v}"));
    }
    line
}

/// Reads back the `history.txt` a run wrote: one operation per line,
/// `call ret client=N ("key", Action) -> Outcome`, with `?` for a return that never came.
pub fn parse_history(text: &str) -> Result<Vec<Op>, String> {
    text.lines()
        .enumerate()
        .filter(|(_, line)| !line.trim().is_empty())
        .map(|(n, line)| parse_line(line).ok_or_else(|| format!("line {}: {line}", n + 1)))
        .collect()
}

fn parse_line(line: &str) -> Option<Op> {
    let (head, rest) = line.split_once(" (")?;
    let mut fields = head.split(' ');
    let call = fields.next()?.parse().ok()?;
    let ret = match fields.next()? {
        "?" => u64::MAX,
        r => r.parse().ok()?,
    };
    let client = fields.next()?.strip_prefix("client=")?.parse().ok()?;
    let (op, outcome) = rest.split_once(") -> ")?;
    let mut revs = Revs::default();
    let outcome = match outcome.find(" rev=").or_else(|| outcome.find(" kv=")) {
        None => outcome,
        Some(at) => {
            for field in outcome[at..].split(' ').filter(|f| !f.is_empty()) {
                if let Some(h) = field.strip_prefix("rev=") {
                    revs.header = h.parse().ok()?;
                } else {
                    let mut kv = field.strip_prefix("kv=")?.split('/');
                    let mut next = || kv.next()?.parse::<i64>().ok();
                    revs.kv = Some((next()?, next()?, next()?));
                }
            }
            &outcome[..at]
        }
    };
    let (key, action) = op.split_once(", ")?;
    // Keys and values are quoted and never contain quotes (the workload makes them).
    let unquote = |s: &str| Some(s.strip_prefix('"')?.strip_suffix('"')?.to_string());
    let action = match action {
        "Get" => Action::Get,
        "Delete" => Action::Delete,
        a if a.starts_with("Put(") => {
            Action::Put(unquote(a.strip_prefix("Put(")?.strip_suffix(')')?)?)
        }
        a => {
            let inner = a.strip_prefix("Cas { expect: ")?.strip_suffix(" }")?;
            let (expect, new) = inner.split_once(", new: ")?;
            Action::Cas {
                expect: unquote(expect)?,
                new: unquote(new)?,
            }
        }
    };
    let inner = |o: &str, name: &str| o.strip_prefix(name)?.strip_suffix(')').map(str::to_string);
    let outcome = match outcome {
        "Unknown" => Outcome::Unknown,
        "Read(None)" => Outcome::Read(None),
        o if o.starts_with("Read(Some(") => {
            let quoted = o.strip_prefix("Read(Some(")?.strip_suffix("))")?;
            Outcome::Read(Some(unquote(quoted)?))
        }
        o if o.starts_with("Swapped(") => Outcome::Swapped(inner(o, "Swapped(")?.parse().ok()?),
        "Refused(None)" => Outcome::Refused(None),
        o if o.starts_with("Refused(Some(") => {
            let quoted = o.strip_prefix("Refused(Some(")?.strip_suffix("))")?;
            Outcome::Refused(Some(unquote(quoted)?))
        }
        o => Outcome::Done(inner(o, "Done(")?.parse().ok()?),
    };
    Some(Op {
        client,
        key: unquote(key)?,
        action,
        call,
        ret,
        outcome,
        revs,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn op(client: usize, call: u64, ret: u64, action: Action, outcome: Outcome) -> Op {
        Op {
            client,
            key: "k".into(),
            action,
            call,
            ret,
            outcome,
            revs: Revs::default(),
        }
    }
    fn put(c: usize, call: u64, ret: u64, v: &str) -> Op {
        op(c, call, ret, Action::Put(v.into()), Outcome::Done(0))
    }
    fn get(c: usize, call: u64, ret: u64, v: Option<&str>) -> Op {
        op(
            c,
            call,
            ret,
            Action::Get,
            Outcome::Read(v.map(str::to_string)),
        )
    }
    fn ok(h: &[Op]) -> bool {
        matches!(check_key(h, 1_000_000), KeyVerdict::Linearizable)
    }

    #[test]
    fn sequential_histories_pass_and_stale_reads_fail() {
        assert!(ok(&[
            put(0, 1, 2, "a"),
            get(1, 3, 4, Some("a")),
            put(0, 5, 6, "b"),
            get(1, 7, 8, Some("b"))
        ]));
        // A stale read: b was acknowledged before the read began.
        let stale = [
            put(0, 1, 2, "a"),
            put(0, 3, 4, "b"),
            get(1, 5, 6, Some("a")),
        ];
        let KeyVerdict::Violation(v) = check_key(&stale, 1_000_000) else {
            panic!("a stale read is a violation");
        };
        assert_eq!(v.stuck_at.map(|o| o.action), Some(Action::Get));
    }

    #[test]
    fn concurrent_operations_may_take_either_order() {
        // The read overlaps the put: it may see either value.
        assert!(ok(&[
            put(0, 1, 2, "a"),
            put(0, 3, 10, "b"),
            get(1, 4, 5, Some("a"))
        ]));
        assert!(ok(&[
            put(0, 1, 2, "a"),
            put(0, 3, 10, "b"),
            get(1, 4, 5, Some("b"))
        ]));
        // But two reads by one client cannot go back in time.
        assert!(!ok(&[
            put(0, 1, 2, "a"),
            put(0, 3, 10, "b"),
            get(1, 4, 5, Some("b")),
            get(1, 6, 7, Some("a")),
        ]));
    }

    #[test]
    fn a_lost_write_is_caught() {
        // Acknowledged, and a later read does not see it (nor anything after it).
        let h = [
            put(0, 1, 2, "a"),
            put(1, 3, 4, "b"),
            get(2, 5, 6, Some("a")),
            get(2, 7, 8, Some("a")),
        ];
        assert!(!ok(&h));
        // A read of a value never written is impossible too.
        assert!(!ok(&[put(0, 1, 2, "a"), get(1, 3, 4, Some("zzz"))]));
    }

    #[test]
    fn unknown_writes_may_or_may_not_have_happened() {
        let timed_out = op(0, 1, u64::MAX, Action::Put("x".into()), Outcome::Unknown);
        assert!(ok(&[timed_out.clone(), get(1, 5, 6, Some("x"))]));
        assert!(ok(&[timed_out.clone(), get(1, 5, 6, None)]));
        // ... but once seen, it cannot be unseen.
        assert!(!ok(&[
            timed_out,
            get(1, 5, 6, Some("x")),
            get(1, 7, 8, None)
        ]));
    }

    #[test]
    fn compare_and_swap_is_checked() {
        let cas = |c, call, ret, e: &str, n: &str, swapped| {
            op(
                c,
                call,
                ret,
                Action::Cas {
                    expect: e.into(),
                    new: n.into(),
                },
                Outcome::Swapped(swapped),
            )
        };
        assert!(ok(&[
            put(0, 1, 2, "a"),
            cas(1, 3, 4, "a", "b", true),
            get(2, 5, 6, Some("b"))
        ]));
        // A CAS that saw an impossible value: it swapped although the value was not "a".
        assert!(!ok(&[put(0, 1, 2, "z"), cas(1, 3, 4, "a", "b", true)]));
        // Two CAS from the same value cannot both succeed.
        assert!(!ok(&[
            put(0, 1, 2, "a"),
            cas(1, 3, 5, "a", "b", true),
            cas(2, 3, 5, "a", "c", true),
        ]));
    }

    #[test]
    fn deletes_report_what_they_deleted() {
        let del = |c, call, ret, n| op(c, call, ret, Action::Delete, Outcome::Done(n));
        assert!(ok(&[
            put(0, 1, 2, "a"),
            del(1, 3, 4, 1),
            get(2, 5, 6, None),
            del(1, 7, 8, 0)
        ]));
        assert!(!ok(&[put(0, 1, 2, "a"), del(1, 3, 4, 0)]));
    }

    #[test]
    fn a_whole_history_is_checked_per_key() {
        let mut h = vec![put(0, 1, 2, "a"), get(1, 3, 4, Some("a"))];
        let mut other = vec![
            put(0, 1, 2, "x"),
            put(0, 3, 4, "y"),
            get(1, 5, 6, Some("x")),
        ];
        for o in &mut other {
            o.key = "j".into();
        }
        h.extend(other);
        let v = check(&h, 1_000_000);
        assert_eq!(v.violations.len(), 1);
        assert_eq!(v.violations[0].key, "j");
        assert_eq!(v.ops, 5);
    }

    #[test]
    fn many_unknown_writes_that_nobody_saw_stay_tractable() {
        let mut h = Vec::new();
        for i in 0..200u64 {
            let t = i * 10;
            h.push(put(0, t, t + 2, &format!("v{i}")));
            h.push(get(1, t + 3, t + 4, Some(&format!("v{i}"))));
            // A write to an unavailable member: it never took effect, but nobody can tell.
            h.push(op(
                2,
                t + 1,
                u64::MAX,
                Action::Put(format!("lost{i}")),
                Outcome::Unknown,
            ));
        }
        let v = check(&h, 200_000);
        assert!(v.violations.is_empty() && v.undecided.is_empty(), "{v:?}");
        // One of them seen makes it count, and a history that needs it still passes.
        h.push(get(1, 5_000, 5_001, Some("lost7")));
        let v = check(&h, 5_000_000);
        assert!(v.violations.is_empty(), "{v:?}");
    }

    #[test]
    fn many_unknown_deletes_stay_tractable() {
        let mut h = Vec::new();
        for i in 0..300u64 {
            let t = i * 10;
            h.push(put(0, t, t + 2, &format!("v{i}")));
            h.push(get(1, t + 3, t + 4, Some(&format!("v{i}"))));
            h.push(op(2, t + 1, u64::MAX, Action::Delete, Outcome::Unknown));
        }
        // The last read saw nothing: one of the unknown deletes did happen, at the end.
        h.push(get(1, 5_000, 5_001, None));
        let v = check(&h, 1_000_000);
        assert!(v.violations.is_empty() && v.undecided.is_empty(), "{v:?}");
    }

    /// A random history of one key: operations linearized in order at 10, 20, 30, … with
    /// intervals around those points, answered from a register; some end unknown (half of
    /// those without effect), and with `corrupt` one answer is changed afterwards.
    fn random_history(rng: &mut crate::bench::XorShift, len: u64, corrupt: bool) -> Vec<Op> {
        let mut state: Option<String> = None;
        let mut h = Vec::new();
        for k in 0..len {
            let at = 100 + 10 * k;
            let call = at - rng.below(25) as u64;
            let ret = at + rng.below(25) as u64;
            let value = format!("v{k}");
            let action = match rng.below(4) {
                0 => Action::Put(value),
                1 => Action::Get,
                2 => Action::Delete,
                _ => Action::Cas {
                    expect: format!("v{}", rng.below(k as usize + 1)),
                    new: value,
                },
            };
            let unknown = rng.below(5) == 0;
            let before = state.clone();
            let takes_effect = !unknown || rng.below(2) == 0;
            let outcome = match &action {
                Action::Put(v) => {
                    if takes_effect {
                        state = Some(v.clone());
                    }
                    Outcome::Done(0)
                }
                Action::Get => Outcome::Read(before.clone()),
                Action::Delete => {
                    if takes_effect {
                        state = None;
                    }
                    Outcome::Done(i64::from(before.is_some()))
                }
                Action::Cas { expect, new } => {
                    let swapped = before.as_deref() == Some(expect.as_str());
                    if swapped && takes_effect {
                        state = Some(new.clone());
                    }
                    Outcome::Swapped(swapped)
                }
            };
            let (ret, outcome) = if unknown {
                (u64::MAX, Outcome::Unknown)
            } else {
                (ret, outcome)
            };
            h.push(op(0, call, ret, action, outcome));
        }
        if corrupt {
            let known: Vec<usize> = (0..h.len())
                .filter(|i| h[*i].outcome != Outcome::Unknown)
                .collect();
            if !known.is_empty() {
                let i = known[rng.below(known.len())];
                h[i].outcome = match &h[i].outcome {
                    Outcome::Read(Some(_)) => Outcome::Read(None),
                    Outcome::Read(None) => Outcome::Read(Some(format!("v{}", rng.below(i + 1)))),
                    Outcome::Swapped(b) => Outcome::Swapped(!b),
                    Outcome::Refused(_) => Outcome::Swapped(true),
                    Outcome::Done(n) => Outcome::Done(1 - n),
                    Outcome::Unknown => Outcome::Unknown,
                };
            }
        }
        h
    }

    #[test]
    fn a_written_history_reads_back() {
        let mut rng = crate::bench::XorShift::new(3);
        let h = random_history(&mut rng, 50, false);
        let text: String = h.iter().map(|o| format_op(o) + "\n").collect();
        let back = parse_history(&text).expect("parses");
        assert_eq!(back.len(), h.len());
        for (a, b) in h.iter().zip(&back) {
            assert_eq!(
                (&a.key, &a.action, &a.outcome, a.call, a.ret, a.revs),
                (&b.key, &b.action, &b.outcome, b.call, b.ret, b.revs)
            );
        }
        assert!(parse_history("12 ? client=1 (\"k\", Jump) -> Unknown").is_err());
    }

    #[test]
    fn the_lazy_search_agrees_with_the_exhaustive_one() {
        let mut rng = crate::bench::XorShift::new(42);
        let (mut linearizable, mut violations) = (0, 0);
        for round in 0..3_000 {
            let len = 4 + rng.below(10) as u64;
            let h = random_history(&mut rng, len, round % 2 == 1);
            let lazy = search(&h, 1_000_000, Mode::Lazy);
            let exhaustive = search(&h, 1_000_000, Mode::Exhaustive);
            match (&lazy, &exhaustive) {
                (KeyVerdict::Linearizable, KeyVerdict::Linearizable) => linearizable += 1,
                (KeyVerdict::Violation(_), KeyVerdict::Violation(_)) => violations += 1,
                _ => panic!("round {round}: lazy {lazy:?}, exhaustive {exhaustive:?} on {h:#?}"),
            }
        }
        // Both kinds must be well represented, or the comparison proves little.
        assert!(
            linearizable > 1_000 && violations > 500,
            "{linearizable} / {violations}"
        );
    }

    #[test]
    fn a_long_history_takes_about_one_step_per_operation() {
        // 10,000 operations, a fifth of them unknown: the search may not wander. A budget of
        // twice the length leaves room for little backtracking and none that grows with it.
        let mut rng = crate::bench::XorShift::new(11);
        let h = random_history(&mut rng, 10_000, false);
        assert!(matches!(
            search(&h, 20_000, Mode::Lazy),
            KeyVerdict::Linearizable
        ));
    }

    #[test]
    fn uncorrupted_random_histories_are_linearizable() {
        let mut rng = crate::bench::XorShift::new(7);
        for _ in 0..200 {
            let h = random_history(&mut rng, 200, false);
            assert!(ok(&h), "{h:#?}");
        }
    }

    /// An op on `key` with the revisions its answer carried.
    fn at(mut o: Op, key: &str, header: i64, kv: Option<(i64, i64, i64)>) -> Op {
        o.key = key.into();
        o.revs = Revs { header, kv };
        o
    }
    fn cas_op(c: usize, call: u64, ret: u64, e: &str, n: &str, outcome: Outcome) -> Op {
        op(
            c,
            call,
            ret,
            Action::Cas {
                expect: e.into(),
                new: n.into(),
            },
            outcome,
        )
    }
    /// Whether the whole history passes, revisions included.
    fn passes(h: &[Op]) -> bool {
        let v = check(h, 1_000_000);
        v.undecided.is_empty() && !v.violated()
    }

    #[test]
    fn a_put_acknowledged_with_the_wrong_revision_is_caught() {
        let valid = [
            at(put(0, 1, 2, "a"), "k", 2, None),
            at(put(1, 3, 4, "b"), "j", 3, None),
            at(get(2, 5, 6, Some("b")), "j", 3, Some((3, 3, 1))),
            at(get(2, 7, 8, Some("a")), "k", 3, Some((2, 2, 1))),
        ];
        assert!(passes(&valid));
        // Told it was applied at another write's revision (on another key).
        let mut h = valid.clone();
        h[1].revs.header = 2;
        h[2].revs = Revs::default();
        let v = check(&h, 1_000_000);
        assert!(v.violations.is_empty(), "per key it looks fine: {v:?}");
        assert!(!v.revisions.is_empty());
        assert!(v.wrong_write_revisions > 0, "{v:?}");
        // Told a revision its value was not read at.
        let mut h = valid.clone();
        h[1].revs.header = 4;
        assert!(!passes(&h));
        // Told a revision older than a write that finished before it began (another key).
        let h = [
            at(put(0, 1, 2, "a"), "k", 5, None),
            at(put(1, 3, 4, "b"), "j", 4, None),
        ];
        assert!(!passes(&h));
        // A read served at a revision below a write that finished before it began: a stale
        // read, not a write given the wrong revision.
        let h = [
            at(put(0, 1, 2, "a"), "k", 5, None),
            at(get(1, 3, 4, None), "j", 4, None),
        ];
        let v = check(&h, 1_000_000);
        assert!(v.violated() && v.wrong_write_revisions == 0, "{v:?}");
    }

    #[test]
    fn a_read_of_the_wrong_revisions_is_caught() {
        let h = |kv| {
            vec![
                at(put(0, 1, 2, "a"), "k", 2, None),
                at(put(0, 3, 4, "b"), "k", 3, None),
                at(get(1, 5, 6, Some("b")), "k", 3, Some(kv)),
            ]
        };
        assert!(passes(&h((2, 3, 2))));
        assert!(!passes(&h((2, 3, 1))), "version");
        assert!(
            !passes(&h((3, 3, 1))),
            "create revision: a was never deleted"
        );
        assert!(!passes(&h((2, 4, 3))), "mod revision");
        assert!(!passes(&h((1, 3, 3))), "created before any put of it");
        // A read whose header is not its data's revision: it saw a, but b (same key, rev 3)
        // is at or below the revision it says it was served at.
        assert!(!passes(&[
            at(put(0, 1, 2, "a"), "k", 2, None),
            at(put(0, 3, 10, "b"), "k", 3, None),
            at(get(1, 4, 5, Some("a")), "k", 3, Some((2, 2, 1))),
        ]));
        // The same read served at revision 2 is fine: b came after it.
        assert!(passes(&[
            at(put(0, 1, 2, "a"), "k", 2, None),
            at(put(0, 3, 10, "b"), "k", 3, None),
            at(get(1, 4, 5, Some("a")), "k", 2, Some((2, 2, 1))),
        ]));
        // Deleted in between: a recreated key starts at version 1 again.
        let del = |c, call, ret, n| op(c, call, ret, Action::Delete, Outcome::Done(n));
        let h = |kv| {
            vec![
                at(put(0, 1, 2, "a"), "k", 2, None),
                at(del(0, 3, 4, 1), "k", 3, None),
                at(put(0, 5, 6, "b"), "k", 4, None),
                at(get(1, 7, 8, Some("b")), "k", 4, Some(kv)),
            ]
        };
        assert!(passes(&h((4, 4, 1))));
        assert!(!passes(&h((2, 4, 2))));
    }

    #[test]
    fn txns_given_each_others_results_are_caught() {
        // Two swaps on two keys, concurrent, each acknowledged; reads show where they went.
        let h = |first, second| {
            vec![
                at(put(0, 1, 2, "a"), "k", 2, None),
                at(put(0, 3, 4, "x"), "j", 3, None),
                at(
                    cas_op(1, 5, 9, "a", "b", Outcome::Swapped(true)),
                    "k",
                    first,
                    None,
                ),
                at(
                    cas_op(2, 5, 9, "x", "y", Outcome::Swapped(true)),
                    "j",
                    second,
                    None,
                ),
                at(get(3, 10, 11, Some("b")), "k", 5, Some((2, 4, 2))),
                at(get(3, 12, 13, Some("y")), "j", 5, Some((3, 5, 2))),
            ]
        };
        assert!(passes(&h(4, 5)));
        // Each told the other's revision: per key all is well, the revisions are not.
        let v = check(&h(5, 4), 1_000_000);
        assert!(v.violations.is_empty());
        assert!(v.wrong_write_revisions > 0, "{v:?}");
        // A swap told it failed with the other's answer (what the key held afterwards), and
        // the other told it succeeded: the values give it away.
        let h = [
            at(put(0, 1, 2, "a"), "k", 2, None),
            at(
                cas_op(1, 3, 9, "a", "b", Outcome::Refused(Some("b".into()))),
                "k",
                3,
                Some((2, 3, 2)),
            ),
            at(
                cas_op(2, 3, 9, "a", "c", Outcome::Swapped(true)),
                "k",
                3,
                None,
            ),
            at(get(3, 10, 11, Some("b")), "k", 3, Some((2, 3, 2))),
        ];
        assert!(!passes(&h));
        // The true answers pass.
        let mut ok = h.clone();
        ok[1] = at(
            cas_op(1, 3, 9, "a", "b", Outcome::Swapped(true)),
            "k",
            3,
            None,
        );
        ok[2] = at(
            cas_op(2, 3, 9, "a", "c", Outcome::Refused(Some("b".into()))),
            "k",
            3,
            Some((2, 3, 2)),
        );
        assert!(passes(&ok));
    }

    #[test]
    fn unknown_writes_leave_revisions_open() {
        // A timed-out put on another key may have taken revision 3: the read's header 3 and
        // the next put's revision 4 are both fine, and so is the version it adds if seen.
        let lost = at(
            op(0, 1, u64::MAX, Action::Put("x".into()), Outcome::Unknown),
            "j",
            0,
            None,
        );
        assert!(passes(&[
            lost.clone(),
            at(put(1, 1, 2, "a"), "k", 2, None),
            at(get(2, 3, 4, Some("a")), "k", 3, Some((2, 2, 1))),
            at(put(1, 5, 6, "b"), "k", 4, None),
        ]));
        // Unknown puts of the same key may account for a version above the known puts.
        let maybe = at(
            op(0, 1, u64::MAX, Action::Put("m".into()), Outcome::Unknown),
            "k",
            0,
            None,
        );
        let h = [
            maybe.clone(),
            at(put(1, 1, 2, "a"), "k", 2, None),
            at(put(1, 5, 6, "b"), "k", 4, None),
            at(get(2, 7, 8, Some("b")), "k", 4, Some((2, 4, 3))),
        ];
        assert!(passes(&h));
        // Without it, that version is impossible.
        assert!(!passes(&h[1..]));
        // Seen, an unknown write has the revision it was seen at, and must fit in time.
        assert!(!passes(&[
            at(put(1, 1, 2, "a"), "k", 5, None),
            at(
                op(0, 3, u64::MAX, Action::Put("x".into()), Outcome::Unknown),
                "j",
                0,
                None
            ),
            at(get(2, 7, 8, Some("x")), "j", 5, Some((4, 4, 1))),
        ]));
    }

    /// A random history of `keys` keys with etcd's revisions: operations applied in order at
    /// 10, 20, 30, … to a store whose revision starts at 1, with intervals around those
    /// points; some end unknown (half of those without effect).
    fn random_store_history(rng: &mut crate::bench::XorShift, len: u64, keys: usize) -> Vec<Op> {
        // Per key: value, create, mod, version.
        let mut store: Vec<Option<(String, i64, i64, i64)>> = vec![None; keys];
        let mut rev = 1i64;
        let mut h = Vec::new();
        for n in 0..len {
            let point = 100 + 10 * n;
            let call = point - rng.below(25) as u64;
            let ret = point + rng.below(25) as u64;
            let k = rng.below(keys);
            let value = format!("v{n}");
            let unknown = rng.below(5) == 0;
            let effect = !unknown || rng.below(2) == 0;
            let kv = |s: &Option<(String, i64, i64, i64)>| s.as_ref().map(|s| (s.1, s.2, s.3));
            let cur = store[k].as_ref().map(|s| s.0.clone());
            let mut write = |store: &mut Vec<Option<(String, i64, i64, i64)>>, v: Option<&str>| {
                rev += 1;
                store[k] = v.map(|v| match &store[k] {
                    Some((_, c, _, ver)) => (v.to_string(), *c, rev, ver + 1),
                    None => (v.to_string(), rev, rev, 1),
                });
                rev
            };
            let (action, outcome, revs) = match rng.below(4) {
                0 => {
                    let r = if effect {
                        write(&mut store, Some(&value))
                    } else {
                        0
                    };
                    (
                        Action::Put(value),
                        Outcome::Done(0),
                        Revs {
                            header: r,
                            kv: None,
                        },
                    )
                }
                1 => (
                    Action::Get,
                    Outcome::Read(cur),
                    Revs {
                        header: rev,
                        kv: kv(&store[k]),
                    },
                ),
                2 => {
                    if cur.is_some() && effect {
                        let r = write(&mut store, None);
                        (
                            Action::Delete,
                            Outcome::Done(1),
                            Revs {
                                header: r,
                                kv: None,
                            },
                        )
                    } else {
                        let n = i64::from(cur.is_some());
                        (
                            Action::Delete,
                            Outcome::Done(n),
                            Revs {
                                header: rev,
                                kv: None,
                            },
                        )
                    }
                }
                _ => {
                    let expect = format!("v{}", rng.below(n as usize + 1));
                    let action = Action::Cas {
                        expect: expect.clone(),
                        new: value.clone(),
                    };
                    if cur.as_deref() == Some(expect.as_str()) {
                        let r = if effect {
                            write(&mut store, Some(&value))
                        } else {
                            0
                        };
                        (
                            action,
                            Outcome::Swapped(true),
                            Revs {
                                header: r,
                                kv: None,
                            },
                        )
                    } else {
                        let found = Revs {
                            header: rev,
                            kv: kv(&store[k]),
                        };
                        (action, Outcome::Refused(cur), found)
                    }
                }
            };
            let (ret, outcome, revs) = if unknown {
                (u64::MAX, Outcome::Unknown, Revs::default())
            } else {
                (ret, outcome, revs)
            };
            h.push(at(
                op(0, call, ret, action, outcome),
                &format!("k{k}"),
                0,
                None,
            ));
            if let Some(last) = h.last_mut() {
                last.revs = revs;
            }
        }
        h
    }

    #[test]
    fn random_histories_with_revisions_pass_and_borrowed_revisions_fail() {
        let mut rng = crate::bench::XorShift::new(5);
        let mut caught = 0;
        for round in 0..1_000 {
            let (len, keys) = (20 + rng.below(60) as u64, 1 + rng.below(3));
            let h = random_store_history(&mut rng, len, keys);
            let v = check(&h, 1_000_000);
            assert!(
                !v.violated() && v.undecided.is_empty(),
                "round {round}: {v:?} on {h:#?}"
            );
            // One acknowledged write told another acknowledged write's revision: caught, always.
            let writes: Vec<usize> = (0..h.len())
                .filter(|i| matches!(stamp(&h[*i]), Stamp::Write(_)))
                .collect();
            if writes.len() < 2 {
                continue;
            }
            let a = writes[rng.below(writes.len())];
            let b = writes[rng.below(writes.len())];
            if a == b {
                continue;
            }
            let mut bad = h.clone();
            bad[a].revs.header = h[b].revs.header;
            assert!(check(&bad, 1_000_000).violated(), "round {round}: {bad:#?}");
            caught += 1;
        }
        assert!(caught > 500, "{caught}");
    }

    #[test]
    fn many_concurrent_clients_stay_tractable() {
        // 8 clients, 300 ops each, overlapping heavily but consistent: a put's value is read
        // only after the put returned.
        let mut h = Vec::new();
        let mut t = 0;
        let mut last = None;
        for round in 0..300 {
            for c in 0..8u64 {
                let start = t + c;
                if c == 0 {
                    let v = format!("v{round}");
                    h.push(put(0, start, start + 20, &v));
                    last = Some((v, start + 20));
                } else if let Some((v, done)) = &last {
                    if start > *done {
                        h.push(get(c as usize, start, start + 5, Some(v)));
                    }
                }
            }
            t += 30;
        }
        assert!(ok(&h), "a consistent history of {} ops", h.len());
    }
}
