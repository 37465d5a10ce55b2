//! The data plane: keygate's `ProxyHttp`. The hot path and nothing else; the only module that
//! touches the pingora `Session`.
//!
//! ```text
//!  request_filter ─ route ─ (credentials ─ identity ─ rate limit ─ decide) ─┐
//!        │ refusal: render once, answer, stop                                 │ allowed
//!        ▼                                                                    ▼
//!     logging  ◀─ response_filter (clean) ◀─ upstream ◀─ upstream_request_filter (forward)
//! ```
//! Each stage is a plain function in its own module that takes values and returns a typed
//! result; the per-request [`RequestCtx`] carries what one stage hands to the next, each field
//! written by exactly one stage. Nothing carries over between requests on one connection.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;
use bytes::Bytes;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::prelude::*;
use pingora::proxy::FailToProxy;
use pingora::{ErrorSource, ErrorType};

use crate::audit::{AuditEvent, AuditLog, AuditPrincipal};
use crate::credentials::{check_csrf, credentials, Credentials};
use crate::deny::Refusal;
use crate::forward;
use crate::identity::{Identity, Principal, PrincipalKind};
use crate::manage::EXPIRY_WARNING_MS;
use crate::policy::{PolicyEngine, Verdict};
use crate::ratelimit::{RateLimiter, Standing};
use crate::route::{RouteInput, RouteMatch, RouteTable};
use crate::telemetry::Metrics;
use crate::upstream::Upstream;

/// What one request carries from stage to stage.
pub struct RequestCtx {
    /// Set at arrival.
    pub request_id: String,
    pub arrived: Instant,
    pub client: Option<IpAddr>,
    /// Written by the route stage.
    pub route: Option<RouteMatch>,
    /// Written by the identity stage.
    pub principal: Option<Arc<Principal>>,
    /// Written by the rate-limit stage: becomes the rate-limit headers of the response.
    pub standing: Option<Standing>,
    /// Written by the decide stage: one verdict per resource decided.
    pub verdicts: Vec<Arc<Verdict>>,
    /// Written by whichever stage refused the request.
    pub refusal: Option<Refusal>,
    /// Written when the request is sent upstream.
    pub sent_upstream: Option<Instant>,
}

impl RequestCtx {
    pub fn new() -> RequestCtx {
        RequestCtx {
            request_id: uuid::Uuid::now_v7().simple().to_string(),
            arrived: Instant::now(),
            client: None,
            route: None,
            principal: None,
            standing: None,
            verdicts: Vec::new(),
            refusal: None,
            sent_upstream: None,
        }
    }

    fn action(&self) -> &str {
        self.route.as_ref().map_or("none", |r| &r.action)
    }
}

impl Default for RequestCtx {
    fn default() -> RequestCtx {
        RequestCtx::new()
    }
}

/// Everything the data plane needs, shared by all requests.
pub struct Keygate {
    pub routes: RouteTable,
    pub identity: Arc<Identity>,
    pub limits: RateLimiter,
    pub policy: Arc<PolicyEngine>,
    pub upstream: Arc<Upstream>,
    pub audit: Arc<AuditLog>,
    pub metrics: Arc<Metrics>,
}

impl Keygate {
    /// The stages up to the decision, in order. `Ok` means forward. (`request_filter` without
    /// the pingora session; public for the benchmarks.)
    pub async fn admit(
        &self,
        req: &RequestHeader,
        raw_header: Option<&[u8]>,
        ctx: &mut RequestCtx,
    ) -> Result<(), Refusal> {
        let client = ctx.client;
        forward::check_framing(&req.headers, raw_header)?;
        let route = ctx.route.insert(self.routes.route(route_input(req))?);
        self.identity.check_address(client)?;
        let creds = credentials(&req.headers, route.query(), self.identity.rules())
            .inspect_err(|r| self.count_failure(r, client))?;
        if let Credentials::Session(secret) = &creds {
            check_csrf(
                &req.method,
                &req.headers,
                secret,
                self.identity.rules(),
                self.identity.pepper(),
            )
            .inspect_err(|_| self.identity.record_forbidden(client))?;
        }
        let principal = self
            .identity
            .authenticate(&creds)
            .await
            .inspect_err(|r| self.count_failure(r, client))?;
        let principal = ctx.principal.insert(principal);
        match self.limits.check(principal, &route.action) {
            Ok(standing) => ctx.standing = standing,
            Err((refusal, standing)) => {
                ctx.standing = standing;
                return Err(refusal);
            }
        }
        let decided = self.policy.decide(principal, route);
        ctx.verdicts = decided.verdicts;
        match decided.refusal {
            None => Ok(()),
            Some(refusal) => {
                if matches!(refusal, Refusal::Forbidden(_)) {
                    self.identity.record_forbidden(client);
                }
                Err(refusal)
            }
        }
    }

    fn count_failure(&self, refusal: &Refusal, client: Option<IpAddr>) {
        if let Refusal::Unauthorized(reason) = refusal {
            self.identity.record_failure(client, *reason);
        }
    }
}

/// What the route stage reads from the request header.
fn route_input(req: &RequestHeader) -> RouteInput<'_> {
    RouteInput {
        method: req.method.as_str(),
        raw_target: req.raw_path(),
        destination: req.headers.get("destination").map(|v| v.as_bytes()),
        host: req
            .headers
            .get(http::header::HOST)
            .and_then(|v| v.to_str().ok()),
    }
}

/// Writes a refusal as the whole response. With `close`, or when the request's body was never
/// read, the response says `Connection: close` and the connection ends.
async fn respond(
    session: &mut Session,
    refusal: &Refusal,
    ctx: &RequestCtx,
    close: bool,
) -> Result<()> {
    let request_id = ctx.request_id.as_str();
    let rendered = refusal.render(request_id);
    let mut resp = ResponseHeader::build(rendered.status, Some(rendered.headers.len() + 7))?;
    for (name, value) in &rendered.headers {
        resp.insert_header(*name, value.as_str())?;
    }
    if let Some(standing) = &ctx.standing {
        for (name, value) in standing.headers() {
            resp.insert_header(name, value)?;
        }
    }
    resp.insert_header(
        http::header::CONTENT_LENGTH,
        rendered.body.len().to_string(),
    )?;
    resp.insert_header(forward::REQUEST_ID, request_id)?;
    // A refused request's body is never read: close rather than resynchronise on it.
    let has_body = session
        .req_header()
        .headers
        .contains_key(http::header::CONTENT_LENGTH)
        || session
            .req_header()
            .headers
            .contains_key(http::header::TRANSFER_ENCODING);
    if close || has_body || rendered.status == 400 {
        session.set_keepalive(None);
    }
    session.write_response_header(Box::new(resp), false).await?;
    session
        .write_response_body(Some(Bytes::from(rendered.body)), true)
        .await?;
    Ok(())
}

#[async_trait]
impl ProxyHttp for Keygate {
    type CTX = RequestCtx;

    fn new_ctx(&self) -> RequestCtx {
        RequestCtx::new()
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut RequestCtx) -> Result<bool> {
        let raw_header = session
            .as_downstream()
            .as_http1()
            .map(|h1| h1.get_headers_raw_bytes());
        ctx.client = session
            .client_addr()
            .and_then(|a| a.as_inet())
            .map(|a| a.ip());
        match self
            .admit(session.req_header(), raw_header.as_deref(), ctx)
            .await
        {
            Ok(()) => Ok(false),
            Err(refusal) => {
                let written = respond(session, &refusal, ctx, false).await;
                // A client that hung up before its refusal was written is still counted and
                // audited as refused, not as an internal failure.
                if let Err(e) = written {
                    tracing::debug!(request_id = %ctx.request_id, error = %e, "client went away before its refusal was written");
                }
                ctx.refusal = Some(refusal);
                Ok(true)
            }
        }
    }

    async fn upstream_peer(
        &self,
        _session: &mut Session,
        _ctx: &mut RequestCtx,
    ) -> Result<Box<HttpPeer>> {
        self.upstream
            .select()
            .ok_or_else(|| Error::explain(ErrorType::ConnectNoRoute, "no healthy upstream peer"))
    }

    async fn upstream_request_filter(
        &self,
        _session: &mut Session,
        upstream_request: &mut RequestHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        // INVARIANT: request_filter lets a request through only with a route and a principal.
        let (Some(route), Some(principal)) = (ctx.route.as_ref(), ctx.principal.as_ref()) else {
            return Err(Error::explain(
                ErrorType::InternalError,
                "forwarding an unchecked request",
            ));
        };
        // A revoke or change that returned while this request was in flight stops it here.
        if !self.identity.is_current(principal) {
            ctx.refusal = Some(Refusal::Unauthorized(crate::deny::AuthFailure::Revoked));
            return Err(Error::explain(
                ErrorType::HTTPStatus(401),
                "credential changed in flight",
            ));
        }
        if forward::prepare_upstream(upstream_request, route, principal, &ctx.request_id).is_err() {
            return Err(Error::explain(
                ErrorType::InternalError,
                "cannot build the upstream request",
            ));
        }
        let now = Instant::now();
        self.metrics
            .overhead
            .with_label_values(&[&*route.action])
            .observe(now.duration_since(ctx.arrived).as_secs_f64());
        ctx.sent_upstream = Some(now);
        Ok(())
    }

    async fn response_filter(
        &self,
        _session: &mut Session,
        upstream_response: &mut ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        forward::clean_response(upstream_response, &ctx.request_id);
        if let Some(standing) = &ctx.standing {
            for (name, value) in standing.headers() {
                upstream_response.insert_header(name, value)?;
            }
        }
        // Keys that expire soon are flagged; tokens are short-lived by design.
        let key_expiry = ctx
            .principal
            .as_ref()
            .filter(|p| p.kind == PrincipalKind::ApiKey)
            .and_then(|p| p.expires_at);
        if let Some(expires_at) = key_expiry {
            if expires_at - crate::store::now_millis() <= EXPIRY_WARNING_MS {
                let _ = upstream_response
                    .insert_header(forward::KEY_EXPIRES, crate::keys::format_time(expires_at));
            }
        }
        Ok(())
    }

    async fn fail_to_proxy(
        &self,
        session: &mut Session,
        e: &Error,
        ctx: &mut RequestCtx,
    ) -> FailToProxy {
        let refusal = match e.esource() {
            ErrorSource::Upstream => {
                self.metrics
                    .upstream_errors
                    .with_label_values(&[&e.etype().as_str()])
                    .inc();
                Some(Refusal::UpstreamUnavailable)
            }
            ErrorSource::Downstream => match e.etype() {
                ErrorType::WriteError | ErrorType::ReadError | ErrorType::ConnectionClosed => None,
                _ => Some(Refusal::bad_request("the request could not be read")),
            },
            ErrorSource::Internal | ErrorSource::Unset => {
                if matches!(e.etype(), ErrorType::ConnectNoRoute) {
                    self.metrics
                        .upstream_errors
                        .with_label_values(&["no_healthy_peer"])
                        .inc();
                    Some(Refusal::UpstreamUnavailable)
                } else {
                    tracing::error!(request_id = %ctx.request_id, error = %e, "internal error while proxying");
                    Some(Refusal::Unavailable(
                        "keygate could not handle this request".into(),
                    ))
                }
            }
        };
        let code = match &refusal {
            Some(r) if session.response_written().is_none() => {
                if respond(session, r, ctx, true).await.is_err() {
                    0
                } else {
                    r.status()
                }
            }
            _ => 0,
        };
        ctx.refusal = refusal;
        FailToProxy {
            error_code: code,
            can_reuse_downstream: false,
        }
    }

    async fn logging(&self, session: &mut Session, _e: Option<&Error>, ctx: &mut RequestCtx) {
        // Status codes are a bounded label set (three digits).
        let status = session.response_written().map(|r| r.status);
        let outcome = match &ctx.refusal {
            Some(r) => r.code(),
            None => "forwarded",
        };
        let now = Instant::now();
        self.audit_decision(ctx, status.map_or(0, |s| s.as_u16()), now);
        self.metrics
            .requests
            .with_label_values(&[
                ctx.action(),
                outcome,
                status.as_ref().map_or("none", |s| s.as_str()),
            ])
            .inc();
        self.metrics
            .request_duration
            .with_label_values(&[outcome])
            .observe(now.duration_since(ctx.arrived).as_secs_f64());
        if let Some(p) = &ctx.principal {
            p.usage.record(
                ctx.refusal.is_some(),
                session.body_bytes_read() as u64,
                session.body_bytes_sent() as u64,
            );
        }
        if let Some(sent) = ctx.sent_upstream {
            self.metrics
                .upstream_duration
                .with_label_values(&[ctx.action()])
                .observe(now.duration_since(sent).as_secs_f64());
        }
    }
}

impl Keygate {
    /// The audit event of a request that reached a decision: authentication failed, the rate
    /// limit or a policy refused it, keygate could not decide, or it was allowed (sampled).
    fn audit_decision(&self, ctx: &RequestCtx, status: u16, now: Instant) {
        let denied_by = match &ctx.refusal {
            Some(
                r @ (Refusal::Unauthorized(_)
                | Refusal::Forbidden(_)
                | Refusal::RateLimited { .. }
                | Refusal::Unavailable(_)),
            ) => Some(r),
            // Malformed requests and unknown routes decide nothing; an upstream failure after
            // an allow is still an allow.
            _ => None,
        };
        let allowed = denied_by.is_none()
            && !ctx.verdicts.is_empty()
            && ctx.verdicts.iter().all(|v| v.allowed);
        if (denied_by.is_none() && !allowed) || !self.audit.wants(allowed) {
            return;
        }
        let loaded = self.policy.current();
        let details = match &ctx.refusal {
            Some(Refusal::Unauthorized(f)) => Some(serde_json::json!({ "reason": f.as_str() })),
            Some(Refusal::Forbidden(d)) if !d.is_empty() => {
                Some(serde_json::Value::Object(d.clone()))
            }
            _ => None,
        };
        self.audit.record(AuditEvent {
            time: crate::keys::format_time(crate::store::now_millis()),
            request_id: ctx.request_id.clone(),
            client: ctx.client.map(|c| c.to_string()),
            principal: ctx.principal.as_ref().map(|p| AuditPrincipal {
                kind: match p.kind {
                    PrincipalKind::ApiKey => "apiKey",
                    PrincipalKind::ScopedToken => "scopedToken",
                    PrincipalKind::Login => "login",
                },
                key_id: p.key_id.clone(),
                user_id: p.user_id.clone(),
                workspace: p.workspace.clone(),
            }),
            action: ctx.action().to_owned(),
            resources: ctx.route.as_ref().map_or_else(Vec::new, |r| {
                r.resources
                    .iter()
                    .map(|r| format!("{}:{}", r.provider, r.path))
                    .collect()
            }),
            decision: if allowed { "allow" } else { "deny" },
            reason: denied_by.map_or("allowed", Refusal::code),
            details,
            policies: ctx
                .verdicts
                .iter()
                .flat_map(|v| v.policies.iter().cloned())
                .collect(),
            policy_set: loaded.hash.clone(),
            policy_epoch: loaded.epoch,
            status,
            latency_ms: now.duration_since(ctx.arrived).as_secs_f64() * 1000.0,
        });
    }
}
