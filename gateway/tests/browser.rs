//! A real browser: headless Chromium (Debian's package, driven by
//! playwright-core) loads a page on its own origin that runs posthog-js and
//! @segment/analytics-next from node_modules (no CDN: Segment's settings come
//! from the gateway), captures a pageview, a click (autocapture) and custom
//! events, identifies the user, sends native `/ingest` requests through `fetch`
//! (Bearer browser key, CORS), `sendBeacon` (percent-encoded key in the
//! query string) and `fetch(keepalive)` on `pagehide`, and navigates away
//! (unload delivery). Every event is then
//! found in ClickHouse with its identity.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::process::Stdio;
use std::time::Duration;

use common::TestGateway;
use shared::domain::Tier;
use shared::testkit::{eventually, free_port, select_json, services, TestSchema};
use uuid::Uuid;
use workerd::admin::{Admin, KeySpec};

fn chromium() {
    assert!(
        std::path::Path::new("/usr/bin/chromium").exists(),
        "/usr/bin/chromium is missing (run `make provision`)"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn posthog_js_segment_and_native_requests_from_a_real_browser() {
    chromium();
    let mut node = common::sdk::node(
        "browser.cjs",
        &["playwright-core", "posthog-js", "@segment/analytics-next"],
    );
    let svc = services();
    let schema = TestSchema::create(&svc).await;
    let gw = TestGateway::start(schema.config.clone()).await;
    let page_port = free_port();
    let origin = format!("http://127.0.0.1:{page_port}");
    let admin = Admin::new(
        schema.client.clone(),
        shared::store::Db::new(schema.database()),
        "browser-test",
    );
    let tenant = admin
        .tenant_create(None, "browser", Tier::Paid, false)
        .await
        .expect("tenant");
    let key = admin
        .key_issue(
            tenant,
            &KeySpec {
                kind: "browser".into(),
                allowed_origins: vec![origin.clone()],
                ..Default::default()
            },
        )
        .await
        .expect("browser key")
        .api_key();
    // The gateway on another origin (localhost, not 127.0.0.1): real CORS.
    let gw_url = format!("http://localhost:{}", gw.addr.port());
    eventually(
        "the browser key loaded",
        Duration::from_secs(30),
        || async {
            let r = reqwest::Client::new()
                .post(format!("{gw_url}/ingest"))
                .bearer_auth(&key)
                .header("origin", &origin)
                .json(
                    &serde_json::json!({"events": [common::event("pageview", 0, Uuid::new_v4())]}),
                )
                .send()
                .await
                .ok()?;
            (r.status() == 200).then_some(())
        },
    )
    .await;

    let run = Uuid::new_v4().simple().to_string();
    let (fetch_id, beacon_id, keepalive_id, session) = (
        Uuid::new_v4(),
        Uuid::new_v4(),
        Uuid::new_v4(),
        Uuid::new_v4(),
    );
    let cfg = serde_json::json!({
        "gw": gw_url, "key": key, "run": run, "page_port": page_port,
        "fetch_id": fetch_id, "beacon_id": beacon_id, "keepalive_id": keepalive_id, "session": session,
    });
    let mut child = node
        .env("OW_CONFIG", cfg.to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("run node");
    // The browser's summary once it has left the page (it stays open, so its
    // unload deliveries can finish, until told to close).
    let stdout = child.stdout.take().expect("stdout");
    let summary: serde_json::Value = tokio::task::spawn_blocking(move || {
        let mut seen = Vec::new();
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) {
                if v["left"] == true || v.get("failed").is_some() {
                    return v;
                }
            }
            seen.push(line);
        }
        panic!(
            "the browser script ended without a summary:\n{}",
            seen.join("\n")
        );
    })
    .await
    .expect("join");
    assert!(
        summary.get("failed").is_none(),
        "the browser run failed: {summary}"
    );
    assert_eq!(summary["fetch"], 200, "{summary}");

    let db = schema.database();
    let want = |rows: &[serde_json::Value]| {
        let has = |f: &dyn Fn(&serde_json::Value) -> bool| rows.iter().any(f);
        let props = |r: &serde_json::Value| -> serde_json::Value {
            serde_json::from_str(r["properties"].as_str().unwrap_or("{}")).unwrap_or_default()
        };
        vec![
            (
                "posthog-js $pageview",
                has(&|r| r["type"] == "pageview" && r["path"] == "/" && props(r)["$lib"] == "web"),
            ),
            (
                "posthog-js autocapture click",
                has(&|r| r["type"] == "click" && r["text"] == "Buy now"),
            ),
            (
                "posthog-js capture",
                has(&|r| r["name"] == "ow-posthog-custom" && props(r)["run"] == run.as_str()),
            ),
            (
                "posthog-js identify",
                has(&|r| {
                    r["name"] == "$identify"
                        && r["distinct_id"] == format!("ph-user-{run}").as_str()
                }),
            ),
            (
                "posthog-js unload ($pageleave)",
                has(&|r| r["name"] == "$pageleave"),
            ),
            (
                "analytics-next page",
                has(&|r| {
                    r["type"] == "pageview"
                        && props(r)["run"] == run.as_str()
                        && r["anonymous_id"] != ""
                }),
            ),
            (
                "analytics-next track",
                has(&|r| r["name"] == "ow-segment-track" && props(r)["run"] == run.as_str()),
            ),
            (
                "analytics-next identify",
                has(&|r| {
                    r["name"] == "$identify" && r["user_id"] == format!("seg-user-{run}").as_str()
                }),
            ),
            (
                "native fetch (Bearer, CORS)",
                has(&|r| {
                    r["id"] == fetch_id.to_string().as_str()
                        && r["user_id"] == format!("native-{run}").as_str()
                }),
            ),
            (
                "native sendBeacon (?api_key=, encoded)",
                has(&|r| r["id"] == beacon_id.to_string().as_str() && r["path"] == "/leaving"),
            ),
            (
                "native fetch(keepalive) on pagehide",
                has(&|r| {
                    r["id"] == keepalive_id.to_string().as_str()
                        && r["name"] == "ow-native-keepalive"
                }),
            ),
        ]
    };
    // Until every event is there, or 60 s: then say which are missing.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let (found, rows) = loop {
        let rows = select_json(
            &schema.client,
            &format!(
                "SELECT toString(id) AS id, type, name, path, text, distinct_id, user_id, \
                 anonymous_id, properties FROM `{db}`.events FINAL WHERE tenant_id = ?"
            ),
            &[tenant.to_string()],
        )
        .await;
        let w = want(&rows);
        if w.iter().all(|(_, ok)| *ok) || std::time::Instant::now() > deadline {
            break (w, rows);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    // Now the browser may close.
    if let Some(mut stdin) = child.stdin.take() {
        let _ = stdin.write_all(b"close\n");
    }
    let status = tokio::task::spawn_blocking(move || child.wait())
        .await
        .expect("join");
    assert!(
        status.map(|s| s.success()).unwrap_or(false),
        "the browser script failed"
    );
    let missing: Vec<&str> = found
        .iter()
        .filter(|(_, ok)| !ok)
        .map(|(w, _)| *w)
        .collect();
    assert!(
        missing.is_empty(),
        "missing in ClickHouse: {missing:?}\nbrowser: {summary}\nstored rows:\n{}",
        rows.iter()
            .map(|r| r.to_string())
            .collect::<Vec<_>>()
            .join("\n")
    );
    eprintln!(
        "Chromium {}, posthog-js {}, @segment/analytics-next {}:\n{}",
        summary["chromium"],
        summary["posthog_js"],
        summary["analytics_next"],
        found
            .iter()
            .map(|(what, ok)| format!(
                "| {what} | {} |",
                if *ok { "in ClickHouse" } else { "missing" }
            ))
            .collect::<Vec<_>>()
            .join("\n")
    );
}
