//! Versioned schema migrations, applied in order inside one transaction.
//! A migration is never edited once released: add a new version instead.

use sqlx::{AnyConnection, AnyPool, Row};

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

/// Applies every migration newer than the recorded schema version, all in
/// one transaction that first takes a lock, so that instances starting
/// together on an empty database migrate it exactly once: SQLite's write lock
/// (`BEGIN IMMEDIATE`), PostgreSQL's transaction-scoped advisory lock.
pub async fn apply(pool: &AnyPool, dialect: Dialect) -> Result<(), sqlx::Error> {
    let mut conn = pool.acquire().await?;
    let begin = match dialect {
        Dialect::Sqlite => "BEGIN IMMEDIATE".to_string(),
        Dialect::Postgres => "BEGIN".to_string(),
    };
    sqlx::query(&begin).execute(&mut *conn).await?;
    let result = async {
        if dialect == Dialect::Postgres {
            sqlx::query(&format!(
                "DO $$ BEGIN PERFORM pg_advisory_xact_lock({LOCK_KEY}); END $$"
            ))
            .execute(&mut *conn)
            .await?;
        }
        apply_locked(&mut conn, dialect).await
    }
    .await;
    let end = if result.is_ok() { "COMMIT" } else { "ROLLBACK" };
    let ended = sqlx::query(end).execute(&mut *conn).await;
    result.and(ended.map(drop))
}

/// "tokeng" in ASCII: a fixed key unlikely to collide with an application's own locks.
const LOCK_KEY: i64 = 0x746f_6b65_6e67;

async fn apply_locked(conn: &mut AnyConnection, dialect: Dialect) -> Result<(), sqlx::Error> {
    sqlx::query(
        "CREATE TABLE IF NOT EXISTS schema_migrations (version BIGINT PRIMARY KEY, applied_at BIGINT NOT NULL)",
    )
    .execute(&mut *conn)
    .await?;
    let current: i64 = sqlx::query("SELECT COALESCE(MAX(version), 0) FROM schema_migrations")
        .fetch_one(&mut *conn)
        .await?
        .try_get(0)?;
    for migration in MIGRATIONS.iter().filter(|m| m.version > current) {
        let statements = match dialect {
            Dialect::Sqlite => migration.sqlite,
            Dialect::Postgres => migration.postgres,
        };
        for sql in statements {
            sqlx::query(sql).execute(&mut *conn).await?;
        }
        sqlx::query("INSERT INTO schema_migrations (version, applied_at) VALUES ($1, $2)")
            .bind(migration.version)
            .bind(chrono::Utc::now().timestamp())
            .execute(&mut *conn)
            .await?;
        tracing::info!(version = migration.version, "applied store migration");
    }
    Ok(())
}
