//! The data model: key-values, events, and the requests and responses of etcd's KV API.

use serde::{Deserialize, Serialize};

/// Writes a byte string as one block of bytes (`serialize_with`), not as a sequence of `u8`s.
///
/// bincode lays both out the same (a length, then the bytes), so the log, snapshots and peers
/// read what either wrote; but a sequence is written and read one byte per call, about 2 MB/s
/// in a debug build, where a 64 KiB value took 20 ms to encode and a catching-up follower's
/// appends never fitted openraft's one heartbeat interval.
///
/// # Errors
/// The serializer's.
pub fn ser_bytes<S: serde::Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
    s.serialize_bytes(bytes)
}

/// Reads what [`ser_bytes`] wrote (`deserialize_with`), or a sequence of `u8`s (formats that
/// write bytes as one, such as JSON).
///
/// # Errors
/// The input is neither bytes nor a sequence of `u8`s.
pub fn de_bytes<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
    struct Bytes;
    impl<'de> serde::de::Visitor<'de> for Bytes {
        type Value = Vec<u8>;
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("a byte string")
        }
        fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<Vec<u8>, E> {
            Ok(v.to_vec())
        }
        fn visit_byte_buf<E: serde::de::Error>(self, v: Vec<u8>) -> Result<Vec<u8>, E> {
            Ok(v)
        }
        fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<u8>, A::Error> {
            // Bounded by what the input holds: a claimed size is not trusted for the allocation.
            let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(4096));
            while let Some(b) = seq.next_element()? {
                out.push(b);
            }
            Ok(out)
        }
    }
    d.deserialize_byte_buf(Bytes)
}

/// One version of a key, as etcd's `mvccpb.KeyValue` describes it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyValue {
    /// The key.
    #[serde(serialize_with = "ser_bytes", deserialize_with = "de_bytes")]
    pub key: Vec<u8>,
    /// The revision of the put that created this generation of the key.
    pub create_revision: i64,
    /// The revision of the last change to the key.
    pub mod_revision: i64,
    /// How many puts this generation of the key has seen; 0 means deleted.
    pub version: i64,
    /// The value.
    #[serde(serialize_with = "ser_bytes", deserialize_with = "de_bytes")]
    pub value: Vec<u8>,
    /// The lease the key is attached to, 0 for none.
    pub lease: i64,
}

/// Whether an event wrote or removed a key.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum EventKind {
    /// The key was put.
    Put,
    /// The key was deleted.
    Delete,
}

/// One change to one key, as a watcher sees it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    /// Put or delete.
    pub kind: EventKind,
    /// The key after the change; for a delete only `key` and `mod_revision` are set.
    pub kv: KeyValue,
    /// The key before the change, when it existed and is still in the history.
    pub prev_kv: Option<KeyValue>,
}

/// How a range's results are ordered.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum SortOrder {
    /// Key order, the store's natural order.
    #[default]
    None,
    /// Smallest target first.
    Ascend,
    /// Largest target first.
    Descend,
}

/// What a range's results are ordered by.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum SortTarget {
    /// The key.
    #[default]
    Key,
    /// The version.
    Version,
    /// The create revision.
    Create,
    /// The mod revision.
    Mod,
    /// The value.
    Value,
}

/// A read of one key or a key range, with etcd's `RangeRequest` options.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RangeRequest {
    /// First key of the range.
    #[serde(serialize_with = "ser_bytes", deserialize_with = "de_bytes")]
    pub key: Vec<u8>,
    /// End of the range (exclusive); empty for `key` alone, `[0]` for every key from `key` on.
    #[serde(serialize_with = "ser_bytes", deserialize_with = "de_bytes")]
    pub range_end: Vec<u8>,
    /// At most this many keys are returned; 0 for no limit.
    pub limit: i64,
    /// Read as of this revision; 0 or less for the current one.
    pub revision: i64,
    /// Order of the results.
    pub sort_order: SortOrder,
    /// Field the results are ordered by.
    pub sort_target: SortTarget,
    /// Return keys without values.
    pub keys_only: bool,
    /// Return only the count.
    pub count_only: bool,
    /// Leave out keys with a smaller mod revision; 0 for no filter.
    pub min_mod_revision: i64,
    /// Leave out keys with a larger mod revision; 0 for no filter.
    pub max_mod_revision: i64,
    /// Leave out keys with a smaller create revision; 0 for no filter.
    pub min_create_revision: i64,
    /// Leave out keys with a larger create revision; 0 for no filter.
    pub max_create_revision: i64,
}

/// The answer to a [`RangeRequest`].
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RangeResponse {
    /// The keys found, after filters, sort and limit.
    pub kvs: Vec<KeyValue>,
    /// True when the limit cut the result short.
    pub more: bool,
    /// How many keys the range holds at the revision read, before filters and limit.
    pub count: i64,
}

/// A write of one key, with etcd's `PutRequest` options.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PutRequest {
    /// The key.
    #[serde(serialize_with = "ser_bytes", deserialize_with = "de_bytes")]
    pub key: Vec<u8>,
    /// The value.
    #[serde(serialize_with = "ser_bytes", deserialize_with = "de_bytes")]
    pub value: Vec<u8>,
    /// The lease to attach the key to, 0 for none.
    pub lease: i64,
    /// Return the key's previous version.
    pub prev_kv: bool,
    /// Keep the current value (the key must exist).
    pub ignore_value: bool,
    /// Keep the current lease (the key must exist).
    pub ignore_lease: bool,
}

/// The answer to a [`PutRequest`].
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PutResponse {
    /// The previous version, when asked for and present.
    pub prev_kv: Option<KeyValue>,
}

/// A delete of one key or a key range.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeleteRangeRequest {
    /// First key of the range.
    #[serde(serialize_with = "ser_bytes", deserialize_with = "de_bytes")]
    pub key: Vec<u8>,
    /// End of the range, with the same conventions as [`RangeRequest::range_end`].
    #[serde(serialize_with = "ser_bytes", deserialize_with = "de_bytes")]
    pub range_end: Vec<u8>,
    /// Return the deleted key-values.
    pub prev_kv: bool,
}

/// The answer to a [`DeleteRangeRequest`].
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeleteRangeResponse {
    /// How many keys were deleted.
    pub deleted: i64,
    /// The deleted key-values, when asked for.
    pub prev_kvs: Vec<KeyValue>,
}

/// How a [`Compare`] relates the stored field to the given one.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum CompareResult {
    /// Stored == given.
    Equal,
    /// Stored > given.
    Greater,
    /// Stored < given.
    Less,
    /// Stored != given.
    NotEqual,
}

/// The field a [`Compare`] looks at, with the value it is compared to.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum CompareTarget {
    /// The key's version (0 when absent).
    Version(i64),
    /// The key's create revision (0 when absent).
    Create(i64),
    /// The key's mod revision (0 when absent).
    Mod(i64),
    /// The key's value (an absent key never compares true).
    Value(#[serde(serialize_with = "ser_bytes", deserialize_with = "de_bytes")] Vec<u8>),
    /// The key's lease (0 when absent or detached).
    Lease(i64),
}

/// One condition of a txn; over a range it holds when it holds for every key in it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Compare {
    /// The relation.
    pub result: CompareResult,
    /// The field and the value to compare with.
    pub target: CompareTarget,
    /// The key.
    #[serde(serialize_with = "ser_bytes", deserialize_with = "de_bytes")]
    pub key: Vec<u8>,
    /// End of the range, empty for `key` alone.
    #[serde(serialize_with = "ser_bytes", deserialize_with = "de_bytes")]
    pub range_end: Vec<u8>,
}

/// One operation of a txn branch.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum RequestOp {
    /// A read.
    Range(RangeRequest),
    /// A write.
    Put(PutRequest),
    /// A delete.
    DeleteRange(DeleteRangeRequest),
    /// A nested txn.
    Txn(TxnRequest),
}

/// The answer to one [`RequestOp`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ResponseOp {
    /// The answer to a read.
    Range(RangeResponse),
    /// The answer to a write.
    Put(PutResponse),
    /// The answer to a delete.
    DeleteRange(DeleteRangeResponse),
    /// The answer to a nested txn.
    Txn(TxnResponse),
}

/// An atomic if/then/else over the store.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct TxnRequest {
    /// Conditions, all of which must hold for `success` to run.
    pub compare: Vec<Compare>,
    /// Operations run when every compare holds.
    pub success: Vec<RequestOp>,
    /// Operations run otherwise.
    pub failure: Vec<RequestOp>,
}

/// The answer to a [`TxnRequest`].
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct TxnResponse {
    /// True when the compares held and `success` ran.
    pub succeeded: bool,
    /// One answer per operation of the branch that ran.
    pub responses: Vec<ResponseOp>,
}

/// The deepest txn nesting a decoded value may hold (the outermost txn is level 1).
///
/// Decoding recurses once per level, so without a bound a message from the network could
/// overflow the stack before any check ran. A client's txn stays far below it: prost's
/// recursion limit of 100 lets about 50 levels through the client port.
pub const MAX_TXN_NESTING: usize = 64;

/// Counts the txn levels being decoded on this thread: decoding is synchronous and
/// depth-first, so the count is the nesting of the txn being decoded now.
mod nesting {
    use std::cell::Cell;

    std::thread_local! {
        static DEPTH: Cell<usize> = const { Cell::new(0) };
    }

    /// One level of txn being decoded; leaving it (also by an error) gives it back.
    pub(super) struct Level(());

    impl Level {
        /// Enters one more level, or the error text if that would exceed the bound.
        pub(super) fn enter() -> Result<Level, String> {
            DEPTH.with(|depth| {
                let now = depth.get();
                if now >= super::MAX_TXN_NESTING {
                    return Err(format!(
                        "txns nested more than {} levels deep",
                        super::MAX_TXN_NESTING
                    ));
                }
                depth.set(now + 1);
                Ok(Level(()))
            })
        }
    }

    impl Drop for Level {
        fn drop(&mut self) {
            DEPTH.with(|depth| depth.set(depth.get().saturating_sub(1)));
        }
    }
}

/// [`TxnRequest`]'s encoded form, decoded within one nesting [`nesting::Level`].
#[derive(Deserialize)]
#[serde(rename = "TxnRequest")]
struct TxnRequestFields {
    compare: Vec<Compare>,
    success: Vec<RequestOp>,
    failure: Vec<RequestOp>,
}

impl<'de> Deserialize<'de> for TxnRequest {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let _level = nesting::Level::enter().map_err(serde::de::Error::custom)?;
        let TxnRequestFields {
            compare,
            success,
            failure,
        } = TxnRequestFields::deserialize(d)?;
        Ok(TxnRequest {
            compare,
            success,
            failure,
        })
    }
}

/// [`TxnResponse`]'s encoded form, decoded within one nesting [`nesting::Level`].
#[derive(Deserialize)]
#[serde(rename = "TxnResponse")]
struct TxnResponseFields {
    succeeded: bool,
    responses: Vec<ResponseOp>,
}

impl<'de> Deserialize<'de> for TxnResponse {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let _level = nesting::Level::enter().map_err(serde::de::Error::custom)?;
        let TxnResponseFields {
            succeeded,
            responses,
        } = TxnResponseFields::deserialize(d)?;
        Ok(TxnResponse {
            succeeded,
            responses,
        })
    }
}

/// A request to drop history before a revision.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CompactRequest {
    /// Versions superseded at or before this revision are removed.
    pub revision: i64,
    /// Remove them before answering, instead of in the background.
    pub physical: bool,
}

/// A change to the store: the payload that consensus orders and every member applies.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    /// Put one key.
    Put(PutRequest),
    /// Delete a key or a range.
    DeleteRange(DeleteRangeRequest),
    /// An atomic txn.
    Txn(TxnRequest),
    /// Compact the history.
    Compact(CompactRequest),
    /// Create a lease.
    LeaseGrant(LeaseGrantRequest),
    /// Delete a lease and every key attached to it, in one revision.
    LeaseRevoke(LeaseRevokeRequest),
    /// Record leases' remaining TTLs, so that a restart does not give them their full TTL.
    LeaseCheckpoint(LeaseCheckpointRequest),
    /// List, raise or clear an alarm. The store only orders it: the alarms themselves are
    /// consensus's state, kept with the applied position.
    Alarm(AlarmRequest),
    /// A change to or read of the auth state. The store only orders it: auth is consensus's
    /// state, kept with the applied position.
    Auth(crate::auth::AuthRequest),
    /// A client's write whose permissions were checked against the auth state at
    /// `auth_revision`: consensus applies `command` only if auth has not changed since, and
    /// otherwise answers `revision of auth store is old`, as etcd re-checks at apply. The store
    /// applies `command` as it is.
    Guarded {
        /// The auth revision the permission check was made at.
        auth_revision: u64,
        /// The write.
        command: Box<Command>,
    },
}

/// What an [`AlarmRequest`] does, as etcd's `AlarmRequest.AlarmAction`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum AlarmAction {
    /// List the alarms of one kind, or all for kind 0 (`NONE`).
    #[default]
    Get,
    /// Raise an alarm for a member.
    Activate,
    /// Clear a member's alarm.
    Deactivate,
}

/// etcd's alarm kind numbers (`AlarmType`): 0 `NONE`, 1 `NOSPACE`, 2 `CORRUPT`.
pub mod alarm_kind {
    /// No alarm; in a GET: every kind.
    pub const NONE: i32 = 0;
    /// The backend passed its quota.
    pub const NOSPACE: i32 = 1;
    /// Members' key-space hashes differ.
    pub const CORRUPT: i32 = 2;
}

/// An alarm request, as etcd's `AlarmRequest`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AlarmRequest {
    /// What to do.
    pub action: AlarmAction,
    /// The member raising or clearing the alarm.
    pub member_id: u64,
    /// The alarm kind ([`alarm_kind`]).
    pub alarm: i32,
}

/// One raised alarm, as etcd's `AlarmMember`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct AlarmMember {
    /// The member that raised it.
    pub member_id: u64,
    /// The alarm kind ([`alarm_kind`]).
    pub alarm: i32,
}

/// A request to create a lease.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseGrantRequest {
    /// The lease id (never 0).
    pub id: i64,
    /// Its TTL in seconds, already raised to the minimum by the caller.
    pub ttl: i64,
}

/// A request to revoke a lease.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseRevokeRequest {
    /// The lease id.
    pub id: i64,
}

/// Remaining TTLs to record.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseCheckpointRequest {
    /// (lease id, remaining TTL in seconds); leases that no longer exist are skipped.
    pub checkpoints: Vec<(i64, i64)>,
}

/// The answer to one applied [`Command`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Response {
    /// The answer to a put.
    Put(PutResponse),
    /// The answer to a delete.
    DeleteRange(DeleteRangeResponse),
    /// The answer to a txn.
    Txn(TxnResponse),
    /// A compaction was recorded.
    Compact,
    /// The lease was created with this TTL.
    LeaseGrant {
        /// Its id.
        id: i64,
        /// Its TTL in seconds.
        ttl: i64,
    },
    /// The lease and its keys are gone.
    LeaseRevoke,
    /// The remaining TTLs were recorded.
    LeaseCheckpoint,
    /// The alarms the request listed, raised or cleared.
    Alarm(Vec<AlarmMember>),
    /// The answer to an auth request.
    Auth(crate::auth::AuthResponse),
}

/// A hash of the key space, comparable between members with the same history.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KvHash {
    /// CRC-32 over every version kept at or below `revision`.
    pub hash: u32,
    /// The revision hashed.
    pub revision: i64,
    /// The compaction point at the time of hashing.
    pub compact_revision: i64,
}

impl Command {
    /// Roughly how many bytes the command carries (keys and values), for bounding batches.
    pub fn approx_size(&self) -> usize {
        match self {
            Command::Put(p) => p.key.len() + p.value.len() + 16,
            Command::DeleteRange(d) => d.key.len() + d.range_end.len() + 16,
            Command::Txn(t) => t.approx_size(),
            Command::Compact(_)
            | Command::LeaseGrant(_)
            | Command::LeaseRevoke(_)
            | Command::Alarm(_) => 16,
            Command::Auth(_) => 128,
            Command::LeaseCheckpoint(c) => 16 * c.checkpoints.len() + 16,
            Command::Guarded { command, .. } => command.approx_size() + 8,
        }
    }
}

impl TxnRequest {
    fn approx_size(&self) -> usize {
        let compares: usize = self
            .compare
            .iter()
            .map(|c| {
                let value = match &c.target {
                    CompareTarget::Value(v) => v.len(),
                    _ => 8,
                };
                c.key.len() + c.range_end.len() + value + 8
            })
            .sum();
        let ops: usize = self
            .success
            .iter()
            .chain(&self.failure)
            .map(|op| match op {
                RequestOp::Range(r) => r.key.len() + r.range_end.len() + 32,
                RequestOp::Put(p) => p.key.len() + p.value.len() + 16,
                RequestOp::DeleteRange(d) => d.key.len() + d.range_end.len() + 16,
                RequestOp::Txn(t) => t.approx_size(),
            })
            .sum();
        compares + ops + 16
    }
}
