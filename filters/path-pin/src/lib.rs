//! tether-path-pin: pins paths such as `/git/` to one named node through the routing contract
//! (session header + Envoy `stateful_session`).
//!
//! A library: [`PathPin`] is the filter (tether-glue runs it; `module/` is its Wasm module,
//! tether-edge runs it with the others). Every decision is `tether_core::path_pin`'s.
//!
//! Host calls per request: the request headers (one read; one call per header it sets or
//! removes, when pinned or when a client's session header is removed), `tether.routed_by` only when a session header came in,
//! the mark for later filters when pinned; on the response the headers (one read; one write to
//! remove the session header Envoy wrote back, when it wrote one).

use log::debug;
use tether_core::config::Value;
use tether_core::path_pin::{PathPinPolicy, PathPinRequest};
use tether_glue::{configure, Callback, Counter, Filter};

struct Metrics {
    /// One per rule, in rule order.
    pinned: Vec<Counter>,
    client_session_header_removed: Counter,
    pinned_node_did_not_serve: Counter,
}

pub struct PathPin {
    policy: PathPinPolicy,
    metrics: Metrics,
}

impl Filter for PathPin {
    type Request = PathPinRequest;

    const NAME: &'static str = "path-pin";

    #[inline(never)] // its own function in tether-edge too: Envoy's RSS (tether_glue::Filter)
    fn from_config(config: Value) -> Option<PathPin> {
        let policy = configure(Self::NAME, config, PathPinPolicy::from_value, PathPinPolicy::summary)?;
        let metrics = Metrics {
            pinned: policy
                .rules()
                .iter()
                .map(|r| Counter::define(&format!("tether_path_pin.pinned.{}", r.name)))
                .collect(),
            client_session_header_removed: Counter::define("tether_path_pin.client_session_header_removed"),
            pinned_node_did_not_serve: Counter::define("tether_path_pin.pinned_node_did_not_serve"),
        };
        Some(PathPin { policy, metrics })
    }

    #[inline(never)] // its own function in tether-edge too: Envoy's RSS (tether_glue::Filter)
    fn on_request(&self, request: &mut PathPinRequest, cx: &mut Callback<'_>, _end_of_stream: bool) {
        let (plan, decided) = self.policy.on_request(cx.headers, &mut cx.facts);
        if decided.claim.removed_forgery() {
            self.metrics.client_session_header_removed.increment();
            debug!("path-pin: removed a client-supplied {} header", self.policy.session_header().name());
        }
        if let Some(counter) = decided.pinned_rule.and_then(|i| self.metrics.pinned.get(i)) {
            counter.increment();
        }
        *request = decided;
        cx.apply(plan);
    }

    #[inline(never)] // its own function in tether-edge too: Envoy's RSS (tether_glue::Filter)
    fn on_response(&self, request: &mut PathPinRequest, cx: &mut Callback<'_>) {
        let (plan, missed) = self.policy.on_response(request, cx.headers, &mut cx.facts);
        if let Some((rule, served_by)) = missed {
            self.metrics.pinned_node_did_not_serve.increment();
            debug!(
                "path-pin: rule {} pins to {}, but {} served (pinned node unavailable)",
                rule.name,
                rule.node,
                served_by.unwrap_or("a node outside the nodes table")
            );
        }
        cx.apply(plan);
    }

    fn session_header(&self) -> Option<&str> {
        Some(self.policy.session_header().name())
    }
}
