//! The tether-edge module: the five filter libraries in one VM, run by tether-glue's contexts.

tether_glue::module!(filter::Edge);
