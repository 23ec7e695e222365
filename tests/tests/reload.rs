//! Configuration reloads while serving: Envoy reads its listener and cluster from files (LDS/CDS
//! `path_config_source`) and picks up atomic replacements, as a control plane would push them.
//! - A node removed from the cluster and the nodes table: its sessions move cleanly, everyone
//!   else stays, and no request fails during the reload.
//! - A filter configuration made invalid: Envoy rejects the update and keeps serving with the
//!   old configuration whole, never with half of it.

// Needs Envoy (scripts/setup) and the built modules (scripts/build): `scripts/test` runs it.
#![cfg(feature = "e2e")]

use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tether_e2e::http::request;
use tether_e2e::node::{nodes_json, three_nodes};
use tether_e2e::{free_port, wait_for, Envoy, EnvoyConfig, ScratchDir, TestNode, WasmFilter};

const HEADER: &str = "x-tether-session";
const KEY: &str = "reload-test-key-0123456789";

/// Envoy with its listener and cluster in watched files.
struct Dynamic {
    envoy: Envoy,
    lds: std::path::PathBuf,
    cds: std::path::PathBuf,
    port: u16,
    _dir: ScratchDir,
}

fn affinity_config(nodes: &[&TestNode], extra: &str) -> EnvoyConfig {
    let table = nodes_json(nodes);
    let filter =
        WasmFilter::new("affinity", &format!(r#"{{"nodes": {table}, "cookie": {{"keys": ["{KEY}"]{extra}}}}}"#));
    EnvoyConfig::new(vec![filter], nodes).with_routing(HEADER)
}

/// (listener, cluster) of a generated config, the listener on `port`.
fn resources(config: &EnvoyConfig, port: u16) -> (Value, Value) {
    let v: Value = serde_yaml_ng::from_str(&config.yaml()).unwrap();
    let mut listener = v["static_resources"]["listeners"][0].clone();
    listener["address"]["socket_address"]["port_value"] = json!(port);
    listener["@type"] = json!("type.googleapis.com/envoy.config.listener.v3.Listener");
    let mut cluster = v["static_resources"]["clusters"][0].clone();
    cluster["@type"] = json!("type.googleapis.com/envoy.config.cluster.v3.Cluster");
    (listener, cluster)
}

/// Replaces a watched file atomically (write, then rename over it), as Envoy expects.
fn publish(path: &std::path::Path, resource: &Value) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, json!({ "resources": [resource] }).to_string()).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

impl Dynamic {
    fn start(config: &EnvoyConfig) -> Dynamic {
        let dir = ScratchDir::new("dynamic");
        let port = free_port();
        let (lds, cds) = (dir.join("lds.json"), dir.join("cds.json"));
        let (listener, cluster) = resources(config, port);
        publish(&cds, &cluster);
        publish(&lds, &listener);
        let source =
            |path: &std::path::Path| json!({ "path_config_source": { "path": path }, "resource_api_version": "V3" });
        let bootstrap = json!({
            "node": { "id": "tether-reload", "cluster": "tether" },
            "admin": { "address": { "socket_address": { "address": "127.0.0.1", "port_value": 0 } } },
            "dynamic_resources": { "lds_config": source(&lds), "cds_config": source(&cds) },
        });
        let envoy = Envoy::start_yaml(&bootstrap.to_string(), &[]);
        for addr in &config.endpoints {
            envoy.wait_for_endpoint_health(*addr, true);
        }
        Dynamic { envoy, lds, cds, port, _dir: dir }
    }

    /// Publishes `config` and waits until Envoy has applied (or, with `expect_rejection`,
    /// rejected) the listener update.
    fn reload(&self, config: &EnvoyConfig, expect_rejection: bool) {
        let (listener, cluster) = resources(config, self.port);
        let (cds_before, lds_ok, lds_rejected) = (
            self.envoy.stat("cluster_manager.cds.update_success"),
            self.envoy.stat("listener_manager.lds.update_success"),
            self.envoy.stat("listener_manager.lds.update_rejected"),
        );
        publish(&self.cds, &cluster);
        wait_for("the cluster update", Duration::from_secs(10), || {
            (self.envoy.stat("cluster_manager.cds.update_success") > cds_before).then_some(())
        });
        publish(&self.lds, &listener);
        wait_for("the listener update to be applied or rejected", Duration::from_secs(10), || {
            let (ok, rejected) = (
                self.envoy.stat("listener_manager.lds.update_success"),
                self.envoy.stat("listener_manager.lds.update_rejected"),
            );
            match expect_rejection {
                false => (ok > lds_ok).then_some(()),
                true => (rejected > lds_rejected).then_some(()),
            }
        });
        // A new filter chain takes over once the old one drains: wait for the new listener's
        // warm-up to finish (no listener left warming).
        wait_for("listeners to be active", Duration::from_secs(10), || {
            (self.envoy.stat("listener_manager.total_listeners_warming") == 0).then_some(())
        });
    }
}

/// Fresh sessions until every node has one: node name -> cookie.
fn a_session_per_node(envoy: &Envoy, nodes: usize) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for _ in 0..60 {
        let r = request(envoy.listener, "GET", "/login", &[]).unwrap();
        let node = r.header("x-node").unwrap().to_string();
        let cookie = r.header("set-cookie").unwrap().split(';').next().unwrap().to_string();
        out.entry(node).or_insert(cookie);
        if out.len() == nodes {
            return out;
        }
    }
    panic!("60 new sessions did not reach all {nodes} nodes: {out:?}");
}

#[test]
fn removing_a_node_on_reload_moves_only_its_sessions_and_fails_nothing() {
    let nodes = three_nodes();
    let all: Vec<&TestNode> = nodes.iter().collect();
    let d = Dynamic::start(&affinity_config(&all, ""));
    let sessions = a_session_per_node(&d.envoy, 3);

    // Load during the reload: every session, over and over; any non-200 is a failure.
    let stop = Arc::new(AtomicBool::new(false));
    let (sent, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let load = {
        let (stop, sent, failed, addr) = (stop.clone(), sent.clone(), failed.clone(), d.envoy.listener);
        let cookies: Vec<String> = sessions.values().cloned().collect();
        std::thread::spawn(move || {
            while !stop.load(Ordering::SeqCst) {
                for c in &cookies {
                    sent.fetch_add(1, Ordering::SeqCst);
                    let ok = request(addr, "GET", "/doc", &[("cookie", c)]).is_ok_and(|r| r.status == 200);
                    if !ok {
                        failed.fetch_add(1, Ordering::SeqCst);
                    }
                }
            }
        })
    };
    let two: Vec<&TestNode> = nodes.iter().take(2).collect();
    d.reload(&affinity_config(&two, ""), false);
    // Keep the load going a little after the switch, then stop it.
    let after = sent.load(Ordering::SeqCst) + 60;
    wait_for("load after the reload", Duration::from_secs(10), || (sent.load(Ordering::SeqCst) > after).then_some(()));
    stop.store(true, Ordering::SeqCst);
    load.join().unwrap();
    assert_eq!(
        failed.load(Ordering::SeqCst),
        0,
        "requests failed during the reload (of {})",
        sent.load(Ordering::SeqCst)
    );

    // node-3's session moved (a new cookie for a remaining node); the others did not.
    let moved = request(d.envoy.listener, "GET", "/doc", &[("cookie", &sessions["node-3"])]).unwrap();
    assert_ne!(moved.header("x-node"), Some("node-3"));
    assert!(moved.header("set-cookie").is_some(), "the removed node's session gets a new cookie");
    for name in ["node-1", "node-2"] {
        for _ in 0..5 {
            let r = request(d.envoy.listener, "GET", "/doc", &[("cookie", &sessions[name])]).unwrap();
            assert_eq!(r.header("x-node"), Some(name), "a remaining node's session moved");
            assert_eq!(r.header("set-cookie"), None);
        }
    }
    assert!(d.envoy.error_lines().is_empty(), "{:?}", d.envoy.error_lines());
}

#[test]
fn an_invalid_filter_configuration_on_reload_is_rejected_and_the_old_one_keeps_serving() {
    let nodes = three_nodes();
    let all: Vec<&TestNode> = nodes.iter().collect();
    let d = Dynamic::start(&affinity_config(&all, ""));
    let sessions = a_session_per_node(&d.envoy, 3);

    // SameSite=None without Secure: refused by the filter, so Envoy must reject the listener.
    d.reload(&affinity_config(&all, r#", "same_site": "None""#), true);
    d.envoy.wait_for_log("affinity: invalid configuration: cookie.same_site");
    // The old configuration, whole: sessions stick and new sessions get the old cookie (Lax).
    for (name, cookie) in &sessions {
        for _ in 0..3 {
            let r = request(d.envoy.listener, "GET", "/doc", &[("cookie", cookie)]).unwrap();
            assert_eq!((r.status, r.header("x-node")), (200, Some(name.as_str())));
        }
    }
    let fresh = request(d.envoy.listener, "GET", "/login", &[]).unwrap();
    let set = fresh.header("set-cookie").unwrap_or_default();
    assert!(set.contains("SameSite=Lax"), "the rejected configuration leaked in: {set}");
}
