//! Crash safety and the lock that keeps etcd out, against real etcd.
//!
//! A data directory etcd cannot start on (a flipped byte in an old WAL record) is initialized
//! from a store holding a full snapshot and deltas. The process is SIGKILLed (with its process
//! group, as a container dies: the temporary etcd goes too) at every named step of `initialize`
//! and `restore`, and at random instants in a loop. After each kill the data directory must be
//! the old one, byte for byte, or the complete new one (etcd boots on a copy and serves exactly
//! the source's keys), never neither; then an initialization must succeed and leave exactly the
//! source's keys, with no leftover (`.part`, markers, temp dirs) and the moved-aside directories
//! within their bound.
//!
//! The lock: an etcd running on the directory makes the initialization fail with nothing
//! changed; an etcd started while the initialization runs cannot open the db (it waits for the
//! lock and never answers), and the initialization, finding it at the db right before the swap,
//! fails with the directory untouched.

use crate::common::*;
use std::collections::BTreeMap;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

type Keys = BTreeMap<String, Vec<u8>>;

fn all_keys(ep: &str) -> Result<Keys, String> {
    rt().block_on(async {
        let opts = etcd_client::ConnectOptions::new()
            .with_connect_timeout(Duration::from_secs(1))
            .with_timeout(Duration::from_secs(3));
        let mut c = etcd_client::Client::connect([ep], Some(opts))
            .await
            .map_err(|e| e.to_string())?;
        let r = c
            .get(
                vec![0u8],
                Some(etcd_client::GetOptions::new().with_from_key()),
            )
            .await
            .map_err(|e| e.to_string())?;
        Ok(r.kvs()
            .iter()
            .map(|kv| {
                (
                    String::from_utf8_lossy(kv.key()).into_owned(),
                    kv.value().to_vec(),
                )
            })
            .collect())
    })
}

/// The source: an etcd with 25,600 keys written while a sidecar took a full snapshot and
/// deltas; its data directory copied after a power loss and damaged so that etcd cannot
/// start on it.
struct Source {
    _tmp: tempfile::TempDir,
    bk: PathBuf,
    state: Keys,
    condemned: PathBuf,
    peer: String,
    version: EtcdVersion,
}

fn source(version: EtcdVersion) -> Source {
    let peer_port = free_port();
    let mut etcd = Etcd::start_on(version, free_port(), peer_port);
    let tmp = tempfile::tempdir().expect("tmp");
    let bk = tmp.path().join("bk");
    let (mut sidecar, _) =
        sidecar_server(&etcd.endpoint, &bk, &tmp.path().join("sidecar.log"), &[]);
    let t = Instant::now();
    while !files_in(&bk.join("v2"))
        .iter()
        .any(|f| f.starts_with("Full-"))
    {
        assert!(t.elapsed() < Duration::from_secs(30), "no full snapshot");
        std::thread::sleep(Duration::from_millis(100));
    }
    // enough data for each step of a restore to take a while
    etcd.fill(20_000, 64);
    for round in 0..6 {
        for i in 0..100 {
            etcd.put(
                &format!("k{round}-{i:03}"),
                format!("value {round} {i}").as_bytes(),
            );
        }
        std::thread::sleep(Duration::from_millis(700));
    }
    etcd.fill(5_000, 64);
    let state = all_keys(&etcd.endpoint).expect("source keys");
    let revision = etcd.revision();
    let t = Instant::now();
    loop {
        let last = files_in(&bk.join("v2"))
            .iter()
            .filter_map(|f| f.split('-').nth(2).and_then(|r| r.parse::<i64>().ok()))
            .max()
            .unwrap_or(0);
        if last >= revision {
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(30),
            "store at {last} < {revision}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = Command::new("kill")
        .args(["-TERM", &sidecar.id().to_string()])
        .status();
    let _ = sidecar.wait();
    let deltas = files_in(&bk.join("v2"))
        .iter()
        .filter(|f| f.starts_with("Incr-"))
        .count();
    assert!(deltas >= 2, "{deltas} deltas");
    etcd.kill();
    let condemned = tmp.path().join("condemned");
    copy_dir(&etcd.dir.path().join("data"), &condemned);
    let wal = std::fs::read_dir(condemned.join("member/wal"))
        .expect("wal")
        .map(|e| e.expect("e").path())
        .filter(|p| p.extension().is_some_and(|x| x == "wal"))
        .min()
        .expect("wal file");
    let mut b = std::fs::read(&wal).expect("wal");
    b[3000] ^= 0x40; // inside an early record: a CRC mismatch etcd will not start past
    std::fs::write(&wal, b).expect("wal");
    Source {
        _tmp: tmp,
        bk,
        state,
        condemned,
        peer: format!("http://127.0.0.1:{peer_port}"),
        version,
    }
}

/// Every file below `dir` with its content hash (`None`: no such directory).
fn manifest(dir: &Path) -> Option<BTreeMap<PathBuf, Vec<u8>>> {
    use sha2::Digest;
    if !dir.exists() {
        return None;
    }
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).expect("list") {
            let p = e.expect("entry").path();
            if p.is_dir() {
                stack.push(p);
            } else {
                let h = sha2::Sha256::digest(std::fs::read(&p).expect("read")).to_vec();
                out.insert(p.strip_prefix(dir).expect("prefix").to_path_buf(), h);
            }
        }
    }
    Some(out)
}

/// `etcdbrctl <sub>` for the source's member, in its own process group.
fn cmd(src: &Source, sub: &str, data: &Path, work: &Path) -> Command {
    let mut c = etcdbrctl();
    c.arg(sub);
    if sub == "initialize" {
        c.args(["--validation-mode", "full"]);
    }
    c.args(["--name", "t"])
        .arg("--data-dir")
        .arg(data)
        .args(["--initial-cluster", &format!("t={}", src.peer)])
        .args(["--initial-advertise-peer-urls", &src.peer])
        .arg("--restoration-temp-snapshots-dir")
        .arg(work.join("rtmp"))
        .arg("--etcd-binary")
        .arg(src.version.etcd())
        .arg("--etcd-restore-tool")
        .arg(src.version.status_tool().0)
        .arg("--store-container")
        .arg(&src.bk)
        .stdin(Stdio::null())
        .process_group(0);
    c
}

fn kill_group(pid: u32) {
    let _ = Command::new("kill")
        .args(["-s", "KILL", "--", &format!("-{pid}")])
        .stderr(Stdio::null())
        .status();
}

/// etcd on a copy of `data`: the keys it serves, or why it does not.
fn serves(src: &Source, data: &Path, work: &Path) -> Result<Keys, String> {
    let copy = work.join(format!("boot-{:08x}", rand::random::<u32>()));
    copy_dir(data, &copy);
    let (mut etcd, ep) = spawn_etcd_on(src.version, "t", &copy, free_port(), &[], None);
    let t = Instant::now();
    let r = loop {
        if let Ok(Some(st)) = etcd.try_wait() {
            break Err(format!("etcd exits ({st})"));
        }
        if let Ok(k) = all_keys(&ep) {
            break Ok(k);
        }
        if t.elapsed() > Duration::from_secs(20) {
            break Err("etcd does not answer".into());
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    drop(etcd);
    let _ = std::fs::remove_dir_all(&copy);
    r
}

/// After a crash: the old directory, byte for byte, or the complete new one.
fn old_or_new(
    src: &Source,
    data: &Path,
    old: &Option<BTreeMap<PathBuf, Vec<u8>>>,
    work: &Path,
) -> &'static str {
    let now = manifest(data);
    if now == *old {
        return "old";
    }
    // an empty directory counts as the missing one it replaced
    if old.is_none() && now.as_ref().is_some_and(|m| m.is_empty()) {
        return "old";
    }
    assert!(
        now.is_some(),
        "{}: neither the old nor a new data directory",
        data.display()
    );
    match serves(src, data, work) {
        Ok(k) if k == src.state => "new",
        Ok(k) => panic!(
            "{}: a changed data directory that serves {} keys, not the source's {}",
            data.display(),
            k.len(),
            src.state.len()
        ),
        Err(e) => panic!(
            "{}: neither old nor a complete new directory: {e}",
            data.display()
        ),
    }
}

/// A successful initialization that leaves exactly the source's keys and no leftover.
fn completes(src: &Source, data: &Path, work: &Path) {
    let out = cmd(src, "initialize", data, work)
        .output()
        .expect("initialize");
    assert!(
        out.status.success(),
        "initialize after the crash: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let keys = serves(src, data, work).expect("etcd on the initialized directory");
    assert!(
        keys == src.state,
        "{} keys, the source has {}",
        keys.len(),
        src.state.len()
    );
    let name = data
        .file_name()
        .expect("name")
        .to_string_lossy()
        .to_string();
    let parent = data.parent().expect("parent");
    let left: Vec<String> = std::fs::read_dir(parent)
        .expect("parent")
        .map(|e| e.expect("e").file_name().to_string_lossy().to_string())
        .filter(|n| n.starts_with(&format!("{name}.")))
        .filter(|n| !n.ends_with(".etcdbr.lock"))
        .collect();
    let invalid = left.iter().filter(|n| n.contains(".invalid-")).count();
    assert!(invalid <= 1, "moved-aside dirs beyond the bound: {left:?}");
    assert_eq!(
        left.len(),
        invalid,
        "leftovers next to the data dir: {left:?}"
    );
    assert!(
        !data.join(etcdbr::ondisk::datadir::MARKER).exists(),
        "marker left in the data dir"
    );
    let temps: Vec<_> = std::fs::read_dir(work.join("rtmp"))
        .map(|d| d.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(temps.is_empty(), "restore temp dirs left: {temps:?}");
}

const INIT_STEPS: &[&str] = &[
    "initialize:validated",
    "restore:base-restored",
    "restore:replayed",
    "restore:built",
    "restore:sealed",
    "swap:exchanged",
    "swap:old-moved-aside",
    "swap:in-place",
    "swap:done",
];

const RESTORE_STEPS: &[&str] = &[
    "restore:base-restored",
    "restore:replayed",
    "restore:built",
    "restore:sealed",
    "swap:in-place",
    "swap:done",
];

fn named_steps(version: EtcdVersion) {
    let src = source(version);
    let root = tempfile::tempdir().expect("tmp");
    let mut reached = Vec::new();
    for (sub, steps) in [("initialize", INIT_STEPS), ("restore", RESTORE_STEPS)] {
        for (i, step) in steps.iter().enumerate() {
            let work = root.path().join(format!("{sub}-{i}"));
            std::fs::create_dir_all(&work).expect("work");
            let data = work.join("data");
            if sub == "initialize" {
                copy_dir(&src.condemned, &data);
            }
            let old = manifest(&data);
            let mut c = cmd(&src, sub, &data, &work);
            let child = c
                .env("ETCDBR_CRASH_AT", step)
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .expect("spawn");
            let pid = child.id();
            let out = child.wait_with_output().expect("wait");
            kill_group(pid);
            let err = String::from_utf8_lossy(&out.stderr);
            // the swap takes one of two paths, by what the file system supports
            let exchange = !err.contains("atomic exchange not supported");
            let on_path = match *step {
                "swap:exchanged" => exchange,
                "swap:old-moved-aside" => !exchange && sub == "initialize",
                _ => true,
            };
            if !on_path {
                assert!(
                    out.status.success(),
                    "{sub} ({step} not on its path): {err}"
                );
                println!("{version:?} {sub}: {step} is not on this file system's path");
                continue;
            }
            reached.push(*step);
            assert_eq!(
                out.status.signal(),
                Some(9),
                "{sub} was to be killed at {step}: {err}"
            );
            let state = old_or_new(&src, &data, &old, &work);
            println!("{version:?} {sub} killed at {step}: {state} data dir");
            completes(&src, &data, &work);
        }
    }
    assert!(
        reached.contains(&"swap:exchanged") || reached.contains(&"swap:old-moved-aside"),
        "neither swap path was taken: {reached:?}"
    );
    // the two-rename swap (file systems without RENAME_EXCHANGE), killed between its renames:
    // the complete new directory waits, sealed, as `.part` next to the old one kept aside, and
    // the next run puts it in place before anything else
    let work = root.path().join("two-renames");
    std::fs::create_dir_all(&work).expect("work");
    let data = work.join("data");
    copy_dir(&src.condemned, &data);
    let out = cmd(&src, "initialize", &data, &work)
        .env("ETCDBR_SWAP_WITHOUT_EXCHANGE", "1")
        .env("ETCDBR_CRASH_AT", "swap:old-moved-aside")
        .output()
        .expect("initialize");
    assert_eq!(out.status.signal(), Some(9));
    let part = etcdbr::ondisk::datadir::part_dir(&data);
    assert!(!data.exists() && part.join(etcdbr::ondisk::datadir::MARKER).exists());
    assert_eq!(etcdbr::ondisk::datadir::invalid_dirs(&data).len(), 1);
    let keys = serves(&src, &part, &work).expect("the sealed .part boots");
    assert!(
        keys == src.state,
        "the sealed .part is not the complete new directory"
    );
    completes(&src, &data, &work);
    println!("{version:?} two-rename swap killed between its renames: sealed .part put in place by the next run");
}

fn random_instants(version: EtcdVersion, rounds: usize) {
    let src = source(version);
    let root = tempfile::tempdir().expect("tmp");
    // how long an uninterrupted initialization takes: the kills land anywhere within it
    let work = root.path().join("timing");
    std::fs::create_dir_all(&work).expect("work");
    let data = work.join("data");
    copy_dir(&src.condemned, &data);
    let t = Instant::now();
    let out = cmd(&src, "initialize", &data, &work)
        .output()
        .expect("initialize");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let total = t.elapsed().as_millis() as u64 * 3 / 2;
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for round in 0..rounds {
        let work = root.path().join(format!("round-{round}"));
        std::fs::create_dir_all(&work).expect("work");
        let data = work.join("data");
        copy_dir(&src.condemned, &data);
        let old = manifest(&data);
        let delay = rand::random::<u64>() % total.max(1);
        let mut child = cmd(&src, "initialize", &data, &work)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn");
        let t = Instant::now();
        let finished = loop {
            if let Ok(Some(_)) = child.try_wait() {
                break true;
            }
            if t.elapsed() >= Duration::from_millis(delay) {
                break false;
            }
            std::thread::sleep(Duration::from_millis(5));
        };
        kill_group(child.id());
        let _ = child.wait();
        let state = old_or_new(&src, &data, &old, &work);
        let key = match (finished, state) {
            (true, _) => "finished before the kill",
            (false, "old") => "killed: old dir intact",
            (false, _) => "killed: complete new dir",
        };
        *counts.entry(key).or_default() += 1;
        println!("{version:?} round {round}: kill after {delay} ms of ~{total}: {key}");
        completes(&src, &data, &work);
        let _ = std::fs::remove_dir_all(&work);
    }
    println!("{version:?}: {rounds} rounds, {counts:?}");
}

#[test]
fn killed_at_every_named_step_etcd35() {
    named_steps(EtcdVersion::V35);
}

#[test]
fn killed_at_every_named_step_etcd34() {
    named_steps(EtcdVersion::V34);
}

#[test]
fn killed_at_random_instants_etcd35() {
    random_instants(EtcdVersion::V35, 20);
}

#[test]
fn killed_at_random_instants_etcd34() {
    random_instants(EtcdVersion::V34, 20);
}

/// etcd started on the directory while the initialization runs: it waits for the db's lock,
/// and the initialization, seeing it at the db before the swap, gives up with nothing changed.
fn etcd_started_meanwhile(version: EtcdVersion) {
    let src = source(version);
    let root = tempfile::tempdir().expect("tmp");
    let work = root.path().to_path_buf();
    let data = work.join("data");
    copy_dir(&src.condemned, &data);
    let before = manifest(&data);
    let init = cmd(&src, "initialize", &data, &work)
        .env("ETCDBR_PAUSE_AT", "initialize:validated")
        .env("ETCDBR_PAUSE_SECS", "6")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    std::thread::sleep(Duration::from_secs(2));
    let log = work.join("etcd.log");
    let (mut etcd, ep) = spawn_etcd_on(version, "t", &data, free_port(), &[], Some(&log));
    // it cannot open the db while the initialization holds it
    let t = Instant::now();
    while t.elapsed() < Duration::from_secs(3) {
        assert!(
            all_keys(&ep).is_err(),
            "etcd answered while the initialization held the db"
        );
        assert!(etcd.try_wait().expect("wait").is_none(), "etcd exited");
        std::thread::sleep(Duration::from_millis(300));
    }
    let pid = init.id();
    let out = init.wait_with_output().expect("initialize");
    kill_group(pid);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        !out.status.success(),
        "initialize succeeded with etcd at the db:\n{text}"
    );
    assert!(text.contains("open: stop it first"), "{text}");
    drop(etcd);
    assert!(manifest(&data) == before, "the data directory was changed");
    assert!(
        !etcdbr::ondisk::datadir::part_dir(&data).exists(),
        ".part left"
    );
    // and a db locked as a running etcd locks it makes it fail at once, with nothing changed
    let locked = std::fs::File::open(data.join("member/snap/db")).expect("db");
    locked.lock().expect("lock");
    let out = cmd(&src, "initialize", &data, &work)
        .output()
        .expect("initialize");
    let text = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(!out.status.success() && text.contains("locked"), "{text}");
    assert!(manifest(&data) == before, "the data directory was changed");
    drop(locked);
}

#[test]
fn etcd_cannot_open_the_dir_during_initialization_etcd35() {
    etcd_started_meanwhile(EtcdVersion::V35);
}

#[test]
fn etcd_cannot_open_the_dir_during_initialization_etcd34() {
    etcd_started_meanwhile(EtcdVersion::V34);
}

/// Leftovers are told from a living writer's files by the lock the writer holds, not by a PID
/// (in a container the sidecar is PID 1 after every restart): a dead writer's temp upload and
/// restore temp dir are removed at the next start, a living one's kept; a `.part` and a
/// `.replaced` of a dead run are removed and kept aside; moved-aside directories are pruned to
/// `--keep-invalid-data-dirs`, logged, and counted in `etcdbr_invalid_data_dirs`.
#[test]
fn leftovers_are_recognised_by_their_writers_lock() {
    let mut etcd = Etcd::start(EtcdVersion::V35);
    etcd.fill(100, 10);
    let tmp = tempfile::tempdir().expect("tmp");
    let bk = tmp.path().join("bk");
    let save = |etcd: &Etcd| {
        run_ok(
            etcdbrctl()
                .args(["snapshot", "save", "--endpoints", &etcd.endpoint])
                .args(["--store-container", bk.to_str().expect("path")]),
        )
    };
    save(&etcd);
    let v2 = bk.join("v2");
    let dead = v2.join(".etcdbr-00000000deadbeef.Full-00000000-00000001-1.part");
    std::fs::write(&dead, b"half an upload").expect("write");
    let live = v2.join(".etcdbr-00000000cafecafe.Full-00000000-00000001-2.part");
    std::fs::write(&live, b"an upload in progress").expect("write");
    let live_lock = std::fs::File::open(&live).expect("open");
    live_lock.lock().expect("lock");
    save(&etcd);
    assert!(!dead.exists(), "a dead writer's temp upload was kept");
    assert!(live.exists(), "a living writer's temp upload was removed");

    // a valid data directory with the leftovers of dead runs around it
    let _ = Command::new("kill")
        .args(["-TERM", &etcd.child.id().to_string()])
        .status();
    let _ = etcd.child.wait();
    let data = tmp.path().join("data");
    copy_dir(&etcd.dir.path().join("data"), &data);
    let rtmp = tmp.path().join("rtmp");
    let dead_tmp = rtmp.join("etcdbr-restore-dead01");
    let live_tmp = rtmp.join("etcdbr-restore-live01");
    for d in [&dead_tmp, &live_tmp] {
        std::fs::create_dir_all(d).expect("mkdir");
        std::fs::write(d.join("snapshot.db"), b"x").expect("write");
    }
    let live_tmp_lock = std::fs::File::open(&live_tmp).expect("open");
    live_tmp_lock.lock().expect("lock");
    let part = etcdbr::ondisk::datadir::part_dir(&data);
    std::fs::create_dir_all(part.join("member/snap")).expect("mkdir");
    let replaced = etcdbr::ondisk::datadir::sibling(&data, ".replaced");
    std::fs::create_dir_all(replaced.join("member")).expect("mkdir");
    for t in [1000, 2000, 3000] {
        let d = etcdbr::ondisk::datadir::sibling(&data, &format!(".invalid-{t}"));
        std::fs::create_dir_all(d.join("member")).expect("mkdir");
    }
    let peer = format!("http://127.0.0.1:{}", etcd.ports.1);
    let out = etcdbrctl()
        .args(["initialize", "--validation-mode", "sanity", "--name", "t"])
        .arg("--data-dir")
        .arg(&data)
        .args(["--initial-cluster", &format!("t={peer}")])
        .args(["--initial-advertise-peer-urls", &peer])
        .arg("--restoration-temp-snapshots-dir")
        .arg(&rtmp)
        .args(["--keep-invalid-data-dirs", "2"])
        .arg("--store-container")
        .arg(&bk)
        .output()
        .expect("initialize");
    let text = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(out.status.success(), "{text}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("action: Kept"));
    assert!(!dead_tmp.exists(), "a dead restore's temp dir was kept");
    assert!(live_tmp.exists(), "a living restore's temp dir was removed");
    assert!(!part.exists(), "the .part of a dead run was kept");
    assert!(!replaced.exists(), ".replaced was not moved aside");
    let invalid = etcdbr::ondisk::datadir::invalid_dirs(&data);
    assert_eq!(invalid.len(), 2, "{invalid:?}");
    // the newest two: the one from 3000 and the .replaced kept aside just now
    assert!(
        invalid[0].to_string_lossy().ends_with(".invalid-3000"),
        "{invalid:?}"
    );
    assert!(text.contains("moved-aside data directories kept"), "{text}");

    // the sidecar exports the count
    etcd.restart();
    let data_arg = data.to_string_lossy().to_string();
    let (_sidecar, port) = sidecar_server(
        &etcd.endpoint,
        &bk,
        &tmp.path().join("sidecar.log"),
        &["--data-dir", &data_arg],
    );
    let t = Instant::now();
    let metrics = loop {
        if let Ok((200, body)) = http_body(port, "GET", "/metrics") {
            break body;
        }
        assert!(t.elapsed() < Duration::from_secs(20), "no /metrics");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(metrics.contains("etcdbr_invalid_data_dirs 2"), "{metrics}");
    drop(live_lock);
    drop(live_tmp_lock);
}

/// etcdbrctl puts a Local store with an absolute `--store-container` under `$HOME`; after a
/// switch with unchanged flags the backups sit there while our (absolute) store is empty. A lost
/// data directory must not become an empty cluster: initialize, restore and the snapshot job
/// refuse, naming where the backups are; with no backup anywhere, the fresh start is logged
/// loudly with the store looked at.
#[test]
fn an_empty_absolute_store_with_backups_under_home_is_refused() {
    let etcd = Etcd::start(EtcdVersion::V35);
    etcd.fill(50, 10);
    let tmp = tempfile::tempdir().expect("tmp");
    let home = tmp.path().join("home");
    let abs = tmp.path().join("backups");
    // where etcdbrctl would have put --store-container <abs>
    let go = home.join(abs.strip_prefix("/").expect("absolute"));
    run_ok(
        etcdbrctl()
            .env("HOME", &home)
            .args(["snapshot", "save", "--endpoints", &etcd.endpoint])
            .arg("--store-container")
            .arg(&go),
    );
    let data = tmp.path().join("data");
    let peer = format!("http://127.0.0.1:{}", free_port());
    let with_store = |sub: &str| {
        let mut c = etcdbrctl();
        c.env("HOME", &home).arg(sub);
        if sub == "snapshot" {
            c.args(["save", "--endpoints", &etcd.endpoint]);
        } else {
            c.args(["--name", "t", "--data-dir"])
                .arg(&data)
                .args(["--initial-cluster", &format!("t={peer}")])
                .args(["--initial-advertise-peer-urls", &peer])
                .arg("--restoration-temp-snapshots-dir")
                .arg(tmp.path().join("rtmp"));
        }
        c.arg("--store-container").arg(&abs);
        c
    };
    for sub in ["initialize", "restore", "snapshot"] {
        let out = with_store(sub).output().expect("run");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{sub} must refuse: {err}");
        assert!(
            err.contains(&go.display().to_string()) && err.contains("--store-container"),
            "{sub}: the error must say where the backups are and which flag to set: {err}"
        );
        assert!(!data.exists(), "{sub} created a data directory");
    }
    assert!(
        files_in(&abs.join("v2")).is_empty(),
        "the snapshot job wrote into the empty store"
    );
    // no backup anywhere: a fresh start, said loudly with the store looked at
    let other = tmp.path().join("nowhere");
    let out = etcdbrctl()
        .env("HOME", &home)
        .args(["initialize", "--name", "t", "--data-dir"])
        .arg(&data)
        .args(["--initial-cluster", &format!("t={peer}")])
        .args(["--initial-advertise-peer-urls", &peer])
        .arg("--restoration-temp-snapshots-dir")
        .arg(tmp.path().join("rtmp"))
        .arg("--store-container")
        .arg(&other)
        .output()
        .expect("initialize");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains("FRESH CLUSTER") && err.contains(&other.display().to_string()),
        "{err}"
    );
}
