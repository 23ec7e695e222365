//! The Envoy Gateway manifests under envoy/envoy-gateway/, checked structurally (there is no
//! Kubernetes here): each resource against Envoy Gateway's CRD schemas and CEL rules (with the
//! Gateway API CRDs its chart installs); the Wasm extensions carry exactly the configuration of
//! envoy/overleaf-pods.yaml, in its chain order, with no address; the routing contract is in
//! place (Tether's filters before stateful_session, on the filters' session header); and Envoy
//! with each filter accepts each extension's configuration.

// Needs Envoy (scripts/setup) and the built modules (scripts/build): `scripts/test` runs it.
#![cfg(feature = "e2e")]

use serde_json::{json, Value};
use tether_e2e::manifests::{addresses_in, assert_envoy_accepts, pods_filters, without_endpoint_names, yaml_documents};
use tether_e2e::openapi;
use tether_e2e::{repo_root, ScratchDir, WasmFilter};

const MESH: &str = "envoy/envoy-gateway/overleaf-pods.yaml";
const EXTENSIONS: &str = "envoy/envoy-gateway/overleaf-pods-extensions.yaml";

/// Envoy Gateway's CRD schemas (tests/envoy-gateway/crd-schemas.json; its source line names
/// the release and commit).
fn crd_schemas() -> Value {
    let path = repo_root().join("tests/envoy-gateway/crd-schemas.json");
    serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn documents() -> Vec<(&'static str, Value)> {
    [MESH, EXTENSIONS].into_iter().flat_map(|f| yaml_documents(f).into_iter().map(move |d| (f, d))).collect()
}

fn the<'a>(docs: &'a [(&str, Value)], kind: &str, name: &str) -> &'a Value {
    docs.iter()
        .map(|(_, d)| d)
        .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} {name}"))
}

#[test]
fn every_envoy_gateway_manifest_passes_the_crd_schemas() {
    let crds = crd_schemas();
    let mut checked = Vec::new();
    for (file, doc) in documents() {
        let kind = doc["kind"].as_str().unwrap_or_default();
        let name = doc["metadata"]["name"].as_str().unwrap_or_default();
        assert!(!name.is_empty() && doc["spec"].is_object(), "{file}: {doc}");
        let Some(crd) = crds["kinds"].get(kind) else {
            assert!(
                matches!(
                    (doc["apiVersion"].as_str(), kind),
                    (Some("v1"), "Service") | (Some("apps/v1"), "StatefulSet")
                ),
                "{file}: unexpected {} {kind}",
                doc["apiVersion"]
            );
            continue;
        };
        assert_eq!(doc["apiVersion"], crd["apiVersion"], "{file}: {kind}");
        let errors = openapi::validate(&crd["schema"]["properties"]["spec"], &doc["spec"]);
        assert!(errors.is_empty(), "{file}: {kind} {name} would be refused:\n  {}", errors.join("\n  "));
        checked.push(kind.to_string());
    }
    checked.sort();
    assert_eq!(
        checked,
        [
            "BackendTrafficPolicy",
            "EnvoyExtensionPolicy",
            "EnvoyProxy",
            "Gateway",
            "GatewayClass",
            "HTTPRoute",
            "HTTPRoute"
        ],
    );
}

#[test]
fn the_checker_refuses_what_envoy_gateway_refuses() {
    let crds = crd_schemas();
    let spec_of = |kind: &str| crds["kinds"][kind]["schema"]["properties"]["spec"].clone();
    let cases = [
        // An unquoted all-digit sha256 is a YAML number.
        (
            "EnvoyExtensionPolicy",
            json!({"targetRefs": [{"group": "gateway.networking.k8s.io", "kind": "HTTPRoute", "name": "r"}],
                   "wasm": [{"code": {"type": "HTTP", "http": {"url": "https://a/b.wasm", "sha256": 1234}}}]}),
            "sha256: expected string",
        ),
        // The type says HTTP, the source is an image.
        (
            "EnvoyExtensionPolicy",
            json!({"targetRefs": [{"group": "gateway.networking.k8s.io", "kind": "HTTPRoute", "name": "r"}],
                   "wasm": [{"code": {"type": "HTTP", "image": {"url": "oci://a/b"}}}]}),
            "type HTTP if and only if http is set",
        ),
        // Both targetRef and targetRefs.
        (
            "BackendTrafficPolicy",
            json!({"targetRef": {"group": "gateway.networking.k8s.io", "kind": "HTTPRoute", "name": "r"},
                   "targetRefs": [{"group": "gateway.networking.k8s.io", "kind": "HTTPRoute", "name": "r"}]}),
            "either targetRef or targetRefs must be used",
        ),
        // idleTimeout left Gateway API in 1.6 (GEP-1619).
        (
            "HTTPRoute",
            json!({"rules": [{"sessionPersistence": {"type": "Header", "sessionName": "x", "idleTimeout": "1h"}}]}),
            "sessionPersistence.idleTimeout: unknown field",
        ),
        // A retry trigger Envoy Gateway does not know, and a duration it cannot read.
        (
            "BackendTrafficPolicy",
            json!({"targetRefs": [{"group": "gateway.networking.k8s.io", "kind": "HTTPRoute", "name": "r"}],
                   "retry": {"retryOn": {"triggers": ["sometimes"]}}, "timeout": {"tcp": {"connectTimeout": "1.5s"}}}),
            "\"sometimes\" is not one of",
        ),
    ];
    for (kind, spec, want) in cases {
        let errors = openapi::validate(&spec_of(kind), &spec).join("\n");
        assert!(
            errors.contains(want) && !errors.contains("not checked here"),
            "{kind} {spec}: want {want:?}, got:\n{errors}"
        );
    }
    let durations = openapi::validate(
        &spec_of("BackendTrafficPolicy"),
        &json!({"targetRefs": [{"group": "gateway.networking.k8s.io", "kind": "HTTPRoute", "name": "r"}],
                "timeout": {"tcp": {"connectTimeout": "1.5s"}}}),
    );
    assert!(durations.iter().any(|e| e.contains("does not match")), "{durations:?}");
}

#[test]
fn wasm_extensions_carry_the_pods_sample_configuration_and_no_address() {
    let docs = documents();
    let policy = the(&docs, "EnvoyExtensionPolicy", "tether");
    let wasm = policy["spec"]["wasm"].as_array().unwrap();
    let sample = pods_filters();
    assert_eq!(wasm.len(), sample.len(), "one extension per Tether filter of envoy/overleaf-pods.yaml");
    // Envoy Gateway runs a policy's list in order: the list is the sample's chain.
    for (extension, filter) in wasm.iter().zip(&sample) {
        let root_id = filter.root_id.as_str();
        assert_eq!(extension["rootID"].as_str(), Some(root_id), "chain order or name");
        assert_eq!(extension["name"].as_str(), Some(root_id));
        // failOpen false is Envoy Gateway's only fail-closed setting; the sample's FAIL_RELOAD
        // has no equivalent there (README.md).
        assert_eq!(extension["failOpen"], false, "{root_id}");
        let keys: Vec<String> = extension["env"]["hostKeys"]
            .as_array()
            .map(|a| a.iter().map(|k| k.as_str().unwrap().to_string()).collect())
            .unwrap_or_default();
        assert_eq!(keys, filter.env_keys, "{root_id}: environment keys");
        // Envoy Gateway's endpoints carry no per-pod metadata: no names (README.md).
        assert_eq!(extension["config"], without_endpoint_names(&filter.config), "{root_id}: configuration");
        let url = extension["code"]["http"]["url"].as_str().unwrap();
        assert!(url.ends_with(&format!("/{}.wasm", root_id.replace('.', "_"))), "{root_id}: {url}");
    }
    let mut found = Vec::new();
    for (_, doc) in &docs {
        let what = format!("{} {}", doc["kind"].as_str().unwrap(), doc["metadata"]["name"].as_str().unwrap());
        addresses_in(&doc["spec"], &what, &mut found);
    }
    assert!(found.is_empty(), "addresses in the Envoy Gateway manifests: {found:?}");
}

#[test]
fn the_routing_contract_is_in_place() {
    let docs = documents();
    // Tether writes the session header before stateful_session reads it: Envoy Gateway's default
    // order is the other way round.
    let class = the(&docs, "GatewayClass", "tether");
    let proxy_ref = &class["spec"]["parametersRef"];
    assert_eq!((&proxy_ref["kind"], &proxy_ref["group"]), (&json!("EnvoyProxy"), &json!("gateway.envoyproxy.io")));
    let proxy = the(&docs, "EnvoyProxy", proxy_ref["name"].as_str().unwrap());
    assert_eq!(proxy["metadata"]["namespace"], proxy_ref["namespace"]);
    assert!(
        proxy["spec"]["filterOrder"]
            .as_array()
            .unwrap()
            .contains(&json!({"name": "envoy.filters.http.wasm", "before": "envoy.filters.http.stateful_session"})),
        "Wasm before stateful_session"
    );
    // The keys reach the Envoy pods' environment from a Secret.
    let env = &proxy["spec"]["provider"]["kubernetes"]["envoyDeployment"]["container"]["env"];
    let keys = env.as_array().unwrap().iter().find(|e| e["name"] == "TETHER_AFFINITY_KEYS").expect("the keys");
    assert!(keys["valueFrom"]["secretKeyRef"]["name"].is_string() && keys.get("value").is_none());

    // The session header of the sample's stateful_session, on every route to the pods; none on
    // git-bridge's, whose prefix affinity ignores.
    let sample = yaml_documents("envoy/overleaf-pods.yaml").remove(0);
    let https = sample["static_resources"]["listeners"].as_array().unwrap().iter().find(|l| l["name"] == "https");
    let filters = https.unwrap()["filter_chains"][0]["filters"][0]["typed_config"]["http_filters"].clone();
    let session = filters.as_array().unwrap().iter().find(|f| f["name"] == "envoy.filters.http.stateful_session");
    let header = session.unwrap()["typed_config"]["session_state"]["typed_config"]["name"].clone();
    assert_eq!(header, "x-tether-session");
    let affinity = pods_filters().into_iter().find(|f| f.root_id == "tether.affinity").unwrap();
    let route = the(&docs, "HTTPRoute", "overleaf");
    let services: Vec<&str> = docs
        .iter()
        .filter(|(_, d)| d["kind"] == "Service")
        .map(|(_, d)| d["metadata"]["name"].as_str().unwrap())
        .collect();
    for rule in route["spec"]["rules"].as_array().unwrap() {
        let backend = rule["backendRefs"][0]["name"].as_str().unwrap();
        assert!(services.contains(&backend), "{backend} is not a Service of the file");
        if backend == "server-pro" {
            assert_eq!(rule["sessionPersistence"], json!({"type": "Header", "sessionName": header}), "{rule}");
        } else {
            assert!(rule.get("sessionPersistence").is_none(), "{rule}");
            let prefix = &rule["matches"][0]["path"]["value"];
            assert!(
                affinity.config["ignore_prefixes"].as_array().unwrap().contains(prefix),
                "affinity ignores {prefix}, which goes to {backend}"
            );
        }
    }
    // The policy of the pods' rules: health checks and the sample's retry policy.
    let traffic = the(&docs, "BackendTrafficPolicy", "server-pro");
    let triggers = &traffic["spec"]["retry"]["retryOn"]["triggers"];
    assert_eq!(triggers, &json!(["connect-failure", "reset-before-request"]), "never reset: it replays");
    assert!(traffic["spec"]["healthCheck"]["active"]["http"]["path"].is_string());
}

#[test]
fn envoy_accepts_every_extension_configuration() {
    let scratch = ScratchDir::new("envoy-gateway");
    for (_, doc) in documents().into_iter().filter(|(_, d)| d["kind"] == "EnvoyExtensionPolicy") {
        for extension in doc["spec"]["wasm"].as_array().unwrap() {
            let filter = extension["rootID"].as_str().unwrap().trim_start_matches("tether.").replace('_', "-");
            // Envoy Gateway hands `config` to the filter as JSON text (a StringValue).
            let mut wasm = WasmFilter::new(&filter, &extension["config"].to_string());
            wasm.env_keys = extension["env"]["hostKeys"]
                .as_array()
                .map(|a| a.iter().map(|k| k.as_str().unwrap().to_string()).collect())
                .unwrap_or_default();
            assert_envoy_accepts(&scratch, &filter, wasm);
        }
    }
}
