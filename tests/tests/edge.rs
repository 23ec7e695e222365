//! tether-edge end to end: the five filters in one module and one VM behave as the five separate
//! filters do in the Overleaf chain (see the other e2e suites for each behaviour in depth).

// Needs Envoy (scripts/setup) and the built modules (scripts/build): `scripts/test` runs it.
#![cfg(feature = "e2e")]

use tether_e2e::envoy::validate;
use tether_e2e::http::{request, Response};
use tether_e2e::node::{nodes_json, three_nodes};
use tether_e2e::{curl, Envoy, EnvoyConfig, ScratchDir, TestNode, WasmFilter};

const HEADER: &str = "x-tether-session";

fn edge_config(nodes: &[TestNode]) -> String {
    let table = nodes_json(nodes);
    format!(
        r#"{{
  "forwarded": {{"proto": "https", "hsts": {{"max_age": "730d"}}, "served_by": {{"nodes": {table}}}}},
  "body_limit": {{"default_limit": "1M"}},
  "path_pin": {{"nodes": {table}, "rules": [{{"name": "git", "path_prefix": "/git/", "node": "node-1"}}]}},
  "uri_hash": {{"nodes": {table}, "prefixes": ["/project/"], "depth": 2}},
  "affinity": {{"nodes": {table}, "cookie": {{"keys": ["edge-test-key-0123456789"]}}}}
}}"#
    )
}

fn get(envoy: &Envoy, path: &str, headers: &[(&str, &str)]) -> Response {
    request(envoy.listener, "GET", path, headers).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn node_of(r: &Response) -> String {
    r.node()
}

#[test]
fn the_edge_module_runs_the_overleaf_chain_in_one_vm() {
    let nodes = three_nodes();
    let refs: Vec<&TestNode> = nodes.iter().collect();
    let filter = WasmFilter::new_struct("edge", &edge_config(&nodes));
    let envoy = Envoy::start(&EnvoyConfig::new(vec![filter], &refs).with_routing(HEADER));
    envoy.wait_for_log("edge: configured: 5 filter(s) in one VM");

    // forwarded + affinity: cookie, HSTS, X-Served-By; the cookie sticks.
    let first = get(&envoy, "/", &[("x-forwarded-for", "6.6.6.6")]);
    assert_eq!(first.status, 200);
    assert_eq!(first.header("x-served-by"), Some(node_of(&first).as_str()));
    assert!(first.header("strict-transport-security").is_some());
    assert!(!first.body.contains("6.6.6.6"), "a forged X-Forwarded-For reached the node");
    let cookie = first.header("set-cookie").unwrap().split(';').next().unwrap().to_string();
    for _ in 0..10 {
        let r = get(&envoy, "/x", &[("cookie", &cookie)]);
        assert_eq!(node_of(&r), node_of(&first));
        assert_eq!(r.header("set-cookie"), None);
        assert_eq!(r.header(HEADER), None, "the session header never reaches the client");
    }
    // uri-hash: one project, one node, whatever the cookie; the session is left alone.
    let project: Vec<String> =
        (0..5).map(|i| node_of(&get(&envoy, &format!("/project/5f3c/f{i}"), &[("cookie", &cookie)]))).collect();
    assert!(project.iter().all(|n| n == &project[0]), "{project:?}");
    // path-pin: git goes to node-1 (no repositories here: its 404 names it).
    for _ in 0..5 {
        assert_eq!(node_of(&get(&envoy, "/git/repo.git/info/refs", &[("cookie", &cookie)])), "node-1");
    }
    // body-limit: a declared 2 MiB body gets the 413, with HSTS from forwarded on the way out.
    let scratch = ScratchDir::new("edge");
    let body = scratch.file_of_size("2MiB", 2 * 1024 * 1024);
    let refused = curl(&["--data-binary", &format!("@{}", body.display()), &envoy.url("/upload")], None);
    assert_eq!(refused.status(), 413, "{refused:?}");
    assert!(refused.header("strict-transport-security").is_some(), "the local reply passed forwarded: {refused:?}");
    // The filters' own metrics.
    assert_eq!(envoy.counter("wasmcustom.tether_affinity.new_sessions", 1), 1);
    assert_eq!(envoy.counter("wasmcustom.tether_uri_hash.hashed", 5), 5);
    assert_eq!(envoy.counter("wasmcustom.tether_path_pin.pinned.git", 5), 5);
    assert_eq!(envoy.counter("wasmcustom.tether_body_limit.rejected.declared_too_large", 1), 1);
    assert!(envoy.error_lines().is_empty(), "{:?}", envoy.error_lines());
    // The module asked which host it runs in (`ngx.nginx_version`) and Envoy said: not nginx.
    assert!(!envoy.log().contains("running on nginx"), "Envoy taken for nginx");
    // ... and Envoy said it is Envoy (`xds.node.user_agent_name`): names are read as they come.
    assert!(
        envoy.log().contains("running on Envoy: header names read as they come"),
        "Envoy not recognised: {:?}",
        envoy.log().lines().filter(|l| l.contains("host did not say")).collect::<Vec<_>>()
    );
}

#[test]
fn a_bad_edge_configuration_is_refused_naming_the_section() {
    let scratch = ScratchDir::new("edge-bad");
    for (config, says) in [
        (r#"{"forwarded": {}, "cookies": {}}"#, "unknown field `cookies`"),
        (r#"{"body_limit": {"default_limit": "lots"}}"#, "section \"body_limit\" refused"),
        (r#"{}"#, "no section"),
        (
            r#"{"path_pin": {"session_header": "x-one", "nodes": [{"name": "n1", "address": "127.0.0.1:8001"}],
                "rules": [{"path_prefix": "/git/", "node": "n1"}]},
              "uri_hash": {"session_header": "x-two", "nodes": [{"name": "n1", "address": "127.0.0.1:8001"}],
                "prefixes": ["/project/"]}}"#,
            "name different session headers",
        ),
    ] {
        let path = scratch.join("envoy.yaml");
        std::fs::write(&path, EnvoyConfig::new(vec![WasmFilter::new("edge", config)], &[]).yaml()).unwrap();
        let out = validate(&path, &[]);
        let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        assert!(!out.status.success(), "{config} was accepted");
        assert!(text.contains(says), "{config}: expected {says:?} in:\n{text}");
    }
}
