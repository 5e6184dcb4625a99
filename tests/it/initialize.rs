//! `etcdbrctl initialize` on etcd 3.5.1 data directories: a valid one after a clean stop is kept
//! with `sanity`; missing `member/` or `member/wal/`, a damaged db page, a db older than the
//! store are restored from the latest backup (checked by reading the result's revision and by
//! booting etcd on one); a wrong volume and a db locked by a running etcd fail without touching
//! anything; an empty store gives a fresh start (a condemned dir is moved aside, not deleted).

use crate::common::*;
use std::path::{Path, PathBuf};
use std::process::Output;

const V: EtcdVersion = EtcdVersion::V35;

fn stop_clean(etcd: &mut Etcd) {
    let _ = std::process::Command::new("kill")
        .args(["-TERM", &etcd.child.id().to_string()])
        .status();
    let _ = etcd.child.wait();
}

/// `etcdbrctl initialize` of `data` for the member `t` (peer port `peer`), restoring from `bk`.
fn initialize(peer: u16, tmp: &Path, data: &Path, mode: &str, bk: &Path) -> Output {
    etcdbrctl()
        .args(["initialize", "--validation-mode", mode, "--name", "t"])
        .arg("--data-dir")
        .arg(data)
        .args(["--initial-cluster", &format!("t=http://127.0.0.1:{peer}")])
        .args([
            "--initial-advertise-peer-urls",
            &format!("http://127.0.0.1:{peer}"),
        ])
        .arg("--restoration-temp-snapshots-dir")
        .arg(tmp.join("rtmp"))
        .arg("--etcd-binary")
        .arg(V.etcd())
        .arg("--etcd-restore-tool")
        .arg(V.status_tool().0)
        .arg("--store-container")
        .arg(bk)
        .output()
        .expect("initialize")
}

fn backup(etcd: &Etcd, bk: &Path) {
    run_ok(etcdbrctl().args([
        "snapshot",
        "save",
        "--endpoints",
        &etcd.endpoint,
        "--store-container",
        bk.to_str().expect("p"),
    ]));
}

fn db_revision(data: &Path) -> i64 {
    let db = etcdbr::ondisk::bbolt::Db::open(&data.join("member/snap/db")).expect("db");
    etcdbr::ondisk::schema::status(&db)
        .expect("status")
        .effective_revision()
}

/// `etcdbrctl server` for `endpoint` on 127.0.0.1:`port`, storing in `store`, logging to
/// `log`; each test adds its own flags.
fn sidecar(endpoint: &str, port: u16, store: &Path, log: &Path) -> std::process::Command {
    let log = std::fs::File::create(log).expect("log");
    let mut c = etcdbrctl();
    c.args([
        "server",
        "--endpoints",
        endpoint,
        "--server-host",
        "127.0.0.1",
    ])
    .args(["--server-port", &port.to_string()])
    .arg("--store-container")
    .arg(store)
    .stdout(log.try_clone().expect("log"))
    .stderr(log);
    c
}

/// etcd named `name` on `data`, serving clients on `ep` and peers on `peer`; the cluster flags
/// are the caller's.
fn etcd_cmd(name: &str, data: &Path, ep: &str, peer: &str) -> std::process::Command {
    let mut c = clean_cmd(&V.etcd());
    c.args(["--name", name, "--data-dir"])
        .arg(data)
        .args(["--listen-client-urls", ep, "--advertise-client-urls", ep])
        .args([
            "--listen-peer-urls",
            peer,
            "--initial-advertise-peer-urls",
            peer,
        ]);
    c
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

#[test]
fn initialization_outcomes() {
    let mut etcd = Etcd::start(V);
    let tmp = tempfile::tempdir().expect("tmp");
    let bk = tmp.path().join("bk");
    etcd.fill(300, 100);
    let data = etcd.dir.path().join("data");
    // an old copy (clean stop), then more writes and a backup ahead of it
    stop_clean(&mut etcd);
    let old = tmp.path().join("old");
    copy_dir(&data, &old);
    etcd.restart();
    etcd.fill(300, 100);
    backup(&etcd, &bk);
    let store_rev = etcd.revision();
    let peer = etcd.ports.1;
    let init = |data: &Path, mode: &str, bk: &Path| initialize(peer, tmp.path(), data, mode, bk);
    // locked: etcd is running on it
    let o = init(&data, "full", &bk);
    assert!(
        !o.status.success() && text(&o).contains("locked"),
        "{}",
        text(&o)
    );
    stop_clean(&mut etcd);
    let good = tmp.path().join("good");
    copy_dir(&data, &good);
    let db_bytes = std::fs::read(good.join("member/snap/db")).expect("db");

    // valid after a clean stop, sanity: kept byte for byte
    let o = init(&good, "sanity", &bk);
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("Kept"), "{}", text(&o));
    assert_eq!(
        std::fs::read(good.join("member/snap/db")).expect("db"),
        db_bytes
    );
    // and with full
    let o = init(&good, "full", &bk);
    assert!(text(&o).contains("Kept"), "{}", text(&o));

    // each invalid case restores the latest backup
    type Damage = Box<dyn Fn(&Path)>;
    let cases: Vec<(&str, Damage)> = vec![
        (
            "no-member",
            Box::new(|d: &Path| std::fs::remove_dir_all(d.join("member")).expect("rm")),
        ),
        (
            "no-wal",
            Box::new(|d: &Path| std::fs::remove_dir_all(d.join("member/wal")).expect("rm")),
        ),
        (
            "flipped-page",
            Box::new(|d: &Path| {
                let p = d.join("member/snap/db");
                let root = etcdbr::ondisk::bbolt::Db::open(&p).expect("db").meta().root;
                let mut b = std::fs::read(&p).expect("read");
                b[root as usize * 4096] ^= 0xff; // the page id in the root page's header
                std::fs::write(&p, b).expect("write");
            }),
        ),
        (
            "no-data-dir",
            Box::new(|d: &Path| std::fs::remove_dir_all(d).expect("rm")),
        ),
    ];
    for (name, damage) in cases {
        let d = tmp.path().join(name);
        copy_dir(&good, &d);
        damage(&d);
        let o = init(&d, "full", &bk);
        assert!(o.status.success(), "{name}: {}", text(&o));
        assert!(text(&o).contains("Restored"), "{name}: {}", text(&o));
        assert_eq!(db_revision(&d), store_rev, "{name}");
        assert!(!PathBuf::from(format!("{}.part", d.display())).exists());
        assert!(!PathBuf::from(format!("{}.replaced", d.display())).exists());
    }
    // a db older than the store (clean stop, nothing pending in its WAL): restored, even with
    // sanity; then etcd boots on it with every key of the backup
    assert!(db_revision(&old) < store_rev);
    let o = init(&old, "sanity", &bk);
    assert!(
        text(&o).contains("behind the latest backup"),
        "{}",
        text(&o)
    );
    assert!(text(&o).contains("Restored"), "{}", text(&o));
    assert_eq!(db_revision(&old), store_rev);
    let (c, peer) = (free_port(), peer);
    let ep = format!("http://127.0.0.1:{c}");
    let _booted = Proc(
        clean_cmd(&V.etcd())
            .args(["--name", "t", "--data-dir"])
            .arg(&old)
            .args(["--listen-client-urls", &ep, "--advertise-client-urls", &ep])
            .args(["--listen-peer-urls", &format!("http://127.0.0.1:{peer}")])
            .args(["--initial-cluster", &format!("t=http://127.0.0.1:{peer}")])
            .args([
                "--initial-advertise-peer-urls",
                &format!("http://127.0.0.1:{peer}"),
            ])
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(tmp.path().join("boot.log")).expect("log"))
            .spawn()
            .expect("boot"),
    );
    let t = std::time::Instant::now();
    let mut last;
    let count = loop {
        let o = clean_cmd(&V.etcdctl())
            .args([
                "--endpoints",
                &ep,
                "get",
                "/load/",
                "--prefix",
                "--keys-only",
                "-w",
                "json",
            ])
            .output()
            .expect("etcdctl");
        if o.status.success() {
            break serde_json::from_slice::<serde_json::Value>(&o.stdout).expect("json");
        }
        last = String::from_utf8_lossy(&o.stderr).to_string();
        assert!(
            t.elapsed() < std::time::Duration::from_secs(30),
            "restored etcd did not answer ({last}): {}",
            std::fs::read_to_string(tmp.path().join("boot.log")).unwrap_or_default()
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    };
    assert_eq!(count["kvs"].as_array().map(|a| a.len()), Some(300));
    assert_eq!(count["header"]["revision"].as_i64(), Some(store_rev));

    // wrong volume: refused, untouched
    let wrong = tmp.path().join("vol/data");
    std::fs::create_dir_all(wrong.parent().expect("parent")).expect("mkdir");
    copy_dir(&good, &wrong);
    std::fs::write(wrong.parent().expect("p").join("safe_guard"), "other-ns").expect("write");
    let o = {
        let mut c = etcdbrctl();
        c.env("POD_NAMESPACE", "this-ns");
        c.args(["initialize", "--validation-mode", "sanity", "--name", "t"])
            .arg("--data-dir")
            .arg(&wrong)
            .args(["--initial-cluster", &format!("t=http://127.0.0.1:{peer}")])
            .arg("--store-container")
            .arg(&bk);
        c.output().expect("run")
    };
    assert!(!o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("wrong volume"), "{}", text(&o));
    assert_eq!(
        std::fs::read(wrong.join("member/snap/db")).expect("db"),
        db_bytes
    );

    // empty store: no data dir is a fresh cluster; a condemned one is moved aside
    let empty = tmp.path().join("empty-store");
    std::fs::create_dir_all(&empty).expect("mkdir");
    let fresh = tmp.path().join("fresh");
    let o = init(&fresh, "full", &empty);
    assert!(text(&o).contains("Fresh"), "{}", text(&o));
    let bad = tmp.path().join("bad");
    copy_dir(&good, &bad);
    std::fs::remove_dir_all(bad.join("member/wal")).expect("rm");
    let o = init(&bad, "full", &empty);
    assert!(text(&o).contains("MovedAside"), "{}", text(&o));
    assert!(!bad.exists());
    let aside: Vec<_> = std::fs::read_dir(tmp.path())
        .expect("ls")
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with("bad.invalid-"))
        .collect();
    assert_eq!(aside.len(), 1);
}

/// `/initialization/start` and `/initialization/status` on `etcdbrctl server`: the state
/// machine (New -> Progress -> Successful/Failed -> New once read), bad input refused without
/// side effects, a failed initialization retried until it succeeds.
#[test]
fn initialization_over_http() {
    let mut etcd = Etcd::start(V);
    let tmp = tempfile::tempdir().expect("tmp");
    let bk = tmp.path().join("bk");
    etcd.fill(200, 100);
    backup(&etcd, &bk);
    let rev = etcd.revision();
    let peer = etcd.ports.1;
    etcd.kill();
    let data = tmp.path().join("data");
    let port = free_port();
    let nowhere = format!("http://127.0.0.1:{}", free_port());
    let _server = Proc(
        sidecar(&nowhere, port, &bk, &tmp.path().join("server.log"))
            .args(["--schedule", "0 0 1 1 *", "--name", "t"])
            .arg("--data-dir")
            .arg(&data)
            .args(["--initial-cluster", &format!("t=http://127.0.0.1:{peer}")])
            .args([
                "--initial-advertise-peer-urls",
                &format!("http://127.0.0.1:{peer}"),
            ])
            .arg("--restoration-temp-snapshots-dir")
            .arg(tmp.path().join("rtmp"))
            .arg("--etcd-binary")
            .arg(V.etcd())
            .arg("--etcd-restore-tool")
            .arg(V.status_tool().0)
            .spawn()
            .expect("server"),
    );
    let get = |path: &str| http_body(port, "GET", path);
    let t = std::time::Instant::now();
    while get("/initialization/status").is_err() {
        assert!(
            t.elapsed() < std::time::Duration::from_secs(20),
            "server did not start"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let status = || get("/initialization/status").expect("status");
    assert_eq!(status(), (200, "New".to_string()));
    // bad input: clear 4xx, nothing started
    assert_eq!(get("/initialization/start?mode=bogus").expect("r").0, 400);
    assert_eq!(get("/initialization/start?mod=full").expect("r").0, 400);
    // older bootstrap images send failbelowrevision: accepted (and ignored, as etcdbrctl)
    // etcdbrctl takes any method; HEAD (safe) and OPTIONS (a preflight) never start one
    assert_eq!(
        http_body(port, "HEAD", "/initialization/start")
            .expect("r")
            .0,
        405
    );
    assert_eq!(
        http_body(port, "OPTIONS", "/initialization/start")
            .expect("r")
            .0,
        204
    );
    assert_eq!(
        http_body(port, "TRACE", "/initialization/status")
            .expect("r")
            .0,
        405
    );
    assert_eq!(
        http_body(port, "POST", "/initialization/status")
            .expect("r")
            .0,
        200
    );
    assert_eq!(status(), (200, "New".to_string()));

    let run = |expect: &str| {
        assert_eq!(
            get("/initialization/start?mode=full&failbelowrevision=0").expect("start"),
            (200, String::new())
        );
        // a second start while in progress changes nothing
        let _ = get("/initialization/start?mode=sanity");
        let t = std::time::Instant::now();
        loop {
            let (code, s) = status();
            assert_eq!(code, 200);
            if s == "Progress" {
                let (h, _) = get("/healthz").expect("healthz");
                assert_eq!(h, 503, "unhealthy while initializing");
            } else {
                assert_eq!(s, expect);
                break;
            }
            assert!(
                t.elapsed() < std::time::Duration::from_secs(60),
                "stuck in Progress"
            );
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        if expect == "Failed" {
            assert_eq!(
                status(),
                (200, "New".to_string()),
                "a failure is read once (as etcdbrctl: a bootstrap script starts again)"
            );
        } else {
            assert_eq!(
                status(),
                (200, expect.to_string()),
                "a success is not taken by the first reader (etcd is not running here)"
            );
        }
    };
    run("Successful");
    assert_eq!(db_revision(&data), rev);
    // valid now: kept
    run("Successful");
    assert_eq!(db_revision(&data), rev);
    // the backup damaged and the data dir gone: Failed (named in the log), the target not
    // created; repaired: the next start succeeds
    std::fs::remove_dir_all(&data).expect("rm");
    let full = std::fs::read_dir(bk.join("v2"))
        .expect("ls")
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .find(|p| p.to_string_lossy().contains("Full-"))
        .expect("full");
    let good = std::fs::read(&full).expect("read");
    let mut bad = good.clone();
    let mid = bad.len() / 2;
    bad[mid] ^= 0xff;
    std::fs::write(&full, &bad).expect("write");
    run("Failed");
    assert!(!data.exists());
    std::fs::write(&full, &good).expect("write");
    run("Successful");
    assert_eq!(db_revision(&data), rev);
}

/// A member of a 3-member cluster loses its data: `initialize` removes it from the cluster and
/// adds it back as a learner (no restore from the store); etcd started on the empty dir joins
/// the existing cluster and syncs from the leader; its sidecar promotes it once it caught up.
#[test]
fn a_member_with_bad_data_is_readded_as_a_learner() {
    let mut cluster = EtcdCluster::start(V);
    for i in 0..50 {
        cluster.etcdctl_raw(&cluster.endpoints, &["put", &format!("/k/{i:02}"), "v"]);
    }
    let rev = cluster.revision();
    cluster.kill(2);
    let data = cluster.dir.path().join("m2");
    std::fs::remove_dir_all(data.join("member")).expect("rm member");
    let peer = format!("http://127.0.0.1:{}", cluster.peers[2]);
    let others = cluster.endpoints[..2].join(",");
    let o = etcdbrctl()
        .args(["initialize", "--validation-mode", "full", "--name", "m2"])
        .arg("--data-dir")
        .arg(&data)
        .args(["--initial-cluster", &cluster.initial_cluster])
        .args(["--initial-advertise-peer-urls", &peer])
        .args(["--service-endpoints", &others])
        .output()
        .expect("initialize");
    let logs = || {
        (0..2)
            .map(|i| {
                let l = std::fs::read_to_string(cluster.dir.path().join(format!("m{i}.log")))
                    .unwrap_or_default();
                let tail: Vec<&str> = l.lines().rev().take(15).collect();
                format!(
                    "m{i}:\n{}",
                    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    };
    assert!(o.status.success(), "{}\n{}", text(&o), logs());
    assert!(text(&o).contains("ReAddedAsLearner"), "{}", text(&o));
    let members = || -> serde_json::Value {
        let out = cluster.etcdctl_raw(&cluster.endpoints[..2], &["member", "list", "-w", "json"]);
        serde_json::from_slice(&out.stdout).expect("member list")
    };
    let m = members();
    let list = m["members"].as_array().expect("members");
    assert_eq!(list.len(), 3);
    let learner: Vec<_> = list.iter().filter(|m| m["isLearner"] == true).collect();
    assert_eq!(learner.len(), 1, "{m}");
    assert_eq!(learner[0]["peerURLs"][0].as_str(), Some(peer.as_str()));

    // etcd on the emptied dir joins as the learner; its sidecar promotes it
    let ep = cluster.endpoints[2].clone();
    let log = std::fs::File::create(cluster.dir.path().join("m2-rejoin.log")).expect("log");
    let _m2 = Proc(
        etcd_cmd("m2", &data, &ep, &peer)
            .args(["--initial-cluster", &cluster.initial_cluster])
            .args(["--initial-cluster-state", "existing"])
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("m2"),
    );
    let store = tempfile::tempdir().expect("store");
    let port = free_port();
    let slog = cluster.dir.path().join("m2-sidecar.log");
    let _sidecar = Proc(
        sidecar(&ep, port, store.path(), &slog)
            .args(["--reelection-period", "2s"])
            .args([
                "--schedule",
                "0 0 1 1 *",
                "--service-endpoints",
                &cluster.endpoints.join(","),
            ])
            .spawn()
            .expect("sidecar"),
    );
    let t = std::time::Instant::now();
    loop {
        let m = members();
        let learners = m["members"]
            .as_array()
            .map(|l| l.iter().filter(|m| m["isLearner"] == true).count())
            .unwrap_or(1);
        if learners == 0 {
            break;
        }
        assert!(
            t.elapsed() < std::time::Duration::from_secs(60),
            "the learner was not promoted: {m}; sidecar log:\n{}",
            std::fs::read_to_string(cluster.dir.path().join("m2-sidecar.log")).unwrap_or_default()
        );
        std::thread::sleep(std::time::Duration::from_millis(500));
    }
    // the re-added member serves the data it synced from the leader
    let out = cluster.etcdctl_raw(
        std::slice::from_ref(&ep),
        &[
            "get",
            "/k/",
            "--prefix",
            "--keys-only",
            "--consistency=s",
            "-w",
            "json",
        ],
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(v["kvs"].as_array().map(|a| a.len()), Some(50));
    assert!(v["header"]["revision"].as_i64().unwrap_or(0) >= rev);
}

/// `--server-cert/--server-key`: the API over HTTPS (verified with the CA by curl, as the
/// bootstrap script does), with etcdbrctl's HSTS/CSP headers except on /metrics; plain HTTP on
/// the port fails.
#[test]
fn the_api_over_https() {
    let tmp = tempfile::tempdir().expect("tmp");
    let (cert, key) = (tmp.path().join("tls.crt"), tmp.path().join("tls.key"));
    let st = std::process::Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=localhost",
        ])
        .args([
            "-addext",
            "subjectAltName=DNS:localhost,IP:127.0.0.1",
            "-keyout",
        ])
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .stderr(std::process::Stdio::null())
        .status()
        .expect("openssl");
    assert!(st.success());
    let port = free_port();
    let nowhere = format!("http://127.0.0.1:{}", free_port());
    let _server = Proc(
        sidecar(
            &nowhere,
            port,
            &tmp.path().join("bk"),
            &tmp.path().join("server.log"),
        )
        .arg("--server-cert")
        .arg(&cert)
        .arg("--server-key")
        .arg(&key)
        .spawn()
        .expect("server"),
    );
    let curl = |path: &str| {
        std::process::Command::new("curl")
            .args(["-sS", "-i", "--max-time", "5", "--cacert"])
            .arg(&cert)
            .arg(format!("https://127.0.0.1:{port}{path}"))
            .output()
            .expect("curl")
    };
    let t = std::time::Instant::now();
    let out = loop {
        let o = curl("/initialization/status");
        if o.status.success() {
            break String::from_utf8_lossy(&o.stdout).to_string();
        }
        assert!(
            t.elapsed() < std::time::Duration::from_secs(20),
            "no HTTPS: {}\n{}",
            String::from_utf8_lossy(&o.stderr),
            std::fs::read_to_string(tmp.path().join("server.log")).unwrap_or_default()
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    };
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    assert!(out.ends_with("\r\n\r\nNew"), "{out}");
    let lower = out.to_lowercase();
    assert!(
        lower.contains("strict-transport-security: max-age=31536000"),
        "{out}"
    );
    assert!(
        lower.contains("content-security-policy: default-src 'self'"),
        "{out}"
    );
    let metrics = String::from_utf8_lossy(&curl("/metrics").stdout).to_lowercase();
    assert!(metrics.contains("etcdbr_") && !metrics.contains("strict-transport-security"));
    assert!(
        http_body(port, "GET", "/initialization/status").is_err(),
        "plain HTTP must not be served on the HTTPS port"
    );
}

/// A data dir with raft snapshots (`--snapshot-count 50`): full validation reads the `.snap`
/// files and the WAL's snapshot records and keeps it; with the newest `.snap` damaged it is
/// still kept, as etcd 3.5 boots from the newest usable one (checked by booting it).
#[test]
fn snap_files_are_read_and_a_damaged_newest_one_is_skipped_like_etcd() {
    let tmp = tempfile::tempdir().expect("tmp");
    let data = tmp.path().join("data");
    let (c, p) = (free_port(), free_port());
    let ep = format!("http://127.0.0.1:{c}");
    let peer = format!("http://127.0.0.1:{p}");
    let start = |log: &str| {
        Proc(
            etcd_cmd("t", &data, &ep, &peer)
                .args([
                    "--initial-cluster",
                    &format!("t={peer}"),
                    "--snapshot-count",
                    "50",
                ])
                .stdout(std::process::Stdio::null())
                .stderr(std::fs::File::create(tmp.path().join(log)).expect("log"))
                .spawn()
                .expect("etcd"),
        )
    };
    let wait = || {
        let t = std::time::Instant::now();
        while !clean_cmd(&V.etcdctl())
            .args(["--endpoints", &ep, "endpoint", "health"])
            .output()
            .expect("etcdctl")
            .status
            .success()
        {
            assert!(
                t.elapsed() < std::time::Duration::from_secs(30),
                "etcd did not start"
            );
            std::thread::sleep(std::time::Duration::from_millis(200));
        }
    };
    let mut etcd = start("etcd1.log");
    wait();
    for i in 0..300 {
        let o = clean_cmd(&V.etcdctl())
            .args(["--endpoints", &ep, "put", &format!("/s/{i}"), "v"])
            .output()
            .expect("put");
        assert!(o.status.success());
    }
    let _ = std::process::Command::new("kill")
        .args(["-TERM", &etcd.0.id().to_string()])
        .status();
    let _ = etcd.0.wait();
    let mut snaps: Vec<_> = std::fs::read_dir(data.join("member/snap"))
        .expect("ls")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "snap"))
        .collect();
    snaps.sort();
    assert!(snaps.len() >= 2, "{snaps:?}");
    let bk = tmp.path().join("bk"); // empty store: a wrong verdict would move the dir aside
    std::fs::create_dir_all(&bk).expect("bk");
    let o = initialize(p, tmp.path(), &data, "full", &bk);
    assert!(text(&o).contains("Kept"), "{}", text(&o));
    // the newest .snap damaged: etcd 3.5 skips it; so does the validator
    let newest = snaps.last().expect("newest");
    let mut b = std::fs::read(newest).expect("read");
    let mid = b.len() / 2;
    b[mid] ^= 0xff;
    std::fs::write(newest, b).expect("write");
    let o = initialize(p, tmp.path(), &data, "full", &bk);
    assert!(text(&o).contains("Kept"), "{}", text(&o));
    let _etcd = start("etcd2.log");
    wait();
    let o = clean_cmd(&V.etcdctl())
        .args(["--endpoints", &ep, "get", "/s/299"])
        .output()
        .expect("get");
    assert!(String::from_utf8_lossy(&o.stdout).contains("/s/299"));
}
