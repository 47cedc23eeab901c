//! Failed-authentication limiting per client address. Keyed by address,
//! never by username, so an attacker guessing secrets cannot lock a real
//! token out. A missing credential (the challenge step every stock client
//! goes through) is not a failure; a wrong one is.

use std::net::IpAddr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Counts failures per address over a fixed window that starts at the first failure.
pub struct FailureLimiter {
    max: u32,
    counts: moka::sync::Cache<IpAddr, Arc<AtomicU32>>,
}

impl FailureLimiter {
    /// `max` failures per `window`; 0 disables the limit.
    pub fn new(max: u32, window: Duration) -> FailureLimiter {
        FailureLimiter {
            max,
            counts: moka::sync::Cache::builder()
                .max_capacity(100_000)
                .time_to_live(window)
                .build(),
        }
    }

    pub fn is_blocked(&self, ip: IpAddr) -> bool {
        self.max > 0
            && self
                .counts
                .get(&ip)
                .is_some_and(|n| n.load(Ordering::Relaxed) >= self.max)
    }

    pub fn record_failure(&self, ip: IpAddr) {
        if self.max > 0 {
            self.counts
                .get_with(ip, Arc::default)
                .fetch_add(1, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_an_address_after_max_failures_and_forgets_after_the_window() {
        let limiter = FailureLimiter::new(3, Duration::from_millis(200));
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        for _ in 0..3 {
            assert!(!limiter.is_blocked(a));
            limiter.record_failure(a);
        }
        assert!(limiter.is_blocked(a));
        assert!(!limiter.is_blocked(b), "other addresses are unaffected");
        std::thread::sleep(Duration::from_millis(300));
        assert!(!limiter.is_blocked(a));
        let off = FailureLimiter::new(0, Duration::from_secs(60));
        (0..10).for_each(|_| off.record_failure(a));
        assert!(!off.is_blocked(a));
    }
}
