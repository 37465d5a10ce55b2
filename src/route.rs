//! Stage 1, route: the raw request target and method → [`RouteMatch`] (action and resources).
//!
//! The target is read from the raw bytes on the wire, decoded exactly once into one canonical
//! form, and that form is both what the policy sees and what goes upstream. Anything that the
//! proxy and some backend could read differently is refused with 400 instead of being guessed at.
//! Pure: no I/O, no session, no clock.

use std::borrow::Cow;
use std::sync::Arc;

use unicode_normalization::UnicodeNormalization;

use crate::deny::Refusal;

/// Longest request target accepted, in bytes.
pub const MAX_TARGET_LEN: usize = 8 * 1024;

/// A request target in canonical form.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CanonicalTarget {
    pub path: CanonicalPath,
    /// The query exactly as received; checked to be printable ASCII with well-formed escapes.
    pub query: Option<String>,
}

impl CanonicalTarget {
    /// The target to send upstream: the canonical path, re-encoded, and the query.
    pub fn upstream_target(&self) -> String {
        let mut out = self.path.encoded();
        if let Some(q) = &self.query {
            out.push('?');
            out.push_str(q);
        }
        out
    }
}

/// A decoded path: non-empty segments, each valid NFC UTF-8 with no separator or dot-segment.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct CanonicalPath {
    segments: Vec<String>,
    trailing_slash: bool,
}

impl CanonicalPath {
    pub fn segments(&self) -> &[String] {
        &self.segments
    }

    /// The decoded path (`/a/b`), as the policy sees it; `/` for the root.
    pub fn decoded(&self) -> String {
        join_segments(&self.segments)
    }

    /// The path percent-encoded in one fixed way: every byte outside RFC 3986's unreserved set
    /// is escaped. A trailing slash the client sent is kept.
    pub fn encoded(&self) -> String {
        let mut out = String::with_capacity(self.segments.iter().map(|s| s.len() + 1).sum());
        for seg in &self.segments {
            out.push('/');
            for &b in seg.as_bytes() {
                if is_unreserved(b) {
                    out.push(b as char);
                } else {
                    out.push('%');
                    out.push(HEX[(b >> 4) as usize] as char);
                    out.push(HEX[(b & 15) as usize] as char);
                }
            }
        }
        if out.is_empty() || self.trailing_slash {
            out.push('/');
        }
        out
    }
}

const HEX: &[u8; 16] = b"0123456789ABCDEF";

fn join_segments(segments: &[String]) -> String {
    if segments.is_empty() {
        return "/".to_owned();
    }
    let mut out = String::with_capacity(segments.iter().map(|s| s.len() + 1).sum());
    for s in segments {
        out.push('/');
        out.push_str(s);
    }
    out
}

fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

/// Bytes that may appear unescaped in a path: RFC 3986 `pchar` without `;` (path parameters),
/// plus raw UTF-8 (bytes ≥ 0x80, validated after decoding).
fn is_plain_path_byte(b: u8) -> bool {
    is_unreserved(b)
        || matches!(
            b,
            b'!' | b'$' | b'&' | b'\'' | b'(' | b')' | b'*' | b'+' | b',' | b'=' | b':' | b'@'
        )
        || b >= 0x80
}

fn hex_value(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

fn bad(message: &'static str) -> Refusal {
    Refusal::BadRequest(Cow::Borrowed(message))
}

/// Canonicalizes a raw request target (origin-form only).
pub fn canonicalize(raw: &[u8]) -> Result<CanonicalTarget, Refusal> {
    if raw.len() > MAX_TARGET_LEN {
        return Err(bad("the request target is too long"));
    }
    if raw.first() != Some(&b'/') {
        return Err(bad("the request target must be an absolute path"));
    }
    let (path, query) = match raw.iter().position(|&b| b == b'?') {
        Some(i) => (&raw[..i], Some(&raw[i + 1..])),
        None => (raw, None),
    };
    let path = canonicalize_path(path)?;
    let query = match query {
        Some(q) => Some(check_query(q)?),
        None => None,
    };
    Ok(CanonicalTarget { path, query })
}

/// Canonicalizes the path part of a target (starting with `/`, no query).
pub fn canonicalize_path(raw: &[u8]) -> Result<CanonicalPath, Refusal> {
    debug_assert_eq!(raw.first(), Some(&b'/'));
    let mut segments = Vec::new();
    let mut current: Vec<u8> = Vec::new();
    let mut i = 1;
    let mut trailing_slash = false;
    while i < raw.len() {
        let b = raw[i];
        match b {
            b'/' => {
                if current.is_empty() {
                    return Err(bad("the path has an empty segment"));
                }
                segments.push(finish_segment(std::mem::take(&mut current))?);
                if i + 1 == raw.len() {
                    trailing_slash = true;
                }
            }
            b'%' => {
                let (Some(h), Some(l)) = (
                    raw.get(i + 1).copied().and_then(hex_value),
                    raw.get(i + 2).copied().and_then(hex_value),
                ) else {
                    return Err(bad("the path has a malformed percent-escape"));
                };
                let d = (h << 4) | l;
                match d {
                    b'/' => return Err(bad("the path has an encoded '/'")),
                    b'\\' => return Err(bad("the path has an encoded '\\'")),
                    b'%' => return Err(bad("the path has an encoded '%'")),
                    b';' => return Err(bad("the path has an encoded ';'")),
                    0x00..=0x1f | 0x7f => return Err(bad("the path has an encoded control byte")),
                    _ => current.push(d),
                }
                i += 2;
            }
            b'\\' => return Err(bad("the path has a '\\'")),
            b';' => return Err(bad("the path has a ';' parameter")),
            _ if is_plain_path_byte(b) => current.push(b),
            _ => return Err(bad("the path has a byte that must be percent-encoded")),
        }
        i += 1;
    }
    if !current.is_empty() {
        segments.push(finish_segment(current)?);
    }
    Ok(CanonicalPath {
        segments,
        trailing_slash,
    })
}

fn finish_segment(bytes: Vec<u8>) -> Result<String, Refusal> {
    let seg = String::from_utf8(bytes).map_err(|_| bad("the path is not valid UTF-8"))?;
    if seg.bytes().all(|b| b == b'.') {
        return Err(bad("the path has a dot segment"));
    }
    if !seg.is_ascii() {
        if seg.chars().any(is_lookalike) {
            return Err(bad(
                "the path has a character that looks like '.', '/' or '\\'",
            ));
        }
        if !unicode_normalization::is_nfc(&seg) {
            return Err(bad("the path is not in Unicode normalization form C"));
        }
    }
    Ok(seg)
}

/// Characters that fold (NFKC) to, or are drawn as, a separator or a dot.
fn is_lookalike(c: char) -> bool {
    if c.is_ascii() {
        return false;
    }
    if matches!(
        c,
        '\u{2215}' // DIVISION SLASH
            | '\u{2044}' // FRACTION SLASH
            | '\u{29F8}' // BIG SOLIDUS
            | '\u{29F9}' // BIG REVERSE SOLIDUS
            | '\u{2216}' // SET MINUS
            | '\u{2571}' // BOX DRAWINGS LIGHT DIAGONAL UPPER RIGHT TO LOWER LEFT
            | '\u{2572}' // BOX DRAWINGS LIGHT DIAGONAL UPPER LEFT TO LOWER RIGHT
            | '\u{0338}' // COMBINING LONG SOLIDUS OVERLAY
            | '\u{0337}' // COMBINING SHORT SOLIDUS OVERLAY
            | '\u{1735}' // PHILIPPINE SINGLE PUNCTUATION
            | '\u{0701}' // SYRIAC SUPRALINEAR FULL STOP
            | '\u{0702}' // SYRIAC SUBLINEAR FULL STOP
            | '\u{A60E}' // VAI FULL STOP
            | '\u{2E31}' // WORD SEPARATOR MIDDLE DOT
            | '\u{2E33}' // RAISED DOT
    ) {
        return true;
    }
    std::iter::once(c)
        .nfkc()
        .any(|d| matches!(d, '.' | '/' | '\\' | '%' | ';'))
}

/// Checks a query: printable ASCII, no `#`, well-formed escapes. Returned unchanged.
fn check_query(q: &[u8]) -> Result<String, Refusal> {
    let mut i = 0;
    while i < q.len() {
        match q[i] {
            b'%' => {
                if q.get(i + 1).copied().and_then(hex_value).is_none()
                    || q.get(i + 2).copied().and_then(hex_value).is_none()
                {
                    return Err(bad("the query has a malformed percent-escape"));
                }
                i += 2;
            }
            b'#' => return Err(bad("the request target has a fragment")),
            0x21..=0x7e => {}
            _ => return Err(bad("the query has a byte that must be percent-encoded")),
        }
        i += 1;
    }
    // INVARIANT: every byte was checked to be printable ASCII above.
    Ok(String::from_utf8_lossy(q).into_owned())
}

/// One piece of a route template.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Piece {
    Literal(String),
    /// `{provider}`: the provider segment.
    Provider,
    /// `{name}`: any one segment, not part of the resource.
    Param,
    /// `{*path}`: the rest of the path, possibly empty; the resource path.
    Tail,
}

/// A parsed path template such as `/v1/files/{provider}/{*path}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    pieces: Vec<Piece>,
    source: String,
}

impl Template {
    pub fn parse(s: &str) -> Result<Template, String> {
        let rest = s
            .strip_prefix('/')
            .ok_or_else(|| format!("template '{s}' must start with '/'"))?;
        let mut pieces = Vec::new();
        let parts: Vec<&str> = if rest.is_empty() {
            vec![]
        } else {
            rest.split('/').collect()
        };
        for (i, part) in parts.iter().enumerate() {
            let piece = if let Some(name) = part.strip_prefix('{').and_then(|p| p.strip_suffix('}'))
            {
                if let Some(tail) = name.strip_prefix('*') {
                    if i + 1 != parts.len() {
                        return Err(format!("in template '{s}', '{{*{tail}}}' must come last"));
                    }
                    Piece::Tail
                } else if name == "provider" {
                    Piece::Provider
                } else if !name.is_empty()
                    && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
                {
                    Piece::Param
                } else {
                    return Err(format!(
                        "in template '{s}', '{{{name}}}' is not a valid parameter"
                    ));
                }
            } else {
                if part.is_empty() {
                    return Err(format!("template '{s}' has an empty segment"));
                }
                let canonical = canonicalize_path(format!("/{part}").as_bytes()).map_err(|_| {
                    format!("template '{s}' has a segment that is not canonical: '{part}'")
                })?;
                Piece::Literal(canonical.decoded()[1..].to_owned())
            };
            pieces.push(piece);
        }
        if pieces.iter().filter(|p| **p == Piece::Provider).count() > 1 {
            return Err(format!("template '{s}' names {{provider}} more than once"));
        }
        Ok(Template {
            pieces,
            source: s.to_owned(),
        })
    }

    pub fn has_provider(&self) -> bool {
        self.pieces.contains(&Piece::Provider)
    }

    pub fn as_str(&self) -> &str {
        &self.source
    }

    /// Matches canonical segments; returns (provider segment, resource path).
    fn matches<'a>(&self, segments: &'a [String]) -> Option<(Option<&'a str>, String)> {
        let mut provider = None;
        for (i, piece) in self.pieces.iter().enumerate() {
            match piece {
                Piece::Tail => {
                    return Some((provider, join_segments(&segments[i.min(segments.len())..])))
                }
                _ if i >= segments.len() => return None,
                Piece::Literal(l) => {
                    if *l != segments[i] {
                        return None;
                    }
                }
                Piece::Provider => provider = Some(segments[i].as_str()),
                Piece::Param => {}
            }
        }
        (segments.len() == self.pieces.len()).then(|| (provider, "/".to_owned()))
    }
}

/// Which methods a route answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Methods {
    Any,
    List(Vec<String>),
}

impl Methods {
    fn allows(&self, method: &str) -> bool {
        match self {
            Methods::Any => true,
            Methods::List(l) => l.iter().any(|m| m == method),
        }
    }
}

/// One row of the route table.
#[derive(Debug, Clone)]
pub struct Route {
    pub methods: Methods,
    pub template: Template,
    pub action: Arc<str>,
    /// The provider when the template has no `{provider}` (a WebDAV mount, say).
    pub provider: Option<Arc<str>>,
    /// The request names a second resource in its `Destination` header (move, copy).
    pub destination: bool,
}

/// Where a resource sits in the request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResourceRole {
    Source,
    Destination,
}

/// A storage location the request touches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resource {
    pub role: ResourceRole,
    pub provider: Arc<str>,
    /// Canonical decoded path inside the provider; `/` for its root.
    pub path: String,
}

/// The outcome of the route stage.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteMatch {
    pub action: Arc<str>,
    pub resources: Vec<Resource>,
    /// What to send upstream as the request target.
    pub upstream_target: String,
    /// The rewritten `Destination` header, when the route has one.
    pub upstream_destination: Option<String>,
}

impl RouteMatch {
    /// The query as received (checked printable ASCII), if any.
    pub fn query(&self) -> Option<&str> {
        self.upstream_target.split_once('?').map(|(_, q)| q)
    }
}

/// The route table from the config: first match wins.
#[derive(Debug, Clone, Default)]
pub struct RouteTable {
    routes: Vec<Route>,
    default_action: Option<Arc<str>>,
}

/// What the route stage reads from a request.
#[derive(Debug, Clone, Copy)]
pub struct RouteInput<'a> {
    pub method: &'a str,
    pub raw_target: &'a [u8],
    pub destination: Option<&'a [u8]>,
    pub host: Option<&'a str>,
}

impl RouteTable {
    pub fn new(routes: Vec<Route>, default_action: Option<Arc<str>>) -> RouteTable {
        RouteTable {
            routes,
            default_action,
        }
    }

    pub fn routes(&self) -> &[Route] {
        &self.routes
    }

    /// The route stage.
    pub fn route(&self, input: RouteInput<'_>) -> Result<RouteMatch, Refusal> {
        let target = canonicalize(input.raw_target)?;
        let upstream_target = target.upstream_target();
        let segments = target.path.segments();
        for route in &self.routes {
            if !route.methods.allows(input.method) {
                continue;
            }
            let Some((provider, path)) = route.template.matches(segments) else {
                continue;
            };
            let mut resources = Vec::with_capacity(1 + route.destination as usize);
            if let Some(provider) = provider_of(route, provider) {
                resources.push(Resource {
                    role: ResourceRole::Source,
                    provider,
                    path,
                });
            }
            let mut upstream_destination = None;
            if route.destination {
                let (resource, header) = destination(route, input)?;
                resources.extend(resource);
                upstream_destination = Some(header);
            }
            return Ok(RouteMatch {
                action: route.action.clone(),
                resources,
                upstream_target,
                upstream_destination,
            });
        }
        match &self.default_action {
            Some(action) => Ok(RouteMatch {
                action: action.clone(),
                resources: Vec::new(),
                upstream_target,
                upstream_destination: None,
            }),
            None => Err(Refusal::NotFound),
        }
    }
}

fn provider_of(route: &Route, segment: Option<&str>) -> Option<Arc<str>> {
    match segment {
        Some(s) => Some(Arc::from(s)),
        None => route.provider.clone(),
    }
}

/// Reads the `Destination` header: an absolute path, or an absolute URI whose authority is the
/// request's own `Host`. It must match the same route template as the request.
fn destination(
    route: &Route,
    input: RouteInput<'_>,
) -> Result<(Option<Resource>, String), Refusal> {
    let raw = input
        .destination
        .ok_or_else(|| bad("this request needs a Destination header"))?;
    let (origin, path) = split_destination(raw, input.host)?;
    let target = canonicalize(path)?;
    if target.query.is_some() {
        return Err(bad("the Destination header must not carry a query"));
    }
    let (provider, dest_path) = route
        .template
        .matches(target.path.segments())
        .ok_or_else(|| bad("the Destination header names a location outside this route"))?;
    let resource = provider_of(route, provider).map(|provider| Resource {
        role: ResourceRole::Destination,
        provider,
        path: dest_path,
    });
    Ok((resource, format!("{origin}{}", target.path.encoded())))
}

fn split_destination<'a>(
    raw: &'a [u8],
    host: Option<&str>,
) -> Result<(&'a str, &'a [u8]), Refusal> {
    if raw.first() == Some(&b'/') {
        return Ok(("", raw));
    }
    let s = std::str::from_utf8(raw).map_err(|_| bad("the Destination header is malformed"))?;
    let rest = s
        .strip_prefix("http://")
        .or_else(|| s.strip_prefix("https://"))
        .ok_or_else(|| bad("the Destination header must be an absolute path or URI"))?;
    let slash = rest.find('/').unwrap_or(rest.len());
    let authority = &rest[..slash];
    if host.is_none_or(|h| !h.eq_ignore_ascii_case(authority)) {
        return Err(bad("the Destination header names another host"));
    }
    let origin_len = s.len() - rest.len() + slash;
    if slash == rest.len() {
        return Err(bad("the Destination header has no path"));
    }
    Ok((&s[..origin_len], &raw[origin_len..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(raw: &str) -> CanonicalTarget {
        canonicalize(raw.as_bytes()).unwrap_or_else(|e| panic!("{raw:?} refused: {e:?}"))
    }

    fn refused(raw: &[u8]) {
        match canonicalize(raw) {
            Err(Refusal::BadRequest(_)) => {}
            other => panic!(
                "{:?} must be refused with 400, got {other:?}",
                String::from_utf8_lossy(raw)
            ),
        }
    }

    #[test]
    fn forms_that_must_pass() {
        assert_eq!(ok("/backups/.hidden").path.decoded(), "/backups/.hidden");
        assert_eq!(ok("/backups/a..b").path.decoded(), "/backups/a..b");
        let t = ok("/backups/db%20dump.tar");
        assert_eq!(t.path.decoded(), "/backups/db dump.tar");
        assert_eq!(t.upstream_target(), "/backups/db%20dump.tar");
        let t = ok("/docs/caf%C3%A9/%E6%97%A5%E6%9C%AC.txt");
        assert_eq!(t.path.decoded(), "/docs/café/日本.txt");
        assert_eq!(
            ok("/docs/café").path.decoded(),
            "/docs/café",
            "raw NFC UTF-8"
        );
        assert_eq!(ok("/").path.decoded(), "/");
        assert_eq!(ok("/a/b/").upstream_target(), "/a/b/");
        assert_eq!(ok("/a?x=1&y=%20").upstream_target(), "/a?x=1&y=%20");
        assert_eq!(ok("/%7Euser/a+b").upstream_target(), "/~user/a%2Bb");
        assert_eq!(ok("/a%2eb").path.decoded(), "/a.b");
    }

    #[test]
    fn one_canonical_form_for_equivalent_spellings() {
        assert_eq!(ok("/a%41").upstream_target(), ok("/aA").upstream_target());
        assert_eq!(ok("/x%3a").upstream_target(), ok("/x:").upstream_target());
    }

    #[test]
    fn dot_segments_raw_and_encoded() {
        for raw in [
            "/a/../b",
            "/..",
            "/a/./b",
            "/.",
            "/a/%2e%2e/b",
            "/a/%2E%2E",
            "/a/.%2e/b",
            "/a/%2e/b",
            "/a/...",
            "/a/..../b",
        ] {
            refused(raw.as_bytes());
        }
    }

    #[test]
    fn empty_segments() {
        for raw in ["//a", "/a//b", "/a/b//"] {
            refused(raw.as_bytes());
        }
    }

    #[test]
    fn encoded_separators_and_escapes() {
        for raw in [
            "/a%2fb",
            "/a%2Fb",
            "/a%5cb",
            "/a%5Cb",
            "/a%25b",
            "/a%252e%252e/b",
            "/a%3bb",
        ] {
            refused(raw.as_bytes());
        }
    }

    #[test]
    fn backslashes_and_path_parameters() {
        for raw in [
            "/a\\b",
            "/a\\..\\b",
            "/a;jsessionid=1/b",
            "/a/..;/b",
            "/a;/b",
        ] {
            refused(raw.as_bytes());
        }
    }

    #[test]
    fn nul_and_control_bytes() {
        for raw in [
            &b"/a\0b"[..],
            b"/a%00b",
            b"/a%0ab",
            b"/a%0d%0ab",
            b"/a\tb",
            b"/a b",
            b"/a%7f",
            b"/a\x7f",
        ] {
            refused(raw);
        }
    }

    #[test]
    fn invalid_and_overlong_utf8() {
        for raw in [
            &b"/a%c0%ae%c0%ae/b"[..], // overlong "."
            b"/a%c0%afb",             // overlong "/"
            b"/a%e0%80%afb",          // 3-byte overlong "/"
            b"/a%ff",
            b"/a%c3",       // truncated
            b"/a\xc3(",     // raw invalid
            b"/a%ed%a0%80", // surrogate
        ] {
            refused(raw);
        }
    }

    #[test]
    fn unicode_lookalikes() {
        for raw in [
            "/a/%E2%80%A4%E2%80%A4/b", // ONE DOT LEADER
            "/a/%EF%BC%8E%EF%BC%8E",   // FULLWIDTH FULL STOP
            "/a%EF%BC%8Fb",            // FULLWIDTH SOLIDUS
            "/a%E2%88%95b",            // DIVISION SLASH
            "/a%E2%81%84b",            // FRACTION SLASH
            "/a%EF%BC%BCb",            // FULLWIDTH REVERSE SOLIDUS
            "/a%EF%B9%A8b",            // SMALL REVERSE SOLIDUS
            "/a/\u{2025}",             // TWO DOT LEADER, raw
        ] {
            refused(raw.as_bytes());
        }
    }

    #[test]
    fn non_nfc_is_refused() {
        refused("/cafe\u{301}".as_bytes()); // e + combining acute
        refused(b"/cafe%CC%81");
    }

    #[test]
    fn target_forms_and_unsafe_bytes() {
        for raw in [
            &b"http://evil/a"[..],
            b"*",
            b"",
            b"a/b",
            b"/a#frag",
            b"/a?x#y",
            b"/a?x y",
            b"/a?x=%zz",
            b"/a?\xc3\xa9",
            b"/a\"b",
            b"/a<b>",
            b"/a^b",
            b"/a`b",
            b"/a{b}",
            b"/a|b",
            b"/a%",
            b"/a%4",
            b"/a%g0",
        ] {
            refused(raw);
        }
        refused(
            &vec![b'a'; MAX_TARGET_LEN + 1]
                .into_iter()
                .fold(vec![b'/'], |mut v, b| {
                    v.push(b);
                    v
                }),
        );
    }

    fn table() -> RouteTable {
        let route = |methods: &[&str], t: &str, action: &str, destination: bool| Route {
            methods: Methods::List(methods.iter().map(|m| m.to_string()).collect()),
            template: Template::parse(t).unwrap(),
            action: Arc::from(action),
            provider: None,
            destination,
        };
        RouteTable::new(
            vec![
                route(
                    &["GET", "HEAD"],
                    "/v1/files/{provider}/{*path}",
                    "readFile",
                    false,
                ),
                route(&["MOVE"], "/v1/files/{provider}/{*path}", "moveFile", true),
                route(
                    &["GET"],
                    "/v1/folders/{provider}/{*path}",
                    "listFolder",
                    false,
                ),
                route(
                    &["POST"],
                    "/v1/trash/{provider}/{id}/restore",
                    "restoreTrash",
                    false,
                ),
            ],
            None,
        )
    }

    fn input<'a>(method: &'a str, target: &'a str, dest: Option<&'a str>) -> RouteInput<'a> {
        RouteInput {
            method,
            raw_target: target.as_bytes(),
            destination: dest.map(str::as_bytes),
            host: Some("proxy.example:8080"),
        }
    }

    #[test]
    fn routes_to_action_and_resources() {
        let m = table()
            .route(input(
                "GET",
                "/v1/files/local/backups/2025/db%20dump.tar",
                None,
            ))
            .unwrap();
        assert_eq!(&*m.action, "readFile");
        assert_eq!(m.resources.len(), 1);
        assert_eq!(&*m.resources[0].provider, "local");
        assert_eq!(m.resources[0].path, "/backups/2025/db dump.tar");
        assert_eq!(
            m.upstream_target,
            "/v1/files/local/backups/2025/db%20dump.tar"
        );

        let root = table()
            .route(input("GET", "/v1/folders/local", None))
            .unwrap();
        assert_eq!(root.resources[0].path, "/");
        let root = table()
            .route(input("GET", "/v1/folders/local/", None))
            .unwrap();
        assert_eq!(root.resources[0].path, "/");

        let r = table()
            .route(input("POST", "/v1/trash/local/abc/restore", None))
            .unwrap();
        assert_eq!(&*r.action, "restoreTrash");
        assert_eq!(r.resources[0].path, "/");
    }

    #[test]
    fn unknown_routes_are_not_found() {
        assert_eq!(
            table().route(input("GET", "/v2/x", None)),
            Err(Refusal::NotFound)
        );
        assert_eq!(
            table().route(input("DELETE", "/v1/files/local/a", None)),
            Err(Refusal::NotFound)
        );
        assert_eq!(
            table().route(input("GET", "/v1/trash/local/x/y", None)),
            Err(Refusal::NotFound)
        );
    }

    #[test]
    fn move_needs_and_canonicalizes_destination() {
        let t = table();
        let m = t
            .route(input(
                "MOVE",
                "/v1/files/local/a.txt",
                Some("/v1/files/other/b%20c.txt"),
            ))
            .unwrap();
        assert_eq!(m.resources.len(), 2);
        assert_eq!(m.resources[1].role, ResourceRole::Destination);
        assert_eq!(&*m.resources[1].provider, "other");
        assert_eq!(m.resources[1].path, "/b c.txt");
        assert_eq!(
            m.upstream_destination.as_deref(),
            Some("/v1/files/other/b%20c.txt")
        );

        let abs = t
            .route(input(
                "MOVE",
                "/v1/files/local/a",
                Some("http://proxy.example:8080/v1/files/local/%7eb"),
            ))
            .unwrap();
        assert_eq!(
            abs.upstream_destination.as_deref(),
            Some("http://proxy.example:8080/v1/files/local/~b")
        );

        for dest in [
            None,
            Some("/v1/files/local/../../etc"),
            Some("/v1/folders/local/x"),
            Some("http://elsewhere/v1/files/local/x"),
            Some("/v1/files/local/x?y=1"),
            Some("v1/files/local/x"),
        ] {
            assert!(
                matches!(
                    t.route(input("MOVE", "/v1/files/local/a", dest)),
                    Err(Refusal::BadRequest(_)) | Err(Refusal::NotFound)
                ),
                "{dest:?}"
            );
        }
    }

    #[test]
    fn templates_are_checked() {
        assert!(Template::parse("v1/x").is_err());
        assert!(Template::parse("/v1/{*path}/x").is_err());
        assert!(Template::parse("/v1//x").is_err());
        assert!(Template::parse("/v1/{provider}/{provider}").is_err());
        assert!(Template::parse("/v1/{bad name}").is_err());
        assert!(Template::parse("/v1/../x").is_err());
        assert!(Template::parse("/").is_ok());
    }
}
