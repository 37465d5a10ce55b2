//! The per-request context: what one stage hands to the next. Each field is written by
//! exactly one stage; `logging()` reads them all.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Instant;

use crate::policy::{ShadowDisagreement, Verdict};
use crate::principal::Principal;
use crate::ratelimit::Standing;
use crate::refusal::Refusal;
use crate::route::RouteMatch;

/// Set by the proxy once a request header has been read: the accept loop hands it to pingora
/// as the connection context (the only thing keygate ever passes from one request to the
/// next) and ends the connection if the header does not arrive in time.
pub struct HeaderArrived(pub std::sync::Arc<std::sync::atomic::AtomicBool>);

/// What one request carries from stage to stage.
pub struct RequestCtx {
    /// Set at arrival.
    pub request_id: String,
    pub arrived: Instant,
    pub client: Option<IpAddr>,
    /// Written by the route stage.
    pub route: Option<RouteMatch>,
    /// Written by the body stage of a GraphQL route: the bytes decided on, and the only ones
    /// forwarded.
    pub body: Option<bytes::Bytes>,
    /// Set with `body`: the request body is the one keygate read, and nothing else is sent.
    pub body_read: bool,
    /// Written by the identity stage.
    pub principal: Option<Arc<Principal>>,
    /// Written by the rate-limit stage: becomes the rate-limit headers of the response.
    pub standing: Option<Standing>,
    /// Written by the decide stage: one verdict per resource decided.
    pub verdicts: Vec<Arc<Verdict>>,
    /// Set when the shadow policies would have decided this request the other way.
    pub shadow: Option<ShadowDisagreement>,
    /// Written by whichever stage refused the request.
    pub refusal: Option<Refusal>,
    /// Written when the request is sent upstream.
    pub sent_upstream: Option<Instant>,
    /// The metric series of the action forwarded, resolved when it was sent upstream.
    pub series: Option<Arc<crate::telemetry::ActionSeries>>,
    /// `Strict-Transport-Security` for every response, on an HTTPS listener.
    pub hsts: Option<http::HeaderValue>,
    /// Decided as its route's ancestor action: on the way to the credential's base paths.
    pub on_the_way: bool,
    /// A WebDAV listing decided on the way: its answer is filtered entry by entry.
    pub listing: Option<super::multistatus::Multistatus>,
}

impl RequestCtx {
    pub fn new() -> RequestCtx {
        RequestCtx {
            request_id: crate::refusal::request_id(),
            arrived: Instant::now(),
            client: None,
            route: None,
            body: None,
            body_read: false,
            principal: None,
            standing: None,
            verdicts: Vec::new(),
            shadow: None,
            on_the_way: false,
            listing: None,
            refusal: None,
            sent_upstream: None,
            series: None,
            hsts: None,
        }
    }

    pub fn action(&self) -> &str {
        self.route.as_ref().map_or("none", |r| &r.action)
    }
}

impl Default for RequestCtx {
    fn default() -> RequestCtx {
        RequestCtx::new()
    }
}
