//! The path-pin filter's proxy-wasm contexts: its root (configuration, metrics) and its
//! per-request context. Compiled into this filter's module (lib.rs) and, by path, into
//! tether-edge's single module.

use log::debug;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType};
use std::rc::Rc;
use tether_core::path_pin::PathPinPolicy;
use tether_core::routing::{decided_earlier, served, Served, ROUTED_BY_PROPERTY, UPSTREAM_ADDRESS_PROPERTY};
use tether_glue::{
    configure, configure_root, remove_client_session_header, remove_response_header_once, request_header,
    set_request_header, set_stream_property, stream_property, Counter,
};

/// What `tether.routed_by` says when this filter decided.
const ROUTED_BY_VALUE: &[u8] = b"path-pin";

struct Metrics {
    /// One per rule, in rule order.
    pinned: Vec<Counter>,
    client_session_header_removed: Counter,
    pinned_node_did_not_serve: Counter,
}

#[derive(Default)]
pub struct PathPinRoot {
    shared: Option<Rc<(PathPinPolicy, Metrics)>>,
}

impl PathPinRoot {
    /// The root for configuration `json` (JSON text or Struct bytes), as `on_configure` builds
    /// it; `None` after logging why the configuration is refused. tether-edge calls this with
    /// its section of a combined configuration.
    pub fn from_config(json: &[u8]) -> Option<PathPinRoot> {
        let policy = configure("path-pin", json, PathPinPolicy::from_json, PathPinPolicy::summary)?;
        let metrics = Metrics {
            pinned: policy
                .rules()
                .iter()
                .map(|r| Counter::define(&format!("tether_path_pin.pinned.{}", r.name)))
                .collect(),
            client_session_header_removed: Counter::define("tether_path_pin.client_session_header_removed"),
            pinned_node_did_not_serve: Counter::define("tether_path_pin.pinned_node_did_not_serve"),
        };
        Some(PathPinRoot { shared: Some(Rc::new((policy, metrics))) })
    }
}

impl Context for PathPinRoot {}

impl RootContext for PathPinRoot {
    fn on_configure(&mut self, _size: usize) -> bool {
        configure_root(self, Self::from_config)
    }

    fn create_http_context(&self, context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(PathPinRequest { shared: self.shared.clone()?, pinned_rule: None, context_id }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct PathPinRequest {
    shared: Rc<(PathPinPolicy, Metrics)>,
    context_id: u32,
    pinned_rule: Option<usize>,
}

impl Context for PathPinRequest {}

impl HttpContext for PathPinRequest {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        let shared = Rc::clone(&self.shared);
        let (policy, metrics) = &*shared;
        if decided_earlier(stream_property(self.context_id, &[ROUTED_BY_PROPERTY]).as_deref()) {
            return Action::Continue; // the session header belongs to the filter that decided
        }
        let header = policy.session_header().name();
        if remove_client_session_header(self.context_id, header) {
            metrics.client_session_header_removed.increment();
            debug!("path-pin: removed a client-supplied {header} header");
        }
        let method = if policy.needs_method() { request_header(self.context_id, ":method") } else { None };
        let path = request_header(self.context_id, ":path").unwrap_or_default();
        if let Some((index, rule)) = policy.pin_for(method.as_deref().unwrap_or_default(), &path) {
            set_request_header(self.context_id, header, Some(rule.session_value.as_bytes()));
            set_stream_property(self.context_id, &[ROUTED_BY_PROPERTY], ROUTED_BY_VALUE);
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
        remove_response_header_once(self.context_id, policy.session_header().name());
        if let Some(rule) = self.pinned_rule.and_then(|i| policy.rules().get(i)) {
            let upstream = stream_property(self.context_id, &UPSTREAM_ADDRESS_PROPERTY);
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
