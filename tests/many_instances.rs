//! Several `tokengate serve` processes sharing one real PostgreSQL store and
//! one real Redis: revocation everywhere within a second, single flight,
//! batched `last_used_at`, and a Redis Cluster.

mod common;
#[path = "common/recorder.rs"]
mod recorder;

use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use common::services::{PgDatabase, Redis, RedisCluster, Sentinel};
use common::{send, Gate, Setup, Token};
use recorder::Recorder;

fn routes(up: &Recorder) -> String {
    format!(
        r#"
[upstream.rec]
url = "{}"

[[route]]
name = "web"
format = "generic"
path = "/generic/acme/web"
namespace = "acme/web"
upstream = "rec"
strip_prefix = true
"#,
        up.url()
    )
}

/// Starts `n` proxies on one store and one Redis.
fn instances(n: usize, backends: &str, up: &Recorder) -> Vec<Gate> {
    let body = routes(up);
    (0..n)
        .map(|_| {
            Gate::launch(Setup {
                backends: Some(backends.to_string()),
                body: &body,
                ..Setup::default()
            })
        })
        .collect()
}

/// Three proxies on one Redis and one PostgreSQL of their own. The change
/// feed is polled only every 10 s, so revocation bounds are met by Redis
/// pub/sub alone.
fn three_on_redis_and_postgres(work: &std::path::Path) -> (Redis, PgDatabase, Recorder, Vec<Gate>) {
    let redis = Redis::start(work);
    let db = PgDatabase::create();
    let up = Recorder::start();
    let backends = format!(
        "[store]\nurl = \"{}\"\n\n[cache]\nredis_url = \"{}\"\nchange_poll_millis = 10000\n",
        db.url(),
        redis.url()
    );
    let gates = instances(3, &backends, &up);
    (redis, db, up, gates)
}

fn get(gate: &Gate, token: &Token) -> u16 {
    send(
        gate.port,
        "GET",
        "/generic/acme/web/app.tar.gz",
        &[("Authorization", &token.basic())],
        b"",
    )
    .status
}

#[test]
fn a_revocation_through_one_instance_is_denied_by_every_instance_within_a_second() {
    let work = tempfile::tempdir().unwrap();
    let (redis, _db, _up, gates) = three_on_redis_and_postgres(work.path());
    let token = gates[0].token("project:acme/web", "read_package_registry", &[]);
    for gate in &gates {
        assert_eq!(get(gate, &token), 200, "warm every instance's cache");
    }
    let cached = redis.cli(&["--scan", "--pattern", "tokengate:v2:*:token:*"]);
    assert_eq!(
        cached.lines().count(),
        1,
        "one shared Redis entry: {cached}"
    );

    for gate in &gates[1..] {
        assert_eq!(
            gate.metric(r#"tokengate_cache_lookups_total{layer="redis",result="hit"}"#),
            1.0,
            "the other instances found the token in Redis, not the store"
        );
    }

    let started = Instant::now();
    gates[0].revoke(token.id);
    let revoked_at = started.elapsed();
    let bound = denied_everywhere(&gates, &token, started);
    println!(
        "revocation: CLI done after {revoked_at:?}; all three instances deny {bound:?} after the CLI started"
    );
    assert!(bound < Duration::from_secs(1), "took {bound:?}");

    // The same through the admin API of another instance (DELETE revokes, as in GitLab).
    let second = gates[0].token("project:acme/web", "read_package_registry", &[]);
    for gate in &gates {
        assert_eq!(get(gate, &second), 200);
    }
    let started = Instant::now();
    let deleted = gates[2].admin(
        "DELETE",
        &format!("/api/v4/projects/acme%2Fweb/deploy_tokens/{}", second.id),
        &[],
        b"",
    );
    assert_eq!(deleted.status, 204, "{}", deleted.text());
    let bound = denied_everywhere(&gates, &second, started);
    println!(
        "revocation: API DELETE through instance 3; all three deny {bound:?} after it was sent"
    );
    assert!(bound < Duration::from_secs(1), "took {bound:?}");
}

/// How long after `started` every instance refuses `token` (401); fails past 3 s.
fn denied_everywhere(gates: &[Gate], token: &Token, started: Instant) -> Duration {
    let mut denied = vec![false; gates.len()];
    while denied.iter().any(|d| !d) {
        for (i, gate) in gates.iter().enumerate() {
            if !denied[i] {
                denied[i] = get(gate, token) == 401;
            }
        }
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "still allowed after 3 s by {denied:?}"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    started.elapsed()
}

#[test]
fn five_hundred_concurrent_first_requests_make_one_store_query() {
    let work = tempfile::tempdir().unwrap();
    let redis = Redis::start(work.path());
    let db = PgDatabase::create();
    let up = Recorder::start();
    let backends = format!(
        "[store]\nurl = \"{}\"\n\n[cache]\nredis_url = \"{}\"\n",
        db.url(),
        redis.url()
    );
    let gate = instances(1, &backends, &up).remove(0);
    let token = gate.token("project:acme/web", "read_package_registry", &[]);
    // Let the change feed deliver the creation (which drops any negative
    // entry) so that it cannot interleave with the burst below.
    std::thread::sleep(Duration::from_millis(1200));
    let before = gate.metric("tokengate_store_lookups_total");

    let barrier = Arc::new(Barrier::new(500));
    let threads: Vec<_> = (0..500)
        .map(|_| {
            let barrier = barrier.clone();
            let (port, token) = (gate.port, token.clone());
            std::thread::spawn(move || {
                barrier.wait();
                send(
                    port,
                    "GET",
                    "/generic/acme/web/app.tar.gz",
                    &[("Authorization", &token.basic())],
                    b"",
                )
                .status
            })
        })
        .collect();
    let statuses: Vec<u16> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
    let queries = gate.metric("tokengate_store_lookups_total") - before;
    println!("500 concurrent first requests: {queries} store queries");
    assert_eq!(queries, 1.0);
    assert_eq!(
        gate.metric(r#"tokengate_cache_lookups_total{layer="redis",result="miss"}"#),
        1.0,
        "and one Redis lookup"
    );
}

/// A lookup that read the store before a revocation finishes after the
/// revocation's invalidation: its late write must not put the old record back
/// into Redis, where every instance would find it until its TTL — however
/// late it comes (a write can sit in a socket buffer through a partition
/// long after the lookup gave up on it), so nothing that refuses it expires.
#[tokio::test]
async fn a_late_write_cannot_undo_an_invalidation_in_redis() {
    use tokengate::cache::{Lookup, RedisCache, RedisTarget, Shared};
    use tokengate::config::{CacheConfig, RedisConfig};
    use tokengate::metrics::Metrics;
    use tokengate::token::{Digest, OwnerKind, ScopeSet, TokenRecord};

    let work = tempfile::tempdir().unwrap();
    let redis = Redis::start(work.path());
    let config = RedisConfig {
        target: RedisTarget::parse(&redis.url()).unwrap(),
        timeout: Duration::from_millis(250),
        ca_pem: None,
        key_prefix: tokengate::cache::DEFAULT_KEY_PREFIX.into(),
    };
    let cache_config = CacheConfig {
        ttl: Duration::from_secs(60),
        negative_ttl: Duration::from_secs(5),
        max_entries: 10,
        redis: Some(config.clone()),
        change_poll: Duration::from_millis(500),
    };
    let cache = RedisCache::new(&config, &cache_config, &Metrics::new(true));
    assert!(cache.check().await);
    let old = Lookup::Found(Arc::new(TokenRecord {
        id: 1,
        name: "ci".into(),
        username: "bot".into(),
        owner_kind: OwnerKind::Project,
        owner_path: "acme/web".into(),
        scopes: ScopeSet::parse_list("read_package_registry").unwrap(),
        expires_at: None,
        revoked: false,
        created_at: chrono::Utc::now(),
        last_used_at: None,
    }));
    let miss = |shared: Shared| match shared {
        Shared::Miss(generation) => generation,
        other => panic!("expected a miss: {other:?}"),
    };

    for (digest, announce) in [(Digest::of("feed"), false), (Digest::of("admin"), true)] {
        // The lookup: Redis (a miss) first, then the store.
        let read = miss(cache.get(&digest).await);
        // The revocation's invalidation overtakes it.
        if announce {
            cache.announce(&digest, 1).await.unwrap();
        } else {
            cache.invalidate(&digest).await;
        }
        cache.put(&digest, &old, read.clone()).await;
        let after = miss(cache.get(&digest).await);
        assert_ne!(after, read, "the invalidation was counted");
        // A lookup that began after the invalidation shares its result.
        cache.put(&digest, &old, after).await;
        assert!(matches!(cache.get(&digest).await, Shared::Hit(_)), "shared");
    }
    let counters = redis.cli(&["--scan", "--pattern", "tokengate:v2:*:generation"]);
    assert_eq!(counters.lines().count(), 2, "{counters}");
    for counter in counters.lines() {
        assert_eq!(
            redis.cli(&["TTL", counter]).trim(),
            "-1",
            "{counter} never expires"
        );
    }
    // A generation lost meanwhile (a restart without persistence, a failover)
    // starts again somewhere the lookup cannot have read: not from zero.
    for invalidated_before in [false, true] {
        let digest = Digest::of(&format!("restart-{invalidated_before}"));
        if invalidated_before {
            cache.invalidate(&digest).await;
        }
        let read = miss(cache.get(&digest).await);
        cache.invalidate(&digest).await;
        redis.cli(&["FLUSHALL"]);
        if invalidated_before {
            cache.invalidate(&digest).await;
        }
        cache.put(&digest, &old, read).await;
        assert!(
            matches!(cache.get(&digest).await, Shared::Miss(_)),
            "a late write after a reset was refused"
        );
    }
}

#[test]
fn last_used_at_is_kept_current_in_batches() {
    let db = PgDatabase::create();
    let up = Recorder::start();
    let backends = format!(
        "[store]\nurl = \"{}\"\nlast_used_flush_seconds = 1\n",
        db.url()
    );
    let gate = instances(1, &backends, &up).remove(0);
    let token = gate.token("project:acme/web", "read_package_registry", &[]);
    let unused = gate.token("project:acme/web", "read_package_registry", &[]);
    let last_used = |t: &Token| {
        db.query(&format!(
            "SELECT last_used_at FROM deploy_tokens WHERE id = {}",
            t.id
        ))
    };
    assert_eq!(last_used(&token).trim(), "");
    let started = chrono::Utc::now().timestamp();
    for _ in 0..100 {
        assert_eq!(get(&gate, &token), 200);
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while last_used(&token).trim().is_empty() {
        assert!(Instant::now() < deadline, "last_used_at never written");
        std::thread::sleep(Duration::from_millis(100));
    }
    let at: i64 = last_used(&token).trim().parse().unwrap();
    assert!(at >= started && at <= chrono::Utc::now().timestamp());
    assert_eq!(last_used(&unused).trim(), "", "only used tokens are marked");
    let flushes = gate.metric("tokengate_last_used_flushes_total");
    println!("100 requests, {flushes} last_used_at writes");
    assert!(
        (1.0..=5.0).contains(&flushes),
        "{flushes} writes for 100 requests"
    );
    let listed = String::from_utf8(gate.cli(&["token", "list"]).stdout).unwrap();
    let row = listed
        .lines()
        .find(|l| l.starts_with(&format!("{} ", token.id)))
        .unwrap();
    assert!(!row.ends_with("never"), "the CLI shows the last use: {row}");
}

#[test]
fn a_redis_cluster_of_three_masters_serves_as_the_shared_cache() {
    let work = tempfile::tempdir().unwrap();
    let cluster = RedisCluster::start(work.path());
    let db = PgDatabase::create();
    let up = Recorder::start();
    let backends = format!(
        "[store]\nurl = \"{}\"\n\n[cache]\nredis_url = \"{}\"\nchange_poll_millis = 10000\n",
        db.url(),
        cluster.url()
    );
    let gates = instances(2, &backends, &up);
    assert_eq!(gates[0].readyz().1["redis"], "up");
    let tokens = cluster.share_entries(&gates[0], &gates[1]);

    let started = Instant::now();
    gates[0].revoke(tokens[0].id);
    while get(&gates[1], &tokens[0]) != 401 {
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "revocation through the cluster too slow"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    println!("revocation through Redis Cluster: {:?}", started.elapsed());
}

#[test]
fn sentinel_names_the_master_and_a_failover_is_followed() {
    let work = tempfile::tempdir().unwrap();
    let mut master = Redis::start(work.path());
    let replica_of = master.port.to_string();
    let replica = Redis::start_with(work.path(), &["--replicaof", "127.0.0.1", &replica_of]);
    let sentinel = Sentinel::start(work.path(), master.port);
    let db = PgDatabase::create();
    let up = Recorder::start();
    let backends = format!(
        "[store]\nurl = \"{}\"\n\n[cache]\nredis_url = \"{}\"\n",
        db.url(),
        sentinel.url()
    );
    let gate = instances(1, &backends, &up).remove(0);
    assert_eq!(gate.readyz().1["redis"], "up");
    let first = gate.token("project:acme/web", "read_package_registry", &[]);
    assert_eq!(get(&gate, &first), 200);
    assert!(master.holds(&first), "cached on the master");

    master.kill();
    let started = Instant::now();
    while sentinel.master_port() != Some(replica.port) {
        assert!(started.elapsed() < Duration::from_secs(30), "no failover");
        std::thread::sleep(Duration::from_millis(100));
    }
    while gate.readyz().1["redis"] != "up" {
        assert!(
            started.elapsed() < Duration::from_secs(40),
            "the proxy never followed the failover"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    println!("Sentinel failover followed after {:?}", started.elapsed());
    let second = gate.token("project:acme/web", "read_package_registry", &[]);
    assert_eq!(get(&gate, &second), 200);
    assert!(
        replica.holds(&second),
        "new entries go to the promoted replica"
    );
}

#[test]
fn a_rotated_token_s_old_secret_works_for_the_grace_period_only_on_every_instance() {
    let work = tempfile::tempdir().unwrap();
    let (_redis, _db, _up, gates) = three_on_redis_and_postgres(work.path());
    let old = gates[0].token("project:acme/web", "read_package_registry", &[]);
    for gate in &gates {
        assert_eq!(
            get(gate, &old),
            200,
            "cached everywhere before the rotation"
        );
    }
    // Through the admin API of instance 2, as a script would.
    let rotated = gates[1].admin(
        "POST",
        &format!(
            "/api/v4/projects/acme%2Fweb/deploy_tokens/{}/rotate",
            old.id
        ),
        &[("Content-Type", "application/json")],
        br#"{"grace": "2s"}"#,
    );
    let rotated_at = Instant::now();
    assert_eq!(rotated.status, 201, "{}", rotated.text());
    let body: serde_json::Value = serde_json::from_slice(&rotated.body).unwrap();
    let new = Token {
        id: body["id"].as_i64().unwrap(),
        username: body["username"].as_str().unwrap().to_string(),
        secret: body["token"].as_str().unwrap().to_string(),
    };
    assert_eq!(new.username, old.username, "same username, new secret");
    assert_ne!(new.secret, old.secret);
    for gate in &gates {
        assert_eq!(get(gate, &new), 200);
        if rotated_at.elapsed() < Duration::from_millis(1500) {
            assert_eq!(
                get(gate, &old),
                200,
                "the old secret works during the grace period"
            );
        }
    }
    std::thread::sleep(Duration::from_secs(2).saturating_sub(rotated_at.elapsed()));
    for gate in &gates {
        let started = Instant::now();
        while get(gate, &old) != 401 {
            assert!(
                started.elapsed() < Duration::from_secs(1),
                "the old secret outlived its grace"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(get(gate, &new), 200);
    }
    // The CLI rotates too, with the new secret alone on stdout's last line.
    let out = gates[2].cli(&["token", "rotate", &new.id.to_string(), "--grace", "0s"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let third = String::from_utf8(out.stdout).unwrap().trim().to_string();
    assert!(third.starts_with("tgdt_"));
    for gate in &gates {
        let newest = Token {
            secret: third.clone(),
            ..new.clone()
        };
        assert_eq!(get(gate, &newest), 200);
        let started = Instant::now();
        while get(gate, &new) != 401 {
            assert!(
                started.elapsed() < Duration::from_secs(1),
                "a zero grace still let the secret in"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}
