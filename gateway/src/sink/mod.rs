//! The broker sink: produces a request's events and waits for every delivery report.
//!
//! Each event type goes to its topic of `kafka.topic_layout` (by default one
//! topic for all). A request's events of one topic and partition key go as one
//! message of newline-separated JSON rows (in the request's order, up to
//! `kafka.max_message_bytes`), which ClickHouse's Kafka engine reads row by
//! row: per-session order and partitioning are as with one message per event,
//! at a fraction of the producer's and the broker's cost per event.
//!
//! A request is acknowledged only when the broker acknowledged all of its events
//! (`acks=all`, idempotent producer). If any delivery fails, or the reports do not
//! all arrive within `gateway.delivery_timeout_ms`, the request fails with 503 and
//! the client retries; duplicates from such retries collapse in ClickHouse.
//!
//! After a failed delivery the producer is replaced by a fresh one (new producer
//! id) and the old one's queue is purged. An idempotent producer that lived
//! through an outage otherwise resumes with its old producer id and a bumped
//! epoch, which a broker that lost that state (a restarted single node, the local
//! tansu broker) cannot follow; a fresh producer id is valid everywhere. The
//! purged messages belong to requests that already failed with 503.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use rdkafka::config::ClientConfig;
use rdkafka::error::KafkaError;
use rdkafka::producer::{Producer as _, PurgeConfig};
use rdkafka::util::Timeout;
use shared::config::{KafkaConfig, PartitionKey};
use shared::event::EventType;
use uuid::Uuid;

mod driver;
mod pack;

use driver::{Held, Producer, Waiter};
pub use pack::{lanes, pack, Lanes, Message, Payload, Rows};

#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    #[error("the producer queue is full or rejected the message: {0}")]
    Enqueue(KafkaError),
    #[error("delivery failed: {0}")]
    Delivery(KafkaError),
    #[error("no delivery report within {0:?}")]
    Timeout(Duration),
    #[error("the producer dropped a delivery report")]
    Canceled,
}

impl SinkError {
    /// The `kind` label of the producer error metric.
    pub fn kind(&self) -> &'static str {
        match self {
            SinkError::Enqueue(_) => "enqueue",
            SinkError::Delivery(_) => "delivery",
            SinkError::Timeout(_) => "timeout",
            SinkError::Canceled => "canceled",
        }
    }
}

struct Current {
    generation: u64,
    producer: Arc<Producer>,
}

pub struct Sink {
    client_config: ClientConfig,
    current: RwLock<Current>,
    /// The distinct topics produced to.
    topics: Vec<String>,
    /// The same, as librdkafka takes them.
    topics_c: Vec<std::ffi::CString>,
    /// Each event type's topic, by index into `topics`.
    lanes: Lanes,
    partition_key: PartitionKey,
    max_message_bytes: usize,
    delivery_timeout: Duration,
    broker_up: Arc<AtomicBool>,
}

impl Sink {
    /// A producer for `[kafka]`; a request fails when its deliveries take
    /// longer than `delivery_timeout_ms` (`gateway.delivery_timeout_ms`);
    /// librdkafka reports statistics every `statistics_interval_ms` (0: never).
    pub fn new(
        kafka: &KafkaConfig,
        delivery_timeout_ms: u64,
        statistics_interval_ms: u64,
    ) -> Result<Sink, KafkaError> {
        let mut client_config = shared::kafka::producer_config(kafka, delivery_timeout_ms);
        if statistics_interval_ms > 0 {
            client_config.set("statistics.interval.ms", statistics_interval_ms.to_string());
        }
        let producer = Producer::new(&client_config)?;
        let (topics, lanes) = lanes(kafka);
        let topics_c = topics
            .iter()
            .map(|t| std::ffi::CString::new(t.as_str()))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| {
                KafkaError::ClientCreation(format!("a topic name holds a NUL byte: {e}"))
            })?;
        Ok(Sink {
            client_config,
            current: RwLock::new(Current {
                generation: 0,
                producer,
            }),
            topics,
            topics_c,
            lanes,
            partition_key: kafka.partition_key,
            max_message_bytes: kafka.max_message_bytes,
            delivery_timeout: Duration::from_millis(delivery_timeout_ms),
            broker_up: Arc::new(AtomicBool::new(false)),
        })
    }

    /// The topic events of `kind` are produced to.
    pub fn topic(&self, kind: EventType) -> &str {
        &self.topics[self.lanes[kind.index()]]
    }

    fn producer(&self) -> (u64, Arc<Producer>) {
        let c = self.current.read().unwrap_or_else(|e| e.into_inner());
        (c.generation, Arc::clone(&c.producer))
    }

    /// Replaces the producer of `generation` (once, however many requests failed on it).
    fn replace(&self, generation: u64) {
        let mut c = self.current.write().unwrap_or_else(|e| e.into_inner());
        if c.generation != generation {
            return;
        }
        let fresh = match Producer::new(&self.client_config) {
            Ok(p) => p,
            Err(e) => {
                tracing::error!(error = %e, "cannot create a replacement producer");
                return;
            }
        };
        let old = std::mem::replace(&mut c.producer, fresh);
        c.generation += 1;
        let generation = c.generation;
        drop(c);
        // Its requests fail now; the last handle's drop destroys it off the runtime.
        old.base().purge(PurgeConfig::default().queue().inflight());
        drop(old);
        crate::telemetry::producer_replaced(generation);
    }

    /// Produces every event of `tenant` and returns once all are acknowledged.
    pub async fn send(&self, tenant: Uuid, rows: Rows) -> Result<(), SinkError> {
        let (generation, producer) = self.producer();
        let result = self.send_with(&producer, tenant, rows).await;
        drop(producer);
        match &result {
            Err(SinkError::Delivery(_) | SinkError::Timeout(_) | SinkError::Canceled) => {
                self.replace(generation)
            }
            Err(SinkError::Enqueue(_)) | Ok(()) => {}
        }
        result
    }

    async fn send_with(
        &self,
        producer: &Producer,
        tenant: Uuid,
        rows: Rows,
    ) -> Result<(), SinkError> {
        let started = std::time::Instant::now();
        let mut messages = pack(
            &rows,
            tenant,
            &self.lanes,
            self.partition_key,
            self.max_message_bytes,
        );
        if messages.is_empty() {
            return Ok(());
        }
        // What the messages point into stays with them until each is reported.
        let rows = rows.into_held(&mut messages);
        let (waiter, done) = Waiter::new(Held { rows, messages });
        // The request's trace travels with its messages (W3C `traceparent`).
        let trace = shared::runtime::telemetry::trace_context();
        for (i, m) in waiter.messages().iter().enumerate() {
            producer
                .send_held(&self.topics_c[m.topic], &waiter, i, &trace)
                .map_err(SinkError::Enqueue)?;
        }
        // The messages in flight keep the rows until they are reported.
        drop(waiter);
        let bound = self.delivery_timeout + Duration::from_millis(250);
        match tokio::time::timeout(bound, done).await {
            Ok(Ok(Ok(()))) => {
                crate::telemetry::delivered(started.elapsed());
                Ok(())
            }
            Ok(Ok(Err(e))) => Err(SinkError::Delivery(e)),
            Ok(Err(_)) => Err(SinkError::Canceled),
            Err(_) => Err(SinkError::Timeout(bound)),
        }
    }

    /// Whether the last metadata probe reached a broker.
    pub fn broker_up(&self) -> bool {
        self.broker_up.load(Ordering::Relaxed)
    }

    /// Probes the brokers every `interval` until the returned task is aborted.
    pub fn spawn_broker_probe(self: &Arc<Self>, interval: Duration) -> tokio::task::JoinHandle<()> {
        let sink = Arc::clone(self);
        tokio::spawn(async move {
            loop {
                let (_, probe) = sink.producer();
                let up = tokio::task::spawn_blocking(move || {
                    probe
                        .base()
                        .client()
                        .fetch_metadata(None, Timeout::After(Duration::from_secs(2)))
                        .map(|m| !m.brokers().is_empty())
                        .unwrap_or(false)
                })
                .await
                .unwrap_or(false);
                let was = sink.broker_up.swap(up, Ordering::Relaxed);
                if was != up {
                    if up {
                        tracing::info!("broker reachable");
                    } else {
                        tracing::warn!("broker unreachable; readiness reports 503");
                    }
                }
                tokio::time::sleep(interval).await;
            }
        })
    }

    /// Waits up to `timeout` for queued messages to be delivered (shutdown).
    pub fn flush(&self, timeout: Duration) -> Result<(), KafkaError> {
        self.producer().1.base().flush(Timeout::After(timeout))
    }

    pub fn in_flight(&self) -> i32 {
        self.producer().1.base().in_flight_count()
    }
}
