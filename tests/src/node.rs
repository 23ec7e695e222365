//! Sample backend nodes: the `test-node` binary, one process per node.

use crate::http::raw_request;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};

pub struct TestNode {
    pub name: String,
    pub addr: SocketAddr,
    child: Child,
}

/// One request as the node saw it.
#[derive(Debug, Clone, serde::Deserialize)]
pub struct SeenRequest {
    pub method: String,
    pub path: String,
    pub body_bytes: u64,
    /// `receiving`, `complete` or `aborted`.
    pub state: String,
}

impl TestNode {
    /// Starts `test-node --name <name>` on a port the OS picks.
    pub fn start(name: &str) -> TestNode {
        TestNode::start_with_args(name, &[])
    }

    /// A node that also serves the git repositories under `root` at `/git/`.
    pub fn start_with_git(name: &str, root: &std::path::Path) -> TestNode {
        TestNode::start_with_args(name, &["--git-root", &root.display().to_string()])
    }

    /// A node on a given port, e.g. to bring a killed node back where Envoy expects it.
    pub fn start_on_port(name: &str, port: u16) -> TestNode {
        TestNode::start_with_args(name, &["--port", &port.to_string()])
    }

    fn start_with_args(name: &str, extra: &[&str]) -> TestNode {
        let mut cmd = Command::new(node_bin());
        cmd.args(["--name", name]).args(extra).stdout(Stdio::piped()).stderr(Stdio::inherit());
        crate::die_with_parent(&mut cmd);
        let mut child = cmd.spawn().unwrap_or_else(|e| panic!("cannot start test-node: {e}"));
        let mut line = String::new();
        if let Some(out) = child.stdout.take() {
            let _ = BufReader::new(out).read_line(&mut line);
        }
        let addr = line.trim().strip_prefix("listening ").and_then(|a| a.parse().ok()).unwrap_or_else(|| {
            let _ = child.kill();
            panic!("test-node {name} did not report its address; said {line:?}")
        });
        TestNode { name: name.to_string(), addr, child }
    }

    /// Every non-control request the node has seen, in arrival order.
    pub fn requests(&self) -> Vec<SeenRequest> {
        let (status, body) =
            raw_request(self.addr, "GET", "/__control/requests").unwrap_or_else(|e| panic!("node {}: {e}", self.name));
        assert_eq!(status, 200, "node {} control: {body}", self.name);
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("node {} control JSON: {e}: {body}", self.name))
    }

    pub fn requests_for(&self, path: &str) -> Vec<SeenRequest> {
        self.requests().into_iter().filter(|r| r.path == path).collect()
    }

    /// Makes `/status` answer 503 (`false`) or 200 (`true`).
    pub fn set_healthy(&self, healthy: bool) {
        let path = if healthy { "/__control/healthy" } else { "/__control/unhealthy" };
        let (status, body) = raw_request(self.addr, "POST", path).unwrap_or_else(|e| panic!("node {}: {e}", self.name));
        assert_eq!(status, 200, "{body}");
    }
}

/// `target/<profile>/test-node`, built by cargo beside the integration tests (which live in
/// `target/<profile>/deps/`) and beside the other binaries of this crate.
fn node_bin() -> std::path::PathBuf {
    let exe = std::env::current_exe().unwrap_or_else(|e| panic!("current_exe: {e}"));
    let candidates: Vec<_> = exe.ancestors().skip(1).take(2).map(|dir| dir.join("test-node")).collect();
    candidates.iter().find(|bin| bin.exists()).cloned().unwrap_or_else(|| {
        panic!("test-node is missing (looked at {candidates:?}): build it with cargo build -p tether-e2e")
    })
}

/// `node-1`, `node-2`, `node-3`.
pub fn three_nodes() -> Vec<TestNode> {
    vec![TestNode::start("node-1"), TestNode::start("node-2"), TestNode::start("node-3")]
}

/// The nodes table for these nodes, as filter JSON: `[{"name": ..., "address": ...}, ...]`.
/// Takes the nodes themselves or references to them.
pub fn nodes_json<N: std::borrow::Borrow<TestNode>>(nodes: &[N]) -> String {
    nodes_table_json(nodes.iter().map(|n| (n.borrow().name.clone(), n.borrow().addr.to_string())))
}

/// A nodes table as filter JSON from (name, "ip:port") pairs.
pub fn nodes_table_json(nodes: impl IntoIterator<Item = (String, String)>) -> String {
    let entries: Vec<String> =
        nodes.into_iter().map(|(name, address)| format!(r#"{{"name": "{name}", "address": "{address}"}}"#)).collect();
    format!("[{}]", entries.join(", "))
}

impl TestNode {
    /// Kills the node process (SIGKILL): its port refuses connections from now on.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for TestNode {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
