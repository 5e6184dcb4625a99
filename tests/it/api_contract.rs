//! The API against its description (`docs/openapi.yaml`), checked on a running sidecar next to
//! a real etcd 3.5 by schemathesis (property-based, from PyPI; installed by
//! scripts/install-test-deps.sh): every answer has a documented status code, content type and
//! body shape; no 5xx but the documented ones; malformed input is refused and starts nothing;
//! a protected path without the token is refused (schemathesis' `ignored_auth`); the server
//! survives it all.

use crate::common::*;
use etcdbr::format::layout::Kind;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

const TOKEN: &str = "contract-test-token";

fn schemathesis() -> PathBuf {
    let p = tools_dir().join("venv/bin/schemathesis");
    assert!(
        p.exists(),
        "{} is missing: run scripts/install-test-deps.sh",
        p.display()
    );
    p
}

/// One schemathesis run; panics with its report unless it passed.
fn run(dir: &Path, port: u16, name: &str, args: &[&str]) {
    let spec = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/openapi.yaml");
    let out = std::process::Command::new(schemathesis())
        .current_dir(dir)
        .arg("--config-file")
        .arg(dir.join("schemathesis.toml"))
        .arg("run")
        .arg(&spec)
        .args(["--url", &format!("http://127.0.0.1:{port}")])
        .args(["-H", &format!("Authorization: Bearer {TOKEN}")])
        .args(["--workers", "1", "--seed", "20261205", "--no-color"])
        .args(["--request-timeout", "60", "--generation-database", "none"])
        .args(["--report", "har", "--report-har-path"])
        .arg(dir.join(format!("{name}.har")))
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("schemathesis");
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!(
        "schemathesis {name}: {}",
        report.lines().rev().take(3).collect::<Vec<_>>().join(" | ")
    );
    assert!(
        out.status.success(),
        "schemathesis {name} failed:\n{report}"
    );
}

/// Every request of a run that an acting endpoint (an initialization, a snapshot) answered 200
/// was well-formed: known parameters with valid values. A malformed one never starts anything.
fn only_well_formed_requests_act(har: &Path) {
    let har: serde_json::Value = std::fs::read(har)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_else(|| panic!("no HAR report at {}", har.display()));
    let entries = har["log"]["entries"].as_array().expect("entries");
    assert!(!entries.is_empty());
    let go_bool = [
        "", "1", "t", "T", "TRUE", "true", "True", "0", "f", "F", "FALSE", "false", "False",
    ];
    let mut acted = 0;
    for e in entries {
        let url = e["request"]["url"].as_str().expect("url");
        let url = url::Url::parse(url).expect("url");
        if e["response"]["status"] != 200
            || e["request"]["method"] == "HEAD"
            || e["request"]["method"] == "OPTIONS"
        {
            continue;
        }
        let params: Vec<(String, String)> = url.query_pairs().into_owned().collect();
        let ok = |allowed: &dyn Fn(&str, &str) -> bool| params.iter().all(|(k, v)| allowed(k, v));
        let well_formed = match url.path() {
            "/initialization/start" => ok(&|k, v| match k {
                "mode" => ["", "full", "sanity"].contains(&v),
                "failbelowrevision" => v.is_empty() || v.parse::<i64>().is_ok(),
                _ => false,
            }),
            "/snapshot/full" => ok(&|k, v| k == "final" && go_bool.contains(&v)),
            "/snapshot/delta" => params.is_empty(),
            _ => continue,
        };
        acted += 1;
        assert!(well_formed, "a malformed request was acted on: {url}");
    }
    eprintln!("{acted} acting requests, all well-formed");
}

#[test]
fn the_api_matches_its_openapi_description_under_fuzzing() {
    let etcd = Etcd::start(EtcdVersion::V35);
    etcd.fill(20, 100);
    let tmp = tempfile::tempdir().expect("tmp");
    let dir = tmp.path();
    let bk = dir.join("bk");
    let token = dir.join("token");
    std::fs::write(&token, format!("{TOKEN}\n")).expect("token");
    let peer = free_port();
    let conf = dir.join("etcd.conf.yaml");
    std::fs::write(
        &conf,
        format!(
            "name: t\ninitial-cluster: t=http://127.0.0.1:{peer}\n\
             initial-advertise-peer-urls:\n  t: [http://127.0.0.1:{peer}]\n\
             advertise-client-urls:\n  t: [{}]\ninitial-cluster-state: new\n",
            etcd.endpoint
        ),
    )
    .expect("config");
    // documented 5xx only: /healthz is 503 while an initialization (started by a valid
    // request of the fuzz run) is in progress
    std::fs::write(
        dir.join("schemathesis.toml"),
        "[checks.not_a_server_error]\nexpected-statuses = [\"2xx\", \"3xx\", \"4xx\"]\n\n\
         [[operations]]\ninclude-path = \"/healthz\"\n\
         checks.not_a_server_error.expected-statuses = [\"2xx\", \"3xx\", \"4xx\", \"503\"]\n",
    )
    .expect("schemathesis config");
    let port = free_port();
    let log = dir.join("sidecar.log");
    let logf = std::fs::File::create(&log).expect("log");
    let _sidecar = Proc(
        etcdbrctl()
            .args(["server", "--endpoints", &etcd.endpoint])
            .args([
                "--server-host",
                "127.0.0.1",
                "--server-port",
                &port.to_string(),
            ])
            .args(["--schedule", "0 0 1 1 *", "--delta-snapshot-period", "1s"])
            .args(["--reelection-period", "2s"])
            .arg("--store-container")
            .arg(&bk)
            .arg("--server-token-file")
            .arg(&token)
            .arg("--data-dir")
            .arg(dir.join("data"))
            .args(["--name", "t", "--initial-cluster"])
            .arg(format!("t=http://127.0.0.1:{peer}"))
            .arg("--initial-advertise-peer-urls")
            .arg(format!("http://127.0.0.1:{peer}"))
            .arg("--etcd-config")
            .arg(&conf)
            .arg("--restoration-temp-snapshots-dir")
            .arg(dir.join("rtmp"))
            .arg("--etcd-binary")
            .arg(EtcdVersion::V35.etcd())
            .arg("--etcd-restore-tool")
            .arg(EtcdVersion::V35.status_tool().0)
            .env("HOME", dir)
            .stdout(logf.try_clone().expect("log"))
            .stderr(logf)
            .spawn()
            .expect("sidecar"),
    );
    let sidecar_log = || std::fs::read_to_string(&log).unwrap_or_default();
    let fulls = || {
        stored_in(&bk)
            .iter()
            .filter(|s| s.kind == Kind::Full)
            .count()
    };
    let t = Instant::now();
    while !(matches!(http_body(port, "GET", "/healthz"), Ok((200, _))) && fulls() == 1) {
        assert!(
            t.elapsed() < Duration::from_secs(60),
            "the sidecar is not healthy:\n{}",
            sidecar_log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    // malformed requests only: each refused, none starts an initialization or a snapshot
    run(
        dir,
        port,
        "negative",
        &[
            "--mode",
            "negative",
            "--max-examples",
            "60",
            "--checks",
            "not_a_server_error,status_code_conformance,content_type_conformance,response_headers_conformance,negative_data_rejection",
        ],
    );
    only_well_formed_requests_act(&dir.join("negative.har"));

    // everything: valid and invalid input, every check (the valid requests do take snapshots
    // and start initializations)
    run(
        dir,
        port,
        "all",
        &[
            "--max-examples",
            "40",
            "--checks",
            "all",
            "--exclude-checks",
            "positive_data_acceptance",
        ],
    );
    only_well_formed_requests_act(&dir.join("all.har"));
    // still serving, nothing crashed
    assert!(matches!(http_body(port, "GET", "/metrics"), Ok((200, _))));
    let log = sidecar_log();
    assert!(!log.contains("panicked"), "{log}");
    assert!(!log.contains(TOKEN), "the token reached the log");
}
