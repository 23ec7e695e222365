//! Parity with HAProxy: the same scenarios against HAProxy 2.6 loaded with the Overleaf guide's
//! config (tests/parity/overleaf.haproxy.cfg, adapted to loopback only) and against Envoy + Tether
//! loaded with envoy/overleaf.yaml, on the same three test nodes.
//!
//! Each scenario asserts what each proxy does, so a change on either side fails the suite, and
//! records it in a Markdown table under target/parity/ (same / differs). Every "differs" row is in
//! the table of intended differences in envoy/README.md, with the reason.

// Needs Envoy (scripts/setup) and the built modules (scripts/build): `scripts/test` runs it.
#![cfg(feature = "e2e")]

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use tether_e2e::haproxy::Haproxy;
use tether_e2e::http::tls_websocket_handshake;
use tether_e2e::sample::Sample;
use tether_e2e::{curl, repo_root, CurlResponse, Envoy, ScratchDir, TestNode};

const MIB: u64 = 1024 * 1024;

/// Both proxies' front doors.
struct Front {
    label: &'static str,
    https: SocketAddr,
    http: SocketAddr,
}

struct Overleaf {
    nodes: Vec<TestNode>,
    haproxy: Haproxy,
    envoy: Envoy,
    scratch: ScratchDir,
    _sample: Sample,
}

impl Overleaf {
    /// Three nodes named as the guide's servers; the first also serves `/git/repo.git`.
    fn start() -> Overleaf {
        let scratch = ScratchDir::new("parity");
        let git_root = scratch.join("git");
        std::fs::create_dir_all(&git_root).unwrap();
        let out = Command::new("git")
            .args(["init", "-q", "--bare", "--initial-branch=main"])
            .arg(git_root.join("repo.git"))
            .output()
            .unwrap_or_else(|e| panic!("cannot run git: {e}"));
        assert!(out.status.success(), "git init: {out:?}");
        let nodes = vec![
            TestNode::start_with_git("server-pro-ha-1", &git_root),
            TestNode::start("server-pro-ha-2"),
            TestNode::start("server-pro-ha-3"),
        ];
        let refs: Vec<&TestNode> = nodes.iter().collect();
        let haproxy = Haproxy::start("overleaf", &refs);
        let sample = Sample::load("overleaf", &refs);
        let envoy = sample.start(&refs);
        Overleaf { nodes, haproxy, envoy, scratch, _sample: sample }
    }

    fn fronts(&self) -> [Front; 2] {
        [
            Front { label: "HAProxy", https: self.haproxy.https.unwrap(), http: self.haproxy.http },
            Front {
                label: "Tether",
                https: self.envoy.listener_named("https").unwrap(),
                http: self.envoy.listener_named("http").unwrap(),
            },
        ]
    }

    fn node(&self, name: &str) -> &TestNode {
        self.nodes.iter().find(|n| n.name == name).unwrap()
    }

    fn wait_for_health(&self, node: &TestNode, up: bool) {
        self.haproxy.wait_for_health(node, up);
        self.envoy.wait_for_health(node, up);
    }
}

/// An https request over HTTP/1.1 (HAProxy's listener speaks only that), certificate unchecked.
fn https(front: &Front, method: &str, path: &str, headers: &[(&str, &str)], body: Option<&Path>) -> CurlResponse {
    let url = format!("https://{}{path}", front.https);
    let mut args: Vec<String> = vec!["-k".into(), "--http1.1".into(), "-X".into(), method.into(), url];
    for (n, v) in headers {
        args.push("-H".into());
        args.push(format!("{n}: {v}"));
    }
    if let Some(file) = body {
        args.push("--data-binary".into());
        args.push(format!("@{}", file.display()));
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    curl(&args, None)
}

fn get(front: &Front, path: &str, headers: &[(&str, &str)]) -> CurlResponse {
    let r = https(front, "GET", path, headers, None);
    assert_eq!(r.status(), 200, "{}: GET {path}: {r:?}", front.label);
    r
}

/// The node that served, from the backend's own answer; also checks X-Served-By agrees.
fn served_by(front: &Front, r: &CurlResponse) -> String {
    let node = r.header("x-node").unwrap_or_default().to_string();
    assert_eq!(r.header("x-served-by"), Some(node.as_str()), "{}: X-Served-By", front.label);
    node
}

/// `server-pro-ha=<value>` from Set-Cookie, if the response sets it.
fn cookie_of(r: &CurlResponse) -> Option<String> {
    let set = r.headers.iter().find(|(n, v)| n == "set-cookie" && v.starts_with("server-pro-ha="))?;
    Some(set.1.split(';').next().unwrap_or_default().to_string())
}

fn set_cookie(r: &CurlResponse) -> Option<&str> {
    r.headers.iter().find(|(n, v)| n == "set-cookie" && v.starts_with("server-pro-ha=")).map(|(_, v)| v.as_str())
}

/// A new session served by `node`: fresh clients until the proxy's balancer picks it.
fn session_on(front: &Front, node: &str) -> String {
    for _ in 0..30 {
        let r = get(front, "/login", &[]);
        if served_by(front, &r) == node {
            return cookie_of(&r).unwrap_or_else(|| panic!("{}: no cookie for a new session", front.label));
        }
    }
    panic!("{}: 30 new sessions and none on {node}", front.label)
}

/// The observations, one row per scenario, written to target/parity/<name>.md.
struct Table {
    name: &'static str,
    rows: Vec<(String, String, String)>,
}

impl Table {
    fn new(name: &'static str) -> Table {
        Table { name, rows: Vec::new() }
    }

    fn row(&mut self, scenario: &str, haproxy: impl Into<String>, tether: impl Into<String>) {
        self.rows.push((scenario.into(), haproxy.into(), tether.into()));
    }

    fn write(&self) {
        let mut md =
            format!("# Parity: {}\n\n| scenario | HAProxy 2.6 | Envoy + Tether | |\n|---|---|---|---|\n", self.name);
        for (s, h, t) in &self.rows {
            let verdict = if h == t { "same" } else { "differs" };
            let _ = writeln!(md, "| {s} | {} | {} | {verdict} |", h.replace('|', "\\|"), t.replace('|', "\\|"));
        }
        let dir = repo_root().join("target/parity");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(format!("{}.md", self.name)), md).unwrap();
    }
}

/// A Set-Cookie with its value masked: what a reader compares.
fn cookie_shape(front: &Front, set: &str, node: &str) -> String {
    let (value, attrs) = set.split_once(';').unwrap_or((set, ""));
    let value = value.trim_start_matches("server-pro-ha=");
    let shape = if front.label == "HAProxy" {
        let (name, date) = value.split_once('|').unwrap_or((value, ""));
        assert_eq!(name, node, "HAProxy's cookie names the server");
        assert!(!date.is_empty(), "maxidle makes HAProxy append a date: {set}");
        "<server>|<date>".to_string()
    } else {
        assert!(!value.contains(node), "Tether's cookie is opaque: {set}");
        "<signed token>".to_string()
    };
    format!("server-pro-ha={shape};{attrs}")
}

#[test]
fn overleaf_guide_haproxy_and_envoy_behave_alike() {
    let o = Overleaf::start();
    let fronts = o.fronts();
    let mut t = Table::new("overleaf");
    let mut obs: Vec<Vec<String>> = vec![Vec::new(); 20];
    let mut note = |i: usize, s: String| obs[i].push(s);

    for f in &fronts {
        let is_haproxy = f.label == "HAProxy";

        // 0: a new session
        let first = get(f, "/project", &[]);
        let node = served_by(f, &first);
        let set = set_cookie(&first).unwrap_or_else(|| panic!("{}: no Set-Cookie for a new session", f.label));
        let shape = cookie_shape(f, set, &node);
        if is_haproxy {
            assert_eq!(shape, "server-pro-ha=<server>|<date>; path=/");
        } else {
            assert_eq!(shape, "server-pro-ha=<signed token>; Path=/; HttpOnly; Secure; SameSite=Lax");
        }
        note(0, format!("`{shape}`"));

        // 1: the session sticks; Set-Cookie again only when it must be refreshed
        let cookie = cookie_of(&first).unwrap();
        let mut refreshed = 0;
        for _ in 0..20 {
            let r = get(f, "/project/5f3c", &[("cookie", &cookie)]);
            assert_eq!(served_by(f, &r), node, "{}: the session moved", f.label);
            refreshed += usize::from(set_cookie(&r).is_some());
        }
        if is_haproxy {
            // HAProxy re-issues the cookie whenever its date (1 s resolution) has moved on.
            note(1, format!("20/20 on the cookie's node; re-issued whenever its date moved ({refreshed}/20 here)"));
        } else {
            assert_eq!(refreshed, 0, "Tether refreshes at most once per maxidle/10");
            note(1, "20/20 on the cookie's node; not re-issued (at most once per maxidle/10)".into());
        }

        // 2: new sessions spread (roundrobin in both: the guide sets no balance)
        let mut counts = std::collections::BTreeMap::new();
        for _ in 0..30 {
            *counts.entry(served_by(f, &get(f, "/", &[]))).or_insert(0) += 1;
        }
        assert_eq!(counts.len(), 3, "{}: {counts:?}", f.label);
        assert!(counts.values().all(|&c| c >= 6), "{}: {counts:?}", f.label);
        note(2, "spread over the 3 nodes, each ≥ 6 (round robin)".into());

        // 3-6: what the backend receives from a client that forges forwarding headers
        let r = get(
            f,
            "/",
            &[
                ("cookie", &cookie),
                ("x-forwarded-for", "6.6.6.6"),
                ("x-forwarded-proto", "http"),
                ("x-real-ip", "1.1.1.1"),
            ],
        );
        let (xff, xfp, real) = (
            r.received_header("x-forwarded-for"),
            r.received_header("x-forwarded-proto"),
            r.received_header("x-real-ip"),
        );
        assert_eq!(xfp, ["https"], "{}", f.label);
        if is_haproxy {
            assert_eq!(xff, ["6.6.6.6", "127.0.0.1"], "option forwardfor appends");
            assert_eq!(real, ["1.1.1.1"], "HAProxy passes X-Real-IP through");
        } else {
            assert_eq!(xff, ["127.0.0.1"]);
            assert_eq!(real, ["127.0.0.1"]);
        }
        assert!(r.received_header("cookie").iter().any(|c| c.contains("server-pro-ha=")), "{}: no indirect", f.label);
        note(3, format!("`{}`", xff.join("` + `")));
        note(4, format!("`{}`", xfp.join(", ")));
        note(5, if real.is_empty() { "none".into() } else { format!("`{}`", real.join(", ")) });
        note(6, "reaches the backend (no `indirect`)".into());

        // 7: response headers
        let hsts = r.header("strict-transport-security").unwrap_or_default().to_string();
        if is_haproxy {
            assert_eq!(hsts, "max-age=63072000; includeSubDomains; preload;");
        } else {
            assert_eq!(hsts, "max-age=63072000; includeSubDomains; preload");
        }
        note(7, format!("`{hsts}`"));
        note(8, "the server's name".into());

        // 9-10: plain http
        let get_redirect = curl(&[&format!("http://{}/project/x?y=1", f.http)], None);
        let post_redirect = curl(&["-X", "POST", "-d", "a=b", &format!("http://{}/login", f.http)], None);
        let (g, p) = (get_redirect.status(), post_redirect.status());
        let location = get_redirect.header("location").unwrap_or_default().to_string();
        if is_haproxy {
            assert_eq!((g, p), (302, 302));
            assert_eq!(location, format!("https://{}/project/x?y=1", f.http), "HAProxy keeps the Host's port");
        } else {
            assert_eq!((g, p), (301, 308));
            assert_eq!(location, "https://127.0.0.1:8443/project/x?y=1", "the configured https port");
        }
        note(9, format!("GET {g}, POST {p}"));
        let masked = location.replace(&f.http.port().to_string(), "<http port>");
        note(10, format!("`{masked}`"));

        // 11-12: git is pinned to server-pro-ha-1 whatever the browser cookie says
        let other = session_on(f, "server-pro-ha-2");
        let refs = https(f, "GET", "/git/repo.git/info/refs?service=git-upload-pack", &[("cookie", &other)], None);
        assert_eq!(refs.status(), 200, "{}: {refs:?}", f.label);
        assert_eq!(served_by(f, &refs), "server-pro-ha-1");
        // HAProxy logs "--UN": the valid cookie was overridden by use-server and not re-inserted.
        assert_eq!(cookie_of(&refs), None, "{}: a git request must not move the session", f.label);
        note(11, "server-pro-ha-1 (200 from git http-backend)".into());
        note(12, "untouched (no Set-Cookie)".into());
        let clone_dir = o.scratch.join(&format!("clone-{}", f.label));
        let clone = Command::new("git")
            .args(["-c", "http.sslVerify=false", "clone", "-q"])
            .arg(format!("https://{}/git/repo.git", f.https))
            .arg(&clone_dir)
            .env("GIT_TERMINAL_PROMPT", "0")
            .stderr(Stdio::piped())
            .output()
            .unwrap();
        assert!(clone.status.success(), "{}: git clone: {}", f.label, String::from_utf8_lossy(&clone.stderr));
        note(13, "succeeds".into());

        // 14: the editor's WebSocket follows the cookie
        let (status, ws_node) = tls_websocket_handshake(f.https, &other);
        assert_eq!((status, ws_node.as_str()), (101, "server-pro-ha-2"), "{}", f.label);
        note(14, "101 from the cookie's node".into());

        // 15-17: bodies
        let at_limit = o.scratch.file_of_size("50MiB", 50 * MIB);
        let over = o.scratch.file_of_size("50MiB+1", 50 * MIB + 1);
        let path = |n: u32| format!("/upload-{n}-{}", f.label);
        let small = https(f, "POST", &path(1), &[("cookie", &cookie)], Some(&o.scratch.file_of_size("1MiB", MIB)));
        let exact = https(f, "POST", &path(2), &[("cookie", &cookie)], Some(&at_limit));
        let big = https(f, "POST", &path(3), &[("cookie", &cookie)], Some(&over));
        assert_eq!((small.status(), exact.status()), (200, 200), "{}", f.label);
        let got = |n: u32| o.node(&node).requests_for(&path(n)).iter().map(|r| r.body_bytes).sum::<u64>();
        assert_eq!((got(1), got(2)), (MIB, 50 * MIB), "{}", f.label);
        if is_haproxy {
            assert_eq!(big.status(), 200, "the guide's HAProxy config sets no limit");
            assert_eq!(got(3), 50 * MIB + 1);
        } else {
            assert_eq!(big.status(), 413);
            assert!(got(3) <= 50 * MIB);
        }
        note(15, "200, all bytes reach the node".into());
        note(16, "200".into());
        note(
            17,
            format!("{}{}", big.status(), if is_haproxy { ", reaches the node" } else { ", never reaches the node" }),
        );
    }

    // 18-19: the sticky node fails its health check: redispatch, and the session stays moved
    let cookies: Vec<String> = fronts.iter().map(|f| session_on(f, "server-pro-ha-3")).collect();
    o.node("server-pro-ha-3").set_healthy(false);
    o.wait_for_health(o.node("server-pro-ha-3"), false);
    let mut moved = Vec::new();
    for (f, cookie) in fronts.iter().zip(&cookies) {
        let r = get(f, "/project", &[("cookie", cookie)]);
        let now = served_by(f, &r);
        assert_ne!(now, "server-pro-ha-3", "{}", f.label);
        let new_cookie = cookie_of(&r).unwrap_or_else(|| panic!("{}: no Set-Cookie on redispatch", f.label));
        moved.push((now, new_cookie));
    }
    o.node("server-pro-ha-3").set_healthy(true);
    o.wait_for_health(o.node("server-pro-ha-3"), true);
    for (f, (node, cookie)) in fronts.iter().zip(&moved) {
        let r = get(f, "/project", &[("cookie", cookie)]);
        assert_eq!(&served_by(f, &r), node, "{}: the moved session went back", f.label);
        obs[18].push("another node serves; Set-Cookie names it".into());
        obs[19].push("stays on the new node".into());
    }

    let scenarios = [
        "new session: Set-Cookie",
        "20 requests with the cookie",
        "30 new clients",
        "backend X-Forwarded-For (client forged `6.6.6.6`)",
        "backend X-Forwarded-Proto (client forged `http`)",
        "backend X-Real-IP (client forged `1.1.1.1`)",
        "affinity cookie",
        "Strict-Transport-Security",
        "X-Served-By",
        "http://: redirect status",
        "http://: Location",
        "`/git/` with a browser cookie for server-pro-ha-2",
        "`/git/`: the browser's session",
        "`git clone` over https",
        "WebSocket with the cookie",
        "POST 1 MiB",
        "POST 50 MiB",
        "POST 50 MiB + 1 byte",
        "sticky node fails health checks",
        "… and recovers",
    ];
    for (i, s) in scenarios.iter().enumerate() {
        let o = &obs[i];
        assert_eq!(o.len(), 2, "scenario {s}: {o:?}");
        t.row(s, o[0].clone(), o[1].clone());
    }
    t.write();
}

#[test]
fn overleaf_guide_killed_sticky_node_haproxy_and_envoy_alike() {
    let mut o = Overleaf::start();
    let fronts = o.fronts();
    let mut t = Table::new("overleaf-killed-node");
    let cookies: Vec<String> = fronts.iter().map(|f| session_on(f, "server-pro-ha-2")).collect();
    // SIGKILL: no time for health checks to notice; the first requests meet a refused connection.
    o.nodes.iter_mut().find(|n| n.name == "server-pro-ha-2").unwrap().kill();
    let mut rows: Vec<Vec<String>> = vec![Vec::new(); 3];
    for (f, cookie) in fronts.iter().zip(&cookies) {
        let r = get(f, "/project", &[("cookie", cookie)]);
        let now = served_by(f, &r);
        assert_ne!(now, "server-pro-ha-2", "{}", f.label);
        let moved = cookie_of(&r).unwrap_or_else(|| panic!("{}: no Set-Cookie after the retry", f.label));
        rows[0].push("200 from another node (connect retry + redispatch)".into());
        let post = https(f, "POST", "/save", &[("cookie", cookie), ("content-type", "text/plain")], None);
        assert_eq!(post.status(), 200, "{}: a POST to the dead node is retried elsewhere: {post:?}", f.label);
        rows[1].push("200 (the connection was refused: nothing was sent, a retry is safe)".into());
        for _ in 0..10 {
            assert_eq!(served_by(f, &get(f, "/project", &[("cookie", &moved)])), now, "{}", f.label);
        }
        rows[2].push("the re-issued cookie sticks to the new node (10/10)".into());
    }
    for (scenario, obs) in
        ["GET with the dead node's cookie", "POST with the dead node's cookie", "afterwards"].iter().zip(rows)
    {
        t.row(scenario, obs[0].clone(), obs[1].clone());
    }
    t.write();
    assert!(o.envoy.error_lines().is_empty(), "{:?}", o.envoy.error_lines());
}

/// The ShareLaTeX guide: `/project` routes by URI depth 2 (HAProxy map-based hash, Tether
/// Maglev, so node numbers differ but the grouping must not), the rest by cookie + leastconn.
#[test]
fn sharelatex_guide_same_key_grouping_as_haproxy() {
    let nodes: Vec<TestNode> = (0..3).map(|i| TestNode::start(&format!("docker-{i}"))).collect();
    let refs: Vec<&TestNode> = nodes.iter().collect();
    let haproxy = Haproxy::start("sharelatex", &refs);
    let sample = Sample::load("sharelatex", &refs);
    let envoy = sample.start(&refs);
    let fronts = [("HAProxy", haproxy.http), ("Tether", envoy.listener)];
    let mut t = Table::new("sharelatex");
    let mut obs: Vec<Vec<String>> = vec![Vec::new(); 6];

    // Paths of one project, as the editor and the compile service use them.
    let project_paths = |id: &str| {
        [
            format!("/project/{id}"),
            format!("/project/{id}/compile?auto_compile=true"),
            format!("/project/{id}/output/output.pdf?cache_id=9&build=1"),
            format!("/project/{id}/output/output.log"),
            format!("/project/{id}/messages"),
        ]
    };
    let plain_get = |addr: SocketAddr, path: &str, headers: &[(&str, &str)]| {
        let mut args = vec!["--http1.1".to_string(), format!("http://{addr}{path}")];
        for (n, v) in headers {
            args.push("-H".into());
            args.push(format!("{n}: {v}"));
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let r = curl(&args, None);
        assert_eq!(r.status(), 200, "{path}: {r:?}");
        r
    };
    let node_of = |r: &CurlResponse| r.header("x-node").unwrap_or_default().to_string();

    for (label, addr) in fronts {
        // 0-1: every path of a project on one node; 40 projects over all nodes
        let mut per_node = std::collections::BTreeMap::new();
        for p in 0..40 {
            let id = format!("5f3c{p:04x}a1b2c3d4e5f6a7b8");
            let served: Vec<String> =
                project_paths(&id).iter().map(|path| node_of(&plain_get(addr, path, &[]))).collect();
            assert!(served.iter().all(|n| n == &served[0]), "{label}: project {id} split over {served:?}");
            *per_node.entry(served[0].clone()).or_insert(0) += 1;
        }
        assert_eq!(per_node.len(), 3, "{label}: 40 projects on {per_node:?}");
        assert!(per_node.values().all(|&c| c >= 5), "{label}: {per_node:?}");
        obs[0].push("all 5 paths of each of 40 projects on one node".into());
        obs[1].push("40 projects over all 3 nodes, each ≥ 5".into());

        // 2-3: other paths stick by cookie; a project path ignores the cookie
        let first = plain_get(addr, "/login", &[]);
        let set = first.headers.iter().find(|(n, _)| n == "set-cookie").map(|(_, v)| v.clone());
        let cache = first.header("cache-control").unwrap_or_default().to_string();
        let set = set.unwrap_or_else(|| panic!("{label}: no Set-Cookie on a new session"));
        if label == "HAProxy" {
            // The guide's server lines have no `cookie <value>`: HAProxy has nothing to insert
            // and answers with a cookie that deletes itself. The guide's config never sticks.
            assert!(set.starts_with("SERVERID=; Expires=Thu, 01-Jan-1970"), "{set}");
            obs[2].push(format!("`{set}`: the guide's servers have no `cookie` value, so nothing sticks"));
        } else {
            let cookie = set.split(';').next().unwrap().to_string();
            let node = node_of(&first);
            for _ in 0..10 {
                let r = plain_get(addr, "/user/settings", &[("cookie", &cookie)]);
                assert_eq!(node_of(&r), node, "{label}");
                assert!(r.received_header("cookie").is_empty(), "{label}: indirect removes the cookie");
            }
            assert_eq!(cache, "private", "nocache");
            obs[2].push(format!(
                "`{}`, `cache-control: {cache}`; 10/10 stick, the cookie never reaches the node",
                mask(&set)
            ));
        }

        // 4: new sessions spread (leastconn)
        let mut counts = std::collections::BTreeMap::new();
        for _ in 0..30 {
            *counts.entry(node_of(&plain_get(addr, "/", &[]))).or_insert(0) += 1;
        }
        assert_eq!(counts.len(), 3, "{label}: {counts:?}");
        obs[3].push("30 new clients over all 3 nodes".into());

        // 5: what the backend is told
        let r = plain_get(addr, "/", &[("x-forwarded-proto", "https")]);
        let shown = |values: Vec<String>| {
            if values.is_empty() {
                "none".to_string()
            } else {
                format!("`{}`", values.join("` + `"))
            }
        };
        obs[4].push(shown(r.received_header("x-forwarded-proto")));
        obs[5].push(shown(r.received_header("x-forwarded-for")));
    }
    let scenarios = [
        "`/project/<id>/...` (5 paths each)",
        "spread of 40 projects",
        "other paths: session cookie",
        "new sessions (leastconn)",
        "backend X-Forwarded-Proto (client sent `https`)",
        "backend X-Forwarded-For",
    ];
    for (s, o) in scenarios.iter().zip(&obs) {
        assert_eq!(o.len(), 2, "{s}: {o:?}");
        t.row(s, o[0].clone(), o[1].clone());
    }
    t.write();
}

/// A Set-Cookie with its value masked.
fn mask(set: &str) -> String {
    let (nv, attrs) = set.split_once(';').unwrap_or((set, ""));
    let name = nv.split('=').next().unwrap_or_default();
    format!("{name}=…;{attrs}")
}
