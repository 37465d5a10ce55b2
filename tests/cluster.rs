//! Several keygate instances on one PostgreSQL database: a change made on one reaches the others
//! within milliseconds (PostgreSQL's notices), and one that was cut off from the database
//! catches up on everything it missed when it is back, whatever the writers' clocks said and in
//! whatever order their transactions committed. With a shared Redis, a limit holds across the
//! instances however the load is spread, and while Redis is away each instance keeps its share.
//! Skipped when `KEYGATE_TEST_POSTGRES_URL` (and for the limits `KEYGATE_TEST_REDIS_URL`) is
//! unset; CI always sets both.

mod common;

use std::time::{Duration, Instant};

use common::*;
use reqwest::StatusCode;
use serde_json::{json, Value};

const PATH: &str = "/v1/files/local/a.txt";

/// Many keys per owner, and no throttle on the 401s and 403s the tests wait for.
const CONFIG: &str = "[keys]\nmax_active_per_user = 1000\n\
                      [auth]\nfailures_per_minute = 1000000\nforbidden_per_minute = 1000000\n";

/// Milliseconds until `client` is answered `refused` by `kg` for `req`, asking in a tight loop
/// (at most `limit`); every answer before that must be `allowed`.
async fn until_refused(
    kg: &Keygate,
    key: &str,
    method: reqwest::Method,
    allowed: StatusCode,
    refused: StatusCode,
    limit: Duration,
) -> f64 {
    let client = client_with_key(key);
    let start = Instant::now();
    loop {
        let status = client
            .request(method.clone(), kg.url(PATH))
            .send()
            .await
            .unwrap()
            .status();
        if status == refused {
            return start.elapsed().as_secs_f64() * 1000.0;
        }
        assert_eq!(status, allowed, "only {allowed} before the change arrives");
        assert!(
            start.elapsed() < limit,
            "still {allowed} after {limit:?} on {}",
            kg.data
        );
        tokio::time::sleep(Duration::from_micros(200)).await;
    }
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

fn summary(name: &str, lags: &mut [f64]) -> (f64, f64, f64) {
    lags.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let (p50, p99, max) = (
        percentile(lags, 0.5),
        percentile(lags, 0.99),
        *lags.last().unwrap(),
    );
    eprintln!(
        "{name}: {} samples, p50 {p50:.1} ms, p99 {p99:.1} ms, max {max:.1} ms",
        lags.len()
    );
    (p50, p99, max)
}

async fn cluster_status(kg: &Keygate) -> Value {
    kg.operator()
        .get(kg.control_url("/v1/admin/cluster"))
        .expect(StatusCode::OK)
        .await["data"]
        .clone()
}

/// Three instances on one database, with `config`; the first holds the fixture.
async fn three_with(rec: &Recorder, config: &str) -> Option<(Keygate, Keygate, Keygate)> {
    Some(three_on(rec, config, TestDb::postgres().await?).await)
}

async fn three_on(rec: &Recorder, config: &str, db: TestDb) -> (Keygate, Keygate, Keygate) {
    let upstream = [rec.addr];
    let config = config.to_owned();
    tokio::task::spawn_blocking(move || {
        let a = Keygate::start_with_db(&upstream, &config, db);
        let b = a.another(&upstream, &config, a.db.share());
        let c = a.another(&upstream, &config, a.db.share());
        (a, b, c)
    })
    .await
    .unwrap()
}

async fn three(rec: &Recorder) -> Option<(Keygate, Keygate, Keygate)> {
    three_with(rec, CONFIG).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revocations_on_one_instance_refuse_the_key_on_the_others_within_100_ms() {
    let rec = Recorder::start().await;
    let Some((a, b, c)) = three(&rec).await else {
        return;
    };
    const N: usize = 200;
    let mut keys = Vec::new();
    for i in 0..N {
        let made = a
            .create_key(
                json!({"name": format!("k{i}"), "scopes": ["read"], "owner": "ada@example.com"}),
            )
            .await;
        let key = made["key"].as_str().unwrap().to_owned();
        // Each key is used on every instance first, so each holds it in its cache.
        for kg in [&a, &b, &c] {
            client_with_key(&key)
                .get(kg.url(PATH))
                .expect(StatusCode::OK)
                .await;
        }
        keys.push((made["id"].as_str().unwrap().to_owned(), key));
    }
    let mut lags = Vec::new();
    for (id, key) in &keys {
        a.operator()
            .delete(a.control_url(&format!("/v1/keys/{id}")))
            .expect(StatusCode::OK)
            .await;
        let get = reqwest::Method::GET;
        let limit = Duration::from_secs(5);
        let (lb, lc) = tokio::join!(
            until_refused(
                &b,
                key,
                get.clone(),
                StatusCode::OK,
                StatusCode::UNAUTHORIZED,
                limit
            ),
            until_refused(
                &c,
                key,
                get,
                StatusCode::OK,
                StatusCode::UNAUTHORIZED,
                limit
            ),
        );
        lags.push(lb);
        lags.push(lc);
    }
    let (_, p99, _) = summary("revocation lag (2 instances x 200 revocations)", &mut lags);
    assert!(p99 <= 100.0, "p99 {p99:.1} ms");

    // Each instance says what it applied, and how: notices, not the poll.
    for kg in [&b, &c] {
        let status = cluster_status(kg).await;
        assert_eq!(status["database"], "postgres");
        assert_eq!(status["changes"]["mechanism"], "notify");
        assert_eq!(status["changes"]["listening"], true);
        assert!(status["changes"]["changesApplied"].as_u64().unwrap() >= N as u64);
        assert!(status["changes"]["newestChangeAt"].as_i64().unwrap() > 0);
        let metrics = kg.metrics().await;
        assert_eq!(
            metric(
                &metrics,
                "keygate_change_feed_listening{mechanism=\"notify\"}"
            ),
            1.0
        );
        // Nearly all by notice (the poll, every second, may read one first while a notice's row is
        // being read).
        let notice = metric(&metrics, "keygate_change_lag_seconds_count{via=\"notice\"}");
        let poll = metric(&metrics, "keygate_change_lag_seconds_count{via=\"poll\"}");
        assert!(
            notice + poll >= N as f64 && notice >= 0.9 * N as f64,
            "{notice} by notice, {poll} by poll"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_role_downgrade_on_one_instance_holds_on_every_instance_within_100_ms() {
    let rec = Recorder::start().await;
    let Some((a, b, c)) = three(&rec).await else {
        return;
    };
    let url = a.db.url();
    cli_ok(
        &url,
        &["users", "add", "bob@example.com", "--password-stdin"],
        Some("bob's long password\n"),
    );
    let role = |role: &str| {
        cli_ok(
            &url,
            &[
                "members",
                "add",
                "--workspace",
                "acme",
                "--user",
                "bob@example.com",
                "--role",
                role,
            ],
            None,
        );
    };
    role("editor");
    let made = a
        .create_key(json!({"name": "bob's", "scopes": ["write"], "owner": "bob@example.com"}))
        .await;
    let key = made["key"].as_str().unwrap().to_owned();
    let put = reqwest::Method::PUT;
    let mut lags = Vec::new();
    for _ in 0..10 {
        for kg in [&b, &c] {
            client_with_key(&key)
                .put(kg.url(PATH))
                .body("x")
                .expect(StatusCode::OK)
                .await;
        }
        // The CLI is another process writing to the database, as an admin's tool would.
        role("viewer");
        let limit = Duration::from_secs(5);
        let (lb, lc) = tokio::join!(
            until_refused(
                &b,
                &key,
                put.clone(),
                StatusCode::OK,
                StatusCode::FORBIDDEN,
                limit
            ),
            until_refused(
                &c,
                &key,
                put.clone(),
                StatusCode::OK,
                StatusCode::FORBIDDEN,
                limit
            ),
        );
        lags.extend([lb, lc]);
        role("editor");
        // Back to editor: writes work again everywhere (and warm the caches for the next round).
        for kg in [&b, &c] {
            until_refused(
                kg,
                &key,
                put.clone(),
                StatusCode::FORBIDDEN,
                StatusCode::OK,
                limit,
            )
            .await;
        }
    }
    let (p50, _, max) = summary("role downgrade lag (2 instances x 10)", &mut lags);
    assert!(
        p50 <= 100.0 && max <= 500.0,
        "p50 {p50:.1} ms, max {max:.1} ms"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_cut_off_from_the_database_catches_up_on_what_it_missed() {
    let rec = Recorder::start().await;
    let Some(db) = TestDb::postgres().await else {
        return;
    };
    let relay = Cuttable::start(db.server_addr().await).await;
    let upstream = [rec.addr];
    let relay_addr = relay.addr.to_string();
    let (a, b) = tokio::task::spawn_blocking(move || {
        let a = Keygate::start_with_db(&upstream, CONFIG, db);
        // b reaches the database only through the relay.
        let b = a.another(&upstream, CONFIG, a.db.share().through(&relay_addr));
        (a, b)
    })
    .await
    .unwrap();
    let mut made = Vec::new();
    for name in ["late", "skewed", "plain"] {
        let k = a
            .create_key(json!({"name": name, "scopes": ["read"], "owner": "ada@example.com"}))
            .await;
        client_with_key(k["key"].as_str().unwrap())
            .get(b.url(PATH))
            .expect(StatusCode::OK)
            .await;
        made.push((
            k["id"].as_str().unwrap().to_owned(),
            k["key"].as_str().unwrap().to_owned(),
        ));
    }
    // A writer whose transaction stays open across several of b's polls, and whose clock is an
    // hour behind: it revokes "late" and "skewed" with a change time an hour old.
    use sqlx::Connection;
    let mut writer = sqlx::PgConnection::connect(&a.db.url()).await.unwrap();
    let mut tx = writer.begin().await.unwrap();
    let an_hour_ago = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
        - 3_600_000;
    for (id, _) in &made[..2] {
        sqlx::query(
            "UPDATE api_keys SET revoked_at = $1, generation = generation + 1, updated_at = $1 \
             WHERE id = $2",
        )
        .bind(an_hour_ago)
        .bind(id)
        .execute(&mut *tx)
        .await
        .unwrap();
    }
    tokio::time::sleep(Duration::from_millis(2500)).await;
    // b is cut off; the open transaction commits (b misses its notices), and "plain" is revoked
    // through a (b misses that notice too).
    relay.cut();
    tx.commit().await.unwrap();
    a.operator()
        .delete(a.control_url(&format!("/v1/keys/{}", made[2].0)))
        .expect(StatusCode::OK)
        .await;
    // While cut off, b answers cached keys from its cache (it cannot know better): no change.
    client_with_key(&made[2].1)
        .get(b.url(PATH))
        .expect(StatusCode::OK)
        .await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    relay.restore();
    // Back: it reconnects (within its 5-second backoff) and refuses all three, and never allows
    // them again.
    for (_, key) in &made {
        let lag = until_refused(
            &b,
            key,
            reqwest::Method::GET,
            StatusCode::OK,
            StatusCode::UNAUTHORIZED,
            Duration::from_secs(10),
        )
        .await;
        eprintln!("refused {lag:.0} ms after the database came back");
    }
    for _ in 0..20 {
        for (_, key) in &made {
            client_with_key(key)
                .get(b.url(PATH))
                .expect(StatusCode::UNAUTHORIZED)
                .await;
        }
    }
    // The listener is back too (it retries with a backoff of at most 5 seconds).
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        let status = cluster_status(&b).await;
        if status["changes"]["listening"] == true || Instant::now() > deadline {
            break status;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(status["changes"]["listening"], true, "{status}");
    assert!(
        status["changes"]["reconnects"].as_u64().unwrap() >= 1,
        "{status}"
    );
    assert_eq!(status["changes"]["lastError"], Value::Null, "{status}");
}

/// Three instances sharing their limits through Redis: `limit` by default, and `extra`.
fn shared_limits(redis_url: &str, prefix: &str, limit: &str, extra: &str) -> String {
    format!(
        "[keys]\nmax_active_per_user = 1000\n\
         [rate_limit]\ndefault = \"{limit}\"\nbackend = \"redis\"\nredis_url = \"{redis_url}\"\n\
         redis_prefix = \"{prefix}\"\ninstances = 3\n{extra}"
    )
}

/// Three instances sharing their limits through Redis under a key prefix of the test's own, or
/// `None` (skipped) without Redis or PostgreSQL.
async fn three_sharing(
    rec: &Recorder,
    limit: &str,
    extra: &str,
) -> Option<(Keygate, Keygate, Keygate)> {
    let (redis, prefix) = test_redis()?;
    three_with(rec, &shared_limits(&redis, &prefix, limit, extra)).await
}

const WINDOW_MS: u64 = 5_000;

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// Requests with `key` for one whole window (from just after it starts to just before it ends),
/// by 8 clients in a loop, sent to the instances in proportion to `weights`: how many each
/// instance admitted. Anything but 200 and 429 fails the test.
async fn one_window(instances: &[&Keygate], weights: &[usize], key: &str) -> Vec<u64> {
    let until_next = WINDOW_MS - now_ms() % WINDOW_MS;
    tokio::time::sleep(Duration::from_millis(until_next + 150)).await;
    let end = now_ms() - now_ms() % WINDOW_MS + WINDOW_MS - 250;
    let schedule: Vec<usize> = weights
        .iter()
        .enumerate()
        .flat_map(|(i, w)| std::iter::repeat_n(i, *w))
        .collect();
    let urls: Vec<String> = instances.iter().map(|kg| kg.url(PATH)).collect();
    let mut workers = Vec::new();
    for w in 0..8 {
        let (schedule, urls, client) = (schedule.clone(), urls.clone(), client_with_key(key));
        workers.push(tokio::spawn(async move {
            let mut admitted = vec![0u64; urls.len()];
            let mut n = w;
            while now_ms() < end {
                let i = schedule[n % schedule.len()];
                n += 1;
                let status = client.get(&urls[i]).send().await.unwrap().status();
                match status {
                    StatusCode::OK => admitted[i] += 1,
                    StatusCode::TOO_MANY_REQUESTS => {}
                    other => panic!("unexpected {other}"),
                }
            }
            admitted
        }));
    }
    let mut total = vec![0u64; instances.len()];
    for w in workers {
        for (t, a) in total.iter_mut().zip(w.await.unwrap()) {
            *t += a;
        }
    }
    total
}

async fn fresh_key(kg: &Keygate, name: &str) -> String {
    kg.create_key(json!({"name": name, "scopes": ["read"], "owner": "ada@example.com"}))
        .await["key"]
        .as_str()
        .unwrap()
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_limit_shared_through_redis_holds_across_three_instances_however_the_load_is_spread() {
    let rec = Recorder::start().await;
    const L: u64 = 300;
    let Some((a, b, c)) = three_sharing(&rec, "300/5s", "").await else {
        return;
    };
    for (spread, weights) in [("even", [1, 1, 1]), ("uneven", [16, 3, 1])] {
        let key = fresh_key(&a, spread).await;
        let admitted = one_window(&[&a, &b, &c], &weights, &key).await;
        let total: u64 = admitted.iter().sum();
        eprintln!("{spread}: admitted {admitted:?} = {total} of a limit of {L}");
        assert!(
            (L..=L * 105 / 100).contains(&total),
            "{spread}: {total} admitted ({admitted:?}), limit {L}"
        );
        assert!(admitted.iter().all(|n| *n > 0), "{admitted:?}");
    }
    for kg in [&a, &b, &c] {
        assert_eq!(
            metric(
                &kg.metrics().await,
                "keygate_rate_limit_backend_up{backend=\"redis\"}"
            ),
            1.0
        );
    }
}

async fn wait_for_metric(kg: &Keygate, series: &str, value: f64) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while metric(&kg.metrics().await, series) != value {
        assert!(Instant::now() < deadline, "{series} never became {value}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn rate_limits_ready(kg: &Keygate) -> Value {
    let r = reqwest::get(kg.control_url("/readyz")).await.unwrap();
    assert_eq!(
        r.status(),
        StatusCode::OK,
        "Redis away never makes keygate unready"
    );
    r.json::<Value>().await.unwrap()["checks"]["rateLimits"].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_redis_away_each_instance_keeps_its_share_and_sharing_resumes_when_it_is_back() {
    let Some((redis, prefix)) = test_redis() else {
        return;
    };
    let host = redis
        .trim_start_matches("redis://")
        .split('/')
        .next()
        .unwrap()
        .to_owned();
    let addr = tokio::net::lookup_host(host).await.unwrap().next().unwrap();
    let relay = Cuttable::start(addr).await;
    let rec = Recorder::start().await;
    const L: u64 = 300;
    let config = shared_limits(&format!("redis://{}", relay.addr), &prefix, "300/5s", "");
    let Some((a, b, c)) = three_with(&rec, &config).await else {
        return;
    };
    for kg in [&a, &b, &c] {
        wait_for_metric(kg, "keygate_rate_limit_backend_up{backend=\"redis\"}", 1.0).await;
        assert_eq!(rate_limits_ready(kg).await["state"], "ok");
    }

    relay.cut();
    for kg in [&a, &b, &c] {
        wait_for_metric(kg, "keygate_rate_limit_backend_up{backend=\"redis\"}", 0.0).await;
        let state = rate_limits_ready(kg).await;
        assert_eq!(state["state"], "fallback", "{state}");
        assert!(
            metric(
                &kg.metrics().await,
                "keygate_rate_limit_backend_errors_total"
            ) > 0.0
        );
    }
    // Each instance allows its third of the limit; spread evenly, the cluster still holds it.
    let key = fresh_key(&a, "while-away").await;
    let admitted = one_window(&[&a, &b, &c], &[1, 1, 1], &key).await;
    eprintln!("Redis away: admitted {admitted:?}");
    assert_eq!(admitted, vec![L / 3; 3]);

    relay.restore();
    for kg in [&a, &b, &c] {
        wait_for_metric(kg, "keygate_rate_limit_backend_up{backend=\"redis\"}", 1.0).await;
        assert_eq!(rate_limits_ready(kg).await["state"], "ok");
    }
    // Shared again: one instance alone may use the whole limit, and no more.
    let key = fresh_key(&a, "back").await;
    let admitted = one_window(&[&a, &b, &c], &[1, 0, 0], &key).await;
    eprintln!("Redis back: admitted {admitted:?}");
    assert!((L..=L * 105 / 100).contains(&admitted[0]), "{admitted:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failure_throttles_shared_through_redis_count_every_instance() {
    let rec = Recorder::start().await;
    let Some((a, b, c)) = three_sharing(
        &rec,
        "1000000/min",
        "[auth]\nfailures_per_minute = 30\nforbidden_per_minute = 1000000\n",
    )
    .await
    else {
        return;
    };
    let all = [&a, &b, &c];
    // Unknown keys from one address, round robin: the address is blocked after 30 failures in
    // all, not 30 on each instance.
    let mut unauthorized = 0;
    for i in 0..120 {
        let status = client_with_key(&unissued_key())
            .get(all[i % 3].url(PATH))
            .send()
            .await
            .unwrap()
            .status();
        match status {
            StatusCode::UNAUTHORIZED => unauthorized += 1,
            StatusCode::TOO_MANY_REQUESTS => {}
            other => panic!("unexpected {other}"),
        }
    }
    eprintln!("401s before the address was blocked everywhere: {unauthorized}");
    assert!((30..=36).contains(&unauthorized), "{unauthorized} 401s");
    for kg in all {
        client_with_key(&kg.key)
            .get(kg.url(PATH))
            .expect(StatusCode::TOO_MANY_REQUESTS)
            .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_throttles_shared_through_redis_count_every_instance() {
    let rec = Recorder::start().await;
    let Some((a, b, c)) = three_sharing(
        &rec,
        "1000000/min",
        "[auth]\nfailures_per_minute = 1000000\nforbidden_per_minute = 1000000\n\
         login_failures_per_address = 1000\n",
    )
    .await
    else {
        return;
    };
    let all = [&a, &b, &c];
    // Only failures count: the right password gives back what its attempt took, and an attempt
    // refused before its password is tried (a bad device name) takes nothing.
    let attempt = |kg: &Keygate, password: &str, device: &str| {
        reqwest::Client::new()
            .post(kg.control_url("/v1/auth/login"))
            .json(&json!({"email": "ada@example.com", "password": password, "device": device}))
            .send()
    };
    for i in 0..10 {
        let r = attempt(all[i % 3], "not ada's password", "bad\u{1}device")
            .await
            .unwrap();
        let status = r.status();
        let body = r.text().await.unwrap();
        assert_eq!(status, StatusCode::BAD_REQUEST, "bad device {i}: {body}");
    }
    for i in 0..4 {
        let status = attempt(all[i % 3], "not ada's password", "phone")
            .await
            .unwrap()
            .status();
        assert_eq!(status, StatusCode::UNAUTHORIZED, "wrong password {i}");
    }
    let status = attempt(&a, "ada's long password", "phone")
        .await
        .unwrap()
        .status();
    assert_eq!(status, StatusCode::OK);
    let status = attempt(&b, "not ada's password", "phone")
        .await
        .unwrap()
        .status();
    assert_eq!(
        status,
        StatusCode::UNAUTHORIZED,
        "the fifth failure is still tried"
    );
    let status = attempt(&c, "ada's long password", "phone")
        .await
        .unwrap()
        .status();
    assert_eq!(
        status,
        StatusCode::TOO_MANY_REQUESTS,
        "locked after five failures"
    );
    // Another account: a password guessed on one instance after another: its 5 failures are
    // counted together, and the sixth attempt is refused wherever it lands.
    let login = |kg: &Keygate| {
        reqwest::Client::new()
            .post(kg.control_url("/v1/auth/login"))
            .json(&json!({"email": "bob@example.com", "password": "not bob's password"}))
            .send()
    };
    for i in 0..5 {
        assert_eq!(
            login(all[i % 3]).await.unwrap().status(),
            StatusCode::UNAUTHORIZED,
            "attempt {i}"
        );
    }
    assert_eq!(
        login(all[5 % 3]).await.unwrap().status(),
        StatusCode::TOO_MANY_REQUESTS
    );
    // Guesses at once on every instance: each is counted before its password is tried, so three
    // rounds of three simultaneous guesses try exactly the quota of 5, never more.
    let guess = |kg: &Keygate| {
        reqwest::Client::new()
            .post(kg.control_url("/v1/auth/login"))
            .json(&json!({"email": "nobody@example.com", "password": "a guess"}))
            .send()
    };
    let mut tried = 0;
    for _ in 0..3 {
        let (x, y, z) = tokio::join!(guess(&a), guess(&b), guess(&c));
        for status in [x, y, z].map(|r| r.unwrap().status()) {
            match status {
                StatusCode::UNAUTHORIZED => tried += 1,
                StatusCode::TOO_MANY_REQUESTS => {}
                other => panic!("unexpected {other}"),
            }
        }
    }
    assert_eq!(tried, 5, "guesses tried across three instances at once");
}

async fn policy_status(kg: &Keygate) -> Value {
    kg.operator()
        .get(kg.control_url("/v1/admin/policy"))
        .expect(StatusCode::OK)
        .await["data"]
        .clone()
}

/// Waits until every instance runs `version`; the milliseconds it took.
async fn until_version(all: &[&Keygate], version: i64) -> f64 {
    let start = Instant::now();
    for kg in all {
        while policy_status(kg).await["version"] != version {
            assert!(
                start.elapsed() < Duration::from_secs(5),
                "{} never ran version {version}: {}",
                kg.data,
                policy_status(kg).await
            );
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }
    start.elapsed().as_secs_f64() * 1000.0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_published_policy_version_runs_on_every_instance_and_a_rollback_brings_back_the_last() {
    let rec = Recorder::start().await;
    let Some(db) = TestDb::postgres().await else {
        return;
    };
    let url = db.url();
    let shipped = shipped_policies();
    let shipped = shipped.to_str().unwrap();
    // Nothing published yet: an instance refuses to start rather than guess.
    let dir = tempfile::tempdir().unwrap();
    let config_path = dir.path().join("keygate.toml");
    std::fs::write(&config_path, "[policies]\nsource = \"database\"\n").unwrap();
    let mut serve = std::process::Command::new(bin("keygate"))
        .args([
            "--config",
            config_path.to_str().unwrap(),
            "--database-url",
            &url,
        ])
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--control-listen",
            "127.0.0.1:0",
        ])
        .env("KEYGATE_KEYS_PEPPER", TEST_PEPPER)
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = serve.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = serve.kill();
            panic!("keygate served with no policy version published");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut err = String::new();
    std::io::Read::read_to_string(&mut serve.stderr.take().unwrap(), &mut err).unwrap();
    assert!(!status.success());
    assert!(err.contains("no policy version was published"), "{err}");
    let out = cli_ok(
        &url,
        &[
            "policy", "publish", shipped, "--by", "ada", "--note", "first",
        ],
        None,
    );
    assert!(out.contains("published version 1"), "{out}");
    // The same files again (a deploy job on every start): no new version.
    let out = cli_ok(&url, &["policy", "publish", shipped], None);
    assert!(out.contains("unchanged: version 1"), "{out}");

    let config = format!("{CONFIG}[policies]\nsource = \"database\"\n");
    let (a, b, c) = three_on(&rec, &config, db).await;
    let all = [&a, &b, &c];
    until_version(&all, 1).await;
    let frozen = "/v1/files/local/frozen/a.txt";
    for kg in all {
        client_with_key(&kg.key)
            .get(kg.url(frozen))
            .expect(StatusCode::OK)
            .await;
    }

    // A change that breaks the shipped scenarios is not published.
    let changed = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(shipped_policies()).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            let to = changed.path().join(path.file_name().unwrap());
            std::fs::create_dir(&to).unwrap();
            for f in std::fs::read_dir(&path).unwrap() {
                let f = f.unwrap().path();
                std::fs::copy(&f, to.join(f.file_name().unwrap())).unwrap();
            }
        } else {
            std::fs::copy(&path, changed.path().join(path.file_name().unwrap())).unwrap();
        }
    }
    let changed_dir = changed.path().to_str().unwrap();
    std::fs::write(
        changed.path().join("freeze.cedar"),
        "@id(\"no-reads-anywhere\")\nforbid (principal, action == Keygate::Action::\"readFile\", resource);\n",
    )
    .unwrap();
    let (ok, out, err) = cli(&url, &["policy", "publish", changed_dir], None);
    assert!(!ok, "{out}");
    assert!(err.contains("did not get the expected decision"), "{err}");
    // One that passes them is, and every instance runs it at once.
    std::fs::write(
        changed.path().join("freeze.cedar"),
        "@id(\"frozen-folder\")\nforbid (principal, action, resource in Keygate::Path::\"local:/frozen\");\n",
    )
    .unwrap();
    let out = cli_ok(
        &url,
        &["policy", "publish", changed_dir, "--note", "freeze"],
        None,
    );
    assert!(out.contains("published version 2"), "{out}");
    let converged = until_version(&all, 2).await;
    eprintln!("version 2 ran on all three instances {converged:.0} ms after it was published");
    let hashes: Vec<Value> = futures_util::future::join_all(all.map(policy_status))
        .await
        .into_iter()
        .map(|s| s["hash"].clone())
        .collect();
    assert!(hashes.iter().all(|h| *h == hashes[0]), "{hashes:?}");
    for kg in all {
        client_with_key(&kg.key)
            .get(kg.url(frozen))
            .expect(StatusCode::FORBIDDEN)
            .await;
        assert_eq!(metric(&kg.metrics().await, "keygate_policy_version"), 2.0);
    }
    let audit = a
        .audit_until(|lines| lines.iter().any(|e| e["decision"] == "deny"))
        .await;
    let denied = audit
        .iter()
        .rev()
        .find(|e| e["decision"] == "deny")
        .unwrap();
    assert_eq!(denied["policyVersion"], 2, "{denied}");

    // Back to version 1's files, as version 3.
    let out = cli_ok(
        &url,
        &["policy", "rollback", "1", "--note", "unfreeze"],
        None,
    );
    assert!(out.contains("published version 3"), "{out}");
    until_version(&all, 3).await;
    for kg in all {
        client_with_key(&kg.key)
            .get(kg.url(frozen))
            .expect(StatusCode::OK)
            .await;
        assert_eq!(
            policy_status(kg).await["hash"],
            policy_status(&a).await["hash"]
        );
    }
    let history: Value =
        serde_json::from_str(&cli_ok(&url, &["policy", "history", "--json"], None)).unwrap();
    let summary: Vec<(i64, Option<i64>, String)> = history
        .as_array()
        .unwrap()
        .iter()
        .map(|v| {
            (
                v["version"].as_i64().unwrap(),
                v["rollbackOf"].as_i64(),
                v["note"].as_str().unwrap_or("").to_owned(),
            )
        })
        .collect();
    assert_eq!(
        summary,
        vec![
            (3, Some(1), "unfreeze".to_owned()),
            (2, None, "freeze".to_owned()),
            (1, None, "first".to_owned())
        ]
    );
    assert_eq!(history[2]["publishedBy"], "ada");
}
