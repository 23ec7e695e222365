//! `cargo xtask build`: every Wasm module of the workspace (each crate under `filters/` that
//! builds a cdylib: the filters' modules, tether-edge, the test-only noop and crash), in
//! release for wasm32, with the stream callbacks a filter does not implement removed from its
//! exports (`[package.metadata.tether] callbacks`); prints each module's path and size.

use std::process::{Command, ExitCode};
use xtask::repo_root;
use xtask::wasm_exports::{filter_callbacks, release_wasm, remove_exports, unused_callback_exports, wasm_modules};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.iter().map(String::as_str).collect::<Vec<_>>().as_slice() {
        ["build"] => build(),
        _ => Err("usage: cargo xtask build".to_string()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: {e}");
            ExitCode::FAILURE
        }
    }
}

fn build() -> Result<(), String> {
    let modules = wasm_modules()?;
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut command = Command::new(cargo);
    command.current_dir(repo_root()).args(["build", "--quiet", "--release", "--target", "wasm32-unknown-unknown"]);
    for module in &modules {
        command.args(["-p", &module.package]);
    }
    let status = command.status().map_err(|e| format!("cannot run cargo: {e}"))?;
    if !status.success() {
        return Err(format!("cargo build failed ({status})"));
    }
    // Export only the stream callbacks each filter implements: Envoy skips the others without
    // entering the VM.
    for filter in filter_callbacks()? {
        let path = release_wasm(&filter.lib_name);
        let module = std::fs::read(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        let unused = unused_callback_exports(&filter.callbacks).map_err(|e| format!("{}: {e}", filter.package))?;
        let trimmed = remove_exports(&module, &unused).map_err(|e| format!("{}: {e}", path.display()))?;
        if trimmed != module {
            std::fs::write(&path, &trimmed).map_err(|e| format!("{}: {e}", path.display()))?;
        }
        println!("{:<22} exports {}", filter.package, filter.callbacks.join(", "));
    }
    for module in &modules {
        let path = release_wasm(&module.lib_name);
        let size = std::fs::metadata(&path).map_err(|e| format!("{}: {e}", path.display()))?.len();
        let shown = path.strip_prefix(repo_root()).unwrap_or(&path);
        println!("{:<60} {size:>8} bytes", shown.display());
    }
    Ok(())
}
