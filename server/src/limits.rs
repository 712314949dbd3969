//! Pure per-session rules with time as an argument: send rate limiting and inbox delivery order.

use std::time::Instant;

/// Token bucket: `rate` tokens per second, at most `burst` saved up.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    /// A full bucket at `now`.
    pub fn new(rate: u32, burst: u32, now: Instant) -> Self {
        let burst = f64::from(burst.max(1));
        TokenBucket { rate: f64::from(rate), burst, tokens: burst, last: now }
    }

    /// Takes one token if there is one.
    pub fn try_take(&mut self, now: Instant) -> bool {
        let dt = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = self.last.max(now);
        self.tokens = (self.tokens + dt * self.rate).min(self.burst);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// What a session must do with an inbox entry it is told about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Already sent (or the device already has it): drop it.
    Skip,
    /// Next in order: send it.
    Send,
    /// Entries between are missing: read `(after, until]` from the store first, then send.
    FillGap {
        /// Exclusive lower bound.
        after: u64,
        /// Inclusive upper bound.
        until: u64,
    },
}

/// Tracks the next inbox seq a session must write, so that a device gets its inbox in order,
/// with no gap and no repeat, whether entries come live, from the store, or both.
#[derive(Debug, Clone)]
pub struct InboxOrder {
    next: u64,
}

impl InboxOrder {
    /// Starts after `cursor` (the device has everything up to it).
    pub fn after(cursor: u64) -> Self {
        InboxOrder { next: cursor.saturating_add(1) }
    }

    /// The seq the device needs next.
    pub fn next(&self) -> u64 {
        self.next
    }

    /// Decides about entry `seq`.
    pub fn step(&self, seq: u64) -> Step {
        if seq < self.next {
            Step::Skip
        } else if seq == self.next {
            Step::Send
        } else {
            Step::FillGap { after: self.next - 1, until: seq - 1 }
        }
    }

    /// Records that entry `seq` was written (or is known to the device).
    pub fn sent(&mut self, seq: u64) {
        if seq >= self.next {
            self.next = seq.saturating_add(1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn bucket_allows_burst_then_rate() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(10, 5, t0);
        assert_eq!((0..8).filter(|_| b.try_take(t0)).count(), 5);
        // 1 s later: 10 more tokens, capped at the burst of 5.
        let t1 = t0 + Duration::from_secs(1);
        assert_eq!((0..8).filter(|_| b.try_take(t1)).count(), 5);
        // 100 ms later: one token.
        let t2 = t1 + Duration::from_millis(100);
        assert!(b.try_take(t2));
        assert!(!b.try_take(t2));
        // A clock going backwards grants nothing.
        assert!(!b.try_take(t0));
    }

    #[test]
    fn order_skips_repeats_and_fills_gaps() {
        let mut o = InboxOrder::after(4);
        assert_eq!(o.step(3), Step::Skip);
        assert_eq!(o.step(5), Step::Send);
        o.sent(5);
        assert_eq!(o.step(5), Step::Skip);
        assert_eq!(o.step(9), Step::FillGap { after: 5, until: 8 });
        for s in 6..=9 {
            o.sent(s);
        }
        assert_eq!(o.next(), 10);
        o.sent(7);
        assert_eq!(o.next(), 10);
    }
}
