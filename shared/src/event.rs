//! The event contract between the gateway, the broker and ClickHouse.
//!
//! The gateway produces one [`EventRow`] per event as a JSON object to the topic of
//! its [`EventType`]; ClickHouse's Kafka engine reads those objects with
//! `JSONEachRow`, so field names here are the column names of `events_queue`
//! (see [`crate::schema`]). Timestamps travel as Unix milliseconds.

use serde::Serialize;

/// How far a client time may lie from the time the gateway received the event.
///
/// The client `timestamp` chooses the stored row's partition (its month), its
/// retention horizon and its compression day, so it must never be unbounded: one
/// message spanning more months than ClickHouse's `max_partitions_per_insert_block`
/// would stall consumption for every tenant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimeWindow {
    pub past_hours: u64,
    pub future_minutes: u64,
}

impl TimeWindow {
    /// Whether `t_ms` lies inside the window around `received_ms`.
    pub fn contains(self, t_ms: i64, received_ms: i64) -> bool {
        let past = self.past_hours as i64 * 3_600_000;
        let future = self.future_minutes as i64 * 60_000;
        t_ms >= received_ms.saturating_sub(past) && t_ms <= received_ms.saturating_add(future)
    }
}

/// The widest window the gateway may be configured with, and the one ClickHouse
/// itself enforces on every consumed message (anything outside goes to
/// `dead_letter`, whoever produced it): 400 days back, one day ahead.
pub const TIME_WINDOW_CEILING: TimeWindow = TimeWindow {
    past_hours: 9_600,
    future_minutes: 1_440,
};

/// Arrival times ClickHouse accepts at all (2000-01-01 to 2100-01-01, Unix ms).
pub const RECEIVED_AT_RANGE_MS: (i64, i64) = (946_684_800_000, 4_102_444_800_000);

/// The five event types; each has its own topic `<prefix>events_<type>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EventType {
    Pageview,
    Click,
    Scroll,
    Performance,
    Custom,
}

impl EventType {
    pub const ALL: [EventType; 5] = [
        EventType::Pageview,
        EventType::Click,
        EventType::Scroll,
        EventType::Performance,
        EventType::Custom,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            EventType::Pageview => "pageview",
            EventType::Click => "click",
            EventType::Scroll => "scroll",
            EventType::Performance => "performance",
            EventType::Custom => "custom",
        }
    }

    pub fn parse(s: &str) -> Option<EventType> {
        EventType::ALL.into_iter().find(|t| t.as_str() == s)
    }

    /// Index in [`EventType::ALL`].
    pub fn index(self) -> usize {
        self as usize
    }

    /// This type's topic in the per-type layout (`kafka.topic_layout`).
    pub fn topic(self, prefix: &str) -> String {
        format!("{prefix}events_{}", self.as_str())
    }
}

/// The one topic of every event type in the single layout (`kafka.topic_layout`).
pub fn single_topic(prefix: &str) -> String {
    format!("{prefix}events")
}

/// Every events topic of both layouts, the single one first and then the
/// per-type ones in [`EventType::ALL`] order: what workerd creates and
/// ClickHouse's Kafka engine reads, whichever layout the gateway uses.
pub fn all_topics(prefix: &str) -> Vec<String> {
    std::iter::once(single_topic(prefix))
        .chain(EventType::ALL.iter().map(|t| t.topic(prefix)))
        .collect()
}

/// One event as produced to the broker (and as the columns of `events_queue`).
///
/// Optional fields are omitted when absent so ClickHouse stores its column default
/// (NULL for the `Nullable` columns).
#[derive(Debug, Clone, Serialize)]
pub struct EventRow<'a> {
    pub id: uuid::Uuid,
    pub tenant_id: uuid::Uuid,
    pub session_id: uuid::Uuid,
    #[serde(rename = "type")]
    pub kind: &'static str,
    /// The client's timestamp, never corrected: part of the deduplication key.
    pub timestamp_ms: i64,
    pub received_at_ms: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sent_at_ms: Option<i64>,
    /// The client's timestamp shifted by the SDK clock's skew
    /// (`received_at - sent_at`); equal to `timestamp_ms` without `sent_at`.
    pub corrected_timestamp_ms: i64,

    #[serde(skip_serializing_if = "Option::is_none")]
    pub user_agent: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ip: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub screen_width: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub screen_height: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub viewport_width: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub viewport_height: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timezone: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub language: Option<&'a str>,

    // pageview
    #[serde(skip_serializing_if = "Option::is_none")]
    pub title: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub url: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub referrer: Option<&'a str>,

    // click
    #[serde(skip_serializing_if = "Option::is_none")]
    pub element: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub selector: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub text: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub x: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub y: Option<f64>,

    // scroll
    #[serde(skip_serializing_if = "Option::is_none")]
    pub depth: Option<f64>,

    // performance (milliseconds, except cls which is unitless)
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lcp: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fcp: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fid: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub inp: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cls: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ttfb: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dom_content_loaded: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub load_time: Option<f64>,

    // custom
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<&'a str>,
    /// Custom properties as JSON text (`{}` when none were sent).
    pub properties: std::borrow::Cow<'a, str>,

    // server-side enrichment
    /// The connection's address, or the X-Forwarded-For client behind a trusted proxy.
    pub client_ip: &'a str,
    pub browser: &'a str,
    pub browser_version: &'a str,
    pub os: &'a str,
    pub os_version: &'a str,
    pub device: &'a str,
    /// ISO 3166-1 country code, subdivision name and city from the GeoIP database.
    pub country: &'a str,
    pub region: &'a str,
    pub city: &'a str,
    pub is_bot: bool,

    // identity (migration 14; omitted when empty, so older consumers read defaults)
    /// Who the event is about as the SDK names them: PostHog's `distinct_id`;
    /// else the user id, else the anonymous id.
    #[serde(skip_serializing_if = "str::is_empty")]
    pub distinct_id: &'a str,
    /// The logged-in user (Segment `userId`), empty while anonymous.
    #[serde(skip_serializing_if = "str::is_empty")]
    pub user_id: &'a str,
    /// The device or browser before login (Segment `anonymousId`).
    #[serde(skip_serializing_if = "str::is_empty")]
    pub anonymous_id: &'a str,
}
