//! The local ClickHouse front (`deploy/local/chserver.py`) speaks enough of the
//! HTTP interface for the `clickhouse` crate: compressed binary inserts,
//! RowBinary selects, settings, concurrent clients and coded errors.

use clickhouse::Row;
use serde::{Deserialize, Serialize};
use shared::testkit::{services, TestSchema};

#[derive(Debug, Clone, PartialEq, Row, Serialize, Deserialize)]
struct Item {
    #[serde(with = "clickhouse::serde::uuid")]
    id: uuid::Uuid,
    name: String,
    n: u64,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_insert_round_trips_rows() {
    let svc = services();
    let schema = TestSchema::empty(&svc);
    let db = schema.database().to_string();
    let client = &schema.client;
    client
        .query(&format!("CREATE DATABASE `{db}`"))
        .execute()
        .await
        .expect("create database");
    client
        .query(&format!(
            "CREATE TABLE `{db}`.items (id UUID, name String, n UInt64) ENGINE = MergeTree ORDER BY id"
        ))
        .execute()
        .await
        .expect("create table");

    // Binary data that looks like SQL to a lexer (quotes, semicolons, NUL bytes)
    // must arrive intact: chdb's statement splitter once cut such inserts short.
    let tricky = [
        "it's; DROP TABLE x; --",
        "\"quoted\" `tick` \\ back",
        "nul\0byte;",
        "élément ✓",
    ];
    let mut rows: Vec<Item> = (0..3000u64)
        .map(|n| Item {
            id: uuid::Uuid::new_v4(),
            name: format!("{} №{n}", tricky[n as usize % tricky.len()]),
            n,
        })
        .collect();
    for chunk in rows.chunks(1000) {
        // The `database` parameter selects the database for the unqualified name.
        let mut insert = client
            .clone()
            .with_database(db.clone())
            .insert::<Item>("items")
            .await
            .expect("insert");
        for r in chunk {
            insert.write(r).await.expect("write row");
        }
        insert.end().await.expect("end insert");
    }

    let mut got = client
        .query(&format!("SELECT ?fields FROM `{db}`.items"))
        .fetch_all::<Item>()
        .await
        .expect("select");
    rows.sort_by_key(|r| r.id);
    got.sort_by_key(|r| r.id);
    assert_eq!(got, rows);

    // Parameters and per-query settings.
    let (count, total): (u64, u64) = client
        .query(&format!(
            "SELECT count(), sum(n) FROM `{db}`.items WHERE n >= ?"
        ))
        .bind(1500u64)
        .with_setting("max_threads", "1")
        .fetch_one()
        .await
        .expect("aggregate");
    assert_eq!((count, total), (1500, (1500..3000).sum::<u64>()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_clients_get_their_own_answers() {
    let svc = services();
    let client = clickhouse::Client::default().with_url(svc.clickhouse.clone());
    let mut tasks = Vec::new();
    for t in 0..8u64 {
        let c = client.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..25u64 {
                let v: u64 = c
                    .query("SELECT ? * 1000 + ?")
                    .bind(t)
                    .bind(i)
                    .fetch_one()
                    .await
                    .expect("query");
                assert_eq!(v, t * 1000 + i);
            }
        }));
    }
    for t in tasks {
        t.await.expect("task");
    }
}

#[tokio::test]
async fn errors_are_http_500_with_the_exception_code() {
    let svc = services();
    let resp = reqwest::Client::new()
        .post(format!("{}/", svc.clickhouse))
        .body("SELECT no_such_column")
        .send()
        .await
        .expect("request");
    assert_eq!(resp.status(), 500);
    assert_eq!(resp.headers()["x-clickhouse-exception-code"], "47");
    let text = resp.text().await.expect("body");
    assert!(text.contains("no_such_column"), "{text}");

    let ping = reqwest::get(format!("{}/ping", svc.clickhouse))
        .await
        .expect("ping");
    assert_eq!(ping.text().await.expect("body"), "Ok.\n");

    let client = clickhouse::Client::default().with_url(svc.clickhouse.clone());
    let err = client
        .query("SELECT * FROM system.no_such_table")
        .execute()
        .await
        .expect_err("unknown table");
    assert!(err.to_string().contains("no_such_table"), "{err}");
}

/// chdb cannot start while a Kafka engine table is attached; the front parks such
/// tables and re-attaches them, so a restart keeps the table and its pipeline.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_keeps_kafka_tables_working() {
    let svc = services();
    let mut ch = shared::testkit::ClickHouse::start(&svc);
    let mut cfg = shared::testkit::config(&svc);
    cfg.clickhouse.url = ch.url();
    shared::testkit::create_topics(&cfg, 1).await;
    let client = shared::store::client(&cfg.clickhouse);
    let ctx = shared::store::schema::SchemaContext::new(&cfg.clickhouse, &cfg.kafka);
    shared::store::schema::migrate(&client, &ctx)
        .await
        .expect("migrate");

    ch.kill();
    ch.restart();

    let db = cfg.clickhouse.database.clone();
    let engines: Vec<(String, String)> = client
        .query("SELECT name, engine FROM system.tables WHERE database = ? ORDER BY name")
        .bind(&db)
        .fetch_all()
        .await
        .expect("tables after restart");
    assert!(
        engines.contains(&("events_queue".to_string(), "Kafka".to_string())),
        "{engines:?}"
    );
    let report = shared::store::schema::migrate(&client, &ctx)
        .await
        .expect("migrate again");
    assert!(report.applied.is_empty(), "{report:?}");
}
