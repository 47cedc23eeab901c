//! One suite for both token stores: every test runs against SQLite and
//! against a fresh database on the machine's real PostgreSQL.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::services::PgDatabase;
use tokengate::config::StoreConfig;
use tokengate::store::{LastUsed, ListFilter, NewToken, Revoked, TokenStore};
use tokengate::token::{default_username, Digest, OwnerKind, ScopeSet, Secret};

/// Keeps the backing database alive for the test's duration.
#[allow(dead_code)]
enum Backing {
    Sqlite(tempfile::TempDir),
    Postgres(PgDatabase),
}

fn sqlite() -> (Backing, StoreConfig) {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("t.db").display());
    (Backing::Sqlite(dir), StoreConfig::at(url))
}

fn postgres() -> (Backing, StoreConfig) {
    let db = PgDatabase::create();
    let config = StoreConfig::at(db.url());
    (Backing::Postgres(db), config)
}

/// Runs `$test(StoreConfig)` once per store.
macro_rules! on_both_stores {
    ($($test:ident),* $(,)?) => {$(
        mod $test {
            #[tokio::test]
            async fn sqlite() {
                let (_keep, config) = super::sqlite();
                super::$test(config).await;
            }
            #[tokio::test]
            async fn postgres() {
                let (_keep, config) = super::postgres();
                super::$test(config).await;
            }
        }
    )*};
}

on_both_stores!(
    create_find_list_revoke_and_feed,
    last_used_is_batched_and_never_moves_back,
    reconnecting_keeps_tokens_and_applies_no_migration_twice,
    concurrent_starts_on_an_empty_database_all_succeed,
    of_two_concurrent_revocations_one_records_the_change,
    concurrent_writes_all_succeed,
    writes_cancelled_at_any_point_leave_the_store_writable,
);

fn new_token(path: &str, username: Option<&str>) -> (Secret, NewToken) {
    let secret = Secret::generate();
    let digest = secret.digest();
    (
        secret,
        NewToken {
            name: "ci".into(),
            username: username.map(str::to_string),
            owner_kind: OwnerKind::Project,
            owner_path: path.into(),
            scopes: ScopeSet::parse_list("read_package_registry").unwrap(),
            expires_at: None,
            digest,
        },
    )
}

async fn create_find_list_revoke_and_feed(config: StoreConfig) {
    let store = TokenStore::connect(&config).await.unwrap();
    let began = chrono::Utc::now().timestamp();
    let start = store.change_before(i64::MAX).await.unwrap();
    let (secret, new) = new_token("acme/web", None);
    let t = store.create(new).await.unwrap();
    assert_eq!(t.username, default_username(t.id));
    let found = store
        .find_by_digest(&secret.digest())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(found, t);
    assert!(store
        .find_by_digest(&Digest::of("nope"))
        .await
        .unwrap()
        .is_none());

    let (_, named) = new_token("acme/api", Some("bot"));
    let t2 = store.create(named).await.unwrap();
    assert_eq!(t2.username, "bot");
    let only_web = store
        .list(ListFilter {
            owner: Some((OwnerKind::Project, "acme/web")),
            active_only: false,
        })
        .await
        .unwrap();
    assert_eq!(
        only_web.iter().map(|t| t.id).collect::<Vec<_>>(),
        vec![t.id]
    );

    let Some(Revoked::Now(revoked, digest)) = store.revoke(t.id).await.unwrap() else {
        panic!("revoked now")
    };
    assert!(revoked.revoked);
    assert_eq!(digest, secret.digest());
    let changes = store.changes_since(0).await.unwrap().len();
    let Some(Revoked::Already(again)) = store.revoke(t.id).await.unwrap() else {
        panic!("revoked before")
    };
    assert!(again.revoked);
    assert_eq!(
        store.changes_since(0).await.unwrap().len(),
        changes,
        "a second revocation changes nothing"
    );
    assert!(store.revoke(9999).await.unwrap().is_none());
    let active = store
        .list(ListFilter {
            active_only: true,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(active.iter().map(|t| t.id).collect::<Vec<_>>(), vec![t2.id]);

    let changes = store.changes_since(start).await.unwrap();
    assert_eq!(
        changes.iter().map(|c| c.token_id).collect::<Vec<_>>(),
        vec![t.id, t2.id, t.id]
    );
    assert_eq!(changes[2].digest, secret.digest());
    assert_eq!(store.changes_since(changes[2].seq).await.unwrap().len(), 0);
    // From a time on: the changes made since (what a restart replays).
    let replay = store.change_before(began).await.unwrap();
    assert_eq!(store.changes_since(replay).await.unwrap(), changes);
    assert_eq!(
        store.change_before(began + 3600).await.unwrap(),
        changes[2].seq,
        "nothing changed since: the newest position"
    );
}

async fn last_used_is_batched_and_never_moves_back(config: StoreConfig) {
    let store = TokenStore::connect(&config).await.unwrap();
    let (_, a) = new_token("acme/web", None);
    let (_, b) = new_token("acme/web", None);
    let a = store.create(a).await.unwrap();
    let b = store.create(b).await.unwrap();
    assert_eq!(a.last_used_at, None);

    let used = Arc::new(LastUsed::default());
    for at in [1_800_000_000, 1_800_000_050, 1_800_000_020] {
        used.mark(a.id, at);
    }
    used.mark(b.id, 1_800_000_010);
    assert_eq!(
        used.flush(&store).await.unwrap(),
        2,
        "one batch, one row per token"
    );
    assert_eq!(
        used.flush(&store).await.unwrap(),
        0,
        "nothing left to write"
    );
    let seen = |id| {
        let store = store.clone();
        async move {
            store
                .get(id)
                .await
                .unwrap()
                .unwrap()
                .last_used_at
                .map(|t| t.timestamp())
        }
    };
    assert_eq!(seen(a.id).await, Some(1_800_000_050));
    assert_eq!(seen(b.id).await, Some(1_800_000_010));

    // An older mark (another instance's late flush) does not move it back.
    used.mark(a.id, 1_700_000_000);
    used.flush(&store).await.unwrap();
    assert_eq!(seen(a.id).await, Some(1_800_000_050));

    // A flush dropped half-way (shutdown) loses no mark.
    used.mark(b.id, 1_800_000_100);
    let _ = tokio::time::timeout(Duration::ZERO, used.flush(&store)).await;
    used.flush(&store).await.unwrap();
    assert_eq!(seen(b.id).await, Some(1_800_000_100));
}

async fn reconnecting_keeps_tokens_and_applies_no_migration_twice(config: StoreConfig) {
    let (secret, new) = new_token("acme", None);
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
    let third = TokenStore::connect(&config).await.unwrap();
    assert_eq!(third.list(ListFilter::default()).await.unwrap().len(), 1);
}

async fn concurrent_starts_on_an_empty_database_all_succeed(config: StoreConfig) {
    let starts: Vec<_> = (0..4)
        .map(|_| {
            let config = config.clone();
            tokio::spawn(async move { TokenStore::connect(&config).await })
        })
        .collect();
    for start in starts {
        start.await.unwrap().expect("every instance starts");
    }
}

#[tokio::test]
async fn postgres_holds_only_digests() {
    let db = PgDatabase::create();
    let store = TokenStore::connect(&StoreConfig::at(db.url()))
        .await
        .unwrap();
    let (secret, new) = new_token("acme/web", None);
    store.create(new).await.unwrap();
    let dump = db.query("SELECT row_to_json(t)::text FROM deploy_tokens t");
    assert!(dump.contains(&secret.digest().to_hex()), "{dump}");
    assert!(!dump.contains(secret.expose()));
}

/// Two revocations at once (a double click, two admins): one revokes and
/// records the change, the other finds it revoked — on SQLite too, where a
/// transaction that read before writing used to fail with "database is
/// locked" when another wrote in between.
async fn of_two_concurrent_revocations_one_records_the_change(config: StoreConfig) {
    let store = TokenStore::connect(&config).await.unwrap();
    for _ in 0..20 {
        let (_, new) = new_token("acme/web", None);
        let t = store.create(new).await.unwrap();
        let before = store.changes_since(0).await.unwrap().len();
        let (a, b) = tokio::join!(store.revoke(t.id), store.revoke(t.id));
        let now = [a.unwrap().unwrap(), b.unwrap().unwrap()]
            .iter()
            .filter(|r| matches!(r, Revoked::Now(..)))
            .count();
        assert_eq!(now, 1);
        assert_eq!(store.changes_since(0).await.unwrap().len(), before + 1);
    }
}

/// Writes of every kind at once all succeed: rotations, creations,
/// revocations and last-use marks racing on the same store.
async fn concurrent_writes_all_succeed(config: StoreConfig) {
    let store = TokenStore::connect(&config).await.unwrap();
    for _ in 0..10 {
        let (_, a) = new_token("acme/web", None);
        let (_, b) = new_token("acme/web", None);
        let (a, b) = (
            store.create(a).await.unwrap(),
            store.create(b).await.unwrap(),
        );
        let (_, c) = new_token("acme/api", None);
        let marks = [(a.id, 1), (b.id, 1)];
        let (rotated, created, revoked, marked) = tokio::join!(
            store.rotate(a.id, Secret::generate().digest(), Duration::from_secs(60)),
            store.create(c),
            store.revoke(b.id),
            store.record_last_used(&marks),
        );
        assert!(rotated.unwrap().is_some());
        created.unwrap();
        assert!(matches!(revoked.unwrap(), Some(Revoked::Now(..))));
        marked.unwrap();
    }
}

/// A write dropped half-way (its store timeout, a shutdown) at whatever
/// point it had reached must not leave a transaction open behind it: on
/// SQLite that would hold the write lock and fail every later write.
async fn writes_cancelled_at_any_point_leave_the_store_writable(config: StoreConfig) {
    let store = TokenStore::connect(&config).await.unwrap();
    let (_, new) = new_token("acme/web", None);
    let t = store.create(new).await.unwrap();
    for i in 0..200u32 {
        // Growing deadlines cut the write at every await point in turn.
        let cut = Duration::from_micros(u64::from(i % 50) * 20);
        let at = 1_800_000_000 + i64::from(i);
        let _ = tokio::time::timeout(cut, store.record_last_used(&[(t.id, at)])).await;
        store
            .record_last_used(&[(t.id, at + 1)])
            .await
            .unwrap_or_else(|e| panic!("write after a cut at {cut:?}: {e}"));
    }
    assert!(matches!(
        store.revoke(t.id).await.unwrap(),
        Some(Revoked::Now(..))
    ));
}

/// A write that times out waiting for SQLite's write lock gives its pooled
/// connection back within the store timeout: its `BEGIN IMMEDIATE` runs on
/// in a task of its own, and waits for the lock no longer than that either,
/// so a writer holding the lock for long cannot drain the pool.
#[tokio::test]
async fn sqlite_writes_waiting_for_the_lock_give_their_connections_back() {
    use sqlx::{Connection, Executor};
    let (_keep, mut config) = sqlite();
    config.timeout = Duration::from_secs(1);
    let store = TokenStore::connect(&config).await.unwrap();
    // Another process's writer takes the lock and keeps it.
    let mut holder = sqlx::SqliteConnection::connect(&config.url).await.unwrap();
    holder.execute("BEGIN IMMEDIATE").await.unwrap();
    // As many writes as the pool has connections, all waiting for the lock.
    let write = || store.create(new_token("acme/web", None).1);
    let (a, b, c, d) = tokio::join!(write(), write(), write(), write());
    assert!(a.is_err() && b.is_err() && c.is_err() && d.is_err());
    // The connections are back: a read gets one while the lock is still held.
    store.ping().await.expect("a pooled connection for a read");
    holder.execute("ROLLBACK").await.unwrap();
    store.create(new_token("acme/web", None).1).await.unwrap();
}

#[tokio::test]
async fn an_unreachable_store_fails_within_its_timeout() {
    // A listener that accepts and never answers: the worst kind of outage.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = silent.local_addr().unwrap().port();
    let mut config = StoreConfig::at(format!("postgres://postgres@127.0.0.1:{port}/x"));
    config.timeout = Duration::from_secs(1);
    let started = std::time::Instant::now();
    assert!(TokenStore::connect(&config).await.is_err());
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
}

/// On PostgreSQL a change's feed position is taken when it is written and
/// seen when it commits, in any order: a revocation still in its transaction
/// while a later change commits must not be skipped by the cache's follower.
#[tokio::test]
async fn a_revocation_committed_after_a_later_change_still_reaches_the_cache() {
    use sqlx::Connection;
    use tokengate::cache::{Lookup, TokenResolver};
    use tokengate::config::CacheConfig;

    let db = PgDatabase::create();
    let store = TokenStore::connect(&StoreConfig::at(db.url()))
        .await
        .unwrap();
    let (secret, new) = new_token("acme/web", None);
    let record = store.create(new).await.unwrap();
    let cache = CacheConfig {
        ttl: Duration::from_secs(300),
        negative_ttl: Duration::from_secs(5),
        max_entries: 100,
        redis: None,
        change_poll: Duration::from_millis(50),
    };
    let metrics = Arc::new(tokengate::metrics::Metrics::new(false));
    let resolver = Arc::new(TokenResolver::new(&cache, store.clone(), None, metrics));
    let follower = tokio::spawn(resolver.clone().follow_changes(cache.change_poll));
    let resolve = || async {
        match resolver.resolve(secret.digest()).await.unwrap() {
            Lookup::Found(record) => record,
            Lookup::Absent => panic!("the token is in the store"),
        }
    };
    assert!(!resolve().await.revoked, "cached while live");
    tokio::time::sleep(Duration::from_millis(200)).await;

    // The revocation takes its feed position first and commits last.
    let mut conn = sqlx::PgConnection::connect(&db.url()).await.unwrap();
    let mut revocation = conn.begin().await.unwrap();
    sqlx::query("UPDATE deploy_tokens SET revoked = 1 WHERE id = $1")
        .bind(record.id)
        .execute(&mut *revocation)
        .await
        .unwrap();
    sqlx::query(
        "INSERT INTO token_changes (token_id, token_digest, changed_at) VALUES ($1, $2, 0)",
    )
    .bind(record.id)
    .bind(secret.digest().to_hex())
    .execute(&mut *revocation)
    .await
    .unwrap();
    let (_, later) = new_token("acme/other", None);
    store.create(later).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await; // polls that see only the later change
    revocation.commit().await.unwrap();

    let started = std::time::Instant::now();
    while !resolve().await.revoked {
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "the revocation never reached the cache"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    follower.abort();
}
