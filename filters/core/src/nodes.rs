//! The `nodes` table: the backend nodes a routing filter can name, `name` → `ip:port`.
//!
//! Every Tether filter accepts the same table, so one YAML anchor can feed all of them:
//!
//! ```json
//! "nodes": [
//!   {"name": "server-pro-ha-1", "address": "198.18.1.1:80"},
//!   {"name": "server-pro-ha-2", "address": "[2001:db8::2]:80", "weight": 2}
//! ]
//! ```
//!
//! Names go into cookies and headers, so they are limited to `A-Z a-z 0-9 . _ -` (1–64
//! characters). Addresses are literal `ip:port` (IPv6 in brackets), because they must match
//! what Envoy reports as `upstream.address`; names and addresses are unique.

use serde::de::{self, Deserializer};
use serde::Deserialize;
use std::net::SocketAddr;

/// Largest weight accepted; weights are relative, so this is plenty and keeps sums small.
pub const MAX_WEIGHT: u32 = 1000;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    pub name: String,
    pub address: SocketAddr,
    /// Relative share for weighted choices (uri-hash); other filters ignore it.
    pub weight: u32,
}

/// A validated, non-empty node table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Nodes {
    nodes: Vec<Node>,
}

impl Nodes {
    pub fn iter(&self) -> impl Iterator<Item = &Node> {
        self.nodes.iter()
    }

    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    pub fn by_name(&self, name: &str) -> Option<&Node> {
        self.nodes.iter().find(|n| n.name == name)
    }

    pub fn by_address(&self, address: &SocketAddr) -> Option<&Node> {
        self.nodes.iter().find(|n| n.address == *address)
    }

    /// Looks up Envoy's `upstream.address` property value (`ip:port` as bytes).
    /// Anything that is not an `ip:port` finds nothing.
    pub fn by_upstream_address(&self, raw: &[u8]) -> Option<&Node> {
        let text = std::str::from_utf8(raw).ok()?;
        self.by_address(&text.parse().ok()?)
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NodeSpec {
    name: NodeName,
    address: NodeAddress,
    #[serde(default = "default_weight")]
    weight: Weight,
}

fn default_weight() -> Weight {
    Weight(1)
}

struct NodeName(String);
struct NodeAddress(SocketAddr);
struct Weight(u32);

/// Checks a node name; used wherever config refers to a node by name.
pub fn check_node_name(name: &str) -> Result<(), String> {
    let ok_char = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-');
    if name.is_empty() || name.len() > 64 || !name.chars().all(ok_char) {
        return Err(format!("invalid node name {name:?}: use 1 to 64 characters from A-Z a-z 0-9 . _ -"));
    }
    Ok(())
}

impl<'de> Deserialize<'de> for NodeName {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let name = String::deserialize(d)?;
        check_node_name(&name).map_err(de::Error::custom)?;
        Ok(NodeName(name))
    }
}

impl<'de> Deserialize<'de> for NodeAddress {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        let addr: SocketAddr = text.parse().map_err(|_| {
            de::Error::custom(format!(
                "expected ip:port (IPv6 as [ip]:port), got {text:?}; host names are not allowed because the address must match what Envoy reports as upstream.address"
            ))
        })?;
        if addr.port() == 0 {
            return Err(de::Error::custom(format!("port 0 is not a usable port in {text:?}")));
        }
        if addr.ip().is_unspecified() {
            return Err(de::Error::custom(format!("{text:?} is the unspecified address, not a node")));
        }
        Ok(NodeAddress(addr))
    }
}

impl<'de> Deserialize<'de> for Weight {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let w = u64::deserialize(d)?;
        match u32::try_from(w) {
            Ok(w) if (1..=MAX_WEIGHT).contains(&w) => Ok(Weight(w)),
            _ => Err(de::Error::custom(format!("weight {w} is out of range 1..={MAX_WEIGHT}"))),
        }
    }
}

impl<'de> Deserialize<'de> for Nodes {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let specs = Vec::<NodeSpec>::deserialize(d)?;
        if specs.is_empty() {
            return Err(de::Error::custom("must list at least one node"));
        }
        let mut nodes: Vec<Node> = Vec::with_capacity(specs.len());
        for (i, spec) in specs.into_iter().enumerate() {
            if let Some(j) = nodes.iter().position(|n| n.name == spec.name.0) {
                return Err(de::Error::custom(format!(
                    "[{i}].name {:?} is already the name of [{j}]; names must be unique",
                    spec.name.0
                )));
            }
            if let Some(j) = nodes.iter().position(|n| n.address == spec.address.0) {
                return Err(de::Error::custom(format!(
                    "[{i}].address {} is already the address of [{j}]; addresses must be unique",
                    spec.address.0
                )));
            }
            nodes.push(Node { name: spec.name.0, address: spec.address.0, weight: spec.weight.0 });
        }
        Ok(Nodes { nodes })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::parse_config;
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Holder {
        nodes: Nodes,
    }

    fn parse(json: &str) -> Result<Nodes, String> {
        parse_config::<Holder>(json.as_bytes()).map(|h| h.nodes).map_err(|e| e.to_string())
    }

    #[test]
    fn parses_ipv4_ipv6_and_weights() {
        let nodes = parse(
            r#"{"nodes": [
                {"name": "a", "address": "127.0.0.1:8001"},
                {"name": "b-2.x_y", "address": "[::1]:8002", "weight": 3}
            ]}"#,
        )
        .unwrap();
        assert_eq!(nodes.len(), 2);
        let b = nodes.by_name("b-2.x_y").unwrap();
        assert_eq!(b.weight, 3);
        assert_eq!(nodes.by_upstream_address(b"[::1]:8002").unwrap().name, "b-2.x_y");
        assert_eq!(nodes.by_upstream_address(b"127.0.0.1:8001").unwrap().name, "a");
        assert_eq!(nodes.by_name("a").unwrap().weight, 1);
    }

    #[test]
    fn unknown_or_malformed_upstream_address_finds_nothing() {
        let nodes = parse(r#"{"nodes": [{"name": "a", "address": "127.0.0.1:8001"}]}"#).unwrap();
        for raw in [&b"127.0.0.1:8002"[..], b"", b"127.0.0.1", b"\xff\xfe", b"envoy://internal"] {
            assert!(nodes.by_upstream_address(raw).is_none(), "{raw:?}");
        }
    }

    #[test]
    fn refuses_bad_tables_naming_the_field() {
        let cases: &[(&str, &str)] = &[
            (r#"{"nodes": []}"#, "nodes: must list at least one node"),
            (r#"{"nodes": [{"name": "a", "address": "10.0.0.5"}]}"#, "nodes[0].address: expected ip:port"),
            (r#"{"nodes": [{"name": "a", "address": "db.local:80"}]}"#, "nodes[0].address: expected ip:port"),
            (r#"{"nodes": [{"name": "a", "address": "::1:80"}]}"#, "nodes[0].address: expected ip:port"),
            (r#"{"nodes": [{"name": "a", "address": "10.0.0.5:0"}]}"#, "nodes[0].address: port 0"),
            (r#"{"nodes": [{"name": "a", "address": "0.0.0.0:80"}]}"#, "unspecified address"),
            (r#"{"nodes": [{"name": "", "address": "10.0.0.5:80"}]}"#, "nodes[0].name: invalid node name"),
            (r#"{"nodes": [{"name": "a;b", "address": "10.0.0.5:80"}]}"#, "nodes[0].name: invalid node name"),
            (
                r#"{"nodes": [{"name": "a", "address": "10.0.0.5:80", "weight": 0}]}"#,
                "nodes[0].weight: weight 0 is out of range",
            ),
            (r#"{"nodes": [{"name": "a", "address": "10.0.0.5:80", "weight": 1001}]}"#, "out of range"),
            (r#"{"nodes": [{"name": "a", "address": "10.0.0.5:80", "port": 1}]}"#, "unknown field `port`"),
            (r#"{"nodes": [{"address": "10.0.0.5:80"}]}"#, "missing field `name`"),
            (
                r#"{"nodes": [{"name": "a", "address": "10.0.0.5:80"}, {"name": "a", "address": "10.0.0.6:80"}]}"#,
                "nodes: [1].name \"a\" is already the name of [0]",
            ),
            (
                r#"{"nodes": [{"name": "a", "address": "10.0.0.5:80"}, {"name": "b", "address": "10.0.0.5:80"}]}"#,
                "nodes: [1].address 10.0.0.5:80 is already the address of [0]",
            ),
        ];
        for &(json, expected) in cases {
            let err = parse(json).unwrap_err();
            assert!(err.contains(expected), "{json}\n  got: {err}\n  want: {expected}");
        }
    }

    #[test]
    fn name_rules() {
        assert!(check_node_name(&"x".repeat(64)).is_ok());
        assert!(check_node_name(&"x".repeat(65)).is_err());
        assert!(check_node_name("server-pro-ha-1").is_ok());
        assert!(check_node_name("é").is_err());
    }
}
