//! Producer settings against the real broker: every compression codec delivers,
//! the partition key follows `kafka.partition_key`, and each event type goes
//! to its topic of `kafka.topic_layout`.

mod common;

use common::{event, TestGateway};
use rdkafka::consumer::Consumer as _;
use rdkafka::Message;
use shared::config::{Compression, PartitionKey, TopicLayout};
use shared::event::EventType;
use shared::testkit::services;
use uuid::Uuid;

async fn gateway(compression: Compression, key: PartitionKey) -> (TestGateway, shared::Config) {
    gateway_with(compression, key, TopicLayout::Single).await
}

async fn gateway_with(
    compression: Compression,
    key: PartitionKey,
    layout: TopicLayout,
) -> (TestGateway, shared::Config) {
    let svc = services();
    let mut cfg = shared::testkit::config(&svc);
    cfg.kafka.topic_layout = layout;
    cfg.kafka.compression = compression;
    cfg.kafka.partition_key = key;
    shared::testkit::create_topics(&cfg, 2).await;
    (TestGateway::start(cfg.clone()).await, cfg)
}

/// The message key of each of the first `n` events on the click topic (a
/// request's events of one key share a message: one key per row).
async fn keys(cfg: &shared::Config, n: usize) -> Vec<Option<Vec<u8>>> {
    let consumer = common::consumer_from_start(
        cfg,
        &[&cfg.kafka.topic_for(shared::event::EventType::Click)],
    );
    let mut out = Vec::new();
    while out.len() < n {
        let (m, rows) = common::next_rows(&consumer).await;
        for v in rows {
            assert_eq!(v["type"], "click");
            out.push(m.key().map(<[u8]>::to_vec));
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_codec_delivers() {
    for c in [
        Compression::None,
        Compression::Gzip,
        Compression::Snappy,
        Compression::Lz4,
        Compression::Zstd,
    ] {
        let (gw, cfg) = gateway(c, PartitionKey::Session).await;
        let session = Uuid::new_v4();
        let r = gw
            .ingest(&serde_json::json!({"events": [event("click", 1, session)]}))
            .await;
        assert_eq!(r.status(), 200, "{c:?}: {:?}", r.text().await);
        assert_eq!(
            keys(&cfg, 1).await,
            vec![Some(session.as_bytes().to_vec())],
            "{c:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partition_key_follows_config() {
    let batch = |s: &[Uuid]| serde_json::json!({"events": s.iter().enumerate().map(|(i, s)| event("click", i, *s)).collect::<Vec<_>>()});
    let sessions = [Uuid::new_v4(), Uuid::new_v4()];

    let (gw, cfg) = gateway(Compression::Lz4, PartitionKey::Tenant).await;
    assert_eq!(gw.ingest(&batch(&sessions)).await.status(), 200);
    let tenant = Some(gw.tenant.as_bytes().to_vec());
    assert_eq!(keys(&cfg, 2).await, vec![tenant.clone(), tenant]);

    let (gw, cfg) = gateway(Compression::Lz4, PartitionKey::RoundRobin).await;
    assert_eq!(gw.ingest(&batch(&sessions)).await.status(), 200);
    assert_eq!(keys(&cfg, 2).await, vec![None, None]);

    // Session keys: each session's events in a message of its own key.
    let (gw, cfg) = gateway(Compression::Lz4, PartitionKey::Session).await;
    let two_each = [sessions[0], sessions[1], sessions[0], sessions[1]];
    assert_eq!(gw.ingest(&batch(&two_each)).await.status(), 200);
    let mut got = keys(&cfg, 4).await;
    got.sort();
    let mut want: Vec<_> = two_each
        .iter()
        .map(|s| Some(s.as_bytes().to_vec()))
        .collect();
    want.sort();
    assert_eq!(got, want);
}

/// The types of the rows on `topic`, message by message, until `n` rows came.
async fn types_on(cfg: &shared::Config, topic: &str, n: usize) -> Vec<Vec<String>> {
    let consumer = common::consumer_from_start(cfg, &[topic]);
    let (mut out, mut seen) = (Vec::new(), 0);
    while seen < n {
        let (m, rows) = common::next_rows(&consumer).await;
        assert_eq!(m.topic(), topic);
        seen += rows.len();
        out.push(
            rows.iter()
                .map(|v| v["type"].as_str().expect("a type").to_string())
                .collect(),
        );
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topic_layout_decides_where_each_type_goes() {
    let session = Uuid::new_v4();
    let batch = serde_json::json!({"events": [
        event("pageview", 0, session),
        event("click", 1, session),
        event("pageview", 2, session),
    ]});

    // One topic: a session's events of every type share one message, in order.
    let (gw, cfg) = gateway(Compression::Lz4, PartitionKey::Session).await;
    assert_eq!(gw.ingest(&batch).await.status(), 200);
    assert_eq!(
        cfg.kafka.topic_for(EventType::Click),
        cfg.kafka.single_topic()
    );
    assert_eq!(
        types_on(&cfg, &cfg.kafka.single_topic(), 3).await,
        vec![vec!["pageview", "click", "pageview"]]
    );

    // One topic per type: each type on its own, nothing on the single topic.
    let (gw, cfg) = gateway_with(
        Compression::Lz4,
        PartitionKey::Session,
        TopicLayout::PerType,
    )
    .await;
    assert_eq!(gw.ingest(&batch).await.status(), 200);
    assert_eq!(
        types_on(&cfg, &EventType::Pageview.topic(&cfg.kafka.topic_prefix), 2).await,
        vec![vec!["pageview", "pageview"]]
    );
    assert_eq!(
        types_on(&cfg, &EventType::Click.topic(&cfg.kafka.topic_prefix), 1).await,
        vec![vec!["click"]]
    );
    // Acknowledged, so on the broker already: the single topic stays empty.
    let single = cfg.kafka.single_topic();
    let probe = common::consumer_from_start(&cfg, &[&single]);
    let timeout = std::time::Duration::from_secs(10);
    let md = probe
        .fetch_metadata(Some(&single), timeout)
        .expect("metadata");
    let partitions = md.topics()[0].partitions().len() as i32;
    assert!(partitions > 0, "the single topic exists");
    for p in 0..partitions {
        let (_, high) = probe
            .fetch_watermarks(&single, p, timeout)
            .expect("watermarks");
        assert_eq!(high, 0, "a per-type gateway produced to {single}[{p}]");
    }
}

/// The gateway hands librdkafka its rows without copying them: the messages
/// point into the request's buffer until the broker has acknowledged them.
/// A request that stops waiting (its client hung up, or its delivery timed
/// out) must leave that buffer to the messages still in flight: here each
/// request is given up right after its messages were enqueued, the memory
/// it freed is filled with junk before the linger ends, and every row the
/// broker got must still be the row that was sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_keep_their_rows_after_the_request_stops_waiting() {
    use gateway::sink::{Rows, Sink};
    let svc = services();
    let mut cfg = shared::testkit::config(&svc);
    cfg.kafka.linger_ms = 200;
    shared::testkit::create_topics(&cfg, 2).await;
    let sink = Sink::new(&cfg.kafka, cfg.gateway.delivery_timeout_ms, 0).expect("sink");
    let tenant = Uuid::new_v4();
    let (requests, per_request) = (8, 40);
    let pad = "p".repeat(300);
    for r in 0..requests {
        let mut rows = Rows::with_capacity(per_request);
        let session = Uuid::new_v4();
        for n in 0..per_request {
            rows.push(EventType::Click, session, |buf| {
                serde_json::to_writer(
                    buf,
                    &serde_json::json!({"type": "click", "r": r, "n": n, "pad": pad}),
                )
            })
            .expect("row");
        }
        // Polled once (the messages are enqueued), then dropped.
        let gave_up =
            tokio::time::timeout(std::time::Duration::ZERO, sink.send(tenant, rows)).await;
        assert!(
            gave_up.is_err(),
            "request {r} was acknowledged within the linger"
        );
    }
    // Reuse whatever the requests freed, with bytes that are not rows.
    let junk: Vec<Vec<u8>> = (0..512).map(|i| vec![b'#'; 1024 + i * 64]).collect();
    let consumer = common::consumer_from_start(&cfg, &[&cfg.kafka.topic_for(EventType::Click)]);
    let mut seen = std::collections::BTreeSet::new();
    while seen.len() < requests * per_request {
        let (_, rows) = common::next_rows(&consumer).await;
        for v in rows {
            assert_eq!(v["type"], "click", "{v}");
            assert_eq!(v["pad"], pad.as_str(), "a row changed in flight: {v}");
            let key = (v["r"].as_u64().expect("r"), v["n"].as_u64().expect("n"));
            assert!(seen.insert(key), "row {key:?} twice");
        }
    }
    drop(junk);
}
