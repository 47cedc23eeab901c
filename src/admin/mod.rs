//! The admin listener, on an address of its own so that operators never
//! expose it with the registries: health, readiness, metrics, the
//! GitLab-compatible deploy-token API ([`api`]) and the web page ([`ui`]).
//! Everything but `/healthz` needs an admin credential ([`credentials`]).

mod api;
mod credentials;
mod ui;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::{GracefulConnection, GracefulShutdown};
use tokio::net::TcpListener;

use crate::config::AdminConfig;
use crate::metrics::Metrics;
use crate::proxy::FailureLimiter;
use crate::route::normalize::{form_decode, query_pairs};
use crate::tokens::TokenAdmin;
pub use credentials::AdminCredentials;
use credentials::Sessions;

/// Largest request body the admin endpoints read (forms and JSON).
const MAX_BODY: usize = 64 * 1024;
/// How long a request body may take to arrive: bodies are read before the
/// admin credential is checked, and a client trickling one must not hold a
/// connection (and a file descriptor) for as long as it likes.
const BODY_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// Everything the admin endpoints need.
pub struct Admin {
    metrics: Arc<Metrics>,
    tokens: Arc<TokenAdmin>,
    credentials: AdminCredentials,
    sessions: Sessions,
    /// Failed admin logins per client address.
    failures: FailureLimiter,
    /// The origin clients reach these endpoints at (`[admin] public_url`),
    /// for absolute links; `None`: this listener's scheme and the request's `Host`.
    public_origin: Option<String>,
    /// Cookies get `Secure` when clients speak TLS: to this listener or to
    /// the ingress in front of it.
    secure_cookies: bool,
}

impl Admin {
    pub fn new(config: &AdminConfig, metrics: Arc<Metrics>, tokens: Arc<TokenAdmin>) -> Admin {
        if config.tokens.is_empty() {
            tracing::warn!("no admin token configured: the admin API, web page, /readyz and /metrics refuse everyone");
        }
        Admin {
            metrics,
            tokens,
            credentials: AdminCredentials::new(config.tokens.clone()),
            sessions: Sessions::default(),
            failures: FailureLimiter::new(10, Duration::from_secs(60)),
            public_origin: config.public_url.as_ref().map(|u| u.origin.clone()),
            secure_cookies: config.tls.is_some()
                || config.public_url.as_ref().is_some_and(|u| u.https),
        }
    }

    /// `scheme://host` of absolute links in responses to `req`.
    fn origin(&self, req: &AdminRequest) -> String {
        if let Some(origin) = &self.public_origin {
            return origin.clone();
        }
        let host = req
            .headers
            .get(http::header::HOST)
            .and_then(|h| h.to_str().ok())
            .unwrap_or("localhost");
        let scheme = if self.secure_cookies { "https" } else { "http" };
        format!("{scheme}://{host}")
    }

    /// Applies a reloaded config's admin tokens. When they changed, web-page
    /// sessions end too: one started with a rotated-out token must not outlive it.
    /// A config without `[admin]` leaves none: the listener runs on until a
    /// restart, refusing every token (a leaked one is revoked by removing it).
    pub fn reload(&self, config: Option<&AdminConfig>) {
        let tokens = config.map_or(&[][..], |c| &c.tokens[..]);
        if self.credentials.replace(tokens) {
            self.sessions.clear();
            tracing::info!(
                admin_tokens = tokens.len(),
                "admin tokens reloaded; web-page sessions ended"
            );
        }
    }
}

/// A request as the admin handlers see it: body read, path and query split.
pub(crate) struct AdminRequest {
    pub method: Method,
    pub path: String,
    pub query: Option<String>,
    pub headers: http::HeaderMap,
    pub body: Bytes,
    pub peer: SocketAddr,
}

pub(crate) type AdminResponse = Response<Full<Bytes>>;

/// How long a client has for its first bytes, a TLS handshake, a request head.
const HEAD_TIMEOUT: Duration = Duration::from_secs(10);
/// The longest an admin connection is kept (API calls and page loads are short).
const CONNECTION_LIFETIME: Duration = Duration::from_secs(600);

/// Serves the admin endpoints until the task is dropped. HTTP/1 has hyper's
/// head timeout; HTTP/2, which has none, pings the peer and drops one that
/// does not answer (a peer that sent only the preface).
pub async fn serve(admin: Arc<Admin>, listener: TcpListener, tls: Option<crate::tls::ServerTls>) {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(HEAD_TIMEOUT);
    // Few streams per connection: the page and the API need no more, and a
    // sign-in form's body is read before anything is known of its sender.
    builder
        .http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(HEAD_TIMEOUT)
        .keep_alive_timeout(HEAD_TIMEOUT)
        .max_concurrent_streams(16);
    let builder = Arc::new(builder);
    let tls = tls.map(|t| tokio_rustls::TlsAcceptor::from(t.config));
    loop {
        let Ok((stream, peer)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let peer = crate::proxy::canonical_peer(peer);
        let admin = admin.clone();
        let builder = builder.clone();
        let tls = tls.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let admin = admin.clone();
                async move { Ok::<_, Infallible>(handle(&admin, req, peer).await) }
            });
            // A peer that sends nothing is dropped after the head timeout,
            // and no connection outlives CONNECTION_LIFETIME.
            match tls {
                None => {
                    let mut first = [0u8; 1];
                    let opened = tokio::time::timeout(HEAD_TIMEOUT, stream.peek(&mut first));
                    if matches!(opened.await, Ok(Ok(n)) if n > 0) {
                        let conn = builder.serve_connection(TokioIo::new(stream), service);
                        for_a_lifetime(conn).await;
                    }
                }
                Some(acceptor) => {
                    let handshake = tokio::time::timeout(HEAD_TIMEOUT, acceptor.accept(stream));
                    if let Ok(Ok(stream)) = handshake.await {
                        let conn = builder.serve_connection(TokioIo::new(stream), service);
                        for_a_lifetime(conn).await;
                    }
                }
            }
        });
    }
}

/// Serves a connection until it ends or has lived [`CONNECTION_LIFETIME`];
/// then it is asked to close after the request in flight (HTTP/1) or with a
/// GOAWAY (HTTP/2), and given [`HEAD_TIMEOUT`] to: a request is not cut.
async fn for_a_lifetime<C: GracefulConnection>(conn: C) {
    let graceful = GracefulShutdown::new();
    let conn = graceful.watch(conn);
    tokio::pin!(conn);
    if tokio::time::timeout(CONNECTION_LIFETIME, conn.as_mut())
        .await
        .is_err()
    {
        let closing = async { tokio::join!(graceful.shutdown(), conn) };
        let _ = tokio::time::timeout(HEAD_TIMEOUT, closing).await;
    }
}

async fn handle(admin: &Admin, req: Request<Incoming>, peer: SocketAddr) -> AdminResponse {
    let mut response = respond(admin, req, peer).await;
    let headers = response.headers_mut();
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(
        "x-content-type-options",
        HeaderValue::from_static("nosniff"),
    );
    response
}

async fn respond(admin: &Admin, req: Request<Incoming>, peer: SocketAddr) -> AdminResponse {
    let (parts, body) = req.into_parts();
    let path = parts.uri.path();
    if path == "/healthz" {
        return text(StatusCode::OK, "text/plain", "ok\n".into());
    }
    // The web page signs in with a form; everything else needs the admin
    // token, checked before the body is read: a client without it makes the
    // listener hold nothing.
    let page = path == "/ui" || path.starts_with("/ui/");
    let actor = if page {
        None
    } else {
        match authenticate(admin, &parts.headers, peer, path) {
            Ok(actor) => Some(actor),
            Err((status, why)) => return message(status, why),
        }
    };
    let read = tokio::time::timeout(BODY_READ_TIMEOUT, Limited::new(body, MAX_BODY).collect());
    let body = match read.await {
        Ok(Ok(collected)) => collected.to_bytes(),
        Ok(Err(_)) => {
            return message(
                StatusCode::PAYLOAD_TOO_LARGE,
                "413 Request Entity Too Large",
            )
        }
        Err(_) => {
            let mut response = message(StatusCode::REQUEST_TIMEOUT, "408 Request Timeout");
            // The rest of the body may still come: the connection cannot be reused.
            response
                .headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
            return response;
        }
    };
    let request = AdminRequest {
        method: parts.method,
        path: parts.uri.path().to_string(),
        query: parts.uri.query().map(str::to_string),
        headers: parts.headers,
        body,
        peer,
    };
    match actor {
        None => ui::handle(admin, &request).await,
        Some(actor) => route(admin, &actor, &request).await,
    }
}

/// The admin token's name, or the refusal: 429 while the address is
/// locked out, 401 without the token or with a wrong one (counted).
fn authenticate(
    admin: &Admin,
    headers: &http::HeaderMap,
    peer: SocketAddr,
    path: &str,
) -> Result<String, (StatusCode, &'static str)> {
    if admin.failures.is_blocked(peer.ip()) {
        return Err((StatusCode::TOO_MANY_REQUESTS, "429 Too Many Requests"));
    }
    admin.credentials.from_headers(headers).map_err(|refusal| {
        if refusal == credentials::Refusal::Wrong {
            admin.failures.record_failure(peer.ip());
            tracing::warn!(target: "tokengate::audit", event = "admin_login_failed", client = %peer.ip(), path);
        }
        (StatusCode::UNAUTHORIZED, "401 Unauthorized")
    })
}

async fn route(admin: &Admin, actor: &str, req: &AdminRequest) -> AdminResponse {
    match (req.path.as_str(), &req.method) {
        ("/readyz", &Method::GET) => {
            let (ready, body) = admin.metrics.readiness();
            let status = if ready {
                StatusCode::OK
            } else {
                StatusCode::SERVICE_UNAVAILABLE
            };
            text(status, "application/json", format!("{body}\n"))
        }
        ("/metrics", &Method::GET) => text(
            StatusCode::OK,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            admin.metrics.encode(),
        ),
        (path, _) if path.starts_with("/api/v4/") => api::handle(admin, actor, req).await,
        _ => message(StatusCode::NOT_FOUND, "404 Not Found"),
    }
}

fn text(status: StatusCode, content_type: &'static str, body: String) -> AdminResponse {
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, content_type)
        .body(Full::new(Bytes::from(body)))
        .expect("static parts are valid")
}

/// GitLab's error body: `{"message": "..."}`.
fn message(status: StatusCode, message: &str) -> AdminResponse {
    json(status, &serde_json::json!({ "message": message }))
}

fn json(status: StatusCode, value: &serde_json::Value) -> AdminResponse {
    text(status, "application/json", value.to_string())
}

/// Request parameters as decoded pairs, from a query string or form (`key[]`
/// read as `key`), or added from a JSON body. Repeated keys keep every value.
pub(crate) struct Params(Vec<(String, String)>);

impl Params {
    pub fn form(text: &str) -> Params {
        Params(
            query_pairs(text)
                .filter_map(|(k, v)| {
                    let k = form_decode(k)?;
                    let k = k.strip_suffix("[]").map(str::to_string).unwrap_or(k);
                    Some((k, form_decode(v)?))
                })
                .collect(),
        )
    }

    pub fn push(&mut self, key: String, value: String) {
        self.0.push((key, value));
    }

    pub fn extend(&mut self, more: Params) {
        self.0.extend(more.0);
    }

    pub fn first(&self, key: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// Every value of `key`, split at commas (`scopes=a,b` and `scopes[]=a`).
    pub fn all(&self, key: &str) -> Vec<String> {
        self.0
            .iter()
            .filter(|(k, _)| k == key)
            .flat_map(|(_, v)| v.split(','))
            .map(str::trim)
            .filter(|v| !v.is_empty())
            .map(str::to_string)
            .collect()
    }
}
