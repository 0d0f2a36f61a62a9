//! Three gateway processes (real binaries) in front of one tenant share its rate
//! through ClickHouse: however unevenly the load balancer spreads the traffic,
//! together they admit the configured rate within 10%, and each 429 still
//! names the tenant's whole rate. Each replica alone would admit the whole rate
//! (three times it in all).

mod common;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::process::GatewayProcess;
use common::{event, SECRET};
use shared::testkit::{services, TestSchema};
use uuid::Uuid;

const RATE: f64 = 200.0;
const BATCH: usize = 20;
// One second of the rate. (A burst of a single batch wastes refill while a full
// bucket waits for the next request, on one replica as on several.)
const BURST: usize = 200;
const WARMUP: Duration = Duration::from_secs(4);
const MEASURED: Duration = Duration::from_secs(10);

fn batch() -> serde_json::Value {
    let s = Uuid::new_v4();
    serde_json::json!({"events": (0..BATCH).map(|i| event("click", i, s)).collect::<Vec<_>>()})
}

/// A client posting batches as fast as it is let, `pause` after each request;
/// counts the events accepted inside the measured window.
async fn client(
    url: String,
    key: String,
    pause: Duration,
    start: Instant,
    accepted: Arc<AtomicU64>,
    limit_header: Arc<std::sync::Mutex<Option<String>>>,
) {
    let http = reqwest::Client::new();
    let body = batch();
    while start.elapsed() < WARMUP + MEASURED {
        let r = http
            .post(format!("{url}/ingest"))
            .header("authorization", format!("Bearer {key}"))
            .json(&body)
            .send()
            .await
            .expect("send");
        let done = start.elapsed();
        match r.status().as_u16() {
            200 => {
                if done >= WARMUP && done < WARMUP + MEASURED {
                    accepted.fetch_add(BATCH as u64, Ordering::Relaxed);
                }
            }
            429 => {
                *limit_header.lock().expect("lock") = r
                    .headers()
                    .get("x-ratelimit-limit")
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_string);
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            s => panic!("unexpected {s}: {}", r.text().await.unwrap_or_default()),
        }
        tokio::time::sleep(pause).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_together_admit_the_tenants_rate() {
    let svc = services();
    let schema = TestSchema::create(&svc).await;
    let tenant = Uuid::new_v4();
    let auth = format!(
        "[auth]\nclickhouse_keys = false\nkeys = [{{ tenant_id = \"{tenant}\", secret_sha256 = \"{}\", tier = \"paid\" }}]\n\n",
        shared::credential::hash_secret(SECRET)
    );
    let limits = format!(
        "[rate_limits]\ncluster_sync_interval_ms = 500\n\
         overrides = [{{ tenant_id = \"{tenant}\", events_per_second = {RATE}, burst = {BURST} }}]\n"
    );
    let gateway = format!("max_events_per_batch = {BATCH}\n");
    let mut replicas = Vec::new();
    for _ in 0..3 {
        replicas
            .push(GatewayProcess::start_full(&schema.config, Some(&auth), &gateway, &limits).await);
    }
    let key = format!("{tenant}:{SECRET}");

    // Uneven: 6 busy clients on the first replica, 3 on the second, and one
    // slow client (about 50 events/s, under an equal third) on the third.
    let start = Instant::now();
    let accepted = Arc::new(AtomicU64::new(0));
    let limit_header = Arc::new(std::sync::Mutex::new(None));
    let mut tasks = Vec::new();
    for (replica, clients, pause) in [(0, 6, 0), (1, 3, 0), (2, 1, 400)] {
        for _ in 0..clients {
            tasks.push(tokio::spawn(client(
                replicas[replica].url.clone(),
                key.clone(),
                Duration::from_millis(pause),
                start,
                Arc::clone(&accepted),
                Arc::clone(&limit_header),
            )));
        }
    }
    for t in tasks {
        t.await.expect("client");
    }
    let got = accepted.load(Ordering::Relaxed) as f64 / MEASURED.as_secs_f64();
    eprintln!(
        "3 replicas, uneven load: {got:.1} events/s accepted for a configured {RATE} ({:+.1}%)",
        (got / RATE - 1.0) * 100.0
    );
    assert!(
        (got - RATE).abs() <= RATE * 0.10,
        "accepted {got:.1} events/s, configured {RATE}: more than 10% off"
    );
    assert_eq!(
        limit_header.lock().expect("lock").as_deref(),
        Some("200"),
        "a 429 names the tenant's whole rate"
    );
}
