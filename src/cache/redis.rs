//! The shared cache layer: Redis (one server, Sentinel or Cluster).
//!
//! Redis is an accelerator, never a source of truth. Every command has a
//! short timeout; a failure marks Redis down, lookups then go straight to the
//! store, and a probe every second reconnects. Invalidations that could not be
//! applied while Redis was unreachable are replayed *before* reads resume, so
//! a revoked token can never come back from a stale Redis entry.
//!
//! A lookup that read the store before a revocation must not put the old
//! record back after the revocation's invalidation, however late its write
//! arrives (a write can sit in a socket buffer through a network partition
//! long after the client gave up on it). So invalidations are counted: each
//! digest belongs to one of [`STRIPES`] stripes, whose generation key (never
//! expiring) an invalidation increments as it deletes the entry, in one
//! script. A lookup reads the generation with the entry, before it reads the
//! store, and its write is a script that adds the entry only if the
//! generation is still the one it read and no entry is there. The entry and
//! its generation share a hash tag, so both live on one Redis Cluster node.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwapOption;
use chrono::{TimeZone, Utc};
use futures_util::StreamExt;
use prometheus_client::metrics::counter::Counter;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::cluster_async::ClusterConnection;
use redis::sentinel::{SentinelClientBuilder, SentinelServerType};
use redis::{Client, Cmd, FromRedisValue, IntoConnectionInfo, RedisError, TlsMode};
use serde::{Deserialize, Serialize};

use super::{Lookup, TokenResolver};
use crate::config::{CacheConfig, RedisConfig};
use crate::metrics::{Dependency, Metrics};
use crate::token::{Digest, OwnerKind, ScopeSet, TokenRecord};

/// How many generation counters the digests share: an invalidation also
/// refuses, once, the writes of lookups of other digests in its stripe.
const STRIPES: u16 = 1024;
/// What keys and the channel start with unless `redis_key_prefix` says otherwise.
pub const DEFAULT_KEY_PREFIX: &str = "tokengate";
const PROBE_EVERY: Duration = Duration::from_secs(1);

fn stripe(digest: &Digest) -> u16 {
    u16::from_be_bytes([digest.0[0], digest.0[1]]) % STRIPES
}

/// The Redis key of a digest's shared entry.
pub fn entry_key(prefix: &str, digest: &Digest) -> String {
    format!(
        "{prefix}:v2:{{{}}}:token:{}",
        stripe(digest),
        digest.to_hex()
    )
}

/// The key counting the invalidations of a digest's stripe.
fn generation_key(prefix: &str, digest: &Digest) -> String {
    format!("{prefix}:v2:{{{}}}:generation", stripe(digest))
}

/// The channel on which revocations are announced to every instance.
fn channel(prefix: &str) -> String {
    format!("{prefix}:v1:invalidate")
}

// A generation that is missing (never set, or lost: a restart without
// persistence, a failover, eviction) starts again at a random value
// (ARGV[1] of the read and the invalidation), never at one a lookup may
// have read before it was lost.

/// Reads the entry (KEYS[1]) and the stripe's generation (KEYS[2]).
const READ_SCRIPT: &str = "local g = redis.call('GET', KEYS[2]) \
     if not g then redis.call('SET', KEYS[2], ARGV[1]) g = ARGV[1] end \
     return {redis.call('GET', KEYS[1]), g}";

/// Adds the entry (KEYS[1]) unless one is there or the stripe's generation
/// (KEYS[2]) is not the one the lookup read (ARGV[1]).
const PUT_SCRIPT: &str = "if redis.call('GET', KEYS[2]) == ARGV[1] then \
     return redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3], 'NX') end \
     return false";

/// Counts an invalidation in the stripe's generation (KEYS[2]) and deletes
/// the entry (KEYS[1]).
const INVALIDATE_SCRIPT: &str = "if redis.call('EXISTS', KEYS[2]) == 0 then \
     redis.call('SET', KEYS[2], ARGV[1]) end \
     redis.call('INCR', KEYS[2]) return redis.call('DEL', KEYS[1])";

/// Where a missing generation starts: far from 0, and from every value a
/// generation had before (with overwhelming probability).
fn random_start() -> u64 {
    rand::Rng::gen_range(&mut rand::thread_rng(), 1..1u64 << 62)
}

/// The invalidation count of a digest's stripe when a lookup began.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Generation(String);

/// What Redis holds for a digest.
#[derive(Debug)]
pub enum Shared {
    Hit(Lookup),
    /// Nothing usable: what the store says may be shared, unless the
    /// stripe is invalidated meanwhile.
    Miss(Generation),
    /// Redis is down or failed: it is neither read nor written.
    Unavailable,
}

/// Where Redis is, parsed from `cache.redis_url`:
/// `redis://[user:pass@]host:port[/db]` for one server (`rediss://` over TLS),
/// `redis+sentinel://[user:pass@]host:port[,host:port…]/service[/db]`
/// (`rediss+sentinel://`: TLS to the sentinels and to the master),
/// `redis+cluster://[user:pass@]host:port[,host:port…]` (`rediss+cluster://` over TLS).
#[derive(Debug, Clone)]
pub enum RedisTarget {
    Single(String),
    Sentinel {
        sentinels: Vec<String>,
        service: String,
        /// `redis://[user:pass@]_/db`, carrying the master's credentials and db.
        master: String,
    },
    Cluster(Vec<String>),
}

/// A Redis URL fit for an error message: its user and password hidden.
fn redacted(url: &str) -> String {
    let Some((before, hosts)) = url.rsplit_once('@') else {
        return url.to_string();
    };
    match before.split_once("://") {
        Some((scheme, _)) => format!("{scheme}://***@{hosts}"),
        None => format!("***@{hosts}"),
    }
}

impl RedisTarget {
    pub fn parse(url: &str) -> Result<RedisTarget, String> {
        let (scheme, rest) = url
            .split_once("://")
            .ok_or_else(|| format!("{:?} is not a redis:// URL", redacted(url)))?;
        let (userinfo, rest) = match rest.rsplit_once('@') {
            Some((user, rest)) => (format!("{user}@"), rest),
            None => (String::new(), rest),
        };
        let (hosts, path) = rest.split_once('/').unwrap_or((rest, ""));
        let hosts: Vec<&str> = hosts.split(',').collect();
        if hosts.iter().any(|h| h.is_empty()) {
            return Err(format!("{:?} names an empty host", redacted(url)));
        }
        let node_scheme = if scheme.starts_with("rediss") {
            "rediss"
        } else {
            "redis"
        };
        let node = |host: &str| format!("{node_scheme}://{userinfo}{host}");
        let target = match scheme {
            "redis" | "rediss" if hosts.len() == 1 => RedisTarget::Single(url.to_string()),
            "redis" | "rediss" => {
                return Err(
                    "one host only; use redis+cluster:// or redis+sentinel:// for several".into(),
                )
            }
            "redis+cluster" | "rediss+cluster" if path.is_empty() => {
                RedisTarget::Cluster(hosts.iter().map(|h| node(h)).collect())
            }
            "redis+cluster" | "rediss+cluster" => {
                return Err("a cluster URL takes no path (Redis Cluster has only db 0)".into())
            }
            "redis+sentinel" | "rediss+sentinel" => {
                let (service, db) = path.split_once('/').unwrap_or((path, "0"));
                if service.is_empty() {
                    return Err("name the master: redis+sentinel://host:port/mymaster".into());
                }
                RedisTarget::Sentinel {
                    sentinels: hosts
                        .iter()
                        .map(|h| format!("{node_scheme}://{h}"))
                        .collect(),
                    service: service.to_string(),
                    master: node("localhost") + "/" + db,
                }
            }
            _ => {
                return Err(format!(
                    "unknown scheme {scheme:?}; expected redis, redis+sentinel or redis+cluster (rediss… for TLS)"
                ))
            }
        };
        target.check()?;
        Ok(target)
    }

    /// Whether the connections are TLS (`rediss://`, `rediss+…://`).
    pub fn tls(&self) -> bool {
        let url = match self {
            RedisTarget::Single(url) => url,
            RedisTarget::Cluster(nodes) => &nodes[0],
            RedisTarget::Sentinel { master, .. } => master,
        };
        url.starts_with("rediss://")
    }

    /// Lets the redis crate validate every URL it will be handed.
    fn check(&self) -> Result<(), String> {
        let urls: Vec<&String> = match self {
            RedisTarget::Single(url) => vec![url],
            RedisTarget::Sentinel {
                sentinels, master, ..
            } => sentinels.iter().chain([master]).collect(),
            RedisTarget::Cluster(nodes) => nodes.iter().collect(),
        };
        for url in urls {
            url.as_str()
                .into_connection_info()
                .map_err(|e| format!("invalid Redis URL: {e}"))?;
        }
        Ok(())
    }
}

/// A live connection; both kinds reconnect by themselves.
#[derive(Clone)]
enum Connection {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

pub struct RedisCache {
    target: RedisTarget,
    /// PEM roots for a TLS connection, instead of the system's.
    ca_pem: Option<Vec<u8>>,
    key_prefix: String,
    timeout: Duration,
    ttl: Duration,
    negative_ttl: Duration,
    connection: ArcSwapOption<Connection>,
    health: Arc<Dependency>,
    hits: Counter,
    misses: Counter,
    /// Digests whose invalidation failed; replayed before reads resume.
    unapplied: Mutex<HashSet<Digest>>,
}

#[derive(Debug, thiserror::Error)]
enum Failure {
    #[error("not connected")]
    NotConnected,
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    #[error(transparent)]
    Redis(#[from] RedisError),
}

impl RedisCache {
    /// A cache that connects lazily; Redis being down at start is not an error.
    pub fn new(redis: &RedisConfig, cache: &CacheConfig, metrics: &Metrics) -> Arc<RedisCache> {
        Arc::new(RedisCache {
            target: redis.target.clone(),
            ca_pem: redis.ca_pem.clone(),
            key_prefix: redis.key_prefix.clone(),
            timeout: redis.timeout,
            ttl: cache.ttl,
            negative_ttl: cache.negative_ttl,
            connection: ArcSwapOption::empty(),
            health: metrics
                .redis
                .clone()
                .expect("metrics were built with a Redis dependency"),
            hits: metrics.redis_hits.clone(),
            misses: metrics.redis_misses.clone(),
            unapplied: Mutex::default(),
        })
    }

    async fn connect(&self) -> Result<Connection, RedisError> {
        let manager = |client: Client| {
            let config = ConnectionManagerConfig::new()
                .set_connection_timeout(Some(self.timeout))
                .set_response_timeout(Some(self.timeout))
                .set_number_of_retries(1);
            ConnectionManager::new_lazy_with_config(client, config).map(Connection::Single)
        };
        match &self.target {
            RedisTarget::Single(url) => manager(self.client(url)?),
            RedisTarget::Sentinel { .. } => manager(self.sentinel_master().await?),
            RedisTarget::Cluster(nodes) => {
                let mut builder = redis::cluster::ClusterClient::builder(nodes.clone())
                    .connection_timeout(self.timeout)
                    .response_timeout(self.timeout)
                    .retries(1);
                if let Some(certs) = self.certificates() {
                    builder = builder.certs(certs);
                }
                let client = builder.build()?;
                Ok(Connection::Cluster(client.get_async_connection().await?))
            }
        }
    }

    /// A client of one server; over TLS (`rediss://`) it verifies the server
    /// against `redis_ca_file` when given, else against the system roots.
    fn client(&self, url: &str) -> Result<Client, RedisError> {
        match self.certificates() {
            Some(certs) => Client::build_with_tls(url, certs),
            None => Client::open(url),
        }
    }

    /// The roots of `redis_ca_file`, for TLS connections.
    fn certificates(&self) -> Option<redis::TlsCertificates> {
        self.ca_pem.as_ref().map(|pem| redis::TlsCertificates {
            client_tls: None,
            root_cert: Some(pem.clone()),
        })
    }

    /// Asks the sentinels which server is the master now.
    async fn sentinel_master(&self) -> Result<Client, RedisError> {
        let RedisTarget::Sentinel {
            sentinels,
            service,
            master,
        } = &self.target
        else {
            unreachable!("only called for Sentinel targets")
        };
        let master = master.as_str().into_connection_info()?;
        let settings = master.redis_settings();
        let sentinels = sentinels
            .iter()
            .map(|s| Ok(s.as_str().into_connection_info()?.addr().clone()))
            .collect::<Result<Vec<_>, RedisError>>()?;
        let mut builder =
            SentinelClientBuilder::new(sentinels, service, SentinelServerType::Master)?
                .set_client_to_redis_db(settings.db());
        if let Some(username) = settings.username() {
            builder = builder.set_client_to_redis_username(username);
        }
        if let Some(password) = settings.password() {
            builder = builder.set_client_to_redis_password(password);
        }
        if self.target.tls() {
            builder = builder
                .set_client_to_sentinel_tls_mode(TlsMode::Secure)
                .set_client_to_redis_tls_mode(TlsMode::Secure);
            if let Some(certs) = self.certificates() {
                builder = builder
                    .set_client_to_sentinel_certificates(certs.clone())
                    .set_client_to_redis_certificates(certs);
            }
        }
        builder.build()?.async_get_client().await
    }

    /// A client for a plain (non-cluster) connection, for pub/sub.
    async fn subscriber_client(&self) -> Result<Client, RedisError> {
        match &self.target {
            RedisTarget::Single(url) => self.client(url),
            RedisTarget::Sentinel { .. } => self.sentinel_master().await,
            // PUBLISH on any cluster node reaches subscribers on every node.
            RedisTarget::Cluster(nodes) => {
                let mut last = None;
                for node in nodes {
                    let client = self.client(node)?;
                    match tokio::time::timeout(
                        self.timeout,
                        client.get_multiplexed_async_connection(),
                    )
                    .await
                    {
                        Ok(Ok(_)) => return Ok(client),
                        Ok(Err(e)) => last = Some(e),
                        Err(_) => {}
                    }
                }
                Err(last.unwrap_or_else(|| {
                    RedisError::from(std::io::Error::from(std::io::ErrorKind::TimedOut))
                }))
            }
        }
    }

    async fn run<T: FromRedisValue>(&self, cmd: &Cmd) -> Result<T, Failure> {
        let connection = self.connection.load_full().ok_or(Failure::NotConnected)?;
        let reply = tokio::time::timeout(self.timeout, async {
            match &*connection {
                Connection::Single(c) => cmd.query_async(&mut c.clone()).await,
                Connection::Cluster(c) => cmd.query_async(&mut c.clone()).await,
            }
        })
        .await
        .map_err(|_| Failure::Timeout(self.timeout))?;
        Ok(reply?)
    }

    /// The shared entry, with the stripe's generation on a miss.
    pub async fn get(&self, digest: &Digest) -> Shared {
        if !self.health.is_up() {
            return Shared::Unavailable;
        }
        let mut read = self.script(READ_SCRIPT, digest);
        read.arg(random_start());
        let (entry, generation) = match self.run::<(Option<String>, String)>(&read).await {
            Ok(reply) => reply,
            Err(e) => {
                self.health.failed(&e);
                return Shared::Unavailable;
            }
        };
        if let Some(text) = entry {
            match decode(&text) {
                Some(lookup) => {
                    self.hits.inc();
                    return Shared::Hit(lookup);
                }
                None => tracing::warn!("unreadable Redis cache entry ignored"),
            }
        }
        self.misses.inc();
        Shared::Miss(Generation(generation))
    }

    /// Shares a lookup, unless an entry is there already or the digest's
    /// stripe was invalidated since `generation` was read.
    pub async fn put(&self, digest: &Digest, lookup: &Lookup, generation: Generation) {
        if !self.health.is_up() {
            return;
        }
        let ttl = match lookup {
            Lookup::Absent => self.negative_ttl,
            // Never keep a record past its expiry (the decision checks it anyway).
            Lookup::Found(record) => record.expires_at.map_or(self.ttl, |at| {
                let left = (at - Utc::now()).to_std().unwrap_or_default();
                self.ttl.min(left.max(Duration::from_secs(1)))
            }),
        };
        let mut cmd = self.script(PUT_SCRIPT, digest);
        cmd.arg(generation.0)
            .arg(encode(lookup))
            .arg(ttl.as_millis().max(1) as u64);
        if let Err(e) = self.run::<Option<String>>(&cmd).await {
            self.health.failed(&e);
        }
    }

    /// A script with its two keys, for one digest.
    fn script(&self, code: &str, digest: &Digest) -> Cmd {
        let mut cmd = redis::cmd("EVAL");
        cmd.arg(code)
            .arg(2)
            .arg(entry_key(&self.key_prefix, digest))
            .arg(generation_key(&self.key_prefix, digest));
        cmd
    }

    /// The command that deletes a shared entry and counts the invalidation.
    fn bury(&self, digest: &Digest) -> Cmd {
        let mut cmd = self.script(INVALIDATE_SCRIPT, digest);
        cmd.arg(random_start());
        cmd
    }

    /// Deletes the shared entry, counting the invalidation; remembered and retried if
    /// Redis is unreachable.
    pub async fn invalidate(&self, digest: &Digest) {
        loop {
            // Down: no wait for a timeout per change (the feed's follower would
            // fall behind by one timeout each); the reconnect replays what was
            // missed. Decided under the lock the reconnect holds as it marks
            // Redis up, so a digest is either replayed first or buried here.
            {
                let mut unapplied = self.unapplied();
                if !self.health.is_up() {
                    unapplied.insert(*digest);
                    return;
                }
            }
            match self.run::<()>(&self.bury(digest)).await {
                Ok(()) => return,
                Err(e) => self.health.failed(&e),
            }
        }
    }

    fn unapplied(&self) -> std::sync::MutexGuard<'_, HashSet<Digest>> {
        self.unapplied.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Buries the shared entry and tells every instance to drop its own
    /// copy: the fast path of revocation. `Err` means only the change feed
    /// will carry it (within about a second).
    pub async fn announce(&self, digest: &Digest, token_id: i64) -> Result<(), String> {
        if self.connection.load().is_none() {
            let connection = self.connect().await.map_err(|e| e.to_string())?;
            self.connection.store(Some(Arc::new(connection)));
        }
        self.run::<()>(&self.bury(digest))
            .await
            .map_err(|e| e.to_string())?;
        let message = format!("{} {token_id}", digest.to_hex());
        self.run::<i64>(
            redis::cmd("PUBLISH")
                .arg(channel(&self.key_prefix))
                .arg(message),
        )
        .await
        .map_err(|e| e.to_string())?;
        Ok(())
    }

    /// (Re)connects if needed and PINGs; on success replays the
    /// invalidations that were missed before marking Redis usable again.
    /// Returns whether Redis is usable.
    pub async fn check(&self) -> bool {
        match self.probe().await {
            Ok(()) => true,
            Err(e) => {
                self.health.failed(&e);
                if matches!(self.target, RedisTarget::Sentinel { .. }) {
                    // The master may have moved: ask the sentinels again next time.
                    self.connection.store(None);
                }
                false
            }
        }
    }

    /// Runs [`RedisCache::check`] once a second until the task is dropped.
    pub async fn keep_connected(self: Arc<Self>) {
        let mut tick = tokio::time::interval(PROBE_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            self.check().await;
        }
    }

    async fn probe(&self) -> Result<(), Failure> {
        if self.connection.load().is_none() {
            let connection = tokio::time::timeout(self.timeout * 4, self.connect())
                .await
                .map_err(|_| Failure::Timeout(self.timeout * 4))??;
            self.connection.store(Some(Arc::new(connection)));
        }
        self.run::<String>(&redis::cmd("PING")).await?;
        // Until none is left: invalidations keep arriving while these run.
        loop {
            let pending: Vec<Digest> = {
                let unapplied = self.unapplied();
                if unapplied.is_empty() {
                    self.health.succeeded();
                    return Ok(());
                }
                unapplied.iter().copied().collect()
            };
            for digest in pending {
                self.run::<()>(&self.bury(&digest)).await?;
                self.unapplied().remove(&digest);
            }
        }
    }

    /// Listens for announced revocations and drops them from this
    /// instance's memory; resubscribes after any disconnect.
    pub async fn listen(self: Arc<Self>, resolver: Arc<TokenResolver>) {
        loop {
            match self.subscribe_once(&resolver).await {
                Ok(()) => tracing::debug!("Redis subscription ended; resubscribing"),
                Err(e) => tracing::debug!(error = %e, "Redis subscription failed; retrying"),
            }
            tokio::time::sleep(PROBE_EVERY).await;
        }
    }

    async fn subscribe_once(&self, resolver: &TokenResolver) -> Result<(), Failure> {
        let client = self.subscriber_client().await?;
        let mut pubsub = tokio::time::timeout(self.timeout * 4, client.get_async_pubsub())
            .await
            .map_err(|_| Failure::Timeout(self.timeout * 4))??;
        pubsub.subscribe(channel(&self.key_prefix)).await?;
        tracing::debug!("subscribed to Redis invalidations");
        let mut messages = pubsub.on_message();
        while let Some(message) = messages.next().await {
            let Ok(payload) = message.get_payload::<String>() else {
                continue;
            };
            // `<digest hex> <token id>`
            let (hex, id) = payload.split_once(' ').unwrap_or((&payload, ""));
            if let Some(digest) = Digest::from_hex(hex) {
                resolver.forget(&digest, id.parse().ok()).await;
            }
        }
        Ok(())
    }
}

/// A record as stored in Redis: plain fields, versioned by the key prefix.
#[derive(Serialize, Deserialize)]
struct StoredRecord {
    id: i64,
    name: String,
    username: String,
    owner_kind: String,
    owner_path: String,
    scopes: String,
    expires_at: Option<i64>,
    revoked: bool,
    created_at: i64,
    last_used_at: Option<i64>,
}

/// What an unknown digest is stored as.
const ABSENT: &str = "-";

fn encode(lookup: &Lookup) -> String {
    let Lookup::Found(r) = lookup else {
        return ABSENT.to_string();
    };
    serde_json::to_string(&StoredRecord {
        id: r.id,
        name: r.name.clone(),
        username: r.username.clone(),
        owner_kind: r.owner_kind.as_str().to_string(),
        owner_path: r.owner_path.clone(),
        scopes: r.scopes.to_string(),
        expires_at: r.expires_at.map(|t| t.timestamp()),
        revoked: r.revoked,
        created_at: r.created_at.timestamp(),
        last_used_at: r.last_used_at.map(|t| t.timestamp()),
    })
    .expect("a record always serializes")
}

fn decode(text: &str) -> Option<Lookup> {
    if text == ABSENT {
        return Some(Lookup::Absent);
    }
    let r: StoredRecord = serde_json::from_str(text).ok()?;
    let time = |secs: i64| Utc.timestamp_opt(secs, 0).single();
    Some(Lookup::Found(Arc::new(TokenRecord {
        id: r.id,
        name: r.name,
        username: r.username,
        owner_kind: OwnerKind::parse(&r.owner_kind)?,
        owner_path: r.owner_path,
        scopes: ScopeSet::parse_list(&r.scopes).ok()?,
        expires_at: match r.expires_at {
            Some(secs) => Some(time(secs)?),
            None => None,
        },
        revoked: r.revoked,
        created_at: time(r.created_at)?,
        last_used_at: match r.last_used_at {
            Some(secs) => Some(time(secs)?),
            None => None,
        },
    })))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_for_each_deployment() {
        let plain = RedisTarget::parse("redis://127.0.0.1:6379/0").unwrap();
        assert!(matches!(plain, RedisTarget::Single(_)) && !plain.tls());
        let tls = RedisTarget::parse("rediss://u:p@cache.internal:6380/0").unwrap();
        assert!(matches!(tls, RedisTarget::Single(_)) && tls.tls());
        let tls = RedisTarget::parse("rediss+cluster://a:1,b:2").unwrap();
        assert!(tls.tls());
        let RedisTarget::Cluster(nodes) = &tls else {
            panic!()
        };
        assert_eq!(nodes, &["rediss://a:1", "rediss://b:2"]);
        let tls = RedisTarget::parse("rediss+sentinel://u:p@s1:26379/mymaster/2").unwrap();
        let RedisTarget::Sentinel {
            sentinels, master, ..
        } = &tls
        else {
            panic!()
        };
        assert_eq!(sentinels, &["rediss://s1:26379"]);
        assert_eq!(master, "rediss://u:p@localhost/2");
        assert!(tls.tls());
        let Ok(RedisTarget::Cluster(nodes)) =
            RedisTarget::parse("redis+cluster://u:p@10.0.0.1:7000,10.0.0.2:7000")
        else {
            panic!()
        };
        assert_eq!(
            nodes,
            ["redis://u:p@10.0.0.1:7000", "redis://u:p@10.0.0.2:7000"]
        );
        let Ok(RedisTarget::Sentinel {
            sentinels,
            service,
            master,
        }) = RedisTarget::parse("redis+sentinel://s1:26379,s2:26379/mymaster/2")
        else {
            panic!()
        };
        assert_eq!(sentinels, ["redis://s1:26379", "redis://s2:26379"]);
        assert_eq!(service, "mymaster");
        assert_eq!(master, "redis://localhost/2");
        for bad in [
            "127.0.0.1:6379",
            "http://x",
            "redis://a:1,b:2",
            "redis+sentinel://s1:26379",
            "redis+cluster://a:1/3",
            "redis+cluster://a:1,,b:2",
            "rediss+cluster://a:1/3",
            "rediss+sentinel://s1:26379",
        ] {
            assert!(RedisTarget::parse(bad).is_err(), "{bad}");
        }
        // A password never reaches the error message (it is shown at start and on reload).
        for bad in ["u:hunter2@127.0.0.1:6379", "redis+cluster://u:hunter2@a:1,"] {
            let e = RedisTarget::parse(bad).unwrap_err();
            assert!(!e.contains("hunter2") && e.contains("***@"), "{e}");
        }
    }

    #[test]
    fn entries_round_trip() {
        let record = TokenRecord {
            id: 7,
            name: "ci".into(),
            username: "bot".into(),
            owner_kind: OwnerKind::Group,
            owner_path: "acme".into(),
            scopes: ScopeSet::parse_list("read_registry,write_package_registry").unwrap(),
            expires_at: Some(Utc.timestamp_opt(2_000_000_000, 0).unwrap()),
            revoked: true,
            created_at: Utc.timestamp_opt(1_700_000_000, 0).unwrap(),
            last_used_at: None,
        };
        let Some(Lookup::Found(back)) = decode(&encode(&Lookup::Found(Arc::new(record.clone()))))
        else {
            panic!()
        };
        assert_eq!(*back, record);
        assert!(matches!(
            decode(&encode(&Lookup::Absent)),
            Some(Lookup::Absent)
        ));
        assert!(decode("{\"id\":1}").is_none());
    }
}
