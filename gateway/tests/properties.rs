//! Property tests of untrusted-body handling (the fuzz target explores further):
//! arbitrary bytes never panic the decoder, parser or validator, and any batch of
//! valid events is accepted whole with every field carried into the broker row.

use gateway::enrich::Enricher;
use gateway::ingest::{decode, model, validate};
use proptest::prelude::*;
use shared::config::Config;

fn setup() -> &'static (Config, Enricher) {
    static S: std::sync::OnceLock<(Config, Enricher)> = std::sync::OnceLock::new();
    S.get_or_init(|| {
        let cfg = Config::load_from(None, Vec::new()).expect("defaults");
        let e = Enricher::new(&cfg.gateway, &cfg.enrichment).expect("enricher");
        (cfg, e)
    })
}

fn ctx(s: &'static (Config, Enricher)) -> validate::Context<'static> {
    validate::Context {
        tenant: uuid::Uuid::nil(),
        // One hour after the timestamps the generated events carry.
        received_at_ms: 1_714_979_289_123 + 3_600_000,
        window: shared::event::TimeWindow {
            past_hours: s.0.limits.max_event_age_hours,
            future_minutes: s.0.limits.max_future_minutes,
        },
        max_events: s.0.gateway.max_events_per_batch,
        limits: &s.0.limits,
        enricher: &s.1,
        client_ip: "192.0.2.1".parse().expect("ip"),
        header_ua: Some("Mozilla/5.0 (X11; Linux x86_64; rv:121.0) Gecko/20100101 Firefox/121.0"),
        anonymize_ip: false,
        max_ua_parses: s.0.enrichment.max_ua_parses_per_request,
        max_details: 100,
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn arbitrary_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..2048), gz in any::<bool>()) {
        let s = setup();
        let mut buf = if gz {
            match decode::gunzip(&data, 1 << 20) { Ok(b) => b, Err(_) => return Ok(()) }
        } else { data };
        if let Ok(batch) = model::parse(&mut buf) {
            let _ = validate::prepare(&batch, &ctx(s));
        }
    }

    #[test]
    fn valid_events_round_trip(
        events in proptest::collection::vec(
            (0usize..5, "[\\PC]{0,40}", 0.0f64..100.0, proptest::collection::btree_map("[a-z]{1,8}", any::<i32>(), 0..5)),
            1..50,
        )
    ) {
        let s = setup();
        let types = ["pageview", "click", "scroll", "performance", "custom"];
        let sent: Vec<serde_json::Value> = events.iter().map(|(t, text, n, props)| {
            let mut e = serde_json::json!({
                "id": uuid::Uuid::new_v4().to_string(),
                "session_id": uuid::Uuid::new_v4().to_string(),
                "timestamp": "2024-05-06T07:08:09.123Z",
                "type": types[*t],
            });
            match *t {
                0 => { e["title"] = text.clone().into(); }
                1 => { e["text"] = text.clone().into(); e["x"] = (*n).into(); }
                2 => { e["depth"] = (*n).into(); }
                3 => { e["lcp"] = (*n).into(); }
                _ => { e["name"] = format!("n{}", text.len()).into(); e["properties"] = serde_json::to_value(props).expect("props"); }
            }
            e
        }).collect();
        let mut buf = serde_json::to_vec(&serde_json::json!({"events": sent})).expect("json");
        let batch = model::parse(&mut buf).expect("valid JSON parses");
        let out = validate::prepare(&batch, &ctx(s)).expect("valid events are accepted");
        prop_assert_eq!(out.len(), sent.len());
        for (i, e) in sent.iter().enumerate() {
            // One line per row: the rows of a message are separated by newlines.
            prop_assert!(!out.row(i).contains(&b'\n'), "row {} holds a newline", i);
            let row: serde_json::Value = serde_json::from_slice(out.row(i)).expect("row json");
            prop_assert_eq!(&row["id"], &e["id"]);
            prop_assert_eq!(&row["type"], &e["type"]);
            prop_assert_eq!(row["timestamp_ms"].as_i64(), Some(1_714_979_289_123));
            for f in ["title", "text", "x", "depth", "lcp", "name"] {
                if !e[f].is_null() {
                    prop_assert_eq!(&row[f], &e[f], "{}", f);
                }
            }
            if let Some(p) = e.get("properties") {
                let stored: serde_json::Value = serde_json::from_str(row["properties"].as_str().expect("text")).expect("props");
                prop_assert_eq!(&stored, p);
            }
            prop_assert_eq!(&row["browser"], "Firefox");
        }
    }
}
