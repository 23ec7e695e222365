#![allow(clippy::panic)] // a benchmark: a broken config should stop it loudly

//! Micro-benchmark and quality report for uri-hash's node choice (native, release build):
//! cost per request for 3, 8 and 64 nodes (it should not grow with the node count), and the
//! balance and movement figures over 100 000 keys. Run: `scripts/bench` or
//! `cargo run --release -p tether-core --example uri_hash_bench`.

use std::hint::black_box;
use std::time::Instant;
use tether_core::uri_hash::UriHashPolicy;

fn policy(n: usize) -> UriHashPolicy {
    let nodes: Vec<String> = (0..n)
        .map(|i| format!(r#"{{"name": "node-{i}", "address": "10.1.{}.{}:80"}}"#, i / 250, i % 250 + 1))
        .collect();
    let json = format!(r#"{{"nodes": [{}], "prefixes": ["/project/"], "depth": 2}}"#, nodes.join(","));
    match UriHashPolicy::from_json(json.as_bytes()) {
        Ok(p) => p,
        Err(e) => panic!("{e}"),
    }
}

fn main() {
    let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
    let paths: Vec<String> = (0..100_000)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            format!("/project/{state:016x}/output/output.pdf?cache={}", state % 1000)
        })
        .collect();
    println!("uri-hash node choice (key extraction + SHA-256 + Maglev lookup), native release build:");
    println!("{:>6} {:>12} {:>16} {:>22}", "nodes", "ns/request", "busiest/quietest", "moved when +1 node");
    for n in [3usize, 8, 64] {
        let p = policy(n);
        let rounds = 10;
        let started = Instant::now();
        for _ in 0..rounds {
            for path in &paths {
                let key = p.key_for(black_box(path.as_bytes()));
                black_box(key.and_then(|k| p.choose(k, |_| false)));
            }
        }
        let ns = started.elapsed().as_nanos() as f64 / (rounds * paths.len()) as f64;
        let mut counts = vec![0usize; n];
        let bigger = policy(n + 1);
        let mut moved = 0;
        for path in &paths {
            let Some(key) = p.key_for(path.as_bytes()) else { continue };
            let (Some(a), Some(b)) = (p.choose(key, |_| false), bigger.choose(key, |_| false)) else { continue };
            if let Some(c) = counts.get_mut(a.node) {
                *c += 1;
            }
            if p.node_name(a.node) != bigger.node_name(b.node) {
                moved += 1;
            }
        }
        let ratio = *counts.iter().max().unwrap_or(&0) as f64 / (*counts.iter().min().unwrap_or(&1)).max(1) as f64;
        let moved = moved as f64 / paths.len() as f64 * 100.0;
        println!("{n:>6} {ns:>12.0} {ratio:>16.3} {moved:>15.2}% (ideal {:.2}%)", 100.0 / (n as f64 + 1.0));
    }
}
