//! Start-up validation of an etcd data directory (etcdbrctl's `sanity` and `full` modes),
//! which judges damage as etcd itself does: a directory etcd would start on and serve is kept
//! (a torn WAL tail included, which etcd truncates as after any power loss), one it cannot start
//! on or would serve wrong data from is condemned. The judgment ([`crate::ondisk::bootcheck`]) reads
//! the files natively, read-only; etcd is started only, as etcdbrctl does, to let it replay
//! committed WAL entries when only they could bring the db up to the store's revision, and then
//! with fsync on and with the initializer's lock on the db handed to it.
//!
//! * `sanity` (after a clean stop) condemns exactly what etcd cannot start on;
//! * `full` also condemns latent damage etcd does not notice at start (keys out of order, page
//!   headers naming other pages, an inconsistent persisted freelist).

use crate::error::{Error, Result};
use crate::ondisk::bootcheck;
use crate::ondisk::datadir::DbLock;
use crate::restore::replay::{TempEtcd, TempEtcdConfig};
use crate::store::{SnapStore, StoreConfig};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mode {
    /// Cheap checks, after a clean shutdown.
    Sanity,
    /// Also the whole bbolt structure, the WAL chain and the `.snap` files.
    Full,
}

impl std::str::FromStr for Mode {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "full" => Ok(Mode::Full),
            "sanity" => Ok(Mode::Sanity),
            other => Err(format!("unknown validation mode {other:?}: full or sanity")),
        }
    }
}

/// The validator's verdict (etcdbrctl's names).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Outcome {
    Valid,
    DataDirectoryNotExist,
    DataDirectoryInvStruct(String),
    DataDirectoryCorrupt(String),
    RevisionConsistencyError {
        db: i64,
        store: i64,
    },
    WrongVolumeMounted(String),
    /// Valid, but of a member the running cluster no longer lists (multi-member clusters).
    NotAMember(String),
    /// Not judged: an operator asked for this member to be rebuilt (the request file named).
    RestoreRequested(String),
}

impl Outcome {
    /// Whether the initializer must not act (an operator must look).
    pub(crate) fn is_fatal(&self) -> bool {
        matches!(self, Outcome::WrongVolumeMounted(_))
    }
}

impl std::fmt::Display for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Outcome::Valid => f.write_str("valid"),
            Outcome::DataDirectoryNotExist => f.write_str("the data directory does not exist"),
            Outcome::DataDirectoryInvStruct(m) => write!(f, "invalid structure: {m}"),
            Outcome::DataDirectoryCorrupt(m) => write!(f, "corrupt: {m}"),
            Outcome::RevisionConsistencyError { db, store } => write!(
                f,
                "the db is at revision {db}, behind the latest backup at {store}: data would be lost"
            ),
            Outcome::WrongVolumeMounted(m) => write!(f, "wrong volume mounted: {m}"),
            Outcome::NotAMember(m) => write!(f, "not a member of the running cluster: {m}"),
            Outcome::RestoreRequested(m) => write!(f, "a restore was requested ({m})"),
        }
    }
}

#[derive(Debug, Clone)]
pub(crate) struct ValidateConfig {
    pub(crate) data_dir: PathBuf,
    pub(crate) mode: Mode,
    /// The backups; `None`: no revision check.
    pub(crate) store: Option<StoreConfig>,
    /// Members in the etcd config's initial cluster: above 1, no revision check (the member
    /// catches up from the leader).
    pub(crate) cluster_size: usize,
    /// `POD_NAMESPACE`: enables the `safe_guard` check of the volume.
    pub(crate) pod_namespace: Option<String>,
    /// To let etcd replay committed WAL entries when the db is behind the store.
    pub(crate) temp_etcd: Option<TempEtcdConfig>,
}

/// `<dirname(data-dir)>/safe_guard` holds the namespace the volume belongs to.
fn safe_guard(data_dir: &Path, ns: &str) -> Result<Option<Outcome>> {
    let parent = data_dir.parent().unwrap_or(Path::new("."));
    let file = parent.join("safe_guard");
    match std::fs::read_to_string(&file) {
        Ok(content) if content.trim() == ns => Ok(None),
        Ok(content) => Ok(Some(Outcome::WrongVolumeMounted(format!(
            "{} says this volume belongs to namespace {:?}, this pod runs in {ns:?}",
            file.display(),
            content.trim()
        )))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            use std::io::Write;
            use std::os::unix::fs::OpenOptionsExt;
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&file)
                .map_err(|e| Error::io(&file, "create the safe_guard file", e))?;
            f.write_all(ns.as_bytes())
                .map_err(|e| Error::io(&file, "write the safe_guard file", e))?;
            Ok(None)
        }
        Err(e) => Err(Error::io(&file, "read the safe_guard file", e)),
    }
}

/// Validates the data directory. `lock`: the initializer's lock on the db (taken before: a db
/// etcd holds is refused there), handed to a temporary etcd when one replays the WAL.
pub(crate) async fn validate(cfg: &ValidateConfig, lock: &mut DbLock) -> Result<Outcome> {
    let started = Instant::now();
    let outcome = validate_inner(cfg, lock).await?;
    tracing::info!(
        data_dir = %cfg.data_dir.display(),
        mode = ?cfg.mode,
        outcome = %outcome,
        secs = format!("{:.2}", started.elapsed().as_secs_f64()),
        "data directory validated"
    );
    Ok(outcome)
}

async fn validate_inner(cfg: &ValidateConfig, lock: &mut DbLock) -> Result<Outcome> {
    if let Some(ns) = cfg.pod_namespace.as_deref().filter(|n| !n.is_empty()) {
        if let Some(o) = safe_guard(&cfg.data_dir, ns)? {
            return Ok(o);
        }
    }
    if !cfg.data_dir.is_dir() {
        return Ok(Outcome::DataDirectoryNotExist);
    }
    let member = cfg.data_dir.join("member");
    for sub in ["", "snap", "wal"] {
        let d = member.join(sub);
        if !d.is_dir() {
            return Ok(Outcome::DataDirectoryInvStruct(format!(
                "{} is missing",
                d.display()
            )));
        }
    }
    let m2 = member.clone();
    let plan = tokio::task::spawn_blocking(move || bootcheck::check(&m2))
        .await
        .map_err(|e| Error::task("validation worker", e))?;
    let plan = match plan {
        Ok(p) => p,
        Err(refusal) => return Ok(Outcome::DataDirectoryCorrupt(refusal)),
    };
    if let Some((file, offset, why)) = &plan.repair {
        tracing::warn!(
            file = %file.display(),
            keep_bytes = offset,
            reason = %why,
            "the WAL ends in a torn record (an unclean stop): etcd truncates it there when it starts; no acknowledged write is lost"
        );
    }
    for s in &plan.skipped_snaps {
        tracing::warn!(snap = %s, "etcd will skip this raft snapshot file and boot from an older one");
    }
    for w in &plan.warnings {
        tracing::warn!(data_dir = %cfg.data_dir.display(), "{w}");
    }
    if !plan.latent.is_empty() {
        if cfg.mode == Mode::Full {
            return Ok(Outcome::DataDirectoryCorrupt(format!(
                "{} latent problem(s) etcd would not notice when it starts (it could serve wrong data or corrupt the db later), first: {}",
                plan.latent.len(),
                plan.latent[0]
            )));
        }
        tracing::warn!(problems = ?plan.latent, "latent damage etcd does not notice at start; a full validation would condemn this directory");
    }
    let Some(store_cfg) = &cfg.store else {
        return Ok(Outcome::Valid);
    };
    if cfg.cluster_size > 1 {
        return Ok(Outcome::Valid);
    }
    let store = SnapStore::open(store_cfg.clone()).await?;
    let set = store.latest_set().await?;
    if set.full.is_none() {
        return Ok(Outcome::Valid);
    }
    let store_rev = set.last_revision();
    let db_rev = plan.db.revision();
    if db_rev >= store_rev {
        return Ok(Outcome::Valid);
    }
    // behind the store: only WAL entries not yet in the db could close the gap (a single
    // member commits what its log holds when it starts)
    if plan.last_index <= plan.db.consistent_index() {
        return Ok(Outcome::RevisionConsistencyError {
            db: db_rev,
            store: store_rev,
        });
    }
    let Some(tcfg) = &cfg.temp_etcd else {
        return Ok(Outcome::RevisionConsistencyError {
            db: db_rev,
            store: store_rev,
        });
    };
    let mut tcfg = tcfg.clone();
    tcfg.fsync = true;
    lock.release();
    let replayed = revision_after_wal_replay(&tcfg, &cfg.data_dir, store_rev).await;
    lock.reacquire("validation")?;
    match replayed {
        Ok(rev) if rev >= store_rev => Ok(Outcome::Valid),
        Ok(rev) => Ok(Outcome::RevisionConsistencyError {
            db: rev,
            store: store_rev,
        }),
        Err(e) => Ok(Outcome::DataDirectoryCorrupt(format!(
            "etcd could not start on it to replay its WAL: {e}"
        ))),
    }
}

/// etcdbrctl's check: start etcd on the data dir, let it replay its WAL, read the revision
/// (polling up to 60 s for it to reach `want`).
async fn revision_after_wal_replay(
    cfg: &TempEtcdConfig,
    data_dir: &Path,
    want: i64,
) -> Result<i64> {
    let etcd = TempEtcd::start(cfg, data_dir).await?;
    let started = Instant::now();
    let mut rev = 0;
    let opts = etcd_client::ConnectOptions::new().with_connect_timeout(Duration::from_secs(5));
    if let Ok(mut c) = etcd_client::Client::connect([etcd.endpoint.as_str()], Some(opts)).await {
        while started.elapsed() < Duration::from_secs(60) {
            if let Ok(r) = c.get(vec![0u8], None).await {
                rev = r.header().map(|h| h.revision()).unwrap_or(0);
                if rev >= want {
                    break;
                }
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }
    // the revision is read: a slow stop (killed after 30 s) says nothing about the data
    if let Err(e) = etcd.stop().await {
        tracing::warn!(error = %e, "the temporary etcd did not stop cleanly after the WAL replay");
    }
    Ok(rev)
}
