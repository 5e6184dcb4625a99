//! Cluster recovery as deployed: the chart's 3-member StatefulSet, rendered from `chart/` and run
//! as local processes (module `pods`), under a write load, from a first install to every
//! member's data lost. Each scenario checks every member's keyspace field by field against the
//! acknowledged writes and the stored chain for gaps, and prints the time to recover.

mod pods;

use crate::common::*;
use pods::*;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const V: EtcdVersion = EtcdVersion::V35;
const BUCKET: &str = "backups";
const HEALTHY: Duration = Duration::from_secs(150);

/// The store's snapshots, sorted.
fn stored(moto: &Moto) -> Vec<etcdbr::format::layout::Snapshot> {
    use futures::TryStreamExt;
    let store = moto.store();
    let prefix = object_store::path::Path::from(format!("{RELEASE}/v2"));
    let objects: Vec<object_store::ObjectMeta> = rt()
        .block_on(store.list(Some(&prefix)).try_collect())
        .expect("list");
    let mut v: Vec<etcdbr::format::layout::Snapshot> = objects
        .iter()
        .filter_map(|o| etcdbr::format::layout::Snapshot::parse_key(o.location.as_ref()).ok())
        .collect();
    etcdbr::format::layout::sort(&mut v);
    v
}

/// Checks the chain for gaps; returns the last revision it covers.
fn chain(moto: &Moto) -> i64 {
    let snaps = stored(moto);
    let store = moto.store();
    let fetch = |s: &etcdbr::format::layout::Snapshot| -> Vec<u8> {
        use object_store::ObjectStoreExt;
        let p = object_store::path::Path::from(s.key(RELEASE));
        rt().block_on(async {
            store
                .get(&p)
                .await
                .expect("get")
                .bytes()
                .await
                .expect("bytes")
        })
        .to_vec()
    };
    check_chain(&snaps, &fetch);
    snaps.iter().map(|s| s.last_revision).max().unwrap_or(0)
}

/// Waits until the store covers `rev`.
fn stored_up_to(moto: &Moto, rev: i64, set: &StatefulSet) {
    let t = Instant::now();
    while chain(moto) < rev {
        assert!(
            t.elapsed() < Duration::from_secs(60),
            "the store does not reach revision {rev}\n{}",
            set.diagnose()
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}

struct Load {
    stop: Arc<AtomicBool>,
    handle: std::thread::JoinHandle<BTreeMap<String, i64>>,
}

fn load(set: &StatefulSet, first: u64) -> Load {
    let stop = Arc::new(AtomicBool::new(false));
    let eps = (0..set.spec.replicas)
        .map(|i| format!("http://{}:{}", set.ip(i), set.spec.client_port))
        .collect();
    Load {
        handle: pods::writer(eps, stop.clone(), first),
        stop,
    }
}

impl Load {
    fn finish(self) -> BTreeMap<String, i64> {
        self.stop.store(true, Ordering::Relaxed);
        self.handle.join().expect("writer")
    }
}

/// A first install: empty volumes, empty store; pods started together (Parallel) or one after
/// another.
fn first_install(staggered: bool) -> (Moto, StatefulSet) {
    first_install_on(V, staggered)
}

fn first_install_on(version: EtcdVersion, staggered: bool) -> (Moto, StatefulSet) {
    first_install_with(version, staggered, serde_json::json!({}))
}

/// [`first_install_on`] with `over` merged over the scenarios' values.
fn first_install_with(
    version: EtcdVersion,
    staggered: bool,
    over: serde_json::Value,
) -> (Moto, StatefulSet) {
    let moto = Moto::start(BUCKET);
    let mut values = values(&moto.endpoint, BUCKET);
    merge(&mut values, &over);
    let mut set = StatefulSet::new(version, &values);
    for i in 0..3 {
        set.start_pod(i);
        if staggered {
            std::thread::sleep(Duration::from_secs(8));
        }
    }
    let took = set.wait_healthy(HEALTHY);
    eprintln!("first install (staggered: {staggered}): healthy in {took:?}");
    (moto, set)
}

#[test]
fn scenario_0_first_install_parallel() {
    let (moto, set) = first_install(false);
    let w = load(&set, 0);
    std::thread::sleep(Duration::from_secs(5));
    let acked = w.finish();
    assert!(acked.len() > 50, "only {} writes", acked.len());
    let (rev, ks) = converged(&set, Duration::from_secs(30));
    assert_eq!(check_acked(&ks, &acked, i64::MAX), acked.len());
    stored_up_to(&moto, rev, &set);
    assert!(stored(&moto)
        .iter()
        .any(|s| s.kind == etcdbr::format::layout::Kind::Full));
    api_as_deployed(&set, &moto);
}

/// The sidecars' API as the chart deploys it: the token Secret is required (not for the
/// probes' and scrapers' paths), a follower forwards an authorized request to the leader's
/// sidecar, and the client Service does not publish the API.
fn api_as_deployed(set: &StatefulSet, moto: &Moto) {
    let l = leader(set);
    let f = (l + 1) % 3;
    for i in [l, f] {
        let (code, body) = set.api(i, "/snapshot/latest", false).expect("answer");
        assert_eq!(code, 401, "without the token: {body}");
        let (code, body) = set.api(i, "/initialization/start", false).expect("answer");
        assert_eq!(code, 401, "without the token: {body}");
        assert_eq!(set.api(i, "/healthz", false).map(|a| a.0), Some(200));
        let (code, body) = set.api(i, "/snapshot/latest", true).expect("answer");
        assert_eq!(code, 200, "with the token: {body}");
    }
    let (code, body) = set.api(f, "/snapshot/full", true).expect("answer");
    assert_eq!(
        code, 200,
        "forwarded by the follower with the token: {body}"
    );
    let v: serde_json::Value = serde_json::from_str(&body).expect("json");
    let name = v["snapName"].as_str().expect("snapName");
    assert!(
        stored(moto).iter().any(|s| s.snap_name == name),
        "{name} is in the store"
    );
    let published = std::net::TcpStream::connect_timeout(
        &format!("{}:{}", set.service_ip(), set.spec.backup_port)
            .parse()
            .expect("addr"),
        Duration::from_millis(300),
    );
    assert!(
        published.is_err(),
        "the client Service must not publish the sidecar API"
    );
}

#[test]
fn scenario_0_first_install_one_by_one() {
    let (moto, set) = first_install(true);
    let (rev, _) = converged(&set, Duration::from_secs(30));
    stored_up_to(&moto, rev, &set);
}

/// Index of the pod whose etcd leads.
fn leader(set: &StatefulSet) -> usize {
    let t = Instant::now();
    loop {
        for i in 0..set.pods.len() {
            if set.pods[i].is_none() {
                continue;
            }
            let out = set.etcdctl(
                &[format!("http://{}:{}", set.ip(i), set.spec.client_port)],
                &["endpoint", "status", "-w", "json"],
            );
            if let Ok(v) = serde_json::from_slice::<serde_json::Value>(&out.stdout) {
                let st = &v[0]["Status"];
                if st["leader"].as_u64().is_some_and(|l| l != 0)
                    && st["leader"] == st["header"]["member_id"]
                {
                    return i;
                }
            }
        }
        assert!(
            t.elapsed() < Duration::from_secs(30),
            "no leader\n{}",
            set.diagnose()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Member name -> ID as the cluster lists them.
fn member_ids(set: &StatefulSet) -> BTreeMap<String, u64> {
    let via = (0..set.pods.len()).find(|i| set.is_ready(*i)).unwrap_or(0);
    set.members(via)
        .unwrap_or_default()
        .into_iter()
        .map(|(id, name, _)| (name, id))
        .collect()
}

/// After a recovery: every member healthy and equal, every acknowledged write up to `upto`
/// served as acknowledged, the chain without gap and past the cluster's revision.
fn check_recovered(
    set: &StatefulSet,
    moto: &Moto,
    acked: &BTreeMap<String, i64>,
    upto: i64,
) -> usize {
    let (rev, ks) = converged(set, Duration::from_secs(60));
    let n = check_acked(&ks, acked, upto);
    stored_up_to(moto, rev, set);
    n
}

/// Waits until member `name` is listed under another ID than `old`, then for a healthy cluster.
fn rejoined(set: &StatefulSet, name: &str, old: u64) {
    let t = Instant::now();
    while member_ids(set).get(name).is_none_or(|id| *id == old) {
        assert!(
            t.elapsed() < HEALTHY,
            "{name} does not rejoin\n{}",
            set.diagnose()
        );
        std::thread::sleep(Duration::from_millis(250));
    }
    set.wait_healthy(HEALTHY);
}

/// After a recovery, writes go on and are backed up; returns the keyspace.
fn keeps_backing_up(set: &StatefulSet, moto: &Moto) -> BTreeMap<Vec<u8>, Kv> {
    let w = load(set, 2_000_000);
    std::thread::sleep(Duration::from_secs(3));
    let more = w.finish();
    let (rev, ks) = converged(set, Duration::from_secs(30));
    check_acked(&ks, &more, i64::MAX);
    stored_up_to(moto, rev, set);
    ks
}

/// The pod's data volume replaced by an empty one (the pod is deleted).
fn wipe_volume(set: &StatefulSet, i: usize) {
    let data = set.dir.path().join(set.pod_name(i)).join("data");
    std::fs::remove_dir_all(&data).expect("wipe the volume");
    std::fs::create_dir_all(&data).expect("new volume");
}

/// Logs of every sidecar, for what they did.
fn sidecar_logs(set: &StatefulSet) -> String {
    set.pods
        .iter()
        .flatten()
        .map(|p| p.log("backup"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// A lost member: `member/` deleted (seed 003) or the whole volume replaced by an empty one.
fn one_member_lost(version: EtcdVersion, whole_volume: bool) {
    let (moto, mut set) = first_install_on(version, false);
    let w = load(&set, 0);
    std::thread::sleep(Duration::from_secs(4));
    let victim = (leader(&set) + 1) % 3;
    let before = member_ids(&set);
    let lost_at = Instant::now();
    if whole_volume {
        set.delete_pod(victim, Duration::from_secs(30));
        wipe_volume(&set, victim);
        set.start_pod(victim);
    } else {
        let data = set
            .dir
            .path()
            .join(set.pod_name(victim))
            .join("data/new.etcd/member");
        std::fs::remove_dir_all(&data).expect("rm member");
        // etcd serves from its open files until it dies (here: killed, as the drill does)
        std::thread::sleep(Duration::from_secs(1));
        set.kill_container(victim, ETCD);
    }
    let name = set.pod_name(victim);
    rejoined(&set, &name, before[&name]);
    let took = lost_at.elapsed();
    std::thread::sleep(Duration::from_secs(3));
    let acked = w.finish();
    let n = check_recovered(&set, &moto, &acked, i64::MAX);
    let (rev, ks) = converged(&set, Duration::from_secs(10));
    let after = member_ids(&set);
    assert_ne!(
        before[&name], after[&name],
        "{name} was re-added under a new ID"
    );
    eprintln!(
        "RTO one member lost ({}, etcd {version:?}): {:.1} s to a healthy 3-member cluster serving every key; {n} acknowledged writes, {} keys, revision {rev}, db {}",
        if whole_volume { "volume replaced" } else { "member/ deleted" },
        took.as_secs_f64(),
        ks.len(),
        db_size(&set)
    );
}

#[test]
fn scenario_a_member_dir_deleted() {
    one_member_lost(V, false);
}

#[test]
fn scenario_a_member_dir_deleted_etcd_3_4() {
    one_member_lost(EtcdVersion::V34, false);
}

#[test]
fn scenario_b_volume_replaced() {
    one_member_lost(V, true);
}

/// The db size as a member reports it, for the RTO lines.
fn db_size(set: &StatefulSet) -> String {
    let out = set.etcdctl(&set.endpoints()[..1], &["endpoint", "status", "-w", "json"]);
    serde_json::from_slice::<serde_json::Value>(&out.stdout)
        .ok()
        .and_then(|v| v[0]["Status"]["dbSize"].as_u64())
        .map(|b| format!("{:.1} MiB", b as f64 / 1048576.0))
        .unwrap_or_else(|| "unknown".into())
}

/// An unacknowledged record half on disk after the last one (a write in flight when the
/// process died): its data runs into zeroed sectors, which etcd truncates as a torn tail.
fn tear_wal_tail(data: &std::path::Path) {
    let last = wal_files(data).pop().expect("a WAL file");
    let end = records(&last)
        .last()
        .map(|(off, len, pad)| off + 8 + len + pad)
        .expect("a record");
    let size = std::fs::metadata(&last).expect("wal").len();
    assert!(end + 8 + 2048 <= size, "room after the last record");
    use std::io::{Seek, Write};
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .open(&last)
        .expect("open");
    f.seek(std::io::SeekFrom::Start(end)).expect("seek");
    f.write_all(&2000u64.to_le_bytes()).expect("frame");
    f.write_all(&[0xAB; 300]).expect("partial record");
    f.sync_all().expect("sync");
}

#[test]
fn scenario_c_killed_with_a_torn_wal_tail() {
    let (moto, set) = first_install(false);
    let w = load(&set, 0);
    std::thread::sleep(Duration::from_secs(4));
    let victim = (leader(&set) + 2) % 3;
    let before = member_ids(&set);
    let restarts = set.pod(victim).restarts(ETCD);
    let killed_at = Instant::now();
    set.kill_and_hold(victim, ETCD);
    tear_wal_tail(
        &set.dir
            .path()
            .join(set.pod_name(victim))
            .join("data/new.etcd"),
    );
    set.release(victim, ETCD);
    // back: started again, and its etcd healthy (the readiness of before does not count)
    while set.pod(victim).restarts(ETCD) == restarts
        || !http_get(&set.ip(victim), set.spec.metrics_port, "/health")
            .is_some_and(|(code, body)| code == 200 && body.contains("true"))
    {
        assert!(killed_at.elapsed() < HEALTHY, "{}", set.diagnose());
        std::thread::sleep(Duration::from_millis(100));
    }
    let took = killed_at.elapsed();
    set.wait_healthy(HEALTHY);
    std::thread::sleep(Duration::from_secs(2));
    let acked = w.finish();
    check_recovered(&set, &moto, &acked, i64::MAX);
    assert_eq!(member_ids(&set), before, "same members, same IDs");
    let log = set.pod(victim).log("backup");
    assert!(
        log.contains("torn record") && !log.contains("restoring") && !log.contains("learner"),
        "kept on its own data:\n{log}"
    );
    eprintln!(
        "member killed with a torn WAL tail: back in {:.1} s on its own data",
        took.as_secs_f64()
    );
}

#[test]
fn scenario_f_rolling_restart_leader_last() {
    let (moto, mut set) = first_install(false);
    let w = load(&set, 0);
    std::thread::sleep(Duration::from_secs(3));
    let before = member_ids(&set);
    let l = leader(&set);
    let order: Vec<usize> = (0..3).filter(|i| *i != l).chain([l]).collect();
    for i in order {
        set.delete_pod(i, Duration::from_secs(30));
        set.start_pod(i);
        set.wait_healthy(HEALTHY);
    }
    std::thread::sleep(Duration::from_secs(3));
    let acked = w.finish();
    check_recovered(&set, &moto, &acked, i64::MAX);
    assert_eq!(member_ids(&set), before, "same members, same IDs");
    let logs = sidecar_logs(&set);
    assert!(
        !logs.contains("restoring") && !logs.contains("learner") && !logs.contains("moved aside"),
        "no member was initialised from the store or re-added"
    );
    for pod in set.pods.iter().flatten() {
        assert!(
            pod.log("etcd").contains("validation mode: sanity"),
            "{}: a clean stop validates in sanity mode",
            pod.name
        );
    }
}

#[test]
fn scenario_g_leader_killed() {
    let (moto, set) = first_install(false);
    let w = load(&set, 0);
    std::thread::sleep(Duration::from_secs(4));
    let l = leader(&set);
    let before = chain(&moto);
    set.kill_container(l, ETCD);
    set.kill_container(l, BACKUP);
    std::thread::sleep(Duration::from_secs(6));
    let acked = w.finish();
    set.wait_healthy(HEALTHY);
    check_recovered(&set, &moto, &acked, i64::MAX);
    assert!(chain(&moto) > before, "the chain continues");
}

/// Every member's data lost: the first member restores from the store, the others join it.
/// On 3.5 with the chart's encryption at rest on (both Secrets): every member restores from
/// the encrypted store by itself.
#[test]
fn scenario_e_all_members_lost() {
    all_members_lost(V, true);
}

#[test]
fn scenario_e_all_members_lost_etcd_3_4() {
    all_members_lost(EtcdVersion::V34, false);
}

/// Writes for 5 s and waits until the store holds every write, then starts a second load (keys
/// from 1,000,000, running for 2 s already) for the disaster to interrupt: what the first load
/// acknowledged, and the second load.
fn backed_up_then_loaded(set: &StatefulSet, moto: &Moto) -> (BTreeMap<String, i64>, Load) {
    let w = load(set, 0);
    std::thread::sleep(Duration::from_secs(5));
    let acked = w.finish();
    let (rev, _) = converged(set, Duration::from_secs(30));
    stored_up_to(moto, rev, set);
    let w = load(set, 1_000_000);
    std::thread::sleep(Duration::from_secs(2));
    (acked, w)
}

fn all_members_lost(version: EtcdVersion, encrypted: bool) {
    let over = if encrypted {
        serde_json::json!({"backup": {"encryption": {
            "recipientsSecret": "etcd-backup-age-recipients",
            "identitySecret": "etcd-backup-age-identity",
        }}})
    } else {
        serde_json::json!({})
    };
    let (moto, mut set) = first_install_with(version, false, over);
    let (acked_before, w) = backed_up_then_loaded(&set, &moto);
    let lost_at = Instant::now();
    for i in 0..3 {
        set.delete_pod(i, Duration::from_secs(0));
    }
    let acked_after = w.finish();
    let stored_rev = chain(&moto);
    let snaps = stored(&moto);
    assert!(
        snaps.iter().all(|s| s.encrypted == encrypted),
        "encrypted {encrypted}: {:?}",
        snaps.iter().map(|s| &s.snap_name).collect::<Vec<_>>()
    );
    for i in 0..3 {
        wipe_volume(&set, i);
    }
    for i in 0..3 {
        set.start_pod(i);
    }
    set.wait_healthy(HEALTHY);
    let took = lost_at.elapsed();
    let mut acked = acked_before;
    acked.extend(acked_after);
    let (_, ks) = converged(&set, Duration::from_secs(60));
    let n = check_acked(&ks, &acked, stored_rev);
    assert!(n > 50);
    let ks = keeps_backing_up(&set, &moto);
    eprintln!(
        "RTO all members lost (etcd {version:?}): {:.1} s to a healthy 3-member cluster serving the {n} acknowledged writes up to the last stored revision {stored_rev} ({} keys, db {})",
        took.as_secs_f64(),
        ks.len(),
        db_size(&set)
    );
}

/// Quorum lost: two members' data gone (the first member's among them). The survivor has no
/// leader and the others cannot join it; the runbook's one command on the survivor rebuilds the
/// cluster from the store.
#[test]
fn scenario_d_quorum_lost() {
    let (moto, mut set) = first_install(false);
    let (acked_before, w) = backed_up_then_loaded(&set, &moto);
    let survivor = 1;
    let lost_at = Instant::now();
    for i in [0, 2] {
        set.delete_pod(i, Duration::from_secs(0));
        wipe_volume(&set, i);
    }
    let acked_after = w.finish();
    let stored_rev = chain(&moto);
    for i in [0, 2] {
        set.start_pod(i);
    }
    // nothing recovers by itself: the lost members refuse to split the cluster, and say why
    // (the survivor's own "lost quorum?" role message does not count)
    let lost_logs = || {
        [0, 2]
            .iter()
            .filter_map(|i| set.pods[*i].as_ref())
            .map(|p| p.log("backup"))
            .collect::<Vec<_>>()
            .join("\n")
    };
    let t = Instant::now();
    while !lost_logs().contains("'quorum lost' procedure") {
        assert!(t.elapsed() < HEALTHY, "{}", set.diagnose());
        std::thread::sleep(Duration::from_millis(500));
    }
    // and no member is ready (readiness is probed every 0.5 s)
    let t = Instant::now();
    while (0..3).any(|i| set.is_ready(i)) {
        assert!(t.elapsed() < Duration::from_secs(10), "{}", set.diagnose());
        std::thread::sleep(Duration::from_millis(200));
    }
    // the runbook's command, on the survivor
    let asked = Instant::now();
    let (ok, out) = set.exec(
        survivor,
        ETCD,
        &[
            "/bin/sh",
            "/usr/local/bin/etcd-bootstrap.sh",
            "restore-cluster",
        ],
    );
    assert!(ok, "{out}");
    set.wait_healthy(HEALTHY);
    let took = asked.elapsed();
    let mut acked = acked_before;
    acked.extend(acked_after);
    let (_, ks) = converged(&set, Duration::from_secs(60));
    let n = check_acked(&ks, &acked, stored_rev);
    assert!(n > 50);
    let aside = std::fs::read_dir(set.dir.path().join(set.pod_name(survivor)).join("data"))
        .expect("data")
        .filter_map(|e| e.ok())
        .any(|e| e.file_name().to_string_lossy().contains(".invalid-"));
    assert!(aside, "the survivor's data is kept aside");
    let ks = keeps_backing_up(&set, &moto);
    eprintln!(
        "RTO quorum lost: {:.1} s from the runbook command ({:.1} s from the loss) to a healthy 3-member cluster serving the {n} acknowledged writes up to the last stored revision {stored_rev} ({} keys, db {})",
        took.as_secs_f64(),
        lost_at.elapsed().as_secs_f64(),
        ks.len(),
        db_size(&set)
    );
}

/// A member removed from the cluster (by an operator, or by a half-finished recovery) comes
/// back: its etcd, refused by its peers, exits by itself; that is not a clean stop, and its
/// valid data of a removed member is not kept: it rejoins as a new member.
#[test]
fn removed_member_rejoins_under_a_new_identity() {
    let (moto, set) = first_install(false);
    let w = load(&set, 0);
    std::thread::sleep(Duration::from_secs(3));
    let victim = (leader(&set) + 1) % 3;
    let name = set.pod_name(victim);
    let before = member_ids(&set);
    let other = (victim + 1) % 3;
    // etcd refuses while a remaining member has been connected for less than 5 s
    let t = Instant::now();
    loop {
        let out = set.etcdctl(
            &[format!("http://{}:{}", set.ip(other), set.spec.client_port)],
            &["member", "remove", &format!("{:x}", before[&name])],
        );
        if out.status.success() {
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(30),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        std::thread::sleep(Duration::from_secs(1));
    }
    rejoined(&set, &name, before[&name]);
    std::thread::sleep(Duration::from_secs(2));
    let acked = w.finish();
    check_recovered(&set, &moto, &acked, i64::MAX);
    let pod = set.pod(victim);
    assert!(
        pod.log("etcd")
            .contains("by itself: the next start validates fully"),
        "{}",
        pod.log("etcd")
    );
    assert!(
        pod.log("backup").contains("no longer lists"),
        "{}",
        pod.log("backup")
    );
}
