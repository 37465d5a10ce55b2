//! Stage 6, forward: what the upstream receives. Checks the request's framing, strips what must
//! not travel on (hop-by-hop headers and the names `Connection` lists, client-supplied
//! `X-Keygate-*`, method overrides, credentials), sets the canonical target and adds the
//! identity headers; cleans the response the same way. Pure: headers in, headers out.

use http::header::{self, HeaderName};
use http::HeaderMap;
use pingora::http::{RequestHeader, ResponseHeader};

use crate::principal::Principal;
use crate::refusal::Refusal;
use crate::route::RouteMatch;

pub const REQUEST_ID: &str = "x-keygate-request-id";
pub const USER: &str = "x-keygate-user";
pub const KEY_ID: &str = "x-keygate-key-id";
pub const WORKSPACE: &str = "x-keygate-workspace";
/// On responses to a key that expires within 7 days: when it does (RFC 3339).
pub const KEY_EXPIRES: &str = "x-keygate-key-expires-at";

/// Hop-by-hop headers (RFC 9110 §7.6.1 and the common non-standard ones). The framing headers
/// `Content-Length` and `Transfer-Encoding` are not here: pingora re-frames the body itself.
const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "upgrade",
];

/// Headers that ask some servers to treat the request as another method.
const METHOD_OVERRIDES: &[&str] = &[
    "x-http-method-override",
    "x-http-method",
    "x-method-override",
];

/// Headers that carry a credential; the upstream never sees them.
const CREDENTIALS: &[&str] = &["authorization", "x-api-key", "cookie"];

/// Names a `Connection` header may not remove: the proxy needs them to frame and route.
const PROTECTED: &[&str] = &["host", "content-length", "transfer-encoding"];

/// Most header fields a request may have.
pub const MAX_HEADER_FIELDS: usize = 100;

/// Largest request header (request line and fields), in bytes.
pub const MAX_HEADER_BYTES: usize = 32 * 1024;

/// Refuses requests whose body framing a proxy and a backend could read differently.
///
/// `raw_header` is the request header as received: pingora drops `Content-Length` when
/// `Transfer-Encoding` is also present, so that conflict is only visible in the raw bytes.
/// The target of an HTTP/1 request line (`GET /a#b HTTP/1.1` → `/a#b`), as sent. Empty lines
/// before it are skipped, as the parser skips them (RFC 9112 §2.2).
pub fn request_line_target(raw_header: &[u8]) -> Option<&[u8]> {
    let line = raw_header
        .split(|&b| b == b'\n')
        .map(|l| l.strip_suffix(b"\r").unwrap_or(l))
        .find(|l| !l.is_empty())?;
    let mut parts = line.split(|&b| b == b' ');
    let (_method, target, _version) = (parts.next()?, parts.next()?, parts.next()?);
    (parts.next().is_none() && !target.is_empty()).then_some(target)
}

pub fn check_framing(headers: &HeaderMap, raw_header: Option<&[u8]>) -> Result<(), Refusal> {
    // pingora reads up to 1 MiB and 256 fields; keygate accepts far less.
    if headers.len() > MAX_HEADER_FIELDS || raw_header.is_some_and(|h| h.len() > MAX_HEADER_BYTES) {
        return Err(Refusal::HeadersTooLarge);
    }
    // Two Host headers name two different targets to whoever reads the other one.
    if headers.get_all(header::HOST).iter().nth(1).is_some() {
        return Err(Refusal::bad_request(
            "the request has more than one Host header",
        ));
    }
    let te: Vec<_> = headers.get_all(header::TRANSFER_ENCODING).iter().collect();
    let cl: Vec<_> = headers.get_all(header::CONTENT_LENGTH).iter().collect();
    let hidden_cl = !te.is_empty() && raw_header.is_some_and(raw_has_content_length);
    if !te.is_empty() && (!cl.is_empty() || hidden_cl) {
        return Err(Refusal::bad_request(
            "the request has both Content-Length and Transfer-Encoding",
        ));
    }
    if te.len() > 1
        || te
            .first()
            .is_some_and(|v| !v.as_bytes().eq_ignore_ascii_case(b"chunked"))
    {
        return Err(Refusal::bad_request(
            "the only Transfer-Encoding accepted is a single 'chunked'",
        ));
    }
    if cl.len() > 1 && cl.iter().any(|v| *v != cl[0]) {
        return Err(Refusal::bad_request(
            "the request has conflicting Content-Length headers",
        ));
    }
    if cl
        .first()
        .is_some_and(|v| v.is_empty() || !v.as_bytes().iter().all(u8::is_ascii_digit))
    {
        return Err(Refusal::bad_request(
            "the Content-Length header is not a number",
        ));
    }
    Ok(())
}

/// True when a raw request header has a `Content-Length` field line.
fn raw_has_content_length(raw: &[u8]) -> bool {
    const NAME: &[u8] = b"content-length";
    raw.split(|&b| b == b'\n').skip(1).any(|line| {
        let line = line.trim_ascii_start();
        line.len() > NAME.len()
            && line[..NAME.len()].eq_ignore_ascii_case(NAME)
            && line[NAME.len()..].trim_ascii_start().first() == Some(&b':')
    })
}

/// The names listed in `Connection` headers, lower-cased, less the protected ones.
fn connection_listed(headers: &HeaderMap) -> Vec<HeaderName> {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .filter(|name| !PROTECTED.contains(&name.as_str()))
        .collect()
}

/// Request headers that never reach the upstream as the client sent them: hop-by-hop
/// headers, method overrides, the client's credentials, keygate's own identity headers, and
/// `Destination` and `Overwrite`, which travel only on the routes that read them, in the form
/// that was authorized (anywhere else a backend might act on what keygate never decided). A
/// mounted server reads the `If` header's resources in its own paths, so it gets keygate's
/// translation or nothing.
fn never_forwarded(name: &str, mounted: bool) -> bool {
    HOP_BY_HOP.contains(&name)
        || METHOD_OVERRIDES.contains(&name)
        || CREDENTIALS.contains(&name)
        || name.starts_with("x-keygate-")
        || name == "destination"
        || name == "overwrite"
        || (mounted && name == "if")
}

/// Rewrites the upstream copy of the request.
pub fn prepare_upstream(
    req: &mut RequestHeader,
    route: &RouteMatch,
    principal: &Principal,
    request_id: &str,
) -> Result<(), Refusal> {
    let uri: http::Uri = route
        .upstream_target
        .parse()
        .map_err(|_| Refusal::bad_request("the request target cannot be forwarded"))?;
    req.set_uri(uri);
    // One pass over the request's own headers (a handful) finds what must not travel, rather
    // than a removal (a parse and a lookup) for every name that might.
    let mounted = route.forward.is_some();
    let mut dropped = connection_listed(&req.headers);
    dropped.extend(
        req.headers
            .keys()
            .filter(|k| never_forwarded(k.as_str(), mounted))
            .cloned(),
    );
    for name in &dropped {
        req.remove_header(name);
    }
    if let Some(dest) = &route.upstream_destination {
        req.insert_header("destination", dest.as_str())
            .map_err(|_| Refusal::bad_request("the Destination header cannot be forwarded"))?;
    }
    if let Some(overwrite) = route.upstream_overwrite {
        let _ = req.insert_header("overwrite", overwrite);
    }
    if let Some(value) = &route.upstream_if {
        req.insert_header("if", value.as_str())
            .map_err(|_| Refusal::bad_request("the If header cannot be forwarded"))?;
    }
    let _ = req.insert_header(REQUEST_ID, request_id);
    for (name, value) in [
        (USER, principal.user_email.as_str()),
        (KEY_ID, principal.key_id.as_str()),
        (WORKSPACE, principal.workspace.as_str()),
    ] {
        req.insert_header(name, value)
            .map_err(|_| Refusal::bad_request("an identity header cannot be forwarded"))?;
    }
    Ok(())
}

/// Cleans the upstream's response before the client sees it.
pub fn clean_response(resp: &mut ResponseHeader, request_id: &str) {
    let mut dropped = connection_listed(&resp.headers);
    dropped.extend(
        resp.headers
            .keys()
            .filter(|k| HOP_BY_HOP.contains(&k.as_str()))
            .cloned(),
    );
    for name in &dropped {
        resp.remove_header(name);
    }
    let _ = resp.insert_header(REQUEST_ID, request_id);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_request_line_target_keeps_what_parsing_drops() {
        let target = request_line_target;
        assert_eq!(
            target(b"DELETE /frag/#ment HTTP/1.1\r\nHost: x\r\n\r\n"),
            Some(&b"/frag/#ment"[..])
        );
        assert_eq!(target(b"GET /a?b HTTP/1.1\r\n\r\n"), Some(&b"/a?b"[..]));
        assert_eq!(
            target(b"\r\n\nDELETE /frag/#ment HTTP/1.1\r\n\r\n"),
            Some(&b"/frag/#ment"[..]),
            "empty lines before the request line"
        );
        assert_eq!(target(b"GET /a b HTTP/1.1\r\n\r\n"), None);
        assert_eq!(target(b"GET  HTTP/1.1\r\n\r\n"), None);
    }
    use crate::route::RouteMatch;
    use crate::testing::headers;
    use std::sync::Arc;

    #[test]
    fn framing() {
        assert!(check_framing(&headers(&[("content-length", "5")]), None).is_ok());
        assert!(check_framing(&headers(&[("transfer-encoding", "chunked")]), None).is_ok());
        let raw = b"PUT /x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nX-Content-Length: 3\r\n\r\n";
        assert!(check_framing(&headers(&[("transfer-encoding", "chunked")]), Some(raw)).is_ok());
        // What pingora hands over when both were sent: Content-Length already removed.
        let raw = b"PUT /x HTTP/1.1\r\nHost: a\r\ncontent-LENGTH : 3\r\nTransfer-Encoding: chunked\r\n\r\n";
        assert!(check_framing(&headers(&[("transfer-encoding", "chunked")]), Some(raw)).is_err());
        for bad in [
            &[("content-length", "5"), ("transfer-encoding", "chunked")][..],
            &[("transfer-encoding", "gzip, chunked")],
            &[
                ("transfer-encoding", "chunked"),
                ("transfer-encoding", "chunked"),
            ],
            &[("content-length", "5"), ("content-length", "6")],
            &[("content-length", "-1")],
            &[("content-length", "0x10")],
        ] {
            assert!(check_framing(&headers(bad), None).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn strips_what_must_not_travel() {
        let mut req = RequestHeader::build("GET", b"/v1/files/local/a%2e", None).unwrap();
        for (k, v) in [
            ("host", "x"),
            ("connection", "keep-alive, x-secret-hop, content-length"),
            ("x-secret-hop", "1"),
            ("keep-alive", "timeout=5"),
            ("te", "trailers"),
            ("upgrade", "websocket"),
            ("x-keygate-user", "admin"),
            ("X-Keygate-Workspace", "other"),
            ("x-http-method-override", "DELETE"),
            ("authorization", "Bearer secret"),
            ("x-api-key", "secret"),
            ("content-length", "0"),
            ("accept", "*/*"),
            // A GET never moves anything: these must not reach a backend that would act on them.
            ("destination", "/v1/files/local/elsewhere"),
            ("overwrite", "T"),
        ] {
            req.append_header(k, v).unwrap();
        }
        let route = RouteMatch::new(Arc::from("readFile"), "/v1/files/local/a.".to_owned());
        let principal = Principal {
            kind: Default::default(),
            key_id: "key-1".into(),
            user_id: "user-1".into(),
            user_email: "ada@example.com".into(),
            workspace_id: "ws-1".into(),
            workspace: "acme".into(),
            scopes: vec![],
            grants: None,
            role: None,
            expires_at: None,
            generation: 0,
            usage: Default::default(),
        };
        prepare_upstream(&mut req, &route, &principal, "rid-1").unwrap();
        let mut names: Vec<&str> = req.headers.keys().map(|k| k.as_str()).collect();
        names.sort_unstable();
        assert_eq!(
            names,
            [
                "accept",
                "content-length",
                "host",
                "x-keygate-key-id",
                "x-keygate-request-id",
                "x-keygate-user",
                "x-keygate-workspace"
            ]
        );
        assert_eq!(req.headers["x-keygate-user"], "ada@example.com");
        assert_eq!(req.raw_path(), b"/v1/files/local/a.");
    }

    #[test]
    fn cleans_responses() {
        let mut resp = ResponseHeader::build(200, None).unwrap();
        resp.append_header("connection", "close, x-internal")
            .unwrap();
        resp.append_header("x-internal", "1").unwrap();
        resp.append_header("keep-alive", "timeout=5").unwrap();
        resp.append_header("etag", "\"1\"").unwrap();
        clean_response(&mut resp, "rid");
        let mut names: Vec<&str> = resp.headers.keys().map(|k| k.as_str()).collect();
        names.sort_unstable();
        assert_eq!(names, ["etag", "x-keygate-request-id"]);
    }
}
