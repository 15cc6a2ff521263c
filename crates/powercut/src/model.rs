//! The in-memory filesystem: every inode has what a reader sees now (live) and what would
//! survive a power cut (durable).

use std::collections::{BTreeMap, HashMap};
use std::ffi::OsString;

/// The root directory's inode number (FUSE's).
pub(crate) const ROOT: u64 = 1;

/// What one inode holds, live and durable.
#[derive(Clone, Debug)]
pub(crate) enum Content {
    /// A regular file's bytes.
    File {
        /// What reads see now.
        live: Vec<u8>,
        /// What survives a power cut: the bytes at the last fsync.
        durable: Vec<u8>,
    },
    /// A directory's names.
    Dir {
        /// The names now.
        live: BTreeMap<OsString, u64>,
        /// The names at the directory's last fsync.
        durable: BTreeMap<OsString, u64>,
    },
}

/// One inode.
#[derive(Clone, Debug)]
pub(crate) struct Inode {
    /// Permission bits.
    pub(crate) mode: u16,
    /// Its content.
    pub(crate) content: Content,
}

/// Counts of what the model did, and what the last cut dropped.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// File fsyncs served.
    pub file_syncs: u64,
    /// Directory fsyncs served.
    pub dir_syncs: u64,
    /// Power cuts.
    pub cuts: u64,
    /// Files whose unsynced bytes the last cut dropped.
    pub dropped_bytes_files: u64,
    /// Directories whose unsynced names the last cut dropped.
    pub dropped_name_dirs: u64,
}

/// The whole filesystem.
#[derive(Debug)]
pub(crate) struct Model {
    pub(crate) inodes: HashMap<u64, Inode>,
    next: u64,
    pub(crate) stats: Stats,
}

/// Why an operation failed, as an errno the FUSE layer answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Fail {
    NoEntry,
    Exists,
    NotDir,
    IsDir,
    NotEmpty,
}

impl Model {
    /// An empty filesystem: a root directory, durable.
    pub(crate) fn new() -> Self {
        let mut inodes = HashMap::new();
        inodes.insert(
            ROOT,
            Inode {
                mode: 0o755,
                content: Content::Dir {
                    live: BTreeMap::new(),
                    durable: BTreeMap::new(),
                },
            },
        );
        Self {
            inodes,
            next: ROOT + 1,
            stats: Stats::default(),
        }
    }

    pub(crate) fn get(&self, ino: u64) -> Result<&Inode, Fail> {
        self.inodes.get(&ino).ok_or(Fail::NoEntry)
    }

    fn get_mut(&mut self, ino: u64) -> Result<&mut Inode, Fail> {
        self.inodes.get_mut(&ino).ok_or(Fail::NoEntry)
    }

    pub(crate) fn entries(&self, dir: u64) -> Result<&BTreeMap<OsString, u64>, Fail> {
        match &self.get(dir)?.content {
            Content::Dir { live, .. } => Ok(live),
            Content::File { .. } => Err(Fail::NotDir),
        }
    }

    fn entries_mut(&mut self, dir: u64) -> Result<&mut BTreeMap<OsString, u64>, Fail> {
        match &mut self.get_mut(dir)?.content {
            Content::Dir { live, .. } => Ok(live),
            Content::File { .. } => Err(Fail::NotDir),
        }
    }

    pub(crate) fn lookup(&self, dir: u64, name: &OsString) -> Result<u64, Fail> {
        self.entries(dir)?.get(name).copied().ok_or(Fail::NoEntry)
    }

    /// Creates `name` in `dir`: a file, or a directory. Only the live state changes.
    pub(crate) fn create(
        &mut self,
        dir: u64,
        name: OsString,
        is_dir: bool,
        mode: u16,
    ) -> Result<u64, Fail> {
        if self.entries(dir)?.contains_key(&name) {
            return Err(Fail::Exists);
        }
        let ino = self.next;
        self.next += 1;
        let content = if is_dir {
            Content::Dir {
                live: BTreeMap::new(),
                durable: BTreeMap::new(),
            }
        } else {
            Content::File {
                live: Vec::new(),
                durable: Vec::new(),
            }
        };
        self.inodes.insert(ino, Inode { mode, content });
        self.entries_mut(dir)?.insert(name, ino);
        Ok(ino)
    }

    /// Removes `name` from `dir` (the inode stays while a durable name may still refer to it).
    pub(crate) fn remove(&mut self, dir: u64, name: &OsString, want_dir: bool) -> Result<(), Fail> {
        let ino = self.lookup(dir, name)?;
        match (&self.get(ino)?.content, want_dir) {
            (Content::Dir { live, .. }, true) if !live.is_empty() => return Err(Fail::NotEmpty),
            (Content::Dir { .. }, false) => return Err(Fail::IsDir),
            (Content::File { .. }, true) => return Err(Fail::NotDir),
            _ => {}
        }
        self.entries_mut(dir)?.remove(name);
        Ok(())
    }

    /// Renames `from/name` to `to/new_name`, replacing a file there.
    pub(crate) fn rename(
        &mut self,
        from: u64,
        name: &OsString,
        to: u64,
        new_name: OsString,
    ) -> Result<(), Fail> {
        let ino = self.lookup(from, name)?;
        if let Ok(existing) = self.lookup(to, &new_name) {
            if existing == ino {
                return Ok(());
            }
            match (&self.get(existing)?.content, &self.get(ino)?.content) {
                (Content::Dir { live, .. }, Content::Dir { .. }) if !live.is_empty() => {
                    return Err(Fail::NotEmpty)
                }
                (Content::Dir { .. }, Content::File { .. }) => return Err(Fail::IsDir),
                (Content::File { .. }, Content::Dir { .. }) => return Err(Fail::NotDir),
                _ => {}
            }
        }
        self.entries_mut(to)?;
        self.entries_mut(from)?.remove(name);
        self.entries_mut(to)?.insert(new_name, ino);
        Ok(())
    }

    /// The live bytes of file `ino`.
    pub(crate) fn data(&self, ino: u64) -> Result<&Vec<u8>, Fail> {
        match &self.get(ino)?.content {
            Content::File { live, .. } => Ok(live),
            Content::Dir { .. } => Err(Fail::IsDir),
        }
    }

    fn data_mut(&mut self, ino: u64) -> Result<&mut Vec<u8>, Fail> {
        match &mut self.get_mut(ino)?.content {
            Content::File { live, .. } => Ok(live),
            Content::Dir { .. } => Err(Fail::IsDir),
        }
    }

    pub(crate) fn write(&mut self, ino: u64, offset: usize, bytes: &[u8]) -> Result<(), Fail> {
        let data = self.data_mut(ino)?;
        let end = offset + bytes.len();
        if data.len() < end {
            data.resize(end, 0);
        }
        data[offset..end].copy_from_slice(bytes);
        Ok(())
    }

    pub(crate) fn truncate(&mut self, ino: u64, size: usize) -> Result<(), Fail> {
        self.data_mut(ino)?.resize(size, 0);
        Ok(())
    }

    pub(crate) fn set_mode(&mut self, ino: u64, mode: u16) -> Result<(), Fail> {
        self.get_mut(ino)?.mode = mode;
        Ok(())
    }

    /// fsync of a file or a directory: its live state becomes durable (for a directory, the
    /// names in it, not the content of the files they name).
    pub(crate) fn sync(&mut self, ino: u64) -> Result<(), Fail> {
        match &mut self.get_mut(ino)?.content {
            Content::File { live, durable } => {
                durable.clone_from(live);
                self.stats.file_syncs += 1;
            }
            Content::Dir { live, durable } => {
                durable.clone_from(live);
                self.stats.dir_syncs += 1;
            }
        }
        Ok(())
    }

    /// The power cut: every inode goes back to its durable state, and inodes no durable name
    /// reaches are gone.
    pub(crate) fn cut(&mut self) {
        let mut dropped_bytes = 0;
        let mut dropped_names = 0;
        for inode in self.inodes.values_mut() {
            match &mut inode.content {
                Content::File { live, durable } => {
                    if live != durable {
                        dropped_bytes += 1;
                        live.clone_from(durable);
                    }
                }
                Content::Dir { live, durable } => {
                    if live != durable {
                        dropped_names += 1;
                        live.clone_from(durable);
                    }
                }
            }
        }
        let mut reachable = std::collections::HashSet::from([ROOT]);
        let mut todo = vec![ROOT];
        while let Some(ino) = todo.pop() {
            if let Some(Inode {
                content: Content::Dir { durable, .. },
                ..
            }) = self.inodes.get(&ino)
            {
                for child in durable.values() {
                    if reachable.insert(*child) {
                        todo.push(*child);
                    }
                }
            }
        }
        self.inodes.retain(|ino, _| reachable.contains(ino));
        self.stats.cuts += 1;
        self.stats.dropped_bytes_files = dropped_bytes;
        self.stats.dropped_name_dirs = dropped_names;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(s: &str) -> OsString {
        OsString::from(s)
    }

    #[test]
    fn unsynced_names_and_bytes_are_dropped() {
        let mut m = Model::new();
        let dir = m.create(ROOT, name("d"), true, 0o755).unwrap();
        let f = m.create(dir, name("f"), false, 0o644).unwrap();
        m.write(f, 0, b"hello").unwrap();
        m.sync(f).unwrap();
        // The file's bytes are durable, but neither name is.
        m.cut();
        assert_eq!(m.lookup(ROOT, &name("d")), Err(Fail::NoEntry));

        let dir = m.create(ROOT, name("d"), true, 0o755).unwrap();
        m.sync(ROOT).unwrap();
        let f = m.create(dir, name("f"), false, 0o644).unwrap();
        m.write(f, 0, b"hello").unwrap();
        m.sync(f).unwrap();
        m.sync(dir).unwrap();
        m.write(f, 5, b" world").unwrap();
        m.cut();
        let f = m.lookup(dir, &name("f")).unwrap();
        assert_eq!(m.data(f).unwrap(), b"hello");
        assert_eq!(m.stats.dropped_bytes_files, 1);
    }

    #[test]
    fn a_rename_needs_its_directory_synced() {
        let mut m = Model::new();
        let old = m.create(ROOT, name("meta"), false, 0o644).unwrap();
        m.write(old, 0, b"old").unwrap();
        m.sync(old).unwrap();
        m.sync(ROOT).unwrap();
        let tmp = m.create(ROOT, name("meta.tmp"), false, 0o644).unwrap();
        m.write(tmp, 0, b"new").unwrap();
        m.sync(tmp).unwrap();
        m.rename(ROOT, &name("meta.tmp"), ROOT, name("meta"))
            .unwrap();
        m.cut();
        let meta = m.lookup(ROOT, &name("meta")).unwrap();
        assert_eq!(m.data(meta).unwrap(), b"old");

        let tmp = m.create(ROOT, name("meta.tmp"), false, 0o644).unwrap();
        m.write(tmp, 0, b"new").unwrap();
        m.sync(tmp).unwrap();
        m.rename(ROOT, &name("meta.tmp"), ROOT, name("meta"))
            .unwrap();
        m.sync(ROOT).unwrap();
        m.cut();
        let meta = m.lookup(ROOT, &name("meta")).unwrap();
        assert_eq!(m.data(meta).unwrap(), b"new");
        assert_eq!(m.lookup(ROOT, &name("meta.tmp")), Err(Fail::NoEntry));
    }
}
