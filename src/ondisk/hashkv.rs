//! etcd's keyspace hash (`HashKV`), computed natively from a db file: the number a member
//! answers to `Maintenance.HashKV(revision)` while its compaction is at `compact_revision`,
//! without starting etcd. A backup recorded with etcd's own hash can so be proven equal to
//! the cluster it came from.
//!
//! etcd (3.4.23, 3.5.x: `mvcc.store.HashByRev`) hashes with CRC-32C, after the bucket name
//! `key`, every entry (revision key, then value) of the `key` bucket up to `revision`; of the
//! entries at or below `compact_revision` only those compaction at `revision` keeps
//! (`kvindex.Keep(revision)`: per key, its newest revision at or below `revision` when that is
//! a put), unless nothing is kept at all; 3.5.16+ also skips a tombstone at exactly
//! `compact_revision` (older versions have deleted it, so skipping it is right for both).
//!
//! `Keep` needs, for the entries at or below `compact_revision`, whether a newer revision of
//! the same key follows up to `revision`: the key bucket is in revision order, so one pass
//! collects each key's newest revision (a 64-bit fingerprint of the key, not the key: about
//! 40 bytes per distinct key, far below what etcd itself holds per key), a second one hashes.

use crate::ondisk::bbolt::{problem, Db};
use crate::ondisk::schema::{key_bucket, parse_revision_key, Revision};
use std::collections::HashMap;
use std::hash::Hasher;

/// A key's newest revision at or below the hash revision, and whether it is a tombstone.
#[derive(Clone, Copy)]
struct Newest {
    rev: Revision,
    tombstone: bool,
}

/// A fingerprint of a key: `DefaultHasher::new()` has fixed keys, so it is the same in every
/// process (no randomness needed here).
fn fingerprint(key: &[u8]) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    h.write(key);
    h.finish()
}

/// The key of an mvcc `KeyValue` (protobuf field 1), without decoding (or copying) the value.
fn kv_key(mut v: &[u8]) -> Option<&[u8]> {
    fn varint(b: &mut &[u8]) -> Option<u64> {
        let mut x = 0u64;
        for shift in (0..64).step_by(7) {
            let (&byte, rest) = b.split_first()?;
            *b = rest;
            x |= u64::from(byte & 0x7f) << shift;
            if byte < 0x80 {
                return Some(x);
            }
        }
        None
    }
    while !v.is_empty() {
        let tag = varint(&mut v)?;
        let len = match tag & 7 {
            0 => {
                varint(&mut v)?;
                continue;
            }
            1 => 8,
            5 => 4,
            2 => usize::try_from(varint(&mut v)?).ok()?,
            _ => return None,
        };
        let field = v.get(..len)?;
        v = &v[len..];
        if tag == (1 << 3 | 2) {
            return Some(field);
        }
    }
    None
}

/// etcd's `HashKV` at `revision` of the db's keyspace, for a member compacted at
/// `compact_revision` (0: never). Errors name the damaged entry.
pub fn hash_kv(db: &Db, revision: i64, compact_revision: i64) -> crate::Result<u32> {
    let mut crc = crc32c::crc32c(b"key");
    let Some(bucket) = key_bucket(db)? else {
        return Ok(crc);
    };
    let revision_of = |k: &[u8]| {
        parse_revision_key(k)
            .ok_or_else(|| problem(None, format!("key bucket entry {k:02x?}: not a revision")))
    };
    let fingerprint_of = |rev: Revision, v: &[u8]| {
        kv_key(v).map(fingerprint).ok_or_else(|| {
            problem(
                None,
                format!("key bucket entry {}: not a KeyValue", rev.main),
            )
        })
    };
    // pass 1, needed only when some entries lie at or below the compaction: each key's newest
    // revision up to `revision`
    let mut newest: HashMap<u64, Newest> = HashMap::new();
    if compact_revision > 0 {
        db.for_each(&bucket, &mut |_, k, v| {
            let (rev, tombstone) = revision_of(k)?;
            if rev.main <= revision {
                newest.insert(fingerprint_of(rev, v)?, Newest { rev, tombstone });
            }
            Ok(())
        })?;
    }
    let keep_any = newest.values().any(|n| !n.tombstone);
    // pass 2: the hash, in the bucket's (revision) order
    db.for_each(&bucket, &mut |_, k, v| {
        let (rev, tombstone) = revision_of(k)?;
        if rev.main > revision {
            return Ok(());
        }
        if rev.main <= compact_revision && keep_any {
            let fp = fingerprint_of(rev, v)?;
            let kept = newest
                .get(&fp)
                .is_some_and(|n| n.rev == rev && !n.tombstone);
            if !kept {
                return Ok(());
            }
        }
        if rev.main == compact_revision && tombstone {
            return Ok(());
        }
        crc = crc32c::crc32c_append(crc, k);
        crc = crc32c::crc32c_append(crc, v);
        Ok(())
    })?;
    Ok(crc)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_key_of_a_keyvalue_without_decoding_it() {
        let kv = crate::ondisk::schema::KeyValue {
            key: b"/registry/pods/a".to_vec(),
            create_revision: 5,
            mod_revision: 300,
            version: 2,
            value: vec![7; 100_000],
            lease: 0x1234_5678_9abc,
        };
        let bytes = prost::Message::encode_to_vec(&kv);
        assert_eq!(kv_key(&bytes), Some(&b"/registry/pods/a"[..]));
        assert_eq!(kv_key(&bytes[..3]), None, "truncated");
        assert_eq!(kv_key(&[]), None);
    }
}
