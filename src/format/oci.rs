//! OCI / Docker registry (distribution API v2). Clients authenticate with
//! the registry token flow: tokengate's token endpoint turns a deploy token
//! into a signed JWT, which the client then sends as `Bearer` on `/v2/`.
//! The namespace of a request is its repository name, read from the path.

use http::Method;

use super::{Access, Authentication, CredentialSource, Format};
use crate::oci::form_decode;
use crate::oci::scope::valid_repository;
use crate::token::{Scope, ScopeSet};

pub struct Oci;

/// What a `/v2/...` request addresses (the segments after `/v2`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    /// `/v2/`: the API version check; needs a valid token, nothing more.
    Base,
    /// `/v2/_catalog`: lists every repository; never served to deploy tokens.
    Catalog,
    Repository {
        name: String,
        action: Action,
        /// `from` of a cross-repository blob mount (`POST .../blobs/uploads/?mount=&from=`).
        mount_from: Option<String>,
    },
    /// A path the API does not have, or an invalid repository name.
    Invalid,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Pull,
    Push,
    /// Deleting manifests or blobs: refused unless the route sets `allow_delete`.
    Delete,
    Refused,
}

impl Action {
    /// The action name in registry scopes and JWT grants that allows this
    /// action through the proxy (deletes ride on `push`).
    pub fn grant(self) -> &'static str {
        match self {
            Action::Pull => "pull",
            Action::Push | Action::Delete | Action::Refused => "push",
        }
    }

    /// The actions a client must ask the token endpoint for (`scope=`).
    pub fn scope_actions(self) -> &'static str {
        match self {
            Action::Pull => "pull",
            _ => "pull,push",
        }
    }
}

/// Classifies a request; `rest` holds the decoded segments after `/v2`.
pub fn classify(method: &Method, rest: &[&str], query: Option<&str>) -> Endpoint {
    match rest {
        [] => return Endpoint::Base,
        ["_catalog"] => return Endpoint::Catalog,
        _ => {}
    }
    // The rightmost keyword whose tail is a known shape splits name from
    // tail (a repository may itself be called `blobs`, a tag `manifests`).
    for at in (1..rest.len()).rev() {
        let Some(action) = action(method, &rest[at..]) else {
            continue;
        };
        let name = rest[..at].join("/");
        if !valid_repository(&name) {
            return Endpoint::Invalid;
        }
        let mount_from = (rest[at..] == ["blobs", "uploads"])
            .then(|| query_param(query?, "from"))
            .flatten();
        return Endpoint::Repository {
            name,
            action,
            mount_from,
        };
    }
    Endpoint::Invalid
}

fn action(method: &Method, tail: &[&str]) -> Option<Action> {
    let read = method == Method::GET || method == Method::HEAD;
    Some(match tail {
        ["manifests", _] if read => Action::Pull,
        ["manifests", _] if method == Method::PUT => Action::Push,
        ["manifests", _] | ["blobs", _] if method == Method::DELETE => Action::Delete,
        ["blobs", "uploads"] if method == Method::POST => Action::Push,
        ["blobs", _] if read => Action::Pull,
        ["blobs", "uploads", _]
            if matches!(
                *method,
                Method::GET | Method::HEAD | Method::PATCH | Method::PUT | Method::DELETE
            ) =>
        {
            Action::Push
        }
        ["tags", "list"] | ["referrers", _] if read => Action::Pull,
        ["manifests", _]
        | ["blobs", _]
        | ["blobs", "uploads", ..]
        | ["tags", "list"]
        | ["referrers", _] => Action::Refused,
        _ => return None,
    })
}

/// One query parameter, percent-decoded; an undecodable value reads as
/// empty (which no check accepts).
pub fn query_param(query: &str, key: &str) -> Option<String> {
    query.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (k == key).then(|| form_decode(v).unwrap_or_default())
    })
}

impl Format for Oci {
    fn name(&self) -> &'static str {
        "oci"
    }

    fn credential_sources(&self) -> &'static [CredentialSource] {
        &[CredentialSource::Bearer]
    }

    fn authentication(&self) -> Authentication {
        Authentication::RegistryJwt
    }

    fn names_namespace(&self) -> bool {
        true
    }

    fn namespace_in(&self, rest: &[&str]) -> Option<String> {
        match classify(&Method::GET, rest, None) {
            Endpoint::Repository { name, .. } => Some(name),
            _ => None,
        }
    }

    fn access(&self, method: &Method, rest: &[&str], query: Option<&str>) -> Access {
        match classify(method, rest, query) {
            Endpoint::Base => Access::Read,
            Endpoint::Repository {
                action: Action::Pull,
                ..
            } => Access::Read,
            Endpoint::Repository {
                action: Action::Push,
                ..
            } => Access::Write,
            _ => Access::Refused,
        }
    }

    fn scopes_for(&self, access: Access) -> ScopeSet {
        let mut set = ScopeSet::default();
        match access {
            Access::Read => set.insert(Scope::ReadRegistry),
            Access::Write => set.insert(Scope::WriteRegistry),
            Access::ReadForWrite => {
                set.insert(Scope::ReadRegistry);
                set.insert(Scope::WriteRegistry);
            }
            Access::Refused => {}
        }
        set
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn repo(name: &str, action: Action) -> Endpoint {
        Endpoint::Repository {
            name: name.into(),
            action,
            mount_from: None,
        }
    }

    #[test]
    fn requests_map_to_repository_and_action() {
        let cases: &[(Method, &[&str], Endpoint)] = &[
            (Method::GET, &[], Endpoint::Base),
            (Method::GET, &["_catalog"], Endpoint::Catalog),
            (
                Method::GET,
                &["acme", "web", "app", "manifests", "v1"],
                repo("acme/web/app", Action::Pull),
            ),
            (
                Method::HEAD,
                &["acme", "app", "blobs", "sha256:ab"],
                repo("acme/app", Action::Pull),
            ),
            (
                Method::PUT,
                &["acme", "app", "manifests", "v1"],
                repo("acme/app", Action::Push),
            ),
            (
                Method::POST,
                &["acme", "app", "blobs", "uploads"],
                repo("acme/app", Action::Push),
            ),
            (
                Method::PATCH,
                &["acme", "app", "blobs", "uploads", "u-1"],
                repo("acme/app", Action::Push),
            ),
            (
                Method::PUT,
                &["acme", "app", "blobs", "uploads", "u-1"],
                repo("acme/app", Action::Push),
            ),
            (
                Method::DELETE,
                &["acme", "app", "blobs", "uploads", "u-1"],
                repo("acme/app", Action::Push),
            ),
            (
                Method::GET,
                &["acme", "app", "tags", "list"],
                repo("acme/app", Action::Pull),
            ),
            (
                Method::GET,
                &["acme", "app", "referrers", "sha256:ab"],
                repo("acme/app", Action::Pull),
            ),
            (
                Method::DELETE,
                &["acme", "app", "manifests", "sha256:ab"],
                repo("acme/app", Action::Delete),
            ),
            (
                Method::DELETE,
                &["acme", "app", "blobs", "sha256:ab"],
                repo("acme/app", Action::Delete),
            ),
            (
                Method::POST,
                &["acme", "app", "manifests", "v1"],
                repo("acme/app", Action::Refused),
            ),
            (
                Method::GET,
                &["acme", "blobs", "blobs", "sha256:ab"],
                repo("acme/blobs", Action::Pull),
            ),
            (Method::GET, &["Acme", "manifests", "v1"], Endpoint::Invalid),
            (Method::GET, &["manifests", "v1"], Endpoint::Invalid),
            (Method::GET, &["acme", "app"], Endpoint::Invalid),
            (
                Method::GET,
                &["acme", "app", "manifests"],
                Endpoint::Invalid,
            ),
            (
                Method::GET,
                &["acme", "app", "manifests", "blobs"],
                repo("acme/app", Action::Pull),
            ),
        ];
        for (method, rest, want) in cases {
            assert_eq!(&classify(method, rest, None), want, "{method} {rest:?}");
        }
    }

    #[test]
    fn mounts_name_their_source() {
        let got = classify(
            &Method::POST,
            &["acme", "web", "blobs", "uploads"],
            Some("mount=sha256%3Aab&from=acme%2Fother"),
        );
        assert_eq!(
            got,
            Endpoint::Repository {
                name: "acme/web".into(),
                action: Action::Push,
                mount_from: Some("acme/other".into())
            }
        );
    }

    #[test]
    fn scopes_are_the_registry_ones() {
        assert!(Oci.scopes_for(Access::Read).contains(Scope::ReadRegistry));
        assert!(Oci.scopes_for(Access::Write).contains(Scope::WriteRegistry));
        assert!(!Oci
            .scopes_for(Access::Read)
            .contains(Scope::ReadPackageRegistry));
    }
}
