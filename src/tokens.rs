//! Token management, one way for every front end (CLI, admin API, web page):
//! validate the request, write the store, make every proxy forget a revoked
//! token at once, count it, and write the audit event. Never logs a secret.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};

use crate::cache::{RedisCache, TokenResolver};
use crate::metrics::Metrics;
use crate::store::{ListFilter, NewToken, Revoked, StoreError, TokenStore};
use crate::token::{self, Digest, OwnerKind, ScopeSet, Secret, TokenError, TokenRecord};

/// Why a management request failed.
#[derive(Debug, thiserror::Error)]
pub enum ManageError {
    #[error("{0}")]
    Invalid(#[from] TokenError),
    #[error("token store: {0}")]
    Store(#[from] StoreError),
}

/// A token to create, as a front end received it.
pub struct CreateRequest {
    pub owner_kind: OwnerKind,
    pub owner_path: String,
    pub name: String,
    /// Scope names (already split).
    pub scopes: Vec<String>,
    pub username: Option<String>,
    /// `YYYY-MM-DD` or RFC 3339.
    pub expires_at: Option<String>,
}

/// Creates, lists and revokes tokens on behalf of an actor (an admin token's
/// name, or `cli`).
pub struct TokenAdmin {
    store: TokenStore,
    redis: Option<Arc<RedisCache>>,
    /// This process's cache, when it serves requests too.
    resolver: Option<Arc<TokenResolver>>,
    /// This process's metrics, when it serves them.
    metrics: Option<Arc<Metrics>>,
}

impl TokenAdmin {
    pub fn new(
        store: TokenStore,
        redis: Option<Arc<RedisCache>>,
        resolver: Option<Arc<TokenResolver>>,
        metrics: Option<Arc<Metrics>>,
    ) -> TokenAdmin {
        TokenAdmin {
            store,
            redis,
            resolver,
            metrics,
        }
    }

    pub async fn create(
        &self,
        actor: &str,
        request: CreateRequest,
    ) -> Result<(TokenRecord, Secret), ManageError> {
        let now = Utc::now();
        token::validate_owner(request.owner_kind, &request.owner_path)?;
        if request.name.trim().is_empty() || request.name.len() > 255 {
            return Err(TokenError::InvalidName.into());
        }
        if let Some(username) = &request.username {
            token::validate_username(username)?;
        }
        let scopes = ScopeSet::parse_list(&request.scopes.join(","))?;
        let expires_at = request
            .expires_at
            .as_deref()
            .map(|e| token::parse_expiry(e, now))
            .transpose()?;
        let secret = Secret::generate();
        let record = self
            .store
            .create(NewToken {
                name: request.name,
                username: request.username,
                owner_kind: request.owner_kind,
                owner_path: request.owner_path,
                scopes,
                expires_at,
                digest: secret.digest(),
            })
            .await?;
        audit("token_created", actor, &record);
        if let Some(metrics) = &self.metrics {
            metrics.token_created(&record.scopes);
            self.refresh_active().await;
        }
        Ok((record, secret))
    }

    /// Revokes a token everywhere: the store (and its change feed), Redis
    /// (every proxy's in-process cache through pub/sub) and this process's
    /// cache. `None` when there is no such token; a token revoked before is
    /// returned as it is (no second audit event or count).
    pub async fn revoke(&self, actor: &str, id: i64) -> Result<Option<TokenRecord>, ManageError> {
        let (record, digest) = match self.store.revoke(id).await? {
            None => return Ok(None),
            Some(Revoked::Already(record)) => return Ok(Some(record)),
            Some(Revoked::Now(record, digest)) => (record, digest),
        };
        self.forget_everywhere(&digest, id).await;
        audit("token_revoked", actor, &record);
        if let Some(metrics) = &self.metrics {
            metrics.token_revoked(&record.scopes);
            self.refresh_active().await;
        }
        Ok(Some(record))
    }

    /// Rotates a token: a new secret for the same name, username, owner,
    /// scopes and expiry (a new token id); the old secret keeps working for
    /// `grace` only. `None` when there is no such active token.
    pub async fn rotate(
        &self,
        actor: &str,
        id: i64,
        grace: Duration,
    ) -> Result<Option<(TokenRecord, Secret)>, ManageError> {
        let secret = Secret::generate();
        let Some((record, old_digest)) = self.store.rotate(id, secret.digest(), grace).await?
        else {
            return Ok(None);
        };
        self.forget_everywhere(&old_digest, id).await;
        tracing::info!(
            target: "tokengate::audit",
            event = "token_rotated",
            actor,
            token_id = id,
            new_token_id = record.id,
            grace_seconds = grace.as_secs(),
            name = %record.name,
            owner = %format_args!("{}:{}", record.owner_kind.as_str(), record.owner_path),
            scopes = %record.scopes,
        );
        if let Some(metrics) = &self.metrics {
            metrics.token_created(&record.scopes);
        }
        self.refresh_active().await;
        Ok(Some((record, secret)))
    }

    /// Makes every proxy drop its cached record of a token whose record
    /// changed: Redis pub/sub (the store's change feed is the backstop) and
    /// this process's cache.
    async fn forget_everywhere(&self, digest: &Digest, id: i64) {
        if let Some(redis) = &self.redis {
            if let Err(e) = redis.announce(digest, id).await {
                tracing::warn!(error = %e, token_id = id, "Redis unreachable: proxies drop the token through the store's change feed within about a second");
            }
        }
        if let Some(resolver) = &self.resolver {
            resolver.forget(digest, Some(id)).await;
        }
    }

    pub async fn get(&self, id: i64) -> Result<Option<TokenRecord>, ManageError> {
        Ok(self.store.get(id).await?)
    }

    pub async fn list(&self, filter: ListFilter<'_>) -> Result<Vec<TokenRecord>, ManageError> {
        Ok(self.store.list(filter).await?)
    }

    /// Recounts the active tokens per scope for the gauges (tokens expire
    /// without an event, so this also runs periodically).
    pub async fn refresh_active(&self) {
        let Some(metrics) = &self.metrics else {
            return;
        };
        let filter = ListFilter {
            owner: None,
            active_only: true,
        };
        match self.store.list(filter).await {
            Ok(active) => metrics.set_active(&active, Utc::now()),
            Err(e) => tracing::warn!(error = %e, "active tokens not counted"),
        }
    }

    /// Keeps the active-token gauges current.
    pub async fn refresh_active_every(self: Arc<Self>, period: Duration) {
        loop {
            self.refresh_active().await;
            tokio::time::sleep(period).await;
        }
    }
}

/// The audit event for a token change: who (the admin token's name) and
/// what (id, name, owner, scopes), never the secret.
fn audit(event: &'static str, actor: &str, record: &TokenRecord) {
    tracing::info!(
        target: "tokengate::audit",
        event,
        actor,
        token_id = record.id,
        name = %record.name,
        username = %record.username,
        owner = %format_args!("{}:{}", record.owner_kind.as_str(), record.owner_path),
        scopes = %record.scopes,
        expires_at = %record.expires_at.map_or("never".to_string(), |t: DateTime<Utc>| t.to_rfc3339()),
    );
}
