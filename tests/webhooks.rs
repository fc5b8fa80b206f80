//! Webhooks: event shapes, signing headers, delay/suppression of channel_vacated,
//! presence and client-event hooks, filters, custom headers and retries.

mod common;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::*;
use serde_json::{json, Value};

fn hooked_app(url: &str, extra_hook_lines: &str) -> App {
    App::default().with("webhook_delay", 1).webhook(&format!(
        "url = {}\n{extra_hook_lines}",
        serde_json::to_string(url).unwrap()
    ))
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

fn check_signed(hook: &Hook, app: &App) {
    assert_eq!(hook.path, "/hook");
    assert_eq!(
        hook.header("content-type"),
        Some("application/json"),
        "exact content type"
    );
    assert_eq!(hook.header("x-pusher-key"), Some(app.key.as_str()));
    let raw = String::from_utf8(hook.raw.clone()).expect("utf-8 body");
    assert_eq!(
        hook.header("x-pusher-signature"),
        Some(hmac_hex(&app.secret, &raw).as_str()),
        "signature over the raw body"
    );
    let t = hook.body["time_ms"].as_i64().expect("time_ms integer");
    assert!((now_ms() - t).abs() < 10_000, "time_ms {t} is current");
}

#[tokio::test]
async fn channel_occupied_and_vacated_are_signed() {
    let mut recv = WebhookReceiver::start().await;
    let app = hooked_app(&recv.url(), "");
    let server = Server::start_with(Config::with_app(app.clone()));
    let mut c = server.connect().await;
    c.subscribe("hooked").await;
    let (hook, ev) = recv.wait_event("channel_occupied", "hooked").await;
    assert_eq!(ev, json!({"name":"channel_occupied","channel":"hooked"}));
    assert_eq!(
        hook.body["events"].as_array().unwrap().len(),
        1,
        "unbatched: one event per body"
    );
    check_signed(&hook, &app);
    c.unsubscribe("hooked").await;
    let (hook, ev) = recv.wait_event("channel_vacated", "hooked").await;
    assert_eq!(ev, json!({"name":"channel_vacated","channel":"hooked"}));
    check_signed(&hook, &app);
}

#[tokio::test]
async fn occupied_once_for_subscribers_on_both_shards() {
    let mut recv = WebhookReceiver::start().await;
    let server = Server::start_with(Config::with_app(hooked_app(&recv.url(), "")));
    let mut a = server.connect_on_shard(0).await;
    let mut b = server.connect_on_shard(1).await;
    a.subscribe("two-shards").await;
    recv.wait_event("channel_occupied", "two-shards").await;
    b.subscribe("two-shards").await;
    a.unsubscribe("two-shards").await;
    a.assert_alive().await;
    b.unsubscribe("two-shards").await;
    recv.wait_event("channel_vacated", "two-shards").await;
    // Timed: requests are concurrent and unordered, so no later webhook is a barrier; 1.5 s
    // is longer than the 1 s webhook_delay an extra vacated would wait out.
    let rest = recv.collect(Duration::from_millis(1500)).await;
    assert!(
        !rest.iter().any(|e| e["channel"] == "two-shards"),
        "exactly one occupied and one vacated: extra {rest:?}"
    );
}

#[tokio::test]
async fn quick_return_suppresses_vacated() {
    let mut recv = WebhookReceiver::start().await;
    let server = Server::start_with(Config::with_app(hooked_app(&recv.url(), "")));
    let mut c = server.connect().await;
    c.subscribe("flappy").await;
    recv.wait_event("channel_occupied", "flappy").await;
    c.unsubscribe("flappy").await;
    c.subscribe("flappy").await;
    // webhook_delay is 1 s: nothing about "flappy" may arrive in the next 2.5 s. Timed: the
    // vacated would be sent by the side-car's delay timer, and requests are unordered, so no
    // later webhook is a barrier (and leaving again at once would replace a pending vacated
    // instead of adding a second one).
    let evs = recv.collect(Duration::from_millis(2500)).await;
    assert!(
        !evs.iter()
            .any(|e| e["channel"] == "flappy" && e["name"] == "channel_vacated"),
        "vacated must be suppressed by a quick return: {evs:?}"
    );
    c.unsubscribe("flappy").await;
    recv.wait_event("channel_vacated", "flappy").await;
}

#[tokio::test]
async fn member_added_and_removed_hooks() {
    let mut recv = WebhookReceiver::start().await;
    let server = Server::start_with(Config::with_app(hooked_app(&recv.url(), "")));
    let app = server.app();
    let mut a = server.connect_on_shard(0).await;
    let mut a2 = server.connect_on_shard(1).await;
    a.subscribe_presence(&app, "presence-hooks", json!("u1"), json!({}))
        .await;
    let (_, ev) = recv.wait_event("member_added", "presence-hooks").await;
    assert_eq!(
        ev,
        json!({"name":"member_added","channel":"presence-hooks","user_id":"u1"})
    );
    a2.subscribe_presence(&app, "presence-hooks", json!("u1"), json!({}))
        .await;
    a.unsubscribe("presence-hooks").await;
    a.assert_alive().await;
    a2.unsubscribe("presence-hooks").await;
    let (_, ev) = recv.wait_event("member_removed", "presence-hooks").await;
    assert_eq!(
        ev,
        json!({"name":"member_removed","channel":"presence-hooks","user_id":"u1"})
    );
    // Timed: requests are concurrent and unordered, so no later webhook is a barrier; 1.5 s
    // is longer than the 1 s webhook_delay an extra member_removed would wait out.
    let rest = recv.collect(Duration::from_millis(1500)).await;
    let members: Vec<&Value> = rest
        .iter()
        .filter(|e| e["name"] == "member_added" || e["name"] == "member_removed")
        .collect();
    assert!(
        members.is_empty(),
        "a second tab adds no member hooks: {members:?}"
    );
}

#[tokio::test]
async fn client_event_hook_has_socket_id_and_presence_user_id() {
    let mut recv = WebhookReceiver::start().await;
    let server = Server::start_with(Config::with_app(hooked_app(&recv.url(), "")));
    let app = server.app();
    let mut a = server.connect().await;
    let mut b = server.connect().await;
    a.subscribe_private(&app, "private-ce").await;
    b.subscribe_private(&app, "private-ce").await;
    a.client_event("private-ce", "client-ping", json!({"x":1}))
        .await;
    b.expect_event("client-ping").await;
    let (_, ev) = recv.wait_event("client_event", "private-ce").await;
    assert_eq!(ev["event"], "client-ping", "{ev}");
    assert_eq!(ev["socket_id"], json!(a.socket_id), "{ev}");
    assert!(
        ev.get("user_id").is_none(),
        "no user_id on private channels: {ev}"
    );
    let d = &ev["data"];
    assert!(
        *d == json!({"x":1}) || *d == json!(json!({"x":1}).to_string()),
        "{ev}"
    );

    a.subscribe_presence(&app, "presence-ce", json!("pa"), json!({}))
        .await;
    b.subscribe_presence(&app, "presence-ce", json!("pb"), json!({}))
        .await;
    a.expect_event("pusher_internal:member_added").await;
    b.client_event("presence-ce", "client-hey", json!("s"))
        .await;
    a.expect_event("client-hey").await;
    let (_, ev) = recv.wait_event("client_event", "presence-ce").await;
    assert_eq!(ev["socket_id"], json!(b.socket_id), "{ev}");
    assert_eq!(id_str(&ev["user_id"]), "pb", "{ev}");
}

#[tokio::test]
async fn cache_miss_hook() {
    let mut recv = WebhookReceiver::start().await;
    let server = Server::start_with(Config::with_app(hooked_app(&recv.url(), "")));
    let mut c = server.connect().await;
    c.subscribe("cache-hooked").await;
    c.expect_event("pusher:cache_miss").await;
    let (_, ev) = recv.wait_event("cache_miss", "cache-hooked").await;
    assert_eq!(ev, json!({"name":"cache_miss","channel":"cache-hooked"}));
}

#[tokio::test]
async fn filters_event_types_and_custom_headers() {
    let mut recv = WebhookReceiver::start().await;
    let lines = "event_types = [\"channel_occupied\"]\nfilter = { prefix = \"presence-\", suffix = \"\" }\nheaders = { \"X-Extra\" = \"1\" }";
    let server = Server::start_with(Config::with_app(hooked_app(&recv.url(), lines)));
    let app = server.app();
    let mut c = server.connect().await;
    // Neither of these matches the prefix filter.
    c.subscribe("plain-filtered").await;
    c.subscribe_private(&app, "private-filtered").await;
    // This one matches; its member_added is not in event_types.
    c.subscribe_presence(&app, "presence-filtered", json!("f"), json!({}))
        .await;
    let (hook, ev) = recv
        .wait_event("channel_occupied", "presence-filtered")
        .await;
    assert_eq!(hook.header("x-extra"), Some("1"), "custom header");
    assert_eq!(
        ev,
        json!({"name":"channel_occupied","channel":"presence-filtered"})
    );
    c.unsubscribe("presence-filtered").await;
    // Timed: a hook that slipped through a filter would be a request of its own, unordered
    // against any later one; 2.5 s covers the 1 s webhook_delay of the vacated and removed.
    let rest = recv.collect(Duration::from_millis(2500)).await;
    assert!(rest.is_empty(), "filtered out: {rest:?}");
}

#[tokio::test]
async fn failed_delivery_is_retried() {
    // 500 to the first request, 200 after.
    let mut recv =
        WebhookReceiver::replying(|n| Reply::Status(if n == 0 { 500 } else { 200 })).await;
    let server = Server::start_with(Config::with_app(hooked_app(&recv.url(), "")));
    let mut c = server.connect().await;
    c.subscribe("retry-me").await;
    let first = recv
        .next_hook(Duration::from_secs(8))
        .await
        .expect("first attempt");
    let second = recv
        .next_hook(Duration::from_secs(20))
        .await
        .expect("a retry after the 500");
    assert_eq!(
        first.body["events"], second.body["events"],
        "the same events are resent"
    );
    assert_eq!(first.body["events"][0]["name"], "channel_occupied");
}

#[tokio::test]
async fn batched_webhooks_carry_all_events() {
    let mut recv = WebhookReceiver::start().await;
    let app = hooked_app(&recv.url(), "").with("batch_webhooks", true);
    let server = Server::start_with(Config::with_app(app.clone()));
    let mut c = server.connect().await;
    for i in 0..5 {
        c.subscribe(&format!("batch-{i}")).await;
    }
    for i in 0..5 {
        let (hook, _) = recv
            .wait_event("channel_occupied", &format!("batch-{i}"))
            .await;
        check_signed(&hook, &app);
    }
}

#[tokio::test]
async fn a_dead_endpoint_does_not_starve_other_webhooks_of_slots() {
    // Two delivery slots in all; app "dead" has an endpoint that always answers 500.
    let mut dead = WebhookReceiver::replying(|_| Reply::Status(500)).await;
    let mut good = WebhookReceiver::start().await;
    let dead_app = App::new("dead-id", "dead-key", "dead-secret").webhook(&format!(
        "url = {}",
        serde_json::to_string(&dead.url()).unwrap()
    ));
    let good_app = hooked_app(&good.url(), "");
    let config = Config {
        apps: vec![dead_app, good_app.clone()],
        ..Config::default()
    }
    .with("webhook_concurrency", 2);
    let server = Server::start_with(config);
    // Four occupied events for the dead endpoint: each is retried with backoff for minutes.
    let mut c = server.connect_path("/app/dead-key?protocol=7").await;
    for i in 0..4 {
        c.subscribe(&format!("doomed-{i}")).await;
    }
    for _ in 0..4 {
        dead.next_hook(WAIT)
            .await
            .expect("first attempts reach the dead endpoint");
    }
    // Another app's event still goes out promptly: the retrying ones hold no slot while they
    // wait out their backoff.
    let mut g = server
        .connect_path(&format!("/app/{}?protocol=7", good_app.key))
        .await;
    g.subscribe("lively").await;
    let (hook, ev) = good.wait_event("channel_occupied", "lively").await;
    assert_eq!(ev["channel"], "lively");
    check_signed(&hook, &good_app);
}

#[tokio::test]
async fn subscription_count_hooks_follow_every_change_down_to_zero() {
    let mut recv = WebhookReceiver::start().await;
    let app = hooked_app(&recv.url(), "event_types = [\"subscription_count\"]")
        .with("subscription_count", true);
    let server = Server::start_with(Config::with_app(app));
    let mut a = server.connect_on_shard(0).await;
    let mut b = server.connect_on_shard(1).await;
    a.subscribe("counted").await;
    b.subscribe("counted").await;
    a.unsubscribe("counted").await;
    a.ping_sync().await;
    b.unsubscribe("counted").await;
    b.ping_sync().await;
    // Requests are concurrent, so they may arrive in any order: compare as a multiset.
    let mut counts = Vec::new();
    while counts.len() < 4 {
        let (_, ev) = recv
            .wait_for(Duration::from_secs(8), |e| {
                e["name"] == "subscription_count"
            })
            .await;
        assert_eq!(ev["channel"], "counted", "{ev}");
        counts.push(ev["subscription_count"].as_u64().expect("count"));
    }
    counts.sort_unstable();
    assert_eq!(counts, vec![0, 1, 1, 2]);
}
