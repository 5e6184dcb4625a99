//! Full snapshots against real etcd 3.4.23 / 3.5.1, the Local store and moto's S3 server.

use crate::common::*;
use std::io::Read;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

/// Decompresses a stored object the way etcdbrctl would (Go's stdlib for gzip/zlib/lzw).
fn decompress(file: &Path, suffix: &str, out: &Path) {
    let status = match suffix {
        "" => {
            std::fs::copy(file, out).expect("copy");
            return;
        }
        ".gz" | ".zlib" | ".Z" => {
            let policy = match suffix {
                ".gz" => "gzip",
                ".zlib" => "zlib",
                _ => "lzw",
            };
            std::process::Command::new(gocompat())
                .args(["decompress", policy])
                .arg(file)
                .arg(out)
                .status()
        }
        ".zst" => std::process::Command::new("zstd")
            .args(["-q", "-d", "-f", "-o"])
            .arg(out)
            .arg(file)
            .status(),
        s => panic!("unexpected suffix {s}"),
    };
    assert!(
        status.expect("decompress").success(),
        "decompressing {}",
        file.display()
    );
}

fn every_codec(version: EtcdVersion) {
    let etcd = Etcd::start(version);
    etcd.fill(1200, 100);
    let rev = etcd.revision();
    let tmp = tempfile::tempdir().unwrap();
    let container = tmp.path().join("bk");
    let cases: &[(&[&str], &str)] = &[
        (&[], ".gz"),
        (&["--compress-snapshots=false"], ""),
        (&["--compression-policy", "zlib"], ".zlib"),
        (&["--compression-policy", "lzw"], ".Z"),
        (&["--compression-policy", "zstd"], ".zst"),
    ];
    for (flags, suffix) in cases {
        let before = chrono::Utc::now().timestamp();
        let key = run_ok(
            etcdbrctl()
                .args([
                    "snapshot",
                    "save",
                    "--endpoints",
                    &etcd.endpoint,
                    "--storage-provider",
                    "Local",
                ])
                .arg("--store-container")
                .arg(&container)
                .args(["--store-prefix", "cluster-a"])
                .args(*flags),
        );
        let key = key.trim();
        let expected_prefix = format!("cluster-a/v2/Full-00000000-{rev:08}-");
        assert!(
            key.starts_with(&expected_prefix),
            "{key} should start with {expected_prefix}"
        );
        let unix: i64 = key[expected_prefix.len()..key.len() - suffix.len()]
            .parse()
            .expect("unix time in the name");
        assert!(unix >= before && unix <= chrono::Utc::now().timestamp());
        let obj = container.join(key);
        assert!(obj.is_file(), "{} missing", obj.display());
        let db = tmp.path().join("db");
        decompress(&obj, suffix, &db);
        let data = std::fs::read(&db).unwrap();
        assert!(
            has_valid_trailer(&data),
            "{key}: last 32 bytes must be the sha256 of the rest"
        );
        let st = etcd_status(version, &db);
        assert_eq!(st["revision"].as_i64(), Some(rev), "{key}: status {st}");
        assert!(st["totalKey"].as_i64().unwrap() > 1200);
    }
    // nothing but the five snapshots in the store directory
    let files = files_in(&container.join("cluster-a/v2"));
    assert_eq!(files.len(), 5, "{files:?}");
}

#[test]
fn full_snapshot_every_codec_etcd34() {
    every_codec(EtcdVersion::V34);
}

#[test]
fn full_snapshot_every_codec_etcd35() {
    every_codec(EtcdVersion::V35);
}

/// Our codecs and Go's (etcdbrctl's) read each other's output.
#[test]
fn codecs_interoperate_with_go() {
    use etcdbr::format::codec::Codec;
    use std::io::Write;
    let tmp = tempfile::tempdir().unwrap();
    let data: Vec<u8> = (0..3_000_000u32)
        .map(|i| ((i / 7) ^ (i.wrapping_mul(2654435761) >> 24)) as u8)
        .collect();
    let plain = tmp.path().join("plain");
    std::fs::write(&plain, &data).unwrap();
    for (codec, policy) in [
        (Codec::Gzip, "gzip"),
        (Codec::Zlib, "zlib"),
        (Codec::Lzw, "lzw"),
    ] {
        // Go writes, we read
        let go_out = tmp.path().join(format!("go.{policy}"));
        assert!(std::process::Command::new(gocompat())
            .args(["compress", policy])
            .arg(&plain)
            .arg(&go_out)
            .status()
            .unwrap()
            .success());
        let decode = |file: &std::path::Path| {
            let enc = std::fs::read(file).unwrap();
            let mut got = Vec::new();
            codec
                .decoder(&enc[..])
                .unwrap()
                .read_to_end(&mut got)
                .unwrap();
            got
        };
        assert!(
            decode(&go_out) == data,
            "{policy}: Go-written data decoded differently"
        );
        // we write (one stream, and blocks on several threads), Go reads; gzip -d too
        for threads in [1, 3] {
            let mut e = etcdbr::format::codec::Compression::new(codec, 6, threads)
                .encoder(Vec::new())
                .unwrap();
            for c in data.chunks(32 * 1024) {
                e.write_all(c).unwrap();
            }
            let ours = tmp.path().join(format!("ours-{threads}.{policy}"));
            std::fs::write(&ours, e.finish().unwrap()).unwrap();
            let back = tmp.path().join(format!("back-{threads}.{policy}"));
            assert!(std::process::Command::new(gocompat())
                .args(["decompress", policy])
                .arg(&ours)
                .arg(&back)
                .status()
                .unwrap()
                .success());
            assert!(
                std::fs::read(&back).unwrap() == data,
                "{policy}, {threads} threads: Go decoded our data differently"
            );
            if codec == Codec::Gzip {
                let out = std::process::Command::new("gzip")
                    .args(["-dc"])
                    .arg(&ours)
                    .output()
                    .unwrap();
                assert!(
                    out.status.success() && out.stdout == data,
                    "gzip -d, {threads} threads"
                );
            }
            // and we read it back
            assert!(
                decode(&ours) == data,
                "{policy}, {threads} threads: round trip"
            );
        }
    }
}

#[test]
fn s3_multipart_with_credentials_json() {
    let etcd = Etcd::start(EtcdVersion::V34);
    etcd.fill(3000, 4096); // ~12 MiB of values: several 5 MiB parts
    let rev = etcd.revision();
    let moto = Moto::start("backups");
    let key = run_ok(
        etcdbrctl()
            .env("AWS_APPLICATION_CREDENTIALS_JSON", moto.credentials_file())
            .args([
                "snapshot",
                "save",
                "--endpoints",
                &etcd.endpoint,
                "--storage-provider",
                "S3",
            ])
            .args([
                "--store-container",
                "backups",
                "--store-endpoint-override",
                &moto.endpoint,
                "--store-prefix",
                "etcd-main",
            ])
            .args(["--compress-snapshots=false", "--min-chunk-size", "5242880"]),
    );
    let key = key.trim().to_string();
    assert!(
        key.starts_with(&format!("etcd-main/v2/Full-00000000-{rev:08}-")),
        "{key}"
    );
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (etag, data) = rt.block_on(async {
        use object_store::ObjectStoreExt;
        let s = moto.store();
        let p = object_store::path::Path::from(key.as_str());
        let meta = s.head(&p).await.unwrap();
        let data = s.get(&p).await.unwrap().bytes().await.unwrap();
        (meta.e_tag.unwrap_or_default(), data)
    });
    // S3 marks multipart objects with an ETag of the form "<md5>-<parts>"
    let parts = data.len().div_ceil(5 << 20);
    assert!(parts >= 3);
    assert!(
        etag.trim_matches('"').ends_with(&format!("-{parts}")),
        "expected a {parts}-part multipart upload, ETag {etag}"
    );
    assert!(has_valid_trailer(&data));
    let db = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(db.path(), &data).unwrap();
    assert_eq!(
        etcd_status(EtcdVersion::V34, db.path())["revision"].as_i64(),
        Some(rev)
    );
}

fn assert_one_clear_error(out: &std::process::Output, needle: &str) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "should fail: {stderr}");
    assert!(!stderr.contains("panicked"), "panic: {stderr}");
    let lines: Vec<&str> = stderr.lines().filter(|l| l.contains("error")).collect();
    assert!(
        !lines.is_empty() && lines.len() <= 2,
        "expected one error line, got: {stderr}"
    );
    assert!(
        stderr.contains(needle),
        "error should mention {needle:?}: {stderr}"
    );
}

#[test]
fn bad_input_gives_one_clear_error() {
    let tmp = tempfile::tempdir().unwrap();
    let c = tmp.path().join("bk");
    let dead = format!("http://127.0.0.1:{}", free_port());
    let run = |args: &[&str], env: &[(&str, &str)]| {
        let mut cmd = etcdbrctl();
        cmd.args(args).arg("--store-container").arg(&c);
        for (k, v) in env {
            cmd.env(k, v);
        }
        cmd.output().unwrap()
    };
    assert_one_clear_error(
        &run(&["snapshot", "save", "--storage-provider", "Dropbox"], &[]),
        "unknown storage provider",
    );
    assert_one_clear_error(
        &run(&["snapshot", "--schedule", "61 * * * *"], &[]),
        "invalid cron schedule",
    );
    assert_one_clear_error(
        &run(&["snapshot", "save", "--compression-policy", "lz4"], &[]),
        "unknown compression policy",
    );
    assert_one_clear_error(
        &run(&["snapshot", "save", "--compress-snapshots=maybe"], &[]),
        "invalid boolean",
    );
    assert_one_clear_error(
        &run(
            &["snapshot", "save", "--etcd-connection-timeout", "soon"],
            &[],
        ),
        "invalid duration",
    );
    let t = Instant::now();
    assert_one_clear_error(
        &run(
            &[
                "snapshot",
                "save",
                "--endpoints",
                &dead,
                "--etcd-connection-timeout",
                "3s",
            ],
            &[],
        ),
        &dead,
    );
    assert!(
        t.elapsed() < Duration::from_secs(20),
        "unreachable etcd must fail within the connection timeout"
    );
    assert_one_clear_error(
        &run(&["snapshot", "save", "--endpoints", "127.0.0.1:2379"], &[]),
        "is not a URL",
    );

    let moto = Moto::start("exists");
    let s3 = [
        "snapshot",
        "save",
        "--endpoints",
        &dead,
        "--storage-provider",
        "S3",
        "--store-endpoint-override",
        &moto.endpoint,
    ];
    let creds = moto.credentials_file();
    let creds = creds.to_str().unwrap();
    let mut missing_bucket = etcdbrctl();
    missing_bucket
        .args(s3)
        .args(["--store-container", "no-such-bucket"])
        .env("AWS_APPLICATION_CREDENTIALS_JSON", creds);
    assert_one_clear_error(&missing_bucket.output().unwrap(), "no-such-bucket");
    let mut bad_creds = etcdbrctl();
    bad_creds
        .args(s3)
        .args(["--store-container", "exists"])
        .env(
            "AWS_APPLICATION_CREDENTIALS_JSON",
            "/nonexistent/creds.json",
        );
    assert_one_clear_error(&bad_creds.output().unwrap(), "/nonexistent/creds.json");
    let incomplete = tmp.path().join("incomplete.json");
    std::fs::write(&incomplete, r#"{"accessKeyID":"a","secretAccessKey":"b"}"#).unwrap();
    let mut no_region = etcdbrctl();
    no_region
        .args(s3)
        .args(["--store-container", "exists"])
        .env("AWS_APPLICATION_CREDENTIALS_JSON", &incomplete);
    assert_one_clear_error(&no_region.output().unwrap(), "region");
    let mut no_container = etcdbrctl();
    no_container.args(["snapshot", "save", "--storage-provider", "S3"]);
    assert_one_clear_error(&no_container.output().unwrap(), "--store-container");
}

/// A connection cut in the middle of the snapshot stream leaves no visible object and no temp
/// file.
#[test]
fn cut_stream_leaves_nothing_visible() {
    let etcd = Etcd::start(EtcdVersion::V34);
    etcd.fill(2500, 8192); // ~20 MiB
    let port: u16 = etcd.endpoint.rsplit(':').next().unwrap().parse().unwrap();
    let proxy = Proxy::start(port, None, Some(8 << 20));
    let tmp = tempfile::tempdir().unwrap();
    let c = tmp.path().join("bk");
    let out = etcdbrctl()
        .args([
            "snapshot",
            "save",
            "--endpoints",
            &proxy.endpoint(),
            "--compress-snapshots=false",
        ])
        .arg("--store-container")
        .arg(&c)
        .output()
        .unwrap();
    assert!(!out.status.success(), "a cut stream must fail");
    assert!(!String::from_utf8_lossy(&out.stderr).contains("panicked"));
    assert_eq!(
        files_in(&c.join("v2")),
        Vec::<String>::new(),
        "nothing may be left in the store"
    );
    // and the direct path works
    run_ok(
        etcdbrctl()
            .args(["snapshot", "save", "--endpoints", &etcd.endpoint])
            .arg("--store-container")
            .arg(&c),
    );
    assert_eq!(files_in(&c.join("v2")).len(), 1);
}

/// kill -9 in the middle of an upload: nothing visible; the next run removes the leftover.
#[test]
fn kill_9_mid_upload_leaves_nothing_visible() {
    let etcd = Etcd::start(EtcdVersion::V34);
    etcd.fill(2500, 8192);
    let port: u16 = etcd.endpoint.rsplit(':').next().unwrap().parse().unwrap();
    let proxy = Proxy::start(port, Some(4 << 20), None); // 4 MiB/s: ~5 s for the snapshot
    let tmp = tempfile::tempdir().unwrap();
    let c = tmp.path().join("bk");
    let v2 = c.join("v2");
    let mut child = etcdbrctl()
        .args([
            "snapshot",
            "save",
            "--endpoints",
            &proxy.endpoint(),
            "--compress-snapshots=false",
        ])
        .arg("--store-container")
        .arg(&c)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map(Proc)
        .unwrap();
    let t = Instant::now();
    loop {
        let partial = files_in(&v2)
            .into_iter()
            .find(|f| f.starts_with(".etcdbr-"));
        if let Some(f) = partial {
            if std::fs::metadata(v2.join(&f)).map(|m| m.len()).unwrap_or(0) > 2 << 20 {
                break;
            }
        }
        assert!(
            t.elapsed() < Duration::from_secs(30),
            "upload did not start: {:?}",
            files_in(&v2)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    let left = files_in(&v2);
    assert!(
        left.iter().all(|f| f.starts_with(".etcdbr-")),
        "only a hidden temp file may remain: {left:?}"
    );
    // listing sees no snapshot
    let rt = tokio::runtime::Runtime::new().unwrap();
    let cfg = etcdbr::store::StoreConfig {
        provider: etcdbr::store::Provider::Local,
        container: c.to_string_lossy().to_string(),
        endpoint_override: String::new(),
        prefix: String::new(),
        max_parallel_chunk_uploads: 5,
        min_chunk_size: 5 << 20,
        temp_dir: tmp.path().to_path_buf(),
        env_prefix: String::new(),
        credentials: None,
        keys: Default::default(),
    };
    let listed = rt.block_on(async {
        etcdbr::store::SnapStore::open(cfg)
            .await
            .unwrap()
            .list()
            .await
            .unwrap()
    });
    assert!(listed.is_empty(), "{listed:?}");
    // opening the store removed the dead process's temp file
    assert_eq!(files_in(&v2), Vec::<String>::new());
    run_ok(
        etcdbrctl()
            .args(["snapshot", "save", "--endpoints", &etcd.endpoint])
            .arg("--store-container")
            .arg(&c),
    );
    assert_eq!(files_in(&v2).len(), 1);
}

/// The scheduled mode takes a full at once and one per tick, and stops cleanly on SIGTERM.
#[test]
fn scheduled_mode_full_at_start_and_per_tick() {
    let etcd = Etcd::start(EtcdVersion::V35);
    etcd.fill(100, 10);
    let tmp = tempfile::tempdir().unwrap();
    let c = tmp.path().join("bk");
    let mut child = etcdbrctl()
        .args([
            "snapshot",
            "--endpoints",
            &etcd.endpoint,
            "--schedule",
            "@every 2s",
        ])
        .arg("--store-container")
        .arg(&c)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .map(Proc)
        .unwrap();
    let t = Instant::now();
    while files_in(&c.join("v2")).is_empty() {
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "no full snapshot at start"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        t.elapsed() < Duration::from_secs(5),
        "the first full must be immediate"
    );
    etcd.fill(10, 10);
    std::thread::sleep(Duration::from_millis(4500));
    let rc = unsafe_sigterm(child.id());
    assert_eq!(rc, 0);
    let status = child.wait().unwrap();
    assert!(status.success(), "SIGTERM must exit 0");
    let files = files_in(&c.join("v2"));
    assert!(files.len() >= 3, "{files:?}");
    let mut out = String::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    assert_eq!(
        out.lines().count(),
        files.len(),
        "one printed name per snapshot"
    );
    let revs: Vec<i64> = files
        .iter()
        .map(|f| f.split('-').nth(2).unwrap().parse().unwrap())
        .collect();
    assert_eq!(*revs.iter().max().unwrap(), etcd.revision());
}

fn unsafe_sigterm(pid: u32) -> i32 {
    std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .map(|s| s.code().unwrap_or(1))
        .unwrap_or(1)
}

/// Under a steady write load the name still carries exactly the revision of the data (the
/// lower bound read before the stream would be stale): Local (rename) and S3 (server-side copy).
#[test]
fn name_revision_is_exact_under_write_load() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    let etcd = Etcd::start(EtcdVersion::V34);
    etcd.fill(4000, 2048);
    let stop = Arc::new(AtomicBool::new(false));
    let mut writers = Vec::new();
    for w in 0..3 {
        let (ep, stop) = (etcd.endpoint.clone(), stop.clone());
        writers.push(std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                let mut c = etcd_client::Client::connect([&ep], None).await.unwrap();
                let t = Instant::now();
                let mut i = 0u64;
                while !stop.load(Ordering::Relaxed) && t.elapsed() < Duration::from_secs(120) {
                    let _ = c
                        .put(format!("/w{w}/{}", i % 500), vec![b'v'; 256], None)
                        .await;
                    i += 1;
                }
            });
        }));
    }
    let moto = Moto::start("load");
    let tmp = tempfile::tempdir().unwrap();
    let container = tmp.path().join("bk");
    let mut lower_than_data = 0;
    for round in 0..6 {
        let s3 = round % 2 == 1;
        let mut cmd = etcdbrctl();
        cmd.args([
            "snapshot",
            "save",
            "--endpoints",
            &etcd.endpoint,
            "--compress-snapshots=false",
        ]);
        if s3 {
            cmd.env("AWS_APPLICATION_CREDENTIALS_JSON", moto.credentials_file())
                .args([
                    "--storage-provider",
                    "S3",
                    "--store-container",
                    "load",
                    "--store-endpoint-override",
                    &moto.endpoint,
                ]);
        } else {
            cmd.arg("--store-container").arg(&container);
        }
        let out = cmd.output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let key = String::from_utf8_lossy(&out.stdout).trim().to_string();
        let name_rev: i64 = key.split('-').nth(2).unwrap().parse().unwrap();
        let log = String::from_utf8_lossy(&out.stderr).to_string();
        let lower: i64 = log
            .split("lower_bound=")
            .nth(1)
            .unwrap()
            .split_whitespace()
            .next()
            .unwrap()
            .parse()
            .unwrap();
        if lower < name_rev {
            lower_than_data += 1;
        }
        assert!(log.contains("revision_exact=true"), "{log}");
        let data = if s3 {
            let rt = tokio::runtime::Runtime::new().unwrap();
            rt.block_on(async {
                use futures::TryStreamExt;
                use object_store::ObjectStoreExt;
                let s = moto.store();
                // the snapshots (the proofs recorded with them live in proofs/)
                let v2 = object_store::path::Path::from("v2");
                let all: Vec<_> = s.list(Some(&v2)).try_collect().await.unwrap();
                assert_eq!(
                    all.len(),
                    round / 2 + 1,
                    "the lower-bound copy must be gone: {all:?}"
                );
                s.get(&object_store::path::Path::from(key.as_str()))
                    .await
                    .unwrap()
                    .bytes()
                    .await
                    .unwrap()
                    .to_vec()
            })
        } else {
            std::fs::read(container.join(&key)).unwrap()
        };
        let db = tmp.path().join("status.db");
        std::fs::write(&db, &data).unwrap();
        let st = etcd_status(EtcdVersion::V34, &db);
        assert_eq!(
            st["revision"].as_i64(),
            Some(name_rev),
            "{key}: the name must equal the data's revision"
        );
    }
    stop.store(true, Ordering::Relaxed);
    for w in writers {
        w.join().unwrap();
    }
    eprintln!("{lower_than_data} of 6 snapshots had a stale lower bound, corrected from the data");
    assert!(
        lower_than_data > 0,
        "the load did not move the revision during any snapshot; the test proves nothing"
    );
}

/// ABS through Azurite, with etcdbrctl's AZURE_APPLICATION_CREDENTIALS_JSON file.
#[test]
fn abs_with_credentials_json() {
    let etcd = Etcd::start(EtcdVersion::V35);
    etcd.fill(2000, 4096);
    let rev = etcd.revision();
    let az = Azurite::start("etcd-backups");
    let key = run_ok(
        etcdbrctl()
            .env("AZURE_APPLICATION_CREDENTIALS_JSON", az.credentials_file())
            .args([
                "snapshot",
                "save",
                "--endpoints",
                &etcd.endpoint,
                "--storage-provider",
                "ABS",
            ])
            .args([
                "--store-container",
                "etcd-backups",
                "--store-endpoint-override",
                &az.endpoint,
            ])
            .args(["--store-prefix", "shoot--a", "--compression-policy", "lzw"]),
    );
    let key = key.trim().to_string();
    assert!(
        key.starts_with(&format!("shoot--a/v2/Full-00000000-{rev:08}-")) && key.ends_with(".Z"),
        "{key}"
    );
    let rt = tokio::runtime::Runtime::new().unwrap();
    let data = rt.block_on(async {
        use object_store::ObjectStoreExt;
        az.store()
            .get(&object_store::path::Path::from(key.as_str()))
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap()
    });
    let tmp = tempfile::tempdir().unwrap();
    let (obj, db) = (tmp.path().join("obj.Z"), tmp.path().join("db"));
    std::fs::write(&obj, &data).unwrap();
    decompress(&obj, ".Z", &db);
    assert!(has_valid_trailer(&std::fs::read(&db).unwrap()));
    assert_eq!(
        etcd_status(EtcdVersion::V35, &db)["revision"].as_i64(),
        Some(rev)
    );
}

/// Scheduled mode with etcd down: logged retries with growing backoff, no exit, and the first
/// snapshot as soon as etcd is up.
#[test]
fn scheduled_mode_retries_until_etcd_is_up() {
    let (c, p) = (free_port(), free_port());
    let tmp = tempfile::tempdir().unwrap();
    let bk = tmp.path().join("bk");
    let log = tmp.path().join("log");
    let mut child = etcdbrctl()
        .args([
            "snapshot",
            "--endpoints",
            &format!("http://127.0.0.1:{c}"),
            "--etcd-connection-timeout",
            "2s",
        ])
        .args(["--backoff-threshold-time", "4s"])
        .arg("--store-container")
        .arg(&bk)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .map(Proc)
        .unwrap();
    std::thread::sleep(Duration::from_secs(4));
    assert!(
        child.try_wait().unwrap().is_none(),
        "the job must keep retrying, not exit"
    );
    let text = std::fs::read_to_string(&log).unwrap();
    let failures = text
        .lines()
        .filter(|l| l.contains("full snapshot failed"))
        .count();
    assert!(failures >= 2, "expected logged retries: {text}");
    assert!(
        text.contains("retry_in=1s") && text.contains("retry_in=2s"),
        "backoff must grow: {text}"
    );
    assert!(files_in(&bk.join("v2")).is_empty());
    let etcd = Etcd::start_on(EtcdVersion::V34, c, p);
    let t = Instant::now();
    while files_in(&bk.join("v2")).is_empty() {
        assert!(
            t.elapsed() < Duration::from_secs(15),
            "no snapshot after etcd came up"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = unsafe_sigterm(child.id());
    assert!(child.wait().unwrap().success());
    drop(etcd);
}

/// The scheduled job garbage-collects: LimitBased keeps the newest --max-backups fulls.
#[test]
fn scheduled_mode_garbage_collects_limit_based() {
    let etcd = Etcd::start(EtcdVersion::V34);
    etcd.fill(50, 10);
    let tmp = tempfile::tempdir().unwrap();
    let c = tmp.path().join("bk");
    let mut child = etcdbrctl()
        .args([
            "snapshot",
            "--endpoints",
            &etcd.endpoint,
            "--schedule",
            "@every 1s",
        ])
        .args([
            "--garbage-collection-policy",
            "LimitBased",
            "--max-backups",
            "2",
            "--garbage-collection-period",
            "2s",
        ])
        .arg("--store-container")
        .arg(&c)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .map(Proc)
        .unwrap();
    std::thread::sleep(Duration::from_millis(7500));
    let _ = unsafe_sigterm(child.id());
    assert!(child.wait().unwrap().success());
    let mut taken = String::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut taken)
        .unwrap();
    let taken: Vec<&str> = taken.lines().collect();
    let left = files_in(&c.join("v2"));
    assert!(taken.len() >= 4, "{taken:?}");
    // 2 kept by the last cycle, plus at most 2 taken since (a full per second, GC every 2 s)
    assert!(
        (2..=4).contains(&left.len()) && left.len() < taken.len(),
        "GC should keep 2 fulls: {left:?}"
    );
    // the survivors are the newest ones
    let newest: Vec<String> = taken[taken.len() - left.len()..]
        .iter()
        .map(|k| k.trim_start_matches("v2/").to_string())
        .collect();
    assert_eq!(left, newest);
}

/// Delta payloads: Go's encoding/json, with the tags of etcd's mvccpb types and etcdbrctl's
/// element, reads ours and writes them back byte for byte; our leaseTTL addition is ignored.
#[test]
fn delta_format_matches_go_encoding() {
    use chrono::TimeZone;
    use etcdbr::format::delta::{DeltaBuilder, Event, EventType};
    let tmp = tempfile::tempdir().unwrap();
    let mut events = Vec::new();
    for i in 0..200i64 {
        events.push(Event {
            kind: if i % 7 == 3 {
                EventType::Delete
            } else {
                EventType::Put
            },
            key: format!("/registry/pods/ns-{i}/p\u{e9}<&>\"\\{i}").into_bytes(),
            create_revision: if i % 7 == 3 { 0 } else { 100 + i / 2 },
            mod_revision: 1_000_000_000 + i,
            version: if i % 7 == 3 { 0 } else { 1 + i % 5 },
            value: if i % 7 == 3 {
                vec![]
            } else {
                (0..(i * 37 % 600) as u32).map(|b| (b * 7) as u8).collect()
            },
            lease: if i % 5 == 0 {
                0x694d_7a2b_0c3f_1d01 + i
            } else {
                0
            },
            time: chrono::Utc
                .timestamp_opt(1_784_884_502 + i, (i as u32 * 1_234_567) % 1_000_000_000)
                .unwrap(),
            lease_ttl: None,
        });
    }
    let mut b = DeltaBuilder::default();
    for e in &events {
        b.push(e);
    }
    let ours = b.finish();
    let (inp, out) = (tmp.path().join("in"), tmp.path().join("out"));
    std::fs::write(&inp, &ours).unwrap();
    let st = std::process::Command::new(gocompat())
        .args(["delta-reencode", "-"])
        .arg(&inp)
        .arg(&out)
        .status()
        .unwrap();
    assert!(st.success());
    assert!(
        std::fs::read(&out).unwrap() == ours,
        "Go re-encodes our delta differently"
    );

    // with our lease addition: Go still reads it, and drops only the extra key
    events[0].lease_ttl = Some(3600);
    let mut b = DeltaBuilder::default();
    for e in &events {
        b.push(e);
    }
    std::fs::write(&inp, b.finish()).unwrap();
    let st = std::process::Command::new(gocompat())
        .args(["delta-reencode", "-"])
        .arg(&inp)
        .arg(&out)
        .status()
        .unwrap();
    assert!(
        st.success(),
        "etcdbrctl must accept deltas with our lease data"
    );
    assert!(std::fs::read(&out).unwrap() == ours);
    // and we read Go's output
    let parsed = etcdbr::format::delta::parse(&std::fs::read(&out).unwrap(), "go").unwrap();
    events[0].lease_ttl = None;
    assert_eq!(parsed, events);
}
