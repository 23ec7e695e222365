//! Test-only: a proxy-wasm filter that panics when a request carries `x-tether-crash`, so the
//! e2e suite can see what Envoy does when a Wasm filter fails at run time under each
//! `failure_policy` (tests/tests/failure_policy.rs). Never deploy it.

use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType};

proxy_wasm::main! {{
    // Also installs the SDK's panic hook, which logs the panic at critical before the trap.
    proxy_wasm::set_log_level(proxy_wasm::types::LogLevel::Trace);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(CrashRoot) });
}}

struct CrashRoot;

impl Context for CrashRoot {}

impl RootContext for CrashRoot {
    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Crash))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct Crash;

impl Context for Crash {}

impl HttpContext for Crash {
    #[allow(clippy::panic)] // the whole point: a filter failing at run time
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        if self.get_http_request_header_bytes("x-tether-crash").is_some() {
            panic!("tether-crash: asked to crash");
        }
        self.set_http_request_header("x-tether-crash-filter", Some("ran"));
        Action::Continue
    }
}
