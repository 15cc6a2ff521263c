//! A linearizability checker for a key-value history, in the Wing–Gong/Lowe style.
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

use std::collections::HashSet;

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
}

/// The sequential model: the key's value, or no key.
type State = Option<String>;

/// The states `op` can leave from `state`, given its answer; empty when the answer is
/// impossible from `state`.
fn step(state: &State, op: &Op) -> Vec<State> {
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
                Outcome::Read(Some(v)) => Some(v.as_str()),
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
        match state {
            Some(v) if mode == Mode::Lazy && !observed.contains(v.as_str()) => {
                Some(UNOBSERVED.to_string())
            }
            other => other,
        }
    };
    // Answered and unknown ops apart, each in invocation order: scans start at the first
    // answered op not yet linearized and stop at the horizon, so a step costs the width of
    // the concurrency window, not the length of the history.
    let (known, unknowns): (Vec<usize>, Vec<usize>) = (0..n).partition(|i| !unknown(*i));
    // A candidate: the op to linearize next, the unknown op placed right before it (lazy
    // mode), and the state after both.
    type Candidate = (usize, Option<usize>, State);
    // A search frame: the ops linearized so far, how many answered ones, the first answered
    // one not linearized (a position in `known`), the candidates still to try.
    struct Frame {
        done: Bits,
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
    let start = Bits::new(n);
    let mut seen: HashSet<(Bits, State)> = HashSet::new();
    let first = candidates(&start, 0, &None);
    let mut stack = vec![Frame {
        done: start,
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
            stack.pop();
            continue;
        };
        let mut done = frame.done.clone();
        done.set(i);
        // Counts answered ops only: when it reaches their number, every one is placed.
        let count = frame.count + usize::from(!unknown(i));
        if let Some(u) = before {
            done.set(u);
        }
        if count == known.len() {
            return KeyVerdict::Linearizable;
        }
        if !seen.insert((done.clone(), next_state.clone())) {
            continue;
        }
        let mut lo = frame.lo;
        while lo < known.len() && done.get(known[lo]) {
            lo += 1;
        }
        let next = candidates(&done, lo, &next_state);
        if next.is_empty() && count >= best.0 {
            best = (count, known.get(lo).map(|j| ops[*j].clone()));
        }
        stack.push(Frame {
            done,
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
    /// Keys the search gave up on (too many steps): neither proven nor refuted.
    pub undecided: Vec<String>,
    /// Operations checked, and of them with unknown outcome.
    pub ops: usize,
    pub unknown: usize,
}

/// Gives every unknown write whose (unique) value someone observed — a read returned it, or a
/// compare-and-swap found it and swapped — the latest return its effect allows: before the
/// earliest observer returned. It did happen, and before that point, so it may hold up the
/// operations invoked after it like any answered one. (Every write's value is unique.)
fn resolve_observed_writes(ops: &mut [Op]) {
    let mut first_seen: std::collections::HashMap<String, u64> = std::collections::HashMap::new();
    for o in ops.iter() {
        let value = match (&o.action, &o.outcome) {
            (_, Outcome::Read(Some(v))) => Some(v),
            (Action::Cas { expect, .. }, Outcome::Swapped(true)) => Some(expect),
            _ => None,
        };
        if let Some(v) = value {
            let at = first_seen.entry(v.clone()).or_insert(u64::MAX);
            *at = (*at).min(o.ret);
        }
    }
    for o in ops.iter_mut().filter(|o| o.outcome == Outcome::Unknown) {
        let seen = match &o.action {
            Action::Put(v) | Action::Cas { new: v, .. } => first_seen.get(v).copied(),
            _ => None,
        };
        if let Some(at) = seen {
            o.ret = at.max(o.call);
            o.outcome = match o.action {
                Action::Cas { .. } => Outcome::Swapped(true),
                _ => Outcome::Done(0),
            };
        }
    }
}

/// Checks every key of `history`.
pub fn check(history: &[Op], budget_per_key: usize) -> Verdict {
    let mut by_key: std::collections::BTreeMap<&str, Vec<Op>> = std::collections::BTreeMap::new();
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
    for (key, mut ops) in by_key {
        resolve_observed_writes(&mut ops);
        match check_key(&ops, budget_per_key) {
            KeyVerdict::Linearizable => {}
            KeyVerdict::Violation(v) => verdict.violations.push(*v),
            KeyVerdict::Undecided => verdict.undecided.push(key.to_string()),
        }
    }
    verdict
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
        o => Outcome::Done(inner(o, "Done(")?.parse().ok()?),
    };
    Some(Op {
        client,
        key: unquote(key)?,
        action,
        call,
        ret,
        outcome,
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
        let text: String = h
            .iter()
            .map(|o| {
                let ret = if o.ret == u64::MAX {
                    "?".to_string()
                } else {
                    o.ret.to_string()
                };
                format!(
                    "{} {ret} client={} {:?} -> {:?}\n",
                    o.call,
                    o.client,
                    (&o.key, &o.action),
                    o.outcome
                )
            })
            .collect();
        let back = parse_history(&text).expect("parses");
        assert_eq!(back.len(), h.len());
        for (a, b) in h.iter().zip(&back) {
            assert_eq!(
                (&a.key, &a.action, &a.outcome, a.call, a.ret),
                (&b.key, &b.action, &b.outcome, b.call, b.ret)
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
