//! Deeply nested JSON from outside (client messages at every level, HTTP API bodies) is refused
//! with a protocol error or a 400, and never takes the process down: a recursive parser used to
//! overflow a shard's stack on 19,000 nested brackets, which aborted every shard.

mod common;

use common::*;
use serde_json::json;

/// Levels of nesting in every hostile payload: far past anything a recursive parser survives.
const LEVELS: usize = 100_000;
/// What every refusal says.
const TOO_DEEP: &str = "nested deeper than 64 levels";

/// Room for 100,000 levels (200 KB) in one WebSocket message and one request body.
fn roomy() -> Config {
    Config::with_app(App::default().with("client_events", true))
        .with("max_message_size", 1024 * 1024)
        .with("max_request_body", 1024 * 1024)
}

fn nested(levels: usize) -> String {
    format!("{}{}", "[".repeat(levels), "]".repeat(levels))
}

/// One subscribed client on each shard; they must keep receiving publishes.
async fn bystanders(server: &Server) -> Vec<Client> {
    let mut out = Vec::new();
    for shard in server.connect_spread(1).await {
        for mut c in shard {
            c.subscribe("bystanders").await;
            out.push(c);
        }
    }
    out
}

/// The process is alive, a new client is served and every bystander gets the next publish.
async fn still_serving(server: &mut Server, bystanders: &mut [Client], tag: &str) {
    assert!(
        server.is_running(),
        "server died after {tag}:\n{}",
        server.stderr()
    );
    let mut fresh = server.connect().await;
    fresh.assert_alive().await;
    server.api().trigger("bystanders", "still", tag).await;
    for c in bystanders.iter_mut() {
        assert_eq!(
            c.recv().await,
            channel_event("bystanders", "still", tag),
            "bystander after {tag}"
        );
    }
}

/// Sends `text` from a client on each shard; each gets `pusher:error` naming the depth limit
/// (with `code`) and keeps its connection.
async fn refused_on_every_shard(server: &mut Server, text: &str, code: serde_json::Value) {
    for shard in server.connect_spread(1).await {
        for mut attacker in shard {
            attacker.send_text(text).await;
            let msg = attacker.expect_error_code(code.clone()).await;
            assert!(msg.contains(TOO_DEEP), "error message: {msg}");
            attacker.assert_alive().await;
        }
    }
}

#[tokio::test]
async fn nested_envelope_is_refused() {
    let mut server = Server::start_with(roomy());
    let mut by = bystanders(&server).await;
    let text = format!(r#"{{"event":"pusher:ping","data":{}}}"#, nested(LEVELS));
    refused_on_every_shard(&mut server, &text, json!(null)).await;
    // The same nesting as an unknown field, and inside a client event's data.
    let text = format!(
        r#"{{"event":"pusher:ping","x":{},"data":{{}}}}"#,
        nested(LEVELS)
    );
    refused_on_every_shard(&mut server, &text, json!(null)).await;
    let text = format!(
        r#"{{"event":"client-x","channel":"private-a","data":{}}}"#,
        nested(LEVELS)
    );
    refused_on_every_shard(&mut server, &text, json!(null)).await;
    still_serving(&mut server, &mut by, "envelope").await;
}

#[tokio::test]
async fn unclosed_brackets_are_refused() {
    let mut server = Server::start_with(roomy());
    let mut by = bystanders(&server).await;
    let text = format!(r#"{{"event":"pusher:ping","data":{}"#, "[".repeat(LEVELS));
    refused_on_every_shard(&mut server, &text, json!(null)).await;
    still_serving(&mut server, &mut by, "unclosed").await;
}

#[tokio::test]
async fn nesting_inside_double_encoded_data_is_refused() {
    let mut server = Server::start_with(roomy());
    let mut by = bystanders(&server).await;
    // pysher sends subscribe data as a JSON string holding the object: the outer message is
    // flat, the nesting is only seen when that string is parsed.
    let inner = format!(r#"{{"channel":"a","x":{}}}"#, nested(LEVELS));
    let text = json!({"event":"pusher:subscribe","data":inner}).to_string();
    refused_on_every_shard(&mut server, &text, json!(null)).await;
    let inner = format!(r#"{{"auth":"k:s","user_data":{}}}"#, nested(LEVELS));
    let text = json!({"event":"pusher:signin","data":inner}).to_string();
    refused_on_every_shard(&mut server, &text, json!(4009)).await;
    still_serving(&mut server, &mut by, "double-encoded").await;
}

#[tokio::test]
async fn nesting_inside_signed_channel_data_and_user_data_is_refused() {
    let mut server = Server::start_with(roomy());
    let app = server.app();
    let mut by = bystanders(&server).await;
    for shard in server.connect_spread(1).await {
        for mut c in shard {
            // A correctly signed channel_data whose user_info nests: parsed only after the
            // signature is checked, so an app that signs what its clients send is exposed.
            let cd = format!(r#"{{"user_id":"u","user_info":{}}}"#, nested(LEVELS));
            let auth = app.presence_auth(&c.socket_id, "presence-deep", &cd);
            c.send_subscribe("presence-deep", Some(&auth), Some(&cd))
                .await;
            let msg = c.expect_error_code(json!(null)).await;
            assert!(msg.contains(TOO_DEEP), "channel_data refusal: {msg}");
            c.assert_alive().await;

            let ud = format!(r#"{{"id":"u","user_info":{}}}"#, nested(LEVELS));
            c.send_signin(&app, &ud).await;
            let msg = c.expect_error_code(json!(4009)).await;
            assert!(msg.contains(TOO_DEEP), "user_data refusal: {msg}");
            c.assert_alive().await;
            // Nothing of either was kept: the same connection can still join and sign in.
            c.subscribe_presence(&app, "presence-deep", json!("u"), json!({}))
                .await;
            c.signin(&app, r#"{"id":"u"}"#).await;
        }
    }
    still_serving(&mut server, &mut by, "signed data").await;
}

#[tokio::test]
async fn nested_http_bodies_are_400() {
    let mut server = Server::start_with(roomy());
    let mut by = bystanders(&server).await;
    let api = server.api();
    let event = format!(
        r#"{{"name":"e","channel":"bystanders","data":{}}}"#,
        nested(LEVELS)
    );
    let batch = format!(
        r#"{{"batch":[{{"name":"e","channel":"bystanders","data":{}}}]}}"#,
        nested(LEVELS)
    );
    let unclosed = format!(
        r#"{{"name":"e","channel":"bystanders","data":{}"#,
        "{\"a\":".repeat(LEVELS)
    );
    for (path, body) in [
        ("/events", &event),
        ("/batch_events", &batch),
        ("/events", &unclosed),
    ] {
        let r = api
            .request("POST", &api.path(path), &[], body.as_bytes())
            .await;
        assert_eq!(r.status, 400, "{path}: {}", r.text());
        assert!(r.text().contains(TOO_DEEP), "{path}: {}", r.text());
    }
    // Nesting inside a string `data` is only text to the server: delivered as sent (2,000
    // levels: a string is held to max_event_data).
    let deep_text = nested(2_000);
    api.trigger("bystanders", "text", &deep_text).await;
    for c in by.iter_mut() {
        assert_eq!(
            c.recv().await,
            channel_event("bystanders", "text", &deep_text)
        );
    }
    still_serving(&mut server, &mut by, "http").await;
}

#[tokio::test]
async fn nesting_at_the_limit_is_accepted() {
    let server = Server::start();
    let app = server.app();
    let mut c = server.connect().await;
    // 64 levels in all: the envelope object is one, data's arrays the other 63.
    let text = format!(r#"{{"event":"pusher:ping","data":{}}}"#, nested(63));
    c.send_text(&text).await;
    c.expect_event("pusher:pong").await;
    // The same in a presence member's user_info (its own parse counts from 1 again).
    let info = format!(r#"{{"user_id":"u","user_info":{}}}"#, nested(63));
    let auth = app.presence_auth(&c.socket_id, "presence-limit", &info);
    c.send_subscribe("presence-limit", Some(&auth), Some(&info))
        .await;
    c.expect_event("pusher_internal:subscription_succeeded")
        .await;
}
