//! The foreign formats at the HTTP level (no SDK): where the key may be, the
//! answers each SDK family reads, and refusals for what cannot be stored.

mod common;

use common::TestGateway;
use shared::testkit::services;

async fn gateway() -> TestGateway {
    let svc = services();
    let cfg = shared::testkit::config(&svc);
    shared::testkit::create_topics(&cfg, 1).await;
    TestGateway::start(cfg).await
}

async fn post(
    gw: &TestGateway,
    path: &str,
    content_type: &str,
    body: String,
) -> (u16, serde_json::Value) {
    let r = reqwest::Client::new()
        .post(gw.url(path))
        .header("content-type", content_type)
        .body(body)
        .send()
        .await
        .expect("send");
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(serde_json::Value::Null))
}

#[tokio::test]
async fn keys_in_the_body_and_each_sdks_answer() {
    let gw = gateway().await;
    let key = gw.key();
    let now = common::rfc3339(time::OffsetDateTime::now_utc());

    // PostHog: the token in the body, in its three shapes and paths.
    let one = serde_json::json!({"event": "signup", "distinct_id": "d1", "timestamp": now,
        "properties": {"token": key}});
    for path in ["/e", "/i/v0/e/", "/capture", "/track/"] {
        let (status, body) = post(&gw, path, "application/json", one.to_string()).await;
        assert_eq!(
            (status, &body),
            (200, &serde_json::json!({"status": 1})),
            "{path}"
        );
    }
    let batch = serde_json::json!({"api_key": key, "batch": [one, one]});
    assert_eq!(
        post(&gw, "/batch/", "application/json", batch.to_string())
            .await
            .0,
        200
    );
    let array = serde_json::json!([{"event": "a", "distinct_id": "d", "api_key": key}]);
    assert_eq!(
        post(&gw, "/batch", "application/json", array.to_string())
            .await
            .0,
        200
    );

    // Without a token, or with a wrong one: 401, the key is wrong.
    let anonymous = serde_json::json!({"batch": [{"event": "a", "distinct_id": "d"}]});
    let (status, body) = post(&gw, "/batch", "application/json", anonymous.to_string()).await;
    assert_eq!(status, 401, "{body}");
    assert_eq!(body["error"]["code"], "unauthorized");
    let wrong = serde_json::json!({"api_key": "00000000-0000-0000-0000-000000000000:nope",
        "batch": [{"event": "a", "distinct_id": "d"}]});
    assert_eq!(
        post(&gw, "/batch", "application/json", wrong.to_string())
            .await
            .0,
        401
    );

    // Segment: the write key in the body, as the browser library sends it
    // (text/plain, so no CORS preflight).
    let track = serde_json::json!({"writeKey": key, "type": "track", "event": "Clicked",
        "anonymousId": "a1", "messageId": "ajs-next-1", "timestamp": now});
    let (status, body) = post(&gw, "/v1/track", "text/plain", track.to_string()).await;
    assert_eq!(
        (status, &body),
        (200, &serde_json::json!({"success": true}))
    );

    // A message type with no mapping is refused, naming it (Segment drops 4xx).
    let odd =
        serde_json::json!({"writeKey": key, "batch": [{"type": "teleport", "anonymousId": "a"}]});
    let (status, body) = post(&gw, "/v1/batch", "application/json", odd.to_string()).await;
    assert_eq!(status, 422, "{body}");
    assert!(body.to_string().contains("type"), "{body}");

    // Nesting beyond the limits is refused before the body is parsed.
    let deep = format!(
        "{{\"writeKey\":\"{key}\",\"batch\":[{{\"type\":\"track\",\"event\":\"x\",\"properties\":{}{}}}]}}",
        "{\"a\":".repeat(40),
        "}".repeat(40)
    );
    assert_eq!(
        post(&gw, "/v1/batch", "application/json", deep).await.0,
        422
    );
}
