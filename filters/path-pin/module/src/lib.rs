//! The tether-path-pin module: its filter library run by tether-glue's proxy-wasm contexts.

tether_glue::module!(filter::PathPin);
