//! The `server` command: the HTTP control plane (axum) and the leadership loop that runs the
//! snapshot job on the etcd leader's sidecar only.
//!
//! Endpoints, status codes and JSON shapes follow etcdbrctl (reference section 2), with these
//! fixes: unknown paths answer 404, wrong methods 405 (with `Allow`), bad or unknown query
//! parameters 400, all with a message; followers answer `/healthz` 200 while their etcd is
//! healthy (etcdbrctl keeps them 503 forever); the leader answers 503 when backups are stale;
//! `/snapshot/latest` is served by any sidecar from the store and tells the backups' age; a
//! follower that cannot reach the leader's sidecar answers 503 (etcdbrctl: 405).

pub mod auth;
pub mod etcdconf;
pub mod https;
pub mod listener;

use crate::error::{Error, Result};
use crate::etcd;
use crate::etcd::defrag;
use crate::etcd::leader::{self, Fence, Role};
use crate::format::layout::Snapshot;
use crate::metrics;
use crate::schedule::Schedule;
use crate::snapshot::health::{Health, HealthConfig, RoleState};
use crate::snapshot::job::control::{Control, Observer, Request, StartMode};
use crate::snapshot::job::{self, SnapshotJob};
use crate::store::RotatingStore;
use axum::extract::{OriginalUri, RawQuery, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use chrono::Utc;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot, watch};

/// Header set on requests a follower forwards to the leader's sidecar: never forwarded twice.
const PROXIED_HEADER: &str = "x-etcdbr-proxied";

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

/// What an on-demand full snapshot gave, shared by every caller that asked for it meanwhile.
#[derive(Debug, Clone)]
enum Outcome {
    Done(serde_json::Value),
    Failed(StatusCode, String),
}

impl Outcome {
    fn response(self) -> Response {
        match self {
            Outcome::Done(v) => json(StatusCode::OK, &v),
            Outcome::Failed(code, msg) => text(code, msg),
        }
    }
}

type SharedFull = futures::future::Shared<futures::future::BoxFuture<'static, Outcome>>;

/// On-demand fulls: the one in flight (and whether it is final), when the last one ended.
#[derive(Default)]
struct OnDemand {
    inflight: Option<(bool, SharedFull)>,
    last_done: Option<std::time::Instant>,
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

fn text(code: StatusCode, msg: impl Into<String>) -> Response {
    let mut m = msg.into();
    m.push('\n');
    (
        code,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        m,
    )
        .into_response()
}

fn json(code: StatusCode, v: &impl serde::Serialize) -> Response {
    match serde_json::to_string(v) {
        Ok(body) => (code, [(header::CONTENT_TYPE, "application/json")], body).into_response(),
        Err(e) => text(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("cannot encode the response: {e}"),
        ),
    }
}

/// Go's `strconv.ParseBool`.
fn parse_go_bool(s: &str) -> Option<bool> {
    match s {
        "1" | "t" | "T" | "TRUE" | "true" | "True" => Some(true),
        "0" | "f" | "F" | "FALSE" | "false" | "False" => Some(false),
        _ => None,
    }
}

/// Parses the query string, refusing parameters not in `allowed` (a typo such as `finall=true`
/// must not silently take a non-final snapshot).
fn query_params(
    raw: &Option<String>,
    allowed: &[&str],
) -> std::result::Result<Vec<(String, String)>, Box<Response>> {
    let pairs: Vec<(String, String)> = raw
        .as_deref()
        .map(|q| {
            url::form_urlencoded::parse(q.as_bytes())
                .into_owned()
                .collect()
        })
        .unwrap_or_default();
    for (k, _) in &pairs {
        if !allowed.contains(&k.as_str()) {
            let known = if allowed.is_empty() {
                "this endpoint takes no parameters".to_string()
            } else {
                format!("known parameters: {}", allowed.join(", "))
            };
            return Err(Box::new(text(
                StatusCode::BAD_REQUEST,
                format!("unknown query parameter {k:?}; {known}"),
            )));
        }
    }
    Ok(pairs)
}

async fn healthz(State(st): State<Arc<AppState>>, RawQuery(q): RawQuery) -> Response {
    if let Err(r) = query_params(&q, &[]) {
        return *r;
    }
    let mut rep = st.health.report();
    if st.init.in_progress() {
        // etcd is (re)built under it: not healthy until the initialization ends
        rep.health = false;
    }
    let code = if rep.health {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    json(code, &rep)
}

/// `/initialization/start?mode=full|sanity` (default full): starts an initialization when the
/// state is `New`, else does nothing; 200 with an empty body either way (etcdbrctl's contract).
/// An unknown mode is a 400, and starts nothing.
async fn initialization_start(State(st): State<Arc<AppState>>, RawQuery(q): RawQuery) -> Response {
    // `failbelowrevision`: sent by older bootstrap images, accepted by etcdbrctl and never
    // used by it; refusing it would leave their etcd never started
    let params = match query_params(&q, &["mode", "failbelowrevision"]) {
        Ok(p) => p,
        Err(r) => return *r,
    };
    if let Some((_, v)) = params.iter().find(|(k, _)| k == "failbelowrevision") {
        // a revision or nothing: anything else is not what an old bootstrap image sends
        if !v.is_empty() && v.parse::<i64>().is_err() {
            return text(
                StatusCode::BAD_REQUEST,
                "failbelowrevision: not a revision (an integer); it is ignored anyway: leave it out",
            );
        }
        tracing::info!(value = %v, "/initialization/start: failbelowrevision is accepted for compatibility and ignored (etcdbrctl ignores it too)");
    }
    let mode = match params
        .iter()
        .find(|(k, _)| k == "mode")
        .map(|(_, v)| v.as_str())
    {
        None | Some("") => crate::initialize::validate::Mode::Full,
        Some(m) => match m.parse() {
            Ok(m) => m,
            Err(e) => return text(StatusCode::BAD_REQUEST, format!("mode: {e}")),
        },
    };
    if !st.init.start(mode) {
        tracing::info!("initialization requested while one is in progress or unread: ignored");
    }
    StatusCode::OK.into_response()
}

/// `/initialization/status`: plain text `New`, `Progress`, `Successful` or `Failed`, no newline.
async fn initialization_status(State(st): State<Arc<AppState>>, RawQuery(q): RawQuery) -> Response {
    if let Err(r) = query_params(&q, &[]) {
        return *r;
    }
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        st.init.read_status().as_str(),
    )
        .into_response()
}

/// `/config`: the etcd configuration rewritten for this member (module `etcdconf`), as YAML;
/// also written to `$HOME/etcd.conf.yaml` (0600) as etcdbrctl does.
async fn config_handler(State(st): State<Arc<AppState>>, RawQuery(q): RawQuery) -> Response {
    if let Err(r) = query_params(&q, &[]) {
        return *r;
    }
    let fail = |e: Error| {
        tracing::warn!(error = %e, "/config failed");
        text(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())
    };
    let conf = match crate::server::etcdconf::read(&st.cfg.etcd_config) {
        Ok(c) => c,
        Err(e) => return fail(e),
    };
    let member = std::env::var("POD_NAME")
        .ok()
        .filter(|n| !n.is_empty())
        .or_else(|| {
            conf.get("name")
                .and_then(|v| v.as_str())
                .map(str::to_string)
        })
        .unwrap_or_else(|| st.cfg.init.restore.name.clone());
    let size = crate::server::etcdconf::initial_cluster(&conf).len();
    let view = match &st.cfg.init.cluster {
        Some(c) if size > 1 => Some(crate::etcd::cluster::observe_until_quorum(c, size, 2).await),
        _ => None,
    };
    if let Some(v) = &view {
        tracing::info!(cluster = %v.describe(), "/config: the running cluster");
    }
    let running = view.as_ref().and_then(|v| v.members());
    // a member just added to the running cluster must be told `existing` and that cluster's
    // members: without an answer from it, `new` would bootstrap a cluster of its own
    if let (Some(v), None) = (&view, running) {
        if let Some(crate::initialize::Action::ReAddedAsLearner { new_id, .. }) =
            st.init.last_action()
        {
            let msg = format!(
                "this member was added to the running cluster as learner {new_id:x}, but no member with a leader answers now ({}): retry",
                v.describe()
            );
            tracing::warn!("/config: {msg}");
            return text(StatusCode::SERVICE_UNAVAILABLE, msg);
        }
    }
    let body = match crate::server::etcdconf::rewrite(conf, &member, running)
        .and_then(|m| crate::server::etcdconf::to_yaml(&m))
    {
        Ok(b) => b,
        Err(e) => return fail(e),
    };
    if let Some(home) = std::env::var_os("HOME") {
        let out = std::path::Path::new(&home).join("etcd.conf.yaml");
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let written = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            // a link planted in $HOME must not redirect the write
            .custom_flags(libc::O_NOFOLLOW)
            .open(&out)
            .and_then(|mut f| f.write_all(body.as_bytes()));
        if let Err(e) = written {
            tracing::warn!(file = %out.display(), error = %e, "cannot write the rewritten etcd configuration");
        }
    }
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/yaml")],
        body,
    )
        .into_response()
}

async fn metrics_handler(State(st): State<Arc<AppState>>) -> Response {
    st.health.report(); // refreshes the staleness gauges
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        metrics::render(),
    )
        .into_response()
}

#[derive(serde::Serialize)]
struct Latest {
    #[serde(rename = "fullSnapshot")]
    full: Option<Snapshot>,
    #[serde(rename = "deltaSnapshots")]
    deltas: Option<Vec<Snapshot>>,
    /// Age of the latest full snapshot, seconds (etcdbr extension).
    #[serde(rename = "fullSnapshotAgeSeconds")]
    full_age: Option<i64>,
    /// Age of the newest snapshot of the set (full or delta), seconds (etcdbr extension).
    #[serde(rename = "latestSnapshotAgeSeconds")]
    latest_age: Option<i64>,
    /// Revision the latest set restores to (etcdbr extension).
    #[serde(rename = "latestRevision")]
    latest_revision: i64,
}

async fn snapshot_latest(State(st): State<Arc<AppState>>, RawQuery(q): RawQuery) -> Response {
    if let Err(r) = query_params(&q, &[]) {
        return *r;
    }
    let store = st.store.lock().await.get().await.cloned();
    let set = match store {
        Ok(s) => s.latest_set().await,
        Err(e) => Err(e),
    };
    match set {
        Ok(set) => {
            let now = Utc::now();
            let newest = set.deltas.last().or(set.full.as_ref());
            let body = Latest {
                full_age: set
                    .full
                    .as_ref()
                    .map(|f| (now - f.created_on).num_seconds()),
                latest_age: newest.map(|s| (now - s.created_on).num_seconds()),
                latest_revision: set.last_revision(),
                full: set.full,
                deltas: (!set.deltas.is_empty()).then_some(set.deltas),
            };
            json(StatusCode::OK, &body)
        }
        Err(e) => text(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("cannot list the snapshots: {e}"),
        ),
    }
}

async fn snapshot_full(
    State(st): State<Arc<AppState>>,
    OriginalUri(uri): OriginalUri,
    headers: HeaderMap,
    RawQuery(q): RawQuery,
) -> Response {
    let params = match query_params(&q, &["final"]) {
        Ok(p) => p,
        Err(r) => return *r,
    };
    let mut is_final = false;
    for (_, v) in params {
        if v.is_empty() {
            continue;
        }
        match parse_go_bool(&v) {
            Some(b) => is_final = b,
            None => {
                return text(
                    StatusCode::BAD_REQUEST,
                    format!("invalid value {v:?} for parameter \"final\": use true or false"),
                )
            }
        }
    }
    if let Some(r) = not_leader(&st, &uri, &headers).await {
        return r;
    }
    let shared = {
        let mut od = st.on_demand.lock().unwrap_or_else(|p| p.into_inner());
        match &od.inflight {
            // concurrent requests share the snapshot in flight (each holds a long etcd read)
            Some((f, fut)) if *f == is_final => fut.clone(),
            Some(_) => return text(
                StatusCode::TOO_MANY_REQUESTS,
                "another on-demand full snapshot (final or not) is being taken: retry when it ends",
            ),
            None => {
                // a final snapshot (before a planned shutdown) is never put off; asked for
                // again with nothing new, it returns the stored one (module snapshotter)
                let min = if is_final {
                    Duration::ZERO
                } else {
                    st.cfg.full_min_interval
                };
                if let Some(wait) = od
                    .last_done
                    .map(|t| t.elapsed())
                    .filter(|e| !min.is_zero() && *e < min)
                    .map(|e| min - e)
                {
                    let secs = wait.as_secs() + 1;
                    return (
                        StatusCode::TOO_MANY_REQUESTS,
                        [(header::RETRY_AFTER, secs.to_string())],
                        format!(
                            "an on-demand full snapshot was taken less than {}s ago (--on-demand-full-min-interval): retry in {secs}s",
                            min.as_secs()
                        ),
                    )
                        .into_response();
                }
                let st2 = st.clone();
                use futures::FutureExt;
                let fut: SharedFull = async move {
                    let limit = st2.cfg.job.etcd.snapshot_timeout + Duration::from_secs(120);
                    let make = |reply| Request::Full { is_final, reply };
                    let out = job_outcome(&st2, make, limit, "full").await;
                    let mut od = st2.on_demand.lock().unwrap_or_else(|p| p.into_inner());
                    od.inflight = None;
                    od.last_done = Some(std::time::Instant::now());
                    out
                }
                .boxed()
                .shared();
                // driven to its end even if every caller goes away
                tokio::spawn(fut.clone());
                od.inflight = Some((is_final, fut.clone()));
                fut
            }
        }
    };
    shared.await.response()
}

async fn snapshot_delta(
    State(st): State<Arc<AppState>>,
    OriginalUri(uri): OriginalUri,
    headers: HeaderMap,
    RawQuery(q): RawQuery,
) -> Response {
    if let Err(r) = query_params(&q, &[]) {
        return *r;
    }
    if st.cfg.job.delta.is_none() {
        return text(
            StatusCode::INTERNAL_SERVER_ERROR,
            "delta snapshots are disabled (--delta-snapshot-period below 1s)",
        );
    }
    let make = |reply| Request::Delta { reply };
    ask_job(&st, &uri, &headers, make, Duration::from_secs(300), "delta").await
}

/// Hands an out-of-schedule snapshot request to the job (forwarded when this sidecar does not
/// lead) and answers with the snapshot's JSON, or a message.
async fn ask_job<T: serde::Serialize>(
    st: &AppState,
    uri: &axum::http::Uri,
    headers: &HeaderMap,
    make: impl FnOnce(oneshot::Sender<std::result::Result<T, String>>) -> Request,
    limit: Duration,
    kind: &str,
) -> Response {
    if let Some(r) = not_leader(st, uri, headers).await {
        return r;
    }
    job_outcome(st, make, limit, kind).await.response()
}

/// Asks this sidecar's job for a snapshot and waits for it (at most `limit`).
async fn job_outcome<T: serde::Serialize>(
    st: &AppState,
    make: impl FnOnce(oneshot::Sender<std::result::Result<T, String>>) -> Request,
    limit: Duration,
    kind: &str,
) -> Outcome {
    let Some(tx) = st.job_sender() else {
        return not_active();
    };
    let (reply, rx) = oneshot::channel();
    if tx.send(make(reply)).await.is_err() {
        return not_active();
    }
    match tokio::time::timeout(limit, rx).await {
        Ok(Ok(Ok(snap))) => match serde_json::to_value(&snap) {
            Ok(v) => Outcome::Done(v),
            Err(e) => Outcome::Failed(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("cannot encode the {kind} snapshot: {e}"),
            ),
        },
        Ok(Ok(Err(e))) => Outcome::Failed(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("failed to take an out-of-schedule {kind} snapshot: {e}"),
        ),
        Ok(Err(_)) => not_active(),
        Err(_) => Outcome::Failed(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!(
                "the {kind} snapshot did not finish within {}s",
                limit.as_secs()
            ),
        ),
    }
}

fn not_active() -> Outcome {
    Outcome::Failed(
        StatusCode::INTERNAL_SERVER_ERROR,
        "the snapshotter is not active yet (this sidecar just became the leader's, or etcd is not ready); retry in a few seconds".into(),
    )
}

/// `None` on the leader's sidecar; otherwise the response: the leader's sidecar's answer, or
/// a clear error.
async fn not_leader(st: &AppState, uri: &axum::http::Uri, headers: &HeaderMap) -> Option<Response> {
    let rep = st.health.report();
    match rep.role {
        RoleState::Leader => None,
        RoleState::Unknown => Some(text(
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "this sidecar cannot tell which etcd member leads: {}",
                rep.reasons.join("; ")
            ),
        )),
        RoleState::Follower => Some(proxy_to_leader(st, uri, headers).await),
    }
}

/// Forwards the request to the leader's sidecar: the leader's client URL host and this
/// server's port (etcdbrctl's convention: every sidecar listens on the same port).
async fn proxy_to_leader(st: &AppState, uri: &axum::http::Uri, headers: &HeaderMap) -> Response {
    if headers.contains_key(PROXIED_HEADER) {
        return text(
            StatusCode::SERVICE_UNAVAILABLE,
            "this sidecar's etcd member is not the leader, and the request was already forwarded once by another sidecar: not forwarding again",
        );
    }
    let target = match leader_sidecar_url(&st.cfg).await {
        Ok(u) => u,
        Err(e) => {
            return text(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("this sidecar's etcd member is not the leader, and the leader's sidecar cannot be found: {e}"),
            )
        }
    };
    let path = uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
    let url = format!("{target}{path}");
    let timeout = st.cfg.job.etcd.snapshot_timeout + Duration::from_secs(120);
    tracing::info!(url, "not the leader's sidecar: forwarding the request");
    let mut req = st
        .http
        .get(&url)
        .header(PROXIED_HEADER, "1")
        .timeout(timeout);
    // the caller's token: every sidecar of the cluster reads the same token file
    if let Some(a) = headers.get(header::AUTHORIZATION) {
        req = req.header(reqwest::header::AUTHORIZATION, a.as_bytes());
    }
    let r = req.send().await;
    match r {
        Ok(resp) => {
            let code = StatusCode::from_u16(resp.status().as_u16())
                .unwrap_or(StatusCode::BAD_GATEWAY);
            let ctype = resp
                .headers()
                .get(reqwest::header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("text/plain")
                .to_string();
            match resp.bytes().await {
                Ok(body) => (code, [(header::CONTENT_TYPE, ctype)], body).into_response(),
                Err(e) => text(
                    StatusCode::BAD_GATEWAY,
                    format!("the leader's sidecar at {target} broke off its answer: {e}"),
                ),
            }
        }
        Err(e) => text(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("this sidecar's etcd member is not the leader, and the leader's sidecar at {target} cannot be reached: {e}"),
        ),
    }
}

async fn leader_sidecar_url(cfg: &ServerConfig) -> Result<String> {
    let etcd_cfg = &cfg.job.etcd;
    let endpoint = etcd_cfg.primary().to_string();
    let mut c = etcd::connect_one(etcd_cfg, &endpoint).await?;
    let role = leader::probe(&mut c, &endpoint, cfg.leader_election_timeout).await?;
    let members = etcd::call(
        &endpoint,
        "list members",
        cfg.leader_election_timeout,
        c.member_list(),
    )
    .await?;
    let leader = members
        .members()
        .iter()
        .find(|m| m.id() == role.leader_id)
        .ok_or_else(|| {
            Error::Cluster(format!(
                "leader {:x} is not in the member list",
                role.leader_id
            ))
        })?;
    let client_url = leader
        .client_urls()
        .first()
        .ok_or_else(|| Error::Cluster(format!("leader {} has no client URL", leader.name())))?;
    let u = url::Url::parse(client_url)
        .map_err(|e| Error::Cluster(format!("leader client URL {client_url:?}: {e}")))?;
    let host = u
        .host_str()
        .ok_or_else(|| Error::Cluster(format!("leader client URL {client_url:?} has no host")))?;
    let host = if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]")
    } else {
        host.to_string()
    };
    if cfg.tls.is_some() {
        // reqwest is built without TLS here: say so instead of failing obscurely
        return Err(Error::Refused(format!(
            "forwarding to the leader's sidecar over HTTPS is not supported: call https://{host}:{} directly",
            cfg.port
        )));
    }
    Ok(format!("http://{host}:{}", cfg.port))
}

async fn unknown_path(OriginalUri(uri): OriginalUri) -> Response {
    text(
        StatusCode::NOT_FOUND,
        format!(
            "unknown path {:?}; endpoints: /healthz, /snapshot/full[?final=true], /snapshot/delta, /snapshot/latest, /metrics",
            uri.path()
        ),
    )
}

/// 405 with a message and `Allow` (axum's own 405 has an empty body).
fn wrong_method(
    allow: &'static str,
) -> impl Fn(axum::http::Method) -> std::future::Ready<Response> + Clone {
    move |m| {
        let mut r = text(
            StatusCode::METHOD_NOT_ALLOWED,
            format!("method {m} is not allowed here; use {allow}"),
        );
        r.headers_mut()
            .insert(header::ALLOW, axum::http::HeaderValue::from_static(allow));
        std::future::ready(r)
    }
}

/// Methods of the paths that only read. etcdbrctl's `ServeMux` takes any method on every path,
/// and its callers use several: each path takes the usual ones.
const READING: &str = "GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS";
/// Methods of the paths that act (a snapshot, an initialization): as above, but HEAD (a safe
/// method a monitor may send) and OPTIONS (a browser's preflight) never act.
const ACTING: &str = "GET, POST, PUT, PATCH, DELETE, OPTIONS";

/// 204 with `Allow`: what OPTIONS answers, acting on nothing.
fn allow(methods: &'static str) -> impl Fn() -> std::future::Ready<Response> + Clone {
    move || {
        let mut r = StatusCode::NO_CONTENT.into_response();
        r.headers_mut()
            .insert(header::ALLOW, axum::http::HeaderValue::from_static(methods));
        std::future::ready(r)
    }
}

/// `h` for GET (which also answers HEAD, without the body), POST, PUT, PATCH and DELETE.
fn usual_methods<H, T>(h: H) -> axum::routing::MethodRouter<Arc<AppState>>
where
    H: axum::handler::Handler<T, Arc<AppState>>,
    T: 'static,
{
    get(h.clone())
        .post(h.clone())
        .put(h.clone())
        .patch(h.clone())
        .delete(h)
}

fn reading<H, T>(h: H) -> axum::routing::MethodRouter<Arc<AppState>>
where
    H: axum::handler::Handler<T, Arc<AppState>>,
    T: 'static,
{
    usual_methods(h)
        .options(allow(READING))
        .fallback(wrong_method(READING))
}

fn acting<H, T>(h: H) -> axum::routing::MethodRouter<Arc<AppState>>
where
    H: axum::handler::Handler<T, Arc<AppState>>,
    T: 'static,
{
    usual_methods(h)
        .head(wrong_method(ACTING))
        .options(allow(ACTING))
        .fallback(wrong_method(ACTING))
}

fn router(st: Arc<AppState>) -> Router {
    Router::new()
        .route("/healthz", reading(healthz))
        .route("/metrics", reading(metrics_handler))
        .route("/snapshot/latest", reading(snapshot_latest))
        .route("/snapshot/full", acting(snapshot_full))
        .route("/snapshot/delta", acting(snapshot_delta))
        .route("/initialization/start", acting(initialization_start))
        .route("/config", reading(config_handler))
        .route("/initialization/status", reading(initialization_status))
        .fallback(unknown_path)
        .with_state(st)
}

async fn tls_headers(uri: axum::http::Uri, mut r: Response) -> Response {
    if !matches!(uri.path(), "/config" | "/metrics") {
        let h = r.headers_mut();
        h.insert(
            header::STRICT_TRANSPORT_SECURITY,
            header::HeaderValue::from_static("max-age=31536000"),
        );
        h.insert(
            header::CONTENT_SECURITY_POLICY,
            header::HeaderValue::from_static("default-src 'self'"),
        );
    }
    r
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

    let result = leadership_loop(&cfg, &st, shutdown).await;
    defrag_task.abort();
    let _ = http_stop_tx.send(true);
    match tokio::time::timeout(Duration::from_secs(10), server).await {
        Ok(Ok(Err(e))) => tracing::warn!(error = %e, "HTTP server stopped with an error"),
        Ok(Err(e)) => tracing::warn!(error = %e, "HTTP server task failed"),
        Err(_) => tracing::warn!("HTTP server did not stop within 10s"),
        _ => {}
    }
    result
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_validation() {
        assert!(query_params(&Some("final=true".into()), &["final"]).is_ok());
        assert!(query_params(&Some("finall=true".into()), &["final"]).is_err());
        assert!(query_params(&None, &[]).is_ok());
        assert_eq!(parse_go_bool("T"), Some(true));
        assert_eq!(parse_go_bool("maybe"), None);
    }
}
