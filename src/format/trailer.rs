//! The sha256 trailer of a full snapshot: etcd appends the SHA-256 of the db to the snapshot
//! it streams (the file is then a whole number of 512-byte pages plus 32 bytes), and
//! etcdbrctl stores it so. The hash is computed as the bytes flow, holding back the last 32
//! bytes as the candidate trailer; a full is stored, restored or inspected only when they match.

use crate::error::{Error, Result};
use sha2::{Digest, Sha256};
use std::io::Write;

pub(crate) const TRAILER: usize = 32;

/// SHA-256 over everything but the last 32 bytes seen so far, which are held back as the
/// candidate trailer.
pub(crate) struct TrailerHasher {
    h: Sha256,
    tail: Vec<u8>,
    total: u64,
}

impl Default for TrailerHasher {
    fn default() -> Self {
        TrailerHasher {
            h: Sha256::new(),
            tail: Vec::with_capacity(2 * TRAILER),
            total: 0,
        }
    }
}

impl TrailerHasher {
    pub(crate) fn update(&mut self, data: &[u8]) {
        self.total += data.len() as u64;
        if data.len() >= TRAILER {
            self.h.update(&self.tail);
            self.tail.clear();
            let (body, tail) = data.split_at(data.len() - TRAILER);
            self.h.update(body);
            self.tail.extend_from_slice(tail);
        } else {
            self.tail.extend_from_slice(data);
            if self.tail.len() > TRAILER {
                let excess = self.tail.len() - TRAILER;
                self.h.update(&self.tail[..excess]);
                self.tail.drain(..excess);
            }
        }
    }

    /// Total bytes seen.
    pub(crate) fn total(&self) -> u64 {
        self.total
    }

    /// The SHA-256 of everything but the last 32 bytes, and those last bytes (the candidate
    /// trailer).
    pub(crate) fn finish(self) -> (Vec<u8>, Vec<u8>) {
        (self.h.finalize().to_vec(), self.tail)
    }

    /// Bytes of the db itself: all but the trailer when the length says there is one (etcd's
    /// rule, `% 512 == 32`, which `snapshot restore` also follows).
    pub(crate) fn db_len(&self) -> u64 {
        if self.total % 512 == TRAILER as u64 {
            self.total - TRAILER as u64
        } else {
            self.total
        }
    }

    /// Checks etcd's rules: length % 512 == 32 and the trailer equals the SHA-256 of the rest.
    pub(crate) fn verify(self, object: &str) -> Result<()> {
        if self.total % 512 != TRAILER as u64 {
            return Err(Error::integrity(
                object,
                format!("sha256 checksum not found: {} bytes is not a whole number of pages plus a 32-byte hash", self.total),
            ));
        }
        let digest = self.h.finalize();
        if digest.as_slice() != self.tail.as_slice() {
            return Err(Error::integrity(
                object,
                format!(
                    "sha256 mismatch: data hashes to {}, trailer says {}",
                    hex(digest.as_slice()),
                    hex(&self.tail)
                ),
            ));
        }
        Ok(())
    }
}

/// Decompresses `r` (a snapshot object named `object`) into `file` (at `path`), hashing the
/// decompressed bytes on the way; the caller decides what to do with the trailer.
pub(crate) fn decompress_to_file(
    object: &str,
    codec: crate::format::codec::Codec,
    r: impl std::io::Read,
    file: std::fs::File,
    path: &std::path::Path,
) -> Result<TrailerHasher> {
    use std::io::Read;
    let mut dec = codec
        .decoder(std::io::BufReader::with_capacity(256 << 10, r))
        .map_err(|e| Error::integrity(object, format!("decompress: {e}")))?;
    let mut out = std::io::BufWriter::with_capacity(1 << 20, file);
    let mut hasher = TrailerHasher::default();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = dec.read(&mut buf).map_err(|e| {
            Error::integrity(
                object,
                format!("download/decompress failed (truncated or corrupted object?): {e}"),
            )
        })?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        out.write_all(&buf[..n])
            .map_err(|e| Error::io(path, "write the decompressed snapshot", e))?;
    }
    out.flush()
        .map_err(|e| Error::io(path, "write the decompressed snapshot", e))?;
    Ok(hasher)
}

pub(crate) fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_trailer(db: &[u8]) -> Vec<u8> {
        let mut v = db.to_vec();
        v.extend_from_slice(&Sha256::digest(db));
        v
    }

    #[test]
    fn verifies_trailer_across_any_chunking() {
        let db: Vec<u8> = (0..4096 * 3).map(|i| (i % 251) as u8).collect();
        let full = with_trailer(&db);
        for chunk in [1, 7, 31, 32, 33, 4096, 5000, full.len()] {
            let mut h = TrailerHasher::default();
            for c in full.chunks(chunk) {
                h.update(c);
            }
            h.verify("x")
                .unwrap_or_else(|e| panic!("chunk {chunk}: {e}"));
        }
    }

    #[test]
    fn rejects_bad_trailer_and_size() {
        let db: Vec<u8> = vec![7; 4096];
        let mut full = with_trailer(&db);
        let last = full.len() - 1;
        full[last] ^= 1;
        let mut h = TrailerHasher::default();
        h.update(&full);
        assert!(h
            .verify("x")
            .unwrap_err()
            .to_string()
            .contains("sha256 mismatch"));

        let mut h = TrailerHasher::default();
        h.update(&db); // no trailer
        assert!(h
            .verify("x")
            .unwrap_err()
            .to_string()
            .contains("checksum not found"));

        let mut flipped = with_trailer(&db);
        flipped[100] ^= 0x10;
        let mut h = TrailerHasher::default();
        h.update(&flipped);
        assert!(h.verify("x").is_err());
    }
}
