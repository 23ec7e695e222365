//! proxy-wasm helpers shared by Tether's filters. Decisions live in tether-core; this crate
//! only wraps host calls that every filter makes the same way.

// Every Tether filter links this crate, so this is their allocator. A request allocates a few
// dozen times (the SDK alone twice per header it hands over); with Rust's default dlmalloc an
// allocation and its free cost ~2000 Wasm instructions, with talc ~870 (tests/src/wasm_host.rs
// counts them). Envoy runs each VM on one thread, without Wasm atomics.
#[cfg(all(target_arch = "wasm32", not(target_feature = "atomics")))]
#[global_allocator]
static ALLOCATOR: talc::wasm::WasmDynamicTalc = talc::wasm::new_wasm_dynamic_allocator();

use log::warn;
use proxy_wasm::hostcalls;
use proxy_wasm::types::{BufferType, MapType, MetricType};

/// A proxy-wasm counter (`wasmcustom.<name>` in Envoy's `/stats`). If the host refuses to
/// define it, the filter keeps working and the counter stays silent.
#[derive(Debug, Clone, Copy, Default)]
pub struct Counter(Option<u32>);

impl Counter {
    pub fn define(name: &str) -> Counter {
        match hostcalls::define_metric(MetricType::Counter, name) {
            Ok(id) => Counter(Some(id)),
            Err(status) => {
                warn!("cannot define metric {name}: {status:?}");
                Counter(None)
            }
        }
    }

    /// One host call. A failed increment loses one count; not worth failing a request over.
    pub fn increment(self) {
        if let Some(id) = self.0 {
            let _ = hostcalls::increment_metric(id, 1);
        }
    }
}

/// An upstream address missing from a filter's nodes table: the table and the cluster's
/// endpoints disagree, so the filter cannot name the node that served. Counted every time
/// (`<filter>.unknown_upstream`), logged once per VM at warn so the log says what to fix.
#[derive(Debug)]
pub struct UnknownUpstream {
    filter: &'static str,
    counter: Counter,
    warned: std::cell::Cell<bool>,
}

impl UnknownUpstream {
    /// `filter` is the metric prefix, e.g. `tether_affinity`.
    pub fn define(filter: &'static str) -> UnknownUpstream {
        UnknownUpstream {
            filter,
            counter: Counter::define(&format!("{filter}.unknown_upstream")),
            warned: std::cell::Cell::new(false),
        }
    }

    /// `consequence` says what the filter cannot do for this response.
    pub fn report(&self, address: &[u8], consequence: &str) {
        self.counter.increment();
        if !self.warned.replace(true) {
            warn!(
                "{}: upstream {} is not in the nodes table: the table must list the cluster's endpoints; {consequence}",
                self.filter.trim_start_matches("tether_").replace('_', "-"),
                String::from_utf8_lossy(address)
            );
        }
    }
}

/// `on_configure` for a root context built by a `from_config` function: reads the plugin
/// configuration and replaces `root` with the configured one. `false` (Envoy refuses the
/// configuration) when `from_config` refuses it or the host cannot hand it over; the SDK's own
/// `get_plugin_configuration` would panic on the latter.
pub fn configure_root<R>(root: &mut R, from_config: impl FnOnce(&[u8]) -> Option<R>) -> bool {
    let json = match hostcalls::get_buffer(BufferType::PluginConfiguration, 0, usize::MAX) {
        Ok(json) => json.unwrap_or_default(),
        Err(status) => {
            log::error!("cannot read the plugin configuration: {status:?}");
            return false;
        }
    };
    match from_config(&json) {
        Some(configured) => {
            *root = configured;
            true
        }
        None => false,
    }
}

/// Reads an environment variable of the Envoy host. Envoy passes only the variables listed in
/// `vm_config.environment_variables` (`host_env_keys` or `key_values`), through WASI's
/// `environ_get`, which Envoy provides to every module; std's `env::var` cannot see them on
/// wasm32-unknown-unknown.
pub fn host_env_var(name: &str) -> Option<String> {
    environ()
        .into_iter()
        .find_map(|entry| entry.strip_prefix(name.as_bytes())?.strip_prefix(b"=").map(<[u8]>::to_vec))
        .and_then(|v| String::from_utf8(v).ok())
}

#[cfg(target_arch = "wasm32")]
#[allow(unsafe_code)]
fn environ() -> Vec<Vec<u8>> {
    #[link(wasm_import_module = "wasi_snapshot_preview1")]
    extern "C" {
        fn environ_sizes_get(count: *mut usize, buf_size: *mut usize) -> u16;
        fn environ_get(environ: *mut *mut u8, buf: *mut u8) -> u16;
    }
    let (mut count, mut size) = (0usize, 0usize);
    // SAFETY: both pointers are to live locals the host writes one usize into.
    if unsafe { environ_sizes_get(&mut count, &mut size) } != 0 || count == 0 {
        return Vec::new();
    }
    let mut pointers: Vec<*mut u8> = vec![std::ptr::null_mut(); count];
    let mut buf: Vec<u8> = vec![0; size];
    // SAFETY: the host fills `count` pointers into `pointers` and `size` bytes into `buf`,
    // exactly the sizes it reported above; each pointer points into `buf`.
    if unsafe { environ_get(pointers.as_mut_ptr(), buf.as_mut_ptr()) } != 0 {
        return Vec::new();
    }
    // Entries are NUL-terminated "NAME=value" strings laid out back to back in `buf`.
    buf.split(|&b| b == 0).filter(|e| !e.is_empty()).map(<[u8]>::to_vec).collect()
}

#[cfg(not(target_arch = "wasm32"))]
fn environ() -> Vec<Vec<u8>> {
    std::env::vars_os().map(|(k, v)| format!("{}={}", k.to_string_lossy(), v.to_string_lossy()).into_bytes()).collect()
}

/// Reads a property; an error from the host reads as absent (the SDK's own `get_property`
/// would panic on it).
pub fn property(path: &[&str]) -> Option<Vec<u8>> {
    hostcalls::get_property(path.to_vec()).ok().flatten()
}

/// Sets a per-request property; a refusal from the host is logged, not fatal.
pub fn set_property(path: &[&str], value: &[u8]) {
    if let Err(status) = hostcalls::set_property(path.to_vec(), Some(value)) {
        warn!("cannot set property {path:?}: {status:?}");
    }
}

/// What this VM already learnt from, or told, the host about one stream, so that filters sharing
/// a VM ask once: a property read by a second filter, or a response header a second filter would
/// remove again, costs no host call. Only tether-edge, which runs all five in one VM, turns it on
/// ([`share_stream_facts`]); a filter in a VM of its own asks the host directly, with no memo to
/// keep. Keyed by the stream's context id: a callback for another stream starts afresh, so
/// nothing is ever served from another stream.
#[derive(Default)]
struct StreamMemo {
    sharing: bool,
    context_id: u32,
    properties: Vec<(&'static [&'static str], Option<Vec<u8>>)>,
    removed_response_headers: Vec<String>,
    /// The request headers as the filters have left them so far: read once, then kept in step
    /// with every change made through [`set_request_header`]. Only while the request headers
    /// callback runs (see [`forget_request_headers`]).
    request_headers: Option<RequestHeaders>,
}

/// Request headers as a filter sees them (shared in tether-edge, hence the `Rc`).
pub type RequestHeaders = std::rc::Rc<HeaderMap>;

/// A header map read in place from the one buffer the host hands over, plus the changes made
/// since (as Envoy applies them: all lines of the name go, the new one last). The SDK's own
/// map allocates two buffers per header, each ~870 Wasm instructions with its free; this one
/// allocates its index once.
#[derive(Debug, Clone, Default)]
pub struct HeaderMap {
    /// proxy-wasm's encoding: count, (key length, value length) pairs, then each key and value
    /// NUL-terminated.
    raw: Vec<u8>,
    /// Where each line's name and value are in `raw`.
    lines: Vec<(std::ops::Range<usize>, std::ops::Range<usize>)>,
    changes: Vec<(String, Option<Vec<u8>>)>,
}

impl HeaderMap {
    pub fn from_raw(raw: Vec<u8>) -> HeaderMap {
        let lines = index(&raw);
        HeaderMap { raw, lines, changes: Vec::new() }
    }

    /// Every line in order, names lower case (as bytes: no UTF-8 check per line): the host's
    /// lines not changed since, then the changed ones.
    pub fn iter(&self) -> impl Iterator<Item = (&[u8], &[u8])> {
        let changed = |name: &[u8]| self.changes.iter().any(|(n, _)| n.as_bytes() == name);
        let original = self.original().filter(move |(n, _)| !changed(n));
        let changes = self.changes.iter().filter_map(|(n, v)| Some((n.as_bytes(), v.as_deref()?)));
        original.chain(changes)
    }

    /// The first line named `name` (lower case), as Envoy's `get_header_map_value` answers.
    pub fn get(&self, name: &str) -> Option<&[u8]> {
        if let Some((_, value)) = self.changes.iter().find(|(n, _)| n == name) {
            return value.as_deref();
        }
        self.original().find(|(n, _)| *n == name.as_bytes()).map(|(_, v)| v)
    }

    /// The host's encoding of `pairs`: what `from_raw` reads (for hosts and tests; the
    /// benchmark's stand-in host, tests/src/wasm_host.rs, answers with it).
    pub fn encode<'a>(pairs: impl IntoIterator<Item = (&'a [u8], &'a [u8])> + Clone) -> Vec<u8> {
        let count = pairs.clone().into_iter().count();
        let mut out = u32::try_from(count).unwrap_or(u32::MAX).to_le_bytes().to_vec();
        for (k, v) in pairs.clone() {
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

    /// Records that `name` was replaced by `value` (or removed).
    pub fn set(&mut self, name: &str, value: Option<&[u8]>) {
        self.changes.retain(|(n, _)| n != name);
        self.changes.push((name.to_string(), value.map(<[u8]>::to_vec)));
    }

    fn original(&self) -> impl Iterator<Item = (&[u8], &[u8])> {
        self.lines.iter().filter_map(|(name, value)| Some((self.raw.get(name.clone())?, self.raw.get(value.clone())?)))
    }
}

/// The lines of a host-encoded header map; stops at the first malformed entry (a host bug, not
/// something to fail a request over).
fn index(raw: &[u8]) -> Vec<(std::ops::Range<usize>, std::ops::Range<usize>)> {
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

thread_local! {
    static MEMO: std::cell::RefCell<StreamMemo> = std::cell::RefCell::new(StreamMemo::default());
}

/// Lets the filters of this VM share what they learn of a stream (tether-edge, at configure).
pub fn share_stream_facts() {
    MEMO.with(|memo| {
        if let Ok(mut memo) = memo.try_borrow_mut() {
            memo.sharing = true;
        }
    });
}

/// Runs `f` on the stream's memo; `None` when sharing is off (or the memo is busy, which no
/// callback re-enters to cause).
fn with_memo<T>(context_id: u32, f: impl FnOnce(&mut StreamMemo) -> T) -> Option<T> {
    MEMO.with(|memo| {
        let mut memo = memo.try_borrow_mut().ok().filter(|m| m.sharing)?;
        if memo.context_id != context_id {
            *memo = StreamMemo { sharing: true, context_id, ..StreamMemo::default() };
        }
        Some(f(&mut memo))
    })
}

/// [`property`] for stream `context_id`: asked of the host once per stream when sharing.
pub fn stream_property(context_id: u32, path: &'static [&'static str]) -> Option<Vec<u8>> {
    if let Some(known) =
        with_memo(context_id, |m| m.properties.iter().find(|(p, _)| *p == path).map(|(_, v)| v.clone())).flatten()
    {
        return known;
    }
    let value = property(path);
    with_memo(context_id, |m| m.properties.push((path, value.clone())));
    value
}

/// [`set_property`] for stream `context_id`; later [`stream_property`] reads see the value.
pub fn set_stream_property(context_id: u32, path: &'static [&'static str], value: &[u8]) {
    set_property(path, value);
    with_memo(context_id, |m| {
        m.properties.retain(|(p, _)| *p != path);
        m.properties.push((path, Some(value.to_vec())));
    });
}

/// Removes response header `name` of stream `context_id`: once per stream when sharing.
pub fn remove_response_header_once(context_id: u32, name: &str) {
    let already = with_memo(context_id, |m| {
        let seen = m.removed_response_headers.iter().any(|h| h == name);
        if !seen {
            m.removed_response_headers.push(name.to_string());
        }
        seen
    });
    if already != Some(true) {
        let _ = hostcalls::set_map_value(MapType::HttpResponseHeaders, name, None);
    }
}

/// All request headers of stream `context_id`: one host call, and none for a later filter of
/// the same VM in the same callback when sharing.
pub fn request_headers(context_id: u32) -> RequestHeaders {
    if let Some(known) = with_memo(context_id, |m| m.request_headers.clone()).flatten() {
        return known;
    }
    let headers = RequestHeaders::new(HeaderMap::from_raw(raw_request_headers()));
    with_memo(context_id, |m| m.request_headers = Some(headers.clone()));
    headers
}

/// Request header `name` (lower case) of stream `context_id`: from the shared headers when
/// sharing (read once for all filters), else one host call.
pub fn request_header(context_id: u32, name: &str) -> Option<Vec<u8>> {
    if with_memo(context_id, |_| ()).is_some() {
        return request_headers(context_id).get(name).map(<[u8]>::to_vec);
    }
    hostcalls::get_map_value_bytes(MapType::HttpRequestHeaders, name).ok().flatten()
}

/// Replaces (or with `None` removes) request header `name` (lower case) of stream `context_id`,
/// and the shared headers with it, as Envoy does: every line of that name goes, the new one is
/// added last.
pub fn set_request_header(context_id: u32, name: &str, value: Option<&[u8]>) {
    let _ = hostcalls::set_map_value_bytes(MapType::HttpRequestHeaders, name, value);
    with_memo(context_id, |m| {
        if let Some(headers) = m.request_headers.as_mut() {
            std::rc::Rc::make_mut(headers).set(name, value);
        }
    });
}

/// The request headers in the host's encoding, in the one buffer the host allocated for them
/// (empty when the host has none or refuses).
#[cfg(target_arch = "wasm32")]
#[allow(unsafe_code)]
fn raw_request_headers() -> Vec<u8> {
    #[link(wasm_import_module = "env")]
    extern "C" {
        fn proxy_get_header_map_pairs(map_type: u32, return_data: *mut *mut u8, return_size: *mut usize) -> u32;
    }
    let (mut data, mut size): (*mut u8, usize) = (std::ptr::null_mut(), 0);
    // SAFETY: the host writes one pointer and one size into the two live locals.
    let status = unsafe { proxy_get_header_map_pairs(MapType::HttpRequestHeaders as u32, &mut data, &mut size) };
    if status != 0 || data.is_null() {
        return Vec::new();
    }
    // SAFETY: the host allocated exactly `size` bytes at `data` through this module's `malloc`
    // export (the SDK's, a boxed slice of that length) and hands them over: ours to own and
    // free, as the SDK's own `get_map` does with the same call.
    unsafe { Vec::from_raw_parts(data, size, size) }
}

#[cfg(not(target_arch = "wasm32"))]
fn raw_request_headers() -> Vec<u8> {
    Vec::new() // no host outside Wasm
}

/// Ends the sharing of request headers for stream `context_id` (tether-edge, when the request
/// headers callback is over): filters after the VM may change them before a later callback.
pub fn forget_request_headers(context_id: u32) {
    with_memo(context_id, |m| m.request_headers = None);
}

/// Shared data (one copy per VM id, seen by every worker): value and its CAS token.
pub fn shared_data(key: &str) -> (Option<Vec<u8>>, Option<u32>) {
    hostcalls::get_shared_data(key).unwrap_or((None, None))
}

/// Writes shared data if nobody changed it since `cas` was read; false on a lost race or error.
pub fn set_shared_data(key: &str, value: &[u8], cas: Option<u32>) -> bool {
    hostcalls::set_shared_data(key, Some(value), cas).is_ok()
}

/// Parses a filter's configuration in `on_configure`: one info line with `summary` when it is
/// accepted; one error line naming the field when not, after which the filter returns `false`
/// and Envoy refuses the configuration (also under `--mode validate`).
pub fn configure<T, E: std::fmt::Display>(
    filter: &str,
    json: &[u8],
    parse: impl FnOnce(&[u8]) -> Result<T, E>,
    summary: impl FnOnce(&T) -> String,
) -> Option<T> {
    match parse(json) {
        Ok(policy) => {
            log::info!("{filter}: configured: {}", summary(&policy));
            Some(policy)
        }
        Err(e) => {
            log::error!("{filter}: invalid configuration: {e}");
            None
        }
    }
}

/// Routing contract: a session header on a request nobody in the chain has decided was sent by
/// the client to steer it, and is never honoured. Removes it; true if there was one.
pub fn remove_client_session_header(context_id: u32, header: &str) -> bool {
    let present = request_header(context_id, header).is_some();
    if present {
        set_request_header(context_id, header, None);
    }
    present
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encode(pairs: &[(&str, &str)]) -> Vec<u8> {
        HeaderMap::encode(pairs.iter().map(|(k, v)| (k.as_bytes(), v.as_bytes())))
    }

    fn lines(map: &HeaderMap) -> Vec<(String, String)> {
        map.iter()
            .map(|(k, v)| (String::from_utf8_lossy(k).into_owned(), String::from_utf8_lossy(v).into_owned()))
            .collect()
    }

    #[test]
    fn reads_the_hosts_encoding_in_place() {
        let map = HeaderMap::from_raw(encode(&[(":path", "/a"), ("cookie", "a=1"), ("cookie", "b=2"), ("empty", "")]));
        assert_eq!(map.get(":path"), Some(&b"/a"[..]));
        assert_eq!(map.get("cookie"), Some(&b"a=1"[..]), "the first line, as Envoy answers");
        assert_eq!(map.get("empty"), Some(&b""[..]));
        assert_eq!(map.get("missing"), None);
        assert_eq!(map.iter().filter(|(n, _)| *n == b"cookie").count(), 2);
        assert_eq!(HeaderMap::default().iter().count(), 0);
    }

    #[test]
    fn changes_replace_every_line_of_the_name_and_come_last() {
        let mut map = HeaderMap::from_raw(encode(&[("x-a", "1"), ("cookie", "a=1"), ("cookie", "b=2"), ("x-b", "2")]));
        map.set("cookie", Some(b"c=3"));
        map.set("x-a", None);
        map.set("x-new", Some(b"n"));
        map.set("x-new", Some(b"m"));
        let want = [("x-b", "2"), ("cookie", "c=3"), ("x-new", "m")];
        assert_eq!(lines(&map), want.map(|(k, v)| (k.to_string(), v.to_string())));
        assert_eq!(map.get("x-a"), None);
        assert_eq!(map.get("cookie"), Some(&b"c=3"[..]));
    }

    #[test]
    fn a_malformed_buffer_yields_what_is_whole_and_never_panics() {
        let raw = encode(&[("one", "1"), ("two", "2")]);
        for cut in 0..raw.len() {
            let map = HeaderMap::from_raw(raw[..cut].to_vec());
            assert!(map.iter().count() <= 2);
            let _ = map.get("two");
        }
        let mut huge = raw.clone();
        huge[..4].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(HeaderMap::from_raw(huge).iter().count() <= 2);
    }
}
