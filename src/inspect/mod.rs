//! Looking inside a backup without etcd: `snapshot status`, `verify`, `ls` and `get` on a local
//! file (raw db, db + sha256 trailer, compressed snapshot) or on an object of the store.
//!
//! Anything that is not a raw bbolt file is streamed, decompressed on the way, into a temporary
//! file (bbolt needs random access); the sha256 trailer is checked on the same pass.

pub mod k8s;

use crate::error::{Error, Result};
use crate::format::codec::Codec;
use crate::format::encryption::{self, Keys};
use crate::format::layout;
use crate::format::proof::Proof;
use crate::format::streamio::ChannelReader;
use crate::format::trailer::TrailerHasher;
use crate::ondisk::bbolt::{Db, Problem};
use crate::ondisk::schema::{self, KeyValue, Status};
use crate::store::{SnapStore, StoreConfig};
use futures::StreamExt;
use std::collections::BTreeMap;
use std::io::{BufReader, Read, Write};
use std::path::{Path, PathBuf};

/// The sha256 trailer etcd appends to a snapshot it streams.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Trailer {
    /// The length is a whole number of 512-byte blocks: a db file, no trailer.
    Absent,
    Matches,
    Mismatch {
        computed: String,
        stored: String,
    },
    /// A length that is neither (a truncated or padded file).
    Malformed(u64),
    /// Present by its length, not hashed (`--skip-hash-check`).
    Unchecked,
}

impl std::fmt::Display for Trailer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Trailer::Absent => f.write_str("absent (a db file, not a streamed snapshot)"),
            Trailer::Matches => f.write_str("present, matches"),
            Trailer::Mismatch { computed, stored } => write!(
                f,
                "present, MISMATCH: the data hashes to {computed}, the trailer says {stored}"
            ),
            Trailer::Unchecked => f.write_str("present, not checked (--skip-hash-check)"),
            Trailer::Malformed(len) => write!(
                f,
                "unknown: {len} bytes is neither whole 512-byte blocks nor blocks plus a 32-byte hash (truncated?)"
            ),
        }
    }
}

impl Trailer {
    fn from_hasher(h: TrailerHasher) -> Trailer {
        let total = h.total();
        if total.is_multiple_of(512) {
            return Trailer::Absent;
        }
        if total % 512 != 32 {
            return Trailer::Malformed(total);
        }
        let (computed, stored) = h.finish();
        if computed == stored {
            Trailer::Matches
        } else {
            Trailer::Mismatch {
                computed: crate::format::trailer::hex(&computed),
                stored: crate::format::trailer::hex(&stored),
            }
        }
    }

    pub(crate) fn is_bad(&self) -> bool {
        matches!(self, Trailer::Mismatch { .. } | Trailer::Malformed(_))
    }
}

/// A snapshot opened for reading.
pub(crate) struct Opened {
    pub(crate) db: Db,
    /// What the user named (file path or stored key).
    pub(crate) label: String,
    trailer: Option<Trailer>,
    /// The trailer of a raw file, hashed on another thread while the pages are walked.
    pending: Option<std::thread::JoinHandle<Result<Trailer>>>,
    /// Keeps the decompressed copy alive while `db` reads it.
    _temp: Option<tempfile::TempPath>,
    /// The proof stored with a full snapshot (etcd's keyspace hash at its revision), or why
    /// it cannot be read.
    proof: Option<Result<Proof>>,
}

impl Opened {
    /// Checks the snapshot against the proof in `path` (a local file's; a stored full's is
    /// found by itself).
    pub(crate) fn set_proof(&mut self, path: &Path) -> Result<()> {
        let bytes = std::fs::read(path).map_err(|e| Error::io(path, "read the proof", e))?;
        self.proof = Some(Proof::parse(&path.display().to_string(), &bytes));
        Ok(())
    }

    /// The sha256 trailer's state (waits for the hashing thread of a raw file).
    pub(crate) fn trailer(&mut self) -> Result<&Trailer> {
        if let Some(h) = self.pending.take() {
            let t = h
                .join()
                .map_err(|_| Error::task("the sha256 thread", "panicked"))??;
            self.trailer = Some(t);
        }
        Ok(self.trailer.get_or_insert(Trailer::Absent))
    }
}

/// The first bytes of a raw bbolt file: the meta magic at offset 16.
fn is_raw_bbolt(head: &[u8]) -> bool {
    head.get(16..20) == Some(&[0xED, 0xDA, 0x0C, 0xED][..])
}

/// Guesses the codec of a local file: by its snapshot name, else by its magic bytes.
fn sniff_codec(path: &Path, head: &[u8]) -> Result<Codec> {
    if is_raw_bbolt(head) {
        return Ok(Codec::None);
    }
    if let Some(name) = path.file_name().and_then(|n| n.to_str()) {
        if let Ok(s) = layout::parse_name(name) {
            return Codec::from_suffix(&s.compression_suffix)
                .map_err(|e| Error::integrity(name, e));
        }
        if name.ends_with(".Z") {
            return Ok(Codec::Lzw);
        }
    }
    match head {
        [0x1f, 0x8b, ..] => Ok(Codec::Gzip),
        [0x28, 0xb5, 0x2f, 0xfd, ..] => Ok(Codec::Zstd),
        [0x78, b, ..] if (0x7800u16 | u16::from(*b)).is_multiple_of(31) => Ok(Codec::Zlib),
        _ => Err(Error::integrity(
            path.display().to_string(),
            "not a bbolt file nor a gzip, zlib or zstd stream (an lzw snapshot must keep its .Z name)",
        )),
    }
}

/// Hashes a raw file's body against its trailer (when its length says it has one).
fn trailer_of_file(path: &Path) -> Result<Trailer> {
    let f = std::fs::File::open(path).map_err(|e| Error::io(path, "open", e))?;
    let len = f.metadata().map_err(|e| Error::io(path, "stat", e))?.len();
    if len % 512 == 0 {
        return Ok(Trailer::Absent); // a db file: nothing to hash
    }
    let mut r = BufReader::with_capacity(1 << 20, f);
    let mut h = TrailerHasher::default();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = r.read(&mut buf).map_err(|e| Error::io(path, "read", e))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(Trailer::from_hasher(h))
}

/// Decompresses `r` into a new temporary file in `temp_dir`, hashing it on the way.
fn decompress_into(
    label: &str,
    codec: Codec,
    r: impl Read,
    temp_dir: &Path,
) -> Result<(tempfile::TempPath, Trailer)> {
    let tmp = tempfile::Builder::new()
        .prefix("etcdbr-inspect-")
        .tempfile_in(temp_dir)
        .map_err(|e| Error::io(temp_dir, "create a temporary file", e))?;
    let (file, path) = tmp.into_parts();
    let h = crate::format::trailer::decompress_to_file(label, codec, r, file, &path)?;
    Ok((path, Trailer::from_hasher(h)))
}

fn open_db(path: &Path, label: &str) -> Result<Db> {
    Db::open(path).map_err(|e| match e {
        crate::ondisk::bbolt::BoltError::Corrupt { problem, .. } => {
            Error::integrity(label, format!("not a valid bbolt file: {problem}"))
        }
        crate::ondisk::bbolt::BoltError::Io { what, source, .. } => Error::io(path, what, source),
    })
}

/// Opens a local file, or (when `source` is not an existing file) the stored snapshot of that
/// name, or key, in the store `store` describes.
/// `check_hash`: hash a raw file against its trailer (a decompressed copy is hashed anyway, on
/// the way).
/// `keys`: the identities that decrypt an encrypted file or object.
pub(crate) async fn open(
    source: &str,
    store: Option<StoreConfig>,
    keys: Keys,
    temp_dir: &Path,
    check_hash: bool,
) -> Result<Opened> {
    let path = PathBuf::from(source);
    if path.is_file() {
        let (p2, t2) = (path.clone(), temp_dir.to_path_buf());
        return tokio::task::spawn_blocking(move || open_local(&p2, check_hash, &keys, &t2))
            .await
            .map_err(|e| Error::task("inspect worker", e))?;
    }
    let Some(mut cfg) = store else {
        return Err(Error::config(format!(
            "{source}: no such file; to read a stored snapshot, name the store (--storage-provider, --store-container, --store-prefix)"
        )));
    };
    cfg.keys.identities = keys.identities;
    let store = SnapStore::open(cfg).await?;
    let name = source.rsplit('/').next().unwrap_or(source);
    let list = store.list().await?;
    let snap = list
        .iter()
        .find(|s| {
            s.snap_name == name
                || s.name_without_final() == name
                || s.plain_name() == name
                || store.key_of(s) == source
        })
        .ok_or_else(|| {
            Error::config(format!(
                "{source}: neither a local file nor a snapshot in {} ({} snapshots there)",
                store.describe(),
                list.len()
            ))
        })?;
    let key = store.key_of(snap);
    let proof = match snap.kind {
        layout::Kind::Full => store.proof(snap).await.transpose(),
        layout::Kind::Incr => None,
    };
    let codec =
        Codec::from_suffix(&snap.compression_suffix).map_err(|e| Error::integrity(&key, e))?;
    let mut stream = store.fetch(snap).await?;
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<bytes::Bytes>>(16);
    let (key2, temp) = (key.clone(), temp_dir.to_path_buf());
    let (encrypted, ids) = (snap.encrypted, store.keys().identities.clone());
    let worker = tokio::task::spawn_blocking(move || {
        let plain = encryption::open(&key2, encrypted, ids.as_deref(), ChannelReader::new(rx))?;
        decompress_into(&key2, codec, plain, &temp)
    });
    while let Some(chunk) = stream.next().await {
        let failed = chunk.is_err();
        if tx.send(chunk).await.is_err() || failed {
            break;
        }
    }
    drop(tx);
    let (tmp, trailer) = worker
        .await
        .map_err(|e| Error::task("inspect worker", e))??;
    let db = open_db(&tmp, &key)?;
    Ok(Opened {
        db,
        label: key,
        trailer: Some(trailer),
        pending: None,
        _temp: Some(tmp),
        proof,
    })
}

/// `temp_dir` (`--snapstore-temp-directory`) receives the decompressed copy of a compressed file.
fn open_local(path: &Path, check_hash: bool, keys: &Keys, temp_dir: &Path) -> Result<Opened> {
    let label = path.display().to_string();
    let mut head = [0u8; 64];
    let n = {
        let mut f = std::fs::File::open(path).map_err(|e| Error::io(path, "open", e))?;
        f.read(&mut head).map_err(|e| Error::io(path, "read", e))?
    };
    if encryption::looks_encrypted(&head[..n]) {
        return open_local_encrypted(path, keys, temp_dir);
    }
    let codec = sniff_codec(path, &head[..n])?;
    if codec == Codec::None {
        let db = open_db(path, &label)?;
        let p = path.to_path_buf();
        let (trailer, pending) = if check_hash {
            (None, Some(std::thread::spawn(move || trailer_of_file(&p))))
        } else {
            let unchecked = match db.file_len() % 512 {
                0 => Trailer::Absent,
                32 => Trailer::Unchecked,
                _ => Trailer::Malformed(db.file_len()),
            };
            (Some(unchecked), None)
        };
        return Ok(Opened {
            db,
            label,
            trailer,
            pending,
            _temp: None,
            proof: None,
        });
    }
    let f = std::fs::File::open(path).map_err(|e| Error::io(path, "open", e))?;
    open_copy(label, codec, f, temp_dir)
}

/// A local file read through a decompressed (and decrypted) temporary copy in `temp_dir`.
fn open_copy(label: String, codec: Codec, input: impl Read, temp_dir: &Path) -> Result<Opened> {
    std::fs::create_dir_all(temp_dir)
        .map_err(|e| Error::io(temp_dir, "create the temporary directory", e))?;
    let (tmp, trailer) = decompress_into(&label, codec, input, temp_dir)?;
    let db = open_db(&tmp, &label)?;
    Ok(Opened {
        db,
        label,
        trailer: Some(trailer),
        pending: None,
        _temp: Some(tmp),
        proof: None,
    })
}

/// An encrypted local file: decrypted once, its first plaintext bytes peeked at for the codec
/// (when its name does not say), then decompressed into a temporary file.
fn open_local_encrypted(path: &Path, keys: &Keys, temp_dir: &Path) -> Result<Opened> {
    use std::io::BufRead;
    let label = path.display().to_string();
    let f = std::fs::File::open(path).map_err(|e| Error::io(path, "open", e))?;
    let plain = encryption::open(&label, true, keys.identities.as_deref(), BufReader::new(f))?;
    // the first block of the decrypting thread (256 KiB) is more than the magic bytes need
    let mut plain = BufReader::with_capacity(64 << 10, plain);
    let head = plain
        .fill_buf()
        .map_err(|e| Error::integrity(&label, e.to_string()))?;
    let plain_name = path
        .file_name()
        .and_then(|n| n.to_str())
        .map(|n| n.trim_end_matches(".final").trim_end_matches(".age"))
        .unwrap_or_default();
    let codec = sniff_codec(Path::new(plain_name), head)?;
    open_copy(label, codec, plain, temp_dir)
}

/// `snapshot status` output in etcdctl's formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Format {
    Table,
    Json,
    Fields,
    Simple,
}

/// go-humanize's `Bytes` (SI units: "20 kB", "1.1 GB").
pub(crate) fn humanize_bytes(n: u64) -> String {
    const UNITS: [&str; 7] = ["B", "kB", "MB", "GB", "TB", "PB", "EB"];
    if n < 10 {
        return format!("{n} B");
    }
    let e = ((n as f64).ln() / 1000f64.ln()).floor() as usize;
    let e = e.min(UNITS.len() - 1);
    let val = ((n as f64) / 1000f64.powi(e as i32) * 10.0 + 0.5).floor() / 10.0;
    if val < 10.0 {
        format!("{val:.1} {}", UNITS[e])
    } else {
        format!("{val:.0} {}", UNITS[e])
    }
}

/// Renders a status exactly as etcdctl 3.4 / etcdutl 3.5 print it.
pub(crate) fn render_status(st: &Status, format: Format) -> String {
    match format {
        Format::Json => format!(
            "{{\"hash\":{},\"revision\":{},\"totalKey\":{},\"totalSize\":{}}}\n",
            st.hash, st.revision, st.total_keys, st.total_size
        ),
        Format::Fields => format!(
            "\"Hash\" : {}\n\"Revision\" : {}\n\"Keys\" : {}\n\"Size\" : {}\n",
            st.hash, st.revision, st.total_keys, st.total_size
        ),
        Format::Simple => format!(
            "{:x}, {}, {}, {}\n",
            st.hash,
            st.revision,
            st.total_keys,
            humanize_bytes(st.total_size)
        ),
        Format::Table => {
            let header = ["HASH", "REVISION", "TOTAL KEYS", "TOTAL SIZE"];
            let row = [
                format!("{:x}", st.hash),
                st.revision.to_string(),
                st.total_keys.to_string(),
                humanize_bytes(st.total_size),
            ];
            table(&header, &[row.to_vec()])
        }
    }
}

/// tablewriter's layout as etcdctl configures it (centered header, borders, `|` separators).
fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut w: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            w[i] = w[i].max(c.chars().count());
        }
    }
    let line: String = {
        let mut s = String::from("+");
        for x in &w {
            s.push_str(&"-".repeat(x + 2));
            s.push('+');
        }
        s.push('\n');
        s
    };
    let mut out = line.clone();
    out.push('|');
    for (i, h) in header.iter().enumerate() {
        let pad = w[i] - h.len();
        let left = pad / 2;
        out.push_str(&format!(
            " {}{}{} |",
            " ".repeat(left),
            h,
            " ".repeat(pad - left)
        ));
    }
    out.push('\n');
    out.push_str(&line);
    for r in rows {
        out.push('|');
        for (i, c) in r.iter().enumerate() {
            out.push_str(&format!(" {:>width$} |", c, width = w[i]));
        }
        out.push('\n');
    }
    out.push_str(&line);
    out
}

/// `ls`/`get` output.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum ListFormat {
    Table,
    Json,
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Error::task("inspect worker", e))?
}

/// Where `snapshot status|verify|ls|get` write: what etcdctl prints on stdout (`out`), and
/// the notes it does not print (`notes`, stderr for the command line).
pub(crate) struct Output {
    pub(crate) out: Box<dyn Write + Send>,
    pub(crate) notes: Box<dyn Write + Send>,
}

impl Output {
    fn error(e: std::io::Error) -> Error {
        Error::io("<output>", "write the result", e)
    }
}

/// `snapshot status`: etcdctl's output on stdout; fails like etcdctl when the structure is
/// damaged. What etcdctl leaves out goes to stderr.
pub(crate) async fn write_status(mut o: Opened, format: Format, mut w: Output) -> Result<()> {
    blocking(move || status_blocking(&mut o, format, &mut w)).await
}

fn status_blocking(o: &mut Opened, format: Format, w: &mut Output) -> Result<()> {
    let (st, problems) = schema::status_checked(&o.db);
    if let Some(first) = problems.first() {
        return Err(Error::integrity(
            &o.label,
            format!(
                "snapshot file integrity check failed. {} errors found (first: {first}); run `etcdbrctl snapshot verify` for all",
                problems.len()
            ),
        ));
    }
    write!(w.out, "{}", render_status(&st, format)).map_err(Output::error)?;
    let compacted = match (st.finished_compact, st.scheduled_compact) {
        (Some(f), Some(s)) if s > f => format!("compacted at {f}, compaction to {s} unfinished"),
        (None, Some(s)) => format!("compaction to {s} unfinished"),
        (Some(f), _) => format!("compacted at {f}"),
        (None, None) => "never compacted".to_string(),
    };
    let label = o.label.clone();
    let trailer = o.trailer()?;
    writeln!(
        w.notes,
        "effective revision: {} ({compacted}); live keys: {}; sha256 trailer: {trailer}",
        st.effective_revision(),
        st.live_keys,
    )
    .map_err(Output::error)?;
    if trailer.is_bad() {
        return Err(Error::integrity(
            &label,
            format!("sha256 trailer: {trailer}"),
        ));
    }
    Ok(())
}

/// `snapshot verify`: every problem on its own line; an error if there is any.
pub(crate) async fn write_verify(mut o: Opened, mut w: Output) -> Result<()> {
    blocking(move || {
        let v = verify(&mut o)?;
        writeln!(w.out, "sha256 trailer: {}", v.trailer).map_err(Output::error)?;
        for p in &v.problems {
            writeln!(w.out, "problem: {p}").map_err(Output::error)?;
        }
        let bad = v.problems.len() + usize::from(v.trailer.is_bad());
        if bad > 0 {
            return Err(Error::integrity(
                &o.label,
                format!("{bad} problem(s) found; do not restore from this snapshot"),
            ));
        }
        let st = v.status;
        writeln!(
            w.out,
            "OK: {} pages of {} bytes checked, revision {} (effective {}), {} live keys",
            o.db.meta().hwm,
            o.db.meta().page_size,
            st.revision,
            st.effective_revision(),
            st.live_keys
        )
        .map_err(Output::error)?;
        match o.proof.take() {
            None => writeln!(w.out, "keyspace hash: no proof recorded with this snapshot")
                .map_err(Output::error),
            Some(Err(e)) => Err(e),
            Some(Ok(p)) => {
                let ours = crate::ondisk::hashkv::hash_kv(&o.db, p.revision, p.compact_revision)?;
                if ours != p.hash {
                    return Err(Error::integrity(
                        &o.label,
                        format!(
                            "its keyspace hash at revision {} is {ours:08x}, but etcd (member {}) answered {:08x} when it was stored: this is not the data of the cluster it claims to come from; do not restore from it",
                            p.revision, p.member_id, p.hash
                        ),
                    ));
                }
                writeln!(
                    w.out,
                    "keyspace hash: {ours:08x}, equal to etcd's HashKV at revision {} (compacted at {}, member {}, cluster {})",
                    p.revision, p.compact_revision, p.member_id, p.cluster_id
                )
                .map_err(Output::error)
            }
        }
    })
    .await
}

/// etcd's keyspace hash of the snapshot: (revision, compaction revision, hash), both
/// revisions by default the snapshot's own (its effective revision, its finished compaction).
pub(crate) async fn hash_kv(
    o: Opened,
    revision: Option<i64>,
    compact: Option<i64>,
) -> Result<(i64, i64, u32)> {
    blocking(move || {
        // the meta bucket and the last key: a few pages, not a scan
        let r = schema::revisions(&o.db)?;
        let revision = revision.unwrap_or_else(|| r.effective());
        let compact = compact.unwrap_or(r.finished_compact.unwrap_or(0));
        let hash = crate::ondisk::hashkv::hash_kv(&o.db, revision, compact)?;
        Ok((revision, compact, hash))
    })
    .await
}

/// Key or value as text: itself when it is UTF-8 without control characters, else escaped.
fn printable(b: &[u8]) -> String {
    match std::str::from_utf8(b) {
        Ok(s) if !s.chars().any(|c| c.is_control()) => s.to_string(),
        _ => b.escape_ascii().to_string(),
    }
}

fn kv_json(kv: &KeyValue, kubernetes: bool) -> serde_json::Value {
    use base64::Engine;
    let mut m = serde_json::Map::new();
    let mut text = |name: &str, b: &[u8]| match std::str::from_utf8(b) {
        Ok(s) => {
            m.insert(name.to_string(), s.into());
        }
        Err(_) => {
            m.insert(
                format!("{name}_base64"),
                base64::engine::general_purpose::STANDARD.encode(b).into(),
            );
        }
    };
    text("key", &kv.key);
    let is_proto = kubernetes && kv.value.starts_with(crate::inspect::k8s::PROTOBUF_MAGIC);
    if !is_proto {
        text("value", &kv.value);
    }
    m.insert("create_revision".into(), kv.create_revision.into());
    m.insert("mod_revision".into(), kv.mod_revision.into());
    m.insert("version".into(), kv.version.into());
    m.insert("lease".into(), kv.lease.into());
    if kubernetes {
        if let Some(r) = crate::inspect::k8s::parse_registry_key(&kv.key) {
            m.insert("resource".into(), r.resource.into());
            m.insert("namespace".into(), r.namespace.into());
            m.insert("name".into(), r.name.into());
        }
        match crate::inspect::k8s::decode_value(&kv.value) {
            crate::inspect::k8s::Encoding::Protobuf {
                api_version,
                kind,
                raw,
                ..
            } => {
                m.insert("apiVersion".into(), api_version.into());
                m.insert("kind".into(), kind.into());
                m.insert("encoding".into(), "protobuf".into());
                m.insert(
                    "raw_base64".into(),
                    base64::engine::general_purpose::STANDARD.encode(raw).into(),
                );
            }
            crate::inspect::k8s::Encoding::Json { api_version, kind } => {
                m.insert("apiVersion".into(), api_version.into());
                m.insert("kind".into(), kind.into());
                m.insert("encoding".into(), "json".into());
            }
            crate::inspect::k8s::Encoding::Other => {}
        }
    }
    serde_json::Value::Object(m)
}

fn write_kvs(
    w: &mut Output,
    kvs: &mut dyn Iterator<Item = Result<KeyValue>>,
    format: ListFormat,
    kubernetes: bool,
) -> Result<()> {
    match format {
        ListFormat::Json => {
            for kv in kvs {
                writeln!(w.out, "{}", kv_json(&kv?, kubernetes)).map_err(Output::error)?;
            }
        }
        ListFormat::Table if kubernetes => {
            let rows: Vec<Vec<String>> = kvs
                .map(|kv| {
                    let kv = kv?;
                    let (res, ns, name) = match crate::inspect::k8s::parse_registry_key(&kv.key) {
                        Some(r) => (r.resource, r.namespace, r.name),
                        None => (String::new(), String::new(), printable(&kv.key)),
                    };
                    let (av, kind, enc) = match crate::inspect::k8s::decode_value(&kv.value) {
                        crate::inspect::k8s::Encoding::Protobuf {
                            api_version, kind, ..
                        } => (api_version, kind, "protobuf"),
                        crate::inspect::k8s::Encoding::Json { api_version, kind } => {
                            (api_version, kind, "json")
                        }
                        crate::inspect::k8s::Encoding::Other => {
                            (String::new(), String::new(), "other")
                        }
                    };
                    Ok(vec![
                        res,
                        ns,
                        name,
                        av,
                        kind,
                        enc.to_string(),
                        kv.mod_revision.to_string(),
                        kv.value.len().to_string(),
                    ])
                })
                .collect::<Result<_>>()?;
            write!(
                w.out,
                "{}",
                table(
                    &[
                        "RESOURCE",
                        "NAMESPACE",
                        "NAME",
                        "API VERSION",
                        "KIND",
                        "ENCODING",
                        "MOD REVISION",
                        "SIZE"
                    ],
                    &rows
                )
            )
            .map_err(Output::error)?;
        }
        ListFormat::Table => {
            let rows: Vec<Vec<String>> = kvs
                .map(|kv| {
                    let kv = kv?;
                    let mut v = printable(&kv.value);
                    if v.chars().count() > 60 {
                        v = format!("{}...", v.chars().take(57).collect::<String>());
                    }
                    Ok(vec![
                        printable(&kv.key),
                        kv.create_revision.to_string(),
                        kv.mod_revision.to_string(),
                        kv.version.to_string(),
                        format!("{:x}", kv.lease),
                        v,
                    ])
                })
                .collect::<Result<_>>()?;
            write!(
                w.out,
                "{}",
                table(
                    &[
                        "KEY",
                        "CREATE REVISION",
                        "MOD REVISION",
                        "VERSION",
                        "LEASE",
                        "VALUE"
                    ],
                    &rows
                )
            )
            .map_err(Output::error)?;
        }
    }
    Ok(())
}

/// `snapshot ls`.
pub(crate) async fn write_ls(
    o: Opened,
    mut w: Output,
    prefix: Vec<u8>,
    revision: Option<i64>,
    format: ListFormat,
    kubernetes: bool,
) -> Result<()> {
    blocking(move || {
        let listing = keys_at(&o, &prefix, revision)?;
        let mut kvs = listing.keys.values().map(|l| listing.load(&o, l));
        write_kvs(&mut w, &mut kvs, format, kubernetes)?;
        writeln!(
            w.notes,
            "{} keys at revision {}",
            listing.keys.len(),
            listing.revision
        )
        .map_err(Output::error)?;
        Ok(())
    })
    .await
}

/// `snapshot get`.
pub(crate) async fn write_get(
    o: Opened,
    mut w: Output,
    key: Vec<u8>,
    revision: Option<i64>,
    format: ListFormat,
    kubernetes: bool,
    out: Option<PathBuf>,
) -> Result<()> {
    blocking(move || {
        let listing = keys_at(&o, &key, revision)?;
        let Some(live) = listing.keys.get(&key) else {
            return Err(Error::config(format!(
                "key {:?} does not exist at revision {} of {}",
                printable(&key),
                listing.revision,
                o.label
            )));
        };
        let kv = listing.load(&o, live)?;
        if let Some(path) = out {
            let bytes = match crate::inspect::k8s::decode_value(&kv.value) {
                crate::inspect::k8s::Encoding::Protobuf { raw, .. } if kubernetes => raw,
                _ => kv.value.clone(),
            };
            std::fs::write(&path, bytes).map_err(|e| Error::io(&path, "write the value", e))?;
            writeln!(
                w.notes,
                "wrote the value of {} to {}",
                printable(&key),
                path.display()
            )
            .map_err(Output::error)?;
        }
        write_kvs(&mut w, &mut std::iter::once(Ok(kv)), format, kubernetes)
    })
    .await
}

/// Status plus the structural check, for `verify`.
pub(crate) struct Verdict {
    pub(crate) problems: Vec<Problem>,
    pub(crate) trailer: Trailer,
    /// Meaningful only without problems.
    pub(crate) status: Status,
}

pub(crate) fn verify(o: &mut Opened) -> Result<Verdict> {
    let (status, problems) = schema::status_checked(&o.db);
    Ok(Verdict {
        problems,
        trailer: o.trailer()?.clone(),
        status,
    })
}

/// A key live at the chosen revision: where its KeyValue is (loaded on demand, so that
/// listing a large snapshot holds only keys in memory).
pub(crate) struct Live {
    revision_key: Vec<u8>,
}

/// The live keys under `prefix` at a revision of a snapshot, in key order.
pub(crate) struct Listing {
    pub(crate) revision: i64,
    pub(crate) keys: BTreeMap<Vec<u8>, Live>,
    bucket: Option<crate::ondisk::bbolt::Bucket>,
}

impl Listing {
    /// The full KeyValue of a listed key (value read from the snapshot).
    pub(crate) fn load(&self, o: &Opened, live: &Live) -> Result<KeyValue> {
        let bad = |m: String| Error::integrity(&o.label, m);
        let bucket = self
            .bucket
            .as_ref()
            .ok_or_else(|| bad("no key bucket".into()))?;
        let v =
            o.db.get(bucket, &live.revision_key)
                .map_err(|e| bad(e.to_string()))?
                .ok_or_else(|| bad(format!("revision key {:02x?} vanished", live.revision_key)))?;
        schema::decode_kv(&v).map_err(bad)
    }
}

/// The keys live at `revision` (default: the snapshot's own) under `prefix`, with their latest
/// KeyValue at or below it. Revisions below the compaction point are refused: their history is
/// gone.
pub(crate) fn keys_at(o: &Opened, prefix: &[u8], revision: Option<i64>) -> Result<Listing> {
    // the revision marks only (a few pages): the key bucket is walked once, below
    let revs = schema::revisions(&o.db).map_err(|e| Error::integrity(&o.label, e.to_string()))?;
    let newest = revs.effective();
    let at = revision.unwrap_or(newest);
    let compacted = revs.finished_compact.unwrap_or(0);
    if at < compacted {
        return Err(Error::config(format!(
            "revision {at} of {} has been compacted (history kept from {compacted} on)",
            o.label
        )));
    }
    if at > newest {
        return Err(Error::config(format!(
            "revision {at} is newer than the snapshot {} (revision {newest})",
            o.label
        )));
    }
    let mut keys: BTreeMap<Vec<u8>, Live> = BTreeMap::new();
    let bucket =
        schema::key_bucket(&o.db).map_err(|e| Error::integrity(&o.label, e.to_string()))?;
    if let Some(bucket) = &bucket {
        let mut stop = false;
        o.db.for_each(bucket, &mut |_, k, v| {
            if stop {
                return Ok(());
            }
            let (rev, tomb) = schema::parse_revision_key(k).ok_or_else(|| {
                crate::ondisk::bbolt::problem(None, format!("cannot parse revision key {k:02x?}"))
            })?;
            if rev.main > at {
                stop = true;
                return Ok(());
            }
            let mut kv = schema::decode_kv(v).map_err(|m| {
                crate::ondisk::bbolt::problem(None, format!("revision {}: {m}", rev.main))
            })?;
            if !kv.key.starts_with(prefix) {
                return Ok(());
            }
            if tomb {
                keys.remove(&kv.key);
            } else {
                kv.value = Vec::new();
                keys.insert(
                    kv.key.clone(),
                    Live {
                        revision_key: k.to_vec(),
                    },
                );
            }
            Ok(())
        })
        .map_err(|e| Error::integrity(&o.label, e.to_string()))?;
    }
    Ok(Listing {
        revision: at,
        keys,
        bucket,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn humanize_matches_go_humanize() {
        assert_eq!(humanize_bytes(0), "0 B");
        assert_eq!(humanize_bytes(20480), "20 kB");
        assert_eq!(humanize_bytes(1_048_576), "1.0 MB");
        assert_eq!(humanize_bytes(32_768), "33 kB");
        assert_eq!(humanize_bytes(945_815_552), "946 MB");
    }

    #[test]
    fn table_matches_etcdctl() {
        let st = Status {
            hash: 0xf0ad_f46a,
            revision: 6,
            total_keys: 10,
            live_keys: 5,
            total_size: 20480,
            finished_compact: None,
            scheduled_compact: None,
            consistent_index: None,
            storage_version: None,
        };
        let want = "+----------+----------+------------+------------+\n\
                    |   HASH   | REVISION | TOTAL KEYS | TOTAL SIZE |\n\
                    +----------+----------+------------+------------+\n\
                    | f0adf46a |        6 |         10 |      20 kB |\n\
                    +----------+----------+------------+------------+\n";
        assert_eq!(render_status(&st, Format::Table), want);
        assert_eq!(
            render_status(&st, Format::Json),
            "{\"hash\":4037932138,\"revision\":6,\"totalKey\":10,\"totalSize\":20480}\n"
        );
    }
}
