//! `/v1/admin/policy`: the running policy set's status, and reloading it (operator only).

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use axum::routing::{get, post};
use axum::Router;
use serde_json::json;

use super::caller::{operator_only, Caller};
use super::respond::ok;
use super::ControlState;
use crate::manage::ManageError;
use crate::refusal::Refusal;

pub fn routes() -> Router<ControlState> {
    Router::new()
        .route("/v1/admin/policy", get(status))
        .route("/v1/admin/policy/reload", post(reload))
}

async fn status(
    State(st): State<ControlState>,
    Caller(actor): Caller,
) -> Result<Response, ManageError> {
    operator_only(actor, "policies")?;
    Ok(ok(StatusCode::OK, st.policy.status()))
}

/// Reloads now; answers after the new set is in force (or rejected).
async fn reload(
    State(st): State<ControlState>,
    Caller(actor): Caller,
) -> Result<Response, ManageError> {
    operator_only(actor, "policies")?;
    let engine = st.policy.clone();
    let result = tokio::task::spawn_blocking(move || engine.reload())
        .await
        .map_err(|_| Refusal::Unavailable("the reload did not finish".into()))?;
    let status = st.policy.status();
    match result {
        Ok(_) => Ok(ok(StatusCode::OK, status)),
        Err(message) => Err(ManageError::InvalidPolicy {
            message,
            details: json!({"runningEpoch": status.epoch, "runningHash": status.hash}),
        }),
    }
}
