//! A read-only reader of etcd's write-ahead log (`member/wal/*.wal`) and raft snapshot files
//! (`member/snap/*.snap`), to validate a data directory without starting etcd: the CRC chain of
//! every record, the entries and commit index the WAL holds, and whether the newest `.snap`
//! matches a snapshot record of the WAL (what etcd needs to boot).

use std::io::Read;
use std::path::{Path, PathBuf};

const METADATA: i64 = 1;
const ENTRY: i64 = 2;
const STATE: i64 = 3;
const CRC: i64 = 4;
const SNAPSHOT: i64 = 5;
/// A record larger than this is corruption (etcd caps records far below).
const MAX_RECORD: u64 = 1 << 30;

#[derive(Clone, PartialEq, prost::Message)]
struct Record {
    #[prost(int64, optional, tag = "1")]
    r#type: Option<i64>,
    #[prost(uint32, optional, tag = "2")]
    crc: Option<u32>,
    #[prost(bytes = "vec", optional, tag = "3")]
    data: Option<Vec<u8>>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct Entry {
    #[prost(int32, optional, tag = "1")]
    r#type: Option<i32>,
    #[prost(uint64, optional, tag = "2")]
    term: Option<u64>,
    #[prost(uint64, optional, tag = "3")]
    index: Option<u64>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct HardState {
    #[prost(uint64, optional, tag = "1")]
    term: Option<u64>,
    #[prost(uint64, optional, tag = "2")]
    vote: Option<u64>,
    #[prost(uint64, optional, tag = "3")]
    commit: Option<u64>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct WalSnapshot {
    #[prost(uint64, optional, tag = "1")]
    index: Option<u64>,
    #[prost(uint64, optional, tag = "2")]
    term: Option<u64>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct SnapFile {
    #[prost(uint32, optional, tag = "1")]
    crc: Option<u32>,
    #[prost(bytes = "vec", optional, tag = "2")]
    data: Option<Vec<u8>>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct RaftSnapshot {
    #[prost(message, optional, tag = "2")]
    metadata: Option<SnapshotMetadata>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct SnapshotMetadata {
    #[prost(uint64, optional, tag = "2")]
    index: Option<u64>,
    #[prost(uint64, optional, tag = "3")]
    term: Option<u64>,
}

/// What the WAL holds.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WalSummary {
    pub files: usize,
    pub records: u64,
    /// Highest entry index and the commit index of the last HardState.
    pub last_index: u64,
    pub commit: u64,
    /// (index, term) of every snapshot record.
    pub snapshots: Vec<(u64, u64)>,
}

/// A problem in the WAL or a `.snap` file: the file, the byte offset, what.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WalError {
    pub file: PathBuf,
    pub offset: u64,
    pub message: String,
}

impl std::fmt::Display for WalError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} at byte {}: {}",
            self.file.display(),
            self.offset,
            self.message
        )
    }
}

fn files_with(dir: &Path, ext: &str) -> Result<Vec<PathBuf>, WalError> {
    let rd = std::fs::read_dir(dir).map_err(|e| WalError {
        file: dir.to_path_buf(),
        offset: 0,
        message: format!("cannot list: {e}"),
    })?;
    let mut v: Vec<PathBuf> = rd
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().and_then(|x| x.to_str()) == Some(ext))
        .collect();
    v.sort();
    Ok(v)
}

/// Reads every WAL file of `wal_dir` in order, checking the CRC chain across files.
pub fn read_wal(wal_dir: &Path) -> Result<WalSummary, WalError> {
    let files = files_with(wal_dir, "wal")?;
    if files.is_empty() {
        return Err(WalError {
            file: wal_dir.to_path_buf(),
            offset: 0,
            message: "no .wal file".into(),
        });
    }
    let mut s = WalSummary {
        files: files.len(),
        ..Default::default()
    };
    let mut crc: Option<u32> = None;
    for (fi, file) in files.iter().enumerate() {
        // streamed record by record: a segment is 64 MB, mostly preallocated zeros
        let f = std::fs::File::open(file).map_err(|e| WalError {
            file: file.clone(),
            offset: 0,
            message: format!("cannot open: {e}"),
        })?;
        let file_len = f.metadata().map(|m| m.len()).unwrap_or(0);
        let mut r = std::io::BufReader::with_capacity(1 << 20, f);
        let last_file = fi + 1 == files.len();
        let mut off = 0u64;
        let mut body = Vec::new();
        while off + 8 <= file_len {
            let err = |message: String| WalError {
                file: file.clone(),
                offset: off,
                message,
            };
            let mut head = [0u8; 8];
            r.read_exact(&mut head)
                .map_err(|e| err(format!("read failed: {e}")))?;
            let len_field = u64::from_le_bytes(head);
            if len_field == 0 {
                break; // preallocated zeros: end of this file
            }
            let len = len_field & 0x00FF_FFFF_FFFF_FFFF;
            let pad = if len_field >> 63 == 1 {
                (len_field >> 56) & 0x7
            } else {
                0
            };
            if len > MAX_RECORD || off + 8 + len + pad > file_len {
                return Err(err(format!(
                    "record of {len} bytes runs past the end of the file{}",
                    if last_file { " (torn write?)" } else { "" }
                )));
            }
            body.resize((len + pad) as usize, 0);
            r.read_exact(&mut body)
                .map_err(|e| err(format!("read failed: {e}")))?;
            let body = &body[..len as usize];
            let rec = <Record as prost::Message>::decode(body)
                .map_err(|e| err(format!("undecodable record: {e}")))?;
            let data = rec.data.unwrap_or_default();
            let kind = rec.r#type.unwrap_or(0);
            let stored = rec.crc.unwrap_or(0);
            if kind == CRC {
                match crc {
                    None => crc = Some(stored),
                    Some(c) if c != stored => {
                        return Err(err(format!(
                            "CRC record says {stored:#010x}, the chain so far is {c:#010x} (a segment is missing or foreign)"
                        )))
                    }
                    Some(_) => {}
                }
            } else {
                let c = crc32c::crc32c_append(crc.unwrap_or(0), &data);
                if c != stored {
                    return Err(err(format!(
                        "record crc {stored:#010x} does not match the chain ({c:#010x}): corrupt{}",
                        if last_file { " or torn" } else { "" }
                    )));
                }
                crc = Some(c);
                match kind {
                    ENTRY => {
                        let e = <Entry as prost::Message>::decode(data.as_slice())
                            .map_err(|e| err(format!("undecodable entry: {e}")))?;
                        s.last_index = s.last_index.max(e.index.unwrap_or(0));
                    }
                    STATE => {
                        let h = <HardState as prost::Message>::decode(data.as_slice())
                            .map_err(|e| err(format!("undecodable hard state: {e}")))?;
                        s.commit = h.commit.unwrap_or(0);
                    }
                    SNAPSHOT => {
                        let w = <WalSnapshot as prost::Message>::decode(data.as_slice())
                            .map_err(|e| err(format!("undecodable snapshot record: {e}")))?;
                        s.snapshots
                            .push((w.index.unwrap_or(0), w.term.unwrap_or(0)));
                    }
                    METADATA => {}
                    other => return Err(err(format!("unknown record type {other}"))),
                }
            }
            s.records += 1;
            off += 8 + len + pad;
        }
    }
    Ok(s)
}

/// Reads one `.snap` file: its (index, term), after checking its CRC.
fn read_snap(file: &Path) -> Result<(u64, u64), WalError> {
    let err = |message: String| WalError {
        file: file.to_path_buf(),
        offset: 0,
        message,
    };
    let bytes = std::fs::read(file).map_err(|e| err(format!("cannot read: {e}")))?;
    let snap = <SnapFile as prost::Message>::decode(bytes.as_slice())
        .map_err(|e| err(format!("undecodable .snap file: {e}")))?;
    let data = snap.data.unwrap_or_default();
    let crc = snap.crc.unwrap_or(0);
    if crc == 0 || data.is_empty() {
        return Err(err("empty .snap file".into()));
    }
    if crc32c::crc32c(&data) != crc {
        return Err(err(format!(
            "crc mismatch: stored {crc:#010x}, data hashes to {:#010x}",
            crc32c::crc32c(&data)
        )));
    }
    let raft = <RaftSnapshot as prost::Message>::decode(data.as_slice())
        .map_err(|e| err(format!("undecodable raft snapshot: {e}")))?;
    let m = raft.metadata.unwrap_or_default();
    Ok((m.index.unwrap_or(0), m.term.unwrap_or(0)))
}

/// The `.snap` etcd would boot from (as etcd 3.5's `LoadNewestAvailable`): the newest valid one
/// whose (index, term) the WAL records. `Ok(None)`: no `.snap` file at all. An error names the
/// files when there are some and none qualifies (etcd cannot boot: "snapshot not found").
pub fn usable_snap(snap_dir: &Path, wal: &WalSummary) -> Result<Option<(u64, u64)>, WalError> {
    let files = files_with(snap_dir, "snap")?;
    if files.is_empty() {
        return Ok(None);
    }
    let mut problems = Vec::new();
    for file in files.iter().rev() {
        match read_snap(file) {
            Ok(it) if wal.snapshots.contains(&it) => return Ok(Some(it)),
            Ok((i, t)) => problems.push(format!(
                "{}: index {i}, term {t} has no snapshot record in the WAL",
                file.display()
            )),
            Err(e) => problems.push(e.to_string()),
        }
    }
    Err(WalError {
        file: snap_dir.to_path_buf(),
        offset: 0,
        message: format!("no usable .snap file: {}", problems.join("; ")),
    })
}
