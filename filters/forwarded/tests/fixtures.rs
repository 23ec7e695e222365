//! The config fixtures in `fixtures/` (shared with the Envoy `--mode validate` tests in
//! tests/tests/envoy_configs.rs): every good one parses, every bad one fails with the message
//! in its `.err` file.

use std::path::Path;
use tether_core::forwarded::ForwardedPolicy;

#[test]
fn fixtures_parse_or_fail_as_documented() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures");
    match tether_core::fixtures::check(&dir, |json| ForwardedPolicy::from_json(json).map(drop)) {
        Ok(checked) => assert!(checked >= 2, "only {checked} fixtures"),
        Err(problems) => panic!("{problems}"),
    }
}
