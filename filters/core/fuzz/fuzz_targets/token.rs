//! Signed affinity tokens: arbitrary bytes never verify and never panic.
#![no_main]
use libfuzzer_sys::fuzz_target;
use tether_core::token::{verify, Key};

fuzz_target!(|data: &[u8]| {
    let Ok(key) = Key::new(b"fuzz-key-0123456789abcdef") else { return };
    assert!(verify(&[key], "SERVERID", data).is_none(), "an unsigned token verified");
});
