//! Stage 2, credentials: request headers (and query) → [`Credentials`]. Pure: no I/O, and the
//! credential itself never goes into an error message or a log line.

use http::header::{self, HeaderMap};

use crate::model::KeyStyle;
use crate::refusal::{AuthFailure, Refusal};

/// What the client presented.
#[derive(Clone, PartialEq, Eq)]
pub enum Credentials {
    /// An API key, from `Authorization: Bearer`, `X-API-Key`, or (on routes that take it) the
    /// password of `Authorization: Basic`.
    ApiKey(String),
    /// A JWT (keygate's or an external issuer's), from `Authorization: Bearer`.
    Jwt(String),
    /// A browser session, from the session cookie (only when no header credential is sent).
    Session(String),
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Credentials::ApiKey(_) => f.write_str("ApiKey(…)"),
            Credentials::Jwt(_) => f.write_str("Jwt(…)"),
            Credentials::Session(_) => f.write_str("Session(…)"),
        }
    }
}

/// Where the credentials of a request are looked for.
#[derive(Debug, Clone, Default)]
pub struct CredentialRules {
    pub style: KeyStyle,
    /// The session cookie's name; `None`: cookies are not credentials.
    pub session_cookie: Option<String>,
    /// Origins allowed to send state-changing requests with the session cookie; empty: the
    /// request's own (its `Host`).
    pub allowed_origins: Vec<String>,
}

/// The CSRF token of a session: derived from its secret under the pepper, so it needs no
/// storage and cannot be computed without the cookie (which scripts of other sites never see).
pub fn csrf_token(pepper: &crate::model::Pepper, session_secret: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .encode(pepper.hash(&format!("csrf\0{session_secret}")))
}

/// A state-changing request that authenticates with the session cookie must come from an
/// allowed origin (`Origin`, or `Referer` when a browser leaves `Origin` out) and carry the
/// session's CSRF token in `X-CSRF-Token`. Refused with 403 (`restriction: csrf`) otherwise.
pub fn check_csrf(
    method: &http::Method,
    headers: &HeaderMap,
    session_secret: &str,
    rules: &CredentialRules,
    pepper: &crate::model::Pepper,
) -> Result<(), Refusal> {
    use subtle::ConstantTimeEq;
    if matches!(
        *method,
        http::Method::GET | http::Method::HEAD | http::Method::OPTIONS
    ) {
        return Ok(());
    }
    if !origin_allowed(headers, rules, false) {
        return Err(csrf_refusal());
    }
    let expected = csrf_token(pepper, session_secret);
    let presented = headers
        .get("x-csrf-token")
        .map(|v| v.as_bytes())
        .unwrap_or_default();
    if bool::from(presented.ct_eq(expected.as_bytes())) {
        Ok(())
    } else {
        Err(csrf_refusal())
    }
}

/// The refusal of a request another site may have started (403, `restriction: csrf`).
pub fn csrf_refusal() -> Refusal {
    let mut details = serde_json::Map::new();
    details.insert("restriction".into(), "csrf".into());
    Refusal::Forbidden(details)
}

/// True when the request's `Origin` (or, without one, its `Referer`) is keygate's own host or
/// an allowed origin. A request with neither passes only when `absent_ok` (clients that are
/// not browsers send neither; browsers always send `Origin` on a cross-site POST).
pub fn origin_allowed(headers: &HeaderMap, rules: &CredentialRules, absent_ok: bool) -> bool {
    let presented = headers
        .get(header::ORIGIN)
        .or_else(|| headers.get(header::REFERER));
    let Some(presented) = presented else {
        return absent_ok;
    };
    let origin = presented
        .to_str()
        .ok()
        .and_then(|v| http::Uri::try_from(v).ok())
        .and_then(|u| {
            Some((
                u.scheme_str()?.to_ascii_lowercase(),
                u.authority()?.as_str().to_ascii_lowercase(),
            ))
        });
    let Some((scheme, authority)) = origin else {
        return false;
    };
    if rules.allowed_origins.is_empty() {
        headers
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .is_some_and(|host| host.eq_ignore_ascii_case(&authority))
    } else {
        let presented = format!("{scheme}://{authority}");
        rules
            .allowed_origins
            .iter()
            .any(|a| a.trim_end_matches('/').eq_ignore_ascii_case(&presented))
    }
}

/// Three base64url parts, the first a JSON object (`eyJ`): the shape of a compact JWS.
pub fn looks_like_jwt(s: &str) -> bool {
    let mut parts = 0;
    for part in s.split('.') {
        parts += 1;
        if parts > 3
            || !part
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return false;
        }
    }
    parts == 3 && s.starts_with("eyJ")
}

/// The value of cookie `name` in the request's `Cookie` headers. A cookie sent twice is
/// ambiguous and refused.
fn cookie<'h>(headers: &'h HeaderMap, name: &str) -> Result<Option<&'h str>, Refusal> {
    let mut found = None;
    for value in headers.get_all(header::COOKIE) {
        let Ok(value) = value.to_str() else { continue };
        for pair in value.split(';') {
            let (n, v) = pair.split_once('=').unwrap_or((pair, ""));
            if n.trim() == name {
                if found.is_some() {
                    return Err(Refusal::bad_request(
                        "the request carries the session cookie twice",
                    ));
                }
                found = Some(v.trim().trim_matches('"'));
            }
        }
    }
    Ok(found)
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
    "auth_token",
    "authtoken",
    "bearer",
    "jwt",
    "id_token",
    "refresh_token",
    "session",
    "sessionid",
];

/// Longest `Authorization: Basic` value read, in bytes: a user name and a key fit many times.
pub const MAX_BASIC_LEN: usize = 1024;

/// Reads the credential of a request. `basic`: the route takes an API key as the password of
/// HTTP Basic authentication (WebDAV clients speak nothing else).
pub fn credentials(
    headers: &HeaderMap,
    query: Option<&str>,
    rules: &CredentialRules,
    basic: bool,
) -> Result<Credentials, Refusal> {
    let style = &rules.style;
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
        (Some(v), None) if basic && is_basic(v.as_bytes()) => {
            let key = basic_password(v.as_bytes())?;
            if !style.looks_like_key(&key) {
                // Only keys: a user's password would bring the password hash's cost (and a
                // guessing target) onto the request path.
                return Err(Refusal::Unauthorized(AuthFailure::Malformed));
            }
            Some(key)
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
        (None, None) => {
            let session = match &rules.session_cookie {
                Some(name) => cookie(headers, name)?,
                None => None,
            };
            return match session {
                Some(s) if !s.is_empty() => Ok(Credentials::Session(s.to_owned())),
                Some(_) => Err(Refusal::Unauthorized(AuthFailure::Malformed)),
                None => Err(Refusal::Unauthorized(AuthFailure::Missing)),
            };
        }
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
    } else if looks_like_jwt(&token) {
        Ok(Credentials::Jwt(token))
    } else {
        Err(Refusal::Unauthorized(AuthFailure::Malformed))
    }
}

fn is_basic(value: &[u8]) -> bool {
    value.len() > 6 && value[..6].eq_ignore_ascii_case(b"basic ")
}

/// The password of `Basic <base64(user:password)>` (RFC 7617). The user name is not read: a
/// key names its owner itself, and clients need some name to send (docs/webdav.md).
pub fn basic_password(value: &[u8]) -> Result<String, Refusal> {
    use base64::Engine;
    let malformed = || Refusal::Unauthorized(AuthFailure::Malformed);
    if value.len() > MAX_BASIC_LEN || !is_basic(value) {
        return Err(malformed());
    }
    let encoded = value[6..].trim_ascii();
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded)
        .map_err(|_| malformed())?;
    let text = String::from_utf8(decoded).map_err(|_| malformed())?;
    let (_user, password) = text.split_once(':').ok_or_else(malformed)?;
    if password.is_empty() || password.contains(char::is_whitespace) {
        return Err(malformed());
    }
    Ok(password.to_owned())
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

/// True when a query parameter carries a credential: by its name, or by a word shaped like a
/// key or a JWT anywhere in its value (`next=https://x/?k=kg_…`, `q=Bearer kg_…`). Names and
/// values are read as sent, percent-decoded once and twice (`kg%255F…`), with `+` as a space and
/// control characters ignored.
pub fn query_has_credential(query: &str, style: &KeyStyle) -> bool {
    let decode = |raw: &str| -> String {
        percent_encoding::percent_decode_str(&raw.replace('+', " "))
            .decode_utf8_lossy()
            .into_owned()
    };
    // The whole value may start like a key; a word inside it counts when it is a key (shape
    // and checksum) or a JWT, so that searching for "fo_bar" is not a credential.
    let carries = |text: &str| {
        style.looks_like_key(text.trim())
            || text
                .split(|c: char| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.')))
                .any(|word| style.is_well_formed(word) || looks_like_jwt(word))
    };
    query.split(['&', ';']).any(|pair| {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        let once = decode(name);
        let names = [name.to_owned(), decode(&once), once];
        let named = names.iter().any(|n| {
            let n: String = n
                .chars()
                .filter(|c| !c.is_control() && !c.is_whitespace())
                .collect();
            QUERY_CREDENTIALS.contains(&n.to_ascii_lowercase().as_str())
        });
        let once = decode(value);
        named || carries(value) || carries(&once) || carries(&decode(&once))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::headers as h;

    fn read(pairs: &[(&str, &str)], q: Option<&str>) -> Result<Credentials, Refusal> {
        let rules = CredentialRules {
            style: KeyStyle::default(),
            session_cookie: Some("sid".to_owned()),
            allowed_origins: Vec::new(),
        };
        credentials(&h(pairs), q, &rules, false)
    }

    const JWT: &str = "eyJhbGciOiJFZERTQSJ9.eyJzdWIiOiJ1In0.c2lnbmF0dXJl";

    /// fuzz/regressions/credentials-272fb813: `key=kg_efi` inside a query value. A word inside
    /// a value is a credential only when it is a whole key (shape and checksum); the same
    /// query with a real key there is refused.
    #[test]
    fn a_key_shaped_word_inside_a_query_value_counts_only_when_it_is_a_key() {
        let input = include_bytes!("../../fuzz/regressions/credentials-272fb813");
        let text = String::from_utf8_lossy(input);
        let (_, query) = text.split_once("\n\n").unwrap();
        assert!(!query_has_credential(query, &KeyStyle::default()));
        assert!(matches!(
            read(&[("cookie", "sid=ab")], Some(query)),
            Ok(Credentials::Session(_))
        ));
        let key = KeyStyle::default().generate();
        let with_key = query.replacen("kg_efi", &key, 1);
        assert!(query_has_credential(&with_key, &KeyStyle::default()));
        assert!(read(&[("cookie", "sid=ab")], Some(&with_key)).is_err());
    }

    #[test]
    fn jwts_and_session_cookies() {
        assert_eq!(
            read(&[("authorization", &format!("Bearer {JWT}"))], None),
            Ok(Credentials::Jwt(JWT.into()))
        );
        assert_eq!(
            read(&[("cookie", "theme=dark; sid=abc123; x=1")], None),
            Ok(Credentials::Session("abc123".into()))
        );
        // A header credential wins over the cookie a browser adds on its own.
        assert_eq!(
            read(&[("cookie", "sid=abc123"), ("x-api-key", "kg_abc")], None),
            Ok(Credentials::ApiKey("kg_abc".into()))
        );
        assert!(matches!(
            read(&[("cookie", "sid=a"), ("cookie", "sid=b")], None),
            Err(Refusal::BadRequest(_))
        ));
        assert_eq!(
            read(&[("cookie", "sid=")], None),
            Err(Refusal::Unauthorized(AuthFailure::Malformed))
        );
        assert_eq!(
            read(&[("cookie", "other=1")], None),
            Err(Refusal::Unauthorized(AuthFailure::Missing))
        );
        assert!(matches!(
            read(&[], Some(&format!("t={JWT}"))),
            Err(Refusal::BadRequest(_))
        ));
        assert!(!looks_like_jwt("eyJa.b"));
        assert!(!looks_like_jwt("eyJa.b.c.d"));
        assert!(!looks_like_jwt("abc.def.ghi"));
        assert!(!looks_like_jwt("eyJa.b c.d"));
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
        let real = KeyStyle::default().generate();
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
            read(&[], Some("api%5Fkey=kg_a")),
            read(&[], Some("API%5fKEY=x")),
            read(&[], Some("q=kg%5Fabc")),
            read(&[], Some("q=%6B%67_abc")),
            read(&[], Some("a=1;token=x")),
            read(&[], Some(&format!("q=Bearer%20{real}"))),
            read(&[], Some(&format!("next=https%3A%2F%2Fx%2F%3Fk%3D{real}"))),
            read(&[], Some("q=kg%255Fabc")),
            read(&[], Some("api_key%00=x")),
            read(&[], Some("id_token=x")),
            read(&[], Some("q=a%20eyJhbGciOiJub25lIn0.eyJzdWIiOiJ4In0.c2ln")),
        ] {
            assert!(matches!(bad, Err(Refusal::BadRequest(_))), "{bad:?}");
        }
        assert!(read(&[("x-api-key", "kg_a")], Some("q=report&page=2")).is_ok());
        assert!(read(&[("x-api-key", "kg_a")], Some("q=photos%20fo_bar&page=2")).is_ok());
    }

    #[test]
    fn csrf_needs_an_allowed_origin_and_the_session_token() {
        let pepper = crate::model::Pepper::new(&[7u8; 32]).unwrap();
        let token = csrf_token(&pepper, "secret");
        let mut rules = CredentialRules::default();
        let check = |m: http::Method, pairs: &[(&str, &str)], rules: &CredentialRules| {
            check_csrf(&m, &h(pairs), "secret", rules, &pepper)
        };
        let post = http::Method::POST;
        let same = [
            ("host", "files.example:8080"),
            ("origin", "https://files.example:8080"),
            ("x-csrf-token", token.as_str()),
        ];
        assert_eq!(check(post.clone(), &same, &rules), Ok(()));
        assert_eq!(check(http::Method::GET, &[], &rules), Ok(()));
        let refused = |r: Result<(), Refusal>| matches!(r, Err(Refusal::Forbidden(d)) if d["restriction"] == "csrf");
        // Another site, no origin at all, a missing or wrong token.
        assert!(refused(check(
            post.clone(),
            &[
                ("host", "files.example:8080"),
                ("origin", "https://evil.example"),
                ("x-csrf-token", &token)
            ],
            &rules
        )));
        assert!(refused(check(
            post.clone(),
            &[("host", "files.example:8080"), ("x-csrf-token", &token)],
            &rules
        )));
        assert!(refused(check(post.clone(), &same[..2], &rules)));
        assert!(refused(check(
            http::Method::DELETE,
            &[same[0], same[1], ("x-csrf-token", "forged")],
            &rules
        )));
        assert!(refused(check(
            post.clone(),
            &[same[0], ("origin", "null"), same[2]],
            &rules
        )));
        // A Referer stands in for a missing Origin.
        assert_eq!(
            check(
                post.clone(),
                &[
                    same[0],
                    ("referer", "https://files.example:8080/app/x"),
                    same[2]
                ],
                &rules
            ),
            Ok(())
        );
        // Configured origins replace the same-origin rule.
        rules.allowed_origins = vec!["https://app.example".to_owned()];
        assert!(refused(check(post.clone(), &same, &rules)));
        assert_eq!(
            check(
                post,
                &[same[0], ("origin", "https://app.example"), same[2]],
                &rules
            ),
            Ok(())
        );
    }

    #[test]
    fn basic_carries_a_key_as_its_password_where_the_route_takes_it() {
        use base64::Engine;
        let rules = CredentialRules::default();
        let key = KeyStyle::default().generate();
        let basic = |user_pass: &str| {
            format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(user_pass)
            )
        };
        let read = |value: &str, on_route: bool| {
            credentials(&h(&[("authorization", value)]), None, &rules, on_route)
        };
        for user in ["", "ada@example.com", "key", "a:b"] {
            let value = basic(&format!("{user}:{}", key));
            if user == "a:b" {
                // The user name ends at the first colon (RFC 7617); the rest is no key.
                assert!(read(&value, true).is_err());
                continue;
            }
            assert_eq!(
                read(&value, true),
                Ok(Credentials::ApiKey(key.clone())),
                "{user}"
            );
            assert_eq!(
                read(&value, false),
                Err(Refusal::Unauthorized(AuthFailure::Malformed)),
                "only where the route takes Basic"
            );
        }
        let malformed = Err(Refusal::Unauthorized(AuthFailure::Malformed));
        // A password that is not key-shaped is never tried as a user's password.
        assert_eq!(read(&basic("ada@example.com:hunter22"), true), malformed);
        assert_eq!(read(&basic(&format!("u:{JWT}")), true), malformed);
        assert_eq!(read(&basic("no-colon"), true), malformed);
        assert_eq!(read(&basic("u:"), true), malformed);
        assert_eq!(read("Basic !!!", true), malformed);
        assert_eq!(read("Basic ", true), malformed);
        let long = basic(&format!("{}:{}", "u".repeat(MAX_BASIC_LEN), key));
        assert_eq!(read(&long, true), malformed);
        // Bearer still works on such routes.
        assert_eq!(
            read(&format!("Bearer {}", key), true),
            Ok(Credentials::ApiKey(key.clone()))
        );
    }

    #[test]
    fn debug_never_shows_the_secret() {
        assert_eq!(
            format!("{:?}", Credentials::ApiKey("kg_secret".into())),
            "ApiKey(…)"
        );
        assert_eq!(format!("{:?}", Credentials::Jwt(JWT.into())), "Jwt(…)");
        assert_eq!(
            format!("{:?}", Credentials::Session("s".into())),
            "Session(…)"
        );
    }
}
