//! The initializer: validate the data directory, and when validation condemns it, restore the
//! latest snapshot set in its place (built in `<data-dir>.part`, swapped in once complete and
//! durable; see [`crate::ondisk::datadir`]).
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

pub mod validate;

use crate::error::{Error, Result};
use crate::etcd::cluster::{self, View};
use crate::ondisk::bootcheck;
use crate::ondisk::datadir::{self, DbLock, WorkLock};
use crate::restore::{self, RestoreConfig};
use crate::store::SnapStore;
use std::time::Instant;
use validate::{Mode, Outcome, ValidateConfig};

#[derive(Debug, Clone)]
pub(crate) struct InitConfig {
    pub(crate) restore: RestoreConfig,
    pub(crate) mode: Mode,
    /// No store configured: validation only, nothing to restore from.
    pub(crate) has_store: bool,
    pub(crate) cluster_size: usize,
    pub(crate) pod_namespace: Option<String>,
    /// To reach the other members of a multi-member cluster (endpoints resolved: the service
    /// endpoints or every member's client URLs).
    pub(crate) cluster: Option<crate::etcd::EtcdConfig>,
    /// Condemned data directories kept aside (`--keep-invalid-data-dirs`).
    pub(crate) keep_invalid_dirs: usize,
}

/// What initialization did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Action {
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

pub(crate) async fn initialize(cfg: &InitConfig) -> Result<(Outcome, Action)> {
    let done = initialize_locked(cfg).await?;
    let request = restore_request(&cfg.restore.data_dir);
    if matches!(done.0, Outcome::RestoreRequested(_)) {
        std::fs::remove_file(&request)
            .map_err(|e| Error::io(&request, "remove the fulfilled restore request", e))?;
        if let Some(parent) = request.parent() {
            datadir::fsync_dir(parent)?;
        }
    }
    Ok(done)
}

async fn initialize_locked(cfg: &InitConfig) -> Result<(Outcome, Action)> {
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
    let request = restore_request(data_dir);
    let requested = request.exists();
    let outcome = if requested {
        Outcome::RestoreRequested(request.display().to_string())
    } else {
        crate::metrics::timed(
            crate::metrics::Op::Validation,
            validate::validate(&vcfg, &mut lock),
        )
        .await?
    };
    drop(tmp);
    if requested {
        tracing::warn!(request = %request.display(), "an operator asked to give up this member's data: it is moved aside and the member is rebuilt from the cluster or the store");
        let (empty, looked_at) = store_state(cfg).await?;
        if empty && cfg.cluster_size <= 1 {
            return Err(Error::Refused(format!(
                "{}: a restore was requested ({}), but {looked_at} holds no backup: nothing was changed; remove the request file to start etcd on its data",
                data_dir.display(),
                request.display()
            )));
        }
    }
    datadir::crash_point("initialize:validated");
    if outcome == Outcome::Valid {
        if let Some((why, view)) = not_a_member_any_more(cfg).await {
            let outcome = Outcome::NotAMember(why);
            let action = join_as_learner(cfg, &outcome, &mut lock, &view).await?;
            return Ok((outcome, action));
        }
        datadir::prune_invalid(data_dir, cfg.keep_invalid_dirs);
        return Ok((outcome, Action::Kept));
    }
    if outcome.is_fatal() {
        return Err(Error::Refused(format!(
            "{}: {outcome}; nothing was changed",
            data_dir.display()
        )));
    }
    if cfg.cluster_size > 1 {
        let action = multi_member(cfg, &outcome, &mut lock).await?;
        return Ok((outcome, action));
    }
    let (empty_store, looked_at) = store_state(cfg).await?;
    if empty_store {
        let action = start_fresh(cfg, &outcome, &mut lock, &looked_at)?;
        return Ok((outcome, action));
    }
    let action = restore_from_store(cfg, &cfg.restore, &outcome, &mut lock, &looked_at).await?;
    tracing::info!(
        secs = format!("{:.1}", started.elapsed().as_secs_f64()),
        "initialization restored the data directory"
    );
    Ok((outcome, action))
}

/// `<data-dir>.etcdbr-restore-requested`: an operator's request (the bootstrap script's
/// `restore-cluster`) that this member give up its data, valid or not, and be rebuilt: from the
/// running cluster if there is one, else with the others from the store. Removed once done.
pub(crate) fn restore_request(data_dir: &std::path::Path) -> std::path::PathBuf {
    datadir::sibling(data_dir, ".etcdbr-restore-requested")
}

/// Whether the store holds no backup, and a description of where it looked.
async fn store_state(cfg: &InitConfig) -> Result<(bool, String)> {
    if !cfg.has_store {
        return Ok((true, "no store configured".into()));
    }
    let store = SnapStore::open(cfg.restore.store.clone()).await?;
    Ok((store.latest_set().await?.full.is_none(), store.describe()))
}

/// No backup to restore: etcd starts empty (the data directory, if any, is moved aside).
fn start_fresh(
    cfg: &InitConfig,
    outcome: &Outcome,
    lock: &mut DbLock,
    looked_at: &str,
) -> Result<Action> {
    let data_dir = &cfg.restore.data_dir;
    if !data_dir.exists() {
        tracing::warn!(
            data_dir = %data_dir.display(),
            store = %looked_at,
            "FRESH CLUSTER: no data directory and no backup in the store looked at; etcd will start EMPTY. If backups exist elsewhere, stop now and point --storage-provider/--store-container/--store-prefix at them"
        );
        return Ok(Action::Fresh);
    }
    lock.confirm("moving the invalid data directory aside")?;
    let to = datadir::move_aside(data_dir, data_dir)?;
    lock.release();
    tracing::warn!(
        data_dir = %data_dir.display(),
        moved_to = %to.display(),
        outcome = %outcome,
        store = %looked_at,
        "invalid data directory and no backup to restore: moved aside, etcd will start FRESH"
    );
    datadir::prune_invalid(data_dir, cfg.keep_invalid_dirs.max(1));
    Ok(Action::MovedAside { to })
}

async fn restore_from_store(
    cfg: &InitConfig,
    rcfg: &RestoreConfig,
    outcome: &Outcome,
    lock: &mut DbLock,
    looked_at: &str,
) -> Result<Action> {
    tracing::info!(data_dir = %rcfg.data_dir.display(), outcome = %outcome, store = %looked_at, initial_cluster = %rcfg.initial_cluster, "restoring the latest backup");
    let op = crate::metrics::Op::Restoration {
        single_node: cfg.cluster_size <= 1,
    };
    let report = crate::metrics::timed(
        op,
        restore::restore_locked(rcfg, Some(lock), cfg.keep_invalid_dirs),
    )
    .await?;
    Ok(Action::Restored {
        revision: report.revision,
    })
}

/// The first member of the initial cluster: the one that restores a cluster whose members all
/// lost their data, as a cluster of one that the others then join.
fn seed(cfg: &InitConfig) -> Option<String> {
    cfg.restore
        .initial_cluster
        .split(',')
        .find_map(|e| e.split_once('=').map(|(n, _)| n.trim().to_string()))
}

/// The initial cluster reduced to this member's own entries (a cluster of one).
fn alone(cfg: &InitConfig) -> String {
    cfg.restore
        .initial_cluster
        .split(',')
        .filter(|e| {
            e.split_once('=')
                .is_some_and(|(n, _)| n.trim() == cfg.restore.name)
        })
        .collect::<Vec<_>>()
        .join(",")
}

async fn observe(cfg: &InitConfig) -> Result<View> {
    let Some(ecfg) = &cfg.cluster else {
        return Err(Error::config(format!(
            "{}: this member belongs to a {}-member cluster, but no endpoint of the other members is known (give --service-endpoints)",
            cfg.restore.data_dir.display(),
            cfg.cluster_size
        )));
    };
    Ok(cluster::observe_until_quorum(ecfg, cfg.cluster_size, 3).await)
}

/// A valid data directory of a multi-member cluster is still this member's only if the running
/// cluster lists its member ID (a removed member's directory is valid and useless: etcd would
/// be refused by its peers, or run alone under an identity nobody knows). `Some(reason)` when
/// the running cluster (one with a leader) says otherwise; nothing is decided without one. One
/// round of questions: a whole cluster restarting must not wait here.
async fn not_a_member_any_more(cfg: &InitConfig) -> Option<(String, View)> {
    if cfg.cluster_size <= 1 {
        return None;
    }
    let me = bootcheck::identity(&cfg.restore.data_dir.join("member"))?;
    let view = cluster::observe(cfg.cluster.as_ref()?, cfg.cluster_size).await;
    let View::Quorum {
        cluster_id,
        members,
        endpoint,
    } = &view
    else {
        return None;
    };
    let why = if *cluster_id != me.cluster_id {
        format!(
            "the data directory belongs to cluster {:x}, the running cluster (via {endpoint}) is {cluster_id:x}",
            me.cluster_id
        )
    } else if !members.iter().any(|m| m.id == me.member_id) {
        format!(
            "the data directory is member {:x}, which the running cluster (via {endpoint}) no longer lists (removed)",
            me.member_id
        )
    } else {
        return None;
    };
    Some((why, view))
}

/// A member of a multi-member cluster without usable data: it joins the running cluster, joins
/// a new cluster still forming, or (all members lost) the first member restores from the store
/// and the others join it.
async fn multi_member(cfg: &InitConfig, outcome: &Outcome, lock: &mut DbLock) -> Result<Action> {
    let data_dir = &cfg.restore.data_dir;
    let me = &cfg.restore.name;
    let peers = &cfg.restore.initial_advertise_peer_urls;
    let view = observe(cfg).await?;
    tracing::info!(outcome = %outcome, cluster = %view.describe(), "this member has no usable data");
    if let View::Quorum { .. } = &view {
        if let Some(m) = view.find(me, peers) {
            // listed but never started: a member of the initial cluster that starts late (a
            // new cluster), or one this sidecar already re-added (a crash before etcd started)
            if m.name.is_empty() && !data_dir.exists() {
                tracing::info!(
                    member = format!("{:x}", m.id),
                    learner = m.is_learner,
                    "the running cluster lists this member, not started yet: etcd joins it"
                );
                return Ok(if m.is_learner {
                    Action::ReAddedAsLearner {
                        old_id: None,
                        new_id: m.id,
                    }
                } else {
                    Action::Fresh
                });
            }
        }
        return join_as_learner(cfg, outcome, lock, &view).await;
    }
    let (empty_store, looked_at) = store_state(cfg).await?;
    match &view {
        View::NoQuorum {
            bootstrapping: true,
            ..
        }
        | View::Unreachable
            if empty_store && !matches!(outcome, Outcome::RestoreRequested(_)) =>
        {
            // a new cluster: every member starts empty with the same initial cluster
            tracing::info!(cluster = %view.describe(), "no running cluster and no backup: this member bootstraps the new cluster with the others");
            start_fresh(cfg, outcome, lock, &looked_at)
        }
        View::NoQuorum { .. } => Err(Error::Cluster(format!(
            "{}: {outcome}; {}. This member cannot rejoin a cluster without a leader, and restoring it alone would split the cluster. Bring the other members back, or follow the runbook's 'quorum lost' procedure",
            data_dir.display(),
            view.describe()
        ))),
        _ => {
            // every other member is silent and backups exist: the first member restores
            let seed = seed(cfg).unwrap_or_default();
            if *me != seed {
                let ecfg = cfg.cluster.as_ref();
                let mut view = view.clone();
                for _ in 0..20 {
                    if let (View::Quorum { .. }, _) | (_, None) = (&view, ecfg) {
                        break;
                    }
                    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
                    if let Some(e) = ecfg {
                        view = cluster::observe(e, cfg.cluster_size).await;
                    }
                }
                if let View::Quorum { .. } = &view {
                    return join_as_learner(cfg, outcome, lock, &view).await;
                }
                return Err(Error::Cluster(format!(
                    "{}: {outcome}; no member of the cluster runs and the store has backups: waiting for {seed} to restore the cluster from {looked_at}; this member then joins it",
                    data_dir.display()
                )));
            }
            // the others may only be restarting (their data is fine): give them time to form
            // a quorum before restoring a new cluster beside it
            if let Some(e) = &cfg.cluster {
                for _ in 0..SEED_GRACE_CHECKS {
                    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
                    let v = cluster::observe(e, cfg.cluster_size).await;
                    match v {
                        View::Quorum { .. } => return join_as_learner(cfg, outcome, lock, &v).await,
                        View::NoQuorum { .. } => {
                            return Err(Error::Cluster(format!(
                                "{}: {outcome}; {}: not restoring a new cluster beside members that hold data. Bring the other members back, or follow the runbook's 'quorum lost' procedure",
                                data_dir.display(),
                                v.describe()
                            )))
                        }
                        View::Unreachable => {}
                    }
                }
            }
            let mut rcfg = cfg.restore.clone();
            rcfg.initial_cluster = alone(cfg);
            tracing::warn!(store = %looked_at, "no member of the cluster runs and none has data: this member (the first of the initial cluster) restores the cluster from the store as a cluster of one; the others join it");
            restore_from_store(cfg, &rcfg, outcome, lock, &looked_at).await
        }
    }
}

/// How many 2 s checks the first member waits for the others before restoring.
const SEED_GRACE_CHECKS: usize = 8;

/// Joins the running cluster as a learner that syncs from the leader (etcdbrctl's multi-member
/// path: the data comes from the leader, not from the store): this member's old entry is
/// removed, its data directory moved aside.
async fn join_as_learner(
    cfg: &InitConfig,
    outcome: &Outcome,
    lock: &mut DbLock,
    view: &View,
) -> Result<Action> {
    let data_dir = &cfg.restore.data_dir;
    let Some(ecfg) = &cfg.cluster else {
        return Err(Error::config(format!(
            "{}: {outcome}; this member belongs to a {}-member cluster and is re-added from the others, but no endpoint of theirs is known (give --service-endpoints)",
            data_dir.display(),
            cfg.cluster_size
        )));
    };
    // the member that answered with a leader first
    let mut endpoints = ecfg.endpoints.clone();
    if let View::Quorum { endpoint, .. } = view {
        endpoints.retain(|e| e != endpoint);
        endpoints.insert(0, endpoint.clone());
    }
    let (mut c, ep, list) = crate::etcd::connect_cluster(ecfg, &endpoints)
        .await
        .map_err(|e| {
            Error::Cluster(format!(
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
        let removing = std::time::Instant::now();
        let removed = |ok: bool| {
            crate::metrics::operation(
                crate::metrics::Op::MemberRemove,
                ok,
                removing.elapsed().as_secs_f64(),
            )
        };
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
                (_, Ok(false)) => {
                    removed(true);
                    break;
                }
                // a refusal (permission, bad request) is final; the rest may pass
                (Err(e), _) | (Ok(_), Err(e)) if tries >= 6 || !e.is_transient() => {
                    removed(false);
                    return Err(e);
                }
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
    let adding = std::time::Instant::now();
    let record_add = |ok: bool| {
        crate::metrics::operation(
            crate::metrics::Op::AddLearner,
            ok,
            adding.elapsed().as_secs_f64(),
        )
    };
    let added = loop {
        match crate::etcd::call(
            &ep,
            "add this member as a learner",
            t,
            c.member_add(peers.clone(), Some(opts.clone())),
        )
        .await
        {
            Ok(r) => {
                record_add(true);
                break r;
            }
            // etcd takes one learner at a time: another member may be catching up
            Err(e) if tries < 12 && e.is_transient() => {
                tries += 1;
                tracing::warn!(error = %e, "adding this member as a learner failed; retrying in 5 s");
                tokio::time::sleep(std::time::Duration::from_secs(5)).await;
            }
            Err(e) => {
                record_add(false);
                return Err(e);
            }
        }
    };
    let new_id = added.member().map(|m| m.id()).unwrap_or(0);
    tracing::info!(
        member = format!("{new_id:x}"),
        "this member was added back as a learner: etcd will sync from the leader"
    );
    Ok(Action::ReAddedAsLearner { old_id, new_id })
}

/// The `/initialization/*` state machine (etcdbrctl's): `New` -start-> `Progress` ->
/// `Successful` or `Failed`. etcdbrctl resets a final state to `New` when it is read, so any
/// client polling the status could take `Successful` from the bootstrap script, which then
/// validated again (or, started once more, never saw it). Here:
/// * `Failed` still resets when read (old bootstrap scripts start again on `New`);
/// * `Successful` stays for every reader until this member's etcd is seen running (the
///   sidecar's role probe), or [`SUCCESS_HOLD`] after its first read, whichever is first;
/// * a start is taken in any state but `Progress` (a bootstrap script that finds a
///   `Successful` it did not ask for starts a validation of its own).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum State {
    New,
    Progress,
    Successful,
    Failed,
}

/// How long a read `Successful` stays readable when etcd is not seen running.
pub(crate) const SUCCESS_HOLD: std::time::Duration = std::time::Duration::from_secs(60);

impl State {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            State::New => "New",
            State::Progress => "Progress",
            State::Successful => "Successful",
            State::Failed => "Failed",
        }
    }
}

#[derive(Debug)]
struct Machine {
    state: State,
    /// When `Successful` was first read.
    read_at: Option<Instant>,
}

/// Runs initializations for the HTTP API, one at a time.
pub(crate) struct Initializer {
    cfg: InitConfig,
    state: std::sync::Arc<std::sync::Mutex<Machine>>,
    /// What the last successful initialization did (`/config` needs to know whether this
    /// member was just added to a running cluster).
    last: std::sync::Arc<std::sync::Mutex<Option<Action>>>,
}

impl Initializer {
    pub(crate) fn new(cfg: InitConfig) -> Self {
        Initializer {
            cfg,
            state: std::sync::Arc::new(std::sync::Mutex::new(Machine {
                state: State::New,
                read_at: None,
            })),
            last: std::sync::Arc::new(std::sync::Mutex::new(None)),
        }
    }

    pub(crate) fn last_action(&self) -> Option<Action> {
        self.last.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Machine> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn in_progress(&self) -> bool {
        self.lock().state == State::Progress
    }

    /// Starts an initialization in `mode` unless one runs; returns whether it started.
    pub(crate) fn start(&self, mode: Mode) -> bool {
        let mut st = self.lock();
        if st.state == State::Progress {
            return false;
        }
        st.state = State::Progress;
        st.read_at = None;
        drop(st);
        let mut cfg = self.cfg.clone();
        cfg.mode = mode;
        let state = self.state.clone();
        let last = self.last.clone();
        tokio::spawn(async move {
            let result = initialize(&cfg).await;
            let next = match &result {
                Ok((outcome, action)) => {
                    tracing::info!(outcome = %outcome, action = ?action, "initialization succeeded");
                    *last.lock().unwrap_or_else(|p| p.into_inner()) = Some(action.clone());
                    State::Successful
                }
                Err(e) => {
                    tracing::error!(error = %e, "initialization failed");
                    State::Failed
                }
            };
            state.lock().unwrap_or_else(|p| p.into_inner()).state = next;
        });
        true
    }

    /// The state, as the machine's rules above read it.
    pub(crate) fn read_status(&self) -> State {
        let mut st = self.lock();
        match st.state {
            State::Failed => {
                st.state = State::New;
                State::Failed
            }
            State::Successful => {
                let first = *st.read_at.get_or_insert_with(Instant::now);
                if first.elapsed() > SUCCESS_HOLD {
                    st.state = State::New;
                    st.read_at = None;
                    State::New
                } else {
                    State::Successful
                }
            }
            other => other,
        }
    }

    /// This member's etcd answers: a `Successful` that was read has been acted on.
    pub(crate) fn etcd_running(&self) {
        let mut st = self.lock();
        if st.state == State::Successful && st.read_at.is_some() {
            st.state = State::New;
            st.read_at = None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn initializer_in(state: State) -> Initializer {
        let restore = RestoreConfig::for_tests();
        let i = Initializer::new(InitConfig {
            restore,
            mode: Mode::Full,
            has_store: false,
            cluster_size: 1,
            pod_namespace: None,
            cluster: None,
            keep_invalid_dirs: 1,
        });
        i.lock().state = state;
        i
    }

    #[test]
    fn a_success_is_not_taken_by_another_reader() {
        let i = initializer_in(State::Successful);
        // a client polling the status, then the bootstrap script: both see it
        assert_eq!(i.read_status(), State::Successful);
        assert_eq!(i.read_status(), State::Successful);
        // etcd runs: the success was acted on
        i.etcd_running();
        assert_eq!(i.read_status(), State::New);
        // never read: etcd running (started by someone else) does not consume it
        let i = initializer_in(State::Successful);
        i.etcd_running();
        assert_eq!(i.read_status(), State::Successful);
        // read long ago and etcd never seen: it expires
        i.lock().read_at = Some(Instant::now() - SUCCESS_HOLD - std::time::Duration::from_secs(1));
        assert_eq!(i.read_status(), State::New);
    }

    #[test]
    fn a_failure_resets_when_read_as_etcdbrctl() {
        let i = initializer_in(State::Failed);
        assert_eq!(i.read_status(), State::Failed);
        assert_eq!(i.read_status(), State::New);
        assert!(!i.in_progress());
    }
}
