//! `etcdbrctl compact`: the latest snapshot set restored, compacted, defragmented and stored
//! as one new full snapshot.

use super::options::{
    duration, go_bool, EncryptArgs, K8sLeaseArgs, RestorationArgs, SnapstoreArgs,
};
use crate::error::{Error, Result};
use crate::restore::Target;
use crate::snapshot::compact::{compact, CompactConfig};
use clap::{ArgAction, Args};
use std::time::Duration;

/// Compact the latest snapshot set into one full snapshot.
#[derive(Debug, Args)]
pub(crate) struct CompactCmd {
    #[command(flatten)]
    pub(crate) store: SnapstoreArgs,
    #[command(flatten)]
    pub(crate) restoration: RestorationArgs,
    /// the compacted full is encrypted to these (unset: stored plain)
    #[command(flatten)]
    pub(crate) encryption: EncryptArgs,
    /// defragment the compacted etcd before the snapshot
    #[arg(long = "defragment", default_value = "true", value_parser = go_bool, action = ArgAction::Set,
          num_args = 0..=1, default_missing_value = "true", env = "ETCDBR_DEFRAGMENT")]
    pub(crate) defragment: bool,
    /// timeout of the full snapshot of the compacted etcd
    #[arg(long = "etcd-snapshot-timeout", default_value = "30m", value_parser = duration, env = "ETCDBR_ETCD_SNAPSHOT_TIMEOUT")]
    pub(crate) snapshot_timeout: Duration,
    /// timeout of the defragmentation
    #[arg(long = "etcd-defrag-timeout", default_value = "8m", value_parser = duration, env = "ETCDBR_ETCD_DEFRAG_TIMEOUT")]
    pub(crate) defrag_timeout: Duration,
    /// wait this long after the compaction (for a metrics scrape; accepted for compatibility)
    #[arg(long = "metrics-scrape-wait-duration", default_value = "0s", value_parser = duration, env = "ETCDBR_METRICS_SCRAPE_WAIT_DURATION")]
    pub(crate) metrics_scrape_wait: Duration,
    #[command(flatten)]
    pub(crate) k8s: K8sLeaseArgs,
}

impl CompactCmd {
    pub(crate) async fn run(self) -> Result<()> {
        let cfg = CompactConfig {
            restore: self
                .restoration
                .restore_config(self.encryption.apply((&self.store).try_into()?)?)?,
            defragment: self.defragment,
            snapshot_timeout: self.snapshot_timeout,
            defrag_timeout: self.defrag_timeout,
        };
        if cfg.restore.bump_revision != 0 {
            return Err(Error::config(
                "compact stores a snapshot: --bump-revision and --mark-compacted apply when restoring it",
            ));
        }
        if cfg.restore.target != Target::Latest {
            return Err(Error::config(
                "compact always compacts the latest set: --to-revision, --to-time and --snapshot do not apply",
            ));
        }
        let r = compact(&cfg).await?;
        println!("{}", r.key);
        if !self.metrics_scrape_wait.is_zero() {
            tokio::time::sleep(self.metrics_scrape_wait).await;
        }
        Ok(())
    }
}
