//! The tether-body-limit module: its filter library run by tether-glue's proxy-wasm contexts.

tether_glue::module!(filter::BodyLimit);
