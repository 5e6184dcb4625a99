//! `etcdbrctl server`: the sidecar (HTTP API, initialization, and on the etcd leader's sidecar
//! the snapshot job, garbage collection and defragmentation).

use super::options::{duration, go_bool, JobArgs, K8sLeaseArgs, RestorationArgs};
use super::{shutdown_signal, PrintKeys};
use crate::error::{Error, Result};
use crate::initialize::validate::Mode;
use crate::schedule::Schedule;
use crate::server::auth::AuthConfig;
use crate::server::etcdconf;
use crate::server::https::TlsFiles;
use crate::server::ServerConfig;
use crate::store::{Provider, StoreConfig};
use clap::{ArgAction, Args};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// Run the sidecar.
#[derive(Debug, Args)]
pub(crate) struct ServerCmd {
    #[command(flatten)]
    pub(crate) job: JobArgs,
    /// port on which the HTTP server listens
    #[arg(
        short = 'p',
        long = "server-port",
        default_value_t = 8080,
        env = "ETCDBR_SERVER_PORT"
    )]
    pub(crate) server_port: u16,
    /// etcdbr: minimum time between two on-demand full snapshots (`/snapshot/full`); a request
    /// sooner gets 429 with Retry-After. Concurrent requests always share one snapshot. 0: no
    /// minimum (etcdbrctl's)
    #[arg(
        long = "on-demand-full-min-interval",
        default_value = "0s",
        value_parser = duration,
        env = "ETCDBR_ON_DEMAND_FULL_MIN_INTERVAL"
    )]
    pub(crate) on_demand_full_min_interval: std::time::Duration,
    /// Schedule of restore drills on the leader's sidecar (cron; empty: none): the latest
    /// snapshot set restored into a temporary directory below --restoration-temp-snapshots-dir
    /// and compared with etcd's HashKV (`etcdbrctl verify --restore` by hand)
    #[arg(
        long = "verify-schedule",
        default_value = "",
        env = "ETCDBR_VERIFY_SCHEDULE"
    )]
    pub(crate) verify_schedule: String,
    /// address on which the HTTP server listens (etcdbr; empty: all interfaces)
    #[arg(
        long = "server-host",
        default_value = "",
        env = "ETCDBR_SERVER_HOST",
        hide_default_value = true
    )]
    pub(crate) server_host: String,
    /// enable /debug/pprof (not available in etcdbr; accepted for compatibility)
    #[arg(long = "enable-profiling", default_value = "false", value_parser = go_bool, action = ArgAction::Set,
          num_args = 0..=1, default_missing_value = "true", env = "ETCDBR_ENABLE_PROFILING")]
    pub(crate) enable_profiling: bool,
    /// TLS certificate of the HTTP server
    #[arg(
        long = "server-cert",
        default_value = "",
        env = "ETCDBR_SERVER_CERT",
        hide_default_value = true
    )]
    pub(crate) server_cert: String,
    /// TLS key of the HTTP server
    #[arg(
        long = "server-key",
        default_value = "",
        env = "ETCDBR_SERVER_KEY",
        hide_default_value = true
    )]
    pub(crate) server_key: String,
    /// etcdbr: HTTPS requests may authenticate with a client certificate signed by this CA
    /// (PEM); re-read when it changes. With --server-token-file, either credential is enough
    #[arg(
        long = "server-client-ca",
        default_value = "",
        env = "ETCDBR_SERVER_CLIENT_CA",
        hide_default_value = true
    )]
    pub(crate) server_client_ca: String,
    /// etcdbr: requests must carry `Authorization: Bearer <token>`, a token being any
    /// non-empty line of this file; re-read when it changes (rotation without restart)
    #[arg(
        long = "server-token-file",
        default_value = "",
        env = "ETCDBR_SERVER_TOKEN_FILE",
        hide_default_value = true
    )]
    pub(crate) server_token_file: String,
    /// etcdbr: comma-separated paths served without credentials when --server-token-file or
    /// --server-client-ca is set (empty: none)
    #[arg(
        long = "server-open-paths",
        default_value = crate::server::auth::DEFAULT_OPEN_PATHS,
        env = "ETCDBR_SERVER_OPEN_PATHS"
    )]
    pub(crate) server_open_paths: String,
    /// period after which this sidecar checks again whether its etcd member leads
    #[arg(long = "reelection-period", default_value = "5s", value_parser = duration, env = "ETCDBR_REELECTION_PERIOD")]
    pub(crate) reelection_period: Duration,
    /// timeout of the leadership check against etcd
    #[arg(long = "etcd-connection-timeout-leader-election", default_value = "5s", value_parser = duration,
          env = "ETCDBR_ETCD_CONNECTION_TIMEOUT_LEADER_ELECTION")]
    pub(crate) leader_election_timeout: Duration,
    /// restart etcd through etcd-wrapper when its peer URL changed (not available in etcdbr)
    #[arg(long = "use-etcd-wrapper", default_value = "false", value_parser = go_bool, action = ArgAction::Set,
          num_args = 0..=1, default_missing_value = "true", env = "ETCDBR_USE_ETCD_WRAPPER")]
    pub(crate) use_etcd_wrapper: bool,
    /// the etcd configuration file that /config rewrites for this member
    #[arg(
        long = "etcd-config",
        default_value = "/var/etcd/config/etcd.conf.yaml",
        env = "ETCD_CONF"
    )]
    pub(crate) etcd_config: PathBuf,
    /// What /initialization/start restores with (etcdbrctl's Restoration group).
    #[command(flatten)]
    pub(crate) restoration: RestorationArgs,
    #[command(flatten)]
    pub(crate) k8s: K8sLeaseArgs,
}

impl ServerCmd {
    pub(crate) async fn run(self) -> Result<()> {
        let cfg = self.server_config()?;
        crate::server::run(cfg, shutdown_signal(), Arc::new(PrintKeys)).await
    }

    /// The server's configuration, validated.
    fn server_config(self) -> Result<ServerConfig> {
        let s = self;
        let (job, defrag_schedule) = s.job.job()?;
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
        let tls = (!s.server_cert.is_empty()).then(|| TlsFiles {
            cert: s.server_cert.clone().into(),
            key: s.server_key.clone().into(),
            client_ca: opt_path(&s.server_client_ca),
        });
        let auth = AuthConfig {
            token_file: opt_path(&s.server_token_file),
            client_ca: opt_path(&s.server_client_ca),
            open_paths: AuthConfig::parse_open_paths(&s.server_open_paths)?,
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
        if let Ok(conf) = etcdconf::read(&s.etcd_config) {
            for u in etcdconf::other_client_urls(&conf, &s.restoration.name) {
                if !others.contains(&u) {
                    others.push(u);
                }
            }
        }
        if !others.is_empty() {
            cluster.endpoints = others;
        }
        warn_if_store_shares_the_data_volume(&job.store, &s.restoration.data_dir);
        let store = s.job.store.is_given().then(|| job.store.clone());
        let init = s
            .restoration
            .init_config(store, &s.job.store, Mode::Full, Some(cluster))?;
        // moved-aside data directories from earlier initializations, visible before the next one
        crate::metrics::set_invalid_data_dirs(
            crate::ondisk::datadir::invalid_dirs(&init.restore.data_dir).len(),
        );
        let cfg = ServerConfig {
            job,
            host: s.server_host,
            full_min_interval: s.on_demand_full_min_interval,
            verify_schedule: (!s.verify_schedule.trim().is_empty())
                .then(|| Schedule::parse(&s.verify_schedule))
                .transpose()
                .map_err(|e| Error::config(format!("--verify-schedule: {e}")))?,
            port: s.server_port,
            reelection_period: s.reelection_period,
            leader_election_timeout: s.leader_election_timeout,
            defrag_schedule,
            init,
            etcd_config: s.etcd_config,
            tls,
            auth,
        };
        cfg.validate()?;
        Ok(cfg)
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
