//! Garbage collection of old snapshots, with etcdbrctl's exact semantics (reference section 5).
//!
//! The sorted list is cut into *streams* at every non-chunk full snapshot (index 0 always starts
//! a stream, even when it is a delta). The latest stream (the latest full and its deltas) is never
//! touched. In older streams, deltas older than `--delta-snapshot-retention-period` are deleted
//! (newest first); a stream whose delta deletions failed keeps its full this cycle.
//!
//! * LimitBased: keeps the newest `--max-backups` streams' fulls.
//! * Exponential: walking from the newest stream to the oldest, compares each older full
//!   (`next`) with the newer one (`snap`): everything of the current hour is kept; older fulls of
//!   today one per hour; of the last 7 days one per day; up to 5 weeks one per week; older ones
//!   are deleted. The hour/day/week buckets are counted back from today's end of day (UTC),
//!   shifted back by a day once the weekly band starts, exactly as etcdbrctl does.
//!
//! Snapshots whose immutability period has not expired are skipped (retried next cycle).

use crate::error::{Error, Result};
use crate::format::layout::{Kind, Snapshot};
use crate::store::SnapStore;
use chrono::{DateTime, Duration as ChronoDuration, Timelike, Utc};
use std::time::Duration;

/// Delta deletions failing this many times stop the deletion in that stream for the cycle.
const DELTA_ERROR_LIMIT: usize = 5;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Policy {
    Exponential,
    LimitBased { max_backups: usize },
}

impl Policy {
    /// The policy named by `--garbage-collection-policy`, with `--max-backups`.
    pub(crate) fn from_flags(name: &str, max_backups: usize) -> Result<Policy> {
        match name {
            "Exponential" => Ok(Policy::Exponential),
            "LimitBased" if max_backups == 0 => Err(Error::config(
                "--max-backups must be greater than 0 for the LimitBased policy",
            )),
            "LimitBased" => Ok(Policy::LimitBased { max_backups }),
            p => Err(Error::config(format!(
                "--garbage-collection-policy {p:?} is unknown: use Exponential or LimitBased"
            ))),
        }
    }
}

#[derive(Debug, Clone, Copy)]
pub(crate) struct GcConfig {
    pub(crate) policy: Policy,
    pub(crate) delta_retention: Duration,
}

/// What one cycle did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct GcReport {
    pub(crate) deleted_full: usize,
    pub(crate) deleted_delta: usize,
    pub(crate) deleted_chunk: usize,
    pub(crate) failed: usize,
    pub(crate) skipped_immutable: usize,
}

/// Where deletions go: the store, or a recording double in tests.
#[allow(async_fn_in_trait)]
pub(crate) trait Deleter {
    async fn delete(&self, snap: &Snapshot) -> Result<()>;
}

impl Deleter for SnapStore {
    async fn delete(&self, snap: &Snapshot) -> Result<()> {
        SnapStore::delete(self, snap).await
    }
}

/// Start index of every stream in a sorted list.
pub(crate) fn stream_starts(list: &[Snapshot]) -> Vec<usize> {
    let mut idx = vec![0];
    idx.extend((1..list.len()).filter(|&i| list[i].kind == Kind::Full && !list[i].is_chunk));
    idx
}

struct Run<'a, D: Deleter> {
    d: &'a D,
    now: DateTime<Utc>,
    report: GcReport,
}

impl<D: Deleter> Run<'_, D> {
    fn immutable(&mut self, s: &Snapshot) -> bool {
        if s.immutability_expiry_time > self.now {
            self.report.skipped_immutable += 1;
            tracing::info!(snapshot = %s.snap_name, until = %s.immutability_expiry_time, "GC: skipping an immutable snapshot");
            return true;
        }
        false
    }

    async fn delete(&mut self, s: &Snapshot) -> bool {
        if self.immutable(s) {
            return false;
        }
        let label = if s.is_chunk { "Chunk" } else { s.kind.as_str() };
        let result = self.d.delete(s).await;
        crate::metrics::gc_deleted(label, result.is_ok());
        match result {
            Ok(()) => {
                tracing::info!(snapshot = %s.snap_name, kind = %s.kind, "GC: deleted");
                match (s.is_chunk, s.kind) {
                    (true, _) => self.report.deleted_chunk += 1,
                    (false, Kind::Full) => self.report.deleted_full += 1,
                    (false, Kind::Incr) => self.report.deleted_delta += 1,
                }
                true
            }
            Err(e) => {
                tracing::warn!(snapshot = %s.snap_name, error = %e, "GC: cannot delete; retrying next cycle");
                self.report.failed += 1;
                false
            }
        }
    }

    /// Deletes the deltas of one stream (all but its first element), newest first. Returns
    /// false when a deletion failed (the stream's full is then kept this cycle).
    async fn deltas(&mut self, stream: &[Snapshot], retention: Duration) -> bool {
        let cutoff = self.now - ChronoDuration::from_std(retention).unwrap_or(ChronoDuration::MAX);
        let (mut errors, mut kept_immutable) = (0, false);
        for s in stream.iter().skip(1).rev() {
            if s.kind != Kind::Incr || s.is_chunk || s.created_on >= cutoff {
                continue;
            }
            if s.immutability_expiry_time > self.now {
                // not an error, but its base must stay while it does
                kept_immutable = true;
                self.immutable(s);
                continue;
            }
            if !self.delete(s).await {
                errors += 1;
                if errors >= DELTA_ERROR_LIMIT {
                    break;
                }
            }
        }
        errors == 0 && !kept_immutable
    }

    /// Chunk objects of a deleted full (left by etcdbrctl's GCS/Swift uploads).
    async fn chunks(&mut self, stream: &[Snapshot]) {
        for s in stream.iter().filter(|s| s.is_chunk && s.kind == Kind::Full) {
            self.delete(s).await;
        }
    }
}

/// One GC cycle over a sorted list, at time `now`.
pub(crate) async fn collect<D: Deleter>(
    d: &D,
    list: &[Snapshot],
    cfg: &GcConfig,
    now: DateTime<Utc>,
) -> GcReport {
    let idx = stream_starts(list);
    let mut run = Run {
        d,
        now,
        report: GcReport::default(),
    };
    let stream = |i: usize| &list[idx[i]..idx[i + 1]];
    match cfg.policy {
        Policy::LimitBased { max_backups } => {
            for i in 0..idx.len().saturating_sub(1) {
                if !run.deltas(stream(i), cfg.delta_retention).await {
                    continue;
                }
                if (i as i64) < idx.len() as i64 - max_backups as i64
                    && run.delete(&list[idx[i]]).await
                {
                    run.chunks(stream(i)).await;
                }
            }
        }
        Policy::Exponential => {
            let hours = |d: ChronoDuration| d.num_seconds() as f64 / 3600.0;
            let mut eod = now
                .date_naive()
                .and_hms_opt(23, 59, 59)
                .map(|t| t.and_utc())
                .unwrap_or(now);
            let mut tracking_week = false;
            for i in (1..idx.len()).rev() {
                let snap = &list[idx[i]];
                let next = &list[idx[i - 1]];
                if !run.deltas(stream(i - 1), cfg.delta_retention).await {
                    continue;
                }
                let age = eod - next.created_on;
                let threshold: i64 = if age < ChronoDuration::hours(24) {
                    if next.created_on.hour() == now.hour() {
                        0
                    } else {
                        1
                    }
                } else if age < ChronoDuration::hours(8 * 24) {
                    24
                } else if age < ChronoDuration::hours(5 * 7 * 24) {
                    if !tracking_week {
                        // the week ends the previous day: shift once when weekly tracking starts
                        eod -= ChronoDuration::hours(24);
                        tracking_week = true;
                    }
                    24 * 7
                } else {
                    i32::MAX as i64
                };
                let (hn, hs) = (hours(eod - next.created_on), hours(eod - snap.created_on));
                let hour_change = hn as i64 - hs as i64;
                let day_change = (hn / 24.0) as i64 - (hs / 24.0) as i64;
                let week_change = (hn / (24.0 * 7.0)) as i64 - (hs / (24.0 * 7.0)) as i64;
                let keep = threshold == 0
                    || hour_change / threshold != 0
                    || day_change * 24 / threshold != 0
                    || week_change * 24 * 7 / threshold != 0;
                if !keep && run.delete(next).await {
                    run.chunks(stream(i - 1)).await;
                }
            }
        }
    }
    run.report
}

/// One GC cycle on a store, now.
pub(crate) async fn collect_store(store: &SnapStore, cfg: &GcConfig) -> Result<GcReport> {
    let list = store.list().await?;
    let report = collect(store, &list, cfg, Utc::now()).await;
    tracing::info!(?report, "GC: cycle done");
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;
    use std::cell::RefCell;

    /// Records deletions; fails for names listed in `fail`.
    #[derive(Default)]
    struct Recorder {
        deleted: RefCell<Vec<String>>,
        fail: Vec<String>,
    }

    impl Deleter for Recorder {
        async fn delete(&self, snap: &Snapshot) -> Result<()> {
            if self.fail.contains(&snap.snap_name) {
                return Err(crate::Error::Internal("injected failure".into()));
            }
            self.deleted.borrow_mut().push(snap.snap_name.clone());
            Ok(())
        }
    }

    fn snap(kind: Kind, t: DateTime<Utc>) -> Snapshot {
        Snapshot::new_at(kind, 0, 1001, "", false, t)
    }

    /// etcdbrctl's GC test store: from 36 days back at 00:00, one snapshot every 10 minutes up to
    /// `now`, a full then two deltas.
    fn fixture(now: DateTime<Utc>) -> Vec<Snapshot> {
        let day0 = now.date_naive().and_hms_opt(0, 0, 0).unwrap().and_utc();
        let mut t = day0 - ChronoDuration::days(36);
        let mut list = Vec::new();
        let mut count = 0;
        while t <= now {
            list.push(snap(if count == 0 { Kind::Full } else { Kind::Incr }, t));
            count = (count + 1) % 3;
            t += ChronoDuration::minutes(10);
        }
        crate::format::layout::sort(&mut list);
        list
    }

    /// etcdbrctl's expected survivors (prepareExpectedSnapshotsList).
    fn expected(now: DateTime<Utc>) -> Vec<(Kind, DateTime<Utc>)> {
        let day0 = now.date_naive().and_hms_opt(0, 0, 0).unwrap().and_utc();
        let hour0 = now
            .with_minute(0)
            .unwrap()
            .with_second(0)
            .unwrap()
            .with_nanosecond(0)
            .unwrap();
        let mut t = day0 - ChronoDuration::days(35) - ChronoDuration::minutes(30);
        let mut out = Vec::new();
        for _ in 0..4 {
            t += ChronoDuration::days(7);
            out.push((Kind::Full, t));
        }
        for _ in 0..7 {
            t += ChronoDuration::days(1);
            out.push((Kind::Full, t));
        }
        t += ChronoDuration::hours(1);
        while hour0 > t {
            out.push((Kind::Full, t));
            t += ChronoDuration::hours(1);
        }
        t = hour0;
        out.push((Kind::Full, t));
        t += ChronoDuration::minutes(30);
        while now >= t {
            out.push((Kind::Full, t));
            t += ChronoDuration::minutes(30);
        }
        t -= ChronoDuration::minutes(30);
        t += ChronoDuration::minutes(10);
        while now >= t {
            out.push((Kind::Incr, t));
            t += ChronoDuration::minutes(10);
        }
        out
    }

    fn survivors(list: &[Snapshot], deleted: &[String]) -> Vec<(Kind, DateTime<Utc>)> {
        list.iter()
            .filter(|s| !deleted.contains(&s.snap_name))
            .map(|s| (s.kind, s.created_on))
            .collect()
    }

    fn run<F: std::future::Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(f)
    }

    #[test]
    fn exponential_matches_etcdbrctl_over_36_days() {
        // several times of day, including the edges of hours and days
        for (h, m, s) in [
            (16, 47, 13),
            (0, 5, 0),
            (0, 40, 0),
            (12, 0, 0),
            (12, 30, 0),
            (23, 59, 59),
            (7, 29, 59),
        ] {
            let now = Utc.with_ymd_and_hms(2026, 11, 21, h, m, s).unwrap();
            let list = fixture(now);
            let rec = Recorder::default();
            let cfg = GcConfig {
                policy: Policy::Exponential,
                delta_retention: Duration::ZERO,
            };
            let report = run(collect(&rec, &list, &cfg, now));
            let got = survivors(&list, &rec.deleted.borrow());
            let want = expected(now);
            assert_eq!(
                got,
                want,
                "now = {now}: survivors differ ({} vs {})",
                got.len(),
                want.len()
            );
            assert_eq!(
                report.deleted_full + report.deleted_delta,
                list.len() - want.len()
            );
            assert_eq!(report.failed, 0);
        }
    }

    #[test]
    fn limit_based_keeps_max_backups_fulls_and_only_latest_deltas() {
        let now = Utc.with_ymd_and_hms(2026, 11, 21, 10, 0, 0).unwrap();
        let list: Vec<Snapshot> = fixture(now).into_iter().rev().take(30).rev().collect();
        for max in [1usize, 2, 7] {
            let rec = Recorder::default();
            let cfg = GcConfig {
                policy: Policy::LimitBased { max_backups: max },
                delta_retention: Duration::ZERO,
            };
            run(collect(&rec, &list, &cfg, now));
            let got = survivors(&list, &rec.deleted.borrow());
            let fulls: Vec<_> = got.iter().filter(|(k, _)| *k == Kind::Full).collect();
            assert_eq!(fulls.len(), max);
            // deltas only after the latest full
            let last_full = fulls.last().unwrap().1;
            assert!(got
                .iter()
                .filter(|(k, _)| *k == Kind::Incr)
                .all(|(_, t)| *t > last_full));
            // the newest fulls survive
            let all_fulls: Vec<_> = list
                .iter()
                .filter(|s| s.kind == Kind::Full)
                .map(|s| s.created_on)
                .collect();
            assert_eq!(
                fulls.iter().map(|(_, t)| *t).collect::<Vec<_>>(),
                all_fulls[all_fulls.len() - max..]
            );
        }
    }

    #[test]
    fn delta_retention_and_failures_keep_what_they_must() {
        let now = Utc.with_ymd_and_hms(2026, 11, 21, 10, 0, 0).unwrap();
        let list: Vec<Snapshot> = fixture(now).into_iter().rev().take(12).rev().collect();
        // deltas younger than the retention period stay, in every stream
        let rec = Recorder::default();
        let cfg = GcConfig {
            policy: Policy::LimitBased { max_backups: 10 },
            delta_retention: Duration::from_secs(65 * 60),
        };
        run(collect(&rec, &list, &cfg, now));
        let deleted = rec.deleted.borrow();
        assert!(list
            .iter()
            .filter(|s| deleted.contains(&s.snap_name))
            .all(|s| s.kind == Kind::Incr && now - s.created_on >= ChronoDuration::minutes(65)));
        assert!(!deleted.is_empty());
        // a failing delta keeps its stream's full this cycle
        let stream0_delta = list[1].snap_name.clone();
        let rec = Recorder {
            fail: vec![stream0_delta],
            ..Default::default()
        };
        let cfg = GcConfig {
            policy: Policy::LimitBased { max_backups: 1 },
            delta_retention: Duration::ZERO,
        };
        let report = run(collect(&rec, &list, &cfg, now));
        assert_eq!(report.failed, 1);
        assert!(
            !rec.deleted.borrow().contains(&list[0].snap_name),
            "the full of a stream with a failed delta must stay"
        );
        // immutable snapshots are skipped
        let mut locked = list.clone();
        locked[0].immutability_expiry_time = now + ChronoDuration::days(1);
        let rec = Recorder::default();
        let report = run(collect(&rec, &locked, &cfg, now));
        assert!(!rec.deleted.borrow().contains(&locked[0].snap_name));
        assert!(report.skipped_immutable >= 1);
    }

    #[test]
    fn latest_stream_is_never_touched() {
        let now = Utc.with_ymd_and_hms(2026, 11, 21, 10, 0, 0).unwrap();
        let list = fixture(now);
        let last_full = *stream_starts(&list).last().unwrap();
        for policy in [Policy::Exponential, Policy::LimitBased { max_backups: 1 }] {
            let rec = Recorder::default();
            run(collect(
                &rec,
                &list,
                &GcConfig {
                    policy,
                    delta_retention: Duration::ZERO,
                },
                now,
            ));
            let deleted = rec.deleted.borrow();
            assert!(list[last_full..]
                .iter()
                .all(|s| !deleted.contains(&s.snap_name)));
        }
    }
}
