//! The web console under `/console/`: one page, its script and its style sheet, compiled into
//! the binary from `console/`. The page holds no data: its script signs in with a browser
//! session and then speaks only the public API (`/v1/*`), so it can do nothing its user could
//! not do with curl, and the management policies decide every answer.
//!
//! Every answer carries a strict Content-Security-Policy (scripts and styles from here only,
//! no inline script, no framing, requests to this origin only) and is never cached: the page
//! shows keys once.

use axum::http::{header, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use axum::Router;

use super::ControlState;

const PAGE: &str = include_str!("../../console/index.html");
const SCRIPT: &str = include_str!("../../console/console.js");
const STYLE: &str = include_str!("../../console/console.css");

/// What the console's pages may load and do: everything from this origin, nothing inline,
/// nothing framed, no forms posted elsewhere, no base URL changes.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; \
     style-src 'self'; img-src 'self' data:; connect-src 'self'; form-action 'self'; \
     frame-ancestors 'none'; base-uri 'none'";

pub fn routes() -> Router<ControlState> {
    Router::new()
        .route(
            "/console",
            get(|| async { Redirect::permanent("/console/") }),
        )
        .route("/console/", get(|| async { page() }))
        .route(
            "/console/console.js",
            get(|| async { asset(SCRIPT, "text/javascript; charset=utf-8") }),
        )
        .route(
            "/console/console.css",
            get(|| async { asset(STYLE, "text/css; charset=utf-8") }),
        )
}

/// The console's page (also the consent page of `/oauth/authorize`).
pub(super) fn page() -> Response {
    asset(PAGE, "text/html; charset=utf-8")
}

/// A page that says what went wrong, under the console's headers: `message` is set as text.
pub(super) fn error_page(status: StatusCode, title: &str, message: &str) -> Response {
    let escape = |s: &str| {
        s.replace('&', "&amp;")
            .replace('<', "&lt;")
            .replace('>', "&gt;")
            .replace('"', "&quot;")
    };
    let body = format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>{title}</title><link rel=\"icon\" href=\"data:,\">\
         <link rel=\"stylesheet\" href=\"/console/console.css\"></head><body><header><h1>keygate</h1>\
         </header><main><h2>{title}</h2><p id=\"problem\">{message}</p></main></body></html>\n",
        title = escape(title),
        message = escape(message),
    );
    let mut response = asset_owned(body, "text/html; charset=utf-8");
    *response.status_mut() = status;
    response
}

fn asset(body: &'static str, content_type: &'static str) -> Response {
    asset_owned(body.to_owned(), content_type)
}

fn asset_owned(body: String, content_type: &'static str) -> Response {
    let mut response = (StatusCode::OK, body).into_response();
    let headers = response.headers_mut();
    let fixed = |v: &'static str| HeaderValue::from_static(v);
    headers.insert(header::CONTENT_TYPE, fixed(content_type));
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        fixed(CONTENT_SECURITY_POLICY),
    );
    headers.insert(header::X_FRAME_OPTIONS, fixed("DENY"));
    headers.insert(header::X_CONTENT_TYPE_OPTIONS, fixed("nosniff"));
    headers.insert(header::REFERRER_POLICY, fixed("no-referrer"));
    headers.insert(header::CACHE_CONTROL, fixed("no-store"));
    headers.insert(
        HeaderName::from_static("cross-origin-opener-policy"),
        fixed("same-origin"),
    );
    response
}
