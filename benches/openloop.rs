//! An open-loop HTTP/1.1 load generator for the load harness (`benches/load.sh`).
//!
//! wrk is closed-loop: a slow response delays the next request, so latency under a fixed load
//! is understated. This sends requests on a fixed schedule whatever the server does, over
//! keep-alive connections, and measures each response from the moment its request was due
//! (correcting coordinated omission). Prints one line: `rate=… sent=… ok=… errors=… p50_us=…
//! p90_us=… p99_us=… max_us=…`.
//!
//! `cargo run --release --example openloop -- --addr 127.0.0.1:8080 --path /v1/files/local/a
//!  --rate 5000 --seconds 10 --connections 32 -H 'X-API-Key: kg_…'`

use std::net::SocketAddr;
use std::time::Duration;

use clap::Parser;
use hdrhistogram::Histogram;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

#[derive(Parser)]
struct Args {
    #[arg(long)]
    addr: SocketAddr,
    #[arg(long)]
    path: String,
    /// Requests per second, all connections together.
    #[arg(long)]
    rate: u64,
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    #[arg(long, default_value_t = 32)]
    connections: u64,
    /// Extra request headers, `Name: value`.
    #[arg(short = 'H', long = "header")]
    headers: Vec<String>,
}

struct Outcome {
    latencies: Histogram<u64>,
    sent: u64,
    ok: u64,
    errors: u64,
}

/// Reads one response (headers, then a `Content-Length` body); returns its status.
async fn read_response(conn: &mut TcpStream, buf: &mut Vec<u8>) -> std::io::Result<u16> {
    buf.clear();
    let mut chunk = [0u8; 16 * 1024];
    let (head_end, length) = loop {
        let n = conn.read(&mut chunk).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
            let length = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse::<usize>().ok())
                .ok_or_else(|| std::io::Error::other("responses must carry Content-Length"))?;
            break (end + 4, length);
        }
    };
    while buf.len() < head_end + length {
        let n = conn.read(&mut chunk).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let status = std::str::from_utf8(&buf[9..12])
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    Ok(status)
}

async fn connection(args: std::sync::Arc<Args>, offset: Duration, start: Instant) -> Outcome {
    let mut out = Outcome {
        latencies: Histogram::new_with_bounds(1, 60_000_000, 3).expect("histogram bounds"),
        sent: 0,
        ok: 0,
        errors: 0,
    };
    let mut request = format!("GET {} HTTP/1.1\r\nHost: bench\r\n", args.path);
    for h in &args.headers {
        request.push_str(h);
        request.push_str("\r\n");
    }
    request.push_str("\r\n");
    let interval = Duration::from_secs_f64(args.connections as f64 / args.rate as f64);
    let end = start + Duration::from_secs(args.seconds);
    let mut due = start + offset;
    let mut conn: Option<TcpStream> = None;
    let mut buf = Vec::with_capacity(64 * 1024);
    while due < end {
        tokio::time::sleep_until(due).await;
        out.sent += 1;
        if conn.is_none() {
            conn = TcpStream::connect(args.addr).await.ok();
            if let Some(c) = &conn {
                let _ = c.set_nodelay(true);
            }
        }
        let result = match conn.as_mut() {
            Some(c) => match c.write_all(request.as_bytes()).await {
                Ok(()) => read_response(c, &mut buf).await,
                Err(e) => Err(e),
            },
            None => Err(std::io::ErrorKind::ConnectionRefused.into()),
        };
        match result {
            Ok(status) if (200..300).contains(&status) => {
                out.ok += 1;
                let micros = due.elapsed().as_micros().max(1) as u64;
                let _ = out.latencies.record(micros);
            }
            Ok(_) => out.errors += 1,
            Err(_) => {
                out.errors += 1;
                conn = None;
            }
        }
        due += interval;
    }
    out
}

#[tokio::main]
async fn main() {
    let args = std::sync::Arc::new(Args::parse());
    assert!(
        args.rate > 0 && args.connections > 0,
        "rate and connections must be positive"
    );
    let start = Instant::now() + Duration::from_millis(100);
    let spacing = Duration::from_secs_f64(1.0 / args.rate as f64);
    let tasks: Vec<_> = (0..args.connections)
        .map(|i| tokio::spawn(connection(args.clone(), spacing * i as u32, start)))
        .collect();
    let mut all = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("histogram bounds");
    let (mut sent, mut ok, mut errors) = (0, 0, 0);
    for t in tasks {
        let o = t.await.expect("connection task");
        all.add(&o.latencies).expect("same bounds");
        sent += o.sent;
        ok += o.ok;
        errors += o.errors;
    }
    println!(
        "rate={} sent={sent} ok={ok} errors={errors} p50_us={} p90_us={} p99_us={} max_us={}",
        args.rate,
        all.value_at_quantile(0.50),
        all.value_at_quantile(0.90),
        all.value_at_quantile(0.99),
        all.max()
    );
}
