//! The body stage of a GraphQL route: the body is read whole, within `[graphql] max_body` bytes
//! and `body_timeout`, and its operation becomes the route's decisions.
//!
//! pingora forwards a body that was read before the upstream request from its replay buffer
//! (64 KiB, so `max_body` is at most that); the request body filter then sends exactly the
//! bytes decided on (`RequestCtx::body`) and nothing else.

use bytes::BytesMut;
use pingora::proxy::Session;

use super::RequestCtx;
use crate::refusal::Refusal;
use crate::route::graphql::{self, GraphqlRules};

/// Reads the body of a GraphQL request and applies its operation to the route.
pub(super) async fn read_graphql(
    session: &mut Session,
    rules: &GraphqlRules,
    ctx: &mut RequestCtx,
) -> Result<(), Refusal> {
    // Some GraphQL servers read `query`, `operationName` or `variables` from the URL before the
    // body: the operation keygate decides must be the only one the request carries.
    if ctx.route.as_ref().is_some_and(|r| r.query().is_some()) {
        return Err(Refusal::bad_request(
            "a GraphQL request carries its operation in the body only, with no query string",
        ));
    }
    let headers = &session.req_header().headers;
    // A browser may send a cross-site `text/plain` or form POST with the session cookie;
    // GraphQL-over-HTTP requests are JSON, in UTF-8 (another charset could make the server
    // read other strings than keygate).
    let mut content_types = headers.get_all(http::header::CONTENT_TYPE).iter();
    let json = content_types
        .next()
        .filter(|_| content_types.next().is_none())
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            let mut parts = v.split(';').map(str::trim);
            parts
                .next()
                .is_some_and(|t| t.eq_ignore_ascii_case("application/json"))
                && parts.all(|p| {
                    p.is_empty()
                        || p.eq_ignore_ascii_case("charset=utf-8")
                        || p.eq_ignore_ascii_case("charset=\"utf-8\"")
                })
        });
    if !json {
        return Err(Refusal::bad_request(
            "a GraphQL request must be a POST with Content-Type: application/json (UTF-8)",
        ));
    }
    // A declared length over the limit is refused before a byte of it is read.
    let declared = headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    if declared.is_some_and(|n| n > rules.max_body as u64) {
        return Err(Refusal::PayloadTooLarge {
            limit: rules.max_body,
        });
    }
    // A server that inflates request bodies would read other bytes than keygate decided on.
    if headers
        .get_all(http::header::CONTENT_ENCODING)
        .iter()
        .any(|v| !v.as_bytes().trim_ascii().eq_ignore_ascii_case(b"identity"))
    {
        return Err(Refusal::bad_request(
            "a GraphQL request body must not be compressed (Content-Encoding)",
        ));
    }
    let expects_continue = headers
        .get(http::header::EXPECT)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
    if expects_continue && session.write_continue_response().await.is_err() {
        return Err(Refusal::bad_request("the request body could not be read"));
    }
    session.enable_retry_buffering();
    let max = rules.max_body;
    let read = tokio::time::timeout(rules.body_timeout, async {
        let mut buf = BytesMut::new();
        loop {
            match session.read_request_body().await {
                Ok(Some(chunk)) => {
                    if buf.len() + chunk.len() > max {
                        return Err(Refusal::PayloadTooLarge { limit: max });
                    }
                    buf.extend_from_slice(&chunk);
                }
                Ok(None) => return Ok(buf.freeze()),
                Err(_) => return Err(Refusal::bad_request("the request body could not be read")),
            }
        }
    })
    .await
    .unwrap_or(Err(Refusal::RequestTimeout))?;
    // INVARIANT: what pingora will send upstream is what was read; otherwise fail closed.
    let replay = session.get_retry_buffer().unwrap_or_default();
    if replay != read {
        return Err(Refusal::Unavailable(
            "the request body cannot be forwarded as read".into(),
        ));
    }
    let route = ctx
        .route
        .as_mut()
        .ok_or_else(|| Refusal::Unavailable("a body was read without a route".into()))?;
    let op = graphql::authorize(rules, &read, route.provider.as_ref())?;
    route.apply_graphql(op);
    ctx.body = Some(read);
    ctx.body_read = true;
    Ok(())
}
