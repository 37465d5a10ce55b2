//! `/v1/keys`: the key-management API. The rules live in `manage/keys.rs` and the policy files.

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::Response;
use axum::routing::{get, post};
use axum::Router;
use serde::Deserialize;

use super::caller::Caller;
use super::respond::{ok, ok_secret, Body};
use super::ControlState;
use crate::manage::{Actor, CreateKey, ManageError, UpdateKey};

pub fn routes() -> Router<ControlState> {
    Router::new()
        .route("/v1/keys", get(list).post(create))
        .route("/v1/keys/{id}", get(show).patch(update).delete(revoke))
        .route("/v1/keys/{id}/rotate", post(rotate))
        .route("/v1/keys/{id}/usage", get(usage))
        .route("/v1/scopes", get(scopes))
        .route("/v1/providers", get(providers))
}

#[derive(Debug, Deserialize)]
struct ListQuery {
    owner: Option<String>,
    workspace: Option<String>,
    /// `true`: every key of the caller's workspace the policies let it read.
    #[serde(default)]
    all: bool,
}

async fn list(
    State(st): State<ControlState>,
    Caller(actor): Caller,
    Query(q): Query<ListQuery>,
) -> Result<Response, ManageError> {
    let keys = st
        .keys
        .list(&actor, q.owner.as_deref(), q.workspace.as_deref(), q.all)
        .await?;
    Ok(ok(StatusCode::OK, keys))
}

async fn create(
    State(st): State<ControlState>,
    Caller(actor): Caller,
    Body(req): Body<CreateKey>,
) -> Result<Response, ManageError> {
    Ok(ok_secret(
        StatusCode::CREATED,
        st.keys.create(&actor, req).await?,
    ))
}

async fn show(
    State(st): State<ControlState>,
    Caller(actor): Caller,
    Path(id): Path<String>,
) -> Result<Response, ManageError> {
    Ok(ok(StatusCode::OK, st.keys.show(&actor, &id).await?))
}

async fn update(
    State(st): State<ControlState>,
    Caller(actor): Caller,
    Path(id): Path<String>,
    Body(req): Body<UpdateKey>,
) -> Result<Response, ManageError> {
    Ok(ok(StatusCode::OK, st.keys.update(&actor, &id, req).await?))
}

async fn revoke(
    State(st): State<ControlState>,
    Caller(actor): Caller,
    Path(id): Path<String>,
) -> Result<Response, ManageError> {
    Ok(ok(StatusCode::OK, st.keys.revoke(&actor, &id).await?))
}

async fn rotate(
    State(st): State<ControlState>,
    Caller(actor): Caller,
    Path(id): Path<String>,
) -> Result<Response, ManageError> {
    Ok(ok_secret(
        StatusCode::CREATED,
        st.keys.rotate(&actor, &id).await?,
    ))
}

async fn usage(
    State(st): State<ControlState>,
    Caller(actor): Caller,
    Path(id): Path<String>,
) -> Result<Response, ManageError> {
    Ok(ok(StatusCode::OK, st.keys.usage(&actor, &id).await?))
}

/// The scopes a key or token may be granted, with the scopes and actions each contains, as the
/// running policies define them. Any authenticated caller may read it.
async fn scopes(State(st): State<ControlState>, Caller(_): Caller) -> Response {
    ok(StatusCode::OK, st.policy.current().scope_catalog())
}

/// The providers of the caller's workspace (every provider, for the operator): what a key's
/// `providers` may name. Read from the database, so a provider added a moment ago is there.
async fn providers(
    State(st): State<ControlState>,
    Caller(actor): Caller,
) -> Result<Response, ManageError> {
    let directory = st
        .store
        .provider_directory()
        .await
        .map_err(ManageError::from)?;
    let mut names: Vec<String> = directory
        .into_iter()
        .filter(|(_, workspace)| match &actor {
            Actor::User(p) => *workspace == p.workspace_id,
            Actor::Operator => true,
        })
        .map(|(name, _)| name)
        .collect();
    names.sort();
    let listed: Vec<_> = names
        .into_iter()
        .map(|name| serde_json::json!({ "name": name }))
        .collect();
    Ok(ok(StatusCode::OK, listed))
}
