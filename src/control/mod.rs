//! The control plane (axum, in the same process): health, readiness, metrics and the
//! key-management API; every answer uses the JSON shape of the data plane's refusals.

mod auth;
mod keys;
mod policy;

use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;

use crate::deny::Refusal;
use crate::identity::Identity;
use crate::manage::{KeyManager, ManageError};
use crate::store::Store;
use crate::telemetry::Metrics;

#[derive(Clone)]
pub struct ControlState {
    pub store: Store,
    pub metrics: Arc<Metrics>,
    pub identity: Arc<Identity>,
    pub keys: Arc<KeyManager>,
    pub auth: Arc<crate::auth::Auth>,
    /// The operator token from the config; acts as a workspace admin everywhere.
    pub operator_token: Option<Arc<str>>,
    pub policy: Arc<crate::policy::PolicyEngine>,
}

/// An error in the shared JSON shape.
pub fn error(status: StatusCode, code: &str, message: &str) -> Response {
    let request_id = uuid::Uuid::now_v7().simple().to_string();
    (
        status,
        Json(json!({"success": false, "error": {"code": code, "message": message, "requestId": request_id}})),
    )
        .into_response()
}

/// Every way a control-plane request fails; rendered once, internals hidden.
#[derive(Debug)]
pub enum ApiError {
    /// A refusal of the request path (401, 429, 503).
    Refusal(Refusal),
    BadRequest(String),
    Manage(ManageError),
}

impl From<Refusal> for ApiError {
    fn from(r: Refusal) -> ApiError {
        ApiError::Refusal(r)
    }
}

impl From<crate::auth::AuthError> for ApiError {
    fn from(e: crate::auth::AuthError) -> ApiError {
        match e {
            crate::auth::AuthError::Refusal(r) => ApiError::Refusal(r),
            crate::auth::AuthError::Manage(m) => ApiError::Manage(m),
        }
    }
}

impl From<ManageError> for ApiError {
    fn from(e: ManageError) -> ApiError {
        ApiError::Manage(e)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let request_id = uuid::Uuid::now_v7().simple().to_string();
        let (status, code, message) = match self {
            ApiError::Refusal(r) => return r.render_response(&request_id),
            ApiError::BadRequest(m) => (StatusCode::BAD_REQUEST, "BAD_REQUEST", m),
            ApiError::Manage(e) => match e {
                ManageError::BadRequest(m) => (StatusCode::BAD_REQUEST, "BAD_REQUEST", m),
                ManageError::Forbidden(m) => (StatusCode::FORBIDDEN, "FORBIDDEN", m),
                ManageError::NotFound(m) => (StatusCode::NOT_FOUND, "NOT_FOUND", m),
                ManageError::Conflict(m) => (StatusCode::CONFLICT, "CONFLICT", m),
                ManageError::Store(inner) => {
                    tracing::error!(error = %inner, "control plane: database failure");
                    return Refusal::Unavailable("the database is unavailable".into())
                        .render_response(&request_id);
                }
            },
        };
        error(status, code, &message)
    }
}

/// The control-plane API, without a socket.
pub fn app(state: ControlState) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .merge(keys::routes())
        .merge(auth::routes())
        .merge(policy::routes())
        .fallback(not_found)
        .with_state(state)
}

async fn healthz() -> Json<serde_json::Value> {
    Json(json!({"status": "ok"}))
}

/// Ready when the database answers. Fails closed: a slow database is not ready.
async fn readyz(State(st): State<ControlState>) -> Response {
    let db = tokio::time::timeout(Duration::from_secs(2), st.store.ping()).await;
    let (status, db_state) = match db {
        Ok(Ok(())) => (StatusCode::OK, "ok"),
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "readiness: database unavailable");
            (StatusCode::SERVICE_UNAVAILABLE, "unavailable")
        }
        Err(_) => (StatusCode::SERVICE_UNAVAILABLE, "timeout"),
    };
    let ready = status == StatusCode::OK;
    // The policy set is always loaded: keygate refuses to start without a valid one, and a
    // failed reload keeps the last good set.
    let epoch = st.policy.current().epoch;
    (
        status,
        Json(json!({"status": if ready { "ready" } else { "not ready" },
            "checks": {"database": db_state, "policies": {"state": "ok", "epoch": epoch}}})),
    )
        .into_response()
}

async fn metrics(State(st): State<ControlState>) -> Response {
    // Gauges that come from the database are read at scrape time.
    let until = crate::store::now_millis() + crate::manage::EXPIRY_WARNING_MS;
    match st.store.count_keys_expiring(until).await {
        Ok(n) => st.metrics.keys_expiring_soon.set(n),
        Err(e) => tracing::warn!(error = %e, "cannot count expiring keys"),
    }
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        st.metrics.render(),
    )
        .into_response()
}

async fn not_found() -> Response {
    error(StatusCode::NOT_FOUND, "NOT_FOUND", "no such endpoint")
}
