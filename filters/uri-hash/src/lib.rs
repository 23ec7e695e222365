//! tether-uri-hash: Envoy HTTP filter (proxy-wasm) for URI-depth consistent hashing.
//!
//! Every request for one project (`/project/<id>/...` with depth 2) goes to the same node,
//! where its compile cache lives. When that node did not serve (Envoy fell back because it was
//! unhealthy), the filter records it in shared data for `failover_cooldown`, and meanwhile
//! sends that node's keys to their consistent alternative, the same on every worker, instead
//! of letting the load balancer scatter one project over every node.

mod context;

use proxy_wasm::traits::RootContext;

pub use context::UriHashRoot;

proxy_wasm::main! {{
    proxy_wasm::set_log_level(proxy_wasm::types::LogLevel::Trace);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(UriHashRoot::default()) });
}}
