//! forwarded: who the client is, over which scheme and host it came, for the backend; plus the
//! https redirect and HSTS. Reproduces HAProxy `option forwardfor`, `http-request set-header
//! X-Forwarded-Proto https`, `redirect scheme https unless { ssl_fc }`, the HSTS
//! `http-response set-header`, `http-response add-header X-Served-By %s`, and nginx
//! `X-Real-IP` / `$proxy_add_x_forwarded_for`.
//!
//! Trust: forwarding headers are believed only from a trusted peer. The client is the
//! right-most address of `X-Forwarded-For` + peer that is not a trusted proxy (after skipping
//! `trusted_hops` addresses). From an untrusted peer every client-supplied `X-Forwarded-*`,
//! `X-Real-IP` and `Forwarded` is discarded and written anew.

use crate::ascii::{ip_string, push_ip, push_u64};
use crate::config::{from_value, read_document, ConfigError};
use crate::duration::HumanDuration;
use crate::headers::HeaderMap;
use crate::nodes::Nodes;
use crate::plan::{Facts, LocalReply, Plan};
use crate::request_match::{path_without_query, RequestMatch};
use crate::routing::EndpointName;
use ipnet::IpNet;
use serde::Deserialize;
use serde_json::Value;
use std::net::{IpAddr, SocketAddr};
use std::rc::Rc;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum XffMode {
    Append,
    Replace,
    Leave,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ProtoMode {
    /// The downstream connection's scheme, or a trusted proxy's `X-Forwarded-Proto`.
    Auto,
    /// Always http (rare).
    Http,
    /// Always https: TLS ends before Envoy (the Overleaf guide's `set-header X-Forwarded-Proto https`).
    Https,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ForwardedConfig {
    #[serde(default)]
    trusted_proxies: Vec<String>,
    #[serde(default)]
    trusted_hops: usize,
    #[serde(default = "append")]
    xff: XffMode,
    #[serde(default = "yes")]
    real_ip: bool,
    #[serde(default = "auto")]
    proto: ProtoMode,
    #[serde(default = "yes")]
    forwarded_host: bool,
    #[serde(default = "yes")]
    forwarded_port: bool,
    #[serde(default)]
    forwarded: bool,
    #[serde(default)]
    https_redirect: Option<RedirectConfig>,
    #[serde(default)]
    hsts: Option<HstsConfig>,
    #[serde(default)]
    served_by: Option<ServedByConfig>,
}

fn append() -> XffMode {
    XffMode::Append
}
fn yes() -> bool {
    true
}
fn auto() -> ProtoMode {
    ProtoMode::Auto
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RedirectConfig {
    #[serde(default = "https_port")]
    port: u16,
    #[serde(default = "acme")]
    exempt_prefixes: Vec<String>,
}

fn https_port() -> u16 {
    443
}
fn acme() -> Vec<String> {
    vec!["/.well-known/acme-challenge/".to_string()]
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct HstsConfig {
    max_age: HumanDuration,
    #[serde(default)]
    include_subdomains: bool,
    #[serde(default)]
    preload: bool,
    #[serde(default)]
    override_upstream: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ServedByConfig {
    nodes: Option<Nodes>,
    endpoint_name: Option<EndpointName>,
    #[serde(default = "served_by_header")]
    header: String,
}

fn served_by_header() -> String {
    "x-served-by".to_string()
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Redirect {
    pub port: u16,
    exempt: Vec<RequestMatch>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hsts {
    pub value: Rc<str>,
    pub override_upstream: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServedBy {
    pub names: ServedNames,
    pub header: Rc<str>,
}

/// Where `X-Served-By` finds the name of the endpoint that served.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServedNames {
    /// The nodes table, by address; the names in table order, as the header's value takes them.
    Table { nodes: Nodes, names: Vec<Rc<str>> },
    /// The endpoint's EDS metadata (no nodes table: pods, meshes).
    Metadata(EndpointName),
}

/// The compiled forwarded configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ForwardedPolicy {
    trusted: Vec<IpNet>,
    trusted_hops: usize,
    pub xff: XffMode,
    pub real_ip: bool,
    pub proto: ProtoMode,
    pub forwarded_host: bool,
    pub forwarded_port: bool,
    pub forwarded: bool,
    pub redirect: Option<Redirect>,
    pub hsts: Option<Hsts>,
    pub served_by: Option<ServedBy>,
}

/// One year: HSTS preload lists demand at least this.
const PRELOAD_MIN_AGE: u64 = 31_536_000;

impl ForwardedPolicy {
    pub fn from_json(json: &[u8]) -> Result<Self, ConfigError> {
        Self::from_value(read_document(json)?)
    }

    /// The policy for a configuration already read as JSON.
    #[inline(never)] // out of each module's configure: Envoy's RSS (tether_glue::Filter)
    pub fn from_value(config: Value) -> Result<Self, ConfigError> {
        let c: ForwardedConfig = from_value(config)?;
        let mut trusted = Vec::with_capacity(c.trusted_proxies.len());
        for (i, t) in c.trusted_proxies.iter().enumerate() {
            let net = t.parse::<IpNet>().or_else(|_| t.parse::<IpAddr>().map(IpNet::from)).map_err(|_| {
                ConfigError::at(
                    format!("trusted_proxies[{i}]"),
                    format!("{t:?} is not an IP address or CIDR (e.g. \"10.0.0.0/8\", \"::1\")"),
                )
            })?;
            trusted.push(net.trunc());
        }
        let redirect = match c.https_redirect {
            None => None,
            Some(r) => {
                if r.port == 0 {
                    return Err(ConfigError::at("https_redirect.port", "must be a port number (1-65535)"));
                }
                let mut exempt = Vec::new();
                for (i, p) in r.exempt_prefixes.iter().enumerate() {
                    let at = format!("https_redirect.exempt_prefixes[{i}]");
                    exempt.push(RequestMatch::prefix(p, &at)?);
                }
                Some(Redirect { port: r.port, exempt })
            }
        };
        let hsts = match c.hsts {
            None => None,
            Some(h) => {
                let age = h.max_age.as_duration().as_secs();
                if h.preload && !(h.include_subdomains && age >= PRELOAD_MIN_AGE) {
                    return Err(ConfigError::at(
                        "hsts.preload",
                        "preload requires include_subdomains and a max_age of at least 1 year (365d), as the preload list does",
                    ));
                }
                let mut value = format!("max-age={age}");
                if h.include_subdomains {
                    value.push_str("; includeSubDomains");
                }
                if h.preload {
                    value.push_str("; preload");
                }
                Some(Hsts { value: Rc::from(value), override_upstream: h.override_upstream })
            }
        };
        let served_by = match c.served_by {
            None => None,
            Some(s) => {
                let ok = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-';
                if s.header.is_empty() || !s.header.chars().all(ok) {
                    return Err(ConfigError::at(
                        "served_by.header",
                        format!("{:?} is not a lower-case header name", s.header),
                    ));
                }
                let names = match (s.nodes, s.endpoint_name) {
                    (Some(nodes), None) => {
                        let names = nodes.iter().map(|n| Rc::from(n.name.as_str())).collect();
                        ServedNames::Table { nodes, names }
                    }
                    (None, Some(name)) => ServedNames::Metadata(name),
                    _ => {
                        return Err(ConfigError::at(
                            "served_by",
                            "name the endpoints either by a nodes table (\"nodes\") or by their EDS metadata (\"endpoint_name\"), one of the two",
                        ))
                    }
                };
                Some(ServedBy { names, header: Rc::from(s.header) })
            }
        };
        Ok(ForwardedPolicy {
            trusted,
            trusted_hops: c.trusted_hops,
            xff: c.xff,
            real_ip: c.real_ip,
            proto: c.proto,
            forwarded_host: c.forwarded_host,
            forwarded_port: c.forwarded_port,
            forwarded: c.forwarded,
            redirect,
            hsts,
            served_by,
        })
    }

    /// One line for the log when the configuration is accepted.
    pub fn summary(&self) -> String {
        format!(
            "{} trusted proxy range(s), {} trusted hop(s), xff {:?}, proto {:?}, redirect {}, hsts {}, served_by {}",
            self.trusted.len(),
            self.trusted_hops,
            self.xff,
            self.proto,
            self.redirect.as_ref().map_or("off".to_string(), |r| format!("to port {}", r.port)),
            self.hsts.as_ref().map_or("off", |h| &*h.value),
            self.served_by.as_ref().map_or("off", |s| &*s.header),
        )
    }

    fn is_trusted(&self, ip: &IpAddr) -> bool {
        let ip = canonical(*ip);
        self.trusted.iter().any(|n| n.contains(&ip))
    }

    /// Whether forwarding headers from this peer are believed.
    pub fn peer_trusted(&self, peer: &IpAddr) -> bool {
        self.trusted_hops > 0 || self.is_trusted(peer)
    }

    /// The client: walk `X-Forwarded-For` + peer from the right, skip `trusted_hops` entries,
    /// then every trusted proxy; the first other address is the client. An unparsable entry
    /// stops the walk (whoever wrote it is not trusted to have written the rest).
    pub fn client(&self, xff: &[IpAddr], peer: IpAddr) -> IpAddr {
        let chain: Vec<IpAddr> = xff.iter().copied().chain(std::iter::once(peer)).collect();
        let mut i = chain.len() - 1;
        let mut skipped = 0;
        while i > 0 {
            let here = chain.get(i).copied().unwrap_or(peer);
            let trusted_here = skipped < self.trusted_hops || self.is_trusted(&here);
            if !trusted_here {
                break;
            }
            skipped += 1;
            i -= 1;
        }
        chain.get(i).copied().map(canonical).unwrap_or(peer)
    }

    /// Whether a plain-http request for this path is redirected.
    pub fn redirects(&self, path: &[u8]) -> bool {
        self.redirect.as_ref().is_some_and(|r| {
            let p = path_without_query(path);
            !r.exempt.iter().any(|m| m.matches(b"", p))
        })
    }
}

impl ForwardedPolicy {
    /// The request's scheme for the backend: forced by `proto`, else a trusted proxy's
    /// `X-Forwarded-Proto` (its first value, if http or https), else the connection's.
    pub fn effective_proto(&self, trusted_forwarded_proto: Option<&[u8]>, tls: bool) -> &'static str {
        match self.proto {
            ProtoMode::Https => "https",
            ProtoMode::Http => "http",
            ProtoMode::Auto => {
                let first = trusted_forwarded_proto
                    .and_then(|v| v.split(|&b| b == b',').next())
                    .map(|v| v.trim_ascii().to_ascii_lowercase());
                match first.as_deref() {
                    Some(b"https") => "https",
                    Some(b"http") => "http",
                    _ if tls => "https",
                    _ => "http",
                }
            }
        }
    }

    /// The `X-Forwarded-For` to send on, `None` to leave the header as it came (`"leave"`).
    /// `chain` is the trusted peer's chain (empty for an untrusted peer).
    pub fn xff_value(&self, chain: &[IpAddr], peer: IpAddr, client: IpAddr) -> Option<String> {
        match self.xff {
            XffMode::Append => {
                let mut all = String::with_capacity(17 * (chain.len() + 1));
                for ip in chain.iter().chain(std::iter::once(&peer)) {
                    if !all.is_empty() {
                        all.push_str(", ");
                    }
                    push_ip(&mut all, *ip);
                }
                Some(all)
            }
            XffMode::Replace => Some(ip_string(client)),
            XffMode::Leave => None,
        }
    }
}

/// IPv4-mapped IPv6 (`::ffff:1.2.3.4`) is the IPv4 address.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
        v4 => v4,
    }
}

/// Parses `X-Forwarded-For` values (every line, comma-separated). `None` if any entry is not
/// an address (with or without port, IPv6 optionally bracketed): such a chain is not used.
pub fn parse_xff(lines: &[&[u8]]) -> Option<Vec<IpAddr>> {
    let mut out = Vec::new();
    for line in lines {
        let text = std::str::from_utf8(line).ok()?;
        for entry in text.split(',').map(str::trim).filter(|e| !e.is_empty()) {
            out.push(parse_addr(entry)?);
        }
    }
    Some(out)
}

fn parse_addr(entry: &str) -> Option<IpAddr> {
    if let Ok(ip) = entry.parse::<IpAddr>() {
        return Some(ip);
    }
    if let Ok(sa) = entry.parse::<SocketAddr>() {
        return Some(sa.ip());
    }
    entry.strip_prefix('[').and_then(|e| e.strip_suffix(']')).and_then(|e| e.parse().ok())
}

/// Appends an RFC 7239 node: IPv4 bare, IPv6 quoted and bracketed (`"[2001:db8::1]"`).
fn push_forwarded_node(out: &mut String, ip: IpAddr) {
    match ip {
        IpAddr::V4(_) => push_ip(out, ip),
        IpAddr::V6(_) => {
            out.push_str("\"[");
            push_ip(out, ip);
            out.push_str("]\"");
        }
    }
}

/// An RFC 7239 element: `for=...;proto=...;host=...` (host quoted when it has a port or other
/// characters outside a token).
pub fn forwarded_element(client: IpAddr, proto: &str, host: Option<&str>) -> String {
    let mut e = String::with_capacity(32 + host.map_or(0, str::len));
    e.push_str("for=");
    push_forwarded_node(&mut e, client);
    e.push_str(";proto=");
    e.push_str(proto);
    if let Some(h) = host {
        let token = h.bytes().all(|c| c.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&c));
        if token {
            e.push_str(";host=");
            e.push_str(h);
        } else {
            e.push_str(&format!(";host=\"{}\"", h.replace('\\', "\\\\").replace('"', "\\\"")));
        }
    }
    e
}

/// The https URL to redirect to: same host (its port replaced), path and query.
pub fn redirect_location(authority: &str, path: &str, port: u16) -> String {
    let host = strip_port(authority);
    if port == 443 {
        format!("https://{host}{path}")
    } else {
        format!("https://{host}:{port}{path}")
    }
}

fn strip_port(authority: &str) -> &str {
    if authority.starts_with('[') {
        return authority.split_inclusive(']').next().unwrap_or(authority);
    }
    authority.rsplit_once(':').filter(|(_, p)| p.bytes().all(|b| b.is_ascii_digit())).map_or(authority, |(h, _)| h)
}

/// 301 for GET and HEAD; 308 otherwise, so the method and body are kept.
pub fn redirect_status(method: &[u8]) -> u32 {
    if method == b"GET" || method == b"HEAD" {
        301
    } else {
        308
    }
}

/// Headers a client could forge; from an untrusted peer they never pass as sent, and count in
/// `forged_discarded`. Not `x-forwarded-proto`: Envoy (`use_remote_address: true`, required)
/// rewrites it from the connection before any filter runs, so it is always Envoy's own here;
/// counting it made every request look forged.
pub const FORWARDING_HEADERS: [&str; 5] =
    ["x-forwarded-for", "x-real-ip", "x-forwarded-host", "x-forwarded-port", "forwarded"];

/// What the request callback decided besides its plan.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RequestOutcome {
    /// The request's effective scheme is https: HSTS goes on its response.
    pub https: bool,
    /// An untrusted peer sent forwarding headers; they were discarded.
    pub forged: bool,
    /// Plain http, answered with a redirect to https.
    pub redirected: bool,
    /// The host gave no readable peer address: the peer was treated as untrusted, and no header
    /// names the client (a client's own forwarding headers are removed, never passed).
    pub no_peer: bool,
}

/// The peer as the host writes `source.address`: `ip:port`, or a bare IP (nginx).
pub fn parse_peer(raw: &[u8]) -> Option<IpAddr> {
    let text = std::str::from_utf8(raw).ok()?;
    text.parse::<SocketAddr>().map(|a| a.ip()).ok().or_else(|| text.parse::<IpAddr>().ok())
}

fn text(v: Option<&[u8]>) -> Option<&str> {
    v.and_then(|v| std::str::from_utf8(v).ok())
}

impl ForwardedPolicy {
    /// The request: who the client is and over which scheme it came, written for the backend;
    /// or, for plain http under `redirect`, the redirect.
    pub fn on_request(&self, headers: &HeaderMap, facts: &mut dyn Facts) -> (Plan, RequestOutcome) {
        let mut plan = Plan::default();
        let mut outcome = RequestOutcome::default();
        // Whatever the host says of the peer (nothing, a pipe, garbage), it is nobody's proxy:
        // an unreadable peer is untrusted, and its client's headers never pass.
        let peer = facts.source_address().as_deref().and_then(parse_peer);
        outcome.no_peer = peer.is_none();
        // The connection's TLS only matters when the proto is not forced (one host call saved).
        let tls = matches!(self.proto, ProtoMode::Auto) && facts.tls();
        let trusted = peer.is_some_and(|p| self.peer_trusted(&p));
        outcome.forged = !trusted && FORWARDING_HEADERS.iter().any(|h| headers.contains(h));
        let xff_lines: Vec<&[u8]> = if trusted { headers.all("x-forwarded-for").collect() } else { Vec::new() };
        // From a trusted peer its chain counts; an unreadable chain is nobody's word.
        let mut chain: Vec<IpAddr> = if trusted { parse_xff(&xff_lines).unwrap_or_default() } else { Vec::new() };
        // Envoy already appended the peer when the listener does not skip it (Istio's and
        // Envoy Gateway's default): the peer is named once, by us, not twice.
        if let (Some(last), Some(peer)) = (chain.last(), peer) {
            if canonical(*last) == canonical(peer) {
                chain.pop();
            }
        }
        let client = peer.map(|peer| self.client(&chain, peer));
        let trusted_proto = if trusted { headers.get("x-forwarded-proto") } else { None };
        let proto = self.effective_proto(trusted_proto, tls);
        outcome.https = proto == "https";
        let path = text(headers.get(":path")).unwrap_or("/");
        // The host the client asked for: Envoy folds `Host` into `:authority` (no `host` line
        // is left); nginx's ngx_wasm_module puts its own server name in `:authority` and keeps
        // the client's `Host`.
        let authority = text(headers.get("host").or_else(|| headers.get(":authority"))).unwrap_or_default();
        if !outcome.https && self.redirects(path.as_bytes()) {
            if let Some(r) = &self.redirect {
                let status = redirect_status(headers.get(":method").unwrap_or_default());
                let location = redirect_location(authority, path, r.port);
                plan.reply(LocalReply { status, headers: vec![("location", location)], body: Vec::new() });
                outcome.redirected = true;
                return (plan, outcome);
            }
        }
        // X-Forwarded-For (HAProxy "option forwardfor", nginx $proxy_add_x_forwarded_for).
        match (peer, client) {
            (Some(peer), Some(client)) => {
                if let Some(xff) = self.xff_value(&chain, peer, client) {
                    plan.set("x-forwarded-for", xff);
                }
            }
            // No client to name; the client's own list is not passed on in its place.
            _ if self.xff != XffMode::Leave && headers.contains("x-forwarded-for") => plan.remove("x-forwarded-for"),
            _ => {}
        }
        match client {
            Some(client) if self.real_ip => plan.set("x-real-ip", ip_string(client)),
            _ if !trusted && headers.contains("x-real-ip") => plan.remove("x-real-ip"),
            _ => {}
        }
        plan.set("x-forwarded-proto", proto);
        let keep = |name: &str| trusted && headers.contains(name);
        if self.forwarded_host {
            if !keep("x-forwarded-host") && !authority.is_empty() {
                plan.set("x-forwarded-host", authority.to_owned());
            }
        } else if !trusted && headers.contains("x-forwarded-host") {
            plan.remove("x-forwarded-host");
        }
        if self.forwarded_port {
            if !keep("x-forwarded-port") {
                if let Some(port) = facts.destination_port() {
                    let mut text = String::with_capacity(5);
                    push_u64(&mut text, port);
                    plan.set("x-forwarded-port", text);
                }
            }
        } else if !trusted && headers.contains("x-forwarded-port") {
            plan.remove("x-forwarded-port");
        }
        match peer {
            Some(peer) if self.forwarded => {
                let element = forwarded_element(peer, proto, (!authority.is_empty()).then_some(authority));
                let value = match text(headers.get("forwarded")).filter(|_| trusted) {
                    Some(existing) => format!("{existing}, {element}"),
                    None => element,
                };
                plan.set("forwarded", value);
            }
            _ if !trusted && headers.contains("forwarded") => plan.remove("forwarded"),
            _ => {}
        }
        (plan, outcome)
    }

    /// The response: HSTS (over https only) and `X-Served-By` for the endpoint that `served`.
    /// The second value is a served endpoint missing from `served_by`'s table, to report.
    pub fn on_response(&self, https: bool, headers: &HeaderMap, facts: &mut dyn Facts) -> (Plan, Option<SocketAddr>) {
        let mut plan = Plan::default();
        if let (true, Some(hsts)) = (https, &self.hsts) {
            // HSTS only over https: browsers ignore it over http, and it must not be claimed there.
            if hsts.override_upstream || !headers.contains("strict-transport-security") {
                plan.set("strict-transport-security", &hsts.value);
            }
        }
        let mut unknown = None;
        match self.served_by.as_ref().map(|s| (s, &s.names)) {
            Some((served_by, ServedNames::Table { nodes, names })) => {
                if let Some(address) = facts.served() {
                    match nodes.iter().position(|n| n.address == address).and_then(|i| names.get(i)) {
                        Some(name) => plan.add(&served_by.header, name),
                        None => unknown = Some(address),
                    }
                }
            }
            Some((served_by, ServedNames::Metadata(name))) => {
                // Absent on a local reply (no upstream), or on an endpoint without that key.
                let value = facts.endpoint_metadata(&name.filter, &name.key);
                if let Some(value) = value.filter(|v| v.iter().all(|&b| b == b'\t' || (0x20..0x7f).contains(&b))) {
                    plan.add(&served_by.header, value);
                }
            }
            None => {}
        }
        (plan, unknown)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn policy(json: &str) -> ForwardedPolicy {
        ForwardedPolicy::from_json(json.as_bytes()).unwrap()
    }

    #[test]
    fn client_is_the_rightmost_untrusted_address() {
        let p = policy(r#"{"trusted_proxies": ["10.0.0.0/8", "::1"]}"#);
        let cases: &[(&[&str], &str, &str)] = &[
            (&[], "203.0.113.7", "203.0.113.7"),
            (&["1.2.3.4"], "203.0.113.7", "203.0.113.7"), // untrusted peer: its claims are ignored
            (&["198.51.100.1"], "10.1.2.3", "198.51.100.1"),
            (&["1.2.3.4", "198.51.100.1", "10.9.9.9"], "10.1.2.3", "198.51.100.1"),
            (&["10.0.0.1", "10.0.0.2"], "10.1.2.3", "10.0.0.1"), // everyone trusted: the left-most
            (&["2001:db8::5"], "::1", "2001:db8::5"),
            (&["198.51.100.1"], "::ffff:10.1.2.3", "198.51.100.1"),
        ];
        for &(xff, peer, want) in cases {
            let xff: Vec<IpAddr> = xff.iter().map(|s| ip(s)).collect();
            assert_eq!(p.client(&xff, ip(peer)), ip(want), "{xff:?} via {peer}");
        }
        let hops = policy(r#"{"trusted_hops": 1}"#);
        assert_eq!(hops.client(&[ip("1.2.3.4"), ip("198.51.100.1")], ip("192.0.2.1")), ip("198.51.100.1"));
        assert_eq!(hops.client(&[], ip("192.0.2.1")), ip("192.0.2.1"));
        assert!(hops.peer_trusted(&ip("192.0.2.1")));
        assert!(!p.peer_trusted(&ip("192.0.2.1")) && p.peer_trusted(&ip("10.255.0.1")));
    }

    #[test]
    fn scheme_and_xff_values() {
        let auto = policy("{}");
        assert_eq!(auto.effective_proto(None, false), "http");
        assert_eq!(auto.effective_proto(None, true), "https");
        assert_eq!(auto.effective_proto(Some(b"HTTPS, http"), false), "https");
        assert_eq!(auto.effective_proto(Some(b"http"), true), "http");
        assert_eq!(auto.effective_proto(Some(b"gopher"), true), "https");
        assert_eq!(policy(r#"{"proto": "https"}"#).effective_proto(Some(b"http"), false), "https");
        let chain = [ip("198.51.100.7")];
        assert_eq!(
            auto.xff_value(&chain, ip("10.0.0.1"), ip("198.51.100.7")).as_deref(),
            Some("198.51.100.7, 10.0.0.1")
        );
        assert_eq!(auto.xff_value(&[], ip("::1"), ip("::1")).as_deref(), Some("::1"));
        let replace = policy(r#"{"xff": "replace"}"#);
        assert_eq!(replace.xff_value(&chain, ip("10.0.0.1"), ip("198.51.100.7")).as_deref(), Some("198.51.100.7"));
        assert_eq!(policy(r#"{"xff": "leave"}"#).xff_value(&chain, ip("10.0.0.1"), ip("198.51.100.7")), None);
    }

    #[test]
    fn xff_parsing() {
        assert_eq!(parse_xff(&[b"1.2.3.4, 2001:db8::1", b"[2001:db8::2]:443, 5.6.7.8:80"]).unwrap().len(), 4);
        assert_eq!(parse_xff(&[]), Some(vec![]));
        assert_eq!(parse_xff(&[b"1.2.3.4, unknown"]), None);
        assert_eq!(parse_xff(&[b"\xff"]), None);
        assert_eq!(parse_xff(&[b" , ,"]), Some(vec![]));
    }

    #[test]
    fn rfc7239_quoting() {
        assert_eq!(
            forwarded_element(ip("192.0.2.43"), "https", Some("example.com")),
            "for=192.0.2.43;proto=https;host=example.com"
        );
        assert_eq!(
            forwarded_element(ip("2001:db8:cafe::17"), "http", Some("example.com:8080")),
            "for=\"[2001:db8:cafe::17]\";proto=http;host=\"example.com:8080\""
        );
        assert_eq!(forwarded_element(ip("::1"), "http", None), "for=\"[::1]\";proto=http");
    }

    #[test]
    fn redirects() {
        let p = policy(r#"{"https_redirect": {}}"#);
        assert!(p.redirects(b"/project/1?x"));
        assert!(!p.redirects(b"/.well-known/acme-challenge/token"));
        assert_eq!(redirect_location("example.org:80", "/a?b=1", 443), "https://example.org/a?b=1");
        assert_eq!(redirect_location("example.org", "/", 8443), "https://example.org:8443/");
        assert_eq!(redirect_location("[::1]:8080", "/x", 8443), "https://[::1]:8443/x");
        assert_eq!(redirect_status(b"GET"), 301);
        assert_eq!(redirect_status(b"HEAD"), 301);
        assert_eq!(redirect_status(b"POST"), 308);
        assert!(!policy("{}").redirects(b"/"));
    }

    #[test]
    fn hsts_values_and_rules() {
        let p = policy(r#"{"hsts": {"max_age": "730d", "include_subdomains": true, "preload": true}}"#);
        assert_eq!(&*p.hsts.unwrap().value, "max-age=63072000; includeSubDomains; preload");
        let cases: &[(&str, &str)] = &[
            (r#"{"hsts": {"max_age": "730d", "preload": true}}"#, "hsts.preload: preload requires include_subdomains"),
            (r#"{"hsts": {"max_age": "30d", "include_subdomains": true, "preload": true}}"#, "hsts.preload"),
            (r#"{"hsts": {"max_age": 63072000}}"#, "hsts.max_age: invalid duration 63072000: a unit is required"),
            (
                r#"{"trusted_proxies": ["10.0.0.0/33"]}"#,
                "trusted_proxies[0]: \"10.0.0.0/33\" is not an IP address or CIDR",
            ),
            (r#"{"trusted_proxies": ["proxy.local"]}"#, "trusted_proxies[0]"),
            (r#"{"xff": "prepend"}"#, "xff: unknown variant `prepend`"),
            (r#"{"proto": "HTTPS"}"#, "proto: unknown variant `HTTPS`"),
            (r#"{"https_redirect": {"port": 0}}"#, "https_redirect.port: must be a port number"),
            (
                r#"{"https_redirect": {"exempt_prefixes": ["x"]}}"#,
                "https_redirect.exempt_prefixes[0]: \"x\" must start with \"/\"",
            ),
            (
                r#"{"served_by": {"nodes": [{"name": "a", "address": "10.0.0.1:80"}], "header": "X-Served-By"}}"#,
                "served_by.header",
            ),
            (r#"{"forward": true}"#, "unknown field `forward`"),
        ];
        for &(json, want) in cases {
            let err = ForwardedPolicy::from_json(json.as_bytes()).unwrap_err().to_string();
            assert!(err.contains(want), "{json}\n  got:  {err}\n  want: {want}");
        }
    }
}
