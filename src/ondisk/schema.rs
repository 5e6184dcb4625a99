//! etcd's schema inside its bbolt file: the `key` bucket's revision keys and `KeyValue` values,
//! the `meta` bucket's compaction marks and consistent index, and the `lease` bucket, plus
//! `snapshot status` computed exactly as etcdctl 3.4 / etcdutl 3.5 do.

use crate::ondisk::bbolt::{Bucket, Db, Problem};

pub(crate) const KEY_BUCKET: &[u8] = b"key";
pub(crate) const META_BUCKET: &[u8] = b"meta";
pub(crate) const LEASE_BUCKET: &[u8] = b"lease";

/// A revision: the main revision of a write transaction and the index of the change in it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Revision {
    /// The revision.
    pub main: i64,
    /// The change within the revision's transaction.
    pub sub: i64,
}

/// A `key` bucket key: 17 bytes `main(BE) '_' sub(BE)`, plus `'t'` for a tombstone.
pub(crate) fn parse_revision_key(k: &[u8]) -> Option<(Revision, bool)> {
    let tombstone = match k.len() {
        17 => false,
        18 if k[17] == b't' => true,
        _ => return None,
    };
    if k[8] != b'_' {
        return None;
    }
    let main = i64::from_be_bytes(k[0..8].try_into().ok()?);
    let sub = i64::from_be_bytes(k[9..17].try_into().ok()?);
    (main >= 0 && sub >= 0).then_some((Revision { main, sub }, tombstone))
}

/// The 17-byte form of a revision (as in `meta/finishedCompactRev`).
pub fn revision_key(rev: Revision) -> [u8; 17] {
    let mut k = [0u8; 17];
    k[0..8].copy_from_slice(&rev.main.to_be_bytes());
    k[8] = b'_';
    k[9..17].copy_from_slice(&rev.sub.to_be_bytes());
    k
}

/// `mvccpb.KeyValue`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct KeyValue {
    #[prost(bytes = "vec", tag = "1")]
    pub(crate) key: Vec<u8>,
    #[prost(int64, tag = "2")]
    pub(crate) create_revision: i64,
    #[prost(int64, tag = "3")]
    pub(crate) mod_revision: i64,
    #[prost(int64, tag = "4")]
    pub(crate) version: i64,
    #[prost(bytes = "vec", tag = "5")]
    pub(crate) value: Vec<u8>,
    #[prost(int64, tag = "6")]
    pub(crate) lease: i64,
}

/// `leasepb.Lease`.
#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct Lease {
    #[prost(int64, tag = "1")]
    pub(crate) id: i64,
    #[prost(int64, tag = "2")]
    pub(crate) ttl: i64,
    #[prost(int64, tag = "3")]
    pub(crate) remaining_ttl: i64,
}

/// Decodes an mvcc KeyValue (etcd's protobuf) from a value of the "key" bucket.
pub fn decode_kv(v: &[u8]) -> Result<KeyValue, String> {
    <KeyValue as prost::Message>::decode(v).map_err(|e| format!("not a KeyValue: {e}"))
}

/// What `etcdctl snapshot status` reports, plus what it misses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Status {
    /// CRC-32C over every bucket name, key and value (etcd's status hash).
    pub(crate) hash: u32,
    /// Main revision of the last `key` bucket key (etcdctl's REVISION; ignores compaction).
    pub(crate) revision: i64,
    /// Entries of all buckets (3.4/3.5's TOTAL KEYS).
    pub(crate) total_keys: u64,
    /// Live user keys (3.6's TOTAL KEYS).
    pub(crate) live_keys: u64,
    /// The high-water mark in bytes (TOTAL SIZE).
    pub(crate) total_size: u64,
    pub(crate) finished_compact: Option<i64>,
    pub(crate) scheduled_compact: Option<i64>,
    pub(crate) consistent_index: Option<u64>,
    /// `meta/storageVersion` (3.6+).
    pub(crate) storage_version: Option<String>,
}

impl Status {
    /// The store revision etcd restores: the last revision, unless a compaction removed the
    /// newest keys (etcd-io/etcd#11627).
    pub fn effective_revision(&self) -> i64 {
        self.revision
            .max(self.finished_compact.unwrap_or(0))
            .max(self.scheduled_compact.unwrap_or(0))
            .max(1)
    }
}

pub(crate) fn meta_revision(v: &[u8]) -> Option<i64> {
    parse_revision_key(v).map(|(r, _)| r.main)
}

/// The revision marks of a db, read cheaply (the `meta` bucket and the last key only).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct Revisions {
    /// Main revision of the last `key` bucket key (0: no key).
    pub(crate) last: i64,
    pub(crate) finished_compact: Option<i64>,
    pub(crate) scheduled_compact: Option<i64>,
    pub(crate) consistent_index: Option<u64>,
}

impl Revisions {
    /// The store revision etcd restores (see [`Status::effective_revision`]).
    pub(crate) fn effective(&self) -> i64 {
        self.last
            .max(self.finished_compact.unwrap_or(0))
            .max(self.scheduled_compact.unwrap_or(0))
            .max(1)
    }
}

impl From<&Status> for Revisions {
    fn from(s: &Status) -> Self {
        Revisions {
            last: s.revision,
            finished_compact: s.finished_compact,
            scheduled_compact: s.scheduled_compact,
            consistent_index: s.consistent_index,
        }
    }
}

/// [`Revisions`] from the rightmost path of the `key` bucket and the `meta` bucket: a few pages
/// whatever the size of the db (the sanity check of a data directory).
pub(crate) fn revisions(db: &Db) -> crate::ondisk::bbolt::Result<Revisions> {
    let mut r = Revisions::default();
    for bucket in db.buckets()? {
        if bucket.name == KEY_BUCKET {
            if let Some((k, _)) = db.last(&bucket)? {
                if let Some(b) = k.get(0..8) {
                    r.last = i64::from_be_bytes(b.try_into().unwrap_or_default());
                }
            }
        } else if bucket.name == META_BUCKET {
            db.for_each(&bucket, &mut |_, k, v| {
                match k {
                    b"finishedCompactRev" => r.finished_compact = meta_revision(v),
                    b"scheduledCompactRev" => r.scheduled_compact = meta_revision(v),
                    b"consistent_index" => {
                        r.consistent_index = v.try_into().ok().map(u64::from_be_bytes)
                    }
                    _ => {}
                }
                Ok(())
            })?;
        }
    }
    Ok(r)
}

/// The status accumulated entry by entry, in the order of the walk.
struct StatusBuilder {
    crc: u32,
    st: Status,
    bucket: Vec<u8>,
    /// The latest event per user key decides (the key bucket is in revision order).
    live: std::collections::HashMap<Vec<u8>, bool>,
}

impl StatusBuilder {
    fn new(total_size: u64) -> Self {
        StatusBuilder {
            crc: 0,
            st: Status {
                hash: 0,
                revision: 0,
                total_keys: 0,
                live_keys: 0,
                total_size,
                finished_compact: None,
                scheduled_compact: None,
                consistent_index: None,
                storage_version: None,
            },
            bucket: Vec::new(),
            live: std::collections::HashMap::new(),
        }
    }

    /// A bucket starts: its name is hashed even when it is empty.
    fn start(&mut self, bucket: &[u8]) {
        self.crc = crc32c::crc32c_append(self.crc, bucket);
        self.bucket = bucket.to_vec();
    }

    fn entry(&mut self, k: &[u8], v: &[u8]) -> Result<(), Problem> {
        let bucket = self.bucket.as_slice();
        self.crc = crc32c::crc32c_append(self.crc, k);
        self.crc = crc32c::crc32c_append(self.crc, v);
        let st = &mut self.st;
        st.total_keys += 1;
        if bucket == KEY_BUCKET {
            if let Some(b) = k.get(0..8) {
                st.revision = i64::from_be_bytes(b.try_into().unwrap_or_default());
            }
            let (_, tomb) = parse_revision_key(k).ok_or_else(|| {
                crate::ondisk::bbolt::problem(None, format!("cannot parse revision key {k:02x?}"))
            })?;
            let kv = decode_kv(v).map_err(|m| crate::ondisk::bbolt::problem(None, m))?;
            self.live.insert(kv.key, !tomb);
        } else if bucket == META_BUCKET {
            match k {
                b"finishedCompactRev" => st.finished_compact = meta_revision(v),
                b"scheduledCompactRev" => st.scheduled_compact = meta_revision(v),
                b"consistent_index" => {
                    st.consistent_index = v.try_into().ok().map(u64::from_be_bytes)
                }
                b"storageVersion" => {
                    st.storage_version = Some(String::from_utf8_lossy(v).into_owned())
                }
                _ => {}
            }
        }
        Ok(())
    }

    fn finish(mut self) -> Status {
        self.st.hash = self.crc;
        self.st.live_keys = self.live.values().filter(|l| **l).count() as u64;
        self.st
    }
}

/// Computes the status of an open db in one pass over every bucket (etcdctl 3.4's algorithm,
/// with 3.6's live-key count on the side); stops at the first structural problem.
pub fn status(db: &Db) -> crate::ondisk::bbolt::Result<Status> {
    let mut b = StatusBuilder::new(db.size());
    for bucket in db.buckets()? {
        b.start(&bucket.name);
        db.for_each(&bucket, &mut |_, k, v| b.entry(k, v))?;
    }
    Ok(b.finish())
}

/// The status and bbolt's structural check in one walk (what `snapshot status` runs): the
/// status is only meaningful when the problem list is empty.
pub(crate) fn status_checked(db: &Db) -> (Status, Vec<Problem>) {
    let mut b = StatusBuilder::new(db.size());
    let problems = db.check_with(&mut |bucket, flags, k, v| {
        if flags == crate::ondisk::bbolt::BUCKET_START {
            b.start(bucket);
            Ok(())
        } else {
            b.entry(k, v)
        }
    });
    (b.finish(), problems)
}

/// The `key` bucket of a db, if it has one.
/// etcd's auth state: `Some(auth revision)` when authentication is enabled (bucket `auth`, keys
/// `authEnabled` = 1 and `authRevision`, big-endian), `None` when it is not.
pub(crate) fn auth_enabled_at(db: &Db) -> crate::ondisk::bbolt::Result<Option<u64>> {
    let Some(auth) = db.bucket(b"auth")? else {
        return Ok(None);
    };
    if db.get(&auth, b"authEnabled")?.as_deref() != Some(&[1u8][..]) {
        return Ok(None);
    }
    let rev = db
        .get(&auth, b"authRevision")?
        .and_then(|v| Some(u64::from_be_bytes(v.get(..8)?.try_into().ok()?)))
        .unwrap_or(0);
    Ok(Some(rev))
}

/// The "key" bucket, where mvcc keeps every revision of every key.
pub fn key_bucket(db: &Db) -> crate::ondisk::bbolt::Result<Option<Bucket>> {
    db.bucket(KEY_BUCKET)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn revision_keys_round_trip() {
        let r = Revision { main: 1510, sub: 2 };
        let k = revision_key(r);
        assert_eq!(parse_revision_key(&k), Some((r, false)));
        let mut t = k.to_vec();
        t.push(b't');
        assert_eq!(parse_revision_key(&t), Some((r, true)));
        assert_eq!(parse_revision_key(&k[..16]), None);
        t[17] = b'x';
        assert_eq!(parse_revision_key(&t), None);
    }

    #[test]
    fn keyvalue_decodes_etcd_bytes() {
        // rev 4 overwrite of /a, from the internals notes
        let b = [
            0x0a, 0x02, 0x2f, 0x61, 0x10, 0x02, 0x18, 0x04, 0x20, 0x02, 0x2a, 0x01, 0x33,
        ];
        let kv = decode_kv(&b).expect("decode");
        assert_eq!(kv.key, b"/a");
        assert_eq!((kv.create_revision, kv.mod_revision, kv.version), (2, 4, 2));
        assert_eq!(kv.value, b"3");
    }

    #[test]
    fn crc32c_has_go_update_semantics() {
        let whole = crc32c::crc32c(b"Hello world!");
        assert_eq!(whole, 0x7B98_E751);
        let parts = crc32c::crc32c_append(crc32c::crc32c(b"Hello "), b"world!");
        assert_eq!(parts, whole);
    }
}
