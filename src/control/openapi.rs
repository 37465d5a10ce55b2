//! The control plane described: an OpenAPI 3.1 document (`GET /v1/openapi.json`) generated
//! from the handlers' own annotations and types (utoipa), never written by hand. The test
//! suite checks it is valid and that real answers match it (`tests/openapi.rs`).

use std::sync::OnceLock;

use axum::http::header;
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::openapi::security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi, ToSchema};

/// `{"success": true, "data": …}`: every answer that is not an error.
#[derive(Serialize, ToSchema)]
pub struct Success<T> {
    /// Always `true`.
    pub success: bool,
    pub data: T,
}

/// `{"success": false, "error": …}`: every refusal, on both planes.
#[derive(Serialize, ToSchema)]
pub struct Failure {
    /// Always `false`.
    pub success: bool,
    pub error: ErrorDetail,
}

#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ErrorDetail {
    /// `BAD_REQUEST`, `UNAUTHORIZED`, `FORBIDDEN`, `NOT_FOUND`, `CONFLICT`,
    /// `RATE_LIMIT_EXCEEDED`, `SERVICE_UNAVAILABLE`, …
    pub code: String,
    pub message: String,
    pub request_id: String,
    /// What the refusal depends on: `reason` (401), `required` and `granted` or
    /// `restriction` (403), `retryAfter` (429), …
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub details: Option<serde_json::Value>,
}

/// The refusals any authenticated endpoint may answer.
#[derive(utoipa::IntoResponses)]
#[allow(dead_code)] // a description for the document: never built
pub enum Refused {
    /// Bad input (the message names the field), or an ambiguous request.
    #[response(status = 400)]
    BadRequest(Failure),
    /// No credential, or one that is malformed, unknown, expired or revoked
    /// (`details.reason`).
    #[response(status = 401)]
    Unauthorized(Failure),
    /// The policies deny it (`details.required`, `granted`, `restriction`), or a session
    /// write without its CSRF proof (`restriction: csrf`).
    #[response(status = 403)]
    Forbidden(Failure),
    /// Not there, or not visible to this caller (its existence is not revealed).
    #[response(status = 404)]
    NotFound(Failure),
    /// This client address failed too often (`Retry-After`).
    #[response(status = 429)]
    TooManyRequests(Failure),
    /// keygate cannot decide now (its database is unreachable): never an allow.
    #[response(status = 503)]
    Unavailable(Failure),
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "keygate control plane",
        description = "Keys, logins and tokens, policy status and the operator's endpoints. \
            Every answer is `{\"success\": true, \"data\": …}` or the error shape \
            `{\"success\": false, \"error\": {\"code\", \"message\", \"requestId\", \"details\"}}`. \
            A browser session (the cookie) must send `X-CSRF-Token` and its own `Origin` on \
            every request that is not GET, HEAD or OPTIONS."
    ),
    paths(
        super::healthz,
        super::readyz,
        super::metrics,
        super::keys::list,
        super::keys::create,
        super::keys::show,
        super::keys::update,
        super::keys::revoke,
        super::keys::rotate,
        super::keys::usage,
        super::keys::scopes,
        super::keys::providers,
        super::logins::login,
        super::logins::refresh,
        super::logins::logout,
        super::logins::session,
        super::logins::list,
        super::logins::mint,
        super::logins::revoke,
        super::logins::me,
        super::logins::jwks,
        super::policy::status,
        super::policy::reload,
        super::policy::check,
        super::tls::status,
        super::tls::reload,
        super::cluster::status,
        super::oauth::authorize_page,
        super::oauth::consent,
        super::oauth::decide,
        super::oauth::token,
        super::oauth::clients,
        super::oauth::register,
        super::oauth::remove,
        document,
    ),
    modifiers(&Schemes),
    security(("bearer" = []), ("apiKey" = []), ("session" = [])),
    tags(
        (name = "keys", description = "API keys (docs/api-keys.md)"),
        (name = "logins", description = "Logins, sessions and tokens (docs/logins.md)"),
        (name = "operating", description = "Policies, certificates and instances"),
        (name = "oauth", description = "Applications granted access by their users: OAuth 2.0 authorization code with PKCE (docs/logins.md)"),
        (name = "health", description = "Liveness, readiness, metrics and this document"),
    )
)]
struct ApiDoc;

/// The credentials the control plane takes.
struct Schemes;

impl Modify for Schemes {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(
                        "An API key, a keygate JWT (mobile, access or scoped token), an \
                         external issuer's token, or the operator token",
                    ))
                    .build(),
            ),
        );
        components.add_security_scheme(
            "apiKey",
            SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::with_description(
                "X-API-Key",
                "An API key",
            ))),
        );
        components.add_security_scheme(
            "session",
            SecurityScheme::ApiKey(ApiKey::Cookie(ApiKeyValue::with_description(
                "__Host-keygate_session",
                "A browser session (POST /v1/auth/login with type session); writes also send \
                 X-CSRF-Token",
            ))),
        );
    }
}

/// The document, built once.
pub fn document_json() -> &'static str {
    static DOC: OnceLock<String> = OnceLock::new();
    DOC.get_or_init(|| {
        ApiDoc::openapi()
            .to_pretty_json()
            .expect("the OpenAPI document serializes")
    })
}

/// This document.
#[utoipa::path(get, path = "/v1/openapi.json", operation_id = "openapi", tag = "health", security(()),
    responses((status = 200, description = "The OpenAPI 3.1 document of the control plane",
        content_type = "application/json", body = Object)))]
pub async fn document() -> Response {
    (
        [(header::CONTENT_TYPE, "application/json")],
        document_json(),
    )
        .into_response()
}
