//! TLS handshakes per second, full and resumed, against any HTTPS listener; and a bare rustls
//! server with keygate's TLS settings as the baseline (`benches/handshakes.sh` runs both).
//!
//! ```text
//! handshakes bare --cert C --key K --listen 127.0.0.1:0      # prints its address
//! handshakes measure --target 127.0.0.1:8443 --ca CA --seconds 5 --concurrency 8 [--resume]
//! ```
//!
//! `measure` opens connections as fast as `concurrency` clients can: a handshake (TLS 1.3), one
//! small request (`GET /bench`, answered 404 by keygate's route table and by the bare server),
//! and the close. Reading the answer also reads the session tickets TLS 1.3 sends after the
//! handshake, so with `--resume` each client resumes its previous session; without it every
//! handshake is a full one (no session cache on the client).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::pki_types::ServerName;
use tokio::io::AsyncWriteExt;

fn arg(args: &[String], name: &str) -> Option<String> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    match args.get(1).map(String::as_str) {
        Some("bare") => runtime.block_on(bare(&args)),
        Some("measure") => runtime.block_on(measure(&args)),
        _ => anyhow::bail!("usage: handshakes bare|measure …"),
    }
}

/// A rustls server with the settings keygate's `tls.rs` uses: handshake, then close.
async fn bare(args: &[String]) -> anyhow::Result<()> {
    let pem = |name: &str| -> anyhow::Result<Vec<u8>> {
        Ok(std::fs::read(
            arg(args, name).ok_or_else(|| anyhow::anyhow!("{name}"))?,
        )?)
    };
    let chain = rustls_pemfile::certs(&mut pem("--cert")?.as_slice()).collect::<Result<_, _>>()?;
    let key = rustls_pemfile::private_key(&mut pem("--key")?.as_slice())?
        .ok_or_else(|| anyhow::anyhow!("no key"))?;
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
    .with_no_client_auth()
    .with_single_cert(chain, key)?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    config.session_storage = rustls::server::ServerSessionMemoryCache::new(10_000);
    config.ticketer = rustls::crypto::ring::Ticketer::new()?;
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listen = arg(args, "--listen").unwrap_or_else(|| "127.0.0.1:0".to_owned());
    let listener = tokio::net::TcpListener::bind(&listen).await?;
    println!("bare rustls listening on {}", listener.local_addr()?);
    loop {
        let (tcp, _) = listener.accept().await?;
        let acceptor = acceptor.clone();
        tokio::spawn(async move {
            if let Ok(mut tls) = acceptor.accept(tcp).await {
                // Read the request header, answer a 404 of the size keygate's is, close.
                let mut seen = Vec::new();
                let mut buf = [0u8; 1024];
                while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
                    match tokio::io::AsyncReadExt::read(&mut tls, &mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => seen.extend_from_slice(&buf[..n]),
                    }
                }
                let body = format!("{{\"success\":false,\"error\":{{\"code\":\"NOT_FOUND\",\"message\":\"no route matches this request\",\"requestId\":\"{}\"}}}}", "0".repeat(32));
                let head = format!("HTTP/1.1 404 Not Found\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n", body.len());
                let _ = tls.write_all(head.as_bytes()).await;
                let _ = tls.write_all(body.as_bytes()).await;
                let _ = tls.shutdown().await;
            }
        });
    }
}

async fn measure(args: &[String]) -> anyhow::Result<()> {
    let target: SocketAddr = arg(args, "--target")
        .ok_or_else(|| anyhow::anyhow!("--target"))?
        .parse()?;
    let ca = std::fs::read(arg(args, "--ca").ok_or_else(|| anyhow::anyhow!("--ca"))?)?;
    let seconds: u64 = arg(args, "--seconds").map_or(Ok(5), |s| s.parse())?;
    let concurrency: usize = arg(args, "--concurrency").map_or(Ok(8), |s| s.parse())?;
    let resume = args.iter().any(|a| a == "--resume");
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pemfile::certs(&mut ca.as_slice()) {
        roots.add(cert?)?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let client_config = || -> anyhow::Result<Arc<rustls::ClientConfig>> {
        let mut c = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_root_certificates(roots.clone())
            .with_no_client_auth();
        c.alpn_protocols = vec![b"http/1.1".to_vec()];
        if !resume {
            c.resumption = rustls::client::Resumption::disabled();
        }
        Ok(Arc::new(c))
    };
    let done = Arc::new(AtomicU64::new(0));
    let resumed = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let name = ServerName::try_from("localhost")?;
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        // One config per client: with --resume each resumes its own previous session.
        let connector = tokio_rustls::TlsConnector::from(client_config()?);
        let (done, resumed, failed, stop, name) = (
            done.clone(),
            resumed.clone(),
            failed.clone(),
            stop.clone(),
            name.clone(),
        );
        tasks.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let Ok(tcp) = tokio::net::TcpStream::connect(target).await else {
                    failed.fetch_add(1, Ordering::Relaxed);
                    continue;
                };
                let _ = tcp.set_nodelay(true);
                let exchange = async {
                    let mut tls = connector.connect(name.clone(), tcp).await?;
                    let kind = tls.get_ref().1.handshake_kind();
                    tls.write_all(
                        b"GET /bench HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\n\r\n",
                    )
                    .await?;
                    let mut answer = Vec::new();
                    // A server's close without close_notify is fine here.
                    let _ = tokio::io::AsyncReadExt::read_to_end(&mut tls, &mut answer).await;
                    if !answer.starts_with(b"HTTP/1.1 404") {
                        return Err(std::io::Error::other("the answer is not a 404"));
                    }
                    Ok::<_, std::io::Error>(kind)
                };
                match exchange.await {
                    Ok(kind) => {
                        done.fetch_add(1, Ordering::Relaxed);
                        if kind == Some(rustls::HandshakeKind::Resumed) {
                            resumed.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    Err(e) => {
                        if failed.fetch_add(1, Ordering::Relaxed) == 0 {
                            eprintln!("first failure: {e}");
                        }
                    }
                }
            }
        }));
    }
    // One second of warm-up (tickets issued, caches filled), then the measured window.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (start_done, start_resumed) = (
        done.load(Ordering::Relaxed),
        resumed.load(Ordering::Relaxed),
    );
    let start = Instant::now();
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    let elapsed = start.elapsed().as_secs_f64();
    let n = done.load(Ordering::Relaxed) - start_done;
    let r = resumed.load(Ordering::Relaxed) - start_resumed;
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        let _ = t.await;
    }
    println!(
        "{{\"handshakes_per_s\": {:.0}, \"resumed_share\": {:.3}, \"failed\": {}}}",
        n as f64 / elapsed,
        if n > 0 { r as f64 / n as f64 } else { 0.0 },
        failed.load(Ordering::Relaxed)
    );
    Ok(())
}
