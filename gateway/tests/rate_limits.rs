//! Per-tenant rate limits on the real gateway and broker: 429 with the documented
//! headers, and an accepted rate within 10% of the configured one over 10 s.

mod common;

use std::time::{Duration, Instant};

use common::{event, TestGateway};
use shared::testkit::services;
use uuid::Uuid;

async fn gateway(rate: f64, burst: u64) -> TestGateway {
    let svc = services();
    let mut cfg = shared::testkit::config(&svc);
    shared::testkit::create_topics(&cfg, 1).await;
    cfg.gateway.max_events_per_batch = 10;
    cfg.tiers.free.events_per_second = rate;
    cfg.tiers.free.burst = burst;
    TestGateway::start(cfg).await
}

fn batch(n: usize) -> serde_json::Value {
    let s = Uuid::new_v4();
    serde_json::json!({"events": (0..n).map(|i| event("click", i, s)).collect::<Vec<_>>()})
}

#[tokio::test]
async fn over_the_limit_gets_429_with_headers() {
    let gw = gateway(5.0, 10).await;
    let r = gw.ingest(&batch(10)).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-ratelimit-limit"], "5");
    assert_eq!(r.headers()["x-ratelimit-remaining"], "0");
    assert_eq!(r.headers()["x-ratelimit-reset"], "2");

    let r = gw.ingest(&batch(10)).await;
    assert_eq!(r.status(), 429);
    let h = r.headers().clone();
    // 10 tokens at 5/s: at most 2 s, less by whatever refilled since the first
    // request (which includes the broker's acknowledgement).
    let retry: u64 = h["retry-after"]
        .to_str()
        .expect("ascii")
        .parse()
        .expect("seconds");
    assert!((1..=2).contains(&retry), "Retry-After {retry}");
    assert_eq!(h["x-ratelimit-limit"], "5");
    let remaining: u64 = h["x-ratelimit-remaining"]
        .to_str()
        .expect("ascii")
        .parse()
        .expect("n");
    assert!(
        remaining < 10,
        "fewer than the 10 events asked for: {remaining}"
    );
    let body: serde_json::Value = r.json().await.expect("json");
    assert_eq!(body["error"]["code"], "rate_limited");

    // Another tenant is not affected.
    let other = gateway(5.0, 10).await;
    assert_eq!(other.ingest(&batch(10)).await.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn accepted_rate_stays_within_ten_percent() {
    let rate = 100.0;
    let gw = std::sync::Arc::new(gateway(rate, 20).await);
    let window = Duration::from_secs(10);
    let started = Instant::now();
    // Four clients together send far faster than the limit.
    let mut clients = Vec::new();
    for _ in 0..4 {
        let gw = std::sync::Arc::clone(&gw);
        clients.push(tokio::spawn(async move {
            let (mut accepted, mut refused) = (0u64, 0u64);
            let body = batch(10);
            while started.elapsed() < window {
                match gw.ingest(&body).await.status().as_u16() {
                    200 => accepted += 10,
                    429 => {
                        refused += 1;
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                    s => panic!("unexpected status {s}"),
                }
            }
            (accepted, refused)
        }));
    }
    let (mut accepted, mut refused) = (0u64, 0u64);
    for c in clients {
        let (a, r) = c.await.expect("client");
        accepted += a;
        refused += r;
    }
    let secs = started.elapsed().as_secs_f64();
    let observed = accepted as f64 / secs;
    eprintln!("accepted {accepted} events in {secs:.2} s = {observed:.1}/s ({refused} refusals)");
    assert!(refused > 0, "the clients sent faster than the limit");
    assert!(
        (observed - rate).abs() <= rate * 0.10,
        "accepted {observed:.1} events/s, configured {rate}"
    );
}

/// A small plain body is parsed on the network thread that read it; when one
/// of its user agents is not cached yet the rest is finished on a worker. The
/// batch must be charged once, not twice, and its events still enriched.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_small_batch_with_a_new_user_agent_is_charged_once_and_enriched() {
    let svc = services();
    let mut cfg = shared::testkit::config(&svc);
    shared::testkit::create_topics(&cfg, 1).await;
    cfg.gateway.max_events_per_batch = 10;
    // Practically no refill during the test: what is left is what was taken.
    cfg.tiers.free.events_per_second = 0.001;
    cfg.tiers.free.burst = 20;
    assert!(
        cfg.gateway.inline_max_body_bytes >= 8 * 1024,
        "small bodies go inline"
    );
    let gw = TestGateway::start(cfg.clone()).await;
    for (round, left) in [(0, "15"), (1, "10")] {
        // Never seen by this process: the inline attempt must hand off.
        let ua = format!(
            "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) \
             Chrome/12{round}.0.{}.0 Safari/537.36",
            Uuid::new_v4().as_u128() % 10_000
        );
        let s = Uuid::new_v4();
        let events: Vec<_> = (0..5)
            .map(|i| {
                let mut e = event("click", i, s);
                e["user_agent"] = ua.clone().into();
                e
            })
            .collect();
        let r = gw.ingest(&serde_json::json!({ "events": events })).await;
        assert_eq!(r.status(), 200);
        assert_eq!(r.headers()["x-ratelimit-remaining"], left, "round {round}");
    }
    let consumer = common::consumer_from_start(
        &cfg,
        &[&cfg.kafka.topic_for(shared::event::EventType::Click)],
    );
    let mut seen = 0;
    while seen < 10 {
        let (_, rows) = common::next_rows(&consumer).await;
        for v in rows {
            assert_eq!(v["browser"], "Chrome", "{v}");
            assert_eq!(v["os"], "Windows", "{v}");
            seen += 1;
        }
    }
}
