//! Checks what each watcher received against the key space's own history.
//!
//! A watcher started at revision 1 and resumed at its last revision plus one after every
//! break, so what it received must be exactly a prefix of the reference history (every event
//! of the checked keys from revision 1, read once the run is over): ordered (revisions never go
//! back, a revision's events in the reference's order), unique (no event twice), atomic and
//! without gaps (nothing of the reference skipped), and with the same values and prev_kv.
//!
//! The reference is the server's own account, so it is checked too, against what the clients
//! were told ([`check_history`]): each event's revision is the one its write was acknowledged
//! (or read) at, its key is the key its value was written to, a revision's event is the write
//! acknowledged at that revision, a prev_kv holds a value written to that key, and every
//! acknowledged write has its event.

use std::collections::{HashMap, HashSet};

use super::checker::{Action, Op, Outcome};
use super::workload::Seen;

/// At most this many problems per watcher are described (the rest are counted).
const MAX_PROBLEMS: usize = 50;

/// What in `events` contradicts the client `history`, and how many events are at another
/// revision than the write they show was acknowledged or read at, or at a revision the history
/// gives another write (an answer that belongs to another request). With `complete`, `events`
/// are all the events up to the last one's revision, so every write the history places at or
/// below it must be there.
pub fn check_history(events: &[Seen], history: &[Op], complete: bool) -> (Vec<String>, usize) {
    let mut wrong_revisions = 0;
    // The key each value was written to (values are unique), and the revisions its write was
    // acknowledged or read at.
    let mut written: HashMap<&str, (&str, HashSet<i64>)> = HashMap::new();
    // What the history says each revision is: key, and the value put (none: a delete).
    let mut at: HashMap<i64, (&str, Option<&str>)> = HashMap::new();
    for o in history {
        if let Action::Put(v) | Action::Cas { new: v, .. } = &o.action {
            let entry = written
                .entry(v.as_str())
                .or_insert((o.key.as_str(), HashSet::new()));
            let acked = matches!(
                (&o.action, &o.outcome),
                (Action::Put(_), Outcome::Done(_)) | (Action::Cas { .. }, Outcome::Swapped(true))
            );
            if acked && o.revs.header > 0 {
                entry.1.insert(o.revs.header);
                at.insert(o.revs.header, (o.key.as_str(), Some(v.as_str())));
            }
        }
        if let (Action::Delete, Outcome::Done(n)) = (&o.action, &o.outcome) {
            if *n > 0 && o.revs.header > 0 {
                at.insert(o.revs.header, (o.key.as_str(), None));
            }
        }
    }
    for o in history {
        if let (Outcome::Read(Some(v)) | Outcome::Refused(Some(v)), Some((_, m, _))) =
            (&o.outcome, o.revs.kv)
        {
            if let Some(w) = written.get_mut(v.as_str()) {
                w.1.insert(m);
                at.entry(m).or_insert((w.0, Some(v.as_str())));
            }
        }
    }
    let mut wrong = Vec::new();
    for e in events {
        if e.put {
            match written.get(e.value.as_str()) {
                None => wrong.push(format!("{e:?}: nobody wrote that value")),
                Some((key, _)) if *key != e.key => {
                    wrong.push(format!("{e:?}: that value was written to {key}"));
                }
                Some((_, revs)) if !revs.is_empty() && !revs.contains(&e.rev) => {
                    wrong_revisions += 1;
                    wrong.push(format!(
                        "{e:?}: its write was acknowledged or read at revision {revs:?}"
                    ));
                }
                Some(_) => {}
            }
        }
        if let Some((key, value)) = at.get(&e.rev) {
            let same = *key == e.key && *value == e.put.then_some(e.value.as_str());
            if !same {
                wrong_revisions += 1;
                wrong.push(format!(
                    "{e:?}: revision {} is {} of {key}",
                    e.rev,
                    value.map_or("a delete".to_string(), |v| format!("the put of {v:?}"))
                ));
            }
        }
        if let Some(p) = &e.prev {
            if written.get(p.as_str()).is_none_or(|(key, _)| *key != e.key) {
                wrong.push(format!(
                    "{e:?}: prev_kv {p:?} was never written to {}",
                    e.key
                ));
            }
        }
    }
    if complete {
        let last = events.last().map_or(0, |e| e.rev);
        let have: HashSet<(i64, &str)> = events.iter().map(|e| (e.rev, e.key.as_str())).collect();
        let mut missing: Vec<(&i64, &(&str, Option<&str>))> = at
            .iter()
            .filter(|(r, (key, _))| **r <= last && !have.contains(&(**r, *key)))
            .collect();
        missing.sort();
        for (r, (key, value)) in missing {
            wrong.push(format!(
                "no event at revision {r}, where {key} was {}",
                value.map_or("deleted".to_string(), |v| format!("put {v:?}"))
            ));
        }
    }
    if wrong.len() > MAX_PROBLEMS {
        let more = wrong.len() - MAX_PROBLEMS;
        wrong.truncate(MAX_PROBLEMS);
        wrong.push(format!("… and {more} more"));
    }
    (wrong, wrong_revisions)
}

/// What is wrong with one watcher's events, if anything.
pub fn check(watcher: &[Seen], reference: &[Seen]) -> Vec<String> {
    let mut wrong = Vec::new();
    for (i, pair) in watcher.windows(2).enumerate() {
        if pair[1].rev < pair[0].rev {
            wrong.push(format!(
                "event {}: revision {} after {} (ordered)",
                i + 1,
                pair[1].rev,
                pair[0].rev
            ));
        }
    }
    let mut seen = std::collections::HashSet::new();
    for e in watcher {
        if !seen.insert((e.rev, e.key.clone())) {
            wrong.push(format!("{}@{} received twice (unique)", e.key, e.rev));
        }
    }
    if watcher.len() > reference.len() {
        wrong.push(format!(
            "{} events received, the history has only {}",
            watcher.len(),
            reference.len()
        ));
    }
    if let Some((i, (got, want))) = watcher
        .iter()
        .zip(reference)
        .enumerate()
        .find(|(_, (g, w))| g != w)
    {
        wrong.push(format!(
            "event {i} differs from the history (gap, order, value or prev_kv): got {got:?}, \
             the history has {want:?}"
        ));
    }
    wrong
}

#[cfg(test)]
mod tests {
    use super::super::checker::Revs;
    use super::*;

    fn e(rev: i64, key: &str, value: &str, prev: Option<&str>) -> Seen {
        Seen {
            rev,
            key: key.into(),
            put: true,
            value: value.into(),
            prev: prev.map(str::to_string),
        }
    }

    fn write(key: &str, action: Action, outcome: Outcome, rev: i64) -> Op {
        Op {
            client: 0,
            key: key.into(),
            action,
            call: 0,
            ret: 1,
            outcome,
            revs: Revs {
                header: rev,
                kv: None,
            },
        }
    }

    #[test]
    fn events_are_checked_against_what_the_clients_were_told() {
        let history = vec![
            write("a", Action::Put("1".into()), Outcome::Done(0), 2),
            write("a", Action::Put("2".into()), Outcome::Done(0), 3),
            write("b", Action::Delete, Outcome::Done(1), 5),
            write("b", Action::Put("x".into()), Outcome::Unknown, 0),
        ];
        let mut deleted = e(5, "b", "", Some("x"));
        deleted.put = false;
        let events = vec![
            e(2, "a", "1", None),
            e(3, "a", "2", Some("1")),
            e(4, "b", "x", None),
            deleted,
        ];
        assert_eq!(
            check_history(&events, &history, true),
            (Vec::<String>::new(), 0)
        );
        // An event at another revision than its write was acknowledged at.
        let mut bad = events.clone();
        bad[1].rev = 4;
        assert_eq!(
            check_history(&bad, &history, false).1,
            1,
            "a put acknowledged at 3"
        );
        // An event for a key its value was not written to.
        let mut bad = events.clone();
        bad[2].key = "a".into();
        assert!(!check_history(&bad, &history, false).0.is_empty());
        // A revision's event that is not the write acknowledged there.
        let mut bad = events.clone();
        bad[3].put = true;
        bad[3].value = "x".into();
        assert!(check_history(&bad, &history, false).1 > 0);
        // A value nobody wrote, and a prev_kv of another key.
        let mut bad = events.clone();
        bad[0].value = "zz".into();
        assert!(!check_history(&bad, &history, false).0.is_empty());
        let mut bad = events.clone();
        bad[1].prev = Some("x".into());
        assert!(!check_history(&bad, &history, false).0.is_empty());
        // An acknowledged write with no event, when the events are complete.
        let gap = vec![events[0].clone(), events[2].clone(), events[3].clone()];
        assert!(check_history(&gap, &history, false).0.is_empty());
        assert!(!check_history(&gap, &history, true).0.is_empty());
    }

    #[test]
    fn a_prefix_of_the_history_is_right_and_everything_else_is_caught() {
        let history = vec![
            e(2, "a", "1", None),
            e(3, "a", "2", Some("1")),
            e(4, "b", "1", None),
            e(4, "c", "1", None),
        ];
        assert!(check(&history[..3], &history).is_empty());
        assert!(check(&history, &history).is_empty());
        // A gap.
        assert!(!check(&[history[0].clone(), history[2].clone()], &history).is_empty());
        // A duplicate.
        assert!(!check(&[history[0].clone(), history[0].clone()], &history).is_empty());
        // A wrong prev_kv.
        let mut bad = history.clone();
        bad[1].prev = Some("0".into());
        assert!(!check(&bad, &history).is_empty());
        // A revision's events out of order.
        let swapped = vec![
            history[0].clone(),
            history[1].clone(),
            history[3].clone(),
            history[2].clone(),
        ];
        assert!(!check(&swapped, &history).is_empty());
    }
}
