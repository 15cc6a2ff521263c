//! The member marker: a durable note that this member has been initialised, so lost state is
//! refused at start-up instead of being mistaken for a new member.
//!
//! Without it, a member whose Raft log (or engine file) vanished — a power cut before the
//! directory entry was durable, an operator's mistake, a bad restore — looks exactly like a
//! fresh data dir and bootstraps a new, empty cluster under the old name, silently losing
//! every acknowledged write. The marker is written (fsynced, and its directory fsynced) only
//! after the state it vouches for is durable: the log file's name and the vote and membership
//! entry in it. From then on every start checks that state is still there.

use std::path::{Path, PathBuf};

use crate::error::StartError;

/// The marker's file name in the member directory.
pub const MARKER: &str = "member.marker";
/// The Raft log's directory name in the member directory (or `--wal-dir`).
pub(crate) const RAFT_LOG: &str = "raft-log";
/// The Raft log's file name before segment files: migrated at start when found.
pub(crate) const LEGACY_RAFT_LOG: &str = "raft-log.redb";

/// The marker's path in member directory `dir`.
fn path(dir: &Path) -> PathBuf {
    dir.join(MARKER)
}

/// Whether member directory `dir` holds the marker of an initialised member.
///
/// # Errors
/// [`StartError::Marker`] when the marker's presence cannot be determined.
pub fn initialised(dir: &Path) -> Result<bool, StartError> {
    let marker = path(dir);
    marker.try_exists().map_err(|e| StartError::Marker {
        path: marker.display().to_string(),
        cause: e,
    })
}

/// Refuses to start when `dir` carries the marker but `file` (the Raft log, an engine's
/// data file) is gone: the member's state was lost and bootstrapping would hide it.
///
/// # Errors
/// [`StartError::Missing`] naming the file, or [`StartError::Marker`].
pub fn require(dir: &Path, file: &str) -> Result<(), StartError> {
    require_path(dir, &dir.join(file))
}

/// As [`require`], for a file anywhere (the Raft log in a `--wal-dir` of its own).
pub(crate) fn require_path(dir: &Path, wanted: &Path) -> Result<(), StartError> {
    if !initialised(dir)? {
        return Ok(());
    }
    match wanted.try_exists() {
        Ok(true) => Ok(()),
        Ok(false) => Err(missing(dir, &format!("{} is missing", wanted.display()))),
        Err(e) => Err(StartError::Marker {
            path: wanted.display().to_string(),
            cause: e,
        }),
    }
}

/// The refusal for a member whose marker vouches for state that is not there.
pub(crate) fn missing(dir: &Path, what: &str) -> StartError {
    StartError::Missing {
        what: what.to_string(),
        marker: path(dir).display().to_string(),
    }
}

/// The member id the marker in `dir` records; `None` for a member never initialised.
///
/// # Errors
/// [`StartError::Marker`] when the marker cannot be read, [`StartError::MarkerWithoutId`]
/// when it names no id.
pub(crate) fn recorded_id(dir: &Path) -> Result<Option<u64>, StartError> {
    let marker = path(dir);
    let text = match std::fs::read_to_string(&marker) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => {
            return Err(StartError::Marker {
                path: marker.display().to_string(),
                cause: e,
            })
        }
    };
    text.lines()
        .find_map(|l| l.strip_prefix("member "))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        .map(Some)
        .ok_or_else(|| StartError::MarkerWithoutId {
            path: marker.display().to_string(),
        })
}

/// The cluster id the marker in `dir` records; `None` for a member never initialised or a
/// marker written before cluster ids were recorded.
///
/// # Errors
/// [`StartError::Marker`] when the marker cannot be read.
pub(crate) fn recorded_cluster(dir: &Path) -> Result<Option<u64>, StartError> {
    let marker = path(dir);
    match std::fs::read_to_string(&marker) {
        Ok(text) => Ok(text
            .lines()
            .find_map(|l| l.strip_prefix("cluster "))
            .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(StartError::Marker {
            path: marker.display().to_string(),
            cause: e,
        }),
    }
}

/// Writes the marker durably (idempotent), once the state it vouches for is durable: the
/// member id and cluster id, which a restart keeps whatever `--initial-*` flags it is given.
///
/// # Errors
/// [`StartError::Marker`] when the marker cannot be written or synced.
pub(crate) fn write(dir: &Path, id: u64, cluster: u64) -> Result<(), StartError> {
    if initialised(dir)? {
        return Ok(());
    }
    let marker = path(dir);
    let text = format!("metastore member marker v1\nmember {id:x}\ncluster {cluster:x}\n");
    mvcc::durable::write_synced(&marker, text.as_bytes()).map_err(|e| StartError::Marker {
        path: marker.display().to_string(),
        cause: e,
    })?;
    tracing::info!(path = %marker.display(), "member marker written: lost state will be refused");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_marker_records_the_member_id() {
        let dir = tempfile::tempdir().expect("tempdir");
        assert_eq!(recorded_id(dir.path()).ok(), Some(None));
        assert_eq!(recorded_cluster(dir.path()).ok(), Some(None));
        write(dir.path(), 0x700d_9ac7_6f7b_e1bf, 0xc1).expect("write");
        assert_eq!(
            recorded_id(dir.path()).ok(),
            Some(Some(0x700d_9ac7_6f7b_e1bf))
        );
        assert_eq!(recorded_cluster(dir.path()).ok(), Some(Some(0xc1)));
        std::fs::write(path(dir.path()), "metastore member marker v1\n").expect("overwrite");
        assert!(
            recorded_id(dir.path()).is_err(),
            "a marker without an id is refused"
        );
    }

    #[test]
    fn marker_vouches_for_files() {
        let dir = tempfile::tempdir().unwrap();
        // No marker: a new member, nothing is required.
        require(dir.path(), RAFT_LOG).unwrap();
        write(dir.path(), 7, 1).unwrap();
        assert!(initialised(dir.path()).unwrap());
        let err = require(dir.path(), RAFT_LOG).unwrap_err().to_string();
        assert!(err.contains("raft-log is missing"), "{err}");
        assert!(err.contains("refusing to start"), "{err}");
        std::fs::create_dir(dir.path().join(RAFT_LOG)).unwrap();
        require(dir.path(), RAFT_LOG).unwrap();
        // Writing again keeps the marker.
        write(dir.path(), 7, 1).unwrap();
    }
}
