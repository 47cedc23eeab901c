//! OCI / Docker registry (distribution API v2). Clients authenticate with
//! the registry token flow: tokengate's token endpoint turns a deploy token
//! into a signed JWT, which the client then sends as `Bearer` on `/v2/`.
//! The namespace of a request is its repository name, read from the path.

use http::Method;

use super::{is_read, Access, Authentication, CredentialSource, Format};
use crate::oci::scope::valid_repository;
use crate::route::normalize::{form_decode, lenient_query_pairs};
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
        let mount = match (rest[at..] == ["blobs", "uploads"], query) {
            (true, Some(query)) => mount_source(query),
            _ => Ok(None),
        };
        return match mount {
            Ok(mount_from) => Endpoint::Repository {
                name,
                action,
                mount_from,
            },
            Err(Ambiguous) => Endpoint::Repository {
                name,
                action: Action::Refused,
                mount_from: None,
            },
        };
    }
    Endpoint::Invalid
}

fn action(method: &Method, tail: &[&str]) -> Option<Action> {
    let read = is_read(method);
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

/// A blob-mount query that a registry could read differently from the proxy.
#[derive(Debug)]
struct Ambiguous;

/// The repository a blob upload asks to mount from (`from=`), percent-decoded
/// (an undecodable value reads as empty, which no check accepts). A `mount`
/// without `from` reads as empty too: the spec lets a registry mount the
/// blob from any repository it holds then, and it holds them all for the
/// proxy's credentials. A registry reads the query with a form parser that
/// decodes names too (Go's `FormValue`: `fr%6Fm` is `from`) and takes the
/// first of repeated keys, so a `from` or `mount` spelled with escapes or
/// `from` given twice is [`Ambiguous`] and refused rather than guessed at.
/// So is a mount query holding a `;`: Go before 1.17 (distribution 2.7's)
/// split pairs on it as on `&`, later Go drops the pair it is in.
fn mount_source(query: &str) -> Result<Option<String>, Ambiguous> {
    let mut from = None;
    let mut mount = false;
    for (raw, value) in lenient_query_pairs(query) {
        let Some(key) = form_decode(raw) else {
            continue; // a name the registry cannot decode either
        };
        if !matches!(key.as_str(), "from" | "mount") {
            continue;
        }
        if key != raw || (key == "from" && from.is_some()) || query.contains(';') {
            return Err(Ambiguous);
        }
        if key == "from" {
            from = Some(form_decode(value).unwrap_or_default());
        } else {
            mount = true;
        }
    }
    Ok(if mount {
        Some(from.unwrap_or_default())
    } else {
        from
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
            Endpoint::Base if is_read(method) => Access::Read,
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
        // Without `from` the registry may take the blob from anywhere: an
        // empty source, which no check accepts.
        let anonymous = classify(
            &Method::POST,
            &["acme", "web", "blobs", "uploads"],
            Some("mount=sha256%3Aab"),
        );
        assert_eq!(
            anonymous,
            Endpoint::Repository {
                name: "acme/web".into(),
                action: Action::Push,
                mount_from: Some(String::new())
            }
        );
    }

    #[test]
    fn a_mount_the_registry_could_read_differently_is_refused() {
        let upload = |query| {
            classify(
                &Method::POST,
                &["acme", "web", "blobs", "uploads"],
                Some(query),
            )
        };
        for query in [
            "mount=sha256:ab&fr%6Fm=acme%2Fsecret",
            "mount=sha256:ab&%66rom=acme/secret",
            "m%6Funt=sha256:ab&from=acme/web",
            "mount=sha256:ab&from=acme/web&from=acme/secret",
            "x=1;from=acme/secret&mount=sha256:ab&from=acme/web",
            "mount=sha256:ab;from=acme/secret",
            "mount=sha256:ab&from=acme/web;x=1",
        ] {
            assert_eq!(upload(query), repo("acme/web", Action::Refused), "{query}");
        }
        // Other names may be escaped; an undecodable name is no `from`.
        let plain = upload("fr%zzom=acme/secret&x%20y=1");
        assert_eq!(plain, repo("acme/web", Action::Push));
    }

    #[test]
    fn the_version_check_is_a_read_only() {
        assert_eq!(Oci.access(&Method::GET, &[], None), Access::Read);
        assert_eq!(Oci.access(&Method::HEAD, &[], None), Access::Read);
        for method in [Method::TRACE, Method::DELETE, Method::POST, Method::OPTIONS] {
            assert_eq!(Oci.access(&method, &[], None), Access::Refused, "{method}");
        }
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
