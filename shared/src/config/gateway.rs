//! `[gateway]`: the public listener, its connection limits and timeouts, the
//! operations listener, request admission and where client addresses come from.

use std::net::SocketAddr;

use serde::Deserialize;

use super::check::{parse_net, positive};
use super::ConfigError;

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
    /// Requests decoded, parsed and validated at once, each on a worker
    /// thread of its own (0: one per CPU core; at most [`MAX_THREADS`]).
    pub cpu_workers: usize,
    /// Threads serving connections (0: one per CPU core, or tokio's
    /// `TOKIO_WORKER_THREADS`; at most [`MAX_THREADS`]).
    pub network_threads: usize,
    /// Uncompressed bodies up to this size are parsed and validated on the
    /// network thread that read them (microseconds of work) instead of being
    /// handed to a worker; 0: every body goes to a worker.
    pub inline_max_body_bytes: usize,
    /// Most entries in a 422's `details`; the rest are counted, not listed.
    pub max_error_details: usize,
    /// First-party path prefixes: a request to `<prefix><path>` is served as
    /// `<path>` (e.g. `/k9x` makes `/k9x/e/` PostHog's capture), so pages can
    /// send to their own domain under a path ad blockers do not know.
    pub path_prefixes: Vec<String>,
    /// How the process's memory allocator keeps freed memory (`[gateway.allocator]`).
    pub allocator: AllocatorConfig,
}

/// `[gateway.allocator]`: how much freed memory glibc's allocator keeps for
/// the next request instead of handing it back to the kernel, which must zero
/// and map every page again on its next use (a page fault each).
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AllocatorConfig {
    /// Allocations larger than this are mapped from the kernel and returned to
    /// it when freed; smaller ones reuse memory freed before. 0 with
    /// `trim_threshold_bytes = 0`: glibc's own (moving) thresholds.
    pub mmap_threshold_bytes: u64,
    /// Free memory each allocator arena (about one per thread) keeps at its
    /// top before it returns the excess to the kernel.
    pub trim_threshold_bytes: u64,
    /// How often the gateway compares the free memory its allocator keeps
    /// resident with `release_above_bytes`, and hands the whole free pages
    /// inside every arena back to the kernel (glibc's `malloc_trim`) when it
    /// is more; 0: never. The thresholds above only reach an arena's top, so
    /// without it memory freed after a burst stays resident.
    pub release_interval_ms: u64,
    /// Free memory the allocator may keep resident before a release runs;
    /// 0: the memory bound's term for it (`trim_threshold_bytes` per thread
    /// that allocates request-sized buffers). Below it nothing is released,
    /// so steady load faults nothing in again.
    pub release_above_bytes: u64,
}

/// glibc refuses a larger `M_MMAP_THRESHOLD` on 64-bit targets.
pub const MAX_MMAP_THRESHOLD_BYTES: u64 = 32 << 20;
/// Largest `trim_threshold_bytes` (mallopt takes an `int`).
pub const MAX_TRIM_THRESHOLD_BYTES: u64 = 1 << 30;
/// Shortest and longest `release_interval_ms` other than 0.
pub const MIN_RELEASE_INTERVAL_MS: u64 = 100;
pub const MAX_RELEASE_INTERVAL_MS: u64 = 3_600_000;

impl AllocatorConfig {
    /// Whether the gateway sets the thresholds (else glibc's defaults stay).
    pub fn is_set(&self) -> bool {
        self.mmap_threshold_bytes > 0 || self.trim_threshold_bytes > 0
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.release_interval_ms != 0
            && !(MIN_RELEASE_INTERVAL_MS..=MAX_RELEASE_INTERVAL_MS)
                .contains(&self.release_interval_ms)
        {
            return Err(ConfigError::new(
                "gateway.allocator.release_interval_ms",
                format!(
                    "must be 0 (never) or between {MIN_RELEASE_INTERVAL_MS} and {MAX_RELEASE_INTERVAL_MS}: \
                     each release makes the next requests fault their buffers in again"
                ),
            ));
        }
        if !self.is_set() {
            return Ok(());
        }
        if !(1..=MAX_MMAP_THRESHOLD_BYTES).contains(&self.mmap_threshold_bytes) {
            return Err(ConfigError::new(
                "gateway.allocator.mmap_threshold_bytes",
                format!(
                    "must be between 1 and {MAX_MMAP_THRESHOLD_BYTES} (or both thresholds 0 for glibc's defaults)"
                ),
            ));
        }
        if !(self.mmap_threshold_bytes..=MAX_TRIM_THRESHOLD_BYTES)
            .contains(&self.trim_threshold_bytes)
        {
            return Err(ConfigError::new(
                "gateway.allocator.trim_threshold_bytes",
                format!(
                    "must be between gateway.allocator.mmap_threshold_bytes and {MAX_TRIM_THRESHOLD_BYTES}: \
                     an arena that returned less than one large allocation would fault it in again every request"
                ),
            ));
        }
        Ok(())
    }
}

/// Most threads `gateway.cpu_workers` and `gateway.network_threads` may ask
/// for: each is started when the gateway starts.
pub const MAX_THREADS: usize = 1024;

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
    pub fn validate(&self) -> Result<(), ConfigError> {
        positive("gateway.max_body_bytes", self.max_body_bytes)?;
        positive("gateway.delivery_timeout_ms", self.delivery_timeout_ms)?;
        positive("gateway.shutdown_timeout_ms", self.shutdown_timeout_ms)?;
        positive(
            "gateway.max_in_flight_requests",
            self.max_in_flight_requests as u64,
        )?;
        positive(
            "gateway.broker_check_interval_ms",
            self.broker_check_interval_ms,
        )?;
        positive("gateway.retry_after_secs", self.retry_after_secs)?;
        if self.max_events_per_batch == 0 || self.max_events_per_batch > 10_000 {
            return Err(ConfigError::new(
                "gateway.max_events_per_batch",
                "must be between 1 and 10000",
            ));
        }
        for (i, cidr) in self.trusted_proxies.iter().enumerate() {
            if parse_net(cidr).is_none() {
                return Err(ConfigError::new(
                    format!("gateway.trusted_proxies[{i}]"),
                    format!("`{cidr}` is not an IP address or CIDR"),
                ));
            }
        }
        positive("gateway.max_connections", self.max_connections as u64)?;
        positive(
            "gateway.header_read_timeout_ms",
            self.header_read_timeout_ms,
        )?;
        positive("gateway.body_read_timeout_ms", self.body_read_timeout_ms)?;
        positive("gateway.idle_timeout_ms", self.idle_timeout_ms)?;
        positive("gateway.max_headers", self.max_headers as u64)?;
        positive("gateway.max_error_details", self.max_error_details as u64)?;
        for (i, p) in self.path_prefixes.iter().enumerate() {
            let ok = p.len() > 1
                && p.starts_with('/')
                && !p.ends_with('/')
                && p.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"/-_.".contains(&b));
            if !ok {
                return Err(ConfigError::new(
                    format!("gateway.path_prefixes[{i}]"),
                    format!("{p:?} must start with `/`, not end with one, and use only letters, digits, `-`, `_`, `.` and `/`"),
                ));
            }
        }
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
        for (key, n) in [
            ("gateway.cpu_workers", self.cpu_workers),
            ("gateway.network_threads", self.network_threads),
        ] {
            if n > MAX_THREADS {
                return Err(ConfigError::new(
                    key,
                    format!("must be at most {MAX_THREADS} (0: one per CPU core)"),
                ));
            }
        }
        self.allocator.validate()?;
        if self.operations_listen == self.listen && self.listen.port() != 0 {
            return Err(ConfigError::new(
                "gateway.operations_listen",
                "must differ from gateway.listen: /metrics and /health stay off the public port",
            ));
        }
        Ok(())
    }

    /// hyper's read buffer per connection (its `max_buf_size`): the request
    /// head must fit, and a body arrives in frames of at most this size.
    pub fn read_buffer_bytes(&self) -> usize {
        self.max_header_bytes.max(8192)
    }

    /// Decode workers: `cpu_workers`, or one per core.
    pub fn cpu_workers(&self) -> usize {
        or_one_per_core(self.cpu_workers)
    }

    /// Network threads: `network_threads`, or one per core.
    pub fn network_threads(&self) -> usize {
        or_one_per_core(self.network_threads)
    }
}

/// `n`, or one per CPU core for 0.
fn or_one_per_core(n: usize) -> usize {
    if n > 0 {
        n
    } else {
        std::thread::available_parallelism().map_or(2, |n| n.get())
    }
}
