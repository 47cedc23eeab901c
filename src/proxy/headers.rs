//! Header rules for both directions. Client credentials, forwarding and
//! identity headers never pass through: the proxy removes every copy and
//! then sets its own, so neither a client's copy nor its `Connection:`
//! header can change what the upstream sees.

use std::net::IpAddr;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};

use crate::token::TokenRecord;

/// Hop-by-hop headers (RFC 9110 §7.6.1, plus the legacy ones).
const HOP_BY_HOP: &[&str] = &[
    "connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "proxy-authorization",
    "proxy-authenticate",
    "keep-alive",
    "proxy-connection",
];

/// Credential headers of any format: never forwarded.
const CREDENTIALS: &[&str] = &[
    "authorization",
    "deploy-token",
    "x-nuget-apikey",
    "job-token",
    "private-token",
];

/// Forwarding headers the proxy alone sets.
const FORWARDING: &[&str] = &[
    "forwarded",
    "host",
    "x-forwarded-for",
    "x-forwarded-proto",
    "x-forwarded-host",
    "x-forwarded-port",
    "x-forwarded-prefix",
    "x-real-ip",
];

/// Headers a `Connection:` list may not remove: framing and content.
const PROTECTED: &[&str] = &["content-length", "content-type", "content-encoding"];

const IDENTITY_PREFIX: &str = "x-tokengate-";

/// Removes hop-by-hop headers and the ones the `Connection` header names.
fn remove_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .filter(|name| !PROTECTED.contains(&name.as_str()))
        .collect();
    for name in named {
        headers.remove(name);
    }
    for name in HOP_BY_HOP {
        headers.remove(*name);
    }
}

/// What the proxy tells the upstream about the request.
pub struct Forwarding<'a> {
    pub client_ip: IpAddr,
    pub public_https: bool,
    /// The proxy's public authority, as `X-Forwarded-Host`.
    pub public_host: &'a str,
    pub upstream_host: &'a str,
    pub upstream_authorization: Option<&'a HeaderValue>,
    pub token: &'a TokenRecord,
    /// Ask for an unencoded body, so metadata can be rewritten.
    pub identity_encoding: bool,
}

/// Turns client request headers into upstream request headers.
pub fn to_upstream(headers: &mut HeaderMap, fwd: &Forwarding<'_>) {
    remove_hop_by_hop(headers);
    for name in CREDENTIALS.iter().chain(FORWARDING) {
        headers.remove(*name);
    }
    let identity: Vec<HeaderName> = headers
        .keys()
        .filter(|k| k.as_str().starts_with(IDENTITY_PREFIX))
        .cloned()
        .collect();
    for name in identity {
        headers.remove(name);
    }
    set(headers, "host", fwd.upstream_host.to_string());
    set(headers, "x-forwarded-for", fwd.client_ip.to_string());
    let proto = if fwd.public_https { "https" } else { "http" };
    set(headers, "x-forwarded-proto", proto.to_string());
    set(headers, "x-forwarded-host", fwd.public_host.to_string());
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
    set(headers, "x-tokengate-token-id", token.id.to_string());
    set(headers, "x-tokengate-user", token.username.clone());
    set(headers, "x-tokengate-scopes", token.scopes.to_string());
}

fn set(headers: &mut HeaderMap, name: &'static str, value: String) {
    if let Ok(v) = HeaderValue::from_str(&value) {
        headers.insert(HeaderName::from_static(name), v);
    }
}

/// Turns upstream response headers into client response headers.
pub fn to_downstream(headers: &mut HeaderMap) {
    remove_hop_by_hop(headers);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::token::{OwnerKind, ScopeSet};

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
                client_ip: "10.1.2.3".parse().unwrap(),
                public_https: false,
                public_host: "proxy.test",
                upstream_host: "127.0.0.1:4873",
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
}
