//! Giving memory back to the operating system after a burst of connections.
//!
//! glibc's allocator keeps freed heap in its arenas: measured with `tether-bench flood`, a node
//! still held 82 MiB of RSS after 2,500 connections that never logged in had closed, and 4 MiB
//! once `malloc_trim(0)` was called on it (docs/bench.md). So a background task trims the
//! heap after the number of open connections has fallen well below its recent peak.

use std::sync::Arc;
use std::time::Duration;

use std::sync::Mutex;

use crate::admission::Admission;
use crate::metrics::Metrics;

/// Open connections that must have gone since the last peak before the heap is trimmed.
pub const TRIM_AFTER_CLOSED: usize = 256;

/// Whether to trim now: at least [`TRIM_AFTER_CLOSED`] fewer connections are open than at
/// the peak since the last check.
pub fn should_trim(peak: usize, open: usize) -> bool {
    peak.saturating_sub(open) >= TRIM_AFTER_CLOSED
}

/// Returns free heap memory to the OS (glibc only; elsewhere a no-op). True if any was.
pub fn trim() -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: malloc_trim only walks the allocator's own free lists; it takes no pointers.
        unsafe { libc::malloc_trim(0) != 0 }
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        false
    }
}

/// Spawns the task that checks every `every` whether to trim (`every` zero: no task).
pub fn spawn_trimmer(
    admission: Arc<Mutex<Admission>>,
    metrics: Arc<Metrics>,
    every: Duration,
) -> Option<tokio::task::JoinHandle<()>> {
    if every.is_zero() {
        return None;
    }
    Some(tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        loop {
            tick.tick().await;
            let (peak, open) = {
                let mut a = admission.lock().unwrap_or_else(|e| e.into_inner());
                (a.take_peak(), a.connections())
            };
            if should_trim(peak, open) {
                let freed = tokio::task::spawn_blocking(trim).await.unwrap_or(false);
                metrics.memory_trims.inc();
                tracing::debug!(freed, "heap trimmed after connections closed");
            }
        }
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trims_once_connections_fell_well_below_their_peak() {
        assert!(!should_trim(3000, 2900), "a small dip is not worth a trim");
        assert!(should_trim(3000, 50), "most connections are gone");
        assert!(!should_trim(200, 0), "below the threshold");
        assert!(!should_trim(0, 10));
    }
}
