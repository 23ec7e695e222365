//! The affinity filter's proxy-wasm contexts: its root (configuration, metrics) and its
//! per-request context. Compiled into this filter's module (lib.rs) and, by path, into
//! tether-edge's single module.

use log::debug;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType};
use std::rc::Rc;
use std::time::UNIX_EPOCH;
use tether_core::affinity::{AffinityPolicy, CookieState, SetReason};
use tether_core::cookie;
use tether_core::routing::{decided_earlier, ROUTED_BY_PROPERTY, UPSTREAM_ADDRESS_PROPERTY};
use tether_glue::{
    configure, configure_root, host_env_var, remove_response_header_once, request_headers, set_request_header,
    set_stream_property, stream_property, Counter, UnknownUpstream,
};

const ROUTED_BY_VALUE: &[u8] = b"affinity";

struct Metrics {
    new_sessions: Counter,
    pinned: Counter,
    redispatched: Counter,
    refreshed: Counter,
    invalid: Counter,
    expired: Counter,
    client_session_header_removed: Counter,
    unknown_upstream: UnknownUpstream,
}

impl Metrics {
    fn define() -> Metrics {
        let c = |name: &str| Counter::define(&format!("tether_affinity.{name}"));
        Metrics {
            new_sessions: c("new_sessions"),
            pinned: c("pinned"),
            redispatched: c("redispatched"),
            refreshed: c("refreshed"),
            invalid: c("invalid_cookie"),
            expired: c("expired_cookie"),
            client_session_header_removed: c("client_session_header_removed"),
            unknown_upstream: UnknownUpstream::define("tether_affinity"),
        }
    }
}

struct Shared {
    policy: AffinityPolicy,
    metrics: Metrics,
}

#[derive(Default)]
pub struct AffinityRoot {
    shared: Option<Rc<Shared>>,
}

impl AffinityRoot {
    /// The root for configuration `json` (JSON text or Struct bytes), as `on_configure` builds
    /// it; `None` after logging why the configuration is refused. tether-edge calls this with
    /// its section of a combined configuration.
    pub fn from_config(json: &[u8]) -> Option<AffinityRoot> {
        let parse = |json: &[u8]| AffinityPolicy::from_json(json, host_env_var);
        let policy = configure("affinity", json, parse, AffinityPolicy::summary)?;
        Some(AffinityRoot { shared: Some(Rc::new(Shared { policy, metrics: Metrics::define() })) })
    }
}

impl Context for AffinityRoot {}

impl RootContext for AffinityRoot {
    fn on_configure(&mut self, _size: usize) -> bool {
        configure_root(self, Self::from_config)
    }

    fn create_http_context(&self, context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(AffinityRequest {
            shared: self.shared.clone()?,
            context_id,
            decided_elsewhere: false,
            state: CookieState::Absent,
            now: None,
            https: false,
        }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct AffinityRequest {
    shared: Rc<Shared>,
    context_id: u32,
    decided_elsewhere: bool,
    state: CookieState,
    now: Option<u64>,
    https: bool,
}

impl AffinityRequest {
    /// Wall-clock Unix seconds, read from the host at most once per request.
    fn now(&mut self) -> u64 {
        if let Some(t) = self.now {
            return t;
        }
        let t = self.get_current_time().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        self.now = Some(t);
        t
    }
}

impl Context for AffinityRequest {}

impl HttpContext for AffinityRequest {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        let shared = Rc::clone(&self.shared);
        let (policy, metrics) = (&shared.policy, &shared.metrics);
        let cookie_name = policy.cookie().name.as_str();
        // One host call for every header we need (all Cookie lines, the session header, the
        // scheme) instead of one call each.
        let facts = policy.request_facts(request_headers(self.context_id).iter());
        self.decided_elsewhere = decided_earlier(stream_property(self.context_id, &[ROUTED_BY_PROPERTY]).as_deref());
        if !self.decided_elsewhere {
            let header = policy.session_header().name();
            if facts.session_header_present {
                set_request_header(self.context_id, header, None); // forged by the client: never honoured
                metrics.client_session_header_removed.increment();
            }
            let mut now = None;
            let state = policy.read_cookie(facts.cookie.as_deref(), || *now.insert(self.now()));
            match &state {
                CookieState::Valid { node, .. } => {
                    if let Some(value) = policy.session_value(*node) {
                        set_request_header(self.context_id, header, Some(value.as_bytes()));
                        set_stream_property(self.context_id, &[ROUTED_BY_PROPERTY], ROUTED_BY_VALUE);
                        metrics.pinned.increment();
                    }
                }
                CookieState::Invalid => metrics.invalid.increment(),
                CookieState::Expired => metrics.expired.increment(),
                CookieState::Absent | CookieState::UnknownNode(_) => {}
            }
            self.state = state;
            self.https = facts.https;
        }
        // HAProxy "indirect": the backend never sees our cookie; other cookies pass intact
        // (several Cookie lines become one, as HTTP/2 would send them).
        if policy.cookie().indirect {
            if let Some(h) = facts.cookie.as_deref().filter(|h| cookie::contains(h, cookie_name)) {
                match cookie::without(h, cookie_name) {
                    Some(rest) => set_request_header(self.context_id, "cookie", Some(&rest)),
                    None => set_request_header(self.context_id, "cookie", None),
                }
            }
        }
        Action::Continue
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        let shared = Rc::clone(&self.shared);
        let (policy, metrics) = (&shared.policy, &shared.metrics);
        // Envoy's stateful_session writes the endpoint back; internal addresses stay inside.
        remove_response_header_once(self.context_id, policy.session_header().name());
        if self.decided_elsewhere {
            return Action::Continue; // e.g. a pinned /git/ request must not move the session
        }
        let upstream = stream_property(self.context_id, &UPSTREAM_ADDRESS_PROPERTY);
        let served = upstream.as_deref().and_then(|a| policy.nodes().by_upstream_address(a));
        if let (Some(raw), None) = (upstream.as_deref(), served) {
            metrics.unknown_upstream.report(raw, "no cookie is set for it");
        }
        let Some(served) = served else { return Action::Continue };
        let now = self.now();
        let Some((reason, set_cookie)) = policy.set_cookie(&self.state, Some(served), now, self.https) else {
            return Action::Continue;
        };
        if policy.cookie().preserve {
            let name = policy.cookie().name.as_bytes();
            let app_sets_it = self
                .get_http_response_headers_bytes()
                .iter()
                .any(|(n, v)| n == "set-cookie" && cookie::set_cookie_name(v) == name);
            if app_sets_it {
                return Action::Continue; // "preserve": the application's own cookie wins
            }
        }
        self.add_http_response_header("set-cookie", &set_cookie);
        if policy.cookie().nocache {
            if let Some(cc) =
                cookie::private_cache_control(self.get_http_response_header_bytes("cache-control").as_deref())
            {
                self.set_http_response_header("cache-control", Some(&cc));
            }
        }
        match reason {
            SetReason::NewSession => metrics.new_sessions.increment(),
            SetReason::Refresh => metrics.refreshed.increment(),
            SetReason::Redispatch => {
                metrics.redispatched.increment();
                debug!("affinity: session moved to {} (its node did not serve)", served.name);
            }
        }
        Action::Continue
    }
}
