//! The FUSE operations over the model, and the mount a test cuts the power under.

use std::ffi::{OsStr, OsString};
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, UNIX_EPOCH};

use fuser::{
    BackgroundSession, Config, Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags,
    Generation, INodeNo, LockOwner, MountOption, OpenFlags, RenameFlags, ReplyAttr, ReplyCreate,
    ReplyData, ReplyDirectory, ReplyEmpty, ReplyEntry, ReplyStatfs, ReplyWrite, Request, TimeOrNow,
    WriteFlags,
};

use crate::model::{Content, Fail, Inode, Model, Stats};

/// The kernel may not cache names or attributes: the model is the only truth.
const TTL: Duration = Duration::ZERO;

type Shared = Arc<Mutex<Model>>;

fn lock(model: &Shared) -> MutexGuard<'_, Model> {
    model.lock().unwrap_or_else(PoisonError::into_inner)
}

fn errno(fail: Fail) -> Errno {
    match fail {
        Fail::NoEntry => Errno::ENOENT,
        Fail::Exists => Errno::EEXIST,
        Fail::NotDir => Errno::ENOTDIR,
        Fail::IsDir => Errno::EISDIR,
        Fail::NotEmpty => Errno::ENOTEMPTY,
    }
}

/// The filesystem one mount serves.
struct PowerCutFs {
    model: Shared,
    uid: u32,
    gid: u32,
}

impl PowerCutFs {
    fn attr(&self, ino: u64, inode: &Inode) -> FileAttr {
        let (kind, size, nlink) = match &inode.content {
            Content::File { live, .. } => (FileType::RegularFile, live.len() as u64, 1),
            Content::Dir { .. } => (FileType::Directory, 4096, 2),
        };
        FileAttr {
            ino: INodeNo(ino),
            size,
            blocks: size.div_ceil(512),
            atime: UNIX_EPOCH,
            mtime: UNIX_EPOCH,
            ctime: UNIX_EPOCH,
            crtime: UNIX_EPOCH,
            kind,
            perm: inode.mode,
            nlink,
            uid: self.uid,
            gid: self.gid,
            rdev: 0,
            blksize: 4096,
            flags: 0,
        }
    }

    fn attr_of(&self, ino: u64) -> Result<FileAttr, Fail> {
        let model = lock(&self.model);
        let inode = model.get(ino)?;
        Ok(self.attr(ino, inode))
    }

    fn create_entry(
        &self,
        parent: INodeNo,
        name: &OsStr,
        is_dir: bool,
        mode: u32,
    ) -> Result<FileAttr, Fail> {
        let mut model = lock(&self.model);
        let perm = (mode & 0o7777) as u16;
        let ino = model.create(parent.0, name.to_os_string(), is_dir, perm)?;
        let inode = model.get(ino)?;
        Ok(self.attr(ino, inode))
    }
}

impl Filesystem for PowerCutFs {
    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let found = lock(&self.model).lookup(parent.0, &name.to_os_string());
        match found.and_then(|ino| self.attr_of(ino)) {
            Ok(attr) => reply.entry(&TTL, &attr, Generation(0)),
            Err(f) => reply.error(errno(f)),
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match self.attr_of(ino.0) {
            Ok(attr) => reply.attr(&TTL, &attr),
            Err(f) => reply.error(errno(f)),
        }
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        _uid: Option<u32>,
        _gid: Option<u32>,
        size: Option<u64>,
        _atime: Option<TimeOrNow>,
        _mtime: Option<TimeOrNow>,
        _ctime: Option<std::time::SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<std::time::SystemTime>,
        _chgtime: Option<std::time::SystemTime>,
        _bkuptime: Option<std::time::SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let changed = (|| {
            let mut model = lock(&self.model);
            if let Some(size) = size {
                let size = usize::try_from(size).map_err(|_| Fail::IsDir)?;
                model.truncate(ino.0, size)?;
            }
            if let Some(mode) = mode {
                model.set_mode(ino.0, (mode & 0o7777) as u16)?;
            }
            Ok(())
        })();
        match changed.and_then(|()| self.attr_of(ino.0)) {
            Ok(attr) => reply.attr(&TTL, &attr),
            Err(f) => reply.error(errno(f)),
        }
    }

    fn mkdir(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        reply: ReplyEntry,
    ) {
        match self.create_entry(parent, name, true, mode) {
            Ok(attr) => reply.entry(&TTL, &attr, Generation(0)),
            Err(f) => reply.error(errno(f)),
        }
    }

    fn create(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        _flags: i32,
        reply: ReplyCreate,
    ) {
        match self.create_entry(parent, name, false, mode) {
            Ok(attr) => reply.created(
                &TTL,
                &attr,
                Generation(0),
                FileHandle(0),
                FopenFlags::empty(),
            ),
            Err(f) => reply.error(errno(f)),
        }
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        match lock(&self.model).remove(parent.0, &name.to_os_string(), false) {
            Ok(()) => reply.ok(),
            Err(f) => reply.error(errno(f)),
        }
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        match lock(&self.model).remove(parent.0, &name.to_os_string(), true) {
            Ok(()) => reply.ok(),
            Err(f) => reply.error(errno(f)),
        }
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        if !flags.is_empty() {
            reply.error(Errno::EINVAL);
            return;
        }
        let renamed = lock(&self.model).rename(
            parent.0,
            &name.to_os_string(),
            newparent.0,
            newname.to_os_string(),
        );
        match renamed {
            Ok(()) => reply.ok(),
            Err(f) => reply.error(errno(f)),
        }
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let model = lock(&self.model);
        match model.data(ino.0) {
            Ok(data) => {
                let start = usize::try_from(offset)
                    .unwrap_or(usize::MAX)
                    .min(data.len());
                let end = start.saturating_add(size as usize).min(data.len());
                reply.data(&data[start..end]);
            }
            Err(f) => reply.error(errno(f)),
        }
    }

    fn write(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        let Ok(offset) = usize::try_from(offset) else {
            reply.error(Errno::EINVAL);
            return;
        };
        match lock(&self.model).write(ino.0, offset, data) {
            Ok(()) => reply.written(u32::try_from(data.len()).unwrap_or(u32::MAX)),
            Err(f) => reply.error(errno(f)),
        }
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        // close() makes nothing durable.
        reply.ok();
    }

    fn fsync(&self, _req: &Request, ino: INodeNo, _fh: FileHandle, _ds: bool, reply: ReplyEmpty) {
        match lock(&self.model).sync(ino.0) {
            Ok(()) => reply.ok(),
            Err(f) => reply.error(errno(f)),
        }
    }

    fn fsyncdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _ds: bool,
        reply: ReplyEmpty,
    ) {
        match lock(&self.model).sync(ino.0) {
            Ok(()) => reply.ok(),
            Err(f) => reply.error(errno(f)),
        }
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let model = lock(&self.model);
        let entries = match model.entries(ino.0) {
            Ok(entries) => entries,
            Err(f) => {
                reply.error(errno(f));
                return;
            }
        };
        let mut all: Vec<(u64, FileType, OsString)> = vec![
            (ino.0, FileType::Directory, ".".into()),
            (ino.0, FileType::Directory, "..".into()),
        ];
        for (name, child) in entries {
            let kind = match model.get(*child).map(|i| &i.content) {
                Ok(Content::Dir { .. }) => FileType::Directory,
                _ => FileType::RegularFile,
            };
            all.push((*child, kind, name.clone()));
        }
        let skip = usize::try_from(offset).unwrap_or(usize::MAX);
        for (i, (child, kind, name)) in all.into_iter().enumerate().skip(skip) {
            if reply.add(INodeNo(child), (i + 1) as u64, kind, name) {
                break;
            }
        }
        reply.ok();
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        reply.statfs(1 << 24, 1 << 24, 1 << 24, 1 << 20, 1 << 20, 4096, 255, 4096);
    }
}

/// A directory served by the power-cut filesystem. Unmounted when dropped.
pub struct PowerCut {
    model: Shared,
    mountpoint: PathBuf,
    session: Option<BackgroundSession>,
    uid: u32,
    gid: u32,
}

impl PowerCut {
    /// Mounts an empty power-cut filesystem on `mountpoint` (an existing, empty directory).
    ///
    /// # Errors
    /// FUSE is not available (`/dev/fuse`, `fusermount3`), or the mount fails.
    pub fn mount(mountpoint: &Path) -> io::Result<Self> {
        let meta = std::fs::metadata(mountpoint)?;
        let mut cut = Self {
            model: Arc::new(Mutex::new(Model::new())),
            mountpoint: mountpoint.to_path_buf(),
            session: None,
            uid: meta.uid(),
            gid: meta.gid(),
        };
        cut.attach()?;
        Ok(cut)
    }

    fn attach(&mut self) -> io::Result<()> {
        let fs = PowerCutFs {
            model: Arc::clone(&self.model),
            uid: self.uid,
            gid: self.gid,
        };
        let mut config = Config::default();
        config.mount_options = vec![MountOption::FSName("powercut".into())];
        let session = fuser::spawn_mount(fs, &self.mountpoint, &config)?;
        self.session = Some(session);
        Ok(())
    }

    /// The mounted directory.
    pub fn path(&self) -> &Path {
        &self.mountpoint
    }

    /// How many files hold unsynced bytes and how many directories unsynced names now.
    pub fn unsynced(&self) -> (usize, usize) {
        let model = lock(&self.model);
        let mut files = 0;
        let mut dirs = 0;
        for inode in model.inodes.values() {
            match &inode.content {
                Content::File { live, durable } if live != durable => files += 1,
                Content::Dir { live, durable } if live != durable => dirs += 1,
                _ => {}
            }
        }
        (files, dirs)
    }

    /// Cuts the power: unmounts (every process using the mount must be gone, as after a real
    /// power loss), drops every unsynced byte and name, and mounts what was durable.
    ///
    /// # Errors
    /// Unmounting or mounting again fails (a process still holds a file open).
    pub fn cut(&mut self) -> io::Result<Stats> {
        if let Some(session) = self.session.take() {
            session.umount_and_join()?;
        }
        let stats = {
            let mut model = lock(&self.model);
            model.cut();
            model.stats
        };
        self.attach()?;
        Ok(stats)
    }

    /// What the filesystem has done so far.
    pub fn stats(&self) -> Stats {
        lock(&self.model).stats
    }
}

impl Drop for PowerCut {
    fn drop(&mut self) {
        if let Some(session) = self.session.take() {
            let _ = session.umount_and_join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    /// Through the kernel: a synced file in a synced directory survives, an unsynced rename
    /// and unsynced bytes do not.
    #[test]
    fn a_cut_keeps_only_what_was_fsynced() {
        let dir = tempfile::tempdir().unwrap();
        let mut pc = PowerCut::mount(dir.path()).expect("FUSE must work here: /dev/fuse, fuse3");
        let root = pc.path().to_path_buf();
        std::fs::create_dir(root.join("d")).unwrap();
        std::fs::File::open(&root).unwrap().sync_all().unwrap();
        let mut f = std::fs::File::create(root.join("d/kept")).unwrap();
        f.write_all(b"synced").unwrap();
        f.sync_all().unwrap();
        f.write_all(b" and not").unwrap();
        drop(f);
        std::fs::File::open(root.join("d"))
            .unwrap()
            .sync_all()
            .unwrap();
        std::fs::write(root.join("d/lost"), b"never synced").unwrap();
        std::fs::rename(root.join("d/kept"), root.join("d/renamed")).unwrap();
        assert_eq!(pc.unsynced(), (2, 1));
        let stats = pc.cut().unwrap();
        assert_eq!(stats.cuts, 1);
        assert_eq!(std::fs::read(root.join("d/kept")).unwrap(), b"synced");
        assert!(!root.join("d/lost").exists());
        assert!(!root.join("d/renamed").exists());
        assert_eq!(pc.unsynced(), (0, 0));
    }
}
