//! `etcdbrctl snapshot status|verify|ls|get` against etcd 3.4.23's `etcdctl` and 3.5.1's
//! `etcdutl` on the same files: tiny, with leases, many keys, values on overflow pages, compacted
//! (trailing deletes), a running etcd's db, a compressed stored snapshot; damaged files are
//! named by verify and nothing panics.

use crate::common::*;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::{Duration, Instant};

fn ours(args: &[&str]) -> Output {
    etcdbrctl().args(args).output().expect("run etcdbrctl")
}

fn theirs(version: EtcdVersion, file: &Path, format: &str) -> String {
    let (tool, _) = version.status_tool();
    let out = clean_cmd(&tool)
        .args(["snapshot", "status", "-w", format])
        .arg(file)
        .output()
        .expect("status");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // etcdctl 3.5 prints a deprecation line; the status itself is on stdout
    String::from_utf8_lossy(&out.stdout).to_string()
}

fn save(etcd: &Etcd, dir: &Path, name: &str) -> PathBuf {
    let f = dir.join(name);
    etcd.etcdctl(&["snapshot", "save", f.to_str().expect("path")]);
    f
}

/// Snapshots of one etcd at several stages.
fn fixtures(etcd: &Etcd, dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    etcd.etcdctl(&["put", "/a", "1"]);
    etcd.etcdctl(&["put", "/b", "2"]);
    etcd.etcdctl(&["put", "/a", "3"]);
    out.push(save(etcd, dir, "tiny.db"));
    let grant = etcd.etcdctl(&["lease", "grant", "600"]);
    let id = String::from_utf8_lossy(&grant.stdout)
        .split_whitespace()
        .nth(1)
        .expect("lease id")
        .to_string();
    etcd.etcdctl(&["put", "/leased", "x", "--lease", &id]);
    out.push(save(etcd, dir, "leases.db"));
    etcd.fill(5000, 100);
    out.push(save(etcd, dir, "many.db"));
    for i in 0..3 {
        let big: Vec<u8> = (0..100_000).map(|j| b'a' + ((i + j) % 26) as u8).collect();
        etcd.put(&format!("/big/{i}"), &big);
    }
    out.push(save(etcd, dir, "large.db"));
    etcd.etcdctl(&["put", "/t", "gone"]);
    etcd.etcdctl(&["del", "/t"]);
    let rev = etcd.revision().to_string();
    etcd.etcdctl(&["compaction", "--physical", &rev]);
    out.push(save(etcd, dir, "compacted.db"));
    out
}

fn check_version(version: EtcdVersion) {
    let etcd = Etcd::start(version);
    let dir = tempfile::tempdir().expect("tempdir");
    let files = fixtures(&etcd, dir.path());
    for f in &files {
        let p = f.to_str().expect("path");
        for format in ["json", "table", "fields", "simple"] {
            let out = ours(&["snapshot", "status", p, "-w", format]);
            assert!(
                out.status.success(),
                "status {p}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            assert_eq!(
                String::from_utf8_lossy(&out.stdout),
                theirs(version, f, format),
                "{version:?} {p} -w {format}"
            );
            if format == "json" {
                let err = String::from_utf8_lossy(&out.stderr);
                assert!(err.contains("sha256 trailer: present, matches"), "{err}");
            }
        }
        let v = ours(&["snapshot", "verify", p]);
        assert!(v.status.success(), "verify {p}: {v:?}");
    }
    // compaction of trailing deletes: etcdctl's revision lags, ours says the effective one
    let compacted = files.last().expect("compacted");
    let out = ours(&[
        "snapshot",
        "status",
        compacted.to_str().expect("p"),
        "-w",
        "json",
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    let live = etcd.revision();
    assert!(
        err.contains(&format!("effective revision: {live} (compacted at {live})")),
        "{err}"
    );

    // ls agrees with etcdctl get --prefix on the live etcd the snapshot was taken from
    let ls = ours(&[
        "snapshot",
        "ls",
        compacted.to_str().expect("p"),
        "-w",
        "json",
    ]);
    assert!(
        ls.status.success(),
        "{}",
        String::from_utf8_lossy(&ls.stderr)
    );
    let mine: Vec<serde_json::Value> = String::from_utf8_lossy(&ls.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("json line"))
        .collect();
    let get = etcd.etcdctl(&["get", "", "--prefix", "-w", "json"]);
    let want: serde_json::Value = serde_json::from_slice(&get.stdout).expect("json");
    let want = want["kvs"].as_array().expect("kvs");
    assert_eq!(mine.len(), want.len());
    use base64::Engine;
    let b64 = |v: &serde_json::Value| {
        base64::engine::general_purpose::STANDARD
            .decode(v.as_str().unwrap_or(""))
            .expect("base64")
    };
    for (m, w) in mine.iter().zip(want) {
        assert_eq!(m["key"].as_str().expect("key").as_bytes(), b64(&w["key"]));
        assert_eq!(
            m["value"].as_str().expect("value").as_bytes(),
            b64(&w["value"])
        );
        for f in ["create_revision", "mod_revision", "version"] {
            assert_eq!(m[f].as_i64(), w[f].as_i64(), "{f} of {m}");
        }
        assert_eq!(
            m["lease"].as_i64().unwrap_or(0),
            w["lease"].as_i64().unwrap_or(0)
        );
    }
    // get of one key at an older revision still in the history
    let many = &files[2];
    let g = ours(&[
        "snapshot",
        "get",
        many.to_str().expect("p"),
        "/a",
        "-w",
        "json",
    ]);
    let g: serde_json::Value = serde_json::from_slice(&g.stdout).expect("get json");
    assert_eq!(
        (g["value"].as_str(), g["version"].as_i64()),
        (Some("3"), Some(2))
    );
    let g = ours(&[
        "snapshot",
        "get",
        many.to_str().expect("p"),
        "/a",
        "--revision",
        "3",
        "-w",
        "json",
    ]);
    let g: serde_json::Value = serde_json::from_slice(&g.stdout).expect("get json");
    assert_eq!(g["value"].as_str(), Some("1"));

    // the db of the running etcd: no hang (etcdctl would wait for the flock forever)
    let live_db = etcd.dir.path().join("data/member/snap/db");
    let t = Instant::now();
    let out = ours(&[
        "snapshot",
        "status",
        live_db.to_str().expect("p"),
        "-w",
        "json",
    ]);
    assert!(t.elapsed() < Duration::from_secs(20));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let st: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert!(st["totalKey"].as_i64().unwrap_or(0) > 5000, "{st}");
}

#[test]
fn status_ls_get_match_etcd_3_4() {
    check_version(EtcdVersion::V34);
}

#[test]
fn status_ls_get_match_etcd_3_5() {
    check_version(EtcdVersion::V35);
}

fn flip(src: &Path, dst: &Path, at: usize) {
    let mut b = std::fs::read(src).expect("read");
    b[at] ^= 0x5a;
    std::fs::write(dst, b).expect("write");
}

#[test]
fn damaged_files_are_named_and_nothing_panics() {
    let etcd = Etcd::start(EtcdVersion::V35);
    etcd.fill(3000, 200);
    let dir = tempfile::tempdir().expect("tempdir");
    let good = save(&etcd, dir.path(), "good.db");
    let len = std::fs::metadata(&good).expect("stat").len() as usize;

    // a flipped byte in the element area of a tree page in the middle: verify names the page
    let bad = dir.path().join("flipped.db");
    let mut named = 0;
    for page in [(len / 4096) / 2, (len / 4096) / 3, 5] {
        flip(&good, &bad, page * 4096 + 16 + 5);
        let v = ours(&["snapshot", "verify", bad.to_str().expect("p")]);
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&v.stdout),
            String::from_utf8_lossy(&v.stderr)
        );
        assert!(!v.status.success(), "flipped page {page}: {text}");
        assert!(!text.contains("panicked"), "{text}");
        assert!(text.contains("MISMATCH"), "trailer must catch it: {text}");
        if text.contains("problem: page ") {
            named += 1;
        }
    }
    assert!(named > 0, "no structural problem was named by page");

    // truncated
    let trunc = dir.path().join("truncated.db");
    let b = std::fs::read(&good).expect("read");
    std::fs::write(&trunc, &b[..len / 2]).expect("write");
    let v = ours(&["snapshot", "verify", trunc.to_str().expect("p")]);
    let err = String::from_utf8_lossy(&v.stderr);
    assert!(!v.status.success() && err.contains("truncated"), "{err}");
    let s = ours(&["snapshot", "status", trunc.to_str().expect("p")]);
    assert!(!s.status.success());

    // wrong trailer: status and verify both fail on it
    let wrong = dir.path().join("wrong-trailer.db");
    flip(&good, &wrong, len - 1);
    let v = ours(&["snapshot", "verify", wrong.to_str().expect("p")]);
    assert!(!v.status.success());
    assert!(String::from_utf8_lossy(&v.stdout).contains("MISMATCH"));

    // garbage of several sizes, and random bytes inside every page header
    for (i, size) in [0usize, 1, 100, 4096, 9000, 65536].into_iter().enumerate() {
        let g = dir.path().join(format!("garbage{i}"));
        let data: Vec<u8> = (0..size).map(|j| ((j * 131 + i) % 256) as u8).collect();
        std::fs::write(&g, data).expect("write");
        for cmd in ["status", "verify", "ls"] {
            let o = ours(&["snapshot", cmd, g.to_str().expect("p")]);
            assert!(!o.status.success());
            assert!(!String::from_utf8_lossy(&o.stderr).contains("panicked"));
        }
    }
    // in-process fuzzing of the parser: random bytes written into random pages (headers,
    // element arrays, keys), every entry point run on each mutant; ETCDBR_FUZZ_ITERS sets the
    // count (default 500)
    let iters: usize = std::env::var("ETCDBR_FUZZ_ITERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(500);
    let mut state = 0x9e37_79b9_7f4a_7c15_u64;
    let mut rnd = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let mutant = dir.path().join("mutant.db");
    let (mut rejected, mut problems) = (0, 0);
    for _ in 0..iters {
        let mut m = b.clone();
        for _ in 0..(1 + rnd() % 6) {
            let page = (rnd() as usize) % (len / 4096);
            let off = page * 4096
                + if rnd() % 2 == 0 {
                    (rnd() % 96) as usize
                } else {
                    (rnd() % 4096) as usize
                };
            m[off] = rnd() as u8;
        }
        std::fs::write(&mutant, &m).expect("write");
        match etcdbr::ondisk::bbolt::Db::open(&mutant) {
            Err(_) => rejected += 1,
            Ok(db) => {
                problems += usize::from(!db.check().is_empty());
                let _ = etcdbr::ondisk::schema::status(&db);
                if let Ok(Some(k)) = etcdbr::ondisk::schema::key_bucket(&db) {
                    let _ = db.for_each(&k, &mut |_, _, v| {
                        let _ = etcdbr::ondisk::schema::decode_kv(v);
                        Ok(())
                    });
                }
            }
        }
    }
    eprintln!("fuzz: {iters} mutants, {rejected} rejected at open, {problems} with check problems");

    let mut state = 0x1234_5678_u64;
    for round in 0..10 {
        let mut b = b.clone();
        for _ in 0..8 {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let page = (state as usize >> 8) % (len / 4096);
            let off = page * 4096 + (state as usize % 64);
            b[off] = (state >> 32) as u8;
        }
        let f = dir.path().join(format!("fuzz{round}.db"));
        std::fs::write(&f, &b).expect("write");
        for cmd in ["status", "verify", "ls"] {
            let o = ours(&["snapshot", cmd, f.to_str().expect("p")]);
            let err = String::from_utf8_lossy(&o.stderr);
            assert!(!err.contains("panicked"), "{cmd} fuzz{round}: {err}");
        }
    }
}

#[test]
fn stored_and_compressed_snapshots() {
    let etcd = Etcd::start(EtcdVersion::V34);
    etcd.fill(500, 100);
    let dir = tempfile::tempdir().expect("tempdir");
    let store = dir.path().join("bk");
    let key = run_ok(etcdbrctl().args([
        "snapshot",
        "save",
        "--endpoints",
        &etcd.endpoint,
        "--store-container",
        store.to_str().expect("p"),
        "--compress-snapshots",
        "--compression-policy",
        "gzip",
    ]));
    let key = key.trim();
    let name = key.rsplit('/').next().expect("name");
    let plain = save(&etcd, dir.path(), "plain.db");
    let want = theirs(EtcdVersion::V34, &plain, "json");
    // by name from the store, and as a local .gz file
    let by_name = run_ok(etcdbrctl().args([
        "snapshot",
        "status",
        name,
        "--store-container",
        store.to_str().expect("p"),
        "-w",
        "json",
    ]));
    let file = store.join(key);
    let by_file = run_ok(etcdbrctl().args([
        "snapshot",
        "status",
        file.to_str().expect("p"),
        "-w",
        "json",
    ]));
    let rev =
        |s: &str| serde_json::from_str::<serde_json::Value>(s).expect("json")["revision"].clone();
    assert_eq!(rev(&by_name), rev(&want));
    assert_eq!(by_name, by_file);
    // the same from S3 (moto), zstd-compressed: streamed and decompressed on the way
    let moto = Moto::start("inspect");
    let s3 = |cmd: &mut std::process::Command| {
        cmd.env("AWS_APPLICATION_CREDENTIALS_JSON", moto.credentials_file())
            .args(["--storage-provider", "S3", "--store-container", "inspect"])
            .args([
                "--store-endpoint-override",
                &moto.endpoint,
                "--store-prefix",
                "p",
            ]);
    };
    let mut save_s3 = etcdbrctl();
    save_s3.args(["snapshot", "save", "--endpoints", &etcd.endpoint]);
    save_s3.args(["--compress-snapshots", "--compression-policy", "zstd"]);
    s3(&mut save_s3);
    let s3_key = run_ok(&mut save_s3);
    let mut status_s3 = etcdbrctl();
    status_s3.args(["snapshot", "status", s3_key.trim(), "-w", "json"]);
    s3(&mut status_s3);
    assert_eq!(rev(&run_ok(&mut status_s3)), rev(&want));

    // --kubernetes: registry keys split, JSON and protobuf (k8s\0 envelope) objects decoded
    etcd.etcdctl(&[
        "put",
        "/registry/configmaps/default/cm1",
        r#"{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"cm1"}}"#,
    ]);
    // runtime.Unknown{typeMeta{apiVersion "v1", kind "Pod"}, raw [0x0a 0x01 0x78]}
    let mut pb = b"k8s\0".to_vec();
    pb.extend([
        0x0a, 0x09, 0x0a, 0x02, b'v', b'1', 0x12, 0x03, b'P', b'o', b'd',
    ]);
    pb.extend([0x12, 0x03, 0x0a, 0x01, b'x']);
    etcd.put("/registry/pods/kube-system/etcd-0", &pb);
    let k8s = save(&etcd, dir.path(), "k8s.db");
    let ls = run_ok(etcdbrctl().args([
        "snapshot",
        "ls",
        k8s.to_str().expect("p"),
        "--prefix",
        "/registry/",
        "--kubernetes",
        "-w",
        "json",
    ]));
    let objs: Vec<serde_json::Value> = ls
        .lines()
        .map(|l| serde_json::from_str(l).expect("json"))
        .collect();
    assert_eq!(objs.len(), 2, "{ls}");
    assert_eq!(
        (
            objs[0]["resource"].as_str(),
            objs[0]["kind"].as_str(),
            objs[0]["encoding"].as_str()
        ),
        (Some("configmaps"), Some("ConfigMap"), Some("json"))
    );
    assert_eq!(
        (
            objs[1]["resource"].as_str(),
            objs[1]["namespace"].as_str(),
            objs[1]["name"].as_str(),
            objs[1]["apiVersion"].as_str(),
            objs[1]["kind"].as_str()
        ),
        (
            Some("pods"),
            Some("kube-system"),
            Some("etcd-0"),
            Some("v1"),
            Some("Pod")
        )
    );
    let raw = dir.path().join("pod.pb");
    run_ok(etcdbrctl().args([
        "snapshot",
        "get",
        k8s.to_str().expect("p"),
        "/registry/pods/kube-system/etcd-0",
        "--kubernetes",
        "--out",
        raw.to_str().expect("p"),
    ]));
    assert_eq!(std::fs::read(&raw).expect("raw"), vec![0x0a, 0x01, b'x']);

    // an unknown name is a clear error
    let o = ours(&[
        "snapshot",
        "status",
        "Full-00000000-00000001-1.gz",
        "--store-container",
        store.to_str().expect("p"),
    ]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("neither a local file nor a snapshot"));
}
