//! The in-process layer: moka, with a per-entry TTL (short for unknown
//! digests), and invalidation epochs that keep a load which raced an
//! invalidation from being served.
//!
//! The race: a lookup reads the store, a revocation commits and its
//! invalidation removes the entry, then the lookup inserts the record it read
//! — the old one — which would live until its TTL. So every entry carries the
//! epoch of its key's stripe as it was when its load began, every
//! invalidation bumps the stripe first, and an entry is served only while its
//! stripe is still at that epoch. An unrelated invalidation in the same
//! stripe costs a reload of that stripe's entries, no more (1 in [`STRIPES`]).
//!
//! Keys are hashed with foldhash rather than SipHash: still seeded per
//! process (a client choosing secrets cannot aim them at one bucket), and a
//! few times cheaper on the 32-byte digests every request looks up.

use std::hash::Hash;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use moka::Expiry;

use super::Lookup;
use crate::config::CacheConfig;
use crate::token::Digest;

const STRIPES: usize = 1024;

/// Which invalidation counter a key shares.
pub(super) trait Striped {
    fn stripe(&self) -> usize;
}

impl Striped for Digest {
    fn stripe(&self) -> usize {
        // A SHA-256 is uniform already.
        usize::from(u16::from_le_bytes([self.0[0], self.0[1]])) % STRIPES
    }
}

impl Striped for i64 {
    fn stripe(&self) -> usize {
        self.rem_euclid(STRIPES as i64) as usize
    }
}

/// A lookup and the epoch of its stripe when its load began.
#[derive(Clone)]
struct Stamped {
    lookup: Lookup,
    epoch: u64,
}

struct LookupExpiry {
    ttl: Duration,
    negative_ttl: Duration,
}

impl<K> Expiry<K, Stamped> for LookupExpiry {
    fn expire_after_create(&self, _: &K, entry: &Stamped, _: Instant) -> Option<Duration> {
        Some(match entry.lookup {
            Lookup::Found(_) => self.ttl,
            Lookup::Absent => self.negative_ttl,
        })
    }
}

/// The in-process cache of lookups by `K`.
pub(super) struct LocalCache<K> {
    entries: moka::future::Cache<K, Stamped, foldhash::fast::RandomState>,
    epochs: Box<[AtomicU64]>,
}

impl<K> LocalCache<K>
where
    K: Striped + Hash + Eq + Clone + Send + Sync + 'static,
{
    pub(super) fn new(config: &CacheConfig) -> LocalCache<K> {
        LocalCache {
            entries: moka::future::Cache::builder()
                .max_capacity(config.max_entries)
                .expire_after(LookupExpiry {
                    ttl: config.ttl,
                    negative_ttl: config.negative_ttl,
                })
                .build_with_hasher(foldhash::fast::RandomState::default()),
            epochs: (0..STRIPES).map(|_| AtomicU64::new(0)).collect(),
        }
    }

    fn epoch(&self, key: &K) -> u64 {
        self.epochs[key.stripe()].load(Ordering::Acquire)
    }

    /// The cached lookup, unless an invalidation may have overtaken its load.
    pub(super) async fn get(&self, key: &K) -> Option<Lookup> {
        let entry = self.entries.get(key).await?;
        (entry.epoch == self.epoch(key)).then_some(entry.lookup)
    }

    /// The cached lookup, else `load`'s, one load per key at a time (moka's
    /// `try_get_with` is the single flight). A load that began before this
    /// call and was overtaken by an invalidation since is dropped and made
    /// again; one that began after the call did is fresh enough for it (the
    /// invalidation overlapped the request), though never served from the
    /// cache again ([`LocalCache::get`]). So a call loads twice at most, and
    /// the requests that joined one load stay one load. The flag tells whether
    /// this call loaded (a miss) rather than found or joined another's load.
    pub(super) async fn get_or_load<E, F, Fut>(
        &self,
        key: K,
        load: F,
    ) -> Result<(Lookup, bool), Arc<E>>
    where
        E: Send + Sync + 'static,
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = Result<Lookup, E>>,
    {
        let start = self.epoch(&key);
        loop {
            let mut loaded = false;
            let entry = self
                .entries
                .try_get_with(key.clone(), async {
                    loaded = true;
                    let epoch = self.epoch(&key);
                    load().await.map(|lookup| Stamped { lookup, epoch })
                })
                .await?;
            if entry.epoch >= start {
                return Ok((entry.lookup, loaded));
            }
            self.entries.invalidate(&key).await;
        }
    }

    /// Drops the key's entry, and any load of it in flight.
    pub(super) async fn invalidate(&self, key: &K) {
        // The bump comes first: an entry inserted after it, by a load that
        // began before it, is never served.
        self.epochs[key.stripe()].fetch_add(1, Ordering::AcqRel);
        self.entries.invalidate(key).await;
    }

    /// Puts a lookup loaded when the key's stripe was at `epoch`, as a load
    /// finishing late would: for the tests of the race.
    #[cfg(test)]
    pub(super) async fn insert_loaded_at(&self, key: K, lookup: Lookup, epoch: u64) {
        self.entries.insert(key, Stamped { lookup, epoch }).await;
    }

    #[cfg(test)]
    pub(super) fn current_epoch(&self, key: &K) -> u64 {
        self.epoch(key)
    }
}
