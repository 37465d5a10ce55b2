//! Faults around keygate: the database going away, backends that fail in every way, policy
//! files broken in every way. None of them may ever turn into an allow, hang a connection, or
//! replace the running policy set.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::*;
use reqwest::StatusCode;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_database_gone_cached_credentials_work_and_new_ones_get_503() {
    let Some(db) = TestDb::postgres().await else {
        return;
    };
    let proxy = Cuttable::start(db.server_addr().await).await;
    let db = db.through(&proxy.addr.to_string());
    let rec = Recorder::start().await;
    let kg = tokio::task::spawn_blocking(move || Keygate::start_with_db(&[rec.addr], "", db))
        .await
        .unwrap();
    let path = "/v1/files/local/a.txt";
    // The fixture's key is used once: its principal is cached.
    let cached = client_with_key(&kg.key);
    cached.get(kg.url(path)).expect(StatusCode::OK).await;
    // A second key exists but has never been used.
    let created: Value = kg
        .operator()
        .post(kg.control_url("/v1/keys"))
        .json(&json!({"name": "fresh", "scopes": ["read"], "owner": "ada@example.com"}))
        .expect(StatusCode::CREATED)
        .await;
    let fresh = created["data"]["key"].as_str().unwrap().to_owned();

    proxy.cut();
    // The cached principal keeps working for its cache lifetime.
    cached.get(kg.url(path)).expect(StatusCode::OK).await;
    // A credential keygate has not seen cannot be checked: 503, never an allow.
    for key in [fresh.as_str(), unissued_key().as_str()] {
        let body = client_with_key(key)
            .get(kg.url(path))
            .expect(StatusCode::SERVICE_UNAVAILABLE)
            .await;
        assert_eq!(body["error"]["code"], "UNAVAILABLE");
    }
    reqwest::get(kg.control_url("/readyz"))
        .await
        .map(|r| assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE))
        .unwrap();

    // Back again: the pool reconnects and the new key is served.
    proxy.restore();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let s = client_with_key(&fresh)
            .get(kg.url(path))
            .send()
            .await
            .unwrap()
            .status();
        if s == StatusCode::OK {
            break;
        }
        assert_eq!(
            s,
            StatusCode::SERVICE_UNAVAILABLE,
            "only 503 while reconnecting"
        );
        assert!(Instant::now() < deadline, "keygate did not reconnect");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// An upstream that accepts, reads, and then behaves as `answer` says.
async fn bad_backend(answer: &'static [u8], then_close: bool) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let _ = s.read(&mut buf).await;
                let _ = s.write_all(answer).await;
                if then_close {
                    let _ = s.shutdown().await;
                    return;
                }
                tokio::time::sleep(Duration::from_secs(60)).await;
            });
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backends_that_fail_are_answered_in_the_json_shape_and_never_hang() {
    let path = "/v1/files/local/a.txt";
    let timeouts = "[upstream]\nread_timeout = \"1s\"\nconnect_timeout = \"1s\"\n";
    // Down: nothing listens.
    let gone = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let kg = Keygate::start(&[gone], timeouts);
    let body = client_with_key(&kg.key)
        .get(kg.url(path))
        .expect(StatusCode::BAD_GATEWAY)
        .await;
    assert_eq!(body["error"]["code"], "UPSTREAM_UNAVAILABLE");
    drop(kg);

    // Slow: it reads the request and never answers.
    let slow = bad_backend(b"", false).await;
    let kg = Keygate::start(&[slow], timeouts);
    let started = Instant::now();
    let body = client_with_key(&kg.key)
        .get(kg.url(path))
        .expect(StatusCode::GATEWAY_TIMEOUT)
        .await;
    assert_eq!(body["error"]["code"], "UPSTREAM_TIMEOUT");
    assert!(started.elapsed() < Duration::from_secs(10));
    drop(kg);

    // Reset mid-body: it promises 1000 bytes, sends 10 and hangs up. The client's response
    // ends (short) instead of hanging.
    let cut = bad_backend(
        b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n0123456789",
        true,
    )
    .await;
    let kg = Keygate::start(&[cut], timeouts);
    let started = Instant::now();
    let r = client_with_key(&kg.key)
        .get(kg.url(path))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let got = tokio::time::timeout(Duration::from_secs(10), r.bytes()).await;
    match got {
        Ok(Ok(bytes)) => assert!(bytes.len() < 1000, "a short body cannot be whole"),
        Ok(Err(_)) => {}
        Err(_) => panic!("the client was left hanging"),
    }
    assert!(started.elapsed() < Duration::from_secs(10));
    drop(kg);

    // Stalled mid-body: it promises 100 bytes, sends 20 and stops. When keygate gives up on
    // it, what had come (the status, the headers, the 20 bytes) reaches the client before the
    // connection closes: it was not lost in keygate's write buffer.
    let stalled = bad_backend(
        b"HTTP/1.1 201 Created\r\nContent-Length: 100\r\n\r\n01234567890123456789",
        false,
    )
    .await;
    let kg = Keygate::start(&[stalled], timeouts);
    let r = tokio::time::timeout(
        Duration::from_secs(10),
        client_with_key(&kg.key).get(kg.url(path)).send(),
    )
    .await
    .expect("the client was left hanging")
    .expect("the response's head reaches the client");
    assert_eq!(r.status(), StatusCode::CREATED);
    let got = tokio::time::timeout(Duration::from_secs(10), r.bytes()).await;
    assert!(got.is_ok(), "the client was left hanging");
    let m = kg.metrics().await;
    assert!(m.contains("keygate_upstream_errors_total"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_broken_policy_reload_keeps_the_last_good_set_and_says_why() {
    let rec = Recorder::start().await;
    let kg = Keygate::start(&[rec.addr], "[policies]\nwatch = false\n");
    let dir = kg.policies();
    let reader = client_with_key(&kg.key);
    let path = "/v1/files/local/a.txt";
    let status = || async {
        kg.operator()
            .get(kg.control_url("/v1/admin/policy"))
            .send_json()
            .await["data"]
            .clone()
    };
    let good = status().await;
    let hash = good["hash"].as_str().unwrap().to_owned();
    let schema = std::fs::read_to_string(dir.join("keygate.cedarschema")).unwrap();
    type Break = Box<dyn Fn(&std::path::Path)>;
    let write = |name: &'static str, text: &'static str| -> Break {
        Box::new(move |d: &std::path::Path| std::fs::write(d.join(name), text).unwrap())
    };
    let cases: Vec<(&str, Break, Break)> = vec![
        (
            "syntax error",
            write("broken.cedar", "@id(\"x\")\npermit (principal, action resource);\n"),
            Box::new(|d| std::fs::remove_file(d.join("broken.cedar")).unwrap()),
        ),
        (
            "schema error",
            write("keygate.cedarschema", "namespace Keygate { entity Workspace "),
            {
                let schema = schema.clone();
                Box::new(move |d| std::fs::write(d.join("keygate.cedarschema"), &schema).unwrap())
            },
        ),
        (
            "duplicate @id",
            write("dup.cedar", "@id(\"scope-read\")\npermit (principal, action, resource);\n"),
            Box::new(|d| std::fs::remove_file(d.join("dup.cedar")).unwrap()),
        ),
        (
            "empty folder",
            Box::new(|d| {
                let aside = d.with_extension("aside");
                std::fs::rename(d, &aside).unwrap();
                std::fs::create_dir(d).unwrap();
            }),
            Box::new(|d| {
                std::fs::remove_dir(d).unwrap();
                std::fs::rename(d.with_extension("aside"), d).unwrap();
            }),
        ),
        (
            // A symlink to nothing: listed by the folder, unreadable (root reads any mode).
            "unreadable file",
            Box::new(|d| std::os::unix::fs::symlink("/nonexistent/keygate", d.join("gone.cedar")).unwrap()),
            Box::new(|d| std::fs::remove_file(d.join("gone.cedar")).unwrap()),
        ),
        (
            // What a reload sees when a file vanishes between listing and reading.
            "file vanishing mid-reload",
            Box::new(|d| {
                std::fs::write(d.join("tmp.cedar"), "").unwrap();
                std::os::unix::fs::symlink(d.join("tmp.cedar"), d.join("vanish.cedar")).unwrap();
                std::fs::remove_file(d.join("tmp.cedar")).unwrap();
            }),
            Box::new(|d| std::fs::remove_file(d.join("vanish.cedar")).unwrap()),
        ),
        (
            "a forbid that does not validate",
            write("forbid.cedar", "@id(\"no-x\")\nforbid (principal, action, resource) when { principal.nosuch == 1 };\n"),
            Box::new(|d| std::fs::remove_file(d.join("forbid.cedar")).unwrap()),
        ),
        (
            "half-written file",
            write("half.cedar", "@id(\"half\")\nforbid (principal, action, resou"),
            Box::new(|d| std::fs::remove_file(d.join("half.cedar")).unwrap()),
        ),
    ];
    for (what, break_it, repair) in &cases {
        break_it(&dir);
        let (reloaded, body) = kg.reload_policies().await;
        assert_eq!(reloaded, StatusCode::UNPROCESSABLE_ENTITY, "{what}");
        assert_eq!(body["error"]["code"], "INVALID_POLICY", "{what}");
        assert_eq!(
            body["error"]["details"]["runningHash"],
            hash.as_str(),
            "{what}"
        );
        let now = status().await;
        assert_eq!(
            now["hash"],
            hash.as_str(),
            "{what}: the running set changed"
        );
        assert!(
            now["lastError"].as_str().is_some_and(|e| !e.is_empty()),
            "{what}: {now}"
        );
        let m = kg.metrics().await;
        assert_eq!(metric(&m, "keygate_policy_reload_failing"), 1.0, "{what}");
        // Requests are still decided by the last good set.
        reader.get(kg.url(path)).expect(StatusCode::OK).await;
        repair(&dir);
    }
    let m = kg.metrics().await;
    assert!(metric(&m, "keygate_policy_reloads_total{result=\"error\"}") >= cases.len() as f64);
    // Repaired: the next reload succeeds and the failure clears.
    let (reloaded, body) = kg.reload_policies().await;
    assert_eq!(reloaded, StatusCode::OK, "{body}");
    let m = kg.metrics().await;
    assert_eq!(metric(&m, "keygate_policy_reload_failing"), 0.0);
}
