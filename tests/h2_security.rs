//! HTTP/2 downgrade attacks, one test per attack. The proxy takes HTTP/2
//! from clients and speaks HTTP/1.1 to upstreams, so anything an HTTP/2
//! request can carry that HTTP/1 would read as framing (CR LF in a value, a
//! `transfer-encoding`, a length its DATA frames contradict) would smuggle
//! a request past the check. The frames are written by hand: a stock client
//! refuses to send them.

mod common;
#[path = "common/recorder.rs"]
mod recorder;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use common::{acme_web_route, Gate};
use recorder::Recorder;

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const DATA: u8 = 0x0;
const HEADERS: u8 = 0x1;
const RST_STREAM: u8 = 0x3;
const SETTINGS: u8 = 0x4;
const GOAWAY: u8 = 0x7;
const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const ACK: u8 = 0x1;

fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = u32::try_from(payload.len()).unwrap().to_be_bytes();
    let mut f = vec![len[1], len[2], len[3], kind, flags];
    f.extend_from_slice(&stream.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// An HPACK integer with an `n`-bit prefix (RFC 7541 §5.1).
fn hpack_int(out: &mut Vec<u8>, mut value: usize, n: u32) {
    let max = (1usize << n) - 1;
    if value < max {
        out.push(value as u8);
        return;
    }
    out.push(max as u8);
    value -= max;
    while value >= 128 {
        out.push((value % 128 + 128) as u8);
        value /= 128;
    }
    out.push(value as u8);
}

/// A header block of literal fields without indexing, names and values sent
/// as given: no Huffman coding, nothing the encoder would have checked.
fn header_block(fields: &[(&[u8], &[u8])]) -> Vec<u8> {
    let mut block = Vec::new();
    for (name, value) in fields {
        block.push(0x00);
        hpack_int(&mut block, name.len(), 7);
        block.extend_from_slice(name);
        hpack_int(&mut block, value.len(), 7);
        block.extend_from_slice(value);
    }
    block
}

/// How the proxy answered stream 1.
#[derive(Debug, PartialEq)]
enum Answer {
    /// A response whose status is `200` (HPACK's static entry 8).
    Ok,
    /// A response with another status.
    OtherStatus,
    /// The stream or the connection was reset.
    Reset,
}

/// Opens a connection, sends `fields` as stream 1's headers and `body` as
/// its DATA, and reads until stream 1 is answered.
fn exchange(port: u16, fields: &[(&[u8], &[u8])], body: Option<&[u8]>) -> Answer {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut out = PREFACE.to_vec();
    out.extend(frame(SETTINGS, 0, 0, &[]));
    let headers_flags = END_HEADERS | if body.is_none() { END_STREAM } else { 0 };
    out.extend(frame(HEADERS, headers_flags, 1, &header_block(fields)));
    if let Some(body) = body {
        out.extend(frame(DATA, END_STREAM, 1, body));
    }
    stream.write_all(&out).unwrap();
    loop {
        let mut head = [0u8; 9];
        if stream.read_exact(&mut head).is_err() {
            return Answer::Reset;
        }
        let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
        let (kind, flags) = (head[3], head[4]);
        let id = u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff;
        let mut payload = vec![0u8; len];
        if stream.read_exact(&mut payload).is_err() {
            return Answer::Reset;
        }
        match kind {
            SETTINGS if flags & ACK == 0 => {
                stream.write_all(&frame(SETTINGS, ACK, 0, &[])).unwrap()
            }
            GOAWAY => return Answer::Reset,
            RST_STREAM if id == 1 => return Answer::Reset,
            HEADERS if id == 1 => {
                return if payload.first() == Some(&0x88) {
                    Answer::Ok
                } else {
                    Answer::OtherStatus
                };
            }
            _ => {}
        }
    }
}

struct Setup {
    up: Recorder,
    gate: Gate,
    secret: String,
}

impl Setup {
    fn start() -> Setup {
        let up = Recorder::start();
        let gate = Gate::start(&acme_web_route(&up.url()));
        let secret = gate.package_writer("project:acme/web").secret;
        Setup { up, gate, secret }
    }

    /// An authorized request's pseudo-headers and credential, then `extra`.
    fn send(
        &self,
        method: &str,
        path: &[u8],
        extra: &[(&[u8], &[u8])],
        body: Option<&[u8]>,
    ) -> Answer {
        let authority = format!("127.0.0.1:{}", self.gate.port);
        let mut fields: Vec<(&[u8], &[u8])> = vec![
            (b":method", method.as_bytes()),
            (b":scheme", b"http"),
            (b":authority", authority.as_bytes()),
            (b":path", path),
            (b"deploy-token", self.secret.as_bytes()),
        ];
        fields.extend_from_slice(extra);
        exchange(self.gate.port, &fields, body)
    }

    /// Sends the request and asserts it was refused and nothing forwarded.
    fn assert_refused(
        &self,
        method: &str,
        path: &[u8],
        extra: &[(&[u8], &[u8])],
        body: Option<&[u8]>,
    ) {
        let answer = self.send(method, path, extra, body);
        assert_ne!(answer, Answer::Ok, "{extra:?}");
        assert!(self.up.seen().is_empty(), "forwarded: {:?}", self.up.seen());
    }
}

/// The hand-written frames are a real client: a well-formed request passes.
#[test]
fn a_well_formed_hand_written_request_is_forwarded() {
    let s = Setup::start();
    let benign: [(&[u8], &[u8]); 2] = [(b"x-pad", b"a: b\tc"), (b"te", b"trailers")];
    assert_eq!(
        s.send("GET", b"/generic/acme/web/f", &benign, None),
        Answer::Ok
    );
    assert_eq!(
        s.send(
            "PUT",
            b"/generic/acme/web/f",
            &[(b"content-length", b"5")],
            Some(b"hello")
        ),
        Answer::Ok
    );
    let seen = s.up.seen();
    assert_eq!(seen.len(), 2);
    assert_eq!(seen[1].body, b"hello");
}

/// CR, LF or NUL in a value would end the header line once written as
/// HTTP/1.1, and start a header or a request of the client's own.
#[test]
fn line_breaks_in_header_values_are_refused() {
    let s = Setup::start();
    for value in [
        &b"a\r\nTransfer-Encoding: chunked"[..],
        b"a\nX-Forwarded-For: 10.0.0.1",
        b"a\rb",
        b"a\0b",
    ] {
        s.assert_refused("GET", b"/generic/acme/web/f", &[(b"x-pad", value)], None);
    }
}

/// Line breaks or spaces in the pseudo-headers would rewrite the request
/// line an HTTP/1 upstream reads.
#[test]
fn line_breaks_in_the_method_or_path_are_refused() {
    let s = Setup::start();
    for path in [
        &b"/generic/acme/web/f HTTP/1.1\r\nHost: x\r\n\r\nGET /smuggled"[..],
        b"/generic/acme/web/f\r\nX: y",
        b"/generic/acme/web/f x",
    ] {
        s.assert_refused("GET", path, &[], None);
    }
    s.assert_refused(
        "GET /smuggled HTTP/1.1\r\n",
        b"/generic/acme/web/f",
        &[],
        None,
    );
}

/// HTTP/2 forbids connection-specific headers (RFC 9113 §8.2.2); passed
/// on, `transfer-encoding` would frame the body differently upstream.
#[test]
fn connection_specific_headers_are_refused() {
    let s = Setup::start();
    for (name, value) in [
        (&b"transfer-encoding"[..], &b"chunked"[..]),
        (b"connection", b"keep-alive"),
        (b"upgrade", b"h2c"),
        (b"keep-alive", b"timeout=5"),
        (b"te", b"gzip"),
    ] {
        s.assert_refused(
            "PUT",
            b"/generic/acme/web/f",
            &[(name, value)],
            Some(b"0\r\n\r\nGET /smuggled HTTP/1.1\r\n\r\n"),
        );
    }
}

/// A `content-length` the DATA frames contradict: the upstream would read
/// the rest of the body as a request of its own.
#[test]
fn a_length_the_data_contradicts_is_refused() {
    let s = Setup::start();
    let body = b"helloGET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n";
    s.assert_refused(
        "PUT",
        b"/generic/acme/web/f",
        &[(b"content-length", b"5")],
        Some(body),
    );
    s.assert_refused(
        "PUT",
        b"/generic/acme/web/f",
        &[(b"content-length", b"500")],
        Some(b"short"),
    );
}

/// Header names must be lowercase in HTTP/2 (RFC 9113 §8.2.1), and
/// pseudo-headers come first: a lenient reader might take either as another.
#[test]
fn malformed_header_names_are_refused() {
    let s = Setup::start();
    for (name, value) in [
        (&b"Transfer-Encoding"[..], &b"chunked"[..]),
        (b"x-pad:", b"a"),
        (b"x pad", b"a"),
        (b":path", b"/generic/acme/web/other"),
    ] {
        s.assert_refused("GET", b"/generic/acme/web/f", &[(name, value)], None);
    }
}
