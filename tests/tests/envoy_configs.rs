//! Envoy itself judges the configs: every sample in envoy/ passes `envoy --mode validate`,
//! every good filter fixture is accepted and every bad one refused with its message, both as
//! JSON text (StringValue) and as a YAML-native google.protobuf.Struct.

// Needs Envoy (scripts/setup) and the built modules (scripts/build): `scripts/test` runs it.
#![cfg(feature = "e2e")]

use std::path::{Path, PathBuf};
use tether_e2e::envoy::validate;
use tether_e2e::sample::{Sample, SAMPLE_ENV};
use tether_e2e::{repo_root, EnvoyConfig, ScratchDir, WasmFilter};

fn files(dir: &Path, ext: &str) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == ext))
        .collect();
    out.sort();
    out
}

fn output_text(out: &std::process::Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

#[test]
fn every_sample_config_validates() {
    let samples = files(&repo_root().join("envoy"), "yaml");
    assert!(!samples.is_empty());
    let scratch = ScratchDir::new("samples");
    for path in samples {
        // As the file is, only with a scratch certificate where it names demo-tls's.
        let name = path.file_stem().unwrap().to_string_lossy().into_owned();
        let sample = Sample::load_with(&name, &[]); // owns the certificate: keep it alive
        let out = validate(&sample.write(&scratch), SAMPLE_ENV);
        assert!(out.status.success(), "{} was refused:\n{}", path.display(), output_text(&out));
    }
}

/// Filters that have fixtures: `filters/<name>/fixtures/{good,bad}`.
fn filters_with_fixtures() -> Vec<(String, PathBuf)> {
    let mut out = Vec::new();
    for dir in std::fs::read_dir(repo_root().join("filters")).unwrap() {
        let dir = dir.unwrap().path();
        let fixtures = dir.join("fixtures");
        if fixtures.is_dir() {
            out.push((dir.file_name().unwrap().to_string_lossy().into_owned(), fixtures));
        }
    }
    assert!(!out.is_empty(), "no filter has fixtures");
    out
}

fn validate_filter(filter: WasmFilter) -> std::process::Output {
    let scratch = ScratchDir::new("validate");
    let config = scratch.join("envoy.yaml");
    std::fs::write(&config, EnvoyConfig::new(vec![filter], &[]).yaml()).unwrap();
    validate(&config, &[])
}

#[test]
fn good_fixtures_are_accepted_by_envoy() {
    for (filter, fixtures) in filters_with_fixtures() {
        for path in files(&fixtures.join("good"), "json") {
            let json = std::fs::read_to_string(&path).unwrap();
            for wasm in [WasmFilter::new(&filter, &json), WasmFilter::new_struct(&filter, &json)] {
                let as_struct = wasm.as_struct;
                let out = validate_filter(wasm);
                assert!(
                    out.status.success(),
                    "{} (struct: {as_struct}) refused:\n{}",
                    path.display(),
                    output_text(&out)
                );
            }
        }
    }
}

#[test]
fn bad_fixtures_make_envoy_refuse_with_the_filters_message() {
    for (filter, fixtures) in filters_with_fixtures() {
        let bad = files(&fixtures.join("bad"), "json");
        assert!(!bad.is_empty(), "{filter} has no bad fixtures");
        for path in bad {
            let json = std::fs::read_to_string(&path).unwrap();
            let expected = std::fs::read_to_string(path.with_extension("err")).unwrap();
            let mut variants = vec![WasmFilter::new(&filter, &json)];
            // Only well-formed JSON can be written as a Struct.
            if serde_json::from_str::<serde_json::Value>(&json).is_ok() {
                variants.push(WasmFilter::new_struct(&filter, &json));
            }
            for wasm in variants {
                let as_struct = wasm.as_struct;
                let out = validate_filter(wasm);
                let text = output_text(&out);
                assert!(!out.status.success(), "{} (struct: {as_struct}) was accepted", path.display());
                let line = text
                    .lines()
                    .find(|l| l.contains("invalid configuration:"))
                    .unwrap_or_else(|| panic!("{}: no 'invalid configuration' line in:\n{text}", path.display()));
                assert!(
                    line.contains(expected.trim()),
                    "{} (struct: {as_struct}):\n  got:  {line}\n  want: {}",
                    path.display(),
                    expected.trim()
                );
            }
        }
    }
}
