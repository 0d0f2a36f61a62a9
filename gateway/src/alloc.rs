//! The process's memory allocator: how much freed memory glibc keeps for the
//! next request instead of returning it to the kernel
//! (`[gateway.allocator]`). The binary sets the thresholds once, at start
//! (tests that run the server in-process keep glibc's defaults); the server
//! runs the periodic release (below) wherever it runs.
//!
//! glibc's own thresholds move: after a large block is freed, blocks up to its
//! size come from the thread's arena, and the arena returns its free top to
//! the kernel once that exceeds twice the size. A 1000-event request's
//! buffers (the body, simd-json's copy and tape, the rows: about 0.5-1 MB
//! each, freed on other threads than the one that allocated most of them)
//! kept crossing that line, so its next request page-faulted them in again.
//!
//! The thresholds only reach an arena's free top. Memory freed below a block
//! still in use, or by a burst that grew an arena further than steady load
//! needs, stays resident: RSS rose in steps that lasted for minutes during a
//! one-hour soak. So with `release_interval_ms` set (off by default: see
//! docs/benchmarks.md) a background task hands, at that interval,
//! the whole free pages inside every arena back to the kernel ([`release`];
//! glibc also trims the main arena's top then, while the other arenas' tops
//! keep up to `trim_threshold_bytes` as before), and the next requests fault
//! in what they use again, once per interval.

use std::time::{Duration, Instant};

use metrics::{
    counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram, Unit,
};
use shared::config::AllocatorConfig;

pub const ALLOCATOR_RELEASES: &str = "overwatch_allocator_releases_total";
pub const ALLOCATOR_RELEASED_BYTES: &str = "overwatch_allocator_released_bytes_total";
pub const ALLOCATOR_IN_USE_BYTES: &str = "overwatch_allocator_in_use_bytes";
pub const ALLOCATOR_FREE_BYTES: &str = "overwatch_allocator_free_bytes";
pub const ALLOCATOR_RELEASE_DURATION: &str = "overwatch_allocator_release_duration_seconds";

/// What [`tune`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tuned {
    /// Both thresholds 0: glibc's defaults stay.
    Defaults,
    /// The thresholds are set.
    Set { mmap_bytes: u64, trim_bytes: u64 },
    /// Not glibc: the setting has no effect here.
    Unsupported,
}

/// Sets glibc's mmap and trim thresholds from `cfg` (validated: both fit
/// glibc's limits). An error names the key glibc refused.
pub fn tune(cfg: &AllocatorConfig) -> Result<Tuned, String> {
    if !cfg.is_set() {
        return Ok(Tuned::Defaults);
    }
    imp::set(cfg)
}

/// What one release did and what the allocator held right after it.
#[derive(Debug, Clone, Copy)]
pub struct Released {
    /// How much the resident set shrank meanwhile (other threads keep
    /// allocating, so it is an estimate).
    pub bytes: u64,
    /// Bytes in blocks in use (glibc's `mallinfo2`: arenas and mapped blocks).
    pub in_use: u64,
    /// Bytes free inside the arenas, kept for the next allocations (after a
    /// release only the tops of arenas other than the main one keep theirs
    /// resident).
    pub free: u64,
    pub took: Duration,
}

/// Hands the whole free pages inside every arena (and the main arena's top)
/// back to the kernel, or `None` where the allocator cannot (not glibc).
pub fn release() -> Option<Released> {
    let started = Instant::now();
    let before = resident_bytes();
    if !imp::trim() {
        return None;
    }
    let bytes = before
        .zip(resident_bytes())
        .map_or(0, |(b, a)| b.saturating_sub(a));
    let (in_use, free) = imp::usage();
    Some(Released {
        bytes,
        in_use,
        free,
        took: started.elapsed(),
    })
}

/// This process's resident set in bytes (Linux `/proc/self/statm`; absent
/// elsewhere).
pub fn resident_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * page_bytes())
}

fn page_bytes() -> u64 {
    // SAFETY: sysconf only reads a constant of the system.
    let p = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    u64::try_from(p).unwrap_or(4096)
}

/// Releases free memory every `interval` (see [`release`]) until aborted; a
/// release runs on a blocking thread (it walks every arena under its lock).
pub fn spawn_release(interval: Duration) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            tick.tick().await;
            match tokio::task::spawn_blocking(release).await {
                Ok(Some(released)) => released.emit(),
                Ok(None) => {
                    tracing::info!("this allocator cannot release free memory: not releasing");
                    return;
                }
                Err(e) => tracing::warn!(error = %e, "releasing free memory failed"),
            }
        }
    })
}

impl Released {
    fn emit(&self) {
        counter!(ALLOCATOR_RELEASES).increment(1);
        counter!(ALLOCATOR_RELEASED_BYTES).increment(self.bytes);
        gauge!(ALLOCATOR_IN_USE_BYTES).set(self.in_use as f64);
        gauge!(ALLOCATOR_FREE_BYTES).set(self.free as f64);
        histogram!(ALLOCATOR_RELEASE_DURATION).record(self.took.as_secs_f64());
        tracing::debug!(
            released = self.bytes,
            in_use = self.in_use,
            free = self.free,
            took_us = self.took.as_micros() as u64,
            "free memory released to the kernel"
        );
    }
}

pub fn describe_metrics() {
    describe_counter!(
        ALLOCATOR_RELEASES,
        Unit::Count,
        "Times the gateway handed its allocator's free pages back to the kernel (gateway.allocator.release_interval_ms)"
    );
    describe_counter!(
        ALLOCATOR_RELEASED_BYTES,
        Unit::Bytes,
        "How much the resident set shrank across those releases (an estimate: other threads keep allocating)"
    );
    describe_histogram!(
        ALLOCATOR_RELEASE_DURATION,
        Unit::Seconds,
        "How long a release took: it holds each arena's lock while it walks it, so allocations on that arena wait"
    );
    describe_gauge!(
        ALLOCATOR_IN_USE_BYTES,
        Unit::Bytes,
        "Bytes the allocator had in use at the last release: what the gateway holds, beside what the allocator keeps free"
    );
    describe_gauge!(
        ALLOCATOR_FREE_BYTES,
        Unit::Bytes,
        "Bytes free inside the allocator's arenas at the last release (kept for reuse; after a release only the tops of arenas other than the main one stay resident)"
    );
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
mod imp {
    use super::{AllocatorConfig, Tuned};

    /// glibc's `malloc_trim(0)`: the free pages inside every arena, and the
    /// main arena's top.
    pub(super) fn trim() -> bool {
        // SAFETY: malloc_trim only works on the allocator's own structures,
        // under each arena's lock.
        unsafe { libc::malloc_trim(0) };
        true
    }

    /// (bytes in use, bytes free in the arenas), summed over every arena.
    pub(super) fn usage() -> (u64, u64) {
        // SAFETY: mallinfo2 reads the allocator's counters under each
        // arena's lock and returns them by value.
        let m = unsafe { libc::mallinfo2() };
        ((m.uordblks + m.hblkhd) as u64, m.fordblks as u64)
    }

    pub(super) fn set(cfg: &AllocatorConfig) -> Result<Tuned, String> {
        for (key, param, value) in [
            (
                "gateway.allocator.mmap_threshold_bytes",
                libc::M_MMAP_THRESHOLD,
                cfg.mmap_threshold_bytes,
            ),
            (
                "gateway.allocator.trim_threshold_bytes",
                libc::M_TRIM_THRESHOLD,
                cfg.trim_threshold_bytes,
            ),
        ] {
            let v = libc::c_int::try_from(value)
                .map_err(|_| format!("{key} = {value} does not fit glibc's mallopt"))?;
            // SAFETY: mallopt only updates the allocator's parameters, under
            // its own lock; it reads no memory of ours.
            if unsafe { libc::mallopt(param, v) } != 1 {
                return Err(format!("{key} = {value}: glibc's mallopt refused it"));
            }
        }
        Ok(Tuned::Set {
            mmap_bytes: cfg.mmap_threshold_bytes,
            trim_bytes: cfg.trim_threshold_bytes,
        })
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
mod imp {
    use super::{AllocatorConfig, Tuned};

    pub(super) fn trim() -> bool {
        false
    }

    pub(super) fn usage() -> (u64, u64) {
        (0, 0)
    }

    pub(super) fn set(_: &AllocatorConfig) -> Result<Tuned, String> {
        Ok(Tuned::Unsupported)
    }
}
