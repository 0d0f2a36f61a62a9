//! No message can stop ClickHouse's consumption. The nastiest batches the
//! gateway accepts, and messages written to the topics by other producers
//! (an older gateway, a hand-written tool) with times from year 1 to 9999 in
//! one burst, are stored or routed to `dead_letter`; a canary event sent
//! afterwards must reach `events` within seconds.
//!
//! On the code before this test, the gateway accepted events dated anywhere,
//! and one request spanning more than 100 months made every Kafka-engine insert
//! fail (TOO_MANY_PARTS) and be retried forever, for every tenant.

mod common;

use std::time::Duration;

use common::{event, rfc3339, TestGateway};
use rdkafka::producer::{FutureProducer, FutureRecord};
use shared::testkit::{eventually, select_json, services, TestSchema, CONSUMED_WITHIN};
use uuid::Uuid;

fn at(ms: i64) -> time::OffsetDateTime {
    time::OffsetDateTime::from_unix_timestamp_nanos(ms as i128 * 1_000_000).expect("time")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_times_never_stall_consumption() {
    let svc = services();
    let schema = TestSchema::create(&svc).await;
    let db = format!("`{}`", schema.database());
    let gw = TestGateway::start(schema.config.clone()).await;
    let session = Uuid::new_v4();
    let limits = &schema.config.limits;

    // 0. ClickHouse's consumer of this test's topics has joined: a first event
    //    is stored (the first join can take a while when many tests start
    //    theirs at once), so the canary's bound below measures consumption only.
    let warm = event("pageview", 0, session);
    assert_eq!(
        gw.ingest(&serde_json::json!({ "events": [warm.clone()] }))
            .await
            .status(),
        200
    );
    let warm_id = warm["id"].as_str().expect("id").to_string();
    eventually("the first event in events", CONSUMED_WITHIN, || async {
        let rows = select_json(
            &schema.client,
            &format!("SELECT count() AS n FROM {db}.events WHERE id = toUUID(?)"),
            std::slice::from_ref(&warm_id),
        )
        .await;
        (rows[0]["n"] == 1).then_some(())
    })
    .await;

    // 1. Refused at the edge: every time outside the window, per event, with
    //    the stable code, and nothing of the request stored.
    let mut refused = Vec::new();
    for (n, ts) in [
        "0001-01-01T00:00:00Z",
        "1970-01-01T00:00:00Z",
        "2999-06-01T00:00:00Z",
        "9999-12-31T23:59:59.999Z",
    ]
    .iter()
    .enumerate()
    {
        let mut e = event("click", n, session);
        e["timestamp"] = (*ts).into();
        refused.push(e);
    }
    let mut skewed = event("click", 9, session);
    skewed["sent_at"] = "9999-01-01T00:00:00Z".into();
    refused.push(skewed);
    let r = gw.ingest(&serde_json::json!({ "events": refused })).await;
    assert_eq!(r.status(), 422);
    let body: serde_json::Value = r.json().await.expect("json");
    let details = body["error"]["details"].as_array().expect("details");
    assert_eq!(details.len(), 5, "{body}");
    for (i, d) in details.iter().enumerate() {
        assert_eq!(d["index"], i, "{body}");
        assert_eq!(d["code"], "timestamp_out_of_range", "{body}");
    }

    // 2. Accepted: the window's edges, in one request (the widest spread a
    //    request can have), with maximal properties.
    let now = time::OffsetDateTime::now_utc();
    let oldest =
        now - time::Duration::hours(limits.max_event_age_hours as i64) + time::Duration::minutes(1);
    let newest = now + time::Duration::minutes(limits.max_future_minutes as i64)
        - time::Duration::seconds(30);
    let mut edge = Vec::new();
    for (n, ts) in [oldest, newest, oldest, newest].into_iter().enumerate() {
        let mut e = event("custom", n, session);
        e["timestamp"] = rfc3339(ts).into();
        e["sent_at"] = rfc3339(now).into();
        let props: serde_json::Map<String, serde_json::Value> = (0..limits.max_properties)
            .map(|k| (format!("k{k}"), serde_json::Value::from("é\u{0}\"\\ 𝄞")))
            .collect();
        e["properties"] = serde_json::Value::Object(props);
        edge.push(e);
    }
    let r = gw.ingest(&serde_json::json!({ "events": edge })).await;
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap_or_default());

    // 3. Other producers: one burst spanning 150 months and the ends of time,
    //    a time ClickHouse cannot store, and a message that is not JSON.
    let topic = shared::event::EventType::Click.topic(&schema.config.kafka.topic_prefix);
    let producer: FutureProducer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", &schema.config.kafka.brokers)
        .set("linger.ms", "50")
        .create()
        .expect("producer");
    let tenant = gw.tenant;
    let received = (now.unix_timestamp_nanos() / 1_000_000) as i64;
    let month_ms = 31 * 86_400_000i64;
    let mut foreign = Vec::new();
    for m in 0..150i64 {
        foreign.push((Uuid::new_v4(), received - (75 - m) * month_ms, received));
    }
    foreign.push((Uuid::new_v4(), i64::MIN / 2, received));
    foreign.push((Uuid::new_v4(), 253_402_300_799_000, received));
    foreign.push((Uuid::new_v4(), received, -62_135_596_800_000)); // received in year 1
                                                                   // All on one partition, so ClickHouse reads them as one block.
    let mut sends = Vec::new();
    for (id, ts, recv) in &foreign {
        let msg = serde_json::json!({
            "id": id.to_string(), "tenant_id": tenant.to_string(),
            "session_id": session.to_string(), "type": "click",
            "timestamp_ms": ts, "received_at_ms": recv, "corrected_timestamp_ms": ts,
            "properties": "{}", "client_ip": "", "browser": "", "browser_version": "",
            "os": "", "os_version": "", "device": "", "country": "", "region": "",
            "city": "", "is_bot": false,
        })
        .to_string();
        let record = FutureRecord::<(), _>::to(&topic).payload(&msg).partition(0);
        sends.push(
            producer
                .send_result(record)
                .map_err(|(e, _)| e)
                .expect("enqueue"),
        );
    }
    for s in sends {
        s.await.expect("delivery report").expect("delivered");
    }
    producer
        .send(
            FutureRecord::<(), _>::to(&topic)
                .payload("{\"id\": 12")
                .partition(0),
            Duration::from_secs(10),
        )
        .await
        .expect("produce garbage");

    // 4. The canary, sent last, arrives within seconds.
    let canary = event("pageview", 77, Uuid::new_v4());
    assert_eq!(
        gw.ingest(&serde_json::json!({ "events": [canary.clone()] }))
            .await
            .status(),
        200
    );
    let started = std::time::Instant::now();
    eventually("the canary in events", CONSUMED_WITHIN, || async {
        let rows = select_json(
            &schema.client,
            &format!("SELECT count() AS n FROM {db}.events WHERE id = toUUID(?)"),
            &[canary["id"].as_str().expect("id").to_string()],
        )
        .await;
        (rows[0]["n"] == 1).then_some(())
    })
    .await;
    eprintln!(
        "canary stored {:?} after it was acknowledged",
        started.elapsed()
    );

    // Every accepted or foreign message is accounted for: stored or dead-lettered.
    let window_ms = limits.max_event_age_hours as i64 * 3_600_000;
    let stored_foreign = foreign
        .iter()
        .filter(|(_, ts, recv)| {
            *recv > 946_684_800_000 && *ts >= recv - 400 * 86_400_000 && *ts <= recv + 86_400_000
        })
        .count();
    assert!(stored_foreign > 0 && stored_foreign < foreign.len());
    let expected_events = 1 + 4 + 1 + stored_foreign;
    let expected_dead = foreign.len() - stored_foreign + 1;
    let counts = eventually(
        "every message stored or dead-lettered",
        CONSUMED_WITHIN,
        || async {
            let e = select_json(
                &schema.client,
                &format!("SELECT count() AS n FROM {db}.events FINAL"),
                &[],
            )
            .await[0]["n"]
                .as_u64()?;
            let d = select_json(
                &schema.client,
                &format!("SELECT count() AS n FROM {db}.dead_letter"),
                &[],
            )
            .await[0]["n"]
                .as_u64()?;
            (e as usize == expected_events && d as usize == expected_dead).then_some((e, d))
        },
    )
    .await;
    eprintln!("events {} dead letters {}", counts.0, counts.1);
    let reasons = select_json(
        &schema.client,
        &format!("SELECT raw, error FROM {db}.dead_letter WHERE raw LIKE '%received_at_ms%'"),
        &[],
    )
    .await;
    assert_eq!(reasons.len(), expected_dead - 1);
    for r in &reasons {
        assert!(
            r["error"]
                .as_str()
                .expect("error")
                .contains("outside the range"),
            "{r}"
        );
        assert!(
            r["raw"]
                .as_str()
                .expect("raw")
                .contains(&tenant.to_string()),
            "{r}"
        );
    }
    // The edge events keep their client times exactly (no re-dating).
    let kept = select_json(
        &schema.client,
        &format!(
            "SELECT toUnixTimestamp64Milli(timestamp) AS ts FROM {db}.events FINAL \
             WHERE type = 'custom' ORDER BY ts"
        ),
        &[],
    )
    .await;
    let ms = |t: time::OffsetDateTime| (t.unix_timestamp_nanos() / 1_000_000) as i64;
    let oldest_ms = ms(time::OffsetDateTime::parse(
        edge[0]["timestamp"].as_str().expect("ts"),
        &time::format_description::well_known::Rfc3339,
    )
    .expect("ts"));
    assert_eq!(kept[0]["ts"].as_i64(), Some(oldest_ms));
    assert!(at(oldest_ms) < now - time::Duration::hours(window_ms / 3_600_000 - 1));
}
