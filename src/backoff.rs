//! Exponential backoff with jitter, shared by reconcile retries and the SQS
//! consumer: the delay for attempt n is drawn from the upper half of a window
//! that doubles from `base` up to `max`, so many callers failing together (an
//! AWS outage) do not retry in lockstep.

use std::time::Duration;

use rand::Rng;

#[derive(Clone, Copy, Debug)]
pub struct Backoff {
    pub base: Duration,
    pub max: Duration,
}

impl Backoff {
    /// The window for the `attempt`-th consecutive failure (1-based).
    pub fn window(&self, attempt: u32) -> Duration {
        self.base
            .saturating_mul(1u32 << attempt.saturating_sub(1).min(16))
            .min(self.max)
    }

    /// A delay drawn from the upper half of `window(attempt)`, capped at `cap`.
    pub fn delay(&self, attempt: u32, cap: Duration) -> Duration {
        self.window(attempt)
            .min(cap)
            .mul_f64(rand::rng().random_range(0.5..=1.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const B: Backoff = Backoff {
        base: Duration::from_secs(2),
        max: Duration::from_secs(300),
    };

    #[test]
    fn window_doubles_and_caps() {
        assert_eq!(B.window(0), Duration::from_secs(2));
        assert_eq!(B.window(1), Duration::from_secs(2));
        assert_eq!(B.window(2), Duration::from_secs(4));
        assert_eq!(B.window(5), Duration::from_secs(32));
        assert_eq!(B.window(40), B.max);
        assert_eq!(B.window(u32::MAX), B.max);
    }

    #[test]
    fn delays_stay_in_the_upper_half_and_under_the_cap() {
        for attempt in 1..12 {
            let w = B.window(attempt);
            let d = B.delay(attempt, Duration::MAX);
            assert!(d >= w / 2 && d <= w, "{d:?} outside {w:?}");
            assert!(B.delay(attempt, Duration::from_secs(3)) <= Duration::from_secs(3));
        }
    }
}
