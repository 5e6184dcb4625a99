//! The restore drill: the latest snapshot set (full and deltas) restored into a temporary
//! directory exactly as a real restore would, checked natively (every page of the db), and its
//! keyspace at the chain's last revision compared with the cluster's: etcd's own `HashKV` at
//! that revision while the cluster still has it, else the hash recorded with the full when no
//! delta follows it. The directory is removed afterwards, whatever the outcome.
//!
//! A drill proves that the backups restore into the very data the cluster held (not only that
//! they are well-formed): a delta whose events were altered (its sha256 trailer recomputed), or
//! a full of another cluster under the right name, restores fine and is caught here. What it
//! does not prove: the data after the chain's last revision (not backed up yet), and, when the
//! cluster has compacted past that revision and deltas follow the full, anything (the drill
//! then says it is unproven, and why).

use crate::error::{Error, Result};
use crate::etcd::{self, EtcdConfig};
use crate::ondisk::bbolt::Db;
use crate::ondisk::datadir;
use crate::restore::{RestoreConfig, Target};
use crate::store::SnapStore;
use std::time::{Duration, Instant};

/// What a drill restores and whom it asks.
#[derive(Debug, Clone)]
pub(crate) struct DrillConfig {
    /// The restore's settings; the data dir is a temporary one below `temp_dir`.
    pub(crate) restore: RestoreConfig,
    /// The cluster, for its `HashKV`; `None`: the recorded proofs only.
    pub(crate) etcd: Option<EtcdConfig>,
}

/// What the restored keyspace was compared with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Equal to etcd's `HashKV` at the revision, answered now by `source`.
    Equal {
        /// "etcd <endpoint>" or "the proof recorded with <full>".
        source: String,
        /// The compaction revision the hash was computed under.
        compact_revision: i64,
    },
    /// Nothing to compare with (the reason says why); the restore itself succeeded.
    Unproven(String),
    /// Different from what `source` says: the backups do not hold the cluster's data.
    Differs {
        /// Who said otherwise.
        source: String,
        /// What it said.
        theirs: u32,
        /// The compaction revision the hash was computed under.
        compact_revision: i64,
    },
}

impl Verdict {
    /// The `result` label of `etcdbr_restore_drill_result`.
    pub(crate) fn label(&self) -> &'static str {
        match self {
            Verdict::Equal { .. } => "equal",
            Verdict::Unproven(_) => "unproven",
            Verdict::Differs { .. } => "mismatch",
        }
    }
}

/// The outcome of a drill that restored.
#[derive(Debug, Clone)]
pub(crate) struct DrillReport {
    pub(crate) full: String,
    pub(crate) deltas: usize,
    pub(crate) revision: i64,
    pub(crate) hash: u32,
    pub(crate) verdict: Verdict,
    pub(crate) elapsed: Duration,
}

/// Runs one drill; a set that cannot be restored fails as the restore does.
pub(crate) async fn drill(cfg: &DrillConfig) -> Result<DrillReport> {
    let started = Instant::now();
    if let Some(e) = &cfg.etcd {
        room_for_the_db(e, &cfg.restore.temp_dir).await?;
    }
    let work = datadir::TempDir::new(&cfg.restore.temp_dir)?;
    let mut rc = cfg.restore.clone();
    rc.data_dir = work.path().join("drill.etcd");
    rc.temp_dir = work.path().join("tmp");
    rc.target = Target::Latest;
    // restored for the check only: it never serves this store prefix
    rc.allow_rewind = true;
    (rc.bump_revision, rc.mark_compacted) = (0, false);
    let restored = crate::restore::restore(&rc).await?;
    let revision = restored.revision;
    let db_path = rc.data_dir.join("member/snap/db");
    let db = tokio::task::spawn_blocking(move || -> Result<Db> {
        let db = Db::open(&db_path)?;
        if let Some(p) = db.check().first() {
            return Err(Error::integrity(
                db_path.display().to_string(),
                format!("the restored db is damaged: {p}"),
            ));
        }
        Ok(db)
    })
    .await
    .map_err(|e| Error::task("drill checker", e))??;

    // etcd's answer now, else the one recorded with the full
    let mut why_not = String::new();
    let mut expected = None;
    if let Some(e) = &cfg.etcd {
        match cluster_hash(e, revision).await {
            Ok(h) => expected = Some(h),
            Err(err) => why_not = format!("etcd cannot hash revision {revision}: {err}"),
        }
    } else {
        why_not = "no etcd endpoint given".into();
    }
    if expected.is_none() && restored.deltas_applied == 0 {
        let store = SnapStore::open(rc.store.clone()).await?;
        match store.proof(&restored.full).await? {
            Some(p) if p.revision == revision => {
                expected = Some((
                    p.hash,
                    p.compact_revision,
                    format!("the proof recorded with {}", restored.full.snap_name),
                ))
            }
            _ => why_not.push_str("; no proof recorded with the full"),
        }
    }
    let Some((theirs, compact, source)) = expected else {
        let hash = hash_of(db, revision, 0).await?;
        return Ok(DrillReport {
            full: restored.full.snap_name,
            deltas: restored.deltas_applied,
            revision,
            hash,
            verdict: Verdict::Unproven(why_not),
            elapsed: started.elapsed(),
        });
    };
    let ours = hash_of(db, revision, compact).await?;
    drop(work);
    let verdict = if ours == theirs {
        Verdict::Equal {
            source,
            compact_revision: compact,
        }
    } else {
        Verdict::Differs {
            source,
            theirs,
            compact_revision: compact,
        }
    };
    Ok(DrillReport {
        full: restored.full.snap_name,
        deltas: restored.deltas_applied,
        revision,
        hash: ours,
        verdict,
        elapsed: started.elapsed(),
    })
}

impl DrillReport {
    /// One line for the log, the API and the command line.
    pub(crate) fn describe(&self) -> String {
        let set = format!(
            "{} and {} deltas, restored to revision {}",
            self.full, self.deltas, self.revision
        );
        match &self.verdict {
            Verdict::Equal { source, compact_revision } => format!(
                "{set}: keyspace hash {:08x}, equal to etcd's HashKV from {source} (compacted at {compact_revision})",
                self.hash
            ),
            Verdict::Unproven(why) => format!(
                "{set}: keyspace hash {:08x}, unproven: {why}",
                self.hash
            ),
            Verdict::Differs { source, theirs, compact_revision } => format!(
                "{set}: keyspace hash {:08x}, but {source} says {theirs:08x} (compacted at {compact_revision}): the backups do not hold the cluster's data; find the altered object with `snapshot verify` and take a new full snapshot",
                self.hash
            ),
        }
    }
}

/// Bounded disk: the drill writes one copy of the db (about the member's db size) below
/// `temp_dir`, and does not start when that would leave less than 10 % of it, and 64 MiB, free.
async fn room_for_the_db(cfg: &EtcdConfig, temp_dir: &std::path::Path) -> Result<()> {
    let endpoint = cfg.primary().to_string();
    let Ok(mut c) = etcd::connect_one(cfg, &endpoint).await else {
        return Ok(()); // the drill says why etcd cannot answer
    };
    let Ok(st) = etcd::call(&endpoint, "status", cfg.connection_timeout, c.status()).await else {
        return Ok(());
    };
    let need = u64::try_from(st.db_size()).unwrap_or(0);
    std::fs::create_dir_all(temp_dir)
        .map_err(|e| Error::io(temp_dir, "create the restoration temp dir", e))?;
    let free = crate::sys::free_bytes(temp_dir)
        .map_err(|e| Error::io(temp_dir, "read the free space", e))?;
    let margin = (need / 10).max(64 << 20);
    if free < need.saturating_add(margin) {
        return Err(Error::Refused(format!(
            "{}: {free} bytes free, the drill needs about {need} (the db of {endpoint}) plus {margin}: not started; give --restoration-temp-snapshots-dir more room",
            temp_dir.display()
        )));
    }
    Ok(())
}

async fn hash_of(db: Db, revision: i64, compact: i64) -> Result<u32> {
    tokio::task::spawn_blocking(move || crate::ondisk::hashkv::hash_kv(&db, revision, compact))
        .await
        .map_err(|e| Error::task("drill hasher", e))?
}

/// etcd's `HashKV` at `revision`: (hash, compaction revision, who answered).
async fn cluster_hash(cfg: &EtcdConfig, revision: i64) -> Result<(u32, i64, String)> {
    let endpoint = cfg.primary().to_string();
    let mut c = etcd::connect_one(cfg, &endpoint).await?;
    let r = etcd::call(
        &endpoint,
        "HashKV at the chain's last revision",
        cfg.snapshot_timeout,
        c.hash_kv(revision),
    )
    .await?;
    Ok((r.hash(), r.compact_version(), format!("etcd {endpoint}")))
}
