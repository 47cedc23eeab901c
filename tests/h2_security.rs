//! HTTP/2 downgrade attacks, one test per attack. The proxy takes HTTP/2
//! from clients and speaks HTTP/1.1 to upstreams, so anything an HTTP/2
//! request can carry that HTTP/1 would read as framing (CR LF in a value, a
//! `transfer-encoding`, a length its DATA frames contradict) would smuggle
//! a request past the check. The frames are written by hand: a stock client
//! refuses to send them. Then the floods HTTP/2 allows a single
//! connection (CVE-2023-44487, CVE-2025-8671, CONTINUATION): each must end
//! its connection before the proxy does unbounded work for it.

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
const PING: u8 = 0x6;
const GOAWAY: u8 = 0x7;
const WINDOW_UPDATE: u8 = 0x8;
const CONTINUATION: u8 = 0x9;
const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const ACK: u8 = 0x1;
const CANCEL: u32 = 0x8;
const ENHANCE_YOUR_CALM: u32 = 0xb;

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

/// One frame as read: kind, flags, stream id and payload.
struct Frame {
    kind: u8,
    flags: u8,
    id: u32,
    payload: Vec<u8>,
}

/// Reads the next frame, `None` once the connection is closed or reset.
fn read_frame(stream: &mut TcpStream) -> Option<Frame> {
    let mut head = [0u8; 9];
    stream.read_exact(&mut head).ok()?;
    let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
    let mut payload = vec![0u8; len];
    stream.read_exact(&mut payload).ok()?;
    Some(Frame {
        kind: head[3],
        flags: head[4],
        id: u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff,
        payload,
    })
}

/// Reads the next frame other than the proxy's SETTINGS, which it
/// acknowledges; `None` once the connection is closed or reset.
fn next_frame(stream: &mut TcpStream) -> Option<Frame> {
    loop {
        let f = read_frame(stream)?;
        if f.kind != SETTINGS {
            return Some(f);
        }
        if f.flags & ACK == 0 {
            let _ = stream.write_all(&frame(SETTINGS, ACK, 0, &[]));
        }
    }
}

/// Opens a connection and sends the preface, SETTINGS and `frames` at once.
/// A write the proxy cuts off (it closed the connection) is not an error:
/// what it answered is read afterwards.
fn open(port: u16, frames: &[u8]) -> TcpStream {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut out = PREFACE.to_vec();
    out.extend(frame(SETTINGS, 0, 0, &[]));
    out.extend_from_slice(frames);
    let _ = stream.write_all(&out);
    stream
}

/// Opens a connection, sends `fields` as stream 1's headers and `body` as
/// its DATA, and reads until stream 1 is answered.
fn exchange(port: u16, fields: &[(&[u8], &[u8])], body: Option<&[u8]>) -> Answer {
    let headers_flags = END_HEADERS | if body.is_none() { END_STREAM } else { 0 };
    let mut out = frame(HEADERS, headers_flags, 1, &header_block(fields));
    if let Some(body) = body {
        out.extend(frame(DATA, END_STREAM, 1, body));
    }
    let mut stream = open(port, &out);
    while let Some(f) = next_frame(&mut stream) {
        match f.kind {
            GOAWAY => return Answer::Reset,
            RST_STREAM if f.id == 1 => return Answer::Reset,
            HEADERS if f.id == 1 => {
                return if f.payload.first() == Some(&0x88) {
                    Answer::Ok
                } else {
                    Answer::OtherStatus
                };
            }
            _ => {}
        }
    }
    Answer::Reset
}

/// How a flood's connection ended.
#[derive(Debug)]
struct FloodEnd {
    /// The GOAWAY's error code, if the proxy sent one.
    goaway: Option<u32>,
    /// Streams the proxy answered with a response before it ended.
    responses: usize,
}

/// Sends `frames` on a new connection and reads until the proxy ends it.
fn flood(port: u16, frames: &[u8]) -> FloodEnd {
    let mut stream = open(port, frames);
    let mut responses = 0;
    while let Some(f) = next_frame(&mut stream) {
        match f.kind {
            HEADERS => responses += 1,
            GOAWAY => {
                let code = f
                    .payload
                    .get(4..8)
                    .map(|c| u32::from_be_bytes(c.try_into().unwrap()));
                return FloodEnd {
                    goaway: code,
                    responses,
                };
            }
            _ => {}
        }
    }
    FloodEnd {
        goaway: None,
        responses,
    }
}

struct Setup {
    up: Recorder,
    gate: Gate,
    secret: String,
    authority: String,
}

impl Setup {
    fn start() -> Setup {
        let up = Recorder::start();
        let gate = Gate::start(&acme_web_route(&up.url()));
        let secret = gate.package_writer("project:acme/web").secret;
        let authority = format!("127.0.0.1:{}", gate.port);
        Setup {
            up,
            gate,
            secret,
            authority,
        }
    }

    /// An authorized request's pseudo-headers and credential.
    fn fields<'a>(&'a self, method: &'a str, path: &'a [u8]) -> Vec<(&'a [u8], &'a [u8])> {
        vec![
            (b":method", method.as_bytes()),
            (b":scheme", b"http"),
            (b":authority", self.authority.as_bytes()),
            (b":path", path),
            (b"deploy-token", self.secret.as_bytes()),
        ]
    }

    /// An authorized request's pseudo-headers and credential, then `extra`.
    fn send(
        &self,
        method: &str,
        path: &[u8],
        extra: &[(&[u8], &[u8])],
        body: Option<&[u8]>,
    ) -> Answer {
        let mut fields = self.fields(method, path);
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

/// Floods a new connection with `count` authorized GETs, each followed by
/// the frame `follow` makes for its stream id, in one write.
fn request_flood(s: &Setup, count: u32, follow: impl Fn(u32) -> Vec<u8>) -> FloodEnd {
    let block = header_block(&s.fields("GET", b"/generic/acme/web/f"));
    let out: Vec<u8> = (0..count)
        .map(|i| 2 * i + 1)
        .flat_map(|id| {
            let mut f = frame(HEADERS, END_HEADERS | END_STREAM, id, &block);
            f.extend(follow(id));
            f
        })
        .collect();
    flood(s.gate.port, &out)
}

/// Asserts a flood ended its connection as too costly, forwarded at most
/// `max_forwarded` of its requests, and left the proxy serving others.
fn assert_flood_stopped(s: &Setup, end: &FloodEnd, max_forwarded: usize) {
    assert_eq!(end.goaway, Some(ENHANCE_YOUR_CALM), "{end:?}");
    assert_eq!(
        s.send("GET", b"/generic/acme/web/f", &[], None),
        Answer::Ok,
        "the proxy stopped serving"
    );
    // The control request just answered is the last one forwarded.
    let forwarded = s.up.seen().len() - 1;
    assert!(
        forwarded <= max_forwarded,
        "{forwarded} forwarded ({end:?})"
    );
    assert!(end.responses <= max_forwarded, "{end:?}");
}

/// Rapid reset (CVE-2023-44487): a stream opened and cancelled at once
/// costs the client two frames and never counts against the limit of
/// concurrent streams, while a proxy would start a request upstream for
/// each. Past a few streams reset before the proxy took them up, the
/// connection is ended.
#[test]
fn rapid_reset_floods_end_the_connection() {
    let s = Setup::start();
    let end = request_flood(&s, 1000, |id| {
        frame(RST_STREAM, 0, id, &CANCEL.to_be_bytes())
    });
    assert_flood_stopped(&s, &end, 50);
}

/// MadeYouReset (CVE-2025-8671): the same flood without RST_STREAM, the
/// client making the proxy reset each stream itself (here by a window
/// increment past the largest window, a stream error).
#[test]
fn made_you_reset_floods_end_the_connection() {
    let s = Setup::start();
    let end = request_flood(&s, 2000, |id| {
        frame(WINDOW_UPDATE, 0, id, &0x7fff_ffffu32.to_be_bytes())
    });
    assert_flood_stopped(&s, &end, 50);
}

/// CONTINUATION flood: a header block that never ends, in frames too
/// small to reach the size limit, would hold the connection and its
/// buffer forever. Past the frames the size limit needs, it is ended.
#[test]
fn continuation_floods_end_the_connection() {
    let s = Setup::start();
    let block = header_block(&s.fields("GET", b"/generic/acme/web/f"));
    let mut out = frame(HEADERS, 0, 1, &block);
    let padding = header_block(&[(b"x-pad", b"a")]);
    for _ in 0..10_000 {
        out.extend(frame(CONTINUATION, 0, 1, &padding));
    }
    let end = flood(s.gate.port, &out);
    assert_flood_stopped(&s, &end, 0);
}

/// PING and SETTINGS floods from a client that never reads: each frame asks
/// for an answer, and a server that queued the answers would grow without
/// bound. h2 keeps one answer of each kind pending and reads no further
/// until it is sent: the flood stalls on TCP backpressure (here after ~8 MiB,
/// most of it in socket buffers) with the proxy's memory where it was.
#[test]
fn control_frame_floods_from_a_client_that_never_reads_stay_bounded() {
    const FLOOD: usize = 16 << 20;
    let s = Setup::start();
    let (_, peak_before) = s.gate.rss_kib();
    for (kind, payload) in [(PING, &[0u8; 8][..]), (SETTINGS, &[][..])] {
        let chunk = frame(kind, 0, 0, payload).repeat(4096);
        let mut stream = open(s.gate.port, &[]);
        stream
            .set_write_timeout(Some(Duration::from_secs(1)))
            .unwrap();
        let mut sent = 0;
        while sent < FLOOD {
            match stream.write(&chunk) {
                Ok(n) => sent += n,
                Err(_) => break,
            }
        }
        // The flooding connection stays open while another is served.
        assert_eq!(
            s.send("GET", b"/generic/acme/web/f", &[], None),
            Answer::Ok,
            "kind {kind}: {sent} bytes sent"
        );
        let (_, peak) = s.gate.rss_kib();
        assert!(
            peak - peak_before < 16 * 1024,
            "kind {kind}: peak RSS grew by {} KiB ({sent} bytes sent)",
            peak - peak_before
        );
    }
}
