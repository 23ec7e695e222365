//! Envoy restarted under Tether: a hot restart (`--restart-epoch`, how operators upgrade or
//! reload Envoy) under load, and a full stop and start. The cookies carry everything a session
//! needs, so neither may move one.

// Needs Envoy (scripts/setup) and the built modules (scripts/build): `scripts/test` runs it.
#![cfg(feature = "e2e")]

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tether_e2e::http::{request, Response};
use tether_e2e::node::{nodes_json, three_nodes};
use tether_e2e::{wait_for, ws, Envoy, EnvoyConfig, TestNode, WasmFilter};

const HEADER: &str = "x-tether-session";
const KEY: &str = "e2e-test-key-0123456789abcdef";

fn config(nodes: &[TestNode]) -> EnvoyConfig {
    let refs: Vec<&TestNode> = nodes.iter().collect();
    let affinity = format!(r#"{{"nodes": {}, "cookie": {{"keys": ["{KEY}"], "maxidle": "1h"}}}}"#, nodes_json(nodes));
    EnvoyConfig::new(vec![WasmFilter::new("affinity", &affinity)], &refs).with_routing(HEADER)
}

fn get(listener: SocketAddr, cookie: Option<&str>) -> Result<Response, String> {
    let headers: Vec<(&str, &str)> = cookie.map(|c| ("cookie", c)).into_iter().collect();
    match request(listener, "GET", "/", &headers) {
        Ok(r) if r.status == 200 => Ok(r),
        other => Err(format!("{other:?}")),
    }
}

/// New sessions: (cookie, node).
fn sessions(listener: SocketAddr, count: usize) -> Vec<(String, String)> {
    (0..count)
        .map(|_| {
            let r = get(listener, None).unwrap();
            (r.set_cookie("SERVERID").expect("a new session's cookie"), r.node())
        })
        .collect()
}

/// GETs of the sessions, one after another, until stopped: how many were sent, failed (not a
/// 200: a request a user saw fail) and answered by another node than the session's.
struct Load {
    stop: Arc<AtomicBool>,
    sent: Arc<AtomicU64>,
    thread: Option<std::thread::JoinHandle<(u64, u64, Vec<String>)>>,
}

impl Load {
    fn start(listener: SocketAddr, sessions: Vec<(String, String)>) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let sent = Arc::new(AtomicU64::new(0));
        let (stop2, sent2) = (stop.clone(), sent.clone());
        let thread = std::thread::spawn(move || {
            let (mut failed, mut moved, mut errors) = (0, 0, Vec::new());
            for (cookie, node) in sessions.iter().cycle() {
                if stop2.load(Ordering::SeqCst) {
                    break;
                }
                sent2.fetch_add(1, Ordering::SeqCst);
                match get(listener, Some(cookie)) {
                    Ok(r) if r.node() == *node => {}
                    Ok(r) => {
                        moved += 1;
                        errors.push(format!("{node} -> {}", r.node()));
                    }
                    Err(e) => {
                        failed += 1;
                        errors.push(e);
                    }
                }
            }
            (failed, moved, errors)
        });
        Load { stop, sent, thread: Some(thread) }
    }

    fn sent(&self) -> u64 {
        self.sent.load(Ordering::SeqCst)
    }

    /// Waits until `more` requests have been sent since now.
    fn wait_for_more(&self, more: u64) {
        let target = self.sent() + more;
        wait_for("the load to go on", Duration::from_secs(20), || (self.sent() >= target).then_some(()));
    }

    /// Stops: (sent, failed, moved, what went wrong).
    fn finish(mut self) -> (u64, u64, u64, Vec<String>) {
        self.stop.store(true, Ordering::SeqCst);
        let (failed, moved, errors) = self.thread.take().map(|t| t.join().unwrap()).unwrap();
        (self.sent(), failed, moved, errors)
    }
}

/// What a browser-like keep-alive client met: it reuses one connection until a response says
/// `connection: close` (a draining Envoy says so), and replays an idempotent request once on a
/// new connection when a reused one was closed before any answer (RFC 9112, 9.3.1: the race
/// every keep-alive client has with a server closing an idle connection).
#[derive(Debug, Default)]
struct KeepAlive {
    sent: u64,
    failed: u64,
    moved: u64,
    closes: u64,
    replays: u64,
}

type Connection = (std::net::TcpStream, std::io::BufReader<std::net::TcpStream>, u32);

/// One GET on the kept connection (a new one if there is none): the answer, or whether the
/// connection that failed had served before.
fn exchange(
    listener: SocketAddr,
    conn: &mut Option<Connection>,
    cookie: &str,
) -> Result<(u16, Vec<(String, String)>), bool> {
    use std::io::Write;
    if conn.is_none() {
        let s = std::net::TcpStream::connect(listener).map_err(|_| false)?;
        let r = std::io::BufReader::new(s.try_clone().map_err(|_| false)?);
        *conn = Some((s, r, 0));
    }
    let (s, r, used) = conn.as_mut().ok_or(false)?;
    let reused = *used > 0;
    *used += 1;
    let request = format!("GET /ka HTTP/1.1\r\nhost: tether\r\ncookie: {cookie}\r\n\r\n");
    s.write_all(request.as_bytes()).and_then(|()| tether_e2e::http::read_keepalive_response(r)).map_err(|_| reused)
}

fn keepalive_load(listener: SocketAddr, sessions: Vec<(String, String)>, stop: Arc<AtomicBool>) -> KeepAlive {
    let mut seen = KeepAlive::default();
    let mut conn: Option<Connection> = None;
    for (cookie, node) in sessions.iter().cycle() {
        if stop.load(Ordering::SeqCst) {
            break;
        }
        seen.sent += 1;
        let mut result = exchange(listener, &mut conn, cookie);
        if result == Err(true) {
            conn = None;
            seen.replays += 1;
            result = exchange(listener, &mut conn, cookie);
        }
        match result {
            Ok((200, headers)) => {
                let header = |n: &str| headers.iter().find(|(k, _)| k == n).map(|(_, v)| v.as_str());
                if header("x-node") != Some(node.as_str()) {
                    seen.moved += 1;
                }
                if header("connection").is_some_and(|v| v.eq_ignore_ascii_case("close")) {
                    seen.closes += 1;
                    conn = None;
                }
            }
            _ => {
                seen.failed += 1;
                conn = None;
            }
        }
    }
    seen
}

#[test]
fn a_hot_restart_under_load_fails_no_request_and_moves_no_session() {
    let nodes = three_nodes();
    let mut config = config(&nodes);
    config.main_port = tether_e2e::free_port();
    let mut old = Envoy::start(&config);
    let sessions = sessions(old.listener, 30);
    let (mut ws, ws_node) = ws::connect(old.listener, &sessions[0].0);
    assert_eq!(ws_node, sessions[0].1);
    let load = Load::start(old.listener, sessions.clone());
    let stop = Arc::new(AtomicBool::new(false));
    let keepalive = {
        let (listener, sessions, stop) = (old.listener, sessions.clone(), stop.clone());
        std::thread::spawn(move || keepalive_load(listener, sessions, stop))
    };
    load.wait_for_more(100);

    // Epoch 1 takes the listener over; epoch 0 drains for 2 s, then exits.
    let new = old.hot_restart(Duration::from_secs(2));
    assert_eq!(new.listener, old.listener, "the same listening socket");
    load.wait_for_more(100);
    assert!(ws::echoes(&mut ws, "while the old Envoy drains"), "a WebSocket stays open through the drain");
    wait_for("the old Envoy to exit", Duration::from_secs(20), || old.exited().then_some(()));
    // Envoy documents that connections still open at parent shutdown are closed with it.
    assert!(!ws::echoes(&mut ws, "after the old Envoy exited"), "the old process's WebSocket is closed");
    let (mut again, node) = ws::connect(new.listener, &sessions[0].0);
    assert_eq!(node, ws_node, "the client reconnects to its node");
    assert!(ws::echoes(&mut again, "reconnected"));
    load.wait_for_more(100);

    let (sent, failed, moved, errors) = load.finish();
    stop.store(true, Ordering::SeqCst);
    let ka = keepalive.join().unwrap();
    eprintln!(
        "hot restart under load: {sent} GETs of 30 sessions on new connections, {failed} failed, {moved} answered by \
         another node; keep-alive client: {} GETs, {} failed, {} moved, {} connection: close from the draining \
         Envoy, {} replayed after a close race",
        ka.sent, ka.failed, ka.moved, ka.closes, ka.replays
    );
    assert_eq!((failed, moved), (0, 0), "{errors:?}");
    assert_eq!((ka.failed, ka.moved), (0, 0), "{ka:?}");
    assert!(ka.closes >= 1, "the draining Envoy closed the keep-alive connection: {ka:?}");
    // The new process served the sessions: its own counters show them pinned.
    assert!(new.counter_at_least("wasmcustom.tether_affinity.pinned", 100) >= 100);
}

#[test]
fn a_full_restart_loses_no_session() {
    let nodes = three_nodes();
    let config = config(&nodes);
    let first = Envoy::start(&config);
    let sessions = sessions(first.listener, 30);
    drop(first);
    // A new Envoy, nothing carried over but the configuration (and its keys): the cookies are
    // the whole state.
    let second = Envoy::start(&config);
    let kept = sessions.iter().filter(|(cookie, node)| get(second.listener, Some(cookie)).unwrap().node() == *node);
    assert_eq!(kept.count(), 30);
    assert_eq!(second.counter("wasmcustom.tether_affinity.invalid_cookie", 0), 0);
}
