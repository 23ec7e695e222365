//! A real Envoy process: config generation, start, readiness, stats, log on failure.

use crate::http::admin_get;
use crate::node::TestNode;
use crate::wait::poll;
use crate::{repo_root, wait_for, ScratchDir};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

/// How often a Tether VM hands its counts to Envoy (tether-glue's `vm::TICK_MS`).
pub const TICK: Duration = Duration::from_millis(tether_glue::vm::TICK_MS as u64);

/// The Envoy binary: `$ENVOY_BIN`; else, with `TETHER_ENVOY_VERSION` set to another version than
/// the default, the virtualenv `scripts/setup` makes for it (`.venvs/envoy-<version>`); else the
/// default's (`.venv`, Envoy 1.40.0).
pub fn envoy_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("ENVOY_BIN") {
        return PathBuf::from(p);
    }
    let (venv, setup) = match std::env::var("TETHER_ENVOY_VERSION") {
        Ok(v) if !v.is_empty() && v != DEFAULT_ENVOY_VERSION => {
            (repo_root().join(format!(".venvs/envoy-{v}/bin/envoy")), format!("TETHER_ENVOY_VERSION={v} scripts/setup"))
        }
        _ => (repo_root().join(".venv/bin/envoy"), "scripts/setup".to_string()),
    };
    assert!(venv.exists(), "Envoy not found at {} and ENVOY_BIN is not set: run {setup}", venv.display());
    venv
}

/// An xDS config source read from `path` (EDS, ECDS as a control plane would send them), reloaded
/// when its directory sees the file replaced: the YAML lines, each indented by `indent`.
fn file_source(path: &Path, indent: usize) -> String {
    let pad = " ".repeat(indent);
    let dir = path.parent().unwrap_or(path);
    format!(
        "\n{pad}resource_api_version: V3\n{pad}path_config_source:\n{pad}  path: {path:?}\n{pad}  watched_directory: {{ path: {dir:?} }}"
    )
}

/// The release of [`envoy_bin`] (`1.40.0`), from `envoy --version`; `unknown` if it says none.
pub fn envoy_version() -> String {
    let out = Command::new(envoy_bin()).arg("--version").output().map(|o| o.stdout).unwrap_or_default();
    let text = String::from_utf8_lossy(&out);
    // "<path>  version: <sha>/1.40.0/Clean/RELEASE/BoringSSL"
    let build = text.split_once("version: ").map_or("", |(_, b)| b);
    build.split('/').nth(1).filter(|v| v.split('.').count() == 3).unwrap_or("unknown").to_string()
}

/// The Envoy release `scripts/setup` installs and `scripts/test` runs unless told otherwise.
pub const DEFAULT_ENVOY_VERSION: &str = "1.40.0";

/// The release `.wasm` of a filter crate (`body-limit` → `tether_body_limit.wasm`).
pub fn wasm_path(filter: &str) -> PathBuf {
    let path = xtask::wasm_exports::release_wasm(&format!("tether_{}", filter.replace('-', "_")));
    assert!(path.exists(), "{} is missing: run scripts/build first", path.display());
    path
}

/// One Tether filter in the HTTP filter chain, configured with raw JSON text.
#[derive(Debug, Clone)]
pub struct WasmFilter {
    pub filter: String,
    pub config_json: String,
    /// Pass the configuration as a `google.protobuf.Struct` (YAML-native) instead of JSON text.
    pub as_struct: bool,
    /// Distinguishes two instances of one filter in a chain (own name and VM).
    pub instance: Option<String>,
    /// Host environment variables the VM may read (`vm_config.environment_variables`).
    pub env_keys: Vec<String>,
    /// `failure_policy` (`FAIL_CLOSED`, `FAIL_OPEN`, `FAIL_RELOAD`); none: `fail_open: false`.
    pub failure_policy: Option<String>,
    /// A `.wasm` to load instead of the filter's release build (the benchmark's variants).
    pub code: Option<PathBuf>,
    /// Delivered by extension config discovery from this file (see [`crate::eds::EcdsFile`]),
    /// as a mesh delivers a WasmPlugin, instead of inline.
    pub ecds: Option<PathBuf>,
}

impl WasmFilter {
    /// Configuration as a `StringValue`, so that any text, including malformed JSON for
    /// bad-config tests, reaches the filter exactly as written.
    pub fn new(filter: &str, config_json: &str) -> WasmFilter {
        WasmFilter {
            filter: filter.to_string(),
            config_json: config_json.to_string(),
            as_struct: false,
            instance: None,
            env_keys: Vec::new(),
            failure_policy: None,
            code: None,
            ecds: None,
        }
    }

    /// A second (third ...) instance of a filter in the chain, in its own VM.
    pub fn instance(filter: &str, instance: &str, config_json: &str) -> WasmFilter {
        WasmFilter { instance: Some(instance.to_string()), ..WasmFilter::new(filter, config_json) }
    }

    /// Configuration as a `google.protobuf.Struct` (JSON is valid YAML flow syntax).
    pub fn new_struct(filter: &str, config_json: &str) -> WasmFilter {
        WasmFilter { as_struct: true, ..WasmFilter::new(filter, config_json) }
    }

    /// The filter's name in the chain (and its root and VM id).
    pub fn id(&self) -> String {
        let id = format!("tether.{}", self.filter.replace('-', "_"));
        match &self.instance {
            Some(instance) => format!("{id}.{instance}"),
            None => id,
        }
    }

    /// The `envoy.extensions.filters.http.wasm.v3.Wasm` message as JSON (what ECDS delivers).
    pub fn wasm_json(&self) -> serde_json::Value {
        let id = self.id();
        let path = self.code.clone().unwrap_or_else(|| wasm_path(&self.filter));
        let mut config = serde_json::json!({
            "name": id,
            "root_id": id,
            "vm_config": {
                "vm_id": id,
                "runtime": "envoy.wasm.runtime.v8",
                "code": {"local": {"filename": path.display().to_string()}},
                "environment_variables": {"host_env_keys": self.env_keys},
            },
            "configuration": {"@type": "type.googleapis.com/google.protobuf.StringValue", "value": self.config_json},
        });
        match &self.failure_policy {
            Some(policy) => config["failure_policy"] = serde_json::json!(policy),
            None => config["fail_open"] = serde_json::json!(false),
        }
        serde_json::json!({"@type": "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm", "config": config})
    }

    /// The `http_filters` entry.
    fn yaml(&self) -> String {
        let id = self.id();
        if let Some(path) = &self.ecds {
            return format!(
                r#"
          - name: {id}
            config_discovery:
              config_source:{source}
              type_urls: [type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm]"#,
                source = file_source(path, 16),
            );
        }
        let (type_url, value) = if self.as_struct {
            ("google.protobuf.Struct", self.config_json.split_whitespace().collect::<Vec<_>>().join(" "))
        } else {
            ("google.protobuf.StringValue", serde_json::to_string(&self.config_json).unwrap_or_default())
        };
        format!(
            r#"
          - name: {id}
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm
              config:
                name: {id}
                root_id: {id}
                {failure}
                vm_config:
                  vm_id: {id}
                  runtime: envoy.wasm.runtime.v8
                  code: {{ local: {{ filename: {path:?} }} }}
                  environment_variables: {{ host_env_keys: {env_keys:?} }}
                configuration:
                  "@type": type.googleapis.com/{type_url}
                  value: {value}"#,
            path = self.code.clone().unwrap_or_else(|| wasm_path(&self.filter)).display().to_string(),
            env_keys = self.env_keys,
            failure = match &self.failure_policy {
                Some(policy) => format!("failure_policy: {policy}"),
                None => "fail_open: false".to_string(),
            },
        )
    }
}

/// A single-listener Envoy config in front of one cluster, `nodes`, of test nodes.
pub struct EnvoyConfig {
    pub filters: Vec<WasmFilter>,
    pub endpoints: Vec<SocketAddr>,
    /// HCM `proxy_100_continue`: the setting Tether documents (see body-limit README).
    pub proxy_100_continue: bool,
    /// The main listener's port; 0 lets the OS choose. A hot restart hands the listening
    /// socket to the new process by its configured address, so it needs a fixed port.
    pub main_port: u16,
    /// HCM `skip_xff_append`: the setting Tether documents; meshes (Istio, Envoy Gateway) leave
    /// it false, so Envoy appends the peer to X-Forwarded-For before any filter runs.
    pub skip_xff_append: bool,
    /// The routing contract: Envoy's `stateful_session` filter (header mode) on this header,
    /// after the wasm filters and before the router.
    pub session_header: Option<String>,
    /// Path prefixes that get their own route with `stateful_session` `strict: true`: a
    /// request pinned to an unavailable node gets a 503 instead of another node.
    pub strict_prefixes: Vec<String>,
    /// A second listener ("tls") with this certificate chain and key (PEM files).
    pub tls: Option<(PathBuf, PathBuf)>,
    /// A third listener ("ipv6") on [::1].
    pub ipv6: bool,
    /// Active HTTP health checks on `/status` every 100 ms (two failures in a row mark a node
    /// down: one slow check on a busy machine must not move sessions in unrelated tests).
    pub health_checks: bool,
    /// Raw `http_filters` entries (YAML, indented as the chain's) after the Wasm filters and
    /// before the routing contract: Envoy-native or Lua filters for the benchmark's other arms.
    pub raw_filters: Vec<String>,
    /// The route's `retry_on` (the samples use `connect-failure,reset-before-request`).
    pub retry_on: String,
    /// A route for GET/HEAD/OPTIONS with this `retry_on` ahead of the others: idempotent
    /// requests may be retried after they were sent (the samples use `connect-failure,reset`).
    pub idempotent_retry_on: Option<String>,
    /// Envoy's worker threads (`--concurrency`), each with its own copy of every Wasm VM.
    pub concurrency: u32,
    /// Endpoints from this EDS file (watched, see [`crate::eds::EdsFile`]) instead of
    /// `endpoints`, with the cluster settings dynamic endpoints need: removed endpoints leave
    /// at once (`ignore_health_on_host_removal`), and draining ones keep their pinned sessions
    /// (`override_host_status` with DRAINING).
    pub eds: Option<PathBuf>,
    /// Path prefixes routed by Envoy's hash policy on the session header (uri-hash without a
    /// nodes table), to a second cluster over the same EDS endpoints, `nodes-hashed`: Maglev on
    /// endpoint host names with bounded load, `stateful_session` disabled on these routes.
    pub hashed_prefixes: Vec<String>,
    /// (path prefix, endpoint name): routes that Envoy's subset load balancer sends to the EDS
    /// endpoint of that name (`metadata_match` on `envoy.lb.name`; 503 while it has none), with
    /// `stateful_session` and tether.affinity off: path-pin's `use-server` on dynamic endpoints.
    pub pinned_prefixes: Vec<(String, String)>,
    /// `x-envoy-attempt-count` on upstream requests (the test node echoes it): tells a request
    /// Envoy retried.
    pub attempt_count: bool,
}

impl EnvoyConfig {
    pub fn new(filters: Vec<WasmFilter>, nodes: &[&TestNode]) -> EnvoyConfig {
        EnvoyConfig {
            filters,
            endpoints: nodes.iter().map(|n| n.addr).collect(),
            proxy_100_continue: true,
            skip_xff_append: true,
            main_port: 0,
            session_header: None,
            strict_prefixes: Vec::new(),
            tls: None,
            ipv6: false,
            health_checks: false,
            raw_filters: Vec::new(),
            retry_on: "connect-failure,reset".to_string(),
            idempotent_retry_on: None,
            concurrency: 1,
            eds: None,
            hashed_prefixes: Vec::new(),
            pinned_prefixes: Vec::new(),
            attempt_count: false,
        }
    }

    /// Endpoints from `eds` (its first version names them; Envoy follows every later one).
    pub fn with_eds(mut self, eds: &crate::eds::EdsFile, first: &[crate::eds::Endpoint]) -> EnvoyConfig {
        self.eds = Some(eds.path());
        self.endpoints = first.iter().map(|e| e.address).collect();
        self
    }

    /// Adds Envoy's side of the routing contract on `header`, with health checks.
    pub fn with_routing(mut self, header: &str) -> EnvoyConfig {
        self.session_header = Some(header.to_string());
        self.health_checks = true;
        self
    }

    fn session_state(header: &str, strict: bool) -> String {
        format!(
            r#"
                session_state:
                  name: envoy.http.stateful_session.header
                  typed_config:
                    "@type": type.googleapis.com/envoy.extensions.http.stateful_session.header.v3.HeaderBasedSessionState
                    name: {header}
                strict: {strict}"#
        )
    }

    fn route(&self, prefix: &str, strict: bool) -> String {
        self.route_with(prefix, strict, "", &self.retry_on)
    }

    fn route_with(&self, prefix: &str, strict: bool, extra_match: &str, retry_on: &str) -> String {
        let per_filter = match (&self.session_header, strict) {
            (Some(header), true) => format!(
                r#"
                typed_per_filter_config:
                  envoy.filters.http.stateful_session:
                    "@type": type.googleapis.com/envoy.extensions.filters.http.stateful_session.v3.StatefulSessionPerRoute
                    stateful_session:{}"#,
                EnvoyConfig::session_state(header, true).replace("\n                ", "\n                      ")
            ),
            _ => String::new(),
        };
        format!(
            r#"
              - match: {{ prefix: "{prefix}"{extra_match} }}
                route:
                  cluster: nodes
                  timeout: 30s
                  retry_policy:
                    retry_on: {retry_on}
                    num_retries: 3
                    retry_host_predicate:
                    - name: envoy.retry_host_predicates.previous_hosts
                      typed_config:
                        "@type": type.googleapis.com/envoy.extensions.retry.host.previous_hosts.v3.PreviousHostsPredicate
                    host_selection_retry_max_attempts: 3{per_filter}"#,
        )
    }

    /// A route whose endpoint Envoy's hash policy chooses from the session header's value.
    fn hashed_route(&self, prefix: &str) -> String {
        let header = self.session_header.as_deref().unwrap_or(crate::workload::SESSION_HEADER);
        format!(
            r#"
              - match: {{ prefix: "{prefix}" }}
                route:
                  cluster: nodes-hashed
                  timeout: 30s
                  hash_policy: [{{ header: {{ header_name: {header} }} }}]
                  retry_policy:
                    retry_on: {retry_on}
                    num_retries: 3
                typed_per_filter_config:
                  envoy.filters.http.stateful_session:
                    "@type": type.googleapis.com/envoy.extensions.filters.http.stateful_session.v3.StatefulSessionPerRoute
                    disabled: true"#,
            retry_on = self.retry_on,
        )
    }

    pub fn yaml(&self) -> String {
        let mut filters: String = self.filters.iter().map(WasmFilter::yaml).collect();
        filters.extend(self.raw_filters.iter().cloned());
        if let Some(header) = &self.session_header {
            filters.push_str(&format!(
                r#"
          - name: envoy.filters.http.stateful_session
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.stateful_session.v3.StatefulSession{}"#,
                EnvoyConfig::session_state(header, false).replace("\n                ", "\n              ")
            ));
        }
        let mut routes: String = self.pinned_prefixes.iter().map(|(p, name)| pinned_route(p, name)).collect();
        routes.extend(self.hashed_prefixes.iter().map(|p| self.hashed_route(p)));
        routes.extend(self.strict_prefixes.iter().map(|p| self.route(p, true)));
        if let Some(retry_on) = &self.idempotent_retry_on {
            let methods =
                r#", headers: [{ name: ":method", string_match: { safe_regex: { regex: "GET|HEAD|OPTIONS" } } }]"#;
            routes.push_str(&self.route_with("/", false, methods, retry_on));
        }
        routes.push_str(&self.route("/", false));
        let health_checks = if self.health_checks {
            r#"
    health_checks:
    - timeout: 1s
      interval: 0.1s
      no_traffic_interval: 0.1s
      unhealthy_threshold: 2
      healthy_threshold: 1
      http_health_check: { path: /status }"#
        } else {
            ""
        };
        let endpoints: String = self
            .endpoints
            .iter()
            .map(|a| {
                format!(
                    "\n        - endpoint: {{ address: {{ socket_address: {{ address: \"{}\", port_value: {} }} }} }}",
                    a.ip(),
                    a.port()
                )
            })
            .collect();
        let hcm = format!(
            r#"
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: ingress
          codec_type: AUTO
          normalize_path: true
          merge_slashes: true
          # The edge settings Tether documents: Envoy judges internal/external by the real
          # peer, and leaves X-Forwarded-For to the forwarded filter (no double append).
          use_remote_address: true
          skip_xff_append: {skip_xff}
          proxy_100_continue: {p100}
          upgrade_configs: [{{ upgrade_type: websocket }}]
          route_config:
            virtual_hosts:
            - name: all
              domains: ["*"]{attempts}
              routes:{routes}
          http_filters:{filters}
          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"#,
            p100 = self.proxy_100_continue,
            skip_xff = self.skip_xff_append,
            attempts = if self.attempt_count { "\n              include_request_attempt_count: true" } else { "" },
        );
        let listener = |name: &str, address: &str, tls: Option<&(PathBuf, PathBuf)>| {
            let transport = tls.map_or(String::new(), |(cert, key)| {
                format!(
                    r#"
      transport_socket:
        name: envoy.transport_sockets.tls
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext
          common_tls_context:
            tls_certificates:
            - certificate_chain: {{ filename: {cert:?} }}
              private_key: {{ filename: {key:?} }}"#
                )
            });
            let port = if name == "main" { self.main_port } else { 0 };
            format!(
                r#"
  - name: {name}
    address: {{ socket_address: {{ address: "{address}", port_value: {port} }} }}
    filter_chains:
    - filters:{hcm}{transport}"#
            )
        };
        let mut listeners = listener("main", "127.0.0.1", None);
        if let Some(tls) = &self.tls {
            listeners.push_str(&listener("tls", "127.0.0.1", Some(tls)));
        }
        if self.ipv6 {
            listeners.push_str(&listener("ipv6", "::1", None));
        }
        let hashed_cluster = match (&self.eds, self.hashed_prefixes.is_empty()) {
            (Some(path), false) => format!(
                r#"
  - name: nodes-hashed
    type: EDS
    eds_cluster_config:
      service_name: nodes
      eds_config:{eds_source}
    ignore_health_on_host_removal: true
    common_lb_config: {{ update_merge_window: 0s }}
    connect_timeout: 2s
    load_balancing_policy:
      policies:
      - typed_extension_config:
          name: envoy.load_balancing_policies.maglev
          typed_config:
            "@type": type.googleapis.com/envoy.extensions.load_balancing_policies.maglev.v3.Maglev
            consistent_hashing_lb_config: {{ use_hostname_for_hashing: true, hash_balance_factor: 150 }}{health_checks}"#,
                eds_source = file_source(path, 8),
            ),
            (None, false) => panic!("hashed_prefixes need EDS endpoints (with_eds): Maglev hashes their host names"),
            (_, true) => String::new(),
        };
        // File-based xDS (EDS, ECDS) needs a node id and cluster.
        let xds_node = "\nnode: { id: tether-e2e, cluster: tether-e2e }".to_string();
        let uses_ecds = self.filters.iter().any(|f| f.ecds.is_some());
        let (node, discovery) = match &self.eds {
            None => (
                if uses_ecds { xds_node.clone() } else { String::new() },
                format!(
                    r#"
    type: STATIC
    load_assignment:
      cluster_name: nodes
      endpoints:
      - lb_endpoints:{endpoints}"#
                ),
            ),
            Some(path) => (
                xds_node,
                format!(
                    r#"
    type: EDS
    eds_cluster_config:
      eds_config:{eds_source}
    ignore_health_on_host_removal: true
    common_lb_config:
      override_host_status: {{ statuses: [UNKNOWN, HEALTHY, DEGRADED, DRAINING] }}
      # Workers see an update as soon as /clusters shows it (default: merged for 1 s, which
      # a test polling /clusters cannot see).
      update_merge_window: 0s{subsets}"#,
                    subsets = if self.pinned_prefixes.is_empty() {
                        ""
                    } else {
                        // Endpoints by name for pinned routes; every other request balances over
                        // all of them; a name with no endpoint is a 503, not another endpoint.
                        r#"
    lb_subset_config:
      fallback_policy: ANY_ENDPOINT
      subset_selectors: [{ keys: [name], single_host_per_subset: true, fallback_policy: NO_FALLBACK }]"#
                    },
                    eds_source = file_source(path, 8),
                ),
            ),
        };
        format!(
            r#"{node}
admin:
  address: {{ socket_address: {{ address: 127.0.0.1, port_value: 0 }} }}
static_resources:
  listeners:{listeners}
  clusters:
  - name: nodes{discovery}
    connect_timeout: 2s
    lb_policy: LEAST_REQUEST{health_checks}{hashed_cluster}
"#
        )
    }
}

/// A route to the EDS endpoint named `name` (subset load balancing on `envoy.lb.name`), with
/// the session filter and affinity off: a pinned request neither follows a session nor moves one.
fn pinned_route(prefix: &str, name: &str) -> String {
    format!(
        r#"
              - match: {{ prefix: "{prefix}" }}
                route:
                  cluster: nodes
                  timeout: 30s
                  metadata_match: {{ filter_metadata: {{ envoy.lb: {{ name: {name} }} }} }}
                  retry_policy: {{ retry_on: connect-failure, num_retries: 2 }}
                typed_per_filter_config:
                  envoy.filters.http.stateful_session:
                    "@type": type.googleapis.com/envoy.extensions.filters.http.stateful_session.v3.StatefulSessionPerRoute
                    disabled: true
                  tether.affinity:
                    "@type": type.googleapis.com/envoy.config.route.v3.FilterConfig
                    disabled: true"#
    )
}

/// A running Envoy. Killed on drop; its log is printed if the test is failing.
pub struct Envoy {
    child: Child,
    pub admin: SocketAddr,
    pub listener: SocketAddr,
    /// Every listener by name: "main", and "tls" / "ipv6" when configured.
    pub listeners: Vec<(String, SocketAddr)>,
    log_path: PathBuf,
    /// What a hot restart repeats: the configuration, environment and threads, and the shared
    /// memory's base id with this process's restart epoch.
    launch: Launch,
    _dir: ScratchDir,
}

#[derive(Clone)]
struct Launch {
    yaml: String,
    env: Vec<(String, String)>,
    concurrency: u32,
    base_id: Option<u64>,
    epoch: u32,
}

impl Envoy {
    pub fn start(config: &EnvoyConfig) -> Envoy {
        Envoy::start_with_env(config, &[])
    }

    /// Starts Envoy with extra environment variables (e.g. keys for `host_env_keys`).
    ///
    /// With health checks on, also waits until every endpoint is healthy: Envoy is `/ready`
    /// once the first round of checks has *finished*, and on a busy machine that round can time
    /// out (the main thread is compiling Wasm), which would leave every node marked unhealthy for
    /// the first requests and let the load balancer ignore the session header.
    pub fn start_with_env(config: &EnvoyConfig, env: &[(&str, &str)]) -> Envoy {
        let envoy = Envoy::launch(&config.yaml(), env, config.concurrency);
        if config.health_checks {
            for addr in &config.endpoints {
                envoy.wait_for_endpoint_health(*addr, true);
            }
        }
        envoy
    }

    pub fn start_yaml(yaml: &str, env: &[(&str, &str)]) -> Envoy {
        Envoy::launch(yaml, env, 1)
    }

    fn launch(yaml: &str, env: &[(&str, &str)], concurrency: u32) -> Envoy {
        let env = env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        Envoy::launch_args(Launch { yaml: yaml.to_string(), env, concurrency, base_id: None, epoch: 0 }, &[])
    }

    /// A hot restart (`--restart-epoch`, how operators upgrade or reload Envoy): a new process
    /// with the same configuration takes the listening sockets over from this one, which drains
    /// for `drain` and then exits (`--parent-shutdown-time-s`). Needs a fixed listener port
    /// ([`EnvoyConfig::main_port`]). Returns the new process once it is ready.
    pub fn hot_restart(&self, drain: Duration) -> Envoy {
        let base_id = self.launch.base_id.unwrap_or_else(|| panic!("no base id: Envoy did not write one"));
        let secs = drain.as_secs().max(1).to_string();
        let shutdown = (drain.as_secs().max(1) + 1).to_string();
        let launch = Launch { base_id: Some(base_id), epoch: self.launch.epoch + 1, ..self.launch.clone() };
        Envoy::launch_args(launch, &["--drain-time-s", &secs, "--parent-shutdown-time-s", &shutdown])
    }

    /// Whether the process has exited (as a hot restart's parent does once drained).
    pub fn exited(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(Some(_)))
    }

    fn launch_args(launch: Launch, extra: &[&str]) -> Envoy {
        let dir = ScratchDir::new("envoy");
        let config_path = dir.join("envoy.yaml");
        let admin_path = dir.join("admin-address");
        let base_id_path = dir.join("base-id");
        let log_path = dir.join("envoy.log");
        std::fs::write(&config_path, &launch.yaml).unwrap_or_else(|e| panic!("write config: {e}"));
        let mut cmd = Command::new(envoy_bin());
        cmd.arg("-c")
            .arg(&config_path)
            .arg("--admin-address-path")
            .arg(&admin_path)
            .arg("--log-path")
            .arg(&log_path)
            .args(["--concurrency", &launch.concurrency.to_string()]);
        match launch.base_id {
            // Epoch 0: a base id nobody else uses (tests run in parallel), written down for a
            // hot restart to find the shared memory by.
            None => cmd.arg("--use-dynamic-base-id").arg("--base-id-path").arg(&base_id_path),
            Some(id) => cmd.args(["--base-id", &id.to_string(), "--restart-epoch", &launch.epoch.to_string()]),
        };
        cmd.args(extra)
            .args(["-l", "info", "--component-log-level"])
            // Tests want the filters' debug lines and health-check events; the bench sets
            // TETHER_ENVOY_COMPONENT_LOG=wasm:info so logging does not weigh on its figures.
            .arg(std::env::var("TETHER_ENVOY_COMPONENT_LOG").unwrap_or_else(|_| "wasm:debug,hc:debug".into()))
            // Flush the log often so tests can poll it.
            .args(["--file-flush-interval-msec", "20"])
            .current_dir(repo_root())
            .envs(launch.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        crate::die_with_parent(&mut cmd);
        let child = cmd.spawn().unwrap_or_else(|e| panic!("cannot start Envoy: {e}"));
        // From here on, a panic drops `envoy`: the process is killed and its log printed.
        let mut envoy = Envoy {
            child,
            admin: unknown_address(),
            listener: unknown_address(),
            listeners: Vec::new(),
            log_path,
            launch: launch.clone(),
            _dir: dir,
        };
        envoy.admin = wait_for("Envoy to write its admin address", Duration::from_secs(30), || {
            if let Ok(Some(status)) = envoy.child.try_wait() {
                panic!("Envoy exited with {status} during start-up");
            }
            std::fs::read_to_string(&admin_path).ok()?.trim().parse().ok()
        });
        // Envoy writes its admin address before it loads the listeners: a filter that cannot
        // load (an Envoy built without a Wasm runtime) ends it here, said at once.
        wait_for("Envoy /ready", Duration::from_secs(30), || {
            if let Ok(Some(status)) = envoy.child.try_wait() {
                panic!("Envoy exited with {status} during start-up");
            }
            matches!(admin_get(envoy.admin, "/ready"), Ok((200, _))).then_some(())
        });
        if envoy.launch.base_id.is_none() {
            envoy.launch.base_id = std::fs::read_to_string(&base_id_path).ok().and_then(|t| t.trim().parse().ok());
        }
        envoy.listeners = listener_addresses(envoy.admin);
        // "main" in generated configs; a sample's first listener otherwise.
        envoy.listener = envoy
            .listener_named("main")
            .or_else(|| envoy.listeners.first().map(|(_, a)| *a))
            .unwrap_or_else(|| panic!("Envoy has no listener"));
        envoy
    }

    pub fn listener_named(&self, name: &str) -> Option<SocketAddr> {
        self.listeners.iter().find(|(n, _)| n == name).map(|(_, a)| *a)
    }

    /// `http://127.0.0.1:PORT` + `path`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.listener)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits until the log contains `text` (the log is flushed every 20 ms).
    pub fn wait_for_log(&self, text: &str) {
        wait_for(&format!("Envoy to log {text:?}"), Duration::from_secs(10), || {
            self.log().contains(text).then_some(())
        });
    }

    /// Waits until Envoy's health checking sees `node` as healthy (`true`) or not.
    pub fn wait_for_health(&self, node: &TestNode, healthy: bool) {
        self.wait_for_endpoint_health(node.addr, healthy);
    }

    pub fn wait_for_endpoint_health(&self, addr: SocketAddr, healthy: bool) {
        let what = format!("Envoy to see {addr} as {}", if healthy { "healthy" } else { "unhealthy" });
        wait_for(&what, Duration::from_secs(10), || {
            let (_, body) = admin_get(self.admin, "/clusters").ok()?;
            let flags = body
                .lines()
                .find(|l| l.contains(&format!("::{addr}::health_flags::")))?
                .rsplit("::")
                .next()?
                .to_string();
            (flags == "healthy" && healthy || flags != "healthy" && !healthy).then_some(())
        });
    }

    /// A Tether counter (`wasmcustom.*`) once it equals `expected`, polled for up to 5 s; else the
    /// last value read, for `assert_eq!` to show. The filters hand their counts to Envoy on their
    /// VM's tick ([`TICK`]), so requests already answered show within one tick.
    pub fn counter(&self, name: &str, expected: u64) -> u64 {
        self.counter_once(name, |v| v == expected)
    }

    /// A Tether counter once it reaches at least `min` (polled as [`Envoy::counter`]).
    pub fn counter_at_least(&self, name: &str, min: u64) -> u64 {
        self.counter_once(name, |v| v >= min)
    }

    fn counter_once(&self, name: &str, done: impl Fn(u64) -> bool) -> u64 {
        poll(Duration::from_secs(5), || Some(self.stat(name)).filter(|&v| done(v))).unwrap_or_else(|| self.stat(name))
    }

    /// Tether counters after one whole tick from now, for counts that must stay where they are
    /// (a 0 no poll can wait for): the tick's contract is the bound.
    pub fn counters_after_tick<const N: usize>(&self, names: [&str; N]) -> [u64; N] {
        std::thread::sleep(TICK + Duration::from_millis(300));
        names.map(|name| self.stat(name))
    }

    /// A counter or gauge from `/stats`, 0 when absent (Tether's own counters lag by up to a
    /// tick: read them with [`Envoy::counter`]).
    pub fn stat(&self, name: &str) -> u64 {
        let (_, body) =
            admin_get(self.admin, &format!("/stats?filter=^{name}$")).unwrap_or_else(|e| panic!("stats: {e}"));
        body.lines()
            .find_map(|l| l.strip_prefix(name).and_then(|r| r.strip_prefix(": ")))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0)
    }

    /// Lines Envoy logged at error or critical level (a healthy run logs none).
    pub fn error_lines(&self) -> Vec<String> {
        self.log().lines().filter(|l| l.contains("[error]") || l.contains("[critical]")).map(String::from).collect()
    }
}

fn unknown_address() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}

fn listener_addresses(admin: SocketAddr) -> Vec<(String, SocketAddr)> {
    let (_, body) = admin_get(admin, "/listeners?format=json").unwrap_or_else(|e| panic!("listeners: {e}"));
    let v: serde_json::Value = serde_json::from_str(&body).unwrap_or_else(|e| panic!("listeners JSON: {e}: {body}"));
    let statuses = v["listener_statuses"].as_array().cloned().unwrap_or_default();
    statuses
        .iter()
        .map(|l| {
            let sock = &l["local_address"]["socket_address"];
            let ip: std::net::IpAddr =
                sock["address"].as_str().unwrap_or("127.0.0.1").parse().unwrap_or_else(|e| panic!("{e}"));
            let port = u16::try_from(sock["port_value"].as_u64().unwrap_or(0)).unwrap_or(0);
            (l["name"].as_str().unwrap_or_default().to_string(), SocketAddr::new(ip, port))
        })
        .collect()
}

impl Drop for Envoy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!(
                "----- Envoy log ({}) -----\n{}\n----- end of Envoy log -----",
                self.log_path.display(),
                self.log()
            );
        }
    }
}

/// `envoy --mode validate` on a config file, run from the repository root, with `env` set.
pub fn validate(config: &Path, env: &[(&str, &str)]) -> Output {
    Command::new(envoy_bin())
        .envs(env.iter().copied())
        .args(["--mode", "validate", "-l", "info", "--component-log-level", "wasm:debug", "-c"])
        .arg(config)
        .current_dir(repo_root())
        .output()
        .unwrap_or_else(|e| panic!("cannot run Envoy: {e}"))
}
