//! costs: what each Tether filter asks of Envoy per request, counted exactly: VM entries, host
//! calls by name, Wasm instructions (`tether_e2e::wasm_host`, an interpreter standing in for
//! Envoy). The same workload as `scripts/bench`'s arms: the Overleaf configurations and a
//! returning user's GET. Writes target/bench/host-calls.md and prints it. `COSTS_ONLY=affinity`
//! counts one arm; with `TETHER_COST_TRACE=1` its host calls are printed in order with the fuel
//! left at each. Then each arm's linear memory per VM, at start and after 200 first visits.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use tether_e2e::repo_root;
use tether_e2e::wasm_host::{run_chain, FilterVm, RequestCost};
use tether_e2e::workload::{
    affinity_sealed, edge_pods, get, nodes_table, returning_user_and_tick, start_vms, OverleafFilters,
    URI_HASH_BY_ENVOY,
};

/// (arm, its chain of (filter crate, configuration), request path).
type Arm<'a> = (&'a str, Vec<(&'a str, &'a str)>, &'a str);

fn main() {
    let filters = OverleafFilters::new(&nodes_table());
    let edge = filters.edge();
    let project = "/project/5f3c/output/output.pdf";
    let mut arms: Vec<Arm> = vec![("noop", vec![("noop", "")], "/")];
    // tether-edge's host calls without its logic (scripts/bench's `edge-calls` arm).
    arms.push(("edge-calls", vec![("noop", "edge-calls")], "/"));
    for (filter, config) in filters.chain() {
        arms.push((filter, vec![(filter, config)], if filter == "uri-hash" { project } else { "/" }));
    }
    let sealed = affinity_sealed();
    arms.push(("affinity sealed (no nodes)", vec![("affinity", sealed.as_str())], "/"));
    arms.push(("uri-hash by Envoy's hash (no nodes)", vec![("uri-hash", URI_HASH_BY_ENVOY)], project));
    arms.push(("tether (all five)", filters.chain().to_vec(), "/"));
    arms.push(("tether-edge", vec![("edge", edge.as_str())], "/"));
    let pods = edge_pods();
    arms.push(("tether-edge, pods (no nodes)", vec![("edge", pods.as_str())], "/"));

    let mut out = String::from(
        "# Host calls per request\n\nCounted by running each filter's release `.wasm` in an interpreter that stands in for \
         Envoy (tests/src/wasm_host.rs): a returning user's GET, as in `scripts/bench`. Exact and repeatable; \
         each VM entry and host call costs Envoy roughly 1–4 µs on the benchmark machine. Counters and the \
         clock cost a host call per VM per tick (every second), not per request: the last column is what \
         the tick after the two requests cost (one `increment_metric` per counter that moved). uri-hash's \
         down list (shared data) is read once per tick too, by the first request after it: one more \
         call per tick, not counted in that column.\n\n\
         | arm | VM entries | host calls | of which | Wasm instructions | per tick |\n|---|---|---|---|---|---|\n",
    );
    // COSTS_ONLY=affinity: one arm (with TETHER_COST_TRACE=1, its host calls in order).
    if let Ok(only) = std::env::var("COSTS_ONLY") {
        arms.retain(|(arm, _, _)| only.split(',').any(|o| o == *arm));
    }
    for (arm, chain, path) in &arms {
        let (costs, ticks) = returning_user_and_tick(chain, path).unwrap_or_else(|e| panic!("{arm}: {e}"));
        let total = sum(&costs);
        let by_name: Vec<String> = total.host_calls.iter().map(|(n, c)| format!("{} {c}", short(n))).collect();
        let tick = sum(&ticks);
        let _ = writeln!(
            out,
            "| {arm} | {} | {} | {} | {} | {} host calls |",
            total.vm_entries.len(),
            total.total_host_calls(),
            by_name.join(", "),
            total.instructions,
            tick.total_host_calls()
        );
    }
    // Linear memory per VM: what each VM has claimed after a burst of first visits (each issues
    // a cookie, the most allocating path). Envoy's RSS per VM is mostly V8's, not this.
    out.push_str(
        "\n## Linear memory per VM\n\nKiB each VM of the arm has claimed (declared start plus every \
         `memory.grow`) at start and after 200 first-visit requests.\n\n| arm | at start | after 200 requests |\n|---|---|---|\n",
    );
    for (arm, chain, path) in &arms {
        let mut vms = start_vms(chain).unwrap_or_else(|e| panic!("{arm}: {e}"));
        let kib = |vms: &[FilterVm]| {
            vms.iter().map(|v| (v.linear_memory_bytes() / 1024).to_string()).collect::<Vec<_>>().join(", ")
        };
        let at_start = kib(&vms);
        for _ in 0..200 {
            run_chain(&mut vms, &get(path, None)).unwrap_or_else(|e| panic!("{arm}: {e}"));
        }
        let _ = writeln!(out, "| {arm} | {at_start} | {} |", kib(&vms));
    }
    let dir = repo_root().join("target/bench");
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    std::fs::write(dir.join("host-calls.md"), &out).unwrap_or_else(|e| panic!("host-calls.md: {e}"));
    println!("{out}");
}

fn sum(costs: &[RequestCost]) -> RequestCost {
    let mut total = RequestCost::default();
    let mut calls: BTreeMap<String, u32> = BTreeMap::new();
    for c in costs {
        total.vm_entries.extend(c.vm_entries.iter().copied());
        total.instructions += c.instructions;
        for (name, n) in &c.host_calls {
            *calls.entry(name.clone()).or_default() += n;
        }
    }
    total.host_calls = calls;
    total
}

fn short(name: &str) -> &str {
    name.strip_prefix("proxy_").unwrap_or(name)
}
