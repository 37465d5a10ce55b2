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
    let interpolation = regex::Regex::new(r"\$\{[^}]*\}").unwrap();
    let mut seen = 0;
    for m in called.captures_iter(&script) {
        let path = interpolation
            .replace_all(&m[1], "{id}")
            .replace("/v1/keys{id}", "/v1/keys");
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
