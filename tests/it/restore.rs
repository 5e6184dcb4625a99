//! `etcdbrctl restore` against real etcd 3.4.23 and 3.5.1: a workload recorded by the server
//! (puts, deletes, multi-op txns, leases granted, revoked and expiring, a compaction), restored
//! and booted; every key equals the source's field by field and the next write gets the next
//! revision. Corrupt, truncated and missing objects are named, and the target stays untouched.

use crate::common::*;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The whole keyspace: key -> (value, create, mod, version, lease), and the header revision.
pub(crate) fn dump(
    version: EtcdVersion,
    endpoint: &str,
) -> (BTreeMap<String, serde_json::Value>, i64) {
    dump_rev(version, endpoint, None, None)
}

/// The state at `rev` as etcd at `endpoint` remembers it.
pub(crate) fn dump_at(
    version: EtcdVersion,
    endpoint: &str,
    rev: i64,
) -> BTreeMap<String, serde_json::Value> {
    dump_rev(version, endpoint, Some(rev), None).0
}

/// etcd's `root` user and password in the tests with authentication enabled.
const ROOT: (&str, &str) = ("root", "r00t-pw");

fn dump_rev(
    version: EtcdVersion,
    endpoint: &str,
    rev: Option<i64>,
    user: Option<(&str, &str)>,
) -> (BTreeMap<String, serde_json::Value>, i64) {
    let mut cmd = clean_cmd(&version.etcdctl());
    cmd.args(["--endpoints", endpoint, "get", "", "--prefix", "-w", "json"]);
    if let Some((u, p)) = user {
        cmd.arg(format!("--user={u}:{p}"));
    }
    if let Some(r) = rev {
        cmd.arg(format!("--rev={r}"));
    }
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let mut m = BTreeMap::new();
    for kv in v["kvs"].as_array().cloned().unwrap_or_default() {
        let key = kv["key"].as_str().unwrap().to_string();
        let fields = serde_json::json!({
            "value": kv["value"], "create_revision": kv["create_revision"],
            "mod_revision": kv["mod_revision"], "version": kv["version"],
            "lease": kv["lease"],
        });
        m.insert(key, fields);
    }
    (m, v["header"]["revision"].as_i64().unwrap())
}

/// A workload with the awkward cases: leases with keys that expire or are revoked mid-way,
/// multi-op txns, delete-prefix, and a compaction.
/// Runs `f` with a client of `endpoint` (as `user` if given) on a runtime of its own.
fn with_client<F, Fut>(endpoint: &str, user: Option<(&str, &str)>, f: F)
where
    F: FnOnce(etcd_client::Client) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let opts = user.map(|(u, p)| etcd_client::ConnectOptions::new().with_user(u, p));
        let c = etcd_client::Client::connect([endpoint], opts)
            .await
            .unwrap();
        f(c).await
    });
}

fn workload(endpoint: &str, secs: u64, user: Option<(&str, &str)>) {
    with_client(endpoint, user, |mut c| async move {
        let long = c.lease_grant(600, None).await.unwrap().id();
        let t = Instant::now();
        let mut i = 0u64;
        let mut short: Vec<i64> = Vec::new();
        while t.elapsed() < Duration::from_secs(secs) {
            let k = format!("/w/{}", i % 200);
            match i % 25 {
                0 => {
                    // a short lease with keys: expires in the source while the load goes on
                    let l = c.lease_grant(2, None).await.unwrap().id();
                    for j in 0..3 {
                        let o = etcd_client::PutOptions::new().with_lease(l);
                        c.put(format!("/short/{i}/{j}"), "s", Some(o))
                            .await
                            .unwrap();
                    }
                    short.push(l);
                }
                1 => {
                    let o = etcd_client::PutOptions::new().with_lease(long);
                    c.put(format!("/long/{}", i % 30), format!("v{i}"), Some(o))
                        .await
                        .unwrap();
                }
                2 => {
                    // a revoked lease: its keys go in one revision
                    let l = c.lease_grant(300, None).await.unwrap().id();
                    for j in 0..2 {
                        let o = etcd_client::PutOptions::new().with_lease(l);
                        c.put(format!("/rev/{i}/{j}"), "r", Some(o)).await.unwrap();
                    }
                    c.lease_revoke(l).await.unwrap();
                }
                3 => {
                    let ops = vec![
                        etcd_client::TxnOp::put(format!("/txn/a{}", i % 7), format!("{i}"), None),
                        etcd_client::TxnOp::put(format!("/txn/b{}", i % 7), "y", None),
                        etcd_client::TxnOp::delete(format!("/w/{}", (i + 1) % 200), None),
                    ];
                    c.txn(etcd_client::Txn::new().and_then(ops)).await.unwrap();
                }
                4 => {
                    c.delete(
                        "/txn/",
                        Some(etcd_client::DeleteOptions::new().with_prefix()),
                    )
                    .await
                    .unwrap();
                }
                5 if i % 500 == 5 => {
                    let r = c.get("x", None).await.unwrap().header().unwrap().revision();
                    c.compact(r - 10, None).await.unwrap();
                }
                6 => {
                    c.delete(k, None).await.unwrap();
                }
                _ => {
                    c.put(
                        k,
                        vec![b'a' + (i % 26) as u8; 50 + (i % 300) as usize],
                        None,
                    )
                    .await
                    .unwrap();
                }
            }
            i += 1;
        }
    });
}

/// TTL of the lease kept alive in the source.
const HEARTBEAT_TTL: i64 = 5;

/// Grants a lease of [`HEARTBEAT_TTL`], attaches `/heartbeat/{0,1,2}` to it, and keeps it alive
/// until `stop`.
fn keep_short_lease(endpoint: &str, stop: &AtomicBool, user: Option<(&str, &str)>) {
    with_client(endpoint, user, |mut c| async move {
        let l = c.lease_grant(HEARTBEAT_TTL, None).await.unwrap().id();
        for j in 0..3 {
            let o = etcd_client::PutOptions::new().with_lease(l);
            c.put(format!("/heartbeat/{j}"), "alive", Some(o))
                .await
                .unwrap();
        }
        let (mut keeper, mut answers) = c.lease_keep_alive(l).await.unwrap();
        let t = Instant::now();
        while !stop.load(Ordering::Relaxed) && t.elapsed() < Duration::from_secs(120) {
            keeper.keep_alive().await.unwrap();
            answers.message().await.unwrap();
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    });
}

struct Recorded {
    _tmp: tempfile::TempDir,
    bk: PathBuf,
    source: BTreeMap<String, serde_json::Value>,
    revision: i64,
    version: EtcdVersion,
}

/// Runs the workload against a fresh etcd with the server recording it; returns the store and
/// the source's final state.
fn record(version: EtcdVersion, auth: bool) -> Recorded {
    let etcd = Etcd::start(version);
    etcd.fill(200, 20);
    let user = auth.then_some(ROOT);
    if auth {
        for args in [
            vec!["user", "add", &format!("{}:{}", ROOT.0, ROOT.1)],
            vec!["auth", "enable"],
        ] {
            let args: Vec<&str> = args.iter().map(|a| a.as_ref()).collect();
            let out = etcd.etcdctl(&args);
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
    let tmp = tempfile::tempdir().unwrap();
    let bk = tmp.path().join("bk");
    let creds: Vec<&str> = match user {
        Some((u, p)) => vec!["--etcd-username", u, "--etcd-password", p],
        None => vec![],
    };
    let (mut sidecar, _) =
        sidecar_server(&etcd.endpoint, &bk, &tmp.path().join("sidecar.log"), &creds);
    let t = Instant::now();
    while !files_in(&bk.join("v2"))
        .iter()
        .any(|f| f.starts_with("Full-"))
    {
        assert!(t.elapsed() < Duration::from_secs(30), "no full snapshot");
        std::thread::sleep(Duration::from_millis(100));
    }
    // a short lease kept alive in the source until its state is taken: its keys must come back
    // even from a replay that lasts longer than its TTL (etcdbrctl #1045/#1046)
    let stop = Arc::new(AtomicBool::new(false));
    let heartbeat = {
        let (endpoint, stop) = (etcd.endpoint.clone(), stop.clone());
        std::thread::spawn(move || keep_short_lease(&endpoint, &stop, user))
    };
    workload(&etcd.endpoint, 6, user);
    std::thread::sleep(Duration::from_secs(3)); // the short leases expire in the source
    let (source, revision) = dump_rev(version, &etcd.endpoint, None, user);
    stop.store(true, Ordering::Relaxed);
    heartbeat.join().unwrap();
    // base64 of "alive", as etcdctl prints values
    let alive = source.values().filter(|v| v["value"] == "YWxpdmU=").count();
    assert_eq!(alive, 3, "the kept-alive lease's keys");
    let t = Instant::now();
    loop {
        let last = files_in(&bk.join("v2"))
            .iter()
            .filter_map(|f| f.split('-').nth(2).and_then(|r| r.parse::<i64>().ok()))
            .max()
            .unwrap_or(0);
        if last >= revision {
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(30),
            "store stuck at {last} < {revision}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    std::process::Command::new("kill")
        .args(["-TERM", &sidecar.id().to_string()])
        .status()
        .unwrap();
    assert!(sidecar.wait().unwrap().success());
    Recorded {
        _tmp: tmp,
        bk,
        source,
        revision,
        version,
    }
}

/// Runs `cmd` and asserts that it succeeded (`what` names it); returns its output.
pub(crate) fn succeeded(mut cmd: std::process::Command, what: &str) -> std::process::Output {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{what}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn restore_cmd(r: &Recorded, bk: &Path, data_dir: &Path, peer: u16) -> std::process::Command {
    let (tool, _) = r.version.status_tool();
    let mut c = etcdbrctl();
    c.args(["restore", "--name", "r"])
        .arg("--store-container")
        .arg(bk)
        .arg("--data-dir")
        .arg(data_dir)
        .args(["--initial-cluster", &format!("r=http://127.0.0.1:{peer}")])
        .args([
            "--initial-advertise-peer-urls",
            &format!("http://127.0.0.1:{peer}"),
        ])
        .arg("--restoration-temp-snapshots-dir")
        .arg(data_dir.with_extension("tmp"))
        .arg("--etcd-binary")
        .arg(r.version.etcd())
        .arg("--etcd-restore-tool")
        .arg(tool);
    c
}

/// Boots etcd on a restored data dir; returns it (killed on drop) and its endpoint.
pub(crate) fn boot(version: EtcdVersion, data_dir: &Path, peer: u16) -> (Proc, String) {
    boot_as(version, data_dir, peer, None)
}

/// [`boot`], checking health as `user` (authentication enabled).
fn boot_as(
    version: EtcdVersion,
    data_dir: &Path,
    peer: u16,
    user: Option<(&str, &str)>,
) -> (Proc, String) {
    let c = free_port();
    let ep = format!("http://127.0.0.1:{c}");
    let log = data_dir.with_extension("log");
    let child = clean_cmd(&version.etcd())
        .args(["--name", "r", "--data-dir"])
        .arg(data_dir)
        .args(["--listen-client-urls", &ep, "--advertise-client-urls", &ep])
        .args(["--listen-peer-urls", &format!("http://127.0.0.1:{peer}")])
        .args([
            "--initial-advertise-peer-urls",
            &format!("http://127.0.0.1:{peer}"),
        ])
        .args(["--initial-cluster", &format!("r=http://127.0.0.1:{peer}")])
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&log).unwrap())
        .stderr(std::fs::File::create(log.with_extension("err")).unwrap())
        .spawn()
        .map(Proc)
        .unwrap();
    let t = Instant::now();
    loop {
        let out = clean_cmd(&version.etcdctl())
            .args([
                "--endpoints",
                &ep,
                "endpoint",
                "health",
                "--command-timeout=2s",
            ])
            .args(user.map(|(u, p)| format!("--user={u}:{p}")))
            .output()
            .unwrap();
        if out.status.success() {
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(30),
            "restored etcd did not start"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    (child, ep)
}

/// `--to-revision`, `--snapshot` and `--to-time` land exactly on the chosen point; the
/// reference is the fully restored etcd's own history (equal to the source's, checked before).
fn point_in_time(r: &Recorded, latest_ep: &str, tmp: &Path) {
    let v2 = r.bk.join("v2");
    let mut deltas: Vec<etcdbr::format::layout::Snapshot> = stored_in(&r.bk)
        .into_iter()
        .filter(|s| s.kind == etcdbr::format::layout::Kind::Incr)
        .collect();
    deltas.sort_by_key(|d| d.start_revision);
    let mid = &deltas[deltas.len() / 2];
    // all events, for --to-time's expectation
    let mut events = Vec::new();
    for d in &deltas {
        events.extend(delta_events(
            d,
            &std::fs::read(v2.join(&d.snap_name)).unwrap(),
        ));
    }
    let at = events[events.len() / 2].time;
    let t = at.format("%Y-%m-%dT%H:%M:%S%.9fZ").to_string();
    let want_time_rev = events
        .iter()
        .find(|e| e.time > at)
        .map(|e| e.mod_revision - 1)
        .unwrap();
    let to_rev = (mid.start_revision + mid.last_revision) / 2;
    let cases: Vec<(&str, Vec<String>, i64)> = vec![
        (
            "to-revision",
            vec!["--to-revision".into(), to_rev.to_string()],
            to_rev,
        ),
        (
            "snapshot",
            vec!["--snapshot".into(), mid.snap_name.clone()],
            mid.last_revision,
        ),
        (
            "to-time",
            vec!["--to-time".into(), t.clone()],
            want_time_rev,
        ),
    ];
    for (what, args, want) in cases {
        let data = tmp.join(format!("pit-{what}"));
        let peer = free_port();
        // below the store's newest revision without a bump: refused unless said to be for
        // inspection (the rewind guard)
        let refused = restore_cmd(r, &r.bk, &data, peer)
            .args(&args)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&refused.stderr);
        assert!(
            !refused.status.success()
                && err.contains("--bump-revision")
                && err.contains("--allow-rewind"),
            "{what}: a rewind without a bump must be refused: {err}"
        );
        assert!(!data.exists(), "{what}: refused, but the target exists");
        let out = restore_cmd(r, &r.bk, &data, peer)
            .args(&args)
            .arg("--allow-rewind")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{what}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let (_etcd, ep) = boot(r.version, &data, peer);
        let (state, rev) = dump(r.version, &ep);
        assert_eq!(rev, want, "{what} {args:?}: restored revision");
        assert_eq!(
            state,
            dump_at(r.version, latest_ep, want),
            "{what}: state at {want}"
        );
    }
}

/// The recorded store rewritten as etcdbrctl would have written it: objects compressed by Go's
/// gzip, zlib and lzw in turn, deltas re-encoded by Go's encoding/json (so without our
/// `leaseTTL`), the full and the first deltas in the legacy v1 layout, the rest in v2.
fn as_etcdbrctl_store(r: &Recorded, dest: &Path) {
    let v2 = r.bk.join("v2");
    let snaps = stored_in(&r.bk);
    let full_time = snaps[0].created_on.timestamp();
    let work = dest.join("work");
    std::fs::create_dir_all(&work).unwrap();
    for (i, s) in snaps.iter().enumerate() {
        let plain = decompress(s, &std::fs::read(v2.join(&s.snap_name)).unwrap());
        let p0 = work.join("plain");
        std::fs::write(&p0, &plain).unwrap();
        let mut input = p0.clone();
        if s.kind == etcdbr::format::layout::Kind::Incr {
            let p1 = work.join("go-delta");
            assert!(std::process::Command::new(gocompat())
                .args(["delta-reencode", "-"])
                .arg(&p0)
                .arg(&p1)
                .status()
                .unwrap()
                .success());
            input = p1;
        }
        let (policy, suffix) = [("gzip", ".gz"), ("zlib", ".zlib"), ("lzw", ".Z")][i % 3];
        let name = s
            .snap_name
            .trim_end_matches(&s.compression_suffix)
            .to_string()
            + suffix;
        let dir = if i <= snaps.len() / 2 {
            dest.join(format!("v1/Backup-{full_time}"))
        } else {
            dest.join("v2")
        };
        std::fs::create_dir_all(&dir).unwrap();
        assert!(std::process::Command::new(gocompat())
            .args(["compress", policy])
            .arg(&input)
            .arg(dir.join(&name))
            .status()
            .unwrap()
            .success());
    }
    std::fs::remove_dir_all(&work).unwrap();
}

/// `--bump-revision 1000000000 --mark-compacted` (through the compaction marks: neither
/// etcdctl 3.4.23 nor etcdutl 3.5.1 has the flags): same keys field by field, the header
/// revision jumps, older revisions answer "compacted", the next write gets bumped + 1.
fn bumped(r: &Recorded, tmp: &Path) {
    const BUMP: i64 = 1_000_000_000;
    let data = tmp.join("bumped");
    let peer = free_port();
    let mut cmd = restore_cmd(r, &r.bk, &data, peer);
    cmd.args(["--bump-revision", &BUMP.to_string(), "--mark-compacted"]);
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "bumped restore: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (_etcd, ep) = boot(r.version, &data, peer);
    let (state, rev) = dump(r.version, &ep);
    assert_eq!(rev, r.revision + BUMP, "bumped header revision");
    assert_eq!(state, r.source, "bumped restore keeps every key as it was");
    let old = clean_cmd(&r.version.etcdctl())
        .args(["--endpoints", &ep, "get", "", "--prefix"])
        .arg(format!("--rev={}", r.revision))
        .output()
        .unwrap();
    assert!(
        !old.status.success() && String::from_utf8_lossy(&old.stderr).contains("compacted"),
        "a read at the old revision must answer compacted: {}",
        String::from_utf8_lossy(&old.stderr)
    );
    let put = clean_cmd(&r.version.etcdctl())
        .args(["--endpoints", &ep, "put", "after-bump", "x", "-w", "json"])
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&put.stdout).unwrap();
    assert_eq!(
        v["header"]["revision"].as_i64().unwrap(),
        r.revision + BUMP + 1
    );
    // bump without mark-compacted cannot be done by these tools: a clear refusal, nothing made
    let data = tmp.join("bump-only");
    let mut cmd = restore_cmd(r, &r.bk, &data, free_port());
    cmd.args(["--bump-revision", "10"]);
    let out = cmd.output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--mark-compacted"));
    assert!(!data.exists());
}

/// The other ways through the replay give the same data: with 3.4 the API (`--replay-method
/// api`), with 3.5 the WAL applied by etcd in several rounds (small chunks). Both take longer
/// than the heartbeat lease's TTL here (printed), whose keys must still come back.
fn other_replay_paths(r: &Recorded, tmp: &Path) {
    let data = tmp.join("restored-other-path");
    let peer = free_port();
    let mut cmd = restore_cmd(r, &r.bk, &data, peer);
    if r.version == EtcdVersion::V34 {
        cmd.args(["--replay-method", "api"]);
    } else {
        cmd.env("ETCDBR_REPLAY_CHUNK_BYTES", "15000");
    }
    let t = Instant::now();
    let out = cmd.output().unwrap();
    let took = t.elapsed();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "restore: {err}");
    let rounds = err.matches("replayed WAL entries applied by etcd").count();
    eprintln!(
        "{:?} other path: {rounds} rounds, {took:?}: {}",
        r.version,
        String::from_utf8_lossy(&out.stdout).trim()
    );
    if r.version == EtcdVersion::V35 {
        assert!(rounds >= 2, "the WAL must be applied in rounds: {err}");
    }
    let (_etcd, ep) = boot(r.version, &data, peer);
    let (state, rev) = dump(r.version, &ep);
    assert_eq!(rev, r.revision);
    assert_eq!(state, r.source);
}

fn restores_faithfully(version: EtcdVersion) {
    let r = record(version, false);
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("restored");
    let peer = free_port();
    let out = succeeded(restore_cmd(&r, &r.bk, &data, peer), "restore");
    assert!(!data.with_extension("part").exists());
    eprintln!(
        "{version:?}: {} keys at revision {}; {}",
        r.source.len(),
        r.revision,
        String::from_utf8_lossy(&out.stdout).trim()
    );
    let (_etcd, ep) = boot(version, &data, peer);
    let (restored, rev) = dump(version, &ep);
    assert_eq!(rev, r.revision, "restored revision");
    assert_eq!(restored.len(), r.source.len(), "key count");
    for (k, v) in &r.source {
        assert_eq!(restored.get(k), Some(v), "key {k}");
    }
    assert!(
        r.source
            .values()
            .any(|v| v["lease"].as_i64().unwrap_or(0) != 0),
        "the workload must leave leased keys"
    );
    let out = clean_cmd(&version.etcdctl())
        .args([
            "--endpoints",
            &ep,
            "put",
            "after-restore",
            "x",
            "-w",
            "json",
        ])
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["header"]["revision"].as_i64().unwrap(), r.revision + 1);
    other_replay_paths(&r, tmp.path());
    bumped(&r, tmp.path());
    point_in_time(&r, &ep, tmp.path());
    // a store as etcdbrctl writes it (v1 and v2 layouts, gzip, zlib, lzw, deltas without our
    // lease data) restores to the same keys
    let go = tmp.path().join("go-store");
    as_etcdbrctl_store(&r, &go);
    let data = tmp.path().join("from-etcdbrctl-store");
    let peer = free_port();
    succeeded(
        restore_cmd(&r, &go, &data, peer),
        "restore of an etcdbrctl store",
    );
    let (_etcd2, ep2) = boot(version, &data, peer);
    let (state, rev) = dump(version, &ep2);
    assert_eq!(rev, r.revision);
    assert_eq!(state, r.source, "etcdbrctl-format store");
    if version == EtcdVersion::V35 {
        // compact: the latest set collapses into one full at the same revision
        let bk = tmp.path().join("bk-compact");
        copy_store(&r.bk, &bk);
        let data = tmp.path().join("compacting");
        let mut cmd = restore_cmd(&r, &bk, &data, free_port());
        cmd.args(["--defragment"]);
        let args: Vec<_> = cmd.get_args().map(|a| a.to_os_string()).collect();
        let out = etcdbrctl()
            .arg("compact")
            .args(&args[1..])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "compact: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let key = String::from_utf8_lossy(&out.stdout).trim().to_string();
        let snap = etcdbr::format::layout::Snapshot::parse_key(&key).unwrap();
        assert_eq!(snap.last_revision, r.revision, "{key}");
        let data = tmp.path().join("from-compacted");
        let peer = free_port();
        let out = succeeded(restore_cmd(&r, &bk, &data, peer), "restore after compact");
        assert!(
            String::from_utf8_lossy(&out.stdout).contains("0 deltas"),
            "{}",
            String::from_utf8_lossy(&out.stdout)
        );
        let (_e, ep3) = boot(version, &data, peer);
        let (state, rev) = dump(version, &ep3);
        assert_eq!((state, rev), (r.source.clone(), r.revision));
    }

    // damaged stores: each failure names the object; the target is never created
    let v2 = r.bk.join("v2");
    let mut deltas: Vec<String> = files_in(&v2)
        .into_iter()
        .filter(|f| f.starts_with("Incr-"))
        .collect();
    deltas.sort_by_key(|f| f.split('-').nth(1).unwrap().parse::<i64>().unwrap());
    assert!(deltas.len() >= 3, "{deltas:?}");
    let middle = deltas[deltas.len() / 2].clone();
    let full = files_in(&v2)
        .into_iter()
        .filter(|f| f.starts_with("Full-"))
        .max_by_key(|f| f.split('-').nth(2).unwrap().parse::<i64>().unwrap())
        .unwrap();
    type Damage = Box<dyn Fn(&Path)>;
    let cases: Vec<(&str, String, Damage)> = vec![
        (
            "bit flip in a delta",
            middle.clone(),
            Box::new(|p: &Path| {
                let mut b = std::fs::read(p).unwrap();
                let i = b.len() / 2;
                b[i] ^= 0x40;
                std::fs::write(p, b).unwrap();
            }),
        ),
        (
            "truncated full",
            full.clone(),
            Box::new(|p: &Path| {
                let b = std::fs::read(p).unwrap();
                std::fs::write(p, &b[..b.len() * 2 / 3]).unwrap();
            }),
        ),
        (
            "missing delta",
            middle.clone(),
            Box::new(|p: &Path| std::fs::remove_file(p).unwrap()),
        ),
    ];
    for (what, object, damage) in cases {
        let bk = tmp.path().join(format!("bk-{}", what.replace(' ', "-")));
        copy_store(&r.bk, &bk);
        damage(&bk.join("v2").join(&object));
        let target = tmp
            .path()
            .join(format!("target-{}", what.replace(' ', "-")));
        let out = restore_cmd(&r, &bk, &target, free_port()).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{what}: must fail");
        let named = if what == "missing delta" {
            let start = object
                .split('-')
                .nth(1)
                .unwrap()
                .trim_start_matches('0')
                .to_string();
            err.contains(&start) && err.contains("missing")
        } else {
            err.contains(&object)
        };
        assert!(named, "{what}: the error must name {object}: {err}");
        assert!(!target.exists(), "{what}: the target must stay untouched");
        assert!(
            !target.with_extension("part").exists(),
            "{what}: no leftover"
        );
    }

    // a delta over --max-delta-bytes once decompressed: refused, named, nothing created
    let target = tmp.path().join("target-over-bound");
    let out = restore_cmd(&r, &r.bk, &target, free_port())
        .args(["--max-delta-bytes", "2000"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "a delta over the bound must fail");
    assert!(
        err.contains("Incr-") && err.contains("--max-delta-bytes"),
        "the error must name the delta and the bound: {err}"
    );
    assert!(
        !target.exists(),
        "over the bound: the target must stay untouched"
    );

    // --stop-at-gap: the store with the missing delta restores up to the revision before it
    let first_missing: i64 = middle.split('-').nth(1).unwrap().parse().unwrap();
    let data = tmp.path().join("stopped-at-gap");
    let peer = free_port();
    let out = restore_cmd(&r, &tmp.path().join("bk-missing-delta"), &data, peer)
        .arg("--stop-at-gap")
        .arg("--allow-rewind")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "--stop-at-gap: {err}");
    assert!(err.contains("missing from the backups"), "{err}");
    let (_e, ep4) = boot(version, &data, peer);
    let (state, rev) = dump(version, &ep4);
    assert_eq!(rev, first_missing - 1, "stops right before the gap");
    assert_eq!(state, dump_at(version, &ep, first_missing - 1));
}

/// A backup of an etcd with authentication enabled (recorded by a sidecar with credentials):
/// the replayed entries are made by `root`, and the restore reads etcd's revision without
/// credentials; every key comes back equal.
fn restores_with_auth(version: EtcdVersion) {
    let r = record(version, true);
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("restored");
    let peer = free_port();
    succeeded(restore_cmd(&r, &r.bk, &data, peer), "restore");
    let (_etcd, ep) = boot_as(version, &data, peer, Some(ROOT));
    let (state, rev) = dump_rev(version, &ep, None, Some(ROOT));
    assert_eq!(rev, r.revision);
    assert_eq!(state, r.source);
    // authentication is still on: no credentials, no data
    let out = clean_cmd(&version.etcdctl())
        .args(["--endpoints", &ep, "get", "", "--prefix"])
        .output()
        .unwrap();
    assert!(
        !out.status.success(),
        "reads without credentials must be refused"
    );
}

#[test]
fn restore_with_auth_etcd34() {
    restores_with_auth(EtcdVersion::V34);
}

#[test]
fn restore_with_auth_etcd35() {
    restores_with_auth(EtcdVersion::V35);
}

#[test]
fn restore_is_faithful_etcd34() {
    restores_faithfully(EtcdVersion::V34);
}

#[test]
fn restore_is_faithful_etcd35() {
    restores_faithfully(EtcdVersion::V35);
}

pub(crate) fn stop(p: &mut Proc) {
    let _ = std::process::Command::new("kill")
        .args(["-TERM", &p.id().to_string()])
        .status();
    let _ = p.wait();
}

/// Waits until `bk` holds an object satisfying `f` (within 60 s).
pub(crate) fn wait_store(
    bk: &Path,
    what: &str,
    f: impl Fn(&etcdbr::format::layout::Snapshot) -> bool,
) {
    let t = Instant::now();
    while !stored_in(bk).iter().any(&f) {
        assert!(
            t.elapsed() < Duration::from_secs(60),
            "the store never held {what}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

pub(crate) fn restore_for(
    version: EtcdVersion,
    bk: &Path,
    data_dir: &Path,
    peer: u16,
) -> std::process::Command {
    let r = Recorded {
        _tmp: tempfile::tempdir().unwrap(),
        bk: bk.to_path_buf(),
        source: BTreeMap::new(),
        revision: 0,
        version,
    };
    restore_cmd(&r, bk, data_dir, peer)
}

/// A member restored to an older point in place of the current one, its sidecar continuing on
/// the same prefix: refused without a revision bump; with `--bump-revision --mark-compacted`
/// the new history sorts after the abandoned one, so the next restore, the next validation and
/// garbage collection act on it and never bring back the abandoned later writes. A sidecar on
/// an etcd rewound without a bump writes nothing and says why.
fn rewind_in_service(version: EtcdVersion) {
    let tmp = tempfile::tempdir().unwrap();
    let bk = tmp.path().join("bk");
    let etcd = Etcd::start(version);
    let (mut s1, _) = sidecar_server(&etcd.endpoint, &bk, &tmp.path().join("s1.log"), &[]);
    wait_store(&bk, "a full snapshot", |s| {
        s.kind == etcdbr::format::layout::Kind::Full
    });
    for i in 0..50 {
        etcd.put(&format!("/a/{i:02}"), b"before the point");
    }
    let ra = etcd.revision();
    let (state_a, _) = dump(version, &etcd.endpoint);
    wait_store(&bk, "the point", |s| s.last_revision >= ra);
    for i in 0..50 {
        etcd.put(&format!("/b/{i:02}"), b"abandoned");
    }
    let rb = etcd.revision();
    wait_store(&bk, "the later history", |s| s.last_revision >= rb);
    stop(&mut s1);
    drop(etcd);

    // in place of the current member: refused without a bump, named with what to do
    let d2 = tmp.path().join("rewound");
    let peer = free_port();
    let out = restore_for(version, &bk, &d2, peer)
        .args(["--to-revision", &ra.to_string()])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("--bump-revision") && err.contains(&rb.to_string()),
        "a rewind without a bump must be refused: {err}"
    );
    assert!(!d2.exists());
    const BUMP: i64 = 1_000_000;
    succeeded(
        {
            let mut c = restore_for(version, &bk, &d2, peer);
            c.args(["--to-revision", &ra.to_string()]).args([
                "--bump-revision",
                &BUMP.to_string(),
                "--mark-compacted",
            ]);
            c
        },
        "restore to the point with a bump",
    );
    let (mut e2, ep2) = boot(version, &d2, peer);
    let (state, rev) = dump(version, &ep2);
    assert_eq!(state, state_a, "the point's keys");
    assert_eq!(rev, ra + BUMP);
    let (mut s2, _) = sidecar_server(&ep2, &bk, &tmp.path().join("s2.log"), &[]);
    wait_store(&bk, "a full of the new history", |s| {
        s.kind == etcdbr::format::layout::Kind::Full && s.last_revision >= ra + BUMP
    });
    for i in 0..50 {
        let out = clean_cmd(&version.etcdctl())
            .args([
                "--endpoints",
                &ep2,
                "put",
                &format!("/c/{i:02}"),
                "after the rewind",
            ])
            .output()
            .unwrap();
        assert!(out.status.success());
    }
    let (state_c, rc) = dump(version, &ep2);
    wait_store(&bk, "the new history", |s| s.last_revision >= rc);
    stop(&mut s2);
    stop(&mut e2);

    // the next restore: the new history, never the abandoned writes
    let d3 = tmp.path().join("latest-after-rewind");
    let p3 = free_port();
    succeeded(restore_for(version, &bk, &d3, p3), "restore the latest");
    {
        let (_e3, ep3) = boot(version, &d3, p3);
        let (state, rev) = dump(version, &ep3);
        assert!(
            state.keys().all(|k| !k.starts_with("/b/")),
            "abandoned keys came back"
        );
        assert_eq!((state, rev), (state_c.clone(), rc));
    }
    // the next start-up validation keeps the member's directory
    let out = etcdbrctl()
        .args(["initialize", "--validation-mode", "full", "--name", "r"])
        .arg("--data-dir")
        .arg(&d2)
        .args(["--initial-cluster", &format!("r=http://127.0.0.1:{peer}")])
        .args([
            "--initial-advertise-peer-urls",
            &format!("http://127.0.0.1:{peer}"),
        ])
        .arg("--restoration-temp-snapshots-dir")
        .arg(tmp.path().join("rtmp"))
        .arg("--store-container")
        .arg(&bk)
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("action: Kept"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // garbage collection keeps the new chain whole and drops the abandoned history
    let new_chain: Vec<String> = stored_in(&bk)
        .into_iter()
        .filter(|s| s.last_revision >= ra + BUMP)
        .map(|s| s.snap_name)
        .collect();
    let (_e4, ep4) = boot(version, &d2, peer);
    let (mut s3, _) = sidecar_server(
        &ep4,
        &bk,
        &tmp.path().join("s3.log"),
        &[
            "--garbage-collection-policy",
            "LimitBased",
            "--max-backups",
            "1",
            "--garbage-collection-period",
            "2s",
        ],
    );
    let t = Instant::now();
    while stored_in(&bk).iter().any(|s| s.last_revision < ra + BUMP) {
        assert!(
            t.elapsed() < Duration::from_secs(60),
            "GC kept the abandoned history"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    stop(&mut s3);
    let left: Vec<String> = stored_in(&bk).into_iter().map(|s| s.snap_name).collect();
    for n in &new_chain {
        assert!(
            left.contains(n),
            "GC deleted {n} of the new chain: {left:?}"
        );
    }
    drop(_e4);
    let d5 = tmp.path().join("latest-after-gc");
    let p5 = free_port();
    succeeded(restore_for(version, &bk, &d5, p5), "restore after GC");
    {
        let (_e5, ep5) = boot(version, &d5, p5);
        assert_eq!(dump(version, &ep5), (state_c.clone(), rc));
    }

    // rewound without a bump (--allow-rewind: for inspection) and backed up anyway: the
    // sidecar writes nothing and says why
    let bk2 = tmp.path().join("bk2");
    copy_store(&bk, &bk2);
    let d6 = tmp.path().join("rewound-unbumped");
    let p6 = free_port();
    let to = rc - 10;
    succeeded(
        {
            let mut c = restore_for(version, &bk2, &d6, p6);
            c.args(["--to-revision", &to.to_string(), "--allow-rewind"]);
            c
        },
        "restore for inspection",
    );
    let before: Vec<String> = stored_in(&bk2).into_iter().map(|s| s.snap_name).collect();
    let (_e6, ep6) = boot(version, &d6, p6);
    let log = tmp.path().join("s4.log");
    let (_s4, port) = sidecar_server(&ep6, &bk2, &log, &[]);
    let t = Instant::now();
    loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if text.contains("history was rewound") {
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(30),
            "no refusal in the log:\n{text}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let (code, body) = http_body(port, "GET", "/healthz").unwrap();
    assert_eq!(code, 503, "{body}");
    let after: Vec<String> = stored_in(&bk2).into_iter().map(|s| s.snap_name).collect();
    assert_eq!(
        before, after,
        "the sidecar of a rewound etcd wrote to the store"
    );
}

#[test]
fn rewind_in_service_etcd35() {
    rewind_in_service(EtcdVersion::V35);
}

#[test]
fn rewind_in_service_etcd34() {
    rewind_in_service(EtcdVersion::V34);
}

/// A bucket's entries in order.
type Entries = Vec<(Vec<u8>, Vec<u8>)>;

/// Every bucket of a bbolt file: name -> its entries in order.
fn buckets(db: &Path) -> BTreeMap<Vec<u8>, Entries> {
    let d = etcdbr::ondisk::bbolt::Db::open(db).unwrap();
    let mut out = BTreeMap::new();
    for b in d.buckets().unwrap() {
        let mut entries = Vec::new();
        d.for_each(&b, &mut |_, k, v| {
            entries.push((k.to_vec(), v.to_vec()));
            Ok(())
        })
        .unwrap();
        out.insert(b.name.clone(), entries);
    }
    assert!(d.check().is_empty(), "{}: {:?}", db.display(), d.check());
    out
}

/// The files under `dir` (relative name -> bytes).
fn tree(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut out = BTreeMap::new();
    for sub in ["member/wal", "member/snap"] {
        for f in files_in(&dir.join(sub)) {
            if f != "db" {
                out.insert(
                    format!("{sub}/{f}"),
                    std::fs::read(dir.join(sub).join(&f)).unwrap(),
                );
            }
        }
    }
    out
}

/// The restore writes the db once and copies in the membership etcd's tool writes for an empty
/// template (`etcdbr::restore::membership`): the result must be what the tool itself makes of the same
/// snapshot, bucket by bucket and byte for byte in the WAL and the `.snap`, for one, three and
/// forty members (forty do not fit an inline bucket: 3.5's tool then copies the whole db).
fn membership_equals_tools_restore(version: EtcdVersion) {
    let etcd = Etcd::start(version);
    etcd.fill(300, 100);
    let tmp = tempfile::tempdir().unwrap();
    let snap = tmp.path().join("s.db");
    let out = etcd.etcdctl(&["snapshot", "save", snap.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rev = etcd.revision();
    let bk = tmp.path().join("bk");
    std::fs::create_dir_all(bk.join("v2")).unwrap();
    std::fs::copy(
        &snap,
        bk.join(format!(
            "v2/Full-00000000-{rev:08}-{}",
            chrono::Utc::now().timestamp()
        )),
    )
    .unwrap();
    let (tool, _) = version.status_tool();
    for n in [1usize, 3, 40] {
        // forty members take more than an inline bucket's 1 KiB
        let peers: Vec<String> = (0..n)
            .map(|i| format!("m{i}=http://127.0.0.{}:2380", i + 1))
            .collect();
        let cluster = peers.join(",");
        let me = "http://127.0.0.1:2380";
        let theirs = tmp.path().join(format!("tool-{n}"));
        let mut c = clean_cmd(&tool);
        c.env("ETCDCTL_API", "3")
            .args(["snapshot", "restore"])
            .arg(&snap)
            .args(["--name", "m0", "--initial-cluster", &cluster])
            .args(["--initial-advertise-peer-urls", me])
            .arg("--data-dir")
            .arg(&theirs);
        succeeded(c, "etcd's restore tool");
        let ours = tmp.path().join(format!("ours-{n}"));
        let mut c = etcdbrctl();
        c.args(["restore", "--name", "m0", "--initial-cluster", &cluster])
            .args(["--initial-advertise-peer-urls", me])
            .arg("--store-container")
            .arg(&bk)
            .arg("--data-dir")
            .arg(&ours)
            .arg("--etcd-binary")
            .arg(version.etcd())
            .arg("--etcd-restore-tool")
            .arg(&tool);
        let out = succeeded(c, "etcdbrctl restore");
        let log = String::from_utf8_lossy(&out.stderr);
        let whole = log.contains("copies the whole db");
        assert_eq!(
            whole,
            n == 40 && version == EtcdVersion::V35,
            "{version:?}, {n} members: whole db through the tool? {log}"
        );
        let (a, b) = (
            buckets(&theirs.join("member/snap/db")),
            buckets(&ours.join("member/snap/db")),
        );
        assert_eq!(a.keys().collect::<Vec<_>>(), b.keys().collect::<Vec<_>>());
        for (name, entries) in &a {
            assert!(
                &b[name] == entries,
                "{version:?}, {n} members: bucket {} differs",
                String::from_utf8_lossy(name)
            );
        }
        assert!(
            tree(&theirs) == tree(&ours),
            "{version:?}, {n} members: WAL or .snap differ"
        );
        eprintln!("{version:?}, {n} members: equal to the tool's restore (whole db through the tool: {whole})");
    }
}

#[test]
fn membership_equals_tools_restore_etcd35() {
    membership_equals_tools_restore(EtcdVersion::V35);
}

#[test]
fn membership_equals_tools_restore_etcd34() {
    membership_equals_tools_restore(EtcdVersion::V34);
}
