//! A message ClickHouse cannot parse lands in `dead_letter` (topic, partition,
//! offset, raw message, error) and does not stop valid events behind it.

mod common;

use std::time::Duration;

use common::{event, TestGateway};
use rdkafka::producer::{FutureProducer, FutureRecord};
use shared::testkit::{eventually, select_json, services, TestSchema, CONSUMED_WITHIN};
use uuid::Uuid;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unparseable_messages_go_to_dead_letter() {
    let svc = services();
    let schema = TestSchema::create(&svc).await;
    let topic = shared::event::EventType::Pageview.topic(&schema.config.kafka.topic_prefix);
    let producer: FutureProducer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", &schema.config.kafka.brokers)
        .create()
        .expect("producer");
    producer
        .send(
            FutureRecord::<(), _>::to(&topic).payload("not json {"),
            Duration::from_secs(10),
        )
        .await
        .expect("produce a broken message");

    let gw = TestGateway::start(schema.config.clone()).await;
    let e = event("pageview", 1, Uuid::new_v4());
    assert_eq!(
        gw.ingest(&serde_json::json!({"events": [e.clone()]}))
            .await
            .status(),
        200
    );

    let db = format!("`{}`", schema.database());
    let dead = eventually(
        "the broken message in dead_letter",
        CONSUMED_WITHIN,
        || async {
            let rows = select_json(
                &schema.client,
                &format!("SELECT topic, raw, error FROM {db}.dead_letter"),
                &[],
            )
            .await;
            (!rows.is_empty()).then_some(rows)
        },
    )
    .await;
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0]["topic"], topic);
    assert_eq!(dead[0]["raw"], "not json {");
    assert!(!dead[0]["error"].as_str().expect("error").is_empty());
    eventually("the valid event behind it", CONSUMED_WITHIN, || async {
        let rows = select_json(
            &schema.client,
            &format!("SELECT toString(id) AS id FROM {db}.events FINAL"),
            &[],
        )
        .await;
        (rows.len() == 1 && rows[0]["id"] == e["id"]).then_some(())
    })
    .await;
}

/// The gateway packs a request's rows of one topic and key into one message.
/// If one row of such a message cannot be parsed, none of its rows is lost
/// silently: each is in `events` or in the dead letter's raw message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_row_among_packed_rows_loses_none_of_them_silently() {
    let svc = services();
    let schema = TestSchema::create(&svc).await;
    let cfg = &schema.config;
    let topic = cfg.kafka.topic_for(shared::event::EventType::Pageview);
    // Real rows as the gateway writes them, read back from the topic.
    let gw = TestGateway::start(cfg.clone()).await;
    let s = Uuid::new_v4();
    let sent: Vec<_> = (0..3).map(|i| event("pageview", i, s)).collect();
    assert_eq!(
        gw.ingest(&serde_json::json!({ "events": sent }))
            .await
            .status(),
        200
    );
    let consumer = common::consumer_from_start(cfg, &[&topic]);
    let (_, rows) = common::next_rows(&consumer).await;
    assert_eq!(rows.len(), 3, "one message, three rows");
    // The same rows under new ids, with a broken row in the middle.
    let ids: Vec<String> = (0..3).map(|_| Uuid::new_v4().to_string()).collect();
    let mut lines: Vec<String> = rows
        .iter()
        .zip(&ids)
        .map(|(r, id)| {
            let mut r = r.clone();
            r["id"] = id.clone().into();
            r.to_string()
        })
        .collect();
    lines.insert(1, "not json {".to_string());
    let packed = lines.join("\n");
    let producer: FutureProducer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", &cfg.kafka.brokers)
        .create()
        .expect("producer");
    producer
        .send(
            FutureRecord::<(), _>::to(&topic).payload(&packed),
            Duration::from_secs(10),
        )
        .await
        .expect("produce");
    let db = format!("`{}`", schema.database());
    let (stored, dead) = eventually(
        "every row of the packed message accounted for",
        CONSUMED_WITHIN,
        || async {
            let stored: Vec<String> = select_json(
                &schema.client,
                &format!("SELECT toString(id) AS id FROM {db}.events FINAL"),
                &[],
            )
            .await
            .iter()
            .filter_map(|r| r["id"].as_str().map(str::to_string))
            .collect();
            let dead: Vec<String> = select_json(
                &schema.client,
                &format!("SELECT raw FROM {db}.dead_letter"),
                &[],
            )
            .await
            .iter()
            .filter_map(|r| r["raw"].as_str().map(str::to_string))
            .collect();
            let accounted = ids
                .iter()
                .all(|id| stored.contains(id) || dead.iter().any(|raw| raw.contains(id.as_str())));
            (accounted && !dead.is_empty()).then_some((stored, dead))
        },
    )
    .await;
    eprintln!("stored {stored:?}\ndead {dead:?}");
}
