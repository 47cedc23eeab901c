//! Faults under traffic: two proxies share a Redis and a PostgreSQL store
//! that this test owns the path to; Redis is killed and restarted, then
//! partitioned and healed, then the store is cut and restored, while
//! clients keep sending requests. Every response is counted and checked.

mod common;
#[path = "common/recorder.rs"]
mod recorder;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::services::{self, Link, PgDatabase, Redis};
use common::{send, Gate, Setup, Token};
use recorder::Recorder;

const PHASES: [&str; 7] = [
    "baseline",
    "redis killed",
    "redis restarted",
    "redis partitioned",
    "redis healed",
    "store cut",
    "store restored",
];

/// Longest any request may take: the store timeout (1 s) plus slack.
const HANG: Duration = Duration::from_secs(4);

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
enum Kind {
    Valid,
    RevokedBefore,
    /// Revoked while Redis was killed.
    RevokedA,
    /// Revoked while Redis was partitioned (its Redis entry survives the partition);
    /// used from the restart on.
    RevokedB,
    Unknown,
}

struct Sample {
    phase: usize,
    kind: Kind,
    status: u16,
    sent: Instant,
    took: Duration,
}

/// One generic route for project acme/web, to the recorder.
fn web_route(up: &Recorder) -> String {
    format!(
        "[upstream.rec]\nurl = \"{}\"\n\n[[route]]\nname = \"web\"\nformat = \"generic\"\npath = \"/generic/acme/web\"\nnamespace = \"acme/web\"\nupstream = \"rec\"\nstrip_prefix = true\n",
        up.url()
    )
}

/// Waits up to 10 s for `check`, failing the test with `what` otherwise.
fn wait_until(what: &str, check: &dyn Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !check() {
        assert!(Instant::now() < deadline, "never: {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn redis_and_store_faults_under_traffic() {
    let work = tempfile::tempdir().unwrap();
    let mut redis = Redis::start(work.path());
    let redis_link = Link::to(redis.port);
    let db = PgDatabase::create();
    let store_link = Link::to(PgDatabase::server_port());
    let up = Recorder::start();
    let backends = format!(
        "[store]\nurl = \"{}\"\ntimeout_seconds = 1\n\n[cache]\nredis_url = \"redis://127.0.0.1:{}/0\"\nredis_timeout_millis = 200\nnegative_ttl_seconds = 1\n",
        db.url_via(Some(store_link.port)),
        redis_link.port
    );
    let body = web_route(&up);
    let gates: Vec<Gate> = (0..2)
        .map(|_| {
            Gate::launch(Setup {
                // Unknown tokens are part of the traffic: no per-address lockout here.
                server_extra: "failed_auth_per_minute = 0",
                backends: Some(backends.clone()),
                body: &body,
                ..Setup::default()
            })
        })
        .collect();
    let mint = || gates[0].token("project:acme/web", "read_package_registry", &[]);
    let valid: Vec<Token> = (0..3).map(|_| mint()).collect();
    let revoked_before = mint();
    gates[0].revoke(revoked_before.id);
    let revoked_a = mint();
    let revoked_b = mint();
    let fresh = mint();
    let unknown = Token {
        id: 0,
        username: "nobody".into(),
        // Well-formed (checksum and all), so it is looked up, but never stored.
        secret: tokengate::token::Secret::generate().expose().to_string(),
    };
    let cast: Vec<(Kind, Token)> = valid
        .iter()
        .map(|t| (Kind::Valid, t.clone()))
        .chain([
            (Kind::RevokedBefore, revoked_before.clone()),
            (Kind::RevokedA, revoked_a.clone()),
            (Kind::RevokedB, revoked_b.clone()),
            (Kind::Unknown, unknown),
        ])
        .collect();

    let phase = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let samples = Arc::new(Mutex::new(Vec::<Sample>::new()));
    let ports: Vec<u16> = gates.iter().map(|g| g.port).collect();
    let clients: Vec<_> = (0..6)
        .map(|worker| {
            let (phase, stop, samples) = (phase.clone(), stop.clone(), samples.clone());
            let (cast, ports) = (cast.clone(), ports.clone());
            std::thread::spawn(move || {
                let mut i = worker;
                while !stop.load(Ordering::Relaxed) {
                    let (kind, token) = &cast[i % cast.len()];
                    let port = ports[(i / cast.len()) % ports.len()];
                    i += 1;
                    let current = phase.load(Ordering::Relaxed);
                    if *kind == Kind::RevokedB && current < 2 {
                        // First used once Redis is back, so that Redis holds its entry.
                        continue;
                    }
                    let sent = Instant::now();
                    let status = send(
                        port,
                        "GET",
                        "/generic/acme/web/app.tar.gz",
                        &[("Authorization", &token.basic())],
                        b"",
                    )
                    .status;
                    samples.lock().unwrap().push(Sample {
                        phase: current,
                        kind: *kind,
                        status,
                        sent,
                        took: sent.elapsed(),
                    });
                    std::thread::sleep(Duration::from_millis(5));
                }
            })
        })
        .collect();

    let ready = |gate: &Gate| gate.readyz();

    // 0: baseline.
    std::thread::sleep(Duration::from_millis(1500));
    for gate in &gates {
        assert_eq!(ready(gate), (200, ready(gate).1));
        assert_eq!(ready(gate).1["status"], "ready");
    }

    // 1: Redis killed; token A revoked while it is gone.
    phase.store(1, Ordering::Relaxed);
    redis.kill();
    for gate in &gates {
        wait_until("readyz degraded", &|| ready(gate).1["status"] == "degraded");
        assert_eq!(ready(gate).0, 200, "degraded is still ready");
        assert!(gate
            .metrics()
            .contains(r#"tokengate_dependency_up{dependency="redis"} 0"#));
    }
    let revoked_a_at = Instant::now();
    gates[1].revoke(revoked_a.id);
    std::thread::sleep(Duration::from_millis(2000));

    // 2: Redis back (empty): reconnect without restart.
    redis.resume();
    for gate in &gates {
        wait_until("Redis reconnected", &|| ready(gate).1["status"] == "ready");
    }
    phase.store(2, Ordering::Relaxed);
    std::thread::sleep(Duration::from_millis(1500));

    // 3: Redis partitioned (it keeps its entries); token B revoked meanwhile.
    let b_key = services::cache_key(&revoked_b);
    assert!(
        !redis.cli(&["GET", &b_key]).trim().is_empty(),
        "B is cached in Redis"
    );
    phase.store(3, Ordering::Relaxed);
    redis_link.cut();
    for gate in &gates {
        wait_until("readyz degraded", &|| ready(gate).1["redis"] == "down");
    }
    let revoked_b_at = Instant::now();
    gates[0].revoke(revoked_b.id);
    std::thread::sleep(Duration::from_millis(2000));
    let stale = redis.cli(&["GET", &b_key]);
    assert!(
        stale.contains("\"revoked\":false"),
        "the partition kept a stale entry: {stale}"
    );

    // 4: healed: the missed invalidation is replayed before Redis is read again.
    phase.store(4, Ordering::Relaxed);
    redis_link.restore();
    for gate in &gates {
        wait_until("Redis reconnected", &|| ready(gate).1["redis"] == "up");
    }
    let entry = redis.cli(&["GET", &b_key]);
    assert!(
        !entry.contains("\"revoked\":false"),
        "stale entry survived the heal: {entry}"
    );
    std::thread::sleep(Duration::from_millis(1500));

    // 5: store cut: cached tokens keep working, unknown ones are refused.
    phase.store(5, Ordering::Relaxed);
    let store_cut_at = Instant::now();
    store_link.cut();
    for gate in &gates {
        wait_until("readyz unready", &|| ready(gate).0 == 503);
        assert_eq!(ready(gate).1["store"], "down");
    }
    let never_seen = send(
        gates[0].port,
        "GET",
        "/generic/acme/web/app.tar.gz",
        &[("Authorization", &fresh.basic())],
        b"",
    );
    assert_eq!(
        never_seen.status,
        503,
        "an uncached token fails closed: {}",
        never_seen.text()
    );
    std::thread::sleep(Duration::from_millis(2000));

    // 6: store back: recovers by itself.
    phase.store(6, Ordering::Relaxed);
    store_link.restore();
    for gate in &gates {
        wait_until("store back", &|| ready(gate).1["status"] == "ready");
    }
    let store_back_at = Instant::now();
    std::thread::sleep(Duration::from_millis(1500));
    stop.store(true, Ordering::Relaxed);
    for client in clients {
        client.join().unwrap();
    }
    let fresh_now = send(
        gates[1].port,
        "GET",
        "/generic/acme/web/app.tar.gz",
        &[("Authorization", &fresh.basic())],
        b"",
    );
    assert_eq!(fresh_now.status, 200, "{}", fresh_now.text());

    // Account for every response.
    let samples = samples.lock().unwrap();
    let mut table: BTreeMap<(usize, Kind, u16), usize> = BTreeMap::new();
    for s in samples.iter() {
        *table.entry((s.phase, s.kind, s.status)).or_default() += 1;
    }
    println!("{} requests:", samples.len());
    for ((phase, kind, status), n) in &table {
        println!("  {:<18} {kind:<14?} {status} ×{n}", PHASES[*phase]);
    }
    let slowest = samples.iter().map(|s| s.took).max().unwrap();
    println!("slowest response: {slowest:?}");
    assert!(slowest < HANG, "a request took {slowest:?}");
    for (phase, name) in PHASES.iter().enumerate() {
        assert!(
            samples.iter().filter(|s| s.phase == phase).count() >= 20,
            "traffic in phase {name}"
        );
    }
    for s in samples.iter() {
        let ok = match s.kind {
            Kind::Valid => s.status == 200,
            Kind::RevokedBefore => s.status == 401,
            Kind::RevokedA => revoked_after(s, revoked_a_at),
            Kind::RevokedB => revoked_after(s, revoked_b_at),
            // Refused while the store is out: judged by when the request
            // was in flight, as a request tagged with the phase before the
            // cut may still be waiting on the store when it goes.
            Kind::Unknown => {
                s.status == 401
                    || (s.status == 503
                        && s.sent + s.took >= store_cut_at
                        && s.sent <= store_back_at)
            }
        };
        assert!(
            ok,
            "{:?} got {} in phase {}",
            s.kind, s.status, PHASES[s.phase]
        );
    }
}

/// Allowed until its revocation, denied from one second after it.
fn revoked_after(s: &Sample, revoked_at: Instant) -> bool {
    if s.sent + s.took < revoked_at {
        s.status == 200
    } else if s.sent > revoked_at + Duration::from_secs(1) {
        s.status == 401
    } else {
        matches!(s.status, 200 | 401)
    }
}

/// An instance that revoked a token while Redis was unreachable keeps the
/// shared entry's deletion in memory until Redis is back; if it stops
/// first, the stale entry stays behind. A starting instance applies the
/// recent changes again, so the entry cannot bring the token back.
#[test]
fn a_stale_entry_left_by_a_stopped_instance_does_not_bring_a_revoked_token_back() {
    let work = tempfile::tempdir().unwrap();
    let redis = Redis::start(work.path());
    let redis_link = Link::to(redis.port);
    let db = PgDatabase::create();
    let up = Recorder::start();
    let backends = format!(
        "[store]\nurl = \"{}\"\n\n[cache]\nredis_url = \"redis://127.0.0.1:{}/0\"\nredis_timeout_millis = 200\n",
        db.url_via(None),
        redis_link.port
    );
    let body = web_route(&up);
    let launch = || {
        Gate::launch(Setup {
            backends: Some(backends.clone()),
            body: &body,
            ..Setup::default()
        })
    };
    let fetch = |gate: &Gate, token: &Token| {
        let auth = [("Authorization", token.basic())];
        let auth: Vec<(&str, &str)> = auth.iter().map(|(k, v)| (*k, v.as_str())).collect();
        send(gate.port, "GET", "/generic/acme/web/f", &auth, b"").status
    };

    let first = launch();
    let token = first.token("project:acme/web", "read_package_registry", &[]);
    assert_eq!(fetch(&first, &token), 200);
    let key = services::cache_key(&token);
    assert!(
        redis.cli(&["GET", &key]).contains("\"revoked\":false"),
        "the record is shared in Redis"
    );
    redis_link.cut();
    wait_until("Redis down", &|| first.readyz().1["redis"] == "down");
    first.revoke(token.id);
    wait_until("revoked on the first instance", &|| {
        fetch(&first, &token) == 401
    });
    drop(first);
    redis_link.restore();
    assert!(
        redis.cli(&["GET", &key]).contains("\"revoked\":false"),
        "the stopped instance left the stale entry"
    );

    let second = launch();
    wait_until("revoked on the restarted instance", &|| {
        fetch(&second, &token) == 401
    });
    assert!(
        !redis.cli(&["GET", &key]).contains("\"revoked\":false"),
        "the stale entry was buried"
    );
    for _ in 0..5 {
        assert_eq!(fetch(&second, &token), 401);
    }
}

/// Two deployments (two stores) sharing one Redis, each with its own key
/// prefix: a token of one, shared in Redis by its use there, is unknown to
/// the other.
#[test]
fn deployments_sharing_a_redis_never_read_each_others_tokens() {
    let work = tempfile::tempdir().unwrap();
    let redis = Redis::start(work.path());
    let up = Recorder::start();
    let body = web_route(&up);
    let dbs = [PgDatabase::create(), PgDatabase::create()];
    let gates: Vec<Gate> = ["staging", "prod"]
        .iter()
        .zip(&dbs)
        .map(|(prefix, db)| {
            let backends = format!(
                "[store]\nurl = \"{}\"\n\n[cache]\nredis_url = \"redis://127.0.0.1:{}/0\"\nredis_key_prefix = \"{prefix}\"\n",
                db.url_via(None),
                redis.port
            );
            Gate::launch(Setup {
                backends: Some(backends),
                body: &body,
                ..Setup::default()
            })
        })
        .collect();
    let token = gates[0].token("project:acme/web", "read_package_registry", &[]);
    let fetch = |gate: &Gate| {
        let auth = token.basic();
        send(
            gate.port,
            "GET",
            "/generic/acme/web/f",
            &[("Authorization", &auth)],
            b"",
        )
        .status
    };
    assert_eq!(fetch(&gates[0]), 200);
    let digest = tokengate::token::Digest::of(&token.secret);
    let key = |prefix| tokengate::cache::entry_key(prefix, &digest);
    assert!(
        redis
            .cli(&["GET", &key("staging")])
            .contains("\"revoked\":false"),
        "shared under the staging prefix"
    );
    assert_eq!(fetch(&gates[1]), 401, "a staging token on prod");
    assert!(
        !redis
            .cli(&["GET", &key("prod")])
            .contains("\"revoked\":false"),
        "prod keeps its own entries"
    );
    assert_eq!(fetch(&gates[0]), 200, "staging's entry is untouched");
}
