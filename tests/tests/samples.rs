//! The sample configs in envoy/ run as users copy them (only their loopback ports and certificate
//! moved, see tests/src/sample.rs). Overleaf and ShareLaTeX are compared with HAProxy in parity.rs;
//! here: Rocket.Chat, Apostrophe and the demo.

use std::collections::BTreeMap;
use tether_e2e::http::tls_websocket_handshake;
use tether_e2e::sample::Sample;
use tether_e2e::{curl, CurlResponse, ScratchDir, TestNode};

const MIB: u64 = 1024 * 1024;

fn call(url: &str, extra: &[&str]) -> CurlResponse {
    let mut args = vec!["-k", "--http1.1"];
    args.extend_from_slice(extra);
    args.push(url);
    curl(&args, None)
}

fn received(r: &CurlResponse, name: &str) -> Vec<String> {
    r.json()["headers"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|h| h[0].as_str() == Some(name))
        .map(|h| h[1].as_str().unwrap().to_string())
        .collect()
}

fn node_of(r: &CurlResponse) -> String {
    r.header("x-node").unwrap_or_default().to_string()
}

fn bytes_seen(node: &TestNode, path: &str) -> u64 {
    node.requests_for(path).iter().map(|r| r.body_bytes).sum()
}

#[test]
fn rocketchat_sticky_route_cookie_websocket_and_nginx_headers() {
    let nodes = [TestNode::start("rocketchat-1"), TestNode::start("rocketchat-2")];
    let refs: Vec<&TestNode> = nodes.iter().collect();
    let sample = Sample::load("rocketchat", &refs);
    let envoy = sample.start(&refs);
    let base = format!("https://{}", envoy.listener_named("https").unwrap());

    let first = call(&format!("{base}/home"), &[]);
    assert_eq!(first.status(), 200, "{first:?}");
    let set = first.header("set-cookie").unwrap_or_else(|| panic!("no ROUTEID cookie: {first:?}"));
    assert!(set.starts_with("ROUTEID=") && set.contains("Secure"), "{set}");
    let cookie = set.split(';').next().unwrap().to_string();
    let node = node_of(&first);
    for _ in 0..10 {
        let r = call(&format!("{base}/api/v1/me"), &["-H", &format!("cookie: {cookie}")]);
        assert_eq!(node_of(&r), node);
        assert_eq!(received(&r, "x-real-ip"), ["127.0.0.1"]);
        assert_eq!(received(&r, "x-forwarded-for"), ["127.0.0.1"]);
        assert_eq!(received(&r, "x-forwarded-proto"), ["https"]);
        assert_eq!(received(&r, "x-nginx-proxy"), ["true"]);
        assert_eq!(received(&r, "host"), [envoy.listener_named("https").unwrap().to_string()]);
    }
    // Meteor's DDP WebSocket follows the cookie.
    for _ in 0..5 {
        let (status, ws_node) = tls_websocket_handshake(envoy.listener_named("https").unwrap(), &cookie);
        assert_eq!((status, ws_node.as_str()), (101, node.as_str()));
    }
    // client_max_body_size 0: no limit.
    let scratch = ScratchDir::new("rocketchat");
    let big = scratch.file_of_size("40MiB", 40 * MIB);
    let r = call(
        &format!("{base}/file-upload"),
        &["-H", &format!("cookie: {cookie}"), "--data-binary", &format!("@{}", big.display())],
    );
    assert_eq!(r.status(), 200);
    let served = nodes.iter().find(|n| n.name == node).unwrap();
    assert_eq!(bytes_seen(served, "/file-upload"), 40 * MIB);
    assert!(envoy.error_lines().is_empty(), "{:?}", envoy.error_lines());
}

#[test]
fn apostrophe_round_robin_failover_and_32m_limit() {
    let mut nodes = [TestNode::start("apostrophe-1"), TestNode::start("apostrophe-2")];
    let refs: Vec<&TestNode> = nodes.iter().collect();
    let sample = Sample::load("apostrophe", &refs);
    let envoy = sample.start(&refs);
    let base = format!("http://{}", envoy.listener);

    let mut counts = BTreeMap::new();
    for _ in 0..20 {
        let r = call(&format!("{base}/"), &["-H", "x-real-ip: 6.6.6.6"]);
        assert_eq!(r.status(), 200);
        assert_eq!(received(&r, "x-real-ip"), ["127.0.0.1"], "the client's own X-Real-IP is not believed");
        *counts.entry(node_of(&r)).or_insert(0) += 1;
    }
    assert_eq!(counts.values().copied().collect::<Vec<_>>(), [10, 10], "round robin: {counts:?}");

    let scratch = ScratchDir::new("apostrophe");
    let at = scratch.file_of_size("32MiB", 32 * MIB);
    let over = scratch.file_of_size("32MiB+1", 32 * MIB + 1);
    let post = |file: &std::path::Path, path: &str| {
        call(&format!("{base}{path}"), &["--data-binary", &format!("@{}", file.display())]).status()
    };
    assert_eq!(post(&at, "/upload-at"), 200);
    assert_eq!(post(&over, "/upload-over"), 413);
    assert!(nodes.iter().map(|n| bytes_seen(n, "/upload-over")).sum::<u64>() <= 32 * MIB);

    // A process dies (forever restarts it later): every request still succeeds, GET and POST.
    nodes[1].kill();
    for i in 0..20 {
        let r = call(&format!("{base}/page-{i}"), &[]);
        assert_eq!((r.status(), node_of(&r).as_str()), (200, "apostrophe-1"), "{r:?}");
        let p = call(&format!("{base}/form-{i}"), &["-d", "a=b"]);
        assert_eq!(p.status(), 200, "a POST to the dead process is retried: nothing was sent yet: {p:?}");
    }
    assert!(envoy.error_lines().is_empty(), "{:?}", envoy.error_lines());
}
