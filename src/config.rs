//! Configuration: `proxy.toml` → raw serde structs (with spans) → a
//! validated [`Config`]. Every refusal names the file, the line and the key,
//! so an operator can fix a config without guessing.

use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use http::{HeaderValue, Method};
use serde::Deserialize;
use toml::Spanned;

use crate::cache::RedisTarget;
use crate::format::{self, Access, Authentication};
use crate::proxy::HELD_PER_BYTE;
use crate::route::{
    self, AccessRule, NamespaceSource, NormalizedPath, PathPart, PatternPart, Route, RouteTable,
    Upstream,
};
use crate::token::validate_namespace;

/// A refused config: where, which key, and why.
#[derive(Debug, thiserror::Error)]
#[error("{file}:{line}: {key}: {message}")]
pub struct ConfigError {
    pub file: String,
    pub line: usize,
    pub key: String,
    pub message: String,
}

/// Where the config came from, and how to turn byte offsets into lines.
struct Source<'a> {
    name: String,
    text: &'a str,
}

impl Source<'_> {
    fn line_of(&self, offset: usize) -> usize {
        self.text[..offset.min(self.text.len())]
            .matches('\n')
            .count()
            + 1
    }

    fn error(
        &self,
        span: std::ops::Range<usize>,
        key: impl Into<String>,
        message: impl Into<String>,
    ) -> ConfigError {
        ConfigError {
            file: self.name.clone(),
            line: self.line_of(span.start),
            key: key.into(),
            message: message.into(),
        }
    }

    fn at<T>(
        &self,
        value: &Spanned<T>,
        key: impl Into<String>,
        message: impl Into<String>,
    ) -> ConfigError {
        self.error(value.span(), key, message)
    }
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    server: RawServer,
    #[serde(default)]
    store: RawStore,
    #[serde(default)]
    cache: RawCache,
    admin: Option<RawAdmin>,
    forward_auth: Option<RawForwardAuth>,
    signing: Option<RawSigning>,
    registry_auth: Option<RawRegistryAuth>,
    #[serde(default)]
    upstream: BTreeMap<String, Spanned<RawUpstream>>,
    #[serde(default)]
    route: Vec<Spanned<RawRoute>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawServer {
    listen: Option<Spanned<String>>,
    tls: Option<Spanned<RawTls>>,
    public_url: Option<Spanned<String>>,
    header_read_timeout_seconds: Option<Spanned<u64>>,
    upstream_connect_timeout_seconds: Option<Spanned<u64>>,
    upstream_response_timeout_seconds: Option<Spanned<u64>>,
    body_idle_timeout_seconds: Option<Spanned<u64>>,
    shutdown_grace_seconds: Option<Spanned<u64>>,
    shutdown_delay_seconds: Option<Spanned<u64>>,
    metadata_max_bytes: Option<usize>,
    metadata_budget_bytes: Option<Spanned<usize>>,
    failed_auth_per_minute: Option<u32>,
    log_level: Option<Spanned<String>>,
    workers: Option<Spanned<usize>>,
    trusted_proxies: Option<Spanned<Vec<String>>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawStore {
    url: Option<Spanned<String>>,
    timeout_seconds: Option<Spanned<u64>>,
    last_used_flush_seconds: Option<Spanned<u64>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawCache {
    ttl_seconds: Option<Spanned<u64>>,
    negative_ttl_seconds: Option<Spanned<u64>>,
    max_entries: Option<u64>,
    redis_url: Option<Spanned<String>>,
    redis_ca_file: Option<Spanned<String>>,
    redis_timeout_millis: Option<Spanned<u64>>,
    redis_key_prefix: Option<Spanned<String>>,
    change_poll_millis: Option<Spanned<u64>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAdmin {
    listen: Spanned<String>,
    /// One admin token, named `admin`.
    token_env: Option<Spanned<String>>,
    /// Named admin tokens (several, for rotation).
    #[serde(default)]
    tokens: Vec<Spanned<RawAdminToken>>,
    tls: Option<Spanned<RawTls>>,
    /// The admin listener's URL as clients reach it (behind an ingress).
    public_url: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawForwardAuth {
    listen: Spanned<String>,
    trusted_peers: Spanned<Vec<String>>,
    original_method_header: Option<Spanned<String>>,
    original_uri_header: Option<Spanned<String>>,
    envoy_path_prefix: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAdminToken {
    name: String,
    token_env: String,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawSigning {
    key_file: Option<Spanned<String>>,
    #[serde(default)]
    verify_key_files: Vec<Spanned<String>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawRegistryAuth {
    path: Option<Spanned<String>>,
    jwks_path: Option<Spanned<String>>,
    service: Option<String>,
    issuer: Option<String>,
    token_ttl_seconds: Option<Spanned<u64>>,
    session_ttl_seconds: Option<Spanned<u64>>,
    #[serde(default)]
    anonymous: bool,
    #[serde(default)]
    allow_delete: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawUpstream {
    url: Spanned<String>,
    basic: Option<Spanned<RawBasic>>,
    token_env: Option<Spanned<String>>,
    /// CA certificates (PEM) that verify an https upstream instead of the system roots.
    ca_file: Option<Spanned<String>>,
    /// A client certificate and key (PEM) presented to an https upstream (mTLS).
    client_cert: Option<Spanned<RawTls>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTls {
    cert: String,
    key: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBasic {
    username: String,
    password_env: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRoute {
    name: Spanned<String>,
    format: Spanned<String>,
    path: Spanned<String>,
    namespace: Option<Spanned<String>>,
    upstream: Spanned<String>,
    #[serde(default)]
    strip_prefix: bool,
    allow_delete: Option<Spanned<bool>>,
    #[serde(default)]
    access: Vec<Spanned<RawAccessRule>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAccessRule {
    method: Option<String>,
    path: String,
    access: String,
    #[serde(default)]
    multipart: bool,
}

/// The proxy's externally visible base URL (redirects, rewritten metadata).
#[derive(Debug, Clone)]
pub struct PublicUrl {
    /// `scheme://authority`.
    pub origin: String,
    /// Path prefix without a trailing `/`, possibly empty.
    pub base_path: String,
    pub https: bool,
}

#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub listen: SocketAddr,
    /// TLS on the listener (`[server] tls = { cert, key }`); plain HTTP when absent.
    pub tls: Option<crate::tls::ServerTls>,
    pub public_url: PublicUrl,
    pub header_read_timeout: Duration,
    pub upstream_connect_timeout: Duration,
    pub upstream_response_timeout: Duration,
    /// A streamed body (either way) that sends nothing for this long is cut.
    pub body_idle_timeout: Duration,
    pub shutdown_grace: Duration,
    /// SIGTERM: how long the listener keeps accepting after readiness drops.
    pub shutdown_delay: Duration,
    /// Largest metadata body (npm packument, simple index) read for URL rewriting.
    pub metadata_max_bytes: usize,
    /// Bytes all metadata rewrites may hold at once (each holds twice its document).
    pub metadata_budget_bytes: usize,
    /// Wrong credentials allowed per client address per minute before 429; 0 disables.
    pub failed_auth_per_minute: u32,
    /// The log filter (`info`, `tokengate=debug,info`, ...); `TOKENGATE_LOG` wins when set.
    pub log_level: String,
    /// Connection workers, each a single-threaded runtime; `None`: connections
    /// on the shared multi-threaded runtime (`workers = 0`).
    pub workers: Option<usize>,
    /// Load balancers and proxies in front whose `X-Forwarded-For` names the
    /// client (none by default: the peer is the client).
    pub trusted_proxies: Vec<ipnet::IpNet>,
}

#[derive(Debug, Clone)]
pub struct StoreConfig {
    pub url: String,
    /// Longest wait for one store query; past it the lookup fails (closed).
    pub timeout: Duration,
    /// How often batched `last_used_at` updates are written.
    pub last_used_flush: Duration,
}

impl StoreConfig {
    /// A store at `url` with the default timeouts.
    pub fn at(url: impl Into<String>) -> StoreConfig {
        StoreConfig {
            url: url.into(),
            timeout: Duration::from_secs(5),
            last_used_flush: Duration::from_secs(30),
        }
    }
}

#[derive(Debug, Clone)]
pub struct CacheConfig {
    pub ttl: Duration,
    pub negative_ttl: Duration,
    pub max_entries: u64,
    /// The shared layer; `None` means in-process only.
    pub redis: Option<RedisConfig>,
    /// How often the store's change feed is polled.
    pub change_poll: Duration,
}

#[derive(Debug, Clone)]
pub struct RedisConfig {
    pub target: RedisTarget,
    /// Longest wait for one Redis command before the lookup goes to the store.
    pub timeout: Duration,
    /// For `rediss://`: the PEM roots of `redis_ca_file`, trusted instead
    /// of the system's.
    pub ca_pem: Option<Vec<u8>>,
    /// What every key and the channel start with: deployments sharing a
    /// Redis (a Cluster has only database 0) must not read each other's
    /// token records.
    pub key_prefix: String,
}

/// The registry token service (`[registry_auth]` and `[signing]`).
#[derive(Debug, Clone)]
pub struct RegistryAuthConfig {
    /// The token endpoint, e.g. `/jwt/auth`.
    pub path: String,
    /// Where the JWKS document is served.
    pub jwks_path: String,
    pub service: String,
    pub issuer: String,
    pub token_ttl: Duration,
    /// Lifetime of session JWTs (Conan logins).
    pub session_ttl: Duration,
    /// Requests without credentials get a token granting nothing (else 401).
    pub anonymous: bool,
    /// Grant the `delete` action (for registries that verify the JWTs themselves).
    pub allow_delete: bool,
    pub key_file: PathBuf,
    pub verify_key_files: Vec<PathBuf>,
}

#[derive(Debug, Clone)]
pub struct AdminConfig {
    pub listen: SocketAddr,
    /// Named admin credentials, as digests (the secrets come from the environment).
    pub tokens: Vec<AdminToken>,
    pub tls: Option<crate::tls::ServerTls>,
    /// The URL clients reach the admin listener at, when a TLS-terminating
    /// ingress sits in front of it (no path: the web page is rooted at `/`):
    /// pagination links point there, and `https` makes session cookies `Secure`.
    pub public_url: Option<PublicUrl>,
}

/// The forward-auth decision listener: edge proxies (nginx `auth_request`,
/// Traefik ForwardAuth, Envoy `ext_authz`) ask it about each request.
#[derive(Debug, Clone)]
pub struct ForwardAuthConfig {
    pub listen: SocketAddr,
    /// The only addresses whose description of the original request is
    /// believed; anyone else could pick the rule that applies.
    pub trusted_peers: Vec<ipnet::IpNet>,
    /// nginx: the headers carrying the original method and URI.
    pub original_method_header: http::HeaderName,
    pub original_uri_header: http::HeaderName,
    /// Envoy: the original path follows this prefix (ext_authz `path_prefix`).
    pub envoy_path_prefix: String,
}

/// One admin credential: its name (in the audit log) and the SHA-256 of its secret.
#[derive(Clone, PartialEq, Eq)]
pub struct AdminToken {
    pub name: String,
    pub digest: crate::token::Digest,
}

impl std::fmt::Debug for AdminToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdminToken")
            .field("name", &self.name)
            .finish()
    }
}

/// What token commands need: where tokens live and which caches to tell.
pub struct TokenBackends {
    pub store: StoreConfig,
    pub cache: CacheConfig,
}

/// A validated configuration.
pub struct Config {
    /// The first 12 hex digits of the SHA-256 of the config text: which
    /// config is running (in `/readyz` and the metrics).
    pub version: String,
    pub server: ServerConfig,
    pub store: StoreConfig,
    pub cache: CacheConfig,
    /// The admin listener (`/healthz`, `/readyz`, `/metrics`); off when absent.
    pub admin: Option<AdminConfig>,
    /// The forward-auth decision listener; off when absent.
    pub forward_auth: Option<ForwardAuthConfig>,
    /// On when `[registry_auth]` or `[signing]` is given or an `oci` route exists.
    pub registry_auth: Option<RegistryAuthConfig>,
    pub routes: RouteTable,
}

/// The most connection workers a config may ask for: each is a thread with
/// its own runtime and upstream connections.
const MAX_WORKERS: usize = 256;

/// Two connection workers per core the process may use. A worker's
/// connections wait while its thread is off the CPU; with two per core each
/// holds half as many, so when the cores are shared (a registry, a CI job, the
/// load generator of `bench/load.sh`) a preempted worker stalls fewer requests
/// and the other one keeps serving. On the 2-core bench machines that was 17
/// to 38% more requests per second at 64 connections and a p99 at full load
/// about a third of one worker per core's; on a core of its own the proxy
/// spent about the same CPU per request either way (`BENCHMARKS.md`).
fn default_workers() -> usize {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    (2 * cores).min(MAX_WORKERS)
}
pub const DEFAULT_STORE_URL: &str = "sqlite://tokengate.db";
const DEFAULT_LISTEN: &str = "127.0.0.1:8080";

impl Config {
    /// Resolves the config path: `--config`, else `$TOKENGATE_CONFIG`, else
    /// `./proxy.toml`; `None` when none was named and `./proxy.toml` is absent.
    pub fn locate(explicit: Option<&Path>) -> Option<PathBuf> {
        if let Some(path) = explicit {
            return Some(path.to_path_buf());
        }
        if let Some(path) = std::env::var_os("TOKENGATE_CONFIG").filter(|p| !p.is_empty()) {
            return Some(PathBuf::from(path));
        }
        let default = PathBuf::from("proxy.toml");
        default.exists().then_some(default)
    }

    /// Loads the config at `path`, or the embedded defaults (no routes) when `None`.
    pub fn load(path: Option<&Path>) -> Result<Config, ConfigError> {
        match path {
            None => Config::parse("<defaults>", ""),
            Some(path) => Config::parse(&path.display().to_string(), &read(path)?),
        }
    }

    /// Parses and validates config text; `name` is used in error messages.
    pub fn parse(name: &str, text: &str) -> Result<Config, ConfigError> {
        let src = Source {
            name: name.to_string(),
            text,
        };
        let mut config = build(&src, parse_raw(&src)?)?;
        use sha2::Digest;
        let hash = sha2::Sha256::digest(text.as_bytes());
        config.version = hash[..6].iter().map(|b| format!("{b:02x}")).collect();
        Ok(config)
    }

    /// Settings that are valid but probably not what was meant, for `serve`
    /// to log and `check-config` to print.
    pub fn warnings(&self) -> Vec<String> {
        let mut warnings = Vec::new();
        if self.routes.is_empty() {
            warnings.push("no routes configured: every request will be answered 404".into());
        }
        if self.server.tls.is_some() && !self.server.public_url.https {
            warnings.push(
                "server.tls is set but server.public_url is http://: \
                 rewritten package URLs will send clients to plain HTTP"
                    .into(),
            );
        }
        if let Some(admin) = &self.admin {
            if admin.tls.is_some() && admin.public_url.as_ref().is_some_and(|u| !u.https) {
                warnings.push(
                    "admin.tls is set but admin.public_url is http://: \
                     pagination links will send clients to plain HTTP"
                        .into(),
                );
            }
        }
        warnings
    }

    /// Only the store and cache settings, for commands that manage tokens:
    /// the file must parse, but upstream secrets need not be in the environment.
    pub fn token_backends(path: Option<&Path>) -> Result<TokenBackends, ConfigError> {
        let text = match path {
            Some(path) => read(path)?,
            None => String::new(),
        };
        let src = Source {
            name: path.map_or("<defaults>".into(), |p| p.display().to_string()),
            text: &text,
        };
        let raw = parse_raw(&src)?;
        Ok(TokenBackends {
            store: build_store(&src, &raw.store)?,
            cache: build_cache(&src, &raw.cache)?,
        })
    }
}

fn read(path: &Path) -> Result<String, ConfigError> {
    std::fs::read_to_string(path).map_err(|e| ConfigError {
        file: path.display().to_string(),
        line: 0,
        key: "-".into(),
        message: format!("cannot read: {e}"),
    })
}

fn parse_raw(src: &Source<'_>) -> Result<RawConfig, ConfigError> {
    toml::from_str(src.text).map_err(|e| {
        let message = e.message().to_string();
        let span = e.span().unwrap_or(0..0);
        // The parser's message names a missing or unknown field but not the
        // key of a value of the wrong type; the text around the span does.
        let named = message.split('`').nth(1).filter(|_| {
            message.starts_with("missing field") || message.starts_with("unknown field")
        });
        let key = match (key_at(src.text, span.start), named) {
            (Some(table), Some(field)) if message.starts_with("missing field") => {
                format!("{table}.{field}")
            }
            (Some(key), _) => key,
            (None, named) => named.unwrap_or("-").to_string(),
        };
        src.error(span, key, message)
    })
}

/// The dotted key a byte offset of a TOML text falls under: the table header
/// above it and, inside the table, the `key =` of the line it is on (or of the
/// line a multi-line value started on). `None` before any key or header.
fn key_at(text: &str, offset: usize) -> Option<String> {
    let offset = offset.min(text.len());
    let line_end = text
        .get(offset..)
        .and_then(|rest| rest.find('\n'))
        .map_or(text.len(), |i| offset + i);
    let mut key = None;
    for line in text[..line_end].rsplit('\n').map(str::trim) {
        if let Some(header) = line.strip_prefix('[') {
            let name = header.trim_start_matches('[').split(']').next()?.trim();
            // An array of tables (`[[route]]`) is named by its index, as the
            // checks after parsing name it.
            let table = if header.starts_with('[') {
                let index = text[..line_end]
                    .lines()
                    .filter(|l| l.trim() == line)
                    .count();
                format!("{name}[{}]", index.saturating_sub(1))
            } else {
                name.to_string()
            };
            return Some(match key {
                Some(key) => format!("{table}.{key}"),
                None => table,
            });
        }
        if key.is_none() {
            key = line
                .split_once('=')
                .map(|(lhs, _)| lhs.trim())
                .filter(|lhs| !lhs.is_empty() && !lhs.contains(['"', '\'', '{', ' ']))
                .map(str::to_string);
        }
    }
    key
}

fn build_store(src: &Source<'_>, raw: &RawStore) -> Result<StoreConfig, ConfigError> {
    let defaults = StoreConfig::at(DEFAULT_STORE_URL);
    let url = match &raw.url {
        None => defaults.url,
        Some(url) => {
            let ok = ["sqlite://", "sqlite:", "postgres://", "postgresql://"]
                .iter()
                .any(|p| url.get_ref().starts_with(p));
            if !ok {
                return Err(src.at(url, "store.url", "expected a sqlite:// or postgres:// URL"));
            }
            url.get_ref().clone()
        }
    };
    Ok(StoreConfig {
        url,
        timeout: duration(
            src,
            &raw.timeout_seconds,
            "store.timeout_seconds",
            1,
            defaults.timeout,
        )?,
        last_used_flush: duration(
            src,
            &raw.last_used_flush_seconds,
            "store.last_used_flush_seconds",
            1,
            defaults.last_used_flush,
        )?,
    })
}

fn build_cache(src: &Source<'_>, raw: &RawCache) -> Result<CacheConfig, ConfigError> {
    let target = raw
        .redis_url
        .as_ref()
        .map(|url| RedisTarget::parse(url.get_ref()).map_err(|m| src.at(url, "cache.redis_url", m)))
        .transpose()?;
    let ca_pem = match &raw.redis_ca_file {
        None => None,
        Some(ca) if !target.as_ref().is_some_and(RedisTarget::tls) => {
            let why = "only a TLS Redis (redis_url = \"rediss://...\") takes a CA file";
            return Err(src.at(ca, "cache.redis_ca_file", why));
        }
        Some(ca) => Some(
            crate::tls::ca_pem(Path::new(ca.get_ref()))
                .map_err(|m| src.at(ca, "cache.redis_ca_file", m))?,
        ),
    };
    let timeout = millis(
        src,
        &raw.redis_timeout_millis,
        "cache.redis_timeout_millis",
        1,
        250,
    )?;
    let key_prefix = match &raw.redis_key_prefix {
        None => crate::cache::DEFAULT_KEY_PREFIX.to_string(),
        Some(prefix) if target.is_none() => {
            let why = "a key prefix needs a Redis (redis_url)";
            return Err(src.at(prefix, "cache.redis_key_prefix", why));
        }
        Some(prefix) => {
            let text = prefix.get_ref();
            let ok = (1..=64).contains(&text.len())
                && text
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
            if !ok {
                let why = "1 to 64 letters, digits, '-', '_' or '.'";
                return Err(src.at(prefix, "cache.redis_key_prefix", why));
            }
            text.clone()
        }
    };
    let redis = target.map(|target| RedisConfig {
        target,
        timeout,
        ca_pem,
        key_prefix,
    });
    Ok(CacheConfig {
        ttl: duration(
            src,
            &raw.ttl_seconds,
            "cache.ttl_seconds",
            0,
            Duration::from_secs(60),
        )?,
        negative_ttl: duration(
            src,
            &raw.negative_ttl_seconds,
            "cache.negative_ttl_seconds",
            0,
            Duration::from_secs(5),
        )?,
        max_entries: raw.max_entries.unwrap_or(100_000),
        redis,
        change_poll: millis(
            src,
            &raw.change_poll_millis,
            "cache.change_poll_millis",
            10,
            500,
        )?,
    })
}

fn build(src: &Source<'_>, raw: RawConfig) -> Result<Config, ConfigError> {
    let server = build_server(src, &raw.server)?;
    let store = build_store(src, &raw.store)?;
    let cache = build_cache(src, &raw.cache)?;
    let admin = raw
        .admin
        .as_ref()
        .map(|admin| build_admin(src, admin))
        .transpose()?;
    let forward_auth = raw
        .forward_auth
        .as_ref()
        .map(|raw| build_forward_auth(src, raw))
        .transpose()?;
    // Each listener needs an address of its own: `serve` could not bind two.
    let mut bound = vec![("server.listen", server.listen)];
    let others = [
        admin
            .as_ref()
            .zip(raw.admin.as_ref())
            .map(|(a, r)| ("admin.listen", a.listen, &r.listen)),
        forward_auth
            .as_ref()
            .zip(raw.forward_auth.as_ref())
            .map(|(f, r)| ("forward_auth.listen", f.listen, &r.listen)),
    ];
    for (key, address, at) in others.into_iter().flatten() {
        if let Some((taken_by, _)) = bound.iter().find(|(_, b)| overlaps(*b, address)) {
            return Err(src.at(at, key, format!("{address} is {taken_by}'s address too")));
        }
        bound.push((key, address));
    }
    let mut upstreams = BTreeMap::new();
    for (name, up) in &raw.upstream {
        upstreams.insert(name.clone(), Arc::new(build_upstream(src, name, up)?));
    }
    let mut routes = Vec::with_capacity(raw.route.len());
    let mut names = HashSet::new();
    let mut paths = HashSet::new();
    for (i, route) in raw.route.iter().enumerate() {
        let r = route.get_ref();
        let key = |field: &str| format!("route[{i}].{field}");
        if r.name.get_ref().is_empty() || !names.insert(r.name.get_ref().clone()) {
            return Err(src.at(
                &r.name,
                key("name"),
                "route names must be non-empty and unique",
            ));
        }
        let format = format::by_name(r.format.get_ref()).ok_or_else(|| {
            let msg = format!(
                "unknown format {:?}; expected one of {}",
                r.format.get_ref(),
                format::NAMES.join(", ")
            );
            src.at(&r.format, key("format"), msg)
        })?;
        let path =
            route::parse_path(r.path.get_ref()).map_err(|m| src.at(&r.path, key("path"), m))?;
        if !paths.insert(path.clone()) {
            return Err(src.at(&r.path, key("path"), "another route has the same path"));
        }
        let has_placeholder = path.contains(&PathPart::Namespace);
        let repository_named = format.names_namespace();
        if let Some(allow) = &r.allow_delete {
            if format.authentication() != Authentication::RegistryJwt {
                return Err(src.at(
                    allow,
                    key("allow_delete"),
                    "only `oci` routes take allow_delete",
                ));
            }
        }
        let namespace = match (&r.namespace, has_placeholder) {
            (None, false) if repository_named => NamespaceSource::InPath,
            (Some(ns), _) if repository_named => {
                return Err(src.at(
                    ns,
                    key("namespace"),
                    format!(
                        "a {} route takes no namespace: each request names its own",
                        format.name()
                    ),
                ))
            }
            (None, true) if repository_named => {
                return Err(src.at(
                    &r.path,
                    key("path"),
                    format!(
                        "a {} route takes no {{namespace}} placeholder",
                        format.name()
                    ),
                ))
            }
            (Some(ns), false) => {
                validate_namespace(ns.get_ref())
                    .map_err(|e| src.at(ns, key("namespace"), e.to_string()))?;
                NamespaceSource::Fixed(ns.get_ref().clone())
            }
            (None, true)
                if r.strip_prefix && format.authentication() == Authentication::SessionJwt =>
            {
                // Stripped, a placeholder's namespace stays in the forwarded
                // path; a Conan server serves one repository at its root.
                return Err(src.at(
                    &r.path,
                    key("path"),
                    "a conan route with strip_prefix names its namespace (`namespace = ...`, \
                     one route per project): a {namespace} placeholder would be forwarded \
                     as a path the Conan server does not have",
                ));
            }
            (None, true) => NamespaceSource::Placeholder,
            (Some(ns), true) => {
                return Err(src.at(
                    ns,
                    key("namespace"),
                    "give either `namespace` or a {namespace} placeholder in `path`, not both",
                ))
            }
            (None, false) => {
                return Err(src.at(
                    route,
                    key("namespace"),
                    "missing: give `namespace` or a {namespace} placeholder in `path`",
                ))
            }
        };
        let upstream = upstreams
            .get(r.upstream.get_ref())
            .cloned()
            .ok_or_else(|| {
                src.at(
                    &r.upstream,
                    key("upstream"),
                    format!("unknown upstream {:?}", r.upstream.get_ref()),
                )
            })?;
        let mut access_rules: Vec<AccessRule> = r
            .access
            .iter()
            .enumerate()
            .map(|(j, rule)| {
                parse_access_rule(rule.get_ref())
                    .map_err(|m| src.at(rule, key(&format!("access[{j}]")), m))
            })
            .collect::<Result<_, _>>()?;
        if r.allow_delete.as_ref().is_some_and(|a| *a.get_ref()) {
            // Deleting images needs write_registry (after the operator's own rules).
            access_rules.push(AccessRule {
                method: Some(Method::DELETE),
                pattern: vec![PatternPart::AnyRest],
                access: Access::Write,
                multipart: false,
            });
        }
        routes.push(Route {
            name: r.name.get_ref().as_str().into(),
            format,
            path,
            namespace,
            upstream,
            strip_prefix: r.strip_prefix,
            access_rules,
        });
    }
    let needs_signing = routes
        .iter()
        .any(|r| r.format.authentication() != Authentication::DeployToken);
    let registry_auth = if raw.registry_auth.is_some() || raw.signing.is_some() || needs_signing {
        Some(build_registry_auth(
            src,
            raw.registry_auth
                .as_ref()
                .unwrap_or(&RawRegistryAuth::default()),
            raw.signing.as_ref().unwrap_or(&RawSigning::default()),
        )?)
    } else {
        None
    };
    Ok(Config {
        version: String::new(),
        server,
        store,
        cache,
        admin,
        forward_auth,
        registry_auth,
        routes: RouteTable::new(routes),
    })
}

fn build_registry_auth(
    src: &Source<'_>,
    raw: &RawRegistryAuth,
    signing: &RawSigning,
) -> Result<RegistryAuthConfig, ConfigError> {
    let endpoint = |value: &Option<Spanned<String>>, key: &str, default: &str| {
        let Some(value) = value else {
            return Ok(default.to_string());
        };
        let path = value.get_ref();
        let ok = path.starts_with('/')
            && path.len() > 1
            && NormalizedPath::parse(path).is_ok_and(|p| !p.trailing_slash);
        if !ok {
            return Err(src.at(value, key, format!("{path:?} is not a path like /jwt/auth")));
        }
        Ok(path.clone())
    };
    let ttl = |value: &Option<Spanned<u64>>, key: &str, default: u64| {
        let seconds = value.as_ref().map_or(default, |t| *t.get_ref());
        if seconds < 60 {
            let span = value.as_ref().map_or(0..0, |t| t.span());
            return Err(src.error(span, key, "must be at least 60 (clients treat less as 60)"));
        }
        duration(src, value, key, 60, Duration::from_secs(default))
    };
    Ok(RegistryAuthConfig {
        path: endpoint(&raw.path, "registry_auth.path", "/jwt/auth")?,
        jwks_path: endpoint(&raw.jwks_path, "registry_auth.jwks_path", "/jwt/jwks.json")?,
        service: raw
            .service
            .clone()
            .unwrap_or_else(|| "container_registry".into()),
        issuer: raw.issuer.clone().unwrap_or_else(|| "tokengate".into()),
        token_ttl: ttl(
            &raw.token_ttl_seconds,
            "registry_auth.token_ttl_seconds",
            300,
        )?,
        session_ttl: ttl(
            &raw.session_ttl_seconds,
            "registry_auth.session_ttl_seconds",
            3600,
        )?,
        anonymous: raw.anonymous,
        allow_delete: raw.allow_delete,
        key_file: match &signing.key_file {
            // Absent, it is generated at start; present, it must be a key.
            Some(file) => key_file(src, file, "signing.key_file", false)?,
            None => PathBuf::from("tokengate-signing.pem"),
        },
        verify_key_files: signing
            .verify_key_files
            .iter()
            .map(|file| key_file(src, file, "signing.verify_key_files", true))
            .collect::<Result<_, _>>()?,
    })
}

/// A key file named by the config, read and parsed now so that a config
/// `check-config` passes is one `serve` starts with. A signing key that does
/// not exist yet is allowed (`serve` generates it); a verify-only key is not.
fn key_file(
    src: &Source<'_>,
    file: &Spanned<String>,
    key: &str,
    must_exist: bool,
) -> Result<PathBuf, ConfigError> {
    let path = PathBuf::from(file.get_ref());
    if must_exist || path.exists() {
        crate::oci::keys::check_key_file(&path).map_err(|e| src.at(file, key, e.to_string()))?;
    }
    Ok(path)
}

fn build_forward_auth(
    src: &Source<'_>,
    raw: &RawForwardAuth,
) -> Result<ForwardAuthConfig, ConfigError> {
    let listen = raw.listen.get_ref().parse().map_err(|_| {
        src.at(
            &raw.listen,
            "forward_auth.listen",
            "not an address like 127.0.0.1:9091",
        )
    })?;
    let trusted_peers = networks(src, &raw.trusted_peers, "forward_auth.trusted_peers")?;
    if trusted_peers.is_empty() {
        return Err(src.at(
            &raw.trusted_peers,
            "forward_auth.trusted_peers",
            "name the edge proxies' addresses: no one else may ask for decisions",
        ));
    }
    let header = |value: &Option<Spanned<String>>, key: &str, default: &'static str| {
        let Some(value) = value else {
            return Ok(http::HeaderName::from_static(default));
        };
        http::HeaderName::from_bytes(value.get_ref().as_bytes())
            .map_err(|_| src.at(value, key, "not a header name"))
    };
    let envoy_path_prefix = match &raw.envoy_path_prefix {
        None => "/envoy".to_string(),
        Some(prefix) => {
            let p = prefix.get_ref();
            if !p.starts_with('/') || p.len() < 2 || p.ends_with('/') {
                return Err(src.at(
                    prefix,
                    "forward_auth.envoy_path_prefix",
                    format!("{p:?} is not a path like /envoy"),
                ));
            }
            p.clone()
        }
    };
    Ok(ForwardAuthConfig {
        listen,
        trusted_peers,
        original_method_header: header(
            &raw.original_method_header,
            "forward_auth.original_method_header",
            "x-original-method",
        )?,
        original_uri_header: header(
            &raw.original_uri_header,
            "forward_auth.original_uri_header",
            "x-original-uri",
        )?,
        envoy_path_prefix,
    })
}

fn build_admin(src: &Source<'_>, raw: &RawAdmin) -> Result<AdminConfig, ConfigError> {
    let listen = raw.listen.get_ref().parse().map_err(|_| {
        src.at(
            &raw.listen,
            "admin.listen",
            "not an address like 127.0.0.1:9090",
        )
    })?;
    let secret = |var: &str, at: &dyn Fn(String) -> ConfigError| {
        let value =
            std::env::var(var).map_err(|_| at(format!("environment variable {var} is not set")))?;
        // As presented tokens are: a secret file's trailing newline is no part of it.
        let value = value.trim();
        if value.len() < 16 {
            return Err(at(format!(
                "the admin token in {var} is shorter than 16 characters"
            )));
        }
        Ok(crate::token::Digest::of(value))
    };
    let mut tokens = Vec::new();
    if let Some(var) = &raw.token_env {
        let digest = secret(var.get_ref(), &|m| src.at(var, "admin.token_env", m))?;
        tokens.push(AdminToken {
            name: "admin".into(),
            digest,
        });
    }
    for (i, entry) in raw.tokens.iter().enumerate() {
        let key = format!("admin.tokens[{i}]");
        let t = entry.get_ref();
        if t.name.is_empty() || tokens.iter().any(|known| known.name == t.name) {
            return Err(src.at(entry, &key, "each admin token needs a name of its own"));
        }
        let digest = secret(&t.token_env, &|m| src.at(entry, &key, m))?;
        tokens.push(AdminToken {
            name: t.name.clone(),
            digest,
        });
    }
    let tls = match &raw.tls {
        None => None,
        Some(tls) => {
            let t = tls.get_ref();
            Some(
                crate::tls::server(Path::new(&t.cert), Path::new(&t.key))
                    .map_err(|m| src.at(tls, "admin.tls", m))?,
            )
        }
    };
    let public_url = match &raw.public_url {
        None => None,
        Some(url) => {
            let at = |m| src.at(url, "admin.public_url", m);
            let parsed = parse_public_url(url.get_ref()).map_err(at)?;
            // The web page's links, redirects and cookie are rooted at `/`.
            if !parsed.base_path.is_empty() {
                return Err(at(format!(
                    "{:?} has a path: serve the admin listener at the root of its host",
                    url.get_ref()
                )));
            }
            Some(parsed)
        }
    };
    Ok(AdminConfig {
        listen,
        tokens,
        tls,
        public_url,
    })
}

/// Whether two listen addresses would take the same port: equal, or one on
/// every address of the other's family (`[::]` takes IPv4 too, dual-stack);
/// port 0 picks a free one each time.
fn overlaps(a: SocketAddr, b: SocketAddr) -> bool {
    let covers = |any: SocketAddr, other: SocketAddr| {
        any.ip().is_unspecified() && (any.is_ipv6() || other.is_ipv4())
    };
    a.port() == b.port() && a.port() != 0 && (a.ip() == b.ip() || covers(a, b) || covers(b, a))
}

/// The longest duration a setting may name: 30 days. Longer ones are
/// mistakes, and near `u64::MAX` seconds they would overflow the clock
/// arithmetic of every request.
const MAX_SECONDS: u64 = 30 * 24 * 3600;

/// A duration setting in seconds, at least `min` and at most [`MAX_SECONDS`].
fn duration(
    src: &Source<'_>,
    value: &Option<Spanned<u64>>,
    key: &str,
    min: u64,
    default: Duration,
) -> Result<Duration, ConfigError> {
    bounded(src, value, key, min, default, 1)
}

/// A duration setting in milliseconds, at least `min` and at most [`MAX_SECONDS`].
fn millis(
    src: &Source<'_>,
    value: &Option<Spanned<u64>>,
    key: &str,
    min: u64,
    default: u64,
) -> Result<Duration, ConfigError> {
    bounded(src, value, key, min, Duration::from_millis(default), 1000)
}

/// A duration setting counted in units of which `per_second` make a second.
fn bounded(
    src: &Source<'_>,
    value: &Option<Spanned<u64>>,
    key: &str,
    min: u64,
    default: Duration,
    per_second: u64,
) -> Result<Duration, ConfigError> {
    let max = MAX_SECONDS * per_second;
    match value {
        None => Ok(default),
        Some(v) if (min..=max).contains(v.get_ref()) => {
            Ok(Duration::from_millis(*v.get_ref() * 1000 / per_second))
        }
        Some(v) => Err(src.at(v, key, format!("between {min} and {max} (30 days)"))),
    }
}

/// An IPv4 network written in IPv4-mapped IPv6 form (`::ffff:10.0.0.0/104`),
/// as IPv4: peers are matched in their canonical form.
fn canonical_network(net: ipnet::IpNet) -> ipnet::IpNet {
    match net {
        ipnet::IpNet::V6(v6) if v6.prefix_len() >= 96 => match v6.addr().to_ipv4_mapped() {
            Some(v4) => ipnet::Ipv4Net::new(v4, v6.prefix_len() - 96).map_or(net, ipnet::IpNet::V4),
            None => net,
        },
        _ => net,
    }
}

/// A list of addresses and networks (`10.0.0.7`, `10.0.0.0/8`, `fd00::/8`).
fn networks(
    src: &Source<'_>,
    list: &Spanned<Vec<String>>,
    key: &str,
) -> Result<Vec<ipnet::IpNet>, ConfigError> {
    list.get_ref()
        .iter()
        .map(|entry| {
            entry
                .parse::<ipnet::IpNet>()
                .or_else(|_| entry.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
                .map(canonical_network)
                .map_err(|_| {
                    let why = format!("{entry:?} is not an address or a network like 10.0.0.0/8");
                    src.at(list, key, why)
                })
        })
        .collect()
}

fn build_server(src: &Source<'_>, raw: &RawServer) -> Result<ServerConfig, ConfigError> {
    let listen_text = raw
        .listen
        .as_ref()
        .map_or(DEFAULT_LISTEN, |l| l.get_ref().as_str());
    let listen: SocketAddr = listen_text.parse().map_err(|_| {
        let span = raw.listen.as_ref().map_or(0..0, |l| l.span());
        src.error(
            span,
            "server.listen",
            format!("{listen_text:?} is not an address like 127.0.0.1:8080"),
        )
    })?;
    let tls = match &raw.tls {
        None => None,
        Some(tls) => {
            let t = tls.get_ref();
            Some(
                crate::tls::server(Path::new(&t.cert), Path::new(&t.key))
                    .map_err(|m| src.at(tls, "server.tls", m))?,
            )
        }
    };
    let public_url = match &raw.public_url {
        None => PublicUrl {
            origin: format!(
                "{}://{listen}",
                if tls.is_some() { "https" } else { "http" }
            ),
            base_path: String::new(),
            https: tls.is_some(),
        },
        Some(url) => {
            parse_public_url(url.get_ref()).map_err(|m| src.at(url, "server.public_url", m))?
        }
    };
    let secs = |value: &Option<Spanned<u64>>, key: &str, min: u64, default: u64| {
        duration(
            src,
            value,
            &format!("server.{key}"),
            min,
            Duration::from_secs(default),
        )
    };
    let metadata_max_bytes = raw.metadata_max_bytes.unwrap_or(32 << 20);
    let metadata_budget_bytes = match &raw.metadata_budget_bytes {
        None => (256 << 20).max(HELD_PER_BYTE * metadata_max_bytes),
        Some(b) if *b.get_ref() >= HELD_PER_BYTE * metadata_max_bytes => *b.get_ref(),
        Some(b) => {
            let why = format!(
                "at least {HELD_PER_BYTE} times metadata_max_bytes ({metadata_max_bytes}): a document and the copies rewriting makes"
            );
            return Err(src.at(b, "server.metadata_budget_bytes", why));
        }
    };
    Ok(ServerConfig {
        listen,
        tls,
        public_url,
        header_read_timeout: secs(
            &raw.header_read_timeout_seconds,
            "header_read_timeout_seconds",
            1,
            10,
        )?,
        upstream_connect_timeout: secs(
            &raw.upstream_connect_timeout_seconds,
            "upstream_connect_timeout_seconds",
            1,
            5,
        )?,
        upstream_response_timeout: secs(
            &raw.upstream_response_timeout_seconds,
            "upstream_response_timeout_seconds",
            1,
            300,
        )?,
        body_idle_timeout: secs(
            &raw.body_idle_timeout_seconds,
            "body_idle_timeout_seconds",
            1,
            60,
        )?,
        shutdown_grace: secs(&raw.shutdown_grace_seconds, "shutdown_grace_seconds", 0, 30)?,
        shutdown_delay: secs(&raw.shutdown_delay_seconds, "shutdown_delay_seconds", 0, 0)?,
        metadata_max_bytes,
        metadata_budget_bytes,
        failed_auth_per_minute: raw.failed_auth_per_minute.unwrap_or(60),
        trusted_proxies: match &raw.trusted_proxies {
            None => Vec::new(),
            Some(list) => networks(src, list, "server.trusted_proxies")?,
        },
        workers: match raw.workers.as_ref().map(|w| (w, *w.get_ref())) {
            Some((_, 0)) => None,
            Some((_, n)) if n <= MAX_WORKERS => Some(n),
            Some((w, _)) => {
                let why =
                    format!("at most {MAX_WORKERS} (default: two per core; 0: the shared runtime)");
                return Err(src.at(w, "server.workers", why));
            }
            None => Some(default_workers()),
        },
        log_level: match &raw.log_level {
            None => "info".to_string(),
            Some(level) => {
                tracing_subscriber::EnvFilter::try_new(level.get_ref()).map_err(|e| {
                    src.at(level, "server.log_level", format!("not a log filter: {e}"))
                })?;
                level.get_ref().clone()
            }
        },
    })
}

fn parse_public_url(text: &str) -> Result<PublicUrl, String> {
    let uri: http::Uri = text.parse().map_err(|_| format!("{text:?} is not a URL"))?;
    let https = match uri.scheme_str() {
        Some("http") => false,
        Some("https") => true,
        _ => return Err(format!("{text:?} must start with http:// or https://")),
    };
    let authority = uri
        .authority()
        .ok_or_else(|| format!("{text:?} has no host"))?;
    if authority.as_str().contains('@') || uri.query().is_some() {
        return Err(format!("{text:?} must not contain credentials or a query"));
    }
    Ok(PublicUrl {
        origin: format!("{}://{}", uri.scheme_str().unwrap_or("http"), authority),
        base_path: uri.path().trim_end_matches('/').to_string(),
        https,
    })
}

fn build_upstream(
    src: &Source<'_>,
    name: &str,
    raw: &Spanned<RawUpstream>,
) -> Result<Upstream, ConfigError> {
    let up = raw.get_ref();
    let key = |field: &str| format!("upstream.{name}.{field}");
    let text = up.url.get_ref();
    let uri: http::Uri = text
        .parse()
        .map_err(|_| src.at(&up.url, key("url"), format!("{text:?} is not a URL")))?;
    let https = match uri.scheme_str() {
        Some("http") => false,
        Some("https") => true,
        _ => {
            return Err(src.at(
                &up.url,
                key("url"),
                format!("{text:?}: expected an http:// or https:// URL"),
            ))
        }
    };
    let tls = if https {
        let client = up.client_cert.as_ref().map(|c| {
            let c = c.get_ref();
            (Path::new(&c.cert), Path::new(&c.key))
        });
        let ca = up.ca_file.as_ref().map(|c| Path::new(c.get_ref()));
        Some(crate::tls::client(ca, client).map_err(|m| {
            let span = up
                .ca_file
                .as_ref()
                .map(|c| c.span())
                .or(up.client_cert.as_ref().map(|c| c.span()))
                .unwrap_or(up.url.span());
            src.error(span, key("tls"), m)
        })?)
    } else {
        if let Some(ca) = &up.ca_file {
            return Err(src.at(ca, key("ca_file"), "only https:// upstreams take ca_file"));
        }
        if let Some(cert) = &up.client_cert {
            return Err(src.at(
                cert,
                key("client_cert"),
                "only https:// upstreams take client_cert",
            ));
        }
        None
    };
    let authority = uri
        .authority()
        .filter(|a| !a.as_str().contains('@'))
        .ok_or_else(|| {
            src.at(
                &up.url,
                key("url"),
                format!("{text:?} needs a host and no credentials"),
            )
        })?
        .clone();
    if uri.query().is_some() {
        return Err(src.at(&up.url, key("url"), "an upstream URL must not have a query"));
    }
    let env = |var: &str, span: &dyn Fn() -> ConfigError| std::env::var(var).map_err(|_| span());
    let authorization = match (&up.basic, &up.token_env) {
        (Some(_), Some(t)) => {
            return Err(src.at(
                t,
                key("token_env"),
                "give either `basic` or `token_env`, not both",
            ))
        }
        (Some(basic), None) => {
            let b = basic.get_ref();
            let password = env(&b.password_env, &|| {
                src.at(
                    basic,
                    key("basic.password_env"),
                    format!("environment variable {} is not set", b.password_env),
                )
            })?;
            let pair = base64::engine::general_purpose::STANDARD
                .encode(format!("{}:{password}", b.username));
            Some(format!("Basic {pair}"))
        }
        (None, Some(var)) => {
            let token = env(var.get_ref(), &|| {
                src.at(
                    var,
                    key("token_env"),
                    format!("environment variable {} is not set", var.get_ref()),
                )
            })?;
            Some(format!("Bearer {token}"))
        }
        (None, None) => None,
    };
    let authorization = authorization
        .map(|v| {
            let mut value = HeaderValue::from_str(&v).map_err(|_| {
                src.at(
                    raw,
                    name,
                    "upstream credentials contain characters not allowed in a header",
                )
            })?;
            value.set_sensitive(true);
            Ok(value)
        })
        .transpose()?;
    Ok(Upstream {
        name: name.into(),
        scheme: if https {
            http::uri::Scheme::HTTPS
        } else {
            http::uri::Scheme::HTTP
        },
        host: HeaderValue::from_str(authority.as_str()).expect("an authority is a header value"),
        authority,
        base_path: uri.path().trim_end_matches('/').to_string(),
        authorization,
        tls,
    })
}

fn parse_access_rule(raw: &RawAccessRule) -> Result<AccessRule, String> {
    let method = match raw.method.as_deref() {
        None | Some("*") => None,
        // Methods are case-sensitive: `delete` would be an extension method
        // no client sends, and the rule would silently never match.
        Some(m) if m.bytes().any(|b| b.is_ascii_lowercase()) => {
            return Err(format!(
                "method {m:?}: methods are upper case ({:?})",
                m.to_ascii_uppercase()
            ))
        }
        Some(m) => {
            Some(Method::from_bytes(m.as_bytes()).map_err(|_| format!("invalid method {m:?}"))?)
        }
    };
    let access = Access::parse(&raw.access).ok_or_else(|| {
        format!(
            "access {:?}: expected read, write, read_or_write or deny",
            raw.access
        )
    })?;
    if raw.multipart && access != Access::Write {
        return Err(format!(
            "multipart = true needs access = \"write\" (not {:?}): only an upload may carry a form",
            raw.access
        ));
    }
    Ok(AccessRule {
        method,
        pattern: route::parse_pattern(&raw.path)?,
        access,
        multipart: raw.multipart,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
[server]
listen = "127.0.0.1:8080"
public_url = "http://proxy.test:8080"

[upstream.verdaccio]
url = "http://127.0.0.1:4873"

[upstream.files]
url = "http://127.0.0.1:9000/store/"

[[route]]
name = "web-npm"
format = "npm"
path = "/npm/acme/web"
namespace = "acme/web"
upstream = "verdaccio"
strip_prefix = true

[[route]]
name = "generic"
format = "generic"
path = "/api/v4/projects/{namespace}/packages/generic"
upstream = "files"
strip_prefix = true

[[route.access]]
method = "POST"
path = "/search/**"
access = "read"
"#;

    fn err(text: &str) -> ConfigError {
        match Config::parse("proxy.toml", text) {
            Ok(_) => panic!("config was accepted:\n{text}"),
            Err(e) => e,
        }
    }

    #[test]
    fn a_good_config_loads() {
        let c = Config::parse("proxy.toml", GOOD).unwrap();
        assert_eq!(c.routes.routes().len(), 2);
        assert_eq!(c.server.public_url.origin, "http://proxy.test:8080");
        assert_eq!(c.store.url, DEFAULT_STORE_URL);
        let files = &c
            .routes
            .routes()
            .iter()
            .find(|r| &*r.name == "generic")
            .unwrap()
            .upstream;
        assert_eq!(files.base_path, "/store");
    }

    #[test]
    fn trusted_proxies_take_addresses_and_networks() {
        let text = "[server]\ntrusted_proxies = [\"10.0.0.7\", \"192.168.0.0/16\", \"fd00::/8\"]\n";
        let c = Config::parse("proxy.toml", text).unwrap();
        let shown: Vec<String> = c
            .server
            .trusted_proxies
            .iter()
            .map(|n| n.to_string())
            .collect();
        assert_eq!(shown, ["10.0.0.7/32", "192.168.0.0/16", "fd00::/8"]);
    }

    #[test]
    fn defaults_need_no_file() {
        let c = Config::load(None).unwrap();
        assert!(c.routes.is_empty());
        assert!(c.server.trusted_proxies.is_empty());
        assert_eq!(c.server.listen.to_string(), DEFAULT_LISTEN);
        let cores = std::thread::available_parallelism().unwrap().get();
        assert_eq!(c.server.workers, Some(2 * cores));
    }

    #[test]
    fn listeners_collide_only_on_one_address() {
        let at = |a: &str, b: &str| overlaps(a.parse().unwrap(), b.parse().unwrap());
        assert!(at("127.0.0.1:80", "127.0.0.1:80"));
        assert!(at("0.0.0.0:80", "127.0.0.1:80"));
        assert!(at("[::]:80", "127.0.0.1:80"), "dual-stack");
        assert!(!at("0.0.0.0:80", "[::1]:80"), "other family");
        assert!(!at("127.0.0.1:80", "127.0.0.2:80"));
        assert!(!at("127.0.0.1:0", "127.0.0.1:0"), "each gets a free port");
    }

    #[test]
    fn ipv4_mapped_networks_are_ipv4() {
        let c = Config::parse(
            "t.toml",
            "[server]\ntrusted_proxies = [\"::ffff:10.0.0.0/104\", \"::ffff:10.0.0.9\", \"fd00::/8\"]\n",
        )
        .unwrap();
        let nets: Vec<String> = c
            .server
            .trusted_proxies
            .iter()
            .map(|n| n.to_string())
            .collect();
        assert_eq!(nets, ["10.0.0.0/8", "10.0.0.9/32", "fd00::/8"]);
    }

    #[test]
    fn errors_name_file_line_and_key() {
        let cases: &[(&str, &str, usize, &str)] = &[
            ("[server]\nlisten = \"127.0.0.1:8080\"\nlisten_port = 3\n", "server.listen_port", 3, "unknown field"),
            ("[serverr]\nlisten = \"127.0.0.1:8080\"\n", "serverr", 1, "unknown field"),
            ("[cache]\nttl_seconds = \"60\"\n", "cache.ttl_seconds", 2, "invalid type"),
            ("[server]\nlog_level = \"info\"\nworkers = -1\n", "server.workers", 3, "invalid value"),
            ("[[route]]\nname = \"a\"\nformat = \"npm\"\npath = \"/a\"\nnamespace = \"acme\"\nupstream = \"u\"\nstrip_prefix = 1\n", "route[0].strip_prefix", 7, "invalid type"),
            ("[[route]]\nname = \"a\"\nformat = \"npm\"\n", "route[0].path", 1, "missing field"),
            ("[server]\ntrusted_proxies = [\n  \"10.0.0.1\",\n  7,\n]\n", "server.trusted_proxies", 4, "invalid type"),
            ("[server]\nlisten = \"nowhere\"\n", "server.listen", 2, "not an address"),
            ("[admin]\nlisten = \"127.0.0.1:8080\"\n", "admin.listen", 2, "server.listen's address too"),
            ("[server]\nlisten = \"0.0.0.0:9000\"\n[forward_auth]\nlisten = \"127.0.0.1:9000\"\ntrusted_peers = [\"127.0.0.1\"]\n", "forward_auth.listen", 4, "server.listen's address too"),
            ("[server]\nupstream_response_timeout_seconds = 0\n", "server.upstream_response_timeout_seconds", 2, "between 1 and"),
            ("[server]\nlisten = \"127.0.0.1:8080\"\nheader_read_timeout_seconds = 9223372036854775807\n", "server.header_read_timeout_seconds", 3, "between 1 and"),
            ("[store]\ntimeout_seconds = 0\n", "store.timeout_seconds", 2, "between 1 and"),
            ("[cache]\nredis_timeout_millis = 9223372036854775807\n", "cache.redis_timeout_millis", 2, "between 1 and"),
            ("[server]\nmetadata_max_bytes = 1000\nmetadata_budget_bytes = 2999\n", "server.metadata_budget_bytes", 3, "at least 3 times metadata_max_bytes"),
            ("[store]\nurl = \"mysql://x\"\n", "store.url", 2, "sqlite"),
            ("[upstream.a]\nurl = \"ftp://x\"\n", "upstream.a.url", 2, "http://"),
            ("[upstream.a]\nurl = \"http://x\"\nbasic = { username = \"u\", password_env = \"TG_TEST_UNSET_VAR\" }\n", "upstream.a.basic.password_env", 3, "TG_TEST_UNSET_VAR"),
            ("[registry_auth]\nservice = \"s\"\ntoken_ttl_seconds = 59\n", "registry_auth.token_ttl_seconds", 3, "at least 60"),
            ("[server]\nworkers = 100000\n", "server.workers", 2, "at most 256"),
            ("[server]\ntrusted_proxies = [\"10.0.0.0/8\", \"lb.internal\"]\n", "server.trusted_proxies", 2, "\"lb.internal\" is not an address"),
            ("[cache]\nredis_url = \"redis://127.0.0.1:6379\"\nredis_ca_file = \"ca.pem\"\n", "cache.redis_ca_file", 3, "only a TLS Redis"),
            ("[cache]\nredis_key_prefix = \"prod\"\n", "cache.redis_key_prefix", 2, "needs a Redis"),
            ("[cache]\nredis_url = \"redis://127.0.0.1:6379\"\nredis_key_prefix = \"a{b}\"\n", "cache.redis_key_prefix", 3, "letters, digits"),
            ("[cache]\nredis_url = \"redis://127.0.0.1:6379\"\nredis_key_prefix = \"\"\n", "cache.redis_key_prefix", 3, "letters, digits"),
            ("[cache]\nredis_ca_file = \"ca.pem\"\n", "cache.redis_ca_file", 2, "only a TLS Redis"),
            ("[cache]\nredis_url = \"rediss://127.0.0.1:6380\"\nredis_ca_file = \"/nonexistent/ca.pem\"\n", "cache.redis_ca_file", 3, "cannot read /nonexistent/ca.pem"),
            ("[cache]\nredis_url = \"rediss+sentinel://s:1\"\n", "cache.redis_url", 2, "name the master"),
            ("[signing]\nkey_file = \"Cargo.toml\"\n", "signing.key_file", 2, "not a PKCS#8"),
            ("[upstream.c]\nurl = \"http://c\"\n[[route]]\nname = \"c\"\nformat = \"conan\"\npath = \"/c/{namespace}\"\nupstream = \"c\"\nstrip_prefix = true\n", "route[0].path", 6, "names its namespace"),
            ("[signing]\nverify_key_files = [\n  \"/nonexistent/old.pem\",\n]\n", "signing.verify_key_files", 3, "cannot read"),
            ("[admin]\nlisten = \"127.0.0.1:9090\"\npublic_url = \"https://ops.example/tokens\"\n", "admin.public_url", 3, "has a path"),
            ("[admin]\nlisten = \"127.0.0.1:9090\"\npublic_url = \"ftp://ops.example\"\n", "admin.public_url", 3, "must start with http"),
            ("[upstream.u]\nurl = \"http://u\"\n[[route]]\nname = \"a\"\nformat = \"npm\"\npath = \"/a\"\nnamespace = \"acme\"\nupstream = \"u\"\n[[route.access]]\nmethod = \"delete\"\npath = \"/**\"\naccess = \"deny\"\n", "route[0].access[0]", 9, "upper case (\"DELETE\")"),
            ("[upstream.u]\nurl = \"http://u\"\n[[route]]\nname = \"a\"\nformat = \"generic\"\npath = \"/a\"\nnamespace = \"acme\"\nupstream = \"u\"\n[[route.access]]\nmethod = \"GET\"\npath = \"/**\"\naccess = \"read\"\nmultipart = true\n", "route[0].access[0]", 9, "multipart = true needs access = \"write\""),
        ];
        for (text, key, line, msg) in cases {
            let e = err(text);
            assert_eq!((e.key.as_str(), e.line), (*key, *line), "{e}");
            assert!(e.to_string().contains(msg), "{e}");
            assert!(
                e.to_string().starts_with(&format!("proxy.toml:{line}: ")),
                "{e}"
            );
        }
    }

    #[test]
    fn route_errors_point_at_the_route() {
        let with = |from: &str, to: &str| GOOD.replacen(from, to, 1);
        let line_of =
            |text: &str, needle: &str| text[..text.find(needle).unwrap()].matches('\n').count() + 1;

        let t = with("upstream = \"verdaccio\"", "upstream = \"nope\"");
        let e = err(&t);
        assert_eq!(
            (e.key.as_str(), e.line),
            ("route[0].upstream", line_of(&t, "\"nope\""))
        );

        let t = with("format = \"npm\"", "format = \"cobol\"");
        assert_eq!(err(&t).key, "route[0].format");

        let t = with(
            "path = \"/api/v4/projects/{namespace}/packages/generic\"",
            "path = \"/npm/acme/web\"\nnamespace = \"acme\"",
        );
        let e = err(&t);
        assert_eq!(e.key, "route[1].path");
        assert!(e.message.contains("same path"));

        let t = with("path = \"/npm/acme/web\"", "path = \"/npm/../web\"");
        assert_eq!(err(&t).key, "route[0].path");

        let t = with("namespace = \"acme/web\"\n", "");
        assert_eq!(err(&t).key, "route[0].namespace");

        let t = with("access = \"read\"", "access = \"admin\"");
        assert_eq!(err(&t).key, "route[1].access[0]");

        let t = with("strip_prefix = true", "strip_prefix = true\nstrip = 1");
        assert_eq!(err(&t).key, "route[0].strip");
        assert_eq!(err(&t).line, line_of(&t, "strip = 1"));
    }

    #[test]
    fn tls_listeners_with_http_public_urls_are_warned_about() {
        let dir = tempfile::tempdir().unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["proxy.test".into()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let (cert_path, key_path) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
        std::fs::write(&cert_path, cert.pem()).unwrap();
        std::fs::write(&key_path, key.serialize_pem()).unwrap();
        let tls = format!("tls = {{ cert = {cert_path:?}, key = {key_path:?} }}");
        let config = |server_url: &str, admin_url: &str| {
            let text = format!(
                "[server]\nlisten = \"127.0.0.1:8443\"\n{tls}\n{server_url}\n\
                 [admin]\nlisten = \"127.0.0.1:9443\"\n{tls}\n{admin_url}\n"
            );
            Config::parse("proxy.toml", &text).unwrap().warnings()
        };
        let no_routes = "no routes configured: every request will be answered 404";
        // Unset, the public URLs follow the listeners: nothing to warn about.
        assert_eq!(config("", ""), [no_routes]);
        let https = "public_url = \"https://proxy.test\"";
        assert_eq!(config(https, https), [no_routes]);
        let http = "public_url = \"http://proxy.test\"";
        let warnings = config(http, http);
        assert_eq!(warnings.len(), 3, "{warnings:?}");
        assert!(warnings[1].starts_with("server.tls is set but server.public_url is http://"));
        assert!(warnings[2].starts_with("admin.tls is set but admin.public_url is http://"));
        assert!(Config::parse("proxy.toml", GOOD)
            .unwrap()
            .warnings()
            .is_empty());
    }
}
