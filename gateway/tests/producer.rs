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
