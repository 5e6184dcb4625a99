//! `etcdbrctl copy` between real stores (Local directories and moto's S3): the reference's
//! filters, `.final` stripped, bytes unchanged, already-copied objects skipped, a full's proof
//! copied with it.

use crate::common::*;
use std::path::Path;

/// Writes `name` with content derived from it; returns the content.
fn put(root: &Path, name: &str) -> Vec<u8> {
    let data: Vec<u8> = name.bytes().cycle().take(3000 + name.len() * 97).collect();
    std::fs::create_dir_all(root.join("v2")).unwrap();
    std::fs::write(root.join("v2").join(name), &data).unwrap();
    data
}

#[test]
fn copies_with_filters_and_skips_existing() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    let now = chrono::Utc::now().timestamp();
    let day = 86_400;
    // three backups: 20 days old, 3 days old, and today's (final)
    let names = [
        format!("Full-00000000-00000100-{}.gz", now - 20 * day),
        format!("Incr-00000101-00000200-{}.gz", now - 20 * day + 60),
        format!("Full-00000000-00000300-{}.gz", now - 3 * day),
        format!("Incr-00000301-00000400-{}.gz", now - 3 * day + 60),
        format!("Incr-00000401-00000500-{}.gz", now - 3 * day + 120),
        format!("Full-00000000-00000600-{}.gz.final", now - 60),
    ];
    let contents: Vec<Vec<u8>> = names.iter().map(|n| put(&src, n)).collect();
    // the newest full's proof (etcd's HashKV recorded with it) travels with it
    let proof = format!(
        r#"{{"snapshot":"{}","revision":600,"compactRevision":550,"hash":305441741,"memberId":"1","clusterId":"2"}}"#,
        names[5]
    );
    std::fs::create_dir_all(src.join("proofs")).unwrap();
    std::fs::write(
        src.join("proofs").join(format!("{}.hashkv.json", names[5])),
        &proof,
    )
    .unwrap();
    let copy = |dest: &Path, extra: &[&str]| -> String {
        run_ok(
            etcdbrctl()
                .args(["copy", "--source-store-container"])
                .arg(&src)
                .arg("--store-container")
                .arg(dest)
                .args(extra),
        )
    };
    // the newest backup only, .final stripped
    let d1 = tmp.path().join("d1");
    copy(&d1, &["--max-backups-to-copy", "1"]);
    let got = files_in(&d1.join("v2"));
    assert_eq!(got, vec![names[5].trim_end_matches(".final").to_string()]);
    assert_eq!(
        proofs_in(&d1.join("proofs")),
        vec![format!(
            "{}.hashkv.json",
            names[5].trim_end_matches(".final")
        )],
        "the proof is copied with its full"
    );
    assert_eq!(
        std::fs::read(d1.join("v2").join(&got[0])).unwrap(),
        contents[5]
    );
    // backups at most 5 days old
    let d2 = tmp.path().join("d2");
    copy(&d2, &["--max-backup-age", "5"]);
    let mut got = files_in(&d2.join("v2"));
    got.sort();
    let mut want: Vec<String> = names[2..]
        .iter()
        .map(|n| n.trim_end_matches(".final").to_string())
        .collect();
    want.sort();
    assert_eq!(got, want);

    // everything to S3; a second run copies nothing
    let moto = Moto::start("copy-dest");
    let s3 = |extra: &[&str]| -> String {
        run_ok(
            etcdbrctl()
                .env("AWS_APPLICATION_CREDENTIALS_JSON", moto.credentials_file())
                .args([
                    "copy",
                    "--source-storage-provider",
                    "Local",
                    "--source-store-container",
                ])
                .arg(&src)
                .args(["--storage-provider", "S3", "--store-container", "copy-dest"])
                .args(["--store-endpoint-override", &moto.endpoint])
                .args(extra),
        )
    };
    let out = s3(&["--max-parallel-copy-operations", "3"]);
    assert!(out.contains("copied 6 objects"), "{out}");
    let out = s3(&[]);
    assert!(
        out.contains("copied 0 objects") && out.contains("skipped 6"),
        "{out}"
    );
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let os = moto.store();
    for (n, c) in names.iter().zip(&contents) {
        use object_store::ObjectStoreExt;
        let key = format!("v2/{}", n.trim_end_matches(".final"));
        let data = rt
            .block_on(async {
                os.get(&object_store::path::Path::from(key.as_str()))
                    .await
                    .unwrap()
                    .bytes()
                    .await
            })
            .unwrap();
        assert_eq!(&data[..], &c[..], "{key}");
    }
    // waiting for a final full: present in `src`, absent in `d2` (which has no .final)
    let out = copy(
        &tmp.path().join("d4"),
        &[
            "--wait-for-final-snapshot",
            "--wait-for-final-snapshot-timeout",
            "1s",
        ],
    );
    assert!(out.contains("copied 6 objects"), "{out}");
    let t = std::time::Instant::now();
    let out = etcdbrctl()
        .args([
            "copy",
            "--wait-for-final-snapshot",
            "--wait-for-final-snapshot-timeout",
            "1s",
        ])
        .arg("--source-store-container")
        .arg(&d2)
        .arg("--store-container")
        .arg(tmp.path().join("d5"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no final full snapshot"));
    assert!(t.elapsed() < std::time::Duration::from_secs(10));

    // a bad filter value is refused
    let out = etcdbrctl()
        .args([
            "copy",
            "--max-parallel-copy-operations",
            "0",
            "--source-store-container",
        ])
        .arg(&src)
        .arg("--store-container")
        .arg(tmp.path().join("d3"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--max-parallel-copy-operations"));
}
