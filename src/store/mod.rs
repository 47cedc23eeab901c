//! The token store: the source of truth for deploy tokens, SQLite by default
//! and PostgreSQL for many instances, through one `sqlx::Any` implementation.
//! Secrets are stored only as SHA-256 digests. Every create and revoke also
//! appends to a change feed, which instances poll to drop stale cache entries.

mod migrations;
mod usage;

pub use usage::LastUsed;

use std::future::Future;
use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use sqlx::any::{AnyPoolOptions, AnyRow};
use sqlx::{Any, AnyPool, Row, Transaction};

use crate::config::StoreConfig;
use crate::token::{default_username, Digest, OwnerKind, ScopeSet, TokenRecord};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("token store unavailable: {0}")]
    Unavailable(#[from] sqlx::Error),
    #[error("token store did not answer within {0:?}")]
    Timeout(Duration),
    #[error("token store holds a corrupt row: {0}")]
    Corrupt(String),
    #[error("unsupported store URL {0:?}")]
    BadUrl(String),
}

/// SQL dialect differences the store has to know about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    Sqlite,
    Postgres,
}

/// What a new token is made of; the caller generates the secret.
pub struct NewToken {
    pub name: String,
    pub username: Option<String>,
    pub owner_kind: OwnerKind,
    pub owner_path: String,
    pub scopes: ScopeSet,
    pub expires_at: Option<DateTime<Utc>>,
    pub digest: Digest,
}

/// Which tokens to list.
#[derive(Default)]
pub struct ListFilter<'a> {
    pub owner: Option<(OwnerKind, &'a str)>,
    pub active_only: bool,
}

/// The most changes one read of the feed returns.
pub const CHANGES_PAGE: usize = 1000;

/// One entry of the change feed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    pub seq: i64,
    pub token_id: i64,
    pub digest: Digest,
}

/// What a revocation did.
#[derive(Debug)]
pub enum Revoked {
    /// Revoked now: the record, and the digest whose cache entries must go.
    Now(TokenRecord, Digest),
    /// Revoked before; nothing changed.
    Already(TokenRecord),
}

#[derive(Clone)]
pub struct TokenStore {
    pool: AnyPool,
    dialect: Dialect,
    timeout: Duration,
}

/// Database setup and migrations, on every start.
async fn prepare(pool: &AnyPool, dialect: Dialect) -> Result<(), StoreError> {
    if dialect == Dialect::Sqlite {
        // Kept in the file: one connection sets it for all.
        sqlx::query("PRAGMA journal_mode=WAL").execute(pool).await?;
    }
    Ok(migrations::apply(pool, dialect).await?)
}

const COLUMNS: &str =
    "id, name, username, owner_kind, owner_path, scopes, expires_at, revoked, created_at, last_used_at";

impl TokenStore {
    /// Connects (creating a SQLite file if needed) and applies pending migrations.
    pub async fn connect(config: &StoreConfig) -> Result<TokenStore, StoreError> {
        sqlx::any::install_default_drivers();
        let url = config.url.as_str();
        let (dialect, url) = if let Some(rest) = url.strip_prefix("sqlite:") {
            let mut url = format!("sqlite:{rest}");
            if !url.contains("mode=") {
                url.push_str(if url.contains('?') {
                    "&mode=rwc"
                } else {
                    "?mode=rwc"
                });
            }
            (Dialect::Sqlite, url)
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            (Dialect::Postgres, url.to_string())
        } else {
            return Err(StoreError::BadUrl(url.to_string()));
        };
        let mut options = AnyPoolOptions::new()
            .max_connections(if dialect == Dialect::Sqlite { 4 } else { 16 })
            .acquire_timeout(config.timeout);
        if dialect == Dialect::Sqlite {
            // Each connection waits for the write lock as long as a store
            // operation may take, no longer (sqlx's default is 5 s): a write's
            // `BEGIN IMMEDIATE` runs on past its operation's timeout (see
            // `begin_write`) and holds its pooled connection while it waits.
            let busy_timeout = format!("PRAGMA busy_timeout={}", config.timeout.as_millis());
            options = options.after_connect(move |connection, _| {
                let busy_timeout = busy_timeout.clone();
                Box::pin(async move {
                    sqlx::query(&busy_timeout).execute(connection).await?;
                    Ok(())
                })
            });
        }
        let pool = options.connect(&url).await?;
        // SQLite answers "database is locked" at once, without waiting, when
        // starts race on a fresh file (one switches it to WAL while another
        // reads): such a start tries again for a while.
        let mut attempts = 0;
        loop {
            match prepare(&pool, dialect).await {
                Err(StoreError::Unavailable(sqlx::Error::Database(e)))
                    if dialect == Dialect::Sqlite
                        && e.code().as_deref() == Some("5")
                        && attempts < 50 =>
                {
                    attempts += 1;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                result => break result?,
            }
        }
        Ok(TokenStore {
            pool,
            dialect,
            timeout: config.timeout,
        })
    }

    /// Bounds a store operation by the configured timeout, so that a store
    /// that hangs fails requests instead of holding them.
    async fn timed<T>(
        &self,
        operation: impl Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        tokio::time::timeout(self.timeout, operation)
            .await
            .unwrap_or(Err(StoreError::Timeout(self.timeout)))
    }

    /// A transaction that will write. On SQLite it takes the write lock at
    /// once (`BEGIN IMMEDIATE`): a deferred transaction that read first and
    /// then wants to write after another writer committed fails at once with
    /// "database is locked" (its snapshot is stale, so SQLite does not wait),
    /// while one waiting for the lock up front gets the busy timeout.
    ///
    /// The begin runs in a task of its own because sqlx's SQLite driver
    /// cannot be cancelled half-way through a custom `BEGIN`: dropped after
    /// the statement ran but before it returned the transaction (a store
    /// timeout, a shutdown), it leaves its pooled connection inside the
    /// transaction, holding the write lock, and every later write fails.
    /// Run to completion, an unwanted transaction is dropped and rolled back;
    /// waiting for the lock, it gives up after the store timeout (the
    /// connection's busy timeout).
    async fn begin_write(&self) -> Result<Transaction<'static, Any>, sqlx::Error> {
        match self.dialect {
            Dialect::Sqlite => {
                let pool = self.pool.clone();
                tokio::spawn(async move { pool.begin_with("BEGIN IMMEDIATE").await })
                    .await
                    .unwrap_or(Err(sqlx::Error::WorkerCrashed))
            }
            Dialect::Postgres => self.pool.begin().await,
        }
    }

    /// The bound on every store operation.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// A cheap round trip, for health probes.
    pub async fn ping(&self) -> Result<(), StoreError> {
        self.timed(async {
            sqlx::query("SELECT 1").execute(&self.pool).await?;
            Ok(())
        })
        .await
    }

    /// Inserts a token; the username defaults to `tokengate+deploy-token-{id}`.
    pub async fn create(&self, new: NewToken) -> Result<TokenRecord, StoreError> {
        let id = self
            .timed(async {
                let now = Utc::now().timestamp();
                let mut tx = self.begin_write().await?;
                let row = sqlx::query(
                    "INSERT INTO deploy_tokens (name, username, owner_kind, owner_path, scopes, token_digest, expires_at, revoked, created_at) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, 0, $8) RETURNING id",
                )
                .bind(&new.name)
                .bind(new.username.as_deref().unwrap_or(""))
                .bind(new.owner_kind.as_str())
                .bind(&new.owner_path)
                .bind(new.scopes.to_string())
                .bind(new.digest.to_hex())
                .bind(new.expires_at.map(|t| t.timestamp()))
                .bind(now)
                .fetch_one(&mut *tx)
                .await?;
                let id: i64 = row.try_get(0)?;
                if new.username.is_none() {
                    sqlx::query("UPDATE deploy_tokens SET username = $1 WHERE id = $2")
                        .bind(default_username(id))
                        .bind(id)
                        .execute(&mut *tx)
                        .await?;
                }
                record_change(&mut tx, id, &new.digest.to_hex(), now).await?;
                tx.commit().await?;
                Ok(id)
            })
            .await?;
        self.get(id)
            .await?
            .ok_or_else(|| StoreError::Corrupt(format!("token {id} vanished")))
    }

    pub async fn get(&self, id: i64) -> Result<Option<TokenRecord>, StoreError> {
        self.timed(async {
            let row = sqlx::query(&format!(
                "SELECT {COLUMNS} FROM deploy_tokens WHERE id = $1"
            ))
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
            row.map(|r| from_row(&r)).transpose()
        })
        .await
    }

    /// The hot-path lookup, by digest (a unique index).
    pub async fn find_by_digest(&self, digest: &Digest) -> Result<Option<TokenRecord>, StoreError> {
        self.timed(async {
            let row = sqlx::query(&format!(
                "SELECT {COLUMNS} FROM deploy_tokens WHERE token_digest = $1"
            ))
            .bind(digest.to_hex())
            .fetch_optional(&self.pool)
            .await?;
            row.map(|r| from_row(&r)).transpose()
        })
        .await
    }

    pub async fn list(&self, filter: ListFilter<'_>) -> Result<Vec<TokenRecord>, StoreError> {
        let rows = self
            .timed(async {
                Ok(match filter.owner {
                    Some((kind, path)) => {
                        sqlx::query(&format!(
                            "SELECT {COLUMNS} FROM deploy_tokens WHERE owner_kind = $1 AND owner_path = $2 ORDER BY id"
                        ))
                        .bind(kind.as_str())
                        .bind(path)
                        .fetch_all(&self.pool)
                        .await?
                    }
                    None => {
                        sqlx::query(&format!("SELECT {COLUMNS} FROM deploy_tokens ORDER BY id"))
                            .fetch_all(&self.pool)
                            .await?
                    }
                })
            })
            .await?;
        let now = Utc::now();
        let mut out = Vec::with_capacity(rows.len());
        for row in &rows {
            let record = from_row(row)?;
            if !filter.active_only || record.is_active(now) {
                out.push(record);
            }
        }
        Ok(out)
    }

    /// Revokes a token; `None` when no such token exists. Revoking twice is
    /// not an error, and the second time changes nothing ([`Revoked::Already`]).
    pub async fn revoke(&self, id: i64) -> Result<Option<Revoked>, StoreError> {
        let digest = self
            .timed(async {
                let now = Utc::now().timestamp();
                let mut tx = self.begin_write().await?;
                let hex: Option<String> =
                    sqlx::query("SELECT token_digest FROM deploy_tokens WHERE id = $1")
                        .bind(id)
                        .fetch_optional(&mut *tx)
                        .await?
                        .map(|r| r.try_get(0))
                        .transpose()?;
                let Some(hex) = hex else {
                    return Ok(None);
                };
                // Conditional, so that of two revocations at once only one
                // records a change (PostgreSQL re-reads the row after the lock).
                let updated = sqlx::query(
                    "UPDATE deploy_tokens SET revoked = 1 WHERE id = $1 AND revoked = 0",
                )
                .bind(id)
                .execute(&mut *tx)
                .await?
                .rows_affected();
                if updated == 0 {
                    return Ok(Some(None));
                }
                record_change(&mut tx, id, &hex, now).await?;
                tx.commit().await?;
                Ok(Some(Some(parse_digest(&hex)?)))
            })
            .await?;
        let Some(digest) = digest else {
            return Ok(None);
        };
        Ok(self.get(id).await?.map(|record| match digest {
            Some(digest) => Revoked::Now(record, digest),
            None => Revoked::Already(record),
        }))
    }

    /// Rotation: a new token with the old one's name, username, owner, scopes
    /// and expiry and the digest of a new secret; the old one now expires
    /// after `grace` (or at its own expiry, if sooner). Returns the new token
    /// and the old one's digest (caches must drop it: its expiry changed);
    /// `None` when there is no such active token.
    pub async fn rotate(
        &self,
        id: i64,
        digest: Digest,
        grace: Duration,
    ) -> Result<Option<(TokenRecord, Digest)>, StoreError> {
        let rotated = self
            .timed(async {
                let now = Utc::now();
                let mut tx = self.begin_write().await?;
                let row = sqlx::query(&format!(
                    "SELECT {COLUMNS}, token_digest FROM deploy_tokens WHERE id = $1"
                ))
                .bind(id)
                .fetch_optional(&mut *tx)
                .await?;
                let Some(row) = row else { return Ok(None) };
                let old = from_row(&row)?;
                if !old.is_active(now) {
                    return Ok(None);
                }
                let old_digest: String = row.try_get("token_digest")?;
                let grace = chrono::Duration::from_std(grace).unwrap_or(chrono::Duration::MAX);
                let until = now.checked_add_signed(grace).unwrap_or(DateTime::<Utc>::MAX_UTC);
                let until = old.expires_at.map_or(until, |at| at.min(until));
                let new_id: i64 = sqlx::query(
                    "INSERT INTO deploy_tokens (name, username, owner_kind, owner_path, scopes, token_digest, expires_at, revoked, created_at) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, 0, $8) RETURNING id",
                )
                .bind(&old.name)
                .bind(&old.username)
                .bind(old.owner_kind.as_str())
                .bind(&old.owner_path)
                .bind(old.scopes.to_string())
                .bind(digest.to_hex())
                .bind(old.expires_at.map(|t| t.timestamp()))
                .bind(now.timestamp())
                .fetch_one(&mut *tx)
                .await?
                .try_get(0)?;
                sqlx::query("UPDATE deploy_tokens SET expires_at = $1 WHERE id = $2")
                    .bind(until.timestamp())
                    .bind(id)
                    .execute(&mut *tx)
                    .await?;
                record_change(&mut tx, id, &old_digest, now.timestamp()).await?;
                record_change(&mut tx, new_id, &digest.to_hex(), now.timestamp()).await?;
                tx.commit().await?;
                Ok(Some((new_id, parse_digest(&old_digest)?)))
            })
            .await?;
        let Some((new_id, old_digest)) = rotated else {
            return Ok(None);
        };
        let record = self
            .get(new_id)
            .await?
            .ok_or_else(|| StoreError::Corrupt(format!("token {new_id} vanished")))?;
        Ok(Some((record, old_digest)))
    }

    /// Writes a batch of `(token id, unix time)` last-use marks in one
    /// transaction; a mark never moves `last_used_at` backwards.
    pub async fn record_last_used(&self, marks: &[(i64, i64)]) -> Result<(), StoreError> {
        self.timed(async {
            let mut tx = self.begin_write().await?;
            for &(id, at) in marks {
                sqlx::query(
                    "UPDATE deploy_tokens SET last_used_at = $1 WHERE id = $2 AND (last_used_at IS NULL OR last_used_at < $1)",
                )
                .bind(at)
                .bind(id)
                .execute(&mut *tx)
                .await?;
            }
            tx.commit().await?;
            Ok(())
        })
        .await
    }

    /// The feed position just before the first change made at or after
    /// `since` (Unix seconds); the newest position when there is none.
    pub async fn change_before(&self, since: i64) -> Result<i64, StoreError> {
        self.timed(async {
            let row = sqlx::query(
                "SELECT COALESCE((SELECT MIN(seq) - 1 FROM token_changes WHERE changed_at >= $1), \
                 (SELECT MAX(seq) FROM token_changes), 0)",
            )
            .bind(since)
            .fetch_one(&self.pool)
            .await?;
            Ok(row.try_get(0)?)
        })
        .await
    }

    /// Changes after `seq`, oldest first, at most [`CHANGES_PAGE`].
    pub async fn changes_since(&self, seq: i64) -> Result<Vec<Change>, StoreError> {
        self.timed(async {
            let rows = sqlx::query("SELECT seq, token_id, token_digest FROM token_changes WHERE seq > $1 ORDER BY seq LIMIT $2")
                .bind(seq)
                .bind(CHANGES_PAGE as i64)
                .fetch_all(&self.pool)
                .await?;
            rows.iter()
                .map(|r| {
                    Ok(Change {
                        seq: r.try_get(0)?,
                        token_id: r.try_get(1)?,
                        digest: parse_digest(&r.try_get::<String, _>(2)?)?,
                    })
                })
                .collect()
        })
        .await
    }
}

fn parse_digest(hex: &str) -> Result<Digest, StoreError> {
    Digest::from_hex(hex).ok_or_else(|| StoreError::Corrupt(format!("digest {hex:?}")))
}

async fn record_change(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    id: i64,
    digest: &str,
    now: i64,
) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO token_changes (token_id, token_digest, changed_at) VALUES ($1, $2, $3)",
    )
    .bind(id)
    .bind(digest)
    .bind(now)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

fn timestamp(secs: i64) -> Result<DateTime<Utc>, StoreError> {
    Utc.timestamp_opt(secs, 0)
        .single()
        .ok_or_else(|| StoreError::Corrupt(format!("timestamp {secs}")))
}

fn from_row(row: &AnyRow) -> Result<TokenRecord, StoreError> {
    let kind: String = row.try_get("owner_kind")?;
    let scopes: String = row.try_get("scopes")?;
    let revoked: i64 = row.try_get("revoked")?;
    Ok(TokenRecord {
        id: row.try_get("id")?,
        name: row.try_get("name")?,
        username: row.try_get("username")?,
        owner_kind: OwnerKind::parse(&kind)
            .ok_or_else(|| StoreError::Corrupt(format!("owner kind {kind:?}")))?,
        owner_path: row.try_get("owner_path")?,
        scopes: ScopeSet::parse_list(&scopes).map_err(|e| StoreError::Corrupt(e.to_string()))?,
        expires_at: row
            .try_get::<Option<i64>, _>("expires_at")?
            .map(timestamp)
            .transpose()?,
        revoked: revoked != 0,
        created_at: timestamp(row.try_get("created_at")?)?,
        last_used_at: row
            .try_get::<Option<i64>, _>("last_used_at")?
            .map(timestamp)
            .transpose()?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::token::Secret;

    fn new_token() -> (Secret, NewToken) {
        let secret = Secret::generate();
        let digest = secret.digest();
        (
            secret,
            NewToken {
                name: "ci".into(),
                username: None,
                owner_kind: OwnerKind::Project,
                owner_path: "acme/web".into(),
                scopes: ScopeSet::parse_list("read_package_registry").unwrap(),
                expires_at: None,
                digest,
            },
        )
    }

    #[tokio::test]
    async fn the_secret_is_never_stored_in_the_sqlite_file() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("t.db").display());
        let store = TokenStore::connect(&StoreConfig::at(url)).await.unwrap();
        let (secret, new) = new_token();
        store.create(new).await.unwrap();
        store.pool.close().await;
        for entry in std::fs::read_dir(dir.path()).unwrap() {
            let bytes = std::fs::read(entry.unwrap().path()).unwrap();
            let text = String::from_utf8_lossy(&bytes);
            assert!(!text.contains(secret.expose()));
        }
    }

    #[tokio::test]
    async fn reopening_a_sqlite_file_keeps_tokens_and_schema() {
        let dir = tempfile::tempdir().unwrap();
        let config = StoreConfig::at(format!("sqlite://{}", dir.path().join("t.db").display()));
        let (secret, new) = new_token();
        TokenStore::connect(&config)
            .await
            .unwrap()
            .create(new)
            .await
            .unwrap();
        let again = TokenStore::connect(&config).await.unwrap();
        assert!(again
            .find_by_digest(&secret.digest())
            .await
            .unwrap()
            .is_some());
    }
}
