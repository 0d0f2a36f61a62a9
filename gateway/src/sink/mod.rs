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
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{BaseRecord, Producer as _, PurgeConfig};
use rdkafka::util::Timeout;
use shared::config::{KafkaConfig, PartitionKey};
use shared::event::EventType;
use uuid::Uuid;

mod driver;

use driver::{Producer, Waiter};

/// One event ready for the broker: its topic's type, the session it is
/// keyed by, and the serialized `EventRow`.
#[derive(Debug)]
pub struct Record {
    pub kind: EventType,
    pub session: Uuid,
    pub payload: Vec<u8>,
}

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
    /// Each event type's topic, by index into `topics`.
    lanes: Lanes,
    partition_key: PartitionKey,
    max_message_bytes: usize,
    delivery_timeout: Duration,
    broker_up: Arc<AtomicBool>,
}

/// Each event type's topic (by [`EventType::index`]), as an index into the
/// sink's distinct topics.
pub type Lanes = [usize; EventType::ALL.len()];

/// The distinct topics `kafka` produces to, and each type's index among them.
pub fn lanes(kafka: &KafkaConfig) -> (Vec<String>, Lanes) {
    let mut topics: Vec<String> = Vec::new();
    let mut lanes = [0; EventType::ALL.len()];
    for kind in EventType::ALL {
        let t = kafka.topic_for(kind);
        lanes[kind.index()] = match topics.iter().position(|x| *x == t) {
            Some(i) => i,
            None => {
                topics.push(t);
                topics.len() - 1
            }
        };
    }
    (topics, lanes)
}

/// One message to produce: rows of one topic and key.
#[derive(Debug, PartialEq, Eq)]
pub struct Message {
    /// The topic, by index into the sink's topics ([`Lanes`]).
    pub topic: usize,
    /// The partition key (none: round robin).
    pub key: Option<[u8; 16]>,
    pub payload: Vec<u8>,
    pub rows: usize,
}

/// Packs `events` into messages: rows per (topic, key), each event's topic
/// given by `lanes`, in the request's order within each, up to `max_bytes` a
/// message (a larger row alone).
/// Events of one key keep their order across messages as well. Sizes are
/// planned first, so each message is allocated once at its final size; a
/// message of one row is that event's buffer (a one-event request copies nothing).
pub fn pack(
    events: Vec<Record>,
    tenant: Uuid,
    lanes: &Lanes,
    partition_key: PartitionKey,
    max_bytes: usize,
) -> Vec<Message> {
    let key_of = |e: &Record| match partition_key {
        PartitionKey::Session => Some(*e.session.as_bytes()),
        PartitionKey::Tenant => Some(*tenant.as_bytes()),
        PartitionKey::RoundRobin => None,
    };
    // Plan: which message each event goes to, and each message's size.
    // The message being filled for each (topic, key), by index into `out`.
    let mut open: std::collections::HashMap<(usize, Option<[u8; 16]>), usize> =
        std::collections::HashMap::new();
    let mut out: Vec<Message> = Vec::new();
    let mut bytes: Vec<usize> = Vec::new();
    let mut slot_of: Vec<usize> = Vec::with_capacity(events.len());
    for e in &events {
        let key = key_of(e);
        let topic = lanes[e.kind.index()];
        let len = e.payload.len();
        let slot = open
            .get(&(topic, key))
            .copied()
            .filter(|&i| bytes[i] + 1 + len <= max_bytes);
        let i = match slot {
            Some(i) => {
                bytes[i] += 1 + len;
                out[i].rows += 1;
                i
            }
            None => {
                open.insert((topic, key), out.len());
                bytes.push(len);
                out.push(Message {
                    topic,
                    key,
                    payload: Vec::new(),
                    rows: 1,
                });
                out.len() - 1
            }
        };
        slot_of.push(i);
    }
    // Fill, in the request's order.
    for (e, i) in events.into_iter().zip(slot_of) {
        let m = &mut out[i];
        if m.rows == 1 {
            m.payload = e.payload;
        } else {
            if m.payload.capacity() == 0 {
                m.payload.reserve_exact(bytes[i]);
            } else {
                m.payload.push(b'\n');
            }
            m.payload.extend_from_slice(&e.payload);
        }
    }
    out
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
        Ok(Sink {
            client_config,
            current: RwLock::new(Current {
                generation: 0,
                producer,
            }),
            topics,
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
    pub async fn send(&self, tenant: Uuid, events: Vec<Record>) -> Result<(), SinkError> {
        let (generation, producer) = self.producer();
        let result = self.send_with(&producer, tenant, events).await;
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
        events: Vec<Record>,
    ) -> Result<(), SinkError> {
        let started = std::time::Instant::now();
        let messages = pack(
            events,
            tenant,
            &self.lanes,
            self.partition_key,
            self.max_message_bytes,
        );
        if messages.is_empty() {
            return Ok(());
        }
        let (waiter, done) = Waiter::new(messages.len());
        // The request's trace travels with its messages (W3C `traceparent`).
        let trace = shared::runtime::telemetry::trace_context();
        let headers = (!trace.is_empty()).then(|| {
            trace
                .iter()
                .fold(OwnedHeaders::new_with_capacity(trace.len()), |h, (k, v)| {
                    h.insert(Header {
                        key: k,
                        value: Some(v.as_bytes()),
                    })
                })
        });
        for m in &messages {
            let record = BaseRecord::with_opaque_to(&self.topics[m.topic], Arc::clone(&waiter))
                .payload(&m.payload[..]);
            let record = match &headers {
                Some(h) => record.headers(h.clone()),
                None => record,
            };
            let record = match &m.key {
                Some(k) => record.key(&k[..]),
                None => record,
            };
            // Messages enqueued before a failure are still reported to the
            // waiter, which no one awaits any more.
            if let Err((err, _)) = producer.base().send(record) {
                return Err(SinkError::Enqueue(err));
            }
        }
        drop(waiter);
        // librdkafka holds its own copies now (bounded by kafka.queue_max_kbytes):
        // the request's payloads are freed before the wait for acknowledgements.
        drop(messages);
        // librdkafka's message.timeout.ms equals delivery_timeout; the extra margin
        // lets its own (more precise) error arrive first.
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

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(kind: EventType, session: Uuid, text: &str) -> Record {
        Record {
            kind,
            session,
            payload: text.as_bytes().to_vec(),
        }
    }

    /// One topic per type, and one for all.
    const PER_TYPE: Lanes = [0, 1, 2, 3, 4];
    const SINGLE: Lanes = [0; 5];

    fn rows(m: &Message) -> Vec<&str> {
        std::str::from_utf8(&m.payload)
            .expect("utf-8")
            .split('\n')
            .collect()
    }

    #[test]
    fn each_topic_and_key_gets_its_rows_in_order() {
        let (a, b, t) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
        let events = [
            rec(EventType::Click, a, "a1"),
            rec(EventType::Click, b, "b1"),
            rec(EventType::Pageview, a, "a2"),
            rec(EventType::Click, a, "a3"),
            rec(EventType::Click, b, "b2"),
        ];
        let again = || {
            events
                .iter()
                .map(|e| {
                    rec(
                        e.kind,
                        e.session,
                        std::str::from_utf8(&e.payload).expect("utf-8"),
                    )
                })
                .collect::<Vec<_>>()
        };
        let click = EventType::Click.index();
        let m = pack(again(), t, &PER_TYPE, PartitionKey::Session, 1024);
        assert_eq!(m.len(), 3);
        assert_eq!(
            (m[0].topic, m[0].key, rows(&m[0])),
            (click, Some(*a.as_bytes()), vec!["a1", "a3"])
        );
        assert_eq!(
            (m[1].key, rows(&m[1])),
            (Some(*b.as_bytes()), vec!["b1", "b2"])
        );
        assert_eq!(
            (m[2].topic, rows(&m[2])),
            (EventType::Pageview.index(), vec!["a2"])
        );
        assert_eq!(m.iter().map(|m| m.rows).sum::<usize>(), 5);
        // Each message was allocated once, at its final size.
        assert!(m.iter().all(|m| m.payload.capacity() == m.payload.len()));
        // Tenant keys and round robin: one message per topic.
        let m = pack(again(), t, &PER_TYPE, PartitionKey::Tenant, 1024);
        assert_eq!(m.len(), 2);
        assert_eq!(rows(&m[0]), vec!["a1", "b1", "a3", "b2"]);
        assert_eq!(m[0].key, Some(*t.as_bytes()));
        let m = pack(again(), t, &PER_TYPE, PartitionKey::RoundRobin, 1024);
        assert_eq!((m.len(), m[0].key), (2, None));
        // One topic for all types: a session's events of every type share
        // its messages, in the request's order.
        let m = pack(again(), t, &SINGLE, PartitionKey::Session, 1024);
        assert_eq!(m.len(), 2);
        assert_eq!(
            (m[0].topic, m[0].key, rows(&m[0])),
            (0, Some(*a.as_bytes()), vec!["a1", "a2", "a3"])
        );
        assert_eq!(rows(&m[1]), vec!["b1", "b2"]);
        let m = pack(again(), t, &SINGLE, PartitionKey::RoundRobin, 1024);
        assert_eq!((m.len(), rows(&m[0]).len()), (1, 5));
    }

    #[test]
    fn each_type_goes_to_its_layouts_topic() {
        let mut kafka = shared::config::Config::load_from(None, Vec::new())
            .expect("defaults")
            .kafka;
        kafka.topic_prefix = "p_".into();
        kafka.topic_layout = shared::config::TopicLayout::Single;
        assert_eq!(lanes(&kafka), (vec!["p_events".to_string()], SINGLE));
        kafka.topic_layout = shared::config::TopicLayout::PerType;
        let (topics, l) = lanes(&kafka);
        assert_eq!(l, PER_TYPE);
        for kind in EventType::ALL {
            assert_eq!(topics[l[kind.index()]], kind.topic("p_"));
        }
    }

    #[test]
    fn messages_stay_under_the_size_and_a_large_row_travels_alone() {
        let s = Uuid::new_v4();
        let row = "x".repeat(100);
        let mut events: Vec<Record> = (0..25).map(|_| rec(EventType::Click, s, &row)).collect();
        events.insert(10, rec(EventType::Click, s, &"y".repeat(5000)));
        let want: Vec<String> = events
            .iter()
            .map(|e| String::from_utf8(e.payload.clone()).expect("utf-8"))
            .collect();
        let m = pack(events, s, &PER_TYPE, PartitionKey::Session, 1024);
        assert!(m.iter().all(|m| m.payload.len() <= 1024 || m.rows == 1));
        assert_eq!(m.iter().map(|m| m.rows).sum::<usize>(), 26);
        // Order is kept across messages: concatenated, the rows are the input.
        let all: Vec<String> = m
            .iter()
            .flat_map(|m| rows(m).into_iter().map(str::to_string))
            .collect();
        assert_eq!(all, want);
        // 1024 bytes hold 10 rows of 100 and their separators.
        assert_eq!(m[0].rows, 10);
        assert_eq!(m[1].rows, 1, "the 5000-byte row alone");
    }
}
