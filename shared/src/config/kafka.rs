//! `[kafka]`: the brokers the gateway produces to, its producer's queue and
//! batching, and the topics' shape.

use serde::Deserialize;

use crate::event::EventType;

use super::check::{not_blank, positive};
use super::ConfigError;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaConfig {
    pub brokers: String,
    pub topic_prefix: String,
    /// Which topic the gateway produces each event type to.
    pub topic_layout: TopicLayout,
    pub client_id: String,
    pub compression: Compression,
    pub linger_ms: u64,
    pub batch_num_messages: u64,
    /// A request's events of one topic and key travel as newline-separated
    /// rows of one message up to this size (a larger event travels alone).
    pub max_message_bytes: usize,
    pub partition_key: PartitionKey,
    pub queue_max_messages: u64,
    /// Bound of the producer's in-memory queue (KiB of payload).
    pub queue_max_kbytes: u64,
    pub partitions: i32,
    pub replication_factor: i32,
}

/// Largest `kafka.max_message_bytes`: under the 1 MB message limit of
/// librdkafka (`message.max.bytes`) and of Kafka and Redpanda by default.
pub const MAX_MESSAGE_BYTES: usize = 900_000;

/// Where the gateway produces events. ClickHouse reads, and workerd creates,
/// the topics of both layouts ([`KafkaConfig::topics`]), so the layout can
/// change at any time: nothing already produced is left unread.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TopicLayout {
    /// Every event type in `<prefix>events`: small requests of different
    /// types share the producer's batches (librdkafka sends one produce
    /// request per partition, so fewer partitions mean fewer requests).
    Single,
    /// `<prefix>events_<type>`, one topic per type, for consumers that read
    /// one type.
    PerType,
}

/// How produced events are keyed (and so partitioned).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PartitionKey {
    Session,
    Tenant,
    RoundRobin,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    None,
    Gzip,
    Snappy,
    Lz4,
    Zstd,
}

impl Compression {
    /// The value of librdkafka's `compression.type`.
    pub fn as_str(self) -> &'static str {
        match self {
            Compression::None => "none",
            Compression::Gzip => "gzip",
            Compression::Snappy => "snappy",
            Compression::Lz4 => "lz4",
            Compression::Zstd => "zstd",
        }
    }
}

impl KafkaConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        not_blank("kafka.brokers", &self.brokers)?;
        not_blank("kafka.client_id", &self.client_id)?;
        if !self
            .topic_prefix
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
        {
            return Err(ConfigError::new(
                "kafka.topic_prefix",
                "may only contain ASCII letters, digits, '.', '_' and '-'",
            ));
        }
        positive("kafka.queue_max_messages", self.queue_max_messages)?;
        positive("kafka.queue_max_kbytes", self.queue_max_kbytes)?;
        positive("kafka.batch_num_messages", self.batch_num_messages)?;
        if !(1024..=MAX_MESSAGE_BYTES).contains(&self.max_message_bytes) {
            return Err(ConfigError::new(
                "kafka.max_message_bytes",
                format!(
                    "must be between 1024 and {MAX_MESSAGE_BYTES} (below librdkafka's and the \
                     broker's 1 MB message limit)"
                ),
            ));
        }
        if self.partitions < 1 {
            return Err(ConfigError::new("kafka.partitions", "must be at least 1"));
        }
        if self.replication_factor < 1 {
            return Err(ConfigError::new(
                "kafka.replication_factor",
                "must be at least 1",
            ));
        }
        Ok(())
    }

    /// The topic the gateway produces events of `kind` to.
    pub fn topic_for(&self, kind: EventType) -> String {
        match self.topic_layout {
            TopicLayout::Single => self.single_topic(),
            TopicLayout::PerType => kind.topic(&self.topic_prefix),
        }
    }

    /// The topic of [`TopicLayout::Single`].
    pub fn single_topic(&self) -> String {
        crate::event::single_topic(&self.topic_prefix)
    }

    /// Every events topic of both layouts ([`crate::event::all_topics`]).
    pub fn topics(&self) -> Vec<String> {
        crate::event::all_topics(&self.topic_prefix)
    }
}
