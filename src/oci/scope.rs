//! The Docker Registry v2 token `scope` grammar and what a deploy token may
//! be granted of it: `repository:acme/web/app:pull,push`,
//! `repository(plugin):name:pull`, `registry:catalog:*`.

use serde::{Deserialize, Serialize};

use crate::token::{covers, Scope as TokenScope, TokenRecord};

/// One requested (or granted) resource and its actions.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Grant {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub class: Option<String>,
    pub name: String,
    pub actions: Vec<String>,
}

impl Grant {
    pub fn allows(&self, repository: &str, action: &str) -> bool {
        self.kind == "repository"
            && self.name == repository
            && self.actions.iter().any(|a| a == action)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "malformed scope {0:?}: expected type:name:actions, e.g. repository:acme/web/app:pull,push"
)]
pub struct ScopeError(pub String);

/// Parses one scope string.
pub fn parse(scope: &str) -> Result<Grant, ScopeError> {
    let bad = || ScopeError(scope.chars().take(200).collect());
    let (resource, actions) = scope.rsplit_once(':').ok_or_else(bad)?;
    let (kind, name) = resource.split_once(':').ok_or_else(bad)?;
    let (kind, class) = match kind.split_once('(') {
        Some((kind, class)) => {
            let class = class.strip_suffix(')').ok_or_else(bad)?;
            (kind, Some(class))
        }
        None => (kind, None),
    };
    let word = |s: &str| {
        !s.is_empty()
            && s.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
    };
    if !word(kind) || class.is_some_and(|c| !word(c)) || name.is_empty() || name.len() > 255 {
        return Err(bad());
    }
    if name.bytes().any(|b| b.is_ascii_control() || b == b' ') {
        return Err(bad());
    }
    let actions: Vec<String> = actions.split(',').map(str::to_string).collect();
    if actions
        .iter()
        .any(|a| a.is_empty() || !(word(a) || a == "*"))
    {
        return Err(bad());
    }
    Ok(Grant {
        kind: kind.to_string(),
        class: class.map(str::to_string),
        name: name.to_string(),
        actions,
    })
}

/// Parses every `scope` parameter; each may hold several scopes separated by spaces.
pub fn parse_all<'a>(params: impl IntoIterator<Item = &'a str>) -> Result<Vec<Grant>, ScopeError> {
    params
        .into_iter()
        .flat_map(|p| p.split(' ').filter(|s| !s.is_empty()))
        .map(parse)
        .collect()
}

/// Whether `name` is a valid repository name (distribution's grammar:
/// lowercase alphanumeric components separated by `.`, `_`, `__` or `-`,
/// joined by `/`).
pub fn valid_repository(name: &str) -> bool {
    name.len() <= 255
        && name.split('/').all(|component| {
            let b = component.as_bytes();
            !b.is_empty()
                && b[0].is_ascii_alphanumeric()
                && b[b.len() - 1].is_ascii_alphanumeric()
                && b.iter().all(|c| {
                    c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, b'.' | b'_' | b'-')
                })
                && !component.contains("..")
        })
}

/// What a deploy token is granted of what it asked for: only repositories
/// its owner covers, `pull` with `read_registry`, `push` with
/// `write_registry`, `delete` with `write_registry` when `allow_delete`.
/// Everything else (other resource types, `registry:catalog:*`, unknown
/// actions) is dropped; partial access is not an error.
pub fn intersect(asked: &[Grant], token: &TokenRecord, allow_delete: bool) -> Vec<Grant> {
    let mut granted: Vec<Grant> = Vec::new();
    for want in asked {
        if want.kind != "repository"
            || !valid_repository(&want.name)
            || !covers(&token.owner_path, &want.name)
        {
            continue;
        }
        let may = |action: &str| match action {
            "pull" => token.scopes.contains(TokenScope::ReadRegistry),
            "push" => token.scopes.contains(TokenScope::WriteRegistry),
            "delete" => allow_delete && token.scopes.contains(TokenScope::WriteRegistry),
            _ => false,
        };
        let wanted: Vec<&str> = if want.actions.iter().any(|a| a == "*") {
            vec!["pull", "push", "delete"]
        } else {
            want.actions.iter().map(String::as_str).collect()
        };
        let actions: Vec<String> = wanted
            .into_iter()
            .filter(|a| may(a))
            .map(str::to_string)
            .collect();
        if actions.is_empty() {
            continue;
        }
        match granted
            .iter_mut()
            .find(|g| g.name == want.name && g.class == want.class)
        {
            Some(existing) => {
                for a in actions {
                    if !existing.actions.contains(&a) {
                        existing.actions.push(a);
                    }
                }
            }
            None => granted.push(Grant {
                kind: "repository".into(),
                class: want.class.clone(),
                name: want.name.clone(),
                actions,
            }),
        }
    }
    granted
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::token::{OwnerKind, ScopeSet};

    fn token(owner: &str, scopes: &str) -> TokenRecord {
        TokenRecord {
            id: 1,
            name: "ci".into(),
            username: "bot".into(),
            owner_kind: OwnerKind::Project,
            owner_path: owner.into(),
            scopes: ScopeSet::parse_list(scopes).unwrap(),
            expires_at: None,
            revoked: false,
            created_at: chrono::Utc::now(),
            last_used_at: None,
        }
    }

    #[test]
    fn the_grammar() {
        let g = parse("repository:acme/web/app:pull,push").unwrap();
        assert_eq!(
            (g.kind.as_str(), g.name.as_str()),
            ("repository", "acme/web/app")
        );
        assert_eq!(g.actions, ["pull", "push"]);
        let p = parse("repository(plugin):acme/x:pull").unwrap();
        assert_eq!(p.class.as_deref(), Some("plugin"));
        let host = parse("repository:localhost:5000/acme/app:pull").unwrap();
        assert_eq!(host.name, "localhost:5000/acme/app");
        assert_eq!(parse("registry:catalog:*").unwrap().actions, ["*"]);
        let many = parse_all([
            "repository:a/b:pull repository:a/c:push",
            "repository:a/d:pull",
        ])
        .unwrap();
        assert_eq!(many.len(), 3);
        for bad in [
            "",
            "repository",
            "repository:acme",
            "repository::pull",
            "repository:acme:",
            "repository:acme:pull,,push",
            "Repository:acme:pull",
            "repository(plugin:acme:pull",
            "repository:ac me:pull",
            "repository:acme:pu$ll",
        ] {
            assert!(parse(bad).is_err(), "{bad:?}");
        }
        assert!(parse_all(["repository:a/b:pull bad"]).is_err());
    }

    #[test]
    fn repository_names() {
        for ok in ["acme", "acme/web/app", "a.b_c-d/e__f", "0x/y9"] {
            assert!(valid_repository(ok), "{ok}");
        }
        for bad in [
            "",
            "Acme",
            "acme/",
            "/acme",
            "acme//x",
            "acme/-x",
            "acme/x.",
            "acme/../x",
            "a:b",
        ] {
            assert!(!valid_repository(bad), "{bad}");
        }
    }

    #[test]
    fn the_intersection() {
        let asked = parse_all([
            "repository:acme/web/app:pull,push",
            "repository:acme/web/app:delete",
            "repository:acme/other/app:pull",
            "repository:acme/webx/app:pull",
            "registry:catalog:*",
            "repository:acme/web/lib:*",
        ])
        .unwrap();
        let read_only = intersect(&asked, &token("acme/web", "read_registry"), true);
        assert_eq!(
            read_only,
            vec![
                Grant {
                    kind: "repository".into(),
                    class: None,
                    name: "acme/web/app".into(),
                    actions: vec!["pull".into()]
                },
                Grant {
                    kind: "repository".into(),
                    class: None,
                    name: "acme/web/lib".into(),
                    actions: vec!["pull".into()]
                },
            ]
        );
        let both = intersect(
            &asked,
            &token("acme/web", "read_registry,write_registry"),
            false,
        );
        assert_eq!(
            both[0].actions,
            ["pull", "push"],
            "delete needs allow_delete"
        );
        let with_delete = intersect(
            &asked,
            &token("acme/web", "read_registry,write_registry"),
            true,
        );
        assert_eq!(with_delete[0].actions, ["pull", "push", "delete"]);
        assert!(intersect(&asked, &token("acme/web", "read_package_registry"), true).is_empty());
        let group = intersect(&asked, &token("acme", "read_registry"), false);
        assert_eq!(
            group.len(),
            4,
            "a group token covers every project: {group:?}"
        );
        assert!(
            group.iter().all(|g| g.kind == "repository"),
            "never the catalog"
        );
    }
}
