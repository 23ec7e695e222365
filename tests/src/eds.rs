//! Endpoints and filters as a control plane sends them: EDS and ECDS files that Envoy watches,
//! rewritten while it serves (written beside the watched path and renamed over it, as a
//! ConfigMap update or an xDS-from-files setup does).

use crate::envoy::Envoy;
use crate::http::admin_get;
use crate::{wait_for, ScratchDir};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// One endpoint of the cluster: its address, its name in EDS metadata
/// (`filter_metadata.tether.name` for Tether, `envoy.lb.name` for subset routing, and the EDS
/// `hostname` for hashing), and whether it is draining.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    pub address: SocketAddr,
    pub name: String,
    pub draining: bool,
}

impl Endpoint {
    pub fn new(name: &str, address: SocketAddr) -> Endpoint {
        Endpoint { address, name: name.to_string(), draining: false }
    }

    pub fn draining(self) -> Endpoint {
        Endpoint { draining: true, ..self }
    }
}

/// The watched EDS file of the cluster `nodes`; each [`EdsFile::publish`] is a new version.
pub struct EdsFile {
    dir: ScratchDir,
    version: u64,
}

impl EdsFile {
    pub const FILE: &'static str = "eds.yaml";

    /// A file with the first set of endpoints, ready before Envoy starts.
    pub fn new(endpoints: &[Endpoint]) -> EdsFile {
        let mut eds = EdsFile { dir: ScratchDir::new("eds"), version: 0 };
        eds.publish(endpoints);
        eds
    }

    /// The path Envoy watches.
    pub fn path(&self) -> PathBuf {
        self.dir.join(EdsFile::FILE)
    }

    pub fn dir(&self) -> &Path {
        &self.dir.path
    }

    /// Replaces the endpoint set (atomically: write, then rename over the watched path).
    pub fn publish(&mut self, endpoints: &[Endpoint]) {
        self.version += 1;
        let lb_endpoints: String = endpoints
            .iter()
            .map(|e| {
                format!(
                    r#"
    - endpoint:
        address: {{ socket_address: {{ address: "{ip}", port_value: {port} }} }}
        hostname: {name}
      health_status: {status}
      metadata: {{ filter_metadata: {{ tether: {{ name: {name} }}, envoy.lb: {{ name: {name} }} }} }}"#,
                    ip = e.address.ip(),
                    port = e.address.port(),
                    name = e.name,
                    status = if e.draining { "DRAINING" } else { "HEALTHY" },
                )
            })
            .collect();
        let yaml = format!(
            r#"version_info: "{version}"
resources:
- "@type": type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment
  cluster_name: nodes
  endpoints:
  - lb_endpoints:{lb_endpoints}
"#,
            version = self.version
        );
        let temp = self.dir.join(&format!(".eds-{}.yaml", self.version));
        std::fs::write(&temp, yaml).unwrap_or_else(|e| panic!("write {}: {e}", temp.display()));
        std::fs::rename(&temp, self.path()).unwrap_or_else(|e| panic!("rename over {}: {e}", self.path().display()));
    }
}

/// A filter's configuration delivered by extension config discovery (ECDS), as Istio delivers
/// a WasmPlugin: one file per filter, each [`EcdsFile::publish`] a new version.
pub struct EcdsFile {
    dir: ScratchDir,
    version: u64,
}

impl EcdsFile {
    /// A file with the filter's first configuration; point the filter at it
    /// (`WasmFilter::ecds = Some(file.path())`) and start Envoy.
    pub fn new(filter: &crate::WasmFilter) -> EcdsFile {
        let mut ecds = EcdsFile { dir: ScratchDir::new("ecds"), version: 0 };
        ecds.publish(filter);
        ecds
    }

    pub fn path(&self) -> PathBuf {
        self.dir.join("ecds.json")
    }

    /// Replaces the filter's configuration (atomically, as [`EdsFile::publish`]).
    pub fn publish(&mut self, filter: &crate::WasmFilter) {
        self.version += 1;
        let response = serde_json::json!({
            "version_info": self.version.to_string(),
            "resources": [{
                "@type": "type.googleapis.com/envoy.config.core.v3.TypedExtensionConfig",
                "name": filter.id(),
                "typed_config": filter.wasm_json(),
            }],
        });
        let temp = self.dir.join(&format!(".ecds-{}.json", self.version));
        std::fs::write(&temp, response.to_string()).unwrap_or_else(|e| panic!("write {}: {e}", temp.display()));
        std::fs::rename(&temp, self.path()).unwrap_or_else(|e| panic!("rename over {}: {e}", self.path().display()));
    }

    /// How many versions Envoy has taken (`extension_config_discovery.<id>.config_reload`).
    pub fn reloads(envoy: &Envoy, filter: &crate::WasmFilter) -> u64 {
        envoy.stat(&format!("extension_config_discovery.http_filter.{}.config_reload", filter.id()))
    }
}

/// The endpoints Envoy has for each cluster over the EDS endpoints (`nodes`, and
/// `nodes-hashed` where configured), with their health flags, from `/clusters`.
pub fn cluster_endpoints(envoy: &Envoy) -> BTreeMap<String, Vec<(SocketAddr, String)>> {
    let (_, body) = admin_get(envoy.admin, "/clusters").unwrap_or_else(|e| panic!("clusters: {e}"));
    let mut clusters: BTreeMap<String, Vec<(SocketAddr, String)>> = BTreeMap::new();
    for line in body.lines() {
        let Some((cluster, rest)) = line.split_once("::") else { continue };
        let Some((address, flags)) = rest.split_once("::health_flags::") else { continue };
        if cluster == "nodes" || cluster == "nodes-hashed" {
            if let Ok(address) = address.parse() {
                clusters.entry(cluster.to_string()).or_default().push((address, flags.to_string()));
            }
        }
    }
    clusters
}

impl Envoy {
    /// Waits until Envoy's endpoints of `nodes` are exactly `endpoints`, each healthy, and
    /// draining where it should be (the EDS update has landed and health checks agree).
    pub fn wait_for_endpoints(&self, endpoints: &[Endpoint]) {
        let mut want: Vec<(SocketAddr, bool)> = endpoints.iter().map(|e| (e.address, e.draining)).collect();
        want.sort();
        let mut last = BTreeMap::new();
        let landed = crate::wait::poll(Duration::from_secs(15), || {
            last = cluster_endpoints(self);
            let landed = |hosts: &Vec<(SocketAddr, String)>| {
                let mut have: Vec<(SocketAddr, bool)> = Vec::new();
                for (address, flags) in hosts {
                    // "healthy", or only the draining flag; anything else (a failed or pending
                    // health check, pending removal) is not there yet.
                    let draining = match flags.as_str() {
                        "healthy" => false,
                        "/eds_status_draining" => true,
                        _ => return false,
                    };
                    have.push((*address, draining));
                }
                have.sort();
                have == want
            };
            (!last.is_empty() && last.values().all(landed)).then_some(())
        });
        if landed.is_none() {
            wait_for(&format!("Envoy's endpoints to be {want:?}; last seen {last:?}"), Duration::ZERO, || None::<()>);
        }
    }
}
