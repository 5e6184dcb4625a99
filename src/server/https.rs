//! HTTPS for the sidecar's own API (`--server-cert`, `--server-key`, `--server-client-ca`): the
//! TLS configuration, re-read when its files change (a cert-manager renewal or a Secret update
//! needs no restart); the handshake runs per connection in [`crate::server::listener`].

use crate::error::{Error, Result};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The files of the API's TLS configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct TlsFiles {
    pub(crate) cert: PathBuf,
    pub(crate) key: PathBuf,
    /// `--server-client-ca`: client certificates signed by it are verified (and then
    /// authenticate the request, module `auth`); connections without one are still served,
    /// and the request needs a token or an open path instead.
    pub(crate) client_ca: Option<PathBuf>,
}

/// How often the files are looked at (by the first handshake after the interval).
const RECHECK: Duration = Duration::from_secs(1);

/// A file's identity and version: a rename over it (Kubernetes' Secret update swaps a symlink)
/// or a rewrite in place changes one of these.
type Stamp = Option<(u64, u64, u64, i64, i64)>;

fn stamp(path: &std::path::Path) -> Stamp {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path)
        .ok()
        .map(|m| (m.dev(), m.ino(), m.len(), m.mtime(), m.mtime_nsec()))
}

struct Current {
    stamps: Vec<Stamp>,
    config: Arc<rustls::ServerConfig>,
    checked: Instant,
    /// The stamps of a change that did not load (logged once, retried when they change).
    refused: Option<Vec<Stamp>>,
}

/// The TLS server configuration, reloaded when its files change. A change that does not load
/// (a certificate renewed before its key is written, a key that does not fit) keeps the previous
/// configuration, with a warning, until the files change again.
pub(crate) struct TlsReloader {
    files: TlsFiles,
    current: Mutex<Current>,
}

impl TlsReloader {
    /// Loads the files; an error here is a configuration error at start-up.
    pub(crate) fn new(files: TlsFiles) -> Result<Self> {
        let stamps = files.stamps();
        let config = load(&files)?;
        Ok(TlsReloader {
            files,
            current: Mutex::new(Current {
                stamps,
                config,
                checked: Instant::now(),
                refused: None,
            }),
        })
    }

    /// The configuration for a new connection.
    pub(crate) fn config(&self) -> Arc<rustls::ServerConfig> {
        let mut cur = self.current.lock().unwrap_or_else(|p| p.into_inner());
        if cur.checked.elapsed() >= RECHECK {
            cur.checked = Instant::now();
            let stamps = self.files.stamps();
            if stamps != cur.stamps && cur.refused.as_ref() != Some(&stamps) {
                match load(&self.files) {
                    Ok(config) => {
                        tracing::info!(cert = %self.files.cert.display(), "the API's TLS certificate, key or client CA changed: reloaded");
                        cur.config = config;
                        cur.stamps = stamps;
                        cur.refused = None;
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "the API's TLS files changed but do not load; serving with the previous ones until they change again");
                        cur.refused = Some(stamps);
                    }
                }
            }
        }
        cur.config.clone()
    }
}

impl TlsFiles {
    fn stamps(&self) -> Vec<Stamp> {
        let mut v = vec![stamp(&self.cert), stamp(&self.key)];
        if let Some(ca) = &self.client_ca {
            v.push(stamp(ca));
        }
        v
    }
}

fn certs(flag: &str, path: &std::path::Path) -> Result<Vec<CertificateDer<'static>>> {
    let bad = |e: String| Error::config(format!("{flag} {}: {e}", path.display()));
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
        .map_err(|e| bad(e.to_string()))?
        .collect::<std::result::Result<_, _>>()
        .map_err(|e| bad(e.to_string()))?;
    if certs.is_empty() {
        return Err(bad("no PEM certificate in the file".into()));
    }
    Ok(certs)
}

/// Builds the server configuration (HTTP/1.1 only) from the files.
fn load(files: &TlsFiles) -> Result<Arc<rustls::ServerConfig>> {
    let chain = certs("--server-cert", &files.cert)?;
    let key = PrivateKeyDer::from_pem_file(&files.key)
        .map_err(|e| Error::config(format!("--server-key {}: {e}", files.key.display())))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::config(format!("TLS: {e}")))?;
    let builder = match &files.client_ca {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            for c in certs("--server-client-ca", ca)? {
                roots.add(c).map_err(|e| {
                    Error::config(format!("--server-client-ca {}: {e}", ca.display()))
                })?;
            }
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots),
                provider,
            )
            // no certificate: the request may still carry a token or ask for an open path
            .allow_unauthenticated()
            .build()
            .map_err(|e| Error::config(format!("--server-client-ca {}: {e}", ca.display())))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut cfg = builder
        .with_single_cert(chain, key)
        .map_err(|e| Error::config(format!("--server-cert/--server-key do not fit: {e}")))?;
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(cfg))
}
