//! The daemon as a library, started in-process on port 0 (`daemon::run`): it
//! migrates, schedules and reports its jobs; at shutdown readiness turns 503
//! with "shutting down" while a job still runs, the job is waited for, and the
//! operations listener closes last.

use std::time::{Duration, Instant};

use shared::runtime::shutdown::Shutdown;
use shared::testkit::{eventually, free_port, services, TestSchema};

async fn get(url: &str) -> Option<(u16, serde_json::Value)> {
    let r = reqwest::get(url).await.ok()?;
    let status = r.status().as_u16();
    Some((status, r.json().await.ok()?))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waits_for_a_running_job_and_says_so_before_it_closes() {
    let svc = services();
    let schema = TestSchema::create(&svc).await;
    let mut config = schema.config.clone();
    for job in workerd::jobs::JobName::ALL {
        let cron = match job {
            // Every second; against a broker nobody listens on, measuring the
            // consumer lag takes its full 10 s timeout: a job still running.
            workerd::jobs::JobName::Alerts => "* * * * * *",
            _ => "",
        };
        let schedule = shared::config::Schedule::parse(cron).expect("cron");
        match job {
            workerd::jobs::JobName::Retention => config.jobs.retention_cron = schedule,
            workerd::jobs::JobName::Sessions => config.jobs.sessions_cron = schedule,
            workerd::jobs::JobName::Rollups => config.jobs.rollups_cron = schedule,
            workerd::jobs::JobName::Quota => config.jobs.quota_cron = schedule,
            workerd::jobs::JobName::Compression => config.jobs.compression_cron = schedule,
            workerd::jobs::JobName::Enrichment => config.jobs.enrichment_cron = schedule,
            workerd::jobs::JobName::Alerts => config.jobs.alerts_cron = schedule,
        }
    }
    config.clickhouse.kafka_brokers = format!("127.0.0.1:{}", free_port());
    config.workerd.shutdown_timeout_ms = 30_000;
    config.telemetry.snapshot_interval_secs = 0;

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let shutdown = Shutdown::new();
    let daemon = tokio::spawn(workerd::daemon::run(config, listener, shutdown.clone()));

    let health = format!("http://{addr}/health");
    let ready = format!("http://{addr}/health/ready");
    eventually(
        "ready after its startup migrations",
        Duration::from_secs(60),
        || async {
            let (status, _) = get(&ready).await?;
            (status == 200).then_some(())
        },
    )
    .await;
    let (_, h) = get(&health).await.expect("health");
    assert_eq!(h["components"]["migrations"]["status"], "done", "{h}");
    assert_eq!(h["components"]["clickhouse"]["status"], "up", "{h}");

    eventually(
        "the alerts job running",
        Duration::from_secs(30),
        || async {
            let (_, h) = get(&health).await?;
            (h["jobs"]["alerts"]["running"] == true).then_some(())
        },
    )
    .await;
    let triggered = Instant::now();
    shutdown.trigger();
    let (status, body) = eventually(
        "readiness to say shutting down",
        Duration::from_secs(5),
        || async { get(&ready).await },
    )
    .await;
    assert_eq!(status, 503, "{body}");
    let reasons = body["reasons"].as_array().expect("reasons");
    assert!(reasons.iter().any(|r| r == "shutting down"), "{body}");
    let (_, h) = get(&health).await.expect("health while draining");
    assert_eq!(
        h["jobs"]["alerts"]["running"], true,
        "the job is waited for: {h}"
    );

    let result = tokio::time::timeout(Duration::from_secs(40), daemon)
        .await
        .expect("run returns within the shutdown timeout")
        .expect("join");
    assert!(result.is_ok(), "{result:?}");
    assert!(triggered.elapsed() < Duration::from_secs(35));
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "the operations listener is closed once run returns"
    );
}
