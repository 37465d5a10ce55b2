//! Hostile clients against the real processes: connections that trickle, floods that would
//! grow memory, paths that would cost CPU. Each bound must hold while honest traffic is served.

mod common;

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use common::*;
use reqwest::StatusCode;
use serde_json::json;

/// Opens a connection and sends `first`, then one byte of `rest` every `every`, until the
/// server closes the connection or 15 s pass; returns how long the server kept it open.
fn trickle(addr: SocketAddr, first: &[u8], rest: &[u8], every: Duration) -> Duration {
    let started = Instant::now();
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
    s.write_all(first).unwrap();
    let mut buf = [0u8; 4096];
    for byte in rest.iter().cycle() {
        std::thread::sleep(every);
        if s.write_all(&[*byte]).is_err() {
            break;
        }
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {}
            Err(_) => break,
        }
        if started.elapsed() > Duration::from_secs(15) {
            break;
        }
    }
    started.elapsed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_headers_and_bodies_are_cut_at_their_deadlines_while_others_are_served() {
    let rec = Recorder::start().await;
    let kg = Keygate::start(
        &[rec.addr],
        "[server]\nheader_timeout = \"2s\"\nbody_timeout = \"2s\"\n",
    );
    let (data, control, key) = (kg.data, kg.control, kg.key.clone());
    // A header trickled a byte every 400 ms never completes: each read would restart a
    // per-read timer, the whole-header deadline does not restart.
    let header = std::thread::spawn(move || {
        trickle(
            data,
            b"GET /v1/files/local/x HTTP/1.1\r\n",
            b"X-Slow: aaaa\r\n",
            Duration::from_millis(400),
        )
    });
    let control_header = std::thread::spawn(move || {
        trickle(
            control,
            b"GET /healthz HTTP/1.1\r\n",
            b"X-Slow: aaaa\r\n",
            Duration::from_millis(400),
        )
    });
    // A body that stalls for longer than the body timeout.
    let body = std::thread::spawn(move || {
        let head = format!(
            "PUT /v1/files/local/slow HTTP/1.1\r\nHost: t\r\nX-API-Key: {key}\r\nContent-Length: 100\r\n\r\nab"
        );
        trickle(data, head.as_bytes(), b"c", Duration::from_millis(3000))
    });
    // Meanwhile honest requests go through.
    let honest = client_with_key(&kg.key);
    for _ in 0..10 {
        honest
            .get(kg.url("/v1/files/local/honest"))
            .expect(StatusCode::OK)
            .await;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    for (what, held) in [
        ("data-plane header", header.join().unwrap()),
        ("control-plane header", control_header.join().unwrap()),
        ("data-plane body", body.join().unwrap()),
    ] {
        assert!(
            held >= Duration::from_millis(1500) && held < Duration::from_secs(8),
            "{what} connection held {held:?}; its deadline is 2 s"
        );
    }
    let m = kg.metrics().await;
    assert!(metric(&m, "keygate_header_timeouts_total{plane=\"data\"}") >= 1.0);
    assert!(!rec
        .requests()
        .iter()
        .any(|s| s.target.ends_with("/slow") && s.complete));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_over_the_per_address_cap_are_refused_with_a_json_503() {
    let rec = Recorder::start().await;
    let kg = Keygate::start(
        &[rec.addr],
        "[server]\nmax_connections_per_address = 3\nheader_timeout = \"5s\"\n",
    );
    let data = kg.data;
    let answers = tokio::task::spawn_blocking(move || {
        // Three idle connections hold the address's places.
        let held: Vec<TcpStream> = (0..3).map(|_| TcpStream::connect(data).unwrap()).collect();
        std::thread::sleep(Duration::from_millis(200));
        let refused = raw_request(data, b"GET /v1/files/local/x HTTP/1.1\r\nHost: t\r\n\r\n");
        drop(held);
        std::thread::sleep(Duration::from_millis(200));
        let after = raw_request(
            data,
            b"GET /v1/files/local/x HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
        );
        (refused, after)
    })
    .await
    .unwrap();
    assert_eq!(answers.0 .0, 503, "{}", answers.0 .1);
    assert_eq!(raw_json(&answers.0 .1)["error"]["code"], "UNAVAILABLE");
    assert_eq!(
        answers.1 .0, 401,
        "a freed place serves again: {}",
        answers.1 .1
    );
    let m = kg.metrics().await;
    assert_eq!(
        metric(
            &m,
            "keygate_connections_refused_total{plane=\"data\",reason=\"per_address\"}"
        ),
        1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn floods_of_fresh_emails_and_addresses_keep_the_limiters_bounded() {
    let rec = Recorder::start().await;
    let kg = Keygate::start(
        &[rec.addr],
        "[auth]\nlimiter_capacity = 100\nforbidden_per_minute = 1000000\npassword_workers = 2\n",
    );
    let rss_before = kg.proc.rss_kib();
    // A 2 MB email never reaches anything: the body limit answers first.
    let huge = "a".repeat(2 * 1024 * 1024);
    let r = reqwest::Client::new()
        .post(kg.control_url("/v1/auth/login"))
        .json(&json!({"email": format!("{huge}@example.com"), "password": "x"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::PAYLOAD_TOO_LARGE);
    // An email longer than any address can be is refused before it is counted.
    reqwest::Client::new()
        .post(kg.control_url("/v1/auth/login"))
        .json(&json!({"email": format!("{}@example.com", "b".repeat(300)), "password": "x"}))
        .expect(StatusCode::BAD_REQUEST)
        .await;
    // Failed logins with fresh emails from fresh addresses (127.0.x.y).
    let from = |n: u32| IpAddr::from([127, 0, 1 + (n / 250) as u8, 1 + (n % 250) as u8]);
    // In waves that fit the password queue, so that every one is verified and counted: 150
    // accounts against a table of 100.
    let login = |n: u32| {
        let url = kg.control_url("/v1/auth/login");
        async move {
            let c = reqwest::Client::builder()
                .local_address(from(n))
                .build()
                .unwrap();
            c.post(url)
                .json(&json!({"email": format!("nobody-{n}@example.com"), "password": "wrong"}))
                .send()
                .await
                .unwrap()
                .status()
        }
    };
    for wave in 0..5u32 {
        let statuses = futures_util::future::join_all((0..30).map(|i| login(wave * 30 + i))).await;
        for status in statuses {
            assert_eq!(status, StatusCode::UNAUTHORIZED);
        }
    }
    // Unknown keys from 600 fresh addresses: each counted against its own address.
    let style_key = unissued_key();
    let probes = (0..600u32).map(|n| {
        let url = kg.url("/v1/files/local/x");
        let key = style_key.clone();
        async move {
            let c = reqwest::Client::builder()
                .local_address(from(n))
                .build()
                .unwrap();
            c.get(url)
                .header("x-api-key", key)
                .send()
                .await
                .unwrap()
                .status()
        }
    });
    for status in futures_util::future::join_all(probes).await {
        assert_eq!(status, StatusCode::UNAUTHORIZED);
    }
    let m = kg.metrics().await;
    let entries = |l: &str| {
        metric(
            &m,
            &format!("keygate_failure_limiter_entries{{limiter=\"{l}\"}}"),
        )
    };
    // Each table holds at most the capacity (counters and blocks, failures and 403s).
    assert!(entries("address") <= 4.0 * 100.0, "{}", entries("address"));
    assert!(
        entries("address") >= 50.0,
        "the addresses were counted: {}",
        entries("address")
    );
    assert!(
        entries("login_account") <= 2.0 * 100.0,
        "{}",
        entries("login_account")
    );
    assert!(
        entries("login_address") <= 2.0 * 100.0,
        "{}",
        entries("login_address")
    );
    let grown_mib = kg.proc.rss_kib().saturating_sub(rss_before) / 1024;
    eprintln!(
        "after 150 failed logins and 600 unknown keys from fresh addresses: +{grown_mib} MiB, \
         entries address {} login_account {} login_address {}",
        entries("address"),
        entries("login_account"),
        entries("login_address")
    );
    // Two password workers hold 19 MiB of argon2 memory each, for good; the rest is slack.
    assert!(grown_mib < 64, "keygate grew by {grown_mib} MiB");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deep_path_is_refused_or_decided_like_a_shallow_one() {
    let rec = Recorder::start().await;
    let kg = Keygate::start(&[rec.addr], "");
    let key = {
        let r: serde_json::Value = kg
            .operator()
            .post(kg.control_url("/v1/keys"))
            .json(
                &json!({"name": "deep", "scopes": ["read"], "owner": "ada@example.com",
                "providers": [{"provider": "local", "basePath": "/backups"}]}),
            )
            .expect(StatusCode::CREATED)
            .await;
        r["data"]["key"].as_str().unwrap().to_owned()
    };
    let c = client_with_key(&key);
    // A target of `depth` segments in all (`/v1/files/local/backups` is four of them).
    let deep = |depth: usize, leaf: usize| {
        format!("/v1/files/local/backups{}/f-{leaf}", "/d".repeat(depth - 5))
    };
    // 256 segments are served; one more is refused.
    c.get(kg.url(&deep(256, 0))).expect(StatusCode::OK).await;
    let body = c
        .get(kg.url(&deep(257, 0)))
        .expect(StatusCode::BAD_REQUEST)
        .await;
    assert!(body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("deeper"));
    // Outside the base path, deep or not: 403.
    c.get(kg.url(&format!("/v1/files/local{}", "/d".repeat(200))))
        .expect(StatusCode::FORBIDDEN)
        .await;
    // Fresh leaves miss the decision cache: deep decisions cost what shallow ones do (the
    // bound is loose: the defect cost hundreds of times more).
    let cpu = |n: usize, depth: usize| {
        let c = c.clone();
        let urls: Vec<String> = (0..n)
            .map(|i| kg.url(&deep(depth, 1000 * depth + i)))
            .collect();
        async move {
            for u in urls {
                assert_eq!(c.get(u).send().await.unwrap().status(), StatusCode::OK);
            }
        }
    };
    let before = kg.proc.cpu_seconds();
    cpu(200, 6).await;
    let shallow = kg.proc.cpu_seconds() - before;
    let before = kg.proc.cpu_seconds();
    cpu(200, 250).await;
    let deep_cost = kg.proc.cpu_seconds() - before;
    eprintln!("CPU for 200 fresh decisions: depth 6 {shallow:.2} s, depth 250 {deep_cost:.2} s");
    assert!(
        deep_cost <= 3.0 * shallow + 0.5,
        "200 decisions at depth 250 took {deep_cost:.2} s of CPU, at depth 6 {shallow:.2} s"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_concurrent_guesses_for_one_account_is_counted_like_a_sequence() {
    let rec = Recorder::start().await;
    let kg = Keygate::start(&[rec.addr], "");
    let from = |n: u8| IpAddr::from([127, 0, 9, 1 + n]);
    let guesses = (0..20u8).map(|n| {
        let url = kg.control_url("/v1/auth/login");
        async move {
            let c = reqwest::Client::builder()
                .local_address(from(n))
                .build()
                .unwrap();
            c.post(url)
                .json(&json!({"email": "ada@example.com", "password": format!("guess {n}")}))
                .send()
                .await
                .unwrap()
                .status()
        }
    });
    let statuses = futures_util::future::join_all(guesses).await;
    let verified = statuses
        .iter()
        .filter(|s| **s == StatusCode::UNAUTHORIZED)
        .count();
    // Five failures per account and 15 minutes: however the guesses arrive, no more than
    // five are ever verified; the others wait their turn or are throttled.
    assert!(verified <= 5, "{verified} guesses verified: {statuses:?}");
    assert!(statuses
        .iter()
        .all(|s| [StatusCode::UNAUTHORIZED, StatusCode::TOO_MANY_REQUESTS].contains(s)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn behind_a_trusted_proxy_each_client_is_throttled_on_its_own() {
    let rec = Recorder::start().await;
    // The test connects from 127.0.0.1: the "load balancer".
    let kg = Keygate::start(
        &[rec.addr],
        "[server]\ntrusted_proxies = [\"127.0.0.1/32\"]\n[auth]\nfailures_per_minute = 3\nforbidden_per_minute = 1000000\n",
    );
    let probe = |client: &'static str, extra: Option<(&'static str, &'static str)>| {
        let mut r = reqwest::Client::new()
            .get(kg.url("/v1/files/local/x"))
            .header("x-api-key", unissued_key())
            .header("x-forwarded-for", client);
        if let Some((k, v)) = extra {
            r = r.header(k, v);
        }
        async move { r.send().await.unwrap().status() }
    };
    // Failures named by the proxy as 203.0.113.1, past its three a minute: throttled.
    let mut last = StatusCode::OK;
    for _ in 0..5 {
        last = probe("203.0.113.1", None).await;
    }
    assert_eq!(last, StatusCode::TOO_MANY_REQUESTS);
    // Another client behind the same proxy is not.
    assert_eq!(probe("203.0.113.2", None).await, StatusCode::UNAUTHORIZED);
    // A Forwarded header the client wrote itself is not read: it cannot pick a fresh address.
    assert_eq!(
        probe("203.0.113.1", Some(("forwarded", "for=198.51.100.99"))).await,
        StatusCode::TOO_MANY_REQUESTS
    );
}
