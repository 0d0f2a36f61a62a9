//! Layered, strict configuration shared by the gateway and workerd.
//!
//! Layers, later wins: `config/default.toml` (compiled in) → the file passed with
//! `--config` → environment variables `OVERWATCH__SECTION__KEY`. Unknown keys are
//! rejected, every value is checked by [`Config::validate`], and each error names
//! the offending key so `main` can print it and exit with [`EXIT_CONFIG`].

use std::net::SocketAddr;
use std::path::Path;

use serde::Deserialize;

/// Exit status for configuration errors (EX_USAGE from sysexits.h).
pub const EXIT_CONFIG: i32 = 64;
/// Prefix of environment overrides; sections and keys are separated by `__`.
pub const ENV_PREFIX: &str = "OVERWATCH__";

const DEFAULT_TOML: &str = include_str!("../../config/default.toml");

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub gateway: GatewayConfig,
    pub limits: LimitsConfig,
    pub tiers: TiersConfig,
    pub rate_limits: RateLimitsConfig,
    pub enrichment: EnrichmentConfig,
    pub jobs: JobsConfig,
    pub notifications: NotificationsConfig,
    pub kafka: KafkaConfig,
    pub clickhouse: ClickHouseConfig,
    pub workerd: WorkerdConfig,
    pub auth: AuthConfig,
    pub log: LogConfig,
    pub telemetry: TelemetryConfig,
    pub cold_storage: ColdStorageConfig,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GatewayConfig {
    pub listen: SocketAddr,
    pub max_body_bytes: u64,
    pub max_events_per_batch: usize,
    pub delivery_timeout_ms: u64,
    pub retry_after_secs: u64,
    pub shutdown_timeout_ms: u64,
    pub max_in_flight_requests: usize,
    pub broker_check_interval_ms: u64,
    pub trusted_proxies: Vec<String>,
    /// The header the proxies in `trusted_proxies` write the client's address to.
    pub forwarded_header: ForwardedHeader,
    /// Address of `/metrics` and the detailed `/health` (keep it private).
    pub operations_listen: SocketAddr,
    /// Most open client connections on `listen`; more are answered 503 and closed.
    pub max_connections: usize,
    /// A request's headers must arrive within this, counted from its first byte.
    pub header_read_timeout_ms: u64,
    /// A request's body must arrive within this; else 408 and the connection closes.
    pub body_read_timeout_ms: u64,
    /// A keep-alive connection with no request for this long is closed.
    pub idle_timeout_ms: u64,
    /// Largest request head (request line and headers), in bytes.
    pub max_header_bytes: usize,
    /// Most header fields in one request.
    pub max_headers: usize,
    /// Request bodies being read or decoded, over all connections, in bytes.
    pub max_buffered_body_bytes: u64,
    /// Requests decoded, parsed and validated at once (0: one per CPU core).
    pub cpu_workers: usize,
    /// Most entries in a 422's `details`; the rest are counted, not listed.
    pub max_error_details: usize,
}

/// Which header carries the client's address through proxies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ForwardedHeader {
    /// `X-Forwarded-For: client, proxy1, …` (nginx, most load balancers).
    XForwardedFor,
    /// RFC 7239 `Forwarded: for=client;proto=https, for=proxy1`.
    Forwarded,
}

impl ForwardedHeader {
    pub fn name(self) -> &'static str {
        match self {
            ForwardedHeader::XForwardedFor => "x-forwarded-for",
            ForwardedHeader::Forwarded => "forwarded",
        }
    }
}

impl GatewayConfig {
    /// Connection limits and timeouts.
    fn validate_connections(&self) -> Result<(), ConfigError> {
        positive("gateway.max_connections", self.max_connections as u64)?;
        positive(
            "gateway.header_read_timeout_ms",
            self.header_read_timeout_ms,
        )?;
        positive("gateway.body_read_timeout_ms", self.body_read_timeout_ms)?;
        positive("gateway.idle_timeout_ms", self.idle_timeout_ms)?;
        positive("gateway.max_headers", self.max_headers as u64)?;
        positive("gateway.max_error_details", self.max_error_details as u64)?;
        if !(8192..=1 << 20).contains(&self.max_header_bytes) {
            return Err(ConfigError::new(
                "gateway.max_header_bytes",
                "must be between 8192 and 1048576",
            ));
        }
        if self.max_buffered_body_bytes < self.max_body_bytes {
            return Err(ConfigError::new(
                "gateway.max_buffered_body_bytes",
                "must be at least gateway.max_body_bytes, or a largest body could never be read",
            ));
        }
        if self.operations_listen == self.listen && self.listen.port() != 0 {
            return Err(ConfigError::new(
                "gateway.operations_listen",
                "must differ from gateway.listen: /metrics and /health stay off the public port",
            ));
        }
        Ok(())
    }

    /// Decode workers: `cpu_workers`, or one per core.
    pub fn cpu_workers(&self) -> usize {
        if self.cpu_workers > 0 {
            self.cpu_workers
        } else {
            std::thread::available_parallelism().map_or(2, |n| n.get())
        }
    }
}

/// Per-request and per-event limits enforced by the gateway.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsConfig {
    pub max_decompressed_bytes: u64,
    pub max_properties: usize,
    pub max_properties_depth: usize,
    pub max_properties_bytes: usize,
    /// Oldest client `timestamp` accepted, in hours before the arrival time;
    /// older events get 422 `timestamp_out_of_range` (see docs/api.md).
    pub max_event_age_hours: u64,
    /// Furthest a client `timestamp` may lie ahead of the arrival time.
    pub max_future_minutes: u64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnrichmentConfig {
    pub geoip_db: String,
    pub ua_cache_size: usize,
    pub bot_patterns: Vec<String>,
    /// User agents parsed (cache misses) per request; further events keep their
    /// `user_agent` and are enriched later by workerd's enrichment job.
    pub max_ua_parses_per_request: usize,
}

/// How produced events are keyed (and so partitioned).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PartitionKey {
    Session,
    Tenant,
    RoundRobin,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NotificationsConfig {
    pub cooldown_secs: u64,
    pub max_attempts: u32,
    pub retry_base_ms: u64,
    pub quota_warning: bool,
    pub quota_exceeded: bool,
    pub job_failure: bool,
    pub dead_letter_threshold: u64,
    pub dead_letter_window_minutes: u64,
    pub consumer_lag_threshold: u64,
    pub ingest_error_rate_threshold: f64,
    pub ingest_error_window_minutes: u64,
    pub ingest_error_min_requests: u64,
    pub channels: Vec<ChannelConfig>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ChannelKind {
    Log,
    Webhook,
    Slack,
    Discord,
    Email,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SmtpTls {
    None,
    #[default]
    Starttls,
    Tls,
}

/// One place alerts go. Which fields apply depends on `kind`.
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChannelConfig {
    pub name: String,
    pub kind: ChannelKind,
    #[serde(default)]
    pub url: String,
    #[serde(default)]
    pub secret: String,
    #[serde(default)]
    pub smtp_host: String,
    #[serde(default)]
    pub smtp_port: u16,
    #[serde(default)]
    pub smtp_tls: SmtpTls,
    #[serde(default)]
    pub smtp_user: String,
    #[serde(default)]
    pub smtp_password: String,
    /// PEM file of a CA to trust for the SMTP server's certificate (a private
    /// relay), in addition to the system's roots.
    #[serde(default)]
    pub smtp_ca_file: String,
    #[serde(default)]
    pub from: String,
    #[serde(default)]
    pub to: Vec<String>,
}

/// Secrets stay out of logs and error messages.
impl std::fmt::Debug for ChannelConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChannelConfig")
            .field("name", &self.name)
            .field("kind", &self.kind)
            .field("url", &if self.url.is_empty() { "" } else { "<set>" })
            .field("smtp_host", &self.smtp_host)
            .field("to", &self.to)
            .finish_non_exhaustive()
    }
}

/// A tenant's service tier.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Tier {
    #[default]
    Free,
    Paid,
    Enterprise,
}

impl Tier {
    pub const ALL: [Tier; 3] = [Tier::Free, Tier::Paid, Tier::Enterprise];

    pub fn as_str(self) -> &'static str {
        match self {
            Tier::Free => "free",
            Tier::Paid => "paid",
            Tier::Enterprise => "enterprise",
        }
    }

    pub fn parse(s: &str) -> Option<Tier> {
        Tier::ALL.into_iter().find(|t| t.as_str() == s)
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TiersConfig {
    pub free: TierConfig,
    pub paid: TierConfig,
    pub enterprise: TierConfig,
}

impl TiersConfig {
    pub fn get(&self, tier: Tier) -> &TierConfig {
        match tier {
            Tier::Free => &self.free,
            Tier::Paid => &self.paid,
            Tier::Enterprise => &self.enterprise,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TierConfig {
    pub events_per_second: f64,
    pub burst: u64,
    pub retention_hours: u64,
    pub rollup_retention_days: u64,
    pub monthly_event_quota: u64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobsConfig {
    pub session_gap_minutes: u64,
    pub recompute_window_hours: u64,
    pub retention_cron: String,
    pub sessions_cron: String,
    pub rollups_cron: String,
    pub quota_cron: String,
    pub compression_cron: String,
    pub enrichment_cron: String,
    pub alerts_cron: String,
    pub compression_after_hours: u64,
    pub cold_dir: String,
    pub backoff_base_ms: u64,
    pub backoff_max_ms: u64,
    /// How long a job's lease on a tenant's archives lasts unless renewed.
    pub lease_ttl_secs: u64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimitsConfig {
    pub global_events_per_second: f64,
    pub global_burst: u64,
    pub max_tenants: usize,
    pub overrides: Vec<RateOverride>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateOverride {
    pub tenant_id: uuid::Uuid,
    pub events_per_second: f64,
    pub burst: u64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaConfig {
    pub brokers: String,
    pub topic_prefix: String,
    pub client_id: String,
    pub compression: Compression,
    pub linger_ms: u64,
    pub batch_num_messages: u64,
    pub partition_key: PartitionKey,
    pub queue_max_messages: u64,
    /// Bound of the producer's in-memory queue (KiB of payload).
    pub queue_max_kbytes: u64,
    pub partitions: i32,
    pub replication_factor: i32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    None,
    Gzip,
    Snappy,
    Lz4,
    Zstd,
}

impl Compression {
    /// The value of librdkafka's `compression.type`.
    pub fn as_str(self) -> &'static str {
        match self {
            Compression::None => "none",
            Compression::Gzip => "gzip",
            Compression::Snappy => "snappy",
            Compression::Lz4 => "lz4",
            Compression::Zstd => "zstd",
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClickHouseConfig {
    pub url: String,
    pub database: String,
    pub user: String,
    pub password: String,
    pub kafka_brokers: String,
    pub kafka_group: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkerdConfig {
    pub listen: SocketAddr,
    pub migrate_on_start: bool,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    pub keys: Vec<StaticKey>,
    pub clickhouse_keys: bool,
    pub refresh_interval_ms: u64,
    /// A ClickHouse key snapshot older than this (no reload succeeded) is no
    /// longer trusted: keys that cannot be judged get 503, readiness says why.
    pub max_snapshot_age_ms: u64,
    /// Largest distance between a signed request's timestamp and the clock.
    pub signature_max_skew_secs: u64,
    /// Nonces of signed requests remembered (across the skew window) to refuse replays.
    pub replay_cache_size: usize,
}

/// An API key from configuration. Only the SHA-256 of the secret is stored.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StaticKey {
    pub tenant_id: uuid::Uuid,
    pub secret_sha256: String,
    #[serde(default)]
    pub tier: Tier,
    #[serde(default)]
    pub anonymize_ip: bool,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    pub format: LogFormat,
    pub level: String,
}

/// Where the compression job puts Parquet files: `jobs.cold_dir`, or an
/// S3-compatible bucket when `s3_bucket` is set.
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ColdStorageConfig {
    pub s3_bucket: String,
    /// Key prefix inside the bucket (no leading or trailing slash needed).
    pub s3_prefix: String,
    /// Endpoint URL of an S3-compatible service; empty = AWS S3.
    pub s3_endpoint: String,
    pub s3_region: String,
    pub s3_access_key_id: String,
    pub s3_secret_access_key: String,
    /// Allow a plain `http://` endpoint (local MinIO-style services).
    pub s3_allow_http: bool,
}

/// The secret key stays out of logs and error messages.
impl std::fmt::Debug for ColdStorageConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ColdStorageConfig")
            .field("s3_bucket", &self.s3_bucket)
            .field("s3_prefix", &self.s3_prefix)
            .field("s3_endpoint", &self.s3_endpoint)
            .field("s3_region", &self.s3_region)
            .field("s3_access_key_id", &self.s3_access_key_id)
            .field(
                "s3_secret_access_key",
                &if self.s3_secret_access_key.is_empty() {
                    ""
                } else {
                    "<redacted>"
                },
            )
            .field("s3_allow_http", &self.s3_allow_http)
            .finish()
    }
}

/// Metrics snapshots, librdkafka statistics and OpenTelemetry export.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TelemetryConfig {
    /// OTLP/HTTP collector base URL (e.g. `http://otel-collector:4318`); empty = off.
    pub otlp_endpoint: String,
    /// Fraction of new traces kept (0.0 … 1.0); an incoming sampled parent is honoured.
    pub sampling_ratio: f64,
    /// `service.name` of exported spans; empty = the binary's name.
    pub service_name: String,
    /// How often metrics are written into `internal_metrics` (0 = never).
    pub snapshot_interval_secs: u64,
    /// librdkafka statistics interval feeding the producer metrics (0 = off).
    pub kafka_statistics_interval_ms: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

/// A configuration error; `key` is the dotted path of the offending setting.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("configuration error at `{key}`: {message}")]
pub struct ConfigError {
    pub key: String,
    pub message: String,
}

impl ConfigError {
    fn new(key: impl Into<String>, message: impl Into<String>) -> Self {
        ConfigError {
            key: key.into(),
            message: message.into(),
        }
    }
}

impl Config {
    /// Loads defaults, then `file` (if any), then `OVERWATCH__*` variables of the
    /// process environment, and validates the result.
    pub fn load(file: Option<&Path>) -> Result<Config, ConfigError> {
        Self::load_from(file, std::env::vars())
    }

    /// [`Config::load`] for a binary's `main`: on error prints `<bin>: <error>`
    /// (which names the key) and returns the exit status to end with.
    pub fn load_or_exit_code(
        bin: &str,
        file: Option<&Path>,
    ) -> Result<Config, std::process::ExitCode> {
        Self::load(file).map_err(|e| {
            eprintln!("{bin}: {e}");
            std::process::ExitCode::from(EXIT_CONFIG as u8)
        })
    }

    /// As [`Config::load`], with the environment given explicitly (for tests).
    pub fn load_from(
        file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config, ConfigError> {
        let mut root: toml::Table = DEFAULT_TOML
            .parse()
            .map_err(|e| ConfigError::new("<defaults>", format!("{e}")))?;
        if let Some(path) = file {
            let text = std::fs::read_to_string(path).map_err(|e| {
                ConfigError::new("--config", format!("cannot read {}: {e}", path.display()))
            })?;
            let table: toml::Table = text.parse().map_err(|e: toml::de::Error| {
                let key = toml_error_key(&text, &e);
                ConfigError::new(
                    key,
                    format!("{} is not valid TOML: {}", path.display(), e.message()),
                )
            })?;
            merge(&mut root, table);
        }
        let mut env: Vec<(String, String)> = env
            .into_iter()
            .filter(|(k, _)| k.starts_with(ENV_PREFIX))
            .collect();
        env.sort();
        for (name, value) in env {
            apply_env(&mut root, &name, &value)?;
        }
        let config: Config =
            serde_path_to_error::deserialize(toml::Value::Table(root)).map_err(|e| {
                let path = e.path().to_string();
                let inner = e.into_inner().to_string();
                // toml appends "in `section`" on a second line; the key says it already.
                let inner = inner.lines().next().unwrap_or_default().to_string();
                let key = unknown_field_key(&path, &inner).unwrap_or(path);
                ConfigError::new(key, inner)
            })?;
        config.validate()?;
        Ok(config)
    }

    /// Checks values that parse but make no sense.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let g = &self.gateway;
        positive("gateway.max_body_bytes", g.max_body_bytes)?;
        positive("gateway.delivery_timeout_ms", g.delivery_timeout_ms)?;
        positive("gateway.shutdown_timeout_ms", g.shutdown_timeout_ms)?;
        positive(
            "gateway.max_in_flight_requests",
            g.max_in_flight_requests as u64,
        )?;
        positive(
            "gateway.broker_check_interval_ms",
            g.broker_check_interval_ms,
        )?;
        positive("gateway.retry_after_secs", g.retry_after_secs)?;
        g.validate_connections()?;
        if g.max_events_per_batch == 0 || g.max_events_per_batch > 10_000 {
            return Err(ConfigError::new(
                "gateway.max_events_per_batch",
                "must be between 1 and 10000",
            ));
        }
        for (i, cidr) in g.trusted_proxies.iter().enumerate() {
            if parse_net(cidr).is_none() {
                return Err(ConfigError::new(
                    format!("gateway.trusted_proxies[{i}]"),
                    format!("`{cidr}` is not an IP address or CIDR"),
                ));
            }
        }
        let n = &self.notifications;
        if !(0.0..=1.0).contains(&n.ingest_error_rate_threshold) {
            return Err(ConfigError::new(
                "notifications.ingest_error_rate_threshold",
                "must be between 0.0 (off) and 1.0",
            ));
        }
        positive(
            "notifications.ingest_error_window_minutes",
            n.ingest_error_window_minutes,
        )?;
        let c = &self.cold_storage;
        if !c.s3_bucket.is_empty() {
            let url = &c.s3_endpoint;
            if url.starts_with("http://") && !c.s3_allow_http {
                return Err(ConfigError::new(
                    "cold_storage.s3_allow_http",
                    "s3_endpoint is plain http://; set s3_allow_http = true to allow it",
                ));
            }
            if !(url.is_empty() || url.starts_with("http://") || url.starts_with("https://")) {
                return Err(ConfigError::new(
                    "cold_storage.s3_endpoint",
                    "must be an http:// or https:// URL, or empty for AWS S3",
                ));
            }
            if c.s3_region.is_empty() {
                return Err(ConfigError::new(
                    "cold_storage.s3_region",
                    "must be set when s3_bucket is",
                ));
            }
        }
        let t = &self.telemetry;
        if !(0.0..=1.0).contains(&t.sampling_ratio) {
            return Err(ConfigError::new(
                "telemetry.sampling_ratio",
                "must be between 0.0 and 1.0",
            ));
        }
        let url = &t.otlp_endpoint;
        if !(url.is_empty() || url.starts_with("http://") || url.starts_with("https://")) {
            return Err(ConfigError::new(
                "telemetry.otlp_endpoint",
                "must be an http:// or https:// URL (OTLP over HTTP), or empty",
            ));
        }
        let e = &self.enrichment;
        positive("enrichment.ua_cache_size", e.ua_cache_size as u64)?;
        for (i, pattern) in e.bot_patterns.iter().enumerate() {
            if let Err(err) = regex::Regex::new(pattern) {
                return Err(ConfigError::new(
                    format!("enrichment.bot_patterns[{i}]"),
                    format!("not a valid regular expression: {err}"),
                ));
            }
        }
        if !e.geoip_db.is_empty() && !Path::new(&e.geoip_db).is_file() {
            return Err(ConfigError::new(
                "enrichment.geoip_db",
                format!("{} is not a readable file", e.geoip_db),
            ));
        }
        let l = &self.limits;
        positive("limits.max_decompressed_bytes", l.max_decompressed_bytes)?;
        if l.max_decompressed_bytes < g.max_body_bytes {
            return Err(ConfigError::new(
                "limits.max_decompressed_bytes",
                "must be at least gateway.max_body_bytes",
            ));
        }
        positive("limits.max_properties_depth", l.max_properties_depth as u64)?;
        positive("limits.max_properties_bytes", l.max_properties_bytes as u64)?;
        let ceiling = crate::event::TIME_WINDOW_CEILING;
        if l.max_event_age_hours == 0 || l.max_event_age_hours > ceiling.past_hours {
            return Err(ConfigError::new(
                "limits.max_event_age_hours",
                format!(
                    "must be between 1 and {} (the bound ClickHouse enforces; load older history with `workerd import`)",
                    ceiling.past_hours
                ),
            ));
        }
        if l.max_future_minutes > ceiling.future_minutes {
            return Err(ConfigError::new(
                "limits.max_future_minutes",
                format!("must be at most {}", ceiling.future_minutes),
            ));
        }
        let batch = g.max_events_per_batch as u64;
        for tier in Tier::ALL {
            let t = self.tiers.get(tier);
            let name = tier.as_str();
            rate(
                &format!("tiers.{name}.events_per_second"),
                t.events_per_second,
            )?;
            burst(&format!("tiers.{name}.burst"), t.burst, batch)?;
            positive(&format!("tiers.{name}.retention_hours"), t.retention_hours)?;
            positive(
                &format!("tiers.{name}.rollup_retention_days"),
                t.rollup_retention_days,
            )?;
        }
        positive("jobs.session_gap_minutes", self.jobs.session_gap_minutes)?;
        positive("jobs.lease_ttl_secs", self.jobs.lease_ttl_secs)?;
        positive(
            "jobs.recompute_window_hours",
            self.jobs.recompute_window_hours,
        )?;
        let n = &self.notifications;
        positive("notifications.max_attempts", n.max_attempts as u64)?;
        for (i, c) in n.channels.iter().enumerate() {
            let key = |f: &str| format!("notifications.channels[{i}].{f}");
            not_blank(&key("name"), &c.name)?;
            match c.kind {
                ChannelKind::Log => {}
                ChannelKind::Webhook | ChannelKind::Slack | ChannelKind::Discord => {
                    if !(c.url.starts_with("http://") || c.url.starts_with("https://")) {
                        return Err(ConfigError::new(
                            key("url"),
                            "must be an http:// or https:// URL",
                        ));
                    }
                }
                ChannelKind::Email => {
                    not_blank(&key("smtp_host"), &c.smtp_host)?;
                    positive(&key("smtp_port"), c.smtp_port as u64)?;
                    if !c.from.contains('@') {
                        return Err(ConfigError::new(key("from"), "must be an email address"));
                    }
                    if c.to.is_empty() || c.to.iter().any(|t| !t.contains('@')) {
                        return Err(ConfigError::new(key("to"), "must list email addresses"));
                    }
                    if !c.smtp_ca_file.is_empty() && !Path::new(&c.smtp_ca_file).is_file() {
                        return Err(ConfigError::new(
                            key("smtp_ca_file"),
                            format!("{} is not a readable file", c.smtp_ca_file),
                        ));
                    }
                }
            }
        }
        let r = &self.rate_limits;
        if r.global_events_per_second != 0.0 || r.global_burst != 0 {
            rate(
                "rate_limits.global_events_per_second",
                r.global_events_per_second,
            )?;
            burst("rate_limits.global_burst", r.global_burst, batch)?;
        }
        positive("rate_limits.max_tenants", r.max_tenants as u64)?;
        for (i, o) in r.overrides.iter().enumerate() {
            rate(
                &format!("rate_limits.overrides[{i}].events_per_second"),
                o.events_per_second,
            )?;
            burst(&format!("rate_limits.overrides[{i}].burst"), o.burst, batch)?;
        }
        let k = &self.kafka;
        not_blank("kafka.brokers", &k.brokers)?;
        not_blank("kafka.client_id", &k.client_id)?;
        if !k
            .topic_prefix
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
        {
            return Err(ConfigError::new(
                "kafka.topic_prefix",
                "may only contain ASCII letters, digits, '.', '_' and '-'",
            ));
        }
        positive("kafka.queue_max_messages", k.queue_max_messages)?;
        positive("kafka.batch_num_messages", k.batch_num_messages)?;
        if k.partitions < 1 {
            return Err(ConfigError::new("kafka.partitions", "must be at least 1"));
        }
        if k.replication_factor < 1 {
            return Err(ConfigError::new(
                "kafka.replication_factor",
                "must be at least 1",
            ));
        }
        let c = &self.clickhouse;
        if !(c.url.starts_with("http://") || c.url.starts_with("https://")) {
            return Err(ConfigError::new(
                "clickhouse.url",
                "must be an http:// or https:// URL",
            ));
        }
        identifier("clickhouse.database", &c.database)?;
        not_blank("clickhouse.user", &c.user)?;
        not_blank("clickhouse.kafka_brokers", &c.kafka_brokers)?;
        not_blank("clickhouse.kafka_group", &c.kafka_group)?;
        positive("auth.refresh_interval_ms", self.auth.refresh_interval_ms)?;
        let a = &self.auth;
        if a.clickhouse_keys && a.max_snapshot_age_ms < 2 * a.refresh_interval_ms {
            return Err(ConfigError::new(
                "auth.max_snapshot_age_ms",
                "must be at least twice auth.refresh_interval_ms, or one slow reload fails every key",
            ));
        }
        positive("auth.signature_max_skew_secs", a.signature_max_skew_secs)?;
        positive("auth.replay_cache_size", a.replay_cache_size as u64)?;
        positive("kafka.queue_max_kbytes", self.kafka.queue_max_kbytes)?;
        for (i, key) in self.auth.keys.iter().enumerate() {
            let s = &key.secret_sha256;
            if s.len() != 64 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(ConfigError::new(
                    format!("auth.keys[{i}].secret_sha256"),
                    "must be 64 hexadecimal characters (the SHA-256 of the secret)",
                ));
            }
            if let Some(other) = self.auth.keys[..i]
                .iter()
                .find(|k| k.tenant_id == key.tenant_id && k.tier != key.tier)
            {
                return Err(ConfigError::new(
                    format!("auth.keys[{i}].tier"),
                    format!(
                        "tenant {} already has tier {} from an earlier key: a tenant has one tier",
                        key.tenant_id,
                        other.tier.as_str()
                    ),
                ));
            }
        }
        if tracing_subscriber::EnvFilter::try_new(&self.log.level).is_err() {
            return Err(ConfigError::new(
                "log.level",
                format!("`{}` is not a valid log filter", self.log.level),
            ));
        }
        Ok(())
    }

    /// Names of the per-type event topics, in [`crate::event::EventType::ALL`] order.
    pub fn topics(&self) -> Vec<String> {
        crate::event::EventType::ALL
            .iter()
            .map(|t| t.topic(&self.kafka.topic_prefix))
            .collect()
    }
}

/// An IP network from a CIDR (`10.0.0.0/8`) or a single address (`127.0.0.1`).
pub fn parse_net(s: &str) -> Option<ipnet::IpNet> {
    s.parse::<ipnet::IpNet>()
        .ok()
        .or_else(|| s.parse::<std::net::IpAddr>().ok().map(ipnet::IpNet::from))
}

fn positive(key: &str, v: u64) -> Result<(), ConfigError> {
    if v == 0 {
        return Err(ConfigError::new(key, "must be greater than 0"));
    }
    Ok(())
}

fn rate(key: &str, v: f64) -> Result<(), ConfigError> {
    if !(v.is_finite() && v > 0.0) {
        return Err(ConfigError::new(key, "must be a positive number"));
    }
    Ok(())
}

fn burst(key: &str, v: u64, batch: u64) -> Result<(), ConfigError> {
    if v < batch {
        return Err(ConfigError::new(
            key,
            format!("must be at least gateway.max_events_per_batch ({batch}), or a full batch could never pass"),
        ));
    }
    Ok(())
}

fn not_blank(key: &str, v: &str) -> Result<(), ConfigError> {
    if v.trim().is_empty() {
        return Err(ConfigError::new(key, "must not be empty"));
    }
    Ok(())
}

fn identifier(key: &str, v: &str) -> Result<(), ConfigError> {
    let ok = !v.is_empty()
        && v.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        && !v.starts_with(|c: char| c.is_ascii_digit());
    if !ok {
        return Err(ConfigError::new(
            key,
            "must be an identifier (ASCII letters, digits and '_', not starting with a digit)",
        ));
    }
    Ok(())
}

/// serde reports an unknown field at its parent's path; name the field itself.
fn unknown_field_key(path: &str, message: &str) -> Option<String> {
    let rest = message.strip_prefix("unknown field `")?;
    let field = &rest[..rest.find('`')?];
    Some(if path == "." || path.is_empty() {
        field.to_string()
    } else if path == field || path.ends_with(&format!(".{field}")) {
        path.to_string()
    } else {
        format!("{path}.{field}")
    })
}

/// Best effort: the key on the line a TOML syntax error points at.
fn toml_error_key(text: &str, err: &toml::de::Error) -> String {
    err.span()
        .and_then(|span| {
            let start = text[..span.start.min(text.len())]
                .rfind('\n')
                .map_or(0, |i| i + 1);
            let line = text[start..].lines().next()?;
            let key = line.split('=').next()?.trim();
            (!key.is_empty()).then(|| key.to_string())
        })
        .unwrap_or_else(|| "--config".to_string())
}

fn merge(base: &mut toml::Table, over: toml::Table) {
    for (k, v) in over {
        match (base.get_mut(&k), v) {
            (Some(toml::Value::Table(b)), toml::Value::Table(o)) => merge(b, o),
            (_, v) => {
                base.insert(k, v);
            }
        }
    }
}

fn apply_env(root: &mut toml::Table, name: &str, raw: &str) -> Result<(), ConfigError> {
    let parts: Vec<String> = name[ENV_PREFIX.len()..]
        .split("__")
        .map(|s| s.to_ascii_lowercase())
        .collect();
    let key = parts.join(".");
    let malformed = || {
        ConfigError::new(
            key.clone(),
            format!("environment variable {name} must look like OVERWATCH__SECTION__KEY"),
        )
    };
    if parts.len() < 2 || parts.iter().any(|p| p.is_empty()) {
        return Err(malformed());
    }
    let Some((last, sections)) = parts.split_last() else {
        return Err(malformed());
    };
    let mut table = root;
    for s in sections {
        let entry = table
            .entry(s.clone())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        table = match entry {
            toml::Value::Table(t) => t,
            _ => {
                return Err(ConfigError::new(
                    key,
                    format!("{name}: `{s}` is not a section"),
                ))
            }
        };
    }
    let bad = |what: &str| ConfigError::new(key.clone(), format!("{name}={raw:?} is not {what}"));
    let value = match table.get(last) {
        Some(toml::Value::String(_)) => toml::Value::String(raw.to_string()),
        Some(toml::Value::Integer(_)) => {
            toml::Value::Integer(raw.trim().parse().map_err(|_| bad("an integer"))?)
        }
        Some(toml::Value::Float(_)) => {
            toml::Value::Float(raw.trim().parse().map_err(|_| bad("a number"))?)
        }
        Some(toml::Value::Boolean(_)) => {
            toml::Value::Boolean(raw.trim().parse().map_err(|_| bad("true or false"))?)
        }
        Some(toml::Value::Array(_)) | Some(toml::Value::Table(_)) | None => {
            parse_fragment(raw).unwrap_or_else(|| toml::Value::String(raw.to_string()))
        }
        Some(toml::Value::Datetime(_)) => parse_fragment(raw).ok_or_else(|| bad("a datetime"))?,
    };
    table.insert(last.clone(), value);
    Ok(())
}

fn parse_fragment(raw: &str) -> Option<toml::Value> {
    let mut t: toml::Table = format!("v = {raw}").parse().ok()?;
    t.remove("v")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn file(text: &str) -> tempfile_like::TempFile {
        tempfile_like::TempFile::with(text)
    }

    mod tempfile_like {
        use super::*;
        pub struct TempFile(pub std::path::PathBuf);
        impl TempFile {
            pub fn with(text: &str) -> Self {
                let p = std::env::temp_dir().join(format!(
                    "ow-config-{}-{}.toml",
                    std::process::id(),
                    uuid::Uuid::new_v4()
                ));
                let mut f = std::fs::File::create(&p).expect("create temp config");
                f.write_all(text.as_bytes()).expect("write temp config");
                TempFile(p)
            }
        }
        impl Drop for TempFile {
            fn drop(&mut self) {
                let _ = std::fs::remove_file(&self.0);
            }
        }
    }

    #[test]
    fn defaults_load_and_validate() {
        let c = Config::load_from(None, env(&[])).expect("defaults are valid");
        assert_eq!(c.gateway.listen.port(), 8080);
        assert_eq!(c.kafka.compression, Compression::Lz4);
        assert_eq!(c.topics()[0], "events_pageview");
    }

    #[test]
    fn file_then_env_override_in_order() {
        let f = file("[gateway]\nlisten = \"127.0.0.1:1234\"\ndelivery_timeout_ms = 77\n");
        let c = Config::load_from(
            Some(&f.0),
            env(&[
                ("OVERWATCH__GATEWAY__DELIVERY_TIMEOUT_MS", "99"),
                ("OVERWATCH__KAFKA__TOPIC_PREFIX", "t1_"),
                ("OTHER", "ignored"),
            ]),
        )
        .expect("valid");
        assert_eq!(c.gateway.listen.port(), 1234);
        assert_eq!(c.gateway.delivery_timeout_ms, 99);
        assert_eq!(c.topics()[1], "t1_events_click");
    }

    #[test]
    fn unknown_key_in_file_is_named() {
        let f = file("[gateway]\nlisten_port = 1\n");
        let e = Config::load_from(Some(&f.0), env(&[])).unwrap_err();
        assert_eq!(e.key, "gateway.listen_port");
    }

    #[test]
    fn unknown_section_is_named() {
        let f = file("[gatway]\nlisten = \"x\"\n");
        let e = Config::load_from(Some(&f.0), env(&[])).unwrap_err();
        assert_eq!(e.key, "gatway");
    }

    #[test]
    fn unknown_env_key_is_named() {
        let e = Config::load_from(None, env(&[("OVERWATCH__GATEWAY__NOPE", "1")])).unwrap_err();
        assert_eq!(e.key, "gateway.nope");
    }

    #[test]
    fn bad_env_type_is_named() {
        let e = Config::load_from(None, env(&[("OVERWATCH__GATEWAY__MAX_BODY_BYTES", "lots")]))
            .unwrap_err();
        assert_eq!(e.key, "gateway.max_body_bytes");
        assert!(e.message.contains("integer"), "{}", e.message);
    }

    #[test]
    fn invalid_value_is_named() {
        let e = Config::load_from(None, env(&[("OVERWATCH__GATEWAY__LISTEN", "not-an-addr")]))
            .unwrap_err();
        assert_eq!(e.key, "gateway.listen");
        let e = Config::load_from(None, env(&[("OVERWATCH__KAFKA__COMPRESSION", "brotli")]))
            .unwrap_err();
        assert_eq!(e.key, "kafka.compression");
        let e = Config::load_from(
            None,
            env(&[("OVERWATCH__GATEWAY__DELIVERY_TIMEOUT_MS", "0")]),
        )
        .unwrap_err();
        assert_eq!(e.key, "gateway.delivery_timeout_ms");
        let e = Config::load_from(None, env(&[("OVERWATCH__CLICKHOUSE__DATABASE", "a-b")]))
            .unwrap_err();
        assert_eq!(e.key, "clickhouse.database");
    }

    #[test]
    fn malformed_file_names_line_key() {
        let f = file("[gateway]\nlisten = \n");
        let e = Config::load_from(Some(&f.0), env(&[])).unwrap_err();
        assert_eq!(e.key, "listen");
    }

    #[test]
    fn missing_file_is_an_error() {
        let e = Config::load_from(Some(Path::new("/nonexistent/ow.toml")), env(&[])).unwrap_err();
        assert_eq!(e.key, "--config");
    }

    #[test]
    fn static_keys_are_checked() {
        let f = file(
            "[[auth.keys]]\ntenant_id = \"00000000-0000-0000-0000-000000000000\"\nsecret_sha256 = \"abc\"\n",
        );
        let e = Config::load_from(Some(&f.0), env(&[])).unwrap_err();
        assert_eq!(e.key, "auth.keys[0].secret_sha256");
        // One tenant, one tier.
        let key = |tier: &str| {
            format!(
                "[[auth.keys]]\ntenant_id = \"00000000-0000-0000-0000-000000000000\"\nsecret_sha256 = \"{}\"\ntier = \"{tier}\"\n",
                "ab".repeat(32)
            )
        };
        let f = file(&format!("{}{}", key("paid"), key("free")));
        let e = Config::load_from(Some(&f.0), env(&[])).unwrap_err();
        assert_eq!(e.key, "auth.keys[1].tier");
    }

    #[test]
    fn the_time_window_is_bounded_by_what_clickhouse_enforces() {
        let e = Config::load_from(
            None,
            env(&[("OVERWATCH__LIMITS__MAX_EVENT_AGE_HOURS", "9601")]),
        )
        .unwrap_err();
        assert_eq!(e.key, "limits.max_event_age_hours");
        let e = Config::load_from(
            None,
            env(&[("OVERWATCH__LIMITS__MAX_FUTURE_MINUTES", "1441")]),
        )
        .unwrap_err();
        assert_eq!(e.key, "limits.max_future_minutes");
        assert!(Config::load_from(
            None,
            env(&[("OVERWATCH__LIMITS__MAX_EVENT_AGE_HOURS", "9600")])
        )
        .is_ok());
    }
}
