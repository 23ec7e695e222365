//! Cookie headers as clients send them: parse, look up, remove ours (indirect).
#![no_main]
use libfuzzer_sys::fuzz_target;
use tether_core::cookie;

fuzz_target!(|data: &[u8]| {
    let _ = cookie::pairs(data).count();
    let _ = cookie::values(data, "SERVERID").count();
    if let Some(rest) = cookie::without(data, "SERVERID") {
        assert!(!cookie::contains(&rest, "SERVERID"), "indirect left our cookie in place");
    }
    let _ = cookie::set_cookie_name(data);
    let _ = cookie::private_cache_control(Some(data));
});
