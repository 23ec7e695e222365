//! Sizes ("50M", "32MB") and durations ("24h", "1h30m") from configuration text.
#![no_main]
use libfuzzer_sys::fuzz_target;
use tether_core::duration::HumanDuration;
use tether_core::size::ByteSize;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = ByteSize::parse(text);
        let _ = HumanDuration::parse(text);
    }
});
