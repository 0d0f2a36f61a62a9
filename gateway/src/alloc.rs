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
//! one-hour soak, and the free memory kept outgrew the memory bound's term
//! for it. So every `release_interval_ms` a background task estimates the
//! free memory still resident ([`usage`]) and, when it is more than
//! `release_above_bytes` (by default that term of the bound), hands the whole
//! free pages inside every arena back to the kernel ([`release`]; glibc also
//! trims the main arena's top then, while the other arenas' tops keep up to
//! `trim_threshold_bytes` as before). Below the limit nothing is released:
//! releasing at every interval took 10-15 MB from steady load each time,
//! which its next requests faulted in again.

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
pub const ALLOCATOR_KEPT_BYTES: &str = "overwatch_allocator_kept_bytes";
pub const ALLOCATOR_CHECKS: &str = "overwatch_allocator_checks_total";

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

/// The allocator's memory at one instant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Usage {
    /// Bytes in blocks in use (glibc's `mallinfo2`: arenas and mapped blocks).
    pub in_use: u64,
    /// Bytes free inside the arenas, resident or already handed back.
    pub free: u64,
    /// Free memory still resident, estimated: the process's anonymous
    /// resident memory less `in_use` (thread stacks count as kept; blocks in
    /// use that were never touched make it smaller).
    pub kept: u64,
    /// The process's resident set.
    pub resident: u64,
}

/// What one release did.
#[derive(Debug, Clone, Copy)]
pub struct Released {
    /// How much the resident set shrank from the check before it to the
    /// one after (other threads keep allocating, so it is an estimate).
    pub bytes: u64,
    /// How long `malloc_trim` took.
    pub took: Duration,
}

/// The allocator's memory now, or `None` where it cannot tell (not glibc, or
/// no `/proc`).
pub fn usage() -> Option<Usage> {
    let (in_use, free) = imp::usage()?;
    let statm = statm()?;
    Some(Usage {
        in_use,
        free,
        kept: statm.anonymous.saturating_sub(in_use),
        resident: statm.resident,
    })
}

/// Hands the whole free pages inside every arena (and the main arena's top)
/// back to the kernel and returns how long that took, or `None` where the
/// allocator cannot (not glibc).
pub fn release() -> Option<Duration> {
    let started = Instant::now();
    imp::trim().then(|| started.elapsed())
}

/// What one check found, and the release it ran when the allocator kept
/// more than its limit resident.
#[derive(Debug, Clone, Copy)]
pub struct Checked {
    pub usage: Usage,
    pub released: Option<Released>,
}

/// Decides, check by check, when free memory goes back to the kernel.
#[derive(Debug, Clone, Copy)]
pub struct Releaser {
    /// Free memory that may stay resident.
    above: u64,
    /// What was still kept right after the last release. A release cannot
    /// take the tops of the arenas other than the main one, so when those
    /// alone exceed the limit the next release waits until the kept memory
    /// has grown by a quarter of the limit since: releasing at every check
    /// would take pages from steady load for its next requests to fault in.
    after_last: Option<u64>,
}

impl Releaser {
    pub fn new(above: u64) -> Releaser {
        Releaser {
            above,
            after_last: None,
        }
    }

    /// Whether a check that found `kept` bytes of free memory resident
    /// releases it.
    pub fn due(&self, kept: u64) -> bool {
        kept > self.above
            && self
                .after_last
                .is_none_or(|after| kept > after.saturating_add(self.above / 4))
    }

    /// Reads [`usage`], and runs [`release`] when [`Releaser::due`]; `None`
    /// where the allocator cannot tell.
    pub fn check(&mut self) -> Option<Checked> {
        let found = usage()?;
        if !self.due(found.kept) {
            return Some(Checked {
                usage: found,
                released: None,
            });
        }
        let took = release()?;
        let after = usage().unwrap_or(found);
        self.after_last = Some(after.kept);
        Some(Checked {
            usage: after,
            released: Some(Released {
                bytes: found.resident.saturating_sub(after.resident),
                took,
            }),
        })
    }
}

/// This process's resident set in bytes (Linux `/proc/self/statm`; absent
/// elsewhere).
pub fn resident_bytes() -> Option<u64> {
    statm().map(|s| s.resident)
}

struct Statm {
    resident: u64,
    /// Resident and not backed by a file or shared memory: the heap, thread
    /// stacks and anonymous mappings.
    anonymous: u64,
}

fn statm() -> Option<Statm> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let mut fields = statm.split_whitespace().skip(1);
    let resident: u64 = fields.next()?.parse().ok()?;
    let shared: u64 = fields.next()?.parse().ok()?;
    let page = page_bytes();
    Some(Statm {
        resident: resident * page,
        anonymous: resident.saturating_sub(shared) * page,
    })
}

fn page_bytes() -> u64 {
    // SAFETY: sysconf only reads a constant of the system.
    let p = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    u64::try_from(p).unwrap_or(4096)
}

/// Every `interval` until aborted, checks the free memory kept resident
/// against `above` and releases it when due (see [`Releaser`]); on a
/// blocking thread, as a release walks every arena under its lock.
pub fn spawn_release(interval: Duration, above: u64) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        let mut releaser = Releaser::new(above);
        loop {
            tick.tick().await;
            let checked = tokio::task::spawn_blocking(move || {
                let checked = releaser.check();
                (releaser, checked)
            })
            .await;
            match checked {
                Ok((next, Some(checked))) => {
                    releaser = next;
                    checked.emit(above);
                }
                Ok((_, None)) => {
                    tracing::info!(
                        "this allocator cannot tell or release free memory: not checking"
                    );
                    return;
                }
                Err(e) => tracing::warn!(error = %e, "checking free memory failed"),
            }
        }
    })
}

impl Checked {
    fn emit(&self, above: u64) {
        counter!(ALLOCATOR_CHECKS).increment(1);
        gauge!(ALLOCATOR_IN_USE_BYTES).set(self.usage.in_use as f64);
        gauge!(ALLOCATOR_FREE_BYTES).set(self.usage.free as f64);
        gauge!(ALLOCATOR_KEPT_BYTES).set(self.usage.kept as f64);
        let Some(r) = self.released else { return };
        counter!(ALLOCATOR_RELEASES).increment(1);
        counter!(ALLOCATOR_RELEASED_BYTES).increment(r.bytes);
        histogram!(ALLOCATOR_RELEASE_DURATION).record(r.took.as_secs_f64());
        tracing::debug!(
            released = r.bytes,
            in_use = self.usage.in_use,
            kept = self.usage.kept,
            above,
            took_us = r.took.as_micros() as u64,
            "free memory above the limit released to the kernel"
        );
    }
}

pub fn describe_metrics() {
    describe_counter!(
        ALLOCATOR_CHECKS,
        Unit::Count,
        "Times the gateway compared the free memory its allocator keeps resident with gateway.allocator.release_above_bytes"
    );
    describe_counter!(
        ALLOCATOR_RELEASES,
        Unit::Count,
        "Times a check found more free memory resident than the limit and handed the allocator's free pages back to the kernel"
    );
    describe_counter!(
        ALLOCATOR_RELEASED_BYTES,
        Unit::Bytes,
        "How much the resident set shrank across those releases (an estimate: other threads keep allocating)"
    );
    describe_histogram!(
        ALLOCATOR_RELEASE_DURATION,
        Unit::Seconds,
        "How long a release (malloc_trim) took: it holds each arena's lock while it walks it, so allocations on that arena wait"
    );
    describe_gauge!(
        ALLOCATOR_IN_USE_BYTES,
        Unit::Bytes,
        "Bytes the allocator had in use at the last check: what the gateway holds, beside what the allocator keeps free"
    );
    describe_gauge!(
        ALLOCATOR_FREE_BYTES,
        Unit::Bytes,
        "Bytes free inside the allocator's arenas at the last check, resident or already handed back"
    );
    describe_gauge!(
        ALLOCATOR_KEPT_BYTES,
        Unit::Bytes,
        "Free memory still resident at the last check (after its release, if one ran): anonymous resident memory less the bytes in use"
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
    pub(super) fn usage() -> Option<(u64, u64)> {
        // SAFETY: mallinfo2 reads the allocator's counters under each
        // arena's lock and returns them by value.
        let m = unsafe { libc::mallinfo2() };
        Some(((m.uordblks + m.hblkhd) as u64, m.fordblks as u64))
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

    pub(super) fn usage() -> Option<(u64, u64)> {
        None
    }

    pub(super) fn set(_: &AllocatorConfig) -> Result<Tuned, String> {
        Ok(Tuned::Unsupported)
    }
}

#[cfg(test)]
mod tests {
    use super::Releaser;

    const MIB: u64 = 1 << 20;

    #[test]
    fn a_release_is_due_above_the_limit_and_then_only_once_kept_memory_grew_again() {
        let mut r = Releaser::new(40 * MIB);
        assert!(!r.due(40 * MIB), "at the limit");
        assert!(r.due(41 * MIB), "above it, before any release");
        // The release left 45 MiB (tops it cannot take): steady load that
        // keeps about that much must not release at every check.
        r.after_last = Some(45 * MIB);
        assert!(!r.due(50 * MIB));
        assert!(!r.due(55 * MIB));
        assert!(
            r.due(56 * MIB),
            "a quarter of the limit more than after the last release"
        );
        // A release that went below the limit: the limit decides again.
        r.after_last = Some(20 * MIB);
        assert!(!r.due(39 * MIB));
        assert!(r.due(41 * MIB));
    }
}
