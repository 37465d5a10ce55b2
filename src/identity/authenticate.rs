//! The one way in, for both planes: the address gate, the credential headers, the CSRF check of
//! a browser session, the lookup. Every failure on the way is counted here and only here, so
//! the planes cannot drift apart in what they count.

use std::net::IpAddr;
use std::sync::Arc;

use http::{HeaderMap, Method};

use super::credentials::{check_csrf, credentials, Credentials};
use super::Identity;
use crate::principal::Principal;
use crate::refusal::{AuthFailure, Refusal};

/// What a request presents to be authenticated.
#[derive(Debug, Clone, Copy)]
pub struct Presented<'a> {
    pub method: &'a Method,
    pub headers: &'a HeaderMap,
    /// The query string, searched for credentials that must not be there.
    pub query: Option<&'a str>,
    /// The client's address, for the per-address gate and counts.
    pub client: Option<IpAddr>,
}

impl Identity {
    /// Authenticates a request: 429 for an address that kept failing, 400/401 for a missing,
    /// malformed or unknown credential, 403 for a session write without its CSRF proof, 503
    /// when keygate cannot check. Failed authentications (401) and CSRF refusals (403) count
    /// against the client's address.
    pub async fn authenticate(&self, req: Presented<'_>) -> Result<Arc<Principal>, Refusal> {
        self.gate.check(req.client)?;
        let count = |refusal: &Refusal| self.count(refusal, req.client);
        let creds = credentials(req.headers, req.query, &self.rules).inspect_err(count)?;
        if let Credentials::Session(secret) = &creds {
            check_csrf(req.method, req.headers, secret, &self.rules, &self.pepper)
                .inspect_err(count)?;
        }
        self.principal_for(&creds).await.inspect_err(count)
    }

    /// Counts a refusal against the client's address: a failed authentication, or a request
    /// refused 403 (by the CSRF check here, or by a policy after authentication).
    ///
    /// A request without any credential is not an attempt: it is counted in the metrics but
    /// not against the address (behind a shared NAT or a careless load balancer, anonymous
    /// requests would otherwise lock everyone out).
    pub fn count(&self, refusal: &Refusal, client: Option<IpAddr>) {
        match refusal {
            Refusal::Unauthorized(AuthFailure::Missing) => {
                self.gate.record_failure(None, AuthFailure::Missing)
            }
            Refusal::Unauthorized(reason) => self.gate.record_failure(client, *reason),
            Refusal::Forbidden(_) => self.gate.record_forbidden(client),
            _ => {}
        }
    }
}
