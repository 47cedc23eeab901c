//! `hyper-baseline LAYOUT LISTEN UPSTREAM` — forwards every request to
//! UPSTREAM (an address) and streams the answer back, nothing else.
//!
//! LAYOUT:
//! - `shared`: one multi-threaded runtime, hyper-util's pooled client (tokengate before 2026-11-26);
//! - `per-core`: a current-thread runtime per core, each with its own pooled client (tokengate on
//!   2026-11-26);
//! - `per-core-own-pool`: the same, with a minimal pool of hyper HTTP/1 connections instead of
//!   hyper-util's client (no pool lock, no per-request key hashing; tokengate's layout).
//!
//! The per-core layouts start `HYPER_BASELINE_THREADS` runtimes (default: one per core; tokengate's
//! default is two per core).

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::cell::RefCell;
use std::convert::Infallible;
use std::net::SocketAddr;

use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use hyper::{Request, Response};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::{TokioExecutor, TokioIo};

type Legacy = Client<HttpConnector, Incoming>;

thread_local! {
    static LEGACY: Legacy = Client::builder(TokioExecutor::new()).build_http();
    static IDLE: RefCell<Vec<SendRequest<Incoming>>> = const { RefCell::new(Vec::new()) };
}

#[derive(Clone, Copy, PartialEq)]
enum Layout {
    Shared,
    PerCore,
    PerCoreOwnPool,
}

async fn forward(
    layout: Layout,
    upstream: SocketAddr,
    mut req: Request<Incoming>,
) -> Response<Incoming> {
    if layout == Layout::PerCoreOwnPool {
        let mut sender = checkout(upstream).await;
        let response = sender.send_request(req).await.expect("upstream answers");
        IDLE.with(|idle| idle.borrow_mut().push(sender));
        return response;
    }
    let path = req.uri().path_and_query().map_or("/", |p| p.as_str());
    *req.uri_mut() = format!("http://{upstream}{path}").parse().expect("uri");
    let client = LEGACY.with(Legacy::clone);
    client.request(req).await.expect("upstream answers")
}

/// An idle connection ready for a request, or a new one.
async fn checkout(upstream: SocketAddr) -> SendRequest<Incoming> {
    while let Some(sender) = IDLE.with(|idle| idle.borrow_mut().pop()) {
        if sender.is_ready() {
            return sender;
        }
        if !sender.is_closed() {
            // Still streaming its last answer: keep it for later.
            IDLE.with(|idle| idle.borrow_mut().insert(0, sender));
            break;
        }
    }
    let stream = tokio::net::TcpStream::connect(upstream)
        .await
        .expect("connect");
    stream.set_nodelay(true).expect("nodelay");
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .expect("handshake");
    tokio::spawn(conn);
    sender
}

async fn accept_loop(listener: tokio::net::TcpListener, layout: Layout, upstream: SocketAddr) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let _ = stream.set_nodelay(true);
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| async move {
                Ok::<_, Infallible>(forward(layout, upstream, req).await)
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let usage = "usage: hyper-baseline shared|per-core|per-core-own-pool LISTEN UPSTREAM";
    let layout = match args.get(1).map(String::as_str) {
        Some("shared") => Layout::Shared,
        Some("per-core") => Layout::PerCore,
        Some("per-core-own-pool") => Layout::PerCoreOwnPool,
        _ => panic!("{usage}"),
    };
    let listen: SocketAddr = args.get(2).and_then(|a| a.parse().ok()).expect(usage);
    let upstream: SocketAddr = args.get(3).and_then(|a| a.parse().ok()).expect(usage);
    let listener = std::net::TcpListener::bind(listen).expect("bind");
    listener.set_nonblocking(true).expect("nonblocking");
    if layout == Layout::Shared {
        let runtime = tokio::runtime::Runtime::new().expect("runtime");
        let _guard = runtime.enter();
        let listener = tokio::net::TcpListener::from_std(listener).expect("listener");
        runtime.block_on(accept_loop(listener, layout, upstream));
        return;
    }
    let count = std::env::var("HYPER_BASELINE_THREADS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    let threads: Vec<_> = (0..count)
        .map(|_| {
            let listener = listener.try_clone().expect("listener");
            std::thread::spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("runtime");
                runtime.block_on(async move {
                    let listener = tokio::net::TcpListener::from_std(listener).expect("listener");
                    accept_loop(listener, layout, upstream).await;
                });
            })
        })
        .collect();
    for thread in threads {
        let _ = thread.join();
    }
}
