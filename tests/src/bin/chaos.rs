//! chaos: Tether under faults and over a long run, bounded in time; prints a summary table.
//!
//! **Node killed under load.** Envoy with the five filters (Overleaf chain, routing contract,
//! health checks every 100 ms, retries on other nodes as envoy/overleaf.yaml: `connect-failure,reset`
//! for GET/HEAD/OPTIONS, `connect-failure,reset-before-request` for the rest) in
//! front of three nodes. `CHAOS_SESSIONS` sticky sessions (default 60) each send ~3.3 requests/s
//! (200/s in all: 80% GET, 20% POST with a 4 KiB body, each POST with a unique path) and a few of
//! them hold a WebSocket that pings every 250 ms. After 8 s server-pro-ha-2 gets SIGKILL; after
//! 16 s it comes back on the same port; the load stops at 24 s. Reported: failed GETs (goal 0,
//! retries), failed POSTs (bounded: only those in flight on the dead node), POSTs a node saw
//! twice (goal 0: never replayed), sessions moved (goal: exactly the dead node's), connection
//! attempts to the dead node after health checks marked it (goal 0), sessions that went back
//! to the recovered node (goal 0), WebSockets broken (only the dead node's) and reopened.
//!
//! **Long run.** `CHAOS_LONG_REQUESTS` (default 1 000 000) requests through the same Envoy in ten
//! slices (h2load, 8 connections, a returning session): requests/s per slice and Envoy's RSS
//! after each; goal: RSS flat after warm-up (growth under 1 MiB), no falling throughput.

use std::collections::{BTreeMap, HashMap};
use std::io::{BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tether_e2e::http::{read_keepalive_response, request};
use tether_e2e::node::nodes_json;
use tether_e2e::{admin_get, env_or, process_rss_kib, Envoy, EnvoyConfig, TestNode, WasmFilter};

const HEADER: &str = "x-tether-session";

/// When each successful request of a session was answered, and by which node.
type Served = Vec<(Instant, String)>;

#[derive(Default)]
struct Tally {
    gets: AtomicU64,
    get_failures: AtomicU64,
    posts: AtomicU64,
    post_failures: AtomicU64,
    ws_opened: AtomicU64,
    ws_broken: AtomicU64,
    /// Each failed request: when (s since the load started), method, and what went wrong.
    failures: Mutex<Vec<String>>,
}

/// One HTTP/1.1 exchange on a keep-alive connection: (status, x-node, our Set-Cookie if any),
/// or what went wrong.
fn exchange(
    conn: &mut Option<BufReader<TcpStream>>,
    addr: SocketAddr,
    head: &str,
    body: &[u8],
) -> Result<(u16, String, Option<String>), String> {
    let reused = conn.is_some();
    if conn.is_none() {
        let s = TcpStream::connect(addr).map_err(|e| format!("connect: {e}"))?;
        s.set_read_timeout(Some(Duration::from_secs(10))).ok();
        *conn = Some(BufReader::new(s));
    }
    let reader = conn.as_mut().ok_or("no connection")?;
    let ok = reader.get_mut().write_all(head.as_bytes()).and_then(|()| reader.get_mut().write_all(body));
    if let Err(e) = ok {
        *conn = None;
        return Err(format!("write ({} connection): {e}", if reused { "reused" } else { "new" }));
    }
    let (status, headers) = match read_keepalive_response(reader) {
        Ok(response) => response,
        Err(e) => {
            *conn = None;
            return Err(format!("read ({} connection): {e}", if reused { "reused" } else { "new" }));
        }
    };
    let header = |name: &str| headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str());
    let node = header("x-node").unwrap_or_default().to_string();
    let set = header("set-cookie").and_then(|v| v.split(';').next()).map(String::from);
    if header("connection").is_some_and(|v| v.eq_ignore_ascii_case("close")) {
        *conn = None;
    }
    Ok((status, node, set))
}

fn main() {
    let sessions: usize = env_or("CHAOS_SESSIONS", 60);
    let long_requests: u64 = env_or("CHAOS_LONG_REQUESTS", 1_000_000);
    let mut nodes: Vec<TestNode> = (1..=3).map(|i| TestNode::start(&format!("server-pro-ha-{i}"))).collect();
    let table = nodes_json(&nodes);
    let dead_addr = nodes[1].addr;
    let filters = vec![
        WasmFilter::new("forwarded", &format!(r#"{{"proto": "https", "served_by": {{"nodes": {table}}}}}"#)),
        WasmFilter::new("body-limit", r#"{"default_limit": "50M"}"#),
        WasmFilter::new(
            "path-pin",
            &format!(
                r#"{{"nodes": {table}, "rules": [{{"name": "git", "path_prefix": "/git/", "node": "server-pro-ha-1"}}]}}"#
            ),
        ),
        WasmFilter::new("uri-hash", &format!(r#"{{"nodes": {table}, "prefixes": ["/project/"], "depth": 2}}"#)),
        WasmFilter::new(
            "affinity",
            &format!(r#"{{"nodes": {table}, "cookie": {{"keys": ["chaos-key-0123456789abcdef"]}}}}"#),
        ),
    ];
    let refs: Vec<&TestNode> = nodes.iter().collect();
    let mut config = EnvoyConfig::new(filters, &refs).with_routing(HEADER);
    // As envoy/overleaf.yaml: anything may be retried before it was sent, idempotent requests
    // also after (a reset mid-request).
    config.retry_on = "connect-failure,reset-before-request".into();
    config.idempotent_retry_on = Some("connect-failure,reset".into());
    let envoy = Envoy::start(&config);
    let addr = envoy.listener;

    // Sessions: a cookie each, and the node it belongs to.
    let mut cookies = Vec::new();
    let mut home = Vec::new();
    for _ in 0..sessions {
        let r = request(addr, "GET", "/login", &[]).unwrap_or_else(|e| panic!("{e}"));
        let cookie = r.header("set-cookie").unwrap_or_else(|| panic!("no cookie: {r:?}"));
        cookies.push(cookie.split(';').next().unwrap_or_default().to_string());
        home.push(r.header("x-node").unwrap_or_default().to_string());
    }
    let on_dead = home.iter().filter(|n| *n == "server-pro-ha-2").count();

    // Like a browser, each session keeps the cookie it was last given (a redispatch re-issues it).
    let jars: Vec<Arc<Mutex<String>>> = cookies.iter().map(|c| Arc::new(Mutex::new(c.clone()))).collect();
    let tally = Arc::new(Tally::default());
    let stop = Arc::new(AtomicBool::new(false));
    let served: Arc<Mutex<Vec<Served>>> = Arc::new(Mutex::new(vec![Vec::new(); sessions]));
    let start = Instant::now();
    let per_session = Duration::from_millis(300); // ~3.3 requests/s per session
    let workers: Vec<_> = (0..sessions)
        .map(|s| {
            let (tally, stop, served, jar) = (tally.clone(), stop.clone(), served.clone(), jars[s].clone());
            std::thread::spawn(move || {
                let mut conn = None;
                let mut n = 0u64;
                let body = vec![b'x'; 4096];
                let offset = per_session.mul_f64(s as f64 / sessions as f64);
                while !stop.load(Ordering::SeqCst) {
                    let due = start + offset + per_session * n as u32;
                    if let Some(w) = due.checked_duration_since(Instant::now()) {
                        std::thread::sleep(w);
                    }
                    n += 1;
                    let post = n.is_multiple_of(5);
                    let cookie = jar.lock().map(|c| c.clone()).unwrap_or_default();
                    let (head, payload): (String, &[u8]) = if post {
                        (format!("POST /save/{s}/{n} HTTP/1.1\r\nHost: chaos\r\nCookie: {cookie}\r\nContent-Length: 4096\r\n\r\n"), &body)
                    } else {
                        (format!("GET /doc/{s} HTTP/1.1\r\nHost: chaos\r\nCookie: {cookie}\r\n\r\n"), &[])
                    };
                    let result = exchange(&mut conn, addr, &head, payload);
                    let ok = matches!(result, Ok((200, _, _)));
                    let counter = if post { (&tally.posts, &tally.post_failures) } else { (&tally.gets, &tally.get_failures) };
                    counter.0.fetch_add(1, Ordering::SeqCst);
                    if !ok {
                        counter.1.fetch_add(1, Ordering::SeqCst);
                        let what = match &result {
                            Ok((status, node, _)) => format!("status {status} from {node:?}"),
                            Err(e) => e.clone(),
                        };
                        let line = format!("{:.2} s {}: {what}", start.elapsed().as_secs_f64(), if post { "POST" } else { "GET" });
                        if let Ok(mut f) = tally.failures.lock() {
                            f.push(line);
                        }
                    }
                    if let Ok((_, _, Some(set))) = &result {
                        if let Ok(mut c) = jar.lock() {
                            c.clone_from(set);
                        }
                    }
                    if let Ok((200, node, _)) = result {
                        if let Ok(mut v) = served.lock() {
                            if let Some(list) = v.get_mut(s) {
                                list.push((Instant::now(), node));
                            }
                        }
                    }
                }
            })
        })
        .collect();
    // WebSockets on a few sessions: ping every 250 ms, reopen when broken.
    let sockets: Vec<_> = (0..6.min(sessions))
        .map(|s| {
            let (tally, stop, jar) = (tally.clone(), stop.clone(), jars[s].clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::SeqCst) {
                    let cookie = jar.lock().map(|c| c.clone()).unwrap_or_default();
                    let mut req =
                        tungstenite::client::IntoClientRequest::into_client_request(format!("ws://{addr}/socket.io"))
                            .unwrap_or_else(|e| panic!("{e}"));
                    if let Ok(v) = cookie.parse() {
                        req.headers_mut().insert("cookie", v);
                    }
                    let Ok((mut ws, _)) = tungstenite::connect(req) else {
                        std::thread::sleep(Duration::from_millis(250));
                        continue;
                    };
                    tally.ws_opened.fetch_add(1, Ordering::SeqCst);
                    while !stop.load(Ordering::SeqCst) {
                        let alive = ws.send(tungstenite::Message::text("ping")).is_ok() && ws.read().is_ok();
                        if !alive {
                            tally.ws_broken.fetch_add(1, Ordering::SeqCst);
                            break;
                        }
                        std::thread::sleep(Duration::from_millis(250));
                    }
                }
            })
        })
        .collect();

    let connect_failures = || -> u64 {
        let (_, body) =
            admin_get(envoy.admin, "/stats?filter=cluster.nodes.upstream_cx_connect_fail$").unwrap_or_default();
        body.lines().find_map(|l| l.split(": ").nth(1)).and_then(|v| v.trim().parse().ok()).unwrap_or(0)
    };
    std::thread::sleep(Duration::from_secs(8).saturating_sub(start.elapsed()));
    nodes[1].kill();
    let killed_at = start.elapsed();
    envoy.wait_for_endpoint_health(dead_addr, false);
    let noticed_at = start.elapsed();
    let failures_when_noticed = connect_failures();
    std::thread::sleep(Duration::from_secs(16).saturating_sub(start.elapsed()));
    let failures_before_restart = connect_failures();
    nodes[1] = TestNode::start_on_port("server-pro-ha-2", dead_addr.port());
    envoy.wait_for_health(&nodes[1], true);
    let back_at = start.elapsed();
    std::thread::sleep(Duration::from_secs(24).saturating_sub(start.elapsed()));
    stop.store(true, Ordering::SeqCst);
    for t in workers.into_iter().chain(sockets) {
        let _ = t.join();
    }

    // Sessions: moved only if their node died; never back to the recovered node.
    let served = served.lock().map(|v| v.clone()).unwrap_or_default();
    let back_instant = start + back_at;
    let (mut moved_dead, mut moved_other, mut went_back) = (0, 0, 0);
    for (s, list) in served.iter().enumerate() {
        let nodes_seen: Vec<&String> = list.iter().map(|(_, n)| n).collect();
        let moved = nodes_seen.iter().any(|n| **n != home[s]);
        if moved && home[s] == "server-pro-ha-2" {
            moved_dead += 1;
        } else if moved {
            moved_other += 1;
        }
        if home[s] == "server-pro-ha-2" && list.iter().any(|(t, n)| *t > back_instant && n == "server-pro-ha-2") {
            went_back += 1;
        }
    }
    // POSTs seen twice by a node that lived through it (the killed one's record died with it).
    let mut seen: HashMap<String, u32> = HashMap::new();
    for node in [&nodes[0], &nodes[2]] {
        for r in node.requests().into_iter().filter(|r| r.method == "POST") {
            *seen.entry(r.path).or_default() += 1;
        }
    }
    let replayed = seen.values().filter(|&&c| c > 1).count();

    let t = &tally;
    let get = |a: &AtomicU64| a.load(Ordering::SeqCst);
    println!("# Tether chaos\n");
    println!(
        "Node killed under load: {sessions} sessions, ~{} requests/s (80% GET, 20% POST 4 KiB), 6 WebSockets; \
         SIGKILL at {:.1} s, health checks noticed at {:.1} s, node back at {:.1} s, load stopped at {:.1} s.\n",
        sessions as f64 / per_session.as_secs_f64(),
        killed_at.as_secs_f64(),
        noticed_at.as_secs_f64(),
        back_at.as_secs_f64(),
        start.elapsed().as_secs_f64()
    );
    println!("| measure | value | goal |\n|---|---|---|");
    println!("| GETs failed | {} of {} | 0 (retried on another node) |", get(&t.get_failures), get(&t.gets));
    println!(
        "| POSTs failed | {} of {} | only those in flight on the dead node |",
        get(&t.post_failures),
        get(&t.posts)
    );
    println!("| POSTs a node saw twice | {replayed} | 0 (never replayed) |");
    println!("| sessions moved, of the dead node's {on_dead} | {moved_dead} | {on_dead} |");
    println!("| sessions moved, of the others | {moved_other} | 0 |");
    println!("| sessions that went back after recovery | {went_back} | 0 |");
    println!(
        "| connection attempts to the dead node after health checks noticed | {} | 0 |",
        failures_before_restart.saturating_sub(failures_when_noticed)
    );
    println!(
        "| WebSockets opened / broken | {} / {} | broken: only the dead node's |",
        get(&t.ws_opened),
        get(&t.ws_broken)
    );
    for failure in t.failures.lock().map(|f| f.clone()).unwrap_or_default() {
        println!("- failed: {failure}");
    }

    // Long run.
    let cookie = format!("cookie: {}", cookies[0]);
    let slice = (long_requests / 10).max(1);
    let mut rows = Vec::new();
    let rss0 = process_rss_kib(envoy.pid());
    for i in 0..10 {
        let out = Command::new("h2load")
            .args(["--h1", "-n", &slice.to_string(), "-c", "8", "-t", "1", "-H", &cookie])
            .arg(envoy.url("/doc/long"))
            .output()
            .unwrap_or_else(|e| panic!("h2load: {e}"));
        let text = String::from_utf8_lossy(&out.stdout);
        let ok = text.contains(&format!("{slice} 2xx"));
        let rps: f64 = text
            .lines()
            .find(|l| l.starts_with("finished in"))
            .and_then(|l| l.split(", ").nth(1))
            .and_then(|s| s.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0);
        rows.push((i + 1, rps, process_rss_kib(envoy.pid()), ok));
    }
    let warm = rows.get(1).map_or(rss0, |r| r.2);
    let last = rows.last().map_or(rss0, |r| r.2);
    println!("\nLong run: {} requests in 10 slices through the five filters (h2load, 8 connections).\n", slice * 10);
    println!("| slice | requests/s | Envoy RSS MiB | all 2xx |\n|---|---|---|---|");
    for (i, rps, rss, ok) in &rows {
        println!("| {i} | {rps:.0} | {:.1} | {} |", *rss as f64 / 1024.0, if *ok { "yes" } else { "NO" });
    }
    println!(
        "\nRSS before {:.1} MiB, after the 2nd slice {:.1} MiB, at the end {:.1} MiB: growth after warm-up {:+.2} MiB (goal < 1 MiB).",
        rss0 as f64 / 1024.0,
        warm as f64 / 1024.0,
        last as f64 / 1024.0,
        (last as f64 - warm as f64) / 1024.0
    );
    // Tether's counters reach Envoy on each VM's tick.
    let [redispatched, pinned] =
        envoy.counters_after_tick(["wasmcustom.tether_affinity.redispatched", "wasmcustom.tether_affinity.pinned"]);
    let stats: BTreeMap<&str, u64> =
        [("tether_affinity.redispatched", redispatched), ("tether_affinity.pinned", pinned)].into_iter().collect();
    println!("Counters: {stats:?}");
    let failed =
        get(&t.get_failures) > 0 || replayed > 0 || moved_other > 0 || went_back > 0 || rows.iter().any(|r| !r.3);
    std::process::exit(i32::from(failed));
}
