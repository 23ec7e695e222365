//! A proxy-wasm HTTP filter that does nothing, built like the Tether filters (same SDK, same
//! release profile). `scripts/bench` runs it as the floor: what entering a Wasm VM costs on every
//! request before a filter does any work (context creation, the header callbacks, log, delete).
//!
//! Configured `edge-calls`, it makes the host calls tether-edge makes for a returning user's GET,
//! with as little Wasm as the SDK allows in between: the request map read, `source.address`
//! asked, five headers set and the cookie removed, one call each; the response map read, one
//! header set and one added. The benchmark's `edge-calls` arm: what those calls cost Envoy,
//! apart from what tether-edge computes.

use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType};

proxy_wasm::main! {{
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(NoopRoot { calls: false }) });
}}

struct NoopRoot {
    calls: bool,
}

impl Context for NoopRoot {}

impl RootContext for NoopRoot {
    fn on_configure(&mut self, _size: usize) -> bool {
        let config = proxy_wasm::hostcalls::get_buffer(proxy_wasm::types::BufferType::PluginConfiguration, 0, 64);
        self.calls = matches!(config, Ok(Some(bytes)) if bytes == b"edge-calls");
        true
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(if self.calls { Box::new(EdgeCalls) } else { Box::new(Noop) })
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct Noop;

impl Context for Noop {}

impl HttpContext for Noop {}

struct EdgeCalls;

impl Context for EdgeCalls {}

/// The ABI calls, raw: the SDK's header maps (a `String` pair per line, both ways) cost more Wasm
/// than all of tether-edge's decisions, and this arm is to measure the host's side.
#[allow(unsafe_code)]
mod raw {
    #[link(wasm_import_module = "env")]
    extern "C" {
        fn proxy_get_header_map_pairs(map_type: u32, data: *mut *mut u8, size: *mut usize) -> u32;
        fn proxy_replace_header_map_value(map: u32, k: *const u8, ks: usize, v: *const u8, vs: usize) -> u32;
        fn proxy_add_header_map_value(map: u32, k: *const u8, ks: usize, v: *const u8, vs: usize) -> u32;
        fn proxy_remove_header_map_value(map: u32, k: *const u8, ks: usize) -> u32;
        fn proxy_get_property(path: *const u8, path_size: usize, data: *mut *mut u8, size: *mut usize) -> u32;
    }

    /// The host's buffer, handed over (allocated through the module's `malloc` export).
    fn owned(data: *mut u8, size: usize) -> Vec<u8> {
        if data.is_null() {
            return Vec::new();
        }
        // SAFETY: the host handed over a buffer of exactly `size` bytes from this module's allocator.
        unsafe { Vec::from_raw_parts(data, size, size) }
    }

    pub fn map(map_type: u32) -> Vec<u8> {
        let (mut data, mut size) = (std::ptr::null_mut(), 0);
        // SAFETY: the host writes a pointer and a size into the two live locals.
        unsafe { proxy_get_header_map_pairs(map_type, &mut data, &mut size) };
        owned(data, size)
    }

    pub fn replace(map: u32, name: &str, value: &str) {
        // SAFETY: the host reads the two live slices during the call.
        unsafe { proxy_replace_header_map_value(map, name.as_ptr(), name.len(), value.as_ptr(), value.len()) };
    }

    pub fn add(map: u32, name: &str, value: &str) {
        // SAFETY: the host reads the two live slices during the call.
        unsafe { proxy_add_header_map_value(map, name.as_ptr(), name.len(), value.as_ptr(), value.len()) };
    }

    pub fn remove(map: u32, name: &str) {
        // SAFETY: the host reads the live slice during the call.
        unsafe { proxy_remove_header_map_value(map, name.as_ptr(), name.len()) };
    }

    pub fn property(path: &[u8]) -> Vec<u8> {
        let (mut data, mut size) = (std::ptr::null_mut(), 0);
        // SAFETY: the host reads the live path and writes a pointer and a size.
        unsafe { proxy_get_property(path.as_ptr(), path.len(), &mut data, &mut size) };
        owned(data, size)
    }
}

impl HttpContext for EdgeCalls {
    fn on_http_request_headers(&mut self, _: usize, _: bool) -> Action {
        let _map = raw::map(0);
        let _peer = raw::property(b"source\0address");
        for (name, value) in [
            ("x-forwarded-for", "127.0.0.1"),
            ("x-real-ip", "127.0.0.1"),
            ("x-forwarded-proto", "https"),
            ("x-forwarded-host", "127.0.0.1"),
            ("x-tether-session", "MTI3LjAuMC4xOjgwMDE="),
        ] {
            raw::replace(0, name, value);
        }
        raw::remove(0, "cookie");
        Action::Continue
    }

    fn on_http_response_headers(&mut self, _: usize, _: bool) -> Action {
        let _map = raw::map(2);
        raw::replace(2, "strict-transport-security", "max-age=63072000");
        raw::add(2, "x-served-by", "server-pro-ha-1");
        Action::Continue
    }
}
