//! One conformance suite run against every store provider that runs here: Local, S3 on s3s-fs
//! (it checks request signatures) and on moto (the widest API), Azure Blob on Azurite. Each
//! store gets the same checks: an upload invisible until committed and equal when read back
//! (multipart: 12 MiB in 5 MiB parts), a full's proof stored, read back and deleted with it
//! (never listed), a commit under a corrected name, an aborted upload that
//! leaves nothing, a fenced commit refused once another writer extended the chain (nothing
//! visible), foreign objects and other prefixes ignored by the listing, a prefix with spaces,
//! `%`, `+` and non-ASCII stored under exactly that key (as etcdbrctl's SDKs do), delete, and (where the server checks credentials) a credentials file rotated without a
//! restart. GCS is not in the suite: `object_store`'s GCS client fails against the available
//! emulators (see the README).
//!
//! One test runs the providers in turn; each store is given its credentials file directly
//! (`StoreConfig::credentials`), so the suite never touches the process environment.

use crate::common::*;
use etcdbr::format::layout::{Kind, Snapshot};
use etcdbr::store::credentials::Source;
use etcdbr::store::{Provider, RotatingStore, SnapStore, StoreConfig};
use futures::TryStreamExt;
use object_store::{path::Path as OsPath, ObjectStore, ObjectStoreExt, PutPayload};
use std::io::Write;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// s3s-fs on loopback, a bucket directory under its root; killed on drop.
struct S3sFs {
    _child: Proc,
    endpoint: String,
    _dir: tempfile::TempDir,
}

const S3S_KEY: &str = "conformance";
const S3S_SECRET: &str = "conformance-secret";

impl S3sFs {
    fn start(bucket: &str) -> S3sFs {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("root").join(bucket)).unwrap();
        let port = free_port();
        let bin = tools_dir().join("s3s/bin/s3s-fs");
        assert!(
            bin.exists(),
            "{} is missing: run scripts/install-test-deps.sh",
            bin.display()
        );
        let child = Proc(spawn_logged(
            Command::new(bin)
                .args(["--host", "127.0.0.1", "--port", &port.to_string()])
                .args(["--access-key", S3S_KEY, "--secret-key", S3S_SECRET])
                .arg(dir.path().join("root")),
            dir.path(),
            "s3s-fs",
        ));
        let t = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                t.elapsed() < Duration::from_secs(30),
                "s3s-fs did not start"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        S3sFs {
            _child: child,
            endpoint: format!("http://127.0.0.1:{port}"),
            _dir: dir,
        }
    }
}

fn s3_raw(endpoint: &str, bucket: &str, key: &str, secret: &str) -> Arc<dyn ObjectStore> {
    Arc::new(
        object_store::aws::AmazonS3Builder::new()
            .with_endpoint(endpoint)
            .with_bucket_name(bucket)
            .with_region("us-east-1")
            .with_access_key_id(key)
            .with_secret_access_key(secret)
            .with_allow_http(true)
            .with_virtual_hosted_style_request(false)
            .build()
            .unwrap(),
    )
}

/// A store under test: how etcdbr opens it, and a raw client of the same bucket.
struct Case {
    name: &'static str,
    cfg: StoreConfig,
    raw: Arc<dyn ObjectStore>,
    /// The credentials file and its contents with a wrong secret, when the server checks them.
    rotation: Option<(std::path::PathBuf, String)>,
}

fn config(
    provider: Provider,
    container: &str,
    endpoint: &str,
    creds: Option<&Path>,
) -> StoreConfig {
    StoreConfig {
        provider,
        container: container.to_string(),
        endpoint_override: endpoint.to_string(),
        prefix: String::new(),
        max_parallel_chunk_uploads: 5,
        min_chunk_size: 5 << 20,
        temp_dir: std::env::temp_dir(),
        env_prefix: String::new(),
        credentials: creds.map(|p| Source::JsonFile(p.to_path_buf())),
        keys: Default::default(),
    }
}

fn with_prefix(cfg: &StoreConfig, prefix: &str) -> StoreConfig {
    StoreConfig {
        prefix: prefix.to_string(),
        ..cfg.clone()
    }
}

fn data(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u32).wrapping_mul(2_654_435_761).to_le_bytes()[0] ^ seed)
        .collect()
}

fn full(last: i64) -> Snapshot {
    Snapshot::new(Kind::Full, 0, last, ".gz", false)
}

/// Writes `bytes` through an upload of `uploaded`; returns what is pending (not committed).
async fn upload(
    store: &SnapStore,
    uploaded: &Snapshot,
    bytes: &[u8],
) -> etcdbr::store::PendingUpload {
    let (mut sink, pending) = store
        .begin_upload(uploaded, bytes.len() as u64)
        .await
        .unwrap();
    let bytes = bytes.to_vec();
    tokio::task::spawn_blocking(move || {
        sink.write_all(&bytes).unwrap();
        sink.close().unwrap();
    })
    .await
    .unwrap();
    pending
}

async fn read(store: &SnapStore, s: &Snapshot) -> Vec<u8> {
    let chunks: Vec<bytes::Bytes> = store.fetch(s).await.unwrap().try_collect().await.unwrap();
    chunks.concat()
}

async fn names(store: &SnapStore) -> Vec<String> {
    store
        .list()
        .await
        .unwrap()
        .into_iter()
        .map(|s| s.snap_name)
        .collect()
}

async fn conformance(case: &Case) {
    let n = case.name;
    let store = SnapStore::open(case.cfg.clone()).await.unwrap();
    assert!(
        names(&store).await.is_empty(),
        "{n}: a new store lists nothing"
    );

    // two-phase: invisible until committed, then equal (12 MiB: three 5 MiB parts remotely)
    let a = full(100);
    let payload = data(12 << 20, 1);
    let pending = upload(&store, &a, &payload).await;
    assert!(
        names(&store).await.is_empty(),
        "{n}: visible before its commit"
    );
    let stored = store.commit(pending, &a, &a).await.unwrap();
    assert_eq!(stored.snap_name, a.snap_name);
    assert_eq!(
        names(&store).await,
        vec![a.snap_name.clone()],
        "{n}: after commit"
    );
    assert!(read(&store, &a).await == payload, "{n}: read back differs");
    assert_eq!(
        store.size(&a).await.unwrap(),
        payload.len() as u64,
        "{n}: size"
    );

    // a full's proof: stored next to it, read back equal, never listed as a snapshot
    let proof = etcdbr::format::proof::Proof {
        snapshot: a.snap_name.clone(),
        revision: 100,
        compact_revision: 90,
        hash: 0x1234_abcd,
        member_id: "8e9e05c52164694d".into(),
        cluster_id: "cdf818194e3a8c32".into(),
    };
    assert_eq!(store.proof(&a).await.unwrap(), None, "{n}: no proof yet");
    store.put_proof(&a, &proof).await.unwrap();
    assert_eq!(store.proof(&a).await.unwrap(), Some(proof), "{n}: proof");
    assert_eq!(
        names(&store).await,
        vec![a.snap_name.clone()],
        "{n}: proofs are not listed"
    );

    // a commit under a corrected name: only that name is listed
    let (lower, exact) = (full(200), full(205));
    let small = data(3 << 20, 2);
    let pending = upload(&store, &lower, &small).await;
    let stored = store.commit(pending, &lower, &exact).await.unwrap();
    assert_eq!(stored.snap_name, exact.snap_name, "{n}: renamed on commit");
    let listed = names(&store).await;
    assert!(
        listed.contains(&exact.snap_name) && !listed.contains(&lower.snap_name),
        "{n}: {listed:?}"
    );
    assert!(read(&store, &exact).await == small, "{n}: renamed content");

    // an aborted upload leaves nothing
    let aborted = full(300);
    let pending = upload(&store, &aborted, &data(1 << 20, 3)).await;
    pending.abort().await;
    assert_eq!(names(&store).await.len(), 2, "{n}: after an abort");

    // foreign objects and other prefixes are not snapshots of this store
    for key in [
        "v2/README.txt",
        "v2/Full-garbage",
        "v2/Incr-1-2",
        "elsewhere/v2/Full-00000000-00000001-1700000000.gz",
    ] {
        case.raw
            .put(&OsPath::from(key), PutPayload::from_static(b"x"))
            .await
            .unwrap();
    }
    assert_eq!(names(&store).await.len(), 2, "{n}: foreign objects listed");
    let elsewhere = SnapStore::open(with_prefix(&case.cfg, "elsewhere"))
        .await
        .unwrap();
    assert_eq!(names(&elsewhere).await.len(), 1, "{n}: another prefix");

    // an odd prefix is stored under exactly that key
    let odd_prefix = "odd prefix/%41+é";
    let odd = SnapStore::open(with_prefix(&case.cfg, odd_prefix))
        .await
        .unwrap();
    let o = full(400);
    let pending = upload(&odd, &o, b"odd").await;
    odd.commit(pending, &o, &o).await.unwrap();
    assert_eq!(
        names(&odd).await,
        vec![o.snap_name.clone()],
        "{n}: odd prefix"
    );
    assert_eq!(read(&odd, &o).await, b"odd");
    let raw_key = format!("{odd_prefix}/v2/{}", o.snap_name);
    let got = case
        .raw
        .get(&OsPath::parse(&raw_key).unwrap_or_else(|_| OsPath::from(raw_key.as_str())))
        .await;
    assert!(
        got.is_ok(),
        "{n}: no object at {raw_key:?}: {:?}",
        got.err()
    );

    // a fenced commit: refused, and nothing visible, once another writer extended the chain
    let chain = SnapStore::open(with_prefix(&case.cfg, "chain"))
        .await
        .unwrap();
    let base = full(10);
    let pending = upload(&chain, &base, b"base").await;
    chain.commit_fenced(pending, &base, 0).await.unwrap();
    let late = Snapshot::new(Kind::Incr, 11, 20, ".gz", false);
    let pending_late = upload(&chain, &late, &data(6 << 20, 4)).await;
    let other = Snapshot::new(Kind::Incr, 11, 15, ".gz", false);
    let pending = upload(&chain, &other, b"other writer").await;
    chain.commit_fenced(pending, &other, 10).await.unwrap();
    let fenced = chain
        .commit_fenced(pending_late, &late, 10)
        .await
        .expect_err("a commit after another writer's");
    assert!(
        matches!(fenced, etcdbr::Error::Fenced(_)),
        "{n}: fenced: {fenced}"
    );
    assert_eq!(
        names(&chain).await,
        vec![base.snap_name.clone(), other.snap_name.clone()],
        "{n}: after a fenced commit"
    );

    // delete
    store.delete(&a).await.unwrap();
    assert_eq!(
        names(&store).await,
        vec![exact.snap_name.clone()],
        "{n}: after delete"
    );
    assert_eq!(
        store.proof(&a).await.unwrap(),
        None,
        "{n}: deleted with its full"
    );
    let gone = store.fetch(&a).await.err().expect("a deleted object");
    assert!(
        gone.to_string().contains(&a.snap_name),
        "{n}: the error names the object: {gone}"
    );

    // credentials rotated without a restart: a wrong secret is refused with the bucket named,
    // the corrected file is picked up by the same RotatingStore
    if let Some((file, wrong)) = &case.rotation {
        let good = std::fs::read_to_string(file).unwrap();
        let mut rotating = RotatingStore::new(case.cfg.clone());
        assert_eq!(rotating.get().await.unwrap().list().await.unwrap().len(), 1);
        std::fs::write(file, wrong).unwrap();
        bump_mtime(file, 1);
        let refused = rotating.get().await.expect_err("a wrong secret");
        assert!(
            refused.to_string().contains(&case.cfg.container),
            "{n}: the error names the bucket: {refused}"
        );
        std::fs::write(file, &good).unwrap();
        bump_mtime(file, 2);
        assert_eq!(
            rotating.get().await.unwrap().list().await.unwrap().len(),
            1,
            "{n}: after the rotation"
        );
    }
    eprintln!("{n}: conformant");
}

/// Moves the file's mtime `secs` into the future (a rewrite within the same second must count
/// as a change; the store compares modification times).
fn bump_mtime(file: &Path, secs: u64) {
    let f = std::fs::File::options().write(true).open(file).unwrap();
    f.set_modified(std::time::SystemTime::now() + Duration::from_secs(secs))
        .unwrap();
}

#[test]
fn every_store_conforms() {
    let tmp = tempfile::tempdir().unwrap();
    let local_dir = tmp.path().join("local");
    std::fs::create_dir_all(&local_dir).unwrap();
    let s3s = S3sFs::start("conf");
    let moto = Moto::start("conf");
    let azurite = Azurite::start("conf");

    let s3s_creds = tmp.path().join("s3s.json");
    let creds = |secret: &str| {
        format!(
            r#"{{"region":"us-east-1","accessKeyID":"{S3S_KEY}","secretAccessKey":"{secret}"}}"#
        )
    };
    std::fs::write(&s3s_creds, creds(S3S_SECRET)).unwrap();
    let azure_creds = azurite.credentials_file();
    let wrong_azure = format!(
        r#"{{"storageAccount":"{AZURITE_ACCOUNT}","storageKey":"{}"}}"#,
        "d3Jvbmcga2V5IGZvciB0aGUgcm90YXRpb24gdGVzdA=="
    );
    let moto_creds = moto.credentials_file();
    let cases = [
        Case {
            name: "Local",
            cfg: config(Provider::Local, local_dir.to_str().unwrap(), "", None),
            raw: Arc::new(
                object_store::local::LocalFileSystem::new_with_prefix(&local_dir).unwrap(),
            ),
            rotation: None,
        },
        Case {
            name: "S3 (s3s-fs)",
            cfg: config(Provider::S3, "conf", &s3s.endpoint, Some(&s3s_creds)),
            raw: s3_raw(&s3s.endpoint, "conf", S3S_KEY, S3S_SECRET),
            rotation: Some((s3s_creds.clone(), creds("not-the-secret"))),
        },
        Case {
            name: "S3 (moto)",
            cfg: config(Provider::S3, "conf", &moto.endpoint, Some(&moto_creds)),
            raw: moto.store(),
            // moto accepts any secret
            rotation: None,
        },
        Case {
            name: "ABS (Azurite)",
            cfg: config(Provider::Abs, "conf", &azurite.endpoint, Some(&azure_creds)),
            raw: azurite.store(),
            rotation: Some((azure_creds.clone(), wrong_azure)),
        },
    ];
    let rt = rt();
    for case in &cases {
        rt.block_on(conformance(case));
    }
}
