//! The short chaos run (`make chaos` is the long one): under a steady load, the
//! broker (SQLite storage) is SIGKILLed and restarted, the gateway is SIGKILLed
//! and restarted, and ClickHouse is killed and restarted. Afterwards every event
//! id that got a 200 is in ClickHouse, exactly once after deduplication.
//! Faults are triggered by progress (events acknowledged), not by the clock.

mod common;

use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use common::process::{metric_sum, GatewayProcess};
use loadtest::run::{Mode, Options, Target};
use loadtest::traffic::{keys_toml, BatchSizes, Format, Tenant, Traffic};
use shared::testkit::{eventually, services, Broker, ClickHouse};

const TENANTS: usize = 5;

async fn accepted(gw: &GatewayProcess) -> f64 {
    match reqwest::get(format!("{}/metrics", gw.ops_url)).await {
        Ok(r) => metric_sum(
            &r.text().await.unwrap_or_default(),
            "overwatch_events_accepted_total",
            &[],
        ),
        Err(_) => 0.0,
    }
}

/// Waits until the running gateway process acknowledged `n` more events.
async fn progress(gw: &GatewayProcess, n: f64) {
    let start = accepted(gw).await;
    eventually(
        &format!("{n} more acknowledged events"),
        Duration::from_secs(90),
        || async move { (accepted(gw).await >= start + n).then_some(()) },
    )
    .await;
}

async fn ready(gw: &GatewayProcess) -> bool {
    reqwest::get(format!("{}/health/ready", gw.url))
        .await
        .is_ok_and(|r| r.status().is_success())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_acknowledged_is_lost_when_broker_gateway_and_clickhouse_die() {
    let svc = services();
    let mut broker = Broker::start(&svc);
    let mut ch = ClickHouse::start(&svc);
    let mut cfg = shared::testkit::config(&svc);
    cfg.kafka.brokers = broker.address();
    cfg.clickhouse.kafka_brokers = broker.address();
    cfg.clickhouse.url = ch.url();
    workerd::migrate::run(&cfg.kafka, &cfg.clickhouse)
        .await
        .expect("migrate");
    let mut gw = GatewayProcess::start_with_auth(
        &cfg,
        Some(&keys_toml(TENANTS)),
        "[telemetry]\nsnapshot_interval_secs = 0\n",
    )
    .await;

    let ids = std::env::temp_dir().join(format!("ow-chaos-{}.ids", uuid::Uuid::new_v4()));
    let stop = Arc::new(AtomicBool::new(false));
    let load = tokio::spawn(loadtest::run::run(Options {
        url: gw.url.clone(),
        target: Target::Events {
            format: Format::Native,
            path: None,
        },
        traffic: Traffic::new(7, TENANTS, BatchSizes::Fixed(50), 0.3),
        mode: Mode::Open(vec![(1000.0, Duration::from_secs(600))]),
        pool: 0,
        ids_out: Some(ids.clone()),
        pid: None,
        max_outstanding: 64,
        stop: Some(Arc::clone(&stop)),
    }));

    // 1. The broker dies; the gateway notices (readiness 503), the broker comes back.
    progress(&gw, 1000.0).await;
    broker.kill();
    eventually(
        "readiness 503 without a broker",
        Duration::from_secs(30),
        || async { (!ready(&gw).await).then_some(()) },
    )
    .await;
    broker.restart();
    eventually(
        "readiness 200 with the broker back",
        Duration::from_secs(60),
        || async { ready(&gw).await.then_some(()) },
    )
    .await;
    // 2. The gateway is SIGKILLed mid-load and restarted.
    progress(&gw, 1000.0).await;
    gw.kill_and_restart().await;
    // 3. ClickHouse dies and comes back (the broker holds the events meanwhile).
    progress(&gw, 1000.0).await;
    ch.kill();
    progress(&gw, 500.0).await;
    ch.restart();
    progress(&gw, 1000.0).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let report = load.await.expect("load task").expect("load run");
    let statuses = &report.phases[0].statuses;
    assert!(
        statuses.get("200").copied().unwrap_or(0) > 0,
        "{statuses:?}"
    );

    let acked = loadtest::check::read_ids(&ids).expect("acknowledged ids");
    assert!(acked.len() >= 4500, "only {} acknowledged", acked.len());
    let tenants: Vec<uuid::Uuid> = (0..TENANTS).map(|i| Tenant::nth(i).id).collect();
    let client = shared::store::client(&cfg.clickhouse);
    let verdict = eventually(
        "every acknowledged event in ClickHouse",
        Duration::from_secs(240),
        || {
            let (client, db, tenants, acked) =
                (&client, &cfg.clickhouse.database, &tenants, &acked);
            async move {
                let v = loadtest::check::check(client, db, tenants, acked)
                    .await
                    .ok()?;
                (v.lost == 0).then_some(v)
            }
        },
    )
    .await;
    assert_eq!(verdict.duplicates_after_dedup, 0, "{verdict:?}");
    eprintln!("chaos verdict: {verdict:?}; load {:?}", report.phases[0]);
    let _ = std::fs::remove_file(&ids);
}
