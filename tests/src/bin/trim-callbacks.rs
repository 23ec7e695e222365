//! `scripts/build` runs this after building the filters: removes from each filter's release
//! `.wasm` the exports of the stream callbacks it does not implement, so Envoy never enters
//! the VM for them (see `tether_e2e::wasm_exports`). Filters without
//! `[package.metadata.tether] callbacks` are left as the SDK built them.

use std::process::ExitCode;
use tether_e2e::wasm_exports::{filter_callbacks, release_wasm, remove_exports, unused_callback_exports};

fn main() -> ExitCode {
    match trim_all() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("trim-callbacks: {e}");
            ExitCode::FAILURE
        }
    }
}

fn trim_all() -> Result<(), String> {
    for filter in filter_callbacks()? {
        let path = release_wasm(&filter.lib_name);
        let module = std::fs::read(&path).map_err(|e| format!("{}: {e} (build it first)", path.display()))?;
        let unused = unused_callback_exports(&filter.callbacks).map_err(|e| format!("{}: {e}", filter.package))?;
        let trimmed = remove_exports(&module, &unused).map_err(|e| format!("{}: {e}", path.display()))?;
        if trimmed != module {
            std::fs::write(&path, &trimmed).map_err(|e| format!("{}: {e}", path.display()))?;
        }
        println!("{:<22} exports {}", filter.package, filter.callbacks.join(", "));
    }
    Ok(())
}
