//! Every refusal keygate answers, and the JSON envelopes of both planes: [`error_body`] and
//! [`success_body`] are the only places the `{"success": …}` shapes are built.
//!
//! A refusal is an outcome, not a failure: the stages return it, the data plane renders it once
//! (`proxy/respond.rs`), the control plane through the same [`Refusal::render`]. Messages are
//! lower-case, name the client's input where that helps, and never carry a secret.
//!
//! May import: nothing of keygate's.

use std::borrow::Cow;

use serde_json::{json, Map, Value};

/// Why a credential was not accepted (`details.reason` of a 401).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthFailure {
    Missing,
    Malformed,
    Unknown,
    Expired,
    Revoked,
    /// A token whose signature, issuer, audience, `nbf`, algorithm or `kid` does not check out.
    Invalid,
}

impl AuthFailure {
    pub fn as_str(self) -> &'static str {
        match self {
            AuthFailure::Missing => "missing",
            AuthFailure::Malformed => "malformed",
            AuthFailure::Unknown => "unknown",
            AuthFailure::Expired => "expired",
            AuthFailure::Revoked => "revoked",
            AuthFailure::Invalid => "invalid",
        }
    }
}

/// A request keygate answers itself instead of forwarding.
#[derive(Debug, Clone, PartialEq)]
pub enum Refusal {
    /// Malformed or ambiguous request (400).
    BadRequest(Cow<'static, str>),
    /// No valid credential (401).
    Unauthorized(AuthFailure),
    /// A policy denies (403); `details` names the required scope or the restriction.
    Forbidden(Map<String, Value>),
    /// No route matches (404).
    NotFound,
    /// The request header is larger, or has more fields, than keygate accepts (431).
    HeadersTooLarge,
    /// A body keygate reads to decide (a GraphQL document) is over its limit, in bytes (413).
    PayloadTooLarge { limit: usize },
    /// A body keygate reads to decide did not arrive in time (408).
    RequestTimeout,
    /// A GraphQL request that carries only a persisted-query hash (400): keygate cannot see
    /// what it would run. The body also carries the GraphQL `errors` that Automatic Persisted
    /// Queries clients answer by resending with the document.
    PersistedQueryNotFound,
    /// Over the rate limit (429).
    RateLimited { retry_after_secs: u64 },
    /// The upstream could not be reached (502).
    UpstreamUnavailable,
    /// The upstream did not answer in time (504).
    UpstreamTimeout,
    /// keygate cannot decide right now (503); fail closed.
    Unavailable(Cow<'static, str>),
    /// A request to the plain-HTTP listener of HTTPS-only mode (403); `credential_revoked`
    /// when the API key it carried was revoked for being sent in clear.
    HttpsRequired { credential_revoked: bool },
}

/// A refusal rendered for the wire.
#[derive(Debug, Clone, PartialEq)]
pub struct Rendered {
    pub status: u16,
    pub headers: Vec<(&'static str, String)>,
    pub body: Vec<u8>,
}

impl Refusal {
    pub fn bad_request(message: impl Into<Cow<'static, str>>) -> Refusal {
        Refusal::BadRequest(message.into())
    }

    pub fn status(&self) -> u16 {
        match self {
            Refusal::BadRequest(_) => 400,
            Refusal::Unauthorized(_) => 401,
            Refusal::Forbidden(_) => 403,
            Refusal::NotFound => 404,
            Refusal::HeadersTooLarge => 431,
            Refusal::PayloadTooLarge { .. } => 413,
            Refusal::RequestTimeout => 408,
            Refusal::PersistedQueryNotFound => 400,
            Refusal::RateLimited { .. } => 429,
            Refusal::UpstreamUnavailable => 502,
            Refusal::UpstreamTimeout => 504,
            Refusal::Unavailable(_) => 503,
            Refusal::HttpsRequired { .. } => 403,
        }
    }

    /// The stable error code of the JSON body; also the `reason` label of metrics.
    pub fn code(&self) -> &'static str {
        match self {
            Refusal::BadRequest(_) => "BAD_REQUEST",
            Refusal::Unauthorized(_) => "UNAUTHORIZED",
            Refusal::Forbidden(_) => "FORBIDDEN",
            Refusal::NotFound => "NOT_FOUND",
            Refusal::HeadersTooLarge => "HEADERS_TOO_LARGE",
            Refusal::PayloadTooLarge { .. } => "PAYLOAD_TOO_LARGE",
            Refusal::RequestTimeout => "REQUEST_TIMEOUT",
            Refusal::PersistedQueryNotFound => "PERSISTED_QUERY_NOT_FOUND",
            Refusal::RateLimited { .. } => "RATE_LIMIT_EXCEEDED",
            Refusal::UpstreamUnavailable => "UPSTREAM_UNAVAILABLE",
            Refusal::UpstreamTimeout => "UPSTREAM_TIMEOUT",
            Refusal::Unavailable(_) => "UNAVAILABLE",
            Refusal::HttpsRequired { .. } => "HTTPS_REQUIRED",
        }
    }

    pub fn message(&self) -> Cow<'static, str> {
        match self {
            Refusal::BadRequest(m) | Refusal::Unavailable(m) => m.clone(),
            Refusal::Unauthorized(f) => match f {
                AuthFailure::Missing => "a credential is required".into(),
                AuthFailure::Malformed => "the credential is malformed".into(),
                AuthFailure::Unknown => "the credential is not recognised".into(),
                AuthFailure::Expired => "the credential has expired".into(),
                AuthFailure::Revoked => "the credential has been revoked".into(),
                AuthFailure::Invalid => "the token is not valid".into(),
            },
            Refusal::Forbidden(_) => "permission denied".into(),
            Refusal::NotFound => "no route matches this request".into(),
            Refusal::HeadersTooLarge => "the request header is too large".into(),
            Refusal::PayloadTooLarge { limit } => {
                format!("the request body is larger than {limit} bytes").into()
            }
            Refusal::RequestTimeout => "the request body did not arrive in time".into(),
            Refusal::PersistedQueryNotFound => {
                "send the GraphQL document with its persisted-query hash: keygate authorizes \
                 the document"
                    .into()
            }
            Refusal::RateLimited { .. } => "too many requests".into(),
            Refusal::UpstreamUnavailable => "the storage backend is unavailable".into(),
            Refusal::UpstreamTimeout => "the storage backend did not answer in time".into(),
            Refusal::HttpsRequired {
                credential_revoked: false,
            } => "this endpoint accepts requests only over HTTPS".into(),
            Refusal::HttpsRequired {
                credential_revoked: true,
            } => "this endpoint accepts requests only over HTTPS; the API key sent with this \
                  request was sent in clear and has been revoked"
                .into(),
        }
    }

    /// Renders the single JSON error shape (docs/request-path.md, "The error body").
    pub fn render(&self, request_id: &str) -> Rendered {
        let mut headers = vec![("content-type", "application/json".to_owned())];
        let mut details = None;
        let mut extra = Map::new();
        match self {
            Refusal::Unauthorized(f) => {
                details = Some(json!({ "reason": f.as_str() }));
                headers.push(("www-authenticate", "Bearer".to_owned()));
            }
            Refusal::Forbidden(d) if !d.is_empty() => details = Some(Value::Object(d.clone())),
            Refusal::RateLimited { retry_after_secs } => {
                extra.insert("retryAfter".into(), (*retry_after_secs).into());
                headers.push(("retry-after", retry_after_secs.to_string()));
            }
            Refusal::Unavailable(_) => headers.push(("retry-after", "1".to_owned())),
            Refusal::HttpsRequired { credential_revoked } => {
                details = Some(json!({ "credentialRevoked": credential_revoked }));
            }
            _ => {}
        }
        headers.push(("cache-control", "no-store".to_owned()));
        let mut body = error_body(self.code(), &self.message(), request_id, details);
        if let Some(Value::Object(error)) = body.get_mut("error") {
            error.extend(extra);
        }
        if let (Refusal::PersistedQueryNotFound, Value::Object(top)) = (self, &mut body) {
            top.insert(
                "errors".into(),
                json!([{
                    "message": "PersistedQueryNotFound",
                    "extensions": { "code": "PERSISTED_QUERY_NOT_FOUND" }
                }]),
            );
        }
        Rendered {
            status: self.status(),
            headers,
            body: serde_json::to_vec(&body).unwrap_or_default(),
        }
    }
}

/// The error envelope of both planes:
/// `{"success": false, "error": {"code", "message", "requestId", "details"?}}`.
pub fn error_body(code: &str, message: &str, request_id: &str, details: Option<Value>) -> Value {
    let mut error = Map::new();
    error.insert("code".into(), code.into());
    error.insert("message".into(), message.into());
    error.insert("requestId".into(), request_id.into());
    if let Some(details) = details {
        error.insert("details".into(), details);
    }
    json!({ "success": false, "error": Value::Object(error) })
}

/// The success envelope of the control plane: `{"success": true, "data": …}`.
pub fn success_body(data: impl serde::Serialize) -> Value {
    json!({ "success": true, "data": data })
}

/// A fresh request id (UUIDv7, 32 hex digits), as both planes hand out.
pub fn request_id() -> String {
    use rand::RngCore;
    // This runs for every request. `Uuid::now_v7` takes a process-wide lock and asks the kernel
    // for its random bits (a getrandom(2) call each time, 0.5 µs of a request in the profile):
    // the bits come from the thread's own CSPRNG instead, and the id is encoded into a buffer
    // rather than through `Display`. Ids within one millisecond are not ordered among
    // themselves; nothing needs them to be.
    let millis = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    let mut random = [0u8; 10];
    rand::thread_rng().fill_bytes(&mut random);
    let id = uuid::Builder::from_unix_timestamp_millis(millis, &random).into_uuid();
    let mut buf = uuid::Uuid::encode_buffer();
    (*id.simple().encode_lower(&mut buf)).to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(r: &Refusal) -> Value {
        serde_json::from_slice(&r.render("req-1").body).unwrap()
    }

    #[test]
    fn request_ids_are_distinct_time_ordered_uuids() {
        let before = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64;
        let ids: Vec<String> = (0..1000).map(|_| request_id()).collect();
        let distinct: std::collections::HashSet<&String> = ids.iter().collect();
        assert_eq!(distinct.len(), ids.len());
        for id in &ids {
            assert_eq!(id.len(), 32, "{id}");
            assert!(id
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)));
            let uuid = uuid::Uuid::parse_str(id).unwrap();
            assert_eq!(uuid.get_version_num(), 7, "{id}");
            assert_eq!(uuid.get_variant(), uuid::Variant::RFC4122);
            let (secs, nanos) = uuid.get_timestamp().unwrap().to_unix();
            let millis = secs * 1000 + u64::from(nanos) / 1_000_000;
            assert!(
                millis >= before && millis < before + 60_000,
                "{id}: {millis}"
            );
        }
    }

    #[test]
    fn every_refusal_has_the_documented_shape() {
        let all = [
            Refusal::bad_request("bad path"),
            Refusal::Unauthorized(AuthFailure::Revoked),
            Refusal::Forbidden(Map::new()),
            Refusal::NotFound,
            Refusal::HeadersTooLarge,
            Refusal::RateLimited {
                retry_after_secs: 7,
            },
            Refusal::PayloadTooLarge { limit: 65536 },
            Refusal::RequestTimeout,
            Refusal::PersistedQueryNotFound,
            Refusal::UpstreamUnavailable,
            Refusal::UpstreamTimeout,
            Refusal::Unavailable("policy set missing".into()),
            Refusal::HttpsRequired {
                credential_revoked: true,
            },
        ];
        let statuses: Vec<u16> = all.iter().map(Refusal::status).collect();
        assert_eq!(
            statuses,
            [400, 401, 403, 404, 431, 429, 413, 408, 400, 502, 504, 503, 403]
        );
        for r in &all {
            let b = body(r);
            assert_eq!(b["success"], false);
            assert_eq!(b["error"]["code"], r.code());
            assert_eq!(b["error"]["requestId"], "req-1");
            assert!(b["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty()));
        }
    }

    #[test]
    fn rate_limit_carries_retry_after_in_body_and_header() {
        let r = Refusal::RateLimited {
            retry_after_secs: 42,
        }
        .render("x");
        let b: Value = serde_json::from_slice(&r.body).unwrap();
        assert_eq!(b["error"]["retryAfter"], 42);
        assert!(r.headers.contains(&("retry-after", "42".to_owned())));
    }

    #[test]
    fn unauthorized_names_the_reason() {
        let b = body(&Refusal::Unauthorized(AuthFailure::Expired));
        assert_eq!(b["error"]["details"]["reason"], "expired");
    }
}
