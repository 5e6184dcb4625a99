//! Delta snapshots of the `snapshot` job under a write load, against real etcd.

use crate::common::*;
use etcdbr::format::delta::EventType;
use etcdbr::format::layout::{Kind, Snapshot};
use std::collections::BTreeMap;
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[test]
fn delta_chain_is_gap_free_and_final_delta_on_sigterm() {
    let etcd = Etcd::start(EtcdVersion::V34);
    etcd.fill(100, 10);
    let tmp = tempfile::tempdir().unwrap();
    let bk = tmp.path().join("bk");
    let mut job = etcdbrctl()
        .args([
            "snapshot",
            "--endpoints",
            &etcd.endpoint,
            "--schedule",
            "0 0 1 1 *",
            "--delta-snapshot-period",
            "1s",
        ])
        .arg("--store-container")
        .arg(&bk)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(tmp.path().join("job.log")).unwrap())
        .spawn()
        .map(Proc)
        .unwrap();
    let t = Instant::now();
    while files_in(&bk.join("v2")).is_empty() {
        assert!(t.elapsed() < Duration::from_secs(20), "no full snapshot");
        std::thread::sleep(Duration::from_millis(50));
    }
    let stop = Arc::new(AtomicBool::new(false));
    let writers: Vec<_> = (0..2)
        .map(|_| writer(vec![etcd.endpoint.clone()], stop.clone()))
        .collect();
    std::thread::sleep(Duration::from_millis(4500));
    // the signal lands while the writers are still writing
    let at_signal = etcd.revision();
    std::process::Command::new("kill")
        .args(["-TERM", &job.id().to_string()])
        .status()
        .unwrap();
    let status = job.wait().unwrap();
    stop.store(true, Ordering::Relaxed);
    let writes: u64 = writers.into_iter().map(|w| w.join().unwrap()).sum();
    let log = std::fs::read_to_string(tmp.path().join("job.log")).unwrap();
    assert!(status.success(), "SIGTERM must exit 0: {log}");

    let snaps = stored_in(&bk);
    let full = snaps.iter().find(|s| s.kind == Kind::Full).expect("a full");
    let deltas: Vec<&Snapshot> = snaps.iter().filter(|s| s.kind == Kind::Incr).collect();
    assert!(
        deltas.len() >= 3,
        "a delta per period under load: {deltas:?}\n{log}"
    );
    // contiguous chain from the full
    let mut expect_start = full.last_revision + 1;
    let mut revs: BTreeMap<i64, usize> = BTreeMap::new();
    let mut leased_with_ttl = 0;
    for d in &deltas {
        assert_eq!(
            d.start_revision, expect_start,
            "{} does not continue the chain",
            d.snap_name
        );
        let events = delta_events(d, &std::fs::read(bk.join("v2").join(&d.snap_name)).unwrap());
        assert_eq!(
            events.first().unwrap().mod_revision,
            d.start_revision,
            "{}",
            d.snap_name
        );
        assert_eq!(
            events.last().unwrap().mod_revision,
            d.last_revision,
            "{}",
            d.snap_name
        );
        let mut prev = 0;
        for e in &events {
            assert!(
                e.mod_revision == prev || e.mod_revision == prev + 1 || prev == 0,
                "gap inside {}",
                d.snap_name
            );
            prev = e.mod_revision;
            if e.mod_revision != *revs.keys().next_back().unwrap_or(&0) {
                *revs.entry(e.mod_revision).or_default() += 1;
            }
            if e.lease != 0 && e.lease_ttl == Some(600) {
                leased_with_ttl += 1;
            }
            if e.kind == EventType::Put {
                assert!(e.mod_revision > 0 && e.version > 0);
            }
        }
        expect_start = d.last_revision + 1;
    }
    let last = deltas.last().unwrap().last_revision;
    assert!(
        last >= at_signal,
        "the final delta must reach the revision at the signal ({at_signal}), got {last}"
    );
    let want: Vec<i64> = (full.last_revision + 1..=last).collect();
    assert_eq!(
        revs.keys().copied().collect::<Vec<_>>(),
        want,
        "every revision exactly once"
    );
    assert!(revs.values().all(|n| *n == 1));
    assert!(
        leased_with_ttl > 0,
        "leased keys must carry the lease TTL once per delta"
    );
    eprintln!(
        "{} writes, {} deltas, revisions {}..={last}",
        writes,
        deltas.len(),
        full.last_revision + 1
    );
}

/// etcd killed and restarted under the job, then compacted past the watch position: the job
/// resumes; since the next revision is gone it takes a new full, and each set's chain is
/// contiguous. Nothing is skipped silently.
#[test]
fn etcd_restart_and_compaction_start_a_new_set() {
    let mut etcd = Etcd::start(EtcdVersion::V35);
    etcd.fill(100, 10);
    let tmp = tempfile::tempdir().unwrap();
    let bk = tmp.path().join("bk");
    let mut job = etcdbrctl()
        .args([
            "snapshot",
            "--endpoints",
            &etcd.endpoint,
            "--schedule",
            "0 0 1 1 *",
            "--delta-snapshot-period",
            "1s",
        ])
        .args([
            "--etcd-connection-timeout",
            "2s",
            "--backoff-threshold-time",
            "2s",
        ])
        .arg("--store-container")
        .arg(&bk)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(tmp.path().join("job.log")).unwrap())
        .spawn()
        .map(Proc)
        .unwrap();
    let wait_for = |what: &str, f: &dyn Fn(&[Snapshot]) -> bool| {
        let t = Instant::now();
        while !f(&stored_in(&bk)) {
            let log = std::fs::read_to_string(tmp.path().join("job.log")).unwrap_or_default();
            assert!(
                t.elapsed() < Duration::from_secs(40),
                "timed out waiting for {what}: {:?}\n{log}",
                files_in(&bk.join("v2"))
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    wait_for("the first full", &|s| {
        s.iter().any(|x| x.kind == Kind::Full)
    });
    etcd.fill(50, 10);
    wait_for("a delta", &|s| s.iter().any(|x| x.kind == Kind::Incr));

    // the job sleeps (SIGSTOP) while etcd restarts and compacts past the job's next revision
    let signal = |sig: &str| {
        std::process::Command::new("kill")
            .args([sig, &job.id().to_string()])
            .status()
            .unwrap()
    };
    signal("-STOP");
    etcd.kill();
    etcd.restart();
    etcd.fill(30, 10);
    etcd.fill(30, 10);
    let rev = etcd.revision();
    etcd.etcdctl(&["compact", &rev.to_string(), "--physical"]);
    etcd.fill(20, 10);
    signal("-CONT");
    wait_for("a new full after the compaction", &|s| {
        s.iter().filter(|x| x.kind == Kind::Full).count() >= 2
    });
    etcd.fill(20, 10);
    let end = etcd.revision();
    wait_for("deltas of the new set up to the end", &|s| {
        s.last().is_some_and(|x| x.last_revision >= end)
    });
    signal("-TERM");
    assert!(job.wait().unwrap().success());
    let log = std::fs::read_to_string(tmp.path().join("job.log")).unwrap();
    assert!(
        log.contains("compacted away"),
        "the job must say why it took a full: {log}"
    );

    let all = stored_in(&bk);
    let fulls: Vec<&Snapshot> = all.iter().filter(|s| s.kind == Kind::Full).collect();
    assert_eq!(fulls.len(), 2, "{all:?}");
    assert!(
        fulls[1].last_revision >= rev,
        "the new full must include the compacted range"
    );
    // each set: deltas contiguous from its full; no delta crosses into the next set
    for (i, f) in fulls.iter().enumerate() {
        let until = fulls
            .get(i + 1)
            .map(|n| n.last_revision)
            .unwrap_or(i64::MAX);
        let mut next = f.last_revision + 1;
        for d in all.iter().filter(|d| {
            d.kind == Kind::Incr && d.start_revision > f.last_revision && d.start_revision <= until
        }) {
            assert_eq!(d.start_revision, next, "gap before {}", d.snap_name);
            next = d.last_revision + 1;
        }
    }
    assert!(all.last().unwrap().last_revision >= end);
}
