//! What one VM keeps between its streams: counter increments not yet handed to the host, the
//! wall clock read at most once per tick, and shared data that every request reads (uri-hash's
//! down list) read at most once per tick. All three trade a host call per request for at most
//! one per tick ([`TICK_MS`]): Envoy's `/stats` shows a count within one tick of the request
//! that made it, and the clock that `maxidle` and the cookie's timestamp see is at most one tick
//! old (both count whole seconds, as HAProxy does).
//!
//! Envoy runs one VM per worker thread, each with its own root context and its own tick, so a
//! worker flushes its own counts. Until the first tick arrives, and on a host that refuses the
//! tick or accepts it and never ticks, everything is direct: one host call per increment and a
//! clock read per stream, so nothing waits for a tick that may not come.

use crate::host::raw;
use std::cell::{Cell, RefCell};

/// The tick period: how stale `/stats` and the clock may be.
pub const TICK_MS: u32 = 1000;

struct Vm {
    /// The host has ticked this VM: counts wait for the next tick, the clock is kept until it.
    ticking: Cell<bool>,
    clock_ms: Cell<Option<u64>>,
    /// (metric id, increments not yet handed over), one slot per defined counter.
    pending: RefCell<Vec<(u32, u64)>>,
    /// Shared data read (or written) since the last tick, by key.
    shared: RefCell<Vec<(String, Option<Vec<u8>>)>>,
}

thread_local! {
    // Envoy gives each VM one thread; without Wasm atomics this is a plain static.
    static VM: Vm = const {
        Vm {
            ticking: Cell::new(false),
            clock_ms: Cell::new(None),
            pending: RefCell::new(Vec::new()),
            shared: RefCell::new(Vec::new()),
        }
    };
}

/// Asks the host to tick this VM every [`TICK_MS`] (from the root's `on_configure`); `false`
/// (and a log line) if it will not, and everything stays direct.
pub fn start_ticking() -> bool {
    let status = raw::set_tick_period_ms(TICK_MS);
    if status != raw::OK {
        log::warn!(
            "the host refused a {TICK_MS} ms tick (status {status}): counters and the clock cost a host call each"
        );
    }
    status == raw::OK
}

/// The root's `on_tick`: hands the counts over and lets the next stream read the clock anew.
/// The first tick shows the host ticks: from then on counts and the clock wait for it.
pub fn tick() {
    VM.with(|vm| {
        vm.ticking.set(true);
        vm.clock_ms.set(None);
        vm.shared.borrow_mut().clear();
    });
    flush();
}

/// Hands every pending count to the host (one call per counter that moved).
pub fn flush() {
    VM.with(|vm| {
        for (id, count) in vm.pending.borrow_mut().iter_mut().filter(|(_, count)| *count > 0) {
            // A refused increment loses these counts; not worth more than the log line.
            let status = raw::increment_metric(*id, std::mem::take(count));
            if status != raw::OK {
                log::debug!("cannot increment metric {id}: status {status}");
            }
        }
    });
}

/// Wall-clock Unix milliseconds: read once per tick while the host ticks, else every time.
pub fn now_ms() -> u64 {
    VM.with(|vm| {
        if let Some(ms) = vm.clock_ms.get() {
            return ms;
        }
        let ms = raw::now_ns().map_or(0, |ns| ns / 1_000_000);
        if vm.ticking.get() {
            vm.clock_ms.set(Some(ms));
        }
        ms
    })
}

/// Shared data `key` as this VM last read or wrote it in this tick, else as `read` answers
/// (kept until the next tick while the host ticks; read every time if it does not).
pub fn recent_shared_data(key: &str, read: impl FnOnce() -> Option<Vec<u8>>) -> Option<Vec<u8>> {
    VM.with(|vm| {
        if let Some((_, value)) = vm.shared.borrow().iter().find(|(k, _)| k == key) {
            return value.clone();
        }
        let value = read();
        if vm.ticking.get() {
            vm.shared.borrow_mut().push((key.to_string(), value.clone()));
        }
        value
    })
}

/// This VM wrote shared data `key`: its next reads in this tick see the value at once.
pub fn wrote_shared_data(key: &str, value: &[u8]) {
    VM.with(|vm| {
        let mut shared = vm.shared.borrow_mut();
        match shared.iter_mut().find(|(k, _)| k == key) {
            Some((_, known)) => *known = Some(value.to_vec()),
            None if vm.ticking.get() => shared.push((key.to_string(), Some(value.to_vec()))),
            None => {}
        }
    })
}

/// A proxy-wasm counter (`wasmcustom.<name>` in Envoy's `/stats`). If the host refuses to
/// define it, the filter keeps working and the counter stays silent.
#[derive(Debug, Clone, Copy, Default)]
pub struct Counter(Option<Slot>);

#[derive(Debug, Clone, Copy)]
struct Slot {
    id: u32,
    index: usize,
}

impl Counter {
    pub fn define(name: &str) -> Counter {
        match raw::define_counter(name.as_bytes()) {
            Ok(id) => Counter(Some(Slot {
                id,
                index: VM.with(|vm| {
                    let mut pending = vm.pending.borrow_mut();
                    pending.push((id, 0));
                    pending.len() - 1
                }),
            })),
            Err(status) => {
                log::warn!("cannot define metric {name}: status {status}");
                Counter(None)
            }
        }
    }

    /// Counted in the VM until the next tick; directly (one host call) if the host does not tick.
    pub fn increment(self) {
        let Some(slot) = self.0 else { return };
        VM.with(|vm| {
            if vm.ticking.get() {
                if let Some((_, count)) = vm.pending.borrow_mut().get_mut(slot.index) {
                    *count += 1;
                }
            } else {
                let _ = raw::increment_metric(slot.id, 1);
            }
        });
    }
}
