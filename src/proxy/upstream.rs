//! Upstream choice: the configured peers behind pingora's round-robin load balancer, with TCP
//! health checks when there is more than one. `https://` peers are reached over TLS, verified
//! against the system's roots or `[upstream] tls_ca_file` (the CA bundle is pingora's
//! connector's), with the configured SNI name and, optionally, a client certificate.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use pingora::lb::selection::RoundRobin;
use pingora::lb::{health_check::TcpHealthCheck, LoadBalancer};
use pingora::prelude::HttpPeer;
use pingora::utils::tls::CertKey;

use crate::config::UpstreamConfig;

/// `[upstream]`'s peers, and those of providers with a server of their own.
pub struct Upstreams {
    default: Upstream,
    by_provider: HashMap<String, Upstream>,
}

impl Upstreams {
    pub fn new(
        default: &UpstreamConfig,
        own: &[(String, UpstreamConfig)],
    ) -> anyhow::Result<Upstreams> {
        let mut by_provider = HashMap::new();
        for (provider, config) in own {
            let upstream =
                Upstream::new(config).with_context(|| format!("[upstreams.{provider}]"))?;
            by_provider.insert(provider.clone(), upstream);
        }
        Ok(Upstreams {
            default: Upstream::new(default)?,
            by_provider,
        })
    }

    fn of(&self, provider: Option<&str>) -> &Upstream {
        provider
            .and_then(|p| self.by_provider.get(p))
            .unwrap_or(&self.default)
    }

    /// The next healthy peer of `provider`'s server (its own, or `[upstream]`'s).
    pub fn select(&self, provider: Option<&str>) -> Option<Box<HttpPeer>> {
        self.of(provider).select()
    }

    /// The `Authorization` value `provider`'s server is sent, if it wants one.
    pub fn authorization(&self, provider: Option<&str>) -> Option<&http::HeaderValue> {
        self.of(provider).authorization.as_ref()
    }

    /// The load balancers with health checks to run in the background.
    pub fn balancers(&self) -> Vec<Arc<LoadBalancer<RoundRobin>>> {
        std::iter::once(&self.default)
            .chain(self.by_provider.values())
            .filter_map(Upstream::balancer)
            .collect()
    }
}

pub struct Upstream {
    balancer: Arc<LoadBalancer<RoundRobin>>,
    /// The SNI (and verified) name of each `https://` peer.
    tls_names: HashMap<SocketAddr, String>,
    client_cert: Option<Arc<CertKey>>,
    connect_timeout: Duration,
    read_timeout: Duration,
    write_timeout: Duration,
    health_checked: bool,
    /// Sent as `Authorization` to this server (marked sensitive: never logged).
    authorization: Option<http::HeaderValue>,
}

impl Upstream {
    pub fn new(config: &UpstreamConfig) -> anyhow::Result<Upstream> {
        let tls_names = config
            .peers
            .iter()
            .zip(&config.tls_names)
            .filter_map(|(addr, name)| Some((*addr, name.clone()?)))
            .collect();
        if let Some(ca) = &config.tls.ca_file {
            check_ca_file(ca)?;
        }
        let client_cert = match &config.tls.client_cert {
            Some((cert, key)) => Some(Arc::new(client_cert(cert, key)?)),
            None => None,
        };
        let mut balancer = LoadBalancer::<RoundRobin>::try_from_iter(config.peers.iter().copied())?;
        let health_checked = config.peers.len() > 1;
        if health_checked {
            let mut check = TcpHealthCheck::new();
            check.peer_template.options.connection_timeout = Some(config.connect_timeout);
            balancer.set_health_check(check);
            balancer.health_check_frequency = Some(config.health_check_interval);
        }
        let authorization = match &config.authorization_file {
            None => None,
            Some(path) => {
                let text = std::fs::read_to_string(path).with_context(|| {
                    format!("cannot read authorization_file {}", path.display())
                })?;
                let mut value = http::HeaderValue::from_str(text.trim()).map_err(|_| {
                    anyhow::anyhow!(
                        "authorization_file {} does not hold one header value",
                        path.display()
                    )
                })?;
                if value.is_empty() {
                    anyhow::bail!("authorization_file {} is empty", path.display());
                }
                value.set_sensitive(true);
                Some(value)
            }
        };
        Ok(Upstream {
            authorization,
            balancer: Arc::new(balancer),
            tls_names,
            client_cert,
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
        let name = backend
            .addr
            .as_inet()
            .and_then(|addr| self.tls_names.get(addr));
        let mut peer = match name {
            Some(name) => {
                let mut peer = HttpPeer::new(backend, true, name.clone());
                peer.client_cert_key = self.client_cert.clone();
                peer
            }
            None => HttpPeer::new(backend, false, String::new()),
        };
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

/// Checks the CA bundle before pingora's connector reads it (which would panic on a bad one).
fn check_ca_file(path: &std::path::Path) -> anyhow::Result<()> {
    let pem = std::fs::read(path)
        .with_context(|| format!("cannot read [upstream] tls_ca_file {}", path.display()))?;
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pemfile::certs(&mut pem.as_slice()) {
        let cert = cert.with_context(|| format!("{} is not PEM", path.display()))?;
        roots
            .add(cert)
            .with_context(|| format!("{}: a certificate is not a valid CA", path.display()))?;
    }
    if roots.is_empty() {
        anyhow::bail!("{} holds no certificate", path.display());
    }
    Ok(())
}

/// The client certificate for mutual TLS, checked: the key must parse and match the chain.
fn client_cert(cert: &std::path::Path, key: &std::path::Path) -> anyhow::Result<CertKey> {
    let pair = crate::tls::read_pem_pair(cert, key)
        .map_err(|e| anyhow::anyhow!("[upstream] tls_client_cert_file: {e}"))?;
    Ok(CertKey::new(
        pair.chain.iter().map(|c| c.to_vec()).collect(),
        pair.key.secret_der().to_vec(),
    ))
}
