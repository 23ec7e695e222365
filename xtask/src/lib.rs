//! xtask: the build tool for Tether's Wasm modules, apart from the test harness. `cargo xtask
//! build` (what `scripts/build` runs) builds every filter module for wasm32, removes the
//! exports of the stream callbacks each does not implement ([`wasm_exports`]) and of the
//! callbacks Envoy never calls on an HTTP filter, and drops the code only those reached
//! ([`shrink`]); the test harness uses the same functions to check the result.

pub mod shrink;
pub mod wasm_exports;

use std::path::PathBuf;

/// The workspace root (this crate's parent folder).
pub fn repo_root() -> PathBuf {
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().map(PathBuf::from).unwrap_or(manifest)
}
