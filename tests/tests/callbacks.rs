//! Each filter exports only the stream callbacks it implements (`scripts/build`,
//! `tether_e2e::wasm_exports`). A callback left out of a filter's list would never run, so the
//! lists are checked against the sources, and the built modules against the lists.

// Needs Envoy (scripts/setup) and the built modules (scripts/build): `scripts/test` runs it.
#![cfg(feature = "e2e")]

use std::collections::BTreeSet;
use xtask::shrink::NEVER_CALLED_ON_AN_HTTP_FILTER;
use xtask::wasm_exports::{
    export_names, filter_callbacks, function_body_sizes, portable_wasm, release_wasm, FilterCallbacks, STREAM_CALLBACKS,
};

const TRIMMED: [&str; 6] = [
    "tether-affinity-module",
    "tether-body-limit-module",
    "tether-edge-module",
    "tether-forwarded-module",
    "tether-path-pin-module",
    "tether-uri-hash-module",
];

fn filters() -> Vec<FilterCallbacks> {
    filter_callbacks().unwrap_or_else(|e| panic!("{e}"))
}

/// tether-glue's `Filter` methods → the stream callback whose export runs them.
const FILTER_METHODS: [(&str, &str); 3] = [
    ("on_request", "on_http_request_headers"),
    ("on_request_body", "on_http_request_body"),
    ("on_response", "on_http_response_headers"),
];

/// The stream callbacks a filter's sources implement (`fn on_request_body(` ...): a module
/// crate's are its filter library's, one folder up.
fn implemented(filter: &FilterCallbacks) -> BTreeSet<String> {
    let dir = if filter.dir.ends_with("module") { filter.dir.join("..") } else { filter.dir.clone() };
    let src = dir.join("src");
    let mut found = BTreeSet::new();
    for entry in std::fs::read_dir(&src).unwrap_or_else(|e| panic!("{}: {e}", src.display())) {
        let path = entry.unwrap_or_else(|e| panic!("{e}")).path();
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        for (method, callback) in FILTER_METHODS {
            if text.contains(&format!("fn {method}(")) {
                found.insert(callback.to_string());
            }
        }
        for (method, _) in STREAM_CALLBACKS {
            if text.contains(&format!("fn {method}(")) {
                found.insert(method.to_string());
            }
        }
    }
    found
}

#[test]
fn every_tether_filter_lists_its_callbacks() {
    let listed: BTreeSet<String> = filters().into_iter().map(|f| f.package).collect();
    for package in TRIMMED {
        assert!(listed.contains(package), "{package} has no [package.metadata.tether] callbacks");
    }
}

#[test]
fn each_list_is_exactly_what_the_sources_implement() {
    for filter in filters() {
        let listed: BTreeSet<String> = filter.callbacks.iter().cloned().collect();
        assert_eq!(
            listed,
            implemented(&filter),
            "{}: Cargo.toml's callbacks differ from the stream callbacks its src/ implements",
            filter.package
        );
    }
}

#[test]
fn edge_exports_every_callback_one_of_its_filters_needs() {
    let filters = filters();
    let edge =
        filters.iter().find(|f| f.package == "tether-edge-module").map(|f| f.callbacks.clone()).unwrap_or_default();
    let union: BTreeSet<String> = filters
        .iter()
        .filter(|f| f.package != "tether-edge-module" && TRIMMED.contains(&f.package.as_str()))
        .flat_map(|f| f.callbacks.clone())
        .collect();
    assert_eq!(edge.into_iter().collect::<BTreeSet<_>>(), union);
}

#[test]
fn built_modules_export_their_callbacks_and_no_other() {
    for filter in filters() {
        let path = release_wasm(&filter.lib_name);
        let module =
            std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e} (run scripts/build first)", path.display()));
        let exports = export_names(&module).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        for (method, export) in STREAM_CALLBACKS {
            let wanted = filter.callbacks.iter().any(|c| c == method);
            assert_eq!(
                exports.iter().any(|e| e == export),
                wanted,
                "{}: {export} exported: {}",
                filter.package,
                !wanted
            );
        }
        for always in [
            "proxy_on_context_create",
            "proxy_on_delete",
            "proxy_on_configure",
            "proxy_on_vm_start",
            "proxy_on_tick",
            "proxy_abi_version_0_2_1",
            "_initialize",
            "malloc",
            "memory",
        ] {
            assert!(exports.iter().any(|e| e == always), "{}: {always} must stay exported", filter.package);
        }
        for never in NEVER_CALLED_ON_AN_HTTP_FILTER {
            assert!(!exports.iter().any(|e| e == never), "{}: {never} exported", filter.package);
        }
    }
}

#[test]
fn the_portable_flavour_exports_every_callback() {
    // For hosts that call every callback without checking (nginx's ngx_wasm_module).
    for filter in filters() {
        let path = portable_wasm(&filter.lib_name);
        let module = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e} (run scripts/build)", path.display()));
        let exports = export_names(&module).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        for (_, export) in STREAM_CALLBACKS {
            assert!(exports.iter().any(|e| e == export), "{}: {export} missing", path.display());
        }
    }
}

/// Sizes as of issue 14's size work, with ~10% room for toolchains and small changes: what
/// doubled the configuration code once (a deserializer per input format) or pulled in Unicode
/// tables for one message shows here, not in a README months later.
const SIZE_BUDGET_KB: [(&str, u64); 6] = [
    ("tether_body_limit", 175),
    ("tether_path_pin", 205),
    ("tether_uri_hash", 225),
    ("tether_forwarded", 235),
    ("tether_affinity", 290),
    ("tether_edge", 430),
];

#[test]
fn built_modules_stay_within_their_size_budget() {
    let mut over = Vec::new();
    for (lib, budget_kb) in SIZE_BUDGET_KB {
        let path = release_wasm(lib);
        let bytes =
            std::fs::metadata(&path).unwrap_or_else(|e| panic!("{}: {e} (run scripts/build)", path.display())).len();
        if bytes > budget_kb * 1000 {
            over.push(format!("{lib}.wasm is {bytes} bytes, budget {budget_kb} KB"));
        }
    }
    assert!(over.is_empty(), "over budget (README, \"What it costs\", says what holds the size):\n{}", over.join("\n"));
}

/// Envoy's V8 compiles every function with TurboFan and its memory follows the largest ones
/// (tether-glue's `Filter`): tether-edge held 8 MiB more RSS while its filters were inlined into
/// a 22 KB request function and a 47 KB `configure`. Now the largest is under 11 KB.
const LARGEST_FUNCTION_BYTES: usize = 16_000;

#[test]
fn no_function_in_a_module_is_large_enough_to_cost_envoy_memory() {
    let mut over = Vec::new();
    for (lib, _) in SIZE_BUDGET_KB {
        let path = release_wasm(lib);
        let module = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e} (run scripts/build)", path.display()));
        let sizes = function_body_sizes(&module).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let (index, largest) = sizes.iter().copied().enumerate().max_by_key(|&(_, s)| s).unwrap_or_default();
        if largest > LARGEST_FUNCTION_BYTES {
            over.push(format!("{lib}.wasm: function {index} is {largest} bytes"));
        }
    }
    assert!(
        over.is_empty(),
        "over {LARGEST_FUNCTION_BYTES} bytes (keep filters' callbacks out of line):\n{}",
        over.join("\n")
    );
}
