//! path-pin end to end: real Envoy with the routing contract (stateful_session, header mode),
//! three test nodes, the first also serving a git repository; real git over smart HTTP.

// Needs Envoy (scripts/setup) and the built modules (scripts/build): `scripts/test` runs it.
#![cfg(feature = "e2e")]

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};
use tether_e2e::{curl, Envoy, EnvoyConfig, ScratchDir, TestNode, WasmFilter};

const HEADER: &str = "x-tether-session";

struct Cluster {
    nodes: Vec<TestNode>,
    _git_root: ScratchDir,
}

fn git(dir: &Path, args: &[&str]) -> std::process::Output {
    Command::new("git")
        .args(["-c", "user.name=Tether Test", "-c", "user.email=test@tether.invalid", "-c", "protocol.version=2"])
        .args(args)
        .current_dir(dir)
        .env("GIT_TERMINAL_PROMPT", "0")
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("HOME", dir)
        .output()
        .unwrap_or_else(|e| panic!("cannot run git (scripts/setup installs it): {e}"))
}

fn git_ok(dir: &Path, args: &[&str]) -> String {
    let out = git(dir, args);
    assert!(
        out.status.success(),
        "git {args:?} failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// node-1 serves `repo.git` (one commit on main); node-2 and node-3 have no repositories.
fn cluster() -> Cluster {
    let root = ScratchDir::new("git-root");
    git_ok(&root.path, &["init", "-q", "--bare", "--initial-branch=main", "repo.git"]);
    git_ok(&root.join("repo.git"), &["config", "http.receivepack", "true"]);
    let seed = root.join("seed");
    std::fs::create_dir_all(&seed).unwrap();
    git_ok(&seed, &["init", "-q", "--initial-branch=main"]);
    std::fs::write(seed.join("main.tex"), "\\documentclass{article}\n").unwrap();
    git_ok(&seed, &["add", "main.tex"]);
    git_ok(&seed, &["commit", "-q", "-m", "first"]);
    git_ok(&seed, &["push", "-q", &root.join("repo.git").display().to_string(), "main"]);
    let nodes =
        vec![TestNode::start_with_git("node-1", &root.join("")), TestNode::start("node-2"), TestNode::start("node-3")];
    Cluster { nodes, _git_root: root }
}

impl Cluster {
    fn nodes_json(&self) -> String {
        tether_e2e::node::nodes_json(&self.nodes)
    }

    fn pin_config(&self, node: &str) -> String {
        format!(
            r#"{{"nodes": {}, "rules": [{{"name": "git", "path_prefix": "/git/", "node": "{node}"}}]}}"#,
            self.nodes_json()
        )
    }

    fn envoy(&self, strict: bool) -> Envoy {
        let refs: Vec<&TestNode> = self.nodes.iter().collect();
        let mut config =
            EnvoyConfig::new(vec![WasmFilter::new("path-pin", &self.pin_config("node-1"))], &refs).with_routing(HEADER);
        if strict {
            config.strict_prefixes = vec!["/git/".to_string()];
        }
        Envoy::start(&config)
    }

    fn session_value_for(&self, index: usize) -> String {
        use base64::Engine;
        base64::engine::general_purpose::STANDARD.encode(self.nodes[index].addr.to_string())
    }
}

#[test]
fn git_clone_and_push_through_envoy_reach_the_sibling_node() {
    let c = cluster();
    // The Overleaf chain: path-pin before affinity. A browser holds a session cookie for a
    // node other than node-1, and git sends it along (as a git credential helper or a shared
    // cookie jar would): git must still reach node-1, and the session must not move.
    let refs: Vec<&TestNode> = c.nodes.iter().collect();
    let affinity = format!(r#"{{"nodes": {}, "cookie": {{"keys": ["path-pin-e2e-key-0123456789"]}}}}"#, c.nodes_json());
    let filters = vec![WasmFilter::new("path-pin", &c.pin_config("node-1")), WasmFilter::new("affinity", &affinity)];
    let envoy = Envoy::start(&EnvoyConfig::new(filters, &refs).with_routing(HEADER));
    let cookie = loop {
        let r = tether_e2e::http::request(envoy.listener, "GET", "/", &[]).unwrap();
        if r.header("x-node") != Some("node-1") {
            break r.header("set-cookie").unwrap().split(';').next().unwrap().to_string();
        }
    };
    let with_cookie = format!("http.extraHeader=Cookie: {cookie}");
    let work = ScratchDir::new("clones");
    let url = envoy.url("/git/repo.git");
    for i in 0..10 {
        git_ok(&work.path, &["-c", &with_cookie, "clone", "-q", &url, &format!("clone-{i}")]);
        assert!(work.join(&format!("clone-{i}/main.tex")).exists(), "clone {i} is incomplete");
    }
    let clone = work.join("clone-0");
    std::fs::write(clone.join("chapter.tex"), "Hello from a push through Envoy\n").unwrap();
    git_ok(&clone, &["add", "chapter.tex"]);
    git_ok(&clone, &["commit", "-q", "-m", "second"]);
    git_ok(&clone, &["-c", &with_cookie, "push", "-q", "origin", "main"]);
    git_ok(&work.path, &["clone", "-q", &url, "after-push"]);
    assert!(work.join("after-push/chapter.tex").exists(), "the pushed commit is not in a fresh clone");

    let git_requests: usize = c.nodes[0].requests().iter().filter(|r| r.path.starts_with("/git/")).count();
    assert!(git_requests >= 24, "node-1 saw only {git_requests} git requests");
    for other in &c.nodes[1..] {
        assert!(other.requests().iter().all(|r| !r.path.starts_with("/git/")), "{} saw git traffic", other.name);
    }
    assert_eq!(envoy.counter("wasmcustom.tether_path_pin.pinned.git", git_requests as u64), git_requests as u64);
    let [did_not_serve, redispatched, pinned] = envoy.counters_after_tick([
        "wasmcustom.tether_path_pin.pinned_node_did_not_serve",
        "wasmcustom.tether_affinity.redispatched",
        "wasmcustom.tether_affinity.pinned",
    ]);
    assert_eq!(did_not_serve, 0);
    assert_eq!(redispatched, 0, "git traffic never moves the session");
    assert_eq!(pinned, 0, "affinity left every git request alone");
}

#[test]
fn requests_outside_the_rules_are_left_to_the_load_balancer() {
    let c = cluster();
    let envoy = c.envoy(false);
    let mut served_by = std::collections::BTreeSet::new();
    for i in 0..30 {
        let r = curl(&[&envoy.url(&format!("/project/{i}"))], None);
        assert_eq!(r.status(), 200);
        assert_eq!(r.header(HEADER), None, "the session header leaked to the client");
        let echo = r.json();
        let seen_header = echo["headers"].as_array().unwrap().iter().any(|h| h[0] == HEADER);
        assert!(!seen_header, "an unpinned request carried a session header to the node: {echo}");
        served_by.insert(echo["node"].as_str().unwrap().to_string());
    }
    assert!(served_by.len() >= 2, "30 unpinned requests all went to {served_by:?}");
    assert_eq!(envoy.counters_after_tick(["wasmcustom.tether_path_pin.pinned.git"]), [0]);
}

#[test]
fn a_client_cannot_steer_with_the_session_header() {
    let c = cluster();
    let envoy = c.envoy(false);
    let forged = format!("{HEADER}: {}", c.session_value_for(2));
    // A pinned path stays pinned.
    let r = curl(&["-H", &forged, &envoy.url("/git/repo.git/info/refs?service=git-upload-pack")], None);
    assert_eq!((r.status(), r.header("x-node")), (200, Some("node-1")), "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.header(HEADER), None);
    // Elsewhere the forged header is removed before Envoy could act on it.
    for i in 0..10 {
        let r = curl(&["-H", &forged, &envoy.url(&format!("/other/{i}"))], None);
        let echo = r.json();
        let seen = echo["headers"].as_array().unwrap().iter().any(|h| h[0] == HEADER);
        assert!(!seen, "the node received the client's session header: {echo}");
        assert_eq!(r.header(HEADER), None);
    }
    assert_eq!(envoy.counter("wasmcustom.tether_path_pin.client_session_header_removed", 11), 11);
}

#[test]
fn an_earlier_decision_in_the_chain_stands() {
    let c = cluster();
    let refs: Vec<&TestNode> = c.nodes.iter().collect();
    // Two path-pin instances, each in its own VM: the first pins /git/ to node-1, the second
    // would pin it to node-2 but sees tether.routed_by and leaves the request alone.
    let first = WasmFilter::instance("path-pin", "first", &c.pin_config("node-1"));
    let second = WasmFilter::instance("path-pin", "second", &c.pin_config("node-2"));
    let envoy = Envoy::start(&EnvoyConfig::new(vec![first, second], &refs).with_routing(HEADER));
    for _ in 0..5 {
        let r = curl(&[&envoy.url("/git/repo.git/info/refs?service=git-upload-pack")], None);
        assert_eq!(r.header("x-node"), Some("node-1"));
    }
}

#[test]
fn unhealthy_sibling_falls_back_to_another_node() {
    let c = cluster();
    let envoy = c.envoy(false);
    c.nodes[0].set_healthy(false);
    envoy.wait_for_health(&c.nodes[0], false);
    let r = curl(&[&envoy.url("/git/repo.git/info/refs?service=git-upload-pack")], None);
    // Another node answered (it has no repository: 404 with its own name).
    assert_ne!(r.header("x-node"), Some("node-1"), "status {}", r.status());
    assert!(r.header("x-node").is_some(), "no node answered: {} {}", r.status(), String::from_utf8_lossy(&r.body));
    assert_eq!(envoy.counter("wasmcustom.tether_path_pin.pinned_node_did_not_serve", 1), 1);
    c.nodes[0].set_healthy(true);
    envoy.wait_for_health(&c.nodes[0], true);
    let r = curl(&[&envoy.url("/git/repo.git/info/refs?service=git-upload-pack")], None);
    assert_eq!(r.header("x-node"), Some("node-1"), "back on the sibling once it is healthy");
}

#[test]
fn strict_configuration_answers_503_quickly_when_the_sibling_is_unhealthy() {
    let c = cluster();
    let envoy = c.envoy(true);
    let r = curl(&[&envoy.url("/git/repo.git/info/refs?service=git-upload-pack")], None);
    assert_eq!(r.header("x-node"), Some("node-1"));
    c.nodes[0].set_healthy(false);
    envoy.wait_for_health(&c.nodes[0], false);
    let started = Instant::now();
    let r = curl(&[&envoy.url("/git/repo.git/info/refs?service=git-upload-pack")], None);
    assert_eq!(r.status(), 503, "{}", String::from_utf8_lossy(&r.body));
    assert!(started.elapsed() < Duration::from_secs(2), "503 took {:?}", started.elapsed());
    assert_eq!(r.header("x-node"), None);
    // Other paths are unaffected.
    assert_eq!(curl(&[&envoy.url("/project/1")], None).status(), 200);
}
