//! Cache channels (cache_miss, last event replay, info=cache, TTL) and
//! pusher_internal:subscription_count events.

mod common;

use std::time::Duration;

use common::*;
use serde_json::{json, Value};

#[tokio::test]
async fn empty_cache_channel_sends_cache_miss_after_succeeded() {
    let server = Server::start();
    let mut c = server.connect().await;
    c.subscribe("cache-empty").await;
    let ev = c.recv().await;
    assert_eq!(ev["event"], "pusher:cache_miss", "{ev}");
    assert_eq!(ev["channel"], "cache-empty", "{ev}");
    c.assert_alive().await;
}

#[tokio::test]
async fn cache_hit_replays_last_triggered_event_on_every_shard() {
    let server = Server::start();
    let api = server.api();
    api.trigger("cache-news", "first", "1").await;
    api.trigger("cache-news", "latest", "{\"v\":2}").await;
    for shard in 0..2 {
        let mut c = server.connect_on_shard(shard).await;
        c.subscribe("cache-news").await;
        assert_eq!(
            c.recv().await,
            channel_event("cache-news", "latest", "{\"v\":2}"),
            "shard {shard}"
        );
        c.assert_alive().await;
    }
}

#[tokio::test]
async fn cache_miss_then_hit_after_trigger() {
    let server = Server::start();
    let api = server.api();
    let mut first = server.connect().await;
    first.subscribe("cache-x").await;
    first.expect_event("pusher:cache_miss").await;
    api.trigger("cache-x", "ev", "payload").await;
    assert_eq!(
        first.recv().await,
        channel_event("cache-x", "ev", "payload")
    );
    let mut second = server.connect().await;
    second.subscribe("cache-x").await;
    assert_eq!(
        second.recv().await,
        channel_event("cache-x", "ev", "payload")
    );
}

#[tokio::test]
async fn private_and_presence_cache_channels() {
    let server = Server::start();
    let app = server.app();
    let api = server.api();
    let mut c = server.connect().await;
    c.subscribe_private(&app, "private-cache-a").await;
    c.expect_event("pusher:cache_miss").await;
    c.subscribe_private(&app, "private-encrypted-cache-b").await;
    c.expect_event("pusher:cache_miss").await;
    c.subscribe_presence(&app, "presence-cache-c", json!("u"), json!({}))
        .await;
    let miss = c.recv().await;
    assert_eq!(miss["event"], "pusher:cache_miss");
    assert_eq!(miss["channel"], "presence-cache-c");
    api.trigger("private-cache-a", "p", "1").await;
    assert_eq!(c.recv().await, channel_event("private-cache-a", "p", "1"));
    let mut d = server.connect().await;
    d.subscribe_private(&app, "private-cache-a").await;
    assert_eq!(d.recv().await, channel_event("private-cache-a", "p", "1"));
}

#[tokio::test]
async fn client_events_are_not_cached() {
    let server = Server::start();
    let app = server.app();
    let mut a = server.connect().await;
    let mut b = server.connect().await;
    a.subscribe_private(&app, "private-cache-client").await;
    a.expect_event("pusher:cache_miss").await;
    b.subscribe_private(&app, "private-cache-client").await;
    b.expect_event("pusher:cache_miss").await;
    a.client_event("private-cache-client", "client-x", json!({}))
        .await;
    b.expect_event("client-x").await;
    let mut late = server.connect().await;
    late.subscribe_private(&app, "private-cache-client").await;
    late.expect_event("pusher:cache_miss").await;
}

#[tokio::test]
async fn channel_info_cache() {
    let server = Server::start();
    let api = server.api();
    let v = api.channel_info("cache-info", "cache").await;
    assert_eq!(v["occupied"], json!(false), "{v}");
    assert!(
        v.get("cache").is_none_or(|c| c.is_null()),
        "empty cache: {v}"
    );
    api.trigger("cache-info", "ev", "cached-data").await;
    let v = api.channel_info("cache-info", "cache").await;
    assert_eq!(v["cache"]["data"], json!("cached-data"), "{v}");
    let ttl = v["cache"]["ttl"]
        .as_u64()
        .unwrap_or_else(|| panic!("ttl integer: {v}"));
    assert!(ttl > 0 && ttl <= 1800, "ttl {ttl}");
}

#[tokio::test]
async fn cache_expires_after_ttl() {
    // 3 s: trigger, connect and subscribe must fit inside it even on a loaded machine.
    let server = Server::start_with(Config::with_app(App::default().with("cache_ttl", 3)));
    let api = server.api();
    api.trigger("cache-short", "ev", "soon-gone").await;
    let mut c = server.connect().await;
    c.subscribe("cache-short").await;
    assert_eq!(
        c.recv().await,
        channel_event("cache-short", "ev", "soon-gone")
    );
    // No event to wait for: the entry simply has to age out.
    tokio::time::sleep(Duration::from_millis(3200)).await;
    let mut d = server.connect().await;
    d.subscribe("cache-short").await;
    d.expect_event("pusher:cache_miss").await;
}

fn counting() -> Server {
    Server::start_with(Config::with_app(
        App::default().with("subscription_count", true),
    ))
}

/// Reads subscription_count events on `channel` until the count equals `n`.
async fn wait_count(c: &mut Client, channel: &str, n: u64) {
    loop {
        let ev = c.expect_event("pusher_internal:subscription_count").await;
        assert_eq!(ev["channel"], channel, "{ev}");
        assert!(ev["data"].is_string(), "data is a string: {ev}");
        let count = data_of(&ev)["subscription_count"]
            .as_u64()
            .unwrap_or_else(|| panic!("count: {ev}"));
        if count == n {
            return;
        }
    }
}

#[tokio::test]
async fn subscription_count_events_across_shards() {
    let server = counting();
    let mut a = server.connect_on_shard(0).await;
    let mut b = server.connect_on_shard(1).await;
    a.subscribe("counted").await;
    wait_count(&mut a, "counted", 1).await;
    b.subscribe("counted").await;
    wait_count(&mut b, "counted", 2).await;
    wait_count(&mut a, "counted", 2).await;
    b.unsubscribe("counted").await;
    wait_count(&mut a, "counted", 1).await;
    let mut c = server.connect_on_shard(1).await;
    c.subscribe("counted").await;
    wait_count(&mut c, "counted", 2).await;
    wait_count(&mut a, "counted", 2).await;
    drop(c);
    wait_count(&mut a, "counted", 1).await;
}

#[tokio::test]
async fn subscription_count_not_sent_for_presence() {
    let server = counting();
    let app = server.app();
    let mut a = server.connect_on_shard(0).await;
    let mut b = server.connect_on_shard(0).await;
    a.subscribe_presence(&app, "presence-nocount", json!("a"), json!({}))
        .await;
    b.subscribe_presence(&app, "presence-nocount", json!("b"), json!({}))
        .await;
    a.expect_event("pusher_internal:member_added").await;
    // Sound: a count would be published by the home shard handling these joins, before the query.
    home_barrier(&server.api(), "presence-nocount", &mut [&mut a, &mut b]).await;
}

#[tokio::test]
async fn subscription_count_off_by_default() {
    let server = Server::start();
    let mut a = server.connect_on_shard(0).await;
    let mut b = server.connect_on_shard(0).await;
    a.subscribe("uncounted").await;
    b.subscribe("uncounted").await;
    // b's pong: shard 0 handled both subscribes and sent their deltas to the home shard.
    b.assert_alive().await;
    // Sound: a count would be published by the home shard handling those deltas, before the query.
    home_barrier(&server.api(), "uncounted", &mut [&mut a, &mut b]).await;
}

/// Reads text frames from `ws` until one satisfies `last`; returns the events before it.
async fn events_until(ws: &mut RawWs, last: impl Fn(&Value) -> bool) -> Vec<Value> {
    let mut before = Vec::new();
    loop {
        let f = ws
            .read_frame(WAIT)
            .await
            .expect("a frame before the timeout");
        if f.opcode != 1 {
            continue;
        }
        let ev: Value = serde_json::from_slice(&f.payload).expect("JSON event");
        if last(&ev) {
            return before;
        }
        before.push(ev);
    }
}

/// Once a connection's unsubscribe has been handled, no frame of that channel reaches it, not
/// even the subscription count its own subscribe caused. Subscribe, unsubscribe and ping go in
/// one write so the shard handles them together; then the channel's home has handled both
/// deltas (a query it answers in order), and a marker on a second channel, queued behind any
/// count it published, closes the window.
#[tokio::test]
async fn no_subscription_count_after_unsubscribe_is_handled() {
    let server = counting();
    let api = server.api();
    for round in 0..12 {
        let mut ws = RawWs::connect(&server).await;
        let marker_channel = uniq("marker-");
        let sub = |c: &str| format!(r#"{{"event":"pusher:subscribe","data":{{"channel":"{c}"}}}}"#);
        ws.send(1, sub(&marker_channel).as_bytes()).await;
        events_until(&mut ws, |e| {
            e["event"] == "pusher_internal:subscription_succeeded"
        })
        .await;
        let channel = uniq("quick-");
        let unsub = format!(r#"{{"event":"pusher:unsubscribe","data":{{"channel":"{channel}"}}}}"#);
        let mut burst = build_frame(0x81, sub(&channel).as_bytes(), true);
        burst.extend(build_frame(0x81, unsub.as_bytes(), true));
        burst.extend(build_frame(
            0x81,
            br#"{"event":"pusher:ping","data":{}}"#,
            true,
        ));
        assert!(ws.write(&burst).await);
        let mut seen = events_until(&mut ws, |e| e["event"] == "pusher:pong").await;
        api.channel_info(&channel, "").await;
        api.trigger(&marker_channel, "marker", "m").await;
        seen.extend(events_until(&mut ws, |e| e["event"] == "marker").await);
        let late: Vec<&Value> = seen
            .iter()
            .filter(|e| {
                e["event"] == "pusher_internal:subscription_count" && e["channel"] == channel
            })
            .collect();
        assert!(
            late.is_empty(),
            "round {round}: {late:?} after the unsubscribe"
        );
    }
}
