//! An open-loop HTTP/1.1 load generator for the load harness (`benches/load.sh`).
//!
//! wrk is closed-loop: a slow response delays the next request, so latency under a fixed load
//! is understated. This sends requests on a fixed schedule whatever the server does, over
//! keep-alive connections, and measures each response from the moment its request was due
//! (correcting coordinated omission). A thread of its own releases each request at its due time
//! (see `pace`). Prints one line: `rate=… sent=… ok=… errors=… p50_us=… p90_us=… p99_us=…
//! max_us=… lag_p50_us=… lag_p99_us=…`, the lags being how late requests left.
//!
//! `cargo run --release --example openloop -- --addr 127.0.0.1:8080 --path /v1/files/local/a
//!  --rate 5000 --seconds 10 --connections 32 -H 'X-API-Key: kg_…'`

use std::net::SocketAddr;
use std::time::Duration;

use clap::Parser;
use hdrhistogram::Histogram;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver, UnboundedSender};
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

async fn connection(args: std::sync::Arc<Args>, mut dues: UnboundedReceiver<Instant>) -> Outcome {
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
    let mut conn: Option<TcpStream> = None;
    let mut buf = Vec::with_capacity(64 * 1024);
    // A request due while the one before is still out waits here, its latency counted from
    // when it was due.
    while let Some(due) = dues.recv().await {
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
    }
    out
}

/// Releases each request at its due time, from a thread of its own, round-robin over the
/// connections. tokio's timers tick in whole milliseconds: sleeping on them would release the
/// requests due within one millisecond together, up to a millisecond late, and the latency
/// counted from their due times would be mostly the generator's own lateness and the queue its
/// bursts build (every request then waits behind the others of its burst, which inflates a
/// slower server's latency the most). This thread sleeps on the kernel's high-resolution timers
/// with a timer slack of 1 ns instead.
#[allow(unsafe_code)] // prctl: libc has no safe wrapper, and nix's needs a feature keygate lacks.
/// Returns how late it released each request after its due time: the generator's own share of
/// the latencies (the wake-up of this thread; not the wait behind a connection's previous
/// response, which is the server's).
fn pace(
    rate: u64,
    start: Instant,
    end: Instant,
    connections: Vec<UnboundedSender<Instant>>,
) -> Histogram<u64> {
    let mut lags = Histogram::new_with_bounds(1, 60_000_000, 3).expect("histogram bounds");
    // SAFETY: prctl(PR_SET_TIMERSLACK) takes a plain integer and changes only this thread.
    unsafe {
        libc::prctl(libc::PR_SET_TIMERSLACK, 1 as libc::c_ulong);
    }
    let spacing = 1.0 / rate as f64;
    let (start, end) = (start.into_std(), end.into_std());
    for i in 0u64.. {
        let due = start + Duration::from_secs_f64(spacing * i as f64);
        if due >= end {
            break;
        }
        let now = std::time::Instant::now();
        if due > now {
            std::thread::sleep(due - now);
        }
        let _ = lags.record(due.elapsed().as_micros().max(1) as u64);
        let _ = connections[(i % connections.len() as u64) as usize].send(Instant::from_std(due));
    }
    lags
}

#[tokio::main]
async fn main() {
    let args = std::sync::Arc::new(Args::parse());
    assert!(
        args.rate > 0 && args.connections > 0,
        "rate and connections must be positive"
    );
    let start = Instant::now() + Duration::from_millis(100);
    let end = start + Duration::from_secs(args.seconds);
    let (senders, tasks): (Vec<_>, Vec<_>) = (0..args.connections)
        .map(|_| {
            let (tx, rx) = unbounded_channel();
            (tx, tokio::spawn(connection(args.clone(), rx)))
        })
        .unzip();
    let rate = args.rate;
    let pacer = std::thread::spawn(move || pace(rate, start, end, senders));
    let mut all = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("histogram bounds");
    let (mut sent, mut ok, mut errors) = (0, 0, 0);
    for t in tasks {
        let o = t.await.expect("connection task");
        all.add(&o.latencies).expect("same bounds");
        sent += o.sent;
        ok += o.ok;
        errors += o.errors;
    }
    let lags = pacer.join().expect("pacing thread");
    println!(
        "rate={} sent={sent} ok={ok} errors={errors} p50_us={} p90_us={} p99_us={} max_us={} \
         lag_p50_us={} lag_p99_us={}",
        args.rate,
        all.value_at_quantile(0.50),
        all.value_at_quantile(0.90),
        all.value_at_quantile(0.99),
        all.max(),
        lags.value_at_quantile(0.50),
        lags.value_at_quantile(0.99),
    );
}
