//! Would etcd start on this data directory, and serve its data? The answer etcd itself gives,
//! computed from the files without starting it. The start-up code involved is the same in etcd
//! 3.4.23 and 3.5.x (`etcdserver.NewServer`, `wal`, `snap`, bbolt 1.3.6); each step below is
//! one of theirs, and `tests/it/damage.rs` checks the verdicts against real etcd on a matrix of
//! damaged directories.
//!
//! 1. `member/wal` must hold files (`wal.Exist`); without a WAL etcd would start the member as
//!    a new one, with an empty raft log over the old db, and silently drop writes whose raft
//!    index is below the db's consistent index.
//! 2. Every `.wal` file is decoded in order (`ValidSnapshotEntries`): a CRC mismatch, an
//!    undecodable record or an oversized length stops etcd; a torn record (the file ends inside
//!    it, or it fails its CRC and holds an all-zero 512-byte sector) ends the read there.
//! 3. The `.snap` to boot from is the newest readable one whose (index, term) a committed WAL
//!    snapshot record names (`LoadNewestAvailable`); damaged ones are skipped (etcd renames them
//!    `.broken`); none at all means replaying the WAL from index 0.
//! 4. bbolt opens the db: an empty file becomes a new empty db, a missing one is created; else
//!    a valid meta page is needed and every page reachable from the root must be in bounds,
//!    referenced once, a branch or a leaf (the free-page scan etcd's Linux build runs at every
//!    open), and inside the file (etcd dies of SIGBUS otherwise); the mvcc store then decodes
//!    every revision and lease.
//! 5. A db whose consistent index is behind the `.snap` needs `<index>.snap.db`, else etcd
//!    panics ("failed to find database snapshot file").
//! 6. The WAL is read again from the segment holding the snapshot's index (`wal.Open`,
//!    `ReadAll`): segment sequence numbers without holes, the snapshot record present with the
//!    same term, entries contiguous, metadata records equal, CRC records matching the chain. A
//!    torn record is repaired once (`wal.Repair`: the last file truncated at the end of its last
//!    good record); anywhere else, or a second time, etcd gives up.
//! 7. raft requires the HardState's commit index within the log it rebuilt.
//!
//! Problems etcd does not see at start (a key out of order, a page header naming another page
//! id, a persisted freelist's inconsistencies) are reported as `latent`: etcd would start and
//! may serve wrong data or corrupt the file later. Validation in `full` mode condemns them.

use crate::ondisk::bbolt::{Db, Problem, BUCKET_START};
use crate::ondisk::schema;
use crate::ondisk::wal::{self, DecodeError, Decoder, RawRecord};
use std::path::{Path, PathBuf};

/// What etcd will do when it starts on the directory (it starts).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct BootPlan {
    /// The `.snap` it boots from, as (index, term).
    pub(crate) snapshot: Option<(u64, u64)>,
    /// `.snap` files it skips (damaged ones it renames `.broken`), with the reason.
    pub(crate) skipped_snaps: Vec<String>,
    /// A torn tail etcd truncates (`wal.Repair`): the file, the offset it keeps, why.
    pub(crate) repair: Option<(PathBuf, u64, String)>,
    /// The last entry index of the log.
    pub(crate) last_index: u64,
    pub(crate) db: DbState,
    /// Problems etcd does not notice at start (see the module doc).
    pub(crate) latent: Vec<String>,
    /// What an operator should know but that is no reason to replace the directory.
    pub(crate) warnings: Vec<String>,
    /// Who this directory is: the WAL's metadata record (`etcdserverpb.Metadata`).
    pub(crate) identity: Option<Identity>,
}

/// The member and cluster a data directory belongs to (etcd reads them from the WAL at start).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Identity {
    pub(crate) member_id: u64,
    pub(crate) cluster_id: u64,
}

#[derive(Clone, PartialEq, prost::Message)]
struct WalMetadata {
    #[prost(uint64, optional, tag = "1")]
    node_id: Option<u64>,
    #[prost(uint64, optional, tag = "2")]
    cluster_id: Option<u64>,
}

impl Identity {
    fn decode(data: &[u8]) -> Option<Identity> {
        use prost::Message;
        let m = WalMetadata::decode(data).ok()?;
        Some(Identity {
            member_id: m.node_id?,
            cluster_id: m.cluster_id.unwrap_or(0),
        })
    }
}

/// The db as etcd finds it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) enum DbState {
    /// `member/snap/db` does not exist: etcd creates an empty one.
    #[default]
    Missing,
    /// A file of 0 bytes: bbolt initialises it as an empty db.
    Empty,
    /// A db with its revision marks.
    Present(schema::Revisions),
}

impl DbState {
    /// The raft index the db has applied (0 for a new db).
    pub(crate) fn consistent_index(&self) -> u64 {
        match self {
            DbState::Present(r) => r.consistent_index.unwrap_or(0),
            _ => 0,
        }
    }

    /// The store revision etcd starts at from the db alone (1 for a new db).
    pub(crate) fn revision(&self) -> i64 {
        match self {
            DbState::Present(r) => r.effective(),
            _ => 1,
        }
    }
}

/// Why etcd cannot start on the directory, or would serve wrong data.
pub(crate) type Refusal = String;

/// Runs the checks of the module doc on `member` (the `member` directory of a data dir).
pub(crate) fn check(member: &Path) -> Result<BootPlan, Refusal> {
    let wal_dir = member.join("wal");
    let has_wal = std::fs::read_dir(&wal_dir)
        .map(|mut d| d.next().is_some())
        .unwrap_or(false);
    if !has_wal {
        return Err(format!(
            "{} is missing or empty: etcd would start this member with a new, empty raft log over the old db, and drop every write whose raft index is not above the db's consistent index",
            wal_dir.display()
        ));
    }
    let names = wal_names(&wal_dir)?;
    let files: Vec<PathBuf> = names.iter().map(|(_, _, p)| p.clone()).collect();
    let wal_snaps = valid_snapshot_entries(&files)?;
    let mut plan = BootPlan::default();
    let snap_dir = member.join("snap");
    plan.snapshot = newest_available(&snap_dir, &wal_snaps, &mut plan.skipped_snaps)?;
    plan.db = open_db(&snap_dir.join("db"), &mut plan.latent)?;
    if let Some((index, _)) = plan.snapshot {
        let ci = plan.db.consistent_index();
        if index > ci {
            let swap = snap_dir.join(format!("{index:016x}.snap.db"));
            if !swap.is_file() {
                return Err(format!(
                    "the db has applied raft index {ci}, behind the raft snapshot {} at index {index}, and {} does not exist: etcd panics (\"failed to find database snapshot file\")",
                    snap_dir.display(),
                    swap.display()
                ));
            }
            // etcd renames that file over the db and goes on with it
            plan.db = open_db(&swap, &mut plan.latent)?;
        }
    }
    let start = plan.snapshot.unwrap_or((0, 0));
    let read = read_all_repaired(&names, start)?;
    plan.repair = read.repair;
    plan.identity = read.metadata.as_deref().and_then(Identity::decode);
    plan.last_index = start.0 + read.entries;
    if read.has_state && (read.commit < start.0 || read.commit > plan.last_index) {
        return Err(format!(
            "the WAL's last HardState commits index {}, outside the log it holds ({}..{}): raft panics (\"state.commit is out of range\")",
            read.commit, start.0, plan.last_index
        ));
    }
    let ci = plan.db.consistent_index();
    if ci > plan.last_index + 1 {
        // etcd starts and serves the db, but skips applying raft entries up to its index: the
        // first writes time out. The db holds the newest data, so this is no reason to replace it.
        plan.warnings.push(format!(
            "the db has applied raft index {ci} but the WAL ends at index {}: etcd will not apply (and time out) the first {} writes after it starts",
            plan.last_index,
            ci - plan.last_index - 1
        ));
    }
    Ok(plan)
}

/// `readWALNames`: the files named `<16 hex seq>-<16 hex index>.wal`, in name order.
/// Who a data directory is (`member` dir), from the metadata record at the head of its first WAL
/// segment; `None` when there is no readable one.
pub(crate) fn identity(member: &Path) -> Option<Identity> {
    let names = wal_names(&member.join("wal")).ok()?;
    let (_, _, first) = names.first()?;
    let mut d = Decoder::new(vec![first.clone()]);
    for _ in 0..8 {
        let rec = d.read_record().ok()??;
        if rec.kind == wal::METADATA {
            return Identity::decode(&rec.data);
        }
    }
    None
}

fn wal_names(dir: &Path) -> Result<Vec<(u64, u64, PathBuf)>, Refusal> {
    let files = wal::files_with(dir, "wal").map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    for p in files {
        if let Some((seq, index)) = p
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(parse_wal_name)
        {
            out.push((seq, index, p));
        }
    }
    if out.is_empty() {
        return Err(format!(
            "{} holds no <seq>-<index>.wal file: etcd stops (\"wal: file not found\")",
            dir.display()
        ));
    }
    Ok(out)
}

fn parse_wal_name(n: &str) -> Option<(u64, u64)> {
    let stem = n.strip_suffix(".wal")?;
    let (a, b) = stem.split_once('-')?;
    if a.len() != 16 || b.len() != 16 {
        return None;
    }
    Some((
        u64::from_str_radix(a, 16).ok()?,
        u64::from_str_radix(b, 16).ok()?,
    ))
}

fn describe(files: &[PathBuf], e: &DecodeError) -> String {
    match e {
        DecodeError::Torn {
            file,
            offset,
            message,
        }
        | DecodeError::Fatal {
            file,
            offset,
            message,
        } => format!(
            "{} after byte {offset}: {message}",
            files
                .get(*file)
                .map(|p| p.display().to_string())
                .unwrap_or_default()
        ),
    }
}

fn decode<T: prost::Message + Default>(
    rec: &RawRecord,
    what: &str,
    files: &[PathBuf],
    d: &Decoder,
) -> Result<T, Refusal> {
    T::decode(rec.data.as_slice()).map_err(|e| {
        format!(
            "{} after byte {}: undecodable {what}: {e}",
            files[d.file_index()].display(),
            d.last_valid_off
        )
    })
}

/// `wal.ValidSnapshotEntries`: the snapshot records of every WAL file, those at or below the
/// last HardState's commit index.
fn valid_snapshot_entries(files: &[PathBuf]) -> Result<Vec<(u64, u64)>, Refusal> {
    let mut d = Decoder::new(files.to_vec());
    let (mut snaps, mut commit) = (Vec::new(), 0u64);
    loop {
        match d.read_record() {
            Ok(Some(rec)) => match rec.kind {
                wal::SNAPSHOT => {
                    let s: wal::WalSnapshot = decode(&rec, "snapshot record", files, &d)?;
                    snaps.push((s.index.unwrap_or(0), s.term.unwrap_or(0)));
                }
                wal::STATE => {
                    let h: wal::HardState = decode(&rec, "hard state", files, &d)?;
                    commit = h.commit.unwrap_or(0);
                }
                wal::CRC => {
                    if d.crc != 0 && rec.crc != d.crc {
                        return Err(crc_mismatch(files, &d, &rec));
                    }
                    d.crc = rec.crc;
                }
                _ => {}
            },
            Ok(None) | Err(DecodeError::Torn { .. }) => break,
            Err(e @ DecodeError::Fatal { .. }) => {
                return Err(format!(
                    "{}: etcd stops reading its WAL",
                    describe(files, &e)
                ))
            }
        }
    }
    snaps.retain(|(i, _)| *i <= commit);
    Ok(snaps)
}

fn crc_mismatch(files: &[PathBuf], d: &Decoder, rec: &RawRecord) -> String {
    format!(
        "{} after byte {}: its CRC record says {:#010x} but the chain so far is {:#010x} (a segment is missing or foreign): etcd stops (\"wal: crc mismatch\")",
        files[d.file_index()].display(),
        d.last_valid_off,
        rec.crc,
        d.crc
    )
}

/// `LoadNewestAvailable`: the newest `.snap` (by name) that reads back and that a WAL snapshot
/// record names.
fn newest_available(
    snap_dir: &Path,
    wal_snaps: &[(u64, u64)],
    skipped: &mut Vec<String>,
) -> Result<Option<(u64, u64)>, Refusal> {
    let mut files = match wal::files_with(snap_dir, "snap") {
        Ok(f) => f,
        Err(_) if !snap_dir.exists() => Vec::new(),
        Err(e) => return Err(e.to_string()),
    };
    files.reverse();
    for f in files {
        match wal::read_snap(&f) {
            Ok(it) if wal_snaps.contains(&it) => return Ok(Some(it)),
            Ok((i, t)) => skipped.push(format!(
                "{}: index {i}, term {t} is not named by a committed WAL snapshot record",
                f.display()
            )),
            Err(e) => skipped.push(format!("{e} (etcd renames it .broken)")),
        }
    }
    Ok(None)
}

/// What `ReadAll` read.
struct ReadAll {
    has_state: bool,
    commit: u64,
    /// Entries after the snapshot index.
    entries: u64,
    repair: Option<(PathBuf, u64, String)>,
    metadata: Option<Vec<u8>>,
}

/// `wal.Open` at `start` and `ReadAll`, with etcd's one repair of a torn last file.
fn read_all_repaired(names: &[(u64, u64, PathBuf)], start: (u64, u64)) -> Result<ReadAll, Refusal> {
    // searchIndex: the last file whose first index is at or below the snapshot's
    let Some(first) = names.iter().rposition(|(_, index, _)| *index <= start.0) else {
        return Err(format!(
            "no WAL file holds raft index {} (the oldest starts at {}): etcd stops (\"wal: file not found\")",
            start.0, names[0].1
        ));
    };
    // isValidSeq, quirk included: a sequence number 0 is not compared with the next one
    let mut last_seq = 0u64;
    for (seq, _, p) in &names[first..] {
        if last_seq != 0 && last_seq.wrapping_add(1) != *seq {
            return Err(format!(
                "{}: sequence {seq} does not follow {last_seq}, a WAL segment is missing: etcd stops (\"wal: file not found\")",
                p.display()
            ));
        }
        last_seq = *seq;
    }
    let files: Vec<PathBuf> = names[first..].iter().map(|(_, _, p)| p.clone()).collect();
    let last = files.len() - 1;
    let mut limit = None;
    let mut repair = None;
    loop {
        match read_all(&files, start, limit) {
            Ok(mut r) => {
                r.repair = repair;
                return Ok(r);
            }
            Err(Stop::Torn(e)) if repair.is_none() => {
                // wal.Repair: decode the last file alone and truncate it at the end of its last
                // good record; a problem elsewhere leaves it as it is and fails again
                let Some(keep) = repair_offset(&files[last])? else {
                    return Err(format!(
                        "{}: etcd cannot repair this (it only truncates a torn last file)",
                        describe(&files, &e)
                    ));
                };
                repair = Some((files[last].clone(), keep, describe(&files, &e)));
                limit = Some(keep);
            }
            Err(Stop::Torn(e)) => {
                return Err(format!(
                    "{}: still torn after etcd's repair: etcd stops",
                    describe(&files, &e)
                ))
            }
            Err(Stop::Refused(m)) => return Err(m),
        }
    }
}

enum Stop {
    Torn(DecodeError),
    Refused(Refusal),
}

fn read_all(files: &[PathBuf], start: (u64, u64), limit: Option<u64>) -> Result<ReadAll, Stop> {
    let mut d = Decoder::new(files.to_vec());
    if let Some(l) = limit {
        d.limit(files.len() - 1, l);
    }
    let refuse = |m: String| Stop::Refused(format!("{m}: etcd stops (\"failed to read WAL\")"));
    let mut r = ReadAll {
        has_state: false,
        commit: 0,
        entries: 0,
        repair: None,
        metadata: None,
    };
    let (mut matched, mut metadata): (bool, Option<Vec<u8>>) = (false, None);
    loop {
        let rec = match d.read_record() {
            Ok(Some(rec)) => rec,
            Ok(None) => break,
            Err(e @ DecodeError::Torn { .. }) => return Err(Stop::Torn(e)),
            Err(e) => return Err(refuse(describe(files, &e))),
        };
        let at = || {
            format!(
                "{} after byte {}",
                files[d.file_index()].display(),
                d.last_valid_off
            )
        };
        match rec.kind {
            wal::ENTRY => {
                let e: wal::Entry = decode(&rec, "entry", files, &d).map_err(Stop::Refused)?;
                let index = e.index.unwrap_or(0);
                if index > start.0 {
                    let up = index - start.0 - 1;
                    if up > r.entries {
                        return Err(refuse(format!(
                            "{}: entry {index} does not follow entry {}",
                            at(),
                            start.0 + r.entries
                        )));
                    }
                    // a later entry overwrites uncommitted ones from the same index on
                    r.entries = up + 1;
                }
            }
            wal::STATE => {
                let h: wal::HardState =
                    decode(&rec, "hard state", files, &d).map_err(Stop::Refused)?;
                r.commit = h.commit.unwrap_or(0);
                r.has_state = h.term.unwrap_or(0) != 0
                    || h.vote.unwrap_or(0) != 0
                    || h.commit.unwrap_or(0) != 0;
            }
            wal::METADATA => {
                if metadata.as_ref().is_some_and(|m| *m != rec.data) {
                    return Err(refuse(format!("{}: conflicting metadata records", at())));
                }
                metadata = Some(rec.data);
            }
            wal::CRC => {
                if d.crc != 0 && rec.crc != d.crc {
                    return Err(Stop::Refused(crc_mismatch(files, &d, &rec)));
                }
                d.crc = rec.crc;
            }
            wal::SNAPSHOT => {
                let s: wal::WalSnapshot =
                    decode(&rec, "snapshot record", files, &d).map_err(Stop::Refused)?;
                if s.index.unwrap_or(0) == start.0 {
                    if s.term.unwrap_or(0) != start.1 {
                        return Err(refuse(format!(
                            "{}: the snapshot record at index {} has term {}, the .snap term {}",
                            at(),
                            start.0,
                            s.term.unwrap_or(0),
                            start.1
                        )));
                    }
                    matched = true;
                }
            }
            other => return Err(refuse(format!("{}: unknown record type {other}", at()))),
        }
    }
    if !matched {
        return Err(refuse(format!(
            "no WAL snapshot record for index {} term {} (\"wal: snapshot not found\")",
            start.0, start.1
        )));
    }
    r.metadata = metadata;
    Ok(r)
}

/// `wal.Repair` on the last file: `Some(offset)` to truncate it at (the end of its last good
/// record; the file length when it decodes to its end), `None` when etcd's repair fails.
fn repair_offset(file: &Path) -> Result<Option<u64>, Refusal> {
    let mut d = Decoder::new(vec![file.to_path_buf()]);
    loop {
        let before = d.last_valid_off;
        match d.read_record() {
            Ok(Some(rec)) => {
                if rec.kind == wal::CRC {
                    if d.crc != 0 && rec.crc != d.crc {
                        return Ok(None);
                    }
                    d.crc = rec.crc;
                }
            }
            Ok(None) => {
                let len = std::fs::metadata(file)
                    .map_err(|e| format!("{}: cannot stat: {e}", file.display()))?
                    .len();
                return Ok(Some(len));
            }
            Err(DecodeError::Torn { .. }) => return Ok(Some(before)),
            Err(DecodeError::Fatal { .. }) => return Ok(None),
        }
    }
}

/// bbolt's open and the mvcc store's restore on `path`; fatal problems refuse, latent ones are
/// added to `latent`.
fn open_db(path: &Path, latent: &mut Vec<String>) -> Result<DbState, Refusal> {
    let len = match std::fs::metadata(path) {
        Ok(m) => m.len(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(DbState::Missing),
        Err(e) => return Err(format!("{}: cannot stat: {e}", path.display())),
    };
    if len == 0 {
        return Ok(DbState::Empty);
    }
    if len < 4096 {
        return Err(format!(
            "{}: {len} bytes, less than a page: bbolt cannot open it (\"invalid database\")",
            path.display()
        ));
    }
    let db = Db::open_short(path).map_err(|e| format!("{e}: bbolt cannot open it"))?;
    let ps = u64::from(db.meta().page_size);
    if len < 2 * ps {
        return Err(format!(
            "{}: {len} bytes, less than two pages of {ps}: bbolt cannot open it (\"file size too small\")",
            path.display()
        ));
    }
    let mut revs = schema::Revisions::default();
    let mut bucket: Vec<u8> = Vec::new();
    let problems = db.check_with(&mut |name, flags, k, v| {
        if flags == BUCKET_START {
            bucket = name.to_vec();
            return Ok(());
        }
        mvcc_entry(&bucket, k, v, &mut revs)
    });
    let (fatal, soft): (Vec<Problem>, Vec<Problem>) = problems.into_iter().partition(|p| !p.latent);
    latent.extend(soft.iter().map(|p| format!("{}: {p}", path.display())));
    if let Some(p) = fatal.first() {
        return Err(format!(
            "{}: {} problem(s) etcd cannot get past (it panics or dies reading the file), first: {p}",
            path.display(),
            fatal.len()
        ));
    }
    Ok(DbState::Present(revs))
}

/// What the mvcc store and the lessor decode when etcd starts (each failure is a panic there).
fn mvcc_entry(
    bucket: &[u8],
    k: &[u8],
    v: &[u8],
    revs: &mut schema::Revisions,
) -> Result<(), Problem> {
    let fail = |m: String| Err(crate::ondisk::bbolt::problem(None, m));
    match bucket {
        schema::KEY_BUCKET => {
            if k.len() < 17 {
                return fail(format!("revision key {k:02x?} is shorter than 17 bytes"));
            }
            schema::decode_kv(v).map_err(|m| crate::ondisk::bbolt::problem(None, m))?;
            revs.last = i64::from_be_bytes(k[0..8].try_into().unwrap_or_default());
        }
        schema::LEASE_BUCKET => {
            <schema::Lease as prost::Message>::decode(v)
                .map_err(|e| crate::ondisk::bbolt::problem(None, format!("lease {k:02x?}: {e}")))?;
        }
        schema::META_BUCKET => match k {
            b"consistent_index" => {
                if v.len() < 8 {
                    return fail(format!("consistent_index of {} bytes", v.len()));
                }
                revs.consistent_index = v[..8].try_into().ok().map(u64::from_be_bytes);
            }
            b"finishedCompactRev" | b"scheduledCompactRev" => {
                if v.len() < 17 {
                    return fail(format!(
                        "{} of {} bytes",
                        String::from_utf8_lossy(k),
                        v.len()
                    ));
                }
                let r = schema::meta_revision(v);
                if k == b"finishedCompactRev" {
                    revs.finished_compact = r;
                } else {
                    revs.scheduled_compact = r;
                }
            }
            _ => {}
        },
        _ => {}
    }
    Ok(())
}
