//! The 16 KiB request head limit, however the head's bytes arrive: in one write the server
//! reads at once, in many small ones, or in a read that takes it past the limit.

mod common;

use common::*;
use std::time::Duration;

/// The request head limit (`http::request::MAX_HEAD`).
const MAX_HEAD: usize = 16 * 1024;
const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";
const WS_PATH: &str = "/app/app-key?protocol=7&client=js&version=8.4.0";

/// `head` (which ends in the blank line) padded with an `X-Pad` header to exactly `len` bytes.
fn padded(head: &str, len: usize) -> Vec<u8> {
    let cut = head.len() - 2; // before the final CRLF
    let overhead = head.len() + "X-Pad: \r\n".len();
    assert!(len > overhead, "{len} is too short for {head:?}");
    let out = format!(
        "{}X-Pad: {}\r\n\r\n",
        &head[..cut],
        "v".repeat(len - overhead)
    );
    assert_eq!(out.len(), len);
    out.into_bytes()
}

/// The status line of the answer to `bytes`, written in pieces of `piece` bytes (0: all in
/// one write).
async fn status_line(server: &Server, bytes: &[u8], piece: usize) -> String {
    let mut raw = Raw::connect(server.addr).await;
    if piece == 0 {
        raw.write(bytes).await;
    } else {
        for chunk in bytes.chunks(piece) {
            if !raw.write(chunk).await {
                break; // the server answered and stopped reading
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
    let head = raw.read_head(WAIT).await.expect("a response head");
    head.lines().next().unwrap_or_default().to_string()
}

#[tokio::test]
async fn request_head_limit_holds_however_the_bytes_arrive() {
    let server = Server::start();
    let api_head = "GET /up HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n";
    let upgrade = upgrade_request(WS_PATH, KEY);
    // A 60 KB header, a 17 KB URL, an upgrade with a 20 KB header: one write each (the
    // server reads each in one go), and the same bytes a few hundred at a time.
    let big_url = format!(
        "GET /up?pad={} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n",
        "u".repeat(17_000)
    );
    let cases: [(&str, Vec<u8>); 3] = [
        ("60 KB header", padded(api_head, 60_000)),
        ("17 KB URL", big_url.into_bytes()),
        ("20 KB upgrade", padded(&upgrade, 20_000)),
    ];
    for (what, bytes) in &cases {
        for piece in [0, 700] {
            let line = status_line(&server, bytes, piece).await;
            assert!(
                line.starts_with("HTTP/1.1 431"),
                "{what} (pieces of {piece}): {line}"
            );
        }
    }
    // The limit is exact: a head of 16 KiB is served, one byte more is not, in one write.
    let line = status_line(&server, &padded(api_head, MAX_HEAD), 0).await;
    assert!(line.starts_with("HTTP/1.1 200"), "16 KiB head: {line}");
    let line = status_line(&server, &padded(api_head, MAX_HEAD + 1), 0).await;
    assert!(line.starts_with("HTTP/1.1 431"), "16 KiB + 1 head: {line}");
    let line = status_line(&server, &padded(&upgrade, MAX_HEAD), 0).await;
    assert!(line.starts_with("HTTP/1.1 101"), "16 KiB upgrade: {line}");
    let line = status_line(&server, &padded(&upgrade, MAX_HEAD + 1), 0).await;
    assert!(
        line.starts_with("HTTP/1.1 431"),
        "16 KiB + 1 upgrade: {line}"
    );
    // A head that completes in a read which takes it over the limit: 10 KB first, then the rest.
    let bytes = padded(api_head, 20_000);
    let mut raw = Raw::connect(server.addr).await;
    raw.write(&bytes[..10_000]).await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    raw.write(&bytes[10_000..]).await;
    let head = raw.read_head(WAIT).await.expect("a response head");
    assert!(head.starts_with("HTTP/1.1 431"), "10 KB + 10 KB: {head}");
    // Still serving.
    let mut c = server.connect().await;
    c.assert_alive().await;
}
