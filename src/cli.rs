//! The command line: `serve`, `check-config`, `explain` and `token …`.
//! Exit codes: 0 ok, 2 usage or config error, 1 anything else, each with a
//! one-line reason on stderr.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Args, Parser, Subcommand};

use crate::auth::{Ask, Denial};
use crate::cache::{RedisCache, TokenResolver};
use crate::config::{CacheConfig, Config, ConfigError};
use crate::metrics::Metrics;
use crate::oci::{KeyRing, RegistryAuth};
use crate::proxy::Listener;
use crate::route::NormalizedPath;
use crate::store::{LastUsed, ListFilter, StoreError, TokenStore};
use crate::token::{self, OwnerKind, TokenError, TokenRecord};
use crate::tokens::{CreateRequest, ManageError, TokenAdmin};

#[derive(Parser)]
#[command(
    name = "tokengate",
    version,
    about = "Deploy tokens for any package or container registry"
)]
struct Cli {
    /// Config file (default: $TOKENGATE_CONFIG, else ./proxy.toml, else built-in defaults).
    #[arg(long, global = true, value_name = "PATH")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the proxy.
    Serve,
    /// Validate the config and exit.
    CheckConfig,
    /// Show how a request would be routed and which scope it needs.
    Explain {
        /// HTTP method, e.g. GET.
        method: String,
        /// Request path (and query), e.g. /npm/acme/web/left-pad.
        path: String,
        /// Also say whether this deploy token would be allowed, and if not which
        /// rule denies it (read from the store; no secret needed). Exit 1 when denied.
        #[arg(long)]
        token_id: Option<i64>,
    },
    /// Create, list and revoke deploy tokens.
    #[command(subcommand)]
    Token(TokenCommand),
}

#[derive(Args)]
#[group(required = true, multiple = false)]
struct Owner {
    /// Owning project path, e.g. acme/web.
    #[arg(long)]
    project: Option<String>,
    /// Owning group path, e.g. acme.
    #[arg(long)]
    group: Option<String>,
}

#[derive(Subcommand)]
enum TokenCommand {
    /// Create a deploy token; the secret is printed once, alone on the last line of stdout.
    Create {
        #[command(flatten)]
        owner: Owner,
        #[arg(long)]
        name: String,
        /// Comma-separated scopes, e.g. read_package_registry,write_package_registry.
        #[arg(long)]
        scopes: String,
        /// Basic-auth username (default tokengate+deploy-token-{id}).
        #[arg(long)]
        username: Option<String>,
        /// Expiry, YYYY-MM-DD (midnight UTC) or RFC 3339.
        #[arg(long)]
        expires_at: Option<String>,
        /// Print GitLab's JSON response instead.
        #[arg(long)]
        json: bool,
    },
    /// List deploy tokens.
    List {
        #[arg(long, conflicts_with = "group")]
        project: Option<String>,
        #[arg(long)]
        group: Option<String>,
        /// Only tokens that are neither revoked nor expired.
        #[arg(long)]
        active: bool,
        /// Only active tokens that expire within this, e.g. 30d or 12h.
        #[arg(long, value_name = "DURATION")]
        expiring_within: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Revoke a deploy token at once.
    Revoke { id: i64 },
    /// Rotate a deploy token: a new secret (printed once, alone on the last line of
    /// stdout) for the same name, username, owner, scopes and expiry; the old secret
    /// keeps working for --grace only.
    Rotate {
        id: i64,
        /// How long the old secret still works, e.g. 10m, 2h, 1d (default: not at all).
        #[arg(long, default_value = "0s")]
        grace: String,
        /// Print GitLab's JSON entity (with `token`) instead.
        #[arg(long)]
        json: bool,
    },
}

/// A failed command: its exit code and one-line reason.
#[derive(Debug, thiserror::Error)]
enum CliError {
    #[error("{0}")]
    Config(#[from] ConfigError),
    #[error("{0}")]
    Usage(String),
    #[error("{0}")]
    Token(#[from] TokenError),
    #[error("{0}")]
    Store(#[from] StoreError),
    #[error("{0}")]
    Manage(#[from] ManageError),
    #[error("{0}")]
    Failed(String),
}

impl CliError {
    fn exit_code(&self) -> u8 {
        match self {
            CliError::Config(_) | CliError::Usage(_) | CliError::Token(_) => 2,
            CliError::Manage(ManageError::Invalid(_)) => 2,
            CliError::Store(_) | CliError::Manage(_) | CliError::Failed(_) => 1,
        }
    }
}

/// Parses the command line and runs it.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing(if matches!(cli.command, Command::Serve) {
        "info"
    } else {
        // Token commands still write their audit events.
        "warn,tokengate::audit=info"
    });
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("tokengate: cannot start the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tokengate: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}

/// Logs go to stderr; `TOKENGATE_LOG` (an env-filter) overrides the level,
/// `TOKENGATE_LOG_FORMAT=json` switches to JSON lines. Without
/// `TOKENGATE_LOG`, `serve` follows the config's `log_level`, reloads included.
fn init_tracing(default_level: &str) {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    use tracing_subscriber::{fmt, reload, EnvFilter};
    let from_env = std::env::var("TOKENGATE_LOG")
        .ok()
        .filter(|v| !v.is_empty())
        .and_then(|v| EnvFilter::try_new(v).ok());
    let follows_config = from_env.is_none();
    let (filter, handle) =
        reload::Layer::new(from_env.unwrap_or_else(|| EnvFilter::new(default_level)));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let layer = fmt::layer().with_writer(std::io::stderr).with_ansi(ansi);
    let registry = tracing_subscriber::registry().with(filter);
    if std::env::var("TOKENGATE_LOG_FORMAT").as_deref() == Ok("json") {
        registry.with(layer.json()).init();
    } else {
        registry.with(layer).init();
    }
    if follows_config {
        let _ = LOG_FILTER.set(Box::new(move |level: &str| {
            handle
                .reload(EnvFilter::new(level))
                .map_err(|e| e.to_string())
        }));
    }
}

/// Sets the log filter, unless `TOKENGATE_LOG` fixed it.
type SetLogLevel = Box<dyn Fn(&str) -> Result<(), String> + Send + Sync>;
static LOG_FILTER: std::sync::OnceLock<SetLogLevel> = std::sync::OnceLock::new();

fn apply_log_level(config: &Config) {
    if let Some(set) = LOG_FILTER.get() {
        if let Err(e) = set(&config.server.log_level) {
            tracing::warn!(error = %e, "log level not changed");
        }
    }
}

async fn run(cli: Cli) -> Result<(), CliError> {
    let config_path = Config::locate(cli.config.as_deref());
    if let Command::Token(cmd) = cli.command {
        // Token commands need only the store and caches: not the upstreams' secrets.
        let backends = Config::token_backends(config_path.as_deref())?;
        let store = TokenStore::connect(&backends.store).await?;
        return token_command(&store, &backends.cache, cmd).await;
    }
    let config = Config::load(config_path.as_deref())?;
    match cli.command {
        Command::Serve => serve(config, config_path).await,
        Command::CheckConfig => {
            let name = config_path.map_or("built-in defaults".into(), |p| p.display().to_string());
            for warning in config.warnings() {
                eprintln!("warning: {warning}");
            }
            println!("{name}: ok ({} routes)", config.routes.routes().len());
            Ok(())
        }
        Command::Explain {
            method,
            path,
            token_id,
        } => {
            let token =
                match token_id {
                    None => None,
                    Some(id) => {
                        let store = TokenStore::connect(&config.store).await?;
                        let token = store.get(id).await?;
                        Some(token.ok_or_else(|| {
                            CliError::Failed(format!("no deploy token with id {id}"))
                        })?)
                    }
                };
            explain(&config, &method, &path, token.as_ref())
        }
        Command::Token(_) => unreachable!("handled above"),
    }
}

async fn serve(config: Config, config_path: Option<PathBuf>) -> Result<(), CliError> {
    // First: a SIGHUP while the store connects (a `systemctl reload` right
    // after start) must not end the process, and an edit meanwhile must apply.
    let watch = ConfigWatch::start(config_path);
    apply_log_level(&config);
    let store = TokenStore::connect(&config.store).await?;
    let config = Arc::new(config);
    for warning in config.warnings() {
        tracing::warn!("{warning}");
    }
    let metrics = Arc::new(Metrics::new(config.cache.redis.is_some()));
    let redis = config
        .cache
        .redis
        .as_ref()
        .map(|r| RedisCache::new(r, &config.cache, &metrics));
    if let Some(redis) = &redis {
        if !redis.check().await {
            tracing::warn!("Redis unreachable at start: serving from the store until it answers");
        }
    }
    let resolver = Arc::new(TokenResolver::new(
        &config.cache,
        store.clone(),
        redis.clone(),
        metrics.clone(),
    ));
    let last_used = Arc::new(LastUsed::default());
    let mut tasks = vec![
        tokio::spawn(resolver.clone().follow_changes(config.cache.change_poll)),
        tokio::spawn(last_used.clone().flush_every(
            config.store.last_used_flush,
            store.clone(),
            metrics.last_used_flushes.clone(),
        )),
    ];
    if let Some(redis) = &redis {
        tasks.push(tokio::spawn(redis.clone().keep_connected()));
        tasks.push(tokio::spawn(redis.clone().listen(resolver.clone())));
    }
    let tokens = Arc::new(TokenAdmin::new(
        store.clone(),
        redis.clone(),
        Some(resolver.clone()),
        Some(metrics.clone()),
    ));
    tasks.push(tokio::spawn(
        tokens
            .clone()
            .refresh_active_every(std::time::Duration::from_secs(60)),
    ));
    let mut admin_state = None;
    if let Some(admin) = &config.admin {
        let listener = bind(admin.listen).await?;
        tracing::info!(listen = %admin.listen, tls = admin.tls.is_some(), admin_tokens = admin.tokens.len(), "admin listener serving the API (/api/v4), the web page (/ui), /healthz, /readyz and /metrics");
        let state = Arc::new(crate::admin::Admin::new(admin, metrics.clone(), tokens));
        admin_state = Some(state.clone());
        tasks.push(tokio::spawn(crate::admin::serve(
            state,
            listener,
            admin.tls.clone(),
        )));
    }
    let decision_listener = match &config.forward_auth {
        Some(forward_auth) => {
            let listener = bind(forward_auth.listen).await?;
            tracing::info!(listen = %forward_auth.listen, trusted_peers = ?forward_auth.trusted_peers, "forward-auth decision listener serving /nginx, /traefik and {}/...", forward_auth.envoy_path_prefix);
            Some(listener)
        }
        None => None,
    };
    let listener = bind(config.server.listen).await?;
    tracing::info!(listen = %config.server.listen, public_url = %config.server.public_url.origin, routes = config.routes.routes().len(), redis = redis.is_some(), version = %config.version, "tokengate serving");
    let workers = Arc::new(match config.server.workers {
        Some(count) => crate::proxy::Workers::start(count)
            .map_err(|e| CliError::Failed(format!("cannot start the connection workers: {e}")))?,
        None => crate::proxy::Workers::shared(),
    });
    let shared = Shared {
        resolver,
        last_used: last_used.clone(),
        metrics: metrics.clone(),
        pools: workers.count(),
        admin: admin_state,
    };
    let version = config.version.clone();
    let proxy = build_proxy(config, &shared).map_err(CliError::Failed)?;
    metrics.config_loaded(&version, false);
    let current = Arc::new(crate::proxy::Current::from_pointee(proxy));
    tasks.push(tokio::spawn(follow_config(watch, current.clone(), shared)));
    let public = crate::proxy::serve(
        current.clone(),
        Listener::Proxy,
        listener,
        workers.clone(),
        shutdown_signal(),
    );
    match decision_listener {
        Some(decision) => {
            let decide = crate::proxy::serve(
                current,
                Listener::Decision,
                decision,
                workers.clone(),
                shutdown_signal(),
            );
            tokio::join!(public, decide);
        }
        None => public.await,
    }
    for task in tasks {
        task.abort();
        // Awaited: an aborted flush puts its marks back only when it is dropped.
        let _ = task.await;
    }
    if let Err(e) = last_used.flush(&store).await {
        tracing::warn!(error = %e, "last-used times not saved");
    }
    // Only now: store and Redis connections opened on a worker live on its reactor.
    drop(workers);
    tracing::info!("stopped");
    Ok(())
}

async fn bind(addr: std::net::SocketAddr) -> Result<tokio::net::TcpListener, CliError> {
    tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| CliError::Failed(format!("cannot listen on {addr}: {e}")))
}

/// What every generation of the proxy shares across config reloads: the
/// token cache, the last-used batch and the metrics; and how many upstream
/// pools it keeps (one per connection worker).
struct Shared {
    resolver: Arc<TokenResolver>,
    last_used: Arc<LastUsed>,
    metrics: Arc<Metrics>,
    pools: usize,
    /// The admin listener's state, whose tokens a reload replaces.
    admin: Option<Arc<crate::admin::Admin>>,
}

/// A proxy for `config`, with its registry token service (signing keys read now).
fn build_proxy(config: Arc<Config>, shared: &Shared) -> Result<crate::proxy::Proxy, String> {
    let registry = match &config.registry_auth {
        Some(registry) => {
            let keys = KeyRing::load(&registry.key_file, &registry.verify_key_files)
                .map_err(|e| format!("signing key: {e}"))?;
            // For registries that verify the JWTs themselves (distribution 3.x `auth.token.jwks`).
            let jwks = registry.key_file.with_extension("jwks.json");
            if let Err(e) = std::fs::write(&jwks, keys.jwks().to_string()) {
                tracing::warn!(path = %jwks.display(), error = %e, "JWKS file not written");
            }
            tracing::info!(
                kid = keys.kid(),
                key = %registry.key_file.display(),
                certificate = %crate::oci::keys::cert_path(&registry.key_file).display(),
                jwks = %jwks.display(),
                token_endpoint = %registry.path,
                "registry token service on"
            );
            Some(Arc::new(RegistryAuth::new(registry.clone(), keys)))
        }
        None => None,
    };
    Ok(crate::proxy::Proxy::new(
        config,
        shared.resolver.clone(),
        shared.last_used.clone(),
        registry,
        shared.metrics.clone(),
        shared.pools,
    ))
}

/// What tells `serve` to reload: SIGHUP, and the config file's content.
struct ConfigWatch {
    path: Option<PathBuf>,
    hup: Option<tokio::signal::unix::Signal>,
    seen: Option<[u8; 32]>,
}

impl ConfigWatch {
    /// Takes SIGHUP over and notes the file's content as loaded.
    fn start(path: Option<PathBuf>) -> ConfigWatch {
        use tokio::signal::unix::{signal, SignalKind};
        let seen = fingerprint(path.as_deref());
        ConfigWatch {
            path,
            hup: signal(SignalKind::hangup()).ok(),
            seen,
        }
    }
}

fn fingerprint(path: Option<&std::path::Path>) -> Option<[u8; 32]> {
    use sha2::Digest;
    path.and_then(|p| std::fs::read(p).ok())
        .map(|text| sha2::Sha256::digest(text).into())
}

/// Reloads the config on SIGHUP and whenever the file's content changes
/// (checked every second). A config that does not validate is refused with
/// its file, line and key, and the running one stays.
async fn follow_config(watch: ConfigWatch, current: Arc<crate::proxy::Current>, shared: Shared) {
    let ConfigWatch {
        path,
        mut hup,
        mut seen,
    } = watch;
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
    loop {
        let why = tokio::select! {
            Some(()) = async {
                match hup.as_mut() {
                    Some(hup) => hup.recv().await,
                    None => std::future::pending().await,
                }
            } => "SIGHUP",
            _ = tick.tick() => {
                let now = fingerprint(path.as_deref());
                if now == seen {
                    continue;
                }
                seen = now;
                "file changed"
            }
        };
        let loaded = Config::load(path.as_deref())
            .map_err(|e| e.to_string())
            .and_then(|config| {
                warn_restart_only(current.load().config(), &config);
                build_proxy(Arc::new(config), &shared)
            });
        match loaded {
            Ok(proxy) => {
                apply_log_level(proxy.config());
                if let Some(admin) = &shared.admin {
                    admin.reload(proxy.config().admin.as_ref());
                }
                let version = proxy.config().version.clone();
                current.store(Arc::new(proxy));
                shared.metrics.config_loaded(&version, true);
                tracing::info!(why, %version, "config reloaded");
            }
            Err(e) => {
                shared.metrics.config_reload_failed(&e);
                tracing::error!(why, error = %e, "config not reloaded; the running config stays");
            }
        }
    }
}

/// Settings a reload cannot change (listeners, store, cache, admin TLS and URL): told,
/// not applied, until a restart.
fn warn_restart_only(old: &Config, new: &Config) {
    let changed = [
        ("server.listen", old.server.listen != new.server.listen),
        ("server.workers", old.server.workers != new.server.workers),
        (
            "store",
            format!("{:?}", old.store) != format!("{:?}", new.store),
        ),
        (
            "cache",
            format!("{:?}", old.cache) != format!("{:?}", new.cache),
        ),
        (
            "admin.listen",
            old.admin.as_ref().map(|a| a.listen) != new.admin.as_ref().map(|a| a.listen),
        ),
        (
            "admin.tls",
            old.admin.as_ref().map(|a| a.tls.is_some())
                != new.admin.as_ref().map(|a| a.tls.is_some()),
        ),
        (
            "admin.public_url",
            old.admin
                .as_ref()
                .and_then(|a| a.public_url.as_ref().map(|u| &u.origin))
                != new
                    .admin
                    .as_ref()
                    .and_then(|a| a.public_url.as_ref().map(|u| &u.origin)),
        ),
        (
            "forward_auth.listen",
            old.forward_auth.as_ref().map(|f| f.listen)
                != new.forward_auth.as_ref().map(|f| f.listen),
        ),
    ];
    for (key, _) in changed.iter().filter(|(_, changed)| *changed) {
        tracing::warn!(key, "this setting changed but applies only after a restart");
    }
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
        _ = int.recv() => tracing::info!("SIGINT: shutting down"),
    }
}

fn explain(
    config: &Config,
    method: &str,
    target: &str,
    token: Option<&TokenRecord>,
) -> Result<(), CliError> {
    let method = http::Method::from_bytes(method.to_ascii_uppercase().as_bytes())
        .map_err(|_| CliError::Usage(format!("invalid method {method:?}")))?;
    let (raw_path, query) = match target.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (target, None),
    };
    let fail = |e: &dyn std::fmt::Display| CliError::Failed(format!("{method} {target}: {e}"));
    let path = NormalizedPath::parse(raw_path).map_err(|e| fail(&e))?;
    if let Some(q) = query {
        crate::route::normalize::check_query(q).map_err(|e| fail(&e))?;
    }
    let own = |r: &&crate::config::RegistryAuthConfig| crate::proxy::own_endpoint(r, &path);
    if let Some(registry) = config.registry_auth.as_ref().filter(own) {
        println!(
            "answered by tokengate itself: the registry token service (token endpoint {}, JWKS {}); \
             Basic credentials of a deploy token",
            registry.path, registry.jwks_path
        );
        return Ok(());
    }
    let matched = config.routes.find(&path).map_err(|e| fail(&e))?;
    let route = matched.route;
    let rest: Vec<&str> = path.decoded().skip(matched.prefix_len).collect();
    let access = route.access(&method, &rest, query);
    let scopes = route.format.scopes_for(access);
    let needs = if scopes.is_empty() {
        "nothing: refused for deploy tokens".to_string()
    } else {
        scopes.names().join(" or ")
    };
    println!("route:     {} ({})", route.name, route.path_pattern());
    println!("format:    {}", route.format.name());
    println!("namespace: {}", matched.namespace);
    println!("access:    {}", access.as_str());
    println!("needs:     {needs}");
    if route.accepts_multipart(&method, &rest, access) {
        println!("body:      may be a multipart form (refused elsewhere)");
    }
    let format = &*route.format;
    if format.asks_identity(&method, &rest) {
        println!("answered:  by tokengate itself, with the deploy token's username");
    } else if format.session_endpoint(&method, &rest).is_some() {
        println!("answered:  by tokengate itself, a login with a session JWT");
    } else {
        match matched.upstream_path_and_query(&path, query) {
            Ok(forwarded) => println!("upstream:  {}{forwarded}", route.upstream.origin()),
            Err(e) => println!("upstream:  refused (400): {e}"),
        }
    }
    let Some(token) = token else {
        return Ok(());
    };
    let ask = Ask {
        username: None,
        namespace: &matched.namespace,
        access,
        scopes,
    };
    match crate::auth::decide(Some(token), &ask, chrono::Utc::now()) {
        Ok(_) => {
            println!("token {}:   allowed", token.id);
            Ok(())
        }
        Err(denial) => {
            let why = match denial {
                Denial::AccessRefused => route.format.refusal().to_string(),
                other => other.to_string(),
            };
            println!("token {}:   denied: {why}", token.id);
            Err(CliError::Failed(format!(
                "deploy token {} would be denied: {why}",
                token.id
            )))
        }
    }
}

async fn token_command(
    store: &TokenStore,
    cache: &CacheConfig,
    cmd: TokenCommand,
) -> Result<(), CliError> {
    let now = chrono::Utc::now();
    let redis = cache
        .redis
        .as_ref()
        .map(|redis| RedisCache::new(redis, cache, &Metrics::new(true)));
    let admin = TokenAdmin::new(store.clone(), redis, None, None);
    let actor = format!("cli:{}", std::env::var("USER").unwrap_or_default());
    match cmd {
        TokenCommand::Create {
            owner,
            name,
            scopes,
            username,
            expires_at,
            json,
        } => {
            let (owner_kind, owner_path) = match (owner.project, owner.group) {
                (Some(p), None) => (OwnerKind::Project, p),
                (None, Some(g)) => (OwnerKind::Group, g),
                _ => {
                    return Err(CliError::Usage(
                        "give exactly one of --project or --group".into(),
                    ))
                }
            };
            let request = CreateRequest {
                owner_kind,
                owner_path,
                name,
                scopes: vec![scopes],
                username,
                expires_at,
            };
            let (record, secret) = admin.create(&actor, request).await?;
            if json {
                println!("{}", record.to_gitlab_json(now, Some(&secret)));
            } else {
                eprintln!(
                    "Created deploy token {} for {} {}: username {}, scopes {}, expires {}.",
                    record.id,
                    record.owner_kind.as_str(),
                    record.owner_path,
                    record.username,
                    record.scopes,
                    record.expires_at.map_or("never".into(), |t| t.to_rfc3339()),
                );
                eprintln!("Save the secret below somewhere safe: it is shown only once.");
                println!("{}", secret.expose());
            }
            Ok(())
        }
        TokenCommand::List {
            project,
            group,
            active,
            expiring_within,
            json,
        } => {
            let expiring = expiring_within
                .as_deref()
                .map(token::parse_duration)
                .transpose()?;
            let owner = match (&project, &group) {
                (Some(p), _) => Some((OwnerKind::Project, p.as_str())),
                (_, Some(g)) => Some((OwnerKind::Group, g.as_str())),
                _ => None,
            };
            let mut tokens = admin
                .list(ListFilter {
                    owner,
                    active_only: active || expiring.is_some(),
                })
                .await?;
            if let Some(within) = expiring {
                let soon =
                    now + chrono::Duration::from_std(within).unwrap_or(chrono::Duration::MAX);
                tokens.retain(|t| t.expires_at.is_some_and(|at| at <= soon));
            }
            if json {
                let list: Vec<_> = tokens.iter().map(|t| t.to_gitlab_json(now, None)).collect();
                println!("{}", serde_json::Value::from(list));
            } else {
                println!(
                    "{:<6} {:<20} {:<32} {:<28} {:<44} {:<25} {:<8} LAST USED",
                    "ID", "NAME", "USERNAME", "OWNER", "SCOPES", "EXPIRES", "STATE"
                );
                for t in &tokens {
                    let state = if t.revoked {
                        "revoked"
                    } else if t.is_expired(now) {
                        "expired"
                    } else {
                        "active"
                    };
                    println!(
                        "{:<6} {:<20} {:<32} {:<28} {:<44} {:<25} {state:<8} {}",
                        t.id,
                        t.name,
                        t.username,
                        format!("{}:{}", t.owner_kind.as_str(), t.owner_path),
                        t.scopes.to_string(),
                        t.expires_at.map_or("never".into(), |e| e.to_rfc3339()),
                        t.last_used_at.map_or("never".into(), |e| e.to_rfc3339()),
                    );
                }
            }
            Ok(())
        }
        TokenCommand::Rotate { id, grace, json } => {
            let grace = token::parse_duration(&grace)?;
            let Some((record, secret)) = admin.rotate(&actor, id, grace).await? else {
                return Err(CliError::Failed(format!(
                    "no active deploy token with id {id}"
                )));
            };
            if json {
                println!("{}", record.to_gitlab_json(now, Some(&secret)));
            } else {
                eprintln!(
                    "Rotated deploy token {id}: the new token is {} (username {}); the old secret works for {grace:?} more.",
                    record.id, record.username
                );
                eprintln!("Save the secret below somewhere safe: it is shown only once.");
                println!("{}", secret.expose());
            }
            Ok(())
        }
        TokenCommand::Revoke { id } => match admin.revoke(&actor, id).await? {
            Some(t) => {
                println!("Revoked deploy token {} ({}).", t.id, t.name);
                Ok(())
            }
            None => Err(CliError::Failed(format!("no deploy token with id {id}"))),
        },
    }
}
