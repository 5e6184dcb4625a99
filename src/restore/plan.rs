//! What a restore will do, decided before anything is written: which full snapshot and which
//! deltas ([`select`]), up to which revision, whether the deltas need a replay, how
//! `--bump-revision` is carried out ([`BumpPlan`]) and whether the result would rewind the
//! store's history ([`Plan::check_rewind`]). Pure: from the configuration, the store's listing
//! and what the restore tool supports; tested without etcd or a store.

use super::{RestoreConfig, Target};
use crate::error::{Error, Result};
use crate::format::layout::{Kind, Snapshot, SnapshotSet};
use chrono::{DateTime, Utc};
use std::path::Path;

/// The restore to carry out.
#[derive(Debug, Clone)]
pub(crate) struct Plan {
    /// The full snapshot and the deltas after it.
    pub(crate) set: SnapshotSet,
    pub(crate) full: Snapshot,
    /// The revision the restore ends at (the set's last one unless the target says less).
    pub(crate) target: i64,
    /// `--to-time`: events after it are not replayed.
    pub(crate) cut_time: Option<DateTime<Utc>>,
    /// The store's newest revision (for [`Plan::check_rewind`]).
    pub(crate) newest: i64,
}

impl Plan {
    /// Refuses at once, before anything is downloaded, a set with encrypted objects when no
    /// identity is given (a wrong identity fails on the first object's header, as early).
    pub(crate) fn check_keys(&self, have_identities: bool) -> Result<()> {
        if have_identities {
            return Ok(());
        }
        let mut encrypted = self.set.encrypted();
        match encrypted.next() {
            None => Ok(()),
            Some(first) => Err(Error::config(format!(
                "{} of the snapshots to restore are encrypted (age; the first: {}): give their secret key with --encryption-identity-file",
                1 + encrypted.count(),
                first.snap_name
            ))),
        }
    }
}

/// The plan for `cfg` over the store's listing; `store` names the store in errors. Refused
/// already when even the target revision would rewind the store's history.
pub(crate) fn plan(cfg: &RestoreConfig, list: &[Snapshot], store: &str) -> Result<Plan> {
    let (set, stop_at) = select(list, &cfg.target)?;
    let newest = list
        .iter()
        .filter(|s| !s.is_chunk)
        .map(|s| s.last_revision)
        .max()
        .unwrap_or(0);
    let Some(full) = set.full.clone() else {
        return Err(Error::NoSnapshot(format!(
            "{store} holds no full snapshot to restore from"
        )));
    };
    let cut_time = match &cfg.target {
        Target::Time(t) => Some(*t),
        _ => None,
    };
    let target = stop_at.unwrap_or_else(|| set.last_revision());
    let plan = Plan {
        set,
        full,
        target,
        cut_time,
        newest,
    };
    plan.check_rewind(cfg, target, store)?;
    Ok(plan)
}

impl Plan {
    /// Whether deltas are to be replayed on top of the full.
    pub(crate) fn replay_needed(&self) -> bool {
        !(self.set.deltas.is_empty() || self.full.last_revision >= self.target)
    }

    /// How `--bump-revision` is carried out; `tool_supports_bump` is asked only when it
    /// matters (it runs the tool).
    pub(crate) fn bump(
        &self,
        cfg: &RestoreConfig,
        tool: &Path,
        tool_supports_bump: impl FnOnce() -> bool,
    ) -> Result<BumpPlan> {
        bump_plan(cfg, tool, self.replay_needed(), tool_supports_bump)
    }

    /// A restore that ends at `reached`, below the store's `newest` revision, rewinds history: an
    /// etcd started on it reuses revisions the store already holds for other data, so that backups
    /// taken afterwards on the same prefix sort before the abandoned later ones, which restores,
    /// validation and garbage collection would then prefer. Refused unless the revision is bumped
    /// past `newest` and marked compacted (the new history then sorts after the abandoned one, and
    /// the sidecar's catch-up from the store's revision falls back to a new full snapshot), or the
    /// operator says the result will not be backed up to this prefix (`--allow-rewind`).
    pub(crate) fn check_rewind(
        &self,
        cfg: &RestoreConfig,
        reached: i64,
        store: &str,
    ) -> Result<()> {
        let newest = self.newest;
        let bumped = reached + cfg.bump_revision.max(0);
        if reached >= newest || cfg.allow_rewind || (bumped > newest && cfg.mark_compacted) {
            return Ok(());
        }
        Err(Error::config(format!(
        "this restore ends at revision {reached}, but {} holds backups up to revision {newest}: \
         an etcd started on it would reuse revisions {}..{newest} for other data, and backups \
         it then takes on this prefix would sort before the abandoned ones (restores, \
         validation and garbage collection would prefer those). To put it in service on this \
         store prefix, add --bump-revision {} --mark-compacted (or more; Kubernetes needs it \
         anyway); to restore for inspection only, add --allow-rewind",
        store,
        reached + 1,
        (newest - reached + 1).max(1_000_000_000)
    )))
    }
}

/// How `--bump-revision` is carried out.
/// How `--bump-revision` is carried out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BumpPlan {
    None,
    /// By etcd's restore tool (it supports the flags and no delta follows the base).
    Tool,
    /// By moving the compaction marks after the replay ([`crate::restore::revbump`]).
    Patch,
}

fn bump_plan(
    cfg: &RestoreConfig,
    tool: &Path,
    replay_needed: bool,
    tool_supports_bump: impl FnOnce() -> bool,
) -> Result<BumpPlan> {
    if cfg.bump_revision == 0 {
        return Ok(BumpPlan::None);
    }
    if !replay_needed && tool_supports_bump() {
        return Ok(BumpPlan::Tool);
    }
    if cfg.mark_compacted {
        return Ok(BumpPlan::Patch);
    }
    Err(Error::config(format!(
        "--bump-revision without --mark-compacted needs a restore tool that supports it (etcdutl >= 3.5.10, etcdctl >= 3.4.27) and no deltas after the full; {} {}. Add --mark-compacted (what Kubernetes needs anyway).",
        tool.display(),
        if replay_needed {
            "would restore only the full, and deltas follow it"
        } else {
            "does not support it"
        }
    )))
}

/// The snapshots to restore for `target`, and the revision to stop at (`None`: as far as the
/// deltas go, for [`Target::Latest`] and [`Target::Time`]).
pub(crate) fn select(list: &[Snapshot], target: &Target) -> Result<(SnapshotSet, Option<i64>)> {
    let is_full = |s: &Snapshot| s.kind == Kind::Full && !s.is_chunk;
    match target {
        Target::Latest => {
            let set = crate::format::layout::latest_set(list);
            if set.full.is_none() {
                return Err(Error::NoSnapshot(
                    "no base snapshot found: the store holds no full snapshot to restore from"
                        .into(),
                ));
            }
            Ok((set, None))
        }
        Target::Snapshot(name) => {
            let Some(s) = list
                .iter()
                .find(|s| s.snap_name == *name || s.name_without_final() == name)
            else {
                return Err(Error::NoSnapshot(format!(
                    "no snapshot named {name:?} in the store (list them with /snapshot/latest or the store's listing)"
                )));
            };
            if is_full(s) {
                let set = SnapshotSet {
                    full: Some(s.clone()),
                    deltas: Vec::new(),
                };
                return Ok((set, Some(s.last_revision)));
            }
            select(list, &Target::Revision(s.last_revision))
        }
        Target::Revision(to) => {
            let to = *to;
            let Some(fi) = (0..list.len())
                .filter(|&i| is_full(&list[i]) && list[i].last_revision <= to)
                .max_by_key(|&i| (list[i].last_revision, i))
            else {
                return Err(Error::NoSnapshot(format!(
                    "no full snapshot at or below revision {to}: cannot restore to it"
                )));
            };
            let (full, deltas, covered) = chain_after(list, fi, |covered, _| covered >= to);
            if covered < to {
                return Err(Error::RevisionGap(format!(
                    "the backups after {} reach revision {covered}, not {to}",
                    full.snap_name
                )));
            }
            Ok((
                SnapshotSet {
                    full: Some(full),
                    deltas,
                },
                Some(to),
            ))
        }
        Target::Time(t) => {
            let Some(fi) = (0..list.len())
                .filter(|&i| is_full(&list[i]) && list[i].created_on <= *t)
                .max_by_key(|&i| (list[i].created_on, i))
            else {
                return Err(Error::NoSnapshot(format!(
                    "no full snapshot taken at or before {}: cannot restore to it",
                    t.to_rfc3339()
                )));
            };
            // deltas up to the first one written after `t` (it may still hold earlier events)
            let (full, deltas, _) =
                chain_after(list, fi, |_, last| last.is_some_and(|d| d.created_on > *t));
            Ok((
                SnapshotSet {
                    full: Some(full),
                    deltas,
                },
                None,
            ))
        }
    }
}

/// The full at `fi` and the deltas continuing it, until `done(covered, last delta taken)`.
fn chain_after(
    list: &[Snapshot],
    fi: usize,
    done: impl Fn(i64, Option<&Snapshot>) -> bool,
) -> (Snapshot, Vec<Snapshot>, i64) {
    let full = list[fi].clone();
    let mut deltas: Vec<Snapshot> = Vec::new();
    let mut covered = full.last_revision;
    for s in &list[fi + 1..] {
        if done(covered, deltas.last()) {
            break;
        }
        if s.kind == Kind::Incr && !s.is_chunk && s.last_revision > covered {
            covered = s.last_revision;
            deltas.push(s.clone());
        }
    }
    (full, deltas, covered)
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn s(kind: Kind, start: i64, last: i64, t: i64) -> Snapshot {
        Snapshot::new_at(
            kind,
            start,
            last,
            ".gz",
            false,
            chrono::Utc.timestamp_opt(t, 0).unwrap(),
        )
    }

    #[test]
    fn selects_the_set_holding_a_revision() {
        let list = vec![
            s(Kind::Full, 0, 10, 1),
            s(Kind::Incr, 11, 20, 2),
            s(Kind::Incr, 21, 30, 3),
            s(Kind::Full, 0, 30, 4),
            s(Kind::Incr, 31, 40, 5),
        ];
        let rev = |r| select(&list, &Target::Revision(r));
        let (latest, stop) = select(&list, &Target::Latest).unwrap();
        assert_eq!(latest.full.unwrap().last_revision, 30);
        assert_eq!((latest.deltas.len(), stop), (1, None));
        let (at, stop) = rev(25).unwrap();
        assert_eq!(at.full.unwrap().last_revision, 10);
        assert_eq!((at.deltas.len(), stop), (2, Some(25)));
        let (at, _) = rev(35).unwrap();
        assert_eq!(at.full.unwrap().last_revision, 30);
        assert!(rev(5).is_err());
        assert!(rev(50).is_err());
        assert!(select(&[], &Target::Latest).is_err());
        let t = |u| Target::Time(chrono::Utc.timestamp_opt(u, 0).unwrap());
        // up to the first delta written after the time (it may hold earlier events)
        let (at, stop) = select(&list, &t(2)).unwrap();
        assert_eq!(at.full.unwrap().last_revision, 10);
        assert_eq!((at.deltas.len(), stop), (2, None));
        let (at, _) = select(&list, &t(3)).unwrap();
        assert_eq!(at.deltas.len(), 3);
        let name = list[1].snap_name.clone();
        let (at, stop) = select(&list, &Target::Snapshot(name)).unwrap();
        assert_eq!((at.deltas.len(), stop), (1, Some(20)));
        let name = list[3].snap_name.clone();
        let (at, stop) = select(&list, &Target::Snapshot(name)).unwrap();
        assert_eq!((at.deltas.len(), stop), (0, Some(30)));
    }

    #[test]
    fn a_restore_below_the_stores_newest_revision_needs_a_bump_or_consent() {
        let list = vec![
            s(Kind::Full, 0, 10, 1),
            s(Kind::Incr, 11, 20, 2),
            s(Kind::Incr, 21, 30, 3),
        ];
        let mut cfg = RestoreConfig::for_tests();
        let p = plan(&cfg, &list, "Local d").unwrap();
        assert_eq!((p.target, p.newest, p.set.deltas.len()), (30, 30, 2));
        assert!(p.replay_needed());
        cfg.target = Target::Revision(20);
        let e = plan(&cfg, &list, "Local d").unwrap_err().to_string();
        assert!(
            e.contains("ends at revision 20, but Local d holds backups up to revision 30"),
            "{e}"
        );
        assert!(
            e.contains("--bump-revision 1000000000 --mark-compacted"),
            "{e}"
        );
        cfg.allow_rewind = true;
        assert_eq!(plan(&cfg, &list, "Local d").unwrap().target, 20);
        cfg.allow_rewind = false;
        (cfg.bump_revision, cfg.mark_compacted) = (11, true);
        let p = plan(&cfg, &list, "Local d").unwrap();
        // the replay may end lower (--stop-at-gap): checked again with what it reached
        assert!(p.check_rewind(&cfg, 19, "Local d").is_err());
        assert!(p.check_rewind(&cfg, 20, "Local d").is_ok());
    }

    #[test]
    fn the_bump_goes_to_the_tool_only_without_deltas_to_replay() {
        let list = vec![s(Kind::Full, 0, 10, 1), s(Kind::Incr, 11, 20, 2)];
        let tool = Path::new("etcdutl");
        let mut cfg = RestoreConfig::for_tests();
        let p = plan(&cfg, &list, "s").unwrap();
        let never = || -> bool { panic!("the tool is not asked without a bump") };
        assert_eq!(p.bump(&cfg, tool, never).unwrap(), BumpPlan::None);
        cfg.bump_revision = 100;
        // deltas follow: the tool cannot bump; without --mark-compacted that is an error
        let e = p.bump(&cfg, tool, || true).unwrap_err().to_string();
        assert!(e.contains("deltas follow it"), "{e}");
        cfg.mark_compacted = true;
        assert_eq!(p.bump(&cfg, tool, || true).unwrap(), BumpPlan::Patch);
        // the full alone: the tool bumps when it can
        cfg.target = Target::Snapshot(list[0].snap_name.clone());
        // (below the store's newest revision, but bumped past it and marked compacted)
        let p = plan(&cfg, &list, "s").unwrap();
        assert!(!p.replay_needed());
        assert_eq!(p.bump(&cfg, tool, || true).unwrap(), BumpPlan::Tool);
        assert_eq!(p.bump(&cfg, tool, || false).unwrap(), BumpPlan::Patch);
        cfg.mark_compacted = false;
        assert!(p.bump(&cfg, tool, || false).is_err());
        assert!(
            plan(&cfg, &list, "s").is_err(),
            "bumped but not marked: a rewind"
        );
    }

    #[test]
    fn an_empty_store_has_nothing_to_restore() {
        let cfg = RestoreConfig::for_tests();
        let e = plan(&cfg, &[], "Local d").unwrap_err();
        assert!(matches!(e, Error::NoSnapshot(_)), "{e}");
        assert!(!e.is_transient());
    }
}
