//! npm: `_authToken` (Bearer) or `_auth` (Basic). Audits are POSTs that only read.

use http::Method;

use super::{read_or_write, Access, CredentialSource, Format};

pub struct Npm;

impl Format for Npm {
    fn name(&self) -> &'static str {
        "npm"
    }

    fn credential_sources(&self) -> &'static [CredentialSource] {
        &[CredentialSource::Bearer, CredentialSource::Basic]
    }

    fn access(&self, method: &Method, rest: &[&str], _query: Option<&str>) -> Access {
        if method == Method::POST && rest.starts_with(&["-", "npm", "v1", "security"]) {
            return Access::Read;
        }
        read_or_write(method, &[Method::PUT, Method::DELETE])
    }

    /// Scoped package names travel as one segment, `@scope%2fname`.
    fn allows_encoded_slash(&self, decoded: &str) -> bool {
        decoded.starts_with('@') && decoded.matches('/').count() == 1 && !decoded.ends_with('/')
    }

    /// Package documents (`GET /name`, `GET /@scope/name`) carry `dist.tarball` URLs.
    fn rewrites_metadata(&self, method: &Method, rest: &[&str]) -> bool {
        method == Method::GET && !rest.is_empty() && !rest.contains(&"-")
    }
}
