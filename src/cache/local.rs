//! The in-process layer: moka, with a per-entry TTL (short for unknown digests).

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

pub(super) fn build<K>(config: &CacheConfig) -> moka::future::Cache<K, Lookup>
where
    K: std::hash::Hash + Eq + Send + Sync + 'static,
{
    moka::future::Cache::builder()
        .max_capacity(config.max_entries)
        .expire_after(LookupExpiry {
            ttl: config.ttl,
            negative_ttl: config.negative_ttl,
        })
        .build()
}
