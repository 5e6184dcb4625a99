//! The `server` command against real etcd (single member and a 3-member cluster) and real
//! object stores: the HTTP API, leader-only snapshotting, a gap-free delta chain across
//! restarts, compaction and leader changes, staleness, defragmentation, graceful shutdown.

use crate::common::*;
use etcdbr::format::layout::{Kind, Snapshot};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

struct Sidecar {
    proc: Option<Proc>,
    port: u16,
    log: PathBuf,
    args: Vec<String>,
    env: Vec<(String, String)>,
    /// Sent as `Authorization: Bearer` by [`Sidecar::get`].
    token: Option<String>,
}

impl Sidecar {
    fn start(endpoint: &str, store: &[String], extra: &[&str], log: PathBuf) -> Sidecar {
        Self::start_at(
            "127.0.0.1",
            free_port(),
            endpoint,
            store,
            extra,
            log,
            vec![],
        )
    }

    fn start_at(
        host: &str,
        port: u16,
        endpoint: &str,
        store: &[String],
        extra: &[&str],
        log: PathBuf,
        env: Vec<(String, String)>,
    ) -> Sidecar {
        let mut args: Vec<String> = vec![
            "server".into(),
            "--endpoints".into(),
            endpoint.into(),
            "--server-host".into(),
            host.into(),
            "--server-port".into(),
            port.to_string(),
            "--schedule".into(),
            "0 0 1 1 *".into(),
            "--delta-snapshot-period".into(),
            "1s".into(),
            "--reelection-period".into(),
            "2s".into(),
            "--etcd-connection-timeout".into(),
            "3s".into(),
            "--backoff-threshold-time".into(),
            "2s".into(),
        ];
        args.extend(store.iter().cloned());
        args.extend(extra.iter().map(|s| s.to_string()));
        let mut s = Sidecar {
            proc: None,
            port,
            log,
            args,
            env,
            token: None,
        };
        s.spawn();
        s
    }

    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let child = etcdbrctl()
            .args(&self.args)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .stdin(Stdio::null())
            .spawn()
            .unwrap();
        self.proc = Some(Proc(child));
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn get(&self, path: &str) -> (u16, String) {
        let auth = self.token.as_ref().map(|t| format!("Bearer {t}"));
        let headers: Vec<(&str, &str)> = auth
            .as_deref()
            .map(|a| vec![("Authorization", a)])
            .unwrap_or_default();
        http_with(self.port, "GET", path, &headers).unwrap_or((0, String::new()))
    }

    fn json(&self, path: &str) -> serde_json::Value {
        let (code, body) = self.get(path);
        assert_eq!(code, 200, "{path}: {body}");
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("{path}: {e}: {body}"))
    }

    fn wait_until(&self, what: &str, secs: u64, f: &dyn Fn() -> bool) {
        let t = Instant::now();
        while !f() {
            assert!(
                t.elapsed() < Duration::from_secs(secs),
                "timed out waiting for {what}; sidecar log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// SIGTERM; asserts exit 0.
    fn stop(&mut self) {
        if let Some(mut p) = self.proc.take() {
            std::process::Command::new("kill")
                .args(["-TERM", &p.id().to_string()])
                .status()
                .unwrap();
            let t = Instant::now();
            loop {
                if let Some(st) = p.try_wait().unwrap() {
                    assert!(st.success(), "SIGTERM must exit 0:\n{}", self.log());
                    return;
                }
                assert!(
                    t.elapsed() < Duration::from_secs(60),
                    "no exit after SIGTERM:\n{}",
                    self.log()
                );
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }
}

fn local_store(dir: &Path) -> Vec<String> {
    vec!["--store-container".into(), dir.display().to_string()]
}

fn read_local(bk: &Path) -> impl Fn(&Snapshot) -> Vec<u8> + '_ {
    move |s: &Snapshot| std::fs::read(bk.join("v2").join(&s.snap_name)).unwrap()
}

fn writers(eps: Vec<String>, n: usize) -> (Arc<AtomicBool>, Vec<std::thread::JoinHandle<u64>>) {
    let stop = Arc::new(AtomicBool::new(false));
    let w = (0..n).map(|_| writer(eps.clone(), stop.clone())).collect();
    (stop, w)
}

fn stop_writers(stop: Arc<AtomicBool>, w: Vec<std::thread::JoinHandle<u64>>) -> u64 {
    stop.store(true, Ordering::Relaxed);
    w.into_iter().map(|h| h.join().unwrap()).sum()
}

/// Single member, Local store: the API (status codes, shapes, bad input), deltas every period
/// under load, out-of-schedule snapshots, a sidecar restart (catch-up delta), a compaction
/// past the watch position while the sidecar is down (a new full), and SIGTERM during load (a
/// final delta up to the signal). The chain stays gap-free throughout.
#[test]
fn single_member_api_restarts_compaction_and_final_delta() {
    let etcd = Etcd::start(EtcdVersion::V35);
    etcd.fill(50, 10);
    let tmp = tempfile::tempdir().unwrap();
    let bk = tmp.path().join("bk");
    let mut sc = Sidecar::start(
        &etcd.endpoint,
        &local_store(&bk),
        &[],
        tmp.path().join("sidecar.log"),
    );
    sc.wait_until("healthy", 30, &|| sc.get("/healthz").0 == 200);
    let h = sc.json("/healthz");
    assert_eq!(h["health"], true);
    assert_eq!(h["role"], "leader");

    // bad input: a 4xx and a message
    for (method, path, code, needle) in [
        ("GET", "/snapshot/full?final=maybe", 400, "maybe"),
        ("GET", "/snapshot/full?finall=true", 400, "finall"),
        (
            "GET",
            "/snapshot/latest?x=1",
            400,
            "unknown query parameter",
        ),
        ("GET", "/no/such/path", 404, "unknown path"),
        ("TRACE", "/snapshot/full", 405, "not allowed"),
        ("TRACE", "/healthz", 405, "not allowed"),
        // etcdbrctl takes any method on every path: so do we, but HEAD never acts
        ("PUT", "/healthz", 200, "health"),
        ("DELETE", "/snapshot/latest", 200, "fullSnapshot"),
    ] {
        let (c, body) = http_body(sc.port, method, path).unwrap();
        assert_eq!(c, code, "{method} {path}: {body}");
        assert!(body.contains(needle), "{method} {path}: {body}");
    }
    assert_eq!(http_body(sc.port, "HEAD", "/snapshot/full").unwrap().0, 405);

    let (stop, w) = writers(vec![etcd.endpoint.clone()], 2);
    sc.wait_until("3 deltas under load", 30, &|| {
        stored_in(&bk)
            .iter()
            .filter(|s| s.kind == Kind::Incr)
            .count()
            >= 3
    });
    let latest = sc.json("/snapshot/latest");
    assert_eq!(latest["fullSnapshot"]["kind"], "Full");
    assert!(latest["deltaSnapshots"].as_array().unwrap().len() >= 3);
    assert!(latest["latestSnapshotAgeSeconds"].as_i64().unwrap() <= 5);
    assert!(latest["fullSnapshotAgeSeconds"].as_i64().is_some());
    let d = sc.json("/snapshot/delta");
    assert!(d.is_null() || d["kind"] == "Incr", "{d}");
    let (_, metrics) = sc.get("/metrics");
    for needle in [
        "etcdbr_is_leader 1",
        "etcdbr_snapshot_duration_seconds_count{kind=\"Incr\",succeeded=\"true\"}",
        "etcdbr_snapshot_latest_revision{kind=\"Full\"}",
        "etcdbr_snapshot_stale{kind=\"Incr\"} 0",
    ] {
        assert!(
            metrics.contains(needle),
            "metrics lack {needle}:\n{metrics}"
        );
    }

    // sidecar restart under load: it catches up from the store with deltas, no full
    sc.stop();
    std::thread::sleep(Duration::from_secs(1));
    sc.spawn();
    sc.wait_until("healthy again", 30, &|| sc.get("/healthz").0 == 200);
    std::thread::sleep(Duration::from_secs(3));
    let fulls = |v: &[Snapshot]| v.iter().filter(|s| s.kind == Kind::Full).count();
    assert_eq!(
        fulls(&stored_in(&bk)),
        1,
        "a restart catches up with deltas"
    );

    // down again; etcd compacts past the store's last revision meanwhile
    sc.stop();
    let before = stored_in(&bk).last().unwrap().last_revision;
    std::thread::sleep(Duration::from_secs(1));
    let compact = etcd.revision();
    assert!(compact > before + 1, "the load must have moved on");
    etcd.etcdctl(&["compact", &compact.to_string(), "--physical"]);
    let fulls_before = stored_in(&bk)
        .iter()
        .filter(|s| s.kind == Kind::Full)
        .count();
    sc.spawn();
    sc.wait_until("a new full after the compaction", 40, &|| {
        stored_in(&bk)
            .iter()
            .filter(|s| s.kind == Kind::Full)
            .count()
            > fulls_before
    });
    assert!(
        sc.log().contains("compacted away"),
        "the sidecar must say why it took a full"
    );
    std::thread::sleep(Duration::from_secs(2));
    let f = sc.json("/snapshot/full?final=true");
    assert_eq!(f["kind"], "Full");
    assert_eq!(f["isFinal"], true);
    assert!(f["snapName"].as_str().unwrap().ends_with(".final"), "{f}");
    assert!(f.get("immutabilityExpriyTime").is_some());
    std::thread::sleep(Duration::from_secs(2));

    // SIGTERM while the writers write: the final delta reaches the revision at the signal
    let at_signal = etcd.revision();
    sc.stop();
    let writes = stop_writers(stop, w);
    let all = stored_in(&bk);
    let revs = check_chain(&all, &read_local(&bk));
    let last = all.last().unwrap().last_revision;
    assert!(
        last >= at_signal,
        "final delta must reach {at_signal}, store ends at {last}"
    );
    assert_eq!(
        fulls(&all),
        3,
        "initial, after compaction, final=true: {all:?}"
    );
    let mut sorted = revs.clone();
    sorted.dedup();
    assert_eq!(sorted.len(), revs.len(), "a revision appears twice");
    eprintln!(
        "{writes} writes, {} objects, deltas cover {} revisions, last {last}",
        all.len(),
        revs.len()
    );
}

/// Three members, one sidecar each: only the leader's sidecar writes and defragments (followers
/// first); followers answer the snapshot endpoints with a clear error and serve the latest set;
/// killing the leader's etcd hands the chain to the new leader's sidecar with no gap and no
/// overlap.
#[test]
fn cluster_leader_change_continues_the_chain() {
    let mut cluster = EtcdCluster::start(EtcdVersion::V35);
    let tmp = tempfile::tempdir().unwrap();
    let bk = tmp.path().join("bk");
    let eps = cluster.endpoints.clone();
    let mut sidecars: Vec<Sidecar> = (0..3)
        .map(|i| {
            Sidecar::start(
                &eps[i],
                &local_store(&bk),
                &["--defragmentation-schedule", "@every 5s"],
                tmp.path().join(format!("sidecar{i}.log")),
            )
        })
        .collect();
    let leader = cluster.leader();
    let (stop, w) = writers(eps.clone(), 2);
    let l = &sidecars[leader];
    l.wait_until("deltas from the leader's sidecar", 40, &|| {
        stored_in(&bk)
            .iter()
            .filter(|s| s.kind == Kind::Incr)
            .count()
            >= 3
    });
    l.wait_until("a defragmentation of the 3 members", 40, &|| {
        l.log().matches("defragmented").count() >= 3
    });
    // followers first, the leader last
    let log = l.log();
    let order_line = log
        .lines()
        .find(|x| x.contains("defragmentation: starting"))
        .unwrap();
    assert!(
        order_line.contains(&format!("\"{}\"]", eps[leader])),
        "leader last: {order_line}"
    );
    for (i, s) in sidecars.iter().enumerate() {
        if i == leader {
            continue;
        }
        let h = s.json("/healthz");
        assert_eq!(h["role"], "follower", "{h}");
        let (code, body) = s.get("/snapshot/full");
        assert!(code == 503 || code == 200, "{code} {body}");
        assert!(
            code == 200 || body.contains("not the leader"),
            "a clear error: {body}"
        );
        let latest = s.json("/snapshot/latest");
        assert!(latest["fullSnapshot"]["kind"] == "Full");
        assert!(
            !s.log().contains("defragmented"),
            "only the leader's sidecar defragments"
        );
    }

    // kill the leader's etcd; a new leader's sidecar takes over
    cluster.kill(leader);
    let new_leader = cluster.leader();
    assert_ne!(new_leader, leader);
    let nl = &sidecars[new_leader];
    nl.wait_until("deltas from the new leader's sidecar", 40, &|| {
        nl.log().contains("delta snapshot stored")
    });
    std::thread::sleep(Duration::from_secs(3));
    let writes = stop_writers(stop, w);
    let end = cluster.revision();
    nl.wait_until("the chain to reach the end of the load", 30, &|| {
        stored_in(&bk)
            .last()
            .is_some_and(|s| s.last_revision >= end)
    });
    for s in sidecars.iter_mut() {
        s.stop();
    }
    let all = stored_in(&bk);
    let revs = check_chain(&all, &read_local(&bk));
    let fulls: Vec<&Snapshot> = all.iter().filter(|s| s.kind == Kind::Full).collect();
    assert_eq!(
        fulls.len(),
        1,
        "the new leader continues with deltas: {all:?}"
    );
    let want: Vec<i64> = (fulls[0].last_revision + 1..=end).collect();
    assert_eq!(revs, want, "every revision exactly once");
    // who wrote what: each object by exactly one sidecar, only leaders wrote
    let keys = |s: &Sidecar| -> Vec<String> {
        s.log()
            .lines()
            .filter(|l| l.starts_with("v2/"))
            .map(str::to_string)
            .collect()
    };
    let (old, new) = (keys(&sidecars[leader]), keys(&sidecars[new_leader]));
    let third = 3 - leader - new_leader;
    assert!(keys(&sidecars[third]).is_empty(), "a follower wrote");
    assert!(!old.is_empty() && !new.is_empty());
    assert!(old.iter().all(|k| !new.contains(k)));
    assert_eq!(old.len() + new.len(), all.len());
    eprintln!(
        "{writes} writes; old leader wrote {}, new leader {} objects; revisions {}..={end}",
        old.len(),
        new.len(),
        fulls[0].last_revision + 1
    );
}

/// S3 (moto): the chain under load covers every revision exactly once; when the store fails,
/// `/healthz` turns 503 once nothing was stored for 3 delta periods while etcd changed.
#[test]
fn s3_chain_and_staleness() {
    let etcd = Etcd::start(EtcdVersion::V34);
    let moto = Moto::start("deltas");
    let tmp = tempfile::tempdir().unwrap();
    let creds = moto.credentials_file();
    let store = vec![
        "--storage-provider".to_string(),
        "S3".into(),
        "--store-container".into(),
        "deltas".into(),
        "--store-prefix".into(),
        "etcd-main".into(),
        "--store-endpoint-override".into(),
        moto.endpoint.clone(),
    ];
    let log = tmp.path().join("sidecar.log");
    let env = vec![(
        "AWS_APPLICATION_CREDENTIALS_JSON".to_string(),
        creds.display().to_string(),
    )];
    let mut sc = Sidecar::start_at(
        "127.0.0.1",
        free_port(),
        &etcd.endpoint,
        &store,
        &[],
        log,
        env,
    );
    sc.wait_until("healthy", 30, &|| sc.get("/healthz").0 == 200);
    let os = moto.store();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let list = || -> Vec<Snapshot> {
        rt.block_on(async {
            use futures::TryStreamExt;
            let objs: Vec<object_store::ObjectMeta> = os
                .list(Some(&object_store::path::Path::from("etcd-main")))
                .try_collect()
                .await
                .unwrap();
            let mut v: Vec<Snapshot> = objs
                .iter()
                .filter_map(|o| Snapshot::parse_key(o.location.as_ref()).ok())
                .collect();
            etcdbr::format::layout::sort(&mut v);
            v
        })
    };
    let (stop, w) = writers(vec![etcd.endpoint.clone()], 2);
    std::thread::sleep(Duration::from_secs(5));
    let writes = stop_writers(stop, w);
    let end = etcd.revision();
    sc.wait_until("the chain to reach the end of the load", 30, &|| {
        list().last().is_some_and(|s| s.last_revision >= end)
    });
    let all = list();
    let fetch = |s: &Snapshot| -> Vec<u8> {
        rt.block_on(async {
            use object_store::ObjectStoreExt;
            let key = format!("etcd-main/v2/{}", s.snap_name);
            os.get(&object_store::path::Path::from(key))
                .await
                .unwrap()
                .bytes()
                .await
                .unwrap()
                .to_vec()
        })
    };
    let revs = check_chain(&all, &fetch);
    let full = all.iter().find(|s| s.kind == Kind::Full).unwrap();
    let deltas = all.iter().filter(|s| s.kind == Kind::Incr).count();
    assert!(deltas >= 3, "a delta per period: {all:?}");
    assert_eq!(
        revs,
        (full.last_revision + 1..=end).collect::<Vec<_>>(),
        "every revision exactly once"
    );
    eprintln!("{writes} writes, {deltas} deltas on S3 up to revision {end}");

    // the store goes away while etcd keeps changing: stale after 3 periods
    drop(moto);
    let (stop, w) = writers(vec![etcd.endpoint.clone()], 1);
    sc.wait_until("healthz 503 with stale deltas", 30, &|| {
        let (code, body) = sc.get("/healthz");
        code == 503 && body.contains("\"deltaSnapshotStale\":true")
    });
    let (_, metrics) = sc.get("/metrics");
    assert!(metrics.contains("etcdbr_snapshot_stale{kind=\"Incr\"} 1"));
    assert!(metrics.contains("etcdbr_snapshotter_failure{error=\"store\"}"));
    stop_writers(stop, w);
    sc.stop();
}

/// etcdbrctl's forwarding convention (the leader's client-URL host, this server's port), on
/// loopback: the leader's member serves clients on `[::1]` with its sidecar on `[::1]:P`, a
/// follower's sidecar listens on `127.0.0.1:P`. The follower's `/snapshot/full` and
/// `/snapshot/delta` are answered by the leader's sidecar.
#[test]
fn follower_forwards_snapshot_requests_to_the_leaders_sidecar() {
    let cluster = EtcdCluster::start_hosts(EtcdVersion::V35, ["[::1]", "127.0.0.1", "127.0.0.1"]);
    cluster.move_leader(0);
    let tmp = tempfile::tempdir().unwrap();
    let bk = tmp.path().join("bk");
    let port = free_port();
    let eps = cluster.endpoints.clone();
    // both sidecars read one token (the chart's Secret): the forwarded request carries it
    let token_file = tmp.path().join("token");
    std::fs::write(&token_file, "cluster-token\n").unwrap();
    let token_file = token_file.display().to_string();
    let auth = ["--server-token-file", token_file.as_str()];
    let mut leader = Sidecar::start_at(
        "::1",
        port,
        &eps[0],
        &local_store(&bk),
        &auth,
        tmp.path().join("leader.log"),
        vec![],
    );
    let mut follower = Sidecar::start_at(
        "127.0.0.1",
        port,
        &eps[1],
        &local_store(&bk),
        &auth,
        tmp.path().join("follower.log"),
        vec![],
    );
    leader.token = Some("cluster-token".into());
    follower.token = Some("cluster-token".into());
    leader.wait_until("the leader's first full", 40, &|| {
        stored_in(&bk).iter().any(|s| s.kind == Kind::Full)
    });
    follower.wait_until("the follower to know its role", 20, &|| {
        follower.get("/healthz").1.contains("follower")
    });
    // a new revision, so that the requested full cannot be mistaken for the first one
    let out = cluster.etcdctl_raw(&eps, &["put", "forwarded", "yes"]);
    assert!(out.status.success());
    let rev = cluster.revision();
    let f = follower.json("/snapshot/full");
    assert_eq!(f["kind"], "Full", "{f}");
    let name = f["snapName"].as_str().unwrap().to_string();
    assert!(
        stored_in(&bk).iter().any(|s| s.snap_name == name),
        "{name} stored"
    );
    assert!(f["lastRevision"].as_i64().unwrap() >= rev, "{f}");
    assert!(follower.log().contains("forwarding the request"));
    assert!(
        leader.log().contains(&name),
        "the leader's sidecar took it:\n{}",
        leader.log()
    );
    assert!(!follower.log().contains("full snapshot stored"));
    // a delta through the follower, too (null when nothing was buffered)
    let (code, body) = follower.get("/snapshot/delta");
    assert_eq!(code, 200, "{body}");
    // bad input is refused by the follower itself
    let (code, body) = follower.get("/snapshot/full?final=maybe");
    assert_eq!(code, 400, "{body}");
}

/// A self-signed certificate for 127.0.0.1 (openssl).
fn self_signed(dir: &Path) -> (PathBuf, PathBuf) {
    let (cert, key) = (dir.join("tls.crt"), dir.join("tls.key"));
    let st = std::process::Command::new("openssl")
        .args([
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
        ])
        .args(["-subj", "/CN=localhost", "-addext"])
        .arg("subjectAltName=DNS:localhost,IP:127.0.0.1")
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .stderr(Stdio::null())
        .status()
        .expect("openssl");
    assert!(st.success());
    (cert, key)
}

/// 100 idle connections (port scanners, TCP checks) and 50 clients sending their headers a
/// byte at a time stall nobody: `/healthz` answers within 1 s over HTTP and HTTPS while they are
/// open (the TLS handshake used to run in the accept loop: five idle sockets stalled every
/// request), the idle ones are closed by the server after the header timeout, and a body is
/// refused.
#[test]
fn idle_and_slow_clients_stall_nobody() {
    let tmp = tempfile::tempdir().expect("tmp");
    let (cert, key) = self_signed(tmp.path());
    let nowhere = format!("http://127.0.0.1:{}", free_port());
    for tls in [false, true] {
        let mut extra: Vec<String> = Vec::new();
        if tls {
            extra.extend([
                "--server-cert".to_string(),
                cert.display().to_string(),
                "--server-key".to_string(),
                key.display().to_string(),
            ]);
        }
        let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
        let log = tmp.path().join(format!("server-{tls}.log"));
        let (_server, port) = sidecar_server(&nowhere, &tmp.path().join("bk"), &log, &extra);
        let scheme = if tls { "https" } else { "http" };
        let curl = |path: &str, max: &str| -> (String, f64) {
            let o = std::process::Command::new("curl")
                .args(["-sS", "-o", "/dev/null", "-w", "%{http_code} %{time_total}"])
                .args(["--max-time", max, "--cacert"])
                .arg(&cert)
                .arg(format!("{scheme}://127.0.0.1:{port}{path}"))
                .output()
                .expect("curl");
            let out = String::from_utf8_lossy(&o.stdout).to_string();
            let (code, t) = out.split_once(' ').unwrap_or(("000", "99"));
            (code.to_string(), t.parse().unwrap_or(99.0))
        };
        let t = Instant::now();
        while curl("/healthz", "2").0 == "000" {
            assert!(
                t.elapsed() < Duration::from_secs(20),
                "the API does not answer\n{}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        let idle: Vec<std::net::TcpStream> = (0..100)
            .map(|_| std::net::TcpStream::connect(("127.0.0.1", port)).expect("idle connection"))
            .collect();
        let stop = Arc::new(AtomicBool::new(false));
        let slow: Vec<_> = (0..50)
            .map(|_| {
                let stop = stop.clone();
                std::thread::spawn(move || {
                    use std::io::Write;
                    let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
                        return;
                    };
                    let head = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: aaaaaaaaaaaaaaaaaaaa";
                    for b in head {
                        if stop.load(Ordering::Relaxed) || s.write_all(&[*b]).is_err() {
                            return;
                        }
                        std::thread::sleep(Duration::from_millis(300));
                    }
                })
            })
            .collect();
        std::thread::sleep(Duration::from_millis(500));
        for _ in 0..5 {
            let (code, secs) = curl("/healthz", "5");
            assert!(
                code != "000" && secs < 1.0,
                "{scheme}: /healthz took {secs} s (code {code}) with 150 idle or slow clients open"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        // the server closes what sent no complete request head within its timeout
        let mut s = idle.into_iter().next().expect("one");
        s.set_read_timeout(Some(Duration::from_secs(20)))
            .expect("timeout");
        let mut buf = [0u8; 16];
        use std::io::Read;
        let closed = matches!(s.read(&mut buf), Ok(0) | Err(_));
        assert!(
            closed,
            "{scheme}: an idle connection is closed by the server"
        );
        if !tls {
            // a body: refused before any handler runs (nothing started)
            use std::io::Write;
            let mut c = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
            c.set_read_timeout(Some(Duration::from_secs(5)))
                .expect("timeout");
            c.write_all(
                b"POST /snapshot/full HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n",
            )
            .expect("write");
            let mut head = [0u8; 12];
            c.read_exact(&mut head).expect("status line");
            assert_eq!(&head, b"HTTP/1.1 413", "a large body is refused");
        }
        stop.store(true, Ordering::Relaxed);
        for t in slow {
            let _ = t.join();
        }
    }
}

/// 50 concurrent `/snapshot/full` share one snapshot (each would hold a long etcd read and,
/// with LimitBased GC, a burst erased the history); with `--on-demand-full-min-interval`, a
/// request soon after gets 429 with `Retry-After`.
#[test]
fn concurrent_full_requests_share_one_snapshot() {
    let etcd = Etcd::start(EtcdVersion::V35);
    etcd.fill(200, 1000);
    let tmp = tempfile::tempdir().unwrap();
    let bk = tmp.path().join("bk");
    let sc = Sidecar::start(
        &etcd.endpoint,
        &local_store(&bk),
        &["--on-demand-full-min-interval", "1m"],
        tmp.path().join("sidecar.log"),
    );
    sc.wait_until("healthy", 30, &|| sc.get("/healthz").0 == 200);
    let fulls = || {
        stored_in(&bk)
            .iter()
            .filter(|s| s.kind == Kind::Full)
            .count()
    };
    sc.wait_until("the start-up full", 30, &|| fulls() == 1);
    // a new revision: a full at the start-up full's revision in the same second would have its
    // very name (and replace it with the same content)
    etcd.put("before-the-burst", b"1");
    let before = fulls();
    let port = sc.port;
    let answers: Vec<(u16, String)> = (0..50)
        .map(|_| {
            std::thread::spawn(move || {
                http_body(port, "GET", "/snapshot/full").unwrap_or((0, String::new()))
            })
        })
        .collect::<Vec<_>>()
        .into_iter()
        .map(|t| t.join().expect("client"))
        .collect();
    let ok: Vec<&String> = answers
        .iter()
        .filter(|(c, _)| *c == 200)
        .map(|(_, b)| b)
        .collect();
    assert!(!ok.is_empty(), "{answers:?}");
    assert!(
        answers.iter().all(|(c, _)| *c == 200 || *c == 429),
        "{answers:?}"
    );
    let names: std::collections::BTreeSet<String> = ok
        .iter()
        .map(|b| {
            serde_json::from_str::<serde_json::Value>(b).expect("json")["snapName"]
                .as_str()
                .expect("name")
                .to_string()
        })
        .collect();
    assert_eq!(
        names.len(),
        1,
        "every caller got the same snapshot: {names:?}"
    );
    assert_eq!(fulls(), before + 1, "one snapshot for 50 requests");
    let out = std::process::Command::new("curl")
        .args(["-sS", "-i", "--max-time", "10"])
        .arg(format!("http://127.0.0.1:{port}/snapshot/full"))
        .output()
        .expect("curl");
    let out = String::from_utf8_lossy(&out.stdout).to_lowercase();
    assert!(
        out.starts_with("http/1.1 429") && out.contains("retry-after: "),
        "{out}"
    );
    assert_eq!(fulls(), before + 1);
    // a final snapshot (before a planned shutdown) is not put off by the interval; asked for
    // again with etcd unchanged, the stored one is returned instead of a second copy
    etcd.put("before-shutdown", b"1");
    let final_name = |path: &str| -> String {
        let (code, body) = http_body(port, "POST", path).unwrap_or((0, String::new()));
        assert_eq!(code, 200, "{path}: {body}");
        let v: serde_json::Value = serde_json::from_str(&body).expect("json");
        assert_eq!(v["isFinal"], true, "{v}");
        v["snapName"].as_str().expect("name").to_string()
    };
    let first = final_name("/snapshot/full?final=true");
    assert_eq!(fulls(), before + 2);
    let again = final_name("/snapshot/full?final=true");
    assert_eq!(first, again, "the same final snapshot");
    assert_eq!(fulls(), before + 2, "no second final copy");
    etcd.put("after-final", b"2");
    let later = final_name("/snapshot/full?final=true");
    assert_ne!(first, later, "a new revision: a new final snapshot");
    assert_eq!(fulls(), before + 3);
}

/// Runs openssl, asserting success.
fn openssl(dir: &Path, args: &[&str]) {
    let out = std::process::Command::new("openssl")
        .current_dir(dir)
        .args(args)
        .output()
        .expect("openssl");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A CA (`<name>-ca.crt/.key`) and a client certificate it signed (`<name>.crt/.key`).
fn client_ca_and_cert(dir: &Path, name: &str) -> (PathBuf, PathBuf, PathBuf) {
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    let (ca, ca_key) = (format!("{name}-ca.crt"), format!("{name}-ca.key"));
    let mut a = vec!["req", "-x509"];
    a.extend(ec);
    a.extend([
        "-days",
        "1",
        "-subj",
        "/CN=test-client-ca",
        "-keyout",
        &ca_key,
        "-out",
        &ca,
    ]);
    openssl(dir, &a);
    let (key, csr, crt) = (
        format!("{name}.key"),
        format!("{name}.csr"),
        format!("{name}.crt"),
    );
    let mut a = vec!["req"];
    a.extend(ec);
    a.extend(["-subj", "/CN=operator", "-keyout", &key, "-out", &csr]);
    openssl(dir, &a);
    let ext = dir.join(format!("{name}.ext"));
    std::fs::write(
        &ext,
        "basicConstraints=CA:FALSE\nkeyUsage=digitalSignature\nextendedKeyUsage=clientAuth\n",
    )
    .unwrap();
    let ext = ext.display().to_string();
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            &ca,
            "-CAkey",
            &ca_key,
            "-CAcreateserial",
            "-days",
            "1",
            "-extfile",
            &ext,
            "-out",
            &crt,
        ],
    );
    (dir.join(ca), dir.join(crt), dir.join(key))
}

/// Replaces `to` by `from`'s content in one rename (as a Secret update or cert-manager does).
fn replace_file(from: &Path, to: &Path) {
    let tmp = to.with_extension("new");
    std::fs::copy(from, &tmp).unwrap();
    std::fs::rename(&tmp, to).unwrap();
}

/// `--server-token-file` and `--server-client-ca`: every endpoint but the open paths refuses a
/// caller without credentials (401) or with a wrong token (403), before anything starts; a
/// certificate from another CA fails the handshake; either credential is enough; refusals are
/// counted; the token file and the server certificate are re-read when they change; no token
/// reaches the log.
#[test]
fn only_authenticated_callers_reach_the_api() {
    let etcd = Etcd::start(EtcdVersion::V35);
    etcd.fill(20, 100);
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let bk = dir.join("bk");
    let (cert, key) = self_signed(dir);
    let (client_ca, client_crt, client_key) = client_ca_and_cert(dir, "good");
    let (_, rogue_crt, rogue_key) = client_ca_and_cert(dir, "rogue");
    let token_file = dir.join("token");
    std::fs::write(&token_file, "first-secret-token\n").unwrap();
    let paths: Vec<String> = [&cert, &key, &client_ca, &token_file]
        .iter()
        .map(|p| p.display().to_string())
        .collect();
    let sc = Sidecar::start(
        &etcd.endpoint,
        &local_store(&bk),
        &[
            "--server-cert",
            &paths[0],
            "--server-key",
            &paths[1],
            "--server-client-ca",
            &paths[2],
            "--server-token-file",
            &paths[3],
        ],
        dir.join("sidecar.log"),
    );
    let port = sc.port;
    // (code, headers and body) of an HTTPS call; code 0 when no answer (handshake refused)
    let call = |method: &str, path: &str, extra: &[&str], ca: &Path| -> (u16, String) {
        let o = std::process::Command::new("curl")
            .args(["-sS", "-i", "--max-time", "30", "-X", method, "--cacert"])
            .arg(ca)
            .args(extra)
            .arg(format!("https://127.0.0.1:{port}{path}"))
            .output()
            .expect("curl");
        let out = String::from_utf8_lossy(&o.stdout).to_string();
        let code = out
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or(0);
        (code, out)
    };
    let token = |t: &str| format!("Authorization: Bearer {t}");
    let t = Instant::now();
    while call("GET", "/healthz", &[], &cert).0 != 200 {
        assert!(
            t.elapsed() < Duration::from_secs(30),
            "not healthy:\n{}",
            sc.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let fulls = || {
        stored_in(&bk)
            .iter()
            .filter(|s| s.kind == Kind::Full)
            .count()
    };
    sc.wait_until("the first full", 30, &|| fulls() == 1);
    let good = token("first-secret-token");
    let (ccrt, ckey) = (
        client_crt.display().to_string(),
        client_key.display().to_string(),
    );
    let (rcrt, rkey) = (
        rogue_crt.display().to_string(),
        rogue_key.display().to_string(),
    );
    // open paths need nothing
    assert_eq!(call("GET", "/metrics", &[], &cert).0, 200);
    let endpoints = [
        ("GET", "/snapshot/full"),
        ("POST", "/snapshot/full?final=true"),
        ("GET", "/snapshot/delta"),
        ("POST", "/snapshot/delta"),
        ("GET", "/snapshot/latest"),
        ("GET", "/config"),
        ("GET", "/initialization/start"),
        ("POST", "/initialization/start?mode=full"),
        ("GET", "/initialization/status"),
        ("GET", "/no/such/path"),
        ("DELETE", "/snapshot/full"),
    ];
    let mut refused = 0;
    for (m, p) in endpoints {
        let (code, out) = call(m, p, &[], &cert);
        assert_eq!(code, 401, "{m} {p} without credentials: {out}");
        assert!(
            out.to_lowercase().contains("www-authenticate: bearer"),
            "{out}"
        );
        let (code, out) = call(m, p, &["-H", &token("guessed")], &cert);
        assert_eq!(code, 403, "{m} {p} with a wrong token: {out}");
        assert!(
            !out.contains("guessed"),
            "the reason never repeats the token: {out}"
        );
        let (code, out) = call(m, p, &["--cert", &rcrt, "--key", &rkey], &cert);
        assert_eq!(code, 0, "{m} {p} with another CA's certificate: {out}");
        refused += 2;
    }
    // nothing was started by the refused calls
    assert_eq!(fulls(), 1, "no snapshot was taken by a refused call");
    let (code, out) = call("GET", "/initialization/status", &["-H", &good], &cert);
    assert_eq!(code, 200, "{out}");
    assert!(out.ends_with("New"), "no initialization was started: {out}");
    let metrics = call("GET", "/metrics", &[], &cert).1;
    let count = |reason: &str| -> u64 {
        metrics
            .lines()
            .find(|l| {
                l.starts_with(&format!(
                    "etcdbr_api_requests_refused_total{{reason=\"{reason}\"}}"
                ))
            })
            .and_then(|l| l.split_whitespace().last())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    assert_eq!(
        count("no_credentials") + count("wrong_token"),
        refused,
        "{metrics}"
    );
    // either credential is enough: the token, or a client certificate of the CA
    let (code, out) = call("GET", "/snapshot/latest", &["-H", &good], &cert);
    assert_eq!(code, 200, "{out}");
    let (code, out) = call(
        "GET",
        "/snapshot/latest",
        &["--cert", &ccrt, "--key", &ckey],
        &cert,
    );
    assert_eq!(code, 200, "{out}");
    // a new revision: a full at the first one's revision in the same second has its very name
    etcd.put("before-the-requested-full", b"1");
    let (code, out) = call("POST", "/snapshot/full", &["-H", &good], &cert);
    assert_eq!(code, 200, "{out}");
    assert_eq!(fulls(), 2);

    // token rotation: the new token works and the old one is refused, without a restart
    let next = dir.join("token.next");
    std::fs::write(&next, "second-secret-token\n").unwrap();
    replace_file(&next, &token_file);
    let new = token("second-secret-token");
    let t = Instant::now();
    while call("GET", "/snapshot/latest", &["-H", &new], &cert).0 != 200 {
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "the new token is not taken:\n{}",
            sc.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(
        call("GET", "/snapshot/latest", &["-H", &good], &cert).0,
        403
    );

    // certificate rotation: new connections get the new certificate
    let renewed = dir.join("renewed");
    std::fs::create_dir(&renewed).unwrap();
    let (cert2, key2) = self_signed(&renewed);
    let old_cert = dir.join("old.crt");
    std::fs::copy(&cert, &old_cert).unwrap();
    replace_file(&key2, &key);
    replace_file(&cert2, &cert);
    let t = Instant::now();
    while call("GET", "/healthz", &[], &cert2).0 != 200 {
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "the renewed certificate is not served:\n{}",
            sc.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(
        call("GET", "/healthz", &[], &old_cert).0,
        0,
        "the old certificate is no longer served"
    );
    let (code, out) = call("GET", "/initialization/status", &["-H", &new], &cert2);
    assert_eq!(code, 200, "{out}");
    let log = sc.log();
    assert!(log.contains("reloaded"), "{log}");
    assert!(
        !log.contains("secret-token"),
        "a token reached the log:\n{log}"
    );
}

/// The delta watch is read while full snapshots stream (a 40 MiB db under a write load, fulls
/// on demand): the events received meanwhile continue the chain right after each full's
/// revision, with no gap and no delta straddling a full, and the log says they were held.
#[test]
fn the_watch_keeps_reading_while_a_full_streams() {
    let etcd = Etcd::start(EtcdVersion::V35);
    etcd.fill(4000, 10_000);
    let tmp = tempfile::tempdir().unwrap();
    let bk = tmp.path().join("bk");
    let sc = Sidecar::start(
        &etcd.endpoint,
        &local_store(&bk),
        &[],
        tmp.path().join("sidecar.log"),
    );
    sc.wait_until("healthy", 60, &|| sc.get("/healthz").0 == 200);
    let (stop, w) = writers(vec![etcd.endpoint.clone()], 3);
    let mut fulls = Vec::new();
    for _ in 0..4 {
        std::thread::sleep(Duration::from_millis(1500));
        let (code, body) = sc.get("/snapshot/full");
        assert_eq!(code, 200, "{body}");
        fulls.push(body);
    }
    std::thread::sleep(Duration::from_secs(2));
    stop_writers(stop, w);
    let end = etcd.revision();
    sc.wait_until("the chain to reach the end of the load", 30, &|| {
        stored_in(&bk)
            .last()
            .is_some_and(|s| s.last_revision >= end)
    });
    let all = stored_in(&bk);
    // every delta continues the snapshot before it (a full or a delta): none straddles a full
    check_chain(&all, &read_local(&bk));
    let last_full = all
        .iter()
        .rfind(|s| s.kind == Kind::Full)
        .expect("a full")
        .last_revision;
    let after: Vec<&Snapshot> = all
        .iter()
        .filter(|s| s.kind == Kind::Incr && s.last_revision > last_full)
        .collect();
    assert!(
        after
            .first()
            .is_some_and(|d| d.start_revision == last_full + 1),
        "the deltas after the last full start right after it: {all:?}"
    );
    let log = sc.log();
    assert!(
        log.contains("events received while the full snapshot streamed"),
        "the watch was read during the fulls:\n{log}"
    );
}
