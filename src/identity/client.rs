//! Who the client is, for every per-address count: the TCP peer, or, when the peer is one of
//! `[server] trusted_proxies` (a load balancer, a TLS terminator), the address its forwarding
//! headers name. `Forwarded` (RFC 7239) is read, else `X-Forwarded-For`; from the right, the
//! first hop that is not itself a trusted proxy is the client (everything left of it is the
//! client's own claim). From any other peer those headers are ignored.

use std::net::IpAddr;

use http::HeaderMap;
use ipnet::IpNet;

/// Most hops read from the right of a forwarding chain.
const MAX_HOPS: usize = 32;

/// The client's address.
pub fn client_address(peer: IpAddr, headers: &HeaderMap, trusted: &[IpNet]) -> IpAddr {
    let is_trusted = |a: &IpAddr| trusted.iter().any(|n| n.contains(a));
    if !is_trusted(&peer) {
        return peer;
    }
    let hops = match hops(headers, "forwarded", forwarded_for) {
        Some(h) if !h.is_empty() => h,
        _ => hops(headers, "x-forwarded-for", |v| Some(v.trim())).unwrap_or_default(),
    };
    let mut client = peer;
    for hop in hops.iter().rev().take(MAX_HOPS) {
        // A hop that does not parse was not written by a proxy we trust: stop at the last
        // address that was.
        let Some(addr) = hop.as_deref().and_then(parse_node) else {
            return client;
        };
        client = addr;
        if !is_trusted(&addr) {
            return addr;
        }
    }
    client
}

/// Every element of every `name` header, left to right, each read by `element`.
fn hops(
    headers: &HeaderMap,
    name: &str,
    element: impl Fn(&str) -> Option<&str>,
) -> Option<Vec<Option<String>>> {
    let mut out = Vec::new();
    for value in headers.get_all(name) {
        let value = value.to_str().ok()?;
        for part in value.split(',') {
            out.push(element(part).map(str::to_owned));
        }
    }
    Some(out)
}

/// The `for=` node of one `Forwarded` element (`for=192.0.2.1;proto=https`).
fn forwarded_for(element: &str) -> Option<&str> {
    element.split(';').find_map(|pair| {
        let (k, v) = pair.split_once('=')?;
        k.trim()
            .eq_ignore_ascii_case("for")
            .then(|| v.trim().trim_matches('"'))
    })
}

/// An address with an optional port: `192.0.2.1`, `192.0.2.1:80`, `[2001:db8::1]:443`,
/// `2001:db8::1`.
fn parse_node(node: &str) -> Option<IpAddr> {
    let node = node.trim();
    if let Ok(a) = node.parse::<IpAddr>() {
        return Some(a);
    }
    if let Some(rest) = node.strip_prefix('[') {
        return rest.split_once(']')?.0.parse().ok();
    }
    node.rsplit_once(':')?.0.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut m = HeaderMap::new();
        for (k, v) in pairs {
            m.append(
                http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        m
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn forwarding_headers_count_only_from_trusted_proxies() {
        let trusted: Vec<IpNet> = vec!["10.0.0.0/8".parse().unwrap()];
        let lb = ip("10.1.2.3");
        // Not a trusted peer: its headers are the client's own claims.
        assert_eq!(
            client_address(
                ip("203.0.113.9"),
                &h(&[("x-forwarded-for", "1.2.3.4")]),
                &trusted
            ),
            ip("203.0.113.9")
        );
        // The rightmost untrusted hop is the client; what it claims on the left is ignored.
        let xff = h(&[("x-forwarded-for", "6.6.6.6, 198.51.100.7, 10.9.9.9")]);
        assert_eq!(client_address(lb, &xff, &trusted), ip("198.51.100.7"));
        // Several header lines read as one list.
        let two = h(&[
            ("x-forwarded-for", "6.6.6.6"),
            ("x-forwarded-for", "198.51.100.8"),
        ]);
        assert_eq!(client_address(lb, &two, &trusted), ip("198.51.100.8"));
        // Forwarded wins over X-Forwarded-For, with ports and IPv6 brackets.
        let fwd = h(&[
            (
                "forwarded",
                "for=6.6.6.6, for=\"[2001:db8::7]:4711\";proto=https",
            ),
            ("x-forwarded-for", "198.51.100.9"),
        ]);
        assert_eq!(client_address(lb, &fwd, &trusted), ip("2001:db8::7"));
        // Garbage where a trusted proxy would have written: the peer, not the garbage's left.
        let bad = h(&[("x-forwarded-for", "6.6.6.6, not-an-address")]);
        assert_eq!(client_address(lb, &bad, &trusted), lb);
        // No header from a trusted peer: the peer itself.
        assert_eq!(client_address(lb, &HeaderMap::new(), &trusted), lb);
        // Every hop trusted: the leftmost one.
        let inner = h(&[("x-forwarded-for", "10.0.0.5, 10.0.0.6")]);
        assert_eq!(client_address(lb, &inner, &trusted), ip("10.0.0.5"));
    }
}
