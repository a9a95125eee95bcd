//! A circuit breaker per provider: after enough consecutive failures a provider is cooled down
//! (skipped) for a while, then given one trial request.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

#[derive(Debug, Default, Clone)]
struct Health {
    consecutive_failures: u32,
    open_until: Option<Instant>,
}

/// Tracks provider health.
#[derive(Debug)]
pub struct CircuitBreaker {
    threshold: u32,
    cooldown: Duration,
    health: Mutex<HashMap<String, Health>>,
}

impl CircuitBreaker {
    /// Opens after `threshold` consecutive failures, for `cooldown`.
    pub fn new(threshold: u32, cooldown: Duration) -> Self {
        CircuitBreaker {
            threshold: threshold.max(1),
            cooldown,
            health: Mutex::new(HashMap::new()),
        }
    }

    fn with<R>(&self, f: impl FnOnce(&mut HashMap<String, Health>) -> R) -> R {
        // A poisoned lock only means another thread panicked mid-update of plain counters.
        let mut guard = self
            .health
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        f(&mut guard)
    }

    /// Whether `provider` may be tried now. Once its cooldown has passed it is half-open: one
    /// more failure opens it again at once.
    pub fn allow(&self, provider: &str) -> bool {
        self.with(|h| match h.get_mut(provider) {
            Some(health) => match health.open_until {
                Some(until) if Instant::now() < until => false,
                Some(_) => {
                    health.open_until = None;
                    health.consecutive_failures = self.threshold.saturating_sub(1);
                    true
                }
                None => true,
            },
            None => true,
        })
    }

    /// Whether `provider` is cooling down right now.
    pub fn is_open(&self, provider: &str) -> bool {
        self.with(|h| {
            h.get(provider)
                .and_then(|x| x.open_until)
                .is_some_and(|until| Instant::now() < until)
        })
    }

    /// Records a success: the provider is healthy again.
    pub fn record_success(&self, provider: &str) {
        self.with(|h| {
            h.remove(provider);
        });
    }

    /// Records a failure that is the provider's fault.
    pub fn record_failure(&self, provider: &str) {
        self.with(|h| {
            let health = h.entry(provider.to_string()).or_default();
            health.consecutive_failures += 1;
            if health.consecutive_failures >= self.threshold {
                health.open_until = Some(Instant::now() + self.cooldown);
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_after_threshold_and_closes_on_success() {
        let b = CircuitBreaker::new(2, Duration::from_secs(60));
        assert!(b.allow("a"));
        b.record_failure("a");
        assert!(b.allow("a"));
        b.record_failure("a");
        assert!(!b.allow("a"));
        assert!(b.is_open("a"));
        assert!(b.allow("b"));
        b.record_success("a");
        assert!(b.allow("a"));
    }

    #[test]
    fn half_open_after_cooldown_reopens_on_one_failure() {
        let b = CircuitBreaker::new(3, Duration::ZERO);
        for _ in 0..3 {
            b.record_failure("a");
        }
        // cooldown of zero has passed: one trial allowed
        assert!(b.allow("a"));
        b.record_failure("a");
        assert!(b.with(|h| h.get("a").and_then(|x| x.open_until).is_some()));
    }
}
