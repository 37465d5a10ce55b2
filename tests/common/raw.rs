//! Raw HTTP: bytes on a socket, for requests a client library would normalise.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

/// Sends raw bytes and returns the status code and the whole response text. For requests an
/// HTTP client library would normalise (dot segments, odd bytes, conflicting framing).
pub fn raw_request(addr: SocketAddr, bytes: &[u8]) -> (u16, String) {
    let mut s = TcpStream::connect(addr).expect("connect");
    // Longer than any deadline of keygate's that a test waits out (10 s for a body): the
    // answer to a late request must not race the test's own timeout.
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    s.write_all(bytes).unwrap();
    read_response(&mut s)
}

/// Reads one response from `s`: until its `Content-Length` is complete or the peer closes.
/// Returns the status code (0 when none came) and the response text.
pub fn read_response(s: &mut TcpStream) -> (u16, String) {
    let mut out = Vec::new();
    let mut byte = [0u8; 1];
    // Byte by byte, so that a second response on the same connection is left unread.
    loop {
        match s.read(&mut byte) {
            Ok(0) | Err(_) => break,
            Ok(_) => out.push(byte[0]),
        }
        if let Some(end) = out.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&out[..end]).into_owned();
            let cl = head.lines().find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.eq_ignore_ascii_case("content-length")
                    .then(|| v.trim().parse::<usize>().ok())?
            });
            if let Some(cl) = cl {
                let mut body = vec![0u8; cl];
                if s.read_exact(&mut body).is_ok() {
                    out.extend_from_slice(&body);
                }
                break;
            }
        }
    }
    let text = String::from_utf8_lossy(&out).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, text)
}

/// A GET for `target` in raw form, with `key` in `X-API-Key`.
pub fn raw_get(addr: SocketAddr, target: &[u8], key: &str) -> (u16, String) {
    let mut req = b"GET ".to_vec();
    req.extend_from_slice(target);
    req.extend_from_slice(
        format!(" HTTP/1.1\r\nHost: test\r\nX-API-Key: {key}\r\nConnection: close\r\n\r\n")
            .as_bytes(),
    );
    raw_request(addr, &req)
}

/// The JSON body of a raw response.
pub fn raw_json(response: &str) -> serde_json::Value {
    let body = response.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    serde_json::from_str(body).unwrap_or(serde_json::Value::Null)
}
