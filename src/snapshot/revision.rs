//! The revision of the data inside an etcd snapshot, read on the fly from the bbolt pages as the
//! snapshot streams, so that a full snapshot's name can carry the exact revision (etcdbrctl bug
//! #1044) without reading the file twice.
//!
//! A snapshot is a bbolt file written in page order: meta page 0 (root bucket page id, page
//! size) comes first. The store revision is `max(last key of the "key" bucket, finishedCompactRev,
//! scheduledCompactRev)` (what etcd itself restores). The last key is at the end of the rightmost
//! path of the "key" bucket's B+tree, but pages stream in id order, not tree order, so we keep a
//! small summary per page and resolve the path at the end:
//! * for every branch page: its last child (about 1 % of pages);
//! * for every leaf of revision keys: its last revision, only when at least `floor` (a lower
//!   bound of the answer, known before the stream starts), which keeps the map tiny;
//! * for every leaf that holds buckets (the root bucket's): where the "key" bucket lives and the
//!   compaction revisions from the inline "meta" bucket.
//!
//! Free pages hold stale copies of old pages; the resolution only follows page ids reachable from
//! the meta page, so stale summaries are never used. Anything unexpected yields `None`, and the
//! caller falls back to its lower bound.

use std::collections::HashMap;

use crate::ondisk::bbolt::{
    u16_at, u32_at, u64_at, BUCKET_LEAF as BUCKET_LEAF_FLAG, ELEMENT as ELEM, FLAG_BRANCH,
    FLAG_LEAF, MAGIC, PAGE_HEADER as HDR,
};
/// Spans (pages with overflow) up to this size are buffered whole; larger leaves (huge values)
/// only have their last key picked out.
const MAX_SPAN_BUFFER: u64 = 256 * 1024;
/// Cap on bytes held for pending spans and on page summaries: beyond it the scan gives up.
const MAX_PENDING_BYTES: usize = 8 << 20;
const MAX_SUMMARIES: usize = 1 << 20;
/// etcd's store starts at revision 1 with no keys.
const EMPTY_STORE_REVISION: i64 = 1;

#[derive(Debug, Clone, Copy, Default)]
struct RootLeaf {
    key_bucket: Option<KeyBucket>,
    finished_compact: Option<i64>,
    scheduled_compact: Option<i64>,
}

#[derive(Debug, Clone, Copy)]
enum KeyBucket {
    Page(u64),
    /// An inline "key" bucket, with its last revision (None when empty).
    Inline(Option<i64>),
}

enum Target {
    /// The whole span of a page with overflow.
    Span(u64),
    /// The first 9 bytes of the last key of a leaf too large to buffer (with the key's size).
    LastKey(u64, u32),
}

struct Want {
    off: u64,
    buf: Vec<u8>,
    len: usize,
    target: Target,
}

/// Reads the revision of the data of a snapshot as it streams (module doc).
pub struct RevisionScanner {
    floor: i64,
    db_size: u64,
    pos: u64,
    skip: u64,
    ps: u64,
    meta_root: u64,
    slot: Vec<u8>,
    wants: Vec<Want>,
    pending_bytes: usize,
    branch_last: HashMap<u64, u64>,
    root_branch_children: Option<Vec<u64>>,
    leaf_rev: HashMap<u64, i64>,
    root_leaves: HashMap<u64, RootLeaf>,
    failed: bool,
}

/// `main` of an etcd revision key.
fn revision_of_key(k: &[u8]) -> Option<i64> {
    crate::ondisk::schema::parse_revision_key(k).map(|(r, _)| r.main)
}

/// (flags, key, value) of a leaf element.
type LeafElement<'a> = (u32, &'a [u8], &'a [u8]);

/// Leaf elements of a page buffer (a real page or an inline bucket's page):
/// (flags, key, value). `None` if any bound is broken.
fn leaf_elements(page: &[u8]) -> Option<Vec<LeafElement<'_>>> {
    let count = u16_at(page, 10)? as usize;
    let mut out = Vec::with_capacity(count);
    for i in 0..count {
        let e = HDR + ELEM * i;
        let (flags, pos, ks, vs) = (
            u32_at(page, e)?,
            u32_at(page, e + 4)?,
            u32_at(page, e + 8)?,
            u32_at(page, e + 12)?,
        );
        let k0 = e.checked_add(pos as usize)?;
        let k1 = k0.checked_add(ks as usize)?;
        let v1 = k1.checked_add(vs as usize)?;
        out.push((flags, page.get(k0..k1)?, page.get(k1..v1)?));
    }
    Some(out)
}

impl RevisionScanner {
    /// `floor`: a revision the answer is known to be at least; `db_size`: the db bytes in the
    /// stream (the 32-byte hash trailer after them is ignored).
    pub fn new(floor: i64, db_size: u64) -> Self {
        RevisionScanner {
            floor,
            db_size,
            pos: 0,
            skip: 0,
            ps: 0,
            meta_root: 0,
            slot: Vec::new(),
            wants: Vec::new(),
            pending_bytes: 0,
            branch_last: HashMap::new(),
            root_branch_children: None,
            leaf_rev: HashMap::new(),
            root_leaves: HashMap::new(),
            failed: false,
        }
    }

    /// Feeds the next bytes of the stream.
    pub fn update(&mut self, mut data: &[u8]) {
        if self.failed {
            return;
        }
        let room = self.db_size.saturating_sub(self.pos);
        if (data.len() as u64) > room {
            data = &data[..room as usize];
        }
        while !data.is_empty() && !self.failed {
            if self.skip > 0 {
                let n = (self.skip as usize).min(data.len());
                self.skip -= n as u64;
                self.pos += n as u64;
                data = &data[n..];
                continue;
            }
            // until the page size is known, the slot is the smallest page (meta 0 is in its
            // first 80 bytes)
            let slot_size = if self.ps == 0 { 512 } else { self.ps as usize };
            let take = (slot_size - self.slot.len()).min(data.len());
            self.slot.extend_from_slice(&data[..take]);
            data = &data[take..];
            self.pos += take as u64;
            if self.slot.len() == slot_size || self.pos == self.db_size {
                let start = self.pos - self.slot.len() as u64;
                let slot = std::mem::take(&mut self.slot);
                self.process_slot(start, &slot);
                self.slot = slot;
                self.slot.clear();
            }
        }
    }

    fn fail(&mut self) {
        self.failed = true;
        self.wants.clear();
    }

    fn process_slot(&mut self, start: u64, slot: &[u8]) {
        if start == 0 {
            if self.parse_meta(slot).is_none() {
                self.fail();
            }
            return;
        }
        if self.ps == 0 || !start.is_multiple_of(self.ps) {
            return self.fail();
        }
        let pgid = start / self.ps;
        self.parse_page_header(pgid, slot);
        self.fill_wants(start, slot);
        if self.branch_last.len() + self.leaf_rev.len() + self.root_leaves.len() > MAX_SUMMARIES {
            self.fail();
        }
    }

    fn parse_meta(&mut self, p: &[u8]) -> Option<()> {
        if u32_at(p, 16)? != MAGIC || u32_at(p, 20)? != 2 {
            return None;
        }
        let ps = u32_at(p, 24)? as u64;
        if ps < 512 || !ps.is_multiple_of(512) || ps > 1 << 20 {
            return None;
        }
        self.ps = ps;
        self.meta_root = u64_at(p, 32)?;
        // the rest of page 0 carries nothing we need
        self.skip = ps - p.len() as u64;
        Some(())
    }

    fn parse_page_header(&mut self, pgid: u64, slot: &[u8]) {
        let (Some(id), Some(flags), Some(overflow)) =
            (u64_at(slot, 0), u16_at(slot, 8), u32_at(slot, 12))
        else {
            return;
        };
        if id != pgid || (flags != FLAG_BRANCH && flags != FLAG_LEAF) {
            return; // meta, freelist, free or continuation page
        }
        if overflow == 0 {
            self.parse_page(pgid, flags, slot);
            return;
        }
        let span = (1 + overflow as u64) * self.ps;
        if span <= MAX_SPAN_BUFFER {
            self.want(pgid * self.ps, span as usize, Target::Span(pgid));
        } else if flags == FLAG_LEAF {
            // a leaf with a huge value: only its last key matters
            let Some(count) = u16_at(slot, 10) else {
                return;
            };
            if count == 0 {
                return;
            }
            let e = HDR + ELEM * (count as usize - 1);
            let (Some(pos), Some(ks)) = (u32_at(slot, e + 4), u32_at(slot, e + 8)) else {
                return;
            };
            self.want(
                pgid * self.ps + e as u64 + pos as u64,
                9,
                Target::LastKey(pgid, ks),
            );
        }
    }

    fn want(&mut self, off: u64, len: usize, target: Target) {
        self.pending_bytes += len;
        if self.pending_bytes > MAX_PENDING_BYTES {
            return self.fail();
        }
        self.wants.push(Want {
            off,
            buf: Vec::with_capacity(len),
            len,
            target,
        });
    }

    fn fill_wants(&mut self, start: u64, slot: &[u8]) {
        if self.wants.is_empty() {
            return;
        }
        let end = start + slot.len() as u64;
        let mut done = Vec::new();
        for (i, w) in self.wants.iter_mut().enumerate() {
            let next = w.off + w.buf.len() as u64;
            if next >= end || next < start {
                continue;
            }
            let from = (next - start) as usize;
            let n = (w.len - w.buf.len()).min(slot.len() - from);
            w.buf.extend_from_slice(&slot[from..from + n]);
            if w.buf.len() == w.len {
                done.push(i);
            }
        }
        for i in done.into_iter().rev() {
            let w = self.wants.swap_remove(i);
            self.pending_bytes -= w.len;
            match w.target {
                Target::Span(pgid) => {
                    let flags = u16_at(&w.buf, 8).unwrap_or(0);
                    self.parse_page(pgid, flags, &w.buf);
                }
                Target::LastKey(pgid, ks) => {
                    if (ks == 17 || ks == 18) && w.buf.get(8) == Some(&b'_') {
                        if let Ok(b) = w.buf[..8].try_into() {
                            self.record_leaf(pgid, i64::from_be_bytes(b));
                        }
                    }
                }
            }
        }
    }

    fn record_leaf(&mut self, pgid: u64, rev: i64) {
        if rev >= self.floor {
            self.leaf_rev.insert(pgid, rev);
        }
    }

    fn parse_page(&mut self, pgid: u64, flags: u16, page: &[u8]) {
        if flags == FLAG_BRANCH {
            let Some(count) = u16_at(page, 10).map(usize::from) else {
                return;
            };
            if count == 0 {
                return;
            }
            let child = |i: usize| u64_at(page, HDR + ELEM * i + 8);
            if let Some(last) = child(count - 1) {
                self.branch_last.insert(pgid, last);
            }
            if pgid == self.meta_root {
                self.root_branch_children = (0..count).map(child).collect();
            }
            return;
        }
        let Some(elems) = leaf_elements(page) else {
            return;
        };
        let Some(&(first_flags, _, _)) = elems.first() else {
            // an empty leaf can only be an empty bucket's root: the initial store, revision 1
            return self.record_leaf(pgid, EMPTY_STORE_REVISION);
        };
        if first_flags & BUCKET_LEAF_FLAG != 0 {
            let mut r = RootLeaf::default();
            for (f, k, v) in &elems {
                if f & BUCKET_LEAF_FLAG == 0 {
                    continue;
                }
                let root = u64_at(v, 0);
                match *k {
                    b"key" => {
                        r.key_bucket = match root {
                            Some(0) => v.get(16..).and_then(leaf_elements).map(|e| {
                                KeyBucket::Inline(match e.last() {
                                    Some((_, k, _)) => revision_of_key(k),
                                    None => Some(EMPTY_STORE_REVISION),
                                })
                            }),
                            Some(pg) => Some(KeyBucket::Page(pg)),
                            None => None,
                        }
                    }
                    b"meta" if root == Some(0) => {
                        for (_, mk, mv) in v.get(16..).and_then(leaf_elements).unwrap_or_default() {
                            let rev = mv
                                .get(..8)
                                .and_then(|b| b.try_into().ok())
                                .map(i64::from_be_bytes);
                            match mk {
                                b"finishedCompactRev" => r.finished_compact = rev,
                                b"scheduledCompactRev" => r.scheduled_compact = rev,
                                _ => {}
                            }
                        }
                    }
                    _ => {}
                }
            }
            self.root_leaves.insert(pgid, r);
        } else if let Some(rev) = elems.last().and_then(|(_, k, _)| revision_of_key(k)) {
            self.record_leaf(pgid, rev);
        }
    }

    /// The store revision of the snapshot, or `None` when it cannot be told for sure.
    pub fn finish(self) -> Option<i64> {
        if self.failed || self.pos != self.db_size || self.ps == 0 {
            return None;
        }
        // the root bucket: one leaf, or a branch over leaves
        let mut root = RootLeaf::default();
        if let Some(r) = self.root_leaves.get(&self.meta_root) {
            root = *r;
        } else {
            for c in self.root_branch_children.as_ref()? {
                let r = self.root_leaves.get(c)?;
                root.key_bucket = root.key_bucket.or(r.key_bucket);
                root.finished_compact = root.finished_compact.or(r.finished_compact);
                root.scheduled_compact = root.scheduled_compact.or(r.scheduled_compact);
            }
        }
        let last_key = match root.key_bucket? {
            KeyBucket::Inline(rev) => rev,
            KeyBucket::Page(mut pg) => {
                let mut found = None;
                for _ in 0..64 {
                    if let Some(next) = self.branch_last.get(&pg) {
                        pg = *next;
                    } else {
                        found = self.leaf_rev.get(&pg).copied();
                        break;
                    }
                }
                found
            }
        };
        let compact = root.finished_compact.max(root.scheduled_compact);
        let rev = last_key.max(compact)?;
        // a last leaf below the floor (not recorded) must be covered by the compaction marks
        if last_key.is_none() && rev < self.floor {
            return None;
        }
        Some(rev)
    }
}
