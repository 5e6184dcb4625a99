//! The new cluster's membership in a restored db, with the db written once.
//!
//! etcd's `snapshot restore` copies the whole snapshot into `member/snap/db` before it writes
//! the membership: after our download that is a second write of the whole db (1.7x the tool's
//! own time for a 900 MiB db here). Instead the tool restores an empty bbolt file (the
//! template) into the data directory, writing the WAL, the `.snap` file and the membership as
//! it would for the real db, in a fraction of a second; the real db, downloaded straight next
//! to it, then receives what the tool changes in a db (etcd-internals §5.2, §5.3):
//! * `meta/consistent_index` = the `.snap`'s index N, so that etcd applies the WAL's entries
//!   after N to the backend (both tools);
//! * with etcdutl 3.5+ (its template db has a `members` bucket): `members` = the template's,
//!   `members_removed` emptied, `meta/term` = the `.snap`'s term;
//! * etcdctl 3.4 leaves members and term as they were (it also tombstones user keys named like
//!   old member IDs: a bug not reproduced).
//!
//! Only values in the root bucket's leaf page change, rewritten in place (same page, nothing
//! allocated, the freelist untouched), and two 8-byte meta values. Anything else (a root branch
//! page, a bucket with its own pages, a page too small) is [`Transplant::Unpatchable`]: nothing
//! was written and the caller hands the whole db to the tool, as before. It runs inside the
//! restore's `.part` directory, so a crash leaves nothing live.

use crate::error::{Error, Result};
use crate::ondisk::bbolt::{self, Db, BUCKET_LEAF};
use crate::ondisk::schema::META_BUCKET;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

const MEMBERS: &[u8] = b"members";
const MEMBERS_REMOVED: &[u8] = b"members_removed";
const CONSISTENT_INDEX: &[u8] = b"consistent_index";
const TERM: &[u8] = b"term";

/// Whether the membership went into the db.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Transplant {
    Done,
    /// Why not (nothing was written).
    Unpatchable(String),
}

/// Writes the empty bbolt file etcd's tool restores at `path` (private, new).
pub(crate) fn write_template(path: &Path) -> Result<()> {
    use std::io::Write;
    let mut f = crate::sys::create_private(path)
        .map_err(|e| Error::io(path, "create the membership template db", e))?;
    // etcdutl 3.5.1 exits 1 without a word when the db has no meta bucket
    f.write_all(&bbolt::empty_file(4096, &[META_BUCKET]))
        .map_err(|e| Error::io(path, "write the membership template db", e))
}

/// What the tool wrote for the template in `data_dir`.
struct Template {
    term: u64,
    index: u64,
    /// Bucket values (header and inline page) of `members` and `members_removed`, when the
    /// tool writes the membership into the db (3.5+).
    members: Option<(Vec<u8>, Vec<u8>)>,
}

fn integrity(path: &Path, reason: impl Into<String>) -> Error {
    Error::integrity(path.display().to_string(), reason.into())
}

/// The raft snapshot the tool wrote: `<term>-<index>.snap`, 16 hex digits each.
fn snap_file(snap_dir: &Path) -> Result<(u64, u64)> {
    let entries =
        std::fs::read_dir(snap_dir).map_err(|e| Error::io(snap_dir, "list the snap dir", e))?;
    let mut found = Vec::new();
    for e in entries {
        let name = e
            .map_err(|e| Error::io(snap_dir, "list the snap dir", e))?
            .file_name();
        let name = name.to_string_lossy();
        if let Some(stem) = name.strip_suffix(".snap") {
            let parsed = stem.split_once('-').and_then(|(t, i)| {
                (t.len() == 16 && i.len() == 16).then_some(())?;
                Some((
                    u64::from_str_radix(t, 16).ok()?,
                    u64::from_str_radix(i, 16).ok()?,
                ))
            });
            found.push(parsed.ok_or_else(|| {
                integrity(snap_dir, format!("unexpected snapshot file name {name}"))
            })?);
        }
    }
    match found[..] {
        [one] => Ok(one),
        _ => Err(integrity(
            snap_dir,
            format!(
                "etcd's restore tool left {} .snap files, expected one",
                found.len()
            ),
        )),
    }
}

/// An inline bucket's value (bucket header with root page 0, then its page), else `None`.
fn inline(value: &[u8]) -> Option<&[u8]> {
    (value.len() >= 32 && value[..8] == [0u8; 8]).then_some(value)
}

fn read_template(data_dir: &Path) -> Result<std::result::Result<Template, String>> {
    let snap_dir = data_dir.join("member/snap");
    let (term, index) = snap_file(&snap_dir)?;
    let db_path = snap_dir.join("db");
    let db = Db::open(&db_path).map_err(|e| integrity(&db_path, e.to_string()))?;
    let Some(root) = db
        .root_leaf()
        .map_err(|e| integrity(&db_path, e.to_string()))?
    else {
        return Ok(Err("the template's root bucket is a branch page".into()));
    };
    let value = |name: &[u8]| {
        root.elements
            .iter()
            .find(|(f, k, _)| k == name && f & BUCKET_LEAF != 0)
            .map(|(_, _, v)| v.clone())
    };
    let members = match (value(MEMBERS), value(MEMBERS_REMOVED)) {
        (None, _) => None,
        (Some(m), Some(r)) => match (inline(&m), inline(&r)) {
            (Some(_), Some(_)) => Some((m, r)),
            _ => {
                return Ok(Err(
                    "the new membership does not fit an inline bucket".into()
                ))
            }
        },
        (Some(_), None) => {
            return Ok(Err(
                "the template has a members bucket but no members_removed".into(),
            ))
        }
    };
    Ok(Ok(Template {
        term,
        index,
        members,
    }))
}

/// Gives `db` (a restored snapshot, etcd stopped) the membership etcd's tool wrote for the
/// template in `data_dir`.
pub(crate) fn transplant(data_dir: &Path, db: &Path) -> Result<Transplant> {
    let t = match read_template(data_dir)? {
        Ok(t) => t,
        Err(why) => return Ok(Transplant::Unpatchable(why)),
    };
    let e = |e: bbolt::BoltError| integrity(db, e.to_string());
    let d = Db::open(db).map_err(e)?;
    let ps = u64::from(d.meta().page_size);
    let Some(mut root) = d.root_leaf().map_err(e)? else {
        return Ok(Transplant::Unpatchable(
            "the root bucket is a branch page".into(),
        ));
    };
    if eight(&d, CONSISTENT_INDEX)?.is_none() {
        return Ok(Transplant::Unpatchable(
            "meta/consistent_index is not an 8-byte value".into(),
        ));
    }
    if let Some((members, removed)) = &t.members {
        for (name, new) in [(MEMBERS, members), (MEMBERS_REMOVED, removed)] {
            let Some(el) = root
                .elements
                .iter_mut()
                .find(|(f, k, _)| k == name && f & BUCKET_LEAF != 0)
            else {
                return Ok(Transplant::Unpatchable(format!(
                    "the db has no {} bucket",
                    String::from_utf8_lossy(name)
                )));
            };
            if inline(&el.2).is_none() {
                // its pages would be neither reachable nor free
                return Ok(Transplant::Unpatchable(format!(
                    "the db's {} bucket has pages of its own",
                    String::from_utf8_lossy(name)
                )));
            }
            // the bucket keeps its sequence
            let mut v = new.clone();
            v[8..16].copy_from_slice(&el.2[8..16]);
            el.2 = v;
        }
        let Some(page) = root.encode() else {
            return Ok(Transplant::Unpatchable(
                "the new membership does not fit the root page".into(),
            ));
        };
        drop(d);
        write_at(db, &page, root.id * ps)?;
    } else {
        drop(d);
    }
    // the meta bucket may have moved inside the rewritten root page: locate again
    let d = Db::open(db).map_err(e)?;
    let index_at = eight(&d, CONSISTENT_INDEX)?
        .ok_or_else(|| integrity(db, "meta/consistent_index vanished from the patched db"))?;
    let term_at = if t.members.is_some() {
        eight(&d, TERM)?
    } else {
        None
    };
    drop(d);
    write_at(db, &t.index.to_be_bytes(), index_at)?;
    if let Some(at) = term_at {
        write_at(db, &t.term.to_be_bytes(), at)?;
    }
    let f = std::fs::File::open(db).map_err(|e| Error::io(db, "open the restored db", e))?;
    f.sync_all()
        .map_err(|e| Error::io(db, "sync the restored db", e))?;
    verify(db, data_dir, &t)?;
    Ok(Transplant::Done)
}

/// Where the 8-byte value of `meta/<key>` lies in the file.
fn eight(d: &Db, key: &[u8]) -> Result<Option<u64>> {
    Ok(d.locate(META_BUCKET, key)
        .map_err(|e| integrity(d.path(), e.to_string()))?
        .filter(|(_, len)| *len == 8)
        .map(|(off, _)| off))
}

fn write_at(db: &Path, bytes: &[u8], at: u64) -> Result<()> {
    std::fs::OpenOptions::new()
        .write(true)
        .open(db)
        .and_then(|f| f.write_all_at(bytes, at))
        .map_err(|e| Error::io(db, "write the membership into the restored db", e))
}

/// Every entry of the named top-level bucket.
fn entries(d: &Db, name: &[u8]) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
    let e = |e: bbolt::BoltError| integrity(d.path(), e.to_string());
    let mut out = Vec::new();
    if let Some(b) = d.bucket(name).map_err(e)? {
        d.for_each(&b, &mut |_, k, v| {
            out.push((k.to_vec(), v.to_vec()));
            Ok(())
        })
        .map_err(e)?;
    }
    Ok(out)
}

/// Reads the patched db back: the template's members, the index and term as written.
fn verify(db: &Path, data_dir: &Path, t: &Template) -> Result<()> {
    let d = Db::open(db).map_err(|e| integrity(db, e.to_string()))?;
    let tpl_path: PathBuf = data_dir.join("member/snap/db");
    let tpl = Db::open(&tpl_path).map_err(|e| integrity(&tpl_path, e.to_string()))?;
    let meta = entries(&d, META_BUCKET)?;
    let get = |k: &[u8]| {
        meta.iter()
            .find(|(key, _)| key == k)
            .map(|(_, v)| v.clone())
    };
    let mut wrong = Vec::new();
    if get(CONSISTENT_INDEX) != Some(t.index.to_be_bytes().to_vec()) {
        wrong.push("meta/consistent_index");
    }
    if t.members.is_some() {
        if entries(&d, MEMBERS)? != entries(&tpl, MEMBERS)? {
            wrong.push("members");
        }
        if !entries(&d, MEMBERS_REMOVED)?.is_empty() {
            wrong.push("members_removed");
        }
        if get(TERM).is_some_and(|v| v != t.term.to_be_bytes()) {
            wrong.push("meta/term");
        }
    }
    if wrong.is_empty() {
        Ok(())
    } else {
        Err(integrity(
            db,
            format!(
                "the membership written into the restored db did not read back ({})",
                wrong.join(", ")
            ),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_db_without_a_consistent_index_is_left_untouched() {
        let dir = tempfile::tempdir().expect("tempdir");
        let snap = dir.path().join("member/snap");
        std::fs::create_dir_all(&snap).expect("mkdir");
        std::fs::write(snap.join("db"), bbolt::empty_file(4096, &[META_BUCKET])).expect("write");
        std::fs::write(snap.join("0000000000000001-0000000000000001.snap"), b"x").expect("write");
        let db = dir.path().join("restored.db");
        let before = bbolt::empty_file(4096, &[META_BUCKET, MEMBERS]);
        std::fs::write(&db, &before).expect("write");
        let got = transplant(dir.path(), &db).expect("transplant");
        assert!(
            matches!(got, Transplant::Unpatchable(ref why) if why.contains("consistent_index")),
            "{got:?}"
        );
        assert_eq!(std::fs::read(&db).expect("read"), before, "nothing written");
    }

    #[test]
    fn two_snap_files_are_an_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        let snap = dir.path().join("member/snap");
        std::fs::create_dir_all(&snap).expect("mkdir");
        for name in [
            "0000000000000001-0000000000000001.snap",
            "0000000000000001-0000000000000002.snap",
        ] {
            std::fs::write(snap.join(name), b"x").expect("write");
        }
        let err = transplant(dir.path(), &dir.path().join("none")).expect_err("two .snap files");
        assert!(err.to_string().contains("2 .snap files"), "{err}");
    }
}
