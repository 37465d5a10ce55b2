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

/// Keys looked up at most for one request to the plain listener.
pub const MAX_CANDIDATES: usize = 4;

/// What a request presents to be authenticated.
#[derive(Debug, Clone, Copy)]
pub struct Presented<'a> {
    pub method: &'a Method,
    pub headers: &'a HeaderMap,
    /// The query string, searched for credentials that must not be there.
    pub query: Option<&'a str>,
    /// The client's address, for the per-address gate and counts.
    pub client: Option<IpAddr>,
    /// The route takes an API key as the password of HTTP Basic authentication.
    pub basic: bool,
}

impl Identity {
    /// Authenticates a request: 429 for an address that kept failing, 400/401 for a missing,
    /// malformed or unknown credential, 403 for a session write without its CSRF proof, 503
    /// when keygate cannot check. Failed authentications (401) and CSRF refusals (403) count
    /// against the client's address.
    pub async fn authenticate(&self, req: Presented<'_>) -> Result<Arc<Principal>, Refusal> {
        self.gate.check(req.client)?;
        let count = |refusal: &Refusal| self.count(refusal, req.client);
        let creds =
            credentials(req.headers, req.query, &self.rules, req.basic).inspect_err(count)?;
        if let Credentials::Session(secret) = &creds {
            check_csrf(req.method, req.headers, secret, &self.rules, &self.pepper)
                .inspect_err(count)?;
        }
        self.principal_for(&creds).await.inspect_err(count)
    }

    /// The valid API keys among everything key-shaped a request carries (`Authorization`,
    /// `X-API-Key`, query values read as sent, decoded once and twice), for revoking keys sent
    /// in clear. Unlike [`Identity::authenticate`] it refuses nothing on the request's shape,
    /// so that a malformed or ambiguous request cannot shield a leaked key; it looks up at
    /// most [`MAX_CANDIDATES`] keys, behind the address gate, and counts every unknown one
    /// against the client's address like a failed authentication.
    pub async fn keys_in(
        &self,
        headers: &HeaderMap,
        query: Option<&str>,
        client: Option<IpAddr>,
    ) -> Result<Vec<Arc<Principal>>, Refusal> {
        self.gate.check(client)?;
        let style = &self.rules.style;
        let mut candidates: Vec<String> = Vec::new();
        let mut consider = |text: &str| {
            for word in text
                .split(|c: char| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '-')))
                .filter(|w| style.is_well_formed(w))
            {
                if candidates.len() < MAX_CANDIDATES && !candidates.iter().any(|c| c == word) {
                    candidates.push(word.to_owned());
                }
            }
        };
        for name in [http::header::AUTHORIZATION.as_str(), "x-api-key"] {
            for value in headers.get_all(name).iter().take(MAX_CANDIDATES) {
                consider(&String::from_utf8_lossy(value.as_bytes()));
                // A key sent as a Basic password is in clear all the same.
                if let Ok(password) = super::credentials::basic_password(value.as_bytes()) {
                    consider(&password);
                }
            }
        }
        if let Some(q) = query {
            let decode = |raw: &str| {
                percent_encoding::percent_decode_str(&raw.replace('+', " "))
                    .decode_utf8_lossy()
                    .into_owned()
            };
            let once = decode(q);
            for text in [q.to_owned(), decode(&once), once] {
                consider(&text);
            }
        }
        let mut found = Vec::new();
        for key in candidates {
            match self.principal_for(&Credentials::ApiKey(key)).await {
                Ok(p) => found.push(p),
                Err(refusal @ Refusal::Unauthorized(_)) => self.count(&refusal, client),
                // A candidate that cannot be checked now does not stop the others.
                Err(_) => {}
            }
        }
        Ok(found)
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
