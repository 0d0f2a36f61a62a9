//! Realistic SDK traffic: the five event types in web-analytics proportions,
//! batch sizes from 1 to 1000 with small batches most common, many tenants with
//! a skewed (Zipf-like) share of the traffic, varied user agents and client IPs,
//! gzip on a configurable share of requests.

use bytes::Bytes;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use uuid::Uuid;

/// Share of each event type (pageview, click, scroll, performance, custom), in percent.
pub const TYPE_MIX: [(&str, u32); 5] = [
    ("pageview", 45),
    ("click", 30),
    ("scroll", 15),
    ("performance", 7),
    ("custom", 3),
];

const USER_AGENTS: [&str; 10] = [
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.0.0 Safari/537.36",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.4 Safari/605.1.15",
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.4 Mobile/15E148 Safari/604.1",
    "Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.0.0 Mobile Safari/537.36",
    "Mozilla/5.0 (X11; Linux x86_64; rv:125.0) Gecko/20100101 Firefox/125.0",
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.0.0 Safari/537.36 Edg/124.0.2478.67",
    "Mozilla/5.0 (iPad; CPU OS 16_7 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/16.6 Mobile/15E148 Safari/604.1",
    "Mozilla/5.0 (Linux; Android 13; SM-S911B) AppleWebKit/537.36 (KHTML, like Gecko) SamsungBrowser/24.0 Chrome/117.0.0.0 Mobile Safari/537.36",
    "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/123.0.0.0 Safari/537.36",
];

/// A small deterministic generator (xorshift64*): reproducible traffic, no crate.
#[derive(Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.max(1))
    }
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    /// Uniform in `0..n`.
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// A tenant of the benchmark: deterministic id and secret, so the gateway's
/// configuration and the load generator agree without sharing state.
#[derive(Debug, Clone)]
pub struct Tenant {
    pub id: Uuid,
    pub secret: String,
}

impl Tenant {
    pub fn nth(i: usize) -> Tenant {
        let digest = Sha256::digest(format!("overwatch-loadtest-tenant-{i}"));
        let mut b = [0u8; 16];
        b.copy_from_slice(&digest[..16]);
        Tenant {
            id: uuid::Builder::from_random_bytes(b).into_uuid(),
            // Short enough that the whole key fits PostHog's 64-character
            // token limit, so a peer's capture accepts the same keys.
            secret: format!("lt{i}-{}", hex::encode(&digest[16..24])),
        }
    }
    pub fn key(&self) -> String {
        format!("{}:{}", self.id, self.secret)
    }
}

#[cfg(test)]
#[test]
fn every_key_is_a_valid_posthog_token() {
    for i in [0, 49, 9_999] {
        let k = Tenant::nth(i).key();
        assert!(k.len() <= 64 && k.is_ascii(), "{k}: {} characters", k.len());
    }
}

/// `[auth]` keys for `n` tenants, as TOML for the gateway's configuration.
pub fn keys_toml(n: usize) -> String {
    let mut s = String::from("[auth]\nclickhouse_keys = false\nkeys = [\n");
    for i in 0..n {
        let t = Tenant::nth(i);
        let hash = hex::encode(Sha256::digest(t.secret.as_bytes()));
        s.push_str(&format!(
            "  {{ tenant_id = \"{}\", secret_sha256 = \"{hash}\", tier = \"enterprise\" }},\n",
            t.id
        ));
    }
    s.push_str("]\n");
    s
}

/// How batch sizes are drawn.
#[derive(Debug, Clone, Copy)]
pub enum BatchSizes {
    /// Every request carries this many events.
    Fixed(usize),
    /// SDK-like: 50% 1–10, 30% 11–100, 15% 101–500, 5% 501–1000 events.
    Realistic,
}

impl BatchSizes {
    pub fn draw(&self, rng: &mut Rng) -> usize {
        match *self {
            BatchSizes::Fixed(n) => n,
            BatchSizes::Realistic => {
                let (lo, hi) = match rng.below(100) {
                    0..=49 => (1, 10),
                    50..=79 => (11, 100),
                    80..=94 => (101, 500),
                    _ => (501, 1000),
                };
                lo + rng.below((hi - lo + 1) as u64) as usize
            }
        }
    }

    /// Mean events per request.
    pub fn mean(&self) -> f64 {
        match *self {
            BatchSizes::Fixed(n) => n as f64,
            BatchSizes::Realistic => 0.5 * 5.5 + 0.3 * 55.5 + 0.15 * 300.5 + 0.05 * 750.5,
        }
    }
}

fn event_type(rng: &mut Rng) -> &'static str {
    let mut r = rng.below(100) as u32;
    for (t, share) in TYPE_MIX {
        if r < share {
            return t;
        }
        r -= share;
    }
    "custom"
}

/// One event of `kind` as an SDK sends it (≈ 450–650 bytes of JSON).
pub fn event(rng: &mut Rng, kind: &str, session: Uuid, ts_ms: i64) -> Value {
    let n = rng.below(10_000);
    // The client's clock: the send time, as RFC 3339 (the gateway accepts
    // times inside its window around the arrival, `limits.max_event_age_hours`).
    let ts = time::OffsetDateTime::from_unix_timestamp_nanos(ts_ms as i128 * 1_000_000)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| "1970-01-01T00:00:00Z".into());
    let mut e = json!({
        "id": Uuid::new_v4().to_string(),
        "session_id": session.to_string(),
        "timestamp": ts,
        "type": kind,
        "user_agent": USER_AGENTS[rng.below(USER_AGENTS.len() as u64) as usize],
        "screen": {"width": 1920, "height": 1080},
        "viewport": {"width": 1280 + (n % 5) * 64, "height": 720 + (n % 7) * 32},
        "timezone": "Europe/Berlin",
        "language": "de-DE",
    });
    let extra = match kind {
        "pageview" => {
            json!({"title": format!("Product {n} – Shop"), "path": format!("/products/{n}"),
            "url": format!("https://shop.example.com/products/{n}?ref=nav"), "referrer": "https://www.google.com/"})
        }
        "click" => {
            json!({"element": "button", "selector": format!("#add-to-cart-{n}"), "text": "Add to cart",
            "x": (n % 1280) as f64, "y": (n % 720) as f64})
        }
        "scroll" => json!({"depth": (n % 101) as f64}),
        "performance" => {
            json!({"lcp": 1200.0 + (n % 800) as f64, "fcp": 640.0, "cls": 0.02, "ttfb": 95.0,
            "inp": 48.0, "fid": 6.0, "dom_content_loaded": 900.0, "load_time": 1450.0 + (n % 300) as f64})
        }
        _ => {
            json!({"name": "checkout_step", "properties": {"step": n % 4, "plan": "pro", "items": [n % 3, n % 5], "coupon": null}})
        }
    };
    if let (Some(o), Some(x)) = (e.as_object_mut(), extra.as_object()) {
        for (k, v) in x {
            o.insert(k.clone(), v.clone());
        }
    }
    e
}

/// The wire format of a request's body: the same events, in the shape a
/// gateway expects, so that a peer beside the same broker gets the same load.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// Overwatch's `POST /ingest`: `{"events": [...]}`, key in `Authorization`.
    Native,
    /// PostHog's capture `POST /batch`: `{"api_key": KEY, "batch": [...]}`.
    PostHog,
    /// Newline-delimited JSON, one event per line (Vector's `http_server` source).
    Ndjson,
}

impl Format {
    pub fn parse(s: &str) -> Result<Format, String> {
        match s {
            "native" => Ok(Format::Native),
            "posthog" => Ok(Format::PostHog),
            "ndjson" | "vector" => Ok(Format::Ndjson),
            _ => Err(format!("`{s}`: expected native, posthog or ndjson")),
        }
    }

    /// The path a gateway of this format takes events on.
    pub fn default_path(self) -> &'static str {
        match self {
            Format::Native => "/ingest",
            Format::PostHog => "/batch",
            Format::Ndjson => "/",
        }
    }

    pub fn content_type(self) -> &'static str {
        match self {
            Format::Ndjson => "application/x-ndjson",
            _ => "application/json",
        }
    }
}

/// One native event as PostHog's SDKs send it: the name (`$pageview`,
/// `$autocapture`, the custom name), `uuid`, `distinct_id`, `timestamp`, and
/// everything else in `properties` (PostHog's `$`-names where there are some).
pub fn posthog_event(e: &Value) -> Value {
    let mut props = serde_json::Map::new();
    let mut name = "custom".to_string();
    if let Some(o) = e.as_object() {
        for (k, v) in o {
            match k.as_str() {
                "id" | "timestamp" => {}
                "type" => {
                    name = match v.as_str() {
                        Some("pageview") => "$pageview".into(),
                        Some("click") => "$autocapture".into(),
                        Some("custom") => o
                            .get("name")
                            .and_then(Value::as_str)
                            .unwrap_or("custom")
                            .into(),
                        Some(other) => format!("${other}"),
                        None => "custom".into(),
                    };
                }
                "session_id" => {
                    props.insert("$session_id".into(), v.clone());
                }
                "url" => {
                    props.insert("$current_url".into(), v.clone());
                }
                "path" => {
                    props.insert("$pathname".into(), v.clone());
                }
                "referrer" => {
                    props.insert("$referrer".into(), v.clone());
                }
                "user_agent" => {
                    props.insert("$raw_user_agent".into(), v.clone());
                }
                _ => {
                    props.insert(k.clone(), v.clone());
                }
            }
        }
    }
    json!({
        "event": name,
        "uuid": e["id"],
        "distinct_id": e["session_id"],
        "timestamp": e["timestamp"],
        "properties": props,
    })
}

/// A ready-to-send request: body (gzip or not), tenant index, events and their ids.
#[derive(Clone)]
pub struct Request {
    pub tenant: usize,
    pub body: Bytes,
    pub gzip: bool,
    pub events: usize,
    /// The client IP the request claims (X-Forwarded-For, believed from a trusted proxy).
    pub client_ip: String,
    pub ids: Vec<Uuid>,
}

/// Generates requests: tenant by Zipf-like skew, batch size, gzip share.
#[derive(Clone)]
pub struct Traffic {
    pub rng: Rng,
    pub tenants: usize,
    pub sizes: BatchSizes,
    pub gzip_share: f64,
    pub format: Format,
    /// Cumulative Zipf weights of the tenants.
    cumulative: Vec<f64>,
}

impl Traffic {
    pub fn new(seed: u64, tenants: usize, sizes: BatchSizes, gzip_share: f64) -> Traffic {
        let mut acc = 0.0;
        let cumulative = (0..tenants.max(1))
            .map(|i| {
                acc += 1.0 / (i + 1) as f64;
                acc
            })
            .collect();
        Traffic {
            rng: Rng::new(seed),
            tenants: tenants.max(1),
            sizes,
            gzip_share,
            format: Format::Native,
            cumulative,
        }
    }

    /// The same traffic in another wire format.
    pub fn with_format(mut self, format: Format) -> Traffic {
        self.format = format;
        self
    }

    fn tenant(&mut self) -> usize {
        let total = self.cumulative.last().copied().unwrap_or(1.0);
        let r = self.rng.unit() * total;
        self.cumulative
            .partition_point(|c| *c < r)
            .min(self.tenants - 1)
    }

    pub fn request(&mut self, now_ms: i64) -> Request {
        let tenant = self.tenant();
        let n = self.sizes.draw(&mut self.rng);
        let session = Uuid::new_v4();
        let events: Vec<Value> = (0..n)
            .map(|i| {
                let kind = event_type(&mut self.rng);
                event(&mut self.rng, kind, session, now_ms + i as i64)
            })
            .collect();
        let ids = events
            .iter()
            .filter_map(|e| e["id"].as_str().and_then(|s| Uuid::parse_str(s).ok()))
            .collect();
        let json = match self.format {
            Format::Native => serde_json::to_vec(&json!({ "events": events })),
            Format::PostHog => serde_json::to_vec(&json!({
                "api_key": Tenant::nth(tenant).key(),
                "batch": events.iter().map(posthog_event).collect::<Vec<_>>(),
            })),
            Format::Ndjson => events
                .iter()
                .map(|e| serde_json::to_string(e).map(|l| l + "\n"))
                .collect::<Result<String, _>>()
                .map(String::into_bytes),
        }
        .unwrap_or_default();
        let gzip = self.rng.unit() < self.gzip_share;
        let body = if gzip {
            use std::io::Write;
            let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            let _ = enc.write_all(&json);
            Bytes::from(enc.finish().unwrap_or_default())
        } else {
            Bytes::from(json)
        };
        let ip = self.rng.next_u64();
        Request {
            tenant,
            body,
            gzip,
            events: n,
            client_ip: format!(
                "{}.{}.{}.{}",
                1 + (ip % 223),
                (ip >> 8) % 256,
                (ip >> 16) % 256,
                1 + (ip >> 24) % 254
            ),
            ids,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn type_mix_and_batch_sizes_follow_their_distributions() {
        let mut rng = Rng::new(7);
        let mut counts = std::collections::HashMap::new();
        for _ in 0..100_000 {
            *counts.entry(event_type(&mut rng)).or_insert(0u32) += 1;
        }
        for (t, share) in TYPE_MIX {
            let got = counts[t] as f64 / 1000.0;
            assert!((got - share as f64).abs() < 1.0, "{t}: {got}% vs {share}%");
        }
        let sizes: Vec<usize> = (0..100_000)
            .map(|_| BatchSizes::Realistic.draw(&mut rng))
            .collect();
        assert!(sizes.iter().all(|s| (1..=1000).contains(s)));
        let mean = sizes.iter().sum::<usize>() as f64 / sizes.len() as f64;
        assert!((mean - BatchSizes::Realistic.mean()).abs() < 3.0, "{mean}");
    }

    #[test]
    fn tenants_are_skewed_and_deterministic() {
        assert_eq!(Tenant::nth(3).id, Tenant::nth(3).id);
        assert_ne!(Tenant::nth(3).id, Tenant::nth(4).id);
        let mut t = Traffic::new(1, 50, BatchSizes::Fixed(1), 0.0);
        let mut first = 0;
        for _ in 0..10_000 {
            if t.tenant() == 0 {
                first += 1;
            }
        }
        // 1/H(50) ≈ 22% of the traffic goes to the biggest tenant.
        assert!((1_900..2_600).contains(&first), "{first}");
    }

    #[test]
    fn requests_carry_their_ids_and_gzip_when_asked() {
        let mut t = Traffic::new(3, 5, BatchSizes::Fixed(20), 1.0);
        let r = t.request(1_700_000_000_000);
        assert_eq!((r.events, r.ids.len(), r.gzip), (20, 20, true));
        let mut plain = Vec::new();
        use std::io::Read;
        flate2::read::GzDecoder::new(&r.body[..])
            .read_to_end(&mut plain)
            .expect("gzip");
        let v: Value = serde_json::from_slice(&plain).expect("json");
        assert_eq!(v["events"].as_array().map(Vec::len), Some(20));
    }

    #[test]
    fn every_format_carries_the_same_events() {
        let native = Traffic::new(9, 5, BatchSizes::Fixed(7), 0.0).request(1_700_000_000_000);
        let posthog = Traffic::new(9, 5, BatchSizes::Fixed(7), 0.0)
            .with_format(Format::PostHog)
            .request(1_700_000_000_000);
        let ndjson = Traffic::new(9, 5, BatchSizes::Fixed(7), 0.0)
            .with_format(Format::Ndjson)
            .request(1_700_000_000_000);
        let n: Value = serde_json::from_slice(&native.body).expect("native json");
        let p: Value = serde_json::from_slice(&posthog.body).expect("posthog json");
        assert_eq!(p["api_key"], Tenant::nth(posthog.tenant).key());
        let batch = p["batch"].as_array().expect("batch");
        let lines: Vec<Value> = std::str::from_utf8(&ndjson.body)
            .expect("utf-8")
            .lines()
            .map(|l| serde_json::from_str(l).expect("one event per line"))
            .collect();
        assert_eq!((batch.len(), lines.len()), (7, 7));
        for (i, e) in n["events"].as_array().expect("events").iter().enumerate() {
            // Same ids (the generators share a seed, and ids are drawn apart from it:
            // compare each format with its own recorded ids).
            assert_eq!(batch[i]["uuid"], posthog.ids[i].to_string());
            assert_eq!(lines[i]["id"], ndjson.ids[i].to_string());
            assert_eq!(
                lines[i]["type"], e["type"],
                "same event types in the same order"
            );
            let name = batch[i]["event"].as_str().expect("event name");
            match e["type"].as_str() {
                Some("pageview") => assert_eq!(name, "$pageview"),
                Some("click") => assert_eq!(name, "$autocapture"),
                Some("custom") => assert_eq!(name, "checkout_step"),
                Some(t) => assert_eq!(name, format!("${t}")),
                None => panic!("event without type"),
            }
            // Sessions are random per request: the same one across the batch.
            assert_eq!(
                batch[i]["properties"]["$session_id"],
                batch[0]["distinct_id"]
            );
            assert!(batch[i]["properties"]["$current_url"].is_string() == e["url"].is_string());
        }
    }
}
