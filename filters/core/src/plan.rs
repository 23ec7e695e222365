//! What a policy decides for one callback, for the host adapter to apply: header edits, a
//! local reply, the routing target. Policies return plans; only the adapter talks to the host.

use crate::headers::{Edit, Name, NamedEdit, Value};
use std::net::SocketAddr;

/// A reply Envoy sends instead of forwarding the request (a redirect, a 413).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalReply {
    pub status: u32,
    pub headers: Vec<(&'static str, String)>,
    pub body: Vec<u8>,
}

/// The routing filter that decided where the request goes, and the endpoint it named.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Route {
    /// The filter's name, for `tether.routed_by`.
    pub by: &'static str,
    /// The endpoint, or `None` when Envoy chooses it from what the filter wrote (uri-hash
    /// without a nodes table: the route's hash policy).
    pub address: Option<SocketAddr>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    pub edits: Vec<NamedEdit>,
    pub reply: Option<LocalReply>,
    pub route: Option<Route>,
}

impl Plan {
    pub fn set(&mut self, name: impl Into<Name>, value: impl Into<Value>) {
        self.edits.push((name.into(), Edit::Set(value.into())));
    }

    pub fn add(&mut self, name: impl Into<Name>, value: impl Into<Value>) {
        self.edits.push((name.into(), Edit::Add(value.into())));
    }

    pub fn remove(&mut self, name: impl Into<Name>) {
        self.edits.push((name.into(), Edit::Remove));
    }

    pub fn reply(&mut self, reply: LocalReply) {
        self.reply = Some(reply);
    }
}

/// What a policy may ask of the host about the stream at hand. The adapter asks the host at
/// most once per stream for each, and only when a policy asks: a policy that needs no clock
/// costs no clock read.
pub trait Facts {
    /// The downstream peer (`source.address`), as the host writes it.
    fn source_address(&mut self) -> Option<Vec<u8>>;
    /// Whether the downstream connection is TLS.
    fn tls(&mut self) -> bool;
    /// The listener's port (`destination.port`).
    fn destination_port(&mut self) -> Option<u64>;
    /// Wall-clock Unix milliseconds.
    fn now_ms(&mut self) -> u64;
    /// `tether.routed_by`: a routing filter in an earlier VM decided (its name).
    fn routed_by(&mut self) -> Option<Vec<u8>>;
    /// Whether the host writes the session header back on a response whose endpoint its load
    /// balancer chose (Envoy's `stateful_session`); not nginx, where the node goes through a
    /// variable and `upstream.address` tells who served.
    fn echoes_session_header(&mut self) -> bool;
    /// The endpoint that served (response side), as the routing contract tells it
    /// ([`crate::routing::served_address`]).
    fn served(&mut self) -> Option<SocketAddr>;
    /// A value of the serving endpoint's metadata, `filter_metadata.<filter>.<key>` (response
    /// side; EDS `metadata` as a control plane sends it).
    fn endpoint_metadata(&mut self, filter: &str, key: &str) -> Option<Vec<u8>>;
    /// Shared data (one copy per VM id, seen by every worker): value and its CAS token.
    fn shared_data(&mut self, key: &str) -> (Option<Vec<u8>>, Option<u32>);
    /// Shared data as read at most one tick ago: one host call per tick per VM instead of one
    /// per request; this VM's own writes are seen at once, another worker's within a tick. For
    /// what every request reads and seldom changes (uri-hash's down list); a compare-and-swap
    /// reads [`Facts::shared_data`].
    fn recent_shared_data(&mut self, key: &str) -> Option<Vec<u8>>;
    /// Writes shared data if nobody changed it since `cas` was read; false on a lost race.
    fn set_shared_data(&mut self, key: &str, value: &[u8], cas: Option<u32>) -> bool;
}

/// Facts fixed in advance, for tests of policies.
#[derive(Debug, Clone, Default)]
pub struct FixedFacts {
    pub source_address: Option<Vec<u8>>,
    pub tls: bool,
    pub destination_port: Option<u64>,
    pub now_ms: u64,
    pub routed_by: Option<Vec<u8>>,
    /// The host is nginx: no session header is echoed.
    pub nginx: bool,
    pub served: Option<SocketAddr>,
    /// What every endpoint metadata key answers.
    pub endpoint_metadata: Option<Vec<u8>>,
    pub shared: Vec<(String, Vec<u8>, u32)>,
    /// Which facts were asked for, in order (a policy that needs no clock reads none).
    pub asked: Vec<&'static str>,
}

impl Facts for FixedFacts {
    fn source_address(&mut self) -> Option<Vec<u8>> {
        self.asked.push("source_address");
        self.source_address.clone()
    }
    fn tls(&mut self) -> bool {
        self.asked.push("tls");
        self.tls
    }
    fn destination_port(&mut self) -> Option<u64> {
        self.asked.push("destination_port");
        self.destination_port
    }
    fn now_ms(&mut self) -> u64 {
        self.asked.push("now");
        self.now_ms
    }
    fn routed_by(&mut self) -> Option<Vec<u8>> {
        self.asked.push("routed_by");
        self.routed_by.clone()
    }
    fn echoes_session_header(&mut self) -> bool {
        !self.nginx
    }
    fn served(&mut self) -> Option<SocketAddr> {
        self.asked.push("served");
        self.served
    }
    fn endpoint_metadata(&mut self, _filter: &str, _key: &str) -> Option<Vec<u8>> {
        self.asked.push("endpoint_metadata");
        self.endpoint_metadata.clone()
    }
    fn shared_data(&mut self, key: &str) -> (Option<Vec<u8>>, Option<u32>) {
        self.asked.push("shared_data");
        self.shared.iter().find(|(k, _, _)| k == key).map_or((None, None), |(_, v, c)| (Some(v.clone()), Some(*c)))
    }
    fn recent_shared_data(&mut self, key: &str) -> Option<Vec<u8>> {
        self.asked.push("recent_shared_data");
        self.shared.iter().find(|(k, _, _)| k == key).map(|(_, v, _)| v.clone())
    }
    fn set_shared_data(&mut self, key: &str, value: &[u8], cas: Option<u32>) -> bool {
        self.asked.push("set_shared_data");
        let current = self.shared.iter().find(|(k, _, _)| k == key).map(|(_, _, c)| *c);
        if cas.is_some() && cas != current {
            return false;
        }
        self.shared.retain(|(k, _, _)| k != key);
        self.shared.push((key.to_string(), value.to_vec(), current.map_or(1, |c| c.wrapping_add(1))));
        true
    }
}
