//! The on-the-fly revision reader against snapshots saved by real etcd 3.4.23 and 3.5.1.

use crate::common::*;
use etcdbr::snapshot::revision::RevisionScanner;

fn scan(data: &[u8], floor: i64, chunk: usize) -> Option<i64> {
    let db = (data.len() - 32) as u64;
    let mut s = RevisionScanner::new(floor, db);
    for c in data.chunks(chunk) {
        s.update(c);
    }
    s.finish()
}

fn snapshot(etcd: &Etcd, dir: &std::path::Path, name: &str) -> Vec<u8> {
    let p = dir.join(name);
    etcd.etcdctl(&["snapshot", "save", p.to_str().unwrap()]);
    std::fs::read(&p).unwrap()
}

fn check(etcd: &Etcd, dir: &std::path::Path, name: &str) {
    let rev = etcd.revision();
    let data = snapshot(etcd, dir, name);
    for (floor, chunk) in [
        (0, 32 * 1024),
        (rev, 32 * 1024),
        (rev - 1, 1000),
        (0, 4096),
        (rev, 7 * 4096 + 3),
    ] {
        assert_eq!(
            scan(&data, floor, chunk),
            Some(rev),
            "{name}: floor {floor} chunk {chunk}"
        );
    }
}

fn shapes(version: EtcdVersion) {
    let etcd = Etcd::start(version);
    let tmp = tempfile::tempdir().unwrap();
    // a fresh store: revision 1, empty key bucket
    check(&etcd, tmp.path(), "empty.db");
    etcd.etcdctl(&["put", "/a", "1"]);
    check(&etcd, tmp.path(), "tiny.db"); // inline key bucket
    etcd.fill(20_000, 200); // a multi-level tree
    check(&etcd, tmp.path(), "many.db");
    let big = vec![b'x'; 1_400_000]; // overflow pages beyond the buffered span size
    etcd.put("/big", &big);
    check(&etcd, tmp.path(), "big-last.db");
    etcd.etcdctl(&["put", "/small-after-big", "1"]);
    check(&etcd, tmp.path(), "big-then-small.db");
    // trailing deletes compacted away: the last key is below the store revision
    etcd.etcdctl(&["put", "/t", "1"]);
    etcd.etcdctl(&["del", "/t"]);
    etcd.etcdctl(&["del", "/big"]);
    let rev = etcd.revision();
    etcd.etcdctl(&["compact", &rev.to_string(), "--physical"]);
    check(&etcd, tmp.path(), "compacted.db");
}

#[test]
fn reads_the_revision_of_real_snapshots_etcd34() {
    shapes(EtcdVersion::V34);
}

#[test]
fn reads_the_revision_of_real_snapshots_etcd35() {
    shapes(EtcdVersion::V35);
}

#[test]
fn garbage_never_panics_and_gives_none() {
    let mut x: u64 = 12345;
    for len in [0usize, 1, 100, 512, 4096, 20_000] {
        let data: Vec<u8> = (0..len + 32)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        assert_eq!(scan(&data, 0, 333), None);
    }
}
