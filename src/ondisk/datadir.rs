//! The etcd data directory around a restore: the locks that keep etcd and other etcdbr
//! processes out, the durable swap of a restored directory, the leftovers of interrupted runs,
//! and the condemned directories moved aside.
//!
//! Invariants:
//! * **One writer.** Whoever builds, judges or replaces `<data-dir>` holds an exclusive flock on
//!   `<data-dir>.etcdbr.lock` ([`WorkLock`]) for the whole run. A run that finds it free knows
//!   that every `<data-dir>.part` and restore temp dir it sees belongs to a dead process (no
//!   PID is trusted: in a container the sidecar is PID 1 after every restart).
//! * **etcd stays out.** From validation until the swap (or the member removal) is done, the
//!   initializer holds bbolt's own lock on `member/snap/db` ([`DbLock`]): an etcd started
//!   meanwhile waits for it, and right before and after each destructive step the lock is
//!   checked to be ours and no other process may have the db open (a write-lease probe, which
//!   sees other containers too); a swap that finds one is undone.
//! * **Never neither.** A restored directory is complete and durable before it becomes the
//!   data directory: every file and directory of `<data-dir>.part` is fsynced, then a marker
//!   file inside it says so (fsynced too). The swap is one atomic `renameat2(RENAME_EXCHANGE)`
//!   (two renames where the file system lacks it) followed by an fsync of the parent, so a crash
//!   at any instant leaves the old directory or the complete new one at `<data-dir>`; the next
//!   run finishes or undoes the rest ([`recover`]) from the marker alone.
//! * **A way back.** The replaced directory is moved to `<data-dir>.invalid-<unix time>`, not
//!   deleted; at most `keep` of those are kept (oldest removed first), the count logged and
//!   exported as `etcdbr_invalid_data_dirs`.

use crate::error::{Error, Result};
use std::fs::{self, File};
use std::path::{Path, PathBuf};

/// The marker inside a complete, durable restored directory (removed once it is in place).
pub const MARKER: &str = ".etcdbr-restored";

/// `<dir><suffix>`, next to `dir`.
pub fn sibling(dir: &Path, suffix: &str) -> PathBuf {
    let mut s = dir.as_os_str().to_owned();
    s.push(suffix);
    PathBuf::from(s)
}

/// Where a restore is built before it replaces the data directory.
pub fn part_dir(data_dir: &Path) -> PathBuf {
    sibling(data_dir, ".part")
}

/// Test-only hooks at the named steps of a restore: with `ETCDBR_CRASH_AT=<name>` the process
/// SIGKILLs itself there (the crash tests kill it at every named step); with
/// `ETCDBR_PAUSE_AT=<name>` it waits `ETCDBR_PAUSE_SECS` (5) seconds there (the lock tests
/// start etcd meanwhile).
pub(crate) fn crash_point(name: &str) {
    static AT: std::sync::OnceLock<(Option<String>, Option<String>)> = std::sync::OnceLock::new();
    let (crash, pause) = AT.get_or_init(|| {
        (
            std::env::var("ETCDBR_CRASH_AT").ok(),
            std::env::var("ETCDBR_PAUSE_AT").ok(),
        )
    });
    if crash.as_deref() == Some(name) {
        tracing::warn!(step = name, "ETCDBR_CRASH_AT: killing this process");
        crate::sys::kill_self();
    }
    if pause.as_deref() == Some(name) {
        let secs = std::env::var("ETCDBR_PAUSE_SECS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(5);
        tracing::warn!(step = name, secs, "ETCDBR_PAUSE_AT: pausing");
        std::thread::sleep(std::time::Duration::from_secs(secs));
    }
}

pub(crate) fn fsync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| Error::io(dir, "fsync the directory", e))
}

fn parent_of(p: &Path) -> PathBuf {
    match p.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// fsyncs every file and directory below `dir` (and `dir`), depth first, without following
/// symlinks: what a temporary etcd without fsync wrote becomes durable.
pub(crate) fn fsync_tree(dir: &Path) -> Result<()> {
    let mut stack = vec![dir.to_path_buf()];
    let mut dirs = Vec::new();
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).map_err(|e| Error::io(&d, "list", e))? {
            let e = e.map_err(|e| Error::io(&d, "list", e))?;
            let ft = e
                .file_type()
                .map_err(|err| Error::io(e.path(), "stat", err))?;
            if ft.is_dir() {
                stack.push(e.path());
            } else if ft.is_file() {
                let p = e.path();
                File::open(&p)
                    .and_then(|f| f.sync_all())
                    .map_err(|err| Error::io(&p, "fsync", err))?;
            }
        }
        dirs.push(d);
    }
    // children before parents, so that each directory entry names durable content
    for d in dirs.iter().rev() {
        fsync_dir(d)?;
    }
    Ok(())
}

/// Whether `dir` exists and holds anything at all.
pub(crate) fn holds_data(dir: &Path) -> bool {
    fs::read_dir(dir)
        .map(|mut d| d.next().is_some())
        .unwrap_or(false)
}

fn has_marker(dir: &Path) -> bool {
    dir.join(MARKER).is_file()
}

/// Marks `dir` complete and durable: its whole tree fsynced first, then the marker (with what
/// it holds, for the operator) written, fsynced, and the directory fsynced.
pub(crate) fn seal(dir: &Path, what: &str) -> Result<()> {
    use std::io::Write;
    fsync_tree(dir)?;
    let m = dir.join(MARKER);
    let mut f = File::create(&m).map_err(|e| Error::io(&m, "create the completion marker", e))?;
    f.write_all(what.as_bytes())
        .and_then(|_| f.sync_all())
        .map_err(|e| Error::io(&m, "write the completion marker", e))?;
    fsync_dir(dir)
}

fn unseal(dir: &Path) -> Result<()> {
    let m = dir.join(MARKER);
    match fs::remove_file(&m) {
        Ok(()) => fsync_dir(dir),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::io(&m, "remove the completion marker", e)),
    }
}

/// An exclusive flock on a file or directory, held until dropped.
fn try_flock(f: &File) -> std::io::Result<bool> {
    match f.try_lock() {
        Ok(()) => Ok(true),
        Err(fs::TryLockError::WouldBlock) => Ok(false),
        Err(fs::TryLockError::Error(e)) => Err(e),
    }
}

/// Whether a directory or file is held by a living process (its flock is taken).
pub(crate) fn is_held(p: &Path) -> bool {
    match File::open(p) {
        Ok(f) => !try_flock(&f).unwrap_or(true),
        Err(_) => false,
    }
}

/// Holds `<data-dir>.etcdbr.lock`: this process alone works on the data directory.
#[derive(Debug)]
pub(crate) struct WorkLock {
    _file: File,
}

impl WorkLock {
    /// Takes the lock (fails at once when another process holds it), then cleans up after
    /// interrupted runs ([`recover`]).
    pub(crate) fn acquire(data_dir: &Path) -> Result<WorkLock> {
        let path = sibling(data_dir, ".etcdbr.lock");
        let parent = parent_of(data_dir);
        fs::create_dir_all(&parent).map_err(|e| Error::io(&parent, "create", e))?;
        let f = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|e| Error::io(&path, "open the work lock", e))?;
        if !try_flock(&f).map_err(|e| Error::io(&path, "lock", e))? {
            return Err(Error::config(format!(
                "{} is locked: another etcdbrctl (initialize, restore or the sidecar's initialization) is working on {}; wait for it to finish",
                path.display(),
                data_dir.display()
            )));
        }
        let lock = WorkLock { _file: f };
        recover(data_dir)?;
        Ok(lock)
    }
}

/// bbolt's lock on `member/snap/db`, held by this process so that etcd cannot open the db.
#[derive(Debug)]
pub(crate) struct DbLock {
    db: PathBuf,
    file: Option<File>,
}

/// The error of a db that etcd (or another process) holds.
fn held_by_etcd(db: &Path, step: &str) -> Error {
    Error::config(format!(
        "{} is locked by another process: etcd is running on this data directory; stop it first ({step} was not done, nothing was changed)",
        db.display()
    ))
}

impl DbLock {
    /// Takes the lock on `<data-dir>/member/snap/db` if that file exists.
    pub(crate) fn acquire(data_dir: &Path) -> Result<DbLock> {
        let mut l = DbLock {
            db: data_dir.join("member/snap/db"),
            file: None,
        };
        l.take("validation")?;
        Ok(l)
    }

    fn take(&mut self, step: &str) -> Result<()> {
        let f = match File::open(&self.db) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(Error::io(&self.db, "open to lock", e)),
        };
        if !try_flock(&f).map_err(|e| Error::io(&self.db, "lock", e))? {
            return Err(held_by_etcd(&self.db, step));
        }
        self.file = Some(f);
        Ok(())
    }

    /// Gives the lock up so that a temporary etcd of ours can open the db.
    pub(crate) fn release(&mut self) {
        self.file = None;
    }

    /// Takes it again after [`DbLock::release`] (the db may be a new file by now), giving a
    /// temporary etcd of ours that just stopped a few seconds to let go of it.
    pub(crate) fn reacquire(&mut self, step: &str) -> Result<()> {
        self.file = None;
        let started = std::time::Instant::now();
        loop {
            match self.take(step) {
                Err(e) if started.elapsed() < std::time::Duration::from_secs(10) => {
                    tracing::debug!(error = %e, "the db is still locked; retrying");
                    std::thread::sleep(std::time::Duration::from_millis(200));
                }
                r => return r,
            }
        }
    }

    /// Right before a destructive step: the lock is still ours on the file at the db's path,
    /// and no other process has that file open.
    pub(crate) fn confirm(&mut self, step: &str) -> Result<()> {
        use std::os::unix::fs::MetadataExt;
        let Some(f) = &self.file else {
            // there was no db: one that appeared since belongs to someone else
            if self.db.exists() {
                self.take(step)?;
                return self.confirm(step);
            }
            return Ok(());
        };
        let held = f.metadata().map_err(|e| Error::io(&self.db, "stat", e))?;
        match fs::metadata(&self.db) {
            Ok(now) if now.ino() == held.ino() && now.dev() == held.dev() => {}
            Ok(_) => {
                return Err(Error::config(format!(
                    "{} was replaced by another process while this one held its lock ({step} was not done)",
                    self.db.display()
                )))
            }
            Err(e) => return Err(Error::io(&self.db, "stat", e)),
        }
        self.check_alone(step)
    }

    /// No other process has the locked db open (an etcd waiting for the lock has).
    fn check_alone(&self, step: &str) -> Result<()> {
        let Some(f) = &self.file else { return Ok(()) };
        match crate::sys::opened_elsewhere(f) {
            Some(true) => Err(Error::config(format!(
                "another process (an etcd waiting for its lock?) has {} open: stop it first ({step} was not done)",
                self.db.display()
            ))),
            Some(false) => Ok(()),
            None => {
                tracing::debug!(db = %self.db.display(), "cannot tell whether another process has the db open (file leases not permitted here)");
                Ok(())
            }
        }
    }
}

/// Moves `dir` aside as `<data-dir>.invalid-<unix time>` (a new name each time).
pub(crate) fn move_aside(dir: &Path, data_dir: &Path) -> Result<PathBuf> {
    let secs = chrono::Utc::now().timestamp();
    let mut to = sibling(data_dir, &format!(".invalid-{secs}"));
    let mut n = 1;
    while to.exists() {
        to = sibling(data_dir, &format!(".invalid-{secs}-{n}"));
        n += 1;
    }
    fs::rename(dir, &to).map_err(|e| Error::io(dir, "move aside", e))?;
    fsync_dir(&parent_of(data_dir))?;
    Ok(to)
}

/// Removes a directory tree, first renaming it to a unique name (so that its own name is free
/// at once even if an orphaned process of a dead run still writes into it).
fn remove_tree(dir: &Path) -> Result<()> {
    let trash = sibling(dir, &format!(".trash-{:016x}", rand::random::<u64>()));
    fs::rename(dir, &trash).map_err(|e| Error::io(dir, "rename for removal", e))?;
    let mut last = None;
    for _ in 0..5 {
        match fs::remove_dir_all(&trash) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => last = Some(e),
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    match last {
        Some(e) => Err(Error::io(&trash, "remove", e)),
        None => Ok(()),
    }
}

/// What [`swap_in`] did with the directory it replaced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Replaced {
    /// There was no data directory, or an empty one.
    Nothing,
    /// Moved aside to this path.
    MovedAside(PathBuf),
}

/// Puts the sealed `part` in place of `data_dir` (module doc: atomic, durable, undone when
/// another process shows up on the db), moves the old one aside and prunes those beyond
/// `keep`.
pub(crate) fn swap_in(
    part: &Path,
    data_dir: &Path,
    lock: Option<&mut DbLock>,
    keep: usize,
) -> Result<Replaced> {
    if !has_marker(part) {
        return Err(Error::Refused(format!(
            "{} is not sealed as complete: refusing to put it in place",
            part.display()
        )));
    }
    let parent = parent_of(data_dir);
    let mut lock = lock;
    if let Some(l) = lock.as_deref_mut() {
        l.confirm("replacing the data directory")?;
    }
    let old_holds_data = holds_data(data_dir);
    let replaced = if data_dir.exists() {
        // test-only: take the two-rename path of file systems without the exchange
        let exchanged = if std::env::var_os("ETCDBR_SWAP_WITHOUT_EXCHANGE").is_some() {
            Err(std::io::Error::new(
                std::io::ErrorKind::Unsupported,
                "ETCDBR_SWAP_WITHOUT_EXCHANGE",
            ))
        } else {
            crate::sys::exchange(part, data_dir)
        };
        match exchanged {
            Ok(()) => {
                fsync_dir(&parent)?;
                crash_point("swap:exchanged");
                if let Some(l) = lock {
                    if let Err(e) = l.check_alone("replacing the data directory") {
                        // an etcd reached the old db during the exchange: put it back
                        crate::sys::exchange(part, data_dir)
                            .map_err(|e| Error::io(data_dir, "undo the swap", e))?;
                        fsync_dir(&parent)?;
                        return Err(e);
                    }
                }
                // `part` holds the old directory now
                if old_holds_data {
                    let to = move_aside(part, data_dir)?;
                    Replaced::MovedAside(to)
                } else {
                    remove_tree(part)?;
                    Replaced::Nothing
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::Unsupported => {
                // two renames: a crash between them leaves the sealed `part` and no data
                // directory, which `recover` puts in place
                tracing::info!(dir = %parent.display(), "atomic exchange not supported by this file system: swapping with two renames");
                let r = if old_holds_data {
                    Replaced::MovedAside(move_aside(data_dir, data_dir)?)
                } else {
                    fs::remove_dir(data_dir)
                        .map_err(|e| Error::io(data_dir, "remove the empty data dir", e))?;
                    Replaced::Nothing
                };
                crash_point("swap:old-moved-aside");
                fs::rename(part, data_dir).map_err(|e| Error::io(part, "move into place", e))?;
                fsync_dir(&parent)?;
                r
            }
            Err(e) => return Err(Error::io(data_dir, "swap in the restored directory", e)),
        }
    } else {
        fs::rename(part, data_dir).map_err(|e| Error::io(part, "move into place", e))?;
        fsync_dir(&parent)?;
        Replaced::Nothing
    };
    crash_point("swap:in-place");
    unseal(data_dir)?;
    crash_point("swap:done");
    prune_invalid(data_dir, keep);
    Ok(replaced)
}

/// Finishes or undoes what an interrupted run left (call with the [`WorkLock`] held): a sealed
/// `.part` with no data directory is put in place; a `.part` holding the old directory after an
/// exchange is moved aside; any other `.part` is removed; a marker left in the data directory
/// is removed; `.replaced` (older etcdbr versions) is kept as a moved-aside directory.
pub(crate) fn recover(data_dir: &Path) -> Result<()> {
    let part = part_dir(data_dir);
    let parent = parent_of(data_dir);
    if part.exists() {
        if has_marker(data_dir) {
            // crashed after the exchange: `part` is the old directory
            let to = move_aside(&part, data_dir)?;
            tracing::warn!(moved_to = %to.display(), "finished an interrupted swap: the replaced data directory was moved aside");
        } else if has_marker(&part) && !data_dir.exists() {
            fs::rename(&part, data_dir).map_err(|e| Error::io(&part, "move into place", e))?;
            fsync_dir(&parent)?;
            tracing::warn!(data_dir = %data_dir.display(), "finished an interrupted swap: the complete restored directory was put in place");
        } else {
            remove_tree(&part)?;
            fsync_dir(&parent)?;
            tracing::warn!(dir = %part.display(), "removed the leftover of an interrupted restore");
        }
    }
    if has_marker(data_dir) {
        unseal(data_dir)?;
    }
    let replaced = sibling(data_dir, ".replaced");
    if replaced.exists() {
        let to = move_aside(&replaced, data_dir)?;
        tracing::warn!(moved_to = %to.display(), "kept the replaced data directory of an interrupted run as a moved-aside directory");
    }
    Ok(())
}

/// The moved-aside directories of `data_dir`, oldest first.
pub fn invalid_dirs(data_dir: &Path) -> Vec<PathBuf> {
    let parent = parent_of(data_dir);
    let Some(base) = data_dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
    else {
        return Vec::new();
    };
    let prefix = format!("{base}.invalid-");
    let mut v: Vec<(i64, String, PathBuf)> = fs::read_dir(&parent)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let n = e.file_name().to_string_lossy().into_owned();
            let rest = n.strip_prefix(&prefix)?;
            let secs = rest.split('-').next()?.parse::<i64>().ok()?;
            Some((secs, n, e.path()))
        })
        .collect();
    v.sort();
    v.into_iter().map(|(_, _, p)| p).collect()
}

/// Keeps the newest `keep` moved-aside directories; logs and exports how many remain.
pub(crate) fn prune_invalid(data_dir: &Path, keep: usize) {
    let mut dirs = invalid_dirs(data_dir);
    while dirs.len() > keep {
        let d = dirs.remove(0);
        match remove_tree(&d) {
            Ok(()) => {
                tracing::info!(dir = %d.display(), keep, "removed a moved-aside data directory beyond the bound")
            }
            Err(e) => {
                tracing::warn!(dir = %d.display(), error = %e, "cannot remove a moved-aside data directory");
                break;
            }
        }
    }
    let left = invalid_dirs(data_dir);
    crate::metrics::set_invalid_data_dirs(left.len());
    if !left.is_empty() {
        tracing::warn!(
            count = left.len(),
            bound = keep,
            dirs = ?left,
            "moved-aside data directories kept (a way back to the replaced data; remove them once not needed, --keep-invalid-data-dirs bounds them)"
        );
    }
}

/// Removes restore temp dirs (`etcdbr-restore-*`) below `temp_dir` whose writer is gone
/// (each living one holds a flock on itself).
pub(crate) fn clean_temp_dirs(temp_dir: &Path) {
    let Ok(rd) = fs::read_dir(temp_dir) else {
        return;
    };
    for e in rd.flatten() {
        let n = e.file_name().to_string_lossy().into_owned();
        if !n.starts_with("etcdbr-restore-") || !e.path().is_dir() || is_held(&e.path()) {
            continue;
        }
        match fs::remove_dir_all(e.path()) {
            Ok(()) => {
                tracing::info!(dir = %e.path().display(), "removed the temp dir of an interrupted restore")
            }
            Err(err) => {
                tracing::warn!(dir = %e.path().display(), error = %err, "cannot remove a leftover restore temp dir")
            }
        }
    }
}

/// A restore temp dir below `temp_dir`, locked by this process for as long as it lives.
pub(crate) struct TempDir {
    dir: tempfile::TempDir,
    _lock: File,
}

impl TempDir {
    pub(crate) fn new(temp_dir: &Path) -> Result<TempDir> {
        fs::create_dir_all(temp_dir)
            .map_err(|e| Error::io(temp_dir, "create the restoration temp dir", e))?;
        clean_temp_dirs(temp_dir);
        let dir = tempfile::Builder::new()
            .prefix("etcdbr-restore-")
            .tempdir_in(temp_dir)
            .map_err(|e| Error::io(temp_dir, "create a temp dir", e))?;
        let lock = File::open(dir.path()).map_err(|e| Error::io(dir.path(), "open", e))?;
        if !try_flock(&lock).map_err(|e| Error::io(dir.path(), "lock", e))? {
            return Err(Error::Refused(format!(
                "{} is locked by another process",
                dir.path().display()
            )));
        }
        Ok(TempDir { dir, _lock: lock })
    }

    pub(crate) fn path(&self) -> &Path {
        self.dir.path()
    }
}
