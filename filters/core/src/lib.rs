//! tether-core: every decision Tether's filters make, in plain Rust.
//!
//! Nothing here depends on proxy-wasm, so all of it is unit-tested natively, and the parts
//! where integer width matters (sizes, durations) also run on wasm32 through wasm-bindgen-test.
//! A policy takes a read-only view of the request or response ([`headers::HeaderMap`] and the
//! lazily asked [`plan::Facts`]) and returns a [`plan::Plan`]: header edits, a local reply, the
//! routing target. The filter crates are thin: tether-glue reads what a callback offers, calls
//! one function here and applies the plan with the fewest host calls.

pub mod affinity;
pub mod ascii;
pub mod body_limit;
pub mod config;
mod config_de;
pub mod cookie;
pub mod duration;
#[doc(hidden)]
pub mod fixtures;
pub mod forwarded;
pub mod hash;
pub mod headers;
pub mod nodes;
pub mod path_pin;
pub mod plan;
mod protobuf_struct;
pub mod request_match;
pub mod routing;
pub mod size;
pub mod token;
pub mod uri_hash;

pub use config::{parse_config, ConfigError};
