//! Metrics and the health of the proxy's dependencies (store, Redis).
//!
//! Counters on the hot path are created once and cloned out of their
//! families, so recording one is a single atomic add.

use std::fmt::Display;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

type Labels = Vec<(&'static str, &'static str)>;

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
        Metrics {
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
        let status = match (store_up, redis) {
            (false, _) => "unready",
            (true, "down") => "degraded",
            _ => "ready",
        };
        let body = serde_json::json!({
            "status": status,
            "store": if store_up { "up" } else { "down" },
            "redis": redis,
        });
        (store_up, body)
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
