//! Who the client is, for every per-address count: the TCP peer, or, when the peer is one of
//! `[server] trusted_proxies` (a load balancer, a TLS terminator), the address its forwarding
//! header names: the one header `[server] forwarded_header` says the proxies write
//! (`X-Forwarded-For` by default, or RFC 7239's `Forwarded`), never the other. From the right,
//! the first hop that is not itself a trusted proxy is the client (everything left of it is the
//! client's own claim). From any other peer forwarding headers are ignored.

use std::net::IpAddr;

use http::HeaderMap;
use ipnet::IpNet;

/// Most hops read from the right of a forwarding chain.
const MAX_HOPS: usize = 32;

/// Which header the trusted proxies write the client into. Only that one is read: a client
/// may send the other itself, and a proxy that only appends to one passes the other through.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ForwardedHeader {
    /// `X-Forwarded-For: client, proxy1, …` (what most load balancers append to).
    #[default]
    XForwardedFor,
    /// `Forwarded: for=client, for=proxy1` (RFC 7239).
    Forwarded,
}

/// The peers whose forwarding header is believed, and which header that is.
#[derive(Debug, Clone, Default)]
pub struct TrustedProxies {
    pub nets: Vec<IpNet>,
    pub header: ForwardedHeader,
}

impl TrustedProxies {
    /// The client of a request from `peer` (see [`client_address`]).
    pub fn client(&self, peer: IpAddr, headers: &HeaderMap) -> IpAddr {
        client_address(peer, headers, &self.nets, self.header)
    }

    /// True when `peer` is one of the trusted proxies.
    pub fn contains(&self, peer: IpAddr) -> bool {
        self.nets.iter().any(|n| n.contains(&peer))
    }
}

/// The client's address.
pub fn client_address(
    peer: IpAddr,
    headers: &HeaderMap,
    trusted: &[IpNet],
    header: ForwardedHeader,
) -> IpAddr {
    let is_trusted = |a: &IpAddr| trusted.iter().any(|n| n.contains(a));
    if !is_trusted(&peer) {
        return peer;
    }
    let hops = match header {
        ForwardedHeader::XForwardedFor => hops(headers, "x-forwarded-for", |v| Some(v)),
        ForwardedHeader::Forwarded => hops(headers, "forwarded", forwarded_for),
    };
    let mut client = peer;
    for hop in &hops {
        // The hops on the right were written by proxies we trust and always parse; one that
        // does not parse was written by nobody we trust: stop at the last address that was.
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

/// The last [`MAX_HOPS`] elements of the `name` headers, right to left (nearest proxy first),
/// each read by `element`. Elements are read one by one, as bytes: a client's non-ASCII
/// element spoils only itself, and however long the header, no more than `MAX_HOPS` elements
/// are looked at.
fn hops(
    headers: &HeaderMap,
    name: &str,
    element: impl Fn(&str) -> Option<&str>,
) -> Vec<Option<String>> {
    let values: Vec<_> = headers.get_all(name).iter().collect();
    values
        .iter()
        .rev()
        .flat_map(|value| value.as_bytes().rsplit(|b| *b == b','))
        .take(MAX_HOPS)
        .map(|part| {
            let text = std::str::from_utf8(part).ok();
            text.and_then(|t| element(t.trim())).map(str::to_owned)
        })
        .collect()
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
    use crate::testing::headers as h;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn forwarding_headers_count_only_from_trusted_proxies() {
        use ForwardedHeader::{Forwarded, XForwardedFor};
        let trusted: Vec<IpNet> = vec!["10.0.0.0/8".parse().unwrap()];
        let lb = ip("10.1.2.3");
        let xff = |pairs: &[(&str, &str)]| client_address(lb, &h(pairs), &trusted, XForwardedFor);
        // Not a trusted peer: its headers are the client's own claims.
        assert_eq!(
            client_address(
                ip("203.0.113.9"),
                &h(&[("x-forwarded-for", "1.2.3.4")]),
                &trusted,
                XForwardedFor
            ),
            ip("203.0.113.9")
        );
        // The rightmost untrusted hop is the client; what it claims on the left is ignored.
        assert_eq!(
            xff(&[("x-forwarded-for", "6.6.6.6, 198.51.100.7, 10.9.9.9")]),
            ip("198.51.100.7")
        );
        // Several header lines read as one list.
        assert_eq!(
            xff(&[
                ("x-forwarded-for", "6.6.6.6"),
                ("x-forwarded-for", "198.51.100.8")
            ]),
            ip("198.51.100.8")
        );
        // A Forwarded header the client sent itself is ignored when the proxies write XFF.
        assert_eq!(
            xff(&[
                ("forwarded", "for=6.6.6.6"),
                ("x-forwarded-for", "198.51.100.9")
            ]),
            ip("198.51.100.9")
        );
        // Garbage or non-ASCII that the client put on the left spoils nothing.
        let mut raw = HeaderMap::new();
        raw.append(
            "x-forwarded-for",
            http::HeaderValue::from_bytes(b"\xff\xfe, 198.51.100.10").unwrap(),
        );
        assert_eq!(
            client_address(lb, &raw, &trusted, XForwardedFor),
            ip("198.51.100.10")
        );
        assert_eq!(
            xff(&[("x-forwarded-for", "unknown, 198.51.100.11")]),
            ip("198.51.100.11")
        );
        // With Forwarded configured: ports and IPv6 brackets, and XFF ignored.
        let fwd = h(&[
            (
                "forwarded",
                "for=6.6.6.6, for=\"[2001:db8::7]:4711\";proto=https",
            ),
            ("x-forwarded-for", "198.51.100.9"),
        ]);
        assert_eq!(
            client_address(lb, &fwd, &trusted, Forwarded),
            ip("2001:db8::7")
        );
        // No header from a trusted peer: the peer itself.
        assert_eq!(
            client_address(lb, &HeaderMap::new(), &trusted, XForwardedFor),
            lb
        );
        // A chain longer than anyone builds is read only from the right.
        let long = format!("{}198.51.100.12", "10.0.0.1, ".repeat(10_000));
        assert_eq!(
            xff(&[("x-forwarded-for", long.as_str())]),
            ip("198.51.100.12")
        );
        // Every hop trusted: the leftmost one.
        assert_eq!(
            xff(&[("x-forwarded-for", "10.0.0.5, 10.0.0.6")]),
            ip("10.0.0.5")
        );
    }
}
