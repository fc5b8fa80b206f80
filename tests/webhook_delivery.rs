//! Webhook delivery under trouble: a receiver that never answers must not slow channel
//! messages, and SIGTERM must deliver webhooks still waiting out their delay before the process
//! exits.

mod common;

use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};

fn hooked_app(url: &str, extra: &[(&str, String)]) -> App {
    let mut app = App::default().with("webhooks", format!("[{{ url = {url:?} }}]"));
    for (k, v) in extra {
        app = app.with(k, v);
    }
    app
}

#[tokio::test]
async fn hanging_receiver_does_not_delay_channel_messages() {
    let recv = WebhookReceiver::replying(|_| Reply::Never).await;
    let server = Server::start_with(Config::with_app(hooked_app(&recv.url(), &[])));
    let api = server.api();
    let mut subs = Vec::new();
    // Each new channel produces a channel_occupied webhook that the receiver never answers.
    for i in 0..8 {
        let mut c = server.connect().await;
        c.subscribe(&uniq(&format!("hang{i}"))).await;
        subs.push(c);
    }
    let ch = uniq("busy");
    for c in subs.iter_mut() {
        c.subscribe(&ch).await;
    }
    let contacted = poll_until(|| async { recv.received() }, |n| *n >= 8).await;
    assert!(
        contacted >= 8,
        "the receiver got the webhooks it now sits on: {contacted}"
    );
    for i in 0..20 {
        let start = Instant::now();
        api.trigger(&ch, "tick", &i.to_string()).await;
        for c in subs.iter_mut() {
            assert_eq!(c.expect_event("tick").await["data"], json!(i.to_string()));
        }
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "delivery waited on webhooks"
        );
    }
}

#[tokio::test]
async fn sigterm_delivers_delayed_webhooks_before_exit() {
    vacated_is_delivered_on_sigterm(Config::default().shutdown_grace).await;
}

/// The client below never answers the server's close frame, so it lingers until the server cuts
/// it; with a short grace that used to take all of it and leave the webhooks none.
#[tokio::test]
async fn lingering_clients_leave_webhooks_part_of_a_short_grace() {
    vacated_is_delivered_on_sigterm(2).await;
}

async fn vacated_is_delivered_on_sigterm(grace: u64) {
    let mut recv = WebhookReceiver::start().await;
    let extra = [
        ("webhook_delay", "60".to_string()),
        ("webhook_retry_window", "5".to_string()),
    ];
    let mut server = Server::start_with(Config {
        shutdown_grace: grace,
        ..Config::with_app(hooked_app(&recv.url(), &extra))
    });
    let ch = uniq("bye");
    let mut c = server.connect().await;
    c.subscribe(&ch).await;
    let occupied = recv
        .next_hook(Duration::from_secs(10))
        .await
        .expect("occupied");
    assert!(occupied.text().contains("channel_occupied"));
    c.unsubscribe(&ch).await;
    c.assert_alive().await;
    // channel_vacated now waits out a 60 s delay; SIGTERM must send it anyway.
    server.signal("TERM");
    let vacated = recv
        .next_hook(Duration::from_secs(10))
        .await
        .expect("vacated delivered on shutdown");
    let v: Value = serde_json::from_slice(&vacated.raw).expect("json");
    assert_eq!(
        v["events"],
        json!([{"name":"channel_vacated","channel":ch}])
    );
    let status = server
        .wait_exit(Duration::from_secs(15))
        .await
        .expect("exits");
    assert!(status.success(), "exit status {status:?}");
}
