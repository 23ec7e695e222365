//! Export only the stream callbacks a filter implements.
//!
//! The proxy-wasm Rust SDK exports every callback (`proxy_on_response_body`, `proxy_on_log`,
//! ...), and Envoy's Wasm host enters the VM for each one it finds exported: on every request,
//! for every response body chunk, whether the filter does anything there or not. For a
//! callback the module does *not* export, the host returns `Continue` without entering the VM
//! (proxy-wasm-cpp-host `ContextBase::onResponseBody` and its siblings check the function
//! first). So `cargo xtask build` (`scripts/build`) removes the exports of the per-stream callbacks a filter does not
//! implement; each filter lists the ones it does in its `Cargo.toml`:
//!
//! ```toml
//! [package.metadata.tether]
//! callbacks = ["on_http_request_headers", "on_http_response_headers"]
//! ```
//!
//! Of the per-stream callbacks only the eight below are ever removed; besides them only the
//! callbacks Envoy never calls on an HTTP filter go ([`crate::shrink`]). `proxy_on_context_create`
//! and `proxy_on_delete` (which frees the SDK's per-stream context) and everything else stay.

/// The SDK trait method → the export Envoy calls for it, for every per-stream callback the
/// host skips when it is missing.
pub const STREAM_CALLBACKS: [(&str, &str); 8] = [
    ("on_http_request_headers", "proxy_on_request_headers"),
    ("on_http_request_body", "proxy_on_request_body"),
    ("on_http_request_trailers", "proxy_on_request_trailers"),
    ("on_http_response_headers", "proxy_on_response_headers"),
    ("on_http_response_body", "proxy_on_response_body"),
    ("on_http_response_trailers", "proxy_on_response_trailers"),
    ("on_log", "proxy_on_log"),
    ("on_done", "proxy_on_done"),
];

const MAGIC_AND_VERSION: [u8; 8] = [0x00, 0x61, 0x73, 0x6d, 0x01, 0x00, 0x00, 0x00];
const EXPORT_SECTION: u8 = 7;

/// The exports of the stream callbacks not in `implemented` (SDK method names, as in
/// `STREAM_CALLBACKS`). Refuses a name that is not a stream callback, so a typo in a
/// `Cargo.toml` cannot silently drop a callback the filter needs.
pub fn unused_callback_exports(implemented: &[String]) -> Result<Vec<&'static str>, String> {
    if let Some(unknown) = implemented.iter().find(|m| !STREAM_CALLBACKS.iter().any(|(method, _)| method == m)) {
        let known: Vec<&str> = STREAM_CALLBACKS.iter().map(|(method, _)| *method).collect();
        return Err(format!("unknown callback {unknown:?}; known: {}", known.join(", ")));
    }
    Ok(STREAM_CALLBACKS
        .iter()
        .filter(|(method, _)| !implemented.iter().any(|m| m == method))
        .map(|(_, export)| *export)
        .collect())
}

/// The names of a module's exports, in order.
pub fn export_names(module: &[u8]) -> Result<Vec<String>, String> {
    let mut names = Vec::new();
    for section in sections(module)? {
        if section.id == EXPORT_SECTION {
            for entry in export_entries(section.payload)? {
                names.push(entry.name.to_string());
            }
        }
    }
    Ok(names)
}

/// `module` without the exports named in `remove`. Every other byte is kept as it was (the
/// functions stay; only the export entries go). Idempotent.
pub fn remove_exports(module: &[u8], remove: &[&str]) -> Result<Vec<u8>, String> {
    let mut out = MAGIC_AND_VERSION.to_vec();
    for section in sections(module)? {
        if section.id != EXPORT_SECTION {
            out.extend_from_slice(section.raw);
            continue;
        }
        let kept: Vec<ExportEntry> =
            export_entries(section.payload)?.into_iter().filter(|e| !remove.contains(&e.name)).collect();
        let mut payload = Vec::new();
        write_u32(&mut payload, u32::try_from(kept.len()).map_err(|_| "too many exports")?);
        for entry in &kept {
            payload.extend_from_slice(entry.raw);
        }
        out.push(EXPORT_SECTION);
        write_u32(&mut out, u32::try_from(payload.len()).map_err(|_| "export section too large")?);
        out.extend_from_slice(&payload);
    }
    Ok(out)
}

const CODE_SECTION: u8 = 10;

/// The size in bytes of each function body in `module`, in order. Envoy's memory follows the
/// largest of them (tether-glue's `Filter` says how), so the suite keeps them bounded.
pub fn function_body_sizes(module: &[u8]) -> Result<Vec<usize>, String> {
    let mut sizes = Vec::new();
    for section in sections(module)? {
        if section.id == CODE_SECTION {
            let mut reader = Reader { bytes: section.payload, at: 0 };
            for _ in 0..reader.u32()? {
                let size = reader.u32()? as usize;
                reader.take(size)?;
                sizes.push(size);
            }
        }
    }
    Ok(sizes)
}

struct Section<'a> {
    id: u8,
    /// The whole section: id, size and payload.
    raw: &'a [u8],
    payload: &'a [u8],
}

fn sections(module: &[u8]) -> Result<Vec<Section<'_>>, String> {
    let body = module.strip_prefix(&MAGIC_AND_VERSION[..]).ok_or("not a WebAssembly 1.0 module")?;
    let mut reader = Reader { bytes: body, at: 0 };
    let mut sections = Vec::new();
    while !reader.done() {
        let start = reader.at;
        let id = reader.byte()?;
        let size = reader.u32()? as usize;
        let payload = reader.take(size)?;
        let raw = body.get(start..reader.at).ok_or("module ends early")?;
        sections.push(Section { id, raw, payload });
    }
    Ok(sections)
}

struct ExportEntry<'a> {
    name: &'a str,
    /// The whole entry: name, kind and index.
    raw: &'a [u8],
}

fn export_entries(payload: &[u8]) -> Result<Vec<ExportEntry<'_>>, String> {
    let mut reader = Reader { bytes: payload, at: 0 };
    let count = reader.u32()?;
    let mut entries = Vec::new();
    for _ in 0..count {
        let start = reader.at;
        let len = reader.u32()? as usize;
        let name = std::str::from_utf8(reader.take(len)?).map_err(|_| "export name is not UTF-8")?;
        reader.byte()?; // kind: function, table, memory, global
        reader.u32()?; // index
        let raw = payload.get(start..reader.at).ok_or("module ends early")?;
        entries.push(ExportEntry { name, raw });
    }
    if !reader.done() {
        return Err("export section has trailing bytes".into());
    }
    Ok(entries)
}

struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn done(&self) -> bool {
        self.at >= self.bytes.len()
    }

    fn byte(&mut self) -> Result<u8, String> {
        let b = *self.bytes.get(self.at).ok_or("module ends early")?;
        self.at += 1;
        Ok(b)
    }

    fn take(&mut self, len: usize) -> Result<&'a [u8], String> {
        let end = self.at.checked_add(len).ok_or("module ends early")?;
        let slice = self.bytes.get(self.at..end).ok_or("module ends early")?;
        self.at = end;
        Ok(slice)
    }

    /// Unsigned LEB128, at most 5 bytes (the format's limit for u32).
    fn u32(&mut self) -> Result<u32, String> {
        let mut value: u64 = 0;
        for shift in (0..35).step_by(7) {
            let b = self.byte()?;
            value |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return u32::try_from(value).map_err(|_| "LEB128 value exceeds u32".into());
            }
        }
        Err("LEB128 value longer than 5 bytes".into())
    }
}

fn write_u32(out: &mut Vec<u8>, mut value: u32) {
    loop {
        let low = (value & 0x7f) as u8;
        value >>= 7;
        if value == 0 {
            out.push(low);
            return;
        }
        out.push(low | 0x80);
    }
}

/// A filter crate that lists its stream callbacks in `[package.metadata.tether]`.
#[derive(Debug)]
pub struct FilterCallbacks {
    pub package: String,
    /// The cdylib's name as rustc writes it (`tether_body_limit`).
    pub lib_name: String,
    /// Its crate folder (`filters/body-limit`).
    pub dir: std::path::PathBuf,
    pub callbacks: Vec<String>,
}

/// A workspace crate under `filters/` that builds a Wasm module (a cdylib).
#[derive(Debug)]
pub struct WasmModule {
    pub package: String,
    /// The cdylib's name as rustc writes it (`tether_body_limit`).
    pub lib_name: String,
}

/// The workspace's packages, from `cargo metadata` (so Cargo's own TOML parser reads them).
fn packages() -> Result<Vec<serde_json::Value>, String> {
    let out = std::process::Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .args(["metadata", "--no-deps", "--format-version", "1"])
        .current_dir(crate::repo_root())
        .output()
        .map_err(|e| format!("cannot run cargo metadata: {e}"))?;
    if !out.status.success() {
        return Err(format!("cargo metadata failed: {}", String::from_utf8_lossy(&out.stderr)));
    }
    let metadata: serde_json::Value =
        serde_json::from_slice(&out.stdout).map_err(|e| format!("cargo metadata: {e}"))?;
    metadata
        .get("packages")
        .and_then(|p| p.as_array())
        .cloned()
        .ok_or_else(|| "cargo metadata: no packages".to_string())
}

/// A text field of a `cargo metadata` object ("" when absent).
fn text<'a>(value: &'a serde_json::Value, field: &str) -> &'a str {
    value.get(field).and_then(|v| v.as_str()).unwrap_or_default()
}

/// A package's cdylib target, if it builds one: its name as rustc writes it.
fn cdylib_name(package: &serde_json::Value) -> Option<String> {
    let targets = package.get("targets")?.as_array()?;
    let is_cdylib = |t: &&serde_json::Value| {
        t.get("kind").and_then(|k| k.as_array()).is_some_and(|k| k.iter().any(|k| k == "cdylib"))
    };
    Some(text(targets.iter().find(is_cdylib)?, "name").replace('-', "_"))
}

/// Every Wasm module the workspace builds: the cdylib crates under `filters/`.
pub fn wasm_modules() -> Result<Vec<WasmModule>, String> {
    let filters = crate::repo_root().join("filters");
    let mut modules = Vec::new();
    for package in packages()? {
        let manifest = std::path::PathBuf::from(text(&package, "manifest_path"));
        if !manifest.starts_with(&filters) {
            continue;
        }
        if let Some(lib_name) = cdylib_name(&package) {
            let name = text(&package, "name").to_string();
            modules.push(WasmModule { package: name, lib_name });
        }
    }
    Ok(modules)
}

/// Every workspace crate with a `[package.metadata.tether] callbacks` list.
pub fn filter_callbacks() -> Result<Vec<FilterCallbacks>, String> {
    let mut filters = Vec::new();
    for package in packages()? {
        let name = text(&package, "name").to_string();
        let Some(listed) = package.pointer("/metadata/tether/callbacks") else { continue };
        let callbacks = listed
            .as_array()
            .and_then(|a| a.iter().map(|c| c.as_str().map(String::from)).collect::<Option<Vec<_>>>())
            .ok_or_else(|| format!("{name}: metadata.tether.callbacks must be a list of strings"))?;
        let lib_name = cdylib_name(&package).ok_or_else(|| format!("{name}: lists callbacks but builds no cdylib"))?;
        let manifest = std::path::PathBuf::from(text(&package, "manifest_path"));
        let dir = manifest.parent().map(std::path::PathBuf::from).unwrap_or_default();
        filters.push(FilterCallbacks { package: name, lib_name, dir, callbacks });
    }
    Ok(filters)
}

/// Where `cargo xtask build` leaves a module's release `.wasm`.
pub fn release_wasm(lib_name: &str) -> std::path::PathBuf {
    crate::repo_root().join("target/wasm32-unknown-unknown/release").join(format!("{lib_name}.wasm"))
}

/// Where it leaves the portable flavour of a filter's module: every callback exported, as the
/// SDK builds it, for hosts that call callbacks without checking they exist (nginx's
/// ngx_wasm_module crashes on a module without `proxy_on_response_body`).
pub fn portable_wasm(lib_name: &str) -> std::path::PathBuf {
    crate::repo_root().join("target/wasm32-unknown-unknown/release/portable").join(format!("{lib_name}.wasm"))
}

#[cfg(test)]
mod tests {
    // Test code: a failed unwrap or index is a failed test.
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]
    use super::*;

    /// A module with a type section, one function, an export section and a custom section.
    fn module(exports: &[&str]) -> Vec<u8> {
        let mut m = MAGIC_AND_VERSION.to_vec();
        m.extend_from_slice(&[1, 4, 1, 0x60, 0, 0]); // type: () -> ()
        m.extend_from_slice(&[3, 2, 1, 0]); // function 0 has type 0
        let mut payload = Vec::new();
        write_u32(&mut payload, exports.len() as u32);
        for name in exports {
            write_u32(&mut payload, name.len() as u32);
            payload.extend_from_slice(name.as_bytes());
            payload.extend_from_slice(&[0, 0]); // function 0
        }
        m.push(EXPORT_SECTION);
        write_u32(&mut m, payload.len() as u32);
        m.extend_from_slice(&payload);
        m.extend_from_slice(&[10, 4, 1, 2, 0, 0x0b]); // code: empty body
        m.extend_from_slice(&[0, 5, 4, b'n', b'o', b't', b'e']); // custom section "note"
        m
    }

    #[test]
    fn removes_only_the_named_exports_and_keeps_every_other_byte() {
        let before = module(&["memory_like", "proxy_on_log", "proxy_on_delete"]);
        let after = remove_exports(&before, &["proxy_on_log"]).unwrap();
        assert_eq!(export_names(&after).unwrap(), ["memory_like", "proxy_on_delete"]);
        assert_eq!(after, module(&["memory_like", "proxy_on_delete"]));
        assert_eq!(remove_exports(&after, &["proxy_on_log"]).unwrap(), after, "idempotent");
    }

    #[test]
    fn a_long_export_section_keeps_a_correct_size() {
        let names: Vec<String> = (0..40).map(|i| format!("export_with_a_long_name_{i}")).collect();
        let refs: Vec<&str> = names.iter().map(String::as_str).collect();
        let after = remove_exports(&module(&refs), &["export_with_a_long_name_3"]).unwrap();
        assert_eq!(export_names(&after).unwrap().len(), 39);
        assert_eq!(after, module(&[&refs[..3], &refs[4..]].concat()));
    }

    #[test]
    fn refuses_what_is_not_a_module_or_ends_early() {
        assert!(remove_exports(b"\0asm\x02\0\0\0", &[]).is_err());
        let m = module(&["a"]);
        assert!(export_names(&m[..m.len() - 3]).is_err());
    }

    #[test]
    fn unused_callbacks_are_the_complement_and_typos_are_refused() {
        let used = vec!["on_http_request_headers".to_string(), "on_log".to_string()];
        let unused = unused_callback_exports(&used).unwrap();
        assert_eq!(unused.len(), 6);
        assert!(!unused.contains(&"proxy_on_request_headers") && !unused.contains(&"proxy_on_log"));
        assert!(unused.contains(&"proxy_on_response_body"));
        assert!(unused_callback_exports(&["on_http_request_header".to_string()])
            .unwrap_err()
            .contains("unknown callback"));
    }
}
