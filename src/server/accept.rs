//! The data plane's accept loop: every connection is fed to pingora's HTTP proxy, one fresh
//! session per request, with keygate's own header deadline and keep-alive limits.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use pingora::apps::HttpServerApp;
use pingora::protocols::http::ServerSession;
use pingora::protocols::l4::stream::Stream as TcpStream;
use pingora::protocols::{GetSocketDigest, SocketDigest, Stream};
use tokio::net::TcpListener;
use tokio::task::JoinSet;

use crate::background::Shutdown;
use crate::telemetry::Metrics;

#[derive(Clone, Copy)]
pub struct ConnSettings {
    pub header_timeout: Duration,
    pub keepalive_secs: u64,
    pub keepalive_requests: u32,
}

pub async fn accept_loop<A>(
    listener: TcpListener,
    app: Arc<A>,
    settings: ConnSettings,
    metrics: Arc<Metrics>,
    mut shutdown: Shutdown,
) where
    A: HttpServerApp + Send + Sync + 'static,
{
    let mut connections = JoinSet::new();
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = shutdown.wait_for(|s| *s) => break,
        };
        let (tcp, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // Out of file descriptors and the like: back off instead of spinning.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        let stream = stream_with_peer(tcp, peer);
        let app = app.clone();
        let rx = shutdown.clone();
        let metrics = metrics.clone();
        connections.spawn(async move {
            metrics.open_connections.inc();
            serve_connection(app, stream, settings, rx).await;
            metrics.open_connections.dec();
        });
        while connections.try_join_next().is_some() {}
    }
    drop(listener);
    while connections.join_next().await.is_some() {}
}

/// A pingora stream that knows its peer, as pingora's own listener builds it, so that
/// `Session::client_addr` works (the failed-authentication limiter needs it).
fn stream_with_peer(tcp: tokio::net::TcpStream, peer: SocketAddr) -> Stream {
    use std::os::fd::AsRawFd;
    let mut stream = TcpStream::from(tcp);
    let digest = SocketDigest::from_raw_fd(stream.as_raw_fd());
    let _ = digest.peer_addr.set(Some(peer.into()));
    stream.set_socket_digest(digest);
    Box::new(stream)
}

/// One HTTP/1 connection: each request is a fresh session, and nothing about identity carries
/// over between them (keygate never persists a per-connection user context).
async fn serve_connection<A>(
    app: Arc<A>,
    stream: Stream,
    settings: ConnSettings,
    shutdown: Shutdown,
) where
    A: HttpServerApp + Send + Sync + 'static,
{
    let mut stream = stream;
    let mut served = 0u32;
    loop {
        let mut session = ServerSession::new_http1(stream);
        session.set_read_timeout(Some(settings.header_timeout));
        served += 1;
        if *shutdown.borrow() || served >= settings.keepalive_requests {
            session.set_keepalive(None);
        } else {
            session.set_keepalive(Some(settings.keepalive_secs));
        }
        match app.process_new_http(session, &shutdown).await {
            Some(reused) => stream = reused.consume().0,
            None => return,
        }
    }
}
