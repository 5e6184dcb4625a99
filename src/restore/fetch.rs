//! Getting the snapshots of a restore out of the store: the full downloaded, verified and
//! inflated into the db file; the deltas fetched ahead (`--max-fetchers`) and decoded one at a
//! time, in bounded batches.

use crate::error::{Error, Result};
use crate::format::codec::Codec;
use crate::format::delta;
use crate::format::encryption::{self, Identities};
use crate::format::layout::Snapshot;
use crate::format::streamio::ChannelReader;
use crate::store::SnapStore;
use bytes::Bytes;
use futures::StreamExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Decompresses `input` (the full snapshot `key`) into a new private file at `dest`, checking
/// the sha256 trailer when asked, then cutting it off as etcd's tool does (the tool, always
/// given `--skip-hash-check`, takes the db with or without it); the db's size.
fn decompress_full(
    key: &str,
    codec: Codec,
    input: impl std::io::Read,
    dest: &Path,
    check_hash: bool,
) -> Result<u64> {
    let f = crate::sys::create_private(dest)
        .map_err(|e| Error::io(dest, "create the temporary snapshot file", e))?;
    let cut = f
        .try_clone()
        .map_err(|e| Error::io(dest, "open the snapshot file", e))?;
    let hasher = crate::format::trailer::decompress_to_file(key, codec, input, f, dest)?;
    let (total, db) = (hasher.total(), hasher.db_len());
    if check_hash {
        hasher.verify(key)?;
    }
    if db < total {
        cut.set_len(db)
            .map_err(|e| Error::io(dest, "strip the sha256 trailer", e))?;
    }
    Ok(db)
}

/// Streams a full snapshot into `dest`, decompressed, checking the sha256 trailer; the db's
/// size.
pub(super) async fn download_full(
    store: &SnapStore,
    full: &Snapshot,
    dest: &Path,
    check_hash: bool,
) -> Result<u64> {
    let key = store.key_of(full);
    let codec =
        Codec::from_suffix(&full.compression_suffix).map_err(|e| Error::integrity(&key, e))?;
    let (dest2, key2) = (dest.to_path_buf(), key.clone());
    let (encrypted, ids) = (full.encrypted, store.keys().identities.clone());
    // a Local store's file is read directly: through the store's stream (small chunks over a
    // channel) it cost a third more time in system calls
    if let Some(src) = store.local_path(full).filter(|p| p.is_file()) {
        return tokio::task::spawn_blocking(move || -> Result<u64> {
            let input = std::fs::File::open(&src)
                .map_err(|e| Error::io(&src, "open the full snapshot", e))?;
            let plain = encryption::open(&key2, encrypted, ids.as_deref(), input)?;
            decompress_full(&key2, codec, plain, &dest2, check_hash)
        })
        .await
        .map_err(|e| Error::task("snapshot decompression worker", e))?;
    }
    let total = store.size(full).await.unwrap_or(0);
    let mut stream = store.fetch(full).await?;
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes>>(16);
    let worker = tokio::task::spawn_blocking(move || {
        let plain = encryption::open(&key2, encrypted, ids.as_deref(), ChannelReader::new(rx))?;
        decompress_full(&key2, codec, plain, &dest2, check_hash)
    });
    let (started, mut last_log, mut got) = (Instant::now(), Instant::now(), 0u64);
    while let Some(chunk) = stream.next().await {
        let failed = chunk.is_err();
        if let Ok(c) = &chunk {
            got += c.len() as u64;
        }
        if tx.send(chunk).await.is_err() || failed {
            break;
        }
        if last_log.elapsed() >= Duration::from_secs(5) {
            progress("download", got, total, started);
            last_log = Instant::now();
        }
    }
    drop(tx);
    worker
        .await
        .map_err(|e| Error::task("snapshot download worker", e))?
}

/// One progress line: done/total bytes, rate, ETA.
fn progress(what: &str, done: u64, total: u64, started: Instant) {
    let secs = started.elapsed().as_secs_f64().max(0.001);
    let rate = done as f64 / secs;
    let eta = if total > done && rate > 0.0 {
        format!("{:.0}s", (total - done) as f64 / rate)
    } else {
        "-".into()
    };
    tracing::info!(
        done_mib = done >> 20,
        total_mib = total >> 20,
        rate = format!("{:.1} MiB/s", rate / 1048576.0),
        eta,
        "{what} progress"
    );
}

/// Where a delta's stored bytes are read from: its file in a Local store, else a download
/// into `tmp` (streamed to disk: memory holds a chunk, whatever the object's size).
pub(super) async fn fetch_delta(
    store: &SnapStore,
    d: &Snapshot,
    tmp: &Path,
) -> Result<(PathBuf, bool)> {
    if let Some(p) = store.local_path(d).filter(|p| p.is_file()) {
        return Ok((p, false));
    }
    use tokio::io::AsyncWriteExt;
    // still as stored (compressed, encrypted): decoded as it is read
    let dest = tmp.join(format!("delta-{:016x}", rand::random::<u64>()));
    let mut f = crate::sys::create_private(&dest)
        .map(tokio::fs::File::from_std)
        .map_err(|e| Error::io(&dest, "create the delta download", e))?;
    let mut s = store.fetch(d).await?;
    while let Some(c) = s.next().await {
        f.write_all(&c?)
            .await
            .map_err(|e| Error::io(&dest, "write the delta download", e))?;
    }
    f.flush()
        .await
        .map_err(|e| Error::io(&dest, "write the delta download", e))?;
    Ok((dest, true))
}

/// Events of one delta are handed to the replay in batches of about this many bytes, a batch
/// never splitting a revision.
const BATCH_BYTES: usize = 4 << 20;

/// Batches of a delta's events, and the decoder's verdict on the whole object.
type DecodedDelta = (
    tokio::sync::mpsc::Receiver<Vec<delta::Event>>,
    tokio::task::JoinHandle<Result<()>>,
);

/// Decodes the delta in `file` as a stream on a blocking thread (decompress, parse, sha256 over
/// everything), sending its events in batches; the result says whether the whole object was
/// sound, which the caller must await before trusting what it applied.
pub(super) fn decode_delta(
    file: PathBuf,
    d: &Snapshot,
    key: String,
    identities: Option<Arc<Identities>>,
    limits: delta::Limits,
) -> Result<DecodedDelta> {
    let codec = Codec::from_suffix(&d.compression_suffix).map_err(|e| Error::integrity(&key, e))?;
    let encrypted = d.encrypted;
    let (tx, rx) = tokio::sync::mpsc::channel::<Vec<delta::Event>>(2);
    let task = tokio::task::spawn_blocking(move || -> Result<()> {
        let f = std::fs::File::open(&file).map_err(|e| Error::io(&file, "open the delta", e))?;
        let plain = encryption::open(
            &key,
            encrypted,
            identities.as_deref(),
            std::io::BufReader::with_capacity(1 << 20, f),
        )?;
        let r = codec
            .decoder(std::io::BufReader::with_capacity(1 << 20, plain))
            .map_err(|e| Error::integrity(&key, format!("cannot decompress: {e}")))?;
        let (mut batch, mut bytes): (Vec<delta::Event>, usize) = (Vec::new(), 0);
        let mut open = true;
        let result = delta::stream(r, &key, limits, |ev| {
            if bytes >= BATCH_BYTES
                && batch
                    .last()
                    .is_some_and(|l| l.mod_revision != ev.mod_revision)
            {
                // a receiver that stopped (target reached) still lets the whole object be
                // read: its sha256 covers the events already applied
                open = open && tx.blocking_send(std::mem::take(&mut batch)).is_ok();
                batch.clear();
                bytes = 0;
            }
            bytes += ev.key.len() + ev.value.len() + 64;
            batch.push(ev);
            Ok(())
        });
        if open && !batch.is_empty() {
            let _ = tx.blocking_send(batch);
        }
        result
    });
    Ok((rx, task))
}
