//! Forward-auth mode: tokengate as the decision service an edge proxy asks
//! about each request (nginx `auth_request`, Traefik ForwardAuth, Envoy
//! `ext_authz`). The edge proxy describes the original request; this module
//! turns that description back into a request head and hands it to the very
//! phases the proxy mode runs ([`Proxy::process`] with [`Mode::Decide`]), so
//! both modes normalize, match, read credentials and decide alike. Only what
//! differs lives here: who may ask, where the original method and URI come
//! from, and how a verdict is told.

use std::net::SocketAddr;

use super::body::Buffered;
use bytes::Bytes;
use http::request::Parts;
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode, Uri};
use http_body_util::Either;
use hyper::body::Incoming;

use super::{client, headers, Mode, Proxy, ProxyError, ResponseBody};
use crate::config::ForwardAuthConfig;
use crate::token::TokenRecord;

/// Which edge proxy asks, told by the decision listener's path: each has its
/// own way of describing the original request, and a header one edge proxy
/// passes through from the client must never be read as another's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// `GET /nginx`; the original method and URI in configured headers.
    Nginx,
    /// `GET /traefik`; `X-Forwarded-Method` and `X-Forwarded-Uri`.
    Traefik,
    /// The original method, and the original path under the configured prefix.
    Envoy,
}

const FORWARDED_METHOD: HeaderName = HeaderName::from_static("x-forwarded-method");
const FORWARDED_URI: HeaderName = HeaderName::from_static("x-forwarded-uri");
const REAL_STATUS: HeaderName = HeaderName::from_static("x-tokengate-status");

impl Protocol {
    fn of(path: &str, config: &ForwardAuthConfig) -> Option<Protocol> {
        match path {
            "/nginx" => Some(Protocol::Nginx),
            "/traefik" => Some(Protocol::Traefik),
            _ => path
                .strip_prefix(config.envoy_path_prefix.as_str())
                .filter(|rest| rest.starts_with('/'))
                .map(|_| Protocol::Envoy),
        }
    }
}

/// The original request's head as the edge proxy describes it: its method and
/// URI, and the headers of the check request (which carry the original's).
pub fn original_head(
    mut check: Parts,
    protocol: Protocol,
    config: &ForwardAuthConfig,
) -> Result<Parts, ProxyError> {
    let (method, uri) = match protocol {
        Protocol::Nginx => (
            header(&check.headers, &config.original_method_header)?,
            header(&check.headers, &config.original_uri_header)?,
        ),
        Protocol::Traefik => (
            header(&check.headers, &FORWARDED_METHOD)?,
            header(&check.headers, &FORWARDED_URI)?,
        ),
        Protocol::Envoy => {
            let target = check
                .uri
                .path_and_query()
                .map_or("", |pq| pq.as_str())
                .strip_prefix(config.envoy_path_prefix.as_str())
                .unwrap_or_default();
            (check.method.as_str(), target)
        }
    };
    let method = Method::from_bytes(method.as_bytes())
        .map_err(|_| ProxyError::BadCheck("the original method is not a method"))?;
    let uri = uri
        .parse::<Uri>()
        .ok()
        .filter(|u| u.scheme().is_none() && u.path().starts_with('/'))
        .ok_or(ProxyError::BadCheck(
            "the original URI is not a path and query",
        ))?;
    check.method = method;
    check.uri = uri;
    Ok(check)
}

fn header<'h>(headers: &'h HeaderMap, name: &HeaderName) -> Result<&'h str, ProxyError> {
    let mut values = headers.get_all(name).iter();
    match (values.next(), values.next()) {
        (Some(value), None) => value.to_str().map_err(|_| {
            ProxyError::BadCheck("a header describing the original request is not text")
        }),
        (None, _) => Err(ProxyError::BadCheck(
            "the headers describing the original request are missing",
        )),
        // Two values: one may be the client's own, passed through.
        (Some(_), Some(_)) => Err(ProxyError::BadCheck(
            "a header describing the original request is repeated",
        )),
    }
}

/// The answer to an allowed request: 200, naming the token for the edge proxy
/// to pass upstream (`X-Tokengate-Token-Id`, `-User`, `-Scopes`).
pub fn allowed(token: &TokenRecord) -> Response<ResponseBody> {
    let mut response = Response::new(Either::Right(Buffered::new(Bytes::new())));
    headers::identify(response.headers_mut(), token);
    response
}

/// nginx takes any status from an auth subrequest but 2xx, 401 and 403 as its
/// own failure (500): other refusals become 403, their status kept in
/// `X-Tokengate-Status` for `auth_request_set`.
fn for_nginx(mut response: Response<ResponseBody>) -> Response<ResponseBody> {
    let status = response.status();
    if status.is_success() || status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN
    {
        return response;
    }
    *response.status_mut() = StatusCode::FORBIDDEN;
    response
        .headers_mut()
        .insert(REAL_STATUS, HeaderValue::from(status.as_u16()));
    response
}

impl Proxy {
    /// Answers one request on the decision listener.
    pub async fn check(&self, req: Request<Incoming>, peer: SocketAddr) -> Response<ResponseBody> {
        let Some(config) = &self.config.forward_auth else {
            return ProxyError::NoRoute.into_response(false, &Default::default());
        };
        let (check, _body) = req.into_parts();
        let protocol = Protocol::of(check.uri.path(), config);
        let trusted = config
            .trusted_peers
            .iter()
            .any(|net| net.contains(&peer.ip()));
        let head = match protocol {
            _ if !trusted => Err(ProxyError::UntrustedPeer),
            None => Err(ProxyError::NoRoute),
            Some(protocol) => original_head(check, protocol, config),
        };
        let response = match head {
            Ok(head) => {
                let client = client::seen_by_edge(peer.ip(), &head.headers);
                self.respond(head, Mode::Decide, client).await
            }
            Err(e) => {
                tracing::info!(
                    target: "tokengate::audit",
                    event = "decision_request_refused",
                    peer = %peer.ip(),
                    reason = e.reason(),
                );
                e.into_response(false, &Default::default())
            }
        };
        match protocol {
            Some(Protocol::Nginx) => for_nginx(response),
            _ => response,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> ForwardAuthConfig {
        ForwardAuthConfig {
            listen: "127.0.0.1:0".parse().unwrap(),
            trusted_peers: vec!["127.0.0.1/32".parse().unwrap()],
            original_method_header: HeaderName::from_static("x-original-method"),
            original_uri_header: HeaderName::from_static("x-original-uri"),
            envoy_path_prefix: "/envoy".into(),
        }
    }

    fn check(method: &str, target: &str, headers: &[(&str, &str)]) -> Parts {
        let mut req = Request::builder().method(method).uri(target);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        req.body(()).unwrap().into_parts().0
    }

    #[test]
    fn each_protocol_reads_only_its_own_description() {
        let c = config();
        let both = [
            ("x-original-method", "PUT"),
            ("x-original-uri", "/npm/acme/web/pkg?write=1"),
            ("x-forwarded-method", "GET"),
            ("x-forwarded-uri", "/npm/acme/web/pkg"),
        ];
        let nginx = original_head(check("GET", "/nginx", &both), Protocol::Nginx, &c).unwrap();
        assert_eq!(
            (nginx.method.as_str(), nginx.uri.to_string().as_str()),
            ("PUT", "/npm/acme/web/pkg?write=1")
        );
        let traefik =
            original_head(check("GET", "/traefik", &both), Protocol::Traefik, &c).unwrap();
        assert_eq!(
            (traefik.method.as_str(), traefik.uri.path()),
            ("GET", "/npm/acme/web/pkg")
        );
        assert_eq!(
            traefik.headers.len(),
            both.len(),
            "the original's headers stay"
        );
        let envoy = original_head(
            check("DELETE", "/envoy/v2/acme/web/app/manifests/v1?x=%2F", &both),
            Protocol::Envoy,
            &c,
        )
        .unwrap();
        assert_eq!(envoy.method, Method::DELETE);
        assert_eq!(envoy.uri.to_string(), "/v2/acme/web/app/manifests/v1?x=%2F");
    }

    #[test]
    fn missing_repeated_or_absolute_descriptions_are_refused() {
        let c = config();
        for headers in [
            vec![("x-original-method", "GET")],
            vec![("x-original-uri", "/npm/acme/web/pkg")],
            vec![
                ("x-original-method", "GET"),
                ("x-original-uri", "/npm/acme/web/pkg"),
                ("x-original-uri", "/npm/acme/api/pkg"),
            ],
            vec![
                ("x-original-method", "GET"),
                ("x-original-uri", "http://elsewhere/npm/acme/web/pkg"),
            ],
            vec![("x-original-method", "G T"), ("x-original-uri", "/npm")],
            vec![("x-original-method", "GET"), ("x-original-uri", "npm/acme")],
        ] {
            let r = original_head(check("GET", "/nginx", &headers), Protocol::Nginx, &c);
            assert!(matches!(r, Err(ProxyError::BadCheck(_))), "{headers:?}");
        }
    }

    #[test]
    fn the_listener_path_names_the_protocol() {
        let c = config();
        assert_eq!(Protocol::of("/nginx", &c), Some(Protocol::Nginx));
        assert_eq!(Protocol::of("/traefik", &c), Some(Protocol::Traefik));
        assert_eq!(Protocol::of("/envoy/v2/", &c), Some(Protocol::Envoy));
        for other in ["/", "/envoy", "/envoyx/v2", "/nginx/", "/traefik/x"] {
            assert_eq!(Protocol::of(other, &c), None, "{other}");
        }
    }

    #[test]
    fn nginx_gets_403_for_refusals_it_cannot_pass_on() {
        for (status, told, real) in [
            (200, 200, None),
            (401, 401, None),
            (403, 403, None),
            (400, 403, Some("400")),
            (404, 403, Some("404")),
            (503, 403, Some("503")),
        ] {
            let mut r = Response::new(Either::Right(Buffered::new(Bytes::new())));
            *r.status_mut() = StatusCode::from_u16(status).unwrap();
            let r = for_nginx(r);
            assert_eq!(r.status().as_u16(), told);
            assert_eq!(
                r.headers().get(&REAL_STATUS).map(|v| v.to_str().unwrap()),
                real
            );
        }
    }
}
