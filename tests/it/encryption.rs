//! Encryption at rest (age) against real etcd 3.4.23 and 3.5.1: a sidecar with a recipients
//! file stores nothing a workload wrote in clear (compression off, so a plain object would
//! show it); the chain restores with the identity to exactly the source's keys and revision;
//! a missing or wrong identity and a flipped byte in a full or a delta are errors that name
//! the object and leave nothing behind. A store that switches encryption on mid-chain, rotates
//! to a second key (both recipients, then the new one alone) restores every generation, and
//! `copy` re-encrypts the old generation for the new key; `compact` refuses to write an
//! encrypted set out in plain.

use crate::common::*;
use crate::restore::{boot, dump, restore_for, stop, succeeded};
use age::secrecy::ExposeSecret;
use etcdbr::format::layout::{Kind, Snapshot};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// A new key pair: (public key line, secret key line).
fn keypair() -> (String, String) {
    let id = age::x25519::Identity::generate();
    (
        id.to_public().to_string(),
        id.to_string().expose_secret().to_string(),
    )
}

/// A key file of `lines` (mode 0600, as an operator keeps a secret key).
fn key_file(dir: &Path, name: &str, lines: &[&str]) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let p = dir.join(name);
    std::fs::write(&p, format!("# {name}\n{}\n", lines.join("\n"))).expect("write key file");
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    p
}

/// Waits until the store's chain covers `rev` (within 60 s).
fn wait_covered(bk: &Path, rev: i64) {
    let t = Instant::now();
    while !stored_in(bk).iter().any(|s| s.last_revision >= rev) {
        assert!(
            t.elapsed() < Duration::from_secs(60),
            "the store never reached revision {rev}: {:?}",
            files_in(&bk.join("v2"))
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Puts `n` keys whose names and values carry markers a plaintext search finds.
fn workload(etcd: &Etcd, batch: &str, n: usize) {
    for i in 0..n {
        let value = format!("PLAINMARK-{batch}-{i}-{}", "v".repeat(i % 50));
        etcd.put(&format!("/enc/k-{batch}-{i}"), value.as_bytes());
    }
    let out = etcd.etcdctl(&["del", &format!("/enc/k-{batch}-0")]);
    assert!(out.status.success());
}

/// Every file below `dir`, recursively.
fn all_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).expect("read_dir").flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(all_files(&p));
        } else {
            out.push(p);
        }
    }
    out
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

/// A restore into `<dir>/<name>/data` with `extra` flags: its output and the data dir.
fn restore(
    version: EtcdVersion,
    bk: &Path,
    dir: &Path,
    name: &str,
    extra: &[&str],
) -> (std::process::Output, PathBuf) {
    let parent = dir.join(name);
    std::fs::create_dir_all(&parent).expect("mkdir");
    let data = parent.join("data");
    let out = restore_for(version, bk, &data, free_port())
        .args(extra)
        .output()
        .expect("run restore");
    (out, data)
}

/// A failed restore: its error contains `want`, and nothing but the (emptied) temporary
/// directory is left beside the data dir, which was not created.
fn refused(out: &std::process::Output, data: &Path, want: &str) -> String {
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(!out.status.success(), "the restore succeeded");
    assert!(err.contains(want), "expected {want:?} in: {err}");
    let parent = data.parent().expect("parent");
    let left: Vec<String> = files_in(parent)
        .into_iter()
        .filter(|f| f != "data.tmp" && f != "data.etcdbr.lock")
        .collect();
    assert!(left.is_empty(), "a failed restore left {left:?}");
    err
}

/// Restores `bk` with `extra` flags, boots it, and checks every key and the revision.
fn restores_equal(
    version: EtcdVersion,
    bk: &Path,
    dir: &Path,
    name: &str,
    extra: &[&str],
    want: &std::collections::BTreeMap<String, serde_json::Value>,
    want_rev: i64,
) {
    let (out, data) = restore(version, bk, dir, name, extra);
    assert!(
        out.status.success(),
        "{name}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (mut p, ep) = boot(version, &data, free_port());
    let (got, rev) = dump(version, &ep);
    stop(&mut p);
    assert_eq!(got.len(), want.len(), "{name}: number of keys");
    assert_eq!(&got, want, "{name}: keys differ from the source's");
    assert_eq!(rev, want_rev, "{name}: revision");
}

fn flip_middle_byte(file: &Path) {
    let mut b = std::fs::read(file).expect("read");
    let at = b.len() / 2;
    b[at] ^= 0x20;
    std::fs::write(file, b).expect("write");
}

fn encrypted_chain(version: EtcdVersion) {
    let etcd = Etcd::start(version);
    let dir = tempfile::tempdir().expect("tmp");
    let (bk, log) = (dir.path().join("bk"), dir.path().join("sidecar.log"));
    let (pub_a, sec_a) = keypair();
    let (_, sec_b) = keypair();
    let recipients = key_file(dir.path(), "a.pub", &[&pub_a]);
    let (id_a, id_b) = (
        key_file(dir.path(), "a.key", &[&sec_a]),
        key_file(dir.path(), "b.key", &[&sec_b]),
    );
    let (id_a, id_b) = (id_a.to_str().expect("path"), id_b.to_str().expect("path"));
    workload(&etcd, "one", 60);
    let (mut sidecar, _) = sidecar_server(
        &etcd.endpoint,
        &bk,
        &log,
        &[
            "--compress-snapshots=false",
            "--encryption-recipients-file",
            recipients.to_str().expect("path"),
        ],
    );
    wait_covered(&bk, etcd.revision());
    workload(&etcd, "two", 60);
    wait_covered(&bk, etcd.revision());
    stop(&mut sidecar);
    let (source, source_rev) = dump(version, &etcd.endpoint);

    // every object encrypted, nothing of the workload readable in any stored byte
    let snaps = stored_in(&bk);
    assert!(
        snaps.iter().any(|s| s.kind == Kind::Full) && snaps.iter().any(|s| s.kind == Kind::Incr)
    );
    for s in &snaps {
        assert!(
            s.encrypted && s.snap_name.ends_with(".age"),
            "{}",
            s.snap_name
        );
    }
    let files = all_files(&bk);
    for f in &files {
        let bytes = std::fs::read(f).expect("read");
        for needle in [&b"PLAINMARK"[..], b"/enc/k-"] {
            assert!(
                !contains(&bytes, needle),
                "{} holds {:?} in clear",
                f.display(),
                String::from_utf8_lossy(needle)
            );
        }
    }
    eprintln!("{} stored files hold no plaintext", files.len());
    // standard age: the reference tool decrypts a stored full to etcd's db and trailer
    let full = snaps.iter().rfind(|s| s.kind == Kind::Full).expect("full");
    let out = std::process::Command::new("age")
        .args(["-d", "-i", id_a])
        .arg(bk.join("v2").join(&full.snap_name))
        .output()
        .expect("run age (scripts/install-test-deps.sh installs it)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(has_valid_trailer(&out.stdout), "age -d gives the snapshot");

    let id = |f: &str| ["--encryption-identity-file".to_string(), f.to_string()];
    let with_a = id(id_a);
    let with_a: Vec<&str> = with_a.iter().map(String::as_str).collect();
    restores_equal(version, &bk, dir.path(), "ok", &with_a, &source, source_rev);

    let (out, data) = restore(version, &bk, dir.path(), "missing", &[]);
    refused(&out, &data, "--encryption-identity-file");
    let with_b = id(id_b);
    let with_b: Vec<&str> = with_b.iter().map(String::as_str).collect();
    let (out, data) = restore(version, &bk, dir.path(), "wrong", &with_b);
    refused(&out, &data, "other recipients");

    // a flipped byte in the last delta, then in the full: the object is named
    let last_delta = snaps.iter().rfind(|s| s.kind == Kind::Incr).expect("delta");
    for (what, s) in [("delta", last_delta), ("full", full)] {
        let damaged = dir.path().join(format!("bk-{what}"));
        copy_store(&bk, &damaged);
        flip_middle_byte(&damaged.join("v2").join(&s.snap_name));
        let (out, data) = restore(
            version,
            &damaged,
            dir.path(),
            &format!("flip-{what}"),
            &with_a,
        );
        refused(&out, &data, &s.snap_name);
    }

    // inspect: a stored object and the local file, with the identity
    let status = |src: &str, extra: &[&str]| {
        etcdbrctl()
            .args(["snapshot", "status", src, "-w", "json"])
            .args(["--storage-provider", "Local", "--store-container"])
            .arg(&bk)
            .args(extra)
            .output()
            .expect("status")
    };
    let local = bk.join("v2").join(&full.snap_name);
    for src in [full.snap_name.as_str(), local.to_str().expect("path")] {
        let out = succeeded(
            {
                let mut c = etcdbrctl();
                c.args(["snapshot", "status", src, "-w", "json"])
                    .args(["--storage-provider", "Local", "--store-container"])
                    .arg(&bk)
                    .args(&with_a);
                c
            },
            "snapshot status",
        );
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
        assert_eq!(
            v["revision"].as_i64(),
            Some(full.last_revision),
            "{src}: {v}"
        );
        let out = status(src, &[]);
        assert!(!out.status.success());
        assert!(String::from_utf8_lossy(&out.stderr).contains("--encryption-identity-file"));
    }

    // the restore drill reads the encrypted chain too
    let (tool, _) = version.status_tool();
    let drill = succeeded(
        {
            let mut c = etcdbrctl();
            c.args(["verify", "--restore", "--endpoints", &etcd.endpoint])
                .args(["--storage-provider", "Local", "--store-container"])
                .arg(&bk)
                .arg("--restoration-temp-snapshots-dir")
                .arg(dir.path().join("drill"))
                .arg("--etcd-binary")
                .arg(version.etcd())
                .arg("--etcd-restore-tool")
                .arg(tool)
                .args(&with_a);
            c
        },
        "verify --restore",
    );
    let said = String::from_utf8_lossy(&drill.stdout).to_string()
        + &String::from_utf8_lossy(&drill.stderr);
    assert!(said.contains("equal"), "{said}");
}

#[test]
fn encrypted_chain_etcd35() {
    encrypted_chain(EtcdVersion::V35);
}

#[test]
fn encrypted_chain_etcd34() {
    encrypted_chain(EtcdVersion::V34);
}

/// Runs a sidecar on `etcd` storing in `bk` with `extra` flags until the store covers the
/// revision after `batch` was written.
fn generation(etcd: &Etcd, bk: &Path, log: &Path, batch: &str, extra: &[&str]) {
    let (mut sidecar, port) = sidecar_server(&etcd.endpoint, bk, log, extra);
    workload(etcd, batch, 40);
    wait_covered(bk, etcd.revision());
    if batch == "rotate" {
        // a full encrypted to both keys starts the new generation
        etcd.put("/enc/before-full", b"x");
        let (code, body) = http_body(port, "GET", "/snapshot/full").expect("full");
        assert_eq!(code, 200, "{body}");
        workload(etcd, "rotate-after", 20);
        wait_covered(bk, etcd.revision());
    }
    stop(&mut sidecar);
}

/// Plain, then encrypted to A (same chain), then to A and B with a new full, then to B alone:
/// each generation restores with the keys that should open it, and only with those.
#[test]
fn rotation_and_mixed_store() {
    let version = EtcdVersion::V35;
    let etcd = Etcd::start(version);
    let dir = tempfile::tempdir().expect("tmp");
    let (bk, log) = (dir.path().join("bk"), dir.path().join("sidecar.log"));
    let ((pub_a, sec_a), (pub_b, sec_b)) = (keypair(), keypair());
    let d = dir.path();
    let s = |p: PathBuf| p.to_str().expect("path").to_string();
    let (rec_a, rec_ab, rec_b) = (
        s(key_file(d, "a.pub", &[&pub_a])),
        s(key_file(d, "ab.pub", &[&pub_a, &pub_b])),
        s(key_file(d, "b.pub", &[&pub_b])),
    );
    let (id_a, id_b, id_ab) = (
        s(key_file(d, "a.key", &[&sec_a])),
        s(key_file(d, "b.key", &[&sec_b])),
        s(key_file(d, "ab.key", &[&sec_a, &sec_b])),
    );
    let r = "--encryption-recipients-file";
    let i = "--encryption-identity-file";

    generation(&etcd, &bk, &log, "plain", &[]);
    generation(&etcd, &bk, &log, "gen-a", &[r, &rec_a]);
    let (at_a, rev_a) = dump(version, &etcd.endpoint);
    generation(&etcd, &bk, &log, "rotate", &[r, &rec_ab]);
    generation(&etcd, &bk, &log, "gen-b", &[r, &rec_b]);
    let (source, source_rev) = dump(version, &etcd.endpoint);

    let snaps = stored_in(&bk);
    let plain: Vec<&Snapshot> = snaps.iter().filter(|s| !s.encrypted).collect();
    assert!(
        plain.iter().any(|s| s.kind == Kind::Full)
            && snaps.iter().filter(|s| s.kind == Kind::Full).count() >= 2,
        "{snaps:?}"
    );
    assert!(snaps
        .iter()
        .any(|s| s.encrypted && s.kind == Kind::Incr && s.last_revision <= rev_a));

    // the latest set (the full to A and B, deltas to A and B, deltas to B): B alone opens it
    restores_equal(
        version,
        &bk,
        d,
        "latest-b",
        &[i, &id_b],
        &source,
        source_rev,
    );
    let (out, data) = restore(version, &bk, d, "latest-a", &[i, &id_a]);
    refused(&out, &data, "other recipients");

    // generation A (the plain full, deltas to A): both identities, or A; not B alone
    let to_a = rev_a.to_string();
    restores_equal(
        version,
        &bk,
        d,
        "gen-a",
        &[i, &id_ab, "--to-revision", &to_a, "--allow-rewind"],
        &at_a,
        rev_a,
    );
    let (out, data) = restore(
        version,
        &bk,
        d,
        "gen-a-b",
        &[i, &id_b, "--to-revision", &to_a, "--allow-rewind"],
    );
    refused(&out, &data, "other recipients");

    // before the old key goes: copy re-encrypts everything to B
    let copy = |dest: &Path, extra: &[&str]| {
        etcdbrctl()
            .args(["copy", "--storage-provider", "Local", "--store-container"])
            .arg(dest)
            .args([
                "--source-storage-provider",
                "Local",
                "--source-store-container",
            ])
            .arg(&bk)
            .args(extra)
            .output()
            .expect("copy")
    };
    let refused_copy = copy(&d.join("bk-nokey"), &[r, &rec_b]);
    assert!(!refused_copy.status.success());
    assert!(String::from_utf8_lossy(&refused_copy.stderr).contains(i));
    let bk2 = d.join("bk-b");
    let out = copy(&bk2, &[r, &rec_b, i, &id_ab]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let copied = stored_in(&bk2);
    assert_eq!(copied.len(), snaps.len());
    assert!(copied.iter().all(|s| s.encrypted));
    restores_equal(
        version,
        &bk2,
        d,
        "copied-gen-a",
        &[i, &id_b, "--to-revision", &to_a, "--allow-rewind"],
        &at_a,
        rev_a,
    );

    // compact never writes an encrypted set out in plain
    let (tool, _) = version.status_tool();
    let compact = |extra: &[&str]| {
        etcdbrctl()
            .args([
                "compact",
                "--storage-provider",
                "Local",
                "--store-container",
            ])
            .arg(&bk)
            .arg("--restoration-temp-snapshots-dir")
            .arg(d.join("compact"))
            .arg("--etcd-binary")
            .arg(version.etcd())
            .arg("--etcd-restore-tool")
            .arg(&tool)
            .args(extra)
            .output()
            .expect("compact")
    };
    let out = compact(&[i, &id_b]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains(r));
    let out = compact(&[i, &id_b, r, &rec_b]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let newest = stored_in(&bk)
        .into_iter()
        .rfind(|s| s.kind == Kind::Full)
        .expect("full");
    assert!(
        newest.encrypted && newest.last_revision == source_rev,
        "{newest:?}"
    );
    restores_equal(
        version,
        &bk,
        d,
        "compacted",
        &[i, &id_b],
        &source,
        source_rev,
    );
}
