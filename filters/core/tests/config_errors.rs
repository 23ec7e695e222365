//! Every configuration error message, as an operator sees it, kept in a golden file.
//!
//! Each filter's accepted fixtures are mutated at every node (each field and array element
//! replaced by values of the wrong kind, and an unknown field added to every object); what
//! each policy answers (the error with its path, or "accepted") is compared with
//! `tests/config_errors.txt`. How configuration is read can change (it did: issue 14 replaced
//! the deserializer to cut the modules' size); what operators are told may not, silently.
//! After an intended change of a message: `UPDATE_GOLDEN=1 cargo test -p tether-core --test
//! config_errors`, and read the diff.
#![cfg(not(target_arch = "wasm32"))]
// Test code: a failed expect is a failed test, as in #[test] functions.
#![allow(clippy::expect_used, clippy::panic)]

use serde_json::{json, Value};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use tether_core::affinity::AffinityPolicy;
use tether_core::body_limit::BodyLimitPolicy;
use tether_core::forwarded::ForwardedPolicy;
use tether_core::path_pin::PathPinPolicy;
use tether_core::uri_hash::UriHashPolicy;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// What a filter's policy answers for one configuration.
fn answer(filter: &str, json: &[u8]) -> String {
    let result = match filter {
        "affinity" => AffinityPolicy::from_json(json, |_| Some("key-from-env-0123456789abcdef".into())).map(drop),
        "body-limit" => BodyLimitPolicy::from_json(json).map(drop),
        "forwarded" => ForwardedPolicy::from_json(json).map(drop),
        "path-pin" => PathPinPolicy::from_json(json).map(drop),
        "uri-hash" => UriHashPolicy::from_json(json).map(drop),
        other => panic!("no filter {other}"),
    };
    match result {
        Ok(()) => "accepted".into(),
        Err(e) => e.to_string(),
    }
}

/// Every node of `value` with its path (`a.b[2].c`), the root first.
fn nodes(value: &Value, path: String, out: &mut Vec<String>) {
    out.push(path.clone());
    match value {
        Value::Object(map) => {
            for (k, v) in map {
                let p = if path.is_empty() { k.clone() } else { format!("{path}.{k}") };
                nodes(v, p, out);
            }
        }
        Value::Array(items) => {
            for (i, v) in items.iter().enumerate() {
                nodes(v, format!("{path}[{i}]"), out);
            }
        }
        _ => {}
    }
}

/// The node at `path` (as `nodes` writes it), to be replaced.
fn node_mut<'a>(value: &'a mut Value, path: &str) -> &'a mut Value {
    let mut at = value;
    for part in path.split('.').filter(|p| !p.is_empty()) {
        let (key, indexes) = part.split_once('[').map_or((part, ""), |(k, rest)| (k, rest));
        if !key.is_empty() {
            at = at.get_mut(key).expect("key");
        }
        for index in indexes.split('[').filter(|i| !i.is_empty()) {
            let i: usize = index.trim_end_matches(']').parse().expect("index");
            at = at.get_mut(i).expect("element");
        }
    }
    at
}

fn report() -> String {
    let wrong =
        [json!(null), json!(true), json!(-1), json!(1.5), json!(70000), json!("x"), json!([1]), json!({"zz": 1})];
    let mut out = String::new();
    for filter in ["affinity", "body-limit", "forwarded", "path-pin", "uri-hash"] {
        let good = repo().join("filters").join(filter).join("fixtures/good");
        let mut files: Vec<PathBuf> =
            std::fs::read_dir(&good).expect("fixtures").map(|e| e.expect("entry").path()).collect();
        files.sort();
        for file in files {
            let name = file.file_name().expect("name").to_string_lossy().into_owned();
            let doc: Value = serde_json::from_slice(&std::fs::read(&file).expect("read")).expect("fixture is JSON");
            let mut paths = Vec::new();
            nodes(&doc, String::new(), &mut paths);
            for path in &paths {
                let mut variants: Vec<(String, Value)> = Vec::new();
                if path.is_empty() {
                    variants.extend(wrong.iter().skip(1).map(|w| (w.to_string(), w.clone())));
                } else {
                    variants.extend(wrong.iter().map(|w| (w.to_string(), w.clone())));
                }
                let original = node_mut(&mut doc.clone(), path).clone();
                if let Value::Object(map) = &original {
                    let mut extra = map.clone();
                    extra.insert("zz".into(), json!(1));
                    variants.push(("+zz".into(), Value::Object(extra)));
                }
                for (label, replacement) in variants {
                    let mut mutated = doc.clone();
                    *node_mut(&mut mutated, path) = replacement;
                    let text = serde_json::to_vec(&mutated).expect("serialise");
                    let shown = if path.is_empty() { "." } else { path.as_str() };
                    writeln!(out, "{filter}/{name} {shown} = {label}: {}", answer(filter, &text)).expect("write");
                }
            }
        }
    }
    // The document as a whole: syntax and shape.
    for doc in ["{", "{} x", "[]", "", "{\"zz\": 1, \"zz\": 2}", "{\"default_limit\": 1, \"default_limit\": 2}"] {
        writeln!(out, "body-limit {doc:?}: {}", answer("body-limit", doc.as_bytes())).expect("write");
    }
    out
}

#[test]
fn configuration_errors_are_as_recorded() {
    let golden = repo().join("filters/core/tests/config_errors.txt");
    let got = report();
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(&golden, &got).expect("write golden");
        return;
    }
    let want = std::fs::read_to_string(&golden).expect("tests/config_errors.txt (UPDATE_GOLDEN=1 writes it)");
    let diff: Vec<String> = want
        .lines()
        .zip(got.lines())
        .filter(|(w, g)| w != g)
        .take(20)
        .map(|(w, g)| format!("  want: {w}\n  got:  {g}"))
        .collect();
    assert!(
        diff.is_empty() && want.lines().count() == got.lines().count(),
        "configuration errors changed ({} lines recorded, {} now):\n{}",
        want.lines().count(),
        got.lines().count(),
        diff.join("\n")
    );
}
