//! A message ClickHouse cannot parse lands in `dead_letter` (topic, partition,
//! offset, raw message, error) and does not stop valid events behind it.

mod common;

use std::time::Duration;

use common::{event, TestGateway};
use rdkafka::producer::{FutureProducer, FutureRecord};
use shared::testkit::{eventually, select_json, services, TestSchema};
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
        Duration::from_secs(60),
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
    eventually(
        "the valid event behind it",
        Duration::from_secs(60),
        || async {
            let rows = select_json(
                &schema.client,
                &format!("SELECT toString(id) AS id FROM {db}.events FINAL"),
                &[],
            )
            .await;
            (rows.len() == 1 && rows[0]["id"] == e["id"]).then_some(())
        },
    )
    .await;
}
