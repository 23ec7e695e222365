//! Cookies as real traffic sends them (RFC 6265 §5.4 / §4.1), on bytes.
//!
//! Parsing never fails: a pair that is not `name=value` is skipped, invalid UTF-8 is carried
//! through as bytes, quotes around a value are removed, spaces and tabs around pairs are
//! ignored. Duplicates are returned in order (browsers send the most specific path first).

use std::fmt::Write;

/// Pairs of a `Cookie` header value, in order.
pub fn pairs(header: &[u8]) -> impl Iterator<Item = (&[u8], &[u8])> {
    header.split(|&b| b == b';').filter_map(|pair| {
        let (name, value) = split_pair(trim(pair))?;
        let (name, value) = (trim(name), trim(value));
        if name.is_empty() {
            return None;
        }
        Some((name, unquote(value)))
    })
}

/// Every value of the cookie `name`, in order.
pub fn values<'a>(header: &'a [u8], name: &'a str) -> impl Iterator<Item = &'a [u8]> {
    pairs(header).filter(move |(n, _)| *n == name.as_bytes()).map(|(_, v)| v)
}

/// The `Cookie` header without any cookie called `name` (HAProxy `indirect`): `None` when
/// nothing is left, so the header should be removed. Other pairs keep their bytes and order.
pub fn without(header: &[u8], name: &str) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(header.len());
    for pair in header.split(|&b| b == b';') {
        let trimmed = trim(pair);
        if trimmed.is_empty() {
            continue;
        }
        let is_ours = split_pair(trimmed).is_some_and(|(n, _)| trim(n) == name.as_bytes());
        if is_ours {
            continue;
        }
        if !out.is_empty() {
            out.extend_from_slice(b"; ");
        }
        out.extend_from_slice(trimmed);
    }
    (!out.is_empty()).then_some(out)
}

/// Whether the header holds a cookie called `name` at all (valid or not).
pub fn contains(header: &[u8], name: &str) -> bool {
    values(header, name).next().is_some()
}

/// `name=value` split at the first `=`.
fn split_pair(pair: &[u8]) -> Option<(&[u8], &[u8])> {
    let eq = pair.iter().position(|&b| b == b'=')?;
    let (name, rest) = pair.split_at_checked(eq)?;
    Some((name, rest.get(1..).unwrap_or_default()))
}

fn trim(mut s: &[u8]) -> &[u8] {
    while let [first, rest @ ..] = s {
        if *first == b' ' || *first == b'\t' {
            s = rest;
        } else {
            break;
        }
    }
    while let [rest @ .., last] = s {
        if *last == b' ' || *last == b'\t' {
            s = rest;
        } else {
            break;
        }
    }
    s
}

fn unquote(v: &[u8]) -> &[u8] {
    match v {
        [b'"', inner @ .., b'"'] => inner,
        _ => v,
    }
}

/// Whether `name` is a valid cookie name (an RFC 7230 token).
pub fn is_token(name: &str) -> bool {
    !name.is_empty() && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// SameSite attribute values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
pub enum SameSite {
    Strict,
    Lax,
    None,
}

/// Everything about a `Set-Cookie` except the value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CookieAttributes {
    pub path: String,
    pub domain: Option<String>,
    pub http_only: bool,
    pub secure: bool,
    pub same_site: Option<SameSite>,
    pub max_age_secs: Option<u64>,
}

/// `name=value; Path=/; Domain=...; Max-Age=...; HttpOnly; Secure; SameSite=Lax`.
pub fn set_cookie(name: &str, value: &str, a: &CookieAttributes) -> String {
    let mut s = format!("{name}={value}; Path={}", a.path);
    if let Some(d) = &a.domain {
        let _ = write!(s, "; Domain={d}");
    }
    if let Some(age) = a.max_age_secs {
        let _ = write!(s, "; Max-Age={age}");
    }
    if a.http_only {
        s.push_str("; HttpOnly");
    }
    if a.secure {
        s.push_str("; Secure");
    }
    if let Some(ss) = a.same_site {
        let _ = write!(s, "; SameSite={ss:?}");
    }
    s
}

/// The name of the cookie a `Set-Cookie` value sets.
pub fn set_cookie_name(value: &[u8]) -> &[u8] {
    let end = value.iter().position(|&b| b == b'=' || b == b';').unwrap_or(value.len());
    trim(value.get(..end).unwrap_or(value))
}

/// HAProxy `nocache`: a response that sets our cookie must not be stored by shared caches.
/// Returns the `Cache-Control` value to set, or `None` when it already forbids that.
pub fn private_cache_control(existing: Option<&[u8]>) -> Option<String> {
    let Some(existing) = existing else {
        return Some("private".to_string());
    };
    let text = String::from_utf8_lossy(existing);
    let directives: Vec<&str> = text.split(',').map(str::trim).filter(|d| !d.is_empty()).collect();
    let lower = |d: &str| d.to_ascii_lowercase();
    if directives.iter().any(|d| {
        let d = lower(d);
        d == "private" || d == "no-store" || d.starts_with("private=")
    }) {
        return None;
    }
    // `public` and `s-maxage` speak to shared caches; `private` replaces them.
    let kept: Vec<&str> = directives
        .into_iter()
        .filter(|d| {
            let d = lower(d);
            d != "public" && !d.starts_with("s-maxage")
        })
        .collect();
    Some(std::iter::once("private").chain(kept).collect::<Vec<_>>().join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    #[test]
    fn parses_real_world_cookie_headers() {
        let cases: &[(&[u8], &[&[u8]])] = &[
            (b"SERVERID=node-1", &[b"node-1"]),
            (b"a=1; SERVERID=node-1; b=2", &[b"node-1"]),
            (b"a=1;SERVERID=node-1;b=2", &[b"node-1"]),
            (b"  a=1 ;\tSERVERID = node-1 ; ", &[b"node-1"]),
            (b"SERVERID=\"node-1\"", &[b"node-1"]),
            (b"SERVERID=x; SERVERID=y", &[b"x", b"y"]),
            (b"SERVERID=", &[b""]),
            (b"SERVERID", &[]),
            (b"=SERVERID", &[]),
            (b"serverid=x", &[]),
            (b"SERVERID=a=b", &[b"a=b"]),
            (b"\xff\xfe=1; SERVERID=\xc3\x28", &[b"\xc3\x28"]),
            (b"", &[]),
            (b";;;", &[]),
        ];
        for &(header, want) in cases {
            let got: Vec<&[u8]> = values(header, "SERVERID").collect();
            assert_eq!(got, want, "{:?}", String::from_utf8_lossy(header));
        }
    }

    #[test]
    fn large_headers_are_fine() {
        let mut h = Vec::new();
        for i in 0..1200 {
            h.extend_from_slice(format!("c{i}=v; ").as_bytes());
        }
        h.extend_from_slice(b"SERVERID=node-3");
        assert!(h.len() > 8 * 1024);
        assert_eq!(values(&h, "SERVERID").collect::<Vec<_>>(), vec![&b"node-3"[..]]);
    }

    #[test]
    fn removes_only_our_cookie() {
        assert_eq!(without(b"a=1; SERVERID=x; b=2", "SERVERID").as_deref(), Some(&b"a=1; b=2"[..]));
        assert_eq!(without(b"SERVERID=x;a=\"q\"", "SERVERID").as_deref(), Some(&b"a=\"q\""[..]));
        assert_eq!(without(b"SERVERID=x; SERVERID=y", "SERVERID"), None);
        assert_eq!(without(b"SERVERID", "SERVERID").as_deref(), Some(&b"SERVERID"[..]));
        assert_eq!(without(b"a=1", "SERVERID").as_deref(), Some(&b"a=1"[..]));
        assert!(contains(b"a=1; SERVERID=", "SERVERID"));
        assert!(!contains(b"a=1; SERVERIDX=1", "SERVERID"));
    }

    #[test]
    fn builds_set_cookie() {
        let a = CookieAttributes {
            path: "/".into(),
            domain: Some("example.org".into()),
            http_only: true,
            secure: true,
            same_site: Some(SameSite::Lax),
            max_age_secs: Some(86400),
        };
        assert_eq!(
            set_cookie("SERVERID", "v", &a),
            "SERVERID=v; Path=/; Domain=example.org; Max-Age=86400; HttpOnly; Secure; SameSite=Lax"
        );
        let plain = CookieAttributes {
            path: "/".into(),
            domain: None,
            http_only: false,
            secure: false,
            same_site: None,
            max_age_secs: None,
        };
        assert_eq!(set_cookie("S", "v", &plain), "S=v; Path=/");
        assert_eq!(set_cookie_name(b"SERVERID=v; Path=/"), b"SERVERID");
        assert_eq!(set_cookie_name(b" other =v"), b"other");
    }

    #[test]
    fn nocache_makes_responses_private() {
        assert_eq!(private_cache_control(None).as_deref(), Some("private"));
        assert_eq!(private_cache_control(Some(b"public, max-age=600")).as_deref(), Some("private, max-age=600"));
        assert_eq!(private_cache_control(Some(b"max-age=60, s-maxage=600")).as_deref(), Some("private, max-age=60"));
        assert_eq!(private_cache_control(Some(b"no-store")), None);
        assert_eq!(private_cache_control(Some(b"Private")), None);
        assert_eq!(private_cache_control(Some(b"\xff")).as_deref(), Some("private, \u{fffd}"));
    }

    #[test]
    fn tokens() {
        assert!(is_token("SERVERID"));
        assert!(is_token("server-pro-ha"));
        assert!(!is_token("a b"));
        assert!(!is_token("a;b"));
        assert!(!is_token(""));
    }
}
