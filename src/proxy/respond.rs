//! Writing keygate's own answers on the data plane: a refusal (whichever stage decided it) is
//! rendered once by [`Refusal::render`] and written here; a failure while proxying becomes the
//! refusal it amounts to.

use bytes::Bytes;
use pingora::http::ResponseHeader;
use pingora::prelude::*;
use pingora::{ErrorSource, ErrorType};

use super::context::RequestCtx;
use super::{forward, Keygate};
use crate::refusal::Refusal;

/// Writes a refusal as the whole response. With `close`, or when the request's body was never
/// read, the response says `Connection: close` and the connection ends.
pub(super) async fn respond(
    session: &mut Session,
    refusal: &Refusal,
    ctx: &RequestCtx,
    close: bool,
) -> Result<()> {
    let request_id = ctx.request_id.as_str();
    let rendered = refusal.render(request_id);
    let mut resp = ResponseHeader::build(rendered.status, Some(rendered.headers.len() + 7))?;
    for (name, value) in &rendered.headers {
        resp.insert_header(*name, value.as_str())?;
    }
    // WebDAV clients prompt for a password, or send their configured one, only when asked
    // for Basic; the Bearer challenge stays for the others.
    if matches!(refusal, Refusal::Unauthorized(_)) && ctx.route.as_ref().is_some_and(|r| r.basic) {
        resp.insert_header(
            http::header::WWW_AUTHENTICATE,
            "Basic realm=\"keygate\", charset=\"UTF-8\"",
        )?;
        resp.append_header(http::header::WWW_AUTHENTICATE, "Bearer")?;
    }
    if let Some(standing) = &ctx.standing {
        for (name, value) in standing.headers() {
            resp.insert_header(name, value)?;
        }
    }
    resp.insert_header(
        http::header::CONTENT_LENGTH,
        rendered.body.len().to_string(),
    )?;
    resp.insert_header(forward::REQUEST_ID, request_id)?;
    if let Some(hsts) = &ctx.hsts {
        resp.insert_header(http::header::STRICT_TRANSPORT_SECURITY, hsts)?;
    }
    // A refused request's body is never read: close rather than resynchronise on it.
    let has_body = session
        .req_header()
        .headers
        .contains_key(http::header::CONTENT_LENGTH)
        || session
            .req_header()
            .headers
            .contains_key(http::header::TRANSFER_ENCODING);
    if close || has_body || rendered.status == 400 {
        session.set_keepalive(None);
    }
    session.write_response_header(Box::new(resp), false).await?;
    session
        .write_response_body(Some(Bytes::from(rendered.body)), true)
        .await?;
    Ok(())
}

impl Keygate {
    /// The refusal a failure while proxying amounts to: the backend's failures are 502, an
    /// unreadable request 400, keygate's own 503; `None` when the client is gone.
    pub(super) fn refusal_for_failure(&self, e: &Error, request_id: &str) -> Option<Refusal> {
        match e.esource() {
            ErrorSource::Upstream => {
                self.metrics
                    .upstream_errors
                    .with_label_values(&[&e.etype().as_str()])
                    .inc();
                match e.etype() {
                    ErrorType::ReadTimedout | ErrorType::WriteTimedout => {
                        Some(Refusal::UpstreamTimeout)
                    }
                    _ => Some(Refusal::UpstreamUnavailable),
                }
            }
            ErrorSource::Downstream => match e.etype() {
                ErrorType::WriteError | ErrorType::ReadError | ErrorType::ConnectionClosed => None,
                _ => Some(Refusal::bad_request("the request could not be read")),
            },
            ErrorSource::Internal | ErrorSource::Unset => {
                if matches!(e.etype(), ErrorType::ConnectNoRoute) {
                    self.metrics
                        .upstream_errors
                        .with_label_values(&["no_healthy_peer"])
                        .inc();
                    Some(Refusal::UpstreamUnavailable)
                } else {
                    tracing::error!(request_id = %request_id, error = %e, "internal error while proxying");
                    Some(Refusal::Unavailable(
                        "keygate could not handle this request".into(),
                    ))
                }
            }
        }
    }
}
