//! Request-target normalization: the one place where a raw path becomes the
//! decoded segments that are matched *and* forwarded.
//!
//! Every ambiguity that let proxies and upstreams disagree about a path
//! (dot segments, encoded slashes and backslashes, `;` parameters, `%00`,
//! double encoding, empty segments) is refused here rather than interpreted,
//! so the route matcher and the upstream can never see different paths.

use std::fmt::Write;

use smallvec::SmallVec;

/// Why a request target was refused. Each maps to a 400 response.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    #[error("the request target must be a path starting with '/'")]
    NotOriginForm,
    #[error("empty path segments ('//') are not allowed")]
    EmptySegment,
    #[error("dot segments ('.' and '..') are not allowed")]
    DotSegment,
    #[error("invalid percent-encoding in the request target")]
    BadEncoding,
    #[error("NUL and control characters are not allowed in the request target")]
    ControlCharacter,
    #[error("backslashes are not allowed in the path")]
    Backslash,
    #[error("';' path parameters are not allowed")]
    PathParameter,
    #[error("'#', an encoded '?' or an encoded '%' is not allowed in the path")]
    ReservedCharacter,
    #[error("an encoded '/' (%2F) is not allowed here")]
    EncodedSlash,
    #[error("the path is too long or has too many segments")]
    TooLong,
    #[error("credentials in the query string are not accepted: send the deploy token in a header")]
    CredentialInQuery,
    #[error("diagnostic query parameters (describe, trace) are not accepted: the upstream would describe the proxy's own credentials")]
    DiagnosticQuery,
}

/// Limits on a path, the one a client sends and the one forwarded alike.
pub(crate) const MAX_SEGMENTS: usize = 64;
pub(crate) const MAX_PATH: usize = 8192;

/// A normalized path: its decoded segments plus whether it ended in `/`.
///
/// The segments sit back to back in one string: every request's path is
/// parsed, and one allocation beats one per segment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NormalizedPath {
    decoded: String,
    segments: SmallVec<[SegmentEnd; 12]>,
    pub trailing_slash: bool,
}

/// Where a segment ends in the decoded text, and whether it was written
/// with an encoded `/`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct SegmentEnd {
    end: u16,
    had_encoded_slash: bool,
}

// A segment end is a `u16`.
const _: () = assert!(MAX_PATH <= u16::MAX as usize);

impl NormalizedPath {
    /// Parses and checks a raw origin-form path (without the query).
    pub fn parse(raw: &str) -> Result<NormalizedPath, PathError> {
        if raw.len() > MAX_PATH {
            return Err(PathError::TooLong);
        }
        let body = raw.strip_prefix('/').ok_or(PathError::NotOriginForm)?;
        let mut decoded = Vec::with_capacity(body.len());
        let mut segments = SmallVec::new();
        let mut trailing_slash = false;
        if !body.is_empty() {
            let mut parts = body.split('/').peekable();
            while let Some(part) = parts.next() {
                if part.is_empty() {
                    if parts.peek().is_none() {
                        trailing_slash = true;
                        break;
                    }
                    return Err(PathError::EmptySegment);
                }
                if segments.len() == MAX_SEGMENTS {
                    return Err(PathError::TooLong);
                }
                let had_encoded_slash = decode_segment(part, &mut decoded)?;
                segments.push(SegmentEnd {
                    end: decoded.len() as u16,
                    had_encoded_slash,
                });
            }
        }
        Ok(NormalizedPath {
            decoded: String::from_utf8(decoded).expect("every segment is checked UTF-8"),
            segments,
            trailing_slash,
        })
    }

    /// How many segments the path has.
    pub fn len(&self) -> usize {
        self.segments.len()
    }

    /// Whether the path is `/`.
    pub fn is_empty(&self) -> bool {
        self.segments.is_empty()
    }

    /// The decoded segment `i`.
    pub fn segment(&self, i: usize) -> &str {
        let start = i.checked_sub(1).map_or(0, |p| self.segments[p].end);
        &self.decoded[usize::from(start)..usize::from(self.segments[i].end)]
    }

    /// Whether segment `i` was written with an encoded `/` (`%2F`).
    pub fn had_encoded_slash(&self, i: usize) -> bool {
        self.segments[i].had_encoded_slash
    }

    /// Whether any segment was written with an encoded `/`.
    pub fn any_encoded_slash(&self) -> bool {
        self.segments.iter().any(|s| s.had_encoded_slash)
    }

    /// Writes `segments[from..]` re-encoded canonically, as forwarded upstream.
    pub fn encode_from(&self, from: usize, out: &mut String) {
        for seg in self.decoded().skip(from) {
            out.push('/');
            encode_segment(seg, out);
        }
        if self.trailing_slash {
            out.push('/');
        }
    }

    /// Writes `segments[..to]` re-encoded: the matched route prefix.
    pub fn encode_prefix(&self, to: usize, out: &mut String) {
        for seg in self.decoded().take(to) {
            out.push('/');
            encode_segment(seg, out);
        }
    }

    pub fn decoded(&self) -> impl Iterator<Item = &str> {
        (0..self.segments.len()).map(|i| self.segment(i))
    }
}

fn hex_value(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Checks a raw byte of the target, before or after decoding.
fn check_byte(b: u8, encoded: bool) -> Result<(), PathError> {
    match b {
        0x00..=0x1f | 0x7f => Err(PathError::ControlCharacter),
        b'\\' => Err(PathError::Backslash),
        b';' => Err(PathError::PathParameter),
        // `?` and `#` end a path; a path handed over with one inside (never
        // from hyper, which splits the query off) would be forwarded as
        // `%3F`, a path this function refuses: refuse it here too (fuzzing
        // found the disagreement).
        b'#' | b'?' => Err(PathError::ReservedCharacter),
        b'%' if encoded => Err(PathError::ReservedCharacter),
        b' ' | b'"' | b'<' | b'>' | b'`' | b'{' | b'}' | b'|' | b'^' if !encoded => {
            Err(PathError::BadEncoding)
        }
        0x80..=0xff if !encoded => Err(PathError::BadEncoding),
        _ => Ok(()),
    }
}

/// Decodes one raw segment onto the end of `out`; says whether it held an
/// encoded `/`.
fn decode_segment(raw: &str, out: &mut Vec<u8>) -> Result<bool, PathError> {
    let start = out.len();
    let bytes = raw.as_bytes();
    let mut had_escape = false;
    let mut had_encoded_slash = false;
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if b == b'%' {
            let hi = bytes.get(i + 1).copied().and_then(hex_value);
            let lo = bytes.get(i + 2).copied().and_then(hex_value);
            let (Some(hi), Some(lo)) = (hi, lo) else {
                return Err(PathError::BadEncoding);
            };
            let decoded = hi << 4 | lo;
            check_byte(decoded, true)?;
            had_escape = true;
            had_encoded_slash |= decoded == b'/';
            out.push(decoded);
            i += 3;
        } else {
            check_byte(b, false)?;
            out.push(b);
            i += 1;
        }
    }
    let decoded = &out[start..];
    // Raw text is UTF-8 already; only decoded escapes can break it. Checked
    // per segment: two invalid halves on either side of a `/` could make
    // valid UTF-8 together.
    if had_escape && std::str::from_utf8(decoded).is_err() {
        return Err(PathError::BadEncoding);
    }
    // An upstream that decodes `%2F` before it resolves dot segments reads
    // `@x%2F..` as `@x/..`: a dot segment inside one is one too.
    let is_dot = |piece: &[u8]| piece == b"." || piece == b"..";
    if is_dot(decoded) || (had_encoded_slash && decoded.split(|&b| b == b'/').any(is_dot)) {
        return Err(PathError::DotSegment);
    }
    Ok(had_encoded_slash)
}

/// Bytes that stay literal in a forwarded segment: RFC 3986 `pchar` minus `;`.
fn is_segment_safe(b: u8) -> bool {
    b.is_ascii_alphanumeric()
        || matches!(
            b,
            b'-' | b'.'
                | b'_'
                | b'~'
                | b'!'
                | b'$'
                | b'&'
                | b'\''
                | b'('
                | b')'
                | b'*'
                | b'+'
                | b','
                | b'='
                | b':'
                | b'@'
        )
}

/// Percent-encodes one decoded segment (uppercase hex) for forwarding.
pub fn encode_segment(decoded: &str, out: &mut String) {
    for &b in decoded.as_bytes() {
        if is_segment_safe(b) {
            out.push(b as char);
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
}

/// Decodes one `application/x-www-form-urlencoded` value; `None` when it is
/// not valid percent-encoded UTF-8.
pub fn form_decode(text: &str) -> Option<String> {
    String::from_utf8(form_decode_bytes(text)?).ok()
}

/// The bytes `form_decode` reads, before any UTF-8 check.
fn form_decode_bytes(text: &str) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(text.len());
    let mut bytes = text.bytes();
    while let Some(b) = bytes.next() {
        out.push(match b {
            b'+' => b' ',
            b'%' => {
                let hex = [bytes.next()?, bytes.next()?];
                u8::from_str_radix(std::str::from_utf8(&hex).ok()?, 16).ok()?
            }
            b => b,
        });
    }
    Some(out)
}

/// A query's (or form body's) `name=value` pairs as written, empty ones skipped.
pub fn query_pairs(query: &str) -> impl Iterator<Item = (&str, &str)> {
    pairs_split_at(query, &['&'])
}

/// The pairs as servers that also split at `;` read them (Rack 2, Go
/// before 1.17, Python before 3.9.2).
pub fn lenient_query_pairs(query: &str) -> impl Iterator<Item = (&str, &str)> {
    pairs_split_at(query, &['&', ';'])
}

fn pairs_split_at<'a>(
    query: &'a str,
    separators: &'static [char],
) -> impl Iterator<Item = (&'a str, &'a str)> {
    query
        .split(separators)
        .filter(|pair| !pair.is_empty())
        .map(|pair| pair.split_once('=').unwrap_or((pair, "")))
}

/// Query parameters GitLab and its kin take as credentials. The proxy reads
/// credentials from headers only and forwards the query as it is, so a
/// request carrying one is refused: an upstream could authenticate it as
/// someone other than the deploy token that was checked.
const CREDENTIAL_PARAMS: [&str; 4] = ["private_token", "job_token", "access_token", "deploy_token"];

/// Query parameters that make an upstream describe the request instead of
/// serving it: Nexus's `?describe` lists the request's headers, which
/// upstream carry the proxy's own credentials; Artifactory's `?trace`
/// names the account it ran as.
const DIAGNOSTIC_PARAMS: [&str; 2] = ["describe", "trace"];

/// Checks a raw query string: forwarded verbatim, so it must hold nothing
/// that an upstream could read as a fragment, a control character, a
/// credential or a request to describe itself.
pub fn check_query(query: &str) -> Result<(), PathError> {
    check_query_bytes(query)?;
    // Split on `;` as well: some servers take it for `&` (Rack 2, which
    // GitLab runs on; Python before 3.9.2).
    let names = query
        .split(['&', ';'])
        .map(|pair| pair.split_once('=').map_or(pair, |(name, _)| name));
    for name in names {
        // Escapes only lengthen a name: shorter ones are none of these.
        if name.len() < "trace".len() {
            continue;
        }
        // Decoded only where escapes are (an allocation per name otherwise);
        // bytes that are not UTF-8 read as U+FFFD, as Java servers read them.
        let decoded;
        let name = if name.contains(['%', '+']) {
            let Some(bytes) = form_decode_bytes(name) else {
                continue;
            };
            decoded = String::from_utf8_lossy(&bytes).into_owned();
            decoded.as_str()
        } else {
            name
        };
        if reads_as_any(name, &CREDENTIAL_PARAMS) {
            return Err(PathError::CredentialInQuery);
        }
        if reads_as_any(name, &DIAGNOSTIC_PARAMS) {
            return Err(PathError::DiagnosticQuery);
        }
    }
    Ok(())
}

/// Whether a decoded parameter name is one of `params` as some server
/// reads it: case aside, Rack and PHP take `name[]` and `name[key]` for
/// `name`, and PHP drops leading spaces and reads `.` and ` ` as `_`.
fn reads_as_any(name: &str, params: &[&str]) -> bool {
    let base = name
        .split('[')
        .next()
        .unwrap_or(name)
        .trim_start_matches(' ');
    params.iter().any(|c| {
        c.len() == base.len()
            && c.bytes().zip(base.bytes()).all(|(c, b)| {
                c == b.to_ascii_lowercase() || (c == b'_' && matches!(b, b'.' | b' '))
            })
    })
}

/// The byte rules of [`check_query`]: valid escapes, no control characters, no `#`.
fn check_query_bytes(query: &str) -> Result<(), PathError> {
    let bytes = query.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hi = bytes.get(i + 1).copied().and_then(hex_value);
                let lo = bytes.get(i + 2).copied().and_then(hex_value);
                let (Some(hi), Some(lo)) = (hi, lo) else {
                    return Err(PathError::BadEncoding);
                };
                if matches!(hi << 4 | lo, 0x00..=0x1f | 0x7f) {
                    return Err(PathError::ControlCharacter);
                }
                i += 3;
            }
            0x00..=0x1f | 0x7f => return Err(PathError::ControlCharacter),
            b'#' => return Err(PathError::ReservedCharacter),
            _ => i += 1,
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decoded(raw: &str) -> Vec<String> {
        NormalizedPath::parse(raw)
            .unwrap()
            .decoded()
            .map(str::to_string)
            .collect()
    }

    #[test]
    fn plain_paths_decode_to_segments() {
        assert_eq!(decoded("/npm/acme/web"), ["npm", "acme", "web"]);
        assert_eq!(decoded("/"), Vec::<String>::new());
        assert_eq!(decoded("/a%20b/c+d"), ["a b", "c+d"]);
        let p = NormalizedPath::parse("/simple/pkg/").unwrap();
        assert!(p.trailing_slash);
    }

    #[test]
    fn encoded_slash_is_recorded_not_split() {
        let p = NormalizedPath::parse("/@scope%2fname").unwrap();
        assert_eq!(p.len(), 1);
        assert_eq!(p.segment(0), "@scope/name");
        assert!(p.had_encoded_slash(0));
        assert!(p.any_encoded_slash());
    }

    #[test]
    fn attacks_are_refused() {
        let cases: &[(&str, PathError)] = &[
            ("npm/x", PathError::NotOriginForm),
            ("*", PathError::NotOriginForm),
            ("/a//b", PathError::EmptySegment),
            ("//a", PathError::EmptySegment),
            ("/a/../b", PathError::DotSegment),
            ("/a/./b", PathError::DotSegment),
            ("/a/%2e%2e/b", PathError::DotSegment),
            ("/a/%2E/b", PathError::DotSegment),
            ("/a/.%2e/b", PathError::DotSegment),
            ("/npm/@x%2F../-/npm/v1/tokens", PathError::DotSegment),
            ("/npm/@x%2f.", PathError::DotSegment),
            ("/g/..%2Fsecret/p", PathError::DotSegment),
            ("/g/a%2F.%2Fb/p", PathError::DotSegment),
            ("/a%00b", PathError::ControlCharacter),
            ("/git/a?cme/x", PathError::ReservedCharacter),
            ("/a%0ab", PathError::ControlCharacter),
            ("/a%7f", PathError::ControlCharacter),
            ("/a\\b", PathError::Backslash),
            ("/a%5cb", PathError::Backslash),
            ("/a;jsessionid=1", PathError::PathParameter),
            ("/a%3bb", PathError::PathParameter),
            ("/a%3fb", PathError::ReservedCharacter),
            ("/a%23b", PathError::ReservedCharacter),
            ("/a#b", PathError::ReservedCharacter),
            ("/a%252e%252e", PathError::ReservedCharacter),
            ("/a%zz", PathError::BadEncoding),
            ("/a%2", PathError::BadEncoding),
            ("/a%ff", PathError::BadEncoding),
            // Each half of `é` alone is not UTF-8, though the two together are.
            ("/%c3/%a9", PathError::BadEncoding),
        ];
        for (raw, want) in cases {
            assert_eq!(NormalizedPath::parse(raw), Err(*want), "{raw}");
        }
    }

    #[test]
    fn forwarding_re_encodes_canonically() {
        let p = NormalizedPath::parse("/npm/acme/%40scope%2fname/x%20y/sha256:ab@c/").unwrap();
        let mut out = String::new();
        p.encode_from(2, &mut out);
        assert_eq!(
            out,
            "/%40scope%2Fname/x%20y/sha256:ab@c/".replace("%40", "@")
        );
        let mut prefix = String::new();
        p.encode_prefix(2, &mut prefix);
        assert_eq!(prefix, "/npm/acme");
    }

    #[test]
    fn queries_are_checked() {
        assert!(check_query("a=1&b=%2F").is_ok());
        for query in [
            "private_token=x",
            "a=1&job_token=x",
            "ACCESS_TOKEN=x",
            "deploy%5Ftoken=x",
            "private_token",
            "a=1;private_token=x",
            // As Rack and PHP read them: arrays and hashes, PHP's name mangling.
            "private_token[]=x",
            "deploy_token%5Ba%5D=x",
            "private.token=x",
            "+job+token=x",
        ] {
            assert_eq!(
                check_query(query),
                Err(PathError::CredentialInQuery),
                "{query}"
            );
        }
        for query in [
            "describe",
            "describe=json",
            "a=1&TRACE",
            "trace[]=1",
            "%64escribe=x",
            "trace[%FF]=1",
        ] {
            assert_eq!(
                check_query(query),
                Err(PathError::DiagnosticQuery),
                "{query}"
            );
        }
        for query in [
            "describes=1",
            "tracer=1",
            "token=x&private_tokens=y",
            "[private_token]=x",
            "private_token_=x",
        ] {
            assert!(check_query(query).is_ok(), "{query}");
        }
        assert_eq!(check_query("a=%00"), Err(PathError::ControlCharacter));
        assert_eq!(check_query("a=%zz"), Err(PathError::BadEncoding));
        assert_eq!(check_query("a#b"), Err(PathError::ReservedCharacter));
    }
}
