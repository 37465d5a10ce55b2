//! HTTPS through real processes and real TLS connections: both planes, HTTPS-only mode and the
//! plain listener, revoking a key sent in clear, certificate reload with connections open,
//! backends over TLS (verified, named, mutual), and a browser session over HTTPS.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::*;
use reqwest::StatusCode;
use serde_json::Value;

/// A CA, a certificate for 127.0.0.1 and localhost in `dir`, and the `[tls]` section using it.
fn tls_config(ca: &TestCa, dir: &Path, extra: &str) -> String {
    let (cert, key) = ca
        .issue(
            "keygate under test",
            &["localhost", "127.0.0.1"],
            KeyKind::Ecdsa,
        )
        .write(dir, "server");
    format!(
        "[tls]\ncert_file = {:?}\nkey_file = {:?}\n{extra}",
        cert.display().to_string(),
        key.display().to_string()
    )
}

fn with_key(client: reqwest::RequestBuilder, key: &str) -> reqwest::RequestBuilder {
    client.header("x-api-key", key)
}

async fn metrics(kg: &Keygate, ca: &TestCa) -> String {
    https_client(&ca.pem)
        .get(kg.control_url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

/// Polls `f` until it holds (10 s at most).
async fn eventually<F, Fut>(what: &str, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(10);
    while !f().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_planes_speak_https_only_with_hsts() {
    let backend = Backend::start();
    let ca = TestCa::new("test CA");
    let certs = tempfile::tempdir().unwrap();
    let kg = Keygate::start(
        &[backend.addr],
        &tls_config(&ca, certs.path(), "hsts_max_age = \"30d\"\n"),
    );
    let client = https_client(&ca.pem);

    // The data plane, over TLS 1.3 and over TLS 1.2: forwarded, with HSTS.
    with_key(client.put(kg.url("/v1/files/local/a.txt")), &kg.key)
        .body("over https")
        .expect(StatusCode::CREATED)
        .await;
    for version in [
        reqwest::tls::Version::TLS_1_2,
        reqwest::tls::Version::TLS_1_3,
    ] {
        let pinned = https_builder(&ca.pem)
            .min_tls_version(version)
            .max_tls_version(version)
            .build()
            .unwrap();
        let r = with_key(pinned.get(kg.url("/v1/files/local/a.txt")), &kg.key)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK, "{version:?}");
        assert_eq!(
            r.headers()["strict-transport-security"],
            "max-age=2592000",
            "{version:?}"
        );
        assert_eq!(r.bytes().await.unwrap().as_ref(), b"over https");
    }
    // Refusals carry it too.
    let r = client
        .get(kg.url("/v1/files/local/a.txt"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    assert!(r.headers().contains_key("strict-transport-security"));

    // The control plane.
    let r = client.get(kg.control_url("/healthz")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.headers()["strict-transport-security"], "max-age=2592000");

    // Plain HTTP on the TLS ports gets no HTTP answer at all, and a client that does not trust
    // the CA does not get through.
    for url in [
        format!("http://{}/v1/files/local/a.txt", kg.data),
        format!("http://{}/healthz", kg.control),
    ] {
        let r = reqwest::Client::new().get(&url).send().await;
        assert!(r.is_err(), "{url} answered plain HTTP");
    }
    let stranger = https_client(&TestCa::new("another CA").pem);
    assert!(stranger
        .get(kg.control_url("/healthz"))
        .send()
        .await
        .is_err());
    let m = metrics(&kg, &ca).await;
    assert!(
        !m.contains("keygate_tls_handshake_failures_total{plane=\"data\"} 0"),
        "the failed handshakes are counted:\n{m}"
    );
}

/// A client that opens a connection and never says hello is cut at the header deadline on
/// both planes, and counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_tls_client_is_cut_at_the_header_deadline() {
    use tokio::io::AsyncReadExt;
    let backend = Backend::start();
    let ca = TestCa::new("test CA");
    let certs = tempfile::tempdir().unwrap();
    let kg = Keygate::start(
        &[backend.addr],
        &format!(
            "[server]\nheader_timeout = \"1s\"\n{}",
            tls_config(&ca, certs.path(), "")
        ),
    );
    for addr in [kg.data, kg.control] {
        let mut silent = tokio::net::TcpStream::connect(addr).await.unwrap();
        let started = Instant::now();
        let mut buf = [0u8; 16];
        let read = tokio::time::timeout(Duration::from_secs(10), silent.read(&mut buf)).await;
        assert!(
            matches!(read, Ok(Ok(0)) | Ok(Err(_))),
            "{addr}: the connection was not closed"
        );
        assert!(
            started.elapsed() >= Duration::from_millis(900),
            "{addr}: closed before the deadline"
        );
    }
    let m = metrics(&kg, &ca).await;
    for plane in ["data", "control"] {
        assert!(
            m.contains(&format!(
                "keygate_tls_handshake_failures_total{{plane=\"{plane}\"}} 1"
            )),
            "{plane}:\n{m}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_plain_listener_redirects_or_refuses_and_never_checks_a_credential() {
    let backend = Backend::start();
    let ca = TestCa::new("test CA");
    let certs = tempfile::tempdir().unwrap();
    let kg = Keygate::start(
        &[backend.addr],
        &tls_config(&ca, certs.path(), "plain_listen = \"127.0.0.1:0\"\n"),
    );
    let plain = format!("http://{}", kg.plain.unwrap());
    let no_redirects = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();

    // A GET without a credential: to the same place over HTTPS.
    let r = no_redirects
        .get(format!("{plain}/v1/folders/local?limit=5"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::PERMANENT_REDIRECT);
    assert_eq!(
        r.headers()["location"],
        format!(
            "https://127.0.0.1:{}/v1/folders/local?limit=5",
            kg.data.port()
        )
        .as_str()
    );
    assert_eq!(r.headers()["cache-control"], "no-store");
    // A Host the certificate does not name, or that is not a host at all, gets no redirect.
    for host in [
        "evil.example",
        "evil.example/@x",
        "[@evil.example#]",
        "[::1]:8443",
        "127.0.0.1:80@evil.example",
    ] {
        let r = no_redirects
            .get(format!("{plain}/x"))
            .header("host", host)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::FORBIDDEN, "{host}");
        assert!(!r.headers().contains_key("location"), "{host}");
    }
    // The certificate's other name works (with the port of the HTTPS listener).
    let r = no_redirects
        .get(format!("{plain}/y"))
        .header("host", "LOCALHOST:80")
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.headers()["location"],
        format!("https://localhost:{}/y", kg.data.port()).as_str()
    );

    // With a credential, or a write: refused in the JSON shape, never forwarded.
    for req in [
        with_key(
            no_redirects.get(format!("{plain}/v1/files/local/a.txt")),
            &kg.key,
        ),
        no_redirects
            .get(format!("{plain}/v1/files/local/a.txt"))
            .bearer_auth(&kg.key),
        no_redirects
            .put(format!("{plain}/v1/files/local/a.txt"))
            .body("in clear"),
        // A key in the query is a credential too: never echoed into a redirect.
        no_redirects.get(format!("{plain}/v1/files/local/a.txt?api_key={}", kg.key)),
    ] {
        let r = req.send().await.unwrap();
        assert_eq!(r.status(), StatusCode::FORBIDDEN);
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["success"], false);
        assert_eq!(body["error"]["code"], "HTTPS_REQUIRED");
        assert_eq!(body["error"]["details"]["credentialRevoked"], false);
        assert!(body["error"]["requestId"].is_string());
    }
    assert!(!backend.root().join("local/a.txt").exists());
    // The key was not looked up, let alone revoked: it still works over HTTPS.
    let client = https_client(&ca.pem);
    with_key(client.get(kg.url("/v1/folders/local")), &kg.key)
        .expect(StatusCode::OK)
        .await;
    let m = metrics(&kg, &ca).await;
    assert!(
        m.contains("keygate_plain_http_requests_total{outcome=\"redirected\"} 2"),
        "{m}"
    );
    assert!(
        m.contains("keygate_plain_http_requests_total{outcome=\"refused\"} 9"),
        "{m}"
    );
    assert!(
        m.contains("keygate_plain_http_requests_total{outcome=\"revoked\"} 0"),
        "{m}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_sent_in_clear_is_revoked_when_configured_and_its_owner_sees_why() {
    let backend = Backend::start();
    let ca = TestCa::new("test CA");
    let certs = tempfile::tempdir().unwrap();
    let kg = Keygate::start(
        &[backend.addr],
        &tls_config(
            &ca,
            certs.path(),
            "plain_listen = \"127.0.0.1:0\"\nrevoke_credentials_sent_in_clear = true\n",
        ),
    );
    let plain = format!("http://{}", kg.plain.unwrap());
    let client = https_client(&ca.pem);
    with_key(client.get(kg.url("/v1/folders/local")), &kg.key)
        .expect(StatusCode::OK)
        .await;

    // A key nobody issued, in clear: refused, nothing to revoke.
    let r = reqwest::Client::new()
        .get(format!("{plain}/v1/folders/local"))
        .header("x-api-key", "kg_notakey")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"]["details"]["credentialRevoked"], false);

    // Six well-formed keys nobody issued in one request: at most four are looked up (and
    // counted as failed authentications), whatever the request carries.
    let unknown = |m: &str| -> f64 {
        m.lines()
            .find(|l| l.starts_with("keygate_auth_failures_total{reason=\"unknown\"}"))
            .and_then(|l| l.rsplit(' ').next()?.parse().ok())
            .unwrap_or(0.0)
    };
    let before = unknown(&metrics(&kg, &ca).await);
    let fresh: Vec<String> = (0..6)
        .map(|_| keygate::model::KeyStyle::default().generate())
        .collect();
    let r = reqwest::Client::new()
        .get(format!(
            "{plain}/v1/folders/local?a={}&b={}&c={}&d={}",
            fresh[2], fresh[3], fresh[4], fresh[5]
        ))
        .bearer_auth(&fresh[0])
        .header("x-api-key", &fresh[1])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    assert_eq!(unknown(&metrics(&kg, &ca).await) - before, 4.0);

    // A key sent as a Basic password (what WebDAV clients do) is in clear all the same.
    let dav_key = client
        .post(kg.control_url("/v1/keys"))
        .bearer_auth(OPERATOR_TOKEN)
        .json(&serde_json::json!({"name": "dav", "owner": "ada@example.com", "scopes": ["read"]}))
        .expect(StatusCode::CREATED)
        .await["data"]["key"]
        .as_str()
        .unwrap()
        .to_owned();
    let r = reqwest::Client::new()
        .get(format!("{plain}/v1/folders/local"))
        .basic_auth("ada@example.com", Some(&dav_key))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"]["details"]["credentialRevoked"], true);

    // The real key, in clear, in the query of a request that is malformed besides (two
    // different credentials, a credential in the query): revoked at once all the same.
    let r = reqwest::Client::new()
        .get(format!(
            "{plain}/v1/folders/local?next=%2Fx%3Fk%3D{}",
            kg.key
        ))
        .bearer_auth("junk")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"]["code"], "HTTPS_REQUIRED");
    assert_eq!(body["error"]["details"]["credentialRevoked"], true);
    let r = with_key(client.get(kg.url("/v1/folders/local")), &kg.key)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"]["details"]["reason"], "revoked");

    // Its owner sees why.
    let keys = client
        .get(kg.control_url("/v1/keys"))
        .bearer_auth(OPERATOR_TOKEN)
        .expect(StatusCode::OK)
        .await;
    let listed = keys["data"].as_array().expect("a list of keys");
    let revoked: Vec<&Value> = listed.iter().filter(|k| k["status"] == "revoked").collect();
    assert_eq!(revoked.len(), 2, "{keys}");
    assert!(
        revoked
            .iter()
            .all(|k| k["revokedReason"].as_str().unwrap().contains("plain HTTP")),
        "{keys}"
    );
    let m = metrics(&kg, &ca).await;
    assert!(
        m.contains("keygate_plain_http_requests_total{outcome=\"revoked\"} 2"),
        "{m}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_certificate_reaches_new_connections_and_a_broken_one_is_refused() {
    let backend = Backend::start();
    let ca = TestCa::new("test CA");
    let certs = tempfile::tempdir().unwrap();
    let first = ca.issue("first", &["localhost", "127.0.0.1"], KeyKind::Ecdsa);
    let (cert_path, key_path) = first.write(certs.path(), "server");
    let kg = Keygate::start(
        &[backend.addr],
        &format!(
            "[tls]\ncert_file = {:?}\nkey_file = {:?}\n",
            cert_path.display().to_string(),
            key_path.display().to_string()
        ),
    );
    // A client whose connection stays open across the reload.
    let open = https_client(&ca.pem);
    let r = with_key(open.get(kg.url("/v1/folders/local")), &kg.key)
        .send()
        .await
        .unwrap();
    assert_eq!(peer_certificate(&r), first.der());
    r.bytes().await.unwrap();

    // Renewal (an RSA certificate this time), noticed from the files changing.
    let second = ca.issue("second", &["localhost", "127.0.0.1"], KeyKind::Rsa);
    second.write(certs.path(), "server");
    let url = kg.url("/v1/folders/local");
    eventually("the new certificate on a new connection", || async {
        let r = with_key(https_client(&ca.pem).get(&url), &kg.key)
            .send()
            .await
            .unwrap();
        peer_certificate(&r) == second.der()
    })
    .await;
    // The open connection keeps its certificate and keeps working.
    let r = with_key(open.get(kg.url("/v1/folders/local")), &kg.key)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(peer_certificate(&r), first.der());

    // A broken renewal: a key that is not the certificate's. The served certificate stays and
    // keygate says why.
    let stray = ca.issue("stray", &["localhost"], KeyKind::Ecdsa);
    let third = ca.issue("third", &["localhost", "127.0.0.1"], KeyKind::Ecdsa);
    Issued {
        cert: third.cert.clone(),
        key: stray.key.clone(),
    }
    .write(certs.path(), "server");
    let client = https_client(&ca.pem);
    let status_url = kg.control_url("/v1/admin/tls");
    eventually("the failed reload in the status", || async {
        let s = client
            .get(&status_url)
            .bearer_auth(OPERATOR_TOKEN)
            .send_json()
            .await;
        s["data"]["lastError"].is_string()
    })
    .await;
    let s = client
        .get(&status_url)
        .bearer_auth(OPERATOR_TOKEN)
        .expect(StatusCode::OK)
        .await;
    assert_eq!(s["data"]["subject"], "CN=second", "{s}");
    assert!(
        s["data"]["lastError"]
            .as_str()
            .unwrap()
            .contains("does not belong"),
        "{s}"
    );
    let r = with_key(
        https_client(&ca.pem).get(kg.url("/v1/folders/local")),
        &kg.key,
    )
    .send()
    .await
    .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(peer_certificate(&r), second.der());
    // Asked for explicitly: refused with the reason, in the JSON shape.
    let refused = client
        .post(kg.control_url("/v1/admin/tls/reload"))
        .bearer_auth(OPERATOR_TOKEN)
        .expect(StatusCode::UNPROCESSABLE_ENTITY)
        .await;
    assert_eq!(refused["error"]["code"], "INVALID_CERTIFICATE");
    assert_eq!(
        refused["error"]["details"]["serving"]["subject"],
        "CN=second"
    );
    // Only the operator sees or reloads certificates.
    client
        .get(&status_url)
        .bearer_auth(&kg.key)
        .expect(StatusCode::FORBIDDEN)
        .await;
    let m = metrics(&kg, &ca).await;
    assert!(
        !m.contains("keygate_tls_certificate_reloads_total{result=\"error\"} 0"),
        "{m}"
    );
    assert!(
        !m.contains("keygate_tls_certificate_reloads_total{result=\"ok\"} 0"),
        "{m}"
    );

    // Fixed, and reloaded on SIGHUP as well.
    third.write(certs.path(), "server");
    let _ = std::process::Command::new("kill")
        .args(["-HUP", &kg.proc.pid().to_string()])
        .status();
    eventually("the fixed certificate", || async {
        let r = with_key(https_client(&ca.pem).get(&url), &kg.key)
            .send()
            .await
            .unwrap();
        peer_certificate(&r) == third.der()
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backends_over_tls_are_verified_by_name_and_ca_and_can_demand_a_client_certificate() {
    let backend = Backend::start();
    let ca = TestCa::new("backend CA");
    let certs = tempfile::tempdir().unwrap();
    std::fs::write(certs.path().join("ca.pem"), &ca.pem).unwrap();
    let ca_file = certs.path().join("ca.pem").display().to_string();
    let good = ca.issue(
        "storage",
        &["storage.internal", "127.0.0.1"],
        KeyKind::Ecdsa,
    );

    // Verified against the configured CA, by the configured name.
    let front = tls_front(backend.addr, &good, None).await;
    let (front, handshakes) = (front.addr, front.handshakes);
    let kg = Keygate::start(
        &[],
        &format!(
            "[upstream]\npeers = [\"https://{front}\"]\ntls_ca_file = {ca_file:?}\n\
             tls_server_name = \"storage.internal\"\n"
        ),
    );
    let client = client_with_key(&kg.key);
    client
        .put(kg.url("/v1/files/local/tls.txt"))
        .body("through TLS")
        .expect(StatusCode::CREATED)
        .await;
    assert_eq!(
        std::fs::read(backend.root().join("local/tls.txt")).unwrap(),
        b"through TLS"
    );
    // Many requests, few handshakes: connections to the backend are reused.
    for _ in 0..20 {
        client
            .get(kg.url("/v1/files/local/tls.txt"))
            .expect(StatusCode::OK)
            .await;
    }
    let made = handshakes.load(std::sync::atomic::Ordering::Relaxed);
    assert!(made <= 3, "{made} TLS handshakes for 21 requests");
    drop(kg);

    // A certificate for another name, one from a CA keygate does not trust, and the system's
    // roots alone: each a 502 in the JSON shape, counted, never a plain-text retry.
    let stranger = TestCa::new("unknown CA").issue("storage", &["127.0.0.1"], KeyKind::Ecdsa);
    let untrusted = tls_front(backend.addr, &stranger, None).await.addr;
    for config in [
        format!(
            "[upstream]\npeers = [\"https://{front}\"]\ntls_ca_file = {ca_file:?}\n\
             tls_server_name = \"other.internal\"\n"
        ),
        format!("[upstream]\npeers = [\"https://{untrusted}\"]\ntls_ca_file = {ca_file:?}\n"),
        format!("[upstream]\npeers = [\"https://{front}\"]\n"),
    ] {
        let kg = Keygate::start(&[], &config);
        let body = client_with_key(&kg.key)
            .get(kg.url("/v1/files/local/tls.txt"))
            .expect(StatusCode::BAD_GATEWAY)
            .await;
        assert_eq!(body["error"]["code"], "UPSTREAM_UNAVAILABLE", "{config}");
        let m = kg.metrics().await;
        let tls_errors: u64 = m
            .lines()
            .filter(|l| l.starts_with("keygate_upstream_errors_total{") && l.contains("TLS"))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
            .sum();
        assert!(tls_errors >= 1, "{config}\n{m}");
    }

    // Mutual TLS: the backend wants a client certificate of its CA.
    let mutual = tls_front(backend.addr, &good, Some(&ca.pem)).await.addr;
    let (client_cert, client_key) = ca
        .issue("keygate", &["keygate.internal"], KeyKind::Ecdsa)
        .write(certs.path(), "client");
    let kg = Keygate::start(
        &[],
        &format!(
            "[upstream]\npeers = [\"https://{mutual}\"]\ntls_ca_file = {ca_file:?}\n\
             tls_client_cert_file = {:?}\ntls_client_key_file = {:?}\n",
            client_cert.display().to_string(),
            client_key.display().to_string()
        ),
    );
    client_with_key(&kg.key)
        .get(kg.url("/v1/files/local/tls.txt"))
        .expect(StatusCode::OK)
        .await;
    drop(kg);
    let kg = Keygate::start(
        &[],
        &format!("[upstream]\npeers = [\"https://{mutual}\"]\ntls_ca_file = {ca_file:?}\n"),
    );
    client_with_key(&kg.key)
        .get(kg.url("/v1/files/local/tls.txt"))
        .expect(StatusCode::BAD_GATEWAY)
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_browser_session_works_end_to_end_over_https() {
    let backend = Backend::start();
    let ca = TestCa::new("test CA");
    let certs = tempfile::tempdir().unwrap();
    let kg = Keygate::start(&[backend.addr], &tls_config(&ca, certs.path(), ""));
    let client = https_client(&ca.pem);
    let r = client
        .post(kg.control_url("/v1/auth/login"))
        .json(&serde_json::json!({
            "email": "ada@example.com",
            "password": "ada's long password",
            "type": "session",
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert!(r.headers().contains_key("strict-transport-security"));
    let set_cookie = r.headers()["set-cookie"].to_str().unwrap().to_owned();
    assert!(
        set_cookie.starts_with("__Host-keygate_session="),
        "{set_cookie}"
    );
    for attribute in ["Secure", "HttpOnly", "SameSite=Strict", "Path=/"] {
        assert!(
            set_cookie.contains(attribute),
            "{attribute} in {set_cookie}"
        );
    }
    let body: Value = r.json().await.unwrap();
    let csrf = body["data"]["csrfToken"].as_str().unwrap().to_owned();
    let cookie = set_cookie.split(';').next().unwrap().to_owned();
    let origin = format!("https://{}", kg.data);

    // The browser's page writes and reads over HTTPS with the cookie alone (plus its CSRF
    // token for the write).
    client
        .put(kg.url("/v1/files/local/from-browser.txt"))
        .header("cookie", &cookie)
        .header("origin", &origin)
        .header("x-csrf-token", &csrf)
        .body("sent from a browser")
        .expect(StatusCode::CREATED)
        .await;
    let r = client
        .get(kg.url("/v1/files/local/from-browser.txt"))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.bytes().await.unwrap().as_ref(), b"sent from a browser");
    client
        .get(kg.control_url("/v1/me"))
        .header("cookie", &cookie)
        .expect(StatusCode::OK)
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_tls_demo_serves_https_with_its_throwaway_ca() {
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = std::process::Command::new(bin("keygate"));
    cmd.args([
        "demo",
        "--tls",
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
            "  data plane     https://",
            "  control plane  https://",
            "  TLS            a throwaway CA (",
            "  API key (full access)  ",
        ],
    );
    let (data, control) = (&found[0], &found[1]);
    let ca_path = found[2].split(')').next().unwrap();
    let key = &found[3];
    let ca = std::fs::read_to_string(ca_path).unwrap();
    let client = https_client(&ca);
    with_key(
        client.put(format!("https://{data}/v1/files/local/docs/hello.txt")),
        key,
    )
    .body("hello over https")
    .expect(StatusCode::CREATED)
    .await;
    let r = with_key(
        client.get(format!("https://{data}/v1/files/local/docs/hello.txt")),
        key,
    )
    .send()
    .await
    .unwrap();
    assert_eq!(r.bytes().await.unwrap().as_ref(), b"hello over https");
    client
        .get(format!("https://{control}/healthz"))
        .expect(StatusCode::OK)
        .await;
}

/// `keygate serve` on `config`, which must make it exit by itself; returns its stderr.
fn refused_start(config: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("keygate.toml");
    std::fs::write(&path, config).unwrap();
    let db = TestDb::sqlite();
    let mut child = std::process::Command::new(bin("keygate"))
        .arg("--config")
        .arg(&path)
        .args(["--database-url", &db.url(), "serve"])
        .args(["--listen", "127.0.0.1:0", "--control-listen", "127.0.0.1:0"])
        .env(
            "KEYGATE_POLICIES_DIR",
            Path::new(env!("CARGO_MANIFEST_DIR")).join("policies"),
        )
        .env("KEYGATE_KEYS_PEPPER", TEST_PEPPER)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("keygate started on:\n{config}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = child.wait_with_output().unwrap();
    assert!(!out.status.success());
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn certificates_that_do_not_load_stop_keygate_from_starting() {
    let ca = TestCa::new("test CA");
    let dir = tempfile::tempdir().unwrap();
    let good = ca.issue("good", &["localhost"], KeyKind::Ecdsa);
    let other = ca.issue("other", &["localhost"], KeyKind::Ecdsa);
    let (cert, _) = good.write(dir.path(), "good");
    let (_, stray_key) = other.write(dir.path(), "other");
    std::fs::write(dir.path().join("empty.pem"), "not a certificate\n").unwrap();
    let cert = cert.display().to_string();
    let stray_key = stray_key.display().to_string();
    let empty = dir.path().join("empty.pem").display().to_string();
    for (config, says) in [
        // The served certificate with a key that is not its own.
        (
            format!("[tls]\ncert_file = {cert:?}\nkey_file = {stray_key:?}\n"),
            "does not belong",
        ),
        // A backend CA bundle without a certificate.
        (
            format!("[upstream]\npeers = [\"https://127.0.0.1:9\"]\ntls_ca_file = {empty:?}\n"),
            "holds no certificate",
        ),
        // A client certificate for the backend with a key that is not its own.
        (
            format!(
                "[upstream]\npeers = [\"https://127.0.0.1:9\"]\n\
                 tls_client_cert_file = {cert:?}\ntls_client_key_file = {stray_key:?}\n"
            ),
            "does not belong",
        ),
    ] {
        let err = refused_start(&config);
        assert!(err.contains(says), "{config}\n{err}");
    }
}
