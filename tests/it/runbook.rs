//! Runs the code blocks of docs/runbook.md as written, in order, each group as one bash script
//! (`set -euo pipefail`): the `sh` blocks against a local etcd 3.5.1 and an `etcdbrctl server`
//! sidecar with a Local store, the `sh cluster` blocks against a local 3-member etcd 3.5.1
//! cluster, with the runbook's variables set and `stop_etcd`/`start_etcd` on PATH. A failing
//! command fails the test with the block it is in.

use crate::common::*;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::{Duration, Instant};

const V: EtcdVersion = EtcdVersion::V35;

/// The code blocks fenced with exactly this info string (`sh`, `sh cluster`).
fn blocks_of(md: &str, fence: &str) -> Vec<String> {
    let open = format!("```{fence}");
    let mut blocks = Vec::new();
    let mut cur: Option<String> = None;
    for line in md.lines() {
        match (&mut cur, line.trim_end()) {
            (None, l) if l == open => cur = Some(String::new()),
            (Some(b), "```") => {
                blocks.push(std::mem::take(b));
                cur = None;
            }
            (Some(b), l) => {
                b.push_str(l);
                b.push('\n');
            }
            (None, _) => {}
        }
    }
    blocks
}

fn write_exe(path: &Path, text: &str) {
    std::fs::write(path, text).expect("write");
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
}

/// `start_etcd` and `stop_etcd` in `bin`: a detached etcd with `args`, its pid in `pidfile`;
/// started = the shell command `ready` succeeds.
fn helpers(bin: &Path, etcd: &Path, args: &str, ready: &str, pidfile: &Path, log: &Path) {
    std::fs::create_dir_all(bin).expect("bin");
    write_exe(
        &bin.join("start_etcd"),
        &format!(
            "#!/bin/sh\nset -e\nsetsid {etcd} {args} >>{log} 2>&1 </dev/null &\necho $! >{pf}\n\
             for i in $(seq 1 150); do {ready} >/dev/null 2>&1 && exit 0; sleep 0.2; done\n\
             echo 'etcd did not start' >&2; exit 1\n",
            etcd = etcd.display(),
            log = log.display(),
            pf = pidfile.display(),
        ),
    );
    write_exe(
        &bin.join("stop_etcd"),
        &format!(
            "#!/bin/sh\n[ -f {pf} ] || exit 0\npid=$(cat {pf})\nkill -TERM \"$pid\" 2>/dev/null || true\n\
             for i in $(seq 1 100); do kill -0 \"$pid\" 2>/dev/null || break; sleep 0.1; done\nrm -f {pf}\n",
            pf = pidfile.display()
        ),
    );
}

/// Runs `blocks` as one bash script with `env`; returns (stdout, stderr) or fails the test,
/// showing `log`.
fn run_blocks(
    blocks: &[String],
    path: &str,
    env: &[(&str, String)],
    log: &Path,
) -> (String, String) {
    let mut script = String::from("set -euo pipefail\n");
    for (i, b) in blocks.iter().enumerate() {
        let first = b.lines().next().unwrap_or("");
        script.push_str(&format!(
            "echo '### runbook block {}: {}' >&2\n",
            i + 1,
            first.replace('\'', "")
        ));
        script.push_str(b);
    }
    let mut cmd = clean_cmd(Path::new("bash"));
    cmd.args(["-c", &script])
        .env("PATH", path)
        .env("ETCDCTL_API", "3");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("bash");
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout).to_string(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    );
    assert!(
        out.status.success(),
        "the runbook failed:\n--- stdout\n{stdout}\n--- stderr\n{stderr}\n--- log\n{}",
        std::fs::read_to_string(log).unwrap_or_default()
    );
    assert_eq!(stderr.matches("### runbook block").count(), blocks.len());
    (stdout, stderr)
}

/// Stops the runbook's etcd (the `stop_etcd` on this PATH) when the test ends, however it ends.
struct Guard(String);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = std::process::Command::new("bash")
            .args(["-c", "stop_etcd"])
            .env("PATH", &self.0)
            .status();
    }
}

#[test]
fn every_runbook_command_runs_as_written() {
    let md = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/runbook.md"))
        .expect("docs/runbook.md");
    let blocks = blocks_of(&md, "sh");
    assert!(blocks.len() >= 10, "{} blocks", blocks.len());

    let tmp = tempfile::tempdir().expect("tmp");
    let (c, p, sp) = (free_port(), free_port(), free_port());
    let endpoints = format!("http://127.0.0.1:{c}");
    let peer = format!("http://127.0.0.1:{p}");
    let data = tmp.path().join("data/new.etcd");
    let store = tmp.path().join("backups");
    let work = tmp.path().join("work");
    let bin = tmp.path().join("bin");
    std::fs::create_dir_all(&work).expect("work");
    let etcd = V.etcd();
    let tools = etcd.parent().expect("etcd dir");
    let etcdbrctl_bin = Path::new(env!("CARGO_BIN_EXE_etcdbrctl"));
    let pidfile = tmp.path().join("etcd.pid");
    helpers(
        &bin,
        &etcd,
        &format!(
            "--name runbook --data-dir {} --listen-client-urls {endpoints} --advertise-client-urls {endpoints} \
             --listen-peer-urls {peer} --initial-advertise-peer-urls {peer} --initial-cluster runbook={peer}",
            data.display()
        ),
        &format!("etcdctl --endpoints {endpoints} --command-timeout=1s endpoint health"),
        &pidfile,
        &tmp.path().join("etcd.log"),
    );
    // PATH without the helpers, for the cluster phase's own
    let base_path = format!(
        "{}:{}:{}",
        etcdbrctl_bin.parent().expect("bin dir").display(),
        tools.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let path = format!("{}:{base_path}", bin.display());
    let sh = |script: &str| {
        clean_cmd(Path::new("bash"))
            .args(["-c", script])
            .env("PATH", &path)
            .env("ETCDCTL_API", "3")
            .output()
            .expect("bash")
    };
    let started = sh("start_etcd");
    assert!(
        started.status.success(),
        "{}",
        String::from_utf8_lossy(&started.stderr)
    );
    let _stop = Guard(path.clone());
    // the data the runbook looks for
    let seed = sh(&format!(
        "etcdctl --endpoints {endpoints} put /runbook/a 1 >/dev/null && etcdctl --endpoints {endpoints} put /runbook/b 2 >/dev/null"
    ));
    assert!(
        seed.status.success(),
        "{}",
        String::from_utf8_lossy(&seed.stderr)
    );

    let sidecar_log = tmp.path().join("sidecar.log");
    let log = std::fs::File::create(&sidecar_log).expect("log");
    // the chart's sidecar requires its API token: the runbook passes it as written
    let token = tmp.path().join("api-token");
    std::fs::write(&token, "runbook-token\n").expect("token");
    let _sidecar = Proc(
        etcdbrctl()
            .args([
                "server",
                "--endpoints",
                &endpoints,
                "--server-host",
                "127.0.0.1",
            ])
            .args([
                "--server-port",
                &sp.to_string(),
                "--reelection-period",
                "2s",
            ])
            .args(["--delta-snapshot-period", "1s", "--schedule", "0 0 1 1 *"])
            .arg("--store-container")
            .arg(&store)
            .arg("--data-dir")
            .arg(&data)
            .args([
                "--name",
                "runbook",
                "--initial-cluster",
                &format!("runbook={peer}"),
            ])
            .args(["--initial-advertise-peer-urls", &peer])
            .arg("--restoration-temp-snapshots-dir")
            .arg(tmp.path().join("rtmp"))
            .arg("--server-token-file")
            .arg(&token)
            .env("PATH", &path)
            .env("HOME", &work)
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("sidecar"),
    );
    // the sidecar leads (and has taken its first full) before the runbook starts
    let t = Instant::now();
    while !matches!(http_body(sp, "GET", "/healthz"), Ok((200, _))) {
        assert!(
            t.elapsed() < Duration::from_secs(60),
            "the sidecar did not become healthy: {}",
            std::fs::read_to_string(&sidecar_log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let (stdout, stderr) = run_blocks(
        &blocks,
        &path,
        &[
            ("ENDPOINTS", endpoints.clone()),
            ("SIDECAR", format!("http://127.0.0.1:{sp}")),
            ("TOKEN", token.display().to_string()),
            ("STORE", store.display().to_string()),
            ("DATA_DIR", data.display().to_string()),
            ("NAME", "runbook".into()),
            ("PEER_URL", peer.clone()),
            ("WORK", work.display().to_string()),
        ],
        &sidecar_log,
    );
    // outcomes: the drill brought the key back; the bumped restore is a billion ahead
    assert!(stdout.contains("initialization: Successful"), "{stdout}");
    assert!(stdout.contains("/runbook/a\n1"), "{stdout}");
    assert!(stderr.contains("effective revision: 10000000"), "{stderr}");
    eprintln!("{} runbook blocks ran", blocks.len());

    // the `sh cluster` blocks: a 3-member cluster, this member is m2
    let cblocks = blocks_of(&md, "sh cluster");
    assert!(cblocks.len() >= 2);
    let cluster = EtcdCluster::start(V);
    let seed = cluster.etcdctl_raw(&cluster.endpoints, &["put", "/runbook/a", "1"]);
    assert!(seed.status.success());
    let cbin = tmp.path().join("cluster-bin");
    let cpid = tmp.path().join("m2.pid");
    let m2 = cluster.members[2].as_ref().expect("m2").id();
    std::fs::write(&cpid, m2.to_string()).expect("pid");
    let (ep2, peer2) = (
        cluster.endpoints[2].clone(),
        format!("http://127.0.0.1:{}", cluster.peers[2]),
    );
    let m2_data = cluster.dir.path().join("m2");
    helpers(
        &cbin,
        &etcd,
        &format!(
            "--name m2 --data-dir {} --listen-client-urls {ep2} --advertise-client-urls {ep2} \
             --listen-peer-urls {peer2} --initial-advertise-peer-urls {peer2} \
             --initial-cluster {} --initial-cluster-state existing",
            m2_data.display(),
            cluster.initial_cluster
        ),
        // a learner refuses linearizable reads (endpoint health): ask its status
        &format!("etcdctl --endpoints {ep2} --command-timeout=1s endpoint status"),
        &cpid,
        &tmp.path().join("m2.log"),
    );
    let cpath = format!("{}:{base_path}", cbin.display());
    let _stop_m2 = Guard(cpath.clone());
    let (stdout, _) = run_blocks(
        &cblocks,
        &cpath,
        &[
            ("ENDPOINTS", ep2),
            ("DATA_DIR", m2_data.display().to_string()),
            ("NAME", "m2".into()),
            ("PEER_URL", peer2),
            ("CLUSTER", cluster.initial_cluster.clone()),
            ("OTHERS", cluster.endpoints[..2].join(",")),
            ("WORK", work.display().to_string()),
        ],
        &tmp.path().join("m2.log"),
    );
    assert!(stdout.contains("promoted"), "{stdout}");
    assert!(stdout.ends_with("/runbook/a\n1\n"), "{stdout}");
    eprintln!("{} cluster blocks ran", cblocks.len());
}
