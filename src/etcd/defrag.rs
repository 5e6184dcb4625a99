//! Defragmentation on `--defragmentation-schedule`: every member must answer Status first;
//! then the followers one by one and the leader last (a defragmenting member blocks its
//! requests, so the leader, which serves writes, is kept available the longest). A failed run
//! is retried every minute until it succeeds or the next scheduled run is due.

use crate::error::{Error, Result};
use crate::etcd::{self, EtcdConfig};
use crate::metrics;
use crate::schedule::Schedule;
use chrono::Utc;
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// The client URL of every member, the leader last; single-member clusters use `endpoints`.
async fn plan(cfg: &EtcdConfig) -> Result<Vec<String>> {
    let endpoint = cfg.primary().to_string();
    let mut c = etcd::connect_one(cfg, &endpoint).await?;
    let t = cfg.connection_timeout;
    let members = etcd::call(&endpoint, "list members", t, c.member_list()).await?;
    let members = members.members();
    if members.len() <= 1 {
        return Ok(cfg.endpoints.clone());
    }
    let mut followers = Vec::new();
    let mut leader = None;
    for m in members {
        let Some(url) = m.client_urls().first().cloned() else {
            return Err(Error::Cluster(format!(
                "member {} ({:x}) has no client URL (not started yet?): not defragmenting",
                m.name(),
                m.id()
            )));
        };
        let mut mc = etcd::connect_one(cfg, &url).await?;
        let s = etcd::call(&url, "status", t, mc.status()).await?;
        let member_id = s.header().map(|h| h.member_id()).unwrap_or_default();
        if s.leader() != 0 && s.leader() == member_id {
            leader = Some(url);
        } else {
            followers.push(url);
        }
    }
    followers.extend(leader);
    Ok(followers)
}

async fn defragment_member(cfg: &EtcdConfig, url: &str) -> Result<()> {
    let mut c = etcd::connect_one(cfg, url).await?;
    let t = cfg.connection_timeout;
    let before = etcd::call(url, "status", t, c.status()).await?.db_size();
    let started = Instant::now();
    let r = etcd::call(url, "defragment", cfg.defrag_timeout, c.defragment()).await;
    let secs = started.elapsed().as_secs_f64();
    if let Some(m) = metrics::get() {
        m.defrag_duration
            .with_label_values(&[if r.is_ok() { "true" } else { "false" }, url])
            .observe(secs);
    }
    r?;
    let after = etcd::call(url, "status", t, c.status()).await?.db_size();
    tracing::info!(
        endpoint = url,
        db_size_before = before,
        db_size_after = after,
        secs = format!("{secs:.2}"),
        "defragmented"
    );
    Ok(())
}

/// Defragments every member, followers first, the leader last; stops at the first failure.
pub(crate) async fn defragment_cluster(cfg: &EtcdConfig) -> Result<Vec<String>> {
    let order = plan(cfg).await?;
    tracing::info!(?order, "defragmentation: starting");
    for url in &order {
        defragment_member(cfg, url).await?;
    }
    Ok(order)
}

/// Runs defragmentation on `schedule` until shutdown, when `allowed()` (the leader's sidecar).
pub(crate) async fn run_scheduled(
    cfg: EtcdConfig,
    schedule: Schedule,
    allowed: impl Fn() -> bool,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        let Some(next) = schedule.next_after(Utc::now()) else {
            return;
        };
        let wait = (next - Utc::now()).to_std().unwrap_or(Duration::ZERO);
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = crate::stop::flag_set(&mut shutdown) => return,
        }
        let following = schedule.next_after(Utc::now());
        // retry every minute until success or the next scheduled run
        loop {
            if !allowed() {
                tracing::debug!("defragmentation: not the leader's sidecar; skipped");
                break;
            }
            match defragment_cluster(&cfg).await {
                Ok(_) => break,
                Err(e) => {
                    tracing::warn!(error = %e, "defragmentation failed; retrying in 1 minute");
                    let retry = Utc::now() + chrono::Duration::minutes(1);
                    if following.is_some_and(|f| retry >= f) {
                        break;
                    }
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_secs(60)) => {}
                        _ = crate::stop::flag_set(&mut shutdown) => return,
                    }
                }
            }
        }
    }
}
