//! Fuzzes what the gateway reads from a request head before any body: API-key
//! and signature headers, the `api_key` query parameter, the content type and
//! encoding checks, and the client address from `X-Forwarded-For` or
//! `Forwarded` through trusted proxies. Nothing may panic; the client address is
//! the peer or one of the hops the headers name; a key is accepted only as the
//! configured one.
//!
//! Input: the first byte picks the peer (trusted or not), the rest is header
//! lines `name: value` (lines that are not valid headers are skipped); a line
//! `?…` is the query string.
//!
//! Run: `make fuzz` (or `cd gateway && RUSTC_BOOTSTRAP=1 cargo fuzz run request_head`).
#![no_main]

use std::net::IpAddr;
use std::sync::OnceLock;

use gateway::auth::{sign, KeyStore};
use gateway::enrich::forwarded::{self, ForwardedHeader};
use gateway::ingest::decode;
use hyper::header::{HeaderMap, HeaderName, HeaderValue};
use libfuzzer_sys::fuzz_target;
use shared::config::StaticKey;
use shared::domain::Tier;

const TENANT: uuid::Uuid = uuid::Uuid::from_u128(0x1234);

fn store() -> &'static KeyStore {
    static S: OnceLock<KeyStore> = OnceLock::new();
    S.get_or_init(|| {
        let mut auth = shared::config::Config::load_from(None, Vec::new())
            .expect("defaults")
            .auth;
        auth.keys = vec![StaticKey {
            tenant_id: TENANT,
            secret_sha256: shared::credential::hash_secret("secret"),
            tier: Tier::Paid,
            anonymize_ip: false,
        }];
        KeyStore::from_config(&auth)
    })
}

fn trusted(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.octets()[0] == 10,
        IpAddr::V6(v6) => v6.segments()[0] == 0xfd00,
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&flag, rest)) = data.split_first() else { return };
    let mut headers = HeaderMap::new();
    let mut query: Option<String> = None;
    for line in rest.split(|&b| b == b'\n') {
        if let Some(q) = line.strip_prefix(b"?") {
            query = Some(String::from_utf8_lossy(q).into_owned());
            continue;
        }
        let Some(colon) = line.iter().position(|&b| b == b':') else { continue };
        let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(&line[..colon]),
            HeaderValue::from_bytes(line[colon + 1..].trim_ascii()),
        ) else {
            continue;
        };
        headers.append(name, value);
    }
    let peer: IpAddr = if flag & 1 == 1 { "10.0.0.1" } else { "192.0.2.1" }
        .parse()
        .expect("ip");
    let which = if flag & 2 == 2 { ForwardedHeader::Forwarded } else { ForwardedHeader::XForwardedFor };
    let client = forwarded::client_ip(peer, &headers, which, trusted);
    if !trusted(peer) {
        assert_eq!(client, peer, "an untrusted peer's headers are never believed");
    } else if client != peer {
        let named = headers
            .get_all(which.name())
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .filter_map(|hop| match which {
                ForwardedHeader::XForwardedFor => forwarded::parse_hop(hop),
                ForwardedHeader::Forwarded => hop
                    .split(';')
                    .find_map(|p| p.split_once('=').filter(|(k, _)| k.trim().eq_ignore_ascii_case("for")))
                    .and_then(|(_, v)| forwarded::parse_hop(v)),
            })
            .any(|ip| ip == client);
        assert!(named, "the client address {client} is one the headers name");
    }
    if let Some(Ok(p)) = sign::presented(&headers) {
        let _ = p.key_id;
    }
    match store().authenticate(&headers, query.as_deref(), client) {
        Ok((who, _)) => assert_eq!(who.tenant, TENANT, "only the configured key is accepted"),
        Err(e) => {
            let status = e.status().as_u16();
            assert!((400..600).contains(&status), "{status}");
        }
    }
    let _ = decode::check_headers(&headers, flag & 4 == 4, flag & 8 == 8);
});
