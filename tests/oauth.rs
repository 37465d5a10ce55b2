//! "Grant access" for applications: OAuth 2.0 authorization code with PKCE through real
//! processes and a real browser (headless chromium). The test plays the application: it
//! registers, sends the browser to keygate, receives the code at its redirect URI, exchanges
//! it, uses and refreshes the tokens; and tries what an attacker would.

mod common;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use common::*;
use reqwest::StatusCode;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

const ADA: (&str, &str) = ("ada@example.com", "ada's long password");

/// A PKCE pair: (verifier, S256 challenge).
fn pkce() -> (String, String) {
    let verifier = URL_SAFE_NO_PAD.encode(uuid::Uuid::new_v4().as_bytes().repeat(2));
    let challenge = URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()));
    (verifier, challenge)
}

/// `/oauth/authorize?…` for `client_id`, returning to `redirect`.
fn authorize_url(
    kg: &Keygate,
    client_id: &str,
    redirect: &str,
    scope: &str,
    challenge: &str,
) -> String {
    let mut url = reqwest::Url::parse(&kg.control_url("/oauth/authorize")).unwrap();
    url.query_pairs_mut()
        .append_pair("response_type", "code")
        .append_pair("client_id", client_id)
        .append_pair("redirect_uri", redirect)
        .append_pair("scope", scope)
        .append_pair("state", "xyz-123")
        .append_pair("code_challenge", challenge)
        .append_pair("code_challenge_method", "S256");
    url.to_string()
}

/// The query parameters of the last request the application's redirect URI received.
async fn callback(app: &Recorder) -> std::collections::HashMap<String, String> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        // The browser also asks the application for its icon: only the callback counts.
        let calls: Vec<_> = app
            .requests()
            .into_iter()
            .filter(|s| s.target.starts_with("/callback"))
            .collect();
        if let Some(seen) = calls.last() {
            let url = reqwest::Url::parse(&format!("http://app{}", seen.target)).unwrap();
            return url.query_pairs().into_owned().collect();
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the application was never called back"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

async fn token(
    kg: &Keygate,
    form: &[(&str, &str)],
) -> (StatusCode, Value, reqwest::header::HeaderMap) {
    let r = reqwest::Client::new()
        .post(kg.control_url("/oauth/token"))
        .form(form)
        .send()
        .await
        .unwrap();
    let status = r.status();
    let headers = r.headers().clone();
    (status, r.json().await.unwrap_or(Value::Null), headers)
}

/// The workspace admin, signed in with a password.
async fn admin(kg: &Keygate) -> reqwest::Client {
    let login: Value = reqwest::Client::new()
        .post(kg.control_url("/v1/auth/login"))
        .json(&json!({"email": ADA.0, "password": ADA.1, "type": "access"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    bearer(login["data"]["accessToken"].as_str().unwrap())
}

/// Registers an application as the workspace admin.
async fn register(kg: &Keygate, name: &str, redirect: &str) -> String {
    let client = admin(kg)
        .await
        .post(kg.control_url("/v1/oauth/clients"))
        .json(&json!({"name": name, "redirectUris": [redirect]}))
        .expect(StatusCode::CREATED)
        .await;
    client["data"]["clientId"].as_str().unwrap().to_owned()
}

/// The application's side of a grant: its client, where its codes come back, what came.
struct App<'a> {
    kg: &'a Keygate,
    client_id: String,
    redirect: String,
    calls: &'a Recorder,
}

impl App<'_> {
    /// Sends the (signed-in) browser to ask for `scope` and lets the user allow it; returns
    /// the code that came back and the PKCE verifier the application kept.
    async fn allow(&self, browser: &Browser, scope: &str) -> (String, String) {
        let (verifier, challenge) = pkce();
        let before = callbacks(self.calls);
        browser
            .goto(&authorize_url(
                self.kg,
                &self.client_id,
                &self.redirect,
                scope,
                &challenge,
            ))
            .await;
        browser.click("#consent-approve:enabled").await;
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while callbacks(self.calls) == before {
            assert!(std::time::Instant::now() < deadline, "no callback");
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        let back = callback(self.calls).await;
        (back.get("code").expect("a code").clone(), verifier)
    }

    /// `grant_type=authorization_code` at the token endpoint.
    async fn exchange(
        &self,
        code: &str,
        verifier: &str,
    ) -> (StatusCode, Value, reqwest::header::HeaderMap) {
        token(
            self.kg,
            &[
                ("grant_type", "authorization_code"),
                ("code", code),
                ("redirect_uri", &self.redirect),
                ("client_id", &self.client_id),
                ("code_verifier", verifier),
            ],
        )
        .await
    }

    /// `grant_type=refresh_token` at the token endpoint, as application `client_id`.
    async fn refresh(&self, refresh: &str, client_id: &str) -> (StatusCode, Value) {
        let (status, body, _) = token(
            self.kg,
            &[
                ("grant_type", "refresh_token"),
                ("refresh_token", refresh),
                ("client_id", client_id),
            ],
        )
        .await;
        (status, body)
    }
}

/// How many times the application's redirect URI was called.
fn callbacks(app: &Recorder) -> usize {
    app.requests()
        .iter()
        .filter(|s| s.target.starts_with("/callback"))
        .count()
}

/// Status of a GET of the cat picture with `token`.
async fn read_cat(kg: &Keygate, token: &str) -> StatusCode {
    bearer(token)
        .get(kg.url("/v1/files/local/photos/cat.jpg"))
        .send()
        .await
        .unwrap()
        .status()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_application_gets_scoped_tokens_through_the_consent_page_and_loses_them_on_revoke() {
    if !browser_installed() {
        return;
    }
    let backend = Backend::start();
    let photo = backend.root().join("local/photos/cat.jpg");
    std::fs::create_dir_all(photo.parent().unwrap()).unwrap();
    std::fs::write(&photo, b"a cat").unwrap();
    let kg = Keygate::start(&[backend.addr], "");
    let calls = Recorder::start().await;
    let redirect = format!("http://127.0.0.1:{}/callback", calls.addr.port());
    let app = App {
        kg: &kg,
        client_id: register(&kg, "Photo printer", &redirect).await,
        redirect,
        calls: &calls,
    };

    // The application sends the user to keygate; the user signs in and sees what it asks.
    let browser = Browser::start("oauth").await;
    let (verifier, challenge) = pkce();
    browser
        .goto(&authorize_url(
            &kg,
            &app.client_id,
            &app.redirect,
            "files.read folders.read",
            &challenge,
        ))
        .await;
    browser.shown("#sign-in-form").await;
    browser.fill("#sign-in-email", ADA.0).await;
    browser.fill("#sign-in-password", ADA.1).await;
    browser.click("#sign-in-form button[type=submit]").await;
    browser.text_with("#consent-title", "Photo printer").await;
    let asked = browser
        .text_with("#consent-permissions", "files.read")
        .await;
    assert!(asked.contains("read files"), "{asked}");
    assert!(asked.contains("folders.read"), "{asked}");
    assert!(browser
        .text("#consent-where")
        .await
        .contains("every provider"));
    browser.screenshot("consent").await;
    browser.assert_quiet_console("the consent page").await;

    // Allow: the browser returns to the application with a code and the state.
    browser.click("#consent-approve:enabled").await;
    let back = callback(&calls).await;
    assert_eq!(back.get("state").map(String::as_str), Some("xyz-123"));
    assert!(!back.contains_key("error"), "{back:?}");
    let code = back.get("code").expect("a code").clone();

    // A wrong verifier gets no tokens, and spends the code (a code is tried once).
    let (wrong, _) = pkce();
    let (status, body, _) = app.exchange(&code, &wrong).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["error"], "invalid_grant", "{body}");
    let (status, _, _) = app.exchange(&code, &verifier).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);

    // A fresh approval, exchanged: tokens in the RFC's shape, never cached.
    let (code, verifier) = app.allow(&browser, "files.read folders.read").await;
    let (status, tokens, headers) = app.exchange(&code, &verifier).await;
    assert_eq!(status, StatusCode::OK, "{tokens}");
    assert_eq!(headers["cache-control"], "no-store");
    assert_eq!(tokens["token_type"], "Bearer");
    assert_eq!(tokens["expires_in"], 600);
    assert_eq!(tokens["scope"], "files.read folders.read");
    let access = tokens["access_token"].as_str().unwrap().to_owned();
    let refresh = tokens["refresh_token"].as_str().unwrap().to_owned();

    // The access token reads, within what was granted, and writes nothing.
    let r = bearer(&access)
        .get(kg.url("/v1/files/local/photos/cat.jpg"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.bytes().await.unwrap().as_ref(), b"a cat");
    bearer(&access)
        .put(kg.url("/v1/files/local/photos/dog.jpg"))
        .body("a dog")
        .expect(StatusCode::FORBIDDEN)
        .await;
    assert!(!backend.root().join("local/photos/dog.jpg").exists());

    // The same code again: refused, and what it was exchanged for is revoked.
    let (status, _, _) = app.exchange(&code, &verifier).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(read_cat(&kg, &access).await, StatusCode::UNAUTHORIZED);
    let (status, body) = app.refresh(&refresh, &app.client_id).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");

    // A clean grant: refreshed with rotation, only by its application, only here.
    let (code, verifier) = app.allow(&browser, "files.read").await;
    let (status, tokens, _) = app.exchange(&code, &verifier).await;
    assert_eq!(status, StatusCode::OK, "{tokens}");
    let (status, renewed) = app
        .refresh(tokens["refresh_token"].as_str().unwrap(), &app.client_id)
        .await;
    assert_eq!(status, StatusCode::OK, "{renewed}");
    assert_ne!(renewed["refresh_token"], tokens["refresh_token"]);
    assert_eq!(renewed["scope"], "files.read");
    let access = renewed["access_token"].as_str().unwrap().to_owned();
    assert_eq!(read_cat(&kg, &access).await, StatusCode::OK);
    reqwest::Client::new()
        .post(kg.control_url("/v1/auth/refresh"))
        .json(&json!({"refreshToken": renewed["refresh_token"]}))
        .expect(StatusCode::UNAUTHORIZED)
        .await;
    let other = register(&kg, "Other app", &app.redirect).await;
    let (status, _) = app
        .refresh(renewed["refresh_token"].as_str().unwrap(), &other)
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);

    // The user sees the application among their devices, and revokes it from the console.
    browser.goto(&kg.control_url("/console/#devices")).await;
    let row = browser
        .text_with("#tokens-table tbody", "Photo printer")
        .await;
    assert!(row.contains("application"), "{row}");
    let id = browser
        .run(
            "arguments[0]([...document.querySelectorAll('#tokens-table tbody tr')]\
             .filter(r => r.textContent.includes('Photo printer')).map(r => r.dataset.tokenId));",
        )
        .await;
    browser
        .click(&format!(
            "#tokens-table tr[data-token-id=\"{}\"] button.revoke",
            id[0].as_str().unwrap()
        ))
        .await;
    browser.confirm().await;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while browser
        .text("#tokens-table tbody")
        .await
        .contains("Photo printer")
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the grant is still listed"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(read_cat(&kg, &access).await, StatusCode::UNAUTHORIZED);
    browser.assert_quiet_console("the devices page").await;

    // A last grant, and the admin removes the application: its tokens stop at once.
    let (code, verifier) = app.allow(&browser, "files.read").await;
    let (status, tokens, _) = app.exchange(&code, &verifier).await;
    assert_eq!(status, StatusCode::OK, "{tokens}");
    let access = tokens["access_token"].as_str().unwrap();
    assert_eq!(read_cat(&kg, access).await, StatusCode::OK);
    admin(&kg)
        .await
        .delete(kg.control_url(&format!("/v1/oauth/clients/{}", app.client_id)))
        .expect(StatusCode::OK)
        .await;
    assert_eq!(read_cat(&kg, access).await, StatusCode::UNAUTHORIZED);
    let (status, _) = app
        .refresh(tokens["refresh_token"].as_str().unwrap(), &app.client_id)
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_that_break_the_rules_never_reach_the_application_with_a_code() {
    if !browser_installed() {
        return;
    }
    let backend = Backend::start();
    let kg = Keygate::start(&[backend.addr], "");
    let app = Recorder::start().await;
    let redirect = format!("http://127.0.0.1:{}/callback", app.addr.port());
    let client_id = register(&kg, "Photo printer", &redirect).await;
    let (_, challenge) = pkce();

    // An unknown application, or a redirect URI it did not register: an error page, and the
    // address named in the request never hears of it.
    for (client, to) in [
        ("kgc_unknown", redirect.clone()),
        (client_id.as_str(), format!("{redirect}/elsewhere")),
        (client_id.as_str(), "https://attacker.example/cb".to_owned()),
    ] {
        let r = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap()
            .get(authorize_url(&kg, client, &to, "files.read", &challenge))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::BAD_REQUEST, "{client} {to}");
        assert!(r.headers().get("location").is_none());
        assert!(r.headers()["content-security-policy"]
            .to_str()
            .unwrap()
            .contains("default-src 'none'"));
        assert!(r.text().await.unwrap().contains("cannot be completed"));
    }

    // The user denies: the application hears `access_denied`, with its state.
    let browser = Browser::start("oauth-refusals").await;
    browser
        .goto(&authorize_url(
            &kg,
            &client_id,
            &redirect,
            "files.read",
            &challenge,
        ))
        .await;
    browser.fill("#sign-in-email", ADA.0).await;
    browser.fill("#sign-in-password", ADA.1).await;
    browser.click("#sign-in-form button[type=submit]").await;
    browser.text_with("#consent-title", "Photo printer").await;
    browser.click("#consent-deny").await;
    let back = callback(&app).await;
    assert_eq!(back.get("error").map(String::as_str), Some("access_denied"));
    assert_eq!(back.get("state").map(String::as_str), Some("xyz-123"));
    assert!(!back.contains_key("code"));

    // No PKCE, or a permission that is not a scope: the application is told why, no code.
    let mut no_pkce = reqwest::Url::parse(&authorize_url(
        &kg,
        &client_id,
        &redirect,
        "files.read",
        &challenge,
    ))
    .unwrap();
    let kept: Vec<(String, String)> = no_pkce
        .query_pairs()
        .filter(|(k, _)| !k.starts_with("code_challenge"))
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect();
    no_pkce.query_pairs_mut().clear().extend_pairs(kept);
    for (url, error) in [
        (no_pkce.to_string(), "invalid_request"),
        (
            authorize_url(&kg, &client_id, &redirect, "files.everything", &challenge),
            "invalid_scope",
        ),
    ] {
        let before = callbacks(&app);
        browser.goto(&url).await;
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while callbacks(&app) == before {
            assert!(std::time::Instant::now() < deadline, "{error}: never told");
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        let back = callback(&app).await;
        assert_eq!(
            back.get("error").map(String::as_str),
            Some(error),
            "{back:?}"
        );
        assert!(!back.contains_key("code"));
    }

    // The consent is the user's: an approval without the session's CSRF token is refused.
    browser.goto(&kg.control_url("/console/")).await;
    browser.text_with("#who-name", ADA.0).await;
    let answer = browser
        .run(
            r#"const done = arguments[arguments.length - 1];
            fetch("/v1/oauth/authorize", {method: "POST", headers: {"Content-Type": "application/json"},
                body: JSON.stringify({request: {response_type: "code"}, approve: true})})
              .then(async r => done({status: r.status, body: await r.json()}));"#,
        )
        .await;
    assert_eq!(answer["status"], 403, "{answer}");
    let _ = browser.console().await;

    // Only a workspace admin registers applications; an API key never does.
    kg.client()
        .post(kg.control_url("/v1/oauth/clients"))
        .json(&json!({"name": "sneaky", "redirectUris": [redirect]}))
        .expect(StatusCode::FORBIDDEN)
        .await;
    // Consent is given in the browser: a bearer login cannot approve for the user.
    let admin = admin(&kg).await;
    admin
        .post(kg.control_url("/v1/oauth/authorize"))
        .json(
            &json!({"request": {"response_type": "code", "client_id": client_id,
            "redirect_uri": redirect, "scope": "files.read", "code_challenge": challenge,
            "code_challenge_method": "S256"}, "approve": true}),
        )
        .expect(StatusCode::FORBIDDEN)
        .await;
    // Bad redirect URIs are refused at registration.
    for uri in [
        "http://localhost:8000/cb",
        "http://app.example.com/cb",
        "https://app.example.com/cb#frag",
        "javascript:alert(1)",
    ] {
        admin
            .post(kg.control_url("/v1/oauth/clients"))
            .json(&json!({"name": "bad", "redirectUris": [uri]}))
            .expect(StatusCode::BAD_REQUEST)
            .await;
    }
    // Removing the application: its client_id no longer gets anything.
    admin
        .delete(kg.control_url(&format!("/v1/oauth/clients/{client_id}")))
        .expect(StatusCode::OK)
        .await;
    let listed = admin
        .get(kg.control_url("/v1/oauth/clients"))
        .expect(StatusCode::OK)
        .await;
    assert_eq!(listed["data"], json!([]));
    let (status, body, _) = token(
        &kg,
        &[
            ("grant_type", "authorization_code"),
            ("code", "kga_x"),
            ("client_id", &client_id),
        ],
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(body["error"], "invalid_client");
}
