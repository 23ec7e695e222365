//! WebSockets through Envoy to the test node's echo endpoint.

use std::net::SocketAddr;

pub type Socket = tungstenite::WebSocket<tungstenite::stream::MaybeTlsStream<std::net::TcpStream>>;

/// A WebSocket through `listener` with `cookie`: the socket and the node that took the upgrade.
pub fn connect(listener: SocketAddr, cookie: &str) -> (Socket, String) {
    let url = format!("ws://{listener}/socket.io");
    let mut req = tungstenite::client::IntoClientRequest::into_client_request(url)
        .unwrap_or_else(|e| panic!("a WebSocket request: {e}"));
    req.headers_mut().insert("cookie", cookie.parse().unwrap_or_else(|e| panic!("a cookie header: {e}")));
    let (ws, resp) = tungstenite::connect(req).unwrap_or_else(|e| panic!("WebSocket upgrade through {listener}: {e}"));
    let node = resp.headers().get("x-node").and_then(|v| v.to_str().ok()).unwrap_or_default().to_string();
    (ws, node)
}

/// Whether `text` comes back over the socket (false once it is closed).
pub fn echoes(ws: &mut Socket, text: &str) -> bool {
    ws.send(tungstenite::Message::text(text)).is_ok()
        && ws.read().ok().and_then(|m| m.into_text().ok()).is_some_and(|t| t.as_str() == text)
}
