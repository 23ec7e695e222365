//! Configuration errors that name the field, and the one JSON entry point every filter uses.

use serde::de::{self, DeserializeOwned, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Deserializer};
/// A configuration read as JSON (serde_json's), as filters hand it on.
pub use serde_json::Value;
use serde_json::{Map, Number};
use std::fmt;

/// A configuration problem: where (a JSON path such as `rules[1].limit`) and what.
///
/// Displayed as `path: message`, the one line a filter logs before refusing its config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    path: String,
    message: String,
}

impl ConfigError {
    /// An error about the field at `path` (empty for the document as a whole).
    pub fn at(path: impl Into<String>, message: impl Into<String>) -> Self {
        ConfigError { path: path.into(), message: message.into() }
    }

    pub fn path(&self) -> &str {
        &self.path
    }

    pub fn message(&self) -> &str {
        &self.message
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            f.write_str(&self.message)
        } else {
            write!(f, "{}: {}", self.path, self.message)
        }
    }
}

impl std::error::Error for ConfigError {}

/// A number from a configuration in an error message, as JSON writes it (`1.5`, `2.0`,
/// `1e300`). Through serde_json's own writer: Rust's float formatting would add ~20 KB to every
/// module for messages only.
pub(crate) struct Float(pub(crate) f64);

impl fmt::Display for Float {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match Number::from_f64(self.0) {
            Some(n) => fmt::Display::fmt(&n, f),
            None if self.0.is_nan() => f.write_str("NaN"),
            None if self.0 > 0.0 => f.write_str("inf"),
            None => f.write_str("-inf"),
        }
    }
}

/// Parses a filter's configuration: JSON text (`google.protobuf.StringValue` in Envoy) or the
/// wire bytes of a `google.protobuf.Struct` (what Envoy 1.40 passes for a YAML-native config).
/// Envoy hands an absent `configuration` over as zero bytes; that means "all defaults", the
/// same as `{}`.
///
/// Both are read into one JSON value first, and `T` from that value: each config type's
/// deserializer (with its path tracking) then exists once in the module, not once per input
/// format, and the text parser once for all types (measured: configuration reading is the
/// largest part of every module, a third of body-limit's).
pub fn parse_config<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ConfigError> {
    from_value(read_document(bytes)?)
}

/// `T` from a configuration already read as JSON (a section of a larger one), with the path of
/// any field it refuses.
// One function per configuration type, apart from what checks it: Envoy's RSS grows with
// the largest functions of a module (tether_glue::Filter).
#[inline(never)]
pub fn from_value<T: DeserializeOwned>(value: Value) -> Result<T, ConfigError> {
    crate::config_de::from_value(value).map_err(|e| ConfigError { path: e.path, message: e.message })
}

/// The configuration document as a JSON object, from either format: what each filter's
/// `from_value` takes (tether-edge hands each filter its section of its own document).
pub fn read_document(bytes: &[u8]) -> Result<Value, ConfigError> {
    // A serialized Struct starts with field 1's tag, 0x0a, which is also a JSON newline: try
    // Struct first and fall back to JSON text, so neither reading can shadow the other.
    if bytes.first() == Some(&0x0a) {
        if let Ok(value) = crate::protobuf_struct::decode_struct(bytes) {
            return Ok(value);
        }
    }
    let json: &[u8] = match bytes.iter().find(|b| !b.is_ascii_whitespace()) {
        None => return Ok(Value::Object(Map::new())),
        Some(b'{') => bytes,
        // serde would read a struct from an array; a filter config is always an object.
        Some(_) => {
            return Err(ConfigError::at(
                "",
                "the configuration must be a JSON object (google.protobuf.StringValue) or a google.protobuf.Struct",
            ))
        }
    };
    let mut de = serde_json::Deserializer::from_slice(json);
    let Strict(value) = Strict::deserialize(&mut de).map_err(|e| ConfigError::at("", e.to_string()))?;
    de.end().map_err(|e| ConfigError::at("", e.to_string()))?;
    Ok(value)
}

/// A JSON value that refuses a key twice in one object, as a struct's deserializer does
/// (serde_json's own `Value` keeps the last): a repeated setting is an operator's mistake.
struct Strict(Value);

impl<'de> Deserialize<'de> for Strict {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Strict, D::Error> {
        d.deserialize_any(StrictVisitor).map(Strict)
    }
}

struct StrictVisitor;

impl<'de> Visitor<'de> for StrictVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_bool<E>(self, b: bool) -> Result<Value, E> {
        Ok(Value::Bool(b))
    }

    fn visit_i64<E>(self, n: i64) -> Result<Value, E> {
        Ok(Value::Number(n.into()))
    }

    fn visit_u64<E>(self, n: u64) -> Result<Value, E> {
        Ok(Value::Number(n.into()))
    }

    fn visit_f64<E>(self, n: f64) -> Result<Value, E> {
        // JSON text has no NaN or infinity, so the number always exists.
        Ok(Number::from_f64(n).map_or(Value::Null, Value::Number))
    }

    fn visit_str<E>(self, s: &str) -> Result<Value, E> {
        Ok(Value::String(s.to_owned()))
    }

    fn visit_string<E>(self, s: String) -> Result<Value, E> {
        Ok(Value::String(s))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::new();
        while let Some(Strict(item)) = seq.next_element()? {
            items.push(item);
        }
        Ok(Value::Array(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut object = Map::new();
        while let Some(key) = map.next_key::<String>()? {
            if object.contains_key(&key) {
                return Err(de::Error::custom(format_args!("duplicate field `{key}`")));
            }
            let Strict(value) = map.next_value()?;
            object.insert(key, value);
        }
        Ok(Value::Object(object))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Inner {
        #[allow(dead_code)]
        n: u8,
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Outer {
        #[serde(default)]
        #[allow(dead_code)]
        items: Vec<Inner>,
    }

    #[test]
    fn error_names_the_path_of_a_nested_field() {
        let err = parse_config::<Outer>(br#"{"items": [{"n": 1}, {"n": 300}]}"#).unwrap_err();
        assert_eq!(err.path(), "items[1].n");
        assert!(err.to_string().starts_with("items[1].n: "), "{err}");
    }

    #[test]
    fn unknown_field_is_refused_with_its_name() {
        let err = parse_config::<Outer>(br#"{"itemz": []}"#).unwrap_err();
        assert!(err.to_string().contains("unknown field `itemz`"), "{err}");
    }

    #[test]
    fn empty_configuration_means_defaults() {
        assert!(parse_config::<Outer>(b"").is_ok());
        assert!(parse_config::<Outer>(b"  \n").is_ok());
    }

    #[test]
    fn a_protobuf_struct_is_read_like_json_with_paths() {
        // {"items": [{"n": 300}]} as google.protobuf.Struct wire bytes.
        let n300 = [0x11, 0, 0, 0, 0, 0, 0xc0, 0x72, 0x40]; // Value{number_value: 300.0}
        let mut entry = vec![0x0a, 1, b'n', 0x12, n300.len() as u8];
        entry.extend_from_slice(&n300);
        let mut inner = vec![0x0a, entry.len() as u8];
        inner.extend_from_slice(&entry); // Struct{n: 300}
        let mut value = vec![0x2a, inner.len() as u8];
        value.extend_from_slice(&inner); // Value{struct_value}
        let mut list = vec![0x0a, value.len() as u8];
        list.extend_from_slice(&value); // ListValue
        let mut list_value = vec![0x32, list.len() as u8];
        list_value.extend_from_slice(&list); // Value{list_value}
        let mut items = vec![0x0a, 5];
        items.extend_from_slice(b"items");
        items.extend_from_slice(&[0x12, list_value.len() as u8]);
        items.extend_from_slice(&list_value);
        let mut doc = vec![0x0a, items.len() as u8];
        doc.extend_from_slice(&items);
        let err = parse_config::<Outer>(&doc).unwrap_err();
        assert_eq!(err.path(), "items[0].n", "{err}");
        assert!(err.message().contains("300"), "{err}");
    }

    #[test]
    fn a_field_given_twice_is_refused_with_its_name() {
        let err = parse_config::<Outer>(br#"{"items": [{"n": 1, "n": 2}]}"#).unwrap_err();
        assert!(err.to_string().contains("duplicate field `n`"), "{err}");
        let err = parse_config::<Outer>(br#"{"items": [], "items": []}"#).unwrap_err();
        assert!(err.to_string().contains("duplicate field `items`"), "{err}");
    }

    #[test]
    fn json_starting_with_a_newline_is_still_json() {
        assert!(parse_config::<Outer>(b"\n{\"items\": [{\"n\": 1}]}\n").is_ok());
    }

    #[test]
    fn syntax_error_and_trailing_garbage_are_refused() {
        assert!(parse_config::<Outer>(b"{").is_err());
        assert!(parse_config::<Outer>(b"{} x").is_err());
        assert!(parse_config::<Outer>(b"[]").is_err());
    }
}
