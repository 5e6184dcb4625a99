//! The chart's StatefulSet run as local processes: `chart/` is rendered (scripts/chart-render,
//! the renderer `scripts/test-chart.py` uses), and each pod runs the rendered containers (the
//! etcd container's command, i.e. `scripts/etcd-bootstrap.sh`; the sidecar's args and env; the
//! ConfigMap's etcd configuration) with the same ports in every pod.
//!
//! What stands in for Kubernetes, and nothing else is added:
//! * **pod network**: each pod has its own loopback address (127.0.N.1, .2, .3); the rendered
//!   strings are read through the pod's view: `0.0.0.0` and `localhost` are the pod's address,
//!   the headless service's per-pod names are the pods' addresses, and the client Service is a
//!   TCP proxy at 127.0.N.10 that forwards to ready pods (readiness from the rendered probes).
//!   The sidecar binds its API to the pod's address (`ETCDBR_SERVER_HOST`), as its own network
//!   namespace would make `0.0.0.0` mean;
//! * **volumes**: the mount paths (`/var/etcd/data`, `/var/etcd/backups`, `/var/etcd/run`, the
//!   ConfigMap, the credentials Secret, `/tmp`) are directories of the pod (`$TMPDIR` for
//!   `/tmp`); the persistent volumes outlive the pod, the emptyDirs do not;
//! * **image**: `/usr/local/bin/{etcd,etcdutl,etcd-bootstrap.sh}` are the test's etcd and the
//!   repository's script; the sidecar is the etcdbrctl built by cargo;
//! * **kubelet**: a container that exits is started again (after 1 s, not kubelet's growing
//!   back-off, to keep the tests short); a pod deletion sends SIGTERM to each container's first
//!   process, then SIGKILL to its process group after the grace period.

use crate::common::*;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub const RELEASE: &str = "etcd-main";
pub const NAMESPACE: &str = "shoot--prod";
const SECRET: &str = "etcd-backup-s3";

/// One container of the rendered pod template.
#[derive(Debug, Clone)]
pub struct Container {
    pub argv: Vec<String>,
    pub env: Vec<(String, String)>,
}

/// What the chart renders for the pods.
#[derive(Debug, Clone)]
pub struct Rendered {
    pub replicas: usize,
    pub etcd: Container,
    pub backup: Container,
    pub etcd_config: String,
    pub client_port: u16,
    pub metrics_port: u16,
    pub backup_port: u16,
    /// The API token of the generated Secret (mounted at `/var/etcd/api-token`).
    pub api_token: Option<String>,
    /// The container ports the client Service publishes.
    pub client_service_ports: Vec<u16>,
}

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub fn merge(base: &mut Value, over: &Value) {
    match (base, over) {
        (Value::Object(b), Value::Object(o)) => {
            for (k, v) in o {
                match b.get_mut(k) {
                    Some(bv) if bv.is_object() && v.is_object() => merge(bv, v),
                    _ => {
                        b.insert(k.clone(), v.clone());
                    }
                }
            }
        }
        (b, o) => *b = o.clone(),
    }
}

/// Renders `chart/` with its `values.yaml` and `over` merged in.
pub fn render(over: &Value) -> Rendered {
    let values: Value = serde_yaml_ng::from_str(
        &std::fs::read_to_string(repo().join("chart/values.yaml")).expect("values.yaml"),
    )
    .expect("values.yaml is YAML");
    let mut values = values;
    merge(&mut values, over);
    let chart: Value = serde_yaml_ng::from_str(
        &std::fs::read_to_string(repo().join("chart/Chart.yaml")).expect("Chart.yaml"),
    )
    .expect("Chart.yaml");
    let ctx = json!({
        "Values": values,
        "Release": {"Name": RELEASE, "Namespace": NAMESPACE, "Service": "Helm"},
        "Chart": {"Name": chart["name"], "Version": chart["version"], "AppVersion": chart["appVersion"]},
    });
    let renderer = tools_dir().join("bin/chart-render");
    assert!(
        renderer.exists(),
        "{} is missing: run scripts/install-test-deps.sh",
        renderer.display()
    );
    let mut child = Command::new(&renderer)
        .arg(repo().join("chart"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("chart-render");
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().expect("stdin");
        stdin
            .write_all(ctx.to_string().as_bytes())
            .expect("write ctx");
    }
    let out = child.wait_with_output().expect("chart-render");
    assert!(
        out.status.success(),
        "render: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).expect("utf8");
    let mut sts = None;
    let mut conf = None;
    let mut api_token = None;
    let mut client_service = None;
    for doc in serde_yaml_ng::Deserializer::from_str(&text) {
        use serde::Deserialize;
        let v = Value::deserialize(doc).expect("manifest is YAML");
        match v["kind"].as_str() {
            Some("StatefulSet") => sts = Some(v),
            Some("ConfigMap") => conf = Some(v),
            Some("Secret") if v["metadata"]["name"] == format!("{RELEASE}-api-token") => {
                use base64::Engine;
                let b64 = v["data"]["token"].as_str().expect("token");
                let raw = base64::engine::general_purpose::STANDARD
                    .decode(b64)
                    .expect("base64 token");
                api_token = Some(String::from_utf8(raw).expect("utf8 token"));
            }
            Some("Service") if v["metadata"]["name"] == format!("{RELEASE}-client") => {
                client_service = Some(v)
            }
            _ => {}
        }
    }
    let sts = sts.expect("a StatefulSet");
    let conf = conf.expect("a ConfigMap");
    let containers = sts["spec"]["template"]["spec"]["containers"]
        .as_array()
        .expect("containers");
    let container = |name: &str| -> Container {
        let c = containers
            .iter()
            .find(|c| c["name"] == name)
            .unwrap_or_else(|| panic!("container {name}"));
        let strs = |v: &Value| -> Vec<String> {
            v.as_array()
                .map(|a| {
                    a.iter()
                        .map(|s| s.as_str().expect("string").to_string())
                        .collect()
                })
                .unwrap_or_default()
        };
        let mut argv = strs(&c["command"]);
        argv.extend(strs(&c["args"]));
        if c["command"].is_null() {
            // the image's entrypoint
            argv.insert(0, "/usr/local/bin/etcdbrctl".into());
        }
        let env = c["env"]
            .as_array()
            .map(|a| {
                a.iter()
                    .map(|e| {
                        let name = e["name"].as_str().expect("env name").to_string();
                        let value = if let Some(v) = e["value"].as_str() {
                            v.to_string()
                        } else {
                            match e["valueFrom"]["fieldRef"]["fieldPath"].as_str() {
                                Some("metadata.name") => "$(POD_NAME)".into(),
                                Some("metadata.namespace") => NAMESPACE.into(),
                                other => panic!("env {name}: unsupported source {other:?}"),
                            }
                        };
                        (name, value)
                    })
                    .collect()
            })
            .unwrap_or_default();
        Container { argv, env }
    };
    let port = |c: &str, name: &str| -> u16 {
        containers
            .iter()
            .find(|x| x["name"] == c)
            .and_then(|x| x["ports"].as_array())
            .and_then(|p| p.iter().find(|p| p["name"] == name))
            .and_then(|p| p["containerPort"].as_u64())
            .unwrap_or_else(|| panic!("port {name}")) as u16
    };
    let client_service_ports = client_service.expect("a client Service")["spec"]["ports"]
        .as_array()
        .expect("ports")
        .iter()
        .map(|p| {
            let target = p["targetPort"].as_str().expect("named target port");
            let c = if target == "backup" { "backup" } else { "etcd" };
            port(c, target)
        })
        .collect();
    Rendered {
        api_token,
        client_service_ports,
        replicas: sts["spec"]["replicas"].as_u64().expect("replicas") as usize,
        etcd: container("etcd"),
        backup: container("backup"),
        etcd_config: conf["data"]["etcd.conf.yaml"]
            .as_str()
            .expect("etcd.conf.yaml")
            .to_string(),
        client_port: port("etcd", "client"),
        metrics_port: port("etcd", "metrics"),
        backup_port: port("backup", "backup"),
    }
}

/// The values every scenario uses on top of the chart's defaults: 3 members, backups in S3
/// (moto, through the credentials Secret), deltas every second so that tests stay short.
pub fn values(s3_endpoint: &str, bucket: &str) -> Value {
    json!({
        "replicas": 3,
        "backup": {
            "storageProvider": "S3",
            "storageContainer": bucket,
            "storeEndpointOverride": s3_endpoint,
            "credentialsSecret": SECRET,
            "deltaSnapshotPeriod": "1s",
            "garbageCollectionPeriod": "1h",
        },
    })
}

static SUBNET: AtomicU8 = AtomicU8::new(0);

fn subnet() -> u8 {
    // distinct per test of this binary and per run (a leftover of a killed run keeps its own)
    let n = SUBNET.fetch_add(1, Ordering::SeqCst) as u32;
    (20 + (std::process::id() * 7 + n * 13) % 200) as u8
}

/// A running container: its first process leads a process group of its own.
struct Running {
    child: Child,
}

struct ContainerState {
    running: Option<Running>,
    restarts: u32,
    /// The kubelet does not start it again while set (a test changes the volume meanwhile).
    held: bool,
}

/// One pod: its address, volumes and containers.
pub struct Pod {
    pub index: usize,
    pub name: String,
    pub root: PathBuf,
    containers: [Arc<Mutex<ContainerState>>; 2],
    stop: Arc<AtomicBool>,
    kubelets: Vec<std::thread::JoinHandle<()>>,
}

impl Pod {
    /// SIGKILL to every process of every container (the kubelets stop once `stop` is set).
    fn kill_all(&self) {
        for c in &self.containers {
            if let Ok(s) = c.lock() {
                if let Some(r) = &s.running {
                    signal_group(r.child.id(), libc::SIGKILL);
                }
            }
        }
    }

    /// Stops the kubelets for good and waits for them.
    fn finish(self) {
        self.stop.store(true, Ordering::SeqCst);
        self.kill_all();
        for k in self.kubelets {
            let _ = k.join();
        }
    }

    pub fn log(&self, container: &str) -> String {
        std::fs::read_to_string(self.root.join(format!("{container}.log"))).unwrap_or_default()
    }

    pub fn restarts(&self, container: usize) -> u32 {
        self.containers[container]
            .lock()
            .map(|s| s.restarts)
            .unwrap_or(0)
    }
}

pub const ETCD: usize = 0;
pub const BACKUP: usize = 1;

/// The StatefulSet: pods, the client Service and the rendered spec.
pub struct StatefulSet {
    pub spec: Rendered,
    pub version: EtcdVersion,
    pub dir: tempfile::TempDir,
    pub net: u8,
    pub pods: Vec<Option<Pod>>,
    pub credentials: PathBuf,
    service_stop: Arc<AtomicBool>,
    ready: Arc<Mutex<Vec<bool>>>,
    service: Vec<std::thread::JoinHandle<()>>,
}

fn signal_group(pid: u32, sig: i32) {
    // SAFETY: kill(2) on a process group we created; no memory is shared
    unsafe {
        libc::kill(-(pid as i32), sig);
    }
}

fn signal_one(pid: u32, sig: i32) {
    // SAFETY: as above, for one process
    unsafe {
        libc::kill(pid as i32, sig);
    }
}

impl StatefulSet {
    pub fn new(version: EtcdVersion, over: &Value) -> StatefulSet {
        let spec = render(over);
        let dir = tempfile::tempdir().expect("temp dir");
        let credentials = dir.path().join("secret");
        std::fs::create_dir_all(&credentials).expect("secret dir");
        for (k, v) in [
            ("region", "us-east-1"),
            ("accessKeyID", "testing"),
            ("secretAccessKey", "testing"),
            ("s3ForcePathStyle", "true"),
        ] {
            std::fs::write(credentials.join(k), v).expect("secret file");
        }
        let n = spec.replicas;
        let mut set = StatefulSet {
            spec,
            version,
            dir,
            net: subnet(),
            pods: (0..n).map(|_| None).collect(),
            credentials,
            service_stop: Arc::new(AtomicBool::new(false)),
            ready: Arc::new(Mutex::new(vec![false; n])),
            service: Vec::new(),
        };
        set.start_service();
        set
    }

    pub fn ip(&self, i: usize) -> String {
        format!("127.0.{}.{}", self.net, i + 1)
    }

    pub fn service_ip(&self) -> String {
        format!("127.0.{}.10", self.net)
    }

    pub fn pod_name(&self, i: usize) -> String {
        format!("{RELEASE}-{i}")
    }

    /// A rendered string as pod `i` sees it (its network, its volumes, its image).
    pub fn pod_view(&self, s: &str, i: usize) -> String {
        let root = self.dir.path().join(self.pod_name(i));
        let (etcd, tool) = match self.version {
            EtcdVersion::V35 => (self.version.etcd(), self.version.status_tool().0),
            EtcdVersion::V34 => (self.version.etcd(), self.version.etcdctl()),
        };
        let mut s = s
            .replace("$(POD_NAME)", &self.pod_name(i))
            .replace("$(POD_NAMESPACE)", NAMESPACE);
        for j in 0..self.spec.replicas {
            s = s.replace(
                &format!("{RELEASE}-{j}.{RELEASE}-peer.{NAMESPACE}.svc"),
                &self.ip(j),
            );
        }
        let script = repo().join("scripts/etcd-bootstrap.sh");
        let sidecar = PathBuf::from(env!("CARGO_BIN_EXE_etcdbrctl"));
        s.replace(
            &format!("{RELEASE}-client.{NAMESPACE}.svc"),
            &self.service_ip(),
        )
        .replace("0.0.0.0", &self.ip(i))
        .replace("//localhost:", &format!("//{}:", self.ip(i)))
        .replace("/var/etcd/data", &root.join("data").to_string_lossy())
        .replace("/var/etcd/backups", &root.join("backups").to_string_lossy())
        .replace("/var/etcd/run", &root.join("run").to_string_lossy())
        .replace("/var/etcd/config", &root.join("config").to_string_lossy())
        .replace("/var/etcd-backup", &root.join("secret").to_string_lossy())
        .replace(
            "/var/etcd/encryption",
            &root.join("encryption").to_string_lossy(),
        )
        .replace(
            "/var/etcd/api-token",
            &root.join("api-token").to_string_lossy(),
        )
        .replace(
            "/usr/local/bin/etcd-bootstrap.sh",
            &script.to_string_lossy(),
        )
        .replace("/usr/local/bin/etcdbrctl", &sidecar.to_string_lossy())
        .replace("/usr/local/bin/etcdutl", &tool.to_string_lossy())
        .replace("/usr/local/bin/etcd", &etcd.to_string_lossy())
    }

    /// Creates pod `i` (its volumes: the data volume is kept if it exists) and starts its
    /// containers.
    pub fn start_pod(&mut self, i: usize) {
        assert!(self.pods[i].is_none(), "pod {i} exists");
        let name = self.pod_name(i);
        let root = self.dir.path().join(&name);
        for d in ["data", "backups", "config", "secret"] {
            std::fs::create_dir_all(root.join(d)).expect("volume");
        }
        // emptyDirs are new with each pod
        for d in ["run", "tmp"] {
            let _ = std::fs::remove_dir_all(root.join(d));
            std::fs::create_dir_all(root.join(d)).expect("emptyDir");
        }
        std::fs::write(
            root.join("config/etcd.conf.yaml"),
            self.pod_view(&self.spec.etcd_config, i),
        )
        .expect("configmap");
        for e in std::fs::read_dir(&self.credentials).expect("secret") {
            let e = e.expect("entry");
            std::fs::copy(e.path(), root.join("secret").join(e.file_name())).expect("secret");
        }
        // the encryption Secrets, when the chart mounts them: the tests' key pair
        let (public, secret) = test_age_keys();
        for (flag, file, content, mode) in [
            ("--encryption-recipients-file=", "recipients", public, 0o440),
            ("--encryption-identity-file=", "identity", secret, 0o400),
        ] {
            use std::os::unix::fs::PermissionsExt;
            if !self.spec.backup.argv.iter().any(|a| a.starts_with(flag)) {
                continue;
            }
            let dir = root.join("encryption").join(file);
            std::fs::create_dir_all(&dir).expect("encryption volume");
            let f = dir.join(format!("{file}.txt"));
            std::fs::write(&f, format!("{content}\n")).expect("key file");
            std::fs::set_permissions(&f, std::fs::Permissions::from_mode(mode)).expect("mode");
        }
        if let Some(token) = &self.spec.api_token {
            use std::os::unix::fs::PermissionsExt;
            let dir = root.join("api-token");
            std::fs::create_dir_all(&dir).expect("api-token volume");
            let f = dir.join("token");
            std::fs::write(&f, token).expect("token");
            std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o440)).expect("mode");
        }
        let stop = Arc::new(AtomicBool::new(false));
        let states = [
            Arc::new(Mutex::new(ContainerState {
                running: None,
                restarts: 0,
                held: false,
            })),
            Arc::new(Mutex::new(ContainerState {
                running: None,
                restarts: 0,
                held: false,
            })),
        ];
        let mut kubelets = Vec::new();
        for (c, spec) in [(ETCD, &self.spec.etcd), (BACKUP, &self.spec.backup)] {
            let argv: Vec<String> = spec.argv.iter().map(|a| self.pod_view(a, i)).collect();
            let mut env: Vec<(String, String)> = spec
                .env
                .iter()
                .map(|(k, v)| (k.clone(), self.pod_view(v, i)))
                .collect();
            env.push(("PATH".into(), std::env::var("PATH").unwrap_or_default()));
            env.push((
                "TMPDIR".into(),
                root.join(if c == BACKUP { "tmp" } else { "run" })
                    .to_string_lossy()
                    .into(),
            ));
            if c == BACKUP {
                // the pod's own network namespace makes 0.0.0.0 its address
                env.push(("ETCDBR_SERVER_HOST".into(), self.ip(i)));
                env.push(("RUST_LOG".into(), "info".into()));
            }
            let log = root.join(format!("{}.log", if c == ETCD { "etcd" } else { "backup" }));
            let state = states[c].clone();
            let stop = stop.clone();
            kubelets.push(std::thread::spawn(move || {
                kubelet(argv, env, log, state, stop)
            }));
        }
        self.pods[i] = Some(Pod {
            index: i,
            name,
            root,
            containers: states,
            stop,
            kubelets,
        });
    }

    pub fn pod(&self, i: usize) -> &Pod {
        self.pods[i].as_ref().expect("pod running")
    }

    /// SIGKILL to a container's processes (its kubelet starts it again).
    pub fn kill_container(&self, i: usize, c: usize) {
        let pod = self.pod(i);
        if let Ok(s) = pod.containers[c].lock() {
            if let Some(r) = &s.running {
                signal_group(r.child.id(), libc::SIGKILL);
            }
        }
    }

    /// `kubectl exec` into a container of pod `i`: `argv` (rendered paths allowed) with the
    /// container's environment; returns the exit status and the output.
    pub fn exec(&self, i: usize, c: usize, argv: &[&str]) -> (bool, String) {
        let spec = if c == ETCD {
            &self.spec.etcd
        } else {
            &self.spec.backup
        };
        let argv: Vec<String> = argv.iter().map(|a| self.pod_view(a, i)).collect();
        let out = Command::new(&argv[0])
            .args(&argv[1..])
            .env_clear()
            .envs(
                spec.env
                    .iter()
                    .map(|(k, v)| (k.clone(), self.pod_view(v, i))),
            )
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .output()
            .expect("exec");
        (
            out.status.success(),
            format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        )
    }

    /// SIGKILL to a container, which is not started again until [`Self::release`].
    pub fn kill_and_hold(&self, i: usize, c: usize) {
        let pod = self.pod(i);
        if let Ok(mut s) = pod.containers[c].lock() {
            s.held = true;
            if let Some(r) = &s.running {
                signal_group(r.child.id(), libc::SIGKILL);
            }
        }
        let t = Instant::now();
        while pod.containers[c]
            .lock()
            .map(|s| s.running.is_some())
            .unwrap_or(false)
        {
            assert!(
                t.elapsed() < Duration::from_secs(10),
                "container did not die"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn release(&self, i: usize, c: usize) {
        if let Ok(mut s) = self.pod(i).containers[c].lock() {
            s.held = false;
        }
    }

    /// Deletes pod `i` as the API server does (SIGTERM, grace, SIGKILL); its data volume stays.
    pub fn delete_pod(&mut self, i: usize, grace: Duration) {
        let Some(pod) = self.pods[i].take() else {
            return;
        };
        pod.stop.store(true, Ordering::SeqCst);
        for c in &pod.containers {
            if let Ok(s) = c.lock() {
                if let Some(r) = &s.running {
                    signal_one(r.child.id(), libc::SIGTERM);
                }
            }
        }
        let t = Instant::now();
        while t.elapsed() < grace
            && pod
                .containers
                .iter()
                .any(|c| c.lock().map(|s| s.running.is_some()).unwrap_or(false))
        {
            std::thread::sleep(Duration::from_millis(50));
        }
        pod.finish();
        if let Ok(mut r) = self.ready.lock() {
            r[i] = false;
        }
    }

    /// Every pod's readiness, as the rendered probes define it (etcd: GET /health on the metrics
    /// port; backup: its port accepts).
    fn start_service(&mut self) {
        let n = self.spec.replicas;
        let ips: Vec<String> = (0..n).map(|i| self.ip(i)).collect();
        let (metrics, backup) = (self.spec.metrics_port, self.spec.backup_port);
        let ready = self.ready.clone();
        let stop = self.service_stop.clone();
        self.service.push(std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                for (i, ip) in ips.iter().enumerate() {
                    let ok = health_ok(ip, metrics)
                        && std::net::TcpStream::connect_timeout(
                            &format!("{ip}:{backup}").parse().expect("addr"),
                            Duration::from_millis(300),
                        )
                        .is_ok();
                    if let Ok(mut r) = ready.lock() {
                        r[i] = ok;
                    }
                }
                std::thread::sleep(Duration::from_millis(500));
            }
        }));
        for port in self.spec.client_service_ports.clone() {
            let addr = format!("{}:{port}", self.service_ip());
            let listener = std::net::TcpListener::bind(&addr).expect("bind the client service");
            listener.set_nonblocking(true).expect("nonblocking");
            let ips: Vec<String> = (0..n).map(|i| self.ip(i)).collect();
            let ready = self.ready.clone();
            let stop = self.service_stop.clone();
            self.service.push(std::thread::spawn(move || {
                let mut next = 0usize;
                while !stop.load(Ordering::Relaxed) {
                    let Ok((conn, _)) = listener.accept() else {
                        std::thread::sleep(Duration::from_millis(20));
                        continue;
                    };
                    let backends: Vec<usize> = ready
                        .lock()
                        .map(|r| (0..r.len()).filter(|i| r[*i]).collect())
                        .unwrap_or_default();
                    if backends.is_empty() {
                        continue; // no endpoint: the connection is refused (closed)
                    }
                    next = next.wrapping_add(1);
                    let ip = &ips[backends[next % backends.len()]];
                    let _ = conn.set_nonblocking(false);
                    if let Ok(up) = std::net::TcpStream::connect_timeout(
                        &format!("{ip}:{port}").parse().expect("addr"),
                        Duration::from_secs(1),
                    ) {
                        pipe(conn, up);
                    }
                }
            }));
        }
    }

    /// GET on pod `i`'s sidecar API, with the chart's token when `authorized`.
    pub fn api(&self, i: usize, path: &str, authorized: bool) -> Option<(u16, String)> {
        let token = self.spec.api_token.as_deref().filter(|_| authorized);
        http_get_as(
            &self.ip(i),
            self.spec.backup_port,
            path,
            token,
            Duration::from_secs(60),
        )
    }

    /// Whether pod `i` is ready.
    pub fn is_ready(&self, i: usize) -> bool {
        self.ready.lock().map(|r| r[i]).unwrap_or(false)
    }

    /// The endpoints of the pods that exist.
    pub fn endpoints(&self) -> Vec<String> {
        (0..self.pods.len())
            .filter(|i| self.pods[*i].is_some())
            .map(|i| format!("http://{}:{}", self.ip(i), self.spec.client_port))
            .collect()
    }

    pub fn etcdctl(&self, eps: &[String], args: &[&str]) -> std::process::Output {
        clean_cmd(&self.version.etcdctl())
            .args(["--endpoints", &eps.join(","), "--command-timeout=3s"])
            .args(args)
            .output()
            .expect("etcdctl")
    }

    /// The member list as pod `via` sees it: (id, name, learner) of each member.
    pub fn members(&self, via: usize) -> Option<Vec<(u64, String, bool)>> {
        let out = self.etcdctl(
            &[format!("http://{}:{}", self.ip(via), self.spec.client_port)],
            &["member", "list", "-w", "json"],
        );
        let v: Value = serde_json::from_slice(&out.stdout).ok()?;
        Some(
            v["members"]
                .as_array()?
                .iter()
                .map(|m| {
                    (
                        m["ID"].as_u64().unwrap_or(0),
                        m["name"].as_str().unwrap_or("").to_string(),
                        m["isLearner"].as_bool().unwrap_or(false),
                    )
                })
                .collect(),
        )
    }

    /// Waits until every pod is ready and etcd lists exactly the chart's members as voters.
    pub fn wait_healthy(&self, limit: Duration) -> Duration {
        let t = Instant::now();
        loop {
            let all_ready =
                (0..self.pods.len()).all(|i| self.pods[i].is_some() && self.is_ready(i));
            if all_ready {
                if let Some(m) = self.members(0) {
                    let mut names: Vec<String> = m
                        .iter()
                        .filter(|(_, _, learner)| !learner)
                        .map(|(_, n, _)| n.clone())
                        .collect();
                    names.sort();
                    let want: Vec<String> =
                        (0..self.spec.replicas).map(|i| self.pod_name(i)).collect();
                    if names == want && m.len() == want.len() {
                        return t.elapsed();
                    }
                }
            }
            if t.elapsed() > limit {
                panic!(
                    "the cluster is not healthy after {limit:?}\n{}",
                    self.diagnose()
                );
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    /// The end of every container's log, for failure messages.
    pub fn diagnose(&self) -> String {
        let mut s = String::new();
        for pod in self.pods.iter().flatten() {
            for c in ["etcd", "backup"] {
                let log = pod.log(c);
                let tail: Vec<&str> = log.lines().rev().take(25).collect();
                s.push_str(&format!(
                    "==== {} {c} (ready {}, restarts {}) ====\n{}\n",
                    pod.name,
                    self.is_ready(pod.index),
                    pod.restarts(if c == "etcd" { ETCD } else { BACKUP }),
                    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                ));
            }
        }
        s
    }
}

impl Drop for StatefulSet {
    fn drop(&mut self) {
        for i in 0..self.pods.len() {
            if let Some(pod) = self.pods[i].take() {
                pod.finish();
            }
        }
        self.service_stop.store(true, Ordering::SeqCst);
        for h in self.service.drain(..) {
            let _ = h.join();
        }
        if std::env::var_os("ETCDBR_KEEP_PODS").is_some() {
            let keep = self.dir.path().to_path_buf();
            eprintln!("pods kept in {}", keep.display());
            std::mem::forget(std::mem::replace(
                &mut self.dir,
                tempfile::tempdir().expect("temp"),
            ));
        }
    }
}

fn health_ok(ip: &str, port: u16) -> bool {
    match http_get(ip, port, "/health") {
        Some((200, body)) => body.contains("\"health\":\"true\""),
        _ => false,
    }
}

/// A bounded GET; (status, body).
pub fn http_get(ip: &str, port: u16, path: &str) -> Option<(u16, String)> {
    http_get_as(ip, port, path, None, Duration::from_secs(2))
}

/// A bounded GET with an optional bearer token; (status, body).
pub fn http_get_as(
    ip: &str,
    port: u16,
    path: &str,
    token: Option<&str>,
    limit: Duration,
) -> Option<(u16, String)> {
    use std::io::{Read, Write};
    let addr = format!("{ip}:{port}").parse().ok()?;
    let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(300)).ok()?;
    s.set_read_timeout(Some(limit)).ok()?;
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {ip}\r\n{auth}Connection: close\r\n\r\n"
    )
    .ok()?;
    let mut buf = String::new();
    s.read_to_string(&mut buf).ok()?;
    let code = buf.split_whitespace().nth(1)?.parse().ok()?;
    let body = buf.split_once("\r\n\r\n").map(|x| x.1).unwrap_or("");
    Some((code, body.to_string()))
}

fn pipe(a: std::net::TcpStream, b: std::net::TcpStream) {
    let (a2, b2) = match (a.try_clone(), b.try_clone()) {
        (Ok(a2), Ok(b2)) => (a2, b2),
        _ => return,
    };
    let copy = |mut from: std::net::TcpStream, mut to: std::net::TcpStream| {
        std::thread::spawn(move || {
            let _ = std::io::copy(&mut from, &mut to);
            let _ = to.shutdown(std::net::Shutdown::Write);
        })
    };
    copy(a, b2);
    copy(b, a2);
}

/// Runs one container until its pod is deleted, starting it again whenever it exits.
fn kubelet(
    argv: Vec<String>,
    env: Vec<(String, String)>,
    log: PathBuf,
    state: Arc<Mutex<ContainerState>>,
    stop: Arc<AtomicBool>,
) {
    use std::os::unix::process::CommandExt;
    while !stop.load(Ordering::SeqCst) {
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .expect("container log");
        let mut cmd = Command::new(&argv[0]);
        cmd.args(&argv[1..])
            .env_clear()
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(out.try_clone().expect("log"))
            .stderr(out)
            .process_group(0);
        let child = match cmd.spawn() {
            Ok(c) => c,
            Err(e) => panic!("start {}: {e}", argv[0]),
        };
        if let Ok(mut s) = state.lock() {
            s.running = Some(Running { child });
        }
        // wait without holding the lock (kills take it)
        loop {
            let done = state.lock().ok().and_then(|mut s| {
                s.running
                    .as_mut()
                    .and_then(|r| r.child.try_wait().ok().flatten())
            });
            if done.is_some() {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        if let Ok(mut s) = state.lock() {
            let pid = s.running.as_ref().map(|r| r.child.id());
            // the rest of the container's processes go with it (its cgroup, in Kubernetes)
            if let Some(pid) = pid {
                signal_group(pid, libc::SIGKILL);
            }
            s.running = None;
        }
        if stop.load(Ordering::SeqCst) {
            break;
        }
        std::thread::sleep(Duration::from_secs(1));
        while state.lock().map(|s| s.held).unwrap_or(false) && !stop.load(Ordering::SeqCst) {
            std::thread::sleep(Duration::from_millis(50));
        }
        if let Ok(mut s) = state.lock() {
            s.restarts += 1;
        }
    }
}

/// Puts `/load/<n>` with 100-byte values until `stop`, through every pod's endpoint; returns
/// each acknowledged key with the revision etcd acknowledged it at.
pub fn writer(
    endpoints: Vec<String>,
    stop: Arc<AtomicBool>,
    first: u64,
) -> std::thread::JoinHandle<BTreeMap<String, i64>> {
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("rt");
        rt.block_on(async {
            let mut acked = BTreeMap::new();
            let opts = etcd_client::ConnectOptions::new()
                .with_connect_timeout(Duration::from_secs(1))
                .with_timeout(Duration::from_secs(2));
            let t = Instant::now();
            let mut n = first;
            let mut client = None;
            while !stop.load(Ordering::Relaxed) && t.elapsed() < Duration::from_secs(300) {
                if client.is_none() {
                    client = etcd_client::Client::connect(endpoints.clone(), Some(opts.clone()))
                        .await
                        .ok();
                    if client.is_none() {
                        tokio::time::sleep(Duration::from_millis(200)).await;
                        continue;
                    }
                }
                let Some(c) = client.as_mut() else { continue };
                let k = format!("/load/{n:08}");
                match c.put(k.clone(), value_of(n), None).await {
                    Ok(r) => {
                        acked.insert(k, r.header().map(|h| h.revision()).unwrap_or(0));
                    }
                    Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
                }
                n += 1;
                // ~100 writes/s: a load, not a benchmark (2 cores also run 3 etcds)
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            acked
        })
    })
}

pub fn value_of(n: u64) -> String {
    format!("{n:08}-{}", "v".repeat(91))
}

/// One key as etcd serves it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Kv {
    pub value: Vec<u8>,
    pub create_revision: i64,
    pub mod_revision: i64,
    pub version: i64,
    pub lease: i64,
}

/// Every key of one member (a serializable read: what this member itself holds), and its
/// revision.
pub fn keyspace(endpoint: &str) -> Option<(i64, BTreeMap<Vec<u8>, Kv>)> {
    rt().block_on(async {
        let opts = etcd_client::ConnectOptions::new()
            .with_connect_timeout(Duration::from_secs(2))
            .with_timeout(Duration::from_secs(10));
        let mut c = etcd_client::Client::connect([endpoint], Some(opts))
            .await
            .ok()?;
        let r = c
            .get(
                vec![0u8],
                Some(
                    etcd_client::GetOptions::new()
                        .with_from_key()
                        .with_serializable(),
                ),
            )
            .await
            .ok()?;
        let rev = r.header()?.revision();
        Some((
            rev,
            r.kvs()
                .iter()
                .map(|kv| {
                    (
                        kv.key().to_vec(),
                        Kv {
                            value: kv.value().to_vec(),
                            create_revision: kv.create_revision(),
                            mod_revision: kv.mod_revision(),
                            version: kv.version(),
                            lease: kv.lease(),
                        },
                    )
                })
                .collect(),
        ))
    })
}

/// Waits until every member serves the same keyspace at the same revision and returns it.
pub fn converged(set: &StatefulSet, limit: Duration) -> (i64, BTreeMap<Vec<u8>, Kv>) {
    let t = Instant::now();
    loop {
        let all: Vec<_> = set.endpoints().iter().map(|e| keyspace(e)).collect();
        if all.iter().all(Option::is_some) {
            let all: Vec<_> = all.into_iter().flatten().collect();
            if all.windows(2).all(|w| w[0] == w[1]) {
                return all.into_iter().next().expect("a member");
            }
        }
        assert!(
            t.elapsed() < limit,
            "the members do not converge to one keyspace within {limit:?}\n{}",
            set.diagnose()
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// Every acknowledged write at or below `upto` is served with its value and revision.
pub fn check_acked(ks: &BTreeMap<Vec<u8>, Kv>, acked: &BTreeMap<String, i64>, upto: i64) -> usize {
    let mut n = 0;
    for (k, rev) in acked.iter().filter(|(_, r)| **r <= upto) {
        let kv = ks
            .get(k.as_bytes())
            .unwrap_or_else(|| panic!("acknowledged {k} (revision {rev}) is missing"));
        let num: u64 = k.trim_start_matches("/load/").parse().expect("key number");
        assert_eq!(kv.value, value_of(num).into_bytes(), "{k}: value");
        assert_eq!(kv.mod_revision, *rev, "{k}: mod revision");
        assert_eq!(kv.create_revision, *rev, "{k}: create revision");
        assert_eq!(kv.version, 1, "{k}: version");
        n += 1;
    }
    n
}
