//! Stage 2, credentials: request headers (and query) → [`Credentials`]. Pure: no I/O, and the
//! credential itself never goes into an error message or a log line.

use http::header::{self, HeaderMap};

use crate::deny::{AuthFailure, Refusal};
use crate::keys::KeyStyle;

/// What the client presented.
#[derive(Clone, PartialEq, Eq)]
pub enum Credentials {
    /// An API key, from `Authorization: Bearer` or `X-API-Key`.
    ApiKey(String),
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Credentials::ApiKey(_) => f.write_str("ApiKey(…)"),
        }
    }
}

/// Query parameter names that carry credentials in other products.
const QUERY_CREDENTIALS: &[&str] = &[
    "api_key",
    "apikey",
    "api-key",
    "key",
    "token",
    "access_token",
    "x-api-key",
    "auth",
];

/// Reads the credential of a request.
pub fn credentials(
    headers: &HeaderMap,
    query: Option<&str>,
    style: &KeyStyle,
) -> Result<Credentials, Refusal> {
    if let Some(q) = query {
        if query_has_credential(q, style) {
            return Err(Refusal::bad_request(
                "credentials are not accepted in the query string; send them in a header",
            ));
        }
    }
    let mut authz = headers.get_all(header::AUTHORIZATION).iter();
    let bearer = match (authz.next(), authz.next()) {
        (None, _) => None,
        (Some(_), Some(_)) => {
            return Err(Refusal::bad_request(
                "the request has more than one Authorization header",
            ))
        }
        (Some(v), None) => Some(bearer_token(v.as_bytes())?),
    };
    let mut api = headers.get_all("x-api-key").iter();
    let api_key = match (api.next(), api.next()) {
        (None, _) => None,
        (Some(_), Some(_)) => {
            return Err(Refusal::bad_request(
                "the request has more than one X-API-Key header",
            ))
        }
        (Some(v), None) => Some(
            std::str::from_utf8(v.as_bytes())
                .map(str::trim)
                .map_err(|_| Refusal::Unauthorized(AuthFailure::Malformed))?
                .to_owned(),
        ),
    };
    let token = match (bearer, api_key) {
        (None, None) => return Err(Refusal::Unauthorized(AuthFailure::Missing)),
        (Some(a), Some(b)) if a != b => {
            return Err(Refusal::bad_request(
                "the request carries two different credentials",
            ))
        }
        (Some(a), _) | (None, Some(a)) => a,
    };
    if token.is_empty() {
        return Err(Refusal::Unauthorized(AuthFailure::Missing));
    }
    if style.looks_like_key(&token) {
        Ok(Credentials::ApiKey(token))
    } else {
        Err(Refusal::Unauthorized(AuthFailure::Malformed))
    }
}

/// `Bearer <token>`, the scheme name in any case.
fn bearer_token(value: &[u8]) -> Result<String, Refusal> {
    let malformed = || Refusal::Unauthorized(AuthFailure::Malformed);
    let value = std::str::from_utf8(value).map_err(|_| malformed())?.trim();
    let (scheme, token) = value.split_once(' ').ok_or_else(malformed)?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(malformed());
    }
    let token = token.trim();
    if token.is_empty() || token.contains(char::is_whitespace) {
        return Err(malformed());
    }
    Ok(token.to_owned())
}

fn query_has_credential(query: &str, style: &KeyStyle) -> bool {
    query.split('&').any(|pair| {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        let name = name.to_ascii_lowercase();
        QUERY_CREDENTIALS.contains(&name.as_str()) || style.looks_like_key(value)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut m = HeaderMap::new();
        for (k, v) in pairs {
            m.append(
                http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        m
    }

    fn read(pairs: &[(&str, &str)], q: Option<&str>) -> Result<Credentials, Refusal> {
        credentials(&h(pairs), q, &KeyStyle::default())
    }

    #[test]
    fn both_headers_and_any_scheme_case() {
        let k = "kg_abc";
        assert_eq!(
            read(&[("authorization", "Bearer kg_abc")], None),
            Ok(Credentials::ApiKey(k.into()))
        );
        assert_eq!(
            read(&[("authorization", "bEaReR   kg_abc ")], None),
            Ok(Credentials::ApiKey(k.into()))
        );
        assert_eq!(
            read(&[("x-api-key", "kg_abc")], None),
            Ok(Credentials::ApiKey(k.into()))
        );
        assert_eq!(
            read(
                &[("x-api-key", "kg_abc"), ("authorization", "Bearer kg_abc")],
                None
            ),
            Ok(Credentials::ApiKey(k.into()))
        );
    }

    #[test]
    fn refusals() {
        let unauth = |f| Err(Refusal::Unauthorized(f));
        assert_eq!(read(&[], None), unauth(AuthFailure::Missing));
        assert_eq!(
            read(&[("authorization", "Basic a2c6eA==")], None),
            unauth(AuthFailure::Malformed)
        );
        assert_eq!(
            read(&[("authorization", "Bearer")], None),
            unauth(AuthFailure::Malformed)
        );
        assert_eq!(
            read(&[("authorization", "Bearer a b")], None),
            unauth(AuthFailure::Malformed)
        );
        assert_eq!(
            read(&[("x-api-key", "not-a-key")], None),
            unauth(AuthFailure::Malformed)
        );
        for bad in [
            read(
                &[("x-api-key", "kg_a"), ("authorization", "Bearer kg_b")],
                None,
            ),
            read(&[("x-api-key", "kg_a"), ("x-api-key", "kg_a")], None),
            read(
                &[
                    ("authorization", "Bearer kg_a"),
                    ("authorization", "Bearer kg_a"),
                ],
                None,
            ),
            read(&[("x-api-key", "kg_a")], Some("api_key=kg_a")),
            read(&[], Some("x=1&TOKEN=abc")),
            read(&[], Some("q=drv_0123")),
        ] {
            assert!(matches!(bad, Err(Refusal::BadRequest(_))), "{bad:?}");
        }
        assert!(read(&[("x-api-key", "kg_a")], Some("q=report&page=2")).is_ok());
    }

    #[test]
    fn debug_never_shows_the_secret() {
        assert_eq!(
            format!("{:?}", Credentials::ApiKey("kg_secret".into())),
            "ApiKey(…)"
        );
    }
}
