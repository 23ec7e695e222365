//! One line for a plain `cargo test`: the end-to-end suite is left out without the `e2e`
//! feature (it needs Envoy and the built modules), and here is what runs it.

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    if std::env::var_os("CARGO_FEATURE_E2E").is_none() {
        println!(
            "cargo:warning=the end-to-end tests (tests/tests) need Envoy and the built modules: run scripts/test, or scripts/setup && scripts/build && cargo test -p tether-e2e --features e2e"
        );
    }
}
