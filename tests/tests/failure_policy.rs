//! What Envoy 1.40 does when a Wasm filter fails at run time (a panic is a Wasm trap), under each
//! `failure_policy`, with the test-only crash filter. The outcome decides the samples' choice
//! (envoy/README.md, "When a filter fails").

// Needs Envoy (scripts/setup) and the built modules (scripts/build): `scripts/test` runs it.
#![cfg(feature = "e2e")]

use std::time::{Duration, Instant};
use tether_e2e::http::{request, Response};
use tether_e2e::{wait_for, Envoy, EnvoyConfig, TestNode, WasmFilter};

struct Crashed {
    envoy: Envoy,
    _node: TestNode,
    crashed: Response,
}

fn get(envoy: &Envoy, crash: bool) -> Response {
    let headers: &[(&str, &str)] = if crash { &[("x-tether-crash", "1")] } else { &[] };
    request(envoy.listener, "GET", "/", headers).unwrap_or_else(|e| panic!("{e}"))
}

/// The filter ran for this request (the node echoes the header it adds).
fn ran(r: &Response) -> bool {
    r.status == 200 && r.body.contains("x-tether-crash-filter")
}

/// Envoy with the crash filter under `policy`: one normal request, then the crashing one.
fn crash_under(policy: &str) -> Crashed {
    let node = TestNode::start("node-1");
    let mut filter = WasmFilter::new("crash", "");
    filter.failure_policy = Some(policy.to_string());
    let envoy = Envoy::start(&EnvoyConfig::new(vec![filter], &[&node]));
    let before = get(&envoy, false);
    assert!(ran(&before), "{policy}: the filter did not run before the crash: {before:?}");
    let crashed = get(&envoy, true);
    envoy.wait_for_log("asked to crash"); // the SDK's panic hook logs the panic at critical
    Crashed { envoy, _node: node, crashed }
}

fn next_five(envoy: &Envoy) -> Vec<(u16, bool)> {
    (0..5).map(|_| get(envoy, false)).map(|r| (r.status, ran(&r))).collect()
}

#[test]
fn fail_closed_refuses_the_crashing_request_and_every_later_one() {
    let c = crash_under("FAIL_CLOSED");
    assert_eq!(c.crashed.status, 503, "{:?}", c.crashed);
    let after = next_five(&c.envoy);
    assert!(after.iter().all(|&(s, _)| s == 503), "{after:?}");
}

#[test]
fn fail_open_serves_later_requests_without_the_filter() {
    let c = crash_under("FAIL_OPEN");
    assert_eq!(c.crashed.status, 503, "{:?}", c.crashed);
    let after = next_five(&c.envoy);
    assert!(after.iter().all(|&(s, ran)| s == 200 && !ran), "{after:?}");
}

#[test]
fn fail_reload_refuses_the_crashing_request_then_runs_a_fresh_vm() {
    let c = crash_under("FAIL_RELOAD");
    assert_eq!(c.crashed.status, 503, "{:?}", c.crashed);
    // Envoy reloads the VM on a request once its backoff (1 s by default) has passed; until
    // then requests get 503. The fresh VM runs the filter again.
    let started = Instant::now();
    wait_for("a reloaded VM to serve", Duration::from_secs(10), || ran(&get(&c.envoy, false)).then_some(()));
    let took = started.elapsed();
    assert!(took < Duration::from_secs(5), "reload took {took:?}");
    let after = next_five(&c.envoy);
    assert!(after.iter().all(|&(s, ran)| s == 200 && ran), "{after:?}");
}
