//! etcd's conventions for naming a key or a key range with `key` and `range_end`.

/// The keys a request names: one key, every key from a start on, or a half-open interval.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyRange {
    start: Vec<u8>,
    end: RangeEnd,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum RangeEnd {
    Single,
    Unbounded,
    Before(Vec<u8>),
}

impl KeyRange {
    /// Reads etcd's convention: empty `range_end` is `key` alone, `[0]` is every key from `key`
    /// on, anything else is `[key, range_end)` (empty when `range_end <= key`).
    pub fn new(key: &[u8], range_end: &[u8]) -> Self {
        let end = match range_end {
            [] => RangeEnd::Single,
            [0] => RangeEnd::Unbounded,
            end => RangeEnd::Before(end.to_vec()),
        };
        Self {
            start: key.to_vec(),
            end,
        }
    }

    /// The range of every key starting with `prefix`.
    pub fn prefix(prefix: &[u8]) -> Self {
        Self::new(prefix, &prefix_end(prefix))
    }

    /// The first key of the range.
    pub fn start(&self) -> &[u8] {
        &self.start
    }

    /// The single key, when the range names exactly one.
    pub fn single(&self) -> Option<&[u8]> {
        matches!(self.end, RangeEnd::Single).then_some(self.start.as_slice())
    }

    /// The exclusive end, or `None` when the range runs to the last key.
    pub fn end(&self) -> Option<&[u8]> {
        match &self.end {
            RangeEnd::Single | RangeEnd::Unbounded => None,
            RangeEnd::Before(end) => Some(end),
        }
    }

    /// True when the range names no key at all.
    pub fn is_empty(&self) -> bool {
        matches!(&self.end, RangeEnd::Before(end) if end.as_slice() <= self.start.as_slice())
    }

    /// True when `key` is in the range.
    pub fn contains(&self, key: &[u8]) -> bool {
        match &self.end {
            RangeEnd::Single => key == self.start.as_slice(),
            RangeEnd::Unbounded => key >= self.start.as_slice(),
            RangeEnd::Before(end) => key >= self.start.as_slice() && key < end.as_slice(),
        }
    }

    /// True when the two ranges share a key.
    pub fn overlaps(&self, other: &KeyRange) -> bool {
        if self.is_empty() || other.is_empty() {
            return false;
        }
        if let Some(key) = self.single() {
            return other.contains(key);
        }
        if let Some(key) = other.single() {
            return self.contains(key);
        }
        let starts_before_other_ends = other.end().is_none_or(|end| self.start.as_slice() < end);
        let other_starts_before_end = self.end().is_none_or(|end| other.start.as_slice() < end);
        starts_before_other_ends && other_starts_before_end
    }
}

/// The `range_end` that makes a range of every key starting with `prefix`: the prefix with its
/// last byte below 0xff incremented, or `[0]` (every key) when there is no such byte.
pub fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conventions() {
        let one = KeyRange::new(b"a", b"");
        assert!(one.contains(b"a") && !one.contains(b"a\0") && !one.contains(b""));
        let from = KeyRange::new(b"b", b"\0");
        assert!(from.contains(b"b") && from.contains(b"zzz") && !from.contains(b"a"));
        let all = KeyRange::new(b"\0", b"\0");
        assert!(all.contains(b"\0") && all.contains(b"\xff\xff"));
        let half = KeyRange::new(b"a", b"c");
        assert!(half.contains(b"a") && half.contains(b"b\xff") && !half.contains(b"c"));
        assert!(KeyRange::new(b"c", b"a").is_empty());
        assert!(!KeyRange::new(b"c", b"a").contains(b"c"));
    }

    #[test]
    fn prefixes() {
        assert_eq!(prefix_end(b"abc"), b"abd");
        assert_eq!(prefix_end(b"a\xff"), b"b");
        assert_eq!(prefix_end(b"\xff\xff"), b"\0");
        assert_eq!(prefix_end(b""), b"\0");
        let p = KeyRange::prefix(b"foo/");
        assert!(p.contains(b"foo/") && p.contains(b"foo/bar") && !p.contains(b"foo0"));
    }

    #[test]
    fn overlap() {
        let r = |a: &[u8], b: &[u8]| KeyRange::new(a, b);
        assert!(r(b"a", b"c").overlaps(&r(b"b", b"")));
        assert!(!r(b"a", b"c").overlaps(&r(b"c", b"")));
        assert!(r(b"a", b"c").overlaps(&r(b"b", b"d")));
        assert!(!r(b"a", b"b").overlaps(&r(b"b", b"d")));
        assert!(r(b"x", b"\0").overlaps(&r(b"a", b"y")));
        assert!(!r(b"x", b"\0").overlaps(&r(b"a", b"x")));
        assert!(r(b"k", b"").overlaps(&r(b"k", b"")));
    }
}
