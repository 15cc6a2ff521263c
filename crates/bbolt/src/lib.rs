//! bbolt's file format: a streaming writer of a fresh database and a bounded-memory reader.
//!
//! etcd keeps its data in a bbolt file and its snapshots are that file (plus a hash), so reading
//! and writing etcd's snapshots and data directories means speaking this format. Only what those
//! need is here: one transaction's worth of pages, written once (no free pages, no updates) and
//! read back without ever holding more than a path of pages from root to leaf.
//!
//! # Layout
//! One file: the format's constants, [`Writer`] (with [`Plan`] and [`meta_pages`]) and
//! [`Reader`] (with [`BucketRoot`] and [`Entry`]); `tests` checks both against each other and
//! against a snapshot etcd 3.4.23 wrote (`tests/data/`).
//!
//! # The format, as this crate writes and reads it
//! Integers are little-endian. The file is a sequence of pages of `page_size` bytes; a page
//! starts with a 16-byte header (id u64, flags u16, count u16, overflow u32) and a page whose
//! content is larger spans `overflow` more pages. Pages 0 and 1 are meta pages (magic
//! `0xED0CDAED`, version 2, page size, flags, the root bucket's root page and sequence, the
//! freelist page, the high-water page id, the transaction id, and an FNV-1a 64 checksum of the
//! meta's first 56 bytes); readers take the valid one with the higher transaction id. A bucket
//! is a B+tree: leaf pages hold 16-byte elements (flags u32, pos u32, key size u32, value size
//! u32; `pos` counts from the element itself) then the keys and values, branch pages hold
//! elements (pos u32, key size u32, child page u64) naming each child by its first key. A leaf
//! element with flag 1 is a nested bucket whose value is its header (root page u64, sequence
//! u64); root page 0 means an inline bucket, whose leaf page follows the header in the value.
//!
//! # What the writer produces
//! Keys must arrive in order, buckets in name order, each bucket's pages written as soon as they
//! fill: memory holds one leaf page and the first key of every page written so far (for the
//! branch levels, about a hundredth of the keys). The meta pages come first in the file but name
//! the root page, which is written last: a caller with a seekable output writes them at the end
//! ([`meta_pages`]); one that streams runs the writer twice over the same data, the first time
//! into [`std::io::sink`] to learn the [`Plan`], the second time with it, so that the metas go out
//! first. The freelist is not stored (etcd does the same): bbolt rebuilds it on open.

use std::fs::File;
use std::io::{self, Write};
use std::ops::ControlFlow;
use std::os::unix::fs::FileExt;

/// bbolt's magic number, in every meta page.
pub const MAGIC: u32 = 0xED0C_DAED;
/// The file format version bbolt writes and reads.
pub const VERSION: u32 = 2;
/// The page size etcd's files have on the usual (4 KiB page) machines.
pub const DEFAULT_PAGE_SIZE: u32 = 4096;
/// bbolt's largest key.
pub const MAX_KEY: usize = 32768;
/// bbolt's largest value.
pub const MAX_VALUE: usize = (1 << 31) - 2;

const PAGE_HEADER: usize = 16;
const ELEMENT: usize = 16;
const BUCKET_HEADER: usize = 16;
/// The meta's bytes covered by its checksum.
const META_CHECKED: usize = 56;
const FLAG_BRANCH: u16 = 0x01;
const FLAG_LEAF: u16 = 0x02;
const FLAG_META: u16 = 0x04;
const BUCKET_ELEMENT: u32 = 0x01;
/// The freelist page id meaning "not stored".
const NO_FREELIST: u64 = u64::MAX;
/// Deeper than any real tree (a billion keys fit in 5 levels); a deeper walk is a cycle.
const MAX_DEPTH: usize = 64;

/// What can go wrong reading or writing a bbolt file.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The underlying file or stream failed.
    #[error("bbolt i/o: {0}")]
    Io(#[from] io::Error),
    /// The file is not a bbolt database, or is damaged.
    #[error("not a valid bbolt file: {0}")]
    Corrupt(String),
    /// The writer was given what bbolt cannot hold (keys out of order, too large).
    #[error("bbolt writer: {0}")]
    Invalid(String),
}

/// Shorthand for this crate's results.
pub type Result<T, E = Error> = std::result::Result<T, E>;

fn corrupt(what: impl Into<String>) -> Error {
    Error::Corrupt(what.into())
}

fn invalid(what: impl Into<String>) -> Error {
    Error::Invalid(what.into())
}

/// Where the writer's meta pages point: learned from a first pass, given to a second.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Plan {
    /// The root bucket's root page.
    pub root: u64,
    /// Pages in the file.
    pub high_water: u64,
}

/// FNV-1a, 64 bits: bbolt's meta checksum.
fn fnv1a64(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

fn page_header(buf: &mut [u8], id: u64, flags: u16, count: u16, overflow: u32) {
    buf[0..8].copy_from_slice(&id.to_le_bytes());
    buf[8..10].copy_from_slice(&flags.to_le_bytes());
    buf[10..12].copy_from_slice(&count.to_le_bytes());
    buf[12..16].copy_from_slice(&overflow.to_le_bytes());
}

/// The two meta pages (pages 0 and 1) of a file laid out as `plan` says.
pub fn meta_pages(plan: Plan, page_size: u32) -> Vec<u8> {
    let ps = page_size as usize;
    let mut out = vec![0u8; 2 * ps];
    for txid in 0..2u64 {
        let page = &mut out[txid as usize * ps..(txid as usize + 1) * ps];
        page_header(page, txid, FLAG_META, 0, 0);
        let m = &mut page[PAGE_HEADER..];
        m[0..4].copy_from_slice(&MAGIC.to_le_bytes());
        m[4..8].copy_from_slice(&VERSION.to_le_bytes());
        m[8..12].copy_from_slice(&page_size.to_le_bytes());
        m[12..16].copy_from_slice(&0u32.to_le_bytes());
        m[16..24].copy_from_slice(&plan.root.to_le_bytes());
        m[24..32].copy_from_slice(&0u64.to_le_bytes());
        m[32..40].copy_from_slice(&NO_FREELIST.to_le_bytes());
        m[40..48].copy_from_slice(&plan.high_water.to_le_bytes());
        m[48..56].copy_from_slice(&txid.to_le_bytes());
        let sum = fnv1a64(&m[..META_CHECKED]);
        m[56..64].copy_from_slice(&sum.to_le_bytes());
    }
    out
}

/// Pages going out, numbered as they go.
struct Pages<W> {
    out: W,
    page_size: usize,
    next: u64,
    buf: Vec<u8>,
}

impl<W: Write> Pages<W> {
    /// Writes a node of `size` bytes built by `fill` into as many pages as it needs; its id.
    fn write(
        &mut self,
        size: usize,
        flags: u16,
        count: usize,
        fill: impl FnOnce(&mut [u8]),
    ) -> Result<u64> {
        let pages = size.div_ceil(self.page_size).max(1);
        let overflow =
            u32::try_from(pages - 1).map_err(|_| invalid("a node spans too many pages"))?;
        let count = u16::try_from(count).map_err(|_| invalid("too many elements in a page"))?;
        self.buf.clear();
        self.buf.resize(pages * self.page_size, 0);
        let id = self.next;
        page_header(&mut self.buf, id, flags, count, overflow);
        fill(&mut self.buf);
        self.out.write_all(&self.buf)?;
        self.next += pages as u64;
        // A huge value's buffer is not kept for the rest of the file.
        if self.buf.capacity() > 4 * self.page_size {
            self.buf = Vec::new();
        }
        Ok(id)
    }
}

/// One B+tree being built bottom-up: the leaf filling now and the pages written below.
#[derive(Default)]
struct Tree {
    leaf: Vec<(u32, Vec<u8>, Vec<u8>)>,
    leaf_bytes: usize,
    /// First key and page of every node written at the level being built.
    children: Vec<(Vec<u8>, u64)>,
    last: Option<Vec<u8>>,
}

impl Tree {
    fn push<W: Write>(
        &mut self,
        pages: &mut Pages<W>,
        flags: u32,
        key: &[u8],
        value: &[u8],
    ) -> Result<()> {
        if key.is_empty() || key.len() > MAX_KEY {
            return Err(invalid(format!("key of {} bytes", key.len())));
        }
        if value.len() > MAX_VALUE {
            return Err(invalid(format!("value of {} bytes", value.len())));
        }
        if self.last.as_deref().is_some_and(|last| last >= key) {
            return Err(invalid("keys out of order"));
        }
        self.last = Some(key.to_vec());
        let size = ELEMENT + key.len() + value.len();
        if !self.leaf.is_empty() && PAGE_HEADER + self.leaf_bytes + size > pages.page_size {
            self.flush_leaf(pages)?;
        }
        self.leaf.push((flags, key.to_vec(), value.to_vec()));
        self.leaf_bytes += size;
        Ok(())
    }

    fn flush_leaf<W: Write>(&mut self, pages: &mut Pages<W>) -> Result<()> {
        let leaf = std::mem::take(&mut self.leaf);
        let size = PAGE_HEADER + self.leaf_bytes;
        self.leaf_bytes = 0;
        let count = leaf.len();
        let id = pages.write(size, FLAG_LEAF, count, |buf| {
            let mut data = PAGE_HEADER + count * ELEMENT;
            for (i, (flags, k, v)) in leaf.iter().enumerate() {
                let at = PAGE_HEADER + i * ELEMENT;
                let pos = (data - at) as u32;
                buf[at..at + 4].copy_from_slice(&flags.to_le_bytes());
                buf[at + 4..at + 8].copy_from_slice(&pos.to_le_bytes());
                buf[at + 8..at + 12].copy_from_slice(&(k.len() as u32).to_le_bytes());
                buf[at + 12..at + 16].copy_from_slice(&(v.len() as u32).to_le_bytes());
                buf[data..data + k.len()].copy_from_slice(k);
                data += k.len();
                buf[data..data + v.len()].copy_from_slice(v);
                data += v.len();
            }
        })?;
        let first = leaf
            .into_iter()
            .next()
            .map(|(_, k, _)| k)
            .unwrap_or_default();
        self.children.push((first, id));
        Ok(())
    }

    /// Writes what is left and the branch levels; the root page.
    fn finish<W: Write>(mut self, pages: &mut Pages<W>) -> Result<u64> {
        if !self.leaf.is_empty() || self.children.is_empty() {
            self.flush_leaf(pages)?;
        }
        let mut level = std::mem::take(&mut self.children);
        while level.len() > 1 {
            let mut next = Vec::new();
            let mut group: Vec<(Vec<u8>, u64)> = Vec::new();
            let mut bytes = PAGE_HEADER;
            for child in level {
                let size = ELEMENT + child.0.len();
                if !group.is_empty() && bytes + size > pages.page_size {
                    next.push(write_branch(pages, std::mem::take(&mut group), bytes)?);
                    bytes = PAGE_HEADER;
                }
                bytes += size;
                group.push(child);
            }
            next.push(write_branch(pages, group, bytes)?);
            level = next;
        }
        level
            .first()
            .map(|(_, id)| *id)
            .ok_or_else(|| invalid("empty tree"))
    }
}

fn write_branch<W: Write>(
    pages: &mut Pages<W>,
    group: Vec<(Vec<u8>, u64)>,
    size: usize,
) -> Result<(Vec<u8>, u64)> {
    let count = group.len();
    let id = pages.write(size, FLAG_BRANCH, count, |buf| {
        let mut data = PAGE_HEADER + count * ELEMENT;
        for (i, (k, child)) in group.iter().enumerate() {
            let at = PAGE_HEADER + i * ELEMENT;
            let pos = (data - at) as u32;
            buf[at..at + 4].copy_from_slice(&pos.to_le_bytes());
            buf[at + 4..at + 8].copy_from_slice(&(k.len() as u32).to_le_bytes());
            buf[at + 8..at + 16].copy_from_slice(&child.to_le_bytes());
            buf[data..data + k.len()].copy_from_slice(k);
            data += k.len();
        }
    })?;
    let first = group.into_iter().next().map(|(k, _)| k).unwrap_or_default();
    Ok((first, id))
}

/// Writes a fresh bbolt file of top-level buckets, page by page, in one pass over sorted input.
pub struct Writer<W> {
    pages: Pages<W>,
    plan: Option<Plan>,
    root: Tree,
    /// The bucket being filled: its name and tree.
    open: Option<(Vec<u8>, Tree)>,
}

impl<W: Write> Writer<W> {
    /// A writer into `out` with pages of `page_size` bytes. With `plan` (from a first pass over
    /// the same input), the meta pages are written first and the output is a complete file;
    /// without, two zeroed pages stand in for them and [`meta_pages`] must overwrite them.
    ///
    /// # Errors
    /// A page size bbolt does not take (a power of two from 1 KiB to 64 KiB); I/O errors.
    pub fn new(mut out: W, page_size: u32, plan: Option<Plan>) -> Result<Self> {
        if !page_size.is_power_of_two() || !(1024..=65536).contains(&page_size) {
            return Err(invalid(format!("page size {page_size}")));
        }
        match plan {
            Some(plan) => out.write_all(&meta_pages(plan, page_size))?,
            None => out.write_all(&vec![0u8; 2 * page_size as usize])?,
        }
        Ok(Self {
            pages: Pages {
                out,
                page_size: page_size as usize,
                next: 2,
                buf: Vec::new(),
            },
            plan,
            root: Tree::default(),
            open: None,
        })
    }

    /// Starts the next top-level bucket; names must come in increasing byte order.
    ///
    /// # Errors
    /// A name out of order; I/O errors from closing the previous bucket.
    pub fn begin_bucket(&mut self, name: &[u8]) -> Result<()> {
        self.end_bucket()?;
        if self.root.last.as_deref().is_some_and(|last| last >= name) || name.is_empty() {
            return Err(invalid("bucket names out of order"));
        }
        self.open = Some((name.to_vec(), Tree::default()));
        Ok(())
    }

    /// Adds a key to the open bucket; keys must come in increasing byte order.
    ///
    /// # Errors
    /// No open bucket, a key out of order or too large; I/O errors.
    pub fn put(&mut self, key: &[u8], value: &[u8]) -> Result<()> {
        let (_, tree) = self
            .open
            .as_mut()
            .ok_or_else(|| invalid("put outside a bucket"))?;
        tree.push(&mut self.pages, 0, key, value)
    }

    fn end_bucket(&mut self) -> Result<()> {
        if let Some((name, tree)) = self.open.take() {
            let root = tree.finish(&mut self.pages)?;
            let mut header = [0u8; BUCKET_HEADER];
            header[..8].copy_from_slice(&root.to_le_bytes());
            self.root
                .push(&mut self.pages, BUCKET_ELEMENT, &name, &header)?;
        }
        Ok(())
    }

    /// Closes the last bucket and writes the root; returns the output and where the metas point.
    ///
    /// # Errors
    /// I/O errors; with a plan, a layout that differs from it (the input changed between
    /// passes).
    pub fn finish(mut self) -> Result<(W, Plan)> {
        self.end_bucket()?;
        let root = std::mem::take(&mut self.root).finish(&mut self.pages)?;
        let plan = Plan {
            root,
            high_water: self.pages.next,
        };
        if let Some(expected) = self.plan {
            if expected != plan {
                return Err(invalid(format!(
                    "the layout differs from the first pass ({plan:?}, planned {expected:?})"
                )));
            }
        }
        self.pages.out.flush()?;
        Ok((self.pages.out, plan))
    }
}

/// Where a bucket's content is: its root page, or the leaf page inlined in its parent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BucketRoot {
    /// A bucket with pages of its own.
    Page(u64),
    /// A small bucket stored inside its parent: the bytes of its one leaf page.
    Inline(Vec<u8>),
}

/// One entry of a bucket, in key order.
#[derive(Debug)]
pub struct Entry<'a> {
    /// The key.
    pub key: &'a [u8],
    /// The value (for a nested bucket, its header).
    pub value: &'a [u8],
    /// For a nested bucket, where its content is.
    pub bucket: Option<BucketRoot>,
}

/// Reads a bbolt file page by page: memory holds one root-to-leaf path of pages.
pub struct Reader {
    file: File,
    size: u64,
    page_size: u64,
    high_water: u64,
    root: u64,
}

/// The meta of a page, when it is valid: (page size, root, high water, txid).
fn parse_meta(page: &[u8]) -> Option<(u32, u64, u64, u64)> {
    let m = page.get(PAGE_HEADER..PAGE_HEADER + 64)?;
    let u32_at = |o: usize| u32::from_le_bytes([m[o], m[o + 1], m[o + 2], m[o + 3]]);
    let u64_at = |o: usize| {
        let mut b = [0u8; 8];
        b.copy_from_slice(&m[o..o + 8]);
        u64::from_le_bytes(b)
    };
    if u32_at(0) != MAGIC || u32_at(4) != VERSION || u64_at(56) != fnv1a64(&m[..META_CHECKED]) {
        return None;
    }
    Some((u32_at(8), u64_at(16), u64_at(40), u64_at(48)))
}

fn u16_at(b: &[u8], o: usize) -> u16 {
    u16::from_le_bytes([b[o], b[o + 1]])
}

fn u32_at(b: &[u8], o: usize) -> u32 {
    u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]])
}

fn u64_at(b: &[u8], o: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[o..o + 8]);
    u64::from_le_bytes(a)
}

impl Reader {
    /// Opens the bbolt database in the first `size` bytes of `file` (an etcd snapshot has a
    /// hash after them).
    ///
    /// # Errors
    /// [`Error::Corrupt`] when neither meta page is valid or the file is shorter than the
    /// metas say; I/O errors.
    pub fn open(file: File, size: u64) -> Result<Self> {
        let mut first = vec![0u8; PAGE_HEADER + 64];
        if size < first.len() as u64 {
            return Err(corrupt(format!("{size} bytes is too short")));
        }
        file.read_exact_at(&mut first, 0)?;
        let meta0 = parse_meta(&first);
        // Meta 1 sits one page in: the page size comes from meta 0, or is the usual one.
        let page_size = meta0.map_or(u64::from(DEFAULT_PAGE_SIZE), |m| u64::from(m.0));
        let mut second = vec![0u8; PAGE_HEADER + 64];
        let meta1 = if size >= page_size + second.len() as u64 {
            file.read_exact_at(&mut second, page_size)?;
            parse_meta(&second).filter(|m| u64::from(m.0) == page_size)
        } else {
            None
        };
        let meta = match (meta0, meta1) {
            (Some(a), Some(b)) => {
                if b.3 > a.3 {
                    b
                } else {
                    a
                }
            }
            (Some(a), None) => a,
            (None, Some(b)) => b,
            (None, None) => return Err(corrupt("no valid meta page")),
        };
        let (ps, root, high_water, _txid) = meta;
        let page_size = u64::from(ps);
        if !ps.is_power_of_two() || ps < 512 {
            return Err(corrupt(format!("page size {ps}")));
        }
        if high_water
            .checked_mul(page_size)
            .is_none_or(|end| end > size)
        {
            return Err(corrupt(format!(
                "{high_water} pages of {page_size} bytes do not fit in {size} bytes"
            )));
        }
        if root < 2 || root >= high_water {
            return Err(corrupt(format!("root page {root} out of range")));
        }
        Ok(Self {
            file,
            size,
            page_size,
            high_water,
            root,
        })
    }

    /// The file's page size.
    pub fn page_size(&self) -> u64 {
        self.page_size
    }

    /// Bytes of the file the database takes (its pages).
    pub fn db_size(&self) -> u64 {
        self.high_water * self.page_size
    }

    /// The bytes given at open (the database and whatever follows it).
    pub fn file_size(&self) -> u64 {
        self.size
    }

    /// The root bucket, whose entries are the top-level buckets.
    pub fn root(&self) -> BucketRoot {
        BucketRoot::Page(self.root)
    }

    /// The nested bucket `name` of `parent`, if there is one.
    ///
    /// # Errors
    /// A damaged file; I/O errors.
    pub fn bucket(&self, parent: &BucketRoot, name: &[u8]) -> Result<Option<BucketRoot>> {
        let mut found = None;
        // Whether the walk stopped early says nothing more than `found` does.
        let _ = self.walk::<Error>(parent, &mut |e| {
            if e.key == name {
                found = e.bucket;
                return Ok(ControlFlow::Break(()));
            }
            Ok(ControlFlow::Continue(()))
        })?;
        Ok(found)
    }

    /// Calls `f` with every entry of `bucket` in key order, until it breaks.
    ///
    /// # Errors
    /// `f`'s errors; a damaged file; I/O errors.
    pub fn walk<E: From<Error>>(
        &self,
        bucket: &BucketRoot,
        f: &mut dyn FnMut(Entry<'_>) -> Result<ControlFlow<()>, E>,
    ) -> Result<ControlFlow<()>, E> {
        let mut visited = 0u64;
        match bucket {
            BucketRoot::Page(id) => self.walk_page(*id, 0, &mut visited, f),
            BucketRoot::Inline(page) => {
                if page.len() < PAGE_HEADER || u16_at(page, 8) & FLAG_LEAF == 0 {
                    return Err(corrupt("inline bucket is not a leaf page").into());
                }
                walk_leaf(page, f)
            }
        }
    }

    fn read_page(&self, id: u64) -> Result<Vec<u8>> {
        if id < 2 || id >= self.high_water {
            return Err(corrupt(format!("page {id} out of range")));
        }
        let mut header = [0u8; PAGE_HEADER];
        self.file.read_exact_at(&mut header, id * self.page_size)?;
        let overflow = u64::from(u32_at(&header, 12));
        if u64_at(&header, 0) != id {
            return Err(corrupt(format!(
                "page {id} says it is page {}",
                u64_at(&header, 0)
            )));
        }
        if id + overflow >= self.high_water {
            return Err(corrupt(format!("page {id} overflows past the end")));
        }
        let len = usize::try_from((overflow + 1) * self.page_size)
            .map_err(|_| corrupt(format!("page {id} is too large")))?;
        let mut page = vec![0u8; len];
        self.file.read_exact_at(&mut page, id * self.page_size)?;
        Ok(page)
    }

    fn walk_page<E: From<Error>>(
        &self,
        id: u64,
        depth: usize,
        visited: &mut u64,
        f: &mut dyn FnMut(Entry<'_>) -> Result<ControlFlow<()>, E>,
    ) -> Result<ControlFlow<()>, E> {
        *visited += 1;
        if depth > MAX_DEPTH || *visited > self.high_water {
            return Err(corrupt("the tree loops").into());
        }
        let page = self.read_page(id)?;
        let flags = u16_at(&page, 8);
        if flags & FLAG_LEAF != 0 {
            return walk_leaf(&page, f);
        }
        if flags & FLAG_BRANCH == 0 {
            return Err(corrupt(format!("page {id} is neither branch nor leaf")).into());
        }
        let count = usize::from(u16_at(&page, 10));
        if PAGE_HEADER + count * ELEMENT > page.len() {
            return Err(corrupt(format!("page {id} has too many elements")).into());
        }
        let children: Vec<u64> = (0..count)
            .map(|i| u64_at(&page, PAGE_HEADER + i * ELEMENT + 8))
            .collect();
        drop(page);
        for child in children {
            if self.walk_page(child, depth + 1, visited, f)?.is_break() {
                return Ok(ControlFlow::Break(()));
            }
        }
        Ok(ControlFlow::Continue(()))
    }
}

fn walk_leaf<E: From<Error>>(
    page: &[u8],
    f: &mut dyn FnMut(Entry<'_>) -> Result<ControlFlow<()>, E>,
) -> Result<ControlFlow<()>, E> {
    let count = usize::from(u16_at(page, 10));
    if PAGE_HEADER + count * ELEMENT > page.len() {
        return Err(corrupt("leaf has too many elements").into());
    }
    for i in 0..count {
        let at = PAGE_HEADER + i * ELEMENT;
        let flags = u32_at(page, at);
        let pos = u32_at(page, at + 4) as usize;
        let ks = u32_at(page, at + 8) as usize;
        let vs = u32_at(page, at + 12) as usize;
        let start = at.saturating_add(pos);
        let end = start.saturating_add(ks).saturating_add(vs);
        if end > page.len() {
            return Err(corrupt("leaf element past its page").into());
        }
        let key = &page[start..start + ks];
        let value = &page[start + ks..end];
        let bucket = if flags & BUCKET_ELEMENT != 0 {
            if value.len() < BUCKET_HEADER {
                return Err(corrupt("bucket header too short").into());
            }
            match u64_at(value, 0) {
                0 => Some(BucketRoot::Inline(value[BUCKET_HEADER..].to_vec())),
                root => Some(BucketRoot::Page(root)),
            }
        } else {
            None
        };
        if f(Entry { key, value, bucket })?.is_break() {
            return Ok(ControlFlow::Break(()));
        }
    }
    Ok(ControlFlow::Continue(()))
}

#[cfg(test)]
mod tests;
