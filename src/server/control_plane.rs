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

use super::accept::{run_listener, ConnLimits};
use crate::background::Shutdown;
use crate::identity::client::TrustedProxies;
use crate::telemetry::Metrics;

/// Serves `app` on `listener` until shutdown, then lets open requests finish.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: ConnLimits,
    proxies: TrustedProxies,
    header_timeout: Duration,
    metrics: Arc<Metrics>,
    shutdown: Shutdown,
) {
    let serve = |tcp: tokio::net::TcpStream, peer: SocketAddr| {
        let service = TowerToHyperService::new(
            app.clone()
                .layer(axum::Extension(ConnectInfo::<SocketAddr>(peer))),
        );
        let mut stop = shutdown.clone();
        let metrics = metrics.clone();
        async move {
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder
                .timer(TokioTimer::new())
                .header_read_timeout(header_timeout)
                .max_buf_size(64 * 1024);
            let conn = builder.serve_connection(TokioIo::new(tcp), service);
            tokio::pin!(conn);
            let stopping = async {
                let _ = stop.wait_for(|s| *s).await;
            };
            let finished = tokio::select! {
                r = conn.as_mut() => Some(r),
                () = stopping => None,
            };
            let result = match finished {
                Some(r) => r,
                None => {
                    conn.as_mut().graceful_shutdown();
                    conn.await
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
        proxies,
        "control",
        metrics.clone(),
        shutdown.clone(),
        serve,
    )
    .await;
}
