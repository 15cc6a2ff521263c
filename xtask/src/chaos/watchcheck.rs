//! Checks what each watcher received against the key space's own history.
//!
//! A watcher started at revision 1 and resumed at its last revision plus one after every
//! break, so what it received must be exactly a prefix of the reference history (every event
//! of the checked keys from revision 1, read once the run is over): ordered (revisions never go
//! back, a revision's events in the reference's order), unique (no event twice), atomic and
//! without gaps (nothing of the reference skipped), and with the same values and prev_kv.

use super::workload::Seen;

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
