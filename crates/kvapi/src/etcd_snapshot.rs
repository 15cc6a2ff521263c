//! etcd's snapshot file: the store written in etcd's bbolt layout, and read back from one.
//!
//! An etcd 3.4 snapshot is its backend database (a bbolt file) followed by the SHA-256 of those
//! bytes. Its buckets, as etcd 3.4.23 writes them (checked on files it wrote):
//! - `key`: key = main revision (8 bytes, big-endian), `_`, sub revision (8 bytes), and `t` for
//!   a delete; value = `mvccpb.KeyValue` (a delete's carries the key alone). Compaction leaves
//!   each key's newest version at or below the compaction point, unless it is a delete.
//! - `meta`: `consistent_index` (u64, big-endian), and after a compaction `scheduledCompactRev`
//!   and `finishedCompactRev` (a revision key, as in `key`).
//! - `lease`: key = lease id (8 bytes, big-endian), value = `leasepb.Lease` (ID, TTL, and the
//!   remaining TTL when checkpointed).
//! - `members`: key = member id in hex, value = JSON (`id`, `peerURLs`, `name`, `clientURLs`,
//!   `isLearner` when set); `members_removed`; `cluster`: `clusterVersion` = `3.4.0`.
//! - `auth`: `authRevision` (u64, big-endian; 1 while nothing changed, one more per change)
//!   and, once auth was enabled, `authEnabled` (`[1]`, or `[0]` after a disable);
//!   `authUsers`: key = user name, value = `authpb.User` (the bcrypt hash as the password,
//!   roles sorted, options with `no_password`); `authRoles`: key = role name, value =
//!   `authpb.Role` (permissions in key order).
//! - `alarm`: key = `etcdserverpb.AlarmMember`, empty value.
//!
//! `etcdctl snapshot restore` replaces `members` and the consistent index; `snapshot status`
//! reports the newest revision in `key` and counts every entry of every bucket.

use std::fs::File;
use std::io::{self, Read, Write};
use std::ops::ControlFlow;
use std::path::Path;

use bbolt::{BucketRoot, Plan, Reader};
use mvcc::{Backend, Export, Store, Version};
use prost::Message;

use consensus::{AuthState, User};
use mvcc::{PermType, Permission};

use crate::pb::authpb;
use crate::pb::etcdserverpb::AlarmMember;
use crate::pb::mvccpb::KeyValue;

/// The page size of the files written here (etcd's on the usual machines).
const PAGE_SIZE: u32 = bbolt::DEFAULT_PAGE_SIZE;
/// Bytes of the SHA-256 after the database.
pub const HASH_LEN: usize = 32;
/// The cluster version the file says it was written by: MetaStore speaks etcd 3.4's API.
const CLUSTER_VERSION: &str = "3.4.0";

/// What can go wrong writing or reading an etcd snapshot.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    /// The bbolt file is damaged or could not be written.
    #[error(transparent)]
    Bolt(#[from] bbolt::Error),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] mvcc::Error),
    /// Reading or writing the file failed.
    #[error("snapshot i/o: {0}")]
    Io(#[from] io::Error),
    /// The file is a bbolt database but not in etcd's layout.
    #[error("not an etcd snapshot: {0}")]
    Layout(String),
    /// etcdctl's check of the hash after the database failed (its texts).
    #[error("{0}")]
    Hash(String),
    /// The file holds what MetaStore cannot take yet.
    #[error("{0}")]
    Unsupported(String),
    /// The reader went away or a chunk was not taken in time.
    #[error("snapshot stopped: {0}")]
    Stopped(String),
}

fn layout(what: impl Into<String>) -> SnapshotError {
    SnapshotError::Layout(what.into())
}

/// A bucket's entries, in any order: (key, value).
pub type Entries = Vec<(Vec<u8>, Vec<u8>)>;

/// etcd's `leasepb.Lease`, as the `lease` bucket holds it.
#[derive(Clone, PartialEq, prost::Message)]
pub struct LeaseRecordPb {
    /// The lease id.
    #[prost(int64, tag = "1")]
    pub id: i64,
    /// The granted TTL, seconds.
    #[prost(int64, tag = "2")]
    pub ttl: i64,
    /// The remaining TTL at the last checkpoint, seconds.
    #[prost(int64, tag = "3")]
    pub remaining_ttl: i64,
}

/// A member as the `members` bucket lists it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SnapshotMember {
    /// The member id.
    pub id: u64,
    /// Its name.
    pub name: String,
    /// Its peer URLs.
    pub peer_urls: Vec<String>,
    /// Its client URLs.
    pub client_urls: Vec<String>,
    /// Whether it is a learner.
    pub is_learner: bool,
}

/// What the file carries besides the store: the member's view of its cluster.
#[derive(Clone, Debug, Default)]
pub struct ClusterState {
    /// The Raft index the content reflects (etcd's `consistent_index`).
    pub consistent_index: u64,
    /// The members.
    pub members: Vec<SnapshotMember>,
    /// Raised alarms: (member id, alarm kind).
    pub alarms: Vec<(u64, i32)>,
    /// The auth state: users, roles, whether it is enabled.
    pub auth: AuthState,
}

/// etcd's revision key: main, `_`, sub, big-endian, and `t` for a delete.
pub fn revision_key(main: i64, sub: i64, tombstone: bool) -> Vec<u8> {
    let mut k = Vec::with_capacity(18);
    k.extend_from_slice(&(main as u64).to_be_bytes());
    k.push(b'_');
    k.extend_from_slice(&(sub as u64).to_be_bytes());
    if tombstone {
        k.push(b't');
    }
    k
}

/// Parses etcd's revision key: (main, sub, tombstone).
fn parse_revision_key(k: &[u8]) -> Result<(i64, i64, bool), SnapshotError> {
    let tombstone = match k.len() {
        17 => false,
        18 if k[17] == b't' => true,
        _ => return Err(layout(format!("bad revision key {k:02x?}"))),
    };
    if k[8] != b'_' {
        return Err(layout(format!("bad revision key {k:02x?}")));
    }
    let mut b = [0u8; 8];
    b.copy_from_slice(&k[..8]);
    let main = u64::from_be_bytes(b);
    b.copy_from_slice(&k[9..17]);
    let sub = u64::from_be_bytes(b);
    match (i64::try_from(main), i64::try_from(sub)) {
        (Ok(main), Ok(sub)) => Ok((main, sub, tombstone)),
        _ => Err(layout(format!("revision ({main}, {sub}) out of range"))),
    }
}

/// A JSON string literal.
fn json_str(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '<' | '>' | '&' => out.push_str(&format!("\\u{:04x}", c as u32)),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
}

fn json_list(out: &mut String, items: &[String]) {
    out.push('[');
    for (i, s) in items.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        json_str(out, s);
    }
    out.push(']');
}

/// A member's JSON as etcd 3.4 stores it.
fn member_json(m: &SnapshotMember) -> String {
    let mut out = format!("{{\"id\":{},\"peerURLs\":", m.id);
    json_list(&mut out, &m.peer_urls);
    if m.is_learner {
        out.push_str(",\"isLearner\":true");
    }
    if !m.name.is_empty() {
        out.push_str(",\"name\":");
        json_str(&mut out, &m.name);
    }
    if !m.client_urls.is_empty() {
        out.push_str(",\"clientURLs\":");
        json_list(&mut out, &m.client_urls);
    }
    out.push('}');
    out
}

/// The auth buckets (`auth`, `authRoles`, `authUsers`, in that order) holding `auth`.
///
/// etcd counts its auth revision from 1 (a store nothing changed), MetaStore from 0: the file
/// has ours plus one, and a restore takes one off. `authEnabled` is written while auth is on;
/// etcd also keeps `[0]` once it was disabled, which reads the same.
pub fn auth_buckets(auth: &AuthState) -> Vec<(&'static [u8], Entries)> {
    let mut flags = vec![(
        b"authRevision".to_vec(),
        auth.revision.saturating_add(1).to_be_bytes().to_vec(),
    )];
    if auth.enabled {
        flags.push((b"authEnabled".to_vec(), vec![1]));
    }
    let roles = auth
        .roles
        .iter()
        .map(|(name, perms)| {
            let role = authpb::Role {
                name: name.as_bytes().to_vec(),
                key_permission: perms
                    .iter()
                    .map(|p| authpb::Permission {
                        perm_type: p.perm_type.number(),
                        key: p.key.clone(),
                        range_end: p.range_end.clone(),
                    })
                    .collect(),
            };
            (name.as_bytes().to_vec(), role.encode_to_vec())
        })
        .collect();
    let users = auth
        .users
        .iter()
        .map(|(name, u)| {
            let user = authpb::User {
                name: name.as_bytes().to_vec(),
                password: u.hash.clone().map(String::into_bytes).unwrap_or_default(),
                roles: u.roles.iter().cloned().collect(),
                options: Some(authpb::UserAddOptions {
                    no_password: u.hash.is_none(),
                }),
            };
            (name.as_bytes().to_vec(), user.encode_to_vec())
        })
        .collect();
    vec![
        (b"auth", flags),
        (b"authRoles", roles),
        (b"authUsers", users),
    ]
}

/// The auth state the auth buckets of an etcd file hold (an empty, disabled one without them).
///
/// # Errors
/// [`SnapshotError::Layout`] for records that do not decode.
pub fn read_auth(reader: &Reader) -> Result<AuthState, SnapshotError> {
    let mut auth = AuthState::default();
    if let Some(b) = bucket(reader, "auth")? {
        for (k, v) in entries(reader, &b)? {
            match k.as_slice() {
                b"authEnabled" => auth.enabled = v == [1],
                b"authRevision" => {
                    let rev = <[u8; 8]>::try_from(v.as_slice())
                        .map(u64::from_be_bytes)
                        .map_err(|_| layout("authRevision is not 8 bytes"))?;
                    auth.revision = rev.saturating_sub(1);
                }
                _ => {}
            }
        }
    }
    let text = |what: &str, b: Vec<u8>| {
        String::from_utf8(b).map_err(|_| layout(format!("{what} is not UTF-8")))
    };
    if let Some(b) = bucket(reader, "authUsers")? {
        for (_, v) in entries(reader, &b)? {
            let u = authpb::User::decode(v.as_slice())
                .map_err(|e| layout(format!("bad auth user: {e}")))?;
            let no_password = u.options.is_some_and(|o| o.no_password);
            let hash = if no_password || u.password.is_empty() {
                None
            } else {
                Some(text("a password hash", u.password)?)
            };
            auth.users.insert(
                text("a user name", u.name)?,
                User {
                    hash,
                    roles: u.roles.into_iter().collect(),
                },
            );
        }
    }
    if let Some(b) = bucket(reader, "authRoles")? {
        for (_, v) in entries(reader, &b)? {
            let r = authpb::Role::decode(v.as_slice())
                .map_err(|e| layout(format!("bad auth role: {e}")))?;
            let perms = r
                .key_permission
                .into_iter()
                .map(|p| {
                    let perm_type = PermType::from_number(p.perm_type)
                        .ok_or_else(|| layout(format!("bad permission type {}", p.perm_type)))?;
                    Ok(Permission {
                        perm_type,
                        key: p.key,
                        range_end: p.range_end,
                    })
                })
                .collect::<Result<Vec<_>, SnapshotError>>()?;
            auth.roles.insert(text("a role name", r.name)?, perms);
        }
    }
    Ok(auth)
}

fn put_all<W: Write>(
    w: &mut bbolt::Writer<W>,
    name: &[u8],
    mut entries: Entries,
) -> Result<(), SnapshotError> {
    entries.sort();
    w.begin_bucket(name)?;
    for (k, v) in entries {
        w.put(&k, &v)?;
    }
    Ok(())
}

/// Writes the database (without the hash) from `export` into `out`; with `plan`, a complete
/// file streamed front to back, without, one whose meta pages must be written after.
///
/// # Errors
/// Store, bbolt and I/O errors; [`SnapshotError::Stopped`] once `stop` says so.
pub fn write_db<W: Write, B: Backend>(
    out: W,
    plan: Option<Plan>,
    export: &mut Export<B>,
    cluster: &ClusterState,
    stop: &dyn Fn() -> bool,
) -> Result<(W, Plan), SnapshotError> {
    export.rewind();
    let mut w = bbolt::Writer::new(out, PAGE_SIZE, plan)?;
    let alarms = cluster
        .alarms
        .iter()
        .map(|&(member_id, alarm)| {
            let key = AlarmMember { member_id, alarm }.encode_to_vec();
            (key, Vec::new())
        })
        .collect();
    put_all(&mut w, b"alarm", alarms)?;
    for (name, entries) in auth_buckets(&cluster.auth) {
        put_all(&mut w, name, entries)?;
    }
    put_all(
        &mut w,
        b"cluster",
        vec![(
            b"clusterVersion".to_vec(),
            CLUSTER_VERSION.as_bytes().to_vec(),
        )],
    )?;
    w.begin_bucket(b"key")?;
    while let Some(chunk) = export.next_chunk()? {
        if stop() {
            return Err(SnapshotError::Stopped("the snapshot was abandoned".into()));
        }
        for v in chunk {
            let kv = if v.tombstone {
                KeyValue {
                    key: v.key,
                    ..Default::default()
                }
            } else {
                KeyValue {
                    key: v.key,
                    create_revision: v.create_revision,
                    mod_revision: v.main,
                    version: v.version,
                    value: v.value,
                    lease: v.lease,
                }
            };
            w.put(
                &revision_key(v.main, v.sub, v.tombstone),
                &kv.encode_to_vec(),
            )?;
        }
    }
    let leases = export
        .leases()
        .iter()
        .map(|&(id, ttl, remaining)| {
            let value = LeaseRecordPb {
                id,
                ttl,
                remaining_ttl: remaining,
            };
            ((id as u64).to_be_bytes().to_vec(), value.encode_to_vec())
        })
        .collect();
    put_all(&mut w, b"lease", leases)?;
    let members = cluster
        .members
        .iter()
        .map(|m| {
            (
                format!("{:x}", m.id).into_bytes(),
                member_json(m).into_bytes(),
            )
        })
        .collect();
    put_all(&mut w, b"members", members)?;
    put_all(&mut w, b"members_removed", vec![])?;
    let mut meta = vec![(
        b"consistent_index".to_vec(),
        cluster.consistent_index.to_be_bytes().to_vec(),
    )];
    let compacted = export.info().compacted;
    if compacted > 0 {
        for name in [&b"finishedCompactRev"[..], b"scheduledCompactRev"] {
            meta.push((name.to_vec(), revision_key(compacted, 0, false)));
        }
    }
    put_all(&mut w, b"meta", meta)?;
    Ok(w.finish()?)
}

/// Sends what is written in chunks of a fixed size, hashing it, and the hash at the end.
struct Chunks<'a> {
    buf: Vec<u8>,
    chunk: usize,
    hash: ring::digest::Context,
    send: &'a mut dyn FnMut(Vec<u8>) -> io::Result<()>,
}

impl Write for Chunks<'_> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        self.hash.update(data);
        let mut rest = data;
        while !rest.is_empty() {
            let n = rest.len().min(self.chunk - self.buf.len());
            self.buf.extend_from_slice(&rest[..n]);
            rest = &rest[n..];
            if self.buf.len() == self.chunk {
                let full = std::mem::replace(&mut self.buf, Vec::with_capacity(self.chunk));
                (self.send)(full)?;
            }
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Streams etcd's snapshot of `export` (the database, then its SHA-256) through `send` in
/// chunks of `chunk` bytes; `total` is told the file's size before the first chunk.
///
/// Two passes over the same point of the store: the first learns the layout (into a sink),
/// the second writes the file front to back. Memory holds a chunk, a page, and the branch
/// keys (the first key of every leaf page); never the file.
///
/// # Errors
/// As [`write_db`]; errors from `send` (as I/O errors).
pub fn stream<B: Backend>(
    export: &mut Export<B>,
    cluster: &ClusterState,
    chunk: usize,
    total: &mut dyn FnMut(u64),
    send: &mut dyn FnMut(Vec<u8>) -> io::Result<()>,
    stop: &dyn Fn() -> bool,
) -> Result<u64, SnapshotError> {
    let (_, plan) = write_db(io::sink(), None, export, cluster, stop)?;
    let size = plan.high_water * u64::from(PAGE_SIZE) + HASH_LEN as u64;
    total(size);
    let chunks = Chunks {
        buf: Vec::with_capacity(chunk),
        chunk: chunk.max(1),
        hash: ring::digest::Context::new(&ring::digest::SHA256),
        send,
    };
    let (chunks, _) = write_db(chunks, Some(plan), export, cluster, stop)?;
    let Chunks {
        buf, hash, send, ..
    } = chunks;
    if !buf.is_empty() {
        send(buf)?;
    }
    send(hash.finish().as_ref().to_vec())?;
    Ok(size)
}

/// Checks the SHA-256 etcd appends to a snapshot, as `etcdctl snapshot restore` does; the
/// size of the database before it.
///
/// # Errors
/// etcdctl's texts for a wrong or (without `skip_hash_check`) missing hash; I/O errors.
pub fn check_hash(file: &mut File, skip_hash_check: bool) -> Result<u64, SnapshotError> {
    let size = file.metadata()?.len();
    // etcd's rule: a database is whole pages, so 32 bytes more means a hash follows.
    let has_hash = size % 512 == HASH_LEN as u64;
    if !has_hash {
        if skip_hash_check {
            return Ok(size);
        }
        return Err(SnapshotError::Hash(
            "snapshot missing hash but --skip-hash-check=false".into(),
        ));
    }
    let db_size = size - HASH_LEN as u64;
    if skip_hash_check {
        return Ok(db_size);
    }
    io::Seek::seek(file, io::SeekFrom::Start(0))?;
    let mut hash = ring::digest::Context::new(&ring::digest::SHA256);
    let mut left = db_size;
    let mut buf = vec![0u8; 1 << 16];
    let mut reader = io::BufReader::new(&*file);
    while left > 0 {
        let n = usize::try_from(left.min(buf.len() as u64)).unwrap_or(buf.len());
        reader.read_exact(&mut buf[..n])?;
        hash.update(&buf[..n]);
        left -= n as u64;
    }
    let mut stored = [0u8; HASH_LEN];
    reader.read_exact(&mut stored)?;
    let computed = hash.finish();
    if computed.as_ref() != stored {
        return Err(SnapshotError::Hash(format!(
            "expected sha256 {}, got {}",
            go_bytes(&stored),
            go_bytes(computed.as_ref())
        )));
    }
    Ok(db_size)
}

/// Bytes as Go's `%v` prints a byte slice (etcdctl's text): `[1 2 3]`.
fn go_bytes(b: &[u8]) -> String {
    let parts: Vec<String> = b.iter().map(u8::to_string).collect();
    format!("[{}]", parts.join(" "))
}

/// What a restore took from an etcd file.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Restored {
    /// The revision the store is at.
    pub revision: i64,
    /// Its compaction point.
    pub compacted: i64,
    /// Versions restored.
    pub versions: u64,
    /// Leases restored.
    pub leases: u64,
    /// The file's `consistent_index`.
    pub consistent_index: u64,
    /// The auth state (users, roles, enabled), for the caller to seed the member with.
    pub auth: AuthState,
}

fn bucket(reader: &Reader, name: &str) -> Result<Option<BucketRoot>, SnapshotError> {
    Ok(reader.bucket(&reader.root(), name.as_bytes())?)
}

fn entries(reader: &Reader, bucket: &BucketRoot) -> Result<Entries, SnapshotError> {
    let mut out = Vec::new();
    let _ = reader.walk::<SnapshotError>(bucket, &mut |e| {
        out.push((e.key.to_vec(), e.value.to_vec()));
        Ok(ControlFlow::Continue(()))
    })?;
    Ok(out)
}

/// A revision stored in `meta` (`scheduledCompactRev`, `finishedCompactRev`).
fn meta_revision(meta: &Entries, name: &[u8]) -> Result<i64, SnapshotError> {
    match meta.iter().find(|(k, _)| k == name) {
        None => Ok(0),
        Some((_, v)) => Ok(parse_revision_key(v)?.0),
    }
}

/// Replaces `store`'s content with the etcd database in the first `db_size` bytes of `file`.
///
/// # Errors
/// [`SnapshotError::Layout`] for a file not in etcd's layout; bbolt, store and I/O errors.
/// The store is unchanged by a failure. The auth state is returned, not stored: the store's
/// applied position is the consensus layer's ([`consensus::seed_auth`]).
pub fn restore_into<B: Backend>(
    store: &Store<B>,
    file: File,
    db_size: u64,
) -> Result<Restored, SnapshotError> {
    let reader = Reader::open(file, db_size)?;
    let auth = read_auth(&reader)?;
    let meta = match bucket(&reader, "meta")? {
        Some(b) => entries(&reader, &b)?,
        None => return Err(layout("no meta bucket")),
    };
    let consistent_index = match meta.iter().find(|(k, _)| k == b"consistent_index") {
        Some((_, v)) => <[u8; 8]>::try_from(v.as_slice())
            .map(u64::from_be_bytes)
            .map_err(|_| layout("consistent_index is not 8 bytes"))?,
        None => 0,
    };
    let compacted = meta_revision(&meta, b"scheduledCompactRev")?
        .max(meta_revision(&meta, b"finishedCompactRev")?);
    let keys = bucket(&reader, "key")?.ok_or_else(|| layout("no key bucket"))?;
    // First pass: the newest revision (etcd's revision is the newest in `key`), and checks.
    let mut newest = 0i64;
    let mut count = 0u64;
    let _ = reader.walk::<SnapshotError>(&keys, &mut |e| {
        let (main, _, _) = parse_revision_key(e.key)?;
        newest = newest.max(main);
        count += 1;
        Ok(ControlFlow::Continue(()))
    })?;
    let revision = newest.max(compacted).max(1);
    let mut leases = Vec::new();
    if let Some(b) = bucket(&reader, "lease")? {
        for (_, v) in entries(&reader, &b)? {
            let l = LeaseRecordPb::decode(v.as_slice())
                .map_err(|e| layout(format!("bad lease record: {e}")))?;
            leases.push((l.id, l.ttl, l.remaining_ttl));
        }
    }
    // Second pass: versions go from the file's walk to the import through a bounded channel.
    let (tx, rx) = std::sync::mpsc::sync_channel::<Result<Version, SnapshotError>>(1024);
    let imported = std::thread::scope(|scope| {
        let reader = &reader;
        let keys = &keys;
        scope.spawn(move || {
            let walked = reader.walk::<SnapshotError>(keys, &mut |e| {
                let item = decode_version(e.key, e.value);
                let failed = item.is_err();
                if tx.send(item).is_err() || failed {
                    // The import stopped, or was told why it must.
                    return Ok(ControlFlow::Break(()));
                }
                Ok(ControlFlow::Continue(()))
            });
            if let Err(e) = walked {
                let _ = tx.send(Err(e));
            }
        });
        let mut versions = rx.into_iter().map(|item| {
            item.map_err(|e| match e {
                SnapshotError::Store(e) => e,
                other => mvcc::Error::BadSnapshot {
                    what: other.to_string(),
                },
            })
        });
        store.import(revision, compacted, &mut versions, &leases)
    });
    imported?;
    Ok(Restored {
        revision,
        compacted,
        versions: count,
        leases: leases.len() as u64,
        consistent_index,
        auth,
    })
}

fn decode_version(key: &[u8], value: &[u8]) -> Result<Version, SnapshotError> {
    let (main, sub, tombstone) = parse_revision_key(key)?;
    let kv = KeyValue::decode(value)
        .map_err(|e| layout(format!("bad key-value at ({main}, {sub}): {e}")))?;
    Ok(Version {
        key: kv.key,
        main,
        sub,
        tombstone,
        create_revision: if tombstone { 0 } else { kv.create_revision },
        version: if tombstone { 0 } else { kv.version },
        lease: if tombstone { 0 } else { kv.lease },
        value: if tombstone { Vec::new() } else { kv.value },
    })
}

/// Opens an etcd snapshot (checking its hash) or database file for [`restore_into`]: the file
/// and the size of the database in it.
///
/// # Errors
/// As [`check_hash`].
pub fn open_file(path: &Path, skip_hash_check: bool) -> Result<(File, u64), SnapshotError> {
    let mut file = File::open(path)?;
    let db_size = check_hash(&mut file, skip_hash_check)?;
    Ok((file, db_size))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use std::io::{Seek, SeekFrom};

    use engine_mem::MemBackend;
    use mvcc::{Command, CompactRequest, DeleteRangeRequest, LeaseGrantRequest, PutRequest};

    use super::*;

    fn store_with_history() -> Store<MemBackend> {
        let s = Store::open(MemBackend::new()).unwrap();
        let put = |key: String, lease: i64| {
            Command::Put(PutRequest {
                key: key.into_bytes(),
                value: vec![b'v'; 300],
                lease,
                ..Default::default()
            })
        };
        s.apply(
            &[Command::LeaseGrant(LeaseGrantRequest { id: 9, ttl: 60 })],
            None,
        )
        .unwrap();
        let mut commands: Vec<Command> = (0..3000)
            .map(|i| put(format!("k{:04}", i % 900), 0))
            .collect();
        commands.push(put("leased".into(), 9));
        commands.push(Command::DeleteRange(DeleteRangeRequest {
            key: b"k0000".to_vec(),
            range_end: b"k0100".to_vec(),
            prev_kv: false,
        }));
        commands.push(Command::Compact(CompactRequest {
            revision: 1500,
            physical: false,
        }));
        for c in commands {
            s.apply(&[c], None).unwrap();
        }
        s
    }

    /// Streams `store`'s snapshot into a file, checking the chunks on the way.
    fn streamed(store: &Store<MemBackend>, chunk: usize) -> (File, u64) {
        let mut export = store.export().unwrap();
        let mut file = tempfile::tempfile().unwrap();
        let mut announced = 0;
        let mut sizes = Vec::new();
        let size = stream(
            &mut export,
            &ClusterState::default(),
            chunk,
            &mut |t| announced = t,
            &mut |blob| {
                sizes.push(blob.len());
                file.write_all(&blob)
            },
            &|| false,
        )
        .unwrap();
        assert_eq!(size, announced);
        assert_eq!(file.metadata().unwrap().len(), size);
        assert!(sizes.iter().all(|&n| n <= chunk), "no chunk over {chunk}");
        assert_eq!(sizes.last(), Some(&HASH_LEN), "the hash comes last, alone");
        file.seek(SeekFrom::Start(0)).unwrap();
        (file, size)
    }

    #[test]
    fn a_streamed_snapshot_restores_to_the_same_store() {
        let s = store_with_history();
        let (mut file, size) = streamed(&s, 32 * 1024);
        assert_eq!(size % 4096, HASH_LEN as u64);
        let db_size = check_hash(&mut file, false).unwrap();
        let t = Store::open(MemBackend::new()).unwrap();
        let restored = restore_into(&t, file, db_size).unwrap();
        assert_eq!(restored.revision, s.current_revision());
        assert_eq!(restored.compacted, 1500);
        assert_eq!(restored.leases, 1);
        assert_eq!(t.hash(0).unwrap(), s.hash(0).unwrap());
        assert_eq!(t.lease(9).map(|l| l.keys), Some(vec![b"leased".to_vec()]));
    }

    #[test]
    fn the_auth_store_round_trips_through_etcds_buckets() {
        let s = store_with_history();
        let mut auth = AuthState {
            enabled: true,
            revision: 7,
            ..Default::default()
        };
        auth.users.insert(
            "root".into(),
            User {
                hash: Some("$2b$04$abcdefghijklmnopqrstuu".into()),
                roles: ["root".to_string()].into_iter().collect(),
            },
        );
        auth.users.insert("nopw".into(), User::default());
        auth.roles.insert("root".into(), Vec::new());
        auth.roles.insert(
            "r".into(),
            vec![Permission {
                perm_type: PermType::ReadWrite,
                key: b"a".to_vec(),
                range_end: vec![0],
            }],
        );
        let cluster = ClusterState {
            auth: auth.clone(),
            ..Default::default()
        };
        let mut export = s.export().unwrap();
        let mut file = tempfile::tempfile().unwrap();
        stream(
            &mut export,
            &cluster,
            4096,
            &mut |_| {},
            &mut |blob| file.write_all(&blob),
            &|| false,
        )
        .unwrap();
        let db_size = check_hash(&mut file, false).unwrap();
        let t = Store::open(MemBackend::new()).unwrap();
        assert_eq!(restore_into(&t, file, db_size).unwrap().auth, auth);
    }

    #[test]
    fn a_damaged_or_headless_file_is_refused_as_etcdctl_refuses_it() {
        let s = store_with_history();
        let (mut file, size) = streamed(&s, 4096);
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes).unwrap();
        bytes[5000] ^= 1;
        let mut damaged = tempfile::tempfile().unwrap();
        damaged.write_all(&bytes).unwrap();
        let e = check_hash(&mut damaged, false).unwrap_err().to_string();
        assert!(e.starts_with("expected sha256 ["), "{e}");
        let mut headless = tempfile::tempfile().unwrap();
        headless
            .write_all(&bytes[..size as usize - HASH_LEN])
            .unwrap();
        let e = check_hash(&mut headless, false).unwrap_err().to_string();
        assert_eq!(e, "snapshot missing hash but --skip-hash-check=false");
        assert_eq!(
            check_hash(&mut headless, true).unwrap(),
            size - HASH_LEN as u64
        );
    }

    #[test]
    fn a_failed_send_stops_the_stream() {
        let s = store_with_history();
        let mut export = s.export().unwrap();
        let mut sent = 0;
        let result = stream(
            &mut export,
            &ClusterState::default(),
            4096,
            &mut |_| {},
            &mut |_| {
                sent += 1;
                if sent == 3 {
                    Err(io::Error::other("gone"))
                } else {
                    Ok(())
                }
            },
            &|| false,
        );
        assert!(result.is_err());
        assert_eq!(sent, 3, "nothing is sent after a failed chunk");
    }

    #[test]
    fn member_json_is_etcds() {
        let m = SnapshotMember {
            id: 11802139097793119417,
            name: "e1".into(),
            peer_urls: vec!["http://127.0.0.1:40188".into()],
            client_urls: vec!["http://127.0.0.1:40187".into()],
            is_learner: false,
        };
        // As etcd 3.4.23 stored it.
        assert_eq!(
            member_json(&m),
            r#"{"id":11802139097793119417,"peerURLs":["http://127.0.0.1:40188"],"name":"e1","clientURLs":["http://127.0.0.1:40187"]}"#
        );
    }
}
