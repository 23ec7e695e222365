//! test-node: a sample backend node for Tether's end-to-end tests.
//!
//! `test-node --name NAME [--port PORT]` listens on 127.0.0.1 (port 0 = any) and prints
//! `listening 127.0.0.1:PORT` on stdout once it accepts connections.
//!
//! - `GET|HEAD /status` (Overleaf's) and `/health` (Rocket.Chat's): 200, or 503 after `POST /__control/unhealthy` (`/__control/healthy` undoes it).
//! - `GET /__control/requests`: JSON list of every request seen (control requests excluded):
//!   `{path, method, body_bytes, state}` where state is `receiving`, `complete` or `aborted`, so a test
//!   can see exactly how much of a body reached the node, even when the request was cut off.
//! - `Upgrade: websocket`: a WebSocket echo.
//! - `/git/...`: with `--git-root DIR`, git's smart HTTP protocol through `git http-backend`
//!   (CGI) for the repositories under DIR, pushes allowed; without it, 404, so a git client
//!   that reaches the wrong node fails loudly.
//! - Anything else: 200, header `x-node: NAME`, and the JSON echo
//!   `{node, method, path, headers: [[name, value], ...], body_bytes}`.
//!
//! A request header `x-test-response-header: name: value` (repeatable) makes the node add that
//! header to its response, so tests can play an application that sets its own cookie or HSTS.
//! `x-test-delay-ms: N` makes it answer N ms late (at most 10 s): requests that stay in flight.
//!
//! Bodies are read with `Content-Length` or chunked framing and counted, never stored.
//! `Expect: 100-continue` is answered with `100 Continue` before the body is read.

use base64::Engine;
use sha1::{Digest, Sha1};
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

struct State {
    name: String,
    git_root: Option<std::path::PathBuf>,
    healthy: AtomicBool,
    requests: Mutex<Vec<RequestRecord>>,
}

#[derive(Clone, serde::Serialize)]
struct RequestRecord {
    method: String,
    path: String,
    body_bytes: u64,
    state: &'static str,
}

struct Request {
    method: String,
    path: String,
    headers: Vec<(String, String)>,
}

impl Request {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
}

fn main() {
    let mut name = String::from("node");
    let mut port: u16 = 0;
    let mut git_root = None;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--name" => name = args.next().unwrap_or_default(),
            "--port" => port = args.next().and_then(|p| p.parse().ok()).unwrap_or(0),
            "--git-root" => git_root = args.next().map(std::path::PathBuf::from),
            other => {
                eprintln!("test-node: unknown argument {other:?}");
                std::process::exit(2);
            }
        }
    }
    let listener = match TcpListener::bind(("127.0.0.1", port)) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("test-node: cannot listen on 127.0.0.1:{port}: {e}");
            std::process::exit(1);
        }
    };
    let addr = listener.local_addr().map(|a| a.to_string()).unwrap_or_default();
    println!("listening {addr}");
    let _ = io::stdout().flush();
    let state = Arc::new(State { name, git_root, healthy: AtomicBool::new(true), requests: Mutex::new(Vec::new()) });
    for stream in listener.incoming().flatten() {
        let state = Arc::clone(&state);
        std::thread::spawn(move || {
            let _ = serve_connection(stream, &state);
        });
    }
}

fn serve_connection(stream: TcpStream, state: &State) -> io::Result<()> {
    let mut writer = stream.try_clone()?;
    let mut reader = BufReader::new(stream);
    loop {
        let Some(req) = read_head(&mut reader)? else {
            return Ok(());
        };
        if req.path.starts_with("/__control/") {
            let keep = control(&req, state, &mut writer)?;
            if !keep {
                return Ok(());
            }
            continue;
        }
        let health_path = req.path.split('?').next().unwrap_or_default();
        if health_path == "/status" || health_path == "/health" {
            let (code, text) =
                if state.healthy.load(Ordering::SeqCst) { (200, "OK") } else { (503, "Service Unavailable") };
            let body = if req.method == "HEAD" { "" } else { text };
            respond(&mut writer, code, text, &[("content-type", "text/plain")], body.as_bytes(), req.method == "HEAD")?;
            continue;
        }
        if req.header("upgrade").is_some_and(|u| u.eq_ignore_ascii_case("websocket")) {
            return websocket_echo(req, reader, writer, &state.name);
        }
        if req.path.starts_with("/git/") {
            git(&req, &mut reader, &mut writer, state)?;
            continue;
        }
        let index = {
            let mut log = lock(&state.requests);
            log.push(RequestRecord {
                method: req.method.clone(),
                path: req.path.clone(),
                body_bytes: 0,
                state: "receiving",
            });
            log.len() - 1
        };
        if req.header("expect").is_some_and(|e| e.eq_ignore_ascii_case("100-continue")) {
            writer.write_all(b"HTTP/1.1 100 Continue\r\n\r\n")?;
        }
        let result = read_body(&mut reader, &req, |chunk| {
            if let Some(r) = lock(&state.requests).get_mut(index) {
                r.body_bytes += chunk.len() as u64;
            }
        });
        let body_bytes = {
            let mut log = lock(&state.requests);
            let Some(r) = log.get_mut(index) else { return Ok(()) };
            r.state = if result.is_ok() { "complete" } else { "aborted" };
            r.body_bytes
        };
        result?;
        let echo = serde_json::json!({
            "node": state.name,
            "method": req.method,
            "path": req.path,
            "headers": req.headers,
            "body_bytes": body_bytes,
        });
        let body = serde_json::to_vec(&echo).unwrap_or_default();
        if let Some(ms) = req.header("x-test-delay-ms").and_then(|v| v.parse::<u64>().ok()) {
            std::thread::sleep(std::time::Duration::from_millis(ms.min(10_000)));
        }
        let node = state.name.clone();
        let mut headers: Vec<(&str, &str)> = vec![("content-type", "application/json"), ("x-node", &node)];
        for (n, v) in &req.headers {
            if n == "x-test-response-header" {
                if let Some((name, value)) = v.split_once(':') {
                    headers.push((name.trim(), value.trim()));
                }
            }
        }
        respond(&mut writer, 200, "OK", &headers, &body, req.method == "HEAD")?;
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Returns whether to keep the connection.
fn control(req: &Request, state: &State, writer: &mut TcpStream) -> io::Result<bool> {
    let body = match (req.method.as_str(), req.path.as_str()) {
        ("POST", "/__control/unhealthy") => {
            state.healthy.store(false, Ordering::SeqCst);
            b"{}".to_vec()
        }
        ("POST", "/__control/healthy") => {
            state.healthy.store(true, Ordering::SeqCst);
            b"{}".to_vec()
        }
        ("GET", "/__control/requests") => serde_json::to_vec(&*lock(&state.requests)).unwrap_or_default(),
        _ => {
            respond(writer, 404, "Not Found", &[], b"unknown control endpoint", false)?;
            return Ok(true);
        }
    };
    respond(writer, 200, "OK", &[("content-type", "application/json")], &body, false)?;
    Ok(true)
}

/// Reads one line as bytes; header bytes that are not UTF-8 are kept, lossily, not fatal.
fn read_line_lossy(reader: &mut BufReader<TcpStream>) -> io::Result<Option<String>> {
    let mut raw = Vec::new();
    if reader.read_until(b'\n', &mut raw)? == 0 {
        return Ok(None);
    }
    Ok(Some(String::from_utf8_lossy(&raw).into_owned()))
}

fn read_head(reader: &mut BufReader<TcpStream>) -> io::Result<Option<Request>> {
    let Some(line) = read_line_lossy(reader)? else {
        return Ok(None);
    };
    let mut parts = line.trim_end().splitn(3, ' ');
    let method = parts.next().unwrap_or_default().to_string();
    let path = parts.next().unwrap_or_default().to_string();
    let mut headers = Vec::new();
    loop {
        let Some(h) = read_line_lossy(reader)? else {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "eof in headers"));
        };
        let h = h.trim_end_matches(['\r', '\n']);
        if h.is_empty() {
            break;
        }
        if let Some((n, v)) = h.split_once(':') {
            headers.push((n.trim().to_ascii_lowercase(), v.trim().to_string()));
        }
    }
    Ok(Some(Request { method, path, headers }))
}

/// Reads and discards the body, reporting each piece's size as it arrives.
fn read_body(reader: &mut BufReader<TcpStream>, req: &Request, mut seen: impl FnMut(&[u8])) -> io::Result<()> {
    let chunked = req.header("transfer-encoding").is_some_and(|t| t.to_ascii_lowercase().contains("chunked"));
    if chunked {
        loop {
            let mut size_line = String::new();
            if reader.read_line(&mut size_line)? == 0 {
                return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "eof in chunk size"));
            }
            let hex = size_line.trim().split(';').next().unwrap_or_default();
            let size = u64::from_str_radix(hex, 16)
                .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "bad chunk size"))?;
            if size == 0 {
                // trailers until the empty line
                loop {
                    let mut t = String::new();
                    if reader.read_line(&mut t)? == 0 || t.trim().is_empty() {
                        return Ok(());
                    }
                }
            }
            discard(reader, size, &mut seen)?;
            let mut crlf = String::new();
            reader.read_line(&mut crlf)?;
        }
    }
    let length: u64 = req.header("content-length").and_then(|v| v.parse().ok()).unwrap_or(0);
    discard(reader, length, &mut seen)
}

fn discard(reader: &mut BufReader<TcpStream>, mut remaining: u64, seen: &mut impl FnMut(&[u8])) -> io::Result<()> {
    let mut buf = [0u8; 64 * 1024];
    while remaining > 0 {
        let want = usize::try_from(remaining.min(buf.len() as u64)).unwrap_or(buf.len());
        let n = reader.read(&mut buf[..want])?;
        if n == 0 {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "eof in body"));
        }
        seen(&buf[..n]);
        remaining -= n as u64;
    }
    Ok(())
}

/// Serves git's smart HTTP protocol via `git http-backend` (CGI), recording the request.
fn git(req: &Request, reader: &mut BufReader<TcpStream>, writer: &mut TcpStream, state: &State) -> io::Result<()> {
    let mut body = Vec::new();
    read_body(reader, req, |chunk| body.extend_from_slice(chunk))?;
    lock(&state.requests).push(RequestRecord {
        method: req.method.clone(),
        path: req.path.clone(),
        body_bytes: body.len() as u64,
        state: "complete",
    });
    let node = state.name.clone();
    let Some(root) = &state.git_root else {
        let msg = format!("no git repositories on node {node}");
        return respond(writer, 404, "Not Found", &[("x-node", &node)], msg.as_bytes(), false);
    };
    let (path, query) = req.path.split_once('?').unwrap_or((&req.path, ""));
    let mut cmd = std::process::Command::new("git");
    cmd.arg("http-backend")
        .env("GIT_PROJECT_ROOT", root)
        .env("GIT_HTTP_EXPORT_ALL", "1")
        .env("REQUEST_METHOD", &req.method)
        .env("PATH_INFO", path.strip_prefix("/git").unwrap_or(path))
        .env("QUERY_STRING", query)
        .env("CONTENT_LENGTH", body.len().to_string())
        .env("REMOTE_ADDR", "127.0.0.1")
        .env("REMOTE_USER", "tester") // lets http-backend accept pushes
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped());
    for (name, var) in [
        ("content-type", "CONTENT_TYPE"),
        ("content-encoding", "HTTP_CONTENT_ENCODING"),
        ("git-protocol", "HTTP_GIT_PROTOCOL"),
    ] {
        if let Some(v) = req.header(name) {
            cmd.env(var, v);
        }
    }
    let mut child = cmd.spawn()?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(&body)?;
    }
    let out = child.wait_with_output()?;
    // CGI output: headers (a "Status:" line among them), a blank line, the body.
    let split = out.stdout.windows(4).position(|w| w == b"\r\n\r\n").map(|i| (i, i + 4));
    let split = split.or_else(|| out.stdout.windows(2).position(|w| w == b"\n\n").map(|i| (i, i + 2)));
    let (head_end, body_start) = split.unwrap_or((out.stdout.len(), out.stdout.len()));
    let head = String::from_utf8_lossy(&out.stdout[..head_end]).into_owned();
    let mut code = 200;
    let mut headers: Vec<(String, String)> = vec![("x-node".into(), node)];
    for line in head.lines() {
        if let Some((n, v)) = line.split_once(':') {
            if n.eq_ignore_ascii_case("status") {
                code = v.trim().split(' ').next().and_then(|c| c.parse().ok()).unwrap_or(500);
            } else if !n.eq_ignore_ascii_case("content-length") {
                headers.push((n.trim().to_string(), v.trim().to_string()));
            }
        }
    }
    let header_refs: Vec<(&str, &str)> = headers.iter().map(|(n, v)| (n.as_str(), v.as_str())).collect();
    respond(writer, code, "CGI", &header_refs, &out.stdout[body_start..], req.method == "HEAD")
}

fn respond(
    w: &mut TcpStream,
    code: u16,
    reason: &str,
    headers: &[(&str, &str)],
    body: &[u8],
    head: bool,
) -> io::Result<()> {
    let mut out = format!("HTTP/1.1 {code} {reason}\r\ncontent-length: {}\r\n", body.len());
    for (n, v) in headers {
        out.push_str(&format!("{n}: {v}\r\n"));
    }
    out.push_str("\r\n");
    let mut bytes = out.into_bytes();
    if !head {
        bytes.extend_from_slice(body);
    }
    w.write_all(&bytes)
}

fn websocket_echo(req: Request, reader: BufReader<TcpStream>, mut writer: TcpStream, node: &str) -> io::Result<()> {
    let key = req.header("sec-websocket-key").unwrap_or_default();
    let mut sha = Sha1::new();
    sha.update(key.as_bytes());
    sha.update(b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11");
    let accept = base64::engine::general_purpose::STANDARD.encode(sha.finalize());
    write!(
        writer,
        "HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: Upgrade\r\nsec-websocket-accept: {accept}\r\nx-node: {node}\r\n\r\n"
    )?;
    let leftover = reader.buffer().to_vec();
    let stream = reader.into_inner();
    let mut ws =
        tungstenite::WebSocket::from_partially_read(stream, leftover, tungstenite::protocol::Role::Server, None);
    loop {
        match ws.read() {
            Ok(msg) if msg.is_text() || msg.is_binary() => {
                if ws.send(msg).is_err() {
                    return Ok(());
                }
            }
            Ok(_) => {}
            Err(_) => return Ok(()),
        }
    }
}
