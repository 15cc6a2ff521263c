//! The Raft log before segment files (`raft-log.redb`), read once to migrate it.
//!
//! The migration writes every entry, the vote, the purged id and the committed hint into the
//! segment directory, syncs and seals it, and only then removes the redb file. A crash before
//! the removal leaves the redb file, and the next start migrates again from scratch (the
//! segment directory is emptied first: nothing has used it yet).

use std::path::Path;

use redb::{ReadableDatabase, ReadableTable, TableDefinition};

use crate::types::typ::{Entry, LogId, Vote};
use crate::wal::{Head, Wal};

const LOG: TableDefinition<'static, u64, &'static [u8]> = TableDefinition::new("log");
const STATE: TableDefinition<'static, &'static str, &'static [u8]> = TableDefinition::new("state");

/// Moves the log in redb file `legacy` into segment directory `dir`, then removes `legacy`.
pub(crate) fn migrate(legacy: &Path, dir: &Path) -> Result<(), String> {
    let at = |e: &dyn std::fmt::Display| format!("{}: {e}", legacy.display());
    if dir.try_exists().map_err(|e| at(&e))? {
        for item in std::fs::read_dir(dir).map_err(|e| format!("{}: {e}", dir.display()))? {
            let path = item.map_err(|e| format!("{}: {e}", dir.display()))?.path();
            mvcc::durable::remove_synced(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        }
    }
    let db = redb::Database::open(legacy).map_err(|e| at(&e))?;
    let txn = db.begin_read().map_err(|e| at(&e))?;
    let state = txn.open_table(STATE).map_err(|e| at(&e))?;
    let get = |key: &str| -> Result<Option<Vec<u8>>, String> {
        Ok(state
            .get(key)
            .map_err(|e| at(&e))?
            .map(|v| v.value().to_vec()))
    };
    let vote: Option<Vote> = get("vote")?
        .map(|raw| bincode::deserialize(&raw).map_err(|e| at(&e)))
        .transpose()?;
    let flat = |raw: Option<Vec<u8>>| -> Result<Option<LogId>, String> {
        Ok(raw
            .map(|raw| bincode::deserialize::<Option<LogId>>(&raw).map_err(|e| at(&e)))
            .transpose()?
            .flatten())
    };
    let purged = flat(get("last_purged")?)?;
    let committed = flat(get("committed")?)?;
    let (mut wal, _) = Wal::open(dir, crate::wal::SEGMENT_BYTES).map_err(|e| e.to_string())?;
    let log = txn.open_table(LOG).map_err(|e| at(&e))?;
    let mut entries = 0u64;
    for item in log.iter().map_err(|e| at(&e))? {
        let (_, raw) = item.map_err(|e| at(&e))?;
        let raw = raw.value();
        let entry: Entry = bincode::deserialize(raw).map_err(|e| at(&e))?;
        let head = Head {
            index: entry.log_id.index,
            term: entry.log_id.leader_id.term,
            node: entry.log_id.leader_id.node_id.0,
        };
        wal.append_entry(head, raw).map_err(|e| e.to_string())?;
        entries += 1;
    }
    let meta = crate::log_store::meta_blob(vote, purged, committed)?;
    wal.write_state(&meta).map_err(|e| e.to_string())?;
    wal.seal().map_err(|e| e.to_string())?;
    drop(wal);
    drop(log);
    drop(state);
    drop(txn);
    drop(db);
    mvcc::durable::remove_synced(legacy).map_err(|e| at(&e))?;
    tracing::info!(
        from = %legacy.display(),
        to = %dir.display(),
        entries,
        "migrated the Raft log from redb to segment files"
    );
    Ok(())
}
