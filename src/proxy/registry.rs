//! The registry token flow inside the proxy: tokengate's token endpoint and
//! JWKS document, and the authorization of `oci` routes by registry JWT.
//! The rules themselves live in [`crate::oci`] and [`crate::auth`]; this
//! file only gathers what they need (credentials, the token record).

use std::net::IpAddr;
use std::sync::Arc;

use super::body::Buffered;
use http::request::Parts;
use http::{header, HeaderValue, Method, Response, StatusCode};
use http_body_util::Either;

use super::{ErrorStyle, Outcome, Proxy, ProxyError, ResponseBody};
use crate::auth::{self, Ask, Denial};
use crate::config::RegistryAuthConfig;
use crate::format::oci::{classify, Action, Endpoint};
use crate::format::{self, Access};
use crate::oci::RegistryAuth;
use crate::route::{Matched, NormalizedPath};
use crate::token::TokenRecord;

impl Proxy {
    /// Answers the token endpoint and the JWKS document; `None` for any other path.
    pub(super) async fn registry_endpoint(
        &self,
        registry: &RegistryAuth,
        head: &Parts,
        path: &NormalizedPath,
        query: Option<&str>,
        client: IpAddr,
        outcome: &mut Outcome,
    ) -> Option<Result<Response<ResponseBody>, ProxyError>> {
        let config = registry.config();
        if path_is(path, &config.jwks_path) {
            outcome.route = Some(Arc::from("registry-jwks"));
            outcome.decision = "public";
            return Some(Ok(json(StatusCode::OK, &registry.jwks())));
        }
        if !path_is(path, &config.path) {
            return None;
        }
        outcome.route = Some(Arc::from("registry-token"));
        outcome.style.registry = true;
        if head.method != Method::GET && head.method != Method::HEAD {
            // Clients that try OAuth2 (POST) first fall back to GET on 404.
            return Some(Err(ProxyError::NoRoute));
        }
        Some(
            self.issue_registry_token(registry, head, query, client, outcome)
                .await,
        )
    }

    async fn issue_registry_token(
        &self,
        registry: &RegistryAuth,
        head: &Parts,
        query: Option<&str>,
        client: IpAddr,
        outcome: &mut Outcome,
    ) -> Result<Response<ResponseBody>, ProxyError> {
        if self.failures.is_blocked(client) {
            return Err(ProxyError::TooManyFailures);
        }
        let now = chrono::Utc::now();
        let record = match format::basic_credentials(&head.headers)? {
            None if registry.config().anonymous => None,
            None => return Err(ProxyError::NoCredentials),
            Some(presented) => {
                let record = self.token_for_secret(&presented.secret).await?;
                auth::authenticate(record.as_deref(), presented.username.as_deref(), now)?;
                outcome.token_id = record.as_ref().map(|r| r.id);
                record
            }
        };
        let body = registry.issue(record.as_deref(), query, now)?;
        if let Some(record) = &record {
            self.last_used.mark(record.id, now.timestamp());
        }
        outcome.decision = "token_issued";
        Ok(json(StatusCode::OK, &body))
    }

    /// Authorizes a request on an `oci` route by its registry JWT: the JWT
    /// must be valid and grant the repository and action, *and* the deploy
    /// token it names must still be live and allowed (so revocation applies
    /// before the JWT expires). Returns the token and the query to forward
    /// (a blob mount from an unreadable repository is dropped, so the
    /// registry starts a plain upload instead of leaking the blob).
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn authorize_registry(
        &self,
        registry: &RegistryAuth,
        head: &Parts,
        matched: &Matched<'_>,
        rest: &[&str],
        access: Access,
        query: Option<&str>,
        outcome: &mut Outcome,
    ) -> Result<(Arc<TokenRecord>, Option<String>), ProxyError> {
        let endpoint = classify(&head.method, rest, query);
        let public = &self.config.server.public_url;
        let scope = match &endpoint {
            Endpoint::Repository { name, action, .. } => {
                Some(format!("repository:{name}:{}", action.scope_actions()))
            }
            _ => None,
        };
        outcome.style = ErrorStyle {
            challenge: registry.challenge(public, scope.as_deref(), None),
            registry: true,
        };
        if endpoint == Endpoint::Invalid {
            return Err(ProxyError::NoRoute);
        }
        let format = &*matched.route.format;
        let presented =
            format::credentials(format, &head.headers)?.ok_or(ProxyError::NoCredentials)?;
        let claims = registry.verify(&presented.secret).map_err(|e| {
            outcome.style.challenge =
                registry.challenge(public, scope.as_deref(), Some("invalid_token"));
            ProxyError::from(e)
        })?;
        let id = claims.deploy_token_id.ok_or(Denial::UnknownToken)?;
        outcome.token_id = Some(id);
        let record = self.token_by_id(id).await?;
        let now = chrono::Utc::now();
        let username = Some(claims.sub.as_str());
        let mut forward_query = query.map(str::to_string);
        match &endpoint {
            Endpoint::Invalid => unreachable!("answered above"),
            Endpoint::Base => {
                auth::authenticate(record.as_deref(), username, now)?;
                // Only the version check, whatever an access rule (or
                // `allow_delete`'s `DELETE /**`) says about the path.
                if access == Access::Refused || !format::is_read(&head.method) {
                    return Err(Denial::AccessRefused.into());
                }
            }
            Endpoint::Catalog => {
                auth::authenticate(record.as_deref(), username, now)?;
                return Err(Denial::AccessRefused.into());
            }
            Endpoint::Repository {
                name,
                action,
                mount_from,
            } => {
                // Not an operation the proxy lets through, whatever the
                // access rules give the method and path.
                if *action == Action::Refused {
                    return Err(Denial::AccessRefused.into());
                }
                let ask = Ask {
                    username,
                    namespace: name,
                    access,
                    scopes: format.scopes_for(access),
                };
                auth::decide(record.as_deref(), &ask, now)?;
                if !claims.access.iter().any(|g| g.allows(name, action.grant())) {
                    outcome.style.challenge =
                        registry.challenge(public, scope.as_deref(), Some("insufficient_scope"));
                    return Err(ProxyError::InsufficientScope);
                }
                if let Some(from) = mount_from {
                    let source = Ask {
                        username,
                        namespace: from,
                        access: Access::Read,
                        scopes: format.scopes_for(Access::Read),
                    };
                    let readable = claims.access.iter().any(|g| g.allows(from, "pull"))
                        && auth::decide(record.as_deref(), &source, now).is_ok();
                    if !readable {
                        tracing::info!(token_id = id, from = %from, "blob mount from an unreadable repository dropped");
                        forward_query = query.and_then(|q| without_params(q, &["mount", "from"]));
                    }
                }
            }
        }
        outcome.decision = "allowed";
        self.last_used.mark(id, now.timestamp());
        Ok((record.expect("authenticated above"), forward_query))
    }
}

/// Whether tokengate answers the path itself (token endpoint, JWKS document).
pub fn own_endpoint(config: &RegistryAuthConfig, path: &NormalizedPath) -> bool {
    path_is(path, &config.path) || path_is(path, &config.jwks_path)
}

/// Whether the normalized path is exactly the configured one.
fn path_is(path: &NormalizedPath, configured: &str) -> bool {
    !path.trailing_slash
        && path
            .decoded()
            .eq(configured.split('/').filter(|s| !s.is_empty()))
}

/// The query without the parameters `names`; `None` when nothing is left.
pub(super) fn without_params(query: &str, names: &[&str]) -> Option<String> {
    let kept: Vec<&str> = query
        .split('&')
        .filter(|pair| {
            let key = pair.split_once('=').map_or(*pair, |(k, _)| k);
            !names.contains(&key)
        })
        .collect();
    (!kept.is_empty()).then(|| kept.join("&"))
}

fn json(status: StatusCode, body: &serde_json::Value) -> Response<ResponseBody> {
    let mut response = Response::new(Either::Right(Buffered::new(body.to_string())));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dropping_a_mount_keeps_the_rest() {
        let mount = ["mount", "from"];
        assert_eq!(
            without_params("mount=sha256%3Aab&from=acme%2Fx", &mount),
            None
        );
        assert_eq!(
            without_params("mount=sha256%3Aab&x=1&from=acme%2Fx", &mount),
            Some("x=1".to_string())
        );
    }
}
