//! `/v1/admin/policy`: the running policy set's status, and reloading it (who may is in the
//! policy files: `operating.cedar`).

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use axum::routing::{get, post};
use axum::Router;
use serde_json::json;

use super::caller::Caller;
use super::openapi::{Failure, Refused, Success};
use super::respond::ok;
use super::respond::Body;
use super::ControlState;
use crate::manage::explain::Explanation;
use crate::manage::ManageError;
use crate::policy::PolicyStatus;
use crate::refusal::Refusal;

pub fn routes() -> Router<ControlState> {
    Router::new()
        .route("/v1/admin/policy", get(status))
        .route("/v1/admin/policy/reload", post(reload))
        .route("/v1/admin/policy/check", post(check))
}

#[utoipa::path(get, path = "/v1/admin/policy", operation_id = "policyStatus", tag = "operating",
    responses((status = 200, description = "The running policy set (the operator only)", body = Success<PolicyStatus>), Refused))]
pub(super) async fn status(
    State(st): State<ControlState>,
    Caller(actor): Caller,
) -> Result<Response, ManageError> {
    st.keys.authorize_operation(&actor, "readPolicies")?;
    Ok(ok(StatusCode::OK, st.policy.status()))
}

/// Reloads now; answers after the new set is in force (or rejected).
#[utoipa::path(post, path = "/v1/admin/policy/reload", operation_id = "reloadPolicies", tag = "operating",
    responses((status = 200, description = "The set in force after the reload", body = Success<PolicyStatus>),
        (status = 422, description = "The new files are invalid; the running set goes on (`details.runningEpoch`)", body = Failure), Refused))]
pub(super) async fn reload(
    State(st): State<ControlState>,
    Caller(actor): Caller,
) -> Result<Response, ManageError> {
    st.keys.authorize_operation(&actor, "reloadPolicies")?;
    if st.policy.is_published() {
        // Published policies: load the newest version now rather than at the next poll.
        st.changes.follow_policy().await;
        return Ok(ok(StatusCode::OK, st.policy.status()));
    }
    let engine = st.policy.clone();
    let result = tokio::task::spawn_blocking(move || engine.reload())
        .await
        .map_err(|_| Refusal::Unavailable("the reload did not finish".into()))?;
    if result.is_ok() {
        if let Err(e) = st.keys.check_inert_scopes().await {
            tracing::warn!(error = %e, "could not look for credentials with undefined scopes");
        }
    }
    let status = st.policy.status();
    match result {
        Ok(_) => Ok(ok(StatusCode::OK, status)),
        Err(message) => Err(ManageError::InvalidPolicy {
            message,
            details: json!({"runningEpoch": status.epoch, "runningHash": status.hash}),
        }),
    }
}

/// `POST /v1/admin/policy/check`: how the running set decides a request of a key, a token or
/// a signed-in user.
#[derive(Debug, serde::Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct CheckRequest {
    key: Option<String>,
    token: Option<String>,
    user: Option<String>,
    method: String,
    path: String,
    destination: Option<String>,
}

#[utoipa::path(post, path = "/v1/admin/policy/check", operation_id = "checkAccess", tag = "operating", request_body = CheckRequest,
    responses((status = 200, description = "How the running set decides the request, and the policies that did", body = Success<Explanation>), Refused))]
pub(super) async fn check(
    State(st): State<ControlState>,
    Caller(actor): Caller,
    Body(req): Body<CheckRequest>,
) -> Result<Response, ManageError> {
    use crate::manage::explain::{explain, Question, Subject};
    let subject = match (req.key, req.token, req.user) {
        (Some(id), None, None) => Subject::Key(id),
        (None, Some(id), None) => Subject::Token(id),
        (None, None, Some(email)) => Subject::User(email),
        _ => return Err(ManageError::BadRequest(
            "give exactly one of key (an API key's id), token (a token's id) or user (an email)"
                .to_owned(),
        )),
    };
    let question = Question {
        subject,
        method: req.method,
        path: req.path,
        destination: req.destination,
    };
    let answer = explain(
        &st.store,
        &st.policy,
        &st.routes,
        Some(&st.keys),
        &actor,
        &question,
    )
    .await?;
    Ok(ok(StatusCode::OK, answer))
}
