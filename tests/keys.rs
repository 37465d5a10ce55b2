//! API keys through real processes: presenting, verifying, managing, revoking, usage.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use reqwest::StatusCode;
use serde_json::{json, Value};

async fn create_key(kg: &Keygate, body: Value) -> (StatusCode, Value) {
    let r = kg
        .operator()
        .post(kg.control_url("/v1/keys"))
        .json(&body)
        .send()
        .await
        .unwrap();
    if r.status() == StatusCode::CREATED {
        // The one answer that shows the key is never stored by a cache on the way.
        assert_eq!(r.headers()["cache-control"], "no-store");
    }
    (r.status(), r.json().await.unwrap())
}

async fn get_with(
    kg: &Keygate,
    key: &str,
    path: &str,
) -> (StatusCode, Value, reqwest::header::HeaderMap) {
    let r = client_with_key(key).get(kg.url(path)).send().await.unwrap();
    let status = r.status();
    let headers = r.headers().clone();
    let body = r.json().await.unwrap_or(Value::Null);
    (status, body, headers)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_401_reason_and_no_key_in_any_body_or_log() {
    let rec = Recorder::start().await;
    let kg = Keygate::start(&[rec.addr], "");
    let path = "/v1/files/local/a.txt";

    let r = reqwest::get(kg.url(path)).await.unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    let b: Value = r.json().await.unwrap();
    assert_eq!(b["error"]["code"], "UNAUTHORIZED");
    assert_eq!(b["error"]["details"]["reason"], "missing");

    let mut typo = kg.key.clone().into_bytes();
    typo[8] = if typo[8] == b'x' { b'y' } else { b'x' };
    let typo = String::from_utf8(typo).unwrap();
    let (s, b, _) = get_with(&kg, &typo, path).await;
    assert_eq!(
        (s, b["error"]["details"]["reason"].as_str()),
        (StatusCode::UNAUTHORIZED, Some("malformed"))
    );
    assert!(!b.to_string().contains(&typo), "the key is never echoed");

    let r = reqwest::Client::new()
        .get(kg.url(path))
        .header("authorization", format!("Basic {}", kg.key))
        .expect(StatusCode::UNAUTHORIZED)
        .await;
    assert_eq!(r["error"]["details"]["reason"], "malformed");

    let unknown = unissued_key();
    let (s, b, _) = get_with(&kg, &unknown, path).await;
    assert_eq!(
        (s, b["error"]["details"]["reason"].as_str()),
        (StatusCode::UNAUTHORIZED, Some("unknown"))
    );

    // Expired: a key that lives two seconds.
    let soon = keygate_time(2);
    let (status, created) = create_key(
        &kg,
        json!({"name": "short", "scopes": ["read"], "expiresAt": soon, "owner": "ada@example.com"}),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    let short = created["data"]["key"].as_str().unwrap().to_owned();
    assert_eq!(get_with(&kg, &short, path).await.0, StatusCode::OK);
    tokio::time::sleep(Duration::from_millis(2600)).await;
    let (s, b, _) = get_with(&kg, &short, path).await;
    assert_eq!(
        (s, b["error"]["details"]["reason"].as_str()),
        (StatusCode::UNAUTHORIZED, Some("expired"))
    );

    // Revoked.
    let (_, created) = create_key(
        &kg,
        json!({"name": "gone", "scopes": ["read"], "owner": "ada@example.com"}),
    )
    .await;
    let gone = created["data"]["key"].as_str().unwrap().to_owned();
    let id = created["data"]["id"].as_str().unwrap();
    assert_eq!(get_with(&kg, &gone, path).await.0, StatusCode::OK);
    kg.operator()
        .delete(kg.control_url(&format!("/v1/keys/{id}")))
        .expect(StatusCode::OK)
        .await;
    let (s, b, _) = get_with(&kg, &gone, path).await;
    assert_eq!(
        (s, b["error"]["details"]["reason"].as_str()),
        (StatusCode::UNAUTHORIZED, Some("revoked"))
    );

    let m = kg.metrics().await;
    for reason in ["missing", "malformed", "unknown", "expired", "revoked"] {
        assert!(
            metric(
                &m,
                &format!("keygate_auth_failures_total{{reason=\"{reason}\"}}")
            ) >= 1.0,
            "{reason}: {m}"
        );
    }
    let log = kg.proc.stderr();
    for secret in [&kg.key, &typo, &unknown, &short, &gone] {
        assert!(
            !log.contains(secret.as_str()),
            "a key appeared in keygate's log"
        );
        assert!(
            !m.contains(secret.as_str()),
            "a key appeared in the metrics"
        );
    }
}

/// An RFC 3339 time `secs` seconds from now.
fn keygate_time(secs: u64) -> String {
    let t = std::time::SystemTime::now() + Duration::from_secs(secs);
    humantime_rfc3339(t)
}

fn humantime_rfc3339(t: std::time::SystemTime) -> String {
    let d = t.duration_since(std::time::UNIX_EPOCH).unwrap();
    let secs = d.as_secs() as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // civil-from-days (Howard Hinnant), for a test-only formatter
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = if month <= 2 { y + 1 } else { y };
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        d.subsec_millis()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presenting_keys_headers_query_and_conflicts() {
    let rec = Recorder::start().await;
    let kg = Keygate::start(&[rec.addr], "");
    let url = kg.url("/v1/files/local/a.txt");
    let c = reqwest::Client::new();
    for scheme in ["Bearer", "bearer", "BEARER"] {
        let r = c
            .get(&url)
            .header("authorization", format!("{scheme} {}", kg.key))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK, "{scheme}");
    }
    c.get(&url)
        .header("x-api-key", &kg.key)
        .expect(StatusCode::OK)
        .await;

    let (_, other) = create_key(
        &kg,
        json!({"name": "second", "scopes": ["read"], "owner": "ada@example.com"}),
    )
    .await;
    let other = other["data"]["key"].as_str().unwrap().to_owned();
    let r = c
        .get(&url)
        .header("x-api-key", &kg.key)
        .header("authorization", format!("Bearer {other}"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.status(),
        StatusCode::BAD_REQUEST,
        "two different credentials"
    );

    for query in [
        format!("api_key={}", kg.key),
        format!("x=1&token={}", kg.key),
        format!("q={}", kg.key),
    ] {
        let r = c.get(format!("{url}?{query}")).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::BAD_REQUEST);
        let body = r.text().await.unwrap();
        assert!(
            body.contains("query string") && !body.contains(&kg.key),
            "{body}"
        );
    }

    // What the backend receives: the identity, never the key.
    let before = rec.requests().len();
    c.get(&url)
        .header("authorization", format!("Bearer {}", kg.key))
        .send()
        .await
        .unwrap();
    let seen = &rec.requests()[before];
    assert_eq!(seen.header("x-keygate-user"), Some("ada@example.com"));
    assert_eq!(seen.header("x-keygate-workspace"), Some("acme"));
    let listed: Value = kg
        .operator()
        .get(kg.control_url("/v1/keys"))
        .send_json()
        .await;
    let ids: Vec<&str> = listed["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["id"].as_str().unwrap())
        .collect();
    assert!(ids.contains(&seen.header("x-keygate-key-id").unwrap()));
    assert!(seen.header("authorization").is_none() && seen.header("x-api-key").is_none());
    assert!(rec
        .requests()
        .iter()
        .all(|s| s.headers.iter().all(|(_, v)| !v.contains(&kg.key))));
    assert!(
        !kg.proc.stderr().contains(&kg.key),
        "the key (and the query carrying it) is never logged"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checksum_invalid_keys_never_reach_the_database_and_failures_are_throttled() {
    let rec = Recorder::start().await;
    let kg = Keygate::start(&[rec.addr], "[auth]\nfailures_per_minute = 5\n");
    let lookups = |m: &str| metric(m, "keygate_identity_db_lookups_total");
    let before = lookups(&kg.metrics().await);
    let c = reqwest::Client::new();
    let mut bad = kg.key.clone();
    bad.pop();
    bad.push(if kg.key.ends_with('0') { '1' } else { '0' });
    for _ in 0..4 {
        c.get(kg.url("/v1/files/local/a"))
            .header("x-api-key", &bad)
            .expect(StatusCode::UNAUTHORIZED)
            .await;
    }
    assert_eq!(
        lookups(&kg.metrics().await),
        before,
        "a checksum-invalid key cost a database query"
    );

    // Well-formed unknown keys cost one lookup each, until the address is throttled.
    let unknown = unissued_key();
    c.get(kg.url("/v1/files/local/a"))
        .header("x-api-key", &unknown)
        .expect(StatusCode::UNAUTHORIZED)
        .await;
    assert_eq!(lookups(&kg.metrics().await), before + 1.0);
    // The sixth failure in a minute (four malformed, one unknown, this one) trips the limiter.
    let r = c
        .get(kg.url("/v1/files/local/a"))
        .header("x-api-key", &unknown)
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.status(),
        StatusCode::UNAUTHORIZED,
        "the negative cache answers"
    );
    let r = c
        .get(kg.url("/v1/files/local/a"))
        .header("x-api-key", &unissued_key())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(r.headers().contains_key("retry-after"));
    let b: Value = r.json().await.unwrap();
    assert_eq!(b["error"]["code"], "RATE_LIMIT_EXCEEDED");
    assert!(b["error"]["retryAfter"].as_u64().is_some_and(|s| s >= 1));
    let after = lookups(&kg.metrics().await);
    for _ in 0..5 {
        c.get(kg.url("/v1/files/local/a"))
            .header("x-api-key", format!("{}x", &unknown[..unknown.len() - 1]))
            .expect(StatusCode::TOO_MANY_REQUESTS)
            .await;
    }
    assert_eq!(
        lookups(&kg.metrics().await),
        after,
        "a throttled address causes no database work"
    );
}

/// The management flow, the same on both databases.
async fn management_flow(kg: &Keygate) {
    let op = kg.operator();
    // Create: the full key once, a 12-character display prefix, every field.
    let (status, created) = create_key(
        kg,
        json!({"name": "backups", "scopes": ["read", "files:write"], "providers": [{"provider": "local", "basePath": "/backups/"}],
               "expiresIn": "90d", "owner": "ada@example.com", "workspace": "acme"}),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    let d = &created["data"];
    let key = d["key"].as_str().unwrap().to_owned();
    let id = d["id"].as_str().unwrap().to_owned();
    assert!(key.starts_with("kg_") && key.len() == 41);
    assert_eq!(d["displayPrefix"], key[..12]);
    assert_eq!(
        d["providers"],
        json!([{"provider": "local", "basePath": "/backups"}])
    );
    assert_eq!(d["scopes"], json!(["read", "files:write"]));
    assert_eq!(d["status"], "active");
    assert_eq!(d["expiresSoon"], false);
    assert!(
        d["expiresAt"].as_str().is_some() && d["lastUsedAt"].is_null() && d["revokedAt"].is_null()
    );

    // Listing and showing never carry the secret.
    let list = op
        .get(kg.control_url("/v1/keys"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(!list.contains(&key) && list.contains(&key[..12]));
    let shown: Value = op
        .get(kg.control_url(&format!("/v1/keys/{id}")))
        .send_json()
        .await;
    assert_eq!(shown["data"]["name"], "backups");
    assert!(shown["data"].get("key").is_none());

    // Update: name, scopes, grants, expiry; the key keeps working with the new settings.
    let r = op
        .patch(kg.control_url(&format!("/v1/keys/{id}")))
        .json(&json!({"name": "backups v2", "scopes": ["write"], "providers": null, "expiresIn": "never"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let updated: Value = r.json().await.unwrap();
    assert_eq!(updated["data"]["name"], "backups v2");
    assert_eq!(updated["data"]["providers"], Value::Null);
    assert_eq!(updated["data"]["expiresAt"], Value::Null);
    assert_eq!(
        get_with(kg, &key, "/v1/files/local/x").await.0,
        StatusCode::OK
    );

    // Bad input is refused clearly.
    for (body, message) in [
        (
            json!({"name": "x", "scopes": ["root"], "owner": "ada@example.com"}),
            "is not a scope",
        ),
        (
            json!({"name": "x", "scopes": [], "owner": "ada@example.com"}),
            "at least one scope",
        ),
        (
            json!({"name": "x", "scopes": ["read"], "owner": "ada@example.com", "providers": [{"provider": "nope", "basePath": "/"}]}),
            "no provider named 'nope'",
        ),
        (
            json!({"name": "x", "scopes": ["read"], "owner": "ada@example.com", "providers": [{"provider": "local", "basePath": "/a/../b"}]}),
            "dot segment",
        ),
        (
            json!({"name": "x", "scopes": ["read"], "owner": "ada@example.com", "expiresIn": "2d"}),
            "is not an expiry",
        ),
        (
            json!({"name": "x", "scopes": ["read"], "owner": "ada@example.com", "expiresAt": "2001-01-01"}),
            "in the past",
        ),
        (
            json!({"name": "x", "scopes": ["read"], "owner": "nobody@example.com"}),
            "no user with email",
        ),
        (
            json!({"name": "x", "scopes": ["read"]}),
            "must name the key's owner",
        ),
        (
            json!({"name": "x", "scopes": ["read"], "owner": "ada@example.com", "color": "red"}),
            "unknown field",
        ),
    ] {
        let (status, b) = create_key(kg, body.clone()).await;
        assert!(
            status == StatusCode::BAD_REQUEST || status == StatusCode::NOT_FOUND,
            "{body}: {status} {b}"
        );
        assert!(
            b["error"]["message"].as_str().unwrap().contains(message),
            "{body}: {b}"
        );
    }

    // Rotate: a new secret with the same settings; the old key is revoked at once.
    let r = op
        .post(kg.control_url(&format!("/v1/keys/{id}/rotate")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    assert_eq!(r.headers()["cache-control"], "no-store");
    let rotated: Value = r.json().await.unwrap();
    let new_key = rotated["data"]["key"].as_str().unwrap().to_owned();
    assert_ne!(new_key, key);
    // A second rotation of the same key finds it already rotated: exactly one successor.
    let again = op
        .post(kg.control_url(&format!("/v1/keys/{id}/rotate")))
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), StatusCode::CONFLICT);
    assert_eq!(rotated["data"]["name"], "backups v2");
    assert_eq!(rotated["data"]["scopes"], json!(["write"]));
    assert_eq!(rotated["data"]["rotatedFrom"], id.as_str());
    let (s, b, _) = get_with(kg, &key, "/v1/files/local/x").await;
    assert_eq!(
        (s, b["error"]["details"]["reason"].as_str()),
        (StatusCode::UNAUTHORIZED, Some("revoked"))
    );
    assert_eq!(
        get_with(kg, &new_key, "/v1/files/local/x").await.0,
        StatusCode::OK
    );

    // The 10-key limit: the fixture's key, the rotated one, and eight more.
    for i in 0..8 {
        let (status, b) = create_key(
            kg,
            json!({"name": format!("k{i}"), "scopes": ["read"], "owner": "ada@example.com"}),
        )
        .await;
        assert_eq!(status, StatusCode::CREATED, "key {i}: {b}");
    }
    let (status, b) = create_key(
        kg,
        json!({"name": "eleventh", "scopes": ["read"], "owner": "ada@example.com"}),
    )
    .await;
    assert_eq!(status, StatusCode::CONFLICT, "{b}");
    assert!(
        b["error"]["message"]
            .as_str()
            .unwrap()
            .contains("10 active keys"),
        "{b}"
    );
    let new_id = rotated["data"]["id"].as_str().unwrap();
    op.delete(kg.control_url(&format!("/v1/keys/{new_id}")))
        .send()
        .await
        .unwrap();
    let (status, _) = create_key(
        kg,
        json!({"name": "eleventh", "scopes": ["read"], "owner": "ada@example.com"}),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "a revoked key frees its place");

    // An API key can read its owner's keys but never create, change, rotate or revoke one.
    let api = client_with_key(&kg.key);
    let r = api
        .post(kg.control_url("/v1/keys"))
        .json(&json!({"name": "x", "scopes": ["read"], "owner": "ada@example.com"}))
        .expect(StatusCode::FORBIDDEN)
        .await;
    assert_eq!(r["error"]["code"], "FORBIDDEN");
    api.post(kg.control_url(&format!("/v1/keys/{id}/rotate")))
        .expect(StatusCode::FORBIDDEN)
        .await;
    let r = api.get(kg.control_url("/v1/keys")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert!(!r.text().await.unwrap().contains(&kg.key));
    reqwest::Client::new()
        .get(kg.control_url("/v1/keys"))
        .expect(StatusCode::UNAUTHORIZED)
        .await;
    reqwest::Client::new()
        .get(kg.control_url("/v1/keys"))
        .header("authorization", "Bearer op-wrong-token-0123456789")
        .expect(StatusCode::UNAUTHORIZED)
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn management_on_sqlite() {
    let rec = Recorder::start().await;
    let kg = Keygate::start(&[rec.addr], "");
    management_flow(&kg).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn management_on_postgres() {
    let Some(db) = TestDb::postgres().await else {
        return;
    };
    let rec = Recorder::start().await;
    let kg = tokio::task::spawn_blocking(move || {
        // PostgreSQL needs an explicit pepper (every instance must share it).
        Keygate::start_with_db(&[rec.addr], "", db)
    })
    .await
    .unwrap();
    management_flow(&kg).await;
}

/// How many requests of `trial` the backend received that were sent after the change returned
/// (the load tag them `x-trial: {trial}-{worker}-{n}-true`).
fn forwarded_after_change(rec: &Recorder, trial: usize) -> usize {
    rec.requests()
        .iter()
        .filter(|s| {
            s.header("x-trial")
                .is_some_and(|t| t.starts_with(&format!("{trial}-")) && t.ends_with("-true"))
        })
        .count()
}

/// Waits until requests with key `id` reach the backend (the load is running), then a little
/// longer so that some are in flight.
async fn load_reaches_backend(rec: &Recorder, id: &str, trial: usize) {
    let started = Instant::now();
    while !rec
        .requests()
        .iter()
        .any(|s| s.header("x-keygate-key-id") == Some(id))
    {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "trial {trial}: the load never started"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    tokio::time::sleep(Duration::from_millis(20)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoking_under_load_stops_every_later_forward() {
    let rec = Recorder::start().await;
    let kg = Keygate::start(&[rec.addr], "");
    for trial in 0..15 {
        let (_, created) = create_key(&kg, json!({"name": format!("load {trial}"), "scopes": ["read"], "owner": "ada@example.com"})).await;
        let key = created["data"]["key"].as_str().unwrap().to_owned();
        let id = created["data"]["id"].as_str().unwrap().to_owned();
        let revoked_at: Arc<std::sync::Mutex<Option<Instant>>> = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let mut workers = Vec::new();
        for w in 0..8 {
            let (url, key, stop, revoked_at) = (
                kg.url("/v1/files/local/x"),
                key.clone(),
                stop.clone(),
                revoked_at.clone(),
            );
            workers.push(tokio::spawn(async move {
                let c = client_with_key(&key);
                let mut late_ok = 0;
                let mut odd = Vec::new();
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    // Whether the revoke had returned before this request was sent.
                    let after_revoke = revoked_at.lock().unwrap().is_some();
                    let r = c
                        .get(&url)
                        .header("x-trial", format!("{trial}-{w}-{n}-{after_revoke}"))
                        .send()
                        .await
                        .unwrap();
                    if after_revoke && r.status() == StatusCode::OK {
                        late_ok += 1;
                    }
                    // A request the revoke caught in flight is refused as revoked (401), like
                    // one sent after it (and after enough of those the address is throttled,
                    // 429): never a 503 or anything else.
                    if ![
                        StatusCode::OK,
                        StatusCode::UNAUTHORIZED,
                        StatusCode::TOO_MANY_REQUESTS,
                    ]
                    .contains(&r.status())
                    {
                        odd.push(r.status());
                    }
                    n += 1;
                }
                (late_ok, odd)
            }));
        }
        // Revoke only once the load demonstrably reaches the backend with this key.
        load_reaches_backend(&rec, &id, trial).await;
        kg.operator()
            .delete(kg.control_url(&format!("/v1/keys/{id}")))
            .expect(StatusCode::OK)
            .await;
        *revoked_at.lock().unwrap() = Some(Instant::now());
        tokio::time::sleep(Duration::from_millis(60)).await;
        stop.store(true, Ordering::Relaxed);
        let mut late = 0;
        let mut odd = Vec::new();
        for w in workers {
            let (l, o) = w.await.unwrap();
            late += l;
            odd.extend(o);
        }
        assert!(
            odd.is_empty(),
            "trial {trial}: answers other than 200, 401 and 429 while revoking: {odd:?}"
        );
        assert_eq!(
            late, 0,
            "trial {trial}: requests sent after the revoke returned were answered 200"
        );
        let forwarded_late = forwarded_after_change(&rec, trial);
        assert_eq!(
            forwarded_late, 0,
            "trial {trial}: requests sent after the revoke returned reached the backend"
        );
        let forwarded = rec
            .requests()
            .iter()
            .filter(|s| s.header("x-keygate-key-id") == Some(id.as_str()))
            .count();
        assert!(
            forwarded > 0,
            "trial {trial}: the load ran before the revoke"
        );
    }
}

/// A key narrowed while requests are in flight (its scopes no longer allow writes): a write
/// the change caught between its decision and its forward is decided again on the key's new
/// version, so it is refused as forbidden (403), as is every write sent after the change
/// returned; the key was not revoked, so never 401.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn narrowing_a_key_under_load_refuses_later_writes_as_forbidden() {
    let rec = Recorder::start().await;
    let kg = Keygate::start(&[rec.addr], "");
    for trial in 0..15 {
        let (status, created) = create_key(&kg, json!({"name": format!("narrowed {trial}"), "scopes": ["write"], "owner": "ada@example.com"})).await;
        assert_eq!(status, StatusCode::CREATED, "trial {trial}: {created}");
        let key = created["data"]["key"].as_str().unwrap().to_owned();
        let id = created["data"]["id"].as_str().unwrap().to_owned();
        let changed: Arc<AtomicBool> = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let mut workers = Vec::new();
        for w in 0..8 {
            let (url, key, stop, changed) = (
                kg.url(&format!("/v1/files/local/narrowed-{trial}-{w}")),
                key.clone(),
                stop.clone(),
                changed.clone(),
            );
            workers.push(tokio::spawn(async move {
                let c = client_with_key(&key);
                let mut answers = Vec::new();
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let after = changed.load(Ordering::SeqCst);
                    let r = c
                        .put(&url)
                        .header("x-trial", format!("{trial}-{w}-{n}-{after}"))
                        .body("x")
                        .send()
                        .await
                        .unwrap();
                    answers.push((after, r.status()));
                    n += 1;
                }
                answers
            }));
        }
        load_reaches_backend(&rec, &id, trial).await;
        let r = kg
            .operator()
            .patch(kg.control_url(&format!("/v1/keys/{id}")))
            .json(&json!({"scopes": ["read"]}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK, "trial {trial}");
        changed.store(true, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(60)).await;
        stop.store(true, Ordering::Relaxed);
        let mut answers = Vec::new();
        for w in workers {
            answers.extend(w.await.unwrap());
        }
        let odd: Vec<_> = answers
            .iter()
            .filter(|(_, s)| ![StatusCode::OK, StatusCode::FORBIDDEN].contains(s))
            .collect();
        assert!(
            odd.is_empty(),
            "trial {trial}: answers other than 200 and 403 while narrowing: {odd:?}"
        );
        let late: Vec<_> = answers
            .iter()
            .filter(|(after, s)| *after && *s != StatusCode::FORBIDDEN)
            .collect();
        assert!(
            late.is_empty(),
            "trial {trial}: writes sent after the change returned were not refused: {late:?}"
        );
        let forwarded_late = forwarded_after_change(&rec, trial);
        assert_eq!(
            forwarded_late, 0,
            "trial {trial}: writes sent after the change returned reached the backend"
        );
        assert!(
            answers.iter().any(|(_, s)| *s == StatusCode::OK),
            "trial {trial}: the load ran before the change"
        );
        // The owner may hold ten active keys.
        kg.operator()
            .delete(kg.control_url(&format!("/v1/keys/{id}")))
            .expect(StatusCode::OK)
            .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn usage_and_last_used_after_a_burst_and_a_restart() {
    let backend = Backend::start();
    let kg = Keygate::start(&[backend.addr], "[keys]\nusage_flush_interval = \"1h\"\n");
    let (_, created) = create_key(
        &kg,
        json!({"name": "burst", "scopes": ["write"], "owner": "ada@example.com"}),
    )
    .await;
    let key = created["data"]["key"].as_str().unwrap().to_owned();
    let id = created["data"]["id"].as_str().unwrap().to_owned();
    let c = client_with_key(&key);
    let body = vec![7u8; 1000];
    let mut out = 0u64;
    for i in 0..10 {
        let r = c
            .put(kg.url(&format!("/v1/files/local/burst/{i}.bin")))
            .body(body.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::CREATED);
        out += r.bytes().await.unwrap().len() as u64;
    }
    for i in 0..20 {
        let r = c
            .get(kg.url(&format!("/v1/files/local/burst/{}.bin", i % 10)))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK);
        out += r.bytes().await.unwrap().len() as u64;
    }
    let check = |u: &Value| {
        let t = &u["data"]["totals"];
        assert_eq!(t["requests"], 30, "{u}");
        assert_eq!(t["denied"], 0, "{u}");
        assert_eq!(t["bytesIn"], 10_000, "{u}");
        assert_eq!(t["bytesOut"], out, "{u}");
        assert_eq!(u["data"]["days"].as_array().unwrap().len(), 1, "{u}");
        assert!(u["data"]["lastUsedAt"].as_str().is_some(), "{u}");
    };
    // Counted in memory (nothing flushed yet: the interval is an hour) and served at once. The
    // last request is counted just after its response went out, so allow a moment.
    let deadline = Instant::now() + Duration::from_secs(5);
    let usage: Value = loop {
        let usage: Value = kg
            .operator()
            .get(kg.control_url(&format!("/v1/keys/{id}/usage")))
            .send_json()
            .await;
        if usage["data"]["totals"]["requests"] == 30 || Instant::now() > deadline {
            break usage;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    check(&usage);
    let shown: Value = kg
        .operator()
        .get(kg.control_url(&format!("/v1/keys/{id}")))
        .send_json()
        .await;
    assert!(shown["data"]["lastUsedAt"].as_str().is_some());

    // A graceful restart flushes; the numbers survive, once.
    let kg = kg.restart(&[backend.addr]);
    let usage: Value = kg
        .operator()
        .get(kg.control_url(&format!("/v1/keys/{id}/usage")))
        .send_json()
        .await;
    check(&usage);
    let cli: Value = serde_json::from_str(&kg.cli(&["keys", "usage", &id, "--json"])).unwrap();
    assert_eq!(cli["totals"]["requests"], 30);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_expiring_within_a_week_are_flagged() {
    let rec = Recorder::start().await;
    let kg = Keygate::start(&[rec.addr], "");
    let (_, created) = create_key(&kg, json!({"name": "soon", "scopes": ["read"], "owner": "ada@example.com", "expiresAt": keygate_time(3 * 86_400)})).await;
    let key = created["data"]["key"].as_str().unwrap().to_owned();
    assert_eq!(created["data"]["expiresSoon"], true);
    let (status, _, headers) = get_with(&kg, &key, "/v1/files/local/x").await;
    assert_eq!(status, StatusCode::OK);
    let expires = headers["x-keygate-key-expires-at"].to_str().unwrap();
    assert_eq!(expires, created["data"]["expiresAt"].as_str().unwrap());
    let (_, _, headers) = get_with(&kg, &kg.key, "/v1/files/local/x").await;
    assert!(
        !headers.contains_key("x-keygate-key-expires-at"),
        "a key without expiry gets no warning"
    );
    // The gauge is counted in the background (every change poll), never per scrape.
    let m = kg.metrics_with(&["keygate_keys_expiring_soon 1"]).await;
    assert_eq!(metric(&m, "keygate_keys_expiring_soon"), 1.0);
    let listing = kg.cli(&["keys", "list"]);
    assert!(
        listing
            .lines()
            .any(|l| l.contains("soon") && l.contains("expires within 7 days")),
        "{listing}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_manages_keys_and_a_cli_revoke_reaches_the_running_server() {
    let rec = Recorder::start().await;
    let kg = Keygate::start(&[rec.addr], "");
    let created: Value = serde_json::from_str(&kg.cli(&[
        "keys",
        "create",
        "--owner",
        "ada@example.com",
        "--name",
        "cli",
        "--scope",
        "read",
        "--provider",
        "local:/reports",
        "--expires",
        "30d",
        "--json",
    ]))
    .unwrap();
    let key = created["key"].as_str().unwrap().to_owned();
    let id = created["id"].as_str().unwrap().to_owned();
    assert_eq!(
        created["providers"],
        json!([{"provider": "local", "basePath": "/reports"}])
    );
    let plain = kg.cli(&["keys", "show", &id]);
    assert!(plain.contains("local:/reports") && !plain.contains(&key));
    let list: Value =
        serde_json::from_str(&kg.cli(&["keys", "list", "--owner", "ada@example.com", "--json"]))
            .unwrap();
    assert_eq!(list.as_array().unwrap().len(), 2);
    let updated: Value = serde_json::from_str(&kg.cli(&[
        "keys",
        "update",
        &id,
        "--all-providers",
        "--scope",
        "write",
        "--json",
    ]))
    .unwrap();
    assert_eq!(updated["providers"], Value::Null);
    assert_eq!(updated["scopes"], json!(["write"]));

    assert_eq!(
        get_with(&kg, &key, "/v1/files/local/x").await.0,
        StatusCode::OK
    );
    kg.cli(&["keys", "revoke", &id]);
    // Another process changed the database: the server picks it up within its poll interval.
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let status = get_with(&kg, &key, "/v1/files/local/x").await.0;
        if status == StatusCode::UNAUTHORIZED {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "a CLI revoke did not reach the server"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (ok, _, err) = cli(&kg.db.url(), &["keys", "rotate", &id], None);
    assert!(!ok && err.contains("is revoked"), "{err}");
    let (ok, _, err) = cli(
        &kg.db.url(),
        &[
            "keys",
            "create",
            "--owner",
            "ada@example.com",
            "--name",
            "x",
            "--scope",
            "sudo",
        ],
        None,
    );
    assert!(!ok && err.contains("'sudo' is not a scope"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compatible_key_formats() {
    let rec = Recorder::start().await;
    for (format, shape) in [
        ("drv", r"^drv_[0-9a-f]{40}$"),
        ("fo", r"^fo_[0-9A-Za-z]{12}_[0-9A-Za-z]{38}$"),
        ("kg", r"^acme_[0-9A-Za-z]{38}$"),
    ] {
        let config = format!("[keys]\nformat = \"{format}\"\nprefix = \"acme\"\n");
        let kg = Keygate::start(&[rec.addr], &config);
        let (status, created) = create_key(
            &kg,
            json!({"name": format, "scopes": ["read"], "owner": "ada@example.com"}),
        )
        .await;
        assert_eq!(status, StatusCode::CREATED);
        let key = created["data"]["key"].as_str().unwrap();
        assert!(matches_shape(key, shape), "{key} !~ {shape}");
        assert_eq!(created["data"]["displayPrefix"], &key[..12]);
        assert_eq!(
            get_with(&kg, key, "/v1/files/local/x").await.0,
            StatusCode::OK
        );
        reqwest::Client::new()
            .get(kg.url("/v1/files/local/x"))
            .header("authorization", format!("Bearer {key}"))
            .expect(StatusCode::OK)
            .await;
    }
}

/// A tiny matcher for the three documented key shapes (no regex dependency in tests).
fn matches_shape(key: &str, shape: &str) -> bool {
    match shape {
        r"^drv_[0-9a-f]{40}$" => key.strip_prefix("drv_").is_some_and(|b| {
            b.len() == 40
                && b.bytes()
                    .all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(&c))
        }),
        r"^fo_[0-9A-Za-z]{12}_[0-9A-Za-z]{38}$" => key
            .strip_prefix("fo_")
            .and_then(|b| b.split_once('_'))
            .is_some_and(|(id, s)| {
                id.len() == 12
                    && s.len() == 38
                    && (id.to_owned() + s)
                        .bytes()
                        .all(|c| c.is_ascii_alphanumeric())
            }),
        _ => key
            .strip_prefix("acme_")
            .is_some_and(|b| b.len() == 38 && b.bytes().all(|c| c.is_ascii_alphanumeric())),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_plane_failures_are_throttled_like_the_data_plane() {
    let rec = Recorder::start().await;
    let kg = Keygate::start(&[rec.addr], "[auth]\nfailures_per_minute = 3\n");
    let c = reqwest::Client::new();
    let try_keys = |key: String| {
        c.get(kg.control_url("/v1/keys"))
            .header("x-api-key", key)
            .send()
    };
    // Three failures fit the budget; the fourth trips the limiter.
    for i in 0..4 {
        let r = try_keys(format!("kg_not-a-key-{i}")).await.unwrap();
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED, "attempt {i}");
    }
    let r = try_keys(unissued_key()).await.unwrap();
    assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(
        r.json::<Value>().await.unwrap()["error"]["code"],
        "RATE_LIMIT_EXCEEDED"
    );
    // The address is throttled on the data plane too, valid key or not, until its budget refills.
    kg.client()
        .get(kg.url("/v1/files/local/a"))
        .expect(StatusCode::TOO_MANY_REQUESTS)
        .await;
    // The operator token is not an API-key attempt and still works.
    kg.operator()
        .get(kg.control_url("/v1/keys"))
        .expect(StatusCode::OK)
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_rotations_of_one_key_leave_exactly_one_successor() {
    let rec = Recorder::start().await;
    let kg = Keygate::start(&[rec.addr], "");
    let (_, created) = create_key(
        &kg,
        json!({"name": "raced", "scopes": ["read"], "owner": "ada@example.com"}),
    )
    .await;
    let id = created["data"]["id"].as_str().unwrap().to_owned();
    let rotations = (0..6).map(|_| {
        kg.operator()
            .post(kg.control_url(&format!("/v1/keys/{id}/rotate")))
            .send()
    });
    let statuses: Vec<StatusCode> = futures_util::future::join_all(rotations)
        .await
        .into_iter()
        .map(|r| r.unwrap().status())
        .collect();
    assert_eq!(
        statuses
            .iter()
            .filter(|s| **s == StatusCode::CREATED)
            .count(),
        1,
        "{statuses:?}"
    );
    assert!(statuses
        .iter()
        .all(|s| [StatusCode::CREATED, StatusCode::CONFLICT].contains(s)));
    let listed: Value = kg
        .operator()
        .get(kg.control_url("/v1/keys?owner=ada@example.com"))
        .send_json()
        .await;
    let successors = listed["data"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|k| k["name"] == "raced" && k["status"] == "active")
        .count();
    assert_eq!(successors, 1, "{listed}");
}

/// What the console's key form offers: the scopes, with what each contains, and the
/// providers of the caller's own workspace only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_scopes_and_providers_a_key_may_name_are_listed_for_the_caller() {
    let backend = Backend::start();
    let kg = Keygate::start(&[backend.addr], "");
    kg.cli(&["workspaces", "add", "globex"]);
    kg.cli(&["providers", "add", "theirs", "--workspace", "globex"]);

    let scopes = kg
        .client()
        .get(kg.control_url("/v1/scopes"))
        .expect(StatusCode::OK)
        .await;
    let scope = |name: &str| {
        scopes["data"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["name"] == name)
            .unwrap_or_else(|| panic!("{name} in {scopes}"))
            .clone()
    };
    assert_eq!(scope("files:read")["actions"], json!(["readFile"]));
    let write = scope("write");
    for within in ["read", "files:write", "files:delete"] {
        assert!(
            write["includes"]
                .as_array()
                .unwrap()
                .contains(&json!(within)),
            "{write}"
        );
    }
    assert!(!write["includes"]
        .as_array()
        .unwrap()
        .contains(&json!("admin")));

    // A key of acme sees acme's providers; the operator sees every one.
    let names = |v: Value| -> Vec<Value> {
        v["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["name"].clone())
            .collect()
    };
    let ours = kg
        .client()
        .get(kg.control_url("/v1/providers"))
        .expect(StatusCode::OK)
        .await;
    assert_eq!(names(ours), [json!("local"), json!("other")]);
    let every = kg
        .operator()
        .get(kg.control_url("/v1/providers"))
        .expect(StatusCode::OK)
        .await;
    assert_eq!(
        names(every),
        [json!("local"), json!("other"), json!("theirs")]
    );
    // Both need a credential.
    for path in ["/v1/scopes", "/v1/providers"] {
        reqwest::Client::new()
            .get(kg.control_url(path))
            .expect(StatusCode::UNAUTHORIZED)
            .await;
    }
}
