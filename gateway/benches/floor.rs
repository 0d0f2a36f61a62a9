//! The floor: the gateway's per-event CPU work without the network — gzip
//! decoding, simd-json parsing, validation, enrichment and serialization — on
//! the payloads `loadtest` sends (1000-event batches of the realistic type mix).
//! `make bench` prints it next to the gateway's measured CPU per event.
//!
//! cargo bench -p gateway --bench floor

use std::hint::black_box;

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use gateway::enrich::Enricher;
use gateway::ingest::decode::{self, Encoding};
use gateway::ingest::{model, validate};
use loadtest::traffic::{BatchSizes, Traffic};
use shared::config::Config;

const EVENTS: usize = 1000;

fn body(gzip: bool, events: usize) -> Bytes {
    let share = if gzip { 1.0 } else { 0.0 };
    Traffic::new(42, 50, BatchSizes::Fixed(events), share)
        .request(1_790_000_000_000)
        .body
}

fn floor(c: &mut Criterion) {
    let cfg = Config::load_from(None, Vec::new()).expect("default config");
    let enricher = Enricher::new(&cfg.gateway, &cfg.enrichment).expect("enricher");
    let mut group = c.benchmark_group("floor");
    group.throughput(Throughput::Elements(EVENTS as u64));
    for (name, gzip, events) in [
        ("plain_1000", false, EVENTS),
        ("gzip_1000", true, EVENTS),
        ("plain_1", false, 1),
    ] {
        group.throughput(Throughput::Elements(events as u64));
        let raw = decode::RawBody::from(body(gzip, events));
        let encoding = if gzip {
            Encoding::Gzip
        } else {
            Encoding::Identity
        };
        group.bench_function(name, |b| {
            b.iter(|| {
                let mut buf = decode::decode(&raw, encoding, cfg.limits.max_decompressed_bytes)
                    .expect("decode");
                let shape = gateway::ingest::shape::ShapeLimits::new(
                    cfg.gateway.max_events_per_batch,
                    &cfg.limits,
                );
                let batch = model::parse_bounded(&mut buf, shape).expect("parse");
                let ctx = validate::Context {
                    tenant: uuid::Uuid::nil(),
                    received_at_ms: 1_790_000_000_000,
                    window: shared::event::TimeWindow {
                        past_hours: cfg.limits.max_event_age_hours,
                        future_minutes: cfg.limits.max_future_minutes,
                    },
                    max_events: cfg.gateway.max_events_per_batch,
                    limits: &cfg.limits,
                    enricher: &enricher,
                    client_ip: "203.0.113.7".parse().expect("ip"),
                    header_ua: None,
                    anonymize_ip: false,
                    max_ua_parses: cfg.enrichment.max_ua_parses_per_request,
                    max_details: 100,
                };
                let out = validate::prepare(&batch, &ctx).expect("valid");
                assert_eq!(out.len(), events);
                black_box(out)
            })
        });
    }
    group.finish();
}

criterion_group!(benches, floor);
criterion_main!(benches);
