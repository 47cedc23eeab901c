//! The registry scope grammar (`repository:acme/web/app:pull,push`, space- or
//! parameter-separated) and the grant: whatever is asked, a group token of
//! `acme` with read and write registry scopes is granted only valid
//! repositories under `acme`, and only `pull` and `push`.
#![no_main]
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use tokengate::oci::scope;
use tokengate::token::{OwnerKind, ScopeSet, TokenRecord};

fn token() -> &'static TokenRecord {
    static TOKEN: OnceLock<TokenRecord> = OnceLock::new();
    TOKEN.get_or_init(|| TokenRecord {
        id: 1,
        name: "fuzz".into(),
        username: "fuzz".into(),
        owner_kind: OwnerKind::Group,
        owner_path: "acme".into(),
        scopes: ScopeSet::parse_list("read_registry,write_registry").unwrap(),
        expires_at: None,
        revoked: false,
        created_at: chrono::Utc::now(),
        last_used_at: None,
    })
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(asked) = scope::parse_all(text.split('&')) else {
        return;
    };
    for grant in scope::intersect(&asked, token(), false) {
        assert_eq!(grant.kind, "repository");
        assert!(scope::valid_repository(&grant.name), "{:?}", grant.name);
        assert!(
            grant.name == "acme" || grant.name.starts_with("acme/"),
            "{:?}",
            grant.name
        );
        assert!(
            grant.actions.iter().all(|a| a == "pull" || a == "push"),
            "{:?}",
            grant.actions
        );
    }
});
