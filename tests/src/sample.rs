//! The sample configs in `envoy/`, run as users copy them: the file itself, with only its
//! loopback addresses moved to the test's ports and its certificate to a scratch one.
//!
//! Every sample follows one loopback layout so this works without templating: listeners on
//! 127.0.0.1:8080 (http) and :8443 (https), admin :9901, nodes on 127.0.0.1:8001, :8002, ...
//! in both the nodes table (`"127.0.0.1:8001"`) and the cluster (`port_value: 8001`), and the
//! certificate at `target/demo-tls/{cert,key}.pem`. Each replacement must match (the nodes table
//! only where a sample has one), so a sample that leaves the layout fails loudly here instead of
//! silently testing something else. Test ports come from the OS's ephemeral range (32768 and up),
//! so a replaced address can never be replaced again as one of the layout's.

use crate::envoy::Envoy;
use crate::{repo_root, ScratchDir, TestNode};
use std::net::SocketAddr;

/// Environment the samples need: they read affinity keys from Envoy's environment.
pub const SAMPLE_ENV: &[(&str, &str)] = &[("TETHER_AFFINITY_KEYS", "sample-test-key-0123456789abcdef")];

pub struct Sample {
    pub name: String,
    pub yaml: String,
    _tls: Option<ScratchDir>,
}

impl Sample {
    /// `envoy/<name>.yaml` with its listeners and admin on ports the OS picks, its nodes at
    /// `nodes` (in order: the sample's first node is `nodes[0]`; none: left as they are) and a
    /// fresh certificate.
    pub fn load(name: &str, nodes: &[&TestNode]) -> Sample {
        let addrs: Vec<SocketAddr> = nodes.iter().map(|n| n.addr).collect();
        Sample::load_with(name, &addrs)
    }

    pub fn load_with(name: &str, nodes: &[SocketAddr]) -> Sample {
        let path = repo_root().join("envoy").join(format!("{name}.yaml"));
        let mut yaml = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        yaml = replace_all(name, &yaml, "port_value: 9901", "port_value: 0");
        assert!(
            ["8080", "8443"].iter().any(|p| yaml.contains(&format!("port_value: {p}"))),
            "envoy/{name}.yaml left the loopback layout: no listener on 8080 or 8443"
        );
        yaml = yaml.replace("port_value: 8080", "port_value: 0").replace("port_value: 8443", "port_value: 0");
        for (i, node) in nodes.iter().enumerate() {
            let port = 8001 + i;
            // The nodes table, in samples with routing filters.
            yaml = yaml.replace(&format!("\"127.0.0.1:{port}\""), &format!("\"{node}\""));
            yaml = replace_all(name, &yaml, &format!("port_value: {port} "), &format!("port_value: {} ", node.port()));
        }
        let tls = yaml.contains("target/demo-tls/").then(|| {
            let dir = ScratchDir::new("sample-tls");
            let (cert, key) = crate::self_signed_cert(&dir);
            yaml = replace_all(name, &yaml, "target/demo-tls/cert.pem", &cert.display().to_string());
            yaml = replace_all(name, &yaml, "target/demo-tls/key.pem", &key.display().to_string());
            dir
        });
        Sample { name: name.to_string(), yaml, _tls: tls }
    }

    /// Writes the adapted config into `dir` (for `envoy --mode validate`).
    pub fn write(&self, dir: &ScratchDir) -> std::path::PathBuf {
        let path = dir.join(&format!("{}.yaml", self.name));
        std::fs::write(&path, &self.yaml).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        path
    }

    /// Starts Envoy on it and waits until Envoy's health checks see every node healthy.
    pub fn start(&self, nodes: &[&TestNode]) -> Envoy {
        let envoy = Envoy::start_yaml(&self.yaml, SAMPLE_ENV);
        for node in nodes {
            envoy.wait_for_health(node, true);
        }
        envoy
    }
}

/// A sample whose endpoints and filters come from xDS files (`envoy/pods/`): the bootstrap as
/// [`Sample`] adapts it, the files copied to a scratch directory with the nodes moved to the
/// test's (`port_value: 8001` is `nodes[0]`, and so on), for the test to rewrite while Envoy serves.
pub struct XdsSample {
    pub sample: Sample,
    pub dir: ScratchDir,
}

impl XdsSample {
    pub fn load(name: &str, nodes: &[&TestNode]) -> XdsSample {
        let mut sample = Sample::load_with(name, &[]);
        let dir = ScratchDir::new("xds");
        let source = repo_root().join("envoy/pods");
        let entries = std::fs::read_dir(&source).unwrap_or_else(|e| panic!("{}: {e}", source.display()));
        for entry in entries {
            let path = entry.unwrap_or_else(|e| panic!("{e}")).path();
            let mut text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            for (i, node) in nodes.iter().enumerate() {
                text =
                    text.replace(&format!("port_value: {} ", 8001 + i), &format!("port_value: {} ", node.addr.port()));
            }
            let name = path.file_name().unwrap_or_default().to_string_lossy().into_owned();
            std::fs::write(dir.join(&name), text).unwrap_or_else(|e| panic!("{name}: {e}"));
        }
        sample.yaml = replace_all(name, &sample.yaml, "envoy/pods", &dir.path.display().to_string());
        XdsSample { sample, dir }
    }

    /// Replaces `file` (in the scratch copy of `envoy/pods/`) by rename, as a control plane would.
    pub fn publish(&self, file: &str, text: &str) {
        let temp = self.dir.join(&format!(".{file}.new"));
        std::fs::write(&temp, text).unwrap_or_else(|e| panic!("{}: {e}", temp.display()));
        std::fs::rename(&temp, self.dir.join(file)).unwrap_or_else(|e| panic!("{file}: {e}"));
    }

    pub fn read(&self, file: &str) -> String {
        std::fs::read_to_string(self.dir.join(file)).unwrap_or_else(|e| panic!("{file}: {e}"))
    }
}

fn replace_all(sample: &str, yaml: &str, from: &str, to: &str) -> String {
    assert!(yaml.contains(from), "envoy/{sample}.yaml left the loopback layout: no {from:?} in it");
    yaml.replace(from, to)
}
