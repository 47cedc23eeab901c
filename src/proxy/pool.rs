//! Upstream connections: HTTP/1.1 connections kept per upstream, one pool
//! per worker, so a request and the connection it reuses run on the same
//! thread and checking one out takes no shared lock.
//!
//! A connection goes back to its pool when the response body it carried has
//! been read to its end (not when the headers arrive): then the connection is
//! free for the next request at once, and a request never waits behind
//! another's body. A connection reused from the pool may have been closed by
//! the upstream while idle; a request hyper could not even start on it is
//! sent again on another connection (nothing of it reached the upstream), and
//! so is a GET or HEAD without a body that it cut off.

use std::collections::VecDeque;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use http::{header, Method, Request, Response};
use http_body_util::{Either, Empty};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use rustls_pki_types::ServerName;
use tokio::net::TcpStream;

use super::body::IdleTimeoutError;
use super::UpstreamBody;
use crate::route::Upstream;

/// Idle connections kept per upstream and worker: each holds ~20 KiB of
/// buffers, so a burst's connections are not all kept (as nginx's `keepalive`).
const MAX_IDLE: usize = 128;

/// An idle connection unused this long is closed rather than reused: the
/// upstream may be about to close it.
const IDLE_TIMEOUT: Duration = Duration::from_secs(30);

/// Why a request got no response from an upstream.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("no address for {host}: {source}")]
    Resolve { host: String, source: io::Error },
    #[error("connect: {0}")]
    Connect(io::Error),
    #[error("connect: no connection within {0:?}")]
    ConnectTimeout(Duration),
    #[error("TLS: {0}")]
    Tls(io::Error),
    #[error("HTTP: {0}")]
    Http(#[from] hyper::Error),
}

/// How the request body the client was sending failed, when that is what
/// failed the upstream request: hyper reports a body's error as the
/// request's, but the client, not the upstream, broke it off.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyFailure {
    /// No data within the body idle timeout.
    Stalled,
    /// Cut off or misframed (a bad chunk).
    Broken,
}

impl UpstreamError {
    pub fn body_failure(&self) -> Option<BodyFailure> {
        let UpstreamError::Http(e) = self else {
            return None;
        };
        // A body's error is a user error caused by the body's own: the idle
        // timer's, or hyper's reading the client's body. (Other user
        // errors, such as a dispatch task gone with its connection, have
        // no cause.)
        if !e.is_user() {
            return None;
        }
        let cause = std::error::Error::source(e)?;
        if cause.is::<IdleTimeoutError>() {
            Some(BodyFailure::Stalled)
        } else if cause.is::<hyper::Error>() {
            Some(BodyFailure::Broken)
        } else {
            None
        }
    }
}

/// The connections of one worker to every upstream.
pub struct UpstreamPool {
    upstreams: Box<[Endpoint]>,
    connect_timeout: Duration,
}

/// One upstream: how to connect, and its idle connections.
struct Endpoint {
    name: Arc<str>,
    host: String,
    port: u16,
    /// For `https` upstreams: the TLS client and the name to verify.
    tls: Option<(tokio_rustls::TlsConnector, ServerName<'static>)>,
    /// Shared with the response bodies that bring connections back.
    idle: Arc<Mutex<IdleList>>,
}

/// Idle connections, oldest first (a connection comes back at the end).
/// That order keeps a checkout's work independent of how many wait: the
/// expired ones are all at the front, the one to reuse is at the back.
type IdleList = VecDeque<Idle>;

struct Idle {
    sender: SendRequest<UpstreamBody>,
    since: Instant,
}

impl UpstreamPool {
    /// A pool for each upstream of `upstreams` (the same upstream may appear more than once).
    pub fn new<'a>(
        upstreams: impl Iterator<Item = &'a Upstream>,
        connect_timeout: Duration,
    ) -> UpstreamPool {
        let mut endpoints: Vec<Endpoint> = Vec::new();
        for upstream in upstreams {
            if endpoints.iter().any(|e| e.name == upstream.name) {
                continue;
            }
            let host = upstream.authority.host();
            // `[::1]` in a URL is `::1` to the resolver and to TLS.
            let host = host
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_string();
            let https = upstream.tls.is_some();
            let port = upstream
                .authority
                .port_u16()
                .unwrap_or(if https { 443 } else { 80 });
            let tls = upstream.tls.as_ref().and_then(|config| {
                let name = ServerName::try_from(host.clone()).ok()?;
                Some((tokio_rustls::TlsConnector::from(config.clone()), name))
            });
            endpoints.push(Endpoint {
                name: upstream.name.clone(),
                host,
                port,
                tls,
                idle: Arc::default(),
            });
        }
        UpstreamPool {
            upstreams: endpoints.into(),
            connect_timeout,
        }
    }

    /// Sends `request` (origin-form URI, `Host` set) to `upstream` on an idle
    /// connection, or on a new one.
    pub async fn send(
        &self,
        upstream: &Upstream,
        mut request: Request<UpstreamBody>,
    ) -> Result<Response<PooledBody>, UpstreamError> {
        debug_assert!(
            request.uri().authority().is_none() && request.headers().contains_key(header::HOST)
        );
        let endpoint = self
            .upstreams
            .iter()
            .find(|e| Arc::ptr_eq(&e.name, &upstream.name) || e.name == upstream.name)
            .expect("every upstream of the config has a pool");
        // A request that reached the upstream is sent again once at most: an
        // upstream that drops every connection it gets this request on must
        // not see it once per idle connection.
        let mut may_replay = true;
        while let Some(mut sender) = endpoint.checkout() {
            let replay = may_replay.then(|| replayable(&request)).flatten();
            match sender.try_send_request(request).await {
                Ok(response) => return Ok(endpoint.pooled(response, sender)),
                Err(mut failed) => {
                    let again = match failed.take_message() {
                        // Never started on this connection: nothing was sent.
                        Some(unsent) => unsent,
                        None => match replay {
                            Some(copy) => {
                                may_replay = false;
                                copy
                            }
                            None => return Err(failed.into_error().into()),
                        },
                    };
                    tracing::debug!(upstream = %endpoint.name, error = %failed.error(), "reused connection failed; sending on another");
                    request = again;
                }
            }
        }
        // Boxed: connecting (DNS, TCP, TLS) takes kilobytes of state that a
        // request on a pooled connection should not carry.
        let connect = Box::pin(endpoint.connect(self.connect_timeout));
        let mut sender = tokio::time::timeout(self.connect_timeout, connect)
            .await
            .map_err(|_| UpstreamError::ConnectTimeout(self.connect_timeout))??;
        let response = sender.send_request(request).await?;
        Ok(endpoint.pooled(response, sender))
    }
}

/// A copy of a request that may be sent again after a reused connection
/// failed under it (the upstream closed it as the request went out): a GET
/// or HEAD without a body, as RFC 9110 §9.2.2 allows and nginx does.
fn replayable(request: &Request<UpstreamBody>) -> Option<Request<UpstreamBody>> {
    let safe = matches!(*request.method(), Method::GET | Method::HEAD);
    if !safe || !request.body().is_end_stream() {
        return None;
    }
    let mut copy = Request::new(Either::Right(Empty::new()));
    *copy.method_mut() = request.method().clone();
    *copy.uri_mut() = request.uri().clone();
    *copy.headers_mut() = request.headers().clone();
    Some(copy)
}

impl Endpoint {
    /// The most recently used idle connection that can take a request now.
    /// Expired connections are dropped from the front, closed ones as the
    /// search from the back meets them.
    fn checkout(&self) -> Option<SendRequest<UpstreamBody>> {
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        while idle
            .front()
            .is_some_and(|c| now.saturating_duration_since(c.since) >= IDLE_TIMEOUT)
        {
            idle.pop_front();
        }
        let mut i = idle.len();
        while i > 0 {
            i -= 1;
            if idle[i].sender.is_closed() {
                idle.remove(i);
            } else if idle[i].sender.is_ready() {
                return idle.remove(i).map(|c| c.sender);
            }
        }
        None
    }

    fn pooled(
        &self,
        response: Response<Incoming>,
        sender: SendRequest<UpstreamBody>,
    ) -> Response<PooledBody> {
        response.map(|body| PooledBody {
            body,
            ended: false,
            sender: Some(sender),
            idle: self.idle.clone(),
        })
    }

    /// Resolves, connects and starts HTTP within `budget` (the caller
    /// enforces it as a whole).
    async fn connect(&self, budget: Duration) -> Result<SendRequest<UpstreamBody>, UpstreamError> {
        let deadline = tokio::time::Instant::now() + budget;
        let resolve = |source| UpstreamError::Resolve {
            host: self.host.clone(),
            source,
        };
        let addresses: Vec<SocketAddr> = tokio::net::lookup_host((self.host.as_str(), self.port))
            .await
            .map_err(resolve)?
            .collect();
        if addresses.is_empty() {
            return Err(resolve(io::ErrorKind::NotFound.into()));
        }
        let stream = connect_any(&addresses, deadline).await?;
        self.start(stream).await
    }

    /// TLS if the upstream is https, then HTTP/1.1, on a connected socket.
    async fn start(&self, stream: TcpStream) -> Result<SendRequest<UpstreamBody>, UpstreamError> {
        stream.set_nodelay(true).map_err(UpstreamError::Connect)?;
        match &self.tls {
            None => handshake(stream).await,
            Some((connector, name)) => {
                let stream = connector
                    .connect(name.clone(), stream)
                    .await
                    .map_err(UpstreamError::Tls)?;
                handshake(stream).await
            }
        }
    }
}

/// The least time an address is given when others follow: a lost SYN is
/// sent again after a second, and a healthy address must survive that.
const LEAST_SHARE: Duration = Duration::from_millis(1500);

/// Connects to the first of `addresses` that answers by `deadline`, trying
/// them in order. Each gets an equal share of the time left (at least
/// [`LEAST_SHARE`]), so one that never answers (a blackholed IPv6 route, a
/// dead replica behind a name) does not take the whole connect timeout and
/// leave the others untried.
pub(crate) async fn connect_any(
    addresses: &[SocketAddr],
    deadline: tokio::time::Instant,
) -> Result<TcpStream, UpstreamError> {
    let mut failure = None;
    for (tried, &address) in addresses.iter().enumerate() {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let share = (left / u32::try_from(addresses.len() - tried).unwrap_or(u32::MAX))
            .max(LEAST_SHARE)
            .min(left);
        match tokio::time::timeout(share, TcpStream::connect(address)).await {
            Ok(Ok(stream)) => return Ok(stream),
            Ok(Err(e)) => failure = Some(UpstreamError::Connect(e)),
            Err(_) => failure = Some(UpstreamError::ConnectTimeout(share)),
        }
    }
    Err(failure.expect("at least one address was tried"))
}

/// Starts HTTP/1.1 on a connection; its I/O runs as a task of this worker.
async fn handshake<S>(stream: S) -> Result<SendRequest<UpstreamBody>, UpstreamError>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (sender, connection) = http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::debug!(error = %e, "upstream connection ended with an error");
        }
    });
    Ok(sender)
}

/// An upstream response body that brings its connection back to the pool
/// once read to the end (dropped early, the connection closes with it).
pub struct PooledBody {
    body: Incoming,
    /// Whether the body was read to its end (a chunked body says so only by ending).
    ended: bool,
    sender: Option<SendRequest<UpstreamBody>>,
    idle: Arc<Mutex<IdleList>>,
}

impl Body for PooledBody {
    type Data = bytes::Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let frame = Pin::new(&mut self.body).poll_frame(cx);
        if let Poll::Ready(None) = frame {
            self.ended = true;
        }
        frame
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

impl Drop for PooledBody {
    fn drop(&mut self) {
        let Some(sender) = self.sender.take() else {
            return;
        };
        if !(self.ended || self.body.is_end_stream()) || sender.is_closed() {
            return;
        }
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        if idle.len() >= MAX_IDLE {
            idle.pop_front();
        }
        idle.push_back(Idle {
            sender,
            since: Instant::now(),
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(method: Method) -> Request<UpstreamBody> {
        let mut request = Request::new(Either::Right(Empty::new()));
        *request.method_mut() = method;
        *request.uri_mut() = "/a/b?c=d".parse().unwrap();
        request
            .headers_mut()
            .insert(header::HOST, http::HeaderValue::from_static("up:80"));
        request
    }

    #[test]
    fn only_bodiless_gets_and_heads_are_sent_again() {
        for method in [Method::GET, Method::HEAD] {
            let copy = replayable(&request(method.clone())).expect("replayable");
            assert_eq!(copy.method(), method);
            assert_eq!(copy.uri(), "/a/b?c=d");
            assert_eq!(copy.headers()[header::HOST], "up:80");
        }
        for method in [Method::POST, Method::PUT, Method::DELETE, Method::PATCH] {
            assert!(replayable(&request(method)).is_none());
        }
    }

    /// A listener whose accept queue is full: the kernel drops further
    /// SYNs, so a connect to it hangs as one to a blackholed address does.
    fn blackhole() -> (tokio::net::TcpListener, TcpStream, SocketAddr) {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let listener = socket.listen(0).unwrap();
        let address = listener.local_addr().unwrap();
        let queued = std::net::TcpStream::connect(address).unwrap();
        queued.set_nonblocking(true).unwrap();
        (listener, TcpStream::from_std(queued).unwrap(), address)
    }

    #[tokio::test]
    async fn an_address_that_never_answers_leaves_time_for_the_next() {
        let (_hole, _queued, dead) = blackhole();
        let alive = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let alive_at = alive.local_addr().unwrap();
        let budget = Duration::from_secs(4);
        let started = tokio::time::Instant::now();
        let stream = connect_any(&[dead, alive_at], started + budget)
            .await
            .expect("the second address answers");
        assert_eq!(stream.peer_addr().unwrap(), alive_at);
        let took = started.elapsed();
        assert!(
            took >= budget / 2 && took < budget,
            "the dead address had half the budget: {took:?}"
        );
        // Alone, it fails by the deadline.
        let started = tokio::time::Instant::now();
        let only = connect_any(&[dead], started + Duration::from_millis(300)).await;
        assert!(matches!(only, Err(UpstreamError::ConnectTimeout(_))));
    }
}
