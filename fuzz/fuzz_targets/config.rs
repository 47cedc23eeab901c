//! The config parser: any text is a config or an error naming a line, never a panic.
#![no_main]
use libfuzzer_sys::fuzz_target;
use tokengate::config::Config;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Err(e) = Config::parse("fuzz.toml", text) {
        assert!(!e.to_string().is_empty());
    }
});
