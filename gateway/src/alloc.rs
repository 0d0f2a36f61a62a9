//! The process's memory allocator: how much freed memory glibc keeps for the
//! next request instead of returning it to the kernel
//! (`[gateway.allocator]`). The binary sets it once, at start; tests that run
//! the server in-process keep glibc's defaults.
//!
//! glibc's own thresholds move: after a large block is freed, blocks up to its
//! size come from the thread's arena, and the arena returns its free top to
//! the kernel once that exceeds twice the size. A 1000-event request's
//! buffers (the body, simd-json's copy and tape, the rows: about 0.5-1 MB
//! each, freed on other threads than the one that allocated most of them)
//! kept crossing that line, so its next request page-faulted them in again.

use shared::config::AllocatorConfig;

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

#[cfg(all(target_os = "linux", target_env = "gnu"))]
mod imp {
    use super::{AllocatorConfig, Tuned};

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

    pub(super) fn set(_: &AllocatorConfig) -> Result<Tuned, String> {
        Ok(Tuned::Unsupported)
    }
}
