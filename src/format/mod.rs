//! Registry formats. A format is data plus one [`Format`] impl: which
//! credentials its stock clients send, which access each request needs,
//! and how it challenges a client. Nothing else in the crate matches on
//! format names; [`by_name`] is the only registry of them.

mod conan;
mod credentials;
mod generic;
mod git;
mod maven;
mod npm;
mod nuget;
pub mod oci;
mod pypi;

use std::sync::Arc;

use http::{HeaderMap, Method};

use credentials::extract;
pub use credentials::{CredentialError, Presented};

use crate::token::{Scope, ScopeSet};

/// What a request does to the registry, before it is mapped to a scope.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    Read,
    Write,
    /// A read that publishing clients make too (Maven's `maven-metadata.xml`
    /// before a deploy): either scope allows it.
    ReadForWrite,
    /// Never allowed through this format (e.g. an unknown method).
    Refused,
}

impl Access {
    /// The config name, as in `[[route.access]]`.
    pub fn as_str(self) -> &'static str {
        match self {
            Access::Read => "read",
            Access::Write => "write",
            Access::ReadForWrite => "read_or_write",
            Access::Refused => "deny",
        }
    }

    pub fn parse(s: &str) -> Option<Access> {
        match s {
            "read" => Some(Access::Read),
            "write" => Some(Access::Write),
            "read_or_write" => Some(Access::ReadForWrite),
            "deny" => Some(Access::Refused),
            _ => None,
        }
    }
}

/// Where a client may put its deploy token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CredentialSource {
    /// `Authorization: Basic base64(username:token)`.
    Basic,
    /// `Authorization: Bearer token`.
    Bearer,
    /// `Deploy-Token: token` (GitLab's header).
    DeployTokenHeader,
    /// `X-NuGet-ApiKey: token`.
    NuGetApiKey,
}

/// How a format's clients prove who they are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Authentication {
    /// The deploy token itself, in one of the format's credential headers.
    DeployToken,
    /// A registry JWT from tokengate's token endpoint (`Bearer`), naming the
    /// deploy token it was issued to and the repositories and actions granted.
    RegistryJwt,
    /// A session JWT that tokengate issued on the format's own login endpoint
    /// (Conan's `users/authenticate`) in exchange for the deploy token. It
    /// names only the token; the format's access rules apply as usual.
    SessionJwt,
}

/// The query parameter carrying tokengate's grant on pre-signed file URLs.
pub const URL_GRANT_PARAM: &str = "tokengate_grant";

/// The login endpoints of a [`Authentication::SessionJwt`] format, which
/// tokengate answers itself instead of forwarding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionEndpoint {
    /// Basic deploy-token credentials in, a session JWT out.
    Login,
    /// Is this session JWT still good? Answers with the token's username.
    Check,
}

/// One registry protocol's rules.
pub trait Format: Send + Sync + 'static {
    /// The config name, e.g. `npm`.
    fn name(&self) -> &'static str;

    /// What the credential is: the deploy token, or a JWT issued for one.
    fn authentication(&self) -> Authentication {
        Authentication::DeployToken
    }

    /// Whether requests name their own namespace in the path (OCI
    /// repositories, git projects); routes of such formats take no `namespace`.
    fn names_namespace(&self) -> bool {
        false
    }

    /// The namespace a request names, for formats that do; `None` when the
    /// path names none (OCI's `/v2/`) or an invalid one.
    fn namespace_in(&self, _rest: &[&str]) -> Option<String> {
        None
    }

    /// Which login endpoint this request is, for session-JWT formats.
    fn session_endpoint(&self, _method: &Method, _rest: &[&str]) -> Option<SessionEndpoint> {
        None
    }

    /// For upstreams with a login flow of their own (Conan servers): the
    /// path, relative to the upstream URL, where the proxy trades its Basic
    /// credentials for a Bearer token, which it caches and refreshes.
    fn upstream_login(&self) -> Option<&'static str> {
        None
    }

    /// For documents listing pre-signed file URLs (Conan 1's `upload_urls`,
    /// `download_urls`, `digest`): the access those URLs give. tokengate
    /// appends a grant of its own to each, because clients send the file
    /// requests without credentials.
    fn url_grant(&self, _method: &Method, _rest: &[&str]) -> Option<Access> {
        None
    }

    /// Whether a request is one of those pre-signed file URLs, authorized by
    /// tokengate's grant (the [`URL_GRANT_PARAM`] query parameter).
    fn takes_url_grant(&self, _rest: &[&str]) -> bool {
        false
    }

    /// Whether this request asks whom its credential belongs to (npm's
    /// `/-/whoami`). tokengate answers it with the deploy token's username:
    /// forwarded, the upstream would name the proxy's own account.
    fn asks_identity(&self, _method: &Method, _rest: &[&str]) -> bool {
        false
    }

    /// What a client is told when this format refuses a request outright.
    fn refusal(&self) -> &'static str {
        "this request is not allowed with a deploy token"
    }

    /// Credential headers this format's clients send.
    fn credential_sources(&self) -> &'static [CredentialSource];

    /// The access a request needs; `rest` holds the decoded segments after
    /// the route prefix, `query` the raw query (git names its service there).
    fn access(&self, method: &Method, rest: &[&str], query: Option<&str>) -> Access;

    /// The scopes of which an access needs one. Package formats share GitLab's package scopes.
    fn scopes_for(&self, access: Access) -> ScopeSet {
        package_scopes(access)
    }

    /// Whether a segment written with an encoded `/` is part of this protocol
    /// (npm's `@scope%2fname`). Everywhere else it is refused.
    fn allows_encoded_slash(&self, _decoded: &str) -> bool {
        false
    }

    /// Whether a successful response to this request may carry absolute
    /// upstream URLs (package metadata) that must be rewritten to the proxy.
    fn rewrites_metadata(&self, _method: &Method, _rest: &[&str]) -> bool {
        false
    }

    /// Whether this format's clients upload multipart forms (twine, `nuget
    /// push`). Elsewhere a multipart body is refused unless a route's write
    /// rule says `multipart = true`: Rack (GitLab) reads its fields as
    /// parameters beside the checked query, as it does a URL-encoded form's.
    fn uploads_multipart(&self) -> bool {
        false
    }
}

/// Looks up a format by its config name.
pub fn by_name(name: &str) -> Option<Arc<dyn Format>> {
    Some(match name {
        "npm" => Arc::new(npm::Npm),
        "pypi" => Arc::new(pypi::PyPi),
        "maven" => Arc::new(maven::Maven),
        "generic" => Arc::new(generic::Generic),
        "oci" => Arc::new(oci::Oci),
        "git" => Arc::new(git::Git),
        "nuget" => Arc::new(nuget::NuGet),
        "conan" => Arc::new(conan::Conan),
        _ => return None,
    })
}

/// The format names accepted in config, for error messages.
pub const NAMES: &[&str] = &[
    "npm", "pypi", "maven", "generic", "oci", "git", "nuget", "conan",
];

/// Whether a method only reads: GET, or HEAD (GET without the body).
pub fn is_read(method: &Method) -> bool {
    method == Method::GET || method == Method::HEAD
}

/// A body whose fields an upstream may read as request parameters, beside
/// the query's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FormBody {
    /// `application/x-www-form-urlencoded`: servlet containers (Nexus,
    /// Artifactory) and Rack (GitLab) read its fields as parameters.
    UrlEncoded,
    /// `multipart/form-data`: Rack reads its fields as parameters too.
    Multipart,
}

/// The form a request's body is, by any of its `Content-Type`s (parameters
/// and case aside); a URL-encoded one wins if both are named.
pub fn form_body(headers: &HeaderMap) -> Option<FormBody> {
    let mut form = None;
    for value in headers.get_all(http::header::CONTENT_TYPE) {
        let essence = value.as_bytes().split(|&b| b == b';').next().unwrap_or(b"");
        let essence = essence.trim_ascii();
        if essence.eq_ignore_ascii_case(b"application/x-www-form-urlencoded") {
            return Some(FormBody::UrlEncoded);
        }
        if essence.eq_ignore_ascii_case(b"multipart/form-data") {
            form = Some(FormBody::Multipart);
        }
    }
    form
}

/// GET and HEAD read, the given methods write, anything else is refused:
/// the rule most package formats share.
fn read_or_write(method: &Method, write: &[Method]) -> Access {
    if is_read(method) {
        Access::Read
    } else if write.contains(method) {
        Access::Write
    } else {
        Access::Refused
    }
}

/// GitLab's package-registry scopes for an access.
fn package_scopes(access: Access) -> ScopeSet {
    let mut set = ScopeSet::default();
    match access {
        Access::Read => set.insert(Scope::ReadPackageRegistry),
        Access::Write => set.insert(Scope::WritePackageRegistry),
        Access::ReadForWrite => {
            set.insert(Scope::ReadPackageRegistry);
            set.insert(Scope::WritePackageRegistry);
        }
        Access::Refused => {}
    }
    set
}

/// Reads Basic credentials only (registry token endpoints).
pub fn basic_credentials(headers: &HeaderMap) -> Result<Option<Presented<'_>>, CredentialError> {
    extract(&[CredentialSource::Basic], headers)
}

/// Reads the deploy-token credentials a format accepts from the request headers.
pub fn credentials<'h>(
    format: &dyn Format,
    headers: &'h HeaderMap,
) -> Result<Option<Presented<'h>>, CredentialError> {
    extract(format.credential_sources(), headers)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn form_bodies_are_recognised_by_their_media_type() {
        let with = |values: &[&'static str]| {
            let mut headers = HeaderMap::new();
            for value in values {
                headers.append(
                    http::header::CONTENT_TYPE,
                    http::HeaderValue::from_static(value),
                );
            }
            form_body(&headers)
        };
        let url_encoded = Some(FormBody::UrlEncoded);
        assert_eq!(with(&["application/x-www-form-urlencoded"]), url_encoded);
        assert_eq!(
            with(&[" Application/X-WWW-Form-Urlencoded ; charset=utf-8"]),
            url_encoded
        );
        assert_eq!(
            with(&["Multipart/Form-Data; boundary=x"]),
            Some(FormBody::Multipart)
        );
        // Any of several: an upstream may read the last, or the first.
        let both = ["multipart/form-data", "application/x-www-form-urlencoded"];
        assert_eq!(with(&both), url_encoded);
        assert_eq!(
            with(&["text/plain", "multipart/form-data"]),
            Some(FormBody::Multipart)
        );
        assert_eq!(with(&["application/octet-stream"]), None);
        assert_eq!(with(&["multipart/form-data-x"]), None);
        assert_eq!(with(&[]), None);
    }

    #[test]
    fn every_listed_format_exists() {
        for name in NAMES {
            assert_eq!(by_name(name).unwrap().name(), *name);
        }
        assert!(by_name("cobol").is_none());
    }

    #[test]
    fn package_formats_map_methods() {
        let cases: &[(&str, Method, &[&str], Access)] = &[
            ("npm", Method::GET, &["left-pad"], Access::Read),
            ("npm", Method::PUT, &["left-pad"], Access::Write),
            (
                "npm",
                Method::DELETE,
                &["left-pad", "-rev", "1"],
                Access::Write,
            ),
            (
                "npm",
                Method::POST,
                &["-", "npm", "v1", "security", "audits", "quick"],
                Access::Read,
            ),
            (
                "npm",
                Method::POST,
                &["-", "npm", "v1", "security", "advisories", "bulk"],
                Access::Read,
            ),
            ("npm", Method::POST, &["left-pad"], Access::Refused),
            ("npm", Method::PATCH, &["left-pad"], Access::Refused),
            ("npm", Method::GET, &["-", "v1", "search"], Access::Read),
            ("npm", Method::GET, &["-", "whoami"], Access::Read),
            (
                "npm",
                Method::PUT,
                &["-", "package", "@acme/web", "dist-tags", "next"],
                Access::Write,
            ),
            (
                "npm",
                Method::GET,
                &["-", "package", "left-pad", "dist-tags"],
                Access::Read,
            ),
            // The upstream account's own endpoints, whatever the token's scopes.
            (
                "npm",
                Method::GET,
                &["-", "npm", "v1", "tokens"],
                Access::Refused,
            ),
            (
                "npm",
                Method::DELETE,
                &["-", "npm", "v1", "tokens", "token", "k"],
                Access::Refused,
            ),
            (
                "npm",
                Method::PUT,
                &["-", "user", "org.couchdb.user:x"],
                Access::Refused,
            ),
            (
                "npm",
                Method::GET,
                &["-", "npm", "v1", "user"],
                Access::Refused,
            ),
            ("npm", Method::GET, &["-", "all"], Access::Refused),
            // Artifactory's `.npmrc` for a scope, with the proxy's password;
            // the package named `auth` is still read.
            ("npm", Method::GET, &["auth", "acme"], Access::Refused),
            ("npm", Method::GET, &["auth"], Access::Read),
            (
                "npm",
                Method::GET,
                &["auth", "-", "auth-1.0.0.tgz"],
                Access::Read,
            ),
            // A tarball path has `-` further in: package access as before.
            (
                "npm",
                Method::GET,
                &["left-pad", "-", "left-pad-1.0.0.tgz"],
                Access::Read,
            ),
            (
                "npm",
                Method::DELETE,
                &["left-pad", "-", "left-pad-1.0.0.tgz", "-rev", "2"],
                Access::Write,
            ),
            ("pypi", Method::HEAD, &["simple", "x"], Access::Read),
            ("pypi", Method::POST, &[], Access::Write),
            ("pypi", Method::POST, &["legacy"], Access::Write),
            ("pypi", Method::POST, &["RPC2"], Access::Refused),
            ("pypi", Method::POST, &["simple", "x"], Access::Refused),
            ("pypi", Method::PUT, &[], Access::Refused),
            (
                "maven",
                Method::PUT,
                &["g", "a", "1", "a-1.jar"],
                Access::Write,
            ),
            ("maven", Method::POST, &["x"], Access::Write),
            ("maven", Method::DELETE, &["x"], Access::Write),
            ("maven", Method::OPTIONS, &["x"], Access::Refused),
            (
                "maven",
                Method::GET,
                &["g", "a", "maven-metadata.xml"],
                Access::ReadForWrite,
            ),
            (
                "maven",
                Method::HEAD,
                &["g", "a", "maven-metadata.xml.sha1"],
                Access::ReadForWrite,
            ),
            (
                "maven",
                Method::GET,
                &["g", "a", "1", "a-1.jar"],
                Access::Read,
            ),
            // Only the metadata itself is readable by a write-only token.
            (
                "maven",
                Method::GET,
                &["g", "a", "maven-metadata.xml.bak"],
                Access::Read,
            ),
            ("generic", Method::GET, &["f"], Access::Read),
            ("generic", Method::PUT, &["f"], Access::Write),
            ("generic", Method::CONNECT, &["f"], Access::Refused),
        ];
        for (format, method, rest, want) in cases {
            let got = by_name(format).unwrap().access(method, rest, None);
            assert_eq!(got, *want, "{format} {method} {rest:?}");
        }
    }
}
