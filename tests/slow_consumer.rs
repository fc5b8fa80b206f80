//! A subscriber that stops reading must not grow server memory without bound: once its outbound
//! queue passes `max_outbound_bytes` it is closed with 4100 (and counted), while a reading
//! subscriber of the same channel keeps getting every event in order.

mod common;

use std::time::Duration;

use common::*;
use futures_util::StreamExt;
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

/// A subscriber of `ch` with a tiny receive window that will never read.
async fn stalled_subscriber(server: &Server, ch: &str) -> WebSocketStream<tokio::net::TcpStream> {
    let sock = tokio::net::TcpSocket::new_v4().expect("socket");
    sock.set_recv_buffer_size(4096).expect("rcvbuf");
    let tcp = sock.connect(server.addr).await.expect("connect");
    let (mut ws, _) = tokio_tungstenite::client_async(server.ws_url("app-key"), tcp)
        .await
        .expect("handshake");
    let _established = ws.next().await;
    let sub = json!({"event":"pusher:subscribe","data":{"channel":ch}}).to_string();
    futures_util::SinkExt::send(&mut ws, Message::text(sub))
        .await
        .expect("subscribe");
    let _succeeded = ws.next().await;
    ws
}

/// Publishes `batches` x 10 events of 9000 bytes to `ch` (named `{prefix}{n}`), checking that
/// the reading client `fast` gets each one, in order, as they go.
async fn flood(api: &Api, fast: &mut Client, ch: &str, batches: usize, prefix: &str) {
    let data = "x".repeat(9000);
    for i in 0..batches {
        let batch: Vec<Value> = (0..10)
            .map(
                |j| json!({"name": format!("{prefix}{}", i * 10 + j), "channel": ch, "data": data}),
            )
            .collect();
        let r = api.post("/batch_events", &json!({ "batch": batch })).await;
        assert_eq!(r.status, 200, "{}", r.text());
        for j in 0..10 {
            let ev = fast.expect_event(&format!("{prefix}{}", i * 10 + j)).await;
            assert_eq!(ev["channel"], json!(ch));
        }
    }
}

#[tokio::test]
async fn slow_consumer_is_closed_with_4100_and_others_unharmed() {
    let config = Config::default().with("max_outbound_bytes", 65536);
    let server = Server::start_with(config);
    let ch = uniq("firehose");

    let mut slow = stalled_subscriber(&server, &ch).await;

    let mut fast = server.connect().await;
    fast.subscribe(&ch).await;

    // ~5.4 MB in all: more than the 64 KiB budget plus what the kernel buffers for a socket
    // (tcp_wmem allows the send buffer to grow to 4 MiB).
    let total = 600;
    flood(&server.api(), &mut fast, &ch, total / 10, "e").await;

    // Now read the slow client: what fit in the kernel buffers, then 4100.
    let mut saw_error = false;
    let mut close_code = None;
    let mut events = 0;
    while let Ok(Some(msg)) = tokio::time::timeout(Duration::from_secs(10), slow.next()).await {
        match msg {
            Ok(Message::Text(t)) => {
                let v: Value = serde_json::from_str(&t).expect("json");
                if v["event"] == "pusher:error" {
                    assert_eq!(v["data"]["code"], json!(4100), "{v}");
                    saw_error = true;
                } else {
                    events += 1;
                }
            }
            Ok(Message::Close(f)) => {
                close_code = f.map(|f| u16::from(f.code));
                break;
            }
            Ok(_) => {}
            Err(_) => break,
        }
    }
    assert!(
        saw_error,
        "pusher:error 4100 before the close (got {events} events, close {close_code:?})"
    );
    assert_eq!(close_code, Some(4100));
    assert!(
        events < total,
        "the slow client did not get everything: {events} of {total}"
    );

    let mut conn = HttpConn::connect(server.addr).await;
    let metrics = conn.request("GET", "/metrics", b"").await.text();
    let line = metrics
        .lines()
        .find(|l| l.starts_with("ringpush_slow_consumers_closed_total "))
        .expect("slow consumer metric");
    assert_eq!(line, "ringpush_slow_consumers_closed_total 1");
    fast.assert_alive().await;
}

/// A client whose socket is full (the server is waiting to write) and which then half-closes:
/// the server must let the socket go, not keep a writer waiting on it for as long as the peer
/// keeps the TCP connection up.
#[tokio::test]
async fn half_closed_stalled_reader_releases_its_socket() {
    let server = Server::start_with(Config::default().with("max_outbound_bytes", 16 << 20));
    let ch = uniq("stall");
    let mut fast = server.connect().await;
    fast.subscribe(&ch).await;
    let baseline = server.open_fds();
    let mut stalled = Vec::new();
    for _ in 0..4 {
        stalled.push(stalled_subscriber(&server, &ch).await);
    }
    assert!(server.open_fds() >= baseline + 4);
    // ~8 MB each: more than the kernel buffers of a reader that never reads (the send buffer
    // may grow to 4 MiB), less than max_outbound_bytes (16 MiB), so the server keeps the rest
    // queued and waits for writability.
    flood(&server.api(), &mut fast, &ch, 90, "s").await;
    // Half-close each stalled client (FIN, but keep the socket and never read).
    for ws in &stalled {
        let fd = std::os::fd::AsRawFd::as_raw_fd(ws.get_ref());
        // SAFETY: fd is a live socket owned by `ws`, which `stalled` keeps alive below.
        unsafe { libc::shutdown(fd, libc::SHUT_WR) };
    }
    let fds = poll_until(|| async { server.open_fds() }, |n| *n <= baseline).await;
    assert!(
        fds <= baseline,
        "sockets of half-closed stalled readers stay open: {fds} fds, {baseline} before"
    );
    fast.assert_alive().await;
    drop(stalled);
}
