//! tether-edge: Tether's five filters in one proxy-wasm module and one VM. Envoy charges every
//! Wasm filter a fixed cost per request (context creation and one VM entry per callback), and
//! each filter of its own reads and writes the header maps itself; here the five run over one
//! read of each map and their edits go back one host call each.
//!
//! [`Edge`] is a filter made of the five filter libraries: each section of the configuration
//! is handed to that filter's own `from_config`; each request callback runs them in chain order
//! (forwarded, body-limit, path-pin, uri-hash, affinity) over the same view, each seeing the
//! edits of those before it, and the response callback in reverse, as Envoy runs separate
//! filters. A filter that answers locally (a redirect, a 413) ends the request callback there,
//! as its `Pause` ends Envoy's chain; only filters that saw the request see its response.
//! Metrics, logs and behaviour are the filters' own.

use serde::Deserialize;
use tether_affinity::Affinity;
use tether_body_limit::BodyLimit;
use tether_core::affinity::AffinityRequest;
use tether_core::body_limit::BodyLimitRequest;
use tether_core::config::{from_value, Value};
use tether_core::path_pin::PathPinRequest;
use tether_core::uri_hash::UriHashRequest;
use tether_forwarded::{Forwarded, ForwardedRequest};
use tether_glue::{configure, Callback, Filter};
use tether_path_pin::PathPin;
use tether_uri_hash::UriHash;

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

/// The configured filters, in chain order.
pub struct Edge {
    forwarded: Option<Forwarded>,
    body_limit: Option<BodyLimit>,
    path_pin: Option<PathPin>,
    uri_hash: Option<UriHash>,
    affinity: Option<Affinity>,
}

/// Each filter's memory of one request, and how far the request got.
#[derive(Default)]
pub struct EdgeRequest {
    forwarded: ForwardedRequest,
    body_limit: BodyLimitRequest,
    path_pin: PathPinRequest,
    uri_hash: UriHashRequest,
    affinity: AffinityRequest,
    /// How many positions of the chain saw the request headers (the others never see this
    /// request, as after a `Pause` in Envoy's chain).
    reached: usize,
}

/// A section handed to its filter as it was read: `None` after the filter's own line said why.
fn section<F: Filter>(name: &str, value: Option<Value>) -> Result<Option<F>, String> {
    let Some(value) = value else { return Ok(None) };
    F::from_config(value).map(Some).ok_or_else(|| format!("section {name:?} refused (see the line above)"))
}

impl Edge {
    fn build(config: Value) -> Result<Edge, String> {
        let config: EdgeConfig = from_value(config).map_err(|e| e.to_string())?;
        let edge = Edge {
            forwarded: section("forwarded", config.forwarded)?,
            body_limit: section("body_limit", config.body_limit)?,
            path_pin: section("path_pin", config.path_pin)?,
            uri_hash: section("uri_hash", config.uri_hash)?,
            affinity: section("affinity", config.affinity)?,
        };
        if edge.parts() == 0 {
            return Err("no section; expected some of forwarded, body_limit, path_pin, uri_hash, affinity".into());
        }
        // The routing contract has one session header for the whole chain: Envoy's
        // stateful_session follows one name.
        let headers: Vec<&str> = edge.routing_session_headers().collect();
        if let Some(other) = headers.iter().find(|h| Some(*h) != headers.first()) {
            return Err(format!(
                "the routing sections name different session headers ({:?} and {other:?}); use one name, the one Envoy's stateful_session reads",
                headers.first().copied().unwrap_or_default()
            ));
        }
        Ok(edge)
    }

    fn parts(&self) -> usize {
        usize::from(self.forwarded.is_some())
            + usize::from(self.body_limit.is_some())
            + usize::from(self.path_pin.is_some())
            + usize::from(self.uri_hash.is_some())
            + usize::from(self.affinity.is_some())
    }

    fn routing_session_headers(&self) -> impl Iterator<Item = &str> {
        let path_pin = self.path_pin.as_ref().and_then(|f| f.session_header());
        let uri_hash = self.uri_hash.as_ref().and_then(|f| f.session_header());
        let affinity = self.affinity.as_ref().and_then(|f| f.session_header());
        [path_pin, uri_hash, affinity].into_iter().flatten()
    }
}

/// Runs `$call` on chain position `$at`'s filter if configured, unless an earlier one replied.
macro_rules! step {
    ($self:ident, $request:ident, $cx:ident, $at:expr, $part:ident, |$f:ident, $r:ident| $call:expr) => {
        if $cx.reply.is_none() {
            $request.reached = $at + 1;
            if let Some($f) = &$self.$part {
                let $r = &mut $request.$part;
                $call;
            }
        }
    };
}

impl Filter for Edge {
    type Request = EdgeRequest;

    const NAME: &'static str = "edge";

    fn from_config(config: Value) -> Option<Edge> {
        configure(Self::NAME, config, Edge::build, |e| format!("{} filter(s) in one VM", e.parts()))
    }

    fn reads_request_headers(&self, end_of_stream: bool) -> bool {
        self.forwarded.is_some()
            || self.path_pin.is_some()
            || self.uri_hash.is_some()
            || self.affinity.is_some()
            || self.body_limit.as_ref().is_some_and(|f| f.reads_request_headers(end_of_stream))
    }

    fn on_request(&self, request: &mut EdgeRequest, cx: &mut Callback<'_>, eos: bool) {
        step!(self, request, cx, 0, forwarded, |f, r| f.on_request(r, cx, eos));
        step!(self, request, cx, 1, body_limit, |f, r| f.on_request(r, cx, eos));
        step!(self, request, cx, 2, path_pin, |f, r| f.on_request(r, cx, eos));
        step!(self, request, cx, 3, uri_hash, |f, r| f.on_request(r, cx, eos));
        step!(self, request, cx, 4, affinity, |f, r| f.on_request(r, cx, eos));
    }

    fn on_request_body(&self, request: &mut EdgeRequest, cx: &mut Callback<'_>, chunk_len: usize) {
        // Only body-limit reads bodies.
        if request.reached > 1 {
            if let Some(f) = &self.body_limit {
                f.on_request_body(&mut request.body_limit, cx, chunk_len);
            }
        }
    }

    fn on_response(&self, request: &mut EdgeRequest, cx: &mut Callback<'_>) {
        let reached = request.reached;
        if let (true, Some(f)) = (reached > 4, &self.affinity) {
            f.on_response(&mut request.affinity, cx);
        }
        if let (true, Some(f)) = (reached > 3, &self.uri_hash) {
            f.on_response(&mut request.uri_hash, cx);
        }
        if let (true, Some(f)) = (reached > 2, &self.path_pin) {
            f.on_response(&mut request.path_pin, cx);
        }
        if let (true, Some(f)) = (reached > 0, &self.forwarded) {
            f.on_response(&mut request.forwarded, cx);
        }
    }

    fn session_header(&self) -> Option<&str> {
        self.routing_session_headers().next()
    }

    /// Affinity is the last routing filter by precedence; without it here, a routing filter in
    /// a later VM may follow.
    fn marks_route_for_later_vms(&self) -> bool {
        self.affinity.is_none()
    }
}
