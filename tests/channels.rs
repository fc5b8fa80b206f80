//! Public channels: subscribe/unsubscribe, delivery, channel-name validation and
//! malformed client messages (answered with pusher:error, connection kept).

mod common;

use common::*;
use serde_json::json;

#[tokio::test]
async fn public_subscribe_gets_exact_succeeded_frame() {
    let server = Server::start();
    let mut c = server.connect().await;
    c.send(json!({"event":"pusher:subscribe","data":{"auth":"","channel":"my-channel"}}))
        .await;
    let ev = c.recv().await;
    assert_eq!(
        ev,
        json!({"event":"pusher_internal:subscription_succeeded","channel":"my-channel","data":"{}"})
    );
}

#[tokio::test]
async fn subscribe_without_auth_field_is_fine_for_public() {
    let server = Server::start();
    let mut c = server.connect().await;
    c.send_subscribe("no-auth-field", None, None).await;
    c.expect_succeeded("no-auth-field").await;
}

#[tokio::test]
async fn subscribe_data_as_json_string_is_accepted() {
    // Protocol doc §2: a server SHOULD accept `data` as a JSON-encoded string too.
    let server = Server::start();
    let mut c = server.connect().await;
    let data = json!({"channel":"stringly"}).to_string();
    c.send(json!({"event":"pusher:subscribe","data":data}))
        .await;
    c.expect_succeeded("stringly").await;
}

#[tokio::test]
async fn trigger_reaches_subscriber_with_exact_shape() {
    let server = Server::start();
    let api = server.api();
    let mut c = server.connect().await;
    c.subscribe("news").await;
    api.trigger("news", "breaking", r#"{"headline":"hi"}"#)
        .await;
    assert_eq!(
        c.recv().await,
        channel_event("news", "breaking", r#"{"headline":"hi"}"#)
    );
    // Non-JSON string data passes through untouched.
    api.trigger("news", "plain", "just text").await;
    assert_eq!(c.recv().await, channel_event("news", "plain", "just text"));
}

#[tokio::test]
async fn unsubscribe_has_no_reply_and_stops_delivery() {
    let server = Server::start();
    let api = server.api();
    let mut a = server.connect_on_shard(0).await;
    let mut b = server.connect_on_shard(0).await;
    a.subscribe("room").await;
    b.subscribe("room").await;
    a.unsubscribe("room").await;
    // No reply to unsubscribe: the next frame is the pong.
    a.assert_alive().await;
    api.trigger("room", "after", "1").await;
    assert_eq!(b.recv().await, channel_event("room", "after", "1"));
    // `a` shares b's shard, so a delivery to it would already be queued before the pong.
    a.assert_alive().await;
    // Resubscribing works again.
    a.subscribe("room").await;
    api.trigger("room", "again", "2").await;
    assert_eq!(a.recv().await, channel_event("room", "again", "2"));
    assert_eq!(b.recv().await, channel_event("room", "again", "2"));
}

#[tokio::test]
async fn unsubscribe_from_unknown_channel_keeps_connection() {
    let server = Server::start();
    let mut c = server.connect().await;
    c.unsubscribe("never-subscribed").await;
    // An error is allowed here (real Pusher sends one); the connection must stay.
    let seen = c.ping_sync().await;
    for ev in seen {
        assert_eq!(ev["event"], "pusher:error", "{ev}");
    }
    c.assert_alive().await;
}

#[tokio::test]
async fn several_channels_on_one_connection() {
    let server = Server::start();
    let api = server.api();
    let mut c = server.connect().await;
    for ch in ["multi-a", "multi-b", "multi-c"] {
        c.subscribe(ch).await;
    }
    let r = api
        .events(&json!({"name":"fan","channels":["multi-a","multi-b","multi-c"],"data":"x"}))
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let mut got: Vec<String> = Vec::new();
    for _ in 0..3 {
        let ev = c.recv().await;
        assert_eq!(ev["event"], "fan");
        assert_eq!(ev["data"], "x");
        got.push(ev["channel"].as_str().unwrap().to_string());
    }
    got.sort();
    assert_eq!(got, vec!["multi-a", "multi-b", "multi-c"]);
    c.assert_alive().await;
}

#[tokio::test]
async fn allowed_punctuation_and_200_char_names_are_accepted() {
    let server = Server::start();
    let mut c = server.connect().await;
    c.subscribe("a-b_c=d@e,f.g;h").await;
    c.subscribe("chat.51").await;
    let long = "x".repeat(200);
    c.subscribe(&long).await;
    let api = server.api();
    api.trigger("a-b_c=d@e,f.g;h", "ev", "d").await;
    assert_eq!(c.recv().await, channel_event("a-b_c=d@e,f.g;h", "ev", "d"));
}

#[tokio::test]
async fn invalid_channel_names_are_rejected_and_connection_kept() {
    let server = Server::start();
    let mut c = server.connect().await;
    let too_long = "y".repeat(201);
    for name in [
        "bad$name",
        "has space",
        "",
        "slash/name",
        "ümlaut",
        &too_long,
        "#foo",
        "#server-to-user-1",
    ] {
        c.send_subscribe(name, Some(""), None).await;
        let msg = c.expect_soft_error().await;
        assert!(!msg.is_empty(), "error message for {name:?}");
        c.assert_alive().await;
    }
    // Still usable afterwards.
    c.subscribe("fine").await;
}

#[tokio::test]
async fn subscribe_without_channel_is_an_error() {
    let server = Server::start();
    let mut c = server.connect().await;
    c.send(json!({"event":"pusher:subscribe","data":{}})).await;
    c.expect_soft_error().await;
    c.send(json!({"event":"pusher:subscribe","data":{"channel":5}}))
        .await;
    c.expect_soft_error().await;
    c.send(json!({"event":"pusher:subscribe"})).await;
    c.expect_soft_error().await;
    c.assert_alive().await;
}

#[tokio::test]
async fn malformed_json_gets_error_code_null_and_connection_kept() {
    let server = Server::start();
    let api = server.api();
    let mut c = server.connect().await;
    c.subscribe("still-here").await;
    for bad in [
        "not json",
        "{",
        "[]",
        "[1,2]",
        "42",
        "\"str\"",
        "null",
        r#"{"event":5}"#,
        r#"{"data":{}}"#,
        "",
    ] {
        c.send_text(bad).await;
        c.expect_error_code(json!(null)).await;
    }
    c.assert_alive().await;
    api.trigger("still-here", "ok", "1").await;
    assert_eq!(c.recv().await, channel_event("still-here", "ok", "1"));
}

#[tokio::test]
async fn unknown_pusher_event_gets_error_code_null() {
    let server = Server::start();
    let mut c = server.connect().await;
    c.send(json!({"event":"pusher:frobnicate","data":{}})).await;
    c.expect_error_code(json!(null)).await;
    c.assert_alive().await;
}
