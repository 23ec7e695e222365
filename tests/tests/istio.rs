//! The Istio manifests under envoy/istio/, checked structurally (there is no Kubernetes here):
//! every document parses and is a known kind; the WasmPlugins carry exactly the configuration of
//! envoy/overleaf.yaml (node addresses aside, which are the WorkloadEntries'), in its chain order,
//! with its failure policy and environment keys; and Envoy with each filter accepts each
//! plugin's configuration.

// Needs Envoy (scripts/setup) and the built modules (scripts/build): `scripts/test` runs it.
#![cfg(feature = "e2e")]

use serde_json::{json, Value};
use std::collections::BTreeMap;
use tether_e2e::manifests::{addresses_in, assert_envoy_accepts, pods_filters, without_endpoint_names, yaml_documents};
use tether_e2e::{repo_root, ScratchDir, WasmFilter};

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
    for file in [
        "envoy/istio/overleaf-mesh.yaml",
        "envoy/istio/overleaf-wasmplugins.yaml",
        "envoy/istio/overleaf-pods-mesh.yaml",
        "envoy/istio/overleaf-pods-wasmplugins.yaml",
    ] {
        for doc in yaml_documents(file) {
            let (api, kind) = (doc["apiVersion"].as_str().unwrap_or(""), doc["kind"].as_str().unwrap_or(""));
            let known = matches!(
                (api, kind),
                (
                    "networking.istio.io/v1",
                    "Gateway" | "VirtualService" | "ServiceEntry" | "WorkloadEntry" | "DestinationRule"
                ) | ("extensions.istio.io/v1alpha1", "WasmPlugin")
                    | ("v1", "Service")
                    | ("apps/v1", "StatefulSet")
            );
            assert!(known, "{file}: unexpected {api} {kind}");
            assert!(doc["metadata"]["name"].is_string() && doc["spec"].is_object(), "{file}: {doc}");
            *kinds.entry(kind.to_string()).or_insert(0) += 1;
        }
    }
    assert_eq!(kinds.get("WasmPlugin"), Some(&(4 + 3)), "{kinds:?}");
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
    let plugins = [
        yaml_documents("envoy/istio/overleaf-wasmplugins.yaml"),
        yaml_documents("envoy/istio/overleaf-pods-wasmplugins.yaml"),
    ];
    for plugin in plugins.into_iter().flatten() {
        let spec = &plugin["spec"];
        let filter = spec["pluginName"].as_str().unwrap().trim_start_matches("tether.").replace('_', "-");
        let mut wasm = WasmFilter::new_struct(&filter, &spec["pluginConfig"].to_string());
        wasm.env_keys = spec["vmConfig"]["env"]
            .as_array()
            .map(|a| a.iter().map(|e| e["name"].as_str().unwrap().to_string()).collect())
            .unwrap_or_default();
        assert_envoy_accepts(&scratch, &format!("{filter}-{}", plugin["metadata"]["name"].as_str().unwrap()), wasm);
    }
}

/// Istio's CRD schemas for the kinds the manifests use (tests/istio/crd-schemas.json, taken
/// from istio/istio's crd-all.gen.yaml; its source line names the commit).
fn crd_schemas() -> Value {
    let path = repo_root().join("tests/istio/crd-schemas.json");
    serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Every Istio manifest under envoy/istio/.
fn istio_manifests() -> Vec<(String, Value)> {
    let mut out = Vec::new();
    let mut files: Vec<_> = std::fs::read_dir(repo_root().join("envoy/istio"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    for path in files {
        let relative = format!("envoy/istio/{}", path.file_name().unwrap().to_string_lossy());
        for doc in yaml_documents(&relative) {
            out.push((relative.clone(), doc));
        }
    }
    out
}

/// Envoy's retry policies istiod accepts in `retryOn` (pkg/config/validation/agent/validation.go).
const RETRY_ON: &[&str] = &[
    "5xx",
    "gateway-error",
    "reset",
    "connect-failure",
    "envoy-ratelimited",
    "refused-stream",
    "retriable-4xx",
    "retriable-status-codes",
    "retriable-headers",
    "cancelled",
    "deadline-exceeded",
    "internal",
    "resource-exhausted",
    "unavailable",
    "reset-before-request",
    "http3-post-connect-failure",
];

/// What istiod's validating webhook checks beyond the CRD schema, for the fields we use.
fn webhook_errors(kind: &str, spec: &Value) -> Vec<String> {
    let mut errors = Vec::new();
    let whole_ms = |d: &Value, what: &str, errors: &mut Vec<String>| {
        if let Some(text) = d.as_str() {
            match tether_e2e::openapi::go_duration_nanos(text) {
                Some(n) if n >= 1_000_000 && n % 1_000_000 == 0 => {}
                _ => errors.push(format!("{what}: {text:?} must be at least 1ms, in whole milliseconds")),
            }
        }
    };
    if kind == "VirtualService" {
        for (i, route) in spec["http"].as_array().into_iter().flatten().enumerate() {
            whole_ms(&route["timeout"], &format!("http[{i}].timeout"), &mut errors);
            let retries = &route["retries"];
            whole_ms(&retries["perTryTimeout"], &format!("http[{i}].retries.perTryTimeout"), &mut errors);
            if let Some(on) = retries["retryOn"].as_str() {
                for policy in on.split(',').map(str::trim) {
                    if !RETRY_ON.contains(&policy) && policy.parse::<u16>().is_err() {
                        errors
                            .push(format!("http[{i}].retries.retryOn: {policy:?} is not a retry policy istiod knows"));
                    }
                }
            }
            if retries["attempts"].as_i64() == Some(0)
                && (retries.get("retryOn").is_some() || retries.get("perTryTimeout").is_some())
            {
                errors.push(format!("http[{i}].retries: attempts 0 with retry settings"));
            }
            let has_target = ["route", "redirect", "directResponse"].iter().any(|k| route.get(*k).is_some());
            if !has_target {
                errors.push(format!("http[{i}]: needs route, redirect or directResponse"));
            }
        }
    }
    if kind == "DestinationRule" {
        let policy = &spec["trafficPolicy"];
        for d in [&policy["outlierDetection"]["interval"], &policy["outlierDetection"]["baseEjectionTime"]] {
            whole_ms(d, "outlierDetection", &mut errors);
        }
        for d in [&policy["connectionPool"]["tcp"]["connectTimeout"], &policy["connectionPool"]["http"]["idleTimeout"]]
        {
            whole_ms(d, "connectionPool", &mut errors);
        }
    }
    if kind == "WasmPlugin" {
        let names: Vec<&str> =
            spec["vmConfig"]["env"].as_array().into_iter().flatten().filter_map(|e| e["name"].as_str()).collect();
        if names.iter().any(|n| n.is_empty() || names.iter().filter(|m| *m == n).count() > 1) {
            errors.push("vmConfig.env: names must be unique and non-empty".into());
        }
    }
    errors
}

#[test]
fn every_istio_manifest_passes_istios_crd_schema_and_webhook_rules() {
    let crds = crd_schemas();
    let mut checked = 0;
    for (file, doc) in istio_manifests() {
        let kind = doc["kind"].as_str().unwrap_or_default();
        let Some(crd) = crds["kinds"].get(kind) else { continue }; // core kinds: Service, StatefulSet
        assert_eq!(doc["apiVersion"], crd["apiVersion"], "{file}: {kind}");
        let name = doc["metadata"]["name"].as_str().unwrap_or_default();
        let mut errors = tether_e2e::openapi::validate(&crd["schema"]["properties"]["spec"], &doc["spec"]);
        errors.extend(webhook_errors(kind, &doc["spec"]));
        assert!(errors.is_empty(), "{file}: {kind} {name} would be refused:\n  {}", errors.join("\n  "));
        checked += 1;
    }
    assert!(checked >= 10, "{checked} Istio resources checked");
}

#[test]
fn the_checker_refuses_what_istio_refused_before() {
    // The VirtualService route that kubectl apply refused ("must be a valid duration greater
    // than 1ms", Istio 1.23+), and other mistakes istiod refuses.
    let crds = crd_schemas();
    let vs = &crds["kinds"]["VirtualService"]["schema"]["properties"]["spec"];
    let spec = json!({"hosts": ["a.example.com"], "http": [
        {"match": [{"headers": {"upgrade": {"exact": "websocket"}}}], "route": [{"destination": {"host": "a"}}], "timeout": "0s"},
        {"route": [{"destination": {"host": "a"}}], "retries": {"attempts": 3, "retryOn": "connect-failure,sometimes"}},
        {"route": [{"destination": {"host": "a"}}], "timeout": "1500us", "retry": {}}
    ]});
    let mut errors = tether_e2e::openapi::validate(vs, &spec);
    errors.extend(webhook_errors("VirtualService", &spec));
    let text = errors.join("\n");
    for want in [
        "http[0].timeout: must be a valid duration greater than 1ms",
        "\"sometimes\" is not a retry policy",
        "whole milliseconds",
        "http[2].retry: unknown field",
    ] {
        assert!(text.contains(want), "{want}:\n{text}");
    }
}

#[test]
fn pod_wasm_plugins_carry_the_pods_sample_configuration_and_no_address() {
    let mesh = yaml_documents("envoy/istio/overleaf-pods-mesh.yaml");
    let mut plugins: Vec<Value> = yaml_documents("envoy/istio/overleaf-pods-wasmplugins.yaml")
        .into_iter()
        .filter(|d| d["kind"] == "WasmPlugin")
        .collect();
    plugins.sort_by_key(|p| -p["spec"]["priority"].as_i64().unwrap());
    let sample = pods_filters();
    assert_eq!(plugins.len(), sample.len(), "one WasmPlugin per Tether filter of envoy/overleaf-pods.yaml");
    for (plugin, filter) in plugins.iter().zip(&sample) {
        let (spec, root_id) = (&plugin["spec"], filter.root_id.as_str());
        assert_eq!(spec["pluginName"].as_str(), Some(root_id), "chain order or name");
        assert_eq!(spec["failStrategy"].as_str(), Some(filter.failure_policy.as_str()), "{root_id}");
        let plugin_env: Vec<String> = spec["vmConfig"]["env"]
            .as_array()
            .map(|a| a.iter().map(|e| e["name"].as_str().unwrap().to_string()).collect())
            .unwrap_or_default();
        assert_eq!(plugin_env, filter.env_keys, "{root_id}: environment keys");
        // What Istio cannot give: a per-pod name in endpoint metadata (istio.workload names the
        // StatefulSet), so no X-Served-By and no name sealed with the address (README.md).
        assert_eq!(spec["pluginConfig"], without_endpoint_names(&filter.config), "{root_id}: configuration");
        let mut found = Vec::new();
        addresses_in(&spec["pluginConfig"], root_id, &mut found);
        assert!(found.is_empty(), "addresses in plugin configuration: {found:?}");
    }
    // The mesh half of the routing contract on the Service of the pods; every route's
    // destination is a Service of the file.
    let services: Vec<&Value> = mesh.iter().filter(|d| d["kind"] == "Service").collect();
    let pods = services.iter().find(|s| s["metadata"]["name"] == "server-pro").expect("the server-pro Service");
    assert_eq!(pods["metadata"]["labels"]["istio.io/persistent-session-header"], "x-tether-session");
    let vs = mesh.iter().find(|d| d["kind"] == "VirtualService").unwrap();
    for route in vs["spec"]["http"].as_array().unwrap() {
        let host = route["route"][0]["destination"]["host"].as_str().unwrap();
        let name = host.split('.').next().unwrap();
        assert!(services.iter().any(|s| s["metadata"]["name"] == name), "{host} is not a Service of the file");
    }
    let mut found = Vec::new();
    for doc in &mesh {
        addresses_in(&doc["spec"], doc["kind"].as_str().unwrap_or_default(), &mut found);
    }
    assert!(found.is_empty(), "addresses in the pods mesh manifests: {found:?}");
}
