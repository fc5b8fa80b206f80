//! Graceful shutdown: SIGTERM/SIGINT send pusher:error 4200 + close 4200 to every
//! connected socket on every shard and the process exits 0.

mod common;

use std::time::Duration;

use common::*;
use serde_json::json;

async fn shutdown_with(sig: &str) {
    let mut server = Server::start();
    let mut spread = server.connect_spread(2).await;
    for shard in spread.iter_mut() {
        for c in shard.iter_mut() {
            c.subscribe("before-shutdown").await;
        }
    }
    server.signal(sig);
    for shard in spread.iter_mut() {
        for c in shard.iter_mut() {
            let ev = c.recv().await;
            assert_eq!(
                ev["event"], "pusher:error",
                "socket {} got {ev}",
                c.socket_id
            );
            assert_eq!(ev["data"]["code"], json!(4200), "{ev}");
            assert_eq!(c.expect_close().await, Some(4200), "socket {}", c.socket_id);
        }
    }
    let grace = server.config.shutdown_grace;
    let status = server
        .wait_exit(Duration::from_secs(grace + 3))
        .await
        .expect("process exits after SIGTERM within shutdown_grace");
    assert_eq!(status.code(), Some(0), "exit status {status:?}");
}

#[tokio::test]
async fn sigterm_closes_clients_4200_and_exits_0() {
    shutdown_with("TERM").await;
}

#[tokio::test]
async fn sigint_closes_clients_4200_and_exits_0() {
    shutdown_with("INT").await;
}

#[tokio::test]
async fn sigterm_without_clients_exits_0_quickly() {
    let mut server = Server::start();
    server.signal("TERM");
    let status = server
        .wait_exit(Duration::from_secs(3))
        .await
        .expect("idle server exits promptly");
    assert_eq!(status.code(), Some(0));
}

#[tokio::test]
async fn sigterm_with_unresponsive_client_still_exits_within_grace() {
    let mut server = Server::start_with(Config {
        shutdown_grace: 2,
        ..Config::default()
    });
    // A raw client that never reads, with a half-sent HTTP request beside it.
    let _silent = RawWs::connect(&server).await;
    let mut half = Raw::connect(server.addr).await;
    half.write(b"GET /up HTTP/1.1\r\n").await;
    let mut normal = server.connect().await;
    server.signal("TERM");
    normal.expect_error_and_close(4200).await;
    let status = server
        .wait_exit(Duration::from_secs(2 + 3))
        .await
        .expect("exit within shutdown_grace even with stuck peers");
    assert_eq!(status.code(), Some(0));
}
