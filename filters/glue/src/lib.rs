//! tether-glue: the host adapter. Decisions live in tether-core; this crate reads what a
//! callback offers (each header map once), hands it to a filter, and applies the plan in the
//! way that costs the host least (one call per header edit, measured: stream.rs). A filter crate is a library implementing [`Filter`]; its module is one
//! line, [`module!`]; every host call goes through the [`host::Host`] seam.

pub mod filter;
pub mod host;
pub mod pool;
pub mod stream;
pub mod vm;

pub use filter::{Filter, Root, Stream};
pub use host::{Host, Map, ProxyWasmHost};
pub use proxy_wasm;
pub use stream::{Callback, StreamFacts};

// Every Tether filter links this crate, so this is their allocator: talc (an allocation and its
// free ~870 Wasm instructions, against ~2000 with Rust's default dlmalloc) behind free lists per
// small block size (crate::pool). Envoy runs each VM on one thread, without Wasm atomics.
#[cfg(all(target_arch = "wasm32", not(target_feature = "atomics")))]
#[global_allocator]
static ALLOCATOR: pool::Pooled<talc::wasm::WasmDynamicTalc> =
    pool::Pooled::new(talc::wasm::new_wasm_dynamic_allocator());

use proxy_wasm::hostcalls;
use proxy_wasm::types::BufferType;
pub use vm::Counter;

/// An operator's mistake seen on traffic: counted every time, said once per VM at warn, so
/// the log says what to fix instead of production discovering it.
#[derive(Debug)]
pub struct Misconfiguration {
    counter: Counter,
    warned: std::cell::Cell<bool>,
}

impl Misconfiguration {
    /// `metric` is the counter's full name, e.g. `tether_affinity.routing_contract_missing`.
    pub fn define(metric: &str) -> Misconfiguration {
        Misconfiguration { counter: Counter::define(metric), warned: std::cell::Cell::new(false) }
    }

    /// Counts one more; the first time, logs `message()`.
    pub fn report(&self, message: impl FnOnce() -> String) {
        self.counter.increment();
        if !self.warned.replace(true) {
            log::warn!("{}", message());
        }
    }
}

/// An upstream address missing from a filter's nodes table: the table and the cluster's
/// endpoints disagree, so the filter cannot name the node that served. Counted every time
/// (`<filter>.unknown_upstream`), logged once per VM at warn so the log says what to fix.
#[derive(Debug)]
pub struct UnknownUpstream {
    filter: &'static str,
    seen: Misconfiguration,
}

impl UnknownUpstream {
    /// `filter` is the metric prefix, e.g. `tether_affinity`.
    pub fn define(filter: &'static str) -> UnknownUpstream {
        UnknownUpstream { filter, seen: Misconfiguration::define(&format!("{filter}.unknown_upstream")) }
    }

    /// `consequence` says what the filter cannot do for this response.
    pub fn report(&self, address: &std::net::SocketAddr, consequence: &str) {
        self.seen.report(|| {
            format!(
                "{}: upstream {} is not in the nodes table: the table must list the cluster's endpoints; {consequence}",
                self.filter.trim_start_matches("tether_").replace('_', "-"),
                address
            )
        });
    }
}

/// The plugin configuration, read without the SDK's `get_plugin_configuration` (which panics
/// when the host cannot hand it over); `None` after logging that.
pub fn plugin_configuration() -> Option<Vec<u8>> {
    match hostcalls::get_buffer(BufferType::PluginConfiguration, 0, usize::MAX) {
        Ok(json) => Some(json.unwrap_or_default()),
        Err(status) => {
            log::error!("cannot read the plugin configuration: {status:?}");
            None
        }
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

/// Parses a filter's configuration in `on_configure`: one info line with `summary` when it is
/// accepted; one error line naming the field when not, after which the filter returns `false`
/// and Envoy refuses the configuration (also under `--mode validate`).
pub fn configure<T, E: std::fmt::Display>(
    filter: &str,
    config: tether_core::config::Value,
    parse: impl FnOnce(tether_core::config::Value) -> Result<T, E>,
    summary: impl FnOnce(&T) -> String,
) -> Option<T> {
    match parse(config) {
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
