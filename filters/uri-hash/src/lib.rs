//! tether-uri-hash: URI-depth consistent hashing (HAProxy `balance uri depth 2`).
//!
//! Every request for one project (`/project/<id>/...` with depth 2) goes to the same node,
//! where its compile cache lives. When that node did not serve (Envoy fell back because it was
//! unhealthy), the filter records it in shared data for `failover_cooldown`, and meanwhile
//! sends that node's keys to their consistent alternative, the same on every worker, instead
//! of letting the load balancer scatter one project over every node. Each worker reads that list
//! once per tick (every second), not per request, and sees its own failovers at once.
//!
//! A library: [`UriHash`] is the filter (tether-glue runs it; `module/` is its Wasm module,
//! tether-edge runs it with the others). Every decision is `tether_core::uri_hash`'s.

use log::debug;
use tether_core::config::Value;
use tether_core::uri_hash::{UriHashPolicy, UriHashRequest, UriHashResponse};
use tether_glue::{configure, Callback, Counter, Filter, UnknownUpstream};

struct Metrics {
    hashed: Counter,
    failovers: Counter,
    routed_away: Counter,
    client_session_header_removed: Counter,
    unknown_upstream: UnknownUpstream,
}

pub struct UriHash {
    policy: UriHashPolicy,
    metrics: Metrics,
}

impl Filter for UriHash {
    type Request = UriHashRequest;

    const NAME: &'static str = "uri-hash";

    #[inline(never)] // its own function in tether-edge too: Envoy's RSS (tether_glue::Filter)
    fn from_config(config: Value) -> Option<UriHash> {
        let policy = configure(Self::NAME, config, UriHashPolicy::from_value, UriHashPolicy::summary)?;
        let c = |name: &str| Counter::define(&format!("tether_uri_hash.{name}"));
        let metrics = Metrics {
            hashed: c("hashed"),
            failovers: c("failovers"),
            routed_away: c("routed_away"),
            client_session_header_removed: c("client_session_header_removed"),
            unknown_upstream: UnknownUpstream::define("tether_uri_hash"),
        };
        Some(UriHash { policy, metrics })
    }

    #[inline(never)] // its own function in tether-edge too: Envoy's RSS (tether_glue::Filter)
    fn on_request(&self, request: &mut UriHashRequest, cx: &mut Callback<'_>, _end_of_stream: bool) {
        let (plan, decided) = self.policy.on_request(cx.headers, &mut cx.facts);
        if decided.claim.removed_forgery() {
            self.metrics.client_session_header_removed.increment();
        }
        if decided.hashed {
            self.metrics.hashed.increment();
        }
        if decided.choice.is_some_and(|c| c.node != c.primary) {
            self.metrics.routed_away.increment();
        }
        *request = decided;
        cx.apply(plan);
    }

    #[inline(never)] // its own function in tether-edge too: Envoy's RSS (tether_glue::Filter)
    fn on_response(&self, request: &mut UriHashRequest, cx: &mut Callback<'_>) {
        let (plan, found) = self.policy.on_response(request, cx.headers, &mut cx.facts);
        match found {
            UriHashResponse::Nothing => {}
            UriHashResponse::UnknownUpstream(address) => {
                self.metrics.unknown_upstream.report(&address, "failovers cannot be recorded");
            }
            UriHashResponse::Failover { chosen, served, recorded } => {
                self.metrics.failovers.increment();
                debug!("uri-hash: {chosen} did not serve ({served} did); its keys fail over for the cooldown");
                if !recorded {
                    debug!("uri-hash: could not record {chosen} as down (shared data contended)");
                }
            }
        }
        cx.apply(plan);
    }

    fn session_header(&self) -> Option<&str> {
        Some(self.policy.session_header().name())
    }
}
