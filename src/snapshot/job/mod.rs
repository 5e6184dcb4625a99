//! The snapshot job: full snapshots on the cron schedule, delta snapshots in between, GC, with
//! etcdbrctl's exponential backoff on failure; and the one-shot `snapshot save`.
//!
//! The `snapshot` command starts with a full snapshot. The `server` command runs the job on the
//! leader's sidecar only and starts with the start-up decision ([`StartMode::Decide`],
//! [`startup::decide`]). How the job is driven and stopped is in [`control`].

pub mod control;
pub mod startup;

use control::{Control, Observer, Request, StartMode};
use startup::Decision;

use crate::error::{Error, Result};
use crate::etcd::leader::{self, Fence};
use crate::etcd::{self, EtcdConfig};
use crate::format::codec::Compression;
use crate::format::layout::{Kind, Snapshot};
use crate::metrics;
use crate::schedule::Schedule;
use crate::snapshot::delta::{DeltaConfig, DeltaWatch, PhaseEnd, PhaseIo, WatchSetup};
use crate::snapshot::full::{self, FullSnapshotReport};
use crate::snapshot::gc::{self, GcConfig};
use crate::snapshot::health::Health;
use crate::store::{RotatingStore, SnapStore, StoreConfig};
use chrono::{DateTime, Utc};
use etcd_client::Client;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{oneshot, watch};

/// etcdbrctl's snapshotter restart backoff: 1 s, times `multiplier` per failure; after
/// `attempt_limit` attempts, `threshold`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Backoff {
    pub(crate) multiplier: u32,
    pub(crate) attempt_limit: u32,
    pub(crate) threshold: Duration,
}

impl Backoff {
    pub(crate) fn delay(&self, failures: u32) -> Duration {
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
pub(crate) struct SnapshotJob {
    pub(crate) etcd: EtcdConfig,
    pub(crate) store: StoreConfig,
    /// Of full snapshots (deltas use its codec, on one thread: they are small).
    pub(crate) compression: Compression,
    pub(crate) schedule: Schedule,
    pub(crate) backoff: Backoff,
    /// Garbage collection and its period; `None` when disabled (period of 1s or less).
    pub(crate) gc: Option<(GcConfig, Duration)>,
    /// Delta snapshots between fulls; `None` when disabled (period below 1s).
    pub(crate) delta: Option<DeltaConfig>,
}

/// Runs a GC cycle every `period` until shutdown; errors are logged, never fatal.
pub(crate) async fn run_gc(
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
pub(crate) async fn save_once(
    etcd_cfg: &EtcdConfig,
    store_cfg: StoreConfig,
    compression: Compression,
    is_final: bool,
) -> Result<FullSnapshotReport> {
    let store = SnapStore::open(store_cfg).await?;
    let mut client = etcd::connect_one(etcd_cfg, etcd_cfg.primary()).await?;
    full::take(
        &mut client,
        etcd_cfg,
        &store,
        compression,
        is_final,
        Fence::None,
    )
    .await
}

/// The `snapshot` command: runs until `shutdown` turns true, starting with a full snapshot.
/// Failures are logged and retried with backoff; the run only fails on configuration errors.
pub(crate) async fn run_scheduled(
    job: SnapshotJob,
    shutdown: watch::Receiver<bool>,
    observer: Arc<dyn Observer>,
) -> Result<()> {
    let health = Arc::new(Health::new(crate::snapshot::health::HealthConfig {
        schedule: job.schedule.clone(),
        delta_period: job.delta.map(|d| d.period),
        full_grace: job.etcd.snapshot_timeout,
    }));
    // never set: the snapshot command has no leader election
    let (_keep, abandon) = watch::channel(false);
    let ctl = Control {
        start: StartMode::Full,
        fence: Fence::None,
        health,
        requests: None,
        shutdown,
        abandon,
        observer,
    };
    run_job(job, ctl).await
}

/// Runs the job (GC included) until a stop in `ctl`.
pub(crate) async fn run_job(job: SnapshotJob, ctl: Control) -> Result<()> {
    let gc_task = job.gc.map(|(gc, period)| {
        let mut stop = ctl.shutdown.clone();
        let mut abandon = ctl.abandon.clone();
        let (tx, rx) = watch::channel(false);
        // GC stops on either signal
        tokio::spawn(async move {
            tokio::select! {
                _ = crate::stop::flag_set(&mut stop) => {}
                _ = crate::stop::flag_set(&mut abandon) => {}
            }
            let _ = tx.send(true);
        });
        tokio::spawn(run_gc(job.store.clone(), gc, period, rx))
    });
    ctl.health.job_started();
    let mut runner = Runner {
        store: RotatingStore::new(job.store.clone()),
        job,
        ctl,
        client: None,
        failures: 0,
        next: Utc::now(),
        stored: None,
        watch: None,
    };
    let result = runner.run().await;
    runner.ctl.health.job_stopped();
    if let Some(t) = gc_task {
        t.abort();
    }
    result
}

struct Runner {
    job: SnapshotJob,
    ctl: Control,
    store: RotatingStore,
    client: Option<Client>,
    failures: u32,
    /// When the next scheduled full is due.
    next: DateTime<Utc>,
    /// Last revision in the store's latest set, once known (a full taken, or the decision).
    stored: Option<i64>,
    /// The delta watch, kept across phases and read while a full streams (module deltasnap).
    watch: Option<DeltaWatch>,
}

type FullReply = oneshot::Sender<std::result::Result<Snapshot, String>>;

/// The next response of the delta watch while a full streams; never when there is no watch or
/// its held events reached the memory limit (reading pauses, etcd keeps the events).
async fn next_watch_message(
    w: &mut Option<DeltaWatch>,
) -> Result<Option<etcd_client::WatchResponse>> {
    match w {
        Some(w) if w.can_hold() => w.message().await,
        _ => std::future::pending().await,
    }
}

impl Runner {
    fn stopping(&self) -> bool {
        *self.ctl.shutdown.borrow() || *self.ctl.abandon.borrow()
    }

    async fn client(&mut self) -> Result<&mut Client> {
        if self.client.is_none() {
            self.client = Some(etcd::connect_one(&self.job.etcd, self.job.etcd.primary()).await?);
        }
        self.client
            .as_mut()
            .ok_or_else(|| Error::Internal("no etcd client after connecting".into()))
    }

    fn failed(&mut self, e: &Error, what: &str) -> Duration {
        self.failures += 1;
        if matches!(e, Error::Etcd { .. } | Error::EtcdTimeout { .. }) {
            self.client = None; // reconnect next time
        }
        self.ctl.health.failed(e);
        let delay = self.job.backoff.delay(self.failures);
        tracing::error!(error = %e, transient = e.is_transient(), attempt = self.failures, retry_in = ?delay, "{what} failed");
        delay
    }

    fn schedule_next(&mut self) -> Result<()> {
        self.next = self
            .job
            .schedule
            .next_after(Utc::now())
            .ok_or_else(|| Error::config("the schedule never fires again"))?;
        tracing::info!(next = %self.next.format("%Y-%m-%dT%H:%M:%SZ"), "next full snapshot");
        Ok(())
    }

    /// The start-up decision ([`startup::decide`]): sets `stored` and `next`.
    async fn decide(&mut self) -> Result<()> {
        let store = self.store.get().await?;
        let set = store.latest_set().await?;
        if !store.keys().encrypts() {
            if let Some(e) = set.encrypted().next() {
                // allowed (switching encryption off), but never silently
                tracing::warn!(object = %e.snap_name, "the latest snapshot set is encrypted, and objects written from now on are plain: give --encryption-recipients-file to keep encrypting");
            }
        }
        self.ctl.health.store_seen(&set);
        let endpoint = self.job.etcd.primary().to_string();
        let timeout = self.job.etcd.connection_timeout;
        let role = leader::probe(self.client().await?, &endpoint, timeout).await?;
        let now = Utc::now();
        let decision = startup::decide(&set, &self.job.schedule, now, role.revision);
        self.ctl
            .health
            .set_blocked(decision.as_ref().err().map(|e| e.to_string()));
        match decision? {
            Decision::Full(reason) => {
                tracing::info!(reason, "start-up: taking a full snapshot");
                self.stored = None;
                self.next = now;
            }
            Decision::CatchUp { stored } => {
                tracing::info!(
                    from_revision = stored + 1,
                    "start-up: the latest full snapshot is current; catching up with deltas"
                );
                self.stored = Some(stored);
                self.schedule_next()?;
            }
        }
        Ok(())
    }

    /// A final full snapshot asked for again with etcd unchanged since the stored one (the
    /// latest set is that final full alone, at etcd's current revision): that snapshot, not a
    /// second copy (etcdbrctl's behaviour, which shutdown hooks retrying the call rely on).
    async fn unchanged_final(&mut self) -> Result<Option<FullSnapshotReport>> {
        let started = Instant::now();
        let set = self.store.get().await?.latest_set().await?;
        let Some(full) = set.full.filter(|f| f.is_final && set.deltas.is_empty()) else {
            return Ok(None);
        };
        let endpoint = self.job.etcd.primary().to_string();
        let timeout = self.job.etcd.connection_timeout;
        let role = leader::probe(self.client().await?, &endpoint, timeout).await?;
        if role.revision != full.last_revision {
            return Ok(None);
        }
        tracing::info!(
            snapshot = %full.snap_name,
            revision = role.revision,
            "a final full snapshot at etcd's current revision is already stored: returning it"
        );
        Ok(Some(FullSnapshotReport {
            key: full.snap_name.clone(),
            snapshot: full,
            revision_exact: true,
            elapsed: started.elapsed(),
        }))
    }

    async fn take_full(&mut self, is_final: bool) -> Result<FullSnapshotReport> {
        let started = Instant::now();
        let fence = self.ctl.fence;
        let r = async {
            let endpoint = self.job.etcd.primary().to_string();
            fence
                .check(self.client().await?, &endpoint, "full snapshot")
                .await?;
            if is_final {
                if let Some(report) = self.unchanged_final().await? {
                    return Ok(report);
                }
            }
            let s = self.store.get().await?;
            let c = self
                .client
                .as_mut()
                .ok_or_else(|| Error::Internal("no etcd client after connecting".into()))?;
            full::take(c, &self.job.etcd, s, self.job.compression, is_final, fence).await
        }
        .await;
        metrics::snapshot_taken(Kind::Full, r.is_ok(), started.elapsed().as_secs_f64());
        r
    }

    async fn run(&mut self) -> Result<()> {
        let mut pending_full: Option<(bool, Option<FullReply>)> = None;
        let mut need_decision = self.ctl.start == StartMode::Decide;
        loop {
            if self.stopping() {
                return Ok(());
            }
            if need_decision && pending_full.is_none() {
                match self.decide().await {
                    Ok(()) => {
                        need_decision = false;
                        self.failures = 0;
                    }
                    Err(e) => {
                        let delay = self.failed(&e, "start-up decision");
                        if self.wait(delay, &mut pending_full).await {
                            return Ok(());
                        }
                        continue;
                    }
                }
            }
            if pending_full.is_some() || Utc::now() >= self.next {
                let (is_final, reply) = pending_full.take().unwrap_or((false, None));
                // the delta watch keeps being read while the full streams (its events held
                // up to the memory limit), so that it never falls behind
                let mut watch = self
                    .watch
                    .take()
                    .filter(|w| Some(w.stored()) == self.stored);
                let result = {
                    let mut shutdown = self.ctl.shutdown.clone();
                    let mut abandon = self.ctl.abandon.clone();
                    let full = self.take_full(is_final);
                    tokio::pin!(full);
                    loop {
                        tokio::select! {
                            r = &mut full => break Some(r),
                            _ = crate::stop::flag_set(&mut shutdown) => break None,
                            _ = crate::stop::flag_set(&mut abandon) => break None,
                            m = next_watch_message(&mut watch) => {
                                if let Some(w) = watch.as_mut() {
                                    w.hold(m).await;
                                }
                            }
                        }
                    }
                };
                if let (Some(w), Some(r)) = (watch.as_mut(), result.as_ref()) {
                    let revision = r.as_ref().ok().map(|rep| rep.snapshot.last_revision);
                    match w.after_full(revision) {
                        Ok(()) => self.watch = watch,
                        Err(e) => {
                            tracing::warn!(error = %e, "the delta watch stopped during the full snapshot")
                        }
                    }
                }
                let Some(result) = result else {
                    tracing::info!(
                        "stopping during a full snapshot; the partial upload is discarded"
                    );
                    if let Some(r) = reply {
                        let _ = r.send(Err("the snapshotter stopped during the snapshot".into()));
                    }
                    return Ok(());
                };
                match result {
                    Ok(report) => {
                        self.failures = 0;
                        self.ctl.observer.stored(&report.key);
                        self.ctl.health.full_stored(&report.snapshot);
                        self.stored = Some(report.snapshot.last_revision);
                        if let Some(r) = reply {
                            let _ = r.send(Ok(report.snapshot.clone()));
                        }
                        // the timer is re-armed after every full, scheduled or not
                        self.schedule_next()?;
                    }
                    Err(e) => {
                        if let Some(r) = reply {
                            let _ = r.send(Err(e.to_string()));
                        }
                        let delay = self.failed(&e, "full snapshot");
                        if matches!(e, Error::Fenced(_)) {
                            need_decision = true;
                            self.stored = None;
                            self.watch = None;
                        }
                        self.next = Utc::now()
                            + chrono::Duration::from_std(delay)
                                .unwrap_or_else(|_| chrono::Duration::seconds(128));
                    }
                }
            }
            // Between fulls: delta snapshots, or just waiting.
            let can_delta =
                self.job.delta.is_some() && self.stored.is_some() && self.client.is_some();
            if can_delta {
                match self.delta_phase().await {
                    Ok(PhaseEnd::Deadline) => self.failures = 0,
                    Ok(PhaseEnd::Shutdown { last_revision }) => {
                        tracing::info!(last_revision, "stopped after the final delta");
                        return Ok(());
                    }
                    Ok(PhaseEnd::Abandoned) => return Ok(()),
                    Ok(PhaseEnd::Compacted) => self.next = Utc::now(),
                    Ok(PhaseEnd::FullRequested { is_final, reply }) => {
                        pending_full = Some((is_final, Some(reply)));
                    }
                    Err(e) => {
                        let delay = self.failed(&e, "delta snapshots");
                        self.watch = None;
                        if !matches!(e, Error::Fenced(_)) {
                            self.client = None;
                        }
                        // decide again once etcd answers: it may have been restarted on another
                        // history (rewound, or replaced), which the decision checks
                        need_decision = true;
                        self.stored = None;
                        if self.wait(delay, &mut pending_full).await {
                            return Ok(());
                        }
                    }
                }
            } else if pending_full.is_none() {
                let mut wait = (self.next - Utc::now()).to_std().unwrap_or(Duration::ZERO);
                if self.job.delta.is_some() && self.stored.is_some() {
                    // deltas are due but etcd is not connected: retry soon, not at the next full
                    wait = wait.min(self.job.backoff.delay(self.failures.max(1)));
                }
                if self.wait(wait, &mut pending_full).await {
                    return Ok(());
                }
            }
            if self.stopping() {
                return Ok(());
            }
            // a delta phase that failed resumes with a fresh client
            if self.client.is_none() && self.stored.is_some() && Utc::now() < self.next {
                if let Err(e) = self.client().await {
                    self.failures += 1;
                    tracing::warn!(error = %e, attempt = self.failures, "cannot reconnect to etcd yet");
                }
            }
        }
    }

    async fn delta_phase(&mut self) -> Result<PhaseEnd> {
        let (Some(cfg), Some(rev)) = (self.job.delta, self.stored) else {
            return Err(Error::Internal(
                "delta snapshots are not possible now".into(),
            ));
        };
        // the watch of the previous phase goes on where the store ends; else a new one
        let mut watch = match self.watch.take().filter(|w| w.stored() == rev) {
            Some(w) => w,
            None => {
                let client = self
                    .client
                    .clone()
                    .ok_or_else(|| Error::Internal("no etcd client after connecting".into()))?;
                let setup = WatchSetup {
                    client,
                    endpoint: self.job.etcd.primary().to_string(),
                    store: self.store.get().await?.clone(),
                    fence: self.ctl.fence,
                    health: self.ctl.health.clone(),
                    observer: self.ctl.observer.clone(),
                };
                DeltaWatch::open(setup, cfg, rev).await?
            }
        };
        let io = PhaseIo {
            requests: self.ctl.requests.as_mut(),
            shutdown: &mut self.ctl.shutdown,
            abandon: &mut self.ctl.abandon,
        };
        let r = watch.run_phase(io, self.next).await;
        self.stored = Some(watch.stored());
        // a phase that ended for a full keeps its watch, to be read while the full streams
        if matches!(
            r,
            Ok(PhaseEnd::Deadline) | Ok(PhaseEnd::FullRequested { .. })
        ) {
            self.watch = Some(watch);
        }
        r
    }

    /// Waits `delay`, answering requests meanwhile; a full request ends the wait. Returns true
    /// on a stop.
    async fn wait(
        &mut self,
        delay: Duration,
        pending_full: &mut Option<(bool, Option<FullReply>)>,
    ) -> bool {
        let until = tokio::time::Instant::now() + delay;
        let delta_enabled = self.job.delta.is_some();
        loop {
            let mut requests = self.ctl.requests.as_mut();
            tokio::select! {
                _ = tokio::time::sleep_until(until) => return false,
                _ = crate::stop::flag_set(&mut self.ctl.shutdown) => return true,
                _ = crate::stop::flag_set(&mut self.ctl.abandon) => return true,
                req = control::next_request(&mut requests) => match req {
                    Request::Full { is_final, reply } => {
                        *pending_full = Some((is_final, Some(reply)));
                        return false;
                    }
                    Request::Delta { reply } => {
                        let msg = if delta_enabled {
                            "the delta snapshotter is not active (waiting for a full snapshot or for etcd); retry shortly"
                        } else {
                            "delta snapshots are disabled (--delta-snapshot-period below 1s)"
                        };
                        let _ = reply.send(Err(msg.to_string()));
                    }
                },
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
