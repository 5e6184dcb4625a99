//! The `compact` command: restore the latest snapshot set into a temporary data dir, compact
//! etcd at its revision, defragment it, and upload the result as one new full snapshot, so that
//! a long chain of deltas collapses into a single, quick-to-restore base (etcdbrctl section 8.3).
//! The new full is named after the set's revision, keeps the base's `.final` flag and uses the
//! compression of the newest snapshot of the set.

use crate::error::{Error, Result};
use crate::etcd::leader::Fence;
use crate::etcd::EtcdConfig;
use crate::format::codec::Codec;
use crate::format::layout::SnapshotSet;
use crate::restore::replay::TempEtcd;
use crate::restore::{self, RestoreConfig, Target};
use crate::snapshot::full::{self, FullSnapshotReport};
use crate::store::SnapStore;
use std::time::Duration;

#[derive(Debug, Clone)]
pub(crate) struct CompactConfig {
    pub(crate) restore: RestoreConfig,
    pub(crate) defragment: bool,
    pub(crate) snapshot_timeout: Duration,
    pub(crate) defrag_timeout: Duration,
}

pub(crate) async fn compact(cfg: &CompactConfig) -> Result<FullSnapshotReport> {
    let store = SnapStore::open(cfg.restore.store.clone()).await?;
    let (set, _) = restore::plan::select(&store.list().await?, &Target::Latest)?;
    let newest = set
        .deltas
        .last()
        .or(set.full.as_ref())
        .ok_or_else(|| Error::NoSnapshot("the store holds no full snapshot".into()))?;
    if !store.keys().encrypts() {
        if let Some(e) = set.encrypted().next() {
            return Err(Error::config(format!(
                "{} is encrypted: give --encryption-recipients-file so that the compacted full is encrypted too (compact never writes an encrypted backup out in plain)",
                e.snap_name
            )));
        }
    }
    let codec = Codec::from_suffix(&newest.compression_suffix)
        .map_err(|e| Error::integrity(&newest.snap_name, e))?;
    let is_final = set.full.as_ref().is_some_and(|f| f.is_final);
    std::fs::create_dir_all(&cfg.restore.temp_dir)
        .map_err(|e| Error::io(&cfg.restore.temp_dir, "create the temp dir", e))?;
    let tmp = tempfile::Builder::new()
        .prefix("etcdbr-compact-")
        .tempdir_in(&cfg.restore.temp_dir)
        .map_err(|e| Error::io(&cfg.restore.temp_dir, "create a temp dir", e))?;
    let mut rcfg = cfg.restore.clone();
    rcfg.data_dir = tmp.path().join("data");
    rcfg.temp_dir = tmp.path().join("restore");
    rcfg.target = Target::Latest;
    let report = restore::restore(&rcfg).await?;
    let etcd = TempEtcd::start(
        &restore::temp_etcd_config(&rcfg, tmp.path().join("etcd.log"))?,
        &rcfg.data_dir,
    )
    .await?;
    let result = compact_and_save(cfg, &store, &etcd, &set, report.revision, codec, is_final).await;
    let stopped = etcd.stop().await;
    let r = result?;
    stopped?;
    Ok(r)
}

async fn compact_and_save(
    cfg: &CompactConfig,
    store: &SnapStore,
    etcd: &TempEtcd,
    set: &SnapshotSet,
    revision: i64,
    codec: Codec,
    is_final: bool,
) -> Result<FullSnapshotReport> {
    let ecfg = EtcdConfig {
        snapshot_timeout: cfg.snapshot_timeout.max(Duration::from_secs(30)),
        defrag_timeout: cfg.defrag_timeout,
        ..EtcdConfig::plain(etcd.endpoint.clone(), Duration::from_secs(30))
    };
    let ep = etcd.endpoint.clone();
    let mut c = crate::etcd::connect_one(&ecfg, &ep).await?;
    let opts = etcd_client::CompactionOptions::new().with_physical();
    match crate::etcd::call(
        &ep,
        "compact",
        Duration::from_secs(120),
        c.compact(revision, Some(opts)),
    )
    .await
    {
        Ok(_) => tracing::info!(revision, "compacted"),
        Err(e) if e.to_string().contains("compacted") => {
            tracing::warn!(revision, "already compacted at this revision")
        }
        Err(e) => return Err(e),
    }
    if cfg.defragment {
        crate::etcd::call(&ep, "defragment", cfg.defrag_timeout, c.defragment()).await?;
        tracing::info!("defragmented");
    }
    let r = full::take(&mut c, &ecfg, store, codec.into(), is_final, Fence::None).await?;
    tracing::info!(
        object = r.key,
        replaces = set.deltas.len() + 1,
        "compacted snapshot stored"
    );
    Ok(r)
}
