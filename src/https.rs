//! HTTPS for the sidecar's own API (`--server-cert`, `--server-key`): the TLS configuration;
//! the handshake runs per connection in [`crate::listener`].

use crate::error::{Error, Result};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use std::sync::Arc;
use tokio_rustls::TlsAcceptor;

/// Loads a PEM certificate chain and private key into a TLS acceptor (HTTP/1.1 only, as the
/// server).
pub fn acceptor(cert: &str, key: &str) -> Result<TlsAcceptor> {
    let bad =
        |what: &str, path: &str, e: String| Error::config(format!("--server-{what} {path}: {e}"));
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .map_err(|e| bad("cert", cert, e.to_string()))?
        .collect::<std::result::Result<_, _>>()
        .map_err(|e| bad("cert", cert, e.to_string()))?;
    if certs.is_empty() {
        return Err(bad("cert", cert, "no PEM certificate in the file".into()));
    }
    let key = PrivateKeyDer::from_pem_file(key).map_err(|e| bad("key", key, e.to_string()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::config(format!("TLS: {e}")))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| Error::config(format!("--server-cert/--server-key do not fit: {e}")))?;
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(cfg)))
}
