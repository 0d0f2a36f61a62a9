//! The client's address behind trusted proxies, from `X-Forwarded-For` or
//! `Forwarded` (RFC 7239), read strictly.
//!
//! Right to left: each hop was written by the proxy to its right, so hops are
//! believed only while the writer is trusted. The first untrusted hop is the
//! client. A hop that does not parse (`unknown`, an obfuscated `_name`, junk)
//! means the chain cannot be believed, and the peer's address is used. Ports
//! and IPv6 brackets are parsed, not skipped.

use std::net::{IpAddr, SocketAddr};

use hyper::header::HeaderMap;

/// Which header the deployed proxies write (`gateway.forwarded_header`).
pub use shared::config::ForwardedHeader;

/// Most hops read; a longer chain is not believed.
pub const MAX_HOPS: usize = 32;

/// One hop's address: `ip`, `ip:port`, `[ipv6]` or `[ipv6]:port`, optionally
/// quoted (Forwarded). Anything else is `None`.
pub fn parse_hop(hop: &str) -> Option<IpAddr> {
    let hop = hop.trim();
    let hop = hop
        .strip_prefix('"')
        .and_then(|h| h.strip_suffix('"'))
        .unwrap_or(hop);
    if let Ok(ip) = hop.parse::<IpAddr>() {
        return Some(ip.to_canonical());
    }
    if let Ok(sa) = hop.parse::<SocketAddr>() {
        return Some(sa.ip().to_canonical());
    }
    let inner = hop.strip_prefix('[')?.strip_suffix(']')?;
    inner
        .parse::<std::net::Ipv6Addr>()
        .ok()
        .map(|ip| IpAddr::V6(ip).to_canonical())
}

/// The `for=` value of one `Forwarded` element (`None`: it has none or it is
/// malformed).
fn forwarded_for(element: &str) -> Option<&str> {
    element.split(';').find_map(|pair| {
        let (k, v) = pair.split_once('=')?;
        k.trim().eq_ignore_ascii_case("for").then_some(v.trim())
    })
}

/// The hops of `header`, left to right, each `None` when it does not parse;
/// `None` for the whole when the chain is longer than [`MAX_HOPS`].
fn hops(headers: &HeaderMap, header: ForwardedHeader) -> Option<Vec<Option<IpAddr>>> {
    let mut out = Vec::new();
    for value in headers.get_all(header.name()).iter() {
        let Ok(value) = value.to_str() else {
            out.push(None);
            continue;
        };
        for element in value.split(',') {
            if out.len() == MAX_HOPS {
                return None;
            }
            out.push(match header {
                ForwardedHeader::XForwardedFor => parse_hop(element),
                ForwardedHeader::Forwarded => forwarded_for(element).and_then(parse_hop),
            });
        }
    }
    Some(out)
}

/// The client's address for a request from `peer`.
pub fn client_ip(
    peer: IpAddr,
    headers: &HeaderMap,
    header: ForwardedHeader,
    trusted: impl Fn(IpAddr) -> bool,
) -> IpAddr {
    let peer = peer.to_canonical();
    if !trusted(peer) {
        return peer;
    }
    let Some(chain) = hops(headers, header) else {
        return peer;
    };
    let mut client = peer;
    for hop in chain.iter().rev() {
        let Some(ip) = *hop else { return peer };
        client = ip;
        if !trusted(ip) {
            break;
        }
    }
    client
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper::header::HeaderValue;

    fn h(name: &'static str, values: &[&str]) -> HeaderMap {
        let mut m = HeaderMap::new();
        for v in values {
            m.append(name, HeaderValue::from_str(v).expect("header"));
        }
        m
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("ip")
    }

    fn trusted(ip: IpAddr) -> bool {
        ip == "10.0.0.1".parse::<IpAddr>().expect("ip")
            || ip == "10.0.0.2".parse::<IpAddr>().expect("ip")
    }

    fn xff(values: &[&str]) -> IpAddr {
        client_ip(
            ip("10.0.0.1"),
            &h("x-forwarded-for", values),
            ForwardedHeader::XForwardedFor,
            trusted,
        )
    }

    #[test]
    fn hops_parse_with_ports_and_brackets() {
        assert_eq!(parse_hop(" 203.0.113.9 "), Some(ip("203.0.113.9")));
        assert_eq!(parse_hop("203.0.113.9:4711"), Some(ip("203.0.113.9")));
        assert_eq!(parse_hop("[2001:db8::1]:443"), Some(ip("2001:db8::1")));
        assert_eq!(parse_hop("[2001:db8::1]"), Some(ip("2001:db8::1")));
        assert_eq!(parse_hop("2001:db8::1"), Some(ip("2001:db8::1")));
        assert_eq!(parse_hop("\"[2001:db8::1]:1\""), Some(ip("2001:db8::1")));
        assert_eq!(parse_hop("::ffff:198.51.100.1"), Some(ip("198.51.100.1")));
        for junk in [
            "",
            "unknown",
            "_hidden",
            "1.2.3",
            "1.2.3.4:port",
            "[1.2.3.4]",
            "[::1",
            "1.2.3.4 5.6.7.8",
        ] {
            assert_eq!(parse_hop(junk), None, "{junk:?}");
        }
    }

    #[test]
    fn right_to_left_through_trusted_proxies_only() {
        // The proxy 10.0.0.1 saw 198.51.100.7; the leftmost hop is the client's claim.
        assert_eq!(xff(&["203.0.113.9, 198.51.100.7"]), ip("198.51.100.7"));
        // Through two trusted proxies, across header lines.
        assert_eq!(
            xff(&["203.0.113.9, 198.51.100.7", "10.0.0.2"]),
            ip("198.51.100.7")
        );
        // A port on the hop the proxy wrote does not let an earlier hop win.
        assert_eq!(xff(&["1.1.1.1, 198.51.100.7:5555"]), ip("198.51.100.7"));
        // Garbage where a trusted proxy wrote means: believe no hop.
        assert_eq!(xff(&["1.1.1.1, garbage"]), ip("10.0.0.1"));
        assert_eq!(xff(&["1.1.1.1, unknown, 10.0.0.2"]), ip("10.0.0.1"));
        // Every hop trusted: the leftmost one.
        assert_eq!(xff(&["10.0.0.2"]), ip("10.0.0.2"));
        assert_eq!(xff(&[]), ip("10.0.0.1"));
        // An untrusted peer's header is ignored.
        let untrusted = client_ip(
            ip("192.0.2.1"),
            &h("x-forwarded-for", &["198.51.100.7"]),
            ForwardedHeader::XForwardedFor,
            trusted,
        );
        assert_eq!(untrusted, ip("192.0.2.1"));
        // Too long a chain is not believed.
        let long = vec!["198.51.100.7"; MAX_HOPS + 1].join(",");
        assert_eq!(xff(&[&long]), ip("10.0.0.1"));
    }

    #[test]
    fn forwarded_header_for_values() {
        let f = |v: &[&str]| {
            client_ip(
                ip("10.0.0.1"),
                &h("forwarded", v),
                ForwardedHeader::Forwarded,
                trusted,
            )
        };
        assert_eq!(
            f(&["for=203.0.113.9;proto=https, for=\"[2001:db8:cafe::17]:4711\""]),
            ip("2001:db8:cafe::17")
        );
        assert_eq!(f(&["for=198.51.100.7;by=10.0.0.1"]), ip("198.51.100.7"));
        assert_eq!(f(&["for=_hidden"]), ip("10.0.0.1"));
        assert_eq!(f(&["proto=https"]), ip("10.0.0.1"));
        // The other header is not read.
        let other = client_ip(
            ip("10.0.0.1"),
            &h("x-forwarded-for", &["198.51.100.7"]),
            ForwardedHeader::Forwarded,
            trusted,
        );
        assert_eq!(other, ip("10.0.0.1"));
    }
}
