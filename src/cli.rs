//! The `etcdbrctl` command line: etcdbrctl's sub-commands and flags, same names and defaults.
//! Every flag can also be set from an environment variable (`ETCDBR_<FLAG_NAME>`, shown in
//! `--help`); the store container also reads etcdbrctl's `STORAGE_CONTAINER`.

use crate::duration::parse_go_duration;
use crate::error::{Error, Result};
use crate::etcd::EtcdConfig;
use crate::format::codec::{Codec, Compression};
use crate::schedule::Schedule;
use crate::snapshot::delta::DeltaConfig;
use crate::snapshot::gc::{GcConfig, Policy};
use crate::snapshot::job::{self, Backoff, SnapshotJob};
use crate::store::{Provider, StoreConfig};
use clap::{ArgAction, Args, Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

fn go_bool(s: &str) -> Result<bool, String> {
    match s {
        "1" | "t" | "T" | "TRUE" | "true" | "True" => Ok(true),
        "0" | "f" | "F" | "FALSE" | "false" | "False" => Ok(false),
        _ => Err(format!("invalid boolean {s:?} (use true or false)")),
    }
}

fn duration(s: &str) -> Result<Duration, String> {
    parse_go_duration(s)
}

#[derive(Debug, Parser)]
#[command(
    name = "etcdbrctl",
    about = "Command line utility for etcd backup restore",
    long_about = "etcdbrctl (etcdbr): takes full and delta snapshots of etcd into an object store, \
                  garbage-collects them, and restores an etcd data directory from them. \
                  A drop-in replacement for gardener's etcd-backup-restore.",
    disable_version_flag = true
)]
pub struct Cli {
    /// Print version information and exit.
    #[arg(short = 'v', long = "version", global = false)]
    pub version: bool,

    /// Log level (logrus numbers: 0 panic .. 4 info .. 6 trace). RUST_LOG overrides it.
    #[arg(
        long = "log-level",
        default_value_t = 4,
        env = "ETCDBR_LOG_LEVEL",
        global = true
    )]
    pub log_level: u8,

    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Take full snapshots of etcd on a schedule (the first one immediately).
    #[command(args_conflicts_with_subcommands = true)]
    Snapshot(Box<SnapshotCmd>),
    /// Run the sidecar: HTTP API, and on the etcd leader's sidecar full and delta snapshots,
    /// garbage collection and defragmentation.
    Server(Box<ServerCmd>),
    /// Restore an etcd data directory from the latest snapshot set (full + deltas) in the store.
    Restore(Box<RestoreCmd>),
    /// Restore the latest snapshot set, compact and defragment it, and store it as one new full.
    Compact(Box<CompactCmd>),
    /// Validate the etcd data directory and, if it is missing or bad, restore the latest
    /// snapshot set in its place (what the sidecar's /initialization/start does).
    Initialize(Box<InitializeCmd>),
    /// Copy backups from a source store to the destination store.
    Copy(Box<CopyCmd>),
}

#[derive(Debug, Args)]
pub struct CopyCmd {
    /// destination store
    #[command(flatten)]
    pub store: SnapstoreArgs,
    #[command(flatten)]
    pub source: SourceStoreArgs,
    /// newest backups (a full and its deltas) to copy; -1 copies all
    #[arg(long = "max-backups-to-copy", default_value_t = -1, allow_negative_numbers = true, env = "ETCDBR_MAX_BACKUPS_TO_COPY")]
    pub max_backups_to_copy: i64,
    /// only backups whose full snapshot is at most this many days old; -1: any age
    #[arg(long = "max-backup-age", default_value_t = -1, allow_negative_numbers = true, env = "ETCDBR_MAX_BACKUP_AGE")]
    pub max_backup_age: i64,
    /// objects copied in parallel
    #[arg(
        long = "max-parallel-copy-operations",
        default_value_t = 10,
        env = "ETCDBR_MAX_PARALLEL_COPY_OPERATIONS"
    )]
    pub max_parallel_copy_operations: usize,
    /// wait for a final full snapshot in the source before copying
    #[arg(long = "wait-for-final-snapshot", default_value = "false", value_parser = go_bool, action = ArgAction::Set,
          num_args = 0..=1, default_missing_value = "true", env = "ETCDBR_WAIT_FOR_FINAL_SNAPSHOT")]
    pub wait_for_final_snapshot: bool,
    /// how long to wait for the final full snapshot; 0 waits forever
    #[arg(long = "wait-for-final-snapshot-timeout", default_value = "0s", value_parser = duration, env = "ETCDBR_WAIT_FOR_FINAL_SNAPSHOT_TIMEOUT")]
    pub wait_for_final_snapshot_timeout: Duration,
}

/// The source store of `copy` (etcdbrctl's `source-` flags); empty values default to the
/// destination's. Credentials come from the `SOURCE_`-prefixed variables.
#[derive(Debug, Args, Clone)]
pub struct SourceStoreArgs {
    /// source snapshot storage provider (default: the destination's)
    #[arg(
        long = "source-storage-provider",
        default_value = "",
        env = "ETCDBR_SOURCE_STORAGE_PROVIDER",
        hide_default_value = true
    )]
    pub source_provider: String,
    /// source container (bucket); for Local, a directory
    #[arg(
        long = "source-store-container",
        default_value = "",
        env = "SOURCE_STORAGE_CONTAINER",
        hide_default_value = true
    )]
    pub source_container: String,
    /// source object store endpoint override
    #[arg(
        long = "source-store-endpoint-override",
        default_value = "",
        env = "ETCDBR_SOURCE_STORE_ENDPOINT_OVERRIDE",
        hide_default_value = true
    )]
    pub source_endpoint_override: String,
    /// source prefix (default: the destination's)
    #[arg(
        long = "source-store-prefix",
        default_value = "",
        env = "ETCDBR_SOURCE_STORE_PREFIX",
        hide_default_value = true
    )]
    pub source_prefix: String,
    /// source temporary directory (accepted for compatibility)
    #[arg(
        long = "source-snapstore-temp-directory",
        default_value = "",
        env = "ETCDBR_SOURCE_SNAPSTORE_TEMP_DIRECTORY",
        hide_default_value = true
    )]
    pub source_temp_dir: String,
    /// accepted for compatibility
    #[arg(
        long = "source-max-parallel-chunk-uploads",
        default_value_t = 5,
        env = "ETCDBR_SOURCE_MAX_PARALLEL_CHUNK_UPLOADS"
    )]
    pub source_max_parallel_chunk_uploads: usize,
    /// accepted for compatibility
    #[arg(
        long = "source-min-chunk-size",
        default_value_t = 5242880,
        env = "ETCDBR_SOURCE_MIN_CHUNK_SIZE"
    )]
    pub source_min_chunk_size: usize,
}

impl SourceStoreArgs {
    pub fn to_config(&self, dest: &StoreConfig) -> Result<StoreConfig> {
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
        };
        c.validate()
            .map_err(|e| Error::config(format!("source store: {e}")))?;
        Ok(c)
    }
}

#[derive(Debug, Args)]
pub struct CompactCmd {
    #[command(flatten)]
    pub store: SnapstoreArgs,
    #[command(flatten)]
    pub restoration: RestorationArgs,
    /// defragment the compacted etcd before the snapshot
    #[arg(long = "defragment", default_value = "true", value_parser = go_bool, action = ArgAction::Set,
          num_args = 0..=1, default_missing_value = "true", env = "ETCDBR_DEFRAGMENT")]
    pub defragment: bool,
    /// timeout of the full snapshot of the compacted etcd
    #[arg(long = "etcd-snapshot-timeout", default_value = "30m", value_parser = duration, env = "ETCDBR_ETCD_SNAPSHOT_TIMEOUT")]
    pub snapshot_timeout: Duration,
    /// timeout of the defragmentation
    #[arg(long = "etcd-defrag-timeout", default_value = "8m", value_parser = duration, env = "ETCDBR_ETCD_DEFRAG_TIMEOUT")]
    pub defrag_timeout: Duration,
    /// wait this long after the compaction (for a metrics scrape; accepted for compatibility)
    #[arg(long = "metrics-scrape-wait-duration", default_value = "0s", value_parser = duration, env = "ETCDBR_METRICS_SCRAPE_WAIT_DURATION")]
    pub metrics_scrape_wait: Duration,
    #[command(flatten)]
    pub k8s: K8sLeaseArgs,
}

#[derive(Debug, Args)]
pub struct InitializeCmd {
    /// In a multi-member cluster: how to reach the other members (--service-endpoints, else
    /// --endpoints).
    #[command(flatten)]
    pub etcd: EtcdConnectionArgs,
    #[command(flatten)]
    pub store: SnapstoreArgs,
    #[command(flatten)]
    pub restoration: RestorationArgs,
    /// validation mode: full (after a crash) or sanity (after a clean shutdown)
    #[arg(
        long = "validation-mode",
        default_value = "full",
        env = "ETCDBR_VALIDATION_MODE"
    )]
    pub validation_mode: String,
}

impl InitializeCmd {
    pub fn to_config(
        &self,
        mode: crate::initialize::validate::Mode,
    ) -> Result<crate::initialize::InitConfig> {
        let mut cluster = self.etcd.to_config()?;
        if !cluster.service_endpoints.is_empty() {
            cluster.endpoints = cluster.service_endpoints.clone();
        }
        self.restoration
            .init_config(&self.store, mode, Some(cluster))
    }
}

impl RestorationArgs {
    /// The initializer's configuration: the store is optional (no provider and no container:
    /// validation only).
    pub fn init_config(
        &self,
        store: &SnapstoreArgs,
        mode: crate::initialize::validate::Mode,
        cluster: Option<EtcdConfig>,
    ) -> Result<crate::initialize::InitConfig> {
        let has_store = !(store.storage_provider.is_empty() && store.store_container.is_empty());
        let store_cfg = if has_store {
            store.to_config()?
        } else {
            StoreConfig {
                provider: Provider::Local,
                container: String::new(),
                endpoint_override: String::new(),
                prefix: String::new(),
                max_parallel_chunk_uploads: 1,
                min_chunk_size: store.min_chunk_size,
                temp_dir: store.snapstore_temp_directory.clone(),
                env_prefix: String::new(),
                credentials: None,
            }
        };
        Ok(crate::initialize::InitConfig {
            restore: self.to_config(store_cfg)?,
            mode,
            has_store,
            cluster_size: self
                .initial_cluster
                .split(',')
                .filter(|m| !m.trim().is_empty())
                .count(),
            pod_namespace: std::env::var("POD_NAMESPACE").ok(),
            cluster,
            keep_invalid_dirs: self.keep_invalid_data_dirs,
        })
    }
}

#[derive(Debug, Args)]
pub struct RestoreCmd {
    #[command(flatten)]
    pub store: SnapstoreArgs,
    #[command(flatten)]
    pub restoration: RestorationArgs,
}

/// etcdbrctl's Restoration group, plus the tools the restore runs.
#[derive(Debug, Args, Clone)]
pub struct RestorationArgs {
    /// initial cluster configuration for restore bootstrapping
    #[arg(
        long = "initial-cluster",
        default_value = "default=http://localhost:2380",
        env = "ETCDBR_INITIAL_CLUSTER"
    )]
    pub initial_cluster: String,
    /// initial cluster token for the etcd cluster during restore bootstrap
    #[arg(
        long = "initial-cluster-token",
        default_value = "etcd-cluster",
        env = "ETCDBR_INITIAL_CLUSTER_TOKEN"
    )]
    pub initial_cluster_token: String,
    /// path to the data directory
    #[arg(
        short = 'd',
        long = "data-dir",
        default_value = "default.etcd",
        env = "ETCDBR_DATA_DIR"
    )]
    pub data_dir: PathBuf,
    /// temporary directory for the full snapshot during the restore
    #[arg(
        long = "restoration-temp-snapshots-dir",
        default_value = "default.restoration.tmp",
        env = "ETCDBR_RESTORATION_TEMP_SNAPSHOTS_DIR"
    )]
    pub temp_dir: PathBuf,
    /// list of this member's peer URLs to advertise to the rest of the cluster
    #[arg(
        long = "initial-advertise-peer-urls",
        default_value = "http://localhost:2380",
        value_delimiter = ',',
        env = "ETCDBR_INITIAL_ADVERTISE_PEER_URLS"
    )]
    pub initial_advertise_peer_urls: Vec<String>,
    /// human-readable name for this member
    #[arg(long = "name", default_value = "default", env = "ETCDBR_NAME")]
    pub name: String,
    /// ignore the snapshot integrity hash value (required if copied from a data directory)
    #[arg(long = "skip-hash-check", default_value = "false", value_parser = go_bool, action = ArgAction::Set,
          num_args = 0..=1, default_missing_value = "true", env = "ETCDBR_SKIP_HASH_CHECK")]
    pub skip_hash_check: bool,
    /// number of deltas fetched in parallel
    #[arg(
        long = "max-fetchers",
        default_value_t = 6,
        env = "ETCDBR_MAX_FETCHERS"
    )]
    pub max_fetchers: usize,
    /// maximum size of a message the client sends to the temporary etcd
    #[arg(
        long = "max-call-send-message-size",
        default_value_t = 10485760,
        env = "ETCDBR_MAX_CALL_SEND_MESSAGE_SIZE"
    )]
    pub max_call_send_message_size: u64,
    /// maximum client request size the temporary etcd accepts
    #[arg(
        long = "max-request-bytes",
        default_value_t = 10485760,
        env = "ETCDBR_MAX_REQUEST_BYTES"
    )]
    pub max_request_bytes: u64,
    /// maximum operations per transaction the temporary etcd accepts
    #[arg(
        long = "max-txn-ops",
        default_value_t = 10240,
        env = "ETCDBR_MAX_TXN_OPS"
    )]
    pub max_txn_ops: u32,
    /// backend quota of the temporary etcd
    #[arg(
        long = "embedded-etcd-quota-bytes",
        default_value_t = 8589934592,
        env = "ETCDBR_EMBEDDED_ETCD_QUOTA_BYTES"
    )]
    pub quota_bytes: u64,
    /// auto compaction mode of the temporary etcd (accepted; the replay never compacts)
    #[arg(
        long = "auto-compaction-mode",
        default_value = "periodic",
        env = "ETCDBR_AUTO_COMPACTION_MODE"
    )]
    pub auto_compaction_mode: String,
    /// auto compaction retention of the temporary etcd (accepted; the replay never compacts)
    #[arg(
        long = "auto-compaction-retention",
        default_value = "30m",
        env = "ETCDBR_AUTO_COMPACTION_RETENTION"
    )]
    pub auto_compaction_retention: String,
    /// etcdbr: the etcd binary that replays the deltas (default: etcd on PATH)
    #[arg(long = "etcd-binary", env = "ETCDBR_ETCD_BINARY")]
    pub etcd_binary: Option<PathBuf>,
    /// etcdbr: etcd's restore tool, etcdutl (3.5+) or etcdctl (3.4) (default: etcdutl, else etcdctl, on PATH)
    #[arg(long = "etcd-restore-tool", env = "ETCDBR_ETCD_RESTORE_TOOL")]
    pub etcd_restore_tool: Option<PathBuf>,
    /// etcdbr: TTL (seconds) of leases first seen in deltas that do not record theirs (etcdbrctl's)
    #[arg(
        long = "default-lease-ttl",
        default_value_t = 3600,
        env = "ETCDBR_DEFAULT_LEASE_TTL"
    )]
    pub default_lease_ttl: i64,
    /// etcdbr: how the deltas reach the temporary etcd: `wal` (appended to the restored WAL as
    /// committed entries, applied by etcd as it starts; fast) or `api` (Txn requests)
    #[arg(
        long = "replay-method",
        value_enum,
        default_value = "wal",
        env = "ETCDBR_REPLAY_METHOD"
    )]
    pub replay_method: crate::restore::replay::Method,
    /// etcdbr: when revisions are missing from the backups, restore up to the last revision
    /// before the gap (logged as a warning) instead of failing
    #[arg(long = "stop-at-gap", env = "ETCDBR_STOP_AT_GAP")]
    pub stop_at_gap: bool,
    /// etcdbr: restore a point older than the store's newest backup without --bump-revision:
    /// the result must not be backed up to the same store prefix (its revisions would repeat
    /// ones the store holds for other data); for inspection
    #[arg(long = "allow-rewind", env = "ETCDBR_ALLOW_REWIND")]
    pub allow_rewind: bool,
    /// etcdbr: a delta larger than this once decompressed is refused as damaged (deltas are
    /// read as a stream, so memory does not grow with their size)
    #[arg(
        long = "max-delta-bytes",
        default_value_t = 1 << 30,
        env = "ETCDBR_MAX_DELTA_BYTES"
    )]
    pub max_delta_bytes: u64,
    /// etcdbr: data directories replaced by an initialization are moved aside to
    /// <data-dir>.invalid-<unix time>, a way back; this many are kept, the oldest removed first
    /// (0: removed once the restored one is in place; one with no backup replacing it is
    /// always kept)
    #[arg(
        long = "keep-invalid-data-dirs",
        default_value_t = 1,
        env = "ETCDBR_KEEP_INVALID_DATA_DIRS"
    )]
    pub keep_invalid_data_dirs: usize,
    /// etcdbr: restore the state at this revision instead of the latest
    #[arg(long = "to-revision", env = "ETCDBR_TO_REVISION", conflicts_with_all = ["to_time", "snapshot"])]
    pub to_revision: Option<i64>,
    /// etcdbr: restore the state at this time (RFC 3339, e.g. 2026-11-21T10:00:00Z)
    #[arg(long = "to-time", env = "ETCDBR_TO_TIME", conflicts_with = "snapshot")]
    pub to_time: Option<String>,
    /// etcdbr: restore exactly up to this snapshot (a full alone, or a delta with its chain)
    #[arg(long = "snapshot", env = "ETCDBR_SNAPSHOT")]
    pub snapshot: Option<String>,
    /// etcdutl's: add this to the restored revision, so that it is past any revision clients
    /// saw (Kubernetes: 1000000000 covers a week at 1,500 writes/s)
    #[arg(
        long = "bump-revision",
        default_value_t = 0,
        env = "ETCDBR_BUMP_REVISION"
    )]
    pub bump_revision: i64,
    /// etcdutl's: mark every revision up to the bumped one compacted, so that watches and lists
    /// at older revisions fail with "compacted" and clients (kube-apiserver caches) relist
    #[arg(long = "mark-compacted", env = "ETCDBR_MARK_COMPACTED")]
    pub mark_compacted: bool,
}

impl RestorationArgs {
    pub fn to_config(&self, store: StoreConfig) -> Result<crate::restore::RestoreConfig> {
        if self.max_fetchers == 0 {
            return Err(Error::config("--max-fetchers must be greater than 0"));
        }
        if self.quota_bytes == 0 {
            return Err(Error::config(
                "--embedded-etcd-quota-bytes must be greater than 0",
            ));
        }
        if !matches!(self.auto_compaction_mode.as_str(), "periodic" | "revision") {
            return Err(Error::config(
                "--auto-compaction-mode must be periodic or revision",
            ));
        }
        if self.bump_revision < 0 {
            return Err(Error::config("--bump-revision must not be negative"));
        }
        if self.mark_compacted && self.bump_revision == 0 {
            return Err(Error::config(
                "--mark-compacted needs --bump-revision (as etcdutl): e.g. --bump-revision 1000000000 --mark-compacted",
            ));
        }
        use crate::restore::Target;
        let target = match (&self.to_revision, &self.to_time, &self.snapshot) {
            (Some(r), _, _) if *r < 1 => {
                return Err(Error::config("--to-revision must be a positive revision"))
            }
            (Some(r), _, _) => Target::Revision(*r),
            (_, Some(t), _) => Target::Time(
                chrono::DateTime::parse_from_rfc3339(t)
                    .map_err(|e| {
                        Error::config(format!(
                            "--to-time {t:?}: not an RFC 3339 time ({e}); e.g. 2026-11-21T10:00:00Z"
                        ))
                    })?
                    .with_timezone(&chrono::Utc),
            ),
            (_, _, Some(n)) => {
                Target::Snapshot(n.rsplit('/').next().unwrap_or(n.as_str()).to_string())
            }
            _ => Target::Latest,
        };
        Ok(crate::restore::RestoreConfig {
            store,
            data_dir: self.data_dir.clone(),
            name: self.name.clone(),
            initial_cluster: self.initial_cluster.clone(),
            initial_cluster_token: self.initial_cluster_token.clone(),
            initial_advertise_peer_urls: self.initial_advertise_peer_urls.clone(),
            skip_hash_check: self.skip_hash_check,
            max_fetchers: self.max_fetchers,
            temp_dir: self.temp_dir.clone(),
            restore_tool: self.etcd_restore_tool.clone(),
            etcd_binary: self.etcd_binary.clone(),
            quota_bytes: self.quota_bytes,
            max_txn_ops: self.max_txn_ops,
            max_request_bytes: self.max_request_bytes,
            default_lease_ttl: self.default_lease_ttl.max(1),
            target,
            bump_revision: self.bump_revision,
            mark_compacted: self.mark_compacted,
            replay_method: self.replay_method,
            stop_at_gap: self.stop_at_gap,
            max_delta_bytes: self.max_delta_bytes,
            allow_rewind: self.allow_rewind,
        })
    }
}

#[derive(Debug, Args)]
pub struct ServerCmd {
    #[command(flatten)]
    pub job: JobArgs,
    /// port on which the HTTP server listens
    #[arg(
        short = 'p',
        long = "server-port",
        default_value_t = 8080,
        env = "ETCDBR_SERVER_PORT"
    )]
    pub server_port: u16,
    /// etcdbr: minimum time between two on-demand full snapshots (`/snapshot/full`); a request
    /// sooner gets 429 with Retry-After. Concurrent requests always share one snapshot. 0: no
    /// minimum (etcdbrctl's)
    #[arg(
        long = "on-demand-full-min-interval",
        default_value = "0s",
        value_parser = duration,
        env = "ETCDBR_ON_DEMAND_FULL_MIN_INTERVAL"
    )]
    pub on_demand_full_min_interval: std::time::Duration,
    /// address on which the HTTP server listens (etcdbr; empty: all interfaces)
    #[arg(
        long = "server-host",
        default_value = "",
        env = "ETCDBR_SERVER_HOST",
        hide_default_value = true
    )]
    pub server_host: String,
    /// enable /debug/pprof (not available in etcdbr; accepted for compatibility)
    #[arg(long = "enable-profiling", default_value = "false", value_parser = go_bool, action = ArgAction::Set,
          num_args = 0..=1, default_missing_value = "true", env = "ETCDBR_ENABLE_PROFILING")]
    pub enable_profiling: bool,
    /// TLS certificate of the HTTP server
    #[arg(
        long = "server-cert",
        default_value = "",
        env = "ETCDBR_SERVER_CERT",
        hide_default_value = true
    )]
    pub server_cert: String,
    /// TLS key of the HTTP server
    #[arg(
        long = "server-key",
        default_value = "",
        env = "ETCDBR_SERVER_KEY",
        hide_default_value = true
    )]
    pub server_key: String,
    /// etcdbr: HTTPS requests may authenticate with a client certificate signed by this CA
    /// (PEM); re-read when it changes. With --server-token-file, either credential is enough
    #[arg(
        long = "server-client-ca",
        default_value = "",
        env = "ETCDBR_SERVER_CLIENT_CA",
        hide_default_value = true
    )]
    pub server_client_ca: String,
    /// etcdbr: requests must carry `Authorization: Bearer <token>`, a token being any
    /// non-empty line of this file; re-read when it changes (rotation without restart)
    #[arg(
        long = "server-token-file",
        default_value = "",
        env = "ETCDBR_SERVER_TOKEN_FILE",
        hide_default_value = true
    )]
    pub server_token_file: String,
    /// etcdbr: comma-separated paths served without credentials when --server-token-file or
    /// --server-client-ca is set (empty: none)
    #[arg(
        long = "server-open-paths",
        default_value = crate::server::auth::DEFAULT_OPEN_PATHS,
        env = "ETCDBR_SERVER_OPEN_PATHS"
    )]
    pub server_open_paths: String,
    /// period after which this sidecar checks again whether its etcd member leads
    #[arg(long = "reelection-period", default_value = "5s", value_parser = duration, env = "ETCDBR_REELECTION_PERIOD")]
    pub reelection_period: Duration,
    /// timeout of the leadership check against etcd
    #[arg(long = "etcd-connection-timeout-leader-election", default_value = "5s", value_parser = duration,
          env = "ETCDBR_ETCD_CONNECTION_TIMEOUT_LEADER_ELECTION")]
    pub leader_election_timeout: Duration,
    /// restart etcd through etcd-wrapper when its peer URL changed (not available in etcdbr)
    #[arg(long = "use-etcd-wrapper", default_value = "false", value_parser = go_bool, action = ArgAction::Set,
          num_args = 0..=1, default_missing_value = "true", env = "ETCDBR_USE_ETCD_WRAPPER")]
    pub use_etcd_wrapper: bool,
    /// the etcd configuration file that /config rewrites for this member
    #[arg(
        long = "etcd-config",
        default_value = "/var/etcd/config/etcd.conf.yaml",
        env = "ETCD_CONF"
    )]
    pub etcd_config: PathBuf,
    /// What /initialization/start restores with (etcdbrctl's Restoration group).
    #[command(flatten)]
    pub restoration: RestorationArgs,
    #[command(flatten)]
    pub k8s: K8sLeaseArgs,
}

/// etcdbrctl's Kubernetes lease renewal (Health group): accepted so that existing StatefulSets
/// keep starting; renewal itself is not available in this build (a warning says so).
#[derive(Debug, Args, Clone)]
pub struct K8sLeaseArgs {
    /// renew the full/delta snapshot leases (not available in etcdbr; ignored with a warning)
    #[arg(long = "enable-snapshot-lease-renewal", default_value = "false", value_parser = go_bool, action = ArgAction::Set,
          num_args = 0..=1, default_missing_value = "true", env = "ETCDBR_ENABLE_SNAPSHOT_LEASE_RENEWAL")]
    pub snapshot_lease_renewal: bool,
    /// renew the member lease (not available in etcdbr; ignored with a warning)
    #[arg(long = "enable-member-lease-renewal", default_value = "false", value_parser = go_bool, action = ArgAction::Set,
          num_args = 0..=1, default_missing_value = "true", env = "ETCDBR_ENABLE_MEMBER_LEASE_RENEWAL")]
    pub member_lease_renewal: bool,
    /// heartbeat period of the member lease
    #[arg(long = "k8s-heartbeat-duration", default_value = "30s", value_parser = duration, env = "ETCDBR_K8S_HEARTBEAT_DURATION")]
    pub heartbeat: Duration,
    /// name of the full snapshot lease
    #[arg(
        long = "full-snapshot-lease-name",
        default_value = "full-snapshot-revisions",
        env = "ETCDBR_FULL_SNAPSHOT_LEASE_NAME"
    )]
    pub full_lease: String,
    /// name of the delta snapshot lease
    #[arg(
        long = "delta-snapshot-lease-name",
        default_value = "delta-snapshot-revisions",
        env = "ETCDBR_DELTA_SNAPSHOT_LEASE_NAME"
    )]
    pub delta_lease: String,
}

#[derive(Debug, Args)]
pub struct SnapshotCmd {
    #[command(subcommand)]
    pub action: Option<SnapshotAction>,
    #[command(flatten)]
    pub job: JobArgs,
}

/// The flags of the snapshot job, shared by `snapshot` and `server`.
#[derive(Debug, Args)]
pub struct JobArgs {
    #[command(flatten)]
    pub etcd: EtcdConnectionArgs,
    #[command(flatten)]
    pub store: SnapstoreArgs,
    #[command(flatten)]
    pub snapshotter: SnapshotterArgs,
    #[command(flatten)]
    pub compression: CompressionArgs,
    #[command(flatten)]
    pub backoff: BackoffArgs,
    /// Schedule of etcd defragmentation (standard 5-field cron).
    #[arg(
        long = "defragmentation-schedule",
        default_value = "0 0 */3 * *",
        env = "ETCDBR_DEFRAGMENTATION_SCHEDULE"
    )]
    pub defragmentation_schedule: String,
}

impl JobArgs {
    /// The job and the defragmentation schedule.
    pub fn to_job(&self) -> Result<(SnapshotJob, Schedule)> {
        let schedule = self.snapshotter.validate()?;
        let job = SnapshotJob {
            etcd: self.etcd.to_config()?,
            store: self.store.to_config()?,
            compression: self.compression.compression()?,
            schedule,
            backoff: self.backoff.backoff()?,
            gc: self.snapshotter.gc()?,
            delta: self.snapshotter.delta(self.compression.codec()?),
        };
        let defrag = Schedule::parse(&self.defragmentation_schedule)
            .map_err(|e| Error::config(format!("--defragmentation-schedule: {e}")))?;
        Ok((job, defrag))
    }
}

#[derive(Debug, Subcommand)]
pub enum SnapshotAction {
    /// Take one full snapshot into the store, print the object's name and exit.
    Save(Box<SaveCmd>),
    /// Hash, revision, total keys and size of a snapshot, as `etcdctl snapshot status` prints
    /// them (without etcd, and without hanging on a running etcd's db); the effective revision
    /// and the sha256 trailer on stderr.
    Status(StatusCmd),
    /// Check a snapshot: its sha256 trailer and the structure of every page (bbolt's
    /// `tx.Check`). Exits non-zero, naming each problem and its page, if it is damaged.
    Verify(InspectArgs),
    /// List the keys of a snapshot at its revision (or an older one still in its history).
    Ls(LsCmd),
    /// Print one key of a snapshot.
    Get(GetCmd),
}

/// A snapshot to look into, and the store to find it in when it is not a local file.
#[derive(Debug, Args)]
pub struct InspectArgs {
    /// A local file (a db, a snapshot with its sha256 trailer, or a compressed snapshot) or the
    /// name of a snapshot in the store given by the store flags.
    pub source: String,
    #[command(flatten)]
    pub store: SnapstoreArgs,
}

impl InspectArgs {
    fn store(&self) -> Result<Option<StoreConfig>> {
        if self.store.storage_provider.is_empty() && self.store.store_container.is_empty() {
            return Ok(None);
        }
        self.store.to_config().map(Some)
    }

    async fn open(&self, check_hash: bool) -> Result<crate::inspect::Opened> {
        crate::inspect::open(
            &self.source,
            self.store()?,
            &self.store.snapstore_temp_directory,
            check_hash,
        )
        .await
    }
}

#[derive(Debug, Args)]
pub struct StatusCmd {
    #[command(flatten)]
    pub src: InspectArgs,
    /// Output format, as etcdctl's `-w`.
    #[arg(short = 'w', long = "write-out", value_enum, default_value = "table")]
    pub write_out: crate::inspect::Format,
    /// Do not hash a local file against its sha256 trailer (etcdctl's amount of work; `verify`
    /// always hashes).
    #[arg(long = "skip-hash-check")]
    pub skip_hash_check: bool,
}

/// What `ls` and `get` print.
#[derive(Debug, Args)]
pub struct ReadArgs {
    /// Read at this revision instead of the snapshot's (it must be in the kept history).
    #[arg(long = "revision")]
    pub revision: Option<i64>,
    /// Output: a table, or JSON lines.
    #[arg(short = 'w', long = "write-out", value_enum, default_value = "table")]
    pub write_out: crate::inspect::ListFormat,
    /// Show `/registry/` keys as resource/namespace/name with the objects' apiVersion and kind.
    #[arg(long = "kubernetes")]
    pub kubernetes: bool,
}

#[derive(Debug, Args)]
pub struct LsCmd {
    #[command(flatten)]
    pub src: InspectArgs,
    /// Only keys starting with this prefix.
    #[arg(long = "prefix", default_value = "")]
    pub prefix: String,
    #[command(flatten)]
    pub read: ReadArgs,
}

#[derive(Debug, Args)]
pub struct GetCmd {
    #[command(flatten)]
    pub src: InspectArgs,
    /// The key.
    pub key: String,
    #[command(flatten)]
    pub read: ReadArgs,
    /// Write the value (with --kubernetes and a protobuf object: the raw object) to this file.
    #[arg(long = "out")]
    pub out: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct SaveCmd {
    #[command(flatten)]
    pub etcd: EtcdConnectionArgs,
    #[command(flatten)]
    pub store: SnapstoreArgs,
    #[command(flatten)]
    pub compression: CompressionArgs,
    /// Mark the snapshot as final (name ends in .final), e.g. before deleting a cluster.
    #[arg(long = "final", default_value_t = false, env = "ETCDBR_FINAL")]
    pub is_final: bool,
}

#[derive(Debug, Args, Clone)]
pub struct EtcdConnectionArgs {
    /// comma separated list of etcd endpoints
    #[arg(
        short = 'e',
        long = "endpoints",
        default_value = "http://127.0.0.1:2379",
        value_delimiter = ',',
        env = "ETCDBR_ENDPOINTS"
    )]
    pub endpoints: Vec<String>,
    /// the cluster's client endpoints, for member operations (re-adding a member as a learner);
    /// empty: every member's advertise-client-urls from the etcd configuration
    #[arg(
        long = "service-endpoints",
        value_delimiter = ',',
        env = "ETCDBR_SERVICE_ENDPOINTS"
    )]
    pub service_endpoints: Vec<String>,
    /// etcd server username, if one is required
    #[arg(
        long = "etcd-username",
        default_value = "",
        env = "ETCDBR_ETCD_USERNAME",
        hide_default_value = true
    )]
    pub etcd_username: String,
    /// etcd server password, if one is required
    #[arg(
        long = "etcd-password",
        default_value = "",
        env = "ETCDBR_ETCD_PASSWORD",
        hide_env_values = true,
        hide_default_value = true
    )]
    pub etcd_password: String,
    /// etcdbr: a file holding the etcd username (instead of --etcd-username)
    #[arg(
        long = "etcd-username-file",
        env = "ETCDBR_ETCD_USERNAME_FILE",
        conflicts_with = "etcd_username"
    )]
    pub etcd_username_file: Option<PathBuf>,
    /// etcdbr: a file holding the etcd password (instead of --etcd-password, which any local
    /// user can read in the process list)
    #[arg(
        long = "etcd-password-file",
        env = "ETCDBR_ETCD_PASSWORD_FILE",
        conflicts_with = "etcd_password"
    )]
    pub etcd_password_file: Option<PathBuf>,
    /// etcd client connection timeout
    #[arg(long = "etcd-connection-timeout", default_value = "30s", value_parser = duration, env = "ETCDBR_ETCD_CONNECTION_TIMEOUT")]
    pub connection_timeout: Duration,
    /// timeout for taking a full snapshot of etcd
    #[arg(long = "etcd-snapshot-timeout", default_value = "15m", value_parser = duration, env = "ETCDBR_ETCD_SNAPSHOT_TIMEOUT")]
    pub snapshot_timeout: Duration,
    /// timeout for the defragmentation of one etcd member
    #[arg(long = "etcd-defrag-timeout", default_value = "8m", value_parser = duration, env = "ETCDBR_ETCD_DEFRAG_TIMEOUT")]
    pub defrag_timeout: Duration,
    /// disable transport security for client connections
    #[arg(long = "insecure-transport", default_value = "true", value_parser = go_bool, action = ArgAction::Set,
          num_args = 0..=1, default_missing_value = "true", env = "ETCDBR_INSECURE_TRANSPORT")]
    pub insecure_transport: bool,
    /// skip server certificate verification
    #[arg(long = "insecure-skip-tls-verify", default_value = "true", value_parser = go_bool, action = ArgAction::Set,
          num_args = 0..=1, default_missing_value = "true", env = "ETCDBR_INSECURE_SKIP_TLS_VERIFY")]
    pub insecure_skip_tls_verify: bool,
    /// identify secure client using this TLS certificate file
    #[arg(
        long = "cert",
        default_value = "",
        env = "ETCDBR_CERT",
        hide_default_value = true
    )]
    pub cert: String,
    /// identify secure client using this TLS key file
    #[arg(
        long = "key",
        default_value = "",
        env = "ETCDBR_KEY",
        hide_default_value = true
    )]
    pub key: String,
    /// verify certificates of TLS-enabled secure servers using this CA bundle
    #[arg(
        long = "cacert",
        default_value = "",
        env = "ETCDBR_CACERT",
        hide_default_value = true
    )]
    pub cacert: String,
}

/// A credential from its flag or from its file (one line; the trailing newline dropped).
fn secret(value: &str, file: Option<&std::path::Path>, what: &str) -> Result<String> {
    let Some(f) = file else {
        return Ok(value.to_string());
    };
    let text = std::fs::read_to_string(f).map_err(|e| {
        Error::io(
            f,
            format!("read the etcd {what} file (--etcd-{what}-file)"),
            e,
        )
    })?;
    let v = text.trim_end_matches(['\n', '\r']).to_string();
    if v.is_empty() {
        return Err(Error::config(format!(
            "--etcd-{what}-file {}: the file is empty",
            f.display()
        )));
    }
    Ok(v)
}

impl EtcdConnectionArgs {
    pub fn to_config(&self) -> Result<EtcdConfig> {
        if !self.etcd_password.is_empty() && std::env::var_os("ETCDBR_ETCD_PASSWORD").is_none() {
            tracing::warn!("--etcd-password on the command line is visible to every local user in the process list: use --etcd-password-file");
        }
        let c = EtcdConfig {
            endpoints: self
                .endpoints
                .iter()
                .map(|e| e.trim().to_string())
                .filter(|e| !e.is_empty())
                .collect(),
            username: secret(
                &self.etcd_username,
                self.etcd_username_file.as_deref(),
                "username",
            )?,
            password: secret(
                &self.etcd_password,
                self.etcd_password_file.as_deref(),
                "password",
            )?,
            connection_timeout: self.connection_timeout,
            snapshot_timeout: self.snapshot_timeout,
            defrag_timeout: self.defrag_timeout,
            insecure_transport: self.insecure_transport,
            insecure_skip_tls_verify: self.insecure_skip_tls_verify,
            cert: self.cert.clone(),
            key: self.key.clone(),
            cacert: self.cacert.clone(),
            service_endpoints: self
                .service_endpoints
                .iter()
                .map(|e| e.trim().to_string())
                .filter(|e| !e.is_empty())
                .collect(),
        };
        c.validate()?;
        Ok(c)
    }
}

#[derive(Debug, Args, Clone)]
pub struct SnapstoreArgs {
    /// snapshot storage provider: Local, S3, GCS or ABS (empty: Local)
    #[arg(
        long = "storage-provider",
        default_value = "",
        env = "ETCDBR_STORAGE_PROVIDER",
        hide_default_value = true
    )]
    pub storage_provider: String,
    /// container (bucket) which will be used to store snapshots; for Local, a directory
    #[arg(
        long = "store-container",
        default_value = "",
        env = "STORAGE_CONTAINER",
        hide_default_value = true
    )]
    pub store_container: String,
    /// override the object store's endpoint URL (S3-compatible servers, emulators)
    #[arg(
        long = "store-endpoint-override",
        default_value = "",
        env = "ETCDBR_STORE_ENDPOINT_OVERRIDE",
        hide_default_value = true
    )]
    pub store_endpoint_override: String,
    /// prefix or directory inside the container under which snapshots are stored
    #[arg(
        long = "store-prefix",
        default_value = "",
        env = "ETCDBR_STORE_PREFIX",
        hide_default_value = true
    )]
    pub store_prefix: String,
    /// maximum number of parallel chunk uploads allowed
    #[arg(
        long = "max-parallel-chunk-uploads",
        default_value_t = 5,
        env = "ETCDBR_MAX_PARALLEL_CHUNK_UPLOADS"
    )]
    pub max_parallel_chunk_uploads: usize,
    /// minimum size of a chunk (multipart part) in bytes
    #[arg(
        long = "min-chunk-size",
        default_value_t = 5242880,
        env = "ETCDBR_MIN_CHUNK_SIZE"
    )]
    pub min_chunk_size: usize,
    /// temporary directory for processing snapshots
    #[arg(
        long = "snapstore-temp-directory",
        default_value = "/tmp",
        env = "ETCDBR_SNAPSTORE_TEMP_DIRECTORY"
    )]
    pub snapstore_temp_directory: PathBuf,
}

impl SnapstoreArgs {
    pub fn to_config(&self) -> Result<StoreConfig> {
        let provider: Provider = if self.storage_provider.is_empty() {
            Provider::Local
        } else {
            self.storage_provider
                .parse()
                .map_err(|e: String| Error::config(format!("--storage-provider: {e}")))?
        };
        let c = StoreConfig {
            provider,
            container: self.store_container.clone(),
            endpoint_override: self.store_endpoint_override.clone(),
            prefix: self.store_prefix.clone(),
            max_parallel_chunk_uploads: self.max_parallel_chunk_uploads,
            min_chunk_size: self.min_chunk_size,
            temp_dir: self.snapstore_temp_directory.clone(),
            env_prefix: String::new(),
            credentials: None,
        };
        c.validate()?;
        Ok(c)
    }
}

#[derive(Debug, Args, Clone)]
pub struct SnapshotterArgs {
    /// schedule for full snapshots (standard 5-field cron)
    #[arg(
        short = 's',
        long = "schedule",
        default_value = "0 */1 * * *",
        env = "ETCDBR_SCHEDULE"
    )]
    pub schedule: String,
    /// period after which delta snapshots are persisted; below 1s disables them
    #[arg(long = "delta-snapshot-period", default_value = "20s", value_parser = duration, env = "ETCDBR_DELTA_SNAPSHOT_PERIOD")]
    pub delta_snapshot_period: Duration,
    /// size of buffered events (bytes) that triggers a delta snapshot at once
    #[arg(
        long = "delta-snapshot-memory-limit",
        default_value_t = 10485760,
        env = "ETCDBR_DELTA_SNAPSHOT_MEMORY_LIMIT"
    )]
    pub delta_snapshot_memory_limit: u64,
    /// period for garbage collecting old backups; 1s or less disables it
    #[arg(long = "garbage-collection-period", default_value = "1m", value_parser = duration, env = "ETCDBR_GARBAGE_COLLECTION_PERIOD")]
    pub garbage_collection_period: Duration,
    /// policy for garbage collecting old backups: Exponential or LimitBased
    #[arg(
        long = "garbage-collection-policy",
        default_value = "Exponential",
        env = "ETCDBR_GARBAGE_COLLECTION_POLICY"
    )]
    pub garbage_collection_policy: String,
    /// maximum number of full snapshots kept by the LimitBased policy
    #[arg(
        short = 'm',
        long = "max-backups",
        default_value_t = 7,
        env = "ETCDBR_MAX_BACKUPS"
    )]
    pub max_backups: u32,
    /// delta snapshots younger than this are never garbage-collected
    #[arg(long = "delta-snapshot-retention-period", default_value = "0s", value_parser = duration, env = "ETCDBR_DELTA_SNAPSHOT_RETENTION_PERIOD")]
    pub delta_snapshot_retention_period: Duration,
}

impl SnapshotterArgs {
    /// The GC configuration and period, or `None` when disabled (period of 1s or less).
    pub fn gc(&self) -> Result<Option<(GcConfig, Duration)>> {
        let policy = match self.garbage_collection_policy.as_str() {
            "Exponential" => Policy::Exponential,
            "LimitBased" => Policy::LimitBased {
                max_backups: self.max_backups as usize,
            },
            p => {
                return Err(Error::config(format!(
                    "--garbage-collection-policy {p:?} is unknown: use Exponential or LimitBased"
                )))
            }
        };
        if self.garbage_collection_period <= Duration::from_secs(1) {
            return Ok(None);
        }
        let cfg = GcConfig {
            policy,
            delta_retention: self.delta_snapshot_retention_period,
        };
        Ok(Some((cfg, self.garbage_collection_period)))
    }

    /// Delta snapshot settings, or `None` when disabled (period below 1s, as etcdbrctl).
    pub fn delta(&self, codec: Codec) -> Option<DeltaConfig> {
        if self.delta_snapshot_period < Duration::from_secs(1) {
            return None;
        }
        let limit = if self.delta_snapshot_memory_limit < 1 {
            10 << 20
        } else {
            self.delta_snapshot_memory_limit
        };
        Some(DeltaConfig {
            period: self.delta_snapshot_period,
            memory_limit: limit as usize,
            codec,
            flush_timeout: Duration::from_secs(30),
        })
    }

    pub fn validate(&self) -> Result<Schedule> {
        let schedule = Schedule::parse(&self.schedule)
            .map_err(|e| Error::config(format!("--schedule: {e}")))?;
        match self.garbage_collection_policy.as_str() {
            "Exponential" => {}
            "LimitBased" => {
                if self.max_backups == 0 {
                    return Err(Error::config(
                        "--max-backups must be greater than 0 for the LimitBased policy",
                    ));
                }
            }
            p => {
                return Err(Error::config(format!(
                    "--garbage-collection-policy {p:?} is unknown: use Exponential or LimitBased"
                )))
            }
        }
        Ok(schedule)
    }
}

#[derive(Debug, Args, Clone)]
pub struct CompressionArgs {
    /// whether to compress the snapshots
    #[arg(long = "compress-snapshots", default_value = "true", value_parser = go_bool, action = ArgAction::Set,
          num_args = 0..=1, default_missing_value = "true", env = "ETCDBR_COMPRESS_SNAPSHOTS")]
    pub compress_snapshots: bool,
    /// compression policy: gzip (.gz), zlib (.zlib), lzw (.Z), or zstd (.zst, etcdbr only)
    #[arg(
        long = "compression-policy",
        default_value = "gzip",
        env = "ETCDBR_COMPRESSION_POLICY"
    )]
    pub compression_policy: String,
    /// etcdbr: gzip and zlib level of full snapshots, 1 (fastest) to 9 (smallest). 1 keeps a
    /// 2-core machine near etcd's stream rate (each full holds a long etcd read); 6 is
    /// etcdbrctl's size (about 20% smaller) at twice the time on 2 cores
    #[arg(
        long = "compression-level",
        default_value_t = 1,
        value_parser = clap::value_parser!(u32).range(1..=9),
        env = "ETCDBR_COMPRESSION_LEVEL"
    )]
    pub compression_level: u32,
    /// etcdbr: threads compressing a full snapshot with gzip or zlib (independent blocks of one
    /// ordinary stream, as pigz); 0: one per core
    #[arg(
        long = "compression-threads",
        default_value_t = 0,
        env = "ETCDBR_COMPRESSION_THREADS"
    )]
    pub compression_threads: usize,
}

impl CompressionArgs {
    pub fn codec(&self) -> Result<Codec> {
        Codec::from_flags(self.compress_snapshots, &self.compression_policy)
            .map_err(|e| Error::config(format!("--compression-policy: {e}")))
    }

    /// How full snapshots are compressed.
    pub fn compression(&self) -> Result<Compression> {
        Ok(Compression::new(
            self.codec()?,
            self.compression_level,
            self.compression_threads,
        ))
    }
}

#[derive(Debug, Args, Clone)]
pub struct BackoffArgs {
    /// multiplier of the exponential backoff between snapshotter restarts
    #[arg(
        long = "backoff-multiplier",
        default_value_t = 2,
        env = "ETCDBR_BACKOFF_MULTIPLIER"
    )]
    pub multiplier: u32,
    /// number of attempts after which the backoff stays at its threshold
    #[arg(
        long = "backoff-attempt-limit",
        default_value_t = 6,
        env = "ETCDBR_BACKOFF_ATTEMPT_LIMIT"
    )]
    pub attempt_limit: u32,
    /// maximum backoff
    #[arg(long = "backoff-threshold-time", default_value = "128s", value_parser = duration, env = "ETCDBR_BACKOFF_THRESHOLD_TIME")]
    pub threshold: Duration,
}

impl BackoffArgs {
    pub fn backoff(&self) -> Result<Backoff> {
        if self.multiplier == 0 {
            return Err(Error::config("--backoff-multiplier must be greater than 0"));
        }
        Ok(Backoff {
            multiplier: self.multiplier,
            attempt_limit: self.attempt_limit,
            threshold: self.threshold,
        })
    }
}

fn init_logging(level: u8) {
    let lvl = match level {
        0..=2 => "error",
        3 => "warn",
        4 => "info",
        5 => "debug",
        _ => "trace",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new(format!(
            "{lvl},h2=warn,hyper=warn,tower=warn,rustls=warn"
        ))
    });
    use std::io::IsTerminal;
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(false)
        .try_init();
}

/// A watch channel that turns true on SIGINT/SIGTERM; a second signal exits at once (1).
fn shutdown_signal() -> tokio::sync::watch::Receiver<bool> {
    let (tx, rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        let term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate());
        let Ok(mut term) = term else { return };
        for n in 0..2 {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            if n == 0 {
                tracing::info!(
                    "shutdown signal received; stopping (send it again to exit at once)"
                );
                let _ = tx.send(true);
            } else {
                std::process::exit(1);
            }
        }
    });
    rx
}

async fn run_command(cmd: Command) -> Result<()> {
    match cmd {
        Command::Snapshot(s) => match s.action {
            Some(SnapshotAction::Save(save)) => {
                let etcd = save.etcd.to_config()?;
                let store = save.store.to_config()?;
                let compression = save.compression.compression()?;
                let report = job::save_once(&etcd, store, compression, save.is_final).await?;
                println!("{}", report.key);
                Ok(())
            }
            Some(SnapshotAction::Status(c)) => {
                let o = c.src.open(!c.skip_hash_check).await?;
                crate::inspect::print_status(o, c.write_out).await
            }
            Some(SnapshotAction::Verify(c)) => {
                let o = c.open(true).await?;
                crate::inspect::print_verify(o).await
            }
            Some(SnapshotAction::Ls(c)) => {
                let o = c.src.open(false).await?;
                crate::inspect::print_ls(
                    o,
                    c.prefix.into_bytes(),
                    c.read.revision,
                    c.read.write_out,
                    c.read.kubernetes,
                )
                .await
            }
            Some(SnapshotAction::Get(c)) => {
                let o = c.src.open(false).await?;
                crate::inspect::print_get(
                    o,
                    c.key.into_bytes(),
                    c.read.revision,
                    c.read.write_out,
                    c.read.kubernetes,
                    c.out,
                )
                .await
            }
            None => {
                let (job, defrag_schedule) = s.job.to_job()?;
                tracing::info!(
                    endpoint = job.etcd.primary(),
                    provider = job.store.provider.as_str(),
                    compression = job.compression.policy_name(),
                    schedule = %s.job.snapshotter.schedule,
                    "starting the snapshot job"
                );
                let shutdown = shutdown_signal();
                let defrag = tokio::spawn(crate::etcd::defrag::run_scheduled(
                    job.etcd.clone(),
                    defrag_schedule,
                    || true,
                    shutdown.clone(),
                ));
                let r = job::run_scheduled(job, shutdown).await;
                defrag.abort();
                r
            }
        },
        Command::Server(s) => run_server(*s).await,
        Command::Initialize(c) => {
            let mode = c
                .validation_mode
                .parse()
                .map_err(|e: String| Error::config(format!("--validation-mode: {e}")))?;
            let cfg = c.to_config(mode)?;
            let (outcome, action) = crate::initialize::initialize(&cfg).await?;
            println!("validation: {outcome}; action: {action:?}");
            Ok(())
        }
        Command::Compact(c) => {
            let cfg = crate::snapshot::compact::CompactConfig {
                restore: c.restoration.to_config(c.store.to_config()?)?,
                defragment: c.defragment,
                snapshot_timeout: c.snapshot_timeout,
                defrag_timeout: c.defrag_timeout,
            };
            if cfg.restore.bump_revision != 0 {
                return Err(Error::config(
                    "compact stores a snapshot: --bump-revision and --mark-compacted apply when restoring it",
                ));
            }
            if cfg.restore.target != crate::restore::Target::Latest {
                return Err(Error::config(
                    "compact always compacts the latest set: --to-revision, --to-time and --snapshot do not apply",
                ));
            }
            let r = crate::snapshot::compact::compact(&cfg).await?;
            println!("{}", r.key);
            if !c.metrics_scrape_wait.is_zero() {
                tokio::time::sleep(c.metrics_scrape_wait).await;
            }
            Ok(())
        }
        Command::Copy(c) => {
            let dest = c.store.to_config()?;
            let cfg = crate::store::copy::CopyConfig {
                source: c.source.to_config(&dest)?,
                dest,
                max_backups: (c.max_backups_to_copy >= 0).then_some(c.max_backups_to_copy as usize),
                max_age_days: (c.max_backup_age >= 0).then_some(c.max_backup_age),
                parallel: c.max_parallel_copy_operations,
                wait_for_final: c.wait_for_final_snapshot.then_some(
                    (!c.wait_for_final_snapshot_timeout.is_zero())
                        .then_some(c.wait_for_final_snapshot_timeout),
                ),
            };
            let r = crate::store::copy::copy(&cfg).await?;
            println!(
                "copied {} objects ({} bytes), skipped {} already in the destination",
                r.copied, r.bytes, r.skipped
            );
            Ok(())
        }
        Command::Restore(r) => {
            let cfg = r.restoration.to_config(r.store.to_config()?)?;
            let report = crate::restore::restore(&cfg).await?;
            let replay = report.replay_elapsed.as_secs_f64();
            // etcdbrctl's own peak memory, without the tools and the temporary etcd it ran
            let hwm = std::fs::read_to_string("/proc/self/status")
                .ok()
                .and_then(|s| {
                    s.lines()
                        .find(|l| l.starts_with("VmHWM:"))
                        .and_then(|l| l.split_whitespace().nth(1).map(str::to_string))
                })
                .and_then(|k| k.parse::<u64>().ok())
                .unwrap_or(0);
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
                hwm / 1024
            );
            Ok(())
        }
    }
}

async fn run_server(s: ServerCmd) -> Result<()> {
    let (job, defrag_schedule) = s.job.to_job()?;
    if s.reelection_period <= Duration::from_secs(1) {
        return Err(Error::config("--reelection-period must be longer than 1s"));
    }
    if s.leader_election_timeout <= Duration::from_secs(1) {
        return Err(Error::config(
            "--etcd-connection-timeout-leader-election must be longer than 1s",
        ));
    }
    if s.server_cert.is_empty() != s.server_key.is_empty() {
        return Err(Error::config(
            "--server-cert and --server-key must be given together (HTTPS for the sidecar's API)",
        ));
    }
    if !s.server_client_ca.is_empty() && s.server_cert.is_empty() {
        return Err(Error::config(
            "--server-client-ca needs HTTPS: give --server-cert and --server-key too",
        ));
    }
    let opt_path = |p: &str| (!p.is_empty()).then(|| std::path::PathBuf::from(p));
    let tls = (!s.server_cert.is_empty()).then(|| crate::server::https::TlsFiles {
        cert: s.server_cert.clone().into(),
        key: s.server_key.clone().into(),
        client_ca: opt_path(&s.server_client_ca),
    });
    let auth = crate::server::auth::AuthConfig {
        token_file: opt_path(&s.server_token_file),
        client_ca: opt_path(&s.server_client_ca),
        open_paths: crate::server::auth::AuthConfig::parse_open_paths(&s.server_open_paths)?,
    };
    if s.enable_profiling {
        tracing::warn!("--enable-profiling: /debug/pprof is Go-specific and not served");
    }
    if s.use_etcd_wrapper {
        tracing::warn!("--use-etcd-wrapper: not available in this build; ignored");
    }
    if s.k8s.snapshot_lease_renewal || s.k8s.member_lease_renewal {
        tracing::warn!("--enable-snapshot-lease-renewal/--enable-member-lease-renewal: Kubernetes lease renewal is not available in this build; alert on /healthz or etcdbr_snapshot_stale instead");
    }
    tracing::info!(
        endpoint = job.etcd.primary(),
        provider = job.store.provider.as_str(),
        compression = job.compression.policy_name(),
        schedule = %s.job.snapshotter.schedule,
        port = s.server_port,
        "starting the server"
    );
    // the other members (this one's etcd is stopped while it is initialised and while the
    // bootstrap script fetches /config): --service-endpoints and every other member's client
    // URLs from the etcd configuration; else --endpoints
    let mut cluster = job.etcd.clone();
    let mut others = cluster.service_endpoints.clone();
    if let Ok(conf) = crate::server::etcdconf::read(&s.etcd_config) {
        for u in crate::server::etcdconf::other_client_urls(&conf, &s.restoration.name) {
            if !others.contains(&u) {
                others.push(u);
            }
        }
    }
    if !others.is_empty() {
        cluster.endpoints = others;
    }
    warn_if_store_shares_the_data_volume(&job.store, &s.restoration.data_dir);
    let init = s.restoration.init_config(
        &s.job.store,
        crate::initialize::validate::Mode::Full,
        Some(cluster),
    )?;
    // moved-aside data directories from earlier initializations, visible before the next one
    crate::metrics::set_invalid_data_dirs(
        crate::ondisk::datadir::invalid_dirs(&init.restore.data_dir).len(),
    );
    let cfg = crate::server::ServerConfig {
        job,
        host: s.server_host,
        full_min_interval: s.on_demand_full_min_interval,
        port: s.server_port,
        reelection_period: s.reelection_period,
        leader_election_timeout: s.leader_election_timeout,
        defrag_schedule,
        init,
        etcd_config: s.etcd_config,
        tls,
        auth,
    };
    crate::server::run(cfg, shutdown_signal()).await
}

/// Entry point of the binary.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    if cli.version {
        println!("etcdbrctl (etcdbr) version {}", env!("CARGO_PKG_VERSION"));
        return ExitCode::SUCCESS;
    }
    init_logging(cli.log_level);
    let Some(cmd) = cli.command else {
        use clap::CommandFactory;
        let _ = Cli::command().print_help();
        return ExitCode::from(2);
    };
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("etcdbrctl: error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run_command(cmd)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("etcdbrctl: error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// A Local store on the data directory's file system is lost with it (a replaced volume, a
/// wiped disk): allowed (trials, `run-local.sh`), but said loudly.
fn warn_if_store_shares_the_data_volume(store: &StoreConfig, data_dir: &std::path::Path) {
    use std::os::unix::fs::MetadataExt;
    if store.provider != Provider::Local || store.container.is_empty() {
        return;
    }
    let device = |p: &std::path::Path| {
        p.ancestors()
            .find_map(|a| std::fs::metadata(a).ok())
            .map(|m| m.dev())
    };
    let (s, d) = (
        device(std::path::Path::new(&store.container)),
        device(data_dir),
    );
    if s.is_some() && s == d {
        tracing::warn!(
            store = %store.container,
            data_dir = %data_dir.display(),
            "the Local store is on the same file system as the data directory: losing that volume loses the backups with the data. Use an object store (S3, GCS, ABS), or a Local directory on another volume"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::secret;

    #[test]
    fn credentials_from_files_and_never_printed() {
        let d = tempfile::tempdir().expect("tmp");
        let f = d.path().join("pw");
        std::fs::write(&f, "s3cr3t\n").expect("write");
        assert_eq!(secret("", Some(&f), "password").expect("read"), "s3cr3t");
        std::fs::write(&f, "\n").expect("write");
        assert!(secret("", Some(&f), "password").is_err());
        assert!(secret("", Some(&d.path().join("none")), "password").is_err());
        assert_eq!(secret("flag", None, "password").expect("flag"), "flag");
        let cfg = crate::etcd::EtcdConfig {
            username: "root".into(),
            password: "s3cr3t".into(),
            ..crate::etcd::EtcdConfig::plain(
                "http://127.0.0.1:2379".into(),
                std::time::Duration::from_secs(1),
            )
        };
        assert!(!format!("{cfg:?}").contains("s3cr3t"));
    }

    #[test]
    fn command_line_is_consistent() {
        use clap::CommandFactory;
        super::Cli::command().debug_assert();
    }
}
