//! Message ids: 64-bit, unique across a cluster, roughly time-ordered (snowflake layout).
//!
//! `| 41 bits ms since 2024-01-01 | 10 bits node id | 12 bits counter |`

use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

/// 2024-01-01T00:00:00Z in ms since the Unix epoch.
const EPOCH_MS: u64 = 1_704_067_200_000;

/// Milliseconds since the Unix epoch, from the system clock.
pub fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

/// Generates message ids for one node.
#[derive(Debug)]
pub struct MsgIdGen {
    node: u64,
    state: Mutex<(u64, u64)>, // (last ms, counter)
}

impl MsgIdGen {
    /// A generator for node `node` (0..1024).
    pub fn new(node: u16) -> Self {
        MsgIdGen { node: u64::from(node) & 0x3ff, state: Mutex::new((0, 0)) }
    }

    /// The next id for wall-clock time `now_ms`. Never repeats and never goes backwards, even
    /// if the clock does: past 4096 ids in one ms, or with a clock step back, it borrows from
    /// the next ms.
    pub fn next_at(&self, now_ms: u64) -> u64 {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let ms = now_ms.saturating_sub(EPOCH_MS).max(st.0);
        if ms == st.0 {
            st.1 += 1;
            if st.1 >= 4096 {
                st.0 += 1;
                st.1 = 0;
            }
        } else {
            st.0 = ms;
            st.1 = 0;
        }
        (st.0 << 22) | (self.node << 12) | st.1
    }

    /// The next id now.
    pub fn next(&self) -> u64 {
        self.next_at(now_ms())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_increase_within_a_ms_across_overflow_and_a_clock_step_back() {
        let g = MsgIdGen::new(3);
        let t = EPOCH_MS + 1000;
        let mut last = 0;
        for i in 0..10_000 {
            let now = if i == 5000 { t - 500 } else { t };
            let id = g.next_at(now);
            assert!(id > last, "id {i} did not increase");
            assert_eq!((id >> 12) & 0x3ff, 3);
            last = id;
        }
    }

    #[test]
    fn different_nodes_never_collide() {
        let a = MsgIdGen::new(1);
        let b = MsgIdGen::new(2);
        let t = EPOCH_MS + 5;
        let xs: std::collections::HashSet<u64> =
            (0..100).map(|_| a.next_at(t)).chain((0..100).map(|_| b.next_at(t))).collect();
        assert_eq!(xs.len(), 200);
    }
}
