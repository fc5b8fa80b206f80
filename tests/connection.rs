//! Connection lifecycle: the handshake frame, protocol versions, connect-time
//! rejections, ping/pong in both forms, server pings and the 4201/handshake timeouts.

mod common;

use std::collections::HashSet;
use std::time::Duration;

use common::*;
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

#[tokio::test]
async fn connection_established_is_first_frame_with_string_data() {
    let server = Server::start();
    let mut ws = server
        .connect_raw("/app/app-key?protocol=7&client=js&version=8.4.0&flash=false")
        .await;
    let ev = recv_event(&mut ws, "connection_established").await;
    assert_eq!(ev["event"], "pusher:connection_established");
    let raw = ev["data"]
        .as_str()
        .expect("data must be a JSON-encoded string");
    let data: Value = serde_json::from_str(raw).expect("data parses");
    let sid = data["socket_id"].as_str().expect("socket_id string");
    assert!(
        is_socket_id(sid),
        "socket_id {sid:?} must match ^\\d+\\.\\d+$"
    );
    assert_eq!(
        data["activity_timeout"],
        json!(120),
        "configured activity_timeout"
    );
}

#[tokio::test]
async fn activity_timeout_follows_config() {
    let server = Server::start_with(Config {
        activity_timeout: 7,
        ..Config::default()
    });
    let c = server.connect().await;
    assert_eq!(c.activity_timeout, 7);
}

#[tokio::test]
async fn protocols_5_6_7_and_missing_are_accepted() {
    let server = Server::start();
    for q in [
        "?protocol=5&client=java-client&version=2.2.0",
        "?protocol=6",
        "?protocol=7",
        "",
        "?client=js",
    ] {
        let mut c = server.connect_path(&format!("/app/app-key{q}")).await;
        c.assert_alive().await;
    }
}

#[tokio::test]
async fn unsupported_protocols_get_4007() {
    let server = Server::start();
    for p in ["3", "abc", "8", "1"] {
        expect_rejected(
            &server,
            &format!("/app/app-key?protocol={p}&client=js"),
            4007,
        )
        .await;
    }
}

#[tokio::test]
async fn unknown_key_gets_4001() {
    let server = Server::start();
    expect_rejected(&server, "/app/no-such-key?protocol=7", 4001).await;
}

#[tokio::test]
async fn disabled_app_gets_4003() {
    let mut cfg = Config::default();
    cfg.apps
        .push(App::new("off-id", "off-key", "off-secret").with("enabled", false));
    let server = Server::start_with(cfg);
    expect_rejected(&server, "/app/off-key?protocol=7", 4003).await;
    // The enabled app on the same server is unaffected.
    let mut c = server.connect().await;
    c.assert_alive().await;
}

#[tokio::test]
async fn upgrade_on_other_path_gets_4005() {
    let server = Server::start();
    expect_rejected(&server, "/nope/app-key?protocol=7", 4005).await;
}

/// Like `Server::connect_on_shard`, for a server with a tiny `max_connections`: a connection
/// closed because it landed on the wrong shard frees its slot only once the server has seen it
/// go, so a 4004 in between means "try again shortly".
async fn connect_on_shard_under_quota(server: &Server, shard: usize) -> Client {
    for _ in 0..400 {
        let mut ws = server.connect_raw("/app/app-key?protocol=7").await;
        let ev = recv_event(&mut ws, "first frame").await;
        if ev["event"] == "pusher:error" {
            assert_eq!(ev["data"]["code"], json!(4004), "{ev}");
            tokio::time::sleep(Duration::from_millis(20)).await;
            continue;
        }
        let data: Value =
            serde_json::from_str(ev["data"].as_str().expect("string data")).expect("json data");
        let socket_id = data["socket_id"].as_str().expect("socket_id").to_string();
        let on = shard_of(&socket_id, server.workers());
        let client = Client {
            ws,
            activity_timeout: data["activity_timeout"].as_u64().expect("activity_timeout"),
            socket_id,
            shard: on,
        };
        if on == shard {
            return client;
        }
        client.close().await;
    }
    panic!("no connection landed on shard {shard}");
}

#[tokio::test]
async fn max_connections_gets_4004_and_frees_slot_on_close() {
    let server = Server::start_with(Config::with_app(App::default().with("max_connections", 2)));
    // Put the two allowed connections on different shards: the limit is per app, not per shard.
    let mut a = connect_on_shard_under_quota(&server, 0).await;
    let mut b = connect_on_shard_under_quota(&server, 1).await;
    a.assert_alive().await;
    b.assert_alive().await;
    expect_rejected(&server, "/app/app-key?protocol=7", 4004).await;
    expect_rejected(&server, "/app/app-key?protocol=7", 4004).await;
    b.close().await;
    // The freed slot becomes available again (the count is shared between shards,
    // so allow it a moment to propagate).
    let mut ok = None;
    for _ in 0..40 {
        let mut ws = server.connect_raw("/app/app-key?protocol=7").await;
        let ev = recv_event(&mut ws, "first frame").await;
        if ev["event"] == "pusher:connection_established" {
            ok = Some(ws);
            break;
        }
        assert_eq!(ev["data"]["code"], json!(4004), "{ev}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        ok.is_some(),
        "a slot must free up after a connection closed"
    );
    a.assert_alive().await;
}

#[tokio::test]
async fn socket_ids_are_unique_and_spread_over_shards() {
    let server = Server::start();
    let mut ids = HashSet::new();
    let mut shards = HashSet::new();
    let mut keep = Vec::new();
    for _ in 0..40 {
        let c = server.connect().await;
        assert!(
            ids.insert(c.socket_id.clone()),
            "duplicate socket id {}",
            c.socket_id
        );
        shards.insert(c.shard);
        keep.push(c);
    }
    assert_eq!(shards.len(), 2, "40 connections should land on both shards");
}

#[tokio::test]
async fn pusher_ping_gets_pusher_pong() {
    let server = Server::start();
    let mut c = server.connect().await;
    c.send(json!({"event":"pusher:ping","data":{}})).await;
    let ev = c.recv().await;
    assert_eq!(ev, json!({"event":"pusher:pong","data":"{}"}));
    // Also without a data member.
    c.send(json!({"event":"pusher:ping"})).await;
    assert_eq!(c.recv().await["event"], "pusher:pong");
}

#[tokio::test]
async fn websocket_ping_frame_gets_pong_frame() {
    let server = Server::start();
    let mut c = server.connect().await;
    c.send_msg(Message::Ping(bytes::Bytes::from_static(b"are-you-there")))
        .await;
    match c.next_frame(WAIT).await {
        Some(Frame::Pong(p)) => assert_eq!(p, b"are-you-there"),
        other => panic!("expected pong frame, got {other:?}"),
    }
    c.assert_alive().await;
}

#[tokio::test]
async fn client_close_is_echoed() {
    let server = Server::start();
    let mut c = server.connect().await;
    c.send_msg(Message::Close(Some(
        tokio_tungstenite::tungstenite::protocol::CloseFrame {
            code: 1000.into(),
            reason: "done".into(),
        },
    )))
    .await;
    match c.next_frame(WAIT).await {
        Some(Frame::Close(code, _)) => assert_eq!(code, Some(1000)),
        other => panic!("expected close echo, got {other:?}"),
    }
}

fn short_timeouts() -> Config {
    Config {
        activity_timeout: 1,
        pong_timeout: 1,
        ..Config::default()
    }
}

/// Pings every second, but gives the (test) client 3 s to answer one.
fn short_pings() -> Config {
    Config {
        pong_timeout: 3,
        ..short_timeouts()
    }
}

#[tokio::test]
async fn silent_client_is_pinged_then_closed_4201() {
    let server = Server::start_with(short_timeouts());
    let mut c = server.connect().await;
    assert_eq!(c.activity_timeout, 1);
    let ping = tokio::time::timeout(Duration::from_secs(4), c.recv())
        .await
        .expect("server ping after activity_timeout");
    assert_eq!(ping["event"], "pusher:ping", "{ping}");
    assert_eq!(ping["data"], json!("{}"), "{ping}");
    // Do not answer: expect 4201 after pong_timeout.
    let ev = tokio::time::timeout(Duration::from_secs(4), c.recv())
        .await
        .expect("pusher:error 4201 after pong_timeout");
    assert_eq!(ev["event"], "pusher:error", "{ev}");
    assert_eq!(ev["data"]["code"], json!(4201), "{ev}");
    assert_eq!(c.expect_close().await, Some(4201));
}

#[tokio::test]
async fn answering_server_pings_keeps_connection_open() {
    let server = Server::start_with(short_pings());
    let mut c = server.connect().await;
    for _ in 0..3 {
        let ping = tokio::time::timeout(Duration::from_secs(4), c.recv())
            .await
            .expect("server ping");
        assert_eq!(ping["event"], "pusher:ping", "{ping}");
        c.send(json!({"event":"pusher:pong","data":{}})).await;
    }
    c.assert_alive().await;
}

#[tokio::test]
async fn any_client_message_counts_as_activity() {
    let server = Server::start_with(short_pings());
    let mut c = server.connect().await;
    let ping = tokio::time::timeout(Duration::from_secs(4), c.recv())
        .await
        .expect("server ping");
    assert_eq!(ping["event"], "pusher:ping");
    // A subscribe instead of a pong also proves liveness.
    c.subscribe("alive-channel").await;
    let next = tokio::time::timeout(Duration::from_secs(4), c.recv())
        .await
        .expect("next server ping");
    assert_eq!(
        next["event"], "pusher:ping",
        "connection must survive: {next}"
    );
}

#[tokio::test]
async fn handshake_timeout_closes_half_finished_upgrade() {
    let server = Server::start_with(Config {
        handshake_timeout: 1,
        ..Config::default()
    });

    // Headers never finished.
    let mut partial = Raw::connect(server.addr).await;
    assert!(partial.write(b"GET /app/app-key?protocol=7 HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n").await);
    // A connection that sends nothing at all.
    let mut idle = Raw::connect(server.addr).await;

    let (_, eof) = partial.read_to_eof(Duration::from_secs(5)).await;
    assert!(
        eof,
        "half-finished upgrade must be closed after handshake_timeout"
    );
    let (_, eof) = idle.read_to_eof(Duration::from_secs(5)).await;
    assert!(
        eof,
        "idle TCP connection must be closed after handshake_timeout"
    );

    // Completed WebSocket connections are not subject to the handshake timeout. Timed, not a
    // barrier: the close would come from c's own 1 s deadline, so only waiting past it shows
    // that none is armed.
    let mut c = server.connect().await;
    if let Some(f) = c.next_frame(Duration::from_millis(1500)).await {
        panic!("unexpected {f:?}");
    }
    c.assert_alive().await;
}

async fn connect_with_origin(server: &Server, origin: &str) -> WsStream {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let mut req = server
        .ws_url("app-key")
        .into_client_request()
        .expect("request");
    req.headers_mut()
        .insert("Origin", origin.parse().expect("header value"));
    let (ws, _) = tokio::time::timeout(
        Duration::from_secs(5),
        tokio_tungstenite::connect_async(req),
    )
    .await
    .expect("connect in time")
    .expect("handshake");
    ws
}

#[tokio::test]
async fn origin_allow_list_refuses_other_origins_with_4009() {
    let app = App::default().with(
        "allowed_origins",
        r#"["https://app.example.com", "*.example.org"]"#,
    );
    let server = Server::start_with(Config::with_app(app));
    let mut ok = connect_with_origin(&server, "https://app.example.com").await;
    let ev = recv_event(&mut ok, "connection_established").await;
    assert_eq!(ev["event"], "pusher:connection_established");
    let mut sub = connect_with_origin(&server, "https://eu.example.org").await;
    let ev = recv_event(&mut sub, "connection_established").await;
    assert_eq!(ev["event"], "pusher:connection_established");
    let mut bad = connect_with_origin(&server, "https://evil.test").await;
    let ev = recv_event(&mut bad, "pusher:error").await;
    assert_eq!(ev["event"], "pusher:error", "{ev}");
    assert_eq!(ev["data"]["code"], json!(4009), "{ev}");
    assert_eq!(recv_close(&mut bad, "origin refusal").await, Some(4009));
}
