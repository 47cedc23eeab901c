//! Token lookup: in-process cache → shared cache layers → store.
//!
//! The cache holds token *records*, never decisions: scopes, namespace,
//! expiry and revocation are checked on every request, hit or miss. Unknown
//! digests are cached negatively for a short time, concurrent misses for one
//! digest make one store query (moka's `try_get_with` is the single flight),
//! and the store's change feed, polled about twice a second, drops entries
//! of tokens created or revoked anywhere.

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use moka::Expiry;

use crate::config::CacheConfig;
use crate::store::{StoreError, TokenStore};
use crate::token::{Digest, TokenRecord};

/// A cached lookup result: a record, or the knowledge that none exists.
#[derive(Debug, Clone)]
pub enum Lookup {
    Found(Arc<TokenRecord>),
    Absent,
}

/// A cache layer between the proxy and the store.
#[async_trait]
pub trait TokenCache: Send + Sync {
    async fn get(&self, digest: &Digest) -> Option<Lookup>;
    async fn put(&self, digest: Digest, lookup: Lookup);
    async fn invalidate(&self, digest: &Digest);
}

struct LookupExpiry {
    ttl: Duration,
    negative_ttl: Duration,
}

impl Expiry<Digest, Lookup> for LookupExpiry {
    fn expire_after_create(&self, _: &Digest, lookup: &Lookup, _: Instant) -> Option<Duration> {
        Some(match lookup {
            Lookup::Found(_) => self.ttl,
            Lookup::Absent => self.negative_ttl,
        })
    }
}

/// The in-process layer (moka, per-entry TTL).
pub struct LocalCache {
    entries: moka::future::Cache<Digest, Lookup>,
}

impl LocalCache {
    pub fn new(config: &CacheConfig) -> LocalCache {
        LocalCache {
            entries: moka::future::Cache::builder()
                .max_capacity(config.max_entries)
                .expire_after(LookupExpiry {
                    ttl: config.ttl,
                    negative_ttl: config.negative_ttl,
                })
                .build(),
        }
    }
}

#[async_trait]
impl TokenCache for LocalCache {
    async fn get(&self, digest: &Digest) -> Option<Lookup> {
        self.entries.get(digest).await
    }

    async fn put(&self, digest: Digest, lookup: Lookup) {
        self.entries.insert(digest, lookup).await;
    }

    async fn invalidate(&self, digest: &Digest) {
        self.entries.invalidate(digest).await;
    }
}

/// Resolves digests to records through the layers, with single flight.
pub struct TokenResolver {
    local: LocalCache,
    shared: Vec<Arc<dyn TokenCache>>,
    store: TokenStore,
}

impl TokenResolver {
    /// `shared` are the layers below the in-process one, nearest first.
    pub fn new(
        config: &CacheConfig,
        shared: Vec<Arc<dyn TokenCache>>,
        store: TokenStore,
    ) -> TokenResolver {
        TokenResolver {
            local: LocalCache::new(config),
            shared,
            store,
        }
    }

    pub fn store(&self) -> &TokenStore {
        &self.store
    }

    /// The record for a digest. A store failure is an error only when no
    /// layer could answer: cached tokens keep working while the store is down.
    pub async fn resolve(&self, digest: Digest) -> Result<Lookup, Arc<StoreError>> {
        self.local
            .entries
            .try_get_with(digest, self.load(digest))
            .await
    }

    async fn load(&self, digest: Digest) -> Result<Lookup, StoreError> {
        for layer in &self.shared {
            if let Some(hit) = layer.get(&digest).await {
                return Ok(hit);
            }
        }
        let lookup = match self.store.find_by_digest(&digest).await? {
            Some(record) => Lookup::Found(Arc::new(record)),
            None => Lookup::Absent,
        };
        for layer in &self.shared {
            layer.put(digest, lookup.clone()).await;
        }
        Ok(lookup)
    }

    /// Drops a digest from every layer, the shared ones first, so that a
    /// stale shared entry cannot refill the in-process cache.
    pub async fn invalidate(&self, digest: &Digest) {
        for layer in &self.shared {
            layer.invalidate(digest).await;
        }
        self.local.invalidate(digest).await;
    }

    /// Polls the store's change feed until the task is dropped, invalidating
    /// every cached entry of every token that changed.
    pub async fn follow_changes(self: Arc<Self>, every: Duration) {
        let mut seq = loop {
            match self.store.latest_change().await {
                Ok(seq) => break seq,
                Err(e) => {
                    tracing::warn!(error = %e, "change feed: store unreachable, retrying");
                    tokio::time::sleep(every).await;
                }
            }
        };
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            match self.store.changes_since(seq).await {
                Ok(changes) => {
                    for change in changes {
                        self.invalidate(&change.digest).await;
                        tracing::debug!(
                            token_id = change.token_id,
                            seq = change.seq,
                            "token changed; cache entry dropped"
                        );
                        seq = change.seq;
                    }
                }
                Err(e) => tracing::warn!(error = %e, "change feed: poll failed"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::NewToken;
    use crate::token::{OwnerKind, ScopeSet, Secret};

    fn config() -> CacheConfig {
        CacheConfig {
            ttl: Duration::from_secs(60),
            negative_ttl: Duration::from_millis(200),
            max_entries: 100,
        }
    }

    async fn setup() -> (tempfile::TempDir, Arc<TokenResolver>) {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("t.db").display());
        let store = TokenStore::connect(&url).await.unwrap();
        (dir, Arc::new(TokenResolver::new(&config(), vec![], store)))
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
