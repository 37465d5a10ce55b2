//! The plain-HTTP listener of HTTPS-only mode (`[tls] plain_listen`): it serves nothing. A
//! `GET` or `HEAD` without a credential is redirected to HTTPS (308); everything else is
//! refused 403 `HTTPS_REQUIRED` in the JSON shape, and no credential is looked up, except with
//! `[tls] revoke_credentials_sent_in_clear`: then a valid API key sent here is revoked at once
//! (its owner sees why) and the request is refused all the same.

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
use crate::identity::Identity;
use crate::identity::Presented;
use crate::manage::KeyManager;
use crate::principal::PrincipalKind;
use crate::proxy::forward::REQUEST_ID;
use crate::refusal::{request_id, Refusal};
use crate::telemetry::Metrics;

/// What the owner of a key revoked here reads.
pub const SENT_IN_CLEAR: &str = "sent over plain HTTP; keygate accepts credentials only over HTTPS";

pub struct Plain {
    /// The base of redirects (`https://host[:port]`); `None`: the request's host with
    /// `https_port`.
    pub redirect_to: Option<String>,
    pub https_port: u16,
    /// Set with `revoke_credentials_sent_in_clear`.
    pub revoke: Option<(Arc<Identity>, Arc<KeyManager>)>,
    pub metrics: Arc<Metrics>,
}

/// Header names that carry a credential (the session cookie is checked by name).
fn carries_credential(headers: &HeaderMap, cookie: Option<&str>) -> bool {
    if headers.contains_key(header::AUTHORIZATION) || headers.contains_key("x-api-key") {
        return true;
    }
    let Some(name) = cookie else { return false };
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .any(|c| c.trim_start().split('=').next() == Some(name))
}

/// The host part of a `Host` header, when it is a plain name or address (so a redirect can
/// never be steered to something that is not a host).
fn redirect_host(headers: &HeaderMap) -> Option<&str> {
    let host = headers.get(header::HOST)?.to_str().ok()?;
    let name = match host.strip_prefix('[') {
        Some(rest) => return rest.split_once(']').map(|(v6, _)| &host[..v6.len() + 2]),
        None => host.rsplit_once(':').map_or(host, |(h, _)| h),
    };
    let ok = !name.is_empty()
        && name.len() <= 253
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-');
    ok.then_some(name)
}

impl Plain {
    async fn answer(&self, req: Request<Incoming>, peer: SocketAddr) -> Response<Full<Bytes>> {
        let id = request_id();
        let cookie = self
            .revoke
            .as_ref()
            .and_then(|(identity, _)| identity.rules().session_cookie.clone());
        let credentialed = carries_credential(req.headers(), cookie.as_deref().or(Some("")));
        if let (true, Some((identity, keys))) = (credentialed, &self.revoke) {
            let presented = Presented {
                method: req.method(),
                headers: req.headers(),
                query: req.uri().query(),
                client: Some(peer.ip()),
            };
            if let Ok(p) = identity.authenticate(presented).await {
                if p.kind == PrincipalKind::ApiKey {
                    match keys.revoke_leaked(&p.key_id, SENT_IN_CLEAR).await {
                        Ok(_) => {
                            tracing::warn!(key_id = %p.key_id, owner = %p.user_email, client = %peer.ip(), "API key sent over plain HTTP: revoked");
                            self.metrics
                                .plain_http_requests
                                .with_label_values(&["revoked"])
                                .inc();
                            return refuse(&id, true);
                        }
                        Err(e) => {
                            tracing::error!(key_id = %p.key_id, error = %e, "an API key sent over plain HTTP could not be revoked");
                        }
                    }
                }
            }
        }
        let redirectable = !credentialed && matches!(*req.method(), Method::GET | Method::HEAD);
        let base = match (&self.redirect_to, redirect_host(req.headers())) {
            (Some(base), _) => Some(base.clone()),
            (None, Some(host)) if self.https_port == 443 => Some(format!("https://{host}")),
            (None, Some(host)) => Some(format!("https://{host}:{}", self.https_port)),
            (None, None) => None,
        };
        if let (true, Some(base)) = (redirectable, base) {
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
                resp.headers_mut().insert(header::LOCATION, location);
                resp.headers_mut()
                    .insert(REQUEST_ID, HeaderValue::from_str(&id).expect("ascii id"));
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
        proxies,
        "plain",
        metrics,
        shutdown.clone(),
        serve,
    )
    .await;
}
