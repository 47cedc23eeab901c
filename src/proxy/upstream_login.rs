//! Upstreams with a login flow of their own (Conan servers take Basic only on
//! their login endpoint and a Bearer token everywhere else). The proxy logs in
//! with the upstream's configured `basic` credentials, keeps the token until
//! shortly before it expires, and drops it when the upstream answers 401, so
//! the next request logs in again. One login at a time per upstream, the whole
//! exchange (answer and body) within `upstream_response_timeout`; after a
//! failed login the requests that waited for it fail at once for a second,
//! instead of each trying again in turn behind the lock.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwapOption;
use base64::Engine;
use bytes::Bytes;
use http::{header, HeaderValue, Request, StatusCode, Uri};
use http_body_util::{BodyExt, Either, Empty, Limited};

use super::{Proxy, ProxyError};
use crate::route::{Route, Upstream};

/// Refresh this long before the upstream's token expires.
const REFRESH_MARGIN: Duration = Duration::from_secs(60);
/// How long a token whose expiry cannot be read is kept.
const OPAQUE_TOKEN_LIFETIME: Duration = Duration::from_secs(300);
/// Longest login answer read (a JWT is a few hundred bytes).
const MAX_TOKEN_BYTES: usize = 16 * 1024;
/// How long a failed login answers for the next ones.
const RETRY_AFTER_FAILURE: Duration = Duration::from_secs(1);

/// The login state of every upstream that has a login flow.
#[derive(Default)]
pub struct UpstreamLogins {
    by_upstream: HashMap<String, Login>,
}

struct Login {
    /// Where to log in, relative to the upstream URL.
    path: &'static str,
    current: ArcSwapOption<Session>,
    /// Held while logging in; guards `failed_at` too.
    in_progress: tokio::sync::Mutex<Option<Instant>>,
}

struct Session {
    authorization: HeaderValue,
    refresh_at: Instant,
}

impl Login {
    /// The current session's `Authorization`, unless it is due for renewal.
    fn fresh_authorization(&self) -> Option<HeaderValue> {
        let current = self.current.load();
        let session = current.as_deref()?;
        (session.refresh_at > Instant::now()).then(|| session.authorization.clone())
    }
}

impl UpstreamLogins {
    /// One entry per upstream whose routes' format logs in upstream and
    /// which has credentials to log in with.
    pub fn for_routes(routes: &[Route]) -> UpstreamLogins {
        let by_upstream = routes
            .iter()
            .filter(|r| r.upstream.authorization.is_some())
            .filter_map(|r| {
                let path = r.format.upstream_login()?;
                let login = Login {
                    path,
                    current: ArcSwapOption::empty(),
                    in_progress: tokio::sync::Mutex::new(None),
                };
                Some((r.upstream.name.to_string(), login))
            })
            .collect();
        UpstreamLogins { by_upstream }
    }

    /// Forgets an upstream's token, `used`, which it answered 401 to (unless
    /// another request has logged in anew meanwhile).
    pub fn invalidate(&self, upstream: &str, used: Option<&HeaderValue>) {
        let Some(login) = self.by_upstream.get(upstream) else {
            return;
        };
        let current = login.current.load();
        if current.as_ref().map(|s| &s.authorization) == used {
            login.current.compare_and_swap(&*current, None);
        }
    }
}

impl Proxy {
    /// The `Authorization` the proxy sends to `upstream`: its configured
    /// credential, or for upstreams with a login flow a current session token.
    pub(super) async fn upstream_authorization(
        &self,
        upstream: &Upstream,
    ) -> Result<Option<HeaderValue>, ProxyError> {
        let Some(login) = self.upstream_logins.by_upstream.get(&*upstream.name) else {
            return Ok(upstream.authorization.clone());
        };
        if let Some(authorization) = login.fresh_authorization() {
            return Ok(Some(authorization));
        }
        // Boxed: a login is an HTTP exchange of its own, whose state would
        // otherwise be part of every request's future.
        Box::pin(self.renew_session(upstream, login)).await
    }

    /// Logs in to `upstream` (one login at a time) unless another request just did.
    async fn renew_session(
        &self,
        upstream: &Upstream,
        login: &Login,
    ) -> Result<Option<HeaderValue>, ProxyError> {
        let mut failed_at = login.in_progress.lock().await;
        if let Some(authorization) = login.fresh_authorization() {
            return Ok(Some(authorization));
        }
        let failed = || ProxyError::UpstreamLogin(upstream.name.to_string());
        if failed_at.is_some_and(|at| at.elapsed() < RETRY_AFTER_FAILURE) {
            return Err(failed());
        }
        let timeout = self.config.server.upstream_response_timeout;
        let logged_in = tokio::time::timeout(timeout, self.log_in(upstream, login.path))
            .await
            .unwrap_or_else(|_| Err("no answer in time".to_string()));
        let session = logged_in.map_err(|why| {
            *failed_at = Some(Instant::now());
            self.metrics.upstream_failed(&upstream.name);
            tracing::warn!(upstream = %upstream.name, %why, "login to the upstream failed");
            failed()
        })?;
        let authorization = session.authorization.clone();
        login.current.store(Some(Arc::new(session)));
        tracing::debug!(upstream = %upstream.name, "logged in to the upstream");
        Ok(Some(authorization))
    }

    async fn log_in(&self, upstream: &Upstream, path: &str) -> Result<Session, String> {
        let uri: Uri = format!("{}{path}", upstream.base_path)
            .parse()
            .map_err(|e| format!("bad login path: {e}"))?;
        let mut request = Request::get(uri)
            .header(header::HOST, upstream.host.clone())
            .body(Either::Right(Empty::<Bytes>::new()))
            .map_err(|e| e.to_string())?;
        if let Some(basic) = &upstream.authorization {
            request
                .headers_mut()
                .insert(header::AUTHORIZATION, basic.clone());
        }
        let response = self
            .send_upstream(upstream, request)
            .await
            .map_err(|e| e.to_string())?;
        if response.status() != StatusCode::OK {
            return Err(format!("answered {}", response.status()));
        }
        let body = Limited::new(response.into_body(), MAX_TOKEN_BYTES)
            .collect()
            .await
            .map_err(|e| e.to_string())?
            .to_bytes();
        let token = std::str::from_utf8(&body)
            .map_err(|_| "the token is not text".to_string())?
            .trim();
        let authorization = HeaderValue::from_str(&format!("Bearer {token}"))
            .ok()
            .filter(|_| !token.is_empty())
            .ok_or_else(|| "the token is empty or not a header value".to_string())?;
        Ok(Session {
            authorization,
            refresh_at: Instant::now() + lifetime(token, chrono::Utc::now().timestamp()),
        })
    }
}

/// How long to use a token: until shortly before its `exp` when it is a JWT.
fn lifetime(token: &str, now: i64) -> Duration {
    let exp = token.split('.').nth(1).and_then(|payload| {
        let json = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(payload.trim_end_matches('='))
            .ok()?;
        serde_json::from_slice::<serde_json::Value>(&json).ok()?["exp"].as_i64()
    });
    match exp {
        Some(exp) => Duration::from_secs(exp.saturating_sub(now).max(0) as u64)
            .saturating_sub(REFRESH_MARGIN),
        None => OPAQUE_TOKEN_LIFETIME,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn jwt(payload: &str) -> String {
        let b64 = |s: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
        format!("{}.{}.sig", b64(r#"{"alg":"HS256"}"#), b64(payload))
    }

    /// A 401 to a token another request has since replaced must not drop
    /// the new one (one more login under the lock for nothing).
    #[test]
    fn a_401_drops_only_the_token_it_was_given_to() {
        let session = |token: &'static str| {
            Some(Arc::new(Session {
                authorization: HeaderValue::from_static(token),
                refresh_at: Instant::now() + Duration::from_secs(60),
            }))
        };
        let login = Login {
            path: "/login",
            current: ArcSwapOption::new(session("Bearer new")),
            in_progress: tokio::sync::Mutex::new(None),
        };
        let logins = UpstreamLogins {
            by_upstream: HashMap::from([("conan".to_string(), login)]),
        };
        let current = || logins.by_upstream["conan"].fresh_authorization();
        logins.invalidate("conan", Some(&HeaderValue::from_static("Bearer old")));
        assert_eq!(current(), Some(HeaderValue::from_static("Bearer new")));
        logins.invalidate("conan", Some(&HeaderValue::from_static("Bearer new")));
        assert_eq!(current(), None);
    }

    #[test]
    fn a_jwt_is_kept_until_shortly_before_it_expires() {
        let token = jwt(r#"{"user":"proxy","exp":10000}"#);
        assert_eq!(lifetime(&token, 10000 - 7200), Duration::from_secs(7140));
        assert_eq!(lifetime(&token, 10000 - 30), Duration::ZERO);
        assert_eq!(lifetime(&token, 20000), Duration::ZERO);
    }

    #[test]
    fn an_opaque_token_is_kept_a_while() {
        assert_eq!(lifetime("abc", 0), OPAQUE_TOKEN_LIFETIME);
        assert_eq!(lifetime(&jwt(r#"{"user":1}"#), 0), OPAQUE_TOKEN_LIFETIME);
    }
}
