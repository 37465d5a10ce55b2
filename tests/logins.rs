//! Logins through real processes: mobile JWTs, access + refresh tokens, browser sessions,
//! scoped tokens, external issuers, and every way a token must be refused.

mod common;

use std::time::{Duration, Instant};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use common::*;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use reqwest::header::HeaderMap;
use reqwest::StatusCode;
use serde_json::{json, Value};

const ADA: (&str, &str) = ("ada@example.com", "ada's long password");
const BOB_PASSWORD: &str = "bob's own long password";

async fn login_as(
    kg: &Keygate,
    (email, password): (&str, &str),
    kind: &str,
) -> (StatusCode, Value, HeaderMap) {
    let r = reqwest::Client::new()
        .post(kg.control_url("/v1/auth/login"))
        .json(&json!({"email": email, "password": password, "type": kind, "device": format!("{kind} client")}))
        .send()
        .await
        .unwrap();
    let status = r.status();
    let headers = r.headers().clone();
    (status, r.json().await.unwrap_or(Value::Null), headers)
}

/// Logs ada in and returns the data of the answer.
async fn login(kg: &Keygate, kind: &str) -> Value {
    let (status, body, _) = login_as(kg, ADA, kind).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body["data"].clone()
}

/// Status and `error.details.reason` of a GET with `token`.
async fn get_status(kg: &Keygate, token: &str, path: &str) -> (StatusCode, Value) {
    let r = bearer(token).get(kg.url(path)).send().await.unwrap();
    let status = r.status();
    (status, r.json().await.unwrap_or(Value::Null))
}

fn add_user(kg: &Keygate, email: &str, role: &str) {
    cli_ok(
        &kg.db.url(),
        &["users", "add", email, "--password-stdin"],
        Some(&format!("{BOB_PASSWORD}\n")),
    );
    kg.cli(&[
        "members",
        "add",
        "--workspace",
        "acme",
        "--user",
        email,
        "--role",
        role,
    ]);
}

fn put_file(backend: &Backend, rel: &str, bytes: &[u8]) {
    let path = backend.root().join("local").join(rel);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, bytes).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mobile_token_reaches_storage_and_carries_the_documented_claims() {
    let backend = Backend::start();
    put_file(&backend, "docs/report.txt", b"quarterly numbers");
    let kg = Keygate::start(&[backend.addr], "");

    let data = login(&kg, "mobile").await;
    let token = data["token"].as_str().unwrap();
    assert_eq!(data["type"], "mobile");
    assert_eq!(data["tokenType"], "Bearer");
    assert_eq!(data["user"]["email"], "ada@example.com");
    // 30 days, give or take the test's own run time.
    let ttl = data["expiresIn"].as_i64().unwrap();
    assert_eq!(ttl, 30 * 86_400);

    // The claims of the reference page, and keygate's pinned ones.
    let payload = token.split('.').nth(1).unwrap();
    let claims: Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).unwrap()).unwrap();
    assert_eq!(claims["email"], "ada@example.com");
    assert_eq!(claims["sub"], claims["userId"]);
    assert_eq!(claims["tokenId"], data["tokenId"]);
    assert_eq!(claims["iss"], "keygate");
    assert_eq!(claims["aud"], "keygate");
    assert_eq!(
        claims["exp"].as_i64().unwrap() - claims["iat"].as_i64().unwrap(),
        30 * 86_400
    );
    let header: Value = serde_json::from_slice(
        &URL_SAFE_NO_PAD
            .decode(token.split('.').next().unwrap())
            .unwrap(),
    )
    .unwrap();
    assert_eq!(header["alg"], "EdDSA");

    // The JWKS publishes the key that signed it.
    let jwks: Value = reqwest::get(kg.control_url("/.well-known/jwks.json"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let keys = jwks["keys"].as_array().unwrap();
    assert_eq!(keys.len(), 1);
    assert_eq!(keys[0]["kty"], "OKP");
    assert_eq!(keys[0]["crv"], "Ed25519");
    assert_eq!(keys[0]["kid"], header["kid"]);
    assert!(keys[0].get("d").is_none(), "never the private half");

    let c = bearer(token);
    let r = c
        .get(kg.url("/v1/files/local/docs/report.txt"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.bytes().await.unwrap().as_ref(), b"quarterly numbers");
    c.put(kg.url("/v1/files/local/docs/from-phone.txt"))
        .body("sent from a phone")
        .expect(StatusCode::CREATED)
        .await;
    assert_eq!(
        std::fs::read(backend.root().join("local/docs/from-phone.txt")).unwrap(),
        b"sent from a phone"
    );

    // Who am I: the login, acting as ada by her role; a login holds no scopes of its own.
    let me: Value = c.get(kg.control_url("/v1/me")).send_json().await;
    assert_eq!(me["data"]["user"]["email"], "ada@example.com");
    assert_eq!(me["data"]["role"], "admin");
    assert_eq!(me["data"]["credential"]["type"], "login");
    assert_eq!(me["data"]["credential"]["scopes"], json!([]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_passwords_are_refused_and_limited_per_account() {
    let kg = Keygate::start(
        &[],
        "[auth]\nlogin_failures_per_account = 3\nlogin_failures_per_address = 100\n",
    );
    let (status, body, _) = login_as(&kg, ("ada@example.com", "not her password"), "mobile").await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    assert_eq!(body["error"]["code"], "UNAUTHORIZED");
    // An unknown account answers exactly like a wrong password.
    let (status, unknown, _) = login_as(&kg, ("nobody@example.com", "whatever pw"), "mobile").await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(unknown["error"]["message"], body["error"]["message"]);
    for _ in 0..2 {
        login_as(&kg, ("ada@example.com", "still not it"), "mobile").await;
    }
    // The account is now locked out for a while, even with the right password...
    let (status, body, headers) = login_as(&kg, ADA, "mobile").await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{body}");
    assert!(headers.get("retry-after").is_some());
    // ...while other accounts are not.
    add_user(&kg, "bob@example.com", "viewer");
    let (status, _, _) = login_as(&kg, ("bob@example.com", BOB_PASSWORD), "mobile").await;
    assert_eq!(status, StatusCode::OK);
    let metrics = kg.metrics().await;
    assert!(metric(&metrics, r#"keygate_logins_total{result="failed"}"#) >= 4.0);
    assert!(metric(&metrics, r#"keygate_logins_total{result="limited"}"#) >= 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_revoked_remotely_is_refused_on_its_next_request() {
    let backend = Backend::start();
    put_file(&backend, "a.txt", b"a");
    let kg = Keygate::start(&[backend.addr], "");
    let phone = login(&kg, "mobile").await;
    let tablet = login(&kg, "mobile").await;
    let phone_token = phone["token"].as_str().unwrap();
    let tablet_token = tablet["token"].as_str().unwrap();
    for t in [phone_token, tablet_token] {
        assert_eq!(
            get_status(&kg, t, "/v1/files/local/a.txt").await.0,
            StatusCode::OK
        );
    }

    // The phone lists the signed-in devices: both, the phone marked as the current one.
    let list: Value = bearer(phone_token)
        .get(kg.control_url("/v1/auth/tokens"))
        .send_json()
        .await;
    let devices = list["data"].as_array().unwrap();
    assert_eq!(devices.len(), 2, "{list}");
    let current: Vec<bool> = devices
        .iter()
        .map(|d| d["current"].as_bool().unwrap())
        .collect();
    assert_eq!(current.iter().filter(|c| **c).count(), 1);
    let me = devices.iter().find(|d| d["current"] == true).unwrap();
    assert_eq!(me["id"], phone["tokenId"]);
    assert_eq!(me["label"], "mobile client");
    assert!(devices.iter().all(|d| d.get("token").is_none()));

    // ...and signs the tablet out.
    bearer(phone_token)
        .delete(kg.control_url(&format!(
            "/v1/auth/tokens/{}",
            tablet["tokenId"].as_str().unwrap()
        )))
        .expect(StatusCode::OK)
        .await;
    let (status, body) = get_status(&kg, tablet_token, "/v1/files/local/a.txt").await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(body["error"]["details"]["reason"], "revoked");
    assert_eq!(
        get_status(&kg, phone_token, "/v1/files/local/a.txt")
            .await
            .0,
        StatusCode::OK
    );

    // Another user cannot see or revoke ada's devices.
    add_user(&kg, "bob@example.com", "editor");
    let (_, bob, _) = login_as(&kg, ("bob@example.com", BOB_PASSWORD), "mobile").await;
    let bob_token = bob["data"]["token"].as_str().unwrap();
    bearer(bob_token)
        .delete(kg.control_url(&format!(
            "/v1/auth/tokens/{}",
            phone["tokenId"].as_str().unwrap()
        )))
        .expect(StatusCode::NOT_FOUND)
        .await;
    assert_eq!(
        get_status(&kg, phone_token, "/v1/files/local/a.txt")
            .await
            .0,
        StatusCode::OK
    );

    // Logging out ends the login it is made with.
    bearer(phone_token)
        .post(kg.control_url("/v1/auth/logout"))
        .expect(StatusCode::OK)
        .await;
    assert_eq!(
        get_status(&kg, phone_token, "/v1/files/local/a.txt")
            .await
            .0,
        StatusCode::UNAUTHORIZED
    );
}

async fn refresh(kg: &Keygate, token: &str) -> (StatusCode, Value) {
    let r = reqwest::Client::new()
        .post(kg.control_url("/v1/auth/refresh"))
        .json(&json!({ "refreshToken": token }))
        .send()
        .await
        .unwrap();
    let status = r.status();
    (status, r.json().await.unwrap())
}

async fn refresh_rotates_and_reuse_revokes_the_family(kg: &Keygate) {
    let first = login(kg, "access").await;
    assert_eq!(first["type"], "access");
    assert_eq!(first["expiresIn"], 600);
    let access1 = first["accessToken"].as_str().unwrap();
    let refresh1 = first["refreshToken"].as_str().unwrap();
    let path = "/v1/folders/local";
    assert_eq!(get_status(kg, access1, path).await.0, StatusCode::OK);

    // Refresh: a new access token and a new refresh token.
    let (status, second) = refresh(kg, refresh1).await;
    assert_eq!(status, StatusCode::OK, "{second}");
    let access2 = second["data"]["accessToken"].as_str().unwrap();
    let refresh2 = second["data"]["refreshToken"].as_str().unwrap();
    assert_ne!(access2, access1);
    assert_ne!(refresh2, refresh1);
    assert_eq!(get_status(kg, access2, path).await.0, StatusCode::OK);

    // The first refresh token again: reuse. The whole family is revoked at once.
    let (status, body) = refresh(kg, refresh1).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    assert_eq!(body["error"]["details"]["reason"], "revoked");
    for t in [access1, access2] {
        let (status, body) = get_status(kg, t, path).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        assert_eq!(body["error"]["details"]["reason"], "revoked");
    }
    let (status, _) = refresh(kg, refresh2).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, _) = refresh(kg, "kgr_not-a-token-at-all").await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);

    // Another login is not touched by that family's end.
    let other = login(kg, "access").await;
    assert_eq!(
        get_status(kg, other["accessToken"].as_str().unwrap(), path)
            .await
            .0,
        StatusCode::OK
    );
    let metrics = kg.metrics().await;
    assert_eq!(
        metric(&metrics, r#"keygate_logins_total{result="reuse_detected"}"#),
        1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refresh_rotation_and_reuse_detection_on_sqlite() {
    let backend = Backend::start();
    let kg = Keygate::start(&[backend.addr], "");
    refresh_rotates_and_reuse_revokes_the_family(&kg).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refresh_rotation_and_reuse_detection_on_postgres() {
    let Some(db) = TestDb::postgres().await else {
        eprintln!("skipped: KEYGATE_TEST_POSTGRES_URL is not set");
        return;
    };
    let backend = Backend::start();
    let kg = Keygate::start_with_db(&[backend.addr], "", db);
    refresh_rotates_and_reuse_revokes_the_family(&kg).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_browser_session_with_csrf_protection_and_logout() {
    let backend = Backend::start();
    put_file(&backend, "docs/a.txt", b"for the browser");
    let kg = Keygate::start(&[backend.addr], "");
    let (status, body, headers) = login_as(&kg, ADA, "session").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let set_cookie = headers
        .get("set-cookie")
        .unwrap()
        .to_str()
        .unwrap()
        .to_owned();
    for attribute in ["HttpOnly", "Secure", "SameSite=Strict", "Path=/"] {
        assert!(
            set_cookie.contains(attribute),
            "{attribute} in {set_cookie}"
        );
    }
    assert!(set_cookie.starts_with("__Host-keygate_session="));
    assert!(body["data"].get("token").is_none());
    let csrf = body["data"]["csrfToken"].as_str().unwrap().to_owned();
    let cookie = set_cookie.split(';').next().unwrap().to_owned();
    let browser = || {
        let mut h = reqwest::header::HeaderMap::new();
        h.insert("cookie", cookie.parse().unwrap());
        reqwest::Client::builder()
            .default_headers(h)
            .build()
            .unwrap()
    };
    let origin = format!("http://{}", kg.data);

    // Reading needs nothing more than the cookie.
    let r = browser()
        .get(kg.url("/v1/files/local/docs/a.txt"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.bytes().await.unwrap().as_ref(), b"for the browser");

    // A write started by another site's page: refused, nothing stored.
    for (origin_header, token) in [
        (Some("https://evil.example"), Some(csrf.as_str())),
        (None, Some(csrf.as_str())),
        (Some(origin.as_str()), None),
        (Some(origin.as_str()), Some("forged")),
    ] {
        let mut req = browser()
            .put(kg.url("/v1/files/local/docs/forged.txt"))
            .body("forged");
        if let Some(o) = origin_header {
            req = req.header("origin", o);
        }
        if let Some(t) = token {
            req = req.header("x-csrf-token", t);
        }
        let r = req.send().await.unwrap();
        assert_eq!(
            r.status(),
            StatusCode::FORBIDDEN,
            "{origin_header:?} {token:?}"
        );
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["error"]["details"]["restriction"], "csrf");
    }
    assert!(!backend.root().join("local/docs/forged.txt").exists());

    // The web app's own page, with the session's CSRF token: stored.
    browser()
        .put(kg.url("/v1/files/local/docs/mine.txt"))
        .header("origin", &origin)
        .header("x-csrf-token", &csrf)
        .body("uploaded from the browser")
        .expect(StatusCode::CREATED)
        .await;
    assert_eq!(
        std::fs::read(backend.root().join("local/docs/mine.txt")).unwrap(),
        b"uploaded from the browser"
    );

    // The control plane follows the same rule: creating a key needs the CSRF token too.
    let control_origin = format!("http://{}", kg.control);
    let key_body = json!({"name": "from the web", "scopes": ["read"]});
    browser()
        .post(kg.control_url("/v1/keys"))
        .header("origin", "https://evil.example")
        .header("x-csrf-token", &csrf)
        .json(&key_body)
        .expect(StatusCode::FORBIDDEN)
        .await;
    browser()
        .post(kg.control_url("/v1/keys"))
        .header("origin", &control_origin)
        .header("x-csrf-token", &csrf)
        .json(&key_body)
        .expect(StatusCode::CREATED)
        .await;

    // A page loaded later asks whether its cookie still signs it in, and gets the same CSRF
    // token again (never cached); without a cookie the answer is a plain "no", not a 401.
    let r = browser()
        .get(kg.control_url("/v1/auth/session"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.headers()["cache-control"], "no-store");
    let session: Value = r.json().await.unwrap();
    assert_eq!(session["data"]["signedIn"], true, "{session}");
    assert_eq!(session["data"]["csrfToken"], csrf.as_str());
    let none = reqwest::Client::new()
        .get(kg.control_url("/v1/auth/session"))
        .expect(StatusCode::OK)
        .await;
    assert_eq!(none["data"], json!({"signedIn": false}));
    // A bearer credential is no session: it gets no CSRF token.
    let bearer_answer = kg
        .client()
        .get(kg.control_url("/v1/auth/session"))
        .expect(StatusCode::OK)
        .await;
    assert_eq!(bearer_answer["data"], json!({"signedIn": false}));

    // Logout ends the session and clears the cookie.
    let r = browser()
        .post(kg.control_url("/v1/auth/logout"))
        .header("origin", &control_origin)
        .header("x-csrf-token", &csrf)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert!(r
        .headers()
        .get("set-cookie")
        .unwrap()
        .to_str()
        .unwrap()
        .contains("Max-Age=0"));
    browser()
        .get(kg.url("/v1/files/local/docs/a.txt"))
        .expect(StatusCode::UNAUTHORIZED)
        .await;
    // The ended session says why, and hands out no token.
    let ended = browser()
        .get(kg.control_url("/v1/auth/session"))
        .expect(StatusCode::OK)
        .await;
    assert_eq!(
        ended["data"],
        json!({"signedIn": false, "reason": "revoked"})
    );
}

async fn mint(kg: &Keygate, login_token: &str, body: Value) -> (StatusCode, Value) {
    let r = bearer(login_token)
        .post(kg.control_url("/v1/auth/tokens"))
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = r.status();
    (status, r.json().await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scoped_token_never_exceeds_its_permissions_or_its_users_role() {
    let backend = Backend::start();
    put_file(&backend, "docs/a.txt", b"a");
    put_file(&backend, "private/b.txt", b"b");
    let kg = Keygate::start(&[backend.addr], "");
    let ada = login(&kg, "mobile").await;
    let ada_token = ada["token"].as_str().unwrap();

    // Read-only, confined to /docs of provider local, for an hour.
    let (status, minted) = mint(
        &kg,
        ada_token,
        json!({"name": "report job", "permissions": ["files.read", "folders.read"],
               "expiresIn": "1h", "providers": [{"provider": "local", "basePath": "/docs"}]}),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{minted}");
    // The token holds its permissions as minted; the policies grant them.
    assert_eq!(
        minted["data"]["scopes"],
        json!(["files.read", "folders.read"])
    );
    let scoped = minted["data"]["token"].as_str().unwrap();
    assert_eq!(
        get_status(&kg, scoped, "/v1/files/local/docs/a.txt")
            .await
            .0,
        StatusCode::OK
    );
    let (status, body) = get_status(&kg, scoped, "/v1/files/local/private/b.txt").await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(body["error"]["details"]["restriction"], "base_path");
    let r = bearer(scoped)
        .put(kg.url("/v1/files/local/docs/new.txt"))
        .body("x")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"]["details"]["required"], "files:write");
    assert_eq!(
        body["error"]["details"]["granted"],
        json!(["files.read", "folders.read"])
    );
    assert!(!backend.root().join("local/docs/new.txt").exists());

    // A scoped token mints nothing and creates no keys.
    let (status, body) = mint(&kg, scoped, json!({"permissions": ["files.read"]})).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    let r = bearer(scoped)
        .post(kg.control_url("/v1/keys"))
        .json(&json!({"name": "escalate", "scopes": ["admin"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);

    // Nobody mints beyond their role: an editor gets no admin token.
    add_user(&kg, "bob@example.com", "editor");
    let (_, bob, _) = login_as(&kg, ("bob@example.com", BOB_PASSWORD), "mobile").await;
    let bob_token = bob["data"]["token"].as_str().unwrap();
    let (status, body) = mint(&kg, bob_token, json!({"permissions": ["admin"]})).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    let message = body["error"]["message"].as_str().unwrap();
    // The policies say why: their role forbids such a token other people's keys.
    assert!(message.contains("exceeds your role"), "{message}");
    assert!(message.contains("readKey"), "{message}");
    let (status, minted) = mint(
        &kg,
        bob_token,
        json!({"permissions": ["files.write", "files.read"]}),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{minted}");
    let bob_scoped = minted["data"]["token"].as_str().unwrap().to_owned();
    let upload = |name: String| {
        bearer(&bob_scoped)
            .put(kg.url(&format!("/v1/files/local/docs/{name}")))
            .body("from bob")
            .send()
    };
    assert_eq!(
        upload("bob.txt".into()).await.unwrap().status(),
        StatusCode::CREATED
    );

    // Bob becomes a viewer: his scoped token loses its writes at once (the CLI is another
    // process; the running keygate picks the change up within its poll interval).
    kg.cli(&[
        "members",
        "add",
        "--workspace",
        "acme",
        "--user",
        "bob@example.com",
        "--role",
        "viewer",
    ]);
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut n = 0;
    let refused = loop {
        n += 1;
        let r = upload(format!("probe-{n}.txt")).await.unwrap();
        if r.status() == StatusCode::FORBIDDEN || Instant::now() > deadline {
            break r;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(refused.status(), StatusCode::FORBIDDEN);
    let body: Value = refused.json().await.unwrap();
    assert_eq!(body["error"]["details"]["restriction"], "role");
    assert!(!backend
        .root()
        .join(format!("local/docs/probe-{n}.txt"))
        .exists());
    let (status, _) = mint(&kg, bob_token, json!({"permissions": ["files.write"]})).await;
    assert_eq!(status, StatusCode::FORBIDDEN);

    // Revoking the scoped token ends it.
    bearer(ada_token)
        .delete(kg.control_url(&format!(
            "/v1/auth/tokens/{}",
            minted_id(&kg, ada_token).await
        )))
        .expect(StatusCode::OK)
        .await;
    assert_eq!(
        get_status(&kg, scoped, "/v1/files/local/docs/a.txt")
            .await
            .0,
        StatusCode::UNAUTHORIZED
    );
}

/// The id of ada's scoped token, from her token list.
async fn minted_id(kg: &Keygate, login_token: &str) -> String {
    let list: Value = bearer(login_token)
        .get(kg.control_url("/v1/auth/tokens"))
        .send_json()
        .await;
    list["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["type"] == "scoped")
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_management_accepts_logins_and_api_keys_still_cannot_create_keys() {
    let backend = Backend::start();
    let kg = Keygate::start(&[backend.addr], "");
    let data = login(&kg, "mobile").await;
    let token = data["token"].as_str().unwrap();
    let r = bearer(token)
        .post(kg.control_url("/v1/keys"))
        .json(&json!({"name": "made by a login", "scopes": ["read"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    let created: Value = r.json().await.unwrap();
    let key = created["data"]["key"].as_str().unwrap();
    client_with_key(key)
        .get(kg.url("/v1/folders/local"))
        .expect(StatusCode::OK)
        .await;
    client_with_key(key)
        .post(kg.control_url("/v1/keys"))
        .json(&json!({"name": "made by a key", "scopes": ["read"]}))
        .expect(StatusCode::FORBIDDEN)
        .await;
    // Nor does an API key mint tokens.
    let (status, _) = mint(&kg, key, json!({"permissions": ["files.read"]})).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let listed: Value = bearer(token)
        .get(kg.control_url("/v1/keys"))
        .send_json()
        .await;
    assert!(listed["data"]
        .as_array()
        .unwrap()
        .iter()
        .any(|k| k["name"] == "made by a login"));
}

/// An Ed25519 key pair the test holds, as a JWK set for keygate and a key to sign with.
fn test_issuer_key(kid: &str) -> (Value, EncodingKey) {
    use ed25519_dalek::pkcs8::EncodePrivateKey;
    let key = ed25519_dalek::SigningKey::generate(&mut rand::rngs::OsRng);
    let jwk = json!({"kty": "OKP", "crv": "Ed25519", "alg": "EdDSA", "use": "sig", "kid": kid,
        "x": URL_SAFE_NO_PAD.encode(key.verifying_key().to_bytes())});
    let der = key.to_pkcs8_der().unwrap();
    (jwk, EncodingKey::from_ed_der(der.as_bytes()))
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

fn sign(key: &EncodingKey, kid: &str, claims: &Value) -> String {
    let mut header = Header::new(Algorithm::EdDSA);
    header.kid = Some(kid.to_owned());
    jsonwebtoken::encode(&header, claims, key).unwrap()
}

/// A JWT with any header, signed with HMAC-SHA-256 under `secret` (or unsigned).
fn hand_made(header: &Value, claims: &Value, hmac_secret: Option<&[u8]>) -> String {
    use hmac::{Hmac, Mac};
    let input = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(claims.to_string())
    );
    let signature = match hmac_secret {
        None => String::new(),
        Some(secret) => {
            let mut mac = Hmac::<sha2::Sha256>::new_from_slice(secret).unwrap();
            mac.update(input.as_bytes());
            URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes())
        }
    };
    format!("{input}.{signature}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_expired_and_misdirected_tokens_are_refused_401() {
    let backend = Backend::start();
    let dir = tempfile::tempdir().unwrap();
    let (jwk, idp) = test_issuer_key("idp-1");
    let jwks = dir.path().join("jwks.json");
    std::fs::write(&jwks, json!({ "keys": [jwk] }).to_string()).unwrap();
    let kg = Keygate::start(
        &[backend.addr],
        &format!(
            "[tokens]\naccess_ttl = \"2s\"\nleeway = \"1s\"\n\n\
             [auth]\nfailures_per_minute = 1000\nforbidden_per_minute = 1000\n\n\
             [[issuers]]\nname = \"test idp\"\nissuer = \"https://idp.test\"\naudience = \"keygate-api\"\n\
             jwks_file = {:?}\nalgorithms = [\"EdDSA\"]\n",
            jwks.display().to_string()
        ),
    );
    let path = "/v1/folders/local";
    let mobile = login(&kg, "mobile").await;
    let good = mobile["token"].as_str().unwrap().to_owned();
    assert_eq!(get_status(&kg, &good, path).await.0, StatusCode::OK);
    let parts: Vec<&str> = good.split('.').collect();
    let header: Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[0]).unwrap()).unwrap();
    let claims: Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[1]).unwrap()).unwrap();
    let jwks_doc: Value = reqwest::get(kg.control_url("/.well-known/jwks.json"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let public_key = URL_SAFE_NO_PAD
        .decode(jwks_doc["keys"][0]["x"].as_str().unwrap())
        .unwrap();

    let t = now();
    // The test issuer's token, with its claims changed by `f`.
    let idp_token = |f: &dyn Fn(&mut serde_json::Map<String, Value>)| {
        let mut c = json!({"iss": "https://idp.test", "aud": "keygate-api", "sub": "idp-user-7",
            "email": "ada@example.com", "email_verified": true, "iat": t, "nbf": t, "exp": t + 300});
        f(c.as_object_mut().unwrap());
        sign(&idp, "idp-1", &c)
    };
    // The external issuer's well-formed token is accepted (this test is about the others).
    let external = idp_token(&|_| {});
    assert_eq!(get_status(&kg, &external, path).await.0, StatusCode::OK);

    let mut tampered_claims = claims.clone();
    tampered_claims["email"] = json!("mallory@example.com");
    let tampered = format!(
        "{}.{}.{}",
        parts[0],
        URL_SAFE_NO_PAD.encode(tampered_claims.to_string()),
        parts[2]
    );
    let mut none_header = header.clone();
    none_header["alg"] = json!("none");
    let mut hs_header = header.clone();
    hs_header["alg"] = json!("HS256");
    // Signed by an attacker's key that rides along in the header (`jwk`, `jku`, `x5u`), under
    // keygate's own kid: a verifier that trusted the header would accept it.
    let embedded = {
        let (attacker_jwk, attacker) = test_issuer_key("attacker");
        let mut h = Header::new(Algorithm::EdDSA);
        h.kid = header["kid"].as_str().map(str::to_owned);
        h.jwk = Some(serde_json::from_value(attacker_jwk).unwrap());
        h.jku = Some("https://evil.example/jwks.json".to_owned());
        h.x5u = Some("https://evil.example/cert.pem".to_owned());
        jsonwebtoken::encode(&h, &claims, &attacker).unwrap()
    };
    let unknown_kid = {
        let (_, other) = test_issuer_key("x");
        let mut h = Header::new(Algorithm::EdDSA);
        h.kid = Some("not-a-keygate-kid".to_owned());
        jsonwebtoken::encode(&h, &claims, &other).unwrap()
    };
    let cases: Vec<(&str, String)> = vec![
        ("tampered payload", tampered),
        ("alg none", hand_made(&none_header, &claims, None)),
        (
            "HS256 signed with the public key",
            hand_made(&hs_header, &claims, Some(&public_key)),
        ),
        ("unknown kid", unknown_kid),
        ("embedded jwk, jku and x5u are ignored", embedded),
        (
            "expired (external)",
            idp_token(&|c| c["exp"] = json!(t - 120)),
        ),
        ("not yet valid", idp_token(&|c| c["nbf"] = json!(t + 600))),
        (
            "wrong audience",
            idp_token(&|c| c["aud"] = json!("someone-else")),
        ),
        (
            "wrong issuer",
            idp_token(&|c| c["iss"] = json!("https://idp.test.evil")),
        ),
        (
            "no exp",
            idp_token(&|c| {
                c.remove("exp");
            }),
        ),
        (
            "no aud",
            idp_token(&|c| {
                c.remove("aud");
            }),
        ),
        (
            "unknown user",
            idp_token(&|c| c["email"] = json!("nobody@example.com")),
        ),
        // An address the provider has not verified names nobody.
        (
            "email not verified",
            idp_token(&|c| c["email_verified"] = json!(false)),
        ),
        (
            "email_verified missing",
            idp_token(&|c| {
                c.remove("email_verified");
            }),
        ),
    ];
    for (what, token) in &cases {
        let (status, body) = get_status(&kg, token, path).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{what}: {body}");
        assert_eq!(body["error"]["code"], "UNAUTHORIZED", "{what}");
        // The control plane refuses them the same way.
        let r = bearer(token)
            .get(kg.control_url("/v1/me"))
            .send()
            .await
            .unwrap();
        assert_eq!(
            r.status(),
            StatusCode::UNAUTHORIZED,
            "{what} on the control plane"
        );
    }

    // keygate's own access token, once its 2 s and the 1 s of skew are over.
    let access = login(&kg, "access").await;
    let access = access["accessToken"].as_str().unwrap().to_owned();
    assert_eq!(get_status(&kg, &access, path).await.0, StatusCode::OK);
    tokio::time::sleep(Duration::from_millis(3500)).await;
    let (status, body) = get_status(&kg, &access, path).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(body["error"]["details"]["reason"], "expired");
    assert_eq!(get_status(&kg, &good, path).await.0, StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_external_issuers_token_from_a_jwks_url_acts_as_its_user() {
    let backend = Backend::start();
    put_file(&backend, "shared/x.txt", b"x");
    // The issuer's JWKS, served over HTTP by the test; the key is rotated mid-test.
    let (jwk1, key1) = test_issuer_key("k1");
    let (jwk2, key2) = test_issuer_key("k2");
    let served = std::sync::Arc::new(std::sync::Mutex::new(json!({ "keys": [jwk1] })));
    let doc = served.clone();
    let fetches = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counted = fetches.clone();
    let app = axum::Router::new().route(
        "/.well-known/jwks.json",
        axum::routing::get(move || {
            let doc = doc.clone();
            counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            async move { axum::Json(doc.lock().unwrap().clone()) }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let idp = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });

    let kg = Keygate::start(
        &[backend.addr],
        &format!(
            "[[issuers]]\nname = \"corporate sso\"\nissuer = \"https://sso.test\"\naudience = \"files\"\n\
             jwks_url = \"http://{idp}/.well-known/jwks.json\"\nalgorithms = [\"EdDSA\"]\n\
             user_claim = \"sub\"\nworkspace = \"acme\"\n\
             [issuers.subjects]\n\"00u1\" = \"bob@example.com\"\n"
        ),
    );
    add_user(&kg, "bob@example.com", "viewer");
    let t = now();
    let claims = json!({"iss": "https://sso.test", "aud": "files", "sub": "00u1", "upn": "bob@example.com",
        "iat": t, "exp": t + 600});
    // The subject is bound to Bob; a mutable claim naming someone else changes nothing.
    let token = sign(&key1, "k1", &claims);
    assert_eq!(
        get_status(&kg, &token, "/v1/files/local/shared/x.txt")
            .await
            .0,
        StatusCode::OK
    );
    // A subject the config does not bind names nobody, whatever else the token claims.
    let unbound = sign(
        &key1,
        "k1",
        &json!({"iss": "https://sso.test", "aud": "files", "sub": "00u2", "upn": "bob@example.com",
            "iat": t, "exp": t + 600}),
    );
    assert_eq!(
        get_status(&kg, &unbound, "/v1/files/local/shared/x.txt")
            .await
            .0,
        StatusCode::UNAUTHORIZED
    );
    // Tokens with made-up kids (fewer than the 20 failures an address may have a minute) do
    // not make keygate hammer the issuer: one fetch at a time,
    // and none sooner than 10 s after the last (the one at start).
    let before = fetches.load(std::sync::atomic::Ordering::SeqCst);
    let probes = (0..15).map(|i| {
        let forged = sign(
            &key2,
            &format!("made-up-{i}"),
            &json!({"iss": "https://sso.test", "aud": "files", "sub": "00u1", "iat": t,
                "exp": t + 600, "jti": i}),
        );
        let kg = &kg;
        async move {
            get_status(kg, &forged, "/v1/files/local/shared/x.txt")
                .await
                .0
        }
    });
    for status in futures_util::future::join_all(probes).await {
        assert_eq!(status, StatusCode::UNAUTHORIZED);
    }
    let during = fetches.load(std::sync::atomic::Ordering::SeqCst) - before;
    assert!(during <= 1, "{during} JWKS fetches for 15 unknown kids");
    // Bob is a viewer: his external login reads but never writes.
    bearer(&token)
        .put(kg.url("/v1/files/local/shared/y.txt"))
        .body("y")
        .expect(StatusCode::FORBIDDEN)
        .await;
    let me: Value = bearer(&token)
        .get(kg.control_url("/v1/me"))
        .send_json()
        .await;
    assert_eq!(me["data"]["user"]["email"], "bob@example.com");
    assert_eq!(me["data"]["role"], "viewer");

    // It is listed among bob's devices and can be revoked like keygate's own.
    let list: Value = bearer(&token)
        .get(kg.control_url("/v1/auth/tokens"))
        .send_json()
        .await;
    let external = &list["data"][0];
    assert_eq!(external["type"], "external");
    assert_eq!(external["label"], "corporate sso");
    assert_eq!(external["current"], true);

    bearer(&token)
        .delete(kg.control_url(&format!(
            "/v1/auth/tokens/{}",
            external["id"].as_str().unwrap()
        )))
        .expect(StatusCode::OK)
        .await;
    let (status, body) = get_status(&kg, &token, "/v1/files/local/shared/x.txt").await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(body["error"]["details"]["reason"], "revoked");

    // The issuer rotates its key: keygate fetches the set again on the unknown kid.
    *served.lock().unwrap() = json!({ "keys": [jwk2] });
    tokio::time::sleep(Duration::from_millis(10_500)).await;
    let rotated = sign(
        &key2,
        "k2",
        &json!({"iss": "https://sso.test", "aud": "files", "sub": "00u1",
        "upn": "bob@example.com", "iat": t, "exp": t + 600, "jti": "second"}),
    );
    assert_eq!(
        get_status(&kg, &rotated, "/v1/files/local/shared/x.txt")
            .await
            .0,
        StatusCode::OK
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_signing_key_keeps_old_tokens_valid_and_signs_new_ones() {
    let backend = Backend::start();
    let kg = Keygate::start(&[backend.addr], "");
    let before = login(&kg, "mobile").await;
    let old = before["token"].as_str().unwrap().to_owned();
    let kid_of = |t: &str| -> Value {
        serde_json::from_slice::<Value>(
            &URL_SAFE_NO_PAD
                .decode(t.split('.').next().unwrap())
                .unwrap(),
        )
        .unwrap()["kid"]
            .clone()
    };
    let out = kg.cli(&["signing-keys", "rotate"]);
    assert!(out.contains("signs from now on"), "{out}");
    let listed = kg.cli(&["signing-keys", "list", "--json"]);
    let listed: Value = serde_json::from_str(&listed).unwrap();
    assert_eq!(listed.as_array().unwrap().len(), 2);
    assert_eq!(listed[0]["signing"], true);
    assert_eq!(listed[1]["signing"], false);
    assert!(listed[1]["retireAt"].is_string());

    // The running keygate picks the new key up (it polls), then publishes both and signs
    // with the new one.
    let deadline = Instant::now() + Duration::from_secs(20);
    let jwks = loop {
        let jwks: Value = reqwest::get(kg.control_url("/.well-known/jwks.json"))
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if jwks["keys"].as_array().unwrap().len() == 2 || Instant::now() > deadline {
            break jwks;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    assert_eq!(jwks["keys"].as_array().unwrap().len(), 2, "{jwks}");
    let after = login(&kg, "mobile").await;
    let new = after["token"].as_str().unwrap();
    assert_eq!(kid_of(new), listed[0]["kid"]);
    assert_eq!(kid_of(&old), listed[1]["kid"]);
    for t in [old.as_str(), new] {
        assert_eq!(
            get_status(&kg, t, "/v1/folders/local").await.0,
            StatusCode::OK
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_plane_bodies_and_logins_are_bounded() {
    let backend = Backend::start();
    let kg = Keygate::start(&[backend.addr], "[tokens]\nmax_scoped_per_user = 2\n");
    let url = kg.control_url("/v1/auth/login");
    let creds = json!({"email": ADA.0, "password": ADA.1});
    // Not JSON: a plain form post from another site cannot pass for an API call.
    let body = reqwest::Client::new()
        .post(&url)
        .header("content-type", "application/x-www-form-urlencoded")
        .body(creds.to_string())
        .expect(StatusCode::UNSUPPORTED_MEDIA_TYPE)
        .await;
    assert_eq!(body["error"]["code"], "UNSUPPORTED_MEDIA_TYPE");
    // A login started by another site's page (login CSRF) is refused; no Origin is fine.
    let body = reqwest::Client::new()
        .post(&url)
        .header("origin", "https://evil.example")
        .json(&creds)
        .expect(StatusCode::FORBIDDEN)
        .await;
    assert_eq!(body["error"]["details"]["restriction"], "csrf");
    // A body announced and never sent is cut at its deadline (10 s), with a 408.
    let control = kg.control;
    let answer = tokio::task::spawn_blocking(move || {
        let started = std::time::Instant::now();
        let (status, text) = raw_request(
            control,
            b"POST /v1/auth/login HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nContent-Length: 500\r\n\r\n{",
        );
        (status, text, started.elapsed())
    })
    .await
    .unwrap();
    assert_eq!(answer.0, 408, "{}", answer.1);
    assert!(answer.2 < Duration::from_secs(15), "{:?}", answer.2);
    // Scoped tokens are capped per user ([tokens] max_scoped_per_user = 2 here).
    let session = login(&kg, "mobile").await;
    let token = session["token"].as_str().unwrap().to_owned();
    let mint = || {
        bearer(&token)
            .post(kg.control_url("/v1/auth/tokens"))
            .json(&json!({"permissions": ["files.read"]}))
    };
    mint().expect(StatusCode::CREATED).await;
    mint().expect(StatusCode::CREATED).await;
    let body = mint().expect(StatusCode::CONFLICT).await;
    assert!(body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("scoped tokens"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn csrf_refusals_on_the_control_plane_count_against_the_address() {
    let backend = Backend::start();
    let kg = Keygate::start(&[backend.addr], "[auth]\nforbidden_per_minute = 2\n");
    let (status, _, headers) = login_as(&kg, ADA, "session").await;
    assert_eq!(status, StatusCode::OK);
    let cookie = headers["set-cookie"]
        .to_str()
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_owned();
    let forged = || {
        reqwest::Client::new()
            .post(kg.control_url("/v1/keys"))
            .header("cookie", &cookie)
            .header("origin", "https://evil.example")
            .json(&json!({"name": "x", "scopes": ["read"]}))
    };
    // Two a minute are refused 403 (the quota); after that the address is throttled, as on
    // the data plane: both planes count through the same door.
    let mut statuses = Vec::new();
    for _ in 0..4 {
        statuses.push(forged().send().await.unwrap().status());
    }
    assert_eq!(statuses[0], StatusCode::FORBIDDEN);
    assert_eq!(statuses[3], StatusCode::TOO_MANY_REQUESTS, "{statuses:?}");
}
