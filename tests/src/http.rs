//! Clients: real curl for traffic through Envoy, a tiny HTTP/1.0 GET for admin endpoints.

use std::io::{BufRead, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// One curl run: every response head it printed (1xx included), the final body, stderr.
#[derive(Debug)]
pub struct CurlResponse {
    /// Status codes in order, e.g. `[100, 200]`.
    pub statuses: Vec<u16>,
    /// Headers of the final response, names lower-cased.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    pub stderr: String,
    pub exit_code: Option<i32>,
    pub elapsed: Duration,
}

impl CurlResponse {
    pub fn status(&self) -> u16 {
        self.statuses.last().copied().unwrap_or(0)
    }

    /// The test node that answered (its `x-node` header), "" if none.
    pub fn node(&self) -> String {
        self.header("x-node").unwrap_or_default().to_string()
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("body is not JSON ({e}): {:?}", String::from_utf8_lossy(&self.body)))
    }

    /// The values of request header `name` that a test-node received, in order, from its echo.
    pub fn received_header(&self, name: &str) -> Vec<String> {
        let echo = self.json();
        let headers = echo["headers"].as_array().cloned().unwrap_or_default();
        headers.iter().filter(|h| h[0].as_str() == Some(name)).filter_map(|h| h[1].as_str().map(String::from)).collect()
    }
}

/// `curl -k --http1.1 <extra> <url>`: a request as a browser's HTTP/1.1 connection makes it,
/// trusting the tests' self-signed certificates.
pub fn curl_http1(url: &str, extra: &[&str]) -> CurlResponse {
    let mut args = vec!["-k", "--http1.1"];
    args.extend_from_slice(extra);
    args.push(url);
    curl(&args, None)
}

/// Runs `curl -sS -i <args>` with `stdin` (if any) piped in, bounded by `--max-time 30`.
pub fn curl(args: &[&str], stdin: Option<&[u8]>) -> CurlResponse {
    let started = Instant::now();
    let mut child = Command::new("curl")
        .args(["-sS", "-i", "--max-time", "30"])
        .args(args)
        .stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run curl (scripts/setup installs it): {e}"));
    if let (Some(data), Some(mut pipe)) = (stdin, child.stdin.take()) {
        let data = data.to_vec();
        // Written from a thread: curl may stop reading (e.g. after a 413) and must not block us.
        std::thread::spawn(move || {
            let _ = pipe.write_all(&data);
        });
    }
    let out = child.wait_with_output().unwrap_or_else(|e| panic!("curl: {e}"));
    let (statuses, headers, body) = parse_responses(&out.stdout);
    CurlResponse {
        statuses,
        headers,
        body,
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        exit_code: out.status.code(),
        elapsed: started.elapsed(),
    }
}

type Heads = (Vec<u16>, Vec<(String, String)>, Vec<u8>);

/// Splits `curl -i` output into response heads and the final body.
fn parse_responses(mut out: &[u8]) -> Heads {
    let mut statuses = Vec::new();
    loop {
        let Some(end) = find(out, b"\r\n\r\n") else {
            return (statuses, Vec::new(), out.to_vec());
        };
        let head = String::from_utf8_lossy(&out[..end]).into_owned();
        out = &out[end + 4..];
        let mut lines = head.split("\r\n");
        let status = lines.next().and_then(|l| l.split_whitespace().nth(1)).and_then(|s| s.parse().ok()).unwrap_or(0);
        statuses.push(status);
        if !(100..200).contains(&status) {
            let headers = lines
                .filter_map(|l| l.split_once(':'))
                .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
                .collect();
            return (statuses, headers, out.to_vec());
        }
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// `GET path` on an admin (or node control) port; returns status and body.
pub fn admin_get(addr: SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    raw_request(addr, "GET", path)
}

/// A response read by [`request`].
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    /// Names lower-cased, in order; repeated headers (`set-cookie`) appear repeatedly.
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }

    pub fn all(&self, name: &str) -> Vec<&str> {
        self.headers.iter().filter(|(n, _)| n == name).map(|(_, v)| v.as_str()).collect()
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("body is not JSON ({e}): {:?}", self.body))
    }

    /// `name=value` of the cookie `name` this response sets, as a client sends it back.
    pub fn set_cookie(&self, name: &str) -> Option<String> {
        let prefix = format!("{name}=");
        self.all("set-cookie")
            .into_iter()
            .find(|c| c.starts_with(&prefix))
            .map(|c| c.split(';').next().unwrap_or_default().to_string())
    }

    /// The test node that answered (its `x-node` header), "" if none.
    pub fn node(&self) -> String {
        self.header("x-node").unwrap_or_default().to_string()
    }
}

/// A minimal HTTP/1.1 request with no body and `connection: close`: fast enough to send
/// hundreds per test, and exact about headers (curl is used where a real client matters).
pub fn request(addr: SocketAddr, method: &str, path: &str, headers: &[(&str, &str)]) -> std::io::Result<Response> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut head = format!("{method} {path} HTTP/1.1\r\nhost: {addr}\r\ncontent-length: 0\r\nconnection: close\r\n");
    for (n, v) in headers {
        head.push_str(&format!("{n}: {v}\r\n"));
    }
    head.push_str("\r\n");
    s.write_all(head.as_bytes())?;
    let mut out = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        let n = s.read(&mut buf)?;
        if n == 0 {
            break;
        }
        out.extend_from_slice(&buf[..n]);
        // The test node keeps connections open; a complete response is enough.
        if response_complete(&out) {
            break;
        }
    }
    let (statuses, headers, body) = parse_responses(&out);
    let chunked = headers.iter().any(|(n, v)| n == "transfer-encoding" && v.contains("chunked"));
    let body = if chunked { dechunk(&body) } else { body };
    Ok(Response {
        status: statuses.last().copied().unwrap_or(0),
        headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    })
}

/// [`request`] without extra headers; returns status and body.
pub fn raw_request(addr: SocketAddr, method: &str, path: &str) -> std::io::Result<(u16, String)> {
    request(addr, method, path, &[]).map(|r| (r.status, r.body))
}

/// Decodes a complete chunked body (no trailers expected).
fn dechunk(mut data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(eol) = find(data, b"\r\n") {
        let size_text = String::from_utf8_lossy(&data[..eol]);
        let size = usize::from_str_radix(size_text.split(';').next().unwrap_or("0").trim(), 16).unwrap_or(0);
        data = &data[eol + 2..];
        if size == 0 || data.len() < size {
            break;
        }
        out.extend_from_slice(&data[..size]);
        data = data.get(size + 2..).unwrap_or_default();
    }
    out
}

/// True once a response head and a body of its `content-length` have arrived.
pub fn response_complete(out: &[u8]) -> bool {
    let Some(end) = find(out, b"\r\n\r\n") else { return false };
    let head = String::from_utf8_lossy(&out[..end]).to_ascii_lowercase();
    let len =
        head.split("\r\n").find_map(|l| l.strip_prefix("content-length:")).and_then(|v| v.trim().parse::<usize>().ok());
    match len {
        Some(len) => out.len() >= end + 4 + len,
        None => false,
    }
}

/// Opens a WebSocket over TLS with `openssl s_client` and returns the handshake's status and
/// the node that answered; the process is killed as soon as the response head has arrived.
pub fn tls_websocket_handshake(addr: SocketAddr, cookie: &str) -> (u16, String) {
    let mut child = Command::new("openssl")
        .args(["s_client", "-quiet", "-connect", &addr.to_string()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run openssl: {e}"));
    let request = format!(
        "GET /socket.io/ HTTP/1.1\r\nHost: {addr}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nCookie: {cookie}\r\n\r\n"
    );
    child.stdin.as_mut().unwrap().write_all(request.as_bytes()).unwrap();
    // A 101 has no body: the response head is all there is to read.
    let mut reader = std::io::BufReader::new(child.stdout.take().unwrap());
    let (status, headers) = read_keepalive_response(&mut reader).unwrap_or_default();
    let node = headers.into_iter().find(|(n, _)| n == "x-node").map(|(_, v)| v).unwrap_or_default();
    let _ = child.kill();
    let _ = child.wait();
    (status, node)
}

/// Reads one response from a keep-alive HTTP/1.1 connection (Content-Length framing, as Envoy,
/// HAProxy and test-node answer the load generators): status and headers (names lower-cased);
/// the body is read and dropped. An error when the connection ends mid-response.
pub fn read_keepalive_response(reader: &mut impl BufRead) -> std::io::Result<(u16, Vec<(String, String)>)> {
    let (mut status, mut headers, mut length) = (0u16, Vec::new(), 0usize);
    let mut line = String::new();
    loop {
        line.clear();
        if reader.read_line(&mut line)? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        let l = line.trim_end();
        if l.is_empty() {
            break;
        }
        if let Some(rest) = l.strip_prefix("HTTP/1.1 ") {
            status = rest.get(..3).and_then(|c| c.parse().ok()).unwrap_or(0);
        } else if let Some((n, v)) = l.split_once(':') {
            let (n, v) = (n.trim().to_ascii_lowercase(), v.trim().to_string());
            if n == "content-length" {
                length = v.parse().unwrap_or(0);
            }
            headers.push((n, v));
        }
    }
    std::io::copy(&mut reader.take(length as u64), &mut std::io::sink())?;
    Ok((status, headers))
}
