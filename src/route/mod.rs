//! Routes: which upstream, format and namespace a normalized path belongs to.
//!
//! A route's path is a segment-wise prefix; `{namespace}` takes exactly one
//! segment, percent-decoded (GitLab's `:id` style, `acme%2Fweb`). The most
//! specific route (most segments, then most literal segments) wins.

pub mod normalize;

use std::borrow::Cow;
use std::sync::Arc;

use http::{HeaderValue, Method};

use crate::format::{Access, Format};
use crate::token::validate_namespace;
pub use normalize::{NormalizedPath, PathError};

/// Where allowed requests of a route go.
#[derive(Debug)]
pub struct Upstream {
    pub name: Arc<str>,
    /// `http` or `https`.
    pub scheme: http::uri::Scheme,
    pub authority: http::uri::Authority,
    /// `Host` of requests to it: the authority, made once.
    pub host: HeaderValue,
    /// Path prefix of the upstream URL, without a trailing `/` (may be empty).
    pub base_path: String,
    /// The proxy's own `Authorization` for this upstream, if configured.
    pub authorization: Option<HeaderValue>,
    /// TLS settings for an `https` upstream.
    pub tls: Option<Arc<rustls::ClientConfig>>,
}

impl Upstream {
    /// `scheme://authority`.
    pub fn origin(&self) -> String {
        format!("{}://{}", self.scheme, self.authority)
    }
}

/// One segment of a route path pattern.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum PathPart {
    Literal(String),
    Namespace,
}

/// How a route knows the namespace of a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NamespaceSource {
    Fixed(String),
    /// The `{namespace}` segment of the path.
    Placeholder,
    /// Named by the request path itself, as the format reads it (an OCI
    /// repository, a git project); empty when the path names none.
    InPath,
}

/// One segment of an access-override pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PatternPart {
    Literal(String),
    /// `*`: any one segment.
    AnySegment,
    /// `**` (last only): any remaining segments, including none.
    AnyRest,
}

/// Route path literals: the characters package paths use, nothing to
/// decode, so a literal matches the normalized segment it spells.
fn is_literal(seg: &str) -> bool {
    !seg.is_empty()
        && seg != "."
        && seg != ".."
        && seg.bytes().all(|b| {
            b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b'~' | b'@' | b':' | b'+')
        })
}

/// A route's `path` (`/npm/{namespace}`): literal segments and at most one
/// `{namespace}`; a trailing `/` is ignored.
pub fn parse_path(path: &str) -> Result<Vec<PathPart>, String> {
    let body = path
        .strip_prefix('/')
        .ok_or_else(|| format!("{path:?} must start with '/'"))?;
    let body = body.strip_suffix('/').unwrap_or(body);
    if body.is_empty() {
        return Ok(Vec::new());
    }
    let mut parts = Vec::new();
    for seg in body.split('/') {
        parts.push(match seg {
            "{namespace}" if !parts.contains(&PathPart::Namespace) => PathPart::Namespace,
            "{namespace}" => return Err("{namespace} may appear only once".into()),
            lit if is_literal(lit) => PathPart::Literal(lit.to_string()),
            other => return Err(format!("invalid path segment {other:?}")),
        });
    }
    Ok(parts)
}

/// An access rule's `path` pattern (`/api/*/charts`, `/**`): literal
/// segments, `*` for any one segment, `**` (last only) for the rest.
pub fn parse_pattern(pattern: &str) -> Result<Vec<PatternPart>, String> {
    let body = pattern
        .strip_prefix('/')
        .ok_or_else(|| format!("path {pattern:?} must start with '/'"))?;
    let segs: Vec<&str> = body.split('/').filter(|s| !s.is_empty()).collect();
    let mut parts = Vec::with_capacity(segs.len());
    for (i, seg) in segs.iter().enumerate() {
        parts.push(match *seg {
            "**" if i + 1 == segs.len() => PatternPart::AnyRest,
            "**" => return Err("`**` may only end a pattern".into()),
            "*" => PatternPart::AnySegment,
            lit if is_literal(lit) => PatternPart::Literal(lit.to_string()),
            other => return Err(format!("invalid pattern segment {other:?}")),
        });
    }
    Ok(parts)
}

/// An operator's override: this method and path (after the route prefix) need this access.
#[derive(Debug, Clone)]
pub struct AccessRule {
    /// `None` matches every method.
    pub method: Option<Method>,
    pub pattern: Vec<PatternPart>,
    pub access: Access,
    /// `multipart = true`: the requests this write rule covers may carry a
    /// multipart form (a Helm chart upload, say), which is refused elsewhere.
    pub multipart: bool,
}

impl AccessRule {
    /// A `GET` rule covers `HEAD` too: the same resource, its body left out.
    fn matches(&self, method: &Method, rest: &[&str]) -> bool {
        if let Some(want) = &self.method {
            let head_of_get = want == Method::GET && method == Method::HEAD;
            if want != method && !head_of_get {
                return false;
            }
        }
        let mut i = 0;
        for part in &self.pattern {
            match part {
                PatternPart::AnyRest => return true,
                PatternPart::AnySegment if i < rest.len() => i += 1,
                PatternPart::Literal(lit) if rest.get(i) == Some(&lit.as_str()) => i += 1,
                _ => return false,
            }
        }
        i == rest.len()
    }
}

/// A configured route.
pub struct Route {
    /// Shared so that logs and metrics can hold it cheaply.
    pub name: Arc<str>,
    pub format: Arc<dyn Format>,
    pub path: Vec<PathPart>,
    pub namespace: NamespaceSource,
    pub upstream: Arc<Upstream>,
    pub strip_prefix: bool,
    pub access_rules: Vec<AccessRule>,
}

impl Route {
    /// The access a request needs: the first matching override, else the format's rule.
    pub fn access(&self, method: &Method, rest: &[&str], query: Option<&str>) -> Access {
        self.deciding_rule(method, rest).map_or_else(
            || self.format.access(method, rest, query),
            |rule| rule.access,
        )
    }

    /// Whether a request of this `access` may carry a multipart form: a
    /// write that is an upload of a format that sends one (twine, `nuget
    /// push`) or that the deciding rule marks `multipart = true`. Asked only
    /// of multipart requests (and by `explain`), so the rules are matched a
    /// second time off the hot path.
    pub fn accepts_multipart(&self, method: &Method, rest: &[&str], access: Access) -> bool {
        access == Access::Write
            && (self.format.uploads_multipart()
                || self
                    .deciding_rule(method, rest)
                    .is_some_and(|rule| rule.multipart))
    }

    /// The override that decides a request's access: the first that matches.
    fn deciding_rule(&self, method: &Method, rest: &[&str]) -> Option<&AccessRule> {
        self.access_rules
            .iter()
            .find(|rule| rule.matches(method, rest))
    }

    fn literal_count(&self) -> usize {
        self.path
            .iter()
            .filter(|p| matches!(p, PathPart::Literal(_)))
            .count()
    }

    /// The path pattern as written in config.
    pub fn path_pattern(&self) -> String {
        self.path
            .iter()
            .map(|p| match p {
                PathPart::Literal(s) => format!("/{s}"),
                PathPart::Namespace => "/{namespace}".to_string(),
            })
            .collect()
    }
}

/// A request matched to a route.
pub struct Matched<'a> {
    pub route: &'a Route,
    /// The route's position in the table: the key of per-route state kept
    /// beside the config (its metrics).
    pub index: usize,
    pub namespace: Cow<'a, str>,
    /// How many leading segments the route prefix took.
    pub prefix_len: usize,
}

impl Matched<'_> {
    /// The path and query forwarded upstream: the upstream base path, then the
    /// normalized path (minus the prefix when stripped), re-encoded canonically.
    ///
    /// A stripped prefix that held a `{namespace}` placeholder leaves the
    /// namespace in its place (`/api/v4/projects/acme%2Fweb/packages/generic/f`
    /// → `<base>/acme/web/f`): stripped with it, every namespace would reach
    /// the same upstream path, and a token of one project another's packages.
    ///
    /// The base path, a namespace's steps and canonical escapes can make
    /// the forwarded path longer than the one received: past the limits the
    /// proxy keeps to ([`PathError::TooLong`]) it is not forwarded, so the
    /// upstream never gets a path the proxy would itself refuse.
    pub fn upstream_path_and_query(
        &self,
        path: &NormalizedPath,
        query: Option<&str>,
    ) -> Result<String, PathError> {
        let mut out = String::with_capacity(128);
        self.upstream_prefix(&mut out);
        let from = if self.route.strip_prefix {
            self.prefix_len
        } else {
            0
        };
        path.encode_from(from, &mut out);
        if out.is_empty() {
            out.push('/');
        }
        let segments = out.split('/').filter(|s| !s.is_empty()).count();
        if out.len() > normalize::MAX_PATH || segments > normalize::MAX_SEGMENTS {
            return Err(PathError::TooLong);
        }
        if let Some(q) = query {
            out.push('?');
            out.push_str(q);
        }
        Ok(out)
    }

    /// What every forwarded path of this request starts with: the upstream's
    /// base path, and the namespace where a stripped prefix held it (metadata
    /// URLs under it map back to the route's public prefix).
    pub fn upstream_prefix(&self, out: &mut String) {
        out.push_str(&self.route.upstream.base_path);
        if self.route.strip_prefix && self.route.namespace == NamespaceSource::Placeholder {
            for segment in self.namespace.split('/') {
                out.push('/');
                normalize::encode_segment(segment, out);
            }
        }
    }
}

/// Why a path matched no route it may use.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MatchError {
    #[error("no route for this path")]
    NoRoute,
    #[error(transparent)]
    Path(#[from] PathError),
    #[error("invalid namespace in the path")]
    InvalidNamespace,
}

/// All routes, most specific first.
#[derive(Default)]
pub struct RouteTable {
    routes: Vec<Route>,
}

impl RouteTable {
    pub fn new(mut routes: Vec<Route>) -> RouteTable {
        routes.sort_by_key(|r| std::cmp::Reverse((r.path.len(), r.literal_count())));
        RouteTable { routes }
    }

    pub fn is_empty(&self) -> bool {
        self.routes.is_empty()
    }

    pub fn routes(&self) -> &[Route] {
        &self.routes
    }

    /// Finds the route for a normalized path and checks the encoded slashes
    /// and namespace it carries.
    pub fn find<'a>(&'a self, path: &'a NormalizedPath) -> Result<Matched<'a>, MatchError> {
        let (index, route, namespace_at) = self
            .routes
            .iter()
            .enumerate()
            .find_map(|(i, route)| prefix_match(route, path).map(|ns| (i, route, ns)))
            .ok_or_else(|| {
                if path.any_encoded_slash() {
                    MatchError::Path(PathError::EncodedSlash)
                } else {
                    MatchError::NoRoute
                }
            })?;
        let prefix_len = route.path.len();
        for (i, seg) in path.decoded().enumerate() {
            if !path.had_encoded_slash(i) {
                continue;
            }
            let allowed = Some(i) == namespace_at
                || (i >= prefix_len && route.format.allows_encoded_slash(seg));
            if !allowed {
                return Err(PathError::EncodedSlash.into());
            }
        }
        let namespace = match (&route.namespace, namespace_at) {
            (NamespaceSource::Fixed(ns), _) => Cow::Borrowed(ns.as_str()),
            (NamespaceSource::Placeholder, Some(i)) => {
                let ns = path.segment(i);
                validate_namespace(ns).map_err(|_| MatchError::InvalidNamespace)?;
                Cow::Borrowed(ns)
            }
            (NamespaceSource::Placeholder, None) => {
                unreachable!("validated: placeholder routes have {{namespace}}")
            }
            (NamespaceSource::InPath, _) => {
                let rest: Vec<&str> = path.decoded().skip(prefix_len).collect();
                Cow::Owned(route.format.namespace_in(&rest).unwrap_or_default())
            }
        };
        Ok(Matched {
            route,
            index,
            namespace,
            prefix_len,
        })
    }
}

/// Whether `route` is a segment-wise prefix of `path`; returns where `{namespace}` sat.
fn prefix_match(route: &Route, path: &NormalizedPath) -> Option<Option<usize>> {
    if path.len() < route.path.len() {
        return None;
    }
    let mut namespace_at = None;
    for (i, (part, seg)) in route.path.iter().zip(path.decoded()).enumerate() {
        match part {
            PathPart::Literal(lit) if lit == seg => {}
            PathPart::Namespace => namespace_at = Some(i),
            PathPart::Literal(_) => return None,
        }
    }
    Some(namespace_at)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::by_name;

    fn upstream(base: &str) -> Arc<Upstream> {
        Arc::new(Upstream {
            name: "up".into(),
            scheme: http::uri::Scheme::HTTP,
            authority: "127.0.0.1:4873".parse().unwrap(),
            host: HeaderValue::from_static("127.0.0.1:4873"),
            base_path: base.into(),
            authorization: None,
            tls: None,
        })
    }

    fn route(name: &str, format: &str, path: &str, ns: Option<&str>, strip: bool) -> Route {
        Route {
            name: name.into(),
            format: by_name(format).unwrap(),
            path: parse_path(path).unwrap(),
            namespace: ns.map_or(NamespaceSource::Placeholder, |n| {
                NamespaceSource::Fixed(n.into())
            }),
            upstream: upstream(""),
            strip_prefix: strip,
            access_rules: vec![],
        }
    }

    fn table() -> RouteTable {
        RouteTable::new(vec![
            route("acme-npm", "npm", "/npm/acme", Some("acme"), true),
            route("web-npm", "npm", "/npm/acme/web", Some("acme/web"), true),
            route(
                "gl",
                "generic",
                "/api/v4/projects/{namespace}/packages/generic",
                None,
                true,
            ),
            route("files", "generic", "/files", Some("acme"), false),
        ])
    }

    fn find(t: &RouteTable, raw: &str) -> Result<(String, String, String), MatchError> {
        let path = NormalizedPath::parse(raw)?;
        let m = t.find(&path)?;
        Ok((
            m.route.name.to_string(),
            m.namespace.to_string(),
            m.upstream_path_and_query(&path, None)?,
        ))
    }

    #[test]
    fn longest_prefix_wins_on_segment_boundaries() {
        let t = table();
        assert_eq!(find(&t, "/npm/acme/web/left-pad").unwrap().0, "web-npm");
        assert_eq!(find(&t, "/npm/acme/webby/left-pad").unwrap().0, "acme-npm");
        assert_eq!(find(&t, "/npm/acme").unwrap().0, "acme-npm");
        assert_eq!(find(&t, "/npm/acme-other/x"), Err(MatchError::NoRoute));
        assert_eq!(find(&t, "/NPM/acme/x"), Err(MatchError::NoRoute));
        assert_eq!(find(&t, "/"), Err(MatchError::NoRoute));
    }

    #[test]
    fn strip_prefix_and_canonical_forwarding() {
        let t = table();
        assert_eq!(find(&t, "/npm/acme/web/left-pad").unwrap().2, "/left-pad");
        assert_eq!(find(&t, "/npm/acme/web").unwrap().2, "/");
        assert_eq!(find(&t, "/npm/acme/web/").unwrap().2, "/");
        assert_eq!(find(&t, "/files/a%20b.txt").unwrap().2, "/files/a%20b.txt");
        assert_eq!(find(&t, "/npm/acme/web/@s%2fpkg").unwrap().2, "/@s%2Fpkg");
    }

    #[test]
    fn placeholder_takes_one_decoded_segment() {
        let t = table();
        let (name, ns, fwd) = find(
            &t,
            "/api/v4/projects/acme%2Fweb/packages/generic/pkg/1.0/f.bin",
        )
        .unwrap();
        assert_eq!((name.as_str(), ns.as_str()), ("gl", "acme/web"));
        // Stripped, the prefix leaves its namespace: one project's packages
        // never share an upstream path with another's.
        assert_eq!(fwd, "/acme/web/pkg/1.0/f.bin");
        let other = find(
            &t,
            "/api/v4/projects/acme%2Fapi/packages/generic/pkg/1.0/f.bin",
        );
        assert_eq!(other.unwrap().2, "/acme/api/pkg/1.0/f.bin");
        assert_eq!(
            find(&t, "/api/v4/projects/acme/packages/generic/x")
                .unwrap()
                .1,
            "acme"
        );
        assert_eq!(
            find(&t, "/api/v4/projects/acme%2F%2Fx/packages/generic/x"),
            Err(MatchError::InvalidNamespace)
        );
        // A dot step inside an encoded slash is one for an upstream that
        // decodes before it resolves: refused before any route is asked.
        assert_eq!(
            find(&t, "/api/v4/projects/acme%2F..%2Fx/packages/generic/x"),
            Err(MatchError::Path(PathError::DotSegment))
        );
    }

    /// A namespace's steps come back as segments once its prefix is
    /// stripped: past the proxy's own limit the path is not forwarded.
    #[test]
    fn a_forwarded_path_keeps_to_the_limits_of_a_received_one() {
        let t = table();
        let namespace = vec!["n"; 60].join("%2F");
        let deep = format!("/api/v4/projects/{namespace}/packages/generic/a/b/c/d/e");
        assert_eq!(find(&t, &deep), Err(MatchError::Path(PathError::TooLong)));
        let shallow = format!("/api/v4/projects/{namespace}/packages/generic/a/b/c/d");
        assert_eq!(find(&t, &shallow).unwrap().2.split('/').count(), 65);
    }

    #[test]
    fn encoded_slashes_only_where_allowed() {
        let t = table();
        assert_eq!(
            find(&t, "/files/a%2Fb"),
            Err(MatchError::Path(PathError::EncodedSlash))
        );
        assert_eq!(
            find(&t, "/npm/acme/web/left%2fpad"),
            Err(MatchError::Path(PathError::EncodedSlash))
        );
        assert_eq!(
            find(&t, "/npm/acme/web/@x%2F_y"),
            Err(MatchError::Path(PathError::EncodedSlash))
        );
        assert_eq!(
            find(&t, "/npm%2Facme/web/x"),
            Err(MatchError::Path(PathError::EncodedSlash))
        );
        assert_eq!(
            find(&t, "/api/v4/projects/acme/packages/generic/a%2Fb"),
            Err(MatchError::Path(PathError::EncodedSlash))
        );
    }

    #[test]
    fn route_paths_and_patterns_parse_by_their_grammar() {
        use PathPart::{Literal as Lit, Namespace};
        assert_eq!(
            parse_path("/npm/{namespace}/").unwrap(),
            [Lit("npm".into()), Namespace]
        );
        assert_eq!(parse_path("/").unwrap(), []);
        assert_eq!(
            parse_pattern("/api/*/charts/**").unwrap(),
            [
                PatternPart::Literal("api".into()),
                PatternPart::AnySegment,
                PatternPart::Literal("charts".into()),
                PatternPart::AnyRest,
            ]
        );
        let refused = [
            (parse_path("npm").unwrap_err(), "must start with '/'"),
            (
                parse_path("/{namespace}/{namespace}").unwrap_err(),
                "only once",
            ),
            (parse_path("/a/../b").unwrap_err(), "invalid path segment"),
            (parse_path("/a%2Fb").unwrap_err(), "invalid path segment"),
            (parse_path("/a//b").unwrap_err(), "invalid path segment"),
            (parse_pattern("api").unwrap_err(), "must start with '/'"),
            (parse_pattern("/**/x").unwrap_err(), "may only end"),
            (parse_pattern("/a*").unwrap_err(), "invalid pattern segment"),
            (
                parse_pattern("/./x").unwrap_err(),
                "invalid pattern segment",
            ),
        ];
        for (error, expected) in refused {
            assert!(
                error.contains(expected),
                "{error:?} should say {expected:?}"
            );
        }
    }

    #[test]
    fn access_overrides_come_first() {
        let mut r = route("m", "maven", "/maven", Some("acme"), true);
        r.access_rules.push(AccessRule {
            method: Some(Method::GET),
            pattern: vec![PatternPart::AnyRest],
            access: Access::Write,
            multipart: false,
        });
        r.access_rules.push(AccessRule {
            method: None,
            pattern: parse_pattern("/admin/*").unwrap(),
            access: Access::Refused,
            multipart: false,
        });
        assert_eq!(r.access(&Method::GET, &["a", "b"], None), Access::Write);
        assert_eq!(
            r.access(&Method::PUT, &["admin", "x"], None),
            Access::Refused
        );
        assert_eq!(
            r.access(&Method::PUT, &["admin", "x", "y"], None),
            Access::Write
        );
        assert_eq!(
            r.access(&Method::HEAD, &["a"], None),
            Access::Write,
            "a GET rule covers HEAD"
        );
        assert_eq!(r.access(&Method::PUT, &["a"], None), Access::Write);
        let mut head_only = route("h", "maven", "/maven", Some("acme"), true);
        head_only.access_rules.push(AccessRule {
            method: Some(Method::HEAD),
            pattern: vec![PatternPart::AnyRest],
            access: Access::Refused,
            multipart: false,
        });
        assert_eq!(head_only.access(&Method::GET, &["a"], None), Access::Read);
    }

    #[test]
    fn multipart_is_taken_only_where_the_deciding_rule_says_so() {
        let rule = |method: Method, pattern: &str, multipart| AccessRule {
            method: Some(method),
            pattern: parse_pattern(pattern).unwrap(),
            access: Access::Write,
            multipart,
        };
        let mut r = route("c", "generic", "/charts", Some("acme"), true);
        // First match wins: the plain rule before it shadows `api/x/charts`.
        r.access_rules
            .push(rule(Method::POST, "/api/x/charts", false));
        r.access_rules
            .push(rule(Method::POST, "/api/*/charts", true));
        r.access_rules.push(rule(Method::POST, "/**", false));
        let takes = |method: Method, rest: &[&str]| {
            let access = r.access(&method, rest, None);
            r.accepts_multipart(&method, rest, access)
        };
        assert!(takes(Method::POST, &["api", "stable", "charts"]));
        assert!(!r.accepts_multipart(&Method::POST, &["api", "stable", "charts"], Access::Read));
        assert!(!takes(Method::POST, &["api", "x", "charts"]));
        assert!(!takes(Method::PUT, &["api", "stable", "charts"]));
        assert!(!takes(Method::POST, &["api", "stable", "charts", "more"]));
        assert!(!takes(Method::POST, &["other"]));
        // A format whose uploads are multipart takes them without a rule.
        let pypi = route("p", "pypi", "/pypi", Some("acme"), true);
        assert!(pypi.accepts_multipart(&Method::POST, &[], Access::Write));
        assert!(!pypi.accepts_multipart(&Method::GET, &["simple"], Access::Read));
    }
}
