//! Logins and tokens on the control plane: `/v1/auth/*`, `/v1/me` and the JWKS document.
//! The rules live in `manage/logins.rs`.

use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::json;

use super::caller::{Caller, ClientAddr};
use super::respond::{ok, ok_secret, Body};
use super::ControlState;
use crate::clock::{format_time, now_millis};
use crate::identity::credentials::{credentials, csrf_refusal, origin_allowed, Credentials};
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
async fn login(
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

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RefreshRequest {
    refresh_token: String,
}

async fn refresh(
    State(st): State<ControlState>,
    ClientAddr(addr): ClientAddr,
    Body(req): Body<RefreshRequest>,
) -> Result<Response, ManageError> {
    let done = st.auth.refresh(&req.refresh_token, addr).await?;
    Ok(issued(&st, StatusCode::OK, done))
}

async fn logout(
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
    let mut response = ok(StatusCode::OK, json!({"loggedOut": true}));
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

async fn list(
    State(st): State<ControlState>,
    Caller(actor): Caller,
) -> Result<Response, ManageError> {
    Ok(ok(StatusCode::OK, st.auth.list(&actor).await?))
}

async fn mint(
    State(st): State<ControlState>,
    Caller(actor): Caller,
    Body(req): Body<MintRequest>,
) -> Result<Response, ManageError> {
    let minted = st.auth.mint(&actor, req).await?;
    Ok(ok_secret(StatusCode::CREATED, minted))
}

async fn revoke(
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
async fn session(
    State(st): State<ControlState>,
    headers: HeaderMap,
    caller: Result<Caller, ManageError>,
) -> Result<Response, ManageError> {
    let Ok(Credentials::Session(secret)) = credentials(&headers, None, st.identity.rules(), false)
    else {
        return Ok(ok(StatusCode::OK, json!({"signedIn": false})));
    };
    match caller {
        Ok(Caller(Actor::User(p))) => Ok(ok_secret(
            StatusCode::OK,
            json!({
                "signedIn": true,
                "csrfToken": st.auth.csrf_token(&secret),
                "expiresAt": p.expires_at.map(format_time),
            }),
        )),
        Ok(Caller(Actor::Operator)) => Ok(ok(StatusCode::OK, json!({"signedIn": false}))),
        Err(ManageError::Refused(Refusal::Unauthorized(reason))) => Ok(ok(
            StatusCode::OK,
            json!({"signedIn": false, "reason": reason.as_str()}),
        )),
        Err(e) => Err(e),
    }
}

/// Who is calling: the user, the workspace and role the credential acts in, the credential.
async fn me(
    State(st): State<ControlState>,
    Caller(actor): Caller,
) -> Result<Response, ManageError> {
    let Actor::User(p) = &actor else {
        return Ok(ok(
            StatusCode::OK,
            json!({"operator": true, "credential": {"type": "operator"}}),
        ));
    };
    let memberships = st
        .store
        .memberships(&p.user_id)
        .await
        .map_err(ManageError::from)?;
    let kind = p.kind.as_str();
    let expires_in = p.expires_at.map(|e| (e - now_millis()).max(0) / 1000);
    Ok(ok(
        StatusCode::OK,
        json!({
            "user": {"id": p.user_id, "email": p.user_email},
            "workspace": p.workspace,
            "role": p.role.map(|r| r.as_str()),
            "credential": {
                "type": kind,
                "id": p.key_id,
                "scopes": p.scopes,
                "providers": p.grants,
                "expiresAt": p.expires_at.map(format_time),
                "expiresIn": expires_in,
            },
            "memberships": memberships.iter().map(|(_, name, role)| json!({"workspace": name, "role": role.as_str()})).collect::<Vec<_>>(),
        }),
    ))
}

async fn jwks(State(st): State<ControlState>) -> Response {
    (
        [
            (header::CONTENT_TYPE, "application/jwk-set+json"),
            (header::CACHE_CONTROL, "public, max-age=300"),
        ],
        Json(st.auth.tokens.jwks()),
    )
        .into_response()
}
