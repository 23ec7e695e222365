//! affinity: cookie-based session affinity with redispatch.
//!
//! Reproduces HAProxy `cookie <name> insert indirect nocache maxidle <t> maxlife <t>` with
//! `option redispatch` and `balance leastconn` (Envoy's LEAST_REQUEST picks new sessions),
//! and Apache `stickysession=ROUTEID`. The request side reads the cookie and names a node;
//! the response side compares with the node that really served and (re)issues the cookie.

use crate::config::{from_value, read_document, ConfigError};
use crate::cookie::{self, CookieAttributes, SameSite};
use crate::duration::HumanDuration;
use crate::headers::HeaderMap;
use crate::nodes::{Node, Nodes};
use crate::plan::{Facts, Plan};
pub use crate::routing::EndpointName;
use crate::routing::{self, session_value, Claim, SessionHeader};
use crate::token::{Claims, Key, Keys, MAX_ENDPOINT_NAME};
use serde::Deserialize;
use serde_json::Value;
use std::net::SocketAddr;
use std::rc::Rc;

pub const DEFAULT_COOKIE_NAME: &str = "SERVERID";

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AffinityConfig {
    #[serde(default)]
    session_header: SessionHeader,
    /// Absent: the cookie carries the endpoint itself, sealed (EDS, pods, meshes).
    nodes: Option<Nodes>,
    endpoint_name: Option<EndpointName>,
    /// Path prefixes affinity leaves alone: routed elsewhere (git-bridge's own Service), so a
    /// request there neither follows nor moves the session.
    #[serde(default)]
    ignore_prefixes: Vec<String>,
    #[serde(default)]
    cookie: CookieConfig,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// A node of the nodes table, signed: clients can read the name, not change it.
    Signed,
    /// The node's name as it is, as HAProxy writes it.
    Plain,
    /// The endpoint's address (and name), encrypted: no nodes table needed.
    Sealed,
}

impl Format {
    /// As the configuration spells it.
    pub fn name(self) -> &'static str {
        match self {
            Format::Signed => "signed",
            Format::Plain => "plain",
            Format::Sealed => "sealed",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SecureMode {
    Auto,
    Always,
    Never,
}

impl<'de> Deserialize<'de> for SecureMode {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match serde_json::Value::deserialize(d)? {
            serde_json::Value::Bool(true) => Ok(SecureMode::Always),
            serde_json::Value::Bool(false) => Ok(SecureMode::Never),
            serde_json::Value::String(s) if s == "auto" => Ok(SecureMode::Auto),
            other => Err(serde::de::Error::custom(format!("expected true, false or \"auto\", got {other}"))),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
struct CookieConfig {
    name: String,
    /// Default: signed with a nodes table, sealed without.
    format: Option<Format>,
    keys: Vec<String>,
    keys_env: Option<String>,
    maxidle: Option<HumanDuration>,
    maxlife: Option<HumanDuration>,
    refresh: Option<HumanDuration>,
    path: String,
    domain: Option<String>,
    http_only: bool,
    secure: SecureMode,
    same_site: Option<SameSite>,
    max_age: Option<HumanDuration>,
    indirect: bool,
    nocache: bool,
    preserve: bool,
}

impl Default for CookieConfig {
    fn default() -> Self {
        CookieConfig {
            name: DEFAULT_COOKIE_NAME.to_string(),
            format: None,
            keys: Vec::new(),
            keys_env: None,
            maxidle: None,
            maxlife: None,
            refresh: None,
            path: "/".to_string(),
            domain: None,
            http_only: true,
            secure: SecureMode::Auto,
            same_site: Some(SameSite::Lax),
            max_age: None,
            indirect: true,
            nocache: true,
            preserve: false,
        }
    }
}

/// The compiled cookie settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CookieSettings {
    pub name: String,
    pub format: Format,
    keys: Keys,
    maxidle_secs: Option<u64>,
    maxlife_secs: Option<u64>,
    refresh_secs: Option<u64>,
    secure: SecureMode,
    attributes: CookieAttributes,
    pub indirect: bool,
    pub nocache: bool,
    pub preserve: bool,
}

/// What the request's cookie says.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum CookieState {
    #[default]
    Absent,
    /// Present but malformed, tampered, or signed with an unknown key.
    Invalid,
    /// Genuine but past `maxidle` or `maxlife`.
    Expired,
    /// Genuine and fresh, naming a node that is no longer in the table.
    UnknownNode(Claims),
    Valid {
        node: usize,
        claims: Claims,
    },
    /// Sealed, genuine and fresh: `claims.endpoint` serves the session.
    Endpoint(Claims),
}

/// Why a response gets our `Set-Cookie`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SetReason {
    NewSession,
    /// The pinned node did not serve (down, ejected, refused, removed): the session moves.
    Redispatch,
    /// Same node; last-seen is refreshed so `maxidle` counts from recent activity.
    Refresh,
    /// The session's address served, but its metadata names another endpoint: a new pod has
    /// the old one's address. Its session is not the one the cookie meant: a new session.
    Replaced,
}

/// The endpoint that served a response, as the cookie records it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Served<'a> {
    pub address: SocketAddr,
    /// The node's name (nodes table), or the endpoint's from its metadata ("" when unknown).
    pub name: &'a str,
}

impl<'a> From<&'a Node> for Served<'a> {
    fn from(node: &'a Node) -> Served<'a> {
        Served { address: node.address, name: &node.name }
    }
}

/// How sessions name where they go.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Binding {
    /// A node of the table; `base64(ip:port)` per node, in table order.
    Table { nodes: Nodes, session_values: Vec<Rc<str>> },
    /// The endpoint itself, sealed in the cookie, with its name from metadata if configured,
    /// and the session values of the endpoints seen lately.
    Endpoints { name: Option<EndpointName>, values: SessionValues },
}

/// The session header values of the endpoints sessions were sent to lately: a returning user's
/// request reuses its endpoint's instead of writing and encoding the address again (about 4k
/// Wasm instructions). A cluster has few endpoints; the oldest goes past [`Self::MAX`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct SessionValues(std::cell::RefCell<Vec<(SocketAddr, Rc<str>)>>);

impl SessionValues {
    const MAX: usize = 64;

    fn get(&self, address: SocketAddr) -> Rc<str> {
        let mut known = self.0.borrow_mut();
        if let Some((_, value)) = known.iter().find(|(a, _)| *a == address) {
            return value.clone();
        }
        let value = session_value(&address);
        if known.len() >= Self::MAX {
            known.remove(0);
        }
        known.push((address, value.clone()));
        value
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AffinityPolicy {
    session_header: SessionHeader,
    binding: Binding,
    ignore: Vec<crate::request_match::RequestMatch>,
    cookie: CookieSettings,
}

fn secs(d: Option<HumanDuration>) -> Option<u64> {
    d.map(|d| d.as_duration().as_secs())
}

impl AffinityPolicy {
    /// Parses and validates the configuration. `env` looks up the Envoy host's environment
    /// (for `cookie.keys_env`).
    pub fn from_json(json: &[u8], env: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        Self::from_value(read_document(json)?, env)
    }

    /// The policy for a configuration already read as JSON.
    #[inline(never)] // out of each module's configure: Envoy's RSS (tether_glue::Filter)
    pub fn from_value(config: Value, env: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let config: AffinityConfig = from_value(config)?;
        let c = config.cookie;
        let at = |f: &str| format!("cookie.{f}");
        if !cookie::is_token(&c.name) {
            return Err(ConfigError::at(
                at("name"),
                format!("{:?} is not a valid cookie name (an HTTP token)", c.name),
            ));
        }
        if !c.path.starts_with('/') || c.path.bytes().any(|b| b == b';' || b.is_ascii_control() || b == b' ') {
            return Err(ConfigError::at(
                at("path"),
                format!("{:?} must start with \"/\" and contain no ';', spaces or control characters", c.path),
            ));
        }
        if let Some(d) = &c.domain {
            if d.is_empty() || !d.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-') {
                return Err(ConfigError::at(at("domain"), format!("{d:?} is not a domain name")));
            }
        }
        if c.same_site == Some(SameSite::None) && c.secure != SecureMode::Always {
            return Err(ConfigError::at(
                at("same_site"),
                "SameSite=None requires \"secure\": true (browsers drop SameSite=None cookies without Secure)",
            ));
        }
        let format = match (c.format, &config.nodes) {
            (Some(Format::Sealed), Some(_)) => {
                return Err(ConfigError::at(
                    at("format"),
                    "\"sealed\" cookies carry the endpoint's address and take no nodes table: remove nodes, or use \"signed\"",
                ))
            }
            (Some(format @ (Format::Signed | Format::Plain)), None) => {
                return Err(ConfigError::at(
                    "nodes",
                    format!(
                        "{} cookies name a node of the nodes table: add nodes, or use format \"sealed\" (the default without nodes)",
                        format.name()
                    ),
                ))
            }
            (Some(format), _) => format,
            (None, Some(_)) => Format::Signed,
            (None, None) => Format::Sealed,
        };
        let mut keys = Vec::new();
        match format {
            Format::Signed | Format::Sealed => {
                for (i, k) in c.keys.iter().enumerate() {
                    keys.push(Key::new(k.as_bytes()).map_err(|e| ConfigError::at(format!("cookie.keys[{i}]"), e))?);
                }
                if let Some(var) = &c.keys_env {
                    let value = env(var).filter(|v| !v.trim().is_empty()).ok_or_else(|| {
                        ConfigError::at(
                            at("keys_env"),
                            format!("environment variable {var} is not set for the Envoy VM: set it for Envoy and list it in vm_config.environment_variables.host_env_keys"),
                        )
                    })?;
                    for (i, k) in value.split(',').map(str::trim).enumerate() {
                        keys.push(
                            Key::new(k.as_bytes())
                                .map_err(|e| ConfigError::at(at("keys_env"), format!("key {i} in {var}: {e}")))?,
                        );
                    }
                }
                if keys.is_empty() {
                    return Err(ConfigError::at(
                        at("keys"),
                        format!(
                            "{} cookies need at least one key, in cookie.keys or through cookie.keys_env",
                            if format == Format::Sealed { "sealed" } else { "signed" }
                        ),
                    ));
                }
            }
            Format::Plain => {
                if !c.keys.is_empty() || c.keys_env.is_some() {
                    return Err(ConfigError::at(
                        at("format"),
                        "keys are only used by formats \"signed\" and \"sealed\"",
                    ));
                }
                if c.maxidle.is_some() || c.maxlife.is_some() {
                    return Err(ConfigError::at(
                        at("format"),
                        "maxidle and maxlife need format \"signed\": a plain cookie cannot carry a time the client could not forge",
                    ));
                }
            }
        }
        for (field, d) in [("maxidle", c.maxidle), ("maxlife", c.maxlife), ("refresh", c.refresh)] {
            if d.is_some_and(|d| d.as_duration().as_secs() == 0) {
                return Err(ConfigError::at(at(field), "must be at least 1s"));
            }
        }
        let maxidle = secs(c.maxidle);
        let refresh = match (secs(c.refresh), maxidle) {
            (Some(r), Some(idle)) if r >= idle => {
                return Err(ConfigError::at(at("refresh"), "must be shorter than maxidle"));
            }
            (Some(_), None) => return Err(ConfigError::at(at("refresh"), "only means something with maxidle")),
            (Some(r), Some(_)) => Some(r),
            // Default: a tenth of maxidle, so a session's idle time is known to within 10%.
            (None, Some(idle)) => Some((idle / 10).max(1)),
            (None, None) => None,
        };
        let binding = match (config.nodes, config.endpoint_name) {
            (Some(_), Some(_)) => {
                return Err(ConfigError::at(
                    "endpoint_name",
                    "names endpoints of sealed cookies; with a nodes table the names are the table's",
                ))
            }
            (Some(nodes), None) => {
                Binding::Table { session_values: nodes.iter().map(|n| session_value(&n.address)).collect(), nodes }
            }
            (None, name) => Binding::Endpoints { name, values: SessionValues::default() },
        };
        let mut ignore = Vec::with_capacity(config.ignore_prefixes.len());
        for (i, p) in config.ignore_prefixes.iter().enumerate() {
            ignore.push(crate::request_match::RequestMatch::prefix(p, &format!("ignore_prefixes[{i}]"))?);
        }
        Ok(AffinityPolicy {
            session_header: config.session_header,
            binding,
            ignore,
            cookie: CookieSettings {
                keys: Keys::new(keys, &c.name),
                name: c.name,
                format,
                maxidle_secs: maxidle,
                maxlife_secs: secs(c.maxlife),
                refresh_secs: refresh,
                secure: c.secure,
                attributes: CookieAttributes {
                    path: c.path,
                    domain: c.domain,
                    http_only: c.http_only,
                    secure: false,
                    same_site: c.same_site,
                    max_age_secs: secs(c.max_age),
                },
                indirect: c.indirect,
                nocache: c.nocache,
                preserve: c.preserve,
            },
        })
    }

    pub fn session_header(&self) -> &SessionHeader {
        &self.session_header
    }

    /// The nodes table, if sessions are bound to its nodes.
    pub fn nodes(&self) -> Option<&Nodes> {
        match &self.binding {
            Binding::Table { nodes, .. } => Some(nodes),
            Binding::Endpoints { .. } => None,
        }
    }

    /// Where endpoint names are read, for sealed cookies that record them.
    pub fn endpoint_name(&self) -> Option<&EndpointName> {
        match &self.binding {
            Binding::Endpoints { name, .. } => name.as_ref(),
            Binding::Table { .. } => None,
        }
    }

    pub fn cookie(&self) -> &CookieSettings {
        &self.cookie
    }

    /// The session header value for node `index` of the table.
    pub fn session_value(&self, index: usize) -> Option<&Rc<str>> {
        match &self.binding {
            Binding::Table { session_values, .. } => session_values.get(index),
            Binding::Endpoints { .. } => None,
        }
    }

    /// Reads our cookie from the `Cookie` header. `now` (Unix seconds) is only asked for when
    /// a time must be checked. With several cookies of our name, the first genuine one wins.
    pub fn read_cookie(&self, header: Option<&[u8]>, now: impl FnOnce() -> u64) -> CookieState {
        let Some(header) = header else { return CookieState::Absent };
        let mut state = CookieState::Absent;
        let mut now = Some(now);
        let mut now_value = None;
        for value in cookie::values(header, &self.cookie.name) {
            let claims = match self.cookie.format {
                Format::Plain => {
                    // HAProxy writes "name" or, with maxidle/maxlife, "name|dates".
                    let name = value.split(|&b| b == b'|').next().unwrap_or_default();
                    std::str::from_utf8(name).ok().map(|n| Claims { node: n.to_string(), ..Claims::default() })
                }
                Format::Signed => self.cookie.keys.verify(value),
                Format::Sealed => self.cookie.keys.open(value),
            };
            let Some(claims) = claims else {
                if state == CookieState::Absent {
                    state = CookieState::Invalid;
                }
                continue;
            };
            if self.cookie.format != Format::Plain
                && (self.cookie.maxidle_secs.is_some() || self.cookie.maxlife_secs.is_some())
            {
                let t = *now_value.get_or_insert_with(|| now.take().map_or(0, |f| f()));
                let idle = self.cookie.maxidle_secs.is_some_and(|m| t > claims.last_seen.saturating_add(m));
                let old = self.cookie.maxlife_secs.is_some_and(|m| t > claims.first_seen.saturating_add(m));
                if idle || old {
                    state = CookieState::Expired;
                    continue;
                }
            }
            return match self.nodes() {
                None => CookieState::Endpoint(claims),
                Some(nodes) => match nodes.iter().position(|n| n.name == claims.node) {
                    Some(node) => CookieState::Valid { node, claims },
                    None => CookieState::UnknownNode(claims),
                },
            };
        }
        state
    }

    /// Decides the response's `Set-Cookie`: the endpoint that served (`None`: no node of
    /// ours, e.g. a local reply), the time, and whether the request came over https.
    pub fn set_cookie(
        &self,
        state: &CookieState,
        served: Option<Served<'_>>,
        now: u64,
        https: bool,
    ) -> Option<(SetReason, String)> {
        let served = served?;
        let refresh_due =
            |claims: &Claims| self.cookie.refresh_secs.is_some_and(|r| now >= claims.last_seen.saturating_add(r));
        let (reason, first_seen) = match state {
            CookieState::Valid { node, claims }
                if self.nodes().and_then(|n| n.iter().nth(*node)).is_some_and(|n| n.name == served.name) =>
            {
                if !refresh_due(claims) {
                    return None;
                }
                (SetReason::Refresh, claims.first_seen)
            }
            CookieState::Endpoint(claims) if claims.endpoint == Some(served.address) => {
                let name = endpoint_name_tail(served.name);
                match (claims.node.as_str(), name) {
                    // Another pod has the session's address: not the session the cookie meant.
                    (known, now_there) if !known.is_empty() && !now_there.is_empty() && known != now_there => {
                        (SetReason::Replaced, now)
                    }
                    // The endpoint's name became known: record it, so a later pod with this
                    // address is told apart.
                    ("", now_there) if !now_there.is_empty() => (SetReason::Refresh, claims.first_seen),
                    _ if refresh_due(claims) => (SetReason::Refresh, claims.first_seen),
                    _ => return None,
                }
            }
            CookieState::Valid { claims, .. } | CookieState::UnknownNode(claims) | CookieState::Endpoint(claims) => {
                (SetReason::Redispatch, claims.first_seen)
            }
            CookieState::Absent | CookieState::Invalid | CookieState::Expired => (SetReason::NewSession, now),
        };
        let value = match self.cookie.format {
            Format::Plain => served.name.to_string(),
            Format::Signed => self.cookie.keys.sign(&Claims {
                node: served.name.to_string(),
                endpoint: None,
                first_seen,
                last_seen: now,
            })?,
            Format::Sealed => self.cookie.keys.seal(&Claims {
                node: endpoint_name_tail(served.name).to_string(),
                endpoint: Some(served.address),
                first_seen,
                last_seen: now,
            })?,
        };
        let mut attributes = self.cookie.attributes.clone();
        attributes.secure = match self.cookie.secure {
            SecureMode::Always => true,
            SecureMode::Never => false,
            SecureMode::Auto => https,
        };
        Some((reason, cookie::set_cookie(&self.cookie.name, &value, &attributes)))
    }

    /// One line for the log when the configuration is accepted (no secrets).
    pub fn summary(&self) -> String {
        let binding = match &self.binding {
            Binding::Table { nodes, .. } => format!("{} node(s)", nodes.len()),
            Binding::Endpoints { name: None, .. } => "endpoints from Envoy".to_string(),
            Binding::Endpoints { name: Some(n), .. } => {
                format!("endpoints from Envoy, named by metadata {}.{}", n.filter, n.key)
            }
        };
        format!(
            "cookie {} ({:?}, {} key(s)), maxidle {}, maxlife {}, {binding}, session header {}",
            self.cookie.name,
            self.cookie.format,
            self.cookie.keys.len(),
            self.cookie.maxidle_secs.map_or("none".into(), |s| format!("{s}s")),
            self.cookie.maxlife_secs.map_or("none".into(), |s| format!("{s}s")),
            self.session_header.name()
        )
    }
}

/// The part of an endpoint's name a sealed cookie keeps (its last bytes, on a character boundary).
fn endpoint_name_tail(name: &str) -> &str {
    let mut start = name.len().saturating_sub(MAX_ENDPOINT_NAME);
    while !name.is_char_boundary(start) {
        start += 1;
    }
    name.get(start..).unwrap_or_default()
}

/// What the affinity filter needs from the request headers: every `Cookie` line (clients that
/// send several lines, against RFC 6265, lose nothing) and the scheme. Three lookups, not a walk
/// of every line against every name.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RequestFacts {
    /// All `Cookie` lines joined with `"; "`, as HTTP/2 joins cookie crumbs.
    pub cookie: Option<Vec<u8>>,
    pub https: bool,
}

impl AffinityPolicy {
    pub fn request_facts(&self, headers: &HeaderMap) -> RequestFacts {
        let mut cookie: Option<Vec<u8>> = None;
        for line in headers.all("cookie") {
            match &mut cookie {
                Some(joined) => {
                    joined.extend_from_slice(b"; ");
                    joined.extend_from_slice(line);
                }
                None => cookie = Some(line.to_vec()),
            }
        }
        RequestFacts { cookie, https: is_https(headers.get("x-forwarded-proto"), headers.get(":scheme")) }
    }
}

/// Whether the request arrived over https, from `x-forwarded-proto` (set or cleaned by the
/// forwarded filter or Envoy) or else `:scheme`.
pub fn is_https(forwarded_proto: Option<&[u8]>, scheme: Option<&[u8]>) -> bool {
    let first = |v: &[u8]| {
        v.split(|&b| b == b',').next().map(|s| s.trim_ascii().eq_ignore_ascii_case(b"https")).unwrap_or(false)
    };
    match forwarded_proto {
        Some(v) => first(v),
        None => scheme.is_some_and(|s| s.eq_ignore_ascii_case(b"https")),
    }
}

/// What the request side decided and the response side needs: the per-request memory of the
/// affinity filter.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct AffinityRequest {
    pub claim: Claim,
    pub state: CookieState,
    pub https: bool,
    /// Under one of `ignore_prefixes`: left alone both ways.
    pub ignored: bool,
}

/// What the response side decided besides its plan.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ResponseOutcome {
    /// Why a `Set-Cookie` went out, if one did.
    pub set: Option<SetReason>,
    /// The endpoint that served is not in the nodes table (no cookie can name it).
    pub unknown_upstream: Option<SocketAddr>,
    /// An upstream served a request nobody pinned, and Envoy's `stateful_session` wrote no
    /// session header into the response, as it does whenever its load balancer chose: the
    /// routing contract is not in place on this route (no `stateful_session` after the Tether
    /// filters, another header name, or the filter disabled here). Cookies will not stick.
    pub routing_contract_missing: bool,
    /// A `Secure` cookie went out on a plain-http request (`cookie.secure: true`): browsers
    /// drop it on a real host name, so sessions will not stick there.
    pub secure_cookie_on_http: bool,
}

/// Routing name of this filter (`tether.routed_by`).
pub const ROUTED_BY: &str = "affinity";

impl AffinityPolicy {
    /// The request: a genuine cookie names a node, the plan routes there; with `indirect`, the
    /// cookie is removed before the backend sees it.
    pub fn on_request(&self, headers: &HeaderMap, facts: &mut dyn Facts) -> (Plan, AffinityRequest) {
        let mut plan = Plan::default();
        if !self.ignore.is_empty() {
            let path = crate::request_match::path_without_query(headers.get(":path").unwrap_or_default());
            if self.ignore.iter().any(|p| p.matches(b"", path)) {
                return (plan, AffinityRequest { ignored: true, ..AffinityRequest::default() });
            }
        }
        let cookie_name = self.cookie.name.as_str();
        let request_facts = self.request_facts(headers);
        let claim = routing::claim(headers, &self.session_header, facts, &mut plan);
        let mut request = AffinityRequest { claim, https: request_facts.https, ..AffinityRequest::default() };
        if claim != Claim::DecidedEarlier {
            let state = self.read_cookie(request_facts.cookie.as_deref(), || facts.now_ms() / 1000);
            match &state {
                CookieState::Valid { node, .. } => {
                    if let (Some(value), Some(target)) =
                        (self.session_value(*node), self.nodes().and_then(|n| n.iter().nth(*node)))
                    {
                        routing::route(&mut plan, &self.session_header, ROUTED_BY, target.address, value);
                    }
                }
                CookieState::Endpoint(Claims { endpoint: Some(address), .. }) => {
                    if let Binding::Endpoints { values, .. } = &self.binding {
                        routing::route(&mut plan, &self.session_header, ROUTED_BY, *address, &values.get(*address));
                    }
                }
                _ => {}
            }
            request.state = state;
        }
        // HAProxy "indirect": the backend never sees our cookie; other cookies pass intact
        // (several Cookie lines become one, as HTTP/2 would send them).
        if self.cookie.indirect {
            if let Some(h) = request_facts.cookie.as_deref().filter(|h| cookie::contains(h, cookie_name)) {
                match cookie::without(h, cookie_name) {
                    Some(rest) => plan.set("cookie", rest),
                    None => plan.remove("cookie"),
                }
            }
        }
        (plan, request)
    }

    /// The response: a new session gets a cookie for the endpoint that `served`; a session whose
    /// node did not serve moves there (redispatch); last-seen is refreshed once per interval.
    pub fn on_response(
        &self,
        request: &AffinityRequest,
        headers: &HeaderMap,
        facts: &mut dyn Facts,
    ) -> (Plan, ResponseOutcome) {
        let mut plan = Plan::default();
        let mut outcome = ResponseOutcome::default();
        routing::remove_echo(&mut plan, headers, &self.session_header, request.claim);
        if request.claim == Claim::DecidedEarlier || request.ignored {
            return (plan, outcome); // e.g. a pinned /git/ request must not move the session
        }
        let Some(address) = facts.served() else { return (plan, outcome) }; // a local reply
        let pinned = matches!(request.state, CookieState::Valid { .. } | CookieState::Endpoint(_));
        outcome.routing_contract_missing =
            !pinned && !headers.contains(self.session_header.name()) && facts.echoes_session_header();
        let metadata_name;
        let served = match &self.binding {
            Binding::Table { nodes, .. } => match nodes.by_address(&address) {
                Some(node) => Served::from(node),
                None => {
                    outcome.unknown_upstream = Some(address);
                    return (plan, outcome);
                }
            },
            Binding::Endpoints { name, .. } => {
                metadata_name = name
                    .as_ref()
                    .and_then(|n| facts.endpoint_metadata(&n.filter, &n.key))
                    .and_then(|v| String::from_utf8(v).ok())
                    .unwrap_or_default();
                Served { address, name: &metadata_name }
            }
        };
        let Some((reason, set_cookie)) =
            self.set_cookie(&request.state, Some(served), facts.now_ms() / 1000, request.https)
        else {
            return (plan, outcome);
        };
        if self.cookie.preserve {
            let name = self.cookie.name.as_bytes();
            if headers.all("set-cookie").any(|v| cookie::set_cookie_name(v) == name) {
                return (plan, outcome); // "preserve": the application's own cookie wins
            }
        }
        if let Binding::Endpoints { values, .. } = &self.binding {
            // The session header value the session's next request sends, ready (once per endpoint).
            values.get(address);
        }
        plan.add("set-cookie", set_cookie);
        if self.cookie.nocache {
            if let Some(cc) = cookie::private_cache_control(headers.get("cache-control")) {
                plan.set("cache-control", cc);
            }
        }
        outcome.set = Some(reason);
        outcome.secure_cookie_on_http = self.cookie.secure == SecureMode::Always && !request.https;
        (plan, outcome)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    const NODES: &str = r#""nodes": [
        {"name": "node-1", "address": "127.0.0.1:8001"},
        {"name": "node-2", "address": "127.0.0.1:8002"},
        {"name": "node-3", "address": "127.0.0.1:8003"}
    ]"#;
    const KEY: &str = "0123456789abcdef0123456789abcdef";

    fn policy(cookie: &str) -> AffinityPolicy {
        AffinityPolicy::from_json(format!(r#"{{{NODES}, "cookie": {cookie}}}"#).as_bytes(), |_| None).unwrap()
    }

    fn node<'a>(p: &'a AffinityPolicy, name: &str) -> Served<'a> {
        p.nodes().unwrap().by_name(name).unwrap().into()
    }

    /// The cookie value a Set-Cookie carries.
    fn value_of(set_cookie: &str) -> String {
        set_cookie.split(';').next().unwrap().split_once('=').unwrap().1.to_string()
    }

    #[test]
    fn new_session_then_pinned_then_refresh_then_expiry() {
        let p = policy(&format!(r#"{{"keys": ["{KEY}"], "maxidle": "24h", "maxlife": "7d"}}"#));
        let t0 = 1_700_000_000;
        let (reason, set) = p.set_cookie(&CookieState::Absent, Some(node(&p, "node-2")), t0, true).unwrap();
        assert_eq!(reason, SetReason::NewSession);
        assert!(set.starts_with("SERVERID="), "{set}");
        assert!(set.ends_with("; Path=/; HttpOnly; Secure; SameSite=Lax"), "{set}");
        let header = format!("other=1; SERVERID={}", value_of(&set));

        let state = p.read_cookie(Some(header.as_bytes()), || t0 + 60);
        let CookieState::Valid { node: 1, claims } = &state else { panic!("{state:?}") };
        assert_eq!((claims.first_seen, claims.last_seen), (t0, t0));
        // Same node, within the refresh interval (maxidle / 10 = 8640 s): no Set-Cookie.
        assert_eq!(p.set_cookie(&state, Some(node(&p, "node-2")), t0 + 60, true), None);
        // Past it: refreshed, first-seen kept.
        let (reason, set) = p.set_cookie(&state, Some(node(&p, "node-2")), t0 + 9000, true).unwrap();
        assert_eq!(reason, SetReason::Refresh);
        let refreshed = format!("SERVERID={}", value_of(&set));
        let CookieState::Valid { claims, .. } = p.read_cookie(Some(refreshed.as_bytes()), || t0 + 9000) else {
            panic!()
        };
        assert_eq!((claims.first_seen, claims.last_seen), (t0, t0 + 9000));
        // maxidle: 24 h after last-seen it has expired.
        assert_eq!(p.read_cookie(Some(refreshed.as_bytes()), || t0 + 9000 + 86_401), CookieState::Expired);
        // maxlife: 7 days after first-seen, even if active.
        assert_eq!(p.read_cookie(Some(refreshed.as_bytes()), || t0 + 7 * 86_400 + 1), CookieState::Expired);
    }

    #[test]
    fn a_new_session_without_envoys_echo_is_a_missing_contract_on_envoy_only() {
        use crate::plan::FixedFacts;
        let p = policy(&format!(r#"{{"keys": ["{KEY}"]}}"#));
        let request = AffinityRequest::default();
        let served = "127.0.0.1:8002".parse().ok();
        let (_, envoy) =
            p.on_response(&request, &HeaderMap::default(), &mut FixedFacts { served, ..FixedFacts::default() });
        assert!(envoy.routing_contract_missing);
        assert_eq!(envoy.set, Some(SetReason::NewSession));
        let mut nginx = FixedFacts { served, nginx: true, ..FixedFacts::default() };
        let (plan, nginx) = p.on_response(&request, &HeaderMap::default(), &mut nginx);
        assert!(!nginx.routing_contract_missing);
        assert_eq!(nginx.set, Some(SetReason::NewSession));
        assert!(plan.edits.iter().any(|(name, _)| &**name == "set-cookie"), "{:?}", plan.edits);
    }

    #[test]
    fn redispatch_moves_the_session_and_keeps_first_seen() {
        let p = policy(&format!(r#"{{"keys": ["{KEY}"]}}"#));
        let (_, set) = p.set_cookie(&CookieState::Absent, Some(node(&p, "node-1")), 100, false).unwrap();
        assert!(!set.contains("Secure"), "auto: plain http gets no Secure: {set}");
        let header = format!("SERVERID={}", value_of(&set));
        let state = p.read_cookie(Some(header.as_bytes()), || 200);
        let (reason, set) = p.set_cookie(&state, Some(node(&p, "node-3")), 200, false).unwrap();
        assert_eq!(reason, SetReason::Redispatch);
        let moved = format!("SERVERID={}", value_of(&set));
        let CookieState::Valid { node: 2, claims } = p.read_cookie(Some(moved.as_bytes()), || 300) else { panic!() };
        assert_eq!(claims.first_seen, 100);
        // No node of ours served (a local reply): leave the cookie alone.
        assert_eq!(p.set_cookie(&state, None, 200, false), None);
    }

    #[test]
    fn bad_cookies_count_as_absent_never_as_errors() {
        let p = policy(&format!(r#"{{"keys": ["{KEY}"]}}"#));
        let other = policy(r#"{"keys": ["ffffffffffffffffffffffffffffffff"]}"#);
        let (_, foreign) = other.set_cookie(&CookieState::Absent, Some(node(&other, "node-1")), 1, false).unwrap();
        let foreign = format!("SERVERID={}", value_of(&foreign));
        for header in [&b"SERVERID=node-1"[..], b"SERVERID=", b"SERVERID=\xff\xfe", foreign.as_bytes(), b"SERVERID=a.b"]
        {
            assert_eq!(
                p.read_cookie(Some(header), || 0),
                CookieState::Invalid,
                "{:?}",
                String::from_utf8_lossy(header)
            );
        }
        assert_eq!(p.read_cookie(Some(b"a=1"), || 0), CookieState::Absent);
        assert_eq!(p.read_cookie(None, || 0), CookieState::Absent);
        // An invalid duplicate before a genuine one does not hide it.
        let (_, good) = p.set_cookie(&CookieState::Absent, Some(node(&p, "node-3")), 1, false).unwrap();
        let both = format!("SERVERID=junk; SERVERID={}", value_of(&good));
        assert!(matches!(p.read_cookie(Some(both.as_bytes()), || 2), CookieState::Valid { node: 2, .. }));
    }

    #[test]
    fn a_node_removed_from_the_table_means_redispatch() {
        let p = policy(&format!(r#"{{"keys": ["{KEY}"]}}"#));
        let gone = Claims { node: "node-9".into(), first_seen: 5, last_seen: 5, endpoint: None };
        let header = format!("SERVERID={}", crate::token::sign(&Key::new(KEY.as_bytes()).unwrap(), "SERVERID", &gone));
        let state = p.read_cookie(Some(header.as_bytes()), || 6);
        assert_eq!(state, CookieState::UnknownNode(gone));
        assert_eq!(
            p.set_cookie(&state, Some(node(&p, "node-1")), 6, false).map(|(r, _)| r),
            Some(SetReason::Redispatch)
        );
    }

    #[test]
    fn plain_format_reads_haproxy_cookies() {
        let p = policy(r#"{"format": "plain"}"#);
        for header in
            [&b"SERVERID=node-2"[..], b"SERVERID=node-2|abc", b"SERVERID=\"node-2\"", b"x=1; SERVERID=node-2|Zx8a|Zw7q"]
        {
            assert!(
                matches!(p.read_cookie(Some(header), || 0), CookieState::Valid { node: 1, .. }),
                "{:?}",
                String::from_utf8_lossy(header)
            );
        }
        assert!(matches!(p.read_cookie(Some(b"SERVERID=node-7"), || 0), CookieState::UnknownNode(_)));
        let (_, set) = p.set_cookie(&CookieState::Absent, Some(node(&p, "node-3")), 0, false).unwrap();
        assert!(set.starts_with("SERVERID=node-3; "), "{set}");
    }

    #[test]
    fn attributes() {
        let p = policy(&format!(
            r#"{{"name": "server-pro-ha", "keys": ["{KEY}"], "path": "/app", "domain": "example.org", "http_only": false,
                "secure": true, "same_site": "None", "max_age": "24h"}}"#
        ));
        let (_, set) = p.set_cookie(&CookieState::Absent, Some(node(&p, "node-1")), 0, false).unwrap();
        assert!(set.starts_with("server-pro-ha="), "{set}");
        assert!(set.ends_with("; Path=/app; Domain=example.org; Max-Age=86400; Secure; SameSite=None"), "{set}");
        let p = policy(&format!(r#"{{"keys": ["{KEY}"], "secure": false}}"#));
        let (_, set) = p.set_cookie(&CookieState::Absent, Some(node(&p, "node-1")), 0, true).unwrap();
        assert!(!set.contains("Secure"), "{set}");
    }

    #[test]
    fn keys_from_the_environment() {
        let json = format!(r#"{{{NODES}, "cookie": {{"keys_env": "TETHER_KEYS"}}}}"#);
        let env = |name: &str| (name == "TETHER_KEYS").then(|| format!("{KEY}, 1111111111111111"));
        let p = AffinityPolicy::from_json(json.as_bytes(), env).unwrap();
        assert!(p.summary().contains("2 key(s)"), "{}", p.summary());
        let err = AffinityPolicy::from_json(json.as_bytes(), |_| None).unwrap_err().to_string();
        assert!(err.starts_with("cookie.keys_env: environment variable TETHER_KEYS is not set"), "{err}");
        let err = AffinityPolicy::from_json(json.as_bytes(), |_| Some("short".into())).unwrap_err().to_string();
        assert!(err.contains("key 0 in TETHER_KEYS: a key must be at least 16 bytes"), "{err}");
        assert!(!p.summary().contains(KEY), "secrets stay out of logs");
    }

    #[test]
    fn bad_configs_name_the_field() {
        let cases: &[(&str, &str)] = &[
            ("{}", "cookie.keys: signed cookies need at least one key"),
            (r#"{"keys": ["short"]}"#, "cookie.keys[0]: a key must be at least 16 bytes"),
            (r#"{"name": "a b", "format": "plain"}"#, "cookie.name: \"a b\" is not a valid cookie name"),
            (
                r#"{"format": "plain", "keys": ["0123456789abcdef"]}"#,
                "cookie.format: keys are only used by formats \"signed\" and \"sealed\"",
            ),
            (r#"{"format": "plain", "maxidle": "24h"}"#, "cookie.format: maxidle and maxlife need format \"signed\""),
            (r#"{"format": "base64"}"#, "cookie.format: unknown variant `base64`"),
            (
                r#"{"format": "plain", "same_site": "None"}"#,
                "cookie.same_site: SameSite=None requires \"secure\": true",
            ),
            (r#"{"format": "plain", "same_site": "lax"}"#, "cookie.same_site: unknown variant `lax`"),
            (r#"{"format": "plain", "secure": "yes"}"#, "cookie.secure: expected true, false or \"auto\""),
            (r#"{"format": "plain", "path": "x"}"#, "cookie.path: \"x\" must start with \"/\""),
            (r#"{"format": "plain", "domain": "a;b"}"#, "cookie.domain: \"a;b\" is not a domain name"),
            (
                r#"{"keys": ["0123456789abcdef"], "maxidle": "1h", "refresh": "2h"}"#,
                "cookie.refresh: must be shorter than maxidle",
            ),
            (r#"{"keys": ["0123456789abcdef"], "refresh": "2h"}"#, "cookie.refresh: only means something with maxidle"),
            (r#"{"keys": ["0123456789abcdef"], "maxidle": "0s"}"#, "cookie.maxidle: must be at least 1s"),
            (
                r#"{"keys": ["0123456789abcdef"], "maxidle": 86400}"#,
                "cookie.maxidle: invalid duration 86400: a unit is required",
            ),
            (r#"{"format": "plain", "insert": true}"#, "cookie.insert: unknown field `insert`"),
        ];
        for &(cookie, want) in cases {
            let err = AffinityPolicy::from_json(format!(r#"{{{NODES}, "cookie": {cookie}}}"#).as_bytes(), |_| None)
                .unwrap_err()
                .to_string();
            assert!(err.contains(want), "{cookie}\n  got:  {err}\n  want: {want}");
        }
    }

    fn sealed(extra: &str) -> AffinityPolicy {
        AffinityPolicy::from_json(
            format!(r#"{{{extra} "cookie": {{"keys": ["{KEY}"], "maxidle": "1h"}}}}"#).as_bytes(),
            |_| None,
        )
        .unwrap()
    }

    fn at(address: &str, name: &'static str) -> Served<'static> {
        Served { address: address.parse().unwrap(), name }
    }

    #[test]
    fn without_nodes_the_cookie_seals_the_endpoint() {
        let p = sealed("");
        assert_eq!(p.cookie().format, Format::Sealed, "sealed is the default without nodes");
        assert!(p.summary().contains("endpoints from Envoy"), "{}", p.summary());
        let (reason, set) = p.set_cookie(&CookieState::Absent, Some(at("10.0.0.7:8080", "")), 100, false).unwrap();
        assert_eq!(reason, SetReason::NewSession);
        let value = value_of(&set);
        assert!(!value.contains("10.0.0.7") && !set.contains("8080"), "the address is not readable: {set}");
        let header = format!("SERVERID={value}");
        let state = p.read_cookie(Some(header.as_bytes()), || 200);
        let CookieState::Endpoint(claims) = &state else { panic!("{state:?}") };
        assert_eq!(claims.endpoint, Some("10.0.0.7:8080".parse().unwrap()));
        // Served where it was pinned: nothing to say until the refresh (maxidle / 10 = 360 s).
        assert_eq!(p.set_cookie(&state, Some(at("10.0.0.7:8080", "")), 200, false), None);
        assert_eq!(
            p.set_cookie(&state, Some(at("10.0.0.7:8080", "")), 500, false).map(|r| r.0),
            Some(SetReason::Refresh)
        );
        // Another endpoint served (the pinned one is gone, draining and removed, or failed):
        // the session moves, first-seen kept.
        let (reason, moved) = p.set_cookie(&state, Some(at("10.0.0.9:8080", "")), 200, false).unwrap();
        assert_eq!(reason, SetReason::Redispatch);
        let moved = format!("SERVERID={}", value_of(&moved));
        let CookieState::Endpoint(claims) = p.read_cookie(Some(moved.as_bytes()), || 300) else { panic!() };
        assert_eq!((claims.endpoint, claims.first_seen), (Some("10.0.0.9:8080".parse().unwrap()), 100));
        // maxidle holds for sealed cookies too.
        assert_eq!(p.read_cookie(Some(moved.as_bytes()), || 200 + 3601), CookieState::Expired);
    }

    #[test]
    fn a_new_pod_on_an_old_address_starts_a_new_session() {
        let p = sealed(r#""endpoint_name": {"filter_metadata": "tether", "key": "name"},"#);
        assert_eq!(p.endpoint_name(), Some(&EndpointName { filter: "tether".into(), key: "name".into() }));
        let (_, set) =
            p.set_cookie(&CookieState::Absent, Some(at("10.0.0.7:80", "web-7f9c-abcde")), 100, false).unwrap();
        let header = format!("SERVERID={}", value_of(&set));
        let state = p.read_cookie(Some(header.as_bytes()), || 150);
        // The same pod: nothing to do. Its name unknown this time (metadata gone): nothing either.
        assert_eq!(p.set_cookie(&state, Some(at("10.0.0.7:80", "web-7f9c-abcde")), 150, false), None);
        assert_eq!(p.set_cookie(&state, Some(at("10.0.0.7:80", "")), 150, false), None);
        // Another pod behind the same address: a new session, first-seen now.
        let (reason, set) = p.set_cookie(&state, Some(at("10.0.0.7:80", "web-7f9c-zzzzz")), 150, false).unwrap();
        assert_eq!(reason, SetReason::Replaced);
        let header = format!("SERVERID={}", value_of(&set));
        let CookieState::Endpoint(claims) = p.read_cookie(Some(header.as_bytes()), || 160) else { panic!() };
        assert_eq!((claims.node.as_str(), claims.first_seen), ("web-7f9c-zzzzz", 150));
        // A cookie issued before names were known gets the name recorded (a refresh).
        let (_, unnamed) = p.set_cookie(&CookieState::Absent, Some(at("10.0.0.8:80", "")), 100, false).unwrap();
        let header = format!("SERVERID={}", value_of(&unnamed));
        let state = p.read_cookie(Some(header.as_bytes()), || 110);
        assert_eq!(
            p.set_cookie(&state, Some(at("10.0.0.8:80", "web-1")), 110, false).map(|r| r.0),
            Some(SetReason::Refresh)
        );
    }

    #[test]
    fn sealed_cookies_that_are_not_genuine_count_as_absent() {
        let p = sealed("");
        let signed = policy(&format!(r#"{{"keys": ["{KEY}"]}}"#));
        let (_, foreign) = signed.set_cookie(&CookieState::Absent, Some(node(&signed, "node-1")), 1, false).unwrap();
        let (_, genuine) = p.set_cookie(&CookieState::Absent, Some(at("10.0.0.7:80", "")), 1, false).unwrap();
        let mut tampered = value_of(&genuine).into_bytes();
        tampered[20] = if tampered[20] == b'A' { b'B' } else { b'A' };
        let retired =
            AffinityPolicy::from_json(br#"{"cookie": {"keys": ["ffffffffffffffffffffffffffffffff"]}}"#, |_| None)
                .unwrap();
        let (_, retired) = retired.set_cookie(&CookieState::Absent, Some(at("10.0.0.7:80", "")), 1, false).unwrap();
        for value in
            [value_of(&foreign), String::from_utf8(tampered).unwrap(), value_of(&retired), "MTAuMC4wLjc6ODA=".into()]
        {
            let header = format!("SERVERID={value}");
            assert_eq!(p.read_cookie(Some(header.as_bytes()), || 2), CookieState::Invalid, "{value}");
        }
    }

    #[test]
    fn sealed_and_nodes_configs() {
        let cases: &[(&str, &str)] = &[
            (
                r#"{"cookie": {"format": "signed", "keys": ["0123456789abcdef"]}}"#,
                "nodes: signed cookies name a node of the nodes table",
            ),
            (r#"{"cookie": {"format": "plain"}}"#, "nodes: plain cookies name a node"),
            (r#"{"cookie": {}}"#, "cookie.keys: sealed cookies need at least one key"),
            (
                &format!(r#"{{{NODES}, "cookie": {{"format": "sealed", "keys": ["0123456789abcdef"]}}}}"#),
                "cookie.format: \"sealed\" cookies carry the endpoint's address and take no nodes table",
            ),
            (
                &format!(
                    r#"{{{NODES}, "endpoint_name": {{"filter_metadata": "a", "key": "b"}}, "cookie": {{"keys": ["0123456789abcdef"]}}}}"#
                ),
                "endpoint_name: names endpoints of sealed cookies",
            ),
            (
                r#"{"endpoint_name": {"filter_metadata": "", "key": "b"}, "cookie": {"keys": ["0123456789abcdef"]}}"#,
                "endpoint_name: filter_metadata \"\" must be 1 to 128 characters",
            ),
            (
                r#"{"endpoint_name": {"filter": "a", "key": "b"}, "cookie": {"keys": ["0123456789abcdef"]}}"#,
                "endpoint_name.filter: unknown field `filter`",
            ),
        ];
        for (json, want) in cases {
            let err = AffinityPolicy::from_json(json.as_bytes(), |_| None).unwrap_err().to_string();
            assert!(err.contains(want), "{json}\n  got:  {err}\n  want: {want}");
        }
    }

    #[test]
    fn request_facts_join_every_cookie_line() {
        let p = policy(r#"{"format": "plain"}"#);
        let facts = p.request_facts(&HeaderMap::from_pairs([
            (":scheme", "http"),
            ("cookie", "a=1"),
            ("x-forwarded-proto", "https"),
            ("cookie", "SERVERID=node-2; b=2"),
            ("x-tether-session", "forged"),
        ]));
        assert_eq!(facts.cookie.as_deref(), Some(&b"a=1; SERVERID=node-2; b=2"[..]));
        assert!(facts.https);
        assert!(matches!(p.read_cookie(facts.cookie.as_deref(), || 0), CookieState::Valid { node: 1, .. }));
        let https = HeaderMap::from_pairs([(":scheme", "https")]);
        assert_eq!(p.request_facts(&https), RequestFacts { https: true, ..RequestFacts::default() });
        // A cookie line an earlier filter added counts; one it removed does not.
        let mut edited = HeaderMap::from_pairs([("cookie", "a=1")]);
        edited.edit("cookie", crate::headers::Edit::Add("SERVERID=node-1".into()));
        assert_eq!(p.request_facts(&edited).cookie.as_deref(), Some(&b"a=1; SERVERID=node-1"[..]));
        edited.edit("cookie", crate::headers::Edit::Remove);
        assert_eq!(p.request_facts(&edited).cookie, None);
    }

    #[test]
    fn https_detection() {
        assert!(is_https(Some(b"https"), Some(b"http")));
        assert!(is_https(Some(b"HTTPS, http"), None));
        assert!(!is_https(Some(b"http"), Some(b"https")));
        assert!(is_https(None, Some(b"https")));
        assert!(!is_https(None, None));
    }
}
