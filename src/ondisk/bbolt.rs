//! A read-only reader of bbolt files (etcd's `member/snap/db` and its snapshots).
//!
//! Why our own: the Rust ports (`bbolt-rs`, `nut`) are unfinished (see the internals notes,
//! section 3.10), and a backup tool needs only reading, with every byte bounds-checked so that a
//! damaged file yields an error naming the page, never a panic.
//!
//! The file is read with positioned reads, page by page (memory stays at one page span per tree
//! level), and without bbolt's flock, so it also works on the db of a running etcd (which holds
//! an exclusive lock that makes `etcdctl snapshot status` hang).
//!
//! [`Db::check`] mirrors bbolt's `tx.Check()`: every reachable page is within the high-water mark,
//! reached once, of the right type, and its keys are ordered inside the page and within the range
//! its parent assigns; with a persisted freelist, no page is freed twice, reachable and free, or
//! neither.

use std::fs::File;
use std::ops::Range;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

pub(crate) const MAGIC: u32 = 0xED0C_DAED;
const VERSION: u32 = 2;
pub(crate) const PAGE_HEADER: usize = 16;
pub(crate) const ELEMENT: usize = 16;
const BUCKET_HEADER: usize = 16;
const META_SIZE: usize = 64;
pub(crate) const FLAG_BRANCH: u16 = 0x01;
pub(crate) const FLAG_LEAF: u16 = 0x02;
const FLAG_META: u16 = 0x04;
const FLAG_FREELIST: u16 = 0x10;
/// Leaf element flag: the value is a nested bucket.
pub(crate) const BUCKET_LEAF: u32 = 0x01;
const NO_FREELIST: u64 = u64::MAX;
/// B+trees of real files are a handful of levels deep; anything deeper is a cycle or garbage.
const MAX_DEPTH: usize = 64;
/// bbolt's page sizes are powers of two between 512 B and 64 KiB (we accept up to 1 MiB).
const MIN_PAGE: u32 = 512;
const MAX_PAGE: u32 = 1 << 20;
/// A logical page (with its overflow) larger than this is refused: bbolt values are < 2 GiB, but
/// a span that large in a snapshot is far more likely a corrupt header than real data.
const MAX_SPAN: u64 = 1 << 31;

/// A structural problem, with the page it was found on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub(crate) page: Option<u64>,
    pub(crate) message: String,
    /// Not seen by bbolt 1.3.6 (etcd 3.4/3.5) when etcd opens the file: a key out of order, a
    /// page whose header names another (unused) page id, the persisted freelist, one bad meta
    /// page. etcd starts on such a file; reads or later writes may go wrong.
    pub(crate) latent: bool,
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.page {
            Some(p) => write!(f, "page {p}: {}", self.message),
            None => f.write_str(&self.message),
        }
    }
}

/// A problem etcd would also stumble on.
pub(crate) fn problem(page: Option<u64>, message: impl Into<String>) -> Problem {
    Problem {
        page,
        message: message.into(),
        latent: false,
    }
}

fn latent(page: Option<u64>, message: impl Into<String>) -> Problem {
    Problem {
        latent: true,
        ..problem(page, message)
    }
}

/// An error reading a bbolt file: the file and the problem.
#[derive(Debug, thiserror::Error)]
pub enum BoltError {
    /// The file could not be read.
    #[error("{}: {what}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// What was being done.
        what: String,
        /// The system's error.
        #[source]
        source: std::io::Error,
    },
    #[error("{}: not a valid bbolt file: {problem}", path.display())]
    /// The file is not a sound bbolt file.
    Corrupt {
        /// The file.
        path: PathBuf,
        /// The first problem found.
        problem: Problem,
    },
}

pub(crate) type Result<T> = std::result::Result<T, BoltError>;

/// A file that cannot be read is an I/O error of the crate; a damaged one an integrity error.
impl From<BoltError> for crate::Error {
    fn from(e: BoltError) -> crate::Error {
        match e {
            BoltError::Io { path, what, source } => crate::Error::Io { path, what, source },
            BoltError::Corrupt { path, problem } => crate::Error::Integrity {
                object: path.display().to_string(),
                reason: format!("not a valid bbolt file: {problem}"),
            },
        }
    }
}

/// The selected meta page.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Meta {
    /// The meta page this was read from (0 or 1).
    pub page: u64,
    /// The page size of the file.
    pub page_size: u32,
    /// The root bucket's page.
    pub root: u64,
    /// The freelist's page.
    pub freelist: u64,
    /// High-water mark: the number of pages in use.
    pub hwm: u64,
    /// The transaction id of this meta page.
    pub txid: u64,
}

/// Little-endian integers at byte offset `o` (bbolt writes native-endian structs; amd64/arm64),
/// `None` when out of bounds.
pub(crate) fn u16_at(b: &[u8], o: usize) -> Option<u16> {
    Some(u16::from_le_bytes(b.get(o..o + 2)?.try_into().ok()?))
}
pub(crate) fn u32_at(b: &[u8], o: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(o..o + 4)?.try_into().ok()?))
}
pub(crate) fn u64_at(b: &[u8], o: usize) -> Option<u64> {
    Some(u64::from_le_bytes(b.get(o..o + 8)?.try_into().ok()?))
}

fn fnv1a64(data: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in data {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// A bbolt file as `bolt.Open` creates it (two meta pages, an empty freelist, a root leaf)
/// holding the named empty buckets (inline): the template [`crate::restore::membership`] hands etcd's
/// restore tool.
pub(crate) fn empty_file(page_size: u32, buckets: &[&[u8]]) -> Vec<u8> {
    let ps = page_size as usize;
    let mut out = vec![0u8; 4 * ps];
    let header = |id: u64, flags: u16| {
        let mut h = [0u8; PAGE_HEADER];
        h[..8].copy_from_slice(&id.to_le_bytes());
        h[8..10].copy_from_slice(&flags.to_le_bytes());
        h
    };
    for id in 0..2u64 {
        let at = id as usize * ps;
        out[at..at + PAGE_HEADER].copy_from_slice(&header(id, FLAG_META));
        let mut m = Vec::with_capacity(META_SIZE);
        for v in [MAGIC, VERSION, page_size, 0] {
            m.extend_from_slice(&v.to_le_bytes());
        }
        // root bucket {page 3, sequence 0}, freelist page 2, high-water mark 4, txid = id
        for v in [3u64, 0, 2, 4, id] {
            m.extend_from_slice(&v.to_le_bytes());
        }
        let sum = fnv1a64(&m);
        m.extend_from_slice(&sum.to_le_bytes());
        out[at + PAGE_HEADER..at + PAGE_HEADER + META_SIZE].copy_from_slice(&m);
    }
    out[2 * ps..2 * ps + PAGE_HEADER].copy_from_slice(&header(2, FLAG_FREELIST));
    let mut empty_bucket = vec![0u8; BUCKET_HEADER + PAGE_HEADER];
    empty_bucket[BUCKET_HEADER..].copy_from_slice(&header(0, FLAG_LEAF));
    let mut names = buckets.to_vec();
    names.sort();
    let root = RootLeaf {
        id: 3,
        span: ps,
        header: header(3, FLAG_LEAF).to_vec(),
        elements: names
            .into_iter()
            .map(|n| (BUCKET_LEAF, n.to_vec(), empty_bucket.clone()))
            .collect(),
    };
    if let Some(page) = root.encode() {
        out[3 * ps..4 * ps].copy_from_slice(&page);
    }
    out
}

/// Parses and validates the meta struct of a meta page (`p` starts at the page header).
fn parse_meta(p: &[u8], page: u64) -> std::result::Result<Meta, String> {
    let m = p
        .get(PAGE_HEADER..PAGE_HEADER + META_SIZE)
        .ok_or("meta page is truncated")?;
    let magic = u32_at(m, 0).unwrap_or(0);
    if magic == MAGIC.swap_bytes() {
        return Err("big-endian bbolt file (written on s390x?): not readable here".into());
    }
    if magic != MAGIC {
        return Err(format!("bad magic {magic:#010x} (expected {MAGIC:#010x})"));
    }
    let version = u32_at(m, 4).unwrap_or(0);
    if version != VERSION {
        return Err(format!("unsupported bbolt version {version}"));
    }
    let sum = u64_at(m, 56).unwrap_or(0);
    if fnv1a64(&m[..56]) != sum {
        return Err("meta checksum mismatch".into());
    }
    let page_size = u32_at(m, 8).unwrap_or(0);
    if !(MIN_PAGE..=MAX_PAGE).contains(&page_size) || !page_size.is_power_of_two() {
        return Err(format!("invalid page size {page_size}"));
    }
    Ok(Meta {
        page,
        page_size,
        root: u64_at(m, 16).unwrap_or(0),
        freelist: u64_at(m, 32).unwrap_or(0),
        hwm: u64_at(m, 40).unwrap_or(0),
        txid: u64_at(m, 48).unwrap_or(0),
    })
}

/// Where a bucket's B+tree lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BucketRoot {
    /// Its own page (or pages).
    Page(u64),
    /// An inline bucket: a whole leaf page (header included) stored in the parent's value.
    Inline(Vec<u8>),
}

/// A bucket found in the root bucket (etcd has no nested buckets).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bucket {
    /// The bucket's name.
    pub name: Vec<u8>,
    /// Where its pages are.
    pub root: BucketRoot,
}

/// Decodes a bucket value (`InBucket` header, then an inline page when its root is 0).
pub(crate) fn bucket_root(value: &[u8]) -> std::result::Result<BucketRoot, String> {
    let root = u64_at(value, 0).ok_or("bucket value shorter than its 16-byte header")?;
    if value.len() < BUCKET_HEADER {
        return Err("bucket value shorter than its 16-byte header".into());
    }
    if root == 0 {
        let page = &value[BUCKET_HEADER..];
        if page.len() < PAGE_HEADER {
            return Err("inline bucket shorter than a page header".into());
        }
        Ok(BucketRoot::Inline(page.to_vec()))
    } else {
        Ok(BucketRoot::Page(root))
    }
}

/// One logical page: header fields and its bytes (header included, overflow pages appended).
struct Page<'a> {
    id: Option<u64>,
    flags: u16,
    count: usize,
    data: &'a [u8],
}

impl<'a> Page<'a> {
    fn parse(id: Option<u64>, data: &'a [u8]) -> std::result::Result<Page<'a>, Problem> {
        let flags = u16_at(data, 8).ok_or_else(|| problem(id, "page header truncated"))?;
        let count = usize::from(u16_at(data, 10).unwrap_or(0));
        if (flags == FLAG_BRANCH || flags == FLAG_LEAF)
            && PAGE_HEADER + count * ELEMENT > data.len()
        {
            return Err(problem(
                id,
                format!(
                    "{count} elements do not fit in the page's {} bytes",
                    data.len()
                ),
            ));
        }
        Ok(Page {
            id,
            flags,
            count,
            data,
        })
    }

    fn slice(&self, at: usize, len: usize, what: &str) -> std::result::Result<&'a [u8], Problem> {
        at.checked_add(len)
            .and_then(|end| self.data.get(at..end))
            .ok_or_else(|| {
                problem(
                    self.id,
                    format!(
                        "{what} at offset {at} ({len} bytes) is outside the page's {} bytes",
                        self.data.len()
                    ),
                )
            })
    }

    /// Leaf element `i`: (flags, key, value).
    fn leaf(&self, i: usize) -> std::result::Result<(u32, &'a [u8], &'a [u8]), Problem> {
        let (flags, k, v) = self.leaf_at(i)?;
        Ok((flags, &self.data[k], &self.data[v]))
    }

    /// Leaf element `i`: flags and where its key and value lie in the page's bytes.
    fn leaf_at(&self, i: usize) -> std::result::Result<(u32, Range<usize>, Range<usize>), Problem> {
        let e = PAGE_HEADER + i * ELEMENT;
        let d = self.data;
        let (flags, pos, ksize, vsize) = (
            u32_at(d, e).unwrap_or(0),
            u32_at(d, e + 4).unwrap_or(0) as usize,
            u32_at(d, e + 8).unwrap_or(0) as usize,
            u32_at(d, e + 12).unwrap_or(0) as usize,
        );
        self.slice(e + pos, ksize, &format!("key of element {i}"))?;
        self.slice(e + pos + ksize, vsize, &format!("value of element {i}"))?;
        Ok((
            flags,
            e + pos..e + pos + ksize,
            e + pos + ksize..e + pos + ksize + vsize,
        ))
    }

    /// Branch element `i`: (first key of the child, child page id).
    fn branch(&self, i: usize) -> std::result::Result<(&'a [u8], u64), Problem> {
        let e = PAGE_HEADER + i * ELEMENT;
        let d = self.data;
        let pos = u32_at(d, e).unwrap_or(0) as usize;
        let ksize = u32_at(d, e + 4).unwrap_or(0) as usize;
        let child = u64_at(d, e + 8).unwrap_or(0);
        let key = self.slice(e + pos, ksize, &format!("key of element {i}"))?;
        Ok((key, child))
    }
}

/// The root bucket's leaf page, as read (see [`Db::root_leaf`]).
#[derive(Debug, Clone)]
pub(crate) struct RootLeaf {
    pub(crate) id: u64,
    /// Bytes of the page with its overflow pages.
    pub(crate) span: usize,
    /// The page header as stored (id, flags, count, overflow).
    pub(crate) header: Vec<u8>,
    /// (flags, key, value) in key order.
    pub(crate) elements: Vec<(u32, Vec<u8>, Vec<u8>)>,
}

impl RootLeaf {
    /// The page rebuilt with `elements` (same keys and order: only values change), laid out
    /// as bbolt writes a leaf (elements, then each key followed by its value), zero-padded to
    /// the span; `None` when it does not fit.
    pub(crate) fn encode(&self) -> Option<Vec<u8>> {
        let data: usize = self
            .elements
            .iter()
            .map(|(_, k, v)| k.len() + v.len())
            .sum();
        let start = PAGE_HEADER + self.elements.len() * ELEMENT;
        if start + data > self.span || self.elements.len() > usize::from(u16::MAX) {
            return None;
        }
        let mut out = vec![0u8; self.span];
        out[..PAGE_HEADER].copy_from_slice(&self.header);
        out[10..12].copy_from_slice(&(self.elements.len() as u16).to_le_bytes());
        let mut at = start;
        for (i, (flags, k, v)) in self.elements.iter().enumerate() {
            let e = PAGE_HEADER + i * ELEMENT;
            let fields = [*flags, (at - e) as u32, k.len() as u32, v.len() as u32];
            for (j, f) in fields.iter().enumerate() {
                out[e + 4 * j..e + 4 * j + 4].copy_from_slice(&f.to_le_bytes());
            }
            out[at..at + k.len()].copy_from_slice(k);
            at += k.len();
            out[at..at + v.len()].copy_from_slice(v);
            at += v.len();
        }
        Some(out)
    }
}

/// An open bbolt file.
pub struct Db {
    path: PathBuf,
    file: File,
    file_len: u64,
    meta: Meta,
    /// Problems with the other meta page (reported by `check`, not fatal).
    other_meta: Option<String>,
}

impl Db {
    /// Opens a bbolt file read-only, without locking it, and selects its meta page as bbolt does
    /// (the valid one with the higher txid). A file shorter than its high-water mark is refused.
    pub fn open(path: &Path) -> Result<Db> {
        Db::open_with(path, false)
    }

    /// [`Db::open`], accepting a file shorter than its high-water mark as bbolt 1.3.6 does: only
    /// a page that is actually read beyond the end is a problem (etcd dies of SIGBUS on it).
    pub(crate) fn open_short(path: &Path) -> Result<Db> {
        Db::open_with(path, true)
    }

    fn open_with(path: &Path, allow_short: bool) -> Result<Db> {
        let io = |what: &str, source| BoltError::Io {
            path: path.to_path_buf(),
            what: what.to_string(),
            source,
        };
        let file = File::open(path).map_err(|e| io("open", e))?;
        let file_len = file.metadata().map_err(|e| io("stat", e))?.len();
        let corrupt = |page, message: String| BoltError::Corrupt {
            path: path.to_path_buf(),
            problem: problem(page, message),
        };
        let mut head = vec![0u8; 4096.min(file_len as usize)];
        file.read_exact_at(&mut head, 0)
            .map_err(|e| io("read the first page", e))?;
        let m0 = parse_meta(&head, 0);
        // meta 1 sits one page further: take the page size from meta 0, or probe like bbolt
        let mut m1 = Err("not found".to_string());
        let sizes: Vec<u64> = match &m0 {
            Ok(m) => vec![u64::from(m.page_size)],
            Err(_) => (0..15).map(|i| 1024u64 << i).collect(),
        };
        for ps in sizes {
            if ps + (PAGE_HEADER + META_SIZE) as u64 > file_len {
                break;
            }
            let mut buf = vec![0u8; PAGE_HEADER + META_SIZE];
            file.read_exact_at(&mut buf, ps)
                .map_err(|e| io("read the second meta page", e))?;
            m1 = parse_meta(&buf, 1).and_then(|m| {
                if u64::from(m.page_size) == ps {
                    Ok(m)
                } else {
                    Err(format!(
                        "page size {} does not match its offset {ps}",
                        m.page_size
                    ))
                }
            });
            if m1.is_ok() {
                break;
            }
        }
        let (meta, other_meta) = match (m0, m1) {
            (Ok(a), Ok(b)) => {
                if b.txid > a.txid {
                    (b, None)
                } else {
                    (a, None)
                }
            }
            (Ok(a), Err(e)) => (a, Some(format!("meta page 1: {e}"))),
            (Err(e), Ok(b)) => (b, Some(format!("meta page 0: {e}"))),
            (Err(e0), Err(e1)) => {
                return Err(corrupt(
                    None,
                    format!("no valid meta page (page 0: {e0}; page 1: {e1})"),
                ))
            }
        };
        let ps = u64::from(meta.page_size);
        if meta.hwm < 2 {
            return Err(corrupt(
                Some(meta.page),
                format!("high-water mark {} is below the 2 meta pages", meta.hwm),
            ));
        }
        let need = meta.hwm.saturating_mul(ps);
        if need > file_len && !allow_short {
            return Err(corrupt(
                None,
                format!(
                    "file is truncated: the meta says {} pages of {ps} bytes ({need} bytes) but the file has {file_len} bytes",
                    meta.hwm
                ),
            ));
        }
        if meta.root < 2 || meta.root >= meta.hwm {
            return Err(corrupt(
                Some(meta.page),
                format!(
                    "root bucket page {} is outside 2..{} (high-water mark)",
                    meta.root, meta.hwm
                ),
            ));
        }
        Ok(Db {
            path: path.to_path_buf(),
            file,
            file_len,
            meta,
            other_meta,
        })
    }

    /// The meta page in use (the valid one with the highest txid).
    pub fn meta(&self) -> &Meta {
        &self.meta
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    pub(crate) fn file_len(&self) -> u64 {
        self.file_len
    }

    /// `tx.Size()`: the high-water mark in bytes (what `snapshot status` calls the total size).
    pub(crate) fn size(&self) -> u64 {
        self.meta.hwm * u64::from(self.meta.page_size)
    }

    fn corrupt(&self, p: Problem) -> BoltError {
        BoltError::Corrupt {
            path: self.path.clone(),
            problem: p,
        }
    }

    /// Reads logical page `id` (with its overflow) into `buf`.
    fn read_page(&self, id: u64, buf: &mut Vec<u8>) -> std::result::Result<(), Problem> {
        self.read_page_as(id, buf, true)
    }

    /// [`Db::read_page`]; `check_id`: a header naming another page id is an error (the tree
    /// walk of a check handles it itself, as bbolt does).
    fn read_page_as(
        &self,
        id: u64,
        buf: &mut Vec<u8>,
        check_id: bool,
    ) -> std::result::Result<(), Problem> {
        let ps = u64::from(self.meta.page_size);
        if id >= self.meta.hwm {
            return Err(problem(
                Some(id),
                format!("out of bounds (high-water mark {})", self.meta.hwm),
            ));
        }
        let beyond = || {
            problem(
                Some(id),
                format!(
                    "lies beyond the end of the file ({} bytes): truncated (etcd dies of SIGBUS reading it)",
                    self.file_len
                ),
            )
        };
        if (id + 1) * ps > self.file_len {
            return Err(beyond());
        }
        buf.resize(ps as usize, 0);
        self.file
            .read_exact_at(buf, id * ps)
            .map_err(|e| problem(Some(id), format!("read failed: {e}")))?;
        let stored = u64_at(buf, 0).unwrap_or(0);
        if check_id && stored != id {
            return Err(problem(Some(id), format!("header says page id {stored}")));
        }
        let overflow = u64::from(u32_at(buf, 12).unwrap_or(0));
        if overflow > 0 && (id + 1 + overflow).saturating_mul(ps) > self.file_len {
            return Err(beyond());
        }
        if overflow > 0 {
            let span = (overflow + 1) * ps;
            if id + overflow >= self.meta.hwm || span > MAX_SPAN {
                return Err(problem(
                    Some(id),
                    format!(
                        "overflow of {overflow} pages runs past the high-water mark {}",
                        self.meta.hwm
                    ),
                ));
            }
            buf.resize(span as usize, 0);
            self.file
                .read_exact_at(&mut buf[ps as usize..], (id + 1) * ps)
                .map_err(|e| problem(Some(id), format!("read of its overflow failed: {e}")))?;
        }
        Ok(())
    }

    /// The root bucket's page when it is a single leaf (etcd's ten buckets fit in one):
    /// its id, its bytes (overflow included) and its elements (flags, key, value). `None` when
    /// the root is a branch page.
    pub(crate) fn root_leaf(&self) -> Result<Option<RootLeaf>> {
        let mut buf = Vec::new();
        self.read_page(self.meta.root, &mut buf)
            .map_err(|p| self.corrupt(p))?;
        let page = Page::parse(Some(self.meta.root), &buf).map_err(|p| self.corrupt(p))?;
        if page.flags != FLAG_LEAF {
            return Ok(None);
        }
        let mut elements = Vec::with_capacity(page.count);
        for i in 0..page.count {
            let (flags, k, v) = page.leaf(i).map_err(|p| self.corrupt(p))?;
            elements.push((flags, k.to_vec(), v.to_vec()));
        }
        Ok(Some(RootLeaf {
            id: self.meta.root,
            span: buf.len(),
            header: buf[..PAGE_HEADER].to_vec(),
            elements,
        }))
    }

    /// The buckets of the root bucket, in key order.
    pub fn buckets(&self) -> Result<Vec<Bucket>> {
        let mut out = Vec::new();
        let mut walker = Walker::new(self, true);
        walker
            .tree(&BucketRoot::Page(self.meta.root), &mut |flags, k, v| {
                if flags & BUCKET_LEAF == 0 {
                    return Err(problem(
                        None,
                        format!(
                            "root bucket entry {:?} is not a bucket",
                            String::from_utf8_lossy(k)
                        ),
                    ));
                }
                let root = bucket_root(v).map_err(|m| {
                    problem(
                        None,
                        format!("bucket {:?}: {m}", String::from_utf8_lossy(k)),
                    )
                })?;
                out.push(Bucket {
                    name: k.to_vec(),
                    root,
                });
                Ok(())
            })
            .map_err(|p| self.corrupt(p))?;
        Ok(out)
    }

    /// The named bucket of the root bucket, if any.
    pub(crate) fn bucket(&self, name: &[u8]) -> Result<Option<Bucket>> {
        Ok(self.buckets()?.into_iter().find(|b| b.name == name))
    }

    /// Calls `f(flags, key, value)` for every entry of `bucket`, in key order; stops at the first
    /// structural problem or error of `f`.
    pub fn for_each(&self, bucket: &Bucket, f: &mut Visit<'_>) -> Result<()> {
        let mut walker = Walker::new(self, true);
        walker.tree(&bucket.root, f).map_err(|p| self.corrupt(p))
    }

    /// Where `key`'s value lies in the file: (byte offset, length), in the tree rooted at page
    /// `root` or, with `inline_at` = the file offset of an inline bucket's page, in that page.
    fn find(
        &self,
        root: BucketRoot,
        inline_at: u64,
        key: &[u8],
    ) -> Result<Option<(u32, u64, usize)>> {
        let ps = u64::from(self.meta.page_size);
        let (mut data, mut base, mut id) = match root {
            BucketRoot::Inline(d) => (d, inline_at, None),
            BucketRoot::Page(id) => {
                let mut buf = Vec::new();
                self.read_page(id, &mut buf).map_err(|p| self.corrupt(p))?;
                (buf, id * ps, Some(id))
            }
        };
        for _ in 0..MAX_DEPTH {
            let page = Page::parse(id, &data).map_err(|p| self.corrupt(p))?;
            match page.flags {
                FLAG_LEAF => {
                    for i in 0..page.count {
                        let (flags, k, v) = page.leaf_at(i).map_err(|p| self.corrupt(p))?;
                        if &data[k] == key {
                            return Ok(Some((flags, base + v.start as u64, v.len())));
                        }
                    }
                    return Ok(None);
                }
                FLAG_BRANCH => {
                    let mut child = None;
                    for i in 0..page.count {
                        let (k, c) = page.branch(i).map_err(|p| self.corrupt(p))?;
                        if i == 0 || k <= key {
                            child = Some(c);
                        } else {
                            break;
                        }
                    }
                    let Some(c) = child else { return Ok(None) };
                    let mut buf = Vec::new();
                    self.read_page(c, &mut buf).map_err(|p| self.corrupt(p))?;
                    (data, base, id) = (buf, c * ps, Some(c));
                }
                f => {
                    return Err(
                        self.corrupt(problem(id, format!("invalid page flags {f:#x} in a tree")))
                    )
                }
            }
        }
        Err(self.corrupt(problem(id, "tree deeper than 64 levels")))
    }

    /// The last entry (key, value) of `bucket`, reading only the rightmost path of its tree.
    pub(crate) fn last(&self, bucket: &Bucket) -> Result<Option<(Vec<u8>, Vec<u8>)>> {
        let (mut data, mut id) = match &bucket.root {
            BucketRoot::Inline(d) => (d.clone(), None),
            BucketRoot::Page(id) => {
                let mut buf = Vec::new();
                self.read_page(*id, &mut buf).map_err(|p| self.corrupt(p))?;
                (buf, Some(*id))
            }
        };
        for _ in 0..MAX_DEPTH {
            let page = Page::parse(id, &data).map_err(|p| self.corrupt(p))?;
            if page.count == 0 {
                return Ok(None);
            }
            match page.flags {
                FLAG_LEAF => {
                    let (_, k, v) = page.leaf(page.count - 1).map_err(|p| self.corrupt(p))?;
                    return Ok(Some((k.to_vec(), v.to_vec())));
                }
                FLAG_BRANCH => {
                    let (_, c) = page.branch(page.count - 1).map_err(|p| self.corrupt(p))?;
                    let mut buf = Vec::new();
                    self.read_page(c, &mut buf).map_err(|p| self.corrupt(p))?;
                    (data, id) = (buf, Some(c));
                }
                f => {
                    return Err(
                        self.corrupt(problem(id, format!("invalid page flags {f:#x} in a tree")))
                    )
                }
            }
        }
        Err(self.corrupt(problem(id, "tree deeper than 64 levels")))
    }

    /// `len` bytes at file offset `off`.
    fn read_bytes(&self, off: u64, len: usize, what: &str) -> Result<Vec<u8>> {
        let mut v = vec![0u8; len];
        self.file
            .read_exact_at(&mut v, off)
            .map_err(|e| BoltError::Io {
                path: self.path.clone(),
                what: format!("{what} at offset {off}"),
                source: e,
            })?;
        Ok(v)
    }

    /// The value of `key` in `bucket` (a point lookup: one page per tree level).
    pub(crate) fn get(&self, bucket: &Bucket, key: &[u8]) -> Result<Option<Vec<u8>>> {
        match &bucket.root {
            BucketRoot::Inline(data) => Ok(self
                .find(bucket.root.clone(), 0, key)?
                .and_then(|(_, off, len)| data.get(off as usize..off as usize + len))
                .map(<[u8]>::to_vec)),
            BucketRoot::Page(_) => {
                let Some((_, off, len)) = self.find(bucket.root.clone(), 0, key)? else {
                    return Ok(None);
                };
                Ok(Some(self.read_bytes(off, len, "read a value")?))
            }
        }
    }

    /// Where the value of `key` in the top-level bucket `bucket` lies in the file: (byte
    /// offset, length). For patching values in place (same length, no tree change).
    pub fn locate(&self, bucket: &[u8], key: &[u8]) -> Result<Option<(u64, usize)>> {
        let Some((flags, at, len)) = self.find(BucketRoot::Page(self.meta.root), 0, bucket)? else {
            return Ok(None);
        };
        if flags & BUCKET_LEAF == 0 {
            return Ok(None);
        }
        let value = self.read_bytes(at, len, "read a bucket header")?;
        let root = bucket_root(&value).map_err(|m| self.corrupt(problem(None, m)))?;
        Ok(self
            .find(root, at + BUCKET_HEADER as u64, key)?
            .map(|(_, off, len)| (off, len)))
    }

    /// The structural check of the whole file (bbolt's `tx.Check`); empty when sound.
    pub fn check(&self) -> Vec<Problem> {
        self.check_with(&mut |_, _, _, _| Ok(()))
    }

    /// [`Db::check`], calling `visit(bucket name, flags, key, value)` for every entry of every
    /// top-level bucket, in order, on the same walk (entries of damaged pages are skipped and
    /// their problems reported; an error of `visit` is reported as a problem of its page).
    pub(crate) fn check_with(&self, visit: &mut TopVisit<'_>) -> Vec<Problem> {
        let mut walker = Walker::new(self, false);
        if let Some(m) = &self.other_meta {
            walker.problems.push(latent(None, m.clone()));
        }
        if !self.file_len.is_multiple_of(u64::from(self.meta.page_size))
            && self.file_len % 512 != 32
        {
            walker.problems.push(latent(
                None,
                format!(
                    "file size {} is not a multiple of the page size {} (and not a snapshot with a 32-byte sha256 trailer)",
                    self.file_len, self.meta.page_size
                ),
            ));
        }
        walker.mark(0, 0);
        walker.mark(1, 0);
        let freed = walker.freelist();
        walker.check_bucket(&[], &BucketRoot::Page(self.meta.root), 0, visit);
        if let Some(freed) = freed {
            for id in 2..self.meta.hwm {
                let reachable = walker.seen(id);
                let free = freed.binary_search(&id).is_ok();
                if reachable && free {
                    walker
                        .problems
                        .push(latent(Some(id), "reachable and in the freelist"));
                } else if !reachable && !free {
                    walker
                        .problems
                        .push(latent(Some(id), "unreachable unfreed"));
                }
            }
        }
        walker.problems
    }
}

/// A depth-first walk of B+trees, tracking which pages were reached.
struct Walker<'a> {
    db: &'a Db,
    reached: Vec<u64>,
    problems: Vec<Problem>,
    /// Stop at the first problem (reading) or collect them all (checking).
    strict: bool,
    bufs: Vec<Vec<u8>>,
}

/// The flags [`Db::check_with`] passes once when a top-level bucket starts (no key, no value).
pub(crate) const BUCKET_START: u32 = u32::MAX;

/// Called with (bucket name, element flags, key, value) for each entry of a top-level bucket,
/// and with [`BUCKET_START`] before the first.
pub(crate) type TopVisit<'v> =
    dyn FnMut(&[u8], u32, &[u8], &[u8]) -> std::result::Result<(), Problem> + 'v;

/// Called with (element flags, key, value) for each leaf entry.
pub(crate) type Visit<'v> = dyn FnMut(u32, &[u8], &[u8]) -> std::result::Result<(), Problem> + 'v;

impl<'a> Walker<'a> {
    fn new(db: &'a Db, strict: bool) -> Self {
        let words = (db.meta.hwm as usize).div_ceil(64);
        Walker {
            db,
            reached: if strict { Vec::new() } else { vec![0; words] },
            problems: Vec::new(),
            strict,
            bufs: Vec::new(),
        }
    }

    fn seen(&self, id: u64) -> bool {
        self.reached
            .get((id / 64) as usize)
            .is_some_and(|w| w & (1 << (id % 64)) != 0)
    }

    /// Marks a page and its overflow as reached; false (and a problem) if one already was.
    fn mark(&mut self, id: u64, overflow: u64) -> bool {
        if self.strict {
            return true;
        }
        for p in id..=id.saturating_add(overflow) {
            if self.seen(p) {
                self.problems
                    .push(problem(Some(p), "multiple references".to_string()));
                return false;
            }
            if let Some(w) = self.reached.get_mut((p / 64) as usize) {
                *w |= 1 << (p % 64);
            }
        }
        true
    }

    /// Reads the persisted freelist (marking its pages), if there is one: the sorted free ids.
    fn freelist(&mut self) -> Option<Vec<u64>> {
        let id = self.db.meta.freelist;
        if id == NO_FREELIST {
            return None;
        }
        let mut buf = Vec::new();
        if let Err(p) = self.db.read_page(id, &mut buf) {
            self.problems.push(Problem { latent: true, ..p });
            return None;
        }
        let overflow = u64::from(u32_at(&buf, 12).unwrap_or(0));
        self.mark(id, overflow);
        if u16_at(&buf, 8) != Some(FLAG_FREELIST) {
            self.problems
                .push(latent(Some(id), "freelist page has the wrong type"));
            return None;
        }
        let mut count = usize::from(u16_at(&buf, 10).unwrap_or(0));
        let mut at = PAGE_HEADER;
        if count == 0xFFFF {
            count = u64_at(&buf, at).unwrap_or(0) as usize;
            at += 8;
        }
        let Some(ids) = count
            .checked_mul(8)
            .and_then(|n| buf.get(at..at.checked_add(n)?))
        else {
            self.problems.push(latent(
                Some(id),
                format!("{count} free ids do not fit the page"),
            ));
            return None;
        };
        let mut free: Vec<u64> = ids
            .chunks_exact(8)
            .map(|c| u64_at(c, 0).unwrap_or(0))
            .collect();
        free.sort_unstable();
        for w in free.windows(2) {
            if w[0] == w[1] {
                self.problems.push(latent(Some(w[0]), "already freed"));
            }
        }
        free.dedup();
        for f in &free {
            if *f < 2 || *f >= self.db.meta.hwm {
                self.problems.push(latent(
                    Some(*f),
                    format!("freed page is outside 2..{}", self.db.meta.hwm),
                ));
            }
        }
        Some(free)
    }

    /// Checks a bucket's tree and, recursively, its nested buckets.
    fn check_bucket(
        &mut self,
        name: &[u8],
        root: &BucketRoot,
        depth: usize,
        visit: &mut TopVisit<'_>,
    ) {
        if depth > MAX_DEPTH {
            self.problems.push(problem(None, "buckets nested too deep"));
            return;
        }
        let mut nested: Vec<(Vec<u8>, BucketRoot)> = Vec::new();
        let r = self.tree(root, &mut |flags, k, v| {
            if depth == 1 {
                visit(name, flags, k, v)?;
            }
            if flags & BUCKET_LEAF != 0 {
                let r = bucket_root(v).map_err(|m| {
                    problem(
                        None,
                        format!("bucket {:?}: {m}", String::from_utf8_lossy(k)),
                    )
                })?;
                nested.push((k.to_vec(), r));
            }
            Ok(())
        });
        if let Err(p) = r {
            self.problems.push(p);
        }
        for (n, r) in nested {
            if depth == 0 {
                if let Err(p) = visit(&n, BUCKET_START, &[], &[]) {
                    self.problems.push(p);
                }
            }
            self.check_bucket(&n, &r, depth + 1, visit);
        }
    }

    fn fail(&mut self, p: Problem) -> std::result::Result<(), Problem> {
        if self.strict {
            Err(p)
        } else {
            self.problems.push(p);
            Ok(())
        }
    }

    /// Walks the tree of a bucket in key order, calling `visit` for each leaf entry.
    fn tree(
        &mut self,
        root: &BucketRoot,
        visit: &mut Visit<'_>,
    ) -> std::result::Result<(), Problem> {
        match root {
            BucketRoot::Page(id) => self.node(*id, None, None, 0, visit),
            BucketRoot::Inline(data) => {
                let page = Page::parse(None, data)?;
                if page.flags != FLAG_LEAF {
                    return self.fail(problem(
                        None,
                        format!(
                            "inline bucket page has flags {:#x} (expected a leaf)",
                            page.flags
                        ),
                    ));
                }
                self.leaf(&page, None, None, visit)
            }
        }
    }

    fn node(
        &mut self,
        id: u64,
        lo: Option<&[u8]>,
        hi: Option<&[u8]>,
        depth: usize,
        visit: &mut Visit<'_>,
    ) -> std::result::Result<(), Problem> {
        // one buffer per tree level, reused across the walk
        let mut buf = self.bufs.pop().unwrap_or_default();
        let r = self.node_in(&mut buf, id, lo, hi, depth, visit);
        self.bufs.push(buf);
        r
    }

    #[allow(clippy::too_many_arguments)]
    fn node_in(
        &mut self,
        buf: &mut Vec<u8>,
        id: u64,
        lo: Option<&[u8]>,
        hi: Option<&[u8]>,
        depth: usize,
        visit: &mut Visit<'_>,
    ) -> std::result::Result<(), Problem> {
        if depth > MAX_DEPTH {
            return self.fail(problem(Some(id), "tree deeper than 64 levels (a cycle?)"));
        }
        if id < 2 {
            return self.fail(problem(
                Some(id),
                "a meta page is referenced as a tree page",
            ));
        }
        if let Err(p) = self.db.read_page_as(id, buf, self.strict) {
            return self.fail(p);
        }
        let overflow = u64::from(u32_at(buf, 12).unwrap_or(0));
        // bbolt tracks pages by the id in their header: a wrong id that is out of bounds or
        // taken stops etcd when it opens the file; an unused one passes (and bbolt would free
        // the wrong page when it rewrites this one)
        let stored = u64_at(buf, 0).unwrap_or(0);
        if stored != id {
            if stored > self.db.meta.hwm {
                return self.fail(problem(
                    Some(id),
                    format!(
                        "header says page id {stored}: out of bounds (high-water mark {})",
                        self.db.meta.hwm
                    ),
                ));
            }
            self.fail(latent(Some(id), format!("header says page id {stored}")))?;
        }
        if !self.mark(stored, overflow) {
            return Ok(()); // reached twice: reported, not walked again
        }
        let page = match Page::parse(Some(id), buf) {
            Ok(p) => p,
            Err(p) => return self.fail(p),
        };
        match page.flags {
            FLAG_LEAF => self.leaf(&page, lo, hi, visit),
            FLAG_BRANCH => {
                if page.count == 0 {
                    return self.fail(problem(Some(id), "empty branch page"));
                }
                let mut children = Vec::with_capacity(page.count);
                for i in 0..page.count {
                    match page.branch(i) {
                        Ok((k, child)) => children.push((k.to_vec(), child)),
                        Err(p) => return self.fail(p),
                    }
                }
                if let Err(p) = order(&page, children.iter().map(|(k, _)| k.as_slice()), lo, hi) {
                    self.fail(Problem { latent: true, ..p })?;
                }
                for i in 0..children.len() {
                    // the first child may hold keys below its separator (bbolt keeps the
                    // parent's lower bound for it)
                    let clo = if i == 0 {
                        lo
                    } else {
                        Some(children[i].0.as_slice())
                    };
                    let chi = children.get(i + 1).map(|(k, _)| k.as_slice()).or(hi);
                    self.node(children[i].1, clo, chi, depth + 1, visit)?;
                }
                Ok(())
            }
            FLAG_META | FLAG_FREELIST => self.fail(problem(
                Some(id),
                format!("invalid type: {} page inside a tree", type_name(page.flags)),
            )),
            f => self.fail(problem(Some(id), format!("invalid page flags {f:#x}"))),
        }
    }

    fn leaf(
        &mut self,
        page: &Page<'_>,
        lo: Option<&[u8]>,
        hi: Option<&[u8]>,
        visit: &mut Visit<'_>,
    ) -> std::result::Result<(), Problem> {
        let mut entries = Vec::with_capacity(page.count);
        for i in 0..page.count {
            match page.leaf(i) {
                Ok(e) => entries.push(e),
                Err(p) => return self.fail(p),
            }
        }
        if let Err(p) = order(page, entries.iter().map(|(_, k, _)| *k), lo, hi) {
            self.fail(Problem { latent: true, ..p })?;
        }
        for (flags, k, v) in entries {
            if let Err(mut p) = visit(flags, k, v) {
                if p.page.is_none() {
                    p.page = page.id;
                }
                self.fail(p)?;
            }
        }
        Ok(())
    }
}

fn type_name(flags: u16) -> &'static str {
    match flags {
        FLAG_BRANCH => "branch",
        FLAG_LEAF => "leaf",
        FLAG_META => "meta",
        FLAG_FREELIST => "freelist",
        _ => "unknown",
    }
}

/// Keys of a page must ascend strictly and stay within `[lo, hi)` given by the parent.
fn order<'k>(
    page: &Page<'_>,
    keys: impl Iterator<Item = &'k [u8]>,
    lo: Option<&[u8]>,
    hi: Option<&[u8]>,
) -> std::result::Result<(), Problem> {
    let mut prev: Option<&[u8]> = None;
    for (i, k) in keys.enumerate() {
        if let Some(p) = prev {
            if k <= p {
                return Err(problem(
                    page.id,
                    format!(
                        "key order: element {i} ({}) is not above its predecessor",
                        hex(k)
                    ),
                ));
            }
        } else if let Some(lo) = lo {
            if k < lo {
                return Err(problem(
                    page.id,
                    format!(
                        "key order: first key {} is below its parent's separator {}",
                        hex(k),
                        hex(lo)
                    ),
                ));
            }
        }
        if let Some(hi) = hi {
            if k >= hi {
                return Err(problem(
                    page.id,
                    format!(
                        "key order: key {} is not below the next separator {}",
                        hex(k),
                        hex(hi)
                    ),
                ));
            }
        }
        prev = Some(k);
    }
    Ok(())
}

fn hex(k: &[u8]) -> String {
    let shown: String = k.iter().take(32).map(|b| format!("{b:02x}")).collect();
    if k.len() > 32 {
        format!("{shown}...")
    } else {
        shown
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_empty_file_with_buckets_reads_back_sound() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("db");
        std::fs::write(&p, empty_file(4096, &[b"meta", b"key"])).expect("write");
        let db = Db::open(&p).expect("open");
        assert!(db.check().is_empty(), "{:?}", db.check());
        let names: Vec<Vec<u8>> = db
            .buckets()
            .expect("buckets")
            .into_iter()
            .map(|b| b.name)
            .collect();
        assert_eq!(names, vec![b"key".to_vec(), b"meta".to_vec()]);
        let root = db.root_leaf().expect("root").expect("a leaf");
        // re-encoding what was read gives the page back byte for byte
        let page = root.encode().expect("fits");
        let file = std::fs::read(&p).expect("read");
        assert_eq!(&file[3 * 4096..4 * 4096], &page[..]);
        let mut big = root.clone();
        big.elements[0].2 = vec![0u8; 5000];
        assert!(
            big.encode().is_none(),
            "a value larger than the page must not fit"
        );
    }

    #[test]
    fn fnv_matches_reference_vectors() {
        assert_eq!(fnv1a64(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a64(b"a"), 0xaf63_dc4c_8601_ec8c);
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        let dir = tempfile::tempdir().expect("tempdir");
        for len in [0usize, 10, 4096, 8192, 20000] {
            let p = dir.path().join(format!("g{len}"));
            let data: Vec<u8> = (0..len).map(|i| (i * 7919 % 251) as u8).collect();
            std::fs::write(&p, data).expect("write");
            assert!(Db::open(&p).is_err(), "garbage of {len} bytes");
        }
    }
}
