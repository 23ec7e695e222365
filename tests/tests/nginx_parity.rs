//! Parity with nginx: the Rocket.Chat and Apostrophe guides' nginx configs (tests/parity/
//! *.nginx.conf, adapted to loopback only) run by Debian's nginx beside envoy/rocketchat.yaml and
//! envoy/apostrophe.yaml, on the same test nodes, through the same scenarios.
//!
//! Each scenario asserts what each proxy does, so a change on either side fails the suite, and
//! records it in a Markdown table (target/parity/nginx.md): same, or differs. Every "differs"
//! row is in envoy/README.md's table for that guide, with the reason.

// Needs Envoy and nginx (scripts/setup) and the built modules (scripts/build): `scripts/test` runs it.
#![cfg(feature = "e2e")]

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use tether_e2e::http::{curl_http1 as call, tls_websocket_handshake};
use tether_e2e::nginx::Nginx;
use tether_e2e::sample::Sample;
use tether_e2e::{repo_root, CurlResponse, ScratchDir, TestNode};

const MIB: u64 = 1024 * 1024;

fn node_of(r: &CurlResponse) -> String {
    r.node()
}

/// The parity table: (guide, scenario, nginx, Tether).
#[derive(Default)]
struct Table(Vec<(&'static str, &'static str, String, String)>);

impl Table {
    fn row(&mut self, guide: &'static str, scenario: &'static str, nginx: impl ToString, tether: impl ToString) {
        self.0.push((guide, scenario, nginx.to_string(), tether.to_string()));
    }

    fn write(&self, name: &str) -> (usize, usize) {
        let mut md = String::from(
            "| guide | scenario | nginx 1.22 (guide's config) | Envoy + Tether (sample) | |\n|---|---|---|---|---|\n",
        );
        let mut same = 0;
        for (guide, scenario, nginx, tether) in &self.0 {
            let verdict = if nginx == tether { "same" } else { "differs" };
            same += usize::from(nginx == tether);
            let _ = writeln!(md, "| {guide} | {scenario} | {nginx} | {tether} | {verdict} |");
        }
        let dir = repo_root().join("target/parity");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(name), &md).unwrap();
        eprintln!("{md}");
        (same, self.0.len() - same)
    }
}

/// The forwarding headers a backend received, as one line.
fn forwarding(r: &CurlResponse) -> String {
    ["x-real-ip", "x-forwarded-for", "x-forwarded-proto", "x-nginx-proxy"]
        .iter()
        .map(|h| format!("{h}: {}", r.received_header(h).join(" | ")))
        .collect::<Vec<_>>()
        .join("; ")
}

#[test]
fn rocketchat_beside_nginx() {
    let nodes = [TestNode::start("rocketchat-1"), TestNode::start("rocketchat-2")];
    let refs: Vec<&TestNode> = nodes.iter().collect();
    let nginx = Nginx::start("rocketchat", &refs);
    let sample = Sample::load("rocketchat", &refs);
    let envoy = sample.start(&refs);
    let fronts: [(&str, SocketAddr); 2] =
        [("nginx", nginx.https.unwrap()), ("tether", envoy.listener_named("https").unwrap())];
    let mut table = Table::default();
    let mut seen: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    let mut record = |scenario: &'static str, results: [String; 2]| {
        seen.insert(scenario, results.to_vec());
        table.row("Rocket.Chat", scenario, &results[0], &results[1]);
    };

    // A direct client: the forwarding headers the instance receives.
    let direct = fronts.map(|(_, at)| forwarding(&call(&format!("https://{at}/api/v1/me"), &[])));
    for r in &direct {
        assert_eq!(
            r,
            "x-real-ip: 127.0.0.1; x-forwarded-for: 127.0.0.1; x-forwarded-proto: https; x-nginx-proxy: true"
        );
    }
    record("forwarding headers, direct client", direct);

    // The client's Host reaches the instance ($http_host; Envoy keeps it).
    let host = fronts.map(|(_, at)| {
        call(&format!("https://{at}/"), &["-H", "host: chat.example.com"]).received_header("host").join(" | ")
    });
    assert_eq!(host, ["chat.example.com", "chat.example.com"]);
    record("Host as the client sent it", host);

    // A client that writes its own X-Forwarded-For: nginx appends to it ($proxy_add_x_forwarded_for),
    // Tether does not pass a client's claim on.
    let forged = fronts.map(|(_, at)| {
        call(&format!("https://{at}/"), &["-H", "x-forwarded-for: 6.6.6.6"])
            .received_header("x-forwarded-for")
            .join(" | ")
    });
    assert_eq!(forged, ["6.6.6.6, 127.0.0.1", "127.0.0.1"]);
    record("client's own X-Forwarded-For: 6.6.6.6", forged);

    // WebSocket upgrade over TLS (Meteor's DDP).
    let upgrade = fronts.map(|(_, at)| tls_websocket_handshake(at, "").0.to_string());
    assert_eq!(upgrade, ["101", "101"]);
    record("WebSocket upgrade (TLS)", upgrade);

    // client_max_body_size 0: no limit.
    let scratch = ScratchDir::new("nginx-parity");
    let big = scratch.file_of_size("40MiB", 40 * MIB);
    let upload = fronts.map(|(_, at)| {
        call(&format!("https://{at}/file-upload"), &["--data-binary", &format!("@{}", big.display())])
            .status()
            .to_string()
    });
    assert_eq!(upload, ["200", "200"]);
    record("40 MiB upload", upload);

    // Stickiness: the nginx guide balances round robin with no affinity; the sample follows the
    // guide's Apache variant (stickysession=ROUTEID), which Meteor's long polling needs.
    let sticky = fronts.map(|(_, at)| {
        let first = call(&format!("https://{at}/"), &[]);
        let cookie = first.header("set-cookie").map(|c| c.split(';').next().unwrap_or_default().to_string());
        let mut nodes_seen = std::collections::BTreeSet::new();
        for _ in 0..6 {
            let extra: Vec<String> = cookie.iter().map(|c| format!("cookie: {c}")).collect();
            let args: Vec<&str> = extra.iter().flat_map(|h| ["-H", h.as_str()]).collect();
            nodes_seen.insert(node_of(&call(&format!("https://{at}/"), &args)));
        }
        format!("{} instance(s) for 6 requests of one client", nodes_seen.len())
    });
    assert_eq!(sticky, ["2 instance(s) for 6 requests of one client", "1 instance(s) for 6 requests of one client"]);
    record("one client's requests", sticky);

    let (same, differs) = table.write("nginx-rocketchat.md");
    assert_eq!((same, differs), (4, 2), "{:?}", seen);
}

#[test]
fn apostrophe_beside_nginx() {
    let mut nodes = [TestNode::start("apostrophe-1"), TestNode::start("apostrophe-2")];
    let refs: Vec<&TestNode> = nodes.iter().collect();
    let nginx = Nginx::start("apostrophe", &refs);
    let sample = Sample::load("apostrophe", &refs);
    let envoy = sample.start(&refs);
    let fronts: [SocketAddr; 2] = [nginx.http.unwrap(), envoy.listener];
    let mut table = Table::default();

    // Round robin over the two processes.
    let split = fronts.map(|at| {
        let mut counts: BTreeMap<String, u32> = BTreeMap::new();
        for _ in 0..20 {
            *counts.entry(node_of(&call(&format!("http://{at}/"), &[]))).or_default() += 1;
        }
        format!("{:?}", counts.values().collect::<Vec<_>>())
    });
    assert_eq!(split, ["[10, 10]", "[10, 10]"]);
    table.row("Apostrophe", "20 GETs over two processes", &split[0], &split[1]);

    // A client's own X-Real-IP is replaced; X-Forwarded-For: nginx appends, Tether replaces.
    let real_ip = fronts.map(|at| {
        let r = call(&format!("http://{at}/"), &["-H", "x-real-ip: 6.6.6.6", "-H", "x-forwarded-for: 6.6.6.6"]);
        format!(
            "x-real-ip: {}; x-forwarded-for: {}",
            r.received_header("x-real-ip").join(" | "),
            r.received_header("x-forwarded-for").join(" | ")
        )
    });
    assert_eq!(
        real_ip,
        [
            "x-real-ip: 127.0.0.1; x-forwarded-for: 6.6.6.6, 127.0.0.1",
            "x-real-ip: 127.0.0.1; x-forwarded-for: 127.0.0.1"
        ]
    );
    table.row("Apostrophe", "client's own X-Real-IP and X-Forwarded-For: 6.6.6.6", &real_ip[0], &real_ip[1]);

    // client_max_body_size 32M.
    let scratch = ScratchDir::new("nginx-parity");
    let at_limit = scratch.file_of_size("32MiB", 32 * MIB);
    let over = scratch.file_of_size("32MiB+1", 32 * MIB + 1);
    for (scenario, file, want) in [("32 MiB upload", &at_limit, "200"), ("32 MiB + 1 byte upload", &over, "413")] {
        let status = fronts.map(|at| {
            call(&format!("http://{at}/upload"), &["--data-binary", &format!("@{}", file.display())])
                .status()
                .to_string()
        });
        assert_eq!(status, [want, want], "{scenario}");
        table.row("Apostrophe", scenario, &status[0], &status[1]);
    }

    // A process dies: proxy_next_upstream (nginx) and the retry policy (Envoy) send GETs and
    // POSTs that could not be delivered to the other one.
    nodes[1].kill();
    let failover = fronts.map(|at| {
        let ok = (0..10)
            .filter(|i| {
                let get = call(&format!("http://{at}/page-{i}"), &[]);
                let post = call(&format!("http://{at}/form-{i}"), &["-d", "a=b"]);
                get.status() == 200 && post.status() == 200 && node_of(&get) == "apostrophe-1"
            })
            .count();
        format!("{ok} of 10 GET+POST pairs answered")
    });
    assert_eq!(failover, ["10 of 10 GET+POST pairs answered", "10 of 10 GET+POST pairs answered"]);
    table.row("Apostrophe", "one process killed", &failover[0], &failover[1]);

    let (same, differs) = table.write("nginx-apostrophe.md");
    assert_eq!((same, differs), (4, 1));
}
