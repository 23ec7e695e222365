//! The workload `scripts/bench` measures, shared with the host-call count (`bin/costs.rs`) so
//! both describe the same thing: the Overleaf filter configurations and a returning user's GET.

use crate::envoy::wasm_path;
use crate::node::nodes_table_json;
use crate::wasm_host::{run_chain, Exchange, FilterVm, HostOptions, RequestCost};

/// The routing contract's header in the benchmark (the filters' default).
pub const SESSION_HEADER: &str = "x-tether-session";

/// The affinity cookie's signing key in the benchmark.
pub const KEY: &str = "bench-key-0123456789abcdef";

/// The five filters configured as in envoy/overleaf.yaml, for a nodes table (`nodes_json`).
pub struct OverleafFilters {
    pub forwarded: String,
    pub body_limit: String,
    pub path_pin: String,
    pub uri_hash: String,
    pub affinity: String,
}

impl OverleafFilters {
    pub fn new(table: &str) -> OverleafFilters {
        OverleafFilters {
            forwarded: format!(
                r#"{{"proto": "https", "forwarded_port": false, "hsts": {{"max_age": "730d", "include_subdomains": true, "preload": true}}, "served_by": {{"nodes": {table}}}}}"#
            ),
            body_limit: r#"{"default_limit": "50M"}"#.to_string(),
            path_pin: format!(
                r#"{{"nodes": {table}, "rules": [{{"name": "git", "path_prefix": "/git/", "node": "server-pro-ha-1"}}]}}"#
            ),
            uri_hash: format!(r#"{{"nodes": {table}, "prefixes": ["/project/"], "depth": 2}}"#),
            affinity: format!(
                r#"{{"nodes": {table}, "cookie": {{"name": "SERVERID", "keys": ["{KEY}"], "maxidle": "24h"}}}}"#
            ),
        }
    }

    /// (filter crate, configuration) in chain order.
    pub fn chain(&self) -> [(&'static str, &str); 5] {
        [
            ("forwarded", &self.forwarded),
            ("body-limit", &self.body_limit),
            ("path-pin", &self.path_pin),
            ("uri-hash", &self.uri_hash),
            ("affinity", &self.affinity),
        ]
    }

    /// tether-edge's configuration: one section per filter.
    pub fn edge(&self) -> String {
        format!(
            r#"{{"forwarded": {}, "body_limit": {}, "path_pin": {}, "uri_hash": {}, "affinity": {}}}"#,
            self.forwarded, self.body_limit, self.path_pin, self.uri_hash, self.affinity
        )
    }
}

/// affinity with no nodes table (issue 15): the cookie seals the endpoint, named by its EDS
/// metadata `filter_metadata.tether.name`, as `envoy/overleaf-pods.yaml` configures it.
pub fn affinity_sealed() -> String {
    format!(
        r#"{{"endpoint_name": {{"filter_metadata": "tether", "key": "name"}}, "cookie": {{"name": "SERVERID", "keys": ["{KEY}"], "maxidle": "24h"}}}}"#
    )
}

/// tether-edge as envoy/overleaf-pods.yaml configures the filters (no nodes table anywhere):
/// forwarded naming the endpoint from its metadata, the body limit, sealed affinity.
pub fn edge_pods() -> String {
    format!(
        r#"{{"forwarded": {{"proto": "https", "forwarded_port": false, "hsts": {{"max_age": "730d", "include_subdomains": true, "preload": true}}, "served_by": {{"endpoint_name": {{"filter_metadata": "tether", "key": "name"}}}}}}, "body_limit": {{"default_limit": "50M"}}, "affinity": {}}}"#,
        affinity_sealed()
    )
}

/// uri-hash with no nodes table: the key's hash goes to Envoy's hash policy.
pub const URI_HASH_BY_ENVOY: &str = r#"{"prefixes": ["/project/"], "depth": 2}"#;

/// The three bench nodes as the filters' nodes table sees them (the host reports the first as
/// the upstream that served).
pub const NODES: [(&str, &str); 3] = [
    ("server-pro-ha-1", "127.0.0.1:8001"),
    ("server-pro-ha-2", "127.0.0.1:8002"),
    ("server-pro-ha-3", "127.0.0.1:8003"),
];

pub fn nodes_table() -> String {
    nodes_table_json(NODES.iter().map(|(name, address)| (name.to_string(), address.to_string())))
}

/// A GET as h2load sends it through Envoy's HTTP/1.1 listener, answered by the node the routing
/// contract names (else node 1) with a small body; `cookie` is the returning user's session cookie, if any.
pub fn get(path: &str, cookie: Option<&str>) -> Exchange {
    let mut request_headers: Vec<(String, String)> = [
        (":authority", "127.0.0.1:10000"),
        (":path", path),
        (":method", "GET"),
        (":scheme", "http"),
        ("user-agent", "h2load nghttp2/1.52.0"),
        ("x-forwarded-proto", "http"),
        ("x-request-id", "8f1d5f5e-4f0e-4b7e-9f61-2f7f6b3f0a1c"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    if let Some(cookie) = cookie {
        request_headers.push(("cookie".into(), cookie.into()));
    }
    let body = b"server-pro-ha-1 GET /".to_vec();
    let response_headers = [
        (":status", "200".to_string()),
        ("content-type", "text/plain".to_string()),
        ("content-length", body.len().to_string()),
        ("x-node", "server-pro-ha-1".to_string()),
        ("x-envoy-upstream-service-time", "0".to_string()),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.clone()))
    .collect();
    let property = |path: &[&str], value: &[u8]| (path.iter().map(|p| p.to_string()).collect(), value.to_vec());
    Exchange {
        request_headers,
        request_body: Vec::new(),
        response_headers,
        response_body: body,
        properties: vec![
            property(&["source", "address"], b"127.0.0.1:40312"),
            property(&["destination", "port"], &10000u64.to_le_bytes()),
            property(&["upstream", "address"], NODES[0].1.as_bytes()),
            property(&["xds", "upstream_host_metadata", "filter_metadata", "tether", "name"], NODES[0].0.as_bytes()),
        ],
        session_header: Some(SESSION_HEADER.to_string()),
    }
}

/// Starts a filter crate's release `.wasm` with `config` on a host answering as `options` say.
pub fn start_vm(filter: &str, config: &str, options: &HostOptions) -> Result<FilterVm, String> {
    let path = wasm_path(filter);
    let module = std::fs::read(&path).map_err(|e| format!("{}: {e} (run scripts/build)", path.display()))?;
    FilterVm::start_with(&module, config, options).map_err(|e| format!("{filter}: {e}"))
}

/// Starts each (filter crate, configuration) in its own VM from its release `.wasm`.
pub fn start_vms(chain: &[(&str, &str)]) -> Result<Vec<FilterVm>, String> {
    chain
        .iter()
        .map(|(filter, config)| {
            let mut vm = start_vm(filter, config, &HostOptions::default())?;
            // Envoy's first tick comes within a second of the configuration; a filter counts
            // and reads the clock per tick only from then on.
            if vm.tick_period_ms().is_some() {
                vm.tick()?;
            }
            Ok(vm)
        })
        .collect()
}

/// A returning user's request through `chain`: a first request gets the session cookie (if
/// the chain sets one), the measured second one sends it back.
pub fn returning_user(chain: &[(&str, &str)], path: &str) -> Result<Vec<RequestCost>, String> {
    returning_user_and_tick(chain, path).map(|(request, _)| request)
}

/// [`returning_user`], and then what the tick that follows costs each VM (counters handed over;
/// the clock and the counters cost a host call per tick, not per request).
pub fn returning_user_and_tick(
    chain: &[(&str, &str)],
    path: &str,
) -> Result<(Vec<RequestCost>, Vec<RequestCost>), String> {
    let mut vms = start_vms(chain)?;
    let first = run_chain(&mut vms, &get(path, None))?;
    let cookie = first
        .last()
        .and_then(|c| c.response_headers.iter().find(|(k, _)| k == "set-cookie"))
        .and_then(|(_, v)| v.split(';').next().map(String::from));
    let request = run_chain(&mut vms, &get(path, cookie.as_deref()))?;
    let ticks = vms.iter_mut().map(FilterVm::tick).collect::<Result<Vec<_>, _>>()?;
    Ok((request, ticks))
}
