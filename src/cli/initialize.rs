//! `etcdbrctl initialize`: validate the data directory and restore the latest snapshot set in
//! its place when validation condemns it (what the sidecar's `/initialization/start` does).

use super::options::{EtcdConnectionArgs, RestorationArgs, SnapstoreArgs};
use crate::error::{Error, Result};
use crate::etcd::EtcdConfig;
use crate::initialize::validate::Mode;
use crate::initialize::InitConfig;
use clap::Args;

/// Validate the data directory, restore it if it is missing or bad.
#[derive(Debug, Args)]
pub(crate) struct InitializeCmd {
    /// In a multi-member cluster: how to reach the other members (--service-endpoints, else
    /// --endpoints).
    #[command(flatten)]
    pub(crate) etcd: EtcdConnectionArgs,
    #[command(flatten)]
    pub(crate) store: SnapstoreArgs,
    #[command(flatten)]
    pub(crate) restoration: RestorationArgs,
    /// validation mode: full (after a crash) or sanity (after a clean shutdown)
    #[arg(
        long = "validation-mode",
        default_value = "full",
        env = "ETCDBR_VALIDATION_MODE"
    )]
    pub(crate) validation_mode: String,
}

impl InitializeCmd {
    pub(crate) async fn run(self) -> Result<()> {
        let mode = self
            .validation_mode
            .parse()
            .map_err(|e: String| Error::config(format!("--validation-mode: {e}")))?;
        let cfg = self.init_config(mode)?;
        let (outcome, action) = crate::initialize::initialize(&cfg).await?;
        println!("validation: {outcome}; action: {action:?}");
        Ok(())
    }

    /// The initializer's configuration.
    pub(crate) fn init_config(&self, mode: Mode) -> Result<InitConfig> {
        let mut cluster = EtcdConfig::try_from(&self.etcd)?;
        if !cluster.service_endpoints.is_empty() {
            cluster.endpoints = cluster.service_endpoints.clone();
        }
        self.restoration
            .init_config(self.store.optional()?, &self.store, mode, Some(cluster))
    }
}
