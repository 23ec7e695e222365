//! The Istio manifests under envoy/istio/, checked structurally (there is no Kubernetes here):
//! every document parses and is a known kind; the WasmPlugins carry exactly the configuration of
//! envoy/overleaf.yaml (node addresses aside, which are the WorkloadEntries'), in its chain order,
//! with its failure policy and environment keys; and Envoy with each filter accepts each
//! plugin's configuration.

// Needs Envoy (scripts/setup) and the built modules (scripts/build): `scripts/test` runs it.
#![cfg(feature = "e2e")]

use serde_json::{json, Value};
use std::collections::BTreeMap;
use tether_e2e::envoy::validate;
use tether_e2e::sample::SAMPLE_ENV;
use tether_e2e::{repo_root, EnvoyConfig, ScratchDir, WasmFilter};

fn yaml_documents(relative: &str) -> Vec<Value> {
    let text = std::fs::read_to_string(repo_root().join(relative)).unwrap_or_else(|e| panic!("{relative}: {e}"));
    serde_yaml_ng::Deserializer::from_str(&text)
        .map(|doc| Value::deserialize(doc).unwrap_or_else(|e| panic!("{relative}: {e}")))
        .filter(|v| !v.is_null())
        .collect()
}

use serde::Deserialize;

/// The Tether filters of the https listener of envoy/overleaf.yaml, in chain order:
/// (root_id, failure_policy, host_env_keys, configuration with YAML anchors resolved).
fn overleaf_filters() -> Vec<(String, String, Vec<String>, Value)> {
    let doc = yaml_documents("envoy/overleaf.yaml").remove(0);
    let listener = doc["static_resources"]["listeners"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["name"] == "https")
        .expect("an https listener")
        .clone();
    let filters =
        listener["filter_chains"][0]["filters"][0]["typed_config"]["http_filters"].as_array().unwrap().clone();
    filters
        .iter()
        .filter(|f| f["name"].as_str().is_some_and(|n| n.starts_with("tether.")))
        .map(|f| {
            let c = &f["typed_config"]["config"];
            let env = c["vm_config"]["environment_variables"]["host_env_keys"]
                .as_array()
                .map(|a| a.iter().map(|k| k.as_str().unwrap().to_string()).collect())
                .unwrap_or_default();
            let policy = c["failure_policy"].as_str().expect("failure_policy").to_string();
            (c["root_id"].as_str().unwrap().to_string(), policy, env, c["configuration"]["value"].clone())
        })
        .collect()
}

/// Replaces every `{name, address}` nodes table in `v` by `table`.
fn with_nodes(mut v: Value, table: &Value) -> Value {
    match &mut v {
        Value::Object(map) => {
            for (k, child) in map.iter_mut() {
                *child = if k == "nodes" { table.clone() } else { with_nodes(child.take(), table) };
            }
        }
        Value::Array(items) => {
            for item in items.iter_mut() {
                *item = with_nodes(item.take(), table);
            }
        }
        _ => {}
    }
    v
}

#[test]
fn istio_manifests_parse_and_are_known_kinds() {
    let mut kinds = BTreeMap::new();
    for file in ["envoy/istio/overleaf-mesh.yaml", "envoy/istio/overleaf-wasmplugins.yaml"] {
        for doc in yaml_documents(file) {
            let (api, kind) = (doc["apiVersion"].as_str().unwrap_or(""), doc["kind"].as_str().unwrap_or(""));
            let known = matches!(
                (api, kind),
                (
                    "networking.istio.io/v1",
                    "Gateway" | "VirtualService" | "ServiceEntry" | "WorkloadEntry" | "DestinationRule"
                ) | ("extensions.istio.io/v1alpha1", "WasmPlugin")
            );
            assert!(known, "{file}: unexpected {api} {kind}");
            assert!(doc["metadata"]["name"].is_string() && doc["spec"].is_object(), "{file}: {doc}");
            *kinds.entry(kind.to_string()).or_insert(0) += 1;
        }
    }
    assert_eq!(kinds.get("WasmPlugin"), Some(&4), "{kinds:?}");
    assert_eq!(kinds.get("WorkloadEntry"), Some(&3), "{kinds:?}");
}

#[test]
fn wasm_plugins_carry_the_overleaf_sample_configuration() {
    let mesh = yaml_documents("envoy/istio/overleaf-mesh.yaml");
    let plugins: Vec<Value> = yaml_documents("envoy/istio/overleaf-wasmplugins.yaml")
        .into_iter()
        .filter(|d| d["kind"] == "WasmPlugin")
        .collect();

    // The nodes table is the WorkloadEntries: name and address:port.
    let table: Vec<Value> = mesh
        .iter()
        .filter(|d| d["kind"] == "WorkloadEntry")
        .map(|d| {
            json!({"name": d["metadata"]["name"], "address": format!("{}:{}", d["spec"]["address"].as_str().unwrap(), d["spec"]["ports"]["http"])})
        })
        .collect();
    let table = Value::Array(table);

    // The mesh half of the routing contract: stateful_session on the filters' session header.
    let service = mesh.iter().find(|d| d["kind"] == "ServiceEntry").unwrap();
    assert_eq!(service["metadata"]["labels"]["istio.io/persistent-session-header"], "x-tether-session");

    let sample = overleaf_filters();
    assert_eq!(plugins.len(), sample.len(), "one WasmPlugin per Tether filter of envoy/overleaf.yaml");
    // Higher priority runs first within a phase: descending priority must be the sample's order.
    let mut by_priority = plugins.clone();
    by_priority.sort_by_key(|p| -p["spec"]["priority"].as_i64().unwrap());
    for (plugin, (root_id, policy, env, config)) in by_priority.iter().zip(&sample) {
        let spec = &plugin["spec"];
        assert_eq!(spec["pluginName"].as_str(), Some(root_id.as_str()), "chain order or name");
        assert_eq!(spec["phase"], by_priority[0]["spec"]["phase"], "{root_id}: one phase for all");
        let istio = match policy.as_str() {
            "FAIL_CLOSED" => "FAIL_CLOSE",
            other => other, // FAIL_OPEN, FAIL_RELOAD: the same names
        };
        assert_eq!(spec["failStrategy"], istio, "{root_id}: failure policy");
        let plugin_env: Vec<String> = spec["vmConfig"]["env"]
            .as_array()
            .map(|a| {
                a.iter()
                    .inspect(|e| assert_eq!(e["valueFrom"], "HOST", "{root_id}: keys come from the host"))
                    .map(|e| e["name"].as_str().unwrap().to_string())
                    .collect()
            })
            .unwrap_or_default();
        assert_eq!(&plugin_env, env, "{root_id}: environment keys");
        assert_eq!(spec["pluginConfig"], with_nodes(config.clone(), &table), "{root_id}: configuration");
        let crate_file = format!("{}.wasm", root_id.replace('.', "_"));
        assert!(spec["url"].as_str().unwrap().ends_with(&crate_file), "{root_id}: {}", spec["url"]);
    }
}

#[test]
fn envoy_accepts_every_plugin_configuration() {
    let scratch = ScratchDir::new("istio");
    for plugin in yaml_documents("envoy/istio/overleaf-wasmplugins.yaml") {
        let spec = &plugin["spec"];
        let filter = spec["pluginName"].as_str().unwrap().trim_start_matches("tether.").replace('_', "-");
        let mut wasm = WasmFilter::new_struct(&filter, &spec["pluginConfig"].to_string());
        wasm.env_keys = spec["vmConfig"]["env"]
            .as_array()
            .map(|a| a.iter().map(|e| e["name"].as_str().unwrap().to_string()).collect())
            .unwrap_or_default();
        let path = scratch.join(&format!("{filter}.yaml"));
        std::fs::write(&path, EnvoyConfig::new(vec![wasm], &[]).yaml()).unwrap();
        let out = validate(&path, SAMPLE_ENV);
        assert!(
            out.status.success(),
            "{filter}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
