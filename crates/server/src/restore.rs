//! `metastore snapshot restore` and `metastore migrate-etcd`: a MetaStore data dir built from an
//! etcd snapshot, an etcd database file, or a stopped etcd 3.4 member's data dir.
//!
//! The flags are `etcdctl snapshot restore`'s. As there, the data dir must not exist yet and the
//! member's cluster flags are checked here; the membership itself is set when the member first
//! starts, so it must be started with the same `--name`, `--initial-cluster` and
//! `--initial-cluster-token` (every member of a new cluster restores the same file).
//!
//! Migration reads `member/snap/db` and only checks the WAL after it: entries etcd committed
//! after the database's consistent index are not applied from the WAL, so such a data dir is
//! refused with what to do (start that etcd once and stop it cleanly, or take a snapshot).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};
use engine_redb::{Options, RedbBackend};
use prost::Message;

/// The subcommands, apart from serving.
#[derive(Debug, Parser)]
#[command(name = "metastore", about = "MetaStore's offline tools")]
enum Tool {
    /// etcd's snapshot tools.
    #[command(subcommand)]
    Snapshot(SnapshotCommand),
    /// Builds a MetaStore data dir from a stopped etcd 3.4 member's data dir.
    MigrateEtcd(MigrateArgs),
}

/// `metastore snapshot …`.
#[derive(Debug, Subcommand)]
enum SnapshotCommand {
    /// Builds a MetaStore data dir from an etcd snapshot (or an etcd `member/snap/db` file with
    /// --skip-hash-check), as `etcdctl snapshot restore` builds etcd's.
    Restore(RestoreArgs),
}

/// `etcdctl snapshot restore`'s flags.
#[derive(Debug, Args)]
struct RestoreArgs {
    /// The snapshot file.
    file: PathBuf,
    #[command(flatten)]
    member: MemberArgs,
    /// Take a file without its hash (a database copied from a data dir) or with a wrong one.
    #[arg(long = "skip-hash-check")]
    skip_hash_check: bool,
}

/// `metastore migrate-etcd`'s flags.
#[derive(Debug, Args)]
struct MigrateArgs {
    /// The stopped etcd member's data dir (holding member/snap/db and member/wal).
    #[arg(long = "etcd-data-dir")]
    etcd_data_dir: PathBuf,
    #[command(flatten)]
    member: MemberArgs,
}

/// The new member's flags, as `etcdctl snapshot restore` takes them.
#[derive(Debug, Args)]
struct MemberArgs {
    /// The data dir to create (default `<name>.metastore`); it must not exist.
    #[arg(long = "data-dir")]
    data_dir: Option<PathBuf>,
    /// The member's name.
    #[arg(long, default_value = "default")]
    name: String,
    /// The new cluster's members, name=peer-url,…
    #[arg(
        long = "initial-cluster",
        default_value = "default=http://localhost:2380"
    )]
    initial_cluster: String,
    /// The new cluster's token.
    #[arg(long = "initial-cluster-token", default_value = "etcd-cluster")]
    initial_cluster_token: String,
    /// This member's peer URLs, as listed in --initial-cluster.
    #[arg(
        long = "initial-advertise-peer-urls",
        default_value = "http://localhost:2380"
    )]
    initial_advertise_peer_urls: String,
}

/// Whether `args` (the whole command line) names one of the tools rather than the server.
pub fn is_tool(args: &[std::ffi::OsString]) -> bool {
    matches!(
        args.get(1).and_then(|a| a.to_str()),
        Some("snapshot" | "migrate-etcd")
    )
}

/// Runs the tool `args` names.
///
/// # Errors
/// Bad flags, an existing data dir, a bad file, a failed restore.
pub fn run_tool(args: Vec<std::ffi::OsString>) -> Result<()> {
    match Tool::parse_from(args) {
        Tool::Snapshot(SnapshotCommand::Restore(a)) => {
            let dir = a.member.check()?;
            let (file, db_size) = kvapi::etcd_snapshot::open_file(&a.file, a.skip_hash_check)
                .with_context(|| format!("reading {}", a.file.display()))?;
            restore(&dir, file, db_size, &a.member, &a.file)
        }
        Tool::MigrateEtcd(a) => {
            let dir = a.member.check()?;
            let db = a.etcd_data_dir.join("member").join("snap").join("db");
            if !db.is_file() {
                bail!(
                    "{} is not an etcd data dir: {} is missing",
                    a.etcd_data_dir.display(),
                    db.display()
                );
            }
            let (file, db_size) = kvapi::etcd_snapshot::open_file(&db, true)
                .with_context(|| format!("reading {}", db.display()))?;
            let index = consistent_index(&db)?;
            check_wal(&a.etcd_data_dir.join("member").join("wal"), index)?;
            restore(&dir, file, db_size, &a.member, &db)
        }
    }
}

impl MemberArgs {
    /// Checks the flags as etcd does; the data dir to create.
    fn check(&self) -> Result<PathBuf> {
        let dir = self
            .data_dir
            .clone()
            .unwrap_or_else(|| PathBuf::from(format!("{}.metastore", self.name)));
        if dir.exists() {
            bail!("data-dir {:?} exists", dir.display().to_string());
        }
        let cluster = crate::config::parse_initial_cluster(&self.initial_cluster)?;
        let Some(own) = cluster.get(&self.name) else {
            bail!(
                "--initial-cluster has no entry for this member's --name {:?}",
                self.name
            );
        };
        let mut own = own.clone();
        let mut advertised: Vec<String> = self
            .initial_advertise_peer_urls
            .split(',')
            .map(|u| u.trim().to_string())
            .filter(|u| !u.is_empty())
            .collect();
        own.sort();
        advertised.sort();
        if own != advertised {
            bail!(
                "--initial-cluster has {}={} but --initial-advertise-peer-urls is {}",
                self.name,
                own.join(","),
                self.initial_advertise_peer_urls
            );
        }
        let _: BTreeMap<_, _> = cluster;
        Ok(dir)
    }
}

/// Restores the etcd database in `file` into a new data dir `dir`; removes it on failure.
fn restore(
    dir: &Path,
    file: std::fs::File,
    db_size: u64,
    member: &MemberArgs,
    from: &Path,
) -> Result<()> {
    // Built under a scratch name and renamed into place once complete and durable: a crash
    // part way never leaves a data dir that looks restored.
    let name = dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "data".into());
    let scratch = dir.with_file_name(format!(".{name}.restoring-{}", std::process::id()));
    let built = build(&scratch, file, db_size).and_then(|r| {
        mvcc::durable::rename_synced(&scratch, dir)
            .with_context(|| format!("renaming {} to {}", scratch.display(), dir.display()))?;
        Ok(r)
    });
    match built {
        Ok(r) => {
            tracing::info!(
                path = %from.display(),
                data_dir = %dir.display(),
                revision = r.revision,
                compacted = r.compacted,
                versions = r.versions,
                leases = r.leases,
                "restored snapshot"
            );
            eprintln!(
                "restored {} into {}: revision {}, {} versions, {} leases; start the member with \
                 --data-dir {} --name {} --initial-cluster {} --initial-cluster-token {}",
                from.display(),
                dir.display(),
                r.revision,
                r.versions,
                r.leases,
                dir.display(),
                member.name,
                member.initial_cluster,
                member.initial_cluster_token
            );
            Ok(())
        }
        Err(e) => {
            // Nothing of a failed restore is kept (a scratch dir a crash leaves has a name
            // nothing starts on): the same command can run again.
            let _ = std::fs::remove_dir_all(&scratch);
            Err(e)
        }
    }
}

fn build(dir: &Path, file: std::fs::File, db_size: u64) -> Result<kvapi::etcd_snapshot::Restored> {
    let member = dir.join("member");
    mvcc::durable::create_dir_all_synced(&member)
        .with_context(|| format!("creating {}", member.display()))?;
    let path = member.join("data.redb");
    let backend = RedbBackend::open(&path, &Options::default())
        .with_context(|| format!("opening {}", path.display()))?;
    let store = mvcc::Store::open(backend).context("opening the new store")?;
    let restored =
        kvapi::etcd_snapshot::restore_into(&store, file, db_size).context("restoring")?;
    consensus::seed_auth(&store, restored.auth.clone()).context("restoring the auth state")?;
    Ok(restored)
}

/// The `consistent_index` of the etcd database at `db`.
fn consistent_index(db: &Path) -> Result<u64> {
    let (file, size) = kvapi::etcd_snapshot::open_file(db, true)?;
    let reader = bbolt::Reader::open(file, size)?;
    let Some(meta) = reader.bucket(&reader.root(), b"meta")? else {
        bail!("{} has no meta bucket", db.display());
    };
    let mut index = None;
    let _ = reader.walk::<bbolt::Error>(&meta, &mut |e| {
        if e.key == b"consistent_index" {
            index = <[u8; 8]>::try_from(e.value).ok().map(u64::from_be_bytes);
            return Ok(std::ops::ControlFlow::Break(()));
        }
        Ok(std::ops::ControlFlow::Continue(()))
    })?;
    // A database etcd never committed a write to has none: every request is in the WAL.
    Ok(index.unwrap_or(0))
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

/// A WAL record holding a Raft entry.
const WAL_ENTRY: i64 = 2;
/// A Raft entry carrying a request (not a configuration change).
const ENTRY_NORMAL: i32 = 0;
/// No WAL record is this large; a bigger length is a torn or foreign file.
const MAX_WAL_RECORD: u64 = 64 << 20;

/// The top-level field numbers of a protobuf message; `None` when it does not parse.
fn top_level_fields(mut data: &[u8]) -> Option<Vec<u64>> {
    fn varint(data: &mut &[u8]) -> Option<u64> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let (&b, rest) = data.split_first()?;
            *data = rest;
            v |= u64::from(b & 0x7f) << shift;
            if b < 0x80 {
                return Some(v);
            }
        }
        None
    }
    let mut fields = Vec::new();
    while !data.is_empty() {
        let key = varint(&mut data)?;
        let skip = match key & 7 {
            0 => {
                varint(&mut data)?;
                0
            }
            1 => 8,
            2 => usize::try_from(varint(&mut data)?).ok()?,
            5 => 4,
            _ => return None,
        };
        data = data.get(skip..)?;
        fields.push(key >> 3);
    }
    Some(fields)
}

/// Whether a normal entry's request writes keys: an etcd 3.4 `InternalRaftRequest` (it has a
/// header, field 100; v2 requests have none) with a put (4), delete (5) or txn (6). Those are
/// the requests that move the consistent index when applied; the others (leases, compaction,
/// alarms, cluster attributes) leave it behind, so a cleanly stopped etcd has them after it.
/// What does not parse counts as writing keys.
fn changes_keys(data: &[u8]) -> bool {
    match top_level_fields(data) {
        None => !data.is_empty(),
        Some(fields) => fields.contains(&100) && fields.iter().any(|f| matches!(f, 4..=6)),
    }
}

/// Refuses a WAL with writes after `index` (the database's consistent index): the database
/// does not hold them (etcd stopped before committing them), and replaying the WAL is not done.
fn check_wal(dir: &Path, index: u64) -> Result<()> {
    let mut files: Vec<PathBuf> = match std::fs::read_dir(dir) {
        Ok(entries) => entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "wal"))
            .collect(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e).with_context(|| format!("reading {}", dir.display())),
    };
    files.sort();
    // Later records for an index replace earlier ones (a new leader's log wins).
    let mut past: BTreeMap<u64, bool> = BTreeMap::new();
    for path in &files {
        let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        let mut at = 0usize;
        while at + 8 <= bytes.len() {
            let mut frame = [0u8; 8];
            frame.copy_from_slice(&bytes[at..at + 8]);
            let frame = u64::from_le_bytes(frame);
            let len = frame & 0x00ff_ffff_ffff_ffff;
            let pad = if frame >> 63 == 1 {
                (frame >> 56) & 0x7
            } else {
                0
            };
            if len == 0 {
                break; // The preallocated rest of the file.
            }
            if len > MAX_WAL_RECORD {
                bail!("{}: a WAL record of {len} bytes", path.display());
            }
            // The length leaves out the padding to 8 bytes that follows the record.
            let start = at + 8;
            let end = start + len as usize + pad as usize;
            if end > bytes.len() {
                break; // A torn last record: etcd drops it too.
            }
            let record = WalRecord::decode(&bytes[start..start + len as usize])
                .with_context(|| format!("{}: a bad WAL record", path.display()))?;
            if record.kind == WAL_ENTRY {
                let entry = RaftEntry::decode(record.data.as_slice())
                    .with_context(|| format!("{}: a bad Raft entry", path.display()))?;
                past.retain(|&i, _| i < entry.index);
                if entry.index > index {
                    past.insert(
                        entry.index,
                        entry.kind == ENTRY_NORMAL && changes_keys(&entry.data),
                    );
                }
            }
            at = end;
        }
    }
    let requests: Vec<u64> = past
        .into_iter()
        .filter(|&(_, request)| request)
        .map(|(i, _)| i)
        .collect();
    if let (Some(first), Some(last)) = (requests.first(), requests.last()) {
        bail!(
            "etcd's WAL in {} has {} requests after the database's consistent index {index} \
             (writes at entries {first} to {last}); MetaStore migrates from the database alone \
             and would lose them. Start that etcd member once more and stop it cleanly (it applies them to \
             its database), or take `etcdctl snapshot save` from the running etcd and use \
             `metastore snapshot restore`",
            dir.display(),
            requests.len()
        );
    }
    Ok(())
}
