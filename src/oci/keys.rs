//! The keys that sign and verify registry JWTs.
//!
//! One signing key (ES256 on P-256, generated on first start, or an
//! operator's RS256/ES256 PKCS#8 PEM) and any number of verify-only keys for
//! rotation. Each JWT header carries `kid` — the libtrust fingerprint that
//! distribution 2.x looks keys up by — and `x5c`, a self-signed certificate
//! of the key, which distribution 3.x verifies against its
//! `rootcertbundle`. The JWKS document lists every key.

use std::io::Write;
use std::path::{Path, PathBuf};

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use super::scope::Grant;

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("{path}: {message}")]
    File { path: String, message: String },
}

fn file_error(path: &Path, message: impl std::fmt::Display) -> KeyError {
    KeyError::File {
        path: path.display().to_string(),
        message: message.to_string(),
    }
}

/// Why a presented JWT is not accepted.
#[derive(Debug, thiserror::Error)]
pub enum JwtError {
    #[error("the registry token names no key tokengate knows")]
    UnknownKey,
    #[error("invalid registry token: {0}")]
    Invalid(#[from] jsonwebtoken::errors::Error),
}

/// The claims of a registry JWT.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    pub iss: String,
    pub sub: String,
    pub aud: String,
    pub exp: i64,
    pub nbf: i64,
    pub iat: i64,
    pub jti: String,
    pub access: Vec<Grant>,
    /// The deploy token the JWT was issued to; absent for anonymous tokens.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deploy_token_id: Option<i64>,
}

struct Key {
    alg: Algorithm,
    kid: String,
    encoding: EncodingKey,
    decoding: DecodingKey,
    jwk: serde_json::Value,
    /// Base64 DER of the self-signed certificate in `<key>.crt`, for `x5c`;
    /// `None` for verify-only keys and where the file could not be written.
    cert: Option<String>,
}

/// The signing key and the verify-only keys.
pub struct KeyRing {
    signing: Key,
    verify_only: Vec<Key>,
}

impl KeyRing {
    /// Loads the signing key, generating it (mode 0600) and its certificate
    /// (`<key>.crt`) when absent, and the verify-only keys.
    pub fn load(key_file: &Path, verify_only: &[PathBuf]) -> Result<KeyRing, KeyError> {
        if !key_file.exists() {
            generate(key_file)?;
            tracing::info!(key = %key_file.display(), cert = %cert_path(key_file).display(), "generated the JWT signing key (ES256) and its certificate");
        }
        Ok(KeyRing {
            signing: load_key(key_file, true)?,
            verify_only: verify_only
                .iter()
                .map(|p| load_key(p, false))
                .collect::<Result<_, _>>()?,
        })
    }

    pub fn kid(&self) -> &str {
        &self.signing.kid
    }

    pub fn sign(&self, claims: &Claims) -> String {
        let mut header = Header::new(self.signing.alg);
        header.kid = Some(self.signing.kid.clone());
        header.x5c = self.signing.cert.clone().map(|cert| vec![cert]);
        jsonwebtoken::encode(&header, claims, &self.signing.encoding)
            .expect("signing with a loaded key cannot fail")
    }

    /// Checks signature (by `kid`, with that key's algorithm only), `iss`,
    /// `aud`, `exp` and `nbf`.
    pub fn verify(&self, jwt: &str, issuer: &str, audience: &str) -> Result<Claims, JwtError> {
        let header = jsonwebtoken::decode_header(jwt)?;
        let kid = header.kid.ok_or(JwtError::UnknownKey)?;
        let key = std::iter::once(&self.signing)
            .chain(&self.verify_only)
            .find(|k| k.kid == kid)
            .ok_or(JwtError::UnknownKey)?;
        let mut validation = Validation::new(key.alg);
        validation.set_issuer(&[issuer]);
        validation.set_audience(&[audience]);
        validation.set_required_spec_claims(&["exp", "nbf", "iss", "aud", "sub"]);
        validation.validate_nbf = true;
        validation.leeway = 30;
        Ok(jsonwebtoken::decode::<Claims>(jwt, &key.decoding, &validation)?.claims)
    }

    /// The JWKS document (distribution 3.x `auth.token.jwks`).
    pub fn jwks(&self) -> serde_json::Value {
        let keys: Vec<_> = std::iter::once(&self.signing)
            .chain(&self.verify_only)
            .map(|k| k.jwk.clone())
            .collect();
        serde_json::json!({ "keys": keys })
    }
}

/// `<key file>.crt`, written next to the key: the registry's `rootcertbundle`.
pub fn cert_path(key_file: &Path) -> PathBuf {
    key_file.with_extension("crt")
}

fn generate(key_file: &Path) -> Result<(), KeyError> {
    let key = rcgen::KeyPair::generate().map_err(|e| file_error(key_file, e))?;
    write_private(key_file, &key.serialize_pem())
}

fn write_private(path: &Path, text: &str) -> Result<(), KeyError> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| file_error(path, format!("cannot create: {e}")))?;
    file.write_all(text.as_bytes())
        .map_err(|e| file_error(path, format!("cannot write: {e}")))
}

/// Whether a key file reads and parses as a signing or verify key (config
/// validation: `check-config` refuses what `serve` would).
pub fn check_key_file(path: &Path) -> Result<(), KeyError> {
    load_key(path, false).map(drop)
}

fn load_key(path: &Path, with_cert_file: bool) -> Result<Key, KeyError> {
    let text =
        std::fs::read_to_string(path).map_err(|e| file_error(path, format!("cannot read: {e}")))?;
    let pair = rcgen::KeyPair::from_pem(&text).map_err(|e| {
        file_error(
            path,
            format!("not a PKCS#8 private key PEM ({e}); use `openssl genpkey`"),
        )
    })?;
    let spki = pair.public_key_der();
    let kid = libtrust_key_id(&spki);
    let raw = pair.public_key_raw();
    let (alg, encoding, decoding, mut jwk) = if pair.algorithm() == &rcgen::PKCS_ECDSA_P256_SHA256 {
        // The uncompressed point: 0x04 ‖ x ‖ y.
        let (x, y) = (
            URL_SAFE_NO_PAD.encode(&raw[1..33]),
            URL_SAFE_NO_PAD.encode(&raw[33..65]),
        );
        (
            Algorithm::ES256,
            EncodingKey::from_ec_der(&pair.serialize_der()),
            DecodingKey::from_ec_components(&x, &y).map_err(|e| file_error(path, e))?,
            serde_json::json!({ "kty": "EC", "crv": "P-256", "x": x, "y": y, "alg": "ES256" }),
        )
    } else if pair.algorithm() == &rcgen::PKCS_RSA_SHA256 {
        let (n, e) =
            rsa_components(raw).ok_or_else(|| file_error(path, "unreadable RSA public key"))?;
        let (n, e) = (URL_SAFE_NO_PAD.encode(n), URL_SAFE_NO_PAD.encode(e));
        (
            Algorithm::RS256,
            EncodingKey::from_rsa_pem(text.as_bytes()).map_err(|e| file_error(path, e))?,
            DecodingKey::from_rsa_components(&n, &e).map_err(|e| file_error(path, e))?,
            serde_json::json!({ "kty": "RSA", "n": n, "e": e, "alg": "RS256" }),
        )
    } else {
        return Err(file_error(
            path,
            "unsupported key: use an EC P-256 (ES256) or RSA (RS256) key",
        ));
    };
    jwk["kid"] = kid.clone().into();
    jwk["use"] = "sig".into();
    let cert = certificate(path, &pair, &spki, with_cert_file)?;
    Ok(Key {
        alg,
        kid,
        encoding,
        decoding,
        jwk,
        cert: cert.map(|der| STANDARD.encode(der)),
    })
}

/// The key's self-signed certificate: read from `<key>.crt` when present
/// (and checked to hold this key), else, for the signing key, made and
/// written there. Where it cannot be written (a read-only mount of the key,
/// as a Kubernetes Secret is) there is none: a certificate made anew at each
/// start differs on every instance (ECDSA signatures are randomized), and a
/// registry verifying `x5c` against `rootcertbundle` would refuse tokens
/// that carried one; without `x5c` it finds the key by `kid` (or in the JWKS).
fn certificate(
    key_file: &Path,
    pair: &rcgen::KeyPair,
    spki: &[u8],
    write: bool,
) -> Result<Option<Vec<u8>>, KeyError> {
    let path = cert_path(key_file);
    if let Ok(text) = std::fs::read_to_string(&path) {
        let der = pem::parse(&text)
            .map_err(|e| file_error(&path, e))?
            .into_contents();
        // A certificate embeds its SubjectPublicKeyInfo verbatim.
        if !der.windows(spki.len()).any(|w| w == spki) {
            return Err(file_error(
                &path,
                format!("does not hold the public key of {}", key_file.display()),
            ));
        }
        return Ok(Some(der));
    }
    if !write {
        return Ok(None);
    }
    let mut params = rcgen::CertificateParams::new(vec!["tokengate".to_string()])
        .map_err(|e| file_error(&path, e))?;
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "tokengate registry token signer");
    params.not_before = rcgen::date_time_ymd(2024, 1, 1);
    params.not_after = rcgen::date_time_ymd(2124, 1, 1);
    let cert = params.self_signed(pair).map_err(|e| file_error(&path, e))?;
    if let Err(e) = std::fs::write(&path, cert.pem()) {
        tracing::warn!(cert = %path.display(), error = %e, "cannot write the signing key's certificate (a registry's rootcertbundle): tokens carry no x5c; registries find the key by kid or in the JWKS. Ship <key>.crt beside the key for x5c");
        return Ok(None);
    }
    Ok(Some(cert.der().to_vec()))
}

/// libtrust's key ID, which distribution 2.x matches `kid` against: the
/// first 240 bits of SHA-256 over the DER SubjectPublicKeyInfo, base32
/// (RFC 4648, unpadded), in twelve groups of four joined by `:`.
pub fn libtrust_key_id(spki_der: &[u8]) -> String {
    let hash = Sha256::digest(spki_der);
    let encoded = base32(&hash[..30]);
    encoded
        .as_bytes()
        .chunks(4)
        .map(|c| std::str::from_utf8(c).expect("base32 is ASCII"))
        .collect::<Vec<_>>()
        .join(":")
}

fn base32(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    let mut out = String::with_capacity(bytes.len().div_ceil(5) * 8);
    let (mut buffer, mut bits) = (0u32, 0u32);
    for &b in bytes {
        buffer = (buffer << 8) | u32::from(b);
        bits += 8;
        while bits >= 5 {
            bits -= 5;
            out.push(ALPHABET[((buffer >> bits) & 31) as usize] as char);
        }
    }
    if bits > 0 {
        out.push(ALPHABET[((buffer << (5 - bits)) & 31) as usize] as char);
    }
    out
}

/// `(modulus, exponent)` of a DER RSAPublicKey (`SEQUENCE { INTEGER, INTEGER }`),
/// without leading zero bytes.
fn rsa_components(der: &[u8]) -> Option<(&[u8], &[u8])> {
    fn element(input: &[u8], tag: u8) -> Option<(&[u8], &[u8])> {
        let (&first, rest) = input.split_first()?;
        if first != tag {
            return None;
        }
        let (&len, rest) = rest.split_first()?;
        let (len, rest) = if len < 0x80 {
            (usize::from(len), rest)
        } else {
            let n = usize::from(len & 0x7f);
            if n == 0 || n > 4 || rest.len() < n {
                return None;
            }
            let len = rest[..n]
                .iter()
                .fold(0usize, |acc, b| (acc << 8) | usize::from(*b));
            (len, &rest[n..])
        };
        (rest.len() >= len).then(|| rest.split_at(len))
    }
    let (sequence, _) = element(der, 0x30)?;
    let (n, rest) = element(sequence, 0x02)?;
    let (e, _) = element(rest, 0x02)?;
    let trim = |v: &[u8]| -> usize { v.iter().take_while(|b| **b == 0).count() };
    Some((&n[trim(n)..], &e[trim(e)..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    const EC_PEM: &str = include_str!("testdata/ec-p256.pem");
    const RSA_PEM: &str = include_str!("testdata/rsa-2048.pem");

    fn ring_from(pem: &str) -> (tempfile::TempDir, KeyRing) {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("k.pem");
        std::fs::write(&key, pem).unwrap();
        let ring = KeyRing::load(&key, &[]).unwrap();
        (dir, ring)
    }

    fn claims(now: i64) -> Claims {
        Claims {
            iss: "tokengate".into(),
            sub: "bot".into(),
            aud: "container_registry".into(),
            exp: now + 300,
            nbf: now,
            iat: now,
            jti: "j".into(),
            access: vec![],
            deploy_token_id: Some(7),
        }
    }

    #[test]
    fn key_ids_match_libtrust() {
        // Computed independently: openssl pkey -pubout -outform DER | sha256, first 30 bytes, base32.
        assert_eq!(
            ring_from(EC_PEM).1.kid(),
            "BGRQ:T3J2:7TL6:BGVR:HJWS:F7OR:SCKN:SIAL:ENV7:ZWUE:JQNX:NH2R"
        );
        assert_eq!(
            ring_from(RSA_PEM).1.kid(),
            "QQVH:U4ZI:WWM7:JVDI:H4UI:CA3L:XPZX:N72B:D5FW:25NX:HGAH:MIJC"
        );
        assert_eq!(base32(b"foobar"), "MZXW6YTBOI");
    }

    #[test]
    fn a_generated_key_is_private_and_signs() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("signing.pem");
        let ring = KeyRing::load(&key, &[]).unwrap();
        assert_eq!(
            std::fs::metadata(&key).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert!(std::fs::read_to_string(cert_path(&key))
            .unwrap()
            .contains("BEGIN CERTIFICATE"));
        let now = chrono::Utc::now().timestamp();
        let jwt = ring.sign(&claims(now));
        assert_eq!(
            ring.verify(&jwt, "tokengate", "container_registry")
                .unwrap(),
            claims(now)
        );
        // Restarting reuses the key and its certificate.
        let again = KeyRing::load(&key, &[]).unwrap();
        assert_eq!(again.kid(), ring.kid());
        assert!(again
            .verify(&jwt, "tokengate", "container_registry")
            .is_ok());
        let jwks = ring.jwks();
        assert_eq!(jwks["keys"][0]["kid"], ring.kid());
        assert_eq!(jwks["keys"][0]["kty"], "EC");
    }

    /// A key on a read-only mount (a Kubernetes Secret) without its
    /// certificate: served, as `check-config` promised, with tokens that name
    /// their key by `kid` only.
    #[test]
    fn a_key_whose_certificate_cannot_be_written_signs_without_x5c() {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("k.pem");
        std::fs::write(&key, EC_PEM).unwrap();
        // A directory where the certificate would go: the write fails, even as root.
        std::fs::create_dir(cert_path(&key)).unwrap();
        assert!(check_key_file(&key).is_ok());
        let ring = KeyRing::load(&key, &[]).unwrap();
        let now = chrono::Utc::now().timestamp();
        let jwt = ring.sign(&claims(now));
        assert!(ring.verify(&jwt, "tokengate", "container_registry").is_ok());
        assert!(jsonwebtoken::decode_header(&jwt).unwrap().x5c.is_none());
    }

    #[test]
    fn rotation_keeps_old_tokens_valid_until_the_old_key_is_dropped() {
        let (dir, old) = ring_from(EC_PEM);
        let now = chrono::Utc::now().timestamp();
        let old_jwt = old.sign(&claims(now));
        let new_key = dir.path().join("new.pem");
        std::fs::write(&new_key, RSA_PEM).unwrap();
        let rotated = KeyRing::load(&new_key, &[dir.path().join("k.pem")]).unwrap();
        assert!(rotated
            .verify(&old_jwt, "tokengate", "container_registry")
            .is_ok());
        assert!(rotated
            .verify(
                &rotated.sign(&claims(now)),
                "tokengate",
                "container_registry"
            )
            .is_ok());
        assert_eq!(rotated.jwks()["keys"].as_array().unwrap().len(), 2);
        let without_old = KeyRing::load(&new_key, &[]).unwrap();
        assert!(matches!(
            without_old.verify(&old_jwt, "tokengate", "container_registry"),
            Err(JwtError::UnknownKey)
        ));
    }

    #[test]
    fn invalid_tokens_are_refused() {
        let (_dir, ring) = ring_from(EC_PEM);
        let (_rsa_dir, rsa) = ring_from(RSA_PEM);
        let now = chrono::Utc::now().timestamp();
        let verify = |jwt: &str| ring.verify(jwt, "tokengate", "container_registry");
        let good = ring.sign(&claims(now));
        assert!(verify(&good).is_ok());

        // Bad signature: one byte of the signature changed.
        let mut tampered = good.clone().into_bytes();
        let last = tampered.len() - 5;
        tampered[last] = if tampered[last] == b'A' { b'B' } else { b'A' };
        assert!(verify(std::str::from_utf8(&tampered).unwrap()).is_err());
        // Wrong audience, wrong issuer.
        assert!(ring.verify(&good, "tokengate", "other_registry").is_err());
        assert!(ring
            .verify(&good, "someone-else", "container_registry")
            .is_err());
        // Expired; not yet valid.
        let mut expired = claims(now - 3600);
        expired.exp = now - 600;
        assert!(verify(&ring.sign(&expired)).is_err());
        let mut early = claims(now);
        early.nbf = now + 600;
        assert!(verify(&ring.sign(&early)).is_err());
        // Signed by a key tokengate does not hold, even if it claims our kid.
        let mut header = Header::new(Algorithm::RS256);
        header.kid = Some(ring.kid().to_string());
        let foreign = jsonwebtoken::encode(&header, &claims(now), &rsa.signing.encoding).unwrap();
        assert!(verify(&foreign).is_err());
        // alg: none.
        let body = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&claims(now)).unwrap());
        let none_header = URL_SAFE_NO_PAD.encode(format!(
            r#"{{"alg":"none","typ":"JWT","kid":"{}"}}"#,
            ring.kid()
        ));
        assert!(verify(&format!("{none_header}.{body}.")).is_err());
        // HS256 with the RSA public key as the HMAC secret (key confusion).
        let rsa_public = rsa.signing.jwk["n"].as_str().unwrap().as_bytes().to_vec();
        let mut hs = Header::new(Algorithm::HS256);
        hs.kid = Some(rsa.kid().to_string());
        let confused =
            jsonwebtoken::encode(&hs, &claims(now), &EncodingKey::from_secret(&rsa_public))
                .unwrap();
        assert!(rsa
            .verify(&confused, "tokengate", "container_registry")
            .is_err());
        // ...and with the public key's PEM, the bytes an attacker can fetch.
        let public_pem = rcgen::KeyPair::from_pem(RSA_PEM).unwrap().public_key_pem();
        for secret in [public_pem.as_bytes(), RSA_PEM.as_bytes()] {
            let confused =
                jsonwebtoken::encode(&hs, &claims(now), &EncodingKey::from_secret(secret)).unwrap();
            assert!(rsa
                .verify(&confused, "tokengate", "container_registry")
                .is_err());
        }
        // No kid at all.
        let no_kid = jsonwebtoken::encode(
            &Header::new(Algorithm::ES256),
            &claims(now),
            &ring.signing.encoding,
        )
        .unwrap();
        assert!(matches!(verify(&no_kid), Err(JwtError::UnknownKey)));
    }
}
