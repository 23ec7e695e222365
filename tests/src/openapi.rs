//! Kubernetes-style validation of a custom resource against its CRD's `openAPIV3Schema`, as the
//! API server does on `kubectl apply` (strict field validation): types, unknown fields, required
//! fields, enums, bounds, patterns, `oneOf`/`anyOf`/`allOf`/`not`, and the CEL rules
//! (`x-kubernetes-validations`) that Istio's, Envoy Gateway's and the Gateway API's CRDs carry
//! where the manifests meet them, each known rule by its message (or, for the commonest
//! shape, by its expression). A keyword or rule this checker does not
//! know, met where a manifest puts a value, is an error too: nothing is skipped silently.

use serde_json::Value;

/// Every problem found, as `path: what`.
pub fn validate(schema: &Value, value: &Value) -> Vec<String> {
    let mut errors = Vec::new();
    check(schema, value, "", &mut errors);
    errors
}

const KNOWN_KEYWORDS: &[&str] = &[
    "type",
    "description",
    "properties",
    "required",
    "items",
    "x-kubernetes-validations",
    "minimum",
    "maximum",
    "format",
    "nullable",
    "anyOf",
    "oneOf",
    "not",
    "enum",
    "additionalProperties",
    "maxLength",
    "minLength",
    "maxItems",
    "minItems",
    "maxProperties",
    "x-kubernetes-int-or-string",
    "x-kubernetes-preserve-unknown-fields",
    "x-kubernetes-list-type",
    "x-kubernetes-list-map-keys",
    "default",
    "pattern",
    "allOf",
    "minProperties",
    "x-kubernetes-map-type",
];

fn check(schema: &Value, value: &Value, path: &str, errors: &mut Vec<String>) {
    let Some(schema) = schema.as_object() else { return };
    for keyword in schema.keys() {
        if !KNOWN_KEYWORDS.contains(&keyword.as_str()) {
            errors.push(format!("{path}: schema keyword {keyword:?} is not checked here"));
        }
    }
    if value.is_null() && schema.get("nullable").and_then(Value::as_bool) == Some(true) {
        return;
    }
    let int_or_string = schema.get("x-kubernetes-int-or-string").and_then(Value::as_bool) == Some(true);
    if let Some(kind) = schema.get("type").and_then(Value::as_str) {
        let ok = match kind {
            "object" => value.is_object(),
            "array" => value.is_array(),
            "string" => value.is_string() || (int_or_string && value.is_i64()),
            "integer" => value.is_i64() || value.is_u64() || (int_or_string && value.is_string()),
            "number" => value.is_number(),
            "boolean" => value.is_boolean(),
            _ => false,
        };
        if !ok {
            errors.push(format!("{path}: expected {kind}, got {value}"));
            return;
        }
    }
    if let Some(allowed) = schema.get("enum").and_then(Value::as_array) {
        if !allowed.contains(value) {
            errors.push(format!("{path}: {value} is not one of {}", Value::Array(allowed.clone())));
        }
    }
    if let (Some(min), Some(n)) = (schema.get("minimum").and_then(Value::as_f64), value.as_f64()) {
        if n < min {
            errors.push(format!("{path}: {n} is below {min}"));
        }
    }
    if let (Some(max), Some(n)) = (schema.get("maximum").and_then(Value::as_f64), value.as_f64()) {
        if n > max {
            errors.push(format!("{path}: {n} is above {max}"));
        }
    }
    let count = |v: &Value| match v {
        Value::String(s) => Some(s.chars().count()),
        Value::Array(a) => Some(a.len()),
        Value::Object(o) => Some(o.len()),
        _ => None,
    };
    for (keyword, is_max) in [
        ("maxLength", true),
        ("minLength", false),
        ("maxItems", true),
        ("minItems", false),
        ("maxProperties", true),
        ("minProperties", false),
    ] {
        if let (Some(bound), Some(n)) = (schema.get(keyword).and_then(Value::as_u64), count(value)) {
            let n = n as u64;
            if (is_max && n > bound) || (!is_max && n < bound) {
                errors.push(format!("{path}: {keyword} {bound}, got {n}"));
            }
        }
    }
    for (keyword, want) in [("oneOf", Some(1)), ("anyOf", None)] {
        if let Some(options) = schema.get(keyword).and_then(Value::as_array) {
            let matching = options.iter().filter(|o| validate(o, value).is_empty()).count();
            let ok = match want {
                Some(n) => matching == n,
                None => matching >= 1,
            };
            if !ok {
                errors.push(format!("{path}: {keyword} matched {matching} of {} alternatives", options.len()));
            }
        }
    }
    if let Some(all) = schema.get("allOf").and_then(Value::as_array) {
        for (i, option) in all.iter().enumerate() {
            for e in validate(option, value) {
                errors.push(format!("{path}: allOf[{i}]: {e}"));
            }
        }
    }
    // The API server matches with Go's regexp (RE2, unanchored); the regex crate is RE2 too.
    if let (Some(pattern), Some(text)) = (schema.get("pattern").and_then(Value::as_str), value.as_str()) {
        match regex::Regex::new(pattern) {
            Ok(re) if re.is_match(text) => {}
            Ok(_) => errors.push(format!("{path}: {text:?} does not match {pattern}")),
            Err(e) => errors.push(format!("{path}: pattern {pattern:?} is not checked here: {e}")),
        }
    }
    if let Some(not) = schema.get("not") {
        if validate(not, value).is_empty() {
            errors.push(format!("{path}: matches a schema it must not"));
        }
    }
    if let (Some(required), Some(object)) = (schema.get("required").and_then(Value::as_array), value.as_object()) {
        for field in required.iter().filter_map(Value::as_str) {
            if !object.contains_key(field) {
                errors.push(format!("{path}: {field} is required"));
            }
        }
    }
    if let Some(rules) = schema.get("x-kubernetes-validations").and_then(Value::as_array) {
        for rule in rules {
            let message = rule.get("message").and_then(Value::as_str).unwrap_or_default();
            let expression = rule.get("rule").and_then(Value::as_str).unwrap_or_default();
            if let Err(e) = type_selects_field(expression, value).unwrap_or_else(|| cel_rule(message, value)) {
                errors.push(format!("{path}: {e}"));
            }
        }
    }
    let preserve = schema.get("x-kubernetes-preserve-unknown-fields").and_then(Value::as_bool) == Some(true);
    match value {
        Value::Object(object) => {
            let properties = schema.get("properties").and_then(Value::as_object);
            let additional = schema.get("additionalProperties");
            for (key, child) in object {
                let child_path = format!("{path}.{key}");
                match (properties.and_then(|p| p.get(key)), additional) {
                    (Some(s), _) => check(s, child, &child_path, errors),
                    (None, Some(s)) if s.is_object() => check(s, child, &child_path, errors),
                    // Unknown fields are refused where the schema declares the object's shape
                    // (a structural node); value-validation alternatives (oneOf: [{required:
                    // [...]}]) only constrain, they do not declare fields.
                    _ if preserve || schema.get("type").and_then(Value::as_str) != Some("object") => {}
                    _ => errors.push(format!("{child_path}: unknown field")),
                }
            }
        }
        Value::Array(items) => {
            if let Some(item_schema) = schema.get("items") {
                for (i, item) in items.iter().enumerate() {
                    check(item_schema, item, &format!("{path}[{i}]"), errors);
                }
            }
        }
        _ => {}
    }
}

/// A Go duration (`600s`, `1h30m`, `250ms`) in nanoseconds.
pub fn go_duration_nanos(text: &str) -> Option<u128> {
    let mut rest = text;
    let mut total: u128 = 0;
    if rest.is_empty() {
        return None;
    }
    while !rest.is_empty() {
        let digits = rest.find(|c: char| !c.is_ascii_digit() && c != '.').unwrap_or(rest.len());
        let (number, tail) = rest.split_at(digits);
        let unit_len = tail.find(|c: char| c.is_ascii_digit()).unwrap_or(tail.len());
        let (unit, tail) = tail.split_at(unit_len);
        let scale: f64 = match unit {
            "ns" => 1.0,
            "us" | "µs" => 1e3,
            "ms" => 1e6,
            "s" => 1e9,
            "m" => 60e9,
            "h" => 3600e9,
            _ => return None,
        };
        let n: f64 = number.parse().ok()?;
        total += (n * scale).round() as u128;
        rest = tail;
    }
    Some(total)
}

/// Whether `value` has `key`.
fn has_in(value: &Value, key: &str) -> bool {
    value.get(key).is_some()
}

/// `value[key]` as text, empty if absent.
fn str_of<'a>(value: &'a Value, key: &str) -> &'a str {
    value[key].as_str().unwrap_or_default()
}

/// Whether no two items share a key.
fn unique_by(items: &[&Value], key: impl Fn(&Value) -> String) -> bool {
    let keys: Vec<String> = items.iter().map(|i| key(i)).collect();
    keys.iter().all(|k| keys.iter().filter(|m| *m == k).count() == 1)
}

/// A rule about a field this checker does not model: fine while the field is absent.
fn unchecked_unless_absent(message: &str, absent: bool) -> Result<(), String> {
    if absent {
        Ok(())
    } else {
        Err(format!("CEL rule {message:?} is not checked here"))
    }
}

/// What an Envoy Gateway policy may target.
const POLICY_TARGETS: &[&str] =
    &["Gateway", "ListenerSet", "HTTPRoute", "GRPCRoute", "UDPRoute", "TCPRoute", "TLSRoute"];

/// A policy's `targetRef` (one object) or `targetRefs` (a list), as a list.
fn targets(v: &Value) -> Vec<&Value> {
    match v {
        Value::Array(items) => items.iter().collect(),
        Value::Null => Vec::new(),
        one => vec![one],
    }
}

/// The commonest rule of Envoy Gateway's CRDs, read from its expression: `self.type == 'HTTP' ?
/// has(self.http) : !has(self.http)` (the field is set exactly when the type names it). `None`
/// for any other expression.
fn type_selects_field(expression: &str, value: &Value) -> Option<Result<(), String>> {
    let rest = expression.trim().strip_prefix("self.type == '")?;
    let (wanted, rest) = rest.split_once("' ? has(self.")?;
    let (field, rest) = rest.split_once(") : !has(self.")?;
    (rest == format!("{field})")).then(|| {
        let selected = value.get("type").and_then(Value::as_str) == Some(wanted);
        if selected == value.get(field).is_some() {
            Ok(())
        } else {
            Err(format!("type {wanted} if and only if {field} is set"))
        }
    })
}

/// The CEL rules met, each by its message (the expressions are in tests/istio/crd-schemas.json
/// and tests/envoy-gateway/crd-schemas.json).
fn cel_rule(message: &str, value: &Value) -> Result<(), String> {
    let has = |field: &str| value.get(field).is_some();
    let one_of = |fields: &[&str]| -> Result<(), String> {
        if fields.iter().filter(|f| has(f)).count() > 1 {
            return Err(message.to_string());
        }
        Ok(())
    };
    let ok = |good: bool| if good { Ok(()) } else { Err(message.to_string()) };
    let text = value.as_str().unwrap_or_default();
    let keys = || value.as_object().map(|o| o.keys().cloned().collect::<Vec<_>>()).unwrap_or_default();
    let items = || value.as_array().map(|a| a.iter().collect::<Vec<_>>()).unwrap_or_default();
    let port_ok = |v: &Value| v.as_u64().is_some_and(|p| (1..=65535).contains(&p));
    match message {
        "must be a valid duration greater than 1ms" => ok(go_duration_nanos(text).is_some_and(|n| n >= 1_000_000)),
        "only one of credentialNames or tlsCertificates can be set"
        | "only one of credentialName or tlsCertificates can be set" => one_of(&["credentialNames", "tlsCertificates"]),
        "only one of credentialName or credentialNames can be set" => one_of(&["credentialName", "credentialNames"]),
        "only one of WorkloadSelector or Endpoints can be set" => one_of(&["workloadSelector", "endpoints"]),
        "only one of targetRefs or selector can be set" => one_of(&["selector", "targetRef", "targetRefs"]),
        "wildcard not allowed in label key match" => ok(keys().iter().all(|k| !k.contains('*'))),
        "key must not be empty" => ok(keys().iter().all(|k| !k.is_empty())),
        "wildcard not allowed in label value match" | "wildcard is not supported in selector" => {
            ok(!text.contains('*'))
        }
        "CIDR addresses are allowed only for NONE/STATIC resolution types" => {
            let cidr = value["addresses"]
                .as_array()
                .is_some_and(|a| a.iter().any(|x| x.as_str().is_some_and(|s| s.contains('/'))));
            let resolution = value["resolution"].as_str().unwrap_or("NONE");
            ok(!cidr || ["STATIC", "NONE"].contains(&resolution))
        }
        "NONE mode cannot set endpoints" => {
            ok(value["resolution"].as_str().unwrap_or("NONE") != "NONE" || !has("endpoints"))
        }
        "DNS_ROUND_ROBIN mode cannot have multiple endpoints" => ok(value["resolution"].as_str()
            != Some("DNS_ROUND_ROBIN")
            || value["endpoints"].as_array().is_none_or(|e| e.len() <= 1)),
        "Address is required" => ok(has("address") || has("network")),
        "UDS may not include ports" => {
            ok(!value["address"].as_str().unwrap_or_default().starts_with("unix://") || !has("ports"))
        }
        "UDS must be an absolute path or abstract socket" => {
            let socket = text.strip_prefix("unix://");
            ok(socket.is_none_or(|path| path.starts_with('/') || path.starts_with('@')))
        }
        "UDS may not be a dir" => ok(!text.starts_with("unix://") || !text.ends_with('/')),
        "port name must be valid" => ok(keys().iter().all(|k| {
            k.len() < 63
                && k.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
                && !k.starts_with('-')
                && !k.ends_with('-')
                && !k.is_empty()
        })),
        "port must be between 1-65535" => ok(port_ok(value)),
        "hostname cannot be wildcard" => ok(text != "*"),
        "port number cannot be duplicated" => {
            let numbers: Vec<u64> =
                value.as_array().into_iter().flatten().filter_map(|p| p["number"].as_u64()).collect();
            ok(numbers.iter().all(|n| numbers.iter().filter(|m| *m == n).count() == 1))
        }
        "cross namespace referencing is not currently supported" => ok(text.is_empty()),
        "url must have schema one of [http, https, file, oci]" => {
            let scheme = text.split_once("://").map_or("", |(s, _)| s);
            ok(["", "http", "https", "oci", "file"].contains(&scheme))
        }
        "value may only be set when valueFrom is INLINE" => {
            ok(value["valueFrom"].as_str() != Some("HOST") || !has("value"))
        }
        // Envoy Gateway's policies and the Gateway API (tests/envoy-gateway/crd-schemas.json).
        // A transition rule (self == oldSelf) holds on create.
        "Value is immutable" => Ok(()),
        "either targetRef or targetRefs must be used" => ok((has("targetRef") != has("targetRefs"))
            || value["targetSelectors"].as_array().is_some_and(|s| !s.is_empty())),
        "this policy can only have a targetRef.group of gateway.networking.k8s.io" => {
            ok(targets(&value["targetRef"]).iter().all(|t| t["group"] == "gateway.networking.k8s.io"))
        }
        "this policy can only have a targetRefs[*].group of gateway.networking.k8s.io" => {
            ok(targets(&value["targetRefs"]).iter().all(|t| t["group"] == "gateway.networking.k8s.io"))
        }
        "this policy can only have a targetRef.kind of Gateway/ListenerSet/HTTPRoute/GRPCRoute/TCPRoute/UDPRoute/TLSRoute" => {
            ok(targets(&value["targetRef"]).iter().all(|t| POLICY_TARGETS.contains(&t["kind"].as_str().unwrap_or_default())))
        }
        "this policy can only have a targetRefs[*].kind of Gateway/ListenerSet/HTTPRoute/GRPCRoute/TCPRoute/UDPRoute/TLSRoute" => {
            ok(targets(&value["targetRefs"]).iter().all(|t| POLICY_TARGETS.contains(&t["kind"].as_str().unwrap_or_default())))
        }
        "mergeType can only be used with xRoute targets" => ok(!has("mergeType")),
        "either compression or compressor can be set, not both" => ok(!(has("compression") && has("compressor"))),
        "requestBuffer cannot be used together with httpUpgrade" => {
            ok(!has("requestBuffer") || value["httpUpgrade"].as_array().is_none_or(|u| u.is_empty()))
        }
        "mergeGateways and mergeBackends cannot both be enabled" => {
            ok(!(value["mergeGateways"] == true && has("mergeBackends")))
        }
        "one of before or after must be specified" => ok(has("before") || has("after")),
        "only one of before or after can be specified" => ok(has("before") != has("after")),
        "only one of envoyDeployment or envoyDaemonSet can be specified" => {
            ok(!(has("envoyDeployment") && has("envoyDaemonSet")))
        }
        "cannot use envoyHpa if envoyDaemonSet is used" => ok(!(has("envoyHpa") && has("envoyDaemonSet"))),
        "Either image or imageRepository can be set." => ok(!(has("image") && has("imageRepository"))),
        // Gateway API: Gateway listeners.
        "tls must not be specified for protocols ['HTTP', 'TCP', 'UDP']" => {
            ok(items().iter().all(|l| !["HTTP", "TCP", "UDP"].contains(&str_of(l, "protocol")) || l.get("tls").is_none()))
        }
        "tls mode must be Terminate for protocol HTTPS" => ok(items().iter().all(|l| {
            str_of(l, "protocol") != "HTTPS" || ["", "Terminate"].contains(&l["tls"]["mode"].as_str().unwrap_or_default())
        })),
        "tls mode must be set for protocol TLS" => {
            ok(items().iter().all(|l| str_of(l, "protocol") != "TLS" || !str_of(&l["tls"], "mode").is_empty()))
        }
        "hostname must not be specified for protocols ['TCP', 'UDP']" => {
            ok(items().iter().all(|l| !["TCP", "UDP"].contains(&str_of(l, "protocol")) || str_of(l, "hostname").is_empty()))
        }
        "Listener name must be unique within the Gateway" => ok(unique_by(&items(), |l| l["name"].to_string())),
        "Combination of port, protocol and hostname must be unique for each listener" => {
            ok(unique_by(&items(), |l| format!("{} {} {}", l["port"], l["protocol"], l["hostname"])))
        }
        "certificateRefs or options must be specified when mode is Terminate" => ok(str_of(value, "mode") != "Terminate"
            || value["certificateRefs"].as_array().is_some_and(|r| !r.is_empty())
            || value["options"].as_object().is_some_and(|o| !o.is_empty())),
        // Gateway API: a route's parents (the same Gateway twice needs distinct listeners).
        "sectionName or port must be specified when parentRefs includes 2 or more references to the same parent"
        | "sectionName or port must be unique when parentRefs includes 2 or more references to the same parent" => {
            let parent = |p: &Value| format!("{} {} {} {}", p["group"], p["kind"], p["name"], p["namespace"]);
            let refs = items();
            let shared: Vec<&Value> =
                refs.iter().copied().filter(|p| refs.iter().filter(|q| parent(q) == parent(p)).count() > 1).collect();
            let listener = |p: &Value| format!("{} {} {}", parent(p), p["sectionName"], p["port"]);
            ok(shared.iter().all(|p| has_in(p, "sectionName") || has_in(p, "port")) && unique_by(&shared, listener))
        }
        // Schema defaults apply first: group "" and kind Service.
        "Must have port for Service reference" => {
            let core = str_of(value, "group").is_empty();
            let service = value.get("kind").is_none_or(|k| k == "Service");
            ok(!(core && service) || has("port"))
        }
        // Gateway API: HTTPRoute rules.
        "While 16 rules and 64 matches per rule are allowed, the total number of matches across all rules in a route must be less than 128" => {
            ok(items().iter().map(|r| r["matches"].as_array().map_or(0, Vec::len)).sum::<usize>() < 128)
        }
        "Rule name must be unique within the route" => {
            let named: Vec<&Value> = items().into_iter().filter(|r| r.get("name").is_some()).collect();
            ok(unique_by(&named, |r| r["name"].to_string()))
        }
        "RequestRedirect filter must not be used together with backendRefs" => ok(value["backendRefs"]
            .as_array()
            .is_none_or(|b| b.is_empty())
            || value["filters"].as_array().is_none_or(|f| f.iter().all(|f| f.get("requestRedirect").is_none()))),
        "When using RequestRedirect filter with path.replacePrefixMatch, exactly one PathPrefix match must be specified"
        | "When using URLRewrite filter with path.replacePrefixMatch, exactly one PathPrefix match must be specified"
        | "Within backendRefs, when using RequestRedirect filter with path.replacePrefixMatch, exactly one PathPrefix match must be specified"
        | "Within backendRefs, When using URLRewrite filter with path.replacePrefixMatch, exactly one PathPrefix match must be specified" => {
            unchecked_unless_absent(message, !value.to_string().contains("replacePrefixMatch"))
        }
        "May specify either httpRouteFilterRequestRedirect or httpRouteFilterRequestRewrite, but not both" => {
            let types: Vec<&str> = items().iter().map(|f| str_of(f, "type")).collect();
            ok(!(types.contains(&"RequestRedirect") && types.contains(&"URLRewrite")))
        }
        "CORS filter cannot be repeated"
        | "RequestHeaderModifier filter cannot be repeated"
        | "ResponseHeaderModifier filter cannot be repeated"
        | "RequestRedirect filter cannot be repeated"
        | "URLRewrite filter cannot be repeated" => {
            let kind = message.split(' ').next().unwrap_or_default();
            ok(items().iter().filter(|f| str_of(f, "type") == kind).count() <= 1)
        }
        // "filter.cors must be nil if the filter.type is not CORS", "... must be specified for
        // CORS filter.type", and so on for each filter type.
        m if m.starts_with("filter.") && m.contains(" must be nil if the filter.type is not ") => {
            let (field, kind) = m.trim_start_matches("filter.").split_once(" must be nil if the filter.type is not ").unwrap_or_default();
            ok(!has(field) || str_of(value, "type") == kind)
        }
        m if m.starts_with("filter.") && m.ends_with(" filter.type") && m.contains(" must be specified for ") => {
            let (field, kind) = m.trim_start_matches("filter.").trim_end_matches(" filter.type").split_once(" must be specified for ").unwrap_or_default();
            ok(has(field) || str_of(value, "type") != kind)
        }
        m if m.ends_with(" when type one of ['Exact', 'PathPrefix']") => {
            let exact_or_prefix = ["Exact", "PathPrefix"].contains(&str_of(value, "type"));
            let path = str_of(value, "value");
            let good = match m.trim_end_matches(" when type one of ['Exact', 'PathPrefix']") {
                "value must be an absolute path and start with '/'" => path.starts_with('/'),
                "must not contain '//'" => !path.contains("//"),
                "must not contain '/./'" => !path.contains("/./"),
                "must not contain '/../'" => !path.contains("/../"),
                "must not contain '%2f'" => !path.contains("%2f"),
                "must not contain '%2F'" => !path.contains("%2F"),
                "must not contain '#'" => !path.contains('#'),
                "must not end with '/..'" => !path.ends_with("/.."),
                "must not end with '/.'" => !path.ends_with("/."),
                other => return Err(format!("CEL rule {other:?} is not checked here")),
            };
            ok(!exact_or_prefix || good)
        }
        "type must be one of ['Exact', 'PathPrefix', 'RegularExpression']" => {
            ok(["Exact", "PathPrefix", "RegularExpression"].contains(&str_of(value, "type")))
        }
        "must only contain valid characters (matching ^(?:[-A-Za-z0-9/._~!$&'()*+,;=:@]|[%][0-9a-fA-F]{2})+$) for types ['Exact', 'PathPrefix']" => {
            let valid = regex::Regex::new(r"^(?:[-A-Za-z0-9/._~!$&'()*+,;=:@]|[%][0-9a-fA-F]{2})+$").map_err(|e| e.to_string())?;
            ok(!["Exact", "PathPrefix"].contains(&str_of(value, "type")) || valid.is_match(str_of(value, "value")))
        }
        "AbsoluteTimeout must be specified when cookie lifetimeType is Permanent" => {
            ok(value["cookieConfig"]["lifetimeType"] != "Permanent" || has("absoluteTimeout"))
        }
        "cookieConfig can only be set with type Cookie" => ok(!has("cookieConfig") || str_of(value, "type") == "Cookie"),
        "backendRequest timeout cannot be longer than request timeout" => {
            let nanos = |k: &str| go_duration_nanos(str_of(value, k));
            ok(match (nanos("request"), nanos("backendRequest")) {
                (Some(request), Some(backend)) => request == 0 || backend <= request,
                _ => true,
            })
        }
        // Envoy Gateway: health checks and load balancers.
        "The grpc field can only be set if the Health Checker type is GRPC." => {
            ok(!has("grpc") || str_of(value, "type") == "GRPC")
        }
        "The requestBody field can only be set when method is POST or PUT." => {
            ok(!has("requestBody") || ["POST", "PUT"].contains(&str_of(value, "method").to_ascii_uppercase().as_str()))
        }
        "Currently SlowStart is only supported for RoundRobin, LeastRequest, and BackendUtilization load balancers." => {
            ok(!["Random", "ConsistentHash", "DynamicModule"].contains(&str_of(value, "type")) || !has("slowStart"))
        }
        "PreferLocal zone-aware routing is not supported for ConsistentHash load balancers. Use weightedZones instead." => {
            ok(str_of(value, "type") != "ConsistentHash" || value["zoneAware"].get("preferLocal").is_none())
        }
        "PreferLocal zone-aware routing is not currently supported for BackendUtilization load balancers. Only WeightedZones can be used with BackendUtilization." => {
            ok(str_of(value, "type") != "BackendUtilization" || value["zoneAware"].get("preferLocal").is_none())
        }
        "ZoneAware routing is not supported for DynamicModule load balancers." => {
            ok(str_of(value, "type") != "DynamicModule" || !has("zoneAware"))
        }
        "ZoneAware PreferLocal and WeightedZones cannot be specified together." => {
            ok(!(has_in(&value["zoneAware"], "preferLocal") && has_in(&value["zoneAware"], "weightedZones")))
        }
        "EndpointOverride is not supported for DynamicModule load balancers." => {
            ok(str_of(value, "type") != "DynamicModule" || !has("endpointOverride"))
        }
        // Rules about fields the manifests leave out: checked only in that they are out.
        "admissionControl can only be used with HTTPRoute, GRPCRoute, Gateway, or ListenerSet targets" => {
            unchecked_unless_absent(message, !has("admissionControl"))
        }
        "predictivePercent in preconnect policy only works with RoundRobin or Random load balancers" => {
            unchecked_unless_absent(message, value["connection"]["preconnect"].get("predictivePercent").is_none())
        }
        other => Err(format!("CEL rule {other:?} is not checked here")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn go_durations() {
        assert_eq!(go_duration_nanos("600s"), Some(600_000_000_000));
        assert_eq!(go_duration_nanos("1h30m"), Some(5_400_000_000_000));
        assert_eq!(go_duration_nanos("0s"), Some(0));
        assert_eq!(go_duration_nanos("250ms"), Some(250_000_000));
        assert_eq!(go_duration_nanos("10"), None, "a unit is required");
        assert_eq!(go_duration_nanos(""), None);
    }

    #[test]
    fn the_checker_catches_what_the_api_server_refuses() {
        let schema = json!({"type": "object", "properties": {
            "timeout": {"type": "string", "x-kubernetes-validations": [
                {"rule": "duration(self) >= duration('1ms')", "message": "must be a valid duration greater than 1ms"}]},
            "mode": {"type": "string", "enum": ["A", "B"]},
            "n": {"type": "integer", "maximum": 3}
        }, "required": ["mode"]});
        assert!(validate(&schema, &json!({"mode": "A", "timeout": "600s", "n": 2})).is_empty());
        let errors = validate(&schema, &json!({"timeout": "0s", "mode": "C", "n": 4, "extra": 1}));
        let text = errors.join("\n");
        for want in ["greater than 1ms", "is not one of", "above 3", ".extra: unknown field"] {
            assert!(text.contains(want), "{want}: {text}");
        }
        assert_eq!(validate(&schema, &json!({})), [": mode is required"]);
        let unknown = json!({"type": "string", "x-kubernetes-validations": [{"rule": "x", "message": "new rule"}]});
        assert!(validate(&unknown, &json!("v"))[0].contains("not checked here"));
    }
}
