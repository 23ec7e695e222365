//! tether-body-limit: Envoy HTTP filter (proxy-wasm) that enforces a request body limit.
//!
//! Glue only: reads what each callback offers, asks `tether_core::body_limit`, applies the
//! answer. Host calls per request: none for a request without a body; otherwise `:method`
//! and `:path` only when a rule needs them, plus `content-length`; none per body chunk
//! unless the chunk is refused.

mod context;

use proxy_wasm::traits::RootContext;

pub use context::BodyLimitRoot;

proxy_wasm::main! {{
    proxy_wasm::set_log_level(proxy_wasm::types::LogLevel::Trace);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(BodyLimitRoot::default()) });
}}
