//! Finds the synced watchers whose range holds a key, at a cost that grows with the matches.
//!
//! Each range is filed by its shape, decided once at registration:
//! - one key: a hash map from the key — O(1 + matches) per lookup;
//! - a prefix (`[p, prefix_end(p))`, what clients' `WithPrefix` sends): a hash map from the
//!   prefix, probed once per distinct prefix length registered — O(lengths + matches);
//! - every key from a start on: an ordered map by start, all of whose entries at or below the
//!   key match — O(log n + matches);
//! - any other interval `[a, b)`: an ordered map by start, scanning every interval that starts
//!   at or below the key and checking its end — O(intervals starting at or below the key).
//!   Such ranges are rare (clients send keys and prefixes); an interval tree would make this
//!   O(log n + matches) if they ever are not.
//! - an empty range (`b <= a`) matches nothing and is not filed.

use std::collections::{BTreeMap, HashMap};
use std::ops::Bound;

use mvcc::{prefix_end, KeyRange};

use crate::WatchId;

/// How a range is filed in the [`Index`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Shape {
    Key(Vec<u8>),
    Prefix(Vec<u8>),
    FromKey(Vec<u8>),
    Interval { start: Vec<u8>, end: Vec<u8> },
    Empty,
}

impl Shape {
    pub(crate) fn of(range: &KeyRange) -> Self {
        if range.is_empty() {
            return Shape::Empty;
        }
        if let Some(key) = range.single() {
            return Shape::Key(key.to_vec());
        }
        let start = range.start().to_vec();
        match range.end() {
            None => Shape::FromKey(start),
            Some(end) if end == prefix_end(&start).as_slice() => Shape::Prefix(start),
            Some(end) => Shape::Interval {
                end: end.to_vec(),
                start,
            },
        }
    }
}

/// The synced watchers, filed by the shape of their range.
#[derive(Debug, Default)]
pub(crate) struct Index {
    keys: HashMap<Vec<u8>, Vec<WatchId>>,
    prefixes: HashMap<Vec<u8>, Vec<WatchId>>,
    /// How many distinct prefixes of each length are filed: the lengths a lookup probes.
    prefix_lengths: BTreeMap<usize, usize>,
    from_keys: BTreeMap<Vec<u8>, Vec<WatchId>>,
    intervals: BTreeMap<Vec<u8>, Vec<(WatchId, Vec<u8>)>>,
}

impl Index {
    pub(crate) fn insert(&mut self, id: WatchId, shape: &Shape) {
        match shape {
            Shape::Key(key) => self.keys.entry(key.clone()).or_default().push(id),
            Shape::Prefix(prefix) => {
                let ids = self.prefixes.entry(prefix.clone()).or_default();
                if ids.is_empty() {
                    *self.prefix_lengths.entry(prefix.len()).or_default() += 1;
                }
                ids.push(id);
            }
            Shape::FromKey(start) => self.from_keys.entry(start.clone()).or_default().push(id),
            Shape::Interval { start, end } => self
                .intervals
                .entry(start.clone())
                .or_default()
                .push((id, end.clone())),
            Shape::Empty => {}
        }
    }

    /// Removes `id`, filed under `shape`. Costs O(watchers filed under the same key).
    pub(crate) fn remove(&mut self, id: WatchId, shape: &Shape) {
        match shape {
            Shape::Key(key) => remove_from(&mut self.keys, key, |w| *w == id),
            Shape::Prefix(prefix) => {
                remove_from(&mut self.prefixes, prefix, |w| *w == id);
                if !self.prefixes.contains_key(prefix) {
                    if let Some(n) = self.prefix_lengths.get_mut(&prefix.len()) {
                        *n -= 1;
                        if *n == 0 {
                            self.prefix_lengths.remove(&prefix.len());
                        }
                    }
                }
            }
            Shape::FromKey(start) => {
                if let Some(ids) = self.from_keys.get_mut(start) {
                    ids.retain(|w| *w != id);
                    if ids.is_empty() {
                        self.from_keys.remove(start);
                    }
                }
            }
            Shape::Interval { start, .. } => {
                if let Some(ids) = self.intervals.get_mut(start) {
                    ids.retain(|(w, _)| *w != id);
                    if ids.is_empty() {
                        self.intervals.remove(start);
                    }
                }
            }
            Shape::Empty => {}
        }
    }

    /// Calls `found` with every filed watcher whose range holds `key`; returns how many
    /// candidates were examined (the matches plus the intervals rejected by their end).
    pub(crate) fn for_each_match(&self, key: &[u8], mut found: impl FnMut(WatchId)) -> usize {
        let mut examined = 0;
        let mut hit = |ids: &[WatchId]| {
            examined += ids.len();
            ids.iter().copied().for_each(&mut found);
        };
        if let Some(ids) = self.keys.get(key) {
            hit(ids);
        }
        for &len in self.prefix_lengths.keys() {
            if len > key.len() {
                break;
            }
            if let Some(ids) = self.prefixes.get(&key[..len]) {
                hit(ids);
            }
        }
        for ids in self
            .from_keys
            .range::<[u8], _>(upto(key))
            .map(|(_, ids)| ids)
        {
            hit(ids);
        }
        for entries in self.intervals.range::<[u8], _>(upto(key)).map(|(_, e)| e) {
            for (id, end) in entries {
                examined += 1;
                if key < end.as_slice() {
                    found(*id);
                }
            }
        }
        examined
    }
}

/// Every key at or below `key`, as a range over an ordered map keyed by `Vec<u8>`.
fn upto(key: &[u8]) -> (Bound<&[u8]>, Bound<&[u8]>) {
    (Bound::Unbounded, Bound::Included(key))
}

fn remove_from(
    map: &mut HashMap<Vec<u8>, Vec<WatchId>>,
    key: &[u8],
    is_it: impl Fn(&WatchId) -> bool,
) {
    if let Some(ids) = map.get_mut(key) {
        if let Some(at) = ids.iter().position(is_it) {
            ids.swap_remove(at);
        }
        if ids.is_empty() {
            map.remove(key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn matches(index: &Index, key: &[u8]) -> Vec<u64> {
        let mut ids = Vec::new();
        index.for_each_match(key, |id| ids.push(id.0));
        ids.sort_unstable();
        ids
    }

    #[test]
    fn shapes() {
        let r = |a: &[u8], b: &[u8]| Shape::of(&KeyRange::new(a, b));
        assert_eq!(r(b"a", b""), Shape::Key(b"a".to_vec()));
        assert_eq!(r(b"a/", b"a0"), Shape::Prefix(b"a/".to_vec()));
        assert_eq!(r(b"a\xff", b"b"), Shape::Prefix(b"a\xff".to_vec()));
        assert_eq!(r(b"a", b"\0"), Shape::FromKey(b"a".to_vec()));
        assert_eq!(r(b"", b"\0"), Shape::FromKey(Vec::new()));
        assert_eq!(
            r(b"a", b"c"),
            Shape::Interval {
                start: b"a".to_vec(),
                end: b"c".to_vec()
            }
        );
        assert_eq!(r(b"c", b"a"), Shape::Empty);
    }

    /// Every shape against a brute-force `KeyRange::contains`, then removal of each.
    #[test]
    fn lookups_agree_with_contains() {
        let ranges: Vec<KeyRange> = vec![
            KeyRange::new(b"a", b""),
            KeyRange::new(b"a", b""),
            KeyRange::new(b"ab", b""),
            KeyRange::prefix(b"a"),
            KeyRange::prefix(b"ab"),
            KeyRange::prefix(b""),
            KeyRange::prefix(b"b\xff"),
            KeyRange::new(b"b", b"\0"),
            KeyRange::new(b"", b"\0"),
            KeyRange::new(b"aa", b"ac"),
            KeyRange::new(b"a", b"b"),
            KeyRange::new(b"c", b"a"),
        ];
        let keys: [&[u8]; 10] = [
            b"", b"a", b"a\0", b"aa", b"ab", b"abc", b"ac", b"b", b"b\xff1", b"c",
        ];
        let mut index = Index::default();
        for (i, r) in ranges.iter().enumerate() {
            index.insert(WatchId(i as u64), &Shape::of(r));
        }
        let check = |index: &Index, live: &[usize]| {
            for key in keys {
                let want: Vec<u64> = live
                    .iter()
                    .filter(|&&i| ranges[i].contains(key))
                    .map(|&i| i as u64)
                    .collect();
                assert_eq!(matches(index, key), want, "key {key:?}");
            }
        };
        let mut live: Vec<usize> = (0..ranges.len()).collect();
        check(&index, &live);
        while let Some(i) = live.pop() {
            index.remove(WatchId(i as u64), &Shape::of(&ranges[i]));
            // Remove from the middle too, so swap_remove is exercised.
            if let Some(j) = live.first().copied() {
                index.remove(WatchId(j as u64), &Shape::of(&ranges[j]));
                live.remove(0);
            }
            check(&index, &live);
        }
        assert!(index.keys.is_empty() && index.prefixes.is_empty());
        assert!(index.prefix_lengths.is_empty() && index.from_keys.is_empty());
        assert!(index.intervals.is_empty());
    }

    #[test]
    fn many_single_keys_examine_only_the_match() {
        let mut index = Index::default();
        for i in 0..100_000u64 {
            index.insert(WatchId(i), &Shape::Key(format!("k{i}").into_bytes()));
        }
        let mut found = Vec::new();
        assert_eq!(index.for_each_match(b"k4242", |id| found.push(id)), 1);
        assert_eq!(found, [WatchId(4242)]);
        assert_eq!(index.for_each_match(b"nope", |_| {}), 0);
    }
}
