//! The manual-restoration drill of the Gardener guide (seed 003), scripted: etcd 3.5.1 started
//! by `scripts/etcd-bootstrap.sh` next to `etcdbrctl server` (deltas every second) under a write
//! load; `rm -rf <data-dir>/member`; etcd dies; the script (run again, as the kubelet would)
//! drives the initialization; etcd comes back with every acknowledged key up to the last stored
//! delta, at its revision, and none after it. Three cycles in a row on a Local store, one on S3.

use crate::common::*;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const V: EtcdVersion = EtcdVersion::V35;

struct Node {
    dir: PathBuf,
    data: PathBuf,
    client: u16,
    peer: u16,
    sidecar_port: u16,
}

impl Node {
    fn new(dir: &Path) -> Node {
        Node {
            dir: dir.to_path_buf(),
            data: dir.join("data/new.etcd"),
            client: free_port(),
            peer: free_port(),
            sidecar_port: free_port(),
        }
    }

    fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.client)
    }

    fn write_config(&self) -> PathBuf {
        let (c, p) = (self.client, self.peer);
        let conf = format!(
            "name: t\ndata-dir: {}\nlisten-client-urls: http://127.0.0.1:{c}\n\
             advertise-client-urls:\n  t: [http://127.0.0.1:{c}]\n\
             listen-peer-urls: http://127.0.0.1:{p}\n\
             initial-advertise-peer-urls:\n  t: [http://127.0.0.1:{p}]\n\
             initial-cluster: t=http://127.0.0.1:{p}\ninitial-cluster-state: new\n\
             initial-cluster-token: drill\nlisten-metrics-urls: ''\n",
            self.data.display()
        );
        let f = self.dir.join("etcd.conf.yaml");
        std::fs::write(&f, conf).expect("write config");
        f
    }

    /// The bootstrap script, as the etcd container runs it.
    fn bootstrap(&self) -> Proc {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("bootstrap.log"))
            .expect("log");
        Proc(
            std::process::Command::new("sh")
                .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/etcd-bootstrap.sh"))
                .env(
                    "BACKUP_URL",
                    format!("http://127.0.0.1:{}", self.sidecar_port),
                )
                .env("ETCD_BIN", V.etcd())
                .env("CONFIG_FILE", self.dir.join("etcd.run.yaml"))
                .env("MARKER", self.dir.join("validation_marker"))
                .env("MAX_WAIT", "180")
                .env_remove("ETCD_NAME")
                .stdout(log.try_clone().expect("log"))
                .stderr(log)
                .spawn()
                .expect("bootstrap"),
        )
    }

    fn wait_healthy(&self) {
        let t = Instant::now();
        loop {
            let out = clean_cmd(&V.etcdctl())
                .args(["--endpoints", &self.endpoint(), "endpoint", "health"])
                .args(["--command-timeout=2s"])
                .output()
                .expect("etcdctl");
            if out.status.success() {
                return;
            }
            assert!(
                t.elapsed() < Duration::from_secs(120),
                "etcd did not come back; bootstrap log:\n{}",
                std::fs::read_to_string(self.dir.join("bootstrap.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

/// Puts `/drill/<n>` one at a time until `stop`; returns key -> revision of each acknowledged put.
fn acked_writer(
    ep: String,
    stop: Arc<AtomicBool>,
    first: u64,
) -> std::thread::JoinHandle<BTreeMap<String, i64>> {
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("rt");
        rt.block_on(async {
            let mut acked = BTreeMap::new();
            let opts = etcd_client::ConnectOptions::new()
                .with_connect_timeout(Duration::from_secs(1))
                .with_timeout(Duration::from_secs(2));
            let Ok(mut c) = etcd_client::Client::connect([ep], Some(opts)).await else {
                return acked;
            };
            let t = Instant::now();
            let mut n = first;
            while !stop.load(Ordering::Relaxed) && t.elapsed() < Duration::from_secs(60) {
                let k = format!("/drill/{n:08}");
                if let Ok(r) = c.put(k.clone(), n.to_string(), None).await {
                    acked.insert(k, r.header().map(|h| h.revision()).unwrap_or(0));
                }
                n += 1;
            }
            acked
        })
    })
}

/// Every `/drill/` key with its mod revision.
fn drill_keys(ep: &str) -> BTreeMap<String, i64> {
    let out = clean_cmd(&V.etcdctl())
        .args([
            "--endpoints",
            ep,
            "get",
            "/drill/",
            "--prefix",
            "--keys-only",
            "-w",
            "json",
        ])
        .output()
        .expect("etcdctl");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    use base64::Engine;
    v["kvs"]
        .as_array()
        .map(|a| a.as_slice())
        .unwrap_or(&[])
        .iter()
        .map(|kv| {
            let k = base64::engine::general_purpose::STANDARD
                .decode(kv["key"].as_str().expect("key"))
                .expect("b64");
            (
                String::from_utf8(k).expect("utf8"),
                kv["mod_revision"].as_i64().expect("rev"),
            )
        })
        .collect()
}

/// The highest revision the store's snapshots cover.
fn stored_revision(list: &[String]) -> i64 {
    list.iter()
        .filter_map(|k| etcdbr::format::layout::Snapshot::parse_key(k).ok())
        .map(|s| s.last_revision)
        .max()
        .unwrap_or(0)
}

/// `etcdbrctl server` next to the node's etcd (deltas every second).
fn start_sidecar(
    node: &Node,
    tmp: &Path,
    store_args: Vec<String>,
    env: Vec<(String, String)>,
) -> Proc {
    let conf = node.write_config();
    let home = tmp.join("home");
    std::fs::create_dir_all(&home).expect("home");
    let log = std::fs::File::create(tmp.join("sidecar.log")).expect("log");
    let mut sidecar = etcdbrctl();
    sidecar
        .args(["server", "--endpoints", &node.endpoint()])
        .args([
            "--server-host",
            "127.0.0.1",
            "--server-port",
            &node.sidecar_port.to_string(),
        ])
        .args(["--schedule", "0 0 1 1 *", "--delta-snapshot-period", "1s"])
        .args([
            "--reelection-period",
            "2s",
            "--garbage-collection-period",
            "0s",
        ])
        .args(store_args)
        .arg("--data-dir")
        .arg(&node.data)
        .args(["--name", "t"])
        .args([
            "--initial-cluster",
            &format!("t=http://127.0.0.1:{}", node.peer),
        ])
        .args([
            "--initial-advertise-peer-urls",
            &format!("http://127.0.0.1:{}", node.peer),
        ])
        .args(["--initial-cluster-token", "drill"])
        .arg("--etcd-config")
        .arg(&conf)
        .arg("--restoration-temp-snapshots-dir")
        .arg(tmp.join("rtmp"))
        .arg("--etcd-binary")
        .arg(V.etcd())
        .arg("--etcd-restore-tool")
        .arg(V.status_tool().0)
        .env("HOME", &home)
        .envs(env)
        .stdout(log.try_clone().expect("log"))
        .stderr(log);
    Proc(sidecar.spawn().expect("sidecar"))
}

fn drill(
    store_args: Vec<String>,
    env: Vec<(String, String)>,
    list: &dyn Fn() -> Vec<String>,
    cycles: usize,
) {
    let tmp = tempfile::tempdir().expect("tmp");
    let node = Node::new(tmp.path());
    let _sidecar = start_sidecar(&node, tmp.path(), store_args, env);
    let sidecar_log = tmp.path().join("sidecar.log");

    // first start: no data, no backup: a fresh cluster
    let mut script = node.bootstrap();
    std::thread::sleep(Duration::from_secs(3));
    if http_body(node.sidecar_port, "GET", "/initialization/status").is_err() {
        panic!(
            "the sidecar does not answer; its log:\n{}",
            std::fs::read_to_string(&sidecar_log).unwrap_or_default()
        );
    }
    node.wait_healthy();
    let mut next_key = 0u64;
    let mut expected: BTreeMap<String, i64> = BTreeMap::new();
    for cycle in 0..cycles {
        let stop = Arc::new(AtomicBool::new(false));
        let w = acked_writer(node.endpoint(), stop.clone(), next_key);
        std::thread::sleep(Duration::from_secs(4));
        // the operator's step 1: invalidate the data directory (etcd keeps serving from its
        // open files for a moment, and the sidecar keeps recording what it serves)
        std::fs::remove_dir_all(node.data.join("member")).expect("rm member");
        std::thread::sleep(Duration::from_millis(1500));
        // etcd dies (here: the crash is forced, as a liveness probe would)
        let pid = script.0.id();
        let children =
            std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap_or_default();
        for child in children.split_whitespace() {
            let _ = std::process::Command::new("kill")
                .args(["-KILL", child])
                .status();
        }
        let _ = script.0.wait();
        stop.store(true, Ordering::Relaxed);
        let acked = w.join().expect("writer");
        assert!(
            acked.len() > 50,
            "cycle {cycle}: only {} writes",
            acked.len()
        );
        next_key += 1_000_000;
        // give the sidecar a moment: nothing more can be stored once etcd is gone
        std::thread::sleep(Duration::from_secs(2));
        let last = stored_revision(&list());
        assert!(last > 0);
        let mut lost = 0;
        for (k, r) in acked {
            if r <= last {
                expected.insert(k, r);
            } else {
                lost += 1;
            }
        }
        // the kubelet restarts the container: the script runs again (full validation: the
        // marker says etcd was killed), initialization restores, etcd starts
        script = node.bootstrap();
        node.wait_healthy();
        let got = drill_keys(&node.endpoint());
        let missing: Vec<_> = expected
            .iter()
            .filter(|(k, _)| !got.contains_key(*k))
            .take(5)
            .collect();
        assert!(
            missing.is_empty(),
            "cycle {cycle}: missing after restore: {missing:?}"
        );
        let extra: Vec<_> = got
            .iter()
            .filter(|(k, _)| !expected.contains_key(*k))
            .take(5)
            .collect();
        assert!(
            extra.is_empty(),
            "cycle {cycle}: keys written after the last delta ({last}) came back: {extra:?}"
        );
        assert_eq!(got, expected, "cycle {cycle}: revisions differ");
        let log = std::fs::read_to_string(node.dir.join("bootstrap.log")).unwrap_or_default();
        assert!(log.contains("validation mode: full"), "{log}");
        eprintln!(
            "cycle {cycle}: {} keys back up to revision {last}; {lost} acknowledged after the last delta, not back",
            expected.len()
        );
    }
    drop(script);
}

#[test]
fn manual_restoration_drill_local_three_cycles() {
    let bk = tempfile::tempdir().expect("bk");
    let root = bk.path().to_path_buf();
    let list = move || -> Vec<String> {
        let v2 = root.join("v2");
        files_in(&v2)
            .into_iter()
            .map(|f| format!("v2/{f}"))
            .collect()
    };
    drill(
        vec!["--store-container".into(), bk.path().display().to_string()],
        vec![],
        &list,
        3,
    );
}

#[test]
fn manual_restoration_drill_s3() {
    let moto = Moto::start("drill");
    let store = moto.store();
    let list = move || -> Vec<String> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("rt");
        rt.block_on(async {
            use futures::StreamExt;
            store
                .list(None)
                .filter_map(|m| async move { m.ok().map(|m| m.location.to_string()) })
                .collect::<Vec<_>>()
                .await
        })
        .into_iter()
        .map(|k| k.trim_start_matches("etcd/").to_string())
        .collect()
    };
    drill(
        vec![
            "--storage-provider".into(),
            "S3".into(),
            "--store-container".into(),
            "drill".into(),
            "--store-endpoint-override".into(),
            moto.endpoint.clone(),
            "--store-prefix".into(),
            "etcd".into(),
        ],
        vec![(
            "AWS_APPLICATION_CREDENTIALS_JSON".into(),
            moto.credentials_file().display().to_string(),
        )],
        &list,
        1,
    );
}

/// A client polling `/initialization/status` as fast as it can (etcdbrctl reset a final state
/// when read, so such a client took `Successful` from the bootstrap script) does not keep etcd
/// from starting.
#[test]
fn a_status_poller_does_not_take_the_success_from_the_script() {
    let tmp = tempfile::tempdir().expect("tmp");
    let node = Node::new(tmp.path());
    let bk = tmp.path().join("bk");
    let _sidecar = start_sidecar(
        &node,
        tmp.path(),
        vec![
            "--storage-provider".into(),
            "Local".into(),
            "--store-container".into(),
            bk.display().to_string(),
        ],
        vec![],
    );
    let stop = Arc::new(AtomicBool::new(false));
    let thief = {
        let stop = stop.clone();
        let port = node.sidecar_port;
        std::thread::spawn(move || {
            let mut seen = 0;
            let t = Instant::now();
            while !stop.load(Ordering::Relaxed) && t.elapsed() < Duration::from_secs(120) {
                if let Ok((200, body)) = http_body(port, "GET", "/initialization/status") {
                    seen += usize::from(body == "Successful");
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            seen
        })
    };
    let _script = node.bootstrap();
    node.wait_healthy();
    stop.store(true, Ordering::Relaxed);
    let seen = thief.join().expect("thief");
    assert!(seen > 0, "the poller saw the success too");
    let log = std::fs::read_to_string(node.dir.join("bootstrap.log")).unwrap_or_default();
    assert!(log.contains("initialization successful"), "{log}");
}
