//! bench: what Tether costs per request, against Envoy with no filter (the limit), an empty Rust
//! proxy-wasm filter (the floor for any Wasm filter), Envoy's native equivalents, the same logic in
//! Lua, and HAProxy 2.6 with the Overleaf guide's config.
//!
//! Every arm runs at once on the same three test nodes; rounds are interleaved (each round visits
//! every arm, in a rotated order). The proxies are pinned to CPU 0 (`--concurrency 1`, HAProxy
//! `nbthread 1`), this process, its load threads, h2load, wrk and the nodes to CPU 1. Per arm and
//! round:
//! - **CPU µs/request**: the proxy's on-CPU time (/proc, all threads) over `BENCH_REQUESTS` requests sent
//!   by h2load (HTTP/1.1, 8 connections): the steadiest figure on a shared machine;
//! - **requests/s** at saturation: wrk, 8 connections, 2 s;
//! - **p50/p99 latency** at a fixed rate below saturation: an open-loop generator (here), each
//!   request timed from when it was due, so a stall is not hidden by the generator waiting.
//!
//! Before measuring, each arm proves it does its work (cookie set and honoured, headers added, an
//! oversized request refused), so a broken filter cannot look fast. Output: a Markdown table and
//! an SVG chart in target/bench/, the table on stdout. Run via `scripts/bench`.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::Command;
use std::time::{Duration, Instant};
use tether_e2e::haproxy::Haproxy;
use tether_e2e::http::{read_keepalive_response, request, Response};
use tether_e2e::node::nodes_json;
use tether_e2e::workload::{OverleafFilters, SESSION_HEADER};
use tether_e2e::{env_or, process_cpu_time, process_rss_kib, repo_root, Envoy, EnvoyConfig, TestNode, WasmFilter};
use xtask::wasm_exports::{release_wasm, remove_exports, unused_callback_exports};

/// One proxy under test.
struct Arm {
    name: String,
    /// What the arm stands for, for the table.
    what: &'static str,
    proxy: Proxy,
    addr: SocketAddr,
    /// The request every load sends (path, headers): a returning user with a session cookie.
    path: String,
    headers: Vec<(String, String)>,
    wasm_bytes: u64,
}

enum Proxy {
    Envoy(Envoy),
    Haproxy(Haproxy),
}

impl Proxy {
    fn pid(&self) -> u32 {
        match self {
            Proxy::Envoy(e) => e.pid(),
            Proxy::Haproxy(h) => h.pid(),
        }
    }
}

#[derive(Default)]
struct Samples {
    cpu_us: Vec<f64>,
    rps: Vec<f64>,
    p50_us: Vec<f64>,
    p99_us: Vec<f64>,
}

fn wasm_size(crate_name: &str) -> u64 {
    let path = release_wasm(&format!("tether_{crate_name}"));
    std::fs::metadata(&path).map(|m| m.len()).unwrap_or_else(|e| panic!("{}: {e} (run scripts/build)", path.display()))
}

/// The empty filter trimmed as `scripts/build` trims Tether's filters (`wasm_exports`), written
/// next to the results: what exporting only the headers callbacks saves in the same run.
fn headers_only_noop() -> std::path::PathBuf {
    let noop = std::fs::read(release_wasm("tether_noop"))
        .unwrap_or_else(|e| panic!("tether_noop.wasm: {e} (run scripts/build)"));
    let kept = ["on_http_request_headers".to_string(), "on_http_response_headers".to_string()];
    let unused = unused_callback_exports(&kept).unwrap_or_else(|e| panic!("{e}"));
    let trimmed = remove_exports(&noop, &unused).unwrap_or_else(|e| panic!("tether_noop.wasm: {e}"));
    let path = repo_root().join("target/bench/tether_noop_headers_only.wasm");
    std::fs::create_dir_all(repo_root().join("target/bench")).unwrap_or_else(|e| panic!("target/bench: {e}"));
    std::fs::write(&path, trimmed).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    path
}

fn pin(pid: u32, cpu: &str) {
    let out = Command::new("taskset").args(["-a", "-p", "-c", cpu, &pid.to_string()]).output();
    assert!(out.is_ok_and(|o| o.status.success()), "taskset could not pin {pid} to CPU {cpu}");
}

fn envoy_arm(name: &str, what: &'static str, config: EnvoyConfig, wasm: &[&str]) -> Arm {
    let envoy = Envoy::start(&config);
    pin(envoy.pid(), "0");
    Arm {
        name: name.to_string(),
        what,
        addr: envoy.listener,
        proxy: Proxy::Envoy(envoy),
        path: "/".into(),
        headers: Vec::new(),
        wasm_bytes: wasm.iter().map(|c| wasm_size(c)).sum(),
    }
}

fn get(arm: &Arm, path: &str, headers: &[(&str, &str)]) -> Response {
    let r = request(arm.addr, "GET", path, headers).unwrap_or_else(|e| panic!("{}: {e}", arm.name));
    assert_eq!(r.status, 200, "{}: GET {path}: {r:?}", arm.name);
    r
}

/// A session cookie from the arm (its first response's Set-Cookie), then proof that it sticks.
fn session_cookie(arm: &Arm, name: &str) -> String {
    let first = get(arm, "/", &[]);
    let set = first
        .all("set-cookie")
        .into_iter()
        .find(|c| c.starts_with(&format!("{name}=")))
        .unwrap_or_else(|| panic!("{}: no {name} cookie: {first:?}", arm.name));
    let cookie = set.split(';').next().unwrap_or_default().to_string();
    let node = first.header("x-node").unwrap_or_default().to_string();
    for _ in 0..5 {
        assert_eq!(get(arm, "/", &[("cookie", &cookie)]).header("x-node"), Some(node.as_str()), "{}", arm.name);
    }
    cookie
}

/// An oversized request (60 MiB declared and sent) must be refused with 413.
fn refuses_oversized(arm: &Arm) {
    let s = TcpStream::connect(arm.addr).unwrap_or_else(|e| panic!("{}: {e}", arm.name));
    let mut writer = s.try_clone().unwrap_or_else(|e| panic!("{e}"));
    // The body goes from a thread: a proxy that refuses at the headers stops reading it.
    std::thread::spawn(move || {
        let _ = writer.write_all(b"POST /upload HTTP/1.1\r\nHost: bench\r\nContent-Length: 62914560\r\n\r\n");
        let chunk = vec![0u8; 1 << 20];
        for _ in 0..60 {
            if writer.write_all(&chunk).is_err() {
                break;
            }
        }
    });
    s.set_read_timeout(Some(Duration::from_secs(20))).ok();
    let mut status = String::new();
    BufReader::new(s).read_line(&mut status).unwrap_or_else(|e| panic!("{}: {e}", arm.name));
    assert!(status.starts_with("HTTP/1.1 413"), "{}: a 60 MiB request was not refused: {status:?}", arm.name);
}

fn served_by_header(arm: &Arm, cookie: &str) {
    let r = get(arm, "/", &[("cookie", cookie)]);
    assert!(r.header("x-served-by").is_some(), "{}: no X-Served-By: {r:?}", arm.name);
    assert!(r.header("strict-transport-security").is_some(), "{}: no HSTS", arm.name);
}

// ---- load ------------------------------------------------------------------------------------

/// The request lines a current Chromium sends for a page of the application, besides Host and
/// Cookie (BENCH_BROWSER_HEADERS).
const BROWSER_HEADERS: [(&str, &str); 12] = [
    (
        "user-agent",
        "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36",
    ),
    ("accept", "text/html,application/xhtml+xml,application/xml;q=0.9,image/avif,image/webp,*/*;q=0.8"),
    ("accept-language", "en-GB,en;q=0.9,de;q=0.8"),
    ("accept-encoding", "gzip, deflate, br, zstd"),
    ("referer", "https://overleaf.example.com/project"),
    ("sec-ch-ua", "\"Chromium\";v=\"131\", \"Not_A Brand\";v=\"24\""),
    ("sec-ch-ua-mobile", "?0"),
    ("sec-ch-ua-platform", "\"Linux\""),
    ("sec-fetch-dest", "document"),
    ("sec-fetch-mode", "navigate"),
    ("sec-fetch-site", "same-origin"),
    ("upgrade-insecure-requests", "1"),
];

fn h2load_cpu(arm: &Arm, requests: u32) -> f64 {
    let mut cmd = Command::new("taskset");
    cmd.args(["-c", "1", "h2load", "--h1", "-n", &requests.to_string(), "-c", "8", "-t", "1"]);
    for (n, v) in &arm.headers {
        cmd.args(["-H", &format!("{n}: {v}")]);
    }
    let before = process_cpu_time(arm.proxy.pid());
    let out = cmd.arg(format!("http://{}{}", arm.addr, arm.path)).output().unwrap_or_else(|e| panic!("h2load: {e}"));
    let cpu = process_cpu_time(arm.proxy.pid()).saturating_sub(before);
    let text = String::from_utf8_lossy(&out.stdout);
    let codes = text.lines().find(|l| l.starts_with("status codes:")).unwrap_or_default();
    assert!(codes.contains(&format!("{requests} 2xx")), "{}: not every request succeeded:\n{text}", arm.name);
    cpu.as_secs_f64() * 1e6 / f64::from(requests)
}

fn wrk_rps(arm: &Arm, seconds: u32) -> f64 {
    let mut cmd = Command::new("taskset");
    cmd.args(["-c", "1", "wrk", "-t", "1", "-c", "8", "-d", &format!("{seconds}s")]);
    for (n, v) in &arm.headers {
        cmd.args(["-H", &format!("{n}: {v}")]);
    }
    let out = cmd.arg(format!("http://{}{}", arm.addr, arm.path)).output().unwrap_or_else(|e| panic!("wrk: {e}"));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(!text.contains("Non-2xx"), "{}: wrk saw errors:\n{text}", arm.name);
    text.lines()
        .find_map(|l| l.strip_prefix("Requests/sec:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("{}: no Requests/sec in wrk's output:\n{text}", arm.name))
}

/// Open-loop load: `rate` requests/s for `duration` over `conns` keep-alive connections; each
/// request is timed from when it was due. Returns (p50, p99) in µs.
fn open_loop(arm: &Arm, rate: u32, duration: Duration, conns: u32) -> (f64, f64) {
    let total = (f64::from(rate) * duration.as_secs_f64()) as u64;
    let interval = Duration::from_secs_f64(f64::from(conns) / f64::from(rate));
    let mut head = format!("GET {} HTTP/1.1\r\nHost: bench\r\n", arm.path);
    for (n, v) in &arm.headers {
        let _ = write!(head, "{n}: {v}\r\n");
    }
    head.push_str("\r\n");
    let start = Instant::now() + Duration::from_millis(50);
    let threads: Vec<_> = (0..conns)
        .map(|c| {
            let (head, addr, name) = (head.clone(), arm.addr, arm.name.clone());
            std::thread::spawn(move || {
                let stream = TcpStream::connect(addr).unwrap_or_else(|e| panic!("{name}: {e}"));
                stream.set_nodelay(true).ok();
                let mut reader = BufReader::new(stream.try_clone().unwrap_or_else(|e| panic!("{e}")));
                let mut writer = stream;
                let mut latencies = Vec::new();
                let offset = interval.mul_f64(f64::from(c) / f64::from(conns));
                let mut i: u32 = 0;
                while u64::from(i) * u64::from(conns) + u64::from(c) < total {
                    let due = start + offset + interval * i;
                    if let Some(wait) = due.checked_duration_since(Instant::now()) {
                        std::thread::sleep(wait);
                    }
                    writer.write_all(head.as_bytes()).unwrap_or_else(|e| panic!("{name}: {e}"));
                    let status = read_keepalive_response(&mut reader).map(|(status, _)| status);
                    assert!(matches!(status, Ok(200)), "{name}: a request failed under load: {status:?}");
                    latencies.push(due.elapsed().as_secs_f64() * 1e6);
                    i += 1;
                }
                latencies
            })
        })
        .collect();
    let mut all: Vec<f64> = threads.into_iter().flat_map(|t| t.join().unwrap_or_default()).collect();
    all.sort_by(f64::total_cmp);
    let at = |q: f64| all.get(((all.len() as f64 - 1.0) * q).round() as usize).copied().unwrap_or(0.0);
    (at(0.50), at(0.99))
}

// ---- arms --------------------------------------------------------------------------------------

fn with_routing(mut c: EnvoyConfig) -> EnvoyConfig {
    c = c.with_routing(SESSION_HEADER);
    c.health_checks = false; // no health-check traffic in the CPU figures
    c
}

/// Envoy-native equivalents of the Overleaf chain, as close as Envoy gets without Wasm.
fn native_filters() -> Vec<String> {
    vec![
        r#"
          - name: envoy.filters.http.header_mutation
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.header_mutation.v3.HeaderMutation
              mutations:
                request_mutations:
                - append: { header: { key: x-forwarded-for, value: "%DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT%" }, append_action: OVERWRITE_IF_EXISTS_OR_ADD }
                - append: { header: { key: x-real-ip, value: "%DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT%" }, append_action: OVERWRITE_IF_EXISTS_OR_ADD }
                - append: { header: { key: x-forwarded-proto, value: https }, append_action: OVERWRITE_IF_EXISTS_OR_ADD }
                response_mutations:
                - append: { header: { key: strict-transport-security, value: "max-age=63072000; includeSubDomains; preload" }, append_action: OVERWRITE_IF_EXISTS_OR_ADD }
                - append: { header: { key: x-served-by, value: "%UPSTREAM_REMOTE_ADDRESS%" }, append_action: OVERWRITE_IF_EXISTS_OR_ADD }
          - name: envoy.filters.http.buffer
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.buffer.v3.Buffer
              max_request_bytes: 52428800
          - name: envoy.filters.http.stateful_session
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.stateful_session.v3.StatefulSession
              session_state:
                name: envoy.http.stateful_session.cookie
                typed_config:
                  "@type": type.googleapis.com/envoy.extensions.http.stateful_session.cookie.v3.CookieBasedSessionState
                  cookie: { name: SERVERID, path: /, ttl: 86400s }"#
            .to_string(),
    ]
}

/// The Overleaf chain's logic in Lua: forwarding headers, a Content-Length limit, a plain-cookie
/// affinity through stateful_session's header, Set-Cookie / X-Served-By / HSTS on the way back.
/// (No HMAC: Envoy's Lua has none, so its cookie is as forgeable as HAProxy's.)
fn lua_filter(nodes: &[TestNode]) -> String {
    use base64::Engine;
    let b64 = |a: SocketAddr| base64::engine::general_purpose::STANDARD.encode(a.to_string());
    let to_header: String = nodes.iter().map(|n| format!("[\"{}\"] = \"{}\", ", n.name, b64(n.addr))).collect();
    let to_name: String = nodes.iter().map(|n| format!("[\"{}\"] = \"{}\", ", b64(n.addr), n.name)).collect();
    let code = format!(
        r#"
local to_header = {{ {to_header} }}
local to_name = {{ {to_name} }}
function envoy_on_request(h)
  local headers = h:headers()
  local peer = h:streamInfo():downstreamRemoteAddress()
  local ip = string.match(peer, "^(.*):%d+$") or peer
  headers:replace("x-forwarded-for", ip)
  headers:replace("x-real-ip", ip)
  headers:replace("x-forwarded-proto", "https")
  local length = tonumber(headers:get("content-length") or "0")
  if length and length > 52428800 then
    h:respond({{[":status"] = "413"}}, "request body too large")
    return
  end
  headers:remove("{SESSION_HEADER}")
  local cookie = headers:get("cookie")
  local node = cookie and string.match(cookie, "SERVERID=([^;%s]+)")
  if node and to_header[node] then
    headers:replace("{SESSION_HEADER}", to_header[node])
    h:streamInfo():dynamicMetadata():set("tether", "pinned", node)
  end
end
function envoy_on_response(h)
  local headers = h:headers()
  -- stateful_session writes the header back only when the node differs from the requested one
  local meta = h:streamInfo():dynamicMetadata():get("tether")
  local pinned = meta and meta["pinned"]
  local served = to_name[headers:get("{SESSION_HEADER}") or ""] or pinned
  headers:remove("{SESSION_HEADER}")
  headers:replace("strict-transport-security", "max-age=63072000; includeSubDomains; preload")
  if served then
    headers:add("x-served-by", served)
    if pinned ~= served then
      headers:add("set-cookie", "SERVERID=" .. served .. "; Path=/; HttpOnly")
    end
  end
end
"#
    );
    let indented: String = code.lines().map(|l| format!("\n                  {l}")).collect();
    format!(
        r#"
          - name: envoy.filters.http.lua
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.lua.v3.Lua
              default_source_code:
                inline_string: |{indented}"#
    )
}

fn main() {
    let requests: u32 = env_or("BENCH_REQUESTS", 10_000);
    let rounds: u32 = env_or("BENCH_ROUNDS", 5);
    let rate: u32 = env_or("BENCH_RATE", 1000);
    // This process, its threads and every child (nodes, load generators) on CPU 1.
    pin(std::process::id(), "1");

    let nodes: Vec<TestNode> = (1..=3).map(|i| TestNode::start(&format!("server-pro-ha-{i}"))).collect();
    let refs: Vec<&TestNode> = nodes.iter().collect();
    let nodes = &nodes;
    let table = nodes_json(nodes);
    let OverleafFilters { forwarded, body_limit, path_pin, uri_hash, affinity } = OverleafFilters::new(&table);
    let started = Instant::now();
    // Arms start one after another (each is ready when pushed), all before the first round.
    let mut arms: Vec<Arm> =
        vec![envoy_arm("envoy", "Envoy, no filter: the limit", EnvoyConfig::new(vec![], &refs), &[])];
    arms.push(envoy_arm(
        "noop",
        "an empty Rust proxy-wasm filter as the SDK builds it (all 8 stream callbacks exported)",
        EnvoyConfig::new(vec![WasmFilter::new("noop", "")], &refs),
        &["noop"],
    ));
    arms.push(envoy_arm(
        "noop-headers",
        "the same, exporting only the request and response headers callbacks, as Tether's filters do: their floor",
        EnvoyConfig::new(vec![WasmFilter { code: Some(headers_only_noop()), ..WasmFilter::new("noop", "") }], &refs),
        &["noop"],
    ));
    arms.push(envoy_arm(
        "edge-calls",
        "the floor making tether-edge's host calls with no logic between them (noop `edge-calls`)",
        EnvoyConfig::new(
            vec![WasmFilter { code: Some(headers_only_noop()), ..WasmFilter::new("noop", "edge-calls") }],
            &refs,
        ),
        &["noop"],
    ));
    // The floor under the routing arms' Envoy configuration (stateful_session, the clusters
    // they route through): what that configuration itself costs, apart from any module.
    arms.push(envoy_arm(
        "routing-floor",
        "the floor under the routing configuration of path-pin, uri-hash, affinity and tether-edge",
        with_routing(EnvoyConfig::new(
            vec![WasmFilter { code: Some(headers_only_noop()), ..WasmFilter::new("noop", "") }],
            &refs,
        )),
        &["noop"],
    ));
    arms.push(envoy_arm(
        "body-limit",
        "Tether body-limit (GET)",
        EnvoyConfig::new(vec![WasmFilter::new("body-limit", &body_limit)], &refs),
        &["body_limit"],
    ));
    arms.push(envoy_arm(
        "forwarded",
        "Tether forwarded",
        EnvoyConfig::new(vec![WasmFilter::new("forwarded", &forwarded)], &refs),
        &["forwarded"],
    ));
    arms.push(envoy_arm(
        "path-pin",
        "Tether path-pin (a path it does not pin)",
        with_routing(EnvoyConfig::new(vec![WasmFilter::new("path-pin", &path_pin)], &refs)),
        &["path_pin"],
    ));
    let mut hash = envoy_arm(
        "uri-hash",
        "Tether uri-hash (a project path)",
        with_routing(EnvoyConfig::new(vec![WasmFilter::new("uri-hash", &uri_hash)], &refs)),
        &["uri_hash"],
    );
    hash.path = "/project/5f3c/output/output.pdf".into();
    arms.push(hash);
    arms.push(envoy_arm(
        "affinity",
        "Tether affinity (returning session)",
        with_routing(EnvoyConfig::new(vec![WasmFilter::new("affinity", &affinity)], &refs)),
        &["affinity"],
    ));
    let five = vec![
        WasmFilter::new("forwarded", &forwarded),
        WasmFilter::new("body-limit", &body_limit),
        WasmFilter::new("path-pin", &path_pin),
        WasmFilter::new("uri-hash", &uri_hash),
        WasmFilter::new("affinity", &affinity),
    ];
    arms.push(envoy_arm(
        "tether (all five)",
        "the five Tether filters, Overleaf chain",
        with_routing(EnvoyConfig::new(five, &refs)),
        &["forwarded", "body_limit", "path_pin", "uri_hash", "affinity"],
    ));
    let edge = OverleafFilters::new(&table).edge();
    arms.push(envoy_arm(
        "tether-edge",
        "the same five in one module and one VM (tether-edge)",
        with_routing(EnvoyConfig::new(vec![WasmFilter::new("edge", &edge)], &refs)),
        &["edge"],
    ));
    // BENCH_EDGE_VARIANT=other.wasm: tether-edge built another way, measured in the same
    // interleaved rounds as tether-edge (an A/B of one change, free of drift between runs).
    if let Some(code) = std::env::var_os("BENCH_EDGE_VARIANT") {
        let mut variant = WasmFilter::new("edge", &edge);
        let bytes = std::fs::metadata(&code).map(|m| m.len()).unwrap_or_else(|e| panic!("BENCH_EDGE_VARIANT: {e}"));
        variant.code = Some(code.into());
        let mut arm = envoy_arm(
            "tether-edge variant",
            "tether-edge built from BENCH_EDGE_VARIANT",
            with_routing(EnvoyConfig::new(vec![variant], &refs)),
            &[],
        );
        // Its own size, not the default module's.
        arm.wasm_bytes = bytes;
        arms.push(arm);
    }
    let mut native = EnvoyConfig::new(vec![], &refs);
    native.raw_filters = native_filters();
    arms.push(envoy_arm("envoy native", "header_mutation + buffer + stateful_session cookie", native, &[]));
    let mut lua = with_routing(EnvoyConfig::new(vec![], &refs));
    lua.raw_filters = vec![lua_filter(nodes)];
    arms.push(envoy_arm("lua", "the same logic in one Lua filter (plain cookie)", lua, &[]));
    let haproxy = Haproxy::start("overleaf-bench", &refs);
    pin(haproxy.pid(), "0");
    arms.push(Arm {
        name: "haproxy 2.6".into(),
        what: "HAProxy 2.6, the Overleaf guide's rules, 1 thread",
        addr: haproxy.http,
        proxy: Proxy::Haproxy(haproxy),
        path: "/".into(),
        headers: Vec::new(),
        wasm_bytes: 0,
    });

    // Each arm proves it does its work; its load is a returning user with its session cookie.
    for arm in &mut arms {
        // The variant of tether-edge gets tether-edge's load and checks (a returning user).
        let role = if arm.name == "tether-edge variant" { "tether-edge".to_string() } else { arm.name.clone() };
        let cookie = match role.as_str() {
            "affinity" | "tether (all five)" | "tether-edge" | "envoy native" | "lua" => {
                Some(session_cookie(arm, "SERVERID"))
            }
            "haproxy 2.6" => Some(session_cookie(arm, "server-pro-ha")),
            _ => None,
        };
        match role.as_str() {
            "body-limit" | "tether (all five)" | "tether-edge" | "envoy native" | "lua" => refuses_oversized(arm),
            _ => {}
        }
        match role.as_str() {
            "forwarded" => served_by_header(arm, ""),
            "edge-calls" => served_by_header(arm, ""),
            "tether (all five)" | "tether-edge" | "lua" | "haproxy 2.6" => {
                served_by_header(arm, cookie.as_deref().unwrap_or_default())
            }
            "uri-hash" => {
                let first = get(arm, &arm.path, &[]).header("x-node").map(String::from);
                for _ in 0..5 {
                    assert_eq!(get(arm, &arm.path, &[]).header("x-node").map(String::from), first, "uri-hash");
                }
            }
            "path-pin" => {
                for _ in 0..5 {
                    // No repositories on the bench nodes: the 404 names the node that answered.
                    let r = request(arm.addr, "GET", "/git/x.git/info/refs", &[]).unwrap_or_else(|e| panic!("{e}"));
                    assert_eq!(r.header("x-node"), Some("server-pro-ha-1"), "path-pin: {r:?}");
                }
            }
            _ => {}
        }
        if let Some(c) = cookie {
            arm.headers.push(("cookie".into(), c));
        }
        // BENCH_BROWSER_HEADERS=1: every arm's load sends what a browser sends besides (a longer
        // map costs Envoy more to hand over and to edit; the default load has few lines).
        if std::env::var_os("BENCH_BROWSER_HEADERS").is_some() {
            arm.headers.extend(BROWSER_HEADERS.iter().map(|(n, v)| (n.to_string(), v.to_string())));
        }
    }

    // BENCH_ONLY=envoy,tether-edge: measure only these arms (a quicker look at one change).
    if let Ok(only) = std::env::var("BENCH_ONLY") {
        let only: Vec<&str> = only.split(',').map(str::trim).collect();
        arms.retain(|a| a.name == "envoy" || only.contains(&a.name.as_str()));
    }
    let base_rss: BTreeMap<String, u64> =
        arms.iter().map(|a| (a.name.clone(), process_rss_kib(a.proxy.pid()))).collect();
    let mut samples: BTreeMap<String, Samples> = BTreeMap::new();
    for round in 0..rounds {
        for k in 0..arms.len() {
            let arm = &arms[(k + round as usize) % arms.len()];
            let s = samples.entry(arm.name.clone()).or_default();
            s.cpu_us.push(h2load_cpu(arm, requests));
            s.rps.push(wrk_rps(arm, 2));
            let (p50, p99) = open_loop(arm, rate, Duration::from_secs(1), 8);
            s.p50_us.push(p50);
            s.p99_us.push(p99);
        }
        eprintln!("bench: round {}/{rounds} done ({:.0} s)", round + 1, started.elapsed().as_secs_f64());
    }
    let rss: BTreeMap<String, u64> = arms.iter().map(|a| (a.name.clone(), process_rss_kib(a.proxy.pid()))).collect();
    report(&arms, &samples, &rss, &base_rss, requests, rounds, rate, started.elapsed());
}

fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    match s.len() {
        0 => 0.0,
        n if n % 2 == 1 => s[n / 2],
        n => (s[n / 2 - 1] + s[n / 2]) / 2.0,
    }
}

fn range(v: &[f64]) -> (f64, f64) {
    (v.iter().copied().fold(f64::INFINITY, f64::min), v.iter().copied().fold(f64::NEG_INFINITY, f64::max))
}

#[allow(clippy::too_many_arguments)]
fn report(
    arms: &[Arm],
    samples: &BTreeMap<String, Samples>,
    rss: &BTreeMap<String, u64>,
    base_rss: &BTreeMap<String, u64>,
    requests: u32,
    rounds: u32,
    rate: u32,
    took: Duration,
) {
    let get = |name: &str| samples.get(name).unwrap_or_else(|| panic!("no samples for {name}"));
    let limit = get("envoy");
    let (limit_cpu, limit_p50, limit_rss) =
        (median(&limit.cpu_us), median(&limit.p50_us), rss.get("envoy").copied().unwrap_or(0));
    let cpus = std::fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("model name").map(|m| m.trim_start_matches([' ', '\t', ':']).to_string()))
        .unwrap_or_default();
    let mut md = String::new();
    let _ = writeln!(md, "# Tether benchmark\n");
    let _ = writeln!(
        md,
        "{rounds} interleaved rounds; per arm and round: {requests} requests (h2load, HTTP/1.1, 8 connections) for CPU, \
         wrk 2 s (8 connections) for requests/s, {rate} requests/s open-loop for 1 s for latency. Proxies pinned to \
         CPU 0 (Envoy {} `--concurrency 1`, HAProxy `nbthread 1`); load and nodes on CPU 1. Machine: {cpus}, \
         2 cores. Run took {:.0} s. Medians, min–max in brackets; Δ against Envoy with no filter in the same run.\n",
        tether_e2e::envoy::envoy_version(),
        took.as_secs_f64()
    );
    let _ = writeln!(
        md,
        "| arm | what | CPU µs/req | Δ CPU µs | req/s (wrk) | p50 µs | Δ p50 µs | p99 µs | RSS MiB | Δ RSS MiB | RSS grew in run MiB | .wasm KB |"
    );
    let _ = writeln!(md, "|---|---|---|---|---|---|---|---|---|---|---|---|");
    for arm in arms {
        let s = get(&arm.name);
        let (cpu, (cmin, cmax)) = (median(&s.cpu_us), range(&s.cpu_us));
        let (rps, (rmin, rmax)) = (median(&s.rps), range(&s.rps));
        let (p50, p99) = (median(&s.p50_us), median(&s.p99_us));
        let r = rss.get(&arm.name).copied().unwrap_or(0);
        let delta_rss = |r: u64| (r as f64 - limit_rss as f64) / 1024.0;
        let grew = (r as f64 - base_rss.get(&arm.name).copied().unwrap_or(0) as f64) / 1024.0;
        let (delta_cpu, delta_p50) = if arm.name == "haproxy 2.6" {
            ("(other proxy)".to_string(), "(other proxy)".to_string())
        } else {
            (format!("{:+.1}", cpu - limit_cpu), format!("{:+.0}", p50 - limit_p50))
        };
        let _ = writeln!(
            md,
            "| {} | {} | {cpu:.1} [{cmin:.1}–{cmax:.1}] | {delta_cpu} | {rps:.0} [{rmin:.0}–{rmax:.0}] | {p50:.0} | {delta_p50} | {p99:.0} | {:.1} | {} | {grew:+.1} | {} |",
            arm.name,
            arm.what,
            r as f64 / 1024.0,
            if arm.name == "haproxy 2.6" { "(other proxy)".to_string() } else { format!("{:+.1}", delta_rss(r)) },
            if arm.wasm_bytes > 0 { format!("{:.0}", arm.wasm_bytes as f64 / 1000.0) } else { "–".into() },
        );
    }
    let dir = repo_root().join("target/bench");
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    std::fs::write(dir.join("results.md"), &md).unwrap_or_else(|e| panic!("results.md: {e}"));
    std::fs::write(dir.join("cpu.svg"), svg(arms, samples)).unwrap_or_else(|e| panic!("cpu.svg: {e}"));
    println!("{md}");
    println!("Written: target/bench/results.md, target/bench/cpu.svg");
}

/// Horizontal bars: median CPU µs per request per arm, with min–max whiskers.
fn svg(arms: &[Arm], samples: &BTreeMap<String, Samples>) -> String {
    let rows: Vec<(String, f64, f64, f64)> = arms
        .iter()
        .filter_map(|a| {
            let s = samples.get(&a.name)?;
            let (lo, hi) = range(&s.cpu_us);
            Some((a.name.clone(), median(&s.cpu_us), lo, hi))
        })
        .collect();
    let max = rows.iter().map(|r| r.3).fold(1.0, f64::max);
    let (left, width, row_h) = (170.0, 520.0, 26.0);
    let height = 50.0 + row_h * rows.len() as f64;
    let mut out = format!(
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{}" height="{height}" font-family="sans-serif" font-size="12">
<text x="10" y="18" font-size="14">Proxy CPU per request (µs, median of rounds; whiskers min–max)</text>
"#,
        left + width + 80.0
    );
    for (i, (name, med, lo, hi)) in rows.iter().enumerate() {
        let y = 34.0 + row_h * i as f64;
        let scale = |v: f64| left + width * v / max;
        let colour = if name.starts_with("tether")
            || ["body-limit", "forwarded", "path-pin", "uri-hash", "affinity"].contains(&name.as_str())
        {
            "#2b7bb9"
        } else {
            "#9a9a9a"
        };
        let _ = write!(
            out,
            r#"<text x="{}" y="{}" text-anchor="end">{name}</text>
<rect x="{left}" y="{y}" width="{}" height="{}" fill="{colour}"/>
<line x1="{}" x2="{}" y1="{}" y2="{}" stroke="black"/>
<text x="{}" y="{}">{med:.1}</text>
"#,
            left - 8.0,
            y + 15.0,
            scale(*med) - left,
            row_h - 8.0,
            scale(*lo),
            scale(*hi),
            y + 9.0,
            y + 9.0,
            scale(*hi) + 6.0,
            y + 15.0,
        );
    }
    out.push_str("</svg>\n");
    out
}
