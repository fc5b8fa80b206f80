//! The per-connection message budget (token bucket): a burst above it is answered with
//! `pusher:error` 4301 and dropped, the connection stays open, and the budget refills.

mod common;

use std::time::{Duration, Instant};

use common::*;
use serde_json::json;

#[tokio::test]
async fn message_flood_is_limited_and_the_connection_recovers() {
    let config = Config::default()
        .with("max_messages_per_second", 5)
        .with("max_message_burst", 10);
    let server = Server::start_with(config);
    let mut c = server.connect().await;
    let start = Instant::now();
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
    // The bucket refills at 5 per second while the flood is read, so a slow machine may let a
    // token or two more through; never fewer than the burst, and never all 15 within a second.
    let elapsed = start.elapsed().as_secs_f64();
    let refilled = (elapsed * 5.0).ceil() as usize;
    assert!(
        (10..=10 + refilled).contains(&pongs),
        "the burst of 10 passes (+{refilled} refilled in {elapsed:.2} s): {pongs} pongs"
    );
    if elapsed < 0.9 {
        assert!(limited > 0, "a flood above the budget is limited");
    }
    assert_eq!(pongs + limited, 15);
    // Refilled at 5 per second: after a moment the connection is served again.
    tokio::time::sleep(Duration::from_millis(600)).await;
    c.send(json!({"event":"pusher:ping","data":{}})).await;
    c.expect_event("pusher:pong").await;
}
