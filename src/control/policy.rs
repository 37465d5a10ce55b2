//! `/v1/admin/policy`: the running policy set's status, and reloading it (operator only).

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::json;

use super::{keys::Caller, ApiError, ControlState};
use crate::manage::{Actor, ManageError};

pub fn routes() -> Router<ControlState> {
    Router::new()
        .route("/v1/admin/policy", get(status))
        .route("/v1/admin/policy/reload", post(reload))
}

fn operator(actor: Actor) -> Result<(), ApiError> {
    match actor {
        Actor::Operator => Ok(()),
        Actor::User(_) => {
            Err(ManageError::Forbidden("only the operator manages policies".to_owned()).into())
        }
    }
}

async fn status(
    State(st): State<ControlState>,
    Caller(actor): Caller,
) -> Result<Response, ApiError> {
    operator(actor)?;
    Ok(Json(json!({"success": true, "data": st.policy.status()})).into_response())
}

/// Reloads now; answers after the new set is in force (or rejected).
async fn reload(
    State(st): State<ControlState>,
    Caller(actor): Caller,
) -> Result<Response, ApiError> {
    operator(actor)?;
    let engine = st.policy.clone();
    let result = tokio::task::spawn_blocking(move || engine.reload())
        .await
        .map_err(|_| ApiError::BadRequest("the reload failed".to_owned()))?;
    let status = st.policy.status();
    Ok(match result {
        Ok(_) => Json(json!({"success": true, "data": status})).into_response(),
        Err(message) => (
            StatusCode::UNPROCESSABLE_ENTITY,
            Json(
                json!({"success": false, "error": {"code": "INVALID_POLICY", "message": message,
                "details": {"runningEpoch": status.epoch, "runningHash": status.hash}}}),
            ),
        )
            .into_response(),
    })
}
