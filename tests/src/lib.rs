//! Tether's end-to-end harness: real Envoy and sample backend nodes on loopback.
//!
//! Every process is owned: started here, killed on drop (also when a test panics, and by
//! the kernel if the test process itself dies), on ports chosen by the OS. Waits poll a
//! condition with a deadline; nothing sleeps and hopes.

pub mod envoy;
pub mod haproxy;
pub mod http;
pub mod node;
pub mod sample;
pub mod wait;

use std::path::PathBuf;

pub use envoy::{Envoy, EnvoyConfig, WasmFilter};
pub use http::{admin_get, curl, CurlResponse};
pub use node::TestNode;
pub use wait::wait_for;

/// The repository root (this crate lives in `tests/`).
pub fn repo_root() -> PathBuf {
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().map(PathBuf::from).unwrap_or(manifest)
}

/// A fresh scratch directory, removed when dropped.
pub struct ScratchDir {
    pub path: PathBuf,
}

impl ScratchDir {
    pub fn new(label: &str) -> ScratchDir {
        use std::sync::atomic::{AtomicU32, Ordering};
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let n = NEXT.fetch_add(1, Ordering::SeqCst);
        let path = std::env::temp_dir().join(format!("tether-e2e-{}-{label}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).unwrap_or_else(|e| panic!("cannot create {}: {e}", path.display()));
        ScratchDir { path }
    }

    pub fn join(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }

    /// A file of `len` zero bytes (sparse, so large sizes cost nothing).
    pub fn file_of_size(&self, name: &str, len: u64) -> PathBuf {
        let path = self.join(name);
        let f = std::fs::File::create(&path).unwrap_or_else(|e| panic!("create {}: {e}", path.display()));
        f.set_len(len).unwrap_or_else(|e| panic!("size {}: {e}", path.display()));
        path
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// Makes a child die with the test process, even on SIGKILL of the test.
pub(crate) fn die_with_parent(cmd: &mut std::process::Command) {
    use std::os::unix::process::CommandExt;
    // SAFETY: prctl is async-signal-safe; nothing else runs between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
}

/// A self-signed certificate for `localhost` / 127.0.0.1 / ::1 (PEM cert and key), made with
/// the openssl command-line tool, for TLS listeners in tests and the demo.
pub fn self_signed_cert(dir: &ScratchDir) -> (PathBuf, PathBuf) {
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    let out = std::process::Command::new("openssl")
        .args(["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=localhost"])
        .args(["-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1,IP:::1"])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .unwrap_or_else(|e| panic!("cannot run openssl (scripts/setup installs it): {e}"));
    assert!(out.status.success(), "openssl failed: {}", String::from_utf8_lossy(&out.stderr));
    (cert, key)
}
