//! Removes exports a filter does not need on Envoy, and the code only they reached.
//!
//! The proxy-wasm SDK exports every callback of the ABI, and each export keeps its dispatch
//! code in the module. [`crate::wasm_exports`] names the stream callbacks a filter does not
//! implement; [`NEVER_CALLED_ON_AN_HTTP_FILTER`] the callbacks Envoy calls only for what an
//! HTTP filter of Tether never starts (a connection, a gRPC or HTTP call out, a shared queue, a
//! foreign function). Envoy looks each callback up as optional and skips one that is missing
//! (proxy-wasm-cpp-host `WasmBase::getFunctions`), so removing them changes nothing it does.
//!
//! Then walrus' garbage collection drops every function, global and data no export reaches,
//! and the module is written again (walrus: the rustwasm project's module IR, what
//! wasm-bindgen uses for the same job). Function bodies are re-encoded as they were: no
//! optimisation pass runs (binaryen's `-Oz` was measured and not taken: README).

/// Callbacks Envoy calls only after a filter opened a connection-level context, made a gRPC or
/// HTTP call, registered a shared queue or a foreign function: Tether's filters do none.
pub const NEVER_CALLED_ON_AN_HTTP_FILTER: [&str; 12] = [
    "proxy_on_new_connection",
    "proxy_on_downstream_data",
    "proxy_on_upstream_data",
    "proxy_on_downstream_connection_close",
    "proxy_on_upstream_connection_close",
    "proxy_on_grpc_receive_initial_metadata",
    "proxy_on_grpc_receive",
    "proxy_on_grpc_receive_trailing_metadata",
    "proxy_on_grpc_close",
    "proxy_on_http_call_response",
    "proxy_on_queue_ready",
    "proxy_on_foreign_function",
];

/// `module` without the exports in `remove` and without the code, data and globals no
/// remaining export reaches.
pub fn shrink(module: &[u8], remove: &[&str]) -> Result<Vec<u8>, String> {
    let mut config = walrus::ModuleConfig::new();
    config.generate_producers_section(false).generate_name_section(false);
    let mut parsed = config.parse(module).map_err(|e| format!("walrus cannot read the module: {e}"))?;
    let removed: Vec<walrus::ExportId> =
        parsed.exports.iter().filter(|e| remove.contains(&e.name.as_str())).map(|e| e.id()).collect();
    for id in removed {
        parsed.exports.delete(id);
    }
    walrus::passes::gc::run(&mut parsed);
    Ok(parsed.emit_wasm())
}
