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
use std::cell::RefCell;
use subtle::ConstantTimeEq;

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

/// The keys that verify one cookie's tokens (the first also signs), with a memo of the tokens they
/// verified lately: a returning user sends the same token until it is refreshed, and checking
/// its tag again costs three SHA-256 compressions (the largest part of a returning user's
/// request in Wasm instructions). The memo holds only what the keys verified, so a hit is
/// exactly as genuine as a fresh check; times are checked by the caller on every request.
/// It lives and dies with the configuration, so a rotated-out key's tokens go with it.
pub struct Keys {
    keys: Vec<Key>,
    cookie_name: String,
    verified: RefCell<Vec<Option<Verified>>>,
}

/// A token the keys verified, and what it says.
type Verified = (Box<[u8]>, Claims);

/// Slots in the memo (direct-mapped by a hash of the token): at most ~40 KB per VM when full.
pub const VERIFIED_SLOTS: usize = 256;

impl Keys {
    /// The keys of the cookie named `cookie_name` (tokens are bound to it).
    pub fn new(keys: Vec<Key>, cookie_name: &str) -> Keys {
        Keys { keys, cookie_name: cookie_name.to_string(), verified: RefCell::new(Vec::new()) }
    }

    /// The signing key.
    pub fn signer(&self) -> Option<&Key> {
        self.keys.first()
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// [`sign`] with the signing key; the token is remembered as verified (it is, by
    /// construction), so its first return is already a memo hit.
    pub fn sign(&self, claims: &Claims) -> Option<String> {
        let token = sign(self.signer()?, &self.cookie_name, claims);
        self.remember(token.as_bytes(), claims);
        Some(token)
    }

    /// [`verify`] for this cookie, remembered: a token verified before answers from the memo.
    pub fn verify(&self, token: &[u8]) -> Option<Claims> {
        if token.len() > MAX_TOKEN_LEN {
            return None;
        }
        if let Some(Some((known, claims))) = self.verified.borrow().get(slot(token)) {
            // Constant time: the timing must not tell how much of a stranger's token matched.
            if known.len() == token.len() && bool::from(known.ct_eq(token)) {
                return Some(claims.clone());
            }
        }
        let claims = verify(&self.keys, &self.cookie_name, token)?;
        self.remember(token, &claims);
        Some(claims)
    }

    fn remember(&self, token: &[u8], claims: &Claims) {
        let mut memo = self.verified.borrow_mut();
        if memo.is_empty() {
            memo.resize(VERIFIED_SLOTS, None);
        }
        if let Some(entry) = memo.get_mut(slot(token)) {
            *entry = Some((token.into(), claims.clone()));
        }
    }
}

impl Clone for Keys {
    fn clone(&self) -> Keys {
        Keys::new(self.keys.clone(), &self.cookie_name)
    }
}

impl PartialEq for Keys {
    fn eq(&self, other: &Keys) -> bool {
        self.keys == other.keys && self.cookie_name == other.cookie_name
    }
}
impl Eq for Keys {}

impl std::fmt::Debug for Keys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Keys({})", self.keys.len())
    }
}

/// A token's memo slot, by FNV-1a (not a security boundary: a hit is checked against the
/// whole token).
fn slot(token: &[u8]) -> usize {
    let hash = token.iter().fold(0x811c_9dc5u32, |h, &b| (h ^ u32::from(b)).wrapping_mul(0x0100_0193));
    hash as usize % VERIFIED_SLOTS
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
    fn the_memo_answers_as_verify_does() {
        let keys = Keys::new(vec![key(1)], "SERVERID");
        let t = sign(&key(1), "SERVERID", &claims());
        assert_eq!(keys.sign(&claims()).as_deref(), Some(t.as_str()), "the ring signs with its first key");
        for _ in 0..2 {
            assert_eq!(keys.verify(t.as_bytes()), Some(claims()));
        }
        // A remembered token vouches for no other: a changed byte, a cut.
        let mut tampered = t.clone().into_bytes();
        let last = tampered.len() - 1;
        tampered[last] = if tampered[last] == b'A' { b'B' } else { b'A' };
        assert_eq!(keys.verify(&tampered), None);
        assert_eq!(keys.verify(&t.as_bytes()[..last]), None);
        // Every slot filled and overwritten: answers stay those of verify.
        let tokens: Vec<String> = (0..3 * VERIFIED_SLOTS as u64)
            .map(|i| sign(&key(1), "SERVERID", &Claims { first_seen: i, ..claims() }))
            .collect();
        for (i, t) in tokens.iter().enumerate().chain(tokens.iter().enumerate().rev()) {
            let got = keys.verify(t.as_bytes()).map(|c| c.first_seen);
            assert_eq!(got, Some(i as u64));
        }
        assert_eq!(Keys::new(vec![key(2)], "SERVERID").verify(t.as_bytes()), None, "another key");
        assert_eq!(Keys::new(vec![key(1)], "OTHER").verify(t.as_bytes()), None, "another cookie");
    }

    #[test]
    fn short_keys_are_refused() {
        assert!(Key::new(b"short").is_err());
        assert!(Key::new(&[0; 16]).is_ok());
        assert_eq!(format!("{:?}", key(1)), "Key(..)");
    }
}
