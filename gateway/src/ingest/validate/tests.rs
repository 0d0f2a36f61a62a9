//! Validation, enrichment and the error cap, on batches parsed as the gateway parses them.

use super::*;
use crate::ingest::model::parse;

const T: &str = "00000000-0000-0000-0000-000000000000";
/// When the unit tests' requests arrive: 2024-01-01T01:00:00Z, an hour after
/// the events' timestamps.
const RECEIVED: i64 = 1_704_070_800_000;

fn limits() -> LimitsConfig {
    shared::Config::load_from(None, Vec::new())
        .expect("defaults")
        .limits
}

fn fields(err: ApiError) -> Vec<(usize, String)> {
    let ApiError::Invalid(Problems { details: list, .. }) = err else {
        panic!("expected 422, got {err:?}")
    };
    list.into_iter()
        .map(|f| (f.index.unwrap_or(usize::MAX), f.field))
        .collect()
}

const BASE: &str = r#""id":"550e8400-e29b-41d4-a716-446655440000","session_id":"11111111-1111-1111-1111-111111111111","timestamp":"2024-01-01T00:00:00Z""#;

#[test]
fn lengths_ranges_and_nested_fields_are_checked() {
    let long = "x".repeat(2049);
    let body = format!(
        r#"{{"events":[{{{BASE},"type":"pageview","url":"{long}"}},{{{BASE},"type":"scroll","depth":101}},{{{BASE},"type":"performance","lcp":-1,"screen":{{"width":100001,"height":1}}}}]}}"#
    );
    assert_eq!(
        fields(run(&body).unwrap_err()),
        vec![
            (0, "url".into()),
            (1, "depth".into()),
            (2, "lcp".into()),
            (2, "screen.width".into())
        ]
    );
    // Multi-byte characters count as characters, not bytes.
    let title = "é".repeat(1024);
    let ok = format!(r#"{{"events":[{{{BASE},"type":"pageview","title":"{title}"}}]}}"#);
    assert!(run(&ok).is_ok());
}

#[test]
fn properties_count_depth_and_size_are_limited() {
    let l = limits();
    let many: Vec<String> = (0..=l.max_properties)
        .map(|k| format!(r#""k{k}":1"#))
        .collect();
    let deep = format!(
        "{}1{}",
        r#"{"a":"#.repeat(l.max_properties_depth + 1),
        "}".repeat(l.max_properties_depth + 1)
    );
    let big = format!(r#"{{"blob":"{}"}}"#, "x".repeat(l.max_properties_bytes));
    for (props, why) in [
        (format!("{{{}}}", many.join(",")), "keys"),
        (deep, "levels"),
        (big, "bytes"),
        ("[1,2]".to_string(), "object"),
    ] {
        let body =
            format!(r#"{{"events":[{{{BASE},"type":"custom","name":"n","properties":{props}}}]}}"#);
        let ApiError::Invalid(Problems { details: list, .. }) = run(&body).unwrap_err() else {
            panic!("expected 422 for {why}")
        };
        assert_eq!(list.len(), 1, "{list:?}");
        assert_eq!(list[0].field, "properties");
        assert!(list[0].reason.contains(why), "{why}: {}", list[0].reason);
    }
    // At the limits exactly: accepted.
    let deep_ok = format!(
        "{}1{}",
        r#"{"a":"#.repeat(l.max_properties_depth),
        "}".repeat(l.max_properties_depth)
    );
    let body =
        format!(r#"{{"events":[{{{BASE},"type":"custom","name":"n","properties":{deep_ok}}}]}}"#);
    assert!(run(&body).is_ok(), "depth at the limit is fine");
}

fn enricher() -> &'static Enricher {
    static E: std::sync::OnceLock<Enricher> = std::sync::OnceLock::new();
    E.get_or_init(|| {
        let cfg = shared::Config::load_from(None, Vec::new()).expect("defaults");
        Enricher::new(&cfg.gateway, &cfg.enrichment).expect("enricher")
    })
}

fn with(max_events: usize, limits: &LimitsConfig, body: &str) -> Result<Rows, ApiError> {
    let mut buf = body.as_bytes().to_vec();
    let shape = crate::ingest::shape::ShapeLimits::new(max_events, limits);
    let batch = crate::ingest::model::parse_bounded(&mut buf, shape)?;
    let ctx = Context {
        tenant: Uuid::nil(),
        received_at_ms: RECEIVED,
        window: TimeWindow {
            past_hours: limits.max_event_age_hours,
            future_minutes: limits.max_future_minutes,
        },
        max_events,
        limits,
        enricher: enricher(),
        client_ip: "192.0.2.10".parse().expect("ip"),
        header_ua: Some("curl/8.0.1"),
        anonymize_ip: false,
        max_ua_parses: 32,
        max_details: 100,
    };
    prepare(&batch, &ctx)
}

fn run(body: &str) -> Result<Rows, ApiError> {
    with(1000, &limits(), body)
}

#[test]
fn valid_pageview_becomes_a_row() {
    let out = run(r#"{"events":[{"id":"550e8400-e29b-41d4-a716-446655440000","session_id":"11111111-1111-1111-1111-111111111111","timestamp":"2024-01-01T00:00:00.250Z","type":"pageview","title":"Ho\"me","path":"/"}]}"#).expect("valid");
    assert_eq!(out.len(), 1);
    assert_eq!(out.kind(0), EventType::Pageview);
    let v: serde_json::Value = serde_json::from_slice(out.row(0)).expect("json");
    assert_eq!(v["tenant_id"], T, "tenant filled from the key");
    assert_eq!(v["timestamp_ms"], 1_704_067_200_250i64);
    assert_eq!(v["title"], "Ho\"me");
    assert_eq!(v["properties"], "{}");
    assert!(v.get("lcp").is_none());
}

#[test]
fn every_problem_is_listed_with_index_and_field() {
    let err = run(r#"{"events":[{"type":"pageview"},{"id":"x","session_id":"11111111-1111-1111-1111-111111111111","timestamp":"yesterday","type":"bogus"}]}"#).unwrap_err();
    let ApiError::Invalid(Problems { details: list, .. }) = err else {
        panic!("expected 422, got {err:?}")
    };
    let got: Vec<(Option<usize>, &str)> =
        list.iter().map(|f| (f.index, f.field.as_str())).collect();
    assert_eq!(
        got,
        vec![
            (Some(0), "id"),
            (Some(0), "session_id"),
            (Some(0), "timestamp"),
            (Some(1), "id"),
            (Some(1), "timestamp"),
            (Some(1), "type"),
        ]
    );
}

#[test]
fn foreign_tenant_is_forbidden() {
    let err = run(r#"{"events":[{"id":"550e8400-e29b-41d4-a716-446655440000","tenant_id":"22222222-2222-2222-2222-222222222222","session_id":"11111111-1111-1111-1111-111111111111","timestamp":"2024-01-01T00:00:00Z","type":"click"}]}"#).unwrap_err();
    assert!(
        matches!(err, ApiError::ForeignTenant { index: 0, .. }),
        "{err:?}"
    );
}

#[test]
fn empty_and_oversized_batches_are_rejected() {
    assert!(matches!(run(r#"{"events":[]}"#), Err(ApiError::Invalid(_))));
    let one = r#"{"id":"550e8400-e29b-41d4-a716-446655440000","session_id":"11111111-1111-1111-1111-111111111111","timestamp":"2024-01-01T00:00:00Z","type":"scroll","depth":50}"#;
    let body = format!("{{\"events\":[{}]}}", [one; 3].join(","));
    assert!(matches!(
        with(2, &limits(), &body),
        Err(ApiError::Invalid(_))
    ));
    assert_eq!(with(3, &limits(), &body).expect("fits").len(), 3);
}

#[test]
fn enrichment_fields_are_filled() {
    let body = format!(
        r#"{{"events":[{{{BASE},"type":"pageview","sent_at":"2024-01-01T00:00:10Z"}},{{{BASE},"type":"click","ip":"198.51.100.23","user_agent":"Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0.0.0 Safari/537.36"}},{{{BASE},"type":"click","ip":"nope"}}]}}"#
    );
    assert_eq!(fields(run(&body).unwrap_err()), vec![(2, "ip".to_string())]);
    let body = body.replace(r#","ip":"nope""#, "");
    let out = run(&body).expect("valid");
    let v: Vec<serde_json::Value> = (0..out.len())
        .map(|i| serde_json::from_slice(out.row(i)).expect("json"))
        .collect();
    // Sent 10 s after the event: shifted by the skew to the arrival time.
    let ts = 1_704_067_200_000i64;
    assert_eq!(v[0]["timestamp_ms"], ts, "the client's timestamp is kept");
    assert_eq!(
        v[0]["corrected_timestamp_ms"],
        ts + (RECEIVED - (ts + 10_000))
    );
    assert_eq!(v[1]["corrected_timestamp_ms"], ts);
    // The request's user agent (curl) for an event without one: a bot.
    assert_eq!(v[0]["client_ip"], "192.0.2.10");
    assert_eq!(v[0]["is_bot"], true);
    assert_eq!(v[1]["browser"], "Chrome");
    assert_eq!(v[1]["browser_version"], "120.0.0");
    assert_eq!(v[1]["os"], "Windows");
    assert_eq!(v[1]["is_bot"], false);
    assert_eq!(v[1]["ip"], "198.51.100.23");
}

#[test]
fn interleaved_user_agents_each_enrich_their_own_events() {
    // A server SDK's batch interleaves its users' agents: more distinct ones
    // than the request's memo holds, in turns, and each event must still get
    // its own agent's browser (the memo is keyed by the whole string).
    let agents: Vec<String> = (0..(super::MEMO_UAS + 5))
        .map(|i| format!("Mozilla/5.0 (X11; Linux x86_64; rv:{i}.0) Gecko/20100101 Firefox/{i}.0"))
        .chain(["curl/8.0.1".to_string()])
        .collect();
    let events: Vec<String> = (0..200)
        .map(|i| {
            let ua = &agents[(i * 7) % agents.len()];
            format!(r#"{{{BASE},"type":"pageview","user_agent":"{ua}"}}"#)
        })
        .collect();
    let out = run(&format!(r#"{{"events":[{}]}}"#, events.join(","))).expect("valid");
    for i in 0..200 {
        let v: serde_json::Value = serde_json::from_slice(out.row(i)).expect("json");
        let ua = &agents[(i * 7) % agents.len()];
        assert_eq!(v["user_agent"], ua.as_str());
        if let Some(version) = ua.strip_suffix(".0").and_then(|u| u.rsplit('/').next()) {
            if ua.starts_with("Mozilla") {
                assert_eq!(v["browser"], "Firefox", "event {i}");
                assert_eq!(v["browser_version"], format!("{version}.0"), "event {i}");
                assert_eq!(v["is_bot"], false, "event {i}");
                continue;
            }
        }
        assert_eq!(v["is_bot"], true, "event {i}: {ua}");
        assert_eq!(v["client_ip"], "192.0.2.10");
    }
}

#[test]
fn custom_properties_pass_through_as_json_text() {
    let out = run(r#"{"events":[{"id":"550e8400-e29b-41d4-a716-446655440000","session_id":"11111111-1111-1111-1111-111111111111","timestamp":"2024-01-01T00:00:00Z","type":"custom","name":"signup","properties":{"plan":"pro","n":3,"nested":{"a":[1,2]}}}]}"#).expect("valid");
    let v: serde_json::Value = serde_json::from_slice(out.row(0)).expect("json");
    let props: serde_json::Value =
        serde_json::from_str(v["properties"].as_str().expect("string")).expect("props json");
    assert_eq!(
        props,
        serde_json::json!({"plan":"pro","n":3,"nested":{"a":[1,2]}})
    );
}

#[test]
fn unknown_fields_and_bad_json_are_parse_errors() {
    let mut buf = br#"{"events":[{"idd":"x"}]}"#.to_vec();
    assert!(parse(&mut buf).unwrap_err().contains("idd"));
    let mut buf = br#"{"events":[{"#.to_vec();
    assert!(parse(&mut buf).is_err());
    let mut buf = br#"{"events":[{"id": nope}]}"#.to_vec();
    let msg = parse(&mut buf).unwrap_err();
    assert!(
        msg.contains("at character 18"),
        "the position is reported: {msg}"
    );
}

fn at(ts: &str, sent_at: Option<&str>) -> String {
    let sent = sent_at.map_or(String::new(), |s| format!(r#","sent_at":"{s}""#));
    format!(
        r#"{{"id":"550e8400-e29b-41d4-a716-446655440000","session_id":"11111111-1111-1111-1111-111111111111","timestamp":"{ts}"{sent},"type":"click"}}"#
    )
}

#[test]
fn client_times_outside_the_window_are_refused_by_index_with_a_stable_code() {
    let l = limits();
    // RECEIVED is 2024-01-01T01:00Z; defaults: 168 h back, 60 min ahead.
    let ok = [
        at("2023-12-25T01:00:00Z", None), // exactly 168 h old
        at("2024-01-01T02:00:00Z", None), // exactly 60 min ahead
        at("2024-01-01T00:00:00Z", Some("2024-01-01T00:59:00Z")),
    ];
    let body = format!(r#"{{"events":[{}]}}"#, ok.join(","));
    assert_eq!(run(&body).expect("inside the window").len(), 3);
    let bad = [
        at("0001-01-01T00:00:00Z", None),
        at("9999-12-31T23:59:59Z", None),
        at("2023-12-25T00:59:59.999Z", None), // 1 ms too old
        at("2024-01-01T02:00:00.001Z", None), // 1 ms too far ahead
        at("2024-01-01T00:00:00Z", Some("1970-01-01T00:00:00Z")),
    ];
    let body = format!(r#"{{"events":[{},{}]}}"#, ok[0], bad.join(","));
    let ApiError::Invalid(Problems { details: list, .. }) = run(&body).unwrap_err() else {
        panic!("expected 422")
    };
    let got: Vec<(Option<usize>, &str, Option<&str>)> = list
        .iter()
        .map(|f| (f.index, f.field.as_str(), f.code))
        .collect();
    let code = Some("timestamp_out_of_range");
    assert_eq!(
        got,
        vec![
            (Some(1), "timestamp", code),
            (Some(2), "timestamp", code),
            (Some(3), "timestamp", code),
            (Some(4), "timestamp", code),
            (Some(5), "sent_at", code),
        ]
    );
    assert!(
        list[0].reason.contains("workerd import"),
        "{}",
        list[0].reason
    );
    assert!(list[1].reason.contains("clock"), "{}", list[1].reason);
    // A wider configured window takes the old event.
    let mut wide = l.clone();
    wide.max_event_age_hours = 24 * 365;
    let old = format!(r#"{{"events":[{}]}}"#, at("2023-02-01T00:00:00Z", None));
    assert!(run(&old).is_err());
    assert!(with(1000, &wide, &old).is_ok());
}

#[test]
fn accepted_times_never_span_more_months_than_the_window() {
    // Whatever a batch holds, the accepted client times fall in at most the
    // months the window touches: ClickHouse's insert of one consumed block
    // never meets its partition limit because of one request.
    let l = limits();
    let window_ms = (l.max_event_age_hours * 3_600_000 + l.max_future_minutes * 60_000) as i64;
    assert!(window_ms < 62 * 86_400_000, "two months at most by default");
    let w = TimeWindow {
        past_hours: l.max_event_age_hours,
        future_minutes: l.max_future_minutes,
    };
    for t in [
        i64::MIN,
        -62_135_596_800_000,
        0,
        253_402_300_799_000,
        i64::MAX,
    ] {
        assert!(!w.contains(t, RECEIVED), "{t}");
    }
}

#[test]
fn problems_are_collected_up_to_the_cap_and_the_rest_counted() {
    let bad = r#"{"id":"x","session_id":"y","timestamp":"z","type":"w"}"#;
    let body = format!("{{\"events\":[{}]}}", vec![bad; 300].join(","));
    let mut buf = body.into_bytes();
    let l = limits();
    let batch = parse(&mut buf).expect("parses");
    let ctx = Context {
        tenant: Uuid::nil(),
        received_at_ms: RECEIVED,
        window: TimeWindow {
            past_hours: l.max_event_age_hours,
            future_minutes: l.max_future_minutes,
        },
        max_events: 1000,
        limits: &l,
        enricher: enricher(),
        client_ip: "192.0.2.10".parse().expect("ip"),
        header_ua: None,
        anonymize_ip: false,
        max_ua_parses: 32,
        max_details: 5,
    };
    let Err(ApiError::Invalid(p)) = prepare(&batch, &ctx) else {
        panic!("expected 422")
    };
    // Four problems per event: id, session_id, timestamp, type.
    assert_eq!(
        (p.details.len(), p.omitted, p.events),
        (5, 4 * 300 - 5, 300)
    );
}

/// Rows are written one after the other into the request's buffer: each row
/// is its own JSON only, whatever came before it, and holds no newline (the
/// separator of rows in a message), even when a field has one.
#[test]
fn each_row_is_its_own_line_in_the_buffer() {
    let titles = [
        "a".repeat(1000),
        r"b\nc".to_string(),
        "é".repeat(1024),
        "c".repeat(10),
    ];
    let events: Vec<String> = titles
        .iter()
        .map(|t| format!(r#"{{{BASE},"type":"pageview","title":"{t}"}}"#))
        .collect();
    let out = run(&format!(r#"{{"events":[{}]}}"#, events.join(","))).expect("valid");
    assert_eq!(out.len(), titles.len());
    let mut total = 0;
    for (i, title) in titles.iter().enumerate() {
        let row = out.row(i);
        assert!(!row.contains(&b'\n'), "row {i} holds a newline");
        let v: serde_json::Value = serde_json::from_slice(row).expect("one JSON row");
        assert_eq!(v["title"], title.replace("\\n", "\n").as_str());
        total += row.len() + 1;
    }
    assert_eq!(out.buffered_bytes(), total, "rows and their newlines only");
}
