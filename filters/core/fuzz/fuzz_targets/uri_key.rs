//! URI key extraction (HAProxy `balance uri depth/len/whole/path-only`) on any request target.
#![no_main]
use libfuzzer_sys::fuzz_target;
use tether_core::uri_hash::{uri_key, KeyRule};

fuzz_target!(|data: &[u8]| {
    let Some((&flags, target)) = data.split_first() else { return };
    let rule = KeyRule {
        depth: usize::from(flags & 0x07),
        len: usize::from((flags >> 3) & 0x03) * 16,
        whole: flags & 0x20 != 0,
        path_only: flags & 0x40 != 0,
    };
    let key = uri_key(target, rule);
    assert!(key.len() <= target.len());
});
