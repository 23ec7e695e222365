//! The host seam: every call Tether makes to a proxy-wasm host, behind one small trait, so the
//! adapter can be tested natively against a recording host (tests below, `MockHost`) and
//! counted exactly against a real module (tests/src/wasm_host.rs).

use tether_core::plan::LocalReply;

/// A header map of the stream at hand.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Map {
    Request,
    Response,
}

/// Which proxy-wasm host runs the module: the routing contract and header writes differ.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HostKind {
    /// Envoy (and Istio, Envoy Gateway): the session header for `stateful_session`, the
    /// `tether.routed_by` mark.
    Envoy,
    /// nginx with Kong's ngx_wasm_module: the chosen node in the nginx variable
    /// `$tether_node`, the mark in `wasmx.tether_routed_by`, a removed request header written
    /// empty (README "nginx").
    Nginx,
}

pub trait Host {
    /// The host this module runs in.
    fn kind(&self) -> HostKind;
    /// Whether the host is known to hand over header names in lower case only (Envoy): then they
    /// are read as they come. Any other host's are lowered as they are read.
    fn lowercase_names(&self) -> bool;
    /// The whole map in proxy-wasm's encoding, in one call (empty if the host has none).
    fn header_map(&self, map: Map) -> Vec<u8>;
    /// Replaces every line of `name` with `value`, or with `None` removes them.
    fn set_header(&self, map: Map, name: &str, value: Option<&[u8]>);
    /// Adds one line of `name`, keeping the others.
    fn add_header(&self, map: Map, name: &str, value: &[u8]);
    /// A property (a path of [`property`]); an error from the host reads as absent.
    fn property(&self, path: &[u8]) -> Option<Vec<u8>>;
    /// Sets a per-request property; `false` if the host refused it (never fatal).
    fn set_property(&self, path: &[u8], value: &[u8]) -> bool;
    /// Wall-clock Unix milliseconds.
    fn now_ms(&self) -> u64;
    fn send_reply(&self, reply: &LocalReply);
    fn shared_data(&self, key: &str) -> (Option<Vec<u8>>, Option<u32>);
    fn set_shared_data(&self, key: &str, value: &[u8], cas: Option<u32>) -> bool;
}

/// The proxy-wasm host the module runs in (Envoy, or another proxy-wasm host), called through
/// the ABI directly: the SDK's `hostcalls` panic on a status they do not expect (a refused
/// header write, a property the host cannot serialise), which would take the VM down; here any
/// refusal is a status, logged where it matters, never a panic.
#[derive(Debug, Clone, Copy, Default)]
pub struct ProxyWasmHost;

/// proxy-wasm's map types.
fn map_type(map: Map) -> u32 {
    match map {
        Map::Request => 0,
        Map::Response => 2,
    }
}

/// The property paths Tether reads and writes, as the ABI takes them: segments separated by
/// NUL, written out here so that no request joins them.
pub mod property {
    pub const SOURCE_ADDRESS: &[u8] = b"source\0address";
    pub const DESTINATION_PORT: &[u8] = b"destination\0port";
    pub const TLS_VERSION: &[u8] = b"connection\0tls_version";
    /// The address of the upstream host that served the request.
    pub const UPSTREAM_ADDRESS: &[u8] = b"upstream\0address";
    /// Its port, for a host whose `upstream.address` is a bare IP.
    pub const UPSTREAM_PORT: &[u8] = b"upstream\0port";
    /// The per-request mark of the routing filter that decided (value: its name).
    pub const ROUTED_BY: &[u8] = b"tether.routed_by";
    /// The same mark on nginx, which refuses properties it does not know but keeps `wasmx.*`
    /// along one request's filter chain.
    pub const NGINX_ROUTED_BY: &[u8] = b"wasmx\0tether_routed_by";
    /// The nginx variable that receives the chosen node (`set $tether_node "";` declares it).
    pub const NGINX_NODE: &[u8] = b"ngx\0tether_node";
    /// Answered only by nginx: how a module tells it runs there.
    pub const NGINX_VERSION: &[u8] = b"ngx\0nginx_version";
    /// The xDS node's `user_agent_name`, which Envoy sets to `envoy`: how a module tells it
    /// runs in Envoy (Istio's and Envoy Gateway's proxies are Envoy builds). Envoy 1.40 answers
    /// it under `xds` only (`node.user_agent_name` is NotFound).
    pub const NODE_USER_AGENT: &[u8] = b"xds\0node\0user_agent_name";

    /// `xds.upstream_host_metadata.filter_metadata.<filter>.<key>`: a value of the serving
    /// endpoint's EDS metadata (Envoy answers a string as its bytes).
    pub fn endpoint_metadata(filter: &str, key: &str) -> Vec<u8> {
        [b"xds\0upstream_host_metadata\0filter_metadata\0", filter.as_bytes(), b"\0", key.as_bytes()].concat()
    }

    /// `source.address`, for logs and tests.
    pub fn display(path: &[u8]) -> String {
        String::from_utf8_lossy(path).replace('\0', ".")
    }
}

thread_local! {
    // One answer per VM, asked on its first stream (outside a request nginx answers no dotted
    // property, so the root context cannot ask): the host, and whether its names are lower case.
    static IDENTITY: std::cell::Cell<Option<(HostKind, bool)>> = const { std::cell::Cell::new(None) };
}

/// Which host this is, and whether it says it hands over names in lower case only: nginx
/// answers `ngx.nginx_version` (Envoy knows no `ngx` property); Envoy answers
/// `xds.node.user_agent_name` with `envoy`. One or two host calls per VM. A host that is neither
/// is treated as Envoy for routing, but its names are lowered as read: it may keep the client's
/// case, and a name read in the wrong case would let a forged header pass.
fn identity() -> (HostKind, bool) {
    IDENTITY.with(|known| {
        known.get().unwrap_or_else(|| {
            let identity = ask_identity();
            known.set(Some(identity));
            identity
        })
    })
}

/// The asking and its log line, out of every request's way.
#[cold]
#[inline(never)]
fn ask_identity() -> (HostKind, bool) {
    match raw::get_property(property::NGINX_VERSION) {
        Some(version) => {
            log::info!(
                "running on nginx {} (ngx_wasm_module): routing through $tether_node",
                String::from_utf8_lossy(&version)
            );
            (HostKind::Nginx, false)
        }
        None if raw::get_property(property::NODE_USER_AGENT).is_some_and(|agent| agent == b"envoy") => {
            log::debug!("running on Envoy: header names read as they come, in lower case");
            (HostKind::Envoy, true)
        }
        None => {
            log::info!("the host did not say it is Envoy (xds.node.user_agent_name): header names are lowered as read");
            (HostKind::Envoy, false)
        }
    }
}

impl Host for ProxyWasmHost {
    fn kind(&self) -> HostKind {
        identity().0
    }

    fn lowercase_names(&self) -> bool {
        identity().1
    }

    fn header_map(&self, map: Map) -> Vec<u8> {
        raw::get_header_map(map_type(map)).unwrap_or_default()
    }

    fn set_header(&self, map: Map, name: &str, value: Option<&[u8]>) {
        let status = match value {
            Some(value) => raw::replace_header(map_type(map), name.as_bytes(), value),
            None => raw::remove_header(map_type(map), name.as_bytes()),
        };
        if status != raw::OK {
            log::warn!("cannot write header {name} ({map:?}): status {status}");
        }
    }

    fn add_header(&self, map: Map, name: &str, value: &[u8]) {
        let status = raw::add_header(map_type(map), name.as_bytes(), value);
        if status != raw::OK {
            log::warn!("cannot add header {name} ({map:?}): status {status}");
        }
    }

    fn property(&self, path: &[u8]) -> Option<Vec<u8>> {
        raw::get_property(path)
    }

    fn set_property(&self, path: &[u8], value: &[u8]) -> bool {
        raw::set_property(path, value) == raw::OK
    }

    /// Read once per tick (crate::vm).
    fn now_ms(&self) -> u64 {
        crate::vm::now_ms()
    }

    fn send_reply(&self, reply: &LocalReply) {
        let headers = tether_core::headers::HeaderMap::encode(
            &reply.headers.iter().map(|(k, v)| (k.as_bytes(), v.as_bytes())).collect::<Vec<_>>(),
        );
        let status = raw::send_local_response(reply.status, &reply.body, &headers);
        if status != raw::OK {
            log::warn!("cannot send the local reply {}: status {status}", reply.status);
        }
    }

    fn shared_data(&self, key: &str) -> (Option<Vec<u8>>, Option<u32>) {
        raw::get_shared_data(key.as_bytes())
    }

    fn set_shared_data(&self, key: &str, value: &[u8], cas: Option<u32>) -> bool {
        raw::set_shared_data(key.as_bytes(), value, cas.unwrap_or(0)) == raw::OK
    }
}

/// The ABI calls (proxy-wasm 0.2.1), each answering its status.
#[cfg(target_arch = "wasm32")]
#[allow(unsafe_code)]
pub(crate) mod raw {
    pub const OK: u32 = 0;

    #[link(wasm_import_module = "env")]
    extern "C" {
        fn proxy_get_header_map_pairs(map_type: u32, return_data: *mut *mut u8, return_size: *mut usize) -> u32;
        fn proxy_replace_header_map_value(map: u32, k: *const u8, ks: usize, v: *const u8, vs: usize) -> u32;
        fn proxy_add_header_map_value(map: u32, k: *const u8, ks: usize, v: *const u8, vs: usize) -> u32;
        fn proxy_remove_header_map_value(map: u32, k: *const u8, ks: usize) -> u32;
        fn proxy_get_property(path: *const u8, path_size: usize, data: *mut *mut u8, size: *mut usize) -> u32;
        fn proxy_set_property(path: *const u8, path_size: usize, value: *const u8, value_size: usize) -> u32;
        fn proxy_get_current_time_nanoseconds(time: *mut u64) -> u32;
        fn proxy_set_tick_period_milliseconds(period: u32) -> u32;
        fn proxy_define_metric(kind: u32, name: *const u8, name_size: usize, id: *mut u32) -> u32;
        fn proxy_increment_metric(id: u32, offset: i64) -> u32;
        fn proxy_get_shared_data(k: *const u8, ks: usize, data: *mut *mut u8, size: *mut usize, cas: *mut u32) -> u32;
        fn proxy_set_shared_data(k: *const u8, ks: usize, v: *const u8, vs: usize, cas: u32) -> u32;
        #[allow(clippy::too_many_arguments)]
        fn proxy_send_local_response(
            status_code: u32,
            details: *const u8,
            details_size: usize,
            body: *const u8,
            body_size: usize,
            headers: *const u8,
            headers_size: usize,
            grpc_status: i32,
        ) -> u32;
    }

    /// Takes ownership of a buffer the host allocated through this module's `malloc` export
    /// (the SDK's, a boxed slice of exactly `size` bytes), as the SDK itself does.
    ///
    /// SAFETY: `data` must be null or such a buffer of `size` bytes, handed over by the host.
    unsafe fn owned(data: *mut u8, size: usize) -> Option<Vec<u8>> {
        if data.is_null() {
            return (size == 0).then(Vec::new);
        }
        // SAFETY: as the caller promises.
        Some(unsafe { Vec::from_raw_parts(data, size, size) })
    }

    pub fn get_header_map(map: u32) -> Option<Vec<u8>> {
        let (mut data, mut size): (*mut u8, usize) = (std::ptr::null_mut(), 0);
        // SAFETY: the host writes one pointer and one size into the two live locals.
        let status = unsafe { proxy_get_header_map_pairs(map, &mut data, &mut size) };
        // SAFETY: on OK the host handed over its buffer.
        (status == OK).then(|| unsafe { owned(data, size) }).flatten()
    }

    pub fn replace_header(map: u32, name: &[u8], value: &[u8]) -> u32 {
        // SAFETY: the host reads the two live slices during the call.
        unsafe { proxy_replace_header_map_value(map, name.as_ptr(), name.len(), value.as_ptr(), value.len()) }
    }

    pub fn add_header(map: u32, name: &[u8], value: &[u8]) -> u32 {
        // SAFETY: the host reads the two live slices during the call.
        unsafe { proxy_add_header_map_value(map, name.as_ptr(), name.len(), value.as_ptr(), value.len()) }
    }

    pub fn remove_header(map: u32, name: &[u8]) -> u32 {
        // SAFETY: the host reads the live slice during the call.
        unsafe { proxy_remove_header_map_value(map, name.as_ptr(), name.len()) }
    }

    pub fn get_property(path: &[u8]) -> Option<Vec<u8>> {
        let (mut data, mut size): (*mut u8, usize) = (std::ptr::null_mut(), 0);
        // SAFETY: the host reads the live path and writes one pointer and one size.
        let status = unsafe { proxy_get_property(path.as_ptr(), path.len(), &mut data, &mut size) };
        // SAFETY: on OK the host handed over its buffer.
        (status == OK).then(|| unsafe { owned(data, size) }).flatten()
    }

    pub fn set_property(path: &[u8], value: &[u8]) -> u32 {
        // SAFETY: the host reads the two live slices during the call.
        unsafe { proxy_set_property(path.as_ptr(), path.len(), value.as_ptr(), value.len()) }
    }

    pub fn now_ns() -> Option<u64> {
        let mut ns = 0u64;
        // SAFETY: the host writes one u64 into the live local.
        (unsafe { proxy_get_current_time_nanoseconds(&mut ns) } == OK).then_some(ns)
    }

    pub fn set_tick_period_ms(period: u32) -> u32 {
        // SAFETY: plain values.
        unsafe { proxy_set_tick_period_milliseconds(period) }
    }

    /// A counter (proxy-wasm metric type 0) named `name`: its id, or the host's status.
    pub fn define_counter(name: &[u8]) -> Result<u32, u32> {
        let mut id = 0u32;
        // SAFETY: the host reads the live name and writes one u32 into the live local.
        let status = unsafe { proxy_define_metric(0, name.as_ptr(), name.len(), &mut id) };
        if status == OK {
            Ok(id)
        } else {
            Err(status)
        }
    }

    pub fn increment_metric(id: u32, by: u64) -> u32 {
        // SAFETY: plain values.
        unsafe { proxy_increment_metric(id, i64::try_from(by).unwrap_or(i64::MAX)) }
    }

    pub fn get_shared_data(key: &[u8]) -> (Option<Vec<u8>>, Option<u32>) {
        let (mut data, mut size, mut cas): (*mut u8, usize, u32) = (std::ptr::null_mut(), 0, 0);
        // SAFETY: the host reads the live key and writes a pointer, a size and a token.
        let status = unsafe { proxy_get_shared_data(key.as_ptr(), key.len(), &mut data, &mut size, &mut cas) };
        if status != OK {
            return (None, None);
        }
        // SAFETY: on OK the host handed over its buffer.
        (unsafe { owned(data, size) }, Some(cas))
    }

    pub fn set_shared_data(key: &[u8], value: &[u8], cas: u32) -> u32 {
        // SAFETY: the host reads the two live slices during the call.
        unsafe { proxy_set_shared_data(key.as_ptr(), key.len(), value.as_ptr(), value.len(), cas) }
    }

    pub fn send_local_response(status: u32, body: &[u8], headers: &[u8]) -> u32 {
        // SAFETY: the host reads the live slices during the call; no details string.
        unsafe {
            proxy_send_local_response(
                status,
                std::ptr::null(),
                0,
                body.as_ptr(),
                body.len(),
                headers.as_ptr(),
                headers.len(),
                -1,
            )
        }
    }
}

/// Outside Wasm there is no host: everything is absent and every write refused.
#[cfg(not(target_arch = "wasm32"))]
pub(crate) mod raw {
    pub const OK: u32 = 0;
    const UNIMPLEMENTED: u32 = 12;

    pub fn get_header_map(_: u32) -> Option<Vec<u8>> {
        None
    }
    pub fn replace_header(_: u32, _: &[u8], _: &[u8]) -> u32 {
        UNIMPLEMENTED
    }
    pub fn add_header(_: u32, _: &[u8], _: &[u8]) -> u32 {
        UNIMPLEMENTED
    }
    pub fn remove_header(_: u32, _: &[u8]) -> u32 {
        UNIMPLEMENTED
    }
    pub fn get_property(_: &[u8]) -> Option<Vec<u8>> {
        None
    }
    pub fn set_property(_: &[u8], _: &[u8]) -> u32 {
        UNIMPLEMENTED
    }
    pub fn now_ns() -> Option<u64> {
        None
    }
    pub fn set_tick_period_ms(_: u32) -> u32 {
        UNIMPLEMENTED
    }
    pub fn define_counter(_: &[u8]) -> Result<u32, u32> {
        Err(UNIMPLEMENTED)
    }
    pub fn increment_metric(_: u32, _: u64) -> u32 {
        UNIMPLEMENTED
    }
    pub fn get_shared_data(_: &[u8]) -> (Option<Vec<u8>>, Option<u32>) {
        (None, None)
    }
    pub fn set_shared_data(_: &[u8], _: &[u8], _: u32) -> u32 {
        UNIMPLEMENTED
    }
    pub fn send_local_response(_: u32, _: &[u8], _: &[u8]) -> u32 {
        UNIMPLEMENTED
    }
}
