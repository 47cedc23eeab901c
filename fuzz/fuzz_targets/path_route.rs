//! Path normalization and route matching, with a differential check: the
//! path the proxy forwards, normalized again, names exactly the segments the
//! route matched (upstream base + the namespace of a stripped placeholder +
//! the rest after the stripped prefix).
#![no_main]
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use tokengate::config::Config;
use tokengate::route::{NamespaceSource, NormalizedPath};

const ROUTES: &str = r#"
[upstream.a]
url = "http://127.0.0.1:1/base/path"
[upstream.b]
url = "http://127.0.0.1:2"
[[route]]
name = "npm"
format = "npm"
path = "/npm/acme/web"
namespace = "acme/web"
upstream = "a"
strip_prefix = true
[[route]]
name = "generic"
format = "generic"
path = "/api/v4/projects/{namespace}/packages/generic"
upstream = "b"
strip_prefix = true
[[route]]
name = "git"
format = "git"
path = "/git"
upstream = "b"
[[route]]
name = "oci"
format = "oci"
path = "/v2"
upstream = "b"
"#;

fn config() -> &'static Config {
    static CONFIG: OnceLock<Config> = OnceLock::new();
    CONFIG.get_or_init(|| Config::parse("fuzz", ROUTES).expect("the fuzz config is valid"))
}

fuzz_target!(|data: &[u8]| {
    let Ok(raw) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(path) = NormalizedPath::parse(raw) else {
        return;
    };
    let Ok(matched) = config().routes.find(&path) else {
        return;
    };
    let forwarded = matched.upstream_path_and_query(&path, None);
    let again = NormalizedPath::parse(&forwarded).expect("the forwarded path normalizes");
    let base: Vec<&str> = matched
        .route
        .upstream
        .base_path
        .split('/')
        .filter(|s| !s.is_empty())
        .collect();
    let (skip, namespace) = match (matched.route.strip_prefix, &matched.route.namespace) {
        // A stripped placeholder leaves the namespace in its place.
        (true, NamespaceSource::Placeholder) => (matched.prefix_len, Some(&*matched.namespace)),
        (true, _) => (matched.prefix_len, None),
        (false, _) => (0, None),
    };
    let expected: Vec<&str> = base
        .into_iter()
        .chain(namespace.into_iter().flat_map(|ns| ns.split('/')))
        .chain(path.decoded().skip(skip))
        .collect();
    let got: Vec<&str> = again.decoded().collect();
    assert_eq!(got, expected, "forwarded {forwarded:?} for {raw:?}");
});
