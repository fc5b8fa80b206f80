//! User authentication: pusher:signin, #server-to-user channels, terminate_connections,
//! watchlist events and the authorized-connections timeout.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::*;
use serde_json::{json, Value};

fn user(id: &str) -> String {
    json!({"id": id, "user_info": {"name": format!("user {id}")}}).to_string()
}

#[tokio::test]
async fn signin_with_valid_hmac_succeeds() {
    let server = Server::start();
    let app = server.app();
    let mut c = server.connect().await;
    let ud = r#"{"id":"12345","user_info":{"name":"Mr. Channels"}}"#;
    c.send_signin(&app, ud).await;
    let ev = c.expect_event("pusher:signin_success").await;
    // Object or string form are both allowed; user_data must round-trip exactly.
    assert_eq!(data_of(&ev)["user_data"], json!(ud), "{ev}");
    c.assert_alive().await;
}

#[tokio::test]
async fn signin_with_bad_hmac_is_4009_and_connection_kept() {
    let server = Server::start();
    let app = server.app();
    let mut c = server.connect().await;
    let ud = user("1");
    let other = App::new("x", "app-key", "wrong-secret");
    let bad = [
        other.user_auth(&c.socket_id, &ud),
        app.user_auth("1.1", &ud),
        format!(
            "other-key:{}",
            app.sign(&format!("{}::user::{ud}", c.socket_id))
        ),
        String::new(),
    ];
    for auth in bad {
        c.send(json!({"event":"pusher:signin","data":{"auth":auth,"user_data":ud}}))
            .await;
        c.expect_error_code(json!(4009)).await;
        c.assert_alive().await;
    }
    // user_data without an id, validly signed.
    c.send_signin(&app, r#"{"user_info":{}}"#).await;
    c.expect_error_code(json!(4009)).await;
    c.assert_alive().await;
    // Still able to sign in properly afterwards.
    c.signin(&app, &ud).await;
}

/// The sign-in id must be a string; the refusal says so (numbers are for presence only).
#[tokio::test]
async fn signin_id_errors_ask_for_a_string() {
    let server = Server::start();
    let app = server.app();
    let mut c = server.connect().await;
    for ud in [
        r#"{"id":7}"#,
        r#"{"id":""}"#,
        r#"{"id":null}"#,
        r#"{"user_info":{}}"#,
    ] {
        c.send_signin(&app, ud).await;
        let msg = c.expect_error_code(json!(4009)).await;
        assert_eq!(
            msg, "Invalid user_data: id must be a non-empty string",
            "{ud}"
        );
    }
    c.send_signin(&app, r#"{"id":"7","watchlist":5}"#).await;
    let msg = c.expect_error_code(json!(4009)).await;
    assert!(msg.contains("watchlist must be an array"), "{msg}");
    c.signin(&app, &user("7")).await;
}

#[tokio::test]
async fn server_to_user_channel_only_for_own_id() {
    let server = Server::start();
    let app = server.app();
    let mut c = server.connect().await;
    // Not signed in: rejected.
    c.send_subscribe("#server-to-user-7", Some(""), None).await;
    c.expect_soft_error().await;
    c.signin(&app, &user("7")).await;
    c.subscribe("#server-to-user-7").await;
    c.send_subscribe("#server-to-user-8", Some(""), None).await;
    c.expect_soft_error().await;
    c.assert_alive().await;
}

#[tokio::test]
async fn http_trigger_to_server_to_user_reaches_every_socket_of_that_user() {
    let server = Server::start();
    let app = server.app();
    let api = server.api();
    let mut tabs = Vec::new();
    for shard in 0..2 {
        for _ in 0..2 {
            let mut c = server.connect_on_shard(shard).await;
            c.signin(&app, &user("55")).await;
            c.subscribe("#server-to-user-55").await;
            tabs.push(c);
        }
    }
    let mut other = server.connect().await;
    other.signin(&app, &user("56")).await;
    other.subscribe("#server-to-user-56").await;

    api.trigger("#server-to-user-55", "dm", "{\"hi\":1}").await;
    for t in tabs.iter_mut() {
        assert_eq!(
            t.recv().await,
            channel_event("#server-to-user-55", "dm", "{\"hi\":1}"),
            "socket {} shard {}",
            t.socket_id,
            t.shard
        );
    }
    // Not delivered to another user: `other`'s next event is this barrier, not the dm to 55.
    // Sound: the dm to 55 was in every shard's inbox before its 200; this one queues behind it.
    api.trigger("#server-to-user-56", "dm", "x").await;
    assert_eq!(
        other.recv().await,
        channel_event("#server-to-user-56", "dm", "x")
    );
    for t in tabs.iter_mut() {
        t.assert_alive().await;
    }
    // socket_id excludes that one tab (the sender's own), on whichever shard it is.
    let sender = tabs[1].socket_id.clone();
    let body = json!({"name":"dm","channel":"#server-to-user-55","data":"y","socket_id":sender});
    assert_eq!(api.events(&body).await.status, 200);
    for t in tabs.iter_mut() {
        if t.socket_id == sender {
            t.assert_alive().await;
        } else {
            assert_eq!(
                t.recv().await,
                channel_event("#server-to-user-55", "dm", "y")
            );
        }
    }
}

#[tokio::test]
async fn terminate_connections_closes_only_that_users_sockets() {
    let server = Server::start();
    let app = server.app();
    let api = server.api();
    let mut victims = Vec::new();
    for shard in 0..2 {
        let mut c = server.connect_on_shard(shard).await;
        c.signin(&app, &user("bad-user")).await;
        c.subscribe("shared-room").await;
        victims.push(c);
    }
    let mut bystander = server.connect().await;
    bystander.signin(&app, &user("good-user")).await;
    bystander.subscribe("shared-room").await;
    let mut anon = server.connect().await;
    anon.subscribe("shared-room").await;
    // A presence member with the same id that never signed in is not terminated.
    let mut presence_only = server.connect().await;
    presence_only
        .subscribe_presence(&app, "presence-t", json!("bad-user"), json!({}))
        .await;

    let r = api
        .post("/users/bad-user/terminate_connections", &json!({}))
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json(), json!({}));
    for v in victims.iter_mut() {
        v.expect_error_and_close(4009).await;
    }
    api.trigger("shared-room", "after", "1").await;
    for s in [&mut bystander, &mut anon] {
        assert_eq!(s.recv().await, channel_event("shared-room", "after", "1"));
        s.assert_alive().await;
    }
    presence_only.assert_alive().await;
}

/// Collects watchlist frames until `want` reports every id as wanted.
async fn watch_until(c: &mut Client, want: &[(&str, &str)]) -> HashMap<String, String> {
    let mut state: HashMap<String, String> = HashMap::new();
    while !want
        .iter()
        .all(|(id, st)| state.get(*id).map(String::as_str) == Some(*st))
    {
        let ev = c.expect_event("pusher_internal:watchlist_events").await;
        assert!(ev["data"].is_string(), "watchlist data is a string: {ev}");
        let data = data_of(&ev);
        for item in data["events"]
            .as_array()
            .unwrap_or_else(|| panic!("events array: {ev}"))
        {
            let name = item["name"].as_str().expect("name").to_string();
            assert!(name == "online" || name == "offline", "{item}");
            for id in item["user_ids"].as_array().expect("user_ids") {
                state.insert(id_str(id), name.clone());
            }
        }
    }
    state
}

#[tokio::test]
async fn watchlist_online_and_offline() {
    let server = Server::start_with(Config::with_app(
        App::default().with("watchlist_events", true),
    ));
    let app = server.app();
    let mut watcher = server.connect_on_shard(0).await;
    let ud = json!({"id":"w","watchlist":["friend","stranger"]}).to_string();
    watcher.signin(&app, &ud).await;
    // Initial state: nobody online. The server may report them offline or say nothing.
    for ev in watcher.ping_sync().await {
        assert_eq!(ev["event"], "pusher_internal:watchlist_events", "{ev}");
        let data: Value = data_of(&ev);
        for item in data["events"].as_array().unwrap() {
            assert_ne!(item["name"], "online", "nobody is online yet: {ev}");
        }
    }
    // friend comes online on the other shard, with two tabs.
    let mut f1 = server.connect_on_shard(1).await;
    f1.signin(&app, &user("friend")).await;
    watch_until(&mut watcher, &[("friend", "online")]).await;
    let mut f2 = server.connect_on_shard(0).await;
    f2.signin(&app, &user("friend")).await;
    // Closing one tab keeps friend online; closing the last makes it offline.
    f1.close().await;
    f2.assert_alive().await;
    f2.close().await;
    let st = watch_until(&mut watcher, &[("friend", "offline")]).await;
    assert_ne!(st.get("stranger").map(String::as_str), Some("online"));
}

#[tokio::test]
async fn authorized_connections_timeout_closes_unauthorized_only() {
    let server = Server::start_with(Config::with_app(
        App::default().with("authorized_connections_timeout", 3),
    ));
    let app = server.app();
    let mut signed = server.connect().await;
    signed.signin(&app, &user("ok")).await;
    let mut private = server.connect().await;
    private.subscribe_private(&app, "private-authz").await;
    let mut public_only = server.connect().await;
    public_only.subscribe("public-authz").await;
    let mut idle = server.connect().await;

    let ev = tokio::time::timeout(Duration::from_secs(8), idle.recv())
        .await
        .expect("idle connection is closed after the timeout");
    assert_eq!(ev["event"], "pusher:error", "{ev}");
    assert_eq!(ev["data"]["code"], json!(4009), "{ev}");
    assert_eq!(idle.expect_close().await, Some(4009));
    public_only.expect_error_and_close(4009).await;
    // The authorized ones connected earlier, so their deadline has passed too.
    signed.assert_alive().await;
    private.assert_alive().await;
}

#[tokio::test]
async fn watchlist_over_100_ids_gets_4302_after_success() {
    let server = Server::start_with(Config::with_app(
        App::default().with("watchlist_events", true),
    ));
    let app = server.app();
    let mut c = server.connect().await;
    let ids: Vec<String> = (0..101).map(|i| format!("w{i}")).collect();
    let ud = json!({"id":"big-watcher","watchlist":ids}).to_string();
    c.signin(&app, &ud).await;
    // The state of the watched ids may arrive in several frames (one per shard that
    // owns some of them), so read until the 4302 and all 100 accepted ids are seen.
    let mut saw_4302 = false;
    let mut reported = std::collections::HashSet::new();
    while !(saw_4302 && reported.len() >= 100) {
        let ev = c.recv().await;
        if ev["event"] == "pusher:error" {
            assert_eq!(ev["data"]["code"], json!(4302), "{ev}");
            saw_4302 = true;
            continue;
        }
        assert_eq!(ev["event"], "pusher_internal:watchlist_events", "{ev}");
        for item in data_of(&ev)["events"].as_array().expect("events") {
            assert_eq!(item["name"], "offline", "nobody is online: {item}");
            for id in item["user_ids"].as_array().expect("user_ids") {
                reported.insert(id_str(id));
            }
        }
    }
    assert!(
        !reported.contains("w100"),
        "only the first 100 ids are accepted"
    );
    c.assert_alive().await;
}
