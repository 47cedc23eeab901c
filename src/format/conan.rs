//! Conan (v1 and v2 REST APIs). Clients log in once with Basic credentials
//! on `users/authenticate` and then send the token they got back as Bearer.
//! tokengate answers that login itself with a short-lived JWT bound to the
//! deploy token (so revocation still applies at once), and logs in to the
//! upstream Conan server with its own credentials.
//!
//! GitLab's Conan API refuses deploy tokens (its issue 332735); here they
//! are the only credential.

use http::Method;

use super::{read_or_write, Access, Authentication, CredentialSource, Format, SessionEndpoint};

pub struct Conan;

/// The upstream's login endpoint, relative to its base URL (Conan 2 servers
/// serve only v2; Conan 1 servers serve both).
const UPSTREAM_LOGIN: &str = "/v2/users/authenticate";

impl Format for Conan {
    fn name(&self) -> &'static str {
        "conan"
    }

    fn authentication(&self) -> Authentication {
        Authentication::SessionJwt
    }

    fn credential_sources(&self) -> &'static [CredentialSource] {
        &[CredentialSource::Bearer]
    }

    fn refusal(&self) -> &'static str {
        "this Conan API request is not allowed with a deploy token"
    }

    fn session_endpoint(&self, method: &Method, rest: &[&str]) -> Option<SessionEndpoint> {
        if method != Method::GET {
            return None;
        }
        match rest {
            ["v1" | "v2", "users", "authenticate"] => Some(SessionEndpoint::Login),
            ["v1" | "v2", "users", "check_credentials"] => Some(SessionEndpoint::Check),
            _ => None,
        }
    }

    fn upstream_login(&self) -> Option<&'static str> {
        Some(UPSTREAM_LOGIN)
    }

    fn access(&self, method: &Method, rest: &[&str], _query: Option<&str>) -> Access {
        let access = read_or_write(method, &[Method::PUT, Method::POST, Method::DELETE]);
        let (api, path) = match rest {
            [api @ ("v1" | "v2"), path @ ..] => (*api, path),
            _ => return Access::Refused,
        };
        match (api, path) {
            // Capabilities and revision lookups: `conan upload` asks them
            // before writing, so a write-only token needs them too.
            (_, ["ping"]) if access == Access::Read => Access::ReadForWrite,
            // Only the login endpoints, which tokengate answers itself.
            (_, ["users", ..]) => Access::Refused,
            ("v2", ["conans", ..]) if access == Access::Read && !names_file(path) => {
                if path.get(1) == Some(&"search") || path.last() == Some(&"search") {
                    Access::Read
                } else {
                    Access::ReadForWrite
                }
            }
            _ => access,
        }
    }

    fn rewrites_metadata(&self, method: &Method, rest: &[&str]) -> bool {
        self.url_grant(method, rest).is_some()
    }

    fn url_grant(&self, method: &Method, rest: &[&str]) -> Option<Access> {
        // Conan 1 servers answer these with absolute, pre-signed URLs of their
        // own, which the client then uses without its session token.
        match (rest.first(), rest.last()) {
            (Some(&"v1"), Some(&"upload_urls")) if method == Method::POST => Some(Access::Write),
            (Some(&"v1"), Some(&("download_urls" | "digest"))) if method == Method::GET => {
                Some(Access::Read)
            }
            _ => None,
        }
    }

    fn takes_url_grant(&self, rest: &[&str]) -> bool {
        rest.starts_with(&["v1", "files"])
    }
}

/// Whether a v2 path lists or fetches recipe or package files (contents,
/// which only readers may see).
fn names_file(path: &[&str]) -> bool {
    path.contains(&"files")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn access(method: Method, path: &str) -> Access {
        let rest: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
        Conan.access(&method, &rest, None)
    }

    #[test]
    fn downloads_need_read_and_uploads_write() {
        let recipe = "v2/conans/zlib/1.3/_/_/revisions/abc";
        assert_eq!(
            access(Method::GET, &format!("{recipe}/files/conanfile.py")),
            Access::Read
        );
        assert_eq!(
            access(Method::GET, &format!("{recipe}/files")),
            Access::Read
        );
        assert_eq!(
            access(Method::PUT, &format!("{recipe}/files/conanfile.py")),
            Access::Write
        );
        assert_eq!(access(Method::DELETE, recipe), Access::Write);
        assert_eq!(access(Method::GET, "v2/conans/search"), Access::Read);
        assert_eq!(
            access(Method::GET, "v2/conans/zlib/1.3/_/_/search"),
            Access::Read
        );
        assert_eq!(access(Method::GET, "v1/files/zlib/1.3/x.tgz"), Access::Read);
        assert_eq!(
            access(Method::POST, "v1/conans/zlib/1.3/_/_/upload_urls"),
            Access::Write
        );
    }

    #[test]
    fn what_an_upload_asks_first_is_open_to_writers() {
        for path in [
            "v2/ping",
            "v1/ping",
            "v2/conans/zlib/1.3/_/_/latest",
            "v2/conans/zlib/1.3/_/_/revisions/abc",
            "v2/conans/zlib/1.3/_/_/revisions/abc/packages/pid/latest",
        ] {
            assert_eq!(access(Method::GET, path), Access::ReadForWrite, "{path}");
        }
    }

    #[test]
    fn other_apis_and_methods_are_refused() {
        assert_eq!(access(Method::GET, "v3/ping"), Access::Refused);
        assert_eq!(access(Method::GET, "conans/zlib"), Access::Refused);
        assert_eq!(access(Method::PATCH, "v2/conans/zlib"), Access::Refused);
        assert_eq!(
            access(Method::POST, "v2/users/authenticate"),
            Access::Refused
        );
    }

    #[test]
    fn login_endpoints_are_answered_by_tokengate() {
        let login = ["v2", "users", "authenticate"];
        assert_eq!(
            Conan.session_endpoint(&Method::GET, &login),
            Some(SessionEndpoint::Login)
        );
        assert_eq!(Conan.session_endpoint(&Method::POST, &login), None);
        assert_eq!(
            Conan.session_endpoint(&Method::GET, &["v1", "users", "check_credentials"]),
            Some(SessionEndpoint::Check)
        );
        assert_eq!(
            Conan.session_endpoint(&Method::GET, &["v2", "users", "authenticate", "x"]),
            None
        );
    }

    #[test]
    fn conan_1_url_documents_carry_grants_for_their_files() {
        let refs = ["v1", "conans", "z", "1", "_", "_"];
        let with = |last: &'static str| [&refs[..], &[last]].concat();
        assert_eq!(
            Conan.url_grant(&Method::GET, &with("download_urls")),
            Some(Access::Read)
        );
        assert_eq!(
            Conan.url_grant(&Method::GET, &with("digest")),
            Some(Access::Read)
        );
        assert_eq!(
            Conan.url_grant(&Method::POST, &with("upload_urls")),
            Some(Access::Write)
        );
        assert_eq!(Conan.url_grant(&Method::GET, &with("upload_urls")), None);
        assert!(Conan.rewrites_metadata(&Method::GET, &with("download_urls")));
        assert!(!Conan.rewrites_metadata(&Method::GET, &["v2", "conans", "z"]));
        assert!(Conan.takes_url_grant(&[
            "v1",
            "files",
            "z",
            "1",
            "_",
            "_",
            "0",
            "export",
            "conanfile.py"
        ]));
        assert!(!Conan.takes_url_grant(&["v2", "files"]));
    }
}
