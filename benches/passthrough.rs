//! A plain pingora pass-through proxy with no authorization: the baseline keygate's load
//! harness measures against. Same pingora version and settings, nothing else.
//!
//! `cargo run --release --example passthrough -- --listen 127.0.0.1:8090 --upstream 127.0.0.1:7070`

use std::net::SocketAddr;

use async_trait::async_trait;
use clap::Parser;
use pingora::prelude::*;

#[derive(Parser)]
struct Args {
    #[arg(long, default_value = "127.0.0.1:8090")]
    listen: SocketAddr,
    #[arg(long, default_value = "127.0.0.1:7070")]
    upstream: SocketAddr,
    #[arg(long, default_value_t = 1)]
    threads: usize,
}

struct PassThrough {
    upstream: SocketAddr,
}

#[async_trait]
impl ProxyHttp for PassThrough {
    type CTX = ();

    fn new_ctx(&self) {}

    async fn upstream_peer(&self, _session: &mut Session, _ctx: &mut ()) -> Result<Box<HttpPeer>> {
        Ok(Box::new(HttpPeer::new(self.upstream, false, String::new())))
    }
}

fn main() {
    let args = Args::parse();
    let mut server = Server::new(None).expect("server");
    server.bootstrap();
    let mut service = http_proxy_service(
        &server.configuration,
        PassThrough {
            upstream: args.upstream,
        },
    );
    service.threads = Some(args.threads);
    service.add_tcp(&args.listen.to_string());
    server.add_service(service);
    println!("passthrough listening on http://{}", args.listen);
    server.run_forever();
}
