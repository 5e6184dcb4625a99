//! Restore: the latest snapshot set (or the one a target names) into an etcd data dir.
//!
//! Data flows store -> codec -> restore -> data dir. What is restored is decided first and
//! purely ([`plan`]: which full, which deltas, up to which revision, how a revision bump is
//! done, whether it would rewind the store's history). Then the full is downloaded, verified
//! and inflated straight into `<data-dir>.part` ([`fetch`]), etcd's own restore tool writes
//! the WAL and `.snap` ([`tool`], on a template db whose membership [`membership`] carries
//! over), the deltas are fetched ahead (`--max-fetchers`, in order, so memory is bounded by
//! that many deltas) and replayed through a temporary etcd ([`replay`]), and a bump moves the
//! compaction marks ([`revbump`]). Only a complete, verified, durable `.part` becomes the data
//! dir ([`crate::ondisk::datadir`]): a failed restore never touches the target.

mod fetch;
pub mod membership;
pub mod plan;
pub mod replay;
pub mod revbump;
mod tool;

use crate::error::{Error, Result};
use crate::format::delta;
use crate::format::layout::{Snapshot, SnapshotSet};
use crate::ondisk::datadir::{self, DbLock, WorkLock};
use crate::restore::replay::{Method, Replayer, TempEtcd, TempEtcdConfig};
use crate::store::{SnapStore, StoreConfig};
use fetch::{decode_delta, download_full, fetch_delta};
use futures::StreamExt;
use plan::{BumpPlan, Plan};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use tool::{find_on_path, restore_tool, run_restore_tool, tool_supports_bump};

#[derive(Debug, Clone)]
pub(crate) struct RestoreConfig {
    pub(crate) store: StoreConfig,
    pub(crate) data_dir: PathBuf,
    pub(crate) name: String,
    pub(crate) initial_cluster: String,
    pub(crate) initial_cluster_token: String,
    pub(crate) initial_advertise_peer_urls: Vec<String>,
    pub(crate) skip_hash_check: bool,
    pub(crate) max_fetchers: usize,
    /// Where the full snapshot is decompressed before etcd's tool restores it.
    pub(crate) temp_dir: PathBuf,
    /// `etcdutl` or `etcdctl`; `None`: `etcdutl` from PATH, else `etcdctl`.
    pub(crate) restore_tool: Option<PathBuf>,
    /// The `etcd` binary for the replay; `None`: from PATH.
    pub(crate) etcd_binary: Option<PathBuf>,
    pub(crate) quota_bytes: u64,
    pub(crate) max_txn_ops: u32,
    pub(crate) max_request_bytes: u64,
    /// TTL of leases first seen in deltas that do not record one (etcdbrctl's).
    pub(crate) default_lease_ttl: i64,
    /// What to restore.
    pub(crate) target: Target,
    /// `--bump-revision` (0: none) and `--mark-compacted`.
    pub(crate) bump_revision: i64,
    pub(crate) mark_compacted: bool,
    /// How the deltas reach the temporary etcd.
    pub(crate) replay_method: Method,
    /// A gap in the revisions ends the restore at the revision before it instead of failing.
    pub(crate) stop_at_gap: bool,
    /// A delta larger than this decompressed is refused as damaged (`--max-delta-bytes`).
    pub(crate) max_delta_bytes: u64,
    /// Restore below the store's newest revision without a bump ([`rewind_guard`]).
    pub(crate) allow_rewind: bool,
}

#[cfg(test)]
impl RestoreConfig {
    /// A valid configuration: Local store, default flags, data dir `d`.
    pub(crate) fn for_tests() -> RestoreConfig {
        let store = crate::store::StoreConfig {
            provider: crate::store::Provider::Local,
            container: String::new(),
            endpoint_override: String::new(),
            prefix: String::new(),
            max_parallel_chunk_uploads: 1,
            min_chunk_size: 5 << 20,
            temp_dir: std::env::temp_dir(),
            env_prefix: String::new(),
            credentials: None,
            keys: Default::default(),
        };
        RestoreConfig {
            store,
            data_dir: "d".into(),
            name: "default".into(),
            initial_cluster: "default=http://localhost:2380".into(),
            initial_cluster_token: "etcd-cluster".into(),
            initial_advertise_peer_urls: vec!["http://localhost:2380".into()],
            skip_hash_check: false,
            max_fetchers: 6,
            temp_dir: std::env::temp_dir(),
            restore_tool: None,
            etcd_binary: None,
            quota_bytes: 8 << 30,
            max_txn_ops: 10240,
            max_request_bytes: 10 << 20,
            default_lease_ttl: 3600,
            target: crate::restore::Target::Latest,
            bump_revision: 0,
            mark_compacted: false,
            replay_method: crate::restore::replay::Method::Wal,
            stop_at_gap: false,
            max_delta_bytes: 1 << 30,
            allow_rewind: false,
        }
    }
}

impl RestoreConfig {
    /// Checks the values no restore can run with; called once, where the configuration is
    /// built from the command line.
    pub(crate) fn validate(&self) -> Result<()> {
        if self.max_fetchers == 0 {
            return Err(Error::config("--max-fetchers must be greater than 0"));
        }
        if self.quota_bytes == 0 {
            return Err(Error::config(
                "--embedded-etcd-quota-bytes must be greater than 0",
            ));
        }
        if self.bump_revision < 0 {
            return Err(Error::config("--bump-revision must not be negative"));
        }
        if self.mark_compacted && self.bump_revision == 0 {
            return Err(Error::config(
                "--mark-compacted needs --bump-revision (as etcdutl): e.g. --bump-revision 1000000000 --mark-compacted",
            ));
        }
        Ok(())
    }
}

/// The point to restore.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Target {
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
pub(crate) struct RestoreReport {
    /// The full restored from.
    pub(crate) full: Snapshot,
    pub(crate) deltas_applied: usize,
    pub(crate) revisions_replayed: u64,
    pub(crate) revision: i64,
    pub(crate) elapsed: Duration,
    pub(crate) replay_elapsed: Duration,
}

/// Restores into `cfg.data_dir` (module doc), which must be absent or empty.
pub(crate) async fn restore(cfg: &RestoreConfig) -> Result<RestoreReport> {
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
pub(crate) async fn restore_locked(
    cfg: &RestoreConfig,
    lock: Option<&mut DbLock>,
    keep_invalid: usize,
) -> Result<RestoreReport> {
    let started = Instant::now();
    let store = SnapStore::open(cfg.store.clone()).await?;
    let list = store.list().await?;
    let plan = plan::plan(cfg, &list, &store.describe())?;
    plan.check_keys(store.keys().identities.is_some())?;
    let full = plan.full.clone();
    tracing::info!(
        full = %full.snap_name,
        deltas = plan.set.deltas.len(),
        revision = plan.target,
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
        let r = restore_into(cfg, &store, &plan, &part, tmp.path()).await?;
        // a --to-time or --stop-at-gap restore may end below the store's newest revision
        plan.check_rewind(cfg, r.3, &store.describe())?;
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
            .map_err(|e| Error::task("fsync worker", e))??;
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
pub(crate) fn temp_etcd_config(cfg: &RestoreConfig, log: PathBuf) -> Result<TempEtcdConfig> {
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

async fn restore_into(
    cfg: &RestoreConfig,
    store: &SnapStore,
    p: &Plan,
    part: &Path,
    tmp: &Path,
) -> Result<(usize, u64, Duration, i64)> {
    let (set, full, target, cut_time) = (&p.set, &p.full, p.target, p.cut_time);
    let replay_needed = p.replay_needed();
    let tool = restore_tool(cfg)?;
    let plan = p.bump(cfg, &tool, || tool_supports_bump(&tool))?;
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
            .map_err(|e| Error::task("revision reader", e))??;
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
        return Err(Error::tool_failed(
            "the temporary etcd",
            format!("is at revision {compacted_at} after the replay, not {reached}: not bumping"),
        ));
    }
    let (db, bump) = (part.join("member/snap/db"), cfg.bump_revision);
    let bumped = tokio::task::spawn_blocking(move || {
        crate::restore::revbump::bump_and_mark_compacted(&db, bump)
    });
    let new = bumped
        .await
        .map_err(|e| Error::task("revision bump worker", e))??;
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
                .map_err(|e| Error::task("restore tool runner", e))?
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
            .map_err(|e| Error::task("membership writer", e))??;
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
    let e = Error::from;
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
        let (mut batches, decoder) = decode_delta(
            file.clone(),
            &d,
            key.clone(),
            store.keys().identities.clone(),
            limits,
        )?;
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
        let sound = decoder.await.map_err(|e| Error::task("delta decoder", e))?;
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
        return Err(Error::RevisionGap(format!(
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
