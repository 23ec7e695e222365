//! The uri-hash filter's proxy-wasm contexts: its root (configuration, metrics) and its
//! per-request context. Compiled into this filter's module (lib.rs) and, by path, into
//! tether-edge's single module.

use log::debug;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType};
use std::rc::Rc;
use std::time::UNIX_EPOCH;
use tether_core::routing::{decided_earlier, ROUTED_BY_PROPERTY, UPSTREAM_ADDRESS_PROPERTY};
use tether_core::uri_hash::{Choice, DownList, UriHashPolicy};
use tether_glue::{
    configure, configure_root, remove_client_session_header, remove_response_header_once, request_header,
    set_request_header, set_shared_data, set_stream_property, shared_data, stream_property, Counter, UnknownUpstream,
};

const ROUTED_BY_VALUE: &[u8] = b"uri-hash";
/// Shared-data key for the nodes seen down (per VM id, so per uri-hash configuration).
const DOWN_KEY: &str = "tether.uri_hash.down";

struct Metrics {
    hashed: Counter,
    failovers: Counter,
    routed_away: Counter,
    client_session_header_removed: Counter,
    unknown_upstream: UnknownUpstream,
}

struct Shared {
    policy: UriHashPolicy,
    metrics: Metrics,
}

#[derive(Default)]
pub struct UriHashRoot {
    shared: Option<Rc<Shared>>,
}

impl UriHashRoot {
    /// The root for configuration `json` (JSON text or Struct bytes), as `on_configure` builds
    /// it; `None` after logging why the configuration is refused. tether-edge calls this with
    /// its section of a combined configuration.
    pub fn from_config(json: &[u8]) -> Option<UriHashRoot> {
        let policy = configure("uri-hash", json, UriHashPolicy::from_json, UriHashPolicy::summary)?;
        let c = |name: &str| Counter::define(&format!("tether_uri_hash.{name}"));
        let metrics = Metrics {
            hashed: c("hashed"),
            failovers: c("failovers"),
            routed_away: c("routed_away"),
            client_session_header_removed: c("client_session_header_removed"),
            unknown_upstream: UnknownUpstream::define("tether_uri_hash"),
        };
        Some(UriHashRoot { shared: Some(Rc::new(Shared { policy, metrics })) })
    }
}

impl Context for UriHashRoot {}

impl RootContext for UriHashRoot {
    fn on_configure(&mut self, _size: usize) -> bool {
        configure_root(self, Self::from_config)
    }

    fn create_http_context(&self, context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(UriHashRequest { shared: self.shared.clone()?, choice: None, context_id }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct UriHashRequest {
    shared: Rc<Shared>,
    context_id: u32,
    choice: Option<Choice>,
}

impl UriHashRequest {
    fn now_ms(&self) -> u64 {
        self.get_current_time()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
    }

    /// Records `node` as down for the cooldown; a few tries in case another worker writes at
    /// the same moment (compare-and-swap).
    fn mark_down(&self, node: &str) {
        let now = self.now_ms();
        let until = now.saturating_add(self.shared.policy.cooldown_ms());
        for _ in 0..4 {
            let (raw, cas) = shared_data(DOWN_KEY);
            let list = DownList::parse(raw.as_deref()).with(node, until, now);
            if set_shared_data(DOWN_KEY, list.encode().as_bytes(), cas) {
                return;
            }
        }
        debug!("uri-hash: could not record {node} as down (shared data contended)");
    }
}

impl Context for UriHashRequest {}

impl HttpContext for UriHashRequest {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        let shared = Rc::clone(&self.shared);
        let (policy, metrics) = (&shared.policy, &shared.metrics);
        if decided_earlier(stream_property(self.context_id, &[ROUTED_BY_PROPERTY]).as_deref()) {
            return Action::Continue;
        }
        let header = policy.session_header().name();
        if remove_client_session_header(self.context_id, header) {
            metrics.client_session_header_removed.increment();
        }
        let path = request_header(self.context_id, ":path").unwrap_or_default();
        let Some(key) = policy.key_for(&path) else {
            return Action::Continue; // not ours: untouched
        };
        let now = self.now_ms();
        let down = DownList::parse(shared_data(DOWN_KEY).0.as_deref());
        let Some(choice) = policy.choose(key, |n| down.is_down(n, now)) else {
            return Action::Continue;
        };
        if let Some(value) = policy.session_value(choice.node) {
            set_request_header(self.context_id, header, Some(value.as_bytes()));
            set_stream_property(self.context_id, &[ROUTED_BY_PROPERTY], ROUTED_BY_VALUE);
            metrics.hashed.increment();
            if choice.node != choice.primary {
                metrics.routed_away.increment();
            }
            self.choice = Some(choice);
        }
        Action::Continue
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        let shared = Rc::clone(&self.shared);
        let policy = &shared.policy;
        remove_response_header_once(self.context_id, policy.session_header().name());
        let Some(choice) = self.choice else { return Action::Continue };
        let upstream = stream_property(self.context_id, &UPSTREAM_ADDRESS_PROPERTY);
        let Some(raw) = upstream.as_deref() else { return Action::Continue }; // a local reply
        let Some(served) = policy.nodes().by_upstream_address(raw) else {
            shared.metrics.unknown_upstream.report(raw, "failovers cannot be recorded");
            return Action::Continue;
        };
        let Some(chosen) = policy.node_name(choice.node) else { return Action::Continue };
        if served.name != chosen {
            // Envoy fell back: the chosen node is unavailable. Remember it, so the key's next
            // requests go to one consistent alternative instead of wherever the LB sends them.
            self.mark_down(chosen);
            shared.metrics.failovers.increment();
            debug!("uri-hash: {chosen} did not serve ({} did); its keys fail over for the cooldown", served.name);
        }
        Action::Continue
    }
}
