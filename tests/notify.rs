//! Key expiry reminders through real processes: a real SMTP server (aiosmtpd) receives the
//! email, a recording receiver the signed webhook; each goes out once, a restart sends
//! nothing again, and a failed delivery is tried again until it goes out.

mod common;

use std::time::{Duration, Instant};

use common::*;
use hmac::{Hmac, Mac};
use reqwest::StatusCode;
use serde_json::{json, Value};

const HOOK_SECRET: &str = "a webhook secret of at least 32 characters";
const DAY_MS: i64 = 86_400_000;

fn notify_config(smtp: Option<std::net::SocketAddr>, hook_url: &str, reminders: &str) -> String {
    let email = smtp
        .map(|a| {
            format!(
                "[notify.email]\nhost = \"127.0.0.1\"\nport = {}\nsecurity = \"none\"\n\
                 from = \"keygate <keys@example.com>\"\n",
                a.port()
            )
        })
        .unwrap_or_default();
    format!(
        "[notify]\nreminders = {reminders}\ncheck_interval = \"200ms\"\n\
         console_url = \"https://keys.example.com/console/\"\n{email}\
         [notify.webhook]\nurl = \"{hook_url}\"\nsecret = \"{HOOK_SECRET}\"\n"
    )
}

/// Makes the key look created `days` ago: a key's reminder is due only when its whole life is
/// longer than the threshold.
async fn backdate(kg: &Keygate, id: &str, days: i64) {
    use sqlx::Connection;
    sqlx::any::install_default_drivers();
    let mut db = sqlx::AnyConnection::connect(&kg.db.url()).await.unwrap();
    sqlx::query("UPDATE api_keys SET created_at = created_at - $1 WHERE id = $2")
        .bind(days * DAY_MS)
        .bind(id)
        .execute(&mut db)
        .await
        .unwrap();
}

/// An RFC 3339 time `days` from now (`expiresAt`).
fn in_days(days: i64) -> String {
    in_hours(days * 24)
}

fn in_hours(hours: i64) -> String {
    (time::OffsetDateTime::now_utc() + time::Duration::hours(hours))
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap()
}

async fn until<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "never: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Checks `X-Keygate-Signature` as a receiver would: the HMAC of "<t>.<body>", a recent t.
fn verify_signature(header: &str, body: &[u8]) {
    let (t, v1) = header
        .strip_prefix("t=")
        .and_then(|rest| rest.split_once(",v1="))
        .unwrap_or_else(|| panic!("signature shape: {header}"));
    let sent: i64 = t.parse().unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    assert!((now - sent).abs() < 60, "an old timestamp: {sent}");
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(HOOK_SECRET.as_bytes()).unwrap();
    mac.update(format!("{t}.").as_bytes());
    mac.update(body);
    let expected: String = mac
        .finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert_eq!(v1, expected, "the signature does not verify");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_near_its_expiry_gets_one_email_and_one_signed_webhook_even_across_a_restart() {
    reminders_once(TestDb::sqlite()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reminders_go_out_once_on_postgres_too() {
    let Some(db) = TestDb::postgres().await else {
        return;
    };
    reminders_once(db).await;
}

async fn reminders_once(db: TestDb) {
    if !smtp_sink_installed() {
        return;
    }
    let smtp = SmtpSink::start();
    let hooks = Recorder::start().await;
    let backend = Backend::start();
    let config = notify_config(
        Some(smtp.addr),
        &format!("http://{}/hooks", hooks.addr),
        "[\"7d\"]",
    );
    let upstream = [backend.addr];
    let kg = tokio::task::spawn_blocking(move || Keygate::start_with_db(&upstream, &config, db))
        .await
        .unwrap();

    let mut created = Vec::new();
    for (name, days) in [
        ("nightly backup", 5),
        ("far away", 30),
        ("revoked", 5),
        ("made today", 5),
    ] {
        let key = kg
            .create_key(json!({"name": name, "scopes": ["read"], "expiresAt": in_days(days), "owner": "ada@example.com"}))
            .await;
        created.push(key);
    }
    let id = |i: usize| created[i]["id"].as_str().unwrap().to_owned();
    kg.operator()
        .delete(kg.control_url(&format!("/v1/keys/{}", id(2))))
        .expect(StatusCode::OK)
        .await;
    for i in 0..3 {
        backdate(&kg, &id(i), 60).await;
    }

    // As a mail reader shows it: quoted-printable soft line breaks joined.
    let mail = until("an email", || smtp.messages().into_iter().next())
        .await
        .replace("=\n", "")
        .replace("=3D", "=");
    assert!(mail.contains("To: ada@example.com"), "{mail}");
    assert!(mail.contains("From: keygate <keys@example.com>"), "{mail}");
    assert!(
        mail.contains("Subject: Your API key \"nightly backup\" expires on"),
        "{mail}"
    );
    let prefix = created[0]["displayPrefix"].as_str().unwrap();
    assert!(mail.contains(prefix), "{mail}");
    assert!(mail.contains("in the workspace acme"), "{mail}");
    assert!(mail.contains("https://keys.example.com/console/"), "{mail}");
    assert!(!mail.contains(created[0]["key"].as_str().unwrap()));

    let hook = until("a webhook", || hooks.requests().into_iter().next()).await;
    assert_eq!(hook.method, "POST");
    assert_eq!(hook.target, "/hooks");
    assert_eq!(hook.header("x-keygate-event"), Some("key.expiring"));
    assert_eq!(hook.header("content-type"), Some("application/json"));
    verify_signature(hook.header("x-keygate-signature").unwrap(), &hook.body);
    let event: Value = serde_json::from_slice(&hook.body).unwrap();
    assert_eq!(event["type"], "key.expiring");
    assert_eq!(hook.header("x-keygate-delivery"), event["id"].as_str());
    assert_eq!(event["data"]["key"]["id"], id(0));
    assert_eq!(event["data"]["key"]["name"], "nightly backup");
    assert_eq!(event["data"]["key"]["owner"], "ada@example.com");
    assert_eq!(event["data"]["key"]["expiresAt"], created[0]["expiresAt"]);
    assert_eq!(event["data"]["threshold"], "7days");
    assert!(!String::from_utf8_lossy(&hook.body).contains(created[0]["key"].as_str().unwrap()));

    // Many checks later, still one of each: not the key far from expiry, not the revoked one,
    // not the one whose whole life is shorter than the threshold.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(smtp.messages().len(), 1);
    assert_eq!(hooks.requests().len(), 1);
    let metrics = kg.metrics().await;
    for line in [
        "keygate_reminders_total{channel=\"email\",result=\"sent\"} 1",
        "keygate_reminders_total{channel=\"webhook\",result=\"sent\"} 1",
    ] {
        assert!(metrics.contains(line), "{line}");
    }

    // A restart reads what was sent from the database: nothing goes out twice.
    let kg = tokio::task::spawn_blocking(move || kg.restart(&upstream))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(smtp.messages().len(), 1);
    assert_eq!(hooks.requests().len(), 1);

    // Its owner extends the key by a few days only: it is reminded again, of the new expiry.
    let extended = in_days(6);
    kg.operator()
        .patch(kg.control_url(&format!("/v1/keys/{}", id(0))))
        .json(&json!({"expiresAt": extended}))
        .expect(StatusCode::OK)
        .await;
    let second = until("a second email", || smtp.messages().get(1).cloned()).await;
    assert!(second.contains(&extended[..10]), "{second}");
    until("a second webhook", || hooks.requests().get(1).cloned()).await;
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert_eq!(smtp.messages().len(), 2);
    assert_eq!(hooks.requests().len(), 2);
    drop(kg);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_webhook_is_tried_again_and_each_key_gets_only_its_nearest_reminder() {
    // A receiver that is down at first: its port, bound and released.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let backend = Backend::start();
    let kg = Keygate::start(
        &[backend.addr],
        &notify_config(
            None,
            &format!("http://127.0.0.1:{port}/hooks"),
            "[\"7d\", \"1d\"]",
        ),
    );
    // Two thresholds: a key within the larger one gets that reminder; a key already within
    // the smaller one gets only the smaller one, not both at once.
    let soon = kg
        .create_key(json!({"name": "soon", "scopes": ["read"], "expiresAt": in_days(3), "owner": "ada@example.com"}))
        .await;
    let very_soon = kg
        .create_key(json!({"name": "very soon", "scopes": ["read"], "expiresAt": in_hours(12), "owner": "ada@example.com"}))
        .await;
    for key in [&soon, &very_soon] {
        backdate(&kg, key["id"].as_str().unwrap(), 30).await;
    }
    let failed = "keygate_reminders_total{channel=\"webhook\",result=\"failed\"}";
    let deadline = Instant::now() + Duration::from_secs(15);
    while !kg.metrics().await.contains(failed) {
        assert!(Instant::now() < deadline, "no failed delivery was counted");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // The receiver comes up on that port: the next check delivers, once.
    let seen: std::sync::Arc<std::sync::Mutex<Vec<Vec<u8>>>> = Default::default();
    let log = seen.clone();
    let app = axum::Router::new().route(
        "/hooks",
        axum::routing::post(move |body: axum::body::Bytes| {
            let log = log.clone();
            async move {
                log.lock().unwrap().push(body.to_vec());
                "ok"
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .unwrap();
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    until("both deliveries", || {
        (seen.lock().unwrap().len() >= 2).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let mut delivered: Vec<(String, String)> = seen
        .lock()
        .unwrap()
        .iter()
        .map(|body| {
            let event: Value = serde_json::from_slice(body).unwrap();
            (
                event["data"]["key"]["name"].as_str().unwrap().to_owned(),
                event["data"]["threshold"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    delivered.sort();
    assert_eq!(
        delivered,
        [
            ("soon".to_owned(), "7days".to_owned()),
            ("very soon".to_owned(), "1day".to_owned())
        ]
    );
}
