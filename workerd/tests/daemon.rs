//! `workerd run` as a black box: it schedules jobs, reports them in /health, keeps
//! running (and backs off) while ClickHouse is unreachable, refuses a bad cron
//! expression naming the key, and stops cleanly on SIGTERM.

mod common;

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use shared::testkit::{eventually, free_port, services, TestSchema};

struct Daemon {
    child: Child,
    port: u16,
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn spawn(clickhouse_url: &str, database: &str, extra: &[(&str, &str)]) -> Daemon {
    let port = free_port();
    let child = common::run_sessions_every_second(clickhouse_url, database, port)
        .env("OVERWATCH__TELEMETRY__SNAPSHOT_INTERVAL_SECS", "1")
        .envs(extra.iter().copied())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn workerd");
    Daemon { child, port }
}

async fn health(d: &Daemon) -> Option<(u16, serde_json::Value)> {
    let r = reqwest::get(format!("http://127.0.0.1:{}/health", d.port))
        .await
        .ok()?;
    let status = r.status().as_u16();
    Some((status, r.json().await.ok()?))
}

#[tokio::test]
async fn runs_scheduled_jobs_and_stops_on_sigterm() {
    let svc = services();
    let schema = TestSchema::create(&svc).await;
    let mut d = spawn(&schema.config.clickhouse.url, schema.database(), &[]);
    let h = eventually(
        "two scheduled sessions runs",
        Duration::from_secs(30),
        || async {
            let (_, h) = health(&d).await?;
            (h["jobs"]["sessions"]["runs"].as_u64()? >= 2).then_some(h)
        },
    )
    .await;
    assert_eq!(h["jobs"]["sessions"]["last"]["status"], "ok");
    assert_eq!(h["jobs"]["sessions"]["failures"], 0);
    assert_eq!(
        h["jobs"]["retention"]["runs"], 0,
        "an empty cron is not scheduled"
    );
    assert_eq!(h["components"]["clickhouse"]["status"], "up");

    // /metrics counts the runs and passes promtool.
    let metrics = reqwest::get(format!("http://127.0.0.1:{}/metrics", d.port))
        .await
        .expect("scrape")
        .text()
        .await
        .expect("body");
    let samples = shared::runtime::metrics::parse_exposition(&metrics);
    let value = |name: &str, label: Option<(&str, &str)>| {
        samples
            .iter()
            .filter(|s| s.name == name)
            .filter(|s| {
                label.is_none_or(|(k, v)| s.labels.iter().any(|(lk, lv)| lk == k && lv == v))
            })
            .map(|s| s.value)
            .sum::<f64>()
    };
    assert!(value("overwatch_job_runs_total", Some(("job_name", "sessions"))) >= 2.0);
    assert!(
        value(
            "overwatch_job_duration_seconds_count",
            Some(("job_name", "sessions"))
        ) >= 2.0
    );
    assert_eq!(value("overwatch_clickhouse_up", None), 1.0);
    shared::testkit::promtool_check(&metrics);

    // The same numbers land in internal_metrics (snapshot every second here).
    let db = schema.database().to_string();
    let runs: f64 = eventually(
        "a workerd snapshot in internal_metrics",
        Duration::from_secs(30),
        || {
            let (client, db) = (schema.client.clone(), db.clone());
            async move {
                let v: f64 = client
                    .query(&format!(
                        "SELECT max(value) FROM `{db}`.internal_metrics WHERE source = 'workerd' \
                     AND name = 'overwatch_job_runs_total' AND labels['job_name'] = 'sessions' \
                     AND labels['outcome'] = 'success' AND labels['instance'] != ''"
                    ))
                    .fetch_one()
                    .await
                    .ok()?;
                (v >= 1.0).then_some(v)
            }
        },
    )
    .await;
    assert!(runs >= 1.0);

    let pid = d.child.id().to_string();
    assert!(Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .expect("kill")
        .success());
    let status = eventually("workerd to exit", Duration::from_secs(20), || {
        let s = d.child.try_wait().ok().flatten();
        async move { s }
    })
    .await;
    assert!(status.success(), "{status}");
}

#[tokio::test]
async fn keeps_running_and_backs_off_while_clickhouse_is_down() {
    let nowhere = format!("http://127.0.0.1:{}", free_port());
    let d = spawn(
        &nowhere,
        "overwatch",
        &[
            ("OVERWATCH__JOBS__BACKOFF_BASE_MS", "3000"),
            ("OVERWATCH__JOBS__BACKOFF_MAX_MS", "3000"),
        ],
    );
    let h = eventually(
        "a failed run in /health",
        Duration::from_secs(30),
        || async {
            let (status, h) = health(&d).await?;
            (h["jobs"]["sessions"]["failures"].as_u64()? >= 1).then_some((status, h))
        },
    )
    .await;
    assert_eq!(h.0, 503, "not ready without ClickHouse");
    assert_eq!(h.1["jobs"]["sessions"]["last"]["status"], "failed");
    // Every second a tick comes, but the 3 s backoff skips them.
    let later = eventually(
        "ticks skipped by the backoff",
        Duration::from_secs(30),
        || async {
            let (_, h) = health(&d).await?;
            (h["jobs"]["sessions"]["skipped"].as_u64()? >= 1).then_some(h)
        },
    )
    .await;
    let runs = later["jobs"]["sessions"]["runs"].as_u64().expect("runs");
    let skipped = later["jobs"]["sessions"]["skipped"]
        .as_u64()
        .expect("skipped");
    assert!(
        skipped >= 1 && runs <= skipped + 1,
        "runs {runs}, skipped {skipped}"
    );
}

#[test]
fn a_bad_cron_expression_is_a_configuration_error() {
    let out = Command::new(env!("CARGO_BIN_EXE_workerd"))
        .arg("run")
        .env_remove("OVERWATCH_CONFIG")
        .env(
            "OVERWATCH__WORKERD__LISTEN",
            format!("127.0.0.1:{}", free_port()),
        )
        .env("OVERWATCH__WORKERD__MIGRATE_ON_START", "false")
        .env("OVERWATCH__JOBS__SESSIONS_CRON", "every tuesday-ish")
        .output()
        .expect("run workerd");
    assert_eq!(out.status.code(), Some(64));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("`jobs.sessions_cron`"), "{stderr}");
}

#[tokio::test]
async fn waits_for_clickhouse_then_migrates() {
    let svc = services();
    let port = free_port();
    let database = format!("ow_wait{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
    let d = spawn(
        &format!("http://127.0.0.1:{port}"),
        &database,
        &[
            ("OVERWATCH__WORKERD__MIGRATE_ON_START", "true"),
            ("OVERWATCH__KAFKA__BROKERS", &svc.kafka),
            ("OVERWATCH__KAFKA__TOPIC_PREFIX", &format!("{database}_")),
        ],
    );
    // ClickHouse is not there yet: alive, not ready, retrying.
    let (status, h) = eventually(
        "a failed migration attempt",
        Duration::from_secs(30),
        || async {
            let (status, h) = health(&d).await?;
            (h["components"]["migrations"]["attempts"].as_u64()? >= 1).then_some((status, h))
        },
    )
    .await;
    assert_eq!(status, 503);
    assert_eq!(h["components"]["migrations"]["status"], "pending");
    assert!(h["components"]["migrations"]["last_error"].is_string());
    let live = reqwest::get(format!("http://127.0.0.1:{}/health/live", d.port))
        .await
        .expect("live");
    assert_eq!(live.status(), 200);

    // ClickHouse comes up on that port: the retry migrates and workerd turns ready.
    let ch = shared::testkit::ClickHouse::start_at(&svc, port);
    eventually(
        "workerd to become ready",
        Duration::from_secs(60),
        || async {
            let (status, h) = health(&d).await?;
            (status == 200 && h["components"]["migrations"]["status"] == "done").then_some(())
        },
    )
    .await;
    let client = clickhouse::Client::default().with_url(ch.url());
    let tables: Vec<String> = client
        .query("SELECT name FROM system.tables WHERE database = ?")
        .bind(&database)
        .fetch_all()
        .await
        .expect("tables");
    assert!(tables.contains(&"events".to_string()), "{tables:?}");
}
