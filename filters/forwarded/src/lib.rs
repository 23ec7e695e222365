//! tether-forwarded: Envoy HTTP filter (proxy-wasm) that tells the backend who the client is
//! and over which scheme it came, redirects plain http to https, and adds HSTS and
//! X-Served-By on the way back.
//!
//! Host calls per request: the header map (one call), `source.address`,
//! `connection.tls_version`, `destination.port`, then one call per header written (XFF,
//! X-Real-IP, X-Forwarded-Proto/-Host/-Port, Forwarded) and one per forged header removed.

mod context;

use proxy_wasm::traits::RootContext;

pub use context::ForwardedRoot;

proxy_wasm::main! {{
    proxy_wasm::set_log_level(proxy_wasm::types::LogLevel::Trace);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(ForwardedRoot::default()) });
}}
