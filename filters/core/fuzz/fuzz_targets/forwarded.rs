//! X-Forwarded-For chains as clients and proxies send them (several lines, IPv6, garbage).
#![no_main]
use libfuzzer_sys::fuzz_target;
use tether_core::forwarded::parse_xff;

fuzz_target!(|data: &[u8]| {
    let lines: Vec<&[u8]> = data.split(|&b| b == b'\n').collect();
    if let Some(chain) = parse_xff(&lines) {
        assert!(chain.len() <= data.len(), "more addresses than bytes");
    }
});
