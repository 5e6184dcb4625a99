//! `--bump-revision N --mark-compacted` for etcd tools that lack them (etcdctl 3.4.23, etcdutl
//! 3.5.1), and for restores that replay deltas after the base (the tools bump only the base).
//!
//! Why it is safe: etcd 3.4 and 3.5 restore their store revision as `max(last revision in the
//! key bucket, meta/finishedCompactRev)` and treat everything at or below `finishedCompactRev`
//! as compacted; a `scheduledCompactRev` equal to it means no compaction to resume. So after the
//! restore compacted the temporary etcd at its last revision R (which writes both marks, as 17
//! bytes each), overwriting both values in place with `R + N` gives a store whose next write gets
//! `R + N + 1` and where every read or watch at an older revision gets "required revision has
//! been compacted" (so Kubernetes clients relist): what `etcdutl --bump-revision N
//! --mark-compacted` gives. Same length, so the B+tree does not change; bbolt data pages carry
//! no checksum. Checked before (both marks present, equal to R) and after (re-read, structure
//! sound), and by the restore tests booting etcd 3.4.23 and 3.5.1 on the result.

use crate::error::{Error, Result};
use crate::ondisk::bbolt::Db;
use crate::ondisk::schema::{self, Revision};
use std::os::unix::fs::FileExt;
use std::path::Path;

const FINISHED: &[u8] = b"finishedCompactRev";
const SCHEDULED: &[u8] = b"scheduledCompactRev";

fn integrity(db: &Path, reason: String) -> Error {
    Error::integrity(db.display().to_string(), reason)
}

fn open(db: &Path) -> Result<Db> {
    Db::open(db).map_err(|e| integrity(db, e.to_string()))
}

/// Moves both compaction marks of the (stopped) etcd db at `db` from its revision R to
/// `R + bump`. Returns the new revision.
pub(crate) fn bump_and_mark_compacted(db: &Path, bump: i64) -> Result<i64> {
    if bump <= 0 {
        return Err(Error::config("--bump-revision must be greater than 0"));
    }
    let d = open(db)?;
    let st = schema::status(&d).map_err(|e| integrity(db, e.to_string()))?;
    let rev = st.effective_revision();
    if st.finished_compact != Some(rev) || st.scheduled_compact != Some(rev) {
        return Err(integrity(
            db,
            format!(
                "cannot bump: the compaction marks (finished {:?}, scheduled {:?}) are not at the store revision {rev}",
                st.finished_compact, st.scheduled_compact
            ),
        ));
    }
    let new = rev
        .checked_add(bump)
        .ok_or_else(|| Error::config(format!("--bump-revision {bump} overflows revision {rev}")))?;
    let mut spots = Vec::new();
    for key in [FINISHED, SCHEDULED] {
        let spot = d
            .locate(schema::META_BUCKET, key)
            .map_err(|e| integrity(db, e.to_string()))?
            .filter(|(_, len)| *len == 17)
            .ok_or_else(|| {
                integrity(
                    db,
                    format!(
                        "meta/{} not found as a 17-byte value",
                        String::from_utf8_lossy(key)
                    ),
                )
            })?;
        spots.push(spot);
    }
    drop(d);
    let bytes = schema::revision_key(Revision { main: new, sub: 0 });
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(db)
        .map_err(|e| Error::io(db, "open for the revision bump", e))?;
    for (off, _) in spots {
        f.write_all_at(&bytes, off)
            .map_err(|e| Error::io(db, "write the compaction mark", e))?;
    }
    f.sync_all()
        .map_err(|e| Error::io(db, "sync the revision bump", e))?;
    drop(f);
    // read it back: both marks moved, structure untouched
    let d = open(db)?;
    let problems = d.check();
    let st = schema::status(&d).map_err(|e| integrity(db, e.to_string()))?;
    if !problems.is_empty()
        || st.finished_compact != Some(new)
        || st.scheduled_compact != Some(new)
        || st.effective_revision() != new
    {
        return Err(integrity(
            db,
            format!(
                "the revision bump did not read back (finished {:?}, scheduled {:?}, problems {problems:?})",
                st.finished_compact, st.scheduled_compact
            ),
        ));
    }
    Ok(new)
}
