//! The `snapshot` job: an immediate full snapshot, then one per cron tick, with etcdbrctl's
//! exponential backoff on failure; and the one-shot `snapshot save`.

use crate::codec::Codec;
use crate::deltasnap::{self, DeltaConfig, PhaseEnd};
use crate::error::{Error, Result};
use crate::etcd::{self, EtcdConfig};
use crate::fullsnap::{self, FullSnapshotReport};
use crate::gc::{self, GcConfig};
use crate::schedule::Schedule;
use crate::store::{self, credentials, SnapStore, StoreConfig};
use chrono::Utc;
use std::collections::HashMap;
use std::time::{Duration, SystemTime};
use tokio::sync::watch;

/// etcdbrctl's snapshotter restart backoff: 1 s, times `multiplier` per failure; after
/// `attempt_limit` attempts, `threshold`.
#[derive(Debug, Clone, Copy)]
pub struct Backoff {
    pub multiplier: u32,
    pub attempt_limit: u32,
    pub threshold: Duration,
}

impl Backoff {
    pub fn delay(&self, failures: u32) -> Duration {
        if failures == 0 {
            return Duration::ZERO;
        }
        if failures > self.attempt_limit {
            return self.threshold;
        }
        let d = Duration::from_secs(1)
            .saturating_mul(self.multiplier.max(1).saturating_pow(failures - 1));
        d.min(self.threshold)
    }
}

#[derive(Debug, Clone)]
pub struct SnapshotJob {
    pub etcd: EtcdConfig,
    pub store: StoreConfig,
    pub codec: Codec,
    pub schedule: Schedule,
    pub backoff: Backoff,
    /// Garbage collection and its period; `None` when disabled (period of 1s or less).
    pub gc: Option<(GcConfig, Duration)>,
    /// Delta snapshots between fulls; `None` when disabled (period below 1s).
    pub delta: Option<DeltaConfig>,
}

/// Runs a GC cycle every `period` until shutdown; errors are logged, never fatal.
async fn run_gc(
    cfg: StoreConfig,
    gc: GcConfig,
    period: Duration,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(period) => {}
            _ = shutdown.changed() => {}
        }
        if *shutdown.borrow() {
            return;
        }
        // a fresh client each cycle, as etcdbrctl (picks up rotated credentials)
        let result =
            async { gc::collect_store(&SnapStore::open(cfg.clone()).await?, &gc).await }.await;
        if let Err(e) = result {
            tracing::warn!(error = %e, "GC: cycle failed; retrying next period");
        }
    }
}

/// One full snapshot into the store (the `snapshot save` command).
pub async fn save_once(
    etcd_cfg: &EtcdConfig,
    store_cfg: StoreConfig,
    codec: Codec,
    is_final: bool,
) -> Result<FullSnapshotReport> {
    let store = SnapStore::open(store_cfg).await?;
    let mut client = etcd::connect_one(etcd_cfg, etcd_cfg.primary()).await?;
    fullsnap::take(&mut client, etcd_cfg, &store, codec, is_final).await
}

/// A store that is rebuilt when its credential files change (rotation without restart).
struct RotatingStore {
    cfg: StoreConfig,
    store: Option<SnapStore>,
    cred_mtime: Option<SystemTime>,
}

impl RotatingStore {
    async fn get(&mut self) -> Result<&SnapStore> {
        let mtime = store::credential_source(&self.cfg).and_then(|s| credentials::modified(&s));
        if self.store.is_none() || mtime != self.cred_mtime {
            if self.store.is_some() {
                tracing::info!("store credentials changed; re-creating the store client");
            }
            self.store = Some(SnapStore::open(self.cfg.clone()).await?);
            self.cred_mtime = mtime;
        }
        self.store
            .as_ref()
            .ok_or_else(|| Error::Other("store not initialised".into()))
    }
}

/// Runs until `shutdown` turns true: a full snapshot now, then one per schedule tick. Failures
/// are logged and retried with backoff; the run itself only fails on configuration errors.
pub async fn run_scheduled(job: SnapshotJob, shutdown: watch::Receiver<bool>) -> Result<()> {
    let mut store = RotatingStore {
        cfg: job.store.clone(),
        store: None,
        cred_mtime: None,
    };
    // Configuration errors surface at once; transient ones (etcd down) are retried below.
    job.store.validate()?;
    job.etcd.validate()?;
    let gc_task = job
        .gc
        .map(|(gc, period)| tokio::spawn(run_gc(job.store.clone(), gc, period, shutdown.clone())));
    let result = snapshot_loop(&job, &mut store, shutdown).await;
    if let Some(t) = gc_task {
        t.abort();
    }
    result
}

async fn snapshot_loop(
    job: &SnapshotJob,
    store: &mut RotatingStore,
    mut shutdown: watch::Receiver<bool>,
) -> Result<()> {
    let mut client = None;
    let mut failures: u32 = 0;
    let mut next = Utc::now();
    // last revision in the store (full or delta) once a full was taken by this job
    let mut stored: Option<i64> = None;
    let mut lease_ttls = HashMap::new();
    loop {
        let full_due = Utc::now() >= next;
        if full_due {
            let attempt = async {
                let s = store.get().await?;
                if client.is_none() {
                    client = Some(etcd::connect_one(&job.etcd, job.etcd.primary()).await?);
                }
                let c = client
                    .as_mut()
                    .ok_or_else(|| Error::Other("no etcd client".into()))?;
                fullsnap::take(c, &job.etcd, s, job.codec, false).await
            };
            let result = tokio::select! {
                r = attempt => Some(r),
                _ = shutdown.changed() => None,
            };
            let Some(result) = result else {
                tracing::info!("shutting down during a snapshot; the partial upload is discarded");
                return Ok(());
            };
            match result {
                Ok(report) => {
                    failures = 0;
                    println!("{}", report.key);
                    stored = Some(report.snapshot.last_revision);
                    next = job
                        .schedule
                        .next_after(Utc::now())
                        .ok_or_else(|| Error::config("the schedule never fires again"))?;
                    tracing::info!(next = %next.format("%Y-%m-%dT%H:%M:%SZ"), "next full snapshot");
                }
                Err(e) => {
                    failures += 1;
                    if matches!(e, Error::Etcd { .. } | Error::EtcdTimeout { .. }) {
                        client = None; // reconnect next time
                    }
                    let delay = job.backoff.delay(failures);
                    tracing::error!(error = %e, attempt = failures, retry_in = ?delay, "full snapshot failed");
                    next = Utc::now()
                        + chrono::Duration::from_std(delay)
                            .unwrap_or_else(|_| chrono::Duration::seconds(128));
                }
            }
        }
        // Between fulls: delta snapshots, or just waiting.
        if let (Some(cfg), Some(rev), Some(c)) = (job.delta, stored.as_mut(), client.as_mut()) {
            let s = store.get().await?;
            let end = deltasnap::run_phase(
                c,
                job.etcd.primary(),
                s,
                cfg,
                rev,
                next,
                &mut lease_ttls,
                &mut shutdown,
            )
            .await;
            match end {
                Ok(PhaseEnd::Deadline { .. }) => failures = 0,
                Ok(PhaseEnd::Shutdown { last_revision }) => {
                    tracing::info!(last_revision, "stopped after the final delta");
                    return Ok(());
                }
                Ok(PhaseEnd::Compacted { .. }) => next = Utc::now(),
                Err(e) => {
                    failures += 1;
                    client = None;
                    let delay = job.backoff.delay(failures);
                    tracing::error!(error = %e, attempt = failures, retry_in = ?delay, last_stored = *rev, "delta snapshots failed; resuming from the last stored revision");
                    tokio::select! {
                        _ = tokio::time::sleep(delay) => {}
                        _ = shutdown.changed() => {}
                    }
                }
            }
        } else {
            let mut wait = (next - Utc::now()).to_std().unwrap_or(Duration::ZERO);
            if job.delta.is_some() && stored.is_some() {
                // deltas are due but etcd is not connected: retry soon, not at the next full
                wait = wait.min(job.backoff.delay(failures.max(1)));
            }
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = shutdown.changed() => {}
            }
        }
        if *shutdown.borrow() {
            return Ok(());
        }
        // a delta phase that failed resumes with a fresh client
        if client.is_none() && stored.is_some() && Utc::now() < next {
            match etcd::connect_one(&job.etcd, job.etcd.primary()).await {
                Ok(c) => client = Some(c),
                Err(e) => {
                    failures += 1;
                    tracing::warn!(error = %e, attempt = failures, "cannot reconnect to etcd yet");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_like_etcdbrctl() {
        let b = Backoff {
            multiplier: 2,
            attempt_limit: 6,
            threshold: Duration::from_secs(128),
        };
        let got: Vec<u64> = (0..9).map(|i| b.delay(i).as_secs()).collect();
        assert_eq!(got, [0, 1, 2, 4, 8, 16, 32, 128, 128]);
    }
}
