//! The proxy: a hyper server (HTTP/1.1 and h2c) whose every request runs the
//! same phases — normalize → route → credentials → lookup → decide → forward —
//! and a pooled hyper client to the upstreams. Bodies stream both ways;
//! only metadata documents that need URL rewriting are read, up to a cap.

mod body;
mod client;
mod error;
mod forward_auth;
mod headers;
mod limit;
mod lookup;
mod pool;
mod registry;
mod rewrite;
mod session;
mod upstream_login;
mod url_grant;
mod workers;

use std::convert::Infallible;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http::request::Parts;
use http::{header, HeaderValue, Method, Request, Response, StatusCode, Uri};
use http_body_util::{Either, Empty};
use hyper::body::{Body, Incoming};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use smallvec::SmallVec;
use tokio::net::TcpListener;

pub use error::{ErrorStyle, ProxyError, Side};

use crate::auth::{self, Ask};
use crate::cache::TokenResolver;
use crate::config::Config;
use crate::format::{self, Access, Authentication, FormBody};
use crate::metrics::{Metrics, Name, RequestLabels, RouteMetrics};
use crate::oci::RegistryAuth;
use crate::route::normalize::check_query;
use crate::route::{Matched, NormalizedPath, PathError};
use crate::store::LastUsed;
use crate::token::TokenRecord;
use body::{Buffered, IdleTimeout, Progress, WriteStall};
pub use client::canonical as canonical_peer;
pub use limit::FailureLimiter;
use pool::{BodyFailure, PooledBody, UpstreamPool};
pub use registry::own_endpoint;
pub use rewrite::HELD_PER_BYTE;
use rewrite::{CollectError, MetadataBudget, UrlMap};
use upstream_login::UpstreamLogins;
pub use workers::Workers;

/// Response bodies: the upstream's, streamed, or one the proxy made.
pub type ResponseBody = Either<IdleTimeout<PooledBody>, Buffered>;

/// Upstream request bodies: the client's, streamed, or none (the proxy's own logins).
type UpstreamBody = Either<IdleTimeout<Incoming>, Empty<Bytes>>;

/// Everything a request needs; shared by all connections.
pub struct Proxy {
    config: Arc<Config>,
    resolver: Arc<TokenResolver>,
    last_used: Arc<LastUsed>,
    /// The registry token service, when configured.
    registry: Option<Arc<RegistryAuth>>,
    /// The upstream connections of each worker (see [`workers`]).
    pools: Box<[UpstreamPool]>,
    upstream_logins: UpstreamLogins,
    /// The public authority, as `X-Forwarded-Host`.
    public_host: HeaderValue,
    failures: FailureLimiter,
    metadata_budget: MetadataBudget,
    metrics: Arc<Metrics>,
    /// Per route, in the table's order (see [`Matched::index`]).
    route_metrics: Box<[RouteMetrics]>,
}

impl Proxy {
    /// A proxy serving `config`, with `pools` sets of upstream clients (one per worker).
    pub fn new(
        config: Arc<Config>,
        resolver: Arc<TokenResolver>,
        last_used: Arc<LastUsed>,
        registry: Option<Arc<RegistryAuth>>,
        metrics: Arc<Metrics>,
        pools: usize,
    ) -> Proxy {
        let pools = (0..pools.max(1))
            .map(|_| {
                let upstreams = config.routes.routes().iter().map(|r| &*r.upstream);
                UpstreamPool::new(upstreams, config.server.upstream_connect_timeout)
            })
            .collect();
        let failures = FailureLimiter::new(
            config.server.failed_auth_per_minute,
            std::time::Duration::from_secs(60),
        );
        let upstream_logins = UpstreamLogins::for_routes(config.routes.routes());
        let metadata_budget = MetadataBudget::new(
            config.server.metadata_budget_bytes,
            config.server.metadata_max_bytes,
        );
        let route_metrics = config.routes.routes().iter().map(|r| metrics.for_route(r));
        let route_metrics = route_metrics.collect();
        let origin = &config.server.public_url.origin;
        let public_host = origin.split_once("://").map_or("", |(_, host)| host);
        let public_host =
            HeaderValue::from_str(public_host).expect("a URL's authority is a header value");
        Proxy {
            config,
            resolver,
            last_used,
            registry,
            pools,
            upstream_logins,
            public_host,
            failures,
            metadata_budget,
            metrics,
            route_metrics,
        }
    }

    /// The config this proxy serves.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Handles one request on the proxy listener; `peer_value` is the
    /// peer's address as a header value, made once per connection.
    /// (Not an `async fn`: each level of futures is one more copy of the
    /// request's state.)
    pub fn handle(
        &self,
        req: Request<Incoming>,
        peer: SocketAddr,
        peer_value: HeaderValue,
    ) -> impl Future<Output = Response<ResponseBody>> + '_ {
        let (head, body) = req.into_parts();
        let trusted = &self.config.server.trusted_proxies;
        let client = client::behind_proxies(peer.ip(), &head.headers, trusted);
        let forwarded_for = if client == peer.ip() {
            peer_value
        } else {
            headers::address(client)
        };
        let mode = Mode::Proxy {
            body,
            forwarded_for,
        };
        self.respond(head, mode, client)
    }

    /// Runs a request through the phases and logs its outcome. Never fails:
    /// errors become responses here, for both modes.
    async fn respond(&self, head: Parts, mode: Mode, client: IpAddr) -> Response<ResponseBody> {
        let method = head.method.clone();
        // For the logs: a clone shares the request's bytes, a `String` would copy them.
        let target = head.uri.clone();
        let mode_name = mode.name();
        let close = matches!(mode, Mode::Proxy { .. }) && body_left_unread(&method);
        let mut outcome = Outcome::new();
        let response = match self.process(head, mode, client, &mut outcome).await {
            // An upstream's 401 left its challenge behind (`to_downstream`):
            // the client re-authenticates with tokengate, as for its own.
            Ok(mut response) if response.status() == StatusCode::UNAUTHORIZED => {
                let challenge = outcome.style.challenge.clone();
                response
                    .headers_mut()
                    .entry(header::WWW_AUTHENTICATE)
                    .or_insert(challenge);
                response
            }
            Ok(response) => response,
            Err(e) => {
                if e.is_failed_authentication() {
                    self.failures.record_failure(client);
                }
                let side = e.side();
                if side != Side::Downstream {
                    tracing::warn!(error = %e, ?side, "request failed");
                }
                outcome.decision = e.decision();
                outcome.reason = e.reason();
                if matches!(outcome.decision, "unauthenticated" | "forbidden") {
                    tracing::info!(
                        target: "tokengate::audit",
                        event = "request_denied",
                        %client,
                        mode = mode_name,
                        %method,
                        path = %target.path(),
                        route = %outcome.route.as_deref().unwrap_or("-"),
                        token_id = outcome.token_id,
                        needed = %outcome.needed.map_or(String::from("-"), |s| s.to_string()),
                        reason = outcome.reason,
                    );
                }
                e.into_response(close, &outcome.style)
            }
        };
        match outcome
            .route_index
            .filter(|_| outcome.decision == "allowed")
        {
            Some(i) => {
                self.route_metrics[i].allowed.inc();
            }
            None => self.metrics.request(&RequestLabels {
                route: Name(outcome.route.clone().unwrap_or_else(no_route_label)),
                format: outcome.format,
                decision: outcome.decision,
                reason: outcome.reason,
            }),
        }
        tracing::info!(
            target: "tokengate::access",
            %client,
            mode = mode_name,
            %method,
            path = %target.path(),
            route = %outcome.route.as_deref().unwrap_or("-"),
            token_id = outcome.token_id,
            decision = %outcome.decision,
            status = response.status().as_u16(),
            elapsed_us = outcome.started.elapsed().as_micros() as u64,
        );
        response
    }

    /// The phases: normalize → route → credentials → lookup → decide, then
    /// what the mode does with an allowed request.
    async fn process(
        &self,
        head: Parts,
        mode: Mode,
        client: IpAddr,
        outcome: &mut Outcome,
    ) -> Result<Response<ResponseBody>, ProxyError> {
        if headers::head_size(&head) > MAX_HEAD_BYTES {
            return Err(ProxyError::HeadTooLarge(MAX_HEAD_BYTES));
        }
        if let Some(why) = headers::refused_header(&head.headers) {
            return Err(ProxyError::BadRequest(why));
        }
        if mode.has_body() && crate::format::is_read(&head.method) {
            // An upstream that ignored its framing would read the body as
            // a second request on a shared connection, one never authorized.
            return Err(ProxyError::BadRequest(
                "a GET or HEAD request carries no body",
            ));
        }
        let uri = head.uri.clone();
        let (raw_path, query) = origin_form(&uri, &self.config)?;
        let path = NormalizedPath::parse(raw_path)?;
        if let Some(q) = query {
            check_query(q)?;
        }
        let own_endpoint = |r: &&Arc<RegistryAuth>| registry::own_endpoint(r.config(), &path);
        if let Some(registry) = self.registry.as_ref().filter(own_endpoint) {
            if matches!(mode, Mode::Decide) {
                return Err(ProxyError::OwnEndpoint);
            }
            // Boxed, as every path below that few requests take: its state
            // would otherwise be part of every request's future.
            let answer = self.registry_endpoint(registry, &head, &path, query, client, outcome);
            if let Some(response) = Box::pin(answer).await {
                return response;
            }
        }
        // Past tokengate's own endpoints (an OAuth2 POST to the token
        // endpoint must still get its 404): servlet containers and Rack read
        // a form body's fields as parameters, so `describe=` or
        // `private_token=` in one would pass the query check. Multipart is
        // left to the uploads of the formats that send it.
        let form = format::form_body(&head.headers);
        if form == Some(FormBody::UrlEncoded) {
            return Err(ProxyError::BadRequest(
                "URL-encoded form bodies are not accepted: an upstream would read their fields \
                 as parameters beside the query, unchecked (send the content with its own type)",
            ));
        }
        let matched = self.config.routes.find(&path)?;
        let route = matched.route;
        outcome.route = Some(route.name.clone());
        outcome.route_index = Some(matched.index);
        outcome.format = route.format.name();
        let rest: SmallVec<[&str; 8]> = path.decoded().skip(matched.prefix_len).collect();
        let access = route.access(&head.method, &rest, query);
        let format = &*route.format;
        if form == Some(FormBody::Multipart)
            && !route.accepts_multipart(&head.method, &rest, access)
        {
            return Err(ProxyError::BadRequest(
                "multipart form bodies are accepted only as the uploads of the formats that send \
                 them (PyPI, NuGet) and where a route's write rule says `multipart = true`: an \
                 upstream would read their fields as parameters beside the query, unchecked",
            ));
        }
        if self.failures.is_blocked(client) {
            return Err(ProxyError::TooManyFailures);
        }
        // A query of our own to forward instead of the client's.
        let mut own_query = None;
        let (record, username) = match format.authentication() {
            Authentication::RegistryJwt => {
                let registry = self
                    .registry
                    .as_ref()
                    .expect("config: oci routes imply signing");
                let (token, forward_query) =
                    Box::pin(self.authorize_registry(
                        registry, &head, &matched, &rest, access, query, outcome,
                    ))
                    .await?;
                drop(rest);
                let allowed = Allowed {
                    path: &path,
                    query: forward_query.as_deref(),
                    changed: (forward_query.as_deref() != query)
                        .then_some("a blob mount from a repository the token cannot read"),
                    matched: &matched,
                    token: &token,
                    rewrite: Rewrite::default(),
                };
                return self.allowed(head, mode, allowed).await;
            }
            Authentication::SessionJwt => {
                let registry = self
                    .registry
                    .as_ref()
                    .expect("config: session formats imply signing");
                if let Some(endpoint) = format.session_endpoint(&head.method, &rest) {
                    if matches!(mode, Mode::Decide) {
                        return Err(ProxyError::OwnEndpoint);
                    }
                    let answer = self.answer_session(registry, endpoint, &head, &matched, outcome);
                    return Box::pin(answer).await;
                }
                if format.takes_url_grant(&rest) {
                    let grant = self.url_grant_token(registry, &path, query, access, format);
                    let (record, username, query) = Box::pin(grant).await?;
                    own_query = Some(query);
                    (record, username)
                } else {
                    Box::pin(self.session_token(registry, &head, format)).await?
                }
            }
            Authentication::DeployToken => {
                let presented =
                    format::credentials(format, &head.headers)?.ok_or(ProxyError::NoCredentials)?;
                let record = self.token_for_secret(&presented.secret).await?;
                (record, presented.username)
            }
        };
        outcome.token_id = record.as_ref().map(|r| r.id);
        let ask = Ask {
            username: username.as_deref(),
            namespace: &matched.namespace,
            access,
            scopes: format.scopes_for(access),
        };
        outcome.needed = Some(ask.scopes);
        let now = chrono::Utc::now();
        let decision = auth::decide(record.as_deref(), &ask, now);
        self.metrics
            .decision_seconds
            .observe(outcome.started.elapsed().as_secs_f64());
        decision.map_err(|d| ProxyError::denied(d, format))?;
        let token = record.expect("allowed implies a record");
        outcome.decision = "allowed";
        self.last_used.mark(token.id, now.timestamp());
        if format.asks_identity(&head.method, &rest) {
            return match mode {
                Mode::Decide => Err(ProxyError::OwnEndpoint),
                Mode::Proxy { .. } => Ok(identity(&token)),
            };
        }
        let rewrite = Rewrite {
            urls: format.rewrites_metadata(&head.method, &rest),
            url_grant: format.url_grant(&head.method, &rest),
        };
        drop(rest);
        let allowed = Allowed {
            path: &path,
            query: own_query.as_ref().map_or(query, |own| own.as_deref()),
            changed: own_query.is_some().then_some("a file URL grant"),
            matched: &matched,
            token: &token,
            rewrite,
        };
        self.allowed(head, mode, allowed).await
    }

    /// The one step where the modes part: the proxy forwards an allowed
    /// request, the decision listener says so to the edge proxy.
    async fn allowed(
        &self,
        head: Parts,
        mode: Mode,
        allowed: Allowed<'_>,
    ) -> Result<Response<ResponseBody>, ProxyError> {
        match mode {
            // Boxed: forwarding's state is most of a request's, and every
            // future around this one would otherwise carry it and be copied
            // with it (callgrind: memcpy was a tenth of a request's work).
            Mode::Proxy {
                body,
                forwarded_for,
            } => Box::pin(self.forward(head, body, forwarded_for, allowed)).await,
            Mode::Decide => match allowed.changed {
                Some(change) => Err(ProxyError::NeedsProxyMode(change)),
                None => Ok(forward_auth::allowed(allowed.token)),
            },
        }
    }

    async fn forward(
        &self,
        mut parts: Parts,
        body: Incoming,
        forwarded_for: HeaderValue,
        allowed: Allowed<'_>,
    ) -> Result<Response<ResponseBody>, ProxyError> {
        let Allowed {
            path,
            query,
            matched,
            token,
            rewrite,
            ..
        } = allowed;
        let route = matched.route;
        let upstream = &*route.upstream;
        let public = &self.config.server.public_url;
        // Origin-form, as HTTP/1.1 sends it; `Host` names the upstream.
        let path_and_query =
            http::uri::PathAndQuery::try_from(matched.upstream_path_and_query(path, query)?)
                .map_err(|_| ProxyError::BadPath(PathError::BadEncoding))?;
        parts.uri = path_and_query.into();
        parts.version = http::Version::HTTP_11;
        let authorization = self.upstream_authorization(upstream).await?;
        headers::to_upstream(
            &mut parts.headers,
            &headers::Forwarding {
                forwarded_for: &forwarded_for,
                public_https: public.https,
                public_host: &self.public_host,
                upstream_host: &upstream.host,
                upstream_authorization: authorization.as_ref(),
                token,
                identity_encoding: rewrite.urls,
            },
        );
        let idle = self.config.server.body_idle_timeout;
        let timeout = self.config.server.upstream_response_timeout;
        let asked = Instant::now();
        let mut body = IdleTimeout::new(body, idle);
        let upload = (!body.is_end_stream()).then(|| Arc::new(Progress::new(asked)));
        if let Some(progress) = &upload {
            body = body.reporting(progress.clone());
        }
        let request = Request::from_parts(parts, Either::Left(body));
        let sent = self.send_upstream(upstream, request);
        let answered = match upload {
            // The deadline from the clock already read (a clock read per request less).
            None => tokio::time::timeout_at(tokio::time::Instant::from_std(asked) + timeout, sent)
                .await
                .ok(),
            Some(progress) => Box::pin(answer_after_upload(sent, &progress, timeout)).await,
        };
        let response = answered
            .ok_or_else(|| {
                self.metrics.upstream_failed(&upstream.name);
                ProxyError::UpstreamTimeout(upstream.name.to_string())
            })?
            .map_err(|e| match e.body_failure() {
                Some(BodyFailure::Stalled) => ProxyError::BodyStalled,
                Some(BodyFailure::Broken) => ProxyError::BodyBroken,
                None => {
                    self.metrics.upstream_failed(&upstream.name);
                    tracing::warn!(upstream = %upstream.name, error = %e, "upstream request failed");
                    ProxyError::UpstreamUnreachable(upstream.name.to_string())
                }
            })?;
        self.route_metrics[matched.index]
            .upstream_seconds
            .observe(asked.elapsed().as_secs_f64());
        let (mut parts, body) = response.into_parts();
        if parts.status == StatusCode::UNAUTHORIZED {
            self.upstream_logins
                .invalidate(&upstream.name, authorization.as_ref());
            // The client's credentials never reach the upstream: the
            // proxy's own were refused (the client gets tokengate's
            // challenge in `respond`, never the upstream's).
            tracing::warn!(upstream = %upstream.name, "upstream refused the proxy's credentials (401)");
        }
        headers::to_downstream(&mut parts.headers);
        let needs_map = rewrite.urls || parts.headers.contains_key(header::LOCATION);
        let map = needs_map.then(|| {
            let mut public_path = public.base_path.clone();
            if route.strip_prefix {
                path.encode_prefix(matched.prefix_len, &mut public_path);
            }
            let mut upstream_prefix = String::new();
            matched.upstream_prefix(&mut upstream_prefix);
            UrlMap::new(
                upstream.authority.as_str(),
                &upstream_prefix,
                &public.origin,
                public_path,
            )
        });
        if let Some(map) = &map {
            let location = parts
                .headers
                .get(header::LOCATION)
                .and_then(|v| v.to_str().ok());
            if let Some(new) = location.and_then(|l| map.location(l)) {
                if let Ok(value) = HeaderValue::from_str(&new) {
                    parts.headers.insert(header::LOCATION, value);
                }
            }
        }
        match map {
            Some(map) if rewrite.urls && is_rewritable(&parts) => {
                let collect = self.metadata_budget.collect(IdleTimeout::new(body, idle));
                let collect = Box::pin(collect);
                let (bytes, mut share) = collect.await.map_err(|e| {
                    if matches!(e, CollectError::Spent) {
                        return ProxyError::MetadataBusy;
                    }
                    self.metrics.upstream_failed(&upstream.name);
                    tracing::warn!(upstream = %upstream.name, error = %e, "metadata body not rewritten");
                    ProxyError::UpstreamMetadata(upstream.name.to_string())
                })?;
                let bytes = match std::str::from_utf8(&bytes) {
                    Ok(text) => {
                        let text = map.body(text);
                        let granted = rewrite.url_grant.zip(self.registry.as_ref()).and_then(
                            |(access, registry)| {
                                self.grant_urls(registry, &text, token, access, &*route.format)
                            },
                        );
                        Bytes::from(granted.unwrap_or(text))
                    }
                    Err(_) => bytes,
                };
                share
                    .fit(&self.metadata_budget, bytes.len())
                    .map_err(|_| ProxyError::MetadataBusy)?;
                parts
                    .headers
                    .insert(header::CONTENT_LENGTH, HeaderValue::from(bytes.len()));
                let body = Buffered::holding(bytes, share.into_permit());
                Ok(Response::from_parts(parts, Either::Right(body)))
            }
            _ => Ok(Response::from_parts(
                parts,
                Either::Left(IdleTimeout::new(body, idle)),
            )),
        }
    }
}

impl Proxy {
    /// Sends a request on this worker's connections to the upstream.
    fn send_upstream<'a>(
        &'a self,
        upstream: &'a crate::route::Upstream,
        request: Request<UpstreamBody>,
    ) -> impl Future<Output = Result<Response<PooledBody>, pool::UpstreamError>> + 'a {
        let pool = &self.pools[workers::index() % self.pools.len()];
        pool.send(upstream, request)
    }
}

/// The upstream's answer to a request with a body, due within `timeout` of
/// the body's latest frame; `None` when it is late.
async fn answer_after_upload<F: Future>(
    sent: F,
    progress: &Progress,
    timeout: std::time::Duration,
) -> Option<F::Output> {
    tokio::pin!(sent);
    loop {
        let due = tokio::time::Instant::from_std(progress.last() + timeout);
        match tokio::time::timeout_at(due, &mut sent).await {
            Ok(answer) => return Some(answer),
            // The body moved since the deadline was set: wait on from its latest frame.
            Err(_) if progress.last() + timeout > Instant::now() => continue,
            Err(_) => return None,
        }
    }
}

/// A response tokengate makes itself (a 200 unless changed).
fn own_response(body: impl Into<Bytes>, content_type: &'static str) -> Response<ResponseBody> {
    let mut response = Response::new(Either::Right(Buffered::new(body)));
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

/// The answer to a format's "who am I" request, in npm's shape.
fn identity(token: &TokenRecord) -> Response<ResponseBody> {
    let body = serde_json::json!({ "username": token.username }).to_string();
    own_response(body, "application/json")
}

/// Whether a response is a successful, unencoded text document.
fn is_rewritable(parts: &http::response::Parts) -> bool {
    let textual = parts
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| {
            ct.contains("json")
                || ct.contains("html")
                || ct.contains("xml")
                || ct.starts_with("text/")
        });
    let encoded = parts
        .headers
        .get(header::CONTENT_ENCODING)
        .is_some_and(|v| v.as_bytes() != b"identity");
    parts.status == StatusCode::OK && textual && !encoded
}

/// Splits an origin-form target into path and query. Absolute-form is
/// accepted only for the proxy's own public origin (RFC 9112 §3.2.2);
/// authority-form and `*` are refused.
fn origin_form<'u>(
    uri: &'u Uri,
    config: &Config,
) -> Result<(&'u str, Option<&'u str>), ProxyError> {
    if let Some(authority) = uri.authority() {
        let (scheme, public) = config
            .server
            .public_url
            .origin
            .split_once("://")
            .expect("an origin is scheme://authority");
        let same = public.eq_ignore_ascii_case(authority.as_str())
            && uri
                .scheme_str()
                .is_some_and(|s| s.eq_ignore_ascii_case(scheme));
        if !same {
            return Err(PathError::NotOriginForm.into());
        }
    }
    let path = uri.path();
    if !path.starts_with('/') {
        return Err(PathError::NotOriginForm.into());
    }
    Ok((path, uri.query()))
}

/// What becomes of a request the decision allows: the proxy listener
/// forwards it with its body; the decision listener answers the edge proxy.
enum Mode {
    /// Forward the request: its body, and the client as `X-Forwarded-For`.
    Proxy {
        body: Incoming,
        forwarded_for: HeaderValue,
    },
    Decide,
}

impl Mode {
    /// Whether a request to forward has a body (by its framing; an empty
    /// `Content-Length: 0` body counts as none).
    fn has_body(&self) -> bool {
        matches!(self, Mode::Proxy { body, .. } if !body.is_end_stream())
    }

    fn name(&self) -> &'static str {
        match self {
            Mode::Proxy { .. } => "proxy",
            Mode::Decide => "forward_auth",
        }
    }
}

/// An allowed request: where it goes and for which token.
struct Allowed<'a> {
    path: &'a NormalizedPath,
    /// The query to forward.
    query: Option<&'a str>,
    /// What the proxy changed in the request to allow it, if anything.
    changed: Option<&'static str>,
    matched: &'a Matched<'a>,
    token: &'a TokenRecord,
    rewrite: Rewrite,
}

/// What the proxy does to a successful metadata response.
#[derive(Debug, Clone, Copy, Default)]
struct Rewrite {
    /// Map absolute upstream URLs to the proxy's public URL.
    urls: bool,
    /// Add a grant for this access to each URL (pre-signed file URLs).
    url_grant: Option<Access>,
}

/// What the access log, the metrics and the audit log say about a request,
/// and how its errors are told.
struct Outcome {
    started: Instant,
    route: Option<Arc<str>>,
    /// The matched route's position in the table (none for the proxy's own endpoints).
    route_index: Option<usize>,
    format: &'static str,
    token_id: Option<i64>,
    /// The scopes of which the request needed one.
    needed: Option<crate::token::ScopeSet>,
    decision: &'static str,
    reason: &'static str,
    style: ErrorStyle,
}

impl Outcome {
    fn new() -> Outcome {
        Outcome {
            started: Instant::now(),
            route: None,
            route_index: None,
            format: "-",
            token_id: None,
            needed: None,
            decision: "-",
            reason: "-",
            style: ErrorStyle::default(),
        }
    }
}

/// The route label of requests no route matched, shared rather than allocated per request.
fn no_route_label() -> Arc<str> {
    static LABEL: std::sync::OnceLock<Arc<str>> = std::sync::OnceLock::new();
    LABEL.get_or_init(|| Arc::from("-")).clone()
}

/// Whether a refused request may carry a body that was never read: such
/// responses close the connection, so a client waiting on
/// `Expect: 100-continue` cannot desynchronize it.
fn body_left_unread(method: &Method) -> bool {
    !matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS)
}

/// The proxy currently serving: replaced as a whole on a config reload.
/// Each request loads it once on arrival and finishes on that config.
pub type Current = arc_swap::ArcSwap<Proxy>;

/// Which listener a connection came in on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Listener {
    /// The public one: the proxy mode, over TLS when configured.
    Proxy,
    /// The forward-auth decision listener (plain HTTP, for edge proxies).
    Decision,
}

/// Serves the current proxy on `listener` until `shutdown` resolves; then
/// readiness drops, new connections are still taken for the configured
/// delay (so load balancers notice first), the listener closes, and
/// in-flight requests get up to the configured grace period.
pub async fn serve(
    current: Arc<Current>,
    role: Listener,
    listener: TcpListener,
    workers: Arc<Workers>,
    shutdown: impl Future<Output = ()>,
) {
    let start = current.load_full();
    let header_timeout = start.config.server.header_read_timeout;
    let body_idle = start.config.server.body_idle_timeout;
    let mut auto = auto::Builder::new(TokioExecutor::new());
    // hyper-util's automatic builder (h2c, TLS without ALPN) has no head
    // limit of its own for HTTP/1: its read buffer's cap is the limit there.
    auto.http1()
        .timer(TokioTimer::new())
        .header_read_timeout(header_timeout)
        .max_buf_size(MAX_HEAD_BYTES);
    // HTTP/2 has no head timeout: a peer is pinged after a quiet
    // `header_read_timeout` and dropped when it has not answered within the
    // body idle timeout (one that sent the preface and nothing more). Not
    // sooner: behind a slow download's queued bytes a ping's answer takes
    // as long as the queue, and a download is cut only when it stops moving.
    auto.http2()
        .timer(TokioTimer::new())
        .max_header_list_size(MAX_HEAD_BYTES as u32)
        .keep_alive_interval(header_timeout)
        .keep_alive_timeout(body_idle.max(header_timeout))
        // Floods a single connection can send (tests/h2_security.rs): past
        // 20 streams the client resets before they are taken up, or 1,024
        // the client makes the proxy reset, the connection ends. hyper's and
        // h2's defaults, pinned so an upgrade cannot loosen them silently.
        .max_concurrent_streams(200)
        .max_pending_accept_reset_streams(20)
        .max_local_error_reset_streams(1024);
    let mut http1 = hyper::server::conn::http1::Builder::new();
    // The head is capped by itself, not by capping the read buffer: that
    // would also cap every read of an upload's body at the head's limit
    // (a sixth of what hyper reads at once by default: six times the
    // reads, twice the CPU per uploaded GiB).
    http1
        .timer(TokioTimer::new())
        .header_read_timeout(header_timeout)
        .max_header_size(MAX_HEAD_BYTES);
    let builder = Arc::new(Builders { auto, http1 });
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let metrics = start.metrics.clone();
    drop(start);
    let stop_accepting = async {
        shutdown.await;
        metrics.start_draining();
        let delay = current.load().config.server.shutdown_delay;
        tracing::info!(
            ?delay,
            "shutting down: unready now, still accepting for the delay"
        );
        tokio::time::sleep(delay).await;
    };
    tokio::pin!(stop_accepting);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => (stream, client::canonical(peer)),
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut stop_accepting => break,
        };
        let _ = stream.set_nodelay(true);
        let current = current.clone();
        let builder = builder.clone();
        let watcher = graceful.watcher();
        let served = workers.spawn(stream, move |stream| {
            connection(current, role, builder, watcher, stream, peer)
        });
        if let Err(e) = served {
            tracing::warn!(error = %e, client = %peer, "connection not handed to a worker");
        }
    }
    drop(listener);
    let grace = current.load().config.server.shutdown_grace;
    tracing::info!(in_flight = graceful.count(), ?grace, "draining connections");
    if tokio::time::timeout(grace, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("drain deadline passed; closing remaining connections");
    }
}

/// The most a request head may take (HTTP/1 buffer, HTTP/2 header list).
const MAX_HEAD_BYTES: usize = 64 * 1024;

/// What a plain HTTP/2 connection opens with (prior knowledge, RFC 9113 §3.3).
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// How connections are served: HTTP/1 directly when its first bytes show
/// it, else hyper-util's automatic choice. Why two: the automatic one's
/// state has room for an HTTP/2 connection (1560 bytes against HTTP/1's
/// 720), and every connection's task, idle or not, carries its state.
struct Builders {
    auto: auto::Builder<TokioExecutor>,
    http1: hyper::server::conn::http1::Builder,
}

/// Serves one connection, on its worker.
async fn connection(
    current: Arc<Current>,
    role: Listener,
    builder: Arc<Builders>,
    watcher: hyper_util::server::graceful::Watcher,
    stream: tokio::net::TcpStream,
    peer: SocketAddr,
) {
    // The connection's TLS and header timeout come from the config
    // current when it was accepted; each request's routes from the
    // config current when it arrives.
    let (tls, header_timeout, idle) = {
        let proxy = current.load();
        let server = &proxy.config.server;
        let tls = server
            .tls
            .as_ref()
            .filter(|_| role == Listener::Proxy)
            .map(|tls| tokio_rustls::TlsAcceptor::from(tls.config.clone()));
        (tls, server.header_read_timeout, server.body_idle_timeout)
    };
    // hyper's header timeout starts once it knows HTTP/1 from HTTP/2;
    // a peer that sends nothing at all is dropped here. What it sent
    // first tells plain HTTP/1 (anything but the start of the HTTP/2
    // preface) from the rest.
    let mut opening = [0u8; H2_PREFACE.len()];
    let opened = match tokio::time::timeout(header_timeout, stream.peek(&mut opening)).await {
        Ok(Ok(n)) if n > 0 => n,
        _ => return,
    };
    let plain_http1 = tls.is_none() && !H2_PREFACE.starts_with(&opening[..opened]);
    let stream = WriteStall::new(stream, idle);
    // Made once: every request on the connection names its peer upstream.
    let peer_value = headers::address(peer.ip());
    let service = hyper::service::service_fn(move |req| {
        let proxy = current.load_full();
        // Boxed: hyper keeps room for one request future in every
        // connection, idle or not. Boxed, that room is a pointer and
        // a request's state exists only while it is in flight. Boxed
        // per listener, so a proxied request's state is not sized for
        // the decision listener's larger one.
        let answer: Pin<Box<dyn Future<Output = Result<_, Infallible>> + Send>> = match role {
            Listener::Proxy => {
                let peer_value = peer_value.clone();
                Box::pin(async move { Ok(proxy.handle(req, peer, peer_value).await) })
            }
            Listener::Decision => Box::pin(async move { Ok(proxy.check(req, peer).await) }),
        };
        answer
    });
    let served = match tls {
        None if plain_http1 => {
            let conn = builder
                .http1
                .serve_connection(TokioIo::new(stream), service);
            watcher.watch(conn).await.map_err(Into::into)
        }
        // Boxed, as the TLS branch below: few connections take them, and
        // their state would otherwise be part of every connection's task.
        None => {
            Box::pin(async move {
                let conn = builder.auto.serve_connection(TokioIo::new(stream), service);
                watcher.watch(conn.into_owned()).await
            })
            .await
        }
        Some(acceptor) => {
            Box::pin(async move {
                let handshake = tokio::time::timeout(header_timeout, acceptor.accept(stream));
                let Ok(Ok(stream)) = handshake.await else {
                    tracing::debug!(client = %peer, "TLS handshake failed or timed out");
                    return Ok(());
                };
                // What ALPN settled needs no guessing: HTTP/1.1 gets the
                // HTTP/1 builder (its head limit, its larger body reads).
                if stream.get_ref().1.alpn_protocol() == Some(b"http/1.1") {
                    let conn = builder
                        .http1
                        .serve_connection(TokioIo::new(stream), service);
                    return watcher.watch(conn).await.map_err(Into::into);
                }
                let conn = builder.auto.serve_connection(TokioIo::new(stream), service);
                watcher.watch(conn.into_owned()).await
            })
            .await
        }
    };
    if let Err(e) = served {
        tracing::debug!(error = %e, client = %peer, "connection ended with an error");
    }
}
