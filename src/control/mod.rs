//! The control plane (axum, in the same process): health, readiness, metrics, logins and
//! tokens (`logins.rs`), the key-management API (`keys.rs`), policy status (`policy.rs`). The
//! handlers are thin: [`caller::Caller`] authenticates, `manage/` applies the rules, and
//! `respond.rs` is the one place results become JSON (the data plane's error shape).
//!
//! May import: `manage`, `identity`, `policy`, `store`, `refusal`, `telemetry`, `clock`,
//! `model`. Never `proxy` or `server`.

pub mod caller;
mod keys;
mod logins;
mod policy;
pub mod respond;

use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;

use crate::identity::Identity;
use crate::manage::{Auth, KeyManager};
use crate::model::EXPIRY_WARNING_MS;
use crate::policy::PolicyEngine;
use crate::store::Store;
use crate::telemetry::Metrics;

#[derive(Clone)]
pub struct ControlState {
    pub store: Store,
    pub metrics: Arc<Metrics>,
    pub identity: Arc<Identity>,
    pub keys: Arc<KeyManager>,
    pub auth: Arc<Auth>,
    /// The operator token from the config; acts as a workspace admin everywhere.
    pub operator_token: Option<Arc<str>>,
    pub policy: Arc<PolicyEngine>,
}

/// The control-plane API, without a socket.
pub fn app(state: ControlState) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .merge(keys::routes())
        .merge(logins::routes())
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
    let until = crate::clock::now_millis() + EXPIRY_WARNING_MS;
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
    respond::error(StatusCode::NOT_FOUND, "NOT_FOUND", "no such endpoint", None)
}
