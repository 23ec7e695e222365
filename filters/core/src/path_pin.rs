//! path-pin: sends requests for some paths to one named node, whatever cookie or hash would
//! say (HAProxy `use-server server-pro-ha-1 if { path_beg /git/ }`).

use crate::config::{from_value, read_document, ConfigError};
use crate::headers::HeaderMap;
use crate::nodes::{check_node_name, Nodes};
use crate::plan::{Facts, Plan};
use crate::request_match::{check_reachable, path_without_query, RequestMatch};
use crate::routing::{self, session_value, Claim, SessionHeader};
use serde::Deserialize;
use serde_json::Value;
use std::net::SocketAddr;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PathPinConfig {
    #[serde(default)]
    session_header: SessionHeader,
    nodes: Nodes,
    rules: Vec<RuleConfig>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleConfig {
    name: Option<String>,
    path_prefix: Option<String>,
    path_exact: Option<String>,
    methods: Option<Vec<String>>,
    node: String,
}

/// One compiled rule: which requests, which node, and the precomputed header value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PinRule {
    /// Names the rule's metric (`tether_path_pin.pinned.<name>`); default `rule<i>`.
    pub name: String,
    pub node: String,
    pub address: SocketAddr,
    pub session_value: std::rc::Rc<str>,
    matcher: RequestMatch,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathPinPolicy {
    session_header: SessionHeader,
    nodes: Nodes,
    rules: Vec<PinRule>,
    needs_method: bool,
}

impl PathPinPolicy {
    pub fn from_json(json: &[u8]) -> Result<Self, ConfigError> {
        Self::from_value(read_document(json)?)
    }

    /// The policy for a configuration already read as JSON.
    #[inline(never)] // out of each module's configure: Envoy's RSS (tether_glue::Filter)
    pub fn from_value(config: Value) -> Result<Self, ConfigError> {
        let config: PathPinConfig = from_value(config)?;
        if config.rules.is_empty() {
            return Err(ConfigError::at("rules", "must list at least one rule"));
        }
        let mut rules: Vec<PinRule> = Vec::with_capacity(config.rules.len());
        for (i, rc) in config.rules.into_iter().enumerate() {
            let at = format!("rules[{i}]");
            let matcher = RequestMatch::from_config(
                rc.path_prefix.as_deref(),
                rc.path_exact.as_deref(),
                rc.methods.as_deref(),
                &at,
                true,
            )?;
            if !matcher.looks_at_path() {
                return Err(ConfigError::at(at, "a rule needs path_prefix or path_exact"));
            }
            let Some(node) = config.nodes.by_name(&rc.node) else {
                let known: Vec<&str> = config.nodes.iter().map(|n| n.name.as_str()).collect();
                return Err(ConfigError::at(
                    format!("{at}.node"),
                    format!("unknown node {:?}; the nodes table has: {}", rc.node, known.join(", ")),
                ));
            };
            let name = rc.name.unwrap_or_else(|| format!("rule{i}"));
            check_node_name(&name)
                .map_err(|e| ConfigError::at(format!("{at}.name"), e.replace("node name", "rule name")))?;
            if let Some(j) = rules.iter().position(|r| r.name == name) {
                return Err(ConfigError::at(
                    format!("{at}.name"),
                    format!("{name:?} is already the name of rules[{j}]"),
                ));
            }
            rules.push(PinRule {
                name,
                node: node.name.clone(),
                address: node.address,
                session_value: session_value(&node.address),
                matcher,
            });
        }
        check_reachable(rules.iter().map(|r| &r.matcher), |i| format!("rules[{i}]"))?;
        Ok(PathPinPolicy {
            session_header: config.session_header,
            nodes: config.nodes,
            needs_method: rules.iter().any(|r| r.matcher.looks_at_method()),
            rules,
        })
    }

    pub fn session_header(&self) -> &SessionHeader {
        &self.session_header
    }

    pub fn nodes(&self) -> &Nodes {
        &self.nodes
    }

    pub fn rules(&self) -> &[PinRule] {
        &self.rules
    }

    /// Whether [`Self::pin_for`] needs `:method`.
    pub fn needs_method(&self) -> bool {
        self.needs_method
    }

    /// The first rule matching the request, with its index.
    pub fn pin_for(&self, method: &[u8], path: &[u8]) -> Option<(usize, &PinRule)> {
        let path = path_without_query(path);
        self.rules.iter().enumerate().find(|(_, r)| r.matcher.matches(method, path))
    }

    /// One line for the log when the configuration is accepted.
    pub fn summary(&self) -> String {
        let rules: Vec<String> = self.rules.iter().map(|r| format!("{} -> {}", r.name, r.node)).collect();
        format!(
            "{} rule(s) [{}], {} node(s), session header {}",
            self.rules.len(),
            rules.join(", "),
            self.nodes.len(),
            self.session_header.name()
        )
    }
}

/// Routing name of this filter (`tether.routed_by`).
pub const ROUTED_BY: &str = "path-pin";

/// What the request side decided and the response side needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PathPinRequest {
    pub claim: Claim,
    /// The index of the rule that pinned the request.
    pub pinned_rule: Option<usize>,
}

impl PathPinPolicy {
    /// The request: the first matching rule pins it to its node.
    pub fn on_request(&self, headers: &HeaderMap, facts: &mut dyn Facts) -> (Plan, PathPinRequest) {
        let mut plan = Plan::default();
        let claim = routing::claim(headers, &self.session_header, facts, &mut plan);
        let mut request = PathPinRequest { claim, pinned_rule: None };
        if claim == Claim::DecidedEarlier {
            return (plan, request); // the session header belongs to the filter that decided
        }
        let method = if self.needs_method { headers.get(":method").unwrap_or_default() } else { b"" };
        if let Some((index, rule)) = self.pin_for(method, headers.get(":path").unwrap_or_default()) {
            routing::route(&mut plan, &self.session_header, ROUTED_BY, rule.address, &rule.session_value);
            request.pinned_rule = Some(index);
        }
        (plan, request)
    }

    /// The response: whether the pinned node did not serve (it was unavailable), with the rule
    /// and the name of the node that did (`None`: an endpoint outside the nodes table).
    pub fn on_response(
        &self,
        request: &PathPinRequest,
        headers: &HeaderMap,
        facts: &mut dyn Facts,
    ) -> (Plan, Option<(&PinRule, Option<&str>)>) {
        let mut plan = Plan::default();
        routing::remove_echo(&mut plan, headers, &self.session_header, request.claim);
        let Some(rule) = request.pinned_rule.and_then(|i| self.rules.get(i)) else { return (plan, None) };
        match facts.served() {
            Some(other) if other != rule.address => {
                let name = self.nodes.by_address(&other).map(|n| n.name.as_str());
                (plan, Some((rule, name)))
            }
            _ => (plan, None),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    const NODES: &str = r#""nodes": [
        {"name": "server-pro-ha-1", "address": "198.18.1.1:80"},
        {"name": "server-pro-ha-2", "address": "198.18.1.2:80"}
    ]"#;

    fn policy(rules: &str) -> Result<PathPinPolicy, String> {
        PathPinPolicy::from_json(format!(r#"{{{NODES}, "rules": {rules}}}"#).as_bytes()).map_err(|e| e.to_string())
    }

    #[test]
    fn first_matching_rule_pins_to_its_node() {
        let p = policy(
            r#"[
            {"name": "git", "path_prefix": "/git/", "node": "server-pro-ha-1"},
            {"path_exact": "/admin", "methods": ["POST"], "node": "server-pro-ha-2"}
        ]"#,
        )
        .unwrap();
        let (i, rule) = p.pin_for(b"GET", b"/git/repo.git/info/refs?service=git-upload-pack").unwrap();
        assert_eq!((i, rule.name.as_str(), rule.node.as_str()), (0, "git", "server-pro-ha-1"));
        assert_eq!(rule.session_value, session_value(&"198.18.1.1:80".parse().unwrap()));
        assert_eq!(p.pin_for(b"POST", b"/admin").map(|(i, r)| (i, r.name.as_str())), Some((1, "rule1")));
        assert!(p.pin_for(b"GET", b"/admin").is_none());
        assert!(p.pin_for(b"GET", b"/gitx").is_none());
        assert!(p.pin_for(b"GET", b"/project/1").is_none());
        assert!(p.needs_method());
        assert_eq!(p.session_header().name(), "x-tether-session");
    }

    #[test]
    fn bad_configs_name_the_field() {
        let cases: &[(&str, &str)] = &[
            ("[]", "rules: must list at least one rule"),
            (
                r#"[{"path_prefix": "/git/", "node": "nope"}]"#,
                "rules[0].node: unknown node \"nope\"; the nodes table has: server-pro-ha-1, server-pro-ha-2",
            ),
            (r#"[{"path_prefix": "", "node": "server-pro-ha-1"}]"#, "rules[0].path_prefix: \"\" must start with \"/\""),
            (
                r#"[{"methods": ["GET"], "node": "server-pro-ha-1"}]"#,
                "rules[0]: a rule needs path_prefix or path_exact",
            ),
            (r#"[{"node": "server-pro-ha-1"}]"#, "rules[0]: a rule needs path_prefix, path_exact or methods"),
            (
                r#"[{"path_prefix": "/git/", "node": "server-pro-ha-1"}, {"path_prefix": "/git/", "node": "server-pro-ha-2"}]"#,
                "rules[1]: can never match: every request it matches is matched first by rules[0]",
            ),
            (
                r#"[{"name": "a", "path_prefix": "/x", "node": "server-pro-ha-1"}, {"name": "a", "path_prefix": "/y", "node": "server-pro-ha-1"}]"#,
                "rules[1].name: \"a\" is already the name of rules[0]",
            ),
            (
                r#"[{"name": "a b", "path_prefix": "/x", "node": "server-pro-ha-1"}]"#,
                "rules[0].name: invalid rule name",
            ),
            (
                r#"[{"path_prefix": "/x", "node": "server-pro-ha-1", "server": "x"}]"#,
                "rules[0].server: unknown field `server`",
            ),
        ];
        for &(rules, want) in cases {
            let err = policy(rules).unwrap_err();
            assert!(err.contains(want), "{rules}\n  got:  {err}\n  want: {want}");
        }
        let err = PathPinPolicy::from_json(br#"{"rules": []}"#).unwrap_err().to_string();
        assert!(err.contains("missing field `nodes`"), "{err}");
        let err =
            PathPinPolicy::from_json(format!(r#"{{{NODES}, "session_header": "Cookie", "rules": []}}"#).as_bytes())
                .unwrap_err()
                .to_string();
        assert!(err.starts_with("session_header: invalid header name"), "{err}");
    }
}
