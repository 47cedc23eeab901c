//! git over smart HTTP, read only: `read_repository` allows clone and fetch
//! (`info/refs?service=git-upload-pack`, `POST git-upload-pack`). Pushing
//! (`git-receive-pack`) and the dumb protocol are refused to every deploy
//! token, as in GitLab. The namespace is the project path before `.git`:
//! `/acme/web.git/info/refs` is project `acme/web`.

use http::Method;

use super::{Access, CredentialSource, Format};
use crate::route::normalize::{form_decode, query_pairs};
use crate::token::{validate_namespace, Scope, ScopeSet};

pub struct Git;

/// Where the repository path ends: the first segment named `*.git`.
fn repository_end(rest: &[&str]) -> Option<usize> {
    rest.iter().position(|s| s.len() > 4 && s.ends_with(".git"))
}

impl Format for Git {
    fn name(&self) -> &'static str {
        "git"
    }

    fn credential_sources(&self) -> &'static [CredentialSource] {
        &[CredentialSource::Basic]
    }

    fn names_namespace(&self) -> bool {
        true
    }

    fn namespace_in(&self, rest: &[&str]) -> Option<String> {
        let end = repository_end(rest)?;
        let mut path = rest[..=end].join("/");
        path.truncate(path.len() - ".git".len());
        validate_namespace(&path).is_ok().then_some(path)
    }

    fn access(&self, method: &Method, rest: &[&str], query: Option<&str>) -> Access {
        let Some(end) = repository_end(rest) else {
            return Access::Refused;
        };
        match (method, &rest[end + 1..]) {
            (&Method::GET, ["info", "refs"]) if query.is_some_and(asks_upload_pack) => Access::Read,
            (&Method::POST, ["git-upload-pack"]) => Access::Read,
            _ => Access::Refused,
        }
    }

    fn scopes_for(&self, access: Access) -> ScopeSet {
        let mut set = ScopeSet::default();
        if matches!(access, Access::Read | Access::ReadForWrite) {
            set.insert(Scope::ReadRepository);
        }
        set
    }

    fn refusal(&self) -> &'static str {
        "deploy tokens may only clone and fetch over smart HTTP (git-upload-pack); git push and the dumb protocol are refused"
    }
}

/// Whether a ref advertisement asks for the fetch service and nothing a
/// server could read otherwise: exactly one `service` parameter, its name
/// decoded as git-http-backend decodes it, with the literal value
/// `git-upload-pack` (`service=git-upload-pack&service=git-receive-pack`
/// would be the push service to a server taking the last), and no `;`,
/// which Rack 2 (GitLab's) reads as `&`.
fn asks_upload_pack(query: &str) -> bool {
    if query.contains(';') {
        return false;
    }
    let mut services =
        query_pairs(query).filter(|(name, _)| form_decode(name).as_deref() == Some("service"));
    services.next() == Some(("service", "git-upload-pack")) && services.next().is_none()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clone_and_fetch_only() {
        let repo = ["acme", "web.git"];
        let with = |tail: &[&'static str]| -> Vec<&'static str> {
            let mut v: Vec<&'static str> = repo.to_vec();
            v.extend_from_slice(tail);
            v
        };
        let cases: &[(Method, Vec<&str>, Option<&str>, Access)] = &[
            (
                Method::GET,
                with(&["info", "refs"]),
                Some("service=git-upload-pack"),
                Access::Read,
            ),
            (Method::POST, with(&["git-upload-pack"]), None, Access::Read),
            (
                Method::GET,
                with(&["info", "refs"]),
                Some("service=git-receive-pack"),
                Access::Refused,
            ),
            (
                Method::POST,
                with(&["git-receive-pack"]),
                None,
                Access::Refused,
            ),
            (Method::GET, with(&["info", "refs"]), None, Access::Refused),
            // Read twice, or spelled so a server decodes another service.
            (
                Method::GET,
                with(&["info", "refs"]),
                Some("service=git-upload-pack&service=git-receive-pack"),
                Access::Refused,
            ),
            (
                Method::GET,
                with(&["info", "refs"]),
                Some("service=git-upload-pack&s%65rvice=git-receive-pack"),
                Access::Refused,
            ),
            (
                Method::GET,
                with(&["info", "refs"]),
                Some("service=git-upload-pack&x;service=git-receive-pack"),
                Access::Refused,
            ),
            (
                Method::GET,
                with(&["info", "refs"]),
                Some("x=1&service=git-upload-pack"),
                Access::Read,
            ),
            (Method::GET, with(&["HEAD"]), None, Access::Refused),
            (
                Method::GET,
                with(&["objects", "ab", "cdef"]),
                None,
                Access::Refused,
            ),
            (
                Method::GET,
                vec!["acme", "web", "info", "refs"],
                Some("service=git-upload-pack"),
                Access::Refused,
            ),
        ];
        for (method, rest, query, want) in cases {
            assert_eq!(
                Git.access(method, rest, *query),
                *want,
                "{method} {rest:?} {query:?}"
            );
        }
        assert!(Git.scopes_for(Access::Read).contains(Scope::ReadRepository));
        assert!(!Git
            .scopes_for(Access::Read)
            .contains(Scope::ReadPackageRegistry));
    }

    #[test]
    fn the_project_is_the_path_before_dot_git() {
        assert_eq!(
            Git.namespace_in(&["acme", "web.git", "info", "refs"])
                .as_deref(),
            Some("acme/web")
        );
        assert_eq!(
            Git.namespace_in(&["acme", "sub", "web.git", "git-upload-pack"])
                .as_deref(),
            Some("acme/sub/web")
        );
        assert_eq!(Git.namespace_in(&["acme", "web", "info", "refs"]), None);
        assert_eq!(Git.namespace_in(&[".git"]), None);
    }
}
