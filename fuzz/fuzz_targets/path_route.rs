//! Path normalization, the query check and route matching, with a
//! differential check: the path the proxy forwards, normalized again, names
//! exactly the segments the route matched (upstream base + the namespace of a
//! stripped placeholder + the rest after the stripped prefix), and its query
//! is the one that was checked, byte for byte, and no segment holds a dot
//! step behind an encoded slash.
#![no_main]
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use tokengate::config::Config;
use tokengate::route::normalize::check_query;
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
    let (raw_path, query) = match raw.split_once('?') {
        Some((path, query)) => (path, Some(query)),
        None => (raw, None),
    };
    if let Some(query) = query {
        if check_query(query).is_err() {
            return;
        }
        // What an upstream could read as a fragment or a line break never passes.
        assert!(
            !query.bytes().any(|b| b < 0x20 || b == 0x7f || b == b'#'),
            "{query:?}"
        );
    }
    let Ok(path) = NormalizedPath::parse(raw_path) else {
        return;
    };
    let Ok(matched) = config().routes.find(&path) else {
        return;
    };
    // Past the proxy's limits once the base path and namespace are added: refused.
    let Ok(forwarded) = matched.upstream_path_and_query(&path, query) else {
        return;
    };
    let (forwarded, forwarded_query) = match forwarded.split_once('?') {
        Some((path, query)) => (path, Some(query)),
        None => (forwarded.as_str(), None),
    };
    assert_eq!(forwarded_query, query, "the query forwarded for {raw:?}");
    let again = NormalizedPath::parse(forwarded).expect("the forwarded path normalizes");
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
    // An upstream that decodes `%2F` before it resolves dot segments sees
    // no dot step either.
    let mut steps = got.iter().flat_map(|segment| segment.split('/'));
    assert!(
        steps.all(|step| step != "." && step != ".."),
        "a dot step forwarded in {forwarded:?} for {raw:?}"
    );
});
