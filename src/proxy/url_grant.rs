//! Pre-signed file URLs (Conan 1): the upstream lists absolute URLs that
//! clients then use without credentials. tokengate appends a grant of its
//! own to each URL it passes on — bound to the deploy token, naming the exact
//! path and access — and checks that grant, and the token behind it, when the
//! URL is used. So a revoked token's URLs stop working within the revocation
//! bound, not when the upstream's signature expires, and a URL for one file
//! or one access opens no other.

use std::sync::Arc;

use serde_json::Value;

use super::registry::without_params;
use super::{Proxy, ProxyError};
use crate::auth::Denial;
use crate::format::{Access, Format, URL_GRANT_PARAM};
use crate::oci::RegistryAuth;
use crate::route::NormalizedPath;
use crate::token::TokenRecord;

/// A request authorized by a URL grant: the token, the username the grant
/// was issued to, and the query to forward (without the grant).
pub(super) type Granted = (Option<Arc<TokenRecord>>, Option<String>, Option<String>);

fn audience(format: &dyn Format) -> String {
    format!("{}-files", format.name())
}

impl Proxy {
    /// Appends a grant for `access` to every URL of the proxy's own in a
    /// JSON object of URLs; `None` when the document is no such object.
    pub(super) fn grant_urls(
        &self,
        registry: &RegistryAuth,
        document: &str,
        token: &TokenRecord,
        access: Access,
        format: &dyn Format,
    ) -> Option<String> {
        let mut urls: serde_json::Map<String, Value> = serde_json::from_str(document).ok()?;
        let origin = self.config.server.public_url.origin.as_str();
        fn ours<'v>(value: &'v Value, origin: &str) -> Option<&'v str> {
            value.as_str().filter(|url| url.starts_with(origin))
        }
        let paths: Vec<String> = urls
            .values()
            .filter_map(|v| ours(v, origin))
            .map(|url| {
                let path = &url[origin.len()..];
                path.split('?').next().unwrap_or(path).to_string()
            })
            .collect();
        if paths.is_empty() {
            return None;
        }
        let now = chrono::Utc::now();
        let grant = registry.issue_url_grant(token, &audience(format), paths, access.as_str(), now);
        for value in urls.values_mut() {
            if let Some(url) = ours(value, origin) {
                let separator = if url.contains('?') { '&' } else { '?' };
                *value = Value::String(format!("{url}{separator}{URL_GRANT_PARAM}={grant}"));
            }
        }
        serde_json::to_string(&urls).ok()
    }

    /// Checks the grant on a pre-signed URL: signed by tokengate, for this
    /// format, naming this path and access. The token it names is looked up
    /// for the usual decision.
    pub(super) async fn url_grant_token(
        &self,
        registry: &RegistryAuth,
        path: &NormalizedPath,
        query: Option<&str>,
        access: Access,
        format: &dyn Format,
    ) -> Result<Granted, ProxyError> {
        let query = query.unwrap_or("");
        let jwt = query
            .split('&')
            .find_map(|pair| pair.strip_prefix(URL_GRANT_PARAM)?.strip_prefix('='))
            .ok_or(ProxyError::NoCredentials)?;
        let claims = registry.verify_session(jwt, &audience(format))?;
        let granted = claims.access.iter().any(|grant| {
            grant.kind == "file"
                && grant.actions.iter().any(|a| a == access.as_str())
                && NormalizedPath::parse(&grant.name).is_ok_and(|p| p.decoded().eq(path.decoded()))
        });
        if !granted {
            return Err(ProxyError::Refused(
                "this URL's grant is for another file or another access",
            ));
        }
        let id = claims.deploy_token_id.ok_or(Denial::UnknownToken)?;
        Ok((
            self.token_by_id(id).await?,
            Some(claims.sub),
            without_params(query, &[URL_GRANT_PARAM]),
        ))
    }
}
