//! `etcdbrctl verify --restore`: the restore drill by hand (module [`crate::verify`]).

use super::options::{EtcdConnectionArgs, RestorationArgs, SnapstoreArgs};
use crate::error::{Error, Result};
use crate::etcd::EtcdConfig;
use crate::store::StoreConfig;
use crate::verify::{drill, DrillConfig, Verdict};
use clap::Args;

/// Prove the backups restore into the cluster's data.
#[derive(Debug, Args)]
pub(crate) struct VerifyCmd {
    /// Restore the latest snapshot set into a temporary directory (below
    /// --restoration-temp-snapshots-dir), check it, compare its keyspace with etcd's HashKV at
    /// its revision (or with the hash recorded with the full), and remove it.
    #[arg(long = "restore", env = "ETCDBR_VERIFY_RESTORE")]
    pub(crate) restore: bool,
    /// The cluster whose HashKV the restored keyspace is compared with.
    #[command(flatten)]
    pub(crate) etcd: EtcdConnectionArgs,
    #[command(flatten)]
    pub(crate) store: SnapstoreArgs,
    #[command(flatten)]
    pub(crate) restoration: RestorationArgs,
}

impl VerifyCmd {
    pub(crate) async fn run(self) -> Result<()> {
        if !self.restore {
            return Err(Error::config(
                "verify needs --restore (the drill); to check one stored snapshot against the hash recorded with it, use `snapshot verify NAME`",
            ));
        }
        let cfg = DrillConfig {
            restore: self
                .restoration
                .restore_config(StoreConfig::try_from(&self.store)?)?,
            etcd: Some(EtcdConfig::try_from(&self.etcd)?),
        };
        let r = drill(&cfg).await?;
        println!(
            "drill: restored {} and {} deltas to revision {} in {:.1}s",
            r.full,
            r.deltas,
            r.revision,
            r.elapsed.as_secs_f64()
        );
        match &r.verdict {
            Verdict::Equal {
                source,
                compact_revision,
            } => {
                println!(
                    "keyspace hash: {:08x}, equal to etcd's HashKV at revision {} from {source} (compacted at {compact_revision})",
                    r.hash, r.revision
                );
                Ok(())
            }
            Verdict::Unproven(why) => Err(Error::Cluster(format!(
                "the latest set restores to revision {} (keyspace hash {:08x}), but nothing could prove it equal to the cluster's: {why}; run the drill while the cluster still has that revision (before its next compaction)",
                r.revision, r.hash
            ))),
            Verdict::Differs { .. } => Err(Error::integrity(r.full.clone(), r.describe())),
        }
    }
}
