//! Start-up validation of an etcd data directory (etcdbrctl's `sanity` and `full` modes), read
//! natively and read-only: the bbolt db without taking etcd's lock (a held lock is reported: etcd
//! is still running on it), the WAL's CRC chain and the `.snap` files, without starting etcd
//! (except, as etcdbrctl, to let etcd replay committed WAL entries when only they could bring
//! the db up to the store's revision).

use crate::bbolt::Db;
use crate::error::{Error, Result};
use crate::replay::{TempEtcd, TempEtcdConfig};
use crate::schema;
use crate::store::{SnapStore, StoreConfig};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
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
pub enum Outcome {
    Valid,
    DataDirectoryNotExist,
    DataDirectoryInvStruct(String),
    DataDirectoryCorrupt(String),
    BoltDbCorrupt(String),
    RevisionConsistencyError { db: i64, store: i64 },
    WrongVolumeMounted(String),
    FailToOpenBoltDb(String),
}

impl Outcome {
    /// Whether the initializer must not act (an operator must look).
    pub fn is_fatal(&self) -> bool {
        matches!(
            self,
            Outcome::WrongVolumeMounted(_) | Outcome::FailToOpenBoltDb(_)
        )
    }
}

impl std::fmt::Display for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Outcome::Valid => f.write_str("valid"),
            Outcome::DataDirectoryNotExist => f.write_str("the data directory does not exist"),
            Outcome::DataDirectoryInvStruct(m) => write!(f, "invalid structure: {m}"),
            Outcome::DataDirectoryCorrupt(m) => write!(f, "corrupt: {m}"),
            Outcome::BoltDbCorrupt(m) => write!(f, "corrupt db: {m}"),
            Outcome::RevisionConsistencyError { db, store } => write!(
                f,
                "the db is at revision {db}, behind the latest backup at {store}: data would be lost"
            ),
            Outcome::WrongVolumeMounted(m) => write!(f, "wrong volume mounted: {m}"),
            Outcome::FailToOpenBoltDb(m) => write!(f, "cannot open the db: {m}"),
        }
    }
}

#[derive(Debug, Clone)]
pub struct ValidateConfig {
    pub data_dir: PathBuf,
    pub mode: Mode,
    /// The backups; `None`: no revision check.
    pub store: Option<StoreConfig>,
    /// Members in the etcd config's initial cluster: above 1, no revision check (the member
    /// catches up from the leader).
    pub cluster_size: usize,
    /// `POD_NAMESPACE`: enables the `safe_guard` check of the volume.
    pub pod_namespace: Option<String>,
    /// To let etcd replay committed WAL entries when the db is behind the store.
    pub temp_etcd: Option<TempEtcdConfig>,
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

/// Validates the data directory.
pub async fn validate(cfg: &ValidateConfig) -> Result<Outcome> {
    let started = Instant::now();
    let outcome = validate_inner(cfg).await?;
    tracing::info!(
        data_dir = %cfg.data_dir.display(),
        mode = ?cfg.mode,
        outcome = %outcome,
        secs = format!("{:.2}", started.elapsed().as_secs_f64()),
        "data directory validated"
    );
    Ok(outcome)
}

async fn validate_inner(cfg: &ValidateConfig) -> Result<Outcome> {
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
    let db_path = member.join("snap/db");
    // etcd holds an exclusive flock on its db while it runs: never judge (or restore over) it
    if let Ok(f) = std::fs::File::open(&db_path) {
        if let Err(std::fs::TryLockError::WouldBlock) = f.try_lock_shared() {
            return Ok(Outcome::FailToOpenBoltDb(format!(
                "{} is locked: etcd is still running on this data directory; stop it first",
                db_path.display()
            )));
        }
    }
    let path2 = db_path.clone();
    let mode = cfg.mode;
    let db = tokio::task::spawn_blocking(move || read_db(&path2, mode))
        .await
        .map_err(|e| Error::Other(format!("validation worker failed: {e}")))?;
    let (revs, problems) = match db {
        Ok(x) => x,
        Err(o) => return Ok(o),
    };
    if let Some(p) = problems.first() {
        return Ok(Outcome::DataDirectoryCorrupt(format!(
            "{}: {} structural problem(s), first: {p}",
            db_path.display(),
            problems.len()
        )));
    }
    if mode == Mode::Full {
        let wal = match crate::wal::read_wal(&member.join("wal")) {
            Ok(w) => w,
            Err(e) => return Ok(Outcome::DataDirectoryCorrupt(format!("WAL: {e}"))),
        };
        // a newer .snap without its WAL record (a crash between the two writes) is skipped by
        // etcd 3.5, as here; only when no .snap is usable can etcd not boot
        match crate::wal::usable_snap(&member.join("snap"), &wal) {
            Err(e) => return Ok(Outcome::DataDirectoryCorrupt(format!("snap: {e}"))),
            Ok(Some((index, _term))) => {
                let ci = revs.consistent_index.unwrap_or(0);
                if ci != 0 && ci < index {
                    return Ok(Outcome::DataDirectoryCorrupt(format!(
                        "the db's consistent index {ci} is behind the .snap index {index}"
                    )));
                }
            }
            Ok(None) => {}
        }
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
    let db_rev = revs.effective();
    if db_rev >= store_rev {
        return Ok(Outcome::Valid);
    }
    // behind the store: only committed WAL entries not yet in the db could close the gap
    let pending = match crate::wal::read_wal(&member.join("wal")) {
        Ok(w) => w.commit > revs.consistent_index.unwrap_or(0),
        Err(_) => false,
    };
    if !pending {
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
    match revision_after_wal_replay(tcfg, &cfg.data_dir, store_rev).await {
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

/// Opens the db (any error: corrupt) and reads its revisions: with `Full` on a walk of every
/// page (the structural check), with `Sanity` from a few pages.
fn read_db(
    path: &Path,
    mode: Mode,
) -> std::result::Result<(schema::Revisions, Vec<crate::bbolt::Problem>), Outcome> {
    let db = Db::open(path).map_err(|e| Outcome::BoltDbCorrupt(e.to_string()))?;
    match mode {
        Mode::Full => {
            let (st, problems) = schema::status_checked(&db);
            Ok(((&st).into(), problems))
        }
        Mode::Sanity => schema::revisions(&db)
            .map(|r| (r, Vec::new()))
            .map_err(|e| Outcome::BoltDbCorrupt(e.to_string())),
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
    etcd.stop().await?;
    Ok(rev)
}
