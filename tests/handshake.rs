//! The WebSocket opening handshake as hostile or unusual clients send it: RFC 6455 section
//! 4.2.1's requirements on the upgrade request, and the header variants real clients use.

mod common;

use common::*;

const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";
const WS_PATH: &str = "/app/app-key?protocol=7&client=js&version=8.4.0";

/// The response to `request`, written in one piece.
async fn answer(server: &Server, request: &[u8]) -> HttpResponse {
    HttpConn::connect(server.addr).await.send_raw(request).await
}

/// `upgrade_request` with the header line starting `name:` replaced by `line` (or removed
/// when `line` is empty).
fn upgrade_with(name: &str, line: &str) -> String {
    let req = upgrade_request(WS_PATH, KEY);
    let mut out = String::new();
    let mut found = false;
    for l in req.split_inclusive("\r\n") {
        if l.to_ascii_lowercase()
            .starts_with(&format!("{}:", name.to_ascii_lowercase()))
        {
            found = true;
            if !line.is_empty() {
                out.push_str(line);
                out.push_str("\r\n");
            }
        } else {
            out.push_str(l);
        }
    }
    assert!(found, "no {name} header in {req:?}");
    out
}

/// Expects a 400 whose `{"error": ...}` message contains `needle`.
async fn expect_400(server: &Server, what: &str, request: &str, needle: &str) {
    let r = answer(server, request.as_bytes()).await;
    assert_eq!(r.status, 400, "{what}: {}", r.text());
    r.assert_error(400);
    let msg = r.json()["error"].as_str().unwrap_or_default().to_string();
    assert!(
        msg.contains(needle),
        "{what}: error {msg:?} should mention {needle:?}"
    );
}

#[tokio::test]
async fn upgrade_requests_must_follow_rfc6455_4_2_1() {
    let server = Server::start();
    let cases = [
        (
            "no Connection header",
            upgrade_with("connection", ""),
            "Connection",
        ),
        (
            "Connection without Upgrade",
            upgrade_with("connection", "Connection: keep-alive"),
            "Connection",
        ),
        (
            "Connection: upgraded (not the token)",
            upgrade_with("connection", "Connection: upgraded"),
            "Connection",
        ),
        (
            "HTTP/1.0",
            upgrade_request(WS_PATH, KEY).replacen("HTTP/1.1", "HTTP/1.0", 1),
            "HTTP/1.1",
        ),
        ("no Host", upgrade_with("host", ""), "Host"),
        (
            "Upgrade: h2c to /app/",
            upgrade_with("upgrade", "Upgrade: h2c"),
            "Upgrade",
        ),
        (
            "no Upgrade to /app/",
            upgrade_with("upgrade", ""),
            "Upgrade",
        ),
        (
            "key of 15 bytes",
            upgrade_with(
                "sec-websocket-key",
                "Sec-WebSocket-Key: YWJjZGVmZ2hpamtsbW5v",
            ),
            "Sec-WebSocket-Key",
        ),
        (
            "no key",
            upgrade_with("sec-websocket-key", ""),
            "Sec-WebSocket-Key",
        ),
        (
            "POST",
            upgrade_request(WS_PATH, KEY).replacen("GET", "POST", 1),
            "GET",
        ),
    ];
    for (what, req, needle) in &cases {
        expect_400(&server, what, req, needle).await;
    }
    // A version other than 13 (or none) is 426 naming the version spoken.
    for line in ["Sec-WebSocket-Version: 8", ""] {
        let req = upgrade_with("sec-websocket-version", line);
        let r = answer(&server, req.as_bytes()).await;
        assert_eq!(r.status, 426, "version {line:?}: {}", r.text());
        r.assert_error(426);
        assert_eq!(
            r.header("sec-websocket-version"),
            Some("13"),
            "version {line:?}: {:?}",
            r.headers
        );
    }
    let mut c = server.connect().await;
    c.assert_alive().await;
}

/// Upgrades with `request` by hand and expects a working Pusher connection.
async fn expect_upgraded(server: &Server, what: &str, request: &str) {
    let mut raw = Raw::connect(server.addr).await;
    assert!(raw.write(request.as_bytes()).await);
    let head = raw.read_head(WAIT).await.expect("upgrade response head");
    assert!(head.starts_with("HTTP/1.1 101"), "{what}: {head}");
    assert!(head.contains(&ws_accept(KEY)), "{what}: {head}");
    let mut ws = RawWs {
        raw,
        socket_id: String::new(),
    };
    let f = ws.read_frame(WAIT).await.expect("connection_established");
    let v: serde_json::Value = serde_json::from_slice(&f.payload).expect("json");
    assert_eq!(v["event"], "pusher:connection_established", "{what}");
    ws.ping_pong().await;
}

#[tokio::test]
async fn upgrade_header_variants_real_clients_send_are_accepted() {
    let server = Server::start();
    let cases = [
        (
            "Firefox's Connection: keep-alive, Upgrade",
            upgrade_with("connection", "Connection: keep-alive, Upgrade"),
        ),
        (
            "lower-case names and values",
            upgrade_request(WS_PATH, KEY)
                .replace("Upgrade: websocket", "upgrade: websocket")
                .replace("Connection: Upgrade", "connection: upgrade"),
        ),
        (
            "Upgrade: WebSocket",
            upgrade_with("upgrade", "Upgrade: WebSocket"),
        ),
        (
            "Connection split over two lines",
            upgrade_with(
                "connection",
                "Connection: keep-alive\r\nConnection: Upgrade",
            ),
        ),
        (
            "spaces and empty list items",
            upgrade_with("connection", "Connection: ,  Upgrade ,keep-alive"),
        ),
    ];
    for (what, req) in &cases {
        expect_upgraded(&server, what, req).await;
    }
    // And the real client library.
    let mut c = server.connect().await;
    c.assert_alive().await;
}

#[tokio::test]
async fn plain_http_with_an_upgrade_to_something_else_is_served() {
    let server = Server::start();
    let r = answer(
        &server,
        b"GET /up HTTP/1.1\r\nHost: x\r\nUpgrade: h2c\r\nConnection: Upgrade, HTTP2-Settings\r\n\
          HTTP2-Settings: AAMAAABkAAQAAP__\r\n\r\n",
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
}
