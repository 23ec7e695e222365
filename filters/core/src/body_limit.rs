//! Request body limits: HAProxy's 50 MB POST payload limit, nginx `client_max_body_size`.
//!
//! Two checks, both O(1) memory per request:
//! 1. A declared `Content-Length` above the limit is refused from the request headers, before
//!    Envoy opens an upstream connection.
//! 2. Bytes are counted as they stream (chunked HTTP/1.1, HTTP/2 without a length, or a length
//!    that lies); the chunk that would cross the limit is refused and never forwarded.

use crate::config::{from_value, read_document, ConfigError};
use crate::headers::HeaderMap;
use crate::plan::{LocalReply, Plan};
use crate::request_match::{check_reachable, path_without_query, RequestMatch};
use crate::size::ByteSize;
use serde::de::{self, Deserializer};
use serde::Deserialize;
use serde_json::Value;
use std::fmt;

/// nginx's `client_max_body_size` default, so an empty config behaves like nginx.
pub const DEFAULT_LIMIT: Limit = Limit::Bytes(1 << 20);

/// The limit for one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit {
    Unlimited,
    Bytes(u64),
}

impl<'de> Deserialize<'de> for Limit {
    /// `0`, `"0"`, `"none"` or `"unlimited"` mean no limit (nginx: `client_max_body_size 0`);
    /// anything else is a [`ByteSize`].
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        const EXPECTED: &str = "expected a size (bytes or a string such as \"50M\"), 0, \"none\" or \"unlimited\"";
        let size = match serde_json::Value::deserialize(d)? {
            serde_json::Value::String(w) if w == "none" || w == "unlimited" => return Ok(Limit::Unlimited),
            serde_json::Value::String(w) => ByteSize::parse(&w).map_err(de::Error::custom)?,
            serde_json::Value::Number(n) => match n.as_u64() {
                Some(n) => ByteSize(n),
                None => return Err(de::Error::custom(format!("invalid size {n}: {EXPECTED}"))),
            },
            other => return Err(de::Error::custom(format!("invalid size {other}: {EXPECTED}"))),
        };
        Ok(match size.bytes() {
            0 => Limit::Unlimited,
            n => Limit::Bytes(n),
        })
    }
}

impl fmt::Display for Limit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Limit::Unlimited => f.write_str("unlimited"),
            Limit::Bytes(n) => write!(f, "{}", ByteSize(*n)),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BodyLimitConfig {
    #[serde(default = "default_limit")]
    default_limit: Limit,
    #[serde(default)]
    rules: Vec<RuleConfig>,
}

fn default_limit() -> Limit {
    DEFAULT_LIMIT
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleConfig {
    path_prefix: Option<String>,
    path_exact: Option<String>,
    methods: Option<Vec<String>>,
    limit: Limit,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Rule {
    matcher: RequestMatch,
    limit: Limit,
}

/// The compiled body-limit configuration, shared by every request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BodyLimitPolicy {
    default_limit: Limit,
    rules: Vec<Rule>,
    needs_path: bool,
    needs_method: bool,
}

impl BodyLimitPolicy {
    /// Parses and validates the filter's configuration.
    pub fn from_json(json: &[u8]) -> Result<Self, ConfigError> {
        Self::from_value(read_document(json)?)
    }

    /// The policy for a configuration already read as JSON.
    #[inline(never)] // out of each module's configure: Envoy's RSS (tether_glue::Filter)
    pub fn from_value(config: Value) -> Result<Self, ConfigError> {
        let config: BodyLimitConfig = from_value(config)?;
        let mut rules: Vec<Rule> = Vec::with_capacity(config.rules.len());
        for (i, rc) in config.rules.into_iter().enumerate() {
            let matcher = RequestMatch::from_config(
                rc.path_prefix.as_deref(),
                rc.path_exact.as_deref(),
                rc.methods.as_deref(),
                &format!("rules[{i}]"),
                true,
            )?;
            rules.push(Rule { matcher, limit: rc.limit });
        }
        check_reachable(rules.iter().map(|r| &r.matcher), |i| format!("rules[{i}]"))?;
        Ok(BodyLimitPolicy {
            default_limit: config.default_limit,
            needs_path: rules.iter().any(|r| r.matcher.looks_at_path()),
            needs_method: rules.iter().any(|r| r.matcher.looks_at_method()),
            rules,
        })
    }

    /// One line for the log when the configuration is accepted.
    pub fn summary(&self) -> String {
        format!("default limit {}, {} rule(s)", self.default_limit, self.rules.len())
    }

    /// Whether [`Self::limit_for`] looks at the path; if not, the filter need not read `:path`.
    pub fn needs_path(&self) -> bool {
        self.needs_path
    }

    /// Whether [`Self::limit_for`] looks at the method; if not, the filter need not read `:method`.
    pub fn needs_method(&self) -> bool {
        self.needs_method
    }

    /// The limit for a request: the first matching rule's, else the default. `path` is the raw
    /// `:path`; its query string is ignored. Matching is on bytes, so a path that is not UTF-8
    /// is still matched (Envoy's `normalize_path` should run first; see the README).
    pub fn limit_for(&self, method: &[u8], path: &[u8]) -> Limit {
        let path = path_without_query(path);
        self.rules.iter().find(|r| r.matcher.matches(method, path)).map_or(self.default_limit, |r| r.limit)
    }
}

/// What the request headers say about the body's length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeclaredLength {
    Absent,
    /// Present but not a plain decimal number (Envoy's codecs reject most of these first).
    Invalid,
    /// A decimal number; saturates at `u64::MAX`, which is over any limit anyway.
    Bytes(u64),
}

/// Reads a `Content-Length` value: ASCII digits only, no sign, no spaces, no lists.
pub fn parse_content_length(value: Option<&[u8]>) -> DeclaredLength {
    let Some(value) = value else {
        return DeclaredLength::Absent;
    };
    if value.is_empty() || !value.iter().all(u8::is_ascii_digit) {
        return DeclaredLength::Invalid;
    }
    let n = value.iter().fold(0u64, |n, &d| n.saturating_mul(10).saturating_add(u64::from(d - b'0')));
    DeclaredLength::Bytes(n)
}

/// Why a request was refused; each reason is a metric.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// `Content-Length` above the limit, refused from the headers.
    DeclaredTooLarge,
    /// The streamed body crossed the limit.
    StreamedTooLarge,
}

/// What to do once the request headers are known.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeadersVerdict {
    /// No limit applies: nothing to count.
    Pass,
    /// Refuse now with a 413.
    Reject { limit: u64 },
    /// Forward, counting body bytes against the limit.
    Count(BodyCounter),
}

/// Decides from the headers alone. A valid `Content-Length` within the limit is still counted:
/// the count costs nothing and catches an HTTP/2 peer whose DATA frames exceed what it declared.
pub fn check_headers(limit: Limit, declared: DeclaredLength) -> HeadersVerdict {
    match (limit, declared) {
        (Limit::Unlimited, _) => HeadersVerdict::Pass,
        (Limit::Bytes(limit), DeclaredLength::Bytes(n)) if n > limit => HeadersVerdict::Reject { limit },
        (Limit::Bytes(limit), _) => HeadersVerdict::Count(BodyCounter { limit, seen: 0 }),
    }
}

/// Counts streamed body bytes against a limit; O(1) memory, never buffers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BodyCounter {
    limit: u64,
    seen: u64,
}

impl BodyCounter {
    /// Adds a chunk. Returns false when this chunk would take the body past the limit, in
    /// which case the chunk must not be forwarded. Exactly the limit is allowed.
    pub fn admit(&mut self, chunk_len: usize) -> bool {
        let seen = self.seen.saturating_add(u64::try_from(chunk_len).unwrap_or(u64::MAX));
        if seen > self.limit {
            return false;
        }
        self.seen = seen;
        true
    }

    pub fn limit(&self) -> u64 {
        self.limit
    }

    pub fn seen(&self) -> u64 {
        self.seen
    }
}

/// The 413 reply: status, headers, and a short JSON body that names the limit.
pub struct Rejection {
    pub status: u32,
    pub headers: [(&'static str, &'static str); 2],
    pub body: String,
}

pub fn rejection(limit: u64) -> Rejection {
    Rejection {
        status: 413,
        headers: [("content-type", "application/json"), ("cache-control", "no-store")],
        body: format!(
            "{{\"error\":\"payload_too_large\",\"message\":\"request body exceeds the limit of {}\",\"limit_bytes\":{limit}}}\n",
            ByteSize(limit)
        ),
    }
}

/// What the body limit knows of one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct BodyLimitRequest {
    /// Counting streamed bytes against the limit.
    pub counter: Option<BodyCounter>,
    /// Refused: why, and the limit.
    pub rejected: Option<(Reason, u64)>,
    /// `Content-Length` was present but not a number.
    pub invalid_length: bool,
}

impl Rejection {
    fn reply(self) -> LocalReply {
        LocalReply {
            status: self.status,
            headers: self.headers.iter().map(|(k, v)| (*k, (*v).to_string())).collect(),
            body: self.body.into_bytes(),
        }
    }
}

impl BodyLimitPolicy {
    /// The request headers: a declared length over the limit is refused now; otherwise bytes
    /// are counted as they stream.
    pub fn on_request(&self, headers: &HeaderMap, end_of_stream: bool) -> (Plan, BodyLimitRequest) {
        let mut plan = Plan::default();
        let mut request = BodyLimitRequest::default();
        if end_of_stream {
            return (plan, request); // no body follows
        }
        let method = if self.needs_method() { headers.get(":method").unwrap_or_default() } else { b"" };
        let path = if self.needs_path() { headers.get(":path").unwrap_or_default() } else { b"" };
        let limit = self.limit_for(method, path);
        let declared = match limit {
            Limit::Unlimited => DeclaredLength::Absent,
            Limit::Bytes(_) => parse_content_length(headers.get("content-length")),
        };
        request.invalid_length = declared == DeclaredLength::Invalid;
        match check_headers(limit, declared) {
            HeadersVerdict::Pass => {}
            HeadersVerdict::Reject { limit } => {
                plan.reply(rejection(limit).reply());
                request.rejected = Some((Reason::DeclaredTooLarge, limit));
            }
            HeadersVerdict::Count(counter) => request.counter = Some(counter),
        }
        (plan, request)
    }

    /// A chunk of `chunk_len` body bytes: the chunk that would cross the limit is refused (the
    /// plan's reply; the adapter keeps it from the upstream).
    pub fn on_body(&self, request: &mut BodyLimitRequest, chunk_len: usize) -> Plan {
        let mut plan = Plan::default();
        if request.rejected.is_some() {
            return plan;
        }
        if let Some(counter) = request.counter.as_mut() {
            if !counter.admit(chunk_len) {
                plan.reply(rejection(counter.limit()).reply());
                request.rejected = Some((Reason::StreamedTooLarge, counter.limit()));
            }
        }
        plan
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    fn policy(json: &str) -> BodyLimitPolicy {
        BodyLimitPolicy::from_json(json.as_bytes()).unwrap()
    }

    #[test]
    fn empty_config_is_nginx_default_of_one_mebibyte() {
        let p = policy("");
        assert_eq!(p.limit_for(b"POST", b"/"), Limit::Bytes(1 << 20));
        assert!(!p.needs_path() && !p.needs_method());
    }

    #[test]
    fn first_matching_rule_wins() {
        let p = policy(
            r#"{
              "default_limit": "50M",
              "rules": [
                {"path_prefix": "/upload/", "methods": ["POST", "PUT"], "limit": "200M"},
                {"path_prefix": "/upload/", "limit": "1K"},
                {"path_prefix": "/stream/", "limit": 0},
                {"methods": ["PATCH"], "limit": "none"},
                {"path_prefix": "/small", "limit": 10},
                {"path_exact": "/exact", "limit": 20}
              ]
            }"#,
        );
        let cases: &[(&str, &str, Limit)] = &[
            ("POST", "/upload/x", Limit::Bytes(200 << 20)),
            ("PUT", "/upload/x?y=1", Limit::Bytes(200 << 20)),
            ("GET", "/upload/x", Limit::Bytes(1024)),
            ("POST", "/uploadx", Limit::Bytes(50 << 20)),
            ("POST", "/stream/live", Limit::Unlimited),
            ("PATCH", "/anything", Limit::Unlimited),
            ("POST", "/small-thing", Limit::Bytes(10)),
            ("POST", "/x?/small", Limit::Bytes(50 << 20)),
            ("post", "/upload/x", Limit::Bytes(1024)),
            ("POST", "", Limit::Bytes(50 << 20)),
            ("POST", "/exact?x", Limit::Bytes(20)),
            ("POST", "/exact/", Limit::Bytes(50 << 20)),
        ];
        for &(method, path, want) in cases {
            assert_eq!(p.limit_for(method.as_bytes(), path.as_bytes()), want, "{method} {path}");
        }
        assert!(p.needs_path() && p.needs_method());
    }

    #[test]
    fn limit_forms() {
        for (json, want) in [
            (r#""unlimited""#, Limit::Unlimited),
            (r#""none""#, Limit::Unlimited),
            ("0", Limit::Unlimited),
            (r#""0""#, Limit::Unlimited),
            (r#""32M""#, Limit::Bytes(32 << 20)),
            ("52428800", Limit::Bytes(52_428_800)),
        ] {
            let p = policy(&format!(r#"{{"default_limit": {json}}}"#));
            assert_eq!(p.limit_for(b"POST", b"/"), want, "{json}");
        }
    }

    #[test]
    fn bad_configs_name_the_field() {
        let cases: &[(&str, &str)] = &[
            (r#"{"default_limit": "50XB"}"#, "default_limit: invalid size \"50XB\": unknown unit \"XB\""),
            (r#"{"default_limit": -5}"#, "default_limit: invalid size -5: expected a size"),
            (r#"{"default_limit": true}"#, "default_limit: invalid size true: expected a size"),
            (r#"{"limit": "1M"}"#, "unknown field `limit`"),
            (r#"{"rules": [{"path_prefix": "/a", "limit": "1M", "x": 1}]}"#, "rules[0].x: unknown field `x`"),
            (r#"{"rules": [{"path_prefix": "/a"}]}"#, "rules[0]: missing field `limit`"),
            (r#"{"rules": [{"path_prefix": "a/", "limit": 1}]}"#, "rules[0].path_prefix: \"a/\" must start with \"/\""),
            (
                r#"{"rules": [{"path_prefix": "/a?b", "limit": 1}]}"#,
                "rules[0].path_prefix: \"/a?b\" must be a plain path",
            ),
            (r#"{"rules": [{"limit": 1}]}"#, "rules[0]: a rule needs path_prefix, path_exact or methods"),
            (r#"{"rules": [{"methods": [], "limit": 1}]}"#, "rules[0].methods: must not be empty"),
            (r#"{"rules": [{"methods": ["post"], "limit": 1}]}"#, "rules[0].methods[0]: \"post\" is not a method"),
            (
                r#"{"rules": [{"methods": ["POST", "POST"], "limit": 1}]}"#,
                "rules[0].methods[1]: \"POST\" is listed twice",
            ),
            (
                r#"{"rules": [{"path_prefix": "/a", "limit": 1}, {"path_prefix": "/a", "limit": 2}]}"#,
                "rules[1]: can never match: every request it matches is matched first by rules[0]",
            ),
            (
                r#"{"rules": [{"path_prefix": "/a", "limit": 1}, {"path_prefix": "/a/b", "methods": ["POST"], "limit": 2}]}"#,
                "rules[1]: can never match",
            ),
            (
                r#"{"rules": [{"methods": ["POST", "PUT"], "limit": 1}, {"path_prefix": "/a", "methods": ["PUT"], "limit": 2}]}"#,
                "rules[1]: can never match",
            ),
            (r#"{"default_limit": "1M"} trailing"#, "trailing characters"),
        ];
        for &(json, expected) in cases {
            let err = BodyLimitPolicy::from_json(json.as_bytes()).unwrap_err().to_string();
            assert!(err.contains(expected), "{json}\n  got: {err}\n  want: {expected}");
        }
    }

    #[test]
    fn narrower_rules_after_broader_ones_of_other_methods_are_fine() {
        policy(
            r#"{"rules": [{"path_prefix": "/a", "methods": ["GET"], "limit": 1}, {"path_prefix": "/a/b", "limit": 2}]}"#,
        );
        policy(r#"{"rules": [{"path_prefix": "/a/b", "limit": 1}, {"path_prefix": "/a", "limit": 2}]}"#);
    }

    #[test]
    fn content_length_parsing() {
        let cases: &[(Option<&[u8]>, DeclaredLength)] = &[
            (None, DeclaredLength::Absent),
            (Some(b"0"), DeclaredLength::Bytes(0)),
            (Some(b"52428800"), DeclaredLength::Bytes(52_428_800)),
            (Some(b"99999999999999999999999"), DeclaredLength::Bytes(u64::MAX)),
            (Some(b""), DeclaredLength::Invalid),
            (Some(b"-1"), DeclaredLength::Invalid),
            (Some(b"+1"), DeclaredLength::Invalid),
            (Some(b" 1"), DeclaredLength::Invalid),
            (Some(b"1,1"), DeclaredLength::Invalid),
            (Some(b"0x10"), DeclaredLength::Invalid),
            (Some(b"\xff"), DeclaredLength::Invalid),
        ];
        for &(raw, want) in cases {
            assert_eq!(parse_content_length(raw), want, "{raw:?}");
        }
    }

    #[test]
    fn headers_verdict_at_the_boundary() {
        let limit = Limit::Bytes(100);
        assert_eq!(check_headers(limit, DeclaredLength::Bytes(101)), HeadersVerdict::Reject { limit: 100 });
        assert!(matches!(check_headers(limit, DeclaredLength::Bytes(100)), HeadersVerdict::Count(_)));
        assert!(matches!(check_headers(limit, DeclaredLength::Absent), HeadersVerdict::Count(_)));
        assert!(matches!(check_headers(limit, DeclaredLength::Invalid), HeadersVerdict::Count(_)));
        assert_eq!(check_headers(Limit::Unlimited, DeclaredLength::Bytes(u64::MAX)), HeadersVerdict::Pass);
    }

    #[test]
    fn counter_allows_exactly_the_limit_and_refuses_the_crossing_chunk() {
        let HeadersVerdict::Count(mut c) = check_headers(Limit::Bytes(100), DeclaredLength::Absent) else {
            unreachable!()
        };
        assert!(c.admit(60));
        assert!(c.admit(0));
        assert!(c.admit(40));
        assert_eq!(c.seen(), 100);
        assert!(!c.admit(1));
        assert_eq!(c.seen(), 100, "a refused chunk is not counted as forwarded");

        let mut c = BodyCounter { limit: 100, seen: 0 };
        assert!(!c.admit(101));
        let mut c = BodyCounter { limit: u64::MAX - 1, seen: u64::MAX - 2 };
        assert!(c.admit(1));
        assert!(!c.admit(usize::MAX));
    }

    #[test]
    fn rejection_names_the_limit_in_json() {
        let r = rejection(50 << 20);
        assert_eq!(r.status, 413);
        let v: serde_json::Value = serde_json::from_str(&r.body).unwrap();
        assert_eq!(v["limit_bytes"], 52_428_800);
        assert_eq!(v["error"], "payload_too_large");
        assert!(v["message"].as_str().unwrap().contains("50 MiB"));
        assert!(r.headers.contains(&("content-type", "application/json")));
    }
}
