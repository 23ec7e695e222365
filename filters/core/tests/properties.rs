//! Property tests (proptest, native only): invariants that must hold for every input, not just
//! the examples in the unit tests. Failing cases shrink to a minimal input; proptest stores them
//! in `properties.proptest-regressions` next to this file, and they are replayed first ever after.
#![cfg(not(target_arch = "wasm32"))]
// Test code: a failed unwrap or index is a failed test, as in #[test] functions.
#![allow(clippy::unwrap_used, clippy::indexing_slicing, clippy::panic)]

use base64::Engine;
use proptest::prelude::*;
use std::net::{IpAddr, SocketAddr};
use tether_core::body_limit::{check_headers, DeclaredLength, HeadersVerdict, Limit};
use tether_core::hash::{key_hash, Maglev};
use tether_core::token::{open, seal, sign, verify, Claims, Key};
use tether_core::uri_hash::{uri_key, KeyRule};
use tether_core::{cookie, forwarded};

fn key() -> Key {
    Key::new(b"property-test-key-0123456789").unwrap()
}

fn claims() -> impl Strategy<Value = Claims> {
    ("[a-z0-9-]{1,20}", any::<u32>(), any::<u32>()).prop_map(|(node, a, b)| Claims {
        node,
        endpoint: None,
        first_seen: u64::from(a.min(b)),
        last_seen: u64::from(a.max(b)),
    })
}

/// Claims of a sealed token: an endpoint (IPv4 or IPv6) and a name that may be empty.
fn sealed_claims() -> impl Strategy<Value = Claims> {
    let ip = prop_oneof![any::<[u8; 4]>().prop_map(IpAddr::from), any::<[u8; 16]>().prop_map(IpAddr::from),];
    (claims(), "[a-z0-9-]{0,64}", ip, any::<u16>()).prop_map(|(c, node, ip, port)| Claims {
        node,
        endpoint: Some(SocketAddr::new(ip, port)),
        ..c
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    /// A token verifies, with the same claims, exactly when it is untampered.
    #[test]
    fn a_token_verifies_only_if_untampered(c in claims(), at in any::<prop::sample::Index>(), flip in 1u8..=255) {
        let token = sign(&key(), "SERVERID", &c);
        prop_assert_eq!(verify(&[key()], "SERVERID", token.as_bytes()), Some(c.clone()));
        // Any changed byte, anywhere, breaks it.
        let mut bytes = token.into_bytes();
        let i = at.index(bytes.len());
        bytes[i] ^= flip;
        prop_assert_eq!(verify(&[key()], "SERVERID", &bytes), None);
    }

    /// A token is bound to its cookie name and to the key.
    #[test]
    fn a_token_is_bound_to_name_and_key(c in claims()) {
        let token = sign(&key(), "SERVERID", &c);
        prop_assert_eq!(verify(&[key()], "OTHER", token.as_bytes()), None);
        let other = Key::new(b"another-key-0123456789abcdef").unwrap();
        prop_assert_eq!(verify(&[other], "SERVERID", token.as_bytes()), None);
    }

    /// A sealed token opens, with the same claims, exactly when it is untampered, and only for
    /// its cookie name and key; it shows neither the address nor the name.
    #[test]
    fn a_sealed_token_opens_only_if_untampered(
        c in sealed_claims(), nonce in any::<[u8; 12]>(), at in any::<prop::sample::Index>(), flip in 1u8..=255,
    ) {
        let token = seal(&key(), "SERVERID", &c, nonce).unwrap();
        prop_assert_eq!(open(&[key()], "SERVERID", token.as_bytes()), Some(c.clone()));
        prop_assert_eq!(open(&[key()], "OTHER", token.as_bytes()), None);
        let other = Key::new(b"another-key-0123456789abcdef").unwrap();
        prop_assert_eq!(open(std::slice::from_ref(&other), "SERVERID", token.as_bytes()), None);
        prop_assert_eq!(open(&[other, key()], "SERVERID", token.as_bytes()), Some(c.clone()), "rotation");
        let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(&token).unwrap();
        let shown = |needle: &[u8]| !needle.is_empty() && raw.windows(needle.len()).any(|w| w == needle);
        prop_assert!(!shown(c.node.as_bytes()) || c.node.len() < 4, "the name is readable");
        let mut bytes = token.into_bytes();
        let i = at.index(bytes.len());
        bytes[i] ^= flip;
        prop_assert_eq!(open(&[key()], "SERVERID", &bytes), None);
    }

    /// Garbage never opens and never panics.
    #[test]
    fn arbitrary_bytes_never_open(bytes in prop::collection::vec(any::<u8>(), 0..240)) {
        prop_assert_eq!(open(&[key()], "SERVERID", &bytes), None);
    }

    /// Garbage never verifies and never panics.
    #[test]
    fn arbitrary_bytes_never_verify(bytes in prop::collection::vec(any::<u8>(), 0..200)) {
        prop_assert_eq!(verify(&[key()], "SERVERID", &bytes), None);
    }

    /// The hash choice is a pure function of the key and the nodes: stable across rebuilt
    /// tables, and always one of the nodes.
    #[test]
    fn the_hash_choice_is_stable_and_within_the_nodes(
        key in prop::collection::vec(any::<u8>(), 0..64),
        weights in prop::collection::vec(1u32..5, 1..12),
    ) {
        let names: Vec<String> = (0..weights.len()).map(|i| format!("node-{i}")).collect();
        let nodes: Vec<(&str, u32)> = names.iter().map(String::as_str).zip(weights.iter().copied()).collect();
        let (a, b) = (Maglev::new(&nodes), Maglev::new(&nodes));
        let choice = a.lookup(key_hash(&key));
        prop_assert_eq!(choice, b.lookup(key_hash(&key)));
        prop_assert!(choice.is_some_and(|i| i < nodes.len()));
    }

    /// The body counter never lets more than the limit through, whatever the chunking; exactly
    /// the limit passes; once a chunk is refused the body is over the limit.
    #[test]
    fn the_body_counter_never_admits_more_than_the_limit(
        limit in 0u64..100_000,
        chunks in prop::collection::vec(0usize..40_000, 0..50),
    ) {
        let HeadersVerdict::Count(mut counter) = check_headers(Limit::Bytes(limit), DeclaredLength::Absent) else {
            return Err(TestCaseError::fail("a body without Content-Length must be counted"));
        };
        let mut admitted: u64 = 0;
        let mut total: u64 = 0;
        for chunk in chunks {
            total += chunk as u64;
            if counter.admit(chunk) {
                admitted += chunk as u64;
                prop_assert!(admitted <= limit);
            } else {
                prop_assert!(total > limit, "refused at {total} bytes with a limit of {limit}");
                break;
            }
        }
        prop_assert_eq!(admitted, counter.seen());
    }

    /// At the edge: a body of exactly the limit passes, one byte more is refused, however it is
    /// cut into chunks.
    #[test]
    fn exactly_the_limit_passes_and_one_byte_more_does_not(
        limit in 0u64..10_000,
        cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..8),
        extra in 0u64..2,
    ) {
        let total = limit + extra;
        let mut points: Vec<u64> = cuts.iter().map(|c| c.index(total as usize + 1) as u64).collect();
        points.extend([0, total]);
        points.sort_unstable();
        let HeadersVerdict::Count(mut counter) = check_headers(Limit::Bytes(limit), DeclaredLength::Absent) else {
            return Err(TestCaseError::fail("a body without Content-Length must be counted"));
        };
        let all_admitted = points.windows(2).all(|w| counter.admit((w[1] - w[0]) as usize));
        prop_assert_eq!(all_admitted, extra == 0, "limit {}, body {}, cuts {:?}", limit, total, points);
    }

    /// A declared length over the limit is refused before any byte; at or under it, counted.
    #[test]
    fn a_declared_length_is_judged_at_the_headers(limit in 0u64..1 << 40, declared in 0u64..1 << 41) {
        let verdict = check_headers(Limit::Bytes(limit), DeclaredLength::Bytes(declared));
        prop_assert_eq!(matches!(verdict, HeadersVerdict::Reject { .. }), declared > limit);
    }

    /// Removing our cookie (indirect) leaves no cookie of our name and every other one intact.
    #[test]
    fn without_removes_ours_and_keeps_the_rest(
        others in prop::collection::vec(("[a-zA-Z][a-zA-Z0-9_]{0,8}", "[a-zA-Z0-9=._-]{0,12}"), 0..6),
        ours in prop::collection::vec("[a-zA-Z0-9._-]{0,12}", 1..3),
    ) {
        let others: Vec<(String, String)> = others.into_iter().filter(|(n, _)| n != "SERVERID").collect();
        let mut parts: Vec<String> = others.iter().map(|(n, v)| format!("{n}={v}")).collect();
        for (i, v) in ours.iter().enumerate() {
            parts.insert(i.min(parts.len()), format!("SERVERID={v}"));
        }
        let header = parts.join("; ");
        let rest = cookie::without(header.as_bytes(), "SERVERID").unwrap_or_default();
        prop_assert!(!cookie::contains(&rest, "SERVERID"), "{header:?} -> {:?}", String::from_utf8_lossy(&rest));
        let kept: Vec<(Vec<u8>, Vec<u8>)> = cookie::pairs(&rest).map(|(n, v)| (n.to_vec(), v.to_vec())).collect();
        let expected: Vec<(Vec<u8>, Vec<u8>)> =
            others.iter().map(|(n, v)| (n.as_bytes().to_vec(), v.as_bytes().to_vec())).collect();
        prop_assert_eq!(kept, expected);
    }

    /// Parsers facing the client never panic, whatever the bytes.
    #[test]
    fn client_facing_parsers_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..300), depth in 0usize..5) {
        let _ = cookie::pairs(&bytes).count();
        let _ = cookie::without(&bytes, "SERVERID");
        let _ = forwarded::parse_xff(&[&bytes, &bytes]);
        let key = uri_key(&bytes, KeyRule { depth, len: 0, whole: false, path_only: true });
        prop_assert!(key.len() <= bytes.len());
    }
}
