//! The real SDKs from npm (pinned in gateway/tests/sdk/package.json, installed
//! into the cache by `make provision`) send to the gateway unchanged, and
//! every call lands in ClickHouse with its identity.

mod common;

use std::collections::BTreeMap;

use common::TestGateway;
use shared::testkit::{eventually, select_json, services, TestSchema, CONSUMED_WITHIN};
use uuid::Uuid;

fn run_node(script: &str, env: &[(&str, String)]) -> serde_json::Value {
    let out = common::sdk::node(script, &["@segment/analytics-node", "posthog-node"])
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .output()
        .expect("run node (is Node.js installed?)");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{script} failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_str(stdout.lines().last().expect("a summary line")).expect("summary json")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn segment_analytics_node_calls_land_with_their_identity() {
    let svc = services();
    let schema = TestSchema::create(&svc).await;
    let gw = TestGateway::start(schema.config.clone()).await;
    let calls = ["page", "track", "identify", "alias", "group", "screen"];
    let ids: BTreeMap<&str, String> = calls
        .iter()
        .map(|c| (*c, Uuid::new_v4().to_string()))
        .collect();
    let summary = run_node(
        "segment-node.cjs",
        &[
            ("OW_URL", format!("http://{}", gw.addr)),
            ("OW_WRITE_KEY", gw.key()),
            ("OW_IDS", serde_json::to_string(&ids).expect("ids")),
        ],
    );
    assert_eq!(summary["errors"], serde_json::json!([]), "{summary}");

    let db = schema.database();
    let rows = eventually("every Segment call in ClickHouse", CONSUMED_WITHIN, || async {
        let rows = select_json(
            &schema.client,
            &format!(
                "SELECT toString(id) AS id, type, name, title, path, referrer, distinct_id, user_id, \
                 anonymous_id, properties FROM `{db}`.events FINAL WHERE tenant_id = ?"
            ),
            &[gw.tenant.to_string()],
        )
        .await;
        (rows.len() >= calls.len()).then_some(rows)
    })
    .await;
    let by_id: BTreeMap<String, serde_json::Value> = rows
        .into_iter()
        .map(|r| (r["id"].as_str().expect("id").to_string(), r))
        .collect();
    let user = format!("user-{}", ids["track"]);
    let anon = format!("anon-{}", ids["track"]);
    let mut table = Vec::new();
    for call in calls {
        let r = by_id
            .get(&ids[call])
            .unwrap_or_else(|| panic!("the {call} call is not in ClickHouse: {by_id:?}"));
        let props: serde_json::Value =
            serde_json::from_str(r["properties"].as_str().expect("properties")).expect("json");
        match call {
            "page" => {
                assert_eq!(
                    (r["type"].as_str(), r["title"].as_str()),
                    (Some("pageview"), Some("Pricing"))
                );
                assert_eq!(r["path"], "/pricing");
                assert_eq!(r["referrer"], "https://search.example/");
                assert_eq!(
                    (r["anonymous_id"].as_str(), r["distinct_id"].as_str()),
                    (Some(anon.as_str()), Some(anon.as_str()))
                );
            }
            "track" => {
                assert_eq!(
                    (r["type"].as_str(), r["name"].as_str()),
                    (Some("custom"), Some("Order Completed"))
                );
                assert_eq!(props["revenue"], 42.5);
                assert_eq!(r["user_id"], user.as_str());
                assert_eq!(r["anonymous_id"], anon.as_str());
                assert_eq!(r["distinct_id"], user.as_str());
                assert_eq!(
                    props["$context"]["library"]["name"],
                    "@segment/analytics-node"
                );
            }
            "identify" => {
                assert_eq!(r["name"], "$identify");
                assert_eq!(props["traits"]["email"], "ada@example.com");
            }
            "alias" => {
                assert_eq!(r["name"], "$alias");
                assert_eq!(props["previousId"], anon.as_str());
            }
            "group" => {
                assert_eq!(r["name"], "$group");
                assert_eq!(props["groupId"], "acme");
            }
            "screen" => {
                assert_eq!(
                    (r["type"].as_str(), r["title"].as_str()),
                    (Some("pageview"), Some("Checkout"))
                );
                assert_eq!(props["$screen"], true);
            }
            _ => unreachable!(),
        }
        table.push(format!(
            "| {} | {} | {call} | accepted (no SDK error) | yes ({} {}) |",
            summary["sdk"].as_str().unwrap_or("?"),
            summary["version"].as_str().unwrap_or("?"),
            r["type"].as_str().unwrap_or(""),
            r["name"].as_str().unwrap_or(""),
        ));
    }
    eprintln!(
        "| SDK | version | call | status | in ClickHouse |\n|---|---|---|---|---|\n{}",
        table.join("\n")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn posthog_node_calls_land_with_their_identity() {
    let svc = services();
    let schema = TestSchema::create(&svc).await;
    let gw = TestGateway::start(schema.config.clone()).await;
    let ids: BTreeMap<&str, String> = ["capture", "pageview"]
        .iter()
        .map(|c| (*c, Uuid::new_v4().to_string()))
        .collect();
    let summary = run_node(
        "posthog-node.cjs",
        &[
            ("OW_URL", format!("http://{}", gw.addr)),
            ("OW_KEY", gw.key()),
            ("OW_IDS", serde_json::to_string(&ids).expect("ids")),
        ],
    );
    assert_eq!(summary["errors"], serde_json::json!([]), "{summary}");
    let db = schema.database();
    let rows = eventually(
        "every posthog-node call in ClickHouse",
        CONSUMED_WITHIN,
        || async {
            let rows = select_json(
                &schema.client,
                &format!(
                    "SELECT toString(id) AS id, type, name, path, url, distinct_id, properties \
                 FROM `{db}`.events FINAL WHERE tenant_id = ?"
                ),
                &[gw.tenant.to_string()],
            )
            .await;
            (rows.len() >= 5).then_some(rows)
        },
    )
    .await;
    let user = format!("user-{}", ids["capture"]);
    let find = |f: &dyn Fn(&serde_json::Value) -> bool, what: &str| {
        rows.iter()
            .find(|r| f(r))
            .unwrap_or_else(|| panic!("no {what} in {rows:?}"))
            .clone()
    };
    let props = |r: &serde_json::Value| -> serde_json::Value {
        serde_json::from_str(r["properties"].as_str().expect("properties")).expect("json")
    };
    let capture = find(&|r| r["id"] == ids["capture"].as_str(), "capture");
    assert_eq!(
        (capture["type"].as_str(), capture["name"].as_str()),
        (Some("custom"), Some("Order Completed"))
    );
    assert_eq!(capture["distinct_id"], user.as_str());
    assert_eq!(props(&capture)["revenue"], 42.5);
    assert_eq!(props(&capture)["$lib"], "posthog-node");
    let page = find(&|r| r["id"] == ids["pageview"].as_str(), "pageview");
    assert_eq!(
        (page["type"].as_str(), page["path"].as_str()),
        (Some("pageview"), Some("/pricing"))
    );
    let identify = find(&|r| r["name"] == "$identify", "$identify");
    assert_eq!(identify["distinct_id"], user.as_str());
    assert_eq!(props(&identify)["$set"]["email"], "ada@example.com");
    let alias = find(&|r| r["name"] == "$create_alias", "$create_alias");
    assert_eq!(props(&alias)["alias"], format!("anon-{}", ids["capture"]));
    let group = find(&|r| r["name"] == "$groupidentify", "$groupidentify");
    assert_eq!(props(&group)["$group_key"], "acme");
    let v = summary["version"].as_str().unwrap_or("?");
    eprintln!(
        "| SDK | version | call | status | in ClickHouse |\n|---|---|---|---|---|\n\
         | posthog-node | {v} | capture | accepted | yes (custom Order Completed) |\n\
         | posthog-node | {v} | capture $pageview | accepted | yes (pageview /pricing) |\n\
         | posthog-node | {v} | identify | accepted | yes (custom $identify) |\n\
         | posthog-node | {v} | alias | accepted | yes (custom $create_alias) |\n\
         | posthog-node | {v} | groupIdentify | accepted | yes (custom $groupidentify) |"
    );
}
