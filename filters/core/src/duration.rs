//! Human durations: `"24h"`, `"90s"`, `"1h30m"`, `"500ms"`, `"2d"`.
//!
//! A unit is always required: HAProxy reads a bare `10000` as milliseconds and most people
//! read it as seconds, so a bare number is refused rather than guessed.

use serde::de::{self, Deserializer, Visitor};
use serde::Deserialize;
use std::fmt;
use std::time::Duration;

/// A duration read from configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct HumanDuration(pub Duration);

const UNITS: &[(&str, u64)] = &[("ms", 1), ("s", 1_000), ("m", 60_000), ("h", 3_600_000), ("d", 86_400_000)];

const UNITS_HELP: &str = "write a whole number with a unit (ms, s, m, h, d), e.g. \"90s\", \"24h\" or \"1h30m\"";

impl HumanDuration {
    /// Parses one or more `<number><unit>` parts, largest unit first or not, summed.
    pub fn parse(text: &str) -> Result<HumanDuration, String> {
        let fail = |why: &str| Err(format!("invalid duration {text:?}: {why}; {UNITS_HELP}"));
        if text.is_empty() {
            return fail("empty");
        }
        let mut total_ms: u64 = 0;
        let mut rest = text;
        while !rest.is_empty() {
            let digits_end = rest.find(|c: char| !c.is_ascii_digit()).unwrap_or(rest.len());
            let (digits, after) = rest.split_at(digits_end);
            if digits.is_empty() {
                return fail("expected a number");
            }
            let unit_end = after.find(|c: char| c.is_ascii_digit()).unwrap_or(after.len());
            let (unit, next) = after.split_at(unit_end);
            if unit.is_empty() {
                return fail("missing unit");
            }
            let Some(&(_, ms)) = UNITS.iter().find(|(name, _)| *name == unit) else {
                return fail(&format!("unknown unit {unit:?}"));
            };
            let Some(part) = digits.parse::<u64>().ok().and_then(|n| n.checked_mul(ms)) else {
                return fail("too large");
            };
            let Some(sum) = total_ms.checked_add(part) else {
                return fail("too large");
            };
            total_ms = sum;
            rest = next;
        }
        Ok(HumanDuration(Duration::from_millis(total_ms)))
    }

    pub fn as_duration(self) -> Duration {
        self.0
    }
}

impl<'de> Deserialize<'de> for HumanDuration {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct DurationVisitor;
        impl Visitor<'_> for DurationVisitor {
            type Value = HumanDuration;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a duration string such as \"90s\"")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<HumanDuration, E> {
                Err(E::custom(format!("invalid duration {v}: a unit is required; {UNITS_HELP}")))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<HumanDuration, E> {
                Err(E::custom(format!("invalid duration {v}: a unit is required; {UNITS_HELP}")))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<HumanDuration, E> {
                let v = crate::config::Float(v);
                Err(E::custom(format!("invalid duration {v}: a unit is required; {UNITS_HELP}")))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<HumanDuration, E> {
                HumanDuration::parse(v).map_err(E::custom)
            }
        }
        deserializer.deserialize_any(DurationVisitor)
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
            ("0s", 0),
            ("500ms", 500),
            ("90s", 90_000),
            ("15m", 900_000),
            ("24h", 86_400_000),
            ("2d", 172_800_000),
            ("1h30m", 5_400_000),
            ("1m30s250ms", 90_250),
        ];
        for &(text, ms) in cases {
            assert_eq!(HumanDuration::parse(text), Ok(HumanDuration(Duration::from_millis(ms))), "{text}");
        }
    }

    #[test]
    fn refuses_malformed_durations_with_a_reason() {
        let cases: &[(&str, &str)] = &[
            ("", "empty"),
            ("90", "missing unit"),
            ("h", "expected a number"),
            ("5y", "unknown unit \"y\""),
            ("1.5h", "unknown unit \".\""),
            ("-5s", "expected a number"),
            ("5 s", "unknown unit \" s\""),
            ("99999999999999999999s", "too large"),
            ("213503982334601d", "too large"),
        ];
        for &(text, reason) in cases {
            let err = HumanDuration::parse(text).unwrap_err();
            assert!(err.contains(reason), "{text:?}: {err}");
        }
    }

    #[test]
    fn bare_numbers_are_refused_in_json() {
        let err = serde_json::from_str::<HumanDuration>("10000").unwrap_err().to_string();
        assert!(err.contains("a unit is required"), "{err}");
        let ok: HumanDuration = serde_json::from_str(r#""24h""#).unwrap();
        assert_eq!(ok.as_duration(), Duration::from_secs(86_400));
    }
}
