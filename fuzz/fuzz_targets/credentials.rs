//! Credential parsing for every format: arbitrary header values never panic,
//! and whatever is accepted is one credential with a non-empty secret.
#![no_main]
use http::{HeaderMap, HeaderName, HeaderValue};
use libfuzzer_sys::fuzz_target;
use tokengate::format;

const HEADERS: [&str; 5] = [
    "authorization",
    "deploy-token",
    "x-nuget-apikey",
    "private-token",
    "job-token",
];

fuzz_target!(|data: &[u8]| {
    let mut headers = HeaderMap::new();
    for (i, chunk) in data.split(|b| *b == b'\n').enumerate().take(6) {
        if let Ok(value) = HeaderValue::from_bytes(chunk) {
            let name = HeaderName::from_static(HEADERS[(i + chunk.len()) % HEADERS.len()]);
            headers.append(name, value);
        }
    }
    for name in format::NAMES {
        let f = format::by_name(name).unwrap();
        if let Ok(Some(presented)) = format::credentials(&*f, &headers) {
            assert!(
                !presented.secret.is_empty(),
                "{name}: empty secret accepted"
            );
        }
    }
    let _ = format::basic_credentials(&headers);
});
