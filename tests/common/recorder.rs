//! A small recording upstream: answers every request and remembers what it
//! saw (method, exact target, headers, body length), so tests can prove what
//! was — and was not — forwarded.
#![allow(dead_code)]

use std::convert::Infallible;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};

#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    pub target: String,
    pub headers: Vec<(String, String)>,
    pub body_len: u64,
    /// The body's first bytes (up to [`KEPT_BODY`]).
    pub body: Vec<u8>,
    /// Whether the body ended as its framing said (not cut off).
    pub complete: bool,
}

/// How much of each request body is kept for inspection.
pub const KEPT_BODY: usize = 16 << 20;

impl Seen {
    pub fn header(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
            .collect()
    }
}

pub struct Recorder {
    pub port: u16,
    seen: Arc<Mutex<Vec<Seen>>>,
    _runtime: tokio::runtime::Runtime,
}

type Body = http_body_util::Either<
    Full<Bytes>,
    StreamBody<futures_util::stream::Iter<std::vec::IntoIter<Result<Frame<Bytes>, Infallible>>>>,
>;

impl Recorder {
    pub fn start() -> Recorder {
        Recorder::start_serving(None)
    }

    /// Also answers GETs from the files under `root`, with `{{upstream}}` in
    /// them replaced by this server's URL (documents that name their server
    /// by absolute URL, like NuGet's).
    pub fn start_serving(root: Option<std::path::PathBuf>) -> Recorder {
        let root = Arc::new(root);
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .unwrap();
        let port = listener.local_addr().unwrap().port();
        let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
        let shared = seen.clone();
        runtime.spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let seen = shared.clone();
                let root = root.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req| {
                        handle(req, seen.clone(), port, root.clone())
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Recorder {
            port,
            seen,
            _runtime: runtime,
        }
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    /// What was seen once `n` requests were, or once `timeout` passed: the
    /// proxy may answer its client before the upstream has finished reading
    /// a request the proxy aborted.
    pub fn seen_at_least(&self, n: usize, timeout: std::time::Duration) -> Vec<Seen> {
        let start = std::time::Instant::now();
        loop {
            let seen = self.seen();
            if seen.len() >= n || start.elapsed() >= timeout {
                return seen;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
    }

    pub fn clear(&self) {
        self.seen.lock().unwrap().clear();
    }
}

/// Responses by path: `/big/N` streams N bytes; `.../session` sets cookies;
/// `.../unauthorized` answers 401 with another host's challenge;
/// `.../redirect` answers 302 to
/// the upstream URL `.../elsewhere/x?y=1` beside it; `/meta` returns a JSON document naming upstream URLs;
/// anything else echoes `ok`.
async fn handle(
    req: Request<Incoming>,
    seen: Arc<Mutex<Vec<Seen>>>,
    port: u16,
    root: Arc<Option<std::path::PathBuf>>,
) -> Result<Response<Body>, Infallible> {
    let method = req.method().to_string();
    let target = req.uri().to_string();
    let headers = req
        .headers()
        .iter()
        .map(|(k, v)| {
            (
                k.as_str().to_string(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect();
    let mut body = req.into_body();
    let mut body_len = 0u64;
    let mut kept = Vec::new();
    let mut complete = true;
    while let Some(frame) = body.frame().await {
        match frame {
            Ok(f) => {
                if let Some(d) = f.data_ref() {
                    body_len += d.len() as u64;
                    let room = KEPT_BODY.saturating_sub(kept.len());
                    kept.extend_from_slice(&d[..d.len().min(room)]);
                }
            }
            Err(_) => {
                complete = false;
                break;
            }
        }
    }
    let is_get = method == "GET";
    let is_put = method == "PUT";
    seen.lock().unwrap().push(Seen {
        method,
        target: target.clone(),
        headers,
        body_len,
        body: kept,
        complete,
    });
    let path = target.split('?').next().unwrap_or("");
    let tail = path.rsplit('/').next().unwrap_or("");
    let file = (*root)
        .as_ref()
        .filter(|_| is_get && !path.contains(".."))
        .map(|root| root.join(path.trim_start_matches('/')))
        .filter(|f| f.is_file());
    let response = if let Some(file) = file {
        let bytes = std::fs::read(&file).unwrap();
        let (content_type, bytes) = if path.ends_with(".json") {
            let text = String::from_utf8(bytes)
                .unwrap()
                .replace("{{upstream}}", &format!("http://127.0.0.1:{port}"));
            ("application/json", text.into_bytes())
        } else {
            ("application/octet-stream", bytes)
        };
        Response::builder()
            .header("content-type", content_type)
            .body(http_body_util::Either::Left(Full::new(Bytes::from(bytes))))
            .unwrap()
    } else if is_put && root.is_some() {
        Response::builder()
            .status(201)
            .body(http_body_util::Either::Left(Full::new(Bytes::from_static(
                b"created",
            ))))
            .unwrap()
    } else if let Some(n) = path
        .strip_suffix(tail)
        .filter(|p| p.ends_with("/big/"))
        .and(tail.parse::<usize>().ok())
    {
        const CHUNK: usize = 1 << 20;
        let chunk = Bytes::from(vec![b'x'; CHUNK]);
        let frames: Vec<_> = (0..n.div_ceil(CHUNK))
            .map(|i| Ok(Frame::data(chunk.slice(..CHUNK.min(n - i * CHUNK)))))
            .collect();
        Response::builder()
            .header("content-length", n)
            .body(http_body_util::Either::Right(StreamBody::new(
                futures_util::stream::iter(frames),
            )))
            .unwrap()
    } else if path.ends_with("/session") {
        // A session for whoever authenticated: the proxy's own account.
        Response::builder()
            .header("set-cookie", "sid=upstream-session; Path=/; HttpOnly")
            .header("set-cookie", "theme=dark")
            .body(http_body_util::Either::Left(Full::new(Bytes::from_static(
                b"ok",
            ))))
            .unwrap()
    } else if path.ends_with("/unauthorized") {
        // As ghcr.io or Docker Hub answer: their own token service's realm.
        Response::builder()
            .status(401)
            .header(
                "www-authenticate",
                r#"Bearer realm="https://elsewhere.test/token",service="elsewhere""#,
            )
            .body(http_body_util::Either::Left(Full::new(Bytes::new())))
            .unwrap()
    } else if path.ends_with("/redirect") {
        Response::builder()
            .status(302)
            .header(
                "location",
                format!(
                    "http://127.0.0.1:{port}{}/elsewhere/x?y=1",
                    path.trim_end_matches("/redirect")
                ),
            )
            .body(http_body_util::Either::Left(Full::new(Bytes::new())))
            .unwrap()
    } else if path.ends_with("/meta") {
        let doc =
            format!(r#"{{"dist":{{"tarball":"http://127.0.0.1:{port}/pkg/-/pkg-1.0.0.tgz"}}}}"#);
        Response::builder()
            .header("content-type", "application/json")
            .body(http_body_util::Either::Left(Full::new(Bytes::from(doc))))
            .unwrap()
    } else {
        Response::new(http_body_util::Either::Left(Full::new(Bytes::from_static(
            b"ok",
        ))))
    };
    Ok(response)
}
