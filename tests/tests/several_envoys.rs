//! Several Envoys with one configuration in front of the same nodes, as behind a DNS round robin
//! or an L4 balancer: a request may reach any of them. Sessions and projects must not care
//! which; a node's failure and recovery must look the same from each; a key rotation rolled out
//! one Envoy at a time must lose no session.

// Needs Envoy (scripts/setup) and the built modules (scripts/build): `scripts/test` runs it.
#![cfg(feature = "e2e")]

use std::collections::BTreeMap;
use std::time::Duration;
use tether_core::token::{self, Key};
use tether_e2e::eds::EcdsFile;
use tether_e2e::http::{request, Response};
use tether_e2e::node::{nodes_json, three_nodes};
use tether_e2e::{wait_for, Envoy, EnvoyConfig, TestNode, WasmFilter};

const HEADER: &str = "x-tether-session";
const OLD: &str = "e2e-old-key-0123456789abcdef";
const NEW: &str = "e2e-new-key-0123456789abcdef";

fn affinity(nodes: &[TestNode], keys: &[&str]) -> String {
    let keys: Vec<String> = keys.iter().map(|k| format!("\"{k}\"")).collect();
    format!(
        r#"{{"nodes": {}, "cookie": {{"keys": [{}], "maxidle": "1h", "refresh": "1s"}}}}"#,
        nodes_json(nodes),
        keys.join(", ")
    )
}

fn uri_hash(nodes: &[TestNode]) -> String {
    format!(r#"{{"nodes": {}, "prefixes": ["/project/"], "depth": 2, "failover_cooldown": "1s"}}"#, nodes_json(nodes))
}

/// Three Envoys, one configuration (uri-hash, then affinity); each Envoy's affinity comes from
/// its own ECDS file so that a key change can reach one Envoy at a time.
struct Fleet {
    envoys: Vec<Envoy>,
    ecds: Vec<EcdsFile>,
    filters: Vec<WasmFilter>,
}

impl Fleet {
    fn start(nodes: &[TestNode], keys: &[&str]) -> Fleet {
        let refs: Vec<&TestNode> = nodes.iter().collect();
        let (mut envoys, mut ecds, mut filters) = (Vec::new(), Vec::new(), Vec::new());
        for _ in 0..3 {
            let mut filter = WasmFilter::new("affinity", &affinity(nodes, keys));
            let file = EcdsFile::new(&filter);
            filter.ecds = Some(file.path());
            let chain = vec![WasmFilter::new("uri-hash", &uri_hash(nodes)), filter.clone()];
            let envoy = Envoy::start(&EnvoyConfig::new(chain, &refs).with_routing(HEADER));
            for node in nodes {
                envoy.wait_for_health(node, true);
            }
            envoys.push(envoy);
            ecds.push(file);
            filters.push(filter);
        }
        Fleet { envoys, ecds, filters }
    }

    /// Gives Envoy `i` these affinity keys, and waits until it has taken them.
    fn set_keys(&mut self, i: usize, nodes: &[TestNode], keys: &[&str]) {
        let (envoy, filter) = (&self.envoys[i], &self.filters[i]);
        let before = EcdsFile::reloads(envoy, filter);
        self.ecds[i].publish(&WasmFilter { config_json: affinity(nodes, keys), ..filter.clone() });
        wait_for("Envoy to take the new keys", Duration::from_secs(10), || {
            (EcdsFile::reloads(envoy, filter) > before).then_some(())
        });
    }

    fn counter(&self, name: &str) -> u64 {
        self.envoys.iter().map(|e| e.counters_after_tick([name])[0]).sum()
    }
}

fn get(envoy: &Envoy, path: &str, cookie: Option<&str>) -> Response {
    let headers: Vec<(&str, &str)> = cookie.map(|c| ("cookie", c)).into_iter().collect();
    let r = request(envoy.listener, "GET", path, &headers).unwrap();
    assert_eq!(r.status, 200, "{path}: {r:?}");
    r
}

/// A browser's session: its cookie and the node it is on.
struct Session {
    cookie: String,
    node: String,
}

impl Session {
    /// One request through `envoy`: the node that served, and the cookie kept up to date as a
    /// browser does.
    fn visit(&mut self, envoy: &Envoy) -> String {
        let r = get(envoy, "/", Some(&self.cookie));
        if let Some(c) = r.set_cookie("SERVERID") {
            self.cookie = c;
        }
        r.node()
    }
}

fn sessions(fleet: &Fleet, count: usize) -> Vec<Session> {
    (0..count)
        .map(|i| {
            let r = get(&fleet.envoys[i % 3], "/", None);
            Session { cookie: r.set_cookie("SERVERID").expect("a new session's cookie"), node: r.node() }
        })
        .collect()
}

/// Visits every session through each Envoy in turn; how many stayed on their node throughout.
fn round(fleet: &Fleet, sessions: &mut [Session]) -> usize {
    let mut kept = 0;
    for (i, s) in sessions.iter_mut().enumerate() {
        let home = s.node.clone();
        let served: Vec<String> = (0..3).map(|k| s.visit(&fleet.envoys[(i + k) % 3])).collect();
        if served.iter().all(|n| *n == home) {
            kept += 1;
        }
    }
    kept
}

fn project_homes(envoy: &Envoy, projects: &[String]) -> BTreeMap<String, String> {
    projects.iter().map(|p| (p.clone(), get(envoy, p, None).node())).collect()
}

#[test]
fn any_envoy_honours_another_ones_cookie_and_all_agree_through_a_node_failure() {
    let mut nodes = three_nodes();
    let fleet = Fleet::start(&nodes, &[OLD]);
    let mut sessions = sessions(&fleet, 30);
    assert_eq!(round(&fleet, &mut sessions), 30, "a cookie from one Envoy is honoured by the others");
    let projects: Vec<String> = (0..60).map(|i| format!("/project/{:024x}/compile", i * 7919 + 13)).collect();
    let homes = project_homes(&fleet.envoys[0], &projects);
    for envoy in &fleet.envoys[1..] {
        assert_eq!(project_homes(envoy, &projects), homes, "every project hashes alike on every Envoy");
    }

    // node-2 dies. Its sessions move once: the first Envoy to see one picks a node and reissues
    // the cookie, and the others follow the cookie. No other session moves.
    let dead = nodes[1].name.clone();
    let port = nodes[1].addr.port();
    nodes[1].kill();
    for envoy in &fleet.envoys {
        envoy.wait_for_health(&nodes[1], false);
    }
    let on_dead = sessions.iter().filter(|s| s.node == dead).count();
    let mut moved_once = 0;
    let mut wrongly_moved = 0;
    for (i, s) in sessions.iter_mut().enumerate() {
        let first = s.visit(&fleet.envoys[i % 3]);
        let after: Vec<String> = (1..4).map(|k| s.visit(&fleet.envoys[(i + k) % 3])).collect();
        assert!(after.iter().all(|n| *n == first), "{} then {after:?}", s.node);
        if s.node == dead {
            assert_ne!(first, dead);
            moved_once += 1;
        } else if first != s.node {
            wrongly_moved += 1;
        }
        s.node = first;
    }
    assert_eq!((moved_once, wrongly_moved), (on_dead, 0));
    // Each Envoy learns of the failure from its own first request to a dead node's project,
    // which goes where its load balancer sends it (uri-hash README); from then on, every one of
    // those projects has one home, the same on every Envoy.
    let first_pass: Vec<BTreeMap<String, String>> =
        fleet.envoys.iter().map(|envoy| project_homes(envoy, &projects)).collect();
    let down = project_homes(&fleet.envoys[0], &projects);
    for envoy in &fleet.envoys[1..] {
        assert_eq!(project_homes(envoy, &projects), down, "a dead node's projects go to the same place everywhere");
    }
    let projects_moved = homes.iter().filter(|(p, h)| down[*p] != **h).count();
    let discovering: Vec<usize> =
        first_pass.iter().map(|first| first.iter().filter(|(p, h)| down[*p] != **h).count()).collect();
    assert!(discovering.iter().all(|&n| n <= 1), "one request per Envoy discovers: {discovering:?}");
    assert!(homes.iter().all(|(p, h)| down[p] == *h || *h == dead), "only the dead node's projects move");

    // node-2 comes back on its address: its projects return on every Envoy; sessions that moved
    // stay where they went (HAProxy's redispatch does the same).
    nodes[1] = TestNode::start_on_port(&dead, port);
    for envoy in &fleet.envoys {
        envoy.wait_for_health(&nodes[1], true);
        wait_for("the projects to return", Duration::from_secs(10), || {
            (project_homes(envoy, &projects) == homes).then_some(())
        });
    }
    assert_eq!(round(&fleet, &mut sessions), 30, "no session moves back");
    eprintln!(
        "three Envoys: 30 sessions, each visited through all three, kept 30; {dead} killed: {moved_once} sessions \
         moved once, {wrongly_moved} others moved; {projects_moved} of 60 projects moved alike on all three (requests \
         elsewhere while each Envoy discovered the failure: {discovering:?}) and came back after recovery"
    );
    assert_eq!(fleet.counter("wasmcustom.tether_affinity.redispatched"), on_dead as u64);
}

/// What a cookie is signed with.
fn signed_with(cookie: &str, key: &str) -> bool {
    let key = Key::new(key.as_bytes()).unwrap();
    token::verify(std::slice::from_ref(&key), "SERVERID", cookie.trim_start_matches("SERVERID=").as_bytes()).is_some()
}

#[test]
fn a_key_rotation_rolled_out_one_envoy_at_a_time_loses_no_session() {
    let nodes = three_nodes();
    let mut fleet = Fleet::start(&nodes, &[OLD]);
    let mut sessions = sessions(&fleet, 12);
    let mut kept_after_each_step = Vec::new();
    // 1. The new key accepted everywhere (not signing yet), one Envoy at a time.
    // 2. The new key signs, one Envoy at a time: the others already accept it.
    // 3. Once every live cookie is on the new key, the old key retired, one Envoy at a time.
    for (step, keys) in [(1, [OLD, NEW].as_slice()), (2, &[NEW, OLD]), (3, &[NEW])] {
        if step == 3 {
            // Cookies are re-signed when last-seen is refreshed (refresh 1s here; maxidle / 10 by
            // default): an active session is on the new key within one refresh.
            wait_for("every session to be re-signed with the new key", Duration::from_secs(10), || {
                round(&fleet, &mut sessions);
                sessions.iter().all(|s| signed_with(&s.cookie, NEW) && !signed_with(&s.cookie, OLD)).then_some(())
            });
        }
        for i in 0..3 {
            fleet.set_keys(i, &nodes, keys);
            kept_after_each_step.push(round(&fleet, &mut sessions));
        }
    }
    eprintln!("key rotation over three Envoys, sessions kept after each of the 9 updates: {kept_after_each_step:?}");
    assert!(kept_after_each_step.iter().all(|&k| k == 12), "{kept_after_each_step:?}");
    assert_eq!(fleet.counter("wasmcustom.tether_affinity.invalid_cookie"), 0);
}

#[test]
fn skipping_the_accept_everywhere_step_loses_sessions() {
    // The control arm of the rotation above: the new key made the signer on one Envoy while the
    // others do not know it yet. Its new sessions are strangers to them.
    let nodes = three_nodes();
    let mut fleet = Fleet::start(&nodes, &[OLD]);
    fleet.set_keys(0, &nodes, &[NEW, OLD]);
    for _ in 0..6 {
        let cookie = get(&fleet.envoys[0], "/", None).set_cookie("SERVERID").unwrap();
        assert!(signed_with(&cookie, NEW));
        let r = get(&fleet.envoys[1], "/", Some(&cookie));
        assert!(r.set_cookie("SERVERID").is_some_and(|c| signed_with(&c, OLD)), "answered as a new session");
    }
    assert_eq!(fleet.envoys[1].counter("wasmcustom.tether_affinity.invalid_cookie", 6), 6, "all six lost");
}
