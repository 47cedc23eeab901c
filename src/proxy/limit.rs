//! Failed-authentication limiting per client address. Keyed by address,
//! never by username, so an attacker guessing secrets cannot lock a real
//! token out. A missing credential (the challenge step every stock client
//! goes through) is not a failure; a wrong one is.

use std::net::IpAddr;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Counts failures per address over a fixed window that starts at the first failure.
pub struct FailureLimiter {
    max: u32,
    window: Duration,
    counts: moka::sync::Cache<IpAddr, Arc<AtomicU32>>,
    /// The latest failure, in milliseconds after `epoch`, rounded up (0: none yet).
    last_failure: AtomicU64,
    epoch: Instant,
}

impl FailureLimiter {
    /// `max` failures per `window`; 0 disables the limit.
    pub fn new(max: u32, window: Duration) -> FailureLimiter {
        FailureLimiter {
            max,
            window,
            counts: moka::sync::Cache::builder()
                .max_capacity(100_000)
                .time_to_live(window)
                .build(),
            last_failure: AtomicU64::new(0),
            epoch: Instant::now(),
        }
    }

    pub fn is_blocked(&self, ip: IpAddr) -> bool {
        self.max > 0
            && self.failed_recently()
            && self
                .counts
                .get(&ip)
                .is_some_and(|n| n.load(Ordering::Relaxed) >= self.max)
    }

    /// Whether any failure is recent enough for a count to be alive (each
    /// lives one window from its address's first failure). Most of the
    /// time none is: then a request costs a clock read, not a cache lookup.
    fn failed_recently(&self) -> bool {
        match self.last_failure.load(Ordering::Relaxed) {
            0 => false,
            last => self.epoch.elapsed() <= Duration::from_millis(last) + self.window,
        }
    }

    pub fn record_failure(&self, ip: IpAddr) {
        if self.max > 0 {
            let now = u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX - 1);
            self.last_failure.store(now + 1, Ordering::Relaxed);
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
