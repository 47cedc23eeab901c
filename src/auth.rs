//! The decision: pure, synchronous, no I/O. Everything it needs — the token
//! record (or its absence), the presented username, the request's namespace,
//! the access it needs and the time — is handed in, so every branch is a
//! table row in the tests below.

use chrono::{DateTime, Utc};

use crate::format::Access;
use crate::token::{covers, ScopeSet, TokenRecord};

/// The scopes a denied request needed, any one of which would have done.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NeededScopes(pub ScopeSet);

impl std::fmt::Display for NeededScopes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0.names().join(" or "))
    }
}

/// A request as the decision sees it.
#[derive(Debug, Clone, Copy)]
pub struct Ask<'a> {
    /// The Basic username, when Basic credentials were used.
    pub username: Option<&'a str>,
    pub namespace: &'a str,
    pub access: Access,
    /// The scopes of which the access needs one; empty when it is refused outright.
    pub scopes: ScopeSet,
}

/// Why a request was denied. The first group answers 401, the second 403.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Denial {
    #[error("invalid deploy token")]
    UnknownToken,
    #[error("deploy token has been revoked")]
    Revoked,
    #[error("deploy token has expired")]
    Expired,
    #[error("username does not match the deploy token")]
    UsernameMismatch,
    #[error("this request is not allowed with a deploy token")]
    AccessRefused,
    #[error("deploy token needs the {0} scope for this request")]
    MissingScope(NeededScopes),
    #[error("deploy token does not cover namespace {0}")]
    NamespaceNotCovered(String),
}

impl Denial {
    /// Whether the credential itself is bad (401) rather than insufficient (403).
    pub fn is_unauthenticated(&self) -> bool {
        matches!(
            self,
            Denial::UnknownToken | Denial::Revoked | Denial::Expired | Denial::UsernameMismatch
        )
    }
}

/// Accepts the credential iff the token exists, is live and the username
/// (when one was presented) is the token's: who, not what.
pub fn authenticate<'t>(
    token: Option<&'t TokenRecord>,
    username: Option<&str>,
    now: DateTime<Utc>,
) -> Result<&'t TokenRecord, Denial> {
    let token = token.ok_or(Denial::UnknownToken)?;
    if token.revoked {
        return Err(Denial::Revoked);
    }
    if token.is_expired(now) {
        return Err(Denial::Expired);
    }
    if username.is_some_and(|u| u != token.username) {
        return Err(Denial::UsernameMismatch);
    }
    Ok(token)
}

/// Allows the request iff the token authenticates, the scope is held and
/// the owner covers the namespace.
pub fn decide(
    token: Option<&TokenRecord>,
    ask: &Ask<'_>,
    now: DateTime<Utc>,
) -> Result<(), Denial> {
    let token = authenticate(token, ask.username, now)?;
    if ask.access == Access::Refused || ask.scopes.is_empty() {
        return Err(Denial::AccessRefused);
    }
    if !ask.scopes.iter().any(|s| token.scopes.contains(s)) {
        return Err(Denial::MissingScope(NeededScopes(ask.scopes)));
    }
    if !covers(&token.owner_path, ask.namespace) {
        return Err(Denial::NamespaceNotCovered(ask.namespace.to_string()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::token::{OwnerKind, Scope};
    use chrono::Duration;

    fn now() -> DateTime<Utc> {
        DateTime::parse_from_rfc3339("2026-06-01T12:00:00Z")
            .unwrap()
            .with_timezone(&Utc)
    }

    fn token(owner: &str, scopes: &str) -> TokenRecord {
        TokenRecord {
            id: 7,
            name: "ci".into(),
            username: "tokengate+deploy-token-7".into(),
            owner_kind: if owner.contains('/') {
                OwnerKind::Project
            } else {
                OwnerKind::Group
            },
            owner_path: owner.into(),
            scopes: ScopeSet::parse_list(scopes).unwrap(),
            expires_at: None,
            revoked: false,
            created_at: now() - Duration::days(1),
            last_used_at: None,
        }
    }

    fn ask<'a>(namespace: &'a str, access: Access, scopes: &[Scope]) -> Ask<'a> {
        let mut set = ScopeSet::default();
        scopes.iter().for_each(|s| set.insert(*s));
        Ask {
            username: None,
            namespace,
            access,
            scopes: set,
        }
    }

    fn missing(scopes: &[Scope]) -> Result<(), Denial> {
        let mut set = ScopeSet::default();
        scopes.iter().for_each(|s| set.insert(*s));
        Err(Denial::MissingScope(NeededScopes(set)))
    }

    const R: &[Scope] = &[Scope::ReadPackageRegistry];
    const W: &[Scope] = &[Scope::WritePackageRegistry];
    const RW: &[Scope] = &[Scope::ReadPackageRegistry, Scope::WritePackageRegistry];

    #[test]
    fn scopes_by_owner_coverage() {
        use Access::*;
        // owner, scopes, namespace, access, scopes needed, expected
        type Case<'a> = (
            &'a str,
            &'a str,
            &'a str,
            Access,
            &'a [Scope],
            Result<(), Denial>,
        );
        let cases: &[Case] = &[
            // owner, scopes, namespace, access, scope, expected
            (
                "acme/web",
                "read_package_registry",
                "acme/web",
                Read,
                R,
                Ok(()),
            ),
            (
                "acme/web",
                "read_package_registry",
                "acme/web",
                Write,
                W,
                missing(W),
            ),
            (
                "acme/web",
                "write_package_registry",
                "acme/web",
                Write,
                W,
                Ok(()),
            ),
            (
                "acme/web",
                "write_package_registry",
                "acme/web",
                Read,
                R,
                missing(R),
            ),
            ("acme", "read_package_registry", "acme/web", Read, R, Ok(())),
            (
                "acme",
                "read_package_registry",
                "acme/web/deep/er",
                Read,
                R,
                Ok(()),
            ),
            (
                "acme/web",
                "read_package_registry",
                "acme/api",
                Read,
                R,
                Err(Denial::NamespaceNotCovered("acme/api".into())),
            ),
            (
                "acme/web",
                "read_package_registry",
                "acme",
                Read,
                R,
                Err(Denial::NamespaceNotCovered("acme".into())),
            ),
            (
                "acme",
                "read_package_registry",
                "acme-other/web",
                Read,
                R,
                Err(Denial::NamespaceNotCovered("acme-other/web".into())),
            ),
            ("acme/web", "read_registry", "acme/web", Read, R, missing(R)),
            (
                "acme/web",
                "read_registry,write_registry",
                "acme/web/img",
                Write,
                &[Scope::WriteRegistry],
                Ok(()),
            ),
            (
                "acme/web",
                "read_repository",
                "acme/web",
                Read,
                &[Scope::ReadRepository],
                Ok(()),
            ),
            (
                "acme/web",
                "read_package_registry,write_package_registry",
                "acme/web",
                Refused,
                &[],
                Err(Denial::AccessRefused),
            ),
            (
                "acme/web",
                "write_package_registry",
                "acme/web",
                ReadForWrite,
                RW,
                Ok(()),
            ),
            (
                "acme/web",
                "read_package_registry",
                "acme/web",
                ReadForWrite,
                RW,
                Ok(()),
            ),
            (
                "acme/web",
                "read_registry",
                "acme/web",
                ReadForWrite,
                RW,
                missing(RW),
            ),
        ];
        for (owner, scopes, ns, access, scope, want) in cases {
            let t = token(owner, scopes);
            let got = decide(Some(&t), &ask(ns, *access, scope), now());
            assert_eq!(&got, want, "{owner} {scopes} {ns} {access:?}");
        }
    }

    #[test]
    fn lifecycle_and_identity() {
        let a = ask("acme/web", Access::Read, R);
        assert_eq!(decide(None, &a, now()), Err(Denial::UnknownToken));

        let mut t = token("acme/web", "read_package_registry");
        t.revoked = true;
        assert_eq!(decide(Some(&t), &a, now()), Err(Denial::Revoked));

        let mut t = token("acme/web", "read_package_registry");
        t.expires_at = Some(now());
        assert_eq!(decide(Some(&t), &a, now()), Err(Denial::Expired));
        t.expires_at = Some(now() + Duration::seconds(1));
        assert_eq!(decide(Some(&t), &a, now()), Ok(()));

        let t = token("acme/web", "read_package_registry");
        let good = Ask {
            username: Some("tokengate+deploy-token-7"),
            ..a
        };
        assert_eq!(decide(Some(&t), &good, now()), Ok(()));
        let bad = Ask {
            username: Some("tokengate+deploy-token-8"),
            ..a
        };
        assert_eq!(decide(Some(&t), &bad, now()), Err(Denial::UsernameMismatch));
        let case = Ask {
            username: Some("Tokengate+deploy-token-7"),
            ..a
        };
        assert_eq!(
            decide(Some(&t), &case, now()),
            Err(Denial::UsernameMismatch)
        );
    }

    #[test]
    fn credential_denials_come_before_scope_denials() {
        let mut t = token("other", "read_registry");
        t.revoked = true;
        let a = ask("acme/web", Access::Write, W);
        let d = decide(Some(&t), &a, now()).unwrap_err();
        assert_eq!(d, Denial::Revoked);
        assert!(d.is_unauthenticated());
        assert!(!missing(R).unwrap_err().is_unauthenticated());
        assert_eq!(
            missing(RW).unwrap_err().to_string(),
            "deploy token needs the read_package_registry or write_package_registry scope for this request"
        );
    }
}
