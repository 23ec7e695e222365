//! tether-path-pin: Envoy HTTP filter (proxy-wasm) that pins paths such as `/git/` to one
//! named node through the routing contract (session header + Envoy `stateful_session`).
//!
//! Host calls per request: the `tether.routed_by` property, the session header (removed if a
//! client sent one), `:path` (and `:method` if a rule lists methods); for a pinned request two
//! more (set the header, mark the request) and the rule's counter; on the response one call to
//! strip the session header Envoy writes back, plus `upstream.address` for pinned requests.

use log::debug;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel};
use std::rc::Rc;
use tether_core::path_pin::PathPinPolicy;
use tether_core::routing::{decided_earlier, served, Served, ROUTED_BY_PROPERTY, UPSTREAM_ADDRESS_PROPERTY};
use tether_glue::{configure, property, remove_client_session_header, set_property, Counter};

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Trace);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(PathPinRoot::default()) });
}}

/// What `tether.routed_by` says when this filter decided.
const ROUTED_BY_VALUE: &[u8] = b"path-pin";

struct Metrics {
    /// One per rule, in rule order.
    pinned: Vec<Counter>,
    client_session_header_removed: Counter,
    pinned_node_did_not_serve: Counter,
}

#[derive(Default)]
struct PathPinRoot {
    shared: Option<Rc<(PathPinPolicy, Metrics)>>,
}

impl Context for PathPinRoot {}

impl RootContext for PathPinRoot {
    fn on_configure(&mut self, _size: usize) -> bool {
        let json = self.get_plugin_configuration().unwrap_or_default();
        let Some(policy) = configure("path-pin", &json, PathPinPolicy::from_json, PathPinPolicy::summary) else {
            return false;
        };
        let metrics = Metrics {
            pinned: policy
                .rules()
                .iter()
                .map(|r| Counter::define(&format!("tether_path_pin.pinned.{}", r.name)))
                .collect(),
            client_session_header_removed: Counter::define("tether_path_pin.client_session_header_removed"),
            pinned_node_did_not_serve: Counter::define("tether_path_pin.pinned_node_did_not_serve"),
        };
        self.shared = Some(Rc::new((policy, metrics)));
        true
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(PathPinRequest { shared: self.shared.clone()?, pinned_rule: None }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct PathPinRequest {
    shared: Rc<(PathPinPolicy, Metrics)>,
    pinned_rule: Option<usize>,
}

impl Context for PathPinRequest {}

impl HttpContext for PathPinRequest {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        let shared = Rc::clone(&self.shared);
        let (policy, metrics) = &*shared;
        if decided_earlier(property(&[ROUTED_BY_PROPERTY]).as_deref()) {
            return Action::Continue; // the session header belongs to the filter that decided
        }
        let header = policy.session_header().name();
        if remove_client_session_header(header) {
            metrics.client_session_header_removed.increment();
            debug!("path-pin: removed a client-supplied {header} header");
        }
        let method = if policy.needs_method() { self.get_http_request_header_bytes(":method") } else { None };
        let path = self.get_http_request_header_bytes(":path").unwrap_or_default();
        if let Some((index, rule)) = policy.pin_for(method.as_deref().unwrap_or_default(), &path) {
            self.set_http_request_header(header, Some(&rule.session_value));
            set_property(&[ROUTED_BY_PROPERTY], ROUTED_BY_VALUE);
            if let Some(counter) = metrics.pinned.get(index) {
                counter.increment();
            }
            self.pinned_rule = Some(index);
        }
        Action::Continue
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        let shared = Rc::clone(&self.shared);
        let (policy, metrics) = &*shared;
        // Envoy's stateful_session writes the chosen endpoint back; internal addresses stay inside.
        self.set_http_response_header(policy.session_header().name(), None);
        if let Some(rule) = self.pinned_rule.and_then(|i| policy.rules().get(i)) {
            let upstream = property(&UPSTREAM_ADDRESS_PROPERTY);
            if let Served::ByOther(other) = served(&rule.address, upstream.as_deref()) {
                metrics.pinned_node_did_not_serve.increment();
                let other_name =
                    policy.nodes().by_address(&other).map_or("a node outside the nodes table", |n| n.name.as_str());
                debug!(
                    "path-pin: rule {} pins to {}, but {} served (pinned node unavailable)",
                    rule.name, rule.node, other_name
                );
            }
        }
        Action::Continue
    }
}
