//! Hostile input against the whole chain (forwarded → body-limit → path-pin → uri-hash →
//! affinity → stateful_session): every answer is a sane status, no filter panics, and no
//! request is steered by what the client sent.

// Needs Envoy (scripts/setup) and the built modules (scripts/build): `scripts/test` runs it.
#![cfg(feature = "e2e")]

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;
use tether_e2e::node::{nodes_json, three_nodes};
use tether_e2e::{curl, Envoy, EnvoyConfig, TestNode, WasmFilter};

fn chain(nodes: &[TestNode]) -> Envoy {
    let table = nodes_json(nodes);
    let filters = vec![
        WasmFilter::new("forwarded", &format!(r#"{{"forwarded": true, "served_by": {{"nodes": {table}}}}}"#)),
        WasmFilter::new("body-limit", r#"{"default_limit": "1M"}"#),
        WasmFilter::new(
            "path-pin",
            &format!(r#"{{"nodes": {table}, "rules": [{{"name": "git", "path_prefix": "/git/", "node": "node-1"}}]}}"#),
        ),
        WasmFilter::new("uri-hash", &format!(r#"{{"nodes": {table}, "prefixes": ["/project/"], "depth": 2}}"#)),
        WasmFilter::new(
            "affinity",
            &format!(r#"{{"nodes": {table}, "cookie": {{"keys": ["hostile-e2e-key-0123456789"], "maxidle": "1h"}}}}"#),
        ),
    ];
    let refs: Vec<&TestNode> = nodes.iter().collect();
    Envoy::start(&EnvoyConfig::new(filters, &refs).with_routing("x-tether-session"))
}

/// Sends raw bytes as one HTTP/1.1 request and returns the status line's code.
fn raw(envoy: &Envoy, request: &[u8]) -> u16 {
    let mut s = TcpStream::connect(envoy.listener).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(request).unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    let text = String::from_utf8_lossy(&out);
    text.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or_else(|| panic!("no status in {text:?}"))
}

fn assert_no_panics(envoy: &Envoy) {
    envoy.wait_for_log("affinity: configured");
    let log = envoy.log();
    let bad: Vec<&str> = log.lines().filter(|l| l.contains("panicked") || l.contains("[critical]")).collect();
    assert!(bad.is_empty(), "a filter panicked or Envoy logged critical lines:\n{}", bad.join("\n"));
}

#[test]
fn garbage_never_becomes_a_5xx_or_a_panic() {
    let nodes = three_nodes();
    let envoy = chain(&nodes);
    let long_path = format!("/project/{}", "a".repeat(50 * 1024));
    let many_cookies = (0..200).map(|i| format!("SERVERID=junk{i}")).collect::<Vec<_>>().join("; ");
    // Past Envoy's 60 KiB header limit: Envoy answers 431 itself, before any filter.
    let too_long_path = format!("/project/{}", "b".repeat(64 * 1024));
    let cases: Vec<Vec<String>> = vec![
        vec![envoy.url(&long_path)],
        vec![envoy.url(&too_long_path)],
        vec![envoy.url("/project/%2e%2e/%2e%2e/etc/passwd")],
        vec![envoy.url("/git/../project/x")],
        vec!["-H".into(), "X-Forwarded-For: garbage, ::::1, [::1, 999.1.1.1, ".into(), envoy.url("/")],
        vec!["-H".into(), "X-Forwarded-For: fe80::1%eth0".into(), envoy.url("/")],
        vec!["-H".into(), "Forwarded: for=\"[::1\";;;proto".into(), envoy.url("/")],
        vec!["-H".into(), format!("Cookie: {many_cookies}"), envoy.url("/")],
        vec!["-H".into(), "x-tether-session: !!!not-base64!!!".into(), envoy.url("/project/p")],
        vec!["-H".into(), "Content-Length: 99999999999999999999".into(), "-X".into(), "POST".into(), envoy.url("/")],
        vec![
            "--http2-prior-knowledge".into(),
            "-H".into(),
            format!("Cookie: {many_cookies}"),
            envoy.url("/project/p/x"),
        ],
    ];
    for args in &cases {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let r = curl(&args, None);
        let status = r.status();
        // A real HTTP answer, and not a server error.
        assert!((200..500).contains(&status), "{:?} -> {status} {}", &args[..args.len().min(3)], r.stderr);
    }
    // Header values that are not UTF-8, on a raw socket.
    let requests: [&[u8]; 4] = [
        b"GET / HTTP/1.1\r\nhost: x\r\ncookie: SERVERID=\xff\xfe\xfd\r\nconnection: close\r\n\r\n",
        b"GET / HTTP/1.1\r\nhost: x\r\nx-forwarded-for: \xc3\x28, 1.2.3.4\r\nconnection: close\r\n\r\n",
        b"GET /project/p HTTP/1.1\r\nhost: x\r\nx-tether-session: \xff\xff\r\nconnection: close\r\n\r\n",
        b"GET /\xff\xfe HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n",
    ];
    for req in requests {
        let status = raw(&envoy, req);
        assert!((200..500).contains(&status), "{:?} -> {status}", String::from_utf8_lossy(req));
    }
    assert_no_panics(&envoy);
}

#[test]
fn nothing_the_client_sends_steers_a_request() {
    let nodes = three_nodes();
    let envoy = chain(&nodes);
    use base64::Engine;
    // The project's own node, then every way a client might try to move it.
    let home = tether_e2e::http::request(envoy.listener, "GET", "/project/steady/x", &[]).unwrap();
    let home = home.header("x-node").unwrap().to_string();
    for target in &nodes {
        let forged = base64::engine::general_purpose::STANDARD.encode(target.addr.to_string());
        let plain_cookie = format!("SERVERID={}", target.name);
        let headers = [("x-tether-session", forged.as_str()), ("cookie", plain_cookie.as_str())];
        let r = tether_e2e::http::request(envoy.listener, "GET", "/project/steady/x", &headers).unwrap();
        assert_eq!(r.header("x-node"), Some(home.as_str()), "steered to {}", target.name);
        // Git always reaches node-1, whatever the client sends.
        let r = tether_e2e::http::request(envoy.listener, "GET", "/git/x", &headers).unwrap();
        assert_eq!(r.header("x-node"), Some("node-1"));
    }
    assert_no_panics(&envoy);
}

/// Sends a chunked body in `chunks` pieces of `size` bytes with `pause` between them; returns
/// the status Envoy answered with (or 0 if the connection ended without one).
fn trickle(envoy: &Envoy, path: &str, chunks: usize, size: usize, pause: Duration) -> u16 {
    let mut s = TcpStream::connect(envoy.listener).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let head = format!("POST {path} HTTP/1.1\r\nHost: hostile\r\nTransfer-Encoding: chunked\r\n\r\n");
    s.write_all(head.as_bytes()).unwrap();
    let chunk = [format!("{size:x}\r\n").into_bytes(), vec![b'x'; size], b"\r\n".to_vec()].concat();
    for _ in 0..chunks {
        if s.write_all(&chunk).is_err() {
            break; // refused mid-body: the answer is waiting
        }
        std::thread::sleep(pause);
    }
    let _ = s.write_all(b"0\r\n\r\n");
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    while let Ok(n) = s.read(&mut buf) {
        if n == 0 {
            break;
        }
        out.extend_from_slice(&buf[..n]);
        if out.windows(4).any(|w| w == b"\r\n\r\n") {
            break;
        }
    }
    let text = String::from_utf8_lossy(&out);
    text.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0)
}

/// Slow bodies (a client trickling 64 KiB every 40 ms): the limit counts every byte however
/// slowly it comes; under the limit the body arrives whole.
#[test]
fn slow_bodies_are_counted_to_the_byte() {
    let nodes = three_nodes();
    let envoy = chain(&nodes);
    let pause = Duration::from_millis(40);
    // 15 x 64 KiB = 960 KiB: under the 1 MiB limit.
    assert_eq!(trickle(&envoy, "/slow-under", 15, 64 * 1024, pause), 200);
    let under: u64 = nodes.iter().flat_map(|n| n.requests_for("/slow-under")).map(|r| r.body_bytes).sum();
    assert_eq!(under, 15 * 64 * 1024, "the slow body arrived whole");
    // 20 x 64 KiB = 1.25 MiB: refused once it crosses 1 MiB; a node never gets more.
    assert_eq!(trickle(&envoy, "/slow-over", 20, 64 * 1024, pause), 413);
    let over: u64 = nodes.iter().flat_map(|n| n.requests_for("/slow-over")).map(|r| r.body_bytes).sum();
    assert!(over <= 1024 * 1024, "{over} bytes of a refused body reached a node");
    assert_no_panics(&envoy);
}
