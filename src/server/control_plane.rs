//! The control plane's listener: axum's router served by hyper's HTTP/1 connection directly
//! (not `axum::serve`), so that it gets the same limits as the data plane: connections in total
//! and per client address, a deadline for a whole request header (which also bounds how long
//! an idle kept-alive connection stays open), and a graceful drain on shutdown.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ConnectInfo;
use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use super::accept::{run_listener, ConnLimits};
use crate::background::Shutdown;
use crate::identity::client::TrustedProxies;
use crate::telemetry::Metrics;

/// Serves `app` on `listener` until shutdown, then lets open requests finish. With `tls`, every
/// connection is HTTPS (the handshake must finish within the header deadline).
#[allow(clippy::too_many_arguments)]
pub async fn serve(
    listener: TcpListener,
    app: Router,
    tls: Option<TlsAcceptor>,
    limits: ConnLimits,
    proxies: TrustedProxies,
    header_timeout: Duration,
    metrics: Arc<Metrics>,
    shutdown: Shutdown,
) {
    let answer_refusals = tls.is_none();
    let serve = |tcp: tokio::net::TcpStream, peer: SocketAddr| {
        let service = TowerToHyperService::new(
            app.clone()
                .layer(axum::Extension(ConnectInfo::<SocketAddr>(peer))),
        );
        let stop = shutdown.clone();
        let metrics = metrics.clone();
        let tls = tls.clone();
        async move {
            let result = match tls {
                None => drive(TokioIo::new(tcp), service, header_timeout, stop).await,
                Some(acceptor) => {
                    // Boxed, so that plain connections do not carry the handshake's state.
                    let accept = Box::pin(acceptor.accept(tcp));
                    match tokio::time::timeout(header_timeout, accept).await {
                        Ok(Ok(stream)) => {
                            Box::pin(drive(TokioIo::new(stream), service, header_timeout, stop))
                                .await
                        }
                        _ => {
                            metrics
                                .tls_handshake_failures
                                .with_label_values(&["control"])
                                .inc();
                            return;
                        }
                    }
                }
            };
            if let Err(e) = result {
                if e.is_timeout() {
                    metrics
                        .header_timeouts
                        .with_label_values(&["control"])
                        .inc();
                }
                tracing::debug!(error = %e, "control plane connection ended");
            }
        }
    };
    run_listener(
        listener,
        limits,
        answer_refusals,
        proxies,
        "control",
        metrics.clone(),
        shutdown.clone(),
        serve,
    )
    .await;
}

/// One HTTP/1 connection, drained gracefully on shutdown.
async fn drive<I, S>(
    io: I,
    service: S,
    header_timeout: Duration,
    mut stop: Shutdown,
) -> Result<(), hyper::Error>
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    S: hyper::service::HttpService<hyper::body::Incoming> + Send,
    S::Future: Send + 'static,
    S::ResBody: Send + 'static,
    <S::ResBody as hyper::body::Body>::Data: Send,
    <S::ResBody as hyper::body::Body>::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(header_timeout)
        .max_buf_size(64 * 1024);
    let conn = builder.serve_connection(io, service);
    tokio::pin!(conn);
    let stopping = async {
        let _ = stop.wait_for(|s| *s).await;
    };
    let finished = tokio::select! {
        r = conn.as_mut() => Some(r),
        () = stopping => None,
    };
    match finished {
        Some(r) => r,
        None => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    }
}
