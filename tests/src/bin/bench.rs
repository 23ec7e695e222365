//! bench: what each Tether filter costs per request, measured against the same Envoy without it.
//!
//! Starts three test nodes and, per filter, two Envoys (`--concurrency 1`): one with no filter
//! and one with the filter (routing filters also get Envoy's `stateful_session`, the other half
//! of the contract). Each load is driven with h2load (HTTP/1.1, 8 connections, bounded by a
//! request count), alternating between the two Envoys. Reported: requests/s and Envoy's CPU time
//! per request (user + system from /proc), which is far steadier on a shared machine than
//! latency. Run via `scripts/bench`; `BENCH_REQUESTS` and `BENCH_ROUNDS` bound it.

use std::process::Command;
use tether_e2e::http::request;
use tether_e2e::node::{nodes_json, three_nodes};
use tether_e2e::{Envoy, EnvoyConfig, ScratchDir, TestNode, WasmFilter};

struct Load {
    name: &'static str,
    path: &'static str,
    /// Body size for POST; 0 means GET.
    body: u64,
    /// Send the session cookie the filter issued (affinity), or a forged header (forwarded).
    with_cookie: bool,
}

struct Measured {
    rps: f64,
    cpu_us: f64,
}

fn h2load(url: &str, requests: u32, body: Option<&str>, header: Option<&str>) -> f64 {
    let mut cmd = Command::new("h2load");
    cmd.args(["--h1", "-n", &requests.to_string(), "-c", "8", "-t", "1"]);
    if let Some(file) = body {
        cmd.args(["-d", file]);
    }
    if let Some(h) = header {
        cmd.args(["-H", h]);
    }
    let out = cmd.arg(url).output().unwrap_or_else(|e| panic!("h2load (scripts/setup installs nghttp2-client): {e}"));
    let text = String::from_utf8_lossy(&out.stdout);
    let ok = text.lines().find(|l| l.starts_with("status codes:")).unwrap_or_default();
    assert!(ok.contains(&format!("{requests} 2xx")), "not every request succeeded:\n{text}");
    text.lines()
        .find(|l| l.starts_with("finished in"))
        .and_then(|l| l.split(", ").nth(1))
        .and_then(|s| s.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

fn measure(envoy: &Envoy, load: &Load, requests: u32, body: Option<&str>, cookie: Option<&str>) -> Measured {
    let before = envoy.cpu_time();
    let rps = h2load(&envoy.url(load.path), requests, body, cookie);
    let cpu = envoy.cpu_time().saturating_sub(before);
    Measured { rps, cpu_us: cpu.as_secs_f64() * 1e6 / f64::from(requests) }
}

fn main() {
    let requests: u32 = std::env::var("BENCH_REQUESTS").ok().and_then(|v| v.parse().ok()).unwrap_or(20_000);
    let rounds: u32 = std::env::var("BENCH_ROUNDS").ok().and_then(|v| v.parse().ok()).unwrap_or(3);
    let nodes = three_nodes();
    let refs: Vec<&TestNode> = nodes.iter().collect();
    let nodes_json = nodes_json(&nodes);
    let files = ScratchDir::new("bench");
    let cases: Vec<(&str, String, bool, Vec<Load>)> = vec![
        (
            "body-limit",
            r#"{"default_limit": "50M", "rules": [{"path_prefix": "/upload/", "methods": ["POST"], "limit": "1M"}]}"#
                .into(),
            false,
            vec![
                Load { name: "GET (no body)", path: "/upload/x", body: 0, with_cookie: false },
                Load { name: "POST 4 KiB", path: "/upload/x", body: 4096, with_cookie: false },
            ],
        ),
        (
            "forwarded",
            format!(r#"{{"forwarded": true, "served_by": {{"nodes": {nodes_json}}}}}"#),
            false,
            vec![
                Load { name: "GET", path: "/x", body: 0, with_cookie: false },
                Load { name: "GET forged XFF", path: "/x", body: 0, with_cookie: true },
            ],
        ),
        (
            "path-pin",
            format!(
                r#"{{"nodes": {nodes_json}, "rules": [{{"name": "pinned", "path_prefix": "/pinned/", "node": "node-1"}}]}}"#
            ),
            true,
            vec![
                Load { name: "GET not pinned", path: "/project/x", body: 0, with_cookie: false },
                Load { name: "GET pinned", path: "/pinned/x", body: 0, with_cookie: false },
            ],
        ),
        (
            "uri-hash",
            format!(r#"{{"nodes": {nodes_json}, "prefixes": ["/project/"], "depth": 2}}"#),
            true,
            vec![
                Load { name: "GET not hashed", path: "/login", body: 0, with_cookie: false },
                Load { name: "GET /project/", path: "/project/5f3c/output/output.pdf", body: 0, with_cookie: false },
            ],
        ),
        (
            "affinity",
            format!(
                r#"{{"nodes": {nodes_json}, "cookie": {{"keys": ["bench-key-0123456789abcdef"], "maxidle": "24h"}}}}"#
            ),
            true,
            vec![
                Load { name: "GET new session", path: "/", body: 0, with_cookie: false },
                Load { name: "GET with cookie", path: "/", body: 0, with_cookie: true },
            ],
        ),
    ];
    println!("{requests} requests x {rounds} rounds per cell, 8 connections, HTTP/1.1, Envoy --concurrency 1;");
    println!("CPU = Envoy's user+system time per request, best round; Δ = the filter's cost.\n");
    println!(
        "{:<12} {:<18} {:>10} {:>10} {:>14} {:>14} {:>10}",
        "filter", "load", "base rps", "rps", "base CPU µs", "CPU µs", "Δ µs"
    );
    for (filter, config, routing, loads) in &cases {
        let plain = Envoy::start(&EnvoyConfig::new(vec![], &refs));
        let mut with = EnvoyConfig::new(vec![WasmFilter::new(filter, config)], &refs);
        if *routing {
            with = with.with_routing("x-tether-session");
            with.health_checks = false;
        }
        let filtered = Envoy::start(&with);
        for load in loads {
            let body = (load.body > 0)
                .then(|| files.file_of_size(&format!("b{}", load.body), load.body).display().to_string());
            let cookie = load.with_cookie.then(|| {
                if *filter == "forwarded" {
                    return "x-forwarded-for: 1.2.3.4".to_string();
                }
                let r = request(filtered.listener, "GET", "/", &[]).unwrap_or_else(|e| panic!("{e}"));
                let set = r.header("set-cookie").unwrap_or_else(|| panic!("{filter} set no cookie"));
                format!("cookie: {}", set.split(';').next().unwrap_or_default())
            });
            let (mut base, mut cost) = (Vec::new(), Vec::new());
            for _ in 0..rounds {
                base.push(measure(&plain, load, requests, body.as_deref(), cookie.as_deref()));
                cost.push(measure(&filtered, load, requests, body.as_deref(), cookie.as_deref()));
            }
            let best = |v: &[Measured]| {
                v.iter().min_by(|a, b| a.cpu_us.total_cmp(&b.cpu_us)).map_or((0.0, 0.0), |m| (m.rps, m.cpu_us))
            };
            let ((b_rps, b_cpu), (w_rps, w_cpu)) = (best(&base), best(&cost));
            println!(
                "{filter:<12} {:<18} {b_rps:>10.0} {w_rps:>10.0} {b_cpu:>14.1} {w_cpu:>14.1} {:>+10.1}",
                load.name,
                w_cpu - b_cpu
            );
        }
    }
}
