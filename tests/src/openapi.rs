//! Kubernetes-style validation of a custom resource against its CRD's `openAPIV3Schema`, as the
//! API server does on `kubectl apply` (strict field validation): types, unknown fields, required
//! fields, enums, bounds, `oneOf`/`anyOf`/`not`, and the CEL rules (`x-kubernetes-validations`)
//! Istio's CRDs carry, each known rule by its message. A keyword or rule this checker does not
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
    for (keyword, is_max) in
        [("maxLength", true), ("minLength", false), ("maxItems", true), ("minItems", false), ("maxProperties", true)]
    {
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
            if let Err(e) = cel_rule(message, value) {
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

/// Istio's CEL rules, each by its message (the expressions are in tests/istio/crd-schemas.json).
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
