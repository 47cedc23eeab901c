//! The per-request work before forwarding, on a warm cache: normalize the
//! path, match the route, read the credentials, look the digest up in the
//! in-process cache, decide. Run with `cargo bench --bench hot_path`.

use std::sync::Arc;

use criterion::{criterion_group, criterion_main, Criterion};
use http::{HeaderMap, HeaderValue, Method};
use tokengate::auth::{self, Ask};
use tokengate::cache::{Lookup, TokenResolver};
use tokengate::config::{Config, StoreConfig};
use tokengate::format;
use tokengate::metrics::Metrics;
use tokengate::route::NormalizedPath;
use tokengate::store::{NewToken, TokenStore};
use tokengate::token::{self, Digest, OwnerKind, ScopeSet, Secret};

const CONFIG: &str = r#"
[upstream.up]
url = "http://127.0.0.1:4873"

[[route]]
name = "web-npm"
format = "npm"
path = "/npm/acme/web"
namespace = "acme/web"
upstream = "up"
strip_prefix = true

[[route]]
name = "api"
format = "generic"
path = "/api/v4/projects/{namespace}/packages/generic"
upstream = "up"
strip_prefix = true
"#;

fn hot_path(c: &mut Criterion) {
    let config = Config::parse("bench.toml", CONFIG).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let store = rt
        .block_on(TokenStore::connect(&StoreConfig::at(format!(
            "sqlite://{}",
            dir.path().join("b.db").display()
        ))))
        .unwrap();
    let secret = Secret::generate();
    rt.block_on(store.create(NewToken {
        name: "bench".into(),
        username: None,
        owner_kind: OwnerKind::Group,
        owner_path: "acme".into(),
        scopes: ScopeSet::parse_list("read_package_registry").unwrap(),
        expires_at: None,
        digest: secret.digest(),
    }))
    .unwrap();
    let resolver = Arc::new(TokenResolver::new(
        &config.cache,
        store,
        None,
        Arc::new(Metrics::new(false)),
    ));
    let mut headers = HeaderMap::new();
    headers.insert(
        "authorization",
        HeaderValue::from_str(&format!("Bearer {}", secret.expose())).unwrap(),
    );
    let target = "/npm/acme/web/@babel%2fcore";
    rt.block_on(resolver.resolve(secret.digest())).unwrap();

    c.bench_function("normalize+match", |b| {
        b.iter(|| {
            let path = NormalizedPath::parse(std::hint::black_box(target)).unwrap();
            config.routes.find(&path).unwrap().prefix_len
        })
    });

    c.bench_function(
        "warm decision (normalize, match, credentials, cache, decide)",
        |b| {
            b.iter(|| {
                let path = NormalizedPath::parse(std::hint::black_box(target)).unwrap();
                let matched = config.routes.find(&path).unwrap();
                let rest: Vec<&str> = path.decoded().skip(matched.prefix_len).collect();
                let access = matched.route.access(&Method::GET, &rest, None);
                let presented = format::credentials(&*matched.route.format, &headers)
                    .unwrap()
                    .unwrap();
                assert!(token::well_formed(&presented.secret));
                let lookup = rt
                    .block_on(resolver.resolve(Digest::of(&presented.secret)))
                    .unwrap();
                let Lookup::Found(record) = lookup else {
                    panic!("warm")
                };
                let ask = Ask {
                    username: presented.username.as_deref(),
                    namespace: &matched.namespace,
                    access,
                    scopes: matched.route.format.scopes_for(access),
                };
                auth::decide(Some(&record), &ask, chrono::Utc::now()).unwrap();
            })
        },
    );
}

/// The pieces on their own: each format's credential parsing, and the
/// secret's format/checksum check and digest.
fn pieces(c: &mut Criterion) {
    let secret = Secret::generate();
    let exposed = secret.expose().to_string();
    let basic = {
        use base64::Engine;
        let pair = format!("tokengate+deploy-token-1:{exposed}");
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(pair)
        )
    };
    let cases: [(&str, &str, String); 5] = [
        ("npm", "authorization", format!("Bearer {exposed}")),
        ("pypi", "authorization", basic.clone()),
        ("maven", "deploy-token", exposed.clone()),
        ("nuget", "x-nuget-apikey", exposed.clone()),
        ("git", "authorization", basic),
    ];
    for (name, header, value) in cases {
        let mut headers = HeaderMap::new();
        headers.insert(header, HeaderValue::from_str(&value).unwrap());
        let f = format::by_name(name).unwrap();
        c.bench_function(&format!("credentials: {name} ({header})"), |b| {
            b.iter(|| {
                format::credentials(&*f, std::hint::black_box(&headers))
                    .unwrap()
                    .unwrap()
                    .secret
                    .len()
            })
        });
    }
    c.bench_function("secret: format + checksum check", |b| {
        b.iter(|| token::well_formed(std::hint::black_box(&exposed)))
    });
    c.bench_function("secret: SHA-256 digest", |b| {
        b.iter(|| Digest::of(std::hint::black_box(&exposed)))
    });
}

criterion_group!(benches, hot_path, pieces);
criterion_main!(benches);
