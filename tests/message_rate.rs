//! The per-connection message budget (token bucket): a burst above it is answered with
//! `pusher:error` 4301 and dropped, the connection stays open, and the budget refills.

mod common;

use std::time::Duration;

use common::*;
use serde_json::json;

#[tokio::test]
async fn message_flood_is_limited_and_the_connection_recovers() {
    let config = Config::default()
        .with("max_messages_per_second", 5)
        .with("max_message_burst", 10);
    let server = Server::start_with(config);
    let mut c = server.connect().await;
    for _ in 0..15 {
        c.send(json!({"event":"pusher:ping","data":{}})).await;
    }
    let (mut pongs, mut limited) = (0, 0);
    while pongs + limited < 15 {
        let ev = c.recv().await;
        match ev["event"].as_str() {
            Some("pusher:pong") => pongs += 1,
            Some("pusher:error") => {
                assert_eq!(ev["data"]["code"], json!(4301), "{ev}");
                limited += 1;
            }
            other => panic!("unexpected {other:?}: {ev}"),
        }
    }
    assert!(
        (10..=11).contains(&pongs),
        "the burst of 10 passes: {pongs} pongs"
    );
    assert_eq!(pongs + limited, 15);
    // Refilled at 5 per second: after a moment the connection is served again.
    tokio::time::sleep(Duration::from_millis(600)).await;
    c.send(json!({"event":"pusher:ping","data":{}})).await;
    c.expect_event("pusher:pong").await;
}
