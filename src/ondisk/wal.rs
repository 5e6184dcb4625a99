//! etcd's write-ahead log (`member/wal/*.wal`) and raft snapshot files (`member/snap/*.snap`).
//!
//! Reading validates a data directory without starting etcd: the CRC chain of every record, the
//! entries and commit index the WAL holds, and whether the newest `.snap` matches a snapshot
//! record of the WAL (what etcd needs to boot). [`WalAppender`] appends committed entries to a
//! stopped member's WAL, in etcd's own record format, for the replay ([`crate::restore::replay`]): etcd
//! applies them when it starts, as it does after any restart.

use std::io::Read as _;
use std::path::{Path, PathBuf};

pub(crate) const METADATA: i64 = 1;
pub(crate) const ENTRY: i64 = 2;
pub(crate) const STATE: i64 = 3;
pub(crate) const CRC: i64 = 4;
pub(crate) const SNAPSHOT: i64 = 5;

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
pub(crate) struct Entry {
    #[prost(int32, optional, tag = "1")]
    pub(crate) r#type: Option<i32>,
    #[prost(uint64, optional, tag = "2")]
    pub(crate) term: Option<u64>,
    #[prost(uint64, optional, tag = "3")]
    pub(crate) index: Option<u64>,
}

/// [`Entry`] with its data, for writing (reading skips the data: validation needs none of it).
#[derive(Clone, PartialEq, prost::Message)]
struct NewEntry {
    #[prost(int32, optional, tag = "1")]
    r#type: Option<i32>,
    #[prost(uint64, optional, tag = "2")]
    term: Option<u64>,
    #[prost(uint64, optional, tag = "3")]
    index: Option<u64>,
    #[prost(bytes = "vec", optional, tag = "4")]
    data: Option<Vec<u8>>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct HardState {
    #[prost(uint64, optional, tag = "1")]
    pub(crate) term: Option<u64>,
    #[prost(uint64, optional, tag = "2")]
    pub(crate) vote: Option<u64>,
    #[prost(uint64, optional, tag = "3")]
    pub(crate) commit: Option<u64>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct WalSnapshot {
    #[prost(uint64, optional, tag = "1")]
    pub(crate) index: Option<u64>,
    #[prost(uint64, optional, tag = "2")]
    pub(crate) term: Option<u64>,
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
pub(crate) struct WalSummary {
    pub(crate) files: usize,
    pub(crate) records: u64,
    /// Highest entry index and the commit index of the last HardState.
    pub(crate) last_index: u64,
    pub(crate) commit: u64,
    /// What an appender continues from: the CRC chain at the end, the last metadata record, the
    /// last HardState (term, vote, commit), and the last file.
    pub(crate) end_crc: u32,
    pub(crate) metadata: Vec<u8>,
    pub(crate) term: u64,
    pub(crate) vote: u64,
    pub(crate) last_file: PathBuf,
}

/// A problem in the WAL or a `.snap` file: the file, the byte offset, what.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct WalError {
    pub(crate) file: PathBuf,
    pub(crate) offset: u64,
    pub(crate) message: String,
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

/// Damage in etcd's files is an integrity error of the file, at its offset.
impl From<WalError> for crate::Error {
    fn from(e: WalError) -> crate::Error {
        crate::Error::Integrity {
            object: e.file.display().to_string(),
            reason: format!("at byte {}: {}", e.offset, e.message),
        }
    }
}

pub(crate) fn files_with(dir: &Path, ext: &str) -> Result<Vec<PathBuf>, WalError> {
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

/// etcd's limit on one WAL record (`maxWALEntrySizeLimit`, 3.4 and 3.5): a length word at or
/// above it stops etcd (`ErrMaxWALEntrySizeLimitExceeded`), whatever the file holds after it.
const MAX_WAL_RECORD: u64 = 10 * 1024 * 1024;
/// etcd's torn-write detection works on 512-byte sectors (`minSectorSize`).
const SECTOR: u64 = 512;

/// One WAL record as stored: its type, the CRC it carries and its data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RawRecord {
    pub(crate) kind: i64,
    pub(crate) crc: u32,
    pub(crate) data: Vec<u8>,
}

/// Why [`Decoder::read_record`] stopped early, as etcd's decoder tells it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum DecodeError {
    /// etcd's `io.ErrUnexpectedEOF`: the file ends inside a record, or a record that fails its
    /// CRC holds an all-zero sector (a torn write). etcd repairs this in the last file by
    /// truncating it at `offset`, the end of the last good record.
    Torn {
        file: usize,
        offset: u64,
        message: String,
    },
    /// Anything else (a CRC mismatch without a zeroed sector, an undecodable record, a length
    /// over the limit): etcd refuses to start.
    Fatal {
        file: usize,
        offset: u64,
        message: String,
    },
}

/// etcd's WAL decoder (`wal/decoder.go`, identical in 3.4 and 3.5): the records of `files` in
/// order, one rolling CRC-32C over the data of every record but the CRC records (whose check is
/// the caller's, as in etcd), a zero length word or the end of a file moving on to the next.
pub(crate) struct Decoder {
    files: Vec<PathBuf>,
    /// Bytes of each file that count (a simulated repair truncates the last one).
    limits: Vec<Option<u64>>,
    idx: usize,
    cur: Option<std::io::Take<std::io::BufReader<std::fs::File>>>,
    /// Offset in the current file after the last good record (`lastValidOff`).
    pub(crate) last_valid_off: u64,
    /// The rolling CRC.
    pub(crate) crc: u32,
}

impl Decoder {
    pub(crate) fn new(files: Vec<PathBuf>) -> Decoder {
        let limits = vec![None; files.len()];
        Decoder {
            files,
            limits,
            idx: 0,
            cur: None,
            last_valid_off: 0,
            crc: 0,
        }
    }

    /// Reads only the first `len` bytes of file `i` (what etcd's repair leaves).
    pub(crate) fn limit(&mut self, i: usize, len: u64) {
        if let Some(l) = self.limits.get_mut(i) {
            *l = Some(len);
        }
    }

    /// The file being read (index into the list given to [`Decoder::new`]).
    pub(crate) fn file_index(&self) -> usize {
        self.idx
    }

    fn fatal(&self, message: String) -> DecodeError {
        DecodeError::Fatal {
            file: self.idx,
            offset: self.last_valid_off,
            message,
        }
    }

    fn torn(&self, message: String) -> DecodeError {
        DecodeError::Torn {
            file: self.idx,
            offset: self.last_valid_off,
            message,
        }
    }

    fn open_current(&mut self) -> Result<(), DecodeError> {
        if self.cur.is_none() {
            let path = &self.files[self.idx];
            let f = std::fs::File::open(path)
                .map_err(|e| self.fatal(format!("cannot open {}: {e}", path.display())))?;
            let len = f
                .metadata()
                .map_err(|e| self.fatal(format!("cannot stat {}: {e}", path.display())))?
                .len();
            let len = self.limits[self.idx].map_or(len, |l| l.min(len));
            let r = std::io::BufReader::with_capacity(1 << 20, f);
            self.cur = Some(std::io::Read::take(r, len));
        }
        Ok(())
    }

    /// Reads as much of `buf` as the file holds; the count read.
    fn read_up_to(&mut self, buf: &mut [u8]) -> Result<usize, DecodeError> {
        let mut n = 0;
        while n < buf.len() {
            let r = match self.cur.as_mut() {
                Some(r) => r.read(&mut buf[n..]),
                None => Ok(0),
            };
            match r {
                Ok(0) => break,
                Ok(k) => n += k,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(self.fatal(format!("read failed: {e}"))),
            }
        }
        Ok(n)
    }

    fn next_file(&mut self) {
        self.idx += 1;
        self.cur = None;
        self.last_valid_off = 0;
    }

    /// The next record; `Ok(None)` at the end of the last file.
    pub(crate) fn read_record(&mut self) -> Result<Option<RawRecord>, DecodeError> {
        loop {
            if self.idx >= self.files.len() {
                return Ok(None);
            }
            self.open_current()?;
            let mut head = [0u8; 8];
            let n = self.read_up_to(&mut head)?;
            if n == 0 || (n == 8 && head == [0u8; 8]) {
                // the end of a file, or its preallocated zeros
                self.next_file();
                continue;
            }
            if n < 8 {
                return Err(self.torn("the file ends inside a record's length word".into()));
            }
            let len_field = u64::from_le_bytes(head);
            let len = len_field & 0x00FF_FFFF_FFFF_FFFF;
            let pad = if len_field >> 63 == 1 {
                (len_field >> 56) & 0x7
            } else {
                0
            };
            if len >= MAX_WAL_RECORD - pad {
                return Err(self.fatal(format!(
                    "a record length of {len} bytes is over etcd's limit of {MAX_WAL_RECORD}"
                )));
            }
            let mut data = vec![0u8; (len + pad) as usize];
            if self.read_up_to(&mut data)? < data.len() {
                return Err(self.torn(format!("the file ends inside a record of {len} bytes")));
            }
            let body = &data[..len as usize];
            let rec = match <Record as prost::Message>::decode(body) {
                Ok(r) => r,
                Err(e) if self.is_torn(&data) => {
                    return Err(self.torn(format!(
                        "undecodable record with an all-zero sector (torn write): {e}"
                    )))
                }
                Err(e) => return Err(self.fatal(format!("undecodable record: {e}"))),
            };
            let out = RawRecord {
                kind: rec.r#type.unwrap_or(0),
                crc: rec.crc.unwrap_or(0),
                data: rec.data.unwrap_or_default(),
            };
            if out.kind != CRC {
                let c = crc32c::crc32c_append(self.crc, &out.data);
                self.crc = c;
                if c != out.crc {
                    let msg = format!(
                        "record crc {:#010x} does not match the chain ({c:#010x})",
                        out.crc
                    );
                    return Err(if self.is_torn(&data) {
                        self.torn(format!("{msg}; it holds an all-zero sector (torn write)"))
                    } else {
                        self.fatal(msg)
                    });
                }
            }
            self.last_valid_off += 8 + len + pad;
            return Ok(Some(out));
        }
    }

    /// etcd's `isTornEntry`: in the last file only, a record one of whose sector-aligned chunks
    /// is all zeros was never completely written.
    fn is_torn(&self, data: &[u8]) -> bool {
        if self.idx + 1 != self.files.len() {
            return false;
        }
        let mut file_off = self.last_valid_off + 8;
        let mut cur = 0usize;
        while cur < data.len() {
            let chunk = ((SECTOR - file_off % SECTOR) as usize).min(data.len() - cur);
            if data[cur..cur + chunk].iter().all(|b| *b == 0) {
                return true;
            }
            file_off += chunk as u64;
            cur += chunk;
        }
        false
    }
}

/// Reads every WAL file of `wal_dir` in order, checking the CRC chain across files. Strict: a
/// torn record is an error too (for the appender, which only works on cleanly written WALs).
pub(crate) fn read_wal(wal_dir: &Path) -> Result<WalSummary, WalError> {
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
        last_file: files[files.len() - 1].clone(),
        ..Default::default()
    };
    let mut d = Decoder::new(files.clone());
    let mut chained = false;
    loop {
        let rec = match d.read_record() {
            Ok(Some(r)) => r,
            Ok(None) => break,
            Err(DecodeError::Torn {
                file,
                offset,
                message,
            })
            | Err(DecodeError::Fatal {
                file,
                offset,
                message,
            }) => {
                return Err(WalError {
                    file: files[file].clone(),
                    offset,
                    message,
                })
            }
        };
        let err = |message: String| WalError {
            file: files[d.file_index()].clone(),
            offset: d.last_valid_off,
            message,
        };
        match rec.kind {
            CRC => {
                if chained && d.crc != rec.crc {
                    return Err(err(format!(
                        "CRC record says {:#010x}, the chain so far is {:#010x} (a segment is missing or foreign)",
                        rec.crc, d.crc
                    )));
                }
                d.crc = rec.crc;
                chained = true;
            }
            ENTRY => {
                let e = <Entry as prost::Message>::decode(rec.data.as_slice())
                    .map_err(|e| err(format!("undecodable entry: {e}")))?;
                s.last_index = s.last_index.max(e.index.unwrap_or(0));
            }
            STATE => {
                let h = <HardState as prost::Message>::decode(rec.data.as_slice())
                    .map_err(|e| err(format!("undecodable hard state: {e}")))?;
                s.commit = h.commit.unwrap_or(0);
                s.term = h.term.unwrap_or(0);
                s.vote = h.vote.unwrap_or(0);
            }
            SNAPSHOT => {
                <WalSnapshot as prost::Message>::decode(rec.data.as_slice())
                    .map_err(|e| err(format!("undecodable snapshot record: {e}")))?;
            }
            METADATA => s.metadata = rec.data,
            other => return Err(err(format!("unknown record type {other}"))),
        }
        s.records += 1;
    }
    s.end_crc = d.crc;
    Ok(s)
}

/// etcd's segment size: a new `.wal` file is started past it.
const SEGMENT_BYTES: u64 = 64 << 20;
/// etcd refuses WAL records larger than this when it reads them (10 MiB in 3.4 and 3.5).
pub(crate) const MAX_ENTRY_BYTES: usize = 10 << 20;

/// Appends normal entries to the WAL of a stopped etcd member, committed: each becomes a raft
/// entry of the member's current term after its last one, and a final HardState commits them,
/// so etcd applies them in order when it starts. New segments only (the existing files are not
/// modified), each opened as etcd opens one: the CRC chain carried over, the metadata and the
/// HardState repeated.
pub(crate) struct WalAppender {
    dir: PathBuf,
    /// The open segment (`None` before the first).
    out: Option<std::io::BufWriter<std::fs::File>>,
    path: PathBuf,
    seq: u64,
    offset: u64,
    crc: u32,
    metadata: Vec<u8>,
    term: u64,
    vote: u64,
    commit: u64,
    /// Index of the last entry written.
    pub(crate) last_index: u64,
    /// Entry bytes written since [`WalAppender::open`].
    pub(crate) bytes: u64,
    /// A new segment is started past this offset.
    segment_bytes: u64,
}

fn write_err(file: &Path, offset: u64, e: std::io::Error) -> WalError {
    WalError {
        file: file.to_path_buf(),
        offset,
        message: format!("cannot write: {e}"),
    }
}

impl WalAppender {
    /// Reads the WAL of `wal_dir` (the whole CRC chain is checked) and starts a new segment
    /// after it. Refused when the WAL holds uncommitted entries: appending after them would
    /// commit what the member never committed.
    pub(crate) fn open(wal_dir: &Path) -> Result<WalAppender, WalError> {
        let s = read_wal(wal_dir)?;
        if s.commit != s.last_index || s.term == 0 || s.metadata.is_empty() {
            return Err(WalError {
                file: wal_dir.to_path_buf(),
                offset: 0,
                message: format!(
                    "not a cleanly stopped member's WAL (last entry {}, commit {}, term {}): nothing appended",
                    s.last_index, s.commit, s.term
                ),
            });
        }
        let seq = s
            .last_file
            .file_name()
            .and_then(|n| n.to_str()?.get(..16))
            .and_then(|h| u64::from_str_radix(h, 16).ok())
            .ok_or_else(|| WalError {
                file: s.last_file.clone(),
                offset: 0,
                message: "not named <seq>-<index>.wal: nothing appended".into(),
            })?;
        let mut w = WalAppender {
            dir: wal_dir.to_path_buf(),
            out: None,
            path: PathBuf::new(),
            seq,
            offset: 0,
            crc: s.end_crc,
            metadata: s.metadata,
            term: s.term,
            vote: s.vote,
            commit: s.commit,
            last_index: s.last_index,
            bytes: 0,
            segment_bytes: SEGMENT_BYTES,
        };
        w.cut()?;
        Ok(w)
    }

    /// Starts the next segment, named as etcd names it (`<seq>-<first index>.wal`).
    fn cut(&mut self) -> Result<(), WalError> {
        self.sync()?;
        self.seq += 1;
        self.path = self.dir.join(format!(
            "{:016x}-{:016x}.wal",
            self.seq,
            self.last_index + 1
        ));
        let f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&self.path)
            .map_err(|e| write_err(&self.path, 0, e))?;
        self.out = Some(std::io::BufWriter::with_capacity(1 << 20, f));
        self.offset = 0;
        self.record(CRC, None)?;
        let metadata = self.metadata.clone();
        self.record(METADATA, Some(&metadata))?;
        self.state()
    }

    fn state(&mut self) -> Result<(), WalError> {
        let h = HardState {
            term: Some(self.term),
            vote: Some(self.vote),
            commit: Some(self.commit),
        };
        self.record(STATE, Some(&prost::Message::encode_to_vec(&h)))
    }

    /// One record, framed as etcd's encoder frames it: a little-endian length word (with the
    /// padding count in its top byte) and the record padded to 8 bytes.
    fn record(&mut self, kind: i64, data: Option<&[u8]>) -> Result<(), WalError> {
        use std::io::Write;
        if let Some(d) = data {
            self.crc = crc32c::crc32c_append(self.crc, d);
        }
        let rec = Record {
            r#type: Some(kind),
            crc: Some(self.crc),
            data: data.map(<[u8]>::to_vec),
        };
        let body = prost::Message::encode_to_vec(&rec);
        let pad = (8 - body.len() % 8) % 8;
        let mut len_field = body.len() as u64;
        if pad != 0 {
            len_field |= (0x80 | pad as u64) << 56;
        }
        let (path, offset) = (&self.path, self.offset);
        let out = self.out.as_mut().ok_or_else(|| WalError {
            file: path.clone(),
            offset,
            message: "no open segment".into(),
        })?;
        out.write_all(&len_field.to_le_bytes())
            .and_then(|_| out.write_all(&body))
            .and_then(|_| out.write_all(&[0u8; 8][..pad]))
            .map_err(|e| write_err(path, offset, e))?;
        self.offset += 8 + body.len() as u64 + pad as u64;
        Ok(())
    }

    /// Appends one normal entry holding `data` (an encoded `InternalRaftRequest`); returns its
    /// index.
    pub(crate) fn append(&mut self, data: &[u8]) -> Result<u64, WalError> {
        if data.len() > MAX_ENTRY_BYTES {
            return Err(WalError {
                file: self.path.clone(),
                offset: self.offset,
                message: format!(
                    "an entry of {} bytes is over etcd's WAL record limit of {MAX_ENTRY_BYTES}",
                    data.len()
                ),
            });
        }
        if self.offset >= self.segment_bytes {
            self.cut()?;
        }
        self.last_index += 1;
        let e = NewEntry {
            r#type: Some(0),
            term: Some(self.term),
            index: Some(self.last_index),
            data: Some(data.to_vec()),
        };
        self.record(ENTRY, Some(&prost::Message::encode_to_vec(&e)))?;
        self.bytes += data.len() as u64;
        Ok(self.last_index)
    }

    fn sync(&mut self) -> Result<(), WalError> {
        use std::io::Write;
        let (path, offset) = (&self.path, self.offset);
        match self.out.as_mut() {
            Some(out) => out
                .flush()
                .and_then(|_| out.get_ref().sync_all())
                .map_err(|e| write_err(path, offset, e)),
            None => Ok(()),
        }
    }

    /// Commits everything appended (a final HardState) and syncs the files and the directory.
    /// Returns the last index.
    pub(crate) fn finish(mut self) -> Result<u64, WalError> {
        self.commit = self.last_index;
        self.state()?;
        self.sync()?;
        std::fs::File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| write_err(&self.dir, 0, e))?;
        Ok(self.last_index)
    }
}

/// Reads one `.snap` file: its (index, term), after checking its CRC.
pub(crate) fn read_snap(file: &Path) -> Result<(u64, u64), WalError> {
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A first segment as etcd's `wal.Create` + `Save` write it: CRC 0, metadata, an empty
    /// snapshot record, `n` entries of term 1 and a HardState committing them.
    fn new_wal(dir: &Path, n: u64) {
        let mut w = WalAppender {
            dir: dir.to_path_buf(),
            out: None,
            path: PathBuf::new(),
            seq: 0,
            offset: 0,
            crc: 0,
            metadata: b"meta".to_vec(),
            term: 1,
            vote: 7,
            commit: 0,
            last_index: 0,
            bytes: 0,
            segment_bytes: SEGMENT_BYTES,
        };
        w.cut_first().unwrap();
        let snap = prost::Message::encode_to_vec(&WalSnapshot {
            index: Some(0),
            term: Some(0),
        });
        w.record(SNAPSHOT, Some(&snap)).unwrap();
        for i in 0..n {
            w.append(format!("entry {i}").as_bytes()).unwrap();
        }
        w.finish().unwrap();
    }

    impl WalAppender {
        fn cut_first(&mut self) -> Result<(), WalError> {
            self.seq = 0;
            self.path = self.dir.join(format!("{:016x}-{:016x}.wal", 0, 0));
            let f = std::fs::File::create(&self.path).map_err(|e| write_err(&self.path, 0, e))?;
            self.out = Some(std::io::BufWriter::new(f));
            self.record(CRC, None)?;
            let m = self.metadata.clone();
            self.record(METADATA, Some(&m))?;
            self.state()
        }
    }

    #[test]
    fn appended_entries_continue_the_chain_across_segments() {
        let tmp = tempfile::tempdir().unwrap();
        new_wal(tmp.path(), 3);
        let s = read_wal(tmp.path()).unwrap();
        assert_eq!((s.last_index, s.commit, s.term, s.vote), (3, 3, 1, 7));
        assert_eq!(s.metadata, b"meta");

        let mut w = WalAppender::open(tmp.path()).unwrap();
        w.segment_bytes = 300; // a new segment every few entries
        for i in 0..40 {
            let idx = w.append(&vec![b'x'; 10 + i]).unwrap();
            assert_eq!(idx, 4 + i as u64);
        }
        assert_eq!(w.finish().unwrap(), 43);
        let s = read_wal(tmp.path()).unwrap();
        assert_eq!((s.last_index, s.commit, s.term, s.vote), (43, 43, 1, 7));
        assert!(s.files > 3, "{} files", s.files);
        // named <seq>-<index of its first entry>, seq without holes
        let names: Vec<String> = files_with(tmp.path(), "wal")
            .unwrap()
            .iter()
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names[0], "0000000000000000-0000000000000000.wal");
        assert_eq!(names[1], "0000000000000001-0000000000000004.wal");
        for (i, n) in names.iter().enumerate() {
            assert_eq!(u64::from_str_radix(&n[..16], 16).unwrap(), i as u64);
        }

        // and again after that: the chain goes on
        let mut w = WalAppender::open(tmp.path()).unwrap();
        w.append(b"more").unwrap();
        w.finish().unwrap();
        assert_eq!(read_wal(tmp.path()).unwrap().commit, 44);

        // a flipped byte in an appended record breaks the chain
        let last = files_with(tmp.path(), "wal").unwrap().pop().unwrap();
        let mut b = std::fs::read(&last).unwrap();
        let n = b.len();
        b[n - 20] ^= 1;
        std::fs::write(&last, b).unwrap();
        assert!(read_wal(tmp.path()).is_err());
    }

    #[test]
    fn refuses_a_wal_with_uncommitted_entries() {
        let tmp = tempfile::tempdir().unwrap();
        new_wal(tmp.path(), 2);
        let mut w = WalAppender::open(tmp.path()).unwrap();
        w.append(b"never committed").unwrap();
        drop(w); // flushed, but no HardState commits it
        let e = WalAppender::open(tmp.path()).err().unwrap();
        assert!(e.message.contains("commit 2"), "{e}");
    }
}
