//! The sample configs in envoy/ run as users copy them (only their loopback ports and certificate
//! moved, see tests/src/sample.rs). Overleaf and ShareLaTeX are compared with HAProxy in parity.rs;
//! here: Rocket.Chat, Apostrophe and the demo.

// Needs Envoy (scripts/setup) and the built modules (scripts/build): `scripts/test` runs it.
#![cfg(feature = "e2e")]

use std::collections::BTreeMap;
use tether_e2e::http::{curl_http1 as call, tls_websocket_handshake};
use tether_e2e::sample::{Sample, XdsSample};
use tether_e2e::{CurlResponse, ScratchDir, TestNode};

const MIB: u64 = 1024 * 1024;

fn node_of(r: &CurlResponse) -> String {
    r.node()
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
        assert_eq!(r.received_header("x-real-ip"), ["127.0.0.1"]);
        assert_eq!(r.received_header("x-forwarded-for"), ["127.0.0.1"]);
        assert_eq!(r.received_header("x-forwarded-proto"), ["https"]);
        assert_eq!(r.received_header("x-nginx-proxy"), ["true"]);
        assert_eq!(r.received_header("host"), [envoy.listener_named("https").unwrap().to_string()]);
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
        assert_eq!(r.received_header("x-real-ip"), ["127.0.0.1"], "the client's own X-Real-IP is not believed");
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

/// envoy/demo.yaml is envoy/overleaf.yaml plus the uri-hash filter, nothing else: the demo shows
/// what the Overleaf sample does.
#[test]
fn the_demo_is_the_overleaf_sample_plus_uri_hash() {
    let root = tether_e2e::repo_root().join("envoy");
    let read = |name: &str| std::fs::read_to_string(root.join(name)).unwrap();
    let without_header = |s: &str| s.lines().skip_while(|l| l.starts_with('#')).collect::<Vec<_>>().join("\n");
    let demo = without_header(&read("demo.yaml"));
    let start = demo.find("          # From the ShareLaTeX guide").expect("the demo's uri-hash block");
    let end = demo[start..].find("depth: 2\n").map(|i| start + i + "depth: 2\n".len()).unwrap();
    let demo = format!("{}{}", &demo[..start], &demo[end..]).replacen("id: tether-demo", "id: overleaf", 1);
    assert_eq!(demo, without_header(&read("overleaf.yaml")), "envoy/demo.yaml drifted from envoy/overleaf.yaml");
}

#[test]
fn the_demo_runs_all_five_filters() {
    let scratch = ScratchDir::new("demo");
    let git_root = scratch.join("git");
    let init = std::process::Command::new("git")
        .args(["init", "-q", "--bare", "--initial-branch=main"])
        .arg(git_root.join("demo.git"))
        .output()
        .unwrap();
    assert!(init.status.success());
    let nodes = [
        TestNode::start_with_git("server-pro-ha-1", &git_root),
        TestNode::start("server-pro-ha-2"),
        TestNode::start("server-pro-ha-3"),
    ];
    let refs: Vec<&TestNode> = nodes.iter().collect();
    let sample = Sample::load("demo", &refs);
    let envoy = sample.start(&refs);
    let https = envoy.listener_named("https").unwrap();
    let base = format!("https://{https}");

    // forwarded: redirect from http, HSTS and X-Served-By over https
    let redirect = call(&format!("http://{}/hello", envoy.listener_named("http").unwrap()), &[]);
    assert_eq!(redirect.status(), 301);
    let first = call(&format!("{base}/hello"), &[]);
    assert_eq!(first.status(), 200);
    assert!(first.header("strict-transport-security").is_some());
    assert_eq!(first.header("x-served-by"), Some(node_of(&first).as_str()));
    // affinity: the cookie keeps the session on its node
    let cookie = first.header("set-cookie").unwrap().split(';').next().unwrap().to_string();
    assert!(cookie.starts_with("server-pro-ha="));
    for _ in 0..5 {
        assert_eq!(node_of(&call(&format!("{base}/x"), &["-H", &format!("cookie: {cookie}")])), node_of(&first));
    }
    // uri-hash: one project, one node, whatever the cookie
    let project: Vec<String> = ["/project/5f3c", "/project/5f3c/compile", "/project/5f3c/output/output.pdf"]
        .iter()
        .map(|p| node_of(&call(&format!("{base}{p}"), &["-H", &format!("cookie: {cookie}")])))
        .collect();
    assert!(project.iter().all(|n| n == &project[0]), "{project:?}");
    // path-pin: git reaches server-pro-ha-1
    let refs_path = "/git/demo.git/info/refs?service=git-upload-pack";
    let git = call(&format!("{base}{refs_path}"), &["-H", &format!("cookie: {cookie}")]);
    assert_eq!((git.status(), node_of(&git).as_str()), (200, "server-pro-ha-1"));
    // body-limit: 50 MiB + 1 is refused before it reaches a node
    let over = scratch.file_of_size("over", 50 * MIB + 1);
    let r = call(&format!("{base}/upload"), &["--data-binary", &format!("@{}", over.display())]);
    assert_eq!(r.status(), 413);
    // The same over HTTP/2 (what browsers speak to this listener): the whole 413 arrives, then
    // RST_STREAM(NO_ERROR) asks the client to stop sending, as RFC 9113 §8.1 allows. nghttp shows
    // the frames; Debian 12's curl 7.88 wrongly reports that as error 92 and hides the answer.
    let out = std::process::Command::new("nghttp")
        .args(["-v", "-d"])
        .arg(&over)
        .arg(format!("{base}/upload"))
        .output()
        .unwrap_or_else(|e| panic!("cannot run nghttp (scripts/setup installs nghttp2-client): {e}"));
    let trace = String::from_utf8_lossy(&out.stdout);
    assert!(trace.contains(":status: 413"), "{trace}");
    assert!(trace.contains("\"limit_bytes\":52428800"), "the JSON body arrives: {trace}");
    assert!(trace.contains("error_code=NO_ERROR"), "{trace}");
    assert!(envoy.error_lines().is_empty(), "{:?}", envoy.error_lines());
}

/// A nodes table that misses one of the cluster's endpoints is said in Envoy's log, once per
/// filter, and counted: the mistake a hand-edited sample invites.
#[test]
fn a_nodes_table_missing_an_endpoint_is_logged() {
    let nodes =
        [TestNode::start("server-pro-ha-1"), TestNode::start("server-pro-ha-2"), TestNode::start("server-pro-ha-3")];
    let refs: Vec<&TestNode> = nodes.iter().collect();
    let mut sample = Sample::load("overleaf", &refs);
    let entry = format!("    - {{ name: server-pro-ha-3, address: \"{}\" }}\n", nodes[2].addr);
    assert!(sample.yaml.contains(&entry));
    sample.yaml = sample.yaml.replace(&entry, "");
    let envoy = sample.start(&refs);
    let base = format!("https://{}", envoy.listener_named("https").unwrap());
    // Round robin: one of three fresh clients reaches the node the table lacks.
    for _ in 0..6 {
        assert_eq!(call(&format!("{base}/"), &[]).status(), 200);
    }
    let missing = format!("upstream {} is not in the nodes table", nodes[2].addr);
    envoy.wait_for_log(&format!("affinity: {missing}"));
    envoy.wait_for_log(&format!("forwarded: {missing}"));
    assert!(envoy.counter_at_least("wasmcustom.tether_affinity.unknown_upstream", 2) >= 2);
    assert_eq!(envoy.log().matches(&format!("affinity: {missing}")).count(), 1, "said once, then counted");
}

#[test]
fn overleaf_pods_sample_keeps_sessions_through_churn_with_no_address_in_filter_config() {
    let pods = [TestNode::start("server-pro-0"), TestNode::start("server-pro-1"), TestNode::start("server-pro-2")];
    let git = TestNode::start("git-bridge-0");
    let refs: Vec<&TestNode> = pods.iter().chain([&git]).collect();
    let xds = XdsSample::load("overleaf-pods", &refs);
    for file in ["tether.forwarded.yaml", "tether.body_limit.yaml", "tether.affinity.yaml"] {
        assert!(!xds.read(file).contains("127.0.0.1"), "{file}: no address in filter configuration");
    }
    let envoy = xds.sample.start(&refs);
    let https = envoy.listener_named("https").unwrap();
    let base = format!("https://{https}");

    // A new session: the cookie seals the pod; X-Served-By names it from EDS metadata.
    let first = call(&format!("{base}/project"), &[]);
    assert_eq!(first.status(), 200, "{first:?}");
    let set = first.header("set-cookie").unwrap_or_else(|| panic!("no cookie: {first:?}"));
    let cookie = set.split(';').next().unwrap().to_string();
    assert!(cookie.starts_with("server-pro-ha=") && !cookie.contains("127.0.0.1"), "{cookie}");
    let home = node_of(&first);
    assert_eq!(first.header("x-served-by"), Some(home.as_str()));
    for _ in 0..5 {
        let r = call(&format!("{base}/project"), &["-H", &format!("cookie: {cookie}")]);
        assert_eq!((node_of(&r), r.header("set-cookie")), (home.clone(), None));
    }
    // The editor's WebSocket follows the cookie.
    assert_eq!(tls_websocket_handshake(https, &cookie), (101, home.clone()));
    // /git/ reaches git-bridge and leaves the browser's session where it is.
    let r = call(&format!("{base}/git/project.git/info/refs"), &["-H", &format!("cookie: {cookie}")]);
    assert_eq!((node_of(&r), r.header("set-cookie")), ("git-bridge-0".to_string(), None));
    let r = call(&format!("{base}/project"), &["-H", &format!("cookie: {cookie}")]);
    assert_eq!(node_of(&r), home);
    // 50 MB: an upload over it is refused before its body is sent.
    let scratch = ScratchDir::new("pods");
    let big = scratch.file_of_size("51MiB", 51 * MIB);
    let r = call(
        &format!("{base}/upload"),
        &["-H", &format!("cookie: {cookie}"), "--data-binary", &format!("@{}", big.display())],
    );
    assert_eq!(r.status(), 413);

    // The session's pod is removed from EDS while alive (its grace period): the session moves
    // once, to a pod Envoy still has, and stays there.
    let eds = xds.read("server-pro.eds.yaml");
    let pod = pods.iter().find(|p| p.name == home).unwrap();
    let entry = eds
        .split("\n    - endpoint:")
        .find(|e| e.contains(&format!("port_value: {} ", pod.addr.port())))
        .unwrap_or_else(|| panic!("{home} in {eds}"));
    xds.publish(
        "server-pro.eds.yaml",
        &eds.replace(&format!("\n    - endpoint:{entry}"), "").replace("version_info: \"1\"", "version_info: \"2\""),
    );
    let moved = tether_e2e::wait_for("the session to move", std::time::Duration::from_secs(10), || {
        let r = call(&format!("{base}/project"), &["-H", &format!("cookie: {cookie}")]);
        (node_of(&r) != home).then_some(r)
    });
    let new_cookie =
        moved.header("set-cookie").expect("moved once: a new cookie").split(';').next().unwrap().to_string();
    let new_home = node_of(&moved);
    for _ in 0..5 {
        let r = call(&format!("{base}/project"), &["-H", &format!("cookie: {new_cookie}")]);
        assert_eq!((node_of(&r), r.header("set-cookie")), (new_home.clone(), None));
    }
    assert_eq!(envoy.counter("wasmcustom.tether_affinity.redispatched", 1), 1);
    assert!(envoy.error_lines().is_empty(), "{:?}", envoy.error_lines());
}
