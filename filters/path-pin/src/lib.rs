//! tether-path-pin: Envoy HTTP filter (proxy-wasm) that pins paths such as `/git/` to one
//! named node through the routing contract (session header + Envoy `stateful_session`).
//!
//! Host calls per request: the `tether.routed_by` property, the session header (removed if a
//! client sent one), `:path` (and `:method` if a rule lists methods); for a pinned request two
//! more (set the header, mark the request) and the rule's counter; on the response one call to
//! strip the session header Envoy writes back, plus `upstream.address` for pinned requests.

mod context;

use proxy_wasm::traits::RootContext;

pub use context::PathPinRoot;

proxy_wasm::main! {{
    proxy_wasm::set_log_level(proxy_wasm::types::LogLevel::Trace);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(PathPinRoot::default()) });
}}
