//! The forwarded filter's proxy-wasm contexts: its root (configuration, metrics) and its
//! per-request context. Compiled into this filter's module (lib.rs) and, by path, into
//! tether-edge's single module.

use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType};
use std::net::{IpAddr, SocketAddr};
use std::rc::Rc;
use tether_core::forwarded::{
    forwarded_element, parse_xff, redirect_location, redirect_status, ForwardedPolicy, ProtoMode,
};
use tether_core::routing::UPSTREAM_ADDRESS_PROPERTY;
use tether_glue::{
    configure, configure_root, property, request_headers, set_request_header, stream_property, Counter, UnknownUpstream,
};

/// Headers a client could forge; from an untrusted peer they never pass as sent, and count in
/// `forged_discarded`. Not `x-forwarded-proto`: Envoy (`use_remote_address: true`, required)
/// rewrites it from the connection before any filter runs, so it is always Envoy's own here;
/// counting it made every request look forged.
const FORWARDING_HEADERS: [&str; 5] =
    ["x-forwarded-for", "x-real-ip", "x-forwarded-host", "x-forwarded-port", "forwarded"];

struct Metrics {
    forged_discarded: Counter,
    redirects: Counter,
    unknown_upstream: UnknownUpstream,
}

struct Shared {
    policy: ForwardedPolicy,
    metrics: Metrics,
}

#[derive(Default)]
pub struct ForwardedRoot {
    shared: Option<Rc<Shared>>,
}

impl ForwardedRoot {
    /// The root for configuration `json` (JSON text or Struct bytes), as `on_configure` builds
    /// it; `None` after logging why the configuration is refused. tether-edge calls this with
    /// its section of a combined configuration.
    pub fn from_config(json: &[u8]) -> Option<ForwardedRoot> {
        let policy = configure("forwarded", json, ForwardedPolicy::from_json, ForwardedPolicy::summary)?;
        let metrics = Metrics {
            forged_discarded: Counter::define("tether_forwarded.forged_discarded"),
            redirects: Counter::define("tether_forwarded.redirects"),
            unknown_upstream: UnknownUpstream::define("tether_forwarded"),
        };
        Some(ForwardedRoot { shared: Some(Rc::new(Shared { policy, metrics })) })
    }
}

impl Context for ForwardedRoot {}

impl RootContext for ForwardedRoot {
    fn on_configure(&mut self, _size: usize) -> bool {
        configure_root(self, Self::from_config)
    }

    fn create_http_context(&self, context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(ForwardedRequest { shared: self.shared.clone()?, https: false, context_id }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct ForwardedRequest {
    shared: Rc<Shared>,
    context_id: u32,
    /// The request's effective scheme is https: HSTS goes on its response.
    https: bool,
}

fn text(v: Option<&[u8]>) -> Option<&str> {
    v.and_then(|v| std::str::from_utf8(v).ok())
}

impl Context for ForwardedRequest {}

impl HttpContext for ForwardedRequest {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        let shared = Rc::clone(&self.shared);
        let (policy, metrics) = (&shared.policy, &shared.metrics);
        let Some(peer) = text(property(&["source", "address"]).as_deref())
            .and_then(|a| a.parse::<SocketAddr>().ok())
            .map(|a| a.ip())
        else {
            return Action::Continue; // not an IP peer (e.g. a pipe): nothing to tell
        };
        // The connection's TLS only matters when the proto is not forced (one host call saved).
        let tls = matches!(policy.proto, ProtoMode::Auto)
            && property(&["connection", "tls_version"]).is_some_and(|v| !v.is_empty());
        let headers = request_headers(self.context_id);
        let trusted = policy.peer_trusted(&peer);
        let sent_any = FORWARDING_HEADERS.iter().any(|h| headers.get(h).is_some());
        if !trusted && sent_any {
            metrics.forged_discarded.increment();
        }
        let xff_lines: Vec<&[u8]> = headers.iter().filter(|(n, _)| *n == b"x-forwarded-for").map(|(_, v)| v).collect();
        // From a trusted peer its chain counts; an unreadable chain is nobody's word.
        let chain: Vec<IpAddr> = if trusted { parse_xff(&xff_lines).unwrap_or_default() } else { Vec::new() };
        let client = policy.client(&chain, peer);
        let trusted_proto = if trusted { headers.get("x-forwarded-proto") } else { None };
        let proto = policy.effective_proto(trusted_proto, tls);
        self.https = proto == "https";
        let path = text(headers.get(":path")).unwrap_or("/");
        let authority = text(headers.get(":authority")).unwrap_or_default();
        if !self.https && policy.redirects(path.as_bytes()) {
            if let Some(r) = &policy.redirect {
                let status = redirect_status(headers.get(":method").unwrap_or_default());
                let location = redirect_location(authority, path, r.port);
                metrics.redirects.increment();
                self.send_http_response(status, vec![("location", &location)], None);
                return Action::Pause;
            }
        }
        // Decided first, written after: the headers are shared with the filters after this one
        // in tether-edge, and writing while holding them would copy them.
        let mut writes: Vec<(&str, Option<String>)> = Vec::with_capacity(6);
        // X-Forwarded-For (HAProxy "option forwardfor", nginx $proxy_add_x_forwarded_for).
        if let Some(xff) = policy.xff_value(&chain, peer, client) {
            writes.push(("x-forwarded-for", Some(xff)));
        }
        if policy.real_ip {
            writes.push(("x-real-ip", Some(client.to_string())));
        } else if !trusted && headers.get("x-real-ip").is_some() {
            writes.push(("x-real-ip", None));
        }
        writes.push(("x-forwarded-proto", Some(proto.to_string())));
        let keep = |name: &str| trusted && headers.get(name).is_some();
        if policy.forwarded_host {
            if !keep("x-forwarded-host") && !authority.is_empty() {
                writes.push(("x-forwarded-host", Some(authority.to_string())));
            }
        } else if !trusted && headers.get("x-forwarded-host").is_some() {
            writes.push(("x-forwarded-host", None));
        }
        if policy.forwarded_port {
            if !keep("x-forwarded-port") {
                if let Some(port) = property(&["destination", "port"]).and_then(|p| p.get(..8).map(<[u8]>::to_vec)) {
                    let mut b = [0u8; 8];
                    b.copy_from_slice(&port);
                    writes.push(("x-forwarded-port", Some(u64::from_le_bytes(b).to_string())));
                }
            }
        } else if !trusted && headers.get("x-forwarded-port").is_some() {
            writes.push(("x-forwarded-port", None));
        }
        if policy.forwarded {
            let element = forwarded_element(peer, proto, (!authority.is_empty()).then_some(authority));
            let value = match text(headers.get("forwarded")).filter(|_| trusted) {
                Some(existing) => format!("{existing}, {element}"),
                None => element,
            };
            writes.push(("forwarded", Some(value)));
        } else if !trusted && headers.get("forwarded").is_some() {
            writes.push(("forwarded", None));
        }
        drop(headers);
        for (name, value) in writes {
            set_request_header(self.context_id, name, value.as_deref().map(str::as_bytes));
        }
        Action::Continue
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        let shared = Rc::clone(&self.shared);
        let policy = &shared.policy;
        if let (true, Some(hsts)) = (self.https, &policy.hsts) {
            // HSTS only over https: browsers ignore it over http, and it must not be claimed there.
            if hsts.override_upstream || self.get_http_response_header_bytes("strict-transport-security").is_none() {
                self.set_http_response_header("strict-transport-security", Some(&hsts.value));
            }
        }
        if let Some(served_by) = &policy.served_by {
            let upstream = stream_property(self.context_id, &UPSTREAM_ADDRESS_PROPERTY);
            if let Some(raw) = upstream.as_deref() {
                match served_by.nodes.by_upstream_address(raw) {
                    Some(node) => self.add_http_response_header(&served_by.header, &node.name),
                    None => shared.metrics.unknown_upstream.report(raw, "no X-Served-By for it"),
                }
            }
        }
        Action::Continue
    }
}
