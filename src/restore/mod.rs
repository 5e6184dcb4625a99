//! Restore: the latest snapshot set (or the one holding `--to-revision`) into an etcd data dir.
//!
//! Data flows store -> codec -> restore -> data dir: the full snapshot is streamed, decompressed
//! and its sha256 trailer checked into a temporary file, which etcd's own restore tool
//! (`etcdutl snapshot restore`, or `etcdctl snapshot restore` for 3.4) turns into
//! `<data-dir>.part`; the deltas are fetched in parallel (`--max-fetchers`, in order, so memory is
//! bounded by that many deltas), checked, and replayed by [`crate::restore::replay`] through a temporary
//! etcd on that directory. Only a complete, verified `.part` is renamed to the data dir, which
//! must not hold etcd data: the target is never touched by a failed restore.

pub mod membership;
pub mod replay;
pub mod revbump;

use crate::error::{Error, Result};
use crate::format::codec::Codec;
use crate::format::delta;
use crate::format::layout::{Kind, Snapshot, SnapshotSet};
use crate::format::streamio::ChannelReader;
use crate::ondisk::datadir::{self, DbLock, WorkLock};
use crate::restore::replay::{Method, Replayer, TempEtcd, TempEtcdConfig};
use crate::store::{SnapStore, StoreConfig};
use bytes::Bytes;
use futures::StreamExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

#[derive(Debug, Clone)]
pub struct RestoreConfig {
    pub store: StoreConfig,
    pub data_dir: PathBuf,
    pub name: String,
    pub initial_cluster: String,
    pub initial_cluster_token: String,
    pub initial_advertise_peer_urls: Vec<String>,
    pub skip_hash_check: bool,
    pub max_fetchers: usize,
    /// Where the full snapshot is decompressed before etcd's tool restores it.
    pub temp_dir: PathBuf,
    /// `etcdutl` or `etcdctl`; `None`: `etcdutl` from PATH, else `etcdctl`.
    pub restore_tool: Option<PathBuf>,
    /// The `etcd` binary for the replay; `None`: from PATH.
    pub etcd_binary: Option<PathBuf>,
    pub quota_bytes: u64,
    pub max_txn_ops: u32,
    pub max_request_bytes: u64,
    /// TTL of leases first seen in deltas that do not record one (etcdbrctl's).
    pub default_lease_ttl: i64,
    /// What to restore.
    pub target: Target,
    /// `--bump-revision` (0: none) and `--mark-compacted`.
    pub bump_revision: i64,
    pub mark_compacted: bool,
    /// How the deltas reach the temporary etcd.
    pub replay_method: Method,
    /// A gap in the revisions ends the restore at the revision before it instead of failing.
    pub stop_at_gap: bool,
    /// A delta larger than this decompressed is refused as damaged (`--max-delta-bytes`).
    pub max_delta_bytes: u64,
    /// Restore below the store's newest revision without a bump ([`rewind_guard`]).
    pub allow_rewind: bool,
}

/// How `--bump-revision` is carried out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BumpPlan {
    None,
    /// By etcd's restore tool (it supports the flags and no delta follows the base).
    Tool,
    /// By moving the compaction marks after the replay ([`crate::restore::revbump`]).
    Patch,
}

/// Whether etcd's restore tool knows `--bump-revision` (etcdutl 3.5.10+, etcdctl 3.4.27+).
fn tool_supports_bump(tool: &Path) -> bool {
    std::process::Command::new(tool)
        .env("ETCDCTL_API", "3")
        .args(["snapshot", "restore", "--help"])
        .output()
        .map(|o| {
            let text = [o.stdout, o.stderr].concat();
            String::from_utf8_lossy(&text).contains("bump-revision")
        })
        .unwrap_or(false)
}

fn bump_plan(cfg: &RestoreConfig, tool: &Path, replay_needed: bool) -> Result<BumpPlan> {
    if cfg.bump_revision == 0 {
        return Ok(BumpPlan::None);
    }
    if !replay_needed && tool_supports_bump(tool) {
        return Ok(BumpPlan::Tool);
    }
    if cfg.mark_compacted {
        return Ok(BumpPlan::Patch);
    }
    Err(Error::config(format!(
        "--bump-revision without --mark-compacted needs a restore tool that supports it (etcdutl >= 3.5.10, etcdctl >= 3.4.27) and no deltas after the full; {} {}. Add --mark-compacted (what Kubernetes needs anyway).",
        tool.display(),
        if replay_needed {
            "would restore only the full, and deltas follow it"
        } else {
            "does not support it"
        }
    )))
}

/// A restore that ends at `reached`, below the store's `newest` revision, rewinds history: an
/// etcd started on it reuses revisions the store already holds for other data, so that backups
/// taken afterwards on the same prefix sort before the abandoned later ones, which restores,
/// validation and garbage collection would then prefer. Refused unless the revision is bumped
/// past `newest` and marked compacted (the new history then sorts after the abandoned one, and
/// the sidecar's catch-up from the store's revision falls back to a new full snapshot), or the
/// operator says the result will not be backed up to this prefix (`--allow-rewind`).
fn rewind_guard(cfg: &RestoreConfig, store: &SnapStore, reached: i64, newest: i64) -> Result<()> {
    let bumped = reached + cfg.bump_revision.max(0);
    if reached >= newest || cfg.allow_rewind || (bumped > newest && cfg.mark_compacted) {
        return Ok(());
    }
    Err(Error::config(format!(
        "this restore ends at revision {reached}, but {} holds backups up to revision {newest}: \
         an etcd started on it would reuse revisions {}..{newest} for other data, and backups \
         it then takes on this prefix would sort before the abandoned ones (restores, \
         validation and garbage collection would prefer those). To put it in service on this \
         store prefix, add --bump-revision {} --mark-compacted (or more; Kubernetes needs it \
         anyway); to restore for inspection only, add --allow-rewind",
        store.describe(),
        reached + 1,
        (newest - reached + 1).max(1_000_000_000)
    )))
}

/// The point to restore.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// The latest snapshot set.
    Latest,
    /// The state at this revision (`--to-revision`).
    Revision(i64),
    /// The state at this time (`--to-time`): the newest full taken at or before it, and every
    /// event received at or before it.
    Time(chrono::DateTime<chrono::Utc>),
    /// Exactly up to this snapshot (`--snapshot <name>`): a full alone, or a delta with its full
    /// and the deltas before it.
    Snapshot(String),
}

#[derive(Debug, Clone)]
pub struct RestoreReport {
    pub full: Snapshot,
    pub deltas_applied: usize,
    pub revisions_replayed: u64,
    pub revision: i64,
    pub elapsed: Duration,
    pub replay_elapsed: Duration,
}

fn find_on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// The snapshots to restore for `target`, and the revision to stop at (`None`: as far as the
/// deltas go, for [`Target::Latest`] and [`Target::Time`]).
pub fn select(list: &[Snapshot], target: &Target) -> Result<(SnapshotSet, Option<i64>)> {
    let is_full = |s: &Snapshot| s.kind == Kind::Full && !s.is_chunk;
    match target {
        Target::Latest => {
            let set = crate::format::layout::latest_set(list);
            if set.full.is_none() {
                return Err(Error::Other(
                    "no base snapshot found: the store holds no full snapshot to restore from"
                        .into(),
                ));
            }
            Ok((set, None))
        }
        Target::Snapshot(name) => {
            let Some(s) = list
                .iter()
                .find(|s| s.snap_name == *name || s.name_without_final() == name)
            else {
                return Err(Error::Other(format!(
                    "no snapshot named {name:?} in the store (list them with /snapshot/latest or the store's listing)"
                )));
            };
            if is_full(s) {
                let set = SnapshotSet {
                    full: Some(s.clone()),
                    deltas: Vec::new(),
                };
                return Ok((set, Some(s.last_revision)));
            }
            select(list, &Target::Revision(s.last_revision))
        }
        Target::Revision(to) => {
            let to = *to;
            let Some(fi) = (0..list.len())
                .filter(|&i| is_full(&list[i]) && list[i].last_revision <= to)
                .max_by_key(|&i| (list[i].last_revision, i))
            else {
                return Err(Error::Other(format!(
                    "no full snapshot at or below revision {to}: cannot restore to it"
                )));
            };
            let (full, deltas, covered) = chain_after(list, fi, |covered, _| covered >= to);
            if covered < to {
                return Err(Error::Other(format!(
                    "the backups after {} reach revision {covered}, not {to}",
                    full.snap_name
                )));
            }
            Ok((
                SnapshotSet {
                    full: Some(full),
                    deltas,
                },
                Some(to),
            ))
        }
        Target::Time(t) => {
            let Some(fi) = (0..list.len())
                .filter(|&i| is_full(&list[i]) && list[i].created_on <= *t)
                .max_by_key(|&i| (list[i].created_on, i))
            else {
                return Err(Error::Other(format!(
                    "no full snapshot taken at or before {}: cannot restore to it",
                    t.to_rfc3339()
                )));
            };
            // deltas up to the first one written after `t` (it may still hold earlier events)
            let (full, deltas, _) =
                chain_after(list, fi, |_, last| last.is_some_and(|d| d.created_on > *t));
            Ok((
                SnapshotSet {
                    full: Some(full),
                    deltas,
                },
                None,
            ))
        }
    }
}

/// The full at `fi` and the deltas continuing it, until `done(covered, last delta taken)`.
fn chain_after(
    list: &[Snapshot],
    fi: usize,
    done: impl Fn(i64, Option<&Snapshot>) -> bool,
) -> (Snapshot, Vec<Snapshot>, i64) {
    let full = list[fi].clone();
    let mut deltas: Vec<Snapshot> = Vec::new();
    let mut covered = full.last_revision;
    for s in &list[fi + 1..] {
        if done(covered, deltas.last()) {
            break;
        }
        if s.kind == Kind::Incr && !s.is_chunk && s.last_revision > covered {
            covered = s.last_revision;
            deltas.push(s.clone());
        }
    }
    (full, deltas, covered)
}

/// Decompresses `input` (the full snapshot `key`) into a new private file at `dest`, checking
/// the sha256 trailer when asked, then cutting it off as etcd's tool does (the tool, always
/// given `--skip-hash-check`, takes the db with or without it); the db's size.
fn decompress_full(
    key: &str,
    codec: Codec,
    input: impl std::io::Read,
    dest: &Path,
    check_hash: bool,
) -> Result<u64> {
    let f = crate::sys::create_private(dest)
        .map_err(|e| Error::io(dest, "create the temporary snapshot file", e))?;
    let cut = f
        .try_clone()
        .map_err(|e| Error::io(dest, "open the snapshot file", e))?;
    let hasher = crate::format::trailer::decompress_to_file(key, codec, input, f, dest)?;
    let (total, db) = (hasher.total(), hasher.db_len());
    if check_hash {
        hasher.verify(key)?;
    }
    if db < total {
        cut.set_len(db)
            .map_err(|e| Error::io(dest, "strip the sha256 trailer", e))?;
    }
    Ok(db)
}

/// Streams a full snapshot into `dest`, decompressed, checking the sha256 trailer; the db's
/// size.
async fn download_full(
    store: &SnapStore,
    full: &Snapshot,
    dest: &Path,
    check_hash: bool,
) -> Result<u64> {
    let key = store.key_of(full);
    let codec =
        Codec::from_suffix(&full.compression_suffix).map_err(|e| Error::integrity(&key, e))?;
    let (dest2, key2) = (dest.to_path_buf(), key.clone());
    // a Local store's file is read directly: through the store's stream (small chunks over a
    // channel) it cost a third more time in system calls
    if let Some(src) = store.local_path(full).filter(|p| p.is_file()) {
        return tokio::task::spawn_blocking(move || -> Result<u64> {
            let input = std::fs::File::open(&src)
                .map_err(|e| Error::io(&src, "open the full snapshot", e))?;
            decompress_full(&key2, codec, input, &dest2, check_hash)
        })
        .await
        .map_err(|e| Error::Other(format!("snapshot decompression worker failed: {e}")))?;
    }
    let total = store.size(full).await.unwrap_or(0);
    let mut stream = store.fetch(full).await?;
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes>>(16);
    let worker = tokio::task::spawn_blocking(move || {
        decompress_full(&key2, codec, ChannelReader::new(rx), &dest2, check_hash)
    });
    let (started, mut last_log, mut got) = (Instant::now(), Instant::now(), 0u64);
    while let Some(chunk) = stream.next().await {
        let failed = chunk.is_err();
        if let Ok(c) = &chunk {
            got += c.len() as u64;
        }
        if tx.send(chunk).await.is_err() || failed {
            break;
        }
        if last_log.elapsed() >= Duration::from_secs(5) {
            progress("download", got, total, started);
            last_log = Instant::now();
        }
    }
    drop(tx);
    worker
        .await
        .map_err(|e| Error::Other(format!("snapshot download worker failed: {e}")))?
}

/// One progress line: done/total bytes, rate, ETA.
fn progress(what: &str, done: u64, total: u64, started: Instant) {
    let secs = started.elapsed().as_secs_f64().max(0.001);
    let rate = done as f64 / secs;
    let eta = if total > done && rate > 0.0 {
        format!("{:.0}s", (total - done) as f64 / rate)
    } else {
        "-".into()
    };
    tracing::info!(
        done_mib = done >> 20,
        total_mib = total >> 20,
        rate = format!("{:.1} MiB/s", rate / 1048576.0),
        eta,
        "{what} progress"
    );
}

/// Where a delta's stored bytes are read from: its file in a Local store, else a download
/// into `tmp` (streamed to disk: memory holds a chunk, whatever the object's size).
async fn fetch_delta(store: &SnapStore, d: &Snapshot, tmp: &Path) -> Result<(PathBuf, bool)> {
    if let Some(p) = store.local_path(d).filter(|p| p.is_file()) {
        return Ok((p, false));
    }
    use tokio::io::AsyncWriteExt;
    let dest = tmp.join(format!(
        "delta-{:016x}{}",
        rand::random::<u64>(),
        d.compression_suffix
    ));
    let mut f = crate::sys::create_private(&dest)
        .map(tokio::fs::File::from_std)
        .map_err(|e| Error::io(&dest, "create the delta download", e))?;
    let mut s = store.fetch(d).await?;
    while let Some(c) = s.next().await {
        f.write_all(&c?)
            .await
            .map_err(|e| Error::io(&dest, "write the delta download", e))?;
    }
    f.flush()
        .await
        .map_err(|e| Error::io(&dest, "write the delta download", e))?;
    Ok((dest, true))
}

/// Events of one delta are handed to the replay in batches of about this many bytes, a batch
/// never splitting a revision.
const BATCH_BYTES: usize = 4 << 20;

/// Batches of a delta's events, and the decoder's verdict on the whole object.
type DecodedDelta = (
    tokio::sync::mpsc::Receiver<Vec<delta::Event>>,
    tokio::task::JoinHandle<Result<()>>,
);

/// Decodes the delta in `file` as a stream on a blocking thread (decompress, parse, sha256 over
/// everything), sending its events in batches; the result says whether the whole object was
/// sound, which the caller must await before trusting what it applied.
fn decode_delta(
    file: PathBuf,
    d: &Snapshot,
    key: String,
    limits: delta::Limits,
) -> Result<DecodedDelta> {
    let codec = Codec::from_suffix(&d.compression_suffix).map_err(|e| Error::integrity(&key, e))?;
    let (tx, rx) = tokio::sync::mpsc::channel::<Vec<delta::Event>>(2);
    let task = tokio::task::spawn_blocking(move || -> Result<()> {
        let f = std::fs::File::open(&file).map_err(|e| Error::io(&file, "open the delta", e))?;
        let r = codec
            .decoder(std::io::BufReader::with_capacity(1 << 20, f))
            .map_err(|e| Error::integrity(&key, format!("cannot decompress: {e}")))?;
        let (mut batch, mut bytes): (Vec<delta::Event>, usize) = (Vec::new(), 0);
        let mut open = true;
        let result = delta::stream(r, &key, limits, |ev| {
            if bytes >= BATCH_BYTES
                && batch
                    .last()
                    .is_some_and(|l| l.mod_revision != ev.mod_revision)
            {
                // a receiver that stopped (target reached) still lets the whole object be
                // read: its sha256 covers the events already applied
                open = open && tx.blocking_send(std::mem::take(&mut batch)).is_ok();
                batch.clear();
                bytes = 0;
            }
            bytes += ev.key.len() + ev.value.len() + 64;
            batch.push(ev);
            Ok(())
        });
        if open && !batch.is_empty() {
            let _ = tx.blocking_send(batch);
        }
        result
    });
    Ok((rx, task))
}

/// etcd's restore tool: the one named, else etcdutl, else etcdctl, from PATH.
fn restore_tool(cfg: &RestoreConfig) -> Result<PathBuf> {
    match &cfg.restore_tool {
        Some(t) => Ok(t.clone()),
        None => find_on_path("etcdutl")
            .or_else(|| find_on_path("etcdctl"))
            .ok_or_else(|| {
                Error::config(
                    "neither etcdutl nor etcdctl is on PATH: install etcd's tools or name one with --etcd-restore-tool",
                )
            }),
    }
}

/// Runs etcd's tool on `db`, always with `--skip-hash-check`: the sha256 trailer was checked
/// here on the way (or the operator skipped the check), and the tool only strips it (etcd's
/// 3.4/3.5 builds hash without SHA-NI: their check cost 2 s per GiB).
fn run_restore_tool(
    cfg: &RestoreConfig,
    tool: &Path,
    plan: BumpPlan,
    db: &Path,
    out: &Path,
) -> Result<()> {
    let mut cmd = std::process::Command::new(tool);
    cmd.env("ETCDCTL_API", "3")
        .args(["snapshot", "restore"])
        .arg(db)
        .args(["--name", &cfg.name])
        .arg("--data-dir")
        .arg(out)
        .args(["--initial-cluster", &cfg.initial_cluster])
        .args(["--initial-cluster-token", &cfg.initial_cluster_token])
        .args([
            "--initial-advertise-peer-urls",
            &cfg.initial_advertise_peer_urls.join(","),
        ]);
    cmd.arg("--skip-hash-check");
    if plan == BumpPlan::Tool {
        cmd.args(["--bump-revision", &cfg.bump_revision.to_string()]);
        if cfg.mark_compacted {
            cmd.arg("--mark-compacted");
        }
    }
    let o = cmd
        .output()
        .map_err(|e| Error::io(tool, "run etcd's snapshot restore", e))?;
    if !o.status.success() {
        return Err(Error::Other(format!(
            "{} snapshot restore failed ({}): {}",
            tool.display(),
            o.status,
            String::from_utf8_lossy(&o.stderr).trim()
        )));
    }
    Ok(())
}

/// Restores into `cfg.data_dir` (module doc), which must be absent or empty.
pub async fn restore(cfg: &RestoreConfig) -> Result<RestoreReport> {
    if datadir::holds_data(&cfg.data_dir) {
        return Err(Error::config(format!(
            "{} is not empty: restore never overwrites a data directory; move it away first",
            cfg.data_dir.display()
        )));
    }
    let _work = WorkLock::acquire(&cfg.data_dir)?;
    restore_locked(cfg, None, 0).await
}

/// [`restore`] for a caller that holds the data directory's [`WorkLock`] (the initializer,
/// which may replace a condemned directory): `lock` is its lock on the condemned db, checked
/// right before the swap; the replaced directory is moved aside and at most `keep_invalid` of
/// those are kept.
pub async fn restore_locked(
    cfg: &RestoreConfig,
    lock: Option<&mut DbLock>,
    keep_invalid: usize,
) -> Result<RestoreReport> {
    let started = Instant::now();
    if cfg.max_fetchers == 0 {
        return Err(Error::config("--max-fetchers must be greater than 0"));
    }
    let store = SnapStore::open(cfg.store.clone()).await?;
    let list = store.list().await?;
    let (set, stop_at) = select(&list, &cfg.target)?;
    let newest = list
        .iter()
        .filter(|s| !s.is_chunk)
        .map(|s| s.last_revision)
        .max()
        .unwrap_or(0);
    let Some(full) = set.full.clone() else {
        return Err(Error::Other("no base snapshot found".into()));
    };
    let cut_time = match &cfg.target {
        Target::Time(t) => Some(*t),
        _ => None,
    };
    let target = stop_at.unwrap_or_else(|| set.last_revision());
    rewind_guard(cfg, &store, target, newest)?;
    tracing::info!(
        full = %full.snap_name,
        deltas = set.deltas.len(),
        revision = target,
        "restoring"
    );
    let part = datadir::part_dir(&cfg.data_dir);
    if part.exists() {
        // ours to remove: the work lock is held, its writer is gone
        std::fs::remove_dir_all(&part)
            .map_err(|e| Error::io(&part, "remove the leftover of an earlier restore", e))?;
    }
    let tmp = datadir::TempDir::new(&cfg.temp_dir)?;
    // `.part` is removed on any failure before the swap
    let built = async {
        let r = restore_into(
            cfg,
            &store,
            &set,
            &full,
            target,
            cut_time,
            &part,
            tmp.path(),
        )
        .await?;
        // a --to-time or --stop-at-gap restore may end below the store's newest revision
        rewind_guard(cfg, &store, r.3, newest)?;
        datadir::crash_point("restore:built");
        let what = format!(
            "restored by etcdbrctl from {} and {} deltas to revision {} at {}\n",
            store.key_of(&full),
            r.0,
            r.3,
            chrono::Utc::now().to_rfc3339()
        );
        let part = part.clone();
        tokio::task::spawn_blocking(move || datadir::seal(&part, &what))
            .await
            .map_err(|e| Error::Other(format!("fsync worker failed: {e}")))??;
        Ok(r)
    }
    .await;
    drop(tmp);
    let (deltas_applied, revisions_replayed, replay_elapsed, reached) = match built {
        Ok(r) => r,
        Err(e) => {
            let _ = std::fs::remove_dir_all(&part);
            return Err(e);
        }
    };
    datadir::crash_point("restore:sealed");
    let replaced = match datadir::swap_in(&part, &cfg.data_dir, lock, keep_invalid) {
        Ok(r) => r,
        Err(e) => {
            // `.part` may hold the old directory by now: recovery tells which from the marker
            if let Err(r) = datadir::recover(&cfg.data_dir) {
                tracing::warn!(error = %r, "cannot clean up after the failed swap; the next run will");
            }
            return Err(e);
        }
    };
    let report = RestoreReport {
        full,
        deltas_applied,
        revisions_replayed,
        revision: reached,
        elapsed: started.elapsed(),
        replay_elapsed,
    };
    tracing::info!(
        data_dir = %cfg.data_dir.display(),
        revision = report.revision,
        deltas = report.deltas_applied,
        revisions_replayed = report.revisions_replayed,
        replaced = ?replaced,
        secs = format!("{:.2}", report.elapsed.as_secs_f64()),
        "restored"
    );
    Ok(report)
}

/// The temporary etcd the restore (and `compact`) runs.
pub fn temp_etcd_config(cfg: &RestoreConfig, log: PathBuf) -> Result<TempEtcdConfig> {
    let binary = cfg
        .etcd_binary
        .clone()
        .or_else(|| find_on_path("etcd"))
        .ok_or_else(|| {
            Error::config("etcd is not on PATH: the deltas are replayed through a temporary etcd; name it with --etcd-binary")
        })?;
    Ok(TempEtcdConfig {
        binary,
        name: cfg.name.clone(),
        quota_bytes: cfg.quota_bytes,
        max_txn_ops: cfg.max_txn_ops,
        max_request_bytes: cfg.max_request_bytes,
        log,
        ready_within: Duration::from_secs(60),
        fsync: false,
    })
}

#[allow(clippy::too_many_arguments)]
async fn restore_into(
    cfg: &RestoreConfig,
    store: &SnapStore,
    set: &SnapshotSet,
    full: &Snapshot,
    target: i64,
    cut_time: Option<chrono::DateTime<chrono::Utc>>,
    part: &Path,
    tmp: &Path,
) -> Result<(usize, u64, Duration, i64)> {
    let replay_needed = !(set.deltas.is_empty() || full.last_revision >= target);
    let tool = restore_tool(cfg)?;
    let plan = bump_plan(cfg, &tool, replay_needed)?;
    restore_base(cfg, store, full, tool, plan, part, tmp).await?;
    datadir::crash_point("restore:base-restored");
    let base_revision = match plan {
        BumpPlan::Tool => full.last_revision + cfg.bump_revision,
        _ => full.last_revision,
    };
    if !replay_needed && plan != BumpPlan::Patch {
        return Ok((0, 0, Duration::ZERO, base_revision));
    }
    let etcd_cfg = temp_etcd_config(cfg, tmp.join("etcd.log"))?;
    let replay_started = Instant::now();
    let (etcd, result) = if replay_needed && cfg.replay_method == Method::Wal {
        let db = part.join("member/snap/db");
        let (base, auth) = tokio::task::spawn_blocking(move || base_revision_of(&db))
            .await
            .map_err(|e| Error::Other(format!("revision reader failed: {e}")))??;
        let mut r =
            Replayer::through_wal(&part.join("member/wal"), base, auth, cfg.default_lease_ttl);
        r.stop_at_gap = cfg.stop_at_gap;
        let (n, reached) = replay_all(
            store,
            set,
            target,
            cut_time,
            cfg,
            &mut r,
            Some((&etcd_cfg, part)),
            tmp,
        )
        .await?;
        let (etcd, checked) = start_applying(&etcd_cfg, part, &mut r).await?;
        (etcd, checked.map(|_| (n, r.applied, reached)))
    } else {
        let etcd = TempEtcd::start(&etcd_cfg, part).await?;
        let result = if replay_needed {
            match Replayer::through_api(&etcd, cfg.default_lease_ttl).await {
                Ok(mut r) => {
                    r.stop_at_gap = cfg.stop_at_gap;
                    replay_all(store, set, target, cut_time, cfg, &mut r, None, tmp)
                        .await
                        .map(|(n, reached)| (n, r.applied, reached))
                }
                Err(e) => Err(e),
            }
        } else {
            Ok((0, 0, base_revision))
        };
        (etcd, result)
    };
    let result = match (result, plan) {
        (Ok(r), BumpPlan::Patch) => etcd.compact_to_current().await.map(|rev| (r, rev)),
        (r, _) => r.map(|r| (r, r.2)),
    };
    let stopped = etcd.stop().await;
    // the temporary etcd's start and stop count as replay: they are its cost
    let replay_elapsed = replay_started.elapsed();
    let ((n, revs, reached), compacted_at) = result?;
    stopped?;
    datadir::crash_point("restore:replayed");
    if plan != BumpPlan::Patch {
        return Ok((n, revs, replay_elapsed, reached));
    }
    if compacted_at != reached {
        return Err(Error::Other(format!(
            "the temporary etcd is at revision {compacted_at} after the replay, not {reached}: not bumping"
        )));
    }
    let (db, bump) = (part.join("member/snap/db"), cfg.bump_revision);
    let bumped = tokio::task::spawn_blocking(move || {
        crate::restore::revbump::bump_and_mark_compacted(&db, bump)
    });
    let new = bumped
        .await
        .map_err(|e| Error::Other(format!("revision bump worker failed: {e}")))??;
    tracing::info!(
        from = reached,
        to = new,
        "revision bumped and marked compacted (reads and watches below it answer \"compacted\")"
    );
    Ok((n, revs, replay_elapsed, new))
}

/// Restores the full snapshot into `part`: the db downloaded (verified, decompressed) straight
/// into `member/snap/db`, and the new membership transplanted from etcd's tool run on an empty
/// template ([`crate::restore::membership`]), so that the db is written once. The whole db goes through
/// the tool when the tool bumps its revision or the transplant does not apply.
async fn restore_base(
    cfg: &RestoreConfig,
    store: &SnapStore,
    full: &Snapshot,
    tool: PathBuf,
    plan: BumpPlan,
    part: &Path,
    tmp: &Path,
) -> Result<()> {
    let verify = !cfg.skip_hash_check;
    let run_tool = |db: PathBuf| {
        let (cfg, tool, part) = (cfg.clone(), tool.clone(), part.to_path_buf());
        async move {
            tokio::task::spawn_blocking(move || run_restore_tool(&cfg, &tool, plan, &db, &part))
                .await
                .map_err(|e| Error::Other(format!("restore tool runner failed: {e}")))?
        }
    };
    let download = |dest: PathBuf| async move {
        let bytes = download_full(store, full, &dest, verify).await?;
        tracing::info!(object = %store.key_of(full), bytes, "full snapshot downloaded and verified");
        Ok::<(), Error>(())
    };
    let whole = tmp.join("snapshot.db");
    if plan == BumpPlan::Tool {
        // the tool bumps the revision of the db it copies
        download(whole.clone()).await?;
        run_tool(whole.clone()).await?;
        return std::fs::remove_file(&whole)
            .map_err(|e| Error::io(&whole, "remove the temporary snapshot", e));
    }
    let template = tmp.join("template.db");
    crate::restore::membership::write_template(&template)?;
    run_tool(template).await?;
    let db = part.join("member/snap/db.download");
    download(db.clone()).await?;
    let (part2, db2) = (part.to_path_buf(), db.clone());
    let transplanted =
        tokio::task::spawn_blocking(move || crate::restore::membership::transplant(&part2, &db2))
            .await
            .map_err(|e| Error::Other(format!("membership writer failed: {e}")))??;
    match transplanted {
        crate::restore::membership::Transplant::Done => {
            let live = part.join("member/snap/db");
            std::fs::rename(&db, &live)
                .map_err(|e| Error::io(&live, "move the restored db into place", e))
        }
        crate::restore::membership::Transplant::Unpatchable(why) => {
            tracing::info!(reason = %why, "the membership cannot be written into this db in place: etcd's tool copies the whole db");
            std::fs::rename(&db, &whole)
                .map_err(|e| Error::io(&whole, "move the downloaded db", e))?;
            std::fs::remove_dir_all(part)
                .map_err(|e| Error::io(part, "remove the template's restore", e))?;
            run_tool(whole.clone()).await?;
            std::fs::remove_file(&whole)
                .map_err(|e| Error::io(&whole, "remove the temporary snapshot", e))
        }
    }
}

/// The revision of a restored backend, and its auth revision when authentication is enabled,
/// read from the file (etcd is not running).
fn base_revision_of(db: &Path) -> Result<(i64, Option<u64>)> {
    let e = |e: crate::ondisk::bbolt::BoltError| {
        Error::Other(format!(
            "read the revision of the restored {}: {e}",
            db.display()
        ))
    };
    let db = crate::ondisk::bbolt::Db::open(db).map_err(e)?;
    let revision = crate::ondisk::schema::revisions(&db)
        .map_err(e)?
        .effective();
    Ok((
        revision,
        crate::ondisk::schema::auth_enabled_at(&db).map_err(e)?,
    ))
}

/// How long a temporary etcd may take to apply `entries` pending WAL entries and answer:
/// generous (2,000 entries/s is far below what etcd applies), only a bound against a hang.
fn ready_within(entries: u64) -> Duration {
    Duration::from_secs(60 + entries / 2_000)
}

/// Bytes of WAL entries after which the temporary etcd applies what was appended before more
/// is written: etcd holds the entries after its last raft snapshot in memory when it starts.
fn wal_chunk_bytes() -> u64 {
    std::env::var("ETCDBR_REPLAY_CHUNK_BYTES")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|v| *v > 0)
        .unwrap_or(128 << 20)
}

/// Commits what was appended to the WAL and starts a temporary etcd, which applies it as it
/// starts; returns it and whether it reached the replayed revision.
async fn start_applying(
    etcd_cfg: &TempEtcdConfig,
    part: &Path,
    r: &mut Replayer,
) -> Result<(TempEtcd, Result<()>)> {
    r.commit_wal()?;
    let (entries, _) = r.pending();
    let mut c = etcd_cfg.clone();
    c.ready_within = ready_within(entries);
    tracing::info!(
        entries,
        "the temporary etcd applies the replayed WAL entries as it starts"
    );
    let etcd = TempEtcd::start(&c, part).await?;
    let checked = etcd.expect_revision(r.revision, entries).await;
    Ok((etcd, checked))
}

/// Lets a temporary etcd apply what was appended to the WAL so far, checks the revision it
/// reaches, and stops it.
async fn apply_pending(etcd_cfg: &TempEtcdConfig, part: &Path, r: &mut Replayer) -> Result<()> {
    let started = Instant::now();
    let entries = r.pending().0;
    let (etcd, checked) = start_applying(etcd_cfg, part, r).await?;
    let stopped = etcd.stop().await;
    checked?;
    stopped?;
    r.applied_by_etcd();
    tracing::info!(
        revision = r.revision,
        entries,
        secs = format!("{:.2}", started.elapsed().as_secs_f64()),
        "replayed WAL entries applied by etcd"
    );
    Ok(())
}

/// Fetches the deltas (in parallel, in order) and replays them up to `target` (`cut_time`: the
/// events received up to then). `wal`: the temporary etcd config and data dir used to apply
/// the WAL every [`wal_chunk_bytes`]. Returns the deltas read and the revision reached.
#[allow(clippy::too_many_arguments)]
async fn replay_all(
    store: &SnapStore,
    set: &SnapshotSet,
    target: i64,
    cut_time: Option<chrono::DateTime<chrono::Utc>>,
    cfg: &RestoreConfig,
    r: &mut Replayer,
    wal: Option<(&TempEtcdConfig, &Path)>,
    tmp: &Path,
) -> Result<(usize, i64)> {
    let base = r.revision;
    tracing::info!(base_revision = base, target, method = ?cfg.replay_method, "replaying deltas");
    // downloads run `--max-fetchers` ahead, to files; one delta at a time is decoded, as a
    // stream, while the previous batch is replayed: memory holds two batches
    let limits = delta::Limits {
        delta_bytes: cfg.max_delta_bytes,
        ..delta::Limits::default()
    };
    let mut fetched = futures::stream::iter(set.deltas.clone())
        .map(|d| async move {
            let file = fetch_delta(store, &d, tmp).await;
            (d, file)
        })
        .buffered(cfg.max_fetchers);
    let (mut n, mut last_log) = (0, Instant::now());
    let started = Instant::now();
    let chunk = wal_chunk_bytes();
    let mut more = true;
    while let Some((d, file)) = fetched.next().await {
        let (file, downloaded) = file?;
        let key = store.key_of(&d);
        let (mut batches, decoder) = decode_delta(file.clone(), &d, key.clone(), limits)?;
        let mut applied = Ok(());
        while let Some(events) = batches.recv().await {
            if !more {
                continue; // drained: the decoder still checks the whole object
            }
            // --to-time: stop before the first event received after the time
            let up_to = match cut_time.and_then(|t| events.iter().find(|e| e.time > t)) {
                Some(e) => target.min(e.mod_revision - 1),
                None => target,
            };
            match r.apply(&events, &key, up_to).await {
                Ok(m) => more = m && up_to == target,
                Err(e) => {
                    applied = Err(e);
                    more = false;
                    continue;
                }
            }
            if let Some((etcd_cfg, part)) = wal {
                if r.pending().1 >= chunk {
                    if let Err(e) = apply_pending(etcd_cfg, part, r).await {
                        applied = Err(e);
                        more = false;
                    }
                }
            }
        }
        let sound = decoder
            .await
            .map_err(|e| Error::Other(format!("delta decoder failed: {e}")))?;
        if downloaded {
            let _ = std::fs::remove_file(&file);
        }
        // a damaged object is the cause even if applying its first events failed
        sound?;
        applied?;
        n += 1;
        if last_log.elapsed() > Duration::from_secs(5) {
            let done = (r.revision - base).max(0) as f64;
            let rate = done / started.elapsed().as_secs_f64().max(0.001);
            let left = (target - r.revision).max(0) as f64;
            tracing::info!(
                revision = r.revision,
                target,
                deltas = format!("{n}/{}", set.deltas.len()),
                rate = format!("{rate:.0} revisions/s"),
                eta = format!("{:.0}s", left / rate.max(1.0)),
                "replay progress"
            );
            last_log = Instant::now();
        }
        if !more {
            break;
        }
    }
    if r.revision < target && cut_time.is_none() && r.gap.is_none() {
        return Err(Error::Other(format!(
            "the deltas end at revision {}, not at {target}: revisions {}..{target} are missing from the backups",
            r.revision,
            r.revision + 1
        )));
    }
    tracing::info!(
        revision = r.revision,
        revisions = r.applied,
        resent = r.resent(),
        secs = format!("{:.2}", started.elapsed().as_secs_f64()),
        "replay written"
    );
    Ok((n, r.revision))
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn s(kind: Kind, start: i64, last: i64, t: i64) -> Snapshot {
        Snapshot::new_at(
            kind,
            start,
            last,
            ".gz",
            false,
            chrono::Utc.timestamp_opt(t, 0).unwrap(),
        )
    }

    #[test]
    fn selects_the_set_holding_a_revision() {
        let list = vec![
            s(Kind::Full, 0, 10, 1),
            s(Kind::Incr, 11, 20, 2),
            s(Kind::Incr, 21, 30, 3),
            s(Kind::Full, 0, 30, 4),
            s(Kind::Incr, 31, 40, 5),
        ];
        let rev = |r| select(&list, &Target::Revision(r));
        let (latest, stop) = select(&list, &Target::Latest).unwrap();
        assert_eq!(latest.full.unwrap().last_revision, 30);
        assert_eq!((latest.deltas.len(), stop), (1, None));
        let (at, stop) = rev(25).unwrap();
        assert_eq!(at.full.unwrap().last_revision, 10);
        assert_eq!((at.deltas.len(), stop), (2, Some(25)));
        let (at, _) = rev(35).unwrap();
        assert_eq!(at.full.unwrap().last_revision, 30);
        assert!(rev(5).is_err());
        assert!(rev(50).is_err());
        assert!(select(&[], &Target::Latest).is_err());
        let t = |u| Target::Time(chrono::Utc.timestamp_opt(u, 0).unwrap());
        // up to the first delta written after the time (it may hold earlier events)
        let (at, stop) = select(&list, &t(2)).unwrap();
        assert_eq!(at.full.unwrap().last_revision, 10);
        assert_eq!((at.deltas.len(), stop), (2, None));
        let (at, _) = select(&list, &t(3)).unwrap();
        assert_eq!(at.deltas.len(), 3);
        let name = list[1].snap_name.clone();
        let (at, stop) = select(&list, &Target::Snapshot(name)).unwrap();
        assert_eq!((at.deltas.len(), stop), (1, Some(20)));
        let name = list[3].snap_name.clone();
        let (at, stop) = select(&list, &Target::Snapshot(name)).unwrap();
        assert_eq!((at.deltas.len(), stop), (0, Some(30)));
    }
}
