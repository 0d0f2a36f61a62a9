//! Producer settings against the real broker: every compression codec delivers,
//! and the partition key follows `kafka.partition_key`.

mod common;

use common::{event, TestGateway};
use rdkafka::Message;
use shared::config::{Compression, PartitionKey};
use shared::testkit::services;
use uuid::Uuid;

async fn gateway(compression: Compression, key: PartitionKey) -> (TestGateway, shared::Config) {
    let svc = services();
    let mut cfg = shared::testkit::config(&svc);
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
        &[&shared::event::EventType::Click.topic(&cfg.kafka.topic_prefix)],
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
