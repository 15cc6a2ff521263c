//! etcd 3.4's write-ahead log, read for migration: the requests etcd committed after its
//! database's consistent index, as MetaStore commands to replay.
//!
//! The format, as etcd 3.4.23 writes it (`member/wal/*.wal`, names sorted = log order): each
//! record is framed by an 8-byte little-endian word whose low 56 bits are the record's length
//! and, when the top bit is set, bits 56–58 the zero padding after it to 8 bytes; the record is
//! a `walpb.Record` (type, crc, data). The crc is CRC-32C rolling over every record's data
//! since the file's first record, a `crc` record that carries the previous file's value. Types:
//! 1 metadata, 2 a `raftpb.Entry`, 3 a `raftpb.HardState` (its `commit` says how far entries are
//! committed), 4 crc, 5 a snapshot marker. A later entry for an index replaces the earlier one
//! and every entry after it (a new leader's log wins). A normal entry's data is an
//! `InternalRaftRequest` (messages defined here with etcd's field numbers); etcd's own cluster
//! bookkeeping (v2 requests, configuration changes) has no counterpart and is skipped.
//!
//! The end of the log is where the preallocated zeros begin, or a torn last record (a record
//! cut short, or whose crc fails over a zeroed sector): etcd drops it too. Any other crc
//! failure is an error.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use mvcc::{AuthRequest, Command};
use prost::Message;

use crate::pb::authpb;
use crate::pb::etcdserverpb as pb;

/// etcd's default `--bcrypt-cost`: the cost a 3.4 WAL's plain-text passwords are hashed with.
const BCRYPT_COST: u32 = 10;
/// No WAL record is this large; a bigger length is a foreign or damaged file.
const MAX_RECORD: u64 = 64 << 20;
/// The sector size etcd's torn-write check looks at.
const SECTOR: usize = 512;

/// What can go wrong reading etcd's WAL.
#[derive(Debug, thiserror::Error)]
pub enum WalError {
    /// Reading a file failed.
    #[error("reading {path}: {cause}")]
    Io {
        /// The file.
        path: String,
        /// What went wrong.
        cause: std::io::Error,
    },
    /// A record or entry that is not etcd's, or is damaged.
    #[error("{path}: {what}")]
    Bad {
        /// The file.
        path: String,
        /// What is wrong.
        what: String,
    },
    /// The log lacks entries between the database and what it holds.
    #[error("{0}")]
    Gap(String),
}

/// etcd's `walpb.Record`.
#[derive(Clone, PartialEq, prost::Message)]
struct WalRecord {
    #[prost(int64, tag = "1")]
    kind: i64,
    #[prost(uint32, tag = "2")]
    crc: u32,
    #[prost(bytes = "vec", tag = "3")]
    data: Vec<u8>,
}

/// etcd's `raftpb.Entry`.
#[derive(Clone, PartialEq, prost::Message)]
struct RaftEntry {
    #[prost(int32, tag = "1")]
    kind: i32,
    #[prost(uint64, tag = "2")]
    term: u64,
    #[prost(uint64, tag = "3")]
    index: u64,
    #[prost(bytes = "vec", tag = "4")]
    data: Vec<u8>,
}

/// etcd's `raftpb.HardState`.
#[derive(Clone, PartialEq, prost::Message)]
struct HardState {
    #[prost(uint64, tag = "1")]
    term: u64,
    #[prost(uint64, tag = "2")]
    vote: u64,
    #[prost(uint64, tag = "3")]
    commit: u64,
}

/// etcd's `RequestHeader` of a request in the log.
#[derive(Clone, PartialEq, prost::Message)]
struct RequestHeader {
    #[prost(uint64, tag = "1")]
    id: u64,
    #[prost(string, tag = "2")]
    username: String,
    #[prost(uint64, tag = "3")]
    auth_revision: u64,
}

/// One lease's remaining TTL in etcd's `LeaseCheckpointRequest`.
#[derive(Clone, PartialEq, prost::Message)]
struct LeaseCheckpoint {
    #[prost(int64, tag = "1")]
    id: i64,
    #[prost(int64, tag = "2")]
    remaining_ttl: i64,
}

/// etcd's `LeaseCheckpointRequest`.
#[derive(Clone, PartialEq, prost::Message)]
struct LeaseCheckpointRequest {
    #[prost(message, repeated, tag = "1")]
    checkpoints: Vec<LeaseCheckpoint>,
}

/// The parts of etcd's `InternalRaftRequest` that change what MetaStore keeps.
#[derive(Clone, PartialEq, prost::Message)]
struct InternalRaftRequest {
    #[prost(message, optional, tag = "100")]
    header: Option<RequestHeader>,
    #[prost(message, optional, tag = "4")]
    put: Option<pb::PutRequest>,
    #[prost(message, optional, tag = "5")]
    delete_range: Option<pb::DeleteRangeRequest>,
    #[prost(message, optional, tag = "6")]
    txn: Option<pb::TxnRequest>,
    #[prost(message, optional, tag = "7")]
    compaction: Option<pb::CompactionRequest>,
    #[prost(message, optional, tag = "8")]
    lease_grant: Option<pb::LeaseGrantRequest>,
    #[prost(message, optional, tag = "9")]
    lease_revoke: Option<pb::LeaseRevokeRequest>,
    #[prost(message, optional, tag = "11")]
    lease_checkpoint: Option<LeaseCheckpointRequest>,
    #[prost(message, optional, tag = "1000")]
    auth_enable: Option<pb::AuthEnableRequest>,
    #[prost(message, optional, tag = "1011")]
    auth_disable: Option<pb::AuthDisableRequest>,
    #[prost(message, optional, tag = "1100")]
    auth_user_add: Option<pb::AuthUserAddRequest>,
    #[prost(message, optional, tag = "1101")]
    auth_user_delete: Option<pb::AuthUserDeleteRequest>,
    #[prost(message, optional, tag = "1103")]
    auth_user_change_password: Option<pb::AuthUserChangePasswordRequest>,
    #[prost(message, optional, tag = "1104")]
    auth_user_grant_role: Option<pb::AuthUserGrantRoleRequest>,
    #[prost(message, optional, tag = "1105")]
    auth_user_revoke_role: Option<pb::AuthUserRevokeRoleRequest>,
    #[prost(message, optional, tag = "1200")]
    auth_role_add: Option<pb::AuthRoleAddRequest>,
    #[prost(message, optional, tag = "1201")]
    auth_role_delete: Option<pb::AuthRoleDeleteRequest>,
    #[prost(message, optional, tag = "1203")]
    auth_role_grant_permission: Option<pb::AuthRoleGrantPermissionRequest>,
    #[prost(message, optional, tag = "1204")]
    auth_role_revoke_permission: Option<pb::AuthRoleRevokePermissionRequest>,
}

/// A record holding a Raft entry.
const ENTRY_RECORD: i64 = 2;
/// A record holding the Raft hard state.
const STATE_RECORD: i64 = 3;
/// A record carrying the previous file's crc.
const CRC_RECORD: i64 = 4;
/// A Raft entry carrying a request (not a configuration change).
const ENTRY_NORMAL: i32 = 0;

/// The committed entries of etcd's WAL after a database's consistent index.
#[derive(Debug, Default)]
pub struct Tail {
    /// The highest committed index the log records.
    pub commit: u64,
    /// The commands to replay in order, each with its entry's index.
    pub commands: Vec<(u64, Command)>,
    /// Normal entries after the index that carry nothing MetaStore keeps (reads, alarms,
    /// authentication, etcd's cluster bookkeeping).
    pub skipped: u64,
}

/// CRC-32C (Castagnoli) continuing from `crc`, as Go's `crc32.Update`.
fn crc32c(crc: u32, data: &[u8]) -> u32 {
    const TABLE: [u32; 256] = {
        let mut table = [0u32; 256];
        let mut i = 0;
        while i < 256 {
            let mut c = i as u32;
            let mut k = 0;
            while k < 8 {
                c = if c & 1 == 1 {
                    (c >> 1) ^ 0x82F6_3B78
                } else {
                    c >> 1
                };
                k += 1;
            }
            table[i] = c;
            i += 1;
        }
        table
    };
    let mut c = !crc;
    for &b in data {
        c = TABLE[((c ^ u32::from(b)) & 0xff) as usize] ^ (c >> 8);
    }
    !c
}

/// Whether a record cut at `start..end` of `bytes` has a zeroed sector: a write torn by a crash.
fn torn(bytes: &[u8], start: usize, end: usize) -> bool {
    let first = start - start % SECTOR;
    (first..end).step_by(SECTOR).any(|s| {
        bytes[s.max(start)..(s + SECTOR).min(end)]
            .iter()
            .all(|&b| b == 0)
    })
}

/// The `.wal` files of `dir` in log order; none when it does not exist.
fn wal_files(dir: &Path) -> Result<Vec<PathBuf>, WalError> {
    let io = |cause| WalError::Io {
        path: dir.display().to_string(),
        cause,
    };
    let mut files: Vec<PathBuf> = match std::fs::read_dir(dir) {
        Ok(entries) => entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "wal"))
            .collect(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io(e)),
    };
    files.sort();
    Ok(files)
}

/// Reads the WAL in `dir`: the committed entries after `index` (the database's consistent
/// index) as commands. etcd re-applies every entry after that index on its own restart, so the
/// lease, compaction and auth entries among them that its database already reflects are
/// replayed too, as etcd does (they are refused as duplicates or change nothing twice).
///
/// # Errors
/// I/O errors, damaged records (not a torn end), entries missing between `index` and the log.
pub fn read_tail(dir: &Path, index: u64) -> Result<Tail, WalError> {
    let files = wal_files(dir)?;
    let mut entries: BTreeMap<u64, RaftEntry> = BTreeMap::new();
    let mut first_seen: Option<u64> = None;
    let mut commit = 0u64;
    let mut crc = 0u32;
    for (n, path) in files.iter().enumerate() {
        let last_file = n + 1 == files.len();
        let name = path.display().to_string();
        let bad = |what: String| WalError::Bad {
            path: name.clone(),
            what,
        };
        let bytes = std::fs::read(path).map_err(|cause| WalError::Io {
            path: name.clone(),
            cause,
        })?;
        let mut at = 0usize;
        while at + 8 <= bytes.len() {
            let mut word = [0u8; 8];
            word.copy_from_slice(&bytes[at..at + 8]);
            let word = u64::from_le_bytes(word);
            let len = word & 0x00ff_ffff_ffff_ffff;
            let pad = if word >> 63 == 1 {
                (word >> 56) & 0x7
            } else {
                0
            };
            if len == 0 {
                break; // The preallocated rest of the file.
            }
            if len > MAX_RECORD {
                return Err(bad(format!("a record of {len} bytes at offset {at}")));
            }
            let start = at + 8;
            let end = start + len as usize;
            if end + pad as usize > bytes.len() {
                if last_file {
                    break; // A torn last record: etcd drops it too.
                }
                return Err(bad(format!("a record cut short at offset {at}")));
            }
            let record = match WalRecord::decode(&bytes[start..end]) {
                Ok(r) => r,
                Err(_) if last_file && torn(&bytes, start, end) => break,
                Err(e) => return Err(bad(format!("a bad record at offset {at}: {e}"))),
            };
            if record.kind == CRC_RECORD {
                if crc != 0 && record.crc != crc {
                    return Err(bad(format!(
                        "the file's crc {:#x} is not the previous file's {crc:#x}",
                        record.crc
                    )));
                }
                crc = record.crc;
            } else {
                crc = crc32c(crc, &record.data);
                if record.crc != crc {
                    if last_file && torn(&bytes, start, end) {
                        break;
                    }
                    return Err(bad(format!("the record at offset {at} fails its crc")));
                }
            }
            match record.kind {
                ENTRY_RECORD => {
                    let entry = RaftEntry::decode(record.data.as_slice())
                        .map_err(|e| bad(format!("a bad Raft entry at offset {at}: {e}")))?;
                    let _ = entries.split_off(&entry.index);
                    first_seen = Some(first_seen.map_or(entry.index, |f| f.min(entry.index)));
                    if entry.index > index {
                        entries.insert(entry.index, entry);
                    }
                }
                STATE_RECORD => {
                    let state = HardState::decode(record.data.as_slice())
                        .map_err(|e| bad(format!("a bad hard state at offset {at}: {e}")))?;
                    if state.commit > 0 {
                        commit = state.commit;
                    }
                }
                _ => {}
            }
            at = end + pad as usize;
        }
    }
    let mut tail = Tail {
        commit,
        ..Tail::default()
    };
    if commit <= index {
        return Ok(tail);
    }
    match first_seen {
        Some(first) if first <= index + 1 => {}
        _ => {
            return Err(WalError::Gap(format!(
                "etcd's WAL in {} does not hold the entries after the database's consistent \
                 index {index} (it starts at {}); it cannot be replayed",
                dir.display(),
                first_seen.map_or_else(|| "nothing".into(), |f| f.to_string())
            )))
        }
    }
    let mut expected = index + 1;
    for (i, entry) in entries.range(index + 1..=commit) {
        if *i != expected {
            return Err(WalError::Gap(format!(
                "etcd's WAL in {} lacks entry {expected} (committed up to {commit})",
                dir.display()
            )));
        }
        expected += 1;
        if entry.kind != ENTRY_NORMAL || entry.data.is_empty() {
            continue;
        }
        match commands_of(&entry.data) {
            Ok(Some(c)) => tail.commands.push((*i, c)),
            Ok(None) => tail.skipped += 1,
            Err(what) => {
                return Err(WalError::Bad {
                    path: dir.display().to_string(),
                    what: format!("entry {i}: {what}"),
                })
            }
        }
    }
    if expected <= commit {
        return Err(WalError::Gap(format!(
            "etcd's WAL in {} ends at entry {} but says {commit} are committed",
            dir.display(),
            expected - 1
        )));
    }
    Ok(tail)
}

fn hash(password: &str) -> Result<String, String> {
    bcrypt::hash(password, BCRYPT_COST).map_err(|e| format!("hashing a password: {e}"))
}

/// The command a normal entry's request is; `None` for what MetaStore does not keep.
fn commands_of(data: &[u8]) -> Result<Option<Command>, String> {
    // etcd's own v2 requests (cluster attributes and version) are not InternalRaftRequests
    // and have no header; what does not decode as one is such a request.
    let Ok(r) = InternalRaftRequest::decode(data) else {
        return Ok(None);
    };
    if r.header.is_none() {
        return Ok(None);
    }
    let conv = |e: crate::ApiError| e.to_string();
    let auth = |a: AuthRequest| Ok(Some(Command::Auth(a)));
    if let Some(p) = r.put {
        return Ok(Some(Command::Put(crate::pb_conv::put_from_pb(p))));
    }
    if let Some(d) = r.delete_range {
        return Ok(Some(Command::DeleteRange(crate::pb_conv::delete_from_pb(
            d,
        ))));
    }
    if let Some(t) = r.txn {
        return Ok(Some(Command::Txn(
            crate::pb_conv::txn_from_pb(t).map_err(conv)?,
        )));
    }
    if let Some(c) = r.compaction {
        return Ok(Some(Command::Compact(mvcc::CompactRequest {
            revision: c.revision,
            physical: c.physical,
        })));
    }
    if let Some(g) = r.lease_grant {
        return Ok(Some(Command::LeaseGrant(mvcc::LeaseGrantRequest {
            id: g.id,
            ttl: g.ttl,
        })));
    }
    if let Some(l) = r.lease_revoke {
        return Ok(Some(Command::LeaseRevoke(mvcc::LeaseRevokeRequest {
            id: l.id,
        })));
    }
    if let Some(c) = r.lease_checkpoint {
        return Ok(Some(Command::LeaseCheckpoint(
            mvcc::LeaseCheckpointRequest {
                checkpoints: c
                    .checkpoints
                    .into_iter()
                    .map(|c| (c.id, c.remaining_ttl))
                    .collect(),
            },
        )));
    }
    if r.auth_enable.is_some() {
        return auth(AuthRequest::Enable);
    }
    if r.auth_disable.is_some() {
        return auth(AuthRequest::Disable);
    }
    if let Some(u) = r.auth_user_add {
        let no_password = u.options.is_some_and(|o| o.no_password);
        let hash = if no_password {
            None
        } else if !u.hashed_password.is_empty() {
            Some(u.hashed_password)
        } else {
            Some(hash(&u.password)?)
        };
        return auth(AuthRequest::UserAdd { name: u.name, hash });
    }
    if let Some(u) = r.auth_user_delete {
        return auth(AuthRequest::UserDelete { name: u.name });
    }
    if let Some(u) = r.auth_user_change_password {
        let hash = if u.hashed_password.is_empty() {
            hash(&u.password)?
        } else {
            u.hashed_password
        };
        return auth(AuthRequest::UserChangePassword { name: u.name, hash });
    }
    if let Some(u) = r.auth_user_grant_role {
        return auth(AuthRequest::UserGrantRole {
            user: u.user,
            role: u.role,
        });
    }
    if let Some(u) = r.auth_user_revoke_role {
        return auth(AuthRequest::UserRevokeRole {
            name: u.name,
            role: u.role,
        });
    }
    if let Some(a) = r.auth_role_add {
        return auth(AuthRequest::RoleAdd { name: a.name });
    }
    if let Some(d) = r.auth_role_delete {
        return auth(AuthRequest::RoleDelete { role: d.role });
    }
    if let Some(g) = r.auth_role_grant_permission {
        let p: authpb::Permission = g.perm.unwrap_or_default();
        let perm_type = mvcc::PermType::from_number(p.perm_type)
            .ok_or_else(|| format!("bad permission type {}", p.perm_type))?;
        return auth(AuthRequest::RoleGrantPermission {
            name: g.name,
            perm: mvcc::Permission {
                perm_type,
                key: p.key,
                range_end: p.range_end,
            },
        });
    }
    if let Some(v) = r.auth_role_revoke_permission {
        return auth(AuthRequest::RoleRevokePermission {
            role: v.role,
            key: v.key,
            range_end: v.range_end,
        });
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    #[test]
    fn crc32c_is_castagnolis() {
        // The standard check value of CRC-32C.
        assert_eq!(crc32c(0, b"123456789"), 0xE306_9283);
        // Rolling: one update over two parts equals one over the whole.
        assert_eq!(crc32c(crc32c(0, b"1234"), b"56789"), 0xE306_9283);
    }

    /// Writes `records` framed as etcd frames them, with the rolling crc.
    fn wal(records: &[(i64, Vec<u8>)]) -> Vec<u8> {
        let mut out = Vec::new();
        let mut crc = 0;
        for (kind, data) in records {
            let rec = if *kind == CRC_RECORD {
                WalRecord {
                    kind: *kind,
                    crc,
                    data: Vec::new(),
                }
            } else {
                crc = crc32c(crc, data);
                WalRecord {
                    kind: *kind,
                    crc,
                    data: data.clone(),
                }
            };
            let bytes = rec.encode_to_vec();
            let pad = (8 - bytes.len() % 8) % 8;
            let mut word = bytes.len() as u64;
            if pad > 0 {
                word |= (0x80 | pad as u64) << 56;
            }
            out.extend_from_slice(&word.to_le_bytes());
            out.extend_from_slice(&bytes);
            out.extend(std::iter::repeat_n(0u8, pad));
        }
        out
    }

    fn put_entry(index: u64, key: &str) -> (i64, Vec<u8>) {
        let req = InternalRaftRequest {
            header: Some(RequestHeader {
                id: index,
                ..Default::default()
            }),
            put: Some(pb::PutRequest {
                key: key.as_bytes().to_vec(),
                value: b"v".to_vec(),
                ..Default::default()
            }),
            ..Default::default()
        };
        let e = RaftEntry {
            kind: ENTRY_NORMAL,
            term: 2,
            index,
            data: req.encode_to_vec(),
        };
        (ENTRY_RECORD, e.encode_to_vec())
    }

    fn state(commit: u64) -> (i64, Vec<u8>) {
        let s = HardState {
            term: 2,
            vote: 1,
            commit,
        };
        (STATE_RECORD, s.encode_to_vec())
    }

    fn keys(t: &Tail) -> Vec<(u64, Vec<u8>)> {
        t.commands
            .iter()
            .map(|(i, c)| match c {
                Command::Put(p) => (*i, p.key.clone()),
                other => panic!("{other:?}"),
            })
            .collect()
    }

    #[test]
    fn committed_entries_after_the_index_are_replayed_and_a_later_leader_wins() {
        let dir = tempfile::tempdir().unwrap();
        let mut bytes = wal(&[
            (CRC_RECORD, Vec::new()),
            put_entry(1, "a"),
            put_entry(2, "b"),
            put_entry(3, "c"),
            // A new leader overwrote 3 and what followed.
            put_entry(3, "c2"),
            put_entry(4, "d"),
            state(4),
            put_entry(5, "uncommitted"),
        ]);
        // A torn last record.
        bytes.extend_from_slice(&40u64.to_le_bytes());
        bytes.extend_from_slice(&[0u8; 20]);
        std::fs::write(
            dir.path().join("0000000000000000-0000000000000000.wal"),
            &bytes,
        )
        .unwrap();
        let tail = read_tail(dir.path(), 1).unwrap();
        assert_eq!(tail.commit, 4);
        assert_eq!(
            keys(&tail),
            vec![(2, b"b".to_vec()), (3, b"c2".to_vec()), (4, b"d".to_vec())]
        );
        assert!(read_tail(dir.path(), 4).unwrap().commands.is_empty());
    }

    #[test]
    fn a_damaged_record_is_an_error_and_a_gap_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("0000000000000000-0000000000000000.wal");
        let mut bytes = wal(&[
            (CRC_RECORD, Vec::new()),
            put_entry(5, "QQQQ"),
            put_entry(6, "b"),
            state(6),
        ]);
        std::fs::write(&path, &bytes).unwrap();
        let e = read_tail(dir.path(), 2).unwrap_err().to_string();
        assert!(e.contains("does not hold the entries"), "{e}");
        // One bit flipped in the first entry's key.
        let at = bytes.windows(4).position(|w| w == b"QQQQ").unwrap();
        bytes[at] ^= 1;
        std::fs::write(&path, &bytes).unwrap();
        let e = read_tail(dir.path(), 4).unwrap_err().to_string();
        assert!(e.contains("fails its crc"), "{e}");
    }
}
