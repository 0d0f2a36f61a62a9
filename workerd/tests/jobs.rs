//! Jobs against the real local ClickHouse, with a simulated clock (`--now`):
//! sessions split on a 31-minute gap and not on a 29-minute one, rollups count
//! exactly, and retention follows each tenant's tier (also after a tier change).

use std::process::Command;

use serde_json::Value;
use shared::domain::Tier;
use shared::testkit::{select_json, services, TestSchema};
use time::macros::datetime;
use time::OffsetDateTime;
use uuid::Uuid;
use workerd::admin::Admin;
use workerd::jobs::{self, JobContext, JobName, Window};

/// Inserts events directly: (tenant, session, minutes after `base`, type, path, bot).
async fn insert(
    schema: &TestSchema,
    rows: &[(Uuid, Uuid, i64, &str, &str, bool)],
    base: OffsetDateTime,
) {
    for (tenant, session, minutes, kind, path, bot) in rows {
        let ts = base + time::Duration::minutes(*minutes);
        schema
            .client
            .query(&format!(
                "INSERT INTO `{}`.events (id, tenant_id, session_id, type, timestamp, received_at, \
                 corrected_timestamp, path, is_bot) VALUES (generateUUIDv4(), toUUID(?), toUUID(?), ?, \
                 fromUnixTimestamp64Milli(toInt64(?), 'UTC'), now64(3), fromUnixTimestamp64Milli(toInt64(?), 'UTC'), ?, ?)",
                schema.database()
            ))
            .bind(tenant.to_string())
            .bind(session.to_string())
            .bind(*kind)
            .bind(jobs::ms(ts))
            .bind(jobs::ms(ts))
            .bind(*path)
            .bind(*bot)
            .execute()
            .await
            .expect("insert event");
    }
}

fn ctx(schema: &TestSchema) -> JobContext {
    JobContext::new(schema.config.clone())
}

async fn rows(schema: &TestSchema, sql: &str) -> Vec<Value> {
    select_json(
        &schema.client,
        &sql.replace("{db}", &format!("`{}`", schema.database())),
        &[],
    )
    .await
}

#[tokio::test]
async fn sessions_split_on_gaps_over_thirty_minutes() {
    let svc = services();
    let schema = TestSchema::create(&svc).await;
    let tenant = Uuid::new_v4();
    let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
    let base = datetime!(2024-03-01 10:00 UTC);
    insert(
        &schema,
        &[
            // a: 10 min, then a 31-minute gap: two sessions.
            (tenant, a, 0, "pageview", "/a1", false),
            (tenant, a, 10, "click", "", false),
            (tenant, a, 41, "pageview", "/a2", false),
            // b: 29-minute gaps only: one session.
            (tenant, b, 0, "pageview", "/b1", false),
            (tenant, b, 29, "pageview", "/b2", false),
            (tenant, b, 58, "pageview", "/b3", false),
        ],
        base,
    )
    .await;
    let window = Window {
        from: base,
        to: base + time::Duration::hours(2),
    };
    let report = jobs::run(
        &ctx(&schema),
        JobName::Sessions,
        base,
        Some(tenant),
        Some(window),
    )
    .await
    .expect("sessions job");
    assert_eq!(report.rows_affected, 3);
    // Running it again replaces rather than duplicates.
    jobs::run(
        &ctx(&schema),
        JobName::Sessions,
        base,
        Some(tenant),
        Some(window),
    )
    .await
    .expect("sessions job again");
    let got = rows(
        &schema,
        &format!(
            "SELECT toString(session_id) AS s, toUnixTimestamp64Milli(session_start) AS start, duration_ms, \
             events, pageviews, entry_path, exit_path, is_bounce FROM {{db}}.sessions FINAL \
             WHERE tenant_id = toUUID('{tenant}') ORDER BY s, start"
        ),
    )
    .await;
    let base_ms = jobs::ms(base);
    let mut expected = vec![
        serde_json::json!({"s": a.to_string(), "start": base_ms, "duration_ms": 600_000, "events": 2, "pageviews": 1, "entry_path": "/a1", "exit_path": "/a1", "is_bounce": true}),
        serde_json::json!({"s": a.to_string(), "start": base_ms + 41 * 60_000, "duration_ms": 0, "events": 1, "pageviews": 1, "entry_path": "/a2", "exit_path": "/a2", "is_bounce": true}),
        serde_json::json!({"s": b.to_string(), "start": base_ms, "duration_ms": 58 * 60_000, "events": 3, "pageviews": 3, "entry_path": "/b1", "exit_path": "/b3", "is_bounce": false}),
    ];
    expected.sort_by_key(|v| (v["s"].as_str().map(str::to_string), v["start"].as_i64()));
    assert_eq!(got, expected);
}

#[tokio::test]
async fn rollups_count_per_hour_and_day() {
    let svc = services();
    let schema = TestSchema::create(&svc).await;
    let tenant = Uuid::new_v4();
    let (s1, s2) = (Uuid::new_v4(), Uuid::new_v4());
    let base = datetime!(2024-03-01 10:00 UTC);
    insert(
        &schema,
        &[
            (tenant, s1, 5, "pageview", "/", false),
            (tenant, s2, 15, "pageview", "/", true),
            (tenant, s1, 20, "click", "", false),
            (tenant, s1, 70, "pageview", "/x", false),
        ],
        base,
    )
    .await;
    let window = Window {
        from: base,
        to: base + time::Duration::hours(2),
    };
    jobs::run(
        &ctx(&schema),
        JobName::Rollups,
        base,
        Some(tenant),
        Some(window),
    )
    .await
    .expect("rollups job");
    let hourly = rows(
        &schema,
        &format!(
            "SELECT type, toString(hour) AS hour, events, sessions, bots FROM {{db}}.rollups_hourly FINAL \
             WHERE tenant_id = toUUID('{tenant}') ORDER BY hour, type"
        ),
    )
    .await;
    assert_eq!(
        hourly,
        vec![
            serde_json::json!({"type": "click", "hour": "2024-03-01 10:00:00", "events": 1, "sessions": 1, "bots": 0}),
            serde_json::json!({"type": "pageview", "hour": "2024-03-01 10:00:00", "events": 2, "sessions": 2, "bots": 1}),
            serde_json::json!({"type": "pageview", "hour": "2024-03-01 11:00:00", "events": 1, "sessions": 1, "bots": 0}),
        ]
    );
    let daily = rows(
        &schema,
        &format!(
            "SELECT type, toString(day) AS day, events, sessions, bots FROM {{db}}.rollups_daily FINAL \
             WHERE tenant_id = toUUID('{tenant}') ORDER BY type"
        ),
    )
    .await;
    assert_eq!(
        daily,
        vec![
            serde_json::json!({"type": "click", "day": "2024-03-01", "events": 1, "sessions": 1, "bots": 0}),
            serde_json::json!({"type": "pageview", "day": "2024-03-01", "events": 3, "sessions": 2, "bots": 1}),
        ]
    );
}

#[tokio::test]
async fn retention_follows_tiers_and_tier_changes() {
    let svc = services();
    let mut schema = TestSchema::create(&svc).await;
    // Paid keeps 150 h here, so both tiers hold an event past their horizon.
    schema.config.tiers.paid.retention_hours = 150;
    let admin = Admin::new(
        schema.client.clone(),
        shared::store::Db::new(schema.database()),
        "jobs-test",
    );
    let free = admin
        .tenant_create(None, "free", Tier::Free, false)
        .await
        .expect("tenant");
    let paid = admin
        .tenant_create(None, "paid", Tier::Paid, false)
        .await
        .expect("tenant");
    let now = datetime!(2024-06-01 00:00 UTC);
    let s = Uuid::new_v4();
    // 200 h and 100 h old: past and inside both tiers' horizons (168 h, 150 h).
    let old = now - time::Duration::hours(200);
    let recent_offset = 100 * 60; // minutes after `old`
    insert(
        &schema,
        &[
            (free, s, 0, "pageview", "/", false),
            (free, s, recent_offset, "pageview", "/", false),
            (paid, s, 0, "pageview", "/", false),
            (paid, s, recent_offset, "pageview", "/", false),
        ],
        old,
    )
    .await;
    let count = |t: Uuid| {
        let schema = &schema;
        async move {
            schema
                .client
                .query(&format!(
                    "SELECT count() FROM `{}`.events WHERE tenant_id = toUUID(?)",
                    schema.database()
                ))
                .bind(t.to_string())
                .fetch_one::<u64>()
                .await
                .expect("count")
        }
    };

    // Through the binary, as an operator would run it. The free tenant's old
    // event has no verified archive (compression never ran): it is kept.
    let c = &schema.config;
    let out = Command::new(env!("CARGO_BIN_EXE_workerd"))
        .args(["job", "run", "retention", "--now", "2024-06-01T00:00:00Z"])
        .env_remove("OVERWATCH_CONFIG")
        .env("OVERWATCH__CLICKHOUSE__URL", &c.clickhouse.url)
        .env("OVERWATCH__CLICKHOUSE__DATABASE", &c.clickhouse.database)
        .env("OVERWATCH__TIERS__PAID__RETENTION_HOURS", "150")
        .output()
        .expect("run workerd");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("rows_affected 1"), "{stdout}");
    assert!(stdout.contains(r#""paid":1"#), "{stdout}");
    assert_eq!((count(free).await, count(paid).await), (2, 1));

    // An upgrade applies on the next run, and the deletion is counted in metrics.
    admin
        .tenant_set_tier(free, Tier::Paid)
        .await
        .expect("upgrade");
    workerd::telemetry::install_metrics();
    let deleted = || {
        shared::runtime::metrics::parse_exposition(&shared::runtime::metrics::render())
            .into_iter()
            .filter(|s| s.name == "overwatch_retention_deleted_rows_total")
            .filter(|s| {
                s.labels.contains(&("tier".into(), "paid".into()))
                    && s.labels.contains(&("table".into(), "events".into()))
            })
            .map(|s| s.value)
            .sum::<f64>()
    };
    let before = deleted();
    let r = jobs::run(&ctx(&schema), JobName::Retention, now, None, None)
        .await
        .expect("retention");
    assert_eq!(r.rows_affected, 1);
    assert_eq!((count(free).await, count(paid).await), (1, 1));
    assert_eq!(deleted() - before, 1.0, "one paid-tier event row counted");

    let audited = rows(
        &schema,
        "SELECT toString(tenant_id) AS t, JSONExtractUInt(detail, 'events') AS events, \
         JSONExtractString(detail, 'tier') AS tier FROM {db}.audit_log WHERE action = 'retention.delete' ORDER BY at",
    )
    .await;
    assert_eq!(
        audited,
        vec![
            serde_json::json!({"t": paid.to_string(), "events": 1, "tier": "paid"}),
            serde_json::json!({"t": free.to_string(), "events": 1, "tier": "paid"}),
        ]
    );
}
