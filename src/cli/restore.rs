//! `etcdbrctl restore`: the latest snapshot set (or the one a target names) into a new data
//! directory, with the figures an operator wants on stdout.

use super::options::{RestorationArgs, SnapstoreArgs};
use crate::error::Result;
use clap::Args;

/// Restore an etcd data directory from the store.
#[derive(Debug, Args)]
pub(crate) struct RestoreCmd {
    #[command(flatten)]
    pub(crate) store: SnapstoreArgs,
    #[command(flatten)]
    pub(crate) restoration: RestorationArgs,
}

impl RestoreCmd {
    pub(crate) async fn run(self) -> Result<()> {
        let cfg = self.restoration.restore_config((&self.store).try_into()?)?;
        let report = crate::restore::restore(&cfg).await?;
        let replay = report.replay_elapsed.as_secs_f64();
        println!(
            "restored {} to revision {} ({} deltas, {} revisions replayed) in {:.1}s: base {:.1}s, replay {:.1}s ({:.0} revisions/s), etcdbrctl peak RSS {} MiB",
            cfg.data_dir.display(),
            report.revision,
            report.deltas_applied,
            report.revisions_replayed,
            report.elapsed.as_secs_f64(),
            report.elapsed.as_secs_f64() - replay,
            replay,
            report.revisions_replayed as f64 / replay.max(0.001),
            peak_rss_kib() / 1024
        );
        Ok(())
    }
}

/// This process's peak memory (without the tools and the temporary etcd it ran), 0 if unknown.
fn peak_rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1).map(str::to_string))
        })
        .and_then(|k| k.parse::<u64>().ok())
        .unwrap_or(0)
}
