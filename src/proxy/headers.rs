//! Header rules for both directions. Client credentials, forwarding and
//! identity headers never pass through: the proxy removes every copy and
//! then sets its own, so neither a client's copy nor its `Connection:`
//! header can change what the upstream sees.

use std::net::IpAddr;
use std::sync::LazyLock;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use smallvec::SmallVec;

use crate::token::{Scope, ScopeSet, TokenRecord};

// The name lists are `match`es on the name's text: a header is looked up
// in them twice per request for each header it carries, and a match
// (length first, then the bytes) is cheaper than comparing names in turn.

/// Hop-by-hop headers (RFC 9110 §7.6.1, plus the legacy ones).
fn is_hop_by_hop(name: &str) -> bool {
    matches!(
        name,
        "connection"
            | "te"
            | "trailer"
            | "transfer-encoding"
            | "upgrade"
            | "proxy-authorization"
            | "proxy-authenticate"
            | "keep-alive"
            | "proxy-connection"
    )
}

/// Credential headers of any format: never forwarded.
fn is_credential(name: &str) -> bool {
    credential(name).is_some()
}

/// A credential header's name as a constant (see [`constant_twin`]).
fn credential(name: &str) -> Option<HeaderName> {
    const DEPLOY_TOKEN: HeaderName = HeaderName::from_static("deploy-token");
    const X_NUGET_APIKEY: HeaderName = HeaderName::from_static("x-nuget-apikey");
    const JOB_TOKEN: HeaderName = HeaderName::from_static("job-token");
    const PRIVATE_TOKEN: HeaderName = HeaderName::from_static("private-token");
    const X_JFROG_ART_API: HeaderName = HeaderName::from_static("x-jfrog-art-api");
    match name {
        "authorization" => Some(header::AUTHORIZATION),
        "deploy-token" => Some(DEPLOY_TOKEN),
        "x-nuget-apikey" => Some(X_NUGET_APIKEY),
        "job-token" => Some(JOB_TOKEN),
        "private-token" => Some(PRIVATE_TOKEN),
        // Artifactory's API key header.
        "x-jfrog-art-api" => Some(X_JFROG_ART_API),
        // Upstream sessions (GitLab's, Nexus's, Harbor's): a deploy token
        // is the only credential the proxy takes.
        "cookie" => Some(header::COOKIE),
        _ => None,
    }
}

/// Forwarding headers: the ones the proxy sets, and those through which
/// upstreams learn the public scheme, host or base URL otherwise (Rack and
/// so GitLab read `X-Forwarded-Scheme` and `X-Forwarded-Ssl` before
/// `X-Forwarded-Proto`; Artifactory builds its URLs from
/// `X-Artifactory-Override-Base-Url`, version 7 from
/// `X-JFrog-Override-Base-Url`). Only the proxy tells the upstream where it
/// is reached. Every `X-Forwarded-*` is the proxy's: the family also names
/// users (`X-Forwarded-User`, `-Email`, `-Groups`, `-Access-Token`).
fn is_forwarding(name: &str) -> bool {
    name.starts_with("x-forwarded-")
        || matches!(
            name,
            "forwarded"
                | "host"
                | "x-url-scheme"
                | "front-end-https"
                | "x-artifactory-override-base-url"
                | "x-jfrog-override-base-url"
                | "x-real-ip"
        )
}

/// Headers through which an edge in front of an upstream asserts who the
/// user is, for the upstreams that trust one (Nexus's Remote User Token
/// realm, Gitea's and Grafana's reverse-proxy login, Artifactory's SSO
/// header, oauth2-proxy's `X-Auth-Request-*`): from a client, a claim to be
/// any account; the decision was made for the deploy token.
fn is_user_assertion(name: &str) -> bool {
    name.starts_with("x-webauth-")
        || name.starts_with("x-auth-request-")
        || name.starts_with("x-remote-")
        || name == "remote-user"
}

/// Why a request is refused for a header some upstream would act on beyond
/// what the decision saw, if it carries one:
/// - the real method or URL (Symfony, IIS, Express, Rack middleware): the
///   decision is made on the request line;
/// - Artifactory's upload directives: deploy-by-checksum writes a copy of
///   whichever artifact on the server has the named checksum, another
///   project's too, and an exploded archive writes the files it names; the
///   decision covers the request's path and body, not those. (Clients that
///   try a checksum deploy fall back to a plain upload when it fails.)
pub fn refused_header(headers: &HeaderMap) -> Option<&'static str> {
    headers.keys().find_map(|name| match name.as_str() {
        "x-http-method-override"
        | "x-http-method"
        | "x-method-override"
        | "x-original-url"
        | "x-rewrite-url" => Some(
            "headers that override the method or URL (X-HTTP-Method-Override, X-Original-URL, \
             X-Rewrite-URL) are not accepted: the request line is what is authorized",
        ),
        "x-checksum-deploy" | "x-explode-archive" | "x-explode-archive-atomic" => Some(
            "upload directives (X-Checksum-Deploy, X-Explode-Archive) are not accepted: \
             only the request's own path and body are authorized; upload the content",
        ),
        _ => None,
    })
}

/// Headers a `Connection:` list may not remove: framing and content.
fn is_protected(name: &str) -> bool {
    matches!(name, "content-length" | "content-type" | "content-encoding")
}

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

const IDENTITY_PREFIX: &str = "x-tokengate-";
const TOKEN_ID: HeaderName = HeaderName::from_static("x-tokengate-token-id");
const TOKEN_USER: HeaderName = HeaderName::from_static("x-tokengate-user");
const TOKEN_SCOPES: HeaderName = HeaderName::from_static("x-tokengate-scopes");

/// Removes hop-by-hop headers, the ones the `Connection` header names and
/// those `also` picks. One pass over the headers present (a handful), rather
/// than a lookup for each of the two dozen names that may not pass; nothing
/// is allocated unless more than eight headers go (a map cannot drop entries
/// while it is walked, so the doomed names are gathered first).
fn strip(headers: &mut HeaderMap, also: impl Fn(&str) -> bool) {
    for name in doomed(headers, also) {
        headers.remove(name);
    }
}

/// The headers `strip` removes.
fn doomed(headers: &HeaderMap, also: impl Fn(&str) -> bool) -> SmallVec<[HeaderName; 8]> {
    // The names `Connection` lists, beyond the hop-by-hop ones (most often none).
    let named: SmallVec<[&[u8]; 4]> = headers
        .get_all(header::CONNECTION)
        .iter()
        .flat_map(|value| value.as_bytes().split(|&b| b == b','))
        .map(<[u8]>::trim_ascii)
        .filter(|token| {
            !token.is_empty()
                && !token.eq_ignore_ascii_case(b"close")
                && !token.eq_ignore_ascii_case(b"keep-alive")
        })
        .collect();
    headers
        .keys()
        .filter(|name| {
            let name = name.as_str();
            is_hop_by_hop(name)
                || also(name)
                || (named
                    .iter()
                    .any(|n| n.eq_ignore_ascii_case(name.as_bytes()))
                    && !is_protected(name))
        })
        .map(constant_twin)
        .collect()
}

/// A name to remove by: the constant for a credential header, else a
/// clone. A name read off the wire that is not a standard one holds bytes
/// of its own, and its first clone allocates to share them; a credential
/// header is removed from nearly every request.
fn constant_twin(name: &HeaderName) -> HeaderName {
    credential(name.as_str()).unwrap_or_else(|| name.clone())
}

/// Client headers the proxy never forwards beyond the hop-by-hop ones:
/// credentials, the forwarding headers it sets itself, identity headers and
/// user assertions.
fn proxy_owned(name: &str) -> bool {
    is_credential(name)
        || is_forwarding(name)
        || name.starts_with(IDENTITY_PREFIX)
        || is_user_assertion(name)
}

/// What the proxy tells the upstream about the request.
pub struct Forwarding<'a> {
    /// The client's address, as `X-Forwarded-For`.
    pub forwarded_for: &'a HeaderValue,
    pub public_https: bool,
    /// The proxy's public authority, as `X-Forwarded-Host`.
    pub public_host: &'a HeaderValue,
    pub upstream_host: &'a HeaderValue,
    pub upstream_authorization: Option<&'a HeaderValue>,
    pub token: &'a TokenRecord,
    /// Ask for an unencoded body, so metadata can be rewritten.
    pub identity_encoding: bool,
}

/// A request head's size as sent, near enough (target and header lines).
/// hyper checks its own limit only between reads, so a head that arrives
/// in one read may pass it; this is the check that holds.
pub fn head_size(head: &http::request::Parts) -> usize {
    let target = head.uri.path_and_query().map_or(0, |pq| pq.as_str().len());
    let lines: usize = head
        .headers
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len() + 4)
        .sum();
    target + lines
}

/// Turns client request headers into upstream request headers.
pub fn to_upstream(headers: &mut HeaderMap, fwd: &Forwarding<'_>) {
    strip(headers, proxy_owned);
    headers.insert(header::HOST, fwd.upstream_host.clone());
    headers.insert(X_FORWARDED_FOR, fwd.forwarded_for.clone());
    let proto = HeaderValue::from_static(if fwd.public_https { "https" } else { "http" });
    headers.insert(X_FORWARDED_PROTO, proto);
    headers.insert(X_FORWARDED_HOST, fwd.public_host.clone());
    identify(headers, fwd.token);
    if let Some(auth) = fwd.upstream_authorization {
        headers.insert(header::AUTHORIZATION, auth.clone());
    }
    if fwd.identity_encoding {
        headers.insert(
            header::ACCEPT_ENCODING,
            HeaderValue::from_static("identity"),
        );
    }
}

/// Names the deploy token a request was allowed for: to the upstream in the
/// proxy mode, to the edge proxy in the forward-auth mode.
pub fn identify(headers: &mut HeaderMap, token: &TokenRecord) {
    headers.insert(TOKEN_ID, HeaderValue::from(token.id));
    set(headers, TOKEN_USER, token.username.as_str());
    headers.insert(TOKEN_SCOPES, scopes(token.scopes));
}

/// An address as a header value. IPv4 is written by hand: `Display` goes
/// through the formatting machinery, a noticeable share of a request's work.
pub fn address(ip: IpAddr) -> HeaderValue {
    let IpAddr::V4(v4) = ip else {
        return HeaderValue::try_from(ip.to_string()).expect("an address is a header value");
    };
    let mut text = [0u8; 15];
    let mut len = 0;
    for (i, octet) in v4.octets().into_iter().enumerate() {
        if i > 0 {
            text[len] = b'.';
            len += 1;
        }
        if octet >= 100 {
            text[len] = b'0' + octet / 100;
            len += 1;
        }
        if octet >= 10 {
            text[len] = b'0' + octet / 10 % 10;
            len += 1;
        }
        text[len] = b'0' + octet % 10;
        len += 1;
    }
    HeaderValue::from_bytes(&text[..len]).expect("digits and dots")
}

/// A scope set as a header value, from a table of all of them (made once).
fn scopes(set: ScopeSet) -> HeaderValue {
    static ALL: LazyLock<Vec<HeaderValue>> = LazyLock::new(|| {
        (0..=u8::MAX >> (8 - Scope::ALL.len()))
            .map(|bits| {
                let set = ScopeSet::from_bits(bits);
                HeaderValue::try_from(set.to_string()).expect("scope names are header values")
            })
            .collect()
    });
    ALL[usize::from(set.bits())].clone()
}

/// Sets a header whose value may not be a valid header value (then it is left out).
fn set<V>(headers: &mut HeaderMap, name: HeaderName, value: V)
where
    HeaderValue: TryFrom<V>,
{
    if let Ok(v) = HeaderValue::try_from(value) {
        headers.insert(name, v);
    }
}

/// Turns upstream response headers into client response headers. Cookies
/// stay behind: a session the upstream opens is the proxy's own account's,
/// with all of its access, whoever's deploy token the request carried. So
/// do challenges: a client sends its stored credentials (the deploy
/// token) to the realm one names, which may be another host's.
pub fn to_downstream(headers: &mut HeaderMap) {
    strip(headers, |name| {
        name == "set-cookie" || name == "www-authenticate"
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::token::OwnerKind;

    fn record() -> TokenRecord {
        TokenRecord {
            id: 3,
            name: "ci".into(),
            username: "bot".into(),
            owner_kind: OwnerKind::Group,
            owner_path: "acme".into(),
            scopes: ScopeSet::parse_list("read_package_registry").unwrap(),
            expires_at: None,
            revoked: false,
            created_at: chrono::Utc::now(),
            last_used_at: None,
        }
    }

    #[test]
    fn head_size_counts_the_target_and_every_header_line() {
        let head = http::Request::get("/a/b?c=d")
            .header("x-big", "v".repeat(100))
            .header("x-big", "w")
            .body(())
            .unwrap()
            .into_parts()
            .0;
        // "/a/b?c=d" (8), "x-big: " + 100 + CRLF (109), "x-big: w" + CRLF (10).
        assert_eq!(head_size(&head), 8 + 109 + 10);
    }

    #[test]
    fn client_cannot_smuggle_or_strip_proxy_headers() {
        let mut h = HeaderMap::new();
        for (k, v) in [
            ("authorization", "Bearer secret"),
            ("deploy-token", "secret"),
            ("private-token", "secret"),
            ("job-token", "secret"),
            ("x-nuget-apikey", "secret"),
            ("x-forwarded-for", "6.6.6.6"),
            ("x-forwarded-host", "evil"),
            ("forwarded", "for=6.6.6.6"),
            ("x-forwarded-scheme", "http"),
            ("x-forwarded-ssl", "off"),
            ("x-forwarded-prefix", "/evil"),
            (
                "x-artifactory-override-base-url",
                "https://evil.test/artifactory",
            ),
            ("x-jfrog-override-base-url", "https://evil.test/artifactory"),
            ("x-forwarded-user", "admin"),
            ("x-forwarded-access-token", "t"),
            ("remote-user", "admin"),
            ("x-remote-user", "admin"),
            ("x-webauth-user", "admin"),
            ("x-auth-request-user", "admin"),
            ("x-tokengate-token-id", "1"),
            ("x-tokengate-admin", "yes"),
            (
                "connection",
                "x-tokengate-user, x-forwarded-for, content-length, x-custom",
            ),
            ("x-custom", "gone"),
            ("content-length", "5"),
            ("keep-alive", "timeout=5"),
            ("accept", "application/json"),
        ] {
            h.append(k, HeaderValue::from_static(v));
        }
        let token = record();
        let up = HeaderValue::from_static("Basic cHJveHk6cHc=");
        to_upstream(
            &mut h,
            &Forwarding {
                forwarded_for: &address("10.1.2.3".parse().unwrap()),
                public_https: false,
                public_host: &HeaderValue::from_static("proxy.test"),
                upstream_host: &HeaderValue::from_static("127.0.0.1:4873"),
                upstream_authorization: Some(&up),
                token: &token,
                identity_encoding: false,
            },
        );
        assert_eq!(h["authorization"], "Basic cHJveHk6cHc=");
        assert_eq!(h.get_all("authorization").iter().count(), 1);
        for gone in [
            "deploy-token",
            "private-token",
            "job-token",
            "x-nuget-apikey",
            "forwarded",
            "x-forwarded-scheme",
            "x-forwarded-ssl",
            "x-forwarded-prefix",
            "x-artifactory-override-base-url",
            "x-jfrog-override-base-url",
            "x-forwarded-user",
            "x-forwarded-access-token",
            "remote-user",
            "x-remote-user",
            "x-webauth-user",
            "x-auth-request-user",
            "x-custom",
            "keep-alive",
            "connection",
            "x-tokengate-admin",
        ] {
            assert!(h.get(gone).is_none(), "{gone} was forwarded");
        }
        assert_eq!(h["x-forwarded-for"], "10.1.2.3");
        assert_eq!(h.get_all("x-forwarded-for").iter().count(), 1);
        assert_eq!(h["x-forwarded-host"], "proxy.test");
        assert_eq!(h["x-tokengate-token-id"], "3");
        assert_eq!(h["x-tokengate-user"], "bot");
        assert_eq!(h["x-tokengate-scopes"], "read_package_registry");
        assert_eq!(h["content-length"], "5");
        assert_eq!(h["host"], "127.0.0.1:4873");
        assert_eq!(h["accept"], "application/json");
    }

    #[test]
    fn response_loses_hop_headers_cookies_and_challenges() {
        let mut h = HeaderMap::new();
        // More than the eight names gathered without allocating.
        let named: Vec<String> = (0..12).map(|i| format!("x-hop-{i}")).collect();
        for name in &named {
            h.insert(
                HeaderName::try_from(name.as_str()).unwrap(),
                HeaderValue::from_static("v"),
            );
        }
        let list = named.join(" ,\t").to_uppercase();
        h.append("connection", HeaderValue::try_from(list).unwrap());
        h.append(
            "connection",
            HeaderValue::from_static("Keep-Alive, Content-Type,,"),
        );
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert("transfer-encoding", HeaderValue::from_static("chunked"));
        h.insert("content-type", HeaderValue::from_static("text/plain"));
        h.insert("x-hop-kept", HeaderValue::from_static("v"));
        h.insert("set-cookie", HeaderValue::from_static("session=upstream"));
        h.insert(
            "www-authenticate",
            HeaderValue::from_static("Bearer realm=\"https://elsewhere.test/token\""),
        );
        to_downstream(&mut h);
        let mut left: Vec<&str> = h.keys().map(HeaderName::as_str).collect();
        left.sort_unstable();
        assert_eq!(left, ["content-type", "x-hop-kept"]);
    }

    #[test]
    fn addresses_read_as_display_writes_them() {
        for ip in [
            "0.0.0.0",
            "9.10.99.100",
            "127.0.0.1",
            "255.255.255.255",
            "10.200.3.45",
            "::1",
            "2001:db8::8a2e:370:7334",
            "::ffff:192.0.2.1",
        ] {
            let ip: IpAddr = ip.parse().unwrap();
            assert_eq!(address(ip), ip.to_string().as_str());
        }
    }

    #[test]
    fn every_scope_set_has_its_header_value() {
        for bits in 0..=u8::MAX {
            let set = ScopeSet::from_bits(bits);
            assert_eq!(scopes(set), set.to_string().as_str());
        }
    }
}
