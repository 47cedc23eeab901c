//! JWT validation: arbitrary tokens are refused without a panic; nothing
//! that is not signed by the key passes.
#![no_main]
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use tokengate::oci::KeyRing;

fn keys() -> &'static KeyRing {
    static KEYS: OnceLock<KeyRing> = OnceLock::new();
    KEYS.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("tokengate-fuzz-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let key = dir.join("k.pem");
        std::fs::write(&key, include_str!("../../src/oci/testdata/ec-p256.pem")).unwrap();
        KeyRing::load(&key, &[]).unwrap()
    })
}

fuzz_target!(|data: &[u8]| {
    let Ok(jwt) = std::str::from_utf8(data) else {
        return;
    };
    assert!(
        keys()
            .verify(jwt, "tokengate", "container_registry")
            .is_err(),
        "{jwt:?} verified"
    );
});
