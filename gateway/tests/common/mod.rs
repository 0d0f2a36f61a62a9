//! Starts the gateway in-process on port 0 against the real local services.
#![allow(dead_code)]

pub mod process;
pub mod raw;
pub mod sdk;

use std::net::SocketAddr;
use std::sync::Arc;

use shared::config::{Config, StaticKey};
use tokio::sync::oneshot;
use uuid::Uuid;

pub const SECRET: &str = "test-secret-0123456789";

pub struct TestGateway {
    pub addr: SocketAddr,
    /// The operations listener (`/metrics`, detailed `/health`).
    pub ops_addr: SocketAddr,
    pub tenant: Uuid,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<std::io::Result<()>>>,
}

impl TestGateway {
    /// Starts a gateway with `config`, adding an API key for a fresh tenant.
    pub async fn start(config: Config) -> TestGateway {
        Self::start_with(config, false).await
    }

    /// As [`TestGateway::start`]; the tenant's IPs are anonymised when `anonymize_ip`.
    pub async fn start_with(mut config: Config, anonymize_ip: bool) -> TestGateway {
        let tenant = Uuid::new_v4();
        config.auth.keys.push(StaticKey {
            tenant_id: tenant,
            secret_sha256: shared::credential::hash_secret(SECRET),
            tier: Default::default(),
            anonymize_ip,
        });
        config.gateway.listen = "127.0.0.1:0".parse().expect("addr");
        config.gateway.broker_check_interval_ms = 200;
        let listener = tokio::net::TcpListener::bind(config.gateway.listen)
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let ops = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind operations");
        let ops_addr = ops.local_addr().expect("addr");
        config.gateway.operations_listen = ops_addr;
        let app = Arc::new(gateway::App::new(config).expect("app"));
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(gateway::serve(listener, ops, app, async move {
            let _ = rx.await;
        }));
        TestGateway {
            addr,
            ops_addr,
            tenant,
            stop: Some(tx),
            task: Some(task),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// A URL on the operations listener.
    pub fn ops_url(&self, path: &str) -> String {
        format!("http://{}{}", self.ops_addr, path)
    }

    pub fn key(&self) -> String {
        format!("{}:{}", self.tenant, SECRET)
    }

    /// POSTs `body` to /ingest with this gateway's key.
    pub async fn ingest(&self, body: &serde_json::Value) -> reqwest::Response {
        reqwest::Client::new()
            .post(self.url("/ingest"))
            .bearer_auth(self.key())
            .json(body)
            .send()
            .await
            .expect("request reaches the gateway")
    }

    /// Stops the server in order (drain, flush) and waits for it.
    pub async fn shutdown(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.task.take() {
            t.await.expect("server task").expect("server result");
        }
    }
}

impl Drop for TestGateway {
    fn drop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
    }
}

/// The start of the previous hour: test events are stamped from there on, well
/// inside the gateway's accepted window (`limits.max_event_age_hours`).
pub fn event_base() -> time::OffsetDateTime {
    let now = time::OffsetDateTime::now_utc();
    now.replace_minute(0)
        .and_then(|t| t.replace_second(0))
        .and_then(|t| t.replace_nanosecond(0))
        .unwrap_or(now)
        - time::Duration::hours(1)
}

/// RFC 3339 with milliseconds.
pub fn rfc3339(t: time::OffsetDateTime) -> String {
    t.format(&time::format_description::well_known::Rfc3339)
        .expect("formats")
}

/// A valid event of `kind` for `session`, with distinctive per-type fields.
pub fn event(kind: &str, n: usize, session: Uuid) -> serde_json::Value {
    let mut e = serde_json::json!({
        "id": Uuid::new_v4().to_string(),
        "session_id": session.to_string(),
        "timestamp": rfc3339(event_base() + time::Duration::milliseconds((n % 3600 * 1000 + n % 1000) as i64)),
        "type": kind,
        "user_agent": "Mozilla/5.0 (X11; Linux x86_64) Firefox/120.0",
        "screen": {"width": 1920, "height": 1080},
        "viewport": {"width": 1280, "height": 720 + (n % 100) as u32},
        "timezone": "Europe/Paris",
        "language": "fr-FR",
    });
    let extra = match kind {
        "pageview" => {
            serde_json::json!({"title": format!("Page {n} ✓"), "path": format!("/p/{n}"), "url": format!("https://example.com/p/{n}"), "referrer": "https://search.example/"})
        }
        "click" => {
            serde_json::json!({"element": "button", "selector": format!("#b{n}"), "text": "Buy \"now\"", "x": n as f64, "y": 2.5})
        }
        "scroll" => serde_json::json!({"depth": (n % 101) as f64}),
        "performance" => {
            serde_json::json!({"lcp": 1200.5 + n as f64, "fcp": 800.0, "cls": 0.05, "ttfb": 120.0, "inp": 40.0, "fid": 8.0, "dom_content_loaded": 900.0, "load_time": 1500.0})
        }
        _ => {
            serde_json::json!({"name": format!("signup_{n}"), "properties": {"plan": "pro", "seats": n, "tags": ["a", "b"]}})
        }
    };
    if let (Some(e), Some(x)) = (e.as_object_mut(), extra.as_object()) {
        for (k, v) in x {
            e.insert(k.clone(), v.clone());
        }
    }
    e
}

/// A consumer of `topics` on `cfg`'s broker from their start, in a fresh group.
pub fn consumer_from_start(
    cfg: &shared::Config,
    topics: &[&str],
) -> rdkafka::consumer::StreamConsumer {
    use rdkafka::consumer::Consumer as _;
    let consumer: rdkafka::consumer::StreamConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", &cfg.kafka.brokers)
        .set("group.id", format!("gateway-test-{}", Uuid::new_v4()))
        .set("auto.offset.reset", "earliest")
        .create()
        .expect("consumer");
    consumer.subscribe(topics).expect("subscribe");
    consumer
}

/// The next message `consumer` gets (within 30 s) and its first row's JSON
/// (the gateway sends a request's events of one topic and key as rows of one
/// message; see [`next_rows`]).
pub async fn next_message(
    consumer: &rdkafka::consumer::StreamConsumer,
) -> (rdkafka::message::BorrowedMessage<'_>, serde_json::Value) {
    let (m, mut rows) = next_rows(consumer).await;
    (m, rows.swap_remove(0))
}

/// The next message `consumer` gets (within 30 s) and every row it carries.
pub async fn next_rows(
    consumer: &rdkafka::consumer::StreamConsumer,
) -> (
    rdkafka::message::BorrowedMessage<'_>,
    Vec<serde_json::Value>,
) {
    use rdkafka::Message as _;
    let m = tokio::time::timeout(std::time::Duration::from_secs(30), consumer.recv())
        .await
        .expect("a message within 30 s")
        .expect("message");
    let rows = m
        .payload()
        .expect("payload")
        .split(|b| *b == b'\n')
        .map(|row| serde_json::from_slice(row).expect("one JSON row per line"))
        .collect();
    (m, rows)
}
