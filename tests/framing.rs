//! Request framing, as bytes on a socket: each shape a proxy and a backend could read
//! differently is answered with a clean refusal or served exactly once, and a recording
//! backend shows what reached it. Any request smuggled inside another (a second request in a
//! body, after a chunked terminator, after a refusal) must never reach the backend.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use common::*;

/// What a shape must get.
#[derive(Debug, Clone, Copy)]
enum Expect {
    /// Refused with one of these statuses (or the connection closed without an answer), and
    /// nothing of it forwarded.
    Refused(&'static [u16]),
    /// Forwarded exactly once, with this body, and answered 200.
    Once(&'static [u8]),
    /// Either refused (nothing forwarded) or forwarded exactly once: the one thing that must
    /// not happen is a second request.
    RefusedOrOnce,
    /// Refused when the fault shows up in the body, after the request had started streaming
    /// to the backend: that upload is aborted (its body never completes), never finished.
    RefusedMidBody,
}

/// Every final status line in `text`, in order (an interim `100 Continue` is left out).
fn statuses(text: &str) -> Vec<u16> {
    text.match_indices("HTTP/1.1 ")
        .filter(|(i, _)| *i == 0 || text[..*i].ends_with('\n'))
        .filter_map(|(i, _)| text.get(i + 9..i + 12)?.parse().ok())
        .filter(|s: &u16| *s >= 200)
        .collect()
}

/// Sends `bytes` and reads until the server closes or stays quiet for a second.
fn exchange(addr: SocketAddr, bytes: &[u8]) -> String {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
    let _ = s.write_all(bytes);
    let mut out = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    while let Ok(n) = s.read(&mut buf) {
        if n == 0 {
            break;
        }
        out.extend_from_slice(&buf[..n]);
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The shapes. `{P}` is the case's own path, `{K}` the key; `SMUGGLED` marks a request that
/// must never arrive.
fn shapes() -> Vec<(&'static str, String, Expect)> {
    use Expect::*;
    let get = |extra: &str| {
        format!(
            "GET {{P}} HTTP/1.1\r\nHost: t\r\nX-API-Key: {{K}}\r\n{extra}Connection: close\r\n\r\n"
        )
    };
    let put = |extra: &str, body: &str| {
        format!("PUT {{P}} HTTP/1.1\r\nHost: t\r\nX-API-Key: {{K}}\r\n{extra}Connection: close\r\n\r\n{body}")
    };
    let smuggle = "GET /v1/files/local/SMUGGLED HTTP/1.1\r\nHost: t\r\nX-API-Key: {K}\r\n\r\n";
    let many = |n: usize| (0..n).map(|i| format!("X-F{i}: v\r\n")).collect::<String>();
    vec![
        // Content-Length and Transfer-Encoding together, in every order and spelling.
        ("cl then te", put("Content-Length: 5\r\nTransfer-Encoding: chunked\r\n", "5\r\nhello\r\n0\r\n\r\n"), Refused(&[400])),
        ("te then cl", put("Transfer-Encoding: chunked\r\nContent-Length: 5\r\n", "5\r\nhello\r\n0\r\n\r\n"), Refused(&[400])),
        ("te chunked and cl 0", put("Transfer-Encoding: chunked\r\nContent-Length: 0\r\n", "0\r\n\r\n"), Refused(&[400])),
        ("te upper-case name", put("TRANSFER-ENCODING: chunked\r\ncontent-length: 3\r\n", "0\r\n\r\n"), Refused(&[400])),
        // Lengths.
        ("conflicting lengths", put("Content-Length: 5\r\nContent-Length: 6\r\n", "hello!"), Refused(&[400])),
        ("equal lengths twice", put("Content-Length: 5\r\nContent-Length: 5\r\n", "hello"), RefusedOrOnce),
        ("length list", put("Content-Length: 5, 5\r\n", "hello"), Refused(&[400])),
        ("negative length", put("Content-Length: -1\r\n", "hello"), Refused(&[400])),
        ("plus length", put("Content-Length: +5\r\n", "hello"), Refused(&[400])),
        ("hex length", put("Content-Length: 0x5\r\n", "hello"), Refused(&[400])),
        ("overflowing length", put("Content-Length: 99999999999999999999999\r\n", "hello"), Refused(&[400])),
        ("empty length", put("Content-Length: \r\n", "hello"), Refused(&[400])),
        ("length with spaces around", put("Content-Length:  5 \r\n", "hello"), Once(b"hello")),
        ("length shorter than body, then a request", put("Content-Length: 5\r\n", &format!("hello{smuggle}")), Once(b"hello")),
        // Transfer-Encoding values.
        ("te twice", put("Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n", "0\r\n\r\n"), Refused(&[400])),
        ("te list", put("Transfer-Encoding: gzip, chunked\r\n", "0\r\n\r\n"), Refused(&[400])),
        ("te identity", put("Transfer-Encoding: identity\r\n", "hello"), Refused(&[400])),
        ("te xchunked", put("Transfer-Encoding: xchunked\r\n", "0\r\n\r\n"), Refused(&[400])),
        ("te chunked then identity", put("Transfer-Encoding: chunked\r\nTransfer-Encoding: identity\r\n", "0\r\n\r\n"), Refused(&[400])),
        ("te mixed case value", put("Transfer-Encoding: ChUnKeD\r\n", "5\r\nhello\r\n0\r\n\r\n"), Once(b"hello")),
        ("te with trailing space", put("Transfer-Encoding: chunked \r\n", "5\r\nhello\r\n0\r\n\r\n"), RefusedOrOnce),
        ("te underscore is not te", put("Transfer_Encoding: chunked\r\nContent-Length: 5\r\n", "hello"), RefusedOrOnce),
        ("te folded onto the next line", put("Transfer-Encoding:\r\n chunked\r\nContent-Length: 5\r\n", "hello"), Refused(&[400])),
        ("te with a tab before the colon", put("Transfer-Encoding\t: chunked\r\n", "0\r\n\r\n"), Refused(&[400])),
        ("te with a space before the colon", put("Transfer-Encoding : chunked\r\n", "0\r\n\r\n"), Refused(&[400])),
        // Chunk sizes.
        ("chunk with extension", put("Transfer-Encoding: chunked\r\n", "5;name=v\r\nhello\r\n0\r\n\r\n"), Once(b"hello")),
        ("chunk size upper-case hex", put("Transfer-Encoding: chunked\r\n", "A\r\n0123456789\r\n0\r\n\r\n"), Once(b"0123456789")),
        ("chunk size 0x", put("Transfer-Encoding: chunked\r\n", "0x5\r\nhello\r\n0\r\n\r\n"), RefusedMidBody),
        ("chunk size negative", put("Transfer-Encoding: chunked\r\n", "-5\r\nhello\r\n0\r\n\r\n"), RefusedMidBody),
        ("chunk size overflowing", put("Transfer-Encoding: chunked\r\n", "FFFFFFFFFFFFFFFFFF\r\nhello\r\n0\r\n\r\n"), RefusedMidBody),
        ("chunk size with leading space", put("Transfer-Encoding: chunked\r\n", " 5\r\nhello\r\n0\r\n\r\n"), RefusedMidBody),
        ("chunk shorter than its size", put("Transfer-Encoding: chunked\r\n", "9\r\nhello\r\n0\r\n\r\n"), RefusedMidBody),
        ("chunk data without its crlf", put("Transfer-Encoding: chunked\r\n", "5\r\nhelloX0\r\n\r\n"), RefusedMidBody),
        ("terminator then a smuggled request", put("Transfer-Encoding: chunked\r\n", &format!("0\r\n\r\n{smuggle}")), Once(b"")),
        ("chunk with a trailer", put("Transfer-Encoding: chunked\r\n", "5\r\nhello\r\n0\r\nX-Trailer: 1\r\n\r\n"), RefusedOrOnce),
        // Line endings, folding and bytes.
        ("bare lf line endings", "GET {P} HTTP/1.1\nHost: t\nX-API-Key: {K}\nConnection: close\n\n".to_owned(), RefusedOrOnce),
        ("bare cr in a header", get("X-A: a\rb\r\n"), Refused(&[400])),
        ("obs-fold in a header", get("X-A: a\r\n b\r\n"), RefusedOrOnce),
        ("nul in a header value", get("X-A: a\0b\r\n"), Refused(&[400])),
        ("header name with a space", get("X A: b\r\n"), Refused(&[400])),
        ("header without a colon", get("X-A\r\n"), Refused(&[400])),
        ("empty header name", get(": b\r\n"), Refused(&[400])),
        // The request line.
        ("two spaces in the request line", "GET  {P} HTTP/1.1\r\nHost: t\r\nX-API-Key: {K}\r\nConnection: close\r\n\r\n".to_owned(), Refused(&[400])),
        ("http/2.0 in the request line", "GET {P} HTTP/2.0\r\nHost: t\r\nX-API-Key: {K}\r\nConnection: close\r\n\r\n".to_owned(), Refused(&[400, 505])),
        ("http/1.0", "GET {P} HTTP/1.0\r\nHost: t\r\nX-API-Key: {K}\r\n\r\n".to_owned(), Once(b"")),
        ("absolute-form target", "GET http://t{P} HTTP/1.1\r\nHost: t\r\nX-API-Key: {K}\r\nConnection: close\r\n\r\n".to_owned(), Refused(&[400])),
        ("asterisk target", "OPTIONS * HTTP/1.1\r\nHost: t\r\nX-API-Key: {K}\r\nConnection: close\r\n\r\n".to_owned(), Refused(&[400])),
        ("lower-case method", "get {P} HTTP/1.1\r\nHost: t\r\nX-API-Key: {K}\r\nConnection: close\r\n\r\n".to_owned(), Refused(&[400, 404])),
        ("unknown method", "BREW {P} HTTP/1.1\r\nHost: t\r\nX-API-Key: {K}\r\nConnection: close\r\n\r\n".to_owned(), Refused(&[404])),
        ("connect", "CONNECT t:443 HTTP/1.1\r\nHost: t\r\nX-API-Key: {K}\r\nConnection: close\r\n\r\n".to_owned(), Refused(&[400, 404, 405])),
        ("trace", "TRACE {P} HTTP/1.1\r\nHost: t\r\nX-API-Key: {K}\r\nConnection: close\r\n\r\n".to_owned(), Refused(&[400])),
        ("target over 8 KiB", format!("GET /v1/files/local/{} HTTP/1.1\r\nHost: t\r\nX-API-Key: {{K}}\r\nConnection: close\r\n\r\n", "a".repeat(9000)), Refused(&[400])),
        // Hosts.
        ("two host headers", "GET {P} HTTP/1.1\r\nHost: a\r\nHost: b\r\nX-API-Key: {K}\r\nConnection: close\r\n\r\n".to_owned(), Refused(&[400])),
        // Sizes and counts.
        ("100 header fields", get(&many(94)), Once(b"")),
        ("over 100 header fields", get(&many(120)), Refused(&[431])),
        ("a 40 KiB header", get(&format!("X-Big: {}\r\n", "b".repeat(40 * 1024))), Refused(&[431])),
        ("over 256 header fields", get(&many(300)), Refused(&[400, 431])),
        // Headers that must not change what is decided or what the backend does.
        ("method override on a get", get("X-HTTP-Method-Override: DELETE\r\n"), Once(b"")),
        ("destination on a get", get("Destination: /v1/files/local/other\r\nOverwrite: T\r\n"), Once(b"")),
        ("a credential listed in connection", get("Connection: x-api-key\r\n"), RefusedOrOnce),
        ("upgrade on a get", get("Upgrade: websocket\r\nConnection: Upgrade\r\n"), RefusedOrOnce),
        ("two api-key headers", get("X-API-Key: {K}\r\n"), Refused(&[400])),
        ("credential in the query", "GET {P}?api%5Fkey={K} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n".to_owned(), Refused(&[400])),
        ("expect 100-continue", put("Content-Length: 5\r\nExpect: 100-continue\r\n", "hello"), Once(b"hello")),
        ("a get with a body", "GET {P} HTTP/1.1\r\nHost: t\r\nX-API-Key: {K}\r\nContent-Length: 4\r\nConnection: close\r\n\r\nbody".to_owned(), Once(b"body")),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_request_shape_is_refused_cleanly_or_served_once() {
    let rec = Recorder::start().await;
    let kg = Keygate::start(&[rec.addr], "");
    let shapes = shapes();
    assert!(shapes.len() >= 60, "{} shapes", shapes.len());
    let (addr, key) = (kg.data, kg.key.clone());
    let results = tokio::task::spawn_blocking(move || {
        shapes
            .into_iter()
            .enumerate()
            .map(|(n, (name, template, expect))| {
                let path = format!("/v1/files/local/shape-{n}");
                let bytes = template.replace("{P}", &path).replace("{K}", &key);
                (n, name, expect, exchange(addr, bytes.as_bytes()))
            })
            .collect::<Vec<_>>()
    })
    .await
    .unwrap();
    // Let the backend finish recording what it got.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let seen = rec.requests();
    assert!(
        seen.iter().all(|s| !s.target.contains("SMUGGLED")),
        "a smuggled request reached the backend: {:?}",
        seen.iter()
            .filter(|s| s.target.contains("SMUGGLED"))
            .collect::<Vec<_>>()
    );
    let mut wrong = Vec::new();
    for (n, name, expect, response) in results {
        let marker = format!("/shape-{n}");
        let all: Vec<&Seen> = seen
            .iter()
            .filter(|s| s.target.split('?').next() == Some(&format!("/v1/files/local{marker}")))
            .collect();
        let aborted = all.iter().filter(|s| !s.complete).count();
        let arrived: Vec<&Seen> = all.into_iter().filter(|s| s.complete).collect();
        let got = statuses(&response);
        let first = got.first().copied();
        let ok = match expect {
            Expect::Refused(allowed) => {
                arrived.is_empty() && first.is_none_or(|s| allowed.contains(&s))
            }
            Expect::Once(body) => {
                arrived.len() == 1 && first == Some(200) && arrived[0].body == body
            }
            Expect::RefusedMidBody => arrived.is_empty() && first.is_none_or(|s| s == 400),
            Expect::RefusedOrOnce => match arrived.len() {
                0 => first.is_none_or(|s| (400..500).contains(&s)),
                1 => first == Some(200),
                _ => false,
            },
        };
        if !ok {
            wrong.push(format!(
                "#{n} {name}: expected {expect:?}, answered {got:?}, backend saw {} complete request(s) {:?} and {aborted} aborted",
                arrived.len(),
                arrived.iter().map(|s| String::from_utf8_lossy(&s.body).into_owned()).collect::<Vec<_>>()
            ));
        }
        // Every refusal keygate writes itself is in the JSON shape.
        if let Some(status) = first.filter(|s| *s >= 400 && !response.is_empty()) {
            let body = raw_json(&response);
            if body != serde_json::Value::Null {
                assert_eq!(body["success"], false, "#{n} {name} ({status})");
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "{} shape(s) went wrong:\n{}",
        wrong.len(),
        wrong.join("\n")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_requests_are_never_forwarded_twice_nor_after_a_refusal() {
    let rec = Recorder::start().await;
    let kg = Keygate::start(&[rec.addr], "");
    let (addr, key) = (kg.data, kg.key.clone());
    let responses = tokio::task::spawn_blocking(move || {
        let ok = |p: &str, close: bool| {
            format!(
                "GET /v1/files/local/{p} HTTP/1.1\r\nHost: t\r\nX-API-Key: {key}\r\n{}\r\n",
                if close { "Connection: close\r\n" } else { "" }
            )
        };
        // Two good requests in one write: the first is served, the connection closes and the
        // second is dropped (pipelining is off: RFC 9112 lets the client retry it), never
        // forwarded.
        let both = exchange(
            addr,
            format!("{}{}", ok("pipe-a", false), ok("pipe-b", true)).as_bytes(),
        );
        // A malformed request, then a good one: the refusal ends the connection.
        let after_bad = exchange(
            addr,
            format!(
                "GET /v1/files/local/x/../y HTTP/1.1\r\nHost: t\r\nX-API-Key: {key}\r\n\r\n{}",
                ok("pipe-after-400", true)
            )
            .as_bytes(),
        );
        // A refused request whose body was never read, then a good one that the unread body
        // would otherwise hide: the connection ends after the refusal.
        let unread = exchange(
            addr,
            format!(
                "PUT /v1/files/local/nokey HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\n\r\nhello{}",
                ok("pipe-after-401", true)
            )
            .as_bytes(),
        );
        (both, after_bad, unread)
    })
    .await
    .unwrap();
    assert_eq!(statuses(&responses.0), [200], "{}", responses.0);
    assert_eq!(statuses(&responses.1), [400], "{}", responses.1);
    assert_eq!(statuses(&responses.2), [401], "{}", responses.2);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let targets: Vec<String> = rec.requests().iter().map(|s| s.target.clone()).collect();
    assert_eq!(targets, ["/v1/files/local/pipe-a"]);
}
