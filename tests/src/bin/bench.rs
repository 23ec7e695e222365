//! bench: what a Tether filter costs per request, measured against the same Envoy without it.
//!
//! Starts one test node and two Envoys (`--concurrency 1`): one with no filter, one with the
//! filter under test, and drives each in turn with h2load (HTTP/1.1, bounded by request count).
//! Prints requests/s and Envoy's CPU time per request for each, and the difference. Run via `scripts/bench`.

use std::process::Command;
use tether_e2e::{Envoy, EnvoyConfig, ScratchDir, TestNode, WasmFilter};

struct Load {
    name: &'static str,
    /// Body size for POST; 0 means GET.
    body: u64,
}

struct Measured {
    rps: f64,
    /// Envoy's CPU time per request: the figure that shows a filter's cost, since the load
    /// generator and the node share the machine and disturb latency far more than CPU time.
    cpu_us: f64,
}

fn measure(envoy: &Envoy, url: &str, requests: u32, body: Option<&str>) -> Measured {
    let before = envoy.cpu_time();
    let rps = h2load(url, requests, body);
    let cpu = envoy.cpu_time().saturating_sub(before);
    Measured { rps, cpu_us: cpu.as_secs_f64() * 1e6 / f64::from(requests) }
}

fn h2load(url: &str, requests: u32, body: Option<&str>) -> f64 {
    let mut cmd = Command::new("h2load");
    cmd.args(["--h1", "-n", &requests.to_string(), "-c", "8", "-t", "1"]);
    if let Some(file) = body {
        cmd.args(["-d", file]);
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

fn main() {
    let requests: u32 = std::env::var("BENCH_REQUESTS").ok().and_then(|v| v.parse().ok()).unwrap_or(20_000);
    let rounds: u32 = std::env::var("BENCH_ROUNDS").ok().and_then(|v| v.parse().ok()).unwrap_or(3);
    let node = TestNode::start("bench-node");
    let plain = Envoy::start(&EnvoyConfig::new(vec![], &[&node]));
    let config =
        r#"{"default_limit": "50M", "rules": [{"path_prefix": "/upload/", "methods": ["POST"], "limit": "1M"}]}"#;
    let filtered = Envoy::start(&EnvoyConfig::new(vec![WasmFilter::new("body-limit", config)], &[&node]));
    let files = ScratchDir::new("bench");
    let loads = [Load { name: "GET (no body)", body: 0 }, Load { name: "POST 4 KiB", body: 4096 }];
    println!("body-limit: {requests} requests x {rounds} rounds per cell, 8 connections, Envoy --concurrency 1");
    println!(
        "{:<16} {:>14} {:>14} {:>18} {:>18} {:>10}",
        "load", "no filter rps", "filter rps", "no filter CPU µs", "filter CPU µs", "Δ µs/req"
    );
    for load in &loads {
        let body =
            (load.body > 0).then(|| files.file_of_size(&format!("b{}", load.body), load.body).display().to_string());
        let (mut base, mut with) = (Vec::new(), Vec::new());
        // Interleave the two so drift on a shared machine hits both alike; best round counts.
        for _ in 0..rounds {
            base.push(measure(&plain, &plain.url("/upload/x"), requests, body.as_deref()));
            with.push(measure(&filtered, &filtered.url("/upload/x"), requests, body.as_deref()));
        }
        // The least disturbed round: lowest CPU per request.
        let best = |v: &[Measured]| {
            let m = v.iter().min_by(|a, b| a.cpu_us.total_cmp(&b.cpu_us)).map(|m| (m.rps, m.cpu_us));
            m.unwrap_or((0.0, 0.0))
        };
        let (b_rps, b_us) = best(&base);
        let (w_rps, w_us) = best(&with);
        println!(
            "{:<16} {:>14.0} {:>14.0} {:>18.1} {:>18.1} {:>+10.1}",
            load.name,
            b_rps,
            w_rps,
            b_us,
            w_us,
            w_us - b_us
        );
    }
}
