//! uri-hash end to end: real Envoy (routing contract, health checks), three test nodes.

// Needs Envoy (scripts/setup) and the built modules (scripts/build): `scripts/test` runs it.
#![cfg(feature = "e2e")]

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;
use tether_e2e::http::{request, Response};
use tether_e2e::{wait_for, Envoy, EnvoyConfig, TestNode, WasmFilter};

const HEADER: &str = "x-tether-session";

use tether_e2e::node::{nodes_json, three_nodes as nodes};

fn config(nodes: &[TestNode]) -> String {
    format!(r#"{{"nodes": {}, "prefixes": ["/project/"], "depth": 2, "failover_cooldown": "5s"}}"#, nodes_json(nodes))
}

fn envoy(nodes: &[TestNode], filters: Vec<WasmFilter>) -> Envoy {
    let refs: Vec<&TestNode> = nodes.iter().collect();
    Envoy::start(&EnvoyConfig::new(filters, &refs).with_routing(HEADER))
}

fn get(envoy: &Envoy, path: &str) -> Response {
    let r = request(envoy.listener, "GET", path, &[]).unwrap();
    assert_eq!(r.status, 200, "{path}: {r:?}");
    r
}

fn node_of(r: &Response) -> String {
    r.node()
}

#[test]
fn every_project_sticks_to_one_node_and_projects_spread() {
    let n = nodes();
    let envoy = envoy(&n, vec![WasmFilter::new("uri-hash", &config(&n))]);
    let mut home: BTreeMap<String, String> = BTreeMap::new();
    for p in 0..30 {
        let project = format!("{:024x}", p * 7919 + 12345);
        let mut seen = BTreeSet::new();
        for i in 0..50 {
            let path = match i % 3 {
                0 => format!("/project/{project}/compile"),
                1 => format!("/project/{project}/output/output.pdf?cache={i}"),
                _ => format!("/project/{project}"),
            };
            seen.insert(node_of(&get(&envoy, &path)));
        }
        assert_eq!(seen.len(), 1, "project {project} was served by {seen:?}");
        home.insert(project, seen.into_iter().next().unwrap());
    }
    let used: BTreeSet<&String> = home.values().collect();
    assert_eq!(used.len(), 3, "30 projects should use all three nodes: {home:?}");
    assert_eq!(envoy.counter("wasmcustom.tether_uri_hash.hashed", 1500), 1500);
}

#[test]
fn unhealthy_node_fails_over_to_one_node_and_comes_back_after_the_cooldown() {
    let n = nodes();
    let envoy = envoy(&n, vec![WasmFilter::new("uri-hash", &config(&n))]);
    let project = "/project/5f3c0ffee/compile";
    let home_name = node_of(&get(&envoy, project));
    let home = n.iter().find(|x| x.name == home_name).unwrap();
    home.set_healthy(false);
    envoy.wait_for_health(home, false);
    // The first request finds out (Envoy's load balancer serves it); from then on one node.
    let first = node_of(&get(&envoy, project));
    assert_ne!(first, home_name);
    wait_for("the failover to be recorded", Duration::from_secs(5), || {
        (envoy.stat("wasmcustom.tether_uri_hash.failovers") >= 1).then_some(()) // within a tick
    });
    let mut during = BTreeSet::new();
    for i in 0..30 {
        during.insert(node_of(&get(&envoy, &format!("{project}?i={i}"))));
    }
    assert_eq!(during.len(), 1, "while {home_name} is down the project should stay on one node: {during:?}");
    assert!(!during.contains(&home_name));
    assert!(envoy.counter_at_least("wasmcustom.tether_uri_hash.routed_away", 30) >= 30);
    home.set_healthy(true);
    envoy.wait_for_health(home, true);
    // After the 5 s cooldown (long enough that the 30 requests above never straddle its end on
    // a loaded machine) the primary is tried again and keeps the project.
    wait_for("the project to return to its node", Duration::from_secs(15), || {
        (node_of(&get(&envoy, project)) == home_name).then_some(())
    });
    for _ in 0..10 {
        assert_eq!(node_of(&get(&envoy, project)), home_name);
    }
}

#[test]
fn paths_outside_the_prefixes_are_untouched() {
    let n = nodes();
    let envoy = envoy(&n, vec![WasmFilter::new("uri-hash", &config(&n))]);
    let mut seen = BTreeSet::new();
    for i in 0..30 {
        let r = get(&envoy, &format!("/login?i={i}"));
        let echoed = r.json()["headers"].as_array().unwrap().iter().any(|h| h[0] == HEADER);
        assert!(!echoed, "an unhashed request carried a session header");
        assert_eq!(r.header(HEADER), None);
        seen.insert(node_of(&r));
    }
    assert!(seen.len() >= 2, "the load balancer spreads them: {seen:?}");
    assert_eq!(envoy.counters_after_tick(["wasmcustom.tether_uri_hash.hashed"]), [0]);
}

#[test]
fn a_forged_session_header_does_not_move_a_project() {
    let n = nodes();
    let envoy = envoy(&n, vec![WasmFilter::new("uri-hash", &config(&n))]);
    let home = node_of(&get(&envoy, "/project/abc/compile"));
    use base64::Engine;
    for target in &n {
        let forged = base64::engine::general_purpose::STANDARD.encode(target.addr.to_string());
        let r = request(envoy.listener, "GET", "/project/abc/compile", &[(HEADER, &forged)]).unwrap();
        assert_eq!(node_of(&r), home);
    }
}

#[test]
fn project_routes_win_over_the_session_cookie_which_stays_put() {
    let n = nodes();
    let affinity = format!(r#"{{"nodes": {}, "cookie": {{"keys": ["uri-hash-e2e-key-0123456789"]}}}}"#, nodes_json(&n));
    let envoy = envoy(&n, vec![WasmFilter::new("uri-hash", &config(&n)), WasmFilter::new("affinity", &affinity)]);
    let project_home = node_of(&get(&envoy, "/project/p1/compile"));
    // A browser session somewhere else.
    let (cookie, session_home) = loop {
        let r = get(&envoy, "/");
        if node_of(&r) != project_home {
            let set = r.header("set-cookie").unwrap().split(';').next().unwrap().to_string();
            break (set, node_of(&r));
        }
    };
    for _ in 0..10 {
        let r = request(envoy.listener, "GET", "/project/p1/compile", &[("cookie", &cookie)]).unwrap();
        assert_eq!(node_of(&r), project_home, "the project's node, not the session's");
        assert!(r.header("set-cookie").is_none(), "the session cookie is not moved by project routes");
        let r = request(envoy.listener, "GET", "/dashboard", &[("cookie", &cookie)]).unwrap();
        assert_eq!(node_of(&r), session_home, "{r:?} cookie {cookie}");
    }
}
