//! Reading versions back out of the backend: what is visible at a revision, and range answers.

use std::ops::{Bound, ControlFlow};

use crate::backend::{Reads, Table};
use crate::codec::{self, PutRecord, REV_LEN};
use crate::error::{Error, Result};
use crate::keys::KeyRange;
use crate::types::{KeyValue, RangeRequest, RangeResponse, SortOrder, SortTarget};

/// Entries visited per backend call, so an engine holding a lock while visiting holds it briefly.
pub(crate) const CHUNK: usize = 1024;

/// Index entries a range scan reads first; later chunks grow to [`CHUNK`].
const FIRST_CHUNK: usize = 64;

/// A put version visible at the revision read: its `Keys` index entry, borrowed from a chunk
/// read out of the backend; the value is one point lookup away.
#[derive(Clone, Copy)]
pub(crate) struct Visible<'a> {
    pub group: &'a [u8],
    pub main: i64,
    pub sub: i64,
    /// The index entry's fields; its `value` is empty (the index holds none).
    pub put: PutRecord<'a>,
    values: &'a Values<'a>,
}

impl Visible<'_> {
    /// The version's value, read from its `Revisions` entry.
    pub(crate) fn value(&self) -> Result<Vec<u8>> {
        (self.values)(self.main, self.sub)
    }

    pub(crate) fn to_kv(self, with_value: bool) -> Result<KeyValue> {
        let key = codec::decode_group(self.group)?;
        let mut kv = self.put.to_kv_without_value(key, self.main);
        if with_value {
            kv.value = self.value()?;
        }
        Ok(kv)
    }
}

impl PutRecord<'_> {
    fn to_kv_without_value(self, key: Vec<u8>, main: i64) -> KeyValue {
        KeyValue {
            key,
            create_revision: self.create_revision,
            mod_revision: main,
            version: self.version,
            value: Vec::new(),
            lease: self.lease,
        }
    }
}

/// Where a visible version's value comes from: the value of the put stored at (main, sub).
type Values<'a> = dyn Fn(i64, i64) -> Result<Vec<u8>> + 'a;

/// The value of the put stored at (main, sub): one point lookup in `Revisions`.
fn value_at<B: Reads + ?Sized>(backend: &B, main: i64, sub: i64) -> Result<Vec<u8>> {
    let Some(mut raw) = backend.read_key(Table::Revisions, &codec::revision_key(main, sub))? else {
        return Err(Error::corrupt(format!(
            "version ({main}, {sub}) indexed but not stored"
        )));
    };
    let (_, record) = codec::split_stored(&raw)?;
    let Some(put) = codec::decode_record(record)?.put else {
        return Err(Error::corrupt(format!(
            "version ({main}, {sub}) indexed as a put, stored as a tombstone"
        )));
    };
    // The value is the entry's tail: keep the buffer, drop what comes before.
    let start = raw.len() - put.value.len();
    raw.drain(..start);
    Ok(raw)
}

/// Index entries read out of one backend scan, kept in one buffer: (group, main, entry).
#[derive(Default)]
struct IndexChunk {
    bytes: Vec<u8>,
    /// Per entry: where its group ends and its index entry ends in `bytes`, and its revision.
    ends: Vec<(usize, usize, i64)>,
}

impl IndexChunk {
    fn push(&mut self, group: &[u8], main: i64, entry: &[u8]) {
        self.bytes.extend_from_slice(group);
        let group_end = self.bytes.len();
        self.bytes.extend_from_slice(entry);
        self.ends.push((group_end, self.bytes.len(), main));
    }

    /// Offers each live version to `f`, reading values from `values`; true when `f` stopped.
    fn offer(&self, values: &Values<'_>, f: &mut VisibleVisitor<'_>) -> Result<bool> {
        let mut start = 0;
        for &(group_end, end, main) in &self.ends {
            let group = &self.bytes[start..group_end];
            let record = codec::decode_record(&self.bytes[group_end..end])?;
            start = end;
            if let Some(put) = record.put {
                let visible = Visible {
                    group,
                    main,
                    sub: record.sub,
                    put,
                    values,
                };
                if f(visible)?.is_break() {
                    return Ok(true);
                }
            }
        }
        Ok(false)
    }
}

/// The `Keys` table bounds covering every version of every key in a multi-key `range`.
fn encoded_bounds(range: &KeyRange) -> (Bound<Vec<u8>>, Bound<Vec<u8>>) {
    let from = Bound::Included(codec::group(range.start()));
    let to = match range.end() {
        Some(end) => Bound::Excluded(codec::group(end)),
        None => Bound::Unbounded,
    };
    (from, to)
}

/// A borrowed view of an owned bound.
pub(crate) fn as_ref(b: &Bound<Vec<u8>>) -> Bound<&[u8]> {
    match b {
        Bound::Included(v) => Bound::Included(v.as_slice()),
        Bound::Excluded(v) => Bound::Excluded(v.as_slice()),
        Bound::Unbounded => Bound::Unbounded,
    }
}

/// Bounds on one range read, checked as it goes, so that no read runs past its caller's
/// patience or holds more than its answer may carry.
#[derive(Clone, Copy)]
pub struct ReadLimits<'a> {
    /// Most bytes the answer's key-values may take, as `measure` counts them; a read that
    /// would hold more fails with [`Error::TooLarge`] (and holds no more meanwhile).
    pub max_bytes: usize,
    /// The bytes one key-value takes in the answer (the caller's wire encoding).
    pub measure: &'a dyn Fn(&KeyValue) -> usize,
    /// Asked between chunks of the scan; true stops the read with [`Error::Stopped`].
    pub stop: &'a dyn Fn() -> bool,
}

impl ReadLimits<'static> {
    /// No bounds: what reads inside a txn and internal reads use.
    pub fn none() -> Self {
        Self {
            max_bytes: usize::MAX,
            measure: &|_| 0,
            stop: &|| false,
        }
    }
}

/// The visitor of [`try_scan`]: [`crate::Visitor`], but able to fail.
pub(crate) type TryVisitor<'v> = dyn FnMut(&[u8], &[u8]) -> Result<ControlFlow<()>> + 'v;

/// The visitor of [`scan_visible`]: it may stop the scan, or fail it.
pub(crate) type VisibleVisitor<'v> = dyn FnMut(Visible<'_>) -> Result<ControlFlow<()>> + 'v;

/// [`Backend::scan`] with a visitor that can fail: its first error ends the scan and is returned.
pub(crate) fn try_scan<B: Reads + ?Sized>(
    backend: &B,
    table: Table,
    from: Bound<&[u8]>,
    to: Bound<&[u8]>,
    visit: &mut TryVisitor<'_>,
) -> Result<()> {
    // The backend's visitor cannot fail, so the error waits here until the scan returns.
    let mut failure = None;
    backend.read_range(table, from, to, &mut |k, v| match visit(k, v) {
        Ok(flow) => flow,
        Err(e) => {
            failure = Some(e);
            ControlFlow::Break(())
        }
    })?;
    failure.map_or(Ok(()), Err)
}

/// The `Revisions` entries (main, sub, stored version) from `from` on at or below `rev`, at
/// most [`CHUNK`] of them; [`codec::split_stored`] reads a stored version.
pub(crate) fn revisions_chunk<B: Reads + ?Sized>(
    backend: &B,
    from: &Bound<Vec<u8>>,
    rev: i64,
) -> Result<Vec<(i64, i64, Vec<u8>)>> {
    let from = as_ref(from);
    let to = codec::revision_key(rev.saturating_add(1), 0);
    let mut out = Vec::new();
    try_scan(
        backend,
        Table::Revisions,
        from,
        Bound::Excluded(&to),
        &mut |k, v| {
            let (main, sub) = codec::split_revision_key(k)?;
            out.push((main, sub, v.to_vec()));
            Ok(if out.len() >= CHUNK {
                ControlFlow::Break(())
            } else {
                ControlFlow::Continue(())
            })
        },
    )?;
    Ok(out)
}

/// Calls `f` with the version of each live key in `range` visible at `rev`, in key order,
/// until it breaks or fails.
pub(crate) fn scan_visible<B: Reads + ?Sized>(
    backend: &B,
    range: &KeyRange,
    rev: i64,
    f: &mut VisibleVisitor<'_>,
) -> Result<()> {
    scan_visible_until(backend, range, rev, &|| false, f)
}

/// [`scan_visible`], asking `stop` between chunks: true ends the scan with [`Error::Stopped`].
pub(crate) fn scan_visible_until<B: Reads + ?Sized>(
    backend: &B,
    range: &KeyRange,
    rev: i64,
    stop: &dyn Fn() -> bool,
    f: &mut VisibleVisitor<'_>,
) -> Result<()> {
    if range.is_empty() {
        return Ok(());
    }
    if let Some(key) = range.single() {
        return visit_one(backend, key, rev, f);
    }
    let (mut from, to) = encoded_bounds(range);
    let values = |main, sub| value_at(backend, main, sub);
    // The group whose visible version was already found: its older versions are skipped.
    let mut seen_group: Option<Vec<u8>> = None;
    // Small first, as most reads want a few keys; whole chunks for long scans.
    let mut size = FIRST_CHUNK;
    loop {
        if stop() {
            return Err(Error::Stopped);
        }
        let mut visited = 0;
        let mut resume = None;
        let mut chunk = IndexChunk::default();
        try_scan(
            backend,
            Table::Keys,
            as_ref(&from),
            as_ref(&to),
            &mut |k, v| {
                visited += 1;
                if visited > size {
                    resume = Some(k.to_vec());
                    return Ok(ControlFlow::Break(()));
                }
                let (group, main) = codec::split_version_key(k)?;
                if main > rev || seen_group.as_deref() == Some(group) {
                    return Ok(ControlFlow::Continue(()));
                }
                match &mut seen_group {
                    Some(g) => {
                        g.clear();
                        g.extend_from_slice(group);
                    }
                    None => seen_group = Some(group.to_vec()),
                }
                if !codec::is_tombstone(v) {
                    chunk.push(group, main, v);
                }
                Ok(ControlFlow::Continue(()))
            },
        )?;
        // Offered once the scan is over: reading a value is another backend call.
        let stopped = chunk.offer(&values, f)?;
        match resume {
            Some(k) if !stopped => from = Bound::Included(k),
            _ => return Ok(()),
        }
        size = (size * 4).min(CHUNK);
    }
}

/// Calls `f` with the version of `key` visible at `rev`, if it is live: one seek, no copies
/// but the index entry's.
fn visit_one<B: Reads + ?Sized>(
    backend: &B,
    key: &[u8],
    rev: i64,
    f: &mut VisibleVisitor<'_>,
) -> Result<()> {
    // The newest version at or below `rev` is the first entry at or after `key ++ !rev`; the
    // read is open-ended (one descent, not two) and takes that entry whatever it is.
    let from = codec::version_key(key, rev);
    let group_len = from.len() - REV_LEN;
    let Some((k, v)) = backend.read_first(Table::Keys, Bound::Included(&from), Bound::Unbounded)?
    else {
        return Ok(());
    };
    if k.len() != from.len() || k[..group_len] != from[..group_len] || codec::is_tombstone(&v) {
        return Ok(());
    }
    let (group, main) = codec::split_version_key(&k)?;
    let mut chunk = IndexChunk::default();
    chunk.push(group, main, &v);
    // One key: whether `f` breaks or not, the read is over.
    chunk
        .offer(&|main, sub| value_at(backend, main, sub), f)
        .map(drop)
}

/// The live key-value of `key` at `rev`, if any.
pub(crate) fn get_at<B: Reads + ?Sized>(
    backend: &B,
    key: &[u8],
    rev: i64,
) -> Result<Option<KeyValue>> {
    get_at_with(backend, key, rev, true)
}

/// [`get_at`], reading the value only `with_value` (without, the value is empty).
pub(crate) fn get_at_with<B: Reads + ?Sized>(
    backend: &B,
    key: &[u8],
    rev: i64,
    with_value: bool,
) -> Result<Option<KeyValue>> {
    let mut found = None;
    visit_one(backend, key, rev, &mut |v| {
        let mut kv = v.put.to_kv_without_value(key.to_vec(), v.main);
        if with_value {
            kv.value = v.value()?;
        }
        found = Some(kv);
        Ok(ControlFlow::Break(()))
    })?;
    Ok(found)
}

/// One key-value offered to a range answer, either borrowed from the backend or owned.
pub(crate) enum Item<'a> {
    Stored(Visible<'a>),
    Owned(&'a KeyValue),
}

impl Item<'_> {
    fn to_kv(&self, with_value: bool) -> Result<KeyValue> {
        match self {
            Item::Stored(v) => v.to_kv(with_value),
            Item::Owned(kv) if with_value => Ok((*kv).clone()),
            Item::Owned(kv) => Ok(KeyValue {
                value: Vec::new(),
                key: kv.key.clone(),
                ..**kv
            }),
        }
    }
}

/// The visitor a range read offers its key-values to: it may stop the read, or fail it.
pub(crate) type ItemVisitor<'v> = dyn FnMut(Item<'_>) -> Result<ControlFlow<()>> + 'v;

/// Builds etcd's answer to `req` from the live keys `visit` offers in key order.
///
/// As etcd does: with a sort order or a revision filter every key is fetched, filtered, sorted
/// and cut to the limit; otherwise fetching stops one past the limit to learn `more`. `count`
/// is always the number of keys in the range, before filters and limit.
///
/// The key-values held may take `limits.max_bytes`; past that nothing more is held, the
/// rest is only measured (so the error can say how large the answer would have been).
pub(crate) fn build_range(
    req: &RangeRequest,
    limits: &ReadLimits<'_>,
    visit: impl FnOnce(&mut ItemVisitor<'_>) -> Result<()>,
) -> Result<RangeResponse> {
    let filtered = req.min_mod_revision != 0
        || req.max_mod_revision != 0
        || req.min_create_revision != 0
        || req.max_create_revision != 0;
    let fetch_all = req.sort_order != SortOrder::None || filtered;
    let want = if req.count_only {
        0
    } else if fetch_all || req.limit <= 0 {
        usize::MAX
    } else {
        usize::try_from(req.limit)
            .unwrap_or(usize::MAX)
            .saturating_add(1)
    };
    let with_value = !req.keys_only || req.sort_target == SortTarget::Value;
    // The one fetched past an unsorted limit only tells `more`: it is not sent.
    let sent = if fetch_all || req.limit <= 0 {
        usize::MAX
    } else {
        want - 1
    };
    let mut count = 0i64;
    let mut kvs = Vec::new();
    let (mut taken, mut bytes, mut too_large) = (0usize, 0usize, false);
    visit(&mut |item| {
        count += 1;
        if taken < want {
            let kv = item.to_kv(with_value)?;
            if taken < sent {
                bytes = bytes.saturating_add((limits.measure)(&kv));
            }
            taken += 1;
            if bytes > limits.max_bytes {
                if !too_large {
                    too_large = true;
                    kvs = Vec::new();
                }
            } else {
                kvs.push(kv);
            }
        }
        Ok(ControlFlow::Continue(()))
    })?;
    if too_large {
        return Err(Error::TooLarge {
            size: bytes,
            limit: limits.max_bytes,
        });
    }
    if req.count_only {
        return Ok(RangeResponse {
            kvs: Vec::new(),
            more: false,
            count,
        });
    }
    if filtered {
        kvs.retain(|kv| {
            (req.max_mod_revision == 0 || kv.mod_revision <= req.max_mod_revision)
                && (req.min_mod_revision == 0 || kv.mod_revision >= req.min_mod_revision)
                && (req.max_create_revision == 0 || kv.create_revision <= req.max_create_revision)
                && (req.min_create_revision == 0 || kv.create_revision >= req.min_create_revision)
        });
    }
    let order = match (req.sort_order, req.sort_target) {
        (SortOrder::None, SortTarget::Key) => SortOrder::None,
        (SortOrder::None, _) => SortOrder::Ascend,
        (order, _) => order,
    };
    if order != SortOrder::None {
        // Stable in both directions, so equal targets keep key order, as etcd's sort does on
        // the small results clients usually sort.
        let descend = order == SortOrder::Descend;
        let by = |o: std::cmp::Ordering| if descend { o.reverse() } else { o };
        match req.sort_target {
            SortTarget::Key => kvs.sort_by(|a, b| by(a.key.cmp(&b.key))),
            SortTarget::Version => kvs.sort_by(|a, b| by(a.version.cmp(&b.version))),
            SortTarget::Create => kvs.sort_by(|a, b| by(a.create_revision.cmp(&b.create_revision))),
            SortTarget::Mod => kvs.sort_by(|a, b| by(a.mod_revision.cmp(&b.mod_revision))),
            SortTarget::Value => kvs.sort_by(|a, b| by(a.value.cmp(&b.value))),
        }
    }
    let mut more = false;
    if let Ok(limit) = usize::try_from(req.limit) {
        if limit > 0 && kvs.len() > limit {
            kvs.truncate(limit);
            more = true;
        }
    }
    if req.keys_only {
        for kv in &mut kvs {
            kv.value = Vec::new();
        }
    }
    Ok(RangeResponse { kvs, more, count })
}
