//! The initializer: validate the data directory, and when validation condemns it, restore the
//! latest snapshot set in its place (built in `<data-dir>.part`, swapped in once complete and
//! durable; see [`crate::datadir`]).
//!
//! Safety, beyond etcdbrctl:
//! * The whole run holds the data directory's work lock, and from validation until the swap
//!   (or the member removal) bbolt's lock on the db: an etcd started meanwhile waits, and one
//!   already running makes the initialization fail with nothing changed.
//! * A condemned directory is never deleted: it is moved aside to
//!   `<data-dir>.invalid-<unix time>` (at most `--keep-invalid-data-dirs` are kept), whether a
//!   backup replaces it, nothing does (empty store: etcd starts fresh) or the member is re-added
//!   as a learner.
//! * A wrong volume or a locked db fails without touching anything.

use crate::datadir::{self, DbLock, WorkLock};
use crate::error::{Error, Result};
use crate::restore::{self, RestoreConfig};
use crate::store::SnapStore;
use crate::validate::{self, Mode, Outcome, ValidateConfig};
use std::time::Instant;

#[derive(Debug, Clone)]
pub struct InitConfig {
    pub restore: RestoreConfig,
    pub mode: Mode,
    /// No store configured: validation only, nothing to restore from.
    pub has_store: bool,
    pub cluster_size: usize,
    pub pod_namespace: Option<String>,
    /// To reach the other members of a multi-member cluster (endpoints resolved: the service
    /// endpoints or every member's client URLs).
    pub cluster: Option<crate::etcd::EtcdConfig>,
    /// Condemned data directories kept aside (`--keep-invalid-data-dirs`).
    pub keep_invalid_dirs: usize,
}

/// What initialization did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// The data directory was valid and is left as it is.
    Kept,
    /// Fresh cluster: no data directory and nothing in the store.
    Fresh,
    /// Restored from the store to this revision.
    Restored { revision: i64 },
    /// Condemned, with nothing to restore from: moved aside so etcd starts fresh.
    MovedAside { to: std::path::PathBuf },
    /// A member of a multi-member cluster with bad data: removed from the cluster, its data
    /// directory moved aside, added back as a learner that syncs from the leader (the sidecar
    /// promotes it once it caught up).
    ReAddedAsLearner { old_id: Option<u64>, new_id: u64 },
}

pub async fn initialize(cfg: &InitConfig) -> Result<(Outcome, Action)> {
    let started = Instant::now();
    let data_dir = &cfg.restore.data_dir;
    let _work = WorkLock::acquire(data_dir)?;
    let mut lock = DbLock::acquire(data_dir)?;
    // leftovers of dead restores go now, whatever the outcome; the temporary etcd that may
    // replay the WAL logs into a private temp dir (nothing created in the working directory)
    datadir::clean_temp_dirs(&cfg.restore.temp_dir);
    let tmp = tempfile::Builder::new()
        .prefix("etcdbr-validate-")
        .tempdir()
        .map_err(|e| Error::io(std::env::temp_dir(), "create a temp dir", e))?;
    let temp_etcd = restore::temp_etcd_config(&cfg.restore, tmp.path().join("etcd.log")).ok();
    let vcfg = ValidateConfig {
        data_dir: data_dir.clone(),
        mode: cfg.mode,
        store: cfg.has_store.then(|| cfg.restore.store.clone()),
        cluster_size: cfg.cluster_size,
        pod_namespace: cfg.pod_namespace.clone(),
        temp_etcd,
    };
    let outcome = validate::validate(&vcfg, &mut lock).await?;
    drop(tmp);
    datadir::crash_point("initialize:validated");
    if outcome == Outcome::Valid {
        datadir::prune_invalid(data_dir, cfg.keep_invalid_dirs);
        return Ok((outcome, Action::Kept));
    }
    if outcome.is_fatal() {
        return Err(Error::Other(format!(
            "{}: {outcome}; nothing was changed",
            data_dir.display()
        )));
    }
    if cfg.cluster_size > 1 {
        let action = readd_as_learner(cfg, &outcome, &mut lock).await?;
        return Ok((outcome, action));
    }
    let store = if cfg.has_store {
        Some(SnapStore::open(cfg.restore.store.clone()).await?)
    } else {
        None
    };
    let empty_store = match &store {
        Some(s) => s.latest_set().await?.full.is_none(),
        None => true,
    };
    let looked_at = store
        .as_ref()
        .map(|s| s.describe())
        .unwrap_or_else(|| "no store configured".into());
    if empty_store {
        if !data_dir.exists() {
            tracing::warn!(
                data_dir = %data_dir.display(),
                store = %looked_at,
                "FRESH CLUSTER: no data directory and no backup in the store looked at; etcd will start EMPTY. If backups exist elsewhere, stop now and point --storage-provider/--store-container/--store-prefix at them"
            );
            return Ok((outcome, Action::Fresh));
        }
        lock.confirm("moving the invalid data directory aside")?;
        let to = datadir::move_aside(data_dir, data_dir)?;
        drop(lock);
        tracing::warn!(
            data_dir = %data_dir.display(),
            moved_to = %to.display(),
            outcome = %outcome,
            store = %looked_at,
            "invalid data directory and no backup to restore: moved aside, etcd will start FRESH"
        );
        datadir::prune_invalid(data_dir, cfg.keep_invalid_dirs.max(1));
        return Ok((outcome, Action::MovedAside { to }));
    }
    tracing::info!(data_dir = %data_dir.display(), outcome = %outcome, store = %looked_at, "restoring the latest backup");
    let report =
        restore::restore_locked(&cfg.restore, Some(&mut lock), cfg.keep_invalid_dirs).await?;
    tracing::info!(
        revision = report.revision,
        secs = format!("{:.1}", started.elapsed().as_secs_f64()),
        "initialization restored the data directory"
    );
    Ok((
        outcome,
        Action::Restored {
            revision: report.revision,
        },
    ))
}

/// The multi-member path (etcdbrctl's): the data comes from the leader, not from the store.
async fn readd_as_learner(
    cfg: &InitConfig,
    outcome: &Outcome,
    lock: &mut DbLock,
) -> Result<Action> {
    let data_dir = &cfg.restore.data_dir;
    let Some(ecfg) = &cfg.cluster else {
        return Err(Error::config(format!(
            "{}: {outcome}; this member belongs to a {}-member cluster and is re-added from the others, but no endpoint of theirs is known (give --service-endpoints)",
            data_dir.display(),
            cfg.cluster_size
        )));
    };
    let (mut c, ep, list) = crate::etcd::connect_cluster(ecfg, &ecfg.endpoints)
        .await
        .map_err(|e| {
            Error::Other(format!(
                "{}: {outcome}; cannot reach the rest of the cluster to re-add this member: {e}",
                data_dir.display()
            ))
        })?;
    let peers = &cfg.restore.initial_advertise_peer_urls;
    let me = list
        .members()
        .iter()
        .find(|m| m.name() == cfg.restore.name || m.peer_urls().iter().any(|u| peers.contains(u)));
    // bounded attempts: right after this member died (it may have led) a proposal can be lost
    // in the leader change; the member list says whether a timed-out removal applied anyway
    let t = ecfg
        .connection_timeout
        .min(std::time::Duration::from_secs(10));
    let old_id = me.map(|m| m.id());
    lock.confirm("removing this member from the cluster")?;
    if let Some(id) = old_id {
        let mut tries = 0;
        loop {
            let r = crate::etcd::call(
                &ep,
                &format!("remove member {id:x}"),
                t,
                c.member_remove(id),
            )
            .await;
            let listed = crate::etcd::call(&ep, "member list", t, c.member_list())
                .await
                .map(|l| l.members().iter().any(|m| m.id() == id));
            match (r, listed) {
                (_, Ok(false)) => break,
                (Err(e), _) | (Ok(_), Err(e)) if tries >= 6 => return Err(e),
                (r, _) => {
                    tries += 1;
                    tracing::warn!(error = ?r.err().map(|e| e.to_string()), "removing this member did not complete; retrying in 2 s");
                    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
                }
            }
        }
        tracing::warn!(member = format!("{id:x}"), name = %cfg.restore.name, outcome = %outcome, "removed this member from the cluster: its data is bad");
    }
    if data_dir.exists() {
        lock.confirm("moving the bad data directory aside")?;
        let to = datadir::move_aside(data_dir, data_dir)?;
        tracing::warn!(moved_to = %to.display(), "the bad data directory was moved aside");
        datadir::prune_invalid(data_dir, cfg.keep_invalid_dirs.max(1));
    }
    let opts = etcd_client::MemberAddOptions::new().with_is_learner();
    let mut tries = 0;
    let added = loop {
        match crate::etcd::call(
            &ep,
            "add this member as a learner",
            t,
            c.member_add(peers.clone(), Some(opts.clone())),
        )
        .await
        {
            Ok(r) => break r,
            Err(e) if tries < 6 => {
                tries += 1;
                tracing::warn!(error = %e, "adding this member as a learner failed; retrying in 5 s");
                tokio::time::sleep(std::time::Duration::from_secs(5)).await;
            }
            Err(e) => return Err(e),
        }
    };
    let new_id = added.member().map(|m| m.id()).unwrap_or(0);
    tracing::info!(
        member = format!("{new_id:x}"),
        "this member was added back as a learner: etcd will sync from the leader"
    );
    Ok(Action::ReAddedAsLearner { old_id, new_id })
}

/// The `/initialization/*` state machine (etcdbrctl's): `New` -start-> `Progress` -> `Successful`
/// or `Failed`; reading a final state resets it to `New`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    New,
    Progress,
    Successful,
    Failed,
}

impl State {
    pub fn as_str(self) -> &'static str {
        match self {
            State::New => "New",
            State::Progress => "Progress",
            State::Successful => "Successful",
            State::Failed => "Failed",
        }
    }
}

/// Runs initializations for the HTTP API, one at a time.
pub struct Initializer {
    cfg: InitConfig,
    state: std::sync::Arc<std::sync::Mutex<State>>,
}

impl Initializer {
    pub fn new(cfg: InitConfig) -> Self {
        Initializer {
            cfg,
            state: std::sync::Arc::new(std::sync::Mutex::new(State::New)),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn in_progress(&self) -> bool {
        *self.lock() == State::Progress
    }

    /// Starts an initialization in `mode` if none ran since the last final state was read;
    /// returns whether it started (otherwise nothing happens, as etcdbrctl).
    pub fn start(&self, mode: Mode) -> bool {
        let mut st = self.lock();
        if *st != State::New {
            return false;
        }
        *st = State::Progress;
        drop(st);
        let mut cfg = self.cfg.clone();
        cfg.mode = mode;
        let state = self.state.clone();
        tokio::spawn(async move {
            let result = initialize(&cfg).await;
            let next = match &result {
                Ok((outcome, action)) => {
                    tracing::info!(outcome = %outcome, action = ?action, "initialization succeeded");
                    State::Successful
                }
                Err(e) => {
                    tracing::error!(error = %e, "initialization failed");
                    State::Failed
                }
            };
            *state.lock().unwrap_or_else(|p| p.into_inner()) = next;
        });
        true
    }

    /// The state; a final state is reported once, then the machine is `New` again.
    pub fn read_status(&self) -> State {
        let mut st = self.lock();
        let now = *st;
        if matches!(now, State::Successful | State::Failed) {
            *st = State::New;
        }
        now
    }
}
