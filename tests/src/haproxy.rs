//! HAProxy (Debian's 2.6, the version the Overleaf guide runs) loaded with a guide's config,
//! for the parity suite: the same scenarios against HAProxy and against Envoy + Tether.
//!
//! Configs live in `tests/parity/*.haproxy.cfg`: the guide's lines with loopback placeholders
//! (`@HTTP_PORT@`, `@HTTPS_PORT@`, `@PEM@`, `@NODE1@`..., `@SOCKET@`) filled in here.

use crate::{free_port, repo_root, wait_for, ScratchDir, TestNode};
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

pub struct Haproxy {
    child: Child,
    pub http: SocketAddr,
    /// The TLS listener, when the config has one.
    pub https: Option<SocketAddr>,
    socket: PathBuf,
    log_path: PathBuf,
    _dir: ScratchDir,
}

impl Haproxy {
    /// Starts `haproxy -db -f tests/parity/<name>.haproxy.cfg` in front of `nodes` and waits
    /// until every server is UP.
    pub fn start(name: &str, nodes: &[&TestNode]) -> Haproxy {
        let template_path = repo_root().join("tests/parity").join(format!("{name}.haproxy.cfg"));
        let template =
            std::fs::read_to_string(&template_path).unwrap_or_else(|e| panic!("{}: {e}", template_path.display()));
        let mut last_log = String::new();
        for _ in 0..3 {
            match Haproxy::try_start(&template, nodes) {
                Ok(h) => return h,
                Err(log) => last_log = log,
            }
        }
        panic!("HAProxy did not start with {}:\n{last_log}", template_path.display())
    }

    fn try_start(template: &str, nodes: &[&TestNode]) -> Result<Haproxy, String> {
        let dir = ScratchDir::new("haproxy");
        // HAProxy cannot report a port the OS chose; a clash makes it exit at start and
        // `start` tries again.
        let (http, https) = (free_port(), free_port());
        let socket = dir.join("stats.sock");
        let mut cfg = template
            .replace("@HTTP_PORT@", &http.to_string())
            .replace("@HTTPS_PORT@", &https.to_string())
            .replace("@SOCKET@", &socket.display().to_string());
        if cfg.contains("@PEM@") {
            let (cert, key) = crate::self_signed_cert(&dir);
            let pem = dir.join("bundle.pem");
            let bundle = [std::fs::read(&cert), std::fs::read(&key)].map(|r| r.unwrap_or_default()).concat();
            std::fs::write(&pem, bundle).map_err(|e| e.to_string())?;
            cfg = cfg.replace("@PEM@", &pem.display().to_string());
        }
        for (i, node) in nodes.iter().enumerate() {
            cfg = cfg.replace(&format!("@NODE{}@", i + 1), &node.addr.to_string());
        }
        assert!(!cfg.contains('@'), "unfilled placeholder in the HAProxy config:\n{cfg}");
        let cfg_path = dir.join("haproxy.cfg");
        let log_path = dir.join("haproxy.log");
        std::fs::write(&cfg_path, &cfg).map_err(|e| e.to_string())?;
        let log = std::fs::File::create(&log_path).map_err(|e| e.to_string())?;
        let mut cmd = Command::new(crate::sbin("haproxy"));
        cmd.arg("-db").arg("-f").arg(&cfg_path).stdout(Stdio::null()).stderr(log);
        crate::die_with_parent(&mut cmd);
        let child = cmd.spawn().unwrap_or_else(|e| panic!("cannot run haproxy (scripts/setup installs it): {e}"));
        let https = cfg.contains(&format!(":{https} ssl")).then(|| SocketAddr::from(([127, 0, 0, 1], https)));
        let mut h =
            Haproxy { child, http: SocketAddr::from(([127, 0, 0, 1], http)), https, socket, log_path, _dir: dir };
        // Up when the stats socket answers; an early exit (a port clash) means try again.
        let up = crate::wait::poll(Duration::from_secs(10), || {
            if let Ok(Some(_)) = h.child.try_wait() {
                return Some(false);
            }
            h.stat_rows().ok().map(|_| true)
        });
        if up != Some(true) {
            return Err(h.log());
        }
        for node in nodes {
            h.wait_for_health(node, true);
        }
        Ok(h)
    }

    /// `show stat` on the stats socket: one map per row, keyed by the CSV header.
    fn stat_rows(&self) -> std::io::Result<Vec<Vec<(String, String)>>> {
        let mut s = UnixStream::connect(&self.socket)?;
        s.write_all(b"show stat\n")?;
        let mut out = String::new();
        s.read_to_string(&mut out)?;
        let mut lines = out.lines();
        let header: Vec<String> =
            lines.next().unwrap_or_default().trim_start_matches("# ").split(',').map(String::from).collect();
        Ok(lines
            .filter(|l| !l.is_empty())
            .map(|l| header.iter().cloned().zip(l.split(',').map(String::from)).collect())
            .collect())
    }

    /// Waits until HAProxy's health checks see `node` UP (`true`) or DOWN.
    pub fn wait_for_health(&self, node: &TestNode, up: bool) {
        let addr = node.addr.to_string();
        let what = format!("HAProxy to see {addr} as {}", if up { "UP" } else { "DOWN" });
        wait_for(&what, Duration::from_secs(15), || {
            let rows = self.stat_rows().ok()?;
            let field = |row: &Vec<(String, String)>, k: &str| {
                row.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone()).unwrap_or_default()
            };
            let states: Vec<String> =
                rows.iter().filter(|r| field(r, "addr") == addr).map(|r| field(r, "status")).collect();
            // "no check": a server without health checks (the benchmark's config) counts as up.
            let is_up = |s: &String| s == "UP" || s == "no check";
            let ok = !states.is_empty() && states.iter().all(|s| if up { is_up(s) } else { s.starts_with("DOWN") });
            ok.then_some(())
        });
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("----- HAProxy log -----\n{}\n----- end of HAProxy log -----", self.log());
        }
    }
}
