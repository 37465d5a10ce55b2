//! Logins and tokens on the control plane: `/v1/auth/*`, `/v1/me` and the JWKS document.
//! The rules live in `manage/logins.rs`.

use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use serde::Deserialize;

use super::caller::{Caller, ClientAddr};
use super::openapi::{Failure, Refused, Success};
use super::respond::{ok, ok_secret, Body};
use super::ControlState;
use crate::clock::{format_time, now_millis};
use crate::identity::credentials::{credentials, csrf_refusal, origin_allowed, Credentials};
use crate::manage::logins::{Minted, TokenView};
use crate::manage::{Actor, Issued, LoginRequest, ManageError, MintRequest};
use crate::refusal::Refusal;

pub fn routes() -> Router<ControlState> {
    Router::new()
        .route("/v1/auth/login", post(login))
        .route("/v1/auth/refresh", post(refresh))
        .route("/v1/auth/logout", post(logout))
        .route("/v1/auth/session", get(session))
        .route("/v1/auth/tokens", get(list).post(mint))
        .route("/v1/auth/tokens/{id}", delete(revoke))
        .route("/v1/me", get(me))
        .route("/.well-known/jwks.json", get(jwks))
}

/// The `Set-Cookie` of a session: the browser sends it back only over HTTPS, never lets a
/// script read it, and never attaches it to a request another site starts.
fn session_cookie(name: &str, value: &str, max_age_secs: u64) -> Option<HeaderValue> {
    HeaderValue::from_str(&format!(
        "{name}={value}; Path=/; Max-Age={max_age_secs}; HttpOnly; Secure; SameSite=Strict"
    ))
    .ok()
}

fn issued(st: &ControlState, status: StatusCode, issued: Issued) -> Response {
    let cookie = issued.session_cookie.as_ref().and_then(|c| {
        session_cookie(
            &st.auth.tokens.settings.session_cookie,
            &c.secret,
            c.max_age.as_secs(),
        )
    });
    let mut response = ok_secret(status, &issued);
    if let Some(cookie) = cookie {
        response.headers_mut().insert(header::SET_COOKIE, cookie);
    }
    response
}

/// A login from a page of another site (login CSRF: signing the victim's browser into the
/// attacker's account) is refused: a browser always names the page's origin on a cross-site
/// POST, and it must be keygate's own or an allowed one. Clients that are not browsers send no
/// `Origin` and pass; the JSON content type the body needs cannot be sent by a plain form.
#[utoipa::path(post, path = "/v1/auth/login", operation_id = "login", tag = "logins", security(()), request_body = LoginRequest,
    responses((status = 200, description = "Signed in: the token(s) shown this once; a session also sets its cookie", body = Success<Issued>),
        (status = 401, description = "Wrong email or password (the same answer for both)", body = Failure),
        (status = 429, description = "Too many failures for this account or address (`Retry-After`)", body = Failure),
        (status = 403, description = "Started by a page of another site (`restriction: csrf`)", body = Failure),
        (status = 400, description = "Bad input", body = Failure)))]
pub(super) async fn login(
    State(st): State<ControlState>,
    ClientAddr(addr): ClientAddr,
    headers: HeaderMap,
    Body(req): Body<LoginRequest>,
) -> Result<Response, ManageError> {
    if !origin_allowed(&headers, st.identity.rules(), true) {
        return Err(csrf_refusal().into());
    }
    let done = st.auth.login(req, addr).await?;
    Ok(issued(&st, StatusCode::OK, done))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(super) struct RefreshRequest {
    refresh_token: String,
}

#[utoipa::path(post, path = "/v1/auth/refresh", operation_id = "refresh", tag = "logins", security(()), request_body = RefreshRequest,
    responses((status = 200, description = "A new access token and a new refresh token; the one sent is spent", body = Success<Issued>),
        (status = 401, description = "Unknown, expired or spent (a spent one revokes the whole login)", body = Failure),
        (status = 400, description = "Bad input", body = Failure)))]
pub(super) async fn refresh(
    State(st): State<ControlState>,
    ClientAddr(addr): ClientAddr,
    Body(req): Body<RefreshRequest>,
) -> Result<Response, ManageError> {
    let done = st.auth.refresh(&req.refresh_token, addr, None).await?;
    Ok(issued(&st, StatusCode::OK, done))
}

#[utoipa::path(post, path = "/v1/auth/logout", operation_id = "logout", tag = "logins",
    responses((status = 200, description = "The login is ended; a session's cookie is cleared", body = Success<LoggedOut>), Refused))]
pub(super) async fn logout(
    State(st): State<ControlState>,
    Caller(actor): Caller,
    headers: HeaderMap,
) -> Result<Response, ManageError> {
    let Actor::User(p) = &actor else {
        return Err(ManageError::BadRequest(
            "the operator token is not a login".to_owned(),
        ));
    };
    st.auth.logout(p).await?;
    let mut response = ok(StatusCode::OK, LoggedOut { logged_out: true });
    let name = &st.auth.tokens.settings.session_cookie;
    let sent_cookie = headers
        .get_all(header::COOKIE)
        .iter()
        .any(|v| v.to_str().is_ok_and(|v| v.contains(name.as_str())));
    if sent_cookie {
        if let Some(expired) = session_cookie(name, "", 0) {
            response.headers_mut().insert(header::SET_COOKIE, expired);
        }
    }
    Ok(response)
}

#[utoipa::path(get, path = "/v1/auth/tokens", operation_id = "listTokens", tag = "logins",
    responses((status = 200, description = "The caller's signed-in devices, sessions and tokens, never a secret", body = Success<Vec<TokenView>>), Refused))]
pub(super) async fn list(
    State(st): State<ControlState>,
    Caller(actor): Caller,
) -> Result<Response, ManageError> {
    Ok(ok(StatusCode::OK, st.auth.list(&actor).await?))
}

#[utoipa::path(post, path = "/v1/auth/tokens", operation_id = "mintToken", tag = "logins", request_body = MintRequest,
    responses((status = 201, description = "The scoped token, shown this once (`no-store`)", body = Success<Minted>), Refused))]
pub(super) async fn mint(
    State(st): State<ControlState>,
    Caller(actor): Caller,
    Body(req): Body<MintRequest>,
) -> Result<Response, ManageError> {
    let minted = st.auth.mint(&actor, req).await?;
    Ok(ok_secret(StatusCode::CREATED, minted))
}

#[utoipa::path(delete, path = "/v1/auth/tokens/{id}", operation_id = "revokeToken", tag = "logins",
    params(("id" = String, Path, description = "The token's id")),
    responses((status = 200, description = "The token, revoked with the rest of its login", body = Success<TokenView>), Refused))]
pub(super) async fn revoke(
    State(st): State<ControlState>,
    Caller(actor): Caller,
    Path(id): Path<String>,
) -> Result<Response, ManageError> {
    Ok(ok(StatusCode::OK, st.auth.revoke(&actor, &id).await?))
}

/// Whether the browser's session cookie still signs it in, and then the session's
/// `csrfToken` again: a page loaded after the login (the console) can write with it, keeping
/// it in memory only. Always 200 when the answer is "no": a page asks this before it knows,
/// and a missing or ended session is not an error. A cookie that does not check out counts
/// against the client's address like any failed authentication. Other sites' pages never
/// read this answer: the cookie is `SameSite=Strict` and the control plane allows no
/// cross-origin reads.
#[utoipa::path(get, path = "/v1/auth/session", operation_id = "session", tag = "logins", security(("session" = []), ()),
    responses((status = 200, description = "Whether the session cookie still signs this browser in, and its CSRF token", body = Success<SessionState>),
        (status = 429, description = "This address failed too often", body = Failure)))]
pub(super) async fn session(
    State(st): State<ControlState>,
    headers: HeaderMap,
    caller: Result<Caller, ManageError>,
) -> Result<Response, ManageError> {
    let signed_out = |reason: Option<&'static str>| SessionState {
        signed_in: false,
        csrf_token: None,
        expires_at: None,
        reason,
    };
    let Ok(Credentials::Session(secret)) = credentials(&headers, None, st.identity.rules(), false)
    else {
        return Ok(ok(StatusCode::OK, signed_out(None)));
    };
    match caller {
        Ok(Caller(Actor::User(p))) => Ok(ok_secret(
            StatusCode::OK,
            SessionState {
                signed_in: true,
                csrf_token: Some(st.auth.csrf_token(&secret)),
                expires_at: p.expires_at.map(format_time),
                reason: None,
            },
        )),
        Ok(Caller(Actor::Operator)) => Ok(ok(StatusCode::OK, signed_out(None))),
        Err(ManageError::Refused(Refusal::Unauthorized(reason))) => {
            Ok(ok(StatusCode::OK, signed_out(Some(reason.as_str()))))
        }
        Err(e) => Err(e),
    }
}

/// `GET /v1/auth/session`.
#[derive(serde::Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct SessionState {
    pub signed_in: bool,
    /// The session's CSRF token (signed in only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub csrf_token: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<String>,
    /// Why a cookie that was sent no longer signs in (`revoked`, `expired`, `unknown`, …).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<&'static str>,
}

/// `POST /v1/auth/logout`.
#[derive(serde::Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct LoggedOut {
    pub logged_out: bool,
}

/// `GET /v1/me`: a user through any credential, or the operator.
#[derive(serde::Serialize, utoipa::ToSchema)]
#[serde(untagged)]
pub enum Me {
    User(Box<UserMe>),
    Operator(OperatorMe),
}

#[derive(serde::Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct UserMe {
    pub user: MeUser,
    /// The workspace the credential acts in.
    pub workspace: String,
    pub role: Option<&'static str>,
    pub credential: MeCredential,
    pub memberships: Vec<Membership>,
}

#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct MeUser {
    pub id: String,
    pub email: String,
}

#[derive(serde::Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct MeCredential {
    /// `apiKey`, `scopedToken` or `login`.
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub id: String,
    pub scopes: Vec<String>,
    pub providers: Option<Vec<crate::model::Grant>>,
    pub expires_at: Option<String>,
    /// Seconds left.
    pub expires_in: Option<i64>,
}

#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct Membership {
    pub workspace: String,
    pub role: &'static str,
}

#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct OperatorMe {
    /// Always `true`.
    pub operator: bool,
    pub credential: OperatorCredential,
}

#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct OperatorCredential {
    /// Always `operator`.
    #[serde(rename = "type")]
    pub kind: &'static str,
}

/// Who is calling: the user, the workspace and role the credential acts in, the credential.
#[utoipa::path(get, path = "/v1/me", operation_id = "me", tag = "logins",
    responses((status = 200, description = "Who is calling", body = Success<Me>), Refused))]
pub(super) async fn me(
    State(st): State<ControlState>,
    Caller(actor): Caller,
) -> Result<Response, ManageError> {
    let Actor::User(p) = &actor else {
        return Ok(ok(
            StatusCode::OK,
            Me::Operator(OperatorMe {
                operator: true,
                credential: OperatorCredential { kind: "operator" },
            }),
        ));
    };
    let memberships = st
        .store
        .memberships(&p.user_id)
        .await
        .map_err(ManageError::from)?;
    Ok(ok(
        StatusCode::OK,
        Me::User(Box::new(UserMe {
            user: MeUser {
                id: p.user_id.clone(),
                email: p.user_email.clone(),
            },
            workspace: p.workspace.clone(),
            role: p.role.map(|r| r.as_str()),
            credential: MeCredential {
                kind: p.kind.as_str(),
                id: p.key_id.clone(),
                scopes: p.scopes.clone(),
                providers: p.grants.clone(),
                expires_at: p.expires_at.map(format_time),
                expires_in: p.expires_at.map(|e| (e - now_millis()).max(0) / 1000),
            },
            memberships: memberships
                .iter()
                .map(|(_, name, role)| Membership {
                    workspace: name.clone(),
                    role: role.as_str(),
                })
                .collect(),
        })),
    ))
}

#[utoipa::path(get, path = "/.well-known/jwks.json", operation_id = "jwks", tag = "logins", security(()),
    responses((status = 200, description = "The public keys keygate's JWTs verify with", content_type = "application/jwk-set+json", body = Object)))]
pub(super) async fn jwks(State(st): State<ControlState>) -> Response {
    (
        [
            (header::CONTENT_TYPE, "application/jwk-set+json"),
            (header::CACHE_CONTROL, "public, max-age=300"),
        ],
        Json(st.auth.tokens.jwks()),
    )
        .into_response()
}
