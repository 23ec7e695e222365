//! Tether on a proxy-wasm host that is not Envoy (issue 18, part 1): the counting host answers
//! as nginx's ngx_wasm_module was seen to (header names in the client's case, a bare IP for
//! `source.address`, `NotFound` for a property it does not know) or gives nothing at all. Each
//! filter must stay correct, and above all fail closed: a client's forwarding headers never
//! pass because the host said too little.

// Needs the built modules (scripts/build): `scripts/test` runs it.
#![cfg(feature = "e2e")]

use tether_e2e::wasm_host::{run_chain, Exchange, FilterVm, HostOptions, Nginx, RequestCost};
use tether_e2e::workload::{get, nodes_table, start_vm, OverleafFilters, NODES, SESSION_HEADER};

fn vm(filter: &str, config: &str, options: &HostOptions) -> FilterVm {
    start_vm(filter, config, options).unwrap_or_else(|e| panic!("{e}"))
}

/// One request through one VM; a trap fails the test.
fn run(vm: &mut FilterVm, exchange: &Exchange) -> RequestCost {
    let mut costs = run_chain(std::slice::from_mut(vm), exchange).unwrap_or_else(|e| panic!("{e}"));
    costs.pop().unwrap_or_else(|| panic!("no cost"))
}

/// A proxy-wasm host that is neither Envoy nor nginx (it does not say it lowers header names).
fn another_host() -> HostOptions {
    HostOptions { another_host: true, ..HostOptions::default() }
}

fn without_property(mut exchange: Exchange, path: &[&str]) -> Exchange {
    exchange.properties.retain(|(p, _)| p != path);
    exchange
}

fn with_source(exchange: Exchange, source: &str) -> Exchange {
    let mut exchange = without_property(exchange, &["source", "address"]);
    exchange.properties.push((vec!["source".into(), "address".into()], source.as_bytes().to_vec()));
    exchange
}

fn forged(mut exchange: Exchange) -> Exchange {
    for (name, value) in [("X-Forwarded-For", "1.2.3.4"), ("X-Real-IP", "1.2.3.4"), ("Forwarded", "for=1.2.3.4")] {
        exchange.request_headers.push((name.into(), value.into()));
    }
    exchange
}

#[test]
fn forwarded_fails_closed_when_the_host_gives_no_readable_peer() {
    let config = r#"{"forwarded": true}"#;
    let mut forwarded = vm("forwarded", config, &another_host());
    let absent = without_property(forged(get("/", None)), &["source", "address"]);
    for exchange in [absent, with_source(forged(get("/", None)), "unix:/run/envoy.sock")] {
        let cost = run(&mut forwarded, &exchange);
        for name in ["x-forwarded-for", "x-real-ip", "forwarded"] {
            assert_eq!(cost.request_header(name), None, "{name}: {:?}", cost.request_headers);
        }
        assert_eq!(cost.request_header("x-forwarded-proto"), Some("http"));
    }
    forwarded.tick().unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(forwarded.metric("tether_forwarded.unreadable_peer"), 2);
    assert_eq!(forwarded.metric("tether_forwarded.forged_discarded"), 2);
}

#[test]
fn a_bare_ip_peer_and_mixed_case_names_read_as_on_envoy() {
    // ngx_wasm_module: `source.address` without a port, names as the client wrote them.
    let config = r#"{"trusted_proxies": ["127.0.0.0/8"]}"#;
    let mut forwarded = vm("forwarded", config, &another_host());
    let mut exchange = with_source(get("/", None), "127.0.0.1");
    exchange.request_headers.push(("X-Forwarded-For".into(), "203.0.113.9".into()));
    let cost = run(&mut forwarded, &exchange);
    assert_eq!(cost.request_header("x-forwarded-for"), Some("203.0.113.9, 127.0.0.1"));
    assert_eq!(cost.request_header("x-real-ip"), Some("203.0.113.9"), "the trusted chain was read");
    // A returning user's `Cookie` in the client's case still pins the session.
    let affinity_config = OverleafFilters::new(&nodes_table()).affinity;
    let mut affinity = vm("affinity", &affinity_config, &another_host());
    let first = run(&mut affinity, &get("/", None));
    let cookie = first.response_header("set-cookie").and_then(|c| c.split(';').next());
    let cookie = cookie.unwrap_or_else(|| panic!("no cookie: {:?}", first.response_headers)).to_string();
    let mut returning = get("/", None);
    returning.request_headers.push(("Cookie".into(), cookie));
    let cost = run(&mut affinity, &returning);
    assert!(cost.request_header(SESSION_HEADER).is_some(), "not pinned: {:?}", cost.request_headers);
    assert_eq!(cost.request_header("cookie"), None, "indirect: our cookie never reaches the backend");
}

#[test]
fn a_refused_property_or_a_missing_one_is_not_a_trap() {
    // ngx_wasm_module answers NotFound to set_property(tether.routed_by): the SDK's call
    // panicked there (a 500 on every routed request). Here the route still goes out.
    let refuses = HostOptions { refuses_set_property: true, ..HostOptions::default() };
    let filters = OverleafFilters::new(&nodes_table());
    let mut path_pin = vm("path-pin", &filters.path_pin, &refuses);
    let cost = run(&mut path_pin, &get("/git/project.git/info/refs", None));
    assert!(cost.request_header(SESSION_HEADER).is_some(), "{:?}", cost.request_headers);
    assert_eq!(cost.host_calls.get("proxy_set_property"), Some(&1));
    let mut uri_hash = vm("uri-hash", &filters.uri_hash, &refuses);
    let cost = run(&mut uri_hash, &get("/project/5f3c/output/output.pdf", None));
    assert!(cost.request_header(SESSION_HEADER).is_some(), "{:?}", cost.request_headers);
    // No destination.port: no X-Forwarded-Port, and nothing else lost.
    let mut forwarded = vm("forwarded", r#"{}"#, &HostOptions::default());
    let cost = run(&mut forwarded, &without_property(get("/", None), &["destination", "port"]));
    assert_eq!(cost.request_header("x-forwarded-port"), None);
    assert_eq!(cost.request_header("x-forwarded-for"), Some("127.0.0.1"));
}

#[test]
fn a_bare_upstream_address_is_joined_with_upstream_port() {
    // ngx_wasm_module writes upstream.address without the port, which it gives apart.
    let filters = OverleafFilters::new(&nodes_table());
    let mut forwarded = vm("forwarded", &filters.forwarded, &HostOptions::default());
    let le = 8001u64.to_le_bytes().to_vec();
    for port in [b"8001".to_vec(), le] {
        let mut exchange = without_property(get("/", None), &["upstream", "address"]);
        exchange.properties.push((vec!["upstream".into(), "address".into()], b"127.0.0.1".to_vec()));
        exchange.properties.push((vec!["upstream".into(), "port".into()], port));
        let cost = run(&mut forwarded, &exchange);
        assert_eq!(cost.response_header("x-served-by"), Some("server-pro-ha-1"), "{:?}", cost.response_headers);
    }
    forwarded.tick().unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(forwarded.metric("tether_forwarded.unknown_upstream"), 0);
}

/// nginx with ngx_wasm_module and the sample's `set $tether_node "";`; `serves`: (node, the
/// backup that serves it because it fails).
fn nginx(serves: &[(&str, &str)]) -> HostOptions {
    let serves = serves.iter().map(|(n, s)| (n.to_string(), s.to_string())).collect();
    HostOptions { nginx: Some(Nginx { variables: vec!["tether_node".into()], serves }), ..HostOptions::default() }
}

/// A GET as nginx hands it over: bare-IP peer, no `destination.port`, no endpoint metadata, no
/// `stateful_session`; the pool (or a backup) picked `served` unless `$tether_node` names a node.
fn on_nginx(path: &str, cookie: Option<&str>, served: &str) -> Exchange {
    let mut exchange = get(path, None);
    exchange.session_header = None;
    exchange.properties.clear();
    let (ip, port) = served.rsplit_once(':').unwrap_or_else(|| panic!("{served}"));
    for (path, value) in [("source", "127.0.0.1"), ("upstream", ip)] {
        exchange.properties.push((vec![path.into(), "address".into()], value.as_bytes().to_vec()));
    }
    exchange.properties.push((vec!["upstream".into(), "port".into()], port.as_bytes().to_vec()));
    if let Some(cookie) = cookie {
        exchange.request_headers.push(("Cookie".into(), cookie.into()));
    }
    exchange
}

fn set_cookie(cost: &RequestCost) -> Option<String> {
    cost.response_header("set-cookie").and_then(|c| c.split(';').next()).map(str::to_string)
}

#[test]
fn on_nginx_a_session_goes_to_its_node_through_tether_node_and_moves_when_a_backup_served() {
    let (node_2, node_3) = (NODES[1].1, NODES[2].1);
    let config = OverleafFilters::new(&nodes_table()).affinity;
    let mut affinity = vm("affinity", &config, &nginx(&[]));
    let first = run(&mut affinity, &on_nginx("/", None, node_2));
    assert_eq!(first.property("ngx.tether_node"), None, "a new session goes to the pool");
    let cookie = set_cookie(&first).unwrap_or_else(|| panic!("no cookie: {:?}", first.response_headers));

    let returning = run(&mut affinity, &on_nginx("/", Some(&cookie), NODES[0].1));
    assert_eq!(returning.property("ngx.tether_node").as_deref(), Some(node_2));
    assert_eq!(set_cookie(&returning), None, "served by its node: nothing to say");

    // Its node fails; the node's group has the others as backup, and one of them served.
    let mut affinity_down = vm("affinity", &config, &nginx(&[(node_2, node_3)]));
    let moved = run(&mut affinity_down, &on_nginx("/", Some(&cookie), node_3));
    assert_eq!(moved.property("ngx.tether_node").as_deref(), Some(node_2));
    let moved_cookie = set_cookie(&moved).unwrap_or_else(|| panic!("not moved: {:?}", moved.response_headers));
    let after = run(&mut affinity, &on_nginx("/", Some(&moved_cookie), NODES[0].1));
    assert_eq!(after.property("ngx.tether_node").as_deref(), Some(node_3), "the session moved to who served");

    for vm in [&mut affinity, &mut affinity_down] {
        vm.tick().unwrap_or_else(|e| panic!("{e}"));
    }
    assert_eq!(affinity_down.metric("tether_affinity.redispatched"), 1);
    // No stateful_session on nginx: its missing echo is not a missing contract.
    assert_eq!(affinity.metric("tether_affinity.routing_contract_missing"), 0);
    assert_eq!(affinity.metric("tether_affinity.new_sessions"), 1);
}

#[test]
fn on_nginx_a_pinned_path_wins_over_the_session_across_vms() {
    let filters = OverleafFilters::new(&nodes_table());
    let mut chain = [vm("path-pin", &filters.path_pin, &nginx(&[])), vm("affinity", &filters.affinity, &nginx(&[]))];
    let first = run_chain(&mut chain[1..], &on_nginx("/", None, NODES[1].1)).unwrap_or_else(|e| panic!("{e}"));
    let cookie = first.first().and_then(set_cookie).unwrap_or_else(|| panic!("no cookie"));
    let costs = run_chain(&mut chain, &on_nginx("/git/p.git/info/refs", Some(&cookie), NODES[0].1))
        .unwrap_or_else(|e| panic!("{e}"));
    let last = costs.last().unwrap_or_else(|| panic!("no cost"));
    assert_eq!(last.property("ngx.tether_node").as_deref(), Some(NODES[0].1), "the git node, not the session's");
    assert_eq!(last.property("wasmx.tether_routed_by").as_deref(), Some("path-pin"));
    assert_eq!(set_cookie(last), None, "a pinned request does not move the session");
}

#[test]
fn on_nginx_edits_go_one_by_one_so_no_request_line_reaches_the_backend_twice() {
    // ngx_wasm_module clears a whole map by marking its lines, and nginx's proxy module still
    // sends marked request lines: a whole-map write would send every request header twice.
    let mut edge = vm("edge", &OverleafFilters::new(&nodes_table()).edge(), &nginx(&[]));
    let mut exchange = on_nginx("/project/5f3c/output/output.pdf", None, NODES[1].1);
    exchange.request_headers.push(("X-Forwarded-For".into(), "1.2.3.4".into()));
    let cost = run(&mut edge, &exchange);
    assert_eq!(cost.host_calls.get("proxy_set_header_map_pairs"), None, "{:?}", cost.host_calls);
    let mut names: Vec<String> = cost.request_headers.iter().map(|(k, _)| k.to_ascii_lowercase()).collect();
    names.sort();
    let before = names.len();
    names.dedup();
    assert_eq!(names.len(), before, "a line twice: {:?}", cost.request_headers);
    assert!(cost.property("ngx.tether_node").is_some(), "uri-hash routed: {:?}", cost.properties);
    assert_eq!(cost.request_header("x-forwarded-for"), Some("127.0.0.1"), "the forged value is gone");
}

#[test]
fn on_nginx_an_undeclared_tether_node_is_counted_and_said_once() {
    let filters = OverleafFilters::new(&nodes_table());
    let undeclared = HostOptions { nginx: Some(Nginx::default()), ..HostOptions::default() };
    let mut path_pin = vm("path-pin", &filters.path_pin, &undeclared);
    for _ in 0..2 {
        let cost = run(&mut path_pin, &on_nginx("/git/p.git/info/refs", None, NODES[1].1));
        assert!(cost.request_header(SESSION_HEADER).is_some(), "the request still goes on");
    }
    path_pin.tick().unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(path_pin.metric("tether_routing.nginx_variable_refused"), 2);
    let said = path_pin.log().iter().filter(|l| l.contains("set $tether_node")).count();
    assert_eq!(said, 1, "{:?}", path_pin.log());
}

#[test]
fn on_nginx_forged_forwarding_headers_are_emptied_and_a_repeated_one_is_refused() {
    // nginx sends a request line ngx_wasm_module removed: removal is written as an empty value
    // (which nginx/overleaf.conf's `proxy_set_header X $http_x` leaves out), and a header sent
    // twice, whose second line nothing can clean, refuses the request.
    let mut forwarded = vm("forwarded", r#"{"forwarded": false}"#, &nginx(&[]));
    let cost = run(&mut forwarded, &forged(on_nginx("/", None, NODES[0].1)));
    assert_eq!(cost.local_reply, None);
    assert_eq!(cost.request_header("forwarded"), Some(""), "{:?}", cost.request_headers);
    assert_eq!(cost.request_header("x-forwarded-for"), Some("127.0.0.1"));
    assert_eq!(cost.request_header("x-real-ip"), Some("127.0.0.1"));
    let mut twice = forged(on_nginx("/", None, NODES[0].1));
    twice.request_headers.push(("x-forwarded-for".into(), "5.5.5.5".into()));
    let cost = run(&mut forwarded, &twice);
    assert_eq!(cost.local_reply, Some(400), "{:?}", cost.request_headers);
    forwarded.tick().unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(forwarded.metric("tether_nginx.repeated_header_refused"), 1);
}
