//! A backfill interrupted after its first chunk and resumed ends with exactly the
//! result of an uninterrupted one, sessions across chunk boundaries included.

use std::process::Command;

use shared::testkit::{select_json, services, TestSchema};
use time::macros::datetime;
use uuid::Uuid;

fn workerd(schema: &TestSchema, args: &[&str]) -> (String, String) {
    let c = &schema.config;
    let out = Command::new(env!("CARGO_BIN_EXE_workerd"))
        .args(args)
        .env_remove("OVERWATCH_CONFIG")
        .env("OVERWATCH__CLICKHOUSE__URL", &c.clickhouse.url)
        .env("OVERWATCH__CLICKHOUSE__DATABASE", &c.clickhouse.database)
        .output()
        .expect("run workerd");
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    );
    assert!(out.status.success(), "{args:?}: {stderr}");
    (stdout, stderr)
}

async fn results(schema: &TestSchema, tenant: Uuid) -> Vec<serde_json::Value> {
    let db = format!("`{}`", schema.database());
    let t = tenant.to_string();
    let mut all = select_json(
        &schema.client,
        &format!(
            "SELECT toString(session_id) AS s, toString(session_start) AS start, duration_ms, events, pageviews, \
             entry_path, exit_path FROM {db}.sessions FINAL WHERE tenant_id = toUUID(?) ORDER BY s, start"
        ),
        std::slice::from_ref(&t),
    )
    .await;
    all.extend(
        select_json(
            &schema.client,
            &format!(
                "SELECT type, toString(hour) AS hour, events, sessions FROM {db}.rollups_hourly FINAL \
                 WHERE tenant_id = toUUID(?) ORDER BY hour, type"
            ),
            std::slice::from_ref(&t),
        )
        .await,
    );
    all.extend(
        select_json(
            &schema.client,
            &format!(
                "SELECT type, toString(day) AS day, events, sessions FROM {db}.rollups_daily FINAL \
                 WHERE tenant_id = toUUID(?) ORDER BY day, type"
            ),
            &[t],
        )
        .await,
    );
    all
}

#[tokio::test]
async fn interrupted_backfill_resumes_to_the_same_result() {
    let svc = services();
    let schema = TestSchema::create(&svc).await;
    let tenant = Uuid::new_v4();
    let night = Uuid::new_v4();
    let day = Uuid::new_v4();
    let base = datetime!(2024-04-01 00:00 UTC);
    // (session, minutes after base, type, path): one session crosses midnight.
    let events = [
        (day, 9 * 60, "pageview", "/home"),
        (day, 9 * 60 + 5, "click", ""),
        (night, 23 * 60 + 50, "pageview", "/late"),
        (night, 24 * 60 + 10, "pageview", "/later"),
        (day, 24 * 60 + 12 * 60, "pageview", "/next-day"),
        (night, 2 * 24 * 60 + 60, "pageview", "/third"),
    ];
    for (session, minutes, kind, path) in events {
        let ts = base + time::Duration::minutes(minutes);
        schema
            .client
            .query(&format!(
                "INSERT INTO `{}`.events (id, tenant_id, session_id, type, timestamp, received_at, path) \
                 VALUES (generateUUIDv4(), toUUID(?), toUUID(?), ?, fromUnixTimestamp64Milli(toInt64(?), 'UTC'), now64(3), ?)",
                schema.database()
            ))
            .bind(tenant.to_string())
            .bind(session.to_string())
            .bind(kind)
            .bind(workerd::jobs::ms(ts))
            .bind(path)
            .execute()
            .await
            .expect("insert");
    }
    let t = tenant.to_string();
    let range = [
        "--from",
        "2024-04-01T00:00:00Z",
        "--to",
        "2024-04-04T00:00:00Z",
    ];

    // Interrupted after the first of three daily chunks, then resumed.
    let mut args = vec![
        "backfill",
        "start",
        "--tenant",
        &t,
        "--chunk-hours",
        "24",
        "--stop-after",
        "1",
    ];
    args.extend(range);
    let (out, err) = workerd(&schema, &args);
    assert!(out.contains("status running chunks 1/3"), "{out}");
    assert!(
        err.contains(&format!(
            "[{}{}] 1/3 chunks",
            "#".repeat(10),
            ".".repeat(20)
        )),
        "{err}"
    );
    let job_id = out
        .lines()
        .find_map(|l| {
            l.strip_prefix("backfill ")
                .and_then(|r| r.strip_suffix(" created"))
        })
        .expect("job id")
        .to_string();
    let (listed, _) = workerd(&schema, &["backfill", "list"]);
    assert!(
        listed.contains(&job_id) && listed.contains("running"),
        "{listed}"
    );
    let (out, _) = workerd(&schema, &["backfill", "resume", &job_id]);
    assert!(out.contains("status done chunks 3/3"), "{out}");
    let resumed = results(&schema, tenant).await;

    // The session across midnight is whole: started on day one, 20 minutes long.
    let crossing = resumed
        .iter()
        .find(|r| r["s"] == night.to_string() && r["start"] == "2024-04-01 23:50:00.000")
        .expect("the session across midnight");
    assert_eq!(
        (
            crossing["events"].as_u64(),
            crossing["duration_ms"].as_i64()
        ),
        (Some(2), Some(1_200_000))
    );
    assert_eq!(crossing["exit_path"], "/later");

    // Uninterrupted, in one chunk, from scratch: the same rows.
    for table in ["sessions", "rollups_hourly", "rollups_daily"] {
        schema
            .client
            .query(&format!(
                "DELETE FROM `{}`.{table} WHERE tenant_id = toUUID(?)",
                schema.database()
            ))
            .bind(&t)
            .execute()
            .await
            .expect("clear");
    }
    assert!(results(&schema, tenant).await.is_empty());
    let mut args = vec!["backfill", "start", "--tenant", &t, "--chunk-hours", "72"];
    args.extend(range);
    let (out, _) = workerd(&schema, &args);
    assert!(out.contains("status done chunks 1/1"), "{out}");
    assert_eq!(results(&schema, tenant).await, resumed);
}
