//! Full snapshots, streamed end to end: etcd's `Maintenance.Snapshot` stream -> SHA-256 check
//! of the trailer as the bytes flow -> compression -> encryption (when the store's keys have
//! recipients) -> store upload. The object becomes visible
//! only after the whole stream arrived and its hash matched (see [`crate::store`]).
//!
//! The object content is what etcdbrctl stores: the db bytes followed by etcd's 32-byte SHA-256
//! trailer, compressed as a whole.
//!
//! Revision in the name: etcd's snapshot carries no revision, and a revision read from a
//! separate call is not atomic with it (etcdbrctl bug #1044). We read the revision with a
//! linearizable Get *before* opening the stream (`before`) and with a serializable Get on the
//! same member *after* the first chunk arrived (`after`). etcd opens the snapshot's read
//! transaction before it sends the first chunk, so `before <= data revision <= after`. The exact
//! value is read from the streamed pages ([`crate::snapshot::revision`]) and accepted within those bounds;
//! otherwise the name keeps `before`, never higher than the data.

use crate::error::{Error, Result};
use crate::etcd::leader::Fence;
use crate::etcd::{self, EtcdConfig};
use crate::format::codec::Compression;
use crate::format::encryption::SealWriter;
use crate::format::layout::{Kind, Snapshot};
use crate::format::proof::Proof;
use crate::format::trailer::{TrailerHasher, TRAILER};
use crate::snapshot::revision::RevisionScanner;
use crate::store::SnapStore;
use etcd_client::{Client, GetOptions};
use std::io::Write;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

/// Records etcd's own keyspace hash at the stored full's revision next to it ([`Proof`]), from
/// the member that streamed it. Best effort: a full without a proof is still a backup (a
/// compaction past its revision meanwhile, an old member), and the log says why.
async fn record_proof(
    client: &mut Client,
    endpoint: &str,
    timeout: Duration,
    store: &SnapStore,
    stored: &Snapshot,
) {
    let revision = stored.last_revision;
    let answer = etcd::call(
        endpoint,
        "HashKV at the snapshot's revision",
        timeout,
        client.hash_kv(revision),
    )
    .await;
    let proof = match answer {
        Ok(r) => Proof {
            snapshot: stored.snap_name.clone(),
            revision,
            compact_revision: r.compact_version(),
            hash: r.hash(),
            member_id: r
                .header()
                .map(|h| format!("{:x}", h.member_id()))
                .unwrap_or_default(),
            cluster_id: r
                .header()
                .map(|h| format!("{:x}", h.cluster_id()))
                .unwrap_or_default(),
        },
        Err(e) => {
            tracing::warn!(snapshot = %stored.snap_name, revision, error = %e, "no proof recorded for this full snapshot: etcd did not give its keyspace hash at the snapshot's revision");
            return;
        }
    };
    match store.put_proof(stored, &proof).await {
        Ok(()) => tracing::info!(
            snapshot = %stored.snap_name,
            revision,
            compact_revision = proof.compact_revision,
            hash = format!("{:08x}", proof.hash),
            "recorded etcd's keyspace hash with the full snapshot"
        ),
        Err(e) => {
            tracing::warn!(snapshot = %stored.snap_name, error = %e, "no proof recorded for this full snapshot")
        }
    }
}

/// What a full snapshot produced.
#[derive(Debug, Clone)]
pub(crate) struct FullSnapshotReport {
    pub(crate) snapshot: Snapshot,
    pub(crate) key: String,
    /// Whether the name's revision is known to equal the data's (see the module doc).
    pub(crate) revision_exact: bool,
    pub(crate) elapsed: Duration,
}

async fn revision(
    client: &mut Client,
    endpoint: &str,
    timeout: Duration,
    serializable: bool,
) -> Result<i64> {
    let mut opts = GetOptions::new().with_keys_only().with_limit(1);
    if serializable {
        opts = opts.with_serializable();
    }
    let resp = etcd::call(
        endpoint,
        "read the current revision",
        timeout,
        client.get(vec![0u8], Some(opts)),
    )
    .await?;
    resp.header()
        .map(|h| h.revision())
        .ok_or_else(|| Error::etcd_protocol(endpoint, "response without a header"))
}

/// Takes one full snapshot from `cfg.primary()` into `store`.
pub(crate) async fn take(
    client: &mut Client,
    cfg: &EtcdConfig,
    store: &SnapStore,
    codec: Compression,
    is_final: bool,
    fence: Fence,
) -> Result<FullSnapshotReport> {
    let started = Instant::now();
    let endpoint = cfg.primary().to_string();
    let timeout = cfg.connection_timeout;
    let status = etcd::call(&endpoint, "status", timeout, client.status()).await?;
    if status.leader() == 0 {
        return Err(Error::Cluster(format!(
            "etcd {endpoint} has no leader (lost quorum?): refusing to take a snapshot that may be stale"
        )));
    }
    let before = revision(client, &endpoint, timeout, false).await?;

    let deadline = tokio::time::Instant::now() + cfg.snapshot_timeout;
    let mut stream = etcd::call_until(
        &endpoint,
        "start the snapshot stream",
        deadline,
        client.snapshot(),
    )
    .await?;
    let first = etcd::call_until(&endpoint, "snapshot stream", deadline, stream.message())
        .await?
        .ok_or_else(|| {
            Error::integrity(
                "snapshot stream",
                "etcd closed the snapshot stream without sending data",
            )
        })?;
    let after = revision(client, &endpoint, timeout, true).await?;
    let db_size = first.remaining_bytes() + first.blob().len() as u64;

    let snap = Snapshot::new(Kind::Full, 0, before, codec.suffix(), is_final)
        .with_encryption(store.keys().encrypts());
    let (sink, pending) = store.begin_upload(&snap, db_size).await?;
    let recipients = store.keys().recipients.clone();
    let object = pending.key().to_string();
    tracing::info!(object, db_size, revision = before, "taking a full snapshot");

    // The compression and hashing thread: bounded channel, so memory stays constant.
    let (tx, mut rx) = mpsc::channel::<Vec<u8>>(64);
    let obj2 = object.clone();
    let worker = tokio::task::spawn_blocking(move || -> Result<(u64, Option<i64>)> {
        let mut hasher = TrailerHasher::default();
        let mut scanner = RevisionScanner::new(before, db_size);
        let io_err = |e: std::io::Error| Error::io(&obj2, "compress/write", e);
        let sealed = SealWriter::new(recipients.as_deref(), sink).map_err(io_err)?;
        let mut enc = codec.encoder(sealed).map_err(io_err)?;
        while let Some(blob) = rx.blocking_recv() {
            hasher.update(&blob);
            scanner.update(&blob);
            enc.write_all(&blob).map_err(io_err)?;
        }
        let total = hasher.total();
        hasher.verify(&obj2)?;
        let db_bytes = total - TRAILER as u64;
        if db_bytes != db_size {
            return Err(Error::integrity(
                &obj2,
                format!("etcd announced {db_size} bytes but sent {db_bytes}"),
            ));
        }
        enc.finish()
            .and_then(SealWriter::finish)
            .map_err(io_err)?
            .close()?;
        Ok((db_bytes, scanner.finish()))
    });

    let recv_result: Result<()> = async {
        let mut msg = Some(first);
        while let Some(m) = msg {
            let mut m = m;
            let blob = std::mem::take(&mut m.0.blob);
            if tx.send(blob).await.is_err() {
                // the worker failed; its error is reported below
                return Ok(());
            }
            msg =
                etcd::call_until(&endpoint, "snapshot stream", deadline, stream.message()).await?;
        }
        Ok(())
    }
    .await;
    drop(tx);
    let worker_result = worker
        .await
        .map_err(|e| Error::task("snapshot worker", e))?;
    let (db_bytes, scanned) = match (recv_result, worker_result) {
        (Ok(()), Ok(r)) => r,
        (Err(e), _) | (Ok(()), Err(e)) => {
            pending.abort().await;
            tracing::warn!(object, error = %e, "full snapshot failed; nothing was stored");
            return Err(e);
        }
    };
    // The exact revision: read from the data itself, checked against the bounds.
    let (revision, revision_exact) = match scanned {
        Some(r) if (before..=after).contains(&r) => (r, true),
        _ if before == after => (before, true),
        other => {
            tracing::warn!(before, after, scanned = ?other, "could not read the snapshot's revision; naming it with the lower bound");
            (before, false)
        }
    };
    let wanted = Snapshot::new_at(
        Kind::Full,
        0,
        revision,
        codec.suffix(),
        is_final,
        snap.created_on,
    )
    .with_encryption(snap.encrypted);
    if let Err(e) = fence.check(client, &endpoint, "full snapshot").await {
        pending.abort().await;
        return Err(e);
    }
    let stored = store.commit(pending, &snap, &wanted).await?;
    if revision_exact && stored.last_revision == revision {
        record_proof(client, &endpoint, cfg.snapshot_timeout, store, &stored).await;
    }
    let report = FullSnapshotReport {
        key: store.key_of(&stored),
        revision_exact: revision_exact && stored.last_revision == revision,
        snapshot: stored,
        elapsed: started.elapsed(),
    };
    tracing::info!(
        object = report.key,
        revision = report.snapshot.last_revision,
        revision_exact = report.revision_exact,
        lower_bound = before,
        upper_bound = after,
        db_bytes,
        secs = format!("{:.2}", report.elapsed.as_secs_f64()),
        "full snapshot stored"
    );
    Ok(report)
}
