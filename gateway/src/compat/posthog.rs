//! PostHog's capture API: `/batch`, `/e`, `/i/v0/e`, `/capture`, `/track`,
//! with the body shapes PostHog's clients send (`{"api_key", "batch": [...]}`,
//! a bare array, or one event), mapped onto Overwatch's events (the table is in
//! `docs/api.md`).
//!
//! - The project token (`api_key`, `token`, or `properties.token` of the first
//!   event) is the Overwatch key.
//! - `uuid` is the event id; `distinct_id` the distinct id; `$session_id` (a
//!   UUID) the session, else one stable session per distinct id.
//! - `$pageview` is a pageview, `$autocapture` a click, everything else
//!   (`$identify`, `$create_alias`, `$groupidentify`, custom names) a custom
//!   event of that name. Properties with a column (`$current_url`,
//!   `$pathname`, `$referrer`, `$raw_user_agent`, `$ip`, screen and viewport
//!   sizes, `$browser_language`, `$timezone`, `$el_text`) go there; every other
//!   property is kept in `properties`, any other event field in
//!   `properties.$extra`; the token (a credential) is not stored.

use std::borrow::Cow;

use simd_json::prelude::*;
use simd_json::OwnedValue;

use super::{object, stable_uuid, text};
use crate::error::ApiError;
use crate::ingest::model::{Dimensions, EventIn};

/// The body as JSON bytes: posthog-js posts `data=<base64>` forms on page
/// unload (`?compression=base64`), older versions `data=<lz-string base64>`
/// (`?compression=lz64`), and gzip without saying so (`text/plain`,
/// recognised by its magic bytes); forms and gzip may be combined.
/// Decompression stops at `max` bytes, as for `Content-Encoding: gzip`.
pub fn unwrap_body(body: Vec<u8>, form: bool, lz64: bool, max: u64) -> Result<Vec<u8>, ApiError> {
    use base64::Engine as _;
    let mut b = body;
    if form || lz64 || b.starts_with(b"data=") {
        let text = std::str::from_utf8(&b)
            .map_err(|_| ApiError::MalformedBody("a form body that is not UTF-8".into()))?;
        let data = crate::auth::presented::query_param(text, "data")
            .ok_or_else(|| ApiError::MalformedBody("a form body without a `data` field".into()))?;
        if lz64 {
            // UTF-16 code units: at most `max` of them, each up to 3 UTF-8 bytes.
            let units = (max / 3) as usize;
            let json = super::lzstring::decompress_from_base64(data.trim(), units).map_err(
                |e| match e {
                    super::lzstring::LzError::TooLarge => {
                        ApiError::DecompressedTooLarge { limit: max }
                    }
                    e => ApiError::MalformedBody(format!("`data` (lz64): {e}")),
                },
            )?;
            return Ok(json.into_bytes());
        }
        let engine = base64::engine::GeneralPurpose::new(
            &base64::alphabet::STANDARD,
            base64::engine::GeneralPurposeConfig::new()
                .with_decode_padding_mode(base64::engine::DecodePaddingMode::Indifferent),
        );
        b = engine
            .decode(data.trim().as_bytes())
            .map_err(|e| ApiError::MalformedBody(format!("`data` is not base64: {e}")))?;
    }
    if b.starts_with(&[0x1f, 0x8b]) {
        b = crate::ingest::decode::gunzip(&b, max)?;
    }
    Ok(b)
}

/// What posthog-js asks at start besides capture: feature flags (`/flags`,
/// `/decide`) and its remote config (`/array/<token>/config`, `config.js`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side<'a> {
    Flags,
    Config,
    /// The script form of the config, for this token.
    ConfigJs(&'a str),
}

/// Which start-up endpoint `path` is, if any (no allocation: the route table
/// asks this of every request).
pub fn side_path(path: &str) -> Option<Side<'_>> {
    let path = path.strip_suffix('/').unwrap_or(path);
    if path == "/flags" || path == "/decide" {
        return Some(Side::Flags);
    }
    let token = path.strip_prefix("/array/")?;
    if let Some(t) = token.strip_suffix("/config.js") {
        return Some(Side::ConfigJs(t));
    }
    token.strip_suffix("/config").map(|_| Side::Config)
}

/// The answer to a start-up endpoint: content type and body. Overwatch has no
/// flags or remote settings, and says so, so the SDK proceeds without errors
/// or retries.
pub fn side_answer_for(side: Side<'_>) -> (&'static str, String) {
    // `autocapture_opt_out` must be said: posthog-js keeps autocapture off
    // until the server has answered it.
    const CONFIG: &str = r#"{"supportedCompression":["gzip","gzip-js","base64"],"autocapture_opt_out":false,"hasFeatureFlags":false,"sessionRecording":false,"heatmaps":false,"surveys":false,"autocaptureExceptions":false,"capturePerformance":false,"captureDeadClicks":false,"elementsChainAsString":true,"siteApps":[],"toolbarParams":{}}"#;
    match side {
        Side::Flags => (
            "application/json",
            format!(
                r#"{{"featureFlags":{{}},"featureFlagPayloads":{{}},"flags":{{}},"errorsWhileComputingFlags":false,"quotaLimited":[],"config":{{"enable_collect_everything":true}},{}"#,
                &CONFIG[1..]
            ),
        ),
        Side::Config => ("application/json", CONFIG.to_string()),
        Side::ConfigJs(token) => {
            // A JSON string is a JavaScript string literal: the token cannot
            // break out of it.
            let t = serde_json::Value::from(token).to_string();
            (
                "application/javascript",
                format!(
                    "(function(){{window._POSTHOG_REMOTE_CONFIG=window._POSTHOG_REMOTE_CONFIG||{{}};\
                     window._POSTHOG_REMOTE_CONFIG[{t}]={{config:{CONFIG},siteApps:[]}};}})();"
                ),
            )
        }
    }
}

/// [`side_path`] and its [`side_answer_for`].
pub fn side_answer(path: &str) -> Option<(&'static str, String)> {
    side_path(path).map(side_answer_for)
}

/// The project token a body carries.
pub fn token(body: &OwnedValue) -> Option<String> {
    let first = messages(body).into_iter().next();
    body.get("api_key")
        .or_else(|| body.get("token"))
        .or_else(|| first.and_then(|m| m.get("api_key")))
        .or_else(|| {
            first
                .and_then(|m| m.get("properties"))
                .and_then(|p| p.get("token"))
        })
        .and_then(|v| v.as_str())
        .map(str::to_string)
}

fn messages(body: &OwnedValue) -> Vec<&OwnedValue> {
    if let Some(a) = body.as_array() {
        return a.iter().collect();
    }
    match body.get("batch").and_then(|b| b.as_array()) {
        Some(b) => b.iter().collect(),
        None => vec![body],
    }
}

/// The events of a PostHog body.
pub fn events(
    body: &OwnedValue,
    tenant: uuid::Uuid,
    received_at: &str,
) -> Result<Vec<EventIn<'static>>, String> {
    if !(body.is_object() || body.is_array()) {
        return Err("a PostHog body is an event, an array of events or {\"batch\": [...]}".into());
    }
    let sent_at = body.get("sent_at").and_then(|v| v.as_str());
    Ok(messages(body)
        .into_iter()
        .map(|m| event(m, sent_at, tenant, received_at))
        .collect())
}

/// Properties that have a column, and are taken out of `properties`.
const MAPPED: &[&str] = &[
    "token",
    "distinct_id",
    "$session_id",
    "$current_url",
    "$pathname",
    "$referrer",
    "$title",
    "$raw_user_agent",
    "$ip",
    "$screen_width",
    "$screen_height",
    "$viewport_width",
    "$viewport_height",
    "$browser_language",
    "$timezone",
    "$el_text",
    "$device_id",
];

fn event(
    m: &OwnedValue,
    sent_at: Option<&str>,
    tenant: uuid::Uuid,
    received_at: &str,
) -> EventIn<'static> {
    let empty = simd_json::owned::Object::default();
    let props = m
        .get("properties")
        .and_then(|v| v.as_object())
        .unwrap_or(&empty);
    let p = |k: &str| props.get(k).and_then(|v| v.as_str());
    let size = |w: &str, h: &str| {
        Some(Dimensions {
            width: props.get(w)?.as_u32()?,
            height: props.get(h)?.as_u32()?,
        })
    };
    let name = m.get("event").and_then(|v| v.as_str()).unwrap_or("");
    let distinct = m
        .get("distinct_id")
        .and_then(|v| v.as_str().map(str::to_string).or_else(|| Some(v.encode())))
        .or_else(|| p("distinct_id").map(str::to_string));
    let session = p("$session_id")
        .and_then(|s| uuid::Uuid::try_parse(s).ok())
        .or_else(|| {
            distinct
                .as_deref()
                .map(|d| stable_uuid(tenant, "posthog-session", d))
        })
        .unwrap_or_else(uuid::Uuid::new_v4);
    let id = m
        .get("uuid")
        .and_then(|v| v.as_str())
        .map(|u| stable_uuid(tenant, "posthog", u))
        .unwrap_or_else(uuid::Uuid::new_v4);
    let mut e = EventIn {
        id: Some(Cow::Owned(id.to_string())),
        session_id: Some(Cow::Owned(session.to_string())),
        timestamp: text(
            m.get("timestamp")
                .and_then(|v| v.as_str())
                .or(Some(received_at)),
        ),
        sent_at: text(sent_at),
        distinct_id: distinct.map(Cow::Owned),
        anonymous_id: text(p("$device_id")),
        user_agent: text(p("$raw_user_agent")),
        ip: text(p("$ip")),
        language: text(p("$browser_language")),
        timezone: text(p("$timezone")),
        screen: size("$screen_width", "$screen_height"),
        viewport: size("$viewport_width", "$viewport_height"),
        ..EventIn::default()
    };
    match name {
        "$pageview" => {
            e.kind = text(Some("pageview"));
            e.url = text(p("$current_url"));
            e.path = text(p("$pathname"));
            e.referrer = text(p("$referrer").filter(|r| *r != "$direct"));
            e.title = text(p("$title"));
        }
        "$autocapture" => {
            e.kind = text(Some("click"));
            e.text = text(p("$el_text"));
            e.element = text(
                props
                    .get("$elements")
                    .and_then(|v| v.as_array())
                    .and_then(|a| a.first())
                    .and_then(|el| el.get("tag_name"))
                    .and_then(|v| v.as_str()),
            );
            e.url = text(p("$current_url"));
        }
        "" => {}
        other => {
            e.kind = text(Some("custom"));
            e.name = text(Some(other));
        }
    }
    let mut kept = simd_json::owned::Object::default();
    for (k, v) in props.iter() {
        if !MAPPED.contains(&k.as_str()) {
            kept.insert(k.clone(), v.clone());
        }
    }
    for k in ["$set", "$set_once"] {
        if let Some(v) = m.get(k) {
            kept.insert(k.into(), v.clone());
        }
    }
    // Whatever else the event carried (`offset`, `type`, …); the token is a
    // credential and is not stored.
    if let Some(all) = m.as_object() {
        let extra: simd_json::owned::Object = all
            .iter()
            .filter(|(k, _)| {
                !matches!(
                    k.as_str(),
                    "event"
                        | "properties"
                        | "timestamp"
                        | "uuid"
                        | "distinct_id"
                        | "$set"
                        | "$set_once"
                        | "api_key"
                        | "token"
                )
            })
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        if !extra.is_empty() {
            kept.insert("$extra".into(), OwnedValue::from(extra));
        }
    }
    e.properties = object(kept);
    e
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(json: &str) -> OwnedValue {
        simd_json::to_owned_value(&mut json.as_bytes().to_vec()).expect("json")
    }

    #[test]
    fn node_batches_map_and_carry_their_token() {
        let body = parse(
            r#"{"api_key":"K","batch":[
              {"event":"Signed Up","properties":{"plan":"pro","$lib":"posthog-node"},"timestamp":"2026-12-02T14:33:39.929Z","uuid":"01a2372c-e95a-7b2d-ae1f-01c46f5911bd","distinct_id":"u1"},
              {"event":"$identify","properties":{"$set":{"email":"a@b.c"}},"uuid":"01a2372c-e95a-7b2d-ae1f-01c54c20b798","distinct_id":"u1"},
              {"event":"$pageview","properties":{"$current_url":"https://x.example/a","$pathname":"/a","$referrer":"$direct","$session_id":"01a2372c-e95a-7b2d-ae1f-000000000001","$screen_width":1280,"$screen_height":720},"distinct_id":"anon"}
            ],"sent_at":"2026-12-02T14:33:39.931Z"}"#,
        );
        assert_eq!(token(&body).as_deref(), Some("K"));
        let t = uuid::Uuid::new_v4();
        let ev = events(&body, t, "2026-12-02T14:33:40Z").expect("events");
        assert_eq!(ev.len(), 3);
        assert_eq!(
            ev[0].id.as_deref(),
            Some("01a2372c-e95a-7b2d-ae1f-01c46f5911bd")
        );
        assert_eq!(
            (ev[0].kind.as_deref(), ev[0].name.as_deref()),
            (Some("custom"), Some("Signed Up"))
        );
        assert_eq!(ev[0].distinct_id.as_deref(), Some("u1"));
        let p0 = ev[0].properties.as_ref().expect("properties");
        assert_eq!(p0.get("plan").and_then(|v| v.as_str()), Some("pro"));
        assert_eq!(ev[1].name.as_deref(), Some("$identify"));
        assert_eq!(ev[2].kind.as_deref(), Some("pageview"));
        assert_eq!(ev[2].path.as_deref(), Some("/a"));
        assert_eq!(ev[2].referrer, None, "$direct is no referrer");
        assert_eq!(
            ev[2].session_id.as_deref(),
            Some("01a2372c-e95a-7b2d-ae1f-000000000001")
        );
        assert_eq!(ev[2].screen.map(|s| s.width), Some(1280));
        assert_eq!(
            ev[0].session_id, ev[1].session_id,
            "one session per distinct id"
        );
    }

    #[test]
    fn unload_forms_and_unlabelled_gzip_unwrap() {
        use base64::Engine as _;
        use std::io::Write;
        let json = br#"{"api_key":"K","batch":[]}"#;
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(json).expect("gzip");
        let gz = gz.finish().expect("gzip");
        let b64 = base64::engine::general_purpose::STANDARD.encode(json);
        let form = format!("data={}", b64.replace('+', "%2B").replace('=', "%3D"));
        assert_eq!(
            unwrap_body(form.into_bytes(), true, false, 1 << 20).expect("form"),
            json
        );
        assert_eq!(
            unwrap_body(gz.clone(), false, false, 1 << 20).expect("magic"),
            json
        );
        let gz_form = format!(
            "data={}",
            base64::engine::general_purpose::STANDARD_NO_PAD.encode(&gz)
        );
        assert_eq!(
            unwrap_body(gz_form.into_bytes(), true, false, 1 << 20).expect("both"),
            json
        );
        assert_eq!(
            unwrap_body(json.to_vec(), false, false, 1 << 20).expect("plain"),
            json
        );
        assert!(unwrap_body(b"data=***".to_vec(), true, false, 1 << 20).is_err());
        assert!(
            unwrap_body(gz, false, false, 4).is_err(),
            "the decompressed cap holds"
        );
    }

    #[test]
    fn the_start_up_endpoints_answer() {
        assert!(side_answer("/flags/")
            .expect("flags")
            .1
            .contains("featureFlags"));
        assert!(side_answer("/decide").is_some());
        let (ct, js) = side_answer("/array/t:s/config.js").expect("config.js");
        assert_eq!(ct, "application/javascript");
        assert!(js.contains(r#"["t:s"]"#), "{js}");
        let (_, cfg) = side_answer("/array/t:s/config").expect("config");
        serde_json::from_str::<serde_json::Value>(&cfg).expect("json config");
        serde_json::from_str::<serde_json::Value>(&side_answer("/flags").expect("f").1)
            .expect("json flags");
        assert_eq!(side_answer("/array/t"), None);
        assert_eq!(side_answer("/ingest"), None);
    }

    #[test]
    fn arrays_single_events_and_tokens_in_properties() {
        let one =
            parse(r#"{"event":"e","distinct_id":"d","offset":12,"properties":{"token":"T"}}"#);
        assert_eq!(token(&one).as_deref(), Some("T"));
        let ev = events(&one, uuid::Uuid::new_v4(), "2026-12-02T00:00:00Z").expect("ok");
        assert_eq!(ev.len(), 1);
        let p = ev[0].properties.as_ref().expect("properties");
        let offset = p.get("$extra").and_then(|x| x.get("offset"));
        assert_eq!(
            offset.and_then(|v| v.as_u64()),
            Some(12),
            "unmapped fields are kept"
        );
        assert!(p.get("token").is_none(), "the token is not stored");
        let arr = parse(
            r#"[{"event":"a","distinct_id":"d","api_key":"A"},{"event":"b","distinct_id":"d"}]"#,
        );
        assert_eq!(token(&arr).as_deref(), Some("A"));
        assert_eq!(
            events(&arr, uuid::Uuid::new_v4(), "2026-12-02T00:00:00Z")
                .expect("ok")
                .len(),
            2
        );
        assert!(events(&parse("3"), uuid::Uuid::new_v4(), "x").is_err());
        assert_eq!(token(&parse(r#"{"event":"e"}"#)), None);
    }
}
