//! A small proxy-wasm host that runs a filter's release `.wasm` in an interpreter (wasmi) and
//! counts, for one request, what the filter costs Envoy: how often Envoy enters the VM, every
//! host call by name, and the Wasm instructions executed (wasmi's fuel).
//!
//! Envoy's CPU time per request on a shared 2-core VM moves by ±20 µs between runs; these counts
//! are exact and repeatable, so they show what a change saves where the benchmark cannot (host
//! calls cost Envoy about 1–4 µs each on that machine, a VM entry about as much). Only as much
//! of the host as Tether's filters use is real: header maps, properties (those listed in
//! `Exchange::properties` plus what the filter sets), shared data, metrics, logs, local replies,
//! the plugin configuration and WASI's `environ_*`. Any other import is counted and answers
//! `Unimplemented`.

use std::collections::{BTreeMap, HashMap};
use wasmi::{Caller, Config, Engine, Extern, Instance, Linker, Memory, Module, Store, Val};

/// What the host knows of one request and its response.
#[derive(Debug, Clone, Default)]
pub struct Exchange {
    pub request_headers: Vec<(String, String)>,
    /// Request body, delivered in one `on_request_body` call when non-empty.
    pub request_body: Vec<u8>,
    pub response_headers: Vec<(String, String)>,
    /// Response body, delivered in one `on_response_body` call when non-empty.
    pub response_body: Vec<u8>,
    /// Stream properties by path (`["source", "address"]`), as Envoy serialises them.
    pub properties: Vec<(Vec<String>, Vec<u8>)>,
    /// The routing contract's session header, if Envoy's `stateful_session` (header mode)
    /// follows the filters: a request carrying `base64("ip:port")` in it is served by that node
    /// (`upstream.address`), and the response carries the serving node's address in it.
    pub session_header: Option<String>,
}

/// What one request cost, callback by callback summed up.
#[derive(Debug, Clone, Default)]
pub struct RequestCost {
    /// Callbacks the host entered the VM for (only those the module exports, as Envoy does).
    pub vm_entries: Vec<&'static str>,
    /// Host calls by name.
    pub host_calls: BTreeMap<String, u32>,
    /// Wasm instructions executed (wasmi fuel).
    pub instructions: u64,
    /// The request and response headers as the filter left them.
    pub request_headers: Vec<(String, String)>,
    pub response_headers: Vec<(String, String)>,
    /// The status of the local reply a filter sent, if one did.
    pub local_reply: Option<u32>,
    /// The stream's properties at the end, by dotted path (`ngx.tether_node`).
    pub properties: BTreeMap<String, Vec<u8>>,
}

impl RequestCost {
    /// The first request header named `name` (any case), as the filters left it.
    pub fn request_header(&self, name: &str) -> Option<&str> {
        first_line(&self.request_headers, name)
    }

    /// The first response header named `name` (any case), as the filters left it.
    pub fn response_header(&self, name: &str) -> Option<&str> {
        first_line(&self.response_headers, name)
    }

    /// A property as the stream ended with it, as text.
    pub fn property(&self, dotted: &str) -> Option<String> {
        self.properties.get(dotted).map(|v| String::from_utf8_lossy(v).into_owned())
    }

    pub fn total_host_calls(&self) -> u32 {
        self.host_calls.values().sum()
    }
}

fn first_line<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
}

/// What the filters of one chain share about one stream.
#[derive(Default)]
struct Stream {
    request_headers: Vec<(String, String)>,
    response_headers: Vec<(String, String)>,
    request_body: Vec<u8>,
    response_body: Vec<u8>,
    properties: HashMap<Vec<u8>, Vec<u8>>,
    local_reply: Option<u32>,
}

#[derive(Default)]
struct HostState {
    plugin_config: Vec<u8>,
    environment: Vec<(String, String)>,
    stream: Stream,
    shared_data: HashMap<Vec<u8>, (Vec<u8>, u32)>,
    metrics: Vec<(String, u64)>,
    /// What the module asked with `proxy_set_tick_period_milliseconds` (0: no tick).
    tick_period_ms: u32,
    refuses_tick: bool,
    refuses_set_property: bool,
    another_host: bool,
    nginx: Option<Nginx>,
    calls: BTreeMap<String, u32>,
    log: Vec<String>,
}

// proxy-wasm ABI 0.2.1 status codes and enum values.
const OK: i32 = 0;
const NOT_FOUND: i32 = 1;
const BAD_ARGUMENT: i32 = 2;
const UNIMPLEMENTED: i32 = 12;
const CAS_MISMATCH: i32 = 8;
const REQUEST_HEADERS: i32 = 0;
const RESPONSE_HEADERS: i32 = 2;
const PLUGIN_CONFIGURATION: i32 = 7;
const ROOT_ID: i32 = 1;
const STREAM_ID: i32 = 2;

/// How this host differs from Envoy, for tests of what a filter does on other hosts.
#[derive(Debug, Clone, Default)]
pub struct HostOptions {
    /// WASI environment variables the module may read.
    pub environment: Vec<(String, String)>,
    /// Answer `Unimplemented` to `proxy_set_tick_period_milliseconds`, as a host without timers would.
    pub refuses_tick: bool,
    /// Answer `NotFound` to `proxy_set_property` for paths it does not know, as nginx's
    /// ngx_wasm_module does for `tether.routed_by`.
    pub refuses_set_property: bool,
    /// Answer as a proxy-wasm host that is neither Envoy nor nginx: no `xds.node.user_agent_name`
    /// (Envoy's `envoy`), so Tether cannot count on lower-case header names.
    pub another_host: bool,
    /// Answer as nginx with ngx_wasm_module does (../shared/DESIGN.md, "A second host", and
    /// its source, src/common/proxy_wasm/ngx_proxy_wasm_properties.c).
    pub nginx: Option<Nginx>,
}

/// What the nginx flavour of this host knows: the nginx variables the configuration declared
/// with `set` (only those take `set_property(["ngx", name])`; another answers `NotFound`).
/// Besides: `ngx.nginx_version` answers; `wasmx.*` takes any value and keeps it along the
/// request's chain; any other property set answers `NotFound`. The request map is what nginx's
/// proxy module then sends: ngx_wasm_module removes a line by marking it, and the proxy module
/// sends marked lines, so a removed request line stays, a replace changes the first line in
/// place and leaves the others, and a whole map written keeps the old lines beside the new.
///
/// Between the request and the response it stands in for nginx's `proxy_pass` through the
/// sample's map (nginx/overleaf.conf): the node named in `$tether_node` serves, or what `serves`
/// says for it (its group's backup when it fails); with nothing named, or a key that is no
/// address, the pool's choice serves (the exchange's `upstream.address`, `upstream.port`).
#[derive(Debug, Clone, Default)]
pub struct Nginx {
    pub variables: Vec<String>,
    /// (`$tether_node`, the `ip:port` that serves it) where that is not the node itself.
    pub serves: Vec<(String, String)>,
}

/// One filter's VM, configured as Envoy would: `_initialize`, root context, `on_vm_start`,
/// `on_configure`.
pub struct FilterVm {
    store: Store<HostState>,
    instance: Instance,
}

type HostResult = Result<i32, wasmi::Error>;

impl FilterVm {
    pub fn start_with(module: &[u8], plugin_config: &str, options: &HostOptions) -> Result<FilterVm, String> {
        let mut config = Config::default();
        config.consume_fuel(true);
        // Translate everything up front: lazy translation would charge its own fuel to the
        // first request that reaches a function.
        config.compilation_mode(wasmi::CompilationMode::Eager);
        let engine = Engine::new(&config);
        let module = Module::new(&engine, module).map_err(|e| format!("not a module: {e}"))?;
        let state = HostState {
            plugin_config: plugin_config.as_bytes().to_vec(),
            environment: options.environment.clone(),
            refuses_tick: options.refuses_tick,
            refuses_set_property: options.refuses_set_property,
            another_host: options.another_host,
            nginx: options.nginx.clone(),
            ..HostState::default()
        };
        let mut store = Store::new(&engine, state);
        store.set_fuel(u64::MAX / 2).map_err(|e| e.to_string())?;
        let linker = linker(&engine, &module)?;
        let instance = linker.instantiate_and_start(&mut store, &module).map_err(|e| format!("instantiate: {e}"))?;
        let mut vm = FilterVm { store, instance };
        vm.call_if_exported("_initialize", &[])?;
        vm.call_if_exported("proxy_on_context_create", &[Val::I32(ROOT_ID), Val::I32(0)])?;
        vm.call_if_exported("proxy_on_vm_start", &[Val::I32(ROOT_ID), Val::I32(0)])?;
        let size = i32::try_from(plugin_config.len()).map_err(|_| "config too large")?;
        let configured = vm.call_if_exported("proxy_on_configure", &[Val::I32(ROOT_ID), Val::I32(size)])?;
        if configured != Some(1) {
            return Err(format!("the filter refused its configuration: {}", vm.store.data().log.join(" | ")));
        }
        Ok(vm)
    }

    /// The size of the module's linear memory now, in bytes: what the VM has claimed (the
    /// declared start plus every `memory.grow`), which Envoy's RSS holds for each VM.
    pub fn linear_memory_bytes(&self) -> usize {
        self.instance
            .get_export(&self.store, "memory")
            .and_then(Extern::into_memory)
            .map_or(0, |m| m.data_size(&self.store))
    }

    /// A counter's value as the host holds it (`tether_path_pin.client_session_header_removed`),
    /// 0 if undefined. Counts a ticking module keeps in the VM arrive with [`FilterVm::tick`].
    pub fn metric(&self, name: &str) -> u64 {
        self.store.data().metrics.iter().filter(|(n, _)| n == name).map(|(_, v)| v).sum()
    }

    /// The nginx flavour's settings, to change between requests (a node fails).
    pub fn nginx_mut(&mut self) -> Option<&mut Nginx> {
        self.store.data_mut().nginx.as_mut()
    }

    /// The module's log lines so far (`<level> <message>`).
    pub fn log(&self) -> &[String] {
        &self.store.data().log
    }

    /// The tick period the module asked for, if any.
    pub fn tick_period_ms(&self) -> Option<u32> {
        Some(self.store.data().tick_period_ms).filter(|&ms| ms > 0)
    }

    /// The root's timer fires once, as Envoy's would every `tick_period_ms`: what it cost.
    pub fn tick(&mut self) -> Result<RequestCost, String> {
        let mut cost = RequestCost::default();
        let mut stream = Stream::default();
        self.phase(&mut stream, &mut cost, "proxy_on_tick", &[Val::I32(ROOT_ID)])?;
        Ok(cost)
    }

    /// One callback of one stream: the stream's state goes into the VM and comes back out,
    /// so filters in a chain see each other's changes (headers, properties) as in Envoy.
    fn phase(
        &mut self,
        stream: &mut Stream,
        cost: &mut RequestCost,
        export: &'static str,
        args: &[Val],
    ) -> Result<(), String> {
        {
            let state = self.store.data_mut();
            std::mem::swap(&mut state.stream, stream);
            state.calls.clear();
        }
        let before = self.store.get_fuel().map_err(|e| e.to_string())?;
        let result = self.call_if_exported(export, args);
        let after = self.store.get_fuel().map_err(|e| e.to_string())?;
        let state = self.store.data_mut();
        std::mem::swap(&mut state.stream, stream);
        for (name, n) in &state.calls {
            *cost.host_calls.entry(name.clone()).or_default() += n;
        }
        cost.instructions += before - after;
        if result?.is_some() {
            cost.vm_entries.push(export);
        }
        Ok(())
    }

    /// Calls an export if the module has it (as Envoy does): `None` if not, else its result
    /// (0 for functions without one).
    fn call_if_exported(&mut self, name: &str, args: &[Val]) -> Result<Option<i64>, String> {
        let Some(func) = self.instance.get_func(&self.store, name) else { return Ok(None) };
        let mut results = vec![Val::I32(0); func.ty(&self.store).results().len()];
        func.call(&mut self.store, args, &mut results).map_err(|e| format!("{name} trapped: {e}"))?;
        Ok(Some(match results.first() {
            Some(Val::I32(v)) => i64::from(*v),
            Some(Val::I64(v)) => *v,
            _ => 0,
        }))
    }
}

/// Runs one request through `vms` as Envoy runs an HTTP filter chain: every filter's context
/// created, request callbacks in chain order until one answers locally, response callbacks in
/// reverse (none after a local reply), then log, done and delete. Only exported callbacks are
/// entered, as Envoy does. One cost per filter, in chain order.
pub fn run_chain(vms: &mut [FilterVm], exchange: &Exchange) -> Result<Vec<RequestCost>, String> {
    let mut stream = Stream {
        request_headers: exchange.request_headers.clone(),
        response_headers: exchange.response_headers.clone(),
        request_body: exchange.request_body.clone(),
        response_body: exchange.response_body.clone(),
        properties: exchange.properties.iter().map(|(p, v)| (p.join("\0").into_bytes(), v.clone())).collect(),
        local_reply: None,
    };
    let mut costs = vec![RequestCost::default(); vms.len()];
    let id = Val::I32(STREAM_ID);
    let count = |n: usize| Val::I32(i32::try_from(n).unwrap_or(i32::MAX));
    let eos = |body: &[u8]| Val::I32(i32::from(body.is_empty()));
    for (vm, cost) in vms.iter_mut().zip(costs.iter_mut()) {
        vm.phase(&mut stream, cost, "proxy_on_context_create", &[id.clone(), Val::I32(ROOT_ID)])?;
    }
    for (vm, cost) in vms.iter_mut().zip(costs.iter_mut()) {
        let args = [id.clone(), count(stream.request_headers.len()), eos(&exchange.request_body)];
        vm.phase(&mut stream, cost, "proxy_on_request_headers", &args)?;
        if stream.local_reply.is_some() {
            break;
        }
    }
    if !exchange.request_body.is_empty() && stream.local_reply.is_none() {
        for (vm, cost) in vms.iter_mut().zip(costs.iter_mut()) {
            let args = [id.clone(), count(exchange.request_body.len()), Val::I32(1)];
            vm.phase(&mut stream, cost, "proxy_on_request_body", &args)?;
            if stream.local_reply.is_some() {
                break;
            }
        }
    }
    if stream.local_reply.is_none() {
        if let Some(header) = &exchange.session_header {
            stateful_session(&mut stream, header);
        }
        if let Some(nginx) = vms.first().and_then(|vm| vm.store.data().nginx.clone()) {
            nginx_proxy_pass(&mut stream, &nginx);
        }
        for (vm, cost) in vms.iter_mut().zip(costs.iter_mut()).rev() {
            let args = [id.clone(), count(stream.response_headers.len()), eos(&exchange.response_body)];
            vm.phase(&mut stream, cost, "proxy_on_response_headers", &args)?;
        }
        if !exchange.response_body.is_empty() {
            for (vm, cost) in vms.iter_mut().zip(costs.iter_mut()).rev() {
                let args = [id.clone(), count(exchange.response_body.len()), Val::I32(1)];
                vm.phase(&mut stream, cost, "proxy_on_response_body", &args)?;
            }
        }
    }
    for export in ["proxy_on_log", "proxy_on_done", "proxy_on_delete"] {
        for (vm, cost) in vms.iter_mut().zip(costs.iter_mut()) {
            vm.phase(&mut stream, cost, export, std::slice::from_ref(&id))?;
        }
    }
    for cost in &mut costs {
        cost.request_headers = stream.request_headers.clone();
        cost.response_headers = stream.response_headers.clone();
        cost.local_reply = stream.local_reply;
        cost.properties = stream
            .properties
            .iter()
            .map(|(path, value)| (String::from_utf8_lossy(path).replace('\0', "."), value.clone()))
            .collect();
    }
    Ok(costs)
}

/// Envoy's `stateful_session` filter, header mode, between the filters and the upstream: the
/// endpoint the request's header names serves; the response carries `base64(address)` of the
/// endpoint that served only when it is not the one the request named (Envoy's
/// `HeaderBasedSessionStateFactory::SessionStateImpl::onUpdate`, observed on 1.40).
fn stateful_session(stream: &mut Stream, header: &str) {
    use base64::Engine as _;
    let upstream_path = b"upstream\0address".to_vec();
    let requested = stream.request_headers.iter().find(|(k, _)| k == header).map(|(_, v)| v.clone());
    let requested = requested.and_then(|v| base64::engine::general_purpose::STANDARD.decode(v).ok());
    if let Some(address) = &requested {
        stream.properties.insert(upstream_path.clone(), address.clone());
    }
    if let Some(served) = stream.properties.get(&upstream_path).filter(|s| Some(*s) != requested.as_ref()) {
        let encoded = base64::engine::general_purpose::STANDARD.encode(served);
        stream.response_headers.push((header.to_string(), encoded));
    }
}

/// nginx's `proxy_pass http://$tether_upstream` (nginx/overleaf.conf): the node in
/// `$tether_node` (or what serves it) serves; nginx then reports it as a bare IP and its port.
fn nginx_proxy_pass(stream: &mut Stream, nginx: &Nginx) {
    let chosen = stream.properties.get(&b"ngx\0tether_node"[..]).map(|v| String::from_utf8_lossy(v).into_owned());
    let Some(node) = chosen else { return };
    let served = nginx.serves.iter().find(|(n, _)| *n == node).map_or(node, |(_, served)| served.clone());
    let Ok(address) = served.parse::<std::net::SocketAddr>() else { return }; // a hash key: the pool's choice
    stream.properties.insert(b"upstream\0address".to_vec(), address.ip().to_string().into_bytes());
    stream.properties.insert(b"upstream\0port".to_vec(), address.port().to_string().into_bytes());
}

/// Counts one host call. With `TETHER_COST_TRACE` set, also prints the fuel left at each call
/// (stderr): the differences show where between two host calls the instructions go.
fn count(caller: &mut Caller<'_, HostState>, name: &str) {
    if std::env::var_os("TETHER_COST_TRACE").is_some() {
        eprintln!("{:>12} {name}", caller.get_fuel().unwrap_or(0));
    }
    *caller.data_mut().calls.entry(name.to_string()).or_default() += 1;
}

fn memory(caller: &Caller<'_, HostState>) -> Result<Memory, wasmi::Error> {
    caller.get_export("memory").and_then(Extern::into_memory).ok_or_else(|| wasmi::Error::new("no memory export"))
}

fn read(caller: &Caller<'_, HostState>, ptr: i32, len: i32) -> Result<Vec<u8>, wasmi::Error> {
    let mut buf = vec![0u8; usize::try_from(len).map_err(|_| wasmi::Error::new("negative length"))?];
    memory(caller)?.read(caller, ptr as u32 as usize, &mut buf).map_err(|e| wasmi::Error::new(e.to_string()))?;
    Ok(buf)
}

fn write(caller: &mut Caller<'_, HostState>, ptr: i32, bytes: &[u8]) -> Result<(), wasmi::Error> {
    let mem = memory(caller)?;
    mem.write(caller, ptr as u32 as usize, bytes).map_err(|e| wasmi::Error::new(e.to_string()))
}

fn text(caller: &Caller<'_, HostState>, ptr: i32, len: i32) -> Result<String, wasmi::Error> {
    Ok(String::from_utf8_lossy(&read(caller, ptr, len)?).into_owned())
}

/// Hands bytes to the module as Envoy does: allocated with the module's `malloc`, pointer and
/// size written where the module asked.
fn hand_over(caller: &mut Caller<'_, HostState>, bytes: &[u8], ptr_out: i32, size_out: i32) -> HostResult {
    let malloc = caller
        .get_export("malloc")
        .and_then(Extern::into_func)
        .ok_or_else(|| wasmi::Error::new("no malloc export"))?
        .typed::<i32, i32>(&*caller)?;
    let size = i32::try_from(bytes.len()).map_err(|_| wasmi::Error::new("value too large"))?;
    let ptr = malloc.call(&mut *caller, size)?;
    write(caller, ptr, bytes)?;
    write(caller, ptr_out, &ptr.to_le_bytes())?;
    write(caller, size_out, &size.to_le_bytes())?;
    Ok(OK)
}

fn headers_mut(state: &mut HostState, map: i32) -> Option<&mut Vec<(String, String)>> {
    match map {
        REQUEST_HEADERS => Some(&mut state.stream.request_headers),
        RESPONSE_HEADERS => Some(&mut state.stream.response_headers),
        _ => None,
    }
}

/// proxy-wasm's header map encoding, as the filters read it (tether-glue).
/// Header lines in proxy-wasm's encoding.
pub fn encode_map(pairs: &[(String, String)]) -> Vec<u8> {
    tether_core::headers::HeaderMap::encode(
        &pairs.iter().map(|(k, v)| (k.as_bytes(), v.as_bytes())).collect::<Vec<_>>(),
    )
}

/// The linker being built, and which imports it implements so far (the rest get a stub).
struct Imports {
    linker: Linker<HostState>,
    defined: Vec<(&'static str, &'static str)>,
}

impl Imports {
    fn wrap<Params, Results>(
        &mut self,
        module: &'static str,
        name: &'static str,
        func: impl wasmi::IntoFunc<HostState, Params, Results>,
    ) -> Result<(), String> {
        self.linker.func_wrap(module, name, func).map_err(|e| e.to_string())?;
        self.defined.push((module, name));
        Ok(())
    }
}

fn linker(engine: &Engine, module: &Module) -> Result<Linker<HostState>, String> {
    let mut l = Imports { linker: Linker::<HostState>::new(engine), defined: Vec::new() };
    l.wrap("env", "proxy_log", |mut c: Caller<'_, HostState>, level: i32, ptr: i32, len: i32| -> HostResult {
        count(&mut c, "proxy_log");
        let line = format!("{level} {}", text(&c, ptr, len)?);
        c.data_mut().log.push(line);
        Ok(OK)
    })?;
    l.wrap("env", "proxy_get_current_time_nanoseconds", |mut c: Caller<'_, HostState>, out: i32| -> HostResult {
        count(&mut c, "proxy_get_current_time_nanoseconds");
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        write(&mut c, out, &(now.as_nanos() as u64).to_le_bytes())?;
        Ok(OK)
    })?;
    l.wrap(
        "env",
        "proxy_get_buffer_bytes",
        |mut c: Caller<'_, HostState>, kind: i32, start: i32, max: i32, ptr_out: i32, size_out: i32| -> HostResult {
            count(&mut c, "proxy_get_buffer_bytes");
            let buffer = match kind {
                PLUGIN_CONFIGURATION => c.data().plugin_config.clone(),
                0 => c.data().stream.request_body.clone(),
                1 => c.data().stream.response_body.clone(),
                _ => return Ok(NOT_FOUND),
            };
            let start = (start as u32 as usize).min(buffer.len());
            let end = start.saturating_add(max as u32 as usize).min(buffer.len());
            hand_over(&mut c, &buffer[start..end], ptr_out, size_out)
        },
    )?;
    l.wrap(
        "env",
        "proxy_get_header_map_pairs",
        |mut c: Caller<'_, HostState>, map: i32, ptr_out: i32, size_out: i32| -> HostResult {
            count(&mut c, "proxy_get_header_map_pairs");
            let Some(headers) = headers_mut(c.data_mut(), map) else { return Ok(BAD_ARGUMENT) };
            let encoded = encode_map(headers);
            hand_over(&mut c, &encoded, ptr_out, size_out)
        },
    )?;
    l.wrap(
        "env",
        "proxy_get_header_map_value",
        |mut c: Caller<'_, HostState>, map: i32, key: i32, key_len: i32, ptr_out: i32, size_out: i32| -> HostResult {
            count(&mut c, "proxy_get_header_map_value");
            let key = text(&c, key, key_len)?;
            let Some(headers) = headers_mut(c.data_mut(), map) else { return Ok(BAD_ARGUMENT) };
            match headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(&key)).map(|(_, v)| v.clone()) {
                Some(value) => hand_over(&mut c, value.as_bytes(), ptr_out, size_out),
                None => Ok(NOT_FOUND),
            }
        },
    )?;
    for name in ["proxy_add_header_map_value", "proxy_replace_header_map_value"] {
        l.wrap(
            "env",
            name,
            move |mut c: Caller<'_, HostState>,
                  map: i32,
                  key: i32,
                  key_len: i32,
                  value: i32,
                  value_len: i32|
                  -> HostResult {
                count(&mut c, name);
                let (key, value) = (text(&c, key, key_len)?, text(&c, value, value_len)?);
                let nginx = c.data().nginx.is_some();
                let Some(headers) = headers_mut(c.data_mut(), map) else { return Ok(BAD_ARGUMENT) };
                if nginx && map == REQUEST_HEADERS && name == "proxy_replace_header_map_value" {
                    // The first line changes in place; the others are marked, and still sent.
                    match headers.iter_mut().find(|(k, _)| k.eq_ignore_ascii_case(&key)) {
                        Some(line) => line.1 = value,
                        None => headers.push((key, value)),
                    }
                    return Ok(OK);
                }
                if name == "proxy_replace_header_map_value" {
                    headers.retain(|(k, _)| !k.eq_ignore_ascii_case(&key)); // HTTP names: any case
                }
                headers.push((key, value));
                Ok(OK)
            },
        )?;
    }
    l.wrap(
        "env",
        "proxy_set_header_map_pairs",
        |mut c: Caller<'_, HostState>, map: i32, ptr: i32, len: i32| -> HostResult {
            count(&mut c, "proxy_set_header_map_pairs");
            let encoded = read(&c, ptr, len)?;
            let map_now = tether_core::headers::HeaderMap::from_raw(encoded);
            let pairs: Vec<(String, String)> = map_now
                .iter()
                .map(|(k, v)| (String::from_utf8_lossy(k).into_owned(), String::from_utf8_lossy(v).into_owned()))
                .collect();
            let nginx = c.data().nginx.is_some();
            let Some(headers) = headers_mut(c.data_mut(), map) else { return Ok(BAD_ARGUMENT) };
            if nginx && map == REQUEST_HEADERS {
                headers.extend(pairs); // what the backend then receives
            } else {
                *headers = pairs;
            }
            Ok(OK)
        },
    )?;
    l.wrap(
        "env",
        "proxy_remove_header_map_value",
        |mut c: Caller<'_, HostState>, map: i32, key: i32, key_len: i32| -> HostResult {
            count(&mut c, "proxy_remove_header_map_value");
            let key = text(&c, key, key_len)?;
            if c.data().nginx.is_some() && map == REQUEST_HEADERS {
                return Ok(OK); // marked removed, and sent by nginx's proxy module all the same
            }
            let Some(headers) = headers_mut(c.data_mut(), map) else { return Ok(BAD_ARGUMENT) };
            headers.retain(|(k, _)| !k.eq_ignore_ascii_case(&key)); // HTTP names: any case
            Ok(OK)
        },
    )?;
    l.wrap(
        "env",
        "proxy_get_property",
        |mut c: Caller<'_, HostState>, path: i32, path_len: i32, ptr_out: i32, size_out: i32| -> HostResult {
            count(&mut c, "proxy_get_property");
            let path = read(&c, path, path_len)?;
            if std::env::var_os("TETHER_COST_TRACE").is_some() {
                eprintln!("{:>12}   ({})", "", String::from_utf8_lossy(&path).replace('\0', "."));
            }
            if c.data().nginx.is_some() && path == b"ngx\0nginx_version" {
                return hand_over(&mut c, b"1.27.4", ptr_out, size_out);
            }
            // Envoy sets its xDS node's user_agent_name; nginx has no `xds`.
            if c.data().nginx.is_none() && !c.data().another_host && path == b"xds\0node\0user_agent_name" {
                return hand_over(&mut c, b"envoy", ptr_out, size_out);
            }
            match c.data().stream.properties.get(&path).cloned() {
                Some(value) => hand_over(&mut c, &value, ptr_out, size_out),
                None => Ok(NOT_FOUND),
            }
        },
    )?;
    l.wrap(
        "env",
        "proxy_set_property",
        |mut c: Caller<'_, HostState>, path: i32, path_len: i32, value: i32, value_len: i32| -> HostResult {
            count(&mut c, "proxy_set_property");
            if c.data().refuses_set_property {
                return Ok(NOT_FOUND);
            }
            let (path, value) = (read(&c, path, path_len)?, read(&c, value, value_len)?);
            if let Some(nginx) = &c.data().nginx {
                let declared = |name: &[u8]| nginx.variables.iter().any(|v| v.as_bytes() == name);
                let accepted = match path.strip_prefix(b"ngx\0") {
                    Some(variable) => declared(variable),
                    None => path.starts_with(b"wasmx\0"),
                };
                if !accepted {
                    return Ok(NOT_FOUND);
                }
            }
            c.data_mut().stream.properties.insert(path, value);
            Ok(OK)
        },
    )?;
    l.wrap(
        "env",
        "proxy_get_shared_data",
        |mut c: Caller<'_, HostState>,
         key: i32,
         key_len: i32,
         ptr_out: i32,
         size_out: i32,
         cas_out: i32|
         -> HostResult {
            count(&mut c, "proxy_get_shared_data");
            let key = read(&c, key, key_len)?;
            match c.data().shared_data.get(&key).cloned() {
                Some((value, cas)) => {
                    write(&mut c, cas_out, &cas.to_le_bytes())?;
                    hand_over(&mut c, &value, ptr_out, size_out)
                }
                None => Ok(NOT_FOUND),
            }
        },
    )?;
    l.wrap(
        "env",
        "proxy_set_shared_data",
        |mut c: Caller<'_, HostState>, key: i32, key_len: i32, value: i32, value_len: i32, cas: i32| -> HostResult {
            count(&mut c, "proxy_set_shared_data");
            let (key, value) = (read(&c, key, key_len)?, read(&c, value, value_len)?);
            let entry = c.data_mut().shared_data.entry(key).or_insert((Vec::new(), 0));
            if cas != 0 && cas as u32 != entry.1 {
                return Ok(CAS_MISMATCH);
            }
            *entry = (value, entry.1 + 1);
            Ok(OK)
        },
    )?;
    l.wrap(
        "env",
        "proxy_define_metric",
        |mut c: Caller<'_, HostState>, _kind: i32, name: i32, len: i32, id_out: i32| -> HostResult {
            count(&mut c, "proxy_define_metric");
            let name = text(&c, name, len)?;
            let id = c.data().metrics.len() as u32;
            c.data_mut().metrics.push((name, 0));
            write(&mut c, id_out, &id.to_le_bytes())?;
            Ok(OK)
        },
    )?;
    l.wrap("env", "proxy_increment_metric", |mut c: Caller<'_, HostState>, id: i32, by: i64| -> HostResult {
        count(&mut c, "proxy_increment_metric");
        match c.data_mut().metrics.get_mut(id as u32 as usize) {
            Some((_, m)) => {
                *m = m.wrapping_add(by as u64);
                Ok(OK)
            }
            None => Ok(NOT_FOUND),
        }
    })?;
    l.wrap(
        "env",
        "proxy_send_local_response",
        |mut c: Caller<'_, HostState>,
         status: i32,
         _d: i32,
         _dl: i32,
         _b: i32,
         _bl: i32,
         _h: i32,
         _hl: i32,
         _g: i32|
         -> HostResult {
            count(&mut c, "proxy_send_local_response");
            c.data_mut().stream.local_reply = Some(status as u32);
            Ok(OK)
        },
    )?;
    l.wrap("env", "proxy_set_tick_period_milliseconds", |mut c: Caller<'_, HostState>, period: i32| -> HostResult {
        count(&mut c, "proxy_set_tick_period_milliseconds");
        if c.data().refuses_tick {
            return Ok(UNIMPLEMENTED);
        }
        c.data_mut().tick_period_ms = period as u32;
        Ok(OK)
    })?;
    l.wrap("env", "proxy_set_effective_context", |mut c: Caller<'_, HostState>, _id: i32| -> HostResult {
        count(&mut c, "proxy_set_effective_context");
        Ok(OK)
    })?;
    // WASI's environment, which Envoy gives every module (`host_env_var` in tether-glue).
    l.wrap(
        "wasi_snapshot_preview1",
        "environ_sizes_get",
        |mut c: Caller<'_, HostState>, count_out: i32, size_out: i32| -> HostResult {
            count(&mut c, "environ_sizes_get");
            let env = c.data().environment.clone();
            let size: usize = env.iter().map(|(k, v)| k.len() + v.len() + 2).sum();
            write(&mut c, count_out, &(env.len() as u32).to_le_bytes())?;
            write(&mut c, size_out, &(size as u32).to_le_bytes())?;
            Ok(0)
        },
    )?;
    l.wrap(
        "wasi_snapshot_preview1",
        "environ_get",
        |mut c: Caller<'_, HostState>, pointers: i32, buf: i32| -> HostResult {
            count(&mut c, "environ_get");
            let env = c.data().environment.clone();
            let mut at = buf;
            for (i, (k, v)) in env.iter().enumerate() {
                write(&mut c, pointers + 4 * i as i32, &at.to_le_bytes())?;
                let entry = format!("{k}={v}\0");
                write(&mut c, at, entry.as_bytes())?;
                at += entry.len() as i32;
            }
            Ok(0)
        },
    )?;
    // Every other import: counted, and `Unimplemented` (or nothing, for the rare void one).
    for import in module.imports() {
        let (module_name, name) = (import.module(), import.name());
        if l.defined.contains(&(module_name, name)) {
            continue;
        }
        let Some(ty) = import.ty().func().cloned() else { continue };
        let counted = name.to_string();
        l.linker
            .func_new(module_name, name, ty, move |mut c: Caller<'_, HostState>, _args: &[Val], results: &mut [Val]| {
                count(&mut c, &counted);
                if let Some(first) = results.first_mut() {
                    *first = Val::I32(UNIMPLEMENTED);
                }
                Ok(())
            })
            .map_err(|e| e.to_string())?;
    }
    Ok(l.linker)
}
