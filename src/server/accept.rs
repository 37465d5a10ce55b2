//! The data plane's accept loop: every connection is fed to pingora's HTTP proxy, one fresh
//! session per request, with keygate's own limits for hostile clients: connections in total
//! and per client address (refused with a 503 in the JSON shape and counted), an absolute
//! deadline for a whole request header, an idle timeout between body reads and writes, and a
//! cap on requests per connection.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use pingora::apps::HttpServerApp;
use pingora::listeners::tls::Acceptor;
use pingora::protocols::http::ServerSession;
use pingora::protocols::l4::stream::Stream as TcpStream;
use pingora::protocols::{GetSocketDigest, SocketDigest, Stream};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;
use tokio::task::JoinSet;

use super::buffered::WriteBuffered;
use crate::background::Shutdown;
use crate::identity::client::TrustedProxies;
use crate::proxy::HeaderArrived;
use crate::ratelimit::failures::address_bucket;
use crate::refusal::{request_id, Refusal};
use crate::telemetry::Metrics;

#[derive(Clone, Copy)]
pub struct ConnSettings {
    /// A whole request header must arrive within this of the connection opening (or of the
    /// previous response, plus `keepalive`, on a kept-alive connection).
    pub header_timeout: Duration,
    /// Longest wait for the next request on a kept-alive connection.
    pub keepalive: Duration,
    pub keepalive_requests: u32,
    /// Longest pause between two reads of a request body or two writes of a response.
    pub body_timeout: Duration,
    pub limits: ConnLimits,
}

/// How many connections a listener holds open.
#[derive(Debug, Clone, Copy)]
pub struct ConnLimits {
    pub total: usize,
    /// Per client address bucket (an IPv4 address, an IPv6 /64). Trusted proxies carry many
    /// clients' connections and count only against the total.
    pub per_address: usize,
}

/// The connections a listener holds, in total and per address bucket. The map has an entry
/// only for addresses with an open connection, so it is bounded by the total cap.
pub struct Connections {
    limits: ConnLimits,
    open: Mutex<(usize, HashMap<IpAddr, usize>)>,
}

/// An admitted connection; dropping it frees its place.
pub struct Admitted {
    table: Arc<Connections>,
    bucket: IpAddr,
}

impl Drop for Admitted {
    fn drop(&mut self) {
        let mut open = self.table.open.lock().unwrap_or_else(|p| p.into_inner());
        open.0 = open.0.saturating_sub(1);
        if let Some(n) = open.1.get_mut(&self.bucket) {
            *n -= 1;
            if *n == 0 {
                open.1.remove(&self.bucket);
            }
        }
    }
}

impl Connections {
    pub fn new(limits: ConnLimits) -> Arc<Connections> {
        Arc::new(Connections {
            limits,
            open: Mutex::new((0, HashMap::new())),
        })
    }

    /// A place for a connection from `peer`, or which cap it hit (`total`, `per_address`).
    /// A peer that is a trusted proxy is held only to the total.
    pub fn admit(self: &Arc<Self>, peer: IpAddr, proxy: bool) -> Result<Admitted, &'static str> {
        let bucket = address_bucket(peer);
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        if open.0 >= self.limits.total {
            return Err("total");
        }
        let n = open.1.entry(bucket).or_insert(0);
        if *n >= self.limits.per_address && !proxy {
            if *n == 0 {
                open.1.remove(&bucket);
            }
            return Err("per_address");
        }
        *n += 1;
        open.0 += 1;
        Ok(Admitted {
            table: self.clone(),
            bucket,
        })
    }
}

/// Refusals over the caps written at once (each takes at most a second).
const MAX_REFUSALS_IN_FLIGHT: usize = 256;

/// Answers a connection over a cap with a 503 in the JSON shape, then closes it. Bounded:
/// a client that does not read gets nothing after a second.
pub async fn refuse_connection(mut tcp: tokio::net::TcpStream) {
    let rendered =
        Refusal::Unavailable("too many connections; try again".into()).render(&request_id());
    let mut head = format!("HTTP/1.1 {} Service Unavailable\r\n", rendered.status);
    for (name, value) in &rendered.headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str(&format!(
        "content-length: {}\r\nconnection: close\r\n\r\n",
        rendered.body.len()
    ));
    let write = async {
        tcp.write_all(head.as_bytes()).await?;
        tcp.write_all(&rendered.body).await?;
        tcp.shutdown().await
    };
    let _ = tokio::time::timeout(Duration::from_secs(1), write).await;
}

/// Accepts connections on `listener` until shutdown, within `limits`: a connection over a cap
/// is answered 503 (closed without an answer when `answer_refusals` is false: a TLS listener)
/// and counted under `plane`; every other one is handed to `serve` and keeps
/// its place until that future ends. Waits for them all before returning.
#[allow(clippy::too_many_arguments)]
pub async fn run_listener<F, Fut>(
    listener: TcpListener,
    limits: ConnLimits,
    answer_refusals: bool,
    proxies: TrustedProxies,
    plane: &'static str,
    metrics: Arc<Metrics>,
    mut shutdown: Shutdown,
    serve: F,
) where
    F: Fn(tokio::net::TcpStream, SocketAddr) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let table = Connections::new(limits);
    let refusing = Arc::new(std::sync::atomic::AtomicUsize::new(0));
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
                tracing::warn!(plane, error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let admitted = match table.admit(peer.ip(), proxies.contains(peer.ip())) {
            Ok(a) => a,
            Err(reason) => {
                metrics
                    .connections_refused
                    .with_label_values(&[plane, reason])
                    .inc();
                // A flood of connections over the caps gets its answer from a bounded number
                // of refusals at a time; past that they are closed without one.
                // A TLS listener cannot answer in plain text: it just closes.
                if answer_refusals && refusing.load(Ordering::Relaxed) < MAX_REFUSALS_IN_FLIGHT {
                    refusing.fetch_add(1, Ordering::Relaxed);
                    let refusing = refusing.clone();
                    connections.spawn(async move {
                        refuse_connection(tcp).await;
                        refusing.fetch_sub(1, Ordering::Relaxed);
                    });
                }
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        let served = serve(tcp, peer);
        connections.spawn(async move {
            let _admitted = admitted;
            served.await;
        });
        while connections.try_join_next().is_some() {}
    }
    drop(listener);
    while connections.join_next().await.is_some() {}
}

/// The data plane: every admitted connection is served by pingora's HTTP proxy, over TLS when
/// `tls` is given (the handshake must finish within the header deadline).
pub async fn accept_loop<A>(
    listener: TcpListener,
    app: Arc<A>,
    tls: Option<Arc<Acceptor>>,
    settings: ConnSettings,
    proxies: TrustedProxies,
    metrics: Arc<Metrics>,
    shutdown: Shutdown,
) where
    A: HttpServerApp + Send + Sync + 'static,
{
    let serve = |tcp, peer| {
        let stream = stream_with_peer(tcp, peer);
        let (app, rx, metrics, tls) = (app.clone(), shutdown.clone(), metrics.clone(), tls.clone());
        async move {
            let accepted = std::time::Instant::now();
            let stream: Stream = match tls {
                None => Box::new(WriteBuffered::new(stream)),
                Some(acceptor) => {
                    // Boxed: inline, the handshake's state would make every connection's
                    // future (plain ones too) about 13 KiB larger.
                    // The write buffer goes under TLS, as pingora's listener puts it: the
                    // records of one response leave together.
                    let handshake = Box::pin(acceptor.tls_handshake(WriteBuffered::new(stream)));
                    match tokio::time::timeout(settings.header_timeout, handshake).await {
                        Ok(Ok(tls)) => Box::new(tls),
                        Ok(Err(e)) => {
                            tracing::debug!(error = %e, "TLS handshake failed");
                            metrics
                                .tls_handshake_failures
                                .with_label_values(&["data"])
                                .inc();
                            return;
                        }
                        Err(_) => {
                            metrics
                                .tls_handshake_failures
                                .with_label_values(&["data"])
                                .inc();
                            return;
                        }
                    }
                }
            };
            // The handshake and the first request header share one deadline.
            let first = settings.header_timeout.saturating_sub(accepted.elapsed());
            metrics.open_connections.inc();
            serve_connection(app, stream, settings, first, &metrics, rx).await;
            metrics.open_connections.dec();
        }
    };
    let answer_refusals = tls.is_none();
    run_listener(
        listener,
        settings.limits,
        answer_refusals,
        proxies,
        "data",
        metrics.clone(),
        shutdown.clone(),
        serve,
    )
    .await;
}

/// A pingora stream that knows its peer, as pingora's own listener builds it, so that
/// `Session::client_addr` works (the failed-authentication limiter needs it).
fn stream_with_peer(tcp: tokio::net::TcpStream, peer: SocketAddr) -> TcpStream {
    use std::os::fd::AsRawFd;
    let mut stream = TcpStream::from(tcp);
    let digest = SocketDigest::from_raw_fd(stream.as_raw_fd());
    let _ = digest.peer_addr.set(Some(peer.into()));
    stream.set_socket_digest(digest);
    stream
}

/// One HTTP/1 connection: each request is a fresh session, and nothing about identity carries
/// over between them. A request whose header is not complete by its deadline ends the
/// connection (pingora's own read timeout restarts with every read, so a client trickling a
/// byte at a time would otherwise hold the connection forever).
async fn serve_connection<A>(
    app: Arc<A>,
    stream: Stream,
    settings: ConnSettings,
    first_deadline: std::time::Duration,
    metrics: &Metrics,
    shutdown: Shutdown,
) where
    A: HttpServerApp + Send + Sync + 'static,
{
    let mut stream = stream;
    let mut served = 0u32;
    loop {
        let mut session = ServerSession::new_http1(stream);
        session.set_read_timeout(Some(settings.body_timeout));
        session.set_write_timeout(Some(settings.body_timeout));
        let deadline = if served == 0 {
            first_deadline
        } else {
            settings.keepalive + settings.header_timeout
        };
        served += 1;
        if *shutdown.borrow() || served >= settings.keepalive_requests {
            session.set_keepalive(None);
        } else {
            session.set_keepalive(Some(settings.keepalive.as_secs().max(1)));
        }
        let arrived = Arc::new(AtomicBool::new(false));
        session.set_connection_user_context(Some(Box::new(HeaderArrived(arrived.clone()))));
        let watchdog = async {
            tokio::time::sleep(deadline).await;
            if arrived.load(Ordering::Acquire) {
                std::future::pending::<()>().await;
            }
        };
        let reused = tokio::select! {
            reused = app.process_new_http(session, &shutdown) => reused,
            () = watchdog => {
                metrics.header_timeouts.with_label_values(&["data"]).inc();
                return;
            }
        };
        match reused {
            Some(reused) => stream = reused.consume().0,
            None => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caps_hold_in_total_and_per_address_and_free_on_drop() {
        let table = Connections::new(ConnLimits {
            total: 3,
            per_address: 2,
        });
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "2001:db8::1".parse().unwrap();
        let b_same_64: IpAddr = "2001:db8::2".parse().unwrap();
        let first = table.admit(a, false).unwrap();
        let _second = table.admit(a, false).unwrap();
        assert_eq!(table.admit(a, false).err(), Some("per_address"));
        let _third = table.admit(b, false).unwrap();
        assert_eq!(table.admit(b_same_64, false).err(), Some("total"));
        drop(first);
        assert!(table.admit(b_same_64, false).is_ok());
        // A trusted proxy is held only to the total.
        let p = table.admit(a, true).unwrap();
        assert_eq!(table.admit(a, true).err(), Some("total"));
        drop(p);
        assert!(table.open.lock().unwrap().1.len() <= 2);
    }
}
