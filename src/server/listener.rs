//! The API's listener, for a hostile network: port scanners, load balancers' TCP checks, slow
//! and idle clients must not stall or exhaust it.
//!
//! * the accept loop only accepts: each connection (its TLS handshake included, bounded by
//!   [`Limits::handshake_timeout`]) runs in a task of its own, so an idle socket holds up no
//!   one but itself (the TLS handshake used to run inside the accept loop);
//! * a request's headers must arrive within [`Limits::header_timeout`] of the connection, or of
//!   the previous response on a kept-alive connection (hyper 1's header read timer starts when
//!   it waits for a request head, so it is also the idle timeout);
//! * at most [`Limits::max_connections`] connections at once; more are closed at once;
//! * headers are at most 64 KiB, and a request body above [`MAX_BODY`] is refused (413): no
//!   endpoint takes one.

use crate::error::{Error, Result};
use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};
use tokio_rustls::TlsAcceptor;

/// A request's connection presented a client certificate that `--server-client-ca` verified
/// (set on every request; `false` on plain HTTP).
#[derive(Debug, Clone, Copy)]
pub(crate) struct ClientCertVerified(pub bool);

/// No endpoint reads a body: a larger one is refused.
pub(crate) const MAX_BODY: u64 = 64 * 1024;

#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    pub(crate) max_connections: usize,
    pub(crate) header_timeout: Duration,
    pub(crate) handshake_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_connections: 256,
            header_timeout: Duration::from_secs(10),
            handshake_timeout: Duration::from_secs(10),
        }
    }
}

/// Refuses request bodies above [`MAX_BODY`] (by their `Content-Length`; a chunked body must
/// declare its length instead).
pub(crate) async fn limit_body(
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    use axum::http::{header, StatusCode};
    use axum::response::IntoResponse;
    let len = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let chunked = req.headers().contains_key(header::TRANSFER_ENCODING);
    if chunked || len.is_some_and(|l| l > MAX_BODY) {
        return (
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("request body refused: no endpoint takes one larger than {MAX_BODY} bytes\n"),
        )
            .into_response();
    }
    next.run(req).await
}

/// Serves `app` on `listener` (TLS when `tls` is set, with the configuration of the moment)
/// until `stop` is set; then stops accepting and lets the open connections finish their request.
pub(crate) async fn serve(
    listener: TcpListener,
    tls: Option<Arc<crate::server::https::TlsReloader>>,
    app: Router,
    limits: Limits,
    mut stop: watch::Receiver<bool>,
) -> Result<()> {
    let permits = Arc::new(Semaphore::new(limits.max_connections));
    let (drain_tx, drain_rx) = watch::channel(false);
    let mut tasks = tokio::task::JoinSet::new();
    let mut last_full_warning: Option<Instant> = None;
    loop {
        let (stream, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    // e.g. too many open files: back off instead of spinning
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = crate::stop::flag_set(&mut stop) => break,
        };
        while tasks.try_join_next().is_some() {}
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            if last_full_warning.is_none_or(|t| t.elapsed() > Duration::from_secs(60)) {
                tracing::warn!(
                    max = limits.max_connections,
                    peer = %peer,
                    "too many open connections to the API: new ones are closed"
                );
                last_full_warning = Some(Instant::now());
            }
            drop(stream);
            continue;
        };
        let app = app.clone();
        let tls = tls.clone();
        let drain = drain_rx.clone();
        tasks.spawn(async move {
            let _permit = permit;
            match tls {
                None => connection(TokioIo::new(stream), app, false, limits, drain).await,
                Some(reloader) => {
                    let acceptor = TlsAcceptor::from(reloader.config());
                    match tokio::time::timeout(limits.handshake_timeout, acceptor.accept(stream))
                        .await
                    {
                        Ok(Ok(s)) => {
                            // with --server-client-ca, a presented certificate was verified
                            // during the handshake (an unverifiable one fails it)
                            let verified = s
                                .get_ref()
                                .1
                                .peer_certificates()
                                .is_some_and(|c| !c.is_empty());
                            connection(TokioIo::new(s), app, verified, limits, drain).await
                        }
                        Ok(Err(e)) => {
                            tracing::debug!(peer = %peer, error = %e, "TLS handshake failed")
                        }
                        Err(_) => tracing::debug!(peer = %peer, "TLS handshake timed out"),
                    }
                }
            }
        });
    }
    let _ = drain_tx.send(true);
    while tasks.join_next().await.is_some() {}
    Ok(())
}

async fn connection<I>(
    io: TokioIo<I>,
    app: Router,
    verified: bool,
    limits: Limits,
    mut drain: watch::Receiver<bool>,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .max_buf_size(64 * 1024);
    let inner = TowerToHyperService::new(app);
    let svc = hyper::service::service_fn(move |mut req: hyper::Request<hyper::body::Incoming>| {
        req.extensions_mut().insert(ClientCertVerified(verified));
        hyper::service::Service::call(&inner, req)
    });
    let conn = builder.serve_connection(io, svc);
    tokio::pin!(conn);
    tokio::select! {
        r = conn.as_mut() => {
            if let Err(e) = r {
                tracing::debug!(error = %e, "API connection ended with an error");
            }
        }
        _ = crate::stop::flag_set(&mut drain) => {
            conn.as_mut().graceful_shutdown();
            let _ = conn.await;
        }
    }
}

/// Binds the API's address, with an error that names it.
pub(crate) async fn bind(addr: &str) -> Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .map_err(|e| Error::io(addr, "listen (is another process using --server-port?)", e))
}
