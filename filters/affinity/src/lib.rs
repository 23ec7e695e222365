//! tether-affinity: Envoy HTTP filter (proxy-wasm) for cookie session affinity with redispatch.
//!
//! Request: a genuine cookie names a node; the filter routes to it through the session header
//! (routing contract) and, with `indirect`, removes its cookie before the backend sees it.
//! Response: `upstream.address` says which node served; a new session gets a cookie for it, a
//! session whose node did not serve is moved there (redispatch), and last-seen is refreshed
//! once per refresh interval.

mod context;

use proxy_wasm::traits::RootContext;

pub use context::AffinityRoot;

proxy_wasm::main! {{
    proxy_wasm::set_log_level(proxy_wasm::types::LogLevel::Trace);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(AffinityRoot::default()) });
}}
