//! Forwarding snapshot requests from a follower's sidecar to the leader's (etcdbrctl's
//! convention: every sidecar listens on the same port; the leader's client URL gives the host).

use super::reply::text;
use super::{AppState, ServerConfig};
use crate::error::{Error, Result};
use crate::etcd;
use crate::etcd::leader::{self};
use crate::snapshot::health::RoleState;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use std::time::Duration;

/// Header set on requests a follower forwards to the leader's sidecar: never forwarded twice.
const PROXIED_HEADER: &str = "x-etcdbr-proxied";

/// `None` on the leader's sidecar; otherwise the response: the leader's sidecar's answer, or
/// a clear error.
pub(super) async fn not_leader(
    st: &AppState,
    uri: &axum::http::Uri,
    headers: &HeaderMap,
) -> Option<Response> {
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
pub(super) async fn proxy_to_leader(
    st: &AppState,
    uri: &axum::http::Uri,
    headers: &HeaderMap,
) -> Response {
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

pub(super) async fn leader_sidecar_url(cfg: &ServerConfig) -> Result<String> {
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
