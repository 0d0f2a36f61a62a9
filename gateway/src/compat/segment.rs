//! Segment's HTTP Tracking API: `/v1/batch` (and `/v1/import`), `/v1/track`,
//! `/v1/page`, `/v1/screen`, `/v1/identify`, `/v1/group`, `/v1/alias`, mapped
//! onto Overwatch's events (the table is in `docs/api.md`, "Segment").
//!
//! - `messageId` is the event id: a UUID as it is, anything else (Segment's
//!   `node-next-…`, `ajs-next-…`) through [`stable_uuid`], so a retried message
//!   keeps its id and collapses into one row.
//! - Segment has no session: every message of one user (`anonymousId`, else
//!   `userId`) carries the same session id, and the sessions job cuts it on
//!   inactivity gaps as it does for any SDK.
//! - `track` is a custom event named by `event`; `page` and `screen` are
//!   pageviews; `identify`, `group` and `alias` are custom events named
//!   `$identify`, `$group`, `$alias`, their traits, group id and previous id in
//!   `properties`. Context fields with a column (user agent, IP, locale,
//!   timezone, screen, page) go there; the rest of `context` is kept in
//!   `properties.$context`, `integrations` in `properties.$integrations`.
//!   Any other message field is kept in `properties.$extra`. Only the write key
//!   and the SDK's own `_metadata` bookkeeping are not stored.

use std::borrow::Cow;

use simd_json::prelude::*;
use simd_json::OwnedValue;

use super::{object, stable_uuid, text, Call};
use crate::ingest::model::{Dimensions, EventIn};

/// The messages of a Segment body, as events. `call` is the endpoint's type
/// (`None` for a batch, whose messages say theirs).
pub fn events(
    body: &OwnedValue,
    call: Option<Call>,
    tenant: uuid::Uuid,
    received_at: &str,
) -> Result<Vec<EventIn<'static>>, String> {
    let root = body.as_object().ok_or("a Segment body is a JSON object")?;
    let sent_at = root.get("sentAt").and_then(|v| v.as_str());
    let shared_context = root.get("context").and_then(|v| v.as_object());
    let messages: Vec<&OwnedValue> = match call {
        Some(_) => vec![body],
        None => root
            .get("batch")
            .and_then(|b| b.as_array())
            .ok_or("a Segment batch has a `batch` array")?
            .iter()
            .collect(),
    };
    Ok(messages
        .into_iter()
        .map(|m| message(m, call, shared_context, sent_at, tenant, received_at))
        .collect())
}

fn message(
    m: &OwnedValue,
    call: Option<Call>,
    shared_context: Option<&simd_json::owned::Object>,
    sent_at: Option<&str>,
    tenant: uuid::Uuid,
    received_at: &str,
) -> EventIn<'static> {
    let get = |k: &str| m.get(k);
    let s = |k: &str| get(k).and_then(|v| v.as_str());
    let kind = call
        .map(Call::as_str)
        .or_else(|| s("type"))
        .unwrap_or("")
        .to_ascii_lowercase();
    // Batch-level context under the message's own.
    let mut context = shared_context.cloned().unwrap_or_default();
    if let Some(own) = get("context").and_then(|v| v.as_object()) {
        for (k, v) in own.iter() {
            context.insert(k.clone(), v.clone());
        }
    }
    let page = context.get("page").and_then(|v| v.as_object()).cloned();
    let props = get("properties").and_then(|v| v.as_object());
    let prop = |k: &str| {
        props
            .and_then(|p| p.get(k))
            .and_then(|v| v.as_str())
            .or_else(|| {
                page.as_ref()
                    .and_then(|p| p.get(k))
                    .and_then(|v| v.as_str())
            })
    };
    let user = s("userId");
    let anonymous = s("anonymousId");
    let mut e = EventIn {
        id: Some(Cow::Owned(
            s("messageId")
                .map(|id| stable_uuid(tenant, "segment", id))
                .unwrap_or_else(uuid::Uuid::new_v4)
                .to_string(),
        )),
        session_id: Some(Cow::Owned(
            anonymous
                .or(user)
                .map(|who| stable_uuid(tenant, "segment-session", who))
                .unwrap_or_else(uuid::Uuid::new_v4)
                .to_string(),
        )),
        timestamp: text(
            s("timestamp")
                .or(s("originalTimestamp"))
                .or(Some(received_at)),
        ),
        sent_at: text(s("sentAt").or(sent_at)),
        user_id: text(user),
        anonymous_id: text(anonymous),
        user_agent: text(context.get("userAgent").and_then(|v| v.as_str())),
        ip: text(context.get("ip").and_then(|v| v.as_str())),
        language: text(context.get("locale").and_then(|v| v.as_str())),
        timezone: text(context.get("timezone").and_then(|v| v.as_str())),
        screen: context.get("screen").and_then(dimensions),
        ..EventIn::default()
    };
    let mut properties = props.cloned().unwrap_or_default();
    match kind.as_str() {
        "track" => {
            e.kind = text(Some("custom"));
            e.name = text(s("event"));
        }
        "page" | "screen" => {
            e.kind = text(Some("pageview"));
            e.title = text(prop("title").or(s("name")));
            e.path = text(prop("path").or(if kind == "screen" { s("name") } else { None }));
            e.url = text(prop("url"));
            e.referrer = text(prop("referrer"));
            if let Some(n) = s("name") {
                properties.insert("$name".into(), OwnedValue::from(n.to_string()));
            }
            if kind == "screen" {
                properties.insert("$screen".into(), OwnedValue::from(true));
            }
        }
        "identify" | "group" | "alias" => {
            e.kind = text(Some("custom"));
            e.name = text(Some(&format!("${kind}")));
            for k in ["traits", "groupId", "previousId"] {
                if let Some(v) = get(k) {
                    properties.insert(k.into(), v.clone());
                }
            }
        }
        // Left empty: validation answers 422 naming the message's `type`.
        other => e.kind = text(Some(other)).filter(|k| !k.is_empty()),
    }
    for mapped in ["userAgent", "ip", "locale", "timezone", "screen", "page"] {
        context.remove(mapped);
    }
    if !context.is_empty() {
        properties.insert("$context".into(), OwnedValue::from(context));
    }
    if let Some(i) = get("integrations").and_then(|v| v.as_object()) {
        if !i.is_empty() {
            properties.insert("$integrations".into(), OwnedValue::from(i.clone()));
        }
    }
    // Whatever else the message carried (`channel`, `version`, …).
    if let Some(all) = m.as_object() {
        let extra: simd_json::owned::Object = all
            .iter()
            .filter(|(k, _)| !CONSUMED.contains(&k.as_str()))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        if !extra.is_empty() {
            properties.insert("$extra".into(), OwnedValue::from(extra));
        }
    }
    e.properties = object(properties);
    e
}

/// Message fields mapped above, and the two not stored: the write key (a
/// credential) and the SDK's own `_metadata` bookkeeping.
const CONSUMED: &[&str] = &[
    "type",
    "userId",
    "anonymousId",
    "messageId",
    "timestamp",
    "originalTimestamp",
    "sentAt",
    "context",
    "properties",
    "event",
    "name",
    "traits",
    "groupId",
    "previousId",
    "integrations",
    "writeKey",
    "_metadata",
];

/// `GET /v1/projects/<write key>/settings`: the document Segment's browser
/// library loads from its `cdnURL` before sending anything.
pub fn settings_path(path: &str) -> bool {
    path.strip_prefix("/v1/projects/")
        .and_then(|rest| rest.strip_suffix("/settings"))
        .is_some_and(|key| !key.is_empty() && !key.contains('/'))
}

/// The settings document for the write key in `path`, pointing the library
/// back at this gateway: the request's `Host`, and `X-Forwarded-Proto` (https
/// behind a TLS proxy, else http). No destinations, no plan rules: events go
/// to Overwatch only. (The library sends with the settings' `apiKey`.)
pub fn settings(path: &str, headers: &hyper::HeaderMap) -> String {
    let key = path
        .strip_prefix("/v1/projects/")
        .and_then(|rest| rest.strip_suffix("/settings"))
        .map(crate::auth::presented::form_decode)
        .unwrap_or_default();
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let host = header("host").unwrap_or("localhost");
    let proto = match header("x-forwarded-proto") {
        Some(p) if p.eq_ignore_ascii_case("https") => "https",
        _ => "http",
    };
    serde_json::json!({
        "integrations": {"Segment.io": {"apiKey": key, "apiHost": format!("{host}/v1"), "protocol": proto}},
        "plan": {"track": {"__default": {"enabled": true}}, "identify": {"__default": {"enabled": true}}},
        "edgeFunction": {},
        "analyticsNextEnabled": true,
        "middlewareSettings": {},
        "enabledMiddleware": {},
        "metrics": {"sampleRate": 0},
        "legacyVideoPluginsEnabled": false,
        "remotePlugins": [],
    })
    .to_string()
}

fn dimensions(v: &OwnedValue) -> Option<Dimensions> {
    Some(Dimensions {
        width: v.get("width")?.as_u32()?,
        height: v.get("height")?.as_u32()?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(json: &str) -> OwnedValue {
        simd_json::to_owned_value(&mut json.as_bytes().to_vec()).expect("json")
    }

    const NOW: &str = "2026-12-02T10:00:00Z";

    #[test]
    fn a_batch_maps_each_call_and_keeps_what_has_no_column() {
        let t = uuid::Uuid::new_v4();
        let body = parse(
            r#"{"batch":[
              {"type":"track","event":"Signed Up","userId":"u1","messageId":"node-next-1","properties":{"plan":"pro"},"timestamp":"2026-12-02T09:00:00Z","context":{"library":{"name":"@segment/analytics-node"}},"integrations":{"All":false}},
              {"type":"page","name":"Home","anonymousId":"a1","messageId":"m2","properties":{"path":"/","url":"https://x.example/"},"context":{"userAgent":"Mozilla/5.0","locale":"fr-FR","page":{"referrer":"https://r.example/"}}},
              {"type":"identify","userId":"u1","traits":{"email":"a@b.c"},"messageId":"m3"},
              {"type":"alias","userId":"u1","previousId":"a1","messageId":"m4"}
            ],"sentAt":"2026-12-02T09:00:01Z","context":{"ip":"203.0.113.9"}}"#,
        );
        let ev = events(&body, None, t, NOW).expect("events");
        assert_eq!(ev.len(), 4);
        assert_eq!(ev[0].kind.as_deref(), Some("custom"));
        assert_eq!(ev[0].name.as_deref(), Some("Signed Up"));
        assert_eq!(ev[0].user_id.as_deref(), Some("u1"));
        assert_eq!(
            ev[0].ip.as_deref(),
            Some("203.0.113.9"),
            "batch context merged"
        );
        assert_eq!(ev[0].sent_at.as_deref(), Some("2026-12-02T09:00:01Z"));
        let p0 = ev[0].properties.as_ref().expect("properties");
        assert_eq!(p0.get("plan").and_then(|v| v.as_str()), Some("pro"));
        assert!(p0.get("$context").and_then(|c| c.get("library")).is_some());
        assert!(p0.get("$integrations").is_some());
        assert!(
            p0.get("$extra").is_none(),
            "nothing unconsumed in a plain track"
        );
        let odd = parse(
            r#"{"type":"track","event":"e","anonymousId":"a","channel":"server","writeKey":"secret"}"#,
        );
        let single = events(&odd, Some(Call::Track), t, NOW).expect("events");
        let extra = single[0]
            .properties
            .as_ref()
            .and_then(|p| p.get("$extra"))
            .expect("$extra");
        assert_eq!(
            extra.get("channel").and_then(|v| v.as_str()),
            Some("server")
        );
        assert!(extra.get("writeKey").is_none(), "the key is not stored");
        assert_eq!(ev[1].kind.as_deref(), Some("pageview"));
        assert_eq!(ev[1].title.as_deref(), Some("Home"));
        assert_eq!(ev[1].referrer.as_deref(), Some("https://r.example/"));
        assert_eq!(ev[1].language.as_deref(), Some("fr-FR"));
        assert_eq!(
            ev[1].timestamp.as_deref(),
            Some(NOW),
            "no timestamp: received time"
        );
        assert_eq!(ev[2].name.as_deref(), Some("$identify"));
        let traits = ev[2].properties.as_ref().and_then(|p| p.get("traits"));
        assert_eq!(
            traits.and_then(|t| t.get("email")).and_then(|v| v.as_str()),
            Some("a@b.c")
        );
        assert_eq!(ev[3].name.as_deref(), Some("$alias"));
        // The same message id is the same event id; one user is one session.
        let again = events(&body, None, t, NOW).expect("events");
        assert_eq!(again[0].id, ev[0].id);
        assert_eq!(ev[0].session_id, ev[2].session_id);
        assert_ne!(ev[0].session_id, ev[1].session_id);
    }

    #[test]
    fn single_calls_take_their_type_from_the_path() {
        let body = parse(r#"{"event":"Clicked","anonymousId":"a","messageId":"x"}"#);
        let ev = events(&body, Some(Call::Track), uuid::Uuid::new_v4(), NOW).expect("events");
        assert_eq!(
            (ev[0].kind.as_deref(), ev[0].name.as_deref()),
            (Some("custom"), Some("Clicked"))
        );
        assert!(events(&parse("[1]"), None, uuid::Uuid::new_v4(), NOW).is_err());
        assert!(events(&parse(r#"{"batch":3}"#), None, uuid::Uuid::new_v4(), NOW).is_err());
    }
}
