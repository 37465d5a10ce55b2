//! The one place the control plane turns results into responses: the success envelope, the
//! JSON body parser, and [`ManageError`] (with the request path's refusals inside it) as the
//! error envelope. Internals never reach the client: a database failure is a plain 503.

use axum::extract::{FromRequest, Request};
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;

use crate::manage::ManageError;
use crate::refusal::{error_body, request_id, success_body, Refusal};

/// `{"success": true, "data": …}` with `status`.
pub fn ok<T: serde::Serialize>(status: StatusCode, data: T) -> Response {
    (status, Json(success_body(data))).into_response()
}

/// Like [`ok`], for an answer that carries a secret shown this once: never cached.
pub fn ok_secret<T: serde::Serialize>(status: StatusCode, data: T) -> Response {
    let mut response = ok(status, data);
    response.headers_mut().insert(
        axum::http::header::CACHE_CONTROL,
        HeaderValue::from_static("no-store"),
    );
    response
}

/// Largest JSON body any control-plane endpoint accepts.
pub const MAX_BODY: usize = 64 * 1024;

/// Longest a control-plane JSON body may take to arrive, whole.
pub const BODY_DEADLINE: std::time::Duration = std::time::Duration::from_secs(10);

/// A JSON request body as `T`: `Content-Type: application/json` (415 otherwise; a form post
/// from another site cannot pass for an API call), at most [`MAX_BODY`] bytes (413), and the
/// shape of `T` (400). Every refusal is in the JSON error shape.
pub struct Body<T>(pub T);

impl<S: Send + Sync, T: for<'de> Deserialize<'de>> FromRequest<S> for Body<T> {
    type Rejection = ManageError;

    async fn from_request(req: Request, _: &S) -> Result<Body<T>, ManageError> {
        let json = req
            .headers()
            .get(axum::http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(';').next())
            .is_some_and(|v| v.trim().eq_ignore_ascii_case("application/json"));
        if !json {
            return Err(ManageError::UnsupportedMediaType(
                "send the body as JSON (Content-Type: application/json)".to_owned(),
            ));
        }
        // The whole body within the deadline: hyper's header timeout ends with the header, and
        // a client that announces a body and never sends it would hold the connection.
        let read = axum::body::to_bytes(req.into_body(), MAX_BODY);
        let bytes = tokio::time::timeout(BODY_DEADLINE, read)
            .await
            .map_err(|_| {
                ManageError::Timeout("the request body did not arrive in time".to_owned())
            })?
            .map_err(|_| {
                ManageError::PayloadTooLarge(format!(
                    "the request body exceeds {} KiB",
                    MAX_BODY / 1024
                ))
            })?;
        serde_json::from_slice(&bytes)
            .map(Body)
            .map_err(|e| ManageError::BadRequest(format!("invalid request body: {e}")))
    }
}

/// A refusal of the request path, rendered exactly as the data plane renders it.
pub fn refusal(r: &Refusal) -> Response {
    let rendered = r.render(&request_id());
    let mut builder = axum::http::Response::builder().status(rendered.status);
    for (name, value) in &rendered.headers {
        builder = builder.header(*name, value.as_str());
    }
    builder
        .body(axum::body::Body::from(rendered.body))
        .unwrap_or_default()
}

/// An error envelope with `status` and `code`.
pub fn error(
    status: StatusCode,
    code: &str,
    message: &str,
    details: Option<serde_json::Value>,
) -> Response {
    let body = error_body(code, message, &request_id(), details);
    (status, Json(body)).into_response()
}

impl IntoResponse for ManageError {
    fn into_response(self) -> Response {
        let (status, code) = match &self {
            ManageError::Refused(r) => return refusal(r),
            ManageError::Store(inner) => {
                tracing::error!(error = %inner, "control plane: database failure");
                return refusal(&Refusal::Unavailable("the database is unavailable".into()));
            }
            ManageError::BadRequest(_) | ManageError::InvalidRequest { .. } => {
                (StatusCode::BAD_REQUEST, "BAD_REQUEST")
            }
            ManageError::Forbidden(_) => (StatusCode::FORBIDDEN, "FORBIDDEN"),
            ManageError::NotFound(_) => (StatusCode::NOT_FOUND, "NOT_FOUND"),
            ManageError::Conflict(_) => (StatusCode::CONFLICT, "CONFLICT"),
            ManageError::PayloadTooLarge(_) => (StatusCode::PAYLOAD_TOO_LARGE, "PAYLOAD_TOO_LARGE"),
            ManageError::Timeout(_) => (StatusCode::REQUEST_TIMEOUT, "REQUEST_TIMEOUT"),
            ManageError::UnsupportedMediaType(_) => {
                (StatusCode::UNSUPPORTED_MEDIA_TYPE, "UNSUPPORTED_MEDIA_TYPE")
            }
            ManageError::InvalidPolicy { .. } => {
                (StatusCode::UNPROCESSABLE_ENTITY, "INVALID_POLICY")
            }
            ManageError::InvalidCertificate { .. } => {
                (StatusCode::UNPROCESSABLE_ENTITY, "INVALID_CERTIFICATE")
            }
        };
        let details = match &self {
            ManageError::InvalidPolicy { details, .. }
            | ManageError::InvalidCertificate { details, .. }
            | ManageError::InvalidRequest { details, .. } => Some(details.clone()),
            _ => None,
        };
        error(status, code, &self.to_string(), details)
    }
}
