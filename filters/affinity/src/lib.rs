//! tether-affinity: cookie session affinity with redispatch.
//!
//! Request: a genuine cookie names a node; the filter routes to it through the session header
//! (routing contract) and, with `indirect`, removes its cookie before the backend sees it.
//! Response: the endpoint that served (the session header Envoy writes back when it chose
//! another) decides: a new session gets a cookie for it, a session whose node did not serve is
//! moved there (redispatch), and last-seen is refreshed once per refresh interval.
//!
//! A library: [`Affinity`] is the filter (tether-glue runs it; `module/` is its Wasm module,
//! tether-edge runs it with the others). Every decision is `tether_core::affinity`'s.

use log::debug;
use tether_core::affinity::{AffinityPolicy, AffinityRequest, CookieState, SetReason};
use tether_core::config::Value;
use tether_glue::{configure, host_env_var, Callback, Counter, Filter, Misconfiguration, UnknownUpstream};

struct Metrics {
    new_sessions: Counter,
    pinned: Counter,
    redispatched: Counter,
    refreshed: Counter,
    invalid: Counter,
    expired: Counter,
    client_session_header_removed: Counter,
    endpoint_replaced: Counter,
    unknown_upstream: UnknownUpstream,
    routing_contract_missing: Misconfiguration,
    secure_cookie_on_http: Misconfiguration,
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
            endpoint_replaced: c("endpoint_replaced"),
            unknown_upstream: UnknownUpstream::define("tether_affinity"),
            routing_contract_missing: Misconfiguration::define("tether_affinity.routing_contract_missing"),
            secure_cookie_on_http: Misconfiguration::define("tether_affinity.secure_cookie_on_http"),
        }
    }
}

pub struct Affinity {
    policy: AffinityPolicy,
    metrics: Metrics,
}

impl Filter for Affinity {
    type Request = AffinityRequest;

    const NAME: &'static str = "affinity";

    #[inline(never)] // its own function in tether-edge too: Envoy's RSS (tether_glue::Filter)
    fn from_config(config: Value) -> Option<Affinity> {
        let parse = |config: Value| AffinityPolicy::from_value(config, host_env_var);
        let policy = configure(Self::NAME, config, parse, AffinityPolicy::summary)?;
        Some(Affinity { policy, metrics: Metrics::define() })
    }

    #[inline(never)] // its own function in tether-edge too: Envoy's RSS (tether_glue::Filter)
    fn on_request(&self, request: &mut AffinityRequest, cx: &mut Callback<'_>, _end_of_stream: bool) {
        let (plan, decided) = self.policy.on_request(cx.headers, &mut cx.facts);
        if decided.claim.removed_forgery() {
            self.metrics.client_session_header_removed.increment();
        }
        match &decided.state {
            CookieState::Valid { .. } | CookieState::Endpoint(_) if plan.route.is_some() => {
                self.metrics.pinned.increment();
            }
            CookieState::Invalid => self.metrics.invalid.increment(),
            CookieState::Expired => self.metrics.expired.increment(),
            _ => {}
        }
        *request = decided;
        cx.apply(plan);
    }

    #[inline(never)] // its own function in tether-edge too: Envoy's RSS (tether_glue::Filter)
    fn on_response(&self, request: &mut AffinityRequest, cx: &mut Callback<'_>) {
        let (plan, outcome) = self.policy.on_response(request, cx.headers, &mut cx.facts);
        if let Some(address) = outcome.unknown_upstream {
            self.metrics.unknown_upstream.report(&address, "no cookie is set for it");
        }
        if outcome.routing_contract_missing {
            let header = self.policy.session_header().name();
            self.metrics.routing_contract_missing.report(|| {
                format!(
                    "affinity: Envoy's stateful_session wrote no {header} header into a response its load balancer chose: \
                     put envoy.filters.http.stateful_session (envoy.http.stateful_session.header, name: {header}) after \
                     the Tether filters and before the router, enabled on this route; until then cookies do not stick"
                )
            });
        }
        if outcome.secure_cookie_on_http {
            self.metrics.secure_cookie_on_http.report(|| {
                "affinity: a Secure cookie went out on a plain-http request (cookie.secure: true): browsers drop it \
                 except on localhost, so sessions do not stick; serve https, or use \"secure\": \"auto\""
                    .to_string()
            });
        }
        match outcome.set {
            Some(SetReason::NewSession) => self.metrics.new_sessions.increment(),
            Some(SetReason::Refresh) => self.metrics.refreshed.increment(),
            Some(SetReason::Redispatch) => {
                self.metrics.redispatched.increment();
                debug!("affinity: session moved (its node did not serve)");
            }
            Some(SetReason::Replaced) => {
                self.metrics.endpoint_replaced.increment();
                debug!("affinity: new session (another endpoint has the session's address)");
            }
            None => {}
        }
        cx.apply(plan);
    }

    fn session_header(&self) -> Option<&str> {
        Some(self.policy.session_header().name())
    }

    /// The last routing filter by precedence: no routing filter after it reads the mark.
    fn marks_route_for_later_vms(&self) -> bool {
        false
    }
}
