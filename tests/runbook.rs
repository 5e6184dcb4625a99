//! Runs every `sh` block of docs/runbook.md, in order, as one bash script (`set -euo pipefail`)
//! against a local etcd 3.5.1 and an `etcdbrctl server` sidecar with a Local store, with the
//! runbook's variables set and `stop_etcd`/`start_etcd` on PATH. The runbook's commands run as
//! written; a failing command fails the test with the block it is in.

mod common;

use common::*;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::{Duration, Instant};

const V: EtcdVersion = EtcdVersion::V35;

fn sh_blocks(md: &str) -> Vec<String> {
    let mut blocks = Vec::new();
    let mut cur: Option<String> = None;
    for line in md.lines() {
        match (&mut cur, line.trim_end()) {
            (None, "```sh") => cur = Some(String::new()),
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

#[test]
fn every_runbook_command_runs_as_written() {
    let md = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/runbook.md"))
        .expect("docs/runbook.md");
    let blocks = sh_blocks(&md);
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
    std::fs::create_dir_all(&bin).expect("bin");
    let etcd = V.etcd();
    let tools = etcd.parent().expect("etcd dir");
    let etcdbrctl_bin = Path::new(env!("CARGO_BIN_EXE_etcdbrctl"));
    // how etcd runs here: a detached process with a pid file
    let pidfile = tmp.path().join("etcd.pid");
    write_exe(
        &bin.join("start_etcd"),
        &format!(
            "#!/bin/sh\nset -e\nsetsid {etcd} --name runbook --data-dir {data} --listen-client-urls {endpoints} \
             --advertise-client-urls {endpoints} --listen-peer-urls {peer} --initial-advertise-peer-urls {peer} \
             --initial-cluster runbook={peer} >>{log} 2>&1 </dev/null &\necho $! >{pidfile}\n\
             for i in $(seq 1 100); do etcdctl --endpoints {endpoints} --command-timeout=1s endpoint health >/dev/null 2>&1 && exit 0; sleep 0.2; done\n\
             echo 'etcd did not start' >&2; exit 1\n",
            etcd = etcd.display(),
            data = data.display(),
            log = tmp.path().join("etcd.log").display(),
            pidfile = pidfile.display(),
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
    let path = format!(
        "{}:{}:{}:{}",
        bin.display(),
        etcdbrctl_bin.parent().expect("bin dir").display(),
        tools.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let run = |script: &str| {
        clean_cmd(Path::new("bash"))
            .args(["-c", script])
            .env("PATH", &path)
            .env("ETCDCTL_API", "3")
            .output()
            .expect("bash")
    };
    let started = run("start_etcd");
    assert!(
        started.status.success(),
        "{}",
        String::from_utf8_lossy(&started.stderr)
    );
    let _stop = Guard(path.clone());
    // the data the runbook looks for
    let seed = run(&format!(
        "etcdctl --endpoints {endpoints} put /runbook/a 1 >/dev/null && etcdctl --endpoints {endpoints} put /runbook/b 2 >/dev/null"
    ));
    assert!(
        seed.status.success(),
        "{}",
        String::from_utf8_lossy(&seed.stderr)
    );

    let log = std::fs::File::create(tmp.path().join("sidecar.log")).expect("log");
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
            std::fs::read_to_string(tmp.path().join("sidecar.log")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(200));
    }

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
    let out = clean_cmd(Path::new("bash"))
        .args(["-c", &script])
        .env("PATH", &path)
        .env("ETCDCTL_API", "3")
        .env("ENDPOINTS", &endpoints)
        .env("SIDECAR", format!("http://127.0.0.1:{sp}"))
        .env("STORE", &store)
        .env("DATA_DIR", &data)
        .env("NAME", "runbook")
        .env("PEER_URL", &peer)
        .env("WORK", &work)
        .output()
        .expect("bash");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "the runbook failed:\n--- stdout\n{}\n--- stderr\n{stderr}\n--- sidecar\n{}",
        String::from_utf8_lossy(&out.stdout),
        std::fs::read_to_string(tmp.path().join("sidecar.log")).unwrap_or_default()
    );
    let ran = stderr.matches("### runbook block").count();
    assert_eq!(ran, blocks.len());
    // outcomes: the drill brought the key back; the bumped restore is a billion ahead
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("initialization: Successful"), "{stdout}");
    assert!(stdout.contains("/runbook/a\n1"), "{stdout}");
    assert!(stderr.contains("effective revision: 10000000"), "{stderr}");
    eprintln!("{ran} runbook blocks ran");
}

/// Stops the runbook's etcd when the test ends, however it ends.
struct Guard(String);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = std::process::Command::new("bash")
            .args(["-c", "stop_etcd"])
            .env("PATH", &self.0)
            .status();
    }
}
