//! The routing contract with Envoy, shared by path-pin, uri-hash and affinity.
//!
//! A routing filter names a node; it writes `base64("ip:port")` of that node into the session
//! header, and Envoy's `stateful_session` filter (header mode, same header name, placed after
//! the wasm filters) sends the request there while the node is healthy, else lets the cluster's
//! load balancer choose. The deciding filter marks the request with the `tether.routed_by`
//! property so routing filters later in the chain leave it alone; a filter that finds no mark
//! treats a session header on the request as forged by the client and removes it. On the
//! response, `upstream.address` tells which node really served.

use base64::Engine;
use serde::de::{self, Deserializer};
use serde::Deserialize;
use std::net::SocketAddr;

use crate::headers::HeaderMap;
use crate::plan::{Facts, Plan, Route};
use std::rc::Rc;

pub const DEFAULT_SESSION_HEADER: &str = "x-tether-session";

/// Headers that mean something else to HTTP or to Envoy and must not carry a session.
const RESERVED: &[&str] = &[
    "host",
    "cookie",
    "set-cookie",
    "content-length",
    "content-type",
    "transfer-encoding",
    "connection",
    "upgrade",
    "te",
    "keep-alive",
    "proxy-connection",
    "authorization",
    "x-forwarded-for",
    "x-forwarded-proto",
    "x-forwarded-host",
    "x-real-ip",
    "forwarded",
];

/// The session header's name: lower-case letters, digits and `-`, not a reserved header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionHeader(Rc<str>);

impl Default for SessionHeader {
    fn default() -> Self {
        SessionHeader(Rc::from(DEFAULT_SESSION_HEADER))
    }
}

impl SessionHeader {
    pub fn name(&self) -> &str {
        &self.0
    }

    /// The name as a plan's edit takes it (shared, not copied).
    pub fn shared(&self) -> &Rc<str> {
        &self.0
    }

    pub fn parse(name: &str) -> Result<SessionHeader, String> {
        let ok = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-';
        if name.is_empty() || name.len() > 64 || !name.chars().all(ok) || name.starts_with('-') {
            return Err(format!(
                "invalid header name {name:?}: use 1 to 64 lower-case letters, digits and '-', as Envoy's stateful_session header config must match it exactly"
            ));
        }
        if RESERVED.contains(&name) || name.starts_with("x-envoy-") {
            return Err(format!(
                "{name:?} is a header with another meaning; pick a name of your own, e.g. {DEFAULT_SESSION_HEADER:?}"
            ));
        }
        Ok(SessionHeader(Rc::from(name)))
    }
}

impl<'de> Deserialize<'de> for SessionHeader {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        SessionHeader::parse(&String::deserialize(d)?).map_err(de::Error::custom)
    }
}

/// An endpoint's name in its EDS metadata, `filter_metadata.<filter>.<key>` (configured as
/// `{"filter_metadata": "tether", "key": "name"}`): what tells one pod from the next that gets
/// its address, and what `X-Served-By` shows without a nodes table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndpointName {
    pub filter: String,
    pub key: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EndpointNameConfig {
    filter_metadata: String,
    key: String,
}

impl<'de> Deserialize<'de> for EndpointName {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let config = EndpointNameConfig::deserialize(d)?;
        for (field, value) in [("filter_metadata", &config.filter_metadata), ("key", &config.key)] {
            if value.is_empty() || value.len() > 128 || value.bytes().any(|b| b.is_ascii_control()) {
                return Err(de::Error::custom(format!(
                    "{field} {value:?} must be 1 to 128 characters, no control characters"
                )));
            }
        }
        Ok(EndpointName { filter: config.filter_metadata, key: config.key })
    }
}

/// The session header value that sends a request to `address`: `base64("ip:port")`.
pub fn session_value(address: &SocketAddr) -> Rc<str> {
    let mut text = String::with_capacity(24);
    crate::ascii::push_socket_addr(&mut text, *address);
    Rc::from(base64::engine::general_purpose::STANDARD.encode(text))
}

/// Whether a routing filter earlier in the chain already decided this request.
pub fn decided_earlier(routed_by: Option<&[u8]>) -> bool {
    routed_by.is_some_and(|v| !v.is_empty())
}

/// How a routing filter finds a request, before it decides anything.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Claim {
    /// A routing filter earlier in the chain decided: the session header is its, leave it be.
    DecidedEarlier,
    /// Nobody decided yet. `forged_removed`: the client sent a session header to steer the
    /// request; the plan removes it (never honoured).
    Open { forged_removed: bool },
}

/// Before a routing filter looked: nobody decided, nothing was removed.
impl Default for Claim {
    fn default() -> Self {
        Claim::Open { forged_removed: false }
    }
}

impl Claim {
    /// The client sent a session header, and the plan removes it (a metric in each filter).
    pub fn removed_forgery(self) -> bool {
        self == Claim::Open { forged_removed: true }
    }
}

/// The request side of the routing contract, run first by every routing filter. A filter that
/// decides always writes the session header, so without one on the request nobody decided and
/// `tether.routed_by` need not be asked (the common case costs no host call); with one, only
/// the mark tells a decision from a forgery.
pub fn claim(headers: &HeaderMap, header: &SessionHeader, facts: &mut dyn Facts, plan: &mut Plan) -> Claim {
    // Empty is absent: no decision writes it, and on nginx a removed line stays, emptied.
    if headers.get(header.name()).is_none_or(<[u8]>::is_empty) {
        return Claim::Open { forged_removed: false };
    }
    if decided_earlier(facts.routed_by().as_deref()) {
        return Claim::DecidedEarlier;
    }
    plan.remove(header.shared());
    Claim::Open { forged_removed: true }
}

/// Sends the request to `address` (its session value precomputed): the session header for
/// Envoy's `stateful_session`, and the route for the adapter (which marks the request).
pub fn route(plan: &mut Plan, header: &SessionHeader, by: &'static str, address: SocketAddr, value: &Rc<str>) {
    plan.set(header.shared(), value);
    plan.route = Some(Route { by, address: Some(address) });
}

/// Leaves the endpoint to Envoy's hash policy on the session header, which carries `key`:
/// the route hashes it (`hash_policy: [{header: {header_name: <session header>}}]`, Maglev
/// over the live endpoints) and has `stateful_session` disabled. The request is marked decided
/// like any routed one, so later routing filters leave it alone.
pub fn hash(plan: &mut Plan, header: &SessionHeader, by: &'static str, key: Vec<u8>) {
    plan.set(header.shared(), key);
    plan.route = Some(Route { by, address: None });
}

/// The response side: the endpoint that served. Envoy's `stateful_session` (header mode) writes
/// `base64(address)` into the response's session header when the load balancer chose another
/// endpoint than the request's header named, and nothing when the named one served. So: the
/// header if present, else the endpoint this stream was pinned to, else (no pin, or no
/// `stateful_session` on this route) the `upstream.address` property.
pub fn served_address(
    echo: Option<&[u8]>,
    pinned: Option<SocketAddr>,
    upstream_address: impl FnOnce() -> Option<Vec<u8>>,
) -> Option<SocketAddr> {
    let echoed =
        echo.and_then(|v| base64::engine::general_purpose::STANDARD.decode(v).ok()).and_then(|raw| parse_address(&raw));
    echoed.or(pinned).or_else(|| upstream_address().as_deref().and_then(parse_address))
}

/// An `ip:port` as Envoy writes it (`upstream.address`, the session header's decoded value).
pub fn parse_address(raw: &[u8]) -> Option<SocketAddr> {
    std::str::from_utf8(raw).ok()?.parse().ok()
}

/// The response side of the contract, run first by every routing filter: the session header
/// Envoy wrote into the response is removed, so internal addresses never reach clients; unless
/// another filter decided, which, being earlier in the chain, sees the response later and
/// removes it itself (a filter later in the chain that removed it first would hide from the
/// decider which endpoint served).
pub fn remove_echo(plan: &mut Plan, headers: &HeaderMap, header: &SessionHeader, claim: Claim) {
    if claim != Claim::DecidedEarlier && headers.contains(header.name()) {
        plan.remove(header.shared());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    #[test]
    fn session_value_is_base64_of_ip_port() {
        assert_eq!(&*session_value(&"127.0.0.1:8001".parse().unwrap()), "MTI3LjAuMC4xOjgwMDE=");
        assert_eq!(&*session_value(&"[::1]:80".parse().unwrap()), "Wzo6MV06ODA=");
    }

    #[test]
    fn header_names() {
        assert_eq!(SessionHeader::default().name(), "x-tether-session");
        assert!(SessionHeader::parse("x-my-session").is_ok());
        for bad in ["", "X-Session", "x session", "-x", "cookie", "host", "x-envoy-original-path", "x_s"] {
            assert!(SessionHeader::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn precedence() {
        assert!(!decided_earlier(None));
        assert!(!decided_earlier(Some(b"")));
        assert!(decided_earlier(Some(b"path-pin")));
    }
}
