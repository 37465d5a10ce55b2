//! Rate limits, the per-address throttle, the audit log and the metrics, through real
//! processes.

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::*;
use reqwest::StatusCode;
use serde_json::{json, Value};

fn header(r: &reqwest::Response, name: &str) -> String {
    r.headers()
        .get(name)
        .unwrap_or_else(|| panic!("no {name} header"))
        .to_str()
        .unwrap()
        .to_owned()
}

async fn key_with(kg: &Keygate, body: Value) -> (String, String) {
    let r = kg
        .operator()
        .post(kg.control_url("/v1/keys"))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    let v: Value = r.json().await.unwrap();
    (
        v["data"]["key"].as_str().unwrap().to_owned(),
        v["data"]["id"].as_str().unwrap().to_owned(),
    )
}

/// What one response said about the rate limit.
struct Seen {
    status: StatusCode,
    reset: u64,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_limit_is_exact_under_concurrency_and_every_response_says_where_it_stands() {
    const LIMIT: usize = 200;
    let rec = Recorder::start().await;
    let kg = Keygate::start(&[rec.addr], "[rate_limit]\ndefault = \"200/2s\"\n");
    let client = kg.client();
    let url = kg.url("/v1/files/local/burst.txt");

    // One look at an allowed response first.
    let r = client.get(&url).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(header(&r, "x-ratelimit-limit"), "200");
    let remaining: u64 = header(&r, "x-ratelimit-remaining").parse().unwrap();
    assert!(remaining < 200);
    let reset: u64 = header(&r, "x-ratelimit-reset").parse().unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    assert!(reset >= now && reset <= now + 2, "reset {reset}, now {now}");
    assert_eq!(header(&r, "ratelimit-policy"), "\"default\";q=200;w=2");
    let ietf = header(&r, "ratelimit");
    assert!(
        ietf.starts_with(&format!("\"default\";r={remaining};t=")),
        "{ietf}"
    );

    // 16 clients on one key as fast as they can for four windows.
    let deadline = Instant::now() + Duration::from_secs(8);
    let mut tasks = Vec::new();
    for _ in 0..16 {
        let (client, url) = (client.clone(), url.clone());
        tasks.push(tokio::spawn(async move {
            let mut seen = Vec::new();
            let mut refusal = None;
            while Instant::now() < deadline {
                let r = client.get(&url).send().await.unwrap();
                let status = r.status();
                let reset = header(&r, "x-ratelimit-reset").parse().unwrap();
                if status == StatusCode::TOO_MANY_REQUESTS && refusal.is_none() {
                    let retry = header(&r, "retry-after");
                    let remaining = header(&r, "x-ratelimit-remaining");
                    let body: Value = r.json().await.unwrap();
                    refusal = Some((retry, remaining, body));
                }
                seen.push(Seen { status, reset });
            }
            (seen, refusal)
        }));
    }
    let mut per_window: BTreeMap<u64, (usize, usize)> = BTreeMap::new();
    let mut refusal = None;
    for t in tasks {
        let (seen, r) = t.await.unwrap();
        refusal = refusal.or(r);
        for s in seen {
            let w = per_window.entry(s.reset).or_default();
            match s.status {
                StatusCode::OK => w.0 += 1,
                StatusCode::TOO_MANY_REQUESTS => w.1 += 1,
                other => panic!("unexpected {other}"),
            }
        }
    }
    // The first and last windows were only partly under load; every one between was whole.
    let windows: Vec<_> = per_window.iter().collect();
    assert!(windows.len() >= 4, "{per_window:?}");
    for (reset, (ok, limited)) in &windows[1..windows.len() - 1] {
        assert!(
            (LIMIT..=LIMIT * 105 / 100).contains(ok),
            "window ending {reset}: {ok} allowed, {limited} limited; all: {per_window:?}"
        );
        assert!(*limited > 0, "the clients did not saturate the limit");
    }

    let (retry, remaining, body) = refusal.expect("some requests were limited");
    assert_eq!(remaining, "0");
    assert_eq!(body["success"], false);
    assert_eq!(body["error"]["code"], "RATE_LIMIT_EXCEEDED");
    let retry_after = body["error"]["retryAfter"].as_u64().unwrap();
    assert_eq!(retry, retry_after.to_string());
    assert!((1..=2).contains(&retry_after), "{retry_after}");

    let limited: usize = per_window.values().map(|w| w.1).sum();
    let m = kg.metrics().await;
    assert_eq!(
        metric(
            &m,
            "keygate_rate_limited_total{limiter=\"principal\",policy=\"default\"}"
        ),
        limited as f64
    );
    // Nothing limited reached the backend.
    let allowed: usize = per_window.values().map(|w| w.0).sum();
    assert_eq!(rec.requests().len(), allowed + 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rules_override_the_default_by_action_and_scope() {
    let rec = Recorder::start().await;
    let kg = Keygate::start(
        &[rec.addr],
        r#"
[rate_limit]
default = "1000/min"
[[rate_limit.rule]]
name = "deletes"
action = "deleteFile"
limit = "2/min"
[[rate_limit.rule]]
name = "readers"
scope = "read"
limit = "3/min"
"#,
    );
    let admin = kg.client();
    let r = admin
        .get(kg.url("/v1/files/local/a.txt"))
        .send()
        .await
        .unwrap();
    assert_eq!(header(&r, "x-ratelimit-limit"), "1000");
    assert_eq!(header(&r, "ratelimit-policy"), "\"default\";q=1000;w=60");
    // Deletes have a counter of their own.
    for expected in [
        StatusCode::OK,
        StatusCode::OK,
        StatusCode::TOO_MANY_REQUESTS,
    ] {
        let r = admin
            .delete(kg.url("/v1/files/local/a.txt"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), expected);
        assert_eq!(header(&r, "ratelimit-policy"), "\"deletes\";q=2;w=60");
    }
    let r = admin
        .get(kg.url("/v1/files/local/a.txt"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(header(&r, "x-ratelimit-remaining"), "998");

    // A key with the `read` scope falls under the readers' rule.
    let (reader, _) = key_with(
        &kg,
        json!({"name": "reader", "scopes": ["read"], "owner": "ada@example.com"}),
    )
    .await;
    let reader = client_with_key(&reader);
    for remaining in ["2", "1", "0"] {
        let r = reader
            .get(kg.url("/v1/files/local/a.txt"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(header(&r, "x-ratelimit-remaining"), remaining);
    }
    let r = reader
        .get(kg.url("/v1/files/local/a.txt"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
    let retry: u64 = header(&r, "retry-after").parse().unwrap();
    assert!((1..=60).contains(&retry));
    assert_eq!(header(&r, "ratelimit-policy"), "\"readers\";q=3;w=60");
    let m = kg.metrics().await;
    for series in [
        "keygate_rate_limited_total{limiter=\"principal\",policy=\"deletes\"}",
        "keygate_rate_limited_total{limiter=\"principal\",policy=\"readers\"}",
    ] {
        assert_eq!(metric(&m, series), 1.0, "{series}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_address_that_keeps_being_refused_is_throttled() {
    let rec = Recorder::start().await;
    let kg = Keygate::start(&[rec.addr], "[auth]\nforbidden_per_minute = 5\n");
    let (reader, _) = key_with(
        &kg,
        json!({"name": "reader", "scopes": ["read"], "owner": "ada@example.com"}),
    )
    .await;
    let reader = client_with_key(&reader);
    // Probing for writes it may not make: each is 403 until the address is over its budget.
    let mut statuses = Vec::new();
    for _ in 0..8 {
        let r = reader
            .put(kg.url("/v1/files/local/probe.txt"))
            .body("x")
            .send()
            .await
            .unwrap();
        statuses.push(r.status().as_u16());
    }
    assert_eq!(&statuses[..6], &[403; 6], "{statuses:?}");
    assert_eq!(&statuses[6..], &[429; 2], "{statuses:?}");
    // The whole address waits, whatever key it sends now.
    let r = kg
        .client()
        .get(kg.url("/v1/files/local/a.txt"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
    let retry: u64 = header(&r, "retry-after").parse().unwrap();
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"]["code"], "RATE_LIMIT_EXCEEDED");
    assert_eq!(body["error"]["retryAfter"], retry);
    assert!(rec.requests().is_empty(), "nothing was forwarded");
    let m = kg.metrics().await;
    assert_eq!(
        metric(
            &m,
            "keygate_rate_limited_total{limiter=\"address\",policy=\"failures\"}"
        ),
        3.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_decision_is_audited_by_id_with_its_policies_and_no_secret() {
    let rec = Recorder::start().await;
    let kg = Keygate::start(&[rec.addr], "");
    let (confined, confined_id) = key_with(
        &kg,
        json!({"name": "backups", "scopes": ["read"], "owner": "ada@example.com",
               "providers": [{"provider": "local", "basePath": "/backups"}]}),
    )
    .await;
    let confined_client = client_with_key(&confined);
    let request_id = |r: &reqwest::Response| header(r, "x-keygate-request-id");

    let allowed = confined_client
        .get(kg.url("/v1/files/local/backups/a.txt"))
        .send()
        .await
        .unwrap();
    assert_eq!(allowed.status(), StatusCode::OK);
    let outside = confined_client
        .get(kg.url("/v1/files/local/documents/a.txt"))
        .send()
        .await
        .unwrap();
    assert_eq!(outside.status(), StatusCode::FORBIDDEN);
    let no_scope = confined_client
        .delete(kg.url("/v1/files/local/backups/a.txt"))
        .send()
        .await
        .unwrap();
    assert_eq!(no_scope.status(), StatusCode::FORBIDDEN);
    let unknown = client_with_key(&unissued_key())
        .get(kg.url("/v1/files/local/a.txt"))
        .send()
        .await
        .unwrap();
    assert_eq!(unknown.status(), StatusCode::UNAUTHORIZED);
    let ids = [
        request_id(&allowed),
        request_id(&outside),
        request_id(&no_scope),
        request_id(&unknown),
    ];

    let lines = kg
        .audit_until(|l| {
            ids.iter()
                .all(|id| l.iter().any(|e| e["requestId"] == **id))
        })
        .await;
    let line = |id: &str| -> Value {
        let found: Vec<&Value> = lines.iter().filter(|e| e["requestId"] == id).collect();
        assert_eq!(found.len(), 1, "one line for {id}: {lines:?}");
        found[0].clone()
    };
    let a = line(&ids[0]);
    assert_eq!(a["decision"], "allow");
    assert_eq!(a["reason"], "allowed");
    assert_eq!(a["principal"]["keyId"], confined_id);
    assert_eq!(a["principal"]["kind"], "apiKey");
    assert_eq!(a["status"], 200);
    assert!(a["policies"].as_array().is_some_and(|p| !p.is_empty()));

    // A forbid decided it: the line names the policy.
    let o = line(&ids[1]);
    assert_eq!(o["decision"], "deny");
    assert_eq!(o["reason"], "FORBIDDEN");
    assert_eq!(o["status"], 403);
    assert_eq!(o["resources"], json!(["local:/documents/a.txt"]));
    assert_eq!(o["details"]["restriction"], "base_path");
    let policies = o["policies"].as_array().unwrap();
    assert!(
        policies
            .iter()
            .any(|p| p.as_str().unwrap().contains("base-path")),
        "{o}"
    );
    // No permit applied: no policy decided it, and the line says what was missing.
    let n = line(&ids[2]);
    assert_eq!(n["decision"], "deny");
    assert_eq!(n["policies"], json!([]));
    assert_eq!(n["details"]["granted"], json!(["read"]));
    // An unknown key: who it was is not known, and the key itself is nowhere.
    let u = line(&ids[3]);
    assert_eq!(u["reason"], "UNAUTHORIZED");
    assert_eq!(u["details"]["reason"], "unknown");
    assert_eq!(u["principal"], Value::Null);
    for l in &lines {
        assert!(l["time"].as_str().is_some_and(|t| t.ends_with('Z')));
        assert!(l["latencyMs"].as_f64().is_some());
        assert_eq!(l["policySet"].as_str().map(str::len), Some(64));
    }
    let m = kg.metrics().await;
    assert!(metric(&m, "keygate_audit_events_total{decision=\"deny\"}") >= 3.0);
    assert_eq!(
        metric(&m, "keygate_audit_dropped_total{reason=\"queue_full\"}"),
        0.0
    );
    // The harness scans the log and the audit file for every secret when `kg` is dropped.
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_metric_moves_with_the_traffic_that_drives_it() {
    let rec = Recorder::start().await;
    let kg = Keygate::start(&[rec.addr], "[policies]\nwatch = false\n");
    let before = kg.metrics().await;
    let client = kg.client();
    for _ in 0..3 {
        client
            .get(kg.url("/v1/files/local/m.txt"))
            .expect(StatusCode::OK)
            .await;
    }
    reqwest::Client::new()
        .get(kg.url("/v1/files/local/m.txt"))
        .expect(StatusCode::UNAUTHORIZED)
        .await;
    assert!(kg.reload_policies().await.0.is_success());
    let after = kg
        .metrics_with(&["keygate_requests_total{action=\"readFile\",outcome=\"UNAUTHORIZED\""])
        .await;
    let moved = |series: &str| metric(&after, series) - metric(&before, series);
    assert_eq!(
        moved("keygate_requests_total{action=\"readFile\",outcome=\"forwarded\",status=\"200\"}"),
        3.0
    );
    assert_eq!(
        moved(
            "keygate_requests_total{action=\"readFile\",outcome=\"UNAUTHORIZED\",status=\"401\"}"
        ),
        1.0
    );
    assert_eq!(
        moved("keygate_auth_failures_total{reason=\"missing\"}"),
        1.0
    );
    assert_eq!(moved("keygate_identity_cache_total{result=\"miss\"}"), 1.0);
    assert_eq!(moved("keygate_identity_cache_total{result=\"hit\"}"), 2.0);
    assert_eq!(moved("keygate_decision_cache_total{result=\"miss\"}"), 1.0);
    assert_eq!(moved("keygate_decision_cache_total{result=\"hit\"}"), 2.0);
    assert_eq!(
        moved("keygate_policy_reloads_total{result=\"unchanged\"}"),
        1.0
    );
    assert_eq!(
        moved("keygate_overhead_seconds_count{action=\"readFile\"}"),
        3.0
    );
    assert_eq!(
        moved("keygate_upstream_duration_seconds_count{action=\"readFile\"}"),
        3.0
    );
    // No label ever carries a key, a user or a path.
    for line in after.lines().filter(|l| !l.starts_with('#')) {
        assert!(
            !line.contains(&kg.key) && !line.contains("m.txt") && !line.contains("ada@"),
            "{line}"
        );
    }
}
