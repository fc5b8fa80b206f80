//! Client events: delivery to other subscribers only, presence user_id injection,
//! rejection rules, the per-connection rate limit and cross-shard delivery.

mod common;

use common::*;
use serde_json::json;

#[tokio::test]
async fn private_client_event_reaches_others_not_sender() {
    let server = Server::start();
    let app = server.app();
    let mut a = server.connect_on_shard(0).await;
    let mut b = server.connect_on_shard(0).await;
    a.subscribe_private(&app, "private-chat").await;
    b.subscribe_private(&app, "private-chat").await;
    a.client_event(
        "private-chat",
        "client-typing",
        json!({"user":"x","n":[1,2]}),
    )
    .await;
    let ev = b.recv().await;
    assert_eq!(
        ev,
        json!({"event":"client-typing","channel":"private-chat","data":{"user":"x","n":[1,2]}}),
        "data forwarded unchanged, no user_id on private channels"
    );
    // Same shard: an echo would be queued before the pong.
    a.assert_alive().await;
    // String data is forwarded as a string.
    b.client_event("private-chat", "client-s", json!("text"))
        .await;
    assert_eq!(
        a.recv().await,
        json!({"event":"client-s","channel":"private-chat","data":"text"})
    );
    b.assert_alive().await;
}

#[tokio::test]
async fn client_event_crosses_shards() {
    let server = Server::start();
    let app = server.app();
    let mut a = server.connect_on_shard(0).await;
    let mut b = server.connect_on_shard(1).await;
    let mut c = server.connect_on_shard(1).await;
    for s in [&mut a, &mut b, &mut c] {
        s.subscribe_private(&app, "private-x").await;
    }
    for i in 0..5 {
        a.client_event("private-x", "client-n", json!({"i":i}))
            .await;
    }
    for s in [&mut b, &mut c] {
        for i in 0..5 {
            let ev = s.recv().await;
            assert_eq!(ev["data"], json!({"i":i}), "order kept across shards: {ev}");
        }
    }
    b.client_event("private-x", "client-back", json!({})).await;
    assert_eq!(a.recv().await["event"], "client-back");
    assert_eq!(c.recv().await["event"], "client-back");
}

#[tokio::test]
async fn presence_client_event_carries_sender_user_id() {
    let server = Server::start();
    let app = server.app();
    let ch = "presence-talk";
    let mut a = server.connect_on_shard(0).await;
    let mut b = server.connect_on_shard(1).await;
    let mut a2 = server.connect_on_shard(1).await;
    a.subscribe_presence(&app, ch, json!(42), json!({})).await;
    b.subscribe_presence(&app, ch, json!("bee"), json!({}))
        .await;
    a.expect_event("pusher_internal:member_added").await;
    a2.subscribe_presence(&app, ch, json!(42), json!({})).await;
    // A client-supplied user_id is overwritten with the authenticated one.
    a.send(json!({"event":"client-hi","channel":ch,"data":{"m":1},"user_id":"evil"}))
        .await;
    let ev = b.recv().await;
    assert_eq!(
        ev,
        json!({"event":"client-hi","channel":ch,"data":{"m":1},"user_id":42})
    );
    // The sender's other tab is a different connection and receives it too.
    let ev = a2.recv().await;
    assert_eq!(ev["user_id"], json!(42), "{ev}");
    b.client_event(ch, "client-back", json!(null)).await;
    let ev = a.recv().await;
    assert_eq!(ev["user_id"], json!("bee"), "{ev}");
    assert_eq!(a2.recv().await["user_id"], json!("bee"));
}

#[tokio::test]
async fn client_event_on_public_channel_rejected() {
    let server = Server::start();
    let api = server.api();
    let mut a = server.connect_on_shard(0).await;
    let mut b = server.connect_on_shard(0).await;
    a.subscribe("public-room").await;
    b.subscribe("public-room").await;
    a.client_event("public-room", "client-nope", json!({}))
        .await;
    let (code, _) = a.expect_error().await;
    assert!(
        code.is_null() || code == json!(4301) || code == json!(4009),
        "code {code}"
    );
    a.assert_alive().await;
    // b must see the marker first, not the rejected client event.
    api.trigger("public-room", "marker", "m").await;
    assert_eq!(b.recv().await, channel_event("public-room", "marker", "m"));
}

#[tokio::test]
async fn client_event_without_subscription_rejected() {
    let server = Server::start();
    let app = server.app();
    let api = server.api();
    let mut a = server.connect_on_shard(0).await;
    let mut b = server.connect_on_shard(0).await;
    b.subscribe_private(&app, "private-members").await;
    a.client_event("private-members", "client-sneak", json!({}))
        .await;
    a.expect_soft_error().await;
    a.assert_alive().await;
    api.trigger("private-members", "marker", "m").await;
    assert_eq!(
        b.recv().await,
        channel_event("private-members", "marker", "m")
    );
}

#[tokio::test]
async fn non_client_prefixed_event_not_forwarded() {
    let server = Server::start();
    let app = server.app();
    let api = server.api();
    let mut a = server.connect_on_shard(0).await;
    let mut b = server.connect_on_shard(0).await;
    a.subscribe_private(&app, "private-p").await;
    b.subscribe_private(&app, "private-p").await;
    a.client_event("private-p", "typing", json!({})).await;
    // Either an error or nothing; never a delivery.
    for ev in a.ping_sync().await {
        assert_eq!(ev["event"], "pusher:error", "{ev}");
    }
    api.trigger("private-p", "marker", "m").await;
    assert_eq!(b.recv().await, channel_event("private-p", "marker", "m"));
}

#[tokio::test]
async fn client_events_disabled_for_app() {
    let server = Server::start_with(Config::with_app(
        App::default().with("client_events", false),
    ));
    let app = server.app();
    let api = server.api();
    let mut a = server.connect_on_shard(0).await;
    let mut b = server.connect_on_shard(0).await;
    a.subscribe_private(&app, "private-off").await;
    b.subscribe_private(&app, "private-off").await;
    a.client_event("private-off", "client-x", json!({})).await;
    a.expect_error_code(json!(null)).await;
    a.assert_alive().await;
    api.trigger("private-off", "marker", "m").await;
    assert_eq!(b.recv().await, channel_event("private-off", "marker", "m"));
}

#[tokio::test]
async fn eleventh_event_within_a_second_gets_4301_and_connection_kept() {
    let server = Server::start();
    let app = server.app();
    let api = server.api();
    let mut a = server.connect_on_shard(0).await;
    let mut b = server.connect_on_shard(1).await;
    a.subscribe_private(&app, "private-rate").await;
    b.subscribe_private(&app, "private-rate").await;
    for i in 0..11 {
        a.client_event("private-rate", "client-burst", json!({"i":i}))
            .await;
    }
    a.expect_error_code(json!(4301)).await;
    a.assert_alive().await;
    for i in 0..10 {
        let ev = b.recv().await;
        assert_eq!(ev["data"], json!({"i":i}), "{ev}");
    }
    // The 11th was dropped: b's next event is the marker.
    api.trigger("private-rate", "marker", "m").await;
    assert_eq!(b.recv().await, channel_event("private-rate", "marker", "m"));
}

#[tokio::test]
async fn client_event_rate_follows_config() {
    let server = Server::start_with(Config::with_app(
        App::default().with("client_event_rate", 3),
    ));
    let app = server.app();
    let mut a = server.connect().await;
    a.subscribe_private(&app, "private-slow").await;
    for _ in 0..3 {
        a.client_event("private-slow", "client-e", json!({})).await;
    }
    a.assert_alive().await;
    a.client_event("private-slow", "client-e", json!({})).await;
    a.expect_error_code(json!(4301)).await;
    a.assert_alive().await;
}

#[tokio::test]
async fn client_events_on_private_encrypted_are_forwarded() {
    let server = Server::start();
    let app = server.app();
    let mut a = server.connect().await;
    let mut b = server.connect().await;
    a.subscribe_private(&app, "private-encrypted-c").await;
    b.subscribe_private(&app, "private-encrypted-c").await;
    let data = json!({"nonce":"n","ciphertext":"c"});
    a.client_event("private-encrypted-c", "client-enc", data.clone())
        .await;
    let ev = b.recv().await;
    assert_eq!(ev["data"], data, "{ev}");
}
