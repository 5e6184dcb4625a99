//! The endpoints: etcdbrctl's paths, status codes and JSON shapes (module doc of [`super`]),
//! the query and method checks, and the router.

use super::proxy::not_leader;
use super::reply::{json, text};
use super::AppState;
use crate::error::Error;
use crate::format::layout::Snapshot;
use crate::metrics;
use crate::snapshot::job::control::Request;
use axum::extract::{OriginalUri, RawQuery, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use chrono::Utc;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::oneshot;

/// What an on-demand full snapshot gave, shared by every caller that asked for it meanwhile.
#[derive(Debug, Clone)]
pub(super) enum Outcome {
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

pub(super) type SharedFull = futures::future::Shared<futures::future::BoxFuture<'static, Outcome>>;

/// On-demand fulls: the one in flight (and whether it is final), when the last one ended.
#[derive(Default)]
pub(super) struct OnDemand {
    inflight: Option<(bool, SharedFull)>,
    last_done: Option<std::time::Instant>,
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
    /// The last restore drill of this sidecar (`--verify-schedule`; etcdbr extension).
    #[serde(rename = "restoreDrill", skip_serializing_if = "Option::is_none")]
    restore_drill: Option<crate::snapshot::health::Drill>,
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
                restore_drill: st.health.last_drill(),
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

pub(super) fn router(st: Arc<AppState>) -> Router {
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

pub(super) async fn tls_headers(uri: axum::http::Uri, mut r: Response) -> Response {
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
