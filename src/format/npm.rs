//! npm: `_authToken` (Bearer) or `_auth` (Basic). Audits are POSTs that only read.

use http::Method;

use super::{is_read, read_or_write, Access, CredentialSource, Format};

pub struct Npm;

impl Format for Npm {
    fn name(&self) -> &'static str {
        "npm"
    }

    fn credential_sources(&self) -> &'static [CredentialSource] {
        &[CredentialSource::Bearer, CredentialSource::Basic]
    }

    fn access(&self, method: &Method, rest: &[&str], _query: Option<&str>) -> Access {
        match rest {
            ["-", api @ ..] => registry_api(method, api),
            // Artifactory answers `auth/<scope>` with `.npmrc` lines holding
            // the credentials of the account asking: the proxy's own. For a
            // package named `auth` it would be one version's document,
            // which clients read from the package document instead.
            ["auth", version] if *version != "-" => Access::Refused,
            _ => read_or_write(method, &[Method::PUT, Method::DELETE]),
        }
    }

    fn asks_identity(&self, method: &Method, rest: &[&str]) -> bool {
        is_read(method) && rest == ["-", "whoami"]
    }

    /// Scoped package names travel as one segment, `@scope%2fname`: a
    /// scope and a name, neither empty nor starting with `.` or `_` (npm's
    /// own rule), so no part of one is a path step upstream.
    fn allows_encoded_slash(&self, decoded: &str) -> bool {
        let is_name = |part: &str| !part.is_empty() && !part.starts_with(['.', '_']);
        decoded
            .strip_prefix('@')
            .and_then(|scoped| scoped.split_once('/'))
            .is_some_and(|(scope, name)| is_name(scope) && is_name(name) && !name.contains('/'))
    }

    /// Package documents (`GET /name`, `GET /@scope/name`) carry `dist.tarball` URLs.
    fn rewrites_metadata(&self, method: &Method, rest: &[&str]) -> bool {
        method == Method::GET && !rest.is_empty() && !rest.contains(&"-")
    }
}

/// The registry's own API under `/-/`: only what package clients use. The
/// upstream answers as the proxy's own account, so its account endpoints
/// (`/-/user/…`, `/-/npm/v1/tokens`, profiles, orgs, teams, access and
/// collaborators) would act on that account for any deploy token: refused.
fn registry_api(method: &Method, api: &[&str]) -> Access {
    let read = is_read(method);
    match api {
        // `npm audit`: POSTs that only read.
        ["npm", "v1", "security", ..] if method == Method::POST => Access::Read,
        ["v1", "search"] | ["ping"] | ["whoami"] if read => Access::Read,
        ["package", _, "dist-tags"] if read => Access::Read,
        ["package", _, "dist-tags", _] => read_or_write(method, &[Method::PUT, Method::DELETE]),
        _ => Access::Refused,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_scope_and_a_name_may_hold_an_encoded_slash() {
        for ok in ["@scope/name", "@acme/web.js", "@a/b-c"] {
            assert!(Npm.allows_encoded_slash(ok), "{ok}");
        }
        for refused in [
            "@x/..",
            "@x/.",
            "@../x",
            "@x/.hidden",
            "@x/_private",
            "@/name",
            "@scope/",
            "@a/b/c",
            "@a//b",
            "scope/name",
            "@scope",
        ] {
            assert!(!Npm.allows_encoded_slash(refused), "{refused}");
        }
    }
}
