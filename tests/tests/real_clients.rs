//! The clients the guides' apps really use, not our test node and curl: socket.io (Overleaf's
//! editor) with its own server library behind the Overleaf sample. Long polling fails outright
//! ("Session ID unknown", HTTP 400) when two requests of one session reach different processes,
//! which makes it an honest test of affinity; the control arms (no affinity, or a client that
//! drops the cookie) must fail.
//!
//! The libraries are pinned in tests/clients/package-lock.json; scripts/setup installs them.
//! The browser test (Debian's chromium through playwright-core) is ignored here and run by
//! scripts/browser, which installs chromium.

// Needs Envoy, Node.js and tests/clients/node_modules (scripts/setup), and the built modules.
#![cfg(feature = "e2e")]

use serde_json::{json, Value};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;
use tether_e2e::sample::{Sample, SAMPLE_ENV};
use tether_e2e::{free_port, repo_root, wait_for, Envoy};

fn clients_dir() -> PathBuf {
    let dir = repo_root().join("tests/clients");
    assert!(dir.join("node_modules/socket.io").exists(), "tests/clients/node_modules is missing: run scripts/setup");
    dir
}

/// An app node: `node tests/clients/server.js NAME PORT` (socket.io and SockJS servers).
struct AppNode {
    child: Child,
    addr: SocketAddr,
}

impl AppNode {
    fn start(name: &str) -> AppNode {
        let port = free_port();
        let mut cmd = Command::new("node");
        cmd.arg("server.js").arg(name).arg(port.to_string()).current_dir(clients_dir());
        cmd.stdout(Stdio::null()).stderr(Stdio::null());
        tether_e2e::die_with_parent(&mut cmd);
        let child = cmd.spawn().unwrap_or_else(|e| panic!("cannot run node (scripts/setup installs it): {e}"));
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        wait_for(&format!("{name} to listen"), Duration::from_secs(10), || TcpStream::connect(addr).ok());
        AppNode { child, addr }
    }
}

impl Drop for AppNode {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One socket.io client session (tests/clients/client.js): `{ok, echoes, nodes, transport, errors}`.
fn socketio(url: &str, transports: &str, echoes: u32, with_credentials: bool) -> Value {
    let out = Command::new("node")
        .arg("client.js")
        .arg(url)
        .arg(transports)
        .arg(echoes.to_string())
        .arg(with_credentials.to_string())
        .current_dir(clients_dir())
        .output()
        .unwrap_or_else(|e| panic!("cannot run node: {e}"));
    let text = String::from_utf8_lossy(&out.stdout);
    let last = text.lines().last().unwrap_or_default();
    serde_json::from_str(last)
        .unwrap_or_else(|e| panic!("client.js said {text:?} ({e}); stderr: {}", String::from_utf8_lossy(&out.stderr)))
}

/// Envoy in front of `nodes` with no affinity: round robin, WebSocket upgrades, nothing else.
fn round_robin_envoy(nodes: &[SocketAddr]) -> Envoy {
    let endpoints: String = nodes
        .iter()
        .map(|a| {
            format!(
                "\n        - endpoint: {{ address: {{ socket_address: {{ address: 127.0.0.1, port_value: {} }} }} }}",
                a.port()
            )
        })
        .collect();
    let yaml = format!(
        r#"
admin:
  address: {{ socket_address: {{ address: 127.0.0.1, port_value: 0 }} }}
static_resources:
  listeners:
  - name: main
    address: {{ socket_address: {{ address: 127.0.0.1, port_value: 0 }} }}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: control
          upgrade_configs: [{{ upgrade_type: websocket }}]
          route_config:
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes: [{{ match: {{ prefix: / }}, route: {{ cluster: nodes, timeout: 0s }} }}]
          http_filters:
          - name: envoy.filters.http.router
            typed_config: {{ "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router }}
  clusters:
  - name: nodes
    type: STATIC
    lb_policy: ROUND_ROBIN
    load_assignment:
      cluster_name: nodes
      endpoints:
      - lb_endpoints:{endpoints}
"#
    );
    Envoy::start_yaml(&yaml, &[])
}

/// Three app nodes behind envoy/overleaf.yaml (with its route retry policy, or with retries
/// off), once Envoy sees them healthy; the sample's https origin.
fn overleaf_sample(retries: bool) -> ([AppNode; 3], Envoy, String) {
    let nodes =
        [AppNode::start("server-pro-ha-1"), AppNode::start("server-pro-ha-2"), AppNode::start("server-pro-ha-3")];
    let addrs: Vec<SocketAddr> = nodes.iter().map(|n| n.addr).collect();
    let mut sample = Sample::load_with("overleaf", &addrs);
    if !retries {
        assert!(sample.yaml.contains("num_retries: 3"));
        sample.yaml = sample.yaml.replace("num_retries: 3", "num_retries: 0");
    }
    let envoy = Envoy::start_yaml(&sample.yaml, SAMPLE_ENV);
    for addr in &addrs {
        envoy.wait_for_endpoint_health(*addr, true);
    }
    let origin = format!("https://{}", envoy.listener_named("https").unwrap());
    (nodes, envoy, origin)
}

#[test]
fn socketio_sessions_hold_through_the_overleaf_sample_and_fail_without_affinity() {
    let (nodes, _envoy, url) = overleaf_sample(true);
    let addrs: Vec<SocketAddr> = nodes.iter().map(|n| n.addr).collect();

    // Long polling only, and polling upgraded to WebSocket: 10 sessions each, 30 messages each,
    // every answer from the session's one node.
    let mut used = std::collections::BTreeSet::new();
    for (transports, last) in [("polling", "polling"), ("polling,websocket", "websocket")] {
        for _ in 0..10 {
            let r = socketio(&url, transports, 30, true);
            assert_eq!(r["ok"], true, "{transports}: {r}");
            assert_eq!(r["echoes"], 30);
            assert_eq!(r["nodes"].as_array().map(Vec::len), Some(1), "one node per session: {r}");
            assert_eq!(r["transport"], last, "{r}");
            used.insert(r["nodes"][0].as_str().unwrap().to_string());
        }
    }
    assert!(used.len() > 1, "new sessions spread: {used:?}");

    // A Node client without withCredentials sends no cookie: its polling requests scatter and
    // the server refuses them (the fact users trip on; browsers keep cookies by themselves).
    let cookieless: Vec<Value> = (0..10).map(|_| socketio(&url, "polling", 30, false)).collect();
    let failed = cookieless.iter().filter(|r| r["ok"] != true).count();

    // The control arm: the same nodes behind plain round robin, no affinity.
    let control = round_robin_envoy(&addrs);
    let control_url = format!("http://{}", control.listener);
    let runs: Vec<Value> = (0..10).map(|_| socketio(&control_url, "polling", 30, true)).collect();
    let control_failed = runs.iter().filter(|r| r["ok"] != true).count();
    eprintln!(
        "socket.io through the Overleaf sample: 20 of 20 sessions (10 polling, 10 upgraded) held on one node for \
         30 messages each; without withCredentials {failed} of 10 failed; without affinity {control_failed} of 10 \
         failed ({})",
        runs.iter().find(|r| r["ok"] != true).map(|r| r["errors"].to_string()).unwrap_or_default()
    );
    assert!(failed >= 8, "a cookieless client must lose its session: {cookieless:?}");
    assert!(control_failed >= 8, "without affinity, long polling must fail: {runs:?}");
}

/// One failover run: a socket.io session through the Overleaf sample (with the sample's route
/// retry policy, or with retries off), the node holding it killed after its first answer.
/// The client's summary line.
fn failover_run(transports: &str, retries: bool) -> Value {
    use std::io::{BufRead, BufReader};
    let (mut nodes, _envoy, url) = overleaf_sample(retries);
    let mut cmd = Command::new("node");
    cmd.args(["failover.js", &url, transports, "4000"]).current_dir(clients_dir()).stdout(Stdio::piped());
    tether_e2e::die_with_parent(&mut cmd);
    let mut client = cmd.spawn().unwrap();
    let mut lines = BufReader::new(client.stdout.take().unwrap()).lines();
    let first: Value = serde_json::from_str(&lines.next().unwrap().unwrap()).unwrap();
    let home = first["node"].as_str().unwrap().to_string();
    let index = ["server-pro-ha-1", "server-pro-ha-2", "server-pro-ha-3"].iter().position(|n| *n == home).unwrap();
    let _ = nodes[index].child.kill();
    let _ = nodes[index].child.wait();
    let summary: Value = lines
        .map_while(Result::ok)
        .filter_map(|l| serde_json::from_str::<Value>(&l).ok())
        .find(|v| v["summary"] == true)
        .unwrap();
    let _ = client.wait();
    let nodes_seen = summary["nodes"].as_array().unwrap();
    assert_eq!(nodes_seen.len(), 2, "moved once and stayed: {summary}");
    assert_eq!(nodes_seen[0], home.as_str());
    summary
}

#[test]
fn a_killed_nodes_socketio_sessions_reconnect_elsewhere_and_stay() {
    let mut report = Vec::new();
    for (transports, retries) in
        [("polling,websocket", true), ("polling,websocket", false), ("polling", true), ("polling", false)]
    {
        let s = failover_run(transports, retries);
        report.push(format!(
            "{transports}, retries {}: outage {} ms, {} disconnect(s), {} message(s) lost, {} answered",
            if retries { "on" } else { "off" },
            s["outage_ms"],
            s["disconnects"],
            s["lost"],
            s["answered"]
        ));
        assert!(s["answered"].as_u64().unwrap() > 20, "{s}");
    }
    eprintln!("socket.io failover through the Overleaf sample:\n  {}", report.join("\n  "));
}

/// Sessions of a real browser (tests/clients/browser.js): one JSON value per session.
fn browser(origin: &str, transport: &str, sessions: u32) -> Vec<Value> {
    let out = Command::new("node")
        .args(["browser.js", origin, transport, &sessions.to_string()])
        .current_dir(clients_dir())
        .output()
        .unwrap_or_else(|e| panic!("cannot run node: {e}"));
    assert!(out.status.success(), "browser.js: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

#[test]
#[ignore = "needs chromium: scripts/browser installs it and runs this"]
fn a_browser_keeps_its_session_on_one_node_with_socketio_and_sockjs() {
    let (nodes, _envoy, origin) = overleaf_sample(true);
    let addrs: Vec<SocketAddr> = nodes.iter().map(|n| n.addr).collect();
    let control = round_robin_envoy(&addrs);
    let control_origin = format!("http://{}", control.listener);
    let mut report = Vec::new();
    for (transport, last) in [
        ("polling", "polling"),
        ("websocket", "websocket"),
        ("sockjs", "xhr-polling"),
        ("sockjs-websocket", "websocket"),
    ] {
        let runs = browser(&origin, transport, 5);
        for r in &runs {
            assert_eq!(r["ok"], true, "{transport}: {r}");
            assert_eq!(r["nodes"].as_array().map(Vec::len), Some(1), "one node per session: {r}");
            assert_eq!(r["transport"], last, "{r}");
            // The browser's own view of the affinity cookie: Secure over https, HttpOnly (the
            // page's script cannot read it), SameSite Lax.
            let ours =
                r["cookies"].as_array().unwrap().iter().find(|c| c["name"] == "server-pro-ha").expect("the cookie");
            assert_eq!(
                (&ours["secure"], &ours["httpOnly"], &ours["sameSite"]),
                (&json!(true), &json!(true), &json!("Lax"))
            );
            assert!(!r["cookie"].as_str().unwrap_or_default().contains("server-pro-ha"), "HttpOnly: {r}");
        }
        let control_runs = browser(&control_origin, transport, 5);
        let control_failed = control_runs.iter().filter(|r| r["ok"] != true).count();
        report.push(format!("{transport}: 5 of 5 sessions on one node through the sample; without affinity {control_failed} of 5 failed"));
        // A WebSocket-only session is one connection: it needs no affinity once open.
        // socket.io's upgrade starts with polling, so it fails without affinity too.
        if transport != "sockjs-websocket" {
            assert!(control_failed >= 4, "polling without affinity must fail: {control_runs:?}");
        } else {
            assert_eq!(control_failed, 0, "{control_runs:?}");
        }
    }
    eprintln!("chromium through the Overleaf sample:\n  {}", report.join("\n  "));
}
