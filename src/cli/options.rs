//! The flag groups the subcommands share (etcdbrctl's groups: etcd connection, snapstore,
//! snapshotter, compression, backoff, restoration, Kubernetes leases), and their conversion
//! into the library's configurations: each in one place, validated there, once.

use crate::duration::parse_go_duration;
use crate::error::{Error, Result};
use crate::etcd::EtcdConfig;
use crate::format::codec::{Codec, Compression};
use crate::format::encryption::{Identities, Keys, Recipients};
use crate::restore::{RestoreConfig, Target};
use crate::schedule::Schedule;
use crate::snapshot::delta::DeltaConfig;
use crate::snapshot::gc::{GcConfig, Policy};
use crate::snapshot::job::{Backoff, SnapshotJob};
use crate::store::{Provider, StoreConfig};
use clap::{ArgAction, Args};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// A boolean as Go's `strconv.ParseBool` reads it (etcdbrctl's flags).
pub(crate) fn go_bool(s: &str) -> Result<bool, String> {
    match s {
        "1" | "t" | "T" | "TRUE" | "true" | "True" => Ok(true),
        "0" | "f" | "F" | "FALSE" | "false" | "False" => Ok(false),
        _ => Err(format!("invalid boolean {s:?} (use true or false)")),
    }
}

/// A duration in Go's syntax ("30s", "1h30m").
pub(crate) fn duration(s: &str) -> Result<Duration, String> {
    parse_go_duration(s)
}

#[derive(Debug, Args, Clone)]
pub(crate) struct EtcdConnectionArgs {
    /// comma separated list of etcd endpoints
    #[arg(
        short = 'e',
        long = "endpoints",
        default_value = "http://127.0.0.1:2379",
        value_delimiter = ',',
        env = "ETCDBR_ENDPOINTS"
    )]
    pub(crate) endpoints: Vec<String>,
    /// the cluster's client endpoints, for member operations (re-adding a member as a learner);
    /// empty: every member's advertise-client-urls from the etcd configuration
    #[arg(
        long = "service-endpoints",
        value_delimiter = ',',
        env = "ETCDBR_SERVICE_ENDPOINTS"
    )]
    pub(crate) service_endpoints: Vec<String>,
    /// etcd server username, if one is required
    #[arg(
        long = "etcd-username",
        default_value = "",
        env = "ETCDBR_ETCD_USERNAME",
        hide_default_value = true
    )]
    pub(crate) etcd_username: String,
    /// etcd server password, if one is required
    #[arg(
        long = "etcd-password",
        default_value = "",
        env = "ETCDBR_ETCD_PASSWORD",
        hide_env_values = true,
        hide_default_value = true
    )]
    pub(crate) etcd_password: String,
    /// etcdbr: a file holding the etcd username (instead of --etcd-username)
    #[arg(
        long = "etcd-username-file",
        env = "ETCDBR_ETCD_USERNAME_FILE",
        conflicts_with = "etcd_username"
    )]
    pub(crate) etcd_username_file: Option<PathBuf>,
    /// etcdbr: a file holding the etcd password (instead of --etcd-password, which any local
    /// user can read in the process list)
    #[arg(
        long = "etcd-password-file",
        env = "ETCDBR_ETCD_PASSWORD_FILE",
        conflicts_with = "etcd_password"
    )]
    pub(crate) etcd_password_file: Option<PathBuf>,
    /// etcd client connection timeout
    #[arg(long = "etcd-connection-timeout", default_value = "30s", value_parser = duration, env = "ETCDBR_ETCD_CONNECTION_TIMEOUT")]
    pub(crate) connection_timeout: Duration,
    /// timeout for taking a full snapshot of etcd
    #[arg(long = "etcd-snapshot-timeout", default_value = "15m", value_parser = duration, env = "ETCDBR_ETCD_SNAPSHOT_TIMEOUT")]
    pub(crate) snapshot_timeout: Duration,
    /// timeout for the defragmentation of one etcd member
    #[arg(long = "etcd-defrag-timeout", default_value = "8m", value_parser = duration, env = "ETCDBR_ETCD_DEFRAG_TIMEOUT")]
    pub(crate) defrag_timeout: Duration,
    /// disable transport security for client connections
    #[arg(long = "insecure-transport", default_value = "true", value_parser = go_bool, action = ArgAction::Set,
          num_args = 0..=1, default_missing_value = "true", env = "ETCDBR_INSECURE_TRANSPORT")]
    pub(crate) insecure_transport: bool,
    /// skip server certificate verification
    #[arg(long = "insecure-skip-tls-verify", default_value = "true", value_parser = go_bool, action = ArgAction::Set,
          num_args = 0..=1, default_missing_value = "true", env = "ETCDBR_INSECURE_SKIP_TLS_VERIFY")]
    pub(crate) insecure_skip_tls_verify: bool,
    /// identify secure client using this TLS certificate file
    #[arg(
        long = "cert",
        default_value = "",
        env = "ETCDBR_CERT",
        hide_default_value = true
    )]
    pub(crate) cert: String,
    /// identify secure client using this TLS key file
    #[arg(
        long = "key",
        default_value = "",
        env = "ETCDBR_KEY",
        hide_default_value = true
    )]
    pub(crate) key: String,
    /// verify certificates of TLS-enabled secure servers using this CA bundle
    #[arg(
        long = "cacert",
        default_value = "",
        env = "ETCDBR_CACERT",
        hide_default_value = true
    )]
    pub(crate) cacert: String,
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

impl TryFrom<&EtcdConnectionArgs> for EtcdConfig {
    type Error = Error;

    fn try_from(a: &EtcdConnectionArgs) -> Result<EtcdConfig> {
        if !a.etcd_password.is_empty() && std::env::var_os("ETCDBR_ETCD_PASSWORD").is_none() {
            tracing::warn!("--etcd-password on the command line is visible to every local user in the process list: use --etcd-password-file");
        }
        let c = EtcdConfig {
            endpoints: a
                .endpoints
                .iter()
                .map(|e| e.trim().to_string())
                .filter(|e| !e.is_empty())
                .collect(),
            username: secret(
                &a.etcd_username,
                a.etcd_username_file.as_deref(),
                "username",
            )?,
            password: secret(
                &a.etcd_password,
                a.etcd_password_file.as_deref(),
                "password",
            )?,
            connection_timeout: a.connection_timeout,
            snapshot_timeout: a.snapshot_timeout,
            defrag_timeout: a.defrag_timeout,
            insecure_transport: a.insecure_transport,
            insecure_skip_tls_verify: a.insecure_skip_tls_verify,
            cert: a.cert.clone(),
            key: a.key.clone(),
            cacert: a.cacert.clone(),
            service_endpoints: a
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
pub(crate) struct SnapstoreArgs {
    /// snapshot storage provider: Local, S3, GCS or ABS (empty: Local)
    #[arg(
        long = "storage-provider",
        default_value = "",
        env = "ETCDBR_STORAGE_PROVIDER",
        hide_default_value = true
    )]
    pub(crate) storage_provider: String,
    /// container (bucket) which will be used to store snapshots; for Local, a directory
    #[arg(
        long = "store-container",
        default_value = "",
        env = "STORAGE_CONTAINER",
        hide_default_value = true
    )]
    pub(crate) store_container: String,
    /// override the object store's endpoint URL (S3-compatible servers, emulators)
    #[arg(
        long = "store-endpoint-override",
        default_value = "",
        env = "ETCDBR_STORE_ENDPOINT_OVERRIDE",
        hide_default_value = true
    )]
    pub(crate) store_endpoint_override: String,
    /// prefix or directory inside the container under which snapshots are stored
    #[arg(
        long = "store-prefix",
        default_value = "",
        env = "ETCDBR_STORE_PREFIX",
        hide_default_value = true
    )]
    pub(crate) store_prefix: String,
    /// maximum number of parallel chunk uploads allowed
    #[arg(
        long = "max-parallel-chunk-uploads",
        default_value_t = 5,
        env = "ETCDBR_MAX_PARALLEL_CHUNK_UPLOADS"
    )]
    pub(crate) max_parallel_chunk_uploads: usize,
    /// minimum size of a chunk (multipart part) in bytes
    #[arg(
        long = "min-chunk-size",
        default_value_t = 5242880,
        env = "ETCDBR_MIN_CHUNK_SIZE"
    )]
    pub(crate) min_chunk_size: usize,
    /// temporary directory for processing snapshots
    #[arg(
        long = "snapstore-temp-directory",
        default_value = "/tmp",
        env = "ETCDBR_SNAPSTORE_TEMP_DIRECTORY"
    )]
    pub(crate) snapstore_temp_directory: PathBuf,
}

impl SnapstoreArgs {
    /// Whether a store is given (a provider or a container); without one, `initialize` only
    /// validates and `snapshot status|...` read local files.
    pub(crate) fn is_given(&self) -> bool {
        !(self.storage_provider.is_empty() && self.store_container.is_empty())
    }

    /// The store, when one is given.
    pub(crate) fn optional(&self) -> Result<Option<StoreConfig>> {
        self.is_given().then(|| self.try_into()).transpose()
    }
}

impl TryFrom<&SnapstoreArgs> for StoreConfig {
    type Error = Error;

    fn try_from(a: &SnapstoreArgs) -> Result<StoreConfig> {
        let provider: Provider = if a.storage_provider.is_empty() {
            Provider::Local
        } else {
            a.storage_provider
                .parse()
                .map_err(|e: String| Error::config(format!("--storage-provider: {e}")))?
        };
        let c = StoreConfig {
            provider,
            container: a.store_container.clone(),
            endpoint_override: a.store_endpoint_override.clone(),
            prefix: a.store_prefix.clone(),
            max_parallel_chunk_uploads: a.max_parallel_chunk_uploads,
            min_chunk_size: a.min_chunk_size,
            temp_dir: a.snapstore_temp_directory.clone(),
            env_prefix: String::new(),
            credentials: None,
            keys: Keys::default(),
        };
        c.validate()?;
        Ok(c)
    }
}

/// Encryption of what a command writes (etcdbr only).
#[derive(Debug, Args, Clone, Default)]
pub(crate) struct EncryptArgs {
    /// age public keys (age1..., one per line, as `age-keygen -y` prints them) to encrypt every
    /// object written to; several while rotating keys (unset: objects are stored plain)
    #[arg(
        long = "encryption-recipients-file",
        env = "ETCDBR_ENCRYPTION_RECIPIENTS_FILE"
    )]
    pub(crate) recipients_file: Option<PathBuf>,
}

/// Decryption of what a command reads (etcdbr only).
#[derive(Debug, Args, Clone, Default)]
pub(crate) struct DecryptArgs {
    /// age secret keys (AGE-SECRET-KEY-1..., one per line, as `age-keygen` writes them) to
    /// decrypt encrypted objects with; several while rotating keys (plain objects need none)
    #[arg(
        long = "encryption-identity-file",
        env = "ETCDBR_ENCRYPTION_IDENTITY_FILE"
    )]
    pub(crate) identity_file: Option<PathBuf>,
}

impl EncryptArgs {
    /// `store` with the recipients set (read and checked now, so a bad file fails at start).
    pub(crate) fn apply(&self, mut store: StoreConfig) -> Result<StoreConfig> {
        store.keys.recipients = self
            .recipients_file
            .as_deref()
            .map(Recipients::from_file)
            .transpose()?
            .map(Arc::new);
        if let (Some(r), Some(f)) = (&store.keys.recipients, &self.recipients_file) {
            tracing::info!(file = %f.display(), recipients = r.len(), "objects written are encrypted (age)");
        }
        Ok(store)
    }
}

impl DecryptArgs {
    /// The identities of the file, read and checked now (a bad file fails at start).
    fn identities(&self) -> Result<Option<Arc<Identities>>> {
        Ok(self
            .identity_file
            .as_deref()
            .map(Identities::from_file)
            .transpose()?
            .map(Arc::new))
    }

    /// `store` with the identities set.
    pub(crate) fn apply(&self, mut store: StoreConfig) -> Result<StoreConfig> {
        store.keys.identities = self.identities()?;
        Ok(store)
    }

    /// The identities alone (reading local files, without a store).
    pub(crate) fn keys(&self) -> Result<Keys> {
        Ok(Keys {
            recipients: None,
            identities: self.identities()?,
        })
    }
}

#[derive(Debug, Args, Clone)]
pub(crate) struct SnapshotterArgs {
    /// schedule for full snapshots (standard 5-field cron)
    #[arg(
        short = 's',
        long = "schedule",
        default_value = "0 */1 * * *",
        env = "ETCDBR_SCHEDULE"
    )]
    pub(crate) schedule: String,
    /// period after which delta snapshots are persisted; below 1s disables them
    #[arg(long = "delta-snapshot-period", default_value = "20s", value_parser = duration, env = "ETCDBR_DELTA_SNAPSHOT_PERIOD")]
    pub(crate) delta_snapshot_period: Duration,
    /// size of buffered events (bytes) that triggers a delta snapshot at once
    #[arg(
        long = "delta-snapshot-memory-limit",
        default_value_t = 10485760,
        env = "ETCDBR_DELTA_SNAPSHOT_MEMORY_LIMIT"
    )]
    pub(crate) delta_snapshot_memory_limit: u64,
    /// period for garbage collecting old backups; 1s or less disables it
    #[arg(long = "garbage-collection-period", default_value = "1m", value_parser = duration, env = "ETCDBR_GARBAGE_COLLECTION_PERIOD")]
    pub(crate) garbage_collection_period: Duration,
    /// policy for garbage collecting old backups: Exponential or LimitBased
    #[arg(
        long = "garbage-collection-policy",
        default_value = "Exponential",
        env = "ETCDBR_GARBAGE_COLLECTION_POLICY"
    )]
    pub(crate) garbage_collection_policy: String,
    /// maximum number of full snapshots kept by the LimitBased policy
    #[arg(
        short = 'm',
        long = "max-backups",
        default_value_t = 7,
        env = "ETCDBR_MAX_BACKUPS"
    )]
    pub(crate) max_backups: u32,
    /// delta snapshots younger than this are never garbage-collected
    #[arg(long = "delta-snapshot-retention-period", default_value = "0s", value_parser = duration, env = "ETCDBR_DELTA_SNAPSHOT_RETENTION_PERIOD")]
    pub(crate) delta_snapshot_retention_period: Duration,
}

impl SnapshotterArgs {
    /// The full snapshot schedule.
    pub(crate) fn schedule(&self) -> Result<Schedule> {
        Schedule::parse(&self.schedule).map_err(|e| Error::config(format!("--schedule: {e}")))
    }

    /// Garbage collection and its period; `None` when disabled (a period of 1s or less). The
    /// policy is checked even then, as etcdbrctl does.
    pub(crate) fn gc(&self) -> Result<Option<(GcConfig, Duration)>> {
        let cfg = GcConfig {
            policy: Policy::from_flags(&self.garbage_collection_policy, self.max_backups as usize)?,
            delta_retention: self.delta_snapshot_retention_period,
        };
        Ok((self.garbage_collection_period > Duration::from_secs(1))
            .then_some((cfg, self.garbage_collection_period)))
    }

    /// Delta snapshots; `None` when disabled (a period below 1s).
    pub(crate) fn delta(&self, codec: Codec) -> Option<DeltaConfig> {
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
}

#[derive(Debug, Args, Clone)]
pub(crate) struct CompressionArgs {
    /// whether to compress the snapshots
    #[arg(long = "compress-snapshots", default_value = "true", value_parser = go_bool, action = ArgAction::Set,
          num_args = 0..=1, default_missing_value = "true", env = "ETCDBR_COMPRESS_SNAPSHOTS")]
    pub(crate) compress_snapshots: bool,
    /// compression policy: gzip (.gz), zlib (.zlib), lzw (.Z), or zstd (.zst, etcdbr only)
    #[arg(
        long = "compression-policy",
        default_value = "gzip",
        env = "ETCDBR_COMPRESSION_POLICY"
    )]
    pub(crate) compression_policy: String,
    /// etcdbr: gzip and zlib level of full snapshots, 1 (fastest) to 9 (smallest). 1 keeps a
    /// 2-core machine near etcd's stream rate (each full holds a long etcd read); 6 is
    /// etcdbrctl's size (about 20% smaller) at twice the time on 2 cores
    #[arg(
        long = "compression-level",
        default_value_t = 1,
        value_parser = clap::value_parser!(u32).range(1..=9),
        env = "ETCDBR_COMPRESSION_LEVEL"
    )]
    pub(crate) compression_level: u32,
    /// etcdbr: threads compressing a full snapshot with gzip or zlib (independent blocks of one
    /// ordinary stream, as pigz); 0: one per core
    #[arg(
        long = "compression-threads",
        default_value_t = 0,
        env = "ETCDBR_COMPRESSION_THREADS"
    )]
    pub(crate) compression_threads: usize,
}

impl CompressionArgs {
    /// The compression policy (deltas use it too).
    pub(crate) fn codec(&self) -> Result<Codec> {
        Codec::from_flags(self.compress_snapshots, &self.compression_policy)
            .map_err(|e| Error::config(format!("--compression-policy: {e}")))
    }
}

impl TryFrom<&CompressionArgs> for Compression {
    type Error = Error;

    fn try_from(a: &CompressionArgs) -> Result<Compression> {
        Ok(Compression::new(
            a.codec()?,
            a.compression_level,
            a.compression_threads,
        ))
    }
}

#[derive(Debug, Args, Clone)]
pub(crate) struct BackoffArgs {
    /// multiplier of the exponential backoff between snapshotter restarts
    #[arg(
        long = "backoff-multiplier",
        default_value_t = 2,
        env = "ETCDBR_BACKOFF_MULTIPLIER"
    )]
    pub(crate) multiplier: u32,
    /// number of attempts after which the backoff stays at its threshold
    #[arg(
        long = "backoff-attempt-limit",
        default_value_t = 6,
        env = "ETCDBR_BACKOFF_ATTEMPT_LIMIT"
    )]
    pub(crate) attempt_limit: u32,
    /// maximum backoff
    #[arg(long = "backoff-threshold-time", default_value = "128s", value_parser = duration, env = "ETCDBR_BACKOFF_THRESHOLD_TIME")]
    pub(crate) threshold: Duration,
}

impl TryFrom<&BackoffArgs> for Backoff {
    type Error = Error;

    fn try_from(a: &BackoffArgs) -> Result<Backoff> {
        if a.multiplier == 0 {
            return Err(Error::config("--backoff-multiplier must be greater than 0"));
        }
        Ok(Backoff {
            multiplier: a.multiplier,
            attempt_limit: a.attempt_limit,
            threshold: a.threshold,
        })
    }
}

/// The flags of the snapshot job, shared by `snapshot` and `server`.
#[derive(Debug, Args)]
pub(crate) struct JobArgs {
    #[command(flatten)]
    pub(crate) etcd: EtcdConnectionArgs,
    #[command(flatten)]
    pub(crate) store: SnapstoreArgs,
    #[command(flatten)]
    pub(crate) snapshotter: SnapshotterArgs,
    #[command(flatten)]
    pub(crate) compression: CompressionArgs,
    #[command(flatten)]
    pub(crate) encryption: EncryptArgs,
    #[command(flatten)]
    pub(crate) backoff: BackoffArgs,
    /// Schedule of etcd defragmentation (standard 5-field cron).
    #[arg(
        long = "defragmentation-schedule",
        default_value = "0 0 */3 * *",
        env = "ETCDBR_DEFRAGMENTATION_SCHEDULE"
    )]
    pub(crate) defragmentation_schedule: String,
}

impl JobArgs {
    /// The job and the defragmentation schedule.
    pub(crate) fn job(&self) -> Result<(SnapshotJob, Schedule)> {
        let job = SnapshotJob {
            etcd: (&self.etcd).try_into()?,
            store: self.encryption.apply((&self.store).try_into()?)?,
            compression: (&self.compression).try_into()?,
            schedule: self.snapshotter.schedule()?,
            backoff: (&self.backoff).try_into()?,
            gc: self.snapshotter.gc()?,
            delta: self.snapshotter.delta(self.compression.codec()?),
        };
        let defrag = Schedule::parse(&self.defragmentation_schedule)
            .map_err(|e| Error::config(format!("--defragmentation-schedule: {e}")))?;
        Ok((job, defrag))
    }
}

/// etcdbrctl's Restoration group, plus the tools the restore runs.
#[derive(Debug, Args, Clone)]
pub(crate) struct RestorationArgs {
    #[command(flatten)]
    pub(crate) decryption: DecryptArgs,
    /// initial cluster configuration for restore bootstrapping
    #[arg(
        long = "initial-cluster",
        default_value = "default=http://localhost:2380",
        env = "ETCDBR_INITIAL_CLUSTER"
    )]
    pub(crate) initial_cluster: String,
    /// initial cluster token for the etcd cluster during restore bootstrap
    #[arg(
        long = "initial-cluster-token",
        default_value = "etcd-cluster",
        env = "ETCDBR_INITIAL_CLUSTER_TOKEN"
    )]
    pub(crate) initial_cluster_token: String,
    /// path to the data directory
    #[arg(
        short = 'd',
        long = "data-dir",
        default_value = "default.etcd",
        env = "ETCDBR_DATA_DIR"
    )]
    pub(crate) data_dir: PathBuf,
    /// temporary directory for the full snapshot during the restore
    #[arg(
        long = "restoration-temp-snapshots-dir",
        default_value = "default.restoration.tmp",
        env = "ETCDBR_RESTORATION_TEMP_SNAPSHOTS_DIR"
    )]
    pub(crate) temp_dir: PathBuf,
    /// list of this member's peer URLs to advertise to the rest of the cluster
    #[arg(
        long = "initial-advertise-peer-urls",
        default_value = "http://localhost:2380",
        value_delimiter = ',',
        env = "ETCDBR_INITIAL_ADVERTISE_PEER_URLS"
    )]
    pub(crate) initial_advertise_peer_urls: Vec<String>,
    /// human-readable name for this member
    #[arg(long = "name", default_value = "default", env = "ETCDBR_NAME")]
    pub(crate) name: String,
    /// ignore the snapshot integrity hash value (required if copied from a data directory)
    #[arg(long = "skip-hash-check", default_value = "false", value_parser = go_bool, action = ArgAction::Set,
          num_args = 0..=1, default_missing_value = "true", env = "ETCDBR_SKIP_HASH_CHECK")]
    pub(crate) skip_hash_check: bool,
    /// number of deltas fetched in parallel
    #[arg(
        long = "max-fetchers",
        default_value_t = 6,
        env = "ETCDBR_MAX_FETCHERS"
    )]
    pub(crate) max_fetchers: usize,
    /// maximum size of a message the client sends to the temporary etcd
    #[arg(
        long = "max-call-send-message-size",
        default_value_t = 10485760,
        env = "ETCDBR_MAX_CALL_SEND_MESSAGE_SIZE"
    )]
    pub(crate) max_call_send_message_size: u64,
    /// maximum client request size the temporary etcd accepts
    #[arg(
        long = "max-request-bytes",
        default_value_t = 10485760,
        env = "ETCDBR_MAX_REQUEST_BYTES"
    )]
    pub(crate) max_request_bytes: u64,
    /// maximum operations per transaction the temporary etcd accepts
    #[arg(
        long = "max-txn-ops",
        default_value_t = 10240,
        env = "ETCDBR_MAX_TXN_OPS"
    )]
    pub(crate) max_txn_ops: u32,
    /// backend quota of the temporary etcd
    #[arg(
        long = "embedded-etcd-quota-bytes",
        default_value_t = 8589934592,
        env = "ETCDBR_EMBEDDED_ETCD_QUOTA_BYTES"
    )]
    pub(crate) quota_bytes: u64,
    /// auto compaction mode of the temporary etcd (accepted; the replay never compacts)
    #[arg(
        long = "auto-compaction-mode",
        default_value = "periodic",
        env = "ETCDBR_AUTO_COMPACTION_MODE"
    )]
    pub(crate) auto_compaction_mode: String,
    /// auto compaction retention of the temporary etcd (accepted; the replay never compacts)
    #[arg(
        long = "auto-compaction-retention",
        default_value = "30m",
        env = "ETCDBR_AUTO_COMPACTION_RETENTION"
    )]
    pub(crate) auto_compaction_retention: String,
    /// etcdbr: the etcd binary that replays the deltas (default: etcd on PATH)
    #[arg(long = "etcd-binary", env = "ETCDBR_ETCD_BINARY")]
    pub(crate) etcd_binary: Option<PathBuf>,
    /// etcdbr: etcd's restore tool, etcdutl (3.5+) or etcdctl (3.4) (default: etcdutl, else etcdctl, on PATH)
    #[arg(long = "etcd-restore-tool", env = "ETCDBR_ETCD_RESTORE_TOOL")]
    pub(crate) etcd_restore_tool: Option<PathBuf>,
    /// etcdbr: TTL (seconds) of leases first seen in deltas that do not record theirs (etcdbrctl's)
    #[arg(
        long = "default-lease-ttl",
        default_value_t = 3600,
        env = "ETCDBR_DEFAULT_LEASE_TTL"
    )]
    pub(crate) default_lease_ttl: i64,
    /// etcdbr: how the deltas reach the temporary etcd: `wal` (appended to the restored WAL as
    /// committed entries, applied by etcd as it starts; fast) or `api` (Txn requests)
    #[arg(
        long = "replay-method",
        value_enum,
        default_value = "wal",
        env = "ETCDBR_REPLAY_METHOD"
    )]
    pub(crate) replay_method: crate::restore::replay::Method,
    /// etcdbr: when revisions are missing from the backups, restore up to the last revision
    /// before the gap (logged as a warning) instead of failing
    #[arg(long = "stop-at-gap", env = "ETCDBR_STOP_AT_GAP")]
    pub(crate) stop_at_gap: bool,
    /// etcdbr: restore a point older than the store's newest backup without --bump-revision:
    /// the result must not be backed up to the same store prefix (its revisions would repeat
    /// ones the store holds for other data); for inspection
    #[arg(long = "allow-rewind", env = "ETCDBR_ALLOW_REWIND")]
    pub(crate) allow_rewind: bool,
    /// etcdbr: a delta larger than this once decompressed is refused as damaged (deltas are
    /// read as a stream, so memory does not grow with their size)
    #[arg(
        long = "max-delta-bytes",
        default_value_t = 1 << 30,
        env = "ETCDBR_MAX_DELTA_BYTES"
    )]
    pub(crate) max_delta_bytes: u64,
    /// etcdbr: data directories replaced by an initialization are moved aside to
    /// <data-dir>.invalid-<unix time>, a way back; this many are kept, the oldest removed first
    /// (0: removed once the restored one is in place; one with no backup replacing it is
    /// always kept)
    #[arg(
        long = "keep-invalid-data-dirs",
        default_value_t = 1,
        env = "ETCDBR_KEEP_INVALID_DATA_DIRS"
    )]
    pub(crate) keep_invalid_data_dirs: usize,
    /// etcdbr: restore the state at this revision instead of the latest
    #[arg(long = "to-revision", env = "ETCDBR_TO_REVISION", conflicts_with_all = ["to_time", "snapshot"])]
    pub(crate) to_revision: Option<i64>,
    /// etcdbr: restore the state at this time (RFC 3339, e.g. 2026-11-21T10:00:00Z)
    #[arg(long = "to-time", env = "ETCDBR_TO_TIME", conflicts_with = "snapshot")]
    pub(crate) to_time: Option<String>,
    /// etcdbr: restore exactly up to this snapshot (a full alone, or a delta with its chain)
    #[arg(long = "snapshot", env = "ETCDBR_SNAPSHOT")]
    pub(crate) snapshot: Option<String>,
    /// etcdutl's: add this to the restored revision, so that it is past any revision clients
    /// saw (Kubernetes: 1000000000 covers a week at 1,500 writes/s)
    #[arg(
        long = "bump-revision",
        default_value_t = 0,
        env = "ETCDBR_BUMP_REVISION"
    )]
    pub(crate) bump_revision: i64,
    /// etcdutl's: mark every revision up to the bumped one compacted, so that watches and lists
    /// at older revisions fail with "compacted" and clients (kube-apiserver caches) relist
    #[arg(long = "mark-compacted", env = "ETCDBR_MARK_COMPACTED")]
    pub(crate) mark_compacted: bool,
}

impl RestorationArgs {
    /// The initializer's configuration: the store is optional (no provider and no container:
    /// validation only).
    pub(crate) fn init_config(
        &self,
        store: Option<StoreConfig>,
        store_args: &SnapstoreArgs,
        mode: crate::initialize::validate::Mode,
        cluster: Option<EtcdConfig>,
    ) -> Result<crate::initialize::InitConfig> {
        let has_store = store.is_some();
        let store_cfg = store.unwrap_or_else(|| StoreConfig {
            provider: Provider::Local,
            container: String::new(),
            endpoint_override: String::new(),
            prefix: String::new(),
            max_parallel_chunk_uploads: 1,
            min_chunk_size: store_args.min_chunk_size,
            temp_dir: store_args.snapstore_temp_directory.clone(),
            env_prefix: String::new(),
            credentials: None,
            keys: Keys::default(),
        });
        Ok(crate::initialize::InitConfig {
            restore: self.restore_config(store_cfg)?,
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

    /// The restore's configuration, validated.
    pub(crate) fn restore_config(&self, store: StoreConfig) -> Result<RestoreConfig> {
        // accepted for compatibility, not used: the temporary etcd never compacts
        if !matches!(self.auto_compaction_mode.as_str(), "periodic" | "revision") {
            return Err(Error::config(
                "--auto-compaction-mode must be periodic or revision",
            ));
        }
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
        let cfg = RestoreConfig {
            store: self.decryption.apply(store)?,
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
        };
        cfg.validate()?;
        Ok(cfg)
    }
}

/// etcdbrctl's Kubernetes lease renewal (Health group): accepted so that existing StatefulSets
/// keep starting; renewal itself is not available in this build (a warning says so).
#[derive(Debug, Args, Clone)]
pub(crate) struct K8sLeaseArgs {
    /// renew the full/delta snapshot leases (not available in etcdbr; ignored with a warning)
    #[arg(long = "enable-snapshot-lease-renewal", default_value = "false", value_parser = go_bool, action = ArgAction::Set,
          num_args = 0..=1, default_missing_value = "true", env = "ETCDBR_ENABLE_SNAPSHOT_LEASE_RENEWAL")]
    pub(crate) snapshot_lease_renewal: bool,
    /// renew the member lease (not available in etcdbr; ignored with a warning)
    #[arg(long = "enable-member-lease-renewal", default_value = "false", value_parser = go_bool, action = ArgAction::Set,
          num_args = 0..=1, default_missing_value = "true", env = "ETCDBR_ENABLE_MEMBER_LEASE_RENEWAL")]
    pub(crate) member_lease_renewal: bool,
    /// heartbeat period of the member lease
    #[arg(long = "k8s-heartbeat-duration", default_value = "30s", value_parser = duration, env = "ETCDBR_K8S_HEARTBEAT_DURATION")]
    pub(crate) heartbeat: Duration,
    /// name of the full snapshot lease
    #[arg(
        long = "full-snapshot-lease-name",
        default_value = "full-snapshot-revisions",
        env = "ETCDBR_FULL_SNAPSHOT_LEASE_NAME"
    )]
    pub(crate) full_lease: String,
    /// name of the delta snapshot lease
    #[arg(
        long = "delta-snapshot-lease-name",
        default_value = "delta-snapshot-revisions",
        env = "ETCDBR_DELTA_SNAPSHOT_LEASE_NAME"
    )]
    pub(crate) delta_lease: String,
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
}
