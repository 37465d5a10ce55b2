//! The control plane (axum, in the same process): health, readiness and metrics for now;
//! login, tokens, keys and policy status join it in later stages.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;

use crate::store::Store;
use crate::telemetry::Metrics;

#[derive(Clone)]
pub struct ControlState {
    pub store: Store,
    pub metrics: Arc<Metrics>,
}

/// The control-plane API, without a socket.
pub fn app(state: ControlState) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
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
    (
        status,
        Json(json!({"status": if ready { "ready" } else { "not ready" }, "checks": {"database": db_state}})),
    )
        .into_response()
}

async fn metrics(State(st): State<ControlState>) -> Response {
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
    (
        StatusCode::NOT_FOUND,
        Json(json!({"success": false, "error": {"code": "NOT_FOUND", "message": "no such endpoint"}})),
    )
        .into_response()
}
