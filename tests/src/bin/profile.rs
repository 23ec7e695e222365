//! profile: tether-edge's request path run natively, for a profiler. The same workload as
//! `costs` (the Overleaf configuration, a returning user's GET, answered by the node the session
//! names) through tether-glue's `Stream` with a host that answers from memory, `PROFILE_N` times
//! (default 10 000). Native instructions are not Wasm instructions, but where they go is where
//! the Wasm ones go:
//!
//!     # the release profile strips symbols: keep them, in a target dir of their own
//!     CARGO_PROFILE_RELEASE_STRIP=false CARGO_PROFILE_RELEASE_DEBUG=1 CARGO_TARGET_DIR=target/prof \
//!         cargo build --release -p tether-e2e --bin profile
//!     valgrind --tool=callgrind --callgrind-out-file=target/callgrind.out target/prof/release/profile
//!     callgrind_annotate --inclusive=yes target/callgrind.out | head -60

use std::cell::RefCell;
use std::rc::Rc;
use tether_core::plan::LocalReply;
use tether_e2e::wasm_host::encode_map;
use tether_e2e::workload::{get, nodes_table, OverleafFilters};
use tether_glue::host::HostKind;
use tether_glue::{Filter, Host, Map, Stream};

/// One stream's maps and properties, as the counting host holds them.
struct MemoryHost {
    request: RefCell<Vec<u8>>,
    response: RefCell<Vec<u8>>,
    properties: Vec<(String, Vec<u8>)>,
    /// The last `Set-Cookie` the filters added.
    set_cookie: RefCell<Option<String>>,
}

impl MemoryHost {
    fn new(exchange: &tether_e2e::wasm_host::Exchange) -> MemoryHost {
        MemoryHost {
            request: RefCell::new(encode_map(&exchange.request_headers)),
            response: RefCell::new(encode_map(&exchange.response_headers)),
            properties: exchange.properties.iter().map(|(path, value)| (path.join("\0"), value.clone())).collect(),
            set_cookie: RefCell::new(None),
        }
    }
}

impl Host for &MemoryHost {
    fn kind(&self) -> HostKind {
        HostKind::Envoy
    }
    fn lowercase_names(&self) -> bool {
        true
    }
    fn header_map(&self, map: Map) -> Vec<u8> {
        match map {
            Map::Request => self.request.borrow().clone(),
            Map::Response => self.response.borrow().clone(),
        }
    }
    fn set_header(&self, _: Map, _: &str, _: Option<&[u8]>) {}
    fn add_header(&self, map: Map, name: &str, value: &[u8]) {
        if map == Map::Response && name == "set-cookie" {
            *self.set_cookie.borrow_mut() = Some(String::from_utf8_lossy(value).into_owned());
        }
    }
    fn property(&self, path: &[u8]) -> Option<Vec<u8>> {
        self.properties.iter().find(|(p, _)| p.as_bytes() == path).map(|(_, v)| v.clone())
    }
    fn set_property(&self, _: &[u8], _: &[u8]) -> bool {
        true
    }
    fn now_ms(&self) -> u64 {
        1_796_000_000_000
    }
    fn send_reply(&self, reply: &LocalReply) {
        panic!("unexpected local reply {}", reply.status);
    }
    fn shared_data(&self, _: &str) -> (Option<Vec<u8>>, Option<u32>) {
        (None, None)
    }
    fn set_shared_data(&self, _: &str, _: &[u8], _: Option<u32>) -> bool {
        true
    }
}

/// Counts allocations (and reallocations) so that a run can say how many one request makes:
/// in Wasm each costs hundreds of instructions (talc), natively far fewer.
struct Counting;

static ALLOCATIONS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

// SAFETY: every call is handed to the system allocator unchanged.
#[allow(unsafe_code)]
unsafe impl std::alloc::GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: std::alloc::Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        // SAFETY: as the caller promises.
        unsafe { std::alloc::System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: std::alloc::Layout) {
        // SAFETY: as the caller promises.
        unsafe { std::alloc::System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: std::alloc::Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        // SAFETY: as the caller promises.
        unsafe { std::alloc::System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

fn main() {
    let n: usize = std::env::var("PROFILE_N").ok().and_then(|v| v.parse().ok()).unwrap_or(10_000);
    let config = OverleafFilters::new(&nodes_table()).edge();
    let config = tether_core::config::read_document(config.as_bytes()).unwrap_or_else(|e| panic!("{e}"));
    let edge = Rc::new(tether_edge::Edge::from_config(config).unwrap_or_else(|| panic!("config refused")));
    // The returning user's cookie, from a first request's Set-Cookie.
    let first = MemoryHost::new(&get("/", None));
    let mut stream = Stream::new(edge.clone(), &first);
    stream.request_headers(true);
    stream.response_headers();
    let set_cookie = first.set_cookie.borrow().clone().unwrap_or_else(|| panic!("no cookie"));
    let cookie = set_cookie.split(';').next().unwrap_or_default();
    let exchange = get("/", Some(cookie));
    let host = MemoryHost::new(&exchange);
    let before = ALLOCATIONS.load(std::sync::atomic::Ordering::Relaxed);
    for _ in 0..n {
        let mut stream = Stream::new(edge.clone(), &host);
        std::hint::black_box(stream.request_headers(true));
        std::hint::black_box(stream.response_headers());
    }
    let made = ALLOCATIONS.load(std::sync::atomic::Ordering::Relaxed) - before;
    // The memory host's own copies of the two maps are two of them (in Wasm, the host's).
    eprintln!("allocations and reallocations per request: {:.1}", made as f64 / n.max(1) as f64);
}
