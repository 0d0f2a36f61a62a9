//! Acknowledged means durable after the gateway too: compression merges late
//! events into archived days, deletes only what it exported and verified, runs
//! once per tenant at a time across processes (a lease in ClickHouse), survives
//! being killed; aggregates over archived days are rebuilt from the archive;
//! a tenant's tier is the same whichever way it is defined; quotas count by
//! arrival. Each test failed on the code before it.
//!
//! The race tests stop a chosen ClickHouse statement with the local front's
//! test hold (`deploy/local/chserver.py`: a real server cannot be paused at a
//! statement), so the interleaving they check is exact, not left to timing.

use std::process::{Command, Output, Stdio};
use std::time::Duration;

use shared::config::StaticKey;
use shared::domain::Tier;
use shared::testkit::{eventually, select_json, services, TestSchema, CONSUMED_WITHIN};
use time::macros::datetime;
use time::OffsetDateTime;
use uuid::Uuid;
use workerd::admin::Admin;
use workerd::jobs::{self, JobContext, JobName, Window};

async fn insert(
    schema: &TestSchema,
    tenant: Uuid,
    session: Uuid,
    at: OffsetDateTime,
    kind: &str,
    id: Uuid,
) {
    schema
        .client
        .query(&format!(
            "INSERT INTO `{}`.events (id, tenant_id, session_id, type, timestamp, received_at, path) \
             VALUES (toUUID(?), toUUID(?), toUUID(?), ?, fromUnixTimestamp64Milli(toInt64(?), 'UTC'), now64(3), '/p')",
            schema.database()
        ))
        .bind(id.to_string())
        .bind(tenant.to_string())
        .bind(session.to_string())
        .bind(kind)
        .bind(jobs::ms(at))
        .execute()
        .await
        .expect("insert");
}

async fn strings(schema: &TestSchema, sql: &str) -> Vec<String> {
    let mut v: Vec<String> = select_json(&schema.client, sql, &[])
        .await
        .into_iter()
        .map(|r| {
            r["v"]
                .as_str()
                .map(str::to_string)
                .unwrap_or_else(|| r["v"].to_string())
        })
        .collect();
    v.sort();
    v
}

/// Ids of the tenant's events still raw (deduplicated).
async fn raw_ids(schema: &TestSchema, tenant: Uuid) -> Vec<String> {
    strings(
        schema,
        &format!(
            "SELECT toString(id) AS v FROM `{}`.events FINAL WHERE tenant_id = toUUID('{tenant}')",
            schema.database()
        ),
    )
    .await
}

/// Ids in the tenant's archive of `day` (local cold storage), as stored.
async fn archived_ids(schema: &TestSchema, tenant: Uuid, day: time::Date) -> Vec<String> {
    let path =
        jobs::compression::parquet_path(&shared::testkit::cold_dir(&schema.config), tenant, day);
    if !path.exists() {
        return Vec::new();
    }
    strings(
        schema,
        &format!(
            "SELECT toString(id) AS v FROM file('{}', 'Parquet')",
            path.display()
        ),
    )
    .await
}

fn ctx(schema: &TestSchema) -> JobContext {
    JobContext::new(schema.config.clone())
}

fn ids(n: usize) -> Vec<Uuid> {
    (0..n).map(|_| Uuid::new_v4()).collect()
}

fn sorted(v: &[Uuid]) -> Vec<String> {
    let mut s: Vec<String> = v.iter().map(Uuid::to_string).collect();
    s.sort();
    s
}

/// The local ClickHouse front's test hold on statements matching `pattern`.
struct Hold {
    base: String,
    id: String,
}

impl Hold {
    async fn on(schema: &TestSchema, pattern: &str) -> Hold {
        let base = schema.config.clickhouse.url.clone();
        let id = reqwest::Client::new()
            .post(format!("{base}/_overwatch/hold"))
            .body(pattern.to_string())
            .send()
            .await
            .expect("hold")
            .text()
            .await
            .expect("hold id")
            .trim()
            .to_string();
        Hold { base, id }
    }

    async fn wait_held(&self) {
        eventually("a statement held", Duration::from_secs(60), || async {
            let n = reqwest::get(format!("{}/_overwatch/held?id={}", self.base, self.id))
                .await
                .ok()?
                .text()
                .await
                .ok()?;
            (n.trim() != "0").then_some(())
        })
        .await;
    }

    async fn release(&self) {
        reqwest::Client::new()
            .post(format!("{}/_overwatch/release?id={}", self.base, self.id))
            .send()
            .await
            .expect("release");
    }
}

/// The raw-event DELETE of compression (old and new code alike) for `tenant`.
fn delete_pattern(schema: &TestSchema, tenant: Uuid) -> String {
    format!(
        r"DELETE FROM `?{}`?\.`?events`? WHERE tenant_id = toUUID\('{tenant}'\)",
        schema.database()
    )
}

fn workerd(schema: &TestSchema, args: &[&str]) -> Command {
    let mut cmd = shared::testkit::workerd_command(
        std::path::Path::new(env!("CARGO_BIN_EXE_workerd")),
        &schema.config,
    );
    cmd.args(args);
    cmd
}

fn ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "workerd failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).to_string()
}

const DAY: time::Date = time::macros::date!(2024 - 05 - 01);
const NOW: &str = "2024-05-03T12:00:00Z";
fn now() -> OffsetDateTime {
    datetime!(2024-05-03 12:00 UTC)
}

async fn free_tenant(schema: &TestSchema) -> Uuid {
    Admin::new(
        schema.client.clone(),
        shared::store::Db::new(schema.database()),
        "durability-test",
    )
    .tenant_create(None, "free", Tier::Free, false)
    .await
    .expect("tenant")
}

#[tokio::test]
async fn late_events_merge_into_the_archived_day() {
    let schema = TestSchema::create(&services()).await;
    let tenant = free_tenant(&schema).await;
    let session = Uuid::new_v4();
    let first = ids(3);
    let t0 = datetime!(2024-05-01 10:00 UTC);
    for (i, id) in first.iter().enumerate() {
        insert(
            &schema,
            tenant,
            session,
            t0 + time::Duration::minutes(i as i64),
            "pageview",
            *id,
        )
        .await;
    }
    jobs::run(&ctx(&schema), JobName::Compression, now(), None, None)
        .await
        .expect("compression");
    assert_eq!(archived_ids(&schema, tenant, DAY).await, sorted(&first));

    // Two late events for the archived day, and a client retry of an archived one.
    let late = ids(2);
    for (i, id) in late.iter().enumerate() {
        insert(
            &schema,
            tenant,
            session,
            t0 + time::Duration::minutes(10 + i as i64),
            "click",
            *id,
        )
        .await;
    }
    insert(&schema, tenant, session, t0, "pageview", first[0]).await;
    let r = jobs::run(&ctx(&schema), JobName::Compression, now(), None, None)
        .await
        .expect("second compression");
    assert_eq!(r.rows_affected, 3, "{:?}", r.detail);

    let all: Vec<Uuid> = first.iter().chain(&late).copied().collect();
    assert_eq!(
        archived_ids(&schema, tenant, DAY).await,
        sorted(&all),
        "old and late events, once each"
    );
    assert!(raw_ids(&schema, tenant).await.is_empty());
    let rollup = select_json(
        &schema.client,
        &format!(
            "SELECT type, events, sessions FROM `{}`.rollups_daily FINAL WHERE tenant_id = toUUID('{tenant}') \
             AND day = '2024-05-01' ORDER BY type",
            schema.database()
        ),
        &[],
    )
    .await;
    assert_eq!(
        rollup,
        vec![
            serde_json::json!({"type": "click", "events": 2, "sessions": 1}),
            serde_json::json!({"type": "pageview", "events": 3, "sessions": 1}),
        ]
    );
    let sessions = select_json(
        &schema.client,
        &format!(
            "SELECT events, pageviews FROM `{}`.sessions FINAL WHERE tenant_id = toUUID('{tenant}')",
            schema.database()
        ),
        &[],
    )
    .await;
    assert_eq!(
        sessions,
        vec![serde_json::json!({"events": 5, "pageviews": 3})]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_arriving_between_export_and_delete_are_kept() {
    let schema = TestSchema::create(&services()).await;
    let tenant = free_tenant(&schema).await;
    let session = Uuid::new_v4();
    let first = ids(3);
    let t0 = datetime!(2024-05-01 10:00 UTC);
    for id in &first {
        insert(&schema, tenant, session, t0, "pageview", *id).await;
    }
    let hold = Hold::on(&schema, &delete_pattern(&schema, tenant)).await;
    let job_ctx = ctx(&schema);
    let run =
        tokio::spawn(
            async move { jobs::run(&job_ctx, JobName::Compression, now(), None, None).await },
        );
    hold.wait_held().await;
    // Exported and verified, not yet deleted: a late event arrives.
    let late = Uuid::new_v4();
    insert(
        &schema,
        tenant,
        session,
        t0 + time::Duration::hours(1),
        "click",
        late,
    )
    .await;
    hold.release().await;
    run.await.expect("task").expect("compression");

    assert_eq!(
        raw_ids(&schema, tenant).await,
        vec![late.to_string()],
        "the late event was not exported, so it stays"
    );
    assert_eq!(archived_ids(&schema, tenant, DAY).await, sorted(&first));
    jobs::run(&ctx(&schema), JobName::Compression, now(), None, None)
        .await
        .expect("next run");
    let mut all = first.clone();
    all.push(late);
    assert_eq!(archived_ids(&schema, tenant, DAY).await, sorted(&all));
    assert!(raw_ids(&schema, tenant).await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_processes_never_work_on_one_tenant_at_once() {
    let schema = TestSchema::create(&services()).await;
    let tenant = free_tenant(&schema).await;
    let session = Uuid::new_v4();
    let events = ids(4);
    for (i, id) in events.iter().enumerate() {
        let at = datetime!(2024-05-01 10:00 UTC) + time::Duration::hours(i as i64);
        insert(&schema, tenant, session, at, "pageview", *id).await;
    }
    let hold = Hold::on(&schema, &delete_pattern(&schema, tenant)).await;
    let first = workerd(&schema, &["job", "run", "compression", "--now", NOW])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn the first workerd");
    hold.wait_held().await;
    // The second process (a cron run on another replica, or an operator) meets
    // the first one's lease and leaves the tenant alone.
    let second = workerd(&schema, &["job", "run", "compression", "--now", NOW])
        .output()
        .expect("second workerd");
    let out = ok(&second);
    assert!(out.contains(&format!(r#""busy":["{tenant}"]"#)), "{out}");
    assert!(out.contains("rows_affected 0"), "{out}");
    hold.release().await;
    let out = ok(&first.wait_with_output().expect("first workerd"));
    assert!(out.contains("rows_affected 4"), "{out}");
    assert_eq!(archived_ids(&schema, tenant, DAY).await, sorted(&events));
    assert!(raw_ids(&schema, tenant).await.is_empty());
    // The lease was given back: the next run is not busy.
    let out = ok(
        &workerd(&schema, &["job", "run", "compression", "--now", NOW])
            .output()
            .expect("third"),
    );
    assert!(out.contains(r#""busy":[]"#), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_run_loses_nothing_and_its_lease_expires() {
    let mut schema = TestSchema::create(&services()).await;
    schema.config.jobs.lease_ttl_secs = 6;
    let tenant = free_tenant(&schema).await;
    let session = Uuid::new_v4();
    let events = ids(5);
    for (i, id) in events.iter().enumerate() {
        let at = datetime!(2024-05-01 10:00 UTC) + time::Duration::minutes(i as i64);
        insert(&schema, tenant, session, at, "click", *id).await;
    }
    // Killed while exporting: raw events all still there, its lease held.
    let export = format!(
        r"FROM `?{}`?\.`?archive_stage`? WHERE tenant_id = toUUID\('{tenant}'\) .*LIMIT 1 BY",
        schema.database()
    );
    let hold = Hold::on(&schema, &export).await;
    let mut victim = workerd(&schema, &["job", "run", "compression", "--now", NOW])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn");
    hold.wait_held().await;
    victim.kill().expect("SIGKILL workerd");
    victim.wait().expect("reaped");
    hold.release().await;

    // Its lease is still valid: another run keeps off the tenant.
    let out = ok(
        &workerd(&schema, &["job", "run", "compression", "--now", NOW])
            .output()
            .expect("run"),
    );
    assert!(out.contains(&format!(r#""busy":["{tenant}"]"#)), "{out}");
    // Once the lease expired (ClickHouse's clock), the tenant is taken over.
    shared::testkit::leases_free(&schema.client, schema.database(), Duration::from_secs(30)).await;
    ok(
        &workerd(&schema, &["job", "run", "compression", "--now", NOW])
            .output()
            .expect("run"),
    );
    let archived = archived_ids(&schema, tenant, DAY).await;
    let raw = raw_ids(&schema, tenant).await;
    let mut everywhere: Vec<String> = archived.iter().chain(&raw).cloned().collect();
    everywhere.sort();
    assert_eq!(
        everywhere,
        sorted(&events),
        "every event once, in the archive or raw"
    );
    assert!(raw.is_empty());
}

#[tokio::test]
async fn aggregates_over_an_archived_day_are_rebuilt_from_the_archive() {
    let schema = TestSchema::create(&services()).await;
    let tenant = free_tenant(&schema).await;
    let session = Uuid::new_v4();
    let t0 = datetime!(2024-05-01 23:40 UTC);
    // One session across midnight: two events on the archived day, one after.
    for (m, kind) in [(0, "pageview"), (10, "click"), (30, "pageview")] {
        insert(
            &schema,
            tenant,
            session,
            t0 + time::Duration::minutes(m),
            kind,
            Uuid::new_v4(),
        )
        .await;
    }
    jobs::run(&ctx(&schema), JobName::Compression, now(), None, None)
        .await
        .expect("compression");
    let q = |table: &str, cols: &str| {
        format!(
            "SELECT {cols} FROM `{}`.{table} FINAL WHERE tenant_id = toUUID('{tenant}') ORDER BY {cols}",
            schema.database()
        )
    };
    let sessions = q(
        "sessions",
        "events, pageviews, toString(session_start) AS s",
    );
    let daily = format!(
        "SELECT type, events FROM `{}`.rollups_daily FINAL WHERE tenant_id = toUUID('{tenant}') \
         AND day = '2024-05-01' ORDER BY type",
        schema.database()
    );
    let before = (
        select_json(&schema.client, &sessions, &[]).await,
        select_json(&schema.client, &daily, &[]).await,
    );
    assert_eq!(
        before.0,
        vec![serde_json::json!({"events": 3, "pageviews": 2, "s": "2024-05-01 23:40:00.000"})]
    );

    // A backfill (and the periodic jobs) over the archived day and the next.
    let w = Window {
        from: datetime!(2024-05-01 00:00 UTC),
        to: datetime!(2024-05-03 00:00 UTC),
    };
    for job in [JobName::Sessions, JobName::Rollups] {
        let r = jobs::run(&ctx(&schema), job, now(), None, Some(w))
            .await
            .expect("recompute");
        assert_eq!(r.detail["busy"], serde_json::json!([]));
    }
    let after = (
        select_json(&schema.client, &sessions, &[]).await,
        select_json(&schema.client, &daily, &[]).await,
    );
    assert_eq!(
        after, before,
        "rebuilt from the archive, not from the empty raw day"
    );
}

#[tokio::test]
async fn a_tenant_defined_only_in_config_keeps_its_tier_in_workerd() {
    let mut schema = TestSchema::create(&services()).await;
    let paid = Uuid::new_v4();
    schema.config.auth.keys.push(StaticKey {
        tenant_id: paid,
        secret_sha256: "ab".repeat(32),
        tier: Tier::Paid,
        anonymize_ip: false,
    });
    let old = ids(2);
    for id in &old {
        insert(
            &schema,
            paid,
            Uuid::new_v4(),
            datetime!(2024-05-01 10:00 UTC),
            "pageview",
            *id,
        )
        .await;
    }
    let c = ctx(&schema);
    assert!(c
        .tenants()
        .await
        .expect("tenants")
        .contains(&(paid, Tier::Paid)));
    let r = jobs::run(&c, JobName::Compression, now(), None, None)
        .await
        .expect("compression");
    assert_eq!(
        r.rows_affected, 0,
        "a paid tenant is never compressed: {:?}",
        r.detail
    );
    assert_eq!(raw_ids(&schema, paid).await, sorted(&old));
    // A row in `tenants` wins over the configuration, as in the gateway.
    Admin::new(
        schema.client.clone(),
        shared::store::Db::new(schema.database()),
        "durability-test",
    )
    .tenant_create(Some(paid), "now free", Tier::Free, false)
    .await
    .expect("tenant row");
    assert!(ctx(&schema)
        .tenants()
        .await
        .expect("tenants")
        .contains(&(paid, Tier::Free)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quotas_count_events_by_the_month_they_arrived() {
    let mut schema = TestSchema::create(&services()).await;
    schema.config.tiers.free.monthly_event_quota = 3;
    let tenant = free_tenant(&schema).await;
    // Sent on 1 March, dated by the client in late February (an offline queue).
    let received = jobs::ms(datetime!(2024-03-01 10:00 UTC));
    let dated = jobs::ms(datetime!(2024-02-27 09:00 UTC));
    let topic = shared::event::EventType::Pageview.topic(&schema.config.kafka.topic_prefix);
    let producer: rdkafka::producer::FutureProducer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", &schema.config.kafka.brokers)
        .create()
        .expect("producer");
    for _ in 0..3 {
        let msg = serde_json::json!({
            "id": Uuid::new_v4().to_string(), "tenant_id": tenant.to_string(),
            "session_id": Uuid::new_v4().to_string(), "type": "pageview",
            "timestamp_ms": dated, "received_at_ms": received, "corrected_timestamp_ms": dated,
            "properties": "{}", "client_ip": "", "browser": "", "browser_version": "", "os": "",
            "os_version": "", "device": "", "country": "", "region": "", "city": "", "is_bot": false,
        })
        .to_string();
        producer
            .send(
                rdkafka::producer::FutureRecord::<(), _>::to(&topic).payload(&msg),
                Duration::from_secs(10),
            )
            .await
            .expect("produce");
    }
    let db = schema.database().to_string();
    // Both views of the consumed block have written (events, then usage).
    eventually("the events in ClickHouse", CONSUMED_WITHIN, || async {
        let rows = select_json(
            &schema.client,
            &format!(
                "SELECT (SELECT count() FROM `{db}`.events FINAL) AS n, \
                 (SELECT sum(events) FROM `{db}`.usage_daily) AS u"
            ),
            &[],
        )
        .await;
        (rows[0]["n"] == 3 && rows[0]["u"] == 3).then_some(())
    })
    .await;
    // Rollups exist for the client's day too: the quota must not follow them.
    let w = Window {
        from: datetime!(2024-02-27 00:00 UTC),
        to: datetime!(2024-02-28 00:00 UTC),
    };
    jobs::run(&ctx(&schema), JobName::Rollups, now(), None, Some(w))
        .await
        .expect("rollups");
    let march = jobs::run(
        &ctx(&schema),
        JobName::Quota,
        datetime!(2024-03-15 00:00 UTC),
        None,
        None,
    )
    .await
    .expect("quota in March");
    assert_eq!(
        march.detail["over_quota"],
        serde_json::json!([tenant.to_string()])
    );
    let february = jobs::run(
        &ctx(&schema),
        JobName::Quota,
        datetime!(2024-02-15 00:00 UTC),
        None,
        None,
    )
    .await
    .expect("quota in February");
    assert_eq!(february.detail["over_quota"], serde_json::json!([]));
}

#[tokio::test]
async fn old_history_is_imported_month_by_month_without_the_broker() {
    let schema = TestSchema::create(&services()).await;
    let tenant = free_tenant(&schema).await;
    let dir = std::env::temp_dir().join(format!("ow-import-{}", Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).expect("dir");
    // 150 months of history in one file (more partitions than one insert may
    // touch), plus one line twice (a re-export): stored once.
    let mut lines = Vec::new();
    let mut months = std::collections::BTreeSet::new();
    let start = datetime!(2012-01-15 12:00 UTC);
    for m in 0..150i64 {
        let at = start + time::Duration::days(m * 30);
        months.insert((at.year(), at.month() as u8));
        lines.push(
            serde_json::json!({
                "id": Uuid::new_v4().to_string(), "session_id": Uuid::new_v4().to_string(),
                "timestamp": at.format(&time::format_description::well_known::Rfc3339).expect("ts"),
                "type": "custom", "name": "legacy", "properties": {"source": "old system"},
            })
            .to_string(),
        );
    }
    lines.push(lines[0].clone());
    let good = dir.join("history.ndjson");
    std::fs::write(&good, lines.join("\n")).expect("write");
    let file = good.display().to_string();
    let tenant_s = tenant.to_string();
    let out = ok(
        &workerd(&schema, &["import", "--tenant", &tenant_s, "--file", &file])
            .output()
            .expect("import"),
    );
    assert!(out.contains("imported 151 events"), "{out}");
    let db = schema.database();
    let count = || async {
        select_json(
            &schema.client,
            &format!(
                "SELECT (SELECT count() FROM `{db}`.events FINAL WHERE tenant_id = toUUID('{tenant}')) AS n, \
                 (SELECT count() FROM `{db}`.usage_daily WHERE tenant_id = toUUID('{tenant}')) AS u, \
                 (SELECT uniqExact(toYYYYMM(timestamp)) FROM `{db}`.events WHERE tenant_id = toUUID('{tenant}')) AS months"
            ),
            &[],
        )
        .await
        .remove(0)
    };
    assert!(months.len() > 100, "more months than one insert may touch");
    assert_eq!(
        count().await,
        serde_json::json!({"n": 150, "u": 0, "months": months.len()}),
        "every event, in its month, and no quota usage"
    );
    // Importing again changes nothing (same ids, same client times).
    ok(
        &workerd(&schema, &["import", "--tenant", &tenant_s, "--file", &file])
            .output()
            .expect("again"),
    );
    assert_eq!(count().await["n"], 150);

    // A file with one bad line imports nothing and names the line.
    let bad = dir.join("bad.ndjson");
    std::fs::write(
        &bad,
        format!(
            "{}\n{{\"id\":\"nope\"}}\n",
            lines[1].replace("legacy", "other")
        ),
    )
    .expect("write");
    let out = workerd(
        &schema,
        &[
            "import",
            "--tenant",
            &tenant_s,
            "--file",
            &bad.display().to_string(),
        ],
    )
    .output()
    .expect("bad import");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("line 2") && err.contains("nothing was imported"),
        "{err}"
    );
    assert_eq!(count().await["n"], 150);
    let _ = std::fs::remove_dir_all(&dir);
}
