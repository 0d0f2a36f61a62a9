//! The gateway process's CPU time and memory, read from /proc (Linux).

use std::time::Duration;

/// CPU seconds (user + system) the process has used so far.
pub fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name, which is in parentheses and may hold spaces.
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = f.get(11)?.parse().ok()?;
    let stime: f64 = f.get(12)?.parse().ok()?;
    Some((utime + stime) / clock_ticks())
}

fn clock_ticks() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as f64
    } else {
        100.0
    }
}

/// Resident set size and its peak (VmRSS, VmHWM), in bytes.
pub fn memory(pid: u32) -> Option<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| -> Option<u64> {
        let line = status.lines().find(|l| l.starts_with(name))?;
        let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
        Some(kb * 1024)
    };
    Some((field("VmRSS:")?, field("VmHWM:")?))
}

/// (seconds since sampling began, RSS bytes) samples.
pub type RssSamples = std::sync::Arc<std::sync::Mutex<Vec<(f64, u64)>>>;

/// RSS samples taken every `every` until the returned task is aborted.
pub fn sample_rss(pid: u32, every: Duration) -> (tokio::task::JoinHandle<()>, RssSamples) {
    let samples = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let out = std::sync::Arc::clone(&samples);
    let start = std::time::Instant::now();
    let h = tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        loop {
            tick.tick().await;
            if let Some((rss, _)) = memory(pid) {
                if let Ok(mut s) = out.lock() {
                    // Bounded: one sample per tick; a 1-hour soak at 1 s is 3,600.
                    if s.len() < 100_000 {
                        s.push((start.elapsed().as_secs_f64(), rss));
                    }
                }
            }
        }
    });
    (h, samples)
}

#[cfg(test)]
mod tests {
    #[test]
    fn reads_this_process() {
        let pid = std::process::id();
        let spin = std::time::Instant::now();
        let mut x = 0u64;
        while spin.elapsed() < std::time::Duration::from_millis(50) {
            x = x.wrapping_add(1);
        }
        assert!(x > 0);
        assert!(super::cpu_seconds(pid).expect("cpu") > 0.0);
        let (rss, hwm) = super::memory(pid).expect("memory");
        assert!(rss > 0 && hwm >= rss);
    }
}
