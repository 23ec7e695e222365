//! nginx/overleaf.conf on a real nginx built with Kong's ngx_wasm_module, running Tether's
//! portable modules in front of three test nodes. ngx_wasm_module is not installable from the
//! registries here, so these tests are ignored unless asked for: `scripts/nginx-host` runs them
//! with `TETHER_NGINX_WASM` naming such an nginx (nginx/README.md says how it was built and what
//! they showed). In CI, tests/tests/nginx_sample.rs holds the same file on the counting host's
//! nginx flavour.

// Needs the built modules (scripts/build) and the test node.
#![cfg(feature = "e2e")]

use std::path::PathBuf;
use tether_e2e::http::{curl, curl_http1, tls_websocket_handshake, CurlResponse};
use tether_e2e::nginx::{dir_text, Nginx};
use tether_e2e::{repo_root, self_signed_cert, ScratchDir, TestNode};

const KEYS: &str = "bmdpbngtaG9zdC10ZXN0LWtleS0wMTIzNDU2Nzg5YWI=";
const NAMES: [&str; 3] = ["server-pro-ha-1", "server-pro-ha-2", "server-pro-ha-3"];

fn nginx_binary() -> PathBuf {
    let path = std::env::var_os("TETHER_NGINX_WASM").map(PathBuf::from).unwrap_or_else(|| {
        panic!("TETHER_NGINX_WASM must name an nginx built with ngx_wasm_module (nginx/README.md); scripts/nginx-host runs these")
    });
    assert!(path.exists(), "{}: no such file", path.display());
    path
}

/// The sample with its loopback addresses, paths and ports made this run's; `edit` changes the
/// text further (another filter, a line removed).
struct Sample {
    nginx: Nginx,
    nodes: Vec<TestNode>,
    _git: ScratchDir,
}

impl Sample {
    fn start(edit: impl Fn(String) -> String) -> Sample {
        let git = ScratchDir::new("nginx-git");
        let nodes = vec![
            TestNode::start_with_git(NAMES[0], &git.join(".")),
            TestNode::start(NAMES[1]),
            TestNode::start(NAMES[2]),
        ];
        let sample = edit(std::fs::read_to_string(repo_root().join("nginx/overleaf.conf")).unwrap());
        let release = repo_root().join("target/wasm32-unknown-unknown/release");
        let fill = |dir: &ScratchDir, http: u16, https: u16| -> String {
            let (cert, key) = self_signed_cert(dir);
            // In the foreground, so that the test holds the master process and stops it.
            let mut conf = format!("daemon off;\n{sample}")
                .replace("../target/demo-tls/cert.pem", &cert.display().to_string())
                .replace("../target/demo-tls/key.pem", &key.display().to_string())
                .replace("target/wasm32-unknown-unknown/release", &release.display().to_string())
                .replace("target/nginx", &dir_text(dir))
                .replace("listen 127.0.0.1:8080", &format!("listen 127.0.0.1:{http}"))
                .replace("listen 127.0.0.1:8443", &format!("listen 127.0.0.1:{https}"))
                .replace("\"port\": 8443", &format!("\"port\": {https}"));
            for (i, node) in nodes.iter().enumerate() {
                conf = conf.replace(&format!("127.0.0.1:800{}", i + 1), &node.addr.to_string());
            }
            conf
        };
        let nginx = Nginx::start_conf(&nginx_binary(), "nginx/overleaf.conf", fill, &[("TETHER_AFFINITY_KEYS", KEYS)]);
        Sample { nginx, nodes, _git: git }
    }

    fn url(&self, path: &str) -> String {
        format!("https://{}{path}", self.nginx.https.unwrap())
    }

    fn get(&self, path: &str, cookie: Option<&str>) -> CurlResponse {
        let header = cookie.map(|c| format!("Cookie: {c}"));
        let url = self.url(path);
        let mut args = vec!["-k"];
        args.extend(header.iter().flat_map(|h| ["-H", h.as_str()]));
        args.push(&url);
        curl(&args, None)
    }

    /// The node a session's cookie names, by asking once.
    fn new_session(&self) -> (String, String) {
        let r = self.get("/", None);
        let cookie = r.header("set-cookie").and_then(|c| c.split(';').next()).unwrap_or_else(|| panic!("{r:?}"));
        (cookie.to_string(), r.node())
    }

    fn node(&mut self, name: &str) -> &mut TestNode {
        self.nodes.iter_mut().find(|n| n.name == name).unwrap()
    }

    /// Errors and worse in nginx's log (a filter's error line, a crashed worker).
    fn errors(&self) -> Vec<String> {
        let serious = ["[error]", "[crit]", "[alert]", "[emerg]", "panicked", "trap"];
        let log = self.nginx.log();
        log.lines()
            .filter(|l| serious.iter().any(|s| l.contains(s)))
            .filter(|l| !l.contains("connect() failed")) // a node the test killed
            .map(String::from)
            .collect()
    }
}

#[test]
#[ignore = "needs an nginx with ngx_wasm_module: scripts/nginx-host"]
fn sessions_stick_git_is_pinned_and_a_failed_node_s_sessions_move_once() {
    let mut s = Sample::start(|c| c);
    let first = s.get("/", None);
    assert_eq!(first.status(), 200, "{first:?}");
    assert_eq!(first.header("x-served-by"), Some(first.node().as_str()));
    assert!(first.header("strict-transport-security").is_some_and(|v| v.contains("preload")));
    let spread: std::collections::BTreeSet<String> = (0..6).map(|_| s.get("/", None).node()).collect();
    assert_eq!(spread.len(), 3, "new sessions go round the pool: {spread:?}");

    let (cookie, home) = s.new_session();
    for path in ["/project/1", "/socket.io/1/", "/login"] {
        let r = s.get(path, Some(&cookie));
        assert_eq!(r.node(), home, "{path}");
        assert_eq!(r.header("set-cookie"), None, "{path}");
    }
    for _ in 0..3 {
        let git = s.get("/git/p.git/info/refs", Some(&cookie));
        assert_eq!(git.header("x-served-by"), Some(NAMES[0]), "git goes to the git-bridge sibling: {git:?}");
        assert_eq!(git.header("set-cookie"), None);
    }

    // The session's node dies: its group's backup serves, the session moves there once.
    let port = s.node(&home).addr.port();
    s.node(&home).kill();
    let moved = s.get("/project/1", Some(&cookie));
    assert_eq!(moved.status(), 200, "{moved:?}");
    let to = moved.node();
    assert_ne!(to, home);
    let moved_cookie =
        moved.header("set-cookie").and_then(|c| c.split(';').next()).unwrap_or_else(|| panic!("{moved:?}"));
    let moved_cookie = moved_cookie.to_string();
    for _ in 0..4 {
        let r = s.get("/project/1", Some(&moved_cookie));
        assert_eq!((r.node(), r.header("set-cookie")), (to.clone(), None), "moved once");
    }
    // It comes back: the moved session stays where it went (HAProxy's redispatch does the same).
    let back = TestNode::start_on_port(&home, port);
    *s.node(&home) = back;
    for _ in 0..3 {
        assert_eq!(s.get("/project/1", Some(&moved_cookie)).node(), to);
    }
    assert!(s.errors().is_empty(), "{:?}", s.errors());
}

#[test]
#[ignore = "needs an nginx with ngx_wasm_module: scripts/nginx-host"]
fn forged_forwarding_headers_never_reach_a_node_and_a_repeated_one_is_refused() {
    let s = Sample::start(|c| c);
    let forged = ["X-Forwarded-For: 6.6.6.6", "X-Real-IP: 6.6.6.6", "Forwarded: for=6.6.6.6", "X-Forwarded-Host: evil"];
    let session = "x-tether-session: MTI3LjAuMC4xOjgwMDM=";
    let mut args: Vec<&str> = forged.iter().chain([&session]).flat_map(|h| ["-H", *h]).collect();
    let url = s.url("/x");
    args.push(&url);
    for version in ["--http1.1", "--http2"] {
        let r = curl(&[&["-k", version], &args[..]].concat(), None);
        assert_eq!(r.status(), 200, "{r:?}");
        let echo = String::from_utf8_lossy(&r.body).to_string();
        assert!(
            !echo.contains("6.6.6.6") && !echo.contains("evil"),
            "{version}: a forged value reached the node: {echo}"
        );
        assert!(!echo.contains("x-tether-session") && !echo.contains("\"forwarded\""), "{version}: {echo}");
        assert_eq!(r.received_header("x-forwarded-for"), ["127.0.0.1"]);
        assert_eq!(r.received_header("x-real-ip"), ["127.0.0.1"]);
        assert_eq!(r.received_header("x-forwarded-proto"), ["https"]);
    }
    let twice = curl_http1(&url, &["-H", "X-Forwarded-For: 6.6.6.6", "-H", "X-Forwarded-For: 7.7.7.7"]);
    assert_eq!(twice.status(), 400, "{twice:?}");
    assert!(String::from_utf8_lossy(&twice.body).contains("x-forwarded-for"), "{twice:?}");
    let reached: usize = s.nodes.iter().map(|n| n.requests_for("/x").len()).sum();
    assert_eq!(reached, 2, "the two accepted requests, not the refused one");
    assert!(s.errors().is_empty(), "{:?}", s.errors());
}

#[test]
#[ignore = "needs an nginx with ngx_wasm_module: scripts/nginx-host"]
fn plain_http_is_redirected_and_bodies_over_50_mb_get_the_413() {
    let s = Sample::start(|c| c);
    let http = s.nginx.http.unwrap();
    let get = curl(&[&format!("http://{http}/project/1?a=b")], None);
    assert_eq!(get.status(), 301, "{get:?}");
    assert_eq!(get.header("location"), Some(s.url("/project/1?a=b").as_str()));
    let post = curl(&["-X", "POST", &format!("http://{http}/login")], None);
    assert_eq!(post.status(), 308, "{post:?}");

    let scratch = ScratchDir::new("nginx-bodies");
    let over = scratch.file_of_size("over", 50 * 1024 * 1024 + 1);
    let under = scratch.file_of_size("under", 10 * 1024 * 1024);
    let upload = |file: &PathBuf, extra: &[&str]| {
        let (data, url) = (format!("@{}", file.display()), s.url("/upload"));
        let mut args = vec!["-k", "--data-binary", data.as_str()];
        args.extend_from_slice(extra);
        args.push(&url);
        curl(&args, None)
    };
    for extra in [
        &["--http1.1"][..],
        &["--http1.1", "-H", "Expect:"],
        &["--http1.1", "-H", "Transfer-Encoding: chunked"],
        &["--http2"],
    ] {
        let r = upload(&over, extra);
        assert_eq!(r.status(), 413, "{extra:?}: {r:?}");
        assert!(String::from_utf8_lossy(&r.body).contains("payload_too_large"), "{extra:?}: {r:?}");
    }
    let ok = upload(&under, &["--http1.1"]);
    assert_eq!(ok.status(), 200, "{ok:?}");
    let seen: Vec<_> = s.nodes.iter().flat_map(|n| n.requests_for("/upload")).collect();
    assert_eq!(seen.len(), 1, "only the 10 MiB body reached a node: {seen:?}");
    assert_eq!((seen[0].body_bytes, seen[0].state.as_str()), (10 * 1024 * 1024, "complete"));
    assert!(s.errors().is_empty(), "{:?}", s.errors());
}

#[test]
#[ignore = "needs an nginx with ngx_wasm_module: scripts/nginx-host"]
fn a_websocket_opens_on_the_session_s_node() {
    let s = Sample::start(|c| c);
    let (cookie, home) = s.new_session();
    for _ in 0..3 {
        assert_eq!(tls_websocket_handshake(s.nginx.https.unwrap(), &cookie), (101, home.clone()));
    }
}

#[test]
#[ignore = "needs an nginx with ngx_wasm_module: scripts/nginx-host"]
fn uri_hash_keeps_a_project_on_one_node_whatever_the_session() {
    // The Overleaf layout plus uri-hash, as envoy/demo.yaml is envoy/overleaf.yaml plus uri-hash.
    let s = Sample::start(|c| {
        let nodes = r#"[{"name": "server-pro-ha-1", "address": "127.0.0.1:8001"}, {"name": "server-pro-ha-2", "address": "127.0.0.1:8002"}, {"name": "server-pro-ha-3", "address": "127.0.0.1:8003"}]"#;
        c.replace(
            "    module tether_affinity ",
            "    module tether_uri_hash   target/wasm32-unknown-unknown/release/portable/tether_uri_hash.wasm;\n    module tether_affinity ",
        )
        .replace(
            "            proxy_wasm tether_affinity ",
            &format!("            proxy_wasm tether_uri_hash '{{\"nodes\": {nodes}, \"prefixes\": [\"/project/\"], \"depth\": 2}}';\n            proxy_wasm tether_affinity "),
        )
    });
    let mut homes = std::collections::BTreeSet::new();
    for project in 0..12 {
        let path = format!("/project/{project:04x}/output/output.pdf");
        let sessions: Vec<String> = (0..3).map(|_| s.new_session().0).collect();
        let nodes: std::collections::BTreeSet<String> = sessions.iter().map(|c| s.get(&path, Some(c)).node()).collect();
        assert_eq!(nodes.len(), 1, "{path}: {nodes:?}");
        homes.extend(nodes);
    }
    assert!(homes.len() >= 2, "12 projects over 3 nodes: {homes:?}");
    assert!(s.errors().is_empty(), "{:?}", s.errors());
}

#[test]
#[ignore = "needs an nginx with ngx_wasm_module: scripts/nginx-host"]
fn without_set_tether_node_requests_still_pass_and_the_log_says_what_to_add() {
    // An operator who kept the filters but wrote neither the `set` nor the map.
    let s = Sample::start(|c| {
        c.replace("        set $tether_node \"\";\n", "")
            .replace("map $tether_node $tether_upstream", "map $host $tether_upstream")
    });
    let (cookie, _) = s.new_session();
    let git = s.get("/git/p.git/info/refs", Some(&cookie));
    assert!(git.status() == 200 || git.status() == 404, "{git:?}");
    let said = s.nginx.log().matches("declare it with `set $tether_node").count();
    assert!(said >= 1, "{}", s.nginx.log());
}

#[test]
#[ignore = "needs an nginx with ngx_wasm_module: scripts/nginx-host"]
fn tether_edge_runs_the_same_chain_in_one_module() {
    // The https server's four filters become one tether-edge, each configuration its section.
    let s = Sample::start(|c| {
        let mut sections = Vec::new();
        let mut out = String::new();
        for line in c.lines() {
            let trimmed = line.trim_start();
            let https_filter = trimmed.starts_with("proxy_wasm tether_") && !trimmed.contains("https_redirect");
            if let (true, Some((name, rest))) =
                (https_filter, trimmed.strip_prefix("proxy_wasm tether_").and_then(|r| r.split_once(' ')))
            {
                sections.push(format!("\"{name}\": {}", rest.trim_end_matches(';').trim_matches('\'')));
                if name == "affinity" {
                    out.push_str(&format!("            proxy_wasm tether_edge '{{{}}}';\n", sections.join(", ")));
                }
                continue;
            }
            out.push_str(line);
            out.push('\n');
        }
        out.replace(
            "    module tether_affinity ",
            "    module tether_edge       target/wasm32-unknown-unknown/release/portable/tether_edge.wasm;\n    module tether_affinity ",
        )
    });
    let configured = || s.nginx.log().contains("edge: configured: 4 filter(s) in one VM").then_some(());
    assert!(tether_e2e::wait::poll(std::time::Duration::from_secs(10), configured).is_some(), "{}", s.nginx.log());
    let (cookie, home) = s.new_session();
    for _ in 0..3 {
        let r = s.get("/project/1", Some(&cookie));
        assert_eq!((r.node(), r.header("set-cookie")), (home.clone(), None));
        assert_eq!(r.header("x-served-by"), Some(home.as_str()));
    }
    assert_eq!(s.get("/git/p.git/info/refs", Some(&cookie)).header("x-served-by"), Some(NAMES[0]));
    let url = s.url("/x");
    let forged = curl_http1(&url, &["-H", "X-Forwarded-For: 6.6.6.6", "-H", "Forwarded: for=6.6.6.6"]);
    assert!(!String::from_utf8_lossy(&forged.body).contains("6.6.6.6"), "{forged:?}");
    let scratch = ScratchDir::new("nginx-edge-body");
    let over = format!("@{}", scratch.file_of_size("over", 50 * 1024 * 1024 + 1).display());
    let upload = s.url("/upload");
    assert_eq!(curl(&["-k", "--data-binary", &over, &upload], None).status(), 413);
    assert!(s.errors().is_empty(), "{:?}", s.errors());
}
