//! An nginx configuration read as far as Tether needs: its statements with the blocks they sit
//! in, and from those the Wasm modules, each server's `proxy_wasm` filters, the `$tether_node`
//! map and the upstream groups. Shared by the sample's CI test (tests/tests/nginx_sample.rs)
//! and `tether-check-nginx`, which runs every filter's configuration before nginx does.

use std::collections::BTreeMap;

/// One statement: its words (a quoted string is one word, without its quotes) and the blocks
/// around it, outermost first (`["http", "server", "location /"]`).
#[derive(Debug, Clone)]
pub struct Statement {
    pub blocks: Vec<String>,
    /// Each enclosing block's number in the file (two `server {}` blocks differ here).
    pub block_ids: Vec<usize>,
    pub words: Vec<String>,
    pub line: usize,
}

impl Statement {
    pub fn is(&self, directive: &str) -> bool {
        self.words.first().is_some_and(|w| w == directive)
    }

    pub fn arg(&self, i: usize) -> Option<&str> {
        self.words.get(i + 1).map(String::as_str)
    }

    /// The number of the `http { server { ... } }` block the statement is in.
    fn server(&self) -> Option<usize> {
        match (self.blocks.first(), self.blocks.get(1)) {
            (Some(http), Some(server)) if http == "http" && server == "server" => self.block_ids.get(1).copied(),
            _ => None,
        }
    }
}

/// Every statement of `text`, comments dropped (`#` outside quotes).
pub fn statements(text: &str) -> Result<Vec<Statement>, String> {
    let mut out = Vec::new();
    let mut blocks: Vec<String> = Vec::new();
    let mut ids: Vec<usize> = Vec::new();
    let mut opened = 0usize;
    let mut words: Vec<String> = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let mut rest = line;
        loop {
            rest = rest.trim_start();
            if rest.is_empty() || rest.starts_with('#') {
                break;
            }
            if let Some(quote) = rest.chars().next().filter(|c| *c == '\'' || *c == '"') {
                let body = &rest[1..];
                let end = body.find(quote).ok_or(format!("line {}: unclosed quote", n + 1))?;
                words.push(body[..end].to_string());
                rest = &body[end + 1..];
                continue;
            }
            let end = rest.find(|c: char| c.is_whitespace() || matches!(c, ';' | '{' | '}')).unwrap_or(rest.len());
            if end > 0 {
                words.push(rest[..end].to_string());
                rest = &rest[end..];
                continue;
            }
            match rest.as_bytes()[0] {
                b';' => out.push(Statement {
                    blocks: blocks.clone(),
                    block_ids: ids.clone(),
                    words: std::mem::take(&mut words),
                    line: n + 1,
                }),
                b'{' => {
                    blocks.push(std::mem::take(&mut words).join(" "));
                    opened += 1;
                    ids.push(opened);
                }
                _ => {
                    blocks.pop().ok_or(format!("line {}: unbalanced }}", n + 1))?;
                    ids.pop();
                }
            }
            rest = &rest[1..];
        }
    }
    if !blocks.is_empty() || !words.is_empty() {
        return Err("unexpected end of file: a block or statement is not closed".into());
    }
    Ok(out)
}

/// A `proxy_wasm` filter as nginx would run it.
#[derive(Debug, Clone)]
pub struct ProxyWasm {
    pub module: String,
    pub config: String,
    /// The server's `listen` arguments, to say which server it is in.
    pub server: String,
    pub line: usize,
}

/// What Tether needs of a configuration.
#[derive(Debug, Default)]
pub struct NginxConf {
    /// module name -> its .wasm path, as written.
    pub modules: BTreeMap<String, String>,
    /// Every `proxy_wasm` in file order.
    pub filters: Vec<ProxyWasm>,
    /// `map $tether_node $x`: value -> group, and its default.
    pub node_map: BTreeMap<String, String>,
    pub node_map_default: Option<String>,
    /// upstream group -> its servers (address, backup?).
    pub groups: BTreeMap<String, Vec<(String, bool)>>,
    /// server (its `listen`) -> `proxy_set_header` names there (lower case).
    pub resent: BTreeMap<String, Vec<String>>,
    /// servers (their `listen`) that `set $tether_node`.
    pub declares_tether_node: Vec<String>,
}

impl NginxConf {
    pub fn parse(text: &str) -> Result<NginxConf, String> {
        let mut conf = NginxConf::default();
        let statements = statements(text)?;
        // Each server by its `listen` (the first one), for messages and per-server lists.
        let mut listen_of: BTreeMap<usize, String> = BTreeMap::new();
        for st in statements.iter().filter(|st| st.is("listen")) {
            if let Some(server) = st.server() {
                listen_of.entry(server).or_insert_with(|| st.words[1..].join(" "));
            }
        }
        let server_of: Vec<Option<usize>> = statements.iter().map(Statement::server).collect();
        for (st, server) in statements.iter().zip(server_of) {
            let listen = server.and_then(|i| listen_of.get(&i)).cloned().unwrap_or_default();
            let block = st.blocks.last().map(String::as_str).unwrap_or_default();
            if st.is("module") && block == "wasm" {
                if let (Some(name), Some(path)) = (st.arg(0), st.arg(1)) {
                    conf.modules.insert(name.into(), path.into());
                }
            } else if st.is("proxy_wasm") {
                conf.filters.push(ProxyWasm {
                    module: st.arg(0).unwrap_or_default().into(),
                    config: st.arg(1).unwrap_or_default().into(),
                    server: listen,
                    line: st.line,
                });
            } else if st.is("set") && st.arg(0) == Some("$tether_node") && server.is_some() {
                conf.declares_tether_node.push(listen);
            } else if st.is("proxy_set_header") && server.is_some() {
                let name = st.arg(0).unwrap_or_default().to_ascii_lowercase();
                conf.resent.entry(listen).or_default().push(name);
            } else if block.starts_with("map $tether_node ") {
                match (st.words.first().map(String::as_str), st.arg(0)) {
                    (Some("default"), Some(group)) => conf.node_map_default = Some(group.into()),
                    (Some(value), Some(group)) => {
                        conf.node_map.insert(value.into(), group.into());
                    }
                    _ => {}
                }
            } else if st.is("server") && block.starts_with("upstream ") {
                let group = block.trim_start_matches("upstream ").to_string();
                let backup = st.words.iter().any(|w| w == "backup");
                conf.groups.entry(group).or_default().push((st.arg(0).unwrap_or_default().into(), backup));
            }
        }
        Ok(conf)
    }
}

/// Request headers a Tether filter may replace or remove on nginx: nginx sends a line
/// ngx_wasm_module removed unless the configuration re-sends the header from its variable
/// (`proxy_set_header X-Real-IP $http_x_real_ip;`, nginx/README.md).
pub const REMOVABLE_REQUEST_HEADERS: [&str; 8] = [
    "x-forwarded-for",
    "x-forwarded-proto",
    "x-forwarded-host",
    "x-forwarded-port",
    "x-real-ip",
    "forwarded",
    "cookie",
    "x-tether-session",
];

/// What `check` found: lines that stop a deployment, lines worth fixing, and what is fine.
#[derive(Debug, Default)]
pub struct Report {
    pub errors: Vec<String>,
    pub warnings: Vec<String>,
    pub ok: Vec<String>,
}

/// Modules whose filters route, so need nginx's half of the routing contract.
fn routes(path: &str) -> bool {
    ["tether_path_pin", "tether_uri_hash", "tether_affinity", "tether_edge"].iter().any(|m| path.contains(m))
}

/// Checks an nginx configuration's Tether parts before nginx runs them: ngx_wasm_module kills a
/// worker for good when a filter refuses its configuration, and `nginx -t` does not run the
/// filters. Each `proxy_wasm` filter's module is loaded (paths relative to `prefix`, as nginx's
/// `-p`) and configured on the counting host's nginx flavour with `env` as its environment;
/// a server with a routing filter must declare `$tether_node` and map it.
pub fn check(text: &str, prefix: &std::path::Path, env: &[(String, String)]) -> Report {
    use crate::wasm_host::{FilterVm, HostOptions, Nginx};
    let mut report = Report::default();
    let conf = match NginxConf::parse(text) {
        Ok(conf) => conf,
        Err(e) => {
            report.errors.push(e);
            return report;
        }
    };
    if conf.filters.is_empty() {
        report.warnings.push("no proxy_wasm filter: nothing of Tether's to check".into());
    }
    let options = HostOptions {
        environment: env.to_vec(),
        nginx: Some(Nginx { variables: vec!["tether_node".into()], serves: Vec::new() }),
        ..HostOptions::default()
    };
    let mut routing_servers = Vec::new();
    for f in &conf.filters {
        let at = format!("line {} (proxy_wasm {}, server {})", f.line, f.module, f.server);
        let Some(path) = conf.modules.get(&f.module) else {
            report.errors.push(format!("{at}: no `module {}` in the wasm {{}} block", f.module));
            continue;
        };
        let file = prefix.join(path);
        let module = match std::fs::read(&file) {
            Ok(bytes) => bytes,
            Err(e) => {
                report.errors.push(format!("{at}: {}: {e}", file.display()));
                continue;
            }
        };
        let exported = xtask::wasm_exports::export_names(&module).unwrap_or_default();
        let missing: Vec<&str> = xtask::wasm_exports::STREAM_CALLBACKS
            .iter()
            .map(|(_, export)| *export)
            .filter(|export| !exported.iter().any(|e| e == export))
            .collect();
        if !missing.is_empty() {
            report.errors.push(format!(
                "{at}: {path} does not export {}: ngx_wasm_module crashes the worker on the first request; use the portable module (target/wasm32-unknown-unknown/release/portable/)",
                missing.join(", ")
            ));
            continue;
        }
        match FilterVm::start_with(&module, &f.config, &options) {
            Ok(vm) => {
                let said = vm.log().iter().find(|l| l.contains("configured")).cloned().unwrap_or_default();
                report.ok.push(format!("{at}: {}", said.split_once(' ').map_or(said.as_str(), |(_, m)| m)));
            }
            Err(e) => report.errors.push(format!("{at}: {e}")),
        }
        if routes(path) && !routing_servers.contains(&f.server) {
            routing_servers.push(f.server.clone());
        }
    }
    for server in &routing_servers {
        if !conf.declares_tether_node.contains(server) {
            report.errors.push(format!(
                "server {server}: a routing filter runs here but the server does not declare `set $tether_node \"\";` (at server level): sessions and pins would be ignored"
            ));
        }
        let resent = conf.resent.get(server).cloned().unwrap_or_default();
        let missing: Vec<&str> =
            REMOVABLE_REQUEST_HEADERS.iter().copied().filter(|h| !resent.iter().any(|r| r == h)).collect();
        if !missing.is_empty() {
            report.warnings.push(format!(
                "server {server}: no proxy_set_header for {}: a header a filter removes reaches the node as an empty line (e.g. `proxy_set_header X-Real-IP $http_x_real_ip;`)",
                missing.join(", ")
            ));
        }
    }
    if !routing_servers.is_empty() {
        match &conf.node_map_default {
            None => report.errors.push(
                "no `map $tether_node $<upstream variable> { default <pool>; <ip:port> <group>; ... }`: nothing sends a chosen node's requests to it".into(),
            ),
            Some(pool) if !conf.groups.contains_key(pool) => {
                report.errors.push(format!("the $tether_node map's default {pool} is no upstream {{}}"))
            }
            Some(_) => {}
        }
        for (node, group) in &conf.node_map {
            match conf.groups.get(group) {
                None => report.errors.push(format!("the $tether_node map sends {node} to {group}, which is no upstream {{}}")),
                Some(servers) if servers.first().map(|(a, _)| a) != Some(node) => report.warnings.push(format!(
                    "upstream {group} does not lead with {node}: the map sends that node's sessions there"
                )),
                Some(servers) if !servers.iter().any(|(_, backup)| *backup) => report.warnings.push(format!(
                    "upstream {group} has no backup server: when {node} fails, its sessions fail instead of moving (option redispatch)"
                )),
                Some(_) => {}
            }
        }
    }
    report
}
