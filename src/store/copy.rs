//! The `copy` command: copies backups from a source store to a destination store (etcdbrctl
//! section 8.4). Backups are grouped as a full snapshot and the deltas that follow it, newest
//! full first, filtered by `--max-backups-to-copy` and `--max-backup-age` (days, on the full's
//! creation time); objects whose name (without `.final`) already exists in the destination are
//! skipped (encrypted or not); the bytes are streamed as they are (no recompression; with
//! recipients, decrypted and encrypted to them), `--max-parallel-copy-operations` at a time, and
//! each object becomes visible in the destination only once complete.

use crate::error::{Error, Result};
use crate::format::encryption::{self, SealWriter};
use crate::format::layout::{Kind, Snapshot};
use crate::format::streamio::ChannelReader;
use crate::store::{SnapStore, StoreConfig};
use chrono::Utc;
use futures::StreamExt;
use std::collections::HashSet;
use std::time::{Duration, Instant};

#[derive(Debug, Clone)]
pub(crate) struct CopyConfig {
    pub(crate) source: StoreConfig,
    pub(crate) dest: StoreConfig,
    /// Newest backups (full + its deltas) to copy; `None`: all.
    pub(crate) max_backups: Option<usize>,
    /// Only backups whose full is at most this many days old; `None`: any age.
    pub(crate) max_age_days: Option<i64>,
    pub(crate) parallel: usize,
    /// Wait for a final full snapshot in the source before copying (at most this long; `None`:
    /// no limit); `Some` only with `--wait-for-final-snapshot`.
    pub(crate) wait_for_final: Option<Option<Duration>>,
}

#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct CopyReport {
    pub(crate) copied: usize,
    pub(crate) skipped: usize,
    pub(crate) bytes: u64,
}

/// Groups a sorted list into backups (a full and its deltas), newest first.
pub(crate) fn backups(list: &[Snapshot]) -> Vec<Vec<Snapshot>> {
    let mut out: Vec<Vec<Snapshot>> = Vec::new();
    for s in list.iter().filter(|s| !s.is_chunk) {
        match s.kind {
            Kind::Full => out.push(vec![s.clone()]),
            Kind::Incr => {
                if let Some(b) = out.last_mut() {
                    b.push(s.clone());
                }
            }
        }
    }
    out.reverse();
    out
}

async fn wait_for_final(source: &SnapStore, timeout: Option<Duration>) -> Result<()> {
    let started = Instant::now();
    loop {
        let list = source.list().await?;
        let fulls: Vec<&Snapshot> = list.iter().filter(|s| s.kind == Kind::Full).collect();
        if fulls.iter().rev().take(4).any(|s| s.is_final) {
            tracing::info!("a final full snapshot is in the source");
            return Ok(());
        }
        if timeout.is_some_and(|t| started.elapsed() >= t) {
            return Err(Error::NoSnapshot(
                "no final full snapshot appeared in the source within --wait-for-final-snapshot-timeout".into(),
            ));
        }
        tracing::info!("waiting for a final full snapshot in the source (checking every 15s)");
        let left = timeout.map(|t| t.saturating_sub(started.elapsed()));
        let nap = left.map_or(Duration::from_secs(15), |l| l.min(Duration::from_secs(15)));
        tokio::time::sleep(nap).await;
    }
}

/// Streams one object from `source` to `dest` under its name without `.final`; with
/// recipients in the destination's keys, (re-)encrypted to them (`.age`), the compressed bytes
/// otherwise unchanged.
async fn copy_one(source: &SnapStore, dest: &SnapStore, s: &Snapshot) -> Result<u64> {
    let recipients = dest.keys().recipients.clone();
    let identities = source.keys().identities.clone();
    let key = source.key_of(s);
    if recipients.is_some() && s.encrypted && identities.is_none() {
        return Err(Error::config(format!(
            "{key} is encrypted: give its secret key with --encryption-identity-file to re-encrypt it for --encryption-recipients-file"
        )));
    }
    let mut target = s.clone();
    target.is_final = false;
    target.snap_name = s.name_without_final().to_string();
    target.prefix = String::new();
    target.snap_dir = String::new();
    if recipients.is_some() {
        target = target.with_encryption(true);
    }
    let size = source.size(s).await.unwrap_or(0);
    let mut stream = source.fetch(s).await?;
    let (sink, pending) = dest.begin_upload(&target, size).await?;
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    let encrypted = s.encrypted;
    let writer = tokio::task::spawn_blocking(move || -> Result<u64> {
        let raw = ChannelReader::new(rx);
        let mut reader: Box<dyn std::io::Read + Send> = match &recipients {
            Some(_) => encryption::open(&key, encrypted, identities.as_deref(), raw)?,
            None => Box::new(raw),
        };
        let io_err = |e| Error::io(&key, "copy", e);
        let mut sink = SealWriter::new(recipients.as_deref(), sink).map_err(io_err)?;
        let n = std::io::copy(&mut reader, &mut sink).map_err(io_err)?;
        sink.finish().map_err(io_err)?.close()?;
        Ok(n)
    });
    while let Some(chunk) = stream.next().await {
        let failed = chunk.is_err();
        if tx.send(chunk).await.is_err() || failed {
            break;
        }
    }
    drop(tx);
    let written = writer.await.map_err(|e| Error::task("copy worker", e))?;
    match written {
        Ok(n) => {
            dest.commit(pending, &target, &target).await?;
            // the proof travels with its full, after it (never a proof without its full); a
            // full without one is still a backup
            if s.kind == crate::format::layout::Kind::Full {
                let copied = match source.proof(s).await {
                    Ok(Some(mut p)) => {
                        p.snapshot = target.snap_name.clone();
                        dest.put_proof(&target, &p).await
                    }
                    other => other.map(|_| ()),
                };
                if let Err(e) = copied {
                    tracing::warn!(snapshot = %s.snap_name, error = %e, "the full was copied without its proof");
                }
            }
            Ok(n)
        }
        Err(e) => {
            pending.abort().await;
            Err(e)
        }
    }
}

pub(crate) async fn copy(cfg: &CopyConfig) -> Result<CopyReport> {
    if cfg.parallel == 0 {
        return Err(Error::config(
            "--max-parallel-copy-operations must be greater than 0",
        ));
    }
    let source = SnapStore::open(cfg.source.clone()).await?;
    let dest = SnapStore::open(cfg.dest.clone()).await?;
    if let Some(timeout) = cfg.wait_for_final {
        wait_for_final(&source, timeout).await?;
    }
    let existing: HashSet<String> = dest
        .list()
        .await?
        .iter()
        .map(|s| s.plain_name().to_string())
        .collect();
    let now = Utc::now();
    let mut chosen: Vec<Snapshot> = Vec::new();
    let all = backups(&source.list().await?);
    if all.is_empty() {
        tracing::warn!(source = %source.describe(), "the source holds no backups: check the --source-* flags (prefix and provider default to the destination's)");
    }
    for (i, b) in all.into_iter().enumerate() {
        if cfg.max_backups.is_some_and(|m| i >= m) {
            break;
        }
        if cfg
            .max_age_days
            .is_some_and(|d| (now - b[0].created_on).num_days() > d)
        {
            continue;
        }
        chosen.extend(b);
    }
    let mut report = CopyReport::default();
    let todo: Vec<Snapshot> = chosen
        .into_iter()
        .filter(|s| {
            let skip = existing.contains(s.plain_name());
            if skip {
                report.skipped += 1;
            }
            !skip
        })
        .collect();
    tracing::info!(
        to_copy = todo.len(),
        skipped = report.skipped,
        "copying backups"
    );
    let mut results = futures::stream::iter(todo.iter())
        .map(|s| {
            let (source, dest) = (&source, &dest);
            async move { (s, copy_one(source, dest, s).await) }
        })
        .buffer_unordered(cfg.parallel);
    let mut first_err = None;
    while let Some((s, r)) = results.next().await {
        match r {
            Ok(n) => {
                report.copied += 1;
                report.bytes += n;
                tracing::info!(object = %s.snap_name, bytes = n, "copied");
            }
            Err(e) => {
                tracing::error!(object = %s.snap_name, error = %e, "copy failed");
                first_err.get_or_insert(e);
            }
        }
    }
    match first_err {
        Some(e) => Err(e),
        None => Ok(report),
    }
}
