//! The proxy's connections to its upstreams, seen from the upstream: they are
//! reused (whatever the body framing), an idle one the upstream closed never
//! costs a client its request, and a burst does not leave every connection
//! it opened behind.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{send, Gate};

/// A raw HTTP/1.1 upstream that counts connections. Its answer depends on
/// the path's first segment: `keep` (Content-Length), `chunked`, `slow`
/// (answers after 300 ms), `hangup` (closes the connection 20 ms after
/// answering, without saying so: an idle timeout racing the next request),
/// `cut` (closes the connection without answering; counted).
struct Upstream {
    port: u16,
    accepted: Arc<AtomicUsize>,
    open: Arc<AtomicUsize>,
    cut: Arc<AtomicUsize>,
}

impl Upstream {
    fn start() -> Upstream {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let accepted = Arc::new(AtomicUsize::new(0));
        let open = Arc::new(AtomicUsize::new(0));
        let cut = Arc::new(AtomicUsize::new(0));
        let (a, o, c) = (accepted.clone(), open.clone(), cut.clone());
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { continue };
                a.fetch_add(1, Ordering::SeqCst);
                o.fetch_add(1, Ordering::SeqCst);
                let (o, c) = (o.clone(), c.clone());
                std::thread::spawn(move || {
                    serve(stream, &c);
                    o.fetch_sub(1, Ordering::SeqCst);
                });
            }
        });
        Upstream {
            port,
            accepted,
            open,
            cut,
        }
    }

    fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }

    fn open(&self) -> usize {
        self.open.load(Ordering::SeqCst)
    }
}

/// Answers requests (GETs without bodies) until the peer closes.
fn serve(stream: TcpStream, cut: &AtomicUsize) {
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut writer = stream;
    loop {
        let mut request_line = String::new();
        if reader.read_line(&mut request_line).unwrap_or(0) == 0 {
            return;
        }
        loop {
            let mut line = String::new();
            if reader.read_line(&mut line).unwrap_or(0) == 0 {
                return;
            }
            if line == "\r\n" {
                break;
            }
        }
        let path = request_line.split(' ').nth(1).unwrap_or("/").to_string();
        let kind = path.trim_start_matches('/').split('/').next().unwrap_or("");
        if kind == "cut" {
            cut.fetch_add(1, Ordering::SeqCst);
            return;
        }
        let answer = match kind {
            "chunked" => format!(
                "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n{path}\r\n0\r\n\r\n",
                path.len()
            ),
            _ => format!(
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{path}",
                path.len()
            ),
        };
        if kind == "slow" {
            std::thread::sleep(Duration::from_millis(300));
        }
        if writer.write_all(answer.as_bytes()).is_err() {
            return;
        }
        if kind == "hangup" {
            std::thread::sleep(Duration::from_millis(20));
            return;
        }
    }
}

fn gate(up: &Upstream, workers: usize) -> (Gate, String) {
    let body = format!(
        r#"
[upstream.raw]
url = "http://127.0.0.1:{}"

[[route]]
name = "raw"
format = "generic"
path = "/raw"
namespace = "acme/web"
upstream = "raw"
strip_prefix = true
"#,
        up.port
    );
    let gate = Gate::start_full(&format!("workers = {workers}"), &body, &[]);
    let basic = gate
        .token("project:acme/web", "read_package_registry", &[])
        .basic();
    (gate, basic)
}

/// GETs `target` from the gate on port `port` with Basic credentials.
fn get(port: u16, basic: &str, target: &str) -> common::RawResponse {
    send(port, "GET", target, &[("Authorization", basic)], b"")
}

/// GETs `path` through the gate and checks the upstream's echo of it.
fn get_echo(gate: &Gate, basic: &str, path: &str) {
    let r = get(gate.port, basic, &format!("/raw{path}"));
    assert_eq!(r.status, 200, "{path}: {}", r.text());
    assert_eq!(r.text(), path);
}

#[test]
fn one_upstream_connection_serves_request_after_request() {
    let up = Upstream::start();
    let (gate, basic) = gate(&up, 1);
    for i in 0..30 {
        get_echo(&gate, &basic, &format!("/keep/{i}"));
        // A chunked body ends only by its last chunk: that too frees the connection.
        get_echo(&gate, &basic, &format!("/chunked/{i}"));
    }
    assert_eq!(up.accepted(), 1, "60 requests, one connection");
}

#[test]
fn an_idle_connection_the_upstream_closed_never_fails_a_request() {
    let up = Upstream::start();
    let (gate, basic) = gate(&up, 1);
    // Each request lands before, during or after the upstream's hang-up of
    // the connection the previous one used.
    for i in 0..40u64 {
        get_echo(&gate, &basic, &format!("/hangup/{i}"));
        std::thread::sleep(Duration::from_millis(i % 4 * 8));
    }
    assert_eq!(up.accepted(), 40, "a closed connection is never reused");
}

/// Idle connections for the next requests: `n` at once, each held 300 ms.
fn open_idle_connections(gate: &Gate, basic: &str, n: usize) {
    let clients: Vec<_> = (0..n)
        .map(|i| {
            let (port, basic) = (gate.port, basic.to_string());
            std::thread::spawn(move || {
                let r = get(port, &basic, &format!("/raw/slow/{i}"));
                assert_eq!(r.status, 200, "{}", r.text());
            })
        })
        .collect();
    for client in clients {
        client.join().unwrap();
    }
}

#[test]
fn a_request_the_upstream_drops_is_sent_twice_at_most() {
    let up = Upstream::start();
    let (gate, basic) = gate(&up, 1);
    open_idle_connections(&gate, &basic, 6);
    let r = get(gate.port, &basic, "/raw/cut/x");
    assert_eq!(r.status, 502, "{}", r.text());
    assert_eq!(
        up.cut.load(Ordering::SeqCst),
        2,
        "once, then once more on another connection; never once per idle connection"
    );
}

#[test]
fn a_burst_leaves_at_most_128_idle_connections() {
    let up = Upstream::start();
    let (gate, basic) = gate(&up, 1);
    open_idle_connections(&gate, &basic, 200);
    assert_eq!(up.accepted(), 200, "the burst had its own connections");
    // The proxy closes what it does not keep; the upstream sees the hang-ups.
    let deadline = Instant::now() + Duration::from_secs(10);
    while up.open() > 128 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(up.open(), 128, "kept idle: the most a pool holds");
    // And the kept ones serve the next requests without new connections.
    for i in 0..10 {
        get_echo(&gate, &basic, &format!("/keep/{i}"));
    }
    assert_eq!(up.accepted(), 200);
}

/// An upstream route to `url` (with more `[upstream]` keys in `extra`).
fn route_to(url: &str, extra: &str) -> String {
    format!(
        r#"
[upstream.far]
url = "{url}"
{extra}

[[route]]
name = "far"
format = "generic"
path = "/far"
namespace = "acme/web"
upstream = "far"
"#
    )
}

#[test]
fn a_dead_upstream_or_a_stalled_tls_handshake_is_a_502_not_a_hang() {
    let dir = tempfile::tempdir().unwrap();
    let (ca, _, _) = common::pki::test_pki(dir.path());
    // Nothing listens on the port of a listener just closed.
    let closed = TcpListener::bind("127.0.0.1:0").unwrap();
    let dead = closed.local_addr().unwrap().port();
    drop(closed);
    // The kernel completes TCP handshakes for a listener that never accepts:
    // the TLS handshake gets no answer.
    let silent = TcpListener::bind("127.0.0.1:0").unwrap();
    let stalled = silent.local_addr().unwrap().port();
    let ca = format!("ca_file = \"{}\"", ca.display());
    for (url, extra) in [
        (format!("http://127.0.0.1:{dead}"), ""),
        (format!("https://localhost:{stalled}"), ca.as_str()),
    ] {
        let gate = Gate::start_full(
            "upstream_connect_timeout_seconds = 1",
            &route_to(&url, extra),
            &[],
        );
        let basic = gate
            .token("project:acme/web", "read_package_registry", &[])
            .basic();
        let started = Instant::now();
        let r = get(gate.port, &basic, "/far/x");
        assert_eq!(r.status, 502, "{url}: {}", r.text());
        assert!(r.text().contains("far"), "names the upstream: {}", r.text());
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{url}: the connect timeout (1 s) bounds the wait, took {:?}",
            started.elapsed()
        );
    }
    drop(silent);
}
