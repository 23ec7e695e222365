//! nginx (Debian's 1.22) loaded with a guide's config, for the nginx parity suite: the same
//! scenarios against nginx and against Envoy + Tether, as `haproxy.rs` does for HAProxy.
//!
//! Configs live in `tests/parity/*.nginx.conf`: the guide's lines with loopback placeholders
//! (`@HTTP_PORT@`, `@HTTPS_PORT@`, `@CERT@`, `@KEY@`, `@NODE1@`..., `@DIR@`) filled in here.

use crate::{free_port, repo_root, ScratchDir, TestNode};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

pub struct Nginx {
    child: Child,
    /// The plain listener, when the config has one.
    pub http: Option<SocketAddr>,
    /// The TLS listener, when the config has one.
    pub https: Option<SocketAddr>,
    dir: ScratchDir,
}

impl Nginx {
    /// Starts `nginx -c tests/parity/<name>.nginx.conf` in front of `nodes` and waits until it
    /// accepts connections.
    pub fn start(name: &str, nodes: &[&TestNode]) -> Nginx {
        let template_path = repo_root().join("tests/parity").join(format!("{name}.nginx.conf"));
        let template =
            std::fs::read_to_string(&template_path).unwrap_or_else(|e| panic!("{}: {e}", template_path.display()));
        let fill = |dir: &ScratchDir, http: u16, https: u16| -> String {
            let mut conf = template
                .replace("@HTTP_PORT@", &http.to_string())
                .replace("@HTTPS_PORT@", &https.to_string())
                .replace("@DIR@", &dir_text(dir));
            if conf.contains("@CERT@") {
                let (cert, key) = crate::self_signed_cert(dir);
                conf = conf.replace("@CERT@", &cert.display().to_string()).replace("@KEY@", &key.display().to_string());
            }
            for (i, node) in nodes.iter().enumerate() {
                conf = conf.replace(&format!("@NODE{}@", i + 1), &node.addr.to_string());
            }
            conf
        };
        Nginx::start_conf(&crate::sbin("nginx"), &template_path.display().to_string(), fill, &[])
    }

    /// Starts `binary` with the configuration `fill(scratch dir, http port, https port)` writes,
    /// `env` in its environment; tries again (new ports) if it does not come up.
    pub fn start_conf(
        binary: &std::path::Path,
        what: &str,
        fill: impl Fn(&ScratchDir, u16, u16) -> String,
        env: &[(&str, &str)],
    ) -> Nginx {
        let mut last_log = String::new();
        for _ in 0..3 {
            match Nginx::try_start(binary, &fill, env) {
                Ok(n) => return n,
                Err(log) => last_log = log,
            }
        }
        panic!("nginx did not start with {what}:\n{last_log}")
    }

    fn try_start(
        binary: &std::path::Path,
        fill: &dyn Fn(&ScratchDir, u16, u16) -> String,
        env: &[(&str, &str)],
    ) -> Result<Nginx, String> {
        let dir = ScratchDir::new("nginx");
        std::fs::create_dir_all(dir.join("public")).map_err(|e| e.to_string())?;
        // nginx cannot report a port the OS chose; a clash makes it exit and `start` tries again.
        let (http, https) = (free_port(), free_port());
        let conf = fill(&dir, http, https);
        let placeholder = regex::Regex::new("@[A-Z0-9_]+@").map_err(|e| e.to_string())?;
        assert!(!placeholder.is_match(&conf), "unfilled placeholder in the nginx config:\n{conf}");
        let conf_path = dir.join("nginx.conf");
        std::fs::write(&conf_path, &conf).map_err(|e| e.to_string())?;
        let mut cmd = Command::new(binary);
        // -e: the error log before the config is read (nginx would open /var/log/nginx first).
        cmd.arg("-e")
            .arg(dir.join("error.log"))
            .arg("-p")
            .arg(dir.join("."))
            .arg("-c")
            .arg(&conf_path)
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        crate::die_with_parent(&mut cmd);
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {} (scripts/setup installs nginx): {e}", binary.display()));
        let at = |port: u16| SocketAddr::from(([127, 0, 0, 1], port));
        let mut n = Nginx {
            child,
            http: conf.contains(&format!(":{http};")).then(|| at(http)),
            https: conf.contains(&format!(":{https} ssl")).then(|| at(https)),
            dir,
        };
        let listener = n.https.or(n.http).ok_or("the config has no listener")?;
        let up = crate::wait::poll(Duration::from_secs(10), || {
            if let Ok(Some(_)) = n.child.try_wait() {
                return Some(false);
            }
            TcpStream::connect(listener).ok().map(|_| true)
        });
        if up != Some(true) {
            return Err(n.log());
        }
        Ok(n)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("error.log")).unwrap_or_default()
    }
}

/// A scratch directory as nginx configs name it (no trailing slash).
pub fn dir_text(dir: &ScratchDir) -> String {
    dir.join(".").display().to_string().trim_end_matches("/.").to_string()
}

impl Drop for Nginx {
    /// A master process stops its workers on SIGTERM; SIGKILL would leave them serving.
    fn drop(&mut self) {
        let _ = Command::new("kill").arg("-TERM").arg(self.child.id().to_string()).status();
        let stopped = crate::wait::poll(Duration::from_secs(5), || self.child.try_wait().ok().flatten());
        if stopped.is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        if std::thread::panicking() {
            eprintln!("----- nginx log -----\n{}\n----- end of nginx log -----", self.log());
        }
    }
}
