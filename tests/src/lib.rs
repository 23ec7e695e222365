//! Tether's end-to-end harness: real Envoy and sample backend nodes on loopback.
//!
//! Every process is owned: started here, killed on drop (also when a test panics, and by
//! the kernel if the test process itself dies), on ports chosen by the OS. Waits poll a
//! condition with a deadline; nothing sleeps and hopes.

pub mod eds;
pub mod envoy;
pub mod haproxy;
pub mod http;
pub mod manifests;
pub mod nginx;
pub mod nginx_conf;
pub mod node;
pub mod openapi;
pub mod sample;
pub mod wait;
pub mod wasm_host;
pub mod workload;
pub mod ws;

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

/// CPU time a process has used so far, all threads: the scheduler's exact on-CPU time
/// (`/proc/<pid>/task/*/schedstat`, nanoseconds), else user + system from `/proc/<pid>/stat`
/// (clock ticks: 10 ms steps). Threads that already exited are not counted by the first; the
/// proxies measured here keep theirs.
pub fn process_cpu_time(pid: u32) -> std::time::Duration {
    scheduler_cpu_time(pid).unwrap_or_else(|| ticks_cpu_time(pid))
}

fn scheduler_cpu_time(pid: u32) -> Option<std::time::Duration> {
    let mut nanos: u64 = 0;
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).ok()? {
        let schedstat = std::fs::read_to_string(task.ok()?.path().join("schedstat")).ok()?;
        nanos += schedstat.split_whitespace().next()?.parse::<u64>().ok()?;
    }
    (nanos > 0).then(|| std::time::Duration::from_nanos(nanos))
}

fn ticks_cpu_time(pid: u32) -> std::time::Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the ")" that closes the command name; utime and stime are 14 and 15.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or_default();
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = [11, 12].iter().filter_map(|&i| fields.get(i)?.parse::<u64>().ok()).sum();
    // SAFETY: sysconf has no preconditions.
    let per_sec = u64::try_from(unsafe { libc::sysconf(libc::_SC_CLK_TCK) }).unwrap_or(100).max(1);
    std::time::Duration::from_micros(ticks * 1_000_000 / per_sec)
}

/// An environment variable parsed as `T`, else `default` (the bench and chaos knobs).
pub fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// A loopback port that was free a moment ago, for servers that cannot report a port the OS
/// chose (HAProxy) or must be told theirs ahead (Envoy's dynamic listener in reload tests).
pub fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap_or_else(|e| panic!("bind: {e}"));
    l.local_addr().map(|a| a.port()).unwrap_or_else(|e| panic!("local_addr: {e}"))
}

/// Resident memory of a process in KiB (`VmRSS`), 0 if unknown.
pub fn process_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// A Debian daemon's binary: /usr/sbin/<name>, which an unprivileged PATH often lacks, else
/// `name` on the PATH.
pub(crate) fn sbin(name: &str) -> PathBuf {
    let path = PathBuf::from("/usr/sbin").join(name);
    if path.exists() {
        path
    } else {
        PathBuf::from(name)
    }
}

/// Makes a child die with the test process, even on SIGKILL of the test.
pub fn die_with_parent(cmd: &mut std::process::Command) {
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
