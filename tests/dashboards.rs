//! The shipped Prometheus config, alert rules and Grafana dashboard, checked for real: promtool
//! checks and unit-tests the rules, then a Prometheus server scrapes a running keygate and
//! every query of the dashboard must return data after some traffic.
//!
//! Needs Debian's `prometheus` package. Without it the test reports itself skipped, unless
//! `KEYGATE_TEST_REQUIRE_PROMETHEUS` is set (CI sets it), when it fails.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use reqwest::StatusCode;
use serde_json::{json, Value};

fn deploy(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("deploy")
        .join(path)
}

/// `prometheus` and `promtool`, or `None` when the test should be skipped.
fn tools() -> Option<(PathBuf, PathBuf)> {
    let find = |name: &str| {
        std::env::var_os("PATH").and_then(|paths| {
            std::env::split_paths(&paths)
                .map(|d| d.join(name))
                .find(|p| p.is_file())
        })
    };
    match (find("prometheus"), find("promtool")) {
        (Some(p), Some(t)) => Some((p, t)),
        _ if std::env::var_os("KEYGATE_TEST_REQUIRE_PROMETHEUS").is_some() => {
            panic!("prometheus and promtool are required (apt-get install prometheus)")
        }
        _ => {
            eprintln!("skipped: prometheus is not installed (apt-get install prometheus)");
            None
        }
    }
}

fn promtool(tool: &Path, args: &[&str]) {
    let out = Command::new(tool)
        .args(args)
        .current_dir(deploy("prometheus"))
        .output()
        .expect("promtool runs");
    assert!(
        out.status.success(),
        "promtool {args:?}:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Every query of the dashboard, with Grafana's interval variables made concrete.
fn dashboard_queries() -> Vec<(String, String)> {
    let text = std::fs::read_to_string(deploy("grafana/keygate.json")).unwrap();
    let dash: Value = serde_json::from_str(&text).expect("the dashboard is JSON");
    let mut out = Vec::new();
    for panel in dash["panels"].as_array().expect("panels") {
        for target in panel["targets"].as_array().expect("targets") {
            let expr = target["expr"].as_str().expect("expr");
            out.push((
                panel["title"].as_str().unwrap().to_owned(),
                expr.replace("$__rate_interval", "1m"),
            ));
        }
    }
    out
}

async fn query(client: &reqwest::Client, prom: &str, expr: &str) -> Vec<Value> {
    let r: Value = client
        .get(format!("{prom}/api/v1/query"))
        .query(&[("query", expr)])
        .send_json()
        .await;
    assert_eq!(r["status"], "success", "{expr}: {r}");
    r["data"]["result"].as_array().cloned().unwrap_or_default()
}

/// True when the result has a sample that is a number (not NaN).
fn has_data(result: &[Value]) -> bool {
    result.iter().any(|s| {
        s["value"][1]
            .as_str()
            .and_then(|v| v.parse::<f64>().ok())
            .is_some_and(|v| !v.is_nan())
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_scrapes_keygate_and_every_dashboard_query_has_data() {
    let Some((prometheus, tool)) = tools() else {
        return;
    };
    promtool(&tool, &["check", "config", "prometheus.yml"]);
    promtool(&tool, &["check", "rules", "alerts.yml"]);
    promtool(&tool, &["test", "rules", "alerts.test.yml"]);

    let backend = Backend::start();
    let kg = Keygate::start(
        &[backend.addr],
        r#"
[upstream]
connect_timeout = "1s"
[[rate_limit.rule]]
name = "deletes"
action = "deleteFile"
limit = "1/min"
"#,
    );

    // A Prometheus of the test's own, scraping every second, with the shipped alert rules.
    let dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let config = format!(
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files:\n  - {:?}\n\
         scrape_configs:\n  - job_name: keygate\n    static_configs:\n      - targets: [\"{}\"]\n",
        deploy("prometheus/alerts.yml").display().to_string(),
        kg.control
    );
    std::fs::write(dir.path().join("prometheus.yml"), config).unwrap();
    let log = std::fs::File::create(dir.path().join("prometheus.log")).unwrap();
    struct Kill(std::process::Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let _prometheus = Kill(
        Command::new(prometheus)
            .arg(format!(
                "--config.file={}",
                dir.path().join("prometheus.yml").display()
            ))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(std::process::Stdio::null())
            .stderr(log)
            .spawn()
            .expect("prometheus starts"),
    );
    let prom = format!("http://127.0.0.1:{port}");
    let http = reqwest::Client::new();
    let prom_log =
        || std::fs::read_to_string(dir.path().join("prometheus.log")).unwrap_or_default();

    // Traffic only counts once Prometheus has a sample from before it.
    let deadline = Instant::now() + Duration::from_secs(60);
    while !has_data(&query_or_empty(&http, &prom, "up{job=\"keygate\"} == 1").await) {
        assert!(
            Instant::now() < deadline,
            "prometheus never scraped keygate:\n{}",
            prom_log()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }

    let admin = kg.client();
    let create = |body: Value| {
        kg.operator()
            .post(kg.control_url("/v1/keys"))
            .json(&body)
            .send()
    };
    let in_two_days = (time::OffsetDateTime::now_utc() + time::Duration::days(2))
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap();
    let r = create(json!({"name": "reader", "scopes": ["read"], "owner": "ada@example.com", "expiresAt": in_two_days}))
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    let reader = client_with_key(
        r.json::<Value>().await.unwrap()["data"]["key"]
            .as_str()
            .unwrap(),
    );
    // A key revoked by another process (the CLI): the change feed applies it.
    let made: Value = serde_json::from_str(&kg.cli(&[
        "keys",
        "create",
        "--owner",
        "ada@example.com",
        "--name",
        "short-lived",
        "--scope",
        "read",
        "--json",
    ]))
    .unwrap();
    kg.cli(&["keys", "revoke", made["id"].as_str().unwrap()]);
    // A shadow policy that would deny deletes by API keys: every delete below disagrees.
    std::fs::create_dir_all(kg.policies().join("shadow")).unwrap();
    std::fs::write(
        kg.policies().join("shadow/candidate.cedar"),
        "@id(\"keys-never-delete\")\nforbid (principal is Keygate::ApiKey, action == \
         Keygate::Action::\"deleteFile\", resource);\n",
    )
    .unwrap();
    assert!(kg.reload_policies().await.0.is_success());
    for round in 0..3 {
        for i in 0..10 {
            let url = kg.url(&format!("/v1/files/local/r{round}/f{i}.txt"));
            let r = admin.put(&url).body("hello").send().await.unwrap();
            assert!(r.status().is_success(), "{}", r.status());
            assert_eq!(
                admin.get(&url).send().await.unwrap().status(),
                StatusCode::OK
            );
            assert_eq!(
                reader.get(&url).send().await.unwrap().status(),
                StatusCode::OK
            );
            assert_eq!(
                reader.put(&url).body("x").send().await.unwrap().status(),
                StatusCode::FORBIDDEN
            );
        }
        let anonymous = reqwest::get(kg.url("/v1/files/local/a.txt")).await.unwrap();
        assert_eq!(anonymous.status(), StatusCode::UNAUTHORIZED);
        let url = kg.url(&format!("/v1/files/local/r{round}/f0.txt"));
        let statuses = [
            admin.delete(&url).send().await.unwrap().status(),
            admin.delete(&url).send().await.unwrap().status(),
        ];
        assert!(
            statuses.contains(&StatusCode::TOO_MANY_REQUESTS),
            "{statuses:?}"
        );
        assert!(kg.reload_policies().await.0.is_success());
        tokio::time::sleep(Duration::from_millis(1200)).await;
    }
    // The backend goes away: upstream errors.
    drop(backend);
    for _ in 0..3 {
        admin
            .get(kg.url("/v1/files/local/r0/f1.txt"))
            .expect(StatusCode::BAD_GATEWAY)
            .await;
    }

    let queries = dashboard_queries();
    assert!(queries.len() >= 15, "{queries:?}");
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut missing: Vec<(String, String)> = queries;
    while !missing.is_empty() {
        let mut still = Vec::new();
        for (title, expr) in missing {
            if !has_data(&query(&http, &prom, &expr).await) {
                still.push((title, expr));
            }
        }
        missing = still;
        if missing.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "dashboard queries without data: {missing:#?}\nmetrics:\n{}",
            kg.metrics().await
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
    }

    // The alert rules load and evaluate against real keygate series.
    let rules: Value = http.get(format!("{prom}/api/v1/rules")).send_json().await;
    let all: Vec<&Value> = rules["data"]["groups"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|g| g["rules"].as_array().unwrap())
        .collect();
    let written = std::fs::read_to_string(deploy("prometheus/alerts.yml"))
        .unwrap()
        .matches("- alert:")
        .count();
    assert!(written >= 7);
    assert_eq!(
        all.len(),
        written,
        "every rule of alerts.yml is loaded: {rules}"
    );
    for rule in all {
        assert_eq!(rule["health"], "ok", "{rule}");
    }
    // The reader key expires within a week: its alert is pending or firing.
    let alerts = query(
        &http,
        &prom,
        "ALERTS{alertname=\"KeygateKeysExpiringSoon\"}",
    )
    .await;
    assert!(!alerts.is_empty(), "no KeygateKeysExpiringSoon alert");
}

async fn query_or_empty(client: &reqwest::Client, prom: &str, expr: &str) -> Vec<Value> {
    let Ok(r) = client
        .get(format!("{prom}/api/v1/query"))
        .query(&[("query", expr)])
        .send()
        .await
    else {
        return Vec::new();
    };
    r.json::<Value>()
        .await
        .ok()
        .and_then(|v| v["data"]["result"].as_array().cloned())
        .unwrap_or_default()
}
