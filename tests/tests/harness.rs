//! The harness's own promises, so later filter tests can rely on them.

// Needs Envoy (scripts/setup) and the built modules (scripts/build): `scripts/test` runs it.
#![cfg(feature = "e2e")]

use std::time::Duration;
use tether_e2e::http::raw_request;
use tether_e2e::{wait_for, TestNode};

#[test]
fn test_node_health_can_be_switched() {
    let node = TestNode::start("n");
    assert_eq!(raw_request(node.addr, "GET", "/status").unwrap().0, 200);
    assert_eq!(raw_request(node.addr, "HEAD", "/status").unwrap().0, 200);
    node.set_healthy(false);
    assert_eq!(raw_request(node.addr, "GET", "/status").unwrap().0, 503);
    node.set_healthy(true);
    assert_eq!(raw_request(node.addr, "GET", "/status").unwrap().0, 200);
    assert!(node.requests().is_empty(), "status and control requests are not recorded");
}

#[test]
fn test_node_echoes_and_records_requests() {
    let node = TestNode::start("echo-node");
    let (status, body) = raw_request(node.addr, "GET", "/a/b?c=d").unwrap();
    assert_eq!(status, 200);
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["node"], "echo-node");
    assert_eq!(v["path"], "/a/b?c=d");
    let seen = wait_for("the request in the node's log", Duration::from_secs(5), || {
        node.requests_for("/a/b?c=d").into_iter().next()
    });
    assert_eq!((seen.method.as_str(), seen.state.as_str(), seen.body_bytes), ("GET", "complete", 0));
}

#[test]
fn test_node_websocket_echo() {
    let node = TestNode::start("ws");
    let (mut ws, _) = tungstenite::connect(format!("ws://{}/socket", node.addr)).unwrap();
    ws.send(tungstenite::Message::binary(vec![1, 2, 3])).unwrap();
    assert_eq!(ws.read().unwrap().into_data(), vec![1u8, 2, 3]);
}

#[test]
fn the_envoy_under_test_is_the_version_asked_for() {
    // scripts/matrix relies on it: TETHER_ENVOY_VERSION picks the binary (ENVOY_BIN aside).
    if std::env::var_os("ENVOY_BIN").is_some() {
        return;
    }
    let wanted = std::env::var("TETHER_ENVOY_VERSION")
        .ok()
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| tether_e2e::envoy::DEFAULT_ENVOY_VERSION.to_string());
    assert_eq!(tether_e2e::envoy::envoy_version(), wanted);
}
