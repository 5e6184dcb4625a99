//! The `server` command: the HTTP control plane (axum) and the leadership loop that runs the
//! snapshot job on the etcd leader's sidecar only.
//!
//! Endpoints, status codes and JSON shapes follow etcdbrctl (reference section 2), with these
//! fixes: unknown paths answer 404, wrong methods 405 (with `Allow`), bad or unknown query
//! parameters 400, all with a message; followers answer `/healthz` 200 while their etcd is
//! healthy (etcdbrctl keeps them 503 forever); the leader answers 503 when backups are stale;
//! `/snapshot/latest` is served by any sidecar from the store and tells the backups' age; a
//! follower that cannot reach the leader's sidecar answers 503 (etcdbrctl: 405).
//!
//! Here: the server's configuration and state, and the leadership loop; the endpoints are in
//! [`routes`], the forwarding of snapshot requests to the leader's sidecar in [`proxy`].

pub mod auth;
pub mod etcdconf;
pub mod https;
pub mod listener;
mod proxy;
mod reply;
mod routes;

use crate::error::{Error, Result};
use crate::etcd;
use crate::etcd::defrag;
use crate::etcd::leader::{self, Fence, Role};
use crate::metrics;
use crate::schedule::Schedule;
use crate::snapshot::health::{Health, HealthConfig, RoleState};
use crate::snapshot::job::control::{Control, Observer, Request, StartMode};
use crate::snapshot::job::{self, SnapshotJob};
use crate::store::RotatingStore;
use routes::{router, tls_headers, OnDemand};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{mpsc, watch};

#[derive(Debug, Clone)]
pub(crate) struct ServerConfig {
    pub(crate) job: SnapshotJob,
    pub(crate) host: String,
    pub(crate) port: u16,
    pub(crate) reelection_period: Duration,
    pub(crate) leader_election_timeout: Duration,
    pub(crate) defrag_schedule: Schedule,
    /// For `/initialization/*`.
    pub(crate) init: crate::initialize::InitConfig,
    /// The etcd configuration file `/config` rewrites.
    pub(crate) etcd_config: std::path::PathBuf,
    /// HTTPS: certificate chain, key, client CA (PEM files).
    pub(crate) tls: Option<crate::server::https::TlsFiles>,
    /// Who may call the API.
    pub(crate) auth: crate::server::auth::AuthConfig,
    /// `--on-demand-full-min-interval` (zero: none).
    pub(crate) full_min_interval: Duration,
    /// `--verify-schedule`: restore drills on the leader's sidecar (`None`: none).
    pub(crate) verify_schedule: Option<Schedule>,
}

impl ServerConfig {
    /// Checks the values the server cannot run with; called once, where the configuration is
    /// built from the command line (the job's etcd and store configurations are checked where
    /// they are built).
    pub(crate) fn validate(&self) -> Result<()> {
        if self.reelection_period <= Duration::from_secs(1) {
            return Err(Error::config("--reelection-period must be longer than 1s"));
        }
        if self.leader_election_timeout <= Duration::from_secs(1) {
            return Err(Error::config(
                "--etcd-connection-timeout-leader-election must be longer than 1s",
            ));
        }
        Ok(())
    }
}

struct AppState {
    cfg: ServerConfig,
    health: Arc<Health>,
    /// The running job's request channel (leader only).
    job: Mutex<Option<mpsc::Sender<Request>>>,
    /// For `/snapshot/latest`: opened once, re-opened when the credentials rotate.
    store: tokio::sync::Mutex<RotatingStore>,
    http: reqwest::Client,
    init: crate::initialize::Initializer,
    on_demand: Mutex<OnDemand>,
    /// Told of every object the job stores.
    observer: Arc<dyn Observer>,
}

impl AppState {
    fn job_sender(&self) -> Option<mpsc::Sender<Request>> {
        self.job.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn set_job_sender(&self, tx: Option<mpsc::Sender<Request>>) {
        *self.job.lock().unwrap_or_else(|p| p.into_inner()) = tx;
    }
}

/// A running snapshot job (this sidecar leads).
struct RunningJob {
    abandon: watch::Sender<bool>,
    handle: tokio::task::JoinHandle<Result<()>>,
}

/// Runs the server until `shutdown`: HTTP, the leadership loop, the job while leading,
/// defragmentation on schedule.
pub(crate) async fn run(
    cfg: ServerConfig,
    shutdown: watch::Receiver<bool>,
    observer: Arc<dyn Observer>,
) -> Result<()> {
    // the store must open (credentials, bucket name) before the server says it is up
    let mut store = RotatingStore::new(cfg.job.store.clone());
    store.get().await?;
    let health = Arc::new(Health::new(HealthConfig {
        schedule: cfg.job.schedule.clone(),
        delta_period: cfg.job.delta.map(|d| d.period),
        full_grace: cfg.job.etcd.snapshot_timeout,
    }));
    let http = reqwest::Client::builder()
        .build()
        .map_err(|e| Error::Internal(format!("cannot build the HTTP client: {e}")))?;
    let st = Arc::new(AppState {
        cfg: cfg.clone(),
        health: health.clone(),
        job: Mutex::new(None),
        store: tokio::sync::Mutex::new(store),
        http,
        init: crate::initialize::Initializer::new(cfg.init.clone()),
        observer,
        on_demand: Mutex::new(OnDemand::default()),
    });
    let host = if cfg.host.is_empty() {
        "0.0.0.0"
    } else {
        cfg.host.as_str()
    };
    let addr = format!("{host}:{}", cfg.port);
    // certificates and tokens first: a bad file is a configuration error before anything listens
    let acceptor = match &cfg.tls {
        Some(files) => Some(Arc::new(crate::server::https::TlsReloader::new(
            files.clone(),
        )?)),
        None => None,
    };
    let guard = Arc::new(crate::server::auth::Guard::new(cfg.auth.clone())?);
    if !cfg.auth.enabled() {
        tracing::warn!(
            port = cfg.port,
            "the API takes no credentials: anyone who reaches this port can start an initialization (which may remove this member and move its data aside), take full snapshots and read /config; set --server-token-file or --server-client-ca"
        );
    } else {
        tracing::info!(
            token = cfg.auth.token_file.is_some(),
            client_certificates = cfg.auth.client_ca.is_some(),
            open_paths = cfg.auth.open_paths.join(","),
            "the API requires credentials"
        );
    }
    let listener = crate::server::listener::bind(&addr).await?;
    let (http_stop_tx, http_stop_rx) = watch::channel(false);
    let app = router(st.clone())
        .layer(axum::middleware::from_fn_with_state(
            guard,
            crate::server::auth::require,
        ))
        .layer(axum::middleware::from_fn(
            crate::server::listener::limit_body,
        ));
    let app = if acceptor.is_some() {
        // etcdbrctl's headers on TLS, except for /config and /metrics
        app.layer(axum::middleware::map_response(tls_headers))
    } else {
        app
    };
    tracing::info!(
        address = addr,
        tls = acceptor.is_some(),
        "{} server listening",
        if acceptor.is_some() { "HTTPS" } else { "HTTP" }
    );
    let server = tokio::spawn(crate::server::listener::serve(
        listener,
        acceptor,
        app,
        crate::server::listener::Limits::default(),
        http_stop_rx,
    ));

    metrics::init_defrag_endpoints(&cfg.job.etcd.endpoints);
    let h2 = health.clone();
    let defrag_task = tokio::spawn(defrag::run_scheduled(
        cfg.job.etcd.clone(),
        cfg.defrag_schedule.clone(),
        move || h2.is_leader(),
        shutdown.clone(),
    ));

    let drill_task = cfg.verify_schedule.clone().map(|schedule| {
        tokio::spawn(drill_loop(
            cfg.clone(),
            schedule,
            health.clone(),
            shutdown.clone(),
        ))
    });

    let result = leadership_loop(&cfg, &st, shutdown).await;
    defrag_task.abort();
    if let Some(t) = drill_task {
        t.abort();
    }
    let _ = http_stop_tx.send(true);
    match tokio::time::timeout(Duration::from_secs(10), server).await {
        Ok(Ok(Err(e))) => tracing::warn!(error = %e, "HTTP server stopped with an error"),
        Ok(Err(e)) => tracing::warn!(error = %e, "HTTP server task failed"),
        Err(_) => tracing::warn!("HTTP server did not stop within 10s"),
        _ => {}
    }
    result
}

/// Restore drills on `schedule` while this sidecar's member leads ([`crate::verify`]): the
/// result in the log (the objects named), the metrics, `/snapshot/latest` and, when the
/// backups differ from the cluster, `/healthz`.
async fn drill_loop(
    cfg: ServerConfig,
    schedule: Schedule,
    health: Arc<Health>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut restore = cfg.init.restore.clone();
    // beside the initializer's temporary files, never among them
    restore.temp_dir = restore.temp_dir.join("drill");
    let dcfg = crate::verify::DrillConfig {
        restore,
        etcd: Some(cfg.job.etcd.clone()),
    };
    loop {
        let Some(next) = schedule.next_after(chrono::Utc::now()) else {
            return;
        };
        let wait = (next - chrono::Utc::now())
            .to_std()
            .unwrap_or(Duration::ZERO);
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = crate::stop::flag_set(&mut shutdown) => return,
        }
        if !health.is_leader() {
            continue;
        }
        let started = std::time::Instant::now();
        let (result, revision, detail) = match crate::verify::drill(&dcfg).await {
            Ok(r) => {
                let label = r.verdict.label();
                if label == "mismatch" {
                    tracing::error!(detail = %r.describe(), "restore drill: the backups differ from the cluster");
                } else {
                    tracing::info!(result = label, detail = %r.describe(), "restore drill");
                }
                (label, Some(r.revision), r.describe())
            }
            Err(e) => {
                tracing::warn!(error = %e, "restore drill failed");
                ("failed", None, e.to_string())
            }
        };
        metrics::drill(result, started.elapsed().as_secs_f64());
        health.drill_done(crate::snapshot::health::Drill {
            time: chrono::Utc::now(),
            result,
            revision,
            detail,
        });
    }
}

/// Asks the cluster (the member-operation endpoints) to promote learner `id`.
async fn promote(cfg: &ServerConfig, id: u64) {
    let Some(ecfg) = &cfg.init.cluster else {
        return;
    };
    let t = std::time::Instant::now();
    let result = match etcd::connect_cluster(ecfg, &ecfg.endpoints).await {
        Ok((mut c, ep, _)) => etcd::call(
            &ep,
            "promote this learner",
            cfg.leader_election_timeout,
            c.member_promote(id),
        )
        .await
        .map(|_| ()),
        Err(e) => Err(e),
    };
    metrics::operation(
        metrics::Op::MemberPromote,
        result.is_ok(),
        t.elapsed().as_secs_f64(),
    );
    match result {
        Ok(()) => tracing::info!(
            member = format!("{id:x}"),
            "learner promoted to a voting member"
        ),
        Err(e) => tracing::info!(error = %e, "learner not promoted yet (still catching up?)"),
    }
}

async fn leadership_loop(
    cfg: &ServerConfig,
    st: &Arc<AppState>,
    mut shutdown: watch::Receiver<bool>,
) -> Result<()> {
    let endpoint = cfg.job.etcd.primary().to_string();
    let mut client = None;
    let mut running: Option<RunningJob> = None;
    let mut last_role: Option<RoleState> = None;
    loop {
        if *shutdown.borrow() {
            break;
        }
        let role = probe(cfg, &endpoint, &mut client).await;
        if role.is_ok() {
            st.init.etcd_running();
        }
        st.health
            .set_role(role.as_ref().copied().map_err(|e| e.to_string()));
        let now_role = match &role {
            Ok(r) if r.is_leader() => RoleState::Leader,
            Ok(_) => RoleState::Follower,
            Err(_) => RoleState::Unknown,
        };
        if last_role != Some(now_role) {
            if let (Ok(_), Some(c)) = (&role, client.as_mut()) {
                let t = cfg.leader_election_timeout;
                if let Ok(ms) = etcd::call(&endpoint, "list members", t, c.member_list()).await {
                    if let Some(m) = metrics::get() {
                        m.cluster_size.set(ms.members().len() as i64);
                    }
                }
            }
            match &role {
                Ok(r) => {
                    tracing::info!(role = ?now_role, member = format!("{:x}", r.member_id), leader = format!("{:x}", r.leader_id), term = r.raft_term, "etcd role")
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot read this member's role; not snapshotting until it answers")
                }
            }
            last_role = Some(now_role);
        }
        // a re-added member joins as a learner: promote it once it has caught up (etcd refuses
        // until then; retried every period), as etcdbrctl. A learner does not serve the call
        // itself: it goes to the other members.
        if let Ok(r) = &role {
            if r.is_learner && !r.is_leader() {
                promote(cfg, r.member_id).await;
            }
        }
        // a job that ended by itself (configuration error) is fatal; otherwise restarted
        if let Some(j) = running.as_ref() {
            if j.handle.is_finished() {
                if let Some(j) = running.take() {
                    st.set_job_sender(None);
                    match j.handle.await {
                        Ok(Err(e @ Error::Config(_))) => return Err(e),
                        Ok(Err(e)) => tracing::error!(error = %e, "the snapshot job stopped"),
                        _ => {}
                    }
                }
            }
        }
        match (now_role, running.is_some()) {
            (RoleState::Leader, false) => running = Some(start_job(cfg, st, &shutdown)),
            (RoleState::Follower | RoleState::Unknown, true) => {
                if let Some(j) = running.take() {
                    tracing::info!("no longer the leader's sidecar: stopping the snapshot job");
                    st.set_job_sender(None);
                    let _ = j.abandon.send(true);
                    if tokio::time::timeout(Duration::from_secs(30), j.handle)
                        .await
                        .is_err()
                    {
                        tracing::warn!("the snapshot job did not stop within 30s");
                    }
                }
            }
            _ => {}
        }
        tokio::select! {
            _ = tokio::time::sleep(cfg.reelection_period) => {}
            _ = crate::stop::flag_set(&mut shutdown) => {}
        }
    }
    // SIGTERM: the job writes its final delta (bounded by its flush timeout), then stops.
    if let Some(j) = running.take() {
        st.set_job_sender(None);
        let limit = cfg
            .job
            .delta
            .map(|d| d.flush_timeout)
            .unwrap_or(Duration::ZERO)
            + Duration::from_secs(10);
        match tokio::time::timeout(limit, j.handle).await {
            Ok(Ok(Err(e))) => tracing::error!(error = %e, "the snapshot job failed while stopping"),
            Err(_) => tracing::warn!("the snapshot job did not stop within {limit:?}"),
            _ => {}
        }
    }
    tracing::info!("stopped");
    Ok(())
}

async fn probe(
    cfg: &ServerConfig,
    endpoint: &str,
    client: &mut Option<etcd_client::Client>,
) -> Result<Role> {
    if client.is_none() {
        let mut c = cfg.job.etcd.clone();
        c.connection_timeout = cfg.leader_election_timeout;
        *client = Some(etcd::connect_one(&c, endpoint).await?);
    }
    let c = client
        .as_mut()
        .ok_or_else(|| Error::Internal("no etcd client after connecting".into()))?;
    let r = leader::probe(c, endpoint, cfg.leader_election_timeout).await;
    if r.is_err() {
        *client = None;
    }
    r
}

fn start_job(
    cfg: &ServerConfig,
    st: &Arc<AppState>,
    shutdown: &watch::Receiver<bool>,
) -> RunningJob {
    let (abandon_tx, abandon) = watch::channel(false);
    let (tx, rx) = mpsc::channel(8);
    st.set_job_sender(Some(tx));
    let ctl = Control {
        start: StartMode::Decide,
        fence: Fence::Leader,
        health: st.health.clone(),
        requests: Some(rx),
        shutdown: shutdown.clone(),
        abandon,
        observer: st.observer.clone(),
    };
    let job = cfg.job.clone();
    let grace = cfg.reelection_period;
    let mut abandon2 = ctl.abandon.clone();
    let mut shutdown2 = ctl.shutdown.clone();
    tracing::info!(
        grace = ?grace,
        "this sidecar's etcd member leads: starting the snapshot job after one re-election period"
    );
    let handle = tokio::spawn(async move {
        // the previous leader's sidecar sees the change within one period (module leader)
        tokio::select! {
            _ = tokio::time::sleep(grace) => {}
            _ = crate::stop::flag_set(&mut abandon2) => return Ok(()),
            _ = crate::stop::flag_set(&mut shutdown2) => return Ok(()),
        }
        job::run_job(job, ctl).await
    });
    RunningJob {
        abandon: abandon_tx,
        handle,
    }
}
