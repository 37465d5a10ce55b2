//! The control plane's OpenAPI document (`GET /v1/openapi.json`): valid OpenAPI 3.1, naming
//! every endpoint, and describing what real answers look like. The answers of a walk through
//! every endpoint (successes and refusals) are checked against their schemas by
//! `tests/data/openapi_check.py` (openapi-spec-validator and jsonschema, from PyPI). Without
//! them the check reports itself skipped, unless `KEYGATE_TEST_REQUIRE_OPENAPI` is set (CI
//! sets it and installs them).

mod common;

use std::path::Path;
use std::process::Command;

use common::*;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

fn validator_installed() -> bool {
    let found = Command::new("python3")
        .args(["-c", "import openapi_spec_validator, jsonschema"])
        .status()
        .is_ok_and(|s| s.success());
    if !found {
        if std::env::var_os("KEYGATE_TEST_REQUIRE_OPENAPI").is_some() {
            panic!("openapi-spec-validator is required (python3 -m pip install openapi-spec-validator)");
        }
        eprintln!("skipped: openapi-spec-validator is not installed (python3 -m pip install openapi-spec-validator)");
    }
    found
}

/// Answers received, as the checker reads them.
#[derive(Default)]
struct Samples(Vec<Value>);

impl Samples {
    /// Sends `method url` with `client` (and a JSON `body`), records the answer under the
    /// document's `template`, and returns its status and body.
    async fn call(
        &mut self,
        client: &reqwest::Client,
        method: Method,
        template: &str,
        url: String,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let mut req = client.request(method.clone(), url);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let r = req.send().await.unwrap();
        let status = r.status();
        let body: Value = r.json().await.unwrap_or(Value::Null);
        self.0
            .push(json!({"method": method.as_str(), "path": template,
            "status": status.as_u16(), "body": body.clone()}));
        (status, body)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openapi_document_is_valid_and_real_answers_match_it() {
    let backend = Backend::start();
    let kg = Keygate::start(&[backend.addr], "");
    let r = reqwest::get(kg.control_url("/v1/openapi.json"))
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.headers()["content-type"], "application/json");
    let doc: Value = r.json().await.unwrap();
    assert!(
        doc["openapi"].as_str().unwrap().starts_with("3.1"),
        "{}",
        doc["openapi"]
    );

    // Every endpoint of the control plane is in it, with its methods.
    let expected: &[(&str, &[&str])] = &[
        ("/healthz", &["get"]),
        ("/readyz", &["get"]),
        ("/metrics", &["get"]),
        ("/v1/openapi.json", &["get"]),
        ("/v1/keys", &["get", "post"]),
        ("/v1/keys/{id}", &["get", "patch", "delete"]),
        ("/v1/keys/{id}/rotate", &["post"]),
        ("/v1/keys/{id}/usage", &["get"]),
        ("/v1/scopes", &["get"]),
        ("/v1/providers", &["get"]),
        ("/v1/auth/login", &["post"]),
        ("/v1/auth/refresh", &["post"]),
        ("/v1/auth/logout", &["post"]),
        ("/v1/auth/session", &["get"]),
        ("/v1/auth/tokens", &["get", "post"]),
        ("/v1/auth/tokens/{id}", &["delete"]),
        ("/v1/me", &["get"]),
        ("/.well-known/jwks.json", &["get"]),
        ("/v1/admin/policy", &["get"]),
        ("/v1/admin/policy/reload", &["post"]),
        ("/v1/admin/policy/check", &["post"]),
        ("/v1/admin/tls", &["get"]),
        ("/v1/admin/tls/reload", &["post"]),
        ("/v1/admin/cluster", &["get"]),
        ("/oauth/authorize", &["get"]),
        ("/oauth/token", &["post"]),
        ("/v1/oauth/authorize", &["get", "post"]),
        ("/v1/oauth/clients", &["get", "post"]),
        ("/v1/oauth/clients/{id}", &["delete"]),
    ];
    let paths = doc["paths"].as_object().unwrap();
    for (path, methods) in expected {
        for m in *methods {
            assert!(
                paths.get(*path).and_then(|p| p.get(*m)).is_some(),
                "{m} {path} is not in the document"
            );
        }
    }
    assert_eq!(paths.len(), expected.len(), "{:?}", paths.keys());
    // The console speaks only endpoints the document lists.
    let script =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("console/console.js"))
            .unwrap();
    let called = regex::Regex::new(r#"["`](/v1/[^"`?]*)"#).unwrap();
    // `/${…}` is a path segment (an id); any other `${…}` a query string.
    let segment = regex::Regex::new(r"/\$\{[^}]*\}").unwrap();
    let query = regex::Regex::new(r"\$\{[^}]*\}").unwrap();
    let mut seen = 0;
    for m in called.captures_iter(&script) {
        let path = segment.replace_all(&m[1], "/{id}");
        let path = query.replace_all(&path, "").into_owned();
        assert!(
            paths.contains_key(&path),
            "the console calls {path}, which is not described"
        );
        seen += 1;
    }
    assert!(seen >= 10, "the console's calls were not found ({seen})");
    for scheme in ["bearer", "apiKey", "session"] {
        assert!(
            doc["components"]["securitySchemes"].get(scheme).is_some(),
            "{scheme}"
        );
    }

    // A walk through every endpoint, successes and refusals, recording each answer.
    let mut s = Samples::default();
    let op = kg.operator();
    let key = kg.client();
    let anonymous = reqwest::Client::new();
    let url = |p: &str| kg.control_url(p);
    s.call(&anonymous, Method::GET, "/healthz", url("/healthz"), None)
        .await;
    s.call(&anonymous, Method::GET, "/readyz", url("/readyz"), None)
        .await;
    s.call(
        &anonymous,
        Method::GET,
        "/.well-known/jwks.json",
        url("/.well-known/jwks.json"),
        None,
    )
    .await;

    let login = |kind: &str, password: &str| json!({"email": "ada@example.com", "password": password, "type": kind, "device": "openapi"});
    let (status, _) = s
        .call(
            &anonymous,
            Method::POST,
            "/v1/auth/login",
            url("/v1/auth/login"),
            Some(login("access", "not the password")),
        )
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, access) = s
        .call(
            &anonymous,
            Method::POST,
            "/v1/auth/login",
            url("/v1/auth/login"),
            Some(login("access", "ada's long password")),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{access}");
    let (status, refreshed) = s
        .call(
            &anonymous,
            Method::POST,
            "/v1/auth/refresh",
            url("/v1/auth/refresh"),
            Some(json!({"refreshToken": access["data"]["refreshToken"]})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{refreshed}");
    let (status, _) = s
        .call(
            &anonymous,
            Method::POST,
            "/v1/auth/refresh",
            url("/v1/auth/refresh"),
            Some(json!({"refreshToken": "kgr_unknown"})),
        )
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let user = bearer(refreshed["data"]["accessToken"].as_str().unwrap());

    // A browser session, and what a page asks of it.
    let r = anonymous
        .post(url("/v1/auth/login"))
        .json(&login("session", "ada's long password"))
        .send()
        .await
        .unwrap();
    let cookie = r.headers()["set-cookie"]
        .to_str()
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_owned();
    let mut h = reqwest::header::HeaderMap::new();
    h.insert("cookie", cookie.parse().unwrap());
    let browser = reqwest::Client::builder()
        .default_headers(h)
        .build()
        .unwrap();
    for client in [&browser, &anonymous] {
        let (status, _) = s
            .call(
                client,
                Method::GET,
                "/v1/auth/session",
                url("/v1/auth/session"),
                None,
            )
            .await;
        assert_eq!(status, StatusCode::OK);
    }

    for client in [&key, &op] {
        s.call(client, Method::GET, "/v1/me", url("/v1/me"), None)
            .await;
    }
    s.call(&anonymous, Method::GET, "/v1/me", url("/v1/me"), None)
        .await;
    s.call(&key, Method::GET, "/v1/scopes", url("/v1/scopes"), None)
        .await;
    s.call(
        &key,
        Method::GET,
        "/v1/providers",
        url("/v1/providers"),
        None,
    )
    .await;

    // Keys: the whole life of one, and the refusals.
    let (status, created) = s
        .call(
            &op,
            Method::POST,
            "/v1/keys",
            url("/v1/keys"),
            Some(
                json!({"name": "described", "scopes": ["read"], "owner": "ada@example.com",
                "providers": [{"provider": "local", "basePath": "/docs"}], "expiresIn": "30d"}),
            ),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    let id = created["data"]["id"].as_str().unwrap().to_owned();
    let one = |p: &str| url(&p.replace("{id}", &id));
    let (status, _) = s
        .call(
            &op,
            Method::POST,
            "/v1/keys",
            url("/v1/keys"),
            Some(json!({"name": "no scopes", "scopes": ["nonsense"]})),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    s.call(&user, Method::GET, "/v1/keys", url("/v1/keys"), None)
        .await;
    s.call(
        &user,
        Method::GET,
        "/v1/keys",
        url("/v1/keys?all=true"),
        None,
    )
    .await;
    s.call(
        &op,
        Method::GET,
        "/v1/keys/{id}",
        one("/v1/keys/{id}"),
        None,
    )
    .await;
    let (status, _) = s
        .call(
            &op,
            Method::GET,
            "/v1/keys/{id}",
            url("/v1/keys/no-such-key"),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    s.call(
        &op,
        Method::PATCH,
        "/v1/keys/{id}",
        one("/v1/keys/{id}"),
        Some(json!({"name": "renamed", "providers": null})),
    )
    .await;
    let (_, rotated) = s
        .call(
            &op,
            Method::POST,
            "/v1/keys/{id}/rotate",
            one("/v1/keys/{id}/rotate"),
            None,
        )
        .await;
    let successor = rotated["data"]["id"].as_str().unwrap().to_owned();
    s.call(
        &op,
        Method::GET,
        "/v1/keys/{id}/usage",
        one("/v1/keys/{id}/usage"),
        None,
    )
    .await;
    s.call(
        &op,
        Method::DELETE,
        "/v1/keys/{id}",
        url(&format!("/v1/keys/{successor}")),
        None,
    )
    .await;
    let (status, _) = s
        .call(&anonymous, Method::GET, "/v1/keys", url("/v1/keys"), None)
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);

    // Scoped tokens and devices.
    let (status, minted) = s
        .call(
            &user,
            Method::POST,
            "/v1/auth/tokens",
            url("/v1/auth/tokens"),
            Some(json!({"name": "report", "permissions": ["files.read"], "expiresIn": "1h"})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{minted}");
    s.call(
        &user,
        Method::GET,
        "/v1/auth/tokens",
        url("/v1/auth/tokens"),
        None,
    )
    .await;
    let token_id = minted["data"]["id"].as_str().unwrap();
    s.call(
        &user,
        Method::DELETE,
        "/v1/auth/tokens/{id}",
        url(&format!("/v1/auth/tokens/{token_id}")),
        None,
    )
    .await;

    // Operating: the operator's, and refused to a key without the right.
    let reader = kg
        .create_key(json!({"name": "reader", "scopes": ["read"], "owner": "ada@example.com"}))
        .await;
    let reader = client_with_key(reader["key"].as_str().unwrap());
    s.call(
        &op,
        Method::GET,
        "/v1/admin/policy",
        url("/v1/admin/policy"),
        None,
    )
    .await;
    let (status, _) = s
        .call(
            &reader,
            Method::GET,
            "/v1/admin/policy",
            url("/v1/admin/policy"),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    s.call(
        &op,
        Method::POST,
        "/v1/admin/policy/reload",
        url("/v1/admin/policy/reload"),
        None,
    )
    .await;
    s.call(
        &op,
        Method::POST,
        "/v1/admin/policy/check",
        url("/v1/admin/policy/check"),
        Some(json!({"key": id, "method": "GET", "path": "/v1/files/local/elsewhere"})),
    )
    .await;
    s.call(
        &op,
        Method::GET,
        "/v1/admin/cluster",
        url("/v1/admin/cluster"),
        None,
    )
    .await;
    let (status, _) = s
        .call(
            &op,
            Method::GET,
            "/v1/admin/tls",
            url("/v1/admin/tls"),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "no [tls] here");

    // Applications: registered, listed, asked about by a user, removed.
    let (status, app) = s
        .call(
            &user,
            Method::POST,
            "/v1/oauth/clients",
            url("/v1/oauth/clients"),
            Some(json!({"name": "described app", "redirectUris": ["https://app.example.com/cb"]})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{app}");
    let client_id = app["data"]["clientId"].as_str().unwrap().to_owned();
    s.call(
        &user,
        Method::GET,
        "/v1/oauth/clients",
        url("/v1/oauth/clients"),
        None,
    )
    .await;
    // A consent is answered by a browser session only, with its CSRF proof.
    let session_state: Value = browser
        .get(url("/v1/auth/session"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let mut h = reqwest::header::HeaderMap::new();
    h.insert("cookie", cookie.parse().unwrap());
    h.insert(
        "x-csrf-token",
        session_state["data"]["csrfToken"]
            .as_str()
            .unwrap()
            .parse()
            .unwrap(),
    );
    h.insert("origin", format!("http://{}", kg.control).parse().unwrap());
    let session = reqwest::Client::builder()
        .default_headers(h)
        .build()
        .unwrap();
    let ask = |extra: &str| {
        format!(
            "/v1/oauth/authorize?response_type=code&client_id={client_id}\
             &redirect_uri=https%3A%2F%2Fapp.example.com%2Fcb&scope=files.read&state=s\
             &code_challenge_method=S256{extra}"
        )
    };
    let (status, _) = s
        .call(
            &session,
            Method::GET,
            "/v1/oauth/authorize",
            url(&ask(
                "&code_challenge=E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM",
            )),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    // A refused authorization request is a 400 that says where to send the application.
    let mut refused_redirect = async |extra: &str| -> String {
        let (status, refused) = s
            .call(
                &session,
                Method::GET,
                "/v1/oauth/authorize",
                url(&ask(extra)),
                None,
            )
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        refused["error"]["details"]["redirectTo"]
            .as_str()
            .unwrap()
            .to_string()
    };
    assert!(refused_redirect("")
        .await
        .starts_with("https://app.example.com/cb?error=invalid_request"));
    // A parameter over its bound (2000 bytes) is refused, and the application told.
    let long = format!(
        "&code_challenge=E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM&providers={}",
        "a".repeat(2001)
    );
    assert!(refused_redirect(&long)
        .await
        .contains("error=invalid_request"));
    let (status, _) = s
        .call(
            &session,
            Method::POST,
            "/v1/oauth/authorize",
            url("/v1/oauth/authorize"),
            Some(
                json!({"request": {"response_type": "code", "client_id": client_id,
                "redirect_uri": "https://app.example.com/cb", "scope": "files.read",
                "code_challenge": "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM",
                "code_challenge_method": "S256"}, "approve": false}),
            ),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    for (form, expected) in [
        (
            vec![
                ("grant_type", "authorization_code"),
                ("client_id", client_id.as_str()),
                ("code", "kga_unknown"),
                ("redirect_uri", "https://app.example.com/cb"),
                (
                    "code_verifier",
                    "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk",
                ),
            ],
            StatusCode::BAD_REQUEST,
        ),
        (
            vec![
                ("grant_type", "password"),
                ("client_id", client_id.as_str()),
            ],
            StatusCode::BAD_REQUEST,
        ),
        (
            vec![("grant_type", "refresh_token"), ("client_id", "kgc_nobody")],
            StatusCode::UNAUTHORIZED,
        ),
    ] {
        let r = anonymous
            .post(url("/oauth/token"))
            .form(&form)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), expected);
        let body: Value = r.json().await.unwrap();
        s.0.push(json!({"method": "POST", "path": "/oauth/token",
            "status": expected.as_u16(), "body": body}));
    }
    s.call(
        &user,
        Method::DELETE,
        "/v1/oauth/clients/{id}",
        url(&format!("/v1/oauth/clients/{client_id}")),
        None,
    )
    .await;
    s.call(
        &user,
        Method::POST,
        "/v1/auth/logout",
        url("/v1/auth/logout"),
        None,
    )
    .await;

    if !validator_installed() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let doc_file = dir.path().join("openapi.json");
    let samples_file = dir.path().join("samples.json");
    std::fs::write(&doc_file, serde_json::to_vec(&doc).unwrap()).unwrap();
    std::fs::write(&samples_file, serde_json::to_vec(&s.0).unwrap()).unwrap();
    let checker = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/openapi_check.py");
    let out = Command::new("python3")
        .arg(checker)
        .arg(&doc_file)
        .arg(&samples_file)
        .output()
        .unwrap();
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{report}");
    assert!(
        report.contains(&format!("{} answers: 0 problems", s.0.len())),
        "{report}"
    );
}
