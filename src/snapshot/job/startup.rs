//! The start-up decision of the `server`'s snapshot job, as a pure function of the store's
//! latest set, the schedule, the time and etcd's revision: a full snapshot at once when the
//! store has none, when the latest one is final, or when a scheduled full was missed since it;
//! otherwise a catch-up delta from the store's last revision + 1 (a compacted revision makes
//! the job fall back to a full later). A store ahead of etcd (etcd's history was rewound)
//! stops the job with an error instead: what it would write would sort before the abandoned
//! later objects. This replaces etcdbrctl's "window" heuristic (section 4.3 of the reference)
//! with the rule it approximates: a full is required exactly when the schedule promised one
//! that the store does not have.

use crate::error::{Error, Result};
use crate::format::layout::SnapshotSet;
use crate::schedule::Schedule;
use chrono::{DateTime, Utc};

/// What the job does first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Decision {
    /// A full snapshot at once, for this reason.
    Full(String),
    /// The latest full is current: deltas from the store's last revision (`stored`) + 1.
    CatchUp { stored: i64 },
}

/// The decision for the store's latest `set`, with etcd at `etcd_revision` at `now`.
pub(crate) fn decide(
    set: &SnapshotSet,
    schedule: &Schedule,
    now: DateTime<Utc>,
    etcd_revision: i64,
) -> Result<Decision> {
    // etcd behind the store: its history was rewound (restored to an older point without a
    // revision bump, or replaced). What it would store now sorts before the later, abandoned
    // objects, which restores, validation and GC would prefer: write nothing until an
    // operator resolves it (the restore's rewind check refuses such restores).
    let newest = set.last_revision();
    if newest > etcd_revision {
        return Err(Error::config(format!(
            "etcd is at revision {etcd_revision}, behind the store's newest backup at revision {newest} ({}): its history was rewound (restored to an older point without --bump-revision, or replaced). Backups taken now would sort before the abandoned ones, which restores and garbage collection would prefer, so none are taken. Restore again with --bump-revision {} --mark-compacted, or move the later backups out of this --store-prefix",
            set.full
                .as_ref()
                .map(|f| f.snap_name.clone())
                .unwrap_or_default(),
            (newest - etcd_revision + 1).max(1_000_000_000)
        )));
    }
    let full = match &set.full {
        None => return Ok(Decision::Full("the store holds no full snapshot".into())),
        Some(f) if f.is_final => {
            return Ok(Decision::Full(format!(
                "the latest full snapshot {} is final",
                f.snap_name
            )))
        }
        Some(f) => f,
    };
    match schedule.next_after(full.created_on) {
        Some(due) if due <= now => Ok(Decision::Full(format!(
            "a scheduled full snapshot was due at {} and the latest is {}",
            due.format("%Y-%m-%dT%H:%M:%SZ"),
            full.snap_name
        ))),
        _ => Ok(Decision::CatchUp { stored: newest }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::layout::{Kind, Snapshot};
    use chrono::TimeZone;

    fn at(h: u32, m: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 12, 5, h, m, 0).unwrap()
    }

    fn set(full: Option<(i64, DateTime<Utc>, bool)>, deltas: &[i64]) -> SnapshotSet {
        let full = full.map(|(rev, t, fin)| Snapshot::new_at(Kind::Full, 0, rev, ".gz", fin, t));
        let mut from = full.as_ref().map_or(0, |f| f.last_revision);
        let deltas = deltas
            .iter()
            .map(|&last| {
                let d = Snapshot::new_at(Kind::Incr, from + 1, last, ".gz", false, at(10, 30));
                from = last;
                d
            })
            .collect();
        SnapshotSet { full, deltas }
    }

    #[test]
    fn a_full_exactly_when_the_schedule_promised_one_the_store_lacks() {
        let hourly = Schedule::parse("0 */1 * * *").unwrap();
        // nothing stored
        let d = decide(&set(None, &[]), &hourly, at(10, 40), 5).unwrap();
        assert!(matches!(d, Decision::Full(r) if r.contains("no full snapshot")));
        // a final full: the cluster was torn down and is back
        let d = decide(
            &set(Some((10, at(10, 5), true)), &[]),
            &hourly,
            at(10, 40),
            10,
        );
        assert!(matches!(d, Ok(Decision::Full(r)) if r.contains("is final")));
        // the 11:00 full was missed
        let s = set(Some((10, at(10, 5), false)), &[20]);
        let d = decide(&s, &hourly, at(11, 1), 25).unwrap();
        assert!(matches!(d, Decision::Full(r) if r.contains("due at 2026-12-05T11:00:00Z")));
        // not due yet: deltas from the set's last revision
        let d = decide(&s, &hourly, at(10, 59), 25).unwrap();
        assert_eq!(d, Decision::CatchUp { stored: 20 });
        // exactly at the due time counts as missed
        let d = decide(&s, &hourly, at(11, 0), 25).unwrap();
        assert!(matches!(d, Decision::Full(_)));
    }

    #[test]
    fn etcd_behind_the_store_stops_the_job() {
        let hourly = Schedule::parse("0 */1 * * *").unwrap();
        let s = set(Some((10, at(10, 5), false)), &[20]);
        let e = decide(&s, &hourly, at(10, 30), 19).unwrap_err().to_string();
        assert!(
            e.contains("etcd is at revision 19, behind the store's newest backup at revision 20"),
            "{e}"
        );
        assert!(e.contains("--bump-revision 1000000000"), "{e}");
        // equal is fine (nothing happened since the last delta)
        assert_eq!(
            decide(&s, &hourly, at(10, 30), 20).unwrap(),
            Decision::CatchUp { stored: 20 }
        );
    }
}
