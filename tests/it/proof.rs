//! etcd's keyspace hash computed natively from a snapshot (`etcdbr::ondisk::hashkv`) equals
//! etcd's own `HashKV`, on 3.4.23 and 3.5.1, at every revision: puts, overwrites, deletes, a
//! key deleted and created again, a lease, a multi-put transaction, a compaction at a delete's
//! revision (its tombstone), writes after it, a keyspace emptied and compacted, and a random
//! workload compacted at random points.

use crate::common::*;
use std::path::{Path, PathBuf};

/// etcd's `HashKV` at `rev`: (hash, compact revision).
fn etcd_hashkv(etcd: &Etcd, rev: i64) -> (u32, i64) {
    let out = etcd.etcdctl(&["endpoint", "hashkv", &format!("--rev={rev}"), "-w", "json"]);
    assert!(
        out.status.success(),
        "hashkv --rev={rev}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("hashkv json");
    let h = &v[0]["HashKV"];
    let n = |f: &str| h[f].as_i64().unwrap_or(0);
    (n("hash") as u32, n("compact_revision"))
}

/// A snapshot of the running etcd, without its sha256 trailer (the bare db).
fn snapshot(etcd: &Etcd, dir: &Path, name: &str) -> PathBuf {
    let f = dir.join(name);
    let out = etcd.etcdctl(&["snapshot", "save", f.to_str().expect("path")]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let len = std::fs::metadata(&f).expect("stat").len();
    if len % 512 == 32 {
        std::fs::OpenOptions::new()
            .write(true)
            .open(&f)
            .and_then(|file| file.set_len(len - 32))
            .expect("cut the trailer");
    }
    f
}

/// Compares every revision from `from` to the current one.
fn compare_all(etcd: &Etcd, dir: &Path, name: &str, from: i64) -> usize {
    let db_file = snapshot(etcd, dir, name);
    let db = etcdbr::ondisk::bbolt::Db::open(&db_file).expect("open the snapshot");
    let current = etcd.revision();
    let mut compared = 0;
    for rev in from..=current {
        let (theirs, compact) = etcd_hashkv(etcd, rev);
        let ours = etcdbr::ondisk::hashkv::hash_kv(&db, rev, compact).expect("hash");
        assert_eq!(
            ours, theirs,
            "{name}: HashKV at revision {rev} (compacted at {compact}): ours {ours:08x}, etcd's {theirs:08x}"
        );
        compared += 1;
    }
    // the command line gives the same number
    let (theirs, compact) = etcd_hashkv(etcd, current);
    let out = run_ok(
        etcdbrctl()
            .args(["snapshot", "hashkv"])
            .arg(&db_file)
            .args(["--revision", &current.to_string()])
            .args(["--compact-revision", &compact.to_string()]),
    );
    let v: serde_json::Value = serde_json::from_str(out.trim()).expect("json");
    assert_eq!(v["hash"].as_u64(), Some(u64::from(theirs)), "{name}: {out}");
    eprintln!("{name}: revisions {from}..={current} compared");
    compared
}

fn equals_etcds_hashkv(version: EtcdVersion) {
    let etcd = Etcd::start(version);
    let dir = tempfile::tempdir().expect("tmp");
    etcd.put("/a", b"1");
    etcd.put("/b", b"2");
    etcd.put("/a", b"3");
    etcd.etcdctl(&["del", "/b"]);
    let lease = etcd.etcdctl(&["lease", "grant", "600"]);
    let lease_id = String::from_utf8_lossy(&lease.stdout)
        .split_whitespace()
        .nth(1)
        .expect("lease id")
        .to_string();
    etcd.etcdctl(&["put", "/leased", "x", &format!("--lease={lease_id}")]);
    let txn = clean_cmd(&version.etcdctl())
        .env("ETCDCTL_API", "3")
        .args(["--endpoints", &etcd.endpoint, "txn"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .spawn()
        .and_then(|mut c| {
            use std::io::Write;
            c.stdin
                .take()
                .expect("stdin")
                .write_all(b"\nput /t1 one\nput /t2 two\n\n\n")?;
            c.wait()
        })
        .expect("txn");
    assert!(txn.success());
    // no compaction yet: every revision
    let mut n = compare_all(&etcd, dir.path(), "uncompacted.db", 1);

    // a compaction exactly at a delete (its tombstone), then writes after it
    etcd.put("/c", b"c");
    etcd.etcdctl(&["del", "/a"]);
    let at_delete = etcd.revision();
    let out = etcd.etcdctl(&["compaction", "--physical", &at_delete.to_string()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    etcd.put("/a", b"again");
    etcd.put("/c", b"c2");
    etcd.etcdctl(&["del", "/t1"]);
    n += compare_all(&etcd, dir.path(), "compacted.db", at_delete + 1);

    // everything deleted and compacted: nothing is kept
    etcd.etcdctl(&["del", "", "--from-key"]);
    let emptied = etcd.revision();
    etcd.etcdctl(&["compaction", "--physical", &emptied.to_string()]);
    etcd.put("/after", b"1");
    n += compare_all(&etcd, dir.path(), "emptied.db", emptied + 1);

    // a random workload over few keys (overwrites, deletes, re-creations), compacted at
    // random points: every revision after each compaction
    let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = |m: u64| {
        seed = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
        (seed >> 33) % m
    };
    for round in 0..3 {
        for _ in 0..40 {
            let key = format!("/r/{}", next(8));
            if next(4) == 0 {
                etcd.etcdctl(&["del", &key]);
            } else {
                etcd.put(&key, format!("v{}", next(1000)).as_bytes());
            }
        }
        let at = etcd.revision() - i64::try_from(next(10)).expect("small");
        etcd.etcdctl(&["compaction", "--physical", &at.to_string()]);
        for _ in 0..20 {
            etcd.put(&format!("/r/{}", next(8)), b"after");
        }
        n += compare_all(&etcd, dir.path(), &format!("random-{round}.db"), at + 1);
    }
    eprintln!("{version:?}: HashKV equal at {n} revisions");
}

#[test]
fn native_hashkv_equals_etcds_etcd34() {
    equals_etcds_hashkv(EtcdVersion::V34);
}

#[test]
fn native_hashkv_equals_etcds_etcd35() {
    equals_etcds_hashkv(EtcdVersion::V35);
}

/// `snapshot save` into a Local store; the stored object's name.
fn save_full(etcd: &Etcd, container: &Path) -> String {
    let out = run_ok(
        etcdbrctl()
            .args(["snapshot", "save", "--endpoints", &etcd.endpoint])
            .args(["--storage-provider", "Local", "--store-container"])
            .arg(container),
    );
    out.trim().rsplit('/').next().expect("name").to_string()
}

fn verify(container: &Path, name: &str) -> std::process::Output {
    etcdbrctl()
        .args(["snapshot", "verify", name, "--storage-provider", "Local"])
        .arg("--store-container")
        .arg(container)
        .output()
        .expect("run verify")
}

/// A full is stored with etcd's keyspace hash at its revision; `snapshot verify` proves the
/// stored object equal to it, and catches a full replaced by another cluster's (a valid
/// snapshot with a valid sha256 trailer, under the same name).
fn proof_recorded_and_checked(version: EtcdVersion) {
    let a = Etcd::start(version);
    let b = Etcd::start(version);
    let dir = tempfile::tempdir().expect("tmp");
    let (sa, sb) = (dir.path().join("a"), dir.path().join("b"));
    for i in 0..50 {
        a.put(&format!("/k/{i}"), format!("a{i}").as_bytes());
        b.put(&format!("/k/{i}"), format!("b{i}").as_bytes());
    }
    // a compaction before the full: the proof records it
    a.etcdctl(&["del", "/k/7"]);
    let c = a.revision();
    a.etcdctl(&["compaction", "--physical", &c.to_string()]);
    a.put("/k/after", b"x");
    let name = save_full(&a, &sa);
    let proofs = proofs_in(&sa.join("proofs"));
    assert_eq!(
        proofs,
        vec![format!("{name}.hashkv.json")],
        "one proof, named after the full"
    );
    let proof: serde_json::Value =
        serde_json::from_slice(&std::fs::read(sa.join("proofs").join(&proofs[0])).expect("read"))
            .expect("proof json");
    assert_eq!(proof["revision"].as_i64(), Some(a.revision()));
    assert_eq!(proof["compactRevision"].as_i64(), Some(c));
    let (hash, _) = etcd_hashkv(&a, a.revision());
    assert_eq!(proof["hash"].as_u64(), Some(u64::from(hash)));

    // compactions after the full do not matter: the proof carries its compaction revision
    a.put("/k/later", b"y");
    a.etcdctl(&["compaction", "--physical", &a.revision().to_string()]);
    let out = verify(&sa, &name);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("equal to etcd's HashKV"),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // a copy of the object and its proof, checked as local files
    let (local, local_proof) = (dir.path().join(&name), dir.path().join("proof.json"));
    std::fs::copy(sa.join("v2").join(&name), &local).expect("copy");
    std::fs::copy(sa.join("proofs").join(&proofs[0]), &local_proof).expect("copy");
    let out = etcdbrctl()
        .args(["snapshot", "verify"])
        .arg(&local)
        .arg("--proof")
        .arg(&local_proof)
        .output()
        .expect("verify a file");
    assert!(
        out.status.success() && String::from_utf8_lossy(&out.stdout).contains("equal to etcd's"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // another cluster's full under this name: trailer and pages are fine, the data is not
    let other = save_full(&b, &sb);
    std::fs::copy(sb.join("v2").join(&other), sa.join("v2").join(&name)).expect("replace");
    let out = verify(&sa, &name);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "a foreign full passed: {stderr}");
    assert!(
        stderr.contains(&name) && stderr.contains("not the data of the cluster"),
        "{stderr}"
    );
    let foreign = dir.path().join("foreign.gz");
    std::fs::copy(sb.join("v2").join(&other), &foreign).expect("copy");
    let out = etcdbrctl()
        .args(["snapshot", "verify"])
        .arg(&foreign)
        .arg("--proof")
        .arg(&local_proof)
        .output()
        .expect("verify a file");
    assert!(
        !out.status.success()
            && String::from_utf8_lossy(&out.stderr).contains("not the data of the cluster"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // GC deletes a proof with its full (LimitBased, one backup kept)
    let names_before = files_in(&sa.join("v2"));
    a.put("/k/newer", b"z");
    let newer = save_full(&a, &sa);
    assert_eq!(proofs_in(&sa.join("proofs")).len(), 2);
    let gc = etcdbrctl()
        .args([
            "snapshot",
            "--endpoints",
            &a.endpoint,
            "--storage-provider",
            "Local",
        ])
        .arg("--store-container")
        .arg(&sa)
        .args([
            "--garbage-collection-policy",
            "LimitBased",
            "--max-backups",
            "1",
        ])
        .args([
            "--garbage-collection-period",
            "2s",
            "--delta-snapshot-period",
            "0s",
        ])
        .args(["--schedule", "0 0 1 1 *"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("spawn the job");
    let mut gc = Proc(gc);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while proofs_in(&sa.join("proofs")).len() > 1 || files_in(&sa.join("v2")).contains(&name) {
        assert!(
            std::time::Instant::now() < deadline,
            "GC left {:?} / {:?} (before: {names_before:?})",
            files_in(&sa.join("v2")),
            proofs_in(&sa.join("proofs"))
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    let _ = gc.kill();
    let left = proofs_in(&sa.join("proofs"));
    assert!(
        left.iter().all(|p| !p.starts_with(&name)) && !left.is_empty(),
        "the deleted full's proof is gone, the kept ones remain: {left:?} (newer {newer})"
    );
}

#[test]
fn a_stored_full_is_proven_equal_etcd34() {
    proof_recorded_and_checked(EtcdVersion::V34);
}

#[test]
fn a_stored_full_is_proven_equal_etcd35() {
    proof_recorded_and_checked(EtcdVersion::V35);
}

/// `etcdbrctl snapshot` (a full at once, deltas every second) while `writes` runs, then
/// SIGTERM (the final delta).
fn take_chain(etcd: &Etcd, container: &Path, writes: impl FnOnce()) {
    let log = container.with_extension("log");
    let mut job = Proc(
        etcdbrctl()
            .args([
                "snapshot",
                "--endpoints",
                &etcd.endpoint,
                "--storage-provider",
                "Local",
            ])
            .args(["--delta-snapshot-period", "1s", "--schedule", "0 0 1 1 *"])
            .arg("--store-container")
            .arg(container)
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(&log).expect("log"))
            .spawn()
            .expect("spawn the job"),
    );
    let t = std::time::Instant::now();
    while files_in(&container.join("v2")).is_empty() {
        assert!(
            t.elapsed() < std::time::Duration::from_secs(20),
            "no full snapshot"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    writes();
    std::thread::sleep(std::time::Duration::from_millis(1500));
    std::process::Command::new("kill")
        .args(["-TERM", &job.id().to_string()])
        .status()
        .expect("kill");
    let status = job.wait().expect("wait");
    assert!(
        status.success(),
        "{}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
}

fn drill(etcd: &Etcd, container: &Path, work: &Path) -> std::process::Output {
    let (tool, _) = etcd.version.status_tool();
    etcdbrctl()
        .args(["verify", "--restore", "--endpoints", &etcd.endpoint])
        .args(["--storage-provider", "Local", "--store-container"])
        .arg(container)
        .arg("--restoration-temp-snapshots-dir")
        .arg(work)
        .arg("--etcd-binary")
        .arg(etcd.version.etcd())
        .arg("--etcd-restore-tool")
        .arg(tool)
        .output()
        .expect("run the drill")
}

/// Rewrites the last delta of the store with its last put's value changed (after the
/// compaction: history the hash covers), its sha256 trailer recomputed: a well-formed delta
/// that lies.
fn alter_a_delta(container: &Path) -> String {
    let v2 = container.join("v2");
    let snaps = stored_in(container);
    let d = snaps
        .iter()
        .rfind(|s| s.kind == etcdbr::format::layout::Kind::Incr)
        .expect("a delta");
    let raw = std::fs::read(v2.join(&d.snap_name)).expect("read");
    let mut events =
        etcdbr::format::delta::parse(&decompress(d, &raw), &d.snap_name).expect("parse");
    let ev = events
        .iter_mut()
        .rfind(|e| e.kind == etcdbr::format::delta::EventType::Put)
        .expect("a put");
    ev.value = b"not what the cluster stored".to_vec();
    let mut b = etcdbr::format::delta::DeltaBuilder::default();
    for e in &events {
        b.push(e);
    }
    let payload = b.finish();
    let bytes = match d.compression_suffix.as_str() {
        "" => payload,
        ".gz" => {
            use std::io::Write;
            let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            enc.write_all(&payload).expect("gzip");
            enc.finish().expect("gzip")
        }
        other => panic!("delta suffix {other:?}"),
    };
    std::fs::write(v2.join(&d.snap_name), bytes).expect("write");
    d.snap_name.clone()
}

/// The drill: an untouched chain (a full, deltas, a compaction between the full and the check)
/// restores into exactly the cluster's keyspace; an altered delta restores too, and is caught.
fn restore_drill(version: EtcdVersion) {
    let etcd = Etcd::start(version);
    let dir = tempfile::tempdir().expect("tmp");
    let (store, work) = (dir.path().join("store"), dir.path().join("work"));
    for i in 0..20 {
        etcd.put(&format!("/d/{i}"), b"before the full");
    }
    take_chain(&etcd, &store, || {
        for i in 0..60 {
            etcd.put(&format!("/d/{}", i % 25), format!("v{i}").as_bytes());
            if i % 9 == 0 {
                etcd.etcdctl(&["del", &format!("/d/{}", i % 25)]);
            }
            if i == 30 {
                // a compaction between the full and the check
                let r = etcd.revision();
                etcd.etcdctl(&["compaction", "--physical", &r.to_string()]);
            }
        }
    });
    let snaps = stored_in(&store);
    assert!(
        snaps
            .iter()
            .filter(|s| s.kind == etcdbr::format::layout::Kind::Incr)
            .count()
            >= 1,
        "deltas: {snaps:?}"
    );
    let out = drill(&etcd, &store, &work);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("equal to etcd's HashKV"),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        std::fs::read_dir(&work).map(|d| d.count()).unwrap_or(0) == 0,
        "the drill leaves nothing behind"
    );

    let altered = alter_a_delta(&store);
    let out = drill(&etcd, &store, &work);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "an altered delta passed the drill: {stderr}"
    );
    assert!(
        stderr.contains("do not hold the cluster's data"),
        "{altered}: {stderr}"
    );
    eprintln!("{version:?}: {}", stdout.trim());
}

#[test]
fn the_restore_drill_proves_the_chain_etcd34() {
    restore_drill(EtcdVersion::V34);
}

#[test]
fn the_restore_drill_proves_the_chain_etcd35() {
    restore_drill(EtcdVersion::V35);
}

/// `--verify-schedule`: the leader's sidecar drills on schedule; the result is in
/// `/snapshot/latest` and in the metrics, and the sidecar stays healthy.
#[test]
fn the_sidecar_drills_on_schedule() {
    let version = EtcdVersion::V35;
    let etcd = Etcd::start(version);
    let dir = tempfile::tempdir().expect("tmp");
    let (bk, log) = (dir.path().join("bk"), dir.path().join("sidecar.log"));
    for i in 0..30 {
        etcd.put(&format!("/s/{i}"), b"v");
    }
    let (tool, _) = version.status_tool();
    let work = dir.path().join("work");
    let (etcd_bin, tool, work) = (
        version.etcd().display().to_string(),
        tool.display().to_string(),
        work.display().to_string(),
    );
    let (_sidecar, port) = sidecar_server(
        &etcd.endpoint,
        &bk,
        &log,
        &[
            "--verify-schedule",
            "@every 2s",
            "--etcd-binary",
            &etcd_bin,
            "--etcd-restore-tool",
            &tool,
            "--restoration-temp-snapshots-dir",
            &work,
        ],
    );
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let drill = loop {
        etcd.put("/s/tick", b"t");
        if let Ok((200, body)) = http_body(port, "GET", "/snapshot/latest") {
            let v: serde_json::Value = serde_json::from_str(&body).expect("json");
            if v["restoreDrill"]["result"] == "equal" {
                break v["restoreDrill"].clone();
            }
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no successful drill: {}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        std::thread::sleep(std::time::Duration::from_millis(300));
    };
    assert!(
        drill["detail"]
            .as_str()
            .is_some_and(|d| d.contains("equal to etcd's HashKV")),
        "{drill}"
    );
    let (_, metrics) = http_body(port, "GET", "/metrics").expect("metrics");
    assert!(
        metrics.contains("etcdbr_restore_drill_result{result=\"equal\"} 1"),
        "{metrics}"
    );
    let (code, health) = http_body(port, "GET", "/healthz").expect("healthz");
    assert_eq!(code, 200, "{health}");
}
