//! Reading the samples and the Kubernetes manifests beside them (envoy/istio/,
//! envoy/envoy-gateway/), for the tests that hold the manifests to the Envoy samples.

use crate::envoy::validate;
use crate::sample::SAMPLE_ENV;
use crate::{repo_root, EnvoyConfig, ScratchDir, WasmFilter};
use serde::Deserialize;
use serde_json::Value;

/// Every non-empty YAML document of a file under the repository root, as JSON values.
pub fn yaml_documents(relative: &str) -> Vec<Value> {
    let text = std::fs::read_to_string(repo_root().join(relative)).unwrap_or_else(|e| panic!("{relative}: {e}"));
    serde_yaml_ng::Deserializer::from_str(&text)
        .map(|doc| Value::deserialize(doc).unwrap_or_else(|e| panic!("{relative}: {e}")))
        .filter(|v| !v.is_null())
        .collect()
}

/// A Tether filter of a sample's https listener.
#[derive(Debug, Clone)]
pub struct SampleFilter {
    pub root_id: String,
    pub failure_policy: String,
    pub env_keys: Vec<String>,
    /// The filter's configuration, YAML anchors resolved.
    pub config: Value,
}

/// The Tether filters of envoy/overleaf-pods.yaml's https listener, in chain order, from their
/// ECDS files.
pub fn pods_filters() -> Vec<SampleFilter> {
    let doc = yaml_documents("envoy/overleaf-pods.yaml").remove(0);
    let listeners = doc["static_resources"]["listeners"].as_array().expect("listeners");
    let listener = listeners.iter().find(|l| l["name"] == "https").expect("an https listener");
    let filters =
        listener["filter_chains"][0]["filters"][0]["typed_config"]["http_filters"].as_array().expect("filters");
    filters
        .iter()
        .filter(|f| f["name"].as_str().is_some_and(|n| n.starts_with("tether.")))
        .map(|f| {
            let file =
                f["config_discovery"]["config_source"]["path_config_source"]["path"].as_str().expect("an ECDS path");
            let c = yaml_documents(file).remove(0)["resources"][0]["typed_config"]["config"].clone();
            let env_keys = c["vm_config"]["environment_variables"]["host_env_keys"]
                .as_array()
                .map(|a| a.iter().filter_map(|k| k.as_str().map(str::to_string)).collect())
                .unwrap_or_default();
            SampleFilter {
                root_id: c["root_id"].as_str().expect("root_id").to_string(),
                failure_policy: c["failure_policy"].as_str().expect("failure_policy").to_string(),
                env_keys,
                config: c["configuration"]["value"].clone(),
            }
        })
        .collect()
}

/// Where `v` holds an address: every string that is an IP address or `ip:port`, and every
/// `nodes`/`address` key, each as a path from `at`.
pub fn addresses_in(v: &Value, at: &str, found: &mut Vec<String>) {
    match v {
        Value::Object(map) => {
            for (k, child) in map {
                if k == "nodes" || k == "address" {
                    found.push(format!("{at}.{k}"));
                }
                addresses_in(child, &format!("{at}.{k}"), found);
            }
        }
        Value::Array(items) => {
            items.iter().enumerate().for_each(|(i, item)| addresses_in(item, &format!("{at}[{i}]"), found))
        }
        Value::String(s) if s.parse::<std::net::IpAddr>().is_ok() || s.parse::<std::net::SocketAddr>().is_ok() => {
            found.push(format!("{at}: {s}"));
        }
        _ => {}
    }
}

/// What a manifest's environment omits from a pods sample filter's configuration: the per-pod
/// name from endpoint metadata (X-Served-By, and the name sealed with the address), which
/// neither Istio (istio.workload names the StatefulSet) nor Envoy Gateway (no endpoint
/// metadata) gives.
pub fn without_endpoint_names(config: &Value) -> Value {
    let mut expected = config.clone();
    if let Some(map) = expected.as_object_mut() {
        map.remove("served_by");
        map.remove("endpoint_name");
    }
    expected
}

/// Asserts that Envoy (`--mode validate`) accepts `filter` (a manifest's plugin configuration
/// and environment keys) alone in a listener; the config is written to `scratch` as `name`.
pub fn assert_envoy_accepts(scratch: &ScratchDir, name: &str, filter: WasmFilter) {
    let path = scratch.join(&format!("{name}.yaml"));
    std::fs::write(&path, EnvoyConfig::new(vec![filter], &[]).yaml()).unwrap_or_else(|e| panic!("{name}: {e}"));
    let out = validate(&path, SAMPLE_ENV);
    assert!(
        out.status.success(),
        "{name}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
