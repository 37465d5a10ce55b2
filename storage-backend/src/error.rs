//! The one error type of the storage backend and its JSON rendering.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{0}")]
    BadPath(String),
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("requested range not satisfiable")]
    RangeNotSatisfiable { size: u64 },
    #[error("no space left on the storage device")]
    InsufficientStorage,
    #[error("internal storage error")]
    Io(#[source] std::io::Error),
}

impl StoreError {
    /// Maps an I/O error from an operation on `what` to the error a client should see.
    pub fn io(err: std::io::Error, what: &str) -> StoreError {
        use std::io::ErrorKind;
        // ENOSPC (28) and EDQUOT (122) on Linux.
        if matches!(err.raw_os_error(), Some(28) | Some(122)) {
            return StoreError::InsufficientStorage;
        }
        match err.kind() {
            ErrorKind::NotFound => StoreError::NotFound(format!("'{what}' does not exist")),
            ErrorKind::AlreadyExists => StoreError::Conflict(format!("'{what}' already exists")),
            ErrorKind::NotADirectory => {
                StoreError::Conflict(format!("a file stands in the way of '{what}'"))
            }
            ErrorKind::IsADirectory => StoreError::Conflict(format!("'{what}' is a folder")),
            ErrorKind::DirectoryNotEmpty => StoreError::Conflict(format!("'{what}' is not empty")),
            _ => StoreError::Io(err),
        }
    }

    fn status_and_code(&self) -> (StatusCode, &'static str) {
        match self {
            StoreError::BadPath(_) | StoreError::BadRequest(_) => {
                (StatusCode::BAD_REQUEST, "BAD_REQUEST")
            }
            StoreError::NotFound(_) => (StatusCode::NOT_FOUND, "NOT_FOUND"),
            StoreError::Conflict(_) => (StatusCode::CONFLICT, "CONFLICT"),
            StoreError::RangeNotSatisfiable { .. } => {
                (StatusCode::RANGE_NOT_SATISFIABLE, "RANGE_NOT_SATISFIABLE")
            }
            StoreError::InsufficientStorage => {
                (StatusCode::INSUFFICIENT_STORAGE, "INSUFFICIENT_STORAGE")
            }
            StoreError::Io(_) => (StatusCode::INTERNAL_SERVER_ERROR, "INTERNAL"),
        }
    }
}

impl IntoResponse for StoreError {
    fn into_response(self) -> Response {
        if let StoreError::Io(err) = &self {
            tracing::error!(error = %err, "storage i/o error");
        }
        let (status, code) = self.status_and_code();
        let body = json!({"success": false, "error": {"code": code, "message": self.to_string()}});
        let mut resp = (status, Json(body)).into_response();
        if let StoreError::RangeNotSatisfiable { size } = self {
            if let Ok(v) = format!("bytes */{size}").parse() {
                resp.headers_mut()
                    .insert(axum::http::header::CONTENT_RANGE, v);
            }
        }
        resp
    }
}
