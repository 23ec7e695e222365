//! Human byte sizes: `1048576`, `"32M"`, `"50MiB"`, `"10MB"`.
//!
//! `K`, `M`, `G`, `T` (and `KiB` ... `TiB`) are powers of 1024, as in nginx's
//! `client_max_body_size 32M` and HAProxy's size suffixes, so configs copied from either keep
//! their meaning. `kB`, `MB`, `GB`, `TB` are powers of 1000 (SI), as the letters say. A plain
//! number, or a number with `B`, is bytes. Whole numbers only; no spaces, no signs.

use serde::de::{self, Deserializer, Visitor};
use serde::Deserialize;
use std::fmt;

/// A number of bytes read from configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct ByteSize(pub u64);

const UNITS: &[(&str, u64)] = &[
    ("", 1),
    ("B", 1),
    ("k", 1 << 10),
    ("K", 1 << 10),
    ("KiB", 1 << 10),
    ("m", 1 << 20),
    ("M", 1 << 20),
    ("MiB", 1 << 20),
    ("g", 1 << 30),
    ("G", 1 << 30),
    ("GiB", 1 << 30),
    ("T", 1 << 40),
    ("TiB", 1 << 40),
    ("kB", 1_000),
    ("KB", 1_000),
    ("MB", 1_000_000),
    ("GB", 1_000_000_000),
    ("TB", 1_000_000_000_000),
];

const UNITS_HELP: &str = "use bytes, K/M/G/T or KiB/MiB/GiB/TiB (powers of 1024), or kB/MB/GB/TB (powers of 1000)";

impl ByteSize {
    /// Parses the string form. The error says what was wrong and what is allowed.
    pub fn parse(text: &str) -> Result<ByteSize, String> {
        let digits_end = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
        let (digits, unit) = text.split_at(digits_end);
        if digits.is_empty() {
            return Err(format!(
                "invalid size {text:?}: expected a whole number with an optional unit, e.g. \"32M\"; {UNITS_HELP}"
            ));
        }
        let Some(&(_, multiplier)) = UNITS.iter().find(|(name, _)| *name == unit) else {
            return Err(format!("invalid size {text:?}: unknown unit {unit:?}; {UNITS_HELP}"));
        };
        digits
            .parse::<u64>()
            .ok()
            .and_then(|n| n.checked_mul(multiplier))
            .map(ByteSize)
            .ok_or_else(|| format!("invalid size {text:?}: larger than {} bytes", u64::MAX))
    }

    pub fn bytes(self) -> u64 {
        self.0
    }
}

/// Shortest exact human form: `52428800` → `"50 MiB"`, `1000` → `"1000 bytes"`.
impl fmt::Display for ByteSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const BINARY: &[(u64, &str)] = &[(1 << 40, "TiB"), (1 << 30, "GiB"), (1 << 20, "MiB"), (1 << 10, "KiB")];
        let n = self.0;
        if n > 0 {
            for &(unit, name) in BINARY {
                if n.is_multiple_of(unit) {
                    return write!(f, "{} {name}", n / unit);
                }
            }
        }
        write!(f, "{n} bytes")
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct SizeVisitor;
        impl Visitor<'_> for SizeVisitor {
            type Value = ByteSize;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a size: a number of bytes or a string such as \"32M\"")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<ByteSize, E> {
                Ok(ByteSize(v))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<ByteSize, E> {
                u64::try_from(v).map(ByteSize).map_err(|_| E::custom(format!("invalid size {v}: must not be negative")))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<ByteSize, E> {
                let v = crate::config::Float(v);
                Err(E::custom(format!("invalid size {v}: must be a whole number of bytes")))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<ByteSize, E> {
                ByteSize::parse(v).map_err(E::custom)
            }
        }
        deserializer.deserialize_any(SizeVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    #[test]
    fn parses_every_documented_form() {
        let cases: &[(&str, u64)] = &[
            ("0", 0),
            ("1048576", 1_048_576),
            ("512B", 512),
            ("32M", 32 << 20),
            ("32m", 32 << 20),
            ("50MiB", 50 << 20),
            ("1k", 1024),
            ("1K", 1024),
            ("1KiB", 1024),
            ("2G", 2 << 30),
            ("2GiB", 2 << 30),
            ("3T", 3 << 40),
            ("1kB", 1000),
            ("50MB", 50_000_000),
            ("5GB", 5_000_000_000),
            ("2TB", 2_000_000_000_000),
            ("18446744073709551615", u64::MAX),
        ];
        for &(text, bytes) in cases {
            assert_eq!(ByteSize::parse(text), Ok(ByteSize(bytes)), "{text}");
        }
    }

    #[test]
    fn refuses_malformed_sizes_with_a_reason() {
        let cases: &[(&str, &str)] = &[
            ("", "expected a whole number"),
            ("M", "expected a whole number"),
            ("50XB", "unknown unit \"XB\""),
            ("-5M", "expected a whole number"),
            ("1.5M", "unknown unit \".5M\""),
            ("50 M", "unknown unit \" M\""),
            (" 50M", "expected a whole number"),
            ("18446744073709551616", "larger than"),
            ("17179869184G", "larger than"),
        ];
        for &(text, reason) in cases {
            let err = ByteSize::parse(text).unwrap_err();
            assert!(err.contains(reason), "{text:?}: {err}");
        }
    }

    #[test]
    fn deserializes_numbers_and_strings() {
        let v: Vec<ByteSize> = serde_json::from_str(r#"[1024, "1K", 0]"#).unwrap();
        assert_eq!(v, vec![ByteSize(1024), ByteSize(1024), ByteSize(0)]);
        let err = serde_json::from_str::<ByteSize>("-1").unwrap_err().to_string();
        assert!(err.contains("must not be negative"), "{err}");
        let err = serde_json::from_str::<ByteSize>("1.5").unwrap_err().to_string();
        assert!(err.contains("whole number"), "{err}");
        assert!(serde_json::from_str::<ByteSize>("true").is_err());
    }

    #[test]
    fn displays_the_shortest_exact_form() {
        assert_eq!(ByteSize(50 << 20).to_string(), "50 MiB");
        assert_eq!(ByteSize(1536).to_string(), "1536 bytes");
        assert_eq!(ByteSize(1000).to_string(), "1000 bytes");
        assert_eq!(ByteSize(0).to_string(), "0 bytes");
        assert_eq!(ByteSize(4 << 30).to_string(), "4 GiB");
    }
}
