//! Token lookup: in-process cache → Redis (shared, optional) → store.
//!
//! The cache holds token *records*, never decisions: scopes, namespace,
//! expiry and revocation are checked on every request, hit or miss. Unknown
//! digests are cached negatively for a short time, and concurrent misses for
//! one digest make one lookup below (moka's `try_get_with` is the single
//! flight). Stale entries are dropped two ways: Redis pub/sub, which every
//! instance hears within milliseconds of a revocation, and the store's change
//! feed, polled about twice a second, which also covers lost messages and
//! instances without Redis. On PostgreSQL changes become visible out of
//! order: the feed follower ([`feed`]) reads on from the oldest position it
//! has not seen, so none is skipped. A lookup that read the store just before
//! a revocation, and finishes just after the revocation's invalidation, must
//! not put the old record back: in memory the invalidation epochs of
//! [`local`] refuse it, in Redis the invalidation generations (see
//! [`RedisCache`]).

mod feed;
mod local;
mod redis;

use self::local::LocalCache;
pub use self::redis::{entry_key, Generation, RedisCache, RedisTarget, Shared, DEFAULT_KEY_PREFIX};

use std::sync::Arc;
use std::time::Duration;

use crate::config::CacheConfig;
use crate::metrics::Metrics;
use crate::store::{StoreError, TokenStore, CHANGES_PAGE};
use crate::token::{Digest, TokenRecord};

/// How long after it began a store operation may still be in flight: each is
/// bounded by the store's timeout; twice that and a second cover scheduling.
fn in_flight_bound(store_timeout: Duration) -> Duration {
    store_timeout * 2 + Duration::from_secs(1)
}

/// How far back a starting instance replays the change feed. An instance
/// that revoked a token while Redis was unreachable keeps the shared
/// entry's deletion in memory until Redis is back; if it stops first, the
/// stale entry stays, for at most the cache TTL after it was written. So
/// the changes of that span (plus the time a write may be in flight and a
/// minute for clocks that disagree) are applied again at start.
fn replay_span(ttl: Duration, store_timeout: Duration) -> Duration {
    ttl + in_flight_bound(store_timeout) + Duration::from_secs(60)
}

/// A cached lookup result: a record, or the knowledge that none exists.
#[derive(Debug, Clone)]
pub enum Lookup {
    Found(Arc<TokenRecord>),
    Absent,
}

/// Resolves digests to records through the layers, with single flight.
pub struct TokenResolver {
    local: LocalCache<Digest>,
    /// Records by token id, for credentials that name the token (registry JWTs).
    by_id: LocalCache<i64>,
    redis: Option<Arc<RedisCache>>,
    store: TokenStore,
    metrics: Arc<Metrics>,
    /// See [`replay_span`].
    replay: Duration,
}

impl TokenResolver {
    pub fn new(
        config: &CacheConfig,
        store: TokenStore,
        redis: Option<Arc<RedisCache>>,
        metrics: Arc<Metrics>,
    ) -> TokenResolver {
        TokenResolver {
            local: LocalCache::new(config),
            by_id: LocalCache::new(config),
            replay: replay_span(config.ttl, store.timeout()),
            redis,
            store,
            metrics,
        }
    }

    pub fn store(&self) -> &TokenStore {
        &self.store
    }

    /// The record for a digest. A store failure is an error only when no
    /// layer could answer: cached tokens keep working while the store is down,
    /// unknown ones are refused (fail closed).
    pub async fn resolve(&self, digest: Digest) -> Result<Lookup, Arc<StoreError>> {
        if let Some(hit) = self.local.get(&digest).await {
            self.metrics.local_hits.inc();
            return Ok(hit);
        }
        // Boxed: the miss path holds Redis and store state (kilobytes), which
        // would otherwise be part of every request's future, hit or miss.
        Box::pin(self.fill(digest)).await
    }

    /// Loads a token into the in-process cache, one load per digest at a time.
    async fn fill(&self, digest: Digest) -> Result<Lookup, Arc<StoreError>> {
        let (lookup, missed) = self.local.get_or_load(digest, || self.load(digest)).await?;
        if missed {
            self.metrics.local_misses.inc();
        } else {
            // Another request loaded it meanwhile.
            self.metrics.local_hits.inc();
        }
        Ok(lookup)
    }

    async fn load(&self, digest: Digest) -> Result<Lookup, StoreError> {
        // Read before the store: an invalidation after this moves it, and
        // then what the store said is not shared.
        let mut generation = None;
        if let Some(redis) = &self.redis {
            match redis.get(&digest).await {
                Shared::Hit(lookup) => return Ok(lookup),
                Shared::Miss(read) => generation = Some(read),
                Shared::Unavailable => {}
            }
        }
        self.metrics.store_lookups.inc();
        let lookup = match self.store.find_by_digest(&digest).await {
            Ok(Some(record)) => Lookup::Found(Arc::new(record)),
            Ok(None) => Lookup::Absent,
            Err(e) => {
                self.metrics.store.failed(&e);
                return Err(e);
            }
        };
        self.metrics.store.succeeded();
        if let (Some(redis), Some(generation)) = (&self.redis, generation) {
            redis.put(&digest, &lookup, generation).await;
        }
        Ok(lookup)
    }

    /// The record of a token named by id (a registry JWT's
    /// `deploy_token_id`): in-process cache, else the store, single flight.
    /// The id cache is invalidated with the digest cache, so a revocation
    /// reaches JWT holders within the same bound.
    pub async fn resolve_id(&self, id: i64) -> Result<Lookup, Arc<StoreError>> {
        let loaded = self
            .by_id
            .get_or_load(id, || async move {
                self.metrics.store_lookups.inc();
                match self.store.get(id).await {
                    Ok(record) => {
                        self.metrics.store.succeeded();
                        Ok(record.map_or(Lookup::Absent, |r| Lookup::Found(Arc::new(r))))
                    }
                    Err(e) => {
                        self.metrics.store.failed(&e);
                        Err(e)
                    }
                }
            })
            .await?;
        Ok(loaded.0)
    }

    /// Drops a token from this instance's memory only (a peer already
    /// cleared Redis and told us).
    pub async fn forget(&self, digest: &Digest, id: Option<i64>) {
        self.local.invalidate(digest).await;
        if let Some(id) = id {
            self.by_id.invalidate(&id).await;
        }
    }

    /// Drops a token from Redis, then from memory, so that a stale shared
    /// entry cannot refill the in-process cache.
    pub async fn invalidate(&self, digest: &Digest, id: i64) {
        if let Some(redis) = &self.redis {
            redis.invalidate(digest).await;
        }
        self.forget(digest, Some(id)).await;
    }

    /// Polls the store's change feed until the task is dropped, invalidating
    /// every cached entry of every token that changed, from the changes of
    /// the last [`replay_span`] on. The poll doubles as the store's health
    /// probe.
    pub async fn follow_changes(self: Arc<Self>, every: Duration) {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let start = loop {
            tick.tick().await;
            let since = chrono::Utc::now() - self.replay;
            match self.store.change_before(since.timestamp()).await {
                Ok(seq) => break seq,
                Err(e) => self.metrics.store.failed(&e),
            }
        };
        // A hole older than any write could still be in flight is a rolled-back write.
        let mut cursor = feed::FeedCursor::new(start, in_flight_bound(self.store.timeout()));
        loop {
            tick.tick().await;
            // From the oldest unseen position; page on while pages are full
            // (a hole waiting to fill must not hide what came after it).
            let mut from = cursor.position();
            loop {
                let changes = match self.store.changes_since(from).await {
                    Ok(changes) => changes,
                    Err(e) => {
                        self.metrics.store.failed(&e);
                        break;
                    }
                };
                self.metrics.store.succeeded();
                let full = changes.len() == CHANGES_PAGE;
                for change in cursor.advance(changes, std::time::Instant::now()) {
                    self.invalidate(&change.digest, change.token_id).await;
                    tracing::trace!(
                        token_id = change.token_id,
                        seq = change.seq,
                        "token changed; cache entries dropped"
                    );
                }
                if !full {
                    break;
                }
                from = cursor.newest();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::StoreConfig;
    use crate::store::NewToken;
    use crate::token::{OwnerKind, ScopeSet, Secret};

    fn config() -> CacheConfig {
        CacheConfig {
            ttl: Duration::from_secs(60),
            negative_ttl: Duration::from_millis(200),
            max_entries: 100,
            redis: None,
            change_poll: Duration::from_millis(50),
        }
    }

    async fn setup() -> (tempfile::TempDir, Arc<TokenResolver>) {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("t.db").display());
        let store = TokenStore::connect(&StoreConfig::at(url)).await.unwrap();
        let metrics = Arc::new(Metrics::new(false));
        (
            dir,
            Arc::new(TokenResolver::new(&config(), store, None, metrics)),
        )
    }

    fn new_token(secret: &Secret) -> NewToken {
        NewToken {
            name: "ci".into(),
            username: None,
            owner_kind: OwnerKind::Group,
            owner_path: "acme".into(),
            scopes: ScopeSet::parse_list("read_package_registry").unwrap(),
            expires_at: None,
            digest: secret.digest(),
        }
    }

    #[tokio::test]
    async fn negative_entries_expire_quickly() {
        let (_dir, resolver) = setup().await;
        let secret = Secret::generate();
        assert!(matches!(
            resolver.resolve(secret.digest()).await.unwrap(),
            Lookup::Absent
        ));
        resolver.store().create(new_token(&secret)).await.unwrap();
        assert!(matches!(
            resolver.resolve(secret.digest()).await.unwrap(),
            Lookup::Absent
        ));
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(matches!(
            resolver.resolve(secret.digest()).await.unwrap(),
            Lookup::Found(_)
        ));
    }

    /// A lookup reads the store, a revocation commits and is invalidated,
    /// then the lookup finishes and inserts the record it read: the old one
    /// must not be served, by digest or by id.
    #[tokio::test]
    async fn a_lookup_overtaken_by_an_invalidation_is_not_served() {
        let (_dir, resolver) = setup().await;
        let secret = Secret::generate();
        let digest = secret.digest();
        let record = resolver.store().create(new_token(&secret)).await.unwrap();
        let (by_digest, by_id) = (
            resolver.local.current_epoch(&digest),
            resolver.by_id.current_epoch(&record.id),
        );
        let old = resolver.load(digest).await.unwrap();
        assert!(matches!(&old, Lookup::Found(r) if !r.revoked));

        resolver.store().revoke(record.id).await.unwrap();
        resolver.invalidate(&digest, record.id).await;
        resolver
            .local
            .insert_loaded_at(digest, old.clone(), by_digest)
            .await;
        resolver.by_id.insert_loaded_at(record.id, old, by_id).await;

        let Lookup::Found(now) = resolver.resolve(digest).await.unwrap() else {
            panic!()
        };
        assert!(now.revoked, "the late insert was refused");
        let Lookup::Found(now) = resolver.resolve_id(record.id).await.unwrap() else {
            panic!()
        };
        assert!(now.revoked, "the late insert was refused");
        // The reload was cached: served from memory from now on.
        let lookups = resolver.metrics.store_lookups.get();
        resolver.resolve(digest).await.unwrap();
        assert_eq!(resolver.metrics.store_lookups.get(), lookups);
    }

    #[tokio::test]
    async fn the_change_feed_drops_revoked_tokens() {
        let (_dir, resolver) = setup().await;
        let secret = Secret::generate();
        let record = resolver.store().create(new_token(&secret)).await.unwrap();
        let follower = tokio::spawn(resolver.clone().follow_changes(Duration::from_millis(50)));
        let Lookup::Found(cached) = resolver.resolve(secret.digest()).await.unwrap() else {
            panic!()
        };
        assert!(!cached.revoked);
        tokio::time::sleep(Duration::from_millis(100)).await;
        resolver.store().revoke(record.id).await.unwrap();
        tokio::time::sleep(Duration::from_millis(300)).await;
        let Lookup::Found(fresh) = resolver.resolve(secret.digest()).await.unwrap() else {
            panic!()
        };
        assert!(fresh.revoked, "the revoked record replaced the cached one");
        follower.abort();
    }
}
