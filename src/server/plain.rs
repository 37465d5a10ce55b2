//! The plain-HTTP listener of HTTPS-only mode (`[tls] plain_listen`): it serves nothing. A
//! `GET` or `HEAD` without a credential, for a host the served certificate names (or
//! `[tls] redirect_to`), is redirected to HTTPS (308); everything else is refused 403
//! `HTTPS_REQUIRED` in the JSON shape, and no credential is looked up, except with
//! `[tls] revoke_credentials_sent_in_clear`: then every valid API key the request carries
//! (headers or query, however malformed the rest) is revoked at once (its owner sees why) and
//! the request is refused all the same.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;

use super::accept::{run_listener, ConnLimits};
use crate::background::Shutdown;
use crate::identity::client::TrustedProxies;
use crate::identity::credentials::query_has_credential;
use crate::identity::Identity;
use crate::manage::KeyManager;
use crate::model::KeyStyle;
use crate::proxy::forward::REQUEST_ID;
use crate::refusal::{request_id, Refusal};
use crate::telemetry::Metrics;
use crate::tls::Certificates;

/// What the owner of a key revoked here reads.
pub const SENT_IN_CLEAR: &str = "sent over plain HTTP; keygate accepts credentials only over HTTPS";

pub struct Plain {
    /// The base of redirects (`https://host[:port]`); `None`: the request's host, when the
    /// served certificate is valid for it, with `https_port`.
    pub redirect_to: Option<String>,
    pub https_port: u16,
    pub certificates: Arc<Certificates>,
    /// What counts as a credential here: key shapes and the session cookie's name.
    pub style: KeyStyle,
    pub session_cookie: String,
    /// Set with `revoke_credentials_sent_in_clear`.
    pub revoke: Option<(Arc<Identity>, Arc<KeyManager>)>,
    pub trusted_proxies: TrustedProxies,
    pub metrics: Arc<Metrics>,
}

/// Whether a request carries a credential: a credential header, the session cookie, or a
/// credential in the query (by name or by shape). Nothing is looked up.
fn carries_credential(
    headers: &HeaderMap,
    query: Option<&str>,
    style: &KeyStyle,
    cookie: &str,
) -> bool {
    if headers.contains_key(header::AUTHORIZATION) || headers.contains_key("x-api-key") {
        return true;
    }
    if query.is_some_and(|q| query_has_credential(q, style)) {
        return true;
    }
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|c| c.split_once('='))
        .any(|(name, _)| name.trim() == cookie)
}

/// The host of a `Host` header (`name`, `name:port`, `[v6]`, `[v6]:port`), when it is a plain
/// DNS name or an address; `None` for anything else.
fn host_of(value: &str) -> Option<String> {
    if value.len() > 261 {
        return None;
    }
    let (host, port) = match value.strip_prefix('[') {
        Some(rest) => {
            let (v6, after) = rest.split_once(']')?;
            let v6: std::net::Ipv6Addr = v6.parse().ok()?;
            (v6.to_string(), after.strip_prefix(':'))
        }
        None => match value.rsplit_once(':') {
            Some((h, p)) => (h.to_owned(), Some(p)),
            None => (value.to_owned(), None),
        },
    };
    if port.is_some_and(|p| p.is_empty() || p.len() > 5 || !p.bytes().all(|b| b.is_ascii_digit())) {
        return None;
    }
    let plain = host.parse::<std::net::IpAddr>().is_ok()
        || (!host.is_empty()
            && host.len() <= 253
            && host.split('.').all(|l| {
                !l.is_empty()
                    && l.len() <= 63
                    && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            }));
    plain.then(|| host.to_ascii_lowercase())
}

impl Plain {
    /// Where a redirect of this request goes, if anywhere: `redirect_to`, or the request's
    /// own host when the served certificate is valid for it (so a forged `Host` never steers
    /// a redirect to a site keygate does not serve).
    fn redirect_base(&self, headers: &HeaderMap) -> Option<String> {
        if let Some(base) = &self.redirect_to {
            return Some(base.clone());
        }
        let host = host_of(headers.get(header::HOST)?.to_str().ok()?)?;
        if !self.certificates.serves(&host) {
            return None;
        }
        let host = if host.contains(':') {
            format!("[{host}]")
        } else {
            host
        };
        Some(if self.https_port == 443 {
            format!("https://{host}")
        } else {
            format!("https://{host}:{}", self.https_port)
        })
    }

    async fn answer(&self, req: Request<Incoming>, peer: SocketAddr) -> Response<Full<Bytes>> {
        let id = request_id();
        let client = self.trusted_proxies.client(peer.ip(), req.headers());
        if let Some((identity, keys)) = &self.revoke {
            // Whatever key-shaped values the request carries, however it is framed.
            match identity
                .keys_in(req.headers(), req.uri().query(), Some(client))
                .await
            {
                Ok(found) => {
                    let mut revoked = false;
                    for p in found {
                        match keys.revoke_leaked(&p.key_id, SENT_IN_CLEAR).await {
                            Ok(_) => {
                                tracing::warn!(key_id = %p.key_id, owner = %p.user_email, %client, "API key sent over plain HTTP: revoked");
                                revoked = true;
                            }
                            Err(e) => {
                                tracing::error!(key_id = %p.key_id, error = %e, "an API key sent over plain HTTP could not be revoked");
                            }
                        }
                    }
                    if revoked {
                        self.metrics
                            .plain_http_requests
                            .with_label_values(&["revoked"])
                            .inc();
                        return refuse(&id, true);
                    }
                }
                Err(e) => {
                    tracing::debug!(%client, refusal = e.code(), "keys sent over plain HTTP not checked");
                }
            }
        }
        let credentialed = carries_credential(
            req.headers(),
            req.uri().query(),
            &self.style,
            &self.session_cookie,
        );
        let redirectable = !credentialed && matches!(*req.method(), Method::GET | Method::HEAD);
        if let (true, Some(base)) = (redirectable, self.redirect_base(req.headers())) {
            let target = req
                .uri()
                .path_and_query()
                .map_or("/", |p| p.as_str())
                .to_owned();
            if let Ok(location) = HeaderValue::try_from(format!("{base}{target}")) {
                self.metrics
                    .plain_http_requests
                    .with_label_values(&["redirected"])
                    .inc();
                let mut resp = Response::new(Full::new(Bytes::new()));
                *resp.status_mut() = StatusCode::PERMANENT_REDIRECT;
                let headers = resp.headers_mut();
                headers.insert(header::LOCATION, location);
                // Built from the request's Host: never stored for another client.
                headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
                headers.insert(REQUEST_ID, HeaderValue::from_str(&id).expect("ascii id"));
                return resp;
            }
        }
        self.metrics
            .plain_http_requests
            .with_label_values(&["refused"])
            .inc();
        refuse(&id, false)
    }
}

fn refuse(id: &str, revoked: bool) -> Response<Full<Bytes>> {
    let rendered = Refusal::HttpsRequired {
        credential_revoked: revoked,
    }
    .render(id);
    let mut resp = Response::new(Full::new(Bytes::from(rendered.body)));
    *resp.status_mut() = StatusCode::from_u16(rendered.status).unwrap_or(StatusCode::FORBIDDEN);
    for (name, value) in &rendered.headers {
        if let Ok(v) = HeaderValue::try_from(value.as_str()) {
            resp.headers_mut().insert(*name, v);
        }
    }
    resp.headers_mut()
        .insert(REQUEST_ID, HeaderValue::from_str(id).expect("ascii id"));
    // The body of a refused request is never read.
    resp.headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    resp
}

/// Serves the plain listener until shutdown.
pub async fn serve(
    listener: TcpListener,
    plain: Arc<Plain>,
    limits: ConnLimits,
    proxies: TrustedProxies,
    header_timeout: Duration,
    shutdown: Shutdown,
) {
    let metrics = plain.metrics.clone();
    let serve = |tcp: tokio::net::TcpStream, peer: SocketAddr| {
        let plain = plain.clone();
        let mut stop = shutdown.clone();
        async move {
            let service = hyper::service::service_fn(move |req| {
                let plain = plain.clone();
                async move { Ok::<_, std::convert::Infallible>(plain.answer(req, peer).await) }
            });
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
                _ = conn.as_mut() => true,
                () = stopping => false,
            };
            if !finished {
                conn.as_mut().graceful_shutdown();
                let _ = tokio::time::timeout(Duration::from_secs(1), conn).await;
            }
        }
    };
    run_listener(
        listener,
        limits,
        true,
        proxies,
        "plain",
        metrics,
        shutdown.clone(),
        serve,
    )
    .await;
}
