//! Leases as the store keeps them: which exist, their granted TTL, their last checkpointed
//! remaining TTL, and which keys are attached to each.
//!
//! The store holds no clocks: when a lease expires is decided above it (by the leader), which
//! revokes it through an ordinary command. What lives here is the replicated part, applied in
//! log order on every member: records in the `Meta` table under [`PREFIX`], and an in-memory
//! index from lease to attached keys, rebuilt from the key space when the store opens.

use std::collections::{BTreeSet, HashMap};
use std::ops::{Bound, ControlFlow};

use crate::backend::{Backend, Table};
use crate::error::{Error, Result};
use crate::keys::KeyRange;
use crate::read;

/// `Meta` keys of lease records: this prefix, then the lease id (big-endian).
pub(crate) const PREFIX: &[u8] = b"lease/";

/// A lease as the store knows it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LeaseInfo {
    /// The lease id.
    pub id: i64,
    /// The TTL it was granted, in seconds.
    pub ttl: i64,
    /// The remaining TTL at the last checkpoint, in seconds; 0 when never checkpointed.
    pub remaining: i64,
    /// The keys attached to it, in order.
    pub keys: Vec<Vec<u8>>,
}

/// One lease's record and attached keys.
#[derive(Clone, Debug, Default)]
pub(crate) struct Entry {
    pub ttl: i64,
    pub remaining: i64,
    pub keys: BTreeSet<Vec<u8>>,
}

/// Every lease, by id.
pub(crate) type Index = HashMap<i64, Entry>;

pub(crate) fn record_key(id: i64) -> Vec<u8> {
    let mut k = PREFIX.to_vec();
    k.extend_from_slice(&id.to_be_bytes());
    k
}

pub(crate) fn encode(ttl: i64, remaining: i64) -> Vec<u8> {
    let mut v = ttl.to_be_bytes().to_vec();
    v.extend_from_slice(&remaining.to_be_bytes());
    v
}

fn decode(key: &[u8], value: &[u8]) -> Result<(i64, i64, i64)> {
    let id = key
        .strip_prefix(PREFIX)
        .and_then(|b| <[u8; 8]>::try_from(b).ok())
        .map(i64::from_be_bytes);
    let fields = <[u8; 16]>::try_from(value).ok();
    match (id, fields) {
        (Some(id), Some(f)) => {
            let (ttl, remaining) = f.split_at(8);
            let int = |b: &[u8]| <[u8; 8]>::try_from(b).map(i64::from_be_bytes);
            match (int(ttl), int(remaining)) {
                (Ok(ttl), Ok(remaining)) => Ok((id, ttl, remaining)),
                _ => Err(Error::corrupt("lease record")),
            }
        }
        _ => Err(Error::corrupt(format!(
            "lease record {}",
            String::from_utf8_lossy(key)
        ))),
    }
}

/// Rebuilds the index from the lease records and the live keys at `revision`.
pub(crate) fn load<B: Backend>(backend: &B, revision: i64) -> Result<Index> {
    let mut index = Index::new();
    let mut end = PREFIX.to_vec();
    end.push(0xff);
    read::try_scan(
        backend,
        Table::Meta,
        Bound::Included(PREFIX),
        Bound::Excluded(&end),
        &mut |k, v| {
            let (id, ttl, remaining) = decode(k, v)?;
            index.insert(
                id,
                Entry {
                    ttl,
                    remaining,
                    keys: BTreeSet::new(),
                },
            );
            Ok(ControlFlow::Continue(()))
        },
    )?;
    if index.is_empty() {
        return Ok(index);
    }
    read::scan_visible(backend, &KeyRange::new(&[0], &[0]), revision, &mut |v| {
        if v.put.lease != 0 {
            let kv = v.to_kv(false)?;
            if let Some(entry) = index.get_mut(&kv.lease) {
                entry.keys.insert(kv.key);
            }
        }
        Ok(ControlFlow::Continue(()))
    })?;
    Ok(index)
}
