//! The web console in a real browser (headless chromium through WebDriver) against real
//! keygate processes: signing in, keys created, used, rotated and revoked from the page, the
//! usage chart, who sees whose keys, and the page's security headers and CSRF defence.

mod common;

use common::*;
use reqwest::StatusCode;
use serde_json::{json, Value};

const ADA: (&str, &str) = ("ada@example.com", "ada's long password");
const BOB: (&str, &str) = ("bob@example.com", "bob's own long password");

fn put_file(backend: &Backend, rel: &str, bytes: &[u8]) {
    let path = backend.root().join("local").join(rel);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, bytes).unwrap();
}

async fn sign_in(browser: &Browser, kg: &Keygate, (email, password): (&str, &str)) {
    browser.goto(&kg.control_url("/console/")).await;
    browser.fill("#sign-in-email", email).await;
    browser.fill("#sign-in-password", password).await;
    browser.click("#sign-in-form button[type=submit]").await;
    browser.text_with("#who-name", email).await;
}

/// The row of the key named `name` in the keys table.
fn row(name: &str) -> String {
    format!("#keys-table tr[data-key-name=\"{name}\"]")
}

/// Status of a GET of `path` on the data plane with `key`.
async fn data_status(kg: &Keygate, key: &str, path: &str) -> StatusCode {
    client_with_key(key)
        .get(kg.url(path))
        .send()
        .await
        .unwrap()
        .status()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_signs_in_and_creates_uses_rotates_and_revokes_a_key_in_the_browser() {
    if !browser_installed() {
        return;
    }
    let backend = Backend::start();
    put_file(&backend, "docs/report.txt", b"quarterly numbers");
    let kg = Keygate::start(&[backend.addr], "");
    let browser = Browser::start("keys").await;

    // The page and everything it loads carry the strict policy, and nothing is cached.
    for asset in ["/console/", "/console/console.js", "/console/console.css"] {
        let r = reqwest::get(kg.control_url(asset)).await.unwrap();
        assert_eq!(r.status(), StatusCode::OK, "{asset}");
        let csp = r.headers()["content-security-policy"].to_str().unwrap();
        for directive in [
            "default-src 'none'",
            "script-src 'self'",
            "frame-ancestors 'none'",
        ] {
            assert!(csp.contains(directive), "{asset}: {csp}");
        }
        assert!(!csp.contains("unsafe-inline"), "{csp}");
        assert_eq!(r.headers()["x-frame-options"], "DENY");
        assert_eq!(r.headers()["cache-control"], "no-store");
    }

    browser.goto(&kg.control_url("/console/")).await;
    browser.shown("#sign-in-form").await;
    browser.screenshot("sign-in").await;
    browser.assert_quiet_console("the sign-in page").await;

    // A wrong password says so, and signs nobody in.
    browser.fill("#sign-in-email", ADA.0).await;
    browser.fill("#sign-in-password", "not the password").await;
    browser.click("#sign-in-form button[type=submit]").await;
    browser
        .text_with("#problem", "Wrong email or password.")
        .await;
    assert!(browser.text("#who-name").await.is_empty());
    // The refused login is a 401 the console expected and explained: drop its log line.
    let _ = browser.console().await;

    sign_in(&browser, &kg, ADA).await;
    browser.shown(&row("full access")).await;

    // Create a read-only key for the local provider's /docs, expiring in 30 days.
    browser.fill("#create-name", "browser key").await;
    browser.click("#create-scope-read").await;
    browser.click("#where-some").await;
    browser.fill("#grant-path-0", "/docs").await;
    browser
        .client
        .find(fantoccini::Locator::Css(
            "#create-expiry option[value='30d']",
        ))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    browser.click("#create-form button[type=submit]").await;
    let key = browser.shown("#secret-value").await.text().await.unwrap();
    assert!(key.starts_with("kg_"), "the page shows the new key: {key}");
    assert!(browser
        .text("#secret-box")
        .await
        .contains("it will not be shown again"));
    let listed = browser.text_with(&row("browser key"), "read").await;
    assert!(listed.contains("local:/docs"), "{listed}");
    browser.screenshot("new-key").await;
    browser.click("#secret-done").await;
    assert!(browser.text("#secret-value").await.is_empty());

    // The key from the page works on the data plane, within its base path only.
    let r = client_with_key(&key)
        .get(kg.url("/v1/files/local/docs/report.txt"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.bytes().await.unwrap().as_ref(), b"quarterly numbers");
    for _ in 0..2 {
        assert_eq!(
            data_status(&kg, &key, "/v1/files/local/docs/report.txt").await,
            StatusCode::OK
        );
    }
    // A write is beyond `read`: refused, and counted as denied.
    let r = client_with_key(&key)
        .put(kg.url("/v1/files/local/docs/new.txt"))
        .body("x")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);

    // The usage the page shows is the requests just made: 4, one denied.
    let id = browser
        .shown(&row("browser key"))
        .await
        .attr("data-key-id")
        .await
        .unwrap()
        .unwrap();
    let totals = wait_for_usage(&kg, &id, 4).await;
    assert_eq!(totals["denied"], 1, "{totals}");
    browser
        .click(&format!("{} button.usage", row("browser key")))
        .await;
    browser
        .text_with("#usage-title", "4 requests, 1 denied")
        .await;
    let today = time::OffsetDateTime::now_utc().date().to_string();
    let day = format!("#usage-table tr[data-day=\"{today}\"]");
    assert_eq!(browser.text(&format!("{day} td.requests")).await, "4");
    assert_eq!(browser.text(&format!("{day} td.denied")).await, "1");
    let bar = browser
        .shown(&format!("#usage-chart g[data-day=\"{today}\"]"))
        .await;
    assert_eq!(
        bar.attr("data-requests").await.unwrap().as_deref(),
        Some("4")
    );
    browser.screenshot("usage").await;

    // Rotate: the page shows the successor once; the old key is refused, the new one works.
    browser
        .click(&format!("{} button.rotate", row("browser key")))
        .await;
    browser.confirm().await;
    browser.text_with("#secret-title", "The new key for").await;
    let rotated = browser.text("#secret-value").await;
    assert!(rotated.starts_with("kg_") && rotated != key, "{rotated}");
    assert_eq!(
        data_status(&kg, &key, "/v1/files/local/docs/report.txt").await,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        data_status(&kg, &rotated, "/v1/files/local/docs/report.txt").await,
        StatusCode::OK
    );
    browser.click("#secret-done").await;

    // Reloading the page keeps the session, and its writes still carry the CSRF token (from
    // /v1/me): revoke the rotated key from the reloaded page.
    browser.client.refresh().await.unwrap();
    browser.text_with("#who-name", ADA.0).await;
    let active = format!("{}.active", row("browser key"));
    browser.click(&format!("{active} button.revoke")).await;
    browser.confirm().await;
    browser.text_with("#notice", "is revoked").await;
    assert_eq!(
        data_status(&kg, &rotated, "/v1/files/local/docs/report.txt").await,
        StatusCode::UNAUTHORIZED
    );
    browser
        .shown(&format!("{}.revoked", row("browser key")))
        .await;
    browser.screenshot("keys").await;

    // A write from the page without the CSRF token is refused, and creates nothing.
    let answer = browser
        .run(
            r#"const done = arguments[arguments.length - 1];
            fetch("/v1/keys", {method: "POST", headers: {"Content-Type": "application/json"},
                body: JSON.stringify({name: "forged", scopes: ["admin"]})})
              .then(async r => done({status: r.status, body: await r.json()}));"#,
        )
        .await;
    assert_eq!(answer["status"], 403, "{answer}");
    assert_eq!(answer["body"]["error"]["details"]["restriction"], "csrf");
    let keys = kg
        .operator()
        .get(kg.control_url("/v1/keys"))
        .expect(StatusCode::OK)
        .await;
    assert!(!keys["data"]
        .as_array()
        .unwrap()
        .iter()
        .any(|k| k["name"] == "forged"));
    // That refusal was the test's, not the console's: drop its log line.
    let _ = browser.console().await;

    // Devices: this browser's session is marked; a scoped token is minted and shown once.
    browser.click("#nav-devices").await;
    browser
        .text_with("#tokens-table tr.current", "this browser")
        .await;
    browser.fill("#mint-name", "nightly report").await;
    browser.click("#mint-scope-files_read").await;
    browser.click("#mint-form button[type=submit]").await;
    let token = browser.shown("#token-value").await.text().await.unwrap();
    assert_eq!(
        data_status(&kg, &token, "/v1/files/local/docs/report.txt").await,
        StatusCode::OK
    );
    browser.screenshot("devices").await;
    browser
        .assert_quiet_console("the keys and devices pages")
        .await;

    // Signing out ends the session: the page is back at the sign-in form, and the old
    // cookie no longer reads keys.
    browser.click("#sign-out").await;
    browser.shown("#sign-in-form").await;
    browser.client.refresh().await.unwrap();
    browser.shown("#sign-in-form").await;
    assert!(browser.text("#who-name").await.is_empty());
}

/// Waits until the key's usage counts `requests`; returns its totals.
async fn wait_for_usage(kg: &Keygate, id: &str, requests: i64) -> Value {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let usage = kg
            .operator()
            .get(kg.control_url(&format!("/v1/keys/{id}/usage")))
            .expect(StatusCode::OK)
            .await;
        let totals = usage["data"]["totals"].clone();
        if totals["requests"] == requests {
            return totals;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "usage never reached {requests}: {totals}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_workspace_admin_sees_a_members_keys_and_the_member_sees_only_their_own() {
    if !browser_installed() {
        return;
    }
    let backend = Backend::start();
    let kg = Keygate::start(&[backend.addr], "");
    cli_ok(
        &kg.db.url(),
        &["users", "add", BOB.0, "--password-stdin"],
        Some(&format!("{}\n", BOB.1)),
    );
    kg.cli(&[
        "members",
        "add",
        "--workspace",
        "acme",
        "--user",
        BOB.0,
        "--role",
        "editor",
    ]);
    kg.create_key(
        json!({"name": "bob's sync", "scopes": ["write"], "owner": BOB.0,
        "providers": [{"provider": "local", "basePath": "/sync"}]}),
    )
    .await;

    let browser = Browser::start("members").await;
    // An account that keeps failing is throttled, and the page says for how long.
    browser.goto(&kg.control_url("/console/")).await;
    browser.fill("#sign-in-email", "mallory@example.com").await;
    for attempt in 1..=6 {
        browser
            .fill("#sign-in-password", &format!("guess {attempt}"))
            .await;
        browser.click("#sign-in-form button[type=submit]").await;
        let said = if attempt <= 5 {
            "Wrong email or password."
        } else {
            "Too many attempts. Try again in"
        };
        browser.text_with("#problem", said).await;
        // The next attempt's answer must be a new one: clear the message the page showed.
        browser
            .run("document.getElementById('problem').textContent = ''; arguments[0]();")
            .await;
    }
    // The refusals were the test's own: drop their log lines.
    let _ = browser.console().await;

    sign_in(&browser, &kg, BOB).await;
    browser.shown(&row("bob's sync")).await;
    assert!(
        browser.text(&row("full access")).await.is_empty(),
        "a member sees the admin's key"
    );
    let offered = browser
        .client
        .find(fantoccini::Locator::Css("#all-keys-label"))
        .await
        .unwrap()
        .is_displayed()
        .await
        .unwrap();
    assert!(!offered, "a member is offered every key of the workspace");
    browser.click("#sign-out").await;
    browser.shown("#sign-in-form").await;

    // The page offers a member no wider list; the API answers the same when asked directly:
    // the policies decide, not the page.
    let session = reqwest::Client::builder().build().unwrap();
    let login: Value = session
        .post(kg.control_url("/v1/auth/login"))
        .json(&json!({"email": BOB.0, "password": BOB.1, "type": "access"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let names: Vec<Value> = bearer(login["data"]["accessToken"].as_str().unwrap())
        .get(kg.control_url("/v1/keys?all=true"))
        .expect(StatusCode::OK)
        .await["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["name"].clone())
        .collect();
    assert_eq!(names, [json!("bob's sync")]);

    sign_in(&browser, &kg, ADA).await;
    assert!(browser.text(&row("bob's sync")).await.is_empty());
    browser.click("#all-keys").await;
    let bobs = browser.text_with(&row("bob's sync"), BOB.0).await;
    assert!(bobs.contains("write"), "{bobs}");
    browser.shown(&row("full access")).await;
    browser.screenshot("workspace-keys").await;

    // Check access: how the policies decide a request with the member's key, and why.
    browser.click("#nav-policy").await;
    let choice = browser.text_with("#check-key", "bob's sync").await;
    assert!(choice.contains(BOB.0), "{choice}");
    let check = |path: &'static str| {
        let browser = &browser;
        async move {
            browser
                .client
                .find(fantoccini::Locator::Css("#check-key"))
                .await
                .unwrap()
                .select_by_value(&member_key_option(browser).await)
                .await
                .unwrap();
            browser.fill("#check-path", path).await;
            browser.click("#check-form button[type=submit]").await;
        }
    };
    check("/v1/files/local/sync/a.txt").await;
    browser.text_with("#check-result", "Allowed").await;
    check("/v1/files/local/elsewhere.txt").await;
    let denied = browser.text_with("#check-result", "Denied").await;
    assert!(denied.contains("outside-base-path"), "{denied}");
    browser.screenshot("check-access").await;

    // The policy status is the operator's: a wrong token is refused and the user stays signed
    // in; the operator token shows the running set, as /v1/admin/policy has it.
    browser
        .fill("#operator-token", "not-the-operator-token")
        .await;
    browser.click("#operator-form button[type=submit]").await;
    browser
        .text_with("#problem", "That is not the operator token.")
        .await;
    browser.text_with("#who-name", ADA.0).await;
    let _ = browser.console().await;
    browser.fill("#operator-token", OPERATOR_TOKEN).await;
    browser.click("#operator-form button[type=submit]").await;
    let status = kg
        .operator()
        .get(kg.control_url("/v1/admin/policy"))
        .expect(StatusCode::OK)
        .await;
    let hash = status["data"]["hash"].as_str().unwrap();
    browser.text_with("#policy-status", hash).await;
    browser.text_with("#policy-files", "management.cedar").await;
    browser.click("#nav-keys").await;
    // The admin revokes the member's key from the page.
    browser
        .click(&format!("{} button.revoke", row("bob's sync")))
        .await;
    browser.confirm().await;
    browser.text_with("#notice", "is revoked").await;
    browser.assert_quiet_console("the workspace's keys").await;

    // At a phone's width the page is as wide as the screen: the tables scroll on their own.
    browser.client.set_window_size(390, 844).await.unwrap();
    browser.client.refresh().await.unwrap();
    browser.shown(&row("full access")).await;
    let widths = browser
        .run("arguments[0]([document.documentElement.scrollWidth, window.innerWidth]);")
        .await;
    assert!(
        widths[0].as_i64().unwrap() <= widths[1].as_i64().unwrap(),
        "the page is wider than a phone: {widths}"
    );
    browser.screenshot("phone").await;
}

/// `keygate demo` prints the console's address and the demo user's password, and they work.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_prints_the_console_and_its_user_signs_in_there() {
    if !browser_installed() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = std::process::Command::new(bin("keygate"));
    cmd.args([
        "demo",
        "--listen",
        "127.0.0.1:0",
        "--control-listen",
        "127.0.0.1:0",
        "--backend-listen",
        "127.0.0.1:0",
    ]);
    let (_demo, found) = spawn_and_read(
        cmd,
        dir.path().join("demo.log"),
        &[
            "  web console    http://",
            "  workspace demo, provider local, user demo@example.com (admin), password ",
        ],
    );
    let console = format!("http://{}", found[0].split_whitespace().next().unwrap());
    assert!(console.ends_with("/console/"), "{console}");
    let password = found[1].trim();

    let browser = Browser::start("demo").await;
    browser.goto(&console).await;
    browser.fill("#sign-in-email", "demo@example.com").await;
    browser.fill("#sign-in-password", password).await;
    browser.click("#sign-in-form button[type=submit]").await;
    browser
        .text_with("#who-name", "demo@example.com · demo (admin)")
        .await;
    browser.shown("#keys-table tbody tr").await;
    browser.assert_quiet_console("the demo's console").await;
}

/// The value of the member's key's option in the check-access form.
async fn member_key_option(browser: &Browser) -> String {
    let values = browser
        .run(
            "arguments[0]([...document.querySelectorAll('#check-key option')]\
             .filter(o => o.textContent.startsWith(\"bob's sync\")).map(o => o.value));",
        )
        .await;
    values[0]
        .as_str()
        .expect("the member's key is offered")
        .to_owned()
}
