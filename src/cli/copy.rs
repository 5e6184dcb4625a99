//! `etcdbrctl copy`: backups from a source store into the destination store.

use super::options::{duration, go_bool, DecryptArgs, EncryptArgs, SnapstoreArgs};
use crate::error::{Error, Result};
use crate::store::copy::{copy, CopyConfig};
use crate::store::{Provider, StoreConfig};
use clap::{ArgAction, Args};
use std::path::PathBuf;
use std::time::Duration;

/// Copy backups between stores.
#[derive(Debug, Args)]
pub(crate) struct CopyCmd {
    /// destination store
    #[command(flatten)]
    pub(crate) store: SnapstoreArgs,
    #[command(flatten)]
    pub(crate) source: SourceStoreArgs,
    /// every copied object is (re-)encrypted to these; unset: bytes are copied as they are
    #[command(flatten)]
    pub(crate) encryption: EncryptArgs,
    /// decrypts encrypted source objects to re-encrypt them (needed with recipients only)
    #[command(flatten)]
    pub(crate) decryption: DecryptArgs,
    /// newest backups (a full and its deltas) to copy; -1 copies all
    #[arg(long = "max-backups-to-copy", default_value_t = -1, allow_negative_numbers = true, env = "ETCDBR_MAX_BACKUPS_TO_COPY")]
    pub(crate) max_backups_to_copy: i64,
    /// only backups whose full snapshot is at most this many days old; -1: any age
    #[arg(long = "max-backup-age", default_value_t = -1, allow_negative_numbers = true, env = "ETCDBR_MAX_BACKUP_AGE")]
    pub(crate) max_backup_age: i64,
    /// objects copied in parallel
    #[arg(
        long = "max-parallel-copy-operations",
        default_value_t = 10,
        env = "ETCDBR_MAX_PARALLEL_COPY_OPERATIONS"
    )]
    pub(crate) max_parallel_copy_operations: usize,
    /// wait for a final full snapshot in the source before copying
    #[arg(long = "wait-for-final-snapshot", default_value = "false", value_parser = go_bool, action = ArgAction::Set,
          num_args = 0..=1, default_missing_value = "true", env = "ETCDBR_WAIT_FOR_FINAL_SNAPSHOT")]
    pub(crate) wait_for_final_snapshot: bool,
    /// how long to wait for the final full snapshot; 0 waits forever
    #[arg(long = "wait-for-final-snapshot-timeout", default_value = "0s", value_parser = duration, env = "ETCDBR_WAIT_FOR_FINAL_SNAPSHOT_TIMEOUT")]
    pub(crate) wait_for_final_snapshot_timeout: Duration,
}

/// The source store of `copy` (etcdbrctl's `source-` flags); empty values default to the
/// destination's. Credentials come from the `SOURCE_`-prefixed variables.
#[derive(Debug, Args, Clone)]
pub(crate) struct SourceStoreArgs {
    /// source snapshot storage provider (default: the destination's)
    #[arg(
        long = "source-storage-provider",
        default_value = "",
        env = "ETCDBR_SOURCE_STORAGE_PROVIDER",
        hide_default_value = true
    )]
    pub(crate) source_provider: String,
    /// source container (bucket); for Local, a directory
    #[arg(
        long = "source-store-container",
        default_value = "",
        env = "SOURCE_STORAGE_CONTAINER",
        hide_default_value = true
    )]
    pub(crate) source_container: String,
    /// source object store endpoint override
    #[arg(
        long = "source-store-endpoint-override",
        default_value = "",
        env = "ETCDBR_SOURCE_STORE_ENDPOINT_OVERRIDE",
        hide_default_value = true
    )]
    pub(crate) source_endpoint_override: String,
    /// source prefix (default: the destination's)
    #[arg(
        long = "source-store-prefix",
        default_value = "",
        env = "ETCDBR_SOURCE_STORE_PREFIX",
        hide_default_value = true
    )]
    pub(crate) source_prefix: String,
    /// source temporary directory (accepted for compatibility)
    #[arg(
        long = "source-snapstore-temp-directory",
        default_value = "",
        env = "ETCDBR_SOURCE_SNAPSTORE_TEMP_DIRECTORY",
        hide_default_value = true
    )]
    pub(crate) source_temp_dir: String,
    /// accepted for compatibility
    #[arg(
        long = "source-max-parallel-chunk-uploads",
        default_value_t = 5,
        env = "ETCDBR_SOURCE_MAX_PARALLEL_CHUNK_UPLOADS"
    )]
    pub(crate) source_max_parallel_chunk_uploads: usize,
    /// accepted for compatibility
    #[arg(
        long = "source-min-chunk-size",
        default_value_t = 5242880,
        env = "ETCDBR_SOURCE_MIN_CHUNK_SIZE"
    )]
    pub(crate) source_min_chunk_size: usize,
}

impl SourceStoreArgs {
    /// The source store: what is not given is the destination's.
    pub(crate) fn store_config(&self, dest: &StoreConfig) -> Result<StoreConfig> {
        let provider: Provider = if self.source_provider.is_empty() {
            dest.provider
        } else {
            self.source_provider
                .parse()
                .map_err(|e: String| Error::config(format!("--source-storage-provider: {e}")))?
        };
        let c = StoreConfig {
            provider,
            container: self.source_container.clone(),
            endpoint_override: self.source_endpoint_override.clone(),
            prefix: if self.source_prefix.is_empty() {
                dest.prefix.clone()
            } else {
                self.source_prefix.clone()
            },
            max_parallel_chunk_uploads: self.source_max_parallel_chunk_uploads,
            min_chunk_size: self.source_min_chunk_size,
            temp_dir: if self.source_temp_dir.is_empty() {
                dest.temp_dir.clone()
            } else {
                PathBuf::from(&self.source_temp_dir)
            },
            env_prefix: "SOURCE_".into(),
            credentials: None,
            keys: Default::default(),
        };
        c.validate()
            .map_err(|e| Error::config(format!("source store: {e}")))?;
        Ok(c)
    }
}

impl CopyCmd {
    pub(crate) async fn run(self) -> Result<()> {
        let dest = self.encryption.apply(StoreConfig::try_from(&self.store)?)?;
        let cfg = CopyConfig {
            source: self.decryption.apply(self.source.store_config(&dest)?)?,
            dest,
            max_backups: (self.max_backups_to_copy >= 0)
                .then_some(self.max_backups_to_copy as usize),
            max_age_days: (self.max_backup_age >= 0).then_some(self.max_backup_age),
            parallel: self.max_parallel_copy_operations,
            wait_for_final: self.wait_for_final_snapshot.then_some(
                (!self.wait_for_final_snapshot_timeout.is_zero())
                    .then_some(self.wait_for_final_snapshot_timeout),
            ),
        };
        let r = copy(&cfg).await?;
        println!(
            "copied {} objects ({} bytes), skipped {} already in the destination",
            r.copied, r.bytes, r.skipped
        );
        Ok(())
    }
}
