//! `etcdbrctl snapshot`: the scheduled snapshot job (a full at once, then on the cron schedule,
//! deltas in between), and its actions: `save` (one full), `status`, `verify`, `ls`, `get`.

use super::inspect::{GetCmd, HashkvCmd, LsCmd, StatusCmd, VerifyArgs};
use super::options::{CompressionArgs, EncryptArgs, EtcdConnectionArgs, JobArgs, SnapstoreArgs};
use super::PrintKeys;
use crate::error::Result;
use crate::snapshot::job;
use clap::{Args, Subcommand};
use std::sync::Arc;

#[derive(Debug, Args)]
pub(crate) struct SnapshotCmd {
    #[command(subcommand)]
    pub(crate) action: Option<SnapshotAction>,
    #[command(flatten)]
    pub(crate) job: JobArgs,
}

#[derive(Debug, Subcommand)]
pub(crate) enum SnapshotAction {
    /// Take one full snapshot into the store, print the object's name and exit.
    Save(Box<SaveCmd>),
    /// Hash, revision, total keys and size of a snapshot, as `etcdctl snapshot status` prints
    /// them (without etcd, and without hanging on a running etcd's db); the effective revision
    /// and the sha256 trailer on stderr.
    Status(StatusCmd),
    /// Check a snapshot: its sha256 trailer, the structure of every page (bbolt's
    /// `tx.Check`), and its keyspace against etcd's HashKV recorded with a stored full (or
    /// given with --proof). Exits non-zero, naming each problem, if it is damaged or differs.
    Verify(VerifyArgs),
    /// etcd's keyspace hash (HashKV) of a snapshot, computed without etcd: compare it with
    /// `etcdctl endpoint hashkv --rev R` of a member.
    Hashkv(HashkvCmd),
    /// List the keys of a snapshot at its revision (or an older one still in its history).
    Ls(LsCmd),
    /// Print one key of a snapshot.
    Get(GetCmd),
}

#[derive(Debug, Args)]
pub(crate) struct SaveCmd {
    #[command(flatten)]
    pub(crate) etcd: EtcdConnectionArgs,
    #[command(flatten)]
    pub(crate) store: SnapstoreArgs,
    #[command(flatten)]
    pub(crate) compression: CompressionArgs,
    #[command(flatten)]
    pub(crate) encryption: EncryptArgs,
    /// Mark the snapshot as final (name ends in .final), e.g. before deleting a cluster.
    #[arg(long = "final", default_value_t = false, env = "ETCDBR_FINAL")]
    pub(crate) is_final: bool,
}

impl SnapshotCmd {
    pub(crate) async fn run(self) -> Result<()> {
        match self.action {
            Some(SnapshotAction::Save(c)) => c.run().await,
            Some(SnapshotAction::Status(c)) => c.run().await,
            Some(SnapshotAction::Verify(c)) => c.run().await,
            Some(SnapshotAction::Hashkv(c)) => c.run().await,
            Some(SnapshotAction::Ls(c)) => c.run().await,
            Some(SnapshotAction::Get(c)) => c.run().await,
            None => run_scheduled(&self.job).await,
        }
    }
}

impl SaveCmd {
    async fn run(self) -> Result<()> {
        let etcd = (&self.etcd).try_into()?;
        let store = self.encryption.apply((&self.store).try_into()?)?;
        let compression = (&self.compression).try_into()?;
        let report = job::save_once(&etcd, store, compression, self.is_final).await?;
        println!("{}", report.key);
        Ok(())
    }
}

async fn run_scheduled(args: &JobArgs) -> Result<()> {
    let (job, defrag_schedule) = args.job()?;
    tracing::info!(
        endpoint = job.etcd.primary(),
        provider = job.store.provider.as_str(),
        compression = job.compression.policy_name(),
        schedule = %args.snapshotter.schedule,
        "starting the snapshot job"
    );
    let shutdown = super::shutdown_signal();
    let defrag = tokio::spawn(crate::etcd::defrag::run_scheduled(
        job.etcd.clone(),
        defrag_schedule,
        || true,
        shutdown.clone(),
    ));
    let r = job::run_scheduled(job, shutdown, Arc::new(PrintKeys)).await;
    defrag.abort();
    r
}
