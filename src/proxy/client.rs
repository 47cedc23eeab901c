//! Which address a request comes from. The failed-attempt limit counts it,
//! the access log names it and the upstream gets it as `X-Forwarded-For`, so
//! it must be an address the client cannot choose: a peer's own address,
//! unless that peer is a proxy the operator trusts to say who its client was.

use std::net::{IpAddr, SocketAddr};

use http::header::HeaderMap;
use ipnet::IpNet;

const X_FORWARDED_FOR: &str = "x-forwarded-for";

/// A peer as the rules see it: an IPv4 client of a dual-stack listener
/// (`[::]:8080`) arrives as `::ffff:10.0.0.5`, which no IPv4 network in
/// `trusted_proxies` or `trusted_peers` would contain.
pub fn canonical(peer: SocketAddr) -> SocketAddr {
    SocketAddr::new(peer.ip().to_canonical(), peer.port())
}

/// The `X-Forwarded-For` entries from the last (appended by the nearest
/// proxy) to the first, each parsed; `None` for an entry that is not an
/// address (`ip`, or `ip:port` as some load balancers write it).
fn forwarded_from_nearest(headers: &HeaderMap) -> impl Iterator<Item = Option<IpAddr>> + '_ {
    headers
        .get_all(X_FORWARDED_FOR)
        .iter()
        .rev()
        // A value that is not text is one entry that is no address.
        .flat_map(|value| value.to_str().unwrap_or("\u{0}").rsplit(','))
        .map(|entry| {
            let entry = entry.trim();
            entry
                .parse::<IpAddr>()
                .ok()
                .or_else(|| entry.parse::<SocketAddr>().ok().map(|a| a.ip()))
                .map(|ip| ip.to_canonical())
        })
}

/// The client behind `peer` in the proxy mode: `peer` itself unless it is
/// one of the `trusted` proxies; then `X-Forwarded-For` is walked from its
/// end past every trusted proxy to the first address that is not one (the
/// first entry if all are). An entry that is not an address ends the walk
/// at the last trusted hop: what lies before it was written by someone no
/// trusted proxy vouches for, so a client can neither pick its address nor
/// hide behind one by sending its own `X-Forwarded-For`.
pub fn behind_proxies(peer: IpAddr, headers: &HeaderMap, trusted: &[IpNet]) -> IpAddr {
    let is_trusted = |ip: &IpAddr| trusted.iter().any(|net| net.contains(ip));
    if !is_trusted(&peer) {
        return peer;
    }
    let mut client = peer;
    for entry in forwarded_from_nearest(headers) {
        let Some(ip) = entry else { break };
        client = ip;
        if !is_trusted(&ip) {
            break;
        }
    }
    client
}

/// The client as a forward-auth edge proxy (trusted to ask, checked by the
/// caller) saw it: the last `X-Forwarded-For` entry, which the edge proxy
/// appended; else the peer's. Failed attempts are limited by it, so one
/// client cannot lock out an edge proxy.
pub fn seen_by_edge(peer: IpAddr, headers: &HeaderMap) -> IpAddr {
    forwarded_from_nearest(headers)
        .next()
        .flatten()
        .unwrap_or(peer)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(values: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in values {
            h.append(X_FORWARDED_FOR, v.parse().unwrap());
        }
        h
    }

    fn nets(list: &[&str]) -> Vec<IpNet> {
        list.iter().map(|n| n.parse().unwrap()).collect()
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn without_trusted_proxies_the_peer_is_the_client_whatever_it_sends() {
        let h = headers(&["6.6.6.6"]);
        assert_eq!(behind_proxies(ip("10.0.0.5"), &h, &[]), ip("10.0.0.5"));
        let lb = nets(&["10.0.0.1/32"]);
        assert_eq!(behind_proxies(ip("10.0.0.5"), &h, &lb), ip("10.0.0.5"));
    }

    #[test]
    fn a_trusted_proxy_names_the_client_it_appended() {
        let lb = nets(&["10.0.0.0/24"]);
        let peer = ip("10.0.0.1");
        assert_eq!(
            behind_proxies(peer, &headers(&["203.0.113.7"]), &lb),
            ip("203.0.113.7")
        );
        // The client's own entry before the one the proxy appended changes nothing.
        let spoofed = headers(&["6.6.6.6, 203.0.113.7"]);
        assert_eq!(behind_proxies(peer, &spoofed, &lb), ip("203.0.113.7"));
        // Without a header the trusted proxy is the client.
        assert_eq!(behind_proxies(peer, &HeaderMap::new(), &lb), peer);
    }

    #[test]
    fn the_walk_passes_every_trusted_hop_and_only_those() {
        let lbs = nets(&["10.0.0.0/24", "192.168.0.9/32", "fd00::/8"]);
        let peer = ip("10.0.0.1");
        let chain = headers(&["6.6.6.6, 203.0.113.7", "192.168.0.9, fd00::3"]);
        assert_eq!(behind_proxies(peer, &chain, &lbs), ip("203.0.113.7"));
        // All trusted: the first entry.
        let inner = headers(&["10.0.0.7, 192.168.0.9"]);
        assert_eq!(behind_proxies(peer, &inner, &lbs), ip("10.0.0.7"));
        // Ports, as some load balancers add them.
        let ported = headers(&["203.0.113.7:51234", "[fd00::3]:443"]);
        assert_eq!(behind_proxies(peer, &ported, &lbs), ip("203.0.113.7"));
    }

    #[test]
    fn ipv4_mapped_addresses_count_as_ipv4() {
        let lb = nets(&["10.0.0.0/24"]);
        let mapped: SocketAddr = "[::ffff:10.0.0.1]:40000".parse().unwrap();
        let peer = canonical(mapped).ip();
        assert_eq!(peer, ip("10.0.0.1"));
        let h = headers(&["203.0.113.7, ::ffff:10.0.0.2"]);
        assert_eq!(behind_proxies(peer, &h, &lb), ip("203.0.113.7"));
        assert_eq!(
            seen_by_edge(peer, &headers(&["::ffff:6.6.6.6"])),
            ip("6.6.6.6")
        );
    }

    #[test]
    fn an_entry_that_is_no_address_stops_at_the_last_trusted_hop() {
        let lbs = nets(&["10.0.0.0/24"]);
        let peer = ip("10.0.0.1");
        for chain in [
            headers(&["6.6.6.6, unknown, 10.0.0.2"]),
            headers(&["6.6.6.6, , 10.0.0.2"]),
            headers(&["6.6.6.6", "unknown", "10.0.0.2"]),
        ] {
            assert_eq!(
                behind_proxies(peer, &chain, &lbs),
                ip("10.0.0.2"),
                "{chain:?}"
            );
        }
        let garbage = headers(&["junk"]);
        assert_eq!(behind_proxies(peer, &garbage, &lbs), peer);
        let mut opaque = HeaderMap::new();
        opaque.append(
            X_FORWARDED_FOR,
            http::HeaderValue::from_bytes(b"6.6.6.6, \xff").unwrap(),
        );
        assert_eq!(behind_proxies(peer, &opaque, &lbs), peer);
    }

    #[test]
    fn the_edge_proxy_names_the_client_in_its_last_entry() {
        let peer = ip("127.0.0.1");
        assert_eq!(seen_by_edge(peer, &HeaderMap::new()), peer);
        let h = headers(&["6.6.6.6, 10.1.2.3"]);
        assert_eq!(seen_by_edge(peer, &h), ip("10.1.2.3"));
        let h = headers(&["6.6.6.6, 10.1.2.3", "not an address"]);
        assert_eq!(seen_by_edge(peer, &h), peer);
    }
}
