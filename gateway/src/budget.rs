//! The gateway's worst-case memory, as a formula of its configuration.
//!
//! Every allocation that grows with what clients send is bounded by a setting:
//!
//! - request bodies being read or waiting to be decoded: each frame is
//!   reserved from `gateway.max_buffered_body_bytes` as it arrives, with the
//!   read buffer it holds on to (frames are kept as hyper read them, small
//!   ones copied together: at most twice the bytes);
//! - decoding, parsing and validation run on at most `gateway.cpu_workers`
//!   requests at once; each holds the inflated body (its buffer may double
//!   while it grows), simd-json's copy, string buffer and tape, and the parsed
//!   events: at most [`WORKER_BODY_FACTOR`] × `limits.max_decompressed_bytes`
//!   plus [`per_event_bytes`] per event, because the structure scan refuses a
//!   body with more events or values than the limits allow before any of it is
//!   built; a small plain body parsed inline on a network thread
//!   (`gateway.inline_max_body_bytes`) takes one of these slots too, and needs
//!   less than a worker may hold;
//! - each connection holds hyper's read and write buffers, bounded by
//!   `gateway.max_header_bytes`;
//! - produced events wait in librdkafka's queue (`kafka.queue_max_kbytes` of
//!   payload): the messages point into their request's rows, held (trimmed
//!   to size) until the last is acknowledged, or, when some rows had to be
//!   gathered, each message holds its own bytes and the rows are let go;
//! - each request in flight holds its answer (422 details are capped);
//! - freed memory the allocator keeps for the next request: up to
//!   `gateway.allocator.trim_threshold_bytes` in the arena of each thread that
//!   allocates request-sized buffers (the network threads, the CPU workers and
//!   librdkafka's broker thread); with glibc's own thresholds (both 0) an
//!   arena keeps up to twice the largest block freed so far, which the
//!   bound counts as `2 × limits.max_decompressed_bytes`. Memory freed below
//!   a block still in use is kept too, whatever the thresholds: the gateway
//!   brings the sum back to this term by releasing free memory when more is
//!   resident (`gateway.allocator.release_interval_ms`, `crate::alloc`).
//!
//! Baseline memory (code, the user-agent regexes and cache, a GeoIP database)
//! comes on top; `/health` on the operations listener shows it as
//! `memory.baseline_bytes` next to this bound.

use shared::config::Config;

/// Inflated body, its growth headroom, simd-json's input copy, string buffer
/// and structural index, in units of `limits.max_decompressed_bytes`.
pub const WORKER_BODY_FACTOR: u64 = 6;
/// Per connection beyond its read buffer: the write buffer, the task, the timers.
pub const CONNECTION_OVERHEAD: u64 = 8 * 1024;
/// The largest answer a request in flight holds (details capped at 32 KiB).
pub const ANSWER_BYTES: u64 = 64 * 1024;
/// Threads besides the network threads and the CPU workers whose arena holds
/// request-sized blocks: librdkafka's broker thread (produce requests).
pub const OTHER_ALLOCATING_THREADS: u64 = 1;

/// The parsed form of one event: its fields, its tape nodes, and its
/// `properties` (at most `limits.max_properties` values).
pub fn per_event_bytes(max_properties: usize) -> u64 {
    2048 + 96 * max_properties as u64
}

/// Bytes each term of the bound contributes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemoryBound {
    pub bodies: u64,
    pub workers: u64,
    pub connections: u64,
    pub producer: u64,
    pub answers: u64,
    pub allocator: u64,
}

impl MemoryBound {
    pub fn of(cfg: &Config) -> MemoryBound {
        let g = &cfg.gateway;
        let l = &cfg.limits;
        let per_worker = WORKER_BODY_FACTOR * l.max_decompressed_bytes
            + g.max_events_per_batch as u64 * per_event_bytes(l.max_properties);
        MemoryBound {
            bodies: g.max_buffered_body_bytes,
            workers: g.cpu_workers() as u64 * per_worker,
            connections: g.max_connections as u64
                * (2 * g.max_header_bytes as u64 + CONNECTION_OVERHEAD),
            producer: cfg.kafka.queue_max_kbytes * 1024,
            answers: g.max_in_flight_requests as u64 * ANSWER_BYTES,
            allocator: ((g.cpu_workers() + g.network_threads()) as u64)
                .saturating_add(OTHER_ALLOCATING_THREADS)
                .saturating_mul(if g.allocator.is_set() {
                    g.allocator.trim_threshold_bytes
                } else {
                    2 * l.max_decompressed_bytes
                }),
        }
    }

    /// The free memory the allocator may keep resident before a release
    /// (`gateway.allocator.release_above_bytes`; 0: this bound's term for it).
    pub fn kept_limit(&self, cfg: &shared::config::AllocatorConfig) -> u64 {
        if cfg.release_above_bytes > 0 {
            cfg.release_above_bytes
        } else {
            self.allocator
        }
    }

    pub fn total(&self) -> u64 {
        self.bodies
            + self.workers
            + self.connections
            + self.producer
            + self.answers
            + self.allocator
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The defaults, with two CPUs' worth of workers and network threads
    /// (what the chart's pods get).
    fn two_cores() -> Config {
        let mut cfg = Config::load_from(None, Vec::new()).expect("defaults");
        cfg.gateway.cpu_workers = 2;
        cfg.gateway.network_threads = 2;
        cfg
    }

    #[test]
    fn the_defaults_fit_the_helm_memory_limit() {
        let bound = MemoryBound::of(&two_cores());
        // helm/overwatch/values.yaml: gateway.resources.limits.memory = 512Mi,
        // of which up to 64 MiB are the baseline.
        assert!(
            bound.total() <= (512 - 64) << 20,
            "{bound:?} = {} MiB",
            bound.total() >> 20
        );
    }

    #[test]
    fn free_memory_is_released_above_the_bounds_term_for_it_unless_set() {
        let mut cfg = two_cores();
        let bound = MemoryBound::of(&cfg);
        // By default a release runs when more is kept than the bound counts
        // for it: the trim threshold of each allocating thread.
        assert_eq!(
            bound.kept_limit(&cfg.gateway.allocator),
            5 * cfg.gateway.allocator.trim_threshold_bytes
        );
        cfg.gateway.allocator.release_above_bytes = 16 << 20;
        assert_eq!(bound.kept_limit(&cfg.gateway.allocator), 16 << 20);
    }
}
