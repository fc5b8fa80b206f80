//! Private, private-encrypted and presence channels: auth checks, presence
//! membership across shards, member events and limits.

mod common;

use common::*;
use serde_json::{json, Value};

async fn assert_not_occupied(api: &Api, channel: &str) {
    let v = api.channel_info(channel, "").await;
    assert_eq!(
        v,
        json!({"occupied":false}),
        "{channel} must not be subscribed"
    );
}

#[tokio::test]
async fn private_with_valid_auth_succeeds_and_receives() {
    let server = Server::start();
    let app = server.app();
    let api = server.api();
    let mut c = server.connect().await;
    c.subscribe_private(&app, "private-ok").await;
    api.trigger("private-ok", "secret", "{}").await;
    assert_eq!(c.recv().await, channel_event("private-ok", "secret", "{}"));
}

async fn rejected_private_auths(prefix: &str) {
    let server = Server::start();
    let app = server.app();
    let api = server.api();
    let mut c = server.connect().await;
    let ch = format!("{prefix}bad");
    let good = app.private_auth(&c.socket_id, &ch);
    let sig = good.split_once(':').unwrap().1.to_string();
    let other = App::new("x", "app-key", "other-secret");
    let cases: Vec<(&str, Option<String>)> = vec![
        ("missing auth", None),
        ("empty auth", Some(String::new())),
        ("wrong key prefix", Some(format!("other-key:{sig}"))),
        ("no key prefix", Some(sig.clone())),
        ("wrong secret", Some(other.private_auth(&c.socket_id, &ch))),
        ("other socket id", Some(app.private_auth("1.2", &ch))),
        (
            "other channel",
            Some(app.private_auth(&c.socket_id, &format!("{ch}x"))),
        ),
        (
            "uppercase hex",
            Some(format!("app-key:{}", sig.to_uppercase())),
        ),
        ("garbage", Some("app-key:zzzz".into())),
    ];
    for (what, auth) in cases {
        c.send_subscribe(&ch, auth.as_deref(), None).await;
        let (code, msg) = c.expect_error().await;
        assert!(
            code.is_null() || code == json!(4009),
            "{what}: code {code} ({msg})"
        );
        c.assert_alive().await;
        assert_not_occupied(&api, &ch).await;
    }
    // The valid one still works afterwards on the same connection.
    c.subscribe_private(&app, &ch).await;
}

#[tokio::test]
async fn private_bad_missing_and_wrong_key_auth_rejected() {
    rejected_private_auths("private-").await;
}

#[tokio::test]
async fn private_encrypted_behaves_like_private() {
    rejected_private_auths("private-encrypted-").await;
    let server = Server::start();
    let app = server.app();
    let api = server.api();
    let mut c = server.connect().await;
    c.subscribe_private(&app, "private-encrypted-box").await;
    let payload = r#"{"nonce":"AAAA","ciphertext":"BBBB"}"#;
    api.trigger("private-encrypted-box", "enc", payload).await;
    assert_eq!(
        c.recv().await,
        channel_event("private-encrypted-box", "enc", payload)
    );
}

#[tokio::test]
async fn presence_subscriber_sees_itself() {
    let server = Server::start();
    let app = server.app();
    let mut c = server.connect().await;
    let p = c
        .subscribe_presence(&app, "presence-me", json!("u1"), json!({"name":"Ann"}))
        .await;
    assert_eq!(p["count"], json!(1), "{p}");
    assert_eq!(p["ids"], json!(["u1"]), "{p}");
    assert_eq!(p["hash"], json!({"u1":{"name":"Ann"}}), "{p}");
}

#[tokio::test]
async fn presence_without_channel_data_or_bad_auth_rejected() {
    let server = Server::start();
    let app = server.app();
    let api = server.api();
    let mut c = server.connect().await;
    let ch = "presence-strict";
    // Signed correctly as private but no channel_data (and not signed in).
    let auth = app.private_auth(&c.socket_id, ch);
    c.send_subscribe(ch, Some(&auth), None).await;
    c.expect_soft_error().await;
    // channel_data that does not match the signature.
    let cd = json!({"user_id":"1"}).to_string();
    let auth = app.presence_auth(&c.socket_id, ch, &cd);
    let tampered = json!({"user_id":"2"}).to_string();
    c.send_subscribe(ch, Some(&auth), Some(&tampered)).await;
    c.expect_soft_error().await;
    // channel_data without user_id, properly signed.
    let cd = json!({"user_info":{}}).to_string();
    let auth = app.presence_auth(&c.socket_id, ch, &cd);
    c.send_subscribe(ch, Some(&auth), Some(&cd)).await;
    c.expect_soft_error().await;
    // channel_data that is not JSON, properly signed.
    let cd = "not json";
    let auth = app.presence_auth(&c.socket_id, ch, cd);
    c.send_subscribe(ch, Some(&auth), Some(cd)).await;
    c.expect_soft_error().await;
    c.assert_alive().await;
    assert_not_occupied(&api, ch).await;
}

/// Numeric user ids must be integers a JavaScript client reads back as the same text.
#[tokio::test]
async fn numeric_user_ids_must_be_exact_integers() {
    let server = Server::start();
    let app = server.app();
    let api = server.api();
    let mut c = server.connect().await;
    let ch = "presence-numbers";
    for id in [
        "1e400",
        "-1e400",
        "1E5",
        "1.5",
        "10.0",
        "-0",
        "1234567890123456",
        "12345678901234567890",
    ] {
        let cd = format!(r#"{{"user_id":{id}}}"#);
        let auth = app.presence_auth(&c.socket_id, ch, &cd);
        c.send_subscribe(ch, Some(&auth), Some(&cd)).await;
        let msg = c.expect_error_code(Value::Null).await;
        assert!(
            msg.contains("user_id") && msg.contains("integer"),
            "{id}: {msg}"
        );
        assert_not_occupied(&api, ch).await;
    }
    c.assert_alive().await;
    // Integers of up to 15 digits stay numbers.
    let mut members = Vec::new();
    for (i, id) in ["0", "-7", "123456789012345"].into_iter().enumerate() {
        let mut m = server.connect().await;
        let cd = format!(r#"{{"user_id":{id}}}"#);
        let auth = app.presence_auth(&m.socket_id, ch, &cd);
        m.send_subscribe(ch, Some(&auth), Some(&cd)).await;
        let ev = m
            .expect_event("pusher_internal:subscription_succeeded")
            .await;
        let p = data_of(&ev)["presence"].clone();
        assert_eq!(p["count"], json!(i + 1), "{id}: {p}");
        let n: Value = serde_json::from_str(id).unwrap();
        assert!(
            p["ids"].as_array().unwrap().contains(&n),
            "{id} must be listed as a number: {p}"
        );
        members.push(m);
    }
}

#[tokio::test]
async fn presence_channel_data_signature_uses_exact_string() {
    // Whitespace and key order in channel_data must be kept as sent.
    let server = Server::start();
    let app = server.app();
    let mut c = server.connect().await;
    let ch = "presence-exact";
    let cd = "{ \"user_info\" : {\"b\":1,\"a\":2},  \"user_id\":\"sp\" }";
    let auth = app.presence_auth(&c.socket_id, ch, cd);
    c.send_subscribe(ch, Some(&auth), Some(cd)).await;
    let ev = c
        .expect_event("pusher_internal:subscription_succeeded")
        .await;
    let p = data_of(&ev)["presence"].clone();
    assert_eq!(p["ids"], json!(["sp"]), "{ev}");
}

#[tokio::test]
async fn presence_across_shards_counts_users_once() {
    let server = Server::start();
    let app = server.app();
    let api = server.api();
    let ch = "presence-room";
    // u1 tab A on shard 0, u2 on shard 1, u1 tab C on shard 1, u3 on shard 1.
    let mut a = server.connect_on_shard(0).await;
    let mut b = server.connect_on_shard(1).await;
    let mut c = server.connect_on_shard(1).await;
    let mut d = server.connect_on_shard(1).await;

    let p = a
        .subscribe_presence(&app, ch, json!("1"), json!({"n":"one"}))
        .await;
    assert_eq!(p["count"], json!(1));

    let p = b
        .subscribe_presence(&app, ch, json!("2"), json!({"n":"two"}))
        .await;
    assert_eq!(p["count"], json!(2), "{p}");
    let mut ids: Vec<String> = p["ids"].as_array().unwrap().iter().map(id_str).collect();
    ids.sort();
    assert_eq!(ids, vec!["1", "2"]);
    assert_eq!(p["hash"], json!({"1":{"n":"one"},"2":{"n":"two"}}), "{p}");

    let added = a.expect_event("pusher_internal:member_added").await;
    assert_eq!(added["channel"], ch);
    assert!(
        added["data"].is_string(),
        "member_added data is a string: {added}"
    );
    assert_eq!(
        data_of(&added),
        json!({"user_id":"2","user_info":{"n":"two"}})
    );

    // Second tab of user 1 on the other shard: counted once, not announced.
    let p = c
        .subscribe_presence(&app, ch, json!("1"), json!({"n":"one"}))
        .await;
    assert_eq!(p["count"], json!(2), "{p}");
    assert_eq!(p["ids"].as_array().unwrap().len(), 2, "ids unique: {p}");

    // u3 joins from the same shard as the second tab: the first thing a and b see
    // must be u3's member_added (no member_added for the second tab of u1).
    let p = d
        .subscribe_presence(&app, ch, json!("3"), json!(null))
        .await;
    assert_eq!(p["count"], json!(3), "{p}");
    for (who, s) in [("a", &mut a), ("b", &mut b), ("c", &mut c)] {
        let ev = s.expect_event("pusher_internal:member_added").await;
        assert_eq!(id_str(&data_of(&ev)["user_id"]), "3", "{who}: {ev}");
    }

    let v = poll_until(
        || api.channel_info(ch, "user_count"),
        |v| v["user_count"] == json!(3),
    )
    .await;
    assert_eq!(v, json!({"occupied":true,"user_count":3}));
    let r = api.get(&format!("/channels/{ch}/users"), &[]).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let mut users: Vec<String> = r.json()["users"]
        .as_array()
        .expect("users array")
        .iter()
        .map(|u| id_str(&u["id"]))
        .collect();
    users.sort();
    assert_eq!(users, vec!["1", "2", "3"]);

    // Closing u1's second tab removes nobody; then u3 leaves from the same shard,
    // so b's next event must be u3's member_removed.
    c.close().await;
    d.unsubscribe(ch).await;
    for (who, s) in [("a", &mut a), ("b", &mut b)] {
        let ev = s.expect_event("pusher_internal:member_removed").await;
        assert_eq!(data_of(&ev), json!({"user_id":"3"}), "{who}: {ev}");
    }
    // The joiner/leaver never gets its own events.
    d.assert_alive().await;

    // u1's last tab leaves: b gets member_removed for 1.
    a.unsubscribe(ch).await;
    let ev = b.expect_event("pusher_internal:member_removed").await;
    assert_eq!(data_of(&ev), json!({"user_id":"1"}), "{ev}");
    let v = poll_until(
        || api.channel_info(ch, "user_count"),
        |v| v["user_count"] == json!(1),
    )
    .await;
    assert_eq!(v["user_count"], json!(1));
}

#[tokio::test]
async fn presence_disconnect_of_last_tab_sends_member_removed() {
    let server = Server::start();
    let app = server.app();
    let ch = "presence-drop";
    let mut watcher = server.connect_on_shard(0).await;
    watcher
        .subscribe_presence(&app, ch, json!("w"), json!({}))
        .await;
    let mut leaver = server.connect_on_shard(1).await;
    leaver
        .subscribe_presence(&app, ch, json!("l"), json!({}))
        .await;
    let ev = watcher.expect_event("pusher_internal:member_added").await;
    assert_eq!(id_str(&data_of(&ev)["user_id"]), "l");
    drop(leaver); // abrupt TCP close, no close frame
    let ev = watcher.expect_event("pusher_internal:member_removed").await;
    assert_eq!(data_of(&ev), json!({"user_id":"l"}));
}

#[tokio::test]
async fn presence_user_ids_keep_json_type() {
    let server = Server::start();
    let app = server.app();
    let ch = "presence-types";
    let mut a = server.connect_on_shard(0).await;
    let mut b = server.connect_on_shard(1).await;
    a.subscribe_presence(&app, ch, json!(10), json!({"k":1}))
        .await;
    let p = b
        .subscribe_presence(&app, ch, json!("20"), json!(null))
        .await;
    let ids = p["ids"].as_array().unwrap().clone();
    assert!(ids.contains(&json!(10)), "numeric id stays a number: {p}");
    assert!(ids.contains(&json!("20")), "string id stays a string: {p}");
    assert_eq!(
        p["hash"]["10"],
        json!({"k":1}),
        "hash keys are strings: {p}"
    );
    let ev = a.expect_event("pusher_internal:member_added").await;
    assert_eq!(data_of(&ev)["user_id"], json!("20"), "{ev}");
    b.unsubscribe(ch).await;
    let ev = a.expect_event("pusher_internal:member_removed").await;
    assert_eq!(data_of(&ev), json!({"user_id":"20"}));
    // And the numeric one, seen from the other side.
    b.subscribe_presence(&app, ch, json!("20"), json!(null))
        .await;
    a.expect_event("pusher_internal:member_added").await;
    a.unsubscribe(ch).await;
    let ev = b.expect_event("pusher_internal:member_removed").await;
    assert_eq!(
        data_of(&ev),
        json!({"user_id":10}),
        "numeric id in member_removed: {ev}"
    );
}

#[tokio::test]
async fn presence_101st_member_rejected() {
    let server = Server::start();
    let app = server.app();
    let api = server.api();
    let ch = "presence-full";
    let mut members = Vec::new();
    for i in 0..100 {
        let mut c = server.connect().await;
        let cd = json!({"user_id": format!("m{i}")}).to_string();
        let auth = app.presence_auth(&c.socket_id, ch, &cd);
        c.send_subscribe(ch, Some(&auth), Some(&cd)).await;
        // Skip member_added events of earlier joiners.
        let ev = c.wait_event("pusher_internal:subscription_succeeded").await;
        assert_eq!(data_of(&ev)["presence"]["count"], json!(i + 1));
        members.push(c);
    }
    let mut extra = server.connect().await;
    let cd = json!({"user_id":"one-too-many"}).to_string();
    let auth = app.presence_auth(&extra.socket_id, ch, &cd);
    extra.send_subscribe(ch, Some(&auth), Some(&cd)).await;
    let (code, msg) = extra.expect_error().await;
    assert!(!msg.is_empty(), "error for the 101st member (code {code})");
    extra.assert_alive().await;
    // A second tab of an existing member is not a new member.
    let mut tab = server.connect().await;
    let cd = json!({"user_id":"m0"}).to_string();
    let auth = app.presence_auth(&tab.socket_id, ch, &cd);
    tab.send_subscribe(ch, Some(&auth), Some(&cd)).await;
    let ev = tab
        .wait_event("pusher_internal:subscription_succeeded")
        .await;
    assert_eq!(data_of(&ev)["presence"]["count"], json!(100));
    let v = api.channel_info(ch, "user_count").await;
    assert_eq!(v["user_count"], json!(100));
}

#[tokio::test]
async fn presence_limits_user_info_and_user_id_length() {
    let server = Server::start();
    let app = server.app();
    let ch = "presence-limits";
    let mut c = server.connect().await;
    // user_info over 1024 bytes.
    let cd = json!({"user_id":"big","user_info":{"blob":"x".repeat(1100)}}).to_string();
    let auth = app.presence_auth(&c.socket_id, ch, &cd);
    c.send_subscribe(ch, Some(&auth), Some(&cd)).await;
    c.expect_error().await;
    // user_id over 128 characters.
    let cd = json!({"user_id":"u".repeat(129)}).to_string();
    let auth = app.presence_auth(&c.socket_id, ch, &cd);
    c.send_subscribe(ch, Some(&auth), Some(&cd)).await;
    c.expect_error().await;
    c.assert_alive().await;
    // Within the limits both are fine.
    let p = c
        .subscribe_presence(
            &app,
            ch,
            json!("u".repeat(128)),
            json!({"blob":"x".repeat(900)}),
        )
        .await;
    assert_eq!(p["count"], json!(1));
}

#[tokio::test]
async fn presence_limits_follow_config() {
    let server = Server::start_with(Config::with_app(
        App::default()
            .with("max_presence_members", 2)
            .with("max_presence_user_info", 64),
    ));
    let app = server.app();
    let ch = "presence-small";
    let mut a = server.connect().await;
    a.subscribe_presence(&app, ch, json!("a"), json!({})).await;
    let mut b = server.connect().await;
    b.subscribe_presence(&app, ch, json!("b"), json!({})).await;
    let mut c = server.connect().await;
    let cd = json!({"user_id":"c"}).to_string();
    let auth = app.presence_auth(&c.socket_id, ch, &cd);
    c.send_subscribe(ch, Some(&auth), Some(&cd)).await;
    c.expect_error().await;
    let cd = json!({"user_id":"a","user_info":{"s":"y".repeat(80)}}).to_string();
    let auth = app.presence_auth(&c.socket_id, "presence-other", &cd);
    c.send_subscribe("presence-other", Some(&auth), Some(&cd))
        .await;
    c.expect_error().await;
    c.assert_alive().await;
}

#[tokio::test]
async fn presence_user_count_info_on_trigger() {
    let server = Server::start();
    let app = server.app();
    let api = server.api();
    let mut a = server.connect().await;
    let mut b = server.connect().await;
    a.subscribe_presence(&app, "presence-ui", json!("x"), json!({}))
        .await;
    b.subscribe_presence(&app, "presence-ui", json!("x"), json!({}))
        .await;
    let body = json!({"name":"e","channel":"presence-ui","data":"d","info":"user_count"});
    let r = poll_until(
        || api.events(&body),
        |r| r.status == 200 && r.json()["channels"]["presence-ui"]["user_count"] == json!(1),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        r.json(),
        json!({"channels":{"presence-ui":{"user_count":1}}})
    );
    let r = api
        .get(
            "/channels",
            &[("filter_by_prefix", "presence-"), ("info", "user_count")],
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["channels"]["presence-ui"], json!({"user_count":1}));

    // A trigger to a presence and a public channel: delivered to both, user_count reported
    // where it applies. Only a request where it applies to no channel is refused.
    let mut p = server.connect().await;
    p.subscribe("public-ui").await;
    let body = json!({"name":"mixed","channels":["presence-ui","public-ui"],"data":"m",
        "info":"user_count"});
    let r = api.events(&body).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        r.json(),
        json!({"channels":{"presence-ui":{"user_count":1},"public-ui":{}}})
    );
    assert_eq!(p.expect_event("mixed").await["data"], json!("m"));
    assert_eq!(a.wait_event("mixed").await["data"], json!("m"));
    let body = json!({"name":"e","channel":"public-ui","data":"d","info":"user_count"});
    assert_eq!(api.events(&body).await.status, 400);
}

#[tokio::test]
async fn presence_users_endpoint_rejects_non_presence() {
    let server = Server::start();
    let api = server.api();
    let r = api.get("/channels/private-x/users", &[]).await;
    r.assert_error(400);
    let r = api.get("/channels/presence-empty/users", &[]).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json(), json!({"users":[]}));
}

#[tokio::test]
async fn presence_hash_for_member_without_user_info() {
    let server = Server::start();
    let app = server.app();
    let mut c = server.connect().await;
    let cd = json!({"user_id":"bare"}).to_string();
    let auth = app.presence_auth(&c.socket_id, "presence-bare", &cd);
    c.send_subscribe("presence-bare", Some(&auth), Some(&cd))
        .await;
    let ev = c
        .expect_event("pusher_internal:subscription_succeeded")
        .await;
    let p = data_of(&ev)["presence"].clone();
    let info: &Value = &p["hash"]["bare"];
    assert!(info.is_null() || *info == json!({}), "{p}");
    assert!(p["hash"].as_object().unwrap().contains_key("bare"), "{p}");
}
