//! HTTP/1 framing attacks, one test per attack: request smuggling (the
//! proxy and the upstream reading a request's end differently), obfuscated
//! framing headers, protocol upgrades past the check, and responses that
//! would answer another client's request. Whatever bytes arrive, the
//! upstream sees only requests the proxy authorized, each framed as the
//! proxy read it, or nothing; a request the proxy cannot frame gets 400.

mod common;
#[path = "common/recorder.rs"]
mod recorder;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{acme_web_route, read_response, Gate};
use recorder::{Recorder, Seen};

/// A proxy in front of a recording upstream, and a token for acme/web.
struct Setup {
    up: Recorder,
    gate: Gate,
    auth: String,
}

impl Setup {
    fn start() -> Setup {
        let up = Recorder::start();
        let gate = Gate::start(&acme_web_route(&up.url()));
        let auth = gate.package_writer("project:acme/web").basic();
        Setup { up, gate, auth }
    }

    /// An authorized upload's head up to its framing headers.
    fn put(&self) -> String {
        format!(
            "PUT /generic/acme/web/f HTTP/1.1\r\nHost: x\r\nAuthorization: {}\r\n",
            self.auth
        )
    }

    /// A request hidden after the first one's body, to a path the token may
    /// not reach: the proxy answers it itself if it reads it as a request.
    fn smuggled(&self) -> String {
        format!(
            "GET /generic/acme/api/smuggled HTTP/1.1\r\nHost: x\r\nAuthorization: {}\r\n\
             Connection: close\r\n\r\n",
            self.auth
        )
    }

    /// Sends `bytes` on one connection: the statuses of the answers.
    fn attack(&self, bytes: &str) -> Vec<u16> {
        exchange(self.gate.port, bytes.as_bytes())
    }

    /// What reached the upstream, after asserting that no hidden request did.
    fn forwarded(&self) -> Vec<Seen> {
        let seen = self.up.seen();
        for s in &seen {
            assert!(!s.target.contains("smuggled"), "smuggled: {s:?}");
        }
        seen
    }

    fn assert_refused(&self, bytes: &str) {
        assert_eq!(self.attack(bytes), [400], "{bytes:?}");
        assert!(self.forwarded().is_empty(), "{:?}", self.up.seen());
    }
}

/// Writes `bytes` on one connection and reads answers until the proxy
/// closes it (or stays silent for two seconds): their statuses, in order.
fn exchange(port: u16, bytes: &[u8]) -> Vec<u16> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(2)))
        .unwrap();
    stream.write_all(bytes).unwrap();
    let mut reader = BufReader::new(stream);
    let mut statuses = Vec::new();
    while reader.fill_buf().is_ok_and(|b| !b.is_empty()) {
        statuses.push(read_response(&mut reader).status);
    }
    statuses
}

/// A request framed both ways (CL.TE, TE.CL): the chunked framing wins, the
/// length is dropped before forwarding (RFC 9112 §6.3), and the connection
/// closes after the answer, so bytes past the chunked body are never read
/// as a request, by the proxy or the upstream.
#[test]
fn a_length_beside_chunked_framing_yields_to_it_and_ends_the_connection() {
    let s = Setup::start();
    let smuggled = s.smuggled();
    let chunked = "5\r\nhello\r\n0\r\n\r\n";
    for length in [5, chunked.len() + smuggled.len()] {
        for framing in [
            format!("Content-Length: {length}\r\nTransfer-Encoding: chunked\r\n"),
            format!("Transfer-Encoding: chunked\r\nContent-Length: {length}\r\n"),
        ] {
            s.up.clear();
            let statuses = s.attack(&format!("{}{framing}\r\n{chunked}{smuggled}", s.put()));
            assert_eq!(statuses, [200], "{framing:?}");
            let seen = s.forwarded();
            assert_eq!(seen.len(), 1, "{framing:?}: {seen:?}");
            assert_eq!(seen[0].body, b"hello", "{framing:?}");
            assert!(seen[0].complete);
            assert!(seen[0].header("content-length").iter().all(|l| *l == "5"));
        }
    }
}

#[test]
fn conflicting_or_malformed_content_lengths_are_refused() {
    let s = Setup::start();
    for lengths in [
        "Content-Length: 0\r\nContent-Length: 60\r\n",
        "Content-Length: 0, 60\r\n",
        "Content-Length: +60\r\n",
        "Content-Length: -1\r\n",
        "Content-Length: 0x3c\r\n",
        "Content-Length: 6 0\r\n",
        "Content-Length: 99999999999999999999999\r\n",
    ] {
        s.assert_refused(&format!("{}{lengths}\r\n{}", s.put(), s.smuggled()));
    }
}

#[test]
fn transfer_encodings_that_do_not_end_in_chunked_are_refused() {
    let s = Setup::start();
    for encoding in [
        "Transfer-Encoding: xchunked\r\n",
        "Transfer-Encoding: chunked, identity\r\n",
        "Transfer-Encoding: identity\r\n",
        "Transfer-Encoding: chunked\r\nTransfer-Encoding: identity\r\n",
        "Transfer-Encoding: gzip\r\n",
    ] {
        s.assert_refused(&format!(
            "{}{encoding}\r\n0\r\n\r\n{}",
            s.put(),
            s.smuggled()
        ));
    }
}

#[test]
fn header_lines_a_lenient_parser_would_read_differently_are_refused() {
    let s = Setup::start();
    for header in [
        // Whitespace before the colon: some servers drop it, others the header.
        "Transfer-Encoding : chunked\r\n",
        // A folded line continues the header for some servers only.
        "X-Pad: a\r\n Transfer-Encoding: chunked\r\n",
        "Transfer-Encoding:\r\n chunked\r\n",
        // A bare CR or a NUL inside a value.
        "X-Pad: a\rTransfer-Encoding: chunked\r\n",
        "X-Pad: a\0b\r\n",
    ] {
        s.assert_refused(&format!(
            "{}{header}Content-Length: 0\r\n\r\n{}",
            s.put(),
            s.smuggled()
        ));
    }
}

/// Pipelined requests are read one by one, and each is checked on its own.
#[test]
fn a_pipelined_request_is_checked_on_its_own() {
    let s = Setup::start();
    let first = format!(
        "GET /generic/acme/web/f HTTP/1.1\r\nHost: x\r\nAuthorization: {}\r\n\r\n",
        s.auth
    );
    assert_eq!(s.attack(&(first + &s.smuggled())), [200, 404]);
    assert_eq!(s.forwarded().len(), 1);
}

/// A body that breaks its chunked framing half-way: the upstream must not
/// take what came before for the whole upload, and the client is told
/// that its body, not the upstream, failed.
#[test]
fn a_broken_chunked_body_never_reaches_the_upstream_whole() {
    let s = Setup::start();
    for broken in ["zz\r\n", "fffffffffffffffffff1\r\n", "5\r\nabcdefgh\r\n"] {
        let request = format!(
            "{}Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n{broken}",
            s.put()
        );
        // The client's fault, told as such: not the upstream's 502.
        assert_eq!(s.attack(&request), [400], "{broken:?}");
    }
    // The upstream got at most the first chunk of each, and then no end.
    // (The proxy may give up before it has sent the head, and the upstream
    // may still be reading an aborted one when the client has its 400.)
    s.up.seen_at_least(3, Duration::from_secs(2));
    let seen = s.forwarded();
    assert!(seen.len() <= 3, "{seen:?}");
    for seen in seen {
        assert!(
            !seen.complete,
            "a broken upload reached the upstream whole: {seen:?}"
        );
    }
}

/// `Upgrade: h2c` (or `websocket`) forwarded would let the client speak
/// HTTP/2 straight to the upstream over the proxy's connection, every later
/// request past the check.
#[test]
fn protocol_upgrades_are_not_forwarded() {
    let s = Setup::start();
    for upgrade in [
        "Upgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQAAP__\r\nConnection: Upgrade, HTTP2-Settings\r\n",
        "Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
         Sec-WebSocket-Version: 13\r\n",
    ] {
        let request = format!(
            "GET /generic/acme/web/f HTTP/1.1\r\nHost: x\r\nAuthorization: {}\r\n{upgrade}\r\n{}",
            s.auth,
            s.smuggled()
        );
        let statuses = s.attack(&request);
        assert!(!statuses.contains(&101), "{upgrade:?}: {statuses:?}");
    }
    for seen in s.forwarded() {
        // `Sec-WebSocket-*` may pass: without `Upgrade` they ask for nothing.
        for name in ["upgrade", "http2-settings", "connection"] {
            assert!(seen.header(name).is_empty(), "{name} forwarded: {seen:?}");
        }
    }
}

/// An upstream that answers its first request with a second response
/// appended: left on the pooled connection, it would answer the next
/// client's request.
#[test]
fn bytes_after_an_upstream_response_never_answer_another_request() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let upstream = format!("http://{}", listener.local_addr().unwrap());
    let first = Arc::new(AtomicBool::new(true));
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let first = first.clone();
            std::thread::spawn(move || {
                let mut reader = BufReader::new(stream);
                while read_head(&mut reader) {
                    let answer: &[u8] = if first.swap(false, Ordering::SeqCst) {
                        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok\
                          HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nLEAKED"
                    } else {
                        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nfresh"
                    };
                    if reader.get_mut().write_all(answer).is_err() {
                        break;
                    }
                }
            });
        }
    });
    let gate = Gate::start(&acme_web_route(&upstream));
    let auth = gate
        .token("project:acme/web", "read_package_registry", &[])
        .basic();
    let get = |n: usize| {
        let headers = [("Authorization", auth.as_str())];
        let r = common::send(
            gate.port,
            "GET",
            &format!("/generic/acme/web/{n}"),
            &headers,
            b"",
        );
        (r.status, r.text())
    };
    assert_eq!(get(0), (200, "ok".to_string()));
    for n in 1..5 {
        let (status, body) = get(n);
        assert_ne!(
            body, "LEAKED",
            "request {n} got the first request's extra response"
        );
        assert_eq!((status, body.as_str()), (200, "fresh"), "request {n}");
    }
}

/// Reads one request head (these carry no bodies); false at the end.
fn read_head(reader: &mut BufReader<TcpStream>) -> bool {
    let mut line = String::new();
    loop {
        line.clear();
        match reader.read_line(&mut line) {
            Ok(0) | Err(_) => return false,
            Ok(_) if line == "\r\n" => return true,
            Ok(_) => {}
        }
    }
}

/// `Expect: 100-continue` without a credential: refused before the body is
/// asked for, and nothing forwarded.
#[test]
fn an_unauthorized_upload_is_refused_before_its_body() {
    let s = Setup::start();
    let mut stream = TcpStream::connect(("127.0.0.1", s.gate.port)).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    stream
        .write_all(
            b"PUT /generic/acme/web/f HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\
              Expect: 100-continue\r\n\r\n",
        )
        .unwrap();
    let mut reader = BufReader::new(stream);
    assert_eq!(read_response(&mut reader).status, 401);
    let mut rest = Vec::new();
    let _ = reader.read_to_end(&mut rest);
    assert!(
        !String::from_utf8_lossy(&rest).contains("100 Continue"),
        "{rest:?}"
    );
    assert!(s.forwarded().is_empty());
}
