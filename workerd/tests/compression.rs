//! Free-tier compression against the real local ClickHouse: whole old days go to
//! rollups and a Parquet file (read back and compared with what was deleted),
//! other tiers and recent days stay, and a run after a half-finished one ends
//! with the right result and no double counting.

use shared::domain::Tier;
use shared::testkit::{select_json, services, TestSchema};
use time::macros::{date, datetime};
use uuid::Uuid;
use workerd::admin::Admin;
use workerd::jobs::{self, compression, JobContext, JobName};

async fn insert(schema: &TestSchema, tenant: Uuid, at: time::OffsetDateTime, kind: &str, id: Uuid) {
    schema
        .client
        .query(&format!(
            "INSERT INTO `{}`.events (id, tenant_id, session_id, type, timestamp, received_at, path) \
             VALUES (toUUID(?), toUUID(?), generateUUIDv4(), ?, fromUnixTimestamp64Milli(toInt64(?), 'UTC'), now64(3), '/p')",
            schema.database()
        ))
        .bind(id.to_string())
        .bind(tenant.to_string())
        .bind(kind)
        .bind(jobs::ms(at))
        .execute()
        .await
        .expect("insert");
}

async fn ids(schema: &TestSchema, sql: &str) -> Vec<String> {
    let mut v: Vec<String> = select_json(&schema.client, sql, &[])
        .await
        .into_iter()
        .map(|r| r["id"].as_str().expect("id").to_string())
        .collect();
    v.sort();
    v
}

fn admin(schema: &TestSchema) -> Admin {
    Admin::new(
        schema.client.clone(),
        shared::store::Db::new(schema.database()),
        "compression-test",
    )
}

#[tokio::test]
async fn old_free_tier_days_move_to_rollups_and_parquet() {
    let svc = services();
    let schema = TestSchema::create(&svc).await;
    let db = format!("`{}`", schema.database());
    let admin = admin(&schema);
    let free = admin
        .tenant_create(None, "free", Tier::Free, false)
        .await
        .expect("tenant");
    let paid = admin
        .tenant_create(None, "paid", Tier::Paid, false)
        .await
        .expect("tenant");
    let d1 = datetime!(2024-05-01 08:00 UTC);
    let d2 = datetime!(2024-05-02 20:00 UTC);
    let retried = Uuid::new_v4();
    for (i, kind) in ["pageview", "pageview", "click", "custom"]
        .iter()
        .enumerate()
    {
        insert(
            &schema,
            free,
            d1 + time::Duration::minutes(i as i64),
            kind,
            Uuid::new_v4(),
        )
        .await;
    }
    // A client retry: the same event twice; it must count once everywhere.
    insert(
        &schema,
        free,
        d1 + time::Duration::hours(1),
        "scroll",
        retried,
    )
    .await;
    insert(
        &schema,
        free,
        d1 + time::Duration::hours(1),
        "scroll",
        retried,
    )
    .await;
    insert(&schema, free, d2, "pageview", Uuid::new_v4()).await;
    insert(&schema, paid, d1, "pageview", Uuid::new_v4()).await;
    let day1_ids = ids(
        &schema,
        &format!("SELECT DISTINCT toString(id) AS id FROM {db}.events WHERE tenant_id = toUUID('{free}') AND toDate(timestamp) = '2024-05-01'"),
    )
    .await;
    assert_eq!(day1_ids.len(), 5);

    // A stale rollup and a broken file for day 1 (a disk fault, a hand edit).
    let file = compression::parquet_path(
        &shared::testkit::cold_dir(&schema.config),
        free,
        date!(2024 - 05 - 01),
    );
    std::fs::create_dir_all(file.parent().expect("dir")).expect("mkdir");
    std::fs::write(&file, b"PAR1 truncated").expect("stale file");
    schema
        .client
        .query(&format!(
            "INSERT INTO {db}.rollups_daily (tenant_id, type, day, events, sessions, bots, computed_at) \
             VALUES (toUUID(?), 'pageview', '2024-05-01', 999, 1, 0, now64(3) - INTERVAL 1 HOUR)"
        ))
        .bind(free.to_string())
        .execute()
        .await
        .expect("stale rollup");

    let ctx = JobContext::new(schema.config.clone());
    let now = datetime!(2024-05-03 12:00 UTC); // day 2 ended only 12 h ago
                                               // An archive that cannot be read back is never overwritten (it may hold
                                               // events that exist nowhere else): the run fails, naming it, and keeps raw.
    let err = jobs::run(&ctx, JobName::Compression, now, None, None)
        .await
        .expect_err("an unreadable archive stops the day");
    assert!(err.to_string().contains("cannot be read back"), "{err}");
    assert!(err.to_string().contains("date=2024-05-01"), "{err}");
    assert_eq!(
        ids(
            &schema,
            &format!("SELECT DISTINCT toString(id) AS id FROM {db}.events WHERE tenant_id = toUUID('{free}') AND toDate(timestamp) = '2024-05-01'"),
        )
        .await,
        day1_ids
    );
    // The operator moves the broken file aside; the next run archives the day.
    std::fs::remove_file(&file).expect("remove the broken file");
    let report = jobs::run(&ctx, JobName::Compression, now, None, None)
        .await
        .expect("compression");
    assert_eq!(
        report.rows_affected, 5,
        "5 events, one of them stored twice"
    );

    // Raw: day 1 of the free tenant gone; its day 2 and the paid tenant untouched.
    let left = select_json(
        &schema.client,
        &format!("SELECT toString(tenant_id) AS t, toString(toDate(timestamp)) AS d, count() AS n FROM {db}.events FINAL GROUP BY t, d ORDER BY t, d"),
        &[],
    )
    .await;
    let mut expected = vec![
        serde_json::json!({"t": free.to_string(), "d": "2024-05-02", "n": 1}),
        serde_json::json!({"t": paid.to_string(), "d": "2024-05-01", "n": 1}),
    ];
    expected.sort_by_key(|v| v["t"].as_str().map(str::to_string));
    assert_eq!(left, expected);

    // The file holds exactly the deleted events.
    let path = file.display().to_string();
    assert_eq!(
        ids(
            &schema,
            &format!("SELECT toString(id) AS id FROM file('{path}', 'Parquet')")
        )
        .await,
        day1_ids
    );
    // Rollups replaced the stale numbers with the true ones.
    let rollup = select_json(
        &schema.client,
        &format!("SELECT type, events FROM {db}.rollups_daily FINAL WHERE tenant_id = toUUID('{free}') AND day = '2024-05-01' ORDER BY type"),
        &[],
    )
    .await;
    assert_eq!(
        rollup,
        vec![
            serde_json::json!({"type": "click", "events": 1}),
            serde_json::json!({"type": "custom", "events": 1}),
            serde_json::json!({"type": "pageview", "events": 2}),
            serde_json::json!({"type": "scroll", "events": 1}),
        ]
    );

    // Running again changes nothing: no raw rows left for day 1, rollups kept.
    let again = jobs::run(&ctx, JobName::Compression, now, None, None)
        .await
        .expect("again");
    assert_eq!(again.rows_affected, 0);
    let after = select_json(
        &schema.client,
        &format!("SELECT type, events FROM {db}.rollups_daily FINAL WHERE tenant_id = toUUID('{free}') AND day = '2024-05-01' ORDER BY type"),
        &[],
    )
    .await;
    assert_eq!(after, rollup);
    let _ = std::fs::remove_dir_all(shared::testkit::cold_dir(&schema.config));
}

#[tokio::test]
async fn compressed_days_go_to_an_s3_compatible_bucket() {
    let svc = services();
    let schema = TestSchema::create(&svc).await;
    let db = format!("`{}`", schema.database());
    let s3 = shared::testkit::S3Server::start(&svc);
    let admin = admin(&schema);
    let free = admin
        .tenant_create(None, "free", Tier::Free, false)
        .await
        .expect("tenant");
    let d1 = datetime!(2024-05-01 08:00 UTC);
    for kind in ["pageview", "click", "custom"] {
        insert(&schema, free, d1, kind, Uuid::new_v4()).await;
    }
    let raw_ids = || async {
        ids(
            &schema,
            &format!(
                "SELECT toString(id) AS id FROM {db}.events WHERE tenant_id = toUUID('{free}')"
            ),
        )
        .await
    };
    let day1_ids = raw_ids().await;
    let now = datetime!(2024-05-03 12:00 UTC);

    // Wrong credentials: the upload fails, the job fails, nothing is deleted.
    let mut config = schema.config.clone();
    s3.configure(&mut config, "prod/overwatch");
    if let shared::config::ColdStorageConfig::S3(c) = &mut config.cold_storage {
        c.secret_access_key = "wrong".into();
    }
    let ctx = JobContext::new(config.clone());
    let err = jobs::run(&ctx, JobName::Compression, now, None, None)
        .await
        .expect_err("a refused upload fails the job");
    assert!(
        err.to_string().contains("s3://cold/prod/overwatch/tenant="),
        "{err}"
    );
    assert!(
        !err.to_string().contains(&s3.secret_key),
        "no secret in errors"
    );
    assert_eq!(
        raw_ids().await,
        day1_ids,
        "raw events kept when the upload fails"
    );

    // Right credentials: the day lands in the bucket, verified, then deleted.
    s3.configure(&mut config, "prod/overwatch");
    let ctx = JobContext::new(config);
    let report = jobs::run(&ctx, JobName::Compression, now, None, None)
        .await
        .expect("compression to S3");
    assert_eq!(report.rows_affected, 3);
    let key = format!("prod/overwatch/tenant={free}/date=2024-05-01/events.parquet");
    let object = s3.object_path(&key);
    assert!(object.is_file(), "{} not stored", object.display());
    assert_eq!(
        ids(
            &schema,
            &format!(
                "SELECT toString(id) AS id FROM file('{}', 'Parquet')",
                object.display()
            )
        )
        .await,
        day1_ids
    );
    assert!(
        !shared::testkit::cold_dir(&schema.config)
            .join(format!("tenant={free}"))
            .exists(),
        "nothing written to the local cold_dir"
    );
    let audit = select_json(
        &schema.client,
        &format!("SELECT detail FROM {db}.audit_log WHERE action = 'compression.day'"),
        &[],
    )
    .await;
    assert_eq!(audit.len(), 1, "{audit:?}");
    let detail: serde_json::Value =
        serde_json::from_str(audit[0]["detail"].as_str().expect("detail")).expect("json");
    assert_eq!(detail["file"], format!("s3://cold/{key}"));
    assert_eq!(raw_ids().await, Vec::<String>::new());
}
