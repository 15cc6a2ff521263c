//! How the model is laid out in the backend's tables (layout 2; see [`LAYOUT`]).
//!
//! `Keys`: `escaped(user key) ++ [0, 0] ++ !main (8 bytes, big-endian)` → index entry. The
//! escape (`0x00` → `0x00 0xff`) keeps the order of user keys and makes the encoding
//! prefix-free, and the inverted revision puts a key's newest version first, so "the version
//! visible at revision R" is the first entry at or after `key ++ !R`.
//!
//! `Revisions`: `main ++ sub` (big-endian) → stored version: the user key's length (LEB128),
//! the user key, then the record. One entry per entry of `Keys`.
//!
//! Records: a tag byte (put or tombstone), the sub revision, and for a put the create revision,
//! version and lease as LEB128 varints followed by the value bytes. An index entry is the
//! record without its value (the value is the record's tail), so reads that need no value
//! (counts, keys only, compares, the next version of a put) stay in `Keys`, whose entries are
//! small; the value is one point lookup away in `Revisions`. `Revisions` is only ever appended
//! to, so its leaves fill up whatever order keys arrive in, as etcd's bbolt bucket does.
//!
//! Layout 1 (before the meta entry [`LAYOUT`] existed) kept the whole record in `Keys` and
//! only the user key in `Revisions`; [`crate::Store::open`] converts it.

use crate::error::{Error, Result};
use crate::types::KeyValue;

/// Bytes the encoded revision adds after the encoded user key.
pub(crate) const REV_LEN: usize = 8;

const TAG_PUT: u8 = 0;
const TAG_TOMBSTONE: u8 = 1;

/// Appends the order-preserving, prefix-free form of `key` (the "group" of its versions).
pub(crate) fn encode_group(out: &mut Vec<u8>, key: &[u8]) {
    out.reserve(key.len() + 2 + REV_LEN);
    for &b in key {
        out.push(b);
        if b == 0 {
            out.push(0xff);
        }
    }
    out.extend_from_slice(&[0, 0]);
}

/// The group of `key`, alone.
pub(crate) fn group(key: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    encode_group(&mut out, key);
    out
}

/// The `Keys` table key of `key` at main revision `main`.
pub(crate) fn version_key(key: &[u8], main: i64) -> Vec<u8> {
    let mut out = Vec::new();
    encode_group(&mut out, key);
    out.extend_from_slice(&inverted(main));
    out
}

/// The smallest `Keys` key of a group, given the revision bytes appended after it.
pub(crate) fn inverted(main: i64) -> [u8; REV_LEN] {
    (!(main as u64)).to_be_bytes()
}

/// Splits a `Keys` table key into its group (with terminator) and main revision.
pub(crate) fn split_version_key(raw: &[u8]) -> Result<(&[u8], i64)> {
    if raw.len() < 2 + REV_LEN {
        return Err(Error::corrupt("keys table key too short"));
    }
    let (group, rev) = raw.split_at(raw.len() - REV_LEN);
    let mut bytes = [0u8; REV_LEN];
    bytes.copy_from_slice(rev);
    Ok((group, !u64::from_be_bytes(bytes) as i64))
}

/// Recovers the user key from a group.
pub(crate) fn decode_group(group: &[u8]) -> Result<Vec<u8>> {
    let mut key = Vec::with_capacity(group.len().saturating_sub(2));
    let mut i = 0;
    while i < group.len() {
        let b = group[i];
        if b == 0 {
            match group.get(i + 1) {
                Some(0xff) => {
                    key.push(0);
                    i += 2;
                    continue;
                }
                Some(0) if i + 2 == group.len() => return Ok(key),
                _ => return Err(Error::corrupt("bad escape in keys table key")),
            }
        }
        key.push(b);
        i += 1;
    }
    Err(Error::corrupt("unterminated key in keys table"))
}

/// The `Revisions` table key of revision (main, sub).
pub(crate) fn revision_key(main: i64, sub: i64) -> [u8; 16] {
    let mut out = [0u8; 16];
    out[..8].copy_from_slice(&(main as u64).to_be_bytes());
    out[8..].copy_from_slice(&(sub as u64).to_be_bytes());
    out
}

/// Splits a `Revisions` table key into (main, sub).
pub(crate) fn split_revision_key(raw: &[u8]) -> Result<(i64, i64)> {
    let bytes: [u8; 16] = raw
        .try_into()
        .map_err(|_| Error::corrupt("revisions table key is not 16 bytes"))?;
    let mut main = [0u8; 8];
    let mut sub = [0u8; 8];
    main.copy_from_slice(&bytes[..8]);
    sub.copy_from_slice(&bytes[8..]);
    Ok((
        u64::from_be_bytes(main) as i64,
        u64::from_be_bytes(sub) as i64,
    ))
}

/// A decoded `Keys` table record, borrowing its value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Record<'a> {
    pub sub: i64,
    /// `None` for a tombstone.
    pub put: Option<PutRecord<'a>>,
}

/// The fields of a put record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct PutRecord<'a> {
    pub create_revision: i64,
    pub version: i64,
    pub lease: i64,
    pub value: &'a [u8],
}

impl PutRecord<'_> {
    /// The key-value this record stores for `key` at `main`.
    pub(crate) fn to_kv(self, key: Vec<u8>, main: i64) -> KeyValue {
        KeyValue {
            key,
            create_revision: self.create_revision,
            mod_revision: main,
            version: self.version,
            value: self.value.to_vec(),
            lease: self.lease,
        }
    }
}

/// Encodes a put record.
pub(crate) fn encode_put(sub: i64, kv: &KeyValue) -> Vec<u8> {
    let fields = [
        sub as u64,
        kv.create_revision as u64,
        kv.version as u64,
        kv.lease as u64,
    ];
    // Exact capacity: engines keep the buffer as it is, so spare bytes would be kept too.
    let mut out = Vec::with_capacity(
        1 + fields.iter().map(|&f| varint_len(f)).sum::<usize>() + kv.value.len(),
    );
    out.push(TAG_PUT);
    for f in fields {
        put_varint(&mut out, f);
    }
    out.extend_from_slice(&kv.value);
    out
}

/// Encodes a tombstone record.
pub(crate) fn encode_tombstone(sub: i64) -> Vec<u8> {
    let mut out = Vec::with_capacity(11);
    out.push(TAG_TOMBSTONE);
    put_varint(&mut out, sub as u64);
    out
}

/// Decodes a record without copying its value.
pub(crate) fn decode_record(raw: &[u8]) -> Result<Record<'_>> {
    let (&tag, mut rest) = raw
        .split_first()
        .ok_or_else(|| Error::corrupt("empty record"))?;
    let sub = get_varint(&mut rest)? as i64;
    match tag {
        TAG_TOMBSTONE => Ok(Record { sub, put: None }),
        TAG_PUT => {
            let create_revision = get_varint(&mut rest)? as i64;
            let version = get_varint(&mut rest)? as i64;
            let lease = get_varint(&mut rest)? as i64;
            Ok(Record {
                sub,
                put: Some(PutRecord {
                    create_revision,
                    version,
                    lease,
                    value: rest,
                }),
            })
        }
        other => Err(Error::corrupt(format!("unknown record tag {other}"))),
    }
}

/// True when the record is a tombstone, without decoding the rest.
pub(crate) fn is_tombstone(raw: &[u8]) -> bool {
    raw.first() == Some(&TAG_TOMBSTONE)
}

fn varint_len(v: u64) -> usize {
    (64 - v.leading_zeros() as usize).max(1).div_ceil(7)
}

pub(crate) fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

pub(crate) fn get_varint(input: &mut &[u8]) -> Result<u64> {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        let (&b, rest) = input
            .split_first()
            .ok_or_else(|| Error::corrupt("truncated varint"))?;
        *input = rest;
        v |= u64::from(b & 0x7f) << shift;
        if b < 0x80 {
            return Ok(v);
        }
    }
    Err(Error::corrupt("varint longer than 10 bytes"))
}

/// The layout the store writes, kept in `Meta` under [`META_LAYOUT`]; absent means layout 1.
pub(crate) const LAYOUT: i64 = 2;

/// The `Meta` key of the layout version.
pub(crate) const META_LAYOUT: &[u8] = b"layout";

/// The length of a record's index entry: every byte before the value.
pub(crate) fn index_len(record: &[u8]) -> Result<usize> {
    let value = decode_record(record)?.put.map_or(0, |p| p.value.len());
    Ok(record.len() - value)
}

/// The `Keys` index entry of a record: the record without its value.
pub(crate) fn index_of(record: &[u8]) -> Result<Vec<u8>> {
    Ok(record[..index_len(record)?].to_vec())
}

/// Encodes a `Revisions` entry: the user key, then the record.
pub(crate) fn encode_stored(key: &[u8], record: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(varint_len(key.len() as u64) + key.len() + record.len());
    put_varint(&mut out, key.len() as u64);
    out.extend_from_slice(key);
    out.extend_from_slice(record);
    out
}

/// Splits a `Revisions` entry into the user key and the record.
pub(crate) fn split_stored(raw: &[u8]) -> Result<(&[u8], &[u8])> {
    let mut rest = raw;
    let len = usize::try_from(get_varint(&mut rest)?)
        .map_err(|_| Error::corrupt("stored key length out of range"))?;
    if len > rest.len() {
        return Err(Error::corrupt("stored key longer than its entry"));
    }
    Ok(rest.split_at(len))
}

/// The two entries of one version: the `Keys` index entry and the `Revisions` entry.
pub(crate) fn encode_version(key: &[u8], record: &[u8]) -> Result<(Vec<u8>, Vec<u8>)> {
    Ok((index_of(record)?, encode_stored(key, record)))
}

/// Encodes an i64 for the `Meta` table.
pub(crate) fn encode_i64(v: i64) -> Vec<u8> {
    v.to_be_bytes().to_vec()
}

/// Decodes an i64 from the `Meta` table.
pub(crate) fn decode_i64(raw: &[u8], what: &str) -> Result<i64> {
    let bytes: [u8; 8] = raw
        .try_into()
        .map_err(|_| Error::corrupt(format!("meta {what} is not 8 bytes")))?;
    Ok(i64::from_be_bytes(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn group_encoding_keeps_order_and_round_trips(a: Vec<u8>, b: Vec<u8>, ra in 1i64..1 << 40, rb in 1i64..1 << 40) {
            let (ka, kb) = (version_key(&a, ra), version_key(&b, rb));
            let expected = a.cmp(&b).then(rb.cmp(&ra));
            prop_assert_eq!(ka.cmp(&kb), expected);
            let (group, main) = split_version_key(&ka).unwrap();
            prop_assert_eq!(main, ra);
            prop_assert_eq!(decode_group(group).unwrap(), a);
        }

        #[test]
        fn records_round_trip(sub in 0i64..1000, create in 0i64.., version in 0i64.., lease: i64, value: Vec<u8>) {
            let kv = KeyValue { key: vec![], create_revision: create, mod_revision: 0, version, value: value.clone(), lease };
            let raw = encode_put(sub, &kv);
            let rec = decode_record(&raw).unwrap();
            prop_assert_eq!(rec.sub, sub);
            let put = rec.put.unwrap();
            prop_assert_eq!((put.create_revision, put.version, put.lease, put.value), (create, version, lease, value.as_slice()));
            prop_assert!(decode_record(&encode_tombstone(sub)).unwrap().put.is_none());
        }

        #[test]
        fn garbage_never_panics(raw: Vec<u8>) {
            let _ = decode_record(&raw);
            let _ = decode_group(&raw);
            let _ = split_version_key(&raw);
            let _ = split_revision_key(&raw);
            let _ = split_stored(&raw);
            let _ = index_len(&raw);
        }

        #[test]
        fn versions_split_into_index_and_stored(key: Vec<u8>, sub in 0i64..1000, value: Vec<u8>, tombstone: bool) {
            let kv = KeyValue { key: key.clone(), create_revision: 3, mod_revision: 5, version: 2, value: value.clone(), lease: 9 };
            let record = if tombstone { encode_tombstone(sub) } else { encode_put(sub, &kv) };
            let (index, stored) = encode_version(&key, &record).unwrap();
            let (k, r) = split_stored(&stored).unwrap();
            prop_assert_eq!((k, r), (key.as_slice(), record.as_slice()));
            let indexed = decode_record(&index).unwrap();
            prop_assert_eq!(indexed.sub, sub);
            prop_assert_eq!(indexed.put.map(|p| (p.create_revision, p.version, p.lease, p.value.len())), (!tombstone).then_some((3, 2, 9, 0)));
        }
    }

    #[test]
    fn varint_lengths_are_exact() {
        for v in [
            0,
            1,
            127,
            128,
            16_383,
            16_384,
            u64::from(u32::MAX),
            u64::MAX,
        ] {
            let mut out = Vec::new();
            put_varint(&mut out, v);
            assert_eq!(out.len(), varint_len(v), "{v}");
        }
        let kv = KeyValue {
            value: vec![7; 300],
            version: 200,
            ..KeyValue::default()
        };
        let raw = encode_put(3, &kv);
        assert_eq!(raw.capacity(), raw.len());
    }

    #[test]
    fn revision_keys_sort_by_revision() {
        assert!(revision_key(2, 9) < revision_key(3, 0));
        assert_eq!(split_revision_key(&revision_key(7, 3)).unwrap(), (7, 3));
    }
}
