//! tether-forwarded: tells the backend who the client is and over which scheme it came,
//! redirects plain http to https, and adds HSTS and X-Served-By on the way back.
//!
//! A library: [`Forwarded`] is the filter (tether-glue runs it; `module/` is its Wasm module,
//! tether-edge runs it with the others). Every decision is `tether_core::forwarded`'s.
//!
//! Host calls per request: the request headers (one read, one call per header it changes), the
//! peer's address, the connection's TLS only with `proto: "auto"`, the listener's port only
//! with `forwarded_port`; on the response the headers (one read, one call per header) and, with
//! `served_by` in a VM of its own, `upstream.address`.

use std::cell::Cell;
use tether_core::config::Value;
use tether_core::forwarded::ForwardedPolicy;
use tether_glue::{configure, Callback, Counter, Filter, UnknownUpstream};

struct Metrics {
    forged_discarded: Counter,
    redirects: Counter,
    unreadable_peer: Counter,
    unknown_upstream: UnknownUpstream,
}

pub struct Forwarded {
    policy: ForwardedPolicy,
    metrics: Metrics,
    /// The unreadable-peer line went to the log (once per VM).
    warned_no_peer: Cell<bool>,
}

/// What the response side needs of the request.
#[derive(Default)]
pub struct ForwardedRequest {
    /// The request's effective scheme is https: HSTS goes on its response.
    https: bool,
}

impl Filter for Forwarded {
    type Request = ForwardedRequest;

    const NAME: &'static str = "forwarded";

    #[inline(never)] // its own function in tether-edge too: Envoy's RSS (tether_glue::Filter)
    fn from_config(config: Value) -> Option<Forwarded> {
        let policy = configure(Self::NAME, config, ForwardedPolicy::from_value, ForwardedPolicy::summary)?;
        let metrics = Metrics {
            forged_discarded: Counter::define("tether_forwarded.forged_discarded"),
            redirects: Counter::define("tether_forwarded.redirects"),
            unreadable_peer: Counter::define("tether_forwarded.unreadable_peer"),
            unknown_upstream: UnknownUpstream::define("tether_forwarded"),
        };
        Some(Forwarded { policy, metrics, warned_no_peer: Cell::new(false) })
    }

    #[inline(never)] // its own function in tether-edge too: Envoy's RSS (tether_glue::Filter)
    fn on_request(&self, request: &mut ForwardedRequest, cx: &mut Callback<'_>, _end_of_stream: bool) {
        let (plan, outcome) = self.policy.on_request(cx.headers, &mut cx.facts);
        if outcome.forged {
            self.metrics.forged_discarded.increment();
        }
        if outcome.redirected {
            self.metrics.redirects.increment();
        }
        if outcome.no_peer {
            self.metrics.unreadable_peer.increment();
            if !self.warned_no_peer.replace(true) {
                log::warn!(
                    "forwarded: the host gave no readable peer address (source.address): such requests are treated as from an untrusted peer, their forwarding headers removed, and no header names the client"
                );
            }
        }
        request.https = outcome.https;
        cx.apply(plan);
    }

    #[inline(never)] // its own function in tether-edge too: Envoy's RSS (tether_glue::Filter)
    fn on_response(&self, request: &mut ForwardedRequest, cx: &mut Callback<'_>) {
        let (plan, unknown) = self.policy.on_response(request.https, cx.headers, &mut cx.facts);
        if let Some(address) = unknown {
            self.metrics.unknown_upstream.report(&address, "no X-Served-By for it");
        }
        cx.apply(plan);
    }
}
