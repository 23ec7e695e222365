//! A proxy-wasm HTTP filter that does nothing, built like the Tether filters (same SDK, same
//! release profile). `scripts/bench` runs it as the floor: what entering a Wasm VM costs on every
//! request before a filter does any work (context creation, the header callbacks, log, delete).
//!
//! Configured `edge-calls`, it makes the host calls tether-edge makes for a returning user's GET,
//! with as little Wasm as the SDK allows in between: the request map read, `source.address`
//! asked, the map written back with five headers set; the response map read
//! and written back with two more. The benchmark's `edge-calls` arm: what those calls cost Envoy,
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
        fn proxy_set_header_map_pairs(map_type: u32, data: *const u8, size: usize) -> u32;
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

    pub fn set_map(map_type: u32, encoded: &[u8]) {
        // SAFETY: the host reads the live slice during the call.
        unsafe { proxy_set_header_map_pairs(map_type, encoded.as_ptr(), encoded.len()) };
    }

    pub fn property(path: &[u8]) -> Vec<u8> {
        let (mut data, mut size) = (std::ptr::null_mut(), 0);
        // SAFETY: the host reads the live path and writes a pointer and a size.
        unsafe { proxy_get_property(path.as_ptr(), path.len(), &mut data, &mut size) };
        owned(data, size)
    }
}

/// `encoded` (proxy-wasm's map encoding: count, sizes, then each name and value NUL-ended) with
/// `more` lines after its own, by copying, not parsing each line.
fn with_lines(encoded: &[u8], more: &[(&str, &str)]) -> Vec<u8> {
    let word =
        |at: usize| encoded.get(at..at + 4).and_then(|b| <[u8; 4]>::try_from(b).ok()).map_or(0, u32::from_le_bytes);
    let count = word(0) as usize;
    let sizes = encoded.get(4..4 + 8 * count).unwrap_or_default();
    let data = encoded.get(4 + 8 * count..).unwrap_or_default();
    let mut out = Vec::with_capacity(encoded.len() + 128);
    out.extend_from_slice(&((count + more.len()) as u32).to_le_bytes());
    out.extend_from_slice(sizes);
    for (name, value) in more {
        out.extend_from_slice(&(name.len() as u32).to_le_bytes());
        out.extend_from_slice(&(value.len() as u32).to_le_bytes());
    }
    out.extend_from_slice(data);
    for (name, value) in more {
        out.extend_from_slice(name.as_bytes());
        out.push(0);
        out.extend_from_slice(value.as_bytes());
        out.push(0);
    }
    out
}

impl HttpContext for EdgeCalls {
    fn on_http_request_headers(&mut self, _: usize, _: bool) -> Action {
        let map = raw::map(0);
        let _peer = raw::property(b"source\0address");
        let set = [
            ("x-forwarded-for", "127.0.0.1"),
            ("x-real-ip", "127.0.0.1"),
            ("x-forwarded-proto", "https"),
            ("x-forwarded-host", "127.0.0.1"),
            ("x-tether-session", "MTI3LjAuMC4xOjgwMDE="),
        ];
        raw::set_map(0, &with_lines(&map, &set));
        Action::Continue
    }

    fn on_http_response_headers(&mut self, _: usize, _: bool) -> Action {
        let map = raw::map(2);
        let set = [("strict-transport-security", "max-age=63072000"), ("x-served-by", "server-pro-ha-1")];
        raw::set_map(2, &with_lines(&map, &set));
        Action::Continue
    }
}
