//! A header map as a policy sees it: read in place from the one buffer the host hands over
//! (proxy-wasm's encoding), plus the edits decided since, in the order they were decided.
//!
//! The edits are the header part of a plan: the host adapter writes them back with as few
//! host calls as it can, and policies that run later in the same callback (tether-edge runs
//! five) see the map as the earlier ones left it.

use std::borrow::Borrow;
use std::ops::{Deref, Range};
use std::rc::Rc;

/// Text a plan writes: the program's own (`&'static`), shared with the configuration (an `Rc`:
/// no copy per request), or made for this request. An allocation and its free cost ~870 Wasm
/// instructions; most names and many values of a plan need none.
pub enum Shared<T: ?Sized + ToOwned + 'static> {
    Static(&'static T),
    Rc(Rc<T>),
    Owned(T::Owned),
}

/// A header name (lower case).
pub type Name = Shared<str>;
/// A header value.
pub type Value = Shared<[u8]>;

impl<T: ?Sized + ToOwned + 'static> Deref for Shared<T> {
    type Target = T;
    fn deref(&self) -> &T {
        match self {
            Shared::Static(t) => t,
            Shared::Rc(t) => t,
            Shared::Owned(t) => t.borrow(),
        }
    }
}

impl<T: ?Sized + ToOwned + 'static> Clone for Shared<T> {
    fn clone(&self) -> Self {
        match self {
            Shared::Static(t) => Shared::Static(t),
            Shared::Rc(t) => Shared::Rc(Rc::clone(t)),
            Shared::Owned(t) => Shared::Owned(t.borrow().to_owned()),
        }
    }
}

impl<T: ?Sized + ToOwned + PartialEq + 'static> PartialEq for Shared<T> {
    fn eq(&self, other: &Self) -> bool {
        **self == **other
    }
}
impl<T: ?Sized + ToOwned + Eq + 'static> Eq for Shared<T> {}

impl<T: ?Sized + ToOwned + std::fmt::Debug + 'static> std::fmt::Debug for Shared<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        (**self).fmt(f)
    }
}

impl From<&'static str> for Name {
    fn from(s: &'static str) -> Name {
        Shared::Static(s)
    }
}
impl From<String> for Name {
    fn from(s: String) -> Name {
        Shared::Owned(s)
    }
}
impl From<&Rc<str>> for Name {
    fn from(s: &Rc<str>) -> Name {
        Shared::Rc(Rc::clone(s))
    }
}
impl From<&'static str> for Value {
    fn from(s: &'static str) -> Value {
        Shared::Static(s.as_bytes())
    }
}
impl From<&'static [u8]> for Value {
    fn from(s: &'static [u8]) -> Value {
        Shared::Static(s)
    }
}
impl From<String> for Value {
    fn from(s: String) -> Value {
        Shared::Owned(s.into_bytes())
    }
}
impl From<Vec<u8>> for Value {
    fn from(v: Vec<u8>) -> Value {
        Shared::Owned(v)
    }
}
impl From<&Rc<str>> for Value {
    fn from(v: &Rc<str>) -> Value {
        // The same allocation, seen as bytes: no copy.
        Shared::Rc(Rc::<[u8]>::from(Rc::clone(v)))
    }
}

/// One change to a header map, as Envoy applies it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Edit {
    /// Every line of the name goes; this value is added (Envoy's `replace_header_map_value`).
    Set(Value),
    /// Every line of the name goes.
    Remove,
    /// One more line, the existing ones stay (`add_header_map_value`; `Set-Cookie`).
    Add(Value),
}

/// A named edit (name lower case).
pub type NamedEdit = (Name, Edit);

#[derive(Debug, Clone, Default)]
pub struct HeaderMap {
    /// proxy-wasm's encoding: count, (key length, value length) pairs, then each key and value
    /// NUL-terminated.
    raw: Vec<u8>,
    /// Where each line's name and value are in `raw`.
    lines: Vec<(Range<usize>, Range<usize>)>,
    edits: Vec<NamedEdit>,
}

impl HeaderMap {
    /// The map in the host's encoding; a malformed buffer yields the lines that are whole.
    /// Names are read in lower case, as policies look them up: HTTP names are case-insensitive,
    /// and while Envoy hands them over lower case, another host (nginx's ngx_wasm_module) gives
    /// them as the client wrote them (`Cookie`).
    pub fn from_raw(mut raw: Vec<u8>) -> HeaderMap {
        let lines = index(&raw);
        for (name, _) in &lines {
            make_lowercase(&mut raw, name.clone());
        }
        HeaderMap { raw, lines, edits: Vec::new() }
    }

    /// The map in the host's encoding from a host whose names are lower case already: Envoy's
    /// header maps hold no other (its codecs lower names as they parse them, and every API that
    /// adds one, the proxy-wasm host's included, lowers it first). Lowering them again costs
    /// ~1k Wasm instructions per map read.
    pub fn from_lowercase_raw(raw: Vec<u8>) -> HeaderMap {
        let lines = index(&raw);
        HeaderMap { raw, lines, edits: Vec::new() }
    }

    /// A map of these lines (tests, and hosts that hand over pairs).
    pub fn from_pairs<'a>(pairs: impl IntoIterator<Item = (&'a str, &'a str)>) -> HeaderMap {
        let pairs: Vec<(&[u8], &[u8])> = pairs.into_iter().map(|(k, v)| (k.as_bytes(), v.as_bytes())).collect();
        HeaderMap::from_raw(HeaderMap::encode(&pairs))
    }

    /// Every line in order, names lower case (as bytes: no UTF-8 check per line): the host's
    /// lines of names no `Set`/`Remove` has touched, then the lines the edits left, in order.
    pub fn iter(&self) -> impl Iterator<Item = (&[u8], &[u8])> {
        let original = self.original().filter(move |(n, _)| !self.replaced(n));
        original.chain(self.surviving_edits())
    }

    /// The first line named `name` (lower case), as Envoy's `get_header_map_value` answers.
    pub fn get(&self, name: &str) -> Option<&[u8]> {
        let name = name.as_bytes();
        let added = |edits| first_added(edits, name);
        // The last edit that replaced or removed the name decides where its lines begin.
        let replaced = self.edits.iter().rposition(|(n, e)| n.as_bytes() == name && !matches!(e, Edit::Add(_)));
        match replaced {
            None => self.original_value(name).or_else(|| added(&self.edits)),
            Some(at) => match self.edits.get(at) {
                Some((_, Edit::Set(v))) => Some(&**v),
                _ => added(self.edits.get(at + 1..).unwrap_or_default()),
            },
        }
    }

    /// Every line named `name`, in order.
    pub fn all<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a [u8]> + 'a {
        let name = name.as_bytes();
        // One name: whether an edit took its host lines away is asked once, not per line.
        let replaced = self.replaced(name);
        let original = self.original().filter(move |(n, _)| !replaced && *n == name).map(|(_, v)| v);
        let edited = self.edits.iter().enumerate().filter(move |(_, (n, _))| n.as_bytes() == name);
        original.chain(edited.filter_map(|(i, (_, e))| match e {
            Edit::Set(v) | Edit::Add(v) if self.survives(i) => Some(&**v),
            _ => None,
        }))
    }

    pub fn contains(&self, name: &str) -> bool {
        self.get(name).is_some()
    }

    /// Records an edit; later reads see it.
    pub fn edit(&mut self, name: impl Into<Name>, edit: Edit) {
        self.edits.push((name.into(), edit));
    }

    /// Records every edit of a plan, in order.
    pub fn apply(&mut self, edits: Vec<NamedEdit>) {
        if self.edits.is_empty() {
            self.edits = edits; // the first plan's edits as they are: no copy
        } else {
            self.edits.extend(edits);
        }
    }

    /// The edits recorded so far, in order: what the host must be told.
    pub fn edits(&self) -> &[NamedEdit] {
        &self.edits
    }

    /// How many lines the map has now.
    pub fn len(&self) -> usize {
        self.iter().count()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The host's encoding of `pairs`: what `from_raw` reads (and a local reply's headers).
    pub fn encode(pairs: &[(&[u8], &[u8])]) -> Vec<u8> {
        let bytes: usize = pairs.iter().map(|(k, v)| k.len() + v.len() + 2).sum();
        // One allocation of the exact size: growing it line by line would reallocate and copy.
        let mut out = Vec::with_capacity(4 + 8 * pairs.len() + bytes);
        out.extend_from_slice(&u32::try_from(pairs.len()).unwrap_or(u32::MAX).to_le_bytes());
        for (k, v) in pairs {
            out.extend_from_slice(&u32::try_from(k.len()).unwrap_or(u32::MAX).to_le_bytes());
            out.extend_from_slice(&u32::try_from(v.len()).unwrap_or(u32::MAX).to_le_bytes());
        }
        for (k, v) in pairs {
            out.extend_from_slice(k);
            out.push(0);
            out.extend_from_slice(v);
            out.push(0);
        }
        out
    }

    /// The whole map as it is now, in the host's encoding (what [`HeaderMap::iter`] yields).
    pub fn encoded(&self) -> Vec<u8> {
        let lines: Vec<_> = self.iter().collect();
        HeaderMap::encode(&lines)
    }

    /// Whether a `Set` or `Remove` took the host's lines named `name` away.
    fn replaced(&self, name: &[u8]) -> bool {
        self.edits.iter().any(|(n, e)| n.as_bytes() == name && !matches!(e, Edit::Add(_)))
    }

    /// The lines the edits leave, in order.
    fn surviving_edits(&self) -> impl Iterator<Item = (&[u8], &[u8])> {
        self.edits.iter().enumerate().filter_map(move |(i, (n, e))| match e {
            Edit::Set(v) | Edit::Add(v) if self.survives(i) => Some((n.as_bytes(), &**v)),
            _ => None,
        })
    }

    /// Whether edit `i` leaves a line: a `Set` or `Add` that no later `Set` or `Remove` of its
    /// name took away.
    fn survives(&self, i: usize) -> bool {
        let Some((n, e)) = self.edits.get(i) else { return false };
        let later = self.edits.get(i + 1..).unwrap_or_default();
        !matches!(e, Edit::Remove) && !later.iter().any(|(m, f)| !matches!(f, Edit::Add(_)) && m == n)
    }

    /// How many lines named `name` (lower case) the host handed over, before any edit.
    pub fn original_count(&self, name: &str) -> usize {
        self.original().filter(|(n, _)| *n == name.as_bytes()).count()
    }

    /// The first host line named `name`: names compared by length first, a value sliced only
    /// for the line that matches (every policy asks for a few headers; this is the hot loop).
    fn original_value(&self, name: &[u8]) -> Option<&[u8]> {
        let line = self.lines.iter().find(|(n, _)| n.len() == name.len() && self.raw.get(n.clone()) == Some(name));
        line.and_then(|(_, v)| self.raw.get(v.clone()))
    }

    fn original(&self) -> impl Iterator<Item = (&[u8], &[u8])> {
        self.lines.iter().filter_map(|(name, value)| Some((self.raw.get(name.clone())?, self.raw.get(value.clone())?)))
    }
}

/// Lowers the ASCII letters of `buffer[range]`, eight bytes at a time (a host that keeps the
/// client's case, or one that did not say). A name's last word may reach past its end into its
/// value (the encoding puts a NUL and the value after each name); only the name's own bytes are
/// changed. Byte by byte this cost ~2k Wasm instructions per map read.
fn make_lowercase(buffer: &mut [u8], range: Range<usize>) {
    let mut at = range.start;
    while at < range.end {
        let Some(word) = buffer.get_mut(at..at + 8) else {
            // The buffer's last eight bytes: byte by byte.
            if let Some(rest) = buffer.get_mut(at..range.end) {
                rest.make_ascii_lowercase();
            }
            return;
        };
        let mut eight = [0u8; 8];
        eight.copy_from_slice(word);
        let x = u64::from_le_bytes(eight);
        let mine = range.end - at;
        let mask = if mine >= 8 { u64::MAX } else { (1u64 << (8 * mine)) - 1 };
        let upper = upper_case_bytes(x) & mask;
        if upper != 0 {
            // 'A'..'Z' + 0x20 is 'a'..'z': set bit 5 of each upper-case byte.
            word.copy_from_slice(&(x | upper >> 2).to_le_bytes());
        }
        at += 8;
    }
}

/// The high bit of each byte of `x` that is an ASCII upper-case letter.
fn upper_case_bytes(x: u64) -> u64 {
    const EACH: u64 = 0x0101_0101_0101_0101;
    let low7 = x & (0x7f * EACH);
    // Per byte, with no carry between bytes (each is below 0x80): the high bit is set once the
    // byte is at least 'A' (0x41 + 0x3f = 0x80), and once it is past 'Z' (0x5b + 0x25 = 0x80).
    let at_least_a = low7 + 0x3f * EACH;
    let past_z = low7 + 0x25 * EACH;
    at_least_a & !past_z & !x & (0x80 * EACH)
}

/// The value of the first `Add` of `name` among `edits`.
fn first_added<'a>(edits: &'a [NamedEdit], name: &[u8]) -> Option<&'a [u8]> {
    edits.iter().find_map(|(n, e)| match e {
        Edit::Add(v) if n.as_bytes() == name => Some(&**v),
        _ => None,
    })
}

/// The lines of a host-encoded header map; stops at the first malformed entry (a host bug, not
/// something to fail a request over).
fn index(raw: &[u8]) -> Vec<(Range<usize>, Range<usize>)> {
    let count = read_u32(raw, 0).map_or(0, |n| n as usize);
    let mut at = count.saturating_mul(8).saturating_add(4);
    let mut lines = Vec::with_capacity(count.min(raw.len() / 10));
    for i in 0..count {
        let sizes = 4 + i * 8;
        let (Some(key_len), Some(value_len)) = (read_u32(raw, sizes), read_u32(raw, sizes + 4)) else { break };
        let key = at..at.saturating_add(key_len as usize);
        let value = key.end.saturating_add(1)..key.end.saturating_add(1).saturating_add(value_len as usize);
        if value.end >= raw.len() {
            break;
        }
        at = value.end + 1;
        lines.push((key, value));
    }
    lines
}

fn read_u32(raw: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(raw.get(at..at + 4)?.try_into().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    fn lines(map: &HeaderMap) -> Vec<(String, String)> {
        map.iter()
            .map(|(k, v)| (String::from_utf8_lossy(k).into_owned(), String::from_utf8_lossy(v).into_owned()))
            .collect()
    }

    fn owned(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn reads_the_hosts_encoding_in_place() {
        let map = HeaderMap::from_pairs([(":path", "/a"), ("cookie", "a=1"), ("cookie", "b=2"), ("empty", "")]);
        assert_eq!(map.get(":path"), Some(&b"/a"[..]));
        assert_eq!(map.get("cookie"), Some(&b"a=1"[..]), "the first line, as Envoy answers");
        assert_eq!(map.get("empty"), Some(&b""[..]));
        assert_eq!(map.get("missing"), None);
        assert_eq!(map.all("cookie").count(), 2);
        assert_eq!(HeaderMap::default().iter().count(), 0);
    }

    #[test]
    fn names_are_found_whatever_case_the_host_kept() {
        let map = HeaderMap::from_pairs([("Cookie", "a=1"), ("X-Forwarded-For", "192.0.2.1"), ("cookie", "b=2")]);
        assert_eq!(map.get("cookie"), Some(&b"a=1"[..]));
        assert_eq!(map.all("cookie").count(), 2);
        assert_eq!(map.get("x-forwarded-for"), Some(&b"192.0.2.1"[..]));
    }

    #[test]
    fn a_lower_case_host_is_read_as_it_is() {
        let raw = HeaderMap::from_pairs([(":path", "/a"), ("cookie", "a=1"), ("x-b", "2")]).encoded();
        let (lowered, as_is) = (HeaderMap::from_raw(raw.clone()), HeaderMap::from_lowercase_raw(raw));
        assert_eq!(lines(&lowered), lines(&as_is));
    }

    #[test]
    fn names_are_lowered_as_str_lowers_them() {
        let mut every: Vec<u8> = (0..=255u8).collect();
        every.extend((0..=255u8).rev());
        for start in 0..every.len() {
            for len in [0, 1, 7, 8, 9, 16, 23] {
                let Some(name) = every.get(start..start + len) else { continue };
                let mut lowered = every.clone();
                make_lowercase(&mut lowered, start..start + len);
                let mut want = every.clone();
                want[start..start + len].make_ascii_lowercase();
                assert_eq!(lowered, want, "{name:?}: the name lowered, nothing else");
            }
        }
    }

    #[test]
    fn edits_read_back_as_envoy_applies_them() {
        let mut map = HeaderMap::from_pairs([("x-a", "1"), ("cookie", "a=1"), ("cookie", "b=2"), ("x-b", "2")]);
        map.edit("cookie", Edit::Set(b"c=3".to_vec().into()));
        map.edit("x-a", Edit::Remove);
        map.edit("x-new", Edit::Set("n".into()));
        map.edit("x-new", Edit::Set("m".into()));
        map.edit("x-b", Edit::Add("3".into()));
        map.edit("set-cookie", Edit::Add("s=1".into()));
        map.edit("set-cookie", Edit::Add("s=2".into()));
        let want = [
            ("x-b", "2"),
            ("cookie", "c=3"),
            ("x-new", "m"),
            ("x-b", "3"),
            ("set-cookie", "s=1"),
            ("set-cookie", "s=2"),
        ];
        assert_eq!(lines(&map), owned(&want));
        assert_eq!(map.get("x-a"), None);
        assert_eq!(map.get("cookie"), Some(&b"c=3"[..]));
        assert_eq!(map.edits().len(), 7);
        // A removal after an addition takes both lines.
        map.edit("x-b", Edit::Remove);
        assert_eq!(map.get("x-b"), None);
        assert_eq!(HeaderMap::from_raw(map.encoded()).iter().count(), 4);
    }

    #[test]
    fn the_encoding_is_what_iter_reads_whatever_the_edits() {
        let host = [("x-a", "1"), ("cookie", "a=1"), ("x-b", "2"), ("cookie", "b=2"), ("x-c", "3"), ("x-a", "4")];
        let names = ["x-a", "cookie", "x-b", "x-c", "x-new"];
        let edits = |n: usize| match n % 3 {
            0 => Edit::Set("s".into()),
            1 => Edit::Remove,
            _ => Edit::Add("a".into()),
        };
        // Every pair of edits on every pair of names: host lines taken at each place.
        for first in 0..15 {
            for second in 0..15 {
                let mut map = HeaderMap::from_pairs(host);
                map.edit(names[first % 5], edits(first / 5));
                map.edit(names[second % 5], edits(second / 5));
                let back = HeaderMap::from_raw(map.encoded());
                assert_eq!(lines(&back), lines(&map), "edits {first} then {second}");
                for name in names {
                    let want: Vec<&[u8]> = map.iter().filter(|(n, _)| *n == name.as_bytes()).map(|(_, v)| v).collect();
                    assert_eq!(map.all(name).collect::<Vec<_>>(), want, "{name} after edits {first} then {second}");
                }
            }
        }
        // A long map.
        let many: Vec<(String, String)> = (0..200).map(|i| (format!("x-{i}"), i.to_string())).collect();
        let mut map = HeaderMap::from_pairs(many.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        map.edit("x-150", Edit::Remove);
        map.edit("x-new", Edit::Set("n".into()));
        assert_eq!(lines(&HeaderMap::from_raw(map.encoded())), lines(&map));
        assert_eq!(map.len(), 200);
        // Many edits.
        let mut map = HeaderMap::from_pairs(host);
        for (i, (k, _)) in many.iter().take(70).enumerate() {
            map.edit(k.clone(), if i % 7 == 0 { Edit::Remove } else { Edit::Add("v".into()) });
        }
        map.edit("x-a", Edit::Remove);
        assert_eq!(lines(&HeaderMap::from_raw(map.encoded())), lines(&map));
    }

    #[test]
    fn a_malformed_buffer_yields_what_is_whole_and_never_panics() {
        let raw = HeaderMap::from_pairs([("one", "1"), ("two", "2")]).encoded();
        for cut in 0..raw.len() {
            let map = HeaderMap::from_raw(raw.get(..cut).unwrap_or_default().to_vec());
            assert!(map.iter().count() <= 2);
            let _ = map.get("two");
        }
        let mut huge = raw.clone();
        huge[..4].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(HeaderMap::from_raw(huge).iter().count() <= 2);
    }
}
