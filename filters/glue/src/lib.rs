//! proxy-wasm helpers shared by Tether's filters. Decisions live in tether-core; this crate
//! only wraps host calls that every filter makes the same way.

use log::warn;
use proxy_wasm::hostcalls;
use proxy_wasm::types::MetricType;

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
