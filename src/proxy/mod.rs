//! The data plane: keygate's `ProxyHttp`, the table of contents of the request path. The only
//! module that touches the pingora `Session`.
//!
//! ```text
//!  request_filter ─ admit: framing ─ route ─ authenticate ─ [body] ─ limit ─ decide ─┐
//!        │ refusal: render once (respond.rs), answer, stop                             │ allowed
//!        ▼                                                                             ▼
//!     logging (record.rs) ◀─ response_filter ◀─ upstream ◀─ upstream_request_filter (forward.rs)
//! ```
//! Only a GraphQL route has the body stage (`body.rs`): its body is read, bounded, after the
//! credential is accepted, and its operation decides the actions; exactly the bytes read are
//! forwarded.
//! Each stage is a plain function in its own module that takes values and returns a typed
//! result; the per-request [`RequestCtx`] (`context.rs`) carries what one stage hands to the
//! next, each field written by exactly one stage. Nothing carries over between requests on one
//! connection. `upstream.rs` chooses the peer.
//!
//! May import every stage (`route`, `identity`, `ratelimit`, `policy`), `principal`, `model`,
//! `refusal`, `audit`, `telemetry`, `clock`, `config` (upstream settings). Never `manage`,
//! `control` or `server`.

mod body;
mod context;
pub mod forward;
pub mod multistatus;
mod record;
mod respond;
pub mod upstream;

use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::prelude::*;
use pingora::proxy::FailToProxy;
use pingora::ErrorType;

pub use context::{HeaderArrived, RequestCtx};
use respond::respond;
use upstream::Upstreams;

use crate::audit::AuditLog;
use crate::clock::{format_time, now_millis};
use crate::identity::client::TrustedProxies;
use crate::identity::{Identity, Presented};
use crate::model::EXPIRY_WARNING_MS;
use crate::policy::PolicyEngine;
use crate::principal::{Principal, PrincipalKind};
use crate::ratelimit::RateLimiter;
use crate::refusal::Refusal;
use crate::route::{Check, RouteInput, RouteTable};
use crate::telemetry::Metrics;

/// Everything the data plane needs, shared by all requests.
pub struct Keygate {
    pub routes: RouteTable,
    pub identity: Arc<Identity>,
    pub limits: RateLimiter,
    pub policy: Arc<PolicyEngine>,
    pub upstream: Arc<Upstreams>,
    pub audit: Arc<AuditLog>,
    pub metrics: Arc<Metrics>,
    /// Peers whose forwarding headers name the client (`[server] trusted_proxies`).
    pub trusted_proxies: TrustedProxies,
    /// `Strict-Transport-Security` of every response, when the data plane is HTTPS.
    pub hsts: Option<http::HeaderValue>,
}

impl Keygate {
    /// Applies every cache's deferred bookkeeping now. moka records each read and write of a
    /// cache for its eviction policy and applies them later, inside whichever call comes 300 ms
    /// after the last time or after 64 of them: a call's cost then depends on the clock. The
    /// instruction-count benchmarks call this at the end of their setup, so that the one call
    /// they count does not pay for the setup's bookkeeping.
    pub fn run_pending_cache_tasks(&self) {
        self.identity.run_pending_cache_tasks();
        self.limits.run_pending_cache_tasks();
        self.policy.run_pending_cache_tasks();
    }

    /// The stages up to the decision, in order, for a request without a body stage. `Ok`
    /// means forward. (`request_filter` without the pingora session; public for the
    /// benchmarks.)
    pub async fn admit(
        &self,
        req: &RequestHeader,
        raw_header: Option<&[u8]>,
        ctx: &mut RequestCtx,
    ) -> Result<(), Refusal> {
        self.admit_head(req, raw_header, ctx).await?;
        self.admit_decide(ctx).await
    }

    /// Framing, route and authentication: what the request header alone decides.
    async fn admit_head(
        &self,
        req: &RequestHeader,
        raw_header: Option<&[u8]>,
        ctx: &mut RequestCtx,
    ) -> Result<(), Refusal> {
        forward::check_framing(&req.headers, raw_header)?;
        // TRACE echoes the request, headers keygate adds (a server's credential) included.
        if req.method == http::Method::TRACE {
            return Err(Refusal::bad_request("TRACE is not forwarded"));
        }
        // Headers that say what a request acts on are read once: two would be read one way
        // here and perhaps another way upstream.
        for name in ["depth", "destination", "overwrite", "if"] {
            if req.headers.get_all(name).iter().nth(1).is_some() {
                return Err(Refusal::bad_request(format!(
                    "the request has more than one {name} header"
                )));
            }
        }
        let route = ctx
            .route
            .insert(self.routes.route(route_input(req, raw_header))?);
        let presented = Presented {
            method: &req.method,
            headers: &req.headers,
            query: route.query(),
            client: ctx.client,
            basic: route.basic,
        };
        // Go's FormValue and PHP's $_REQUEST read a form body's fields before the URL's, and
        // servers cut a media type at different characters (`;`, `,`, a space) or read past
        // bytes keygate cannot: any Content-Type that could name a form is refused.
        if route.resource_in_query {
            let form = req
                .headers
                .get_all(http::header::CONTENT_TYPE)
                .iter()
                .any(|v| {
                    let b = v.as_bytes();
                    !b.iter()
                        .all(|c| c.is_ascii_graphic() || *c == b' ' || *c == b'\t')
                        || b.contains(&b',')
                        || b.to_ascii_lowercase().windows(4).any(|w| w == b"form")
                });
            if form {
                return Err(Refusal::bad_request(
                    "a request whose query names the resource must not carry a form body",
                ));
            }
        }
        let principal = self.identity.authenticate(presented).await?;
        ctx.principal = Some(principal);
        Ok(())
    }

    /// Rate limit and decision, once the route's actions are known.
    async fn admit_decide(&self, ctx: &mut RequestCtx) -> Result<(), Refusal> {
        // INVARIANT: admit_head succeeded, so both are set.
        let (Some(route), Some(principal)) = (ctx.route.as_ref(), ctx.principal.as_ref()) else {
            return Err(Refusal::Unavailable(
                "a request was decided unchecked".into(),
            ));
        };
        // A GraphQL operation is charged once for each distinct action its fields need, so a
        // rate-limit rule on one action cannot be dodged by asking for another field first;
        // the headers show the tightest standing.
        let mut actions: Vec<&str> = vec![&route.action];
        if ctx.body_read {
            for check in route.checks() {
                let (Check::Path(a, _) | Check::Unmapped(a, _)) = check;
                if !actions.contains(&&**a) {
                    actions.push(a);
                }
            }
        }
        match self.limits.check_actions(principal, &actions).await {
            Ok(standing) => ctx.standing = standing,
            Err((refusal, standing)) => {
                ctx.standing = standing;
                return Err(refusal);
            }
        }
        let principal = principal.clone();
        self.decide_route(&principal, ctx)
    }

    /// The decision on the request's route for `principal`, the verdicts kept for the audit
    /// log. Denied, a request on the way to the credential's base paths (a WebDAV client
    /// opening the root, creating parents) is decided as its route's ancestor action, and a
    /// listing's answer is then filtered to the entries on the way.
    fn decide_route(&self, principal: &Principal, ctx: &mut RequestCtx) -> Result<(), Refusal> {
        let Some(route) = ctx.route.as_ref() else {
            return Err(Refusal::Unavailable(
                "a request was decided unchecked".into(),
            ));
        };
        let mut decided = self.policy.decide(principal, route);
        if decided.refusal.is_some() && !ctx.on_the_way {
            if let Some(way) = route.on_the_way() {
                let again = self.policy.decide(principal, &way);
                if again.refusal.is_none() {
                    decided = again;
                    ctx.route = Some(way);
                    ctx.on_the_way = true;
                }
            }
        }
        ctx.verdicts = decided.verdicts;
        ctx.shadow = decided.shadow;
        match decided.refusal {
            None => Ok(()),
            Some(refusal) => {
                self.identity.count(&refusal, ctx.client);
                Err(refusal)
            }
        }
    }

    /// The credential and the decision again, for a request whose credential changed after it
    /// was decided (revoked, or its role, scopes or base paths changed): the credential's
    /// current version is authenticated and decided on the same route (or on its way, as a
    /// fresh request would be), so a revoke answers 401, a downgrade 403, and a change that
    /// does not touch the request lets it through. The rate limit already counted the request
    /// and is not asked again: a change that moves the credential under a tighter rule applies
    /// from its next request.
    async fn admit_again(&self, req: &RequestHeader, ctx: &mut RequestCtx) -> Result<(), Refusal> {
        let Some(route) = ctx.route.as_ref() else {
            return Err(Refusal::Unavailable(
                "a request was decided unchecked".into(),
            ));
        };
        let principal = self
            .identity
            .authenticate(Presented {
                method: &req.method,
                headers: &req.headers,
                query: route.query(),
                client: ctx.client,
                basic: route.basic,
            })
            .await?;
        ctx.principal = Some(principal.clone());
        self.decide_route(&principal, ctx)
    }

    /// Whether an entry of a listing decided on the way (its `href`, as the server wrote it)
    /// is itself on the way to the credential's base paths and allowed there: routed like a
    /// request for it, then decided as its route's ancestor action. Anything that does not
    /// route, or is not on the way, is not shown; the policies decide the rest (at most one
    /// decision per folder on the way, each cached).
    fn on_the_way(&self, principal: &Principal, href: &str) -> bool {
        let Some(path) = crate::route::server_href_path(href) else {
            return false;
        };
        let Ok(entry) = self.routes.route(RouteInput {
            method: "PROPFIND",
            raw_target: path.as_bytes(),
            destination: None,
            overwrite: None,
            depth: Some(b"0"),
            if_header: None,
            host: None,
        }) else {
            return false;
        };
        let Some(way) = entry.on_the_way() else {
            return false;
        };
        let on_the_way = way
            .resources
            .first()
            .is_some_and(|r| principal.leads_to_grant(&r.provider, &r.path));
        on_the_way && self.policy.decide(principal, &way).refusal.is_none()
    }
}

/// What the route stage reads from the request header. The target is the request line's, as
/// sent: pingora's parsed one has lost a fragment (`DELETE /frag/#ment` would be read, and
/// forwarded, as `DELETE /frag/`).
fn route_input<'a>(req: &'a RequestHeader, raw_header: Option<&'a [u8]>) -> RouteInput<'a> {
    RouteInput {
        method: req.method.as_str(),
        raw_target: raw_header
            .and_then(forward::request_line_target)
            .unwrap_or_else(|| req.raw_path()),
        destination: req.headers.get("destination").map(|v| v.as_bytes()),
        overwrite: req.headers.get("overwrite").map(|v| v.as_bytes()),
        depth: req.headers.get("depth").map(|v| v.as_bytes()),
        if_header: req.headers.get("if").map(|v| v.as_bytes()),
        host: req
            .headers
            .get(http::header::HOST)
            .and_then(|v| v.to_str().ok()),
    }
}

#[async_trait]
impl ProxyHttp for Keygate {
    type CTX = RequestCtx;

    fn new_ctx(&self) -> RequestCtx {
        RequestCtx::new()
    }

    /// Pingora calls this once the request header has been read, with the value the accept
    /// loop attached to the connection: the flag that stops its header deadline. Nothing else
    /// is ever carried from one request to the next.
    fn on_connection_reuse(
        &self,
        _session: &mut Session,
        _ctx: &mut RequestCtx,
        prev: Box<dyn std::any::Any + Send + Sync>,
    ) {
        if let Some(arrived) = prev.downcast_ref::<HeaderArrived>() {
            arrived.0.store(true, std::sync::atomic::Ordering::Release);
        }
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut RequestCtx) -> Result<bool> {
        let raw_header = session
            .as_downstream()
            .as_http1()
            .map(|h1| h1.get_headers_raw_bytes());
        // Only an HTTPS response may carry Strict-Transport-Security.
        if self.hsts.is_some() && session.digest().is_some_and(|d| d.ssl_digest.is_some()) {
            ctx.hsts = self.hsts.clone();
        }
        ctx.client = session.client_addr().and_then(|a| a.as_inet()).map(|a| {
            self.trusted_proxies
                .client(a.ip(), &session.req_header().headers)
        });
        let mut admitted = self
            .admit_head(session.req_header(), raw_header.as_deref(), ctx)
            .await;
        let graphql = ctx.route.as_ref().and_then(|r| r.graphql.clone());
        if let (Ok(()), Some(rules)) = (&admitted, graphql) {
            admitted = body::read_graphql(session, &rules, ctx).await;
        }
        if admitted.is_ok() {
            admitted = self.admit_decide(ctx).await;
        }
        match admitted {
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
        ctx: &mut RequestCtx,
    ) -> Result<Box<HttpPeer>> {
        let provider = ctx.route.as_ref().and_then(|r| r.provider_name());
        self.upstream
            .select(provider)
            .ok_or_else(|| Error::explain(ErrorType::ConnectNoRoute, "no healthy upstream peer"))
    }

    /// A request whose body keygate read (GraphQL) forwards exactly the bytes it decided on;
    /// any other body streams through untouched.
    async fn request_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<bytes::Bytes>,
        _end_of_stream: bool,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        // pingora sends the bytes it replays once per attempt (a retry sends them again).
        if ctx.body_read && body.is_some() {
            *body = ctx.body.clone();
        }
        Ok(())
    }

    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        upstream_request: &mut RequestHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        // A revoke or change that returned while this request was in flight applies to it.
        if ctx
            .principal
            .as_ref()
            .is_some_and(|p| !self.identity.is_current(p))
        {
            if let Err(refusal) = self.admit_again(session.req_header(), ctx).await {
                let status = refusal.status();
                ctx.refusal = Some(refusal);
                return Err(Error::explain(
                    ErrorType::HTTPStatus(status),
                    "credential changed in flight",
                ));
            }
        }
        // INVARIANT: request_filter lets a request through only with a route and a principal.
        let (Some(route), Some(principal)) = (ctx.route.as_ref(), ctx.principal.as_ref()) else {
            return Err(Error::explain(
                ErrorType::InternalError,
                "forwarding an unchecked request",
            ));
        };
        // keygate answered `Expect: 100-continue` itself when it read the body.
        if ctx.body_read {
            upstream_request.remove_header(&http::header::EXPECT);
        }
        // An answer keygate rewrites must come uncompressed.
        if route.forward.is_some()
            || (ctx.on_the_way && upstream_request.method.as_str() == "PROPFIND")
        {
            upstream_request.remove_header(&http::header::ACCEPT_ENCODING);
        }
        if forward::prepare_upstream(upstream_request, route, principal, &ctx.request_id).is_err() {
            return Err(Error::explain(
                ErrorType::InternalError,
                "cannot build the upstream request",
            ));
        }
        // A server that wants credentials of its own gets its service account's, never the
        // client's (prepare_upstream removed those).
        if let Some(value) = self.upstream.authorization(route.provider_name()) {
            upstream_request.insert_header(http::header::AUTHORIZATION, value.clone())?;
        }
        let now = Instant::now();
        let series = self.metrics.action(&route.action);
        series
            .overhead
            .observe(now.duration_since(ctx.arrived).as_secs_f64());
        ctx.series = Some(series);
        ctx.sent_upstream = Some(now);
        Ok(())
    }

    async fn response_filter(
        &self,
        session: &mut Session,
        upstream_response: &mut ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        forward::clean_response(upstream_response, &ctx.request_id);
        // A listing decided on the way to the credential's base paths shows only the entries
        // on the way: its body is filtered, so its length is no longer known.
        let propfind = session.req_header().method.as_str() == "PROPFIND";
        let provider = ctx.route.as_ref().and_then(|r| r.provider_name());
        // A server keygate signs in to as a service account may open a session for it: its
        // cookie would let any client act as that account, around keygate.
        if self.upstream.authorization(provider).is_some() {
            upstream_response.remove_header(&http::header::SET_COOKIE);
        }
        let forward = ctx.route.as_ref().and_then(|r| r.forward.clone());
        // A server mounted under keygate's path names its resources in its own: where it
        // says where something is, that is said again under the mount (or not at all).
        if let Some(f) = &forward {
            let location = upstream_response
                .headers
                .get(http::header::LOCATION)
                .map(|l| l.to_str().ok().and_then(|l| f.client_href(l)));
            match location {
                Some(Some(moved)) => {
                    upstream_response.insert_header(http::header::LOCATION, moved)?;
                }
                Some(None) => {
                    upstream_response.remove_header(&http::header::LOCATION);
                }
                None => {}
            }
            upstream_response.remove_header(&http::header::CONTENT_LOCATION);
        }
        let rewrite = forward.is_some() || (ctx.on_the_way && propfind);
        if rewrite && upstream_response.status.as_u16() == 207 {
            let encoded = upstream_response
                .headers
                .get(http::header::CONTENT_ENCODING)
                .is_some_and(|e| !e.as_bytes().eq_ignore_ascii_case(b"identity"));
            ctx.listing = Some(if encoded {
                multistatus::Multistatus::unreadable()
            } else {
                multistatus::Multistatus::new()
            });
            upstream_response.remove_header(&http::header::CONTENT_LENGTH);
            upstream_response.remove_header(&http::header::CONTENT_ENCODING);
            upstream_response.remove_header(&http::header::ETAG);
            upstream_response.insert_header(http::header::TRANSFER_ENCODING, "chunked")?;
        }
        if let Some(hsts) = &ctx.hsts {
            upstream_response.insert_header(http::header::STRICT_TRANSPORT_SECURITY, hsts)?;
        }
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
            if expires_at - now_millis() <= EXPIRY_WARNING_MS {
                let _ =
                    upstream_response.insert_header(forward::KEY_EXPIRES, format_time(expires_at));
            }
        }
        Ok(())
    }

    fn response_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<bytes::Bytes>,
        end_of_stream: bool,
        ctx: &mut RequestCtx,
    ) -> Result<Option<std::time::Duration>> {
        let (Some(listing), Some(principal)) = (ctx.listing.as_mut(), ctx.principal.as_ref())
        else {
            return Ok(None);
        };
        let forward = ctx.route.as_ref().and_then(|r| r.forward.as_deref());
        let on_the_way = ctx.on_the_way;
        let mut keep = |href: &str| {
            let href = match forward {
                Some(f) => f.client_href(href)?,
                None => href.to_owned(),
            };
            (!on_the_way || self.on_the_way(principal, &href)).then_some(href)
        };
        let mut out = match body.take() {
            Some(chunk) => listing.push(&chunk, &mut keep),
            None => Vec::new(),
        };
        if end_of_stream && !listing.is_closed() {
            out.extend(listing.finish(&mut keep));
            tracing::debug!(
                request_id = %ctx.request_id,
                kept = listing.kept,
                dropped = listing.dropped,
                "filtered a listing on the way to the credential's base paths"
            );
        }
        // An empty chunk would read as the end of a chunked body: nothing is sent instead.
        *body = (!out.is_empty()).then(|| bytes::Bytes::from(out));
        Ok(None)
    }

    async fn fail_to_proxy(
        &self,
        session: &mut Session,
        e: &Error,
        ctx: &mut RequestCtx,
    ) -> FailToProxy {
        // A refusal a stage already decided (a credential revoked in flight) is what the
        // client gets; otherwise the failure is turned into the refusal it amounts to.
        let refusal = match ctx.refusal.take() {
            Some(decided) => Some(decided),
            None => self.refusal_for_failure(e, &ctx.request_id),
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
        let took = now.duration_since(ctx.arrived).as_secs_f64();
        match (&ctx.series, status) {
            (Some(series), Some(status)) if ctx.refusal.is_none() => {
                series.forwarded(status);
                self.metrics.forwarded_duration().observe(took);
            }
            _ => {
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
                    .observe(took);
            }
        }
        if let Some(p) = &ctx.principal {
            p.usage.record(
                ctx.refusal.is_some(),
                session.body_bytes_read() as u64,
                session.body_bytes_sent() as u64,
            );
        }
        if let (Some(sent), Some(series)) = (ctx.sent_upstream, &ctx.series) {
            series
                .upstream_duration()
                .observe(now.duration_since(sent).as_secs_f64());
        }
    }
}
