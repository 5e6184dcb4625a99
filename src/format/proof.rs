//! The proof recorded with a full snapshot: etcd's own keyspace hash (`HashKV`) at the
//! snapshot's revision, with the compaction it was computed under and the member that answered,
//! stored next to the snapshot as `<snapshot key>.hashkv.json`. A snapshot is proven equal to
//! the cluster it came from when the same hash, computed natively from its data
//! ([`crate::ondisk::hashkv`]), matches.
//!
//! etcdbrctl's parser takes such an object for a foreign one and ignores it (with a warning
//! when it lists the store); our listing skips it silently, GC deletes it with its snapshot.

use serde::{Deserialize, Serialize};

/// What follows a snapshot's key in the key of its proof.
pub const PROOF_SUFFIX: &str = ".hashkv.json";

/// A proof can never be larger than this; a larger object is not one.
pub const MAX_PROOF_BYTES: usize = 4096;

/// etcd's `HashKV` answer for a full snapshot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Proof {
    /// The snapshot's name (without directories).
    pub snapshot: String,
    /// The revision hashed: the snapshot's.
    pub revision: i64,
    /// The member's compaction revision when it answered.
    pub compact_revision: i64,
    /// The CRC-32C etcd answered.
    pub hash: u32,
    /// The member that answered (hex), and its cluster.
    pub member_id: String,
    /// The cluster of that member (hex).
    pub cluster_id: String,
}

impl Proof {
    /// The key of the proof of the snapshot stored under `snapshot_key`.
    pub fn key_for(snapshot_key: &str) -> String {
        format!("{snapshot_key}{PROOF_SUFFIX}")
    }

    /// The snapshot key a proof key belongs to, if `key` is a proof's.
    pub fn snapshot_key_of(key: &str) -> Option<&str> {
        key.strip_suffix(PROOF_SUFFIX)
    }

    /// Reads a proof (`object` names it in errors).
    pub fn parse(object: &str, bytes: &[u8]) -> crate::Result<Proof> {
        if bytes.len() > MAX_PROOF_BYTES {
            return Err(crate::Error::integrity(
                object,
                format!(
                    "{} bytes: not a proof (at most {MAX_PROOF_BYTES})",
                    bytes.len()
                ),
            ));
        }
        serde_json::from_slice(bytes)
            .map_err(|e| crate::Error::integrity(object, format!("not a proof: {e}")))
    }

    /// The object's bytes.
    pub fn to_bytes(&self) -> Vec<u8> {
        // a struct of strings and integers always serializes
        serde_json::to_vec_pretty(self).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_refuses_foreign_bytes() {
        let p = Proof {
            snapshot: "Full-00000000-00000042-1700000000.gz".into(),
            revision: 42,
            compact_revision: 7,
            hash: 0xdead_beef,
            member_id: "8e9e05c52164694d".into(),
            cluster_id: "cdf818194e3a8c32".into(),
        };
        let key = Proof::key_for("v2/Full-00000000-00000042-1700000000.gz");
        assert_eq!(
            Proof::snapshot_key_of(&key),
            Some("v2/Full-00000000-00000042-1700000000.gz")
        );
        assert_eq!(Proof::parse(&key, &p.to_bytes()).unwrap(), p);
        assert!(Proof::parse(&key, b"{}").is_err());
        assert!(Proof::parse(&key, &vec![b' '; MAX_PROOF_BYTES + 1]).is_err());
    }
}
