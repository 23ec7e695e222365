//! affinity end to end: real Envoy (health checks, retry policy, stateful_session header
//! mode), three test nodes, cookies as browsers and HAProxy send them.

// Needs Envoy (scripts/setup) and the built modules (scripts/build): `scripts/test` runs it.
#![cfg(feature = "e2e")]

use std::collections::BTreeMap;
use tether_core::token::{self, Claims, Key};
use tether_e2e::http::{request, Response};
use tether_e2e::{curl, self_signed_cert, Envoy, EnvoyConfig, ScratchDir, TestNode, WasmFilter};

const HEADER: &str = "x-tether-session";
const KEY: &str = "e2e-test-key-0123456789abcdef";

use tether_e2e::node::{nodes_json, three_nodes as nodes};

fn signed(nodes: &[TestNode], extra: &str) -> String {
    format!(r#"{{"nodes": {}, "cookie": {{"keys": ["{KEY}"]{extra}}}}}"#, nodes_json(nodes))
}

fn envoy_with(nodes: &[TestNode], filters: Vec<WasmFilter>) -> Envoy {
    let refs: Vec<&TestNode> = nodes.iter().collect();
    Envoy::start(&EnvoyConfig::new(filters, &refs).with_routing(HEADER))
}

fn get(envoy: &Envoy, path: &str, headers: &[(&str, &str)]) -> Response {
    let r = request(envoy.listener, "GET", path, headers).unwrap();
    assert_eq!(r.status, 200, "{path}: {r:?}");
    r
}

/// `SERVERID=<value>` from a response's Set-Cookie, if it sets ours.
fn our_cookie(r: &Response) -> Option<String> {
    r.set_cookie("SERVERID")
}

fn node_of(r: &Response) -> String {
    r.node()
}

fn echoed_headers(r: &Response) -> Vec<(String, String)> {
    r.json()["headers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| (h[0].as_str().unwrap().into(), h[1].as_str().unwrap().into()))
        .collect()
}

#[test]
fn first_response_sets_the_cookie_and_200_requests_stay_on_its_node() {
    let n = nodes();
    let envoy = envoy_with(&n, vec![WasmFilter::new("affinity", &signed(&n, r#", "maxidle": "24h""#))]);
    let first = get(&envoy, "/", &[]);
    let cookie = our_cookie(&first).expect("the first response sets the cookie");
    let set = first.all("set-cookie").join(" | ");
    assert!(set.contains("; Path=/; HttpOnly; SameSite=Lax"), "{set}");
    assert_eq!(first.header("cache-control"), Some("private"), "nocache");
    assert_eq!(first.header(HEADER), None, "the session header must not leak");
    let home = node_of(&first);
    for i in 0..200 {
        let r = get(&envoy, &format!("/doc/{i}"), &[("cookie", &cookie)]);
        assert_eq!(node_of(&r), home, "request {i} left its node");
        assert_eq!(our_cookie(&r), None, "no Set-Cookie while the session is fresh (request {i})");
    }
    assert_eq!(envoy.counter("wasmcustom.tether_affinity.pinned", 200), 200);
    assert_eq!(envoy.counter("wasmcustom.tether_affinity.new_sessions", 1), 1);
}

#[test]
fn three_hundred_new_sessions_spread_over_all_nodes() {
    let n = nodes();
    let envoy = envoy_with(&n, vec![WasmFilter::new("affinity", &signed(&n, ""))]);
    let mut per_node: BTreeMap<String, usize> = BTreeMap::new();
    for _ in 0..300 {
        let r = get(&envoy, "/", &[]);
        assert!(our_cookie(&r).is_some());
        *per_node.entry(node_of(&r)).or_default() += 1;
    }
    assert_eq!(per_node.len(), 3, "{per_node:?}");
    assert!(per_node.values().all(|&c| c >= 60), "each node should get at least 20%: {per_node:?}");
}

#[test]
fn envoy_stats_show_every_workers_counts_within_a_tick() {
    // Each worker's VM keeps its counts and hands them to Envoy on its own one-second tick
    // (tether-glue's vm.rs): /stats must be right within one tick of the last answer, summed
    // over the workers.
    use std::time::{Duration, Instant};
    use tether_e2e::envoy::TICK;
    use tether_e2e::wait::poll;
    const NEW: &str = "wasmcustom.tether_affinity.new_sessions";
    let n = nodes();
    let refs: Vec<&TestNode> = n.iter().collect();
    let mut config = EnvoyConfig::new(vec![WasmFilter::new("affinity", &signed(&n, ""))], &refs).with_routing(HEADER);
    config.concurrency = 2;
    let envoy = Envoy::start(&config);
    let requests = 60;
    for _ in 0..requests {
        assert!(our_cookie(&get(&envoy, "/", &[])).is_some()); // a new session each: counted
    }
    let answered = Instant::now();
    let seen = poll(TICK * 5, || (envoy.stat(NEW) == requests).then(Instant::now));
    let lag = seen.map(|at| at - answered);
    assert!(
        lag.is_some_and(|lag| lag <= TICK + Duration::from_millis(500)),
        "{NEW} = {} after {:?} (expected {requests} within a tick)",
        envoy.stat(NEW),
        answered.elapsed()
    );
    // The listener binds port 0, and its stats carry the configured address.
    let per_worker = |w: u32| envoy.stat(&format!("listener.127.0.0.1_0.worker_{w}.downstream_cx_total"));
    assert!(
        per_worker(0) > 0 && per_worker(1) > 0,
        "both workers took connections: {}, {}",
        per_worker(0),
        per_worker(1)
    );
}

#[test]
fn unhealthy_node_redispatches_and_the_session_stays_moved() {
    let n = nodes();
    let envoy = envoy_with(&n, vec![WasmFilter::new("affinity", &signed(&n, ""))]);
    let first = get(&envoy, "/", &[]);
    let cookie = our_cookie(&first).unwrap();
    let home = n.iter().find(|x| x.name == node_of(&first)).unwrap();
    home.set_healthy(false);
    envoy.wait_for_health(home, false);
    let moved = get(&envoy, "/after", &[("cookie", &cookie)]);
    assert_ne!(node_of(&moved), home.name);
    let new_cookie = our_cookie(&moved).expect("redispatch re-issues the cookie");
    assert_ne!(new_cookie, cookie);
    assert_eq!(envoy.counter("wasmcustom.tether_affinity.redispatched", 1), 1);
    home.set_healthy(true);
    envoy.wait_for_health(home, true);
    for _ in 0..20 {
        let r = get(&envoy, "/later", &[("cookie", &new_cookie)]);
        assert_eq!(node_of(&r), node_of(&moved), "after recovery the session stays on its new node");
    }
}

#[test]
fn killed_node_redispatches_before_health_checks_notice() {
    let mut n = nodes();
    let refs: Vec<&TestNode> = n.iter().collect();
    // No health checks: only the failed connection and the route's retry policy can save the request.
    let mut config = EnvoyConfig::new(vec![WasmFilter::new("affinity", &signed(&n, ""))], &refs).with_routing(HEADER);
    config.health_checks = false;
    let envoy = Envoy::start(&config);
    let first = get(&envoy, "/", &[]);
    let cookie = our_cookie(&first).unwrap();
    let home = n.iter().position(|x| x.name == node_of(&first)).unwrap();
    n[home].kill();
    let r = get(&envoy, "/after-kill", &[("cookie", &cookie)]);
    assert_ne!(node_of(&r), n[home].name);
    assert!(our_cookie(&r).is_some(), "the cookie moves to the node that served");
    assert!(envoy.stat("cluster.nodes.upstream_rq_retry") >= 1, "the route's retry policy did the work");
}

#[test]
fn indirect_hides_our_cookie_from_the_backend_and_keeps_the_others() {
    let n = nodes();
    let envoy = envoy_with(&n, vec![WasmFilter::new("affinity", &signed(&n, ""))]);
    let cookie = our_cookie(&get(&envoy, "/", &[])).unwrap();
    let header = format!("lang=en; {cookie}; overleaf_session=s%3Aabc.def");
    let r = get(&envoy, "/", &[("cookie", &header)]);
    let cookies: Vec<String> = echoed_headers(&r).into_iter().filter(|(n, _)| n == "cookie").map(|(_, v)| v).collect();
    assert_eq!(cookies, vec!["lang=en; overleaf_session=s%3Aabc.def".to_string()]);
    // Only our cookie: the header goes away entirely.
    let r = get(&envoy, "/", &[("cookie", &cookie)]);
    assert!(echoed_headers(&r).iter().all(|(n, _)| n != "cookie"), "{:?}", echoed_headers(&r));
}

#[test]
fn tampered_expired_and_unknown_node_cookies_start_new_sessions() {
    let n = nodes();
    let envoy = envoy_with(&n, vec![WasmFilter::new("affinity", &signed(&n, r#", "maxidle": "1h""#))]);
    let good = our_cookie(&get(&envoy, "/", &[])).unwrap();
    let mut tampered = good.clone().into_bytes();
    let last = tampered.len() - 1;
    tampered[last] = if tampered[last] == b'A' { b'B' } else { b'A' };
    let tampered = String::from_utf8(tampered).unwrap();
    let key = Key::new(KEY.as_bytes()).unwrap();
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    let expired_claims =
        Claims { node: "node-1".into(), first_seen: now - 7200, last_seen: now - 7200, endpoint: None };
    let expired = format!("SERVERID={}", token::sign(&key, "SERVERID", &expired_claims));
    let unknown_claims = Claims { node: "node-9".into(), first_seen: now, last_seen: now, endpoint: None };
    let unknown = format!("SERVERID={}", token::sign(&key, "SERVERID", &unknown_claims));
    for (what, cookie) in [
        ("tampered", &tampered),
        ("expired", &expired),
        ("unknown node", &unknown),
        ("garbage", &"SERVERID=%%!!".to_string()),
    ] {
        let r = get(&envoy, "/", &[("cookie", cookie)]);
        assert!(our_cookie(&r).is_some(), "{what}: a fresh cookie is issued");
    }
    assert_eq!(envoy.counter("wasmcustom.tether_affinity.invalid_cookie", 2), 2);
    assert_eq!(envoy.counter("wasmcustom.tether_affinity.expired_cookie", 1), 1);
    assert_eq!(envoy.counter("wasmcustom.tether_affinity.redispatched", 1), 1, "unknown node moves the session");
    // Odd spacing, duplicates and a quoted value still find the genuine cookie.
    let value = good.trim_start_matches("SERVERID=");
    let home = node_of(&get(&envoy, "/", &[("cookie", &good)]));
    for header in [format!("SERVERID=junk;SERVERID={value}"), format!("  a=1 ;\tSERVERID=\"{value}\" ; b")] {
        assert_eq!(node_of(&get(&envoy, "/", &[("cookie", &header)])), home, "{header}");
    }
}

#[test]
fn invalid_utf8_and_huge_cookie_headers_never_cause_errors() {
    let n = nodes();
    let envoy = envoy_with(&n, vec![WasmFilter::new("affinity", &signed(&n, ""))]);
    let big = format!("{}SERVERID=x", "pad=0123456789abcdef; ".repeat(400));
    let r = get(&envoy, "/", &[("cookie", &big)]);
    assert!(our_cookie(&r).is_some());
    // Raw bytes that are not UTF-8, sent over a plain socket.
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(envoy.listener).unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nhost: x\r\ncookie: a=\xff\xfe; SERVERID=\xc3\x28\r\nconnection: close\r\n\r\n")
        .unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).unwrap();
    assert!(out.starts_with(b"HTTP/1.1 200"), "{}", String::from_utf8_lossy(&out));
    envoy.wait_for_log("affinity: configured");
    assert!(envoy.error_lines().is_empty(), "{:#?}", envoy.error_lines());
}

#[test]
fn plain_format_accepts_haproxy_cookies() {
    let n = nodes();
    let config = format!(r#"{{"nodes": {}, "cookie": {{"format": "plain"}}}}"#, nodes_json(&n));
    let envoy = envoy_with(&n, vec![WasmFilter::new("affinity", &config)]);
    for cookie in ["SERVERID=node-2", "SERVERID=node-2|abc", "SERVERID=node-2|Zx8aB|Zw7q"] {
        for _ in 0..5 {
            let r = get(&envoy, "/", &[("cookie", cookie)]);
            assert_eq!(node_of(&r), "node-2", "{cookie}");
            assert_eq!(our_cookie(&r), None);
        }
    }
    let fresh = get(&envoy, "/", &[]);
    assert_eq!(our_cookie(&fresh), Some(format!("SERVERID={}", node_of(&fresh))));
}

#[test]
fn websocket_handshake_follows_the_cookie() {
    let n = nodes();
    let envoy = envoy_with(&n, vec![WasmFilter::new("affinity", &signed(&n, ""))]);
    let first = get(&envoy, "/", &[]);
    let cookie = our_cookie(&first).unwrap();
    for _ in 0..5 {
        let mut req =
            tungstenite::client::IntoClientRequest::into_client_request(format!("ws://{}/socket.io", envoy.listener))
                .unwrap();
        req.headers_mut().insert("cookie", cookie.parse().unwrap());
        let (mut ws, resp) = tungstenite::connect(req).unwrap();
        assert_eq!(resp.headers().get("x-node").and_then(|v| v.to_str().ok()), Some(node_of(&first).as_str()));
        ws.send(tungstenite::Message::text("ping")).unwrap();
        assert_eq!(ws.read().unwrap().into_text().unwrap().as_str(), "ping");
    }
}

#[test]
fn a_forged_session_header_without_cookie_steers_nothing() {
    let n = nodes();
    let envoy = envoy_with(&n, vec![WasmFilter::new("affinity", &signed(&n, ""))]);
    use base64::Engine;
    let forged = base64::engine::general_purpose::STANDARD.encode(n[2].addr.to_string());
    for _ in 0..10 {
        let r = get(&envoy, "/", &[(HEADER, &forged)]);
        assert!(echoed_headers(&r).iter().all(|(h, _)| h != HEADER), "the node received the forged header");
        assert_eq!(r.header(HEADER), None);
    }
    assert_eq!(envoy.counter("wasmcustom.tether_affinity.client_session_header_removed", 10), 10);
}

#[test]
fn keys_come_from_the_envoy_hosts_environment() {
    let n = nodes();
    let refs: Vec<&TestNode> = n.iter().collect();
    let config = format!(r#"{{"nodes": {}, "cookie": {{"keys_env": "TETHER_TEST_KEYS"}}}}"#, nodes_json(&n));
    let mut filter = WasmFilter::new("affinity", &config);
    filter.env_keys = vec!["TETHER_TEST_KEYS".into()];
    let envoy = Envoy::start_with_env(
        &EnvoyConfig::new(vec![filter], &refs).with_routing(HEADER),
        &[("TETHER_TEST_KEYS", KEY)],
    );
    let cookie = our_cookie(&get(&envoy, "/", &[])).unwrap();
    // Minted with the key from the environment: our own copy of the key verifies it.
    let value = cookie.trim_start_matches("SERVERID=");
    assert!(token::verify(&[Key::new(KEY.as_bytes()).unwrap()], "SERVERID", value.as_bytes()).is_some());
}

#[test]
fn secure_follows_the_connection_scheme_in_auto_mode() {
    let n = nodes();
    let refs: Vec<&TestNode> = n.iter().collect();
    let certs = ScratchDir::new("certs");
    let mut config = EnvoyConfig::new(vec![WasmFilter::new("affinity", &signed(&n, ""))], &refs).with_routing(HEADER);
    config.tls = Some(self_signed_cert(&certs));
    let envoy = Envoy::start(&config);
    let plain = get(&envoy, "/", &[]);
    assert!(!plain.all("set-cookie").join("").contains("Secure"));
    // A client claiming https over plain http does not get a Secure cookie: Envoy (edge
    // settings) rewrites X-Forwarded-Proto from the connection before any filter runs.
    let forged = get(&envoy, "/", &[("x-forwarded-proto", "https")]);
    assert!(!forged.all("set-cookie").join("").contains("Secure"), "{:?}", forged.all("set-cookie"));
    let tls = envoy.listener_named("tls").unwrap();
    let r = curl(&["-k", &format!("https://{tls}/")], None);
    assert_eq!(r.status(), 200, "{}", r.stderr);
    let set_cookie = r.header("set-cookie").unwrap_or_default();
    assert!(
        set_cookie.starts_with("SERVERID=") && set_cookie.contains("; Secure"),
        "over TLS the cookie is Secure: {set_cookie}"
    );
}

#[test]
fn a_pinned_git_request_does_not_move_the_browsers_session() {
    let n = nodes();
    let pin = format!(
        r#"{{"nodes": {}, "rules": [{{"name": "git", "path_prefix": "/git/", "node": "node-1"}}]}}"#,
        nodes_json(&n)
    );
    let envoy = envoy_with(&n, vec![WasmFilter::new("path-pin", &pin), WasmFilter::new("affinity", &signed(&n, ""))]);
    // A browser session on a node other than node-1.
    let cookie = loop {
        let r = get(&envoy, "/", &[]);
        if node_of(&r) != "node-1" {
            break our_cookie(&r).unwrap();
        }
    };
    for _ in 0..10 {
        let r = request(envoy.listener, "GET", "/git/repo.git/info/refs", &[("cookie", &cookie)]).unwrap();
        assert_eq!(node_of(&r), "node-1", "git goes to the sibling whatever the cookie says");
        assert_eq!(our_cookie(&r), None, "and the browser's cookie is left alone");
    }
    let _ = curl(&["-s", &envoy.url("/")], None);
    assert_eq!(envoy.counters_after_tick(["wasmcustom.tether_affinity.redispatched"]), [0]);
}

/// RFC 6265 forbids several `Cookie` lines, but some clients send them: our cookie is found on
/// any line, and every other cookie still reaches the backend.
#[test]
fn several_cookie_header_lines() {
    let n = nodes();
    let envoy = envoy_with(&n, vec![WasmFilter::new("affinity", &signed(&n, ""))]);
    let first = get(&envoy, "/", &[]);
    let cookie = our_cookie(&first).unwrap();
    let home = node_of(&first);
    // Ours on the first line: the session holds, the other line arrives intact.
    for _ in 0..10 {
        let r = get(&envoy, "/", &[("cookie", &cookie), ("cookie", "lang=en")]);
        assert_eq!(node_of(&r), home);
        let cookies: Vec<String> =
            echoed_headers(&r).into_iter().filter(|(n, _)| n == "cookie").map(|(_, v)| v).collect();
        assert!(cookies.iter().all(|c| !c.contains("SERVERID")), "indirect: {cookies:?}");
        assert!(cookies.iter().any(|c| c.contains("lang=en")), "{cookies:?}");
    }
    // Ours on the second line.
    for _ in 0..10 {
        let r = get(&envoy, "/", &[("cookie", "lang=en"), ("cookie", &format!("{cookie}; theme=dark"))]);
        assert_eq!(node_of(&r), home);
        let cookies: Vec<String> =
            echoed_headers(&r).into_iter().filter(|(n, _)| n == "cookie").map(|(_, v)| v).collect();
        assert_eq!(cookies, vec!["lang=en; theme=dark".to_string()]);
    }
}

/// HAProxy `preserve`: when the application sets a cookie of our name, it wins.
#[test]
fn preserve_leaves_the_applications_own_cookie_alone() {
    let n = nodes();
    let envoy = envoy_with(&n, vec![WasmFilter::new("affinity", &signed(&n, r#", "preserve": true"#))]);
    let app = ("x-test-response-header", "set-cookie: SERVERID=app-value; Path=/");
    let r = get(&envoy, "/", &[app]);
    assert_eq!(r.all("set-cookie"), vec!["SERVERID=app-value; Path=/"]);
    // Without the application's cookie, ours is set as usual.
    assert!(our_cookie(&get(&envoy, "/", &[])).is_some());
    // And without preserve, ours is added as well.
    let envoy = envoy_with(&n, vec![WasmFilter::new("affinity", &signed(&n, ""))]);
    assert_eq!(get(&envoy, "/", &[app]).all("set-cookie").len(), 2);
}

#[test]
fn a_missing_routing_contract_and_a_secure_cookie_on_http_are_said_once() {
    let n = nodes();
    let refs: Vec<&TestNode> = n.iter().collect();
    // No stateful_session: affinity's cookies could never stick.
    let config = signed(&n, r#", "secure": true, "same_site": "None""#);
    let envoy = Envoy::start(&EnvoyConfig::new(vec![WasmFilter::new("affinity", &config)], &refs));
    for _ in 0..3 {
        assert!(our_cookie(&get(&envoy, "/", &[])).is_some());
    }
    assert_eq!(envoy.counter("wasmcustom.tether_affinity.routing_contract_missing", 3), 3);
    assert_eq!(envoy.counter("wasmcustom.tether_affinity.secure_cookie_on_http", 3), 3);
    envoy.wait_for_log("affinity: Envoy's stateful_session wrote no x-tether-session header");
    envoy.wait_for_log("affinity: a Secure cookie went out on a plain-http request");
    let log = envoy.log();
    assert_eq!(log.matches("wrote no x-tether-session header").count(), 1, "said once per VM");
    assert_eq!(log.matches("a Secure cookie went out").count(), 1, "said once per VM");
    // With the contract in place, over https, neither is said.
    let certs = ScratchDir::new("certs");
    let mut config = EnvoyConfig::new(vec![WasmFilter::new("affinity", &config)], &refs).with_routing(HEADER);
    config.tls = Some(self_signed_cert(&certs));
    let envoy = Envoy::start(&config);
    let tls = envoy.listener_named("tls").unwrap();
    let r = curl(&["-k", &format!("https://{tls}/")], None);
    assert!(r.header("set-cookie").unwrap_or_default().starts_with("SERVERID="), "{}", r.stderr);
    let [missing, insecure] = envoy.counters_after_tick([
        "wasmcustom.tether_affinity.routing_contract_missing",
        "wasmcustom.tether_affinity.secure_cookie_on_http",
    ]);
    assert_eq!((missing, insecure), (0, 0));
}
