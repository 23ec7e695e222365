#![allow(clippy::unwrap_used, clippy::panic)]

//! The config fixtures in `fixtures/` are shared with the Envoy `--mode validate` tests
//! (tests/tests/envoy_configs.rs): every good one parses, every bad one fails with the
//! message in its `.err` file.

use std::path::Path;
use tether_core::body_limit::BodyLimitPolicy;

fn fixtures(kind: &str, ext: &str) -> Vec<std::path::PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures").join(kind);
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == ext))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no fixtures in {}", dir.display());
    files
}

#[test]
fn good_fixtures_parse() {
    for path in fixtures("good", "json") {
        let json = std::fs::read(&path).unwrap();
        if let Err(e) = BodyLimitPolicy::from_json(&json) {
            panic!("{}: {e}", path.display());
        }
    }
}

#[test]
fn bad_fixtures_fail_with_their_message() {
    for path in fixtures("bad", "json") {
        let json = std::fs::read(&path).unwrap();
        let expected = std::fs::read_to_string(path.with_extension("err"))
            .unwrap_or_else(|e| panic!("{}: every bad fixture needs a .err file: {e}", path.display()));
        let err = BodyLimitPolicy::from_json(&json).err().unwrap_or_else(|| panic!("{} parsed", path.display()));
        assert!(
            err.to_string().contains(expected.trim()),
            "{}:\n  got:  {err}\n  want: {}",
            path.display(),
            expected.trim()
        );
    }
}
