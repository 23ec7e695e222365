//! tether-core: every decision Tether's filters make, in plain Rust.
//!
//! Nothing here depends on proxy-wasm, so all of it is unit-tested natively, and the parts
//! where integer width matters (sizes, durations) also run on wasm32 through wasm-bindgen-test.
//! The filter crates are thin adapters: they read what a callback offers, call one function
//! here and apply the answer.

pub mod affinity;
pub mod body_limit;
pub mod config;
pub mod cookie;
pub mod duration;
#[doc(hidden)]
pub mod fixtures;
pub mod forwarded;
pub mod hash;
pub mod nodes;
pub mod path_pin;
mod protobuf_struct;
pub mod request_match;
pub mod routing;
pub mod size;
pub mod token;
pub mod uri_hash;

pub use config::{parse_config, ConfigError};
