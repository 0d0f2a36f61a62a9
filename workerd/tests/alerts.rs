//! The `alerts` job measures dead letters and the consumer lag of ClickHouse's
//! group on the real broker, raises alerts past the thresholds, and exports
//! both as Prometheus gauges (what the alert rules and dashboard read).

use std::time::Duration;

use rdkafka::producer::{FutureProducer, FutureRecord};
use shared::testkit::{services, TestSchema};
use workerd::jobs::{self, JobContext, JobName};
use workerd::notify::{Alert, Rule};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_and_consumer_lag_raise_alerts() {
    workerd::telemetry::install_metrics();
    let svc = services();
    let schema = TestSchema::create(&svc).await;
    let mut config = schema.config.clone();
    // A group no consumer reads: everything produced is lag.
    config.clickhouse.kafka_group = format!("nobody-{}", uuid::Uuid::new_v4());
    config.notifications.consumer_lag_threshold = 3;
    config.notifications.dead_letter_threshold = 2;
    let ctx = JobContext::new(config.clone());
    let now = time::OffsetDateTime::now_utc();

    let quiet = jobs::run(&ctx, JobName::Alerts, now, None, None)
        .await
        .expect("alerts");
    assert_eq!(
        (
            quiet.detail["dead_letters"].as_u64(),
            quiet.detail["consumer_lag"].as_u64()
        ),
        (Some(0), Some(0))
    );
    assert!(quiet.alerts.is_empty(), "{:?}", quiet.alerts);

    let producer: FutureProducer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", &config.kafka.brokers)
        .create()
        .expect("producer");
    let topic = shared::event::EventType::Click.topic(&config.kafka.topic_prefix);
    for i in 0..3 {
        producer
            .send(
                FutureRecord::<(), _>::to(&topic).payload(&format!("m{i}")),
                Duration::from_secs(10),
            )
            .await
            .expect("produce");
    }
    for _ in 0..2 {
        schema
            .client
            .query(&format!(
                "INSERT INTO `{}`.dead_letter (received_at, topic, partition, offset, raw, error) \
                 VALUES (now64(3), 't', 0, 0, 'x', 'broken')",
                schema.database()
            ))
            .execute()
            .await
            .expect("dead letter");
    }
    let loud = jobs::run(
        &ctx,
        JobName::Alerts,
        time::OffsetDateTime::now_utc(),
        None,
        None,
    )
    .await
    .expect("alerts");
    assert_eq!(loud.detail["consumer_lag"], 3);
    assert_eq!(loud.detail["dead_letters"], 2);
    let rules: Vec<Rule> = loud.alerts.iter().map(|a| a.rule()).collect();
    assert_eq!(rules, [Rule::DeadLetterGrowth, Rule::ConsumerLag]);
    assert!(loud.alerts.contains(&Alert::ConsumerLag {
        lag: 3,
        threshold: 3
    }));
    let exposition = shared::runtime::metrics::render();
    let gauge = |name: &str| {
        shared::runtime::metrics::parse_exposition(&exposition)
            .into_iter()
            .find(|s| s.name == name)
            .map(|s| s.value)
            .unwrap_or_else(|| panic!("{name} not exported:\n{exposition}"))
    };
    assert_eq!(gauge(workerd::telemetry::CONSUMER_LAG), 3.0);
    assert_eq!(gauge(workerd::telemetry::DEAD_LETTERS_RECENT), 2.0);
    let measured = gauge(workerd::telemetry::PIPELINE_MEASURED);
    let now = time::OffsetDateTime::now_utc().unix_timestamp() as f64;
    assert!(
        (now - measured).abs() < 120.0,
        "measured at {measured}, now {now}"
    );
    shared::testkit::promtool_check(&exposition);
}
