//! The registry token service (Docker Registry v2 token authentication):
//! deploy tokens in, short-lived signed JWTs out. The same JWTs are
//! accepted by tokengate's own `oci` routes (proxy mode) and by a
//! distribution registry configured with `auth.token` (token-server-only mode).
//!
//! Everything here is pure: the proxy authenticates the deploy token and
//! hands the record in.

pub mod keys;
pub mod scope;

use chrono::{DateTime, SecondsFormat, Utc};
use http::HeaderValue;

use crate::config::{PublicUrl, RegistryAuthConfig};
use crate::route::normalize::{form_decode, query_pairs};
use crate::token::TokenRecord;
pub use keys::{Claims, JwtError, KeyRing};
use scope::{Grant, ScopeError};

/// Why a token request is refused (after authentication).
#[derive(Debug, thiserror::Error)]
pub enum TokenRequestError {
    #[error("unknown service {0:?}")]
    UnknownService(String),
    #[error(transparent)]
    BadScope(#[from] ScopeError),
    /// `account` names someone other than the credentials' user.
    #[error("the account asked for is not the deploy token's username")]
    OtherAccount,
}

pub struct RegistryAuth {
    config: RegistryAuthConfig,
    keys: KeyRing,
}

impl RegistryAuth {
    pub fn new(config: RegistryAuthConfig, keys: KeyRing) -> RegistryAuth {
        RegistryAuth { config, keys }
    }

    pub fn config(&self) -> &RegistryAuthConfig {
        &self.config
    }

    /// The token endpoint's JSON answer. `token` is the authenticated deploy
    /// token, `None` for an anonymous request (which is granted nothing).
    pub fn issue(
        &self,
        token: Option<&TokenRecord>,
        query: Option<&str>,
        now: DateTime<Utc>,
    ) -> Result<serde_json::Value, TokenRequestError> {
        let params: Vec<(String, String)> = query.map(parse_query).unwrap_or_default();
        let service = params
            .iter()
            .find(|(k, _)| k == "service")
            .map(|(_, v)| v.as_str());
        if let Some(service) = service.filter(|s| *s != self.config.service) {
            return Err(TokenRequestError::UnknownService(
                service.chars().take(100).collect(),
            ));
        }
        let account = params.iter().find(|(k, _)| k == "account");
        if let (Some((_, account)), Some(token)) = (account, token) {
            if *account != token.username {
                return Err(TokenRequestError::OtherAccount);
            }
        }
        let asked = scope::parse_all(
            params
                .iter()
                .filter(|(k, _)| k == "scope")
                .map(|(_, v)| v.as_str()),
        )?;
        let access: Vec<Grant> = match token {
            Some(token) => scope::intersect(&asked, token, self.config.allow_delete),
            None => Vec::new(),
        };
        let ttl = lifetime(self.config.token_ttl, token, now);
        let claims = Claims {
            iss: self.config.issuer.clone(),
            sub: token.map_or_else(String::new, |t| t.username.clone()),
            aud: self.config.service.clone(),
            exp: now.timestamp() + ttl,
            nbf: now.timestamp(),
            iat: now.timestamp(),
            jti: random_id(),
            access,
            deploy_token_id: token.map(|t| t.id),
        };
        let jwt = self.keys.sign(&claims);
        Ok(serde_json::json!({
            "token": jwt,
            "access_token": jwt,
            "expires_in": ttl,
            "issued_at": now.to_rfc3339_opts(SecondsFormat::Secs, true),
        }))
    }

    pub fn verify(&self, jwt: &str) -> Result<Claims, JwtError> {
        self.keys
            .verify(jwt, &self.config.issuer, &self.config.service)
    }

    /// A session JWT for a format's own login (Conan): bound to the deploy
    /// token, granting nothing by itself. `audience` is the format's name, so
    /// a session of one format is no registry token and no session of another.
    pub fn issue_session(&self, token: &TokenRecord, audience: &str, now: DateTime<Utc>) -> String {
        self.sign_bound(token, audience, Vec::new(), now)
    }

    /// A grant for pre-signed file URLs: each of `paths` (public URL paths)
    /// for `action`, bound to the deploy token like a session.
    pub fn issue_url_grant(
        &self,
        token: &TokenRecord,
        audience: &str,
        paths: Vec<String>,
        action: &str,
        now: DateTime<Utc>,
    ) -> String {
        let access = paths
            .into_iter()
            .map(|name| Grant {
                kind: "file".into(),
                class: None,
                name,
                actions: vec![action.to_string()],
            })
            .collect();
        self.sign_bound(token, audience, access, now)
    }

    fn sign_bound(
        &self,
        token: &TokenRecord,
        audience: &str,
        access: Vec<Grant>,
        now: DateTime<Utc>,
    ) -> String {
        self.keys.sign(&Claims {
            iss: self.config.issuer.clone(),
            sub: token.username.clone(),
            aud: audience.to_string(),
            exp: now.timestamp() + lifetime(self.config.session_ttl, Some(token), now),
            nbf: now.timestamp(),
            iat: now.timestamp(),
            jti: random_id(),
            access,
            deploy_token_id: Some(token.id),
        })
    }

    pub fn verify_session(&self, jwt: &str, audience: &str) -> Result<Claims, JwtError> {
        self.keys.verify(jwt, &self.config.issuer, audience)
    }

    pub fn jwks(&self) -> serde_json::Value {
        self.keys.jwks()
    }

    /// The `WWW-Authenticate` challenge sending clients to the token endpoint.
    pub fn challenge(
        &self,
        public: &PublicUrl,
        scope: Option<&str>,
        error: Option<&str>,
    ) -> HeaderValue {
        let mut value = format!(
            "Bearer realm=\"{}{}{}\",service=\"{}\"",
            public.origin, public.base_path, self.config.path, self.config.service
        );
        if let Some(scope) = scope {
            value.push_str(&format!(",scope=\"{scope}\""));
        }
        if let Some(error) = error {
            value.push_str(&format!(",error=\"{error}\""));
        }
        HeaderValue::from_str(&value).unwrap_or_else(|_| HeaderValue::from_static("Bearer"))
    }
}

fn random_id() -> String {
    use rand::RngCore;
    let mut bytes = [0u8; 16];
    rand::thread_rng().fill_bytes(&mut bytes);
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// `application/x-www-form-urlencoded` pairs, decoded (`+` is a space).
/// Undecodable pairs are skipped.
fn parse_query(query: &str) -> Vec<(String, String)> {
    query_pairs(query)
        .filter_map(|(k, v)| Some((form_decode(k)?, form_decode(v)?)))
        .collect()
}

/// Seconds a JWT for `token` lives: `ttl`, but never past the deploy token's
/// own expiry (a registry that trusts the JWT alone would otherwise accept an
/// expired token's pulls for up to `ttl`); at least a second.
fn lifetime(ttl: std::time::Duration, token: Option<&TokenRecord>, now: DateTime<Utc>) -> i64 {
    let ttl = i64::try_from(ttl.as_secs()).unwrap_or(i64::MAX);
    let left = token
        .and_then(|t| t.expires_at)
        .map_or(ttl, |at| (at - now).num_seconds());
    ttl.min(left).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::token::{OwnerKind, ScopeSet};
    use std::time::Duration;

    fn auth(dir: &std::path::Path) -> RegistryAuth {
        let key = dir.join("k.pem");
        std::fs::write(&key, include_str!("testdata/ec-p256.pem")).unwrap();
        let config = RegistryAuthConfig {
            path: "/jwt/auth".into(),
            jwks_path: "/jwt/jwks.json".into(),
            service: "container_registry".into(),
            issuer: "tokengate".into(),
            token_ttl: Duration::from_secs(300),
            session_ttl: Duration::from_secs(3600),
            anonymous: false,
            allow_delete: false,
            key_file: key.clone(),
            verify_key_files: vec![],
        };
        RegistryAuth::new(config, KeyRing::load(&key, &[]).unwrap())
    }

    fn token() -> TokenRecord {
        TokenRecord {
            id: 42,
            name: "ci".into(),
            username: "bot".into(),
            owner_kind: OwnerKind::Project,
            owner_path: "acme/web".into(),
            scopes: ScopeSet::parse_list("read_registry").unwrap(),
            expires_at: None,
            revoked: false,
            created_at: Utc::now(),
            last_used_at: None,
        }
    }

    #[test]
    fn issues_the_intersection_as_a_verifiable_token() {
        let dir = tempfile::tempdir().unwrap();
        let auth = auth(dir.path());
        let now = Utc::now();
        let answer = auth
            .issue(
                Some(&token()),
                Some("service=container_registry&scope=repository%3Aacme%2Fweb%2Fapp%3Apull%2Cpush&scope=repository:acme/api/x:pull+registry:catalog:*&account=bot&client_id=docker&offline_token=true"),
                now,
            )
            .unwrap();
        assert_eq!(answer["token"], answer["access_token"]);
        assert_eq!(answer["expires_in"], 300);
        let claims = auth.verify(answer["token"].as_str().unwrap()).unwrap();
        assert_eq!(claims.deploy_token_id, Some(42));
        assert_eq!(claims.sub, "bot");
        assert_eq!(
            claims.access,
            vec![Grant {
                kind: "repository".into(),
                class: None,
                name: "acme/web/app".into(),
                actions: vec!["pull".into()],
            }]
        );
    }

    #[test]
    fn jwts_never_outlive_the_deploy_token() {
        let dir = tempfile::tempdir().unwrap();
        let auth = auth(dir.path());
        let now = Utc::now();
        let mut expiring = token();
        expiring.expires_at = Some(now + chrono::Duration::seconds(10));
        let answer = auth
            .issue(
                Some(&expiring),
                Some("scope=repository:acme/web/app:pull"),
                now,
            )
            .unwrap();
        assert_eq!(answer["expires_in"], 10);
        let claims = auth.verify(answer["token"].as_str().unwrap()).unwrap();
        assert_eq!(claims.exp, now.timestamp() + 10);
        let session = auth.issue_session(&expiring, "conan", now);
        let claims = auth.verify_session(&session, "conan").unwrap();
        assert_eq!(claims.exp, now.timestamp() + 10);
    }

    #[test]
    fn refusals() {
        let dir = tempfile::tempdir().unwrap();
        let auth = auth(dir.path());
        let now = Utc::now();
        assert!(matches!(
            auth.issue(Some(&token()), Some("service=other"), now),
            Err(TokenRequestError::UnknownService(_))
        ));
        assert!(matches!(
            auth.issue(Some(&token()), Some("scope=repository:acme"), now),
            Err(TokenRequestError::BadScope(_))
        ));
        assert!(matches!(
            auth.issue(Some(&token()), Some("account=someone-else"), now),
            Err(TokenRequestError::OtherAccount)
        ));
        let anonymous = auth
            .issue(None, Some("scope=repository:acme/web/app:pull"), now)
            .unwrap();
        let claims = auth.verify(anonymous["token"].as_str().unwrap()).unwrap();
        assert!(claims.access.is_empty());
        assert_eq!(claims.deploy_token_id, None);
    }

    #[test]
    fn sessions_are_bound_to_their_audience() {
        let dir = tempfile::tempdir().unwrap();
        let auth = auth(dir.path());
        let jwt = auth.issue_session(&token(), "conan", Utc::now());
        let claims = auth.verify_session(&jwt, "conan").unwrap();
        assert_eq!(claims.deploy_token_id, Some(42));
        assert!(claims.access.is_empty());
        assert!(auth.verify(&jwt).is_err(), "a session is no registry token");
        assert!(auth.verify_session(&jwt, "nuget").is_err());
        let registry = auth.issue(Some(&token()), None, Utc::now()).unwrap();
        let registry = registry["token"].as_str().unwrap();
        assert!(auth.verify_session(registry, "conan").is_err());
        let expired =
            auth.issue_session(&token(), "conan", Utc::now() - chrono::Duration::hours(2));
        assert!(auth.verify_session(&expired, "conan").is_err());
    }
}
