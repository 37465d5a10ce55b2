//! `/v1/keys`: the key-management API. The rules live in `manage/keys.rs` and the policy files.

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::Response;
use axum::routing::{get, post};
use axum::Router;
use serde::Deserialize;

use super::caller::Caller;
use super::openapi::{Failure, Refused, Success};
use super::respond::{ok, ok_secret, Body};
use super::ControlState;
use crate::manage::{Actor, CreateKey, KeyView, ManageError, NewKeyView, UpdateKey, UsageView};
use crate::policy::ScopeInfo;

/// A provider a key may be given (`GET /v1/providers`).
#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct ProviderView {
    pub name: String,
}

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
pub(super) struct ListQuery {
    owner: Option<String>,
    workspace: Option<String>,
    /// `true`: every key of the caller's workspace the policies let it read.
    #[serde(default)]
    all: bool,
}

#[utoipa::path(get, path = "/v1/keys", operation_id = "listKeys", tag = "keys",
    params(
        ("owner" = Option<String>, Query, description = "The operator: one owner's keys (email)"),
        ("workspace" = Option<String>, Query, description = "Only this workspace's keys (name)"),
        ("all" = Option<bool>, Query, description = "Every key of the caller's workspace the policies let it read"),
    ),
    responses((status = 200, description = "The keys, never their secrets", body = Success<Vec<KeyView>>), Refused))]
pub(super) async fn list(
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

#[utoipa::path(post, path = "/v1/keys", operation_id = "createKey", tag = "keys", request_body = CreateKey,
    responses((status = 201, description = "The new key, shown this once (`no-store`)", body = Success<NewKeyView>),
        (status = 409, description = "The owner holds the most active keys allowed", body = Failure), Refused))]
pub(super) async fn create(
    State(st): State<ControlState>,
    Caller(actor): Caller,
    Body(req): Body<CreateKey>,
) -> Result<Response, ManageError> {
    Ok(ok_secret(
        StatusCode::CREATED,
        st.keys.create(&actor, req).await?,
    ))
}

#[utoipa::path(get, path = "/v1/keys/{id}", operation_id = "getKey", tag = "keys", params(("id" = String, Path, description = "The key's id")),
    responses((status = 200, description = "The key", body = Success<KeyView>), Refused))]
pub(super) async fn show(
    State(st): State<ControlState>,
    Caller(actor): Caller,
    Path(id): Path<String>,
) -> Result<Response, ManageError> {
    Ok(ok(StatusCode::OK, st.keys.show(&actor, &id).await?))
}

#[utoipa::path(patch, path = "/v1/keys/{id}", operation_id = "updateKey", tag = "keys", params(("id" = String, Path, description = "The key's id")), request_body = UpdateKey,
    responses((status = 200, description = "The key as changed", body = Success<KeyView>), Refused))]
pub(super) async fn update(
    State(st): State<ControlState>,
    Caller(actor): Caller,
    Path(id): Path<String>,
    Body(req): Body<UpdateKey>,
) -> Result<Response, ManageError> {
    Ok(ok(StatusCode::OK, st.keys.update(&actor, &id, req).await?))
}

#[utoipa::path(delete, path = "/v1/keys/{id}", operation_id = "revokeKey", tag = "keys", params(("id" = String, Path, description = "The key's id")),
    responses((status = 200, description = "The key, revoked at once and for good", body = Success<KeyView>), Refused))]
pub(super) async fn revoke(
    State(st): State<ControlState>,
    Caller(actor): Caller,
    Path(id): Path<String>,
) -> Result<Response, ManageError> {
    Ok(ok(StatusCode::OK, st.keys.revoke(&actor, &id).await?))
}

#[utoipa::path(post, path = "/v1/keys/{id}/rotate", operation_id = "rotateKey", tag = "keys", params(("id" = String, Path, description = "The key's id")),
    responses((status = 201, description = "The successor, shown this once (`no-store`); the old key is revoked", body = Success<NewKeyView>),
        (status = 409, description = "Another rotation of this key won", body = Failure), Refused))]
pub(super) async fn rotate(
    State(st): State<ControlState>,
    Caller(actor): Caller,
    Path(id): Path<String>,
) -> Result<Response, ManageError> {
    Ok(ok_secret(
        StatusCode::CREATED,
        st.keys.rotate(&actor, &id).await?,
    ))
}

#[utoipa::path(get, path = "/v1/keys/{id}/usage", operation_id = "keyUsage", tag = "keys", params(("id" = String, Path, description = "The key's id")),
    responses((status = 200, description = "Requests, denials and bytes per UTC day", body = Success<UsageView>), Refused))]
pub(super) async fn usage(
    State(st): State<ControlState>,
    Caller(actor): Caller,
    Path(id): Path<String>,
) -> Result<Response, ManageError> {
    Ok(ok(StatusCode::OK, st.keys.usage(&actor, &id).await?))
}

/// The scopes a key or token may be granted, with the scopes and actions each contains, as the
/// running policies define them. Any authenticated caller may read it.
#[utoipa::path(get, path = "/v1/scopes", operation_id = "listScopes", tag = "keys",
    responses((status = 200, description = "Every scope a key or token may hold", body = Success<Vec<ScopeInfo>>), Refused))]
pub(super) async fn scopes(State(st): State<ControlState>, Caller(_): Caller) -> Response {
    ok(StatusCode::OK, st.policy.current().scope_catalog())
}

/// The providers of the caller's workspace (every provider, for the operator): what a key's
/// `providers` may name. Read from the database, so a provider added a moment ago is there.
#[utoipa::path(get, path = "/v1/providers", operation_id = "listProviders", tag = "keys",
    responses((status = 200, description = "The providers of the caller's workspace", body = Success<Vec<ProviderView>>), Refused))]
pub(super) async fn providers(
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
    let listed: Vec<ProviderView> = names
        .into_iter()
        .map(|name| ProviderView { name })
        .collect();
    Ok(ok(StatusCode::OK, listed))
}
