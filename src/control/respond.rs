//! The one place the control plane turns results into responses: the success envelope, the
//! JSON body parser, and [`ManageError`] (with the request path's refusals inside it) as the
//! error envelope. Internals never reach the client: a database failure is a plain 503.

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

/// Parses a JSON body, answering 400 in the error shape when it does not fit.
pub fn body<T: for<'de> Deserialize<'de>>(bytes: &[u8]) -> Result<T, ManageError> {
    serde_json::from_slice(bytes)
        .map_err(|e| ManageError::BadRequest(format!("invalid request body: {e}")))
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
            ManageError::BadRequest(_) => (StatusCode::BAD_REQUEST, "BAD_REQUEST"),
            ManageError::Forbidden(_) => (StatusCode::FORBIDDEN, "FORBIDDEN"),
            ManageError::NotFound(_) => (StatusCode::NOT_FOUND, "NOT_FOUND"),
            ManageError::Conflict(_) => (StatusCode::CONFLICT, "CONFLICT"),
            ManageError::InvalidPolicy { .. } => {
                (StatusCode::UNPROCESSABLE_ENTITY, "INVALID_POLICY")
            }
        };
        let details = match &self {
            ManageError::InvalidPolicy { details, .. } => Some(details.clone()),
            _ => None,
        };
        error(status, code, &self.to_string(), details)
    }
}
