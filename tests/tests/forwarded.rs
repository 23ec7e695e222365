//! forwarded end to end: real Envoy with a plain, a TLS and an IPv6 listener; curl as the
//! client (from 127.0.0.1, an untrusted client, or 127.0.0.2, the trusted proxy).

// Needs Envoy (scripts/setup) and the built modules (scripts/build): `scripts/test` runs it.
#![cfg(feature = "e2e")]

use tether_e2e::{curl, self_signed_cert, CurlResponse, Envoy, EnvoyConfig, ScratchDir, TestNode, WasmFilter};

struct Setup {
    envoy: Envoy,
    _node: TestNode,
    _certs: ScratchDir,
}

fn setup(extra: &str, with_body_limit: bool) -> Setup {
    setup_with(extra, with_body_limit, true)
}

fn setup_with(extra: &str, with_body_limit: bool, skip_xff_append: bool) -> Setup {
    let node = TestNode::start("node-1");
    let certs = ScratchDir::new("certs");
    let config = format!(
        r#"{{"trusted_proxies": ["127.0.0.2"], "forwarded": true,
            "served_by": {{"nodes": [{{"name": "node-1", "address": "{}"}}]}}{extra}}}"#,
        node.addr
    );
    let mut filters = vec![WasmFilter::new("forwarded", &config)];
    if with_body_limit {
        filters.push(WasmFilter::new("body-limit", r#"{"default_limit": "1K"}"#));
    }
    let mut c = EnvoyConfig::new(filters, &[&node]);
    c.tls = Some(self_signed_cert(&certs));
    c.ipv6 = true;
    c.skip_xff_append = skip_xff_append;
    Setup { envoy: Envoy::start(&c), _node: node, _certs: certs }
}

/// Every value of `name` the backend received.
fn seen(r: &CurlResponse, name: &str) -> Vec<String> {
    let echo = r.json();
    echo["headers"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|h| h[0] == name)
        .map(|h| h[1].as_str().unwrap().to_string())
        .collect()
}

fn one(r: &CurlResponse, name: &str) -> String {
    let v = seen(r, name);
    assert_eq!(v.len(), 1, "{name}: {v:?}");
    v[0].clone()
}

#[test]
fn a_direct_client_is_reported_once_with_the_connections_scheme() {
    let s = setup("", false);
    let r = curl(&[&s.envoy.url("/x")], None);
    assert_eq!(r.status(), 200, "{}", r.stderr);
    assert_eq!(one(&r, "x-forwarded-for"), "127.0.0.1", "the client address exactly once");
    assert_eq!(one(&r, "x-real-ip"), "127.0.0.1");
    assert_eq!(one(&r, "x-forwarded-proto"), "http");
    assert_eq!(one(&r, "x-forwarded-port"), s.envoy.listener.port().to_string());
    assert_eq!(one(&r, "forwarded"), format!("for=127.0.0.1;proto=http;host=\"{}\"", s.envoy.listener));
    let tls = s.envoy.listener_named("tls").unwrap();
    let r = curl(&["-k", &format!("https://{tls}/x")], None);
    assert_eq!(r.status(), 200, "{}", r.stderr);
    assert_eq!(one(&r, "x-forwarded-proto"), "https");
    assert_eq!(one(&r, "x-forwarded-for"), "127.0.0.1");
}

#[test]
fn forged_headers_from_an_untrusted_client_never_reach_the_backend() {
    let s = setup("", false);
    let r = curl(
        &[
            "-H",
            "X-Forwarded-For: 1.2.3.4",
            "-H",
            "X-Real-IP: 6.6.6.6",
            "-H",
            "X-Forwarded-Proto: https",
            "-H",
            "X-Forwarded-Host: evil.example",
            "-H",
            "X-Forwarded-Port: 443",
            "-H",
            "Forwarded: for=1.2.3.4;proto=https",
            &s.envoy.url("/x"),
        ],
        None,
    );
    assert_eq!(r.status(), 200, "{}", r.stderr);
    assert_eq!(one(&r, "x-forwarded-for"), "127.0.0.1");
    assert_eq!(one(&r, "x-real-ip"), "127.0.0.1");
    assert_eq!(one(&r, "x-forwarded-proto"), "http");
    assert_ne!(one(&r, "x-forwarded-host"), "evil.example");
    assert_ne!(one(&r, "x-forwarded-port"), "443");
    assert!(!one(&r, "forwarded").contains("1.2.3.4"));
    assert_eq!(s.envoy.counter("wasmcustom.tether_forwarded.forged_discarded", 1), 1);
    // A request without forwarding headers is not counted: the X-Forwarded-Proto that Envoy
    // itself adds is not the client's (every request counted before this was fixed).
    for _ in 0..3 {
        assert_eq!(curl(&[&s.envoy.url("/x")], None).status(), 200);
    }
    assert_eq!(s.envoy.counters_after_tick(["wasmcustom.tether_forwarded.forged_discarded"]), [1]);
}

#[test]
fn a_trusted_proxy_hop_keeps_the_original_client() {
    let s = setup("", false);
    let r = curl(
        &[
            "--interface",
            "127.0.0.2",
            "-H",
            "X-Forwarded-For: 198.51.100.7",
            "-H",
            "X-Forwarded-Proto: https",
            "-H",
            "X-Forwarded-Host: overleaf.example.org",
            &s.envoy.url("/x"),
        ],
        None,
    );
    assert_eq!(r.status(), 200, "{}", r.stderr);
    assert_eq!(one(&r, "x-forwarded-for"), "198.51.100.7, 127.0.0.2");
    assert_eq!(one(&r, "x-real-ip"), "198.51.100.7");
    // Envoy's edge settings rewrite X-Forwarded-Proto from the connection before any filter
    // runs, so the proxy's claim is gone: behind a TLS-terminating proxy, set "proto": "https".
    assert_eq!(one(&r, "x-forwarded-proto"), "http");
    assert_eq!(one(&r, "x-forwarded-host"), "overleaf.example.org");
    // A chain from a trusted proxy whose client claims more: the right-most untrusted wins.
    let r =
        curl(&["--interface", "127.0.0.2", "-H", "X-Forwarded-For: 6.6.6.6, 198.51.100.7", &s.envoy.url("/x")], None);
    assert_eq!(one(&r, "x-real-ip"), "198.51.100.7");
}

#[test]
fn a_meshs_own_append_of_the_peer_is_not_doubled() {
    // Istio's and Envoy Gateway's listeners leave skip_xff_append false: Envoy appends the peer
    // to X-Forwarded-For before the filter reads it. The peer is named once all the same.
    let s = setup_with("", false, false);
    let via_proxy =
        curl(&["--interface", "127.0.0.2", "-H", "X-Forwarded-For: 198.51.100.7", &s.envoy.url("/x")], None);
    assert_eq!(one(&via_proxy, "x-forwarded-for"), "198.51.100.7, 127.0.0.2");
    assert_eq!(one(&via_proxy, "x-real-ip"), "198.51.100.7");
    let direct = curl(&["-H", "X-Forwarded-For: 6.6.6.6", &s.envoy.url("/x")], None);
    assert_eq!(one(&direct, "x-forwarded-for"), "127.0.0.1");
    assert_eq!(one(&direct, "x-real-ip"), "127.0.0.1");
}

#[test]
fn a_forced_https_scheme_for_tls_ended_before_envoy() {
    // The Overleaf guide: "http-request set-header X-Forwarded-Proto https".
    let s = setup(r#", "proto": "https", "hsts": {"max_age": "365d"}"#, false);
    let r = curl(&["-H", "X-Forwarded-Proto: http", &s.envoy.url("/x")], None);
    assert_eq!(one(&r, "x-forwarded-proto"), "https");
    assert_eq!(r.header("strict-transport-security"), Some("max-age=31536000"));
}

#[test]
fn plain_http_is_redirected_to_https_except_acme() {
    let s = setup(r#", "https_redirect": {"port": 8443}"#, false);
    let host = s.envoy.listener.to_string();
    let r = curl(&[&s.envoy.url("/project/1?a=b")], None);
    assert_eq!(r.status(), 301);
    assert_eq!(r.header("location"), Some("https://127.0.0.1:8443/project/1?a=b"), "{host}");
    let r = curl(&["-X", "POST", "--data", "x", &s.envoy.url("/login")], None);
    assert_eq!(r.status(), 308, "POST keeps its method and body");
    let r = curl(&[&s.envoy.url("/.well-known/acme-challenge/token123")], None);
    assert_eq!(r.status(), 200, "ACME challenges are answered over http");
    let tls = s.envoy.listener_named("tls").unwrap();
    assert_eq!(curl(&["-k", &format!("https://{tls}/project/1")], None).status(), 200);
    assert_eq!(s.envoy.counter("wasmcustom.tether_forwarded.redirects", 2), 2);
}

#[test]
fn hsts_only_over_https_and_served_by_names_the_node() {
    let s = setup(r#", "hsts": {"max_age": "730d", "include_subdomains": true, "preload": true}"#, true);
    let tls = s.envoy.listener_named("tls").unwrap();
    let r = curl(&["-k", &format!("https://{tls}/x")], None);
    assert_eq!(r.header("strict-transport-security"), Some("max-age=63072000; includeSubDomains; preload"));
    assert_eq!(r.header("x-served-by"), Some("node-1"));
    let r = curl(&[&s.envoy.url("/x")], None);
    assert_eq!(r.header("strict-transport-security"), None, "never over plain http");
    assert_eq!(r.header("x-served-by"), Some("node-1"));
    // A local reply from a filter later in the chain (body-limit's 413) gets HSTS too.
    let r = curl(&["-k", "--data-binary", &"x".repeat(2048), &format!("https://{tls}/upload")], None);
    assert_eq!(r.status(), 413);
    assert_eq!(r.header("strict-transport-security"), Some("max-age=63072000; includeSubDomains; preload"));
    assert_eq!(r.header("x-served-by"), None, "no node served a local reply");
}

#[test]
fn an_ipv6_client_is_reported_and_quoted() {
    let s = setup("", false);
    let v6 = s.envoy.listener_named("ipv6").unwrap();
    let r = curl(&["-g", &format!("http://{v6}/x")], None);
    assert_eq!(r.status(), 200, "{}", r.stderr);
    assert_eq!(one(&r, "x-forwarded-for"), "::1");
    assert_eq!(one(&r, "x-real-ip"), "::1");
    assert!(one(&r, "forwarded").starts_with("for=\"[::1]\";proto=http"), "{:?}", seen(&r, "forwarded"));
}

/// The peer is the TCP peer, not whatever X-Forwarded-For names: a client that writes the
/// trusted proxy's address into the header is still an untrusted client.
#[test]
fn claiming_to_be_the_trusted_proxy_in_xff_earns_no_trust() {
    let s = setup("", false);
    let r = curl(&["-H", "X-Forwarded-For: 127.0.0.2", "-H", "X-Forwarded-Proto: https", &s.envoy.url("/x")], None);
    assert_eq!(one(&r, "x-forwarded-for"), "127.0.0.1");
    assert_eq!(one(&r, "x-real-ip"), "127.0.0.1");
    assert_eq!(one(&r, "x-forwarded-proto"), "http");
}

#[test]
fn an_upstreams_own_hsts_is_left_alone_unless_overridden() {
    let own = ["-H", "x-test-response-header: strict-transport-security: max-age=60"];
    let s = setup(r#", "hsts": {"max_age": "365d"}"#, false);
    let tls = s.envoy.listener_named("tls").unwrap();
    let r = curl(&["-k", own[0], own[1], &format!("https://{tls}/x")], None);
    assert_eq!(r.header("strict-transport-security"), Some("max-age=60"));
    let s = setup(r#", "hsts": {"max_age": "365d", "override_upstream": true}"#, false);
    let tls = s.envoy.listener_named("tls").unwrap();
    let r = curl(&["-k", own[0], own[1], &format!("https://{tls}/x")], None);
    assert_eq!(r.header("strict-transport-security"), Some("max-age=31536000"));
}
