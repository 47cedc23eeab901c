//! Deploy tokens: scopes, owners, secrets and the record the store keeps.
//!
//! A secret is `tgdt_` + 32 base62 characters of randomness (~190 bits) + a
//! 6-character base62 CRC-32 of the random part. The prefix makes leaked
//! tokens greppable by secret scanners; the checksum lets the proxy reject
//! typos and garbage without touching the cache or the store. Only the
//! SHA-256 digest of a secret is ever stored.

use std::fmt;

use chrono::{DateTime, Utc};
use rand::Rng;
use sha2::{Digest as _, Sha256};

/// The fixed prefix of every tokengate deploy-token secret.
pub const SECRET_PREFIX: &str = "tgdt_";
const RANDOM_LEN: usize = 32;
const CHECKSUM_LEN: usize = 6;
const SECRET_LEN: usize = SECRET_PREFIX.len() + RANDOM_LEN + CHECKSUM_LEN;
const BASE62: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TokenError {
    #[error("invalid duration {0:?} (expected e.g. 90s, 10m, 2h or 30d)")]
    InvalidDuration(String),
    #[error("unknown scope {0:?} (expected one of read_repository, read_registry, write_registry, read_package_registry, write_package_registry)")]
    UnknownScope(String),
    #[error("no scopes given")]
    NoScopes,
    #[error("invalid namespace path {0:?}: segments of letters, digits, '.', '_' or '-', separated by '/'")]
    InvalidNamespace(String),
    #[error("{0:?} is not a project path: a project lives in a group (group/project)")]
    NotAProject(String),
    #[error("invalid username {0:?}: 1 to 255 characters of a-z, A-Z, 0-9, '.', '+', '_' or '-'")]
    InvalidUsername(String),
    #[error("invalid name: must be 1 to 255 characters")]
    InvalidName,
    #[error("invalid expiry {0:?}: use YYYY-MM-DD or an RFC 3339 time")]
    InvalidExpiry(String),
    #[error("expiry {0} is in the past")]
    ExpiryInPast(String),
}

/// GitLab's deploy-token scopes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Scope {
    ReadRepository,
    ReadRegistry,
    WriteRegistry,
    ReadPackageRegistry,
    WritePackageRegistry,
}

impl Scope {
    pub const ALL: [Scope; 5] = [
        Scope::ReadRepository,
        Scope::ReadRegistry,
        Scope::WriteRegistry,
        Scope::ReadPackageRegistry,
        Scope::WritePackageRegistry,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Scope::ReadRepository => "read_repository",
            Scope::ReadRegistry => "read_registry",
            Scope::WriteRegistry => "write_registry",
            Scope::ReadPackageRegistry => "read_package_registry",
            Scope::WritePackageRegistry => "write_package_registry",
        }
    }

    /// What the scope grants, as shown to people choosing scopes.
    pub fn description(self) -> &'static str {
        match self {
            Scope::ReadRepository => {
                "Allows read-only access to the repository (git clone and fetch)."
            }
            Scope::ReadRegistry => "Allows read-only access to container registry images.",
            Scope::WriteRegistry => "Allows write access to container registry images.",
            Scope::ReadPackageRegistry => "Allows read-only access to the package registry.",
            Scope::WritePackageRegistry => "Allows write access to the package registry.",
        }
    }

    /// Parses a scope name; the seed's longer container names are aliases.
    pub fn parse(name: &str) -> Result<Scope, TokenError> {
        Ok(match name.trim() {
            "read_repository" => Scope::ReadRepository,
            "read_registry" | "read_container_registry" => Scope::ReadRegistry,
            "write_registry" | "write_container_registry" => Scope::WriteRegistry,
            "read_package_registry" => Scope::ReadPackageRegistry,
            "write_package_registry" => Scope::WritePackageRegistry,
            other => return Err(TokenError::UnknownScope(other.to_string())),
        })
    }

    fn bit(self) -> u8 {
        1 << (self as u8)
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A set of scopes, one bit each: checking a scope is a mask test.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ScopeSet(u8);

impl ScopeSet {
    /// The set as bits, one per scope in [`Scope::ALL`] order.
    pub fn bits(self) -> u8 {
        self.0
    }

    /// The set of `bits` (see [`ScopeSet::bits`]); unknown bits are dropped.
    pub fn from_bits(bits: u8) -> ScopeSet {
        ScopeSet(Scope::ALL.iter().fold(0, |set, s| set | (bits & s.bit())))
    }

    pub fn contains(self, scope: Scope) -> bool {
        self.0 & scope.bit() != 0
    }

    pub fn insert(&mut self, scope: Scope) {
        self.0 |= scope.bit();
    }

    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    pub fn iter(self) -> impl Iterator<Item = Scope> {
        Scope::ALL.into_iter().filter(move |s| self.contains(*s))
    }

    /// Parses names separated by commas or whitespace; at least one is required.
    pub fn parse_list(list: &str) -> Result<ScopeSet, TokenError> {
        Self::from_names(list.split([',', ' ']).filter(|s| !s.trim().is_empty()))
    }

    pub fn from_names<'a>(
        names: impl IntoIterator<Item = &'a str>,
    ) -> Result<ScopeSet, TokenError> {
        let mut set = ScopeSet::default();
        for name in names {
            set.insert(Scope::parse(name)?);
        }
        if set.is_empty() {
            return Err(TokenError::NoScopes);
        }
        Ok(set)
    }

    pub fn names(self) -> Vec<&'static str> {
        self.iter().map(Scope::as_str).collect()
    }
}

impl fmt::Display for ScopeSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.names().join(","))
    }
}

/// Whether a token belongs to a project or a group.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OwnerKind {
    Project,
    Group,
}

impl OwnerKind {
    pub fn as_str(self) -> &'static str {
        match self {
            OwnerKind::Project => "project",
            OwnerKind::Group => "group",
        }
    }

    pub fn parse(s: &str) -> Option<OwnerKind> {
        match s {
            "project" => Some(OwnerKind::Project),
            "group" => Some(OwnerKind::Group),
            _ => None,
        }
    }
}

/// Checks a namespace path: `acme`, `acme/platform/web`.
pub fn validate_namespace(path: &str) -> Result<(), TokenError> {
    let ok = !path.is_empty()
        && path.len() <= 1024
        && path.split('/').all(|seg| {
            !seg.is_empty()
                && seg != "."
                && seg != ".."
                && seg
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
        });
    if ok {
        Ok(())
    } else {
        Err(TokenError::InvalidNamespace(path.to_string()))
    }
}

/// Checks an owner's path: a valid namespace, and for a project one inside a
/// group, as in GitLab (`acme` alone is a group; a "project" token for it
/// would cover every project of the group).
pub fn validate_owner(kind: OwnerKind, path: &str) -> Result<(), TokenError> {
    validate_namespace(path)?;
    if kind == OwnerKind::Project && !path.contains('/') {
        return Err(TokenError::NotAProject(path.to_string()));
    }
    Ok(())
}

/// Whether `owner` covers `namespace`: equal, or an ancestor on a segment
/// boundary (`acme` covers `acme/web`, not `acme-other`).
pub fn covers(owner: &str, namespace: &str) -> bool {
    match namespace.strip_prefix(owner) {
        Some("") => true,
        Some(rest) => rest.starts_with('/'),
        None => false,
    }
}

pub fn validate_username(name: &str) -> Result<(), TokenError> {
    let ok = !name.is_empty()
        && name.len() <= 255
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'+' | b'_' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(TokenError::InvalidUsername(name.to_string()))
    }
}

pub fn default_username(id: i64) -> String {
    format!("tokengate+deploy-token-{id}")
}

/// Parses an expiry given as `YYYY-MM-DD` (midnight UTC) or RFC 3339, refusing the past.
/// A duration like `30s`, `10m`, `2h`, `30d` (a bare number is seconds).
pub fn parse_duration(text: &str) -> Result<std::time::Duration, TokenError> {
    let text = text.trim();
    let (number, unit) = text.split_at(
        text.find(|c: char| !c.is_ascii_digit())
            .unwrap_or(text.len()),
    );
    let factor = match unit {
        "" | "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return Err(TokenError::InvalidDuration(text.to_string())),
    };
    number
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(factor))
        .map(std::time::Duration::from_secs)
        .ok_or_else(|| TokenError::InvalidDuration(text.to_string()))
}

/// An expiry as GitLab takes it: an ISO 8601 date (midnight UTC) or date and
/// time, with an offset or `Z`, or without one (taken as UTC), seconds and
/// fractions optional.
pub fn parse_expiry(text: &str, now: DateTime<Utc>) -> Result<DateTime<Utc>, TokenError> {
    let at =
        expiry_instant(text.trim()).ok_or_else(|| TokenError::InvalidExpiry(text.to_string()))?;
    if at <= now {
        return Err(TokenError::ExpiryInPast(text.to_string()));
    }
    Ok(at)
}

fn expiry_instant(text: &str) -> Option<DateTime<Utc>> {
    use chrono::{NaiveDate, NaiveDateTime};
    if let Ok(date) = NaiveDate::parse_from_str(text, "%Y-%m-%d") {
        return Some(date.and_hms_opt(0, 0, 0)?.and_utc());
    }
    if let Ok(at) = DateTime::parse_from_rfc3339(text) {
        return Some(at.with_timezone(&Utc));
    }
    // An offset without a colon or without seconds: `12:00:00+0200`, `12:00+02:00`.
    for format in [
        "%Y-%m-%dT%H:%M:%S%.f%z",
        "%Y-%m-%dT%H:%M%:z",
        "%Y-%m-%dT%H:%M%z",
    ] {
        if let Ok(at) = DateTime::parse_from_str(text, format) {
            return Some(at.with_timezone(&Utc));
        }
    }
    // UTC, by `Z` or by default.
    let naive = text.strip_suffix(['Z', 'z']).unwrap_or(text);
    [
        "%Y-%m-%dT%H:%M:%S%.f",
        "%Y-%m-%dT%H:%M",
        "%Y-%m-%d %H:%M:%S%.f",
        "%Y-%m-%d %H:%M",
    ]
    .iter()
    .find_map(|format| NaiveDateTime::parse_from_str(naive, format).ok())
    .map(|at| at.and_utc())
}

/// A stored deploy token. Never holds the secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenRecord {
    pub id: i64,
    pub name: String,
    pub username: String,
    pub owner_kind: OwnerKind,
    pub owner_path: String,
    pub scopes: ScopeSet,
    pub expires_at: Option<DateTime<Utc>>,
    pub revoked: bool,
    pub created_at: DateTime<Utc>,
    pub last_used_at: Option<DateTime<Utc>>,
}

impl TokenRecord {
    pub fn is_expired(&self, now: DateTime<Utc>) -> bool {
        self.expires_at.is_some_and(|at| now >= at)
    }

    pub fn is_active(&self, now: DateTime<Utc>) -> bool {
        !self.revoked && !self.is_expired(now)
    }

    /// GitLab's deploy-token entity; `secret` is included only at creation.
    pub fn to_gitlab_json(&self, now: DateTime<Utc>, secret: Option<&Secret>) -> serde_json::Value {
        let mut value = serde_json::json!({
            "id": self.id,
            "name": self.name,
            "username": self.username,
            "expires_at": self.expires_at.map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)),
            "scopes": self.scopes.names(),
            "revoked": self.revoked,
            "expired": self.is_expired(now),
        });
        if let Some(secret) = secret {
            value["token"] = serde_json::Value::from(secret.expose());
        }
        value
    }
}

/// SHA-256 of a secret: the only form in which secrets are stored or cached.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Digest(pub [u8; 32]);

impl Digest {
    pub fn of(secret: &str) -> Digest {
        Digest(Sha256::digest(secret.as_bytes()).into())
    }

    pub fn to_hex(self) -> String {
        use fmt::Write;
        self.0.iter().fold(String::with_capacity(64), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
    }

    pub fn from_hex(hex: &str) -> Option<Digest> {
        if hex.len() != 64 {
            return None;
        }
        let mut out = [0u8; 32];
        for (i, byte) in out.iter_mut().enumerate() {
            *byte = u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()?;
        }
        Some(Digest(out))
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Digest({}…)", &self.to_hex()[..12])
    }
}

/// A freshly generated secret. Its `Debug` is redacted so it cannot reach a log by accident.
pub struct Secret(String);

impl Secret {
    pub fn generate() -> Secret {
        let mut rng = rand::rngs::OsRng;
        let random: String = (0..RANDOM_LEN)
            .map(|_| BASE62[rng.gen_range(0..BASE62.len())] as char)
            .collect();
        let checksum = checksum(random.as_bytes());
        let checksum = std::str::from_utf8(&checksum).expect("base62 is ascii");
        Secret(format!("{SECRET_PREFIX}{random}{checksum}"))
    }

    pub fn expose(&self) -> &str {
        &self.0
    }

    pub fn digest(&self) -> Digest {
        Digest::of(&self.0)
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

fn checksum(random: &[u8]) -> [u8; CHECKSUM_LEN] {
    let mut n = crc32fast::hash(random) as u64;
    let mut out = [b'0'; CHECKSUM_LEN];
    for slot in out.iter_mut().rev() {
        *slot = BASE62[(n % 62) as usize];
        n /= 62;
    }
    out
}

/// Checks prefix, length, alphabet and checksum: malformed secrets never reach a lookup.
pub fn well_formed(secret: &str) -> bool {
    let Some(body) = secret.strip_prefix(SECRET_PREFIX) else {
        return false;
    };
    if secret.len() != SECRET_LEN || !body.bytes().all(|b| b.is_ascii_alphanumeric()) {
        return false;
    }
    let (random, sum) = body.split_at(RANDOM_LEN);
    checksum(random.as_bytes()) == sum.as_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_project_lives_in_a_group() {
        assert!(validate_owner(OwnerKind::Project, "acme/web").is_ok());
        assert!(validate_owner(OwnerKind::Group, "acme").is_ok());
        assert_eq!(
            validate_owner(OwnerKind::Project, "acme"),
            Err(TokenError::NotAProject("acme".into()))
        );
        assert!(validate_owner(OwnerKind::Project, "acme/../web").is_err());
    }

    #[test]
    fn durations_have_a_unit_or_are_seconds() {
        use std::time::Duration;
        assert_eq!(parse_duration("90").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_duration("10m").unwrap(), Duration::from_secs(600));
        assert_eq!(parse_duration("2h").unwrap(), Duration::from_secs(7200));
        assert_eq!(
            parse_duration("30d").unwrap(),
            Duration::from_secs(30 * 86_400)
        );
        for bad in ["", "m", "1w", "-1s", "1.5h", "99999999999999999999d"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn generated_secrets_are_well_formed_and_distinct() {
        let a = Secret::generate();
        let b = Secret::generate();
        assert!(well_formed(a.expose()));
        assert_ne!(a.expose(), b.expose());
        assert_eq!(a.expose().len(), SECRET_LEN);
        assert!(!format!("{a:?}").contains(a.expose()));
    }

    #[test]
    fn malformed_secrets_are_rejected() {
        let good = Secret::generate().expose().to_string();
        let mut flipped = good.clone().into_bytes();
        let i = SECRET_PREFIX.len() + 3;
        flipped[i] = if flipped[i] == b'a' { b'b' } else { b'a' };
        for bad in [
            String::new(),
            "tgdt_".into(),
            good[1..].to_string(),
            format!("{good}x"),
            good.replace(SECRET_PREFIX, "glpat"),
            String::from_utf8(flipped).unwrap(),
            format!("{}-{}", &good[..10], &good[11..]),
        ] {
            assert!(!well_formed(&bad), "{bad:?} passed");
        }
    }

    #[test]
    fn digest_hex_round_trips() {
        let d = Digest::of("x");
        assert_eq!(Digest::from_hex(&d.to_hex()), Some(d));
        assert_eq!(Digest::from_hex("zz"), None);
    }

    #[test]
    fn scopes_parse_with_aliases() {
        let set = ScopeSet::parse_list("read_container_registry, write_package_registry").unwrap();
        assert!(set.contains(Scope::ReadRegistry));
        assert!(set.contains(Scope::WritePackageRegistry));
        assert!(!set.contains(Scope::WriteRegistry));
        assert_eq!(set.to_string(), "read_registry,write_package_registry");
        assert_eq!(ScopeSet::parse_list(""), Err(TokenError::NoScopes));
        assert!(matches!(
            ScopeSet::parse_list("api"),
            Err(TokenError::UnknownScope(_))
        ));
    }

    #[test]
    fn coverage_is_on_segment_boundaries() {
        assert!(covers("acme", "acme"));
        assert!(covers("acme", "acme/web/app"));
        assert!(!covers("acme", "acme-other"));
        assert!(!covers("acme/web", "acme"));
        assert!(!covers("acme/web", "acme/webber"));
    }

    #[test]
    fn namespaces_and_usernames_are_validated() {
        assert!(validate_namespace("acme/platform/web").is_ok());
        for bad in [
            "",
            "/acme",
            "acme/",
            "acme//web",
            "acme/../x",
            "ac me",
            "acme/.",
        ] {
            assert!(validate_namespace(bad).is_err(), "{bad}");
        }
        assert!(validate_username("tokengate+deploy-token-1").is_ok());
        assert!(validate_username("a b").is_err());
        assert!(validate_username(&"a".repeat(256)).is_err());
    }

    #[test]
    fn expiry_parses_dates_and_refuses_the_past() {
        let now = DateTime::parse_from_rfc3339("2026-01-01T00:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        let at = parse_expiry("2027-01-31", now).unwrap();
        assert_eq!(at.to_rfc3339(), "2027-01-31T00:00:00+00:00");
        assert!(parse_expiry("2027-01-31T12:00:00Z", now).is_ok());
        let utc = |text: &str| parse_expiry(text, now).map(|at| at.to_rfc3339());
        for (text, want) in [
            ("2027-01-31T12:00:00", "2027-01-31T12:00:00+00:00"),
            ("2027-01-31T12:00:00.250Z", "2027-01-31T12:00:00.250+00:00"),
            ("2027-01-31T12:00Z", "2027-01-31T12:00:00+00:00"),
            ("2027-01-31T12:00", "2027-01-31T12:00:00+00:00"),
            ("2027-01-31 12:00:00", "2027-01-31T12:00:00+00:00"),
            ("2027-01-31T12:00+02:00", "2027-01-31T10:00:00+00:00"),
            ("2027-01-31T12:00:00-0130", "2027-01-31T13:30:00+00:00"),
        ] {
            assert_eq!(utc(text).as_deref(), Ok(want), "{text}");
        }
        for bad in [
            "2027-01-31T25:00",
            "2027-13-01",
            "2027-01-31T12",
            "31/01/2027",
        ] {
            assert!(
                matches!(parse_expiry(bad, now), Err(TokenError::InvalidExpiry(_))),
                "{bad}"
            );
        }
        assert!(matches!(
            parse_expiry("2025-01-01", now),
            Err(TokenError::ExpiryInPast(_))
        ));
        assert!(matches!(
            parse_expiry("tomorrow", now),
            Err(TokenError::InvalidExpiry(_))
        ));
    }
}
