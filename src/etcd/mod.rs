//! Connecting to etcd from the EtcdConnection flags, and bounded calls with clear errors.

pub mod cluster;
pub mod defrag;
pub mod leader;

use crate::error::{Error, Result};
use etcd_client::{Certificate, Client, ConnectOptions, Identity, TlsOptions};
use std::future::Future;
use std::time::Duration;

#[derive(Clone)]
pub(crate) struct EtcdConfig {
    pub(crate) endpoints: Vec<String>,
    pub(crate) username: String,
    pub(crate) password: String,
    pub(crate) connection_timeout: Duration,
    pub(crate) snapshot_timeout: Duration,
    pub(crate) defrag_timeout: Duration,
    pub(crate) insecure_transport: bool,
    pub(crate) insecure_skip_tls_verify: bool,
    pub(crate) cert: String,
    pub(crate) key: String,
    pub(crate) cacert: String,
    /// The cluster's client endpoints for member operations (`--service-endpoints`); empty:
    /// taken from the etcd configuration's `advertise-client-urls`, else `endpoints`.
    pub(crate) service_endpoints: Vec<String>,
}

/// The password is never printed.
impl std::fmt::Debug for EtcdConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdConfig")
            .field("endpoints", &self.endpoints)
            .field("username", &self.username)
            .field(
                "password",
                &if self.password.is_empty() {
                    ""
                } else {
                    "<redacted>"
                },
            )
            .field("connection_timeout", &self.connection_timeout)
            .field("insecure_transport", &self.insecure_transport)
            .field("cert", &self.cert)
            .field("cacert", &self.cacert)
            .field("service_endpoints", &self.service_endpoints)
            .finish_non_exhaustive()
    }
}

impl EtcdConfig {
    /// One plain-HTTP endpoint without credentials (a temporary etcd on loopback), every
    /// timeout `timeout`.
    pub(crate) fn plain(endpoint: String, timeout: Duration) -> EtcdConfig {
        EtcdConfig {
            endpoints: vec![endpoint],
            username: String::new(),
            password: String::new(),
            connection_timeout: timeout,
            snapshot_timeout: timeout,
            defrag_timeout: timeout,
            insecure_transport: true,
            insecure_skip_tls_verify: false,
            cert: String::new(),
            key: String::new(),
            cacert: String::new(),
            service_endpoints: Vec::new(),
        }
    }

    /// Checks the values no connection can work with; called once, where the configuration
    /// is built from the command line.
    pub(crate) fn validate(&self) -> Result<()> {
        if self.endpoints.is_empty() || self.endpoints.iter().any(|e| e.trim().is_empty()) {
            return Err(Error::config(
                "--endpoints must name at least one etcd endpoint",
            ));
        }
        for e in &self.endpoints {
            let u = url::Url::parse(e).map_err(|err| {
                Error::config(format!(
                    "--endpoints: {e:?} is not a URL ({err}); expected e.g. http://127.0.0.1:2379"
                ))
            })?;
            if u.scheme() != "http" && u.scheme() != "https" {
                return Err(Error::config(format!(
                    "--endpoints: {e:?} must use http:// or https://"
                )));
            }
        }
        if self.connection_timeout > self.snapshot_timeout {
            return Err(Error::config(
                "--etcd-connection-timeout must not be longer than --etcd-snapshot-timeout",
            ));
        }
        if self.cert.is_empty() != self.key.is_empty() {
            return Err(Error::config("--cert and --key must be given together"));
        }
        Ok(())
    }

    /// The endpoint used for snapshots and status: etcd serves a snapshot from one member, and
    /// the revision read before it must come from the same member.
    pub(crate) fn primary(&self) -> &str {
        self.endpoints
            .first()
            .map(String::as_str)
            .unwrap_or("http://127.0.0.1:2379")
    }
}

fn read_file(path: &str, what: &str) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|e| Error::io(path, format!("read the {what}"), e))
}

/// A client for member operations: the first of `endpoints` that answers a member list, with
/// that list.
pub(crate) async fn connect_cluster(
    cfg: &EtcdConfig,
    endpoints: &[String],
) -> Result<(Client, String, etcd_client::MemberListResponse)> {
    let mut last = None;
    for ep in endpoints {
        match connect_one(cfg, ep).await {
            Ok(mut c) => {
                match call(ep, "member list", cfg.connection_timeout, c.member_list()).await {
                    Ok(list) => return Ok((c, ep.clone(), list)),
                    Err(e) => last = Some(e),
                }
            }
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| {
        Error::config("no etcd endpoint to reach the cluster (give --service-endpoints)")
    }))
}

/// A client bound to one endpoint (see [`EtcdConfig::primary`]).
pub(crate) async fn connect_one(cfg: &EtcdConfig, endpoint: &str) -> Result<Client> {
    let mut opts = ConnectOptions::new()
        .with_connect_timeout(cfg.connection_timeout)
        .with_keep_alive(Duration::from_secs(10), Duration::from_secs(10));
    if !cfg.username.is_empty() && !cfg.password.is_empty() {
        opts = opts.with_user(cfg.username.clone(), cfg.password.clone());
    }
    // As etcdbrctl: TLS when the scheme, certificates or --insecure-transport=false ask for it.
    let tls_wanted = endpoint.starts_with("https://")
        || !cfg.cacert.is_empty()
        || !cfg.cert.is_empty()
        || !cfg.insecure_transport;
    let endpoint = if tls_wanted {
        endpoint.replacen("http://", "https://", 1)
    } else {
        endpoint.to_string()
    };
    if tls_wanted {
        let mut tls = TlsOptions::new();
        if !cfg.cacert.is_empty() {
            tls = tls.ca_certificate(Certificate::from_pem(read_file(
                &cfg.cacert,
                "CA certificate (--cacert)",
            )?));
        }
        if !cfg.cert.is_empty() {
            let cert = read_file(&cfg.cert, "client certificate (--cert)")?;
            let key = read_file(&cfg.key, "client key (--key)")?;
            tls = tls.identity(Identity::from_pem(cert, key));
        }
        if cfg.insecure_skip_tls_verify && cfg.cacert.is_empty() {
            tracing::warn!("--insecure-skip-tls-verify is not supported; the server certificate is verified against the system roots (give --cacert)");
        }
        opts = opts.with_tls(tls);
    }
    let what = "connect";
    call(
        &endpoint,
        what,
        cfg.connection_timeout,
        Client::connect([endpoint.as_str()], Some(opts)),
    )
    .await
}

/// Runs an etcd call with a timeout; the error names the endpoint and the call.
pub(crate) async fn call<T, F>(endpoint: &str, what: &str, timeout: Duration, fut: F) -> Result<T>
where
    F: Future<Output = std::result::Result<T, etcd_client::Error>>,
{
    call_until(endpoint, what, tokio::time::Instant::now() + timeout, fut).await
}

/// Like [`call`], with a deadline shared by several calls (e.g. a whole snapshot stream).
pub(crate) async fn call_until<T, F>(
    endpoint: &str,
    what: &str,
    deadline: tokio::time::Instant,
    fut: F,
) -> Result<T>
where
    F: Future<Output = std::result::Result<T, etcd_client::Error>>,
{
    let secs = deadline
        .saturating_duration_since(tokio::time::Instant::now())
        .as_secs();
    match tokio::time::timeout_at(deadline, fut).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(source)) => Err(Error::Etcd {
            endpoint: endpoint.to_string(),
            what: what.to_string(),
            source,
        }),
        Err(_) => Err(Error::EtcdTimeout {
            endpoint: endpoint.to_string(),
            what: what.to_string(),
            secs,
        }),
    }
}
