//! Retry timing: exponential backoff with jitter that honours `retry-after`, and the timeouts
//! every request runs under.

use std::time::Duration;

/// When and how often to ask the same provider again.
#[derive(Debug, Clone, PartialEq)]
pub struct RetryPolicy {
    /// Retries after the first attempt, per provider.
    pub max_retries: u32,
    /// The first backoff; doubled on every retry.
    pub base_backoff: Duration,
    /// The longest computed backoff.
    pub max_backoff: Duration,
    /// A `retry-after` longer than this is not waited for: the gateway fails over instead.
    pub max_retry_after: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_retries: 2,
            base_backoff: Duration::from_millis(250),
            max_backoff: Duration::from_secs(8),
            max_retry_after: Duration::from_secs(30),
        }
    }
}

impl RetryPolicy {
    /// How long to wait before retry number `retry` (0 for the first), or `None` when the
    /// provider asked for a wait longer than [`RetryPolicy::max_retry_after`].
    ///
    /// The computed delay is `min(max_backoff, base * 2^retry)`, jittered into its upper half
    /// so that many clients do not retry in step; a `retry-after` is a floor.
    pub fn backoff(&self, retry: u32, retry_after: Option<Duration>) -> Option<Duration> {
        if let Some(ra) = retry_after {
            if ra > self.max_retry_after {
                return None;
            }
        }
        let exp = self
            .base_backoff
            .saturating_mul(2u32.saturating_pow(retry.min(20)))
            .min(self.max_backoff);
        let half = exp / 2;
        let jitter = half.mul_f64(fastrand::f64());
        let computed = half + jitter;
        Some(match retry_after {
            Some(ra) => ra.max(computed),
            None => computed,
        })
    }
}

/// The time limits a request runs under.
#[derive(Debug, Clone, PartialEq)]
pub struct Timeouts {
    /// One attempt at one provider (a whole response; for a stream, the gap between chunks).
    pub attempt: Duration,
    /// Everything before the client gets its first byte, retries and failover included.
    pub total: Duration,
    /// For streams: from sending the request to the first token.
    pub first_token: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            attempt: Duration::from_secs(120),
            total: Duration::from_secs(300),
            first_token: Duration::from_secs(30),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> RetryPolicy {
        RetryPolicy {
            max_retries: 5,
            base_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_millis(1000),
            max_retry_after: Duration::from_secs(5),
        }
    }

    #[test]
    fn backoff_doubles_within_jitter_bounds_and_caps() {
        let p = policy();
        for _ in 0..50 {
            let d0 = p.backoff(0, None).unwrap();
            assert!(d0 >= Duration::from_millis(50) && d0 <= Duration::from_millis(100));
            let d2 = p.backoff(2, None).unwrap();
            assert!(d2 >= Duration::from_millis(200) && d2 <= Duration::from_millis(400));
            let d9 = p.backoff(9, None).unwrap();
            assert!(d9 <= Duration::from_millis(1000));
        }
    }

    #[test]
    fn retry_after_is_a_floor_and_too_long_means_fail_over() {
        let p = policy();
        assert!(p.backoff(0, Some(Duration::from_secs(2))).unwrap() >= Duration::from_secs(2));
        assert_eq!(p.backoff(0, Some(Duration::from_secs(60))), None);
    }
}
