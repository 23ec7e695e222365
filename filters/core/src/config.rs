//! Configuration errors that name the field, and the one JSON entry point every filter uses.

use serde::de::DeserializeOwned;
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

/// Parses a filter's JSON configuration. Envoy hands an absent `configuration` over as zero
/// bytes; that means "all defaults", the same as `{}`.
pub fn parse_config<T: DeserializeOwned>(json: &[u8]) -> Result<T, ConfigError> {
    let json: &[u8] = match json.iter().find(|b| !b.is_ascii_whitespace()) {
        None => b"{}",
        Some(b'{') => json,
        // serde would read a struct from an array; a filter config is always an object.
        Some(_) => return Err(ConfigError::at("", "the configuration must be a JSON object")),
    };
    let mut de = serde_json::Deserializer::from_slice(json);
    let value: T = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        // serde_path_to_error writes "." for the root.
        let path = if path == "." { String::new() } else { path };
        ConfigError::at(path, e.into_inner().to_string())
    })?;
    de.end().map_err(|e| ConfigError::at("", e.to_string()))?;
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;
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
    fn syntax_error_and_trailing_garbage_are_refused() {
        assert!(parse_config::<Outer>(b"{").is_err());
        assert!(parse_config::<Outer>(b"{} x").is_err());
        assert!(parse_config::<Outer>(b"[]").is_err());
    }
}
