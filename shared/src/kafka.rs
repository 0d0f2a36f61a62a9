//! Broker helpers: the producer's librdkafka settings and idempotent topic creation.

use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
pub use rdkafka::error::KafkaError;
use rdkafka::types::RDKafkaErrorCode;

use crate::config::KafkaConfig;

/// librdkafka settings of the gateway's producer: every event is acknowledged by
/// all in-sync replicas, and the idempotent producer never duplicates or reorders
/// within a partition on internal retries. `message.timeout.ms` bounds how long a
/// message may wait for the broker, so a request never waits longer than
/// `delivery_timeout_ms`.
pub fn producer_config(cfg: &KafkaConfig, delivery_timeout_ms: u64) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", &cfg.brokers)
        .set("client.id", &cfg.client_id)
        .set("acks", "all")
        .set("enable.idempotence", "true")
        .set("compression.type", cfg.compression.as_str())
        .set("linger.ms", cfg.linger_ms.to_string())
        .set("batch.num.messages", cfg.batch_num_messages.to_string())
        .set("message.timeout.ms", delivery_timeout_ms.to_string())
        .set(
            "queue.buffering.max.messages",
            cfg.queue_max_messages.to_string(),
        )
        .set(
            "queue.buffering.max.kbytes",
            cfg.queue_max_kbytes.to_string(),
        )
        // Reconnect quickly after a broker restart.
        .set("reconnect.backoff.ms", "50")
        .set("reconnect.backoff.max.ms", "1000");
    c
}

/// Creates `topics` if they do not exist yet. Existing topics are left alone.
pub async fn ensure_topics(
    brokers: &str,
    topics: &[String],
    partitions: i32,
    replication: i32,
    timeout: Duration,
) -> Result<(), KafkaError> {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()?;
    let new: Vec<NewTopic<'_>> = topics
        .iter()
        .map(|t| NewTopic::new(t, partitions, TopicReplication::Fixed(replication)))
        .collect();
    let opts = AdminOptions::new()
        .operation_timeout(Some(timeout))
        .request_timeout(Some(timeout));
    for result in admin.create_topics(&new, &opts).await? {
        match result {
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((topic, code)) => {
                return Err(KafkaError::AdminOp(code)).inspect_err(|_| {
                    tracing::error!(%topic, ?code, "creating topic failed");
                })
            }
        }
    }
    Ok(())
}

/// Deletes `topics`; missing ones are ignored.
pub async fn delete_topics(
    brokers: &str,
    topics: &[String],
    timeout: Duration,
) -> Result<(), KafkaError> {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()?;
    let names: Vec<&str> = topics.iter().map(String::as_str).collect();
    let opts = AdminOptions::new()
        .operation_timeout(Some(timeout))
        .request_timeout(Some(timeout));
    for result in admin.delete_topics(&names, &opts).await? {
        match result {
            Ok(_) | Err((_, RDKafkaErrorCode::UnknownTopicOrPartition)) => {}
            Err((_, code)) => return Err(KafkaError::AdminOp(code)),
        }
    }
    Ok(())
}
