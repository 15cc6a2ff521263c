//! `metastore snapshot restore` and `metastore migrate-etcd`: a MetaStore data dir built from an
//! etcd snapshot, an etcd database file, or a stopped etcd 3.4 member's data dir.
//!
//! The flags are `etcdctl snapshot restore`'s. As there, the data dir must not exist yet and the
//! member's cluster flags are checked here; the membership itself is set when the member first
//! starts, so it must be started with the same `--name`, `--initial-cluster` and
//! `--initial-cluster-token` (every member of a new cluster restores the same file).
//!
//! Migration reads `member/snap/db`, then replays the requests etcd committed after the
//! database's consistent index from its WAL (`member/wal`), as etcd itself does when it
//! restarts: what a killed etcd acknowledged but had not yet committed to its database.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};
use engine_redb::{Options, RedbBackend};

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
            restore(&dir, file, db_size, &a.member, &a.file, None)
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
            let wal = a.etcd_data_dir.join("member").join("wal");
            let tail = kvapi::etcd_wal::read_tail(&wal, index)
                .with_context(|| format!("reading etcd's WAL in {}", wal.display()))?;
            restore(&dir, file, db_size, &a.member, &db, Some(tail))
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
    tail: Option<kvapi::etcd_wal::Tail>,
) -> Result<()> {
    // Built under a scratch name and renamed into place once complete and durable: a crash
    // part way never leaves a data dir that looks restored.
    let name = dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "data".into());
    let scratch = dir.with_file_name(format!(".{name}.restoring-{}", std::process::id()));
    let built = build(&scratch, file, db_size, tail).and_then(|r| {
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
                replayed = r.replayed,
                "restored snapshot"
            );
            eprintln!(
                "restored {} into {}: revision {}, {} versions, {} leases, {} requests replayed \
                 from etcd's WAL; start the member with --data-dir {} --name {} \
                 --initial-cluster {} --initial-cluster-token {}",
                from.display(),
                dir.display(),
                r.revision,
                r.versions,
                r.leases,
                r.replayed,
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

/// What a restore did.
struct Built {
    revision: i64,
    compacted: i64,
    versions: u64,
    leases: u64,
    /// Requests replayed from etcd's WAL.
    replayed: usize,
}

fn build(
    dir: &Path,
    file: std::fs::File,
    db_size: u64,
    tail: Option<kvapi::etcd_wal::Tail>,
) -> Result<Built> {
    let member = dir.join("member");
    mvcc::durable::create_dir_all_synced(&member)
        .with_context(|| format!("creating {}", member.display()))?;
    let path = member.join("data.redb");
    let backend = RedbBackend::open(&path, &Options::default())
        .with_context(|| format!("opening {}", path.display()))?;
    let store = mvcc::Store::open(backend).context("opening the new store")?;
    let restored =
        kvapi::etcd_snapshot::restore_into(&store, file, db_size).context("restoring")?;
    let mut auth = restored.auth.clone();
    let mut replayed = 0;
    if let Some(tail) = tail {
        replayed = tail.commands.len();
        replay(&store, &mut auth, tail)?;
    }
    consensus::seed_auth(&store, auth).context("restoring the auth state")?;
    Ok(Built {
        revision: store.current_revision(),
        compacted: store.compact_revision(),
        versions: restored.versions,
        leases: store.leases().len() as u64,
        replayed,
    })
}

/// Commands applied to the store per batch while replaying etcd's WAL.
const REPLAY_BATCH: usize = 1024;

/// Applies the WAL's commands in log order: key, lease and compaction requests to the store
/// (each refused one changes nothing, as in etcd's apply), auth requests to `auth`.
fn replay<B: mvcc::Backend>(
    store: &mvcc::Store<B>,
    auth: &mut consensus::AuthState,
    tail: kvapi::etcd_wal::Tail,
) -> Result<()> {
    let mut batch: Vec<mvcc::Command> = Vec::new();
    let flush = |batch: &mut Vec<mvcc::Command>| -> Result<()> {
        if !batch.is_empty() {
            store
                .apply(batch, None)
                .context("replaying etcd's WAL into the store")?;
            batch.clear();
        }
        Ok(())
    };
    for (index, command) in tail.commands {
        match command {
            mvcc::Command::Auth(req) => {
                flush(&mut batch)?;
                if let Err(e) = auth.replay(&req) {
                    tracing::info!(index, cause = %e, "a replayed auth request was refused, as etcd refused it");
                }
            }
            other => {
                batch.push(other);
                if batch.len() >= REPLAY_BATCH {
                    flush(&mut batch)?;
                }
            }
        }
    }
    flush(&mut batch)?;
    // The store must hold what was replayed before the data dir is renamed into place.
    store.backend().flush().context("flushing the store")?;
    Ok(())
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
