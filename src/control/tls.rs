//! `/v1/admin/tls`: the served certificate's status (subject, expiry, the last failed reload and
//! why) and reloading it now; who may is in the policy files (`operating.cedar`). 404 when
//! `[tls]` is not configured.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use axum::routing::{get, post};
use axum::Router;
use serde_json::json;

use super::caller::Caller;
use super::openapi::{Failure, Refused, Success};
use super::respond::ok;
use super::ControlState;
use crate::manage::ManageError;
use crate::refusal::Refusal;
use crate::tls::CertificateStatus;

pub fn routes() -> Router<ControlState> {
    Router::new()
        .route("/v1/admin/tls", get(status))
        .route("/v1/admin/tls/reload", post(reload))
}

#[utoipa::path(get, path = "/v1/admin/tls", operation_id = "certificateStatus", tag = "operating",
    responses((status = 200, description = "The served certificate (404 without `[tls]`)", body = Success<CertificateStatus>), Refused))]
pub(super) async fn status(
    State(st): State<ControlState>,
    Caller(actor): Caller,
) -> Result<Response, ManageError> {
    st.keys.authorize_operation(&actor, "readCertificates")?;
    let certs = st.certificates.as_ref().ok_or(Refusal::NotFound)?;
    Ok(ok(StatusCode::OK, certs.status()))
}

/// Reloads now; a broken certificate is refused and the served one stays.
#[utoipa::path(post, path = "/v1/admin/tls/reload", operation_id = "reloadCertificate", tag = "operating",
    responses((status = 200, description = "The certificate in force after the reload", body = Success<CertificateStatus>),
        (status = 422, description = "The files do not load; the served certificate goes on", body = Failure), Refused))]
pub(super) async fn reload(
    State(st): State<ControlState>,
    Caller(actor): Caller,
) -> Result<Response, ManageError> {
    st.keys.authorize_operation(&actor, "reloadCertificates")?;
    let certs = st.certificates.clone().ok_or(Refusal::NotFound)?;
    let reloaded = certs.clone();
    let result = tokio::task::spawn_blocking(move || reloaded.reload())
        .await
        .map_err(|_| Refusal::Unavailable("the reload did not finish".into()))?;
    match result {
        Ok(()) => Ok(ok(StatusCode::OK, certs.status())),
        Err(message) => Err(ManageError::InvalidCertificate {
            message: format!("the certificate was not reloaded: {message}"),
            details: json!({ "serving": certs.status() }),
        }),
    }
}
