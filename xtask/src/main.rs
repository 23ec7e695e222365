//! `cargo xtask build`: every Wasm module of the workspace (each crate under `filters/` that
//! builds a cdylib: the filters' modules, tether-edge, the test-only noop and crash), in
//! release for wasm32, with the stream callbacks a filter does not implement removed from its
//! exports (`[package.metadata.tether] callbacks`), the callbacks Envoy never calls on an HTTP
//! filter too, and the code only they reached (`shrink`); prints each module's path and size.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use xtask::repo_root;
use xtask::shrink::{shrink, NEVER_CALLED_ON_AN_HTTP_FILTER};
use xtask::wasm_exports::export_names;
use xtask::wasm_exports::{filter_callbacks, portable_wasm, release_wasm, unused_callback_exports, wasm_modules};

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
    let filters = filter_callbacks()?;
    // Cargo's own output (`deps/`) stays as the SDK built it: the portable flavour is a copy of
    // it, and the trimmed module replaces the uplifted file under a new inode (the two are hard
    // links). One an older build trimmed through the link is removed, so cargo links it again.
    for filter in &filters {
        let deps = cargo_output(&filter.lib_name);
        if std::fs::read(&deps).ok().is_some_and(|m| !exports(&m).iter().any(|e| e == "proxy_on_log")) {
            for stale in [deps, release_wasm(&filter.lib_name)] {
                std::fs::remove_file(&stale).map_err(|e| format!("{}: {e}", stale.display()))?;
            }
        }
    }
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
    // entering the VM; and drop the code no export reaches then. The portable flavour keeps
    // every callback, for hosts that need them all.
    for filter in filters {
        let built = cargo_output(&filter.lib_name);
        let module = std::fs::read(&built).map_err(|e| format!("{}: {e}", built.display()))?;
        write_new(&portable_wasm(&filter.lib_name), &module)?;
        let mut unused = unused_callback_exports(&filter.callbacks).map_err(|e| format!("{}: {e}", filter.package))?;
        unused.extend(NEVER_CALLED_ON_AN_HTTP_FILTER);
        let trimmed = shrink(&module, &unused).map_err(|e| format!("{}: {e}", built.display()))?;
        write_new(&release_wasm(&filter.lib_name), &trimmed)?;
        println!("{:<22} exports {}", filter.package, filter.callbacks.join(", "));
    }
    for module in &modules {
        let path = release_wasm(&module.lib_name);
        let size = std::fs::metadata(&path).map_err(|e| format!("{}: {e}", path.display()))?.len();
        let shown = path.strip_prefix(repo_root()).unwrap_or(&path);
        println!("{:<60} {size:>8} bytes", shown.display());
    }
    println!("(target/wasm32-unknown-unknown/release/portable/: the same filters with every callback exported, for other hosts)");
    Ok(())
}

/// Where cargo links a module (`release/` holds a hard link to it).
fn cargo_output(lib_name: &str) -> PathBuf {
    repo_root().join("target/wasm32-unknown-unknown/release/deps").join(format!("{lib_name}.wasm"))
}

fn exports(module: &[u8]) -> Vec<String> {
    export_names(module).unwrap_or_default()
}

/// Writes `bytes` to `path` as a new file (a temporary renamed over it), so that a hard link
/// that was there keeps its old content.
fn write_new(path: &Path, bytes: &[u8]) -> Result<(), String> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    }
    let temporary = path.with_extension("wasm.tmp");
    std::fs::write(&temporary, bytes).map_err(|e| format!("{}: {e}", temporary.display()))?;
    std::fs::rename(&temporary, path).map_err(|e| format!("{}: {e}", path.display()))
}
