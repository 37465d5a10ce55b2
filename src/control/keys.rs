//! `/v1/keys`: the key-management API, and the [`Caller`] extractor every authenticated
//! control-plane endpoint uses. Authentication is the operator token or any user credential
//! (API key, login JWT, session cookie, scoped token); the rules live in `manage.rs` and the
//! policy files.

use std::net::{IpAddr, SocketAddr};

use axum::extract::{ConnectInfo, FromRequestParts, Path, Query, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::json;
use subtle::ConstantTimeEq;

use super::{ApiError, ControlState};
use crate::credentials::{check_csrf, credentials, Credentials};
use crate::deny::Refusal;
use crate::manage::{Actor, CreateKey, UpdateKey};

pub fn routes() -> Router<ControlState> {
    Router::new()
        .route("/v1/keys", get(list).post(create))
        .route("/v1/keys/{id}", get(show).patch(update).delete(revoke))
        .route("/v1/keys/{id}/rotate", post(rotate))
        .route("/v1/keys/{id}/usage", get(usage))
}

/// The client's address, when the listener recorded it.
pub struct ClientAddr(pub Option<IpAddr>);

impl<S: Send + Sync> FromRequestParts<S> for ClientAddr {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<ClientAddr, Self::Rejection> {
        Ok(ClientAddr(
            parts
                .extensions
                .get::<ConnectInfo<SocketAddr>>()
                .map(|c| c.0.ip()),
        ))
    }
}

/// Who is calling: the operator token, or an API key. An extractor, so that every handler
/// authenticates the same way; failed API-key attempts count against the client address like
/// on the data plane, and an address that keeps failing is answered 429 before any lookup.
pub struct Caller(pub Actor);

impl FromRequestParts<ControlState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, st: &ControlState) -> Result<Caller, ApiError> {
        let addr = parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map(|c| c.0.ip());
        actor(st, &parts.method, &parts.headers, addr)
            .await
            .map(Caller)
    }
}

async fn actor(
    st: &ControlState,
    method: &http::Method,
    headers: &HeaderMap,
    addr: Option<IpAddr>,
) -> Result<Actor, ApiError> {
    if let (Some(token), Some(value)) =
        (&st.operator_token, headers.get(http::header::AUTHORIZATION))
    {
        let presented = value.to_str().ok().and_then(|v| v.strip_prefix("Bearer "));
        if presented.is_some_and(|p| bool::from(p.trim().as_bytes().ct_eq(token.as_bytes()))) {
            return Ok(Actor::Operator);
        }
    }
    let identity = &st.identity;
    identity.check_address(addr)?;
    let count = |r: &Refusal| {
        if let Refusal::Unauthorized(f) = r {
            identity.record_failure(addr, *f);
        }
    };
    let creds = credentials(headers, None, identity.rules()).inspect_err(count)?;
    if let Credentials::Session(secret) = &creds {
        check_csrf(method, headers, secret, identity.rules(), identity.pepper())?;
    }
    let principal = identity.authenticate(&creds).await.inspect_err(count)?;
    Ok(Actor::User(principal))
}

pub(super) fn ok<T: serde::Serialize>(status: StatusCode, data: T) -> Response {
    (status, Json(json!({"success": true, "data": data}))).into_response()
}

/// Parses a JSON body, answering 400 in the error shape when it does not fit.
pub(super) fn body<T: for<'de> Deserialize<'de>>(bytes: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(bytes)
        .map_err(|e| ApiError::BadRequest(format!("invalid request body: {e}")))
}

#[derive(Debug, Deserialize)]
struct ListQuery {
    owner: Option<String>,
    workspace: Option<String>,
}

async fn list(
    State(st): State<ControlState>,
    Caller(actor): Caller,
    Query(q): Query<ListQuery>,
) -> Result<Response, ApiError> {
    let keys = st
        .keys
        .list(&actor, q.owner.as_deref(), q.workspace.as_deref())
        .await?;
    Ok(ok(StatusCode::OK, keys))
}

async fn create(
    State(st): State<ControlState>,
    Caller(actor): Caller,
    raw: axum::body::Bytes,
) -> Result<Response, ApiError> {
    let req: CreateKey = body(&raw)?;
    Ok(ok(StatusCode::CREATED, st.keys.create(&actor, req).await?))
}

async fn show(
    State(st): State<ControlState>,
    Caller(actor): Caller,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    Ok(ok(StatusCode::OK, st.keys.show(&actor, &id).await?))
}

async fn update(
    State(st): State<ControlState>,
    Caller(actor): Caller,
    Path(id): Path<String>,
    raw: axum::body::Bytes,
) -> Result<Response, ApiError> {
    let req: UpdateKey = body(&raw)?;
    Ok(ok(StatusCode::OK, st.keys.update(&actor, &id, req).await?))
}

async fn revoke(
    State(st): State<ControlState>,
    Caller(actor): Caller,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    Ok(ok(StatusCode::OK, st.keys.revoke(&actor, &id).await?))
}

async fn rotate(
    State(st): State<ControlState>,
    Caller(actor): Caller,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    Ok(ok(StatusCode::CREATED, st.keys.rotate(&actor, &id).await?))
}

async fn usage(
    State(st): State<ControlState>,
    Caller(actor): Caller,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    Ok(ok(StatusCode::OK, st.keys.usage(&actor, &id).await?))
}
