//! nginx/overleaf.conf, held in CI without the nginx it needs (ngx_wasm_module is not
//! installable here; nginx/README.md records the by-hand run). The file is read as nginx would
//! read its Tether parts: the portable modules it names run with the configurations it gives, in
//! its order, on the counting host's nginx flavour (tests/src/wasm_host.rs, which answers as
//! ngx_wasm_module was seen to), and what the filters write into `$tether_node` goes through the
//! file's own map and upstream groups to the node nginx would send the request to.

// Needs the built modules (scripts/build): `scripts/test` runs it.
#![cfg(feature = "e2e")]

use tether_e2e::nginx_conf::{check, NginxConf, REMOVABLE_REQUEST_HEADERS};
use tether_e2e::wasm_host::{run_chain, Exchange, FilterVm, HostOptions, Nginx, RequestCost};
use tether_e2e::workload::get;
use xtask::wasm_exports::portable_wasm;

const SAMPLE: &str = include_str!("../../nginx/overleaf.conf");

/// The https server's `listen`.
const HTTPS: &str = "127.0.0.1:8443 ssl";

fn sample() -> NginxConf {
    NginxConf::parse(SAMPLE).unwrap_or_else(|e| panic!("nginx/overleaf.conf: {e}"))
}

/// The https server's filters, in order: (module name, configuration).
fn https_filters(s: &NginxConf) -> Vec<(String, String)> {
    s.filters.iter().filter(|f| f.server == HTTPS).map(|f| (f.module.clone(), f.config.clone())).collect()
}

fn vms(sample: &NginxConf, options: &HostOptions) -> Vec<FilterVm> {
    https_filters(sample)
        .iter()
        .map(|(name, config)| {
            let path = sample.modules.get(name).unwrap_or_else(|| panic!("proxy_wasm {name}: no such module"));
            let lib = std::path::Path::new(path).file_stem().and_then(|s| s.to_str()).unwrap_or_default();
            assert_eq!(portable_wasm(lib).file_name(), std::path::Path::new(path).file_name(), "{path}");
            assert!(path.contains("/portable/"), "{name}: ngx_wasm_module needs the portable flavour: {path}");
            let module =
                std::fs::read(portable_wasm(lib)).unwrap_or_else(|e| panic!("{path}: {e} (run scripts/build)"));
            FilterVm::start_with(&module, config, options).unwrap_or_else(|e| panic!("{name}: {e}"))
        })
        .collect()
}

/// What serves each node's traffic when `down` fail, as the file's map and groups say: the
/// group's first server that is up (the node, else a backup). For the nginx flavour's `serves`.
fn routing(sample: &NginxConf, down: &[&str]) -> Vec<(String, String)> {
    sample
        .node_map
        .iter()
        .map(|(node, group)| {
            let servers = sample.groups.get(group).unwrap_or_else(|| panic!("no upstream {group}"));
            let up = servers.iter().find(|(address, _)| !down.contains(&address.as_str()));
            (node.clone(), up.map(|(address, _)| address.clone()).unwrap_or_else(|| panic!("{group}: all down")))
        })
        .collect()
}

/// A request through the sample's chain; the pool (nothing in `$tether_node`) picks
/// server-pro-ha-2.
fn request(vms: &mut [FilterVm], path: &str, cookie: Option<&str>) -> RequestCost {
    let mut exchange: Exchange = get(path, None);
    exchange.session_header = None;
    exchange.properties =
        [("source", "address", "203.0.113.7"), ("upstream", "address", "127.0.0.1"), ("upstream", "port", "8002")]
            .iter()
            .map(|(a, b, v)| (vec![a.to_string(), b.to_string()], v.as_bytes().to_vec()))
            .collect();
    exchange.request_headers.retain(|(k, _)| k != "x-forwarded-proto");
    if let Some(cookie) = cookie {
        exchange.request_headers.push(("Cookie".into(), cookie.into()));
    }
    let mut costs = run_chain(vms, &exchange).unwrap_or_else(|e| panic!("{e}"));
    costs.pop().unwrap_or_else(|| panic!("no filter"))
}

fn served(cost: &RequestCost) -> String {
    let ip = cost.property("upstream.address").unwrap_or_default();
    format!("{ip}:{}", cost.property("upstream.port").unwrap_or_default())
}

fn cookie_of(cost: &RequestCost) -> String {
    let set =
        cost.response_header("set-cookie").unwrap_or_else(|| panic!("no Set-Cookie: {:?}", cost.response_headers));
    set.split(';').next().unwrap_or_default().to_string()
}

#[test]
fn the_sample_s_map_and_groups_send_each_node_s_traffic_to_it_with_the_others_as_backup() {
    let s = sample();
    assert_eq!(s.declares_tether_node, [HTTPS], "the https server must declare `set $tether_node \"\";`");
    let pool = s.node_map_default.clone().unwrap_or_else(|| panic!("the map has no default (the pool)"));
    assert_eq!(s.groups.get(&pool).map(Vec::len), Some(3), "the pool: {:?}", s.groups);
    let nodes: Vec<&String> = s.groups[&pool].iter().map(|(a, _)| a).collect();
    assert_eq!(s.node_map.len(), nodes.len(), "one map entry per node: {:?}", s.node_map);
    for node in &nodes {
        let group = &s.groups[&s.node_map[*node]];
        assert_eq!(group.first(), Some(&((*node).clone(), false)), "{node}: its own group leads with it");
        let backups: Vec<&String> = group.iter().filter(|(_, b)| *b).map(|(a, _)| a).collect();
        assert_eq!(backups.len(), nodes.len() - 1, "{node}: the others as backup: {group:?}");
    }
    let resent = &s.resent[HTTPS];
    for name in REMOVABLE_REQUEST_HEADERS.iter().chain(&["connection"]) {
        assert!(resent.iter().any(|r| r == name), "proxy_set_header {name} missing: nginx would send a removed line");
    }
    let order: Vec<String> = https_filters(&s).into_iter().map(|(n, _)| n).collect();
    assert_eq!(order, ["tether_forwarded", "tether_body_limit", "tether_path_pin", "tether_affinity"]);
}

#[test]
fn through_the_sample_sessions_stick_git_is_pinned_and_a_failed_node_s_sessions_move_once() {
    let s = sample();
    let options = HostOptions {
        nginx: Some(Nginx { variables: vec!["tether_node".into()], serves: routing(&s, &[]) }),
        environment: vec![("TETHER_AFFINITY_KEYS".into(), "c2FtcGxlLWtleS0wMTIzNDU2Nzg5YWJjZGVm".into())],
        ..HostOptions::default()
    };
    let mut chain = vms(&s, &options);

    let first = request(&mut chain, "/project/1", None);
    assert_eq!(served(&first), "127.0.0.1:8002", "the pool chose");
    assert_eq!(first.response_header("x-served-by"), Some("server-pro-ha-2"));
    assert!(first.response_header("strict-transport-security").is_some_and(|v| v.contains("preload")));
    let cookie = cookie_of(&first);
    assert!(cookie.starts_with("server-pro-ha="), "{cookie}");
    assert_eq!(first.request_header("x-forwarded-proto"), Some("https"));
    assert_eq!(first.request_header("x-forwarded-for"), Some("203.0.113.7"));

    for path in ["/project/1/compile", "/socket.io/1/"] {
        let again = request(&mut chain, path, Some(&cookie));
        assert_eq!(again.property("ngx.tether_node").as_deref(), Some("127.0.0.1:8002"), "{path}");
        assert_eq!(served(&again), "127.0.0.1:8002", "{path}");
        assert_eq!(again.response_header("set-cookie"), None, "{path}");
    }
    let git = request(&mut chain, "/git/p.git/info/refs", Some(&cookie));
    assert_eq!(served(&git), "127.0.0.1:8001", "git goes to the git-bridge sibling");
    assert_eq!(git.property("wasmx.tether_routed_by").as_deref(), Some("path-pin"));
    assert_eq!(git.response_header("set-cookie"), None, "a pinned request leaves the session alone");

    // server-pro-ha-2 fails: its group's first backup serves, and the session moves there, once.
    for vm in &mut chain {
        if let Some(nginx) = vm.nginx_mut() {
            nginx.serves = routing(&s, &["127.0.0.1:8002"]);
        }
    }
    let moved = request(&mut chain, "/project/1", Some(&cookie));
    assert_eq!(served(&moved), "127.0.0.1:8001");
    assert_eq!(moved.response_header("x-served-by"), Some("server-pro-ha-1"));
    let moved_cookie = cookie_of(&moved);
    let after = request(&mut chain, "/project/1", Some(&moved_cookie));
    assert_eq!(after.property("ngx.tether_node").as_deref(), Some("127.0.0.1:8001"));
    assert_eq!(after.response_header("set-cookie"), None, "moved once");

    // 413 over the guide's 50 MB, declared.
    let mut big = get("/upload", None);
    big.session_header = None;
    big.properties = vec![(vec!["source".into(), "address".into()], b"203.0.113.7".to_vec())];
    big.request_headers.push(("Content-Length".into(), (50 * 1024 * 1024 + 1).to_string()));
    big.request_body = b"the first bytes".to_vec(); // headers without end of stream
    run_chain(&mut chain, &big).unwrap_or_else(|e| panic!("{e}"));
    let refused: u64 = chain
        .iter_mut()
        .map(|vm| {
            vm.tick().unwrap_or_else(|e| panic!("{e}"));
            vm.metric("tether_body_limit.rejected.declared_too_large")
        })
        .sum();
    assert_eq!(refused, 1);
}

#[test]
fn check_nginx_passes_the_sample_and_names_each_mistake_an_operator_can_make() {
    let root = tether_e2e::repo_root();
    let env = vec![("TETHER_AFFINITY_KEYS".to_string(), "c2FtcGxlLWtleS0wMTIzNDU2Nzg5YWJjZGVm".to_string())];
    let report = check(SAMPLE, &root, &env);
    assert!(report.errors.is_empty() && report.warnings.is_empty(), "{report:?}");
    assert_eq!(report.ok.len(), 5, "{report:?}");

    let mistakes: [(&str, String, &str); 6] = [
        ("a refused configuration", SAMPLE.replace("\"50M\"", "\"50 potatoes\""), "default_limit"),
        ("no keys in the environment", SAMPLE.to_string(), "TETHER_AFFINITY_KEYS"),
        (
            "the trimmed module",
            SAMPLE.replace("release/portable/tether_path_pin", "release/tether_path_pin"),
            "does not export",
        ),
        ("no set $tether_node", SAMPLE.replace("set $tether_node \"\";", ""), "set $tether_node"),
        (
            "no map",
            SAMPLE.replace("map $tether_node $tether_upstream", "map $host $tether_upstream"),
            "no `map $tether_node",
        ),
        (
            "a map to nowhere",
            SAMPLE.replace("127.0.0.1:8002   server_pro_ha_2;", "127.0.0.1:8002   server_pro_ha_9;"),
            "server_pro_ha_9",
        ),
    ];
    for (what, text, said) in mistakes {
        let env = if what == "no keys in the environment" { Vec::new() } else { env.clone() };
        let report = check(&text, &root, &env);
        assert!(report.errors.iter().any(|e| e.contains(said)), "{what}: {report:?}");
    }
    let no_resend = SAMPLE.replace("proxy_set_header X-Real-IP         $http_x_real_ip;\n", "");
    let report = check(&no_resend, &root, &env);
    assert!(report.errors.is_empty(), "{report:?}");
    assert!(report.warnings.iter().any(|w| w.contains("x-real-ip")), "{report:?}");
}
