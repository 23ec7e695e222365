//! tether-edge: Tether's five filters in one proxy-wasm module, so a request enters one VM per
//! callback instead of five. Envoy charges every Wasm filter a fixed cost per request (context
//! creation and one VM entry per callback; +33 µs for an empty filter in `scripts/bench`), which
//! dominates what the filters themselves do.
//!
//! Glue only: each section of the configuration is handed to that filter's own root
//! (`from_config`, the same source as the filter's own module), and each callback runs the filters' own request contexts in chain order
//! (forwarded, body-limit, path-pin, uri-hash, affinity) and the response callbacks in reverse,
//! as Envoy runs separate filters. A filter that answers locally (a redirect, a 413) ends the
//! request callbacks there, as its `Pause` ends Envoy's chain; only filters that saw the request
//! see its response. Metrics, logs and behaviour are the filters' own.

use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel};
use serde::Deserialize;
use serde_json::Value;
use tether_core::config::parse_config;
use tether_glue::{configure, configure_root, forget_request_headers, share_stream_facts};

// The filters' own contexts, compiled into this module from their crates' sources. (Depending on
// the filter crates instead would link their entry points too: one `_initialize` each.)
#[path = "../../affinity/src/context.rs"]
mod affinity;
#[path = "../../body-limit/src/context.rs"]
mod body_limit;
#[path = "../../forwarded/src/context.rs"]
mod forwarded;
#[path = "../../path-pin/src/context.rs"]
mod path_pin;
#[path = "../../uri-hash/src/context.rs"]
mod uri_hash;

use affinity::AffinityRoot;
use body_limit::BodyLimitRoot;
use forwarded::ForwardedRoot;
use path_pin::PathPinRoot;
use uri_hash::UriHashRoot;

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Trace);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(EdgeRoot::default()) });
}}

/// One section per filter, each that filter's own configuration; absent sections are off.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EdgeConfig {
    forwarded: Option<Value>,
    body_limit: Option<Value>,
    path_pin: Option<Value>,
    uri_hash: Option<Value>,
    affinity: Option<Value>,
}

#[derive(Default)]
struct EdgeRoot {
    /// The configured filters, in chain order.
    parts: Vec<Box<dyn RootContext>>,
}

impl EdgeRoot {
    fn from_config(json: &[u8]) -> Option<EdgeRoot> {
        let root = configure("edge", json, EdgeRoot::build, |r| format!("{} filter(s) in one VM", r.parts.len()))?;
        // The parts run in this one VM: let them share what they learn of a stream.
        share_stream_facts();
        Some(root)
    }

    /// Each present section handed to its filter's own root, in chain order.
    fn build(json: &[u8]) -> Result<EdgeRoot, String> {
        let config: EdgeConfig = parse_config(json).map_err(|e| e.to_string())?;
        let sections: [(&str, Option<Value>, BuildRoot); 5] = [
            ("forwarded", config.forwarded, |j| ForwardedRoot::from_config(j).map(boxed)),
            ("body_limit", config.body_limit, |j| BodyLimitRoot::from_config(j).map(boxed)),
            ("path_pin", config.path_pin, |j| PathPinRoot::from_config(j).map(boxed)),
            ("uri_hash", config.uri_hash, |j| UriHashRoot::from_config(j).map(boxed)),
            ("affinity", config.affinity, |j| AffinityRoot::from_config(j).map(boxed)),
        ];
        let mut parts = Vec::new();
        for (name, section, build) in sections {
            let Some(section) = section else { continue };
            let json = serde_json::to_vec(&section).map_err(|e| e.to_string())?;
            // The filter's own line already said why.
            parts.push(build(&json).ok_or_else(|| format!("section {name:?} refused (see the line above)"))?);
        }
        if parts.is_empty() {
            return Err("no section; expected some of forwarded, body_limit, path_pin, uri_hash, affinity".into());
        }
        Ok(EdgeRoot { parts })
    }
}

/// A filter's `from_config`, boxed: `None` when the section is refused.
type BuildRoot = fn(&[u8]) -> Option<Box<dyn RootContext>>;

fn boxed<R: RootContext + 'static>(root: R) -> Box<dyn RootContext> {
    Box::new(root)
}

impl Context for EdgeRoot {}

impl RootContext for EdgeRoot {
    fn on_configure(&mut self, _size: usize) -> bool {
        configure_root(self, Self::from_config)
    }

    fn create_http_context(&self, context_id: u32) -> Option<Box<dyn HttpContext>> {
        let parts = self.parts.iter().map(|p| p.create_http_context(context_id)).collect::<Option<Vec<_>>>()?;
        Some(Box::new(EdgeRequest { parts, context_id, reached: 0 }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct EdgeRequest {
    parts: Vec<Box<dyn HttpContext>>,
    context_id: u32,
    /// How many filters have seen the request headers: the others never see this request.
    reached: usize,
}

impl EdgeRequest {
    /// Runs `call` on the filters that saw the request, in chain order, until one does not
    /// continue (it answered locally, or waits).
    fn forward(&mut self, mut call: impl FnMut(&mut dyn HttpContext) -> Action) -> Action {
        for part in self.parts.iter_mut().take(self.reached) {
            match call(part.as_mut()) {
                Action::Continue => {}
                other => return other,
            }
        }
        Action::Continue
    }

    /// The same, in reverse order (the response path).
    fn backward(&mut self, mut call: impl FnMut(&mut dyn HttpContext) -> Action) -> Action {
        for part in self.parts.iter_mut().take(self.reached).rev() {
            match call(part.as_mut()) {
                Action::Continue => {}
                other => return other,
            }
        }
        Action::Continue
    }
}

impl Context for EdgeRequest {}

// Only the callbacks some filter implements: `scripts/build` removes the other exports, so Envoy
// never enters the VM for them (the list is in Cargo.toml; a test keeps it equal to the union of
// the filters' lists).
impl HttpContext for EdgeRequest {
    fn on_http_request_headers(&mut self, num_headers: usize, end_of_stream: bool) -> Action {
        let mut action = Action::Continue;
        for (i, part) in self.parts.iter_mut().enumerate() {
            self.reached = i + 1;
            action = part.on_http_request_headers(num_headers, end_of_stream);
            if action != Action::Continue {
                break;
            }
        }
        // The parts shared the request headers for this callback only: Envoy's later filters may
        // change them before the next one.
        forget_request_headers(self.context_id);
        action
    }

    fn on_http_request_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        self.forward(|p| p.on_http_request_body(body_size, end_of_stream))
    }

    fn on_http_response_headers(&mut self, num_headers: usize, end_of_stream: bool) -> Action {
        self.backward(|p| p.on_http_response_headers(num_headers, end_of_stream))
    }
}
