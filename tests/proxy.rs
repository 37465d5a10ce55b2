//! The request path through real processes: client → keygate → storage-backend (or a
//! recording upstream), asserting what a client and the backend would notice.

mod common;

use common::*;
use futures_util::StreamExt;
use reqwest::StatusCode;
use serde_json::Value;
use sha2::{Digest, Sha256};

/// A deterministic pseudo-random body of `len` bytes, streamed in 64 KiB chunks, and its hash.
fn body_stream(len: u64, seed: u64) -> (reqwest::Body, String) {
    // The chunks are generated twice, once here for the hash and once while streaming, so the
    // whole body is never held in memory.
    let mut hasher = Sha256::new();
    let mut state = seed;
    let mut chunks = Vec::new();
    let mut left = len;
    let next = |state: &mut u64, n: usize| -> Vec<u8> {
        let mut v = Vec::with_capacity(n);
        while v.len() < n {
            *state ^= *state << 13;
            *state ^= *state >> 7;
            *state ^= *state << 17;
            v.extend_from_slice(&state.to_le_bytes());
        }
        v.truncate(n);
        v
    };
    while left > 0 {
        let n = left.min(64 * 1024) as usize;
        let chunk = next(&mut state, n);
        hasher.update(&chunk);
        chunks.push(n);
        left -= n as u64;
    }
    let digest = hex(&hasher.finalize());
    let mut state2 = seed;
    let stream = futures_util::stream::iter(chunks)
        .map(move |n| Ok::<_, std::io::Error>(next(&mut state2, n)));
    (reqwest::Body::wrap_stream(stream), digest)
}

async fn download_sha256(client: &reqwest::Client, url: &str) -> (StatusCode, u64, String) {
    let resp = client.get(url).send().await.unwrap();
    let status = resp.status();
    let mut hasher = Sha256::new();
    let mut total = 0u64;
    let mut stream = resp.bytes_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.unwrap();
        total += chunk.len() as u64;
        hasher.update(&chunk);
    }
    (status, total, hex(&hasher.finalize()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upload_and_download_through_keygate_keep_every_byte() {
    let backend = Backend::start();
    let kg = Keygate::start(&[backend.addr], "");
    let client = kg.client();

    let (body, digest) = body_stream(1024 * 1024, 7);
    let resp = client
        .put(kg.url("/v1/files/local/backups/one%20mib.bin"))
        .header("content-length", 1024 * 1024)
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::CREATED);
    assert!(resp.headers().contains_key("x-keygate-request-id"));
    let stored = std::fs::read(file_under(&backend.root(), "local/backups/one mib.bin")).unwrap();
    assert_eq!(sha256_hex(&stored), digest, "bytes stored on disk");
    let (status, len, got) =
        download_sha256(&client, &kg.url("/v1/files/local/backups/one%20mib.bin")).await;
    assert_eq!((status, len), (StatusCode::OK, 1024 * 1024));
    assert_eq!(got, digest);

    // Range and ETag pass through.
    let resp = client
        .get(kg.url("/v1/files/local/backups/one%20mib.bin"))
        .header("range", "bytes=10-19")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(resp.headers()["content-range"], "bytes 10-19/1048576");
    let etag = resp.headers()["etag"].clone();
    assert_eq!(resp.bytes().await.unwrap(), stored[10..20]);
    let resp = client
        .get(kg.url("/v1/files/local/backups/one%20mib.bin"))
        .header("if-none-match", etag)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::NOT_MODIFIED);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_256_mib_body_streams_both_ways_without_buffering() {
    const LEN: u64 = 256 * 1024 * 1024;
    let backend = Backend::start();
    let kg = Keygate::start(&[backend.addr], "");
    let client = kg.client();
    // Warm up so that the baseline includes the connection pools and the runtime.
    let _ = client
        .get(kg.url("/v1/folders/local"))
        .send()
        .await
        .unwrap();
    let before = kg.proc.rss_kib();

    let (body, digest) = body_stream(LEN, 42);
    let resp = client
        .put(kg.url("/v1/files/local/big.bin"))
        .body(body) // no Content-Length: chunked all the way
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::CREATED, "{}", kg.proc.stderr());
    let (status, len, got) = download_sha256(&client, &kg.url("/v1/files/local/big.bin")).await;
    assert_eq!((status, len), (StatusCode::OK, LEN));
    assert_eq!(got, digest);

    let growth_mib = kg.proc.peak_rss_kib().saturating_sub(before) / 1024;
    assert!(
        growth_mib < 64,
        "keygate's peak RSS grew by {growth_mib} MiB while 2 × 256 MiB passed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_mkdir_move_delete_and_restore() {
    let backend = Backend::start();
    let kg = Keygate::start(&[backend.addr], "");
    let c = kg.client();

    c.post(kg.url("/v1/folders/local/projects/2025"))
        .expect(StatusCode::CREATED)
        .await;
    assert!(backend.root().join("local/projects/2025").is_dir());
    c.post(kg.url("/v1/folders/local/projects/2025"))
        .expect(StatusCode::CONFLICT)
        .await;

    c.put(kg.url("/v1/files/local/projects/2025/plan.txt"))
        .body("the plan")
        .expect(StatusCode::CREATED)
        .await;

    let list: Value = c
        .get(kg.url("/v1/folders/local/projects/2025"))
        .send_json()
        .await;
    let names: Vec<&str> = list["data"]["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["plan.txt"]);
    let root: Value = c.get(kg.url("/v1/folders/local")).send_json().await;
    assert_eq!(root["data"]["entries"][0]["name"], "projects");

    // Move with a Destination header, to another provider.
    c.request(
        reqwest::Method::from_bytes(b"MOVE").unwrap(),
        kg.url("/v1/files/local/projects/2025/plan.txt"),
    )
    .header("destination", "/v1/files/other/archive/plan%20v1.txt")
    .expect(StatusCode::CREATED)
    .await;
    assert!(!backend.root().join("local/projects/2025/plan.txt").exists());
    assert_eq!(
        std::fs::read(backend.root().join("other/archive/plan v1.txt")).unwrap(),
        b"the plan"
    );

    // Copy, then search by name.
    c.request(
        reqwest::Method::from_bytes(b"COPY").unwrap(),
        kg.url("/v1/files/other/archive/plan%20v1.txt"),
    )
    .header("destination", "/v1/files/local/plan-copy.txt")
    .expect(StatusCode::CREATED)
    .await;
    let found: Value = c.get(kg.url("/v1/search/local?q=PLAN")).send_json().await;
    assert_eq!(found["data"]["entries"][0]["path"], "/plan-copy.txt");

    // Delete into the trash, list it, restore it.
    c.delete(kg.url("/v1/files/other/archive/plan%20v1.txt"))
        .expect(StatusCode::OK)
        .await;
    assert!(!backend.root().join("other/archive/plan v1.txt").exists());
    let trash: Value = c.get(kg.url("/v1/trash/other")).send_json().await;
    let entry = &trash["data"]["entries"][0];
    assert_eq!(entry["originalPath"], "/archive/plan v1.txt");
    let id = entry["id"].as_str().unwrap();
    let r = c
        .post(kg.url(&format!("/v1/trash/other/{id}/restore")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(
        std::fs::read(backend.root().join("other/archive/plan v1.txt")).unwrap(),
        b"the plan"
    );
    let trash: Value = c.get(kg.url("/v1/trash/other")).send_json().await;
    assert_eq!(trash["data"]["entries"].as_array().unwrap().len(), 0);

    // Delete and empty the trash for good.
    c.delete(kg.url("/v1/files/local/plan-copy.txt"))
        .send()
        .await
        .unwrap();
    let r: Value = c.delete(kg.url("/v1/trash/local")).send_json().await;
    assert_eq!(r["data"]["purged"], 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_supplied_identity_and_hop_headers_never_reach_the_backend() {
    let rec = Recorder::start().await;
    let kg = Keygate::start(&[rec.addr], "");
    let c = kg.client();
    let r = c
        .get(kg.url("/v1/files/local/a.txt"))
        .header("x-keygate-user", "admin@example.com")
        .header("X-Keygate-Workspace", "someone-elses")
        .header("x-keygate-request-id", "forged")
        .header("x-http-method-override", "DELETE")
        .header("connection", "x-private-hop")
        .header("x-private-hop", "secret")
        .header("proxy-authorization", "Basic Zm9vOmJhcg==")
        .header("x-custom", "kept")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let request_id = r.headers()["x-keygate-request-id"]
        .to_str()
        .unwrap()
        .to_owned();
    let seen = rec.requests();
    assert_eq!(seen.len(), 1);
    let s = &seen[0];
    assert_eq!(
        s.method, "GET",
        "the method override must not change the method"
    );
    for gone in [
        "x-http-method-override",
        "x-private-hop",
        "proxy-authorization",
        "x-api-key",
        "authorization",
        "connection",
    ] {
        assert_eq!(s.header(gone), None, "{gone} reached the backend");
    }
    assert_eq!(s.header("x-keygate-request-id"), Some(request_id.as_str()));
    assert_eq!(
        s.header("x-keygate-user"),
        Some("ada@example.com"),
        "keygate sets the identity"
    );
    assert_eq!(s.header("x-keygate-workspace"), Some("acme"));
    assert!(s
        .header("x-keygate-key-id")
        .is_some_and(|id| !id.is_empty()));
    assert_ne!(request_id, "forged");
    assert_eq!(
        s.headers
            .iter()
            .filter(|(k, _)| k == "x-keygate-user")
            .count(),
        1
    );
    assert_eq!(
        s.headers
            .iter()
            .filter(|(k, _)| k == "x-keygate-workspace")
            .count(),
        1
    );
    assert_eq!(s.header("x-custom"), Some("kept"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_backend_records_the_identity_keygate_sets_not_the_clients() {
    let backend = Backend::start();
    let kg = Keygate::start(&[backend.addr], "");
    let c = kg.client();
    c.put(kg.url("/v1/files/local/who.txt"))
        .header("x-keygate-user", "mallory")
        .body("x")
        .expect(StatusCode::CREATED)
        .await;
    let list: Value = c.get(kg.url("/v1/folders/local")).send_json().await;
    assert_eq!(list["data"]["entries"][0]["name"], "who.txt");
    assert_eq!(
        list["data"]["entries"][0]["modifiedBy"], "ada@example.com",
        "the backend records keygate's identity, not the client's: {list}"
    );
    // Called directly, the backend does record the header it trusts.
    reqwest::Client::new()
        .put(backend.url("/v1/files/local/direct.txt"))
        .header("x-keygate-user", "user-1")
        .body("x")
        .expect(StatusCode::CREATED)
        .await;
    let list: Value = c.get(backend.url("/v1/folders/local")).send_json().await;
    assert_eq!(list["data"]["entries"][0]["modifiedBy"], "user-1");
}

/// Every class of ambiguous target is refused with the JSON error, and none reaches upstream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identity_never_carries_over_to_the_next_request_on_a_connection() {
    let rec = Recorder::start().await;
    let kg = Keygate::start(&[rec.addr], "");
    let (addr, key) = (kg.data, kg.key.clone());
    let (first, second) = tokio::task::spawn_blocking(move || {
        use std::io::Write;
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(std::time::Duration::from_secs(10)))
            .unwrap();
        let with_key =
            format!("GET /v1/files/local/kept.txt HTTP/1.1\r\nHost: t\r\nX-API-Key: {key}\r\n\r\n");
        s.write_all(with_key.as_bytes()).unwrap();
        let first = read_response(&mut s);
        // The same connection, kept alive, without a credential.
        s.write_all(b"GET /v1/files/local/stolen.txt HTTP/1.1\r\nHost: t\r\n\r\n")
            .unwrap();
        (first, read_response(&mut s))
    })
    .await
    .unwrap();
    assert_eq!(first.0, 200, "{}", first.1);
    assert!(
        !first.1.to_ascii_lowercase().contains("connection: close"),
        "the connection must stay open for the test to mean anything: {}",
        first.1
    );
    assert_eq!(second.0, 401, "{}", second.1);
    assert_eq!(raw_json(&second.1)["error"]["details"]["reason"], "missing");
    assert!(rec.requests().iter().all(|r| !r.target.contains("stolen")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ambiguous_targets_are_refused_and_never_forwarded() {
    let rec = Recorder::start().await;
    // In front of a backend keygate knows nothing about, everything some server reads
    // specially is refused.
    let strict = Keygate::start(&[rec.addr], "[upstream]\npath_dialect = \"strict\"\n");
    let kg = Keygate::start(&[rec.addr], "");
    let always: &[&[u8]] = &[
        b"/v1/files/local/a/../../etc/passwd",
        b"/v1/files/local/%2e%2e/secret",
        b"/v1/files/local/.%2E/secret",
        b"/v1/files/local/./a",
        b"/v1/files/local//a",
        b"/v1/files/local/a%2fb",
        b"/v1/files/local/a%00b",
        b"/v1/files/local/%c0%ae%c0%ae/x",
        b"/v1/files/local/a%ff",
        b"/v1/files/local/a#frag",
    ];
    let special: &[&[u8]] = &[
        b"/v1/files/local/a%5cb",
        b"/v1/files/local/a\\b",
        b"/v1/files/local/a%25b",
        b"/v1/files/local/a;param/b",
        b"/v1/files/local/a%0d%0aX-Injected:%201",
        b"/v1/files/local/%EF%BC%8E%EF%BC%8E/x",
        b"/v1/files/local/a%E2%88%95b",
        b"/v1/files/local/...",
    ];
    let refused = always
        .iter()
        .map(|t| (&kg, *t))
        .chain(always.iter().chain(special).map(|t| (&strict, *t)));
    for (kg, target) in refused {
        let (status, text) = raw_get(kg.data, target, &kg.key);
        assert_eq!(
            status,
            400,
            "{:?} → {text}",
            String::from_utf8_lossy(target)
        );
        let body = raw_json(&text);
        assert_eq!(
            body["success"],
            false,
            "{:?} → {text}",
            String::from_utf8_lossy(target)
        );
        assert_eq!(body["error"]["code"], "BAD_REQUEST");
        assert!(body["error"]["requestId"]
            .as_str()
            .is_some_and(|s| !s.is_empty()));
    }
    // A target the HTTP parser refuses outright (a raw 0xFF, an absolute-form target) gets
    // pingora's own 400 before keygate runs: still never forwarded, but with an empty body
    // (docs/request-path.md).
    for target in [
        &b"/v1/files/local/\xff"[..],
        b"http://127.0.0.1/v1/files/local/a",
    ] {
        let (status, _) = raw_get(kg.data, target, &kg.key);
        assert_eq!(status, 400);
    }
    assert!(
        rec.requests().is_empty(),
        "refused requests reached the upstream: {:?}",
        rec.requests()
    );

    // The bundled backend reads names literally (the POSIX dialect): the characters other
    // servers read specially are name characters, forwarded encoded one way, so that the name
    // authorized is the name stored.
    for (target, upstream) in [
        (&b"/v1/files/local/a%5cb"[..], "/v1/files/local/a%5Cb"),
        (b"/v1/files/local/a\\b", "/v1/files/local/a%5Cb"),
        (b"/v1/files/local/a%25b", "/v1/files/local/a%25b"),
        (b"/v1/files/local/a;param/b", "/v1/files/local/a%3Bparam/b"),
        (
            b"/v1/files/local/a%0d%0aX-Injected:%201",
            "/v1/files/local/a%0D%0AX-Injected%3A%201",
        ),
        (b"/v1/files/local/...", "/v1/files/local/..."),
        (b"/v1/files/local/cafe%CC%81", "/v1/files/local/caf%C3%A9"),
        // Forms that pass in every dialect, and arrive upstream in the one canonical spelling.
        (
            b"/v1/files/local/backups/.hidden",
            "/v1/files/local/backups/.hidden",
        ),
        (
            b"/v1/files/local/backups/a..b",
            "/v1/files/local/backups/a..b",
        ),
        (
            b"/v1/files/local/db%20dump.tar",
            "/v1/files/local/db%20dump.tar",
        ),
        (
            "/v1/files/local/café/日本".as_bytes(),
            "/v1/files/local/caf%C3%A9/%E6%97%A5%E6%9C%AC",
        ),
        (b"/v1/files/local/%7euser?x=1", "/v1/files/local/~user?x=1"),
    ] {
        let (status, text) = raw_get(kg.data, target, &kg.key);
        assert_eq!(
            status,
            200,
            "{:?} → {text}",
            String::from_utf8_lossy(target)
        );
        assert_eq!(rec.requests().last().unwrap().target, upstream);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conflicting_framing_is_refused() {
    let rec = Recorder::start().await;
    let kg = Keygate::start(&[rec.addr], "");
    let (status, text) = raw_request(
        kg.data,
        b"PUT /v1/files/local/x HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
    );
    assert_eq!(status, 400, "{text}");
    assert_eq!(raw_json(&text)["error"]["code"], "BAD_REQUEST");
    assert!(rec.requests().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_routes_are_404_json() {
    let rec = Recorder::start().await;
    let kg = Keygate::start(&[rec.addr], "");
    let r = kg
        .client()
        .get(kg.url("/v2/anything"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"]["code"], "NOT_FOUND");
    reqwest::Client::new()
        .patch(kg.url("/v1/files/local/a"))
        .expect(StatusCode::NOT_FOUND)
        .await;
    assert!(rec.requests().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backend_down_is_502_json() {
    // A port that nothing listens on: bind, learn the port, close.
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let kg = Keygate::start(&[dead], "");
    let r = kg
        .client()
        .get(kg.url("/v1/files/local/a"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_GATEWAY);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"]["code"], "UPSTREAM_UNAVAILABLE");
    assert!(kg.metrics().await.contains("keygate_upstream_errors_total"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn several_peers_are_balanced_and_a_dead_one_is_skipped() {
    let a = Recorder::start().await;
    let b = Recorder::start().await;
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let kg = Keygate::start(
        &[a.addr, b.addr, dead],
        "[upstream]\nhealth_check_interval = \"100ms\"\n",
    );
    // Let the first health checks mark the dead peer down.
    tokio::time::sleep(std::time::Duration::from_millis(600)).await;
    let c = kg.client();
    for _ in 0..20 {
        c.get(kg.url("/v1/files/local/x"))
            .expect(StatusCode::OK)
            .await;
    }
    let (na, nb) = (a.requests().len(), b.requests().len());
    assert_eq!(na + nb, 20);
    assert!(na >= 5 && nb >= 5, "round robin spread {na}/{nb}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_plane_health_readiness_and_metrics() {
    let rec = Recorder::start().await;
    let kg = Keygate::start(&[rec.addr], "");
    let health: Value = reqwest::get(kg.control_url("/healthz"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(health["status"], "ok");
    let r = reqwest::get(kg.control_url("/readyz")).await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let ready: Value = r.json().await.unwrap();
    assert_eq!(ready["checks"]["database"], "ok");

    kg.client()
        .get(kg.url("/v1/files/local/a"))
        .send()
        .await
        .unwrap();
    kg.client().get(kg.url("/nowhere")).send().await.unwrap();
    let m = kg
        .metrics_with(&[
            r#"keygate_requests_total{action="readFile",outcome="forwarded",status="200"} 1"#,
            r#"keygate_requests_total{action="none",outcome="NOT_FOUND",status="404"} 1"#,
        ])
        .await;
    assert!(
        m.contains(
            r#"keygate_requests_total{action="readFile",outcome="forwarded",status="200"} 1"#
        ),
        "{m}"
    );
    assert!(
        m.contains(r#"keygate_requests_total{action="none",outcome="NOT_FOUND",status="404"} 1"#),
        "{m}"
    );
    assert!(m.contains("keygate_request_duration_seconds_bucket"), "{m}");
    assert!(
        m.contains(r#"keygate_overhead_seconds_count{action="readFile"} 1"#),
        "{m}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_can_need_the_operator_token_or_move_to_a_listener_of_their_own() {
    let rec = Recorder::start().await;
    let kg = Keygate::start(&[rec.addr], "[control]\nmetrics = \"operator\"\n");
    let r = reqwest::get(kg.control_url("/metrics")).await.unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    let page = kg
        .operator()
        .get(kg.control_url("/metrics"))
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), StatusCode::OK);
    assert!(page.text().await.unwrap().contains("keygate_build_info"));
    drop(kg);

    let kg = Keygate::start(&[rec.addr], "[server]\nmetrics_listen = \"127.0.0.1:0\"\n");
    let own = kg
        .metrics_addr
        .expect("the metrics listener's address is printed");
    let page = reqwest::get(format!("http://{own}/metrics")).await.unwrap();
    assert_eq!(page.status(), StatusCode::OK);
    assert!(page.text().await.unwrap().contains("keygate_build_info"));
    // The control plane no longer serves it, and the metrics listener serves nothing else.
    let r = reqwest::get(kg.control_url("/metrics")).await.unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    let r = reqwest::get(format!("http://{own}/v1/keys")).await.unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
}
