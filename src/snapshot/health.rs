//! The sidecar's health: its role, etcd's reachability, and whether backups are stale.
//!
//! Backups are stale when no full snapshot was stored within its schedule window (the first
//! scheduled time after the latest full, plus `--etcd-snapshot-timeout` for the snapshot to
//! finish), or when etcd's revision moved past the last stored revision and nothing was stored
//! for three delta periods. `/healthz` turns 503 on the leader when either holds; `/metrics`
//! exposes both as `etcdbr_snapshot_stale{kind}`.

use crate::etcd::leader::Role;
use crate::format::layout::{Kind, Snapshot, SnapshotSet};
use crate::metrics;
use crate::schedule::Schedule;
use chrono::{DateTime, Utc};
use serde::Serialize;
use std::sync::Mutex;
use std::time::Duration;

#[derive(Debug, Clone)]
pub(crate) struct HealthConfig {
    pub(crate) schedule: Schedule,
    /// `None` when delta snapshots are disabled.
    pub(crate) delta_period: Option<Duration>,
    /// Time a full snapshot may take after its scheduled time.
    pub(crate) full_grace: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum RoleState {
    Unknown,
    Leader,
    Follower,
}

#[derive(Debug, Default)]
struct Inner {
    role: Option<Role>,
    etcd_error: Option<String>,
    job_since: Option<DateTime<Utc>>,
    last_full: Option<(DateTime<Utc>, i64)>,
    /// Time of the last commit (full or delta) by this sidecar, or of the newest object found in
    /// the store, and the revision the store then covered.
    last_stored: Option<(DateTime<Utc>, i64)>,
    last_failure: Option<(DateTime<Utc>, String)>,
    /// Why the job refuses to write (etcd's history was rewound), until it may again.
    blocked: Option<String>,
    /// The last restore drill.
    drill: Option<Drill>,
}

/// The last restore drill, as `/snapshot/latest` shows it.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Drill {
    /// When it ended.
    pub(crate) time: DateTime<Utc>,
    /// `equal`, `unproven`, `mismatch` or `failed`.
    pub(crate) result: &'static str,
    /// The revision the latest set restored to (when it restored).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) revision: Option<i64>,
    /// What it was compared with, or why it failed.
    pub(crate) detail: String,
}

pub(crate) struct Health {
    cfg: HealthConfig,
    inner: Mutex<Inner>,
}

/// What `/healthz` reports.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Report {
    pub(crate) health: bool,
    pub(crate) role: RoleState,
    #[serde(rename = "snapshotterActive")]
    pub(crate) snapshotter_active: bool,
    #[serde(rename = "fullSnapshotStale")]
    pub(crate) full_stale: bool,
    #[serde(rename = "deltaSnapshotStale")]
    pub(crate) delta_stale: bool,
    #[serde(rename = "etcdRevision")]
    pub(crate) etcd_revision: i64,
    #[serde(rename = "lastStoredRevision")]
    pub(crate) last_stored_revision: Option<i64>,
    #[serde(rename = "lastFailure", skip_serializing_if = "Option::is_none")]
    pub(crate) last_failure: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub(crate) reasons: Vec<String>,
}

impl Health {
    pub(crate) fn new(cfg: HealthConfig) -> Health {
        Health {
            cfg,
            inner: Mutex::new(Inner::default()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The latest role probe (`Err`: etcd unreachable or without leader).
    pub(crate) fn set_role(&self, role: Result<Role, String>) {
        let mut i = self.lock();
        match role {
            Ok(r) => {
                i.role = Some(r);
                i.etcd_error = None;
                if let Some(m) = metrics::get() {
                    m.is_leader.set(r.is_leader() as i64);
                    m.is_learner.set(r.is_learner as i64);
                    m.etcd_revision.set(r.revision);
                }
            }
            Err(e) => {
                i.etcd_error = Some(e);
                if let Some(m) = metrics::get() {
                    m.is_leader.set(0);
                }
            }
        }
    }

    /// Whether the latest probe found this member leading (cheap: no staleness evaluation).
    pub(crate) fn is_leader(&self) -> bool {
        let i = self.lock();
        i.etcd_error.is_none() && i.role.is_some_and(|r| r.is_leader())
    }

    pub(crate) fn job_started(&self) {
        self.lock().job_since = Some(Utc::now());
    }

    pub(crate) fn job_stopped(&self) {
        self.lock().job_since = None;
    }

    /// What the store held when the job (re)started.
    pub(crate) fn store_seen(&self, set: &SnapshotSet) {
        let mut i = self.lock();
        if let Some(f) = &set.full {
            i.last_full = Some((f.created_on, f.last_revision));
            metrics::latest(Kind::Full, f.last_revision, f.created_on.timestamp());
        }
        let newest = set.deltas.last().or(set.full.as_ref());
        if let Some(s) = newest {
            i.last_stored = Some((s.created_on, s.last_revision));
        }
        if let Some(d) = set.deltas.last() {
            metrics::latest(Kind::Incr, d.last_revision, d.created_on.timestamp());
        }
        set_delta_gauges(set.deltas.len(), set.deltas.first(), set.deltas.last());
    }

    pub(crate) fn full_stored(&self, s: &Snapshot) {
        let mut i = self.lock();
        i.last_full = Some((s.created_on, s.last_revision));
        i.last_stored = Some((Utc::now(), s.last_revision));
        metrics::latest(Kind::Full, s.last_revision, s.created_on.timestamp());
        set_delta_gauges(0, None, None);
    }

    /// A delta was stored; `first` is the first delta after the latest full.
    pub(crate) fn delta_stored(&self, s: &Snapshot, count: usize, first: Option<&Snapshot>) {
        let mut i = self.lock();
        i.last_stored = Some((Utc::now(), s.last_revision));
        metrics::latest(Kind::Incr, s.last_revision, s.created_on.timestamp());
        set_delta_gauges(count, first, Some(s));
    }

    /// The job refuses to write for this reason (`None`: it may again).
    pub(crate) fn set_blocked(&self, why: Option<String>) {
        self.lock().blocked = why;
    }

    pub(crate) fn failed(&self, e: &crate::Error) {
        self.lock().last_failure = Some((Utc::now(), e.to_string()));
        metrics::failure(e.category());
    }

    /// Evaluates health now; also refreshes the staleness gauges.
    /// Records a restore drill's outcome.
    pub(crate) fn drill_done(&self, d: Drill) {
        self.lock().drill = Some(d);
    }

    /// The last restore drill.
    pub(crate) fn last_drill(&self) -> Option<Drill> {
        self.lock().drill.clone()
    }

    pub(crate) fn report(&self) -> Report {
        self.report_at(Utc::now())
    }

    pub(crate) fn report_at(&self, now: DateTime<Utc>) -> Report {
        let i = self.lock();
        let role = match (&i.etcd_error, i.role) {
            (None, Some(r)) if r.is_leader() => RoleState::Leader,
            (None, Some(_)) => RoleState::Follower,
            _ => RoleState::Unknown,
        };
        let mut reasons = Vec::new();
        let (mut full_stale, mut delta_stale) = (false, false);
        if let Some(e) = &i.etcd_error {
            reasons.push(format!("etcd: {e}"));
        } else if i.role.is_none() {
            reasons.push("etcd has not been probed yet".into());
        }
        if role == RoleState::Leader {
            if let Some(b) = &i.blocked {
                reasons.push(b.clone());
            }
            if let Some(d) = i.drill.as_ref().filter(|d| d.result == "mismatch") {
                reasons.push(format!(
                    "the restore drill of {} found backups that differ from the cluster: {}",
                    d.time.format("%Y-%m-%dT%H:%M:%SZ"),
                    d.detail
                ));
            }
            match i.job_since {
                None => reasons.push("the snapshotter is not running yet".into()),
                Some(since) => {
                    let grace = chrono::Duration::from_std(self.cfg.full_grace)
                        .unwrap_or(chrono::Duration::minutes(15));
                    let base = i.last_full.map(|f| f.0).unwrap_or(since);
                    if let Some(due) = self.cfg.schedule.next_after(base) {
                        if now > due + grace {
                            full_stale = true;
                            reasons.push(match i.last_full {
                                Some((t, rev)) => format!(
                                    "no full snapshot since {} (revision {rev}); one was due at {}",
                                    t.format("%Y-%m-%dT%H:%M:%SZ"),
                                    due.format("%Y-%m-%dT%H:%M:%SZ")
                                ),
                                None => format!(
                                    "no full snapshot yet; one was due at {}",
                                    due.format("%Y-%m-%dT%H:%M:%SZ")
                                ),
                            });
                        }
                    }
                    if let (Some(period), Some(r)) = (self.cfg.delta_period, i.role) {
                        let (t, rev) = i.last_stored.unwrap_or((since, 0));
                        let t = t.max(since);
                        let window = chrono::Duration::from_std(period * 3)
                            .unwrap_or(chrono::Duration::minutes(1));
                        if r.revision > rev && now > t + window {
                            delta_stale = true;
                            reasons.push(format!(
                                "etcd is at revision {} but the backups end at {rev}, stored {}s ago (more than 3 delta periods)",
                                r.revision,
                                (now - t).num_seconds()
                            ));
                        }
                    }
                }
            }
        }
        if let Some(m) = metrics::get() {
            m.stale.with_label_values(&["Full"]).set(full_stale as i64);
            m.stale.with_label_values(&["Incr"]).set(delta_stale as i64);
            m.required
                .with_label_values(&["Full"])
                .set(full_stale as i64);
            m.required
                .with_label_values(&["Incr"])
                .set(delta_stale as i64);
        }
        let health = reasons.is_empty() && role != RoleState::Unknown;
        Report {
            health,
            role,
            snapshotter_active: i.job_since.is_some(),
            full_stale,
            delta_stale,
            etcd_revision: i.role.map(|r| r.revision).unwrap_or(0),
            last_stored_revision: i.last_stored.map(|s| s.1),
            last_failure: i
                .last_failure
                .as_ref()
                .map(|(t, e)| format!("{}: {e}", t.format("%Y-%m-%dT%H:%M:%SZ"))),
            reasons,
        }
    }
}

fn set_delta_gauges(count: usize, first: Option<&Snapshot>, last: Option<&Snapshot>) {
    if let Some(m) = metrics::get() {
        m.latest_deltas_total.set(count as i64);
        let revs = match (first, last) {
            (Some(f), Some(l)) => l.last_revision - f.start_revision,
            _ => 0,
        };
        m.latest_deltas_revisions_total.set(revs);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn role(rev: i64, leader: bool) -> Role {
        Role {
            member_id: 1,
            leader_id: if leader { 1 } else { 2 },
            raft_term: 2,
            revision: rev,
            is_learner: false,
        }
    }

    #[test]
    fn stale_full_and_delta() {
        let h = Health::new(HealthConfig {
            schedule: Schedule::parse("0 */1 * * *").unwrap(),
            delta_period: Some(Duration::from_secs(20)),
            full_grace: Duration::from_secs(600),
        });
        assert!(!h.report().health, "not probed yet");
        h.set_role(Ok(role(100, true)));
        h.job_started();
        let t0 = Utc.with_ymd_and_hms(2026, 1, 1, 10, 0, 5).unwrap();
        let full = Snapshot::new_at(Kind::Full, 0, 100, "", false, t0);
        h.full_stored(&full);
        // the job stored it just now; pretend times relative to t0
        h.lock().last_stored = Some((t0, 100));
        h.lock().job_since = Some(t0);
        assert!(h.report_at(t0 + chrono::Duration::seconds(30)).health);
        // next full due at 11:00, grace 10 min
        let r = h.report_at(Utc.with_ymd_and_hms(2026, 1, 1, 11, 10, 30).unwrap());
        assert!(r.full_stale && !r.health, "{r:?}");
        // etcd moved on, nothing stored for > 60 s
        h.set_role(Ok(role(150, true)));
        let r = h.report_at(t0 + chrono::Duration::seconds(61));
        assert!(r.delta_stale && !r.full_stale && !r.health, "{r:?}");
        let r = h.report_at(t0 + chrono::Duration::seconds(59));
        assert!(r.health, "{r:?}");
        // a follower is healthy while etcd answers
        h.set_role(Ok(role(150, false)));
        let r = h.report_at(t0 + chrono::Duration::seconds(3600 * 5));
        assert!(r.health && r.role == RoleState::Follower, "{r:?}");
        h.set_role(Err("down".into()));
        assert!(!h.report().health);
    }
}
