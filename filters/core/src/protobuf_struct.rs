//! Decodes a serialized `google.protobuf.Struct` into JSON.
//!
//! Envoy 1.40 hands a filter whose `configuration` is a `google.protobuf.Struct` the Struct's
//! protobuf wire bytes (observed; the API comment about JSON is for `vm_config.configuration`).
//! Struct keeps configs native YAML, which is what lets one YAML anchor share a `nodes`
//! table between filters, so Tether reads both: JSON text (`StringValue`) and a Struct.
//!
//! The wire format is small: Struct{ map<string, Value> fields = 1 }, Value is a oneof of
//! null(1, varint), number(2, double), string(3), bool(4, varint), struct(5), list(6:
//! ListValue{ repeated Value values = 1 }). Anything else is refused.

use serde_json::{Map, Number, Value};

/// Deep enough for any real config, shallow enough that hostile nesting cannot blow the stack.
const MAX_DEPTH: usize = 32;

pub fn decode_struct(bytes: &[u8]) -> Result<Value, String> {
    decode_struct_at(bytes, 0)
}

struct Reader<'a> {
    buf: &'a [u8],
}

enum Field<'a> {
    Varint(u64),
    Fixed64(u64),
    Bytes(&'a [u8]),
}

impl<'a> Reader<'a> {
    fn varint(&mut self) -> Result<u64, String> {
        let mut value: u64 = 0;
        for shift in (0..64).step_by(7) {
            let (&byte, rest) = self.buf.split_first().ok_or("truncated varint")?;
            self.buf = rest;
            value |= u64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err("varint longer than 10 bytes".into())
    }

    /// The next `(field number, value)`, or `None` at the end.
    fn field(&mut self) -> Result<Option<(u64, Field<'a>)>, String> {
        if self.buf.is_empty() {
            return Ok(None);
        }
        let tag = self.varint()?;
        let value = match tag & 7 {
            0 => Field::Varint(self.varint()?),
            1 => {
                let (bytes, rest) = self.buf.split_at_checked(8).ok_or("truncated double")?;
                self.buf = rest;
                let mut raw = [0u8; 8];
                raw.copy_from_slice(bytes);
                Field::Fixed64(u64::from_le_bytes(raw))
            }
            2 => {
                let len = usize::try_from(self.varint()?).map_err(|_| "length too large")?;
                let (bytes, rest) = self.buf.split_at_checked(len).ok_or("truncated field")?;
                self.buf = rest;
                Field::Bytes(bytes)
            }
            wire => return Err(format!("unexpected wire type {wire}")),
        };
        Ok(Some((tag >> 3, value)))
    }
}

fn decode_struct_at(bytes: &[u8], depth: usize) -> Result<Value, String> {
    if depth > MAX_DEPTH {
        return Err(format!("nested deeper than {MAX_DEPTH} levels"));
    }
    let mut map = Map::new();
    let mut r = Reader { buf: bytes };
    while let Some((number, field)) = r.field()? {
        let (1, Field::Bytes(entry)) = (number, field) else {
            return Err(format!("Struct: unexpected field {number}"));
        };
        let mut key = None;
        let mut value = Value::Null;
        let mut e = Reader { buf: entry };
        while let Some((number, field)) = e.field()? {
            match (number, field) {
                (1, Field::Bytes(k)) => key = Some(std::str::from_utf8(k).map_err(|_| "key is not UTF-8")?.to_string()),
                (2, Field::Bytes(v)) => value = decode_value(v, depth + 1)?,
                (n, _) => return Err(format!("Struct entry: unexpected field {n}")),
            }
        }
        map.insert(key.ok_or("Struct entry without a key")?, value);
    }
    Ok(Value::Object(map))
}

fn decode_value(bytes: &[u8], depth: usize) -> Result<Value, String> {
    if depth > MAX_DEPTH {
        return Err(format!("nested deeper than {MAX_DEPTH} levels"));
    }
    let mut value = Value::Null;
    let mut r = Reader { buf: bytes };
    while let Some((number, field)) = r.field()? {
        value = match (number, field) {
            (1, Field::Varint(_)) => Value::Null,
            (2, Field::Fixed64(bits)) => number_value(f64::from_bits(bits))?,
            (3, Field::Bytes(s)) => {
                Value::String(std::str::from_utf8(s).map_err(|_| "string is not UTF-8")?.to_string())
            }
            (4, Field::Varint(b)) => Value::Bool(b != 0),
            (5, Field::Bytes(s)) => decode_struct_at(s, depth + 1)?,
            (6, Field::Bytes(list)) => {
                let mut items = Vec::new();
                let mut l = Reader { buf: list };
                while let Some((number, field)) = l.field()? {
                    let (1, Field::Bytes(item)) = (number, field) else {
                        return Err(format!("ListValue: unexpected field {number}"));
                    };
                    items.push(decode_value(item, depth + 1)?);
                }
                Value::Array(items)
            }
            (n, _) => return Err(format!("Value: unexpected field {n}")),
        };
    }
    Ok(value)
}

/// YAML `limit: 1048576` arrives as a double; whole numbers become JSON integers again so
/// that integer fields accept them.
fn number_value(f: f64) -> Result<Value, String> {
    const EXACT: f64 = 9_007_199_254_740_992.0; // 2^53: every whole double below is exact
    if f.is_finite() && f.fract() == 0.0 && f.abs() <= EXACT {
        // The guard above makes these casts exact.
        #[allow(clippy::cast_possible_truncation)]
        return Ok(if f >= 0.0 { Value::from(f as u64) } else { Value::from(f as i64) });
    }
    Number::from_f64(f).map(Value::Number).ok_or_else(|| format!("number {} is not finite", crate::config::Float(f)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    // A tiny encoder for the tests, written from the wire-format definition.
    fn varint(mut v: u64, out: &mut Vec<u8>) {
        while v >= 0x80 {
            out.push((v as u8) | 0x80);
            v >>= 7;
        }
        out.push(v as u8);
    }
    fn bytes_field(n: u64, b: &[u8], out: &mut Vec<u8>) {
        varint(n << 3 | 2, out);
        varint(b.len() as u64, out);
        out.extend_from_slice(b);
    }
    fn enc_value(v: &Value) -> Vec<u8> {
        let mut out = Vec::new();
        match v {
            Value::Null => {
                varint(1 << 3, &mut out);
                varint(0, &mut out);
            }
            Value::Number(n) => {
                varint(2 << 3 | 1, &mut out);
                out.extend_from_slice(&n.as_f64().unwrap().to_le_bytes());
            }
            Value::String(s) => bytes_field(3, s.as_bytes(), &mut out),
            Value::Bool(b) => {
                varint(4 << 3, &mut out);
                varint(u64::from(*b), &mut out);
            }
            Value::Object(_) => bytes_field(5, &enc_struct(v), &mut out),
            Value::Array(items) => {
                let mut list = Vec::new();
                for i in items {
                    bytes_field(1, &enc_value(i), &mut list);
                }
                bytes_field(6, &list, &mut out);
            }
        }
        out
    }
    fn enc_struct(v: &Value) -> Vec<u8> {
        let mut out = Vec::new();
        for (k, v) in v.as_object().unwrap() {
            let mut entry = Vec::new();
            bytes_field(1, k.as_bytes(), &mut entry);
            bytes_field(2, &enc_value(v), &mut entry);
            bytes_field(1, &entry, &mut out);
        }
        out
    }

    #[test]
    fn round_trips_every_kind_of_value() {
        let v = json!({
            "default_limit": "50M",
            "n": 1048576, "neg": -3, "frac": 1.5, "big": 1e300,
            "on": true, "off": false, "nothing": null,
            "rules": [{"path_prefix": "/a", "methods": ["POST", "PUT"]}, [], {}],
            "nested": {"deeper": {"x": "é"}}
        });
        assert_eq!(decode_struct(&enc_struct(&v)).unwrap(), v);
    }

    #[test]
    fn the_bytes_envoy_sent_decode() {
        // Captured from Envoy 1.40.0 for {default_limit: 50M, rules: [{path_prefix: /stream/, limit: unlimited}]}.
        let captured = b"\n@\n\x05rules\x12725\n3*1\n\x14\n\x05limit\x12\x0b\x1a\tunlimited\n\x19\n\x0bpath_prefix\x12\n\x1a\x08/stream/\n\x16\n\rdefault_limit\x12\x05\x1a\x0350M";
        let v = decode_struct(captured).unwrap();
        assert_eq!(v, json!({"default_limit": "50M", "rules": [{"path_prefix": "/stream/", "limit": "unlimited"}]}));
    }

    #[test]
    fn malformed_bytes_are_refused_not_panicked_on() {
        let good = enc_struct(&json!({"a": {"b": [1, "x", null]}}));
        for cut in 0..good.len() {
            let _ = decode_struct(&good[..cut]); // must not panic
        }
        assert!(decode_struct(b"\x0a\x05ab").is_err());
        assert!(decode_struct(b"\x08\x01").is_err());
        assert!(decode_struct(b"\x0a\x80").is_err());
        assert!(decode_struct(b"\x0a\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\x01").is_err());
        let mut deep = json!("leaf");
        for _ in 0..40 {
            deep = json!({ "k": deep });
        }
        assert!(decode_struct(&enc_struct(&deep)).unwrap_err().contains("nested deeper"));
    }
}
