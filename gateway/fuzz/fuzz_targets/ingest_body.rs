//! Fuzzes everything the gateway does with an untrusted request body before it
//! reaches the broker: gzip decoding under the cap, the structure scan,
//! simd-json parsing, garde
//! validation, enrichment and serialization. Nothing may panic, and an accepted
//! event must serialize to JSON that parses again.
//!
//! Run: `make fuzz` (or `cd gateway && RUSTC_BOOTSTRAP=1 cargo fuzz run ingest_body`).
#![no_main]

use std::sync::OnceLock;

use gateway::enrich::Enricher;
use gateway::ingest::{decode, model, validate};
use libfuzzer_sys::fuzz_target;
use shared::config::Config;

fn setup() -> &'static (Config, Enricher) {
    static S: OnceLock<(Config, Enricher)> = OnceLock::new();
    S.get_or_init(|| {
        let cfg = Config::load_from(None, Vec::new()).expect("defaults");
        let e = Enricher::new(&cfg.gateway, &cfg.enrichment).expect("enricher");
        (cfg, e)
    })
}

fuzz_target!(|data: &[u8]| {
    let (cfg, enricher) = setup();
    // First byte: whether the rest is a gzip body.
    let Some((&flag, rest)) = data.split_first() else { return };
    let mut buf = if flag & 1 == 1 {
        match decode::gunzip(rest, 1 << 20) {
            Ok(b) => b,
            Err(_) => return,
        }
    } else {
        rest.to_vec()
    };
    let shape = gateway::ingest::shape::ShapeLimits::new(cfg.gateway.max_events_per_batch, &cfg.limits);
    let Ok(batch) = model::parse_bounded(&mut buf, shape) else { return };
    let ctx = validate::Context {
        tenant: uuid::Uuid::nil(),
        received_at_ms: 1_700_000_000_000,
        window: shared::event::TIME_WINDOW_CEILING,
        max_events: cfg.gateway.max_events_per_batch,
        limits: &cfg.limits,
        enricher,
        client_ip: "192.0.2.1".parse().expect("ip"),
        header_ua: None,
        anonymize_ip: flag & 2 == 2,
        max_ua_parses: cfg.enrichment.max_ua_parses_per_request,
        max_details: 100,
    };
    if let Ok(events) = validate::prepare(&batch, &ctx) {
        for e in events {
            let _: &str = std::str::from_utf8(&e.payload).expect("payload is UTF-8");
            assert!(e.payload.starts_with(b"{") && e.payload.ends_with(b"}"));
        }
    }
});
