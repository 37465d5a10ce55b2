//! `[server]`, `[database]`, `[upstream]` and `[log]`: where keygate listens, what it stores
//! in, what it forwards to, how it logs.

use super::check::{address, problem, secs, Durations, Problem};
use super::file::FileConfig;
use super::{DatabaseConfig, LogConfig, Overrides, ServerConfig, UpstreamConfig};
use crate::identity::client::{ForwardedHeader, TrustedProxies};

pub(super) fn listeners(
    file: &FileConfig,
    overrides: &Overrides,
    problems: &mut Vec<Problem>,
) -> ServerConfig {
    let s = &file.server;
    let listen = address(
        problems,
        "[server] listen",
        overrides.listen.as_deref().or(s.listen.as_deref()),
        "127.0.0.1:8080",
    );
    let control_listen = address(
        problems,
        "[server] control_listen",
        overrides
            .control_listen
            .as_deref()
            .or(s.control_listen.as_deref()),
        "127.0.0.1:9090",
    );
    if listen.port() != 0 && listen == control_listen {
        problem(
            problems,
            "[server] control_listen",
            "must differ from listen",
        );
    }
    let threads = match s.threads {
        Some(0) => {
            problem(problems, "[server] threads", "must be at least 1");
            1
        }
        Some(n) => n,
        None => std::thread::available_parallelism().map_or(2, |n| n.get()),
    };
    let mut d = Durations::new(problems, "server");
    let header_timeout = d.read("header_timeout", &s.header_timeout, secs(10));
    let keepalive_timeout = d.read("keepalive_timeout", &s.keepalive_timeout, secs(60));
    let keepalive_requests = s.keepalive_requests.unwrap_or(1000);
    let body_timeout = d.read("body_timeout", &s.body_timeout, secs(30));
    let shutdown_timeout = d.read("shutdown_timeout", &s.shutdown_timeout, secs(30));
    let mut trusted_proxies = Vec::new();
    for (i, raw) in s.trusted_proxies.iter().flatten().enumerate() {
        let parsed = raw
            .parse::<ipnet::IpNet>()
            .or_else(|_| raw.parse::<std::net::IpAddr>().map(ipnet::IpNet::from));
        match parsed {
            Ok(net) => trusted_proxies.push(net.trunc()),
            Err(_) => problem(
                problems,
                format!("[server] trusted_proxies[{i}]"),
                format!("'{raw}' is not an address or a CIDR such as '10.0.0.0/8'"),
            ),
        }
    }
    ServerConfig {
        listen,
        control_listen,
        threads,
        header_timeout,
        keepalive_timeout,
        keepalive_requests,
        body_timeout,
        max_connections: s.max_connections.unwrap_or(4096).max(1),
        max_connections_per_address: s.max_connections_per_address.unwrap_or(128).max(1),
        trusted_proxies: TrustedProxies {
            nets: trusted_proxies,
            header: match s
                .forwarded_header
                .as_deref()
                .map(str::to_ascii_lowercase)
                .as_deref()
            {
                None | Some("x-forwarded-for") => ForwardedHeader::XForwardedFor,
                Some("forwarded") => ForwardedHeader::Forwarded,
                Some(other) => {
                    problem(
                        problems,
                        "[server] forwarded_header",
                        format!("'{other}' is neither 'x-forwarded-for' nor 'forwarded'"),
                    );
                    ForwardedHeader::XForwardedFor
                }
            },
        },
        metrics_listen: s
            .metrics_listen
            .as_deref()
            .map(|raw| address(problems, "[server] metrics_listen", Some(raw), "")),
        shutdown_timeout,
        upgrade_socket: s.upgrade_socket.as_ref().map(std::path::PathBuf::from),
        pid_file: s.pid_file.as_ref().map(std::path::PathBuf::from),
        metrics_operator_only: match file.control.metrics.as_deref() {
            None | Some("public") => false,
            Some("operator") => true,
            Some(other) => {
                problem(
                    problems,
                    "[control] metrics",
                    format!("'{other}' is neither 'public' nor 'operator'"),
                );
                false
            }
        },
    }
}

pub(super) fn database(
    file: &FileConfig,
    overrides: &Overrides,
    problems: &mut Vec<Problem>,
) -> DatabaseConfig {
    let url = overrides
        .database_url
        .clone()
        .or(file.database.url.clone())
        .unwrap_or_else(|| "sqlite://keygate.db".to_owned());
    if !(url.starts_with("sqlite:")
        || url.starts_with("postgres://")
        || url.starts_with("postgresql://"))
    {
        problem(
            problems,
            "[database] url",
            "must start with 'sqlite:' or 'postgres://' (the password, if any, is not shown)",
        );
    }
    DatabaseConfig {
        url,
        max_connections: file.database.max_connections.unwrap_or(10).max(1),
    }
}

pub(super) fn upstream(
    file: &FileConfig,
    overrides: &Overrides,
    problems: &mut Vec<Problem>,
) -> UpstreamConfig {
    let peers = if overrides.peers.is_empty() {
        file.upstream
            .peers
            .clone()
            .unwrap_or_else(|| vec!["127.0.0.1:7070".to_owned()])
    } else {
        overrides.peers.clone()
    };
    upstream_section(&file.upstream, "upstream", peers, problems)
}

/// `[upstreams.<provider>]`: the servers of providers with their own, each like `[upstream]`
/// (whose CA bundle they share: pingora's connector has one).
pub(super) fn provider_upstreams(
    file: &FileConfig,
    problems: &mut Vec<Problem>,
) -> Vec<(String, UpstreamConfig)> {
    file.upstreams
        .iter()
        .map(|(provider, u)| {
            let section = format!("upstreams.{provider}");
            if u.tls_ca_file.is_some() {
                problem(
                    problems,
                    format!("[{section}] tls_ca_file"),
                    "every upstream is verified against [upstream] tls_ca_file: set it there",
                );
            }
            let peers = u.peers.clone().unwrap_or_default();
            (
                provider.clone(),
                upstream_section(u, &section, peers, problems),
            )
        })
        .collect()
}

fn upstream_section(
    u: &super::file::UpstreamSection,
    section: &str,
    raw_peers: Vec<String>,
    problems: &mut Vec<Problem>,
) -> UpstreamConfig {
    if raw_peers.is_empty() {
        problem(
            problems,
            format!("[{section}] peers"),
            "needs at least one host:port",
        );
    }
    let mut peers = Vec::new();
    let mut tls_names = Vec::new();
    for (i, raw) in raw_peers.iter().enumerate() {
        let place = format!("[{section}] peers[{i}]");
        let (tls, host_port) = match raw.split_once("://") {
            None => (false, raw.as_str()),
            Some(("http", rest)) => (false, rest),
            Some(("https", rest)) => (true, rest),
            Some((other, _)) => {
                problem(
                    problems,
                    &place,
                    format!("'{other}://' is neither 'http://' nor 'https://'"),
                );
                (false, raw.as_str())
            }
        };
        let host_port = host_port.strip_suffix('/').unwrap_or(host_port);
        peers.push(address(problems, &place, Some(host_port), ""));
        tls_names.push(tls.then(|| {
            u.tls_server_name.clone().unwrap_or_else(|| {
                let host = host_port.rsplit_once(':').map_or(host_port, |(h, _)| h);
                host.trim_start_matches('[')
                    .trim_end_matches(']')
                    .to_owned()
            })
        }));
    }
    if u.tls_server_name
        .as_deref()
        .is_some_and(|n| n.trim().is_empty())
    {
        problem(
            problems,
            format!("[{section}] tls_server_name"),
            "must not be empty",
        );
    }
    let mut seen = std::collections::HashSet::new();
    for (i, addr) in peers.iter().enumerate() {
        if !seen.insert(*addr) {
            problem(
                problems,
                format!("[{section}] peers[{i}]"),
                format!("{addr} is listed twice (names resolve to addresses)"),
            );
        }
    }
    let client_cert = match (&u.tls_client_cert_file, &u.tls_client_key_file) {
        (Some(c), Some(k)) => Some((c.into(), k.into())),
        (None, None) => None,
        _ => {
            problem(
                problems,
                format!("[{section}] tls_client_cert_file"),
                "needs tls_client_key_file too (and the reverse)",
            );
            None
        }
    };
    let tls = crate::config::UpstreamTls {
        ca_file: u.tls_ca_file.as_ref().map(Into::into),
        client_cert,
    };
    let mut d = Durations::new(problems, section);
    UpstreamConfig {
        authorization_file: u.authorization_file.as_ref().map(Into::into),
        peers,
        tls_names,
        tls,
        health_check_interval: d.read("health_check_interval", &u.health_check_interval, secs(5)),
        connect_timeout: d.read("connect_timeout", &u.connect_timeout, secs(3)),
        read_timeout: d.read("read_timeout", &u.read_timeout, secs(60)),
        write_timeout: d.read("write_timeout", &u.write_timeout, secs(60)),
    }
}

pub(super) fn log(file: &FileConfig, problems: &mut Vec<Problem>) -> LogConfig {
    let level = file.log.level.clone().unwrap_or_else(|| "info".to_owned());
    if tracing_subscriber::EnvFilter::try_new(&level).is_err() {
        problem(
            problems,
            "[log] level",
            format!("'{level}' is not a log filter"),
        );
    }
    let json = match file.log.format.as_deref() {
        None | Some("text") => false,
        Some("json") => true,
        Some(other) => {
            problem(
                problems,
                "[log] format",
                format!("'{other}' is neither 'text' nor 'json'"),
            );
            false
        }
    };
    LogConfig { level, json }
}
