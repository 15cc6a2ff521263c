//! Durable file-system changes: every name recovery depends on is fsynced into its directory.
//!
//! A file's bytes become durable by an fsync of the file, but its *name* (creating, renaming
//! or removing it) becomes durable only by an fsync of the directory that holds it, as POSIX
//! requires; a power cut otherwise may keep the bytes and lose the name, or keep a rename's
//! old name. Every crate creates, renames and removes the files and directories that recovery
//! reads (data dir, member dir, engine files, the Raft log, snapshots, the member marker)
//! through these helpers, and `xtask`'s tidy check refuses direct calls elsewhere.

use std::fs::File;
use std::io::{self, Write};
use std::path::Path;

/// Fsyncs directory `dir`, making the names created, renamed or removed in it durable.
///
/// # Errors
/// The directory cannot be opened or synced.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Fsyncs the directory holding `path` (the current directory for a bare name).
///
/// # Errors
/// The directory cannot be opened or synced.
pub fn sync_parent(path: &Path) -> io::Result<()> {
    match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => sync_dir(parent),
        _ => sync_dir(Path::new(".")),
    }
}

/// Creates `dir` and any missing parents, fsyncing each new directory and the parent that
/// got its name, so the whole path survives a power cut. An existing `dir` is synced too: a
/// previous run may have created it and crashed before its sync.
///
/// # Errors
/// A component cannot be created or synced.
pub fn create_dir_all_synced(dir: &Path) -> io::Result<()> {
    if dir.as_os_str().is_empty() {
        return Ok(());
    }
    if dir.is_dir() {
        sync_dir(dir)?;
        return sync_parent(dir);
    }
    if let Some(parent) = dir.parent() {
        create_dir_all_synced(parent)?;
    }
    match std::fs::create_dir(dir) {
        Ok(()) => {}
        // Another creator won the race; its name still needs our sync.
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists && dir.is_dir() => {}
        Err(e) => return Err(e),
    }
    sync_dir(dir)?;
    sync_parent(dir)
}

/// Renames `from` to `to` and fsyncs the directories involved, so after a power cut exactly
/// the new name exists (and the old one is gone).
///
/// # Errors
/// The rename or a sync fails.
pub fn rename_synced(from: &Path, to: &Path) -> io::Result<()> {
    std::fs::rename(from, to)?;
    sync_parent(to)?;
    if from.parent() != to.parent() {
        sync_parent(from)?;
    }
    Ok(())
}

/// Removes file `path` and fsyncs its directory. A file that is already gone is not an error.
///
/// # Errors
/// The removal or the sync fails.
pub fn remove_synced(path: &Path) -> io::Result<()> {
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    }
    sync_parent(path)
}

/// Creates (or truncates) file `path` for writing and fsyncs its directory, so the name is
/// durable; the caller fsyncs the bytes it writes (`File::sync_all`) before relying on them.
///
/// # Errors
/// The file cannot be created, or the sync fails.
pub fn create_file_synced(path: &Path) -> io::Result<File> {
    let file = File::create(path)?;
    file.sync_all()?;
    sync_parent(path)?;
    Ok(file)
}

/// Replaces `path` with `bytes` atomically and durably: write a temporary file beside it,
/// fsync it, rename it over `path`, fsync the directory. A crash leaves the old or the new
/// content, never a mix.
///
/// # Errors
/// Any step fails; the temporary file may be left behind and is overwritten next time.
pub fn write_synced(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = Path::new(&tmp);
    {
        let mut file = File::create(tmp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
    }
    rename_synced(tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn helpers_create_rename_remove() {
        let dir = tempfile::tempdir().unwrap();
        let nested = dir.path().join("a").join("b");
        create_dir_all_synced(&nested).unwrap();
        assert!(nested.is_dir());
        // Existing directories are fine.
        create_dir_all_synced(&nested).unwrap();

        let file = nested.join("f");
        let mut f = create_file_synced(&file).unwrap();
        f.write_all(b"x").unwrap();
        f.sync_all().unwrap();
        let moved = dir.path().join("a").join("g");
        rename_synced(&file, &moved).unwrap();
        assert!(!file.exists());
        assert_eq!(std::fs::read(&moved).unwrap(), b"x");

        write_synced(&moved, b"yz").unwrap();
        assert_eq!(std::fs::read(&moved).unwrap(), b"yz");

        remove_synced(&moved).unwrap();
        assert!(!moved.exists());
        remove_synced(&moved).unwrap();
    }

    #[test]
    fn a_file_in_the_way_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("f");
        std::fs::write(&file, b"").unwrap();
        assert!(create_dir_all_synced(&file.join("sub")).is_err());
    }
}
