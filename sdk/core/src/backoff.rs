//! Exponential reconnect backoff with equal jitter.

use std::time::Duration;

use super::rng::Rng;

/// Consecutive-failure counter that draws reconnect delays.
///
/// Attempt `n` (0-based) has the ceiling `d = min(max, base * 2^n)`; its delay is uniform in
/// `[d/2, d]` ("equal jitter"), so a fleet of clients that lost the same server spreads out
/// instead of reconnecting in lockstep, yet never retries sooner than half the ceiling.
#[derive(Debug, Clone)]
pub(crate) struct Backoff {
    base: Duration,
    max: Duration,
    attempt: u32,
}

impl Backoff {
    /// A backoff with no failures yet.
    pub(crate) fn new(base: Duration, max: Duration) -> Self {
        Backoff { base, max, attempt: 0 }
    }

    /// The ceiling `min(max, base * 2^attempt)` of the delay for `attempt`.
    pub(crate) fn ceiling(&self, attempt: u32) -> Duration {
        1u32.checked_shl(attempt).and_then(|factor| self.base.checked_mul(factor)).map_or(self.max, |d| d.min(self.max))
    }

    /// Draws the delay for the next attempt and counts it. Returns the 0-based attempt number
    /// and its delay.
    pub(crate) fn next_delay(&mut self, rng: &mut Rng) -> (u32, Duration) {
        let attempt = self.attempt;
        self.attempt = self.attempt.saturating_add(1);
        let ceiling = u64::try_from(self.ceiling(attempt).as_nanos()).unwrap_or(u64::MAX);
        let half = ceiling / 2;
        let delay = half + rng.up_to(ceiling - half);
        (attempt, Duration::from_nanos(delay))
    }

    /// Forgets the failures (after a successful login).
    pub(crate) fn reset(&mut self) {
        self.attempt = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ceiling_doubles_then_caps() {
        let b = Backoff::new(Duration::from_millis(500), Duration::from_secs(30));
        let ms: Vec<u128> = (0..10).map(|n| b.ceiling(n).as_millis()).collect();
        assert_eq!(ms, [500, 1000, 2000, 4000, 8000, 16000, 30000, 30000, 30000, 30000]);
        // No overflow for absurd attempt numbers.
        assert_eq!(b.ceiling(31), Duration::from_secs(30));
        assert_eq!(b.ceiling(32), Duration::from_secs(30));
        assert_eq!(b.ceiling(u32::MAX), Duration::from_secs(30));
        let huge = Backoff::new(Duration::MAX / 2, Duration::MAX);
        assert_eq!(huge.ceiling(5), Duration::MAX);
    }

    #[test]
    fn delays_have_equal_jitter_for_many_seeds() {
        for seed in 0..500u64 {
            let mut rng = Rng::new(seed);
            let mut b = Backoff::new(Duration::from_millis(500), Duration::from_secs(30));
            for n in 0..40u32 {
                let (attempt, d) = b.next_delay(&mut rng);
                assert_eq!(attempt, n);
                let ceiling = b.ceiling(n);
                assert!(d >= ceiling / 2, "seed {seed} attempt {n}: {d:?} < {ceiling:?}/2");
                assert!(d <= ceiling, "seed {seed} attempt {n}: {d:?} > {ceiling:?}");
                assert!(d <= Duration::from_secs(30));
            }
            b.reset();
            let (attempt, d) = b.next_delay(&mut rng);
            assert_eq!(attempt, 0);
            assert!(d >= Duration::from_millis(250) && d <= Duration::from_millis(500));
        }
    }

    #[test]
    fn jitter_spreads_over_the_whole_window() {
        let mut rng = Rng::new(1);
        let mut low = false;
        let mut high = false;
        for _ in 0..2000 {
            let mut b = Backoff::new(Duration::from_secs(1), Duration::from_secs(30));
            let (_, d) = b.next_delay(&mut rng);
            low |= d < Duration::from_millis(550);
            high |= d > Duration::from_millis(950);
        }
        assert!(low && high, "jitter does not cover [d/2, d]");
    }

    #[test]
    fn zero_base_gives_zero_delay() {
        let mut rng = Rng::new(3);
        let mut b = Backoff::new(Duration::ZERO, Duration::ZERO);
        assert_eq!(b.next_delay(&mut rng).1, Duration::ZERO);
    }
}
