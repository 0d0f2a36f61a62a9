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

/// What posthog-js sends from a browser: gzip without a content encoding
/// (text/plain), `data=<base64>` forms on unload, `beacon=1`; and the start-up
/// endpoints both browser SDKs call before sending.
#[tokio::test]
async fn browser_sdk_bodies_and_start_up_endpoints() {
    use base64::Engine as _;
    use std::io::Write;
    let gw = gateway().await;
    let key = gw.key();
    let now = common::rfc3339(time::OffsetDateTime::now_utc());
    let json =
        serde_json::json!({"api_key": key, "batch": [{"event": "$pageview", "distinct_id": "d",
        "timestamp": now, "properties": {"$current_url": "https://x.example/", "$pathname": "/"}}]})
        .to_string();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(json.as_bytes()).expect("gzip");
    let gz = gz.finish().expect("gzip");
    let http = reqwest::Client::new();
    let r = http
        .post(gw.url("/e/"))
        .header("content-type", "text/plain")
        .body(gz.clone())
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), 200, "gzip recognised by its magic bytes");
    let form = format!(
        "data={}",
        base64::engine::general_purpose::STANDARD
            .encode(&json)
            .replace('+', "%2B")
            .replace('/', "%2F")
            .replace('=', "%3D")
    );
    let r = http
        .post(gw.url("/e/?compression=base64"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(form.clone())
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), 200, "a base64 form");
    let r = http
        .post(gw.url("/e/?compression=base64&beacon=1"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(form)
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), 204, "beacon=1 is answered without a body");
    // /ingest itself still refuses a form.
    let r = http
        .post(gw.url("/ingest"))
        .bearer_auth(&key)
        .header("content-type", "application/x-www-form-urlencoded")
        .body("data=x")
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), 415);

    for path in ["/flags/?v=2", "/decide/?v=3"] {
        let r = http
            .post(gw.url(path))
            .body("data=e30=")
            .send()
            .await
            .expect("flags");
        assert_eq!(r.status(), 200, "{path}");
        let b: serde_json::Value = r.json().await.expect("json");
        assert_eq!(b["featureFlags"], serde_json::json!({}), "{path}");
    }
    let r = http
        .get(gw.url(&format!("/array/{key}/config")))
        .send()
        .await
        .expect("config");
    let cfg: serde_json::Value = r.json().await.expect("json");
    assert_eq!(cfg["autocapture_opt_out"], false);
    let js = http
        .get(gw.url(&format!("/array/{key}/config.js")))
        .send()
        .await
        .expect("config.js")
        .text()
        .await
        .expect("text");
    assert!(js.contains("_POSTHOG_REMOTE_CONFIG"), "{js}");

    // Segment's settings document points the library back here, with its key.
    let r = http
        .get(gw.url(&format!(
            "/v1/projects/{}/settings",
            key.replace(':', "%3A")
        )))
        .header("x-forwarded-proto", "https")
        .send()
        .await
        .expect("settings");
    assert_eq!(r.status(), 200);
    let s: serde_json::Value = r.json().await.expect("json");
    let io = &s["integrations"]["Segment.io"];
    assert_eq!(io["apiKey"], key.as_str());
    assert_eq!(io["apiHost"], format!("{}/v1", gw.addr));
    assert_eq!(io["protocol"], "https");
}

/// First-party paths (`gateway.path_prefixes`): the same endpoints under a
/// prefix of the site's choosing; other paths under it are still unknown.
#[tokio::test]
async fn first_party_prefixes_serve_the_same_endpoints() {
    let svc = services();
    let mut cfg = shared::testkit::config(&svc);
    shared::testkit::create_topics(&cfg, 1).await;
    cfg.gateway.path_prefixes = vec!["/k9x".into(), "/stats/collect".into()];
    let gw = TestGateway::start(cfg).await;
    let key = gw.key();
    let now = common::rfc3339(time::OffsetDateTime::now_utc());
    let ph =
        serde_json::json!({"event": "e", "distinct_id": "d", "timestamp": now, "api_key": key});
    assert_eq!(
        post(&gw, "/k9x/e/", "application/json", ph.to_string())
            .await
            .0,
        200
    );
    assert_eq!(
        post(
            &gw,
            "/stats/collect/batch",
            "application/json",
            ph.to_string()
        )
        .await
        .0,
        200
    );
    let native =
        serde_json::json!({"events": [common::event("pageview", 0, uuid::Uuid::new_v4())]});
    let r = reqwest::Client::new()
        .post(gw.url("/k9x/ingest"))
        .bearer_auth(&key)
        .json(&native)
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), 200);
    assert_eq!(
        post(&gw, "/k9x/nothing", "application/json", "{}".into())
            .await
            .0,
        404
    );
    assert_eq!(
        post(&gw, "/k9xe/", "application/json", ph.to_string())
            .await
            .0,
        404,
        "a prefix is a whole segment"
    );
}
