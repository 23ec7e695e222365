//! One stream as the filters of a VM see it: the facts asked of the host (each at most once per
//! stream), the callback's header map with the edits decided so far, and the writing back of a
//! callback's edits, one host call each.

use crate::host::{property, Host, HostKind, Map};
use std::net::{IpAddr, SocketAddr};
use tether_core::headers::{Edit, HeaderMap};
use tether_core::plan::{Facts, LocalReply, Plan};
use tether_core::routing::served_address;

/// What this VM learnt from, or told, the host about one stream.
#[derive(Debug, Default)]
pub struct Memo {
    source_address: Option<Option<Vec<u8>>>,
    tls: Option<bool>,
    destination_port: Option<Option<u64>>,
    now_ms: Option<u64>,
    routed_by: Option<Option<Vec<u8>>>,
    upstream_address: Option<Option<Vec<u8>>>,
    /// The endpoint a routing filter of this VM sent the request to.
    pub(crate) pinned: Option<SocketAddr>,
    /// The session header Envoy's `stateful_session` wrote into the response, as it came.
    pub(crate) echo: Option<Vec<u8>>,
    served: Option<Option<SocketAddr>>,
    /// The last endpoint metadata asked (its property path) and the answer: in tether-edge,
    /// affinity's endpoint name and forwarded's X-Served-By are one read.
    endpoint_metadata: Option<(Vec<u8>, Option<Vec<u8>>)>,
}

/// The facts of one stream, asked of `host` lazily and once.
pub struct StreamFacts<'a> {
    host: &'a dyn Host,
    memo: &'a mut Memo,
}

impl<'a> StreamFacts<'a> {
    pub fn new(host: &'a dyn Host, memo: &'a mut Memo) -> StreamFacts<'a> {
        StreamFacts { host, memo }
    }
}

fn once<T: Clone>(slot: &mut Option<T>, ask: impl FnOnce() -> T) -> T {
    slot.get_or_insert_with(ask).clone()
}

impl Facts for StreamFacts<'_> {
    /// From the session header Envoy wrote, else the endpoint this VM pinned (Envoy writes
    /// nothing when it served), else `upstream.address`. On nginx only `upstream.address`
    /// tells: nothing is echoed, and a node's `backup` servers may have served instead.
    fn served(&mut self) -> Option<SocketAddr> {
        if let Some(known) = self.memo.served {
            return known;
        }
        let (host, memo) = (self.host, &mut *self.memo);
        let pinned = memo.pinned.filter(|_| host.kind() == HostKind::Envoy);
        let upstream = &mut memo.upstream_address;
        let served = served_address(memo.echo.as_deref(), pinned, || once(upstream, || upstream_address(host)));
        memo.served = Some(served);
        served
    }

    fn endpoint_metadata(&mut self, filter: &str, key: &str) -> Option<Vec<u8>> {
        let path = property::endpoint_metadata(filter, key);
        if let Some((asked, answer)) = &self.memo.endpoint_metadata {
            if *asked == path {
                return answer.clone();
            }
        }
        let answer = self.host.property(&path).filter(|v| !v.is_empty());
        self.memo.endpoint_metadata = Some((path, answer.clone()));
        answer
    }

    fn source_address(&mut self) -> Option<Vec<u8>> {
        let host = self.host;
        once(&mut self.memo.source_address, || host.property(property::SOURCE_ADDRESS))
    }

    fn tls(&mut self) -> bool {
        let host = self.host;
        once(&mut self.memo.tls, || host.property(property::TLS_VERSION).is_some_and(|v| !v.is_empty()))
    }

    fn destination_port(&mut self) -> Option<u64> {
        let host = self.host;
        once(&mut self.memo.destination_port, || port(&host.property(property::DESTINATION_PORT)?))
    }

    fn now_ms(&mut self) -> u64 {
        let host = self.host;
        once(&mut self.memo.now_ms, || host.now_ms())
    }

    fn routed_by(&mut self) -> Option<Vec<u8>> {
        let host = self.host;
        once(&mut self.memo.routed_by, || host.property(routed_by_property(host.kind())))
    }

    fn echoes_session_header(&mut self) -> bool {
        self.host.kind() == HostKind::Envoy
    }

    fn shared_data(&mut self, key: &str) -> (Option<Vec<u8>>, Option<u32>) {
        self.host.shared_data(key)
    }

    fn recent_shared_data(&mut self, key: &str) -> Option<Vec<u8>> {
        let host = self.host;
        crate::vm::recent_shared_data(key, || host.shared_data(key).0)
    }

    fn set_shared_data(&mut self, key: &str, value: &[u8], cas: Option<u32>) -> bool {
        let written = self.host.set_shared_data(key, value, cas);
        if written {
            crate::vm::wrote_shared_data(key, value);
        }
        written
    }
}

// The nginx-only function here is `#[cold]` and out of line: Envoy never reaches it, and
// inlined it costs Envoy's request path 0.3k-0.4k Wasm instructions per filter (costs bin).
/// The first request header a plan replaces or removes that the client sent on more than one
/// line. On nginx only the first such line can be replaced or emptied; ngx_wasm_module marks the
/// others, and nginx's proxy module sends them as the client wrote them (a second forged
/// `X-Forwarded-For` would reach the backend). The adapter refuses such a request (400).
#[cold]
#[inline(never)]
pub fn unwritable_on_nginx(headers: &HeaderMap) -> Option<&str> {
    headers
        .edits()
        .iter()
        .find(|(name, edit)| !matches!(edit, Edit::Add(_)) && headers.original_count(name) > 1)
        .map(|(name, _)| &**name)
}

/// Where the routing filter that decided marks the request for routing filters in later VMs.
pub fn routed_by_property(kind: HostKind) -> &'static [u8] {
    match kind {
        HostKind::Envoy => property::ROUTED_BY,
        HostKind::Nginx => property::NGINX_ROUTED_BY,
    }
}

/// A port property: Envoy writes 8 bytes little-endian; another host may write the number as text.
fn port(raw: &[u8]) -> Option<u64> {
    match raw.get(..8).map(<[u8; 8]>::try_from) {
        Some(Ok(bytes)) if raw.len() == 8 => Some(u64::from_le_bytes(bytes)),
        _ => std::str::from_utf8(raw).ok()?.trim().parse().ok(),
    }
}

/// `upstream.address` as `ip:port`: Envoy writes it so; a host that writes the bare IP
/// (nginx's ngx_wasm_module) is asked `upstream.port` too (one more call, on that host only).
fn upstream_address(host: &dyn Host) -> Option<Vec<u8>> {
    let address = host.property(property::UPSTREAM_ADDRESS)?;
    // `1.2.3.4:80` and `[::1]:80` carry a port; `1.2.3.4` and `::1` do not (counted, not parsed:
    // this runs on every response whose endpoint the session header did not tell).
    let colons = address.iter().filter(|&&b| b == b':').count();
    let bare = colons == 0 || (colons >= 2 && address.first() != Some(&b'['));
    let Some(ip) = bare.then(|| std::str::from_utf8(&address).ok()?.parse::<IpAddr>().ok()).flatten() else {
        return Some(address);
    };
    let port = u16::try_from(port(&host.property(property::UPSTREAM_PORT)?)?).ok()?;
    Some(SocketAddr::new(ip, port).to_string().into_bytes())
}

/// One callback: the map it offers (with the edits decided so far), the stream's facts, and
/// what the plans applied so far decided beyond edits.
pub struct Callback<'a> {
    pub headers: &'a mut HeaderMap,
    pub facts: StreamFacts<'a>,
    pub reply: Option<LocalReply>,
    /// The routing filter that decided in this callback (for `tether.routed_by`).
    pub routed_by: Option<&'static str>,
}

impl<'a> Callback<'a> {
    pub fn new(headers: &'a mut HeaderMap, host: &'a dyn Host, memo: &'a mut Memo) -> Callback<'a> {
        Callback { headers, facts: StreamFacts::new(host, memo), reply: None, routed_by: None }
    }

    /// Takes a policy's plan: its edits go on the map (later policies see them), its reply and
    /// route are kept for the adapter.
    pub fn apply(&mut self, plan: Plan) {
        self.headers.apply(plan.edits);
        if let Some(reply) = plan.reply {
            self.reply = Some(reply);
        }
        if let Some(route) = plan.route {
            self.facts.memo.pinned = route.address;
            // Later routing filters of this VM see the decision without asking the host.
            self.facts.memo.routed_by = Some(Some(route.by.as_bytes().to_vec()));
            self.routed_by = Some(route.by);
        }
    }
}

/// Writes a callback's edits back to the host, one call per edit, in the order decided.
///
/// Not the whole map in one `proxy_set_header_map_pairs`, though that is fewer host calls:
/// Envoy applies it as removing every line and adding every line anew, which costs it more
/// than the calls it saves, and more the longer the map. Measured with `scripts/bench`
/// (tether-edge against the same module writing whole maps, interleaved, Envoy 1.40.0): +27.4
/// against +34.8 and +31.8 against +36.3 µs per request by median with the bench's 8 request
/// lines, +30.3 against +52.8 with a browser's 20 (`BENCH_BROWSER_HEADERS`). And on nginx
/// ngx_wasm_module clears old lines by marking them, which nginx's proxy module still sends.
pub fn write_edits(host: &dyn Host, map: Map, headers: &HeaderMap) {
    let edits = headers.edits();
    if edits.is_empty() {
        return;
    }
    // On nginx a request line ngx_wasm_module removes is only marked, and nginx's proxy module
    // still sends marked lines; a replaced line is changed in place. So there a removal is
    // written as an empty value: nginx/overleaf.conf re-sends each such header from its
    // `$http_<name>` variable, and nginx sends no header whose value is empty. (A name the client
    // sent on several lines cannot be written safely at all: [`unwritable_on_nginx`] refuses the
    // request before this.) The host's kind is asked on any first write (once per VM).
    let empty_for_removed = host.kind() == HostKind::Nginx && map == Map::Request;
    for (name, edit) in edits {
        match edit {
            Edit::Set(value) => host.set_header(map, name, Some(value)),
            Edit::Remove if empty_for_removed => host.set_header(map, name, Some(b"")),
            Edit::Remove => host.set_header(map, name, None),
            Edit::Add(value) => host.add_header(map, name, value),
        }
    }
}
