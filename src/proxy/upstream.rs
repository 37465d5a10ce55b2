//! Upstream choice: the configured peers behind pingora's round-robin load balancer, with TCP
//! health checks when there is more than one.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use pingora::lb::selection::RoundRobin;
use pingora::lb::{health_check::TcpHealthCheck, LoadBalancer};
use pingora::prelude::HttpPeer;

use crate::config::UpstreamConfig;

pub struct Upstream {
    balancer: Arc<LoadBalancer<RoundRobin>>,
    connect_timeout: Duration,
    read_timeout: Duration,
    write_timeout: Duration,
    health_checked: bool,
}

impl Upstream {
    pub fn new(config: &UpstreamConfig) -> std::io::Result<Upstream> {
        let mut balancer = LoadBalancer::<RoundRobin>::try_from_iter(config.peers.iter().copied())?;
        let health_checked = config.peers.len() > 1;
        if health_checked {
            let mut check = TcpHealthCheck::new();
            check.peer_template.options.connection_timeout = Some(config.connect_timeout);
            balancer.set_health_check(check);
            balancer.health_check_frequency = Some(config.health_check_interval);
        }
        Ok(Upstream {
            balancer: Arc::new(balancer),
            connect_timeout: config.connect_timeout,
            read_timeout: config.read_timeout,
            write_timeout: config.write_timeout,
            health_checked,
        })
    }

    /// The load balancer, to run its health checks in the background.
    pub fn balancer(&self) -> Option<Arc<LoadBalancer<RoundRobin>>> {
        self.health_checked.then(|| self.balancer.clone())
    }

    /// The next healthy peer, or `None` when none is.
    pub fn select(&self) -> Option<Box<HttpPeer>> {
        let backend = self.balancer.select(b"", 256)?;
        let mut peer = HttpPeer::new(backend, false, String::new());
        peer.options.connection_timeout = Some(self.connect_timeout);
        peer.options.read_timeout = Some(self.read_timeout);
        peer.options.write_timeout = Some(self.write_timeout);
        Some(Box::new(peer))
    }

    pub fn peers(&self) -> Vec<SocketAddr> {
        self.balancer
            .backends()
            .get_backend()
            .iter()
            .filter_map(|b| b.addr.as_inet().copied())
            .collect()
    }
}
