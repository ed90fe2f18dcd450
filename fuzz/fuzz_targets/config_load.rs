//! The config loader and compiler on arbitrary text: never panic, never
//! hang; a rejection always names the file.
#![no_main]
use libfuzzer_sys::fuzz_target;
use router_user::{compile, config};

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    match config::load_str("fuzz.yaml", &text, &Default::default()) {
        Ok(v) => {
            if let Err(e) = compile::compile(&v, &Default::default()) {
                assert!(!e.errors.is_empty());
            }
        }
        Err(e) => {
            assert!(!e.errors.is_empty());
            for d in &e.errors {
                assert!(d.file == "fuzz.yaml" || d.file == "<flags>", "{d:?}");
            }
        }
    }
});
