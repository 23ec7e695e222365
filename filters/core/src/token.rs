//! Affinity tokens: signed (a node of the nodes table, readable) or sealed (an endpoint
//! address, encrypted), with first-seen and last-seen times.
//!
//! Signed wire form (cookie-safe, opaque to clients): `base64url(payload) "." base64url(tag)` with
//! payload = version (1 byte, 1) | first_seen (u64 BE, Unix seconds) | last_seen (u64 BE) |
//! node name (1–64 bytes), and tag = the first 16 bytes of
//! HMAC-SHA256(key, "tether-affinity-v1\0" | cookie name | "\0" | payload). Binding the cookie
//! name means a token minted for one cookie is not accepted for another. The first key signs;
//! every key verifies (rotation). Anything malformed, tampered or signed with an unknown key
//! does not verify.
//!
//! Sealed wire form (issue 15: no nodes table, the cookie carries the endpoint that serves the
//! session): `base64url(nonce | ciphertext | tag)`, AES-256-GCM-SIV (RFC 8452) with a key
//! derived from each configured key (HMAC-SHA256(key, "tether-affinity-seal-key-v1")), the
//! cookie name as associated data, and plaintext = version (1 byte, 2) | first_seen (u64 BE) |
//! last_seen (u64 BE) | 4 or 16 (1 byte) | IP | port (u16 BE) | endpoint name (0–64 bytes).
//! Clients can neither read the address nor choose one. The nonce is last-seen and a per-VM
//! counter; GCM-SIV is misuse-resistant, so two VMs that happen to pick the same nonce reveal
//! only that two cookies hold the same plaintext, never the key stream or a forgery.

use aes_gcm_siv::aead::{Aead, KeyInit, Payload};
use aes_gcm_siv::{Aes256GcmSiv, Nonce};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use std::cell::{Cell, RefCell};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use subtle::ConstantTimeEq;

type HmacSha256 = Hmac<Sha256>;

const VERSION: u8 = 1;
const TAG_LEN: usize = 16;
const CONTEXT: &[u8] = b"tether-affinity-v1\0";
/// Longest token we try to decode: a sealed one of nonce 12, plaintext 1 + 16 + 1 + 16 + 2 + 64
/// and tag 16 bytes is 171 characters of base64url; a signed one at most 136.
const MAX_TOKEN_LEN: usize = 172;

const SEALED_VERSION: u8 = 2;
const NONCE_LEN: usize = 12;
const SEAL_CONTEXT: &[u8] = b"tether-affinity-sealed-v1\0";
const SEAL_KEY_CONTEXT: &[u8] = b"tether-affinity-seal-key-v1";
/// The longest endpoint name a sealed token keeps; a longer one keeps its last 64 bytes (a
/// pod's name ends in what tells it from its siblings).
pub const MAX_ENDPOINT_NAME: usize = 64;

/// What a genuine token says.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Claims {
    /// Signed and plain: the node's name in the nodes table. Sealed: the endpoint's name from
    /// its metadata, empty when it has none.
    pub node: String,
    /// Sealed only: the endpoint that serves the session.
    pub endpoint: Option<SocketAddr>,
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
    /// The AEAD for sealed tokens, its key derived from this one and expanded once.
    sealer: Aes256GcmSiv,
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
        let mut derive = keyed.clone();
        derive.update(SEAL_KEY_CONTEXT);
        let seal_key = derive.finalize().into_bytes();
        // A 32-byte key is the one length AES-256-GCM-SIV takes: this cannot fail.
        let sealer =
            Aes256GcmSiv::new_from_slice(&seal_key).map_err(|_| "cannot derive the sealing key".to_string())?;
        Ok(Key { bytes: bytes.to_vec(), keyed, sealer })
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

/// Seals `claims` (which must name an endpoint) with `key`, under `nonce`.
pub fn seal(key: &Key, cookie_name: &str, claims: &Claims, nonce: [u8; NONCE_LEN]) -> Option<String> {
    let endpoint = claims.endpoint?;
    let name = claims.node.as_bytes();
    let name = name.get(name.len().saturating_sub(MAX_ENDPOINT_NAME)..).unwrap_or_default();
    let mut plain = Vec::with_capacity(36 + name.len());
    plain.push(SEALED_VERSION);
    plain.extend_from_slice(&claims.first_seen.to_be_bytes());
    plain.extend_from_slice(&claims.last_seen.to_be_bytes());
    match endpoint.ip() {
        IpAddr::V4(ip) => {
            plain.push(4);
            plain.extend_from_slice(&ip.octets());
        }
        IpAddr::V6(ip) => {
            plain.push(16);
            plain.extend_from_slice(&ip.octets());
        }
    }
    plain.extend_from_slice(&endpoint.port().to_be_bytes());
    plain.extend_from_slice(name);
    let aad = seal_aad(cookie_name);
    let nonce = Nonce::from(nonce);
    let sealed = key.sealer.encrypt(&nonce, Payload { msg: &plain, aad: &aad }).ok()?;
    let mut wire = Vec::with_capacity(NONCE_LEN + sealed.len());
    wire.extend_from_slice(&nonce);
    wire.extend_from_slice(&sealed);
    Some(URL_SAFE_NO_PAD.encode(wire))
}

fn seal_aad(cookie_name: &str) -> Vec<u8> {
    [SEAL_CONTEXT, cookie_name.as_bytes()].concat()
}

/// Opens a sealed token with any of `keys`; `None` for anything that is not a genuine one.
pub fn open(keys: &[Key], cookie_name: &str, token: &[u8]) -> Option<Claims> {
    if token.len() > MAX_TOKEN_LEN || token.contains(&b'.') {
        return None;
    }
    let wire = URL_SAFE_NO_PAD.decode(token).ok()?;
    let (nonce, sealed) = wire.split_at_checked(NONCE_LEN)?;
    let nonce = Nonce::try_from(nonce).ok()?;
    let aad = seal_aad(cookie_name);
    let plain = keys.iter().find_map(|k| k.sealer.decrypt(&nonce, Payload { msg: sealed, aad: &aad }).ok())?;
    let (&version, rest) = plain.split_first()?;
    if version != SEALED_VERSION {
        return None;
    }
    let (first, rest) = rest.split_at_checked(8)?;
    let (last, rest) = rest.split_at_checked(8)?;
    let (&family, rest) = rest.split_first()?;
    let (ip, rest) = match family {
        4 => {
            let (ip, rest) = rest.split_at_checked(4)?;
            (IpAddr::V4(Ipv4Addr::from(<[u8; 4]>::try_from(ip).ok()?)), rest)
        }
        16 => {
            let (ip, rest) = rest.split_at_checked(16)?;
            (IpAddr::V6(Ipv6Addr::from(<[u8; 16]>::try_from(ip).ok()?)), rest)
        }
        _ => return None,
    };
    let (port, name) = rest.split_at_checked(2)?;
    Some(Claims {
        node: std::str::from_utf8(name).ok()?.to_string(),
        endpoint: Some(SocketAddr::new(ip, u16::from_be_bytes(port.try_into().ok()?))),
        first_seen: u64::from_be_bytes(first.try_into().ok()?),
        last_seen: u64::from_be_bytes(last.try_into().ok()?),
    })
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
        endpoint: None,
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
    /// Counts the tokens this VM sealed: half of each nonce (the other half is last-seen).
    sealed: Cell<u32>,
}

/// A token the keys verified, and what it says.
type Verified = (Box<[u8]>, Claims);

/// Slots in the memo (direct-mapped by a hash of the token): at most ~40 KB per VM when full.
pub const VERIFIED_SLOTS: usize = 256;

impl Keys {
    /// The keys of the cookie named `cookie_name` (tokens are bound to it).
    pub fn new(keys: Vec<Key>, cookie_name: &str) -> Keys {
        Keys { keys, cookie_name: cookie_name.to_string(), verified: RefCell::new(Vec::new()), sealed: Cell::new(0) }
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

    /// [`seal`] with the signing key, remembered as [`Keys::sign`] does.
    pub fn seal(&self, claims: &Claims) -> Option<String> {
        let count = self.sealed.get();
        self.sealed.set(count.wrapping_add(1));
        let mut nonce = [0u8; NONCE_LEN];
        for (byte, from) in nonce.iter_mut().zip(claims.last_seen.to_be_bytes().into_iter().chain(count.to_be_bytes()))
        {
            *byte = from;
        }
        let token = seal(self.signer()?, &self.cookie_name, claims, nonce)?;
        self.remember(token.as_bytes(), claims);
        Some(token)
    }

    /// [`verify`] for this cookie, remembered: a token verified before answers from the memo.
    pub fn verify(&self, token: &[u8]) -> Option<Claims> {
        self.remembered(token, false, |t| verify(&self.keys, &self.cookie_name, t))
    }

    /// [`open`] for this cookie, remembered as [`Keys::verify`] is.
    pub fn open(&self, token: &[u8]) -> Option<Claims> {
        self.remembered(token, true, |t| open(&self.keys, &self.cookie_name, t))
    }

    /// A token's claims from the memo or, failing that, from `check`; `sealed` says which kind
    /// is asked for (a memo entry of the other kind does not answer).
    fn remembered(&self, token: &[u8], sealed: bool, check: impl FnOnce(&[u8]) -> Option<Claims>) -> Option<Claims> {
        if token.len() > MAX_TOKEN_LEN {
            return None;
        }
        if let Some(Some((known, claims))) = self.verified.borrow().get(slot(token)) {
            // Constant time: the timing must not tell how much of a stranger's token matched.
            if known.len() == token.len() && same_in_constant_time(known, token) && claims.endpoint.is_some() == sealed
            {
                return Some(claims.clone());
            }
        }
        let claims = check(token)?;
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

/// Whether `a` and `b` (the same length) hold the same bytes, in a time that does not depend on
/// where they differ: the differences of every eight bytes are OR-ed together, with no branch on
/// the data, and only the total is judged (by `subtle`, which keeps the compiler from
/// short-cutting it). `subtle`'s slice comparison does the same byte by byte: ~20 Wasm
/// instructions a byte, the largest part of a remembered token's check.
fn same_in_constant_time(a: &[u8], b: &[u8]) -> bool {
    let (mut a_words, mut b_words) = (a.chunks_exact(8), b.chunks_exact(8));
    let mut difference = 0u64;
    for (x, y) in (&mut a_words).zip(&mut b_words) {
        difference |= word(x) ^ word(y);
    }
    for (x, y) in a_words.remainder().iter().zip(b_words.remainder()) {
        difference |= u64::from(x ^ y);
    }
    a.len() == b.len() && bool::from(difference.ct_eq(&0))
}

/// Eight bytes as one number (`chunk` is eight long).
fn word(chunk: &[u8]) -> u64 {
    let mut eight = [0u8; 8];
    eight.copy_from_slice(chunk);
    u64::from_ne_bytes(eight)
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

    #[test]
    fn constant_time_comparison_finds_a_difference_anywhere() {
        for len in [0, 1, 7, 8, 9, 16, 66, 67] {
            let a: Vec<u8> = (0..len).map(|i| i as u8).collect();
            assert!(same_in_constant_time(&a, &a.clone()), "{len}");
            for at in 0..len {
                let mut b = a.clone();
                b[at] ^= 0x80;
                assert!(!same_in_constant_time(&a, &b), "{len} bytes, differing at {at}");
            }
            assert!(!same_in_constant_time(&a, &[a.as_slice(), &[0]].concat()), "a longer one, {len}");
        }
    }

    fn claims() -> Claims {
        Claims { node: "server-pro-ha-2".into(), first_seen: 1_700_000_000, last_seen: 1_700_000_600, endpoint: None }
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
    fn sealed_known_answer_and_round_trip() {
        // Computed independently with Python's cryptography (AESGCMSIV) and hmac. A change
        // here breaks every live sealed session, so it must be deliberate.
        let c = Claims { endpoint: Some("10.1.2.3:8080".parse().unwrap()), node: "server-pro-0".into(), ..claims() };
        let nonce = [0, 0, 0, 0, 0x65, 0x53, 0xf3, 0x58, 0, 0, 0, 7];
        let t = seal(&Key::new(b"0123456789abcdef").unwrap(), "SERVERID", &c, nonce).unwrap();
        assert_eq!(t, "AAAAAGVT81gAAAAHTUw2t4W9yn9hc-2PhZTJS0VVuXm3Utv2QwKnPiGd8pdQaKmF6s2GhpfYrtmO3912LU0ktA");
        assert_eq!(open(&[Key::new(b"0123456789abcdef").unwrap()], "SERVERID", t.as_bytes()), Some(c.clone()));
        // The longest: IPv6 and a name past 64 bytes (its last 64 kept) fits MAX_TOKEN_LEN.
        let long = "x".repeat(10) + &"n".repeat(64);
        let v6 = Claims { endpoint: Some("[2001:db8::1]:443".parse().unwrap()), node: long.clone(), ..claims() };
        let keys = Keys::new(vec![key(1)], "SERVERID");
        let t = keys.seal(&v6).unwrap();
        assert!(t.len() <= MAX_TOKEN_LEN, "{}", t.len());
        let fresh = Keys::new(vec![key(1)], "SERVERID");
        assert_eq!(fresh.open(t.as_bytes()).map(|c| c.node), Some(long[10..].to_string()));
        // Sealing twice gives two tokens (the nonce counts), both genuine.
        let (a, b) = (keys.seal(&c).unwrap(), keys.seal(&c).unwrap());
        assert_ne!(a, b);
        assert_eq!(fresh.open(a.as_bytes()), Some(c.clone()));
        assert_eq!(fresh.open(b.as_bytes()), Some(c.clone()));
        // Claims without an endpoint are not sealed; a signed token does not open, nor a
        // sealed one verify.
        assert_eq!(keys.seal(&claims()), None);
        assert_eq!(fresh.open(sign(&key(1), "SERVERID", &claims()).as_bytes()), None);
        assert_eq!(fresh.verify(a.as_bytes()), None);
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
