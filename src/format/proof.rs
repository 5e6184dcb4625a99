//! The proof recorded with a full snapshot: etcd's own keyspace hash (`HashKV`) at the
//! snapshot's revision, with the compaction it was computed under and the member that answered,
//! stored beside the version directory as `<prefix>/proofs/<snapshot name>.hashkv.json`, so
//! that `<prefix>/v2/` holds exactly what etcdbrctl writes there. A snapshot is proven equal
//! to the cluster it came from when the same hash, computed natively from its data
//! ([`crate::ondisk::hashkv`]), matches.
//!
//! etcdbrctl, which lists the whole prefix, takes such an object for a foreign one and ignores
//! it (with a warning); our listing skips it silently, GC deletes it with its snapshot, `copy`
//! copies it with its snapshot.

use serde::{Deserialize, Serialize};

/// The directory of proofs, beside the version directories.
pub const PROOF_DIR: &str = "proofs";

/// What follows a snapshot's name in the name of its proof.
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
    /// The key of the proof of snapshot `name` in the store with prefix `store_prefix`.
    pub fn key_for(store_prefix: &str, name: &str) -> String {
        let p = store_prefix.trim_matches('/');
        if p.is_empty() {
            format!("{PROOF_DIR}/{name}{PROOF_SUFFIX}")
        } else {
            format!("{p}/{PROOF_DIR}/{name}{PROOF_SUFFIX}")
        }
    }

    /// Whether `key` is the key of a proof of the store with prefix `store_prefix`.
    pub fn is_proof_key(store_prefix: &str, key: &str) -> bool {
        let dir = Proof::key_for(store_prefix, "");
        let dir = &dir[..dir.len() - PROOF_SUFFIX.len()];
        key.strip_prefix(dir)
            .is_some_and(|name| !name.contains('/') && name.ends_with(PROOF_SUFFIX))
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
        let key = Proof::key_for("main/", "Full-00000000-00000042-1700000000.gz");
        assert_eq!(
            key,
            "main/proofs/Full-00000000-00000042-1700000000.gz.hashkv.json"
        );
        assert!(Proof::is_proof_key("main", &key));
        assert!(!Proof::is_proof_key("", &key), "another prefix's");
        assert!(Proof::is_proof_key(
            "",
            "proofs/Full-00000000-00000042-1700000000.gz.hashkv.json"
        ));
        assert!(!Proof::is_proof_key(
            "main",
            "main/v2/Full-00000000-00000042-1700000000.gz"
        ));
        assert_eq!(Proof::parse(&key, &p.to_bytes()).unwrap(), p);
        assert!(Proof::parse(&key, b"{}").is_err());
        assert!(Proof::parse(&key, &vec![b' '; MAX_PROOF_BYTES + 1]).is_err());
    }
}
