//! `workerd migrate` against the real local broker and ClickHouse.

use std::process::Command;
use std::time::Duration;

use shared::testkit::{eventually, services, TestSchema};

async fn tables(schema: &TestSchema) -> Vec<String> {
    schema
        .client
        .query("SELECT name FROM system.tables WHERE database = ? ORDER BY name")
        .bind(schema.database())
        .fetch_all::<String>()
        .await
        .expect("list tables")
}

async fn recorded(schema: &TestSchema) -> Vec<u32> {
    schema
        .client
        .query(&format!(
            "SELECT version FROM `{}`.schema_migrations ORDER BY version",
            schema.database()
        ))
        .fetch_all::<u32>()
        .await
        .expect("schema_migrations")
}

/// The Kafka engine streams each pass to the views attached when the pass
/// began. Its table must feed exactly one view, which every consuming view
/// sits behind: then creating that one view starts consumption with all of
/// them. (With the three views on the Kafka table, a message produced right
/// after a migration was consumed into `events_mv` alone, and an unparseable
/// one never reached `dead_letter`: CI's dead_letter test, about once in
/// fifteen runs.)
#[tokio::test]
async fn consumption_starts_with_every_view_attached() {
    let svc = services();
    let schema = TestSchema::create(&svc).await;
    let deps = shared::testkit::select_json(
        &schema.client,
        "SELECT name, arraySort(dependencies_table) AS feeds FROM system.tables \
         WHERE database = ? AND name IN ('events_queue', 'events_stream')",
        &[schema.database().to_string()],
    )
    .await;
    let feeds = |t: &str| -> Vec<String> {
        let row = deps
            .iter()
            .find(|r| r["name"] == t)
            .unwrap_or_else(|| panic!("no table {t}: {deps:?}"));
        serde_json::from_value(row["feeds"].clone()).expect("names")
    };
    assert_eq!(feeds("events_queue"), ["events_queue_mv"], "{deps:?}");
    assert_eq!(
        feeds("events_stream"),
        ["dead_letter_mv", "events_mv", "usage_daily_mv"],
        "{deps:?}"
    );
}

#[tokio::test]
async fn migrate_is_versioned_and_idempotent() {
    let svc = services();
    let schema = TestSchema::empty(&svc);
    let all: Vec<u32> = shared::store::schema::MIGRATIONS
        .iter()
        .map(|m| m.version)
        .collect();

    let first = workerd::migrate::run(&schema.config.kafka, &schema.config.clickhouse)
        .await
        .expect("first run");
    assert_eq!(first.applied, all);
    assert!(first.already.is_empty());
    let expected = vec![
        "api_keys",
        "archive_stage",
        "archives",
        "audit_log",
        "backfill_jobs",
        "compression_verify",
        "dead_letter",
        "dead_letter_mv",
        "enrich_geo_map",
        "enrich_ua_map",
        "events",
        "events_mv",
        "events_queue",
        "events_queue_mv",
        "events_stream",
        "internal_metrics",
        "job_runs",
        "leases",
        "notifications_log",
        "rate_usage",
        "rollups_daily",
        "rollups_hourly",
        "schema_migrations",
        "sessions",
        "tenant_usage",
        "tenants",
        "usage_daily",
        "usage_daily_mv",
    ];
    assert_eq!(tables(&schema).await, expected);
    assert_eq!(recorded(&schema).await, all);

    let second = workerd::migrate::run(&schema.config.kafka, &schema.config.clickhouse)
        .await
        .expect("second run");
    assert!(second.applied.is_empty(), "{second:?}");
    assert_eq!(second.already, all);
    assert_eq!(tables(&schema).await, expected);
    assert_eq!(recorded(&schema).await, all, "no duplicate records");
}

/// Migrations replace the Kafka engine table several times in one consumer
/// group. Each replaced consumer must leave the group, or the broker keeps it as
/// a member (a departed leader blocks everyone until its session expires and can
/// leave the group formed with no partitions for anyone): then events wait on
/// the broker. Four databases migrated at once all consume within 20 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn databases_migrated_at_once_all_consume_at_once() {
    let svc = services();
    let schemas = futures_join_all((0..4).map(|_| {
        let svc = svc.clone();
        tokio::spawn(async move { TestSchema::create(&svc).await })
    }))
    .await;
    for schema in &schemas {
        let db = schema.database().to_string();
        eventually(
            &format!("the Kafka consumer of {db} holding partitions"),
            Duration::from_secs(20),
            || async {
                let n: u64 = schema
                    .client
                    .query(
                        "SELECT max(length(assignments.partition_id)) FROM system.kafka_consumers \
                         WHERE database = ? AND table = 'events_queue'",
                    )
                    .bind(&db)
                    .fetch_one()
                    .await
                    .ok()?;
                (n > 0).then_some(())
            },
        )
        .await;
    }
}

async fn futures_join_all<T: Send + 'static>(
    tasks: impl Iterator<Item = tokio::task::JoinHandle<T>>,
) -> Vec<T> {
    let mut out = Vec::new();
    for t in tasks.collect::<Vec<_>>() {
        out.push(t.await.expect("task"));
    }
    out
}

#[tokio::test]
async fn the_binary_migrates_with_env_overrides() {
    let svc = services();
    let schema = TestSchema::empty(&svc);
    let c = &schema.config;
    let out = Command::new(env!("CARGO_BIN_EXE_workerd"))
        .arg("migrate")
        .env_remove("OVERWATCH_CONFIG")
        .env("OVERWATCH__KAFKA__BROKERS", &c.kafka.brokers)
        .env("OVERWATCH__KAFKA__TOPIC_PREFIX", &c.kafka.topic_prefix)
        .env("OVERWATCH__CLICKHOUSE__URL", &c.clickhouse.url)
        .env("OVERWATCH__CLICKHOUSE__DATABASE", &c.clickhouse.database)
        .env(
            "OVERWATCH__CLICKHOUSE__KAFKA_BROKERS",
            &c.clickhouse.kafka_brokers,
        )
        .env(
            "OVERWATCH__CLICKHOUSE__KAFKA_GROUP",
            &c.clickhouse.kafka_group,
        )
        .output()
        .expect("run workerd");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(tables(&schema).await.len(), 28);
    // The topics exist: metadata lists all six (both layouts).
    let topics = c.kafka.topics();
    let brokers = c.kafka.brokers.clone();
    let found = tokio::task::spawn_blocking(move || {
        use rdkafka::consumer::{BaseConsumer, Consumer};
        let consumer: BaseConsumer = rdkafka::ClientConfig::new()
            .set("bootstrap.servers", &brokers)
            .create()
            .expect("consumer");
        let md = consumer
            .fetch_metadata(None, std::time::Duration::from_secs(10))
            .expect("metadata");
        md.topics()
            .iter()
            .map(|t| t.name().to_string())
            .collect::<Vec<_>>()
    })
    .await
    .expect("metadata task");
    for t in topics {
        assert!(found.contains(&t), "{t} missing from {found:?}");
    }
}

#[test]
fn config_errors_exit_64_naming_the_key() {
    let out = Command::new(env!("CARGO_BIN_EXE_workerd"))
        .arg("migrate")
        .env_remove("OVERWATCH_CONFIG")
        .env("OVERWATCH__WORKERD__MIGRATE_ON_START", "maybe")
        .output()
        .expect("run workerd");
    assert_eq!(out.status.code(), Some(64));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("`workerd.migrate_on_start`"), "{stderr}");
}

/// An upgrade to the single topic: a deployment whose queue read only the
/// per-type topics (migrations up to 14, before `kafka.topic_layout`), and a
/// gateway already producing to the single topic before `workerd migrate`
/// ran. Migration 15 reads both layouts' topics: the events produced before
/// it ran reach `events` (a topic new to the consumer group is read from its
/// start), as do those still arriving on a per-type topic.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upgrade_reads_what_was_produced_to_the_single_topic_before_it() {
    use rdkafka::producer::{FutureProducer, FutureRecord};
    use shared::store::schema::{SchemaContext, MIGRATIONS};

    let svc = services();
    let schema = TestSchema::empty(&svc);
    let c = &schema.config;
    shared::kafka::ensure_topics(
        &c.kafka.brokers,
        &c.kafka.topics(),
        1,
        1,
        Duration::from_secs(10),
    )
    .await
    .expect("topics");
    // The deployment before the upgrade.
    let mut old = SchemaContext::new(&c.clickhouse, &c.kafka);
    old.topics.retain(|t| *t != c.kafka.single_topic());
    assert_eq!(old.topics.len(), 5);
    for sql in old.bootstrap() {
        schema
            .client
            .query(&sql)
            .execute()
            .await
            .expect("bootstrap");
    }
    for m in MIGRATIONS.iter().filter(|m| m.version <= 14) {
        for sql in old.render((m.statements)(&old)) {
            schema
                .client
                .query(&sql)
                .execute()
                .await
                .expect("old migration");
        }
        schema
            .client
            .query(&format!(
                "INSERT INTO `{}`.schema_migrations (version, name, applied_at) \
                 VALUES (?, ?, now64(3))",
                schema.database()
            ))
            .bind(m.version)
            .bind(m.name)
            .execute()
            .await
            .expect("record");
    }

    let producer: FutureProducer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", &c.kafka.brokers)
        .create()
        .expect("producer");
    let now = (time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000) as i64;
    let row = |id: uuid::Uuid, kind: &str| {
        format!(
            "{{\"id\":\"{id}\",\"tenant_id\":\"{t}\",\"session_id\":\"{t}\",\"type\":\"{kind}\",\
             \"timestamp_ms\":{now},\"received_at_ms\":{now},\"corrected_timestamp_ms\":{now}}}",
            t = uuid::Uuid::nil(),
        )
    };
    let produce = |topic: String, payload: String| {
        let producer = producer.clone();
        async move {
            producer
                .send(
                    FutureRecord::<(), _>::to(&topic).payload(&payload),
                    Duration::from_secs(10),
                )
                .await
                .map_err(|(e, _)| e)
                .expect("delivered");
        }
    };
    let early = uuid::Uuid::new_v4();
    produce(c.kafka.single_topic(), row(early, "pageview")).await;

    let report = workerd::migrate::run(&c.kafka, &c.clickhouse)
        .await
        .expect("upgrade");
    assert_eq!(report.applied, vec![15, 16]);
    let late = uuid::Uuid::new_v4();
    produce(
        shared::event::EventType::Click.topic(&c.kafka.topic_prefix),
        row(late, "click"),
    )
    .await;

    let query = format!(
        "SELECT count() FROM `{}`.events WHERE id IN (?, ?)",
        schema.database()
    );
    eventually(
        "both events in `events`",
        Duration::from_secs(30),
        || async {
            let n: u64 = schema
                .client
                .query(&query)
                .bind(early)
                .bind(late)
                .fetch_one()
                .await
                .ok()?;
            (n == 2).then_some(())
        },
    )
    .await;
}
