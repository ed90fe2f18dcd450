//! The passthrough listener's ClientHello reader on arbitrary bytes: never
//! panic, and a verdict on a prefix is never contradicted by more bytes
//! (an answer on `data[..n]` is the answer on `data`).
#![no_main]
use libfuzzer_sys::fuzz_target;
use router_user::proxy::sni::{Hello, client_hello};

fuzz_target!(|data: &[u8]| {
    let whole = client_hello(data);
    if let Some(n) = (1..data.len()).find(|n| client_hello(&data[..*n]) != Hello::NeedMore) {
        assert_eq!(client_hello(&data[..n]), whole, "prefix of {n} bytes");
    }
});
