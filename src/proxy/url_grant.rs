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
use crate::config::PublicUrl;
use crate::format::{Access, Format, URL_GRANT_PARAM};
use crate::oci::RegistryAuth;
use crate::route::NormalizedPath;
use crate::token::TokenRecord;

/// The path a request for `url` reaches the proxy with, if `url` is one of the
/// proxy's own: under its public origin and base path, which an edge proxy
/// strips before forwarding, as requests are matched without it.
fn own_path<'u>(url: &'u str, public: &PublicUrl) -> Option<&'u str> {
    let rest = url
        .strip_prefix(public.origin.as_str())?
        .strip_prefix(public.base_path.as_str())?;
    let path = rest.split('?').next().unwrap_or(rest);
    path.starts_with('/').then_some(path)
}

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
        let public = &self.config.server.public_url;
        let paths: Vec<String> = urls
            .values()
            .filter_map(|v| own_path(v.as_str()?, public))
            .map(str::to_string)
            .collect();
        if paths.is_empty() {
            return None;
        }
        let now = chrono::Utc::now();
        let grant = registry.issue_url_grant(token, &audience(format), paths, access.as_str(), now);
        for value in urls.values_mut() {
            if let Some(url) = value.as_str().filter(|url| own_path(url, public).is_some()) {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grants_name_the_path_requests_arrive_with() {
        let public = |base: &str| PublicUrl {
            origin: "https://pkg.example.com".into(),
            base_path: base.into(),
            https: true,
        };
        let at_root = public("");
        let own = |url, public| own_path(url, public);
        assert_eq!(
            own(
                "https://pkg.example.com/v1/files/a.tgz?signature=s",
                &at_root
            ),
            Some("/v1/files/a.tgz")
        );
        let under_tg = public("/tg");
        assert_eq!(
            own(
                "https://pkg.example.com/tg/v1/files/a.tgz?signature=s",
                &under_tg
            ),
            Some("/v1/files/a.tgz")
        );
        for foreign in [
            "https://pkg.example.com.evil.net/v1/files/a.tgz",
            "https://pkg.example.com:8443/v1/files/a.tgz",
            "https://pkg.example.com@evil.net/v1/files/a.tgz",
            "http://pkg.example.com/v1/files/a.tgz",
        ] {
            assert_eq!(own(foreign, &at_root), None, "{foreign}");
        }
        assert_eq!(
            own("https://pkg.example.com/tgz/v1/files/a", &under_tg),
            None
        );
        assert_eq!(own("https://pkg.example.com/v1/files/a", &under_tg), None);
    }
}
