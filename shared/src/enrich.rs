//! Enrichment shared by the gateway (at ingest) and workerd (the enrichment
//! backfill): browser/OS/device and the bot flag from the user agent,
//! country/region/city from a MaxMind-format database, and IP anonymisation.
//!
//! Parsing a user agent costs up to ~2 ms, so results are cached per distinct
//! user-agent string in a bounded two-generation cache.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::{Arc, Mutex, OnceLock};

use crate::config::EnrichmentConfig;
use serde::Deserialize;
use uaparser::{Parser, UserAgentParser};

const UAP_REGEXES: &[u8] = include_bytes!("../data/uap-regexes.yaml");
const CRAWLER_PATTERNS: &str = include_str!("../data/crawler-patterns.txt");

#[derive(Debug, thiserror::Error)]
pub enum EnrichError {
    #[error("cannot load the embedded user-agent regexes: {0}")]
    UaRegexes(String),
    #[error("cannot build the bot patterns: {0}")]
    BotPatterns(#[from] regex::Error),
    #[error("cannot open the GeoIP database {path}: {source}")]
    Geo {
        path: String,
        #[source]
        source: maxminddb::MaxMindDbError,
    },
}

/// What a user agent says about the client.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UaInfo {
    pub browser: String,
    pub browser_version: String,
    pub os: String,
    pub os_version: String,
    pub device: String,
    pub is_bot: bool,
}

/// What [`Enricher::user_agent_if`] did.
#[derive(Debug, Clone)]
pub enum UaLookup {
    Cached(Arc<UaInfo>),
    Parsed(Arc<UaInfo>),
    /// Not cached, and parsing was not allowed.
    Skipped,
}

/// Where an IP address is.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GeoInfo {
    pub country: String,
    pub region: String,
    pub city: String,
}

/// The uap parser compiles about a thousand regexes; do it once per process.
/// Without Unicode classes it takes ~40 MB instead of ~150 MB (user agents are
/// ASCII in practice).
fn ua_parser() -> Result<&'static UserAgentParser, EnrichError> {
    static PARSER: OnceLock<Result<UserAgentParser, String>> = OnceLock::new();
    PARSER
        .get_or_init(|| {
            UserAgentParser::builder()
                .with_unicode_support(false)
                .build_from_bytes(UAP_REGEXES)
                .map_err(|e| e.to_string())
        })
        .as_ref()
        .map_err(|e| EnrichError::UaRegexes(e.clone()))
}

/// All crawler patterns as one byte-level, ASCII-only automaton (a few MB).
fn crawler_regex() -> Result<&'static regex::bytes::Regex, EnrichError> {
    static BOTS: OnceLock<Result<regex::bytes::Regex, regex::Error>> = OnceLock::new();
    BOTS.get_or_init(|| {
        let alternation = CRAWLER_PATTERNS
            .lines()
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .map(|p| format!("(?:{p})"))
            .collect::<Vec<_>>()
            .join("|");
        regex::bytes::RegexBuilder::new(&alternation)
            .unicode(false)
            .size_limit(64 << 20)
            .build()
    })
    .as_ref()
    .map_err(|e| EnrichError::BotPatterns(e.clone()))
}

/// A bounded cache: when the young generation is full it becomes the old one and
/// the previous old one is dropped, so at most `2 × capacity` entries are held and
/// hot entries survive by being promoted.
struct TwoGen<V> {
    young: HashMap<Box<str>, V>,
    old: HashMap<Box<str>, V>,
    capacity: usize,
}

impl<V: Clone> TwoGen<V> {
    fn new(capacity: usize) -> Self {
        TwoGen {
            young: HashMap::new(),
            old: HashMap::new(),
            capacity,
        }
    }

    fn get(&mut self, key: &str) -> Option<V> {
        if let Some(v) = self.young.get(key) {
            return Some(v.clone());
        }
        let v = self.old.remove(key)?;
        self.insert(key, v.clone());
        Some(v)
    }

    fn insert(&mut self, key: &str, v: V) {
        if self.young.len() >= self.capacity {
            self.old = std::mem::take(&mut self.young);
        }
        self.young.insert(key.into(), v);
    }

    fn len(&self) -> usize {
        self.young.len() + self.old.len()
    }
}

#[derive(Deserialize)]
struct Named<'a> {
    #[serde(borrow, default)]
    iso_code: Option<&'a str>,
    #[serde(borrow, default)]
    names: Option<HashMap<&'a str, &'a str>>,
}

impl Named<'_> {
    fn english(&self) -> Option<&str> {
        self.names.as_ref().and_then(|n| n.get("en").copied())
    }
}

/// The parts of a GeoIP2/GeoLite2 City or Country record we read; `country_code`
/// covers the simpler country databases (e.g. ip-location-db).
#[derive(Deserialize)]
struct GeoRecord<'a> {
    #[serde(borrow, default)]
    country: Option<Named<'a>>,
    #[serde(borrow, default)]
    subdivisions: Option<Vec<Named<'a>>>,
    #[serde(borrow, default)]
    city: Option<Named<'a>>,
    #[serde(borrow, default)]
    country_code: Option<&'a str>,
}

pub struct Enricher {
    parser: &'static UserAgentParser,
    crawlers: &'static regex::bytes::Regex,
    extra_bots: Option<regex::bytes::Regex>,
    ua_cache: Mutex<TwoGen<Arc<UaInfo>>>,
    geo: Option<maxminddb::Reader<Vec<u8>>>,
}

impl Enricher {
    pub fn new(e: &EnrichmentConfig) -> Result<Enricher, EnrichError> {
        let extra_bots = if e.bot_patterns.is_empty() {
            None
        } else {
            Some(
                regex::bytes::RegexBuilder::new(
                    &e.bot_patterns
                        .iter()
                        .map(|p| format!("(?:{p})"))
                        .collect::<Vec<_>>()
                        .join("|"),
                )
                .case_insensitive(true)
                .unicode(false)
                .build()?,
            )
        };
        let geo = if e.geoip_db.is_empty() {
            tracing::warn!("enrichment.geoip_db is not set: country, region and city stay empty");
            None
        } else {
            let reader = maxminddb::Reader::open_readfile(&e.geoip_db).map_err(|source| {
                EnrichError::Geo {
                    path: e.geoip_db.clone(),
                    source,
                }
            })?;
            tracing::info!(path = %e.geoip_db, kind = %reader.metadata().database_type, "GeoIP database loaded");
            Some(reader)
        };
        Ok(Enricher {
            parser: ua_parser()?,
            crawlers: crawler_regex()?,
            extra_bots,
            ua_cache: Mutex::new(TwoGen::new(e.ua_cache_size)),
            geo,
        })
    }

    /// Parses (or recalls) `ua`, counting the lookup as a cache hit or miss.
    pub fn user_agent(&self, ua: &str) -> Arc<UaInfo> {
        let hit = |h: &'static str| {
            metrics::counter!(ENRICH_CACHE_LOOKUPS, "cache" => "ua", "result" => h).increment(1)
        };
        match self.user_agent_if(ua, true) {
            UaLookup::Cached(v) => {
                hit("hit");
                v
            }
            UaLookup::Parsed(v) => {
                hit("miss");
                v
            }
            UaLookup::Skipped => Arc::new(UaInfo::default()),
        }
    }

    /// Whether `ua` would be answered from the cache (no parse), without
    /// counting a lookup. The empty user agent needs no parse.
    pub fn ua_cached(&self, ua: &str) -> bool {
        ua.is_empty() || self.cache().get(ua).is_some()
    }

    /// Recalls `ua` from the cache, or parses it when `may_parse` (a parse
    /// costs milliseconds, so callers may budget them). The caller counts the
    /// lookup (`Cached` is a hit): a hot path counts a request's lookups at
    /// once rather than one metric update per event.
    pub fn user_agent_if(&self, ua: &str, may_parse: bool) -> UaLookup {
        if ua.is_empty() {
            return UaLookup::Cached(Arc::new(UaInfo::default()));
        }
        if let Some(hit) = self.cache().get(ua) {
            return UaLookup::Cached(hit);
        }
        if !may_parse {
            return UaLookup::Skipped;
        }
        let info = Arc::new(self.parse_ua(ua));
        self.cache().insert(ua, Arc::clone(&info));
        UaLookup::Parsed(info)
    }

    fn cache(&self) -> std::sync::MutexGuard<'_, TwoGen<Arc<UaInfo>>> {
        self.ua_cache.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Entries in the user-agent cache (bounded by twice `enrichment.ua_cache_size`).
    pub fn ua_cache_len(&self) -> usize {
        self.cache().len()
    }

    fn parse_ua(&self, ua: &str) -> UaInfo {
        let c = self.parser.parse(ua);
        let version = |parts: [Option<&str>; 3]| {
            parts
                .into_iter()
                .map_while(|p| p.filter(|s| !s.is_empty()))
                .collect::<Vec<_>>()
                .join(".")
        };
        let family = |f: &str| {
            if f == "Other" {
                String::new()
            } else {
                f.to_string()
            }
        };
        let device = family(&c.device.family);
        let is_bot = device == "Spider"
            || self.crawlers.is_match(ua.as_bytes())
            || self
                .extra_bots
                .as_ref()
                .is_some_and(|r| r.is_match(ua.as_bytes()));
        UaInfo {
            browser: family(&c.user_agent.family),
            browser_version: version([
                c.user_agent.major.as_deref(),
                c.user_agent.minor.as_deref(),
                c.user_agent.patch.as_deref(),
            ]),
            os: family(&c.os.family),
            os_version: version([
                c.os.major.as_deref(),
                c.os.minor.as_deref(),
                c.os.patch.as_deref(),
            ]),
            device,
            is_bot,
        }
    }

    /// Country, region and city of `ip`; empty when unknown or geo is off.
    pub fn geo(&self, ip: IpAddr) -> GeoInfo {
        let Some(reader) = &self.geo else {
            return GeoInfo::default();
        };
        let record = match reader.lookup(ip).and_then(|r| r.decode::<GeoRecord<'_>>()) {
            Ok(Some(r)) => r,
            Ok(None) => return GeoInfo::default(),
            Err(e) => {
                tracing::debug!(%ip, error = %e, "GeoIP lookup failed");
                return GeoInfo::default();
            }
        };
        let country = record
            .country
            .as_ref()
            .and_then(|c| c.iso_code)
            .or(record.country_code)
            .unwrap_or_default();
        let region = record
            .subdivisions
            .as_ref()
            .and_then(|s| s.first())
            .and_then(|s| s.english().or(s.iso_code))
            .unwrap_or_default();
        let city = record
            .city
            .as_ref()
            .and_then(Named::english)
            .unwrap_or_default();
        GeoInfo {
            country: country.to_string(),
            region: region.to_string(),
            city: city.to_string(),
        }
    }

    pub fn geo_enabled(&self) -> bool {
        self.geo.is_some()
    }
}

/// Truncates an address so it no longer identifies a person: IPv4 to /24,
/// IPv6 to /48.
pub fn anonymize(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(v4) => {
            let [a, b, c, _] = v4.octets();
            IpAddr::V4(Ipv4Addr::new(a, b, c, 0))
        }
        IpAddr::V6(v6) => {
            let s = v6.segments();
            IpAddr::V6(Ipv6Addr::new(s[0], s[1], s[2], 0, 0, 0, 0, 0))
        }
    }
}

/// Lookups of the user-agent cache, by result (`hit`, `miss`).
pub const ENRICH_CACHE_LOOKUPS: &str = "overwatch_enrich_cache_lookups_total";

/// Describes the enrichment metrics (both binaries enrich).
pub fn describe_metrics() {
    metrics::describe_counter!(
        ENRICH_CACHE_LOOKUPS,
        "Enrichment lookups, by cache (ua: the shared user-agent cache; ua_request, geo_request: the per-request memo) and result (hit, miss)."
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn enricher(edit: impl FnOnce(&mut crate::Config)) -> Enricher {
        let mut cfg = crate::Config::load_from(None, Vec::new()).expect("defaults");
        edit(&mut cfg);
        Enricher::new(&cfg.enrichment).expect("enricher")
    }

    #[test]
    fn anonymize_truncates() {
        assert_eq!(
            anonymize("203.0.113.77".parse().expect("ip")),
            "203.0.113.0".parse::<IpAddr>().expect("ip")
        );
        assert_eq!(
            anonymize("2001:db8:abcd:12:1:2:3:4".parse().expect("ip")),
            "2001:db8:abcd::".parse::<IpAddr>().expect("ip")
        );
    }

    #[test]
    fn ua_cache_is_bounded() {
        let e = enricher(|c| c.enrichment.ua_cache_size = 8);
        for i in 0..100 {
            e.user_agent(&format!("Mozilla/5.0 (X11; Linux x86_64) Firefox/{i}.0"));
        }
        assert!(e.ua_cache_len() <= 16, "{}", e.ua_cache_len());
        let first = e.user_agent("curl/8.0.1");
        assert!(
            Arc::ptr_eq(&first, &e.user_agent("curl/8.0.1")),
            "second lookup is a cache hit"
        );
    }

    #[test]
    fn configured_bot_patterns_apply() {
        let e = enricher(|c| c.enrichment.bot_patterns = vec!["acme-monitor".into()]);
        assert!(
            e.user_agent("ACME-Monitor/2.0 (+https://acme.example)")
                .is_bot
        );
        assert!(!e.user_agent("Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0.0.0 Safari/537.36").is_bot);
    }
}
