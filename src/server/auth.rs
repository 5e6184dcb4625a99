//! Who may call the API. etcdbrctl serves anyone who reaches its port; `/initialization/start`
//! can remove a member and move its data away, and a burst of `/snapshot/full` holds etcd in
//! long read transactions. Two credentials, either of which is enough:
//!
//! * `--server-token-file`: `Authorization: Bearer <token>`, one valid token per non-empty
//!   line (two lines during a rotation); the file is re-read when it changes (a Secret update
//!   needs no restart) and tokens are compared in constant time, as SHA-256 digests so that
//!   not even their length leaks;
//! * `--server-client-ca`: a client certificate verified during the TLS handshake (module
//!   `https`; flag [`crate::server::listener::ClientCertVerified`]).
//!
//! Paths in `--server-open-paths` (default `/healthz,/metrics`: probes and scrapers) need
//! neither. A refusal is 401 without credentials, 403 with a wrong token, a one-line reason
//! that never repeats what was sent, and a count in `etcdbr_api_requests_refused_total`.

use crate::error::{Error, Result};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use subtle::ConstantTimeEq;

/// The default of `--server-open-paths`.
pub(crate) const DEFAULT_OPEN_PATHS: &str = "/healthz,/metrics";

/// A token file larger than this is not a token file.
const MAX_TOKEN_FILE: u64 = 64 * 1024;

#[derive(Debug, Clone, Default)]
pub(crate) struct AuthConfig {
    pub(crate) token_file: Option<PathBuf>,
    pub(crate) client_ca: Option<PathBuf>,
    pub(crate) open_paths: Vec<String>,
}

impl AuthConfig {
    pub(crate) fn enabled(&self) -> bool {
        self.token_file.is_some() || self.client_ca.is_some()
    }

    /// `--server-open-paths`: comma-separated absolute paths; empty: none.
    pub(crate) fn parse_open_paths(s: &str) -> Result<Vec<String>> {
        let mut v = Vec::new();
        for p in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            if !p.starts_with('/') {
                return Err(Error::config(format!(
                    "--server-open-paths: {p:?} is not a path (it must start with /, e.g. /healthz)"
                )));
            }
            v.push(p.to_string());
        }
        Ok(v)
    }
}

type Digest32 = [u8; 32];

fn digest(token: &[u8]) -> Digest32 {
    Sha256::digest(token).into()
}

/// The tokens of the file as last read, and what the file looked like then.
struct Tokens {
    stamp: Option<(u64, u64, u64, i64, i64)>,
    digests: Vec<Digest32>,
    checked: Instant,
}

pub(crate) struct Guard {
    cfg: AuthConfig,
    tokens: Mutex<Tokens>,
    last_warning: Mutex<Option<Instant>>,
}

fn file_stamp(path: &Path) -> Option<(u64, u64, u64, i64, i64)> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path)
        .ok()
        .map(|m| (m.dev(), m.ino(), m.len(), m.mtime(), m.mtime_nsec()))
}

/// The digests of the file's tokens (its non-empty lines, trimmed). Symlinks are followed:
/// a Kubernetes Secret volume is a tree of them.
fn read_tokens(path: &Path) -> Result<Vec<Digest32>> {
    use std::io::Read;
    let f = std::fs::File::open(path).map_err(|e| Error::io(path, "open the token file", e))?;
    let mut text = String::new();
    f.take(MAX_TOKEN_FILE + 1)
        .read_to_string(&mut text)
        .map_err(|e| Error::io(path, "read the token file (UTF-8 text)", e))?;
    if text.len() as u64 > MAX_TOKEN_FILE {
        return Err(Error::config(format!(
            "--server-token-file {}: larger than {MAX_TOKEN_FILE} bytes: not a token file",
            path.display()
        )));
    }
    let digests: Vec<Digest32> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(|l| digest(l.as_bytes()))
        .collect();
    if digests.is_empty() {
        return Err(Error::config(format!(
            "--server-token-file {}: no token in the file (one token per line)",
            path.display()
        )));
    }
    Ok(digests)
}

/// Why a request was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refusal {
    NoCredentials,
    WrongToken,
}

impl Guard {
    /// Checks the configuration (a token file that does not read is an error at start-up).
    pub(crate) fn new(cfg: AuthConfig) -> Result<Self> {
        let (stamp, digests) = match &cfg.token_file {
            Some(p) => {
                let stamp = file_stamp(p);
                (stamp, read_tokens(p)?)
            }
            None => (None, Vec::new()),
        };
        if let Some(p) = &cfg.token_file {
            warn_if_readable_by_others(p);
        }
        Ok(Guard {
            cfg,
            tokens: Mutex::new(Tokens {
                stamp,
                digests,
                checked: Instant::now(),
            }),
            last_warning: Mutex::new(None),
        })
    }

    /// Whether `presented` is the digest of a valid token now, every digest compared in
    /// constant time whichever matches. The file is looked at again when a second has passed,
    /// and re-read when it changed; a file that no longer reads accepts no token (a token
    /// revoked by emptying the file must stop working).
    fn accepts(&self, presented: &Digest32) -> bool {
        let Some(path) = &self.cfg.token_file else {
            return false;
        };
        let mut t = self.tokens.lock().unwrap_or_else(|p| p.into_inner());
        if t.checked.elapsed() >= Duration::from_secs(1) {
            t.checked = Instant::now();
            let stamp = file_stamp(path);
            if stamp != t.stamp {
                t.stamp = stamp;
                match read_tokens(path) {
                    Ok(d) => {
                        tracing::info!(file = %path.display(), tokens = d.len(), "the API token file changed: re-read");
                        t.digests = d;
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "the API token file changed and holds no usable token: every request that needs one is refused until it does");
                        t.digests.clear();
                    }
                }
            }
        }
        let mut ok = subtle::Choice::from(0u8);
        for d in &t.digests {
            ok |= d.ct_eq(presented);
        }
        bool::from(ok)
    }

    /// `Ok` when the request may go on.
    pub(crate) fn check(
        &self,
        path: &str,
        headers: &axum::http::HeaderMap,
        cert_verified: bool,
    ) -> std::result::Result<(), Refusal> {
        if !self.cfg.enabled() || self.cfg.open_paths.iter().any(|p| p == path) {
            return Ok(());
        }
        if cert_verified && self.cfg.client_ca.is_some() {
            return Ok(());
        }
        let bearer = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| {
                let (scheme, rest) = v.trim().split_once(' ')?;
                scheme
                    .eq_ignore_ascii_case("bearer")
                    .then(|| rest.trim().to_string())
            });
        let Some(token) = bearer.filter(|_| self.cfg.token_file.is_some()) else {
            return Err(Refusal::NoCredentials);
        };
        if self.accepts(&digest(token.as_bytes())) {
            Ok(())
        } else {
            Err(Refusal::WrongToken)
        }
    }

    fn refusal_response(&self, path: &str, r: Refusal) -> Response {
        let (code, reason, msg) = match r {
            Refusal::NoCredentials => (
                StatusCode::UNAUTHORIZED,
                "no_credentials",
                match (&self.cfg.token_file, &self.cfg.client_ca) {
                    (Some(_), Some(_)) => "authentication required: send Authorization: Bearer <token> (--server-token-file) or a client certificate signed by --server-client-ca",
                    (Some(_), None) => "authentication required: send Authorization: Bearer <token> (the token of --server-token-file)",
                    _ => "authentication required: connect with a client certificate signed by --server-client-ca",
                },
            ),
            Refusal::WrongToken => (
                StatusCode::FORBIDDEN,
                "wrong_token",
                "the bearer token is not accepted (not in --server-token-file; rotated?)",
            ),
        };
        crate::metrics::api_refused(reason);
        let mut last = self.last_warning.lock().unwrap_or_else(|p| p.into_inner());
        if last.is_none_or(|t| t.elapsed() > Duration::from_secs(10)) {
            *last = Some(Instant::now());
            tracing::warn!(path, reason, "API request refused (further refusals in the next 10 s are only counted in etcdbr_api_requests_refused_total)");
        }
        let mut resp = (
            code,
            [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
            format!("{msg}\n"),
        )
            .into_response();
        if code == StatusCode::UNAUTHORIZED && self.cfg.token_file.is_some() {
            resp.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                header::HeaderValue::from_static("Bearer realm=\"etcdbr\""),
            );
        }
        resp
    }
}

/// The middleware: refuses what [`Guard::check`] refuses, before any handler runs.
pub(crate) async fn require(
    axum::extract::State(guard): axum::extract::State<Arc<Guard>>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let verified = req
        .extensions()
        .get::<crate::server::listener::ClientCertVerified>()
        .is_some_and(|v| v.0);
    let path = req.uri().path().to_string();
    // OPTIONS acts on nothing (it lists the methods; a browser's preflight carries no
    // credentials)
    if req.method() == axum::http::Method::OPTIONS {
        return next.run(req).await;
    }
    match guard.check(&path, req.headers(), verified) {
        Ok(()) => next.run(req).await,
        Err(r) => guard.refusal_response(&path, r),
    }
}

fn warn_if_readable_by_others(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    if let Ok(m) = std::fs::metadata(path) {
        if m.permissions().mode() & 0o004 != 0 {
            tracing::warn!(file = %path.display(), "the API token file is readable by every user of this machine: chmod o-r it (a Kubernetes Secret: defaultMode 0440)");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderMap;

    fn guard(dir: &Path, tokens: &str, open: &str) -> Guard {
        let f = dir.join("token");
        std::fs::write(&f, tokens).unwrap_or_else(|e| panic!("write: {e}"));
        Guard::new(AuthConfig {
            token_file: Some(f),
            client_ca: None,
            open_paths: AuthConfig::parse_open_paths(open).unwrap_or_default(),
        })
        .unwrap_or_else(|e| panic!("guard: {e}"))
    }

    fn bearer(t: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        if let Ok(v) = format!("Bearer {t}").parse() {
            h.insert(header::AUTHORIZATION, v);
        }
        h
    }

    #[test]
    fn tokens_open_paths_and_refusals() {
        let tmp = tempfile::tempdir().unwrap_or_else(|e| panic!("tmp: {e}"));
        let g = guard(
            tmp.path(),
            "old-token\n\n  new-token \n",
            "/healthz,/metrics",
        );
        assert_eq!(g.check("/healthz", &HeaderMap::new(), false), Ok(()));
        assert_eq!(
            g.check("/snapshot/full", &HeaderMap::new(), false),
            Err(Refusal::NoCredentials)
        );
        assert_eq!(
            g.check("/snapshot/full", &bearer("new-token"), false),
            Ok(())
        );
        assert_eq!(g.check("/config", &bearer("old-token"), false), Ok(()));
        assert_eq!(
            g.check("/config", &bearer("new-toke"), false),
            Err(Refusal::WrongToken)
        );
        // a verified client certificate counts only when a client CA is configured
        assert_eq!(
            g.check("/config", &HeaderMap::new(), true),
            Err(Refusal::NoCredentials)
        );
        let mut basic = HeaderMap::new();
        basic.insert(
            header::AUTHORIZATION,
            header::HeaderValue::from_static("Basic eA=="),
        );
        assert_eq!(
            g.check("/config", &basic, false),
            Err(Refusal::NoCredentials)
        );
    }

    #[test]
    fn an_empty_token_file_is_refused_at_start_up() {
        let tmp = tempfile::tempdir().unwrap_or_else(|e| panic!("tmp: {e}"));
        let f = tmp.path().join("token");
        std::fs::write(&f, "\n \n").unwrap_or_else(|e| panic!("write: {e}"));
        let cfg = AuthConfig {
            token_file: Some(f),
            ..Default::default()
        };
        assert!(Guard::new(cfg).is_err());
        assert!(AuthConfig::parse_open_paths("healthz").is_err());
        assert_eq!(
            AuthConfig::parse_open_paths("").unwrap_or_default(),
            Vec::<String>::new()
        );
    }
}
