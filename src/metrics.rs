//! Metrics and the health of the proxy's dependencies (store, Redis).
//!
//! Counters on the hot path are created once and cloned out of their
//! families, so recording one is a single atomic add.

use std::fmt::Display;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use crate::route::Route;
use crate::token::{Scope, ScopeSet, TokenRecord};

type Labels = Vec<(&'static str, &'static str)>;

/// A configured name (route, upstream) as a label value: shared, so
/// recording a request allocates nothing.
#[derive(Clone, Debug, Hash, PartialEq, Eq)]
pub struct Name(pub Arc<str>);

impl EncodeLabelValue for Name {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        std::fmt::Write::write_str(encoder, &self.0)
    }
}

/// One request's outcome, as counted.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    /// The route's name, or `-` when none matched.
    pub route: Name,
    pub format: &'static str,
    /// allowed, unauthenticated, forbidden, ...
    pub decision: &'static str,
    /// Why it was denied (`-` when allowed).
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ScopeLabel {
    scope: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct WithinLabel {
    within: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabel {
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct VersionLabel {
    version: String,
}

/// The running config and the last reload's outcome.
#[derive(Default)]
struct ConfigState {
    version: String,
    /// `None` before any reload; else the error of the last one, if it failed.
    last_reload: Option<Result<(), String>>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct UpstreamLabel {
    upstream: Name,
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

fn latency_histogram() -> Histogram {
    // 10 µs .. ~5 min
    Histogram::new(exponential_buckets(0.00001, 3.0, 16))
}

/// What a request allowed on one route records, taken out of the families
/// when a config is loaded: recording then hashes no label set and takes no
/// family lock, which every request would otherwise do twice.
pub struct RouteMetrics {
    /// `requests{decision="allowed"}` for the route.
    pub allowed: Counter,
    /// `upstream_response_seconds` for the route's upstream.
    pub upstream_seconds: Histogram,
}

/// Every metric tokengate exports, and the registry that encodes them.
pub struct Metrics {
    registry: Registry,
    pub local_hits: Counter,
    pub local_misses: Counter,
    pub redis_hits: Counter,
    pub redis_misses: Counter,
    /// Token lookups that reached the store (one per single-flight miss).
    pub store_lookups: Counter,
    /// Batched `last_used_at` writes.
    pub last_used_flushes: Counter,
    pub store: Arc<Dependency>,
    /// `None` when no Redis is configured.
    pub redis: Option<Arc<Dependency>>,
    tokens_created: Family<ScopeLabel, Counter>,
    tokens_revoked: Family<ScopeLabel, Counter>,
    tokens_active: Family<ScopeLabel, Gauge>,
    tokens_expiring: Family<WithinLabel, Gauge>,
    requests: Family<RequestLabels, Counter>,
    /// Time from the request's arrival to the auth decision.
    pub decision_seconds: Histogram,
    upstream_seconds: HistogramFamily<UpstreamLabel>,
    upstream_errors: Family<UpstreamLabel, Counter>,
    config_reloads: Family<ResultLabel, Counter>,
    config_version: Family<VersionLabel, Gauge>,
    config: Mutex<ConfigState>,
    /// SIGTERM received: unready from now on.
    draining: AtomicBool,
}

impl Metrics {
    pub fn new(with_redis: bool) -> Metrics {
        let mut registry = Registry::with_prefix("tokengate");
        let lookups = Family::<Labels, Counter>::default();
        registry.register(
            "cache_lookups",
            "Token lookups per cache layer and result",
            lookups.clone(),
        );
        let lookup = |layer, result| {
            lookups
                .get_or_create(&vec![("layer", layer), ("result", result)])
                .clone()
        };
        let store_lookups = Counter::default();
        registry.register(
            "store_lookups",
            "Token lookups that reached the store",
            store_lookups.clone(),
        );
        let last_used_flushes = Counter::default();
        registry.register(
            "last_used_flushes",
            "Batched last_used_at writes to the store",
            last_used_flushes.clone(),
        );
        let up = Family::<Labels, Gauge>::default();
        registry.register(
            "dependency_up",
            "1 when the dependency answered its last probe or request",
            up.clone(),
        );
        let errors = Family::<Labels, Counter>::default();
        registry.register(
            "dependency_errors",
            "Failed requests to a dependency",
            errors.clone(),
        );
        let dependency = |name: &'static str| {
            let labels = vec![("dependency", name)];
            let gauge = up.get_or_create(&labels).clone();
            gauge.set(1);
            Arc::new(Dependency {
                name,
                up: AtomicBool::new(true),
                gauge,
                errors: errors.get_or_create(&labels).clone(),
            })
        };
        let tokens_created = Family::<ScopeLabel, Counter>::default();
        registry.register(
            "deploy_tokens_created",
            "Deploy tokens created through this instance, per scope",
            tokens_created.clone(),
        );
        let tokens_revoked = Family::<ScopeLabel, Counter>::default();
        registry.register(
            "deploy_tokens_revoked",
            "Deploy tokens revoked through this instance, per scope",
            tokens_revoked.clone(),
        );
        let tokens_active = Family::<ScopeLabel, Gauge>::default();
        registry.register(
            "deploy_tokens_active",
            "Active (neither revoked nor expired) deploy tokens in the store, per scope",
            tokens_active.clone(),
        );
        for scope in Scope::ALL {
            let label = ScopeLabel {
                scope: scope.as_str(),
            };
            drop(tokens_created.get_or_create(&label));
            drop(tokens_revoked.get_or_create(&label));
            drop(tokens_active.get_or_create(&label));
        }
        let tokens_expiring = Family::<WithinLabel, Gauge>::default();
        registry.register(
            "deploy_tokens_expiring",
            "Active deploy tokens that expire within 7 or 30 days",
            tokens_expiring.clone(),
        );
        for within in ["7d", "30d"] {
            drop(tokens_expiring.get_or_create(&WithinLabel { within }));
        }
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "requests",
            "Proxied requests per route, format, decision and reason",
            requests.clone(),
        );
        let decision_seconds = latency_histogram();
        registry.register(
            "auth_decision_seconds",
            "Time from a request's arrival to its auth decision",
            decision_seconds.clone(),
        );
        let upstream_seconds: HistogramFamily<UpstreamLabel> =
            Family::new_with_constructor(latency_histogram);
        registry.register(
            "upstream_response_seconds",
            "Time to an upstream's response headers",
            upstream_seconds.clone(),
        );
        let upstream_errors = Family::<UpstreamLabel, Counter>::default();
        registry.register(
            "upstream_errors",
            "Upstream requests that failed (unreachable, timed out, bad metadata, login refused)",
            upstream_errors.clone(),
        );
        let config_reloads = Family::<ResultLabel, Counter>::default();
        registry.register(
            "config_reloads",
            "Config reloads (SIGHUP or a changed file) by result",
            config_reloads.clone(),
        );
        for result in ["ok", "error"] {
            drop(config_reloads.get_or_create(&ResultLabel { result }));
        }
        let config_version = Family::<VersionLabel, Gauge>::default();
        registry.register(
            "config_version",
            "1 for the running config's version (hash of its text)",
            config_version.clone(),
        );
        Metrics {
            config_reloads,
            config_version,
            config: Mutex::default(),
            draining: AtomicBool::new(false),
            tokens_created,
            tokens_revoked,
            tokens_active,
            tokens_expiring,
            requests,
            decision_seconds,
            upstream_seconds,
            upstream_errors,
            local_hits: lookup("local", "hit"),
            local_misses: lookup("local", "miss"),
            redis_hits: lookup("redis", "hit"),
            redis_misses: lookup("redis", "miss"),
            store_lookups,
            last_used_flushes,
            store: dependency("store"),
            redis: with_redis.then(|| dependency("redis")),
            registry,
        }
    }

    /// Counts a created deploy token under each of its scopes.
    pub fn token_created(&self, scopes: &ScopeSet) {
        for scope in scopes.iter() {
            let scope = scope.as_str();
            self.tokens_created
                .get_or_create(&ScopeLabel { scope })
                .inc();
        }
    }

    pub fn token_revoked(&self, scopes: &ScopeSet) {
        for scope in scopes.iter() {
            let scope = scope.as_str();
            self.tokens_revoked
                .get_or_create(&ScopeLabel { scope })
                .inc();
        }
    }

    /// Sets the active-token gauges (per scope, and expiring soon) from
    /// every active token.
    pub fn set_active(&self, active: &[TokenRecord], now: chrono::DateTime<chrono::Utc>) {
        let mut counts = [0i64; Scope::ALL.len()];
        for token in active {
            for scope in token.scopes.iter() {
                counts[scope as usize] += 1;
            }
        }
        for (within, days) in [("7d", 7), ("30d", 30)] {
            let soon = now + chrono::Duration::days(days);
            let n = active
                .iter()
                .filter(|t| t.expires_at.is_some_and(|at| at <= soon))
                .count();
            self.tokens_expiring
                .get_or_create(&WithinLabel { within })
                .set(n as i64);
        }
        for (scope, count) in Scope::ALL.iter().zip(counts) {
            let scope = scope.as_str();
            self.tokens_active
                .get_or_create(&ScopeLabel { scope })
                .set(count);
        }
    }

    pub fn request(&self, labels: &RequestLabels) {
        self.requests.get_or_create(labels).inc();
    }

    /// The metrics a request allowed on `route` records, looked up once.
    pub fn for_route(&self, route: &Route) -> RouteMetrics {
        let allowed = RequestLabels {
            route: Name(route.name.clone()),
            format: route.format.name(),
            decision: "allowed",
            reason: "-",
        };
        let upstream = UpstreamLabel {
            upstream: Name(route.upstream.name.clone()),
        };
        RouteMetrics {
            allowed: self.requests.get_or_create(&allowed).clone(),
            upstream_seconds: self.upstream_seconds.get_or_create(&upstream).clone(),
        }
    }

    pub fn upstream_failed(&self, upstream: &Arc<str>) {
        let label = UpstreamLabel {
            upstream: Name(upstream.clone()),
        };
        self.upstream_errors.get_or_create(&label).inc();
    }

    /// A config (re)loaded and now serving.
    pub fn config_loaded(&self, version: &str, reloaded: bool) {
        let mut state = self.config.lock().expect("config state");
        self.config_version.remove(&VersionLabel {
            version: std::mem::take(&mut state.version),
        });
        self.config_version
            .get_or_create(&VersionLabel {
                version: version.to_string(),
            })
            .set(1);
        state.version = version.to_string();
        if reloaded {
            state.last_reload = Some(Ok(()));
            self.config_reloads
                .get_or_create(&ResultLabel { result: "ok" })
                .inc();
        }
    }

    /// A reload refused; the running config stays.
    pub fn config_reload_failed(&self, error: &str) {
        self.config.lock().expect("config state").last_reload = Some(Err(error.to_string()));
        self.config_reloads
            .get_or_create(&ResultLabel { result: "error" })
            .inc();
    }

    /// Shutting down: `/readyz` answers 503 from now on.
    pub fn start_draining(&self) {
        self.draining.store(true, Ordering::Relaxed);
    }

    /// The Prometheus text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::with_capacity(4096);
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String cannot fail");
        out
    }

    /// `(ready, body)` for `/readyz`: degraded (still ready) without Redis,
    /// unready without the store, since unknown tokens are then refused.
    pub fn readiness(&self) -> (bool, serde_json::Value) {
        let store_up = self.store.is_up();
        let redis = match &self.redis {
            None => "disabled",
            Some(r) if r.is_up() => "up",
            Some(_) => "down",
        };
        let draining = self.draining.load(Ordering::Relaxed);
        let status = match (draining, store_up, redis) {
            (true, _, _) => "draining",
            (_, false, _) => "unready",
            (_, true, "down") => "degraded",
            _ => "ready",
        };
        let config = {
            let state = self.config.lock().expect("config state");
            let last_reload = match &state.last_reload {
                None => serde_json::Value::Null,
                Some(Ok(())) => "ok".into(),
                Some(Err(e)) => format!("failed: {e}").into(),
            };
            serde_json::json!({ "version": state.version, "last_reload": last_reload })
        };
        let body = serde_json::json!({
            "status": status,
            "store": if store_up { "up" } else { "down" },
            "redis": redis,
            "config": config,
        });
        (store_up && !draining, body)
    }
}

/// Whether a dependency is reachable, as last observed; transitions are
/// logged once each, not per failed request.
pub struct Dependency {
    name: &'static str,
    up: AtomicBool,
    gauge: Gauge,
    errors: Counter,
}

impl Dependency {
    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Relaxed)
    }

    pub fn failed(&self, error: &dyn Display) {
        self.errors.inc();
        if self.up.swap(false, Ordering::Relaxed) {
            self.gauge.set(0);
            tracing::warn!(dependency = self.name, error = %error, "dependency down");
        }
    }

    pub fn succeeded(&self) {
        if !self.up.swap(true, Ordering::Relaxed) {
            self.gauge.set(1);
            tracing::info!(dependency = self.name, "dependency back");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readiness_follows_dependencies_and_is_exported() {
        let m = Metrics::new(true);
        assert_eq!(m.readiness().1["status"], "ready");
        m.redis.as_ref().unwrap().failed(&"connection refused");
        let (ready, body) = m.readiness();
        assert!(ready);
        assert_eq!(body["status"], "degraded");
        m.store.failed(&"timeout");
        assert!(!m.readiness().0);
        let text = m.encode();
        assert!(
            text.contains(r#"tokengate_dependency_up{dependency="redis"} 0"#),
            "{text}"
        );
        assert!(
            text.contains(r#"tokengate_dependency_errors_total{dependency="store"} 1"#),
            "{text}"
        );
        m.store.succeeded();
        assert!(m
            .encode()
            .contains(r#"tokengate_dependency_up{dependency="store"} 1"#));
    }
}
