//! `/v1/admin/policy`: the running policy set's status, and reloading it (who may is in the
//! policy files: `operating.cedar`).

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use axum::routing::{get, post};
use axum::Router;
use serde_json::json;

use super::caller::Caller;
use super::respond::ok;
use super::respond::Body;
use super::ControlState;
use crate::manage::ManageError;
use crate::refusal::Refusal;

pub fn routes() -> Router<ControlState> {
    Router::new()
        .route("/v1/admin/policy", get(status))
        .route("/v1/admin/policy/reload", post(reload))
        .route("/v1/admin/policy/check", post(check))
}

async fn status(
    State(st): State<ControlState>,
    Caller(actor): Caller,
) -> Result<Response, ManageError> {
    st.keys.authorize_operation(&actor, "readPolicies")?;
    Ok(ok(StatusCode::OK, st.policy.status()))
}

/// Reloads now; answers after the new set is in force (or rejected).
async fn reload(
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
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct CheckRequest {
    key: Option<String>,
    token: Option<String>,
    user: Option<String>,
    method: String,
    path: String,
    destination: Option<String>,
}

async fn check(
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
