//! The broker goes away: /ingest answers 503 with Retry-After within the configured
//! bound, readiness turns 503, and service resumes after the broker restarts
//! without restarting the gateway.

mod common;

use std::time::{Duration, Instant};

use common::{event, TestGateway};
use shared::testkit::{eventually, services, Broker};
use uuid::Uuid;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outage_gives_503_then_recovers() {
    let svc = services();
    let mut broker = Broker::start(&svc);
    let mut cfg = shared::testkit::config(&svc);
    cfg.kafka.brokers = broker.address();
    cfg.gateway.delivery_timeout_ms = 1500;
    cfg.gateway.retry_after_secs = 7;
    shared::testkit::create_topics(&cfg, 1).await;
    let gw = TestGateway::start(cfg).await;
    let session = Uuid::new_v4();
    let batch = |n| serde_json::json!({"events": [event("pageview", n, session)]});

    let resp = gw.ingest(&batch(1)).await;
    assert_eq!(resp.status(), 200, "{:?}", resp.text().await);

    broker.kill();
    let started = Instant::now();
    let resp = gw.ingest(&batch(2)).await;
    let took = started.elapsed();
    assert_eq!(resp.status(), 503);
    assert_eq!(resp.headers()["retry-after"], "7");
    let body: serde_json::Value = resp.json().await.expect("json");
    assert_eq!(body["error"]["code"], "broker_unavailable");
    assert!(
        took < Duration::from_millis(1500 + 1000),
        "503 took {took:?}, bound is 1.5 s"
    );
    let client = reqwest::Client::new();
    eventually(
        "readiness to report 503",
        Duration::from_secs(20),
        || async {
            let r = client.get(gw.url("/health/ready")).send().await.ok()?;
            (r.status() == 503).then_some(())
        },
    )
    .await;

    broker.restart();
    let mut n = 3;
    eventually(
        "ingest to succeed after the broker restart",
        Duration::from_secs(60),
        || {
            n += 1;
            let body = batch(n);
            let gw = &gw;
            async move { (gw.ingest(&body).await.status() == 200).then_some(()) }
        },
    )
    .await;
    eventually("readiness to recover", Duration::from_secs(20), || async {
        let r = client.get(gw.url("/health/ready")).send().await.ok()?;
        (r.status() == 200).then_some(())
    })
    .await;
    gw.shutdown().await;
}
