//! Filter configuration as Envoy hands it over: JSON text or protobuf Struct bytes, for every
//! filter. A bad configuration must be an error naming the field, never a panic.
#![no_main]
use libfuzzer_sys::fuzz_target;
use tether_core::{affinity, body_limit, forwarded, path_pin, uri_hash};

fuzz_target!(|data: &[u8]| {
    let _ = body_limit::BodyLimitPolicy::from_json(data);
    let _ = forwarded::ForwardedPolicy::from_json(data);
    let _ = path_pin::PathPinPolicy::from_json(data);
    let _ = uri_hash::UriHashPolicy::from_json(data);
    let _ = affinity::AffinityPolicy::from_json(data, |_| Some("fuzz-key-0123456789abcdef".to_string()));
});
