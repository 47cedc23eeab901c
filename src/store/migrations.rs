//! Versioned schema migrations, applied in order inside a transaction each.
//! A migration is never edited once released: add a new version instead.

use sqlx::{AnyPool, Row};

use super::Dialect;

struct Migration {
    version: i64,
    sqlite: &'static [&'static str],
    postgres: &'static [&'static str],
}

const MIGRATIONS: &[Migration] = &[Migration {
    version: 1,
    sqlite: &[
        "CREATE TABLE deploy_tokens (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            name TEXT NOT NULL,
            username TEXT NOT NULL,
            owner_kind TEXT NOT NULL,
            owner_path TEXT NOT NULL,
            scopes TEXT NOT NULL,
            token_digest TEXT NOT NULL UNIQUE,
            expires_at BIGINT,
            revoked BIGINT NOT NULL DEFAULT 0,
            created_at BIGINT NOT NULL,
            last_used_at BIGINT)",
        "CREATE INDEX deploy_tokens_owner ON deploy_tokens (owner_kind, owner_path)",
        "CREATE TABLE token_changes (
            seq INTEGER PRIMARY KEY AUTOINCREMENT,
            token_id BIGINT NOT NULL,
            token_digest TEXT NOT NULL,
            changed_at BIGINT NOT NULL)",
    ],
    postgres: &[
        "CREATE TABLE deploy_tokens (
            id BIGSERIAL PRIMARY KEY,
            name TEXT NOT NULL,
            username TEXT NOT NULL,
            owner_kind TEXT NOT NULL,
            owner_path TEXT NOT NULL,
            scopes TEXT NOT NULL,
            token_digest TEXT NOT NULL UNIQUE,
            expires_at BIGINT,
            revoked BIGINT NOT NULL DEFAULT 0,
            created_at BIGINT NOT NULL,
            last_used_at BIGINT)",
        "CREATE INDEX deploy_tokens_owner ON deploy_tokens (owner_kind, owner_path)",
        "CREATE TABLE token_changes (
            seq BIGSERIAL PRIMARY KEY,
            token_id BIGINT NOT NULL,
            token_digest TEXT NOT NULL,
            changed_at BIGINT NOT NULL)",
    ],
}];

/// Applies every migration newer than the recorded schema version.
pub async fn apply(pool: &AnyPool, dialect: Dialect) -> Result<(), sqlx::Error> {
    sqlx::query(
        "CREATE TABLE IF NOT EXISTS schema_migrations (version BIGINT PRIMARY KEY, applied_at BIGINT NOT NULL)",
    )
    .execute(pool)
    .await?;
    let current: i64 = sqlx::query("SELECT COALESCE(MAX(version), 0) FROM schema_migrations")
        .fetch_one(pool)
        .await?
        .try_get(0)?;
    for migration in MIGRATIONS.iter().filter(|m| m.version > current) {
        let mut tx = pool.begin().await?;
        let statements = match dialect {
            Dialect::Sqlite => migration.sqlite,
            Dialect::Postgres => migration.postgres,
        };
        for sql in statements {
            sqlx::query(sql).execute(&mut *tx).await?;
        }
        sqlx::query("INSERT INTO schema_migrations (version, applied_at) VALUES ($1, $2)")
            .bind(migration.version)
            .bind(chrono::Utc::now().timestamp())
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        tracing::info!(version = migration.version, "applied store migration");
    }
    Ok(())
}
