//! Client-side budget for rotor's AWS writes in one region.
//!
//! Secrets Manager allows about 50 writes per second per region, shared with
//! the customers' own rotation Lambdas. A bulk `kubectl apply` of thousands of
//! RotatedSecrets must not starve those Lambdas, so rotor's writes pass a
//! token bucket (default 20/s) that halves its rate on every throttling
//! response and creeps back up on success (AIMD, like TCP congestion control).

use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

const MIN_RATE: f64 = 0.5;
/// Rate regained per successful write, in writes/s.
const RECOVERY_STEP: f64 = 0.05;

pub struct WriteLimiter {
    max_rate: f64,
    state: Mutex<State>,
}

struct State {
    rate: f64,
    tokens: f64,
    last: Instant,
}

impl WriteLimiter {
    pub fn new(max_rate: f64) -> Self {
        let max_rate = max_rate.max(MIN_RATE);
        Self {
            max_rate,
            state: Mutex::new(State {
                rate: max_rate,
                tokens: max_rate.max(1.0),
                last: Instant::now(),
            }),
        }
    }

    /// Waits for a write token.
    pub async fn acquire(&self) {
        loop {
            let wait = self.try_take(Instant::now());
            match wait {
                None => return,
                Some(wait) => tokio::time::sleep(wait).await,
            }
        }
    }

    /// Takes a token at `now`, or says how long until one is available.
    fn try_take(&self, now: Instant) -> Option<Duration> {
        let mut s = self
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let elapsed = now.saturating_duration_since(s.last).as_secs_f64();
        s.tokens = (s.tokens + elapsed * s.rate).min(s.rate.max(1.0));
        s.last = now;
        if s.tokens >= 1.0 {
            s.tokens -= 1.0;
            None
        } else {
            Some(Duration::from_secs_f64((1.0 - s.tokens) / s.rate))
        }
    }

    pub fn throttled(&self) {
        let mut s = self
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        s.rate = (s.rate / 2.0).max(MIN_RATE);
        s.tokens = s.tokens.min(0.0);
    }

    pub fn succeeded(&self) {
        let mut s = self
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        s.rate = (s.rate + RECOVERY_STEP).min(self.max_rate);
    }

    pub fn rate(&self) -> f64 {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .rate
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bursts_up_to_the_rate_then_spaces_writes() {
        let l = WriteLimiter::new(4.0);
        let t0 = Instant::now();
        for _ in 0..4 {
            assert_eq!(l.try_take(t0), None);
        }
        let wait = l.try_take(t0).expect("bucket empty");
        assert!((wait.as_secs_f64() - 0.25).abs() < 1e-6, "{wait:?}");
        assert_eq!(l.try_take(t0 + Duration::from_millis(250)), None);
    }

    #[test]
    fn throttling_halves_and_success_recovers() {
        let l = WriteLimiter::new(20.0);
        l.throttled();
        assert_eq!(l.rate(), 10.0);
        l.throttled();
        l.throttled();
        assert_eq!(l.rate(), 2.5);
        for _ in 0..1000 {
            l.succeeded();
        }
        assert_eq!(l.rate(), 20.0);
        for _ in 0..20 {
            l.throttled();
        }
        assert_eq!(l.rate(), MIN_RATE);
    }

    #[tokio::test(start_paused = true)]
    async fn acquire_waits_for_a_token() {
        let l = WriteLimiter::new(2.0);
        let start = tokio::time::Instant::now();
        for _ in 0..6 {
            l.acquire().await;
        }
        // 2 from the burst, then 4 more at 2/s.
        assert!(
            start.elapsed() >= Duration::from_millis(1900),
            "{:?}",
            start.elapsed()
        );
    }
}
