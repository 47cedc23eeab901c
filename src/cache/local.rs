//! The in-process layer: moka, with a per-entry TTL (short for unknown digests).
//!
//! Keys are hashed with foldhash rather than SipHash: still seeded per
//! process (a client choosing secrets cannot aim them at one bucket), and a
//! few times cheaper on the 32-byte digests every request looks up.

use std::time::{Duration, Instant};

use moka::Expiry;

use super::Lookup;
use crate::config::CacheConfig;

struct LookupExpiry {
    ttl: Duration,
    negative_ttl: Duration,
}

impl<K> Expiry<K, Lookup> for LookupExpiry {
    fn expire_after_create(&self, _: &K, lookup: &Lookup, _: Instant) -> Option<Duration> {
        Some(match lookup {
            Lookup::Found(_) => self.ttl,
            Lookup::Absent => self.negative_ttl,
        })
    }
}

/// The in-process cache of lookups by `K`.
pub(super) type LocalCache<K> = moka::future::Cache<K, Lookup, foldhash::fast::RandomState>;

pub(super) fn build<K>(config: &CacheConfig) -> LocalCache<K>
where
    K: std::hash::Hash + Eq + Send + Sync + 'static,
{
    moka::future::Cache::builder()
        .max_capacity(config.max_entries)
        .expire_after(LookupExpiry {
            ttl: config.ttl,
            negative_ttl: config.negative_ttl,
        })
        .build_with_hasher(foldhash::fast::RandomState::default())
}
