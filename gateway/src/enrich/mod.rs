//! Enrichment at ingest: the client IP ([`forwarded`]: X-Forwarded-For or
//! Forwarded, believed only from `gateway.trusted_proxies`) on top of the shared user-agent, bot and geo
//! enrichment (`shared::enrich`, also used by workerd's enrichment backfill).

use std::net::{IpAddr, SocketAddr};
use std::ops::Deref;

use hyper::header::HeaderMap;
use shared::config::{EnrichmentConfig, GatewayConfig};

pub mod forwarded;

pub use shared::enrich::{anonymize, EnrichError, GeoInfo, UaInfo, UaLookup};

pub struct Enricher {
    inner: shared::enrich::Enricher,
    trusted: Vec<ipnet::IpNet>,
    header: forwarded::ForwardedHeader,
}

impl Deref for Enricher {
    type Target = shared::enrich::Enricher;

    fn deref(&self) -> &Self::Target {
        &self.inner
    }
}

impl Enricher {
    /// Client addresses come through `gateway.trusted_proxies`; the rest is `[enrichment]`.
    pub fn new(gateway: &GatewayConfig, cfg: &EnrichmentConfig) -> Result<Enricher, EnrichError> {
        let trusted = gateway
            .trusted_proxies
            .iter()
            .filter_map(|s| shared::config::parse_net(s))
            .collect();
        Ok(Enricher {
            inner: shared::enrich::Enricher::new(cfg)?,
            trusted,
            header: gateway.forwarded_header,
        })
    }

    fn is_trusted(&self, ip: IpAddr) -> bool {
        self.trusted.iter().any(|net| net.contains(&ip))
    }

    /// The client's address: the peer's, unless the peer is a trusted proxy
    /// (see [`forwarded::client_ip`]).
    pub fn client_ip(&self, peer: SocketAddr, headers: &HeaderMap) -> IpAddr {
        forwarded::client_ip(peer.ip(), headers, self.header, |ip| self.is_trusted(ip))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper::header::HeaderValue;

    fn xff(v: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", HeaderValue::from_str(v).expect("header"));
        h
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("ip")
    }

    #[test]
    fn forwarded_for_only_from_trusted_proxies() {
        let mut cfg = shared::Config::load_from(None, Vec::new()).expect("defaults");
        cfg.gateway.trusted_proxies = vec!["10.0.0.0/8".into(), "127.0.0.1".into()];
        let e = Enricher::new(&cfg.gateway, &cfg.enrichment).expect("enricher");
        let h = xff("203.0.113.9, 198.51.100.7, 10.1.2.3");
        // Untrusted peer: its own address, whatever the header says.
        assert_eq!(
            e.client_ip("192.0.2.1:5000".parse().expect("addr"), &h),
            ip("192.0.2.1")
        );
        // Trusted peer: the nearest untrusted hop, not the spoofable leftmost one.
        assert_eq!(
            e.client_ip("127.0.0.1:5000".parse().expect("addr"), &h),
            ip("198.51.100.7")
        );
        // Trusted peer without the header: the peer.
        assert_eq!(
            e.client_ip("10.9.9.9:1".parse().expect("addr"), &HeaderMap::new()),
            ip("10.9.9.9")
        );
    }
}
