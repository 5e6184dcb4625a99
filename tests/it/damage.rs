//! The damage matrix: etcd is the oracle. Data directories written by etcd 3.4.23 and 3.5.1
//! (acknowledged writes known, backups of an earlier point in the store) are damaged in the
//! ways disks and power losses damage them. For each, etcd is started on a copy to learn its
//! own verdict (does it start, serve every acknowledged write - those in a torn tail aside -
//! and apply a new one?), then `etcdbrctl initialize` runs with `--validation-mode full` and
//! `sanity` on two more copies, and etcd is booted on what they leave. Where etcd starts and
//! serves the data, the directory must be kept and serve the same; where it cannot, or serves
//! wrong data, it must be restored and serve exactly the latest backup. The matrix is printed;
//! any disagreement fails the test.

use crate::common::*;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

type Keys = BTreeMap<String, Vec<u8>>;

/// Every key and value etcd serves, or why it does not within `within`.
fn read_all(etcd: &mut Proc, ep: &str, within: Duration) -> Result<(Keys, i64), String> {
    let started = Instant::now();
    loop {
        if let Ok(Some(st)) = etcd.try_wait() {
            return Err(format!("exits ({st})"));
        }
        let r = rt().block_on(async {
            let opts = etcd_client::ConnectOptions::new()
                .with_connect_timeout(Duration::from_secs(1))
                .with_timeout(Duration::from_secs(2));
            let mut c = etcd_client::Client::connect([ep], Some(opts)).await?;
            c.get(
                vec![0u8],
                Some(etcd_client::GetOptions::new().with_from_key()),
            )
            .await
        });
        if let Ok(r) = r {
            let rev = r.header().map(|h| h.revision()).unwrap_or(0);
            let keys = r
                .kvs()
                .iter()
                .map(|kv| {
                    (
                        String::from_utf8_lossy(kv.key()).into_owned(),
                        kv.value().to_vec(),
                    )
                })
                .collect();
            return Ok((keys, rev));
        }
        if started.elapsed() > within {
            return Err(format!("does not answer within {within:?}"));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// A new write is applied and read back.
fn write_applies(ep: &str) -> bool {
    rt().block_on(async {
        let opts = etcd_client::ConnectOptions::new()
            .with_connect_timeout(Duration::from_secs(2))
            .with_timeout(Duration::from_secs(5));
        let Ok(mut c) = etcd_client::Client::connect([ep], Some(opts)).await else {
            return false;
        };
        if c.put("zz-probe", "written after the start", None)
            .await
            .is_err()
        {
            return false;
        }
        matches!(c.get("zz-probe", None).await, Ok(r) if r.kvs().len() == 1)
    })
}

/// etcd's last word: the error of its fatal/panic line (3.5 logs JSON, 3.4 capnslog text).
fn last_log_line(log: &Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let line = text
        .lines()
        .find(|l| {
            l.contains("\"level\":\"fatal\"")
                || l.contains("\"level\":\"panic\"")
                || l.contains(" C | ")
                || l.starts_with("panic: ")
        })
        .unwrap_or_default();
    let short = match serde_json::from_str::<serde_json::Value>(line) {
        Ok(j) => format!(
            "{}: {}",
            j["msg"].as_str().unwrap_or_default(),
            j["error"].as_str().unwrap_or_default()
        ),
        Err(_) => line.split(" C | ").last().unwrap_or(line).to_string(),
    };
    short.chars().take(140).collect()
}

/// What etcd did on a directory.
#[derive(Debug, Clone)]
enum Served {
    /// Started, served these keys and applied a new write.
    Data(Keys),
    /// Did not start (or not within the bound); why.
    Fails(String),
    /// Started but a write was not applied.
    NoWrites(Keys),
}

fn boot(v: EtcdVersion, data: &Path, log: &Path) -> Served {
    let (mut etcd, ep) = spawn_etcd_on(v, "t", data, free_port(), &[], Some(log));
    match read_all(&mut etcd, &ep, Duration::from_secs(20)) {
        Err(why) => Served::Fails(format!("{why}: {}", last_log_line(log))),
        Ok((keys, _)) => {
            if write_applies(&ep) {
                Served::Data(keys)
            } else {
                Served::NoWrites(keys)
            }
        }
    }
}

/// A data directory as etcd left it, what was acknowledged, and the store's latest backup.
struct Fixture {
    /// The data directory (member `t`, peer URL `peer`).
    data: PathBuf,
    peer: String,
    /// Acknowledged writes, in order.
    acked: Vec<(String, Vec<u8>)>,
    /// The store and what its latest backup holds.
    store: PathBuf,
    backup: Keys,
}

struct Writer {
    ep: String,
    acked: Vec<(String, Vec<u8>)>,
}

/// A fixture being written: its etcd (member `t`) on `<root>/<name>`, its store, its writer.
struct Making {
    data: PathBuf,
    store: PathBuf,
    log: PathBuf,
    peer_port: u16,
    etcd: Proc,
    w: Writer,
}

impl Making {
    fn begin(v: EtcdVersion, root: &Path, name: &str, extra: &[&str]) -> Making {
        let (data, log) = (root.join(name), root.join(format!("{name}-etcd.log")));
        let peer_port = free_port();
        let (etcd, ep) = start_fixture_etcd(v, &data, peer_port, extra, &log);
        Making {
            store: root.join(format!("{name}-store")),
            data,
            log,
            peer_port,
            etcd,
            w: Writer {
                ep,
                acked: Vec::new(),
            },
        }
    }

    /// A power loss, then the fixture, whose store's latest backup holds `backup`.
    fn finish(mut self, backup: Keys) -> Fixture {
        self.w.barrier();
        kill(&mut self.etcd);
        Fixture {
            data: self.data,
            peer: format!("http://127.0.0.1:{}", self.peer_port),
            acked: self.w.acked,
            store: self.store,
            backup,
        }
    }
}

impl Writer {
    fn put(&mut self, k: &str, v: Vec<u8>) {
        let ep = self.ep.clone();
        let v2 = v.clone();
        rt().block_on(async {
            let mut c = etcd_client::Client::connect([ep.as_str()], None)
                .await
                .expect("connect");
            c.put(k, v2, None).await.expect("put");
        });
        self.acked.push((k.to_string(), v));
    }

    /// Returns once the WAL holds every acknowledged write. A single member before 3.5.5 and
    /// 3.4.21 answers a put before its WAL write (etcd-io/etcd#14370), so a kill right after
    /// the last put can lose it. A linearizable read is answered from a later raft Ready than
    /// the put's, and etcd saves each Ready before it takes the next: no WAL record is added.
    fn barrier(&self) {
        let ep = self.ep.clone();
        rt().block_on(async {
            let mut c = etcd_client::Client::connect([ep.as_str()], None)
                .await
                .expect("connect");
            c.get("barrier", None).await.expect("linearizable read");
        });
    }

    fn state(&self) -> Keys {
        self.acked.iter().cloned().collect()
    }
}

fn backup(ep: &str, store: &Path) {
    run_ok(etcdbrctl().args([
        "snapshot",
        "save",
        "--endpoints",
        ep,
        "--store-container",
        store.to_str().expect("path"),
    ]));
}

/// Kills etcd as a power loss would (SIGKILL: after `Writer::barrier`, its WAL holds every
/// acknowledged write).
fn kill(etcd: &mut Proc) {
    let _ = etcd.kill();
    let _ = etcd.wait();
}

fn stop_clean(etcd: &mut Proc) {
    let _ = Command::new("kill")
        .args(["-TERM", &etcd.id().to_string()])
        .status();
    let _ = etcd.wait();
}

/// The fixture's etcd (member `t`, peer port `peer_port`), answering.
fn start_fixture_etcd(
    v: EtcdVersion,
    data: &Path,
    peer_port: u16,
    extra: &[&str],
    log: &Path,
) -> (Proc, String) {
    let (mut p, ep) = spawn_etcd_on(v, "t", data, peer_port, extra, Some(log));
    read_all(&mut p, &ep, Duration::from_secs(30)).expect("fixture etcd starts");
    (p, ep)
}

/// 100 keys, a backup, a clean stop (its db kept), 25 more keys, a second backup, 25 more
/// (the last one 3 KB, so that its WAL record spans several sectors), a power loss; then the db
/// is put back to its state at the clean stop: a db behind the latest backup, and a WAL ahead
/// of both, as a power loss leaves a member whose backend had not committed for a while.
fn plain_fixture(v: EtcdVersion, root: &Path) -> Fixture {
    let mut m = Making::begin(v, root, "plain", &[]);
    for i in 0..100 {
        m.w.put(&format!("a{i:03}"), vec![b'a' + (i % 26) as u8; 100]);
    }
    backup(&m.w.ep, &m.store);
    stop_clean(&mut m.etcd);
    let db_at_stop = std::fs::read(m.data.join("member/snap/db")).expect("db");
    let (etcd, ep) = start_fixture_etcd(v, &m.data, m.peer_port, &[], &m.log);
    (m.etcd, m.w.ep) = (etcd, ep);
    for i in 0..25 {
        m.w.put(&format!("b{i:02}"), format!("v{i}").into_bytes());
    }
    backup(&m.w.ep, &m.store);
    let backup_state = m.w.state();
    for i in 25..49 {
        m.w.put(&format!("b{i:02}"), format!("v{i}").into_bytes());
    }
    m.w.put("b49", vec![b'x'; 3000]);
    let data = m.data.clone();
    let fx = m.finish(backup_state);
    std::fs::write(data.join("member/snap/db"), db_at_stop).expect("db");
    fx
}

/// `--snapshot-count 30`: raft snapshots (`.snap` files) every 30 entries; 100 keys, a backup,
/// 50 more, a power loss.
fn snap_fixture(v: EtcdVersion, root: &Path) -> Fixture {
    let mut m = Making::begin(v, root, "snaps", &["--snapshot-count", "30"]);
    for i in 0..100 {
        m.w.put(&format!("a{i:03}"), format!("v{i}").into_bytes());
    }
    backup(&m.w.ep, &m.store);
    let backup_state = m.w.state();
    for i in 0..50 {
        m.w.put(&format!("b{i:02}"), format!("v{i}").into_bytes());
    }
    let fx = m.finish(backup_state);
    let snaps = std::fs::read_dir(fx.data.join("member/snap"))
        .expect("snap dir")
        .filter(|e| {
            e.as_ref()
                .is_ok_and(|e| e.file_name().to_string_lossy().ends_with(".snap"))
        })
        .count();
    assert!(snaps >= 2, "{snaps} .snap files");
    fx
}

/// Three WAL segments (130 values of 1 MiB, compacted and defragmented away from the db), a
/// backup, 20 small keys, a power loss.
fn segments_fixture(v: EtcdVersion, root: &Path) -> Fixture {
    let mut m = Making::begin(v, root, "segments", &[]);
    let big = vec![b'z'; 1 << 20];
    rt().block_on(async {
        let mut c = etcd_client::Client::connect([m.w.ep.as_str()], None)
            .await
            .expect("connect");
        let mut rev = 0;
        for _ in 0..130 {
            let r = c.put("big", big.clone(), None).await.expect("put");
            rev = r.header().map(|h| h.revision()).unwrap_or(0);
        }
        c.delete("big", None).await.expect("delete");
        c.compact(rev + 1, None).await.expect("compact");
        c.defragment().await.expect("defragment");
    });
    for i in 0..20 {
        m.w.put(&format!("a{i:03}"), format!("v{i}").into_bytes());
    }
    backup(&m.w.ep, &m.store);
    let backup_state = m.w.state();
    for i in 0..20 {
        m.w.put(&format!("b{i:02}"), format!("v{i}").into_bytes());
    }
    let fx = m.finish(backup_state);
    let wals = wal_files(&fx.data);
    assert!(wals.len() >= 3, "{} WAL segments", wals.len());
    fx
}

fn zero(file: &Path, from: u64, to: u64) {
    use std::io::{Seek, Write};
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .open(file)
        .expect("open");
    f.seek(std::io::SeekFrom::Start(from)).expect("seek");
    f.write_all(&vec![0u8; (to - from) as usize]).expect("zero");
}

fn flip(file: &Path, at: u64, mask: u8) {
    let mut b = std::fs::read(file).expect("read");
    b[at as usize] ^= mask;
    std::fs::write(file, b).expect("write");
}

fn last_wal(d: &Path) -> PathBuf {
    wal_files(d).pop().expect("a WAL file")
}

/// The last record larger than 2,000 bytes (the 3 KB write).
fn big_record(d: &Path) -> (u64, u64, u64) {
    *records(&last_wal(d))
        .iter()
        .rev()
        .find(|r| r.1 > 2000)
        .expect("the 3 KB record")
}

type Damage = fn(&Path);

/// (name, fixture, damage, how many of the last acknowledged writes etcd may lose with it).
fn cases() -> Vec<(&'static str, &'static str, Damage, usize)> {
    vec![
        ("intact", "plain", |_| {}, 0),
        (
            "torn last record (one sector never written)",
            "plain",
            |d| {
                let (off, _, _) = big_record(d);
                let s = (off + 8) / 512 * 512 + 512;
                zero(&last_wal(d), s, s + 512);
            },
            1,
        ),
        (
            "file truncated inside the last record",
            "plain",
            |d| {
                let (off, _, _) = big_record(d);
                let f = last_wal(d);
                std::fs::OpenOptions::new()
                    .write(true)
                    .open(&f)
                    .and_then(|f| f.set_len(off + 8 + 1000))
                    .expect("truncate");
            },
            1,
        ),
        (
            "zero-filled tail from a sector boundary",
            "plain",
            |d| {
                let f = last_wal(d);
                let r = records(&f);
                let (off, len, _) = r[r.len() - 7];
                let len_f = std::fs::metadata(&f).expect("len").len();
                zero(&f, (off + 8 + len / 2) / 512 * 512, len_f);
            },
            10,
        ),
        (
            "zero-filled tail from inside a sector",
            "plain",
            |d| {
                let f = last_wal(d);
                let r = records(&f);
                let (off, len, _) = r[r.len() - 7];
                let len_f = std::fs::metadata(&f).expect("len").len();
                zero(&f, off + 8 + len / 2, len_f);
            },
            10,
        ),
        (
            "flipped byte in an old WAL record",
            "plain",
            |d| {
                let f = last_wal(d);
                let (off, len, _) = records(&f)[20];
                flip(&f, off + 8 + len - 3, 0x40);
            },
            0,
        ),
        (
            "flipped byte in a db page (a key leaf's type)",
            "plain",
            |d| {
                let p = d.join("member/snap/db");
                let db = etcdbr::ondisk::bbolt::Db::open(&p).expect("db");
                let ps = u64::from(db.meta().page_size);
                let first =
                    etcdbr::ondisk::schema::revision_key(etcdbr::ondisk::schema::Revision {
                        main: 2,
                        sub: 0,
                    });
                let (at, _) = db
                    .locate(b"key", &first)
                    .expect("locate")
                    .expect("revision 2");
                drop(db);
                flip(&p, at / ps * ps + 8, 0x12);
            },
            0,
        ),
        (
            "truncated db",
            "plain",
            |d| {
                let p = d.join("member/snap/db");
                let len = std::fs::metadata(&p).expect("db").len();
                std::fs::OpenOptions::new()
                    .write(true)
                    .open(&p)
                    .and_then(|f| f.set_len(len / 2))
                    .expect("truncate");
            },
            0,
        ),
        (
            "empty db file",
            "plain",
            |d| std::fs::write(d.join("member/snap/db"), b"").expect("empty"),
            0,
        ),
        (
            "no db file",
            "plain",
            |d| std::fs::remove_file(d.join("member/snap/db")).expect("rm"),
            0,
        ),
        (
            "no member/wal",
            "plain",
            |d| std::fs::remove_dir_all(d.join("member/wal")).expect("rm"),
            0,
        ),
        ("intact, with .snap files", "snaps", |_| {}, 0),
        (
            "damaged newest .snap",
            "snaps",
            |d| {
                let mut snaps: Vec<PathBuf> = std::fs::read_dir(d.join("member/snap"))
                    .expect("snap")
                    .map(|e| e.expect("e").path())
                    .filter(|p| p.extension().is_some_and(|x| x == "snap"))
                    .collect();
                snaps.sort();
                let s = snaps.pop().expect("a .snap");
                let len = std::fs::metadata(&s).expect("len").len();
                flip(&s, len / 2, 0xff);
            },
            0,
        ),
        (
            "every .snap damaged",
            "snaps",
            |d| {
                for e in std::fs::read_dir(d.join("member/snap")).expect("snap") {
                    let p = e.expect("e").path();
                    if p.extension().is_some_and(|x| x == "snap") {
                        let len = std::fs::metadata(&p).expect("len").len();
                        flip(&p, len / 2, 0xff);
                    }
                }
            },
            0,
        ),
        (
            "empty db file, with .snap files",
            "snaps",
            |d| std::fs::write(d.join("member/snap/db"), b"").expect("empty"),
            0,
        ),
        ("intact, 3 WAL segments", "segments", |_| {}, 0),
        (
            "missing middle WAL segment",
            "segments",
            |d| std::fs::remove_file(&wal_files(d)[1]).expect("rm"),
            0,
        ),
    ]
}

/// Whether `served` is the acknowledged writes, but for at most `may_lose` of the last ones.
fn serves_acked(served: &Keys, acked: &[(String, Vec<u8>)], may_lose: usize) -> Result<(), String> {
    for lost in 0..=may_lose.min(acked.len()) {
        let want: Keys = acked[..acked.len() - lost].iter().cloned().collect();
        if *served == want {
            return Ok(());
        }
    }
    let want: Keys = acked.iter().cloned().collect();
    let missing = want.keys().filter(|k| !served.contains_key(*k)).count();
    let wrong = want
        .iter()
        .filter(|(k, v)| served.get(*k).is_some_and(|s| s != *v))
        .count();
    let extra = served.keys().filter(|k| !want.contains_key(*k)).count();
    Err(format!(
        "{missing} acknowledged keys missing, {wrong} with other values, {extra} unknown"
    ))
}

/// `etcdbrctl initialize` of member `t` on `data` from the fixture's store, with `etcd` as the
/// temporary etcd: whether it succeeded, and its output.
fn initialize(
    v: EtcdVersion,
    fx: &Fixture,
    data: &Path,
    mode: &str,
    temp_dir: &Path,
    etcd: &Path,
) -> (bool, String) {
    let o = etcdbrctl()
        .args(["initialize", "--validation-mode", mode, "--name", "t"])
        .arg("--data-dir")
        .arg(data)
        .args(["--initial-cluster", &format!("t={}", fx.peer)])
        .args(["--initial-advertise-peer-urls", &fx.peer])
        .arg("--restoration-temp-snapshots-dir")
        .arg(temp_dir)
        .arg("--etcd-binary")
        .arg(etcd)
        .arg("--etcd-restore-tool")
        .arg(v.status_tool().0)
        .arg("--store-container")
        .arg(&fx.store)
        .output()
        .expect("initialize");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    (o.status.success(), text)
}

/// etcdbrctl initialize on a copy of the damaged directory; what it did, and what etcd serves
/// on the result (checked against what it must serve).
fn ours(
    v: EtcdVersion,
    fx: &Fixture,
    damaged: &Path,
    mode: &str,
    etcd_served: Option<&Keys>,
    work: &Path,
) -> (String, Result<(), String>, String) {
    let d = work.join(format!("ours-{mode}"));
    copy_dir(damaged, &d);
    let (ok, text) = initialize(
        v,
        fx,
        &d,
        mode,
        &work.join(format!("rtmp-{mode}")),
        &v.etcd(),
    );
    let action = if !ok {
        return ("failed".into(), Err(text.clone()), text);
    } else if text.contains("action: Kept") {
        "kept"
    } else if text.contains("action: Restored") {
        "restored"
    } else {
        return ("?".into(), Err(text.clone()), text);
    };
    let served = boot(v, &d, &work.join(format!("boot-{mode}.log")));
    let check = match (&served, action) {
        (Served::Data(keys), "kept") => match etcd_served {
            Some(want) if keys == want => Ok(()),
            Some(_) => serves_acked(keys, &fx.acked, 0).map_err(|e| {
                format!("kept, but etcd then serves other data than on the damaged copy: {e}")
            }),
            None => Err("kept a directory etcd cannot serve".into()),
        },
        (Served::Data(keys), _) if *keys == fx.backup => Ok(()),
        (Served::Data(keys), _) => Err(format!(
            "restored, but serves {} keys, not the backup's {}",
            keys.len(),
            fx.backup.len()
        )),
        (other, _) => Err(format!("etcd on the result: {other:?}")),
    };
    (action.into(), check, text)
}

fn matrix(v: EtcdVersion, label: &str) {
    let root = tempfile::tempdir().expect("tmp");
    let fixtures = [
        ("plain", plain_fixture(v, root.path())),
        ("snaps", snap_fixture(v, root.path())),
        ("segments", segments_fixture(v, root.path())),
    ];
    let mut rows = Vec::new();
    let mut failures = Vec::new();
    for (i, (name, fixture, damage, may_lose)) in cases().into_iter().enumerate() {
        let fx = &fixtures
            .iter()
            .find(|(n, _)| *n == fixture)
            .expect("fixture")
            .1;
        let work = root.path().join(format!("case-{i}"));
        std::fs::create_dir_all(&work).expect("work");
        let damaged = work.join("damaged");
        copy_dir(&fx.data, &damaged);
        damage(&damaged);
        // etcd's own verdict, on a copy
        let oracle = work.join("oracle");
        copy_dir(&damaged, &oracle);
        let served = boot(v, &oracle, &work.join("oracle.log"));
        let (etcd_ok, verdict) = match &served {
            Served::Data(keys) => match serves_acked(keys, &fx.acked, may_lose) {
                Ok(()) => (
                    true,
                    format!(
                        "starts, serves {} of {} acknowledged writes",
                        keys.len(),
                        fx.acked.len()
                    ),
                ),
                Err(e) => (false, format!("starts, serves wrong data: {e}")),
            },
            Served::NoWrites(keys) => (
                false,
                format!(
                    "starts, serves {} keys, a new write is not applied",
                    keys.len()
                ),
            ),
            Served::Fails(why) => (false, format!("does not start: {why}")),
        };
        let etcd_keys = match (&served, etcd_ok) {
            (Served::Data(k), true) => Some(k.clone()),
            _ => None,
        };
        let want = if etcd_ok { "kept" } else { "restored" };
        let mut cells = Vec::new();
        for mode in ["full", "sanity"] {
            let (action, check, said) = ours(v, fx, &damaged, mode, etcd_keys.as_ref(), &work);
            let agrees = action == want && check.is_ok();
            if !agrees {
                // what initialize logged, for the why of a verdict that differs
                let tail: String = said.lines().rev().take(12).collect::<Vec<_>>().join("\n  ");
                failures.push(format!(
                    "{label} / {name} / {mode}: etcd {verdict}; ours {action}: {}\n  initialize said (last lines, newest first):\n  {tail}",
                    check.err().unwrap_or_default()
                ));
            }
            cells.push(format!(
                "{action}{}",
                if agrees { "" } else { " (DISAGREES)" }
            ));
        }
        rows.push(format!(
            "| {label} | {name} | {verdict} | {} | {} |",
            cells[0], cells[1]
        ));
    }
    println!("| etcd | damage | etcd's own verdict | initialize full | initialize sanity |");
    println!("|---|---|---|---|---|");
    for r in &rows {
        println!("{r}");
    }
    assert!(
        failures.is_empty(),
        "disagreements:\n{}",
        failures.join("\n")
    );
}

#[test]
fn damage_matrix_etcd_3_4() {
    matrix(EtcdVersion::V34, "3.4.23");
}

#[test]
fn damage_matrix_etcd_3_5() {
    matrix(EtcdVersion::V35, "3.5.1");
}

/// A port taken between the moment the temporary etcd's ports are chosen and the moment etcd
/// binds them is not damage: the validation's WAL replay starts etcd again on other ports and
/// keeps the directory. The fault is real: the first start of etcd (through a wrapper) finds
/// its peer port held by another listener.
#[test]
fn a_taken_port_is_not_damage() {
    let v = EtcdVersion::V35;
    let root = tempfile::tempdir().expect("tmp");
    let fx = plain_fixture(v, root.path());
    let marker = root.path().join("port-taken");
    let wrapper = root.path().join("etcd-first-start-port-taken");
    std::fs::write(
        &wrapper,
        format!(
            r#"#!/bin/sh
real='{real}'; marker='{marker}'
port=; prev=
for a in "$@"; do [ "$prev" = --listen-peer-urls ] && port=${{a##*:}}; prev=$a; done
if [ -z "$port" ] || [ -e "$marker" ]; then exec "$real" "$@"; fi
python3 -c 'import socket,sys,time
s=socket.socket(); s.bind(("127.0.0.1", int(sys.argv[1]))); s.listen(1)
open(sys.argv[2], "w").close(); time.sleep(60)' "$port" "$marker" &
holder=$!
i=0; while [ ! -e "$marker" ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i+1)); done
"$real" "$@"; rc=$?
kill $holder; exit $rc
"#,
            real = v.etcd().display(),
            marker = marker.display()
        ),
    )
    .expect("wrapper");
    run_ok(Command::new("chmod").arg("+x").arg(&wrapper));
    let d = root.path().join("member-copy");
    copy_dir(&fx.data, &d);
    let (ok, text) = initialize(v, &fx, &d, "full", &root.path().join("rtmp"), &wrapper);
    assert!(marker.exists(), "the fault was not injected:\n{text}");
    assert!(ok, "{text}");
    assert!(text.contains("could not bind its port"), "{text}");
    assert!(text.contains("action: Kept"), "{text}");
    match boot(v, &d, &root.path().join("boot.log")) {
        Served::Data(keys) => serves_acked(&keys, &fx.acked, 0).expect("every acknowledged write"),
        other => panic!("etcd on the kept directory: {other:?}"),
    }
}
