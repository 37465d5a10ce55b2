//! OAuth 2.0 on the control plane (the rules are in `manage/oauth.rs`):
//!
//! - `GET /oauth/authorize`: where an application sends its user. A request that names no
//!   registered application, or a redirect URI it did not register, gets an error page and is
//!   never redirected; any other request gets the console, which signs the user in and shows
//!   the consent page.
//! - `GET`/`POST /v1/oauth/authorize`: what the consent page reads, and the user's decision.
//! - `POST /oauth/token`: the application's exchange (form-encoded, RFC 6749 §4.1.3 and §6);
//!   answers and errors in the RFC's shape, not keygate's envelope.
//! - `/v1/oauth/clients`: the workspace admin's registered applications.

use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use serde_json::json;

use super::caller::{Caller, ClientAddr};
use super::openapi::{Failure, Refused, Success};
use super::respond::{ok, Body, MAX_BODY};
use super::ControlState;
use crate::identity::credentials::{credentials, Credentials};
use crate::manage::oauth::{
    AuthorizeRequest, Checked, ClientView, ConsentView, Decision, RedirectView, RegisterClient,
    TokenAnswer, TokenError, TokenRequest, Unsafe,
};
use crate::manage::ManageError;

pub fn routes() -> Router<ControlState> {
    Router::new()
        .route("/oauth/authorize", get(authorize_page))
        .route("/v1/oauth/authorize", get(consent).post(decide))
        .route(
            "/oauth/token",
            post(token).layer(DefaultBodyLimit::max(MAX_BODY)),
        )
        .route("/v1/oauth/clients", get(clients).post(register))
        .route("/v1/oauth/clients/{id}", delete(remove))
}

/// Only a browser session answers a consent (its writes carry the CSRF proof the request path
/// checked): not a bearer token that happens to act for the user.
fn require_session(st: &ControlState, headers: &HeaderMap) -> Result<(), ManageError> {
    match credentials(headers, None, st.identity.rules(), false) {
        Ok(Credentials::Session(_)) => Ok(()),
        _ => Err(ManageError::Forbidden(
            "access is granted by a signed-in user in the browser (a session), not with a token"
                .to_owned(),
        )),
    }
}

/// The refusal of a request that cannot go back to the application.
fn unsafe_request(u: Unsafe) -> ManageError {
    ManageError::BadRequest(format!("{}: nothing was sent back to the application", u.0))
}

#[utoipa::path(get, path = "/oauth/authorize", operation_id = "authorizePage", tag = "oauth",
    security(()), params(AuthorizeRequest),
    responses((status = 200, description = "The console, which signs the user in and asks for consent", content_type = "text/html", body = String),
        (status = 400, description = "No registered application, or a redirect URI it did not register: an error page, never a redirect", content_type = "text/html", body = String)))]
pub(super) async fn authorize_page(
    State(st): State<ControlState>,
    Query(req): Query<AuthorizeRequest>,
) -> Response {
    match st.auth.check_client(&req).await {
        Ok(_) => super::console::page(),
        Err(u) => super::console::error_page(
            StatusCode::BAD_REQUEST,
            "This application's request cannot be completed",
            &u.0,
        ),
    }
}

#[utoipa::path(get, path = "/v1/oauth/authorize", operation_id = "consent", tag = "oauth",
    params(AuthorizeRequest),
    responses((status = 200, description = "What the user is asked to approve", body = Success<ConsentView>),
        (status = 400, description = "An invalid request: `details.redirectTo` is where the application is told, when it can be", body = Failure), Refused))]
pub(super) async fn consent(
    State(st): State<ControlState>,
    Caller(actor): Caller,
    headers: HeaderMap,
    Query(req): Query<AuthorizeRequest>,
) -> Result<Response, ManageError> {
    require_session(&st, &headers)?;
    match st
        .auth
        .check_authorization(&actor, &req)
        .await
        .map_err(unsafe_request)?
    {
        Checked::Valid(client, scopes, grants) => Ok(ok(
            StatusCode::OK,
            st.auth.consent(&actor, &client, &scopes, grants),
        )),
        Checked::Refused(r) => Err(ManageError::InvalidRequest {
            message: "the application's request is not valid".to_owned(),
            details: json!({ "redirectTo": r.redirect_to }),
        }),
    }
}

#[utoipa::path(post, path = "/v1/oauth/authorize", operation_id = "decide", tag = "oauth",
    request_body = Decision,
    responses((status = 200, description = "Where the browser goes next: the application's redirect URI with a one-time `code` and the `state`, or with `error`", body = Success<RedirectView>), Refused))]
pub(super) async fn decide(
    State(st): State<ControlState>,
    Caller(actor): Caller,
    headers: HeaderMap,
    Body(d): Body<Decision>,
) -> Result<Response, ManageError> {
    require_session(&st, &headers)?;
    let checked = st
        .auth
        .check_authorization(&actor, &d.request)
        .await
        .map_err(unsafe_request)?;
    let answer = match checked {
        Checked::Valid(client, scopes, grants) => {
            st.auth
                .decide(&actor, &d.request, &client, (scopes, grants), d.approve)
                .await?
        }
        Checked::Refused(r) => r,
    };
    let mut response = ok(StatusCode::OK, answer);
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(response)
}

#[utoipa::path(post, path = "/oauth/token", operation_id = "token", tag = "oauth", security(()),
    request_body(content = TokenRequest, content_type = "application/x-www-form-urlencoded"),
    responses((status = 200, description = "A 10-minute access token (a scoped token) and a refresh token, which rotates", body = TokenAnswer),
        (status = 400, description = "`invalid_request`, `invalid_grant`, `unsupported_grant_type`", body = TokenError),
        (status = 401, description = "`invalid_client`: no such application", body = TokenError)))]
pub(super) async fn token(
    State(st): State<ControlState>,
    ClientAddr(addr): ClientAddr,
    form: Result<axum::Form<TokenRequest>, axum::extract::rejection::FormRejection>,
) -> Response {
    let answer = match form {
        Ok(axum::Form(req)) => st.auth.token(req, addr).await,
        Err(_) => Err(TokenError {
            error: "invalid_request",
            error_description: "send the parameters as application/x-www-form-urlencoded"
                .to_owned(),
        }),
    };
    let mut response = match answer {
        Ok(tokens) => (StatusCode::OK, Json(tokens)).into_response(),
        Err(e) if e.error == "invalid_client" => {
            (StatusCode::UNAUTHORIZED, Json(e)).into_response()
        }
        Err(e) if e.error == "temporarily_unavailable" => {
            (StatusCode::SERVICE_UNAVAILABLE, Json(e)).into_response()
        }
        Err(e) if e.error == "slow_down" => {
            (StatusCode::TOO_MANY_REQUESTS, Json(e)).into_response()
        }
        Err(e) => (StatusCode::BAD_REQUEST, Json(e)).into_response(),
    };
    let headers = response.headers_mut();
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
    response
}

#[utoipa::path(get, path = "/v1/oauth/clients", operation_id = "listClients", tag = "oauth",
    responses((status = 200, description = "The workspace's applications", body = Success<Vec<ClientView>>), Refused))]
pub(super) async fn clients(
    State(st): State<ControlState>,
    Caller(actor): Caller,
) -> Result<Response, ManageError> {
    Ok(ok(StatusCode::OK, st.auth.clients(&actor).await?))
}

#[utoipa::path(post, path = "/v1/oauth/clients", operation_id = "registerClient", tag = "oauth",
    request_body = RegisterClient,
    responses((status = 201, description = "The application, with its `clientId`", body = Success<ClientView>),
        (status = 409, description = "The workspace has the most applications allowed", body = Failure), Refused))]
pub(super) async fn register(
    State(st): State<ControlState>,
    Caller(actor): Caller,
    Body(req): Body<RegisterClient>,
) -> Result<Response, ManageError> {
    Ok(ok(
        StatusCode::CREATED,
        st.auth.register_client(&actor, req).await?,
    ))
}

#[utoipa::path(delete, path = "/v1/oauth/clients/{id}", operation_id = "removeClient", tag = "oauth",
    params(("id" = String, Path, description = "The application's client_id")),
    responses((status = 200, description = "The application, removed; every token it held is revoked", body = Success<ClientView>), Refused))]
pub(super) async fn remove(
    State(st): State<ControlState>,
    Caller(actor): Caller,
    Path(id): Path<String>,
) -> Result<Response, ManageError> {
    Ok(ok(
        StatusCode::OK,
        st.auth.remove_client(&actor, &id).await?,
    ))
}
