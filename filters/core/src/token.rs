//! Signed affinity tokens: the node, first-seen and last-seen times, and an HMAC-SHA256 tag.
//!
//! Wire form (cookie-safe, opaque to clients): `base64url(payload) "." base64url(tag)` with
//! payload = version (1 byte, 1) | first_seen (u64 BE, Unix seconds) | last_seen (u64 BE) |
//! node name (1–64 bytes), and tag = the first 16 bytes of
//! HMAC-SHA256(key, "tether-affinity-v1\0" | cookie name | "\0" | payload). Binding the cookie
//! name means a token minted for one cookie is not accepted for another. The first key signs;
//! every key verifies (rotation). Anything malformed, tampered or signed with an unknown key
//! does not verify.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

const VERSION: u8 = 1;
const TAG_LEN: usize = 16;
const CONTEXT: &[u8] = b"tether-affinity-v1\0";
/// Longest token we try to decode: payload of 17 + 64 bytes and a tag, base64url.
const MAX_TOKEN_LEN: usize = 160;

/// What a verified token says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claims {
    pub node: String,
    pub first_seen: u64,
    pub last_seen: u64,
}

/// A signing key (at least 16 bytes; see the affinity README for how to make one).
#[derive(Clone)]
pub struct Key {
    bytes: Vec<u8>,
    /// HMAC keyed once: the padded key's two SHA-256 blocks are hashed here, not per request
    /// (2 of the 5 compressions a verification costs).
    keyed: HmacSha256,
}

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Key(..)") // never print secrets
    }
}

impl PartialEq for Key {
    fn eq(&self, other: &Self) -> bool {
        self.bytes == other.bytes
    }
}
impl Eq for Key {}

pub const MIN_KEY_LEN: usize = 16;

impl Key {
    pub fn new(bytes: &[u8]) -> Result<Key, String> {
        if bytes.len() < MIN_KEY_LEN {
            return Err(format!("a key must be at least {MIN_KEY_LEN} bytes, got {}", bytes.len()));
        }
        // HMAC takes keys of any length; new_from_slice cannot fail for HMAC.
        let keyed = HmacSha256::new_from_slice(bytes).unwrap_or_else(|_| unreachable_mac());
        Ok(Key { bytes: bytes.to_vec(), keyed })
    }

    fn mac(&self, cookie_name: &str, payload: &[u8]) -> HmacSha256 {
        let mut mac = self.keyed.clone();
        mac.update(CONTEXT);
        mac.update(cookie_name.as_bytes());
        mac.update(b"\0");
        mac.update(payload);
        mac
    }
}

#[cold]
fn unreachable_mac() -> HmacSha256 {
    // HMAC accepts every key length, so this is never reached; an all-zero key keeps the
    // function total without a panic.
    #[allow(clippy::expect_used)]
    HmacSha256::new_from_slice(&[0u8; 32]).expect("HMAC accepts 32-byte keys")
}

/// Mints a token with `keys[0]`.
pub fn sign(key: &Key, cookie_name: &str, claims: &Claims) -> String {
    let mut payload = Vec::with_capacity(17 + claims.node.len());
    payload.push(VERSION);
    payload.extend_from_slice(&claims.first_seen.to_be_bytes());
    payload.extend_from_slice(&claims.last_seen.to_be_bytes());
    payload.extend_from_slice(claims.node.as_bytes());
    let tag = key.mac(cookie_name, &payload).finalize().into_bytes();
    let mut out = URL_SAFE_NO_PAD.encode(&payload);
    out.push('.');
    out.push_str(&URL_SAFE_NO_PAD.encode(tag.get(..TAG_LEN).unwrap_or_default()));
    out
}

/// Verifies a token against every key; `None` for anything that is not a genuine token.
pub fn verify(keys: &[Key], cookie_name: &str, token: &[u8]) -> Option<Claims> {
    if token.len() > MAX_TOKEN_LEN {
        return None;
    }
    let dot = token.iter().position(|&b| b == b'.')?;
    let payload = URL_SAFE_NO_PAD.decode(token.get(..dot)?).ok()?;
    let tag = URL_SAFE_NO_PAD.decode(token.get(dot + 1..)?).ok()?;
    if tag.len() != TAG_LEN {
        return None;
    }
    if !keys.iter().any(|k| k.mac(cookie_name, &payload).verify_truncated_left(&tag).is_ok()) {
        return None;
    }
    let (&version, rest) = payload.split_first()?;
    if version != VERSION || rest.len() < 17 {
        return None;
    }
    let (first, rest) = rest.split_at_checked(8)?;
    let (last, node) = rest.split_at_checked(8)?;
    let node = std::str::from_utf8(node).ok()?.to_string();
    Some(Claims {
        node,
        first_seen: u64::from_be_bytes(first.try_into().ok()?),
        last_seen: u64::from_be_bytes(last.try_into().ok()?),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    fn key(b: u8) -> Key {
        Key::new(&[b; 32]).unwrap()
    }

    fn claims() -> Claims {
        Claims { node: "server-pro-ha-2".into(), first_seen: 1_700_000_000, last_seen: 1_700_000_600 }
    }

    #[test]
    fn round_trip_and_rotation() {
        let t = sign(&key(1), "SERVERID", &claims());
        assert!(t.len() <= MAX_TOKEN_LEN);
        assert!(t.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.'), "{t}");
        assert_eq!(verify(&[key(1)], "SERVERID", t.as_bytes()), Some(claims()));
        // Rotation: a new key signs first, the old one still verifies.
        assert_eq!(verify(&[key(2), key(1)], "SERVERID", t.as_bytes()), Some(claims()));
        assert_eq!(verify(&[key(2)], "SERVERID", t.as_bytes()), None, "unknown key");
        assert_eq!(verify(&[key(1)], "OTHER", t.as_bytes()), None, "bound to the cookie name");
    }

    #[test]
    fn known_answer() {
        // Computed independently with Python hmac/hashlib. A change here breaks every live
        // session, so it must be deliberate.
        let t = sign(&Key::new(b"0123456789abcdef").unwrap(), "SERVERID", &claims());
        assert_eq!(t, "AQAAAABlU_EAAAAAAGVT81hzZXJ2ZXItcHJvLWhhLTI.9Q7CU_r28tr_op2DaF8L2w");
    }

    #[test]
    fn any_change_breaks_verification() {
        let t = sign(&key(1), "SERVERID", &claims());
        let bytes = t.as_bytes();
        for i in 0..bytes.len() {
            for replacement in [b'A', b'z', b'.', b'_'] {
                if bytes[i] == replacement {
                    continue;
                }
                let mut tampered = bytes.to_vec();
                tampered[i] = replacement;
                assert_eq!(
                    verify(&[key(1)], "SERVERID", &tampered),
                    None,
                    "changed byte {i} to {}",
                    replacement as char
                );
            }
        }
        for cut in 0..bytes.len() {
            assert_eq!(verify(&[key(1)], "SERVERID", &bytes[..cut]), None, "truncated to {cut}");
        }
    }

    #[test]
    fn garbage_does_not_verify() {
        for g in [&b""[..], b".", b"node-1", b"node-1|abc", b"\xff\xff.\xff", &[b'A'; 1000]] {
            assert_eq!(verify(&[key(1)], "SERVERID", g), None);
        }
    }

    #[test]
    fn short_keys_are_refused() {
        assert!(Key::new(b"short").is_err());
        assert!(Key::new(&[0; 16]).is_ok());
        assert_eq!(format!("{:?}", key(1)), "Key(..)");
    }
}
