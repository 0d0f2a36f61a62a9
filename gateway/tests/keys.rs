//! API keys from ClickHouse, administered with workerd's admin commands: issue,
//! revoke, rotate with overlap, expiry, IP allowlists, browser keys (CORS and
//! sendBeacon), request signing, tier changes, the audit log, and serving the
//! last snapshot while ClickHouse is down.

mod common;

use std::time::{Duration, Instant};

use common::{event, TestGateway};
use shared::domain::Tier;
use shared::testkit::{eventually, services, TestSchema};
use uuid::Uuid;
use workerd::admin::{Admin, KeySpec};

fn admin(schema: &TestSchema) -> Admin {
    Admin::new(
        schema.client.clone(),
        shared::store::Db::new(schema.database()),
        "keys-test",
    )
}

fn server() -> KeySpec {
    KeySpec {
        kind: "server".into(),
        ..Default::default()
    }
}

fn body() -> serde_json::Value {
    serde_json::json!({"events": [event("pageview", 1, Uuid::new_v4())]})
}

async fn post(gw: &TestGateway, key: &str) -> u16 {
    reqwest::Client::new()
        .post(gw.url("/ingest"))
        .bearer_auth(key)
        .json(&body())
        .send()
        .await
        .expect("send")
        .status()
        .as_u16()
}

async fn until_status(gw: &TestGateway, key: &str, want: u16, what: &str) -> Duration {
    let started = Instant::now();
    eventually(what, Duration::from_secs(20), || async {
        (post(gw, key).await == want).then_some(())
    })
    .await;
    started.elapsed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issue_revoke_rotate_expire() {
    let svc = services();
    let schema = TestSchema::create(&svc).await;
    let admin = admin(&schema);
    let mut cfg = schema.config.clone();
    cfg.tiers.free.events_per_second = 1.0;
    cfg.tiers.free.burst = 1000;
    let gw = TestGateway::start(cfg).await;

    let tenant = admin
        .tenant_create(None, "acme", Tier::Free, false)
        .await
        .expect("tenant");
    let k1 = admin.key_issue(tenant, &server()).await.expect("issue");
    until_status(&gw, &k1.api_key(), 200, "the issued key to work").await;
    // Wrong secret for a known tenant.
    assert_eq!(
        post(&gw, &format!("{tenant}:{}", "0".repeat(64))).await,
        401
    );

    // Rotation: both keys work during the overlap, then only the new one.
    let overlap = Duration::from_secs(3);
    let rotated_at = Instant::now();
    let k2 = admin.key_rotate(k1.key_id, overlap).await.expect("rotate");
    until_status(&gw, &k2.api_key(), 200, "the successor to work").await;
    assert_eq!(
        post(&gw, &k1.api_key()).await,
        200,
        "old key inside the overlap"
    );
    until_status(&gw, &k1.api_key(), 401, "the old key to expire").await;
    assert!(
        rotated_at.elapsed() >= overlap,
        "expired only after the overlap"
    );
    assert_eq!(post(&gw, &k2.api_key()).await, 200);

    // Revocation takes effect within one refresh interval (200 ms here).
    admin.key_revoke(k2.key_id).await.expect("revoke");
    let took = until_status(&gw, &k2.api_key(), 401, "the revoked key to be refused").await;
    assert!(took < Duration::from_secs(3), "revocation took {took:?}");

    // A key issued with an expiry.
    let short = admin
        .key_issue(
            tenant,
            &KeySpec {
                expires_in: Some(Duration::from_secs(2)),
                ..server()
            },
        )
        .await
        .expect("issue");
    until_status(&gw, &short.api_key(), 200, "the short-lived key to work").await;
    until_status(&gw, &short.api_key(), 401, "the short-lived key to expire").await;

    // The audit log has every action, and never a secret.
    let actions: Vec<(String, String)> = schema
        .client
        .query(&format!(
            "SELECT action, detail FROM `{}`.audit_log WHERE actor = 'keys-test' ORDER BY at",
            schema.database()
        ))
        .fetch_all()
        .await
        .expect("audit log");
    let names: Vec<&str> = actions.iter().map(|(a, _)| a.as_str()).collect();
    assert_eq!(
        names,
        [
            "tenant.create",
            "key.issue",
            "key.issue",
            "key.rotate",
            "key.revoke",
            "key.issue"
        ]
    );
    for (_, detail) in &actions {
        for secret in [&k1.secret, &k2.secret, &short.secret] {
            assert!(!detail.contains(secret.as_str()), "secret in audit log");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tier_change_applies_to_rate_limits() {
    let svc = services();
    let schema = TestSchema::create(&svc).await;
    let admin = admin(&schema);
    let mut cfg = schema.config.clone();
    cfg.tiers.free.events_per_second = 0.1;
    cfg.tiers.free.burst = 1000;
    cfg.gateway.max_events_per_batch = 1000;
    let gw = TestGateway::start(cfg).await;
    let tenant = admin
        .tenant_create(None, "growing", Tier::Free, false)
        .await
        .expect("tenant");
    let key = admin
        .key_issue(tenant, &server())
        .await
        .expect("issue")
        .api_key();
    until_status(&gw, &key, 200, "the key to work").await;
    let big = serde_json::json!({"events": (0..999).map(|i| event("click", i, Uuid::new_v4())).collect::<Vec<_>>()});
    let http = reqwest::Client::new();
    let send = || {
        http.post(gw.url("/ingest"))
            .bearer_auth(&key)
            .json(&big)
            .send()
    };
    assert_eq!(send().await.expect("send").status(), 200, "the burst");
    assert_eq!(
        send().await.expect("send").status(),
        429,
        "free tier exhausted"
    );
    admin
        .tenant_set_tier(tenant, Tier::Paid)
        .await
        .expect("set tier");
    eventually(
        "the paid tier to apply",
        Duration::from_secs(20),
        || async { (send().await.ok()?.status() == 200).then_some(()) },
    )
    .await;
    let tiers: Vec<String> = admin
        .tenant_list()
        .await
        .expect("list")
        .into_iter()
        .map(|t| t.tier)
        .collect();
    assert_eq!(tiers, ["paid"]);
    let keys = admin.key_list(Some(tenant)).await.expect("list keys");
    assert_eq!(keys.len(), 1);
    // Reads are audited too.
    let audited: Vec<String> = schema
        .client
        .query(&format!(
            "SELECT action FROM `{}`.audit_log ORDER BY at",
            schema.database()
        ))
        .fetch_all()
        .await
        .expect("audit");
    assert_eq!(
        audited,
        [
            "tenant.create",
            "key.issue",
            "tenant.set_tier",
            "tenant.list",
            "key.list"
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ip_allowlist_browser_keys_and_signing() {
    let svc = services();
    let schema = TestSchema::create(&svc).await;
    let admin = admin(&schema);
    let gw = TestGateway::start(schema.config.clone()).await;
    let tenant = admin
        .tenant_create(None, "shop", Tier::Paid, false)
        .await
        .expect("tenant");
    let http = reqwest::Client::new();

    // IP allowlist: the test connects from 127.0.0.1.
    let fenced = admin
        .key_issue(
            tenant,
            &KeySpec {
                ip_allowlist: vec!["10.0.0.0/8".into()],
                ..server()
            },
        )
        .await
        .expect("issue");
    let open = admin
        .key_issue(
            tenant,
            &KeySpec {
                ip_allowlist: vec!["127.0.0.0/8".into()],
                ..server()
            },
        )
        .await
        .expect("issue");
    until_status(&gw, &open.api_key(), 200, "the loopback-allowed key").await;
    assert_eq!(post(&gw, &fenced.api_key()).await, 403);

    // Browser key: CORS for its origin only, sendBeacon with text/plain.
    let browser = admin
        .key_issue(
            tenant,
            &KeySpec {
                kind: "browser".into(),
                allowed_origins: vec!["https://shop.example".into()],
                ..Default::default()
            },
        )
        .await
        .expect("issue");
    until_status(&gw, &browser.api_key(), 200, "the browser key").await;
    let pre = http
        .request(reqwest::Method::OPTIONS, gw.url("/ingest"))
        .header("origin", "https://shop.example")
        .header("access-control-request-method", "POST")
        .send()
        .await
        .expect("preflight");
    assert_eq!(pre.status(), 204);
    assert!(pre.headers()["access-control-allow-headers"]
        .to_str()
        .expect("ascii")
        .contains("authorization"));
    let pre = http
        .request(reqwest::Method::OPTIONS, gw.url("/ingest"))
        .header("origin", "https://evil.example")
        .send()
        .await
        .expect("preflight");
    assert_eq!(pre.status(), 403);
    assert!(pre.headers().get("access-control-allow-origin").is_none());

    let r = http
        .post(gw.url("/ingest"))
        .header("origin", "https://shop.example")
        .bearer_auth(browser.api_key())
        .json(&body())
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.headers()["access-control-allow-origin"],
        "https://shop.example"
    );
    let r = http
        .post(gw.url("/ingest"))
        .header("origin", "https://evil.example")
        .bearer_auth(browser.api_key())
        .json(&body())
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), 403);
    let b: serde_json::Value = r.json().await.expect("json");
    assert_eq!(b["error"]["code"], "origin_not_allowed");

    let beacon = |key: String| {
        http.post(format!("{}?api_key={key}", gw.url("/ingest")))
            .header("content-type", "text/plain;charset=UTF-8")
            .header("origin", "https://shop.example")
            .body(body().to_string())
            .send()
    };
    assert_eq!(
        beacon(browser.api_key()).await.expect("beacon").status(),
        200
    );
    // As browser code writes it: encodeURIComponent turns `:` into `%3A`.
    assert_eq!(
        beacon(browser.api_key().replace(':', "%3A"))
            .await
            .expect("beacon")
            .status(),
        200,
        "a percent-encoded key in the query string is decoded"
    );
    assert_eq!(
        beacon(open.api_key()).await.expect("beacon").status(),
        401,
        "server keys may not beacon"
    );
    let r = http
        .post(gw.url("/ingest"))
        .bearer_auth(open.api_key())
        .header("content-type", "text/plain")
        .body(body().to_string())
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), 415, "text/plain only for beacons");

    // Signing (Ed25519): the gateway holds only the public key; the request
    // carries the key id, never a secret.
    let private = ed25519_dalek::SigningKey::from_bytes(
        uuid::Uuid::new_v4().as_u128().to_le_bytes().repeat(2)[..32]
            .try_into()
            .expect("32 bytes"),
    );
    let public_b64 = {
        use base64::Engine as _;
        base64::engine::general_purpose::STANDARD.encode(private.verifying_key().to_bytes())
    };
    let signed = admin
        .key_issue(
            tenant,
            &KeySpec {
                signing_public_key: Some(public_b64),
                ..server()
            },
        )
        .await
        .expect("issue");
    let payload = body().to_string();
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let sign_with = |key: &ed25519_dalek::SigningKey, ts: i64, nonce: &str, body: &str| {
        use base64::Engine as _;
        use ed25519_dalek::Signer;
        let msg = gateway::auth::sign::message(
            "POST",
            "/ingest",
            &ts.to_string(),
            nonce,
            body.as_bytes(),
        );
        base64::engine::general_purpose::STANDARD.encode(key.sign(msg.as_bytes()).to_bytes())
    };
    let send_signed = |ts: i64, nonce: String, sig: Option<String>| {
        let mut rb = http
            .post(gw.url("/ingest"))
            .header("x-overwatch-key-id", signed.key_id.to_string())
            .header("content-type", "application/json")
            .header("x-overwatch-timestamp", ts.to_string())
            .header("x-overwatch-nonce", nonce)
            .body(payload.clone());
        if let Some(s) = sig {
            rb = rb.header("x-overwatch-signature", s);
        }
        rb.send()
    };
    let fresh = || uuid::Uuid::new_v4().simple().to_string();
    let first = fresh();
    eventually(
        "the signing key to load",
        Duration::from_secs(20),
        || async {
            let n = fresh();
            (send_signed(now, n.clone(), Some(sign_with(&private, now, &n, &payload)))
                .await
                .ok()?
                .status()
                == 200)
                .then_some(())
        },
    )
    .await;
    let ok = send_signed(
        now,
        first.clone(),
        Some(sign_with(&private, now, &first, &payload)),
    )
    .await
    .expect("send");
    assert_eq!(ok.status(), 200);
    let replay = send_signed(
        now,
        first.clone(),
        Some(sign_with(&private, now, &first, &payload)),
    )
    .await
    .expect("send");
    assert_eq!(replay.status(), 401, "a replayed nonce");
    let n = fresh();
    assert_eq!(
        send_signed(now, n, None).await.expect("send").status(),
        401,
        "unsigned"
    );
    let n = fresh();
    let wrong_body = sign_with(&private, now, &n, "{}");
    assert_eq!(
        send_signed(now, n, Some(wrong_body))
            .await
            .expect("send")
            .status(),
        401,
        "wrong body"
    );
    let n = fresh();
    let other = ed25519_dalek::SigningKey::from_bytes(&[3u8; 32]);
    let forged = sign_with(&other, now, &n, &payload);
    assert_eq!(
        send_signed(now, n, Some(forged))
            .await
            .expect("send")
            .status(),
        401,
        "another private key"
    );
    let stale = now - 301;
    let n = fresh();
    let old = sign_with(&private, stale, &n, &payload);
    assert_eq!(
        send_signed(stale, n, Some(old))
            .await
            .expect("send")
            .status(),
        401,
        "stale"
    );
    // A body of a few hundred kilobytes reaches the gateway in many frames; its
    // digest is taken frame by frame, and one changed event is still caught.
    let batch = |n: usize| {
        let session = Uuid::new_v4();
        let events: Vec<_> = (0..n).map(|i| event("pageview", i, session)).collect();
        serde_json::json!({ "events": events }).to_string()
    };
    let (large, other_large) = (batch(600), batch(600));
    assert!(large.len() > 100_000, "{} bytes", large.len());
    let send_large = |nonce: String, sig: String, body: String| {
        http.post(gw.url("/ingest"))
            .header("x-overwatch-key-id", signed.key_id.to_string())
            .header("content-type", "application/json")
            .header("x-overwatch-timestamp", now.to_string())
            .header("x-overwatch-nonce", nonce)
            .header("x-overwatch-signature", sig)
            .body(body)
            .send()
    };
    let n = fresh();
    let sig = sign_with(&private, now, &n, &large);
    let r = send_large(n, sig, large.clone()).await.expect("send");
    assert_eq!(r.status(), 200, "a large signed body");
    let n = fresh();
    let sig = sign_with(&private, now, &n, &large);
    let r = send_large(n, sig, other_large).await.expect("send");
    assert_eq!(r.status(), 401, "a large body other than the one signed");
    // Its (unused) secret as a bearer key does not stand in for a signature.
    let bearer = http
        .post(gw.url("/ingest"))
        .bearer_auth(signed.api_key())
        .header("content-type", "application/json")
        .body(payload.clone())
        .send()
        .await
        .expect("send");
    assert_eq!(bearer.status(), 401, "a signing key is never a bearer key");
}

/// A ClickHouse of the test's own (so it can be killed), migrated, with one
/// tenant and one issued server key; the config (edited by `edit`) points at it.
async fn private_clickhouse_with_a_key(
    svc: &shared::testkit::Services,
    edit: impl FnOnce(&mut shared::config::Config),
) -> (
    shared::testkit::ClickHouse,
    shared::config::Config,
    Uuid,
    String,
) {
    let ch = shared::testkit::ClickHouse::start(svc);
    let mut cfg = shared::testkit::config(svc);
    cfg.clickhouse.url = ch.url();
    cfg.auth.clickhouse_keys = true;
    edit(&mut cfg);
    shared::testkit::create_topics(&cfg, 1).await;
    let client = shared::store::client(&cfg.clickhouse);
    shared::store::schema::migrate(
        &client,
        &shared::store::schema::SchemaContext::new(&cfg.clickhouse, &cfg.kafka),
    )
    .await
    .expect("migrate");
    let admin = Admin::new(
        client,
        shared::store::Db::new(&cfg.clickhouse.database),
        "keys-test",
    );
    let tenant = admin
        .tenant_create(None, "steady", Tier::Free, false)
        .await
        .expect("tenant");
    let key = admin
        .key_issue(tenant, &server())
        .await
        .expect("issue")
        .api_key();
    (ch, cfg, tenant, key)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn last_snapshot_serves_while_clickhouse_is_down() {
    let svc = services();
    let (mut ch, cfg, _, key) = private_clickhouse_with_a_key(&svc, |_| {}).await;
    let gw = TestGateway::start(cfg).await;
    until_status(&gw, &key, 200, "the key to work").await;

    ch.kill();
    let http = reqwest::Client::new();
    let health = eventually(
        "/health to report the failed reload",
        Duration::from_secs(20),
        || async {
            let h: serde_json::Value = http
                .get(gw.ops_url("/health"))
                .send()
                .await
                .ok()?
                .json()
                .await
                .ok()?;
            h["components"]["keys"]["last_error"]
                .is_string()
                .then_some(h)
        },
    )
    .await;
    assert_eq!(health["components"]["keys"]["status"], "up");
    assert!(health["components"]["keys"]["snapshot_age_seconds"]
        .as_f64()
        .is_some());
    assert_eq!(
        post(&gw, &key).await,
        200,
        "the last good snapshot still serves"
    );
    assert_eq!(
        http.get(gw.url("/health/ready"))
            .send()
            .await
            .expect("ready")
            .status(),
        200
    );
}

/// A key the gateway cannot judge gets 503 with Retry-After, never 401 (SDKs
/// drop events on 401): when ClickHouse has not answered since the start, and
/// once the last snapshot is older than `auth.max_snapshot_age_ms`. Readiness
/// says why. Configured keys are judged without ClickHouse; 401 still means a
/// wrong key when the snapshot is fresh.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_that_cannot_be_judged_get_503_not_401() {
    let svc = services();
    let (mut ch, cfg, tenant, key) = private_clickhouse_with_a_key(&svc, |cfg| {
        cfg.auth.refresh_interval_ms = 200;
        cfg.auth.max_snapshot_age_ms = 1500;
    })
    .await;
    let http = reqwest::Client::new();
    let ready_reasons = |gw: &TestGateway| {
        let (http, url) = (http.clone(), gw.url("/health/ready"));
        async move {
            let r = http.get(url).send().await.expect("ready");
            let status = r.status().as_u16();
            let v: serde_json::Value = r.json().await.expect("json");
            (status, v["reasons"].to_string())
        }
    };

    // ClickHouse down from the start: nothing is known about this key.
    ch.kill();
    let gw = TestGateway::start(cfg.clone()).await;
    let r = http
        .post(gw.url("/ingest"))
        .bearer_auth(&key)
        .json(&serde_json::json!({"events": [event("click", 1, Uuid::new_v4())]}))
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), 503, "not 401: the key may well be valid");
    assert_eq!(r.headers()["retry-after"], "5");
    let body: serde_json::Value = r.json().await.expect("json");
    assert_eq!(body["error"]["code"], "keys_unavailable");
    assert_eq!(
        post(&gw, &format!("{}:wrong", Uuid::new_v4())).await,
        503,
        "unknown either way"
    );
    assert_eq!(
        post(&gw, &gw.key()).await,
        200,
        "a configured key needs no ClickHouse"
    );
    assert_eq!(
        post(&gw, "nocolon").await,
        401,
        "a malformed key is wrong whatever the snapshot"
    );
    let (status, why) = ready_reasons(&gw).await;
    assert_eq!(status, 503);
    assert!(why.contains("has not loaded"), "{why}");

    // ClickHouse back: the key works and a wrong one is 401 again.
    ch.restart();
    until_status(&gw, &key, 200, "the key to load").await;
    assert_eq!(post(&gw, &format!("{tenant}:wrong")).await, 401);
    assert_eq!(ready_reasons(&gw).await.0, 200);

    // ClickHouse gone longer than max_snapshot_age_ms: fail closed with 503.
    ch.kill();
    until_status(&gw, &key, 503, "the snapshot to age out").await;
    assert_eq!(post(&gw, &format!("{tenant}:wrong")).await, 503);
    assert_eq!(
        post(&gw, &gw.key()).await,
        200,
        "configured keys still stand"
    );
    let (status, why) = ready_reasons(&gw).await;
    assert_eq!(status, 503);
    assert!(why.contains("s old"), "{why}");
    ch.restart();
    until_status(&gw, &key, 200, "fresh again").await;
}

/// A reload that suddenly returns no keys (a table recreated, a database
/// half-restored) is not believed on its own: the snapshot keeps serving until a
/// second reload agrees.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_empty_reload_does_not_revoke_every_key() {
    let svc = services();
    let schema = TestSchema::create(&svc).await;
    let admin = admin(&schema);
    let tenant = admin
        .tenant_create(None, "steady", Tier::Free, false)
        .await
        .expect("tenant");
    let key = admin
        .key_issue(tenant, &server())
        .await
        .expect("issue")
        .api_key();
    let store = gateway::auth::KeyStore::new(&schema.config.auth, &schema.config.clickhouse);
    let mut headers = hyper::HeaderMap::new();
    headers.insert(
        "authorization",
        format!("Bearer {key}").parse().expect("header"),
    );
    let ip: std::net::IpAddr = "192.0.2.1".parse().expect("ip");
    store.refresh().await.expect("first load");
    assert!(store.authenticate(&headers, None, ip).is_ok());
    schema
        .client
        .query(&format!("TRUNCATE TABLE `{}`.api_keys", schema.database()))
        .execute()
        .await
        .expect("truncate");
    let first = store
        .refresh()
        .await
        .expect_err("an empty reload is doubted");
    assert!(
        matches!(first, gateway::auth::RefreshError::Emptied { had: 1 }),
        "{first}"
    );
    assert!(
        store.authenticate(&headers, None, ip).is_ok(),
        "still served"
    );
    store
        .refresh()
        .await
        .expect("a second empty reload is believed");
    assert!(matches!(
        store.authenticate(&headers, None, ip),
        Err(gateway::error::ApiError::Unauthorized(_))
    ));
}
