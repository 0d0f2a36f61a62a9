//! The /ingest status table, provoked with real requests against the real broker.

mod common;

use common::{event, TestGateway, SECRET};
use shared::testkit::services;
use uuid::Uuid;

async fn gateway() -> TestGateway {
    let svc = services();
    let cfg = shared::testkit::config(&svc);
    shared::testkit::create_topics(&cfg, 1).await;
    TestGateway::start(cfg).await
}

async fn error_code(resp: reqwest::Response) -> (u16, serde_json::Value) {
    let status = resp.status().as_u16();
    let rid = resp
        .headers()
        .get("x-request-id")
        .map(|v| v.to_str().expect("ascii").to_string());
    let body: serde_json::Value = resp.json().await.expect("error body is json");
    assert_eq!(
        body["error"]["request_id"].as_str(),
        rid.as_deref(),
        "request id echoed in header and body"
    );
    assert!(body["error"]["message"]
        .as_str()
        .is_some_and(|m| !m.is_empty()));
    (status, body)
}

#[tokio::test]
async fn status_table() {
    let gw = gateway().await;
    let http = reqwest::Client::new();
    let ok = serde_json::json!({"events": [event("click", 1, Uuid::new_v4())]});

    // 200 with either header form; X-Request-Id honoured.
    let r = http
        .post(gw.url("/ingest"))
        .header("x-api-key", gw.key())
        .header("x-request-id", "req-123")
        .json(&ok)
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-request-id"], "req-123");
    let body: serde_json::Value = r.json().await.expect("json");
    assert_eq!(
        body,
        serde_json::json!({"accepted": 1, "request_id": "req-123"})
    );

    // 401: missing, wrong secret, unknown tenant.
    let r = http
        .post(gw.url("/ingest"))
        .json(&ok)
        .send()
        .await
        .expect("send");
    let (s, b) = error_code(r).await;
    assert_eq!(
        (s, b["error"]["code"].as_str()),
        (401, Some("unauthorized"))
    );
    for key in [
        format!("{}:wrong", gw.tenant),
        format!("{}:{SECRET}", Uuid::new_v4()),
    ] {
        let r = http
            .post(gw.url("/ingest"))
            .bearer_auth(key)
            .json(&ok)
            .send()
            .await
            .expect("send");
        assert_eq!(r.status(), 401);
    }

    // 400: malformed JSON and unknown fields.
    for body in [r#"{"events":[{"#, r#"{"events":[{"idd":1}]}"#, "[]"] {
        let r = http
            .post(gw.url("/ingest"))
            .bearer_auth(gw.key())
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .expect("send");
        let (s, b) = error_code(r).await;
        assert_eq!(
            (s, b["error"]["code"].as_str()),
            (400, Some("malformed_body")),
            "{body}"
        );
    }

    // 422 lists each failing event with index and field.
    let mut bad = event("pageview", 2, Uuid::new_v4());
    bad["timestamp"] = "not a time".into();
    let r = gw
        .ingest(&serde_json::json!({"events": [event("scroll", 1, Uuid::new_v4()), bad]}))
        .await;
    let (s, b) = error_code(r).await;
    assert_eq!(s, 422);
    assert_eq!(b["error"]["code"], "validation_failed");
    assert_eq!(b["error"]["details"][0]["index"], 1);
    assert_eq!(b["error"]["details"][0]["field"], "timestamp");
    let r = gw.ingest(&serde_json::json!({"events": []})).await;
    assert_eq!(r.status(), 422);

    // 403: an event naming another tenant.
    let mut foreign = event("custom", 3, Uuid::new_v4());
    foreign["tenant_id"] = Uuid::new_v4().to_string().into();
    let r = gw.ingest(&serde_json::json!({"events": [foreign]})).await;
    let (s, b) = error_code(r).await;
    assert_eq!(
        (s, b["error"]["code"].as_str()),
        (403, Some("tenant_mismatch"))
    );

    // 413: body over gateway.max_body_bytes (1 MiB by default).
    let big = serde_json::json!({"events": [{"title": "x".repeat(1_100_000)}]});
    let r = gw.ingest(&big).await;
    let (s, b) = error_code(r).await;
    assert_eq!(
        (s, b["error"]["code"].as_str()),
        (413, Some("payload_too_large"))
    );

    // 415: wrong content type or encoding.
    for (h, v) in [("content-type", "text/csv"), ("content-encoding", "br")] {
        let r = http
            .post(gw.url("/ingest"))
            .bearer_auth(gw.key())
            .header(h, v)
            .body(ok.to_string())
            .send()
            .await
            .expect("send");
        let (s, _) = error_code(r).await;
        assert_eq!(s, 415, "{h}: {v}");
    }

    // 404 and 405.
    assert_eq!(
        http.get(gw.url("/nope"))
            .send()
            .await
            .expect("send")
            .status(),
        404
    );
    assert_eq!(
        http.get(gw.url("/ingest"))
            .send()
            .await
            .expect("send")
            .status(),
        405
    );

    // Health.
    assert_eq!(
        http.get(gw.url("/health/live"))
            .send()
            .await
            .expect("send")
            .status(),
        200
    );
    gw.shutdown().await;
}

/// Past `gateway.max_in_flight_requests` the gateway sheds load with 503
/// `overloaded` and Retry-After, and serves again once the load is gone. The
/// load here is a request waiting for a broker that went away.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sheds_load_past_the_in_flight_limit() {
    let svc = services();
    let mut broker = shared::testkit::Broker::start(&svc);
    let mut cfg = shared::testkit::config(&svc);
    cfg.kafka.brokers = broker.address();
    cfg.gateway.max_in_flight_requests = 1;
    cfg.gateway.delivery_timeout_ms = 4000;
    shared::testkit::create_topics(&cfg, 1).await;
    let gw = TestGateway::start(cfg).await;
    let body = serde_json::json!({"events": [event("click", 1, Uuid::new_v4())]});
    assert_eq!(gw.ingest(&body).await.status(), 200);
    broker.kill();
    let http = reqwest::Client::new();
    let waiting = {
        let (url, key, body) = (gw.url("/ingest"), gw.key(), body.clone());
        let http = http.clone();
        tokio::spawn(async move { http.post(url).bearer_auth(key).json(&body).send().await })
    };
    shared::testkit::eventually(
        "the request waiting for the broker",
        std::time::Duration::from_secs(10),
        || {
            let http = http.clone();
            let url = gw.ops_url("/health");
            async move {
                let h: serde_json::Value = http.get(url).send().await.ok()?.json().await.ok()?;
                (h["ingest_in_progress"] == 1).then_some(())
            }
        },
    )
    .await;
    let shed = gw.ingest(&body).await;
    assert_eq!(shed.headers()["retry-after"], "5");
    let (status, err) = error_code(shed).await;
    assert_eq!(
        (status, err["error"]["code"].as_str()),
        (503, Some("overloaded"))
    );
    // The waiting request ends (the broker is gone): capacity returns.
    let first = waiting.await.expect("task").expect("answer");
    assert_eq!(first.status(), 503);
    let (_, err) = error_code(gw.ingest(&body).await).await;
    assert_eq!(err["error"]["code"], "broker_unavailable", "admitted again");
    gw.shutdown().await;
}

/// A client that stalls mid-body holds no admission slot: others are served
/// meanwhile, and the stalled one gets 408 once `gateway.body_read_timeout_ms`
/// has passed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_body_never_starves_other_clients() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let svc = services();
    let mut cfg = shared::testkit::config(&svc);
    cfg.gateway.max_in_flight_requests = 1;
    cfg.gateway.body_read_timeout_ms = 1500;
    shared::testkit::create_topics(&cfg, 1).await;
    let gw = TestGateway::start(cfg).await;
    let body =
        serde_json::to_vec(&serde_json::json!({"events": [event("click", 1, Uuid::new_v4())]}))
            .expect("json");
    let head = format!(
        "POST /ingest HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
        gw.key(),
        body.len()
    );
    let mut stalled = Vec::new();
    for _ in 0..4 {
        let mut slow = tokio::net::TcpStream::connect(gw.addr)
            .await
            .expect("connect");
        slow.write_all(head.as_bytes()).await.expect("head");
        slow.write_all(&body[..body.len() / 2]).await.expect("half");
        stalled.push(slow);
    }
    let fast = gw
        .ingest(&serde_json::json!({"events": [event("click", 2, Uuid::new_v4())]}))
        .await;
    assert_eq!(fast.status(), 200, "{:?}", fast.text().await);
    for mut slow in stalled {
        let mut answer = String::new();
        let read = slow.read_to_string(&mut answer);
        tokio::time::timeout(std::time::Duration::from_secs(10), read)
            .await
            .expect("answered in time")
            .expect("read");
        assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
        assert!(answer.contains("request_timeout"), "{answer}");
    }
    gw.shutdown().await;
}
